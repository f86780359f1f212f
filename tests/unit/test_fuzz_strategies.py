"""Fuzzed strategy names and YAML documents through the loader and the load step.

A name is either a plain ktrdr name whose file lies inside the strategies directory, or it
is refused with a StrategyError before the disk is touched. A document either yields the
symbols, timeframes and dates training needs, or the cycle fails with a message naming the
strategy file. Nothing else escapes, and no cycle is left `running` by a failed load.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import fakeredis
import pytest
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ktrdr_tasks import cycle, workflow
from ktrdr_tasks.cycle import Step
from ktrdr_tasks.errors import KtrdrTasksError, StrategyError
from ktrdr_tasks.models import Operation, OperationStatus, Phase, iso, utc_now
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.store import Store
from ktrdr_tasks.strategy import (
    extract_training_params,
    load_strategy_config,
    strategy_path,
    validate_strategy_name,
)

RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
FUZZ = hypothesis_settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

names = st.one_of(
    st.text(max_size=120),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}", fullmatch=True),
    st.sampled_from(["..", "../x", "/etc/passwd", "a/../b", "a.yaml", "x\n", "~root", "$HOME"]),
    st.builds(
        lambda a, b: a + b, st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.text(max_size=5)
    ),
)


@FUZZ
@given(name=names)
def test_a_name_is_valid_and_inside_the_directory_or_refused(name: str, tmp_path: Path) -> None:
    try:
        validate_strategy_name(name)
    except StrategyError:
        assert not RULE.fullmatch(name)
        return
    assert RULE.fullmatch(name)
    path = strategy_path(name, tmp_path)
    assert path.parent == tmp_path.resolve()
    assert path.name == f"{name}.yaml"


@FUZZ
@given(name=names)
def test_trigger_refuses_bad_or_unknown_names_without_creating_a_cycle(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(fakeredis.FakeRedis(decode_responses=True), retention_s=60)
    monkeypatch.setattr(workflow, "get_settings", lambda: Settings(strategies_dir=tmp_path))
    with pytest.raises(StrategyError):
        workflow.trigger(strategy=name, store=store)
    assert store.active_ids() == [] and store.list_operations() == []


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.dates()
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
selection = st.one_of(
    values,
    st.lists(st.text(max_size=8), max_size=3),
    st.fixed_dictionaries(
        {},
        optional={
            "mode": st.sampled_from(["single", "multi_symbol", "multi_timeframe"]) | values,
            "symbol": values,
            "timeframe": values,
            "list": values | st.lists(st.text(max_size=6), max_size=3),
            "symbols": values,
        },
    ),
)
documents = st.one_of(
    values,
    st.fixed_dictionaries(
        {"name": st.text(max_size=10)},
        optional={
            "training_data": values
            | st.fixed_dictionaries(
                {},
                optional={
                    "symbols": selection,
                    "timeframes": selection,
                    "date_range": values
                    | st.fixed_dictionaries({}, optional={"start": scalars, "end": scalars}),
                    "start_date": scalars,
                    "end_date": scalars,
                },
            ),
            "data": values
            | st.fixed_dictionaries({}, optional={"symbols": values, "timeframes": values}),
        },
    ),
)


def _dump(document: object) -> str:
    return yaml.safe_dump(document, default_flow_style=False, allow_unicode=True)


@FUZZ
@given(document=documents)
def test_extract_keeps_its_contract_for_any_document(document: object) -> None:
    if not isinstance(document, dict):
        return
    params = extract_training_params(document)
    assert all(isinstance(s, str) for s in params["symbols"] + params["timeframes"])
    for field in ("start_date", "end_date"):
        assert params[field] is None or isinstance(params[field], str)


@FUZZ
@given(text=st.one_of(documents.map(_dump), st.text(max_size=200)))
def test_load_step_gives_training_params_or_fails_naming_the_file(
    text: str, tmp_path: Path
) -> None:
    directory = tmp_path / "strategies"
    directory.mkdir(exist_ok=True)
    (directory / "fuzzed.yaml").write_text(text, encoding="utf-8")
    store = Store(fakeredis.FakeRedis(decode_responses=True), retention_s=60)
    now = iso(utc_now())
    op_id = "op_agent_research_20260101_000000_0000beef"
    store.create_operation(Operation(operation_id=op_id, created_at=now), limit=1)
    store.enter_step(op_id, Step.LOAD_TRAINING_PARAMS, Phase.TRAINING)
    store.update(op_id, metadata={"strategy_name": "fuzzed"})
    settings = Settings(strategies_dir=directory)

    try:
        params = cycle.run_load_training_params(store, settings, store.get(op_id))
    except KtrdrTasksError as exc:  # what the task wrapper turns into a failed cycle
        assert "fuzzed" in str(exc)
        cycle.fail_cycle(store, op_id, f"loading training parameters failed: {exc}")
        assert store.get(op_id).status is OperationStatus.FAILED
        return
    assert params["symbols"] and params["timeframes"]
    for field in ("start_date", "end_date"):
        value = params[field]
        assert value is None or re.match(r"^\d{4}-\d{2}-\d{2}", value)
    assert store.get(op_id).metadata["training_params"] == params


def test_unquoted_yaml_dates_become_iso_strings(tmp_path: Path) -> None:
    (tmp_path / "d.yaml").write_text(
        "training_data: {symbols: [EURUSD], timeframes: [1h], "
        "date_range: {start: 2020-01-02, end: 2021-03-04}}"
    )
    params = extract_training_params(load_strategy_config("d", tmp_path))
    assert (params["start_date"], params["end_date"]) == ("2020-01-02", "2021-03-04")
    assert not isinstance(params["start_date"], dt.date)
