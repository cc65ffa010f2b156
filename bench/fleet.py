#!/usr/bin/env python3
"""Fleet simulation: K hosts with 50 registrations each, a pass every 10 s, against a real 3-node etcd.

    .venv/bin/python bench/fleet.py                              # K = 10, 100, 200, 300; one minute each design
    .venv/bin/python bench/fleet.py --hosts 10,100 --duration 30 # shorter
    .venv/bin/python bench/bench.py fleet ...                    # the same

Two designs run the same synthetic fleet, one after the other:
  lease  docker-register: docker_register's registrations_from / desired_keys / plan_changes and a real
         EtcdStore per host (own host IP, so own lease id via lease_id_for): keepalive + read, writes only changes;
  ttl    the original docker-register (jwilder's etcd.tmpl): every pass grants a TTL-15 lease and puts, one RPC
         each, the instance key and the port key of every container, whether anything changed or not.
Hosts are threads of this one process (gRPC clients made in the thread that uses them); containers are
synthetic dicts shaped like GET /containers/json, spread over 10 services.  Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (Etcd, load, log, make_config, preload_clients, print_machine, print_table,  # noqa: E402
                   synthetic_container, sync_with_store)
from harness import start_cluster  # noqa: E402

OLD_TTL = 15
LEASE_TTL = 30
COUNTERS = ("etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_mvcc_txn_total",
            "etcd_server_proposals_committed_total", "etcd_network_client_grpc_sent_bytes_total")


# ---------------------------------------------------------------------------
# Simulated hosts
# ---------------------------------------------------------------------------


@dataclass
class SimHost:
    """One simulated Docker host: its address, its containers and its etcd client."""

    index: int
    host_ip: str
    containers: list[dict]
    rng: random.Random
    store: object = None
    busy: bool = False
    next_port: int = 0

    def churn(self) -> None:
        """Replace one container by a new one (a redeploy): one key goes, one comes."""
        victim = self.rng.randrange(len(self.containers))
        image = self.containers[victim]["Image"]
        self.containers[victim] = synthetic_container(self.rng, self.next_port, image)
        self.next_port += 1


def make_hosts(count: int, per_host: int, services: int, seed: int) -> list[SimHost]:
    """count hosts, each with per_host containers spread over the services' images."""
    images = [f"local/svc{j}:latest" for j in range(services)]
    hosts = []
    for i in range(count):
        rng = random.Random(seed * 100003 + i)
        containers = [synthetic_container(rng, c, images[c % services]) for c in range(per_host)]
        hosts.append(SimHost(i, f"10.77.{i // 250}.{i % 250 + 1}", containers, rng, next_port=per_host))
    return hosts


def store_for(host: SimHost, endpoints: str, prefix: str, ttl: int):
    """The host's EtcdStore, made on first use in the calling thread."""
    import docker_register as dr

    if host.store is None:
        host.store = dr.EtcdStore(make_config(endpoints, host.host_ip, prefix, ttl=ttl))
    return host.store


def lease_pass(host: SimHost, endpoints: str, prefix: str) -> None:
    """A docker-register pass: keepalive, read the prefix, plan, write only the difference."""
    sync_with_store(store_for(host, endpoints, prefix, LEASE_TTL), host.containers)


def ttl_pass(host: SimHost, endpoints: str, prefix: str) -> None:
    """An original docker-register pass: fresh TTL lease, then every instance and port key put again."""
    import docker_register as dr

    client = store_for(host, endpoints, prefix, OLD_TTL).client
    lease = client.lease(OLD_TTL)
    registrations, _ = dr.registrations_from(host.containers, host.host_ip)
    for reg in registrations:
        client.put(dr.instance_key(prefix, reg.service, reg.container_id), reg.address, lease=lease)
        client.put(dr.port_key(prefix, reg.service), str(reg.private_port), lease=lease)


def cleanup(hosts: list[SimHost], design: str, prefix: str, pool: ThreadPoolExecutor) -> None:
    """Take the fleet's keys out (revoking the lease design's leases) and close its clients."""
    if design == "lease":
        list(pool.map(lambda host: revoke(host, prefix), hosts))
    client = next((host.store.client for host in hosts if host.store), None)
    if client:
        client.delete_prefix(prefix + "/")
    for host in hosts:
        if host.store:
            host.store.close()


def revoke(host: SimHost, prefix: str) -> None:
    """Revoke a host's lease; it may have expired already when passes fell behind."""
    import docker_register as dr

    if host.store:
        try:
            host.store.client.revoke_lease(dr.lease_id_for(host.host_ip, prefix))
        except Exception:  # noqa: BLE001 - NOT_FOUND: expired, nothing to revoke
            pass


