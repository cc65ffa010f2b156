"""Register the published ports of this host's running containers in etcd v3.

One run is one pass of a pipeline: list the running containers (one Docker API
call), derive the services they publish, turn those into the keys this host
should hold under the prefix, compare them with what etcd holds, and apply
only the difference in a few transactions.  Every key of the host lives on one
lease whose id is derived from the host IP and the prefix, so a run needs no
local state and a dead host's keys expire by themselves.

Exit codes: 0 success, 1 Docker or etcd unreachable or failing, 2 usage error, 3 `list` flagged something.

Contents, top to bottom; a section uses what is above it, and what is below only through the seams named:
  Constants, Errors, Data types
  Pure core: flags and environment values, lease ids, containers -> registrations, events, layouts
      (Layout, LAYOUTS), a run's settings (Config, after the layouts it names), plan
  Adapters: Docker and etcd; the seams Store and ContainerSource, the protocols orchestration is handed
  Adapters: ZooKeeper (session, fleet, store) and Redis (connection, fleet, store), the optional stores
  Orchestration: gather -> plan -> apply, on the adapters and the reporting callbacks it is handed
  Output: the lines, tables and JSON a run prints
  CLI: settings from flags, the adapters and callbacks handed to orchestration, main()
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import functools
import hashlib
import inspect
import ipaddress
import itertools
import json
import os
import re
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from typing import (Annotated, Any, Callable, Iterable, Iterator, Mapping, Optional, Protocol, Sequence,
                    get_type_hints)

import typer

__version__ = "0.1.0"

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

#: Default etcd endpoint (the seed's ETCD_HOST default).
DEFAULT_ETCD = "127.0.0.1:2379"
#: Root of all service keys, as docker-discover reads them.
DEFAULT_PREFIX = "/backends"
#: Lease TTL in seconds; three times the timer's 10 s interval.
DEFAULT_TTL = 30
#: Run intervals in a lease TTL, as the shipped timer and cron file set them: the interval a timer's run assumes.
TTL_INTERVALS = 3
#: etcd refuses shorter leases (it raises them to 2 s).
MIN_TTL = 2
#: A lease longer than a day would keep a dead host's keys for a day.
MAX_TTL = 86400
#: Bound in seconds on each Docker and etcd call.
DEFAULT_TIMEOUT = 5.0
#: etcd's default limit of operations in one transaction branch.
MAX_TXN_OPS = 128
#: What etcd members say while the cluster elects a leader: worth the same call again.
BETWEEN_LEADERS = ("context deadline exceeded", "request timed out", "no leader", "leader changed")
#: One sync at a time per host; systemd's RuntimeDirectory=docker-register makes the folder.
DEFAULT_LOCK_FILE = "/run/docker-register/sync.lock"
#: How often a run re-reads and re-plans when another writer got in between.
MAX_ATTEMPTS = 3
#: Longest service name accepted; longer labels are skipped with a note.
MAX_NAME_LENGTH = 200
#: Last segment of the key that tells consumers a service's private port.
PORT_KEY = "port"
#: Label that keeps a container out of the registry when non-empty.
IGNORE_LABEL = "SERVICE_IGNORE"
#: Label naming every published port of a container.
NAME_LABEL = "SERVICE_NAME"
#: Label naming one private port, e.g. SERVICE_80_NAME.
PORT_NAME_LABEL = "SERVICE_{port}_NAME"
#: Labels saying whether a tcp port is http (the default) or plain tcp, for the Traefik layout.
PROTOCOL_LABEL = "SERVICE_PROTOCOL"
PORT_PROTOCOL_LABEL = "SERVICE_{port}_PROTOCOL"
#: Traefik's dynamic configuration sections a label or key may name.
TRAEFIK_PROTOCOLS = ("http", "tcp", "udp")
TRAEFIK_KINDS = ("routers", "services", "middlewares")
#: Fields a traefik.* label may set, per protocol and kind ("#" an index, "*" any name). Traefik's KV
#: provider stops applying every change while one key under its root names an unknown field, so a label
#: outside this list is skipped with a note instead of being written.
TRAEFIK_FIELDS = {
    ("http", "routers"): (
        "rule", "rulesyntax", "service", "priority", "entrypoints", "entrypoints.#", "middlewares", "middlewares.#",
        "tls", "tls.certresolver", "tls.options", "tls.domains.#.main", "tls.domains.#.sans", "tls.domains.#.sans.#",
        "observability.accesslogs", "observability.tracing", "observability.metrics"),
    ("tcp", "routers"): (
        "rule", "rulesyntax", "service", "priority", "entrypoints", "entrypoints.#", "middlewares", "middlewares.#",
        "tls", "tls.passthrough", "tls.certresolver", "tls.options", "tls.domains.#.main", "tls.domains.#.sans",
        "tls.domains.#.sans.#"),
    ("udp", "routers"): ("service", "entrypoints", "entrypoints.#"),
    ("http", "services"): (
        "loadbalancer.passhostheader", "loadbalancer.serverstransport", "loadbalancer.strategy",
        "loadbalancer.responseforwarding.flushinterval", "loadbalancer.sticky.cookie",
        "loadbalancer.sticky.cookie.*", "loadbalancer.healthcheck.*", "loadbalancer.healthcheck.headers.*"),
    ("tcp", "services"): ("loadbalancer.serverstransport", "loadbalancer.terminationdelay",
                          "loadbalancer.proxyprotocol.version"),
    ("udp", "services"): (),
    ("http", "middlewares"): (
        "addprefix.prefix", "stripprefix.prefixes", "stripprefix.prefixes.#", "stripprefix.forceslash",
        "stripprefixregex.regex", "stripprefixregex.regex.#", "replacepath.path", "replacepathregex.regex",
        "replacepathregex.replacement", "redirectscheme.*", "redirectregex.*", "basicauth.*", "basicauth.users.#",
        "digestauth.*", "digestauth.users.#", "headers.*", "headers.*.#", "headers.customrequestheaders.*",
        "headers.customresponseheaders.*", "headers.sslproxyheaders.*", "ipallowlist.sourcerange",
        "ipallowlist.sourcerange.#", "ipallowlist.ipstrategy.*", "ipallowlist.rejectstatuscode", "ratelimit.*",
        "ratelimit.sourcecriterion.*", "ratelimit.sourcecriterion.ipstrategy.*", "compress", "compress.*",
        "retry.*", "chain.middlewares", "chain.middlewares.#", "buffering.*", "circuitbreaker.*",
        "forwardauth.*", "forwardauth.tls.*", "inflightreq.amount", "inflightreq.sourcecriterion.*",
        "errors.*", "passtlsclientcert.pem", "passtlsclientcert.info.*", "passtlsclientcert.info.*.*",
        "contenttype.autodetect", "grpcweb.alloworigins", "grpcweb.alloworigins.#"),
    ("tcp", "middlewares"): ("ipallowlist.sourcerange", "ipallowlist.sourcerange.#", "inflightconn.amount"),
    ("udp", "middlewares"): (),
}
#: Longest traefik.* label value copied into a key; longer ones are skipped with a note.
MAX_LABEL_VALUE = 4096
#: Container events that make `sync --every --events` run a pass at once (health changes too).
PASS_EVENTS = frozenset({"start", "die", "kill", "stop", "pause", "unpause", "destroy"})
#: Signals whose kill event means "being stopped": docker stop's SIGTERM, the usual other stop signals
#: (SIGINT, SIGQUIT), and SIGKILL (docker rm -f, or the end of the grace period). Reload signals such
#: as SIGHUP or SIGUSR1 do not count.
STOP_SIGNALS = frozenset({"2", "3", "9", "15", "INT", "QUIT", "KILL", "TERM",
                          "SIGINT", "SIGQUIT", "SIGKILL", "SIGTERM"})
#: A pass after events waits until none came for this long, to take a whole burst in one pass...
COALESCE_SECONDS = 0.25
#: ...but no longer than this after the first event of the burst.
COALESCE_MAX_SECONDS = 1.0
#: Longest wait before trying the Docker event stream again after it broke.
MAX_EVENTS_BACKOFF = 30.0
#: Most of an HTTP error answer's body read for its message, and most of that message quoted in an error line.
MAX_REFUSAL_BODY = 4096
MAX_REFUSAL_TEXT = 300
#: How often `--events` lists all containers on an engine whose stops begin without an event (Podman: no
#: `kill` event, but its list shows the state "stopping" from the start of a stop until the exit).
STOP_POLL_SECONDS = 1.0
#: Default DNS domain of the SkyDNS layout.
DEFAULT_DOMAIN = "docker.local"
#: One DNS label: what a SkyDNS name segment must be.
DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
#: Labels choosing the network a container registers on with --internal (per port, then for all).
NETWORK_LABEL = "SERVICE_NETWORK"
PORT_NETWORK_LABEL = "SERVICE_{port}_NETWORK"
#: Protocols Docker publishes; tcp names carry no suffix, others get "-<proto>".
PROTOCOLS = ("tcp", "udp", "sctp")
#: Host bindings that mean "every address of the host".
WILDCARD_IPS = frozenset({"", "0.0.0.0", "::"})
#: Interfaces that carry container traffic, never the host's own address.
BRIDGE_INTERFACE = re.compile(r"^(docker\d*|docker_gwbridge|br-.*|veth.*|cni\d*|virbr\d*)$")
#: Anything outside this set in a service name becomes "-".
NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: gRPC refuses replies over 4 MiB by default; a large registry can exceed it.
GRPC_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
#: Stores a run can write to, the first the default; the others need their client, a pip extra of the same name.
BACKENDS = ("etcd", "zookeeper", "redis")
#: The Python module each optional backend's extra brings.
BACKEND_MODULES = {"zookeeper": "kazoo", "redis": "redis"}
#: Default ZooKeeper ensemble and Redis server.
DEFAULT_ZOOKEEPER = "127.0.0.1:2181"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
#: StoredKey.lease of a shared key that no live host claims (ZooKeeper, Redis: after its writer ended).
UNCLAIMED = -2

#: Base class of the CLI parser's usage errors (typer may vendor click, so take it from typer).
CLI_ERROR = next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
#: `list` found something a person should look at (orphans, unused shared keys, collisions, notes).
EXIT_FLAGGED = 3

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class RegisterError(Exception):
    """A failure that ends a run with a one-line message."""

    exit_code = EXIT_FAILURE


class UsageError(RegisterError):
    """A bad flag or environment value."""

    exit_code = EXIT_USAGE


class DockerError(RegisterError):
    """Docker could not be reached or refused the request."""


class DockerRefused(DockerError):
    """Docker, or a proxy in front of it, answered a request with an HTTP error (status kept)."""

    def __init__(self, line: str, status: int):
        super().__init__(line)
        self.status = status


class StoreError(RegisterError):
    """The key-value store could not be reached, refused the request, or kept changing under the run."""


class EtcdError(StoreError):
    """etcd could not be reached or refused the request."""


class ZooKeeperError(StoreError):
    """ZooKeeper could not be reached or refused the request."""


class RedisError(StoreError):
    """Redis could not be reached or refused the request."""


class Conflict(StoreError):
    """Another writer changed a key between our read and our write: the run reads and plans again (a store
    failure, exit 1, only if it ever escapes that)."""


# ---------------------------------------------------------------------------
# Data types
# ---------------------------------------------------------------------------


def format_address(ip: str, port: int) -> str:
    """ip:port, IPv6 in brackets: how a registration's address is written in values."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True)
class Registration:
    """One reachable port of one container: where other hosts reach it, and under which service."""

    service: str
    container_id: str
    container_name: str
    ip: str
    port: int
    private_port: int
    protocol: str = "tcp"
    #: The container's labels, for layouts that read more of them (Traefik's routers).
    labels: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def address(self) -> str:
        """ip:port, IPv6 in brackets."""
        return format_address(self.ip, self.port)


@dataclass(frozen=True)
class Skip:
    """A container or port left out of the registry, and why."""

    container: str
    reason: str
    quiet: bool = False


@dataclass(frozen=True)
class Desired:
    """Keys this host should hold: its own keys, and keys it shares with other hosts serving the same service."""

    own: Mapping[str, str]
    shared: Mapping[str, str]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoredKey:
    """A key under the prefix as etcd holds it."""

    value: str
    lease: int
    mod_revision: int


class LeaseState(enum.Enum):
    """What the store told us about this host's lease."""

    ALIVE = "alive"
    MISSING = "missing"
    WRONG_TTL = "wrong-ttl"


class LeaseAction(enum.Enum):
    """What a run does with the lease before writing: decided by the planner, carried out by the store."""

    KEEP = "keep"
    GRANT = "grant"
    REPLACE = "replace"  # revoke the lease of the wrong TTL, grant it again with the right one
    REVOKE = "revoke"  # wrong TTL and nothing to write: only revoke

    @property
    def revokes(self) -> bool:
        """Whether the store revokes the lease first."""
        return self in (LeaseAction.REPLACE, LeaseAction.REVOKE)

    @property
    def grants(self) -> bool:
        """Whether the store grants the lease before writing."""
        return self in (LeaseAction.GRANT, LeaseAction.REPLACE)


class ChangeKind(str, enum.Enum):
    """The kind of one write."""

    ADD = "add"
    UPDATE = "update"
    REMOVE = "remove"
    #: Stop holding a shared key another host still uses: the key stays, kept alive by the hosts that want it.
    RELEASE = "release"


@dataclass(frozen=True)
class Change:
    """One write: add, update or remove a key."""

    kind: ChangeKind
    key: str
    value: Optional[str]
    old_value: Optional[str]
    expected_mod: int
    #: The lease to put the key on when it is not the host's: a shared key's own lease (etcd); None: the host's.
    lease: Optional[int] = None
    #: Whether hosts share the key: it then lives on as long as any host wants it, not with its writer.
    shared: bool = False


@dataclass(frozen=True)
class Plan:
    """Everything a run will write, computed without touching anything."""

    lease_id: int
    lease_action: LeaseAction
    changes: tuple[Change, ...]
    unchanged: int
    notes: tuple[str, ...] = ()
    #: Shared keys this host wants that hold the value it wants, and the leases they are on: kept alive by it.
    renewals: tuple[tuple[str, int], ...] = ()
    #: Shared keys' own leases to grant before writing (etcd: those of the keys this plan puts on new leases).
    grants: tuple[int, ...] = ()
    #: Whether the host's lease, alive and kept, is renewed with the shared keys' (etcd: one keepalive stream).
    renews_lease: bool = False

    def count(self, kind: ChangeKind) -> int:
        """Number of changes of one kind."""
        return sum(1 for change in self.changes if change.kind is kind)


@dataclass(frozen=True)
class LeaseInfo:
    """A live lease as the store reports it: the TTL it was granted and the keys attached to it."""

    granted_ttl: int
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Reads:
    """What a run reads before planning: exact keys and whole folders, or the whole prefix."""

    keys: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    whole_prefix: bool = False


@dataclass(frozen=True)
class Held:
    """Every key under the prefix as the store holds it, read for `list`."""

    #: Each key and what it lives on: a lease (etcd), a session (ZooKeeper) or a host's index (Redis, named by the
    #: host's lease id); 0: nothing does; UNCLAIMED: a shared key whose writer is gone.
    keys: Mapping[str, StoredKey]
    #: The live leases, sessions or hosts, each with the seconds it has left if nobody renews it (None: not told).
    live: Mapping[int, Optional[float]]
    #: What keys live on in this store, as people call it: lease, session or index.
    holder: str = "lease"
    #: Whether a shared key's lease is the host that claims it (ZooKeeper, Redis), not a lease of its own (etcd).
    claims: bool = False


class FlagKind(str, enum.Enum):
    """What `list` asks a person to look at."""

    ORPHAN = "orphan"  # a key no live host holds
    UNUSED = "unused"  # a shared key that no live host's servers use
    COLLISION = "collision"  # one address, or one container id, under keys of several hosts
    NOTE = "note"  # what sync notes for this host (--this-host): a shared key held with another value, ...


@dataclass(frozen=True)
class Flag:
    """One thing `list` flags, about one key (none for a note of this host's)."""

    kind: FlagKind
    key: str
    text: str


@dataclass(frozen=True)
class Listed:
    """One key as `list` shows it."""

    key: str
    value: str
    #: The service it serves or configures; "" for a shared key no router names; None for a key of no layout shape.
    service: Optional[str]
    #: A server's container id, or where a shared key sits in its service.
    name: str
    #: The lease, session or index it lives on (0: none).
    lease: int
    #: Servers: the host holding it; shared keys: the host that wrote it (0: gone or not known).
    host: int
    #: Seconds until it goes if nobody renews it; None where the store does not tell.
    expires: Optional[float]
    shared: bool = False
    #: Shared keys: the live hosts whose servers use it.
    users: tuple[int, ...] = ()


@dataclass(frozen=True)
class Listing:
    """What `list` shows: the keys by service, servers before shared keys, and the flags."""

    entries: tuple[Listed, ...]
    flags: tuple[Flag, ...]
    #: The IP of each host whose lease id it derives (etcd, Redis), as its servers' addresses tell.
    addresses: Mapping[int, str]
    holder: str = "lease"


@dataclass(frozen=True)
class EtcdEndpoint:
    """One etcd client URL."""

    host: str
    port: int
    secure: bool = False

    def __str__(self) -> str:
        scheme = "https" if self.secure else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class TlsFiles:
    """PEM contents for etcd TLS: CA (None: system roots), client certificate and key."""

    ca: Optional[bytes] = field(default=None, repr=False)
    cert: Optional[bytes] = field(default=None, repr=False)
    key: Optional[bytes] = field(default=None, repr=False)


@dataclass(frozen=True)
class Credentials:
    """etcd user and password; the password is never shown."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ZooKeeperSettings:
    """How to reach ZooKeeper (TLS files and digest credentials optional), and where the host's session is kept."""

    hosts: str
    state_file: str
    ca: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    auth: Optional[Credentials] = None


@dataclass(frozen=True)
class RedisSettings:
    """How to reach Redis: its URL without password, the password, TLS files (rediss://) optional."""

    url: str
    password: Optional[str] = field(default=None, repr=False)
    ca: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    sentinels: tuple[tuple[str, int], ...] = ()  #: Sentinels to ask for the primary; none: the URL's host is it
    master: Optional[str] = None  #: the primary's name at the Sentinels


# ---------------------------------------------------------------------------
# Pure core: Docker dicts -> registrations -> desired keys -> plan
# ---------------------------------------------------------------------------
# No clock, no sockets, no environment: everything comes in as arguments. Flags and environment values are parsed
# here too (a bad one is a UsageError); the stores' own checks sit in their adapter sections.


# --- Flags and environment values: parsed and checked -------------------------------------------


def parse_endpoints(text: str, tls: bool = False) -> tuple[EtcdEndpoint, ...]:
    """Parse a comma-separated list of host:port endpoints; without a scheme, TLS flags mean https."""
    endpoints = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise UsageError(f"--etcd: empty endpoint in {text!r}")
        endpoints.append(parse_endpoint(item, "https" if tls else "http"))
    return tuple(endpoints)


def parse_endpoint(item: str, default_scheme: str = "http") -> EtcdEndpoint:
    """Parse one endpoint: [http://|https://]host:port."""
    scheme, sep, rest = item.partition("://")
    if not sep:
        scheme, rest = default_scheme, item
    if scheme not in ("http", "https"):
        raise UsageError(f"--etcd: unknown scheme {scheme!r} in {item!r} (use http:// or https://)")
    rest = rest.rstrip("/")
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([A-Za-z0-9.-]+):(\d+)", rest)
    if not match:
        raise UsageError(f"--etcd: {item!r} is not host:port")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise UsageError(f"--etcd: port {port} in {item!r} is out of range")
    return EtcdEndpoint(host, port, secure=scheme == "https")


def parse_credentials(user: Optional[str], password: Optional[str], flag: str = "", env: str = "ETCD"
                      ) -> Optional[Credentials]:
    """Combine --user (name or name:password) and --password into credentials (--<flag>user, <env>_USER...)."""
    if not user:
        if password:
            raise UsageError(f"--{flag}password / {env}_PASSWORD needs --{flag}user / {env}_USER")
        return None
    name, sep, inline = user.partition(":")
    if not name:
        raise UsageError(f"--{flag}user / {env}_USER: the user name is empty")
    secret = password or (inline if sep else None)
    if not secret:
        raise UsageError(f"--{flag}user {name}: give a password with --{flag}password, {env}_PASSWORD "
                         f"or {name}:PASSWORD")
    return Credentials(name, secret)


def parse_prefix(prefix: str, absolute: bool = True, example: str = DEFAULT_PREFIX) -> str:
    """Check a key prefix: absolute (or, for Traefik, not), no trailing slash, no empty or dot segments."""
    if absolute and (not prefix.startswith("/") or prefix == "/"):
        raise UsageError(f"--prefix must start with / and name a directory, like {example} (got {prefix!r})")
    if not absolute and prefix.startswith("/"):
        raise UsageError(f"--prefix must not start with / for this layout: Traefik does not see such keys, "
                         f"use a root like {example} (got {prefix!r})")
    if prefix.endswith("/"):
        raise UsageError(f"--prefix must not end with / (got {prefix!r})")
    segments = prefix.removeprefix("/").split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise UsageError(f"--prefix must not contain empty, . or .. segments (got {prefix!r})")
    if NAME_UNSAFE.search(prefix.replace("/", "")):
        raise UsageError(f"--prefix may hold only letters, digits, '.', '_', '-' and '/' (got {prefix!r})")
    return prefix


def parse_domain(domain: str) -> str:
    """Check a DNS domain for the SkyDNS layout: dot-separated DNS labels."""
    labels = domain.strip().lower().rstrip(".").split(".")
    if not all(DNS_LABEL.fullmatch(label) for label in labels) or len(domain) > 200:
        raise UsageError(f"--domain / DOCKER_REGISTER_DOMAIN: {domain!r} is not a DNS domain like {DEFAULT_DOMAIN}")
    return ".".join(labels)


