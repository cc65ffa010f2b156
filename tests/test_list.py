"""`docker-register list`: what the store holds, by service, with what a person should look at flagged.

The unit tier feeds the pure listing plain `Held` values shaped as each store's adapter returns them (etcd: a
key's lease from its metadata; ZooKeeper and Redis: a shared key's lease is the host claiming it), and runs the
command on the in-memory etcd of tests/fakes.py after real syncs on it. The integration tier runs the installed
CLI against a real etcd, ZooKeeper and Redis after real `sync` runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import typer.main

import docker_register as dr
from fakes import FakeDocker, FakeEtcd, config, port, web
from fakes import container as engine_container

A, B, C = "10.0.0.5", "10.0.0.6", "10.0.0.7"
PREFIX = "/backends"
LEASE_A, LEASE_B, LEASE_C = (dr.lease_id_for(ip, PREFIX) for ip in (A, B, C))


def kv(value: str, lease: int) -> dr.StoredKey:
    return dr.StoredKey(value, lease, 1)


def listed(held: dr.Held, layout: dr.Layout = dr.DISCOVER, prefix: str = PREFIX, wanted=None, notes=()):
    return dr.listing(held, prefix, layout, wanted, notes)


def flags(listing: dr.Listing) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for flag in listing.flags:
        found.setdefault(flag.key, set()).add(flag.kind.value)
    return found


def entry(listing: dr.Listing, key: str) -> dr.Listed:
    return next(e for e in listing.entries if e.key == key)


def two_hosts_on_etcd(**extra: dr.StoredKey) -> dr.Held:
    """Hosts A (two web servers) and B (one), web's port key on the lease A derives for it, as sync leaves them."""
    port_key = f"{PREFIX}/web/port"
    keys = {f"{PREFIX}/web/aaaaaaaaaaa1": kv(f"{A}:32768", LEASE_A),
            f"{PREFIX}/web/aaaaaaaaaaa2": kv(f"{A}:32769", LEASE_A),
            f"{PREFIX}/web/bbbbbbbbbbb1": kv(f"{B}:32768", LEASE_B),
            port_key: kv("80", dr.shared_lease_id(A, port_key)),
            **extra}
    live = {kv.lease: 30.0 for kv in keys.values() if kv.lease}
    return dr.Held(keys, live)


# --- the listing: servers, shared keys, hosts --------------------------------------------------


def test_servers_are_listed_under_their_service_with_the_host_holding_them_and_its_time_left():
    listing = listed(two_hosts_on_etcd())
    servers = [(e.name, e.value, e.lease, e.expires) for e in listing.entries if not e.shared]
    assert servers == [("aaaaaaaaaaa1", f"{A}:32768", LEASE_A, 30.0), ("aaaaaaaaaaa2", f"{A}:32769", LEASE_A, 30.0),
                       ("bbbbbbbbbbb1", f"{B}:32768", LEASE_B, 30.0)]
    assert {e.service for e in listing.entries} == {"web"}
    assert listing.addresses == {LEASE_A: A, LEASE_B: B}  # each lease id is the one the IP derives
    assert listing.flags == ()


def test_a_shared_key_names_the_host_whose_ip_derives_its_lease_and_the_live_hosts_using_it():
    listing = listed(two_hosts_on_etcd())
    port_key = entry(listing, f"{PREFIX}/web/port")
    assert port_key.shared and port_key.host == LEASE_A and port_key.users == tuple(sorted((LEASE_A, LEASE_B)))
    assert port_key.expires == 30.0  # its own lease's time left


def test_a_shared_key_whose_writer_is_gone_is_kept_by_its_users_and_not_flagged():
    port_key = f"{PREFIX}/web/port"
    held = two_hosts_on_etcd(**{port_key: kv("80", dr.shared_lease_id(C, port_key))})
    held = dataclasses.replace(held, live={**held.live, dr.shared_lease_id(C, port_key): 12.0})
    listing = listed(held)
    assert entry(listing, port_key).host == 0 and entry(listing, port_key).expires == 12.0
    assert listing.flags == ()


