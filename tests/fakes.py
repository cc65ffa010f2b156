"""In-memory adapters with real behaviour for the unit tier: an etcd v3 store and a Docker source.

`FakeEtcd` keeps what etcd keeps (a global revision, per-key create/mod revisions and versions, leases with
their attached keys) and enforces what etcd enforces (guarded transactions of at most 128 operations, puts
only on live leases, a lease's keys deleted in one revision when it ends), so the orchestration runs on it
as it runs on etcd; tests/test_contract.py runs the same scenarios on it and on a real etcd. `FakeDocker` answers GET /containers/json from a list of Engine-API-shaped dicts.
Both count what they are asked, so a test can say "this run wrote nothing". `FakeClock` is the module's Clock
moved by the code that waits on it, so backoff and pass timing run in no time. The unit-tier builders (`config`,
`web`, `web_key`) are shared by the orchestration and events tests.
"""

from __future__ import annotations

import copy
import functools
import heapq
import itertools
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import docker_register as dr

#: etcd's default --max-txn-ops: operations in one transaction branch (129 is INVALID_ARGUMENT).
ETCD_MAX_TXN_OPS = 128
#: etcd raises shorter lease TTLs to this (its minimum with default election settings).
ETCD_MIN_TTL = 2
#: The host IP and prefix of the unit tier's config().
HOST = "10.0.0.5"
PREFIX = "/backends"


# --- Engine API builders ------------------------------------------------------------------


def container(cid="a" * 64, name="web1", image="local/web:latest", ports=None, labels=None,
              status="Up 5 seconds", state="running"):
    """One entry of GET /containers/json, shaped as the Engine API returns it."""
    return {
        "Id": cid,
        "Names": [f"/{name}"],
        "Image": image,
        "ImageID": "sha256:" + "f" * 64,
        "Command": "/bin/httpd -f -p 80",
        "Created": 1795613505,
        "Ports": ports if ports is not None else [
            {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 32768, "Type": "tcp"},
            {"IP": "::", "PrivatePort": 80, "PublicPort": 32768, "Type": "tcp"},
        ],
        "Labels": labels or {},
        "State": state,
        "Status": status,
        "HostConfig": {"NetworkMode": "default"},
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2", "IPPrefixLen": 16,
                                                   "Gateway": "172.17.0.1"}}},
        "Mounts": [],
    }


def port(private, public, ip="0.0.0.0", proto="tcp"):
    """One host binding of a container's port, as in the list entry's Ports."""
    return {"IP": ip, "PrivatePort": private, "PublicPort": public, "Type": proto}


def web(n: int, public: int = 32768) -> dict:
    """Container number n of image web, id starting with n in 12 hex digits, port 80 published on `public`."""
    return container(cid=f"{n:012x}" + "e" * 52, name=f"web{n}", ports=[port(80, public)])


def web_key(n: int) -> str:
    """The key of web(n) under PREFIX."""
    return f"{PREFIX}/web/{n:012x}"


# --- config and sync_every ----------------------------------------------------------------


def config(tmp_path, ttl: int = 30, **overrides) -> dr.Config:
    """A run's settings for HOST under PREFIX, its lock file in tmp_path; any field can be overridden."""
    settings = dict(endpoints=dr.parse_endpoints("127.0.0.1:2379"), host_ip=HOST, prefix=PREFIX, ttl=ttl,
                    timeout=1.0, lock_file=str(tmp_path / "sync.lock"))
    return dr.Config(**{**settings, **overrides})


# --- time -------------------------------------------------------------------------------


