"""Property-based tests of the pure planner: random container lists and etcd states in, plans out."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hypothesis import HealthCheck, given, note, settings, strategies as st

import docker_register as dr

SERVICES = ["web", "db", "api", "cache", "dns-udp"]
NASTY_LABELS = ["a/b", "../../etc", "..", ".", "x\ny", "nul\x00byte", "café", "服务", "-", "///", " ",
                "web-udp", "WEB.v2_x", "x" * 199, "x" * 200, "x" * 201, "y" * 10_000]
BIND_IPS = ["0.0.0.0", "::", "127.0.0.1", "::1", "10.1.2.3", "192.0.2.7", "2001:db8::7", "fe80::1"]
PROTOCOLS = ["tcp", "tcp", "tcp", "udp", "sctp", "TCP", "quic", "icmp/x"]
HEALTH = ["", "", " (healthy)", " (healthy)", " (unhealthy)", " (health: starting)"]
#: Examples per property come from the Hypothesis profile conftest.py loads: 300 in the full suite, fewer in
#: the developer loop (scripts/test -m unit).
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hex_text(size):
    return st.binary(min_size=size // 2, max_size=size // 2).map(bytes.hex)


def one_in(n):
    """True about once in n draws (a middle value: hypothesis favours the bounds of a range)."""
    return st.integers(1, n).map(lambda k: k == n // 2 + 1)


segments = st.from_regex(r"[A-Za-z0-9._-]{1,10}", fullmatch=True).filter(lambda s: s not in (".", ".."))
prefixes = st.one_of(st.just("/backends"), st.lists(segments, min_size=1, max_size=3).map(
    lambda parts: "/" + "/".join(parts))).map(dr.parse_prefix)
host_ips = st.ip_addresses().filter(
    lambda a: not (a.is_loopback or a.is_unspecified or a.is_multicast)).map(str).map(dr.parse_host_ip)
safe_names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,15}", fullmatch=True)
label_values = st.one_of(st.sampled_from(SERVICES), st.sampled_from(NASTY_LABELS), st.text(max_size=30),
                         st.text("ab/.-\n", min_size=195, max_size=205))
image_refs = st.one_of(
    st.sampled_from(SERVICES),
    st.builds("{}:{}/{}/{}:{}".format, safe_names, st.integers(1, 65535), safe_names, st.sampled_from(SERVICES),
              safe_names),
    st.builds("{}@sha256:{}".format, st.sampled_from(SERVICES), hex_text(64)),
    hex_text(64).map("sha256:{}".format),
    hex_text(64),
    st.text(max_size=20),
)
private_ports = st.one_of(st.sampled_from([53, 80, 443, 8080]), st.integers(1, 65535))
statuses = st.builds("Up {} seconds{}".format, st.integers(1, 59), st.sampled_from(HEALTH))


@st.composite
def port_bindings(draw):
    """One entry of a container's Ports: published on a host IP or only exposed."""
    private, proto = draw(private_ports), draw(st.sampled_from(PROTOCOLS))
    if draw(one_in(5)):
        return {"PrivatePort": private, "Type": proto}
    return {"IP": draw(st.sampled_from(BIND_IPS)), "PrivatePort": private,
            "PublicPort": draw(st.integers(1, 65535)), "Type": proto}


@st.composite
def labels_for(draw, ports):
    """SERVICE_* labels for a container with these private ports, plus an unrelated one."""
    labels = {"com.docker.compose.project": "demo"}
    if draw(st.booleans()):
        labels[dr.NAME_LABEL] = draw(label_values)
    for port in draw(st.lists(st.sampled_from(ports), max_size=2)) if ports else []:
        labels[dr.PORT_NAME_LABEL.format(port=port)] = draw(label_values)
    if draw(one_in(10)):
        labels[dr.IGNORE_LABEL] = draw(st.sampled_from(["true", "1", ""]))
    return labels


@st.composite
def containers(draw):
    """One entry of GET /containers/json?filters={"status":["running"]}."""
    ports = draw(st.lists(port_bindings(), max_size=4))
    return {
        "Id": draw(hex_text(64)),
        "Names": ["/" + draw(safe_names)],
        "Image": draw(image_refs),
        "ImageID": "sha256:" + "f" * 64,
        "Command": "/bin/httpd -f -p 80",
        "Created": 1795613505,
        "Ports": ports,
        "Labels": draw(labels_for(sorted({p["PrivatePort"] for p in ports}))),
        "State": "running",
        "Status": draw(statuses),
        "HostConfig": {"NetworkMode": "default"},
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2", "IPPrefixLen": 16}}},
        "Mounts": [],
    }


