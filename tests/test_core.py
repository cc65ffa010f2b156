"""The pure core: GET /containers/json dicts in, registrations, desired keys and plans out."""

from __future__ import annotations

import pytest

import docker_register as dr
from fakes import HOST, PREFIX, FakeDocker, container, port

LEASE = dr.lease_id_for(HOST, PREFIX)
OTHER_LEASE = 0x1234
CONFIG = dr.Config(endpoints=(), host_ip=HOST, prefix=PREFIX, ttl=30, timeout=5.0)


def regs(*containers):
    found, skips = dr.registrations_from(containers, HOST)
    return {(r.service, r.container_id): r.address for r in found}, skips


# --- naming and addresses ---------------------------------------------------------------


def test_single_port_uses_image_basename_and_host_ip_once_for_dual_stack_twins():
    found, skips = regs(container())
    assert found == {("web", "aaaaaaaaaaaa"): "10.0.0.5:32768"}
    assert skips == []


@pytest.mark.parametrize("host_ip, expected", [
    (HOST, "10.0.0.5:32771"),
    ("2001:db8::5", "[2001:db8::5]:32769"),
])
def test_dual_stack_twins_on_different_host_ports_register_the_twin_of_the_host_ip_family(
        host_ip, expected):
    # Docker allocates each family's port separately, so the twins can differ.
    twins = [port(80, 32769, ip="::"), port(80, 32771, ip="0.0.0.0")]
    found, _ = dr.registrations_from([container(ports=twins)], host_ip)
    assert [r.address for r in found] == [expected]


def test_a_wildcard_of_the_other_family_only_is_still_registered():
    found, _ = regs(container(ports=[port(80, 32769, ip="::")]))
    assert found == {("web", "aaaaaaaaaaaa"): "10.0.0.5:32769"}


@pytest.mark.parametrize("image, name", [
    ("registry:5000/team/web:1.2", "web"),
    ("web", "web"),
    ("docker.io/library/redis:7@sha256:" + "1" * 64, "redis"),
    ("ghcr.io/org/sub/api", "api"),
    ("localhost:5000/app:latest", "app"),
])
def test_image_basename_drops_registry_path_tag_and_digest(image, name):
    assert dr.image_basename(image) == name


@pytest.mark.parametrize("image", ["sha256:" + "2" * 64, "3" * 64, ""])
def test_bare_image_id_gives_no_name_and_a_skip_note(image):
    found, skips = regs(container(image=image))
    assert found == {}
    assert "SERVICE_NAME" in skips[0].reason and not skips[0].quiet


def test_several_ports_get_port_suffixed_default_names():
    found, _ = regs(container(ports=[port(80, 8080), port(443, 8443)]))
    assert found == {("web-80", "aaaaaaaaaaaa"): "10.0.0.5:8080", ("web-443", "aaaaaaaaaaaa"): "10.0.0.5:8443"}


def test_service_name_label_is_suffixed_when_several_ports_but_port_label_is_exact():
    labels = {"SERVICE_NAME": "shop", "SERVICE_443_NAME": "shop-tls"}
    found, _ = regs(container(ports=[port(80, 8080), port(443, 8443)], labels=labels))
    assert set(found) == {("shop-80", "aaaaaaaaaaaa"), ("shop-tls", "aaaaaaaaaaaa")}


def test_service_name_label_on_single_port():
    found, _ = regs(container(labels={"SERVICE_NAME": "api"}))
    assert set(found) == {("api", "aaaaaaaaaaaa")}


def test_udp_port_name_ends_in_udp_once():
    found, _ = regs(container(ports=[port(53, 5353, proto="udp")], labels={"SERVICE_53_NAME": "dns-udp"}),
                    container(cid="b" * 64, image="local/dns", ports=[port(53, 5354, proto="udp")]))
    assert set(found) == {("dns-udp", "aaaaaaaaaaaa"), ("dns-udp", "bbbbbbbbbbbb")}


