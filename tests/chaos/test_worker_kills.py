"""SIGKILL the worker while cycles sit inside each phase; a fresh worker must finish them all.

One kill hits every phase at once: per round, K cycles are held in `design`, K in
`start_training` (the POST is in flight: the API has received it and not answered), K in
`poll_training` and K in `training_gate`, then the worker's whole process group is SIGKILLed
and a replacement started. Every cycle must reach `completed`, and the training service must
have created exactly one remote job for it (a start killed in flight is POSTed again with the
same `task_id` idempotency key, which a ktrdr backend answers with the same job).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ktrdr_tasks.store import get_store
from tests.chaos.conftest import (
    FINAL,
    ScriptedApi,
    record,
    trigger_all,
    wait_all,
    wait_for_condition,
    write_strategy,
)
from tests.support.fake_training_api import Behaviour
from tests.support.processes import Process

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

CYCLES_PER_PHASE = int(os.environ.get("CHAOS_KILL_CYCLES", "5"))
ROUNDS = int(os.environ.get("CHAOS_KILL_ROUNDS", "4"))
# Long enough to kill inside the phase, shorter than the visibility timeout (4 s) so the
# doomed worker's own restore sweep does not hand out a second copy of a held message.
HOLD_S = "3.5"

# The reconciler runs in the workers: they must share its resume bound.
RECONCILER = {"KTRDR_RESUME_AFTER_S": "20"}

# phase -> (strategy prefix, the record's step while inside the phase)
PHASES = {
    "design": ("slowdesign", 1),
    "start_training": ("slowstart", 3),
    "poll_training": ("slowpoll", 4),
    "training_gate": ("slowgate", 5),
}


def _in_phase(phase: str, operation_id: str, api: ScriptedApi) -> bool:
    current = record(operation_id)
    step = PHASES[phase][1]
    if current["status"] != "running" or current["step"] != step:
        return False
    meta = current["metadata"]
    if phase == "start_training":
        return api.start_arrived(operation_id) and not meta.get("training_operation_id")
    if phase == "poll_training":
        return bool(meta.get("training_status"))  # polled at least once
    if phase == "training_gate":
        return "gate" not in meta
    return True


def _diagnose(operation_ids: list[str], processes: list[Process]) -> str:
    """The record and every worker log line of each cycle that did not finish."""
    lines = []
    for op_id in operation_ids:
        current = record(op_id)
        if current["status"] in FINAL:
            continue
        lines.append(f"{op_id}: {current}")
        for process in processes:
            lines += [
                f"  {process.name}: {line}" for line in process.log().splitlines() if op_id in line
            ][-40:]
    return "\n".join(lines)


def _run_round(
    round_no: int, workers: Callable[..., Process], api: ScriptedApi, strategies: Path
) -> dict[str, list[tuple[str, str]]]:
    """One kill; returns phase -> [(operation id, strategy name)] of the cycles hit."""
    names = {
        phase: [
            write_strategy(strategies, f"{prefix}_r{round_no}_{i}") for i in range(CYCLES_PER_PHASE)
        ]
        for phase, (prefix, _) in PHASES.items()
    }
    for name in names["poll_training"]:
        api.behaviours[name] = Behaviour(polls=25)
    for name in names["training_gate"]:
        api.behaviours[name] = Behaviour(polls=2)
    api.start_delays = {"slowstart": float(HOLD_S)}
    doomed = workers(
        concurrency=3 * CYCLES_PER_PHASE + 2,
        name=f"doomed{round_no}",
        extra_env={"CHAOS_DESIGN_DELAY_S": HOLD_S, "CHAOS_GATE_DELAY_S": HOLD_S, **RECONCILER},
    )
    ids: dict[str, list[str]] = {}
    # The late phases first: the early ones are reached in a fraction of a second.
    ids["poll_training"] = trigger_all(names["poll_training"])
    ids["training_gate"] = trigger_all(names["training_gate"])
    wait_for_condition(
        lambda: any(_in_phase("training_gate", op, api) for op in ids["training_gate"]),
        30,
        "a cycle inside the training gate",
    )
    ids["design"] = trigger_all(names["design"])
    ids["start_training"] = trigger_all(names["start_training"])

    def all_in_phase() -> bool:
        return all(_in_phase(phase, op, api) for phase, ops in ids.items() for op in ops)

    wait_for_condition(all_in_phase, 10, "every cycle inside its phase")
    doomed.kill()
    killed_at = time.monotonic()
    api.start_delays = {}

    replacement = workers(concurrency=4, name=f"replacement{round_no}", extra_env=RECONCILER)
    every = [op for ops in ids.values() for op in ops]
    try:
        wait_all(every, FINAL, timeout=120)
    except AssertionError as stuck:
        raise AssertionError(f"{stuck}\n{_diagnose(every, [doomed, replacement])}") from None
    replacement.stop()  # the next round's cycles must all go to its own doomed worker
    print(
        f"round {round_no}: {len(every)} cycles finished {time.monotonic() - killed_at:.1f} s "
        "after the kill"
    )
    return {phase: list(zip(ids[phase], names[phase], strict=True)) for phase in PHASES}


def test_sigkill_in_every_phase_each_cycle_completes_with_one_remote_job(
    workers: Callable[..., Process], chaos_api: ScriptedApi, chaos_strategies: Path
) -> None:
    # Beat runs the reconciler as in production. kombu's Redis transport moves a message
    # from the queue (BRPOP) to its unacked set in a second step: a worker killed between
    # the two loses that one message, and only the reconciler brings such a cycle back.
    # The resume bound stays above the ~11 s a redelivery takes, so it only acts on those.
    workers("beat", extra_env={**RECONCILER, "KTRDR_RECONCILE_INTERVAL_S": "1"})
    hit: dict[str, list[tuple[str, str]]] = {phase: [] for phase in PHASES}
    for round_no in range(ROUNDS):
        for phase, cycles in _run_round(round_no, workers, chaos_api, chaos_strategies).items():
            hit[phase].extend(cycles)

    failures = []
    for phase, cycles in hit.items():
        good = resumed = 0
        for op_id, name in cycles:
            final = record(op_id)
            resumed += bool(get_store().get(op_id).bookkeeping.resume_count)
            jobs = chaos_api.jobs_for(name)
            if final["status"] == "completed" and jobs == 1:
                good += 1
            else:
                failures.append((phase, op_id, final["status"], final["error_message"], jobs))
        posts = sum(chaos_api.starts_for(op_id) for op_id, _ in cycles)
        print(
            f"kill during {phase}: {good}/{len(cycles)} completed with one remote job "
            f"({posts} POSTs, {resumed} resumed by the reconciler)"
        )
    assert failures == []
