"""What one run costs on one host: first sync and no-change runs at N real containers, and where it goes.

Each size runs the installed `docker-register sync` as a child next to an import-only child (the import
floor), against a private dockerd and etcd.  Then: the same host inside a fleet's prefix, an import-time
and a step-by-step breakdown of a no-change run, CPython's interning headroom, and first syncs of large
synthetic container lists through docker_register.reconcile in this process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from measure import ChildRun, Delta, check, check_no_change, delta, median, reported_seconds, run_child, snapshot
from report import int_list, log, print_table, print_targets, spread, table_rows
from servers import HOST_IP, PYTHON, SERVICE, Gateway, b64, child_env, running_ids, start_containers
from synthetic import make_config, preload_clients, synthetic_source, timed_sync
from harness import Dockerd, Etcd
from hosts import BINARY
from fakes import FakeEtcd

IMPORT_FLOOR = "import docker, etcd3, typer"
#: The import floor plus one etcd call, which starts gRPC's runtime: a reference for memory.
GRPC_FLOOR = (IMPORT_FLOOR + "; import os; host, port = os.environ['ETCD_HOST'].rsplit(':', 1); "
              "etcd3.client(host, int(port)).status()")
METRICS = ("etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_mvcc_txn_total",
           "etcd_server_proposals_committed_total")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the run-cost benchmark."""
    parser.add_argument("--sizes", default="10,50,200", help="numbers of running containers (default 10,50,200)")
    parser.add_argument("--runs", type=int, default=7, help="no-change runs per size (default 7)")
    parser.add_argument("--synthetic", default="500,2000", help="synthetic registration counts (default 500,2000)")
    parser.add_argument("--fleet-context", default="100,300",
                        help="fleet sizes K whose other hosts' keys share the prefix at N=50 (else the largest N) "
                             "(default 100,300; '' to skip)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the synthetic container ids")


# ---------------------------------------------------------------------------
# One host with N real containers
# ---------------------------------------------------------------------------


@dataclass
class SizeResult:
    """Everything measured for one number of running containers."""

    n: int
    start_seconds: float = 0.0
    started: int = 0
    keys: int = 0
    first: ChildRun | None = None
    first_delta: Delta | None = None
    syncs: list[ChildRun] = field(default_factory=list)
    imports: list[ChildRun] = field(default_factory=list)
    grpc_floor: list[ChildRun] = field(default_factory=list)
    bare: list[ChildRun] = field(default_factory=list)
    deltas: list[Delta] = field(default_factory=list)
    #: No-change runs with --metrics-file, each next to one without (which comes first alternates).
    metered: list[ChildRun] = field(default_factory=list)


def measure_size(dockerd: Dockerd, etcd: Etcd, n: int, runs: int, lock: Path) -> SizeResult:
    """Bring the engine to n running containers, time the first sync and then no-change runs."""
    result = SizeResult(n)
    missing = n - len(running_ids(dockerd))
    if missing > 0:
        log(f"N={n}: starting {missing} containers")
        result.start_seconds, result.started = start_containers(dockerd, missing), missing
        log(f"N={n}: started {missing} in {result.start_seconds:.1f}s")
    env = child_env(dockerd, etcd, f"/bench/n{n}", lock)
    sync = [BINARY, "sync"]
    metered = [*sync, "--metrics-file", str(lock.with_name(f"n{n}.prom"))]  # read back and replaced each run

    before = snapshot(etcd, dockerd)
    result.first = run_child(sync, env)
    result.first_delta = delta(before, snapshot(etcd, dockerd))
    check(result.first, "first sync")
    result.keys = len(etcd.get_prefix(f"/bench/n{n}/"))

    run_child(metered, env)  # warm-up, not counted (it also writes the metrics file a run reads back)
    log(f"N={n}: {runs} no-change runs, each next to an import-only run and a run with --metrics-file")
    for i in range(runs):
        result.bare.append(run_child([str(PYTHON), "-c", "pass"]))
        result.imports.append(run_child([str(PYTHON), "-c", IMPORT_FLOOR]))
        result.grpc_floor.append(run_child([str(PYTHON), "-c", GRPC_FLOOR], env))
        check(result.grpc_floor[-1], "import floor + one etcd call")
        if i % 2:
            result.metered.append(run_child(metered, env))
        before = snapshot(etcd, dockerd)
        run = run_child(sync, env)
        result.deltas.append(delta(before, snapshot(etcd, dockerd)))
        check_no_change(run, "no-change sync")
        result.syncs.append(run)
        if not i % 2:
            result.metered.append(run_child(metered, env))
        check_no_change(result.metered[-1], "no-change sync with --metrics-file")
    return result


