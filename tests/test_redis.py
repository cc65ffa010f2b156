"""The Redis backend: a host's liveness is a heartbeat key outside every prefix, set with the TTL every run; the
keys under the root carry no expiry, a per-host index (a set, outside every prefix) records which
keys are the host's, and the live hosts' leader deletes the keys of a host whose heartbeat ran out.

Integration tests run the installed docker-register against the shared dockerd and a private redis-server,
and look with a redis-py client of their own; Redis's command statistics show what a run sent.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import docker_register as dr
from harness import (REDIS_VALUE_WRITES, Certs, Redis, Traefik, free_port, redis_commands, silent_endpoint,
                     wait_until)
from consumers import REQUESTS, WEB_LABELS, Edge, bridge_ip, published_url, served_by_both, start_web
from hosts import LAYOUT_KEYS, Host, Watch, checkout_env
from tiers import server_fixture

_numbers = itertools.count(1)


# --- pure helpers and the import cost (unit tier) -------------------------------------------


@pytest.mark.parametrize("text, url, password", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", None),
    ("redis://cache.example", "redis://cache.example:6379/0", None),
    ("rediss://user:s%3Acret@cache.example:6380/2", "rediss://user@cache.example:6380/2", "s:cret"),
    ("redis://:pw@[::1]:7000", "redis://[::1]:7000/0", "pw"),
])
def test_a_redis_url_is_checked_and_its_password_kept_apart(text, url, password):
    assert dr.parse_redis_url(text) == (url, password)


@pytest.mark.parametrize("text", ["", "127.0.0.1:6379", "http://cache:6379", "redis://", "redis://cache:99999",
                                  "redis://cache:6379/db", "redis://cache:6379/0?x=1", "unix:///run/redis.sock"])
def test_a_bad_redis_url_is_a_usage_error_that_does_not_echo_a_password(text):
    with pytest.raises(dr.UsageError) as raised:
        dr.parse_redis_url(text.replace("//", "//u:hunter2@", 1) if text.startswith("redis://c") else text)
    assert "REDIS_URL" in str(raised.value) and "hunter2" not in str(raised.value)


def test_the_index_key_is_outside_every_prefix():
    index = dr.redis_index_key(dr.lease_id_for("10.0.0.5", "traefik"))
    assert index == f"docker-register:hosts:{dr.lease_id_for('10.0.0.5', 'traefik'):016x}"
    for prefix in ("/backends", "traefik", "docker-register", "/skydns"):
        assert not index.startswith(prefix + "/")
        with pytest.raises(dr.UsageError):
            dr.parse_prefix(index, absolute=prefix.startswith("/"))  # ':' is no prefix's


def test_glob_characters_in_a_folder_are_matched_literally():
    assert dr.glob_escape("traefik/http/*?[x]\\") == "traefik/http/\\*\\?\\[x\\]\\\\"
    assert dr.glob_escape("/backends/web-1.x_y/") == "/backends/web-1.x_y/"


def test_a_missing_client_is_a_usage_error_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "redis", None)  # as if redis-py were not installed
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    code = dr.main(["purge", "--backend", "redis", "--host-ip", "192.0.2.10"])
    assert code == 2
    assert capsys.readouterr().err == ("docker-register: error: --backend redis needs the redis client: "
                                       "pip install 'docker-register[redis]'\n")


@pytest.mark.parametrize("flags, message", [
    (["--redis", "cache:6379"], "REDIS_URL"),
    (["--redis-cacert", "/nonexistent.pem", "--redis", "rediss://cache"], "--redis-cacert: cannot read"),
    (["--redis-cert", "/nonexistent.pem", "--redis", "rediss://cache"], "--redis-cert and --redis-key go together"),
])
def test_bad_redis_flags_exit_2_with_one_line(monkeypatch, capsys, flags, message):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    code = dr.main(["sync", "--backend", "redis", "--host-ip", "192.0.2.10", *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_tls_files_need_a_rediss_url(monkeypatch, capsys, tmp_path):
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    code = dr.main(["sync", "--backend", "redis", "--host-ip", "192.0.2.10", "--redis-cacert", str(pem)])
    assert code == 2 and "use a rediss:// URL" in capsys.readouterr().err


@pytest.mark.integration  # a fresh interpreter
def test_an_etcd_run_imports_neither_backend_client():
    # The whole CLI up to the adapters of an etcd run, in a fresh interpreter: kazoo and redis stay out.
    code = ("import sys, docker_register as dr\n"
            "config = dr.build_config(dr.Settings(host_ip='192.0.2.10', layout=dr.LayoutName.traefik, timeout=1.0))\n"
            "adapters = dr.open_adapters(config); adapters.close()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kazoo', 'redis')))\n")
    env = checkout_env({**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert not imported & {"kazoo", "redis"}


# --- a private redis-server and a world per test --------------------------------------------


@pytest.fixture
def rd(engine, redis_server, tmp_path):
    """A prefix and host IP of the test's own, and a helper to run docker-register against the private Redis."""
    return RedisWorld(engine, redis_server, next(_numbers), tmp_path)


