"""How a benchmark measures: child processes timed (wall, CPU, peak RSS), the CPU and memory of a live process,
statistics, work done in a thread of this process while a with-block runs, a set polled in the background, and
the counters of etcd (and Docker) before and after.

Nothing here starts a server; servers.py does.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paths  # noqa: F401  (tests/ on sys.path)
from harness import Dockerd, Etcd, wait_until

#: GNU time measures a child's peak RSS from a small parent: ru_maxrss of a child forked straight from
#: this process starts at this process's own RSS (Linux keeps the pre-exec high-water mark).
GNU_TIME = shutil.which("time") or ("/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None)


def median(values) -> float:
    """Median of a non-empty sequence."""
    return statistics.median(values)


def percentile(values, q: float) -> float:
    """The q-quantile (0..1) of values, 0 when empty."""
    values = sorted(values)
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


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


class PolledSet(Background):
    """Polls a set (the keys under a prefix, the servers Traefik runs, ...) every `every` seconds in a thread,
    and keeps when each member was first seen present and when it was first seen gone after that
    (time.time(), the clock of Docker's event timestamps; resolution one poll)."""

    def __init__(self, read, every: float = 0.01):
        self.read, self.every = read, every
        self.appeared: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self.polls = self.errors = 0
        self.present: set[str] = set()
        super().__init__("poll")

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
