"""`sync --every N --events`: Docker events read into pass triggers and drains, on in-memory adapters (part 1)
and against a real dockerd and etcd with the CLI running as a real process (part 2)."""

from __future__ import annotations

import collections
import functools
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

import docker_register as dr
from fakes import PREFIX, FakeClock, FakeDocker, FakeEtcd, config, web, web_key
from harness import Dockerd, free_port, require, stop_process, wait_until
from hosts import SLOW_STOP, event_requests, inspect, watching, web_key_of

CID = "7fe91677e659f6ee6808a10f73f1459016a7857fb39346bb4b7b2e69551f8643"
NETWORK_ID = "2aca2ddac30e0d47d0237d750a93ad3b88479b56bf6ae3077b485045f7793b08"


# === Part 1: no servers ======================================================================

# --- /events messages, shaped as dockerd 20.10 sends them (captured with `docker events --format '{{json .}}'`)


def container_event(action: str, cid: str = CID, **attributes: str) -> dict:
    """One container message of GET /events."""
    return {"status": action, "id": cid, "from": "local/web", "Type": "container", "Action": action,
            "Actor": {"ID": cid, "Attributes": {"image": "local/web", "name": "laughing_dewdney", **attributes}},
            "scope": "local", "time": 1795643257, "timeNano": 1795643257479472644}


def network_event(action: str, cid: str = CID) -> dict:
    """One network message of GET /events: no status, id or from; the container is an attribute."""
    return {"Type": "network", "Action": action,
            "Actor": {"ID": NETWORK_ID, "Attributes": {"container": cid, "name": "bridge", "type": "bridge"}},
            "scope": "local", "time": 1795643254, "timeNano": 1795643254450023195}


EXEC = {"execID": "2e058a77307c9ed7731d1137b76d8514949ef73ef2d63c552bae08e7b51a40f3"}


@pytest.mark.parametrize("event, effect", [
    (container_event("start"), dr.EventEffect.UNDRAIN),
    (container_event("die", exitCode="137"), dr.EventEffect.PASS),
    (container_event("kill", signal="15"), dr.EventEffect.DRAIN),  # docker stop, at its start
    (container_event("kill", signal="9"), dr.EventEffect.DRAIN),  # docker rm -f, or the end of the grace period
    (container_event("kill", signal="3"), dr.EventEffect.DRAIN),  # an image whose STOPSIGNAL is SIGQUIT
    (container_event("kill", signal="1"), dr.EventEffect.PASS),  # docker kill -s HUP: a reload, not a stop
    (container_event("kill", signal="10"), dr.EventEffect.PASS),  # SIGUSR1
    (container_event("stop"), dr.EventEffect.PASS),
    (container_event("pause"), dr.EventEffect.PASS),
    (container_event("unpause"), dr.EventEffect.PASS),
    (container_event("destroy"), dr.EventEffect.PASS),
    (container_event("health_status: healthy"), dr.EventEffect.PASS),
    (container_event("health_status: unhealthy"), dr.EventEffect.PASS),
    (container_event("create"), dr.EventEffect.NONE),
    (container_event("exec_create: /bin/sh -c true", **EXEC), dr.EventEffect.NONE),
    (container_event("exec_start: /bin/sh -c true", **EXEC), dr.EventEffect.NONE),
    (container_event("exec_die", exitCode="0", **EXEC), dr.EventEffect.NONE),
    (network_event("connect"), dr.EventEffect.NONE),
    (network_event("disconnect"), dr.EventEffect.NONE),
], ids=lambda value: value.value if isinstance(value, dr.EventEffect) else None)
def test_event_effect_of_each_docker_message(event, effect):
    expected_id = NETWORK_ID if event["Type"] == "network" else CID
    assert dr.event_effect(event) == (effect, expected_id)


def test_event_effect_reads_the_action_from_status_when_action_is_missing():
    event = container_event("kill", signal="15")
    del event["Action"], event["Actor"]
    event["Actor"] = {"ID": CID, "Attributes": {"signal": "15"}}
    assert dr.event_effect(event) == (dr.EventEffect.DRAIN, CID)
    assert dr.event_effect({"status": "start", "id": CID}) == (dr.EventEffect.UNDRAIN, CID)