class RedisWorld(Host):
    """What one Redis test works with."""

    tag = "r"

    def __init__(self, engine, server: Redis, n: int, tmp_path: Path):
        super().__init__(engine, n, tmp_path)
        self.server = server
        self.look = server.client()

    @property
    def index(self) -> str:
        return dr.redis_index_key(dr.lease_id_for(self.host_ip, self.prefix))

    @property
    def alive(self) -> str:
        return dr.REDIS_ALIVE.format(lease=dr.lease_id_for(self.host_ip, self.prefix))

    def store_env(self) -> dict[str, str]:
        return {"DOCKER_REGISTER_BACKEND": "redis", "REDIS_URL": self.server.url, "DOCKER_REGISTER_TTL": "30"}

    def keys(self, prefix: str | None = None) -> dict[str, str]:
        return {key: self.look.get(key) for key in self.look.scan_iter(match=(prefix or self.prefix) + "/*")}

    def expiries(self) -> dict[str, int]:
        return {key: self.look.pttl(key) for key in [*self.keys(), self.index]}

    def commands(self) -> Counter:
        """Calls so far of each command, from Redis's own statistics."""
        return redis_commands(self.look)


def writes(before: Counter, after: Counter) -> Counter:
    return Counter({name: after[name] - before[name] for name in REDIS_VALUE_WRITES if after[name] != before[name]})


# --- the contract ------------------------------------------------------------------------------


def test_register_then_a_run_with_nothing_changed_writes_nothing_under_the_root(rd):
    first, second = rd.docker_run("-P", "local/web"), rd.docker_run("-P", "local/web")
    result = rd.sync()
    assert "added 3, updated 0, removed 0, unchanged 0" in result.stdout
    assert rd.keys() == rd.web_keys(first, second)
    assert rd.look.smembers(rd.index) == set(rd.web_keys(first, second))
    # No expiry under the root or on the index (setting or renewing one wakes Traefik); the heartbeat: the TTL.
    assert set(rd.expiries().values()) == {-1}, rd.expiries()
    assert 0 < rd.look.pttl(rd.alive) <= 30_000

    with keyspace_events(rd.look, rd.prefix, "docker-register:alive:") as events:
        before = rd.commands()
        result = rd.sync()
        after, seen = rd.commands(), events()
    assert "added 0, updated 0, removed 0, unchanged 3" in result.stdout
    assert [event for event in seen if event.startswith(rd.prefix)] == [], "no keyspace event under the root"
    assert rd.alive in seen, "the subscriber saw the heartbeat: it was listening"
    assert writes(before, after) == Counter({"set": 1}), "one write: the heartbeat, outside the root"
    assert (after["pexpire"], after["persist"]) == (before["pexpire"], before["persist"])


def test_keys_an_earlier_version_wrote_with_an_expiry_are_made_persistent_once(rd):
    """Earlier versions kept a safety expiry on every key and renewed it, a keyspace event per key (each one a
    listing of the whole database by Traefik): the first run after the upgrade takes the expiries away, once."""
    rd.docker_run("-P", "local/web")
    rd.sync()
    expiring = [*rd.keys(), rd.index, dr.REDIS_CLAIMS.format(prefix=rd.prefix), dr.REDIS_HOSTS.format(prefix=rd.prefix)]
    for key in expiring:
        rd.look.pexpire(key, 3_600_000)
    with keyspace_events(rd.look, rd.prefix, kinds=True) as events:
        result = rd.sync()
        seen = events()
    assert "added 0, updated 0, removed 0, unchanged 2" in result.stdout
    assert sorted(seen) == sorted((key, "persist") for key in rd.keys()), "one event per key, once"
    assert {key: rd.look.pttl(key) for key in expiring} == dict.fromkeys(expiring, -1)
    before = rd.commands()
    rd.sync()
    assert writes(before, rd.commands()) == Counter({"set": 1}) and rd.commands()["persist"] == before["persist"]