def size_rows(results: list[SizeResult]) -> list[tuple[str, list[str], str]]:
    """Rows of the per-N table: label, one cell per N, target."""
    def m(r, name):
        return [d.metrics[name] for d in r.deltas]

    return table_rows(results, [
        ("containers started for this N (s)", lambda r: f"{r.started} in {r.start_seconds:.1f}"),
        ("keys under the prefix", lambda r: str(r.keys)),
        ("first sync: wall (s)", lambda r: f"{r.first.wall:.3f}"),
        ("first sync: run's own 'in …s'", lambda r: f"{reported_seconds(r.first.stdout):.3f}"),
        ("first sync: Txn RPCs (reads and writes)", lambda r: f"{r.first_delta.rpcs.get('Txn', 0):g}"),
        ("first sync: write txns (raft proposals less lease grants)", lambda r: f"{r.first_delta.write_txns:g}",
         "≤ ceil(keys/128)"),
        ("first sync: puts", lambda r: f"{r.first_delta.metrics['etcd_mvcc_put_total']:g}"),
        ("no-change: wall, median (s)", lambda r: spread((x.wall for x in r.syncs), "{:.3f}")),
        ("no-change: CPU user+sys, median (s)", lambda r: spread((x.cpu for x in r.syncs), "{:.3f}")),
        ("no-change: run's own 'in …s'", lambda r: spread((reported_seconds(x.stdout) for x in r.syncs), "{:.3f}")),
        ("import floor: wall, median (s)", lambda r: spread((x.wall for x in r.imports), "{:.3f}")),
        ("import floor: CPU, median (s)", lambda r: spread((x.cpu for x in r.imports), "{:.3f}")),
        ("python -c pass: wall, median (s)", lambda r: f"{median(x.wall for x in r.bare):.3f}"),
        ("ratio no-change / import floor", lambda r: f"{ratio(r):.2f}", "≤ 1.2 at N=50"),
        ("  same, fastest run / fastest floor", lambda r: f"{fastest_ratio(r.syncs, r.imports):.2f}",
         "(less sensitive to load)"),
        ("no-change with --metrics-file: wall, median (s)", lambda r: spread((x.wall for x in r.metered), "{:.3f}")),
        ("ratio with --metrics-file / import floor", lambda r: f"{wall_ratio(r.metered, r.imports):.2f}",
         "≤ 1.0 (issue 18)"),
        ("  same, fastest run / fastest floor", lambda r: f"{fastest_ratio(r.metered, r.imports):.2f}"),
        ("ratio with --metrics-file / without, medians", lambda r: f"{wall_ratio(r.metered, r.syncs):.2f}",
         "1.00: not measurable"),
        ("  same, fastest / fastest", lambda r: f"{fastest_ratio(r.metered, r.syncs):.2f}"),
        ("  with - without, paired (same round), median (ms)",
         lambda r: f"{median(m.wall - s.wall for m, s in zip(r.metered, r.syncs)) * 1e3:+.1f}"),
        ("  CPU with / without, medians",
         lambda r: f"{median(x.cpu for x in r.metered) / median(x.cpu for x in r.syncs):.2f}"),
        ("no-change: peak RSS, median (MB)", lambda r: spread((x.maxrss_mb for x in r.syncs), "{:.1f}")),
        ("import floor: peak RSS, median (MB)", lambda r: spread((x.maxrss_mb for x in r.imports), "{:.1f}")),
        ("peak RSS over import floor, max / max", lambda r: f"{memory_excess(r):+.1%}", "≤ +10 %"),
        ("  same, median / median", lambda r: f"{median_memory_excess(r):+.1%}"),
        ("import floor + one etcd call: peak RSS, median (MB)",
         lambda r: spread((x.maxrss_mb for x in r.grpc_floor), "{:.1f}"), "(gRPC started)"),
        ("peak RSS over floor + one etcd call, median / median",
         lambda r: f"{median(x.maxrss_mb for x in r.syncs) / median(x.maxrss_mb for x in r.grpc_floor) - 1:+.1%}"),
        ("per no-change run: etcd puts", lambda r: spread(m(r, "etcd_mvcc_put_total")), "0"),
        ("per no-change run: etcd deletes", lambda r: spread(m(r, "etcd_mvcc_delete_total")), "0"),
        ("per no-change run: etcd txns (mvcc, reads too)", lambda r: spread(m(r, "etcd_mvcc_txn_total"))),
        ("per no-change run: raft proposals", lambda r: spread(m(r, "etcd_server_proposals_committed_total")), "0"),
        ("per no-change run: etcd RPCs", lambda r: spread(d.rpc_total for d in r.deltas), "≤ 3"),
        ("  by method", lambda r: r.deltas[-1].rpc_text()),
        ("per no-change run: Docker API requests", lambda r: spread(len(d.docker) for d in r.deltas), "1"),
    ])


