"""A rolling restart through a real Traefik: do requests fail while each backend is replaced in turn?

Two backends of one service run a web server that keeps serving for 5 s after SIGTERM, with the label a
container set up for a single-host Traefik carries (traefik.http.routers.web.rule=Host(`web.example`)).
`docker-register sync --every 10 [--events] --layout traefik` writes their servers and router; a real
Traefik (tests/harness.py, loopback, etcd provider, providersThrottleDuration as given) routes. A client
sends requests for web.example through Traefik's entrypoint in a loop (bounded rate, count and time, to
127.0.0.1 only) while the procedure replaces each backend in turn:

    for each round, for each of the two backends:
        docker stop <old>           (SIGTERM; the old one serves 5 s more, then exits; docker stop returns)
        docker run <new>            (same image, command and labels)
        wait until Traefik's API lists the new backend's server (registered and applied), then go on

as a rolling deploy with a health check would.  Every answer that is not a 200 counts as failed: 5xx
(Traefik's 502 when a server it still lists refuses the connection), 404 (no router) and connection errors.
Each run has its own dockerd containers, Traefik, root key and docker-register child.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import plots
from machine import stamp
from measure import Background, PolledSet
from report import log, print_table, spread, table_rows
from servers import IMAGE, INTERVAL, MODES, Loop, child_env, run_container
from harness import Dockerd, Etcd, Traefik
from consumers import WEB_HOST, WEB_LABELS, published_url

#: Serves 5 s after SIGTERM, then exits; its page is its hostname (its short id), so an answer says who served.
BACKEND = ("sh", "-c", "hostname > /www/index.html; httpd -f -p 80 -h /www & trap 'sleep 5; exit 0' TERM; wait; wait")
#: Longest wait for Traefik to list a new server (a timer-mode pass may be an interval away).
WAIT = 3 * INTERVAL + 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the rolling-restart benchmark."""
    parser.add_argument("--throttles", default="2s,200ms",
                        help="Traefik providersThrottleDuration values, one set of runs each (default 2s,200ms)")
    parser.add_argument("--modes", default="events,timer", help="events, timer or both (default)")
    parser.add_argument("--rounds", type=int, default=3, help="times each of the two backends is replaced (default 3)")
    parser.add_argument("--rate", type=float, default=50, help="client requests per second at most (default 50)")
    parser.add_argument("--max-requests", type=int, default=20000, help="client requests per run at most")
    parser.add_argument("--max-seconds", type=float, default=300, help="client seconds per run at most")


# ---------------------------------------------------------------------------
# The client and the backends
# ---------------------------------------------------------------------------


class Client(Background):
    """Sends GET / with Host web.example through Traefik in a thread, one connection per request, until stopped
    or out of its bounds; keeps (time sent, seconds it took, outcome) of each: a backend's id (200), or what
    failed."""

    def __init__(self, traefik: Traefik, rate: float, max_requests: int, max_seconds: float):
        self.traefik, self.pause, self.max_requests, self.max_seconds = traefik, 1 / rate, max_requests, max_seconds
        self.results: list[tuple[float, float, str]] = []
        super().__init__("client")

    def _run(self) -> None:
        begun = time.monotonic()
        while (not self._stop.is_set() and len(self.results) < self.max_requests
               and time.monotonic() - begun < self.max_seconds):
            sent = time.time()
            try:
                status, body = self.traefik.get(WEB_HOST, timeout=5)
                outcome = body.strip() if status == 200 else f"HTTP {status}"
            except OSError as error:
                outcome = f"connection error ({type(error).__name__})"
            self.results.append((sent, time.time() - sent, outcome))
            self._stop.wait(max(0.0, self.pause - (time.time() - sent)))

    def failures(self) -> list[tuple[float, float, str]]:
        """The requests that got no 200."""
        return [result for result in self.results if result[2].startswith(("HTTP", "connection"))]


@dataclass
class Backend:
    """One backend container: short id, and the server url Traefik should get for it."""

    id: str
    url: str


