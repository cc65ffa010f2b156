"""Fleet simulation: K hosts with 50 registrations each, a pass every 10 s, against a real 3-node etcd.

Two designs run the same synthetic fleet, one after the other:
  lease  docker-register: each pass is docker_register.reconcile with the host's in-memory container source
         and its own EtcdStore (own host IP, so own lease id): keepalive + LeaseTimeToLive + one read txn,
         writes only what changed;
  ttl    the original docker-register (jwilder's etcd.tmpl): every pass grants a TTL-15 lease and puts, one
         RPC each, the instance key and the port key of every container, whether anything changed or not.

What is simulated: the hosts.  A host is a schedule entry, a container list (synthetic dicts shaped like
GET /containers/json, spread over 10 services) and an EtcdStore; passes run on a pool of threads of this
one process, and all hosts share one gRPC channel per etcd member (host i uses member i mod 3, as real
hosts each picking one of three endpoints spread over them).  What is real: the 3-node etcd cluster on
loopback (harness.start_cluster) and every RPC and write a real host would send.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import plots
from machine import load, stamp
from measure import cpu_seconds, percentile
from report import append_measured, int_list, log, num, print_table, table_rows
from servers import INTERVAL, cluster, scratch
from synthetic import TIMEOUT, ListedContainers, make_config, preload_clients, synthetic_container, synthetic_containers

#: The original design's TTL, and docker-register's lease TTL.
OLD_TTL = 15
LEASE_TTL = 30
COUNTERS = ("etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_mvcc_txn_total",
            "etcd_server_proposals_committed_total", "etcd_network_client_grpc_sent_bytes_total")
RPC_METHODS = ("Range", "LeaseKeepAlive", "LeaseTimeToLive", "Txn", "Put", "LeaseGrant")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the fleet simulation."""
    parser.add_argument("--hosts", default="1000", help="fleet sizes K (default 1000)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="measured rounds (intervals) per K and design, phases spread (default 4)")
    parser.add_argument("--burst-rounds", type=int, default=2,
                        help="rounds with every host due at the same moment, after the spread ones (default 2)")
    parser.add_argument("--interval", type=float, default=INTERVAL, help="seconds between a host's passes")
    parser.add_argument("--per-host", type=int, default=50, help="registrations per host (default 50)")
    parser.add_argument("--services", type=int, default=10, help="distinct services in the fleet (default 10)")
    parser.add_argument("--churn", type=float, default=0.02,
                        help="chance that a host redeploys one container before a pass (default 0.02)")
    parser.add_argument("--workers", type=int, default=128,
                        help="threads running passes: how many hosts can be in a pass at once (default 128)")
    parser.add_argument("--designs", default="lease,ttl", help="lease, ttl or both (default)")
    parser.add_argument("--seed", type=int, default=1)


# ---------------------------------------------------------------------------
# Simulated hosts
# ---------------------------------------------------------------------------


@dataclass
class SimHost:
    """One simulated Docker host: its config (address, prefix, TTL), its containers and its store."""

    config: object
    source: ListedContainers
    store: object
    rng: random.Random
    next_port: int
    busy: bool = False
    granted: list[int] = field(default_factory=list)

    def churn(self) -> None:
        """Replace one container by a new one of the same image (a redeploy): one key goes, one comes."""
        containers = self.source.containers
        victim = self.rng.randrange(len(containers))
        containers[victim] = self.new_container(containers[victim]["Image"])

    def new_container(self, image: str) -> dict:
        """A container of that image, with the next free port."""
        self.next_port += 1
        return synthetic_container(self.rng, self.next_port - 1, image)


def make_hosts(count: int, args: argparse.Namespace, connections: list, prefix: str, ttl: int) -> list[SimHost]:
    """count hosts, each with its own address, containers and EtcdStore, sharing the members' connections."""
    import docker_register as dr

    endpoints = ",".join(f"{c.endpoints[0].host}:{c.endpoints[0].port}" for c in connections)
    images = tuple(f"local/svc{j}:latest" for j in range(args.services))
    hosts = []
    for i in range(count):
        rng = random.Random(args.seed * 100003 + i)
        config = make_config(endpoints, f"10.77.{i // 250}.{i % 250 + 1}", prefix, ttl)
        hosts.append(SimHost(config, ListedContainers(synthetic_containers(args.per_host, rng, images)),
                             dr.EtcdStore(connections[i % len(connections)], prefix), rng, args.per_host))
    return hosts


def lease_pass(host: SimHost) -> None:
    """A docker-register pass: the module's own reconcile on this host's source and store."""
    import docker_register as dr

    dr.reconcile(host.config, host.source, host.store, dry_run=False)


def ttl_pass(host: SimHost) -> None:
    """An original docker-register pass: a fresh TTL lease, then every instance and port key put again."""
    import docker_register as dr

    client, prefix = host.store.client, host.config.prefix
    lease = client.lease(OLD_TTL)
    host.granted.append(lease.id)
    for reg in dr.current_registrations(host.source, host.config)[0]:
        client.put(dr.instance_key(prefix, reg.service, reg.container_id), reg.address, lease=lease)
        client.put(dr.port_key(prefix, reg.service), str(reg.private_port), lease=lease)


PASSES = {"lease": (lease_pass, LEASE_TTL), "ttl": (ttl_pass, OLD_TTL)}


def cleanup(hosts: list[SimHost], design: str, pool: ThreadPoolExecutor) -> None:
    """Take the fleet's keys and leases out, so that the next design starts from an empty prefix."""
    def revoke(host: SimHost) -> None:
        for lease_id in [host.config.lease_id] if design == "lease" else host.granted:
            host.store.revoke(lease_id)  # nothing when it has expired already

    list(pool.map(revoke, hosts))
    hosts[0].store.client.delete_prefix(hosts[0].config.prefix + "/")


# ---------------------------------------------------------------------------
# Counters: etcd /metrics of every member, CPU of etcd, of this process and of the machine
# ---------------------------------------------------------------------------


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    ticks = 1 / os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) * ticks, sum(fields[:8]) * ticks


