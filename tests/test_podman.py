"""Podman 4.3's Docker-compatible socket as the engine: the CLI as a real process with DOCKER_HOST on a rootful
Podman the harness starts (private storage), a real etcd, results read with etcdctl.

Podman differs from dockerd where these tests say so: its list entries carry no health, no HostConfig and no
unpublished ports, and its stop begins without an event (docker-register then drains a container the list shows
"stopping"). See docs/engines.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request

from harness import stop_process, wait_until
from hosts import SLOW_STOP, Watch

def podman_run(world, *args: str) -> str:
    """Start a container on the Podman; return its full id."""
    return world.engine.podman("run", "-d", *args).stdout.strip()


def podman_port(world, cid: str, port: str = "80/tcp") -> int:
    """The host port Podman published a container port on."""
    return int(world.engine.podman("port", cid, port).stdout.split()[0].rsplit(":", 1)[1])


def listed(world, cid: str) -> dict:
    """The container's entry in GET /containers/json, as docker-register reads it."""
    return next(c for c in json.loads(world.engine.api("/containers/json")) if c["Id"] == cid)


def alive(world, cid: str) -> bool:
    """Whether the container's process runs: Podman's state is "running", or "stopping" during a stop."""
    status = world.engine.podman("inspect", "-f", "{{.State.Status}}", cid, check=False).stdout.strip()
    return status in ("running", "stopping")


def web_key(world, cid: str) -> str:
    return f"{world.prefix}/web/{cid[:12]}"


def started_watch(world, every: int = 60, ttl: int = 90) -> Watch:
    """`sync --every --events` on the Podman, once its first pass ran and its event stream delivers: a
    container started without ports (nothing to register) makes a pass within seconds."""
    watch = Watch(world.env(), every, ttl)
    watch.wait_passes(1, 30)

    def stream_open():
        since = time.monotonic()
        podman_run(world, "local/dns")
        try:
            return watch.wait_passes(1, 3, since=since)
        except TimeoutError:
            return None
    wait_until(stream_open, 20, "a pass after an event", interval=0)
    return watch


def stopped(watch: Watch) -> None:
    """SIGTERM the watch; it exits 0 within 3 s, with no traceback."""
    watch.terminate()
    assert watch.proc.returncode == 0, watch.stderr_lines()
    assert watch.exit_seconds < 3, watch.exit_seconds
    assert not [line for line in watch.stderr_lines() if "Traceback" in line], watch.stderr_lines()


def test_one_shot_sync_registers_a_podman_run_P_container(podman_world):
    world = podman_world
    cid = podman_run(world, "-P", "local/web")
    assert "IP" not in listed(world, cid)["Ports"][0]  # Podman lists no IP: every address of the host
    port = podman_port(world, cid)
    world.sync()
    assert world.keys() == {web_key(world, cid): f"{world.host_ip}:{port}", f"{world.prefix}/web/port": "80"}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        assert b"hello" in response.read()  # the registered port is the container's
    world.engine.podman("rm", "-f", "-t", "0", cid)
    world.sync()
    assert world.keys() == {}


def test_events_register_a_new_podman_container_within_seconds(podman_world):
    world = podman_world
    watch = started_watch(world)
    try:
        began = time.monotonic()
        cid = podman_run(world, "-P", "local/web")
        wait_until(lambda: web_key(world, cid) in world.keys(), 5, "the new container's key")
        assert time.monotonic() - began < 5  # the next periodic pass is 60 s away
        assert world.keys()[web_key(world, cid)] == f"{world.host_ip}:{podman_port(world, cid)}"
    finally:
        stopped(watch)