def test_an_old_shared_key_on_its_writers_host_lease_names_that_host():
    held = two_hosts_on_etcd(**{f"{PREFIX}/web/port": kv("80", LEASE_B)})
    assert entry(listed(held), f"{PREFIX}/web/port").host == LEASE_B


# --- what it flags ---------------------------------------------------------------------------


def test_a_key_on_no_lease_is_an_orphan():
    manual = f"{PREFIX}/web/manual"
    listing = listed(two_hosts_on_etcd(**{manual: kv("10.9.9.9:80", 0)}))
    assert flags(listing) == {manual: {"orphan"}}
    assert "no host holds it" in listing.flags[0].text


def test_keys_of_a_host_whose_lease_is_gone_are_orphans_and_no_longer_use_the_shared_key():
    held = two_hosts_on_etcd()
    held = dataclasses.replace(held, live={lease: ttl for lease, ttl in held.live.items() if lease != LEASE_B})
    listing = listed(held)
    assert flags(listing) == {f"{PREFIX}/web/bbbbbbbbbbb1": {"orphan"}}
    assert entry(listing, f"{PREFIX}/web/port").users == (LEASE_A,)
    assert f"lease {LEASE_B:x}, whose host is gone" in listing.flags[0].text


def test_a_shared_key_no_live_host_serves_is_flagged_unused():
    held = two_hosts_on_etcd(**{f"{PREFIX}/api/port": kv("8080", dr.shared_lease_id(A, f"{PREFIX}/api/port"))})
    held = dataclasses.replace(held, live={**held.live, dr.shared_lease_id(A, f"{PREFIX}/api/port"): 9.0})
    listing = listed(held)
    assert flags(listing) == {f"{PREFIX}/api/port": {"unused"}}
    assert "no live host serves api" in listing.flags[0].text


def test_one_address_under_two_hosts_is_a_collision_on_both_keys():
    twin = f"{PREFIX}/web/ccccccccccc1"
    held = two_hosts_on_etcd(**{twin: kv(f"{A}:32768", LEASE_C)})
    held = dataclasses.replace(held, live={**held.live, LEASE_C: 30.0})
    listing = listed(held)
    assert flags(listing) == {f"{PREFIX}/web/aaaaaaaaaaa1": {"collision"}, twin: {"collision"}}
    assert f"address {A}:32768 is registered by 2 hosts" in listing.flags[0].text


def test_one_container_id_under_two_hosts_is_a_collision():
    held = two_hosts_on_etcd(**{f"{PREFIX}/api/bbbbbbbbbbb1": kv(f"{A}:40000", LEASE_A)})
    assert flags(listed(held)) == {f"{PREFIX}/api/bbbbbbbbbbb1": {"collision"},
                                   f"{PREFIX}/web/bbbbbbbbbbb1": {"collision"}}


def test_a_container_registered_twice_by_one_host_is_no_collision():
    # A container publishing two ports appears twice (web-80, web-443) on the same host: that is normal.
    held = two_hosts_on_etcd(**{f"{PREFIX}/web-443/aaaaaaaaaaa1": kv(f"{A}:32800", LEASE_A)})
    assert listed(held).flags == ()


def test_notes_of_this_host_are_flags_without_a_key():
    listing = listed(two_hosts_on_etcd(), notes=("/backends/web/port is '80', set by another host; ...",))
    assert [(f.kind, f.key) for f in listing.flags] == [(dr.FlagKind.NOTE, "")]
    assert listing.flags[0].text.startswith("this host: /backends/web/port")


