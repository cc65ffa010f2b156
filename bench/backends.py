"""What each store costs: the first sync of N registrations and a no-change run on etcd, ZooKeeper and Redis.

The same generated container list goes through docker_register.reconcile in this process (the in-process
approach of layouts.py), in the discover layout, with the store `--backend` would open (open_store) against
a real server of each kind, each run under a prefix of its own.  Writes are counted by each server: etcd's
/metrics (write transactions, puts, deletes), ZooKeeper's Zxid (it moves with every write: a new session
and each multi transaction, never with a read or a session re-attach), Redis's INFO commandstats (calls
per command; the INFO calls of the benchmark itself left out).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from measure import delta, snapshot
from report import int_list, log, ms, print_table, same, table_rows, tables_per_count
from synthetic import add_table_arguments, make_config, preload_clients, synthetic_source, timed_sync
from harness import REDIS_VALUE_WRITES, Etcd, Redis, ZooKeeper, redis_commands

BACKENDS = ("etcd", "zookeeper", "redis")
LAYOUT = "discover"
TTL = 30
HOST_IP = "192.0.2.250"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the backend benchmark."""
    add_table_arguments(parser, "backend")


@dataclass
class Servers:
    """One server of each kind, and where ZooKeeper's session files go."""

    etcd: Etcd
    zookeeper: ZooKeeper
    redis: Redis
    root: Path


@dataclass
class BackendResult:
    """First and no-change in-process sync of n synthetic registrations on one store, and what each wrote."""

    backend: str
    first_seconds: float
    first: object
    #: The run after the first sync, before the no-change run measured (ZooKeeper: the leader's first look at
    #: the hosts folder, which walks the tree once).
    look_seconds: float
    again_seconds: float
    again: object


def command_delta(before: Counter, after: Counter) -> Counter:
    """Commands sent in between, without the benchmark's own INFO."""
    sent = after - before
    del sent["info"]
    return sent


class KeyspaceEvents:
    """Keyspace events under the benchmark's prefixes, counted (Traefik's redis provider re-lists its root on each)."""

    def __init__(self, client):
        client.config_set("notify-keyspace-events", "AKE")
        self.subscriber = client.pubsub()
        self.subscriber.psubscribe("__keyspace@*__:/bench/backends*")
        self.seen = 0

    def count(self) -> int:
        """Events so far."""
        while (message := self.subscriber.get_message(timeout=0.05)) is not None:
            self.seen += message["type"] == "pmessage"
        return self.seen


def counters(backend: str, servers: Servers, redis_client, events: KeyspaceEvents):
    """(read, difference) of the write counters of one store."""
    if backend == "etcd":
        return lambda: snapshot(servers.etcd), delta
    if backend == "zookeeper":
        return servers.zookeeper.zxid, lambda before, after: after - before
    return lambda: (redis_commands(redis_client), events.count()), lambda before, after: (
        command_delta(before[0], after[0]) + Counter({"events under the root": after[1] - before[1]}))


def backend_config(backend: str, servers: Servers, prefix: str, tag: str):
    """The Config a `sync --backend ...` run would have, for an in-process run."""
    import docker_register as dr

    settings = dr.Settings(backend=dr.BackendName(backend), zookeeper=servers.zookeeper.endpoint,
                           redis=servers.redis.url)
    return make_config(servers.etcd.endpoint, HOST_IP, prefix, TTL, LAYOUT, settings,
                       str(servers.root / f"sync{tag}.lock"))


def measure(servers: Servers, n: int, repeats: int, seed: int) -> dict[str, list[BackendResult]]:
    """repeats first and no-change syncs of n registrations per store, the stores interleaved."""
    log(f"backends: {n} registrations, {repeats} repeats of {', '.join(BACKENDS)}")
    redis_client = servers.redis.client()
    redis_commands(redis_client)  # the client's connection handshake, before any count
    events = KeyspaceEvents(servers.redis.client())
    results: dict[str, list[BackendResult]] = {backend: [] for backend in BACKENDS}
    for repeat in range(repeats):
        source = synthetic_source(n, seed + repeat)
        for backend in BACKENDS:
            tag = f"-{backend}{n}-r{repeat}"
            config = backend_config(backend, servers, f"/bench/backends{tag}", tag)
            read, difference = counters(backend, servers, redis_client, events)
            (first_seconds, first), (look_seconds, _), (again_seconds, again) = [
                timed_sync(config, source, read, difference) for _ in range(3)]
            results[backend].append(BackendResult(backend, first_seconds, first, look_seconds, again_seconds, again))
    redis_client.close()
    events.subscriber.close()
    return results


def command_text(sent: list[Counter]) -> str:
    """Redis commands by kind over the repeats, e.g. 'pexpire 2, scan 1–3' (SCAN's rounds grow with the keys
    earlier repeats left in the database)."""
    names = sorted(set().union(*sent))
    counts = [sorted({s[name] for s in sent}) for name in names]
    return ", ".join(f"{name} {c[0]}" + (f"–{c[-1]}" if len(c) > 1 else "") for name, c in zip(names, counts))


