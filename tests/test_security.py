"""TLS, client certificates and auth against real etcd servers; secrets never shown; etcd's refusals."""

from __future__ import annotations

import base64
import contextlib
import io
import re
import subprocess

import pytest

from harness import Certs, Etcd
from tiers import server_fixture

PASSWORD = "s3cr3t-Pa55word-7f1c"


def role_for(prefix: str) -> dict[str, str]:
    """The role an operator gives docker-register: read and write its prefix, read a neighbour."""
    return {prefix + "/": "readwrite", "/readonly/": "read"}


@server_fixture(scope="module")
def tls_etcd(tmp_path_factory, certs):
    """TLS, auth enabled, password login."""
    member = Etcd(tmp_path_factory.mktemp("tls"), "tls", tls=certs).start()
    member.enable_auth(role_for("/sec"), password=PASSWORD)
    yield member
    member.stop()


@server_fixture(scope="module")
def mtls_etcd(tmp_path_factory, certs):
    """TLS with client-certificate auth; the certificate's CN is the user."""
    member = Etcd(tmp_path_factory.mktemp("mtls"), "mtls", tls=certs, extra=("--client-cert-auth",)).start()
    member.enable_auth(role_for("/sec"))
    yield member
    member.stop()


@server_fixture(scope="module")
def http_auth_etcd(tmp_path_factory):
    """Plain HTTP with auth enabled: the client's call-credentials trap."""
    member = Etcd(tmp_path_factory.mktemp("httpauth"), "httpauth").start()
    member.enable_auth(role_for("/sec"), password=PASSWORD)
    yield member
    member.stop()


def secure_env(world, etcd: Etcd, certs: Certs, **extra) -> dict[str, str]:
    env = dict(ETCD_HOST=etcd.url, DOCKER_REGISTER_PREFIX="/sec/backends")
    env.update(extra)
    if certs:
        env["ETCD_CACERT"] = str(certs.ca)
    return env


def check_sync_dry_run_and_purge(world, etcd: Etcd, env: dict[str, str]) -> list[str]:
    """Run dry-run, sync, a no-change sync and purge; return every line they printed."""
    cid = world.docker_run("-P", "local/web")
    printed = []
    dry = world.run("sync", "--dry-run", **env)
    assert dry.returncode == 0, dry.stderr
    assert etcd.values("/sec/backends/") == {}
    done = world.run("sync", **env)
    assert done.returncode == 0, done.stderr
    assert etcd.values("/sec/backends/") == {f"/sec/backends/web/{cid[:12]}": f"{world.host_ip}:"
                                             f"{world.host_port(cid, '80/tcp')}", "/sec/backends/web/port": "80"}
    again = world.run("sync", "--output", "json", **env)
    assert again.returncode == 0 and '"unchanged": 2' in again.stdout
    purged = world.run("purge", **env)
    assert purged.returncode == 0 and purged.stdout.startswith("removed 1 keys"), purged.stderr
    assert etcd.values("/sec/backends/") == {"/sec/backends/web/port": "80"}  # shared: on a lease of its own
    etcd.revoke_all_leases()  # as if it ran out: the next test on this prefix starts with nothing
    for result in (dry, done, again, purged):
        printed += [result.stdout, result.stderr]
    return printed


def key_material(path) -> str:
    """The base64 body of a PEM key, which must never be printed."""
    body = "".join(line for line in path.read_text().splitlines() if not line.startswith("-----"))
    assert base64.b64decode(body)
    return body[10:40]


def test_tls_with_password(world, tls_etcd, certs):
    env = secure_env(world, tls_etcd, certs, ETCD_USER="docker-register", ETCD_PASSWORD=PASSWORD)
    printed = check_sync_dry_run_and_purge(world, tls_etcd, env)
    assert not any(PASSWORD in text for text in printed)


def test_tls_with_name_colon_password_user(world, tls_etcd, certs):
    env = secure_env(world, tls_etcd, certs, ETCD_USER=f"docker-register:{PASSWORD}")
    printed = check_sync_dry_run_and_purge(world, tls_etcd, env)
    assert not any(PASSWORD in text for text in printed)