def test_a_message_without_a_container_id_has_no_effect():
    event = container_event("start")
    event["Actor"]["ID"] = ""
    event["id"] = ""
    assert dr.event_effect(event)[0] is dr.EventEffect.NONE


# --- Triggers ----------------------------------------------------------------------------------


def test_a_drain_is_kept_and_wakes_the_loop():
    triggers = dr.Triggers()
    triggers.note(*dr.event_effect(container_event("kill", signal="15")))
    assert triggers.draining() == {CID}
    assert triggers.wake.is_set()


def test_a_start_ends_the_drain_and_wakes_the_loop():
    triggers = dr.Triggers()
    triggers.note(dr.EventEffect.DRAIN, CID)
    triggers.wake.clear()
    triggers.note(*dr.event_effect(container_event("start")))
    assert triggers.draining() == frozenset()
    assert triggers.wake.is_set()


def test_a_pass_event_wakes_without_draining_and_a_none_event_does_nothing():
    triggers = dr.Triggers()
    triggers.note(*dr.event_effect(container_event("exec_die", exitCode="0", **EXEC)))
    assert not triggers.wake.is_set()
    triggers.note(*dr.event_effect(container_event("kill", signal="1")))
    assert triggers.wake.is_set() and triggers.draining() == frozenset()


def test_forget_gone_forgets_only_containers_drained_before_the_list_and_not_running():
    clock = FakeClock()
    triggers = dr.Triggers(clock)
    other = "b" * 64
    before_drain = clock.now
    clock.sleep(0.1)
    triggers.note(dr.EventEffect.DRAIN, CID)
    triggers.note(dr.EventEffect.DRAIN, other)
    clock.sleep(0.1)
    after_drain = clock.now

    triggers.forget_gone(frozenset(), before_drain)  # a list taken before the stops began proves nothing
    assert triggers.draining() == {CID, other}
    triggers.forget_gone(frozenset({CID, other}), after_drain)  # both still running: both stay drained
    assert triggers.draining() == {CID, other}
    triggers.forget_gone(frozenset({other}), after_drain)  # CID has gone
    assert triggers.draining() == {other}


def test_a_drained_container_that_starts_again_before_forget_gone_is_not_drained():
    clock = FakeClock()
    triggers = dr.Triggers(clock)
    triggers.note(dr.EventEffect.DRAIN, CID)
    triggers.note(dr.EventEffect.UNDRAIN, CID)
    clock.sleep(0.1)
    triggers.forget_gone(frozenset({CID}), clock.now)
    assert triggers.draining() == frozenset()


# --- follow_events ------------------------------------------------------------------------------


class FakeEngine:
    """Docker's event stream on a FakeClock: while the engine is down, opening the stream fails; while it is up, the
    stream yields what `emit` queued and, when idle, lets the clock run (a real stream blocks); the engine going
    down breaks it. A callable queued among the messages is run when the stream reaches it: what happens (or what
    the test looks at) between two messages.

    `open_source()` is follow_events' open_source: each call is one new source (one connection), timed.
    Like DockerSource.events, `events()` connects when called (a refused connection raises then) and returns
    the stream of messages.
    """

    #: How long an idle stream lets the clock run before it looks at its queue again.
    IDLE_SECONDS = 0.05

    def __init__(self, clock: FakeClock, up: bool = True):
        self.clock = clock
        self.up = up
        self.queue: collections.deque = collections.deque()
        self.opened: list[float] = []  # when each source was made
        self.connected: list[float] = []  # when each stream was really established
        self.closed = 0

    def emit(self, *items) -> None:
        self.queue.extend(items)

    def go_down(self) -> None:
        self.up = False

    def come_back(self) -> None:
        self.up = True

    def open_source(self) -> "FakeEngine._Source":
        self.opened.append(self.clock.now)
        return FakeEngine._Source(self)

    class _Source:
        where = "docker at fake"

        def __init__(self, engine: "FakeEngine"):
            self.engine = engine

        def events(self):
            engine = self.engine
            if not engine.up:
                raise dr.DockerError("docker at fake: event stream (GET /events): Connection refused")
            engine.connected.append(engine.clock.now)
            return self._messages()

        def _messages(self):
            engine = self.engine
            while True:
                if not engine.up:
                    raise dr.DockerError("docker at fake: event stream (GET /events): the engine ended it")
                if not engine.queue:
                    engine.clock.sleep(engine.IDLE_SECONDS)
                elif callable(engine.queue[0]):
                    engine.queue.popleft()()
                else:
                    yield engine.queue.popleft()

        def close(self) -> None:
            self.engine.closed += 1


