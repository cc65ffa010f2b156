"""What every benchmark shares: the machine stamp, child runs, tables, servers and synthetic containers.

The servers come from tests/harness.py (a private dockerd, etcd members on free loopback ports).
Nothing here measures anything by itself; run_cost.py, deregister.py and fleet.py do, bench.py runs them.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from harness import (Dockerd, Etcd, Redis, Traefik, ZooKeeper, free_port, publish,  # noqa: E402,F401
                     require, start_cluster, stop_process, wait_until)

#: The installed console script and the interpreter of the same virtualenv.
BINARY = Path(sys.executable).with_name("docker-register")
PYTHON = Path(sys.executable).with_name("python")
#: GNU time measures a child's peak RSS from a small parent: ru_maxrss of a child forked straight from
#: this process starts at this process's own RSS (Linux keeps the pre-exec high-water mark).
GNU_TIME = shutil.which("time") or ("/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None)
IMAGE = "local/web:latest"
SERVICE = "web"
HOST_IP = "192.0.2.10"
#: Seconds between two passes of one host, as with `sync --every 10` or a 10 s timer.
INTERVAL = 10.0
#: The long-running modes of `sync --every INTERVAL`: each one's extra flags (none: the timer mode).
MODES = {"events": ("--events",), "timer": ()}
#: Seconds an etcd call may take in the in-process runs.
TIMEOUT = 5.0


def log(message: str) -> None:
    """Progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Statistics and formatting
# ---------------------------------------------------------------------------


def median(values) -> float:
    """Median of a non-empty sequence."""
    return statistics.median(values)


def spread(values, fmt: str = "{:g}") -> str:
    """Median, with the range when the values differ."""
    values = list(values)
    low, high, mid = min(values), max(values), median(values)
    text = fmt.format(mid)
    return text if low == high else f"{text} ({fmt.format(low)}–{fmt.format(high)})"


def percentile(values, q: float) -> float:
    """The q-quantile (0..1) of values, 0 when empty."""
    values = sorted(values)
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def num(value: float) -> str:
    """A rate with two decimals below 10, one below 100, none above."""
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def same(values) -> str:
    """The one value every repeat gave, or all of them when they differ."""
    values = list(values)
    return values[0] if len(set(values)) == 1 else " / ".join(values)


def ms(values) -> str:
    """Median in milliseconds, with the range."""
    values = [v * 1000 for v in values]
    return f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"


def print_table(header: list[str], rows: list[tuple[str, list[str], str]]) -> None:
    """Print label | cells | note as aligned columns."""
    widths = [max(len(header[0]), *(len(r[0]) for r in rows))]
    widths += [max(len(header[i + 1]), *(len(r[1][i]) for r in rows)) for i in range(len(header) - 2)]
    for label, cells, note in [(header[0], header[1:-1], header[-1]), *rows]:
        line = label.ljust(widths[0]) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths[1:]))
        print((line + "  " + note).rstrip())


def table_rows(results: list, specs: list[tuple]) -> list[tuple[str, list[str], str]]:
    """Table rows from (label, cell function[, note]) specs: one cell per result."""
    return [(label, [cell(r) for r in results], note[0] if note else "") for label, cell, *note in specs]


# ---------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------


@dataclass
class ChildRun:
    """One finished child process: wall and CPU seconds, peak RSS, exit code and output."""

    wall: float
    cpu: float
    maxrss_mb: float
    returncode: int
    stdout: str
    stderr: str


