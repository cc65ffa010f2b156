"""The Dockerfile, built for real without a registry and run against the test dockerd and etcd.

The base image is made with debootstrap and `docker import` (no registry is reachable), the wheels
are downloaded on this host and served on loopback, and the build reads them through the
Dockerfile's PIP_* build arguments, as a build behind a mirror would.
"""

from __future__ import annotations

import configparser
import functools
import http.server
import os
import platform
import subprocess
import threading
import time
from pathlib import Path

from harness import require, wait_until
from tiers import server_fixture

ROOT = Path(__file__).resolve().parent.parent
BASE = "local/debian-python:bookworm"
IMAGE = "local/docker-register:test"


def install_requires() -> list[str]:
    """The runtime requirements, read from setup.cfg."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


@server_fixture(scope="module", image=True)
def base_image(dockerd, tmp_path_factory) -> str:
    """A Debian bookworm image with python3 and venv, made with debootstrap."""
    rootfs = tmp_path_factory.mktemp("bookworm")
    subprocess.run([require("debootstrap"), "--variant=minbase", "--include=python3,python3-venv", "bookworm",
                    str(rootfs)], check=True, capture_output=True, timeout=900)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run([require("docker"), "-H", dockerd.host, "import", "-", BASE], stdin=tar.stdout, check=True,
                   capture_output=True, timeout=600)
    tar.wait()
    python = os.readlink(rootfs / "usr/bin/python3")  # e.g. python3.11
    return python.removeprefix("python")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@server_fixture(scope="module", image=True)
def wheel_server(base_image, tmp_path_factory):
    """The package's dependencies as wheels for the image's Python, served on loopback."""
    wheels = tmp_path_factory.mktemp("wheels")
    pip = [str(Path(os.sys.executable)), "-m", "pip", "download", "-q", "--disable-pip-version-check",
           "-d", str(wheels), "--only-binary=:all:", "--python-version", base_image,
           "--platform", f"manylinux2014_{platform.machine()}"]
    subprocess.run([*pip, *install_requires(), "setuptools>=61", "wheel"], check=True, capture_output=True,
                   timeout=600)
    handler = functools.partial(QuietHandler, directory=str(wheels))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@server_fixture(scope="module", image=True)
def image(dockerd, base_image, wheel_server) -> str:
    result = subprocess.run(
        [require("docker"), "-H", dockerd.host, "build", "--network", "host",
         "--build-arg", f"BASE_IMAGE={BASE}", "--build-arg", "PIP_NO_INDEX=1",
         "--build-arg", f"PIP_FIND_LINKS={wheel_server}", "-t", IMAGE, str(ROOT)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return IMAGE


def test_image_runs_the_cli(world, image):
    out = world.engine.docker("run", "--rm", image, "--version").stdout
    assert out.startswith("docker-register ")


def test_image_keeps_the_host_registered_and_stops_promptly(world, image):
    env = world.env()
    runner = world.engine.docker(
        "run", "-d", "--name", "docker-register", "--network", "host",
        "-e", f"HOST_IP={world.host_ip}", "-e", f"ETCD_HOST={env['ETCD_HOST']}",
        "-e", f"DOCKER_REGISTER_PREFIX={world.prefix}",
        "-v", f"{world.engine.socket}:/var/run/docker.sock", image).stdout.strip()
    web = world.docker_run("--name", "web1", "-P", "local/web")
    port = world.host_port("web1", "80/tcp")
    wait_until(lambda: world.keys() == {f"{world.prefix}/web/{web[:12]}": f"{world.host_ip}:{port}",
                                        f"{world.prefix}/web/port": "80"},
               30, "the container to register web1")
    # The default command follows Docker's events: each step below is taken within a couple of seconds,
    # not at the next pass of the 10 s interval (two steps in a row could not both fall just before one).
    web2 = world.docker_run("--name", "web2", "-P", "local/web")
    wait_until(lambda: f"{world.prefix}/web/{web2[:12]}" in world.keys(), 2, "the start event to register web2")
    world.engine.docker("rm", "-f", "web1")
    wait_until(lambda: f"{world.prefix}/web/{web[:12]}" not in world.keys(), 2, "the kill event to remove web1")
    # Drained before it stops: web2's httpd ignores SIGTERM, so docker stop waits out its grace period
    # while the key is already gone.
    stopping = subprocess.Popen([require("docker"), "-H", world.engine.host, "stop", "-t", "5", "web2"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: world.keys() == {}, 2, "docker stop to take web2 out")
        running = world.engine.docker("inspect", "-f", "{{.State.Running}}", web2).stdout.strip()
        assert running == "true", "web2 should still be running while drained"
    finally:
        stopping.wait(30)

    started = time.monotonic()
    world.engine.docker("stop", runner)
    stopped_in = time.monotonic() - started
    state = world.engine.docker("inspect", "-f", "{{.State.ExitCode}}", runner).stdout.strip()
    logs = world.engine.docker("logs", runner).stdout
    assert state == "0" and stopped_in < 5, (stopped_in, state, logs)
    assert "added 2" in logs and "removed 2" in logs


def test_image_is_small(world, image):
    size = int(world.engine.docker("image", "inspect", "-f", "{{.Size}}", image).stdout)
    base = int(world.engine.docker("image", "inspect", "-f", "{{.Size}}", BASE).stdout)
    print(f"image {size / 1e6:.0f} MB, base {base / 1e6:.0f} MB, package layer {(size - base) / 1e6:.0f} MB")
    assert size - base < 120e6
