"""Engines whose API versions do not overlap (dockerd 20.10 serves up to 1.41, Docker 29 from 1.44), and engines
or proxies that refuse a request or stop mid-answer: error lines on their own (part 1), then the real CLI against
a real dockerd behind tests/harness.py's Docker29 stand-in, which answers versioned paths below /v1.44 with
Docker 29's HTTP 400 and forwards the rest (part 2)."""

from __future__ import annotations

import http.client
import json
import subprocess
import time

import pytest
import requests
import urllib3

import docker_register as dr
from harness import Docker29, require, stop_process, wait_until
from hosts import SLOW_STOP, Watch, inspect, watching, web_key_of
from tiers import server_fixture

#: Docker 29's answer to a client pinned below its minimum (FACTS: Docker 29), for the SDK's default 1.24.
TOO_OLD = ("client version 1.24 is too old. Minimum supported API version is 1.44, please upgrade your client to "
           "a newer version")
#: HAProxy's 403 page, which docker-socket-proxy sends for an API section it does not allow.
HAPROXY_403 = (b"<html><body><h1>403 Forbidden</h1>\nRequest forbidden by administrative rules.\n"
               b"</body></html>\n")
REFUSALS = {
    "docker 29": ("400 Bad Request", "application/json", json.dumps({"message": TOO_OLD}).encode() + b"\n",
                  f"refused with 400 Bad Request: {TOO_OLD}"),
    "socket proxy": ("403 Forbidden", "text/html", HAPROXY_403,
                     "refused with 403 Forbidden: Request forbidden by administrative rules."),
}


# === Part 1: no servers ======================================================================


@pytest.mark.parametrize("status, reason, content_type, body, expected", [
    (400, "Bad Request", "application/json", json.dumps({"message": TOO_OLD}).encode(),
     f"refused with 400 Bad Request: {TOO_OLD}"),
    (403, "Forbidden", "text/html", HAPROXY_403,
     "refused with 403 Forbidden: Request forbidden by administrative rules."),
    (403, "Forbidden", "text/plain", b"", "refused with 403 Forbidden"),
    (502, "Bad Gateway", "text/plain", b"upstream\n  went\naway\n", "refused with 502 Bad Gateway: upstream went away"),
    (500, "Internal Server Error", "application/json", b'{"error": "x"}',
     'refused with 500 Internal Server Error: {"error": "x"}'),  # JSON without a message: its text
    (500, "Internal Server Error", "application/json", b"not json\n",
     "refused with 500 Internal Server Error: not json"),
    (404, "", "text/html", b"<p>gone</p>", "refused with 404: gone"),
], ids=["docker-29-json", "haproxy-html", "empty", "multi-line-text", "json-without-message", "bad-json",
        "no-reason-phrase"])
def test_refusal_reason_is_the_status_and_the_engines_message_on_one_line(status, reason, content_type, body,
                                                                          expected):
    assert dr.refusal_reason(status, reason, content_type, body) == expected


def test_refusal_reason_cuts_a_long_message():
    text = dr.refusal_reason(500, "Internal Server Error", "text/plain", b"x" * 10000)
    assert text == "refused with 500 Internal Server Error: " + "x" * (dr.MAX_REFUSAL_TEXT - 1) + "…"


def test_failure_line_names_the_engine_what_the_run_did_and_the_request():
    line = dr.docker_failure_line("unix:///run/user.sock", "event stream", "GET /events", "refused with 403 Forbidden")
    assert line == "docker at unix:///run/user.sock: event stream (GET /events): refused with 403 Forbidden"


def test_an_answer_broken_off_is_described_as_such():
    incomplete = http.client.IncompleteRead(b"", 1667)
    broken = urllib3.exceptions.ProtocolError(f"Connection broken: {incomplete!r}", incomplete)
    expected = "the connection broke mid-answer (the engine stopped or closed it)"
    assert dr.describe_docker_error(broken) == expected  # reading the event stream
    assert dr.describe_docker_error(requests.exceptions.ChunkedEncodingError(broken)) == expected  # a list call


# --- DockerSource against the stand-in with no engine behind it: only its own answers --------------------------