@dataclass
class Counters:
    """All counters at one moment."""

    at: float
    members: list[dict[str, float]]
    rpcs: dict[str, float]
    etcd_cpu: float
    own_cpu: float
    machine: tuple[float, float]


def read_counters(members) -> Counters:
    """Read every member's counters, RPCs (summed over members) and CPU."""
    rpcs: dict[str, float] = {}
    for member in members:
        for method, count in member.rpcs().items():
            rpcs[method] = rpcs.get(method, 0) + count
    return Counters(time.perf_counter(), [m.metrics(COUNTERS) for m in members], rpcs,
                    sum(cpu_seconds(m.proc.pid) for m in members), time.process_time(), machine_busy())


def idle_cpu(members, seconds: float = 5.0) -> float:
    """CPU of the etcd members (cores) while no client calls them: heartbeats and housekeeping."""
    before = sum(cpu_seconds(m.proc.pid) for m in members)
    time.sleep(seconds)
    return (sum(cpu_seconds(m.proc.pid) for m in members) - before) / seconds


# ---------------------------------------------------------------------------
# The schedule: every host once per interval, phases spread evenly over it (or all at once)
# ---------------------------------------------------------------------------


@dataclass
class PassStat:
    """One pass of one host: its round, when it was due, when it ran, whether it ran at all or failed."""

    round: int
    due: float
    start: float = 0.0
    end: float = 0.0
    error: str = ""
    dropped: bool = False


