"""The ktrdr v2 schema: accepts every verified example, rejects each mistake of spec section 9."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ktrdr_tasks.errors import StrategyError, StrategyValidationError
from ktrdr_tasks.strategy_schema import (
    check_strategy,
    load_strategy_file,
    trainability_errors,
    validate_strategy,
)
from ktrdr_tasks.strategy_v3 import check_any_strategy

STRATEGIES = Path(__file__).resolve().parents[2] / "strategies"

SECTION_10 = """
name: eurusd_1h_rsi_macd_adx
description: RSI, MACD line and ADX fuzzified into 8 memberships, small MLP
version: "1.0"
scope: symbol_specific
training_data:
  symbols:
    mode: single
    symbol: EURUSD
  timeframes:
    mode: single
    timeframe: 1h
  history_required: 200
deployment:
  target_symbols:
    mode: training_only
  target_timeframes:
    mode: single
    timeframe: 1h
indicators:
  - name: RSI
    feature_id: rsi_14
    period: 14
    source: close
  - name: MACD
    feature_id: macd_12_26_9
    fast_period: 12
    slow_period: 26
    signal_period: 9
  - name: ADX
    feature_id: adx_14
    period: 14
fuzzy_sets:
  rsi_14:
    low: {type: trapezoidal, parameters: [0, 0, 30, 45]}
    mid: {type: triangular, parameters: [35, 50, 65]}
    high: {type: trapezoidal, parameters: [55, 70, 100, 100]}
  macd_12_26_9:
    negative: {type: trapezoidal, parameters: [-0.01, -0.01, -0.0015, 0.0]}
    flat: {type: triangular, parameters: [-0.001, 0.0, 0.001]}
    positive: {type: trapezoidal, parameters: [0.0, 0.0015, 0.01, 0.01]}
  adx_14:
    weak: {type: trapezoidal, parameters: [0, 0, 15, 25]}
    strong: {type: trapezoidal, parameters: [20, 35, 100, 100]}
model:
  type: mlp
  architecture:
    hidden_layers: [32, 16]
    activation: relu
    dropout: 0.2
  features:
    lookback_periods: 1
  training:
    learning_rate: 0.001
    batch_size: 32
    epochs: 8
    optimizer: adam
decisions:
  output_format: classification
  confidence_threshold: 0.6
  position_awareness: true
training:
  method: supervised
  labels:
    source: zigzag
    zigzag_threshold: 0.005
    label_lookahead: 20
  data_split:
    train: 0.7
    validation: 0.15
    test: 0.15
