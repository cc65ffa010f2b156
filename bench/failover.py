"""A service outlives any one host (issue 16): through a real Traefik, does losing or purging the host that wrote
a service's shared keys (its router keys) lose requests?

Two Docker engines stand for two hosts, A and B, each running `docker-register sync --every 1 --events --ttl 4
--layout traefik` with its own address (its engine's bridge, an address of this machine), Docker socket, lock
file and, for ZooKeeper, session file.  Service `web` runs one container on each engine with the label a
container set up for Traefik carries (traefik.http.routers.web.rule=Host(`web.example`)); its page is its own
hostname, so an answer says which container served it.  Host A also runs `solo` (Host(`solo.example`)), which
no other host serves.  A starts first and writes the router keys; Traefik starts once they are there, then B.
A client sends GET / for web.example through Traefik's entrypoint on 127.0.0.1 every 50 ms, one connection
each, answered within 1 s or failed (bounded in count and time); a failed request is anything but a 200
(404, 5xx, connection errors).

    1. purge   A's watch stops (SIGTERM), then `docker-register purge` for A with DOCKER_REGISTER_TTL set to
               the TTL its watch ran with.  Expected: no failed request; B's container keeps answering.
               A's watch starts again; once Traefik lists both servers, B leaves (SIGTERM, purge) and comes
               back, so that A is again the host that wrote the router keys (setup: not measured).
    2. SIGKILL A's watch is killed; its containers keep running.  Expected: no failed request; A's server
               leaves Traefik within about the TTL; solo's router keys (only A served solo) leave the store
               within about the TTL and a pass or two of B.
    3. last    B's watch stops (SIGTERM) and B purges: nobody serves web any more.  Expected: within a few
               seconds no request reaches B's container; what Traefik answers instead is recorded.

run_scenario() is the driver: tests/test_failover.py runs it and asserts, `bench.py failover` runs it and
prints a table per store.  The store servers, engines and Traefik's binary come from tests/harness.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from measure import Background
from report import log, print_table, print_targets
from servers import backend_servers, servers
from harness import Dockerd, Traefik, free_subnet, stop_process, wait_until, zookeeper_nodes
from hosts import BINARY, clean_env
from consumers import WEB_HOST, WEB_LABELS, published_url, start_web

STORES = ("etcd", "zookeeper", "redis")
#: Each host's TTL (its etcd lease, ZooKeeper session or Redis expiry) and seconds between two passes of its watch.
TTL = 4
EVERY = 1
#: Traefik's providersThrottleDuration.
THROTTLE = "200ms"
#: The client: a request every PAUSE seconds, each on a new connection, failed when not answered in TIMEOUT.
PAUSE = 0.05
TIMEOUT = 1.0
#: The client's bounds: it never sends more, or for longer, whatever happens.
MAX_REQUESTS = 4000
MAX_SECONDS = 180.0
#: Seconds each phase keeps watching the traffic after its last step.
SETTLE = 3.0
#: Phase 3 watches this long after the purge.
LAST_WATCH = 6.0
#: Targets: A's server gone from Traefik, solo's router keys gone from the store (seconds after the SIGKILL),
#: and B's container answering no more (seconds after B's purge).
SERVER_GONE_WITHIN = TTL + 2 * EVERY
SOLO_GONE_WITHIN = 2 * TTL
LAST_QUIET_WITHIN = 3.0
#: The service only host A serves, with a router of its own.
SOLO_HOST = "solo.example"
SOLO_LABELS = ("-l", "SERVICE_NAME=solo", "-l", f"traefik.http.routers.solo.rule=Host(`{SOLO_HOST}`)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the failover benchmark."""
    parser.add_argument("--backend", default="all", choices=[*STORES, "all"], help="store to run on (default all)")
    parser.add_argument("--module", help="run the CLI as `python MODULE` (e.g. an older docker_register.py) instead "
                                         "of the installed console script")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the scenario per store (default 1)")