class FakeClock:
    """The module's Clock, moved only by the code that waits on it, in one thread: a sleep returns at once with the
    time advanced, and a wait on an event returns at once when the event is set, else with the time advanced to
    the end of the wait or to the first thing scheduled (`at`, `after`) that sets it, as threading.Event.wait
    would. What another thread or the outside world does during a real wait is scheduled with `at`/`after`."""

    def __init__(self, now: float = 1000.0, limit: float = 3600.0):
        self.now = now
        #: A loop still waiting this long after the start fails the test instead of running on.
        self.end = now + limit
        #: The seconds asked of each sleep and wait, in order.
        self.waits: list[float] = []
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run action when the time reaches `when`."""
        heapq.heappush(self._due, (when, next(self._order), action))

    def after(self, seconds: float, action: Callable[[], None]) -> None:
        """Run action `seconds` from now."""
        self.at(self.now + seconds, action)

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self._pass(seconds, None)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        self.waits.append(seconds)
        if not event.is_set():
            self._pass(seconds, event)
        return event.is_set()

    def _pass(self, seconds: float, event: Optional[threading.Event]) -> None:
        """Let the time pass, running what falls due, until the end or until the event waited on is set."""
        end = self.now + max(0.0, seconds)
        while self._due and self._due[0][0] <= end:
            when, _, action = heapq.heappop(self._due)
            self.now = max(self.now, when)
            action()
            if event is not None and event.is_set():
                return
        self.now = end
        assert self.now <= self.end, f"still waiting {self.now - self.end:.1f} s past the clock's limit"


# --- Docker -------------------------------------------------------------------------------


class FakeDocker:
    """A ContainerSource over a list of container dicts; like the Engine's status=running filter, it
    lists only the running ones."""

    where = "docker at fake"

    def __init__(self, containers: Sequence[dict] = (), engine: str = "Docker/20.10.24+dfsg1 (linux)"):
        self.containers = list(containers)
        #: What the engine calls itself (the Server header of GET /_ping): Docker or "Libpod/4.3.1 (linux)".
        self.engine = engine
        #: Number of list calls made (each would be one GET /containers/json).
        self.calls = 0
        #: Number of inspects made (each would be one GET /containers/{id}/json).
        self.inspects = 0
        self._failures = 0

    def fail_next(self, times: int = 1) -> None:
        """Make the next `times` list calls fail as an unreachable engine does."""
        self._failures = times

    def stop(self, cid: str) -> None:
        """The container with this id (or id prefix) has exited."""
        matches = [c for c in self.containers if c["Id"].startswith(cid)]
        assert matches, f"no container {cid}"
        for found in matches:
            found["State"], found["Status"] = "exited", "Exited (0) 1 second ago"

    def running_containers(self) -> list[dict]:
        self.calls += 1
        if self._failures:
            self._failures -= 1
            raise dr.DockerError(f"{self.where}: cannot list containers (GET /containers/json): Connection refused")
        return [copy.deepcopy(c) for c in self.containers if c.get("State") == "running"]

    def engine_name(self) -> str:
        return self.engine

    def all_containers(self) -> list[dict]:
        """Like GET /containers/json?all=1 (counted as a list call)."""
        self.calls += 1
        if self._failures:
            self._failures -= 1
            raise dr.DockerError(f"{self.where}: cannot list all containers: Connection refused")
        return copy.deepcopy(self.containers)

    def close(self) -> None:
        pass

    def exposed_ports(self, container_id: str) -> list[str]:
        """Like an inspect: the exposed ports of the container ("80/tcp"), from its "ExposedPorts" entry here."""
        self.inspects += 1
        found = [c for c in self.containers if c["Id"] == container_id]
        return sorted(found[0].get("ExposedPorts", ())) if found else []


# --- etcd ---------------------------------------------------------------------------------


@dataclass
class Entry:
    """One key as etcd's MVCC store holds it."""

    value: str
    lease: int
    create_revision: int
    mod_revision: int
    version: int


@dataclass
class Lease:
    """One lease: the TTL it was granted and the keys attached to it."""

    granted_ttl: int
    keys: set[str] = field(default_factory=set)
    renewals: int = 0


class LeaseExists(Exception):
    """etcd's "lease already exists" on a grant naming a live lease id."""


