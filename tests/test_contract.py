"""One suite of store scenarios run against every store: the in-memory FakeEtcd (unit tier) and real etcd, ZooKeeper
and Redis started by the harness (integration). A fake is then only as wrong as a failing test here shows.

A scenario drives a store as runs do (open_store, reconcile, purge, and the Store protocol: plan, then apply) and
looks at the result through another client. Grant, renew, put, conflicts and races, hand-over and revoke run on
every store; what is etcd's own (leases, revisions, etcd's limits) on the fake and on real etcd.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import pytest

import docker_register as dr
from fakes import FakeDocker, FakeEtcd, web

#: TTL of every scenario's runs: within the test ZooKeeper's session limit (20 s).
TTL = 10
#: What another writer puts on a key (no lease).
FOREIGN = "198.51.100.7:1"
_numbers = itertools.count(1)


# --- the stores ------------------------------------------------------------------------------------


class Backend:
    """One store the scenarios run on: the settings that point runs at it, and a look at it with another client."""

    def __init__(self, prefix: str, tmp_path: Path):
        self.prefix, self.tmp_path = prefix, tmp_path

    def settings(self) -> dict:
        """Settings fields naming the store."""
        raise NotImplementedError

    def open(self, config: dr.Config):
        """The store a run opens, and how to close it."""
        return dr.open_store(config)

    def values(self) -> dict[str, str]:
        """Every key under the prefix and its value, as another client reads them."""
        raise NotImplementedError

    def put(self, key: str, value: str) -> None:
        """Another writer puts a key, on no lease."""
        raise NotImplementedError

    def close(self) -> None:
        """End what the scenario left alive, so that nothing of it expires during a later test."""


class Fake(Backend):
    """FakeEtcd: every run of the scenario opens the same in-memory server."""

    def __init__(self, prefix: str, tmp_path: Path):
        super().__init__(prefix, tmp_path)
        self.server = FakeEtcd(prefix)

    def settings(self) -> dict:
        return {}

    def open(self, config: dr.Config):
        return self.server, lambda: None

    def values(self) -> dict[str, str]:
        return {key: value for key, value in self.server.values().items() if key.startswith(self.prefix + "/")}

    def put(self, key: str, value: str) -> None:
        self.server.put(key, value)


class RealEtcd(Backend):
    def __init__(self, prefix: str, tmp_path: Path, server):
        super().__init__(prefix, tmp_path)
        self.server = server

    def settings(self) -> dict:
        return {"etcd": self.server.endpoint}

    def values(self) -> dict[str, str]:
        return self.server.values(self.prefix + "/")

    def put(self, key: str, value: str) -> None:
        self.server.etcdctl("put", key, value)

    def close(self) -> None:
        self.server.revoke_all_leases()


class RealZooKeeper(Backend):
    def __init__(self, prefix: str, tmp_path: Path, server):
        super().__init__(prefix, tmp_path)
        self.server = server
        self.look = server.client()

    def settings(self) -> dict:
        return {"backend": dr.BackendName.zookeeper, "zookeeper": self.server.endpoint}

    def values(self) -> dict[str, str]:
        from harness import zookeeper_keys, zookeeper_nodes

        return zookeeper_keys(zookeeper_nodes(self.look, self.prefix))

    def put(self, key: str, value: str) -> None:
        self.look.create(dr.zookeeper_path(key), value.encode(), makepath=True)

    def close(self) -> None:
        """End the hosts' sessions (kept open between runs, as a run leaves them) and the looking client's."""
        from harness import end_saved_sessions

        end_saved_sessions(self.server.endpoint, self.tmp_path.glob("*/zookeeper-*.session"))
        self.look.stop()
        self.look.close()


class RealRedis(Backend):
    def __init__(self, prefix: str, tmp_path: Path, server):
        super().__init__(prefix, tmp_path)
        self.server = server
        self.look = server.client()

    def settings(self) -> dict:
        return {"backend": dr.BackendName.redis, "redis": self.server.url}

    def values(self) -> dict[str, str]:
        return {key: self.look.get(key) for key in self.look.scan_iter(match=self.prefix + "/*")}

    def put(self, key: str, value: str) -> None:
        self.look.set(key, value)

    def close(self) -> None:
        self.look.close()


#: Every store, and etcd's two (the fake and the real one), as parameters of the `backend` fixture.
EVERY_STORE = [pytest.param("fake"), pytest.param("etcd", marks=pytest.mark.integration),
               pytest.param("zookeeper", marks=pytest.mark.integration),
               pytest.param("redis", marks=pytest.mark.integration)]
ETCD = EVERY_STORE[:2]
every_store = pytest.mark.parametrize("backend", EVERY_STORE, indirect=True)
on_etcd = pytest.mark.parametrize("backend", ETCD, indirect=True)
#: The harness's server fixture of each real store.
SERVERS = {"etcd": ("etcd", RealEtcd), "zookeeper": ("zookeeper", RealZooKeeper), "redis": ("redis_server", RealRedis)}


@pytest.fixture
def backend(request, tmp_path):
    """The store of the parameter, under a prefix of the test's own."""
    prefix = f"/c{next(_numbers)}/backends"
    if request.param == "fake":
        store = Fake(prefix, tmp_path)
    else:
        fixture, kind = SERVERS[request.param]
        store = kind(prefix, tmp_path, request.getfixturevalue(fixture))
    yield store
    store.close()


