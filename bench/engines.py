"""`docker stop` → key gone on Docker and on Podman, with `sync --every 10 --events` running against each.

Docker sends a `kill` event as a stop begins, which drains the container; Podman sends nothing until the
container is gone, and docker-register lists its running containers every second instead (a stopping container
leaves that list at once).  Two kinds of container per engine: one that keeps serving SERVE_AFTER_TERM seconds
after SIGTERM (the case a drain is for) and one that exits at once.  Each trial: start a container publishing
port 80, wait for its key, pause 0.2–1.2 s (a random phase of Podman's one-second list), then `docker -H <engine>
stop -t 20` (the same client and API call, POST /containers/<id>/stop, on both engines); the key is polled
through etcd's JSON gateway every 10 ms, and the stop's return is when the container has exited.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import time

from machine import first_line
from measure import PolledSet, median
from report import log, print_table
from servers import IMAGE, INTERVAL, Gateway, Loop, child_env, web_key
from harness import Dockerd, Etcd, Podman, free_port, require

#: Seconds the slow kind serves after SIGTERM.
SERVE_AFTER_TERM = 3
KINDS = {
    "serves 3 s after SIGTERM": ("sh", "-c", f"httpd -f -p 80 -h /www & trap 'sleep {SERVE_AFTER_TERM}; exit 0' TERM;"
                                             " wait; wait"),
    "exits at once on SIGTERM": ("sh", "-c", "httpd -f -p 80 -h /www & trap 'exit 0' TERM; wait"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the engines benchmark."""
    parser.add_argument("--trials", type=int, default=8, help="stops of each kind per engine (default 8)")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the pauses")


def trial(engine_host: str, run, gateway: Gateway, watch: PolledSet, prefix: str, command: tuple[str, ...],
          rng: random.Random) -> tuple[float, float]:
    """One stop: (stop issued → key gone, stop issued → container exited), seconds."""
    cid = run("-p", f"{free_port()}:80", IMAGE, *command)
    key = web_key(prefix, cid)
    watch.when_present(key, 3 * INTERVAL)
    time.sleep(rng.uniform(0.2, 1.2))
    issued = time.time()
    stop = subprocess.run([require("docker"), "-H", engine_host, "stop", "-t", "20", cid], capture_output=True,
                          text=True, timeout=60)
    exited = time.time()
    if stop.returncode:
        raise RuntimeError(f"docker stop failed: {stop.stderr.strip()}")
    gone = watch.when_gone(key, 3 * INTERVAL)
    return gone - issued, exited - issued


def measure(name: str, engine_host: str, run, etcd: Etcd, env: dict[str, str], prefix: str, trials: int,
            rng: random.Random) -> dict[str, list[tuple[float, float]]]:
    """All trials of both kinds against one engine, with its own `sync --every 10 --events` child."""
    gateway, results = Gateway(etcd.url), {}
    with Loop(env, INTERVAL, events=True), PolledSet(lambda: gateway.keys(prefix + "/"), every=0.01) as watch:
        for kind, command in KINDS.items():
            results[kind] = []
            for i in range(trials):
                results[kind].append(trial(engine_host, run, gateway, watch, prefix, command, rng))
                log(f"{name}, {kind}, {i + 1}/{trials}: key gone {results[kind][-1][0]:.2f}s, "
                    f"exited {results[kind][-1][1]:.2f}s after the stop was issued")
    return results


def report(results: dict[str, dict[str, list[tuple[float, float]]]], trials: int) -> None:
    """One row per engine and kind."""
    print(f"Stop issued → key gone, `sync --every {INTERVAL:g} --events`, {trials} stops per row "
          "(`docker -H <engine> stop -t 20`; key polled every 10 ms)")
    rows = []
    for engine, kinds in results.items():
        for kind, pairs in kinds.items():
            gone, exited = [p[0] for p in pairs], [p[1] for p in pairs]
            before = sum(1 for g, e in pairs if g < e)
            rows.append((f"{engine}, {kind}", [f"{median(gone):.2f}", f"{min(gone):.2f}–{max(gone):.2f}",
                                                f"{median(exited):.2f}", f"{before} of {len(pairs)}"], ""))
    print_table(["", "key gone p50 (s)", "range (s)", "container exited p50 (s)", "key gone before exit", ""],
                rows)
    print()


def run(args: argparse.Namespace, dockerd: Dockerd, etcd: Etcd, lock) -> int:
    """Measure Docker, then a Podman the benchmark starts (images from the dockerd), and print both."""
    rng = random.Random(args.seed)
    print(f"podman  : {first_line([require('podman'), '--version'])}")
    podman = Podman(lock.parent / "podman")
    try:
        log(f"starting podman ({podman.host}) and loading the images")
        podman.start()
        podman.load_images(dockerd)
        results = {}
        for name, host, run_container in (
                ("Docker", dockerd.host, lambda *a: dockerd.docker("run", "-d", *a).stdout.strip()),
                ("Podman", podman.host, lambda *a: podman.podman("run", "-d", *a).stdout.strip())):
            prefix = f"/bench/engines-{name.lower()}"
            env = child_env(dockerd, etcd, prefix, lock)
            env["DOCKER_HOST"] = host
            results[name] = measure(name, host, run_container, etcd, env, prefix, args.trials, rng)
    finally:
        podman.stop()
    report(results, args.trials)
    return 0
