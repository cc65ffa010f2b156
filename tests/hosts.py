"""What the integration tests run docker-register with: a host's environment and real CLI runs (Host), a host on
the shared etcd (World), and a long-running `sync --every` whose output lines are read as they come (Watch).
The benchmark (bench/servers.py) builds its children's environment and its long-running child from these too."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import Dockerd, Etcd, stop_process, wait_until

#: The checkout under test.
ROOT = Path(__file__).resolve().parent.parent
#: The installed console script, next to the interpreter running the tests; Host.env puts the checkout first on
#: its PYTHONPATH, so it runs the checkout's module too.
BINARY = str(Path(sys.executable).with_name("docker-register"))


#: Prefixes of the variables that point docker-register at an engine or a store (DOCKER_REGISTER_* among them).
SERVER_VARIABLES = ("DOCKER_", "ETCD", "ZOOKEEPER", "REDIS")


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without its own SERVER_VARIABLES, plus these: a child run then talks only to
    the engine and store a test (or the benchmark) started and names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SERVER_VARIABLES)}
    env.update(variables)
    return env


def checkout_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment (this process's by default) with the checkout first on PYTHONPATH: a child process that
    imports docker_register, the console script included, then runs the checkout and never an older install."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    return env


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
        env = clean_env(DOCKER_HOST=self.engine.host, HOST_IP=self.host_ip, DOCKER_REGISTER_PREFIX=self.prefix,
                        DOCKER_REGISTER_TIMEOUT="3", COLUMNS="200", DOCKER_REGISTER_LOCK=str(self.lock_file),
                        **self.store_env())
        env.update(extra)
        return checkout_env(env)

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


# --- sync --every, watched ---------------------------------------------------------------------------

#: A web container that keeps serving 6 s after SIGTERM (FACTS: busybox httpd as PID 1 ignores SIGTERM).
SLOW_STOP = ["sh", "-c", "httpd -f -p 80 -h /www & trap 'sleep 6; exit 0' TERM; wait; wait"]


class Watch:
    """A running `docker-register sync --every N [--events]`, its output lines read as they come, with times."""

    #: The clock of the lines' times (the benchmark's Loop reads time.time(), the clock of Docker's events).
    clock = staticmethod(time.monotonic)

    def __init__(self, env: dict[str, str], every: float, ttl: int | None = None, events: bool = True):
        args = ["--every", f"{every:g}", *(["--events"] if events else []), *(["--ttl", str(ttl)] if ttl else [])]
        self.proc = subprocess.Popen([BINARY, "sync", *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.out: list[tuple[float, str]] = []
        self.err: list[tuple[float, str]] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()
        self.exit_seconds: float | None = None

    def _read(self, stream, lines) -> None:
        for line in stream:
            lines.append((self.clock(), line.rstrip("\n")))

    def passes(self, since: float = 0.0) -> list[float]:
        """When each summary line came (one per pass), from `since` on."""
        return [t for t, line in list(self.out) if line.startswith("added ") and t >= since]

    def stderr_lines(self) -> list[str]:
        return [line for _, line in list(self.err)]

    def wait_passes(self, count: int, timeout: float, since: float = 0.0) -> list[float]:
        def enough():
            if self.proc.poll() is not None:
                raise AssertionError(f"docker-register exited {self.proc.returncode}: {self.stderr_lines()}")
            return len(self.passes(since)) >= count
        wait_until(enough, timeout, f"{count} passes", interval=0.02)
        return self.passes(since)

    def wait_quiet(self, seconds: float, timeout: float) -> list[float]:
        """Wait until no pass has ended for `seconds` (as long as passes keep coming, up to timeout); the passes."""
        started = self.clock()
        wait_until(lambda: self.clock() - max(self.passes(), default=started) >= seconds, timeout,
                   f"{seconds}s without a pass", interval=0.05)
        return self.passes()

    def terminate(self) -> None:
        """SIGTERM, then wait for the exit (SIGKILL after 10 s so nothing leaks)."""
        if self.proc.poll() is None:
            started = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                stop_process(self.proc, signal.SIGKILL)
            self.exit_seconds = time.monotonic() - started
        for reader in self.readers:
            reader.join(5)


def event_requests(engine: Dockerd) -> int:
    """GET /events requests the engine has received so far."""
    return sum(1 for request in engine.api_requests() if "/events" in request)


@contextlib.contextmanager
def watching(world, engine: Dockerd | None = None, every: int = 60, ttl: int = 90):
    """Run `sync --every --events` against world's etcd and the engine until the block ends; wait for its
    first pass and its event stream first. On the way out: SIGTERM, and exit 0 within 3 s."""
    engine = engine or world.engine
    streams = event_requests(engine)
    watch = Watch(world.env(DOCKER_HOST=engine.host), every, ttl)
    try:
        watch.wait_passes(1, 30)
        wait_until(lambda: event_requests(engine) > streams, 10, "the event stream to open")
        yield watch
    finally:
        watch.terminate()
    assert watch.proc.returncode == 0, watch.stderr_lines()
    assert watch.exit_seconds < 3, watch.exit_seconds
    assert not [line for line in watch.stderr_lines() if "Traceback" in line or "Exception" in line], \
        watch.stderr_lines()


def web_key_of(world, cid: str, service: str = "web") -> str:
    return f"{world.prefix}/{service}/{cid[:12]}"


def inspect(engine: Dockerd, cid: str, template: str) -> str:
    return engine.docker("inspect", "-f", template, cid, check=False).stdout.strip()