def first_writes(r: BackendResult) -> str:
    """What the first sync wrote, in each store's own unit."""
    if r.backend == "etcd":
        return f"{r.first.write_txns:g} write txns"
    if r.backend == "zookeeper":
        return f"Zxid +{r.first}"
    return ", ".join(f"{c.upper()} {r.first[c]}" for c in REDIS_VALUE_WRITES if r.first[c]) or "none"


def first_detail(r: BackendResult) -> str:
    """The first sync's requests by kind (etcd, ZooKeeper; Redis's in command_text)."""
    if r.backend == "etcd":
        return f"{r.first.metrics['etcd_mvcc_put_total']:g} puts; RPCs: {r.first.rpc_text()}"
    return "transactions: 1 new session, 4 multi, the presence node and the folders above it not there yet"


def again_writes(r: BackendResult) -> int:
    """Writes of the no-change run that readers see: etcd puts+deletes, ZooKeeper transactions, Redis keyspace
    events under the root (the heartbeat outside it wakes no reader)."""
    if r.backend == "etcd":
        return int(r.again.metrics["etcd_mvcc_put_total"] + r.again.metrics["etcd_mvcc_delete_total"])
    if r.backend == "zookeeper":
        return r.again
    return r.again["events under the root"]


def again_text(r: BackendResult) -> str:
    """The no-change run's writes, in each store's own unit."""
    if r.backend == "etcd":
        return (f"{r.again.metrics['etcd_mvcc_put_total']:g} puts, "
                f"{r.again.metrics['etcd_mvcc_delete_total']:g} deletes")
    if r.backend == "zookeeper":
        return f"Zxid +{r.again}"
    return (f"{again_writes(r)} keyspace events under the root; outside it "
            + (", ".join(f"{c.upper()} {r.again[c]}" for c in (*REDIS_VALUE_WRITES, "pexpire") if r.again[c]) or "none"))


def again_detail(r: BackendResult) -> str:
    """The no-change run's requests by kind (etcd, ZooKeeper; Redis's in command_text)."""
    if r.backend == "etcd":
        return f"RPCs: {r.again.rpc_text()}"
    return "(reads and a session re-attach: no Zxid)"


def print_backends(results: dict[str, list[BackendResult]]) -> None:
    """One table: a column per store."""
    print_table(["", *BACKENDS, "target"], table_rows([results[b] for b in BACKENDS], [
        ("first sync: time, median (range) (ms)", lambda rs: ms(r.first_seconds for r in rs), "≤ 1000"),
        ("first sync: writes", lambda rs: same(first_writes(r) for r in rs)),
        ("  by kind", lambda rs: command_text([r.first for r in rs]) if rs[0].backend == "redis"
         else same(first_detail(r) for r in rs)),
        ("second run: time, median (range) (ms)", lambda rs: ms(r.look_seconds for r in rs)),
        ("no-change run: time, median (range) (ms)", lambda rs: ms(r.again_seconds for r in rs)),
        ("no-change run: writes readers see", lambda rs: same(again_text(r) for r in rs), "0"),
        ("no-change run: PEXPIRE", lambda rs: same(str(r.again["pexpire"]) if r.backend == "redis" else "—"
                                                   for r in rs)),
        ("  by kind", lambda rs: command_text([r.again for r in rs]) if rs[0].backend == "redis"
         else same(again_detail(r) for r in rs)),
    ]))


def checks(rs: list[BackendResult]) -> list[tuple[str, bool]]:
    """Each target of one store, and whether every repeat met it."""
    return [("first sync within 1 s", all(r.first_seconds <= 1 for r in rs)),
            ("no-change run writes nothing", all(again_writes(r) == 0 for r in rs))]


def describe(n: int, repeats: int) -> str:
    """What the table of n registrations shows, and how it was measured."""
    return (f"Per store, {n} synthetic registrations in the {LAYOUT} layout (NOT real containers: a generated\n"
            "container list handed to docker_register.reconcile with the store `--backend` opens, against a real\n"
            f"etcd, ZooKeeper and Redis, in this process, after imports; TTL {TTL} s; {repeats} first syncs per\n"
            "store, each under a fresh prefix, stores interleaved; then two more runs on the same prefix\n"
            "(ZooKeeper: re-attaching the saved session; its second run is also the leader's first look at the\n"
            "hosts folder, which walks the tree once); the third is the no-change run measured; counts the same in\n"
            "every repeat unless several are shown)")


# Alike in shape with layouts.describe and run, on purpose: the texts differ, the loop is report.tables_per_count.
def run(args: argparse.Namespace, servers: Servers) -> int:
    """Measure every count and print one table per count; 1 when a target is missed."""
    preload_clients()
    import kazoo.client  # noqa: F401  (imported lazily by the stores: kept out of the timings)
    import redis  # noqa: F401

    return tables_per_count(int_list(args.registrations), lambda n: measure(servers, n, args.repeats, args.seed),
                            lambda n: describe(n, args.repeats), print_backends, checks)
