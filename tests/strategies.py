"""Hypothesis strategies shared by the property tests: Engine-API container lists, what the store holds when a
host plans (PlanWorld), and etcd's answer to reads and to a plan, played on plain dicts."""

from __future__ import annotations

import dataclasses
import functools
import string

from hypothesis import HealthCheck, settings, strategies as st

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


# Both are drawn from many times per example: made once per size (Hypothesis checks each new strategy object).
@functools.cache
def hex_text(size):
    return st.binary(min_size=size // 2, max_size=size // 2).map(bytes.hex)


@functools.cache
def one_in(n):
    """True about once in n draws (a middle value: hypothesis favours the bounds of a range)."""
    return st.integers(1, n).map(lambda k: k == n // 2 + 1)


# Names drawn from an alphabet (not from_regex, several times slower to draw): [A-Za-z0-9._-]{1,10}, not . or ..
segments = st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=10).filter(
    lambda s: s not in (".", ".."))
prefixes = st.one_of(st.just("/backends"), st.lists(segments, min_size=1, max_size=3).map(
    lambda parts: "/" + "/".join(parts))).map(dr.parse_prefix)
host_ips = st.ip_addresses().filter(
    lambda a: not (a.is_loopback or a.is_unspecified or a.is_multicast)).map(str).map(dr.parse_host_ip)
# [a-z0-9][a-z0-9._-]{0,15}
safe_names = st.builds(str.__add__, st.sampled_from(string.ascii_lowercase + string.digits),
                       st.text(string.ascii_lowercase + string.digits + "._-", max_size=15))
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
port_protocols = st.sampled_from(PROTOCOLS)
bind_ips = st.sampled_from(BIND_IPS)
ignore_values = st.sampled_from(["true", "1", ""])
kept_states = st.sampled_from(["absent", "right", "wrong"])
lease_states = st.sampled_from(dr.LeaseState)


@st.composite
def port_bindings(draw):
    """One entry of a container's Ports: published on a host IP or only exposed."""
    private, proto = draw(private_ports), draw(port_protocols)
    if draw(one_in(5)):
        return {"PrivatePort": private, "Type": proto}
    return {"IP": draw(bind_ips), "PrivatePort": private,
            "PublicPort": draw(st.integers(1, 65535)), "Type": proto}


port_lists = st.lists(port_bindings(), max_size=4)


@functools.cache
def picked_ports(ports: tuple[int, ...]):
    """Up to two of these ports (one strategy per tuple: Hypothesis checks each new strategy object)."""
    return st.lists(st.sampled_from(ports), max_size=2)


@functools.cache
@st.composite
def labels_for(draw, ports: tuple[int, ...]):
    """SERVICE_* labels for a container with these private ports, plus an unrelated one."""
    labels = {"com.docker.compose.project": "demo"}
    if draw(st.booleans()):
        labels[dr.NAME_LABEL] = draw(label_values)
    for port in draw(picked_ports(ports)) if ports else []:
        labels[dr.PORT_NAME_LABEL.format(port=port)] = draw(label_values)
    if draw(one_in(10)):
        labels[dr.IGNORE_LABEL] = draw(ignore_values)
    return labels


@st.composite
def containers(draw):
    """One entry of GET /containers/json?filters={"status":["running"]}."""
    ports = draw(port_lists)
    return {
        "Id": draw(hex_text(64)),
        "Names": ["/" + draw(safe_names)],
        "Image": draw(image_refs),
        "ImageID": "sha256:" + "f" * 64,
        "Command": "/bin/httpd -f -p 80",
        "Created": 1795613505,
        "Ports": ports,
        "Labels": draw(labels_for(tuple(sorted({p["PrivatePort"] for p in ports})))),
        "State": "running",
        "Status": draw(statuses),
        "HostConfig": {"NetworkMode": "default"},
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.2", "IPPrefixLen": 16}}},
        "Mounts": [],
    }


container_lists = st.lists(containers(), max_size=6, unique_by=lambda c: c["Id"])




@dataclasses.dataclass(frozen=True)
class PlanWorld:
    """One host's desired keys, and what the store holds under its prefix when it plans (its own current, wrong and
    stale keys, other hosts' keys, keys outside the prefix)."""

    config: dr.Config
    desired: dr.Desired
    state: dict
    lease_state: dr.LeaseState

    @property
    def lease(self) -> int:
        return self.config.lease_id

    @property
    def prefix(self) -> str:
        return self.config.prefix

    def plan(self, state=None, lease_state=None) -> dr.Plan:
        return dr.plan_changes(self.desired, self.state if state is None else state, self.lease,
                               lease_state or self.lease_state, self.prefix, self.config.layout)


# --- etcd's answers, on plain dicts --------------------------------------------------------------


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


def view_of(state, reads: dr.Reads) -> dict:
    """What etcd answers to these reads."""
    if reads.whole_prefix:
        return dict(state)
    return {key: kv for key, kv in state.items() if key in reads.keys or key.startswith(reads.folders)}
