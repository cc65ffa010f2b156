"""A real Traefik reading the keys docker-register writes (Edge), and the web containers whose traffic goes
through it: shared by the consumer tests of every store."""

from __future__ import annotations

import http.client
import subprocess
from collections import Counter

from harness import Dockerd, Traefik, publish, require, wait_until

#: Requests sent where every one must succeed (or fail) once Traefik has applied a change.
REQUESTS = 40
#: The Host header the web containers' router matches.
WEB_HOST = "web.example"
#: Labels of a web container set up for a single-host Traefik: a Host() router naming no service.
WEB_LABELS = ("-l", f"traefik.http.routers.web.rule=Host(`{WEB_HOST}`)")
#: A web container whose page is its own hostname (its short id), so a response says who served it.
WEB_SELF = ("local/web", "sh", "-c", "hostname > /www/index.html && exec httpd -f -p 80 -h /www")
#: The line Traefik logs (at DEBUG) for every configuration its etcd provider sends after a watch event.
CONFIGURATION_RECEIVED = "Configuration received"

def bridge_ip(engine: Dockerd) -> str:
    """The IPv4 address of an engine's bridge: an address of this machine."""
    out = subprocess.run([require("ip"), "-4", "-o", "addr", "show", "dev", engine.bridge],
                         capture_output=True, text=True, check=True).stdout
    return out.split(" inet ", 1)[1].split("/", 1)[0]


def direct_get(ip: str, port: int) -> tuple[int, str]:
    """GET / straight from a published port (no Traefik): (status, body)."""
    connection = http.client.HTTPConnection(ip, port, timeout=5)
    try:
        connection.request("GET", "/", headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def never_within(check, seconds: float) -> bool:
    """Whether check() stays falsy for the whole time (polled every 50 ms)."""
    try:
        wait_until(check, seconds, "", interval=0.05)
    except TimeoutError:
        return True
    return False


class Edge:
    """A Traefik reading one root key of the test's store, and docker-register writing that root."""

    def __init__(self, world, traefik: Traefik, host_ip: str):
        self.world = world
        self.traefik = traefik
        self.root = traefik.root_key
        self.host_ip = host_ip

    def env(self, engine: Dockerd | None = None, host_ip: str | None = None, lock: str | None = None) -> dict:
        """Environment of a traefik-layout run as one host: its engine, its address, its lock."""
        env = {"DOCKER_REGISTER_PREFIX": self.root, "HOST_IP": host_ip or self.host_ip}
        if engine is not None:
            env["DOCKER_HOST"] = engine.host
        if lock is not None:
            env["DOCKER_REGISTER_LOCK"] = lock
        return env

    def sync(self, engine: Dockerd | None = None, host_ip: str | None = None, lock: str | None = None
             ) -> subprocess.CompletedProcess:
        """One sync in the traefik layout, which must succeed."""
        return self.world.sync("--layout", "traefik", **self.env(engine, host_ip, lock))

    def wait_servers(self, expected: set[str], service: str = "web", protocol: str = "http") -> None:
        """Wait until Traefik runs exactly these servers for the service."""
        try:
            self.traefik.wait_for(lambda: self.traefik.servers(service, protocol) == expected, 15,
                                  f"traefik to run {protocol} service {service} with servers {sorted(expected)}")
        except TimeoutError as error:
            raise TimeoutError(f"{error}; it runs {sorted(self.traefik.servers(service, protocol))}") from None

    def answers(self, count: int = REQUESTS) -> Counter:
        """Send count requests for the web host; (status, body) of each, counted."""
        return Counter((status, body.strip()) for status, body in
                       (self.traefik.get(WEB_HOST) for _ in range(count)))

    def configurations_received(self) -> int:
        """How many configurations Traefik has logged receiving so far."""
        return self.traefik.log.read_text(errors="replace").count(CONFIGURATION_RECEIVED)

    def quiet(self, seconds: float) -> bool:
        """Whether Traefik receives no configuration for that long (waits that long unless one arrives)."""
        count = self.configurations_received()
        return never_within(lambda: self.configurations_received() != count, seconds)


def start_web(engine: Dockerd, *labels: str) -> str:
    """Start a self-naming web container with a published port; return its short id (its page)."""
    return engine.docker("run", "-d", *publish(80), *labels, *WEB_SELF).stdout.strip()[:12]


def published_url(engine: Dockerd, container: str, ip: str) -> str:
    """http://ip:port for a container's port 80 published on 0.0.0.0."""
    bindings = engine.docker("port", container, "80/tcp").stdout.split()
    port = next(b for b in bindings if b.startswith("0.0.0.0:")).rsplit(":", 1)[1]
    return f"http://{ip}:{port}"


def served_by_both(edge: Edge, first: str, second: str) -> Counter:
    """Send requests until both containers have answered (bounded); every answer must be a 200."""
    seen: Counter = Counter()

    def both():
        seen.update(edge.answers(4))
        return {(200, first), (200, second)} <= set(seen)
    try:
        wait_until(both, 20, f"both {first} and {second} to answer through traefik", interval=0)
    except TimeoutError as error:
        raise TimeoutError(f"{error}; answers so far {dict(seen)}") from None
    assert set(seen) == {(200, first), (200, second)}, seen
    return seen