def run_child(argv: list[str], env: dict[str, str] | None = None) -> ChildRun:
    """Run a process to completion: wall clock here, CPU from wait4, peak RSS from GNU time (else wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as rss:
        wrapped = [GNU_TIME, "-f", "%M", "-o", rss.name, *argv] if GNU_TIME else argv
        started = time.perf_counter()
        proc = subprocess.Popen(wrapped, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd="/")
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        maxrss_kb = int(rss.read().split()[-1]) if GNU_TIME else usage.ru_maxrss
        out.seek(0)
        err.seek(0)
        return ChildRun(wall, usage.ru_utime + usage.ru_stime, maxrss_kb / 1024, proc.returncode,
                        out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def check(run: ChildRun, what: str) -> None:
    """Stop the benchmark when a docker-register run failed."""
    if run.returncode != 0:
        raise RuntimeError(f"{what} exited {run.returncode}: {run.stderr.strip()}")


def check_no_change(run: ChildRun, what: str) -> None:
    """Stop the benchmark when a run that should change nothing failed or changed something."""
    check(run, what)
    if not run.stdout.startswith("added 0, updated 0, removed 0"):
        raise RuntimeError(f"a no-change run changed something: {run.stdout!r}")


def reported_seconds(stdout: str) -> float:
    """The 'in 0.123s' a run reports about itself (from the start of sync(), after typer's import)."""
    match = re.search(r" in ([0-9.]+)s", stdout)
    return float(match.group(1)) if match else float("nan")


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds a process used so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# The machine stamp
# ---------------------------------------------------------------------------


def first_line(command: list[str]) -> str:
    """First line a command prints, or '?' when it cannot run."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        return (result.stdout or result.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo."""
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def git_state() -> str:
    """Commit of the checkout, and which measured files the working tree changes on top of it."""
    head = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    changed = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "docker_register.py", "bench"],
                             capture_output=True, text=True).stdout.split("\n")
    names = sorted({line[3:].split("/")[0] + ("/" if "/" in line[3:] else "") for line in changed if line.strip()})
    return head + (f" + working tree ({', '.join(names)} changed)" if names else "")


def load() -> str:
    """The load averages, which tell whether something else was using the machine."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def stamp() -> str:
    """The machine's cores, its load now and the date, for a picture's caption."""
    return f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end, {time.strftime('%Y-%m-%d')}"


def installed_module() -> str:
    """Path and content hash of the docker_register the CLI imports."""
    import hashlib
    import importlib.util

    origin = Path(importlib.util.find_spec("docker_register").origin)
    return f"{origin} (sha256 {hashlib.sha256(origin.read_bytes()).hexdigest()[:12]})"


def compile_module() -> str:
    """Write the module's bytecode, as installing a package does: with PYTHONDONTWRITEBYTECODE set (or a
    read-only checkout), every child run would otherwise compile the module from source (about 50 ms)."""
    import importlib.util
    import py_compile

    return py_compile.compile(importlib.util.find_spec("docker_register").origin, doraise=True)


def print_machine(title: str, children: bool = True) -> None:
    """Print what the figures were measured on (and, for child processes, how they are timed)."""
    print(f"# {title}")
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    print(f"machine : {cpu_model()}, {os.cpu_count()} cores, {memory:.1f} GiB, Linux {platform.release()}")
    print(f"python  : {platform.python_version()} ({sys.executable})")
    print(f"etcd    : {first_line([require('etcd'), '--version'])}")
    if children:
        print(f"dockerd : {first_line([require('dockerd'), '--version'])}")
    print(f"module  : checkout at {git_state()}; {'CLI ' + str(BINARY) + ' ' if children else ''}imports "
          f"{installed_module()}")
    if children:
        print(f"bytecode: {compile_module()} (written before the runs, as an installed package has it)")
        print("timing  : wall = perf_counter around each child; CPU = user+sys from wait4; peak RSS = "
              + ("GNU time %M (its fork overhead included, < 1 ms)" if GNU_TIME else
                 "wait4 ru_maxrss (GNU time missing: includes this process's RSS at fork; install package 'time')"))
    print(f"load    : {load()} (1/5/15 min) at start, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print()


# ---------------------------------------------------------------------------
# etcd from this process without gRPC (the JSON gateway), and counters
# ---------------------------------------------------------------------------


class Gateway:
    """etcd's v3 JSON gateway: no gRPC in the benchmark process, so forking children stays safe."""

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


class Background:
    """Work done by a thread of this process while a with-block runs: started on entry, told to stop (the
    `_stop` event) and joined on exit."""

    def __init__(self, name: str):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError


class ChildLines(Background):
    """A child process (its own session) whose output lines a thread hands to take(line) as they arrive;
    stopped with SIGTERM when the with-block ends."""

    def __init__(self, argv: list[str], name: str, **popen):
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                     start_new_session=True, **popen)
        super().__init__(name)

    def __exit__(self, *_) -> None:
        stop_process(self.proc)
        super().__exit__()

    def _run(self) -> None:
        for line in self.proc.stdout:
            self.take(line)

    def take(self, line: str) -> None:
        raise NotImplementedError


class Watch(Background):
    """Polls a set (the keys under a prefix, the servers Traefik runs, ...) every `every` seconds in a thread,
    and keeps when each member was first seen present and when it was first seen gone after that
    (time.time(), the clock of Docker's event timestamps; resolution one poll)."""

    def __init__(self, read, every: float = 0.01):
        self.read, self.every = read, every
        self.appeared: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self.polls = self.errors = 0
        self.present: set[str] = set()
        super().__init__("watch")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                members = set(self.read())
            except OSError:  # a poll that failed (a busy server) tells nothing: the next one will
                self.errors += 1
                self._stop.wait(self.every)
                continue
            now = time.time()
            for member in members - self.present:
                self.appeared.setdefault(member, now)
            for member in self.present - members:
                self.gone.setdefault(member, now)
            self.present, self.polls = members, self.polls + 1
            self._stop.wait(self.every)

    def when_present(self, member: str, timeout: float) -> float:
        """When member was first seen (waiting for it up to timeout)."""
        return wait_until(lambda: self.appeared.get(member), timeout, f"{member} to appear", interval=0.01)

    def when_gone(self, member: str, timeout: float) -> float:
        """When member was first seen gone after being present (waiting for it up to timeout)."""
        return wait_until(lambda: self.gone.get(member), timeout, f"{member} to go", interval=0.01)


class DockerEvents(ChildLines):
    """Records the container events of an engine as they happen (`docker events`): when Docker says each
    (container id, action) first happened, from the event's own timeNano (time.time()'s clock)."""

    def __init__(self, dockerd: Dockerd):
        self.times: dict[tuple[str, str], float] = {}
        super().__init__([require("docker"), "-H", dockerd.host, "events", "--filter", "type=container",
                          "--format", "{{json .}}"], "docker-events")

    def take(self, line: str) -> None:
        event = json.loads(line)
        self.times.setdefault((event["Actor"]["ID"], event["Action"]), event["timeNano"] / 1e9)

    def when(self, container_id: str, action: str, timeout: float = 30) -> float:
        """When Docker reported action for the container (waiting for the event up to timeout)."""
        return wait_until(lambda: self.times.get((container_id, action)), timeout,
                          f"docker event {action} of {container_id[:12]}", interval=0.01)


def b64(text: str) -> str:
    """Base64 of a UTF-8 string, as the gateway wants keys and values."""
    return base64.b64encode(text.encode()).decode()


@dataclass
class Snapshot:
    """Counters at one moment: etcd writes, etcd RPCs per method, Docker API requests."""

    metrics: dict[str, float]
    rpcs: dict[str, float]
    docker: list[str] = field(default_factory=list)


def snapshot(etcd: Etcd, dockerd: Dockerd | None = None) -> Snapshot:
    """Read the counters now."""
    return Snapshot(etcd.metrics(), etcd.rpcs(), dockerd.api_requests() if dockerd else [])


@dataclass
class Delta:
    """What happened between two snapshots."""

    metrics: dict[str, float]
    rpcs: dict[str, float]
    docker: list[str]

    @property
    def rpc_total(self) -> float:
        """etcd RPCs of all methods."""
        return sum(self.rpcs.values())

    @property
    def write_txns(self) -> float:
        """Write transactions: raft proposals less the lease grants and revokes (a read-only Txn is no proposal)."""
        return (self.metrics["etcd_server_proposals_committed_total"]
                - self.rpcs.get("LeaseGrant", 0) - self.rpcs.get("LeaseRevoke", 0))

    def rpc_text(self) -> str:
        """Per-method RPC counts, e.g. 'LeaseKeepAlive 1, Range 1'."""
        return ", ".join(f"{m} {n:g}" for m, n in sorted(self.rpcs.items())) or "none"