container_lists = st.lists(containers(), max_size=6, unique_by=lambda c: c["Id"])


@dataclass(frozen=True)
class World:
    """One host's containers and what etcd holds under its prefix when it plans."""

    host_ip: str
    prefix: str
    containers: list
    desired: dr.Desired
    state: dict
    lease_state: dr.LeaseState

    @property
    def lease(self) -> int:
        return dr.lease_id_for(self.host_ip, self.prefix)

    def plan(self, state=None, lease_state=None) -> dr.Plan:
        return dr.plan_changes(self.desired, self.state if state is None else state, self.lease,
                               lease_state or self.lease_state, self.prefix)


@st.composite
def worlds(draw):
    """Our containers, our keys (current, stale, wrong), other hosts' keys and keys outside the prefix."""
    host_ip, prefix = draw(host_ips), draw(prefixes)
    lease = dr.lease_id_for(host_ip, prefix)
    ours = draw(container_lists)
    config = dr.Config(endpoints=(), host_ip=host_ip, prefix=prefix, ttl=30, timeout=5.0)
    desired = dr.desired_keys(dr.registrations_from(ours, host_ip)[0], config)
    our_ids = sorted({c["Id"][:12] for c in ours})
    services = st.sampled_from(sorted({dr.service_of(k, prefix) for k in desired.own} - {None} | set(SERVICES)))
    foreign_ids = hex_text(12).filter(lambda cid: cid not in our_ids)
    stale_ids = st.sampled_from(our_ids) | hex_text(12) if our_ids else hex_text(12)
    values = st.sampled_from(sorted({*desired.own.values(), *desired.shared.values(), "80", "10.9.9.9:1"}))
    revisions = st.integers(1, 10**6)
    other_leases = st.sampled_from([0, *draw(st.lists(st.integers(1, 2**63 - 1).filter(lambda x: x != lease),
                                                      min_size=1, max_size=3))])

    def key(service, leaf):
        return f"{prefix}/{service}/{leaf}"

    # Our lease only ever holds <prefix>/<service>/<leaf> keys: odd shapes and outside keys are other writers'.
    entries = []
    for name, value in sorted({**desired.own, **desired.shared}.items()):
        kept = draw(st.sampled_from(["absent", "right", "wrong"]))
        if kept != "absent":
            entries.append((name, dr.StoredKey(value if kept == "right" else draw(values), lease, draw(revisions))))
    for _ in range(draw(st.integers(0, 4))):
        entries.append((key(draw(services), draw(stale_ids)), dr.StoredKey(draw(values), lease, draw(revisions))))
    for _ in range(draw(st.integers(0, 2))):
        entries.append((key(draw(services), dr.PORT_KEY), dr.StoredKey(draw(values), lease, draw(revisions))))
    for _ in range(draw(st.integers(0, 5))):
        leaf = draw(st.one_of(foreign_ids, st.just(dr.PORT_KEY)))
        entries.append((key(draw(services), leaf), dr.StoredKey(draw(values), draw(other_leases), draw(revisions))))
    for _ in range(draw(st.integers(0, 3))):
        odd = draw(st.sampled_from([f"{prefix}/{{}}", f"{prefix}/{{}}/x/port", f"{prefix}//{{}}",
                                    f"{prefix}x/{{}}/port", "/other/{}", "{}"])).format(draw(services))
        entries.append((odd, dr.StoredKey(draw(values), draw(other_leases), draw(revisions))))
    return World(host_ip, prefix, ours, desired, dict(entries), draw(st.sampled_from(dr.LeaseState)))


def is_port_key(key: str) -> bool:
    return key.endswith("/" + dr.PORT_KEY)


def apply(state, plan, lease_id, lease_state):
    """Play a plan against a state as etcd would: lease first, then guarded puts and deletes."""
    result = dict(state)
    if plan.lease_action.revokes or lease_state is not dr.LeaseState.ALIVE:
        result = {key: kv for key, kv in result.items() if kv.lease != lease_id}
    lease_usable = plan.lease_action.grants or lease_state is dr.LeaseState.ALIVE
    revision = max((kv.mod_revision for kv in state.values()), default=0)
    for change in plan.changes:
        held = result.get(change.key)
        assert (held.mod_revision if held else 0) == change.expected_mod, f"etcd would refuse {change}"
        revision += 1
        if change.kind is dr.ChangeKind.REMOVE:
            del result[change.key]
        else:
            handed = change.lease is not None  # onto another host's lease, which is alive
            assert handed or lease_usable, f"{change} puts on a lease that is missing or has the wrong TTL"
            result[change.key] = dr.StoredKey(change.value, change.lease or lease_id, revision)
    return result


