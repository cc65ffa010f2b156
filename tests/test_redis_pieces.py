"""The Redis adapter's pieces, each on its own against the shared redis-server: RedisConnection (a failure is one
line, a moved watched key a Conflict), RedisFleet (the heartbeat, the root's hosts, the leader's sweep), and
RedisStore's steps (keep_alive beats and sweeps nothing; sweep_departed sweeps).

Each test has a prefix and lease ids of its own: heartbeats are named by lease id, outside every prefix."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

import docker_register as dr
from harness import REDIS_VALUE_WRITES, free_port, redis_commands

_numbers = itertools.count(1)


@pytest.fixture
def root(redis_server):
    """A prefix of the test's own, three lease ids of its own (lowest first) and a client to look with."""
    n = next(_numbers)
    look = redis_server.client()
    yield f"/r-pieces-{n}", [(n << 8) + i for i in (1, 2, 3)], look
    look.close()


def test_a_failure_is_one_line_naming_the_server_and_a_moved_watched_key_a_conflict(redis_server, root):
    port = free_port()
    down = dr.RedisConnection(dr.RedisSettings(f"redis://127.0.0.1:{port}/0"), 1.0)
    with pytest.raises(dr.RedisError) as raised:
        down.call("read index", down.client.ping)
    assert str(raised.value).startswith(f"redis at redis://127.0.0.1:{port}/0: read index: unreachable (")
    assert raised.value.exit_code == 1 and "\n" not in str(raised.value)

    prefix, _, look = root
    up, key = dr.RedisConnection(dr.RedisSettings(redis_server.url), 5.0), f"{prefix}/web/port"

    def write_after_another_writer():
        with up.client.pipeline(transaction=True) as pipe:
            pipe.watch(key)
            look.set(key, "81")
            pipe.multi()
            pipe.set(key, "80")
            pipe.execute()

    with pytest.raises(dr.Conflict):
        up.call("write keys", write_after_another_writer)
    assert look.get(key) == "81"
    up.close()


def test_a_beat_sets_the_heartbeat_joins_the_roots_hosts_once_and_then_writes_only_itself(redis_server, root):
    prefix, (lease, other, _), look = root
    fleet = dr.RedisFleet(dr.RedisConnection(dr.RedisSettings(redis_server.url), 5.0), prefix, dr.DISCOVER, 30, lease)
    assert fleet.beat(lambda pipe: pipe.echo("read in the same round trip")) == [b"read in the same round trip"]
    assert 0 < look.pttl(dr.redis_alive_key(lease)) <= 30_000
    hosts = dr.REDIS_HOSTS.format(prefix=prefix)
    assert look.smembers(hosts) == {f"{lease:x}"} and look.pttl(hosts) == -1
    before = redis_commands(look)
    fleet.beat()
    after = redis_commands(look)
    assert Counter({name: after[name] - before[name] for name in REDIS_VALUE_WRITES if after[name] != before[name]}
                   ) == Counter({"set": 1}) and after["pexpire"] == before["pexpire"], "the heartbeat only"
    assert fleet.live([f"{lease:x}", f"{other:x}"]) == {f"{lease:x}"}


def a_host_of_the_root(look, prefix: str, lease: int) -> str:
    """A host's own key, its index and its place among the root's hosts, without a heartbeat: its key."""
    key = f"{prefix}/web/{lease:012x}"
    look.set(key, "10.0.0.9:80", px=600_000)
    look.sadd(dr.redis_index_key(lease), key)
    look.sadd(dr.REDIS_HOSTS.format(prefix=prefix), f"{lease:x}")
    return key


def test_only_the_lowest_live_host_sweeps_and_only_a_host_whose_heartbeat_ran_out(redis_server, root):
    prefix, (low, high, gone), look = root
    connection = dr.RedisConnection(dr.RedisSettings(redis_server.url), 5.0)
    leader, follower = (dr.RedisFleet(connection, prefix, dr.DISCOVER, 30, lease) for lease in (low, high))
    key = a_host_of_the_root(look, prefix, gone)
    look.set(dr.redis_alive_key(gone), "30", px=60_000)  # its heartbeat still lives
    for fleet in (follower, leader):
        fleet.beat()
        fleet.sweep_if_leader()
    assert look.get(key) == "10.0.0.9:80", "a host whose heartbeat lives is never swept"
    look.delete(dr.redis_alive_key(gone))  # it ran out
    follower.beat()
    follower.sweep_if_leader()
    assert look.get(key) == "10.0.0.9:80", "not the leader: it sweeps nothing"
    leader.beat()
    leader.sweep_if_leader()
    assert look.get(key) is None and not look.exists(dr.redis_index_key(gone))
    assert look.smembers(dr.REDIS_HOSTS.format(prefix=prefix)) == {f"{low:x}", f"{high:x}"}
    connection.close()


def test_keeping_the_store_alive_sweeps_nothing_the_sweep_is_a_step_of_its_own(redis_server, root):
    prefix, (lease, _, gone), look = root
    store = dr.RedisStore(dr.RedisSettings(redis_server.url), prefix, 30, 5.0, lease, dr.DISCOVER)
    key = a_host_of_the_root(look, prefix, gone)
    assert store.keep_alive(lease) is False, "no index yet: a new host"
    assert look.get(key) == "10.0.0.9:80", "keep_alive beat and swept nothing"
    store.sweep_departed()
    assert look.get(key) is None
    store.close()


def test_a_key_of_another_type_under_the_root_is_left_alone_and_does_not_stop_the_sweep(redis_server, root):
    prefix, (lease, _, gone), look = root
    fleet = dr.RedisFleet(dr.RedisConnection(dr.RedisSettings(redis_server.url), 5.0), prefix, dr.DISCOVER, 30, lease)
    key = a_host_of_the_root(look, prefix, gone)
    look.hset(f"{prefix}/web/notes", "written", "by hand")  # not a string: no key of any layout
    fleet.beat()
    fleet.sweep_if_leader()
    assert look.get(key) is None and look.hget(f"{prefix}/web/notes", "written") == "by hand"
    fleet.connection.close()
