"""How a benchmark tells what it found: progress lines on stderr, figures formatted, tables and targets on stdout."""

from __future__ import annotations

import statistics
import sys
import time


def log(message: str) -> None:
    """Progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def int_list(text: str) -> list[int]:
    """A flag's comma-separated counts: '10,50,200' -> [10, 50, 200]."""
    return [int(x) for x in text.split(",") if x]


def append_measured(results: list, label: str, measure) -> None:
    """Append what measure() returns to results; when it fails, say so on stderr and among the figures, and go on
    with the benchmark's next part."""
    try:
        results.append(measure())
    except Exception as exc:  # noqa: BLE001 - report it and go on with the next one
        log(f"{label}: failed: {type(exc).__name__}: {exc}")
        print(f"{label}: FAILED: {type(exc).__name__}: {str(exc)[:300]}")


def num(value: float) -> str:
    """A rate with two decimals below 10, one below 100, none above."""
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def same(values) -> str:
    """The one value every repeat gave, or all of them when they differ."""
    values = list(values)
    return values[0] if len(set(values)) == 1 else " / ".join(values)


def ms(values) -> str:
    """Median in milliseconds, with the range."""
    values = [v * 1000 for v in values]
    return f"{statistics.median(values):.0f} ({min(values):.0f}–{max(values):.0f})"


def spread(values, fmt: str = "{:g}") -> str:
    """Median, with the range when the values differ."""
    values = list(values)
    low, high, mid = min(values), max(values), statistics.median(values)
    text = fmt.format(mid)
    return text if low == high else f"{text} ({fmt.format(low)}–{fmt.format(high)})"


def print_table(header: list[str], rows: list[tuple[str, list[str], str]]) -> None:
    """Print label | cells | note as aligned columns."""
    widths = [max(len(header[0]), *(len(r[0]) for r in rows))]
    widths += [max(len(header[i + 1]), *(len(r[1][i]) for r in rows)) for i in range(len(header) - 2)]
    for label, cells, note in [(header[0], header[1:-1], header[-1]), *rows]:
        line = label.ljust(widths[0]) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths[1:]))
        print((line + "  " + note).rstrip())


def table_rows(results: list, specs: list[tuple]) -> list[tuple[str, list[str], str]]:
    """Table rows from (label, cell function[, note]) specs: one cell per result."""
    return [(label, [cell(r) for r in results], note[0] if note else "") for label, cell, *note in specs]


def print_targets(lines: list[str]) -> bool:
    """Print the PASS/FAIL lines of a table's targets; True when one failed."""
    print()
    print("Targets:")
    print("\n".join("  " + line for line in lines))
    print()
    return any(" FAIL " in line for line in lines)


def verdict_lines(results: dict[str, list], checks) -> list[str]:
    """PASS/FAIL of each target per column of results: checks(column's results) gives (target, met) pairs."""
    return [f"{name:<9} {'PASS' if ok else 'FAIL'}  {what}" for name, rs in results.items() for what, ok in checks(rs)]


def tables_per_count(counts: list[int], measure, describe, show, checks) -> int:
    """For each count n: results = measure(n) (a column's repeats by column name), then describe(n) (what was
    measured, and how), show(results) (the table) and the targets checks names; 1 when one was missed, else 0."""
    failed = False
    for n in counts:
        results = measure(n)
        print(describe(n))
        show(results)
        failed = print_targets(verdict_lines(results, checks)) or failed
    return 1 if failed else 0