def test_keys_of_another_shape_are_listed_apart_and_flagged_only_when_no_host_holds_them():
    deep, loose = f"{PREFIX}/web/aaaaaaaaaaa1/extra", f"{PREFIX}/loose"
    listing = listed(two_hosts_on_etcd(**{deep: kv("x", LEASE_A), loose: kv("y", 0)}))
    assert {(e.key, e.service, e.name) for e in listing.entries if e.service is None} == {
        (deep, None, "web/aaaaaaaaaaa1/extra"), (loose, None, "loose")}
    assert flags(listing) == {loose: {"orphan"}}
    assert listing.entries[-2:] == tuple(sorted(listing.entries[-2:], key=lambda e: e.name))  # listed last


# --- --service ---------------------------------------------------------------------------------


def test_a_service_narrows_the_listing_its_flags_and_the_leases_whose_time_is_asked():
    held = two_hosts_on_etcd(**{f"{PREFIX}/api/ccccccccccc1": kv(f"{C}:1", LEASE_C), f"{PREFIX}/api/x": kv("y", 0)})
    listing = listed(held, wanted="web")
    assert {e.service for e in listing.entries} == {"web"} and listing.flags == ()
    assert listed(held, wanted="api").flags[0].key == f"{PREFIX}/api/x"
    assert dr.listed_leases(held.keys, PREFIX, dr.DISCOVER, "api") == {LEASE_C}
    assert dr.listed_leases(held.keys, PREFIX, dr.DISCOVER, None) == {kv.lease for kv in held.keys.values() if kv.lease}


# --- other layouts and stores ------------------------------------------------------------------------


def traefik(*parts: str) -> str:
    return "/".join(("traefik", *parts))


def test_traefik_routers_and_middlewares_are_listed_under_the_service_their_router_names():
    server = traefik("http/services/web/loadbalancer/servers/aaaaaaaaaaa1/url")
    rule, service, middlewares = (traefik(f"http/routers/front/{leaf}") for leaf in ("rule", "service", "middlewares"))
    auth = traefik("http/middlewares/auth/basicauth/users")
    tcp = traefik("tcp/services/db/loadbalancer/servers/aaaaaaaaaaa1/address")
    lonely = traefik("http/routers/nobody/rule")
    keys = {server: kv(f"http://{A}:32768", LEASE_A), tcp: kv(f"{A}:5432", LEASE_A),
            rule: kv("Host(`web.example`)", 77), service: kv("Web", 78), middlewares: kv("auth", 79),
            auth: kv("u:p", 80), lonely: kv("Host(`x`)", 81)}
    listing = listed(dr.Held(keys, {lease: 5.0 for lease in (LEASE_A, 77, 78, 79, 80, 81)}), dr.TRAEFIK, "traefik")
    by_key = {e.key: (e.service, e.name, e.shared) for e in listing.entries}
    assert by_key[server] == ("web", "aaaaaaaaaaa1", False) and by_key[tcp] == ("tcp/db", "aaaaaaaaaaa1", False)
    assert by_key[rule] == ("web", "http/routers/front/rule", True) and by_key[auth][0] == "web"
    assert entry(listing, rule).users == (LEASE_A,) and entry(listing, auth).users == (LEASE_A,)
    assert by_key[lonely][0] == "" and flags(listing) == {lonely: {"unused"}}
    assert {e.service for e in listed(dr.Held(keys, {LEASE_A: 5.0}), dr.TRAEFIK, "traefik", wanted="db").entries} == {
        "tcp/db"}


def test_skydns_keys_are_listed_under_their_dns_label():
    key = "/skydns/local/docker/web/aaaaaaaaaaa1"
    value = json.dumps({"host": A, "port": 32768, "ttl": 30})
    lease = dr.lease_id_for(A, "/skydns")
    listing = listed(dr.Held({key: kv(value, lease)}, {lease: 3.0}), dr.SKYDNS, "/skydns")
    assert [(e.service, e.name, e.lease) for e in listing.entries] == [("web", "aaaaaaaaaaa1", lease)]
    assert listing.addresses == {lease: A} and dr.server_address(value) == f"{A}:32768"


