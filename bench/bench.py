#!/usr/bin/env python3
"""Benchmark docker-register against real servers and print the figures.

    .venv/bin/python bench/bench.py                        # host: N = 10, 50, 200 real containers, ~3.5 min here
    .venv/bin/python bench/bench.py host --sizes 10,50     # shorter
    .venv/bin/python bench/bench.py fleet                  # K = 1000 simulated hosts, both designs, ~2.5 min here
    .venv/bin/python bench/bench.py fleet --hosts 100,300 --rounds 3
    .venv/bin/python bench/bench.py fleet --backend redis --hosts 100 --module /tmp/before.py   # Traefik reading
    .venv/bin/python bench/bench.py layouts                # the three key layouts side by side, ~5 s
    .venv/bin/python bench/bench.py backends               # etcd, ZooKeeper, Redis side by side
    .venv/bin/python bench/bench.py events                 # --events next to the timer mode, ~5 min
    .venv/bin/python bench/bench.py rolling                # rolling restart through Traefik, ~3.5 min
    .venv/bin/python bench/bench.py engines                # stop -> key gone on Docker and on Podman, ~2 min
    .venv/bin/python bench/bench.py failover               # losing the host that wrote a router, 3 stores, ~2 min
    .venv/bin/python bench/bench.py failover --backend etcd --module /tmp/before.py   # an older module
    .venv/bin/python bench/bench.py fleet --hosts 10,100,300,1000 --plot   # also draws bench/fleet.png
    .venv/bin/python bench/bench.py list                   # `list` over 1000 hosts x 50 registrations, ~10 min

host     one host with a private dockerd and etcd: what a run costs (run_cost.py), how fast a stopped
         container's key goes (deregister.py), first syncs of large synthetic lists (run_cost.py).
fleet    K simulated hosts against a real 3-node etcd cluster, docker-register next to the original
         rewrite-every-key design (fleet.py); with --backend, on one etcd, ZooKeeper or Redis server with a real
         Traefik reading it, next to another module's design with --module (fleet_stores.py).
layouts  first and no-change sync of 500 synthetic registrations per layout (discover, traefik,
         skydns) against one etcd (layouts.py).
backends first and no-change sync of 500 synthetic registrations on etcd, ZooKeeper and Redis
         (backends.py).
events   `sync --every 10 --events` next to the timer mode: latency of start, healthy and stop, and
         the long-running process's CPU and memory at 50 containers (events.py).
rolling  a rolling restart of two backends through a real Traefik: failed requests with --events and
         with the timer mode, at two providersThrottleDuration values (rolling.py).
engines  stop -> key gone with --events on Docker and on a Podman it starts (engines.py).
failover two hosts behind a real Traefik: failed requests when the host that wrote a service's router keys
         purges or is killed, and what Traefik answers once the last host purges, per store (failover.py).
list     `docker-register list` over K hosts x N registrations written by real syncs into etcd and Redis:
         wall time, requests to the store, and where the time goes (listing.py).

--plot (host, fleet, events, rolling) also draws the key results into bench/<name>.png (deregister.png,
fleet.png, events.png, rolling.png), which bench/README.md shows; it needs the bench extra (matplotlib:
pip install '.[bench]'), and without it the figures are printed as always, with one line saying so.
Progress goes to stderr, figures to stdout.  The servers come from tests/harness.py (private socket,
free loopback ports) and are stopped and removed at the end.  Exit 0 when every part ran (and, for
layouts, events and rolling, met its target), 1 otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import backends
import deregister
import engines
import events
import failover
import fleet
import fleet_stores
import layouts
import listing
import plots
import rolling
import run_cost
from machine import installed_module, load, print_machine
from report import int_list
from servers import backend_servers, child_env, cluster, scratch, servers
from hosts import BINARY


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Subcommand and its flags; no subcommand means `host`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    host = commands.add_parser("host", help="one host: run cost, deregistration latency, synthetic sizes")
    run_cost.add_arguments(host)
    deregister.add_arguments(host)
    fleet_parser = commands.add_parser("fleet", help="K simulated hosts against a 3-node etcd cluster, or with "
                                                     "--backend on each store with a real Traefik reading")
    fleet.add_arguments(fleet_parser)
    fleet_stores.add_arguments(fleet_parser)
    layouts.add_arguments(commands.add_parser("layouts", help="first and no-change sync per key layout"))
    backends.add_arguments(commands.add_parser("backends", help="first and no-change sync on etcd, ZooKeeper "
                                                               "and Redis"))
    events_parser = commands.add_parser("events", help="sync --every --events next to the timer mode: latency "
                                                       "and cost")
    events.add_arguments(events_parser)
    rolling_parser = commands.add_parser("rolling", help="rolling restart through a real Traefik: failed requests")
    rolling.add_arguments(rolling_parser)
    for drawn in (host, fleet_parser, events_parser, rolling_parser):
        plots.add_argument(drawn)
    engines.add_arguments(commands.add_parser("engines", help="stop -> key gone with --events on Docker and "
                                                             "Podman"))
    failover.add_arguments(commands.add_parser("failover", help="losing or purging the host that wrote a "
                                                               "service's router, through Traefik"))
    listing.add_arguments(commands.add_parser("list", help="docker-register list over K hosts x N registrations"))
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["host", *argv]
    return parser.parse_args(argv)


def check_environment() -> None:
    """Refuse to run outside the virtualenv or without root."""
    if not os.path.exists(BINARY):
        sys.exit(f"bench: {BINARY} not found; run with the virtualenv's python (.venv/bin/python bench/bench.py)")
    if os.geteuid() != 0:
        sys.exit("bench: dockerd needs root")


def host(args: argparse.Namespace, dockerd, etcd, lock) -> int:
    """One host: run cost, deregistration latency, then the in-process synthetic sizes."""
    run_cost.run(args, dockerd, etcd, lock)
    largest = f"/bench/n{max(int_list(args.sizes))}"
    deregister.run(args, dockerd, etcd, child_env(dockerd, etcd, largest, lock), largest)
    run_cost.run_synthetic(args, etcd)
    return 0


def with_servers(args: argparse.Namespace, title: str, scratch_prefix: str, measure) -> int:
    """Run measure(args, dockerd, etcd, lock) against a private dockerd and etcd, with the machine stamp."""
    check_environment()
    print_machine(title)
    module = installed_module()
    total = time.perf_counter()
    with scratch(scratch_prefix) as root, servers(root) as (dockerd, etcd):
        code = measure(args, dockerd, etcd, root / "sync.lock")
    if installed_module() != module:
        print(f"WARNING: the installed module changed during the run: now {installed_module()}")
    print(f"benchmark took {time.perf_counter() - total:.0f} s; load at end {load()}")
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmark."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "fleet" and args.backend:
        print_machine("docker-register fleet on each store, a real Traefik reading", children=False)
        return fleet_stores.run(args)
    if args.command == "fleet":
        print_machine("docker-register fleet simulation", children=False)
        return fleet.run(args)
    if args.command == "events":
        return with_servers(args, "docker-register sync --every --events: latency and cost", "dre", events.run)
    if args.command == "rolling":
        return with_servers(args, "docker-register rolling restart through Traefik", "drr", rolling.run)
    if args.command == "engines":
        return with_servers(args, "docker-register stop -> key gone on Docker and Podman", "dri", engines.run)
    if args.command == "failover":
        check_environment()
        print_machine("docker-register failover through Traefik: two hosts, etcd, ZooKeeper, Redis")
        total = time.perf_counter()
        with scratch("drf") as root:
            code = failover.run(args, root)
        print(f"benchmark took {time.perf_counter() - total:.0f} s; load at end {load()}")
        return code
    if args.command == "layouts":
        print_machine("docker-register key layouts side by side", children=False)
        with scratch("drl") as root, cluster(root, 1) as (etcd,):
            return layouts.run(args, etcd)
    if args.command == "list":
        print_machine("docker-register list at fleet scale", children=False)
        with scratch("drt") as root, cluster(root, 1) as (etcd,):
            return listing.run(args, etcd, root)
    if args.command == "backends":
        print_machine("docker-register stores side by side: etcd, ZooKeeper, Redis", children=False)
        with scratch("drs") as root, cluster(root, 1) as (etcd,), backend_servers(root) as (zookeeper, redis):
            return backends.run(args, backends.Servers(etcd, zookeeper, redis, root))
    return with_servers(args, "docker-register benchmark: one host, real dockerd and etcd", "drb", host)


if __name__ == "__main__":
    sys.exit(main())
