"""--internal and --network against a real dockerd and etcd: container addresses on networks the tests create.

Every network here is a user-defined bridge made by the test with a subnet no route of this machine uses;
the only traffic sent goes to a container address inside such a subnet (a namespace the test made).
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import subprocess

import pytest

import docker_register as dr
from harness import require, wait_until

API = "registry.example:5000/team/api:1.2"  # exposes 80 and 443
Subnet = ipaddress.IPv4Network | ipaddress.IPv6Network
PAGE = "hello from docker-register tests"


def short(container_id: str) -> str:
    return container_id[:12]


def routes(family: str) -> str:
    return subprocess.run([require("ip"), family, "route"], capture_output=True, text=True, check=True).stdout


class Networks:
    """User-defined bridge networks made for one test, each with a subnet of its own."""

    def __init__(self, world):
        self.world = world
        self.made: dict[str, list[Subnet]] = {}

    def create(self, name: str, ipv6: bool = False) -> str:
        """Create a bridge network on a /24 (and a /64 with ipv6) that this machine routes nowhere yet."""
        pid = os.getpid()
        # The harness's engines use 10.213.x and 10.214.x; concurrent test sessions start from their own pid.
        subnets = [self.unused("-4", (f"10.{215 + i // 250}.{(pid + i) % 250}.0/24" for i in range(750)))]
        if ipv6:
            subnets.append(self.unused("-6", (f"fd42:d0c:{pid & 0xffff:x}:{i:x}::/64" for i in range(250))))
        args = [arg for subnet in subnets for arg in ("--subnet", str(subnet))]
        self.world.engine.docker("network", "create", *(["--ipv6"] if ipv6 else []), *args, name)
        self.made[name] = subnets
        return name

    def unused(self, family: str, candidates) -> Subnet:
        """The first candidate subnet that no route of this machine and no network of this test uses."""
        routed = {line.split()[0] for line in routes(family).splitlines() if line.strip()}
        mine = {subnet for subnets in self.made.values() for subnet in subnets}
        found = next((net for candidate in candidates
                      if (net := ipaddress.ip_network(candidate)) not in mine and str(net) not in routed), None)
        assert found, f"every candidate subnet is routed on this machine already ({family})"
        return found

    def addresses(self, container: str) -> dict[str, dict[str, str]]:
        """A container's networks and its IPv4 / IPv6 address on each, read with docker inspect."""
        found = json.loads(self.world.engine.docker(
            "inspect", "-f", "{{json .NetworkSettings.Networks}}", container).stdout)
        return {name: {"v4": net["IPAddress"], "v6": net["GlobalIPv6Address"]} for name, net in found.items()}

    def page(self, address: str) -> str | None:
        """GET / from a registered `ip:port`, which must be inside a network this test made."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        assert any(ipaddress.ip_address(host).version == subnet.version and ipaddress.ip_address(host) in subnet
                   for nets in self.made.values() for subnet in nets), (
            f"{host} is not in a network this test made: no request sent")
        connection = http.client.HTTPConnection(host, int(port), timeout=3)
        try:
            connection.request("GET", "/", headers={"Connection": "close"})
            return connection.getresponse().read().decode(errors="replace")
        except OSError:
            return None
        finally:
            connection.close()

    def remove(self) -> None:
        self.world.engine.remove_all_containers()
        for name in self.made:
            self.world.engine.docker("network", "rm", name, check=False)


@pytest.fixture
def networks(world):
    """Networks the test creates; removed (their containers first) after it."""
    made = Networks(world)
    yield made
    made.remove()


def notes(result: subprocess.CompletedProcess, container: str) -> list[str]:
    """The skip notes a run printed about one container (by name)."""
    return [line for line in result.stderr.splitlines() if f"skip {container} (" in line]


def own_lease_keys(world) -> list[str]:
    """Every key on this host's lease, wherever it is (LeaseTimeToLive with keys)."""
    lease = dr.lease_id_for(world.host_ip, world.prefix)
    out = json.loads(world.etcd.etcdctl("lease", "timetolive", f"{lease:x}", "--keys", "-w", "json").stdout)
    return [base64.b64decode(key).decode() for key in out.get("keys") or []]


