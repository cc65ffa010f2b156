"""The benchmark's key results as pictures: PNG files next to bench/README.md, which shows them.

A benchmark run with --plot hands its measured figures to one of the figure functions here, and `draw`
writes bench/<name>.png.  Drawing needs matplotlib, from the bench's own extra (pip install '.[bench]');
without it the benchmark prints its tables as always, and one line saying that plots need the extra.
Nothing here measures anything, and matplotlib is imported only when a picture is drawn.
"""

from __future__ import annotations

import argparse
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path

#: Where the pictures go: next to bench/README.md.
FOLDER = Path(__file__).resolve().parent
#: 8 × 4.5 inches at 100 dpi: 800 × 450 pixels, a few tens of kB.
SIZE = (8, 4.5)
DPI = 100
#: Points of the small grey note under a picture's title: what was measured, where, under what load.
NOTE_SIZE = 8.5
#: Said instead of drawing when matplotlib is missing.
NO_EXTRA = "plot: not drawn, plots need the bench extra (pip install '.[bench]')"
#: Colour, marker and legend text of each series, the same in every picture.
SERIES = {
    "lease": ("tab:blue", "o", "docker-register: writes only what changed"),
    "ttl": ("tab:red", "s", "original: every key rewritten with a TTL each pass"),
    "events": ("tab:blue", "o", "sync --every 10 --events"),
    "timer": ("tab:orange", "D", "sync --every 10 (a timer's schedule)"),
}
#: Lowest rate a log axis shows; a measured 0 is drawn on it and labelled "0".
FLOOR = 0.01


def add_argument(parser: argparse.ArgumentParser) -> None:
    """The --plot flag of a benchmark that has a picture."""
    parser.add_argument("--plot", action="store_true",
                        help="also draw the key results into bench/<name>.png (needs the bench extra: matplotlib)")


# ---------------------------------------------------------------------------
# What the benchmarks hand over
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetPoint:
    """One design at one fleet size: its measured write rate, what it asks for, whether it kept up."""

    design: str
    hosts: int
    #: puts + deletes per second etcd applied: what every watching consumer receives.
    writes: float
    #: puts per second the design asks for when every pass runs on time; None when it writes only changes.
    offered: float | None
    #: Every pass of the measured rounds was done before its host's next one was due.
    in_time: bool


@dataclass(frozen=True)
class Strip:
    """One row of a latency picture: its label, its series (colour) and its trials in seconds."""

    label: str
    series: str
    seconds: tuple[float, ...]


@dataclass(frozen=True)
class Outcome:
    """One run of the rolling restart: Traefik's throttle, the mode, failed and sent requests."""

    throttle: str
    mode: str
    failed: int
    sent: int


# ---------------------------------------------------------------------------
# Figures: each takes pyplot and the data, and returns the figure
# ---------------------------------------------------------------------------


def fleet_figure(plt, points: list[FleetPoint], note: str):
    """Write rate against the number of hosts, per design, both axes logarithmic."""
    figure, axes = plt.subplots(figsize=(SIZE[0], SIZE[1] + 0.5), layout="constrained")
    for design in dict.fromkeys(p.design for p in points):
        colour, marker, label = SERIES[design]
        mine = sorted((p for p in points if p.design == design), key=lambda p: p.hosts)
        hosts, writes = [p.hosts for p in mine], [max(p.writes, FLOOR) for p in mine]
        axes.plot(hosts, writes, color=colour, label=label)
        for p, y in zip(mine, writes):
            axes.plot(p.hosts, y, marker=marker, color=colour, markersize=8,
                      markerfacecolor=colour if p.in_time else "white", markeredgewidth=1.5)
            axes.annotate(rate_text(p.writes), (p.hosts, y), textcoords="offset points", xytext=(0, 8),
                          ha="center", fontsize=9, color=colour)
        asked = [(p.hosts, p.offered) for p in mine if p.offered is not None]
        if asked:
            axes.plot(*zip(*asked), color=colour, linestyle=":", label="original: what it asks for (all on time)")
    axes.plot([], [], marker="o", linestyle="", color="grey", markerfacecolor="white", markeredgewidth=1.5,
              label="hollow: some passes late or not run")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_ylim(FLOOR / 2, max(max(p.writes, p.offered or 0) for p in points) * 4)
    plain_numbers(axes.yaxis)
    axes.set_xticks(sorted({p.hosts for p in points}), [str(k) for k in sorted({p.hosts for p in points})])
    axes.xaxis.set_minor_locator(plt.NullLocator())
    axes.set_xlabel("hosts in the fleet (log scale)")
    axes.set_ylabel("etcd writes per second\n(puts + deletes, log scale)")
    axes.grid(True, which="major", alpha=0.3)
    frame(figure, axes, "Steady etcd write rate of a fleet against its size", note, columns=2)
    return figure


def rate_text(value: float) -> str:
    """A rate as its label: 0, 0.25, 2.3, 991, 2469."""
    return "0" if value <= 0 else f"{value:.2g}" if value < 10 else f"{value:.0f}"


