"""Benchmarks, run as `python -m bench <name>`; each prints a machine-readable last line.

`BENCH_HIREDIS=0` in the environment hides hiredis from redis-py in the benchmark and in the
workers it starts (redis-py then parses replies in Python): the with/without comparison.
"""

import os
import sys

if os.environ.get("BENCH_HIREDIS") == "0":
    sys.modules["hiredis"] = None  # type: ignore[assignment]  # import fails: pure-Python parser

# name -> module exposing `add_arguments(parser)` and `run(args) -> int`.
BENCHMARKS: dict[str, str] = {
    "training": "bench.training",
    "backtest": "bench.backtest",
    "verdicts": "bench.verdicts",
    "overhead": "bench.overhead",
    "polling": "bench.polling",
    "per-poll": "bench.per_poll",
    "all": "bench.all",
}