# ---------------------------------------------------------------------------
# The stores: how the CLI and Traefik are pointed at one, and what it holds
# ---------------------------------------------------------------------------


class StoreView:
    """One store server as the scenario sees it: the CLI's variables, Traefik's provider, its keys."""

    name = ""
    provider = ""

    def __init__(self, server):
        self.server = server

    def env(self, folder: Path) -> dict[str, str]:
        """Variables pointing a host's CLI at the store (folder: the host's own files)."""
        raise NotImplementedError

    def values(self, root: str) -> dict[str, str]:
        """Every key under the root (root/...) with its value, as a KV reader such as Traefik sees them."""
        raise NotImplementedError

    def clear(self, root: str) -> None:
        """Delete everything under the root."""
        raise NotImplementedError

    def after_traefik(self, stop) -> None:
        """Stop Traefik (stop()) and wait until the store is done with it."""
        stop()

    def close(self) -> None:
        """Let go of the clients this view opened."""


class EtcdView(StoreView):
    """etcd, read with etcdctl."""

    name, provider = "etcd", "etcd"

    def env(self, folder: Path) -> dict[str, str]:
        return {"ETCD_HOST": self.server.endpoint}

    def values(self, root: str) -> dict[str, str]:
        return self.server.values(root + "/")

    def clear(self, root: str) -> None:
        self.server.etcdctl("del", "--prefix", root + "/", check=False)


class ClientView(StoreView):
    """A store read with a client of the view's own (the server's client())."""

    def __init__(self, server):
        super().__init__(server)
        self.look = server.client()

    def close(self) -> None:
        self.look.close()


class ZooKeeperView(ClientView):
    """ZooKeeper, read with a kazoo client (a session) of the view's own."""

    name, provider = "zookeeper", "zooKeeper"

    def env(self, folder: Path) -> dict[str, str]:
        return {"DOCKER_REGISTER_BACKEND": "zookeeper", "ZOOKEEPER_HOSTS": self.server.endpoint,
                "ZOOKEEPER_STATE": str(folder / "zookeeper.session")}

    def values(self, root: str) -> dict[str, str]:
        """Nodes holding a value (not a folder's) or belonging to a session (a folder left empty is no key)."""
        from docker_register import ZOOKEEPER_FOLDER

        folder = ZOOKEEPER_FOLDER.decode()
        return {path[1:]: data for path, (data, owner) in zookeeper_nodes(self.look, "/" + root).items()
                if data not in ("", folder) or owner}

    def clear(self, root: str) -> None:
        self.look.delete("/" + root, recursive=True)

    def after_traefik(self, stop) -> None:
        # Traefik leaves its session to expire (a write, a few seconds later): wait for it, so that it does not
        # land in what a later user of the server compares (test_zookeeper's Zxid checks).
        zxid = self.server.zxid()
        stop()
        wait_until(lambda: self.server.zxid() > zxid, 15, "traefik's ZooKeeper session to expire")

    def close(self) -> None:
        self.look.stop()
        super().close()


class RedisView(ClientView):
    """Redis, read with a redis-py client of the view's own."""

    name, provider = "redis", "redis"

    def env(self, folder: Path) -> dict[str, str]:
        return {"DOCKER_REGISTER_BACKEND": "redis", "REDIS_URL": self.server.url}

    def values(self, root: str) -> dict[str, str]:
        keys = sorted(self.look.scan_iter(match=root + "/*", count=1000))
        return {key: value for key, value in zip(keys, self.look.mget(keys) if keys else []) if value is not None}

    def clear(self, root: str) -> None:
        keys = list(self.look.scan_iter(match=root + "/*", count=1000))
        if keys:
            self.look.delete(*keys)


VIEWS = {view.name: view for view in (EtcdView, ZooKeeperView, RedisView)}


def store_view(name: str, server) -> StoreView:
    """The view of a started server of that store (harness.Etcd, ZooKeeper or Redis)."""
    return VIEWS[name](server)


