"""The shipped systemd units, cron file and purge command, exercised for real."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

import docker_register as dr
from harness import wait_until
from hosts import BINARY, Watch

ROOT = Path(__file__).resolve().parent.parent
UNITS = ("docker-register.service", "docker-register.timer", "docker-register-purge.service",
         "docker-register-watch.service", "docker-register-proxy.socket", "docker-register-proxy.service")
#: The units that reach Docker, and the drop-in that points them at the read-only proxy instead of the docker group.
DOCKER_UNITS = ("docker-register.service", "docker-register-watch.service")
READONLY_DROP_IN = "docker-register-readonly.conf"


@pytest.fixture(scope="module")
def systemd_root(tmp_path_factory) -> Path:
    """A root for systemd-analyze: the system's own units, our units, and the binary path they name."""
    root = tmp_path_factory.mktemp("sysroot")
    shutil.copytree("/usr/lib/systemd", root / "usr/lib/systemd", symlinks=True)
    (root / "bin").mkdir()
    shutil.copy("/bin/true", root / "bin/true")
    shutil.copy("/bin/sh", root / "bin/sh")
    binary = root / "usr/local/bin/docker-register"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (root / "usr/sbin").mkdir(parents=True)
    shutil.copy(binary, root / "usr/sbin/haproxy")
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(ROOT / "systemd" / unit, units / unit)
    return root


@pytest.fixture(scope="module")
def readonly_systemd_root(systemd_root, tmp_path_factory) -> Path:
    """The same root with the read-only drop-in installed for the units that reach Docker."""
    root = tmp_path_factory.mktemp("sysroot-ro") / "root"
    shutil.copytree(systemd_root, root, symlinks=True)
    for unit in DOCKER_UNITS:
        drop_ins = root / "etc/systemd/system" / f"{unit}.d"
        drop_ins.mkdir()
        shutil.copy(ROOT / "systemd" / READONLY_DROP_IN, drop_ins / "readonly.conf")
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units], capture_output=True, text=True)


@pytest.mark.integration  # runs systemd-analyze
def test_systemd_units_verify_clean(systemd_root):
    result = verify(systemd_root, *UNITS)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.integration  # runs systemd-analyze
def test_units_with_the_readonly_drop_in_verify_clean(readonly_systemd_root):
    result = verify(readonly_systemd_root, *UNITS)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.integration  # runs systemd-analyze
def test_systemd_verify_catches_a_broken_unit(systemd_root):
    broken = systemd_root / "etc/systemd/system/broken-register.timer"
    broken.write_text((ROOT / "systemd/docker-register.timer").read_text().replace("=10s", "=ten"))
    result = verify(systemd_root, "broken-register.timer")
    broken.unlink()
    assert "Failed to parse" in result.stderr


def unit_settings(unit: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (ROOT / "systemd" / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_service_is_a_hardened_oneshot_sync_after_docker_and_network():
    service = unit_settings("docker-register.service")
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"] == ["/usr/local/bin/docker-register sync"]
    assert service["EnvironmentFile"] == ["-/etc/default/docker-register"]
    assert {"docker.service", "network-online.target"} <= set(service["After"][0].split())
    for setting, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                           ("PrivateTmp", "yes"), ("CapabilityBoundingSet", "")]:
        assert service[setting] == [value]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]


def test_timer_runs_every_10s_and_the_default_ttl_fits():
    timer = unit_settings("docker-register.timer")
    interval = int(timer["OnUnitActiveSec"][0].rstrip("s"))
    assert interval == 10 and timer["AccuracySec"] == ["1s"] and timer["OnBootSec"]
    assert dr.DEFAULT_TTL >= 3 * interval


def test_purge_is_wired_to_the_timer_stopping():
    purge = unit_settings("docker-register-purge.service")
    assert purge["ExecStop"] == ["/usr/local/bin/docker-register purge"]
    assert purge["PartOf"] == ["docker-register.timer"] and purge["RemainAfterExit"] == ["yes"]
    assert "docker-register-purge.service" in unit_settings("docker-register.timer")["Wants"][0]


