"""All chain benchmarks in one go (`make bench`): overhead, polling at several N, per-poll cost.

Each benchmark runs as its own `python -m bench ...` subprocess (a fresh stack and a fresh
Celery app each), writes its results as JSON, and this command prints one table and plots
poll lag against N (`--plot`, default docs/poll_lag.png; needs matplotlib, the `bench`
extra). Nothing here fails on a number: the goals are printed beside the results.
Worker configurations (`CONFIGS`): `default` (the project's default worker command),
`before` (the worker as configured before the cheaper countdown: Celery's retry, every task
event, kombu's own transport, no hiredis, httpx's transport), `previous` (the default worker
re-publishing through Celery's `send_task`, on httpx's transport), `before-tuned` (the best
polling worker of that time), `prefork3`, `prefork2` and `threads2x8`;
`--configs default,before` (the default) gives each figure with its same-run baseline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# The worker as it was before the cheaper countdown: Celery's retry, every event, kombu's own
# transport, redis-py's pure-Python parser, httpx's own HTTP transport (the store's fused calls
# and the whole-answer decode cannot be switched off).
_BEFORE = [
    "--reschedule",
    "retry",
    "--events",
    "all",
    "--worker-env",
    "BENCH_BROKER=kombu",
    "--worker-env",
    "BENCH_HIREDIS=0",
    "--worker-env",
    "BENCH_HTTP=httpx",
]
CONFIGS = {
    # The project's default worker command (Procfile, compose, README).
    "default": ["--pool", "prefork", "--concurrency", "4", "--workers", "1"],
    "prefork3": ["--pool", "prefork", "--concurrency", "3", "--workers", "1"],
    "prefork2": ["--pool", "prefork", "--concurrency", "2", "--workers", "1"],
    # Two single-core nodes of threads (one per core: two worker commands).
    "threads2x8": ["--pool", "threads", "--concurrency", "8", "--workers", "2"],
    "before": ["--pool", "prefork", "--concurrency", "2", "--workers", "1", *_BEFORE],
    # The default worker with the countdown re-published through Celery's send_task and the
    # training client on httpx's own transport: the project before the kept producer and
    # `http_transport`.
    "previous": [
        *["--pool", "prefork", "--concurrency", "4", "--workers", "1"],
        *["--worker-env", "BENCH_REPUBLISH=celery", "--worker-env", "BENCH_HTTP=httpx"],
    ],
    "before-tuned": [
        "--pool",
        "prefork",
        "--concurrency",
        "4",
        "--workers",
        "1",
        "--no-events",
        "--loglevel",
        "WARNING",
        *_BEFORE[:2],
        *_BEFORE[4:],
    ],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cycles", default="100,1000,2000,5000", help="N values for polling")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--job-seconds", type=float, default=60.0)
    parser.add_argument("--overhead-cycles", type=int, default=50)
    parser.add_argument(
        "--configs", default="default,before", help=f"polling workers, of {', '.join(CONFIGS)}"
    )
    parser.add_argument(
        "--per-poll-configs", default="default,before", help="workers of the per-poll runs"
    )
    parser.add_argument(
        "--per-poll-celery-cycles", type=int, default=500, help="0: per-poll in-process only"
    )
    parser.add_argument(
        "--extra", default="", help="config=N,N;... more polling runs, e.g. 'prefork3=2000'"
    )
    parser.add_argument("--plot", type=Path, default=Path("docs/poll_lag.png"))
    parser.add_argument("--results", type=Path, help="also write every result here (JSON)")


def _bench(name: str, options: list[str], out: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench", name, *options, "--json", str(out)]
    print("$ python -m bench " + " ".join([name, *options]), flush=True)
    completed = subprocess.run(argv, capture_output=True, text=True)
    lines = completed.stdout.strip().splitlines()
    print("  " + (lines[-1] if lines else completed.stderr.strip()[-500:]), flush=True)
    if completed.returncode != 0 or not out.exists():
        return {"error": completed.stderr.strip()[-2000:]}
    result = json.loads(out.read_text())
    result.pop("raw", None)
    return result


def plot(polling: dict[str, list[dict[str, Any]]], path: Path, interval: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot")
        return
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for config, results in polling.items():
        done = [r for r in results if "lag_p99_s" in r]
        counts = [r["cycles"] for r in done]
        # Log scale: lags under a millisecond are drawn at 1 ms.
        p99 = [max(r["lag_p99_s"], 1e-3) for r in done]
        p50 = [max(r["lag_p50_s"], 1e-3) for r in done]
        axis.plot(counts, p99, "o-", label=f"{config}: lag p99")
        axis.plot(counts, p50, "x--", label=f"{config}: lag p50")
    axis.axhline(1.0, color="grey", linewidth=0.8, linestyle=":", label="goal: p99 <= 1 s")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_ylim(bottom=1e-3)
    axis.set_xlabel("cycles polling at once (N)")
    axis.set_ylabel("poll lag (s)")
    axis.set_title(f"Poll lag vs N (interval {interval:g} s, one 2-core machine)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    print(f"plot: {path}")


def _polling(config: str, cycles: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    options = ["--cycles", str(cycles), "--interval", f"{args.interval:g}"]
    options += ["--job-seconds", f"{args.job_seconds:g}", *CONFIGS[config]]
    return _bench("polling", options, out / f"polling-{config}-{cycles}.json")


def run(args: argparse.Namespace) -> int:
    configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    counts = [int(n) for n in args.cycles.split(",") if n.strip()]
    results: dict[str, Any] = {"polling": {}}
    with tempfile.TemporaryDirectory(prefix="ktrdr-bench-all-") as tmp:
        out = Path(tmp)
        results["overhead"] = _bench(
            "overhead", ["--cycles", str(args.overhead_cycles)], out / "overhead.json"
        )
        for config in configs:
            results["polling"][config] = [_polling(config, n, args, out) for n in counts]
        for item in filter(None, args.extra.split(";")):
            config, _, extra_counts = item.partition("=")
            results["polling"].setdefault(config, []).extend(
                _polling(config, int(n), args, out) for n in extra_counts.split(",")
            )
        per_poll_options = ["--celery-cycles", str(args.per_poll_celery_cycles)]
        results["per_poll"] = {
            config: _bench(
                "per-poll", [*per_poll_options, *CONFIGS[config]], out / f"per_poll-{config}.json"
            )
            for config in args.per_poll_configs.split(",")
            if config.strip()
        }
    print()
    print(table(results))
    if args.results:
        args.results.write_text(json.dumps(results, indent=2, default=str))
    plot(results["polling"], args.plot, args.interval)
    overhead = results["overhead"].get("ratio_vs_chain7", float("nan"))
    print(f"overhead_ratio_vs_chain7={overhead:.3f}")
    return 0


def table(results: dict[str, Any]) -> str:
    lines = []
    overhead = results["overhead"]
    if "median_s" in overhead:
        medians = overhead["median_s"]
        lines += [
            "| overhead (median, same run) | ms |",
            "|---|---|",
            f"| bare chain, 5 no-op tasks | {1000 * medians['chain5']:.1f} |",
            f"| bare chain, 7 no-op tasks | {1000 * medians['chain7']:.1f} |",
            f"| bare chain, 9 no-op tasks | {1000 * medians['chain9']:.1f} |",
            f"| research cycle, 9 tasks | {1000 * medians['cycle']:.1f} |",
            f"| ratio cycle / 5-task chain | {overhead['overhead_ratio']:.2f} |",
            "| **ratio cycle / 7-task chain** (goal <= 1.5) "
            f"| **{overhead['ratio_vs_chain7']:.2f}** |",
            f"| ratio cycle / 9-task chain (hop for hop) | {overhead['ratio_vs_chain9']:.2f} |",
            "",
        ]
        bodies = overhead.get("task_bodies_s", {})
        if bodies:
            lines += [
                "Task bodies in-process (median ms): "
                + ", ".join(f"{name} {1000 * value:.1f}" for name, value in bodies.items())
                + f"; sum {1000 * sum(bodies.values()):.1f}",
                "",
            ]
    lines += [
        "| worker | N | lag p50 s | lag p99 s | lag p99 s, all waiting | detect p99 s "
        "| RSS KB/cycle | Redis KB/cycle "
        "| worker CPU us/poll | outcome | trainings + backtests / cycles |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    slopes: list[str] = []
    for config, runs in results["polling"].items():
        done = [r for r in runs if "rss_per_cycle_kb" in r]
        for before, after in itertools.pairwise(done):
            # RSS per cycle as asked (delta / N) includes a fixed growth of the pool processes;
            # the slope between two N is what one more waiting cycle costs.
            grown = after["rss_per_cycle_kb"] * after["cycles"]
            grown -= before["rss_per_cycle_kb"] * before["cycles"]
            slope = grown / (after["cycles"] - before["cycles"])
            slopes.append(f"{config} N={before['cycles']}->{after['cycles']}: {slope:.1f} KB")
        for r in runs:
            if "lag_p99_s" not in r:
                lines.append(f"| {config} | ? | failed: {r.get('error', '')[-80:]} |")
                continue
            backtests = r.get("remote_backtests", 0)
            jobs = (
                f"{r.get('remote_jobs', 0) - backtests} + {backtests} / "
                f"{r.get('remote_jobs_expected', '?')}"
            )
            lines.append(
                f"| {config} | {r['cycles']} | {r['lag_p50_s']:.3f} | {r['lag_p99_s']:.3f} "
                f"| {r.get('waiting_lag_p99_s', float('nan')):.3f} "
                f"| {r['detect_p99_s']:.2f} | {r.get('rss_per_cycle_kb', float('nan')):.1f} "
                f"| {r.get('redis_per_cycle_kb', float('nan')):.1f} "
                f"| {r.get('worker_cpu_us_per_poll', float('nan')):.0f} | {r['statuses']} "
                f"| {jobs} |"
            )
    if slopes:
        lines += ["", "Worker RSS per extra waiting cycle (slope): " + "; ".join(slopes)]
    lines += ["", "| per poll | wall us | CPU us |", "|---|---|---|"]
    first = True
    for config, per_poll in results.get("per_poll", {}).items():
        if "floor_wall_us" not in per_poll:
            lines.append(f"| per-poll ({config}) failed: {per_poll.get('error', '')[-80:]} | | |")
            continue
        if first:
            first = False
            lines += [
                f"| floor: http.client GET + one Redis write | {per_poll['floor_wall_us']:.0f} "
                f"| {per_poll['floor_cpu_us']:.0f} |",
                f"| same with httpx's default transport | {per_poll['httpx_floor_wall_us']:.0f} "
                f"| {per_poll['httpx_floor_cpu_us']:.0f} |",
                "| poll step, separate Redis calls (5 round trips) "
                f"| {per_poll['separate_wall_us']:.0f} | {per_poll['separate_cpu_us']:.0f} |",
                f"| poll step in-process (2 round trips) | {per_poll['step_wall_us']:.0f} "
                f"| {per_poll['step_cpu_us']:.0f} |",
                f"| re-publish of the poll message | {per_poll['publish_wall_us']:.0f} "
                f"| {per_poll['publish_cpu_us']:.0f} |",
            ]
        lines.append(
            f"| through Celery, worker CPU ({config}: {per_poll.get('celery_worker', '?')}) "
            f"| | {per_poll.get('celery_cpu_us', float('nan')):.0f} |"
        )
    return "\n".join(lines)