def test_internal_registers_the_address_on_a_created_network_and_it_answers(world, networks):
    front = networks.create(f"front{world.prefix.split('/')[1]}")
    cid = world.docker_run("--name", "inner", "--network", front, "local/web")
    assert world.sync().stdout.startswith("added 0, updated 0, removed 0, unchanged 0")  # exposed, not published
    assert world.keys() == {}

    world.sync("--internal")
    ip = networks.addresses(cid)[front]["v4"]
    assert ipaddress.ip_address(ip) in networks.made[front][0]
    assert world.keys() == {f"{world.prefix}/web/{short(cid)}": f"{ip}:80", f"{world.prefix}/web/port": "80"}
    page = wait_until(lambda: networks.page(world.keys()[f"{world.prefix}/web/{short(cid)}"]), 20,
                      "the container to answer at its registered address")
    assert PAGE in page


def test_two_networks_a_label_chooses_per_port_or_for_all_and_no_choice_is_a_note(world, networks):
    tag = world.prefix.split("/")[1]
    front, back = networks.create(f"front{tag}"), networks.create(f"back{tag}")
    chosen = world.docker_run("--name", "chosen", "--network", front, "-l", f"SERVICE_NETWORK={back}", "local/web")
    torn = world.docker_run("--name", "torn", "--network", front, "local/web")
    split = world.docker_run("--name", "split", "--network", front, "-l", f"SERVICE_NETWORK={back}",
                             "-l", f"SERVICE_80_NETWORK={front}", API)
    for cid in (chosen, torn, split):
        world.engine.docker("network", "connect", back, cid)

    result = world.sync("--internal")
    at = {cid: networks.addresses(cid) for cid in (chosen, split)}
    p = world.prefix
    assert world.keys() == {
        f"{p}/web/{short(chosen)}": f"{at[chosen][back]['v4']}:80", f"{p}/web/port": "80",
        f"{p}/api-80/{short(split)}": f"{at[split][front]['v4']}:80", f"{p}/api-80/port": "80",
        f"{p}/api-443/{short(split)}": f"{at[split][back]['v4']}:443", f"{p}/api-443/port": "443",
    }
    [note] = notes(result, "torn")
    assert front in note and back in note and "SERVICE_NETWORK" in note, result.stderr
    assert not notes(result, "chosen") and not notes(result, "split"), result.stderr
    page = wait_until(lambda: networks.page(world.keys()[f"{p}/web/{short(chosen)}"]), 20, "chosen to answer")
    assert PAGE in page


def test_network_flag_is_the_default_a_label_wins_and_a_missing_network_is_a_note(world, networks):
    tag = world.prefix.split("/")[1]
    front, back = networks.create(f"front{tag}"), networks.create(f"back{tag}")
    torn = world.docker_run("--name", "torn", "--network", front, "local/web")
    labelled = world.docker_run("--name", "labelled", "--network", front, "-l", f"SERVICE_NETWORK={front}",
                                "local/web")
    for cid in (torn, labelled):
        world.engine.docker("network", "connect", back, cid)
    world.docker_run("--name", "frontonly", "--network", front, "local/web")
    world.docker_run("--name", "stray", "--network", front, "-l", f"SERVICE_NETWORK={back}", "local/web")

    result = world.sync("--internal", "--network", back)
    p = world.prefix
    assert world.keys() == {
        f"{p}/web/{short(torn)}": f"{networks.addresses(torn)[back]['v4']}:80",
        f"{p}/web/{short(labelled)}": f"{networks.addresses(labelled)[front]['v4']}:80",
        f"{p}/web/port": "80",
    }
    for name in ("frontonly", "stray"):
        [note] = notes(result, name)
        assert f"not on network '{back}'" in note and front in note, result.stderr
    assert not notes(result, "torn") and not notes(result, "labelled"), result.stderr

    # The environment twins plan the same keys: nothing to change.
    again = world.sync(DOCKER_REGISTER_INTERNAL="1", DOCKER_REGISTER_NETWORK=back)
    assert again.stdout.startswith("added 0, updated 0, removed 0, unchanged 3"), again.stdout