@server_fixture
def no_engine(tmp_path, monkeypatch):
    """The Docker 29 stand-in with nothing behind its forwarding (a forwarded request gets its connection
    closed), and DOCKER_HOST pointing at it."""
    proxy = Docker29(tmp_path / "nothing.sock", tmp_path).start()
    monkeypatch.setenv("DOCKER_HOST", proxy.host)
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("refusal", REFUSALS, ids=list(REFUSALS))
def test_each_docker_call_refused_is_a_docker_error_naming_engine_request_and_message(no_engine, refusal):
    status, content_type, body, reason = REFUSALS[refusal]
    for path in ("/containers", "/events"):
        no_engine.refuse(path, status, content_type, body)
    source = dr.DockerSource(timeout=3)
    where = f"docker at {no_engine.host}"
    cid = "ab" * 32
    calls = ((source.running_containers, "cannot list containers (GET /containers/json)"),
             (lambda: source.exposed_ports(cid), f"cannot inspect container {cid[:12]} (GET /containers/{cid}/json)"),
             (source.events, "event stream (GET /events)"))
    try:
        for call, request in calls:
            with pytest.raises(dr.DockerRefused) as refused:
                call()
            assert str(refused.value) == f"{where}: {request}: {reason}"
            assert refused.value.exit_code == dr.EXIT_FAILURE
    finally:
        source.close()
    code = status.split()[0]
    assert no_engine.answered == [
        f"GET /containers/json {code}", f"GET /containers/{cid}/json {code}", f"GET /events {code}"]


def test_an_inspect_answered_404_is_a_container_gone_meanwhile(no_engine):
    no_engine.refuse("/containers/", "404 Not Found", "application/json", b'{"message":"No such container: x"}\n')
    source = dr.DockerSource(timeout=3)
    try:
        assert source.exposed_ports("cd" * 32) == []
    finally:
        source.close()


def test_an_answer_that_is_not_json_is_a_docker_error_naming_the_request(no_engine):
    no_engine.refuse("/containers/json", "200 OK", "text/html", b"<html><body>It works!</body></html>\n")
    source = dr.DockerSource(timeout=3)
    try:
        with pytest.raises(dr.DockerError) as failed:
            source.running_containers()
    finally:
        source.close()
    assert str(failed.value) == (f"docker at {no_engine.host}: cannot list containers (GET /containers/json): "
                                 "the answer is not JSON (Expecting value: line 1 column 1 (char 0))")


# Kept apart from the not-JSON case above: each names one way an engine fails and the one line it must give.
def test_an_engine_that_closes_without_answering_is_a_docker_error(no_engine):
    source = dr.DockerSource(timeout=3)
    try:
        with pytest.raises(dr.DockerError) as failed:
            source.running_containers()
    finally:
        source.close()
    assert str(failed.value) == (f"docker at {no_engine.host}: cannot list containers (GET /containers/json): "
                                 "the connection closed without an answer")


# === Part 2: real dockerd and etcd behind the Docker 29 stand-in ==============================================


def forwarded_paths(proxy: Docker29) -> list[str]:
    """The requests the engine got through the stand-in, without their query strings."""
    return [request.split("?")[0] for request in proxy.api_requests()]


def test_a_one_shot_sync_through_docker29_registers_with_one_unversioned_list(world, docker29):
    world.docker_run("-P", "local/web")
    world.docker_run("-P", "registry.example:5000/team/api:1.2")
    result = world.sync(DOCKER_HOST=docker29.host)
    expected = world.expected_keys()
    assert world.keys() == expected and len(expected) == 6  # web, api-80, api-443, each with its port key
    assert result.stdout.startswith("added 6,"), result.stdout
    assert forwarded_paths(docker29) == ["GET /containers/json"]  # one request, no GET /version
    assert docker29.answered == []  # nothing refused


def test_a_host_network_container_is_inspected_through_docker29(world, docker29):
    # `sleep`, not httpd: with host networking httpd would bind port 80 of this machine.
    hosted = world.docker_run("--network", "host", "--expose", "9999", "local/web", "/bin/sleep", "100000")
    world.sync(DOCKER_HOST=docker29.host)
    p, ip = world.prefix, world.host_ip
    assert world.keys() == {f"{p}/web-80/{hosted[:12]}": f"{ip}:80", f"{p}/web-80/port": "80",
                            f"{p}/web-9999/{hosted[:12]}": f"{ip}:9999", f"{p}/web-9999/port": "9999"}
    assert forwarded_paths(docker29) == ["GET /containers/json", f"GET /containers/{hosted}/json"]
    assert docker29.answered == []