@dataclass
class Rounds:
    """Some rounds of every host's pass: spread (each host at its own phase) or burst (all due at once)."""

    hosts: int
    count: int
    interval: float
    burst: bool
    #: When the first round starts (perf_counter seconds).
    start: float = 0.0
    passes: list[PassStat] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, stat: PassStat) -> None:
        """Keep one pass's figures (from any thread)."""
        with self.lock:
            self.passes.append(stat)

    def ran(self) -> list[PassStat]:
        """Passes that ran to the end without an error."""
        return [p for p in self.passes if not p.dropped and not p.error]

    def in_time(self, p: PassStat) -> bool:
        """Whether a pass was done before the same host's next pass was due."""
        return not p.dropped and not p.error and p.end < p.due + self.interval

    def outcomes(self) -> str:
        """Passes in time / late / not run / failed."""
        in_time = sum(map(self.in_time, self.passes))
        return (f"{in_time}/{len(self.ran()) - in_time}/{sum(p.dropped for p in self.passes)}"
                f"/{sum(bool(p.error) for p in self.passes)}")

    def durations(self) -> str:
        """p50 / p99 of how long the passes that ran took, in milliseconds."""
        took = [p.end - p.start for p in self.ran()]
        return f"{1e3 * percentile(took, .5):.0f} / {1e3 * percentile(took, .99):.0f}"

    def rounds_in_time(self) -> int:
        """Rounds whose every one of K passes ran, without error, before the host's next pass was due."""
        done = [0] * self.count
        for p in self.passes:
            done[p.round] += self.in_time(p)
        return sum(1 for n in done if n == self.hosts)

    def done_after(self) -> list[float]:
        """Seconds from each pass's due time until it was done; infinite for a pass that did not run."""
        return [p.end - p.due if not (p.dropped or p.error) else math.inf for p in self.passes]


def timed_pass(run_pass, host: SimHost, stat: PassStat, rounds: Rounds) -> None:
    """Run one pass, unless it waited in the simulator's queue past the host's next due time."""
    stat.start = time.perf_counter()
    if stat.start > stat.due + rounds.interval:
        stat.dropped = True
    else:
        try:
            run_pass(host)
        except Exception as exc:  # noqa: BLE001 - a failed pass is counted, not fatal
            stat.error = f"{type(exc).__name__}: {str(exc)[:120]}"
    stat.end = time.perf_counter()
    rounds.record(stat)
    host.busy = False


def warm_up(hosts: list[SimHost], run_pass, pool: ThreadPoolExecutor) -> None:
    """Give every host one successful pass (its first sync) before measuring."""
    def attempt(host: SimHost) -> bool:
        try:
            run_pass(host)
            return True
        except Exception:  # noqa: BLE001 - tried again below
            return False

    pending = list(hosts)
    for _ in range(5):
        pending = [h for h, ok in zip(pending, pool.map(attempt, pending)) if not ok]
        if not pending:
            return
    raise RuntimeError(f"{len(pending)} hosts could not complete a first pass")


def run_rounds(hosts: list[SimHost], run_pass, pool: ThreadPoolExecutor, rounds: Rounds, churn: float,
               rng: random.Random, on_start=None, on_end=None) -> None:
    """Make every host due once per interval for the rounds; a host whose last pass still runs skips one.

    on_start and on_end are called when the first round starts and when the last one's interval ends;
    then the passes still running are waited for (each runs at most until its host's next due time).
    """
    futures, interval = [], rounds.interval
    rounds.start = time.perf_counter() + 0.5
    events = sorted((rounds.start + interval * (j + (0 if rounds.burst else i / len(hosts))), j, i)
                    for j in range(rounds.count) for i in range(len(hosts)))
    if on_start:
        on_start()
    for due, j, i in events:
        time.sleep(max(0.0, due - time.perf_counter()))
        host = hosts[i]
        if host.busy:
            rounds.record(PassStat(j, due, dropped=True))
            continue
        if rng.random() < churn:
            host.churn()
        host.busy = True
        futures.append(pool.submit(timed_pass, run_pass, host, PassStat(j, due), rounds))
    time.sleep(max(0.0, rounds.start + rounds.count * interval - time.perf_counter()))
    if on_end:
        on_end()
    wait(futures)


@dataclass
class FleetResult:
    """What one design did with K hosts: spread rounds (with the counters around them), burst rounds."""

    design: str
    hosts: int
    per_host: int
    spread: Rounds
    burst: Rounds
    before: Counters | None = None
    after: Counters | None = None
    warmup_seconds: float = math.nan
    solo: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Length of the measured window (the spread rounds)."""
        return self.after.at - self.before.at

    @property
    def interval(self) -> float:
        """Seconds between a host's passes."""
        return self.spread.interval