"""


def example() -> dict[str, Any]:
    return yaml.safe_load(SECTION_10)


def errors_of(document: dict[str, Any]) -> list[str]:
    with pytest.raises(StrategyValidationError) as caught:
        check_strategy(document, "test")
    return [str(error) for error in caught.value.errors]


def test_section_10_example_is_valid_and_exposes_what_the_host_needs():
    config = check_strategy(example())
    assert config.symbols == ["EURUSD"]
    assert config.timeframes == ["1h"]
    assert config.feature_ids == ["rsi_14", "macd_12_26_9", "adx_14"]
    assert config.indicators[1].resolved_params["slow_period"] == 26
    assert config.fuzzy_sets["rsi_14"]["mid"].parameters == [35, 50, 65]
    assert config.model.architecture.hidden_layers == [32, 16]
    assert config.model.features.lookback_periods == 1
    assert config.labels.zigzag_threshold == 0.005
    assert config.labels.label_lookahead == 20


def test_train_validation_test_keys_are_ignored_for_the_split():
    split = check_strategy(example()).data_split
    assert (split.test_size, split.validation_size) == (0.1, 0.2)


@pytest.mark.parametrize("path", sorted(STRATEGIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_project_strategy_is_valid_and_named_after_its_file(path: Path):
    config = check_any_strategy(load_strategy_file(path), path.name, stem=path.stem)
    assert config.name == path.stem
    assert config.epochs <= 10  # v2 reads model.training.epochs, v3 training.epochs
    assert config.start_date and config.end_date


def test_project_has_the_three_verified_examples_and_a_goog_one():
    stems = {p.stem for p in STRATEGIES.glob("*.yaml")}
    assert {
        "eurusd_1h_rsi_macd_adx",
        "eurusd_1h_stoch_cci_roc",
        "eurusd_1h_willr_bbw_dist",
        "goog_1d_rsi_adx_roc",
    } <= stems


def test_extra_keys_are_accepted():
    document = example()
    document.update(hypothesis="x", orchestrator={"max_cycles": 1}, risk_management={})
    document["model"]["features"]["include_price_context"] = False
    check_strategy(document)


def test_multi_symbol_alias_and_multi_timeframe_shapes():
    document = example()
    document["training_data"]["symbols"] = {"mode": "multi_symbol", "symbols": ["EURUSD", "GBP"]}
    document["training_data"]["timeframes"] = {
        "mode": "multi_timeframe",
        "list": ["1h", "4h"],
        "base_timeframe": "1h",
    }
    config = check_strategy(document)
    assert config.symbols == ["EURUSD", "GBP"]
    assert config.timeframes == ["1h", "4h"]


def test_unquoted_yaml_dates_become_strings():
    document = example()
    document["training_data"]["start_date"] = dt.date(2017, 5, 1)
    document["training_data"]["date_range"] = {"start": dt.date(2017, 5, 1), "end": "2018-02-01"}
    config = check_strategy(document)
    assert config.start_date == "2017-05-01"
    assert config.end_date == "2018-02-01"


Mutation = Callable[[dict[str, Any]], Any]


def _drop(*path: str) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def _set(value: Any, *path: Any) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _type_instead_of_name(document: dict[str, Any]) -> None:
    document["indicators"][0]["type"] = document["indicators"][0].pop("name")


BROKEN: list[tuple[str, Mutation, str, str]] = [
    ("missing_version", _drop("version"), "version", "Missing required field: version"),
    ("missing_scope", _drop("scope"), "scope", "Missing required field: scope"),
    ("missing_training_data", _drop("training_data"), "training_data", "Missing required field"),
    ("missing_deployment", _drop("deployment"), "deployment", "Missing required field"),
    ("missing_indicators", _drop("indicators"), "indicators", "Missing required field"),
    ("missing_fuzzy_sets", _drop("fuzzy_sets"), "fuzzy_sets", "Missing required field"),
    ("missing_model", _drop("model"), "model", "Missing required field: model"),
    ("missing_decisions", _drop("decisions"), "decisions", "Missing required field"),
    ("missing_training", _drop("training"), "training", "Missing required field: training"),
    ("unquoted_version", _set(1.0, "version"), "version", "Input should be a valid string"),
    ("bad_scope", _set("global", "scope"), "scope", "'universal', 'symbol_group' or"),
    (
        "bad_symbols_mode",
        _set("many", "training_data", "symbols", "mode"),
        "training_data.symbols.mode",
        "'single' or 'multi_symbol'",
    ),
    (
        "multi_timeframe_of_one",
        _set({"mode": "multi_timeframe", "list": ["1h"]}, "training_data", "timeframes"),
        "training_data.timeframes",
        "Multi-timeframe mode requires at least 2 timeframes",
    ),
    (
        "short_history",
        _set(20, "training_data", "history_required"),
        "training_data.history_required",
        "History required must be at least 50 bars",
    ),
    (
        "missing_feature_id",
        _drop("indicators", 0, "feature_id"),
        "indicators.0.feature_id",
        "missing required field 'feature_id'",
    ),
    (
        "feature_id_starts_with_digit",
        _set("14rsi", "indicators", 0, "feature_id"),
        "indicators.0.feature_id",
        "must start with a letter",
    ),
    (
        "reserved_feature_id",
        _set("close", "indicators", 0, "feature_id"),
        "indicators.0.feature_id",
        "is a reserved word",
    ),
    (
        "duplicate_feature_id",
        _set("rsi_14", "indicators", 2, "feature_id"),
        "indicators",
        "Duplicate feature_ids found: 'rsi_14' appears at indices [0, 2]",
    ),
    ("type_instead_of_name", _type_instead_of_name, "indicators.0.name", "name - Field required"),
    (
        "unknown_indicator",
        _set("Bollinger", "indicators", 0, "name"),
        "indicators.0.name",
        "Unknown indicator type 'Bollinger' at index 0",
    ),
    (
        "missing_fuzzy_entry",
        _drop("fuzzy_sets", "adx_14"),
        "fuzzy_sets",
        "Missing fuzzy_sets for indicators: adx_14",
    ),
    (
        "wrong_parameter_count",
        _set([30, 50, 60, 70], "fuzzy_sets", "rsi_14", "mid", "parameters"),
        "fuzzy_sets.rsi_14.mid",
        "Fuzzy membership 'triangular' for rsi_14.mid requires exactly 3 parameters, but got 4",
    ),
    (
        "unknown_membership_type",
        _set("bell", "fuzzy_sets", "rsi_14", "mid", "type"),
        "fuzzy_sets.rsi_14.mid",
        "Unknown fuzzy membership type 'bell'",
    ),
    (
        "input_transform_entry",
        _set(
            {"type": "price_ratio", "reference": "close"}, "fuzzy_sets", "rsi_14", "input_transform"
        ),
        "fuzzy_sets.rsi_14.input_transform",
        "Unknown fuzzy membership type 'price_ratio'",
    ),
    (
        "missing_model_features",
        _drop("model", "features"),
        "model.features",
        "Missing required model field: features",
    ),
    (
        "missing_model_architecture",
        _drop("model", "architecture"),
        "model.architecture",
        "Missing required model field: architecture",
    ),
    (
        "missing_position_awareness",
        _drop("decisions", "position_awareness"),
        "decisions.position_awareness",
        "Missing required decisions field: position_awareness",
    ),
    (
        "missing_data_split",
        _drop("training", "data_split"),
        "training.data_split",
        "Missing required training field: data_split",
    ),
    (
        "missing_labels",
        _drop("training", "labels"),
        "training.labels",
        "Missing required training field: labels",
    ),
    # --- the trainer's rules: the validator accepts these, training fails ---
    (
        "triangle_alias",
        _set("triangle", "fuzzy_sets", "rsi_14", "mid", "type"),
        "fuzzy_sets.rsi_14.mid",
        "does not train",
    ),
    (
        "trapezoid_alias",
        _set("trapezoid", "fuzzy_sets", "rsi_14", "low", "type"),
        "fuzzy_sets.rsi_14.low",
        "does not train",
    ),
    (
        "sigmoid",
        _set({"type": "sigmoid", "parameters": [50, 1]}, "fuzzy_sets", "rsi_14", "mid"),
        "fuzzy_sets.rsi_14.mid",
        "does not train",
    ),
    (
        "parameters_out_of_order",
        _set([50, 35, 65], "fuzzy_sets", "rsi_14", "mid", "parameters"),
        "fuzzy_sets.rsi_14.mid",
        "ascending order",
    ),
    (
        "gaussian_zero_sigma",
        _set({"type": "gaussian", "parameters": [50, 0]}, "fuzzy_sets", "rsi_14", "mid"),
        "fuzzy_sets.rsi_14.mid",
        "sigma must be > 0",
    ),
    ("not_mlp", _set("lstm", "model", "type"), "model.type", "Unknown model type 'lstm'"),
    (
        "missing_hidden_layers",
        _drop("model", "architecture", "hidden_layers"),
        "model.architecture.hidden_layers",
        "required",
    ),
    (
        "missing_zigzag_threshold",
        _drop("training", "labels", "zigzag_threshold"),
        "training.labels.zigzag_threshold",
        "required by the trainer",
    ),
    (
        "missing_label_lookahead",
        _drop("training", "labels", "label_lookahead"),
        "training.labels.label_lookahead",
        "required by the trainer",
    ),
    (
        "untrainable_indicator",
        _set("SuperTrend", "indicators", 2, "name"),
        "indicators.2.name",
        "SuperTrend produces no usable feature column",
    ),
    (
        "name_with_dot",
        _set("my strategy.v2", "name"),
        "name",
        "may only contain alphanumerics, dashes, or underscores",
    ),
    (
        "rsi_period_out_of_range",
        _set(1, "indicators", 0, "period"),
        "indicators.0",
        "period must be in 2..100",
    ),
]


@pytest.mark.parametrize(
    ("mutation", "field", "message"),
    [case[1:] for case in BROKEN],
    ids=[case[0] for case in BROKEN],
)
def test_each_mistake_is_rejected_naming_the_field(mutation: Mutation, field: str, message: str):
    document = copy.deepcopy(example())
    mutation(document)
    with pytest.raises(StrategyValidationError) as caught:
        check_strategy(document, "broken")
    matching = [e for e in caught.value.errors if e.field == field and message in e.message]
    assert matching, caught.value.errors


def test_validator_lists_all_errors_at_once():
    document = example()
    del document["scope"]
    document["version"] = 1.0
    document["indicators"][0]["name"] = "Nope"
    fields = {error.field for error in _validation_errors(document)}
    assert {"scope", "version", "indicators.0.name"} <= fields


def _validation_errors(document: dict[str, Any]) -> list[Any]:
    with pytest.raises(StrategyValidationError) as caught:
        validate_strategy(document)
    return caught.value.errors


def test_validator_alone_accepts_what_only_the_trainer_refuses():
    document = example()
    document["fuzzy_sets"]["rsi_14"]["mid"]["type"] = "triangle"
    config = validate_strategy(document)
    assert [e.field for e in trainability_errors(config)] == ["fuzzy_sets.rsi_14.mid"]


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), 0.0, -0.1])
def test_a_learning_rate_outside_zero_to_infinity_is_a_trainer_error(rate: float):
    document = example()
    document["model"]["training"]["learning_rate"] = rate
    errors = trainability_errors(validate_strategy(document))
    assert [(e.field, e.message) for e in errors] == [
        ("model.training.learning_rate", f"must be > 0, got {rate}")
    ]


def test_non_mapping_document_is_rejected():
    with pytest.raises(StrategyValidationError):
        validate_strategy(["not", "a", "mapping"])  # type: ignore[arg-type]


def test_load_strategy_file_reports_bad_yaml_and_non_mappings(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(StrategyError, match="not valid YAML"):
        load_strategy_file(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(StrategyError, match="must hold a YAML mapping"):
        load_strategy_file(listing)
    with pytest.raises(StrategyError, match="not found"):
        load_strategy_file(tmp_path / "missing.yaml")


def test_load_strategy_file_never_builds_python_objects(tmp_path: Path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(StrategyError):
        load_strategy_file(evil)