def test_watch_service_is_the_long_running_alternative_to_the_timer():
    watch = unit_settings("docker-register-watch.service")
    assert watch["Type"] in (["simple"], ["exec"])
    assert watch["ExecStart"] == ["/usr/local/bin/docker-register sync --every 10 --events"]
    assert watch["Restart"] == ["on-failure"] and watch["RestartSec"] and watch["RestartPreventExitStatus"] == ["2"]
    assert watch["Conflicts"] == ["docker-register.timer"]
    assert {"docker.service", "network-online.target"} <= {unit for line in watch["After"] for unit in line.split()}
    assert "docker-register purge" in watch["ExecStopPost"][0]
    assert watch["WantedBy"] == ["multi-user.target"]
    # The lease TTL outlives a restart, so a crash does not take the host out of service.
    assert int(watch["RestartSec"][0].rstrip("s")) + 1 < dr.DEFAULT_TTL


def test_watch_service_is_hardened_exactly_like_the_oneshot():
    oneshot = unit_settings("docker-register.service")
    watch = unit_settings("docker-register-watch.service")
    what_makes_it_a_oneshot = {"Description", "Type", "ExecStart", "TimeoutStartSec", "After", "Wants"}
    hardening = set(oneshot) - what_makes_it_a_oneshot
    assert {"DynamicUser", "SupplementaryGroups", "CapabilityBoundingSet", "ProtectSystem", "SystemCallFilter",
            "RestrictAddressFamilies", "EnvironmentFile", "RuntimeDirectory"} <= hardening
    assert ({setting: watch.get(setting) for setting in hardening}
            == {setting: oneshot[setting] for setting in hardening})


def stop_post_command(unit: str) -> str:
    """The unit's ExecStopPost= as the shell runs it, with the test's docker-register."""
    (command,) = unit_settings(unit)["ExecStopPost"]
    script = re.fullmatch(r"/bin/sh -c '(.*)'", command).group(1)
    return script.replace("$$", "$").replace("/usr/local/bin/docker-register", BINARY)


def test_watch_service_runs_for_real_and_purges_only_when_stopped_on_purpose(world):
    command = unit_settings("docker-register-watch.service")["ExecStart"][0].split()[1:]
    with world.running(*command) as proc:
        world.docker_run("-P", "local/web")
        wait_until(lambda: len(world.keys()) == 2, 15, "the watch command to register the container")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0  # systemd sees SERVICE_RESULT=success
    script = stop_post_command("docker-register-watch.service")
    for result in ("exit-code", "signal", "oom-kill"):  # a crash: Restart= brings it back, the keys stay
        ran = subprocess.run(["sh", "-c", script], env={**world.env(), "SERVICE_RESULT": result},
                             capture_output=True, text=True, timeout=30)
        assert ran.returncode == 0 and ran.stdout == "" and len(world.keys()) == 2, (result, ran.stderr)
    ran = subprocess.run(["sh", "-c", script], env={**world.env(), "SERVICE_RESULT": "success"},
                         capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0 and ran.stdout.startswith("removed 1 keys"), ran.stdout + ran.stderr
    assert world.keys() == {f"{world.prefix}/web/port": "80"}  # shared, on its own lease: it runs out by itself


def exposure(root: Path, unit: str) -> str:
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}", unit],
                         capture_output=True, text=True).stdout
    return re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out).group(1)


@pytest.mark.integration  # runs systemd-analyze
def test_exposure_scores_are_the_ones_the_readme_reports(systemd_root, readonly_systemd_root):
    readme = " ".join((ROOT / "README.md").read_text().split())
    sync, purge, watch = (exposure(systemd_root, unit) for unit in (
        "docker-register.service", "docker-register-purge.service", "docker-register-watch.service"))
    proxy = exposure(systemd_root, "docker-register-proxy.service")
    without_docker = {exposure(readonly_systemd_root, unit) for unit in DOCKER_UNITS}
    assert max(map(float, (sync, purge, watch))) < 2.0 and float(proxy) < 1.0
    assert {watch, *without_docker} == {sync}, "README reports one score for the sync and watch units, both ways"
    reported = (f"{sync} for the sync and watch units (also with `{READONLY_DROP_IN}`), {purge} purge, "
                f"{proxy} proxy")
    assert reported in readme, f"README should report: {reported}"


