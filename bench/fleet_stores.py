"""The fleet on every store (issue 20): K simulated hosts write to one etcd, ZooKeeper or Redis server while a
real Traefik reads the store; what the store and Traefik spend, next to another module's design.

`bench.py fleet --backend etcd|zookeeper|redis[,...]` runs this instead of the etcd-cluster simulation of fleet.py,
whose hosts, schedule and rounds it reuses: K hosts, each with its synthetic containers (--per-host over --services
services, each container carrying a router label), a pass every --interval seconds with the hosts' phases spread
evenly, one container redeployed before a pass with probability --churn.  Here a pass is docker_register.reconcile
in the traefik layout with the store `--backend` opens (open_store), kept open from pass to pass as `sync --every`
keeps it: on ZooKeeper each host has its own session (a kazoo client and its threads in this process), on Redis its
own connection, on etcd all hosts share one connection.  With --module PATH the same passes run a second time with
that file's docker_register (e.g. the design before issue 20's change), under a root of their own.

Per store, K and design: every host's first pass, then a real Traefik (harness.Traefik, its prometheus metrics on)
starts on the root with the store's provider and the default providersThrottleDuration; once it runs every host's
server, the measured rounds.  Figures over the rounds: the store's writes and requests by its own counters (etcd
/metrics, ZooKeeper's srvr, Redis INFO commandstats), CPU of the store, of Traefik and of this process from
/proc/<pid>/stat, and Traefik's configuration reloads (traefik_config_reloads_total).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import random
import re
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fleet import Rounds, SimHost, machine_busy, run_rounds, warm_up
from machine import load
from measure import Background, cpu_seconds
from report import append_measured, int_list, log, num, print_table, print_targets, table_rows
from servers import backend_servers, cluster, scratch
from synthetic import TIMEOUT, ListedContainers, preload_clients, synthetic_container
from harness import REDIS_VALUE_WRITES, Traefik, redis_commands, wait_until

STORES = ("etcd", "zookeeper", "redis")
#: Traefik's KV provider of each store.
PROVIDERS = {"etcd": "etcd", "zookeeper": "zooKeeper", "redis": "redis"}
#: Each host's TTL (its etcd lease, ZooKeeper session, Redis heartbeat), as in fleet.py.
TTL = 30
#: Traefik's default providersThrottleDuration: what a production Traefik runs with.
THROTTLE = "2s"
#: Redis commands that write (those that change a value or a set, and those that renew an expiry).
REDIS_WRITES = (*REDIS_VALUE_WRITES, "pexpire", "expire", "hset", "hdel")
#: Targets: at the same K, the other stores' figures within this factor of etcd's.
WITHIN = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the store fleet (with fleet.py's own)."""
    parser.add_argument("--backend", help="run on these stores with a real Traefik reading (etcd, zookeeper, redis, "
                                          "comma-separated, or all) instead of the 3-node etcd simulation")
    parser.add_argument("--module", help="also run the passes with this file's docker_register (e.g. an older "
                                         "docker_register.py), as a design named after the file")
    parser.add_argument("--throttle", default=THROTTLE, help=f"Traefik's providersThrottleDuration ({THROTTLE})")


# ---------------------------------------------------------------------------
# The module a design runs, and the hosts
# ---------------------------------------------------------------------------


def load_module(path: str | None):
    """docker_register as installed (path None), or the module in that file under a name of its own."""
    if path is None:
        import docker_register

        return docker_register
    name = "docker_register_" + re.sub(r"\W", "_", Path(path).stem)
    spec = importlib.util.spec_from_file_location(name, Path(path).resolve())
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def routed(container: dict) -> dict:
    """The container with the label that gives its service a router (a shared key every host serving it wants)."""
    service = container["Image"].rsplit("/", 1)[-1].split(":")[0]
    container["Labels"] = {f"traefik.http.routers.{service}.rule": f"Host(`{service}.example`)"}
    return container


@dataclass
class RoutedHost(SimHost):
    """A simulated host whose containers carry router labels, a redeployed one too; close closes its store."""

    close: Callable[[], None] = lambda: None

    def new_container(self, image: str) -> dict:
        return routed(super().new_container(image))


@dataclass
class Design:
    """A module's passes: its name in the table and the docker_register it runs."""

    name: str
    module: object


