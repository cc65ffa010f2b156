"""The checkout's root, and tests/ on sys.path: the benchmark starts its servers and builds what it runs with the
tests' own helpers (tests/harness.py, hosts.py, fakes.py, consumers.py).

The shared modules (measure, servers, synthetic, machine) import this first; a benchmark module imports one of
them before it imports from tests/.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: The checkout the benchmark runs from.
REPO = Path(__file__).resolve().parent.parent
#: The tests' helpers.
TESTS = REPO / "tests"

if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