def test_events_through_docker29_register_a_new_container_and_drain_a_stopping_one(world, docker29):
    with watching(world, docker29, every=60) as watch:
        started = time.monotonic()
        cid = world.docker_run("-P", "local/web")
        wait_until(lambda: web_key_of(world, cid) in world.keys(), 5, "the new container's key")
        assert time.monotonic() - started < 5  # the next periodic pass is 60 s away: the start event did it
        assert len(watch.passes()) <= 3

        slow = world.docker_run("-P", "local/web", *SLOW_STOP)
        key = web_key_of(world, slow)
        wait_until(lambda: key in world.keys(), 5, "the slow stopper's key")
        stopping = subprocess.Popen([require("docker"), "-H", world.engine.host, "stop", "-t", "20", slow],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            began = time.monotonic()
            wait_until(lambda: key not in world.keys(), 3, "the stopping container's key to go")
            assert inspect(world.engine, slow, "{{.State.Running}}") == "true", "drained only after it exited"
            drained = time.monotonic() - began
            assert stopping.wait(20) == 0
            assert time.monotonic() - began > 5  # it served 6 s after SIGTERM: the drain came from the kill event
            assert key not in world.keys()
        finally:
            stop_process(stopping)
    print(f"drained {drained:.2f}s after docker stop began")
    assert not any(path.startswith("GET /v") for path in forwarded_paths(docker29))
    assert docker29.answered == [], docker29.answered
    assert not [line for line in watch.stderr_lines() if "event stream" in line], watch.stderr_lines()


@pytest.mark.parametrize("refusal", REFUSALS, ids=list(REFUSALS))
def test_a_refused_list_is_one_line_naming_engine_and_request_and_exit_1(world, docker29, refusal):
    status, content_type, body, reason = REFUSALS[refusal]
    world.docker_run("-P", "local/web")
    docker29.refuse("/containers/json", status, content_type, body)
    result = world.run("sync", DOCKER_HOST=docker29.host)
    assert result.returncode == 1
    assert result.stderr == (f"docker-register: error: docker at {docker29.host}: cannot list containers "
                             f"(GET /containers/json): {reason}\n")
    assert world.keys() == {}


def test_an_engine_stopping_mid_answer_is_one_line_and_exit_1(world, docker29):
    world.docker_run("-P", "local/web")
    docker29.cut_after("/containers/json", 100)  # the head and 100 bytes of the list, then the connection ends
    result = world.run("sync", DOCKER_HOST=docker29.host)
    assert result.returncode == 1
    assert result.stderr == (f"docker-register: error: docker at {docker29.host}: cannot list containers "
                             "(GET /containers/json): the connection broke mid-answer (the engine stopped or "
                             "closed it)\n")
    assert world.keys() == {}


def test_a_refused_event_stream_is_one_note_retried_with_backoff_while_passes_go_on(world, docker29):
    docker29.refuse("/events")
    watch = Watch(world.env(DOCKER_HOST=docker29.host), every=2, ttl=30)
    try:
        watch.wait_passes(1, 30)
        wait_until(lambda: len(docker29.answered) >= 4, 8, "four attempts at the event stream (0.5, 1, 2 s apart)")
        cid = world.docker_run("-P", "local/web")
        wait_until(lambda: web_key_of(world, cid) in world.keys(), 5, "the periodic pass to register the container")

        del docker29.refusals["/events"]  # the proxy lets /events through again
        wait_until(lambda: "GET /events" in forwarded_paths(docker29), 10, "the event stream to reconnect")
        wait_until(lambda: any("stream is back" in line for line in watch.stderr_lines()), 5, "the note it is back")
    finally:
        watch.terminate()
    notes = [line for line in watch.stderr_lines() if "event stream" in line]
    assert notes == [f"docker-register: note: docker at {docker29.host}: event stream (GET /events): refused with 403 "
                     "Forbidden: Request forbidden by administrative rules.; passes go on every interval, "
                     "reconnecting"], watch.stderr_lines()
    assert watch.proc.returncode == 0


def test_an_event_stream_broken_mid_stream_is_one_note_and_events_work_again(world, docker29):
    with watching(world, docker29, every=60) as watch:
        streams = forwarded_paths(docker29).count("GET /events")
        docker29.cut()  # the engine "stops": every open connection ends without the stream's last chunk
        wait_until(lambda: forwarded_paths(docker29).count("GET /events") > streams, 5, "the stream to reconnect")
        wait_until(lambda: any("stream is back" in line for line in watch.stderr_lines()), 5, "the note it is back")
        started = time.monotonic()
        cid = world.docker_run("-P", "local/web")
        wait_until(lambda: web_key_of(world, cid) in world.keys(), 5, "the new container's key")
        assert time.monotonic() - started < 5  # by an event: the next periodic pass is 60 s away
    notes = [line for line in watch.stderr_lines() if "event stream" in line or "stream is back" in line]
    assert notes == [f"docker-register: note: docker at {docker29.host}: event stream (GET /events): the connection "
                     "broke mid-answer (the engine stopped or closed it); passes go on every interval, reconnecting",
                     "docker-register: note: docker events: stream is back"], watch.stderr_lines()


def test_the_stand_in_refuses_versioned_paths_below_1_44_as_docker_29_does(docker29):
    """The stand-in itself: the docker SDK pinned at 1.24 (as docker-register pins it) gets Docker 29's 400."""
    import docker

    client = docker.APIClient(base_url=docker29.host, version="1.24", timeout=5)
    try:
        with pytest.raises(docker.errors.APIError) as refused:
            client.version()
        assert refused.value.response.status_code == 400 and refused.value.explanation == TOO_OLD
        assert client._get(client._url("/_ping", versioned_api=False)).text == "OK"
    finally:
        client.close()
    assert docker29.answered == ["GET /v1.24/version 400"] and docker29.api_requests() == ["GET /_ping"]
