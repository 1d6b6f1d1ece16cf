"""``geogate-loadtest`` (or ``python -m loadtests``): replay a join storm and check every outcome.

Usage::

    geogate-loadtest SCENARIO.toml [--json FILE] [--plot FILE.png] [--record TRACE.jsonl]
                     [--workers N] [--workdir DIR] [--no-progress]
    geogate-loadtest SCENARIO.toml --find-capacity

Exit codes: 0 the run passed; 1 mismatches, errors or a failed timed action (or, with
``--find-capacity``, no sustainable rate found); 2 an invalid scenario, bad usage, or a target
or worker that failed; 3 every outcome was right but a latency objective was missed. This module
is the only place that turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from loadtests.capacity import find_capacity
from loadtests.report import print_report, write_json, write_plot
from loadtests.runner import RunOptions, run_scenario
from loadtests.scenario import load_scenario
from proxy.errors import ConfigError, GeogateError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geogate-loadtest",
        description="Replay join storms against geogate: distinct source regions, timed "
                    "restriction changes, every outcome checked, HDR latency percentiles.",
    )
    parser.add_argument("scenario", type=Path, help="the scenario file (TOML)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the full result as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="draw join rate, open sessions and latency over time")
    parser.add_argument("--record", type=Path, metavar="TRACE",
                        help="record the run as a JSON-lines trace that can be replayed")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="generator worker processes (default: the scenario's)")
    parser.add_argument("--workdir", type=Path, metavar="DIR",
                        help="the run folder (logs, restrictions copy; default: a temp folder)")
    parser.add_argument("--find-capacity", action="store_true",
                        help="search for the highest join rate with p99 time to admitted under "
                             "the scenario's [capacity] p99_ms")
    parser.add_argument("--no-progress", action="store_true", help="no live progress")
    parser.add_argument("--no-series", action="store_true",
                        help="leave the per-second table out of the report")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Returns:
        The exit code (module docstring).
    """
    args = _parser().parse_args(argv)
    if args.workers is not None and args.workers < 1:
        print("geogate-loadtest: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        scenario = load_scenario(args.scenario)
        options = RunOptions(workers=args.workers, record=args.record, workdir=args.workdir,
                             progress=None if args.no_progress else sys.stdout)
        if args.find_capacity:
            found = find_capacity(scenario, options, sys.stdout)
            if found.capacity is None:
                print("\nNo sustainable join rate found: even the lowest rate tried failed.")
                return 1
            failed = (f"; {found.first_failure:.0f} joins/s was not"
                      if found.first_failure is not None else
                      " (the highest rate tried)")
            print(f"\nHighest sustainable join rate: {found.capacity:.0f} joins/s "
                  f"(p99 time to admitted under {scenario.capacity.p99_ms:.0f} ms){failed}")
            if found.generator_limited:
                print("Note: at least one trial was limited by the generator, not the proxy; "
                      "more --workers (or CPUs) may find a higher rate.")
            return 0
        result = run_scenario(scenario, options)
        print_report(result, sys.stdout, series=not args.no_series)
        if args.json is not None:
            write_json(result, args.json)
            print(f"JSON result: {args.json}")
        if args.plot is not None:
            write_plot(result, args.plot)
            print(f"Figure: {args.plot}")
        if args.record is not None:
            print(f"Trace: {args.record} ({len(result.trace_events)} events)")
        return result.exit_code
    except ConfigError as exc:
        print("geogate-loadtest: invalid input", file=sys.stderr)
        for issue in exc.issues:
            print(f"  error: {issue}", file=sys.stderr)
        return 2
    except GeogateError as exc:
        print(f"geogate-loadtest: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ngeogate-loadtest: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