def claimed_store(port_lease: int, holder: str = "session") -> dr.Held:
    """A store whose shared keys are claimed by their writer (ZooKeeper, Redis): port's lease is its claim."""
    keys = {f"{PREFIX}/web/aaaaaaaaaaa1": kv(f"{A}:32768", 0x51), f"{PREFIX}/web/port": kv("80", port_lease)}
    return dr.Held(keys, {0x51: None, 0x52: None}, holder, claims=True)


def test_on_a_store_of_claims_a_shared_key_names_its_claim_and_shows_no_time_of_its_own():
    listing = listed(claimed_store(0x52))
    port_key = entry(listing, f"{PREFIX}/web/port")
    assert (port_key.host, port_key.users, port_key.expires) == (0x52, (0x51,), None)
    assert listing.flags == () and listing.addresses == {}  # a session's id derives from no IP


def test_on_a_store_of_claims_an_unclaimed_shared_key_in_use_is_fine_and_one_claimed_by_nothing_is_an_orphan():
    assert listed(claimed_store(dr.UNCLAIMED)).flags == ()
    assert entry(listed(claimed_store(dr.UNCLAIMED)), f"{PREFIX}/web/port").host == 0
    assert flags(listed(claimed_store(0, "index"))) == {f"{PREFIX}/web/port": {"orphan"}}
    assert "on no index" in listed(claimed_store(0, "index")).flags[0].text


# --- small helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize("value, address", [
    ("10.0.0.5:80", "10.0.0.5:80"), ("http://10.0.0.5:80", "10.0.0.5:80"),
    ("https://[2001:db8::5]:443", "[2001:db8::5]:443"),
    ('{"host": "2001:db8::5", "port": 53, "ttl": 30}', "[2001:db8::5]:53"), ('{"host": 1}', ""), ("{", ""),
])
def test_the_address_of_a_server_value_in_every_layout(value, address):
    assert dr.server_address(value) == address


def test_keys_in_finds_exactly_the_keys_a_scan_of_every_folder_finds():
    ordered = sorted(["/a/x/1", "/a/x/2", "/a/xy/1", "/a/y/1", "/b/x/1", "/a/x"])
    for folders in (["/a/x/"], ["/a/"], ["/a/x/", "/a/y/"], ["/c/"], ["/a/x/", "/a/"], []):
        assert sorted(dr.keys_in(folders, ordered)) == sorted(
            set(key for key in ordered if any(key.startswith(f) for f in folders)))


def test_the_lease_of_this_host_is_the_one_its_own_keys_are_on():
    keys = {"/k/1": kv("a", 7), "/k/2": kv("b", 7), "/k/3": kv("c", 9)}
    assert dr.lease_holding(["/k/1", "/k/2", "/k/3", "/k/4"], keys, 1) == 7
    assert dr.lease_holding(["/k/4"], keys, 1) == 1