def test_host_network_container_registers_host_ip_with_one_inspect_in_both_modes(world):
    # `sleep`, not httpd: with host networking httpd would bind port 80 of this machine.
    hosted = world.docker_run("--name", "hosted", "--network", "host", "--expose", "9999", "local/web",
                              "/bin/sleep", "100000")
    exposed = world.engine.docker("inspect", "-f", "{{json .Config.ExposedPorts}}", hosted).stdout
    assert json.loads(exposed) == {"80/tcp": {}, "9999/tcp": {}}  # --expose adds to the image's EXPOSE
    bridged = world.docker_run("--name", "bridged", "-P", "local/echo")
    bridged_ip = world.engine.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", bridged).stdout.strip()
    published = world.host_port("bridged", "7/tcp")
    p, ip = world.prefix, world.host_ip
    hosted_keys = {f"{p}/web-80/{short(hosted)}": f"{ip}:80", f"{p}/web-80/port": "80",
                   f"{p}/web-9999/{short(hosted)}": f"{ip}:9999", f"{p}/web-9999/port": "9999"}

    for mode, echo in (((), f"{ip}:{published}"), (("--internal",), f"{bridged_ip}:7")):
        before = world.engine.api_requests()
        world.sync(*mode)
        calls = world.engine.api_requests()[len(before):]
        assert len(calls) == 2 and calls[0].startswith("GET /containers/json?"), calls
        assert calls[1] == f"GET /containers/{hosted}/json", calls
        assert world.keys() == {**hosted_keys, f"{p}/echo/{short(bridged)}": echo, f"{p}/echo/port": "7"}, mode


def test_switching_internal_moves_this_hosts_keys_in_one_run_and_never_another_hosts(world, networks):
    front = networks.create(f"front{world.prefix.split('/')[1]}")
    p = world.prefix
    other = world.etcd.grant(300)
    theirs = {f"{p}/api/bbbbbbbbbbbb": "192.0.2.200:8080", f"{p}/api/port": "80",
              f"{p}/api-80/bbbbbbbbbbbb": "192.0.2.200:80", f"{p}/api-80/port": "80"}
    for key, value in theirs.items():
        world.etcd.etcdctl("put", "--lease", f"{other:x}", key, value)
    world.etcd.etcdctl("put", f"{p}/static/dddddddddddd", "192.0.2.201:1")  # no lease at all
    untouchable = world.etcd.get_prefix(p + "/")

    # Port 80 published, 443 only exposed: published mode registers one port, internal mode both.
    cid = world.docker_run("--name", "mover", "--network", front, "-p", "80", API)
    published = {f"{p}/api/{short(cid)}": f"{world.host_ip}:{world.host_port('mover', '80/tcp')}"}
    ip = networks.addresses(cid)[front]["v4"]
    internal = {f"{p}/api-80/{short(cid)}": f"{ip}:80", f"{p}/api-443/{short(cid)}": f"{ip}:443",
                f"{p}/api-443/port": "443"}
    lease = dr.lease_id_for(world.host_ip, p)

    for args, ours, summary in (((), published, "added 1, updated 0, removed 0"),
                                (("--internal",), internal, "added 3, updated 0, removed 1"),
                                ((), published, "added 1, updated 0, removed 3"),
                                (("--internal",), internal, "added 3, updated 0, removed 1")):
        result = world.sync(*args)
        assert result.stdout.startswith(summary), (args, result.stdout)
        held = world.etcd.get_prefix(p + "/")
        assert {key: kv["value"] for key, kv in held.items()} == {**theirs, f"{p}/static/dddddddddddd": "192.0.2.201:1",
                                                                  **ours}, args
        assert {key: held[key] for key in untouchable} == untouchable  # same values, leases and revisions
        assert {key: held[key]["lease"] for key in ours} == {
            key: dr.shared_lease_id(world.host_ip, key) if key.endswith("/port") else lease for key in ours}
        # One run moved everything: the next run with the same flags has nothing to do and writes nothing.
        revision = world.etcd.revision()
        assert world.sync(*args).stdout.startswith("added 0, updated 0, removed 0"), args
        assert world.etcd.revision() == revision


