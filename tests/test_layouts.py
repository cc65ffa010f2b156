"""The layouts: GET /containers/json dicts in, the keys Traefik, CoreDNS (SkyDNS) and docker-discover read
out, and the planner on those keys. No servers: Engine-API-shaped dicts and StoredKey maps only."""

from __future__ import annotations

import dataclasses
import functools
import json
import re

import pytest
from hypothesis import given, note, settings, strategies as st

import docker_register as dr
from fakes import HOST, container, port
from strategies import (SETTINGS, PlanWorld, apply, container_lists, hex_text, host_ips, lease_states, one_in, prefixes,
                        segments, view_of)

HOST6 = "2001:db8::5"
OTHER_LEASE = 0x1234
A, B = "a" * 64, "b" * 64
CONFIG = dr.Config(endpoints=(), host_ip=HOST, prefix="traefik", ttl=30, timeout=5.0, layout_name="traefik")
SKYDNS = dataclasses.replace(CONFIG, prefix="/skydns", layout_name="skydns")
DISCOVER = dr.Config(endpoints=(), host_ip=HOST, prefix="/backends", ttl=30, timeout=5.0)
LEASE = CONFIG.lease_id
ALIVE = dr.LeaseState.ALIVE
ROUTER = {"traefik.http.routers.web.rule": "Host(`web.example`)"}


def desired(*containers, config=CONFIG, host_ip=HOST):
    found, _ = dr.registrations_from(containers, host_ip)
    return dr.desired_keys(found, dataclasses.replace(config, host_ip=host_ip))


def server(service, cid=A, protocol="http"):
    leaf = "url" if protocol == "http" else "address"
    return f"traefik/{protocol}/services/{service}/loadbalancer/servers/{cid[:12]}/{leaf}"


def router(name, field, protocol="http"):
    return f"traefik/{protocol}/routers/{name}/{field}"


# --- Traefik: servers ---------------------------------------------------------------------


def test_traefik_http_server_is_a_url_keyed_by_container_id_under_its_service():
    want = desired(container(), container(cid=B, name="web2", ports=[port(80, 32769)]))
    assert want.own == {server("web"): "http://10.0.0.5:32768", server("web", B): "http://10.0.0.5:32769"}
    assert want.shared == {} and want.notes == ()


@pytest.mark.parametrize("labels", [
    {"SERVICE_PROTOCOL": "tcp"},
    {"SERVICE_PROTOCOL": " TCP "},
    {"SERVICE_80_PROTOCOL": "tcp"},
    {"SERVICE_PROTOCOL": "http", "SERVICE_80_PROTOCOL": "tcp"},
])
def test_traefik_tcp_label_makes_a_tcp_service_with_an_address(labels):
    want = desired(container(labels=labels))
    assert want.own == {server("web", protocol="tcp"): "10.0.0.5:32768"}


def test_traefik_per_port_protocol_label_wins_over_the_container_wide_one():
    ports = [port(80, 8080), port(5432, 5432)]
    for labels in ({"SERVICE_5432_PROTOCOL": "tcp"}, {"SERVICE_PROTOCOL": "tcp", "SERVICE_80_PROTOCOL": "http"}):
        assert desired(container(ports=ports, labels=labels)).own == {
            server("web-80"): "http://10.0.0.5:8080",
            server("web-5432", protocol="tcp"): "10.0.0.5:5432",
        }, labels


def test_traefik_udp_port_is_a_udp_service_whatever_the_protocol_label_says():
    udp = [port(53, 5353, proto="udp")]
    for labels in ({}, {"SERVICE_PROTOCOL": "http"}, {"SERVICE_53_PROTOCOL": "tcp"}):
        assert desired(container(ports=udp, labels=labels)).own == {
            server("web-udp", protocol="udp"): "10.0.0.5:5353"}, labels


def test_traefik_ipv6_host_ip_is_bracketed_in_urls_and_addresses():
    assert desired(container(), host_ip=HOST6).own == {server("web"): "http://[2001:db8::5]:32768"}
    assert desired(container(labels={"SERVICE_PROTOCOL": "tcp"}), host_ip=HOST6).own == {
        server("web", protocol="tcp"): "[2001:db8::5]:32768"}


def test_traefik_sctp_port_writes_no_key_outside_traefiks_protocols():
    # Traefik has http, tcp and udp sections only: traefik/sctp/... would be read by nothing and, not fitting
    # the layout, never removed by the planner once the container is gone.
    want = desired(container(ports=[port(9, 9000, proto="sctp"), port(80, 8080)]))
    assert server("web-80") in want.own
    assert all(key.split("/")[1] in dr.TRAEFIK_PROTOCOLS for key in [*want.own, *want.shared]), want.own
    assert len(want.notes) == 1 and "9/sctp" in want.notes[0]


def test_traefik_service_names_differing_only_in_case_are_one_service():
    want = desired(container(labels={"SERVICE_NAME": "Web"}), container(cid=B, labels={"SERVICE_NAME": "web"}))
    assert set(want.own) == {server("web"), server("web", B)}


# --- Traefik: routing from traefik.* labels --------------------------------------------------


def test_traefik_router_labels_become_shared_router_keys_with_the_containers_only_service():
    want = desired(container(labels={**ROUTER, "traefik.http.routers.web.entrypoints": "web"}))
    assert want.own == {server("web"): "http://10.0.0.5:32768"}
    assert want.shared == {router("web", "rule"): "Host(`web.example`)", router("web", "service"): "web",
                           router("web", "entrypoints"): "web"}
    assert want.notes == ()


def test_traefik_router_naming_its_service_keeps_it_lowercased_like_the_names_in_keys():
    labels = {**ROUTER, "traefik.http.routers.web.service": "Site",
              "traefik.http.services.site.loadbalancer.server.port": "80"}
    want = desired(container(labels=labels))
    assert want.own == {server("site"): "http://10.0.0.5:32768"}
    assert want.shared == {router("web", "rule"): "Host(`web.example`)", router("web", "service"): "site"}


