"""What `docker-register list` costs at fleet scale: K hosts x N registrations, written by real syncs, listed.

K simulated hosts (host IPs 198.18.x.y) each run docker_register.reconcile once in this process on N generated
containers (the synthetic list of synthetic.py, spread over S images, so S services each with a shared `port`
key) against one real store, with a long TTL so that nothing expires while the listing is measured: on etcd
K host leases, S shared-key leases and K x N + S keys; on Redis the same keys, K indexes and heartbeats, all
made by the real planner and store adapters.  Then the installed `docker-register list` runs as a child
process (interpreter start and imports included), in text, in JSON and narrowed to one service; the store's
own counters say which requests each listing sent (etcd: gRPC calls by method; Redis: INFO commandstats).  An
in-process breakdown times the adapter's read, the pure listing and the rendering.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import statistics
import time
from pathlib import Path

from measure import delta, run_child, snapshot
from report import log
from synthetic import ListedContainers, make_config, preload_clients, synthetic_containers
from harness import Etcd, Redis, redis_commands
from hosts import BINARY, clean_env

PREFIX = "/bench/list"
TTL = 3600
STORES = ("etcd", "redis")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the list benchmark."""
    parser.add_argument("--hosts", type=int, default=1000, help="simulated hosts (default 1000)")
    parser.add_argument("--registrations", type=int, default=50, help="registrations per host (default 50)")
    parser.add_argument("--services", type=int, default=10, help="services (images) they spread over (default 10)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each listing; times are medians (default 3)")
    parser.add_argument("--stores", default=",".join(STORES), help="stores to fill and list (default etcd,redis)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the synthetic container ids")


def host_ip(index: int) -> str:
    """The address of simulated host index, in 198.18.0.0/15 (set aside for benchmarks)."""
    return f"198.18.{index // 250}.{index % 250 + 1}"


class Target:
    """One store under test: the Config of a host on it, the CLI's environment, and its request counter."""

    def __init__(self, store: str, server, root: Path):
        self.store, self.server, self.root = store, server, root
        if store == "redis":
            self.look = server.client()
            redis_commands(self.look)  # the client's handshake, before any count

    def config(self, index: int):
        import docker_register as dr

        settings = dr.Settings(backend=dr.BackendName(self.store), redis=getattr(self.server, "url", dr.DEFAULT_REDIS))
        endpoint = self.server.endpoint if self.store == "etcd" else "127.0.0.1:2379"
        return make_config(endpoint, host_ip(index), PREFIX, TTL, backend=settings,
                           lock_file=str(self.root / "sync.lock"))

    def env(self) -> dict[str, str]:
        store = {"ETCD_HOST": self.server.endpoint} if self.store == "etcd" else {"REDIS_URL": self.server.url}
        return clean_env(DOCKER_REGISTER_PREFIX=PREFIX, COLUMNS="160", DOCKER_REGISTER_BACKEND=self.store, **store)

    def requests(self):
        """A reading of the store's request counters."""
        return snapshot(self.server) if self.store == "etcd" else redis_commands(self.look)

    def sent(self, before, after) -> str:
        """The requests between two readings, by kind."""
        if self.store == "etcd":
            counts = delta(before, after).rpcs
        else:
            counts = after - before
            del counts["info"]
        return ", ".join(f"{name} {n:g}" for name, n in sorted(counts.items())) or "none"


def populate(target: Target, hosts: int, registrations: int, services: int, seed: int) -> float:
    """Each simulated host syncs its containers once (real plans, real store writes); the seconds it took."""
    import docker_register as dr

    images = tuple(f"local/svc{j}:latest" for j in range(services))
    rng = random.Random(seed)
    started = time.perf_counter()
    for index in range(hosts):
        config = target.config(index)
        store, close = dr.open_store(config)
        try:
            dr.reconcile(config, ListedContainers(synthetic_containers(registrations, rng, images)), store, False)
        finally:
            close()
        if index % 200 == 199:
            log(f"list: {target.store}: {index + 1} of {hosts} hosts synced")
    return time.perf_counter() - started


def child_listing(target: Target, runs: int, *argv: str) -> dict:
    """runs of the installed `docker-register ARGV`: wall and CPU medians, peak RSS, exit code, output size, and
    the store requests of one run."""
    results, sent = [], None
    for _ in range(runs):
        before = target.requests()
        result = run_child([BINARY, *argv], target.env())
        if result.returncode not in (0, 3):
            raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        sent = sent or target.sent(before, target.requests())
        results.append(result)
    return {"wall": statistics.median(r.wall for r in results), "cpu": statistics.median(r.cpu for r in results),
            "rss": max(r.maxrss_mb for r in results), "code": results[0].returncode,
            "bytes": len(results[0].stdout.encode()), "lines": results[0].stdout.count("\n"), "sent": sent}


