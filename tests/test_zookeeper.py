"""The ZooKeeper backend: the host's session is its lease, its keys are ephemeral nodes of the session.

Integration tests run the installed docker-register against the shared dockerd and a private ZooKeeper,
and look at the result with a kazoo client of their own (a session of its own) and the server's Zxid,
which moves with every write and only then. Pure helpers are tested without a server.
"""

from __future__ import annotations

import itertools
import json
import stat
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

import docker_register as dr
from consumers import REQUESTS, WEB_LABELS, Edge, bridge_ip, published_url, served_by_both, start_web
from harness import (Certs, Traefik, ZooKeeper, end_saved_sessions, free_port, silent_endpoint, wait_until,
                     zookeeper_keys, zookeeper_nodes)
from hosts import LAYOUT_KEYS, Host, Watch
from tiers import server_fixture

#: The server's cap on session timeouts: docker-register refuses a TTL above it.
MAX_SESSION_SECONDS = 20
_numbers = itertools.count(1)


# --- pure helpers (unit tier) -----------------------------------------------------------------


@pytest.mark.parametrize("key, prefix, path", [
    ("/backends/web/abc", "/backends", "/backends/web/abc"),
    ("traefik/http/services/web/loadbalancer/servers/abc/url", "traefik",
     "/traefik/http/services/web/loadbalancer/servers/abc/url"),
    ("/skydns/local/docker/web/abc", "/skydns", "/skydns/local/docker/web/abc"),
])
def test_zookeeper_paths_start_with_a_slash_and_map_back_to_the_key(key, prefix, path):
    assert dr.zookeeper_path(key) == path
    assert dr.zookeeper_key(path, prefix) == key


def test_the_state_file_is_next_to_the_lock_file_one_per_host_and_prefix():
    state = dr.zookeeper_state_file("/run/x/sync.lock", "10.0.0.5", "/backends")
    assert state == f"/run/x/zookeeper-{dr.lease_id_for('10.0.0.5', '/backends'):016x}.session"
    assert dr.zookeeper_state_file(None, "10.0.0.5", "/backends").startswith("/run/docker-register/zookeeper-")
    assert dr.zookeeper_state_file("/run/x/sync.lock", "10.0.0.6", "/backends") != state
    assert dr.zookeeper_state_file("/run/x/sync.lock", "10.0.0.5", "traefik") != state


def test_a_saved_session_reads_back_and_anything_else_is_no_session():
    saved = dr.SavedSession(0x100002D21290007, bytes(range(16)), 30)
    assert dr.parse_session(dr.session_text(saved)) == saved
    assert saved.password.hex() not in repr(saved) and str(bytes(range(16))) not in repr(saved)
    for text in ("", "{}", "not json", '{"session": "zz", "password": "00", "ttl": 30}',
                 '{"session": "0", "password": "00", "ttl": 30}', '{"session": "1f", "password": "00", "ttl": 0}',
                 "[]"):
        assert dr.parse_session(text) is None, text


def test_the_leader_keeps_what_it_saw_of_the_hosts_folder_in_the_state_file():
    saved = dr.SavedSession(0x100002D21290007, bytes(range(16)), 30, watched=(7, 3))
    assert dr.parse_session(dr.session_text(saved)) == saved
    assert dr.parse_session(dr.session_text(dr.SavedSession(5, b"\1", 30))).watched is None
    assert dr.parse_session('{"session": "5", "password": "01", "ttl": 30, "watched": 5}').watched is None
    negative = dr.SavedSession(-0x7FFFFFF000000001, b"\1", 30)  # a server id of 128 or more
    assert dr.parse_session(dr.session_text(negative)) == negative


@pytest.mark.parametrize("before, now, departed", [
    ((4, 2), (4, 2), False),  # nothing happened
    ((4, 2), (5, 3), False),  # a host joined
    ((4, 2), (5, 1), True),  # a host left
    ((4, 2), (6, 2), True),  # one joined and one left: the same count, yet a departure
    ((4, 2), (7, 3), True),  # two joined and one left
    ((9, 2), (1, 1), True),  # the folder was made again
    (None, (4, 2), True),  # not the leader at the last look: the last leader may be the one gone
])
def test_a_departure_shows_in_the_hosts_folders_child_version_and_count(before, now, departed):
    assert dr.hosts_departed(before, now) is departed


def node(data=0, owner=0, children=0, cversion=0):
    return SimpleNamespace(dataLength=data, ephemeralOwner=owner, numChildren=children, cversion=cversion)


def test_only_a_folder_whose_children_all_went_is_an_emptied_folder():
    assert dr.emptied_folder(node(cversion=2))
    assert not dr.emptied_folder(node(cversion=3, children=1))  # still in use
    assert not dr.emptied_folder(node())  # an empty key written as such, never a folder
    assert dr.emptied_folder(node(data=len(dr.ZOOKEEPER_FOLDER), cversion=2))  # holding a folder's value
    assert not dr.emptied_folder(node(data=3, cversion=2))  # a key with a value
    assert not dr.emptied_folder(node(owner=7, cversion=0))  # a session's key



@pytest.mark.parametrize("dropped, line", [
    ({}, "no answer in time"),  # nothing dropped yet: the server is silent
    ({"zk1:2181": "socket connection error: Connection refused"}, "socket connection error: Connection refused"),
    ({"zk1:2181": "socket connection error: Connection refused", "zk2:2181": "socket connection error: Connection "
      "refused"}, "socket connection error: Connection refused"),  # one reason: said once, as for one server
    ({"zk1:2181": "socket connection broken", "zk2:2181": "socket connection error: Connection refused",
      "zk3:2181": "socket connection error: Connection refused"},
     "no server answered within 2 s (no quorum?): zk1:2181: up but not serving; zk2:2181, zk3:2181: socket "
     "connection error: Connection refused"),
    ({"zk1:2181": "socket connection broken"}, "no server answered within 2 s (no quorum?): zk1:2181: up but not "
                                               "serving"),
    ({"zk1:2181": "timed out", "zk2:2181": "socket connection error: Connection refused"},
     "no server answered within 2 s: zk2:2181: socket connection error: Connection refused; zk1:2181: timed out"),
])
def test_a_failed_connect_says_what_each_server_did_and_suspects_no_quorum_when_one_is_up_but_not_serving(
        dropped, line):
    assert dr.connect_failure(dropped, 2.0) == line


@pytest.mark.parametrize("text, hosts", [
    ("127.0.0.1:2181", "127.0.0.1:2181"),
    ("zk1:2181, zk2:2182,zk3.example:2183", "zk1:2181,zk2:2182,zk3.example:2183"),
    ("[::1]:2181", "[::1]:2181"),
])
def test_zookeeper_hosts_are_an_ensemble_of_host_port(text, hosts):
    assert dr.parse_zookeeper_hosts(text) == hosts


@pytest.mark.parametrize("text", ["", "zk1", "zk1:2181/chroot", "zk1:0", "zk1:70000", "zk1:2181,,zk2:2181",
                                  "http://zk1:2181"])