def simulate(members, connections: list, design: str, count: int, args: argparse.Namespace) -> FleetResult:
    """Run one design with count hosts: warm-up pass (lease only), spread rounds, burst rounds, cleanup."""
    run_pass, ttl = PASSES[design]
    hosts = make_hosts(count, args, connections, f"/fleet/k{count}/{design}", ttl)
    result = FleetResult(design, count, args.per_host, Rounds(count, args.rounds, args.interval, burst=False),
                         Rounds(count, args.burst_rounds, args.interval, burst=True))
    rng = random.Random(args.seed)

    def start_counters():
        result.before = read_counters(members)

    def end_counters():
        result.after = read_counters(members)

    with ThreadPoolExecutor(min(count, args.workers)) as pool:
        if design == "lease":  # The original design's first pass is like every other.
            log(f"K={count} {design}: first pass of every host")
            started = time.perf_counter()
            warm_up(hosts, run_pass, pool)
            result.warmup_seconds = time.perf_counter() - started
        log(f"K={count} {design}: {args.rounds} rounds of {args.interval:g} s, phases spread")
        run_rounds(hosts, run_pass, pool, result.spread, args.churn, rng, start_counters, end_counters)
        if args.burst_rounds:
            log(f"K={count} {design}: {args.burst_rounds} rounds of {args.interval:g} s, all hosts due at once")
            run_rounds(hosts, run_pass, pool, result.burst, args.churn, rng)
        for _ in range(5):
            started = time.perf_counter()
            run_pass(hosts[0])
            result.solo.append(time.perf_counter() - started)
        cleanup(hosts, design, pool)
    for rounds in (result.spread, result.burst):
        failed = [p.error for p in rounds.passes if p.error]
        log(f"K={count} {design} {'burst' if rounds.burst else 'spread'}: {len(rounds.ran())} passes ran, "
            f"{sum(p.dropped for p in rounds.passes)} not run, {len(failed)} failed"
            + (f" (first: {failed[0]})" if failed else ""))
    return result


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def rate(r: FleetResult, counter: str) -> float:
    """Per-second rate of a /metrics counter on member 0 (every member applies every write)."""
    return (r.after.members[0][counter] - r.before.members[0][counter]) / r.seconds


def rpc_rate(r: FleetResult, method: str | None = None) -> float:
    """etcd RPCs per second over all members, of one method or all."""
    methods = [method] if method else r.after.rpcs
    return sum(r.after.rpcs.get(m, 0) - r.before.rpcs.get(m, 0) for m in methods) / r.seconds


def sent_mb_rate(r: FleetResult) -> float:
    """MB/s etcd sent to its clients, all members."""
    name = "etcd_network_client_grpc_sent_bytes_total"
    return sum(a[name] - b[name] for a, b in zip(r.after.members, r.before.members)) / r.seconds / 1e6


def cores(r: FleetResult, which: str) -> float:
    """CPU used over the window, in cores: etcd (3 members), this simulator, or the whole machine."""
    if which == "machine":
        return (r.after.machine[0] - r.before.machine[0]) / r.seconds
    return (getattr(r.after, which) - getattr(r.before, which)) / r.seconds


def per_pass_ms(r: FleetResult, which: str, idle: float = 0.0) -> float:
    """CPU milliseconds per pass that ran in the window, beyond an idle baseline (in cores)."""
    ran = sum(1 for p in r.spread.ran() if p.end <= r.after.at) or 1
    return 1e3 * (cores(r, which) - idle) * r.seconds / ran


def needed_cores(r: FleetResult, idle: float) -> float:
    """Cores etcd (idle baseline + cost per pass) and the simulator would need to run every pass on time."""
    offered = r.hosts / r.interval
    return idle + offered * (per_pass_ms(r, "etcd_cpu", idle) + per_pass_ms(r, "own_cpu")) / 1e3


def asked_puts(r: FleetResult) -> float | None:
    """Puts per second the design asks for when every pass runs on time; None when it writes only changes."""
    return r.hosts * 2 * r.per_host / r.interval if r.design == "ttl" else None


