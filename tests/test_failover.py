"""A service outlives any one host (issue 16): through a real Traefik, purging or killing the host that wrote a
service's shared keys (its router) loses no request, on etcd, ZooKeeper and Redis.

Two engines are two hosts, A and B, each running `docker-register sync --every 1 --events --ttl 4 --layout
traefik`; `web` runs on both, `solo` on A only.  The scenario is bench/failover.py's run_scenario (the same
driver `bench/bench.py failover` prints figures from): a client sends a request for web.example through Traefik
every 50 ms while (1) A stops and purges, (2) A's watch is killed, (3) B, the last host serving web, stops and
purges.  About 25 s per store.  The ZooKeeper and Redis cases test no etcd: .ci/run's etcd 3.5 pass leaves them out.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from hosts import BINARY

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import failover  # noqa: E402

_roots = itertools.count(1)


def run_on(store: str, server, engine, second_engine, tmp_path: Path) -> failover.FailoverResult:
    """The three phases on one store's server, under a Traefik root of their own, with the installed CLI."""
    view = failover.store_view(store, server)
    try:
        return failover.run_scenario(view, engine, second_engine, tmp_path, f"traefik-f{next(_roots):04d}",
                                     [BINARY])
    finally:
        view.close()


def assert_the_service_outlives_each_host(result: failover.FailoverResult) -> None:
    """What each phase must show, with every figure in the message."""
    purge, sigkill = result.phases["purge"], result.phases["sigkill"]
    assert purge.failures == [], f"requests failed while the writer purged: {result.summary()}"
    assert result.web_b in purge.outcomes(), f"B's container kept answering: {result.summary()}"
    assert sigkill.failures == [], f"requests failed after the writer was killed: {result.summary()}"
    assert result.server_gone is not None and result.server_gone <= failover.SERVER_GONE_WITHIN, \
        f"the killed host's server left Traefik within about the TTL: {result.summary()}"
    assert result.solo_gone is not None and result.solo_gone <= failover.SOLO_GONE_WITHIN, \
        f"the router of a service only the killed host served left the store: {result.summary()}"
    assert result.last_b is None or result.last_b <= failover.LAST_QUIET_WITHIN, \
        f"the last host's container answered after its purge: {result.summary()}"
    assert result.after_b and not {result.web_a, result.web_b} & set(result.after_b), \
        f"once the last host purged, no container answers for web: {result.summary()}"


def test_purging_or_killing_the_host_that_wrote_the_router_loses_no_request_on_etcd(etcd, engine, second_engine,
                                                                                      tmp_path):
    assert_the_service_outlives_each_host(run_on("etcd", etcd, engine, second_engine, tmp_path))


def test_purging_or_killing_the_host_that_wrote_the_router_loses_no_request_on_zookeeper(
        zookeeper, engine, second_engine, tmp_path):
    assert_the_service_outlives_each_host(run_on("zookeeper", zookeeper, engine, second_engine, tmp_path))


def test_purging_or_killing_the_host_that_wrote_the_router_loses_no_request_on_redis(redis_server, engine,
                                                                                       second_engine, tmp_path):
    assert_the_service_outlives_each_host(run_on("redis", redis_server, engine, second_engine, tmp_path))