class Host:
    """One host of a scenario: its containers (local/web, port 80 published) and its runs on the store."""

    def __init__(self, backend: Backend, n: int, containers: list[dict]):
        self.backend = backend
        self.docker = FakeDocker(containers)
        lock_file = backend.tmp_path / f"host{n}" / "sync.lock"
        self.config = dr.build_config(dr.Settings(host_ip=f"192.0.2.{n}", prefix=backend.prefix, ttl=TTL,
                                                  timeout=5.0, lock_file=str(lock_file), **backend.settings()))
        self.port_key = f"{backend.prefix}/web/port"

    @contextlib.contextmanager
    def store(self):
        """The store as one run opens it."""
        store, close = self.backend.open(self.config)
        try:
            yield store
        finally:
            close()

    def sync(self) -> dr.Outcome:
        with self.store() as store:
            return dr.reconcile(self.config, self.docker, store, dry_run=False)

    def purge(self) -> dr.Purged:
        with self.store() as store:
            return dr.purge(self.config, store)

    def desired(self) -> dr.Desired:
        return dr.desired_keys(dr.current_registrations(self.docker, self.config)[0], self.config)

    def plan(self, store) -> dr.Plan:
        """What a run plans: the lease kept alive and read, then the keys."""
        return dr.current_plan(store, self.desired(), self.config, renew=True)

    def key(self, container: dict) -> str:
        return f"{self.backend.prefix}/web/{container['Id'][:12]}"

    def keys(self) -> dict[str, str]:
        """The keys of its running containers."""
        running = [c for c in self.docker.containers if c["State"] == "running"]
        keys = {self.key(c): f"{self.config.host_ip}:{c['Ports'][0]['PublicPort']}" for c in running}
        return {**keys, self.port_key: "80"} if keys else {}


def kinds(plan: dr.Plan) -> list[tuple[str, str]]:
    return [(change.kind.value, change.key) for change in plan.changes]


# --- every store -----------------------------------------------------------------------------------


@every_store
def test_a_first_run_puts_every_key_on_a_new_lease_and_the_next_run_writes_nothing(backend):
    host = Host(backend, 1, [web(1, 32769), web(2, 32770)])
    with host.store() as store:
        assert store.lease(store.host_lease(host.config)) is None

    first = host.sync()
    assert first.plan.lease_action is dr.LeaseAction.GRANT and first.plan.count(dr.ChangeKind.ADD) == 3
    assert backend.values() == host.keys()
    with host.store() as store:
        _, lease_keys = dr.current_lease(store, host.config, renew=True)
        info = store.lease(store.host_lease(host.config))
        held = store.read(dr.Reads(whole_prefix=True))
    assert info.granted_ttl == TTL
    assert {host.key(web(1)), host.key(web(2))} <= set(lease_keys) == set(info.keys)
    assert {key: kv.value for key, kv in held.items()} == host.keys()

    second = host.sync()
    assert (second.plan.lease_action, second.plan.changes, second.plan.unchanged) == (dr.LeaseAction.KEEP, (), 3)
    with host.store() as store:
        dr.current_lease(store, host.config, renew=True)
        assert store.read(dr.Reads(whole_prefix=True)) == held, "keeping the keys alive wrote none of them"
    assert backend.values() == host.keys()


@every_store
def test_a_container_gone_loses_its_key_and_the_port_key_stays_for_the_one_still_serving(backend):
    host = Host(backend, 1, [web(1, 32769), web(2, 32770)])
    host.sync()
    host.docker.stop(web(2)["Id"])
    assert kinds(host.sync().plan) == [("remove", host.key(web(2)))]
    assert backend.values() == host.keys()


