"""What a benchmark runs against and runs: real servers from tests/harness.py (a private dockerd, etcd members,
ZooKeeper, Redis) in a scratch folder, real containers, the docker-register children pointed at them (one-shot
runs and a long-running `sync --every`), Docker's events as they happen, and etcd's keys read without gRPC.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paths  # noqa: F401  (tests/ on sys.path)
from harness import Dockerd, Etcd, Redis, ZooKeeper, publish, require, start_cluster, stop_process, wait_until
from hosts import LAYOUT_KEYS, Watch, clean_env
from measure import Background
from report import log

#: The interpreter of the virtualenv whose console script (hosts.BINARY) the children run.
PYTHON = Path(sys.executable).with_name("python")
#: The image of the real containers, the service it registers as, and the host IP of the children.
IMAGE = "local/web:latest"
SERVICE = "web"
HOST_IP = "192.0.2.10"
#: Seconds between two passes of one host, as with `sync --every 10` or a 10 s timer.
INTERVAL = 10.0
#: The long-running modes of `sync --every INTERVAL`: whether each one reads Docker's events (else the timer mode).
MODES = {"events": True, "timer": False}


@contextlib.contextmanager
def scratch(prefix: str):
    """A scratch folder under /var/tmp (not a tmpfs: dockerd's vfs layers are large), removed at the end."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    try:
        yield root
    finally:
        subprocess.run(["rm", "-rf", str(root)], capture_output=True)


@contextlib.contextmanager
def servers(root: Path):
    """A private dockerd with the test images and a single etcd member; both stopped at the end."""
    dockerd, etcd = Dockerd(root / "docker"), Etcd(root / "etcd")
    try:
        log(f"starting dockerd ({dockerd.host}) and etcd ({etcd.url}) under {root}")
        dockerd.start()
        dockerd.build_images()
        etcd.start()
        yield dockerd, etcd
    finally:
        log("stopping dockerd (removing its containers) and etcd")
        dockerd.stop()
        etcd.stop()


@contextlib.contextmanager
def cluster(root: Path, size: int = 3):
    """A cluster of etcd members on loopback; stopped at the end."""
    members: list[Etcd] = []
    try:
        log(f"starting a {size}-node etcd cluster under {root}")
        members = start_cluster(root, size)
        yield members
    finally:
        for member in members:
            member.stop()


@contextlib.contextmanager
def backend_servers(root: Path, only: str | None = None, max_client_connections: int = 60):
    """A ZooKeeper (sessions up to 60 s, max_client_connections from one address) and a Redis on loopback; both
    stopped at the end.  With only ("zookeeper" or "redis") just that one starts, and None stands for the other."""
    zookeeper = ZooKeeper(root / "zookeeper", max_session_timeout_ms=60000,
                          max_client_connections=max_client_connections) if only in (None, "zookeeper") else None
    redis = Redis(root / "redis") if only in (None, "redis") else None
    started = [server for server in (zookeeper, redis) if server]
    try:
        log(f"starting {' and '.join(f'{type(s).__name__.lower()} ({s.endpoint})' for s in started)} under {root}")
        for server in started:
            server.start()
        yield zookeeper, redis
    finally:
        for server in started:
            server.stop()


def run_container(dockerd: Dockerd, *args: str) -> str:
    """`docker run -d` with a published port 80 and these arguments; the full id."""
    return dockerd.docker("run", "-d", *publish(80), *args).stdout.strip()


def start_containers(dockerd: Dockerd, count: int, workers: int = 4) -> float:
    """Start count more local/web containers, each publishing port 80; return the seconds it took."""
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: run_container(dockerd, IMAGE), range(count)))
    return time.perf_counter() - started


def running_ids(dockerd: Dockerd) -> list[str]:
    """Full ids of the running containers."""
    return dockerd.docker("ps", "-q", "--no-trunc").stdout.split()


def web_key(prefix: str, container_id: str) -> str:
    """The discover layout's key of a local/web container."""
    return LAYOUT_KEYS["discover"].format(prefix=prefix, id12=container_id[:12])