def test_traefik_router_without_service_on_a_container_with_several_services_is_skipped_with_a_note():
    labels = {**ROUTER, "traefik.http.routers.web.entrypoints": "web"}
    want = desired(container(ports=[port(80, 8080), port(443, 8443)], labels=labels))
    assert want.own == {server("web-80"): "http://10.0.0.5:8080", server("web-443"): "http://10.0.0.5:8443"}
    assert want.shared == {}
    assert len(want.notes) == 1 and "router web" in want.notes[0] and "no service" in want.notes[0]


def test_traefik_service_port_label_registers_that_port_under_the_named_service():
    labels = {**ROUTER, "traefik.http.routers.web.service": "site",
              "traefik.http.services.site.loadbalancer.server.port": "8081"}
    want = desired(container(ports=[port(80, 8080), port(8081, 9000)], labels=labels))
    assert want.own == {server("web-80"): "http://10.0.0.5:8080", server("site"): "http://10.0.0.5:9000"}
    assert want.shared == {router("web", "rule"): "Host(`web.example`)", router("web", "service"): "site"}
    # The router's reference holds: the service it names has a server here.
    assert any(key.startswith(f"traefik/http/services/{want.shared[router('web', 'service')]}/") for key in want.own)


def test_traefik_tcp_service_port_label_makes_that_port_tcp_and_routes_to_it():
    labels = {"traefik.tcp.services.db.loadbalancer.server.port": "80", "traefik.tcp.routers.db.rule": "HostSNI(`*`)"}
    want = desired(container(labels=labels))
    assert want.own == {server("db", protocol="tcp"): "10.0.0.5:32768"}
    assert want.shared == {router("db", "rule", "tcp"): "HostSNI(`*`)", router("db", "service", "tcp"): "db"}


def test_traefik_udp_service_port_label_names_the_udp_service():
    labels = {"traefik.udp.services.dns.loadbalancer.server.port": "53", "traefik.udp.routers.dns.entrypoints": "dns"}
    want = desired(container(ports=[port(53, 5353, proto="udp")], labels=labels))
    assert want.own == {server("dns", protocol="udp"): "10.0.0.5:5353"}
    assert want.shared == {router("dns", "entrypoints", "udp"): "dns", router("dns", "service", "udp"): "dns"}


def test_traefik_server_scheme_https_gives_https_urls():
    labels = {"traefik.http.services.secure.loadbalancer.server.port": "80",
              "traefik.http.services.secure.loadbalancer.server.scheme": "HTTPS"}
    assert desired(container(labels=labels)).own == {server("secure"): "https://10.0.0.5:32768"}


@pytest.mark.parametrize("value", ["false", "False", " FALSE "])
def test_traefik_enable_false_keeps_the_container_out(value):
    want = desired(container(labels={**ROUTER, "traefik.enable": value}),
                   container(cid=B, name="api", image="local/api"))
    assert want.own == {server("api", B): "http://10.0.0.5:32768"} and want.shared == {}


def test_traefik_enable_true_changes_nothing():
    assert desired(container(labels={**ROUTER, "traefik.enable": "true"})) == desired(container(labels=ROUTER))


@pytest.mark.parametrize("label", [
    "traefik.http.services.web.loadbalancer.server.url",
    "traefik.http.services.web.loadbalancer.servers.x.url",
    "traefik.http.services.web.loadbalancer.servers[0].url",
    "traefik.http.services.evil.loadbalancer.servers.0.url",
    "traefik.tcp.services.web.loadbalancer.server.address",
    "traefik.tcp.services.web.loadbalancer.servers.x.address",
])
def test_traefik_labels_cannot_set_servers(label):
    want = desired(container(labels={**ROUTER, label: "http://192.0.2.66:80"}))
    assert want.own == {server("web"): "http://10.0.0.5:32768"}
    assert "192.0.2.66" not in repr(want.shared)
    assert len(want.notes) == 1 and "server" in want.notes[0]


def test_traefik_service_options_without_a_port_here_are_skipped_with_a_note():
    want = desired(container(labels={"traefik.http.services.other.loadbalancer.passhostheader": "false"}))
    assert want.own == {server("web"): "http://10.0.0.5:32768"} and want.shared == {}
    assert len(want.notes) == 1 and "other" in want.notes[0]


# --- Traefik: hostile labels ------------------------------------------------------------------


@pytest.mark.parametrize("label, value", [
    ("traefik.http.routers.a/b.rule", "Host(`x`)"),
    ("traefik.http.routers.web.rule/../../../etc", "x"),
    ("traefik.http.routers.../rule", "x"),
    ("traefik.http.routers..rule", "x"),
    ("traefik.http.routers.web..rule", "x"),
    ("traefik..http.routers.web.rule", "x"),
    ("traefik.http.routers.web.rule.", "x"),
    ("traefik.http.routers.we b.rule", "x"),
    ("traefik.http.routers.wéb.rule", "x"),
    ("traefik.http.routers.big.rule", "x" * 10_000),
    ("traefik.http.routers.web.bogus", "x"),
    ("traefik.http.middlewares.strip.stripprefix.bogus", "x"),
    ("traefik.tcp.routers.db.rule.extra", "x"),
    ("traefik.http.routers.deep" + ".tls" * 12, "x"),
    ("traefik.http.services.web.loadbalancer.server.port", "eighty"),
])
def test_traefik_hostile_label_is_skipped_with_a_note_and_the_rest_registers(label, value):
    want = desired(container(labels={**ROUTER, label: value}))
    assert want.own == {server("web"): "http://10.0.0.5:32768"}
    assert want.shared == {router("web", "rule"): "Host(`web.example`)", router("web", "service"): "web"}
    assert len(want.notes) == 1 and "skipped" in want.notes[0]


def test_traefik_label_value_of_the_longest_allowed_length_is_kept():
    want = desired(container(labels={"traefik.http.routers.web.rule": "x" * dr.MAX_LABEL_VALUE}))
    assert want.shared[router("web", "rule")] == "x" * dr.MAX_LABEL_VALUE and want.notes == ()