# ---------------------------------------------------------------------------
# Hosts, containers and the client
# ---------------------------------------------------------------------------


class Host:
    """One host: its engine, its address (the engine's bridge), a folder of its own (lock file, ZooKeeper session,
    the watch's log) and its docker-register watch, run with the command cli."""

    def __init__(self, name: str, engine: Dockerd, store: StoreView, root: str, folder: Path, cli: list[str]):
        self.name, self.engine, self.store, self.root, self.cli = name, engine, store, root, cli
        self.ip = engine.subnet.split("/")[0]
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "watch.log"
        self.watch: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """The environment of this host's runs: its engine, address, files and store; the traefik layout."""
        return clean_env(DOCKER_HOST=self.engine.host, HOST_IP=self.ip, DOCKER_REGISTER_PREFIX=self.root,
                         DOCKER_REGISTER_LAYOUT="traefik", DOCKER_REGISTER_TTL=str(TTL), DOCKER_REGISTER_TIMEOUT="3",
                         DOCKER_REGISTER_LOCK=str(self.folder / "sync.lock"), **self.store.env(self.folder))

    def start_watch(self) -> None:
        """Start `sync --every --events` in the background (a session of its own, output to its log)."""
        with open(self.log, "ab") as out:
            out.write(f"--- watch started {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            self.watch = subprocess.Popen(
                [*self.cli, "sync", "--every", str(EVERY), "--events", "--ttl", str(TTL), "--layout", "traefik"],
                env=self.env(), stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True, cwd="/")

    def stop_watch(self, sig=signal.SIGTERM) -> None:
        """Stop the watch with this signal and reap it."""
        if self.watch:
            stop_process(self.watch, sig)

    def check_watch(self) -> None:
        """Fail at once, pointing at its output, when the watch exited."""
        if self.watch and self.watch.poll() is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-5:]
            raise RuntimeError(f"host {self.name}'s watch exited {self.watch.returncode}: {' | '.join(tail)}")

    def purge(self) -> subprocess.CompletedProcess:
        """`docker-register purge` for this host (its TTL in the environment, as a unit file would set it)."""
        result = subprocess.run([*self.cli, "purge", "--layout", "traefik"], env=self.env(), capture_output=True,
                                text=True, timeout=60, stdin=subprocess.DEVNULL, cwd="/")
        if result.returncode != 0:
            raise RuntimeError(f"purge of host {self.name} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def start_web(self, *labels: str) -> tuple[str, str]:
        """A self-naming web container: its short id (its page) and its server url at this host's address."""
        cid = start_web(self.engine, *labels)
        return cid, published_url(self.engine, cid, self.ip)


@dataclass
class Answer:
    """One request: when it was sent, its status (None: no answer) and what answered (a container id, or why not)."""

    sent: float
    status: int | None
    outcome: str

    @property
    def failed(self) -> bool:
        """Anything but a 200: a 404, a 5xx, no answer."""
        return self.status != 200


class Client(Background):
    """Sends GET / for web.example through Traefik every PAUSE seconds, one connection each, until stopped or
    out of its bounds, and keeps every answer."""

    def __init__(self, traefik: Traefik):
        self.traefik = traefik
        self.answers: list[Answer] = []
        super().__init__("client")

    def _run(self) -> None:
        begun = time.monotonic()
        while (not self._stop.is_set() and len(self.answers) < MAX_REQUESTS
               and time.monotonic() - begun < MAX_SECONDS):
            sent = time.time()
            try:
                status, body = self.traefik.get(WEB_HOST, timeout=TIMEOUT)
                self.answers.append(Answer(sent, status, body.strip() if status == 200 else f"HTTP {status}"))
            except OSError as error:
                self.answers.append(Answer(sent, None, f"connection error ({type(error).__name__})"))
            self._stop.wait(max(0.0, PAUSE - (time.time() - sent)))

    def between(self, start: float, end: float) -> list[Answer]:
        """The requests sent from start to end (time.time())."""
        return [answer for answer in list(self.answers) if start <= answer.sent <= end]

    def wait_sent(self, moment: float, timeout: float) -> None:
        """Wait until the client has sent a request at or after moment."""
        wait_until(lambda: self.answers and self.answers[-1].sent >= moment, timeout,
                   "the client to go on sending", interval=PAUSE)


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass
class Phase:
    """The requests sent from a phase's first step (began, time.time()) until its end."""

    name: str
    began: float
    ended: float = 0.0
    answers: list[Answer] = field(default_factory=list)

    def end(self, client: Client) -> None:
        """End the phase now, with the requests the client sent since it began."""
        self.ended = time.time()
        self.answers = client.between(self.began, self.ended)

    @property
    def failures(self) -> list[Answer]:
        return [answer for answer in self.answers if answer.failed]

    def window(self) -> str:
        """First to last failed request, in seconds after the phase began; '-' when none failed."""
        failed = self.failures
        if not failed:
            return "-"
        return f"{failed[0].sent - self.began:.2f}–{failed[-1].sent - self.began:.2f} s"

    def outcomes(self) -> Counter:
        """What answered, counted: container ids, 'HTTP nnn', connection errors."""
        return Counter(answer.outcome for answer in self.answers)

    def statuses(self) -> str:
        """Status codes counted, e.g. '200: 58, 404: 15' (error: no answer)."""
        counts = Counter("error" if a.status is None else str(a.status) for a in self.answers)
        return ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())) or "-"