@contextlib.contextmanager
def keyspace_events(look, *prefixes: str, kinds: bool = False):
    """Keyspace events of keys starting with these prefixes while the block runs (Traefik's provider turns them
    on too), seen through the client look; gives a function returning the keys they named (with kinds, the
    (key, event) pairs, e.g. (key, "del"))."""
    look.config_set("notify-keyspace-events", "AKE")
    subscriber = look.pubsub()
    subscriber.psubscribe(*(f"__keyspace@*__:{dr.glob_escape(prefix)}*" for prefix in prefixes))
    seen: list[tuple[str, str]] = []

    def drain() -> list:
        while (message := subscriber.get_message(timeout=0.2)) is not None:
            if message["type"] == "pmessage":
                seen.append((message["channel"].split(":", 1)[1], message["data"]))
        return list(seen) if kinds else [key for key, _ in seen]
    try:
        drain()  # the subscription confirmations
        yield drain
    finally:
        subscriber.close()


def test_a_stopped_container_goes_on_the_next_run(rd):
    leaving, staying = rd.docker_run("-P", "local/web"), rd.docker_run("-P", "local/web")
    rd.sync()
    rd.engine.docker("rm", "-f", leaving)
    assert "removed 1" in rd.sync().stdout
    assert rd.keys() == rd.web_keys(staying)
    assert rd.look.smembers(rd.index) == set(rd.web_keys(staying))


def test_a_shared_key_an_earlier_version_released_stays_docker_registers_once_persistent(rd):
    """An earlier version let go of a shared key by deleting its claim; its expiry alone then marked it as
    docker-register's. The run that takes the expiry away gives it the released claim instead."""
    cid = rd.docker_run("-P", "local/web")
    rd.sync()
    port, claims = f"{rd.prefix}/web/port", dr.REDIS_CLAIMS.format(prefix=rd.prefix)
    rd.look.hdel(claims, port)  # released as an earlier version did: out of the claims and the index, expiring
    rd.look.srem(rd.index, port)
    rd.look.pexpire(port, 3_600_000)
    assert "unchanged 2" in rd.sync().stdout
    assert rd.look.pttl(port) == -1 and rd.look.hget(claims, port) == dr.REDIS_RELEASED
    rd.engine.docker("rm", "-f", cid)
    assert "removed 2" in rd.sync().stdout, "the last user of the port key goes: docker-register's to remove"
    assert rd.keys() == {} and not rd.look.hexists(claims, port)


def test_other_hosts_keys_are_never_touched(rd):
    theirs, manual = f"{rd.prefix}/web/bbbbbbbbbbbb", f"{rd.prefix}/static/manual"
    rd.look.set(theirs, "10.9.9.9:80")
    rd.look.sadd("docker-register:hosts:00000000000000ff", theirs)
    rd.look.sadd(dr.REDIS_HOSTS.format(prefix=rd.prefix), "ff")  # a live host of the root, and its leader
    rd.look.set(dr.REDIS_ALIVE.format(lease=0xff), "30", px=60_000)
    rd.look.set(manual, "10.9.9.8:80")
    cid = rd.docker_run("-P", "local/web")
    rd.sync()
    rd.engine.docker("rm", "-f", cid)
    rd.sync()
    rd.sync("--dry-run")
    assert rd.run("purge").returncode == 0
    assert rd.look.get(theirs) == "10.9.9.9:80" and rd.look.get(manual) == "10.9.9.8:80"
    assert rd.look.object("idletime", manual) >= 0
    # The port key the other host's web keeps in use left this host's index and its claim (released: anyone's to
    # change, the leader's to sweep once unused), and stays for the hosts that want it.
    port = f"{rd.prefix}/web/port"
    assert set(rd.keys()) == {theirs, manual, port} and rd.look.pttl(port) == -1
    assert rd.look.hget(dr.REDIS_CLAIMS.format(prefix=rd.prefix), port) == dr.REDIS_RELEASED
    assert not rd.look.exists(rd.index)


