"""Session fixtures: one real dockerd and one real etcd for the whole test run."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))
from harness import Certs, Docker29, Dockerd, Etcd, Podman, ReadOnlyProxy, Redis, ZooKeeper, require  # noqa: E402

#: Hypothesis examples per property: 300 in the full suite (scripts/test, what CI runs), 40 otherwise (the
#: developer loop, scripts/test -m unit or a plain pytest run).
settings.register_profile("full", max_examples=300)
settings.register_profile("quick", max_examples=40)
settings.load_profile(os.environ.get("DOCKER_REGISTER_TEST_PROFILE", "quick"))

#: The installed console script, next to the interpreter running the tests.
BINARY = str(Path(sys.executable).with_name("docker-register"))
_counter = itertools.count(1)
_proxies = itertools.count(1)

#: Fixtures that start a real server (dockerd or etcd), or run a server's own tool (promtool); a test needing any
#: of them, even through another fixture, is in the `integration` tier. A new fixture that starts a server belongs here.
SERVER_FIXTURES = frozenset({"dockerd", "etcd", "cluster", "tls_etcd", "mtls_etcd", "http_auth_etcd", "small_etcd",
                             "second_dockerd", "second_engine", "edge", "zookeeper", "redis_server",
                             "digest_zookeeper", "tls_zookeeper", "tls_rd", "docker29", "proxy", "podman_service",
                             "podman", "sentinels", "zk_ensemble", "node_exporter", "prometheus", "promtool"})
#: Fixtures that build the Docker image (tests/test_image.py): the `image` tier, also `integration`.
IMAGE_FIXTURES = frozenset({"base_image", "wheel_server", "image"})


def pytest_collection_modifyitems(items) -> None:
    """Put every test in its tiers from the fixtures it uses: `integration` (starts a server), `image`
    (builds the image) or else `unit`. Nothing is marked by hand."""
    for item in items:
        # A parametrize argument may share a fixture's name (test_core's `image`): it is no fixture.
        used = set(item.fixturenames) - directly_parametrized(item)
        if used & IMAGE_FIXTURES:
            item.add_marker(pytest.mark.image)
        if used & (SERVER_FIXTURES | IMAGE_FIXTURES):
            item.add_marker(pytest.mark.integration)
        else:
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


@pytest.fixture(scope="session")
def dockerd(servers_root):
    engine = Dockerd(servers_root / "docker").start()
    engine.build_images()
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def etcd(servers_root):
    member = Etcd(servers_root / "etcd").start()
    yield member
    member.stop()


@pytest.fixture(scope="session")
def second_dockerd(tmp_path_factory):
    """Another dockerd on this machine, with a bridge and subnet of its own, for the whole run."""
    pid = os.getpid()
    engine = Dockerd(tmp_path_factory.mktemp("eng2"), bridge=f"drs{pid % 100000}", subnet=f"10.214.{pid % 250}.1/24")
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


@pytest.fixture(scope="session")
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


@pytest.fixture
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


#: Where each layout puts a local/web container's key, below a prefix.
LAYOUT_KEYS = {"discover": "{prefix}/web/{id12}",
               "traefik": "{prefix}/http/services/web/loadbalancer/servers/{id12}/url",
               "skydns": "{prefix}/local/docker/web/{id12}"}


class Host:
    """One host of a test: its engine, prefix, host IP and lock file, and the real CLI run against them."""

    #: First letter of the test's prefix, so each store's tests keep to their own keys.
    tag = "t"

    def __init__(self, engine: Dockerd, n: int, tmp_path: Path):
        self.engine = engine
        self.lock_file = tmp_path / "sync.lock"
        self.prefix = f"/{self.tag}{n}/backends"
        self.host_ip = f"192.0.2.{n % 250 + 2}"

    def store_env(self) -> dict[str, str]:
        """The variables that point the CLI at this test's store."""
        return {}

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "ETCD", "ZOOKEEPER", "REDIS"))}
        env.update(DOCKER_HOST=self.engine.host, HOST_IP=self.host_ip, DOCKER_REGISTER_PREFIX=self.prefix,
                   DOCKER_REGISTER_TIMEOUT="3", COLUMNS="200", DOCKER_REGISTER_LOCK=str(self.lock_file),
                   **self.store_env())
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess:
        """Run the installed docker-register as a real process."""
        return subprocess.run([BINARY, *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env(**extra), stdin=subprocess.DEVNULL)

    @contextlib.contextmanager
    def running(self, *args: str, **extra: str):
        """The installed docker-register running in the background (output piped), killed on the way out."""
        proc = subprocess.Popen([BINARY, *args], env=self.env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, stdin=subprocess.DEVNULL)
        try:
            yield proc
        finally:
            proc.kill()

    def sync(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        """Run sync and insist it succeeds."""
        result = self.run("sync", *args, **extra)
        assert result.returncode == 0, result.stderr
        return result

    def docker_run(self, *args: str) -> str:
        """Start a container; return its full id."""
        return self.engine.docker("run", "-d", *args).stdout.strip()

    def host_port(self, container: str, port: str) -> int:
        """The host port Docker published a container port on for IPv4 (the test host IP's family:
        Docker may give the :: twin another port)."""
        bindings = self.engine.docker("port", container, port).stdout.split()
        return int(next(b for b in bindings if b.startswith("0.0.0.0:")).rsplit(":", 1)[1])

    def web_keys(self, *containers: str, port: str = "80") -> dict[str, str]:
        """The discover keys of these local/web containers, published on 0.0.0.0, and the shared port key."""
        keys = {f"{self.prefix}/web/{cid[:12]}": f"{self.host_ip}:{self.host_port(cid, '80/tcp')}"
                for cid in containers}
        return {**keys, f"{self.prefix}/web/port": port}

    def in_layout(self, layout: str, container_id: str) -> tuple[dict[str, str], str, str]:
        """The variables of a run in a layout under the test's prefix (no leading / for traefik), that prefix,
        and where the layout puts the key of a local/web container."""
        prefix = self.prefix.lstrip("/") if layout == "traefik" else self.prefix
        key = LAYOUT_KEYS[layout].format(prefix=prefix, id12=container_id[:12])
        return {"DOCKER_REGISTER_LAYOUT": layout, "DOCKER_REGISTER_PREFIX": prefix}, prefix, key


class World(Host):
    """What one integration test on etcd works with."""

    def __init__(self, engine: Dockerd, etcd: Etcd, n: int, tmp_path: Path):
        super().__init__(engine, n, tmp_path)
        self.etcd = etcd

    def store_env(self) -> dict[str, str]:
        return {"ETCD_HOST": self.etcd.endpoint}

    def keys(self) -> dict[str, str]:
        """What etcd holds under this test's prefix, read with etcdctl."""
        return self.etcd.values(self.prefix + "/")

    def expected_keys(self) -> dict[str, str]:
        """The keys docker-register should hold for the running test containers (no labels, no
        healthchecks), worked out from the docker CLI alone."""
        expected = {}
        for line in self.engine.docker("ps", "--no-trunc", "--format", "{{.ID}} {{.Image}}").stdout.splitlines():
            cid, image = line.split()
            name = image.rsplit("/", 1)[-1].split(":", 1)[0]
            published: dict[str, int] = {}
            for line in self.engine.docker("port", cid).stdout.splitlines():
                private, _, binding = line.partition(" -> ")
                if binding.startswith("0.0.0.0:"):
                    published[private] = int(binding.rsplit(":", 1)[1])
            for private, public in published.items():
                port = private.split("/")[0]
                service = name if len(published) == 1 else f"{name}-{port}"
                expected[f"{self.prefix}/{service}/{cid[:12]}"] = f"{self.host_ip}:{public}"
                expected[f"{self.prefix}/{service}/port"] = port
        return expected


@pytest.fixture(scope="session")
def zookeeper(servers_root):
    """A private ZooKeeper for the run (sessions up to 20 s), shared by the ZooKeeper and failover tests."""
    server = ZooKeeper(servers_root / "zookeeper", max_session_timeout_ms=20000).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(servers_root):
    """A private redis-server for the run, shared by the Redis and failover tests."""
    server = Redis(servers_root / "redis").start()
    yield server
    server.stop()