def parse_host_ip(text: str) -> str:
    """Check an address other hosts can reach: not loopback, unspecified or multicast."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise UsageError(f"--host-ip / HOST_IP: {text!r} is not an IP address") from None
    if address.is_loopback or address.is_unspecified or address.is_multicast:
        raise UsageError(f"--host-ip / HOST_IP: {address} cannot be reached from other hosts")
    return str(address)


def default_route_interface(route_table: str) -> Optional[tuple[str, str]]:
    """Return (interface, gateway IP) of the best IPv4 default route in /proc/net/route text."""
    best = None
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        iface, destination, gateway, flags, metric, mask = (fields[i] for i in (0, 1, 2, 3, 6, 7))
        if destination != "00000000" or mask != "00000000" or not int(flags, 16) & 1:
            continue
        gateway_ip = socket.inet_ntoa(int(gateway, 16).to_bytes(4, "little"))
        if best is None or int(metric) < best[0]:
            best = (int(metric), iface, gateway_ip)
    return (best[1], best[2]) if best else None


# --- Lease ids: derived from the host, so that a run needs no local state -------------------------


def lease_id_for(host_ip: str, prefix: str) -> int:
    """Derive this host's lease id: stable across runs, distinct across hosts and prefixes."""
    digest = hashlib.sha256(f"docker-register\0{host_ip}\0{prefix}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1 or 1


def shared_lease_id(host_ip: str, key: str) -> int:
    """Derive the lease of a shared key this host writes (etcd): any host that wants the key keeps it alive,
    and the id tells the writer, who alone changes the value."""
    digest = hashlib.sha256(f"docker-register-shared\0{host_ip}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1 or 1


# --- Containers: Engine API dicts -> registrations, and what is skipped -----------------------------


def image_basename(image: str) -> Optional[str]:
    """Return the repository basename of an image reference, or None for a bare image id."""
    if image.startswith("sha256:") or re.fullmatch(r"[0-9a-f]{64}", image):
        return None
    reference = image.split("@", 1)[0]
    name = reference.rsplit("/", 1)[-1].split(":", 1)[0]
    return name or None


def sanitize_name(name: str) -> Optional[str]:
    """Replace characters outside [A-Za-z0-9._-] with '-'; None when nothing usable is left."""
    cleaned = NAME_UNSAFE.sub("-", name)
    if not re.search(r"[A-Za-z0-9]", cleaned) or len(cleaned) > MAX_NAME_LENGTH:
        return None
    return cleaned


def health_of(container: Mapping) -> str:
    """Return healthy, unhealthy, starting or none from a container list entry."""
    health = (container.get("Health") or {}).get("Status")
    if health:
        return health
    status = container.get("Status") or ""
    if "(unhealthy)" in status:
        return "unhealthy"
    if "(health: starting)" in status:
        return "starting"
    if "(healthy)" in status:
        return "healthy"
    return "none"


def container_label(container: Mapping) -> str:
    """A short human name for a container: its name and id."""
    names = container.get("Names") or []
    name = names[0].lstrip("/") if names else ""
    short_id = str(container.get("Id", ""))[:12]
    return f"{name} ({short_id})" if name else short_id


def reachable_address(bindings: Sequence[Mapping], host_ip: str) -> Optional[tuple[str, int]]:
    """Pick the address other hosts reach a port at; None when it is bound to loopback only."""
    host_family = ipaddress.ip_address(host_ip).version
    candidates = []
    for binding in bindings:
        ip = binding.get("IP") or ""
        port = int(binding["PublicPort"])
        if ip in WILDCARD_IPS:
            # Docker may publish the 0.0.0.0 and :: twins of one port on different host ports;
            # only the twin of the host IP's family is reachable at host_ip.
            family = ipaddress.ip_address(ip).version if ip else host_family
            candidates.append((0 if family == host_family else 2, port, host_ip))
            continue
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            continue
        if not address.is_loopback:
            candidates.append((1, port, str(address)))
    if not candidates:
        return None
    _, port, ip = min(candidates)
    return ip, port


@dataclass(frozen=True)
class Addressing:
    """Where registrations' addresses come from: published ports (the default) or container networks."""

    host_ip: str
    #: Register <container ip>:<private port> on a container network instead of published ports.
    internal: bool = False
    #: The network to use when a container is on several and no label chooses (--network).
    network: Optional[str] = None
    #: Exposed ports of host-network containers by container id ("80/tcp" strings), read per run.
    exposed: Mapping[str, Sequence[str]] = field(default_factory=dict)


def on_host_network(container: Mapping) -> bool:
    """Whether a container shares the host's network stack (its list entry then shows no ports)."""
    return (container.get("HostConfig") or {}).get("NetworkMode") == "host"


def container_ports(container: Mapping, addressing: Addressing) -> dict[tuple[int, str], list[Mapping]]:
    """The ports to register, by (private port, protocol): published bindings, or every exposed port
    when addresses come from a container network or the host network."""
    if on_host_network(container):
        entries = [{"PrivatePort": int(spec.partition("/")[0]), "Type": spec.partition("/")[2] or "tcp"}
                   for spec in addressing.exposed.get(str(container.get("Id", "")), ())
                   if spec.partition("/")[0].isdigit()]
    else:
        entries = [binding for binding in container.get("Ports") or []
                   if addressing.internal or binding.get("PublicPort")]
    groups: dict[tuple[int, str], list[Mapping]] = {}
    for binding in entries:
        key = (int(binding.get("PrivatePort") or 0), str(binding.get("Type") or "tcp").lower())
        groups.setdefault(key, []).append(binding)
    return dict(sorted(groups.items()))


def network_addresses(container: Mapping, family: int) -> dict[str, str]:
    """Each network of a container with an address, mapped to the address of the wanted family (else the other)."""
    found = {}
    for name, network in sorted(((container.get("NetworkSettings") or {}).get("Networks") or {}).items()):
        v4, v6 = (network or {}).get("IPAddress") or "", (network or {}).get("GlobalIPv6Address") or ""
        address = (v6 or v4) if family == 6 else (v4 or v6)
        if address:
            found[str(name)] = address
    return found


def chosen_network(labels: Mapping[str, str], port: int, default: Optional[str],
                   networks: Mapping[str, str]) -> tuple[Optional[str], str]:
    """The network a port registers on (label per port, label, --network, the only one), or None and why."""
    wanted = labels.get(PORT_NETWORK_LABEL.format(port=port)) or labels.get(NETWORK_LABEL) or default
    listed = ", ".join(networks) or "none with an address"
    if wanted:
        if wanted in networks:
            return wanted, ""
        return None, f"not on network {wanted[:80]!r} (its networks: {listed})"
    if len(networks) == 1:
        return next(iter(networks)), ""
    if not networks:
        return None, "no network address"
    return None, f"on several networks ({listed}); choose one with {NETWORK_LABEL} or --network"


def port_address(container: Mapping, port: int, bindings: Sequence[Mapping],
                 addressing: Addressing) -> tuple[Optional[tuple[str, int]], str]:
    """Where other hosts reach one port, or None and why: the one place an address is decided."""
    if on_host_network(container):
        return (addressing.host_ip, port), ""
    if not addressing.internal:
        address = reachable_address(bindings, addressing.host_ip)
        return address, "" if address else "bound to loopback only, other hosts cannot reach it"
    family = ipaddress.ip_address(addressing.host_ip).version
    networks = network_addresses(container, family)
    name, why = chosen_network(container.get("Labels") or {}, port, addressing.network, networks)
    return ((networks[name], port), "") if name else (None, why)


def service_name(labels: Mapping[str, str], image_name: Optional[str], port: int, proto: str,
                 several_ports: bool) -> Optional[str]:
    """Name the service of one published port, following the SERVICE_* label rules."""
    explicit = labels.get(PORT_NAME_LABEL.format(port=port))
    if explicit:
        name = explicit
    else:
        name = labels.get(NAME_LABEL) or image_name
        if not name:
            return None
        if several_ports:
            name = f"{name}-{port}"
    if proto != "tcp" and not name.endswith(f"-{proto}"):
        name = f"{name}-{proto}"
    return sanitize_name(name)


def container_registrations(container: Mapping, addressing: Addressing,
                            draining: frozenset[str] = frozenset()) -> tuple[list[Registration], list[Skip]]:
    """Turn one container list entry into registrations and skip notes."""
    label = container_label(container)
    labels = container.get("Labels") or {}
    if labels.get(IGNORE_LABEL):
        return [], [Skip(label, f"{IGNORE_LABEL} is set", quiet=True)]
    if container.get("Id") in draining:
        return [], [Skip(label, "being stopped (draining)", quiet=True)]
    if container.get("State", "running") != "running":
        return [], [Skip(label, f"state is {container.get('State')}", quiet=True)]
    health = health_of(container)
    if health not in ("healthy", "none"):
        return [], [Skip(label, f"health is {health}", quiet=True)]
    container_id = str(container.get("Id", ""))[:12].lower()
    if not re.fullmatch(r"[0-9a-f]{12}", container_id):
        return [], [Skip(label, "container id is not hexadecimal")]
    if addressing.internal and not on_host_network(container) and not network_addresses(container, 4):
        # A container on no network (--network none) lists no ports either: noted once, not per port.
        return [], [Skip(label, "no network address (--internal registers container addresses)")]
    groups = container_ports(container, addressing)
    image_name = image_basename(str(container.get("Image") or ""))
    registrations, skips = [], []
    for (port, proto), bindings in groups.items():
        where = f"port {port}/{proto}"
        if proto not in PROTOCOLS:
            skips.append(Skip(label, f"{where}: unknown protocol"))
            continue
        name = service_name(labels, image_name, port, proto, len(groups) > 1)
        if name is None:
            skips.append(Skip(label, f"{where}: no usable service name (set {NAME_LABEL})"))
            continue
        address, why = port_address(container, port, bindings, addressing)
        if address is None:
            skips.append(Skip(label, f"{where}: {why}"))
            continue
        registrations.append(Registration(name, container_id, label, *address, port, proto, labels))
    return registrations, skips


def registrations_from(containers: Iterable[Mapping], host_ip: str, internal: bool = False,
                       network: Optional[str] = None, exposed: Optional[Mapping[str, Sequence[str]]] = None,
                       draining: frozenset[str] = frozenset()) -> tuple[list[Registration], list[Skip]]:
    """Turn the Docker container list into registrations and skip notes; draining containers are left out."""
    addressing = Addressing(host_ip, internal, network, exposed or {})
    registrations, skips = [], []
    for container in sorted(containers, key=lambda c: str(c.get("Id", ""))):
        found, skipped = container_registrations(container, addressing, draining)
        registrations.extend(found)
        skips.extend(skipped)
    return registrations, skips


# --- Events: what Docker's events (or Podman's list of stopping containers) mean for the pass loop ----


class EventEffect(enum.Enum):
    """What one Docker event means for the pass loop."""

    NONE = "none"
    PASS = "pass"  # something changed: run a pass now
    DRAIN = "drain"  # the container is being stopped: leave it out from now on, and run a pass now
    UNDRAIN = "undrain"  # the container started (again): it may register, and run a pass now


def event_effect(event: Mapping) -> tuple[EventEffect, str]:
    """Read one /events message: its effect and the full container id it is about."""
    actor = event.get("Actor") or {}
    container_id = str(actor.get("ID") or event.get("id") or "")
    action = str(event.get("Action") or event.get("status") or "")
    if event.get("Type", "container") != "container" or not container_id:
        return EventEffect.NONE, container_id
    if action == "kill":
        signal = str((actor.get("Attributes") or {}).get("signal", "")).upper()
        return (EventEffect.DRAIN if signal in STOP_SIGNALS else EventEffect.PASS), container_id
    if action == "start":
        return EventEffect.UNDRAIN, container_id
    if action in PASS_EVENTS or action.startswith("health_status"):
        return EventEffect.PASS, container_id
    return EventEffect.NONE, container_id


def announces_stops(engine: str) -> bool:
    """Whether an engine (by what it calls itself) sends an event as a stop begins: Docker's `kill` does;
    Podman's (Libpod's) stop sends nothing until the container is gone."""
    return not any(name in engine.lower() for name in ("libpod", "podman"))


def stopping_of(containers: Iterable[Mapping]) -> frozenset[str]:
    """The ids of the containers a list of all containers shows being stopped (Podman's state "stopping")."""
    return frozenset(str(c.get("Id", "")) for c in containers if c.get("State") == "stopping" and c.get("Id"))


def stop_effects(before: frozenset[str], stopping: frozenset[str]) -> list[tuple[EventEffect, str]]:
    """Two lists in a row of the containers being stopped, on an engine that announces no stop: each one new
    to the list drains (once: the pass after it forgets the drain, as the container no longer runs)."""
    return [(EventEffect.DRAIN, container_id) for container_id in sorted(stopping - before)]


# --- Layouts: registrations -> the keys a consumer reads ------------------------------------


@dataclass(frozen=True)
class Layout:
    """How one consumer wants the keys: a pure function from registrations to desired keys, and the key rules
    the planner needs (which keys are shared between hosts, and where other hosts' keys keep one in use)."""

    name: str
    #: Root of the keys when --prefix is not given.
    default_prefix: str
    #: Whether the prefix starts with "/" (Traefik does not see keys that do).
    absolute: bool
    desire: Callable[[Sequence[Registration], "Config"], Desired]
    #: (key, prefix) -> whether the key has this layout's shape; keys of another shape are never touched.
    fits: Callable[[str, str], bool]
    #: (key, prefix) -> whether hosts share the key (it is left alone when equal, removed only when unused).
    is_shared: Callable[[str, str], bool]
    #: (shared key, prefix, stored keys) -> folders where another host's own key keeps the shared key in use.
    holders: Callable[[str, str, Mapping[str, "StoredKey"]], frozenset[str]]
    #: (own key, prefix) -> folders of the shared keys the own key may keep in use: read when the own key goes.
    shared_folders: Callable[[str, str], frozenset[str]] = lambda key, prefix: frozenset()
    #: (key, prefix, stored keys) -> (service, name in it) that `list` shows the key under; None: not of this shape.
    listed_as: Callable[[str, str, Mapping[str, "StoredKey"]], Optional[tuple[str, str]]] = \
        lambda key, prefix, stored: None


def is_shared_key(layout: Layout, key: str, prefix: str) -> bool:
    """Whether a key has the layout's shape and hosts share it."""
    return layout.fits(key, prefix) and layout.is_shared(key, prefix)


def parent_folder(key: str) -> str:
    """The folder a key is in, with its trailing slash."""
    return key.rsplit("/", 1)[0] + "/"


def instance_key(prefix: str, service: str, container_id: str) -> str:
    """The key of one container's port: <prefix>/<service>/<id12>."""
    return f"{prefix}/{service}/{container_id}"


def port_key(prefix: str, service: str) -> str:
    """The shared key holding a service's private port."""
    return f"{prefix}/{service}/{PORT_KEY}"


def own_keys(registrations: Iterable[Registration], key_of: Callable[[Registration], str],
             value_of: Callable[[Registration], str]) -> tuple[dict[str, str], list[str]]:
    """One key per registration; a second registration on the same key is noted and left out."""
    keys: dict[str, str] = {}
    notes = []
    for registration in registrations:
        key = key_of(registration)
        if key in keys:
            notes.append(f"{registration.container_name}: service {registration.service} named twice, kept the first")
            continue
        keys[key] = value_of(registration)
    return keys, notes


def discover_keys(registrations: Sequence[Registration], config: "Config") -> Desired:
    """docker-discover's layout: <prefix>/<service>/<id12> = ip:port, and <prefix>/<service>/port shared."""
    prefix = config.prefix
    own, notes = own_keys(registrations, lambda r: instance_key(prefix, r.service, r.container_id),
                          lambda r: r.address)
    private_ports: dict[str, set[int]] = {}
    for registration in registrations:
        private_ports.setdefault(registration.service, set()).add(registration.private_port)
    shared = {}
    for service, found in sorted(private_ports.items()):
        if len(found) > 1:
            notes.append(f"service {service} runs on private ports {sorted(found)}; {PORT_KEY} key says {min(found)}")
        shared[port_key(prefix, service)] = str(min(found))
    return Desired(own, shared, tuple(notes))


def service_of(key: str, prefix: str) -> Optional[str]:
    """Return <service> of a key <prefix>/<service>/<leaf>, else None."""
    parts = key[len(prefix) + 1:].split("/") if key.startswith(prefix + "/") else []
    return parts[0] if len(parts) == 2 else None


def last_two(key: str, prefix: str) -> Optional[tuple[str, str]]:
    """The last two segments of a key below the prefix: (service, container id or leaf) in discover and skydns."""
    parts = key[len(prefix) + 1:].split("/") if key.startswith(prefix + "/") else []
    return (parts[-2], parts[-1]) if len(parts) >= 2 else None


DISCOVER = Layout(
    name="discover", default_prefix=DEFAULT_PREFIX, absolute=True, desire=discover_keys,
    fits=lambda key, prefix: service_of(key, prefix) is not None,
    is_shared=lambda key, prefix: key.endswith("/" + PORT_KEY),
    holders=lambda key, prefix, stored: frozenset({parent_folder(key)}),
    shared_folders=lambda key, prefix: frozenset({parent_folder(key)}),
    listed_as=lambda key, prefix, stored: last_two(key, prefix),
)


def dns_label(name: str) -> Optional[str]:
    """A service name as one DNS label (lowercase letters, digits, inner hyphens, at most 63), or None."""
    label = re.sub(r"[._]", "-", name.lower()).strip("-")
    return label if DNS_LABEL.fullmatch(label) else None


def skydns_keys(registrations: Sequence[Registration], config: "Config") -> Desired:
    """CoreDNS's etcd plugin: <prefix>/<domain reversed>/<service>/<id12> = {"host", "port", "ttl"} JSON."""
    root = config.prefix + "".join(f"/{label}" for label in reversed(config.domain.split(".")))
    usable, notes = [], []
    for registration in registrations:
        if dns_label(registration.service) is None:
            notes.append(f"{registration.container_name}: service {registration.service} cannot be a DNS label; "
                         "skipped (use letters, digits and hyphens, at most 63)")
        else:
            usable.append(registration)
    own, twice = own_keys(usable, lambda r: f"{root}/{dns_label(r.service)}/{r.container_id}",
                          lambda r: json.dumps({"host": r.ip, "port": r.port, "ttl": config.ttl}))
    return Desired(own, {}, tuple(notes + twice))


SKYDNS = Layout(
    name="skydns", default_prefix="/skydns", absolute=True, desire=skydns_keys,
    fits=lambda key, prefix: key.startswith(prefix + "/"),
    is_shared=lambda key, prefix: False,
    holders=lambda key, prefix, stored: frozenset(),
    listed_as=lambda key, prefix, stored: last_two(key, prefix),
)


def traefik_protocol(registration: Registration, named: Mapping[tuple[str, int], str]) -> str:
    """http, tcp or udp: udp ports are UDP services; a tcp port is HTTP unless a label says tcp, or only a
    traefik.tcp.services label names it."""
    if registration.protocol != "tcp":
        return registration.protocol
    port = registration.private_port
    chosen = registration.labels.get(PORT_PROTOCOL_LABEL.format(port=port)) or registration.labels.get(PROTOCOL_LABEL)
    if chosen:
        return "tcp" if chosen.strip().lower() == "tcp" else "http"
    return "tcp" if ("tcp", port) in named and ("http", port) not in named else "http"


def traefik_label_path(label: str) -> Optional[tuple[str, ...]]:
    """The key segments of a traefik.* label (lowercased; [n] becomes /n), or None when it is not a safe path."""
    segments = []
    for part in label.split(".")[1:]:
        match = re.fullmatch(r"([A-Za-z0-9_-]+)((?:\[\d{1,3}\])*)", part)
        if not match:
            return None
        segments.append(match.group(1).lower())
        segments.extend(re.findall(r"\[(\d{1,3})\]", match.group(2)))
    return tuple(segments)


def traefik_field_known(protocol: str, kind: str, rest: tuple[str, ...]) -> bool:
    """Whether a path below a router, service or middleware name is a field Traefik knows."""
    for pattern in TRAEFIK_FIELDS[(protocol, kind)]:
        parts = pattern.split(".")
        if len(parts) == len(rest) and all(
                part == segment or part == "*" or (part == "#" and segment.isdigit())
                for part, segment in zip(parts, rest)):
            return True
    return False


@dataclass(frozen=True)
class TraefikLabels:
    """What a container's traefik.* labels say: named services by (protocol, port), and config keys."""

    #: (protocol, private port) -> Traefik service name, from ...services.<name>.loadbalancer.server.port.
    services: Mapping[tuple[str, int], str]
    #: http services whose servers are reached over https (loadbalancer.server.scheme=https).
    https: frozenset[str]
    #: (protocol, kind, name, rest of the path) -> value, for routers, middlewares and service options.
    entries: Mapping[tuple[str, str, str, tuple[str, ...]], str]
    notes: tuple[str, ...]


def read_traefik_labels(labels: Mapping[str, str], container: str) -> TraefikLabels:
    """Sort a container's traefik.* labels into named services, server schemes and config entries."""
    services, https, entries, notes = {}, set(), {}, []
    for label, value in sorted(labels.items()):
        if not label.startswith("traefik."):
            continue
        path = traefik_label_path(label)
        if path is None or len(path) > 12:
            notes.append(f"{container}: label {label[:80]!r} is not a key path Traefik reads; skipped")
            continue
        if len(path) < 4 or path[0] not in TRAEFIK_PROTOCOLS or path[1] not in TRAEFIK_KINDS:
            continue  # traefik.enable, traefik.docker.network and the like concern the Docker provider only
        protocol, kind, name, rest = path[0], path[1], path[2], path[3:]
        if not (kind == "services" and rest[:2] in (("loadbalancer", "server"), ("loadbalancer", "servers"))
                or traefik_field_known(protocol, kind, rest)):
            notes.append(f"{container}: label {label} sets no field Traefik's {protocol} {kind} know; skipped")
            continue
        if len(value) > MAX_LABEL_VALUE:
            notes.append(f"{container}: label {label} has a value over {MAX_LABEL_VALUE} characters; skipped")
            continue
        if kind == "services" and rest[:2] == ("loadbalancer", "server") and rest[2:] == ("port",):
            if re.fullmatch(r"[0-9]{1,5}", value.strip()) and 0 < int(value) < 65536:  # not str.isdigit: "²" is one
                services[(protocol, int(value))] = name
            else:
                notes.append(f"{container}: label {label} is not a port number; skipped")
        elif kind == "services" and rest[:2] == ("loadbalancer", "server") and rest[2:] == ("scheme",):
            if value.strip().lower() == "https":
                https.add(name)
        elif kind == "services" and rest[:2] in (("loadbalancer", "server"), ("loadbalancer", "servers")):
            notes.append(f"{container}: label {label} would set a server; servers are docker-register's own")
        else:
            key = (protocol, kind, name, rest)
            if key in entries:  # two labels differing only in case: Traefik would read them as one
                notes.append(f"{container}: label {label} names the same key as another label; skipped")
                continue
            entries[key] = value
    return TraefikLabels(services, frozenset(https), entries, tuple(notes))


def traefik_reference(value: str) -> str:
    """Names a router refers to, lowercased like the names in keys; name@provider is left as written."""
    return ",".join(name.strip() if "@" in name else name.strip().lower() for name in value.split(","))


def traefik_server(registration: Registration, protocol: str, https: bool) -> tuple[str, str]:
    """The leaf and value of one server: url for HTTP, address for TCP and UDP."""
    if protocol == "http":
        return "url", f"{'https' if https else 'http'}://{registration.address}"
    return "address", registration.address


def traefik_keys(registrations: Sequence[Registration], config: "Config") -> Desired:
    """Traefik's KV provider: servers of each service keyed by container id, and routing from traefik.* labels."""
    prefix = config.prefix
    own, shared, notes = {}, {}, []
    by_container: dict[str, list[Registration]] = {}
    for registration in registrations:
        by_container.setdefault(registration.container_id, []).append(registration)
    for container_id, found in by_container.items():
        container = found[0].container_name
        if found[0].labels.get("traefik.enable", "").strip().lower() == "false":
            continue  # kept out of Traefik, as its Docker provider does
        labels = read_traefik_labels(found[0].labels, container)
        notes.extend(labels.notes)
        served: dict[str, set[str]] = {}
        for registration in found:
            protocol = traefik_protocol(registration, labels.services)
            if protocol not in TRAEFIK_PROTOCOLS:
                notes.append(f"{container}: port {registration.private_port}/{protocol}: Traefik routes no "
                             f"{protocol}; skipped")
                continue
            named = labels.services.get((protocol, registration.private_port))
            service = named or registration.service.lower()
            leaf, value = traefik_server(registration, protocol, service in labels.https)
            key = f"{prefix}/{protocol}/services/{service}/loadbalancer/servers/{container_id}/{leaf}"
            if key in own:
                notes.append(f"{container}: {protocol} service {service} named twice, kept the first")
                continue
            own[key] = value
            served.setdefault(protocol, set()).add(service)
        for key, value in traefik_entries(labels, served, container, notes).items():
            full = f"{prefix}/{key}"
            if full in shared and shared[full] != value:
                notes.append(f"{container}: {full} differs between containers on this host; kept the first")
                continue
            shared.setdefault(full, value)
    return Desired(own, shared, tuple(notes))


def traefik_entries(labels: TraefikLabels, served: Mapping[str, set[str]], container: str,
                    notes: list[str]) -> dict[str, str]:
    """Router, middleware and service-option keys (below the prefix) from one container's labels."""
    keys: dict[str, str] = {}
    routers_with_service = {(protocol, name) for (protocol, kind, name, rest) in labels.entries
                            if kind == "routers" and rest == ("service",)}
    for (protocol, kind, name, rest), value in labels.entries.items():
        if kind == "services" and name not in served.get(protocol, ()):
            notes.append(f"{container}: {protocol} service {name} has options but no port here; options skipped")
            continue
        if rest[-1:] in (("service",), ("middlewares",)) or rest[-2:-1] == ("middlewares",):
            value = traefik_reference(value)
        keys["/".join((protocol, kind, name, *rest))] = value
    for protocol, kind, name, rest in labels.entries:
        if kind != "routers" or (protocol, name) in routers_with_service:
            continue
        services = sorted(served.get(protocol, ()))
        if len(services) == 1:
            keys[f"{protocol}/routers/{name}/service"] = services[0]
            routers_with_service.add((protocol, name))
        else:
            notes.append(f"{container}: {protocol} router {name} names no service and the container has "
                         f"{len(services)} {protocol} services; router skipped")
            for key in [k for k in keys if k.startswith(f"{protocol}/routers/{name}/")]:
                del keys[key]
            routers_with_service.add((protocol, name))
    return keys


def traefik_parts(key: str, prefix: str) -> Optional[tuple[str, ...]]:
    """The segments of a key below the Traefik prefix: protocol, kind, name, ..."""
    if not key.startswith(prefix + "/"):
        return None
    parts = tuple(key[len(prefix) + 1:].split("/"))
    ok = len(parts) >= 4 and parts[0] in TRAEFIK_PROTOCOLS and parts[1] in TRAEFIK_KINDS
    return parts if ok else None


def traefik_is_server(parts: tuple[str, ...]) -> bool:
    """Whether key segments name a server of a service (a host's own key)."""
    return parts[1] == "services" and parts[3:5] == ("loadbalancer", "servers")


def traefik_holders(key: str, prefix: str, stored: Mapping[str, "StoredKey"]) -> frozenset[str]:
    """Server folders whose servers keep a router, middleware or service option in use."""
    parts = traefik_parts(key, prefix) or ()
    if len(parts) < 4:
        return frozenset()
    protocol, kind, name = parts[:3]

    def servers(service: str) -> str:
        return f"{prefix}/{protocol}/services/{service.strip().lower()}/loadbalancer/servers/"

    if kind == "services":
        return frozenset({servers(name)})
    if kind == "routers":
        # The router's folder names its service (whoever wrote that key); that service's servers hold it.
        service = stored.get(f"{prefix}/{protocol}/routers/{name}/service")
        return frozenset({f"{prefix}/{protocol}/routers/{name}/", *([servers(service.value)] if service else [])})
    # A middleware is in use while a router that names it is: read the routers, then their services' servers.
    naming = [other for other, kv in stored.items()
              if traefik_names_middleware(other, kv.value, protocol, name, prefix)]
    return frozenset({f"{prefix}/{protocol}/routers/"}).union(
        *(traefik_holders(other, prefix, stored) for other in naming))


def traefik_names_middleware(key: str, value: str, protocol: str, middleware: str, prefix: str) -> bool:
    """Whether a key is the middlewares entry (a list or one item) of a router of the protocol naming the
    middleware: a tcp router's middlewares are tcp ones, whatever an http middleware is called."""
    parts = traefik_parts(key, prefix) or ("", "")
    listed = parts[:2] == (protocol, "routers") and (parts[-1] == "middlewares" or parts[-2:-1] == ("middlewares",))
    return listed and middleware in traefik_reference(value).split(",")


def traefik_shared_folders(key: str, prefix: str) -> frozenset[str]:
    """Where the routers, middlewares and options a server may keep in use are: its protocol's routers and
    middlewares, and its own service's folder."""
    parts = traefik_parts(key, prefix)
    if not parts or not traefik_is_server(parts):
        return frozenset()
    protocol, _, service = parts[:3]
    return frozenset({f"{prefix}/{protocol}/routers/", f"{prefix}/{protocol}/middlewares/",
                      f"{prefix}/{protocol}/services/{service}/"})


def traefik_listed(key: str, prefix: str, stored: Mapping[str, "StoredKey"]) -> Optional[tuple[str, str]]:
    """The service a Traefik key serves or configures (a router's: the one it names; a middleware's: the first a
    router naming it names), "tcp/"... for tcp and udp; and the server's container id, or the key below the prefix."""
    parts = traefik_parts(key, prefix)
    if parts is None:
        return None
    protocol, kind, name = parts[:3]
    if kind == "routers":
        named = stored.get(f"{prefix}/{protocol}/routers/{name}/service")
        name = traefik_reference(named.value) if named else ""
    elif kind == "middlewares":
        services = sorted(service for other, kv in stored.items()
                          if traefik_names_middleware(other, kv.value, protocol, name, prefix)
                          and (service := (traefik_listed(other, prefix, stored) or ("", ""))[0]))
        return (services[0] if services else ""), "/".join(parts)
    service = name if protocol == "http" or not name else f"{protocol}/{name}"
    server = traefik_is_server(parts) and len(parts) > 5
    return service, parts[5] if server else "/".join(parts)


TRAEFIK = Layout(
    name="traefik", default_prefix="traefik", absolute=False, desire=traefik_keys,
    fits=lambda key, prefix: traefik_parts(key, prefix) is not None,
    is_shared=lambda key, prefix: not traefik_is_server(traefik_parts(key, prefix) or ("", "")),
    holders=traefik_holders,
    shared_folders=traefik_shared_folders,
    listed_as=traefik_listed,
)

#: The layouts by name, the first the default.
LAYOUTS = {layout.name: layout for layout in (DISCOVER, TRAEFIK, SKYDNS)}


def desired_keys(registrations: Sequence[Registration], config: "Config") -> Desired:
    """The keys this host should hold for its registrations, in the configured layout."""
    return config.layout.desire(registrations, config)


# --- A run's settings, checked (they name a layout, so they follow the layouts) -----------------------


@dataclass(frozen=True)
class Config:
    """Validated settings of one run."""

    endpoints: tuple[EtcdEndpoint, ...]
    host_ip: str
    prefix: str
    ttl: int
    timeout: float
    host_ip_detected: bool = False
    tls: Optional[TlsFiles] = None
    auth: Optional[Credentials] = None
    lock_file: Optional[str] = None
    layout_name: str = "discover"
    domain: str = DEFAULT_DOMAIN
    internal: bool = False
    network: Optional[str] = None
    backend: str = "etcd"
    zookeeper: Optional[ZooKeeperSettings] = None
    redis: Optional[RedisSettings] = None

    @property
    def layout(self) -> "Layout":
        """The layout the keys follow."""
        return LAYOUTS[self.layout_name]

    @property
    def lease_id(self) -> int:
        """This host's lease id."""
        return lease_id_for(self.host_ip, self.prefix)


# --- Plan: desired keys against what the store holds ------------------------------------------


def leaves_only(desired: Desired) -> Desired:
    """Leave out keys that other desired keys are below, with a note: in a tree store (ZooKeeper), a node of a
    session cannot have nodes below it. The keys below are kept (traefik ...tls/certresolver makes ...tls)."""
    keys = sorted({*desired.own, *desired.shared})
    parents = {key for key, after in zip(keys, keys[1:]) if after.startswith(key + "/")}
    if not parents:
        return desired
    notes = tuple(f"{key} has keys below it, which a ZooKeeper node of a session cannot have; left out, "
                  "the keys below kept" for key in sorted(parents))
    return Desired({k: v for k, v in desired.own.items() if k not in parents},
                   {k: v for k, v in desired.shared.items() if k not in parents}, desired.notes + notes)


def stale_shared(desired: Desired, keys: Iterable[str], layout: Layout, prefix: str) -> list[str]:
    """Shared keys among keys (this host's) that no container here wants any more."""
    return [key for key in keys if layout.is_shared(key, prefix) and key not in desired.shared]


def gone_own(desired: Desired, keys: Iterable[str], layout: Layout, prefix: str) -> list[str]:
    """This host's own (unshared) keys among keys that no container here gives any more."""
    return [key for key in keys if layout.fits(key, prefix) and not layout.is_shared(key, prefix)
            and key not in desired.own]


def shared_reach(desired: Desired, lease_keys: Iterable[str], layout: Layout, prefix: str) -> tuple[str, ...]:
    """Folders of the shared keys this host may stop using in this run: those its going keys kept in use, when
    none of its staying keys keeps the same ones (the last of its servers of a service goes)."""
    staying = {layout.shared_folders(key, prefix) for key in desired.own}
    return tuple(sorted({folder for key in gone_own(desired, lease_keys, layout, prefix)
                         if (folders := layout.shared_folders(key, prefix)) not in staying for folder in folders}))


def outermost(folders: Iterable[str]) -> set[str]:
    """The folders not inside another of them: reading those reads all."""
    ordered = sorted(set(folders))
    return {folder for index, folder in enumerate(ordered) if not any(
        folder.startswith(outer) for outer in ordered[:index])}


def ownership(lease_id: int, shared_lease: Optional[Callable[[str], int]]) -> Callable[[str, StoredKey], bool]:
    """Whether a stored key is this host's: on its lease, or a shared key on the lease or claim it writes those
    on (shared_lease(key); the host's lease when None)."""
    if shared_lease is None:
        return lambda key, kv: kv.lease == lease_id
    return lambda key, kv: kv.lease == lease_id or kv.lease == shared_lease(key)


def as_planned(desired: Desired, stored: Mapping[str, StoredKey], lease_id: int,
               ours: Callable[[str, StoredKey], bool]) -> dict[str, StoredKey]:
    """The stored keys with this host's shared values written where it writes them: a router's service as it
    will be after the run decides which servers keep the router's middlewares in use."""
    written = {key: StoredKey(value, lease_id, 0) for key, value in desired.shared.items()
               if key not in stored or ours(key, stored[key]) or stored[key].lease == UNCLAIMED}
    return {**stored, **written}


def reads_for(desired: Desired, lease_keys: Iterable[str], prefix: str, layout: Layout,
              limit: int = MAX_TXN_OPS) -> Reads:
    """The least a plan needs to read, in one transaction of at most limit reads.

    That is this host's desired keys and the keys on its lease, the folders of the shared keys that its
    going keys kept in use, plus the folders where other hosts' keys keep a shared key of this host in use
    (it goes only when none does), as far as the keys alone tell them. Other hosts' keys are not otherwise
    read, so a run costs the same in a fleet of any size. When that is too many reads, the folders of all
    those keys; when even that is too many, the whole prefix.
    """
    own = {key for key in lease_keys if layout.fits(key, prefix)}
    wanted = {*desired.own, *desired.shared}
    reach = set(shared_reach(desired, own, layout, prefix))
    holder_folders = outermost(reach | {folder for key in stale_shared(desired, own, layout, prefix)
                                        for folder in layout.holders(key, prefix, {})})
    keys = {key for key in wanted | own if not key.startswith(tuple(holder_folders))}
    if len(keys) + len(holder_folders) <= limit:
        return Reads(tuple(sorted(keys)), tuple(sorted(holder_folders)))
    folders = {parent_folder(key) for key in wanted | own} | reach
    if len(folders) <= limit:
        return Reads(folders=tuple(sorted(folders)))
    return Reads(whole_prefix=True)


def more_reads_for(desired: Desired, stored: Mapping[str, StoredKey], lease_id: int, read: Reads, prefix: str,
                   layout: Layout, limit: int = MAX_TXN_OPS,
                   shared_lease: Optional[Callable[[str], int]] = None) -> Optional[Reads]:
    """Holder folders that only the values just read name (a router's service), not read yet; None if none."""
    if read.whole_prefix:
        return None
    ours = ownership(lease_id, shared_lease)
    mine = [key for key, kv in stored.items() if ours(key, kv) and layout.fits(key, prefix)]
    planned = as_planned(desired, stored, lease_id, ours)
    folders = {folder for key in stale_shared(desired, mine, layout, prefix)
               for folder in layout.holders(key, prefix, planned) if not folder.startswith(read.folders)}
    if not folders:
        return None
    return Reads(folders=tuple(sorted(folders))) if len(folders) <= limit else Reads(whole_prefix=True)


def held_now(stored: Mapping[str, StoredKey], lease_id: int, lease_state: LeaseState) -> dict[str, StoredKey]:
    """The stored keys as they count for a plan: keys of a lease that is gone or about to be replaced do not."""
    alive = lease_state is LeaseState.ALIVE
    return {key: kv for key, kv in stored.items() if alive or kv.lease != lease_id}


@dataclass
class Tally:
    """What a plan collects as it goes through the keys."""

    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    renewals: list[tuple[str, int]] = field(default_factory=list)
    unchanged: int = 0


def plan_changes(desired: Desired, stored: Mapping[str, StoredKey], lease_id: int,
                 lease_state: LeaseState, prefix: str, layout: Layout,
                 shared_lease: Optional[Callable[[str], int]] = None, releases: bool = False) -> Plan:
    """Compare desired keys with what the store holds and list the writes that make them equal.

    A shared key does not live on the lease of the host that wrote it but on its own: shared_lease(key) is
    the lease (etcd) this host puts it on, None when the store records shared keys against the host's lease
    itself (Redis's index, ZooKeeper's claims). Its writer alone changes its value; every host that wants
    the value it holds keeps it alive (the plan's renewals), so it goes only when no host wants it. releases:
    letting go of a shared key that another host uses is a write (the store's record of the writer), not only
    no longer renewing it."""
    current = held_now(stored, lease_id, lease_state)

    def own_lease(key: str) -> Optional[int]:
        lease = shared_lease(key) if shared_lease else lease_id
        return None if lease == lease_id else lease

    ours = ownership(lease_id, shared_lease)
    tally = Tally()
    plan_own(desired, current, lease_id, tally)
    plan_shared(desired, current, lease_id, ours, own_lease, tally)
    # Its keys going now, with the lease or one by one: the shared keys they kept in use may go with them.
    reach = shared_reach(desired, [key for key, kv in stored.items() if kv.lease == lease_id], layout, prefix)
    plan_leaving(desired, current, lease_id, ours, own_lease, reach, prefix, layout, releases, tally)

    puts_on_lease = any(change.kind in (ChangeKind.ADD, ChangeKind.UPDATE) and change.lease is None
                        for change in tally.changes)
    grants = sorted({change.lease for change in tally.changes if change.lease is not None
                     and (current.get(change.key) is None or current[change.key].lease != change.lease)})
    action = lease_action_for(lease_state, puts_on_lease)
    return Plan(lease_id, action, tuple(tally.changes), tally.unchanged, desired.notes + tuple(tally.notes),
                tuple(tally.renewals), tuple(grants), lease_state is LeaseState.ALIVE and action is LeaseAction.KEEP)


def plan_own(desired: Desired, current: Mapping[str, StoredKey], lease_id: int, tally: Tally) -> None:
    """This host's own keys: added, or rewritten when their value or lease is not the wanted one."""
    for key, value in sorted(desired.own.items()):
        kv = current.get(key)
        if kv is None:
            tally.changes.append(Change(ChangeKind.ADD, key, value, None, 0))
        elif kv.value != value or kv.lease != lease_id:
            tally.changes.append(Change(ChangeKind.UPDATE, key, value, kv.value, kv.mod_revision))
        else:
            tally.unchanged += 1


def plan_shared(desired: Desired, current: Mapping[str, StoredKey], lease_id: int,
                ours: Callable[[str, StoredKey], bool], own_lease: Callable[[str], Optional[int]],
                tally: Tally) -> None:
    """The shared keys this host wants: written when missing, changed only by their writer (or when no one
    claims them), kept alive when they hold the wanted value, noted when another host wrote another."""
    for key, value in sorted(desired.shared.items()):
        kv = current.get(key)
        if kv is None:
            tally.changes.append(Change(ChangeKind.ADD, key, value, None, 0, own_lease(key), shared=True))
        elif kv.lease == lease_id and own_lease(key) is not None:  # written before shared keys had own leases
            tally.changes.append(Change(ChangeKind.UPDATE, key, value, kv.value, kv.mod_revision, own_lease(key),
                                        True))
        elif kv.value == value:
            tally.unchanged += 1
            if kv.lease:  # an unclaimed one too (its writer gone): where keys expire, the users keep it
                tally.renewals.append((key, kv.lease))
        elif ours(key, kv) or kv.lease == UNCLAIMED:
            tally.changes.append(Change(ChangeKind.UPDATE, key, value, kv.value, kv.mod_revision, own_lease(key),
                                        True))
        else:
            tally.notes.append(f"{key} is {kv.value!r}, set by another host; this host's containers use {value}")
            tally.unchanged += 1


def plan_leaving(desired: Desired, current: Mapping[str, StoredKey], lease_id: int,
                 ours: Callable[[str, StoredKey], bool], own_lease: Callable[[str], Optional[int]],
                 reach: tuple[str, ...], prefix: str, layout: Layout, releases: bool, tally: Tally) -> None:
    """The keys this host holds but no longer wants: its own go; a shared one within reach goes when no other
    host's key uses it, else it is left to the hosts that want it (released where that is a write)."""
    planned = as_planned(desired, current, lease_id, ours)
    others = sorted(key for key, kv in current.items()  # other hosts' own keys (a key on no lease is no host's)
                    if kv.lease not in (lease_id, 0) and layout.fits(key, prefix) and not layout.is_shared(key, prefix))
    for key, kv in sorted(current.items()):
        claimable = kv.lease == UNCLAIMED  # its writer is gone: whoever sees it unused removes it
        if not (ours(key, kv) or claimable) or key in desired.own or key in desired.shared:
            continue
        if not key.startswith(prefix + "/") or not layout.fits(key, prefix):
            continue  # Never touch anything outside the prefix or the layout, whatever lease it is on.
        if not layout.is_shared(key, prefix):
            tally.changes.append(Change(ChangeKind.REMOVE, key, None, kv.value, kv.mod_revision))
            continue
        if kv.lease != lease_id and not key.startswith(reach):
            continue  # none of its servers here goes now: no longer renewed, it expires unless a host wants it
        used = any(keys_in(layout.holders(key, prefix, planned), others))
        if not used:
            tally.changes.append(Change(ChangeKind.REMOVE, key, None, kv.value, kv.mod_revision, shared=True))
        elif claimable:
            continue
        elif kv.lease == lease_id and own_lease(key) is not None:
            # Written before shared keys had own leases: onto its own, so it outlives this host's lease.
            tally.changes.append(Change(ChangeKind.UPDATE, key, kv.value, kv.value, kv.mod_revision, own_lease(key),
                                        True))
        elif releases:
            tally.changes.append(Change(ChangeKind.RELEASE, key, kv.value, kv.value, kv.mod_revision, shared=True))
        else:
            tally.unchanged += 1  # another host uses it: left to the hosts that want it, which keep it alive


def lease_action_for(lease_state: LeaseState, has_puts: bool) -> LeaseAction:
    """Decide once what happens to the lease: a lease is granted only for keys to put on it."""
    if lease_state is LeaseState.WRONG_TTL:
        return LeaseAction.REPLACE if has_puts else LeaseAction.REVOKE
    if lease_state is LeaseState.MISSING and has_puts:
        return LeaseAction.GRANT
    return LeaseAction.KEEP


def lease_state_of(info: Optional[LeaseInfo], ttl: int) -> LeaseState:
    """Judge the lease the store reported against the TTL this run wants."""
    if info is None:
        return LeaseState.MISSING
    return LeaseState.ALIVE if info.granted_ttl == ttl else LeaseState.WRONG_TTL


def batches(changes: Sequence[Change], size: int = MAX_TXN_OPS) -> Iterator[Sequence[Change]]:
    """Split changes into transaction-sized slices."""
    for start in range(0, len(changes), size):
        yield changes[start:start + size]


def keys_in(folders: Iterable[str], ordered: Sequence[str]) -> Iterator[str]:
    """The keys of a sorted sequence that are inside any of the folders, found by bisection: a shared key is in use
    while a host's own key is in one of the folders its layout's holders name."""
    for folder in sorted(outermost(folders)):
        index = bisect.bisect_left(ordered, folder)
        while index < len(ordered) and ordered[index].startswith(folder):
            yield ordered[index]
            index += 1


# --- List: what the store holds, for a person ---------------------------------------------------


def server_address(value: str) -> str:
    """The ip:port a server key's value names in any layout (ip:port, a Traefik URL, SkyDNS's JSON); "" if none."""
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
            return format_address(str(data["host"]), int(data["port"]))
        except (ValueError, KeyError, TypeError):
            return ""
    return text.split("://", 1)[-1].split("/", 1)[0]


def address_ip(address: str) -> str:
    """The IP of ip:port ([v6]:port); "" when there is no port."""
    host, sep, _ = address.rpartition(":")
    return host.strip("[]") if sep else ""


def where_listed(key: str, keys: Mapping[str, StoredKey], prefix: str, layout: Layout) -> tuple[Optional[str], str]:
    """The service `list` shows a key under (None: a key of no layout shape) and its name there."""
    found = layout.listed_as(key, prefix, keys) if layout.fits(key, prefix) else None
    return found or (None, key[len(prefix) + 1:] if key.startswith(prefix + "/") else key)


def in_service(service: Optional[str], wanted: Optional[str]) -> bool:
    """Whether a key's service is the one asked for (None: any); "web" also finds Traefik's "tcp/web"."""
    return wanted is None or service is not None and (service == wanted or service.endswith("/" + wanted))


def listed_leases(keys: Mapping[str, StoredKey], prefix: str, layout: Layout, wanted: Optional[str]) -> set[int]:
    """The leases of the keys a listing of the wanted service shows: the ones whose time left it asks for."""
    return {kv.lease for key, kv in keys.items()
            if kv.lease > 0 and in_service(where_listed(key, keys, prefix, layout)[0], wanted)}


def host_addresses(servers: Mapping[str, StoredKey], prefix: str) -> dict[int, str]:
    """The IP of each host whose lease id it derives (etcd, Redis: lease_id_for), found among the addresses its
    servers register; hosts registering other addresses (--internal) and ZooKeeper's sessions stay unnamed."""
    found: dict[int, str] = {}
    tried = set()
    for kv in servers.values():
        ip = address_ip(server_address(kv.value))
        if ip and kv.lease > 0 and kv.lease not in found and (kv.lease, ip) not in tried:
            tried.add((kv.lease, ip))
            if lease_id_for(ip, prefix) == kv.lease:
                found[kv.lease] = ip
    return found


def writer_of(key: str, kv: StoredKey, held: Held, hosts: Iterable[int], addresses: Mapping[int, str],
              users: Sequence[int]) -> int:
    """The host that wrote a shared key: the one its claim names (ZooKeeper, Redis), the one whose lease it is on
    (written before shared keys had leases of their own), or the one whose IP derives its lease (etcd:
    shared_lease_id, the rule sync's ownership follows); 0 when that host is gone or not known."""
    if held.claims or kv.lease in hosts:
        return max(kv.lease, 0)
    return next((host for host in (*users, *addresses)
                 if host in addresses and shared_lease_id(addresses[host], key) == kv.lease), 0)


def orphan_flag(key: str, lease: int, held: Held) -> Optional[Flag]:
    """The flag of a key that no live host holds: on nothing, or on a lease (session, index) that is gone."""
    if lease == 0:
        return Flag(FlagKind.ORPHAN, key, f"{key}: no host holds it (on no {held.holder}); nothing removes it")
    if lease > 0 and lease not in held.live:
        return Flag(FlagKind.ORPHAN, key, f"{key}: on {held.holder} {lease:x}, whose host is gone")
    return None


def collision_flags(entries: Sequence[Listed], holder: str) -> list[Flag]:
    """An address, or a container id, that servers of more than one host register: every key involved."""
    flags = []
    for what, of in (("address", lambda e: server_address(e.value)), ("container", lambda e: e.name)):
        hosts: dict[str, set[int]] = {}
        for entry in entries:
            hosts.setdefault(of(entry), set()).add(entry.lease)
        for entry in entries:
            seen = hosts[of(entry)]
            if of(entry) and len(seen) > 1:
                named = ", ".join(f"{holder} {lease:x}" for lease in sorted(seen))
                flags.append(Flag(FlagKind.COLLISION, entry.key,
                                  f"{entry.key}: {what} {of(entry)} is registered by {len(seen)} hosts ({named})"))
    return flags


def listing(held: Held, prefix: str, layout: Layout, wanted: Optional[str] = None,
            notes: Sequence[str] = ()) -> Listing:
    """What the store holds, by service, and what a person should look at: keys no live host holds (orphans),
    shared keys no live host's servers use, an address or container under several hosts, and this host's notes
    from sync's planner (given as notes)."""
    servers = {key: kv for key, kv in held.keys.items()
               if layout.fits(key, prefix) and not layout.is_shared(key, prefix)}
    hosts = {kv.lease for kv in servers.values()}
    live_servers = sorted(key for key, kv in servers.items() if kv.lease in held.live)
    addresses = host_addresses(servers, prefix)
    entries, flags = [], []
    for key, kv in sorted(held.keys.items()):
        service, name = where_listed(key, held.keys, prefix, layout)
        if not in_service(service, wanted):
            continue
        if service is None or key in servers:
            entries.append(Listed(key, kv.value, service, name, kv.lease, kv.lease, held.live.get(kv.lease)))
            flags.append(orphan_flag(key, kv.lease, held))
            continue
        users = tuple(sorted({servers[user].lease for user in keys_in(layout.holders(key, prefix, held.keys),
                                                                         live_servers)}))
        writer = writer_of(key, kv, held, hosts, addresses, users)
        expires = None if held.claims else held.live.get(kv.lease)
        entries.append(Listed(key, kv.value, service, name, kv.lease, writer, expires, True, users))
        orphan = orphan_flag(key, kv.lease, held) if not held.claims or kv.lease == 0 else None
        flags.append(orphan or (None if users else Flag(
            FlagKind.UNUSED, key, f"{key}: no live host serves {service or 'a router naming it'}")))
    live = [e for e in entries if e.service is not None and not e.shared and e.lease in held.live]
    flags += collision_flags(live, held.holder) + [Flag(FlagKind.NOTE, "", f"this host: {note}") for note in notes]
    entries.sort(key=lambda e: (e.service is None, e.service or "", e.shared, e.name, e.key))
    return Listing(tuple(entries), tuple(flag for flag in flags if flag), addresses, held.holder)


def lease_holding(own: Iterable[str], keys: Mapping[str, StoredKey], default: int) -> int:
    """The lease (session, index) most of these keys are on in the store, else default: this host's, from its
    own keys, where the store gives no other way (a ZooKeeper session is known only to the host that has it)."""
    counts = Counter(keys[key].lease for key in own if key in keys and keys[key].lease > 0)
    return counts.most_common(1)[0][0] if counts else default


# ---------------------------------------------------------------------------
# Adapters: Docker and etcd (translate, decide nothing), and the Store and ContainerSource seams
# ---------------------------------------------------------------------------


def read_tls_files(cacert: Optional[str], cert: Optional[str], key: Optional[str], flag: str = ""
                   ) -> Optional[TlsFiles]:
    """Read the PEM files named by --cacert, --cert and --key (--<flag>cacert...); None when TLS flags are absent."""
    if bool(cert) != bool(key):
        raise UsageError(f"--{flag}cert and --{flag}key go together (client certificate and its key)")
    if not (cacert or cert):
        return None
    contents = []
    for flag, path in ((f"--{flag}cacert", cacert), (f"--{flag}cert", cert), (f"--{flag}key", key)):
        if not path:
            contents.append(None)
            continue
        try:
            with open(path, "rb") as pem:
                data = pem.read()
        except OSError as error:
            raise UsageError(f"{flag}: cannot read {path}: {error.strerror}") from None
        if b"-----BEGIN " not in data:
            raise UsageError(f"{flag}: {path} is not a PEM file")
        contents.append(data)
    return TlsFiles(*contents)


class Clock:
    """Time as the waiting loops see it (lock, event backoff, passes): the real one; tests pass one they move."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until the event is set or seconds passed; whether it is set."""
        return event.wait(seconds)


#: The clock of every run.
CLOCK = Clock()


@contextlib.contextmanager
def run_lock(path: Optional[str], wait: float, clock: Clock = CLOCK) -> Iterator[bool]:
    """Hold an exclusive flock on the lock file; yield False if another run holds it after wait seconds."""
    import fcntl

    try:
        target = path or DEFAULT_LOCK_FILE
        os.makedirs(os.path.dirname(target), exist_ok=True)
        handle = open(target, "a")
    except OSError as error:
        if path:
            raise UsageError(f"--lock-file: cannot open {path}: {error.strerror}") from None
        # Not root and no runtime folder: a per-user lock still keeps this user's runs apart.
        import tempfile

        handle = open(os.path.join(tempfile.gettempdir(), f"docker-register-{os.getuid()}.lock"), "a")
    with handle:
        deadline = clock.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if clock.monotonic() >= deadline:
                    yield False
                    return
                clock.sleep(0.05)
        yield True


def detect_host_ip() -> str:
    """Find the IPv4 address of the interface holding the default route."""
    hint = "set HOST_IP (or --host-ip) to the address other hosts use to reach this one"
    try:
        with open("/proc/net/route", encoding="ascii") as table:
            route = default_route_interface(table.read())
    except OSError:
        route = None
    if route is None:
        raise UsageError(f"no IPv4 default route found; {hint}")
    iface, gateway = route
    if BRIDGE_INTERFACE.match(iface):
        raise UsageError(f"the default route goes through container interface {iface}; {hint}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((gateway, 9))  # UDP connect sends nothing; it only picks the source address.
            address = probe.getsockname()[0]
        except OSError:
            raise UsageError(f"no address found on interface {iface}; {hint}") from None
    try:
        return parse_host_ip(address)
    except UsageError:
        raise UsageError(f"{iface} has address {address}; {hint}") from None


def check_detected_ip(host_ip: str, containers: Iterable[Mapping]) -> None:
    """Refuse a detected address that is a container's or a Docker network gateway's (we run in a container)."""
    for container in containers:
        networks = ((container.get("NetworkSettings") or {}).get("Networks") or {}).values()
        if any(host_ip in (network.get("IPAddress"), network.get("Gateway")) for network in networks):
            raise UsageError(f"detected address {host_ip} is on a Docker network; "
                             "set HOST_IP (or --host-ip) to the host's own address")


class Store(Protocol):
    """What a run needs from the key-value store: one lease per host, guarded writes."""

    #: Where the store is, for error lines ("etcd at http://…").
    where: str
    #: Whether letting go of a shared key another host uses is a write (Redis's index, ZooKeeper's claims).
    releases: bool
    #: Whether keys are nodes of a tree (ZooKeeper), where a node of a session cannot have nodes below it.
    tree: bool
    #: Most exact keys one read request takes (etcd: a transaction's operations); more are read by folder.
    max_reads: int

    def host_lease(self, config: Config) -> int:
        """This host's lease id: etcd and Redis derive it from the host IP and prefix, ZooKeeper's is its session."""

    def shared_lease_of(self, config: Config) -> Optional[Callable[[str], int]]:
        """The lease this host puts each shared key on (etcd); None where the host's lease records them."""

    def keep_alive(self, lease_id: int) -> bool:
        """Renew the lease before planning, where the store does (etcd renews it with the plan); False when it
        no longer exists."""

    def sweep_departed(self) -> None:
        """As the live hosts' leader, delete what departed hosts left behind, where the store does not do that by
        itself (ZooKeeper's emptied folders, Redis's keys; etcd's leases expire with their keys)."""

    def lease(self, lease_id: int) -> Optional[LeaseInfo]:
        """The lease's granted TTL and attached keys; None when it does not exist."""

    def read(self, reads: Reads) -> dict[str, StoredKey]:
        """The keys and folders named by reads, as the store holds them."""

    def apply(self, plan: Plan, ttl: int) -> None:
        """Carry out the plan's lease action, renew the shared keys it wants, then its changes in guarded
        transactions; Conflict if a key moved."""

    def revoke(self, lease_id: int) -> None:
        """Revoke the lease (deleting its keys); nothing when it is already gone."""

    def held(self, timed: Callable[[Mapping[str, StoredKey]], Iterable[int]]) -> Held:
        """Every key under the prefix with what it lives on, and the live leases (sessions, hosts); the seconds left
        of those that timed(keys) names, where the store tells them (`list`)."""


class ContainerSource(Protocol):
    """Where the running containers come from."""

    #: Where Docker is, for error lines.
    where: str

    def running_containers(self) -> list[dict]:
        """GET /containers/json entries of the running containers."""

    def exposed_ports(self, container_id: str) -> list[str]:
        """A container's exposed ports ("80/tcp"): the list call omits them for host-network containers."""

    def events(self) -> Iterator[dict]:
        """Docker's container events as they happen (GET /events), until the stream breaks (DockerError)."""

    def engine_name(self) -> str:
        """What the engine calls itself: "Docker/20.10.24 (linux)", "Libpod/4.3.1 (linux)" (Podman)."""

    def all_containers(self) -> list[dict]:
        """GET /containers/json?all=1 entries: every container, whatever its state."""


class DockerSource:
    """Lists running containers with one Engine API request.

    Every request uses an unversioned path: the engine answers in its own API version, so the same calls work
    on engines whose supported version ranges do not overlap (20.10 up to 1.41, 29 from 1.44).
    """

    def __init__(self, timeout: float):
        import docker  # Deferred: only a run that reaches Docker pays for the import.

        try:
            # A fixed version skips the SDK's GET /version probe; no request below uses it.
            self.client = docker.from_env(version=docker.constants.MINIMUM_DOCKER_API_VERSION, timeout=timeout).api
        except docker.errors.DockerException as error:
            raise DockerError(f"docker: {first_line(error)}") from None
        if not self.client.base_url.startswith(("http://", "https://")):
            # Proxy variables and ~/.netrc cannot apply to a local socket; reading them costs 0.5 MB.
            self.client.trust_env = False
        self.where = os.environ.get("DOCKER_HOST") or self.client.base_url.replace("http+docker://localhost",
                                                                                  "unix:///var/run/docker.sock")
        self._stream = None  # the open GET /events response, if any

    def running_containers(self) -> list[dict]:
        """GET /containers/json?filters={"status":["running"]} as raw dicts."""
        return self._get_json("cannot list containers", "/containers/json",
                              params={"filters": json.dumps({"status": ["running"]})})

    def exposed_ports(self, container_id: str) -> list[str]:
        """GET /containers/<id>/json: Config.ExposedPorts, which includes the image's EXPOSE lines."""
        try:
            container = self._get_json(f"cannot inspect container {container_id[:12]}", "/containers/{0}/json",
                                       container_id)
        except DockerRefused as refused:
            if refused.status == 404:
                return []  # gone since the list call: nothing to register
            raise
        return sorted(((container.get("Config") or {}).get("ExposedPorts") or {}))

    def events(self) -> Iterator[dict]:
        """GET /events?filters={"type":["container"]}, sent now; then one decoded message at a time, with no
        timeout while idle."""
        params = {"filters": json.dumps({"type": ["container"]})}
        self._stream = self._get("event stream", "/events", params=params, stream=True, timeout=None)
        return self._messages(self._stream)

    def engine_name(self) -> str:
        """GET /_ping (GET /version takes Podman most of a second): its Server header."""
        return self._get("ping", "/_ping").headers.get("Server", "")

    def all_containers(self) -> list[dict]:
        """GET /containers/json?all=1 as raw dicts (Podman 4.3 refuses a status=stopping filter)."""
        return self._get_json("cannot list all containers", "/containers/json", params={"all": 1})

    def _messages(self, response) -> Iterator[dict]:
        """The stream's messages; its end or failure is a DockerError."""
        try:
            yield from self.client._stream_helper(response, decode=True)
        except docker_failures() as error:
            raise DockerError(docker_failure_line(self.where, "event stream", "GET /events",
                                                  describe_docker_error(error))) from None
        raise DockerError(docker_failure_line(self.where, "event stream", "GET /events", "the engine ended it"))

    def _get(self, what: str, path: str, *args: str, **kwargs):
        """GET an unversioned path; no answer, or an HTTP error answer, is a DockerError naming the request."""
        url = self.client._url(path, *args, versioned_api=False)
        request = f"GET {url[len(self.client.base_url):]}"
        try:
            response = self.client._get(url, **kwargs)
        except docker_failures() as error:
            raise DockerError(docker_failure_line(self.where, what, request, describe_docker_error(error))) from None
        if response.status_code < 400:
            return response
        body = b""
        with contextlib.suppress(*docker_failures()):
            body = next(response.iter_content(MAX_REFUSAL_BODY), b"")
        response.close()
        reason = refusal_reason(response.status_code, response.reason or "", response.headers.get("Content-Type", ""),
                                body)
        raise DockerRefused(docker_failure_line(self.where, what, request, reason), response.status_code)

    def _get_json(self, what: str, path: str, *args: str, **kwargs):
        """_get's answer decoded; an answer that is not JSON is a DockerError naming the request too."""
        response = self._get(what, path, *args, **kwargs)
        try:
            return json.loads(response.content)  # From bytes: no decoded copy of the whole body.
        except ValueError as error:
            request = f"GET {response.request.path_url.split('?')[0]}"
            raise DockerError(docker_failure_line(self.where, what, request, f"the answer is not JSON "
                                                  f"({first_line(error)})")) from None

    def close(self) -> None:
        """Close the event stream, if open, and the HTTP session."""
        if self._stream is not None:
            self._stream.close()
        self.client.close()


def docker_failures() -> tuple[type[BaseException], ...]:
    """What the docker SDK, requests and urllib3 raise when the engine is gone, stops mid-answer or sends no
    JSON."""
    import docker
    import requests
    import urllib3

    return docker.errors.DockerException, requests.RequestException, urllib3.exceptions.HTTPError, ValueError, OSError


def first_line(error: BaseException) -> str:
    """The first line of an exception's text, or its class name."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def docker_failure_line(where: str, what: str, request: str, reason: str) -> str:
    """One line for a failed Docker request: the engine, what the run was doing, the request and why."""
    return f"docker at {where}: {what} ({request}): {reason}"


def refusal_reason(status: int, reason: str, content_type: str, body: bytes) -> str:
    """An HTTP error answer in a few words: its status and the message, Docker's JSON `message` or else the
    body's text without markup, on one line and cut to MAX_REFUSAL_TEXT."""
    text = body.decode("utf-8", "replace")
    parsed = None
    if "json" in content_type:
        with contextlib.suppress(ValueError):
            parsed = json.loads(text)
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        text = parsed["message"]
    elif "html" in content_type or text.lstrip().startswith("<"):
        text = re.sub(r"<[^>]*>", " ", text)
    status_text = f"{status} {reason}".strip()
    text = " ".join(text.split()).removeprefix(status_text).strip()  # an error page often repeats its status
    if len(text) > MAX_REFUSAL_TEXT:
        text = text[:MAX_REFUSAL_TEXT - 1] + "…"
    return f"refused with {status_text}" + (f": {text}" if text else "")


def describe_docker_error(error: BaseException) -> str:
    """One line for a Docker SDK, requests or urllib3 error: the engine's explanation, the socket error, or how
    the connection ended early."""
    import http.client

    explanation = getattr(error, "explanation", None)
    if explanation:
        return first_line(explanation)
    cause = error
    while cause is not None and not (isinstance(cause, OSError) and cause.strerror):
        if isinstance(cause, http.client.IncompleteRead):
            return "the connection broke mid-answer (the engine stopped or closed it)"
        if isinstance(cause, http.client.RemoteDisconnected):
            return "the connection closed without an answer"
        nested = [arg for arg in getattr(cause, "args", ()) if isinstance(arg, BaseException)]
        cause = nested[0] if nested else cause.__cause__ or cause.__context__
    return cause.strerror if cause is not None else first_line(error)


def quiet_grpc_defaults() -> None:
    """Environment defaults gRPC reads when it loads; the CLI sets them before the first etcd call."""
    # gRPC's C core logs TLS failures to stderr by itself; the run reports them in one line instead.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    # The system resolver (getaddrinfo, /etc/hosts) instead of c-ares: 0.3 MB less per run, measured.
    os.environ.setdefault("GRPC_DNS_RESOLVER", "native")


class EtcdConnection:
    """An etcd client over all endpoints: failover, authentication and one error vocabulary.

    Building it opens nothing: gRPC connects, and the token is fetched, on the first call.
    """

    def __init__(self, endpoints: Sequence[EtcdEndpoint], timeout: float, tls: Optional[TlsFiles] = None,
                 auth: Optional[Credentials] = None):
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self.tls = tls or TlsFiles()
        self.auth = auth
        self.where = "etcd at " + ",".join(str(endpoint) for endpoint in self.endpoints)
        self._client = None
        self._authenticated = auth is None

    @property
    def client(self):
        """The etcd3 client, made on first use so that nothing of gRPC loads before it is needed."""
        if self._client is None:
            import etcd3
            import grpc

            secure = any(e.secure for e in self.endpoints)
            credentials = grpc.ssl_channel_credentials(self.tls.ca, self.tls.key, self.tls.cert) if secure else None
            self._client = etcd3.MultiEndpointEtcd3Client(
                [etcd3.Endpoint(e.host, e.port, secure=e.secure, creds=credentials if e.secure else None,
                                opts=GRPC_OPTIONS) for e in self.endpoints],
                timeout=self.timeout, failover=True)
        return self._client

    def call(self, what: str, action):
        """Run one etcd call, trying again (on the next endpoint if it failed) up to once per endpoint."""
        import etcd3
        import grpc

        last = None
        for _ in self.endpoints:
            try:
                if not self._authenticated:
                    self._authenticate()
                return action()
            except (etcd3.exceptions.ConnectionFailedError, etcd3.exceptions.ConnectionTimeoutError,
                    etcd3.exceptions.NoServerAvailableError) as error:
                last = error
            except etcd3.exceptions.Etcd3Exception as error:
                raise self._failure(what, error) from None
            except grpc.RpcError as error:
                details = error.details() or ""
                if error.code() is grpc.StatusCode.NOT_FOUND and "lease" in details:
                    raise Conflict(details) from None
                if not any(sign in details for sign in BETWEEN_LEADERS):
                    raise self._failure(what, error) from None
                # A member without a leader holds a call until its deadline; by then one is usually
                # elected, so the call is tried again like a failed endpoint (the client keeps this one).
                last = error
            except ValueError as error:  # The client's "Trying to use a failed node".
                last = error
        raise self._failure(what, last)

    def _authenticate(self) -> None:
        """Get a token and send it as metadata, which works with and without TLS.

        The client's own user/password path uses call credentials, which gRPC refuses on plain HTTP.
        """
        import grpc
        from etcd3 import etcdrpc

        request = etcdrpc.AuthenticateRequest(name=self.auth.user, password=self.auth.password)
        try:
            reply = self.client.authstub.Authenticate(request, self.timeout)
        except grpc.RpcError as error:
            self.client._manage_grpc_errors(error)  # marks the endpoint failed, as the client's own calls do
        self.client.metadata = (("token", reply.token),)
        self._authenticated = True

    def _failure(self, what: str, error: Optional[BaseException]) -> EtcdError:
        """The one-line error for a failed call: where, what (or authenticate, before a token), and etcd's reason."""
        return EtcdError(f"{self.where}: {what if self._authenticated else 'authenticate'}: "
                         f"{describe_etcd_error(error)}")

    def close(self) -> None:
        """Close the gRPC channels, if any were opened."""
        if self._client is not None:
            self._client.close()


class EtcdStore:
    """The Store on etcd v3: a lease per host, and one per shared key, kept alive by every host that wants the
    key; keys read in one transaction, plans written in guarded ones."""

    releases = False  # a shared key's lease that this host stops renewing is let go
    tree = False
    max_reads = MAX_TXN_OPS  # one read-only transaction

    def __init__(self, connection: EtcdConnection, prefix: str):
        self.connection = connection
        self.prefix = prefix
        self.where = connection.where

    def host_lease(self, config: Config) -> int:
        """The lease id derived from the host IP and the prefix: no local state."""
        return config.lease_id

    def shared_lease_of(self, config: Config) -> Callable[[str], int]:
        """The lease ids of the shared keys this host writes, derived from the host IP and the key."""
        return functools.partial(shared_lease_id, config.host_ip)

    @property
    def client(self):
        """The connection's etcd3 client."""
        return self.connection.client

    def keep_alive(self, lease_id: int) -> bool:
        """Nothing to send yet: apply renews the lease in the one keepalive stream that renews the shared keys'
        (a stream costs more than its messages), and LeaseTimeToLive, next, tells whether the lease exists."""
        return True

    def sweep_departed(self) -> None:
        """Nothing: a departed host's lease expires, and its keys with it."""

    def lease(self, lease_id: int) -> Optional[LeaseInfo]:
        """LeaseTimeToLive with keys: one RPC, no write."""
        info = self.connection.call("read lease", lambda: self.client.get_lease_info(lease_id))
        if info.TTL <= 0:
            return None
        return LeaseInfo(info.grantedTTL, tuple(key.decode("utf-8", "replace") for key in info.keys))

    def read(self, reads: Reads) -> dict[str, StoredKey]:
        """Read keys and folders in one read-only transaction, or the whole prefix in one range."""
        if reads.whole_prefix:
            reply = self.connection.call("read keys", lambda: self.client.get_prefix_response(self.prefix + "/"))
            found = ((kv.key, kv.value, kv.lease, kv.mod_revision) for kv in reply.kvs)
        elif reads.keys or reads.folders:
            found = ((meta.key, value, meta.lease_id, meta.mod_revision)
                     for response in self.connection.call("read keys", lambda: self._read(reads))
                     for value, meta in response)
        else:
            found = ()  # Nothing on the lease and nothing to register: nothing to read.
        return {key.decode("utf-8", "replace"): StoredKey(value.decode("utf-8", "replace"), lease, revision)
                for key, value, lease, revision in found}

    def held(self, timed: Callable[[Mapping[str, StoredKey]], Iterable[int]]) -> Held:
        """The whole prefix in one range read, each key's lease from its metadata (a key's lease is alive: etcd
        deletes a lease's keys with it), then LeaseTimeToLive of each lease timed names, all sent at once."""
        reply = self.connection.call("read keys", lambda: self.client.get_prefix_response(self.prefix + "/"))
        keys = {kv.key.decode("utf-8", "replace"): StoredKey(kv.value.decode("utf-8", "replace"), kv.lease,
                                                            kv.mod_revision) for kv in reply.kvs}
        live: dict[int, Optional[float]] = {kv.lease: None for kv in keys.values() if kv.lease}
        leases = sorted(set(timed(keys)) & set(live))
        if leases:
            for lease, ttl in self.connection.call("read leases", lambda: self._time_to_live(leases)).items():
                if ttl > 0:
                    live[lease] = float(ttl)
                else:
                    del live[lease]  # it ended since the range read
        return Held(keys, live)

    def _time_to_live(self, leases: Sequence[int]) -> dict[int, int]:
        """LeaseTimeToLive (without keys) of each lease, all in flight at once on the one channel."""
        import grpc
        from etcd3 import etcdrpc

        client = self.client
        pending = [(lease, client.leasestub.LeaseTimeToLive.future(
            etcdrpc.LeaseTimeToLiveRequest(ID=lease), client.timeout, credentials=client.call_credentials,
            metadata=client.metadata)) for lease in leases]
        try:
            return {lease: answer.result().TTL for lease, answer in pending}
        except grpc.RpcError as error:
            for _, answer in pending:
                answer.cancel()
            client._manage_grpc_errors(error)  # marks a failed endpoint and raises, as the client's calls do
            raise

    def _read(self, reads: Reads) -> list:
        """One read-only transaction, a range per key or folder: a linearizable read, no raft proposal."""
        from etcd3 import transactions, utils

        ranges = [transactions.Get(key) for key in reads.keys]
        ranges += [transactions.Get(folder, range_end=utils.prefix_range_end(folder.encode()))
                   for folder in reads.folders]
        return self.client.transaction(compare=[], success=ranges, failure=[])[1]

    def apply(self, plan: Plan, ttl: int) -> None:
        """Carry out the plan's lease action, keep the shared keys' leases alive in one keepalive stream, grant
        the new ones, then write the changes in guarded transactions."""
        if plan.lease_action.revokes:
            self.revoke(plan.lease_id)
        if plan.lease_action.grants:
            self.connection.call("grant lease", lambda: self._grant(plan.lease_id, ttl))
        leases = sorted({lease for _, lease in plan.renewals} | ({plan.lease_id} if plan.renews_lease else set()))
        if leases:
            self.connection.call("keep lease alive", lambda: self._renew(leases))
        for lease in plan.grants:
            self.connection.call("grant lease", functools.partial(self._grant, lease, ttl))
        for batch in batches([change for change in plan.changes if change.kind is not ChangeKind.RELEASE]):
            self.connection.call("write keys", lambda: self._transaction(plan.lease_id, batch))

    def revoke(self, lease_id: int) -> None:
        """Revoke the lease if it still exists."""
        self.connection.call("revoke lease", lambda: self._revoke(lease_id))

    def _grant(self, lease_id: int, ttl: int) -> None:
        """Grant the lease; another run (or, for a shared key's, another host) may have granted it a moment ago.
        (The client's own call turns etcd's FAILED_PRECONDITION into an exception without etcd's reason.)"""
        import grpc
        from etcd3 import etcdrpc

        client = self.client
        try:
            client.leasestub.LeaseGrant(etcdrpc.LeaseGrantRequest(TTL=ttl, ID=lease_id), client.timeout,
                                        credentials=client.call_credentials, metadata=client.metadata)
        except grpc.RpcError as error:
            if "lease already exists" not in (error.details() or ""):
                client._manage_grpc_errors(error)  # marks a failed endpoint and raises, as the client's calls do

    def _renew(self, lease_ids: Sequence[int]) -> None:
        """Renew leases in one LeaseKeepAlive stream (no write); Conflict when one ended since it was read (the
        run then reads and plans again)."""
        import grpc
        from etcd3 import etcdrpc

        client = self.client
        requests = [etcdrpc.LeaseKeepAliveRequest(ID=lease_id) for lease_id in lease_ids]
        try:
            replies = list(client.leasestub.LeaseKeepAlive(
                iter(requests), client.timeout, credentials=client.call_credentials, metadata=client.metadata))
        except grpc.RpcError as error:
            client._manage_grpc_errors(error)  # marks a failed endpoint, as the client's own calls do
            raise
        if len(replies) < len(requests) or any(reply.TTL <= 0 for reply in replies):
            raise Conflict("a lease ended since it was read")

    def _revoke(self, lease_id: int) -> None:
        import grpc

        try:
            self.client.revoke_lease(lease_id)
        except grpc.RpcError as error:
            if error.code() is not grpc.StatusCode.NOT_FOUND:
                raise

    def _transaction(self, lease_id: int, batch: Sequence[Change]) -> None:
        """Apply one batch only if none of its keys moved since we read them."""
        from etcd3 import transactions

        compare = [transactions.Mod(change.key) == change.expected_mod for change in batch]
        success = [
            transactions.Delete(change.key) if change.kind is ChangeKind.REMOVE
            else transactions.Put(change.key, change.value, lease=change.lease or lease_id)
            for change in batch
        ]
        succeeded, _ = self.client.transaction(compare=compare, success=success, failure=[])
        if not succeeded:
            raise Conflict("a key changed while this run was writing")


def describe_etcd_error(error: Optional[BaseException]) -> str:
    """One line for an etcd client or gRPC error, taken from the gRPC status where there is one."""
    import grpc

    source = error
    if error is not None and not isinstance(error, grpc.RpcError) and isinstance(error.__context__, grpc.RpcError):
        source = error.__context__
    if isinstance(source, grpc.RpcError):
        code = source.code()
        details = (source.details() or "").strip().splitlines()
        text = {
            grpc.StatusCode.UNAVAILABLE: "unreachable",
            grpc.StatusCode.DEADLINE_EXCEEDED: "no answer in time",
        }.get(code, code.name.lower().replace("_", " "))
        return f"{text} ({details[0]})" if details else text
    return first_line(error) if error else "no endpoint answered"


# ---------------------------------------------------------------------------
# Adapters: ZooKeeper and Redis, the optional stores (a run imports a client only when it chooses its store)
# ---------------------------------------------------------------------------


def backend_module(backend: str):
    """Import an optional backend's client; a missing one is a usage error naming the extra to install."""
    import importlib

    name = BACKEND_MODULES[backend]
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UsageError(f"--backend {backend} needs the {name} client: "
                         f"pip install 'docker-register[{backend}]'") from None


# --- ZooKeeper: the host's session is its lease ---------------------------------------------
# Three pieces, one job each: ZooKeeperSession keeps the host's session (connect, re-attach, the state file) and
# sends the requests on it; ZooKeeperFleet keeps the root's hosts folder (this host's presence, and the leader's
# sweep of what departed hosts left); ZooKeeperStore is the Store on the two.


#: What a folder node under the root holds. Traefik's zooKeeper provider reads every node's value, folders
#: included, and reads one that is empty six times with a sync between (its guard against half-written values):
#: 11 requests per folder instead of 1. "true" is also the one value its configuration reader takes as a plain
#: "this block is on" for every kind of block, so the routing it builds stays what the keys say.
ZOOKEEPER_FOLDER = b"true"
#: ZooKeeper keeps its own nodes under this path: no prefix may go there.
ZOOKEEPER_RESERVED = "/zookeeper"
#: A node created and deleted under the root in every ZooKeeper write transaction: readers that watch only
#: the root's children (Traefik's zooKeeper provider) then read the tree again. No reader ever sees it.
ZOOKEEPER_SIGNAL = "docker-register-change-{session:x}"
#: Where each host's session keeps an ephemeral node, one folder per root (outside it: readers never see it).
#: A host that dies takes its node along; the leader (the lowest session listed) then deletes the folders
#: the dead host's keys leave behind, which ZooKeeper keeps, and signals the root.
ZOOKEEPER_HOSTS = "/docker-register/hosts"
#: Where a ZooKeeper host claims the shared nodes it wrote (persistent nodes, which no session owns): one
#: ephemeral node per shared key, one folder per root, outside the root. The claim says who may change the
#: value; a writer that dies takes its claims along, and the next host wanting another value takes the key.
ZOOKEEPER_CLAIMS = "/docker-register/claims"
#: Reads in one ZooKeeper multiRead request (3.6+): a run's reads cost a request per this many keys, and the
#: answer stays far below the server's 1 MiB packet limit (jute.maxbuffer).
ZOOKEEPER_READS = 2000
#: ZooKeeper's opcodes of the reads a multiRead request carries.
GET_DATA, GET_CHILDREN = 4, 8
#: What kazoo says when a server took the connection and closed it unanswered: it is up but serves no session
#: (a member without a quorum, or one still starting).
NOT_SERVING = "socket connection broken"


def parse_zookeeper_hosts(text: str) -> str:
    """Check a comma-separated ZooKeeper ensemble, host:port each (IPv6 in brackets); return it as kazoo takes it."""
    hosts = []
    for item in text.split(","):
        item = item.strip()
        match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d+)", item)
        if not match:
            raise UsageError(f"--zookeeper / ZOOKEEPER_HOSTS: {item!r} is not host:port "
                             "(a comma-separated ensemble; no chroot path)")
        if not 0 < int(match.group(2)) < 65536:
            raise UsageError(f"--zookeeper / ZOOKEEPER_HOSTS: port {match.group(2)} in {item!r} is out of range")
        hosts.append(item)
    return ",".join(hosts)


def check_zookeeper_root(prefix: str) -> None:
    """Refuse a prefix whose root node is where ZooKeeper or docker-register keep nodes of their own."""
    root, ours = zookeeper_path(prefix), ZOOKEEPER_HOSTS.rsplit("/", 1)[0]
    if root == ZOOKEEPER_RESERVED or root.startswith(ZOOKEEPER_RESERVED + "/"):
        raise UsageError(f"--prefix {prefix}: ZooKeeper keeps its own nodes under {ZOOKEEPER_RESERVED}")
    if root == ours or root.startswith(ours + "/"):
        raise UsageError(f"--prefix {prefix}: docker-register keeps its hosts' nodes under {ZOOKEEPER_HOSTS}")


def zookeeper_path(key: str) -> str:
    """The ZooKeeper path of a key: a key without a leading / (the traefik layout's) gets one."""
    return key if key.startswith("/") else "/" + key


def zookeeper_key(path: str, prefix: str) -> str:
    """The key of a ZooKeeper path, for a prefix with or without a leading /."""
    return path if prefix.startswith("/") else path[1:]


def zookeeper_hosts_folder(root: str) -> str:
    """The folder of the hosts' presence nodes for one root."""
    from urllib.parse import quote

    return f"{ZOOKEEPER_HOSTS}/{quote(root, safe='')}"


def zookeeper_claims_folder(root: str) -> str:
    """The folder of the claims on one root's shared nodes."""
    from urllib.parse import quote

    return f"{ZOOKEEPER_CLAIMS}/{quote(root, safe='')}"


def zookeeper_claim(root: str, path: str) -> str:
    """The node by which a host claims the shared node at path (below root): one flat name per key."""
    from urllib.parse import quote

    return f"{zookeeper_claims_folder(root)}/{quote(path[len(root) + 1:], safe='')}"


def zookeeper_state_file(lock_file: Optional[str], host_ip: str, prefix: str) -> str:
    """Where the host's ZooKeeper session is kept: next to the lock file, one file per host IP and prefix."""
    folder = os.path.dirname(lock_file or DEFAULT_LOCK_FILE)
    return os.path.join(folder, f"zookeeper-{lease_id_for(host_ip, prefix):016x}.session")


@dataclass(frozen=True)
class SavedSession:
    """The host's ZooKeeper session as the state file keeps it: id, password and the TTL it was made for."""

    session: int
    password: bytes = field(repr=False)
    ttl: int
    #: As the leader: the hosts folder's (cversion, numChildren) at the last look; None when not the leader.
    watched: Optional[tuple[int, int]] = None


def session_text(saved: SavedSession) -> str:
    """The state file's content."""
    data = {"session": f"{saved.session:x}", "password": saved.password.hex(), "ttl": saved.ttl}
    return json.dumps({**data, **({"watched": list(saved.watched)} if saved.watched else {})}) + "\n"


def parse_session(text: str) -> Optional[SavedSession]:
    """Read a state file's content; None when it is not one (a new session is then made)."""
    try:
        data = json.loads(text)
        saved = SavedSession(int(data["session"], 16), bytes.fromhex(data["password"]), int(data["ttl"]),
                             parse_watched(data.get("watched")))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return saved if saved.session and saved.ttl > 0 else None  # a server id >= 128 makes a session id negative


def parse_watched(value) -> Optional[tuple[int, int]]:
    """The leader's (cversion, numChildren) from the state file; None when it is not a pair of numbers."""
    try:
        cversion, children = value
        return int(cversion), int(children)
    except (ValueError, TypeError):
        return None


def was_folder(stat) -> bool:
    """Whether a ZooKeeper node is only a folder: not ephemeral, it has had children, and it holds no value or a
    folder's (those written before folders held one have none). No docker-register key has nodes below it."""
    return not stat.ephemeralOwner and stat.dataLength in (0, len(ZOOKEEPER_FOLDER)) and stat.cversion > 0


def emptied_folder(stat) -> bool:
    """Whether a ZooKeeper node is a folder whose children are all gone."""
    return was_folder(stat) and not stat.numChildren


def hosts_departed(before: Optional[tuple[int, int]], now: tuple[int, int]) -> bool:
    """Whether a presence node went since the last look: cversion counts creates and deletes, numChildren their
    difference; None (not the leader then) counts as a departure, as the last leader may be the one gone."""
    if before is None or now[0] < before[0]:  # or the folder was made again
        return True
    return (now[0] - before[0]) - (now[1] - before[1]) > 0


def zookeeper_error(where: str, what: str, error: BaseException) -> ZooKeeperError:
    """One line for a kazoo error."""
    names = {"ConnectionLoss": "connection lost", "SessionExpiredError": "session expired",
             "NoAuthError": "not authorised", "AuthFailedError": "authentication failed",
             "ConnectionClosedError": "connection closed", "OperationTimeoutError": "no answer in time",
             "TimeoutError": "no answer in time", "KazooTimeoutError": "no answer in time"}
    text = names.get(type(error).__name__) or first_line(error)
    return ZooKeeperError(f"{where}: {what}: {text}")


def connect_failure(dropped: Mapping[str, str], timeout: float) -> str:
    """Why no server gave a session in time, from the last reason each server tried dropped the connection: that
    reason when all gave the same one, else each server's; a server up but not serving suggests no quorum."""
    servers_of: dict[str, list[str]] = {}
    for server, reason in dropped.items():
        servers_of.setdefault(reason, []).append(server)
    if not servers_of:
        return "no answer in time"
    if len(servers_of) == 1 and NOT_SERVING not in servers_of:
        return next(iter(servers_of))
    quorum = " (no quorum?)" if NOT_SERVING in servers_of else ""
    said = {NOT_SERVING: "up but not serving"}
    return f"no server answered within {timeout:g} s{quorum}: " + "; ".join(
        f"{', '.join(sorted(servers))}: {said.get(reason, reason)}".removeprefix(": ")
        for reason, servers in sorted(servers_of.items()))


class MultiRead(tuple):
    """ZooKeeper's multiRead request (opcode 22, 3.6+; kazoo has no call for it): getData and getChildren
    operations, (opcode, path) each, answered in one reply, a failed one as its error."""

    type = 22

    def serialize(self) -> bytearray:
        from kazoo.protocol.serialization import multiheader_struct, write_string

        body = bytearray()
        for opcode, path in self:
            body += multiheader_struct.pack(opcode, False, -1) + write_string(path) + b"\0"  # no watch
        return body + multiheader_struct.pack(-1, True, -1)

    @classmethod
    def deserialize(cls, buffer, offset) -> list:
        from kazoo.exceptions import EXCEPTIONS
        from kazoo.protocol.serialization import GetChildren, MultiHeader, read_buffer, read_string, stat_struct
        from kazoo.protocol.states import ZnodeStat

        results = []
        while True:
            header, offset = MultiHeader.deserialize(buffer, offset)
            if header.done:
                return results
            if header.type == GET_DATA:
                data, offset = read_buffer(buffer, offset)
                results.append((data, ZnodeStat._make(stat_struct.unpack_from(buffer, offset))))
                offset += stat_struct.size
            elif header.type == GET_CHILDREN:
                results.append(GetChildren.deserialize(buffer, offset))
                count = int.from_bytes(buffer[offset:offset + 4], "big", signed=True)
                offset += 4
                for _ in range(max(count, 0)):
                    _, offset = read_string(buffer, offset)
            else:  # an error: its code
                code = int.from_bytes(buffer[offset:offset + 4], "big", signed=True)
                offset += 4
                results.append(EXCEPTIONS[code]())


class GetEphemerals(tuple):
    """ZooKeeper's getEphemerals request (opcode 103, 3.6+; kazoo has no call for it): the paths of the session's
    ephemeral nodes that start with a prefix, (prefix,)."""

    type = 103

    def serialize(self) -> bytearray:
        from kazoo.protocol.serialization import write_string

        return bytearray(write_string(self[0]))

    @classmethod
    def deserialize(cls, buffer, offset) -> list[str]:
        from kazoo.protocol.serialization import GetChildren

        return GetChildren.deserialize(buffer, offset)  # a vector of strings, like GetChildren's reply


class KazooLog:
    """What a kazoo client logs, kept instead of printed (it logs every reconnect; a run's error is one line): why
    each server's last connection attempt failed, by server."""

    def __init__(self):
        self.server = ""  #: the server being tried, host:port
        self.dropped: dict[str, str] = {}

    def warning(self, message: str, *args, **_) -> None:
        self.dropped[self.server] = first_line(message % args if args else message).removeprefix(
            "Connection dropped: ")

    warn = error = exception = warning

    def debug(self, *_, **__) -> None:
        """Nothing: below a warning."""

    info = log = debug


class ZooKeeperSession:
    """The host's ZooKeeper session, which is its lease: connected on first use, re-attached to the session the
    state file keeps when that is alive (which writes nothing), else a new one; and the requests sent on it, their
    failures turned into one line (Conflict for a guarded write that met a moved node).

    The state file (mode 0600) keeps the session's id and password for the next run; a file that is missing or
    not one means a new session, one that cannot be written is a store failure (exit 1)."""

    def __init__(self, settings: ZooKeeperSettings, ttl: Optional[int], timeout: float):
        self.settings = settings
        #: The TTL the session must be granted; None (purge): the saved session's, unchecked.
        self.ttl = ttl
        self.timeout = timeout
        self.where = f"zookeeper at {settings.hosts}"
        #: The state file's session, as loaded or last saved; None when there is none.
        self.saved: Optional[SavedSession] = None
        self._client = None
        self._granted_ms = 0

    @property
    def client(self):
        """The started kazoo client: re-attached to the saved session when it is alive, else on a new one."""
        if self._client is None:
            self.saved = self._load()
            ttl = self.ttl or (self.saved.ttl if self.saved else DEFAULT_TTL)
            self._client = self._start(ttl, self.saved)
            if self.ttl is not None and self._granted_ms != self.ttl * 1000:
                granted = self._granted_ms
                self.close()
                raise UsageError(f"--ttl {self.ttl}: {self.where} grants a session timeout of {granted / 1000:g} s "
                                 "for it (its minSessionTimeout and maxSessionTimeout bound it); "
                                 "choose a TTL it grants")
        return self._client

    @property
    def id(self) -> int:
        """The session id (connecting on first use)."""
        return self.client.client_id[0]

    @property
    def kept(self) -> bool:
        """Whether the client's session is the one in the state file (re-attached, or saved by this run)."""
        client_id = self._client.client_id if self._client is not None else None
        return bool(self.saved and client_id and client_id[0] == self.saved.session)

    def start_new(self, ttl: int) -> None:
        """Start a new session for a TTL (after end(): a session cannot change its TTL)."""
        self._client = self._start(ttl, None)

    def _start(self, ttl: int, saved: Optional[SavedSession]):
        import logging

        from kazoo.client import KazooClient
        from kazoo.retry import KazooRetry
        from kazoo.security import make_acl, make_digest_acl

        log = KazooLog()
        if not logging.getLogger("kazoo").handlers:  # kazoo's own modules: quiet too
            logging.getLogger("kazoo").addHandler(logging.NullHandler())
        auth, acl = self.settings.auth, None
        if auth:  # our nodes: all rights to our user, read to everyone (the consumers)
            acl = [make_digest_acl(auth.user, auth.password, all=True), make_acl("world", "anyone", read=True)]
        client = KazooClient(
            hosts=self.settings.hosts, timeout=ttl, client_id=(saved.session, saved.password) if saved else None,
            connection_retry=KazooRetry(max_tries=-1, delay=0.1, max_delay=1), logger=log,
            use_ssl=bool(self.settings.ca or self.settings.cert), ca=self.settings.ca, certfile=self.settings.cert,
            keyfile=self.settings.key, default_acl=acl,
            auth_data=[("digest", f"{auth.user}:{auth.password}")] if auth else None)
        # The timeout the server granted is not kept by kazoo: read it where the connection learns it.
        connection, connect = client._connection, client._connection._connect

        handshake = threading.Event()  # set once the handshake is over, auth packets included

        def granted(host, hostip, port):
            log.server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            read_timeout, connect_timeout = connect(host, hostip, port)
            self._granted_ms = round(connect_timeout * len(client.hosts))
            handshake.set()
            return read_timeout, connect_timeout

        connection._connect = granted
        # Not client.start(timeout): on a timeout it waits for the connection's own (the session timeout).
        deadline = time.monotonic() + self.timeout
        client.start_async().wait(self.timeout)
        # CONNECTED is announced before the auth packets are answered and _connect returns: wait for that too.
        handshake.wait(max(0.0, deadline - time.monotonic()))
        if not client.connected or not handshake.is_set():
            reason = "authentication failed" if "AUTH_FAILED" in str(client.client_state) else \
                connect_failure(log.dropped, self.timeout)
            self._detach(client)
            raise ZooKeeperError(f"{self.where}: connect: {reason}")
        return client

    @staticmethod
    def _detach(client) -> None:
        """Stop a client without closing its session (what stop() does, without the closeSession request); a kept
        session lives on until the next run re-attaches. The connection's thread ends by itself (after kazoo's
        retry pause, 0.1 s, not waited for)."""
        import socket as sockets

        with contextlib.suppress(Exception):
            client._stopped.set()
            if client._connection._socket is not None:
                client._connection._socket.shutdown(sockets.SHUT_RDWR)

    def _load(self) -> Optional[SavedSession]:
        try:
            with open(self.settings.state_file, encoding="ascii") as state:
                return parse_session(state.read())
        except (OSError, UnicodeDecodeError):
            return None

    def save(self, saved: Optional[SavedSession] = None) -> None:
        """Keep the session (this one, by default) for the next runs: written whole, readable by the owner only."""
        session, password = self.client.client_id
        saved = saved or SavedSession(session, password, self.ttl or DEFAULT_TTL)
        path = self.settings.state_file
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(handle, "w", encoding="ascii") as state:
                os.fchmod(state.fileno(), 0o600)
                state.write(session_text(saved))
            os.replace(temporary, path)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            # A store failure (exit 1, tried again by the next run), not a usage error: the watch unit would
            # never restart after exit 2, and a full disk or a read-only mount can pass.
            raise ZooKeeperError(f"{self.where}: --zookeeper-state: cannot write {path}: {error.strerror}") from None
        self.saved = saved

    def end(self) -> None:
        """Close the session (the server deletes whatever ephemeral node of it is left) and forget it."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.stop()
                client.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.settings.state_file)
        self.saved = None

    def close(self) -> None:
        """Leave a kept session open for the next run (no write); close a session nobody will re-attach to."""
        client, kept, self._client = self._client, self.kept, None
        if client is None:
            return
        if kept or not client.connected:
            self._detach(client)
            return
        with contextlib.suppress(Exception):  # a session of this run only (a dry run's): it holds no node
            client.stop()
            client.close()

    # --- requests on the session ---------------------------------------------------------------

    def wait(self, what: str, pending, ignore: type[Exception] | tuple = ()):
        """The result of one asynchronous call, bounded by the timeout; None for an error of the ignored kind."""
        try:
            return pending.get(timeout=self.timeout)
        except ignore:
            return None
        except Exception as error:
            raise zookeeper_error(self.where, what, error) from None

    def wait_optional(self, what: str, pending):
        """The result of a call on a node that may be missing; None if it is."""
        from kazoo.exceptions import NoNodeError

        return self.wait(what, pending, NoNodeError)

    def read_many(self, what: str, ops: Sequence[tuple[int, str]]) -> list:
        """Many reads (GET_DATA: (data, stat); GET_CHILDREN: names; None for a missing node) in one multiRead
        request per ZOOKEEPER_READS, all sent before the first answer is waited for."""
        from kazoo.exceptions import NoNodeError

        pending = []
        for start in range(0, len(ops), ZOOKEEPER_READS):
            pending.append(self.client.handler.async_result())
            self.client._call(MultiRead(tuple(ops[start:start + ZOOKEEPER_READS])), pending[-1])
        results = [result for answer in pending for result in self.wait(what, answer)]
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, NoNodeError):
                raise zookeeper_error(self.where, what, result)
        return [None if isinstance(result, Exception) else result for result in results]

    def ephemerals(self, root: str) -> list[str]:
        """The session's nodes below root, in one getEphemerals request."""
        pending = self.client.handler.async_result()
        self.client._call(GetEphemerals((root + "/",)), pending)
        return sorted(path for path in self.wait("list the session's nodes", pending) if path.startswith(root + "/"))

    def claims(self, root: str, paths: Sequence[str]) -> dict[str, int]:
        """The session claiming each shared node at paths below root (0: none), in one multiRead request."""
        found = self.read_many("read claims", [(GET_DATA, zookeeper_claim(root, path)) for path in paths])
        return {path: claim[1].ephemeralOwner if claim else 0 for path, claim in zip(paths, found)}

    def signal(self, root: str) -> list[tuple]:
        """The operations that create and delete a node of this session below root: its readers read it again."""
        signal = f"{root}/{ZOOKEEPER_SIGNAL.format(session=self.id)}"
        return [("create", signal, b"", None, True), ("delete", signal)]

    def commit(self, what: str, ops: Sequence[tuple]) -> None:
        """One multi transaction of (operation, path, *arguments); Conflict when a compared node moved, a one-line
        error when the server refused it."""
        from kazoo import exceptions

        transaction = self.client.transaction()
        for name, path, *args in ops:
            getattr(transaction, name)(path, *args)
        for (_, path, *_), result in zip(ops, self.wait(what, transaction.commit_async())):
            if not isinstance(result, Exception) or isinstance(
                    result, (exceptions.RolledBackError, exceptions.RuntimeInconsistency)):
                continue
            if isinstance(result, (exceptions.BadVersionError, exceptions.NodeExistsError, exceptions.NoNodeError,
                                   exceptions.NotEmptyError)):
                raise Conflict(f"{path}: {type(result).__name__}")
            if isinstance(result, exceptions.NoChildrenForEphemeralsError):
                raise ZooKeeperError(f"{self.where}: {what}: cannot create {path}: a node above it is a key of "
                                     "a session, which cannot have nodes below it")
            raise zookeeper_error(self.where, f"write {path}", result)


class ZooKeeperFleet:
    """The hosts of one root: each live host's session keeps an ephemeral presence node in the root's hosts folder
    (outside the root); the lowest session listed is the leader, which deletes what departed hosts' keys leave
    behind (folders ZooKeeper keeps, shared nodes no live host uses or claims) and signals the root."""

    def __init__(self, session: ZooKeeperSession, prefix: str, layout: Layout):
        self.session = session
        self.prefix = prefix
        self.root = zookeeper_path(prefix)
        self.layout = layout
        self.folder = zookeeper_hosts_folder(self.root)
        #: What check_in saw: the sessions listed and the folder's stat; None when it had to announce this host.
        self._seen: Optional[tuple[list[int], Any]] = None

    def announce(self) -> None:
        """Create this session's presence node, and the folders above it, which stay: the two shared by every
        root let anyone add to them; the root's own has this host's ACL, like the folders under the root."""
        from kazoo.exceptions import NodeExistsError
        from kazoo.security import make_acl

        client, shared = self.session.client, [make_acl("world", "anyone", read=True, create=True)]
        self.session.wait("announce this host", client.ensure_path_async(self.folder.rsplit("/", 1)[0], acl=shared))
        for path, ephemeral in ((self.folder, False), (f"{self.folder}/{self.session.id:x}", True)):
            self.session.wait("announce this host", client.create_async(path, ephemeral=ephemeral), NodeExistsError)

    def check_in(self) -> None:
        """One read of the hosts folder; announce this session if it is missing there."""
        listed = self.session.client.get_children_async(self.folder, include_data=True)
        children, stat = self.session.wait_optional("read the hosts", listed) or ([], None)
        sessions = sorted(int(name, 16) for name in children if re.fullmatch(r"-?[0-9a-f]{1,16}", name))
        self._seen = (sessions, stat) if self.session.id in sessions else None
        if self._seen is None:
            self.announce()  # its own node changed the folder: the next run looks

    def sweep_if_leader(self) -> None:
        """As the leader (the lowest session check_in listed), sweep when a host departed since the leader's last
        look, or it has just become leader; what it saw is kept in the state file after the sweep (a failed one
        is then tried again)."""
        if self._seen is None:
            return
        sessions, stat = self._seen
        saved = self.session.saved
        watched = (stat.cversion, stat.numChildren) if sessions[0] == self.session.id else None
        if watched and hosts_departed(saved.watched, watched):
            # A departure seen before (not only a new leader's first look) is signalled even when nothing is
            # left to delete: a run that deleted and then failed to signal is made good here.
            self._sweep(signal=saved.watched is not None)
        if watched != saved.watched:
            self.session.save(replace(saved, watched=watched))

    def _sweep(self, signal: bool) -> None:
        """Delete the shared nodes that no live key uses and no host claims, and the folders under the root that
        have no key below them any more (ZooKeeper keeps a parent when its ephemeral children expire), deepest
        first, then signal the root so readers drop the departed keys. (Traefik's keys always sit in a folder
        of their own, so a departed host always leaves one.)"""
        from kazoo.exceptions import BadVersionError, NoNodeError, NotEmptyError

        client, found, level = self.session.client, {}, [self.root]
        while level:
            pending = [(path, client.get_children_async(path, include_data=True)) for path in level]
            level = []
            for path, answer in pending:
                children, stat = self.session.wait_optional("read the tree", answer) or ([], None)
                if stat is not None:
                    found[path] = (stat, children)
                    level.extend(f"{path}/{child}" for child in children)
        empty = self._unused_shared(found)
        for path, (stat, children) in sorted(found.items(), key=lambda item: -item[0].count("/")):
            if path != self.root and was_folder(stat) and all(f"{path}/{child}" in empty for child in children):
                empty.add(path)
        deletes = [client.delete_async(path, version=found[path][0].version)
                   for path in sorted(empty, key=lambda p: -p.count("/"))]
        deadline, deleted = time.monotonic() + self.session.timeout, 0
        for pending in deletes:
            try:
                pending.get(timeout=max(0.0, deadline - time.monotonic()))
                deleted += 1
            except (NotEmptyError, BadVersionError, NoNodeError):
                pass  # a key was written below it meanwhile (the folder is in use), or another leader was first
            except Exception as error:
                raise zookeeper_error(self.session.where, "delete emptied folders", error) from None
        if not deleted and not signal:
            return  # a key that went without leaving a folder is no change a root-watching reader misses
        try:
            self.session.commit("signal the root", self.session.signal(self.root))
        except Conflict as conflict:
            raise ZooKeeperError(f"{self.session.where}: signal the root: {conflict}") from None

    def _unused_shared(self, found: Mapping[str, tuple]) -> set[str]:
        """The paths of the shared nodes in a walked tree that no live host's key uses and no host claims."""
        leaves = [path for path, (stat, children) in found.items() if path != self.root and not children
                  and not stat.ephemeralOwner and not was_folder(stat)
                  and is_shared_key(self.layout, zookeeper_key(path, self.prefix), self.prefix)]
        values = {}
        for path, node in zip(leaves, self.session.read_many("read the tree", [(GET_DATA, path) for path in leaves])):
            if node is not None:
                values[zookeeper_key(path, self.prefix)] = StoredKey((node[0] or b"").decode("utf-8", "replace"), 0,
                                                                     node[1].version)
        claimed = self.session.claims(self.root, [zookeeper_path(key) for key in values])
        live = sorted(zookeeper_key(path, self.prefix) for path, (stat, _) in found.items() if stat.ephemeralOwner)
        return {zookeeper_path(key) for key in values if not claimed[zookeeper_path(key)]
                and not any(keys_in(self.layout.holders(key, self.prefix, values), live))}


class ZooKeeperStore:
    """The Store on ZooKeeper: the host's session is its lease, its keys are ephemeral nodes of the session.

    Re-attaching to the saved session writes nothing. The lease id the planner sees is the session id, a key's lease
    its node's ephemeralOwner, its revision the node's version. Persistent parents are created and removed with
    the keys, in the same multi transaction, which also signals the root (see ZOOKEEPER_SIGNAL).

    A shared key is a persistent node, which outlives its writer's session; the writer claims it with an
    ephemeral node outside the root (ZOOKEEPER_CLAIMS), and its lease is that claim's session (UNCLAIMED when
    none). The live hosts' leader (ZooKeeperFleet) deletes a shared node no live key uses and no host claims.
    """

    releases = True  # letting go of a shared node deletes this session's claim on it
    tree = True
    max_reads = ZOOKEEPER_READS  # a multiRead request

    def __init__(self, settings: ZooKeeperSettings, prefix: str, ttl: Optional[int], timeout: float, layout: Layout):
        self.session = ZooKeeperSession(settings, ttl, timeout)
        self.fleet = ZooKeeperFleet(self.session, prefix, layout)
        self.layout = layout
        self.prefix = prefix
        self.root = zookeeper_path(prefix)
        self.ttl = ttl
        self.where = self.session.where
        self._owners: dict[str, int] = {}  # path -> ephemeralOwner, as the last read saw it
        self._claims: dict[str, int] = {}  # path of a shared node -> the session claiming it, as last read
        self._emptied: dict[str, int] = {}  # path -> version of the emptied folders the last read saw

    def host_lease(self, config: Config) -> int:
        """The session id (connecting, or re-attaching, on first use)."""
        return self.session.id

    def shared_lease_of(self, config: Config) -> None:
        """None: the session's claims record the shared nodes it wrote."""
        return None

    def keep_alive(self, lease_id: int) -> bool:
        """Re-attaching renewed it; False when the saved session was gone (or none was saved). A kept session
        checks in at the hosts folder (its presence node)."""
        self.session.client
        if self.session.kept:
            self.fleet.check_in()
        return self.session.kept

    def sweep_departed(self) -> None:
        """As the live hosts' leader, delete what departed hosts left (a kept session only)."""
        if self.session.kept:
            self.fleet.sweep_if_leader()

    def lease(self, lease_id: int) -> Optional[LeaseInfo]:
        """The saved session's TTL and its nodes under the root; None for a new session."""
        self.session.client
        if not self.session.kept:
            return None
        return LeaseInfo(self.session.saved.ttl,
                         tuple(zookeeper_key(path, self.prefix) for path in self.session.ephemerals(self.root)))

    def read(self, reads: Reads) -> dict[str, StoredKey]:
        """Exact keys in one multiRead request; folders (or the whole prefix) walked a level a round."""
        found = {}

        def record(path, data, stat):
            if emptied_folder(stat):  # no key, but a key put there must take its place
                self._emptied[path] = stat.version
            if not was_folder(stat):
                self._owners[path] = stat.ephemeralOwner
                found[zookeeper_key(path, self.prefix)] = StoredKey(
                    (data or b"").decode("utf-8", "replace"), stat.ephemeralOwner, stat.version)

        def record_all(paths) -> list[str]:
            """Record the nodes; those with nodes below them."""
            paths = list(paths)
            below = []
            for path, node in zip(paths, self.session.read_many("read keys", [(GET_DATA, path) for path in paths])):
                if node is not None:
                    record(path, *node)
                    below += [path] if node[1].numChildren else []
            return below

        record_all(zookeeper_path(key) for key in reads.keys)
        level = [self.root] if reads.whole_prefix else [zookeeper_path(folder.rstrip("/")) for folder in reads.folders]
        while level:
            children = self.session.read_many("read keys", [(GET_CHILDREN, path) for path in level])
            level = record_all(f"{path}/{child}" for path, names in zip(level, children) for child in names or [])
        shared = [zookeeper_path(key) for key, kv in found.items()
                  if not kv.lease and is_shared_key(self.layout, key, self.prefix)]
        self._claims.update(self.session.claims(self.root, shared))
        replaced = self.ttl is not None and self.session.kept and self.session.saved.ttl != self.ttl  # claims go too
        for path in shared:
            key, claim = zookeeper_key(path, self.prefix), self._claims[path]
            found[key] = replace(found[key], lease=UNCLAIMED if not claim or replaced else claim)
        return found

    def held(self, timed: Callable[[Mapping[str, StoredKey]], Iterable[int]]) -> Held:
        """Every node under the root and the shared nodes' claims, read as a run reads them, on a session of this
        call's own (re-attaching to the host's saved one would take it from a running sync). A key's session lives
        (ZooKeeper deletes an ephemeral node with its session) but tells no one its time left."""
        if self.session._client is None:
            self.session.start_new(self.ttl or DEFAULT_TTL)
        keys = self.read(Reads(whole_prefix=True))
        return Held(keys, {kv.lease: None for kv in keys.values() if kv.lease > 0}, "session", claims=True)

    def apply(self, plan: Plan, ttl: int) -> None:
        """The lease action (a new session for another TTL), then each batch of changes in one multi."""
        self.session.client
        if plan.lease_action.revokes:
            self._end_session()
            if not plan.lease_action.grants:
                return
            self.session.start_new(ttl)
        announce = not self.session.kept
        if announce:
            self.session.save()  # before the first write: a run that dies after it leaves nodes the next run finds
        for batch in batches(plan.changes):
            self._multi(batch)
        if announce:  # after the writes: a run refused them leaves no trace (a kept session announces later)
            self.fleet.announce()

    def revoke(self, lease_id: int) -> None:
        """Delete this host's keys and close its session (purge)."""
        if self.session.kept:
            self._end_session()

    def close(self) -> None:
        """Leave a kept session open for the next run (no write); close a session nobody will re-attach to."""
        self.session.close()

    def _end_session(self) -> list[str]:
        """Delete the session's keys (with their emptied parents, signalling the root), close the session and
        forget it; the paths deleted."""
        paths = self.session.ephemerals(self.root) if self.session.kept else []
        if paths:
            self._multi([Change(ChangeKind.REMOVE, zookeeper_key(path, self.prefix), None, None, -1)
                         for path in paths])
        self.session.end()
        return paths

    def _multi(self, batch: Sequence[Change]) -> None:
        """One multi transaction: missing parents, the changes, parents they leave empty, and the root signal."""
        client, session = self.session.client, self.session.id
        put = {zookeeper_path(c.key): c for c in batch if c.kind in (ChangeKind.ADD, ChangeKind.UPDATE)}
        removed = {zookeeper_path(c.key): c for c in batch if c.kind is ChangeKind.REMOVE}
        released = [zookeeper_path(c.key) for c in batch if c.kind is ChangeKind.RELEASE]
        if any(change.shared for change in put.values()):
            self._claims_folder()
        above_puts = {parent for path in put for parent in self._parents(path, include_root=True)}
        above_removed = {parent for path in removed for parent in self._parents(path)} - above_puts
        stats = {path: client.exists_async(path) for path in above_puts | above_removed}
        kids = {path: client.get_children_async(path) for path in above_removed}
        stats = {path: self.session.wait_optional("read parents", pending) for path, pending in stats.items()}
        kids = {path: self.session.wait_optional("read parents", pending) or [] for path, pending in kids.items()}
        ops = [("create", parent, ZOOKEEPER_FOLDER) for parent in sorted(above_puts, key=lambda p: p.count("/"))
               if stats[parent] is None]

        def claim(path: str) -> None:
            ops.append(("create", zookeeper_claim(self.root, path), b"", None, True))

        def unclaim(path: str) -> None:
            if self._claims.get(path) == session:
                ops.append(("delete", zookeeper_claim(self.root, path)))

        for path, change in sorted({**put, **removed}.items()):
            value = (change.value or "").encode()
            if change.kind is ChangeKind.REMOVE:
                ops.append(("delete", path, change.expected_mod))
                unclaim(path)
            elif change.shared:  # a persistent node, claimed by its writer
                if change.kind is ChangeKind.ADD:
                    ops.append(("create", path, value))
                else:
                    ops.append(("set_data", path, value, change.expected_mod))
                if change.kind is ChangeKind.ADD or self._claims.get(path) not in (session, None):
                    claim(path)
            elif change.kind is ChangeKind.ADD:
                if path in self._emptied:  # a departed host's emptied folder where this key goes
                    ops.append(("delete", path, self._emptied[path]))
                ops.append(("create", path, value, None, True))
            elif self._owners.get(path) == session:
                ops.append(("set_data", path, value, change.expected_mod))
            else:  # another session's node, or a persistent one: it becomes this session's
                ops.append(("delete", path, change.expected_mod))
                ops.append(("create", path, value, None, True))
        for path in released:
            unclaim(path)
        gone = set(removed)
        for parent in sorted(above_removed, key=lambda p: -p.count("/")):
            stat = stats[parent]
            if stat and was_folder(stat) and all(
                    f"{parent}/{child}" in gone for child in kids[parent]):
                gone.add(parent)
                ops.append(("delete", parent, stat.version))
        self.session.commit("write keys", ops + self.session.signal(self.root))

    def _claims_folder(self) -> None:
        """Make the root's claims folder if it is missing (as the hosts folder: anyone may add to the two above)."""
        from kazoo.security import make_acl

        client, folder = self.session.client, zookeeper_claims_folder(self.root)
        shared = [make_acl("world", "anyone", read=True, create=True)]
        if self.session.wait("claim keys", client.exists_async(folder)) is None:
            self.session.wait("claim keys", client.ensure_path_async(folder.rsplit("/", 1)[0], acl=shared))
            self.session.wait("claim keys", client.ensure_path_async(folder))

    def _parents(self, path: str, include_root: bool = False) -> list[str]:
        """The nodes above a path, below the root (and the root and above it when include_root)."""
        parts = path.split("/")
        parents = ["/".join(parts[:i]) for i in range(2, len(parts))]
        return [p for p in parents if include_root or (p.startswith(self.root + "/"))]


# --- Redis: a heartbeat per host, an index of its keys ----------------------------------------
# Three pieces, one job each: RedisConnection reaches the server (or the primary the Sentinels name) and turns
# redis-py's errors into one line; RedisFleet keeps the host's heartbeat and the root's hosts, and as the leader
# sweeps the departed; RedisStore is the Store on the two.


#: A Sentinel's port when --redis-sentinel names none.
REDIS_SENTINEL_PORT = 26379
#: Redis key of a host's index: the set of its keys. ':' is never in a prefix, so no layout's keys meet it.
REDIS_INDEX = "docker-register:hosts:{lease:016x}"
#: Redis key a host sets every run with the TTL as its expiry: its heartbeat, outside every prefix, so no reader
#: wakes. The keys under the root carry no short expiry: a host whose heartbeat ran out is swept by the leader.
REDIS_ALIVE = "docker-register:alive:{lease:016x}"
#: Per root, outside it: the set of hosts (lease ids) that registered there, whose lowest live one is the leader
#: that sweeps the others once their heartbeat ran out...
REDIS_HOSTS = "docker-register:roots:{prefix}:hosts"
#: ...and the hash of shared keys to the lease id of the host that wrote them (their claims: who may change them),
#: or REDIS_RELEASED once their writer let go of them.
REDIS_CLAIMS = "docker-register:roots:{prefix}:claims"
#: The claim of a shared key whose writer let it go while other hosts use it: docker-register's, no host's.
REDIS_RELEASED = "0"
# Nothing but the heartbeat expires: an expiry under the root, set or renewed, is a keyspace event on which Traefik's
# provider lists the whole database again, once per key. Keys that an earlier version wrote with an expiry are made
# persistent (PERSIST) by the first run that reads them. When every host of a root is dead nobody sweeps: see
# docs/backends.md.
#: Exact keys a Redis run reads in its pipeline before it reads their folders instead (each a SCAN of the
#: whole database): a pipeline takes any number, so this only bounds its size.
REDIS_READS = 2000
#: StoredKey.lease of a Redis key under the root in no claim and not in this host's index: another host's, or
#: written by hand; either way never this host's to change, and a user of the shared keys above it.
FOREIGN_LEASE = -1


def parse_redis_url(text: str) -> tuple[str, Optional[str]]:
    """Check redis://[user[:password]@]host[:port][/db] (rediss:// for TLS); return the URL without its password,
    and the password."""
    from urllib.parse import unquote, urlsplit

    flag = "--redis / REDIS_URL"
    try:
        url = urlsplit(text.strip())
        port = url.port
    except ValueError as error:
        raise UsageError(f"{flag}: {error}") from None
    if url.scheme not in ("redis", "rediss") or not url.hostname:
        raise UsageError(f"{flag}: {text.split('@')[-1]!r} is not redis://host:port/db or rediss://host:port/db")
    if url.path.strip("/") and not url.path.strip("/").isdigit() or url.query or url.fragment:
        raise UsageError(f"{flag}: the path must be a database number, like /0 (got {url.path!r})")
    user = f"{url.username}@" if url.username else ""
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    clean = f"{url.scheme}://{user}{host}:{port or 6379}/{url.path.strip('/') or '0'}"
    return clean, unquote(url.password) if url.password else None


def parse_redis_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """Check a comma-separated list of Sentinels, host[:port] each (port 26379 by default, IPv6 in brackets)."""
    sentinels = []
    for item in text.split(","):
        item = item.strip()
        match = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+))(?::(\d+))?", item)
        if not match:
            raise UsageError(f"--redis-sentinel / REDIS_SENTINELS: {item!r} is not host:port (comma-separated)")
        port = int(match.group(3) or REDIS_SENTINEL_PORT)
        if not 0 < port < 65536:
            raise UsageError(f"--redis-sentinel / REDIS_SENTINELS: port {port} in {item!r} is out of range")
        sentinels.append((match.group(1) or match.group(2), port))
    return tuple(sentinels)