# --- the command on the in-memory etcd, after real syncs ----------------------------------------------


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("ETCD_HOST", "HOST_IP", "DOCKER_REGISTER_PREFIX", "DOCKER_REGISTER_OUTPUT", "DOCKER_REGISTER_LAYOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # nothing listens: list never asks
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps a table to the terminal's width


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    """The in-memory etcd after host A synced web(1), web(2) and host B web(3); the CLI's store is it."""
    store = FakeEtcd()
    dr.reconcile(config(tmp_path, host_ip=A), FakeDocker([web(1), web(2, 32769)]), store, dry_run=False)
    dr.reconcile(config(tmp_path, host_ip=B), FakeDocker([web(3)]), store, dry_run=False)
    monkeypatch.setattr(dr, "open_store", lambda config, purging=False: (store, lambda: None))
    return store


def run_list(capsys, *argv: str):
    code = dr.main(["list", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_takes_every_shared_option_and_its_own():
    shared = {item.name for item in dataclasses.fields(dr.Settings)}
    assert {p.name for p in typer.main.get_command(dr.app).commands["list"].params} == shared | {"service", "this_host"}


def test_a_clean_store_lists_each_server_and_exits_0_without_a_host_ip(capsys, fleet, monkeypatch):
    monkeypatch.setattr(dr, "detect_host_ip", lambda: pytest.fail("list needs no host IP"))
    code, out, err = run_list(capsys)
    assert code == 0, err
    for n in (1, 2, 3):
        assert f"{n:012x}" in out
    assert f"lease {LEASE_A:x} ({A})" in out and f"written by lease {LEASE_A:x} ({A}), used by 2 hosts" in out
    assert out.splitlines()[-1] == ("etcd at fake: 1 service, 3 servers on 2 hosts, 1 shared key, 0 other keys; "
                                    "0 flagged")
    assert fleet.writes == {"grant": 3, "put": 4, "txn": 2}  # the syncs' writes; list wrote nothing


def test_a_flagged_store_exits_3_and_says_why(capsys, fleet):
    fleet.put(f"{PREFIX}/web/manual", "10.9.9.9:80")
    code, out, _ = run_list(capsys)
    assert code == dr.EXIT_FLAGGED == 3
    assert f"orphan: {PREFIX}/web/manual: no host holds it (on no lease); nothing removes it" in out
    assert run_list(capsys, "--service", "other")[0] == 0  # the flag is not in that service


def test_json_is_one_object_with_services_hosts_and_flags(capsys, fleet):
    fleet.put(f"{PREFIX}/web/manual", "10.9.9.9:80")
    code, out, _ = run_list(capsys, "--output", "json")
    found = json.loads(out)
    assert code == 3 and len(out.strip().splitlines()) == 1
    web_service, = found["services"]
    assert web_service["name"] == "web" and len(web_service["servers"]) == 4
    assert web_service["shared"] == [{"key": f"{PREFIX}/web/port", "value": "80", "writer": f"{LEASE_A:x}",
                                      "users": sorted([f"{LEASE_A:x}", f"{LEASE_B:x}"]), "expires": 30.0}]
    assert {(h["id"], h["ip"], h["servers"]) for h in found["hosts"]} == {(f"{LEASE_A:x}", A, 2),
                                                                          (f"{LEASE_B:x}", B, 1)}
    assert found["flags"] == [{"kind": "orphan", "key": f"{PREFIX}/web/manual",
                               "text": f"{PREFIX}/web/manual: no host holds it (on no lease); nothing removes it"}]


def test_time_left_is_asked_once_per_lease_shown_not_per_key(capsys, fleet):
    before = fleet.rpcs["lease_ttl"]
    run_list(capsys)
    assert fleet.rpcs["lease_ttl"] - before == 3  # hosts A and B, and the port key's own lease
    run_list(capsys, "--service", "nothing")
    assert fleet.rpcs["lease_ttl"] - before == 3


def test_an_empty_store_says_so_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(dr, "open_store", lambda config, purging=False: (FakeEtcd(), lambda: None))
    code, out, _ = run_list(capsys)
    assert (code, out) == (0, "nothing under /backends in etcd at fake\n")
    code, out, _ = run_list(capsys, "--service", "web")
    assert (code, out) == (0, "no service web under /backends in etcd at fake\n")


def test_this_host_flags_a_shared_key_another_host_holds_with_another_value(capsys, fleet, monkeypatch, tmp_path):
    # Host C runs web on private port 8080: sync notes that A's port key says 80, and so does list --this-host.
    other_port = engine_container(cid="c" * 64, name="web8080", ports=[port(8080, 32770)])
    monkeypatch.setattr(dr, "DockerSource", lambda timeout: FakeDocker([other_port]))
    code, out, _ = run_list(capsys, "--this-host", "--host-ip", C)
    assert code == 3
    assert f"note: this host: {PREFIX}/web/port is '80', set by another host; this host's containers use 8080" in out
    dr.reconcile(config(tmp_path, host_ip=C), FakeDocker([other_port]), fleet, dry_run=False)
    code, out, _ = run_list(capsys, "--this-host", "--host-ip", C)
    assert (code, "this host:" in out) == (3, True)  # registered now, and still at odds with the port key
    monkeypatch.setattr(dr, "DockerSource", lambda timeout: FakeDocker([web(1), web(2, 32769)]))
    assert run_list(capsys, "--this-host", "--host-ip", A)[0] == 0


def test_values_are_shown_as_they_are_never_read_as_markup(capsys, fleet):
    fleet.put(f"{PREFIX}/[bold]x/port", "[/oops] [link=http://evil]a[/link]")
    code, out, _ = run_list(capsys)
    assert code == 3 and "[/oops] [link=http://evil]a[/link]" in out and "[bold]x" in out


BAD = [(["--output", "xml"], "--output"), (["--service", " "], "--service"), (["--prefix", "rel"], "--prefix"),
       (["--etcd", "nohost"], "--etcd"), (["--no-such-flag"], "--no-such-flag"), (["--ttl", "0"], "--ttl")]


@pytest.mark.parametrize("argv, named", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flags_exit_2_with_one_line_naming_the_flag(capsys, argv, named):
    code, out, err = run_list(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("docker-register: error: ") and named in lines[0], err


def test_help_names_the_exit_code_of_a_flagged_listing(capsys):
    code, out, _ = run_list(capsys, "--help")
    assert code == 0 and "--service" in out and "--this-host" in out and "exit 3" in out and "ETCD_HOST" in out


# --- sync --dry-run with nothing to change ----------------------------------------------------------


def test_a_dry_run_with_nothing_to_change_says_so_not_an_empty_table(tmp_path, capsys):
    store, docker = FakeEtcd(), FakeDocker([web(1)])
    dr.reconcile(config(tmp_path), docker, store, dry_run=False)
    dr.print_outcome(dr.reconcile(config(tmp_path), docker, store, dry_run=True), "text")
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "nothing to change" and "┏" not in out
    dr.print_outcome(dr.reconcile(config(tmp_path), FakeDocker([web(1), web(2, 32769)]), store, dry_run=True), "text")
    assert "nothing to change" not in capsys.readouterr().out


# --- shell completion ----------------------------------------------------------------------------------


def test_the_shell_completion_script_and_completions_come_from_the_cli_itself(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exited:
        dr.main(["--show-completion", "bash"])
    assert exited.value.code == 0 and "_DOCKER_REGISTER_COMPLETE" in capsys.readouterr().out
    monkeypatch.setenv("_DOCKER_REGISTER_COMPLETE", "complete_bash")
    for words, cword, expected in (("docker-register li", "1", "list"), ("docker-register list --ser", "2",
                                                                           "--service")):
        monkeypatch.setenv("COMP_WORDS", words)
        monkeypatch.setenv("COMP_CWORD", cword)
        with pytest.raises(SystemExit):
            dr.main([])
        assert capsys.readouterr().out.split() == [expected]


# --- integration: the installed CLI after real syncs, one test per store ----------------------------------

from harness import REDIS_VALUE_WRITES, end_saved_sessions, free_port, redis_commands, zookeeper_nodes  # noqa: E402
from hosts import Host  # noqa: E402

_numbers = itertools.count(1)


class ZkHost(Host):
    """A host on the shared ZooKeeper, under a prefix of its own."""

    tag = "zl"

    def __init__(self, engine, server, n: int, tmp_path):
        super().__init__(engine, n, tmp_path)
        self.server, self.look = server, server.client()

    def store_env(self) -> dict[str, str]:
        return {"DOCKER_REGISTER_BACKEND": "zookeeper", "ZOOKEEPER_HOSTS": self.server.endpoint,
                "DOCKER_REGISTER_TTL": "10"}

    @property
    def state_file(self):
        return Path(dr.zookeeper_state_file(str(self.lock_file), self.host_ip, self.prefix))

    def session(self) -> int:
        """This host's session, from its state file."""
        return dr.parse_session(self.state_file.read_text()).session

    def close(self) -> None:
        """End the host's session (a run leaves it open) and the looking client's: none expires in a later test."""
        end_saved_sessions(self.server.endpoint, [self.state_file])
        self.look.stop()
        self.look.close()


class RedisHost(Host):
    """A host on the shared Redis, under a prefix of its own."""

    tag = "rl"

    def __init__(self, engine, server, n: int, tmp_path):
        super().__init__(engine, n, tmp_path)
        self.server, self.look = server, server.client()

    def store_env(self) -> dict[str, str]:
        return {"DOCKER_REGISTER_BACKEND": "redis", "REDIS_URL": self.server.url, "DOCKER_REGISTER_TTL": "30"}


@pytest.fixture
def zk(engine, zookeeper, tmp_path):
    host = ZkHost(engine, zookeeper, next(_numbers), tmp_path)
    yield host
    host.close()


@pytest.fixture
def rd(engine, redis_server, tmp_path):
    host = RedisHost(engine, redis_server, next(_numbers), tmp_path)
    yield host
    host.look.close()


def rows(stdout: str) -> dict[str, list[str]]:
    """The rows of list's tables (one line each here), by their first cell."""
    cells = [[cell.strip() for cell in line.split("│")[1:-1]]
             for line in stdout.splitlines() if line.startswith("│")]
    return {row[0]: row[1:] for row in cells}


def listed_json(host, *args: str, **env: str) -> tuple[int, dict]:
    result = host.run("list", "--output", "json", *args, **env)
    assert result.returncode in (0, 3) and result.stderr == "", result.stderr
    return result.returncode, json.loads(result.stdout)


def test_on_etcd_list_shows_what_sync_wrote_in_one_range_and_a_lookup_per_lease(world):
    first, second = world.docker_run("-P", "local/web"), world.docker_run("-P", "local/web")
    world.sync()
    lease, revision, before = dr.lease_id_for(world.host_ip, world.prefix), world.etcd.revision(), world.etcd.rpcs()
    result = world.run("list")
    calls = {method: n - before.get(method, 0) for method, n in world.etcd.rpcs().items() if n != before.get(method, 0)}
    assert result.returncode == 0, result.stderr
    assert calls == {"Range": 1, "LeaseTimeToLive": 2}  # the host's lease and the port key's own
    assert world.etcd.revision() == revision  # nothing written
    for cid in (first, second):
        value, held_by, expires, flag = rows(result.stdout)[cid[:12]]
        assert (value, held_by, flag) == (f"{world.host_ip}:{world.host_port(cid, '80/tcp')}",
                                          f"lease {lease:x} ({world.host_ip})", "")
        assert 0 < int(expires.rstrip("s")) <= 30
    assert result.stdout.splitlines()[-1].endswith(
        "1 service, 2 servers on 1 host, 1 shared key, 0 other keys; 0 flagged")

    code, found = listed_json(world)
    web_service, = found["services"]
    assert {s["container"]: s["host"] for s in web_service["servers"]} == {first[:12]: f"{lease:x}",
                                                                           second[:12]: f"{lease:x}"}
    assert all(0 < s["expires"] <= 30 for s in web_service["servers"])
    assert web_service["shared"][0]["writer"] == f"{lease:x}" and found["hosts"][0]["ip"] == world.host_ip

    world.etcd.etcdctl("put", f"{world.prefix}/web/manual", "10.9.9.9:80")
    result = world.run("list")
    assert result.returncode == 3
    assert f"orphan: {world.prefix}/web/manual: no host holds it (on no lease); nothing removes it" in result.stdout
    assert listed_json(world, "--service", "web")[0] == 3
    none = world.run("list", "--service", "api")
    assert (none.returncode, none.stdout) == (0, f"no service api under {world.prefix} in etcd at {world.etcd.url}\n")


def one_line_failure(result, where: str) -> None:
    """An unreachable store: exit 1, nothing on stdout, one line on stderr naming the store."""
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"docker-register: error: {where}"), result.stderr


def test_on_etcd_an_unreachable_store_is_one_line_and_exit_1(world):
    one_line_failure(world.run("list", ETCD_HOST=f"127.0.0.1:{free_port()}", DOCKER_REGISTER_TIMEOUT="1"),
                     "etcd at ")


def test_on_zookeeper_list_reads_on_a_session_of_its_own_and_flags_a_persistent_key(zk):
    cid = zk.docker_run("-P", "local/web")
    env, prefix, key = zk.in_layout("skydns", cid)
    zk.sync(**env)
    session, state = zk.session(), zk.state_file.read_text()
    result = zk.run("list", **env)
    assert result.returncode == 0, result.stderr
    assert rows(result.stdout)[cid[:12]][1:] == [f"session {session:x}", "-", ""]
    code, found = listed_json(zk, **env)
    server, = found["services"][0]["servers"]
    assert (found["services"][0]["name"], server["key"], server["host"], server["expires"]) == (
        "web", key, f"{session:x}", None)  # ZooKeeper tells no session's time left
    assert zk.state_file.read_text() == state  # the host's session untouched, and still holding its key
    assert zookeeper_nodes(zk.look, zk.prefix)[key][1] == session

    zk.look.create(dr.zookeeper_path(f"{prefix}/local/docker/web/manual"), b'{"host": "10.9.9.9", "port": 80}')
    result = zk.run("list", "--service", "web", **env)
    assert result.returncode == 3 and f"orphan: {prefix}/local/docker/web/manual: no host holds it (on no session)" \
        in result.stdout
    assert zk.run("list", "--service", "api", **env).returncode == 0
    one_line_failure(zk.run("list", ZOOKEEPER_HOSTS=f"127.0.0.1:{free_port()}", DOCKER_REGISTER_TIMEOUT="1"),
                     "zookeeper at ")


def test_on_redis_list_shows_the_index_holding_each_key_and_its_heartbeat_and_writes_nothing(rd):
    labels = ["-l", "traefik.http.routers.web.rule=Host(`web.example`)"]
    cid = rd.docker_run("-P", *labels, "local/web")
    env, prefix, key = rd.in_layout("traefik", cid)
    rd.sync(**env)
    lease = dr.lease_id_for(rd.host_ip, prefix)
    before = redis_commands(rd.look)
    result = rd.run("list", **env)
    assert result.returncode == 0, result.stderr
    after = redis_commands(rd.look)
    assert not {name: after[name] - before[name] for name in REDIS_VALUE_WRITES if after[name] != before[name]}
    table = rows(result.stdout)
    assert table[cid[:12]][0] == f"http://{rd.host_ip}:{rd.host_port(cid, '80/tcp')}"
    assert table[cid[:12]][1] == f"index {lease:x} ({rd.host_ip})" and 0 < int(table[cid[:12]][2].rstrip("s")) <= 30
    assert table["http/routers/web/rule"] == ["Host(`web.example`)",
                                              f"written by index {lease:x} ({rd.host_ip}), used by 1 host", "-", ""]
    code, found = listed_json(rd, **env)
    web_service, = found["services"]
    assert [s["key"] for s in web_service["servers"]] == [key] and 0 < web_service["servers"][0]["expires"] <= 30
    assert {s["key"]: s["writer"] for s in web_service["shared"]} == {
        f"{prefix}/http/routers/web/rule": f"{lease:x}", f"{prefix}/http/routers/web/service": f"{lease:x}"}

    stray = f"{prefix}/http/services/web/loadbalancer/servers/bbbbbbbbbbbb/url"
    rd.look.set(stray, "http://10.9.9.9:80")
    result = rd.run("list", **env)
    assert result.returncode == 3 and f"orphan: {stray}: no host holds it (on no index)" in result.stdout
    assert rd.run("list", "--service", "api", **env).returncode == 0
    one_line_failure(rd.run("list", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", DOCKER_REGISTER_TIMEOUT="1"),
                     "redis at ")
