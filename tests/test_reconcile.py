"""Orchestration on in-memory adapters: every branch of reconcile, purge and sync_every, no servers."""

from __future__ import annotations

import fcntl
import threading
from collections import Counter

import pytest

import docker_register as dr
from fakes import ETCD_MAX_TXN_OPS, HOST, PREFIX, FakeClock, FakeDocker, FakeEtcd, config, container, port, web, web_key

LEASE = dr.lease_id_for(HOST, PREFIX)
OTHER_LEASE = dr.lease_id_for("10.0.0.6", PREFIX)
WEB = "/backends/web/aaaaaaaaaaaa"
WEB_PORT = "/backends/web/port"
#: The port key's own lease, as this host writes it: any host serving web keeps it alive.
PORT_LEASE = dr.shared_lease_id(HOST, WEB_PORT)


def sync(cfg, docker, store, dry_run=False) -> dr.Outcome:
    return dr.reconcile(cfg, docker, store, dry_run=dry_run)


def changes(outcome: dr.Outcome) -> list[tuple[str, str]]:
    return [(change.kind.value, change.key) for change in outcome.plan.changes]


def leases_of(store: FakeEtcd) -> dict[str, int]:
    return {key: store.lease_of(key) for key in store.values()}


# --- the lease ------------------------------------------------------------------------------


def test_first_run_grants_the_lease_and_adds_every_key_in_one_transaction(tmp_path):
    docker, store = FakeDocker([container()]), FakeEtcd()
    outcome = sync(config(tmp_path), docker, store)
    assert outcome.plan.lease_action is dr.LeaseAction.GRANT
    assert changes(outcome) == [("add", WEB), ("add", WEB_PORT)]
    assert store.values() == {WEB: "10.0.0.5:32768", WEB_PORT: "80"}
    assert leases_of(store) == {WEB: LEASE, WEB_PORT: PORT_LEASE}  # the shared key on a lease of its own
    assert store.leases[LEASE].granted_ttl == store.leases[PORT_LEASE].granted_ttl == 30
    assert store.writes == Counter(grant=2, txn=1, put=2)
    assert store.revision == 2  # one revision for the whole transaction; the grant moves none
    assert docker.calls == 1


def test_a_run_with_nothing_changed_writes_nothing_and_only_keeps_the_leases_alive(tmp_path):
    docker, store = FakeDocker([container()]), FakeEtcd()
    sync(config(tmp_path), docker, store)
    revision, writes, rpcs = store.revision, Counter(store.writes), Counter(store.rpcs)

    outcome = sync(config(tmp_path), docker, store)

    assert outcome.plan.lease_action is dr.LeaseAction.KEEP
    assert outcome.plan.changes == ()
    assert outcome.plan.unchanged == 2
    assert store.writes == writes
    assert store.revision == revision
    # The keys on the lease, one read, then one keepalive stream renewing the host's lease and the shared
    # port key's: no write either.
    assert store.rpcs - rpcs == Counter(lease_ttl=1, range=1, keepalive=1)
    assert store.leases[LEASE].renewals == store.leases[PORT_LEASE].renewals == 1


def test_a_changed_ttl_replaces_the_lease_and_rewrites_the_keys(tmp_path):
    docker, store = FakeDocker([container()]), FakeEtcd()
    sync(config(tmp_path, ttl=30), docker, store)
    revision, writes = store.revision, Counter(store.writes)

    outcome = sync(config(tmp_path, ttl=60), docker, store)

    assert outcome.plan.lease_action is dr.LeaseAction.REPLACE
    assert changes(outcome) == [("add", WEB)]  # the shared port key, on its own lease, never went
    assert store.writes - writes == Counter(revoke=1, grant=1, txn=1, put=1)
    assert store.values() == {WEB: "10.0.0.5:32768", WEB_PORT: "80"}
    assert leases_of(store) == {WEB: LEASE, WEB_PORT: PORT_LEASE}
    assert store.leases[LEASE].granted_ttl == 60
    assert store.revision == revision + 2  # the revoke's deletions, then the transaction


