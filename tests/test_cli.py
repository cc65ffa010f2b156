"""Flags, environment twins, usage errors and exit codes of the CLI (no servers needed)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

import docker_register as dr
from hosts import BINARY, checkout_env
from fakes import FakeEtcd

ENV_NAMES = ("ETCD_HOST", "HOST_IP", "DOCKER_REGISTER_PREFIX", "DOCKER_REGISTER_TTL", "DOCKER_REGISTER_TIMEOUT",
             "DOCKER_REGISTER_OUTPUT", "DOCKER_REGISTER_LOCK")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOST_IP", "192.0.2.10")
    # Nothing listens here: a usage error must be reported before Docker is ever asked.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")


def run_main(capsys, argv):
    code = dr.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


BAD_FLAGS = [
    (["sync", "--ttl", "0"], "--ttl"),
    (["sync", "--ttl", "-5"], "--ttl"),
    (["sync", "--ttl", "1"], "--ttl"),
    (["sync", "--ttl", "ten"], "--ttl"),
    (["sync", "--ttl", "99999999999"], "--ttl"),
    (["sync", "--timeout", "0"], "--timeout"),
    (["sync", "--timeout", "soon"], "--timeout"),
    (["sync", "--output", "xml"], "--output"),
    (["sync", "--etcd", ""], "--etcd"),
    (["sync", "--etcd", "etcd1"], "--etcd"),
    (["sync", "--etcd", "etcd1:0"], "--etcd"),
    (["sync", "--etcd", "etcd1:70000"], "--etcd"),
    (["sync", "--etcd", "ftp://etcd1:2379"], "--etcd"),
    (["sync", "--etcd", "a:1,,b:2"], "--etcd"),
    (["sync", "--prefix", ""], "--prefix"),
    (["sync", "--prefix", "backends"], "--prefix"),
    (["sync", "--prefix", "/backends/"], "--prefix"),
    (["sync", "--prefix", "/a/../b"], "--prefix"),
    (["sync", "--prefix", "/"], "--prefix"),
    (["sync", "--host-ip", "not-an-ip"], "HOST_IP"),
    (["sync", "--host-ip", "127.0.0.1"], "HOST_IP"),
    (["sync", "--host-ip", "0.0.0.0"], "HOST_IP"),
    (["sync", "--network", "front"], "--internal"),
    (["sync", "--internal", "--network", " "], "--network"),
    (["sync", "--layout", "traefik", "--prefix", "/traefik"], "--prefix"),
    (["sync", "--layout", "skydns", "--domain", "not a domain"], "--domain"),
    (["sync", "--layout", "consul"], "--layout"),
    (["sync", "--events"], "--events"),
    (["purge", "--ttl", "1"], "--ttl"),
    (["purge", "--network", "front"], "--internal"),
    (["purge", "--layout", "skydns", "--domain", "not a domain"], "--domain"),
    (["sync", "--no-such-flag"], "--no-such-flag"),
    (["frobnicate"], "frobnicate"),
]


@pytest.mark.parametrize("argv, named", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_exit_2_with_one_line_naming_the_flag(capsys, argv, named):
    code, out, err = run_main(capsys, argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("docker-register: error: ") and named in lines[0], err


@pytest.mark.parametrize("name, value", [
    ("DOCKER_REGISTER_TTL", "0"), ("DOCKER_REGISTER_TTL", "x"), ("DOCKER_REGISTER_TIMEOUT", "-1"),
    ("DOCKER_REGISTER_OUTPUT", "yaml"), ("ETCD_HOST", "nohost"), ("DOCKER_REGISTER_PREFIX", "rel"),
    ("HOST_IP", "::1"),
])
def test_bad_environment_values_exit_2_with_one_line(capsys, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    code, _, err = run_main(capsys, ["sync"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "error" in err


def test_help_lists_every_option_with_its_environment_twin(capsys):
    code, out, _ = run_main(capsys, ["sync", "--help"])
    assert code == 0
    for flag, env in [("--etcd", "ETCD_HOST"), ("--host-ip", "HOST_IP"), ("--prefix", "DOCKER_REGISTER_PREFIX"),
                      ("--ttl", "DOCKER_REGISTER_TTL"), ("--timeout", "DOCKER_REGISTER_TIMEOUT"),
                      ("--output", "DOCKER_REGISTER_OUTPUT"), ("--dry-run", None)]:
        assert flag in out and (env is None or env in out)


def test_version(capsys):
    code, out, _ = run_main(capsys, ["--version"])
    assert code == 0 and out.strip() == f"docker-register {dr.__version__}"


# The two real processes of this file (integration): the console script and `python -m`, each running the checkout.


@pytest.mark.integration
def test_installed_console_script_reports_usage_errors_as_exit_2():
    result = subprocess.run([BINARY, "sync", "--ttl", "0"], capture_output=True, text=True, timeout=60,
                            env=checkout_env())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    version = subprocess.run([BINARY, "--version"], capture_output=True, text=True, timeout=60, env=checkout_env())
    assert version.stdout.strip() == f"docker-register {dr.__version__}"


@pytest.mark.integration
def test_python_dash_m_runs_the_same_cli(tmp_path):
    # From an empty directory, as a user would run it.
    def module(*args):
        return subprocess.run([sys.executable, "-m", "docker_register", *args], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path, env=checkout_env())

    imported = subprocess.run([sys.executable, "-c", "import docker_register; print(docker_register.__file__)"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path, env=checkout_env())
    assert imported.stdout.strip() == str(Path(dr.__file__).resolve()), "the checkout's module, not an install"
    version = module("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"docker-register {dr.__version__}"
    usage = module("sync", "--ttl", "0")
    assert usage.returncode == 2 and usage.stdout == "" and "Traceback" not in usage.stderr
    lines = usage.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("docker-register: error: ") and "--ttl" in lines[0], usage.stderr


# --- one settings declaration for every command -------------------------------------------


@pytest.fixture
def opened(monkeypatch):
    """The configs the commands open their store or adapters with; purge's store is an in-memory etcd."""
    configs = []

    def open_store(config, purging=False):
        configs.append(config)
        return FakeEtcd(config.prefix), lambda: None

    def open_adapters(config):
        configs.append(config)
        raise dr.DockerError("not reached in these tests")

    monkeypatch.setattr(dr, "open_store", open_store)
    monkeypatch.setattr(dr, "open_adapters", open_adapters)
    return configs