def offered_puts(r: FleetResult) -> str:
    """Puts per second the design asks for, as a table cell."""
    asked = asked_puts(r)
    return "changes only" if asked is None else f"{asked:.0f}"


def seconds_text(values: list[float]) -> str:
    """'0.01 / 0.04 / 0.22', with 'not run' for a pass that never ran."""
    return " / ".join("not run" if math.isinf(v) else f"{v:.2f}" for v in values)


def round_rows(which: str, title: str) -> list[tuple]:
    """Rows of one kind of rounds (spread or burst): passes, rounds in time, how long after due."""
    def done_after(rounds: Rounds) -> str:
        values = rounds.done_after()
        return seconds_text([percentile(values, .5), percentile(values, .99), max(values, default=0.0)])

    def rounds_in_time(rounds: Rounds) -> str:
        return f"{rounds.rounds_in_time()}/{rounds.count}"

    return [(label, lambda r, cell=cell: cell(getattr(r, which)), *note) for label, cell, *note in [
        (title, lambda rounds: f"{len(rounds.passes)} passes", "K × rounds"),
        ("  in time / late / not run / failed", Rounds.outcomes, "in time: done before the host's next pass is due"),
        ("  rounds with all K hosts in time", rounds_in_time),
        ("  pass due → done p50 / p99 / max (s)", done_after,
         "the max is the round time: all K due at once" if which == "burst" else "< interval: in time"),
    ]]


def fleet_rows(results: list[FleetResult], idle: float) -> list[tuple[str, list[str], str]]:
    """Rows of the fleet table; idle is etcd's CPU (cores) with no client."""
    interval = results[0].interval
    return table_rows(results, [
        ("registrations per host", lambda r: str(r.per_host)),
        ("first pass of all hosts (s)", lambda r: "-" if math.isnan(r.warmup_seconds) else f"{r.warmup_seconds:.1f}",
         "ttl: its first pass is like every other"),
        *round_rows("spread", "spread rounds (phases spread evenly)"),
        ("  pass duration p50 / p99 (ms)", lambda r: r.spread.durations()),
        *(round_rows("burst", "burst rounds (all K hosts due at once)") if results[0].burst.count else []),
        ("one host's pass alone, median (ms)", lambda r: f"{1e3 * statistics.median(r.solo):.0f}",
         "after the rounds, no contention"),
        ("etcd puts/s", lambda r: num(rate(r, "etcd_mvcc_put_total")), "lease: only changes"),
        ("  offered by the design (puts/s)", offered_puts, f"ttl: K×2×{results[0].per_host}/{interval:g} s"),
        ("etcd deletes/s", lambda r: num(rate(r, "etcd_mvcc_delete_total")), "incl. lease expiries"),
        ("etcd multi-op txns/s (reads too)", lambda r: num(rate(r, "etcd_mvcc_txn_total"))),
        ("raft proposals/s", lambda r: num(rate(r, "etcd_server_proposals_committed_total"))),
        ("watch events/s per consumer (≈ puts+deletes)",
         lambda r: num(rate(r, "etcd_mvcc_put_total") + rate(r, "etcd_mvcc_delete_total"))),
        ("etcd RPCs/s (all members)", lambda r: num(rpc_rate(r))),
        *[(f"  {m}/s", lambda r, m=m: num(rpc_rate(r, m))) for m in RPC_METHODS],
        ("etcd → clients (MB/s)", lambda r: f"{sent_mb_rate(r):.2f}", "lease: own keys only"),
        ("etcd CPU, 3 members (% of one core)", lambda r: f"{100 * cores(r, 'etcd_cpu'):.0f}", "/proc/<pid>/stat"),
        ("simulator CPU (% of one core)", lambda r: f"{100 * cores(r, 'own_cpu'):.0f}",
         "one process: the GIL caps its Python at one core"),
        ("other processes' CPU (% of one core)",
         lambda r: f"{100 * (cores(r, 'machine') - cores(r, 'etcd_cpu') - cores(r, 'own_cpu')):.0f}",
         "/proc/stat less the two above: other jobs on this machine"),
        ("whole machine busy (% of all cores)", lambda r: f"{100 * cores(r, 'machine') / os.cpu_count():.0f}"),
        ("CPU per pass: etcd / simulator (ms)",
         lambda r: f"{per_pass_ms(r, 'etcd_cpu', idle):.2f} / {per_pass_ms(r, 'own_cpu'):.2f}",
         f"etcd beyond its idle {100 * idle:.0f} % of a core"),
        ("cores needed for K/interval passes/s", lambda r: f"{needed_cores(r, idle):.2f}",
         f"etcd idle + (etcd + simulator) per pass × K/interval; this machine has {os.cpu_count()}"),
    ])