def test_a_changed_ttl_with_nothing_left_to_register_only_revokes_the_lease(tmp_path):
    docker, store = FakeDocker([container()]), FakeEtcd()
    sync(config(tmp_path, ttl=30), docker, store)
    writes = Counter(store.writes)
    docker.stop("aaaa")

    outcome = sync(config(tmp_path, ttl=60), docker, store)

    assert outcome.plan.lease_action is dr.LeaseAction.REVOKE
    assert changes(outcome) == [("remove", WEB_PORT)]  # no host serves web any more
    assert store.writes - writes == Counter(revoke=1, txn=1, delete=1)
    assert store.values() == {}
    assert set(store.leases) == {PORT_LEASE}  # empty, no longer renewed: it runs out


def test_a_host_with_nothing_to_register_grants_no_lease_and_sends_only_a_lease_lookup(tmp_path):
    docker, store = FakeDocker([container(state="exited")]), FakeEtcd()
    outcome = sync(config(tmp_path), docker, store)
    assert outcome.plan.lease_action is dr.LeaseAction.KEEP
    assert outcome.plan.changes == ()
    assert store.writes == Counter()
    assert store.leases == {}
    assert store.rpcs == Counter(lease_ttl=1)


def test_a_lease_that_expired_between_runs_is_granted_again_and_its_keys_rewritten(tmp_path):
    docker, store = FakeDocker([container()]), FakeEtcd()
    sync(config(tmp_path), docker, store)
    store.expire(LEASE)
    assert store.values() == {WEB_PORT: "80"}  # the shared key does not go with the host's lease
    writes = Counter(store.writes)

    outcome = sync(config(tmp_path), docker, store)

    assert outcome.plan.lease_action is dr.LeaseAction.GRANT
    assert changes(outcome) == [("add", WEB)]
    assert store.writes - writes == Counter(grant=1, txn=1, put=1)
    assert store.values() == {WEB: "10.0.0.5:32768", WEB_PORT: "80"}
    assert leases_of(store) == {WEB: LEASE, WEB_PORT: PORT_LEASE}


def test_a_lease_that_expires_between_grant_and_write_is_granted_again_on_the_next_attempt(tmp_path):
    docker, store = FakeDocker([container()]), FakeEtcd()
    store.before_txn(lambda batch: store.expire(LEASE))  # the put names a lease that is gone: NOT_FOUND

    outcome = sync(config(tmp_path), docker, store)

    assert store.conflicts == 1
    assert outcome.plan.lease_action is dr.LeaseAction.GRANT
    assert store.writes == Counter(grant=3, txn=1, put=2)  # the port key's lease lived on: granted once
    assert store.values() == {WEB: "10.0.0.5:32768", WEB_PORT: "80"}
    assert leases_of(store) == {WEB: LEASE, WEB_PORT: PORT_LEASE}


# --- other writers --------------------------------------------------------------------------


def test_a_key_moved_by_another_writer_is_read_again_and_the_run_then_succeeds(tmp_path):
    docker, store = FakeDocker([container()]), FakeEtcd()
    sync(config(tmp_path), docker, store)
    docker.containers[0]["Ports"] = [port(80, 32769)]
    writes, calls = Counter(store.writes), Counter(store.calls)
    store.interfere(dr.MAX_ATTEMPTS - 1)

    outcome = sync(config(tmp_path), docker, store)

    assert store.conflicts == dr.MAX_ATTEMPTS - 1
    assert store.calls - calls == Counter(keep_alive=dr.MAX_ATTEMPTS, lease=dr.MAX_ATTEMPTS,
                                          read=dr.MAX_ATTEMPTS, apply=dr.MAX_ATTEMPTS)
    # The last plan guarded the key with the revision the other writer left, and only it was written.
    assert outcome.plan.changes == (dr.Change(dr.ChangeKind.UPDATE, WEB, "10.0.0.5:32769", "10.0.0.5:32768",
                                              store.kv[WEB].mod_revision - 1),)
    assert store.writes - writes == Counter(txn=1, put=1)
    assert store.values() == {WEB: "10.0.0.5:32769", WEB_PORT: "80"}
    assert docker.calls == 2  # Docker is listed once per run, not per attempt