def redis_index_key(lease_id: int) -> str:
    """The Redis key listing a host's keys."""
    return REDIS_INDEX.format(lease=lease_id)


def redis_alive_key(lease_id: int) -> str:
    """The Redis key of a host's heartbeat."""
    return REDIS_ALIVE.format(lease=lease_id)


def glob_escape(text: str) -> str:
    """Escape Redis glob characters, so that a SCAN pattern built on text matches text literally."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def redis_error(where: str, what: str, error: BaseException) -> RedisError:
    """One line for a redis-py error."""
    import redis
    import redis.sentinel

    if isinstance(error, redis.sentinel.MasterNotFoundError):
        text = "no sentinel answered with a primary that is up"
    elif isinstance(error, redis.exceptions.AuthenticationError):
        text = f"authentication failed ({first_line(error)})"
    elif isinstance(error, redis.exceptions.TimeoutError):
        text = "no answer in time"
    elif isinstance(error, redis.exceptions.ConnectionError):
        text = f"unreachable ({first_line(error)})"
    else:
        text = first_line(error)
    return RedisError(f"{where}: {what}: {text}")


def redis_sentinel_where(settings: RedisSettings) -> str:
    """How errors name a primary found through Sentinels."""
    sentinels = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in settings.sentinels)
    return f"redis primary {settings.master} via sentinels {sentinels}"


def redis_sentinel_client(settings: RedisSettings, bounded: dict, tls: dict):
    """A client of the primary the Sentinels name now, asked again on each new connection; the URL gives only the
    user, database and TLS (rediss://), which the Sentinels' own connections share (their password is not sent)."""
    from urllib.parse import urlsplit

    from redis.sentinel import Sentinel

    url = urlsplit(settings.url)
    ssl = dict(ssl=True, **tls) if url.scheme == "rediss" else {}
    sentinel = Sentinel(list(settings.sentinels), sentinel_kwargs={**bounded, **ssl}, **bounded, **ssl)
    return sentinel.master_for(settings.master, username=url.username, password=settings.password,
                               db=int(url.path.strip("/") or 0))


class RedisConnection:
    """A redis-py client of the server, or of the primary the Sentinels name now: each request bounded by the
    timeout and tried once, its failure one line (Conflict for a transaction whose watched keys moved)."""

    def __init__(self, settings: RedisSettings, timeout: float):
        redis = backend_module("redis")
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        tls = dict(ssl_ca_certs=settings.ca, ssl_certfile=settings.cert, ssl_keyfile=settings.key)
        tls = tls if settings.url.startswith("rediss:") else {}
        bounded = dict(socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
        if settings.sentinels:
            self.where = redis_sentinel_where(settings)
            self.client = redis_sentinel_client(settings, bounded, tls)
        else:
            self.where = f"redis at {settings.url}"
            self.client = redis.Redis.from_url(settings.url, password=settings.password, **bounded, **tls)

    def call(self, what: str, action):
        """Run one request (or pipeline) and turn redis-py's errors into one line."""
        import redis

        try:
            return action()
        except redis.exceptions.WatchError:
            raise Conflict("a key changed while this run was writing") from None
        except redis.exceptions.RedisError as error:
            raise redis_error(self.where, what, error) from None

    def scan(self, patterns: Iterable[str]) -> list[str]:
        """The keys matching the SCAN patterns."""
        return [key.decode("utf-8", "replace") for pattern in patterns for key in self.call(
            "find keys", lambda: list(self.client.scan_iter(match=pattern, count=1000)))]

    def read_root(self, prefix: str, *reads: Callable[[Any], Any]) -> tuple[dict[str, tuple[bytes, int]], list]:
        """Every string key under the root (SCAN) with its value and expiry in ms (-1: none), in one pipelined round
        with the caller's reads (each given the pipeline; their replies returned); keys of other types are skipped."""
        keys = sorted(self.scan([glob_escape(prefix + "/") + "*"]))

        def fetch():
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            for read in reads:
                read(pipe)
            return pipe.execute(raise_on_error=False)

        replies = self.call("read keys", fetch)
        extra = replies[2 * len(keys):]
        for reply in extra:
            if isinstance(reply, Exception):
                raise redis_error(self.where, "read keys", reply)
        return {key: (value, expiry) for key, value, expiry in zip(keys, replies[0::2], replies[1::2])
                if value is not None and not isinstance(value, Exception)}, extra

    def close(self) -> None:
        """Close the connections."""
        self.client.close()


class RedisFleet:
    """The hosts of one root: each host's heartbeat (REDIS_ALIVE, set every run with the TTL as its expiry) and the
    root's set of hosts (REDIS_HOSTS). The leader, the lowest lease id whose heartbeat lives, deletes the keys of
    the hosts whose heartbeat ran out, and the shared keys no live host claims or uses, as ZooKeeper's leader
    sweeps."""

    def __init__(self, connection: RedisConnection, prefix: str, layout: Layout, ttl: int, lease_id: int):
        self.connection = connection
        self.client = connection.client
        self.prefix = prefix
        self.layout = layout
        self.ttl = ttl
        self.lease_id = lease_id
        self.alive = redis_alive_key(lease_id)
        self.hosts = REDIS_HOSTS.format(prefix=prefix)
        self.claims = REDIS_CLAIMS.format(prefix=prefix)
        self._others: set[int] = set()  # the other hosts of the root, as the last beat read them

    def beat(self, *reads: Callable[[Any], Any]) -> list:
        """Set the heartbeat and read the root's hosts in one pipelined round trip with the caller's reads (each
        given the pipeline; their replies are returned); join the root's hosts if new (and make their set persistent
        where an earlier version gave it an expiry)."""
        def send():
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.alive, self.ttl, px=self.ttl * 1000)
            pipe.smembers(self.hosts)
            pipe.pttl(self.hosts)
            for read in reads:
                read(pipe)
            return pipe.execute()

        _, hosts, expiry, *replies = self.connection.call("read index", send)
        leases = {int(h, 16) for h in hosts if re.fullmatch(rb"[0-9a-f]{1,16}", h)}
        self._others = leases - {self.lease_id}
        if self.lease_id not in leases:
            self.connection.call("join the root's hosts", self._join)
        elif expiry >= 0:
            self.connection.call("persist the root's hosts", lambda: self.client.persist(self.hosts))
        return replies

    def _join(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(self.hosts, f"{self.lease_id:x}")
        pipe.persist(self.hosts)
        pipe.execute()

    def live(self, leases: Iterable[str]) -> set[str]:
        """The hosts (lease ids in hex) among leases whose heartbeat lives, in one MGET."""
        names = sorted(set(leases))
        if not names:
            return set()
        beats = self.connection.call("read heartbeats", lambda: self.client.mget(
            [redis_alive_key(int(name, 16)) for name in names]))
        return {name for name, beat in zip(names, beats) if beat is not None}

    def sweep_if_leader(self) -> None:
        """As the leader of the root's hosts the last beat read, sweep those whose heartbeat ran out."""
        self._tend(self._others)

    def _tend(self, others: set[int]) -> None:
        """As the leader (no live host among others has a lower lease id), sweep the others whose heartbeat ran
        out."""
        live = self.live(f"{lease:x}" for lease in others)
        dead = sorted(lease for lease in others if f"{lease:x}" not in live)
        if dead and all(self.lease_id < int(name, 16) for name in live):
            self._sweep(dead)

    def _sweep(self, dead: Sequence[int]) -> None:
        """Delete the dead hosts' own keys and indexes, then the shared keys no live host claims or uses; the dead
        leave the root's hosts only once all that is done (a sweep cut short is tried again on the next run)."""
        swept = []
        for lease in dead:
            try:
                if self.connection.call("sweep a departed host", lambda: self._forget(lease)):
                    swept.append(lease)
            except Conflict:
                pass  # its heartbeat came back, or another leader swept it meanwhile: the next run looks again
        try:
            self.connection.call("sweep shared keys", self._sweep_shared)
        except Conflict:
            return  # a key moved meanwhile: the next run of the leader looks again
        if swept:
            self.connection.call("sweep a departed host",
                                 lambda: self.client.srem(self.hosts, *(f"{lease:x}" for lease in swept)))

    def _forget(self, lease: int) -> bool:
        """Delete a dead host's own keys and its index in one MULTI; False (nothing done) if its heartbeat came back."""
        index, alive = redis_index_key(lease), redis_alive_key(lease)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(alive, index)
            if pipe.exists(alive):
                return False
            members = [member.decode("utf-8", "replace") for member in pipe.smembers(index)]
            own = [key for key in members if key.startswith(self.prefix + "/") and self.layout.fits(key, self.prefix)
                   and not self.layout.is_shared(key, self.prefix)]
            pipe.multi()
            pipe.delete(index, *own)
            pipe.execute()
        return True

    def _sweep_shared(self) -> None:
        """Delete the shared keys under the root that no live host claims and no host's key uses (a shared key in no
        claim is written by hand and stays, unless an earlier version's expiry marks it), in one MULTI under WATCH of
        them and the claims."""
        found, (claims,) = self.connection.read_root(self.prefix, lambda pipe: pipe.hgetall(self.claims))
        claims = {k.decode("utf-8", "replace"): v.decode("ascii", "replace") for k, v in claims.items()}
        live = self.live(claims.values())
        stored = {key: StoredKey(value.decode("utf-8", "replace"), FOREIGN_LEASE, 0)
                  for key, (value, _) in found.items()}
        users = sorted(key for key in stored if self.layout.fits(key, self.prefix)
                       and not self.layout.is_shared(key, self.prefix))
        unused = [key for key, (_, expiry) in found.items() if is_shared_key(self.layout, key, self.prefix)
                  and (key in claims or expiry >= 0) and claims.get(key) not in live
                  and not any(keys_in(self.layout.holders(key, self.prefix, stored), users))]
        if not unused:
            return
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(self.claims, *unused)
            now = pipe.hmget(self.claims, unused)
            if [v.decode("utf-8", "replace") if v is not None else None for v in pipe.mget(unused)] != [
                    stored[key].value for key in unused] or [c and c.decode("ascii") for c in now] != [
                    claims.get(key) for key in unused]:
                raise Conflict("a shared key changed while the leader swept")
            pipe.multi()
            pipe.delete(*unused)
            pipe.hdel(self.claims, *unused)
            pipe.execute()


class RedisStore:
    """The Store on Redis, which has no leases: liveness is the host's heartbeat (RedisFleet), outside every prefix;
    nothing else expires: the keys under the root carry no expiry that would wake a reader.

    A host's index (a set outside every prefix) lists its keys; the root's claims (a hash) name the writer of each
    shared key, who alone changes it. A run with nothing to change sets its heartbeat and reads: no key under the
    root is written, so no keyspace event wakes a reader. Changes go in MULTI transactions with the index and the
    claims, guarded by WATCH.
    """

    releases = True  # a shared key another host uses leaves this host's index and claims
    tree = False
    max_reads = REDIS_READS  # one pipeline takes any number; a folder is a SCAN of the whole database

    def __init__(self, settings: RedisSettings, prefix: str, ttl: int, timeout: float, lease_id: int,
                 layout: Layout):
        self.connection = RedisConnection(settings, timeout)
        self.fleet = RedisFleet(self.connection, prefix, layout, ttl, lease_id)
        # The same settings as the fleet's, kept here too: the store's operations read them without reaching
        # into the fleet, whose job (heartbeat, hosts, sweep) is another.
        self.client = self.connection.client
        self.where = self.connection.where
        self.prefix = prefix
        self.layout = layout
        self.ttl = ttl
        self.lease_id = lease_id
        self.index = redis_index_key(lease_id)
        self.claims = REDIS_CLAIMS.format(prefix=prefix)
        self._members: Optional[set[str]] = None  # the index as this run last saw it
        self._expiries: dict[str, int] = {}  # key -> milliseconds of expiry left, as this run read them
        self._claimed: dict[str, Optional[str]] = {}  # shared key -> its claim as this run read it

    def host_lease(self, config: Config) -> int:
        """The lease id derived from the host IP and the prefix, as etcd's: it names the index and the heartbeat."""
        return self.lease_id

    def shared_lease_of(self, config: Config) -> None:
        """None: the index and the claims record the shared keys this host wrote."""
        return None

    def keep_alive(self, lease_id: int) -> bool:
        """Beat (RedisFleet.beat: the one write of a run with nothing to change, outside the root), reading the index
        in the same round trip; False when there is no index."""
        members, *expiries = self.fleet.beat(lambda pipe: pipe.smembers(self.index),
                                             lambda pipe: pipe.pttl(self.index), lambda pipe: pipe.pttl(self.claims))
        self._members = {m.decode("utf-8", "replace") for m in members}
        self._expiries = dict(zip((self.index, self.claims), expiries))
        return bool(self._members)

    def sweep_departed(self) -> None:
        """As the live hosts' leader, delete what the hosts whose heartbeat ran out left."""
        self.fleet.sweep_if_leader()

    def lease(self, lease_id: int) -> Optional[LeaseInfo]:
        """The index as the lease: the TTL this store keeps it at, and the keys it lists."""
        if self._members is None:
            self._members = {m.decode("utf-8", "replace")
                             for m in self.connection.call("read index", lambda: self.client.smembers(self.index))}
        return LeaseInfo(self.ttl, tuple(sorted(self._members))) if self._members else None

    def read(self, reads: Reads) -> dict[str, StoredKey]:
        """Values, expiries, index membership and claims of the keys (folders found with SCAN) in one pipelined
        round, and the heartbeats of the hosts claiming shared keys in one more."""
        patterns = [glob_escape(self.prefix + "/") + "*"] if reads.whole_prefix else [
            glob_escape(folder) + "*" for folder in reads.folders]
        keys = sorted(set(reads.keys) | set(self.connection.scan(patterns)))
        if not keys:
            return {}
        shared = [key for key in keys if is_shared_key(self.layout, key, self.prefix)]

        def fetch():
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            pipe.smismember(self.index, keys)
            pipe.hmget(self.claims, shared or [""])
            return pipe.execute(raise_on_error=False)

        replies = self.connection.call("read keys", fetch)
        for reply in replies[-2:]:
            if isinstance(reply, Exception):
                raise redis_error(self.where, "read keys", reply)
        claims = {key: claim.decode("ascii", "replace") if claim else None for key, claim in zip(shared, replies[-1])}
        self._claimed.update(claims)
        live = self.fleet.live({claim for claim in claims.values() if claim})
        found = {}
        for key, value, expiry, mine in zip(keys, replies[0:-2:2], replies[1:-2:2], replies[-2]):
            if value is None or isinstance(value, Exception):
                continue  # gone, or not a string (not a key of any layout)
            self._expiries[key] = expiry if isinstance(expiry, int) else -1
            found[key] = StoredKey(value.decode("utf-8", "replace"),
                                   self._lease_of(key, bool(mine), self._expiries[key], claims.get(key), live), 0)
        return found

    def held(self, timed: Callable[[Mapping[str, StoredKey]], Iterable[int]]) -> Held:
        """The keys under the root (SCAN) with their values and expiries and the root's hosts and claims in one
        pipelined round, then each host's index and heartbeat in one more: a key lives on the host whose index
        lists it, a shared key on the host that claims it while its heartbeat lives (the leader sweeps the rest)."""
        stored, (hosts, claims) = self.connection.read_root(
            self.prefix, lambda pipe: pipe.smembers(self.fleet.hosts), lambda pipe: pipe.hgetall(self.claims))
        leases = sorted(int(h, 16) for h in hosts if re.fullmatch(rb"[0-9a-f]{1,16}", h))

        def hosts_of():
            pipe = self.client.pipeline(transaction=False)
            for lease in leases:
                pipe.smembers(redis_index_key(lease))
                pipe.pttl(redis_alive_key(lease))
            return pipe.execute()

        indexes = self.connection.call("read the hosts", hosts_of) if leases else []
        live = {lease: beat / 1000 if beat >= 0 else None for lease, beat in zip(leases, indexes[1::2]) if beat != -2}
        owner = {member.decode("utf-8", "replace"): lease for lease, members in zip(leases, indexes[0::2])
                 for member in members}
        claimed = {k.decode("utf-8", "replace"): int(v, 16) for k, v in claims.items() if re.fullmatch(
            rb"[0-9a-f]{1,16}", v)}
        found = {}
        for key, (value, expiry) in stored.items():
            # As a run reads it (_lease_of), but a key in no index is no host's, whatever its expiry.
            if is_shared_key(self.layout, key, self.prefix) and key in claimed:
                lease = claimed[key] if claimed[key] in live else UNCLAIMED
            elif key in owner:
                lease = owner[key]
            else:
                lease = UNCLAIMED if is_shared_key(self.layout, key, self.prefix) and expiry >= 0 else 0
            found[key] = StoredKey(value.decode("utf-8", "replace"), lease, 0)
        return Held(found, live, "index", claims=True)

    def _lease_of(self, key: str, mine: bool, expiry: int, claim: Optional[str], live: set[str]) -> int:
        """A key's lease for the planner: this host's for its own keys and claims; a shared key's writer while its
        heartbeat lives, else UNCLAIMED; FOREIGN_LEASE for any other key; 0 for a shared key no one claims (written
        by hand, unless an earlier version's expiry says it let go of it)."""
        shared = is_shared_key(self.layout, key, self.prefix)
        if shared and claim:
            return self.lease_id if claim == f"{self.lease_id:x}" else int(claim, 16) if claim in live else UNCLAIMED
        if mine:
            return self.lease_id  # an own key, or a shared one written before shared keys had claims
        if shared:
            return UNCLAIMED if expiry >= 0 else 0
        return FOREIGN_LEASE

    def apply(self, plan: Plan, ttl: int) -> None:
        """Each batch of changes in one MULTI with the index and the claims, after checking under WATCH that the
        keys and claims still are what the plan was made from; then make persistent what this host keeps that an
        earlier version wrote with an expiry (once: a run with nothing to change writes nothing under the root)."""
        if plan.lease_action.revokes:
            self.revoke(plan.lease_id)
        for batch in batches(plan.changes):
            self.connection.call("write keys", lambda: self._transaction(batch))
        kept = (self._members or set()) | {key for key, _ in plan.renewals} | {self.index, self.claims}
        expiring = [key for key in sorted(kept - {change.key for change in plan.changes})
                    if self._expiries.get(key, -1) >= 0]
        if expiring:
            self.connection.call("persist keys", lambda: self._persist(expiring))

    def _persist(self, keys: Sequence[str]) -> None:
        """Take each key's expiry away (PERSIST: no value rewritten); a shared key an earlier version released (no
        claim, not in this host's index: its expiry was all that marked it docker-register's) gets the released
        claim, which marks it now."""
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.persist(key)
            if is_shared_key(self.layout, key, self.prefix) and not self._claimed.get(key) and \
                    key not in (self._members or set()):
                pipe.hsetnx(self.claims, key, REDIS_RELEASED)
        pipe.execute()
        self._expiries.update({key: -1 for key in keys})

    def _transaction(self, batch: Sequence[Change]) -> None:
        keys, lease = [change.key for change in batch], f"{self.lease_id:x}"
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(self.index, self.claims, *keys)
            values = pipe.mget(keys)
            mine = pipe.smismember(self.index, keys)
            claims = pipe.hmget(self.claims, keys)
            for change, value, listed, claim in zip(batch, values, mine, claims):
                claim = claim.decode("ascii", "replace") if claim else None
                if (value.decode("utf-8", "replace") if value is not None else None) != change.old_value:
                    raise Conflict(f"{change.key} changed since it was read")
                if change.shared and change.kind is not ChangeKind.ADD and claim != self._claimed.get(change.key):
                    raise Conflict(f"{change.key} was claimed since it was read")
                if not change.shared and change.kind is ChangeKind.REMOVE and not listed:
                    raise Conflict(f"{change.key} left this host's index since it was read")
            pipe.multi()
            claimed = {}  # shared key -> its claim after the transaction
            for change in batch:
                if change.kind is ChangeKind.REMOVE:
                    pipe.delete(change.key)
                    pipe.srem(self.index, change.key)
                    if change.shared:
                        pipe.hdel(self.claims, change.key)
                        claimed[change.key] = None
                elif change.kind is ChangeKind.RELEASE:
                    pipe.srem(self.index, change.key)
                    if self._claimed.get(change.key) == lease:
                        pipe.hset(self.claims, change.key, REDIS_RELEASED)
                        claimed[change.key] = REDIS_RELEASED
                else:
                    pipe.set(change.key, change.value)
                    pipe.sadd(self.index, change.key)
                    if change.shared:
                        pipe.hset(self.claims, change.key, lease)
                        claimed[change.key] = lease
            pipe.execute()
        self._claimed.update(claimed)

    def revoke(self, lease_id: int) -> None:
        """Delete the host's own keys the index lists, the index, the heartbeat and its claims in one MULTI (purge):
        the host is then a departed one to the leader. The shared keys it wrote stay for the hosts that use them,
        and the leader sweeps those none uses."""
        lease = f"{self.lease_id:x}"

        def delete():
            with self.client.pipeline(transaction=True) as pipe:
                pipe.watch(self.index, self.claims)
                members = [member.decode("utf-8", "replace") for member in pipe.smembers(self.index)]
                shared = [member for member in members if is_shared_key(self.layout, member, self.prefix)]
                claims = pipe.hmget(self.claims, shared) if shared else []
                pipe.multi()
                pipe.delete(self.index, self.fleet.alive, *(member for member in members if member not in shared))
                claimed = [key for key, claim in zip(shared, claims) if claim and claim.decode("ascii") == lease]
                if claimed:
                    pipe.hset(self.claims, mapping=dict.fromkeys(claimed, REDIS_RELEASED))
                pipe.execute()

        for attempt in range(MAX_ATTEMPTS):
            try:
                self.connection.call("delete keys", delete)
                break
            except Conflict:
                if attempt == MAX_ATTEMPTS - 1:
                    raise RedisError(f"{self.where}: delete keys: the index kept changing") from None
        self._members = set()

    def close(self) -> None:
        """Close the connections."""
        self.connection.close()


# ---------------------------------------------------------------------------
# Orchestration: gather -> plan -> apply, on the adapters it is given
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a run did (or, in a dry run, would do)."""

    config: Config
    plan: Plan
    skips: tuple[Skip, ...]
    dry_run: bool
    seconds: float
    #: Ids of the containers the pass saw running.
    running: frozenset[str] = frozenset()
    #: Container ports the pass registered.
    registrations: int = 0


@dataclass(frozen=True)
class Purged:
    """What purge removed."""

    lease_id: int
    keys: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class RunResult:
    """A run or pass that ended, as the metrics see it: when, how long, and what it did or why it failed."""

    ended: float  # unix time
    seconds: float
    #: What it did; None when it failed (error says why) or, with no error, found another run holding the lock.
    outcome: Optional[Outcome] = None
    error: Optional[RegisterError] = None
    #: sync --every: what started the pass, "interval" or "event"; with --events, whether Docker's stream was up.
    trigger: Optional[str] = None
    events_up: Optional[bool] = None


def current_registrations(docker: ContainerSource, config: Config, draining: frozenset[str] = frozenset()
                          ) -> tuple[list[Registration], list[Skip], frozenset[str]]:
    """List the running containers: registrations, skip notes, and the ids seen running."""
    # The container list goes out of scope here, so its memory is free again before gRPC starts.
    containers = docker.running_containers()
    if config.host_ip_detected:
        check_detected_ip(config.host_ip, containers)
    exposed = {c["Id"]: docker.exposed_ports(c["Id"]) for c in containers if on_host_network(c) and c.get("Id")}
    registrations, skips = registrations_from(containers, config.host_ip, config.internal, config.network,
                                              exposed, draining)
    return registrations, skips, frozenset(str(c.get("Id", "")) for c in containers)


def current_lease(store: Store, config: Config, renew: bool) -> tuple[LeaseState, tuple[str, ...]]:
    """Keep the lease alive and, as the leader, sweep what departed hosts left (or, when not renewing, only look
    at the lease); its state and its keys."""
    lease_id = store.host_lease(config)
    if renew:
        alive = store.keep_alive(lease_id)
        store.sweep_departed()
        if not alive:
            return LeaseState.MISSING, ()
    info = store.lease(lease_id)
    return lease_state_of(info, config.ttl), info.keys if info else ()


def current_plan(store: Store, desired: Desired, config: Config, renew: bool) -> Plan:
    """Read the lease, the keys on it and what else the plan needs; plan against them."""
    return plan_against(store, desired, config, *current_lease(store, config, renew))


def plan_against(store: Store, desired: Desired, config: Config, lease_state: LeaseState,
                 lease_keys: Sequence[str]) -> Plan:
    """Read what a plan needs besides the lease (a second read only when a value names more), and plan."""
    if store.tree:
        desired = leaves_only(desired)
    lease_id, shared_lease = store.host_lease(config), store.shared_lease_of(config)
    reads = reads_for(desired, lease_keys, config.prefix, config.layout, store.max_reads)
    stored = store.read(reads)
    more = more_reads_for(desired, stored, lease_id, reads, config.prefix, config.layout, store.max_reads,
                          shared_lease)
    if more is not None:  # only when a shared key may go, and its holders are named by a value just read
        stored.update(store.read(more))
    return plan_changes(desired, stored, lease_id, lease_state, config.prefix, config.layout, shared_lease,
                        store.releases)


def reconcile(config: Config, docker: ContainerSource, store: Store, dry_run: bool,
              draining: frozenset[str] = frozenset()) -> Outcome:
    """One pass: list containers, plan against the store, apply unless dry-run; re-plan when a key moved."""
    started = time.monotonic()
    registrations, skips, running = current_registrations(docker, config, draining)
    desired = desired_keys(registrations, config)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        plan = current_plan(store, desired, config, renew=not dry_run)
        if dry_run:
            break
        try:
            store.apply(plan, config.ttl)
            break
        except Conflict:
            if attempt == MAX_ATTEMPTS:
                raise StoreError(f"{store.where}: keys kept changing under this run; "
                                 "is another docker-register writing for this host?") from None
    return Outcome(config, plan, tuple(skips), dry_run, time.monotonic() - started, running, len(registrations))


def locked_reconcile(config: Config, docker: ContainerSource, store: Store, dry_run: bool,
                     draining: frozenset[str] = frozenset(), clock: Clock = CLOCK) -> Optional[Outcome]:
    """Reconcile while holding the host's lock; None when another run held it too long. A dry run needs no lock."""
    if dry_run:
        return reconcile(config, docker, store, dry_run=True, draining=draining)
    with run_lock(config.lock_file, wait=config.timeout, clock=clock) as held:
        return reconcile(config, docker, store, dry_run=False, draining=draining) if held else None


def purge(config: Config, store: Store) -> Purged:
    """Delete this host's keys by revoking its lease, which removes them all at once and no other host's.

    Shared keys live on their own leases (or claims): the hosts that still want them keep them alive, and
    those no host wants expire within a TTL, so a consumer first sees this host's servers go, never an empty
    root. Shared keys written on the host's lease before they had leases of their own are moved onto one.
    """
    started = time.monotonic()
    lease_state, lease_keys = current_lease(store, config, renew=False)
    lease_id = store.host_lease(config)
    if lease_state is LeaseState.MISSING:
        return Purged(lease_id, (), time.monotonic() - started)
    # The lease exists, whatever TTL it was granted with: what it holds counts (purge needs no TTL).
    plan = plan_against(store, Desired({}, {}), config, LeaseState.ALIVE, lease_keys)
    moved = tuple(change for change in plan.changes if change.kind is ChangeKind.UPDATE)
    if moved:
        try:
            store.apply(Plan(plan.lease_id, LeaseAction.KEEP, moved, 0, grants=plan.grants), config.ttl)
        except Conflict:
            moved = ()  # a key moved meanwhile: it goes with the lease, and the hosts using it put it back
    kept = {change.key for change in moved} | {key for key in lease_keys if store.releases and is_shared_key(
        config.layout, key, config.prefix)}  # a store that records shared keys keeps them on revoke
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            store.revoke(lease_id)
            break
        except Conflict:  # another run of this host wrote meanwhile (ZooKeeper's guarded deletes): again
            if attempt == MAX_ATTEMPTS:
                raise StoreError(f"{store.where}: keys kept changing while this host's were deleted; "
                                 "is another docker-register writing for this host?") from None
    return Purged(lease_id, tuple(sorted(set(lease_keys) - kept)), time.monotonic() - started)


def list_keys(config: Config, store: Store, wanted: Optional[str] = None,
              docker: Optional[ContainerSource] = None) -> Listing:
    """Read what the store holds under the prefix once (the time left only of the leases shown) and list it with
    its flags; given this host's Docker, also what sync would note for this host against it."""
    held = store.held(lambda keys: listed_leases(keys, config.prefix, config.layout, wanted))
    notes = host_notes(config, docker, store, held) if docker is not None else ()
    return listing(held, config.prefix, config.layout, wanted, notes)


def host_notes(config: Config, docker: ContainerSource, store: Store, held: Held) -> tuple[str, ...]:
    """The notes sync's planner makes for this host's containers against what the store holds (a shared key
    another host holds with another value, a name two containers give, ...): the plan itself is not used."""
    registrations, skips, _ = current_registrations(docker, config)
    desired = desired_keys(registrations, config)
    if store.tree:
        desired = leaves_only(desired)
    lease_id = lease_holding(desired.own, held.keys, config.lease_id)
    plan = plan_changes(desired, held.keys, lease_id, LeaseState.ALIVE, config.prefix, config.layout,
                        store.shared_lease_of(config), store.releases)
    return tuple(f"skip {skip.container}: {skip.reason}" for skip in skips if not skip.quiet) + plan.notes


@dataclass
class Adapters:
    """The Docker source and store one run works with."""

    docker: ContainerSource
    store: Store
    closers: tuple[Callable[[], None], ...] = ()

    def close(self) -> None:
        """Close what was opened for this run."""
        for close in self.closers:
            close()


def close_quietly(adapters: Optional[Adapters]) -> None:
    """Close adapters after a failure; a second failure while closing changes nothing."""
    if adapters is not None:
        with contextlib.suppress(Exception):
            adapters.close()
    return None


class Triggers:
    """What Docker's events tell the pass loop: run a pass now, and which containers are being stopped."""

    def __init__(self, clock: Clock = CLOCK):
        self.clock = clock
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._draining: dict[str, float] = {}  # container id -> when its stop began
        self.events_up: Optional[bool] = None  # whether Docker's event stream is open; None: not followed

    def note(self, effect: EventEffect, container_id: str) -> None:
        """Take in one event's effect."""
        if effect is EventEffect.NONE:
            return
        with self._lock:
            if effect is EventEffect.DRAIN:
                self._draining.setdefault(container_id, self.clock.monotonic())
            elif effect is EventEffect.UNDRAIN:
                self._draining.pop(container_id, None)
        self.wake.set()

    def draining(self) -> frozenset[str]:
        """The containers being stopped."""
        with self._lock:
            return frozenset(self._draining)

    def forget_gone(self, running: frozenset[str], listed_at: float) -> None:
        """Stop draining containers that a list taken after their stop began no longer shows: they are gone."""
        with self._lock:
            for container_id, since in list(self._draining.items()):
                if since < listed_at and container_id not in running:
                    del self._draining[container_id]


def follow_events(open_source: Callable[[], ContainerSource], triggers: Triggers, stop: threading.Event,
                  say: Callable[[str], None], clock: Clock = CLOCK) -> None:
    """Feed Docker's events to the triggers until stop; a broken stream is retried with a growing pause,
    said once when it breaks and once when it is back."""
    backoff, broken = 0.5, False
    while not stop.is_set():
        try:
            source = open_source()
            try:
                events = source.events()
                triggers.events_up = True
                if broken:
                    say("docker events: stream is back")
                    triggers.wake.set()  # events may have been missed while it was down
                    broken, backoff = False, 0.5
                for event in events:
                    triggers.note(*event_effect(event))
                    if stop.is_set():
                        return
            finally:
                source.close()
        except RegisterError as error:
            triggers.events_up = False
            if not broken:
                say(f"{error}; passes go on every interval, reconnecting")
                broken = True
        clock.wait(stop, backoff)
        backoff = min(backoff * 2, MAX_EVENTS_BACKOFF)


def follow_stops(open_source: Callable[[], ContainerSource], triggers: Triggers, stop: threading.Event,
                 period: float = STOP_POLL_SECONDS, clock: Clock = CLOCK) -> None:
    """On an engine that announces no stop (Podman), list all containers every period until stop and drain each
    one newly in the state "stopping"; on Docker, whose `kill` event does that, return after asking its name. A failed
    list is tried again next period (follow_events and the passes say that the engine is down)."""
    source: Optional[ContainerSource] = None
    engine: Optional[str] = None
    before: frozenset[str] = frozenset()
    try:
        while not stop.is_set():
            try:
                source = source or open_source()
                if engine is None:
                    engine = source.engine_name()
                    if announces_stops(engine):
                        return
                stopping = stopping_of(source.all_containers())
                for effect, container_id in stop_effects(before, stopping):
                    triggers.note(effect, container_id)
                before = stopping
            except RegisterError:
                if source is not None:
                    with contextlib.suppress(Exception):
                        source.close()
                source = None
            clock.wait(stop, period)
    finally:
        if source is not None:
            with contextlib.suppress(Exception):
                source.close()


def settle(triggers: Triggers, stop: threading.Event, clock: Clock = CLOCK) -> None:
    """Wait out a burst of events: until none came for COALESCE_SECONDS, at most COALESCE_MAX_SECONDS."""
    first = last = clock.monotonic()
    while not stop.is_set():
        now = clock.monotonic()
        if now - last >= COALESCE_SECONDS or now - first >= COALESCE_MAX_SECONDS:
            return
        if clock.wait(triggers.wake, 0.05):
            triggers.wake.clear()
            last = clock.monotonic()


def sync_every(config: Config, connect: Callable[[], "Adapters"], interval: float, report: Callable,
               stop: threading.Event, triggers: Optional[Triggers] = None, clock: Clock = CLOCK,
               observe: Callable[[RunResult], None] = lambda result: None, *,
               report_failure: Callable[[RegisterError], None]) -> int:
    """Reconcile every interval seconds until stop is set, and soon after an event when triggers are given;
    a pass's outcome goes to report, a failed pass to report_failure (not fatal). Each pass that the loop goes
    on after is handed to observe.

    The adapters are kept from pass to pass and opened afresh after a failure (a failed etcd endpoint
    stays marked failed in its client).
    """
    triggers = triggers or Triggers(clock)
    adapters = None
    trigger = "interval"
    try:
        while not stop.is_set():
            started = clock.monotonic()
            triggers.wake.clear()
            outcome, failure = None, None
            try:
                adapters = adapters or connect()
                outcome = locked_reconcile(config, adapters.docker, adapters.store, False, triggers.draining(), clock)
                if outcome is not None:
                    triggers.forget_gone(outcome.running, started)
                report(outcome)
            except UsageError:
                raise
            except RegisterError as error:
                report_failure(error)
                adapters = close_quietly(adapters)
                failure = error
            observe(RunResult(time.time(), clock.monotonic() - started, outcome, failure, trigger, triggers.events_up))
            trigger = "interval"
            next_pass = started + interval
            while not stop.is_set() and clock.monotonic() < next_pass:
                if clock.wait(triggers.wake, max(0.0, min(0.5, next_pass - clock.monotonic()))):
                    settle(triggers, stop, clock)
                    trigger = "event"
                    break
    finally:
        close_quietly(adapters)
    return EXIT_OK


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def summary_line(outcome: Outcome) -> str:
    """The one line a normal run prints."""
    plan = outcome.plan
    verb = "would add" if outcome.dry_run else "added"
    counts = (f"{verb} {plan.count(ChangeKind.ADD)}, updated {plan.count(ChangeKind.UPDATE)}, "
              f"removed {plan.count(ChangeKind.REMOVE)}, unchanged {plan.unchanged}")
    return f"{counts} in {outcome.seconds:.3f}s" + (" (dry run, nothing written)" if outcome.dry_run else "")


def outcome_json(outcome: Outcome) -> dict:
    """The plan or result as a JSON-ready dict."""
    plan = outcome.plan
    return {
        "dry_run": outcome.dry_run,
        "added": plan.count(ChangeKind.ADD),
        "updated": plan.count(ChangeKind.UPDATE),
        "removed": plan.count(ChangeKind.REMOVE),
        "unchanged": plan.unchanged,
        "seconds": round(outcome.seconds, 4),
        "host_ip": outcome.config.host_ip,
        "prefix": outcome.config.prefix,
        "lease": {"id": f"{plan.lease_id:x}", "ttl": outcome.config.ttl, "action": plan.lease_action.value},
        "changes": [
            {"action": c.kind.value, "key": c.key, "value": c.value, "old_value": c.old_value}
            for c in plan.changes
        ],
        "skipped": [{"container": s.container, "reason": s.reason} for s in outcome.skips],
        "notes": list(plan.notes),
    }


def notes_of(outcome: Outcome) -> list[str]:
    """Lines worth an operator's attention: loud skips and planner notes."""
    return [f"skip {s.container}: {s.reason}" for s in outcome.skips if not s.quiet] + list(outcome.plan.notes)


def print_dry_run(outcome: Outcome) -> None:
    """Show the plan as a rich table; with nothing to change, say so (and show only the skipped containers)."""
    from rich.console import Console
    from rich.table import Table

    nothing = not outcome.plan.changes and outcome.plan.lease_action is LeaseAction.KEEP
    if nothing and not outcome.skips:
        print("nothing to change")
        return
    table = Table(title=f"docker-register plan (lease {outcome.plan.lease_id:x}: {outcome.plan.lease_action.value})")
    for column in ("action", "key", "value"):
        table.add_column(column, overflow="fold")
    for change in outcome.plan.changes:
        value = {ChangeKind.ADD: change.value, ChangeKind.REMOVE: change.old_value,
                 ChangeKind.UPDATE: f"{change.old_value} -> {change.value}"}[change.kind]
        table.add_row(change.kind.value, change.key, value)
    for skip in outcome.skips:
        table.add_row("skip", skip.container, skip.reason)
    Console(width=max(100, Console().width)).print(table)
    if nothing:
        print("nothing to change")


def host_text(host: int, listing: Listing) -> str:
    """A host as `list` names it: its lease (session, index) id, and its IP where known."""
    ip = listing.addresses.get(host)
    return f"{listing.holder} {host:x}" + (f" ({ip})" if ip else "")


def expiry_text(expires: Optional[float]) -> str:
    """Seconds left, or - where the store does not tell."""
    return "-" if expires is None else f"{expires:.0f}s"


def listed_host(entry: Listed, listing: Listing) -> str:
    """Who holds a listed key: a server's host; a shared key's writer and how many live hosts use it."""
    if not entry.shared:
        return host_text(entry.lease, listing) if entry.lease > 0 else "none"
    writer = f"written by {host_text(entry.host, listing)}" if entry.host else "writer gone"
    return f"{writer}, used by {len(entry.users)} host{'' if len(entry.users) == 1 else 's'}"


def listing_hosts(listing: Listing) -> dict[int, list[Listed]]:
    """The servers of each host in the listing."""
    hosts: dict[int, list[Listed]] = {}
    for entry in listing.entries:
        if entry.service is not None and not entry.shared and entry.lease > 0:
            hosts.setdefault(entry.lease, []).append(entry)
    return hosts


def listing_summary(listing: Listing) -> str:
    """The last line of `list`: how many services, servers, hosts, shared keys, and flags."""
    entries = listing.entries
    services = {e.service for e in entries if e.service}
    servers = sum(1 for e in entries if e.service is not None and not e.shared)
    shared = sum(1 for e in entries if e.shared)
    other = sum(1 for e in entries if e.service is None)
    counts = ((len(services), "service"), (servers, "server"), (len(listing_hosts(listing)), "host"),
              (shared, "shared key"), (other, "other key"))
    text = [f"{count} {word}{'' if count == 1 else 's'}" for count, word in counts]
    return f"{text[0]}, {text[1]} on {text[2]}, {text[3]}, {text[4]}; {len(listing.flags)} flagged"


def print_listing(listing: Listing, where: str) -> None:
    """A rich table per service (servers, then shared keys), other keys, then the flags and a summary."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=max(100, Console().width), highlight=False)
    flagged: dict[str, list[str]] = {}
    for flag in listing.flags:
        flagged.setdefault(flag.key, []).append(flag.kind.value)
    for service, group in itertools.groupby(listing.entries, key=lambda e: e.service):
        title = service if service else "keys of no service" if service == "" else "keys of no layout's shape"
        table = Table(title=Text(title, style="bold"), title_justify="left")
        for column in ("key", "value", "held by", "expires", "flag"):
            table.add_column(column, overflow="fold")
        for entry in group:  # Text, not str: a value is shown as it is, never read as rich markup
            table.add_row(*map(Text, (entry.name, entry.value, listed_host(entry, listing), expiry_text(entry.expires),
                                      ", ".join(flagged.get(entry.key, ())))))
        console.print(table)
    for flag in listing.flags:
        print(f"{flag.kind.value}: {flag.text}")
    print(f"{where}: {listing_summary(listing)}", flush=True)


def listing_json(listing: Listing, config: Config, where: str) -> dict:
    """`list` as one JSON-ready object: services with their servers and shared keys, other keys, hosts, flags."""
    def host(lease: int) -> Optional[str]:
        return f"{lease:x}" if lease > 0 else None

    services, other = [], []
    for service, group in itertools.groupby(listing.entries, key=lambda e: e.service):
        group = list(group)
        if service is None:
            other = [{"key": e.key, "value": e.value, "on": host(e.lease), "expires": e.expires} for e in group]
            continue
        services.append({"name": service, "servers": [
            {"key": e.key, "container": e.name, "value": e.value, "address": server_address(e.value),
             "host": host(e.lease), "expires": e.expires} for e in group if not e.shared],
            "shared": [{"key": e.key, "value": e.value, "writer": host(e.host), "users": [host(u) for u in e.users],
                        "expires": e.expires} for e in group if e.shared]})
    hosts = [{"id": f"{lease:x}", "ip": listing.addresses.get(lease), "servers": len(entries),
              "expires": entries[0].expires} for lease, entries in sorted(listing_hosts(listing).items())]
    return {"store": where, "prefix": config.prefix, "layout": config.layout_name, "holder": listing.holder,
            "services": services, "other": other, "hosts": hosts,
            "flags": [{"kind": f.kind.value, "key": f.key or None, "text": f.text} for f in listing.flags]}


def print_purged(purged: Purged, output: str) -> None:
    """Print what purge removed in the chosen format."""
    if output == "json":
        print(json.dumps({"removed": len(purged.keys), "keys": list(purged.keys), "lease": f"{purged.lease_id:x}",
                          "seconds": round(purged.seconds, 4)}))
    else:
        print(f"removed {len(purged.keys)} keys of lease {purged.lease_id:x} in {purged.seconds:.3f}s")


def print_note(text: str) -> None:
    """Print one note line on stderr."""
    print(f"docker-register: note: {text}", file=sys.stderr, flush=True)


def report_error(error: RegisterError) -> None:
    """Print a run's error as one line."""
    print(f"docker-register: error: {error}", file=sys.stderr, flush=True)


def print_outcome(outcome: Optional[Outcome], output: str) -> None:
    """Print a run's result in the chosen format; None is a pass skipped for the lock."""
    if outcome is None:
        print_note("another docker-register run holds the lock; skipped this pass")
        if output == "json":
            print(json.dumps({"skipped_pass": "another run holds the lock"}), flush=True)
        return
    if output == "json":
        print(json.dumps(outcome_json(outcome)), flush=True)
        return
    for note in notes_of(outcome):
        print_note(note)
    if outcome.dry_run:
        print_dry_run(outcome)
    print(summary_line(outcome), flush=True)  # flushed: a long-running sync --every is read line by line


# --- Metrics: Prometheus' text format, for node_exporter's textfile collector ------------------------------


@dataclass(frozen=True)
class MetricsSetup:
    """How this process runs sync: the same for every run or pass it records."""

    mode: str  # "once", "every" or "events"
    interval: float
    ttl: int
    backend: str
    layout: str


#: The metrics of --metrics-file, in the file's order: name -> (type, help). None holds a secret, a key or an address.
METRICS = {
    "docker_register_info": ("gauge", "This host's docker-register: version, store, key layout and mode (always 1)."),
    "docker_register_last_run_timestamp_seconds": ("gauge", "When the last run or pass ended, in unix time."),
    "docker_register_last_success_timestamp_seconds": (
        "gauge", "When the last successful run or pass ended, in unix time (absent until one succeeded)."),
    "docker_register_last_run_success": ("gauge", "1 if the last run or pass succeeded, 0 if it failed."),
    "docker_register_last_run_duration_seconds": ("gauge", "How long the last run or pass took."),
    "docker_register_interval_seconds": (
        "gauge", "Seconds between runs: --every, else a third of the lease TTL (as the shipped timer and cron set it)."),
    "docker_register_lease_ttl_seconds": ("gauge", "TTL of the lease this host's keys are on."),
    "docker_register_registrations": ("gauge", "Container ports the last successful run or pass registered."),
    "docker_register_skipped_containers": (
        "gauge", "Containers or ports the last successful run or pass left out; noted=\"true\" for those it printed "
                 "a note about (labels, addresses), \"false\" for the quiet ones (ignored, stopping, not healthy)."),
    "docker_register_runs_total": ("counter", "Runs and passes that ended, whatever their result."),
    "docker_register_failures_total": ("counter", "Runs and passes that failed, by what failed: docker, store or "
                                                  "usage (a bad setting)."),
    "docker_register_changes_total": ("counter", "Keys written, by kind of change."),
    "docker_register_lock_busy_total": ("counter", "Runs and passes left out because another run held this host's "
                                                   "lock."),
    "docker_register_passes_total": ("counter", "Passes of sync --every, by what started them: the interval or a "
                                                "Docker event."),
    "docker_register_event_stream_up": ("gauge", "1 while Docker's event stream is open (sync --every --events)."),
    "docker_register_purged_timestamp_seconds": (
        "gauge", "When purge took this host out of service on purpose, in unix time; the next sync writes the rest."),
}
#: What a run carries on from the file it replaces: the counters, and what only a successful run tells.
CARRIED = frozenset({"docker_register_runs_total", "docker_register_failures_total", "docker_register_changes_total",
                     "docker_register_lock_busy_total", "docker_register_passes_total",
                     "docker_register_last_success_timestamp_seconds", "docker_register_last_run_success",
                     "docker_register_registrations", "docker_register_skipped_containers"})
#: A sample as this module writes it: name, then labels with plain values. Anything else in an old file is dropped.
SAMPLE_KEY = re.compile(r'docker_register_[a-z_]+(\{[a-z_]+="[^"\\\n]*"(,[a-z_]+="[^"\\\n]*")*\})?')
#: Most of an old metrics file read back (it holds about 3 kB).
MAX_METRICS_FILE = 65536


def sample(name: str, **labels: str) -> str:
    """A sample's name and labels as the text format writes them."""
    if not labels:
        return name
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for value in labels.values())
    return name + "{" + ",".join(f'{label}="{value}"' for label, value in zip(labels, escaped)) + "}"


def failure_kind(error: RegisterError) -> str:
    """What failed, as the metrics name it: usage (a bad setting), docker or store."""
    if isinstance(error, UsageError):
        return "usage"
    return "docker" if isinstance(error, DockerError) else "store"


def metrics_after(result: RunResult, before: Mapping[str, float], setup: MetricsSetup) -> dict[str, float]:
    """The samples after a run or pass: its own gauges, and the counters and last success's gauges carried on from
    before (every label a counter can have starts at 0, so a first failure is an increase, not a new series)."""
    samples = {key: value for key, value in before.items() if key.partition("{")[0] in CARRIED}

    def count(key: str, amount: float = 1.0) -> None:
        samples[key] = samples.get(key, 0.0) + amount

    count("docker_register_runs_total")
    count("docker_register_lock_busy_total", 0.0)
    for kind in ("docker", "store", "usage"):
        count(sample("docker_register_failures_total", kind=kind), 0.0)
    for change_kind in ChangeKind:
        count(sample("docker_register_changes_total", kind=change_kind.value), 0.0)
    outcome = result.outcome
    if result.error is not None:
        count(sample("docker_register_failures_total", kind=failure_kind(result.error)))
        samples["docker_register_last_run_success"] = 0.0
    elif outcome is None:
        count("docker_register_lock_busy_total")  # the other run keeps the keys: neither a success nor a failure
    else:
        samples["docker_register_last_run_success"] = 1.0
        samples["docker_register_last_success_timestamp_seconds"] = result.ended
        samples["docker_register_registrations"] = float(outcome.registrations)
        for noted in (True, False):
            samples[sample("docker_register_skipped_containers", noted=str(noted).lower())] = float(
                sum(1 for skip in outcome.skips if skip.quiet is not noted))
        for change in outcome.plan.changes:
            count(sample("docker_register_changes_total", kind=change.kind.value))
    samples = {key: value for key, value in samples.items() if result.trigger or not key.startswith(
        "docker_register_passes_total")}
    if result.trigger:
        for trigger in ("interval", "event"):
            count(sample("docker_register_passes_total", trigger=trigger), 0.0)
        count(sample("docker_register_passes_total", trigger=result.trigger))
    samples.update({
        sample("docker_register_info", version=__version__, backend=setup.backend, layout=setup.layout,
               mode=setup.mode): 1.0,
        "docker_register_last_run_timestamp_seconds": result.ended,
        "docker_register_last_run_duration_seconds": result.seconds,
        "docker_register_interval_seconds": setup.interval,
        "docker_register_lease_ttl_seconds": float(setup.ttl),
    })
    if setup.mode == "events":
        samples["docker_register_event_stream_up"] = 1.0 if result.events_up else 0.0
    return samples


def metric_value(value: float) -> str:
    """A sample's value: whole numbers without a fraction, others to the microsecond."""
    return str(int(value)) if value == int(value) else repr(round(value, 6))


def metrics_text(samples: Mapping[str, float]) -> str:
    """The samples in Prometheus' text format, each family after its HELP and TYPE lines."""
    families: dict[str, list[str]] = {}
    for key in sorted(samples):
        families.setdefault(key.partition("{")[0], []).append(f"{key} {metric_value(samples[key])}")
    lines = []
    for name, (kind, text) in METRICS.items():
        if name in families:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *families[name]]
    return "\n".join(lines) + "\n"