def test_tcp_and_udp_on_one_port_are_two_services():
    found, _ = regs(container(image="dns", ports=[port(53, 53), port(53, 53, proto="udp")]))
    assert set(found) == {("dns-53", "aaaaaaaaaaaa"), ("dns-53-udp", "aaaaaaaaaaaa")}


@pytest.mark.parametrize("label, name", [
    ("my service!", "my-service-"),
    ("a/b", "a-b"),
    ("../../etc", "..-..-etc"),
    ("x\ny", "x-y"),
    ("café", "caf-"),
])
def test_names_keep_only_safe_characters(label, name):
    found, _ = regs(container(labels={"SERVICE_NAME": label}))
    assert set(found) == {(name, "aaaaaaaaaaaa")}


@pytest.mark.parametrize("label", ["///", "..", "...", "-", "\x00", "é" * 3, "x" * 10_000])
def test_name_with_nothing_usable_is_skipped_with_a_note(label):
    found, skips = regs(container(labels={"SERVICE_NAME": label}), container(cid="c" * 64, name="ok"))
    assert set(found) == {("web", "cccccccccccc")}
    assert len(skips) == 1 and "name" in skips[0].reason and not skips[0].quiet


def test_service_ignore_label_skips_quietly():
    found, skips = regs(container(labels={"SERVICE_IGNORE": "true"}))
    assert found == {} and skips[0].quiet


def test_empty_service_ignore_label_does_not_ignore():
    found, _ = regs(container(labels={"SERVICE_IGNORE": ""}))
    assert found


@pytest.mark.parametrize("status, registered", [
    ("Up 3 minutes", True),
    ("Up 3 minutes (healthy)", True),
    ("Up 3 seconds (health: starting)", False),
    ("Up 3 minutes (unhealthy)", False),
])
def test_health_from_status_text(status, registered):
    found, _ = regs(container(status=status))
    assert bool(found) is registered


@pytest.mark.parametrize("health, registered", [("healthy", True), ("unhealthy", False), ("starting", False)])
def test_health_field_of_newer_apis_wins(health, registered):
    entry = container(status="Up 3 minutes")
    entry["Health"] = {"Status": health, "FailingStreak": 0}
    found, _ = regs(entry)
    assert bool(found) is registered


def test_non_running_state_is_skipped():
    found, _ = regs(container(state="paused", status="Up 3 minutes (Paused)"))
    assert found == {}


def test_specific_address_binding_registers_that_address():
    found, _ = regs(container(ports=[port(80, 8080, ip="10.0.0.9")]))
    assert found == {("web", "aaaaaaaaaaaa"): "10.0.0.9:8080"}


def test_ipv6_addresses_are_bracketed():
    found, _ = dr.registrations_from([container(ports=[port(80, 8080, ip="2001:db8::7")])], HOST)
    assert found[0].address == "[2001:db8::7]:8080"
    found, _ = dr.registrations_from([container()], "2001:db8::5")
    assert found[0].address == "[2001:db8::5]:32768"


def test_loopback_only_port_is_skipped_with_a_note_while_others_register():
    found, skips = regs(container(ports=[port(80, 8080), port(81, 8081, ip="127.0.0.1"),
                                         port(81, 8081, ip="::1")]))
    assert found == {("web-80", "aaaaaaaaaaaa"): "10.0.0.5:8080"}
    assert "loopback" in skips[0].reason and "81/tcp" in skips[0].reason


def test_exposed_but_unpublished_ports_are_not_registered():
    found, _ = regs(container(ports=[{"PrivatePort": 80, "Type": "tcp"}, port(443, 8443)]))
    assert found == {("web", "aaaaaaaaaaaa"): "10.0.0.5:8443"}


def test_wildcard_binding_wins_over_specific_and_lowest_port_first():
    found, _ = regs(container(ports=[port(80, 9000, ip="10.0.0.9"), port(80, 8081), port(80, 8080)]))
    assert found == {("web", "aaaaaaaaaaaa"): "10.0.0.5:8080"}