def start_backend(dockerd: Dockerd, host_ip: str) -> Backend:
    """Start one backend; its id and http://host_ip:published port."""
    cid = run_container(dockerd, *WEB_LABELS, IMAGE, *BACKEND)[:12]
    return Backend(cid, published_url(dockerd, cid, host_ip))


# ---------------------------------------------------------------------------
# One run: a throttle, a mode, rounds of replacements
# ---------------------------------------------------------------------------


@dataclass
class Step:
    """One replacement: when the stop was issued and returned, when Traefik dropped the old server and listed
    the new one (time.time()), and the backends."""

    old: Backend
    new: Backend
    stop_issued: float
    stop_returned: float
    new_listed: float
    old_dropped: float | None = None


@dataclass
class RollingResult:
    """One run of the procedure."""

    throttle: str
    mode: str
    steps: list[Step] = field(default_factory=list)
    requests: list[tuple[float, float, str]] = field(default_factory=list)
    failures: list[tuple[float, float, str]] = field(default_factory=list)
    last_served: dict[str, float] = field(default_factory=dict)

    def counts(self) -> Counter:
        """Failed requests by kind."""
        return Counter(outcome for _, _, outcome in self.failures)


def replace_in_turn(dockerd: Dockerd, host_ip: str, backends: list[Backend], rounds: int, listed: PolledSet) -> list[Step]:
    """The procedure: stop each backend in turn, start its replacement, wait until Traefik lists it."""
    steps = []
    for round_ in range(rounds):
        for slot, old in enumerate(backends):
            log(f"  round {round_ + 1}, backend {slot + 1}: docker stop {old.id}")
            issued = time.time()
            dockerd.docker("stop", old.id)
            returned = time.time()
            new = backends[slot] = start_backend(dockerd, host_ip)
            steps.append(Step(old, new, issued, returned, listed.when_present(new.url, WAIT)))
    return steps


def rolling_run(dockerd: Dockerd, etcd: Etcd, root: Path, lock: Path, throttle: str, mode: str, index: int,
                args: argparse.Namespace) -> RollingResult:
    """Two backends behind a fresh Traefik, the docker-register loop of the mode, the client, the procedure."""
    root_key, host_ip = f"bench-rolling{index:02d}", dockerd.subnet.split("/")[0]  # the bridge: this machine
    # Traefik's watch backs off for seconds while its root is empty: give it a key first.
    etcd.etcdctl("put", f"{root_key}/docker-register-bench", "x")
    traefik = Traefik(root / f"traefik{index:02d}", [etcd.endpoint], root_key=root_key, throttle=throttle)
    env = {**child_env(dockerd, etcd, root_key, lock), "HOST_IP": host_ip, "DOCKER_REGISTER_LAYOUT": "traefik"}
    result = RollingResult(throttle, mode)
    try:
        traefik.start()
        backends = [start_backend(dockerd, host_ip) for _ in range(2)]
        with Loop(env, INTERVAL, MODES[mode]) as loop, PolledSet(traefik.servers, every=0.05) as listed:
            for backend in backends:
                listed.when_present(backend.url, WAIT)
            with Client(traefik, args.rate, args.max_requests, args.max_seconds) as client:
                time.sleep(1)  # traffic flows through both before the first replacement
                result.steps = replace_in_turn(dockerd, host_ip, backends, args.rounds, listed)
                for step in result.steps:
                    step.old_dropped = listed.when_gone(step.old.url, WAIT)
                time.sleep(1)
            if loop.notes():
                log(f"  notes of the loop: {loop.notes()}")
        result.requests, result.failures = client.results, client.failures()
        for at, _, outcome in result.requests:
            result.last_served[outcome] = at
    finally:
        traefik.stop()
        dockerd.remove_all_containers()
        etcd.etcdctl("del", "--prefix", root_key + "/", check=False)
    return result


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def seconds(values) -> str:
    """Median (range) of seconds."""
    return spread(values, "{:.2f}")