def carried_samples(text: str) -> dict[str, float]:
    """What the file an earlier run wrote says that the next run carries on; any other line, or a sample that is
    not a finite number >= 0, is left out (the counters then start again: Prometheus reads that as a reset)."""
    found = {}
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key.partition("{")[0] in CARRIED and SAMPLE_KEY.fullmatch(key):
            try:
                number = float(value)
            except ValueError:
                continue
            if 0 <= number < float("inf"):
                found[key] = number
    return found


def read_metrics_file(path: str) -> str:
    """The metrics file an earlier run wrote, or "" when there is none to read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read(MAX_METRICS_FILE)
    except (OSError, ValueError):
        return ""


def write_atomically(path: str, text: str) -> None:
    """Replace the file at path in one step: a temporary file next to it, readable by all, renamed over it, so a
    reader sees the old content or the new, never part of it."""
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp")  # not *.prom: node_exporter leaves it alone
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        try:
            os.fchmod(fd, 0o644)  # the units' UMask=0077 would keep node_exporter's user from reading it
            data = text.encode()
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_metrics(path: str, text: str) -> None:
    """Write the metrics file; a failure is said in one line and changes nothing else (the run's exit code stays)."""
    try:
        write_atomically(path, text)
    except OSError as error:
        print_note(f"--metrics-file {path}: not written: {error.strerror or error}")


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


class Output(str, enum.Enum):
    """Output formats."""

    text = "text"
    json = "json"


#: --layout's choices, from the layouts themselves.
LayoutName = enum.Enum("LayoutName", {name: name for name in LAYOUTS}, type=str)


app = typer.Typer(
    help="Register this host's published container ports in etcd v3, on a lease.",
    epilog="Exit codes: 0 success, 1 Docker or the store unreachable or failing, 2 usage error, 3 list flagged "
           "something.",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def version_callback(value: bool) -> None:
    """Print the version and exit."""
    if value:
        print(f"docker-register {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Register this host's published container ports in etcd v3, on a lease."""


#: --backend's choices.
BackendName = enum.Enum("BackendName", {name: name for name in BACKENDS}, type=str)
#: Help panels of the other backends' options (each panel sizes its own columns).
ZK_PANEL, REDIS_PANEL = "ZooKeeper (--backend zookeeper)", "Redis (--backend redis)"


def option(default: object, flag: str, secret: bool = False, **info: object) -> Any:
    """A Settings field that is a CLI option: its default, flag, environment twin, help and bounds in one place."""
    return field(default=default, repr=not secret, metadata={"option": typer.Option(flag, **info)})


@dataclass(frozen=True)
class Settings:
    """The options every command takes, as given; build_config checks them into a Config."""

    # Each option is declared here once, flag, env twin, default and help together: the declarations share a shape
    # by nature, and a table built in a loop would hide each option's own help and default from a reader.

    etcd: str = option(DEFAULT_ETCD, "--etcd", envvar="ETCD_HOST",
                       help="Comma-separated etcd endpoints: host:port, http://… or https://….")
    host_ip: Optional[str] = option(None, "--host-ip", envvar="HOST_IP", show_default="detected",
                                    help="Address other hosts use to reach published ports.")
    layout: LayoutName = option(
        LayoutName.discover, "--layout", envvar="DOCKER_REGISTER_LAYOUT",
        help="Keys for docker-discover (discover), Traefik's KV provider (traefik) or CoreDNS's etcd plugin (skydns).")
    prefix: Optional[str] = option(None, "--prefix", envvar="DOCKER_REGISTER_PREFIX",
                                   show_default="by layout: /backends, traefik, /skydns",
                                   help="Root of all service keys.")
    domain: str = option(DEFAULT_DOMAIN, "--domain", envvar="DOCKER_REGISTER_DOMAIN",
                         help="DNS domain of the skydns layout's names.")
    internal: bool = option(
        False, "--internal", envvar="DOCKER_REGISTER_INTERNAL",
        help="Register each container's own address on a network and its private ports, not published ports.")
    network: Optional[str] = option(
        None, "--network", envvar="DOCKER_REGISTER_NETWORK", show_default=False,
        help="With --internal: the network to use when a container is on several and no label chooses.")
    ttl: int = option(DEFAULT_TTL, "--ttl", envvar="DOCKER_REGISTER_TTL", min=MIN_TTL, max=MAX_TTL,
                      help="Lease TTL in seconds; longer than the run interval.")
    timeout: float = option(DEFAULT_TIMEOUT, "--timeout", envvar="DOCKER_REGISTER_TIMEOUT", min=0.1, max=300,
                            help="Bound in seconds on each Docker and etcd call.")
    output: Output = option(Output.text, "--output", envvar="DOCKER_REGISTER_OUTPUT", help="Output format.")
    lock_file: str = option(
        DEFAULT_LOCK_FILE, "--lock-file", envvar="DOCKER_REGISTER_LOCK",
        help="File locked during a sync so that runs on one host never overlap; the ZooKeeper session is kept next "
             "to it.")
    cacert: Optional[str] = option(None, "--cacert", envvar="ETCD_CACERT", show_default=False,
                                   help="CA bundle (PEM) to verify etcd's TLS certificate.")
    cert: Optional[str] = option(None, "--cert", envvar="ETCD_CERT", show_default=False,
                                 help="Client certificate (PEM) for etcd.")
    key: Optional[str] = option(None, "--key", envvar="ETCD_KEY", show_default=False,
                                help="Key (PEM) of the client certificate.")
    user: Optional[str] = option(None, "--user", envvar="ETCD_USER", show_default=False,
                                 help="etcd user, NAME or NAME:PASSWORD.")
    password: Optional[str] = option(None, "--password", envvar="ETCD_PASSWORD", show_default=False, secret=True,
                                     help="Password of the etcd user.")
    backend: BackendName = option(
        BackendName.etcd, "--backend", envvar="DOCKER_REGISTER_BACKEND",
        help="Store of the keys: etcd, zookeeper (pip extra [zookeeper]) or redis (pip extra [redis]).")
    zookeeper: str = option(DEFAULT_ZOOKEEPER, "--zookeeper", envvar="ZOOKEEPER_HOSTS", rich_help_panel=ZK_PANEL,
                            help="Comma-separated ensemble, host:port.")
    zookeeper_state: Optional[str] = option(
        None, "--zookeeper-state", envvar="ZOOKEEPER_STATE", rich_help_panel=ZK_PANEL,
        show_default="zookeeper-<id>.session next to the lock file",
        help="File (mode 600) keeping the host's ZooKeeper session id and password between runs.")
    zookeeper_user: Optional[str] = option(
        None, "--zookeeper-user", envvar="ZOOKEEPER_USER", rich_help_panel=ZK_PANEL, show_default=False,
        help="Digest user, NAME or NAME:PASSWORD; nodes are then the user's, readable by all.")
    zookeeper_password: Optional[str] = option(
        None, "--zookeeper-password", envvar="ZOOKEEPER_PASSWORD", rich_help_panel=ZK_PANEL, show_default=False,
        secret=True, help="Password of the ZooKeeper user.")
    zookeeper_cacert: Optional[str] = option(
        None, "--zookeeper-cacert", envvar="ZOOKEEPER_CACERT", rich_help_panel=ZK_PANEL, show_default=False,
        help="CA bundle (PEM) to verify ZooKeeper's TLS certificate (TLS on).")
    zookeeper_cert: Optional[str] = option(
        None, "--zookeeper-cert", envvar="ZOOKEEPER_CERT", rich_help_panel=ZK_PANEL, show_default=False,
        help="Client certificate (PEM) for ZooKeeper.")
    zookeeper_key: Optional[str] = option(
        None, "--zookeeper-key", envvar="ZOOKEEPER_KEY", rich_help_panel=ZK_PANEL, show_default=False,
        help="Key (PEM) of the ZooKeeper client certificate.")
    redis: str = option(DEFAULT_REDIS, "--redis", envvar="REDIS_URL", rich_help_panel=REDIS_PANEL,
                        help="redis://host:port/db (user@host:… for an ACL user), rediss://… for TLS.")
    redis_password: Optional[str] = option(
        None, "--redis-password", envvar="REDIS_PASSWORD", rich_help_panel=REDIS_PANEL, show_default=False,
        secret=True, help="Redis password (AUTH).")
    redis_cacert: Optional[str] = option(
        None, "--redis-cacert", envvar="REDIS_CACERT", rich_help_panel=REDIS_PANEL, show_default=False,
        help="CA bundle (PEM) to verify Redis's TLS certificate (rediss://).")
    redis_cert: Optional[str] = option(
        None, "--redis-cert", envvar="REDIS_CERT", rich_help_panel=REDIS_PANEL, show_default=False,
        help="Client certificate (PEM) for Redis.")
    redis_key: Optional[str] = option(
        None, "--redis-key", envvar="REDIS_KEY", rich_help_panel=REDIS_PANEL, show_default=False,
        help="Key (PEM) of the Redis client certificate.")
    redis_sentinel: Optional[str] = option(
        None, "--redis-sentinel", envvar="REDIS_SENTINELS", rich_help_panel=REDIS_PANEL, show_default=False,
        help="Comma-separated Sentinels, host:port: ask them for the primary (then --redis gives only user, "
             "database and rediss://).")
    redis_master: Optional[str] = option(
        None, "--redis-master", envvar="REDIS_MASTER", rich_help_panel=REDIS_PANEL, show_default=False,
        help="With --redis-sentinel: the name the Sentinels monitor the primary under.")
    metrics_file: Optional[str] = option(
        None, "--metrics-file", envvar="DOCKER_REGISTER_METRICS_FILE", show_default=False,
        help="After every run or pass, write Prometheus metrics to this *.prom file, for node_exporter's textfile "
             "collector (docs/metrics.md).")


def settings_parameters() -> list[inspect.Parameter]:
    """Settings' fields as typer reads a command's parameters: Annotated[type, typer.Option(...)] = default."""
    hints = get_type_hints(Settings)
    return [inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=item.default,
                              annotation=Annotated[hints[item.name], item.metadata["option"]])
            for item in fields(Settings)]


def takes_settings(command: Callable[..., None]) -> Callable[..., None]:
    """A command(settings, **own options) as typer sees it: its own options, then every Settings option."""
    own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]
    names = [item.name for item in fields(Settings)]

    @functools.wraps(command)
    def run(**values: Any) -> None:
        command(Settings(**{name: values.pop(name) for name in names}), **values)

    run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + settings_parameters())
    return run


