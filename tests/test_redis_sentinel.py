"""The Redis backend through Sentinel: a run asks the Sentinels for the primary, so after a failover the next
runs write to the new primary.

A primary redis-server, one replica and three redis-sentinel processes on loopback (started once for the module)
stand in for a Sentinel deployment; a failover test SIGKILLs whichever server is primary and, afterwards, starts it
again, so that Sentinel turns it into the new primary's replica for the next test. Replication is asynchronous: a
write the primary acknowledged but had not sent to the replica when it died is lost. The tests make sure the
replica had caught up before the kill, and then check that nothing was lost.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

import docker_register as dr
from consumers import REQUESTS, WEB_LABELS, Edge, bridge_ip, published_url, served_by_both, start_web
from harness import Redis, RedisSentinels, Traefik, wait_until
from hosts import Host
from tiers import server_fixture

_numbers = itertools.count(1)


@pytest.mark.parametrize("flags, message", [
    (["--redis-sentinel", "127.0.0.1:26379"], "needs --redis-master"),
    (["--redis-master", "mymaster"], "it needs --redis-sentinel"),
    (["--redis-sentinel", "a:1,,b:2", "--redis-master", "m"], "'' is not host:port"),
    (["--redis-sentinel", "a:99999", "--redis-master", "m"], "port 99999 in 'a:99999' is out of range"),
    (["--redis-sentinel", "a:1", "--redis-master", "my master"], "is not a Sentinel master name"),
])
def test_bad_sentinel_flags_exit_2_with_one_line(monkeypatch, capsys, flags, message):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    code = dr.main(["sync", "--backend", "redis", "--host-ip", "192.0.2.10", *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_sentinels_default_to_port_26379_and_take_ipv6_in_brackets():
    assert dr.parse_redis_sentinels("s1, s2:26380,[::1]:7000") == (("s1", 26379), ("s2", 26380), ("::1", 7000))


# --- a Sentinel deployment for the module ----------------------------------------------------


@server_fixture(scope="module")
def sentinels(servers_root):
    group = RedisSentinels(servers_root / "sentinels").start()
    yield group
    group.stop()


class SentinelWorld(Host):
    """A host registering through the module's Sentinels."""

    tag = "s"

    def __init__(self, engine, group: RedisSentinels, n: int, tmp_path: Path):
        super().__init__(engine, n, tmp_path)
        self.group = group

    def store_env(self) -> dict[str, str]:
        return {"DOCKER_REGISTER_BACKEND": "redis", "REDIS_SENTINELS": ",".join(self.group.endpoints),
                "REDIS_MASTER": self.group.master, "DOCKER_REGISTER_TTL": "30"}

    def keys(self, server: Redis, prefix: str | None = None) -> dict[str, str]:
        look = server.client()
        return {key: look.get(key) for key in look.scan_iter(match=(prefix or self.prefix) + "/*")}


@pytest.fixture
def sw(engine, sentinels, tmp_path):
    return SentinelWorld(engine, sentinels, next(_numbers), tmp_path / "a")


@pytest.fixture
def failover(sentinels):
    """Kill the primary with SIGKILL (returns it and when); afterwards start it again as the new primary's replica."""
    killed: list[Redis] = []

    def kill() -> tuple[Redis, float]:
        primary = sentinels.current()
        caught_up = primary.client().wait(1, 5000)  # the replica acknowledged every write so far
        assert caught_up == 1
        primary.stop(signal.SIGKILL)
        killed.append(primary)
        return primary, time.monotonic()
    yield kill
    for server in killed:
        server.start()
        wait_until(lambda: server.client().info("replication").get("master_link_status") == "up", 30,
                   "the old primary to come back as the new primary's replica")


def caught_up(primary: Redis) -> None:
    """Wait until the replica acknowledged every write so far (a bounded WAIT)."""
    assert primary.client().wait(1, 5000) == 1


