"""--metrics-file: the text builder on plain data, the file's write and the CLI on in-memory adapters, then real
`docker-register sync` runs served by a real node_exporter and a real Prometheus firing the shipped alert rule."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

import docker_register as dr
from fakes import FakeClock, FakeDocker, FakeEtcd, config, container, web
from tiers import server_fixture
from harness import NodeExporter, Prometheus, parse_samples, require, wait_until
from hosts import SERVER_VARIABLES

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "systemd/docker-register.rules.yml"
SETUP = dr.MetricsSetup("once", 10.0, 30, "etcd", "discover")
NOW = 1_800_000_000.25


def outcome(tmp_path, changes=(), skips=(), registrations=0) -> dr.Outcome:
    """What a run did, as plain data."""
    plan = dr.Plan(1, dr.LeaseAction.KEEP, tuple(changes), 3)
    return dr.Outcome(config(tmp_path), plan, tuple(skips), False, 0.05, frozenset(), registrations)


def change(kind: dr.ChangeKind, key: str = "/backends/web/aaaaaaaaaaaa") -> dr.Change:
    return dr.Change(kind, key, "10.0.0.5:32768", None, 0)


def after(result: dr.RunResult, before=None, setup=SETUP) -> dict[str, float]:
    return dr.metrics_after(result, before or {}, setup)


# --- the text builder, on plain data ------------------------------------------------------------


def test_a_successful_run_gives_its_time_duration_registrations_skips_and_changes_by_kind(tmp_path):
    skips = [dr.Skip("web1", "SERVICE_IGNORE is set", quiet=True), dr.Skip("bad", "80/tcp: unknown protocol")]
    done = outcome(tmp_path, [change(dr.ChangeKind.ADD), change(dr.ChangeKind.ADD, "/backends/web/port"),
                              change(dr.ChangeKind.REMOVE)], skips, registrations=4)
    samples = after(dr.RunResult(NOW, 0.125, done))
    assert samples == {
        'docker_register_info{version="%s",backend="etcd",layout="discover",mode="once"}' % dr.__version__: 1,
        "docker_register_last_run_timestamp_seconds": NOW,
        "docker_register_last_success_timestamp_seconds": NOW,
        "docker_register_last_run_success": 1,
        "docker_register_last_run_duration_seconds": 0.125,
        "docker_register_interval_seconds": 10,
        "docker_register_lease_ttl_seconds": 30,
        "docker_register_registrations": 4,
        'docker_register_skipped_containers{noted="true"}': 1,
        'docker_register_skipped_containers{noted="false"}': 1,
        "docker_register_runs_total": 1,
        "docker_register_lock_busy_total": 0,
        'docker_register_failures_total{kind="docker"}': 0,
        'docker_register_failures_total{kind="store"}': 0,
        'docker_register_failures_total{kind="usage"}': 0,
        'docker_register_changes_total{kind="add"}': 2,
        'docker_register_changes_total{kind="update"}': 0,
        'docker_register_changes_total{kind="remove"}': 1,
        'docker_register_changes_total{kind="release"}': 0,
    }


@pytest.mark.parametrize("error, kind", [
    (dr.DockerError("docker at unix:///x: cannot list containers"), "docker"),
    (dr.DockerRefused("docker: 403", 403), "docker"),
    (dr.EtcdError("etcd 127.0.0.1:1: unavailable"), "store"),
    (dr.ZooKeeperError("zookeeper: connection lost"), "store"),
    (dr.RedisError("redis: refused"), "store"),
    (dr.Conflict("keys kept changing"), "store"),
    (dr.UsageError("HOST_IP: no usable address"), "usage"),
])
def test_a_failed_run_counts_by_what_failed_and_keeps_the_last_successs_gauges(tmp_path, error, kind):
    first = after(dr.RunResult(NOW, 0.1, outcome(tmp_path, [change(dr.ChangeKind.ADD)], registrations=2)))
    samples = after(dr.RunResult(NOW + 10, 1.5, error=error), first)
    assert samples[f'docker_register_failures_total{{kind="{kind}"}}'] == 1
    assert sum(v for k, v in samples.items() if k.startswith("docker_register_failures_total")) == 1
    assert samples["docker_register_runs_total"] == 2 and samples["docker_register_last_run_success"] == 0
    assert samples["docker_register_last_run_timestamp_seconds"] == NOW + 10
    assert samples["docker_register_last_run_duration_seconds"] == 1.5
    # What only a success tells stays as the last success said it.
    assert samples["docker_register_last_success_timestamp_seconds"] == NOW
    assert samples["docker_register_registrations"] == 2
    assert samples['docker_register_changes_total{kind="add"}'] == 1


def test_a_first_run_that_fails_has_no_last_success_and_every_failure_kind_at_zero_or_one():
    samples = after(dr.RunResult(NOW, 0.2, error=dr.EtcdError("etcd: down")))
    assert "docker_register_last_success_timestamp_seconds" not in samples
    assert "docker_register_registrations" not in samples
    assert {k: v for k, v in samples.items() if "failures" in k} == {
        'docker_register_failures_total{kind="docker"}': 0, 'docker_register_failures_total{kind="store"}': 1,
        'docker_register_failures_total{kind="usage"}': 0}


def test_a_run_that_found_the_lock_held_is_counted_as_such_and_neither_succeeds_nor_fails(tmp_path):
    first = after(dr.RunResult(NOW, 0.1, outcome(tmp_path, registrations=1)))
    samples = after(dr.RunResult(NOW + 10, 5.0), first)
    assert samples["docker_register_lock_busy_total"] == 1 and samples["docker_register_runs_total"] == 2
    assert samples["docker_register_last_run_success"] == 1
    assert samples["docker_register_last_success_timestamp_seconds"] == NOW
    assert all(v == 0 for k, v in samples.items() if k.startswith("docker_register_failures_total"))


def test_counters_carry_on_through_the_text_a_one_shot_run_reads_back(tmp_path):
    text = ""
    for n, result in enumerate([dr.RunResult(NOW, 0.1, outcome(tmp_path, [change(dr.ChangeKind.ADD)])),
                                dr.RunResult(NOW + 10, 0.1, error=dr.DockerError("docker: down")),
                                dr.RunResult(NOW + 20, 0.1, outcome(tmp_path, [change(dr.ChangeKind.UPDATE)]))]):
        text = dr.metrics_text(after(result, dr.carried_samples(text)))
    samples = parse_samples(text, "docker_register_")
    assert samples["docker_register_runs_total"] == 3
    assert samples['docker_register_failures_total{kind="docker"}'] == 1
    assert samples['docker_register_changes_total{kind="add"}'] == 1
    assert samples['docker_register_changes_total{kind="update"}'] == 1
    assert samples["docker_register_last_success_timestamp_seconds"] == NOW + 20
    assert samples["docker_register_last_run_success"] == 1


def test_the_text_has_help_and_type_once_per_family_before_its_samples(tmp_path):
    text = dr.metrics_text(after(dr.RunResult(NOW, 0.1, outcome(tmp_path)), setup=dr.MetricsSetup(
        "events", 5.0, 30, "redis", "traefik")))
    lines = text.splitlines()
    assert text.endswith("\n") and "" not in lines
    seen = set()
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in seen and lines[i + 1].startswith(f"# TYPE {name} ")
            seen.add(name)
        elif not line.startswith("#"):
            assert line.partition("{")[0].partition(" ")[0] in seen, line
    for name in seen:
        assert dr.METRICS[name][0] == ("counter" if name.endswith("_total") else "gauge"), name
        assert name.startswith("docker_register_")
    assert "docker_register_last_run_timestamp_seconds 1800000000.25" in lines
    assert "docker_register_event_stream_up 0" in lines


def test_passes_are_counted_by_trigger_with_every_and_left_out_of_a_one_shot_run(tmp_path):
    every = dr.MetricsSetup("events", 1.0, 30, "etcd", "discover")
    first = after(dr.RunResult(NOW, 0.1, outcome(tmp_path), trigger="interval", events_up=True), setup=every)
    second = after(dr.RunResult(NOW + 1, 0.1, outcome(tmp_path), trigger="event", events_up=False), first, every)
    assert {k: v for k, v in second.items() if "passes" in k or "stream" in k} == {
        'docker_register_passes_total{trigger="interval"}': 1, 'docker_register_passes_total{trigger="event"}': 1,
        "docker_register_event_stream_up": 0}
    once = after(dr.RunResult(NOW + 2, 0.1, outcome(tmp_path)), second)
    assert not any("passes" in k or "stream" in k for k in once)


@pytest.mark.parametrize("line", [
    "docker_register_runs_total -3", "docker_register_runs_total NaN", "docker_register_runs_total +Inf",
    "docker_register_runs_total many", 'docker_register_failures_total{kind="store} 4',
    'docker_register_failures_total{kind="x\\"y"} 4', "docker_register_runs_total{} 5",
    "node_load1 7", "docker_register_last_run_duration_seconds 9", "# docker_register_runs_total 8", "",
])
def test_reading_back_keeps_only_well_formed_carried_samples(line):
    assert dr.carried_samples(f"{line}\ndocker_register_lock_busy_total 2\n") == {"docker_register_lock_busy_total": 2}


def test_label_values_are_escaped():
    assert dr.sample("x", a='say "hi"\\\n') == 'x{a="say \\"hi\\"\\\\\\n"}'


# --- the file -------------------------------------------------------------------------------


def test_the_file_is_replaced_in_one_step_readable_by_all_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "docker-register.prom"
    path.write_text("old\n")
    old_umask = os.umask(0o077)  # as under the units' UMask=0077
    try:
        dr.write_atomically(str(path), "new 1\n")
    finally:
        os.umask(old_umask)
    assert path.read_text() == "new 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["docker-register.prom"]


def test_a_file_that_cannot_be_written_raises_and_leaves_nothing_behind(tmp_path):
    with pytest.raises(OSError):
        dr.write_atomically(str(tmp_path / "missing" / "docker-register.prom"), "x 1\n")
    (tmp_path / "taken.prom").mkdir()  # a folder where the file should be: the rename fails
    with pytest.raises(OSError):
        dr.write_atomically(str(tmp_path / "taken.prom"), "x 1\n")
    assert os.listdir(tmp_path) == ["taken.prom"]


# --- the CLI on in-memory adapters ------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """dr.main with fakes behind open_adapters / open_store (one in-memory etcd for all runs of a test)."""
    for name in list(os.environ):
        if name.startswith(SERVER_VARIABLES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOST_IP", "10.0.0.5")
    monkeypatch.setenv("DOCKER_REGISTER_LOCK", str(tmp_path / "sync.lock"))
    store, docker = FakeEtcd(), FakeDocker([web(1), web(2, 32769)])
    monkeypatch.setattr(dr, "open_adapters", lambda cfg: dr.Adapters(docker, store))
    monkeypatch.setattr(dr, "open_store", lambda cfg, purging=False: (store, lambda: None))
    return docker


def run(capsys, *argv):
    code = dr.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sync_writes_the_metrics_file_and_carries_its_counters_to_the_next_run(cli, capsys, tmp_path):
    path = tmp_path / "docker-register.prom"
    assert run(capsys, "sync", "--metrics-file", str(path))[0] == 0
    cli.fail_next()
    code, _, err = run(capsys, "sync", "--metrics-file", str(path))
    assert code == 1 and len(err.splitlines()) == 1
    samples = parse_samples(path.read_text(), "docker_register_")
    assert samples["docker_register_runs_total"] == 2 and samples["docker_register_registrations"] == 2
    assert samples['docker_register_failures_total{kind="docker"}'] == 1
    assert samples['docker_register_changes_total{kind="add"}'] == 3
    assert samples["docker_register_interval_seconds"] == 10  # a third of the default TTL
    assert 0 < time.time() - samples["docker_register_last_success_timestamp_seconds"] < 60


def test_the_environment_twin_names_the_file_and_a_usage_error_is_recorded(cli, capsys, monkeypatch, tmp_path):
    path = tmp_path / "m.prom"
    monkeypatch.setenv("DOCKER_REGISTER_METRICS_FILE", str(path))
    code, _, err = run(capsys, "sync", "--prefix", "relative")
    assert code == 2 and len(err.splitlines()) == 1
    samples = parse_samples(path.read_text(), "docker_register_")
    assert samples['docker_register_failures_total{kind="usage"}'] == 1
    assert samples["docker_register_last_run_success"] == 0


def test_a_dry_run_leaves_the_metrics_file_alone(cli, capsys, tmp_path):
    path = tmp_path / "docker-register.prom"
    assert run(capsys, "sync", "--dry-run", "--metrics-file", str(path))[0] == 0
    assert not path.exists()


@pytest.mark.parametrize("name", ["metrics.txt", "metrics.prom/", "metrics.prom.tmp"])
def test_a_file_node_exporter_would_not_read_is_a_usage_error(cli, capsys, tmp_path, name):
    code, out, err = run(capsys, "sync", "--metrics-file", f"{tmp_path}/{name}")
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and "--metrics-file" in err and ".prom" in err


def test_an_empty_metrics_file_setting_asks_for_none(cli, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_REGISTER_METRICS_FILE", "")
    assert run(capsys, "sync")[0] == 0
    assert os.listdir(tmp_path) == ["sync.lock"]


def test_a_metrics_file_that_cannot_be_written_is_said_in_one_line_and_the_run_still_succeeds(cli, capsys,
                                                                                              tmp_path):
    path = tmp_path / "missing" / "docker-register.prom"
    code, out, err = run(capsys, "sync", "--metrics-file", str(path))
    assert code == 0 and out.startswith("added 3, updated 0, removed 0")
    assert err == (f"docker-register: note: --metrics-file {path}: not written: No such file or directory\n")


def test_no_secret_reaches_the_metrics_file(cli, capsys, tmp_path):
    path = tmp_path / "docker-register.prom"
    assert run(capsys, "sync", "--metrics-file", str(path), "--user", "root:hunter2-user",
               "--password", "hunter2-password", "--etcd", "http://10.9.8.7:2379")[0] == 0
    text = path.read_text()
    assert "hunter2" not in text and "10.9.8.7" not in text and "10.0.0.5" not in text and "/backends" not in text


def test_purge_leaves_only_the_time_it_took_the_host_out(cli, capsys, tmp_path):
    path = tmp_path / "docker-register.prom"
    assert run(capsys, "sync", "--metrics-file", str(path))[0] == 0
    assert run(capsys, "purge", "--metrics-file", str(path))[0] == 0
    assert list(parse_samples(path.read_text(), "docker_register_")) == ["docker_register_purged_timestamp_seconds"]
    assert run(capsys, "sync", "--metrics-file", str(path))[0] == 0
    samples = parse_samples(path.read_text(), "docker_register_")
    assert samples["docker_register_runs_total"] == 1 and "docker_register_purged_timestamp_seconds" not in samples


# --- sync_every hands each pass over ------------------------------------------------------------


def test_sync_every_hands_each_pass_over_with_what_started_it(tmp_path):
    docker, store, stop, triggers = FakeDocker([container()]), FakeEtcd(), threading.Event(), dr.Triggers()
    clock, results = FakeClock(), []

    def observe(result):
        results.append(result)
        if len(results) == 1:
            triggers.note(dr.EventEffect.PASS, "a" * 64)  # an event: the next pass comes at once, not in 60 s
        else:
            stop.set()

    triggers.events_up = True  # as follow_events sets it once Docker's stream is open
    started = clock.monotonic()
    dr.sync_every(config(tmp_path), lambda: dr.Adapters(docker, store), 60.0, lambda outcome: None, stop, triggers,
                  clock=clock, observe=observe, report_failure=dr.report_error)
    assert [(r.trigger, r.events_up, r.error, r.outcome.registrations) for r in results] == [
        ("interval", True, None, 1), ("event", True, None, 1)]
    assert clock.monotonic() - started < 60, "the event's pass did not wait for the interval"
    assert all(abs(r.ended - time.time()) < 60 and r.seconds >= 0 for r in results)


def test_sync_every_hands_a_failed_pass_over_with_its_error(tmp_path):
    docker, store, stop, results = FakeDocker([container()]), FakeEtcd(), threading.Event(), []
    docker.fail_next()

    def observe(result):
        results.append(result)
        if len(results) == 2:
            stop.set()

    dr.sync_every(config(tmp_path), lambda: dr.Adapters(docker, store), 0.01, lambda outcome: None, stop, None,
                  clock=FakeClock(), observe=observe, report_failure=dr.report_error)
    assert isinstance(results[0].error, dr.DockerError) and results[0].outcome is None
    assert results[1].error is None and results[1].outcome.registrations == 1
    assert [r.events_up for r in results] == [None, None]


# --- the shipped rule file, checked and unit-tested by promtool -------------------------------------


@server_fixture(scope="module")
def promtool() -> str:
    return require("promtool")


def test_every_metric_passes_promtools_lint_of_names_units_and_help(promtool, tmp_path):
    events = dr.MetricsSetup("events", 10.0, 30, "etcd", "discover")
    samples = after(dr.RunResult(NOW, 0.1, outcome(tmp_path, [change(dr.ChangeKind.ADD)], registrations=1),
                                 trigger="event", events_up=True), setup=events)
    samples["docker_register_purged_timestamp_seconds"] = NOW  # purge writes it alone; here, for the lint
    assert set(key.partition("{")[0] for key in samples) == set(dr.METRICS)
    result = subprocess.run([promtool, "check", "metrics"], input=dr.metrics_text(samples), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_shipped_rule_file_passes_promtool_check_rules(promtool):
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "SUCCESS: 2 rules found" in result.stdout, result.stdout + result.stderr


#: promtool test rules on the shipped file: series as a 10 s timer's runs would leave them, scraped every 10 s.
RULE_TESTS = """
rule_files: [%(rules)s]
evaluation_interval: 10s
tests:
  - interval: 10s
    input_series:
      # A host whose runs stop after 1 minute: the file keeps its last success (t=60s).
      - series: docker_register_last_success_timestamp_seconds{instance="stopped"}
        values: 0+10x6 60x20
      - series: docker_register_interval_seconds{instance="stopped"}
        values: 10x26
      # A host that keeps running.
      - series: docker_register_last_success_timestamp_seconds{instance="running"}
        values: 0+10x26
      - series: docker_register_interval_seconds{instance="running"}
        values: 10x26
      # A host taken out on purpose at 1 minute: purge replaced its series by the purge time.
      - series: docker_register_last_success_timestamp_seconds{instance="purged"}
        values: 0+10x6 stale
      - series: docker_register_interval_seconds{instance="purged"}
        values: 10x6 stale
      - series: docker_register_purged_timestamp_seconds{instance="purged"}
        values: _x6 60x20
    alert_rule_test:
      - eval_time: 90s
        alertname: DockerRegisterStale
        exp_alerts: []
      - eval_time: 100s
        alertname: DockerRegisterStale
        exp_alerts:
          - exp_labels: {severity: critical, instance: stopped}
            exp_annotations:
              summary: "docker-register on stopped has not succeeded for 40s"
              description: &stale >-
                No successful docker-register run for more than three intervals: this host's containers drop out of
                service discovery when its lease runs out. Check the timer or the watch service
                (systemctl status docker-register.timer docker-register-watch.service) and its journal.
      - eval_time: 250s
        alertname: DockerRegisterStale
        exp_alerts:
          - exp_labels: {severity: critical, instance: stopped}
            exp_annotations:
              summary: "docker-register on stopped has not succeeded for 3m 10s"
              description: *stale

  - interval: 10s
    input_series:
      # One run in two fails (store), for 40 minutes.
      - series: docker_register_runs_total{instance="flaky"}
        values: 0+1x240
      - series: docker_register_failures_total{instance="flaky",kind="store"}
        values: 0+0.5x240
      - series: docker_register_failures_total{instance="flaky",kind="docker"}
        values: 0x240
      # One failure in the whole time: a leader election, say.
      - series: docker_register_runs_total{instance="healthy"}
        values: 0+1x240
      - series: docker_register_failures_total{instance="healthy",kind="store"}
        values: 0x100 1x140
    alert_rule_test:
      - eval_time: 5m
        alertname: DockerRegisterFailing
        exp_alerts: []
      - eval_time: 30m
        alertname: DockerRegisterFailing
        exp_alerts:
          - exp_labels: {severity: warning, instance: flaky}
            exp_annotations:
              summary: "docker-register runs fail on flaky"
              description: >-
                45 docker-register runs failed in the last 15 minutes; by what failed:
                docker_register_failures_total{instance="flaky"}. The journal has the error lines
                (journalctl -u docker-register.service -u docker-register-watch.service).
