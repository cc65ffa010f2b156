"""What every benchmark shares: the machine stamp, child runs, tables, servers and synthetic containers.

The servers come from tests/harness.py (a private dockerd, etcd members on free loopback ports).
Nothing here measures anything by itself; run_cost.py, deregister.py and fleet.py do, bench.py runs them.
"""

from __future__ import annotations

import base64
import contextlib
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
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from harness import Dockerd, Etcd, require, start_cluster, stop_process, wait_until  # noqa: E402,F401 - shared

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


def installed_module() -> str:
    """Path and content hash of the docker_register the CLI imports."""
    import hashlib
    import importlib.util

    origin = Path(importlib.util.find_spec("docker_register").origin)
    return f"{origin} (sha256 {hashlib.sha256(origin.read_bytes()).hexdigest()[:12]})"


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


def make_config(endpoints: str, host_ip: str, prefix: str, ttl: int = 30):
    """A docker_register.Config for in-process runs."""
    import docker_register as dr

    return dr.Config(endpoints=dr.parse_endpoints(endpoints), host_ip=host_ip, prefix=prefix, ttl=ttl,
                     timeout=TIMEOUT)


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
def scratch(prefix: str):
    """A scratch folder under /var/tmp (not a tmpfs: dockerd's vfs layers are large), removed at the end."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    try:
        yield root
    finally:
        subprocess.run(["rm", "-rf", str(root)], capture_output=True)


def start_containers(dockerd: Dockerd, count: int, workers: int = 4) -> float:
    """Start count more `docker run -d -P local/web` containers; return the seconds it took."""
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: dockerd.docker("run", "-d", "-P", IMAGE), range(count)))
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