@SETTINGS
@given(worlds())
def test_plan_never_touches_another_hosts_key(world):
    """No change names a key that another lease (or no lease) holds."""
    for change in world.plan().changes:
        held = world.state.get(change.key)
        assert held is None or held.lease == world.lease, change


@SETTINGS
@given(worlds())
def test_plan_writes_only_two_segment_keys_under_the_prefix(world):
    """Every written or deleted key is <prefix>/<service>/<leaf> with safe, non-empty segments."""
    for change in world.plan().changes:
        assert change.key.startswith(world.prefix + "/"), change
        parts = change.key[len(world.prefix) + 1:].split("/")
        assert len(parts) == 2 and not set(parts) & {"", ".", ".."}, change


@SETTINGS
@given(worlds())
def test_applying_the_plan_gives_exactly_the_desired_state(world):
    """After the plan, etcd holds our desired keys on our lease and other hosts' keys untouched."""
    lease, desired = world.lease, world.desired
    after = apply(world.state, world.plan(), lease, world.lease_state)
    note(f"after: {after}")
    for key, value in desired.own.items():
        assert after.get(key) is not None and (after[key].value, after[key].lease) == (value, lease), key
    for key, value in desired.shared.items():
        assert key in after, key
        assert after[key].value == value if after[key].lease == lease else after[key] == world.state[key], key
    served_elsewhere = {dr.service_of(key, world.prefix) for key, kv in world.state.items()
                        if kv.lease not in (lease, 0) and not is_port_key(key)}
    for key, kv in after.items():
        if kv.lease == lease and key not in desired.own and key not in desired.shared:
            # A port key this host no longer needs stays, unchanged, while another host serves the service:
            # this host no longer keeps it alive, the hosts that want it do.
            assert is_port_key(key) and dr.service_of(key, world.prefix) in served_elsewhere, f"{key} stayed"
            assert kv == world.state[key], key
    assert ({key: kv for key, kv in after.items() if kv.lease != lease}
            == {key: kv for key, kv in world.state.items() if kv.lease != lease})


@SETTINGS
@given(worlds())
def test_planning_again_after_applying_changes_nothing(world):
    """A second run on the applied state, with the lease alive, writes nothing and keeps the lease."""
    after = apply(world.state, world.plan(), world.lease, world.lease_state)
    again = world.plan(after, dr.LeaseState.ALIVE)
    assert again.changes == () and again.lease_action is dr.LeaseAction.KEEP


def view_of(state, reads: dr.Reads) -> dict:
    """What etcd answers to these reads."""
    if reads.whole_prefix:
        return dict(state)
    return {key: kv for key, kv in state.items() if key in reads.keys or key.startswith(reads.folders)}


@SETTINGS
@given(worlds(), st.sampled_from([dr.MAX_TXN_OPS, 0, 1, 2, 3, 5, 8]))
def test_reading_what_reads_for_names_gives_the_same_plan_as_reading_the_whole_prefix(world, limit):
    """A run reads its own keys and lease keys (or their folders, or all): that view plans alike."""
    on_lease = [] if world.lease_state is dr.LeaseState.MISSING else [
        key for key, kv in world.state.items() if kv.lease == world.lease]  # what LeaseTimeToLive lists
    reads = dr.reads_for(world.desired, on_lease, world.prefix, limit)
    assert len(reads.keys) + len(reads.folders) <= limit or reads.whole_prefix
    note(f"reads: {reads}")
    assert world.plan(view_of(world.state, reads)) == world.plan()


@SETTINGS
@given(worlds(), st.integers(1, 5))
def test_plan_batches_are_transaction_sized_and_name_each_key_once(world, size):
    """batches() keeps order in chunks of at most 128 (or any size), and a plan names a key once."""
    changes = world.plan().changes
    assert len({change.key for change in changes}) == len(changes)
    for limit, chunks in ((dr.MAX_TXN_OPS, list(dr.batches(changes))), (size, list(dr.batches(changes, size)))):
        assert all(0 < len(chunk) <= limit for chunk in chunks)
        assert all(len(chunk) == limit for chunk in chunks[:-1])
        assert tuple(change for chunk in chunks for change in chunk) == changes


@SETTINGS
@given(container_lists, host_ips)
def test_registrations_have_safe_service_names(containers_, host_ip):
    """Any container list gives registrations whose service names are safe key segments."""
    registrations, _ = dr.registrations_from(containers_, host_ip)
    for registration in registrations:
        name = registration.service
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name) and re.search(r"[A-Za-z0-9]", name), name
        assert len(name) <= dr.MAX_NAME_LENGTH, name