"""


def test_the_shipped_rules_fire_for_a_stopped_and_a_failing_host_and_for_no_other(promtool, tmp_path):
    tests = tmp_path / "rules_test.yml"
    tests.write_text(RULE_TESTS % {"rules": RULES})
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- real runs, a real node_exporter and a real Prometheus ------------------------------------------


@server_fixture(scope="module")
def node_exporter(tmp_path_factory):
    """One node_exporter for this module, reading its own textfile folder."""
    server = NodeExporter(tmp_path_factory.mktemp("node-exporter")).start()
    yield server
    server.stop()


@pytest.fixture
def metrics_path(node_exporter):
    """The test's metrics file, wired as docs/metrics.md says: in a runtime folder of its own, linked from
    node_exporter's folder; both gone afterwards (two files would repeat the series)."""
    path = node_exporter.root / "run" / "docker-register.prom"
    path.parent.mkdir(exist_ok=True)
    link = node_exporter.textfiles / path.name
    link.symlink_to(path)
    yield path
    link.unlink()
    path.unlink(missing_ok=True)


def test_node_exporter_serves_what_real_runs_wrote(world, node_exporter, metrics_path):
    for _ in range(2):
        world.docker_run("-P", "local/web")
    started = time.time()
    world.sync("--metrics-file", str(metrics_path))
    served = node_exporter.samples()
    assert served["node_textfile_scrape_error"] == 0
    assert served["docker_register_registrations"] == 2
    assert served["docker_register_runs_total"] == 1 and served["docker_register_last_run_success"] == 1
    assert started <= served["docker_register_last_success_timestamp_seconds"] <= time.time()
    assert served['docker_register_changes_total{kind="add"}'] == 3  # two containers and the service's port key
    assert 0 < served["docker_register_last_run_duration_seconds"] < 10

    failed = world.run("sync", "--metrics-file", str(metrics_path), "--timeout", "1", ETCD_HOST="127.0.0.1:1")
    assert failed.returncode == 1 and len(failed.stderr.splitlines()) == 1, failed.stderr
    served_after = node_exporter.samples()
    assert served_after['docker_register_failures_total{kind="store"}'] == 1
    assert served_after['docker_register_failures_total{kind="docker"}'] == 0
    assert served_after["docker_register_runs_total"] == 2 and served_after["docker_register_last_run_success"] == 0
    assert (served_after["docker_register_last_success_timestamp_seconds"]
            == served["docker_register_last_success_timestamp_seconds"])

    assert world.run("purge", "--metrics-file", str(metrics_path)).returncode == 0
    purged = node_exporter.samples()
    assert purged["node_textfile_scrape_error"] == 0 and set(purged) == {
        "node_textfile_scrape_error", "docker_register_purged_timestamp_seconds"}