HOSTILE = ["", "/", "..", "../../etc", "x" * 1000]


def test_hostile_network_labels_never_crash_a_run_nor_leave_the_prefix(world, networks):
    tag = world.prefix.split("/")[1]
    front, back = networks.create(f"front{tag}"), networks.create(f"back{tag}")
    neighbour = world.docker_run("--name", "neighbour", "--network", back, "local/web")  # another's network
    hostile = {}
    for i, value in enumerate(HOSTILE + [back]):
        for label in ("SERVICE_NETWORK", "SERVICE_80_NETWORK"):
            name = f"hostile{i}{label[8]}"
            hostile[name] = (value, world.docker_run("--name", name, "--network", front, "-l", f"{label}={value}",
                                                     "local/web"))
    neighbour_ip = networks.addresses(neighbour)[back]["v4"]

    for args in (("--internal",), ("--internal", "--network", back), ("--internal", "--network", "/"),
                 ("--internal", "--network", ".."), ("--internal", "--network", "y" * 1000), ()):
        result = world.run("sync", *args)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stderr)
        assert all(key.startswith(world.prefix + "/") for key in own_lease_keys(world)), args
        keys = world.keys()
        if not args:
            assert keys == {}  # nothing is published
            continue
        expected = {}
        flag = args[2] if len(args) > 2 else None
        if flag == back or flag is None:
            expected[f"{world.prefix}/web/{short(neighbour)}"] = f"{neighbour_ip}:80"
        for name, (value, cid) in hostile.items():
            if value == "" and flag is None:  # an empty label chooses nothing: the only network
                expected[f"{world.prefix}/web/{short(cid)}"] = f"{networks.addresses(cid)[front]['v4']}:80"
            else:
                [note] = notes(result, name)
                assert "not on network" in note and front in note and len(note) < 400, note
        if expected:
            expected[f"{world.prefix}/web/port"] = "80"
        assert keys == expected, args


def test_container_without_a_network_is_skipped_with_a_note(world):
    # The list shows a `none` container with no Ports at all, although its image exposes 80.
    world.docker_run("--name", "unplugged", "--network", "none", "local/web")
    result = world.sync("--internal")
    assert world.keys() == {}
    found = notes(result, "unplugged")
    assert len(found) == 1 and "no network address" in found[0], f"stderr: {result.stderr!r}"


def test_dual_stack_network_registers_the_address_of_the_host_ips_family(world, networks):
    dual = networks.create(f"dual{world.prefix.split('/')[1]}", ipv6=True)
    cid = world.docker_run("--name", "dual", "--network", dual, "local/web")
    at = networks.addresses(cid)[dual]
    assert at["v4"] and at["v6"], at
    key = f"{world.prefix}/web/{short(cid)}"

    world.sync("--internal")
    assert world.keys() == {key: f"{at['v4']}:80", f"{world.prefix}/web/port": "80"}
    world.etcd.revoke_all_leases()

    world.sync("--internal", "--host-ip", "2001:db8::5")
    assert world.keys() == {key: f"[{at['v6']}]:80", f"{world.prefix}/web/port": "80"}
    page = wait_until(lambda: networks.page(world.keys()[key]), 20, "the container to answer over IPv6")
    assert PAGE in page

    world.sync("--internal", "--host-ip", "2001:db8::5", "--layout", "skydns", "--prefix", world.prefix + "dns")
    values = [json.loads(value) for value in world.etcd.values(world.prefix + "dns/").values()]
    assert {(v["host"], v["port"]) for v in values} == {(at["v6"], 80)}  # the plain address in JSON layouts