def zookeeper_settings(settings: Settings, prefix: str, lock_file: Optional[str], host_ip: str) -> ZooKeeperSettings:
    """Validate the ZooKeeper options."""
    check_zookeeper_root(prefix)
    hosts = parse_zookeeper_hosts(settings.zookeeper)
    read_tls_files(settings.zookeeper_cacert, settings.zookeeper_cert, settings.zookeeper_key, "zookeeper-")
    auth = parse_credentials(settings.zookeeper_user, settings.zookeeper_password, "zookeeper-", "ZOOKEEPER")
    if settings.zookeeper_state is not None and not settings.zookeeper_state.strip():
        raise UsageError("--zookeeper-state / ZOOKEEPER_STATE: the file name is empty")
    state = settings.zookeeper_state or zookeeper_state_file(lock_file, host_ip, prefix)
    backend_module("zookeeper")
    return ZooKeeperSettings(hosts, state, settings.zookeeper_cacert, settings.zookeeper_cert, settings.zookeeper_key,
                             auth)


def redis_settings(settings: Settings) -> RedisSettings:
    """Validate the Redis options."""
    url, inline = parse_redis_url(settings.redis)
    tls = read_tls_files(settings.redis_cacert, settings.redis_cert, settings.redis_key, "redis-")
    if tls and not url.startswith("rediss:"):
        raise UsageError("--redis-cacert, --redis-cert and --redis-key are for TLS: use a rediss:// URL")
    sentinels = parse_redis_sentinels(settings.redis_sentinel) if settings.redis_sentinel is not None else ()
    master = (settings.redis_master or "").strip()
    if sentinels and not master:
        raise UsageError("--redis-sentinel / REDIS_SENTINELS needs --redis-master / REDIS_MASTER, the primary's name")
    if master and not sentinels:
        raise UsageError("--redis-master / REDIS_MASTER names a primary at Sentinels: it needs --redis-sentinel")
    if master and not re.fullmatch(r"[!-~]+", master):
        raise UsageError(f"--redis-master / REDIS_MASTER: {master!r} is not a Sentinel master name")
    backend_module("redis")
    return RedisSettings(url, settings.redis_password or inline, settings.redis_cacert, settings.redis_cert,
                         settings.redis_key, sentinels, master or None)