class FakeEtcd:
    """The Store protocol over an in-memory etcd v3 model.

    Counters (all `collections.Counter`):
      - `calls`: Store method calls (keep_alive, lease, read, apply, revoke);
      - `rpcs`: requests etcd would have received (keepalive, lease_ttl, range, grant, revoke, txn),
        failed ones included: EtcdStore sends nothing for an empty read or an empty plan;
      - `writes`: what those requests changed: put and delete (keys), txn (committed write
        transactions), grant, revoke (leases).
    The test hooks (`put`, `grant`, `expire`, `interfere`, `before_txn`) stand for other writers and the lease clock:
    they move the revision like any write but are not counted.
    """

    where = "etcd at fake"
    releases = False
    tree = False
    max_reads = dr.MAX_TXN_OPS

    def __init__(self, prefix: str = dr.DEFAULT_PREFIX):
        self.prefix = prefix
        #: etcd's store revision; a fresh cluster is at 1.
        self.revision = 1
        self.kv: dict[str, Entry] = {}
        self.leases: dict[int, Lease] = {}
        self.calls: Counter = Counter()
        self.rpcs: Counter = Counter()
        self.writes: Counter = Counter()
        #: Operations in each committed write transaction, in order.
        self.txn_sizes: list[int] = []
        #: Write transactions refused with Conflict (a compare failed, or the lease was gone).
        self.conflicts = 0
        self._before_txn: list[Callable[[Sequence[dr.Change]], None]] = []

    # --- views for tests --------------------------------------------------------------

    def values(self) -> dict[str, str]:
        """Every key and its value."""
        return {key: entry.value for key, entry in sorted(self.kv.items())}

    def lease_of(self, key: str) -> int:
        """The lease a key is attached to (0: none)."""
        return self.kv[key].lease

    # --- test hooks: other writers and the clock --------------------------------------

    def put(self, key: str, value: str, lease: int = 0) -> int:
        """Another writer puts a key (one revision); returns the new revision."""
        if lease and lease not in self.leases:
            raise LookupError(f"lease {lease:x} not found")
        self.revision += 1
        self._put(key, value, lease)
        return self.revision

    def grant(self, lease_id: int, ttl: int) -> None:
        """Grant a lease with a given id, as LeaseGrant does; LeaseExists when it is live."""
        if lease_id in self.leases:
            raise LeaseExists("etcdserver: lease already exists")
        self.leases[lease_id] = Lease(max(ttl, ETCD_MIN_TTL))

    def expire(self, lease_id: int) -> None:
        """The lease's TTL ran out: it ends and its keys go in one revision."""
        self._end_lease(lease_id)

    def interfere(self, times: int = 1) -> None:
        """Before each of the next `times` write transactions, another writer writes the batch's first
        key: the same value and lease again if it exists (only its mod revision moves), else the value
        the batch wanted, on no lease."""
        self.before_txn(self._another_writer, times)

    def before_txn(self, action: Callable[[Sequence[dr.Change]], None], times: int = 1) -> None:
        """Run action(batch) just before each of the next `times` write transactions reaches the store."""
        self._before_txn.extend([action] * times)

    # --- the Store protocol -----------------------------------------------------------

    def host_lease(self, config: dr.Config) -> int:
        """The lease id EtcdStore uses: derived from the host IP and the prefix (no request)."""
        return config.lease_id

    def shared_lease_of(self, config: dr.Config):
        """The shared keys' lease ids EtcdStore uses: derived from the host IP and the key (no request)."""
        return functools.partial(dr.shared_lease_id, config.host_ip)

    def keep_alive(self, lease_id: int) -> bool:
        """As EtcdStore: nothing sent, the lease is renewed with the plan's other leases in apply."""
        self.calls["keep_alive"] += 1
        return True

    def sweep_departed(self) -> None:
        """As EtcdStore: nothing, a departed host's lease expires with its keys (no request, not counted)."""

    def renew(self, lease_id: int) -> bool:
        """One LeaseKeepAlive (a test's other host): renews a live lease; writes nothing, moves no revision."""
        self.rpcs["keepalive"] += 1
        return self._renew_one(lease_id)

    def lease(self, lease_id: int) -> Optional[dr.LeaseInfo]:
        """LeaseTimeToLive with keys."""
        self.calls["lease"] += 1
        self.rpcs["lease_ttl"] += 1
        lease = self.leases.get(lease_id)
        return dr.LeaseInfo(lease.granted_ttl, tuple(sorted(lease.keys))) if lease else None

    def read(self, reads: dr.Reads) -> dict[str, dr.StoredKey]:
        """A range over the prefix, or one read-only transaction of a range per key and folder."""
        self.calls["read"] += 1
        if reads.whole_prefix:
            self.rpcs["range"] += 1
            found = [key for key in self.kv if key.startswith(self.prefix + "/")]
        elif reads.keys or reads.folders:
            self.rpcs["range"] += 1
            ranges = len(reads.keys) + len(reads.folders)
            if ranges > ETCD_MAX_TXN_OPS:
                raise self._invalid("read keys", "too many operations in txn request")
            found = [key for key in self.kv if key in reads.keys or key.startswith(tuple(reads.folders))]
        else:
            found = []
        return {key: dr.StoredKey(self.kv[key].value, self.kv[key].lease, self.kv[key].mod_revision)
                for key in sorted(found)}

    def apply(self, plan: dr.Plan, ttl: int) -> None:
        """The lease action, the shared keys' leases renewed in one stream and granted, then the changes in
        guarded transactions, as EtcdStore.apply does."""
        self.calls["apply"] += 1
        if plan.lease_action.revokes:
            self._revoke(plan.lease_id)
        if plan.lease_action.grants:
            self._grant_counted(plan.lease_id, ttl)
        leases = {lease for _, lease in plan.renewals} | ({plan.lease_id} if plan.renews_lease else set())
        if leases:
            self.rpcs["keepalive"] += 1  # one stream for all of them
            if not all([self._renew_one(lease) for lease in sorted(leases)]):
                raise dr.Conflict("a lease ended since it was read")
        for lease in plan.grants:
            self._grant_counted(lease, ttl)
        for batch in dr.batches([change for change in plan.changes if change.kind is not dr.ChangeKind.RELEASE]):
            self._transaction(plan.lease_id, batch)

    def revoke(self, lease_id: int) -> None:
        """LeaseRevoke; nothing when the lease is already gone."""
        self.calls["revoke"] += 1
        self._revoke(lease_id)

    def held(self, timed) -> dr.Held:
        """One range over the prefix, then LeaseTimeToLive of each lease timed names, as EtcdStore.held does (the
        fake's clock stands still: a lease has its granted TTL left)."""
        self.calls["held"] += 1
        keys = self.read(dr.Reads(whole_prefix=True))
        live = {kv.lease: None for kv in keys.values() if kv.lease}
        for lease in sorted(set(timed(keys)) & set(live)):
            self.rpcs["lease_ttl"] += 1
            live[lease] = float(self.leases[lease].granted_ttl)
        return dr.Held(keys, live)

    # --- etcd's behaviour -------------------------------------------------------------

    def _renew_one(self, lease_id: int) -> bool:
        lease = self.leases.get(lease_id)
        if lease is None:
            return False  # etcd answers TTL 0
        lease.renewals += 1
        return True

    def _grant_counted(self, lease_id: int, ttl: int) -> None:
        self.rpcs["grant"] += 1
        try:
            self.grant(lease_id, ttl)
            self.writes["grant"] += 1
        except LeaseExists:
            pass  # Another run granted it a moment ago: EtcdStore tolerates this.

    def _revoke(self, lease_id: int) -> None:
        self.rpcs["revoke"] += 1
        if lease_id in self.leases:
            self._end_lease(lease_id)
            self.writes["revoke"] += 1

    def _transaction(self, lease_id: int, batch: Sequence[dr.Change]) -> None:
        """Txn(compare: mod_revision of each key, success: put or delete each key, failure: nothing)."""
        self.rpcs["txn"] += 1
        if self._before_txn:
            self._before_txn.pop(0)(batch)
        if len(batch) > ETCD_MAX_TXN_OPS:
            raise self._invalid("write keys", "too many operations in txn request")
        if len({change.key for change in batch}) < len(batch):
            raise self._invalid("write keys", "duplicate key given in txn request")
        if any(self._mod_revision(change.key) != change.expected_mod for change in batch):
            self.conflicts += 1
            raise dr.Conflict("a key changed while this run was writing")
        puts = [change for change in batch if change.kind is not dr.ChangeKind.REMOVE]
        if any((change.lease or lease_id) not in self.leases for change in puts):
            self.conflicts += 1
            # gRPC NOT_FOUND, which EtcdConnection.call turns into Conflict; nothing of the txn is applied.
            raise dr.Conflict("etcdserver: requested lease not found")
        deletes = [change for change in batch if change.kind is dr.ChangeKind.REMOVE and change.key in self.kv]
        if not puts and not deletes:
            return  # etcd moves no revision for a transaction that changed nothing
        self.revision += 1
        for change in batch:
            if change.kind is dr.ChangeKind.REMOVE:
                if self._delete(change.key):
                    self.writes["delete"] += 1
            else:
                self._put(change.key, change.value, change.lease or lease_id)
                self.writes["put"] += 1
        self.writes["txn"] += 1
        self.txn_sizes.append(len(batch))

    def _another_writer(self, batch: Sequence[dr.Change]) -> None:
        change = batch[0]
        entry = self.kv.get(change.key)
        if entry is not None:
            self.put(change.key, entry.value, entry.lease if entry.lease in self.leases else 0)
        else:
            self.put(change.key, change.value if change.value is not None else "", 0)

    def _mod_revision(self, key: str) -> int:
        entry = self.kv.get(key)
        return entry.mod_revision if entry else 0  # etcd compares a missing key's mod_revision as 0

    def _put(self, key: str, value: str, lease: int) -> None:
        """Put at the current revision, moving the key to its new lease."""
        old = self.kv.get(key)
        if old is not None and old.lease in self.leases:
            self.leases[old.lease].keys.discard(key)
        if lease:
            self.leases[lease].keys.add(key)
        if old is None:
            self.kv[key] = Entry(value, lease, self.revision, self.revision, 1)
        else:
            self.kv[key] = Entry(value, lease, old.create_revision, self.revision, old.version + 1)

    def _delete(self, key: str) -> bool:
        entry = self.kv.pop(key, None)
        if entry is not None and entry.lease in self.leases:
            self.leases[entry.lease].keys.discard(key)
        return entry is not None

    def _end_lease(self, lease_id: int) -> None:
        """Remove the lease and delete its keys in one revision (none when it had no keys)."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        if lease.keys:
            self.revision += 1
            for key in lease.keys:
                del self.kv[key]

    def _invalid(self, what: str, reason: str) -> dr.EtcdError:
        """The EtcdError the real adapter raises for gRPC INVALID_ARGUMENT."""
        return dr.EtcdError(f"{self.where}: {what}: invalid argument (etcdserver: {reason})")