def test_client_certificate_is_the_user(world, mtls_etcd, certs):
    cert, key = certs.clients["docker-register"]
    env = secure_env(world, mtls_etcd, certs, ETCD_CERT=str(cert), ETCD_KEY=str(key))
    printed = check_sync_dry_run_and_purge(world, mtls_etcd, env)
    material = key_material(key)
    assert not any(material in text for text in printed)


def test_user_and_password_over_plain_http(world, http_auth_etcd):
    env = secure_env(world, http_auth_etcd, None, ETCD_USER="docker-register", ETCD_PASSWORD=PASSWORD)
    printed = check_sync_dry_run_and_purge(world, http_auth_etcd, env)
    assert not any(PASSWORD in text for text in printed)


def test_bare_endpoint_means_https_when_tls_flags_are_given(world, tls_etcd, certs):
    world.docker_run("-P", "local/web")
    result = world.run("sync", "--etcd", tls_etcd.endpoint, "--cacert", str(certs.ca), "--user",
                       "docker-register", "--password", PASSWORD, DOCKER_REGISTER_PREFIX="/sec/backends")
    assert result.returncode == 0, result.stderr
    assert world.run("purge", "--etcd", tls_etcd.endpoint, "--cacert", str(certs.ca), "--user",
                     f"docker-register:{PASSWORD}", DOCKER_REGISTER_PREFIX="/sec/backends").returncode == 0


def one_line_failure(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_write_outside_the_role_fails_with_one_line(world, tls_etcd, certs):
    world.docker_run("-P", "local/web")
    env = secure_env(world, tls_etcd, certs, ETCD_USER="docker-register", ETCD_PASSWORD=PASSWORD,
                     DOCKER_REGISTER_PREFIX="/readonly/backends")
    line = one_line_failure(world.run("sync", **env), "permission denied", "write keys")
    assert PASSWORD not in line
    assert tls_etcd.values("/readonly/") == {}


def test_wrong_password_fails_with_one_line_and_does_not_echo_it(world, tls_etcd, certs):
    world.docker_run("-P", "local/web")
    env = secure_env(world, tls_etcd, certs, ETCD_USER="docker-register", ETCD_PASSWORD="wrong-" + PASSWORD)
    line = one_line_failure(world.run("sync", **env), "authenticat")
    assert PASSWORD not in line


def test_untrusted_client_certificate_is_refused(world, mtls_etcd, certs, tmp_path):
    other = Certs(tmp_path / "other-ca", client_names=("root", "docker-register"))
    cert, key = other.clients["docker-register"]
    world.docker_run("-P", "local/web")
    env = secure_env(world, mtls_etcd, certs, ETCD_CERT=str(cert), ETCD_KEY=str(key), DOCKER_REGISTER_TIMEOUT="2")
    one_line_failure(world.run("sync", **env), "etcd")
    assert mtls_etcd.values("/sec/") == {}


def test_client_certificate_of_a_user_without_the_role_is_denied(world, mtls_etcd, certs):
    cert, key = certs.clients["intruder"]
    world.docker_run("-P", "local/web")
    env = secure_env(world, mtls_etcd, certs, ETCD_CERT=str(cert), ETCD_KEY=str(key))
    one_line_failure(world.run("sync", **env), "etcd")


def test_secrets_never_appear_in_help_errors_or_json(world, certs, tls_etcd):
    cert, key = certs.clients["docker-register"]
    material = key_material(key)
    env = dict(ETCD_PASSWORD=PASSWORD, ETCD_USER="docker-register", ETCD_KEY=str(key), ETCD_CERT=str(cert),
               ETCD_CACERT=str(certs.ca))
    outputs = [world.run("sync", "--help", **env), world.run("purge", "--help", **env),
               world.run("sync", "--ttl", "0", **env),
               world.run("sync", "--output", "json", "--timeout", "1", ETCD_HOST="127.0.0.1:1", **env),
               world.run("sync", "--dry-run", "--output", "json", ETCD_HOST=tls_etcd.url, **env)]
    for result in outputs:
        for text in (result.stdout, result.stderr):
            assert PASSWORD not in text and material not in text
    assert "ETCD_PASSWORD" in outputs[0].stdout


@pytest.mark.parametrize("flags, message", [
    (["--cacert", "/nonexistent/ca.pem"], "--cacert"),
    (["--cert", "CERT"], "--cert and --key"),
    (["--cert", "CERT", "--key", "/nonexistent/key.pem"], "--key"),
    (["--cacert", "NOTPEM"], "not a PEM"),
    (["--user", "docker-register"], "password"),
    (["--password", "x"], "--user"),
    (["--user", ":pw"], "user name"),
])
def test_bad_tls_and_auth_flags_exit_2_with_one_line(world, certs, tmp_path, flags, message):
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    cert, _ = certs.clients["docker-register"]
    flags = [{"CERT": str(cert), "NOTPEM": str(not_pem)}.get(f, f) for f in flags]
    result = world.run("sync", *flags)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.integration  # makes certificates with openssl and forks a child
def test_unreadable_key_file_exits_2(certs, tmp_path):
    import os
    import pwd
    import sys
    import traceback

    import docker_register as dr

    cert, key = certs.clients["docker-register"]
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.read_bytes())
    locked.chmod(0)
    # As root every file is readable: check as an unprivileged user (nobody, when run as root), for whom
    # it is not. A forked child already has the module loaded, so the checkout's own permissions do not matter.
    nobody = pwd.getpwnam("nobody")
    # Parse once here, so that what the CLI imports on first use (typer's own modules) is loaded before the fork:
    # the child, as nobody, may not be able to read the virtualenv (a checkout in a private folder, as CI's).
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        dr.main(["sync", "--help"])
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        # The child must never return into pytest, whatever fails: it always ends in os._exit, and
        # a failure of its own (exit 99) comes back to the parent as a traceback on the pipe.
        code = 99
        try:
            os.close(read_end)
            sys.stderr = open(write_end, "w")  # pytest has replaced sys.stderr in this process
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
            code = dr.main(["sync", "--cert", str(cert), "--key", str(locked)])
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 99)
    os.close(write_end)
    with os.fdopen(read_end) as stderr:
        message = stderr.read()
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code == 2 and re.search(r"--(key|cert): cannot read", message), f"child exited {code}: {message}"
    assert len(message.strip().splitlines()) == 1