def test_a_run_registers_on_the_primary_the_sentinels_name(sw, sentinels):
    first, second = sw.docker_run("-P", "local/web"), sw.docker_run("-P", "local/web")
    result = sw.sync()
    assert "added 3, updated 0, removed 0, unchanged 0" in result.stdout
    primary = sentinels.current()
    assert sw.keys(primary) == sw.web_keys(first, second)
    caught_up(primary)
    replica = sentinels.replica if primary is sentinels.primary else sentinels.primary
    assert sw.keys(replica) == sw.web_keys(first, second)
    assert "unchanged 3" in sw.sync().stdout


def test_after_the_primary_is_killed_runs_write_to_the_new_primary_and_no_hosts_keys_are_lost(
        sw, engine, sentinels, failover, tmp_path):
    other = SentinelWorld(engine, sentinels, next(_numbers), tmp_path / "b")
    mine, theirs = sw.docker_run("-P", "local/web"), other.docker_run("-P", "local/web")
    sw.sync()
    other.sync()
    old, killed_at = failover()

    outcomes: list[tuple[int, str]] = []

    def a_run_succeeds() -> bool:
        result = sw.run("sync", "--timeout", "1", timeout=10)
        outcomes.append((result.returncode, result.stderr))
        if result.returncode == 0:
            assert "added 0, updated 0, removed 0, unchanged 3" in result.stdout, result.stdout
        return result.returncode == 0
    wait_until(a_run_succeeds, 20, "a run to succeed after the failover", interval=0.2)
    took = time.monotonic() - killed_at
    for code, err in outcomes[:-1]:  # a run during the failover fails in one line, exit 1
        assert code == 1 and len(err.splitlines()) == 1, err
        assert err.startswith(f"docker-register: error: redis primary {sentinels.master} via sentinels "), err
    new = sentinels.current()
    assert new is not old and new.client().info("replication")["role"] == "master"
    errors = sorted({err.split(": ", 3)[-1].strip() for _, err in outcomes[:-1]})
    print(f"failover: first successful run {took:.1f} s after the kill, {len(outcomes) - 1} failed before: {errors}")

    # Nothing was lost: the keys of both hosts (each registers both containers of the one engine) are on the new
    # primary, and the runs find nothing to add; the one run that succeeded first found nothing to add either.
    assert sw.keys(new) == sw.web_keys(mine, theirs)
    assert other.keys(new) == other.web_keys(mine, theirs)
    assert "added 0, updated 0, removed 0, unchanged 3" in sw.sync().stdout
    assert "added 0, updated 0, removed 0, unchanged 3" in other.sync().stdout
    engine.docker("rm", "-f", mine)
    assert "removed 1" in sw.sync().stdout
    assert sw.keys(new) == sw.web_keys(theirs)


# --- through a real Traefik reading the primary through the same Sentinels ---------------------------


def test_traefik_through_sentinel_keeps_routing_across_the_failover_and_follows_the_new_primary(
        sw, engine, sentinels, failover, tmp_path):
    root = f"traefik-s{next(_numbers):04d}"
    sentinels.current().client().set(f"{root}/docker-register-tests", "x")
    traefik = Traefik(tmp_path / "traefik", sentinels.endpoints, root_key=root, provider="redis",
                      provider_options={"sentinel": {"masterName": sentinels.master}})
    try:
        traefik.start()
        edge = Edge(sw, traefik, bridge_ip(engine))
        leaving, staying = start_web(engine, *WEB_LABELS), start_web(engine, *WEB_LABELS)
        edge.sync()
        edge.wait_servers({published_url(engine, cid, edge.host_ip) for cid in (leaving, staying)})
        served_by_both(edge, leaving, staying)

        failover()
        assert set(edge.answers()) <= {(200, leaving), (200, staying)}, "routing goes on while the primary is down"

        engine.docker("stop", "--time", "1", leaving)
        wait_until(lambda: sw.run("sync", "--layout", "traefik", "--timeout", "1", **edge.env(),
                                  timeout=10).returncode == 0, 20, "a run to succeed after the failover",
                   interval=0.2)
        edge.wait_servers({published_url(engine, staying, edge.host_ip)})  # seen on the new primary
        assert edge.answers() == Counter({(200, staying): REQUESTS})
    finally:
        traefik.stop()
