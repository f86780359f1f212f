"""The chain's strategy loader: the plan's extraction contract, real ktrdr shapes, safe names."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import yaml

from ktrdr_tasks.design import summarize_design
from ktrdr_tasks.errors import StrategyError, StrategyValidationError
from ktrdr_tasks.settings import get_settings
from ktrdr_tasks.strategy import (
    STRATEGY_NAME,
    extract_training_params,
    load_strategy_config,
    read_strategy_file,
    strategy_path,
    training_params_for,
    validate_strategy_name,
)
from ktrdr_tasks.strategy_schema import STRATEGY_NAME as schema_name_rule
from ktrdr_tasks.strategy_schema import load_strategy_file, validate_strategy

REPO = Path(__file__).resolve().parents[2]


# -- the plan's tests ------------------------------------------------------------------------


def test_v2_format_nested() -> None:
    config = {
        "training_data": {
            "symbols": {"mode": "multi_symbol", "list": ["EURUSD", "GBPUSD"]},
            "timeframes": {"mode": "single", "list": ["4h"]},
        }
    }
    result = extract_training_params(config)
    assert result["symbols"] == ["EURUSD", "GBPUSD"]
    assert result["timeframes"] == ["4h"]


def test_v1_format_direct_list() -> None:
    config = {"training_data": {"symbols": ["AAPL", "MSFT"], "timeframes": ["1h", "1d"]}}
    result = extract_training_params(config)
    assert result["symbols"] == ["AAPL", "MSFT"]
    assert result["timeframes"] == ["1h", "1d"]


def test_missing_training_data() -> None:
    result = extract_training_params({"name": "test_strategy"})
    assert result["symbols"] == []
    assert result["timeframes"] == []


# -- the shapes real ktrdr strategies use ------------------------------------------------------


@pytest.mark.parametrize(
    ("training_data", "symbols", "timeframes"),
    [
        (
            {
                "symbols": {"mode": "single", "symbol": "EURUSD"},
                "timeframes": {"mode": "single", "timeframe": "1h"},
            },
            ["EURUSD"],
            ["1h"],
        ),
        (
            {
                "symbols": {"mode": "multi_symbol", "symbols": ["EURUSD", "GBPUSD"]},
                "timeframes": {
                    "mode": "multi_timeframe",
                    "list": ["1h", "4h"],
                    "base_timeframe": "1h",
                },
            },
            ["EURUSD", "GBPUSD"],
            ["1h", "4h"],
        ),
        (
            {
                "symbols": {"mode": "single", "symbol": "X", "list": ["EURUSD"]},
                "timeframes": {"mode": "single", "timeframe": "1d"},
            },
            ["EURUSD"],
            ["1d"],
        ),
    ],
)
def test_v2_shapes(training_data: dict, symbols: list[str], timeframes: list[str]) -> None:
    result = extract_training_params({"training_data": training_data})
    assert (result["symbols"], result["timeframes"]) == (symbols, timeframes)


def test_legacy_top_level_data_section() -> None:
    result = extract_training_params({"data": {"symbols": ["GOOG"], "timeframes": ["1d"]}})
    assert result["symbols"] == ["GOOG"]
    assert result["timeframes"] == ["1d"]


def test_dates_from_date_range_and_unquoted_yaml_dates_become_text() -> None:
    config = {"training_data": {"date_range": {"start": dt.date(2017, 5, 1), "end": "2018-02-01"}}}
    result = extract_training_params(config)
    assert result["start_date"] == "2017-05-01"
    assert result["end_date"] == "2018-02-01"


def test_dates_from_start_and_end_date_keys() -> None:
    config = {"training_data": {"start_date": dt.date(2017, 5, 1), "end_date": dt.date(2018, 1, 2)}}
    result = extract_training_params(config)
    assert (result["start_date"], result["end_date"]) == ("2017-05-01", "2018-01-02")


def test_training_params_use_default_dates_when_strategy_names_none(tmp_path: Path) -> None:
    config = {"training_data": {"symbols": ["EURUSD"], "timeframes": ["1h"]}}
    params = training_params_for("s", config, tmp_path, "2017-05-01", "2018-02-01")
    assert (params.start_date, params.end_date) == ("2017-05-01", "2018-02-01")


@pytest.mark.parametrize("missing", ["symbols", "timeframes"])
def test_training_params_refuse_a_strategy_without_data(tmp_path: Path, missing: str) -> None:
    config = {"training_data": {"symbols": ["EURUSD"], "timeframes": ["1h"]}}
    del config["training_data"][missing]
    with pytest.raises(StrategyError, match=rf"training_data\.{missing}") as error:
        training_params_for("momo", config, tmp_path, None, None)
    assert "momo.yaml" in str(error.value)


def test_training_params_refuse_a_malformed_date(tmp_path: Path) -> None:
    config = {"training_data": {"symbols": ["A"], "timeframes": ["1h"], "start_date": "soon"}}
    with pytest.raises(StrategyError, match="start_date"):
        training_params_for("s", config, tmp_path, None, None)


# -- names and files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "", "x.yaml", ".hidden", "with space", "-lead", "a" * 101, None, 7]
)
def test_unsafe_names_are_refused_before_touching_the_disk(name: object) -> None:
    with pytest.raises(StrategyError, match="invalid strategy name"):
        validate_strategy_name(name)


def test_symlink_leading_outside_the_directory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.yaml"
    outside.write_text("name: outside\n")
    inside = tmp_path / "strategies"
    inside.mkdir()
    os.symlink(outside, inside / "escape.yaml")
    with pytest.raises(StrategyError, match="outside the strategies directory"):
        strategy_path("escape", inside)


def test_missing_file_names_the_known_strategies(tmp_path: Path) -> None:
    (tmp_path / "alpha.yaml").write_text("name: alpha\n")
    with pytest.raises(StrategyError, match=r"'beta' not found .*known: alpha"):
        load_strategy_config("beta", tmp_path)


def test_bad_yaml_is_a_strategy_error(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(StrategyError, match="not valid YAML"):
        load_strategy_config("broken", tmp_path)


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    (tmp_path / "alist.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(StrategyError, match="must hold a YAML mapping"):
        load_strategy_config("alist", tmp_path)


def test_yaml_object_construction_is_refused(tmp_path: Path) -> None:
    (tmp_path / "evil.yaml").write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(StrategyError, match="not valid YAML"):
        load_strategy_config("evil", tmp_path)


def test_every_example_strategy_gives_training_params() -> None:
    directory = REPO / "strategies"
    names = sorted(p.stem for p in directory.glob("*.yaml"))
    assert names
    for name in names:
        params = training_params_for(
            name, load_strategy_config(name, directory), directory, None, None
        )
        assert params.symbols and params.timeframes and params.start_date


# -- one reading everywhere: the chain, the designer's fingerprint and the schema -----------


V2_STRATEGY = """
name: pinned
version: "1.0"
scope: symbol_specific
training_data:
  symbols: {mode: single, symbol: EURUSD}
  timeframes: {mode: single, timeframe: 1h}