class StoreSide:
    """One store server: how a host's config and store are made, its counters, its CPU, and emptying a root."""

    name = ""

    def __init__(self, server, folder: Path):
        self.server, self.folder = server, folder

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def pids(self) -> list[int]:
        return [self.server.proc.pid]

    def config(self, dr, host_ip: str, prefix: str):
        """A Config of that module for a host of this store, traefik layout."""
        return dr.Config(endpoints=dr.parse_endpoints(self.endpoint if self.name == "etcd" else "127.0.0.1:2379"),
                         host_ip=host_ip, prefix=prefix, ttl=TTL, timeout=TIMEOUT, layout_name="traefik")

    def store(self, dr, config):
        """The host's store, and how to close it."""
        return dr.open_store(config)

    def reopen(self, dr, host: RoutedHost) -> None:
        """After a failed pass, what `sync --every` does: close the store and open it again for the next pass."""
        with contextlib.suppress(Exception):
            host.close()
        host.store, host.close = self.store(dr, host.config)

    def watch(self, prefix: str) -> contextlib.AbstractContextManager:
        """What counts the writes under the root a reader is told of, while the rounds run (nothing on the stores
        whose own write counters count only those)."""
        return contextlib.nullcontext()

    def counters(self) -> dict[str, float]:
        raise NotImplementedError

    def clear(self, prefix: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Let go of what the side opened."""


class EtcdSide(StoreSide):
    """One etcd member; the hosts of a module share one connection (as fleet.py's hosts share one per member)."""

    name = "etcd"
    WRITES = ("etcd_mvcc_put_total", "etcd_mvcc_delete_total")

    def __init__(self, server, folder: Path):
        super().__init__(server, folder)
        self.connections, self.retired = {}, []
        self.lock = threading.Lock()

    def store(self, dr, config):
        if dr not in self.connections:
            self.connections[dr] = dr.EtcdConnection(config.endpoints, TIMEOUT)
        return dr.EtcdStore(self.connections[dr], config.prefix), lambda: None

    def reopen(self, dr, host: RoutedHost) -> None:
        """A new connection for the hosts after a failed pass: a failed call marks the one endpoint of the shared
        client failed for 300 s, and each real host would open its own again (the old one is closed at the end)."""
        with self.lock:
            if host.store.connection is self.connections[dr]:
                self.retired.append(self.connections.pop(dr))
            host.store = self.store(dr, host.config)[0]

    def counters(self) -> dict[str, float]:
        metrics = self.server.metrics(self.WRITES)
        return {"writes": sum(metrics.values()), "requests": sum(self.server.rpcs().values()),
                **{name.split("_")[2] + "s": value for name, value in metrics.items()}}

    def clear(self, prefix: str) -> None:
        self.server.etcdctl("del", "--prefix", prefix + "/", check=False)

    def close(self) -> None:
        for connection in [*self.connections.values(), *self.retired]:
            connection.close()


class ZooKeeperSide(StoreSide):
    """A standalone ZooKeeper; every host has its own session and session file."""

    name = "zookeeper"

    def config(self, dr, host_ip: str, prefix: str):
        state = self.folder / f"{prefix}-{host_ip}.session"
        return dataclasses.replace(super().config(dr, host_ip, prefix), backend="zookeeper",
                                   zookeeper=dr.ZooKeeperSettings(self.endpoint, str(state)))

    def counters(self) -> dict[str, float]:
        """Write transactions (the Zxid: each multi, session create and close moves it once) and packets received."""
        stats = dict(line.split(": ", 1) for line in self.server.four_letter("srvr").splitlines() if ": " in line)
        return {"writes": float(int(stats["Zxid"], 16) & 0xFFFFFFFF), "requests": float(stats["Received"]),
                "nodes": float(stats["Node count"])}

    def clear(self, prefix: str) -> None:
        look = self.server.client()
        try:
            look.delete("/" + prefix, recursive=True)
        finally:
            look.stop()
            look.close()


class RedisSide(StoreSide):
    """A Redis; every host has its own connection."""

    name = "redis"

    def __init__(self, server, folder: Path):
        super().__init__(server, folder)
        self.look = server.client()

    def config(self, dr, host_ip: str, prefix: str):
        return dataclasses.replace(super().config(dr, host_ip, prefix), backend="redis",
                                   redis=dr.RedisSettings(self.server.url))

    def watch(self, prefix: str) -> contextlib.AbstractContextManager:
        return RootEvents(self.server, prefix)

    def counters(self) -> dict[str, float]:
        calls = redis_commands(self.look)
        return {"writes": float(sum(calls[name] for name in REDIS_WRITES)), "requests": float(sum(calls.values())),
                **{name: float(calls[name]) for name in (*REDIS_WRITES, "scan", "mget")}}

    def clear(self, prefix: str) -> None:
        keys = list(self.look.scan_iter(match=prefix + "/*", count=1000))
        for start in range(0, len(keys), 1000):
            self.look.delete(*keys[start:start + 1000])

    def close(self) -> None:
        self.look.close()


class RootEvents(Background):
    """Counts the keyspace events under a root, each of which makes Traefik's redis provider list the root again
    (Traefik turns the events on; this is one more subscriber)."""

    def __init__(self, server, prefix: str):
        self.look, self.count = server.client(), 0
        self.subscriber = self.look.pubsub()
        self.subscriber.psubscribe(f"__keyspace@*__:{prefix}/*")
        super().__init__("root-events")

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.subscriber.get_message(timeout=0.2)
            if message and message["type"] == "pmessage":
                self.count += 1

    def __exit__(self, *_) -> None:
        super().__exit__()
        self.subscriber.close()
        self.look.close()


@contextlib.contextmanager
def store_side(name: str, root: Path):
    """The started server of that store, seen through its side; stopped at the end."""
    if name == "etcd":
        with cluster(root / "etcd", 1) as (etcd,):
            side = EtcdSide(etcd, root)
            try:
                yield side
            finally:
                side.close()
        return
    with backend_servers(root / name, only=name, max_client_connections=0) as (zookeeper, redis):
        side = ZooKeeperSide(zookeeper, root / "zookeeper") if name == "zookeeper" else RedisSide(redis, root)
        try:
            yield side
        finally:
            side.close()


def make_hosts(side: StoreSide, design: Design, count: int, args: argparse.Namespace, prefix: str
               ) -> list[RoutedHost]:
    """count hosts of one design on the store, each with its store open."""
    images = tuple(f"local/svc{j}:latest" for j in range(args.services))
    hosts = []
    for i in range(count):
        rng = random.Random(args.seed * 100003 + i)
        config = side.config(design.module, f"10.77.{i // 250}.{i % 250 + 1}", prefix)
        store, close = side.store(design.module, config)
        containers = [routed(synthetic_container(rng, j, images[j % len(images)])) for j in range(args.per_host)]
        hosts.append(RoutedHost(config, ListedContainers(containers), store, rng, args.per_host, close=close))
    return hosts


# ---------------------------------------------------------------------------
# Traefik with its metrics
# ---------------------------------------------------------------------------


class MeteredTraefik(Traefik):
    """harness.Traefik with its Prometheus metrics served on the API's entrypoint, and a quiet log."""

    def static_config(self) -> dict:
        config = super().static_config()
        config["metrics"] = {"prometheus": {"entryPoint": "traefik"}}
        return config

    def reloads(self) -> float:
        """Configuration reloads so far (traefik_config_reloads_total)."""
        with urllib.request.urlopen(self.api_url + "/metrics", timeout=10) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("traefik_config_reloads_total"):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def server_count(self) -> int:
        """Servers of all the services Traefik runs now."""
        return sum(len(service.get("loadBalancer", {}).get("servers", [])) for service in self.services().values())


# ---------------------------------------------------------------------------
# One store, one K, one design
# ---------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Everything counted at one moment."""

    at: float
    store: dict[str, float]
    store_cpu: float
    traefik_cpu: float
    reloads: float
    own_cpu: float
    machine: tuple[float, float]


def take_snapshot(side: StoreSide, traefik: MeteredTraefik, events: RootEvents | None) -> Snapshot:
    counters = side.counters()
    counters["under root"] = float(events.count) if events else counters["writes"]
    return Snapshot(time.perf_counter(), counters, sum(cpu_seconds(pid) for pid in side.pids()),
                    cpu_seconds(traefik.proc.pid), traefik.reloads(), time.process_time(), machine_busy())


def wait_quiet(side: StoreSide, traefik: MeteredTraefik, floor: float, timeout: float = 600) -> None:
    """Wait until the store serves fewer than floor requests in a second: Traefik's first listings are over (its
    zooKeeper provider lists the tree twice at start, once for the configuration and once for its watch)."""
    def quiet():
        before = side.counters()["requests"]
        time.sleep(1)
        return side.counters()["requests"] - before < floor
    traefik.wait_for(quiet, timeout, "traefik's first listings to end")


@dataclass
class StoreResult:
    """What one design did with K hosts on one store, Traefik reading."""

    store: str
    design: str
    hosts: int
    per_host: int
    rounds: Rounds
    warmup_seconds: float = 0.0
    traefik_ready_seconds: float = 0.0
    traefik_quiet_seconds: float = 0.0
    #: Store requests from Traefik's start until its first listings were over.
    start_requests: float = 0.0
    #: Seconds from a redeploy's pass until Traefik ran the new server (after the rounds).
    change_seen: float = float("nan")
    before: Snapshot | None = None
    after: Snapshot | None = None
    loads: list[str] = field(default_factory=list)
    throttle: str = THROTTLE

    @property
    def seconds(self) -> float:
        return self.after.at - self.before.at

    def rate(self, counter: str) -> float:
        return (self.after.store.get(counter, 0) - self.before.store.get(counter, 0)) / self.seconds

    def cores(self, which: str) -> float:
        if which == "machine":
            return (self.after.machine[0] - self.before.machine[0]) / self.seconds
        return (getattr(self.after, which) - getattr(self.before, which)) / self.seconds

    @property
    def label(self) -> str:
        return f"{self.store} K={self.hosts} {self.design}"


def measure(side: StoreSide, design: Design, count: int, args: argparse.Namespace, folder: Path) -> StoreResult:
    """First pass of every host, Traefik up on the root, the measured rounds; then the root emptied."""
    prefix = f"fleet-k{count}-{design.name}"
    hosts = make_hosts(side, design, count, args, prefix)
    result = StoreResult(side.name, design.name, count, args.per_host, Rounds(count, args.rounds, args.interval,
                                                                              burst=False), throttle=args.throttle)
    traefik = MeteredTraefik(folder / f"traefik-{side.name}-{prefix}", [side.endpoint], root_key=prefix,
                             throttle=args.throttle, level="ERROR", provider=PROVIDERS[side.name])

    def run_pass(host: RoutedHost) -> None:
        try:
            design.module.reconcile(host.config, host.source, host.store, dry_run=False)
        except design.module.RegisterError:
            side.reopen(design.module, host)
            raise

    events = None

    def start_counters():
        result.loads.append(load())
        result.before = take_snapshot(side, traefik, events)

    def end_counters():
        result.after = take_snapshot(side, traefik, events)
        result.loads.append(load())

    try:
        with ThreadPoolExecutor(min(count, args.workers)) as pool:
            log(f"{side.name} K={count} {design.name}: first pass of every host")
            started = time.perf_counter()
            warm_up(hosts, run_pass, pool)
            result.warmup_seconds = time.perf_counter() - started
            log(f"{side.name} K={count} {design.name}: traefik reads {prefix}")
            started, requests = time.perf_counter(), side.counters()["requests"]
            traefik.start()
            expected = count * args.per_host
            wait_until(lambda: traefik.server_count() >= expected, 600, f"traefik to run {expected} servers",
                       interval=1)
            result.traefik_ready_seconds = time.perf_counter() - started
            wait_quiet(side, traefik, max(20.0, count / 5))
            result.traefik_quiet_seconds = time.perf_counter() - started
            result.start_requests = side.counters()["requests"] - requests
            log(f"{side.name} K={count} {design.name}: {args.rounds} rounds of {args.interval:g} s, phases spread")
            with side.watch(prefix) as events:
                run_rounds(hosts, run_pass, pool, result.rounds, args.churn, random.Random(args.seed),
                           start_counters, end_counters)
            result.change_seen = change_seen(hosts[0], run_pass, traefik, side.name)
            ran, errors = result.rounds.ran(), [p.error for p in result.rounds.passes if p.error]
            log(f"{side.name} K={count} {design.name}: {len(ran)} passes ran, {len(errors)} failed"
                + (f" (first: {errors[0]})" if errors else ""))
            list(pool.map(lambda host: purge_quietly(host), hosts))
    finally:
        traefik.stop()
        for host in hosts:
            with contextlib.suppress(Exception):
                host.close()
        side.clear(prefix)
    return result


def change_seen(host: RoutedHost, run_pass, traefik: MeteredTraefik, store: str, timeout: float = 300) -> float:
    """Seconds from a redeploy's pass (done) until Traefik runs the new container's server: one more churn of the
    host, its pass, then Traefik's API asked for that service every half second."""
    host.churn()
    new = max(host.source.containers, key=lambda c: c["Ports"][0]["PublicPort"])
    service = new["Image"].rsplit("/", 1)[-1].split(":")[0]
    url = f"http://{host.config.host_ip}:{new['Ports'][0]['PublicPort']}"
    for attempt in range(3):  # a failed pass is done again, as the host's next one would
        try:
            run_pass(host)
            break
        except Exception as exc:  # noqa: BLE001 - counted as not seen
            log(f"  the redeploy's pass failed: {type(exc).__name__}: {exc}")
    else:
        return float("nan")
    done = time.perf_counter()

    def running() -> bool:
        try:
            found = traefik.api(f"/api/http/services/{service}@{PROVIDERS[store].lower()}")
        except OSError:
            return False
        return url in {server.get("url") for server in found.get("loadBalancer", {}).get("servers", [])}
    try:
        wait_until(running, timeout, f"traefik to run {url}", interval=0.5)
    except TimeoutError:
        return float("inf")
    return time.perf_counter() - done


def purge_quietly(host: RoutedHost) -> None:
    """Take a host's keys and its lease, session or heartbeat out (the next design starts from nothing)."""
    with contextlib.suppress(Exception):
        host.store.revoke(host.store.host_lease(host.config))


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def result_rows(results: list[StoreResult]) -> list[tuple[str, list[str], str]]:
    """Rows of the table, a column per store, K and design."""
    def store_detail(r: StoreResult) -> str:
        if r.store == "etcd":
            return f"put {num(r.rate('puts'))}, delete {num(r.rate('deletes'))}"
        if r.store == "redis":
            rates = {name: r.rate(name) for name in REDIS_WRITES}
            return ", ".join(f"{name} {num(value)}" for name, value in rates.items() if value) or "-"
        return f"nodes {r.after.store['nodes']:.0f}"

    def reads(r: StoreResult) -> str:
        return f"scan {num(r.rate('scan'))}, mget {num(r.rate('mget'))}" if r.store == "redis" else "-"

    return table_rows(results, [
        ("registrations (hosts × per host)", lambda r: f"{r.hosts * r.per_host}"),
        ("first pass of all hosts (s)", lambda r: f"{r.warmup_seconds:.1f}"),
        ("Traefik start to all servers / quiet (s)",
         lambda r: f"{r.traefik_ready_seconds:.1f} / {r.traefik_quiet_seconds:.1f}",
         "quiet: the store serves Traefik's first listings no more"),
        ("  store requests meanwhile", lambda r: f"{r.start_requests:.0f}", "Traefik lists the root twice at start"),
        ("passes in time / late / not run / failed", lambda r: r.rounds.outcomes(),
         "in time: before the host's next pass is due"),
        ("pass duration p50 / p99 (ms)", lambda r: r.rounds.durations()),
        ("store writes/s", lambda r: num(r.rate("writes")),
         "etcd: keys put+deleted; ZooKeeper: write txns (Zxid); Redis: write commands"),
        ("  of which", store_detail),
        ("writes under the root/s", lambda r: num(r.rate("under root")),
         "what readers are told of; Redis: keyspace events under the root"),
        ("store requests/s (all clients)", lambda r: num(r.rate("requests")),
         "etcd RPCs; ZooKeeper packets received; Redis commands"),
        ("  Traefik's listings (Redis)", reads, "SCAN + MGET of all clients"),
        ("store CPU (% of a core)", lambda r: f"{100 * r.cores('store_cpu'):.1f}", "/proc/<pid>/stat"),
        ("Traefik CPU (% of a core)", lambda r: f"{100 * r.cores('traefik_cpu'):.1f}", "/proc/<pid>/stat"),
        ("a redeploy's pass → Traefik runs it (s)", lambda r: f"{r.change_seen:.1f}",
         f"after the rounds; Traefik's throttle {results[0].throttle}"),
        ("Traefik reloads per minute", lambda r: num(60 * (r.after.reloads - r.before.reloads) / r.seconds),
         "traefik_config_reloads_total"),
        ("simulator CPU (% of a core)", lambda r: f"{100 * r.cores('own_cpu'):.0f}"),
        ("whole machine busy (% of all cores)", lambda r: f"{100 * r.cores('machine') / os.cpu_count():.0f}"),
        ("load at start / end of the rounds", lambda r: " / ".join(x.split()[0] for x in r.loads), "uptime, 1 min"),
    ])


def target_lines(results: list[StoreResult]) -> list[str]:
    """At each K and design, each other store's Traefik CPU and writes against etcd's."""
    lines = []
    baseline = {(r.hosts, r.design): r for r in results if r.store == "etcd"}
    for r in results:
        etcd = baseline.get((r.hosts, r.design))
        if r.store == "etcd" or etcd is None:
            continue
        for what, mine, theirs, unit in (
                ("Traefik CPU", 100 * r.cores("traefik_cpu"), 100 * etcd.cores("traefik_cpu"), "% of a core"),
                ("store writes/s", r.rate("writes"), etcd.rate("writes"), "/s"),
                ("writes under the root/s", r.rate("under root"), etcd.rate("under root"), "/s")):
            ok = mine <= WITHIN * theirs
            lines.append(f"{r.label:28} {'PASS' if ok else 'FAIL'} {what} within {WITHIN:g}× etcd's: "
                         f"{mine:.2f} vs {theirs:.2f} {unit}")
    return lines


def run(args: argparse.Namespace) -> int:
    """Each store in turn: a server, every K with every design, Traefik reading; print the table and targets."""
    stores = STORES if args.backend == "all" else tuple(name.strip() for name in args.backend.split(","))
    unknown = [name for name in stores if name not in STORES]
    if unknown:
        print(f"bench fleet: --backend {','.join(unknown)}: not one of {', '.join(STORES)}", file=sys.stderr)
        return 2
    counts = int_list(args.hosts)
    designs = [Design("lease", load_module(None))]
    if args.module:
        designs.append(Design(Path(args.module).stem, load_module(args.module)))
    print_intro(args, designs)
    preload_clients()
    results: list[StoreResult] = []
    wanted = len(stores) * len(counts) * len(designs)
    total = time.perf_counter()
    with scratch("drk") as root:
        for name in stores:
            with store_side(name, root / name) as side:
                for count in counts:
                    for design in designs:
                        append_measured(results, f"{name} K={count} {design.name}",
                                        lambda: measure(side, design, count, args, root))
    if results:
        print_table(["", *(r.label for r in results), "note"], result_rows(results))
    missed = print_targets(target_lines(results)) if any(r.store == "etcd" for r in results) else False
    print(f"store fleet took {time.perf_counter() - total:.0f} s; load at end {load()}")
    return 0 if len(results) == wanted and not missed else 1


def print_intro(args: argparse.Namespace, designs: list[Design]) -> None:
    """Say what is simulated and what is real."""
    print(f"Store fleet: K simulated hosts, {args.per_host} synthetic registrations each over {args.services} "
          f"services (each with a router label), traefik layout, TTL {TTL} s,")
    print(f"a pass every {args.interval:g} s per host with the phases spread, {args.rounds} measured rounds; churn: a "
          f"host redeploys one container before a pass with probability {args.churn:g}.")
    print("Simulated: the hosts (entries of one schedule in this process, passes on a pool of "
          f"{args.workers} threads, containers in memory).")
    print(f"Real: one server per store on loopback, every request a host sends, and a Traefik reading the root "
          f"(providersThrottleDuration {args.throttle}).")
    print("Designs: " + "; ".join(f"{d.name} = {getattr(d.module, '__file__', '?')}" for d in designs))
    print()