def test_a_dead_hosts_keys_go_when_the_live_leader_runs_after_its_heartbeat_ran_out(rd, second_engine, tmp_path):
    there = {"DOCKER_HOST": second_engine.host, "HOST_IP": "192.0.2.251", "DOCKER_REGISTER_TTL": "2",
             "DOCKER_REGISTER_LOCK": str(tmp_path / "there.lock")}
    dying = second_engine.docker("run", "-d", "-P", "-l", "SERVICE_NAME=alone", "local/web").stdout.strip()
    second_engine.docker("run", "-d", "-P", "local/web")
    staying = rd.docker_run("-P", "local/web")
    rd.sync(**there)
    rd.sync()
    theirs = {key for key in rd.keys() if key.rsplit("/", 1)[1] != "port" and not key.endswith(staying[:12])}
    assert len(theirs) == 2 and f"{rd.prefix}/alone/{dying[:12]}" in theirs
    # The other host dies: nothing sets its heartbeat, which runs out after 2 s; its keys stay until the leader
    # (the live host: this one) runs.
    wait_until(lambda: not rd.look.exists(dr.REDIS_ALIVE.format(lease=dr.lease_id_for("192.0.2.251", rd.prefix))),
               2 + 3, "the dead host's heartbeat to run out")
    assert theirs <= set(rd.keys())
    with keyspace_events(rd.look, rd.prefix) as events:
        rd.sync()
        deleted = set(events())
    # Its own keys went, and the shared key only it used (alone's port); web's port stays: this host uses it.
    assert rd.keys() == rd.web_keys(staying) and deleted == theirs | {f"{rd.prefix}/alone/port"}
    assert not rd.look.exists(dr.redis_index_key(dr.lease_id_for("192.0.2.251", rd.prefix)))


def test_a_dead_hosts_keys_stay_while_no_host_lives_and_its_return_writes_nothing(rd):
    rd.docker_run("-P", "local/web")
    rd.sync("--ttl", "2")
    wait_until(lambda: not rd.look.exists(rd.alive), 2 + 3, "the heartbeat to run out")
    assert len(rd.keys()) == 2, "nobody sweeps: the keys wait for a live host"
    before = rd.commands()
    assert "added 0, updated 0, removed 0, unchanged 2" in rd.sync("--ttl", "2").stdout
    assert writes(before, rd.commands()) == Counter({"set": 1})


# --- the leader's sweep against live hosts and a second leader (in process, on the shared server) ------------


class SweptHost:
    """A host run in this process: docker_register's own RedisStore and reconcile over containers in memory."""

    def __init__(self, server: Redis, prefix: str, ip: str, ttl: int, containers: list[dict], tmp_path: Path):
        from fakes import FakeDocker, config

        self.cfg = config(tmp_path, ttl=ttl, prefix=prefix, host_ip=ip, backend="redis", timeout=5.0,
                          redis=dr.RedisSettings(server.url), lock_file=str(tmp_path / f"{ip}.lock"))
        self.store, self.close = dr.open_store(self.cfg)
        self.docker = FakeDocker(containers)
        self.lease = self.cfg.lease_id
        self.index = dr.redis_index_key(self.lease)
        self.alive = dr.REDIS_ALIVE.format(lease=self.lease)

    def sync(self) -> dr.Outcome:
        return dr.reconcile(self.cfg, self.docker, self.store, dry_run=False)

    def beat(self) -> None:
        """What a run with nothing to change does first: set the heartbeat, then, as the leader, sweep."""
        self.store.keep_alive(self.lease)
        self.store.sweep_departed()


def hosts_by_lease(prefix: str, count: int) -> list[str]:
    """count host IPs, lowest lease id first under this prefix: the first one leads the live hosts it is among."""
    return sorted((f"192.0.2.{n}" for n in range(1, count + 1)), key=lambda ip: dr.lease_id_for(ip, prefix))


def alone(n: int, public: int) -> dict:
    """A container of service `alone`, which only the host running it serves."""
    from fakes import container, port

    return container(cid=f"{n:012x}" + "a" * 52, name=f"alone{n}", image="local/alone:latest",
                     ports=[port(80, public)])


