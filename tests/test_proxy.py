"""The read-only Docker API proxy (systemd/docker-register-proxy.cfg, HAProxy): every way docker-register
syncs works through it, and it refuses everything else with 403. Real haproxy, dockerd and etcd; the CLI as
a real process with DOCKER_HOST at the proxy's socket."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from harness import deny_write_execute, require, stop_process, wait_until
from hosts import SLOW_STOP, Watch, event_requests, inspect
from test_networks import Networks


def through(proxy) -> dict[str, str]:
    return {"DOCKER_HOST": proxy.host}


def test_one_shot_sync_works_through_the_proxy(world, proxy):
    world.docker_run("-P", "local/web")
    world.docker_run("-P", "local/echo")
    result = world.sync(**through(proxy))
    assert result.stdout.startswith("added 4"), result.stdout
    assert world.keys() == world.expected_keys()
    assert world.sync(**through(proxy)).stdout.startswith("added 0, updated 0, removed 0, unchanged 4")
    assert proxy.refusals() == []


def test_watch_registers_and_drains_through_the_proxy(world, proxy):
    streams = event_requests(world.engine)
    watch = Watch(world.env(**through(proxy)), every=1, ttl=30)
    try:
        watch.wait_passes(1, 30)
        wait_until(lambda: event_requests(world.engine) > streams, 10, "the event stream to open through the proxy")
        cid = world.docker_run("-P", "local/web", *SLOW_STOP)
        key = f"{world.prefix}/web/{cid[:12]}"
        wait_until(lambda: key in world.keys(), 5, "the new container's key")
        stopping = subprocess.Popen([require("docker"), "-H", world.engine.host, "stop", "-t", "20", cid],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            began = time.monotonic()
            # Passes every second list it as running for 6 s more: only the kill event, which came through the
            # proxy's event stream, takes it out while it still runs.
            def drained_while_running():
                before = inspect(world.engine, cid, "{{.State.Running}}")
                gone = key not in world.keys()
                return gone and before == inspect(world.engine, cid, "{{.State.Running}}") == "true"
            wait_until(drained_while_running, 5, "the stopping container's key to go while it still runs", 0.05)
            assert time.monotonic() - began < 3
            assert stopping.wait(20) == 0, stopping.stderr.read()
            assert key not in world.keys()
        finally:
            stop_process(stopping)
    finally:
        watch.terminate()
    assert watch.proc.returncode == 0, watch.stderr_lines()
    assert not [line for line in watch.stderr_lines() if "event stream" in line], watch.stderr_lines()
    assert proxy.refusals() == []


def test_host_network_container_is_inspected_through_the_proxy(world, proxy):
    hosted = world.docker_run("--network", "host", "--expose", "9999", "local/web", "/bin/sleep", "100000")
    before = world.engine.api_requests()
    world.sync(**through(proxy))
    assert f"GET /containers/{hosted}/json" in world.engine.api_requests()[len(before):]
    p, ip = world.prefix, world.host_ip
    assert world.keys() == {f"{p}/web-80/{hosted[:12]}": f"{ip}:80", f"{p}/web-80/port": "80",
                            f"{p}/web-9999/{hosted[:12]}": f"{ip}:9999", f"{p}/web-9999/port": "9999"}
    assert proxy.refusals() == []


def test_internal_mode_works_through_the_proxy(world, proxy):
    networks = Networks(world)
    try:
        front = networks.create(f"pfront{world.prefix.split('/')[1]}")
        cid = world.docker_run("--network", front, "local/web")
        world.sync("--internal", **through(proxy))
        ip = networks.addresses(cid)[front]["v4"]
        assert world.keys() == {f"{world.prefix}/web/{cid[:12]}": f"{ip}:80", f"{world.prefix}/web/port": "80"}
    finally:
        networks.remove()
    assert proxy.refusals() == []


@pytest.fixture
def victim(engine) -> str:
    """A running container the refused requests name."""
    return engine.docker("run", "-d", "local/web").stdout.strip()


EXEC = json.dumps({"Cmd": ["touch", "/tmp/owned"], "AttachStdout": True}).encode()
CREATE = json.dumps({"Image": "local/web", "Cmd": ["true"]}).encode()


# One row per request the proxy must refuse: a table of cases, alike in shape because each is one request.
@pytest.mark.parametrize("method, path, body", [
    ("POST", "/containers/create", CREATE),
    ("POST", "/v1.41/containers/create", CREATE),
    ("POST", "/containers/{id}/exec", EXEC),
    ("DELETE", "/containers/{id}?force=1", b""),
    ("GET", "/secrets", b""),
    ("GET", "/containers/{id}/archive?path=/www", b""),
    ("GET", "/containers/{id}/logs?stdout=1", b""),
    ("GET", "/images/json", b""),
    ("GET", "/info", b""),
    ("HEAD", "/containers/json", b""),
    ("POST", "/containers/json", b""),
    ("POST", "/events", b""),
    ("GET", "/containers/{id}/json/../../../secrets", b""),
    ("GET", "/containers/%2e%2e/secrets/json", b""),
    ("GET", "http://docker/secrets", b""),
])
def test_the_proxy_refuses_everything_else_with_403(proxy, engine, victim, method, path, body):
    containers = engine.docker("ps", "-aq", "--no-trunc").stdout.split()
    before = engine.api_requests()
    status, _ = proxy.request(method, path.format(id=victim), body)
    assert status == 403
    assert engine.api_requests()[len(before):] == []  # dockerd never saw it
    assert engine.docker("ps", "-aq", "--no-trunc").stdout.split() == containers
    assert inspect(engine, victim, "{{.State.Running}}") == "true"


@pytest.mark.parametrize("method, path", [
    ("GET", "/containers/json"), ("GET", "/v1.41/containers/json?all=1"), ("GET", "/containers/{id}/json"),
    ("GET", "/v1.24/containers/{id}/json"), ("GET", "/_ping"), ("HEAD", "/_ping"), ("GET", "/v1.41/_ping"),
    ("GET", "/version"), ("GET", "/v1.24/version"),
])
def test_the_proxy_lets_through_what_docker_register_uses(proxy, victim, method, path):
    assert proxy.request(method, path.format(id=victim))[0] == 200


def test_the_proxy_passes_an_event_stream_on_as_it_happens(proxy, engine):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(proxy.socket))
        sock.sendall(b"GET /v1.24/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D HTTP/1.1\r\n"
                     b"Host: docker\r\n\r\n")
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), head
        cid = engine.docker("run", "-d", "local/web").stdout.strip()
        seen = b""
        while cid.encode() not in seen:
            seen += sock.recv(65536)


def test_the_shipped_config_needs_no_writable_executable_memory(proxy, tmp_path):
    """HAProxy's regular expressions use PCRE2's JIT, which MemoryDenyWriteExecute=yes refuses (haproxy then
    rejects its configuration): the shipped one has none, and parses with that rule in force. (The proxy
    fixture runs under the same rule.)"""
    def check(text: str) -> subprocess.CompletedProcess:
        config = tmp_path / "check.cfg"
        config.write_text(text.replace("bind fd@3", f"bind unix@{tmp_path / 'check.sock'}"))
        return subprocess.run([require("haproxy"), "-c", "-f", str(config)], capture_output=True, text=True,
                              preexec_fn=deny_write_execute)

    shipped = proxy.CONFIG.read_text()
    with_a_regex = check(shipped.replace("acl ping var(txn.api) -m str _ping", "acl ping path_reg ^/_ping$"))
    if "jit compilation failed" not in with_a_regex.stdout + with_a_regex.stderr:
        pytest.skip("this kernel cannot refuse writable, executable memory (PR_SET_MDWE needs Linux 6.3)")
    result = check(shipped)
    assert result.returncode == 0, result.stdout + result.stderr