def test_keys_that_keep_changing_end_the_run_with_a_one_line_store_error(tmp_path):
    docker, store = FakeDocker([container()]), FakeEtcd()
    sync(config(tmp_path), docker, store)
    docker.containers[0]["Ports"] = [port(80, 32769)]
    writes = Counter(store.writes)
    store.interfere(dr.MAX_ATTEMPTS)

    with pytest.raises(dr.StoreError) as raised:
        sync(config(tmp_path), docker, store)

    assert raised.value.exit_code == 1
    assert str(raised.value) == ("etcd at fake: keys kept changing under this run; "
                                 "is another docker-register writing for this host?")
    assert store.conflicts == dr.MAX_ATTEMPTS
    assert store.writes == writes
    assert store.values() == {WEB: "10.0.0.5:32768", WEB_PORT: "80"}


# --- dry run and the lock -------------------------------------------------------------------


def test_a_dry_run_shows_the_plan_writes_nothing_and_does_not_keep_the_lease_alive(tmp_path):
    docker, store = FakeDocker([container()]), FakeEtcd()
    sync(config(tmp_path), docker, store)
    docker.stop("aaaa")
    revision, writes, rpcs = store.revision, Counter(store.writes), Counter(store.rpcs)

    outcome = dr.locked_reconcile(config(tmp_path), docker, store, dry_run=True)

    assert outcome.dry_run
    assert changes(outcome) == [("remove", WEB), ("remove", WEB_PORT)]
    assert store.writes == writes
    assert store.revision == revision
    assert store.rpcs - rpcs == Counter(lease_ttl=1, range=1)
    assert store.calls["apply"] == 1 and store.calls["keep_alive"] == 1  # both from the first, real run
    assert store.leases[LEASE].renewals == 0
    assert store.values() == {WEB: "10.0.0.5:32768", WEB_PORT: "80"}


def test_a_dry_run_on_a_new_host_plans_the_grant_and_grants_nothing(tmp_path):
    docker, store = FakeDocker([container()]), FakeEtcd()
    outcome = sync(config(tmp_path), docker, store, dry_run=True)
    assert outcome.plan.lease_action is dr.LeaseAction.GRANT
    assert changes(outcome) == [("add", WEB), ("add", WEB_PORT)]
    assert store.leases == {}
    assert store.revision == 1
    assert store.rpcs == Counter(lease_ttl=1, range=1)


def test_a_run_skips_its_pass_when_another_run_holds_the_lock_and_a_dry_run_does_not_wait(tmp_path):
    docker, store, clock = FakeDocker([container()]), FakeEtcd(), FakeClock()
    cfg = config(tmp_path, timeout=2.0)
    with open(cfg.lock_file, "a") as other_run:
        fcntl.flock(other_run, fcntl.LOCK_EX)
        assert dr.locked_reconcile(cfg, docker, store, dry_run=False, clock=clock) is None
        assert clock.now - 1000.0 == pytest.approx(cfg.timeout, abs=0.05)  # it waited the timeout for the lock
        assert docker.calls == 0
        assert store.calls == Counter()
        waited = len(clock.waits)
        assert dr.locked_reconcile(cfg, docker, store, dry_run=True, clock=clock).plan.count(dr.ChangeKind.ADD) == 2
        assert len(clock.waits) == waited
    assert store.writes == Counter()
    assert dr.locked_reconcile(cfg, docker, store, dry_run=False, clock=clock).plan.count(dr.ChangeKind.ADD) == 2
    assert len(clock.waits) == waited
    assert store.values() == {WEB: "10.0.0.5:32768", WEB_PORT: "80"}


