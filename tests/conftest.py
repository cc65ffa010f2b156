"""Session fixtures: one real dockerd and one real etcd for the whole test run; the tiers come from tiers.py."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# Cache the rewritten test modules and the compiled module in __pycache__ (ignored by git) even where the
# environment says PYTHONDONTWRITEBYTECODE: rewriting and compiling them again on every run is about 5 s of
# the unit tier's 15.
sys.dont_write_bytecode = False

#: The checkout under test: its module comes first on sys.path, before any installed copy.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
pytest.register_assert_rewrite("fakes", "harness", "hosts", "strategies", "tiers")
import docker_register  # noqa: E402
from harness import (Certs, Docker29, Dockerd, Etcd, Podman, ReadOnlyProxy, Redis, ZooKeeper, free_subnet,  # noqa: E402
                     require)
from hosts import World  # noqa: E402
from tiers import server_fixture  # noqa: E402

assert Path(docker_register.__file__).resolve() == ROOT / "docker_register.py", (
    f"the tests import {docker_register.__file__}, not the checkout's {ROOT / 'docker_register.py'}")

pytest_plugins = ("tiers", "pytester")

#: Hypothesis examples per property: 300 in the full suite (scripts/test, what CI runs), 40 otherwise (the
#: developer loop, scripts/test -m unit or a plain pytest run).
settings.register_profile("full", max_examples=300)
settings.register_profile("quick", max_examples=40)
settings.load_profile(os.environ.get("DOCKER_REGISTER_TEST_PROFILE", "quick"))

_counter = itertools.count(1)
_proxies = itertools.count(1)


def pytest_report_header(config) -> str:
    """Which etcd the integration tier runs against (DOCKER_REGISTER_TEST_ETCD_BIN picks another)."""
    try:
        etcd = require("etcd")
        version = subprocess.run([etcd, "--version"], capture_output=True, text=True, timeout=30).stdout
        return f"etcd: {etcd} ({version.splitlines()[0] if version else 'no version'})"
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        return f"etcd: {error}"


@pytest.fixture(scope="session")
def servers_root(tmp_path_factory) -> Path:
    # Unix socket paths are limited to 108 bytes: keep the root short.
    return Path(tmp_path_factory.mktemp("srv"))


@server_fixture(scope="session")
def dockerd(servers_root):
    engine = Dockerd(servers_root / "docker").start()
    engine.build_images()
    yield engine
    engine.stop()


@server_fixture(scope="session")
def proxy(servers_root, dockerd):
    """HAProxy with the shipped read-only proxy configuration in front of the shared dockerd, for the run."""
    server = ReadOnlyProxy(servers_root / "proxy", dockerd).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    """A test CA (which no system store trusts), a server certificate for 127.0.0.1 and client certificates:
    root, docker-register, and an intruder no server authorises."""
    return Certs(tmp_path_factory.mktemp("certs"), client_names=("root", "docker-register", "intruder"))


@server_fixture(scope="session")
def etcd(servers_root):
    member = Etcd(servers_root / "etcd").start()
    yield member
    member.stop()


@server_fixture(scope="session")
def second_dockerd(tmp_path_factory):
    """Another dockerd on this machine, with a bridge and subnet of its own, for the whole run."""
    pid = os.getpid()
    bridge = f"drs{pid % 100000}"
    engine = Dockerd(tmp_path_factory.mktemp("eng2"), bridge=bridge, subnet=free_subnet("10.214", pid, bridge))
    try:
        engine.start()
        engine.build_images()
        yield engine
    finally:
        engine.stop()


@pytest.fixture
def second_engine(second_dockerd):
    """A second host's engine, which a test may also stop and start: running again and emptied afterwards."""
    yield second_dockerd
    if second_dockerd.proc.poll() is not None:
        second_dockerd.start()
    second_dockerd.remove_all_containers()


@server_fixture(scope="session")
def podman_service(servers_root, dockerd):
    """A rootful Podman's Docker-compatible socket for the run, with the dockerd's test images loaded."""
    service = Podman(servers_root / "podman")
    try:
        service.start()
        service.load_images(dockerd)
        yield service
    finally:
        service.stop()


@pytest.fixture
def podman(podman_service):
    """The shared Podman, emptied after the test."""
    yield podman_service
    podman_service.remove_all_containers()


@pytest.fixture
def engine(dockerd):
    """The shared dockerd, emptied after the test so no container leaks into the next one."""
    yield dockerd
    dockerd.remove_all_containers()


@server_fixture
def docker29(engine, servers_root):
    """Docker 29's API rules in front of the shared dockerd: a proxy on a private socket that refuses versioned
    paths below 1.44 (as Docker 29 does) and forwards the rest; `.host` is its DOCKER_HOST."""
    proxy = Docker29(engine.socket, servers_root / f"d29-{next(_proxies)}").start()
    yield proxy
    proxy.stop()


@pytest.fixture
def world(engine, etcd, tmp_path):
    """A fresh prefix and host IP per test, and a helper to run docker-register against them.

    Afterwards every lease is revoked, so no lease of this test expires (and moves the revision)
    during the next one."""
    yield World(engine, etcd, next(_counter), tmp_path)
    etcd.revoke_all_leases()


@pytest.fixture
def podman_world(podman, etcd, tmp_path):
    """world, with the Podman socket as the engine (DOCKER_HOST) instead of the dockerd."""
    yield World(podman, etcd, next(_counter), tmp_path)
    etcd.revoke_all_leases()


@server_fixture(scope="session")
def zookeeper(servers_root):
    """A private ZooKeeper for the run (sessions up to 20 s), shared by the ZooKeeper and failover tests."""
    server = ZooKeeper(servers_root / "zookeeper", max_session_timeout_ms=20000).start()
    yield server
    server.stop()


@server_fixture(scope="session")
def redis_server(servers_root):
    """A private redis-server for the run, shared by the Redis and failover tests."""
    server = Redis(servers_root / "redis").start()
    yield server
    server.stop()