def test_odd_protocol_is_skipped_with_a_note():
    found, skips = regs(container(ports=[port(80, 8080, proto="quic")]))
    assert found == {} and "protocol" in skips[0].reason


def test_sctp_is_registered_with_suffix():
    found, _ = regs(container(ports=[port(9, 9000, proto="sctp")]))
    assert set(found) == {("web-sctp", "aaaaaaaaaaaa")}


def test_port_order_from_docker_does_not_matter():
    a = regs(container(ports=[port(80, 8080), port(443, 8443)]))
    b = regs(container(ports=[port(443, 8443), port(80, 8080)]))
    assert a == b


# --- desired keys -----------------------------------------------------------------------


def test_desired_keys_layout_and_port_key():
    found, _ = dr.registrations_from([container(), container(cid="b" * 64, ports=[port(80, 32769)])], HOST)
    desired = dr.desired_keys(found, CONFIG)
    assert desired.own == {"/backends/web/aaaaaaaaaaaa": "10.0.0.5:32768",
                                 "/backends/web/bbbbbbbbbbbb": "10.0.0.5:32769"}
    assert desired.shared == {"/backends/web/port": "80"}


def test_one_service_on_two_private_ports_notes_the_conflict():
    found, _ = dr.registrations_from([container(labels={"SERVICE_NAME": "x"}),
                                      container(cid="b" * 64, labels={"SERVICE_NAME": "x"},
                                                ports=[port(8080, 9000)])], HOST)
    desired = dr.desired_keys(found, CONFIG)
    assert desired.shared == {"/backends/x/port": "80"} and "8080" in desired.notes[0]


def test_two_ports_with_one_explicit_name_keep_the_first():
    found, _ = dr.registrations_from([container(ports=[port(80, 8080), port(81, 8081)],
                                                labels={"SERVICE_80_NAME": "a", "SERVICE_81_NAME": "a"})], HOST)
    desired = dr.desired_keys(found, CONFIG)
    assert desired.own == {"/backends/a/aaaaaaaaaaaa": "10.0.0.5:8080"} and desired.notes


# --- plans ------------------------------------------------------------------------------


def stored(value, lease=LEASE, mod=5):
    return dr.StoredKey(value, lease, mod)


def desired(instances=None, ports=None):
    return dr.Desired(instances or {}, ports or {})


ALIVE = dr.LeaseState.ALIVE


def plan(want, have, state=ALIVE):
    return dr.plan_changes(want, have, LEASE, state, PREFIX, dr.DISCOVER)


def actions(p):
    return [(c.kind, c.key, c.value) for c in p.changes]


def test_plan_should_add_new_keys_and_grant_a_missing_lease():
    p = plan(desired({"/backends/web/aaa": "h:1"}, {"/backends/web/port": "80"}), {}, dr.LeaseState.MISSING)
    assert actions(p) == [("add", "/backends/web/aaa", "h:1"), ("add", "/backends/web/port", "80")]
    assert p.lease_action is dr.LeaseAction.GRANT


def test_plan_should_be_empty_when_nothing_changed():
    have = {"/backends/web/aaa": stored("h:1"), "/backends/web/port": stored("80")}
    p = plan(desired({"/backends/web/aaa": "h:1"}, {"/backends/web/port": "80"}), have)
    assert p.changes == () and p.unchanged == 2 and p.lease_action is dr.LeaseAction.KEEP


def test_plan_should_update_a_changed_value_guarded_by_its_revision():
    p = plan(desired({"/backends/web/aaa": "h:2"}), {"/backends/web/aaa": stored("h:1", mod=17)})
    assert p.changes == (dr.Change("update", "/backends/web/aaa", "h:2", "h:1", 17),)


def test_plan_should_remove_own_keys_no_longer_desired():
    p = plan(desired(), {"/backends/web/aaa": stored("h:1"), "/backends/web/port": stored("80")})
    assert [(c.kind, c.key) for c in p.changes] == [("remove", "/backends/web/aaa"), ("remove", "/backends/web/port")]