def test_bad_zookeeper_hosts_are_a_usage_error(text):
    with pytest.raises(dr.UsageError) as raised:
        dr.parse_zookeeper_hosts(text)
    assert "ZOOKEEPER_HOSTS" in str(raised.value)


def test_keys_with_keys_below_them_are_left_out_for_a_tree_store_with_a_note():
    desired = dr.Desired(
        {"t/http/services/web/loadbalancer/servers/abc/url": "http://10.0.0.5:80"},
        {"t/http/routers/web/tls": "true", "t/http/routers/web/tls/certresolver": "le",
         "t/http/routers/web/rule": "Host(`a`)", "t/http/routers/web/entrypoints": "web",
         "t/http/routers/web/entrypoints/0": "web"}, ("a note",))
    kept = dr.leaves_only(desired)
    assert kept.own == desired.own
    assert set(kept.shared) == {"t/http/routers/web/tls/certresolver", "t/http/routers/web/rule",
                                "t/http/routers/web/entrypoints/0"}
    assert kept.notes[0] == "a note" and len(kept.notes) == 3
    plain = dr.Desired({"/b/web/abc": "x"}, {"/b/web/port": "80"})
    assert dr.leaves_only(plain) is plain


def test_a_store_that_records_its_shared_keys_releases_one_another_host_uses():
    # What the planner does for ZooKeeper and Redis: the port key stays, and this host's claim on it goes.
    lease, other = 11, 22
    stored = {"/b/web/port": dr.StoredKey("80", lease, 5), "/b/web/bbbbbbbbbbbb": dr.StoredKey("10.0.0.6:1", other, 6)}
    leaving = dr.plan_changes(dr.Desired({}, {}), stored, lease, dr.LeaseState.ALIVE, "/b", dr.DISCOVER)
    assert leaving.changes == () and leaving.unchanged == 1  # etcd: its own lease is no longer renewed here
    releasing = dr.plan_changes(dr.Desired({}, {}), stored, lease, dr.LeaseState.ALIVE, "/b", dr.DISCOVER,
                                releases=True)
    assert [(c.kind, c.key) for c in releasing.changes] == [(dr.ChangeKind.RELEASE, "/b/web/port")]
    del stored["/b/web/bbbbbbbbbbbb"]  # nobody uses it any more: it goes, whatever the store
    alone = dr.plan_changes(dr.Desired({}, {}), stored, lease, dr.LeaseState.ALIVE, "/b", dr.DISCOVER, releases=True)
    assert [(c.kind, c.key) for c in alone.changes] == [(dr.ChangeKind.REMOVE, "/b/web/port")]