def fastest_ratio(syncs: list[ChildRun], imports: list[ChildRun]) -> float:
    """Fastest no-change wall time over the fastest import-floor wall time."""
    return min(x.wall for x in syncs) / min(x.wall for x in imports)


def wall_ratio(syncs: list[ChildRun], imports: list[ChildRun]) -> float:
    """Median no-change wall time over median import-floor wall time."""
    return median(x.wall for x in syncs) / median(x.wall for x in imports)


def rss_excess(syncs: list[ChildRun], imports: list[ChildRun]) -> float:
    """How much a run's peak RSS exceeds the import floor's, as a fraction."""
    return max(x.maxrss_mb for x in syncs) / max(x.maxrss_mb for x in imports) - 1


def median_memory_excess(r: SizeResult) -> float:
    """Median peak RSS over the import floor's median, for one N."""
    return median(x.maxrss_mb for x in r.syncs) / median(x.maxrss_mb for x in r.imports) - 1


def ratio(r: SizeResult) -> float:
    """Median no-change wall time over median import-floor wall time, for one N."""
    return wall_ratio(r.syncs, r.imports)


def memory_excess(r: SizeResult) -> float:
    """Peak RSS over the import floor's, for one N."""
    return rss_excess(r.syncs, r.imports)


def verdicts(results: list[SizeResult]) -> list[str]:
    """PASS/FAIL of each target, per N."""
    lines = []
    for r in results:
        counts = {name: max(d.metrics[name] for d in r.deltas) for name in METRICS}
        checks = [
            ("0 puts, 0 deletes, 0 proposals", counts["etcd_mvcc_put_total"] == counts["etcd_mvcc_delete_total"]
             == counts["etcd_server_proposals_committed_total"] == 0),
            ("1 Docker request", all(len(d.docker) == 1 for d in r.deltas)),
            ("≤ 3 etcd RPCs", all(d.rpc_total <= 3 for d in r.deltas)),
            ("first sync in ≤ ceil(keys/128) write txns", r.first_delta.write_txns <= math.ceil(r.keys / 128)),
            (f"peak RSS ≤ import floor + 10 % (max over max: {memory_excess(r):+.1%})", memory_excess(r) <= 0.10),
        ]
        if r.n == 50:
            checks.append((f"wall ratio ≤ 1.2 ({ratio(r):.2f})", ratio(r) <= 1.2))
            metered = wall_ratio(r.metered, r.imports)
            checks.append((f"wall ratio with --metrics-file ≤ 1.0 × import floor ({metered:.2f}; "
                           f"{wall_ratio(r.metered, r.syncs):.2f} × the run without)", metered <= 1.0))
        lines += [f"N={r.n:<4} {'PASS' if ok else 'FAIL'}  {what}" for what, ok in checks]
    return lines


# ---------------------------------------------------------------------------
# The same host inside a fleet: other hosts' keys under the same prefix
# ---------------------------------------------------------------------------

FLEET_SERVICES = [SERVICE] + [f"svc{j}" for j in range(9)]