@dataclass
class FailoverResult:
    """One run of the scenario on one store."""

    store: str
    web_a: str = ""
    web_b: str = ""
    phases: dict[str, Phase] = field(default_factory=dict)
    #: Seconds after A's SIGKILL until Traefik no longer listed A's server, and solo's router keys were gone
    #: from the store (None: not within the phase's deadline).
    server_gone: float | None = None
    solo_gone: float | None = None
    #: Seconds after B's purge of the last request B's container answered (None: none after the purge).
    last_b: float | None = None
    #: What answered in phase 3 once B's container had stopped answering (or from the purge on).
    after_b: Counter = field(default_factory=Counter)
    #: The keys left under the root at the end of phase 3.
    left: list[str] = field(default_factory=list)
    #: Failed requests outside the phases (setting up, handing the router back to A).
    setup_failures: int = 0

    def summary(self) -> str:
        """The figures in one line, for an assertion message."""
        parts = [f"{p.name}: {len(p.failures)} failed of {len(p.answers)} ({p.window()}; {p.statuses()})"
                 for p in self.phases.values() if p.name != "last"]
        parts += [f"last: {p.statuses()}" for p in self.phases.values() if p.name == "last"]
        return (f"{self.store}: " + "; ".join(parts) + f"; A's server gone after {seconds(self.server_gone)}, solo's "
                f"router keys after {seconds(self.solo_gone)}; B's last answer {seconds(self.last_b)} after its "
                f"purge, then {dict(self.after_b)}; left under the root: {self.left}")


def seconds(value: float | None) -> str:
    """A duration in seconds, or never."""
    return "never" if value is None else f"{value:.2f} s"


# ---------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------


