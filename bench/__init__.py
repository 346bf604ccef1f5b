"""Benchmarks of gridhub (not tests): each prints its figure beside the reference it is held to.

Run them with ``make bench`` or ``python -m bench [NAME ...] [--quick]``; see docs/benchmarks.md.
Every ``bench/bench_<NAME>.py`` with a ``run(options) -> int`` function is a benchmark.
"""

from pathlib import Path

BENCHMARKS = tuple(sorted(path.stem.removeprefix("bench_") for path in Path(__file__).parent.glob("bench_*.py")))