def add_other_hosts(gateway: Gateway, prefix: str, first: int, last: int, per_host: int, lease: int) -> None:
    """Write the keys of other hosts first..last-1 (per_host instances over 10 services, web among them)."""
    rng = random.Random(first)
    ops = [{"request_put": {"key": b64(f"{prefix}/{service}/port"), "value": b64("80"), "lease": lease}}
           for service in FLEET_SERVICES[1:]] if first == 1 < last else []
    for host in range(first, last):
        ip = f"10.77.{host // 250}.{host % 250 + 1}"
        for c in range(per_host):
            key = f"{prefix}/{FLEET_SERVICES[c % len(FLEET_SERVICES)]}/{rng.getrandbits(48):012x}"
            ops.append({"request_put": {"key": b64(key), "value": b64(f"{ip}:{32768 + c}"), "lease": lease}})
    for start in range(0, len(ops), 128):
        gateway.post("/v3/kv/txn", {"success": ops[start:start + 128]})


def sent_bytes(etcd: Etcd) -> float:
    """Bytes etcd sent to gRPC clients so far."""
    match = re.search(r"^etcd_network_client_grpc_sent_bytes_total (\S+)$", etcd.metrics_text(), re.M)
    return float(match.group(1)) if match else float("nan")


@dataclass
class FleetContext:
    """No-change runs of one host while the prefix also holds other hosts' keys."""

    hosts: int
    keys: int
    syncs: list[ChildRun]
    imports: list[ChildRun]
    sent: list[float]


def measure_in_fleet(dockerd: Dockerd, etcd: Etcd, n: int, fleet_sizes: list[int], runs: int,
                     lock: Path) -> list[FleetContext]:
    """No-change runs at N=n with the keys of K-1 other hosts (50 each) under the same prefix."""
    prefix, gateway = f"/bench/n{n}", Gateway(etcd.url)
    env = child_env(dockerd, etcd, prefix, lock)
    lease, done, results = gateway.grant(3600), 1, []
    try:
        for hosts in [1, *fleet_sizes]:
            add_other_hosts(gateway, prefix, done, hosts, 50, lease)
            done = max(done, hosts)
            log(f"N={n} inside a fleet of {hosts} hosts: {runs} no-change runs")
            run_child([BINARY, "sync"], env)  # warm-up
            context = FleetContext(hosts, len(etcd.get_prefix(prefix + "/")), [], [], [])
            for _ in range(runs):
                context.imports.append(run_child([str(PYTHON), "-c", IMPORT_FLOOR]))
                before = sent_bytes(etcd)
                run = run_child([BINARY, "sync"], env)
                context.sent.append(sent_bytes(etcd) - before)
                check_no_change(run, "no-change sync in a fleet")
                context.syncs.append(run)
            results.append(context)
    finally:
        gateway.post("/v3/lease/revoke", {"ID": lease})
    return results


def print_fleet_context(n: int, results: list[FleetContext]) -> None:
    """Print how a host's no-change run grows with the keys of the rest of the fleet."""
    print(f"The same host (N={n}) inside a fleet: the prefix also holds the keys of K-1 other hosts with 50")
    print("registrations each (written directly, synthetic), as on a real fleet sharing one prefix.")
    print_table(["", *(f"K={r.hosts}" for r in results), "target"], table_rows(results, [
        ("keys under the prefix", lambda r: str(r.keys)),
        ("no-change: wall, median (s)", lambda r: f"{median(x.wall for x in r.syncs):.3f}"),
        ("no-change: CPU, median (s)", lambda r: f"{median(x.cpu for x in r.syncs):.3f}"),
        ("no-change: run's own 'in …s'", lambda r: f"{median(reported_seconds(x.stdout) for x in r.syncs):.3f}"),
        ("import floor: wall, median (s)", lambda r: f"{median(x.wall for x in r.imports):.3f}"),
        ("ratio no-change / import floor", lambda r: f"{wall_ratio(r.syncs, r.imports):.2f}", "≤ 1.2"),
        ("  same, fastest run / fastest floor", lambda r: f"{fastest_ratio(r.syncs, r.imports):.2f}"),
        ("no-change: peak RSS, max (MB)", lambda r: f"{max(x.maxrss_mb for x in r.syncs):.1f}"),
        ("peak RSS over import floor", lambda r: f"{rss_excess(r.syncs, r.imports):+.0%}", "≤ +10 %"),
        ("bytes etcd sent per run (kB)", lambda r: f"{median(r.sent) / 1e3:.0f}"),
    ]))
    print()