# --- etcd's refusals --------------------------------------------------------------------


@server_fixture(scope="module")
def small_etcd(tmp_path_factory):
    """An etcd with low limits: 8 operations per transaction, 2 KiB per request."""
    member = Etcd(tmp_path_factory.mktemp("small"), "small",
                  extra=("--max-txn-ops", "8", "--max-request-bytes", "2048")).start()
    yield member
    member.stop()


def test_too_many_operations_in_a_transaction_is_one_line(world, small_etcd):
    base = 21000 + (small_etcd.client_port % 1000) * 10
    world.docker_run("-p", f"{base}-{base + 5}:{base}-{base + 5}", "local/web")  # 12 keys, limit 8
    one_line_failure(world.run("sync", ETCD_HOST=small_etcd.endpoint), "too many operations")


def test_request_too_large_is_one_line(world, small_etcd):
    world.docker_run("-P", "-l", "SERVICE_NAME=" + "x" * 190, "local/web")
    world.docker_run("-P", "-l", "SERVICE_NAME=" + "y" * 190, "local/web")
    one_line_failure(world.run("sync", "--prefix", "/" + "p" * 500, ETCD_HOST=small_etcd.endpoint), "too large")


def test_no_space_is_one_line(world, tmp_path):
    import etcd3

    member = Etcd(tmp_path / "nospace", "nospace").start()
    try:
        client = etcd3.client("127.0.0.1", member.client_port, timeout=5)
        client.create_alarm()  # raise NOSPACE, as a full backend would
        client.close()
        world.docker_run("-P", "local/web")
        one_line_failure(world.run("sync", ETCD_HOST=member.endpoint), "space")
    finally:
        member.stop()
