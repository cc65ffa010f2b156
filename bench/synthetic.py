"""Synthetic containers and in-process runs of docker_register: generated lists shaped like GET /containers/json
as an in-memory container source, the Config of a run in this process, and one reconcile timed.

No Docker here: the hosts these stand for are simulated; the stores they write to are real.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time

from servers import IMAGE
from fakes import FakeDocker, container, port

#: Seconds an etcd call may take in the in-process runs.
TIMEOUT = 5.0


def add_table_arguments(parser: argparse.ArgumentParser, column: str) -> None:
    """Flags of a table of synthetic registrations side by side, a column per `column` (a layout, a store)."""
    parser.add_argument("--registrations", default="500", help="registration counts (default 500)")
    parser.add_argument("--repeats", type=int, default=5,
                        help=f"first syncs per {column} and count, each under a fresh prefix (default 5); "
                             "times are medians, counts must not vary")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the synthetic container ids")


def synthetic_container(rng: random.Random, index: int, image: str = IMAGE, private_port: int = 80) -> dict:
    """tests/fakes.py's running container with a random id, a name and a bridge address of its own, publishing one
    tcp port at 32768 + index on the wildcard address (IPv4 and IPv6 twins)."""
    public = 32768 + index
    entry = container(cid=f"{rng.getrandbits(256):064x}", name=f"{image.rsplit('/', 1)[-1].split(':')[0]}-{index}",
                      image=image, ports=[port(private_port, public), port(private_port, public, "::")])
    entry["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] = f"172.17.{index // 250}.{index % 250 + 2}"
    return entry


def synthetic_containers(count: int, rng: random.Random, images: tuple[str, ...] = (IMAGE,)) -> list[dict]:
    """count containers spread evenly over images."""
    return [synthetic_container(rng, i, images[i % len(images)]) for i in range(count)]


class ListedContainers(FakeDocker):
    """tests/fakes.py's FakeDocker over a list held in memory, answering with the list itself: what GET
    /containers/json would answer, without Docker."""

    where = "synthetic container list"

    def running_containers(self) -> list[dict]:
        """The list as it is now (a simulated host may have replaced some of it)."""
        # Not FakeDocker's: its deep copy of every container on every call would add to the passes timed.
        return self.containers


def synthetic_source(n: int, seed: int, labels: dict[str, str] | None = None) -> ListedContainers:
    """n generated containers (ids from seed), each with these labels, as an in-memory container source."""
    containers = synthetic_containers(n, random.Random(seed))
    for entry in containers:
        entry["Labels"] = dict(labels or {})
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