def test_plan_should_never_touch_other_hosts_keys():
    have = {"/backends/web/bbb": stored("o:1", lease=OTHER_LEASE), "/backends/db/ccc": stored("o:2", lease=0)}
    p = plan(desired({"/backends/web/aaa": "h:1"}), have)
    assert actions(p) == [("add", "/backends/web/aaa", "h:1")]


def test_plan_should_leave_a_shared_port_key_with_the_right_value_whoever_wrote_it():
    p = plan(desired(ports={"/backends/web/port": "80"}), {"/backends/web/port": stored("80", lease=OTHER_LEASE)})
    assert p.changes == () and p.unchanged == 1


def test_plan_should_not_rewrite_another_hosts_port_key_with_a_different_value_but_note_it():
    p = plan(desired(ports={"/backends/web/port": "80"}), {"/backends/web/port": stored("8080", lease=OTHER_LEASE)})
    assert p.changes == () and "another host" in p.notes[0]


def test_plan_should_fix_its_own_port_key():
    p = plan(desired(ports={"/backends/web/port": "80"}), {"/backends/web/port": stored("81")})
    assert actions(p) == [("update", "/backends/web/port", "80")]


def test_plan_should_never_remove_a_key_outside_the_prefix_even_on_its_lease():
    p = plan(desired(), {"/other/x": stored("v"), "/backendsx/a/b": stored("v"), "/backends/a/b": stored("v")})
    assert [(c.kind, c.key) for c in p.changes] == [("remove", "/backends/a/b")]


def test_plan_should_leave_its_port_key_to_a_host_still_serving_the_service():
    have = {"/backends/web/port": stored("80"), "/backends/web/bbb": stored("o:1", lease=OTHER_LEASE)}
    p = plan(desired(), have)
    assert p.changes == () and p.unchanged == 1  # not renewed by this host any more: the other keeps it alive
    assert p.renewals == () and p.lease_action is dr.LeaseAction.KEEP
    # A store that records its shared keys (Redis's index, ZooKeeper's claims) drops that record.
    released = dr.plan_changes(desired(), have, LEASE, ALIVE, PREFIX, dr.DISCOVER, releases=True)
    assert released.changes == (dr.Change("release", "/backends/web/port", "80", "80", 5, shared=True),)


def test_plan_should_move_keys_of_its_containers_onto_its_lease():
    p = plan(desired({"/backends/web/aaa": "h:1"}), {"/backends/web/aaa": stored("h:1", lease=OTHER_LEASE)})
    assert actions(p) == [("update", "/backends/web/aaa", "h:1")]


def test_plan_should_rewrite_everything_when_the_lease_is_missing():
    have = {"/backends/web/aaa": stored("h:1"), "/backends/web/port": stored("80", lease=OTHER_LEASE)}
    p = plan(desired({"/backends/web/aaa": "h:1"}, {"/backends/web/port": "80"}), have, dr.LeaseState.MISSING)
    assert actions(p) == [("add", "/backends/web/aaa", "h:1")]
    assert p.lease_action is dr.LeaseAction.GRANT and p.unchanged == 1


def test_plan_should_replace_a_lease_with_the_wrong_ttl():
    p = plan(desired({"/backends/web/aaa": "h:1"}), {"/backends/web/aaa": stored("h:1")}, dr.LeaseState.WRONG_TTL)
    assert actions(p) == [("add", "/backends/web/aaa", "h:1")] and p.lease_action is dr.LeaseAction.REPLACE


def test_plan_should_not_grant_a_lease_for_nothing():
    assert plan(desired(), {}, dr.LeaseState.MISSING).lease_action is dr.LeaseAction.KEEP


def test_batches_hold_at_most_128_changes():
    changes = [dr.Change("add", f"/k/{i}", "v", None, 0) for i in range(300)]
    assert [len(b) for b in dr.batches(changes)] == [128, 128, 44]