def test_a_host_whose_heartbeat_is_renewed_is_never_swept_and_one_whose_heartbeat_ran_out_is(redis_server, tmp_path):
    from fakes import web

    prefix = f"/r-renewed-{next(_numbers)}"
    leader_ip, other_ip = hosts_by_lease(prefix, 2)
    leader = SweptHost(redis_server, prefix, leader_ip, 30, [web(1, 32001)], tmp_path)
    other = SweptHost(redis_server, prefix, other_ip, dr.MIN_TTL, [web(2, 32002), alone(3, 32003)], tmp_path)
    look = redis_server.client()
    try:
        leader.sync()
        other.sync()
        theirs = {key: look.get(key) for key in look.smembers(other.index)}
        # Its web and alone servers and alone's port; web's port is the leader's (it wrote it first).
        assert len(theirs) == 3 and f"{prefix}/alone/port" in theirs, theirs
        renewing, renewals = threading.Event(), []

        def renew():  # a pass with nothing to change every quarter of the TTL: the heartbeat never runs out
            while not renewing.wait(dr.MIN_TTL / 4):
                other.beat()
                renewals.append(time.monotonic())

        with keyspace_events(look, prefix, "docker-register:hosts:", kinds=True) as events:
            renewer = threading.Thread(target=renew, daemon=True)
            renewer.start()
            sweeps, ends = 0, time.monotonic() + 1.5 * dr.MIN_TTL  # longer than the TTL: it would have run out
            try:
                while time.monotonic() < ends and sweeps < 5000:
                    leader.beat()  # the leader's look at the root's hosts, and its sweep of those whose beat ran out
                    sweeps += 1
                    assert {key: look.get(key) for key in theirs} == theirs, f"swept after {sweeps} sweeps"
            finally:
                renewing.set()
                renewer.join(5)
            deleted = [key for key, event in events() if event == "del"]
        assert deleted == [] and look.sismember(dr.REDIS_HOSTS.format(prefix=prefix), f"{other.lease:x}")
        assert sweeps >= 20 and len(renewals) >= 4, (sweeps, renewals)
        # A heartbeat that comes back between the leader's look and its sweep: the sweep leaves the host as it is,
        # keys and place among the root's hosts.
        other.beat()
        leader.store.fleet._sweep([other.lease])
        assert {key: look.get(key) for key in theirs} == theirs
        assert look.sismember(dr.REDIS_HOSTS.format(prefix=prefix), f"{other.lease:x}")

        # Control: the same leader, once the other host's heartbeat has run out, does sweep it.
        wait_until(lambda: not look.exists(other.alive), dr.MIN_TTL + 3, "the heartbeat to run out")
        leader.beat()
        assert not any(look.exists(key) for key in theirs) and not look.exists(other.index)
        assert look.get(f"{prefix}/web/port") == "80"  # the leader's web uses it
    finally:
        for host in (leader, other):
            host.store.revoke(host.lease)
            host.close()
        look.close()


def test_two_leaders_sweeping_at_once_delete_each_dead_key_once_and_nothing_alive(redis_server, tmp_path):
    """Two hosts that both believe they lead (each sees the other as no host of the root) sweep at the same moment,
    released by a barrier, a dead host and a live one; a keyspace subscriber counts every deletion."""
    from fakes import web

    for repeat in range(10):
        prefix = f"/r-race-{next(_numbers)}"
        first, second, live_ip, dead_ip = hosts_by_lease(prefix, 4)
        live = SweptHost(redis_server, prefix, live_ip, 30, [web(1, 32001), web(2, 32002)], tmp_path)
        dead = SweptHost(redis_server, prefix, dead_ip, 30, [web(3, 32003), alone(4, 32004)], tmp_path)
        leaders = [SweptHost(redis_server, prefix, ip, 30, [], tmp_path) for ip in (first, second)]
        look = redis_server.client()
        try:
            dead.sync()
            live.sync()
            look.delete(dead.alive)  # the dead host's heartbeat has run out
            alive_keys = {key: look.get(key) for key in look.smembers(live.index)}
            dead_own = {key for key in look.smembers(dead.index) if not key.endswith("/port")}
            expected = dead_own | {dead.index, f"{prefix}/alone/port"}  # web's port stays: the live host uses it
            barrier, errors = threading.Barrier(2), []

            def sweep(host: SweptHost) -> None:
                try:
                    barrier.wait(5)
                    host.store.fleet._tend({live.lease, dead.lease})  # as a leader that sees these two hosts
                except Exception as error:  # handed to the test thread
                    errors.append(error)

            with keyspace_events(look, prefix, "docker-register:", kinds=True) as events:
                threads = [threading.Thread(target=sweep, args=(host,), daemon=True) for host in leaders]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(10)
                assert errors == [], f"run {repeat}: a leader's run failed: {errors!r}"
                # A sweep that met the other's writes leaves the dead host among the root's hosts: the next run of
                # a leader finds nothing left of it to delete and takes it out.
                leaders[0].store.fleet._tend({live.lease, dead.lease})
                deletions = Counter(key for key, event in events() if event == "del")
            assert deletions == Counter(expected), f"run {repeat}: each dead key deleted exactly once, nothing else"
            assert {key: look.get(key) for key in alive_keys} == alive_keys
            assert look.smembers(live.index) == set(alive_keys)
            assert look.smembers(dr.REDIS_HOSTS.format(prefix=prefix)) == {f"{live.lease:x}"}
        finally:
            for host in (live, dead, *leaders):
                host.store.revoke(host.lease)
                host.close()
            look.close()