# ---------------------------------------------------------------------------
# Where the time goes: python -X importtime, and a no-change run step by step
# ---------------------------------------------------------------------------


def import_breakdown(env: dict[str, str], top: int = 20) -> list[str]:
    """Import time of a no-change run per package (self time, all depths), from python -X importtime."""
    run = run_child([str(PYTHON), "-X", "importtime", BINARY, "sync"], env)
    check(run, "importtime run")
    totals: dict[str, float] = {}
    for line in run.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s+(\S+)", line)
        if match:
            package = match.group(3).split(".")[0]
            totals[package] = totals.get(package, 0) + int(match.group(1)) / 1e6
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    lines = [f"{name:<22}{seconds:7.3f}" for name, seconds in ranked[:top]]
    lines.append(f"{'(other packages)':<22}{sum(s for _, s in ranked[top:]):7.3f}")
    lines.append(f"{'all imports':<22}{sum(totals.values()):7.3f}   of a {run.wall:.3f} s run under -X importtime "
                 f"(it reports 'in {reported_seconds(run.stdout):.3f}s', which includes the lazy docker/etcd3 imports)")
    return lines


#: A child that makes one no-change run with docker_register's own adapters and reconcile, the adapters
#: wrapped so that each call marks the seconds and the resident memory (MB, /proc/self/statm) at its
#: start (what the module did since the last mark) and at its end; it prints the steps.
PHASES_SCRIPT = r"""
import json, os, time
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
marks = [("", time.perf_counter(), resident())]
def mark(name):
    marks.append((name, time.perf_counter(), resident()))
class Marked:
    def __init__(self, inner, steps):
        self.inner, self.steps = inner, steps
    def __getattr__(self, name):
        method = getattr(self.inner, name)
        if name not in self.steps:
            return method
        before, after = self.steps[name]
        def call(*args, **kwargs):
            before()
            result = method(*args, **kwargs)
            mark(after)
            return result
        return call
os.environ.setdefault("GRPC_DNS_RESOLVER", "native")
import typer; mark("import typer (click vendored)")
import docker; mark("import docker (requests, urllib3)")
import etcd3, grpc; mark("import etcd3 (grpc, protobuf)")
import docker_register as dr; mark("import docker_register (beyond the floor)")
config = dr.Config(endpoints=dr.parse_endpoints(os.environ["ETCD_HOST"]), host_ip=os.environ["HOST_IP"],
                   prefix=os.environ["DOCKER_REGISTER_PREFIX"], ttl=dr.DEFAULT_TTL, timeout=5.0)
adapters = dr.open_adapters(config); mark("open adapters (Docker client)")
def channel():
    mark("registrations + desired keys")
    adapters.store.connection.client
    mark("etcd client + gRPC channel")
nothing = lambda: None
docker_source = Marked(adapters.docker, {"running_containers": (nothing, "GET /containers/json")})
store = Marked(adapters.store, {"keep_alive": (channel, "(etcd: renewed with the plan)"),
                                "lease": (nothing, "etcd LeaseTimeToLive"),
                                "read": (nothing, "etcd read of the run's keys"),
                                "apply": (lambda: mark("plan"), "apply: one LeaseKeepAlive stream, no write")})
outcome = dr.reconcile(config, docker_source, store, dry_run=False)
adapters.close(); mark("close")
assert not outcome.plan.changes, outcome.plan.changes
print(json.dumps([[name, end - start, mb - before]
                  for (_, start, before), (name, end, mb) in zip(marks, marks[1:])]))
"""


def phase_breakdown(env: dict[str, str], runs: int = 5) -> list[str]:
    """Median seconds and resident-memory growth of each step of a no-change run, in a child."""
    steps: dict[str, list[tuple[float, float]]] = {}
    walls = []
    for _ in range(runs):
        run = run_child([str(PYTHON), "-c", PHASES_SCRIPT], env)
        if run.returncode != 0:
            return [f"(phase breakdown failed: {run.stderr.strip().splitlines()[-1:]})"]
        walls.append(run.wall)
        for name, seconds, grown in json.loads(run.stdout):
            steps.setdefault(name, []).append((seconds, grown))
    bare = [run_child([str(PYTHON), "-c", "pass"]) for _ in range(runs)]
    width = 42
    lines = [f"{'step':<{width}}{'s':>7}  {'+MB':>6}",
             f"{'interpreter start+exit (python -c pass)':<{width}}{median(x.wall for x in bare):7.3f}  "
             f"{median(x.maxrss_mb for x in bare):6.1f}"]
    for name, values in steps.items():
        lines.append(f"{name:<{width}}{median(v[0] for v in values):7.3f}  {median(v[1] for v in values):+6.1f}")
    rest = median(walls) - median(x.wall for x in bare) - sum(median(v[0] for v in vs) for vs in steps.values())
    lines.append(f"{'exit beyond a bare one (teardown, GC), rest':<{width}}{rest:7.3f}")
    lines.append(f"{'whole child, median wall':<{width}}{median(walls):7.3f}")
    return lines