def test_traefik_router_names_differing_only_in_case_across_two_containers_keep_the_first_with_a_note():
    want = desired(container(labels={"traefik.http.routers.Web.rule": "Host(`a.example`)"}),
                   container(cid=B, name="web2", labels={"traefik.http.routers.web.rule": "Host(`b.example`)"}))
    assert want.own == {server("web"): "http://10.0.0.5:32768", server("web", B): "http://10.0.0.5:32768"}
    assert want.shared == {router("web", "rule"): "Host(`a.example`)", router("web", "service"): "web"}
    assert len(want.notes) == 1 and "web2" in want.notes[0] and router("web", "rule") in want.notes[0]


def test_traefik_router_names_differing_only_in_case_on_one_container_are_noted():
    labels = {"traefik.http.routers.Web.rule": "Host(`a.example`)",
              "traefik.http.routers.web.rule": "Host(`b.example`)"}
    want = desired(container(labels=labels))
    assert want.shared == {router("web", "rule"): "Host(`a.example`)", router("web", "service"): "web"}
    assert len(want.notes) == 1 and "traefik.http.routers.web.rule" in want.notes[0], want.notes


# --- Traefik: list values ---------------------------------------------------------------------


def test_traefik_list_values_stay_one_comma_value_and_indexes_become_segments():
    labels = {**ROUTER,
              "traefik.http.routers.web.entrypoints": "web,websecure",
              "traefik.http.routers.web.tls.domains[0].main": "web.example",
              "traefik.http.routers.web.tls.domains[0].sans[1]": "www.web.example",
              "traefik.http.routers.web.middlewares": "Strip, auth@file",
              "traefik.http.middlewares.strip.stripprefix.prefixes": "/a,/b"}
    want = desired(container(labels=labels))
    assert want.shared == {
        router("web", "rule"): "Host(`web.example`)",
        router("web", "service"): "web",
        router("web", "entrypoints"): "web,websecure",
        router("web", "tls/domains/0/main"): "web.example",
        router("web", "tls/domains/0/sans/1"): "www.web.example",
        router("web", "middlewares"): "strip,auth@file",
        "traefik/http/middlewares/strip/stripprefix/prefixes": "/a,/b",
    }
    assert want.notes == ()


def test_traefik_indexed_entrypoints_become_numbered_keys():
    labels = {**ROUTER, "traefik.http.routers.web.entrypoints[0]": "web",
              "traefik.http.routers.web.entrypoints[1]": "w2"}
    want = desired(container(labels=labels))
    assert want.shared[router("web", "entrypoints/0")] == "web"
    assert want.shared[router("web", "entrypoints/1")] == "w2"


def test_traefik_tls_toggle_and_tls_options_are_both_kept():
    # Traefik's own docs pair them (tls=true with tls.certresolver); its KV provider reads a key that is both a
    # value and a folder (tried with traefik 3.7: tls=true plus tls/options=default gives tls.options=default).
    labels = {**ROUTER, "traefik.http.routers.web.tls": "true", "traefik.http.routers.web.tls.certresolver": "le"}
    want = desired(container(labels=labels))
    assert want.shared[router("web", "tls")] == "true"
    assert want.shared.get(router("web", "tls/certresolver")) == "le", want.notes


# --- Traefik: shared and own keys -------------------------------------------------------------


def test_traefik_routers_middlewares_and_service_options_are_shared_and_servers_own():
    labels = {**ROUTER, "traefik.http.routers.web.middlewares": "strip",
              "traefik.http.middlewares.strip.stripprefix.prefixes": "/a",
              "traefik.http.services.web.loadbalancer.passhostheader": "false"}
    want = desired(container(labels=labels))
    assert set(want.own) == {server("web")}
    assert set(want.shared) == {router("web", "rule"), router("web", "service"), router("web", "middlewares"),
                                "traefik/http/middlewares/strip/stripprefix/prefixes",
                                "traefik/http/services/web/loadbalancer/passhostheader"}
    assert not any(dr.TRAEFIK.is_shared(key, "traefik") for key in want.own)
    assert all(dr.TRAEFIK.is_shared(key, "traefik") for key in want.shared)
    assert all(dr.TRAEFIK.fits(key, "traefik") for key in [*want.own, *want.shared])


# --- Traefik: plans ---------------------------------------------------------------------------


def stored(value, lease=LEASE, mod=5):
    return dr.StoredKey(value, lease, mod)


def plan(want, have, state=ALIVE):
    return dr.plan_changes(want, have, LEASE, state, "traefik", dr.TRAEFIK)


def actions(p):
    return [(change.kind, change.key, change.value) for change in p.changes]


def test_traefik_plan_is_empty_when_the_store_holds_exactly_the_desired_keys():
    labels = {**ROUTER, "traefik.http.routers.web.middlewares": "strip",
              "traefik.http.middlewares.strip.stripprefix.prefixes": "/a"}
    want = desired(container(labels=labels), container(cid=B, ports=[port(80, 32769)]))
    have = {key: stored(value) for key, value in {**want.own, **want.shared}.items()}
    p = plan(want, have)
    assert p.changes == () and p.unchanged == 6 and p.lease_action is dr.LeaseAction.KEEP


def test_traefik_plan_leaves_router_keys_another_host_wrote_with_the_same_value():
    want = desired(container(labels=ROUTER))
    have = {router("web", "rule"): stored("Host(`web.example`)", OTHER_LEASE),
            router("web", "service"): stored("web", OTHER_LEASE)}
    p = plan(want, have, dr.LeaseState.MISSING)
    assert actions(p) == [("add", server("web"), "http://10.0.0.5:32768")]
    assert p.unchanged == 2 and p.notes == ()


def test_traefik_plan_notes_a_router_key_another_host_wrote_differently_and_does_not_fight():
    want = desired(container(labels=ROUTER))
    have = {server("web"): stored("http://10.0.0.5:32768"),
            router("web", "rule"): stored("Host(`old.example`)", OTHER_LEASE),
            router("web", "service"): stored("web", OTHER_LEASE)}
    p = plan(want, have)
    assert p.changes == () and p.unchanged == 3
    assert len(p.notes) == 1 and router("web", "rule") in p.notes[0] and "another host" in p.notes[0]