def test_a_detected_host_ip_on_a_docker_network_is_refused_before_the_store_is_asked(tmp_path):
    docker, store = FakeDocker([container()]), FakeEtcd()
    cfg = config(tmp_path, host_ip="172.17.0.2", host_ip_detected=True)
    with pytest.raises(dr.UsageError) as raised:
        sync(cfg, docker, store)
    assert raised.value.exit_code == 2
    assert "detected address 172.17.0.2 is on a Docker network" in str(raised.value)
    assert store.calls == Counter()


# --- containers coming and going ------------------------------------------------------------


def test_a_stopped_container_loses_its_key_and_the_port_key_is_left_to_the_host_still_serving_it(tmp_path):
    docker, store = FakeDocker([web(1), web(2)]), FakeEtcd()
    store.grant(OTHER_LEASE, 30)
    store.put(web_key(3), "10.0.0.6:32768", lease=OTHER_LEASE)
    sync(config(tmp_path), docker, store)
    assert store.values() == {web_key(1): "10.0.0.5:32768", web_key(2): "10.0.0.5:32768",
                              web_key(3): "10.0.0.6:32768", WEB_PORT: "80"}

    docker.stop(f"{1:012x}")
    assert changes(sync(config(tmp_path), docker, store)) == [("remove", web_key(1))]
    docker.stop(f"{2:012x}")
    web_mod, port_mod = store.kv[web_key(2)].mod_revision, store.kv[WEB_PORT].mod_revision
    outcome = sync(config(tmp_path), docker, store)
    # The port key is another host's to keep alive now: it stays, on its own lease, which this host no
    # longer renews.
    assert outcome.plan.changes == (dr.Change(dr.ChangeKind.REMOVE, web_key(2), None, "10.0.0.5:32768", web_mod),)
    assert outcome.plan.renewals == ()
    assert outcome.plan.lease_action is dr.LeaseAction.KEEP

    assert store.values() == {web_key(3): "10.0.0.6:32768", WEB_PORT: "80"}
    assert leases_of(store) == {web_key(3): OTHER_LEASE, WEB_PORT: PORT_LEASE}
    assert store.kv[WEB_PORT].mod_revision == port_mod


def test_the_port_key_goes_once_no_host_serves_the_service(tmp_path):
    docker, store = FakeDocker([web(1)]), FakeEtcd()
    store.grant(OTHER_LEASE, 30)
    store.put(web_key(3), "10.0.0.6:32768", lease=OTHER_LEASE)
    sync(config(tmp_path), docker, store)
    docker.stop(f"{1:012x}")
    assert changes(sync(config(tmp_path), docker, store)) == [("remove", web_key(1))]
    assert leases_of(store) == {web_key(3): OTHER_LEASE, WEB_PORT: PORT_LEASE}  # left to the other host

    store.expire(OTHER_LEASE)  # the last host serving it goes; no host renews the port key's lease any more
    store.expire(PORT_LEASE)
    assert store.values() == {}
    store.put(WEB_PORT, "80", lease=LEASE)  # a port key left on this host's lease, no host serving it
    writes = Counter(store.writes)
    outcome = sync(config(tmp_path), docker, store)

    assert changes(outcome) == [("remove", WEB_PORT)]
    assert outcome.plan.lease_action is dr.LeaseAction.KEEP
    assert store.writes - writes == Counter(txn=1, delete=1)
    assert store.values() == {}