def parse_lock_file(path: str) -> Optional[str]:
    """None for the default lock file, given or not; any other path as given."""
    # None lets run_lock fall back to a per-user lock when the runtime folder is missing (not root):
    # naming the default explicitly must not lose that.
    return None if not path or os.path.normpath(path) == DEFAULT_LOCK_FILE else path


def build_config(settings: Settings, host: bool = True) -> Config:
    """Validate the settings into a Config, detecting the host IP when none is given (unless host is False: a
    command that only reads the store needs none, and its Config then has "")."""
    tls = read_tls_files(settings.cacert, settings.cert, settings.key)
    endpoints = parse_endpoints(settings.etcd, tls=tls is not None)
    auth = parse_credentials(settings.user, settings.password)
    layout = LAYOUTS[settings.layout.value]
    prefix = parse_prefix(layout.default_prefix if settings.prefix is None else settings.prefix, layout.absolute,
                          layout.default_prefix)
    domain = parse_domain(settings.domain)
    host_ip = settings.host_ip
    detected = not (host_ip and host_ip.strip())
    address = parse_host_ip(host_ip) if not detected else detect_host_ip() if host else ""
    if settings.network is not None and not settings.network.strip():
        raise UsageError("--network / DOCKER_REGISTER_NETWORK: the network name is empty")
    if settings.network and not settings.internal:
        raise UsageError("--network / DOCKER_REGISTER_NETWORK chooses a container network: it needs --internal")
    lock_file = parse_lock_file(settings.lock_file)
    backend = settings.backend.value
    zookeeper = zookeeper_settings(settings, prefix, lock_file, address) if backend == "zookeeper" else None
    redis = redis_settings(settings) if backend == "redis" else None
    return Config(endpoints, address, prefix, settings.ttl, settings.timeout, detected, tls, auth, lock_file,
                  layout.name, domain, settings.internal, settings.network, backend, zookeeper, redis)