def test_purge_deletes_this_hosts_keys_and_index(rd):
    rd.docker_run("-P", "local/web")
    rd.sync()
    result = rd.run("purge")
    assert result.returncode == 0 and "removed 1 keys" in result.stdout, result.stderr
    # The shared port key stays, unclaimed: the hosts still serving web use it, else the leader sweeps it. The
    # heartbeat went with the index: the host is a departed one for the leader.
    port = f"{rd.prefix}/web/port"
    assert rd.keys() == {port: "80"} and not rd.look.exists(rd.index) and not rd.look.exists(rd.alive)
    assert rd.look.hget(dr.REDIS_CLAIMS.format(prefix=rd.prefix), port) == dr.REDIS_RELEASED
    again = rd.run("purge")
    assert again.returncode == 0 and "removed 0 keys" in again.stdout, again.stderr


def test_a_dry_run_writes_nothing(rd):
    rd.docker_run("-P", "local/web")
    rd.sync()
    rd.docker_run("-P", "local/web")
    before = rd.commands()
    result = rd.sync("--dry-run")
    after = rd.commands()
    assert "would add 1" in result.stdout and "dry run, nothing written" in result.stdout
    assert writes(before, after) == Counter() and after["pexpire"] == before["pexpire"]
    assert len(rd.keys()) == 2


@pytest.mark.parametrize("layout", LAYOUT_KEYS)
def test_every_layout_registers_dry_runs_and_purges(rd, layout):
    cid = rd.docker_run("-P", "local/web")
    env, prefix, key = rd.in_layout(layout, cid)
    before = rd.commands()
    plan = json.loads(rd.sync("--dry-run", "--output", "json", **env).stdout)
    assert key in {change["key"] for change in plan["changes"]} and writes(before, rd.commands()) == Counter()
    rd.sync(**env)
    assert key in rd.keys(prefix) and rd.look.pttl(key) == -1
    result = rd.run("purge", **env)
    assert result.returncode == 0, result.stderr
    assert set(rd.keys(prefix)) == ({f"{prefix}/web/port"} if layout == "discover" else set())  # shared: released


def test_sync_every_registers_deregisters_and_writes_nothing_under_the_root_between(rd):
    watch = Watch(rd.env(), every=1, events=False)
    try:
        cid = rd.docker_run("-P", "local/web")
        wait_until(lambda: rd.keys() == rd.web_keys(cid), 15, "the repeating sync to register the container")
        with keyspace_events(rd.look, rd.prefix) as events:
            before, since = rd.commands(), time.monotonic()
            watch.wait_passes(3, 10, since=since)  # two or three passes with nothing to change
            after, seen = rd.commands(), events()
        assert set(writes(before, after)) == {"set"} and after["pexpire"] == before["pexpire"]  # heartbeats only
        assert seen == [], "no keyspace event under the root between changes"
        rd.engine.docker("rm", "-f", cid)
        wait_until(lambda: rd.keys() == {}, 15, "the repeating sync to remove the key")
    finally:
        watch.terminate()  # SIGTERM
    assert watch.proc.returncode == 0 and watch.stderr_lines() == []


def test_a_server_down_fails_in_one_line_within_the_timeout(rd):
    rd.docker_run("-P", "local/web")
    refused = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    result = rd.run("sync", "--timeout", "1", REDIS_URL=refused)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"docker-register: error: redis at {refused}: read index: unreachable")
    assert time.monotonic() - started < 1 + 3

    with silent_endpoint() as silent:
        stalled = f"redis://{silent}/0"
        started = time.monotonic()
        result = rd.run("sync", "--timeout", "1", REDIS_URL=stalled)
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"docker-register: error: redis at {stalled}: read index: no answer in time\n"
    assert time.monotonic() - started < 1 + 3


