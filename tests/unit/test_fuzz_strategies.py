"""Fuzzed strategy names and YAML documents through the loader and the load step.

A name is either a plain ktrdr name whose file lies inside the strategies directory, or it
is refused with a StrategyError before the disk is touched. A document either yields the
symbols, timeframes and dates training needs, or the cycle fails with a message naming the
strategy file. Nothing else escapes, and no cycle is left `running` by a failed load.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import fakeredis
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ktrdr_tasks import cycle, workflow
from ktrdr_tasks import strategy as strategy_module
from ktrdr_tasks.cli.strategy import strategy as strategy_cli
from ktrdr_tasks.cycle import Step
from ktrdr_tasks.design import design_strategy
from ktrdr_tasks.design.storage import existing_fingerprints
from ktrdr_tasks.errors import KtrdrTasksError, StrategyError
from ktrdr_tasks.models import Operation, OperationStatus, Phase, iso, utc_now
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.store import Store
from ktrdr_tasks.strategy import (
    ReadLimits,
    extract_training_params,
    load_strategy_config,
    parse_strategy_text,
    read_strategy_file,
    strategy_path,
    validate_strategy_name,
)

GOOD = "good"
GOOD_TEXT = """name: good
training_data:
  symbols: {mode: single, symbol: EURUSD}
  timeframes: {mode: single, timeframe: 1h}
  date_range: {start: 2017-05-01, end: 2018-02-01}
fuzzy_sets:
  rsi_14: {low: {type: triangular, parameters: [0, 20, 40]}}
"""

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


# -- hostile files: refused in one line, fast and small, by every reader ----------------------


def alias_bomb(levels: int = 7, width: int = 9) -> str:
    """`width ** levels` leaves in a few hundred bytes: each level lists the one below 9 times."""
    lines = ["name: bomb", "l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    lines.append(f"training_data: {{symbols: *l{levels - 1}, timeframes: [1h]}}")
    return "\n".join(lines) + "\n"


def deep_nesting(depth: int = 600) -> str:
    return "name: deep\ntraining_data: " + "[" * depth + "]" * depth + "\n"


def huge_file(size: int = 10 * 1024 * 1024) -> str:
    head = "name: huge\ntraining_data: {symbols: [EURUSD], timeframes: [1h]}\nnoise:\n"
    line = "- {a: 1, b: two}\n"
    return head + line * (size // len(line))


HOSTILE = {
    "bomb": (alias_bomb, "expands to more than 262,144 nodes and characters"),
    "deep": (deep_nesting, "nests deeper than 50 levels"),
    "huge": (huge_file, "larger than the 128 KiB limit"),
}
MAX_SECONDS = 1.0
MAX_PEAK_BYTES = 4 * 1024 * 1024  # the reader holds at most the 128 KiB it reads, and events


def write_hostile(directory: Path, kind: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}.yaml"
    path.write_text(HOSTILE[kind][0](), encoding="utf-8")
    return path


def measured(action: Callable[[], object]) -> tuple[object, float, int]:
    """(result or raised exception, seconds, tracemalloc peak bytes) of one call."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        outcome: object = action()
    except Exception as exc:  # the caller asserts on what was raised
        outcome = exc
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return outcome, seconds, peak


def assert_one_line_refusal(outcome: object, kind: str, path: Path) -> None:
    assert isinstance(outcome, StrategyError), outcome
    message = str(outcome)
    assert "\n" not in message and len(message) < 300
    assert HOSTILE[kind][1] in message and str(path.name) in message


@pytest.mark.parametrize("kind", HOSTILE)
def test_the_chain_refuses_a_hostile_file_fast_and_small(kind: str, tmp_path: Path) -> None:
    path = write_hostile(tmp_path, kind)
    outcome, seconds, peak = measured(lambda: load_strategy_config(kind, tmp_path))
    assert_one_line_refusal(outcome, kind, path)
    assert seconds < MAX_SECONDS and peak < MAX_PEAK_BYTES, (seconds, peak)


