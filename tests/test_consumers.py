"""The Traefik layout read by a real Traefik: docker-register writes, Traefik's etcd provider routes real traffic.

Every request goes to this machine only: Traefik listens on loopback, and the servers it proxies to are
published ports of containers the tests started, at an address of this machine (the engine's own bridge).
"""

from __future__ import annotations

import itertools
from collections import Counter

import docker_register as dr
from consumers import (REQUESTS, WEB_HOST, WEB_LABELS, Edge, bridge_ip, direct_get, never_within, published_url,
                       served_by_both, start_web)
from harness import Traefik, publish, wait_until
from tiers import server_fixture

_roots = itertools.count(1)


@server_fixture
def edge(world, tmp_path):
    """A Traefik (DEBUG log, 200 ms throttle) on a root key of its own, and this machine's address as
    the host's: the shared engine's bridge, where its published ports answer."""
    root = f"traefik-t{next(_roots):04d}"  # fixed width: no root is a prefix of another
    # Traefik's watch backs off for seconds while its root is empty: give it a key first.
    world.etcd.etcdctl("put", f"{root}/docker-register-tests", "x")
    traefik = Traefik(tmp_path / "traefik", [world.etcd.endpoint], root_key=root, level="DEBUG")
    try:
        traefik.start()
        yield Edge(world, traefik, bridge_ip(world.engine))
    finally:
        traefik.stop()
        world.etcd.etcdctl("del", "--prefix", root + "/", check=False)


def test_two_containers_of_one_service_both_answer_through_a_host_rule(world, edge):
    first = start_web(world.engine, *WEB_LABELS)
    second = start_web(world.engine, *WEB_LABELS)
    edge.sync()
    keys = world.etcd.values(edge.root + "/")
    assert keys[f"{edge.root}/http/routers/web/rule"] == f"Host(`{WEB_HOST}`)"
    assert keys[f"{edge.root}/http/routers/web/service"] == "web"
    expected = {published_url(world.engine, cid, edge.host_ip) for cid in (first, second)}
    servers = f"{edge.root}/http/services/web/loadbalancer/servers"
    assert {keys[f"{servers}/{cid}/url"] for cid in (first, second)} == expected

    edge.wait_servers(expected)
    assert edge.traefik.routers()["web@etcd"]["rule"] == f"Host(`{WEB_HOST}`)"
    served_by_both(edge, first, second)
    # The router matches only its host: another Host header finds no route.
    assert edge.traefik.get("other.example")[0] == 404


def test_after_a_container_stops_every_request_reaches_the_other(world, edge):
    leaving = start_web(world.engine, *WEB_LABELS)
    staying = start_web(world.engine, *WEB_LABELS)
    edge.sync()
    edge.wait_servers({published_url(world.engine, cid, edge.host_ip) for cid in (leaving, staying)})
    served_by_both(edge, leaving, staying)

    world.engine.docker("stop", "--time", "1", leaving)
    edge.sync()
    assert not any(leaving in key for key in world.etcd.values(edge.root + "/"))
    edge.wait_servers({published_url(world.engine, staying, edge.host_ip)})
    assert edge.answers() == Counter({(200, staying): REQUESTS})


def test_two_hosts_serving_one_service_are_one_traefik_service(world, edge, second_engine, tmp_path):
    here = start_web(world.engine, *WEB_LABELS)
    there = start_web(second_engine, *WEB_LABELS)
    there_ip = bridge_ip(second_engine)
    assert there_ip != edge.host_ip
    here_url = published_url(world.engine, here, edge.host_ip)
    there_url = published_url(second_engine, there, there_ip)
    # Each engine publishes on every address of this machine (userland proxy, no iptables): each host's
    # port answers at that host's own address.
    for url, cid in ((here_url, here), (there_url, there)):
        ip, port = url.removeprefix("http://").split(":")
        assert direct_get(ip, int(port)) == (200, cid + "\n"), url

    edge.sync()
    edge.wait_servers({here_url})
    edge.sync(engine=second_engine, host_ip=there_ip, lock=str(tmp_path / "host2.lock"))
    edge.wait_servers({here_url, there_url})
    assert [name for name in edge.traefik.services() if name.endswith("@etcd")] == ["web@etcd"]
    keys = world.etcd.get_prefix(edge.root + "/")
    leases = {kv["lease"] for key, kv in keys.items() if "/loadbalancer/servers/" in key}
    assert len(leases) == 2 and 0 not in leases, "each host's servers are on its own lease"
    served_by_both(edge, here, there)