# --- configuration parsing --------------------------------------------------------------


@pytest.mark.parametrize("text, endpoints", [
    ("127.0.0.1:2379", ["http://127.0.0.1:2379"]),
    ("http://a:1,b:2", ["http://a:1", "http://b:2"]),
    ("http://[::1]:2379/", ["http://[::1]:2379"]),
])
def test_parse_endpoints(text, endpoints):
    assert [str(e) for e in dr.parse_endpoints(text)] == endpoints


@pytest.mark.parametrize("text", ["", "a:1,", "host", "host:0", "host:65536", "ftp://a:1", "a:b", "a b:1"])
def test_bad_endpoints_are_usage_errors(text):
    with pytest.raises(dr.UsageError):
        dr.parse_endpoints(text)


@pytest.mark.parametrize("prefix", ["", "/", "backends", "/backends/", "/a/../b", "/a//b", "/a b", "/a/./b"])
def test_bad_prefixes_are_usage_errors(prefix):
    with pytest.raises(dr.UsageError):
        dr.parse_prefix(prefix)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "0.0.0.0", "::", "224.0.0.1", "10.0.0", "host"])
def test_unreachable_host_ips_are_usage_errors(address):
    with pytest.raises(dr.UsageError):
        dr.parse_host_ip(address)


ROUTES = """Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
eth1	00000000	0102A8C0	0003	0	0	600	00000000	0	0	0
eth0	00000000	010200C0	0003	0	0	100	00000000	0	0	0
docker0	000011AC	00000000	0001	0	0	0	0000FFFF	0	0	0
"""


def test_default_route_with_the_lowest_metric_wins():
    assert dr.default_route_interface(ROUTES) == ("eth0", "192.0.2.1")


def test_no_default_route():
    assert dr.default_route_interface(ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[3]) is None


def test_detected_address_on_a_docker_network_is_refused():
    for own_address in ("172.17.0.2", "172.17.0.1"):  # a container's address, a bridge gateway
        with pytest.raises(dr.UsageError, match="HOST_IP"):
            dr.check_detected_ip(own_address, [container()])
    dr.check_detected_ip("172.17.0.9", [container()])  # same subnet (say macvlan on the LAN): fine
    dr.check_detected_ip("10.0.0.5", [container()])


def test_lease_ids_are_stable_positive_and_distinct():
    assert dr.lease_id_for(HOST, PREFIX) == LEASE
    assert 0 < LEASE < 2 ** 63
    assert dr.lease_id_for("10.0.0.6", PREFIX) != LEASE
    assert dr.lease_id_for(HOST, "/other") != LEASE


# --- where the address comes from: published ports, a container network, the host network --------


def networked(networks, ports=None, labels=None, mode="default", cid="a" * 64):
    """A container on the given networks {name: (ipv4, ipv6)}, with exposed (unpublished) ports by default."""
    entry = container(cid=cid, labels=labels, ports=ports if ports is not None else [
        {"PrivatePort": 80, "Type": "tcp"}, {"PrivatePort": 53, "Type": "udp"}])
    entry["HostConfig"] = {"NetworkMode": mode}
    entry["NetworkSettings"]["Networks"] = {
        name: {"IPAddress": v4, "GlobalIPv6Address": v6, "IPPrefixLen": 24} for name, (v4, v6) in networks.items()}
    return entry


def internal(*containers, network=None, host_ip=HOST, exposed=None):
    found, skips = dr.registrations_from(containers, host_ip, internal=True, network=network, exposed=exposed)
    return {(r.service, r.address) for r in found}, [s.reason for s in skips]


def test_internal_registers_the_container_address_and_private_port_of_every_exposed_port():
    found, skips = internal(networked({"routed": ("10.50.0.7", "")}))
    assert found == {("web-53-udp", "10.50.0.7:53"), ("web-80", "10.50.0.7:80")} and skips == []