def delta(before: Snapshot, after: Snapshot) -> Delta:
    """Difference of two snapshots."""
    metrics = {name: after.metrics[name] - before.metrics.get(name, 0) for name in after.metrics}
    rpcs = {m: n - before.rpcs.get(m, 0) for m, n in after.rpcs.items() if n != before.rpcs.get(m, 0)}
    return Delta(metrics, rpcs, after.docker[len(before.docker):])


# ---------------------------------------------------------------------------
# Synthetic containers and in-process runs of docker_register
# ---------------------------------------------------------------------------


def synthetic_container(rng: random.Random, index: int, image: str = IMAGE, private_port: int = 80) -> dict:
    """One running container publishing one tcp port on the wildcard address (IPv4 and IPv6 twins)."""
    public = 32768 + index
    return {
        "Id": f"{rng.getrandbits(256):064x}",
        "Names": [f"/{image.rsplit('/', 1)[-1].split(':')[0]}-{index}"],
        "Image": image,
        "Command": "/bin/httpd -f -p 80 -h /www",
        "Created": 1700000000 + index,
        "Ports": [{"IP": "0.0.0.0", "PrivatePort": private_port, "PublicPort": public, "Type": "tcp"},
                  {"IP": "::", "PrivatePort": private_port, "PublicPort": public, "Type": "tcp"}],
        "Labels": {},
        "State": "running",
        "Status": "Up 3 minutes",
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": f"172.17.{index // 250}.{index % 250 + 2}",
                                                    "IPPrefixLen": 16}}},
    }


def synthetic_containers(count: int, rng: random.Random, images: tuple[str, ...] = (IMAGE,)) -> list[dict]:
    """count containers spread evenly over images."""
    return [synthetic_container(rng, i, images[i % len(images)]) for i in range(count)]


class ListedContainers:
    """A ContainerSource over a list held in memory: what GET /containers/json would answer, without Docker."""

    where = "synthetic container list"

    def __init__(self, containers: list[dict]):
        self.containers = containers

    def running_containers(self) -> list[dict]:
        """The list as it is now (a simulated host may have replaced some of it)."""
        return self.containers

    def exposed_ports(self, container_id: str) -> list[str]:
        """What an inspect would say a host-network container exposes ("80/tcp"), from its "ExposedPorts"."""
        return sorted(next((c.get("ExposedPorts", ()) for c in self.containers if c["Id"] == container_id), ()))


def make_config(endpoints: str, host_ip: str, prefix: str, ttl: int = 30, layout: str = "discover",
                backend=None, lock_file: str | None = None):
    """A docker_register.Config for in-process runs; backend (a docker_register.Settings) names another
    store than etcd, validated as the CLI does (lock_file places ZooKeeper's session file)."""
    import docker_register as dr

    config = dr.Config(endpoints=dr.parse_endpoints(endpoints), host_ip=host_ip, prefix=prefix, ttl=ttl,
                       timeout=TIMEOUT, layout_name=layout, lock_file=lock_file)
    if backend is None or backend.backend == "etcd":
        return config
    if backend.backend == "zookeeper":
        return dataclasses.replace(config, backend="zookeeper",
                                   zookeeper=dr.zookeeper_settings(backend, prefix, lock_file, host_ip))
    return dataclasses.replace(config, backend=backend.backend.value, redis=dr.redis_settings(backend))


def synthetic_source(n: int, seed: int, labels: dict[str, str] | None = None) -> ListedContainers:
    """n generated containers (ids from seed), each with these labels, as an in-memory container source."""
    containers = synthetic_containers(n, random.Random(seed))
    for container in containers:
        container["Labels"] = dict(labels or {})
    return ListedContainers(containers)