def command_params(name):
    return {param.name for param in typer.main.get_command(dr.app).commands[name].params}


def test_sync_and_purge_take_every_shared_option():
    shared = {item.name for item in dataclasses.fields(dr.Settings)}
    assert command_params("purge") == shared
    assert command_params("sync") == shared | {"dry_run", "every", "events"}


@pytest.mark.parametrize("argv, env", [(["purge", "--ttl", "60"], {}), (["purge"], {"DOCKER_REGISTER_TTL": "60"})],
                         ids=["flag", "environment"])
def test_purge_judges_the_lease_by_the_ttl_given(capsys, monkeypatch, opened, argv, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = run_main(capsys, argv)
    assert code == 0, err
    assert [config.ttl for config in opened] == [60]


def test_the_config_carries_the_ttl_of_the_settings():
    assert dr.build_config(dr.Settings(host_ip="192.0.2.10", ttl=60)).ttl == 60
    assert dr.build_config(dr.Settings(host_ip="192.0.2.10")).ttl == dr.DEFAULT_TTL


def test_sync_and_purge_build_the_same_config_from_the_same_options(capsys, opened, tmp_path):
    options = ["--ttl", "45", "--layout", "skydns", "--domain", "example.org", "--internal", "--network", "front",
               "--lock-file", str(tmp_path / "sync.lock")]
    assert run_main(capsys, ["sync", *options])[0] == 1
    assert run_main(capsys, ["purge", *options])[0] == 0
    synced, purged = opened
    assert synced == purged and synced.ttl == 45 and synced.network == "front"


def test_an_explicit_default_lock_file_is_the_default():
    default = dr.build_config(dr.Settings(host_ip="192.0.2.10"))
    for given in (dr.DEFAULT_LOCK_FILE, "/run/docker-register//sync.lock"):
        assert dr.build_config(dr.Settings(host_ip="192.0.2.10", lock_file=given)) == default
    assert default.lock_file is None  # the default may fall back to a per-user lock: see run_lock


@pytest.mark.parametrize("argv, env", [(["purge", "--lock-file", dr.DEFAULT_LOCK_FILE], {}),
                                       (["purge"], {"DOCKER_REGISTER_LOCK": dr.DEFAULT_LOCK_FILE})],
                         ids=["flag", "environment"])
def test_the_default_lock_file_given_on_the_command_line_is_not_a_chosen_one(capsys, monkeypatch, opened, argv,
                                                                              env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert run_main(capsys, argv)[0] == 0
    assert [config.lock_file for config in opened] == [None]


def test_another_lock_file_is_kept_as_given(tmp_path):
    chosen = str(tmp_path / "sync.lock")
    assert dr.build_config(dr.Settings(host_ip="192.0.2.10", lock_file=chosen)).lock_file == chosen