@every_store
def test_a_shared_key_outlives_the_host_that_wrote_it_and_stays_with_the_host_still_serving_it(backend):
    a, b = Host(backend, 1, [web(1, 32769)]), Host(backend, 2, [web(2, 32770)])
    a.sync()
    b.sync()
    assert backend.values() == {**a.keys(), **b.keys()}

    assert a.purge().keys == (a.key(web(1)),)
    assert backend.values() == b.keys()
    again = b.sync()
    assert again.plan.count(dr.ChangeKind.REMOVE) == again.plan.count(dr.ChangeKind.ADD) == 0
    assert backend.values() == b.keys()
    assert a.purge().keys == (), "a second purge finds nothing of the host"


@every_store
def test_list_shows_each_hosts_keys_on_its_own_holder_the_port_keys_writer_and_users_and_a_stray_key_flagged(
        backend):
    a, b = Host(backend, 1, [web(1, 32769), web(2, 32770)]), Host(backend, 2, [web(3, 32771)])
    a.sync()
    b.sync()
    stray = f"{backend.prefix}/web/manual"
    backend.put(stray, FOREIGN)
    with a.store() as store:
        listing = dr.list_keys(a.config, store)
    holders = {entry.key: entry.lease for entry in listing.entries if not entry.shared}
    lease_a, lease_b = holders[a.key(web(1))], holders[b.key(web(3))]
    assert holders == {a.key(web(1)): lease_a, a.key(web(2)): lease_a, b.key(web(3)): lease_b, stray: 0}
    assert lease_a > 0 and lease_b > 0 and lease_a != lease_b
    port, = [entry for entry in listing.entries if entry.shared]
    assert (port.key, port.value, port.host) == (a.port_key, "80", lease_a)
    assert port.users == tuple(sorted((lease_a, lease_b)))
    assert [(flag.kind, flag.key) for flag in listing.flags] == [(dr.FlagKind.ORPHAN, stray)]
    assert backend.values() == {**a.keys(), **b.keys(), stray: FOREIGN}, "listing wrote nothing"


@every_store
def test_a_key_another_writer_puts_between_read_and_write_is_a_conflict_and_nothing_of_the_batch_is_written(
        backend):
    host = Host(backend, 1, [web(1, 32769), web(2, 32770)])
    with host.store() as store:
        plan = host.plan(store)
        backend.put(host.key(web(1)), FOREIGN)
        with pytest.raises(dr.Conflict):
            store.apply(plan, TTL)
    assert backend.values() == {host.key(web(1)): FOREIGN}

    host.sync()  # the next run reads again and writes its keys (the key names its container: it is the host's)
    assert backend.values() == host.keys()


@every_store
def test_two_hosts_adding_the_same_shared_key_at_once_race_and_both_end_up_registered(backend):
    a, b = Host(backend, 1, [web(1, 32769)]), Host(backend, 2, [web(2, 32770)])
    with a.store() as store_a, b.store() as store_b:
        plan_a, plan_b = a.plan(store_a), b.plan(store_b)
        assert ("add", a.port_key) in kinds(plan_a) and ("add", b.port_key) in kinds(plan_b)
        store_a.apply(plan_a, TTL)
        with pytest.raises(dr.Conflict):
            store_b.apply(plan_b, TTL)
    assert backend.values() == a.keys()

    b.sync()  # reads again: the port key is there with the value it wants
    assert backend.values() == {**a.keys(), **b.keys()}


@every_store
def test_a_run_with_more_changes_than_one_transaction_takes_writes_them_all(backend):
    host = Host(backend, 1, [web(n, 20000 + n) for n in range(1, 2 * dr.MAX_TXN_OPS)])
    assert host.sync().plan.count(dr.ChangeKind.ADD) == 2 * dr.MAX_TXN_OPS
    assert backend.values() == host.keys()
    host.docker.containers = host.docker.containers[:1]
    assert host.sync().plan.count(dr.ChangeKind.REMOVE) == 2 * dr.MAX_TXN_OPS - 2
    assert backend.values() == host.keys()


# --- etcd: the fake and the real one ---------------------------------------------------------------


def add(key: str, value: str = "v") -> dr.Change:
    return dr.Change(dr.ChangeKind.ADD, key, value, None, 0)


@on_etcd
def test_granting_a_lease_that_another_run_granted_meanwhile_is_no_error_and_the_lease_keeps_its_ttl(backend):
    # The fake once tolerated this while the real store failed: EtcdStore._grant now sends LeaseGrant itself.
    host = Host(backend, 1, [web(1, 32769)])
    with host.store() as store:
        plan = host.plan(store)
        assert plan.lease_action is dr.LeaseAction.GRANT
        with host.store() as other_run:  # the same host's run a moment earlier, with another TTL
            other_run.apply(dr.Plan(plan.lease_id, dr.LeaseAction.GRANT, (), 0), 60)
        store.apply(plan, TTL)
        info = store.lease(plan.lease_id)
    assert info.granted_ttl == 60 and host.key(web(1)) in info.keys
    assert backend.values() == host.keys()


