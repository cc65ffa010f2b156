"""Property-based tests of the pure planner: random container lists and etcd states in, plans out."""

from __future__ import annotations

import re

from hypothesis import given, note, strategies as st

import docker_register as dr
from strategies import (SERVICES, SETTINGS, PlanWorld, apply, container_lists, hex_text, host_ips, kept_states,
                        lease_states, prefixes, view_of)


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
        kept = draw(kept_states)
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
    return PlanWorld(config, desired, dict(entries), draw(lease_states))


def is_port_key(key: str) -> bool:
    return key.endswith("/" + dr.PORT_KEY)


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


@SETTINGS
@given(worlds(), st.sampled_from([dr.MAX_TXN_OPS, 0, 1, 2, 3, 5, 8]))
def test_reading_what_reads_for_names_gives_the_same_plan_as_reading_the_whole_prefix(world, limit):
    """A run reads its own keys and lease keys (or their folders, or all): that view plans alike."""
    on_lease = [] if world.lease_state is dr.LeaseState.MISSING else [
        key for key, kv in world.state.items() if kv.lease == world.lease]  # what LeaseTimeToLive lists
    reads = dr.reads_for(world.desired, on_lease, world.prefix, dr.DISCOVER, limit)
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
