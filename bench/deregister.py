"""How long a stopped container's key outlives it: `docker-register sync --every 10` against TTL-only keys.

docker-register runs as a child against the private dockerd and etcd; containers are stopped at random
phases of its loop.  The TTL-only design (the original: every key put again on a fresh TTL-15 lease
every 10 s) is run for real through etcd's JSON gateway, and its refreshes stopped at random phases.
"""

from __future__ import annotations

import argparse
import random
import time

import plots
from machine import stamp
from measure import PolledSet, median
from report import log
from servers import HOST_IP, INTERVAL, SERVICE, Gateway, Loop, running_ids, web_key
from harness import Dockerd, Etcd


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the deregistration benchmark."""
    parser.add_argument("--stops", type=int, default=5, help="containers stopped for deregistration latency")
    parser.add_argument("--ttl-keys", type=int, default=5, help="keys in the TTL-only comparison")


def measure_deregistration(dockerd: Dockerd, etcd: Etcd, env: dict[str, str], prefix: str,
                           stops: int) -> list[tuple[float, float]]:
    """Stop containers at random phases of a `sync --every 10` loop; (stop s, key-gone latency s) each."""
    gateway, rng = Gateway(etcd.url), random.Random()
    results = []
    with Loop(env, INTERVAL, events=False), PolledSet(lambda: gateway.keys(prefix + "/"), every=0.02) as watch:
        for i in range(stops):
            time.sleep(rng.uniform(0, INTERVAL))
            container = rng.choice(running_ids(dockerd))
            key = web_key(prefix, container)
            if not gateway.exists(key):
                raise RuntimeError(f"{key} is not registered")
            issued = time.time()
            dockerd.docker("stop", "-t", "0", container)
            stopped = time.time()
            gone = watch.when_gone(key, 3 * INTERVAL)
            results.append((stopped - issued, gone - stopped))
            log(f"stop {i + 1}/{stops}: docker stop took {stopped - issued:.2f}s, key gone {gone - stopped:.2f}s later")
    stopped_ids = dockerd.docker("ps", "-aq", "--filter", "status=exited").stdout.split()
    if stopped_ids:
        dockerd.docker("rm", *stopped_ids)
    return results


def measure_ttl_only(etcd: Etcd, keys: int, ttl: int = 15) -> list[tuple[float, float]]:
    """The old design for real: put each key on a fresh TTL-15 lease every 10 s, stop refreshing at
    one moment (random phase per key), time until etcd drops it.  Returns (from stop, from last put)."""
    gateway, rng = Gateway(etcd.url), random.Random()
    names = [f"/bench/ttl-only/{SERVICE}/{i:012x}" for i in range(keys)]
    start = time.perf_counter()
    due = {name: start + rng.uniform(0, INTERVAL) for name in names}
    stop_at = start + INTERVAL + 2
    last_put = {}
    while True:
        name = min(due, key=due.get)
        if due[name] >= stop_at:
            break
        time.sleep(max(0.0, due[name] - time.perf_counter()))
        gateway.put(name, f"{HOST_IP}:32768", gateway.grant(ttl))
        last_put[name] = time.perf_counter()
        due[name] += INTERVAL
    time.sleep(max(0.0, stop_at - time.perf_counter()))
    pending, results = set(names), {}
    while pending:
        for name in list(pending):
            if not gateway.exists(name):
                now = time.perf_counter()
                results[name] = (now - stop_at, now - last_put[name])
                pending.discard(name)
        if time.perf_counter() - stop_at > ttl + 10:
            raise TimeoutError("TTL-only keys did not expire")
        time.sleep(0.02)
    return list(results.values())


def report(dereg: list[tuple[float, float]], ttl_only: list[tuple[float, float]]) -> None:
    """Print deregistration latency next to the TTL-only design."""
    print(f"Deregistration latency (docker-register sync --every {INTERVAL:g} running; containers stopped with "
          "`docker stop -t 0`")
    print(" at random phases; time from `docker stop` returning until the key is gone; 20 ms polling)")
    latencies = [x[1] for x in dereg]
    print(f"  docker-register, {len(dereg)} stops : median {median(latencies):.2f} s, max {max(latencies):.2f} s   "
          f"[{', '.join(f'{x:.2f}' for x in latencies)}]   (expected: uniform 0–{INTERVAL:g} s + one run)")
    print(f"  docker stop itself took          : median {median(x[0] for x in dereg):.2f} s")
    from_stop, from_put = [x[0] for x in ttl_only], [x[1] for x in ttl_only]
    print(f"  TTL-only (old design), measured  : {len(ttl_only)} keys put on a fresh TTL-15 lease every "
          f"{INTERVAL:g} s, refreshes stopped at a random phase:")
    print(f"      from stop to gone            : median {median(from_stop):.2f} s, max {max(from_stop):.2f} s   "
          f"[{', '.join(f'{x:.2f}' for x in sorted(from_stop))}]   (expected: uniform 5–15 s)")
    print(f"      from last refresh to gone    : median {median(from_put):.2f} s, max {max(from_put):.2f} s   "
          "(the TTL, plus etcd's 500 ms expiry check)")
    print("  computed, not measured: the old design with TTL 30 would give 20–30 s; with docker-register a dead")
    print("  host's keys (no more runs) go when its lease expires: 20–30 s with TTL 30 and runs every 10 s.")
    print()


def strips(dereg: list[tuple[float, float]], ttl_only: list[tuple[float, float]]) -> list[plots.Strip]:
    """The picture's rows: docker-register's stops, then the TTL-only keys' (from stop to gone, both)."""
    label = "stopped → key gone"
    return [plots.Strip(label, "timer", tuple(x[1] for x in dereg)),
            plots.Strip(label, "ttl", tuple(x[0] for x in ttl_only))]


def run(args: argparse.Namespace, dockerd: Dockerd, etcd: Etcd, env: dict[str, str], prefix: str) -> None:
    """Measure both designs and print them (the loop runs on the host's largest size, already registered)."""
    log(f"deregistration latency: {args.stops} stops with sync --every {INTERVAL:g}")
    dereg = measure_deregistration(dockerd, etcd, env, prefix, args.stops)
    log("TTL-only comparison")
    ttl_only = measure_ttl_only(etcd, args.ttl_keys)
    report(dereg, ttl_only)
    plots.draw(args, "deregister", plots.latency_figure, strips(dereg, ttl_only),
               f"Deregistration latency: sync --every {INTERVAL:g} and the original TTL design", None,
               f"docker-register: {len(dereg)} containers stopped (docker stop -t 0) at random phases; original: "
               f"{len(ttl_only)} keys rewritten on a fresh TTL-15 lease every {INTERVAL:g} s, refreshes stopped "
               f"at random phases; keys polled every 20 ms; {stamp()}")