@pytest.mark.parametrize("kind", HOSTILE)
def test_the_fingerprints_skip_a_hostile_file_and_say_so(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_hostile(tmp_path, kind)
    (tmp_path / f"{GOOD}.yaml").write_text(GOOD_TEXT)
    outcome, seconds, peak = measured(lambda: existing_fingerprints(tmp_path))
    assert isinstance(outcome, set) and len(outcome) == 1
    assert seconds < MAX_SECONDS and peak < MAX_PEAK_BYTES, (seconds, peak)
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert path.name in warning and HOSTILE[kind][1] in warning


@pytest.mark.parametrize("kind", HOSTILE)
def test_validate_prints_one_line_and_exits_2(kind: str, tmp_path: Path) -> None:
    path = write_hostile(tmp_path, kind)
    result = CliRunner().invoke(strategy_cli, ["validate", str(path)])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert HOSTILE[kind][1] in line


@pytest.mark.parametrize("kind", HOSTILE)
def test_the_host_answers_400_unreadable_without_building_the_document(
    kind: str, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from fastapi import HTTPException

    from training_host.routes.trainings import load_job
    from training_host.schemas import TrainingStartRequest

    path = write_hostile(tmp_path, kind)
    body = TrainingStartRequest(strategy_name=kind, symbols=["EURUSD"], timeframes=["1h"])
    outcome, seconds, peak = measured(lambda: load_job(body, tmp_path))
    assert isinstance(outcome, HTTPException) and outcome.status_code == 400
    assert outcome.detail["error_code"] == "STRATEGY-Unreadable"
    (reason,) = outcome.detail["details"]["errors"]
    assert HOSTILE[kind][1] in reason and path.name in reason
    assert seconds < MAX_SECONDS and peak < MAX_PEAK_BYTES, (seconds, peak)


@pytest.mark.parametrize("kind", HOSTILE)
def test_the_load_step_fails_the_cycle_naming_the_limit(kind: str, tmp_path: Path) -> None:
    write_hostile(tmp_path / "strategies", kind)
    store, op_id = _cycle_at_load_step(kind)
    settings = Settings(strategies_dir=tmp_path / "strategies")
    with pytest.raises(StrategyError, match=HOSTILE[kind][1]):
        cycle.run_load_training_params(store, settings, store.get(op_id))


def test_hostile_files_in_the_directory_do_not_break_designing_another(tmp_path: Path) -> None:
    directory = tmp_path / "strategies"
    for kind in HOSTILE:
        write_hostile(directory, kind)
    settings = Settings(strategies_dir=directory, designer="builtin")
    result = design_strategy(settings, [], seed=3)
    assert load_strategy_config(result.name, directory)["name"] == result.name


def test_hostile_neighbours_do_not_affect_loading_a_good_strategy(tmp_path: Path) -> None:
    directory = tmp_path / "strategies"
    for kind in HOSTILE:
        write_hostile(directory, kind)
    (directory / f"{GOOD}.yaml").write_text(GOOD_TEXT)
    store, op_id = _cycle_at_load_step(GOOD)
    params = cycle.run_load_training_params(
        store, Settings(strategies_dir=directory), store.get(op_id)
    )
    assert params["symbols"] == ["EURUSD"] and params["timeframes"] == ["1h"]


def _cycle_at_load_step(name: str) -> tuple[Store, str]:
    store = Store(fakeredis.FakeRedis(decode_responses=True), retention_s=60)
    op_id = "op_agent_research_20260101_000000_0000cafe"
    store.create_operation(Operation(operation_id=op_id, created_at=iso(utc_now())), limit=1)
    store.enter_step(op_id, Step.LOAD_TRAINING_PARAMS, Phase.TRAINING)
    store.update(op_id, metadata={"strategy_name": name})
    return store, op_id


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a: &a [*a]\n", "refers to &a inside itself"),
        ("a: [" + ", ".join(["&x 1"] + ["*x"] * 1001) + "]\n", "more than 1000 YAML aliases"),
        ("a: *nowhere\n", "not valid YAML"),
        ("a: " + "9" * 5000 + "\n", "not valid YAML"),
        ("a: 2020-13-45\n", "not valid YAML"),
        ("? [1, 2]\n: x\n", "not valid YAML"),
        ("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 60)), "nests deeper than 50"),
    ],
)
def test_odd_yaml_is_one_line_strategy_error(text: str, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(StrategyError, match=re.escape(reason)) as error:
        read_strategy_file(path)
    assert "\n" not in str(error.value) and "odd.yaml" in str(error.value)


def test_a_bomb_hidden_in_anonymous_nesting_is_counted_in_full(tmp_path: Path) -> None:
    # Each anchor wraps its aliases in two anonymous lists: the expansion still multiplies.
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, 7):
        refs = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"l{level}: &l{level} [[[{refs}]]]")
    path = tmp_path / "hidden.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StrategyError, match="expands to more than"):
        read_strategy_file(path)