def run_scenario(store: StoreView, engine_a: Dockerd, engine_b: Dockerd, folder: Path, root: str,
                 cli: list[str]) -> FailoverResult:
    """Run the three phases on one store, under a root key of the run's own; the hosts' files and Traefik's go
    under folder.  Both engines' containers and the root's keys are removed at the end."""
    a = Host("A", engine_a, store, root, folder / "a", cli)
    b = Host("B", engine_b, store, root, folder / "b", cli)
    traefik = Traefik(folder / "traefik", [store.server.endpoint], root_key=root, throttle=THROTTLE,
                      provider=store.provider)
    result = FailoverResult(store.name)
    try:
        result.web_a, url_a = a.start_web(*WEB_LABELS)
        solo, _ = a.start_web(*SOLO_LABELS)
        result.web_b, url_b = b.start_web(*WEB_LABELS)
        a.start_watch()
        wait_for(a, lambda: router_keys(store, root, "web") and router_keys(store, root, "solo"), 20,
                 "host A to write the web and solo routers")
        # Only now: Traefik's watch backs off for seconds while its root is empty.
        traefik.start()
        b.start_watch()
        wait_servers(traefik, (a, b), {url_a, url_b})
        with Client(traefik) as client:
            wait_until(lambda: {result.web_a, result.web_b} <= {x.outcome for x in client.answers}, 20,
                       "both web containers to answer through traefik", interval=PAUSE)
            result.phases["purge"] = purge_phase(a, b, client, traefik, {url_a, url_b})
            hand_router_to(a, b, traefik, store, root, {url_a, url_b}, url_a)
            result.phases["sigkill"] = sigkill_phase(a, b, client, traefik, store, root, url_a, result)
            result.phases["last"] = last_phase(b, client, result)
            in_phases = {id(x) for phase in result.phases.values() for x in phase.answers}
            result.setup_failures = sum(1 for x in client.answers if x.failed and id(x) not in in_phases)
    finally:
        for host in (a, b):
            host.stop_watch(signal.SIGKILL)
            host.engine.remove_all_containers()
        for host in (a, b):
            try:
                host.purge()
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                log(f"  cleanup: {error}")
        store.after_traefik(traefik.stop)
        store.clear(root)
    return result


def router_keys(store: StoreView, root: str, router: str) -> dict[str, str]:
    """The keys of a router in the store."""
    folder = f"{root}/http/routers/{router}/"
    return {key: value for key, value in store.values(root).items() if key.startswith(folder)}


def wait_for(host: Host, check, timeout: float, what: str):
    """wait_until, failing at once if the host's watch died."""
    def alive_check():
        host.check_watch()
        return check()
    return wait_until(alive_check, timeout, what)


def wait_servers(traefik: Traefik, hosts: tuple[Host, ...], expected: set[str], timeout: float = 20) -> None:
    """Wait until Traefik runs exactly these web servers (the hosts' watches alive meanwhile)."""
    def listed():
        for host in hosts:
            host.check_watch()
        return traefik.servers("web") == expected
    try:
        traefik.wait_for(listed, timeout, f"traefik to run web with servers {sorted(expected)}")
    except TimeoutError as error:
        raise TimeoutError(f"{error}; it runs {sorted(traefik.servers('web'))}") from None


def leave(host: Host, client: Client, watch: float) -> float:
    """The host's watch stops (SIGTERM) and the host purges; then the client goes on for watch seconds. When the
    purge ended (time.time())."""
    host.stop_watch(signal.SIGTERM)
    host.purge()
    purged = time.time()
    client.wait_sent(purged + watch, watch + 10)
    return purged


def purge_phase(a: Host, b: Host, client: Client, traefik: Traefik, both: set[str]) -> Phase:
    """Phase 1: A's watch stops and A purges; then A's watch starts again."""
    log(f"  phase 1: SIGTERM to host A's watch, purge with DOCKER_REGISTER_TTL={TTL}")
    phase = Phase("purge", time.time())
    leave(a, client, SETTLE)
    phase.end(client)
    a.start_watch()
    wait_servers(traefik, (a, b), both)
    return phase


def hand_router_to(a: Host, b: Host, traefik: Traefik, store: StoreView, root: str, both: set[str],
                   url_a: str) -> None:
    """Setup of phase 2: B leaves (SIGTERM, purge) and comes back, so that A writes the router keys again, as at
    the start (whatever host the store had them from after phase 1)."""
    log("  between phases: host B leaves and comes back, so that A holds the router again")
    b.stop_watch(signal.SIGTERM)
    b.purge()
    wait_servers(traefik, (a,), {url_a})
    wait_for(a, lambda: router_keys(store, root, "web"), 20, "host A to hold the web router")
    b.start_watch()
    wait_servers(traefik, (a, b), both)
    wait_for(a, lambda: router_keys(store, root, "solo"), 20, "host A to hold the solo router")