def test_traefik_plan_fixes_a_router_key_on_its_own_lease():
    want = desired(container(labels=ROUTER))
    have = {server("web"): stored("http://10.0.0.5:32768"), router("web", "rule"): stored("Host(`old.example`)", mod=9),
            router("web", "service"): stored("web")}
    assert plan(want, have).changes == (dr.Change("update", router("web", "rule"), "Host(`web.example`)",
                                                  "Host(`old.example`)", 9, shared=True),)


def gone_router_state(other_server: bool) -> dict:
    """This host's container of service web (with a router) is gone; maybe another host still serves web."""
    have = {router("web", "rule"): stored("Host(`web.example`)"), router("web", "service"): stored("Web"),
            server("web"): stored("http://10.0.0.5:32768")}
    if other_server:
        have[server("web", B)] = stored("http://10.0.0.6:32768", OTHER_LEASE)
    return have


def reads_then_plan(want, have):
    """Read as a run does (reads_for, then more_reads_for on what came back) and plan on that view."""
    on_lease = [key for key, kv in have.items() if kv.lease == LEASE]
    first = dr.reads_for(want, on_lease, "traefik", dr.TRAEFIK)
    view = view_of(have, first)
    second = dr.more_reads_for(want, view, LEASE, first, "traefik", dr.TRAEFIK)
    if second is not None:
        view.update(view_of(have, second))
    return first, second, plan(want, view)


def test_traefik_stale_router_is_left_to_the_host_still_serving_its_service():
    want = dr.Desired({}, {})
    first, second, p = reads_then_plan(want, gone_router_state(other_server=True))
    # Our server goes: the routers, middlewares and its service's folder are read, where the shared keys it
    # kept in use are, and the servers that keep them in use; no second read.
    assert first == dr.Reads(folders=("traefik/http/middlewares/", "traefik/http/routers/",
                                      "traefik/http/services/web/"))
    assert second is None
    # The router stays, unchanged, for the host still serving web; our server goes.
    assert p.changes == (dr.Change("remove", server("web"), None, "http://10.0.0.5:32768", 5),)
    assert p == plan(want, gone_router_state(other_server=True))
    released = dr.plan_changes(want, gone_router_state(True), LEASE, ALIVE, "traefik", dr.TRAEFIK, releases=True)
    assert actions(released) == [("release", router("web", "rule"), "Host(`web.example`)"),
                                 ("release", router("web", "service"), "Web"), ("remove", server("web"), None)]


def test_traefik_stale_router_goes_when_no_host_serves_its_service_any_more():
    want = dr.Desired({}, {})
    _, second, p = reads_then_plan(want, gone_router_state(other_server=False))
    assert second is None
    assert actions(p) == [("remove", router("web", "rule"), None), ("remove", router("web", "service"), None),
                          ("remove", server("web"), None)]


def test_traefik_stale_router_rule_stays_when_another_host_wrote_its_service_key():
    # Whoever wrote first holds each key: the rule can be ours while the service key is another host's.
    have = {router("web", "rule"): stored("Host(`web.example`)"), router("web", "service"): stored("web", OTHER_LEASE),
            server("web", B): stored("http://10.0.0.6:1", OTHER_LEASE)}
    first, second, p = reads_then_plan(dr.Desired({}, {}), have)
    assert second == dr.Reads(folders=("traefik/http/services/web/loadbalancer/servers/",))  # named by a value
    assert p.changes == () and p.unchanged == 1  # the rule stays, left to the host serving web


def test_a_run_reads_the_shared_keys_folders_only_when_the_last_server_of_a_service_here_goes():
    # A fleet's service folder can hold thousands of servers: a run where one of two web servers here goes
    # reads no folder, the run where the last one goes reads where web's shared keys are.
    ours = {server("web"): stored("http://10.0.0.5:32768"), server("web", B): stored("http://10.0.0.5:32769")}
    one_stays = dr.Desired({server("web", B): "http://10.0.0.5:32769"}, {})
    assert dr.reads_for(one_stays, list(ours), "traefik", dr.TRAEFIK).folders == ()
    assert dr.reads_for(dr.Desired({}, {}), list(ours), "traefik", dr.TRAEFIK).folders == (
        "traefik/http/middlewares/", "traefik/http/routers/", "traefik/http/services/web/")


def test_traefik_reads_need_no_second_read_when_nothing_shared_may_go():
    want = desired(container(labels=ROUTER))
    have = {key: stored(value) for key, value in {**want.own, **want.shared}.items()}
    first, second, p = reads_then_plan(want, have)
    assert first.folders == () and second is None and p.changes == ()


def test_traefik_stale_service_option_is_left_to_the_host_still_serving_the_service():
    key = "traefik/http/services/web/loadbalancer/passhostheader"
    have = {key: stored("false"), server("web", B): stored("http://10.0.0.6:1", OTHER_LEASE)}
    first, second, p = reads_then_plan(dr.Desired({}, {}), have)
    assert first.folders == ("traefik/http/services/web/loadbalancer/servers/",) and second is None
    assert p.changes == () and p.unchanged == 1
    assert actions(plan(dr.Desired({}, {}), {key: stored("false")})) == [("remove", key, None)]


def test_traefik_plan_never_touches_another_hosts_servers_or_keys_outside_the_layout():
    have = {server("web", B): stored("http://10.0.0.6:1", OTHER_LEASE), "traefik/tls/options/x/minversion": stored("v"),
            "traefikx/http/routers/a/rule": stored("v"), "/traefik/http/routers/a/rule": stored("v")}
    assert plan(dr.Desired({}, {}), have).changes == ()


MIDDLEWARE = "traefik/http/middlewares/strip/stripprefix/prefixes"


def other_hosts_router_with_our_middleware(reference_key, reference):
    """Another host wrote the router (it still serves web); this host wrote the middleware the router names."""
    return {router("web", "rule"): stored("Host(`web.example`)", OTHER_LEASE),
            router("web", "service"): stored("web", OTHER_LEASE),
            router("web", reference_key): stored(reference, OTHER_LEASE),
            MIDDLEWARE: stored("/a"),
            server("web", B): stored("http://10.0.0.6:1", OTHER_LEASE)}