def test_a_tcp_service_is_reached_through_a_tcp_router(world, edge):
    echo = world.engine.docker(
        "run", "-d", *publish(7), "-l", "SERVICE_PROTOCOL=tcp", "-l", "traefik.tcp.routers.echo.rule=HostSNI(`*`)",
        "-l", "traefik.tcp.routers.echo.entrypoints=tcp", "local/echo").stdout.strip()[:12]
    edge.sync()
    bindings = world.engine.docker("port", echo, "7/tcp").stdout.split()
    address = f"{edge.host_ip}:{next(b for b in bindings if b.startswith('0.0.0.0:')).rsplit(':', 1)[1]}"
    keys = world.etcd.values(edge.root + "/")
    assert keys[f"{edge.root}/tcp/services/echo/loadbalancer/servers/{echo}/address"] == address
    assert keys[f"{edge.root}/tcp/routers/echo/service"] == "echo"

    edge.wait_servers({address}, "echo", "tcp")
    assert edge.traefik.routers("tcp")["echo@etcd"]["entryPoints"] == ["tcp"]
    message = b"hello through traefik\n"
    assert edge.traefik.wait_for(lambda: edge.traefik.echo_tcp(message) == message, 10,
                                 "the echo container to answer through the tcp entrypoint")
    assert all(edge.traefik.echo_tcp(f"request {i}\n".encode()) == f"request {i}\n".encode() for i in range(10))


def test_a_run_without_changes_writes_nothing_and_traefik_receives_nothing(world, edge):
    first = start_web(world.engine, *WEB_LABELS)
    second = start_web(world.engine, *WEB_LABELS)
    edge.sync()
    edge.wait_servers({published_url(world.engine, cid, edge.host_ip) for cid in (first, second)})
    wait_until(lambda: edge.quiet(1.0), 10, "traefik to receive no more configurations")
    received = edge.configurations_received()
    assert received >= 1, "traefik logs every configuration it receives (else this test proves nothing)"
    # Not etcd_mvcc_txn_total: the run's read is a read-only transaction, which counts there but
    # writes nothing (no proposal, no revision).
    writes = ("etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_server_proposals_committed_total")
    before = {name: world.etcd.metrics()[name] for name in writes}
    revision = world.etcd.revision()
    services, routers = edge.traefik.services(), edge.traefik.routers()

    result = edge.sync()

    assert result.stdout.startswith("added 0, updated 0, removed 0, unchanged "), result.stdout
    assert {name: world.etcd.metrics()[name] for name in writes} == before
    assert world.etcd.revision() == revision, "no new revision, so no watch event"
    # Five times the 200 ms throttle: nothing arrives, nothing changes.
    assert never_within(lambda: edge.configurations_received() != received, 1.0), \
        "traefik received a configuration after a run that changed nothing"
    assert edge.traefik.services() == services and edge.traefik.routers() == routers
    served_by_both(edge, first, second)


def test_purge_takes_the_hosts_servers_out_of_traefik(world, edge):
    # Traefik ignores an empty configuration from a provider and keeps routing by the last one ("Skipping
    # empty configuration"), so a root that purge leaves empty would prove nothing: an operator's own
    # middleware (no lease, never docker-register's to touch) stays under the root, as in real use.
    operator_key = f"{edge.root}/http/middlewares/operator/headers/customresponseheaders/X-Operator"
    world.etcd.etcdctl("put", operator_key, "yes")
    first = start_web(world.engine, *WEB_LABELS)
    second = start_web(world.engine, *WEB_LABELS)
    edge.sync()
    edge.wait_servers({published_url(world.engine, cid, edge.host_ip) for cid in (first, second)})
    served_by_both(edge, first, second)

    result = world.run("purge", "--layout", "traefik", **edge.env())
    assert result.returncode == 0, result.stderr

    # The servers go at once; the router, shared and on leases of its own, stays until they run out, so
    # Traefik drops the service (the router then names none: 404) instead of keeping the last configuration.
    router = {f"{edge.root}/http/routers/web/rule": "Host(`web.example`)", f"{edge.root}/http/routers/web/service": "web"}
    assert world.etcd.values(edge.root + "/") == {f"{edge.root}/docker-register-tests": "x", operator_key: "yes",
                                                   **router}
    held = world.etcd.get_prefix(edge.root + "/")
    assert all(held[key]["lease"] == dr.shared_lease_id(edge.host_ip, key) for key in router)
    edge.traefik.wait_for(lambda: "web@etcd" not in edge.traefik.services(), 15, "traefik to drop the purged service")
    assert "operator@etcd" in {m["name"] for m in edge.traefik.api("/api/http/middlewares")}
    answers = edge.answers()
    assert set(answers) == {(404, "404 page not found")}, answers


def test_purging_one_of_two_hosts_leaves_every_request_to_the_other(world, edge, second_engine, tmp_path):
    here = start_web(world.engine, *WEB_LABELS)
    there = start_web(second_engine, *WEB_LABELS)
    there_ip = bridge_ip(second_engine)
    there_url = published_url(second_engine, there, there_ip)
    there_env = {"engine": second_engine, "host_ip": there_ip, "lock": str(tmp_path / "host2.lock")}
    edge.sync()
    edge.sync(**there_env)
    edge.wait_servers({published_url(world.engine, here, edge.host_ip), there_url})
    served_by_both(edge, here, there)

    result = world.run("purge", "--layout", "traefik", **edge.env())
    assert result.returncode == 0, result.stderr

    edge.wait_servers({there_url})
    assert edge.answers() == Counter({(200, there): REQUESTS})