def test_the_readonly_units_share_one_group_and_one_socket_and_drop_the_docker_group():
    drop_in = unit_settings(READONLY_DROP_IN)
    socket = unit_settings("docker-register-proxy.socket")
    (group,) = re.findall(r"^g (\S+) -$", (ROOT / "systemd/docker-register.sysusers").read_text(), re.M)
    assert socket["SocketGroup"] == [group] and socket["SocketMode"] == ["0660"]
    assert drop_in["SupplementaryGroups"] == ["", group]  # the empty one resets the list: no docker group
    assert drop_in["Environment"] == [f"DOCKER_HOST=unix://{socket['ListenStream'][0]}"]
    assert not socket["ListenStream"][0].startswith("/run/docker-register/")  # the sync units' RuntimeDirectory
    assert "docker-register-proxy.socket" in drop_in["Requires"] and "docker-register-proxy.socket" in drop_in["After"]
    proxy = unit_settings("docker-register-proxy.service")
    assert proxy["SupplementaryGroups"] == ["docker"] and proxy["RestrictAddressFamilies"] == ["AF_UNIX"]
    assert proxy["PrivateNetwork"] == ["yes"] and proxy["MemoryDenyWriteExecute"] == ["yes"]
    assert "bind fd@3" in (ROOT / "systemd/docker-register-proxy.cfg").read_text()  # the socket unit's socket


def cli_envvars() -> dict[str, object]:
    """Environment twins of every option of every command, with their defaults."""
    import typer.main

    found = {}
    for command in typer.main.get_command(dr.app).commands.values():
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if envvar:
                found[envvar] = param.default
    return found


def test_example_environment_file_lists_every_variable_with_its_default():
    listed = dict(re.findall(r"^#?([A-Z_]+)=(.*)$", (ROOT / "systemd/docker-register.env").read_text(), re.M))
    for name, default in cli_envvars().items():
        assert name in listed, name
        if default is not None and name != "HOST_IP":
            shown = default.value if hasattr(default, "value") else default
            assert listed[name] == (f"{shown:g}" if isinstance(shown, float) else str(shown)), name
    assert {"DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"} <= set(listed)


# --- cron -------------------------------------------------------------------------------

CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


def cron_entries() -> list[tuple[list[str], str, str]]:
    entries = []
    for line in (ROOT / "cron/docker-register").read_text().splitlines():
        if not line.strip() or line.startswith("#") or re.match(r"^[A-Z_]+=", line):
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, f"not five time fields, a user and a command: {line}"
        entries.append((fields[:5], fields[5], fields[6]))
    return entries


def test_cron_entries_parse_and_the_ttl_is_longer_than_the_interval():
    entries = cron_entries()
    assert entries
    offsets = []
    for times, user, command in entries:
        assert all(CRON_FIELD.match(field) for field in times), times
        assert times == ["*"] * 5  # every minute; the sleep staggers them
        assert user == "root"
        assert "flock" in command and "docker-register sync" in command and "logger -t docker-register" in command
        sleep = re.match(r"sleep (\d+);", command)
        offsets.append(int(sleep.group(1)) if sleep else 0)
        ttl = int(re.search(r"--ttl (\d+)", command).group(1))
    offsets.sort()
    gaps = [b - a for a, b in zip(offsets, offsets[1:] + [offsets[0] + 60])]
    interval = max(gaps)
    assert len(set(gaps)) == 1, f"entries are not evenly staggered: {offsets}"
    assert ttl > interval and ttl >= 3 * interval, (ttl, interval)


