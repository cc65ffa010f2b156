"""What each key layout costs: the first sync of N registrations and a no-change run, side by side.

The same generated container list (shaped like GET /containers/json, one tcp port each, and the label
traefik.http.routers.web.rule=Host(`web.example`) the way a container set up for Traefik carries it; the
other layouts ignore it) goes through docker_register.reconcile in this process with the Config's
layout_name set to discover, traefik and skydns in turn, with a real EtcdStore against a real etcd: the
in-process approach of run_cost.py's synthetic sizes.  Each layout writes under a prefix of its own.
"""

from __future__ import annotations

import argparse
import math

from report import int_list, log, ms, print_table, same, table_rows, tables_per_count
from run_cost import SyntheticResult, measure_synthetic
from synthetic import add_table_arguments, preload_clients
from harness import Etcd

LAYOUTS = ("discover", "traefik", "skydns")
#: The router label every synthetic container carries (only the traefik layout reads it).
ROUTER_LABELS = {"traefik.http.routers.web.rule": "Host(`web.example`)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the layout benchmark."""
    add_table_arguments(parser, "layout")


def measure(etcd: Etcd, n: int, repeats: int, seed: int) -> dict[str, list[SyntheticResult]]:
    """repeats first and no-change syncs of n registrations per layout, the layouts interleaved."""
    log(f"layouts: {n} registrations, {repeats} repeats of {', '.join(LAYOUTS)}")
    results: dict[str, list[SyntheticResult]] = {layout: [] for layout in LAYOUTS}
    for repeat in range(repeats):
        for layout in LAYOUTS:
            results[layout].append(measure_synthetic(etcd, n, seed + repeat, layout, ROUTER_LABELS, f"-r{repeat}"))
    return results


def print_layouts(results: dict[str, list[SyntheticResult]]) -> None:
    """One table: a column per layout."""
    runs = [results[layout] for layout in LAYOUTS]

    def metric(which: str, name: str):
        return lambda rs: same(f"{getattr(r, which).metrics[name]:g}" for r in rs)

    print_table(["", *LAYOUTS, "target"], table_rows(runs, [
        ("keys under the prefix", lambda rs: same(str(r.keys) for r in rs)),
        ("first sync: time, median (range) (ms)", lambda rs: ms(r.first_seconds for r in rs), "≤ 1000"),
        ("first sync: write txns", lambda rs: same(f"{r.first.write_txns:g}" for r in rs), "≤ ceil(keys/128)"),
        ("  ceil(keys/128)", lambda rs: same(str(math.ceil(r.keys / 128)) for r in rs)),
        ("first sync: puts", metric("first", "etcd_mvcc_put_total")),
        ("first sync: etcd RPCs", lambda rs: same(f"{r.first.rpc_total:g}" for r in rs)),
        ("  by method", lambda rs: same(r.first.rpc_text() for r in rs)),
        ("plan alone (dry run, in memory), median (ms)", lambda rs: ms(r.plan_seconds for r in rs)),
        ("no-change run: time, median (range) (ms)", lambda rs: ms(r.again_seconds for r in rs)),
        ("no-change run: puts", metric("again", "etcd_mvcc_put_total"), "0"),
        ("no-change run: deletes", metric("again", "etcd_mvcc_delete_total"), "0"),
        ("no-change run: raft proposals", metric("again", "etcd_server_proposals_committed_total"), "0"),
        ("no-change run: etcd RPCs", lambda rs: same(f"{r.again.rpc_total:g}" for r in rs), "≤ 3"),
        ("  by method", lambda rs: same(r.again.rpc_text() for r in rs)),
    ]))


def checks(rs: list[SyntheticResult]) -> list[tuple[str, bool]]:
    """Each target of one layout, and whether every repeat met it."""
    return [
        ("first sync within 1 s", all(r.first_seconds <= 1 for r in rs)),
        ("first sync in ≤ ceil(keys/128) write txns", all(r.first.write_txns <= math.ceil(r.keys / 128) for r in rs)),
        ("no-change run: 0 puts, 0 deletes, 0 proposals",
         all(r.again.metrics[name] == 0 for r in rs for name in
             ("etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_server_proposals_committed_total"))),
        ("no-change run: ≤ 3 etcd RPCs", all(r.again.rpc_total <= 3 for r in rs)),
    ]


def describe(n: int, repeats: int) -> str:
    """What the table of n registrations shows, and how it was measured."""
    return (f"Per layout, {n} synthetic registrations (NOT real containers: a generated container list handed to\n"
            "docker_register.reconcile with a real EtcdStore against the real etcd, in this process, after imports;\n"
            f"{repeats} first syncs per layout, each under a fresh prefix, layouts interleaved; the no-change\n"
            "run follows each first sync on the same prefix; counts from etcd's /metrics, the same in every\n"
            "repeat unless several are shown)")


# Alike in shape with backends.describe and run, on purpose: the texts differ, the loop is report.tables_per_count.
def run(args: argparse.Namespace, etcd: Etcd) -> int:
    """Measure every count and print one table per count; 1 when a target is missed."""
    preload_clients()
    return tables_per_count(int_list(args.registrations), lambda n: measure(etcd, n, args.repeats, args.seed),
                            lambda n: describe(n, args.repeats), print_layouts, checks)