def timed_sync(config, source, read, difference) -> tuple[float, object]:
    """One real sync in this process: reconcile through the store the config names (opened and closed as a run
    does), timed; and difference(before, after) of the counters read() returns around it."""
    import docker_register as dr

    before = read()
    started = time.perf_counter()
    store, close = dr.open_store(config)
    try:
        dr.reconcile(config, source, store, dry_run=False)
    finally:
        close()
    seconds = time.perf_counter() - started
    return seconds, difference(before, read())


def preload_clients() -> None:
    """Import what the etcd adapter imports lazily, so in-process timings exclude imports."""
    import docker_register as dr

    dr.quiet_grpc_defaults()
    import etcd3  # noqa: F401
    import grpc  # noqa: F401


# ---------------------------------------------------------------------------
# Servers and real containers
# ---------------------------------------------------------------------------


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


@contextlib.contextmanager
def scratch(prefix: str):
    """A scratch folder under /var/tmp (not a tmpfs: dockerd's vfs layers are large), removed at the end."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    try:
        yield root
    finally:
        subprocess.run(["rm", "-rf", str(root)], capture_output=True)


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


def child_env(dockerd: Dockerd, etcd: Etcd, prefix: str, lock: Path) -> dict[str, str]:
    """Environment of a docker-register child: our servers, a fixed host IP, a prefix of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "ETCD"))}
    env.update(DOCKER_HOST=dockerd.host, ETCD_HOST=etcd.endpoint, HOST_IP=HOST_IP,
               DOCKER_REGISTER_PREFIX=prefix, DOCKER_REGISTER_TIMEOUT="10", DOCKER_REGISTER_LOCK=str(lock))
    return env


class Loop(ChildLines):
    """A long-running `docker-register sync --every N [--events] ...` child, its output lines timestamped as
    they arrive (time.time()); the with-block begins once its first pass has ended."""

    SUMMARY = re.compile(r"^added \d+, updated \d+, removed \d+, unchanged \d+ in ([0-9.]+)s")

    def __init__(self, env: dict[str, str], every: float, *flags: str):
        self.lines: list[tuple[float, str]] = []
        super().__init__([str(BINARY), "sync", "--every", f"{every:g}", *flags], "loop-output", env=env,
                         stderr=subprocess.STDOUT, cwd="/")

    def __enter__(self) -> "Loop":
        super().__enter__()
        try:
            self.wait_passes(1, 30)
        except BaseException:
            self.__exit__()
            raise
        return self

    def take(self, line: str) -> None:
        self.lines.append((time.time(), line.rstrip()))

    def passes(self, since: float = 0.0) -> list[tuple[float, float]]:
        """(time the line arrived, seconds the pass reported) of each pass that ended after since."""
        return [(at, float(match.group(1))) for at, line in list(self.lines)
                if at > since and (match := self.SUMMARY.match(line))]

    def wait_passes(self, count: int, timeout: float, since: float = 0.0) -> None:
        """Wait until count passes have ended after since (failing early if the child died)."""
        def done():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{' '.join(self.argv)} exited {self.proc.returncode}: "
                                   + " | ".join(line for _, line in self.lines[-5:]))
            return len(self.passes(since)) >= count
        wait_until(done, timeout, f"{count} passes of {' '.join(self.argv[1:])}", interval=0.05)

    def notes(self) -> list[str]:
        """Lines that are not a pass's summary (notes and errors)."""
        return [line for _, line in self.lines if not self.SUMMARY.match(line)]


def thread_cpu_ns(pid: int) -> int:
    """CPU nanoseconds the live threads of a process used so far (/proc/<pid>/task/*/schedstat): finer than
    cpu_seconds' clock ticks, without the threads that have exited."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def memory_kb(pid: int) -> dict[str, int]:
    """VmHWM (peak resident) and VmRSS (resident now) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0])
    return fields


def print_targets(lines: list[str]) -> bool:
    """Print the PASS/FAIL lines of a table's targets; True when one failed."""
    print()
    print("Targets:")
    print("\n".join("  " + line for line in lines))
    print()
    return any(" FAIL " in line for line in lines)