def test_a_password_is_sent_and_never_shown(rd, tmp_path):
    guarded = Redis(tmp_path / "guarded", password="hunter2").start()
    try:
        rd.docker_run("-P", "local/web")
        result = rd.run("sync", REDIS_URL=guarded.url)
        assert result.returncode == 1 and "authentication" in result.stderr.lower(), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        result = rd.run("sync", REDIS_URL=guarded.url, REDIS_PASSWORD="wrong")
        assert result.returncode == 1 and "wrong" not in result.stderr, result.stderr
        result = rd.run("sync", "--output", "json", REDIS_URL=guarded.url.replace("//", "//:hunter2@"))
        assert result.returncode == 0 and "hunter2" not in result.stdout + result.stderr, result.stderr
        result = rd.run("sync", REDIS_URL=guarded.url, REDIS_PASSWORD="hunter2")
        assert result.returncode == 0 and "unchanged 2" in result.stdout, result.stderr
    finally:
        guarded.stop()


# The same guarantee as test_zookeeper's twin, on this store's keys; the label lists differ where the stores do.
def test_hostile_labels_are_skipped_or_cleaned_while_the_rest_register(rd):
    good = rd.docker_run("-P", "local/web")
    for label in ["a/b/../../c", "..", "x\ny", "ünïcødé", "x" * 10_000, "   ", "$(rm -rf /)", "a*b?[c]"]:
        rd.docker_run("-P", "-l", f"SERVICE_NAME={label}", "local/web")
    result = rd.run("sync")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    keys = rd.keys()
    for key in keys:
        service, leaf = key[len(rd.prefix) + 1:].split("/")
        assert service.strip(".-") and leaf
    assert f"{rd.prefix}/web/{good[:12]}" in keys and f"{rd.prefix}/a-b-..-..-c/port" in keys
    assert f"{rd.prefix}/a-b--c-/port" in keys
    assert rd.look.smembers(rd.index) == set(keys)
    before = rd.commands()
    rd.sync()
    assert writes(before, rd.commands()) == Counter({"set": 1})  # the heartbeat


# --- over TLS (rediss://) -----------------------------------------------------------------------


@server_fixture
def tls_rd(engine, certs, tmp_path):
    """Start a redis-server that speaks TLS only (with client_certs, one that also requires a client certificate)
    and give a RedisWorld on it, whose own client looks over TLS."""
    started = []

    def start(client_certs: bool = False) -> RedisWorld:
        server = Redis(tmp_path / f"tls{len(started)}", tls=certs, client_certs=client_certs)
        started.append(server)
        return RedisWorld(engine, server.start(), next(_numbers), tmp_path)
    yield start
    for server in started:
        server.stop()


