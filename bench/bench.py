#!/usr/bin/env python3
"""Benchmark docker-register against real servers and print the figures.

    .venv/bin/python bench/bench.py                        # host: N = 10, 50, 200 real containers, ~3.5 min here
    .venv/bin/python bench/bench.py host --sizes 10,50     # shorter
    .venv/bin/python bench/bench.py fleet                  # K = 1000 simulated hosts, both designs, ~2.5 min here
    .venv/bin/python bench/bench.py fleet --hosts 100,300 --rounds 3

host   one host with a private dockerd and etcd: what a run costs (run_cost.py), how fast a stopped
       container's key goes (deregister.py), first syncs of large synthetic lists (run_cost.py).
fleet  K simulated hosts against a real 3-node etcd cluster, docker-register next to the original
       rewrite-every-key design (fleet.py).

Progress goes to stderr, figures to stdout.  The servers come from tests/harness.py (private socket,
free loopback ports) and are stopped and removed at the end.  Exit 0 when every part ran, 1 when one
failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import deregister
import fleet
import run_cost
from common import BINARY, child_env, installed_module, load, print_machine, scratch, servers


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Subcommand and its flags; no subcommand means `host`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    host = commands.add_parser("host", help="one host: run cost, deregistration latency, synthetic sizes")
    run_cost.add_arguments(host)
    deregister.add_arguments(host)
    fleet.add_arguments(commands.add_parser("fleet", help="K simulated hosts against a 3-node etcd cluster"))
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["host", *argv]
    return parser.parse_args(argv)


def check_environment() -> None:
    """Refuse to run outside the virtualenv or without root."""
    if not BINARY.exists():
        sys.exit(f"bench: {BINARY} not found; run with the virtualenv's python (.venv/bin/python bench/bench.py)")
    if os.geteuid() != 0:
        sys.exit("bench: dockerd needs root")


def host(args: argparse.Namespace) -> int:
    """One host: run cost, deregistration latency, then the in-process synthetic sizes."""
    check_environment()
    print_machine("docker-register benchmark: one host, real dockerd and etcd")
    module = installed_module()
    total = time.perf_counter()
    with scratch("drb") as root, servers(root) as (dockerd, etcd):
        lock = root / "sync.lock"
        run_cost.run(args, dockerd, etcd, lock)
        largest = f"/bench/n{max(run_cost.int_list(args.sizes))}"
        deregister.run(args, dockerd, etcd, child_env(dockerd, etcd, largest, lock), largest)
        run_cost.run_synthetic(args, etcd)
    if installed_module() != module:
        print(f"WARNING: the installed module changed during the run: now {installed_module()}")
    print(f"benchmark took {time.perf_counter() - total:.0f} s; load at end {load()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmark."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "fleet":
        print_machine("docker-register fleet simulation", children=False)
        return fleet.run(args)
    return host(args)


if __name__ == "__main__":
    sys.exit(main())