def test_cron_command_runs_for_real_with_the_settings_file(world, tmp_path):
    world.docker_run("-P", "local/web")
    settings = tmp_path / "docker-register.env"
    env = world.env()
    settings.write_text("".join(f"{k}={env[k]}\n" for k in ("DOCKER_HOST", "ETCD_HOST", "HOST_IP",
                                                              "DOCKER_REGISTER_PREFIX")))
    _, _, command = cron_entries()[1]
    command = re.sub(r"^sleep \d+;\s*", "", command)
    command = command.replace("/etc/default/docker-register", str(settings))
    command = command.replace("/run/lock/docker-register.lock", str(tmp_path / "lock"))
    command = command.replace("| logger -t docker-register", "")
    clean = {k: v for k, v in env.items() if k not in ("DOCKER_HOST", "ETCD_HOST", "HOST_IP",
                                                        "DOCKER_REGISTER_PREFIX")}
    clean["PATH"] = f"{Path(BINARY).parent}:/usr/bin:/bin"
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=clean, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("added 2"), result.stdout + result.stderr
    assert len(world.keys()) == 2
    lease = next(iter(world.etcd.get_prefix(world.prefix + "/").values()))["lease"]
    assert "granted with TTL(60s)" in world.etcd.etcdctl("lease", "timetolive", f"{lease:x}").stdout


# --- purge ------------------------------------------------------------------------------


def test_purge_removes_this_hosts_keys_at_once_and_no_other_hosts(world):
    world.docker_run("-P", "local/web")
    world.docker_run("-P", "-l", "SERVICE_NAME=api", "local/web")
    world.sync()
    assert len(world.keys()) == 4
    theirs_lease = world.etcd.grant(300)
    world.etcd.etcdctl("put", "--lease", f"{theirs_lease:x}", f"{world.prefix}/web/eeeeeeeeeeee", "198.51.100.9:1")
    world.etcd.etcdctl("put", f"{world.prefix}/static/ffffffffffff", "198.51.100.9:2")
    other_keys = {k: v for k, v in world.etcd.get_prefix(world.prefix + "/").items()
                  if v["lease"] != dr.lease_id_for(world.host_ip, world.prefix)}

    result = world.run("purge")
    assert result.returncode == 0, result.stderr
    assert re.match(r"removed \d+ keys of lease [0-9a-f]+ in ", result.stdout)
    after = world.etcd.get_prefix(world.prefix + "/")
    # The shared port keys are on leases of their own, not the host's: they stay, untouched, kept alive by
    # the hosts still serving their service (the other host serves web), and expire when no host does.
    assert after == other_keys
    assert {key for key, kv in after.items() if kv["lease"] == dr.shared_lease_id(world.host_ip, key)} == {
        f"{world.prefix}/web/port", f"{world.prefix}/api/port"}
    assert not any(kv["lease"] == dr.lease_id_for(world.host_ip, world.prefix) for kv in after.values())
    assert result.stdout.startswith("removed 2 keys")
    assert world.run("purge").stdout.startswith("removed 0 keys")


def test_purge_then_sync_registers_again(world):
    world.docker_run("-P", "local/web")
    world.sync()
    assert world.run("purge", "--output", "json").returncode == 0
    assert world.keys() == {f"{world.prefix}/web/port": "80"}
    assert world.sync().stdout.startswith("added 1, updated 0, removed 0, unchanged 1")


def test_purge_with_etcd_down_exits_1_with_one_line(world):
    result = world.run("purge", "--timeout", "1", ETCD_HOST="127.0.0.1:1")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1


# --- sync --every -----------------------------------------------------------------------


def test_every_repeats_and_exits_0_promptly_on_sigterm(world):
    watch = Watch(world.env(), every=1, events=False)
    try:
        world.docker_run("-P", "local/web")
        wait_until(lambda: len(world.keys()) == 2, 15, "the repeating sync to register the container")
        wait_until(lambda: any(line.startswith("added 0, updated 0, removed 0, unchanged 2") for _, line in watch.out),
                   10, "a later pass with nothing to change")
    finally:
        watch.terminate()  # SIGTERM
    assert watch.proc.returncode == 0 and watch.exit_seconds < 3, (watch.exit_seconds, watch.stderr_lines())
    assert any(line.startswith("added 2") for _, line in watch.out)


def test_every_needs_a_ttl_longer_than_the_interval(world):
    result = world.run("sync", "--every", "30", "--ttl", "30")
    assert result.returncode == 2 and "--ttl" in result.stderr