def fleet_point(r: FleetResult) -> plots.FleetPoint:
    """What the fleet picture shows of one design at one K: writes etcd applied, writes asked, in time or not."""
    writes = rate(r, "etcd_mvcc_put_total") + rate(r, "etcd_mvcc_delete_total")
    return plots.FleetPoint(r.design, r.hosts, writes, asked_puts(r), all(map(r.spread.in_time, r.spread.passes)))


def plot_note(args: argparse.Namespace) -> str:
    """The conditions, under the picture's title."""
    return (f"K simulated hosts, {args.per_host} registrations each, a pass every {args.interval:g} s, "
            f"{args.churn:.0%} of hosts redeploy a container per pass; rates over {args.rounds} × "
            f"{args.interval:g} s; 3-node etcd on loopback; {stamp()}")


def print_intro(args: argparse.Namespace) -> None:
    """Say what is simulated and what is real."""
    print(f"Fleet: K simulated hosts, {args.per_host} synthetic registrations each over {args.services} services,")
    print(f"a pass every {args.interval:g} s per host: {args.rounds} rounds with the hosts' phases spread evenly over")
    print(f"the interval (rates and CPU below are over these), then {args.burst_rounds} burst rounds with every host")
    print("due at the same moment (timers on synchronized clocks), which time a whole round of K hosts.")
    print("Simulated: the hosts.  They are entries in one schedule of this one process, their passes run on a pool of")
    print(f"{args.workers} threads, and all hosts share one gRPC channel per etcd member (host i uses member i mod 3);")
    print("their containers are synthetic dicts shaped like GET /containers/json (NOT real containers).")
    print("Real: the 3-node etcd cluster on loopback (harness.start_cluster) and every RPC and write: per lease pass")
    print("docker_register.reconcile sends what a real host sends (LeaseKeepAlive, LeaseTimeToLive, one read Txn;")
    print("writes only on change), with the host's own lease id; the ttl pass sends one LeaseGrant and 2 Puts per")
    print(f"container (TTL {OLD_TTL}), as the original did.")
    print(f"Churn: before each pass a host redeploys one container with probability {args.churn:g} (both designs,")
    print("same random sequence).  etcd and the simulator share this machine's cores: compare their CPU below.")
    print()


def run(args: argparse.Namespace) -> int:
    """Start a 3-node cluster, run every K with every design, print the table."""
    import docker_register as dr

    counts = int_list(args.hosts)
    designs = [d for d in args.designs.split(",") if d]
    print_intro(args)
    preload_clients()
    results: list[FleetResult] = []
    total = time.perf_counter()
    with scratch("drf") as root, cluster(root) as members:
        idle = idle_cpu(members)
        connections = [dr.EtcdConnection(dr.parse_endpoints(m.endpoint), TIMEOUT) for m in members]
        try:
            for count in counts:
                for design in designs:
                    append_measured(results, f"K={count} {design}",
                                    lambda: simulate(members, connections, design, count, args))
        finally:
            for connection in connections:
                connection.close()
    if results:
        print_table(["", *(f"K={r.hosts} {r.design}" for r in results), "note"], fleet_rows(results, idle))
        print()
        plots.draw(args, "fleet", plots.fleet_figure, [fleet_point(r) for r in results], plot_note(args))
    print(f"fleet simulation took {time.perf_counter() - total:.0f} s; load at end {load()}")
    return 0 if len(results) == len(counts) * len(designs) else 1