def sigkill_phase(a: Host, b: Host, client: Client, traefik: Traefik, store: StoreView, root: str, url_a: str,
                  result: FailoverResult) -> Phase:
    """Phase 2: A's watch is killed; A's server should leave Traefik and solo's router the store."""
    log("  phase 2: SIGKILL to host A's watch")
    phase = Phase("sigkill", time.time())
    a.stop_watch(signal.SIGKILL)
    killed = phase.began

    def both_gone():
        b.check_watch()
        now = time.time() - killed
        if result.server_gone is None and url_a not in traefik.servers("web"):
            result.server_gone = now
        if result.solo_gone is None and not router_keys(store, root, "solo"):
            result.solo_gone = now
        return result.server_gone is not None and result.solo_gone is not None
    try:
        wait_until(both_gone, 3 * TTL + 5, "A's server to leave traefik and solo's router the store", interval=0.05)
    except TimeoutError:
        pass  # recorded as never
    observe = killed + TTL + 2 * EVERY + parse_seconds(THROTTLE) + SETTLE
    client.wait_sent(observe, observe - time.time() + 10)
    phase.end(client)
    return phase


def last_phase(b: Host, client: Client, result: FailoverResult) -> Phase:
    """Phase 3: B, the last host serving web, stops its watch and purges."""
    log("  phase 3: SIGTERM to host B's watch, purge: nobody serves web any more")
    phase = Phase("last", time.time())
    purged = leave(b, client, LAST_WATCH)
    phase.end(client)
    from_b = [x for x in phase.answers if x.outcome == result.web_b and x.sent >= purged]
    result.last_b = from_b[-1].sent - purged if from_b else None
    quiet_from = from_b[-1].sent if from_b else purged
    result.after_b = Counter(x.outcome for x in phase.answers if x.sent > quiet_from)
    result.left = sorted(key.removeprefix(b.root + "/") for key in b.store.values(b.root))
    return phase


def parse_seconds(duration: str) -> float:
    """Seconds of a Go duration such as 200ms or 2s."""
    return float(duration[:-2]) / 1000 if duration.endswith("ms") else float(duration.rstrip("s"))


# ---------------------------------------------------------------------------
# The benchmark: servers, runs, report
# ---------------------------------------------------------------------------


def cli_command(module: str | None) -> list[str]:
    """The CLI to run: the installed console script, or `python MODULE`."""
    return [sys.executable, str(Path(module).resolve())] if module else [BINARY]


def run(args: argparse.Namespace, root: Path) -> int:
    """Start two engines and the three stores, run the scenario on the stores chosen, print a table per store.
    1 when a target was missed."""
    cli = cli_command(args.module)
    stores = STORES if args.backend == "all" else (args.backend,)
    pid = os.getpid()
    engine_b = Dockerd(root / "docker-b", bridge=f"drf{pid % 100000}",
                       subnet=free_subnet("10.215", pid, f"drf{pid % 100000}"))
    results: dict[str, list[FailoverResult]] = {}
    with servers(root) as (engine_a, etcd), backend_servers(root) as (zookeeper, redis):
        try:
            log(f"starting a second dockerd ({engine_b.host})")
            engine_b.start()
            engine_b.build_images()
            for name in stores:
                view = store_view(name, {"etcd": etcd, "zookeeper": zookeeper, "redis": redis}[name])
                try:
                    for repeat in range(args.repeats):
                        log(f"failover on {name}, run {repeat + 1} of {args.repeats}")
                        results.setdefault(name, []).append(run_scenario(
                            view, engine_a, engine_b, root / f"{name}{repeat}", f"bench-failover-{name}{repeat}", cli))
                finally:
                    view.close()
        finally:
            log("stopping the second dockerd")
            engine_b.stop()
    print(f"Failover through Traefik ({THROTTLE} throttle): hosts A and B each run `sync --every {EVERY} --events "
          f"--ttl {TTL} --layout traefik`")
    print(f"with the CLI {' '.join(cli)}.  A client sends GET / for Host {WEB_HOST} through Traefik on 127.0.0.1 "
          f"every {PAUSE * 1000:.0f} ms,")
    print(f"one connection each, {TIMEOUT:g} s timeout; failed = not a 200.  Windows: first–last failed request, "
          "seconds after the phase's first step.")
    targets = []
    for name, runs in results.items():
        print()
        print(f"## {name}")
        print_table(["", *(f"run {i + 1}" for i in range(len(runs))), "target"], result_rows(runs))
        targets += [line for r in runs for line in target_lines(r)]
    return 1 if print_targets(targets) else 0