@pytest.mark.parametrize("reference_key, reference", [
    ("middlewares/0", "strip"),
    ("middlewares", "strip"),  # the plain label traefik.http.routers.web.middlewares=strip
    ("middlewares", "auth@file,strip"),
])
def test_traefik_middleware_stays_while_a_served_router_names_it(reference_key, reference):
    # A router naming a middleware that does not exist is disabled by Traefik: every host's servers lose traffic.
    have = other_hosts_router_with_our_middleware(reference_key, reference)
    after = apply(have, plan(dr.Desired({}, {}), have), LEASE, ALIVE)
    assert after.get(MIDDLEWARE, dr.StoredKey("gone", 0, 0)).value == "/a"


def test_traefik_http_middleware_goes_when_only_a_tcp_router_names_one_of_its_name():
    # A tcp router's middlewares are tcp ones: its "strip" is not this http middleware, on any read.
    have = {"traefik/tcp/routers/web/rule": stored("HostSNI(`*`)", OTHER_LEASE),
            "traefik/tcp/routers/web/service": stored("web", OTHER_LEASE),
            "traefik/tcp/routers/web/middlewares": stored("strip", OTHER_LEASE),
            "traefik/tcp/services/web/loadbalancer/servers/bbbbbbbbbbbb/address": stored("10.0.0.6:1", OTHER_LEASE),
            MIDDLEWARE: stored("/a")}
    assert MIDDLEWARE not in apply(have, plan(dr.Desired({}, {}), have), LEASE, ALIVE)
    assert reads_then_plan(dr.Desired({}, {}), have)[2] == plan(dr.Desired({}, {}), have)


def test_traefik_middleware_stays_on_the_narrow_reads_too():
    have = other_hosts_router_with_our_middleware("middlewares/0", "strip")
    _, _, p = reads_then_plan(dr.Desired({}, {}), have)
    assert p == plan(dr.Desired({}, {}), have)


def test_traefik_middleware_stays_when_this_run_points_the_router_at_a_service_another_host_serves():
    # Found by the full Hypothesis profile: the router's service key (ours) still names an old service, and this
    # run rewrites it to web, which another host serves behind the router that names our middleware.
    want = dr.Desired({}, {router("web", "service"): "web", router("web", "middlewares"): "strip"})
    have = {router("web", "service"): stored("old"), router("web", "middlewares"): stored("strip", OTHER_LEASE),
            MIDDLEWARE: stored("/a"), server("web", B): stored("http://10.0.0.6:1", OTHER_LEASE)}
    _, _, p = reads_then_plan(want, have)
    assert p == plan(want, have)
    assert actions(p) == [("update", router("web", "service"), "web")]  # the middleware stays


# --- SkyDNS -------------------------------------------------------------------------------------


def test_skydns_key_is_the_reversed_domain_service_and_id_with_a_json_value():
    want = desired(container(), config=dataclasses.replace(SKYDNS, ttl=45))
    assert list(want.own) == ["/skydns/local/docker/web/aaaaaaaaaaaa"]
    value = want.own["/skydns/local/docker/web/aaaaaaaaaaaa"]
    assert json.loads(value) == {"host": "10.0.0.5", "port": 32768, "ttl": 45}
    assert want.shared == {} and want.notes == ()


def test_skydns_custom_domain_is_reversed_under_the_prefix():
    want = desired(container(), config=dataclasses.replace(SKYDNS, prefix="/dns", domain="svc.example.com"))
    assert list(want.own) == ["/dns/com/example/svc/web/aaaaaaaaaaaa"]


@pytest.mark.parametrize("name, label", [
    ("Web_App", "web-app"),
    ("WEB.v2_x", "web-v2-x"),
    ("my service!", "my-service"),
    ("_api_", "api"),
    ("x" * 63, "x" * 63),
])
def test_skydns_service_names_become_dns_labels(name, label):
    want = desired(container(labels={"SERVICE_NAME": name}), config=SKYDNS)
    assert list(want.own) == [f"/skydns/local/docker/{label}/aaaaaaaaaaaa"] and want.notes == ()


@pytest.mark.parametrize("name", ["---", "._.", "-", "", "x" * 64, "a.b.c." * 11])
def test_names_that_cannot_be_dns_labels_give_none(name):
    assert dr.dns_label(name) is None


def test_skydns_name_too_long_for_a_dns_label_is_skipped_with_a_note_while_others_register():
    want = desired(container(labels={"SERVICE_NAME": "x" * 64}), container(cid=B, name="api", image="local/api"),
                   config=SKYDNS)
    assert list(want.own) == ["/skydns/local/docker/api/bbbbbbbbbbbb"]
    assert len(want.notes) == 1 and "DNS label" in want.notes[0] and "web1" in want.notes[0]


def test_skydns_two_names_of_one_container_that_make_the_same_label_keep_the_first():
    labels = {"SERVICE_80_NAME": "a_b", "SERVICE_81_NAME": "a.b"}
    want = desired(container(ports=[port(80, 8080), port(81, 8081)], labels=labels), config=SKYDNS)
    assert list(want.own) == ["/skydns/local/docker/a-b/aaaaaaaaaaaa"]
    assert json.loads(want.own["/skydns/local/docker/a-b/aaaaaaaaaaaa"])["port"] == 8080
    assert len(want.notes) == 1 and "twice" in want.notes[0]


def test_skydns_udp_keeps_its_suffix():
    want = desired(container(ports=[port(53, 5353, proto="udp")]), config=SKYDNS)
    assert want.own == {"/skydns/local/docker/web-udp/aaaaaaaaaaaa": json.dumps(
        {"host": "10.0.0.5", "port": 5353, "ttl": 30})}


def test_skydns_ipv6_host_appears_plain():
    want = desired(container(), config=SKYDNS, host_ip=HOST6)
    assert [json.loads(value)["host"] for value in want.own.values()] == ["2001:db8::5"]


def test_skydns_has_no_shared_keys_and_every_key_fits():
    want = desired(container(ports=[port(80, 8080), port(443, 8443)]), container(cid=B), config=SKYDNS)
    assert want.shared == {} and len(want.own) == 3
    assert not any(dr.SKYDNS.is_shared(key, "/skydns") for key in want.own)
    assert all(dr.SKYDNS.fits(key, "/skydns") for key in want.own)