def test_a_stopping_podman_container_is_drained_while_it_still_runs(podman_world):
    world = podman_world
    cid = podman_run(world, "-P", "local/web", *SLOW_STOP)
    port = podman_port(world, cid)
    watch = started_watch(world)
    try:
        key = web_key(world, cid)
        wait_until(lambda: key in world.keys(), 5, "the key")
        stopping = subprocess.Popen(world.engine.command("stop", "-t", "20", cid), env=world.engine.env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            began = time.monotonic()
            try:
                wait_until(lambda: key not in world.keys(), 5, "the key to go", interval=0.05)
            except TimeoutError:
                raise AssertionError(f"not drained; docker-register said: {watch.stderr_lines()}") from None
            drained = time.monotonic() - began
            assert alive(world, cid), "the key went only when the container had exited"
            assert drained < 3  # it serves 6 s after SIGTERM
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                assert b"hello" in response.read()  # still serving, yet out of the registry
            came_back = []
            while alive(world, cid) and time.monotonic() - began < 20:
                if key in world.keys():
                    came_back.append(time.monotonic() - began)
                time.sleep(0.1)
            assert not alive(world, cid) and came_back == []
            assert stopping.wait(20) == 0, stopping.stderr.read()
            assert time.monotonic() - began > 5  # the 6 s of serving after SIGTERM really happened
            print(f"podman stop -> key gone {drained:.2f}s, container exited {time.monotonic() - began:.1f}s")
        finally:
            stop_process(stopping)
    finally:
        stopped(watch)


def test_a_paused_podman_container_leaves_and_comes_back_on_unpause(podman_world):
    world = podman_world
    watch = started_watch(world)
    try:
        cid = podman_run(world, "-P", "local/web")
        key = web_key(world, cid)
        wait_until(lambda: key in world.keys(), 5, "the key")
        world.engine.podman("pause", cid)
        wait_until(lambda: key not in world.keys(), 5, "the paused container's key to go")
        world.engine.podman("unpause", cid)
        wait_until(lambda: key in world.keys(), 5, "the unpaused container's key to come back")
    finally:
        stopped(watch)


def test_internal_registers_the_address_on_a_podman_network_of_published_ports_only(podman_world):
    """--internal works on a Podman network for published ports. A difference pinned: Podman 4.3 lists no
    exposed-but-unpublished port (Docker lists it without PublicPort), so such a port is not registered."""
    world = podman_world
    network, pid = "backends", os.getpid()  # a bridge and subnet of this run's own, like the harness's
    world.engine.write_network(network, f"drn{pid % 100000}", f"10.218.{pid % 250}.0/24")
    published = podman_run(world, "--network", network, "-P", "local/web")
    unpublished = podman_run(world, "--network", network, "local/web")
    assert listed(world, unpublished)["Ports"] == []
    address = world.engine.podman("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                                  published).stdout.strip()
    world.sync("--internal")
    assert world.keys() == {web_key(world, published): f"{address}:80", f"{world.prefix}/web/port": "80"}
    with urllib.request.urlopen(f"http://{address}/", timeout=5) as response:
        assert b"hello" in response.read()  # the registered address serves


def test_podman_lists_no_health_so_a_failing_health_check_does_not_keep_a_container_out(podman_world):
    """A difference pinned: Podman 4.3's list has no health in Status (nor a Health field), so docker-register
    sees every container as without a health check. When Podman lists health, this fails: update the docs."""
    world = podman_world
    cid = podman_run(world, "-P", "--health-cmd", "false", "--health-retries", "1", "local/web")
    world.engine.podman("healthcheck", "run", cid, check=False)  # no systemd here: nothing runs the checks
    assert world.engine.podman("inspect", "-f", "{{.State.Health.Status}}", cid).stdout.strip() == "unhealthy"
    assert "health" not in listed(world, cid)["Status"] and "Health" not in listed(world, cid)
    world.sync()
    assert web_key(world, cid) in world.keys()


def test_podman_lists_no_network_mode_so_a_host_network_container_is_not_registered(podman_world):
    """A difference pinned: Podman 4.3's list entry has no HostConfig.NetworkMode and its inspect no exposed
    ports for a host-network container, so docker-register cannot tell its ports. When it can, update the docs."""
    world = podman_world
    cid = podman_run(world, "--network", "host", "local/web", "httpd", "-f", "-p", "18087", "-h", "/www")
    assert "HostConfig" not in listed(world, cid)
    result = world.sync()
    assert world.keys() == {}, result.stdout