def test_a_router_whose_service_another_host_serves_stays_when_this_host_stops_serving_it(tmp_path):
    # Traefik layout: the router's keys are shared, each on its own lease; the run that takes this host's
    # server out reads the routers and the service's folder, sees the other host's server, and leaves them.
    cfg = config(tmp_path, prefix="traefik", layout_name="traefik")
    other_lease = dr.lease_id_for("10.0.0.6", "traefik")
    servers = "traefik/http/services/web/loadbalancer/servers/"
    router = {"traefik/http/routers/site/rule": "Host(`example.test`)", "traefik/http/routers/site/service": "web"}
    docker = FakeDocker([container(labels={"traefik.http.routers.site.rule": "Host(`example.test`)"})])
    store = FakeEtcd("traefik")
    store.grant(other_lease, 30)
    store.put(servers + "bbbbbbbbbbbb/url", "http://10.0.0.6:32768", lease=other_lease)
    sync(cfg, docker, store)
    assert store.values() == {**router, servers + "aaaaaaaaaaaa/url": "http://10.0.0.5:32768",
                              servers + "bbbbbbbbbbbb/url": "http://10.0.0.6:32768"}
    docker.stop("aaaa")
    rpcs = Counter(store.rpcs)
    mods = {key: store.kv[key].mod_revision for key in [*router, servers + "aaaaaaaaaaaa/url"]}

    outcome = sync(cfg, docker, store)

    assert outcome.plan.changes == (
        dr.Change(dr.ChangeKind.REMOVE, servers + "aaaaaaaaaaaa/url", None, "http://10.0.0.5:32768",
                  mods[servers + "aaaaaaaaaaaa/url"]),)
    assert outcome.plan.lease_action is dr.LeaseAction.KEEP
    assert store.rpcs - rpcs == Counter(keepalive=1, lease_ttl=1, range=1, txn=1)  # one read, one write
    assert store.values() == {**router, servers + "bbbbbbbbbbbb/url": "http://10.0.0.6:32768"}
    own_leases = {key: dr.shared_lease_id(HOST, key) for key in router}
    assert {key: store.lease_of(key) for key in router} == own_leases

    store.expire(other_lease)  # the last host serving it goes; no host renews the router's leases
    for lease in own_leases.values():
        store.expire(lease)
    assert store.values() == {}
    assert changes(sync(cfg, docker, store)) == []


def test_more_than_128_changes_go_in_several_transactions_of_at_most_128(tmp_path):
    count = 200
    docker, store = FakeDocker([web(n, public=30000 + n) for n in range(1, count + 1)]), FakeEtcd()

    outcome = sync(config(tmp_path), docker, store)

    assert outcome.plan.count(dr.ChangeKind.ADD) == count + 1
    assert store.txn_sizes == [128, count + 1 - 128]
    assert store.revision == 1 + 2
    assert store.values() == {**{web_key(n): f"10.0.0.5:{30000 + n}" for n in range(1, count + 1)}, WEB_PORT: "80"}
    assert set(leases_of(store).values()) == {LEASE, PORT_LEASE}

    writes = Counter(store.writes)
    assert sync(config(tmp_path), docker, store).plan.changes == ()  # reads folders now: too many keys
    assert store.writes == writes

    for n in range(1, count + 1):
        docker.stop(f"{n:012x}")
    sync(config(tmp_path), docker, store)
    assert store.txn_sizes[2:] == [128, count + 1 - 128]
    assert store.values() == {}


def test_a_transaction_over_etcds_limit_fails_the_run_in_one_line_and_writes_nothing(tmp_path, monkeypatch):
    # If the batching ever sent more than etcd takes, the fake refuses it as etcd does.
    monkeypatch.setattr(dr, "batches", lambda changes: iter([changes]))
    docker = FakeDocker([web(n) for n in range(1, ETCD_MAX_TXN_OPS + 1)])  # 128 instances + the port key
    store = FakeEtcd()
    with pytest.raises(dr.StoreError) as raised:
        sync(config(tmp_path), docker, store)
    assert raised.value.exit_code == 1
    assert str(raised.value) == ("etcd at fake: write keys: invalid argument "
                                 "(etcdserver: too many operations in txn request)")
    assert store.values() == {}
    assert store.writes == Counter(grant=2)  # the host's lease and the port key's


# --- shared keys outlive their writer ------------------------------------------------------