def latency_figure(plt, strips: list[Strip], title: str, target: float | None, note: str):
    """Every trial as a dot on a logarithmic time axis, one row per strip (top first), a tick at each median."""
    figure, axes = plt.subplots(figsize=(SIZE[0], 2.2 + 0.4 * len(strips)), layout="constrained")
    rows = list(range(len(strips)))[::-1]
    for row, strip in zip(rows, strips):
        colour, marker, _ = SERIES[strip.series]
        jitter = [((i * 7) % 5 - 2) * 0.06 for i in range(len(strip.seconds))]  # spread equal values apart
        axes.scatter(strip.seconds, [row + j for j in jitter], color=colour, marker=marker, s=22, alpha=0.6,
                     linewidths=0)
        axes.plot([statistics.median(strip.seconds)] * 2, [row - 0.32, row + 0.32], color="black", linewidth=2)
    for series in dict.fromkeys(s.series for s in strips):
        colour, marker, label = SERIES[series]
        axes.scatter([], [], color=colour, marker=marker, label=label)
    axes.plot([], [], color="black", linewidth=2, label="median")
    if target is not None:
        axes.axvline(target, color="grey", linestyle="--", linewidth=1)
        axes.annotate(f"target: p99 < {target:g} s", (target, rows[0] + 0.4), xytext=(4, 0),
                      textcoords="offset points", fontsize=9, color="dimgrey", va="center")
    groups = label_groups(strips)
    axes.set_yticks([len(strips) - 1 - (first + last) / 2 for first, last, _ in groups],
                    [label for _, _, label in groups])
    for first, _, _ in groups[1:]:
        axes.axhline(len(strips) - first - 0.5, color="lightgrey", linewidth=0.8)
    axes.set_ylim(-0.6, len(strips) - 0.1)
    axes.set_xscale("log")
    plain_numbers(axes.xaxis, subs=(1, 2, 5))
    axes.set_xlabel("seconds (log scale)")
    axes.grid(True, axis="x", which="major", alpha=0.3)
    frame(figure, axes, title, note, columns=3)
    return figure


def label_groups(strips: list[Strip]) -> list[tuple[int, int, str]]:
    """(first, last, label) of each run of consecutive strips with the same label: one tick label each."""
    groups: list[tuple[int, int, str]] = []
    for i, strip in enumerate(strips):
        if groups and groups[-1][2] == strip.label:
            groups[-1] = (groups[-1][0], i, strip.label)
        else:
            groups.append((i, i, strip.label))
    return groups


def rolling_figure(plt, outcomes: list[Outcome], note: str):
    """Failed requests per run, grouped by Traefik's throttle, one bar per mode, each labelled 'n of sent'."""
    figure, axes = plt.subplots(figsize=SIZE, layout="constrained")
    throttles = list(dict.fromkeys(o.throttle for o in outcomes))
    modes = list(dict.fromkeys(o.mode for o in outcomes))
    width = 0.8 / len(modes)
    top = max([o.failed for o in outcomes] + [1])
    for m, mode in enumerate(modes):
        colour, _, label = SERIES[mode]
        mine = {o.throttle: o for o in outcomes if o.mode == mode}
        xs = [t + (m - (len(modes) - 1) / 2) * width for t, throttle in enumerate(throttles) if throttle in mine]
        runs = [mine[throttle] for throttle in throttles if throttle in mine]
        axes.bar(xs, [o.failed for o in runs], width * 0.9, color=colour, label=label)
        for x, o in zip(xs, runs):
            axes.annotate(f"{o.failed} of {o.sent}", (x, o.failed), xytext=(0, 3), textcoords="offset points",
                          ha="center", va="bottom", fontsize=10, fontweight="bold", color=colour)
    axes.set_xticks(range(len(throttles)), [f"Traefik providersThrottleDuration {t}" for t in throttles])
    axes.set_ylim(0, top * 1.15)
    axes.set_ylabel("failed requests (not a 200)")
    axes.grid(True, axis="y", alpha=0.3)
    frame(figure, axes, "Failed requests during a rolling restart through Traefik", note, columns=2)
    return figure


def frame(figure, axes, title: str, note: str, columns: int) -> None:
    """Title on top, the conditions under it in small grey, the legend below the axes."""
    figure.suptitle(title, fontweight="bold", fontsize=12)
    figure.legend(*axes.get_legend_handles_labels(), loc="outside lower center", ncol=columns, fontsize=9,
                  frameon=False)
    figure.draw_without_rendering()  # lays the axes out, so that the note can be wrapped to their width
    characters = axes.get_window_extent().width / (NOTE_SIZE * figure.dpi / 72 * 0.55)
    axes.set_title(textwrap.fill(note, int(characters)), fontsize=NOTE_SIZE, fontweight="normal", color="dimgrey")


def plain_numbers(axis, subs=(1.0,)) -> None:
    """Ticks of a log axis as plain numbers (0.2, 1, 10, 1000), not powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    axis.set_major_locator(LogLocator(subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_locator(NullLocator())


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def pyplot():
    """matplotlib's pyplot drawing to files only, or None without the bench extra."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 12, "axes.titleweight": "bold"})
    return plt


def write(name: str, figure, *data, folder: Path = FOLDER) -> Path | None:
    """Draw figure(pyplot, *data) into folder/<name>.png; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    drawn = figure(plt, *data)
    path = folder / f"{name}.png"
    drawn.savefig(path, dpi=DPI)
    plt.close(drawn)
    return path


def draw(args: argparse.Namespace, name: str, figure, *data) -> None:
    """When --plot was given, write bench/<name>.png and print where, or print that plots need the extra."""
    if getattr(args, "plot", False):
        path = write(name, figure, *data)
        print(f"plot: {path.relative_to(FOLDER.parent)}" if path else NO_EXTRA)