def test_skydns_plan_removes_a_gone_containers_key_and_leaves_other_hosts_keys():
    lease = SKYDNS.lease_id
    have = {"/skydns/local/docker/web/aaaaaaaaaaaa": dr.StoredKey('{"host": "10.0.0.5"}', lease, 3),
            "/skydns/local/docker/web/bbbbbbbbbbbb": dr.StoredKey('{"host": "10.0.0.6"}', OTHER_LEASE, 4)}
    p = dr.plan_changes(dr.Desired({}, {}), have, lease, ALIVE, "/skydns", dr.SKYDNS)
    assert [(c.kind, c.key) for c in p.changes] == [("remove", "/skydns/local/docker/web/aaaaaaaaaaaa")]


# --- docker-discover: unchanged ------------------------------------------------------------------


def test_discover_is_the_default_layout_and_its_keys_are_unchanged():
    assert DISCOVER.layout is dr.DISCOVER and dr.LAYOUTS["discover"] is dr.DISCOVER
    want = desired(container(labels=ROUTER), container(cid=B, ports=[port(80, 8080), port(53, 5353, proto="udp")]),
                   config=DISCOVER)
    assert want.own == {"/backends/web/aaaaaaaaaaaa": "10.0.0.5:32768",
                        "/backends/web-80/bbbbbbbbbbbb": "10.0.0.5:8080",
                        "/backends/web-53-udp/bbbbbbbbbbbb": "10.0.0.5:5353"}
    assert want.shared == {"/backends/web/port": "80", "/backends/web-80/port": "80", "/backends/web-53-udp/port": "53"}
    assert want.notes == ()


def test_layouts_by_name_and_their_default_prefixes():
    assert {name: (layout.default_prefix, layout.absolute) for name, layout in dr.LAYOUTS.items()} == {
        "discover": ("/backends", True), "traefik": ("traefik", False), "skydns": ("/skydns", True)}
    assert CONFIG.layout is dr.TRAEFIK and SKYDNS.layout is dr.SKYDNS


# --- properties ---------------------------------------------------------------------------------

ROUTER_NAMES = ["web", "Web", "api", "db"]
ROUTER_FIELDS = ["rule", "service", "entrypoints", "entrypoints[0]", "middlewares", "middlewares[1]", "tls",
                 "tls.certresolver", "tls.domains[0].main", "tls.domains[0].sans[2]", "priority"]
LABEL_VALUES = ["Host(`a.example`)", "HostSNI(`*`)", "web,websecure", "Strip", "strip,auth@file", "web", "api", "10",
                "true", "", " ", "x" * 5000, "a/b", "../..", "\x00"]
MIDDLEWARES = ["strip", "Auth", "web"]
MIDDLEWARE_REFERENCES = ["strip", "auth,Strip", "strip@file", "Web", "nothing"]
HOSTILE_LABELS = ["traefik.http.routers.a/b.rule", "traefik.http.routers..rule", "traefik.http.routers.web..rule",
                  "traefik..http", "traefik.", "traefik.http.routers.web.bogus", "traefik.http.routers.web.rule.",
                  "traefik.http.services.web.loadbalancer.server.url",
                  "traefik.tcp.services.db.loadbalancer.servers.x.address", "traefik.http.routers.web[0].rule",
                  "traefik.http[0].routers.web.rule", "traefik.http.routers.we b.rule",
                  "traefik.udp.routers.dns.rule", "traefik.sctp.routers.web.rule", "traefik.http.routers.x" + ".a" * 12]


# Strategies made once (Hypothesis checks each new strategy object, which made up much of these tests' time).
label_kinds = st.sampled_from(["router", "router", "port", "scheme", "option", "middleware", "hostile", "random",
                               "protocol", "enable"])
protocols = st.sampled_from(dr.TRAEFIK_PROTOCOLS)
router_names = st.sampled_from(ROUTER_NAMES)
router_fields = st.sampled_from(ROUTER_FIELDS)
traefik_values = st.sampled_from(LABEL_VALUES) | st.text(max_size=20)
middleware_references = st.sampled_from(MIDDLEWARE_REFERENCES)
schemes = st.sampled_from(["https", "http", "h2c"])
service_options = st.sampled_from(["passhostheader", "healthcheck.path", "sticky.cookie.name", "terminationdelay",
                                   "proxyprotocol.version"])
middlewares = st.sampled_from(MIDDLEWARES)
hostile_labels = st.sampled_from(HOSTILE_LABELS)
protocol_values = st.sampled_from(["tcp", "http", "TCP", "udp", ""])
enable_values = st.sampled_from(["false", "true", "False"])


@functools.cache
def private_or_any(ports: tuple[int, ...]):
    """One of these private ports or any port (one strategy per tuple)."""
    return st.sampled_from(ports) | st.integers(1, 65535) if ports else st.integers(1, 65535)


@functools.cache
@st.composite
def traefik_labels(draw, ports: tuple[int, ...]):
    """traefik.* and SERVICE_*_PROTOCOL labels: the ones Traefik's Docker provider reads, and hostile ones."""
    labels = {}
    private = private_or_any(ports)
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(label_kinds)
        if kind == "router":
            field = draw(router_fields)
            reference = middleware_references if field.startswith("middlewares") else traefik_values
            labels[f"traefik.{draw(protocols)}.routers.{draw(router_names)}.{field}"] = draw(reference)
        elif kind == "port":
            labels[f"traefik.{draw(protocols)}.services.{draw(router_names)}.loadbalancer.server.port"] = \
                str(draw(private)) if draw(st.booleans()) else draw(traefik_values)
        elif kind == "scheme":
            labels[f"traefik.http.services.{draw(router_names)}.loadbalancer.server.scheme"] = draw(schemes)
        elif kind == "option":
            field = draw(service_options)
            labels[f"traefik.{draw(protocols)}.services.{draw(router_names)}.loadbalancer.{field}"] = \
                draw(traefik_values)
        elif kind == "middleware":
            labels[f"traefik.http.middlewares.{draw(middlewares)}.stripprefix.prefixes"] = draw(traefik_values)
        elif kind == "hostile":
            labels[draw(hostile_labels)] = draw(traefik_values)
        elif kind == "random":
            labels["traefik." + draw(st.text(max_size=30))] = draw(traefik_values)
        elif kind == "protocol":
            label = dr.PORT_PROTOCOL_LABEL.format(port=draw(private)) if draw(st.booleans()) else dr.PROTOCOL_LABEL
            labels[label] = draw(protocol_values)
        else:
            labels["traefik.enable"] = draw(enable_values)
    return labels


