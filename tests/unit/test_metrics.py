"""The chain's Prometheus metrics: what a finished cycle, an API error or a scrape counts."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from ktrdr_tasks import metrics
from ktrdr_tasks.errors import StoreUnavailableError, TransientApiError
from ktrdr_tasks.models import Operation, OperationStatus, Phase
from ktrdr_tasks.training_api import TrainingApiClient

OP = "op_agent_research_20260101_000000_abcdef12"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def finished(status: OperationStatus, phase: Phase, **metadata: object) -> Operation:
    return Operation(
        operation_id=OP,
        status=status,
        phase=phase,
        created_at="2026-01-01T00:00:00.000Z",
        completed_at="2026-01-01T00:05:00.000Z",
        metadata=dict(metadata),
    )


def test_a_gate_failure_counts_its_verdict_phase_and_each_reason() -> None:
    before = value("ktrdr_cycles_finished_total", verdict="gate_failed", phase="training")
    reason = value(
        "ktrdr_gate_verdicts_total",
        gate="training",
        outcome="failed",
        reason="accuracy_below_threshold",
    )
    gate = {
        "name": "training",
        "outcome": "failed",
        "reasons": ["accuracy_below_threshold (31.00% < 45%)", "loss_too_high (1.12 > 0.8)"],
    }

    metrics.cycle_finished(finished(OperationStatus.FAILED, Phase.TRAINING, gate=gate))

    assert value("ktrdr_cycles_finished_total", verdict="gate_failed", phase="training") == (
        before + 1
    )
    assert (
        value(
            "ktrdr_gate_verdicts_total",
            gate="training",
            outcome="failed",
            reason="accuracy_below_threshold",
        )
        == reason + 1
    )
    assert value(
        "ktrdr_gate_verdicts_total", gate="training", outcome="failed", reason="loss_too_high"
    )


def test_a_passed_cycle_counts_passed_and_its_gate_once() -> None:
    before = value("ktrdr_cycles_finished_total", verdict="passed", phase="done")
    gates = value("ktrdr_gate_verdicts_total", gate="training", outcome="passed", reason="none")
    gate = {"name": "training", "outcome": "passed", "reasons": []}
    metrics.cycle_finished(finished(OperationStatus.COMPLETED, Phase.DONE, gate=gate))
    assert value("ktrdr_cycles_finished_total", verdict="passed", phase="done") == before + 1
    assert (
        value("ktrdr_gate_verdicts_total", gate="training", outcome="passed", reason="none")
        == gates + 1
    )


def test_a_training_that_failed_remotely_is_timed_to_the_end_of_the_cycle() -> None:
    count = value("ktrdr_training_duration_seconds_count", outcome="failed")
    total = value("ktrdr_training_duration_seconds_sum", outcome="failed")
    operation = finished(OperationStatus.FAILED, Phase.TRAINING, training_status="failed")
    operation.bookkeeping.training_start_requested_at = "2026-01-01T00:01:00.000Z"
    metrics.cycle_finished(operation)
    assert value("ktrdr_training_duration_seconds_count", outcome="failed") == count + 1
    assert value("ktrdr_training_duration_seconds_sum", outcome="failed") == total + 240


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (httpx.Response(503, json={"detail": "busy"}), "http_5xx"),
        (httpx.Response(404, json={"detail": "Operation not found: x"}), "not_found"),
        (httpx.Response(200, content=b"not json"), "malformed"),
    ],
)
def test_every_failed_call_counts_by_kind(response: httpx.Response, kind: str) -> None:
    client = TrainingApiClient("http://trainer", transport=httpx.MockTransport(lambda _: response))
    before = value("ktrdr_training_api_errors_total", kind=kind, method="GET")
    with pytest.raises(Exception, match="training API"):
        client.get_operation("op_training_1")
    assert value("ktrdr_training_api_errors_total", kind=kind, method="GET") == before + 1


def test_an_unreachable_service_counts_as_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = TrainingApiClient("http://trainer", transport=httpx.MockTransport(refuse))
    before = value("ktrdr_training_api_errors_total", kind="unreachable", method="GET")
    with pytest.raises(TransientApiError):
        client.get_operation("op_training_1")
    assert value("ktrdr_training_api_errors_total", kind="unreachable", method="GET") == before + 1


def test_active_cycles_are_read_at_scrape_and_left_out_while_redis_is_down() -> None:
    registry = CollectorRegistry()
    counts: list[object] = [3, StoreUnavailableError("cannot reach Redis")]

    def count() -> int:
        answer = counts.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return int(answer)

    registry.register(metrics.ActiveCyclesCollector(count))
    assert registry.get_sample_value("ktrdr_active_cycles") == 3
    assert registry.get_sample_value("ktrdr_active_cycles") is None


def test_reason_codes_keep_labels_few() -> None:
    assert metrics.gate_reason_codes(["metric_missing: test_accuracy", "?? odd"]) == [
        "metric_missing",
        "other",
    ]


def test_the_dashboard_graphs_only_metrics_that_exist() -> None:
    import json
    import re
    from pathlib import Path

    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text()
    )
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for e in expressions for name in re.findall(r"\b(ktrdr_[a-z_]+)", e)}
    suffixes = ("_total", "_bucket", "_count", "_sum")
    families = {
        "ktrdr_cycles_started",
        "ktrdr_cycles_finished",
        "ktrdr_poll_lag_seconds",
        "ktrdr_training_duration_seconds",
        "ktrdr_training_api_errors",
        "ktrdr_gate_verdicts",
        "ktrdr_active_cycles",
        "ktrdr_host_operations",
        "ktrdr_host_training_jobs_active",
        "ktrdr_host_training_slots",
        "ktrdr_host_operation_duration_seconds",
    }
    exported = {metric._name for metric in metrics._instruments().values()}
    assert exported <= families
    for name in used:
        base = next((name.removesuffix(s) for s in suffixes if name.endswith(s)), name)
        assert base in families, name