def child_env(dockerd: Dockerd, etcd: Etcd, prefix: str, lock: Path) -> dict[str, str]:
    """Environment of a docker-register child: our servers, a fixed host IP, a prefix of its own."""
    # Not Host.env: a 10 s timeout of its own, and PYTHONPATH as given, so the CLI imports what print_machine names.
    return clean_env(DOCKER_HOST=dockerd.host, ETCD_HOST=etcd.endpoint, HOST_IP=HOST_IP, DOCKER_REGISTER_PREFIX=prefix,
                     DOCKER_REGISTER_TIMEOUT="10", DOCKER_REGISTER_LOCK=str(lock))


class Loop(Watch):
    """tests/hosts.py's long-running `sync --every N [--events]` as a with-block that begins once its first pass
    has ended and stops the child at its end; its lines timed on time.time(), the clock of Docker's events."""

    clock = staticmethod(time.time)
    SUMMARY = re.compile(r"^added \d+, updated \d+, removed \d+, unchanged \d+ in ([0-9.]+)s")

    def __init__(self, env: dict[str, str], every: float, events: bool):
        super().__init__(env, every, events=events)

    def __enter__(self) -> "Loop":
        try:
            self.wait_passes(1, 30)
        except BaseException:
            self.terminate()
            raise
        return self

    def __exit__(self, *_) -> None:
        self.terminate()

    def timed_passes(self, since: float = 0.0) -> list[tuple[float, float]]:
        """(time the line arrived, seconds the pass reported) of each pass that ended after since."""
        return [(at, float(match.group(1))) for at, line in list(self.out)
                if at > since and (match := self.SUMMARY.match(line))]

    def notes(self) -> list[str]:
        """Lines that are not a pass's summary (notes and errors)."""
        return [line for _, line in list(self.out) if not self.SUMMARY.match(line)] + self.stderr_lines()


class DockerEvents(Background):
    """Records the container events of an engine as they happen (`docker events`, a child in its own session,
    stopped at the end of the with-block): when Docker says each (container id, action) first happened, from the
    event's own timeNano (time.time()'s clock)."""

    def __init__(self, dockerd: Dockerd):
        self.times: dict[tuple[str, str], float] = {}
        self.proc = subprocess.Popen([require("docker"), "-H", dockerd.host, "events", "--filter", "type=container",
                                      "--format", "{{json .}}"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        super().__init__("docker-events")

    def __exit__(self, *_) -> None:
        stop_process(self.proc)
        super().__exit__()

    def _run(self) -> None:
        for line in self.proc.stdout:
            event = json.loads(line)
            self.times.setdefault((event["Actor"]["ID"], event["Action"]), event["timeNano"] / 1e9)

    def when(self, container_id: str, action: str, timeout: float = 30) -> float:
        """When Docker reported action for the container (waiting for the event up to timeout)."""
        return wait_until(lambda: self.times.get((container_id, action)), timeout,
                          f"docker event {action} of {container_id[:12]}", interval=0.01)


class Gateway:
    """etcd's v3 JSON gateway: no gRPC in the benchmark process, so forking children stays safe."""

    # Not harness.Etcd's etcdctl reads: a poll every 10 ms must not start a process each time.

    def __init__(self, url: str):
        self.url = url

    def post(self, path: str, body: dict) -> dict:
        """POST one JSON request."""
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=5) as reply:
            return json.loads(reply.read())

    def exists(self, key: str) -> bool:
        """Whether the key is present."""
        return int(self.post("/v3/kv/range", {"key": b64(key), "count_only": True}).get("count", 0)) > 0

    def grant(self, ttl: int) -> int:
        """Grant a lease; return its id."""
        return int(self.post("/v3/lease/grant", {"TTL": ttl})["ID"])

    def put(self, key: str, value: str, lease: int = 0) -> None:
        """Put a key, on a lease when given."""
        self.post("/v3/kv/put", {"key": b64(key), "value": b64(value), "lease": lease})

    def keys(self, prefix: str) -> set[str]:
        """Every key under prefix, in one keys-only range."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        reply = self.post("/v3/kv/range", {"key": b64(prefix), "range_end": b64(end), "keys_only": True})
        return {base64.b64decode(kv["key"]).decode() for kv in reply.get("kvs", [])}


def b64(text: str) -> str:
    """Base64 of a UTF-8 string, as the gateway wants keys and values."""
    return base64.b64encode(text.encode()).decode()