def test_a_shared_key_outlives_the_host_that_wrote_it_kept_alive_by_every_host_that_wants_it(tmp_path):
    docker, store = FakeDocker([web(1)]), FakeEtcd()
    other_config = config(tmp_path, host_ip="10.0.0.6")
    sync(config(tmp_path), docker, store)  # this host writes the port key, on a lease of its own
    outcome = sync(other_config, FakeDocker([web(3)]), store)  # another host serving web wants the same
    assert changes(outcome) == [("add", web_key(3))]
    assert outcome.plan.renewals == ((WEB_PORT, PORT_LEASE),)
    assert store.leases[PORT_LEASE].renewals == 1  # renewed by the other host, which did not write it

    store.expire(LEASE)  # the writer dies: its instance key goes, the port key stays
    assert store.values() == {web_key(3): "10.0.0.6:32768", WEB_PORT: "80"}
    sync(other_config, FakeDocker([web(3)]), store)
    assert store.leases[PORT_LEASE].renewals == 2 and store.lease_of(WEB_PORT) == PORT_LEASE


def test_a_host_wanting_another_value_neither_changes_nor_renews_a_shared_key(tmp_path):
    store = FakeEtcd()
    sync(config(tmp_path), FakeDocker([web(1)]), store)
    other = container(cid=f"{3:012x}" + "e" * 52, ports=[port(8080, 32770)], labels={"SERVICE_NAME": "web"})
    outcome = sync(config(tmp_path, host_ip="10.0.0.6"), FakeDocker([other]), store)
    assert store.values()[WEB_PORT] == "80" and outcome.plan.renewals == ()
    assert any("set by another host" in note for note in outcome.plan.notes)
    store.expire(LEASE)
    store.expire(PORT_LEASE)  # no host wants "80" any more: nobody renewed it, it ran out
    outcome = sync(config(tmp_path, host_ip="10.0.0.6"), FakeDocker([other]), store)
    assert changes(outcome) == [("add", WEB_PORT)] and store.values()[WEB_PORT] == "8080"


def test_purge_gives_the_same_result_whatever_ttl_it_is_given(tmp_path):
    results = []
    for purge_ttl in (30, 12, 60):
        docker, store = FakeDocker([web(1)]), FakeEtcd()
        sync(config(tmp_path, ttl=30), docker, store)
        store.grant(OTHER_LEASE, 30)
        store.put(web_key(3), "10.0.0.6:32768", lease=OTHER_LEASE)
        purged = dr.purge(config(tmp_path, ttl=purge_ttl), store)
        results.append((purged.keys, store.values(), leases_of(store)))
    assert results[0] == results[1] == results[2]
    assert results[0][0] == (web_key(1),) and results[0][2] == {web_key(3): OTHER_LEASE, WEB_PORT: PORT_LEASE}


def test_purge_moves_a_shared_key_written_on_the_host_lease_onto_its_own_lease(tmp_path):
    docker, store = FakeDocker([web(1)]), FakeEtcd()
    sync(config(tmp_path), docker, store)
    store.put(WEB_PORT, "80", lease=LEASE)  # as an older version wrote it
    store.grant(OTHER_LEASE, 30)
    store.put(web_key(3), "10.0.0.6:32768", lease=OTHER_LEASE)
    purged = dr.purge(config(tmp_path, ttl=60), store)
    assert purged.keys == (web_key(1),)
    assert leases_of(store) == {web_key(3): OTHER_LEASE, WEB_PORT: PORT_LEASE}


# --- purge ----------------------------------------------------------------------------------


class RacingRevoke(FakeEtcd):
    """A FakeEtcd whose first `races` revokes meet another writer (as ZooKeeper's guarded deletes can)."""

    def __init__(self, races: int):
        super().__init__()
        self.races = races

    def revoke(self, lease_id: int) -> None:
        if self.races:
            self.races -= 1
            raise dr.Conflict("a key changed while this run was writing")
        super().revoke(lease_id)


def test_purge_tries_a_revoke_that_met_another_writer_again_and_says_so_in_one_line_when_it_keeps_meeting_one(
        tmp_path):
    docker, store = FakeDocker([web(1)]), RacingRevoke(races=dr.MAX_ATTEMPTS - 1)
    sync(config(tmp_path), docker, store)
    assert dr.purge(config(tmp_path), store).keys == (web_key(1),) and LEASE not in store.leases
    store = RacingRevoke(races=dr.MAX_ATTEMPTS)
    sync(config(tmp_path), docker, store)
    with pytest.raises(dr.StoreError) as raised:
        dr.purge(config(tmp_path), store)
    assert raised.value.exit_code == 1 and "keys kept changing while this host's were deleted" in str(raised.value)