@st.composite
def layout_containers(draw):
    """Containers as test_properties draws them, with traefik.* labels added."""
    found = []
    for entry in draw(container_lists):
        ports = tuple(sorted({binding["PrivatePort"] for binding in entry["Ports"]}))
        found.append({**entry, "Labels": {**entry["Labels"], **draw(traefik_labels(ports))}})
    return found


#: Routing labels a service's containers carry on every host, so hosts share the keys (both list forms).
FLEET_LABELS = {
    "web": {"traefik.http.routers.web.rule": "Host(`web.example`)", "traefik.http.routers.web.middlewares": "strip",
            "traefik.http.middlewares.strip.stripprefix.prefixes": "/web",
            "traefik.http.services.web.loadbalancer.passhostheader": "false"},
    "api": {"traefik.http.routers.api.rule": "Host(`api.example`)", "traefik.http.routers.api.middlewares[0]": "auth",
            "traefik.http.middlewares.auth.basicauth.users": "u:p", "traefik.http.routers.api.service": "api"},
    "db": {"traefik.tcp.routers.db.rule": "HostSNI(`*`)", "SERVICE_PROTOCOL": "tcp"},
}


@st.composite
def fleet_containers(draw):
    """Containers of services that run on several hosts with the same routing labels; now and then a label is
    missing or has another value (a rollout in progress)."""
    found = []
    for _ in range(draw(st.integers(0, 3))):
        service = draw(st.sampled_from(sorted(FLEET_LABELS)))
        labels = {label: value for label, value in FLEET_LABELS[service].items() if not draw(one_in(6))}
        if labels and draw(one_in(6)):
            labels[draw(st.sampled_from(sorted(labels)))] = "changed"
        found.append(container(cid=draw(hex_text(64)), name=service, image=f"local/{service}",
                               ports=[port(80, draw(st.integers(1, 65535)))], labels=labels))
    return found


traefik_prefixes = st.one_of(st.just("traefik"), st.lists(segments, min_size=1, max_size=3).map("/".join))
domains = st.sampled_from(["docker.local", "svc.example.com", "a", "x-1.y"])
kept_in_layout = st.sampled_from(["absent", "right", "wrong", "other"])


@st.composite
def layout_configs(draw, layout_name):
    """A Config of the layout: a host IP, a prefix of the layout's kind and (SkyDNS) a domain."""
    if layout_name == "traefik":
        prefix = dr.parse_prefix(draw(traefik_prefixes), absolute=False)
    else:
        prefix = draw(prefixes)
    domain = dr.parse_domain(draw(domains))
    return dr.Config(endpoints=(), host_ip=draw(host_ips), prefix=prefix, ttl=draw(st.integers(2, 86400)),
                     timeout=5.0, layout_name=layout_name, domain=domain)