def one_line_error(result: subprocess.CompletedProcess, url: str) -> str:
    """The error line of a run that failed on the store, after checking it is exactly that."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"docker-register: error: redis at {url}: "), result.stderr
    return result.stderr


def test_over_tls_the_ca_given_registers_and_a_run_with_nothing_changed_only_beats(tls_rd, certs):
    rd = tls_rd()
    cid = rd.docker_run("-P", "local/web")
    # The server's certificate is signed by the test CA: without --redis-cacert the run cannot trust it.
    untrusted = rd.run("sync", "--redis", rd.server.url)
    assert "certificate verify failed" in one_line_error(untrusted, rd.server.url)
    result = rd.sync("--redis", rd.server.url, "--redis-cacert", str(certs.ca))
    assert "added 2, updated 0, removed 0, unchanged 0" in result.stdout
    assert rd.keys() == rd.web_keys(cid)
    assert rd.look.smembers(rd.index) == set(rd.web_keys(cid))

    before = rd.commands()
    result = rd.sync(REDIS_URL=rd.server.url, REDIS_CACERT=str(certs.ca))  # the environment twins
    after = rd.commands()
    assert "added 0, updated 0, removed 0, unchanged 2" in result.stdout
    assert writes(before, after) == Counter({"set": 1}) and after["pexpire"] == before["pexpire"]


def test_a_client_certificate_is_presented_to_a_server_that_requires_one(tls_rd, certs):
    rd = tls_rd(client_certs=True)
    cid = rd.docker_run("-P", "local/web")
    trusted = ("--redis", rd.server.url, "--redis-cacert", str(certs.ca))
    one_line_error(rd.run("sync", *trusted), rd.server.url)  # the server hangs up on a client without one
    assert rd.keys() == {}
    cert, key = certs.clients["docker-register"]
    result = rd.sync(*trusted, "--redis-cert", str(cert), "--redis-key", str(key))
    assert "added 2, updated 0, removed 0, unchanged 0" in result.stdout
    assert rd.keys() == rd.web_keys(cid)
    result = rd.sync(REDIS_CACERT=str(certs.ca), REDIS_CERT=str(cert), REDIS_KEY=str(key))
    assert "unchanged 2" in result.stdout


def test_a_wrong_ca_is_one_line_on_stderr_and_exit_1(tls_rd, certs, tmp_path):
    rd = tls_rd()
    rd.docker_run("-P", "local/web")
    stranger = Certs(tmp_path / "another-ca")
    cert, key = certs.clients["docker-register"]
    for flags in (["--redis-cacert", str(stranger.ca)],
                  ["--redis-cacert", str(stranger.ca), "--redis-cert", str(cert), "--redis-key", str(key)]):
        result = rd.run("sync", "--redis", rd.server.url, *flags)
        error = one_line_error(result, rd.server.url)
        assert error.startswith(f"docker-register: error: redis at {rd.server.url}: read index: unreachable ("), error
        assert "certificate verify failed" in error and result.stdout == ""
    assert rd.keys() == {} and not rd.look.exists(rd.index)


# --- through a real Traefik ------------------------------------------------------------------


@server_fixture
def redis_edge(rd, tmp_path):
    """A Traefik whose redis provider reads a root of the test's own (a harmless key written first)."""
    # test_consumers' edge does the same on etcd; the store, its client and the provider differ in every line.
    root = f"traefik-r{next(_numbers):04d}"
    rd.look.set(f"{root}/docker-register-tests", "x")
    traefik = Traefik(tmp_path / "traefik", [rd.server.endpoint], root_key=root, provider="redis")
    try:
        traefik.start()
        yield Edge(rd, traefik, bridge_ip(rd.engine))
    finally:
        traefik.stop()


def test_traefik_reaches_the_registered_containers_and_after_a_stop_only_the_rest(rd, redis_edge):
    leaving, staying = start_web(rd.engine, *WEB_LABELS), start_web(rd.engine, *WEB_LABELS)
    redis_edge.sync()
    redis_edge.wait_servers({published_url(rd.engine, cid, redis_edge.host_ip) for cid in (leaving, staying)})
    served_by_both(redis_edge, leaving, staying)

    rd.engine.docker("stop", "--time", "1", leaving)
    redis_edge.sync()
    redis_edge.wait_servers({published_url(rd.engine, staying, redis_edge.host_ip)})
    assert redis_edge.answers() == Counter({(200, staying): REQUESTS})


def test_traefik_drops_a_dead_hosts_servers_once_the_live_leader_ran_after_its_heartbeat(rd, redis_edge,
                                                                                        second_engine, tmp_path):
    there_ip = bridge_ip(second_engine)
    staying, dying = start_web(rd.engine, *WEB_LABELS), start_web(second_engine, *WEB_LABELS)
    there = redis_edge.env(second_engine, there_ip, str(tmp_path / "there" / "sync.lock"))
    with rd.running("sync", "--every", "1", "--layout", "traefik", **redis_edge.env()):
        # The second host runs once with a 2 s TTL, then dies: its heartbeat runs out 2 s later, and the live
        # host's next pass (every second) deletes its keys as the leader.
        rd.sync("--layout", "traefik", **there, DOCKER_REGISTER_TTL="2")
        last_run = time.monotonic()
        redis_edge.wait_servers({published_url(rd.engine, staying, redis_edge.host_ip),
                                 published_url(second_engine, dying, there_ip)})
        second_engine.docker("stop", "--time", "1", dying)
        redis_edge.wait_servers({published_url(rd.engine, staying, redis_edge.host_ip)})
        gone = time.monotonic() - last_run
    assert gone <= 2 + 1 + 1, f"gone {gone:.2f} s after its last run: the TTL, a pass, Traefik's throttle"
    assert redis_edge.answers() == Counter({(200, staying): REQUESTS})