# ---------------------------------------------------------------------------
# Counters: etcd /metrics of every member, CPU of etcd and of this process
# ---------------------------------------------------------------------------


def scrape(member: Etcd) -> dict[str, float]:
    """The counters we report, from one member's /metrics."""
    return member.metrics(COUNTERS)


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds a process used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Counters:
    """All counters at one moment."""

    at: float
    members: list[dict[str, float]]
    rpcs: dict[str, float]
    etcd_cpu: float
    own_cpu: float


def read_counters(members: list[Etcd]) -> Counters:
    """Read every member's counters, RPCs (summed over members) and CPU."""
    rpcs: dict[str, float] = {}
    for member in members:
        for method, count in member.rpcs().items():
            rpcs[method] = rpcs.get(method, 0) + count
    return Counters(time.perf_counter(), [scrape(m) for m in members], rpcs,
                    sum(cpu_seconds(m.proc.pid) for m in members), time.process_time())


# ---------------------------------------------------------------------------
# The schedule: every host once per interval, phases spread evenly
# ---------------------------------------------------------------------------


@dataclass
class PassStat:
    """One pass of one host: when it was due, when it ran, whether it failed."""

    due: float
    start: float
    end: float
    error: str = ""


@dataclass
class FleetResult:
    """What one design did with K hosts over the window."""

    design: str
    hosts: int
    per_host: int
    duration: float
    offered: int = 0
    skipped: int = 0
    passes: list[PassStat] = field(default_factory=list)
    before: Counters | None = None
    after: Counters | None = None
    warmup_seconds: float = 0.0
    solo: list[float] = field(default_factory=list)


def timed_pass(run_pass, host: SimHost, due: float, stats: list[PassStat], lock: threading.Lock) -> None:
    """Run one pass, record its timing, free the host for its next pass."""
    start = time.perf_counter()
    error = ""
    try:
        run_pass(host)
    except Exception as exc:  # noqa: BLE001 - a failed pass is counted, not fatal
        error = f"{type(exc).__name__}: {str(exc)[:120]}"
    with lock:
        stats.append(PassStat(due, start, time.perf_counter(), error))
    host.busy = False


def warm_up(hosts: list[SimHost], run_pass, pool: ThreadPoolExecutor) -> None:
    """Give every host one successful pass (its first sync) before measuring."""
    pending = list(hosts)
    for _ in range(5):
        results = list(pool.map(lambda h: _try(run_pass, h), pending))
        pending = [h for h, ok in zip(pending, results) if not ok]
        if not pending:
            return
    raise RuntimeError(f"{len(pending)} hosts could not complete a first pass")


def solo_passes(host: SimHost, run_pass, count: int = 5) -> list[float]:
    """Seconds of a few passes of one host with nothing else running: its own cost, without contention."""
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        run_pass(host)
        seconds.append(time.perf_counter() - started)
    return seconds


def _try(run_pass, host: SimHost) -> bool:
    """Run a pass; False when it raised."""
    try:
        run_pass(host)
        return True
    except Exception:  # noqa: BLE001
        return False


def run_window(hosts, run_pass, pool, members, result: FleetResult, interval: float, churn: float,
               rng: random.Random) -> None:
    """Schedule every host each interval for the window; skip a pass whose previous one still runs."""
    stats, lock, futures = result.passes, threading.Lock(), []
    start = time.perf_counter() + 0.5
    events = sorted((start + interval * (i / len(hosts)) + interval * j, i)
                    for i in range(len(hosts)) for j in range(math.ceil(result.duration / interval)))
    result.before = read_counters(members)
    for due, i in events:
        if due >= start + result.duration:
            continue
        time.sleep(max(0.0, due - time.perf_counter()))
        host = hosts[i]
        result.offered += 1
        if host.busy:
            result.skipped += 1
            continue
        if rng.random() < churn:
            host.churn()
        host.busy = True
        futures.append(pool.submit(timed_pass, run_pass, host, due, stats, lock))
    time.sleep(max(0.0, start + result.duration - time.perf_counter()))
    result.after = read_counters(members)
    wait(futures)