layouts = st.sampled_from(["traefik", "skydns"])
#: Fewer examples than test_properties: each draws up to three container lists with many labels.
LAYOUT_SETTINGS = settings(SETTINGS, max_examples=max(10, settings.default.max_examples // 3))


@LAYOUT_SETTINGS
@given(st.data(), layouts)
def test_every_desired_key_is_a_safe_path_below_the_prefix(data, layout_name):
    config = data.draw(layout_configs(layout_name))
    want = dr.desired_keys(dr.registrations_from(data.draw(layout_containers()), config.host_ip)[0], config)
    note(f"desired: {want}")
    for key in [*want.own, *want.shared]:
        assert key.startswith(config.prefix + "/"), key
        assert not set(key.removeprefix("/").split("/")) & {"", ".", ".."}, key
        assert config.layout.fits(key, config.prefix), key
    assert not set(want.own) & set(want.shared)


@LAYOUT_SETTINGS
@given(layout_configs("traefik"), layout_containers())
def test_traefik_keys_name_only_fields_traefik_knows(config, containers_):
    want = dr.desired_keys(dr.registrations_from(containers_, config.host_ip)[0], config)
    note(f"desired: {want}")
    for key, value in want.own.items():
        protocol, kind, _, *rest = key[len(config.prefix) + 1:].split("/")
        assert protocol in dr.TRAEFIK_PROTOCOLS and kind == "services", key
        assert rest[:2] == ["loadbalancer", "servers"] and re.fullmatch(r"[0-9a-f]{12}", rest[2]), key
        assert rest[3:] == (["url"] if protocol == "http" else ["address"]), key
        assert re.fullmatch(r"https?://\S+" if protocol == "http" else r"\S+:\d+", value), (key, value)
    for key, value in want.shared.items():
        protocol, kind, _, *rest = key[len(config.prefix) + 1:].split("/")
        assert (protocol, kind) in dr.TRAEFIK_FIELDS and dr.traefik_field_known(protocol, kind, tuple(rest)), key
        assert len(value) <= dr.MAX_LABEL_VALUE, key


@LAYOUT_SETTINGS
@given(layout_configs("skydns"), layout_containers())
def test_skydns_values_are_json_coredns_reads(config, containers_):
    want = dr.desired_keys(dr.registrations_from(containers_, config.host_ip)[0], config)
    assert want.shared == {}
    root = config.prefix + "".join(f"/{label}" for label in reversed(config.domain.split(".")))
    for key, value in want.own.items():
        name, cid = key.removeprefix(root + "/").split("/")
        assert dr.DNS_LABEL.fullmatch(name) and re.fullmatch(r"[0-9a-f]{12}", cid), key
        parsed = json.loads(value)
        assert set(parsed) == {"host", "port", "ttl"} and parsed["ttl"] == config.ttl, value
        assert isinstance(parsed["port"], int) and "[" not in parsed["host"], value


@st.composite
def layout_worlds(draw, layout_name, lease_states=lease_states):
    config = draw(layout_configs(layout_name))
    lease = config.lease_id
    other_ip = draw(host_ips.filter(lambda ip: ip != config.host_ip))
    other_lease = dr.lease_id_for(other_ip, config.prefix)
    ours, gone, theirs = (draw(layout_containers()) + draw(fleet_containers()) for _ in range(3))

    def keys_of(containers_, host_ip):
        return dr.desired_keys(dr.registrations_from(containers_, host_ip)[0],
                               dataclasses.replace(config, host_ip=host_ip))

    ids = {entry["Id"][:12] for entry in ours + gone}
    theirs = [entry for entry in theirs if entry["Id"][:12] not in ids]  # container ids differ between hosts
    desired, stale, other = keys_of(ours, config.host_ip), keys_of(gone, config.host_ip), keys_of(theirs, other_ip)
    values = st.sampled_from(sorted({*desired.own.values(), *desired.shared.values(), "x"}))
    revisions = st.integers(1, 10**6)
    state = {}
    for key, value in other.own.items():  # the other host's servers, mostly written already
        if not draw(one_in(4)):
            state[key] = dr.StoredKey(value, other_lease, draw(revisions))
    for key, value in stale.own.items():  # servers this host wrote for containers now gone
        if draw(st.booleans()):
            state[key] = dr.StoredKey(value, lease, draw(revisions))
    # A shared key is on the lease of whichever host wrote it first, with that host's value.
    for key in sorted({*other.shared, *stale.shared}):
        writers = [(held.shared, held_lease) for held, held_lease in ((other, other_lease), (stale, lease))
                   if key in held.shared]
        if not draw(one_in(5)):
            held_keys, held_lease = draw(st.sampled_from(writers))
            state[key] = dr.StoredKey(held_keys[key], held_lease, draw(revisions))
    for key, value in {**desired.own, **desired.shared}.items():
        kept = draw(kept_in_layout)
        if kept in ("right", "wrong"):
            state[key] = dr.StoredKey(value if kept == "right" else draw(values), lease, draw(revisions))
        elif kept == "other" and key in desired.shared:
            state[key] = dr.StoredKey(draw(st.sampled_from([value, "x"])), other_lease, draw(revisions))
    return PlanWorld(config, desired, state, draw(lease_states))


@LAYOUT_SETTINGS
@given(layouts.flatmap(layout_worlds))
def test_planning_again_after_applying_changes_nothing_in_every_layout(world):
    lease = world.config.lease_id
    after = apply(world.state, world.plan(), lease, world.lease_state)
    note(f"after: {after}")
    again = world.plan(after, ALIVE)
    assert again.changes == () and again.lease_action is dr.LeaseAction.KEEP
    # Other hosts' keys are untouched; a shared key of ours that moved went, unchanged, to another host's lease.
    assert all(after.get(key) == kv for key, kv in world.state.items() if kv.lease != lease)
    other_leases = {kv.lease for kv in world.state.values() if kv.lease != lease}
    for key, kv in after.items():
        if kv.lease != lease and world.state.get(key, kv).lease == lease:
            assert world.config.layout.is_shared(key, world.config.prefix), key
            assert kv.value == world.state[key].value and kv.lease in other_leases, key


def read_as_a_run_does(world):
    """The view of the store a run plans on: reads_for, then more_reads_for on what came back."""
    config = world.config
    on_lease = [] if world.lease_state is dr.LeaseState.MISSING else [
        key for key, kv in world.state.items() if kv.lease == config.lease_id]  # what LeaseTimeToLive lists
    first = dr.reads_for(world.desired, on_lease, config.prefix, config.layout)
    view = view_of(world.state, first)
    second = dr.more_reads_for(world.desired, view, config.lease_id, first, config.prefix, config.layout)
    if second is not None:
        view.update(view_of(world.state, second))
    note(f"reads: {first} then {second}")
    return view


@LAYOUT_SETTINGS
@given(layouts.flatmap(layout_worlds))
def test_reading_what_reads_for_and_more_reads_for_name_plans_like_the_whole_prefix(world):
    assert world.plan(read_as_a_run_does(world)) == world.plan()


# A lease that is gone takes its keys with it, whatever the plan: only a live one is the plan's doing.
@LAYOUT_SETTINGS
@given(layout_worlds("traefik", lease_states=st.just(ALIVE)))
def test_a_run_never_removes_a_middleware_that_another_hosts_serving_router_names(world):
    """Traefik disables a router naming a missing middleware: the other host's servers behind it lose traffic.
    (A middleware only this host's containers named goes with them, as with Traefik's Docker provider.)"""
    prefix, lease = world.config.prefix, world.config.lease_id
    after = apply(world.state, world.plan(read_as_a_run_does(world)), lease, world.lease_state)
    note(f"after: {after}")
    for key, kv in after.items():
        parts = dr.traefik_parts(key, prefix)
        if not parts or parts[1] != "routers" or parts[3] != "middlewares" or world.state.get(key) != kv \
                or kv.lease == lease:
            continue  # not a router entry another host wrote
        service = after.get(f"{prefix}/{parts[0]}/routers/{parts[2]}/service")
        servers = f"{prefix}/{parts[0]}/services/{(service.value if service else '').lower()}/loadbalancer/servers/"
        if not service or not any(other.startswith(servers) and held.lease != lease for other, held in after.items()):
            continue  # no other host serves behind the router; its middlewares may go
        for name in kv.value.lower().split(","):
            folder = f"{prefix}/{parts[0]}/middlewares/{name.strip()}/"
            if any(other.startswith(folder) for other in world.state):
                assert any(other.startswith(folder) for other in after), (key, name)


@pytest.mark.parametrize("value", ["²", "٨٠", "0", "65536", "99999999999", " ", "80a"])
def test_traefik_service_port_label_that_is_no_port_number_is_a_note_not_a_crash(value):
    labels = {"traefik.http.services.site.loadbalancer.server.port": value}
    want = desired(container(labels=labels))
    assert not any("/services/site/" in key for key in want.own)
    assert any("is not a port number" in note for note in want.notes), want.notes