deployment:
  target_symbols: {mode: training_only}
  target_timeframes: {mode: single, timeframe: 1h}
indicators:
  - {name: RSI, feature_id: rsi_14, period: 14}
fuzzy_sets:
  rsi_14:
    low: {type: triangular, parameters: [0, 20, 40]}
    high: {type: triangular, parameters: [60, 80, 100]}
model:
  type: mlp
  architecture: {hidden_layers: [8]}
  features: {lookback_periods: 1}
  training: {epochs: 2}
decisions: {output_format: classification, confidence_threshold: 0.6, position_awareness: true}
training:
  method: supervised
  labels: {source: zigzag, zigzag_threshold: 0.005, label_lookahead: 20}
  data_split: {test_size: 0.15, validation_size: 0.15}
"""


def _schema_document(training_data: dict) -> dict:
    document = yaml.safe_load(V2_STRATEGY)
    document["training_data"] = {**document["training_data"], **training_data}
    return document


def test_a_single_mode_with_a_list_trains_the_list_for_every_reader() -> None:
    # ktrdr's own reading (`_extract_config_list`: "multi mode takes precedence"): a non-empty
    # list wins whatever the mode says, so a ktrdr backend trains both symbols.
    symbols = {"mode": "single", "symbol": "EURUSD", "list": ["EURUSD", "GBPUSD"]}
    document = _schema_document({"symbols": symbols})
    assert extract_training_params(document)["symbols"] == ["EURUSD", "GBPUSD"]
    assert summarize_design(document)["symbols"] == ["EURUSD", "GBPUSD"]
    assert validate_strategy(document).symbols == ["EURUSD", "GBPUSD"]


def test_an_empty_list_falls_back_to_the_single_key_for_every_reader() -> None:
    timeframes = {"mode": "single", "timeframe": "1h", "list": []}
    document = _schema_document({"timeframes": timeframes})
    assert extract_training_params(document)["timeframes"] == ["1h"]
    assert summarize_design(document)["timeframes"] == ["1h"]
    assert validate_strategy(document).timeframes == ["1h"]


def test_date_range_wins_over_start_date_for_the_chain_and_the_schema() -> None:
    # ktrdr's research worker reads `training_data.date_range` first.
    dates = {
        "date_range": {"start": "2017-06-01", "end": "2018-01-01"},
        "start_date": "2017-05-01",
        "end_date": "2018-02-01",
    }
    document = _schema_document(dates)
    params = extract_training_params(document)
    config = validate_strategy(document)
    assert (params["start_date"], params["end_date"]) == ("2017-06-01", "2018-01-01")
    assert (config.start_date, config.end_date) == ("2017-06-01", "2018-01-01")


@pytest.mark.parametrize("text", ["2020-02-30", "2020-01-01T00:00", "20200101", "soon"])
def test_the_chain_and_the_schema_refuse_the_same_dates(tmp_path: Path, text: str) -> None:
    document = _schema_document({"start_date": text})
    with pytest.raises(StrategyError, match="start_date"):
        training_params_for("s", document, tmp_path, None, None)
    with pytest.raises(StrategyValidationError, match="start_date"):
        validate_strategy(document)


def test_the_schema_uses_the_chains_name_rule() -> None:
    assert schema_name_rule is STRATEGY_NAME
    assert load_strategy_file is read_strategy_file


def test_load_strategy_config_defaults_to_the_configured_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "here.yaml").write_text("name: here\n")
    monkeypatch.setenv("KTRDR_STRATEGIES_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert load_strategy_config("here") == {"name": "here"}
    finally:
        get_settings.cache_clear()
