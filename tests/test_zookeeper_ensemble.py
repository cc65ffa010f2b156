"""Store failover on a ZooKeeper ensemble: three members on loopback, one of them killed under the host.

The real CLI runs against the shared dockerd with `--zookeeper` naming all three members, as the etcd 3-member
tests in test_faults.py do. A member is killed with SIGKILL and started again after the test, so every test
starts with the whole ensemble. The Zxid the live members report moves with every write and only then.
"""

from __future__ import annotations

import signal
import time

import pytest

from harness import start_ensemble, wait_until
from tiers import server_fixture
from test_zookeeper import ZkWorld, _numbers


@server_fixture(scope="module")
def zk_ensemble(tmp_path_factory):
    """Three ZooKeeper members (myid 1-3) for the module, sessions up to 20 s."""
    members = start_ensemble(tmp_path_factory.mktemp("zk-ensemble"), 3, max_session_timeout_ms=20000)
    yield members
    for member in members:
        member.stop()


@pytest.fixture
def zke(engine, zk_ensemble, tmp_path):
    """A ZkWorld whose runs, and whose kazoo client to look with, know every member of the ensemble."""
    from kazoo.client import KazooClient

    world = ZkWorld(engine, zk_ensemble[0], next(_numbers), tmp_path)
    world.hosts = ",".join(member.endpoint for member in zk_ensemble)
    world.look.stop()
    world.look.close()
    world.look = KazooClient(hosts=world.hosts, timeout=10)
    world.look.start(timeout=10)
    yield world
    world.close()


@pytest.fixture
def restart(zk_ensemble):
    """Kill members with kill(member); each is started again (and has joined the quorum) after the test."""
    killed = []

    def kill(member):
        killed.append(member)
        member.stop(signal.SIGKILL)

    yield kill
    for member in killed:
        if member.proc.poll() is not None:
            member.start()


def serving(members) -> bool:
    """Whether every member that is still running serves (has a leader and is its leader or a follower)."""
    return all(member.mode() for member in members if member.proc.poll() is None)


def zxids(members) -> dict[int, int]:
    """The Zxid of each running member, by myid."""
    return {member.myid: member.zxid() for member in members if member.proc.poll() is None}


def settled(members) -> dict[int, int] | None:
    """The running members' Zxids once they stay the same for 0.3 s (a new leader's followers catch up)."""
    before = zxids(members)
    time.sleep(0.3)
    return before if zxids(members) == before else None


def test_a_killed_member_the_session_was_on_the_next_run_reattaches_through_another(zke, zk_ensemble, restart):
    first, second = zke.docker_run("-P", "local/web"), zke.docker_run("-P", "local/web")
    assert "added 3" in zke.sync().stdout
    session = zke.session()
    # ZooKeeper puts the myid of the member that created a session in its id's top byte (the member whose `cons`
    # lists the connection, checked by hand): the member the first run was connected to.
    victim = next(member for member in zk_ensemble if member.myid == session >> 56)
    restart(victim)
    wait_until(lambda: serving(zk_ensemble), 15, "the two members left to serve")
    assert zke.keys() == zke.web_keys(first, second)
    before = wait_until(lambda: settled(zk_ensemble), 10, "the members' Zxid to settle after the election")
    for _ in range(3):  # kazoo tries the members in a random order: the dead one first, sometimes
        started = time.monotonic()
        result = zke.sync("--timeout", "3")
        took = time.monotonic() - started
        print(f"re-attach through another member: {took:.2f} s")
        assert "added 0, updated 0, removed 0, unchanged 3" in result.stdout, result.stdout
        assert took < 3 + 4, took
        assert zke.session() == session, "the same session, through another member"
        assert zxids(zk_ensemble) == before, "a re-attaching run with nothing to change writes nothing"
    assert zke.keys() == zke.web_keys(first, second)


@pytest.mark.parametrize("round_", range(3))
def test_a_run_during_an_election_waits_or_fails_with_one_line_and_the_next_run_succeeds(zke, zk_ensemble, restart,
                                                                                        round_):
    first = zke.docker_run("-P", "local/web")
    zke.sync()
    session = zke.session()
    second = zke.docker_run("-P", "local/web")  # something for the run during the election to write
    leader = next(member for member in zk_ensemble if member.mode() == "leader")
    restart(leader)
    started = time.monotonic()
    result = zke.run("sync", "--timeout", "2")
    took = time.monotonic() - started
    print(f"run during the election: exit {result.returncode} in {took:.2f} s: {result.stderr.strip()}")
    assert took < 2 + 4, took
    if result.returncode == 0:  # it waited for the new leader
        assert "added 1, updated 0, removed 0" in result.stdout, result.stdout
    else:
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("docker-register: error: zookeeper at "), result.stderr
        assert "Traceback" not in result.stderr
    again = zke.run("sync", "--timeout", "5")
    assert again.returncode == 0, again.stderr
    assert zke.keys() == zke.web_keys(first, second)
    assert zke.session() == session, "the session outlived the election"


def test_no_quorum_exits_1_with_one_line_in_bounded_time_and_the_next_run_succeeds(zke, zk_ensemble, restart):
    first = zke.docker_run("-P", "local/web")
    zke.sync()
    session = zke.session()
    second = zke.docker_run("-P", "local/web")
    survivor, *victims = zk_ensemble
    for victim in victims:
        restart(victim)
    wait_until(lambda: not survivor.mode(), 10, "the member left alone to stop serving")
    started = time.monotonic()
    result = zke.run("sync", "--timeout", "2")
    took = time.monotonic() - started
    print(f"run without a quorum: exit {result.returncode} in {took:.2f} s: {result.stderr.strip()}")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("docker-register: error: zookeeper at "), result.stderr
    # What happened, in the line: no member served in the time given, and the one left up does not serve.
    assert ": connect: no server answered within 2 s (no quorum?): " in result.stderr, result.stderr
    assert f"{survivor.endpoint}: up but not serving" in result.stderr, result.stderr
    assert took < 2 + 4, took
    victims[0].start()  # a quorum again: two of three
    again = zke.run("sync", "--timeout", "5")
    assert again.returncode == 0 and "added 1, updated 0, removed 0" in again.stdout, again.stderr
    assert zke.keys() == zke.web_keys(first, second) and zke.session() == session