def simulate(members: list[Etcd], design: str, count: int, args: argparse.Namespace) -> FleetResult:
    """Run one design with count hosts: warm-up pass, measured window, cleanup."""
    endpoints = ",".join(m.endpoint for m in members)
    prefix = f"/fleet/k{count}/{design}"
    hosts = make_hosts(count, args.per_host, args.services, args.seed)
    passes = {"lease": lease_pass, "ttl": ttl_pass}[design]

    def run_pass(host):
        return passes(host, endpoints, prefix)

    result = FleetResult(design, count, args.per_host, args.duration)
    with ThreadPoolExecutor(min(count, args.workers)) as pool:
        log(f"K={count} {design}: first pass of every host")
        started = time.perf_counter()
        warm_up(hosts, run_pass, pool)
        result.warmup_seconds = time.perf_counter() - started
        log(f"K={count} {design}: measuring {args.duration:g}s")
        run_window(hosts, run_pass, pool, members, result, args.interval, args.churn, random.Random(args.seed))
        result.solo = solo_passes(hosts[0], run_pass)
        cleanup(hosts, design, prefix, pool)
    failed = [p.error for p in result.passes if p.error]
    log(f"K={count} {design}: {len(result.passes)} passes, {result.skipped} skipped, {len(failed)} failed"
        + (f" (first: {failed[0]})" if failed else ""))
    return result


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def rate(r: FleetResult, counter: str) -> float:
    """Per-second rate of a /metrics counter on member 0 (every member applies every write)."""
    seconds = r.after.at - r.before.at
    return (r.after.members[0][counter] - r.before.members[0][counter]) / seconds


def rpc_rate(r: FleetResult, method: str | None = None) -> float:
    """etcd RPCs per second over all members, of one method or all."""
    seconds = r.after.at - r.before.at
    methods = [method] if method else r.after.rpcs
    return sum(r.after.rpcs.get(m, 0) - r.before.rpcs.get(m, 0) for m in methods) / seconds


