"""Benchmarks, run as `python -m bench <name>`; each prints a machine-readable last line."""

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