def result_rows(runs: list[FailoverResult]) -> list[tuple[str, list[str], str]]:
    """A column per run."""
    def cells(f):
        return [f(r) for r in runs]
    return [
        ("1 purge: FAILED requests", cells(lambda r: f"{len(r.phases['purge'].failures)} of "
                                                     f"{len(r.phases['purge'].answers)}"), "0"),
        ("  404/5xx window after A's SIGTERM", cells(lambda r: r.phases["purge"].window()), ""),
        ("  statuses", cells(lambda r: r.phases["purge"].statuses()), ""),
        ("2 SIGKILL: FAILED requests", cells(lambda r: f"{len(r.phases['sigkill'].failures)} of "
                                                       f"{len(r.phases['sigkill'].answers)}"), "0"),
        ("  404/5xx window after the SIGKILL", cells(lambda r: r.phases["sigkill"].window()), ""),
        ("  statuses", cells(lambda r: r.phases["sigkill"].statuses()), ""),
        ("  A's server gone from Traefik after", cells(lambda r: seconds(r.server_gone)),
         f"<= {SERVER_GONE_WITHIN:g} s"),
        ("  solo's router keys gone after", cells(lambda r: seconds(r.solo_gone)), f"<= {SOLO_GONE_WITHIN:g} s"),
        ("3 last host purges: B's last answer after purge", cells(last_answer),
         f"<= {LAST_QUIET_WITHIN:g} s"),
        ("  Traefik answers instead", cells(lambda r: ", ".join(f"{k}: {n}" for k, n in r.after_b.items()) or "-"),
         ""),
        ("  keys left under the root", cells(lambda r: ", ".join(r.left) or "none"), ""),
        ("failed requests while setting up", cells(lambda r: str(r.setup_failures)), ""),
    ]


def last_answer(r: FailoverResult) -> str:
    """When B's container last answered after its purge: never, or still at the end of phase 3's watch."""
    if r.last_b is not None and r.last_b > LAST_WATCH - 0.5:
        return f"still at {LAST_WATCH:g} s"
    return seconds(r.last_b)


def target_lines(r: FailoverResult) -> list[str]:
    """PASS/FAIL per target of one run."""
    def line(ok: bool, text: str) -> str:
        return f"{r.store:9} {'PASS' if ok else 'FAIL'} {text}"
    purge, sigkill = len(r.phases["purge"].failures), len(r.phases["sigkill"].failures)
    return [
        line(purge == 0, f"purge of the writer: 0 failed requests ({purge})"),
        line(sigkill == 0, f"SIGKILL of the writer: 0 failed requests ({sigkill})"),
        line(r.server_gone is not None and r.server_gone <= SERVER_GONE_WITHIN,
             f"A's server gone from Traefik within {SERVER_GONE_WITHIN:g} s ({seconds(r.server_gone)})"),
        line(r.solo_gone is not None and r.solo_gone <= SOLO_GONE_WITHIN,
             f"solo's router keys gone within {SOLO_GONE_WITHIN:g} s ({seconds(r.solo_gone)})"),
        line(r.last_b is None or r.last_b <= LAST_QUIET_WITHIN,
             f"no answer from B's container {LAST_QUIET_WITHIN:g} s after its purge (last: {last_answer(r)})"),
    ]