def sent_mb_rate(r: FleetResult) -> float:
    """MB/s etcd sent to its clients, all members."""
    seconds = r.after.at - r.before.at
    name = "etcd_network_client_grpc_sent_bytes_total"
    return sum(a[name] - b[name] for a, b in zip(r.after.members, r.before.members)) / seconds / 1e6


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, 0 when empty."""
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def fleet_rows(results: list[FleetResult], interval: float) -> list[tuple[str, list[str], str]]:
    """Rows of the fleet table."""
    def row(label, cell, note=""):
        return label, [cell(r) for r in results], note

    def seconds(r):
        return r.after.at - r.before.at

    def ok(r):
        return [p for p in r.passes if not p.error]

    return [
        row("registrations per host", lambda r: str(r.per_host)),
        row("first pass of all hosts (s)", lambda r: f"{r.warmup_seconds:.1f}"),
        row("passes offered in the window", lambda r: str(r.offered)),
        row("  done in the window / late / skipped / failed", lambda r: f"{in_window(r)}/{len(ok(r)) - in_window(r)}"
            f"/{r.skipped}/{len(r.passes) - len(ok(r))}", "late: finished after the window"),
        row("passes/s finished in the window", lambda r: f"{in_window(r) / seconds(r):.1f}",
            f"offered: K/{interval:g} s"),
        row("kept up with the schedule", lambda r: "yes" if kept_up(r, interval) else "NO",
            "≥ 95 % of passes in the window, start lag p99 < 1 s"),
        row("pass duration p50 / p99 (ms)", lambda r: f"{1e3 * percentile([p.end - p.start for p in ok(r)], .5):.0f}"
            f" / {1e3 * percentile([p.end - p.start for p in ok(r)], .99):.0f}"),
        row("one host's pass alone, median (ms)", lambda r: f"{1e3 * statistics.median(r.solo):.0f}",
            "after the window, no contention"),
        row("start lag p99 (s)", lambda r: f"{percentile([p.start - p.due for p in r.passes], .99):.2f}"),
        row("etcd puts/s", lambda r: num(rate(r, 'etcd_mvcc_put_total')), "lease: only changes"),
        row("  offered by the design (puts/s)", lambda r: f"{offered_puts(r, interval):.0f}",
            f"ttl: K×2×{results[0].per_host}/{interval:g} s"),
        row("etcd deletes/s", lambda r: num(rate(r, 'etcd_mvcc_delete_total')), "incl. lease expiries of late hosts"),
        row("etcd multi-op txns/s (reads too)", lambda r: num(rate(r, 'etcd_mvcc_txn_total'))),
        row("raft proposals/s", lambda r: num(rate(r, 'etcd_server_proposals_committed_total'))),
        row("watch events/s per consumer (≈ puts+deletes)",
            lambda r: num(rate(r, 'etcd_mvcc_put_total') + rate(r, 'etcd_mvcc_delete_total'))),
        row("etcd RPCs/s (all members)", lambda r: num(rpc_rate(r))),
        *[row(f"  {m}/s", lambda r, m=m: num(rpc_rate(r, m)))
          for m in ("Range", "LeaseKeepAlive", "LeaseTimeToLive", "Txn", "Put", "LeaseGrant")],
        row("etcd → clients (MB/s)", lambda r: f"{sent_mb_rate(r):.2f}", "lease: own keys only"),
        row("etcd CPU, 3 members (% of one core)", lambda r: percent(r.after.etcd_cpu - r.before.etcd_cpu, seconds(r))),
        row("simulator CPU (% of one core)", lambda r: percent(r.after.own_cpu - r.before.own_cpu, seconds(r))),
    ]


def kept_up(r: FleetResult, interval: float) -> bool:
    """Whether the simulator ran (nearly) every pass on time, so the rates are the design's, not the machine's."""
    lag = percentile([p.start - p.due for p in r.passes], .99)
    return in_window(r) >= 0.95 * r.hosts * r.duration / interval and lag < 1


def in_window(r: FleetResult) -> int:
    """Passes that finished without error before the window closed."""
    return sum(1 for p in r.passes if not p.error and p.end <= r.after.at)


def percent(cpu: float, seconds: float) -> str:
    """CPU seconds over wall seconds, as a percentage of one core."""
    return f"{100 * cpu / seconds:.0f}"


def num(value: float) -> str:
    """A rate with two decimals below 10, one below 100, none above."""
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def offered_puts(r: FleetResult, interval: float) -> float:
    """Puts per second the design asks for when every pass runs on time."""
    return r.hosts * 2 * r.per_host / interval if r.design == "ttl" else 0.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="10,100,200,300", help="fleet sizes K (default 10,100,200,300)")
    parser.add_argument("--duration", type=float, default=60, help="measured seconds per size and design")
    parser.add_argument("--interval", type=float, default=10, help="seconds between a host's passes")
    parser.add_argument("--per-host", type=int, default=50, help="registrations per host (default 50)")
    parser.add_argument("--services", type=int, default=10, help="distinct services in the fleet (default 10)")
    parser.add_argument("--churn", type=float, default=0.02,
                        help="chance that a host redeploys one container before a pass (default 0.02)")
    parser.add_argument("--workers", type=int, default=32, help="threads running passes (default 32)")
    parser.add_argument("--designs", default="lease,ttl", help="lease, ttl or both (default)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.hosts = [int(x) for x in args.hosts.split(",") if x]
    args.designs = [d for d in args.designs.split(",") if d]
    return args


def print_intro(args: argparse.Namespace) -> None:
    """Say what is simulated and what is not."""
    print(f"Fleet: K simulated hosts, {args.per_host} synthetic registrations each (NOT real containers: dicts "
          f"shaped like GET /containers/json)")
    print(f"over {args.services} services, a pass every {args.interval:g} s (phases spread evenly), measured for "
          f"{args.duration:g} s per K and design,")
    print("against a real 3-node etcd cluster on loopback (harness.start_cluster), real gRPC clients and writes.")
    print(f"Churn: before each pass a host redeploys one container with probability {args.churn:g} "
          "(both designs, same random sequence).")
    print(f"Hosts are threads of one process ({args.workers} workers); each host keeps its etcd client across passes")
    print("(the real CLI reconnects every pass).  lease = docker-register's planner + EtcdStore (TTL 30, keys only "
          "written on change);")
    print(f"ttl = the original: a fresh TTL-{OLD_TTL} lease and one put per instance key and per port key, every pass.")
    print()


def main(argv: list[str] | None = None) -> int:
    """Start a 3-node cluster, run every K with every design, print the table."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    print_machine("docker-register fleet simulation", children=False)
    print_intro(args)
    preload_clients()
    root = Path(tempfile.mkdtemp(prefix="drf", dir="/var/tmp"))
    members: list[Etcd] = []
    results: list[FleetResult] = []
    total = time.perf_counter()
    try:
        log(f"starting a 3-node etcd cluster under {root}")
        members = start_cluster(root)
        for count in args.hosts:
            for design in args.designs:
                try:
                    results.append(simulate(members, design, count, args))
                except Exception as exc:  # noqa: BLE001 - report it and go on with the next size
                    log(f"K={count} {design}: failed: {type(exc).__name__}: {exc}")
                    print(f"K={count} {design}: FAILED: {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        for member in members:
            member.stop()
        shutil.rmtree(root, ignore_errors=True)
        if results:
            header = ["", *(f"K={r.hosts} {r.design}" for r in results), "note"]
            print_table(header, fleet_rows(results, args.interval))
            print()
            print(f"fleet simulation took {time.perf_counter() - total:.0f} s; load at end {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
