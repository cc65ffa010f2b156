"""The tiers enforce themselves: a unit test that starts a process, opens a socket or sleeps fails and says what it
did; a server fixture declared as one makes its tests integration. Checked on small test files run in-process."""

from __future__ import annotations

import pytest

INNER = '''
import os
import socket
import subprocess
import threading
import time

import pytest

from tiers import server_fixture


@pytest.fixture
def forgotten_server():
    """A fixture that starts a server but was not declared as one."""
    subprocess.Popen(["true"]).wait()


@server_fixture
def declared_server():
    subprocess.Popen(["true"]).wait()


def test_uses_a_forgotten_server(forgotten_server):
    pass


def test_uses_a_declared_server(declared_server):
    pass


@pytest.mark.integration
def test_marked_integration():
    subprocess.run(["true"])


def test_connects_to_loopback():
    socket.create_connection(("127.0.0.1", 9), timeout=1)


def test_binds_a_unix_socket(tmp_path):
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s"))


def test_forks():
    os.fork()


def test_sleeps():
    time.sleep(0.05)


def test_swallows_what_it_was_refused():
    try:
        subprocess.run(["true"])
    except Exception:
        pass


def test_sleeps_in_another_thread():
    thread = threading.Thread(target=time.sleep, args=(1,))
    thread.start()
    thread.join()


def test_stays_in_its_tier(tmp_path):
    time.sleep(0.001)
    left, right = socket.socketpair()
    left.sendall(b"x")
    assert right.recv(1) == b"x"
    left.close(), right.close()
    (tmp_path / "file").write_text("files are fine")
'''


@pytest.fixture
def inner(pytester):
    pytester.makeconftest("pytest_plugins = ('tiers',)")
    pytester.makepyfile(test_inner=INNER)
    return pytester


def test_a_unit_test_that_starts_a_process_opens_a_socket_or_sleeps_fails_saying_what_it_did(inner):
    result = inner.runpytest_inprocess("-m", "unit", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=6, errors=1, deselected=2)
    outcomes = {report.nodeid.split("::")[1]: report.outcome for report in
                result.reprec.getreports("pytest_runtest_logreport") if report.failed}
    assert set(outcomes) == {"test_uses_a_forgotten_server", "test_connects_to_loopback", "test_binds_a_unix_socket",
                             "test_forks", "test_sleeps", "test_swallows_what_it_was_refused",
                             "test_sleeps_in_another_thread"}
    said = result.stdout.str()
    for line in ["test_uses_a_forgotten_server started a process (subprocess.Popen ['true'])",
                 "test_connects_to_loopback called connect(('127.0.0.1', 9)) on an AF_INET socket",
                 "test_binds_a_unix_socket called bind('", "') on an AF_UNIX socket",
                 "test_forks started a process (os.fork)",
                 "test_sleeps slept 0.05 s (more than 5 ms)",
                 "test_swallows_what_it_was_refused started a process (subprocess.Popen ['true'])",
                 "test_sleeps_in_another_thread slept 1 s (more than 5 ms)",
                 "a test that needs a server uses a fixture declared with @server_fixture (tests/tiers.py) or is marked "
                 "integration"]:
        assert line in said, line


def test_a_declared_server_fixture_or_an_integration_mark_puts_a_test_in_the_integration_tier(inner):
    result = inner.runpytest_inprocess("-m", "integration", "--collect-only", "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["test_inner.py::test_uses_a_declared_server", "test_inner.py::test_marked_integration",
                                 "2/10 tests collected (8 deselected)*"])