@on_etcd
def test_a_put_on_a_lease_that_ended_since_it_was_read_is_a_conflict_and_writes_nothing(backend):
    host = Host(backend, 1, [web(1, 32769)])
    host.sync()
    host.docker.containers.append(web(2, 32770))
    with host.store() as store:
        plan = host.plan(store)
        assert plan.lease_action is dr.LeaseAction.KEEP and plan.renews_lease
        store.revoke(plan.lease_id)  # another run purged (or the lease expired)
        with pytest.raises(dr.Conflict, match="a lease ended since it was read"):
            store.apply(plan, TTL)
        with pytest.raises(dr.Conflict, match="requested lease not found"):  # a put naming it, without the renewal
            store.apply(dr.Plan(plan.lease_id, dr.LeaseAction.KEEP, (add(host.key(web(2))),), 0), TTL)
    assert backend.values() == {host.port_key: "80"}  # the host's keys went with its lease; the port key has its own

    host.sync()
    assert backend.values() == host.keys()


@on_etcd
def test_a_lease_shorter_than_etcds_minimum_is_granted_at_the_minimum(backend):
    host = Host(backend, 1, [])
    with host.store() as store:
        store.apply(dr.Plan(host.config.lease_id, dr.LeaseAction.GRANT, (), 0), 1)
        assert store.lease(host.config.lease_id) == dr.LeaseInfo(dr.MIN_TTL, ())


@on_etcd
def test_every_write_moves_the_keys_it_writes_to_a_new_revision_and_onto_the_lease_it_names(backend):
    host = Host(backend, 1, [web(1, 32769), web(2, 32770)])
    host.sync()
    with host.store() as store:
        first = store.read(dr.Reads(whole_prefix=True))
    lease, port_lease = host.config.lease_id, dr.shared_lease_id(host.config.host_ip, host.port_key)
    assert {key: kv.lease for key, kv in first.items()} == {host.key(web(1)): lease, host.key(web(2)): lease,
                                                           host.port_key: port_lease}
    assert len({kv.mod_revision for kv in first.values()}) == 1, "one transaction: one revision"

    host.docker.containers[0]["Ports"][0]["PublicPort"] = 32771  # web1 published again on another port
    assert kinds(host.sync().plan) == [("update", host.key(web(1)))]
    with host.store() as store:
        second = store.read(dr.Reads(whole_prefix=True))
    assert second[host.key(web(1))].mod_revision > first[host.key(web(1))].mod_revision
    assert {key: second[key] for key in (host.key(web(2)), host.port_key)} == {
        key: first[key] for key in (host.key(web(2)), host.port_key)}


@on_etcd
def test_a_read_of_more_ranges_than_a_transaction_takes_is_a_one_line_error(backend):
    host = Host(backend, 1, [])
    keys = tuple(f"{backend.prefix}/web/{n:012x}" for n in range(dr.MAX_TXN_OPS + 1))
    with host.store() as store:
        with pytest.raises(dr.EtcdError) as refused:
            store.read(dr.Reads(keys=keys))
        assert store.read(dr.Reads(keys=keys[:-1])) == {}
    assert str(refused.value) == (f"{store.where}: read keys: invalid argument (etcdserver: too many operations in "
                                  "txn request)")


@on_etcd
def test_purge_hands_a_shared_key_written_on_the_host_lease_over_to_a_lease_of_its_own(backend):
    a, b = Host(backend, 1, [web(1, 32769)]), Host(backend, 2, [web(2, 32770)])
    lease, port_lease = a.config.lease_id, dr.shared_lease_id(a.config.host_ip, a.port_key)
    with a.store() as store:  # an older version's run: every key of the host on its lease, the port key too
        store.apply(dr.Plan(lease, dr.LeaseAction.GRANT, tuple(add(key, value) for key, value in a.keys().items()),
                            0), TTL)
        assert set(store.lease(lease).keys) == set(a.keys())
    b.sync()  # another host serves web too

    assert a.purge().keys == (a.key(web(1)),)
    assert backend.values() == b.keys()
    with a.store() as store:
        held = store.read(dr.Reads(keys=(a.port_key,)))[a.port_key]
        assert (held.value, held.lease) == ("80", port_lease)
        assert store.lease(lease) is None
        assert store.lease(port_lease) == dr.LeaseInfo(TTL, (a.port_key,))