def breakdown(target: Target) -> dict:
    """In this process, after imports: the store's read (etcd: the range alone, then with the TTL look-ups), the
    pure listing and the JSON (best of three each), and the rich tables (once: they take longest)."""
    import docker_register as dr

    config = target.config(0)
    store, close = dr.open_store(config)

    def best(action, times: int = 3) -> tuple[float, object]:
        timings, value = [], None
        for _ in range(times):
            started = time.perf_counter()
            value = action()
            timings.append(time.perf_counter() - started)
        return min(timings), value

    try:
        read_s, _ = best(lambda: store.held(lambda keys: ()))
        held_s, held = best(lambda: store.held(lambda keys: dr.listed_leases(keys, PREFIX, config.layout, None)))
    finally:
        close()
    listing_s, listed = best(lambda: dr.listing(held, PREFIX, config.layout))

    def render():
        with contextlib.redirect_stdout(io.StringIO()):
            dr.print_listing(listed, store.where)

    render_s, _ = best(render, 1)
    json_s, _ = best(lambda: json.dumps(dr.listing_json(listed, config, store.where)))
    return {"read": read_s, "held": held_s, "listing": listing_s, "render": render_s, "json": json_s,
            "keys": len(held.keys), "holders": len({kv.lease for kv in held.keys.values() if kv.lease > 0}),
            "flags": len(listed.flags)}


def measure(target: Target, args: argparse.Namespace) -> bool:
    """Fill one store, list it, print its figures; False when the clean fleet listed with a flag."""
    log(f"list: {target.store}: {args.hosts} hosts x {args.registrations} registrations, {args.services} services")
    seconds = populate(target, args.hosts, args.registrations, args.services, args.seed)
    inner = breakdown(target)
    log(f"list: {target.store}: timing the installed CLI")
    rows = [("list", child_listing(target, args.runs, "list")),
            ("list --output json", child_listing(target, args.runs, "list", "--output", "json")),
            ("list --service svc0", child_listing(target, args.runs, "list", "--service", "svc0")),
            ("--version (start-up floor)", child_listing(target, args.runs, "--version"))]
    holder = "leases" if target.store == "etcd" else "hosts' indexes"
    print(f"{target.store}: {args.hosts} hosts x {args.registrations} registrations over {args.services} services "
          f"(images), written by real syncs in {seconds:.0f} s: {inner['keys']} keys on {inner['holders']} {holder}")
    print(f"  installed CLI, median of {args.runs} runs (wall includes interpreter start and imports):")
    print(f"    {'':<28}{'wall s':>8}{'CPU s':>8}{'peak MB':>9}{'exit':>6}{'lines':>8}{'MB out':>8}  requests to the store")
    for label, r in rows:
        print(f"    {label:<28}{r['wall']:>8.2f}{r['cpu']:>8.2f}{r['rss']:>9.0f}{r['code']:>6}{r['lines']:>8}"
              f"{r['bytes'] / 1e6:>8.1f}  {r['sent']}")
    print("  in-process, after imports (best of 3; the tables once):")
    reads = (("range read alone", "read"), ("range + LeaseTimeToLive per lease", "held")) \
        if target.store == "etcd" else (("the adapter's read (SCAN + 2 pipelines)", "held"),)
    for label, key in (*reads, ("pure listing (flags included)", "listing"), ("rich tables", "render"),
                       ("JSON", "json")):
        print(f"    {label:<42}{inner[key]:>8.3f} s")
    print(f"  flags on this clean fleet: {inner['flags']}")
    print()
    return not inner["flags"] and rows[0][1]["code"] == 0


def run(args: argparse.Namespace, etcd: Etcd, root: Path) -> int:
    """Each chosen store in turn (Redis started here); 1 when a clean fleet listed with a flag."""
    preload_clients()
    clean = True
    for store in args.stores.split(","):
        if store == "etcd":
            clean = measure(Target("etcd", etcd, root), args) and clean
        else:
            redis = Redis(root / "redis").start()
            try:
                clean = measure(Target("redis", redis, root), args) and clean
            finally:
                redis.stop()
    return 0 if clean else 1
