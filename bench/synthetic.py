"""Synthetic containers and in-process runs of docker_register: generated lists shaped like GET /containers/json
as an in-memory container source, the Config of a run in this process, and one reconcile timed.

No Docker here: the hosts these stand for are simulated; the stores they write to are real.
"""

from __future__ import annotations

import dataclasses
import random
import time

from servers import IMAGE

#: Seconds an etcd call may take in the in-process runs.
TIMEOUT = 5.0


def synthetic_container(rng: random.Random, index: int, image: str = IMAGE, private_port: int = 80) -> dict:
    """One running container publishing one tcp port on the wildcard address (IPv4 and IPv6 twins)."""
    public = 32768 + index
    return {
        "Id": f"{rng.getrandbits(256):064x}",
        "Names": [f"/{image.rsplit('/', 1)[-1].split(':')[0]}-{index}"],
        "Image": image,
        "Command": "/bin/httpd -f -p 80 -h /www",
        "Created": 1700000000 + index,
        "Ports": [{"IP": "0.0.0.0", "PrivatePort": private_port, "PublicPort": public, "Type": "tcp"},
                  {"IP": "::", "PrivatePort": private_port, "PublicPort": public, "Type": "tcp"}],
        "Labels": {},
        "State": "running",
        "Status": "Up 3 minutes",
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": f"172.17.{index // 250}.{index % 250 + 2}",
                                                    "IPPrefixLen": 16}}},
    }


def synthetic_containers(count: int, rng: random.Random, images: tuple[str, ...] = (IMAGE,)) -> list[dict]:
    """count containers spread evenly over images."""
    return [synthetic_container(rng, i, images[i % len(images)]) for i in range(count)]


class ListedContainers:
    """A ContainerSource over a list held in memory: what GET /containers/json would answer, without Docker."""

    where = "synthetic container list"

    def __init__(self, containers: list[dict]):
        self.containers = containers

    def running_containers(self) -> list[dict]:
        """The list as it is now (a simulated host may have replaced some of it)."""
        return self.containers

    def exposed_ports(self, container_id: str) -> list[str]:
        """What an inspect would say a host-network container exposes ("80/tcp"), from its "ExposedPorts"."""
        return sorted(next((c.get("ExposedPorts", ()) for c in self.containers if c["Id"] == container_id), ()))


def synthetic_source(n: int, seed: int, labels: dict[str, str] | None = None) -> ListedContainers:
    """n generated containers (ids from seed), each with these labels, as an in-memory container source."""
    containers = synthetic_containers(n, random.Random(seed))
    for container in containers:
        container["Labels"] = dict(labels or {})
    return ListedContainers(containers)


def make_config(endpoints: str, host_ip: str, prefix: str, ttl: int = 30, layout: str = "discover",
                backend=None, lock_file: str | None = None):
    """A docker_register.Config for in-process runs; backend (a docker_register.Settings) names another
    store than etcd, validated as the CLI does (lock_file places ZooKeeper's session file)."""
    import docker_register as dr

    config = dr.Config(endpoints=dr.parse_endpoints(endpoints), host_ip=host_ip, prefix=prefix, ttl=ttl,
                       timeout=TIMEOUT, layout_name=layout, lock_file=lock_file)
    if backend is None or backend.backend == "etcd":
        return config
    if backend.backend == "zookeeper":
        return dataclasses.replace(config, backend="zookeeper",
                                   zookeeper=dr.zookeeper_settings(backend, prefix, lock_file, host_ip))
    return dataclasses.replace(config, backend=backend.backend.value, redis=dr.redis_settings(backend))


def timed_sync(config, source, read, difference) -> tuple[float, object]:
    """One real sync in this process: reconcile through the store the config names (opened and closed as a run
    does), timed; and difference(before, after) of the counters read() returns around it."""
    import docker_register as dr

    before = read()
    started = time.perf_counter()
    store, close = dr.open_store(config)
    try:
        dr.reconcile(config, source, store, dry_run=False)
    finally:
        close()
    seconds = time.perf_counter() - started
    return seconds, difference(before, read())


def preload_clients() -> None:
    """Import what the etcd adapter imports lazily, so in-process timings exclude imports."""
    import docker_register as dr

    dr.quiet_grpc_defaults()
    import etcd3  # noqa: F401
    import grpc  # noqa: F401