def test_anchors_within_the_limits_are_read_as_usual(tmp_path: Path) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text(
        "sets: &sets {low: {type: triangular, parameters: [0, 20, 40]}}\n"
        "fuzzy_sets: {rsi_14: *sets, rsi_28: *sets}\n"
        "training_data: {symbols: {mode: single, symbol: EURUSD}, timeframes: [1h]}\n"
    )
    document = read_strategy_file(path)
    assert document["fuzzy_sets"]["rsi_28"]["low"]["parameters"] == [0, 20, 40]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.yaml")
    with pytest.raises(StrategyError, match="not a regular file"):
        load_strategy_config("pipe", tmp_path)


@FUZZ
@given(
    levels=st.integers(1, 9),
    width=st.integers(1, 12),
    depth=st.integers(1, 300),
)
def test_any_bomb_or_nesting_is_read_within_bounds_or_refused(
    levels: int, width: int, depth: int, tmp_path: Path
) -> None:
    path = tmp_path / "fuzzed.yaml"
    path.write_text(alias_bomb(levels, width) + f"nested: {'[' * depth}{']' * depth}\n")
    # Expanded size (one per node plus one per character): every level once as a top-level
    # value, the last one once more under training_data.
    level_sizes = [1 + width * 4]
    for _ in range(1, levels):
        level_sizes.append(1 + width * level_sizes[-1])
    expanded = sum(level_sizes) + level_sizes[-1]
    started = time.perf_counter()
    try:
        document = read_strategy_file(path)
    except StrategyError as exc:
        assert "\n" not in str(exc)
        assert expanded > 250_000 or depth >= 50, str(exc)
    else:
        assert expanded < 275_000 and depth < 50
        # What the host writes as config.json stays small.
        assert len(json.dumps(document)) < 4 * 1024 * 1024
    assert time.perf_counter() - started < MAX_SECONDS


def _expanded_size(value: object, memo: dict[int, int]) -> int:
    """The reader's measure on a built document: one per node, plus each scalar's characters."""
    if isinstance(value, str):
        return 1 + len(value)
    if id(value) not in memo:
        if isinstance(value, dict):
            memo[id(value)] = 1 + sum(
                _expanded_size(k, memo) + _expanded_size(v, memo) for k, v in value.items()
            )
        else:
            assert isinstance(value, list)
            memo[id(value)] = 1 + sum(_expanded_size(item, memo) for item in value)
    return memo[id(value)]


@st.composite
def shared_structures(draw: st.DrawFn) -> dict[str, object]:
    """Lists and mappings built from earlier ones: safe_dump writes the sharing as aliases."""
    pool: list[object] = draw(st.lists(st.text("ab", min_size=1, max_size=5), min_size=1))
    for _ in range(draw(st.integers(1, 12))):
        picks = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=8))
        if draw(st.booleans()):
            pool.append(picks)
        else:
            pool.append({f"k{i}": item for i, item in enumerate(picks)})
    return {"name": "shared", "top": pool[-1]}


@FUZZ
@given(document=shared_structures())
def test_the_expansion_count_is_exact_for_shared_structures(document: dict[str, object]) -> None:
    limits = ReadLimits(max_expanded=500, max_aliases=10_000)
    size = _expanded_size(document, {})
    text = yaml.safe_dump(document)
    try:
        parsed = parse_strategy_text(text, "shared.yaml", limits)
    except StrategyError as exc:
        assert "expands to more than 500 " in str(exc)
        assert size > limits.max_expanded
    else:
        assert parsed == document
        assert size <= limits.max_expanded


@pytest.mark.parametrize("kind", HOSTILE)
def test_the_pure_python_loader_is_as_safe_where_libyaml_is_missing(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(strategy_module, "_SAFE_LOADER", yaml.SafeLoader)
    path = write_hostile(tmp_path, kind)
    outcome, _, peak = measured(lambda: read_strategy_file(path))
    assert_one_line_refusal(outcome, kind, path)
    assert peak < MAX_PEAK_BYTES, peak
    # Timed apart: tracing slows the pure-Python scanner several times over. Its scan of the
    # 600 brackets is quadratic (0.35 s on a busy 2-core machine, as before the limits).
    started = time.perf_counter()
    with pytest.raises(StrategyError):
        read_strategy_file(path)
    assert time.perf_counter() - started < 2 * MAX_SECONDS
    good = tmp_path / f"{GOOD}.yaml"
    good.write_text(GOOD_TEXT)
    assert read_strategy_file(good) == yaml.safe_load(GOOD_TEXT)