#: A child that interns new names until its resident memory jumps: how far a process is from the next
#: doubling of CPython's table of interned strings (a step of about 0.5 MB at this size).
INTERN_HEADROOM_SCRIPT = r"""
import os, sys
for name in sys.argv[1].split(","):
    __import__(name)
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
start, kept = resident(), []
while len(kept) < 20000:
    kept += [sys.intern(f"zz_headroom_{len(kept) + i:06d}") for i in range(25)]
    if resident() - start > 256 * 1024:
        print(len(kept), (resident() - start) / 1e6)
        break
"""


def intern_headroom(modules: str) -> str:
    """Names a process importing modules can still intern before the table doubles, and the jump."""
    run = run_child([str(PYTHON), "-c", INTERN_HEADROOM_SCRIPT, modules])
    if run.returncode != 0 or not run.stdout.strip():
        return "no step within 20000 names: the table has already doubled"
    count, jump = run.stdout.split()
    return f"about {int(count)} names (then +{float(jump):.2f} MB)"


def metrics_write_cost(folder: Path, writes: int = 501) -> str:
    """Median time of one --metrics-file write as a one-shot run does it (read the old file back, build the
    samples and the text, write a temporary file, rename it), in this process, after imports."""
    import docker_register as dr

    path = str(folder / "cost.prom")
    config = make_config("127.0.0.1:2379", HOST_IP, "/bench/cost")
    plan = dr.Plan(1, dr.LeaseAction.KEEP, (), 51)
    setup = dr.MetricsSetup("once", 10.0, 30, "etcd", "discover")
    seconds = []
    for _ in range(writes):
        started = time.perf_counter()
        dr.MetricsFile(path, setup).record(dr.RunResult(time.time(), 0.03, dr.Outcome(config, plan, (), False, 0.03,
                                                                                      frozenset(), 50)))
        seconds.append(time.perf_counter() - started)
    size = os.path.getsize(path)
    return (f"{median(seconds) * 1e6:.0f} µs (max {max(seconds) * 1e6:.0f} µs over {writes} writes), "
            f"a {size}-byte file")


# ---------------------------------------------------------------------------
# Synthetic sizes: docker_register.reconcile fed a generated container list
# ---------------------------------------------------------------------------


@dataclass
class SyntheticResult:
    """First and no-change in-process sync of n synthetic registrations in one layout."""

    layout: str
    n: int
    keys: int
    first_seconds: float
    first: Delta
    again_seconds: float
    again: Delta
    plan_seconds: float


def measure_synthetic(etcd: Etcd, n: int, seed: int, layout: str = "discover",
                      labels: dict[str, str] | None = None, tag: str = "") -> SyntheticResult:
    """Time reconcile in this process (no interpreter start, no imports) on n generated containers, each
    with these labels, in one layout (under a prefix of its own, tagged, with or without a leading slash
    as the layout wants)."""
    import docker_register as dr

    prefix = ("/" if dr.LAYOUTS[layout].absolute else "") + f"bench/synthetic-{layout}{n}{tag}"
    source = synthetic_source(n, seed, labels)
    config = make_config(etcd.endpoint, "192.0.2.250", prefix, layout=layout)
    timings = [timed_sync(config, source, lambda: snapshot(etcd), delta) for _ in range(2)]
    started = time.perf_counter()
    dr.reconcile(config, source, FakeEtcd(prefix), dry_run=True)  # the pure steps: nothing stored, no I/O
    plan_seconds = time.perf_counter() - started
    keys = len(etcd.get_prefix(prefix + "/"))
    return SyntheticResult(layout, n, keys, timings[0][0], timings[0][1], timings[1][0], timings[1][1], plan_seconds)