def test_a_missing_client_is_a_usage_error_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kazoo", None)  # as if kazoo were not installed
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    code = dr.main(["sync", "--backend", "zookeeper", "--host-ip", "192.0.2.10"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == ("docker-register: error: --backend zookeeper needs the kazoo client: "
                   "pip install 'docker-register[zookeeper]'\n")


@pytest.mark.parametrize("flags, message", [
    (["--prefix", "/zookeeper"], "ZooKeeper keeps its own nodes under /zookeeper"),
    (["--prefix", "/docker-register/hosts/x"], "docker-register keeps its hosts' nodes under /docker-register/hosts"),
    (["--zookeeper", "zk1"], "ZOOKEEPER_HOSTS"),
    (["--zookeeper-password", "secret"], "--zookeeper-password / ZOOKEEPER_PASSWORD needs --zookeeper-user"),
    (["--zookeeper-cert", "/nonexistent.pem"], "--zookeeper-cert and --zookeeper-key go together"),
    (["--zookeeper-cacert", "/nonexistent.pem"], "--zookeeper-cacert: cannot read /nonexistent.pem"),
    (["--zookeeper-state", " "], "--zookeeper-state / ZOOKEEPER_STATE"),
])
def test_bad_zookeeper_flags_exit_2_with_one_line(monkeypatch, capsys, flags, message):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    code = dr.main(["sync", "--backend", "zookeeper", "--host-ip", "192.0.2.10", *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert "secret" not in err


# --- a private ZooKeeper and a world per test -------------------------------------------------


@pytest.fixture
def zk(engine, zookeeper, tmp_path):
    """A prefix, host IP and lock folder of the test's own, a kazoo client to look with, and a helper to run
    docker-register against the private ZooKeeper."""
    yield from world_on(zookeeper, engine, tmp_path)


def world_on(server: ZooKeeper, engine, tmp_path: Path):
    """The body of the world fixtures: a ZkWorld on that server, its sessions ended after the test."""
    world = ZkWorld(engine, server, next(_numbers), tmp_path)
    yield world
    world.close()


class ZkWorld(Host):
    """What one ZooKeeper test works with."""

    tag = "z"

    def __init__(self, engine, server: ZooKeeper, n: int, tmp_path: Path):
        super().__init__(engine, n, tmp_path)
        self.server = server
        self.hosts = server.endpoint  # what the runs (and close) connect to: an ensemble's members, comma-separated
        self.look = server.client()
        self.sessions = []  # other hosts' sessions made by the test

    @property
    def state_file(self) -> Path:
        return Path(dr.zookeeper_state_file(str(self.lock_file), self.host_ip, self.prefix))

    def store_env(self) -> dict[str, str]:
        return {"DOCKER_REGISTER_BACKEND": "zookeeper", "ZOOKEEPER_HOSTS": self.hosts,
                "DOCKER_REGISTER_TTL": "10"}

    def nodes(self, root: str | None = None) -> dict[str, tuple[str, int]]:
        """Every node under the root: path -> (data, ephemeralOwner)."""
        return zookeeper_nodes(self.look, root or self.prefix)

    def keys(self, root: str | None = None) -> dict[str, str]:
        """The keys under the root: every node but the folders."""
        return zookeeper_keys(self.nodes(root))

    def holder(self, path: str) -> int:
        """The session holding a node: its owner if ephemeral, else the session claiming it (0: none)."""
        owner = self.look.exists(path).ephemeralOwner
        claim = self.look.exists(dr.zookeeper_claim(dr.zookeeper_path(self.prefix), path))
        return owner or (claim.ephemeralOwner if claim else 0)

    def session(self) -> int:
        """This host's session, from its state file."""
        return int(json.loads(self.state_file.read_text())["session"], 16)

    def other_host(self, auth: tuple[str, str] | None = None):
        """A session of another host (a kazoo client of its own), logged in as a digest user if auth is given."""
        client = self.server.client(auth)
        self.sessions.append(client)
        return client

    def close(self) -> None:
        """End every session the test made, so that none expires (and writes) during a later test."""
        end_saved_sessions(self.hosts, self.lock_file.parent.glob("zookeeper-*.session"))
        for client in [self.look, *self.sessions]:
            client.stop()
            client.close()


# --- the contract ------------------------------------------------------------------------------


def test_register_then_a_run_with_nothing_changed_writes_nothing(zk):
    first, second = zk.docker_run("-P", "local/web"), zk.docker_run("-P", "local/web")
    result = zk.sync()
    assert "added 3, updated 0, removed 0, unchanged 0" in result.stdout
    assert zk.keys() == zk.web_keys(first, second)
    session = zk.session()
    port = f"{zk.prefix}/web/port"
    nodes = zk.nodes()
    assert {nodes[path][1] for path in zk.keys() if path != port} == {session}  # ephemeral
    # Its folders hold a value: a reader that reads every node (Traefik's provider) reads each one once.
    assert {nodes[path] for path in set(nodes) - set(zk.keys())} == {(dr.ZOOKEEPER_FOLDER.decode(), 0)}
    assert zk.nodes()[port] == ("80", 0) and zk.holder(port) == session  # shared: persistent, claimed by it
    assert stat.S_IMODE(zk.state_file.stat().st_mode) == 0o600
    assert f"0x{session:x}" in zk.server.four_letter("dump")  # the run exited; its session lives on

    zxid = zk.server.zxid()
    result = zk.sync()
    assert "added 0, updated 0, removed 0, unchanged 3" in result.stdout
    assert zk.server.zxid() == zxid, "a re-attaching run with nothing to change writes nothing"
    assert zk.session() == session
    result = zk.run("sync", "--output", "json")
    assert json.loads(result.stdout)["lease"]["id"] == f"{session:x}"
    assert zk.server.zxid() == zxid


def test_a_stopped_container_goes_on_the_next_run_and_so_does_its_empty_folder(zk):
    leaving, staying = zk.docker_run("-P", "local/web"), zk.docker_run("-P", "-l", "SERVICE_NAME=api", "local/web")
    zk.sync()
    zk.engine.docker("rm", "-f", leaving)
    result = zk.sync()
    assert "removed 2" in result.stdout  # the instance and the service's port key
    assert set(zk.nodes()) == {f"{zk.prefix}/api", f"{zk.prefix}/api/{staying[:12]}", f"{zk.prefix}/api/port"}


def test_other_hosts_nodes_are_never_touched(zk):
    other = zk.other_host()
    theirs = f"{zk.prefix}/web/bbbbbbbbbbbb"
    other.create(theirs, b"10.9.9.9:80", ephemeral=True, makepath=True)
    manual = f"{zk.prefix}/static/manual"
    zk.look.create(manual, b"10.9.9.8:80", makepath=True)
    before = {path: zk.look.get(path)[1] for path in (theirs, manual)}

    cid = zk.docker_run("-P", "local/web")
    zk.sync()
    zk.engine.docker("rm", "-f", cid)
    zk.sync()
    zk.sync("--dry-run")
    zk.run("purge")
    after = {path: zk.look.get(path)[1] for path in (theirs, manual)}
    assert after == before  # same version, same owner, same mzxid: not written at all
    # The port key another host's instance still uses stayed with this host until purge took it along.
    assert not zk.look.exists(f"{zk.prefix}/web/{cid[:12]}")


def test_a_dead_hosts_nodes_go_after_the_ttl(zk):
    zk.docker_run("-P", "local/web")
    zk.sync("--ttl", "2")
    assert len(zk.keys()) == 2
    # The run exited without closing its session (as a killed run, or a dead host): nothing renews it now.
    wait_until(lambda: not any(owner for data, owner in zk.nodes().values()), 2 + 5,
               "the session to expire and its nodes to go")
    # What stays is the persistent folder and the shared port node, no longer claimed: with no live host left,
    # nothing removes it; the first host back (the leader at its first look) sweeps it when nothing uses it.
    port = f"{zk.prefix}/web/port"
    folder = (dr.ZOOKEEPER_FOLDER.decode(), 0)
    assert zk.nodes() == {f"{zk.prefix}/web": folder, port: ("80", 0)} and zk.holder(port) == 0
    result = zk.sync("--ttl", "2")  # the saved session is gone: a new one, the instance added again
    assert "added 1, updated 0, removed 0, unchanged 1" in result.stdout


def test_purge_deletes_this_hosts_nodes_and_folders_and_ends_the_session(zk):
    other = zk.other_host()
    other.create(f"{zk.prefix}/api/bbbbbbbbbbbb", b"10.9.9.9:80", ephemeral=True, makepath=True)
    zk.docker_run("-P", "local/web")
    zk.sync()
    session = zk.session()
    result = zk.run("purge")
    assert result.returncode == 0 and "removed 1 keys" in result.stdout, result.stderr
    # The shared port node stays, unclaimed, for the hosts that use it (the leader's sweep removes it when
    # none does).
    port = f"{zk.prefix}/web/port"
    assert set(zk.nodes()) == {f"{zk.prefix}/api", f"{zk.prefix}/api/bbbbbbbbbbbb", f"{zk.prefix}/web", port}
    assert zk.holder(port) == 0
    assert not zk.state_file.exists()
    assert f"0x{session:x}" not in zk.server.four_letter("dump")  # the session is closed, not left to expire
    again = zk.run("purge")
    assert again.returncode == 0 and "removed 0 keys" in again.stdout, again.stderr


def test_a_dry_run_writes_nothing(zk):
    zk.docker_run("-P", "local/web")
    zk.sync()
    zk.docker_run("-P", "local/web")
    zxid = zk.server.zxid()
    result = zk.sync("--dry-run")
    assert "would add 1" in result.stdout and "dry run, nothing written" in result.stdout
    assert zk.server.zxid() == zxid
    assert len(zk.keys()) == 2


@pytest.mark.parametrize("layout", LAYOUT_KEYS)
def test_every_layout_registers_dry_runs_and_purges(zk, layout):
    cid = zk.docker_run("-P", "local/web")
    env, prefix, key = zk.in_layout(layout, cid)
    root = dr.zookeeper_path(prefix)
    plan = json.loads(zk.sync("--dry-run", "--output", "json", **env).stdout)
    assert key in {change["key"] for change in plan["changes"]} and zk.nodes(root) == {}
    zk.sync(**env)
    assert zk.nodes(root)[dr.zookeeper_path(key)][1] != 0, "an ephemeral node of the host's session"
    result = zk.run("purge", **env)
    assert result.returncode == 0, result.stderr
    assert set(zk.keys(root)) == ({f"{root}/web/port"} if layout == "discover" else set())  # shared: it stays


def test_sync_every_keeps_one_session_registers_deregisters_and_writes_nothing_between(zk):
    watch = Watch(zk.env(), every=1, events=False)
    try:
        cid = zk.docker_run("-P", "local/web")
        wait_until(lambda: zk.keys() == zk.web_keys(cid), 15, "the repeating sync to register the container")
        session = zk.session()
        zxid, since = zk.server.zxid(), time.monotonic()
        watch.wait_passes(3, 10, since=since)  # two or three passes with nothing to change
        assert zk.server.zxid() == zxid
        zk.engine.docker("rm", "-f", cid)
        wait_until(lambda: zk.keys() == {}, 15, "the repeating sync to remove the key")
        assert zk.session() == session
    finally:
        watch.terminate()  # SIGTERM
    assert watch.proc.returncode == 0 and watch.stderr_lines() == []


def test_a_state_file_that_cannot_be_written_is_a_store_failure_exit_1_not_a_usage_error(zk, tmp_path):
    # Exit 2 would stop the watch unit for good (RestartPreventExitStatus=2); a full disk or a read-only mount
    # can pass, so it is a store failure the next run tries again.
    (tmp_path / "a-file").write_text("")
    zk.docker_run("-P", "local/web")
    result = zk.run("sync", ZOOKEEPER_STATE=str(tmp_path / "a-file" / "zookeeper.session"))
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "--zookeeper-state: cannot write" in result.stderr, result.stderr
    assert zk.keys() == {}  # nothing written before the session is kept


def test_a_server_down_fails_in_one_line_within_the_timeout(zk):
    zk.docker_run("-P", "local/web")
    with silent_endpoint() as silent:
        for hosts, reason in ((f"127.0.0.1:{free_port()}", "socket connection error: Connection refused"),
                              (silent, "no answer in time")):
            started = time.monotonic()
            result = zk.run("sync", "--timeout", "1", ZOOKEEPER_HOSTS=hosts)
            took = time.monotonic() - started
            assert result.returncode == 1, result.stderr
            assert result.stderr == f"docker-register: error: zookeeper at {hosts}: connect: {reason}\n"
            assert took < 1 + 3, took


def test_a_ttl_the_server_does_not_grant_is_refused_in_one_line(zk):
    zk.docker_run("-P", "local/web")
    zxid = zk.server.zxid()
    result = zk.run("sync", "--ttl", "30")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"docker-register: error: --ttl 30: zookeeper at {zk.server.endpoint} grants a session "
                             f"timeout of {MAX_SESSION_SECONDS} s for it (its minSessionTimeout and maxSessionTimeout "
                             "bound it); choose a TTL it grants\n")
    assert not zk.keys() and not zk.state_file.exists()
    assert zk.server.zxid() == zxid + 2  # the probing session was opened and closed; no key written


def test_a_changed_ttl_replaces_the_session_as_a_changed_ttl_replaces_an_etcd_lease(zk):
    cid = zk.docker_run("-P", "local/web")
    zk.sync("--ttl", "10")
    old = zk.session()
    result = zk.sync("--ttl", "5", "--output", "json")
    assert json.loads(result.stdout)["lease"]["action"] == "replace"
    new = zk.session()
    assert new != old and json.loads(zk.state_file.read_text())["ttl"] == 5
    assert zk.keys() == zk.web_keys(cid)
    port = f"{zk.prefix}/web/port"
    assert {zk.nodes()[path][1] for path in zk.keys() if path != port} == {new}
    assert zk.nodes()[port] == ("80", 0)  # shared: persistent, it never went, and no session claims it now
    assert f"0x{old:x}" not in zk.server.four_letter("dump")  # closed, not left to expire


def test_a_lost_state_file_converges_without_touching_another_hosts_nodes(zk):
    other = zk.other_host()
    theirs = f"{zk.prefix}/web/bbbbbbbbbbbb"
    other.create(theirs, b"10.9.9.9:80", ephemeral=True, makepath=True)
    leaving, staying = zk.docker_run("-P", "local/web"), zk.docker_run("-P", "local/web")
    zk.sync("--ttl", "3")
    old = zk.session()
    zk.state_file.unlink()
    zk.engine.docker("rm", "-f", leaving)

    result = zk.sync()  # a TTL of 10 s: the new session outlives the wait for the old one below
    new = zk.session()
    assert new != old
    assert "updated 1" in result.stdout  # its own instance key moves to the new session
    mine = f"{zk.prefix}/web/{staying[:12]}"
    assert zk.nodes()[mine][1] == new
    assert zk.nodes()[theirs] == ("10.9.9.9:80", other.client_id[0])
    # The old session's nodes (the stopped container's, the shared port key) expire with it.
    wait_until(lambda: f"{zk.prefix}/web/{leaving[:12]}" not in zk.nodes(), 3 + 5, "the old session to expire")
    zk.sync()
    expected = {**zk.web_keys(staying), theirs: "10.9.9.9:80"}
    assert zk.keys() == expected
    assert zk.nodes()[f"{zk.prefix}/web/port"] == ("80", 0)  # shared: it stays, its old claim gone


# --- digest users and TLS ------------------------------------------------------------------------

#: Digest users of the tests below, (name, password); neither password may show anywhere.
ALICE, BOB = ("alice", "alice-pw-7c1e9d"), ("bob", "bob-pw-3a8f52")


@server_fixture(scope="module")
def digest_zookeeper(tmp_path_factory):
    """A ZooKeeper of the digest tests' own: the nodes their runs make belong to a digest user, and on the shared
    server those above every test's prefix (the hosts' folders) would then be closed to the other tests."""
    server = ZooKeeper(tmp_path_factory.mktemp("zk-digest"), max_session_timeout_ms=MAX_SESSION_SECONDS * 1000)
    yield server.start()
    server.stop()


@pytest.fixture
def zk_digest(engine, digest_zookeeper, tmp_path):
    yield from world_on(digest_zookeeper, engine, tmp_path)


def tree(client, path: str = "/") -> dict:
    """Every node below path but ZooKeeper's own, with its stat."""
    found = {}
    for child in client.get_children(path):
        below = f"{path.rstrip('/')}/{child}"
        if below != dr.ZOOKEEPER_RESERVED:
            found[below] = client.exists(below)
            found.update(tree(client, below))
    return found


def shown(results, zk: ZkWorld) -> str:
    """Everything the runs printed, and every state file next to the lock file."""
    return "".join(r.stdout + r.stderr for r in results) + "".join(
        state.read_text() for state in zk.lock_file.parent.glob("zookeeper-*.session"))


def test_a_digest_users_nodes_give_it_every_right_and_everyone_else_only_read(zk_digest):
    from kazoo.exceptions import NoAuthError
    from kazoo.security import make_acl, make_digest_acl

    zk = zk_digest
    cid = zk.docker_run("-P", "local/web")
    top = "/" + zk.prefix.split("/")[1]
    before = set(tree(zk.look))
    runs = [zk.sync("--zookeeper-user", ALICE[0], "--zookeeper-password", ALICE[1])]
    assert "added 2, updated 0, removed 0, unchanged 0" in runs[0].stdout
    assert zk.keys() == zk.web_keys(cid)  # read by a client without credentials
    # The nodes the run made in the keys' tree: the folders down from the top, and the keys.
    made = {path for path in tree(zk.look) if path not in before and (path + "/").startswith(top + "/")}
    assert made == {top, zk.prefix, f"{zk.prefix}/web", f"{zk.prefix}/web/port", f"{zk.prefix}/web/{cid[:12]}"}
    acl = sorted([make_digest_acl(*ALICE, all=True), make_acl("world", "anyone", read=True)])
    owner = zk.other_host(ALICE)  # the server shows a digest's hash only to a session with ADMIN on the node
    assert {path: sorted(owner.get_acls(path)[0]) for path in made} == dict.fromkeys(made, acl)
    # The hosts folders: the two every root shares take anyone's node; this root's own is the user's.
    hosts = dr.zookeeper_hosts_folder(zk.prefix)
    shared = sorted([make_acl("world", "anyone", read=True, create=True)])
    assert [sorted(owner.get_acls(path)[0]) for path in ("/docker-register", "/docker-register/hosts")] == \
        [shared, shared]
    assert sorted(owner.get_acls(hosts)[0]) == acl
    with pytest.raises(NoAuthError):
        zk.look.create(f"{hosts}/0", ephemeral=True)  # no one else can make itself this fleet's leader

    key, folder = f"{zk.prefix}/web/{cid[:12]}", f"{zk.prefix}/web"
    for client in (zk.look, zk.other_host(BOB)):  # no user, and another user
        for attempt in (lambda: client.set(key, b"10.9.9.9:80"), lambda: client.delete(key),
                        lambda: client.create(f"{folder}/bbbbbbbbbbbb", b"10.9.9.9:80", ephemeral=True),
                        lambda: client.set_acls(key, [make_acl("world", "anyone", all=True)])):
            with pytest.raises(NoAuthError):
                attempt()
    zxid = zk.server.zxid()
    runs.append(zk.sync("--output", "json", ZOOKEEPER_USER=ALICE[0], ZOOKEEPER_PASSWORD=ALICE[1]))
    assert json.loads(runs[-1].stdout)["unchanged"] == 2
    assert zk.server.zxid() == zxid, "re-attaching with the credentials writes nothing"
    assert ALICE[1] not in shown(runs, zk)


def test_another_digest_user_on_another_host_cannot_change_the_nodes(zk_digest):
    zk = zk_digest
    first = zk.docker_run("-P", "local/web")
    runs = [zk.sync("--zookeeper-user", ALICE[0], "--zookeeper-password", ALICE[1])]
    firsts = zk.web_keys(first)
    zk.engine.docker("rm", "-f", first)  # what stays is the first host's; the second host runs its own container
    second = zk.docker_run("-P", "local/web")
    other_ip = f"198.51.100.{zk.host_ip.rsplit('.', 1)[1]}"
    before = tree(zk.look)

    runs.append(zk.run("sync", "--zookeeper-user", BOB[0], "--zookeeper-password", BOB[1], HOST_IP=other_ip))
    assert runs[-1].returncode == 1, runs[-1].stderr
    assert len(runs[-1].stderr.splitlines()) == 1 and "Traceback" not in runs[-1].stderr, runs[-1].stderr
    assert runs[-1].stderr.startswith(f"docker-register: error: zookeeper at {zk.server.endpoint}: ")
    assert "not authorised" in runs[-1].stderr
    assert tree(zk.look) == before, "no node written, added or removed anywhere"

    # The same host as the first one's user registers: it was the user that was refused.
    runs.append(zk.run("sync", "--zookeeper-user", f"{ALICE[0]}:{ALICE[1]}", HOST_IP=other_ip))
    assert runs[-1].returncode == 0 and "added 1" in runs[-1].stdout, runs[-1].stderr
    seconds = {path: value.replace(f"{zk.host_ip}:", f"{other_ip}:") for path, value in zk.web_keys(second).items()
               if not path.endswith("/port")}  # the port key stays the first host's, which still uses it
    assert zk.keys() == {**firsts, **seconds}
    assert ALICE[1] not in shown(runs, zk) and BOB[1] not in shown(runs, zk)


@server_fixture(scope="module")
def tls_zookeeper(tmp_path_factory, certs):
    """A ZooKeeper with a secure client port that requires a client certificate (and a plain one to look with)."""
    server = ZooKeeper(tmp_path_factory.mktemp("zk-tls"), max_session_timeout_ms=MAX_SESSION_SECONDS * 1000,
                       tls=certs)
    yield server.start()
    server.stop()


@pytest.fixture
def zk_tls(engine, tls_zookeeper, tmp_path):
    yield from world_on(tls_zookeeper, engine, tmp_path)


def test_over_tls_a_run_with_the_ca_and_a_client_certificate_registers(zk_tls, certs):
    zk = zk_tls
    cid = zk.docker_run("-P", "local/web")
    secure = zk.server.secure_endpoint
    cert, key = certs.clients["docker-register"]
    trusted = ("--zookeeper", secure, "--zookeeper-cacert", str(certs.ca))
    refused = zk.run("sync", "--timeout", "1", *trusted)  # the secure port wants a client certificate too
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith(f"docker-register: error: zookeeper at {secure}: connect: "), refused.stderr
    assert zk.keys() == {}

    result = zk.sync(*trusted, "--zookeeper-cert", str(cert), "--zookeeper-key", str(key))
    assert "added 2, updated 0, removed 0, unchanged 0" in result.stdout
    assert zk.keys() == zk.web_keys(cid)
    assert {zk.holder(path) for path in zk.keys()} == {zk.session()}
    zxid = zk.server.zxid()
    result = zk.sync(ZOOKEEPER_HOSTS=secure, ZOOKEEPER_CACERT=str(certs.ca), ZOOKEEPER_CERT=str(cert),
                     ZOOKEEPER_KEY=str(key))  # the environment twins; the session re-attached over TLS
    assert "added 0, updated 0, removed 0, unchanged 2" in result.stdout
    assert zk.server.zxid() == zxid


def test_a_wrong_ca_for_zookeeper_is_one_line_and_exit_1(zk_tls, certs, tmp_path):
    zk = zk_tls
    zk.docker_run("-P", "local/web")
    stranger = Certs(tmp_path / "another-ca")
    cert, key = certs.clients["docker-register"]
    secure = zk.server.secure_endpoint
    started = time.monotonic()
    result = zk.run("sync", "--timeout", "1", "--zookeeper", secure, "--zookeeper-cacert", str(stranger.ca),
                    "--zookeeper-cert", str(cert), "--zookeeper-key", str(key))
    assert time.monotonic() - started < 1 + 3
    assert result.returncode == 1 and result.stdout == "", result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"docker-register: error: zookeeper at {secure}: connect: "), result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr, "the reason is the certificate, not a timeout"
    assert zk.keys() == {} and not zk.state_file.exists()


# The same guarantee as test_redis's twin, on this store's nodes ("zookeeper" is a name only this store reserves).
def test_hostile_labels_are_skipped_or_cleaned_while_the_rest_register(zk):
    good = zk.docker_run("-P", "local/web")
    for label in ["a/b/../../c", "..", "x\ny", "ünïcødé", "x" * 10_000, "   ", "$(rm -rf /)", "zookeeper"]:
        zk.docker_run("-P", "-l", f"SERVICE_NAME={label}", "local/web")
    result = zk.run("sync")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    keys = zk.keys()
    for path in keys:
        service, leaf = path[len(zk.prefix) + 1:].split("/")
        assert service.strip(".-") and leaf
    assert f"{zk.prefix}/web/{good[:12]}" in keys and f"{zk.prefix}/a-b-..-..-c/port" in keys
    assert f"{zk.prefix}/zookeeper/port" in keys  # only the root /zookeeper is ZooKeeper's own


def test_nested_traefik_labels_keep_the_keys_below(zk):
    prefix = f"traefik-z{next(_numbers):04d}"
    cid = zk.docker_run("-P", "-l", "traefik.http.routers.web.rule=Host(`a.example`)",
                        "-l", "traefik.http.routers.web.tls=true", "-l", "traefik.http.routers.web.tls.certresolver=le",
                        "local/web")
    result = zk.sync("--layout", "traefik", DOCKER_REGISTER_PREFIX=prefix)
    assert f"{prefix}/http/routers/web/tls has keys below it" in result.stderr
    keys = zk.keys("/" + prefix)
    assert keys[f"/{prefix}/http/routers/web/tls/certresolver"] == "le"
    assert f"/{prefix}/http/routers/web/tls" not in keys
    assert keys[f"/{prefix}/http/services/web/loadbalancer/servers/{cid[:12]}/url"].startswith("http://")
    zxid = zk.server.zxid()
    zk.sync("--layout", "traefik", DOCKER_REGISTER_PREFIX=prefix)
    assert zk.server.zxid() == zxid


# --- through a real Traefik ------------------------------------------------------------------


@server_fixture
def zk_edge(zk, tmp_path):
    """A Traefik whose zooKeeper provider reads a root of the test's own (with a harmless node in it first:
    an empty root makes the provider back off), and this machine's address as the host's."""
    root = f"traefik-z{next(_numbers):04d}"
    zk.look.create(f"/{root}/docker-register-tests", b"x", makepath=True)
    traefik = Traefik(tmp_path / "traefik", [zk.server.endpoint], root_key=root, provider="zooKeeper")
    try:
        traefik.start()
        yield Edge(zk, traefik, bridge_ip(zk.engine))
    finally:
        zxid = zk.server.zxid()
        traefik.stop()
        # Traefik leaves its session to expire (3 s): wait for that write, so it does not land in the Zxid
        # another test compares.
        wait_until(lambda: zk.server.zxid() > zxid, 15, "traefik's session to expire")


def test_traefik_reaches_the_registered_containers_and_after_a_stop_only_the_rest(zk, zk_edge):
    leaving, staying = start_web(zk.engine, *WEB_LABELS), start_web(zk.engine, *WEB_LABELS)
    zk_edge.sync()
    zk_edge.wait_servers({published_url(zk.engine, cid, zk_edge.host_ip) for cid in (leaving, staying)})
    served_by_both(zk_edge, leaving, staying)

    zk.engine.docker("stop", "--time", "1", leaving)
    zk_edge.sync()
    zk_edge.wait_servers({published_url(zk.engine, staying, zk_edge.host_ip)})
    assert zk_edge.answers() == Counter({(200, staying): REQUESTS})


def test_traefik_drops_a_dead_hosts_servers_once_the_leader_has_swept_its_folders(zk, zk_edge, second_engine,
                                                                                   tmp_path):
    """ZooKeeper keeps the folder of an expired ephemeral key, and Traefik's provider watches only its root's
    children: the live hosts' leader deletes what a dead host left and signals the root."""
    there_ip = bridge_ip(second_engine)
    staying, dying = start_web(zk.engine, *WEB_LABELS), start_web(second_engine, *WEB_LABELS)
    alone = start_web(second_engine, "-l", "SERVICE_NAME=alone")  # a service only the dying host serves
    there = zk_edge.env(second_engine, there_ip, str(tmp_path / "there" / "sync.lock"))
    zk_edge.sync()
    zk_edge.sync()  # the first host's session is the lowest: the leader looks first
    zk.sync("--layout", "traefik", **there, DOCKER_REGISTER_TTL="2")
    zk_edge.wait_servers({published_url(zk.engine, staying, zk_edge.host_ip),
                          published_url(second_engine, dying, there_ip)})
    zxid = zk.server.zxid()
    zk_edge.sync()
    assert zk.server.zxid() == zxid, "a host that joined is no departure: the leader writes nothing"

    # The second host dies: its container stops answering, its runs stop, its session expires after 2 s.
    second_engine.docker("stop", "--time", "1", dying, alone)
    folder = f"/{zk_edge.root}/http/services/web/loadbalancer/servers/{dying[:12]}"
    wait_until(lambda: not zk.look.get_children(folder), 15, "the dead host's session to expire")
    assert zk.look.exists(folder), "ZooKeeper keeps the folder of an expired key"
    zk_edge.sync()
    assert not zk.look.exists(folder) and not zk.look.exists(f"/{zk_edge.root}/http/services/alone")
    zk_edge.wait_servers({published_url(zk.engine, staying, zk_edge.host_ip)})
    assert zk_edge.answers() == Counter({(200, staying): REQUESTS})


#: Keys of the shapes labels give Traefik's blocks: routers with TLS options and a certificate resolver,
#: middlewares, a headers map, sticky cookies, TCP with TLS passthrough, UDP.
BLOCKS = {
    "http/routers/web/rule": "Host(`a.example`)", "http/routers/web/middlewares": "strip,hdr",
    "http/routers/web/tls/certresolver": "le", "http/routers/web/service": "web",
    "http/routers/web2/rule": "Host(`b.example`)", "http/routers/web2/tls/options": "default",
    "http/routers/web2/tls/domains/0/main": "b.example", "http/routers/web2/service": "web",
    "http/middlewares/strip/stripprefix/prefixes": "/a,/b",
    "http/middlewares/hdr/headers/customrequestheaders/X-Foo": "bar",
    "http/services/web/loadbalancer/servers/abc123abc123/url": "http://127.0.0.1:9",
    "http/services/web/loadbalancer/servers/012345678901/url": "http://127.0.0.1:10",
    "http/services/web/loadbalancer/sticky/cookie/name": "c",
    "tcp/routers/t/rule": "HostSNI(`*`)", "tcp/routers/t/tls/passthrough": "true", "tcp/routers/t/service": "t",
    "tcp/services/t/loadbalancer/servers/abc123abc123/address": "127.0.0.1:9",
    "udp/services/u/loadbalancer/servers/abc123abc123/address": "127.0.0.1:9",
}


#: The parts of Traefik's raw configuration the blocks make.
SECTIONS = ("routers", "middlewares", "services", "tcpRouters", "tcpServices", "udpServices")


def test_folders_holding_true_give_traefik_the_same_routing_for_a_fraction_of_the_reads(zk, zk_edge):
    """Traefik's provider reads every node's value and an empty one six times: docker-register's folders hold
    "true", which Traefik's configuration reader takes as "this block is on" whatever the block."""
    root = f"/{zk_edge.root}"
    for key, value in BLOCKS.items():
        zk.look.create(f"{root}/{key}", value.encode(), makepath=True)
    folders = {f"{root}/{key}".rsplit("/", depth)[0] for key in BLOCKS for depth in range(1, key.count("/") + 1)}
    nodes = folders | {f"{root}/{key}" for key in BLOCKS}

    def requests_until_quiet(since: int, at_least: int) -> int:
        """Requests the server received since a count, once there were at least that many more and then none for
        half a second (the srvr command that counts them is one request)."""
        counts = [since, since]

        def quiet() -> bool:
            time.sleep(0.25)
            counts.append(zk.server.received())
            return counts[-1] - since >= at_least and counts[-1] - counts[-3] <= 4
        wait_until(quiet, 20, "traefik to be done reading the tree")
        return counts[-1] - since

    def read_by_traefik(value: bytes) -> tuple[dict, int]:
        """Traefik's configuration once it has read the tree again with folders holding value; requests sent."""
        for folder in folders:
            zk.look.set(folder, value)
        requests_until_quiet(zk.server.received(), 0)  # what the tree's making or the last read set off
        received = zk.server.received()
        zk.look.create(f"{root}/signal", ephemeral=True)  # the root's children change: Traefik lists the tree
        zk.look.delete(f"{root}/signal")
        sent = requests_until_quiet(received, len(nodes))
        wait_until(lambda: "web@zookeeper" in zk_edge.traefik.api("/api/rawdata").get("routers", {}), 15,
                   "traefik to run the routers")
        raw = zk_edge.traefik.api("/api/rawdata")
        return {section: raw.get(section) for section in SECTIONS}, sent

    empty, empty_reads = read_by_traefik(b"")
    valued, valued_reads = read_by_traefik(dr.ZOOKEEPER_FOLDER)
    assert valued == empty
    assert valued["routers"]["web@zookeeper"]["tls"] == {"certResolver": "le"}
    assert valued["middlewares"]["hdr@zookeeper"]["headers"] == {"customRequestHeaders": {"X-Foo": "bar"}}
    assert valued_reads * 2 < empty_reads, (valued_reads, empty_reads)


def departed_host(zk: ZkWorld, *paths: str) -> None:
    """Another host's session that announces itself, makes these keys (and their folders) and ends."""
    client = zk.server.client()
    for path in paths:
        client.create(path, b"x", ephemeral=True, makepath=True)
    client.create(f"{dr.zookeeper_hosts_folder(zk.prefix)}/{client.client_id[0]:x}", ephemeral=True)
    zk.sync()  # a host joined: the leader notes it, no departure
    client.stop()  # it departs: its session ends, its keys go, ZooKeeper keeps their folders
    client.close()


def test_the_leaders_sweep_deletes_only_folders_nothing_is_below_any_more(zk):
    cid = zk.docker_run("-P", "local/web")
    zk.sync()
    zk.sync()  # the leader's first look
    kept = {f"{zk.prefix}/empty-key": b"", f"{zk.prefix}/valued": b"v", f"{zk.prefix}/in/a/folder": b"v"}
    for path, data in kept.items():
        zk.look.create(path, data, makepath=True)
    departed_host(zk, f"{zk.prefix}/gone/a/b/key", f"{zk.prefix}/in/gone/key")
    emptied = {f"{zk.prefix}/gone/a/b", f"{zk.prefix}/in/gone"}
    before = zk.keys()
    assert emptied <= set(before), "ZooKeeper keeps the folders of expired keys"
    before = {path: data for path, data in before.items() if path not in emptied}
    zk.sync()
    assert not zk.look.exists(f"{zk.prefix}/gone") and not zk.look.exists(f"{zk.prefix}/in/gone")
    assert zk.keys() == before and all(zk.look.exists(path) for path in kept)
    assert f"{zk.prefix}/web/{cid[:12]}" in before
    zxid = zk.server.zxid()
    zk.sync()
    assert zk.server.zxid() == zxid, "swept once: the next run writes nothing"


def test_when_the_leader_dies_the_next_host_takes_over_and_sweeps(zk, second_engine, tmp_path):
    prefix = zk.prefix.lstrip("/")
    here = {"DOCKER_REGISTER_PREFIX": prefix, "HOST_IP": bridge_ip(zk.engine)}
    there = {**here, "HOST_IP": bridge_ip(second_engine), "DOCKER_HOST": second_engine.host,
             "DOCKER_REGISTER_TTL": "2", "DOCKER_REGISTER_LOCK": str(tmp_path / "there" / "sync.lock")}
    leader = start_web(second_engine, *WEB_LABELS)
    zk.sync("--layout", "traefik", **there)
    zk.sync("--layout", "traefik", **there)  # the leader's first look
    start_web(zk.engine, *WEB_LABELS)
    zk.sync("--layout", "traefik", **here)
    zk.sync("--layout", "traefik", **here)
    state = Path(dr.zookeeper_state_file(str(zk.lock_file), here["HOST_IP"], prefix))
    assert "watched" not in json.loads(state.read_text()), "not the leader yet"

    second_engine.docker("stop", "--time", "1", leader)
    folder = f"/{prefix}/http/services/web/loadbalancer/servers/{leader}"
    wait_until(lambda: not zk.look.get_children(folder), 15, "the leader's session to expire")
    zk.sync("--layout", "traefik", **here)
    assert not zk.look.exists(folder)
    assert "watched" in json.loads(state.read_text())


def test_a_key_goes_where_a_departed_hosts_folder_was_left_empty(zk):
    leader = zk.other_host()  # a live host of a lower session leads, so this host sweeps nothing itself
    leader.create(f"{dr.zookeeper_hosts_folder(zk.prefix)}/{leader.client_id[0]:x}", ephemeral=True, makepath=True)
    cid = zk.docker_run("-P", "local/web")
    departed = zk.server.client()
    departed.create(f"{zk.prefix}/web/{cid[:12]}/below", b"x", ephemeral=True, makepath=True)
    departed.stop()
    departed.close()
    result = zk.sync()
    assert "added 2" in result.stdout
    assert zk.keys()[f"{zk.prefix}/web/{cid[:12]}"].startswith(zk.host_ip + ":")


# --- the pieces, each on its own: session, fleet, store --------------------------------------------


@pytest.fixture
def sessions(zookeeper, tmp_path):
    """Makes ZooKeeperSessions on the shared server, a state file each in tmp_path; every session one of them
    kept is ended after the test (re-attached first), so that none expires and writes during a later test."""
    made = []

    def session(name: str = "host", ttl: int | None = 10) -> dr.ZooKeeperSession:
        made.append(dr.ZooKeeperSession(dr.ZooKeeperSettings(zookeeper.endpoint, str(tmp_path / f"{name}.session")),
                                        ttl, 5.0))
        return made[-1]

    yield session
    for made_one in made:
        made_one.close()
        if Path(made_one.settings.state_file).is_file():
            leftover = dr.ZooKeeperSession(made_one.settings, None, 5.0)
            leftover.client
            leftover.end()


def test_a_session_kept_in_the_state_file_is_reattached_by_the_next_one_without_a_write(zookeeper, sessions):
    first = sessions()
    assert first.id and not first.kept and first.saved is None  # no state file: a new session, not kept yet
    first.save()
    assert first.kept and stat.S_IMODE(Path(first.settings.state_file).stat().st_mode) == 0o600
    session = first.id
    first.close()  # left open for the next run
    moved = []
    for _ in range(3):  # the server is shared: another test's session that expires meanwhile moves the Zxid too
        zxid = zookeeper.zxid()
        again = sessions()
        assert again.id == session and again.kept
        moved.append(zookeeper.zxid() - zxid)
        if not moved[-1]:
            break
        again.close()
    assert moved[-1] == 0, f"re-attaching writes nothing (the Zxid moved by {moved})"
    again.end()
    assert not Path(again.settings.state_file).exists() and not again.kept
    assert f"0x{session:x}" not in zookeeper.four_letter("dump")  # closed, not left to expire


def test_a_state_file_that_is_not_one_means_a_new_session_and_one_that_cannot_be_written_exit_1(sessions, tmp_path):
    (tmp_path / "host.session").write_text("not json")
    garbled = sessions()
    assert garbled.id and not garbled.kept and garbled.saved is None
    (tmp_path / "a-file").write_text("")
    unwritable = sessions("a-file/host")
    with pytest.raises(dr.ZooKeeperError) as raised:
        unwritable.save()
    assert raised.value.exit_code == 1 and "--zookeeper-state: cannot write" in str(raised.value)
    assert not unwritable.kept


def test_a_sessions_requests_list_its_nodes_and_a_moved_node_is_a_conflict(zookeeper, sessions):
    session, root = sessions(), f"/z-pieces-{next(_numbers)}"
    session.commit("write keys", [("create", root, b""), ("create", f"{root}/a", b"1", None, True),
                                  *session.signal(root)])
    other = zookeeper.client()
    try:
        other.create(f"{root}/b", b"2", ephemeral=True)
        assert session.ephemerals(root) == [f"{root}/a"], "its own nodes only"
        with pytest.raises(dr.Conflict):
            session.commit("write keys", [("set_data", f"{root}/a", b"3", 7)])  # not the version read
        assert session.read_many("read keys", [(dr.GET_DATA, f"{root}/a"), (dr.GET_DATA, f"{root}/gone")])[1] is None
    finally:
        other.stop()
        other.close()


def presence(zookeeper, root: str) -> set[str]:
    client = zookeeper.client()
    try:
        return set(client.get_children(dr.zookeeper_hosts_folder(root)))
    finally:
        client.stop()
        client.close()


def test_the_fleet_announces_a_host_once_and_only_the_lowest_session_sweeps(zookeeper, sessions):
    prefix = f"/z-fleet-{next(_numbers)}"
    first, second = sessions("first"), sessions("second")  # made in this order: the first has the lower id
    fleets = [dr.ZooKeeperFleet(session, prefix, dr.DISCOVER) for session in (first, second)]
    look, departing = zookeeper.client(), zookeeper.client()
    try:
        for session, fleet in zip((first, second), fleets):
            session.save()
            fleet.check_in()
        assert presence(zookeeper, prefix) == {f"{first.id:x}", f"{second.id:x}"}
        folder = look.exists(dr.zookeeper_hosts_folder(prefix))
        for fleet in reversed(fleets):
            fleet.check_in()
            fleet.sweep_if_leader()
        # (The folder's own stat, not the server's Zxid: the server is shared with other tests' sessions.)
        assert look.exists(dr.zookeeper_hosts_folder(prefix)) == folder, "listed already: nothing written"
        assert not look.exists(prefix), "no departure: nothing swept, the root not signalled"
        assert first.saved.watched is not None and second.saved.watched is None, "the first is the leader"

        departing.create(f"{prefix}/web/{'d' * 12}", b"10.0.0.9:80", ephemeral=True, makepath=True)
        departing.create(f"{dr.zookeeper_hosts_folder(prefix)}/{departing.client_id[0]:x}", ephemeral=True)
        fleets[0].check_in()
        fleets[0].sweep_if_leader()  # a host joined: no departure
        departing.stop()
        fleets[1].check_in()
        fleets[1].sweep_if_leader()
        assert look.exists(f"{prefix}/web"), "not the leader: it sweeps nothing"
        fleets[0].check_in()
        fleets[0].sweep_if_leader()
        assert not look.exists(f"{prefix}/web"), "the leader deleted the folder the departed host left"
    finally:
        for client in (look, departing):
            client.stop()
            client.close()


def test_keeping_the_store_alive_sweeps_nothing_the_sweep_is_a_step_of_its_own(zookeeper, tmp_path):
    from fakes import FakeDocker, config, web

    prefix, lock = f"/z-steps-{next(_numbers)}", tmp_path / "sync.lock"
    settings = dr.Settings(backend=dr.BackendName.zookeeper, zookeeper=zookeeper.endpoint)
    cfg = config(tmp_path, ttl=10, prefix=prefix, lock_file=str(lock), backend="zookeeper", timeout=5.0,
                 zookeeper=dr.zookeeper_settings(settings, prefix, str(lock), "192.0.2.41"))
    departing, look = zookeeper.client(), zookeeper.client()

    def run():
        store, close = dr.open_store(cfg)
        try:
            return dr.reconcile(cfg, FakeDocker([web(1, 32769)]), store, dry_run=False)
        finally:
            close()

    try:
        run()
        run()  # the leader's first look
        folder = f"{prefix}/web/{'d' * 12}"
        departing.create(f"{folder}/below", b"x", ephemeral=True, makepath=True)
        departing.create(f"{dr.zookeeper_hosts_folder(prefix)}/{departing.client_id[0]:x}", ephemeral=True)
        run()  # a host joined: no departure
        departing.stop()
        store, close = dr.open_store(cfg)
        try:
            assert store.keep_alive(store.host_lease(cfg)) is True
            assert look.exists(folder), "keep_alive kept the session alive and swept nothing"
            store.sweep_departed()
            assert not look.exists(folder)
        finally:
            close()
    finally:
        for client in (departing, look):
            client.stop()
            client.close()
        ended = dr.ZooKeeperSession(cfg.zookeeper, None, 5.0)
        ended.client
        ended.end()


# --- what a run costs ----------------------------------------------------------------------------


def test_a_run_with_nothing_changed_sends_as_many_requests_at_300_keys_as_at_10(zookeeper, tmp_path, monkeypatch):
    """Reads go in multiRead requests and the session's nodes are listed in one GetEphemerals: the count of
    requests (each kazoo call, counted in this process; connecting and pings are not calls) stays flat."""
    from kazoo.client import KazooClient

    from fakes import FakeDocker, config, web

    sent, call = Counter(), KazooClient._call
    monkeypatch.setattr(KazooClient, "_call", lambda self, request, pending: (
        sent.update([type(request).__name__]), call(self, request, pending))[1])
    counts = {}
    for n in (10, 300):
        prefix, lock = f"/z-requests-{next(_numbers)}", tmp_path / f"{n}.lock"
        settings = dr.Settings(backend=dr.BackendName.zookeeper, zookeeper=zookeeper.endpoint)
        cfg = config(tmp_path, ttl=10, prefix=prefix, lock_file=str(lock), backend="zookeeper", timeout=5.0,
                     zookeeper=dr.zookeeper_settings(settings, prefix, str(lock), "192.0.2.40"))
        docker = FakeDocker([web(i, 32768 + i) for i in range(n)])
        for run in range(3):  # the first sync, the leader's first look, then the run counted
            sent.clear()
            store, close = dr.open_store(cfg)
            try:
                outcome = dr.reconcile(cfg, docker, store, dry_run=False)
            finally:
                close()
        assert outcome.plan.changes == () and outcome.plan.unchanged == n + 1
        counts[n] = Counter(sent)
    assert counts[10] == counts[300], counts
    assert sum(counts[300].values()) <= 5, counts