def parse_metrics_file(path: Optional[str]) -> Optional[str]:
    """The metrics file asked for, None when none is (unset or empty); node_exporter reads only *.prom files."""
    if not path or not path.strip():
        return None
    if not os.path.basename(path).endswith(".prom"):
        raise UsageError(f"--metrics-file / DOCKER_REGISTER_METRICS_FILE: {path!r} does not end in .prom, the files "
                         "node_exporter's textfile collector reads")
    return path


class MetricsFile:
    """The metrics file of one sync process: written anew after every run or pass, its counters carried on."""

    def __init__(self, path: str, setup: MetricsSetup):
        self.path, self.setup = path, setup
        self.samples: Optional[dict[str, float]] = None  # as last written; read back from the file the first time

    def record(self, result: RunResult) -> None:
        """Write the metrics after this run or pass."""
        if self.samples is None:
            self.samples = carried_samples(read_metrics_file(self.path))
        self.samples = metrics_after(result, self.samples, self.setup)
        write_metrics(self.path, metrics_text(self.samples))


def metrics_file(settings: Settings, every: Optional[float], events: bool) -> Optional[MetricsFile]:
    """The metrics file of a sync, None when none is asked for."""
    path = parse_metrics_file(settings.metrics_file)
    if path is None:
        return None
    mode = "events" if events else "once" if every is None else "every"
    interval = settings.ttl / TTL_INTERVALS if every is None else every
    return MetricsFile(path, MetricsSetup(mode, interval, settings.ttl, settings.backend.value, settings.layout.value))