def failure_window(r: RollingResult) -> str:
    """In how many steps requests failed, and from when to when after their step's `docker stop` was issued."""
    after: dict[int, list[float]] = {}
    before = 0
    for at, _, _ in r.failures:
        step = max((i for i, s in enumerate(r.steps) if s.stop_issued <= at), default=None)
        if step is None:
            before += 1
        else:
            after.setdefault(step, []).append(at - r.steps[step].stop_issued)
    offsets = [x for xs in after.values() for x in xs]
    parts = [f"{len(after)} of {len(r.steps)} steps, {min(offsets):.2f}–{max(offsets):.2f} s"] if offsets else []
    parts += [f"{before} before the first stop"] if before else []
    return "; ".join(parts) or "-"


def result_rows(results: list[RollingResult]) -> list[tuple[str, list[str], str]]:
    """A column per run; per-step seconds as median (range)."""
    return table_rows(results, [
        ("requests sent", lambda r: str(len(r.requests))),
        ("replacements", lambda r: str(len(r.steps))),
        ("FAILED requests", lambda r: str(len(r.failures)), "0 with --events"),
        ("  by kind", lambda r: ", ".join(f"{k}: {n}" for k, n in sorted(r.counts().items())) or "-"),
        ("  when, after the step's docker stop", failure_window),
        ("slowest answer (s)", lambda r: f"{max(took for _, took, _ in r.requests):.2f}"),
        ("docker stop took (s)", lambda r: seconds(s.stop_returned - s.stop_issued for s in r.steps)),
        ("stop issued -> old server's last 200 (s)",
         lambda r: seconds(r.last_served.get(s.old.id, s.stop_issued) - s.stop_issued for s in r.steps)),
        ("stop issued -> Traefik drops old server (s)",
         lambda r: seconds(s.old_dropped - s.stop_issued for s in r.steps)),
        ("new started -> Traefik lists it (s)", lambda r: seconds(s.new_listed - s.stop_returned for s in r.steps)),
    ])


def run(args: argparse.Namespace, dockerd: Dockerd, etcd: Etcd, lock: Path) -> int:
    """Every throttle × mode; print the table.  1 when --events lost a request."""
    results, index = [], 0
    for throttle in args.throttles.split(","):
        for mode in args.modes.split(","):
            index += 1
            log(f"rolling restart {index}: Traefik throttle {throttle}, sync --every {INTERVAL:g} "
                f"{'--events' if MODES[mode] else '(timer)'}")
            results.append(rolling_run(dockerd, etcd, lock.parent, lock, throttle, mode, index, args))
    print(f"Rolling restart through Traefik: 2 backends serving 5 s after SIGTERM, each replaced {args.rounds} times")
    print("(docker stop, docker run, wait until Traefik's API lists the new server, next); a client sends GET / for")
    print(f"Host {WEB_HOST} through Traefik on 127.0.0.1 at up to {args.rate:g}/s, one connection each; failed =")
    print("not a 200 (5xx, 404, connection errors; the client waits 5 s for an answer).  docker-register:")
    print(f"sync --every {INTERVAL:g} [--events] --layout traefik.")
    print_table(["", *(f"throttle {r.throttle}, {'--events' if MODES[r.mode] else 'timer'}" for r in results),
                 "target"], result_rows(results))
    print()
    plots.draw(args, "rolling", plots.rolling_figure,
               [plots.Outcome(r.throttle, r.mode, len(r.failures), len(r.requests)) for r in results],
               f"2 backends serving 5 s after SIGTERM, each replaced {args.rounds} times (stop, start, wait until "
               f"Traefik lists it); client at up to {args.rate:g} requests/s through Traefik; "
               f"sync --every {INTERVAL:g} --layout traefik; {stamp()}")
    lost = sum(len(r.failures) for r in results if MODES[r.mode])
    print(f"Target: 0 failed requests with --events: {'PASS' if lost == 0 else 'FAIL'} ({lost} failed)")
    print()
    return 0 if lost == 0 else 1
