"""The test tiers, and the guard that keeps the unit tier what it says (a pytest plugin; conftest.py loads it).

A test is in the `integration` tier when it uses a fixture that starts a server (declared with `@server_fixture`,
even reached through another fixture) or is marked `integration` itself (a test that runs the console script);
`image` when a fixture builds the Docker image (also integration); every other test is in the `unit` tier.

The unit tier runs with a guard: a unit test (setup, call and teardown) that connects or binds a network or unix
socket, starts a process or sleeps longer than UNIT_SLEEP_LIMIT fails with a line saying what it did. A server
fixture whose declaration was forgotten therefore fails `-m unit` at once instead of running servers in it.
"""

from __future__ import annotations

import _posixsubprocess  # what multiprocessing starts processes with
import contextlib
import os
import socket
import subprocess
import threading
import time
from typing import Callable, Iterator

import pytest

#: Longest sleep a unit test may take: waits belong on a condition or on the module's injected clock.
UNIT_SLEEP_LIMIT = 0.005
#: Socket families whose connect or bind means talking to a server (Python's own socketpairs connect none).
GUARDED_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
#: Names of the fixtures that start a server, and of those that build the image, as the decorator declared them.
SERVER_FIXTURES: set[str] = set()
IMAGE_FIXTURES: set[str] = set()
#: What a unit test that broke the rule is told to do.
ADVICE = ("a test that needs a server uses a fixture declared with @server_fixture (tests/tiers.py) or is marked "
          "integration; a unit test waits on a condition or on a FakeClock, not on sleep")


def server_fixture(function: Callable | None = None, *, image: bool = False, **fixture_args):
    """pytest.fixture for a fixture that starts a real server (image=True: builds the Docker image): every test
    that uses it, directly or through other fixtures, is in the integration tier."""

    def declare(func: Callable):
        (IMAGE_FIXTURES if image else SERVER_FIXTURES).add(fixture_args.get("name", func.__name__))
        return pytest.fixture(**fixture_args)(func)

    return declare(function) if function is not None else declare


def pytest_configure(config) -> None:
    for line in ("unit: needs no server, no process, no socket, no sleep (scripts/test -m unit; guarded)",
                 "integration: starts a real server or process (dockerd, etcd, ZooKeeper, Redis, the console script)",
                 "image: builds the Docker image (also integration)"):
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(items) -> None:
    """Give every test its tiers from the fixtures it uses and its own integration mark."""
    for item in items:
        # A parametrize argument may share a fixture's name (test_core's `image`): it is no fixture.
        used = set(item.fixturenames) - directly_parametrized(item)
        if used & IMAGE_FIXTURES:
            item.add_marker(pytest.mark.image)
        if used & (SERVER_FIXTURES | IMAGE_FIXTURES) and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
        if not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.unit)


def directly_parametrized(item) -> set[str]:
    """Argument names that a test's parametrize marks fill in themselves (not through a fixture)."""
    names = set()
    for mark in item.iter_markers("parametrize"):
        argnames = mark.args[0] if mark.args else mark.kwargs["argnames"]
        if isinstance(argnames, str):
            argnames = [name.strip() for name in argnames.split(",")]
        indirect = mark.kwargs.get("indirect", False)
        names.update(name for name in argnames if indirect is not True and name not in (indirect or ()))
    return names


class UnitGuard:
    """While active, a socket connect or bind, a new process or a long sleep is refused and recorded (a refusal in
    another thread, or one the code under test swallowed, still fails the test afterwards)."""

    def __init__(self, test: str):
        self.test = test
        self.violations: list[str] = []
        self._lock = threading.Lock()

    def refuse(self, what: str) -> None:
        """Record what the test did and raise in the code that did it."""
        line = f"unit tier: {self.test} {what}; {ADVICE}"
        with self._lock:
            self.violations.append(line)
        raise UnitTierViolation(line)

    @contextlib.contextmanager
    def active(self) -> Iterator["UnitGuard"]:
        with pytest.MonkeyPatch.context() as patch:
            for name in ("connect", "connect_ex", "bind"):
                patch.setattr(socket.socket, name, self._socket_call(name, getattr(socket.socket, name)))
            patch.setattr(subprocess.Popen, "_execute_child", self._popen)
            for module, name in ((os, "fork"), (os, "forkpty"), (os, "posix_spawn"), (os, "posix_spawnp"),
                                 (os, "system"), (_posixsubprocess, "fork_exec")):
                if hasattr(module, name):
                    patch.setattr(module, name, self._process_call(f"{module.__name__}.{name}"))
            patch.setattr(time, "sleep", self._sleep(time.sleep))
            yield self

    def check(self) -> None:
        """Fail the test if it did anything refused, wherever that was caught."""
        if self.violations:
            pytest.fail("\n".join(dict.fromkeys(self.violations)), pytrace=False)

    def _socket_call(self, name: str, real: Callable) -> Callable:
        guard = self

        def guarded(sock, address, *args):
            if sock.family in GUARDED_FAMILIES:
                guard.refuse(f"called {name}({address!r}) on an {sock.family.name} socket")
            return real(sock, address, *args)

        return guarded

    def _popen(self, args, *rest, **kwargs):
        """Popen._execute_child, as the guard's own bound method: what the Popen would have run."""
        self.refuse(f"started a process (subprocess.Popen {args!r})")

    def _process_call(self, name: str) -> Callable:
        def guarded(*args, **kwargs):
            self.refuse(f"started a process ({name}{args[:2]!r})" if args else f"started a process ({name})")

        return guarded

    def _sleep(self, real: Callable) -> Callable:
        def guarded(seconds):
            if seconds > UNIT_SLEEP_LIMIT:
                self.refuse(f"slept {seconds} s (more than {UNIT_SLEEP_LIMIT * 1000:g} ms)")
            real(seconds)

        return guarded


class UnitTierViolation(Exception):
    """Raised where a unit test connects, binds, starts a process or sleeps."""


def guarded_phase(item, guarded: bool = True):
    """Run one phase of a unit test under the guard (integration tests run as they are)."""
    if not guarded or item.get_closest_marker("unit") is None:
        return (yield)
    guard = UnitGuard(item.nodeid)
    with guard.active():
        result = yield
    guard.check()
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from guarded_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from guarded_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    # The last test of a module or class (or of the run) also tears down the fixtures of that scope and above, which
    # may be servers that earlier integration tests used: that teardown is not this test's doing.
    return (yield from guarded_phase(item, getattr(nextitem, "parent", None) is item.parent))