class Said:
    """follow_events' say(): the lines it printed, with when."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.lines: list[tuple[float, str]] = []

    def __call__(self, text: str) -> None:
        self.lines.append((self.clock.now, text))

    def texts(self) -> list[str]:
        return [text for _, text in self.lines]

    def broke(self) -> list[str]:
        return [text for text in self.texts() if "reconnecting" in text]

    def back(self) -> list[str]:
        return [text for text in self.texts() if "is back" in text]


def following(up: bool = True):
    """A fake clock, engine, triggers, stop event and say() for follow_events."""
    clock = FakeClock()
    return clock, FakeEngine(clock, up), dr.Triggers(clock), threading.Event(), Said(clock)


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times, times[1:])]


def test_follow_events_turns_each_message_into_a_trigger():
    clock, engine, triggers, stop, said = following()
    seen = {}
    engine.emit(container_event("exec_die", exitCode="0", **EXEC), network_event("connect"),
                lambda: seen.update(others_woke=triggers.wake.is_set()),
                container_event("kill", signal="15"),
                lambda: seen.update(kill=(triggers.wake.is_set(), triggers.draining())),
                container_event("start"),
                lambda: seen.update(start=triggers.draining()),
                stop.set, container_event("die"))  # the stream is idle otherwise: the next message lets it see stop
    dr.follow_events(engine.open_source, triggers, stop, said, clock)
    assert seen == {"others_woke": False, "kill": (True, {CID}), "start": frozenset()}
    assert said.texts() == []
    assert len(engine.opened) == 1 and engine.closed == 1


def test_a_broken_stream_is_said_once_and_its_return_once_with_a_wake():
    clock, engine, triggers, stop, said = following()
    start, seen = clock.now, {}

    def docker_is_back():
        seen["before"] = (triggers.wake.is_set(), said.texts(), len(engine.opened))
        engine.come_back()
        engine.emit(lambda: seen.update(back=(triggers.wake.is_set(), len(engine.connected), said.back())),
                    container_event("kill", signal="15"), lambda: seen.update(drained=triggers.draining()),
                    stop.set, container_event("die"))

    engine.emit(engine.go_down)  # Docker restarts: the stream breaks, and reconnecting fails for a while
    clock.at(start + 2.2, docker_is_back)
    dr.follow_events(engine.open_source, triggers, stop, said, clock)

    broke = ("docker at fake: event stream (GET /events): the engine ended it; passes go on every interval, "
             "reconnecting")
    assert seen["before"] == (False, [broke], 3), "no wake while the stream is down; the break said once"
    assert gaps(engine.opened) == pytest.approx([0.5, 1.0, 2.0])  # refused at +0.5 and +1.5, back at +3.5
    assert seen["back"] == (True, 2, ["docker events: stream is back"]), "the reconnect wakes a pass"
    assert seen["drained"] == {CID}, "events flow again"
    assert said.texts() == [broke, "docker events: stream is back"]
    assert engine.closed == len(engine.opened)


def test_reconnect_attempts_back_off_doubling_up_to_the_cap():
    clock, engine, triggers, stop, said = following(up=False)
    clock.after(150, stop.set)
    dr.follow_events(engine.open_source, triggers, stop, said, clock)
    assert gaps(engine.opened) == pytest.approx([0.5, 1, 2, 4, 8, 16, dr.MAX_EVENTS_BACKOFF, dr.MAX_EVENTS_BACKOFF,
                                                 dr.MAX_EVENTS_BACKOFF])
    assert len(said.broke()) == 1 and said.back() == [], said.texts()
    assert not triggers.wake.is_set()


def test_stop_ends_follow_events_promptly_while_it_backs_off():
    clock, engine, triggers, stop, said = following(up=False)
    clock.at(clock.now + 2.0, stop.set)  # attempts at +0, +0.5 and +1.5, which then waits 2 s
    dr.follow_events(engine.open_source, triggers, stop, said, clock)
    assert clock.now == 1002.0  # it waited on the stop event, not the whole backoff
    assert len(engine.opened) == 3 and engine.closed == 3


# --- follow_stops: engines whose stops begin without an event (Podman) ---------------------------

PODMAN = "Libpod/4.3.1 (linux)"  # the Server header of Podman 4.3's GET /_ping


@pytest.mark.parametrize("engine, announces", [
    ("Docker/20.10.24+dfsg1 (linux)", True), ("Docker/29.0.0 (linux)", True), ("", True),
    (PODMAN, False), ("Podman Engine", False),
])
def test_only_podman_is_an_engine_whose_stops_begin_without_an_event(engine, announces):
    assert dr.announces_stops(engine) is announces


def test_stopping_of_takes_the_containers_podman_lists_as_stopping():
    listed = [{**web(1), "State": "stopping", "Status": "Stopping"}, web(2),
              {**web(3), "State": "exited", "Status": "Exited (0) 2 seconds ago"}, {"State": "stopping"}]
    assert dr.stopping_of(listed) == {web(1)["Id"]}


def test_stop_effects_drain_each_container_new_to_the_stopping_list_once():
    other = "b" * 64
    assert dr.stop_effects(frozenset(), frozenset({CID})) == [(dr.EventEffect.DRAIN, CID)]
    assert dr.stop_effects(frozenset({CID}), frozenset({CID, other})) == [(dr.EventEffect.DRAIN, other)]
    assert dr.stop_effects(frozenset({CID}), frozenset({CID})) == []  # still stopping: drained already
    assert dr.stop_effects(frozenset({CID}), frozenset()) == []  # gone: its die event runs the pass


def test_on_docker_follow_stops_asks_the_engine_once_and_lists_nothing():
    docker, clock, stop = FakeDocker([web(1, public=32769)]), FakeClock(), threading.Event()
    triggers = dr.Triggers(clock)
    dr.follow_stops(lambda: docker, triggers, stop, clock=clock)
    assert docker.calls == 0 and not triggers.wake.is_set() and clock.waits == []


def test_on_podman_a_stopping_container_drains_once_even_after_a_failed_list():
    docker = FakeDocker([web(1, public=32769), web(2, public=32770)], engine=PODMAN)
    clock, stop, seen = FakeClock(), threading.Event(), {}
    triggers = dr.Triggers(clock)
    period, start = dr.STOP_POLL_SECONDS, clock.now

    def engine_unreachable_while_a_stop_begins():  # after two lists, for two periods
        seen["before"] = (docker.calls, triggers.wake.is_set())
        docker.fail_next(2)
        docker.containers[0]["State"] = "stopping"

    def the_pass_after_the_drain():  # after the failed lists and the one that saw the stop
        seen["drained"] = (docker.calls, triggers.draining(), triggers.wake.is_set())
        triggers.forget_gone(frozenset({web(2)["Id"]}), clock.now)
        triggers.wake.clear()

    clock.at(start + 1.5 * period, engine_unreachable_while_a_stop_begins)
    clock.at(start + 4.5 * period, the_pass_after_the_drain)
    clock.at(start + 7.5 * period, stop.set)
    dr.follow_stops(lambda: docker, triggers, stop, clock=clock)

    assert seen["before"] == (2, False)
    assert seen["drained"] == (5, {web(1)["Id"]}, True)
    assert docker.calls == 8 and not triggers.wake.is_set() and triggers.draining() == frozenset(), "one drain per stop"


# --- sync_every with triggers ------------------------------------------------------------------


class EveryLoop:
    """sync_every with triggers over the fakes on a fake clock. run(*steps): after pass n, steps[n - 1] runs (what
    happens meanwhile, and what the test looks at then); the pass after the last step sets stop."""

    def __init__(self, tmp_path, docker: FakeDocker, store: FakeEtcd, interval: float = 60):
        self.config, self.docker, self.store, self.interval = config(tmp_path, ttl=90), docker, store, interval
        self.clock, self.stop = FakeClock(), threading.Event()
        self.triggers = dr.Triggers(self.clock)
        self.outcomes: list[dr.Outcome] = []
        self.times: list[float] = []  # when each pass was reported
        self.steps: tuple = ()

    def run(self, *steps) -> None:
        self.steps = steps
        assert dr.sync_every(self.config, lambda: dr.Adapters(self.docker, self.store), self.interval, self.report,
                             self.stop, self.triggers, self.clock, report_failure=dr.report_error) == 0

    def report(self, outcome) -> None:
        self.outcomes.append(outcome)
        self.times.append(self.clock.now)
        if len(self.outcomes) > len(self.steps):
            self.stop.set()
        else:
            self.steps[len(self.outcomes) - 1]()

    def note(self, event: dict) -> None:
        """Docker sends this event (follow_events' part)."""
        self.triggers.note(*dr.event_effect(event))


def test_a_drained_container_leaves_in_the_next_pass_while_still_running_and_comes_back_on_start(tmp_path):
    docker, store = FakeDocker([web(1, public=32769), web(2, public=32770)]), FakeEtcd()
    loop, draining_id, seen = EveryLoop(tmp_path, docker, store), web(1)["Id"], {}

    def first():
        seen[1] = set(store.values())
        loop.note(container_event("kill", cid=draining_id, signal="15"))

    def drained():
        seen[2] = ([c["State"] for c in docker.containers], set(store.values()))
        loop.triggers.note(dr.EventEffect.PASS, web(2)["Id"])  # any other event: the drained one stays out

    def another():
        seen[3] = (web_key(1) in store.values(), loop.triggers.draining())
        docker.stop(draining_id)  # it exits: the die event's pass sees it gone and forgets the drain
        loop.note(container_event("die", cid=draining_id, exitCode="0"))

    def exited():
        seen[4] = loop.triggers.draining()
        docker.containers[0]["State"] = "running"  # docker start
        loop.note(container_event("start", cid=draining_id))

    loop.run(first, drained, another, exited)
    everything = {web_key(1), web_key(2), f"{PREFIX}/web/port"}
    assert seen[1] == everything
    assert seen[2] == (["running", "running"], everything - {web_key(1)})
    assert loop.outcomes[1].plan.count(dr.ChangeKind.REMOVE) == 1
    assert seen[3] == (False, {draining_id})
    assert seen[4] == frozenset()
    assert set(store.values()) == everything
    assert all(gap < 2.0 for gap in gaps(loop.times)), "each event's pass came at once, not at the interval"
    assert docker.calls == 5  # one list call per pass, no inspects
    assert docker.inspects == 0


def test_a_wake_runs_a_pass_long_before_the_interval_and_a_burst_is_one_pass(tmp_path):
    docker, store = FakeDocker([web(1, public=32769)]), FakeEtcd()
    loop, woken = EveryLoop(tmp_path, docker, store, interval=60), []

    def a_burst():
        docker.containers.append(web(2, public=32770))
        woken.append(loop.clock.now)
        for n in range(10):  # a burst of events 20 ms apart, each within the coalescing window of the one before
            loop.clock.after(0.02 * n, functools.partial(loop.triggers.note, dr.EventEffect.PASS, f"{n:064x}"))

    loop.run(a_burst, lambda: None)  # the third pass, which ends the loop, is the interval's
    assert web_key(2) in store.values()
    assert loop.times[1] - woken[0] == pytest.approx(0.18 + dr.COALESCE_SECONDS, abs=0.06), "one pass, once it settled"
    assert loop.times[2] - loop.times[1] == pytest.approx(60), "the burst made one pass"


def test_a_burst_that_goes_on_gets_its_pass_after_the_longest_coalescing_wait(tmp_path):
    docker, store = FakeDocker([web(1, public=32769)]), FakeEtcd()
    loop, woken = EveryLoop(tmp_path, docker, store, interval=60), []

    def an_endless_burst():
        woken.append(loop.clock.now)
        for n in range(100):  # an event every 100 ms for 10 s
            loop.clock.after(0.1 * n, functools.partial(loop.triggers.note, dr.EventEffect.PASS, f"{n:064x}"))

    loop.run(an_endless_burst)
    assert loop.times[1] - woken[0] == pytest.approx(dr.COALESCE_MAX_SECONDS, abs=0.06)


def test_stop_ends_sync_every_promptly_while_it_coalesces_a_burst(tmp_path):
    docker, store = FakeDocker([web(1, public=32769)]), FakeEtcd()
    loop, stopped = EveryLoop(tmp_path, docker, store), []

    def a_wake_then_a_signal():
        loop.triggers.wake.set()
        stopped.append(loop.clock.now + 0.05)
        loop.clock.at(stopped[0], loop.stop.set)  # inside the coalescing wait

    loop.run(a_wake_then_a_signal, lambda: None)
    assert len(loop.outcomes) == 1
    assert loop.clock.now - stopped[0] <= 0.05


# === Part 2: real dockerd and etcd =============================================================

def test_a_container_started_while_watching_is_registered_within_seconds(world):
    with watching(world, every=60) as watch:
        started = time.monotonic()
        cid = world.docker_run("-P", "local/web")
        key = web_key_of(world, cid)
        wait_until(lambda: key in world.keys(), 5, "the new container's key")
        assert time.monotonic() - started < 5  # the next periodic pass is 60 s away
        assert world.keys() == world.expected_keys()
        assert len(watch.passes()) <= 3  # the first pass, the start event's pass (and at most one more)


def test_a_container_with_a_healthcheck_is_registered_once_healthy(world):
    with watching(world, every=60):
        cid = world.docker_run("-P", "--health-cmd", "true", "--health-interval", "1s", "local/web")
        key = web_key_of(world, cid)
        started, early = time.monotonic(), []

        def registered():
            health = inspect(world.engine, cid, "{{.State.Health.Status}}")
            present = key in world.keys()
            if present and health == "starting":
                early.append(health)  # read before the keys: it was registered while still starting
            return present
        wait_until(registered, 8, "the healthy container's key", interval=0.05)
        assert time.monotonic() - started < 8 and early == []
        assert inspect(world.engine, cid, "{{.State.Health.Status}}") == "healthy"


# test_podman has the same scenario on Podman's socket, whose events and states differ (it polls for them).
def test_a_paused_container_leaves_and_comes_back_on_unpause(world):
    with watching(world, every=60):
        cid = world.docker_run("-P", "local/web")
        key = web_key_of(world, cid)
        wait_until(lambda: key in world.keys(), 5, "the key")
        world.engine.docker("pause", cid)
        wait_until(lambda: key not in world.keys(), 5, "the paused container's key to go")
        world.engine.docker("unpause", cid)
        wait_until(lambda: key in world.keys(), 5, "the unpaused container's key to come back")


def test_a_stopping_container_is_drained_while_it_still_runs_and_stays_out_until_it_exits(world):
    with watching(world, every=60):
        cid = world.docker_run("-P", "local/web", *SLOW_STOP)
        key = web_key_of(world, cid)
        wait_until(lambda: key in world.keys(), 5, "the key")
        host_port = world.host_port(cid, "80/tcp")
        stopping = subprocess.Popen([require("docker"), "-H", world.engine.host, "stop", "-t", "20", cid],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            began = time.monotonic()
            drained_while_running = None
            while time.monotonic() - began < 5:
                running_before = inspect(world.engine, cid, "{{.State.Running}}")
                keys = world.keys()
                running_after = inspect(world.engine, cid, "{{.State.Running}}")
                if key not in keys and running_before == running_after == "true":
                    drained_while_running = time.monotonic() - began
                    break
                time.sleep(0.05)
            assert drained_while_running is not None, "the key was not gone while the container still ran"
            assert drained_while_running < 3  # it serves 6 s after SIGTERM
            # It still serves (consumers finish what they sent), yet is out of the registry.
            with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=5) as response:
                assert response.status == 200 and b"hello" in response.read()

            came_back = []
            deadline = time.monotonic() + 20
            while inspect(world.engine, cid, "{{.State.Running}}") == "true" and time.monotonic() < deadline:
                if key in world.keys():
                    came_back.append(time.monotonic() - began)
                time.sleep(0.1)
            assert inspect(world.engine, cid, "{{.State.Running}}") == "false", "the container did not exit"
            assert came_back == [], f"the key came back while the container was stopping: {came_back}"
            assert stopping.wait(20) == 0, stopping.stderr.read()
            assert 5 < time.monotonic() - began  # the 6 s of serving after SIGTERM really happened
            # A pass surely after the exit (another container's start event): the key stays out.
            other = web_key_of(world, world.docker_run("-P", "local/web"))
            wait_until(lambda: other in world.keys(), 5, "the other container's key")
            assert key not in world.keys()
        finally:
            stop_process(stopping)


def start_event_times(engine: Dockerd, ids: list[str], since: float) -> list[float]:
    """When dockerd reported each of these containers started (Unix seconds), from its event log."""
    until = f"{time.time() + 1:.3f}"
    filters = [arg for cid in ids for arg in ("--filter", f"container={cid}")]
    out = engine.docker("events", "--since", f"{since:.3f}", "--until", until, "--filter", "event=start",
                        *filters, "--format", "{{.TimeNano}}").stdout
    return sorted(int(line) / 1e9 for line in out.split())


def test_a_burst_of_twenty_starts_gives_a_few_passes(world):
    with watching(world, every=60) as watch:
        # Created first (creating sends no start event), then all started at once: the burst is the starts.
        ids = [world.engine.docker("create", "-P", "local/web").stdout.strip() for _ in range(20)]
        since, since_unix = time.monotonic(), time.time()
        with ThreadPoolExecutor(max_workers=20) as pool:
            list(pool.map(lambda cid: world.engine.docker("start", cid), ids))
        wanted = {web_key_of(world, cid) for cid in ids}
        wait_until(lambda: wanted <= set(world.keys()), 10, "all twenty keys")
        watch.wait_quiet(dr.COALESCE_MAX_SECONDS + dr.COALESCE_SECONDS, 15)  # a pass the burst still makes has come
        passes = len(watch.passes(since))
        starts = start_event_times(world.engine, ids, since_unix - 1)
        assert len(starts) == 20
        span = starts[-1] - starts[0]
        print(f"20 start events over {span:.2f}s gave {passes} passes")
        assert world.keys() == world.expected_keys()
        # A pass waits COALESCE_SECONDS after the event that woke it, taking along what comes meanwhile: while
        # events keep coming there is at most one pass per window, plus the one an event during a pass makes.
        assert 1 <= passes <= 2 + span / dr.COALESCE_SECONDS, (passes, span)
        assert passes < 20


def test_a_docker_restart_breaks_the_stream_but_not_the_passes_and_events_work_again(world, second_engine):
    engine = second_engine
    with watching(world, engine, every=5, ttl=30) as watch:
        before = engine.docker("run", "-d", "-p", f"{free_port()}:80", "local/web").stdout.strip()
        wait_until(lambda: web_key_of(world, before) in world.keys(), 5, "the first container's key")

        streams = event_requests(engine)
        stop_process(engine.proc)  # dockerd goes down (its containers stop); the stream breaks
        down_since = time.monotonic()
        wait_until(lambda: [line for line in watch.stderr_lines() if "docker-register: error:" in line], 15,
                   "a periodic pass to fail while Docker is down")
        down_lines = list(watch.stderr_lines())
        engine.start()
        up_since = time.monotonic()
        wait_until(lambda: event_requests(engine) > streams, 15, "the event stream to reconnect")

        failed_passes = [line for line in down_lines if "error:" in line]
        assert failed_passes, f"no pass ran while Docker was down: {down_lines}"
        last = watch.wait_passes(1, 10, since=up_since)[-1]  # passes go on once Docker is back
        after = engine.docker("run", "-d", "-p", f"{free_port()}:80", "local/web").stdout.strip()
        wait_until(lambda: web_key_of(world, after) in world.keys(), 4, "the new container's key")
        assert time.monotonic() - last < 4.5, "registered by an event, not the next periodic pass"
        wait_until(lambda: web_key_of(world, before) not in world.keys(), 10, "the stopped container's key to go")
    stream_notes = [line for line in watch.stderr_lines() if "event stream" in line or "stream is back" in line]
    print(f"docker down {up_since - down_since:.1f}s; stderr:", *watch.stderr_lines(), sep="\n  ")
    assert len([line for line in stream_notes if "reconnecting" in line]) == 1, stream_notes
    assert len([line for line in stream_notes if "stream is back" in line]) == 1, stream_notes
