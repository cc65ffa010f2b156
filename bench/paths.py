"""The checkout's root, and tests/ on sys.path: the benchmark starts its servers and builds what it runs with the
tests' own helpers (tests/harness.py, hosts.py, fakes.py, consumers.py).

measure, servers and machine import this before anything from tests/; synthetic and the benchmark modules import
one of those first.
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
