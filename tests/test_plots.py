"""The benchmark's pictures (bench/plots.py): each figure shows what its benchmark hands it, with titles,
labelled axes and a legend, into a small PNG; without matplotlib --plot says so in one line.

Drawing needs the bench extra (matplotlib), which scripts/setup installs next to the test extra; without it
these tests fail (they never skip), and only these.
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import plots  # noqa: E402

FLEET = [plots.FleetPoint("lease", 10, 0.0, None, True), plots.FleetPoint("ttl", 10, 99.0, 100.0, True),
         plots.FleetPoint("lease", 1000, 4.6, None, True), plots.FleetPoint("ttl", 1000, 3336.0, 10000.0, False)]
STRIPS = [plots.Strip("start event → key present", "events", (0.26, 0.27, 0.28)),
          plots.Strip("start event → key present", "timer", (0.4, 3.9, 9.5)),
          plots.Strip("docker stop → key gone", "events", (0.42, 0.45, 0.48)),
          plots.Strip("docker stop → key gone", "timer", (1.2, 6.7, 9.8))]
OUTCOMES = [plots.Outcome("2s", "events", 0, 1809), plots.Outcome("2s", "timer", 657, 2918),
            plots.Outcome("200ms", "events", 0, 1800), plots.Outcome("200ms", "timer", 579, 2755)]


@pytest.fixture(scope="module")
def plt():
    """matplotlib's pyplot, from the bench extra."""
    pyplot = plots.pyplot()
    assert pyplot is not None, "matplotlib is missing: install the bench extra (scripts/setup does)"
    return pyplot


def texts(figure) -> list[str]:
    """Every piece of text drawn in a figure: titles, labels, tick labels, annotations, legend."""
    return [t.get_text() for t in figure.findobj(lambda artist: hasattr(artist, "get_text")) if t.get_text()]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_fleet_picture_shows_each_design_against_hosts_on_log_axes(plt):
    from matplotlib.colors import to_rgba

    figure = plots.fleet_figure(plt, FLEET, "conditions")
    axes = figure.axes[0]
    assert (axes.get_xscale(), axes.get_yscale()) == ("log", "log")
    assert "hosts" in axes.get_xlabel() and "per second" in axes.get_ylabel()
    drawn = texts(figure)
    assert "Steady etcd write rate of a fleet against its size" in drawn and "conditions" in drawn
    assert {plots.SERIES["lease"][2], plots.SERIES["ttl"][2]} <= set(drawn)
    assert {"0", "99", "4.6", "3336"} <= set(drawn)  # each point carries its measured rate
    markers = [(line.get_xdata()[0], line.get_ydata()[0], to_rgba(line.get_markerfacecolor()))
               for line in axes.get_lines() if line.get_marker() != "None" and len(line.get_xdata()) == 1]
    assert (10, plots.FLOOR, to_rgba("tab:blue")) in markers  # a measured 0 sits on the floor
    assert (1000, 3336.0, to_rgba("white")) in markers  # hollow: it fell behind
    asked = [line for line in axes.get_lines() if line.get_linestyle() == ":"]
    assert [list(line.get_ydata()) for line in asked] == [[100.0, 10000.0]]


def test_latency_picture_has_a_row_per_strip_and_one_label_per_kind(plt):
    figure = plots.latency_figure(plt, STRIPS, "Latency", 1.0, "conditions")
    axes = figure.axes[0]
    assert axes.get_xscale() == "log" and axes.get_xlabel() == "seconds (log scale)"
    assert [t.get_text() for t in axes.get_yticklabels()] == ["start event → key present", "docker stop → key gone"]
    dots = [c for c in axes.collections if len(c.get_offsets())]
    assert sorted(tuple(sorted(c.get_offsets()[:, 0])) for c in dots) == sorted(s.seconds for s in STRIPS)
    drawn = texts(figure)
    assert {"target: p99 < 1 s", "median", plots.SERIES["events"][2], plots.SERIES["timer"][2]} <= set(drawn)


def test_rolling_picture_labels_each_bar_failed_of_sent(plt):
    figure = plots.rolling_figure(plt, OUTCOMES, "conditions")
    axes = figure.axes[0]
    assert sorted(bar.get_height() for bar in axes.patches) == [0, 0, 579, 657]
    assert {"0 of 1809", "657 of 2918", "0 of 1800", "579 of 2755"} <= set(texts(figure))
    assert [t.get_text() for t in axes.get_xticklabels()] == ["Traefik providersThrottleDuration 2s",
                                                             "Traefik providersThrottleDuration 200ms"]
    assert axes.get_ylabel() == "failed requests (not a 200)"


def test_each_picture_is_a_small_png(plt, tmp_path):
    for name, figure, data in [("fleet", plots.fleet_figure, (FLEET, "note")),
                               ("events", plots.latency_figure, (STRIPS, "Latency", 1.0, "note")),
                               ("rolling", plots.rolling_figure, (OUTCOMES, "note"))]:
        path = plots.write(name, figure, *data, folder=tmp_path)
        width, height = png_size(path)
        assert path == tmp_path / f"{name}.png" and width == 800 and 300 <= height <= 600
        assert path.stat().st_size < 150_000


def test_plot_flag_without_matplotlib_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    plots.draw(argparse.Namespace(plot=True), "never-drawn", plots.rolling_figure, OUTCOMES, "note")
    assert capsys.readouterr().out == plots.NO_EXTRA + "\n"
    assert not (plots.FOLDER / "never-drawn.png").exists()


def test_no_plot_flag_draws_nothing(capsys):
    plots.draw(argparse.Namespace(plot=False), "never-drawn", plots.rolling_figure, OUTCOMES, "note")
    assert capsys.readouterr().out == "" and not (plots.FOLDER / "never-drawn.png").exists()
