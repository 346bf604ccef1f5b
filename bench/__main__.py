"""Run the benchmarks: ``python -m bench`` (all) or ``python -m bench NAME [NAME ...]``.

Exit status 0 when every target was met, 1 when one was missed, 2 on a usage or set-up error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from bench import BENCHMARKS
from bench.common import Options, console


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen benchmarks in turn."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--quick", action="store_true", help="scaled-down smoke run (numbers not comparable)")
    parser.add_argument("--runs", type=int, help="runs per case (default: each benchmark's own)")
    parser.add_argument(
        "--duration", type=float, help="runtime_memory sampling window in seconds (default 120; 3600 for the full hour)"
    )
    parser.add_argument("--mode", choices=["managed", "embedded"], help="ingest: only this marketplace mode")
    args = parser.parse_args(argv)
    names = [n.removeprefix("bench_") for n in args.names] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    options = Options(quick=args.quick, runs=args.runs, duration=args.duration, mode=args.mode)
    results: dict[str, int] = {}
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        started = time.monotonic()
        try:
            results[name] = module.run(options)
        except Exception as exc:  # a benchmark that cannot run is reported, and the others still run
            console.print_exception(show_locals=False)
            console.print(f"[red]bench_{name} could not run: {exc}")
            results[name] = 2
        console.print(f"[dim]bench_{name} took {time.monotonic() - started:.0f} s")
    console.rule("[bold]summary")
    for name, status in results.items():
        label = {0: "[green]all targets met", 1: "[red]target missed"}.get(status, "[red]could not run")
        console.print(f"bench_{name}: {label}")
    return max(results.values(), default=0)


if __name__ == "__main__":
    sys.exit(main())