def test_without_internal_exposed_unpublished_ports_stay_unregistered():
    found, _ = dr.registrations_from([networked({"routed": ("10.50.0.7", "")})], HOST)
    assert found == []


def test_internal_on_several_networks_without_a_choice_is_skipped_naming_them():
    found, skips = internal(networked({"front": ("10.50.0.7", ""), "back": ("10.60.0.7", "")}, ports=[port(80, 0)]))
    assert found == set() and "back, front" in skips[0] and "SERVICE_NETWORK" in skips[0]


@pytest.mark.parametrize("labels, network, expected", [
    ({"SERVICE_NETWORK": "back"}, None, "10.60.0.7:80"),
    ({}, "front", "10.50.0.7:80"),
    ({"SERVICE_NETWORK": "back"}, "front", "10.60.0.7:80"),
    ({"SERVICE_80_NETWORK": "front", "SERVICE_NETWORK": "back"}, None, "10.50.0.7:80"),
])
def test_internal_network_choice_label_per_port_then_label_then_flag(labels, network, expected):
    entry = networked({"front": ("10.50.0.7", ""), "back": ("10.60.0.7", "")},
                      ports=[{"PrivatePort": 80, "Type": "tcp"}], labels=labels)
    found, skips = internal(entry, network=network)
    assert found == {("web", expected)} and skips == []


@pytest.mark.parametrize("hostile", ["", "/", "..", "x" * 1000, "other-containers-net"])
def test_internal_label_naming_a_network_the_container_is_not_on_is_a_note(hostile):
    entry = networked({"front": ("10.50.0.7", "")}, ports=[{"PrivatePort": 80, "Type": "tcp"}],
                      labels={"SERVICE_NETWORK": hostile})
    found, skips = internal(entry)
    if hostile:
        assert found == set() and "not on network" in skips[0] and "front" in skips[0] and len(skips[0]) < 300
    else:  # an empty label chooses nothing: the only network
        assert found == {("web", "10.50.0.7:80")}


def test_internal_container_without_a_network_address_is_skipped_with_a_note():
    # As dockerd 20.10 lists a --network none container: no ports, a "none" network without an address.
    found, skips = internal(networked({"none": ("", "")}, ports=[], mode="none"))
    assert found == set() and skips == ["no network address (--internal registers container addresses)"]


def test_without_internal_a_container_on_no_network_is_quietly_absent():
    found, skips = dr.registrations_from([networked({"none": ("", "")}, ports=[], mode="none")], HOST)
    assert found == [] and skips == []


@pytest.mark.parametrize("host_ip, expected", [(HOST, "10.50.0.7:80"), ("2001:db8::5", "[fd00::7]:80")])
def test_internal_takes_the_network_address_of_the_host_ips_family(host_ip, expected):
    entry = networked({"dual": ("10.50.0.7", "fd00::7")}, ports=[{"PrivatePort": 80, "Type": "tcp"}])
    found, _ = internal(entry, host_ip=host_ip)
    assert found == {("web", expected)}


@pytest.mark.parametrize("inside", [False, True])
def test_host_network_containers_register_host_ip_and_exposed_port_in_both_modes(inside):
    entry = networked({"host": ("", "")}, ports=[], mode="host")
    found, _ = dr.registrations_from([entry], HOST, internal=inside, exposed={entry["Id"]: ["8080/tcp"]})
    assert [(r.service, r.address) for r in found] == [("web", "10.0.0.5:8080")]


def test_one_list_call_and_one_inspect_per_host_network_container_only():
    hosted = networked({"host": ("", "")}, ports=[], mode="host", cid="b" * 64)
    hosted["ExposedPorts"] = ["9000/tcp"]
    docker = FakeDocker([container(), hosted])
    found, _, running = dr.current_registrations(docker, CONFIG)
    assert running == {"a" * 64, "b" * 64}
    assert sorted(r.address for r in found) == ["10.0.0.5:32768", "10.0.0.5:9000"]
    assert docker.calls == 1 and docker.inspects == 1