def test_node_exporter_serves_the_passes_and_event_stream_of_sync_every_events(world, node_exporter, metrics_path):
    with world.running("sync", "--every", "2", "--events", "--metrics-file", str(metrics_path)) as proc:
        wait_until(lambda: metrics_path.exists(), 15, "the first pass's metrics")
        world.docker_run("-P", "local/web")
        served = wait_until(lambda: (lambda s: s if s.get('docker_register_passes_total{trigger="event"}', 0) >= 1
                                     and s.get("docker_register_registrations") == 1 else None)(
            node_exporter.samples()), 15, "a pass started by the container's start event")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert served["docker_register_event_stream_up"] == 1
    assert served['docker_register_passes_total{trigger="interval"}'] >= 1
    assert served["docker_register_interval_seconds"] == 2
    assert served["docker_register_runs_total"] == sum(v for k, v in served.items() if "passes_total" in k)
    assert any(k.startswith("docker_register_info{") and 'mode="events"' in k for k in served)


@server_fixture(scope="module")
def prometheus(node_exporter, tmp_path_factory):
    """A real Prometheus scraping the module's node_exporter every second, with the shipped rules evaluated as often."""
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), [node_exporter.target], [RULES]).start()
    yield server
    server.stop()


def test_prometheus_fires_the_stale_host_alert_once_the_hosts_runs_stop(world, prometheus, metrics_path):
    # --every 1 and a TTL of 3: the alert's threshold is three intervals, 3 s.
    with world.running("sync", "--every", "1", "--ttl", "3", "--metrics-file", str(metrics_path)) as proc:
        wait_until(lambda: prometheus.query("docker_register_interval_seconds"), 20,
                   "Prometheus to scrape the metrics")
        time.sleep(4)  # more than the threshold while passes go on: no alert
        assert prometheus.alerts("DockerRegisterStale") == []
        proc.send_signal(signal.SIGKILL)  # the host's runs stop; its file stays
        proc.wait(10)
        stopped = time.time()
    alert = wait_until(lambda: [a for a in prometheus.alerts("DockerRegisterStale") if a["state"] == "firing"], 20,
                       "the stale-host alert to fire")[0]
    fired = time.time() - stopped
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["job"] == "node"
    assert 2 <= fired <= 10, fired  # after three intervals, within a scrape and an evaluation or two
    assert prometheus.query("docker_register_runs_total")