def print_synthetic(results: list[SyntheticResult]) -> None:
    """Print the synthetic first syncs."""
    print("Synthetic registrations: NOT real containers.  A generated list shaped like GET /containers/json")
    print("(one tcp port per container, image local/web) is handed to docker_register.reconcile as an in-memory")
    print("container source, with a real EtcdStore against the real etcd, in this process, after imports (so:")
    print("time beyond process start-up).  'plan s' is a dry run of the same list on an empty in-memory store")
    print("(tests/fakes.py): registrations, keys and plan without I/O.  Target: first sync within 1 s in ceil(N/128)")
    print("write txns.")
    rows = []
    for r in results:
        txns, target = r.first.write_txns, math.ceil(r.n / 128)
        rows.append((f"N={r.n} ({r.keys} keys)", [
            f"{r.first_seconds:.3f}", f"{r.plan_seconds:.3f}", f"{txns:g}", str(target),
            f"{r.first.metrics['etcd_mvcc_put_total']:g}", r.first.rpc_text(),
            f"{r.again_seconds:.3f}", f"{r.again.metrics['etcd_mvcc_put_total']:g}", r.again.rpc_text()],
            "PASS" if r.first_seconds <= 1 and txns <= target else "FAIL"))
    print_table(["registrations", "first s", "plan s", "write txns", "ceil(N/128)", "puts", "first RPCs",
                 "no-change s", "puts", "no-change RPCs", "target"], rows)
    print()


# ---------------------------------------------------------------------------
# The whole run-cost section
# ---------------------------------------------------------------------------


def run(args: argparse.Namespace, dockerd: Dockerd, etcd: Etcd, lock: Path) -> None:
    """Measure every size, the fleet context and the breakdowns, and print them."""
    sizes, fleet_sizes = sorted(int_list(args.sizes)), int_list(args.fleet_context)
    probe = 50 if 50 in sizes else sizes[-1]
    results, fleet_context = [], []
    for n in sizes:
        results.append(measure_size(dockerd, etcd, n, args.runs, lock))
        if n == probe and fleet_sizes:
            fleet_context = measure_in_fleet(dockerd, etcd, n, fleet_sizes, args.runs, lock)
    print(f"Per N running containers (docker run -d -P local/web; 1 published port each; median of {args.runs} runs,"
          " range in brackets)")
    print_table(["", *(f"N={r.n}" for r in results), "target"], size_rows(results))
    print("('in …s' is what docker-register prints: timed from the start of sync(), after typer's import,")
    print(" so it includes the lazy imports of docker and etcd3/grpc.)")
    print_targets(verdicts(results))
    if fleet_context:
        print_fleet_context(probe, fleet_context)
    env = child_env(dockerd, etcd, f"/bench/n{probe}", lock)
    print(f"Where a no-change run's time goes at N={probe} (python -X importtime: self seconds per package):")
    print("\n".join("  " + line for line in import_breakdown(env)))
    print()
    print(f"A no-change run at N={probe} step by step (a child running docker_register.reconcile on its real adapters,")
    print("each adapter call marked; median of 5: seconds, and resident memory growth; an import's share depends")
    print("on what was imported before it):")
    print("\n".join("  " + line for line in phase_breakdown(env)))
    print()
    print(f"One --metrics-file write as a run does it (read back, build, write, rename), median: "
          f"{metrics_write_cost(lock.parent)}")
    print()
    print("CPython's table of interned strings doubles when 2/3 full, a step of about 0.5 MB at this size.")
    print("Names a process can still intern before that step:")
    for label, modules in (("import floor (docker, etcd3, typer)", "docker,etcd3,typer"),
                           ("docker_register with the same imports", "docker_register,docker,etcd3,typer")):
        print(f"  {label:<40}{intern_headroom(modules)}")
    print()


def run_synthetic(args: argparse.Namespace, etcd: Etcd) -> None:
    """First and no-change syncs of the synthetic sizes, in this process (after the child runs: gRPC here
    would make forking children unsafe)."""
    sizes = int_list(args.synthetic)
    if sizes:
        log(f"synthetic sizes {sizes}")
        preload_clients()
        print_synthetic([measure_synthetic(etcd, n, args.seed) for n in sizes])