def test_a_conflict_that_escapes_is_a_store_failure_with_exit_1():
    assert isinstance(dr.Conflict("x"), dr.StoreError) and dr.Conflict("x").exit_code == 1


def test_describe_etcd_error_with_no_error_says_no_endpoint_answered():
    assert dr.describe_etcd_error(None) == "no endpoint answered"


def test_purge_removes_exactly_this_hosts_keys_and_a_second_purge_removes_nothing(tmp_path):
    docker, store = FakeDocker([container()]), FakeEtcd()
    sync(config(tmp_path), docker, store)
    store.grant(OTHER_LEASE, 30)
    store.put(web_key(3), "10.0.0.6:32768", lease=OTHER_LEASE)
    store.put("/backends/static/manual", "10.0.0.9:80")
    revision, writes = store.revision, Counter(store.writes)

    purged = dr.purge(config(tmp_path), store)

    assert purged.lease_id == LEASE
    assert purged.keys == (WEB,)  # the port key is on its own lease: the other host serving web keeps it
    assert store.values() == {"/backends/static/manual": "10.0.0.9:80", web_key(3): "10.0.0.6:32768",
                              WEB_PORT: "80"}
    assert leases_of(store) == {"/backends/static/manual": 0, web_key(3): OTHER_LEASE, WEB_PORT: PORT_LEASE}
    assert store.writes - writes == Counter(revoke=1)
    assert store.revision == revision + 1  # the lease's keys go in one revision
    assert LEASE not in store.leases

    rpcs = Counter(store.rpcs)
    again = dr.purge(config(tmp_path), store)
    assert again.keys == ()
    assert store.rpcs - rpcs == Counter(lease_ttl=1)
    assert store.writes - writes == Counter(revoke=1)


# --- sync_every -----------------------------------------------------------------------------


class Connector:
    """connect() for sync_every: the same fakes each time (the servers outlive a connection), counted."""

    def __init__(self, docker: FakeDocker, store: FakeEtcd):
        self.docker, self.store = docker, store
        self.connects = 0
        self.closes = 0

    def __call__(self) -> dr.Adapters:
        self.connects += 1
        return dr.Adapters(self.docker, self.store, (self.close,))

    def close(self) -> None:
        self.closes += 1


def sync_every(cfg, connect, interval, report, stop, clock) -> int:
    """sync_every in this thread on the fake clock: each wait returns at once, time advanced; a failed pass is
    reported as the CLI does."""
    return dr.sync_every(cfg, connect, interval, report, stop, clock=clock, report_failure=dr.report_error)


def test_sync_every_repeats_the_pass_every_interval_on_the_same_adapters_until_stopped(tmp_path):
    connect, stop, clock = Connector(FakeDocker([container()]), FakeEtcd()), threading.Event(), FakeClock()
    outcomes, times = [], []

    def report(outcome):
        outcomes.append(outcome)
        times.append(clock.now)
        if len(outcomes) == 3:
            stop.set()

    assert sync_every(config(tmp_path), connect, 10, report, stop, clock) == 0
    assert [(o.plan.count(dr.ChangeKind.ADD), o.plan.unchanged) for o in outcomes] == [(2, 0), (0, 2), (0, 2)]
    assert [later - earlier for earlier, later in zip(times, times[1:])] == pytest.approx([10, 10])
    assert (connect.connects, connect.closes, connect.docker.calls) == (1, 1, 3)
    assert connect.store.writes == Counter(grant=2, txn=1, put=2)  # the host's lease and the port key's
    assert connect.store.leases[LEASE].renewals == connect.store.leases[PORT_LEASE].renewals == 2


