"""docker-register sync against a real dockerd and a real etcd, checked through etcdctl."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.request

import pytest

import docker_register as dr
from harness import free_port, silent_endpoint, wait_until
from hosts import BINARY, LAYOUT_KEYS


def short(container_id: str) -> str:
    return container_id[:12]


def test_single_port_container_is_registered_with_port_key(world):
    cid = world.docker_run("--name", "w1", "-P", "local/web")
    result = world.sync()
    port = world.host_port("w1", "80/tcp")
    assert world.keys() == {
        f"{world.prefix}/web/{short(cid)}": f"{world.host_ip}:{port}",
        f"{world.prefix}/web/port": "80",
    }
    assert result.stdout.startswith("added 2, updated 0, removed 0, unchanged 0 in ")
    assert len(result.stdout.splitlines()) == 1


def test_a_hosts_keys_live_on_one_lease_and_each_shared_key_on_its_own_with_the_configured_ttl(world):
    web = world.docker_run("-P", "local/web")
    api = world.docker_run("-P", "-l", "SERVICE_NAME=api", "local/web")
    world.sync("--ttl", "20")
    held = world.etcd.get_prefix(world.prefix + "/")
    own = {held[f"{world.prefix}/{service}/{cid[:12]}"]["lease"] for service, cid in (("web", web), ("api", api))}
    assert own == {dr.lease_id_for(world.host_ip, world.prefix)}
    for service in ("web", "api"):  # the shared port keys outlive the host that wrote them
        key = f"{world.prefix}/{service}/port"
        assert held[key]["lease"] == dr.shared_lease_id(world.host_ip, key)
    for lease in own | {held[f"{world.prefix}/web/port"]["lease"]}:
        info = world.etcd.etcdctl("lease", "timetolive", f"{lease:x}", "--keys").stdout
        assert "granted with TTL(20s)" in info and "attached keys" in info


def test_several_ports_service_labels_and_udp(world):
    multi = world.docker_run("--name", "multi", "-P", "registry.example:5000/team/api:1.2")
    named = world.docker_run("--name", "named", "-P", "-l", "SERVICE_80_NAME=front", "-l", "SERVICE_443_NAME=tls",
                             "registry.example:5000/team/api:1.2")
    label = world.docker_run("--name", "label", "-P", "-l", "SERVICE_NAME=shop", "local/web")
    dns = world.docker_run("--name", "dns", "-p", "53/udp", "local/dns")
    world.sync()
    ip = world.host_ip
    assert world.keys() == {
        f"{world.prefix}/api-80/{short(multi)}": f"{ip}:{world.host_port('multi', '80/tcp')}",
        f"{world.prefix}/api-443/{short(multi)}": f"{ip}:{world.host_port('multi', '443/tcp')}",
        f"{world.prefix}/api-80/port": "80",
        f"{world.prefix}/api-443/port": "443",
        f"{world.prefix}/front/{short(named)}": f"{ip}:{world.host_port('named', '80/tcp')}",
        f"{world.prefix}/tls/{short(named)}": f"{ip}:{world.host_port('named', '443/tcp')}",
        f"{world.prefix}/front/port": "80",
        f"{world.prefix}/tls/port": "443",
        f"{world.prefix}/shop/{short(label)}": f"{ip}:{world.host_port('label', '80/tcp')}",
        f"{world.prefix}/shop/port": "80",
        f"{world.prefix}/dns-udp/{short(dns)}": f"{ip}:{world.host_port('dns', '53/udp')}",
        f"{world.prefix}/dns-udp/port": "53",
    }


def test_registered_address_reaches_the_container_when_the_twins_get_different_ports(world):
    # An IPv4-only binding moves only IPv4's port allocator, so the next -P container's 0.0.0.0
    # and :: twins land on different host ports; only the IPv4 one is reachable at HOST_IP.
    world.docker_run("-p", "0.0.0.0::80", "local/web")
    cid = world.docker_run("-P", "local/web")
    world.sync()
    port = int(world.keys()[f"{world.prefix}/web/{short(cid)}"].rsplit(":", 1)[1])
    assert port == world.host_port(cid, "80/tcp")

    def fetch():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        except OSError:
            return None
    page = wait_until(fetch, 20, "the container to serve its page")
    assert "hello from docker-register tests" in page


def test_service_ignore_and_unpublished_and_loopback_only(world):
    world.docker_run("-P", "-l", "SERVICE_IGNORE=1", "local/web")
    world.docker_run("local/web")  # exposed, not published
    world.docker_run("--name", "lo", "-p", "127.0.0.1::80", "local/web")
    result = world.sync()
    assert world.keys() == {}
    assert "loopback" in result.stderr and "lo (" in result.stderr


def test_health_starting_unhealthy_and_healthy(world):
    starting = world.docker_run("-P", "--health-cmd", "true", "--health-interval", "1h", "local/web")
    unhealthy = world.docker_run("--name", "sick", "-P", "--health-cmd", "false", "--health-interval", "1s",
                                 "--health-retries", "1", "local/web")
    healthy = world.docker_run("--name", "fine", "-P", "--health-cmd", "test -f /tmp/ok", "--health-interval", "1s",
                               "--health-retries", "1", "local/web", "/bin/sh", "-c",
                               "touch /tmp/ok; exec httpd -f -p 80 -h /www")
    for name, state in (("sick", "unhealthy"), ("fine", "healthy")):
        wait_until(lambda: world.engine.docker("inspect", "-f", "{{.State.Health.Status}}", name)
                   .stdout.strip() == state, 30, f"{name} to be {state}")
    world.sync()
    keys = world.keys()
    assert f"{world.prefix}/web/{short(healthy)}" in keys
    assert not any(short(starting) in k or short(unhealthy) in k for k in keys)

    # The healthy one turns unhealthy: the next run removes it at once.
    world.engine.docker("exec", "fine", "rm", "/tmp/ok")
    wait_until(lambda: world.engine.docker("inspect", "-f", "{{.State.Health.Status}}", "fine")
               .stdout.strip() == "unhealthy", 30, "fine to turn unhealthy")
    result = world.sync()
    assert world.keys() == {}
    assert "removed 2" in result.stdout


def test_stopped_container_is_removed_on_the_next_run_not_after_the_ttl(world):
    keep = world.docker_run("-P", "local/web")
    gone = world.docker_run("-P", "local/web")
    world.sync()
    world.engine.docker("stop", "-t", "0", gone)
    result = world.sync()
    assert set(world.keys()) == {f"{world.prefix}/web/{short(keep)}", f"{world.prefix}/web/port"}
    assert result.stdout.startswith("added 0, updated 0, removed 1, unchanged 2")


def test_other_hosts_keys_are_never_touched(world):
    other = world.etcd.grant(300)
    theirs = {
        f"{world.prefix}/web/bbbbbbbbbbbb": "192.0.2.200:8080",
        f"{world.prefix}/web/port": "80",
        f"{world.prefix}/db/cccccccccccc": "192.0.2.200:5432",
        f"{world.prefix}/db/port": "5432",
    }
    for key, value in theirs.items():
        world.etcd.etcdctl("put", "--lease", f"{other:x}", key, value)
    world.etcd.etcdctl("put", f"{world.prefix}/static/dddddddddddd", "192.0.2.201:1")  # no lease at all
    before = world.etcd.get_prefix(world.prefix + "/")

    cid = world.docker_run("-P", "local/web")
    world.sync()
    world.engine.docker("rm", "-f", cid)
    world.sync()

    after = world.etcd.get_prefix(world.prefix + "/")
    assert after == before  # same values, leases and revisions: not even rewritten


def test_shared_port_key_left_alone_when_right_and_restored_when_missing(world):
    other = world.etcd.grant(300)
    world.etcd.etcdctl("put", "--lease", f"{other:x}", f"{world.prefix}/web/port", "80")
    world.docker_run("-P", "local/web")
    world.sync()
    assert world.etcd.get_prefix(world.prefix + "/")[f"{world.prefix}/web/port"]["lease"] == other

    world.etcd.etcdctl("lease", "revoke", f"{other:x}")  # its writer's lease expired
    assert f"{world.prefix}/web/port" not in world.keys()
    result = world.sync()
    assert world.keys()[f"{world.prefix}/web/port"] == "80"
    assert result.stdout.startswith("added 1, updated 0, removed 0, unchanged 1")


def test_a_no_change_run_makes_zero_puts_and_zero_deletes(world):
    for _ in range(3):
        world.docker_run("-P", "local/web")
    world.docker_run("-P", "registry.example:5000/team/api:1.2")
    world.sync()
    revision = world.etcd.revision()
    before, rpcs_before, docker_before = world.etcd.metrics(), world.etcd.rpcs(), world.engine.api_requests()
    result = world.sync()
    after, rpcs_after, docker_after = world.etcd.metrics(), world.etcd.rpcs(), world.engine.api_requests()
    calls = {m: n - rpcs_before.get(m, 0) for m, n in rpcs_after.items() if n != rpcs_before.get(m, 0)}
    # The keys on the lease, one read-only transaction over the service folders, then one keepalive stream
    # renewing the host's lease and the shared port keys' leases.
    assert calls == {"LeaseKeepAlive": 1, "LeaseTimeToLive": 1, "Txn": 1}
    docker_calls = docker_after[len(docker_before):]
    assert len(docker_calls) == 1 and docker_calls[0].startswith("GET /containers/json?"), docker_calls
    assert after["etcd_mvcc_put_total"] - before["etcd_mvcc_put_total"] == 0
    assert after["etcd_mvcc_delete_total"] - before["etcd_mvcc_delete_total"] == 0
    assert after["etcd_server_proposals_committed_total"] - before["etcd_server_proposals_committed_total"] == 0
    assert world.etcd.revision() == revision
    assert result.stdout.startswith("added 0, updated 0, removed 0, unchanged 8")


def test_a_run_keeps_the_lease_alive(world):
    # etcd deletes a lease's keys once TTL seconds pass without a renewal (it checks every 500 ms), and a
    # run renews somewhere between its start and its end. So if a run and the read after it end less than
    # TTL after the previous run started, the lease cannot have lapsed: the keys must be the same, on the
    # same lease at the same revisions. A pair this machine made slower proves nothing: the TTL becomes
    # twice what that pair took and counting starts again. Once a chain passes TTL + 1 s (expiry check,
    # revoke commit) after its first read, that first renewal alone would have lost the keys.
    ttl, base, previous_start = 3, None, 0.0
    deadline = time.monotonic() + 120
    world.docker_run("-P", "local/web")
    while True:
        started = time.monotonic()
        world.sync("--ttl", str(ttl))
        held = world.etcd.get_prefix(world.prefix + "/")
        read = time.monotonic()
        if base is None:
            base, base_read = held, read
        elif read - previous_start >= ttl:
            ttl, base = math.ceil(2 * (read - previous_start)), None
        else:
            assert len(held) == 2 and held == base, "a run that renewed in time lost or rewrote keys"
            if read > base_read + ttl + 1:
                break
        previous_start = started
        assert read < deadline, f"runs too slow to prove anything in 120 s (TTL now {ttl})"
    # The last renewal was before `read`: gone TTL + 0.5 s later, plus a revoke's commit.
    wait_until(lambda: world.keys() == {}, ttl + 5, "keys to expire once runs stop")


def test_lost_lease_is_granted_again_and_every_key_rewritten(world):
    world.docker_run("-P", "local/web")
    world.sync()
    lease = next(iter(world.etcd.get_prefix(world.prefix + "/").values()))["lease"]
    world.etcd.etcdctl("lease", "revoke", f"{lease:x}")
    assert world.keys() == {f"{world.prefix}/web/port": "80"}  # the shared key, on its own lease, stays
    result = world.sync()
    assert len(world.keys()) == 2 and result.stdout.startswith("added 1, updated 0, removed 0, unchanged 1")


def test_changing_the_ttl_moves_keys_to_a_lease_with_the_new_ttl(world):
    cid = world.docker_run("-P", "local/web")
    world.sync("--ttl", "30")
    world.sync("--ttl", "40")
    held = world.etcd.get_prefix(world.prefix + "/")
    lease = held[f"{world.prefix}/web/{cid[:12]}"]["lease"]
    assert lease == dr.lease_id_for(world.host_ip, world.prefix) and len(world.keys()) == 2
    assert "granted with TTL(40s)" in world.etcd.etcdctl("lease", "timetolive", f"{lease:x}").stdout
    # The shared port key kept its own lease throughout: it never went, so no reader saw it go.
    assert held[f"{world.prefix}/web/port"]["lease"] == dr.shared_lease_id(world.host_ip, f"{world.prefix}/web/port")


def test_dry_run_shows_the_plan_and_writes_nothing(world):
    cid = world.docker_run("-P", "local/web")
    revision = world.etcd.revision()
    result = world.run("sync", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert world.etcd.revision() == revision and world.keys() == {}
    assert f"{world.prefix}/web/{short(cid)}" in result.stdout and "add" in result.stdout
    assert "nothing written" in result.stdout


def test_json_output_of_a_run_and_of_a_dry_run(world):
    cid = world.docker_run("-P", "local/web")
    plan = json.loads(world.run("sync", "--dry-run", "--output", "json").stdout)
    assert plan["dry_run"] is True and plan["added"] == 2
    assert {c["key"] for c in plan["changes"]} == {f"{world.prefix}/web/{short(cid)}", f"{world.prefix}/web/port"}
    done = json.loads(world.sync("--output", "json").stdout)
    assert done["dry_run"] is False and done["added"] == 2 and len(world.keys()) == 2
    again = json.loads(world.sync(DOCKER_REGISTER_OUTPUT="json").stdout)
    assert again["changes"] == [] and again["unchanged"] == 2


@pytest.mark.parametrize("layout", LAYOUT_KEYS)
def test_dry_run_json_output_and_purge_work_in_every_layout(world, layout):
    cid = world.docker_run("-P", "local/web")
    env, prefix, key = world.in_layout(layout, cid)
    revision = world.etcd.revision()
    plan = json.loads(world.sync("--dry-run", "--output", "json", **env).stdout)
    assert plan["dry_run"] is True and key in {change["key"] for change in plan["changes"]}
    assert world.etcd.revision() == revision, "a dry run writes nothing"
    done = json.loads(world.sync("--output", "json", **env).stdout)
    assert done["added"] == plan["added"] and key in world.etcd.values(prefix)
    purged = json.loads(world.run("purge", "--output", "json", **env).stdout)
    # Only shared keys stay, on leases of their own (expiring unless a host still wants them).
    left = world.etcd.get_prefix(prefix + "/")
    assert key in purged["keys"] and set(left) == ({f"{prefix}/web/port"} if layout == "discover" else set())
    assert all(kv["lease"] == dr.shared_lease_id(world.host_ip, shared) for shared, kv in left.items())


def test_docker_down_exits_1_with_one_line_and_leaves_etcd_untouched(world, tmp_path):
    world.docker_run("-P", "local/web")
    world.sync()
    revision = world.etcd.revision()
    started = time.monotonic()
    result = world.run("sync", DOCKER_HOST=f"unix://{tmp_path}/missing.sock")
    assert result.returncode == 1
    assert time.monotonic() - started < 3 + 5
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "docker" in lines[0] and "missing.sock" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert world.etcd.revision() == revision and len(world.keys()) == 2


def test_etcd_down_exits_1_with_one_line_within_the_timeout(world):
    world.docker_run("-P", "local/web")
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = world.run("sync", "--timeout", "2", ETCD_HOST=dead)
    assert result.returncode == 1
    assert time.monotonic() - started < 2 + 5
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and dead in lines[0] and "etcd" in lines[0], result.stderr


def test_etcd_stalled_exits_1_within_the_timeout(world):
    world.docker_run("-P", "local/web")
    with silent_endpoint() as silent:
        started = time.monotonic()
        result = world.run("sync", "--timeout", "2", ETCD_HOST=silent)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 2 + 5
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_detected_host_ip_is_the_default_route_address_or_a_usage_error(world):
    world.docker_run("-P", "local/web")
    env = world.env()
    del env["HOST_IP"]
    result = subprocess.run([BINARY, "sync", "--dry-run", "--output", "json"], capture_output=True, text=True,
                            env=env, timeout=60)
    route = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True)
    if "src" in route.stdout and "docker0" not in route.stdout:
        expected = route.stdout.split(" src ")[1].split()[0]
        assert result.returncode == 0, result.stderr
        values = [c["value"] for c in json.loads(result.stdout)["changes"] if not c["key"].endswith("/port")]
        assert values and all(v.startswith(expected + ":") for v in values)
    else:
        assert result.returncode == 2 and "HOST_IP" in result.stderr


def test_more_than_128_keys_are_written_in_transactions_of_at_most_128(world):
    base = 20000 + (world.etcd.client_port % 1000) * 10
    world.docker_run("-p", f"{base}-{base + 64}:{base}-{base + 64}", "local/web")  # 65 ports, 130 keys
    before, rpcs_before = world.etcd.metrics(), world.etcd.rpcs()
    result = world.sync()
    after, rpcs_after = world.etcd.metrics(), world.etcd.rpcs()
    assert len(world.keys()) == 130 and result.stdout.startswith("added 130")
    # One read of the 65 service folders, then 130 puts in two writes.
    assert rpcs_after["Txn"] - rpcs_before.get("Txn", 0) == 3
    assert after["etcd_mvcc_put_total"] - before["etcd_mvcc_put_total"] == 130


def sent_bytes(etcd) -> float:
    """Bytes etcd has sent to gRPC clients so far."""
    return float(re.search(r"^etcd_network_client_grpc_sent_bytes_total (\S+)$", etcd.metrics_text(), re.M)[1])


def test_a_run_reads_its_own_keys_not_the_fleets(world):
    import etcd3

    world.docker_run("-P", "local/web")
    world.sync()
    # Another host: 2000 keys in 200 services of its own, and 500 instances of web as well.
    client = etcd3.client("127.0.0.1", world.etcd.client_port)
    other = client.lease(60)
    keys = [f"{world.prefix}/svc{i % 200}/{i:012x}" for i in range(2000)]
    keys += [f"{world.prefix}/web/{i:012x}" for i in range(500)]
    for start in range(0, len(keys), 100):
        client.transaction(compare=[], success=[client.transactions.put(key, "10.9.9.9:80", lease=other)
                                                for key in keys[start:start + 100]], failure=[])
    client.close()

    before = sent_bytes(world.etcd)
    result = world.sync()
    sent = sent_bytes(world.etcd) - before
    assert result.stdout.startswith("added 0, updated 0, removed 0, unchanged 2")
    # The prefix holds over 150 kB; this host's own two keys are a few hundred bytes.
    assert sent < 3000, sent

    world.engine.remove_all_containers()
    result = world.sync()
    # The other host still serves web: the port key stays, on its own lease, for the hosts that want it.
    assert result.stdout.startswith("added 0, updated 0, removed 1, unchanged 1")
    after = world.etcd.get_prefix(world.prefix + "/")
    port = f"{world.prefix}/web/port"
    assert after[port]["value"] == "80" and after[port]["lease"] == dr.shared_lease_id(world.host_ip, port)
    assert len(after) == len(keys) + 1