def fail(error: RegisterError) -> typer.Exit:
    """Print a run's error as one line and return the exit to raise."""
    report_error(error)
    return typer.Exit(error.exit_code)


def etcd_connection(config: Config) -> EtcdConnection:
    """The etcd connection a config describes."""
    quiet_grpc_defaults()
    return EtcdConnection(config.endpoints, config.timeout, config.tls, config.auth)


def open_store(config: Config, purging: bool = False) -> tuple[Store, Callable[[], None]]:
    """The store a config names, and how to close it; opening it connects to nothing yet."""
    if config.backend == "zookeeper":
        # purge takes the saved session whatever its TTL: it only ends it
        store = ZooKeeperStore(config.zookeeper, config.prefix, None if purging else config.ttl, config.timeout,
                               config.layout)
        return store, store.close
    if config.backend == "redis":
        store = RedisStore(config.redis, config.prefix, config.ttl, config.timeout, config.lease_id, config.layout)
        return store, store.close
    connection = etcd_connection(config)
    return EtcdStore(connection, config.prefix), connection.close


def open_adapters(config: Config) -> Adapters:
    """The real Docker source and store for one run (or for passes until one fails)."""
    store, close_store = open_store(config)
    docker = DockerSource(config.timeout)
    return Adapters(docker, store, (docker.close, close_store))


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    import signal

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


@app.command("sync")
@takes_settings
def sync_command(
    settings: Settings,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan; write nothing.")] = False,
    every: Annotated[Optional[float], typer.Option(
        "--every", envvar="DOCKER_REGISTER_EVERY", min=1, max=MAX_TTL, show_default=False,
        help="Repeat the sync every SECONDS until SIGTERM/SIGINT (for containers without a timer).")] = None,
    events: Annotated[bool, typer.Option(
        "--events", envvar="DOCKER_REGISTER_EVENTS",
        help="With --every: also run a pass as soon as Docker reports a container change, and take a "
             "container out as soon as it is being stopped.")] = False,
) -> None:
    """Bring this host's keys in the store in line with its running containers."""
    output = settings.output.value
    started = time.monotonic()
    metrics = None
    try:
        metrics = metrics_file(settings, every, events)
        if dry_run:
            metrics = None  # a dry run writes nothing, its metrics neither
        config = build_config(settings)
        if events and every is None:
            raise UsageError("--events needs --every (the periodic pass that repairs missed events)")
        if every is not None:
            if dry_run:
                raise UsageError("--every and --dry-run do not go together")
            if config.ttl <= every:
                raise UsageError(f"--ttl ({config.ttl}) must be longer than --every ({every:g}), "
                                 "or keys expire between runs")
            report = functools.partial(print_outcome, output=output)
            stop = stop_on_signals()
            triggers = Triggers()
            if events:
                open_source = functools.partial(DockerSource, config.timeout)
                threading.Thread(target=follow_events, daemon=True, name="docker-events",
                                 args=(open_source, triggers, stop, print_note)).start()
                threading.Thread(target=follow_stops, daemon=True, name="docker-stops",
                                 args=(open_source, triggers, stop)).start()
            raise typer.Exit(sync_every(config, functools.partial(open_adapters, config), every, report, stop,
                                        triggers, observe=metrics.record if metrics else lambda result: None,
                                        report_failure=report_error))
        adapters = open_adapters(config)
        try:
            outcome = locked_reconcile(config, adapters.docker, adapters.store, dry_run)
        finally:
            adapters.close()
    except RegisterError as error:
        if metrics:  # the error that ends the command (sync --every records the passes it goes on after)
            metrics.record(RunResult(time.time(), time.monotonic() - started, error=error))
        raise fail(error) from None
    print_outcome(outcome, output)
    if metrics:
        metrics.record(RunResult(time.time(), time.monotonic() - started, outcome))


@app.command("purge")
@takes_settings
def purge_command(settings: Settings) -> None:
    """Take this host out of service now: revoke its lease, deleting all its keys and no other host's."""
    try:
        metrics_path = parse_metrics_file(settings.metrics_file)
        config = build_config(settings)
        store, close = open_store(config, purging=True)
        try:
            purged = purge(config, store)
        finally:
            close()
    except RegisterError as error:
        raise fail(error) from None
    print_purged(purged, settings.output.value)
    if metrics_path:  # out of service on purpose: no series left for the stale-host alert, and the file stays
        write_metrics(metrics_path, metrics_text({"docker_register_purged_timestamp_seconds": time.time()}))


@app.command("list")
@takes_settings
def list_command(
    settings: Settings,
    service: Annotated[Optional[str], typer.Option(
        "--service", show_default=False, help="Show only this service (and what flags it has).")] = None,
    this_host: Annotated[bool, typer.Option(
        "--this-host", help="Also read this host's containers (Docker) and flag what sync notes for them: a shared "
                            "key another host holds with another value, a name two containers give.")] = False,
) -> None:
    """Show what the store holds, by service, and flag what to look at (exit 3): keys no live host holds, shared
    keys no live host uses, an address or container under several hosts."""
    try:
        if service is not None and not service.strip():
            raise UsageError("--service: the name is empty")
        config = build_config(settings, host=this_host)
        store, close = open_store(config)
        docker = None
        try:
            docker = DockerSource(config.timeout) if this_host else None
            listed = list_keys(config, store, service and service.strip(), docker)
        finally:
            close()
            if docker is not None:
                docker.close()
    except RegisterError as error:
        raise fail(error) from None
    if settings.output.value == "json":
        print(json.dumps(listing_json(listed, config, store.where)))
    elif not listed.entries:
        what = f"no service {service.strip()}" if service else "nothing"
        print(f"{what} under {config.prefix} in {store.where}" + "".join(f"; {f.text}" for f in listed.flags))
    else:
        print_listing(listed, store.where)
    raise typer.Exit(EXIT_FLAGGED if listed.flags else EXIT_OK)


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: run the CLI; a usage error becomes one line and exit 2."""
    try:
        result = app(args=argv, prog_name="docker-register", standalone_mode=False)
    except CLI_ERROR as error:
        if type(error).__name__ == "NoArgsIsHelpError":
            print(error.format_message())
        else:
            print(f"docker-register: error: {error.format_message()}", file=sys.stderr)
        return EXIT_USAGE
    except (typer.Abort, KeyboardInterrupt):
        print("docker-register: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    return result if isinstance(result, int) else EXIT_OK


def run() -> None:
    """The console script: main(), then exit without the interpreter's teardown.

    Tearing down gRPC and the imported libraries takes about 40 ms, a fifth of a whole run (measured);
    output is flushed and the lock is released by the kernel, so nothing is lost.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