def test_sync_every_reports_a_failed_pass_and_opens_the_adapters_again(tmp_path, capsys):
    connect, stop, clock = Connector(FakeDocker([container()]), FakeEtcd()), threading.Event(), FakeClock()
    outcomes = []
    connect.docker.fail_next()

    def report(outcome):
        outcomes.append(outcome)
        stop.set()

    assert sync_every(config(tmp_path), connect, 10, report, stop, clock) == 0
    assert capsys.readouterr().err == ("docker-register: error: docker at fake: cannot list containers "
                                       "(GET /containers/json): Connection refused\n")
    assert clock.now == pytest.approx(1010)  # the next pass came at the interval, not at once
    assert len(outcomes) == 1 and outcomes[0].plan.count(dr.ChangeKind.ADD) == 2
    assert (connect.connects, connect.closes, connect.docker.calls) == (2, 2, 2)
    assert connect.store.values() == {WEB: "10.0.0.5:32768", WEB_PORT: "80"}


def test_setting_the_stop_event_ends_sync_every_promptly_between_passes(tmp_path):
    connect, stop, clock = Connector(FakeDocker([container()]), FakeEtcd()), threading.Event(), FakeClock()
    outcomes = []
    clock.after(7.2, stop.set)  # a signal, long before the next pass at 60 s

    assert sync_every(config(tmp_path), connect, 60.0, outcomes.append, stop, clock) == 0
    assert 7.2 <= clock.now - 1000 <= 7.7  # it looks at the stop event at least every 0.5 s
    assert len(outcomes) == 1
    assert (connect.connects, connect.closes) == (1, 1)


def test_sync_every_ends_on_a_usage_error_instead_of_retrying_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = config(tmp_path, lock_file=str(blocker / "sync.lock"))  # its folder is a file: cannot be opened
    connect, stop = Connector(FakeDocker([container()]), FakeEtcd()), threading.Event()

    with pytest.raises(dr.UsageError) as raised:
        sync_every(cfg, connect, 10, lambda outcome: None, stop, FakeClock())
    assert raised.value.exit_code == 2
    assert str(raised.value).startswith(f"--lock-file: cannot open {blocker / 'sync.lock'}")
    assert connect.connects == 1
    assert connect.store.calls == Counter()


def test_sync_every_reports_a_pass_skipped_for_the_lock_and_writes_nothing(tmp_path):
    cfg = config(tmp_path, timeout=0.5)
    connect, stop, clock = Connector(FakeDocker([container()]), FakeEtcd()), threading.Event(), FakeClock()
    outcomes = []

    def report(outcome):
        outcomes.append(outcome)
        stop.set()

    with open(cfg.lock_file, "a") as other_run:
        fcntl.flock(other_run, fcntl.LOCK_EX)
        assert sync_every(cfg, connect, 10, report, stop, clock) == 0

    assert outcomes == [None]
    assert clock.now - 1000 == pytest.approx(cfg.timeout, abs=0.05)
    assert connect.docker.calls == 0
    assert connect.store.calls == Counter()


# --- the fake's own test hooks (tests/test_contract.py runs the scenarios it shares with etcd on both) --------


def test_fake_etcd_keeps_per_key_revisions_and_raises_short_ttls_to_etcds_minimum():
    store = FakeEtcd()
    store.grant(LEASE, 1)
    assert store.leases[LEASE].granted_ttl == 2
    store.put("/backends/a/1", "x", lease=LEASE)
    store.put("/backends/a/1", "y")
    entry = store.kv["/backends/a/1"]
    assert (entry.create_revision, entry.mod_revision, entry.version, entry.lease) == (2, 3, 2, 0)
    assert store.lease(LEASE) == dr.LeaseInfo(2, ())  # the second put took the key off the lease
    assert store.renew(LEASE) and not store.renew(OTHER_LEASE)
    assert store.read(dr.Reads(keys=("/backends/a/1", "/backends/a/none"))) == {
        "/backends/a/1": dr.StoredKey("y", 0, 3)}
