"""The ktrdr v3 schema: accepts the spec's examples, refuses each mistake it lists with ktrdr's
message, migrates every v2 example, and the designers write valid v3."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ktrdr_tasks.datasets import REFERENCE_DATASETS
from ktrdr_tasks.design import design_fingerprint, design_strategy, summarize_design
from ktrdr_tasks.design.builtin import compose
from ktrdr_tasks.errors import (
    StrategyError,
    StrategyValidationError,
    V3ParseError,
    V3ValidationError,
)
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.strategy_migration import convert_v2_to_v3, migrate_document
from ktrdr_tasks.strategy_schema import StrategyConfig, load_strategy_file
from ktrdr_tasks.strategy_v3 import (
    StrategyConfigV3,
    check_any_strategy,
    check_strategy_v3,
    is_v3,
    resolve_features,
    strategy_text,
    validate_v3,
)

STRATEGIES = Path(__file__).resolve().parents[2] / "strategies"
V2_EXAMPLES = sorted(p for p in STRATEGIES.glob("*.yaml") if not is_v3(load_strategy_file(p)))

# The spec's section 8 examples, as its text describes them (sections 2-5 give the pieces).
HOLDOUT_V3_RSI = """
name: holdout_v3_rsi
training_data:
  symbols: {mode: single, symbol: EURUSD}
  timeframes: {mode: single, timeframe: 1h}
  history_required: 100
indicators:
  rsi_14: {type: rsi, period: 14, source: close}
fuzzy_sets:
  rsi_14:
    indicator: rsi_14
    oversold: {type: triangular, parameters: [0, 20, 40]}
    neutral: {type: triangular, parameters: [30, 50, 70]}
    overbought: {type: triangular, parameters: [60, 80, 100]}
nn_inputs:
  - {fuzzy_set: rsi_14, timeframes: all}
model:
  type: mlp
  architecture: {hidden_layers: [16, 8]}
decisions: {output_format: classification, confidence_threshold: 0.6}
training:
  epochs: 10
  labels: {source: zigzag, zigzag_threshold: 0.005, label_lookahead: 10}
  data_split: {train: 0.7, validation: 0.15, test: 0.15}
"""

HOLDOUT_V3_MULTI = """
name: holdout_v3_multi
version: "3.0"
training_data:
  symbols: {mode: single, symbol: EURUSD}
  timeframes: {mode: single, timeframe: 1h}
indicators:
  rsi_14: {type: rsi, period: 14}
  macd_12_26_9: {type: macd, fast_period: 12, slow_period: 26, signal_period: 9}
  adx_14: {type: adx, period: 14}
  bb_20: {type: bbands, period: 20, multiplier: 2.0}
  sma_20: {type: sma, period: 20}
fuzzy_sets:
  rsi_momentum:
    indicator: rsi_14
    oversold: [0, 25, 45]
    overbought: [55, 75, 100]
  macd_hist:
    indicator: macd_12_26_9.histogram
    negative: {type: trapezoidal, parameters: [-0.01, -0.005, -0.0005, 0.0]}
    positive: {type: trapezoidal, parameters: [0.0, 0.0005, 0.005, 0.01]}
  trend_strength:
    indicator: adx_14.adx
    weak: {type: gaussian, parameters: [15, 7]}
    strong: {type: gaussian, parameters: [40, 10]}
  di_plus:
    indicator: adx_14.plus_di
    low: [0, 10, 25]
    high: [20, 35, 100]
  bb_upper:
    indicator: bb_20.upper
    low: [1.0, 1.1, 1.2]
nn_inputs:
  - {fuzzy_set: rsi_momentum, timeframes: all}
  - {fuzzy_set: macd_hist, timeframes: all}
  - {fuzzy_set: trend_strength, timeframes: all}
  - {fuzzy_set: di_plus, timeframes: ["1h"]}
model:
  type: mlp
  architecture: {hidden_layers: [32, 16], dropout: 0.2, activation: relu}
decisions: {output_format: classification, confidence_threshold: 0.6, position_awareness: true}
training:
  epochs: 10
  batch_size: 32
  learning_rate: 0.001
  labels: {source: zigzag, zigzag_threshold: 0.005, label_lookahead: 10}
"""

HOLDOUT_V3_HYBRID = """
name: holdout_v3_hybrid
training_data:
  symbols: {mode: single, symbol: EURUSD}
  timeframes: {mode: single, list: [1h]}
indicators:
  roc_10: {type: roc, period: 10}
  macd_12_26_9: {type: macd}
  stoch_14: {type: stochastic, k_period: 14, d_period: 3, smooth_k: 3}
fuzzy_sets:
  stoch_k:
    indicator: stoch_14.k
    low: {type: trapezoidal, parameters: [0, 0, 20, 40]}
    mid: [30, 50, 70]
    high: {type: trapezoidal, parameters: [60, 80, 100, 100]}
nn_inputs:
  - {raw_indicator: roc_10, timeframes: all, normalization: zscore}
  - {raw_indicator: macd_12_26_9.line, timeframes: all}
  - {fuzzy_set: stoch_k, timeframes: all}
model:
  type: mlp
  architecture: {hidden_layers: [16]}
decisions: {output_format: classification}
training:
  epochs: 10
  labels: {source: triple_barrier, pt_multiplier: 2.0, sl_multiplier: 1.5}
"""


# The snippets of the spec's sections 2.1 and 3-5 put together (plus the adx_14 and roc_10
# indicators that its fuzzy_sets and nn_inputs snippets refer to).
SPEC_SNIPPETS = """
name: spec_snippets
training_data:
  symbols:    {mode: multi_symbol, list: [EURUSD, GBPUSD]}
  timeframes: {mode: multi_timeframe, list: [1h, 4h], base_timeframe: 1h}
  history_required: 100
  start_date: null
  end_date: null
indicators:
  rsi_14:       {type: rsi, period: 14, source: close}
  macd_12_26_9: {type: macd, fast_period: 12, slow_period: 26, signal_period: 9}
  bb_20:        {type: bbands, period: 20, multiplier: 2.0}
  adx_14:       {type: adx, period: 14}
  roc_10:       {type: roc, period: 10}
fuzzy_sets:
  rsi_14:
    indicator: rsi_14
    oversold:   {type: triangular, parameters: [0, 20, 40]}
    neutral:    [30, 50, 70]
    overbought: [60, 80, 100]
  macd_hist:
    indicator: macd_12_26_9.histogram
    negative: {type: trapezoidal, parameters: [-0.01, -0.005, -0.0005, 0.0]}
    positive: {type: trapezoidal, parameters: [0.0, 0.0005, 0.005, 0.01]}
  trend_strength:
    indicator: adx_14.adx
    weak:   {type: gaussian, parameters: [15, 7]}
nn_inputs:
  - fuzzy_set: rsi_14
    timeframes: all
  - raw_indicator: roc_10
    timeframes: all
    normalization: zscore
model: {type: mlp, architecture: {hidden_layers: [16]}}
decisions: {output_format: classification}
training: {epochs: 5}
"""


def example(text: str = HOLDOUT_V3_RSI) -> dict[str, Any]:
    return yaml.safe_load(text)


@pytest.mark.parametrize(
    "text", [HOLDOUT_V3_RSI, HOLDOUT_V3_MULTI, HOLDOUT_V3_HYBRID], ids=["rsi", "multi", "hybrid"]
)
def test_the_spec_examples_are_valid_and_trainable_v3(text: str) -> None:
    document = example(text)
    assert is_v3(document)
    config = check_any_strategy(document, "example", stem=document["name"])
    assert isinstance(config, StrategyConfigV3)
    assert config.symbols == ["EURUSD"] and config.timeframes == ["1h"]


def test_the_spec_snippets_together_are_valid_v3() -> None:
    config = check_any_strategy(example(SPEC_SNIPPETS), stem="spec_snippets")
    assert isinstance(config, StrategyConfigV3)
    assert config.symbols == ["EURUSD", "GBPUSD"] and config.timeframes == ["1h", "4h"]
    assert (config.start_date, config.end_date) == (None, None)
    names = [f.feature_id for f in resolve_features(config, config.timeframes)]
    assert names == [
        *(f"1h_rsi_14_{m}" for m in ("oversold", "neutral", "overbought")),
        *(f"4h_rsi_14_{m}" for m in ("oversold", "neutral", "overbought")),
        "1h_roc_10_raw",
        "4h_roc_10_raw",
    ]


def test_feature_order_is_nn_inputs_then_timeframes_then_memberships() -> None:
    config = check_strategy_v3(example(HOLDOUT_V3_MULTI))
    names = [feature.feature_id for feature in resolve_features(config, config.timeframes)]
    # The order the spec saw in a real backend's metadata_v3.json for this strategy.
    assert names == [
        "1h_rsi_momentum_oversold",
        "1h_rsi_momentum_overbought",
        "1h_macd_hist_negative",
        "1h_macd_hist_positive",
        "1h_trend_strength_weak",
        "1h_trend_strength_strong",
        "1h_di_plus_low",
        "1h_di_plus_high",
    ]


def test_raw_inputs_are_named_by_their_reference_and_multi_timeframe_expands_all() -> None:
    config = check_strategy_v3(example(HOLDOUT_V3_HYBRID))
    features = resolve_features(config, ["1h", "4h"])
    assert [f.feature_id for f in features][:4] == [
        "1h_roc_10_raw",
        "4h_roc_10_raw",
        "1h_macd_12_26_9.line_raw",
        "4h_macd_12_26_9.line_raw",
    ]
    assert (features[2].indicator_id, features[2].output, features[2].raw) == (
        "macd_12_26_9",
        "line",
        True,
    )
    stoch = features[4]
    assert (stoch.fuzzy_set_id, stoch.membership, stoch.output) == ("stoch_k", "low", "k")


def _edit(path: str, value: Any, delete: bool = False) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = document
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if delete:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


# Every mistake of the spec's section 7 with the message ktrdr answers (its 400 carries it
# after "V3 strategy validation failed: ..."; the worker's failures are the 200-then-failed).
MISTAKES: dict[str, tuple[Callable[[dict[str, Any]], None], type[Exception], str]] = {
    "bad_fuzzy_ref": (
        _edit("fuzzy_sets/rsi_14/indicator", "rsi_99"),
        V3ValidationError,
        "fuzzy_sets.rsi_14.indicator: 'rsi_99' not found in indicators. "
        "Available indicators: rsi_14",
    ),
    "bad_nn_input": (
        _edit("nn_inputs/0/fuzzy_set", "no_such_fuzzy_set"),
        V3ValidationError,
        "nn_inputs[0].fuzzy_set: 'no_such_fuzzy_set' not found in fuzzy_sets. "
        "Available fuzzy_sets: rsi_14",
    ),
    "bad_timeframe": (
        _edit("nn_inputs/0/timeframes", ["4h"]),
        V3ValidationError,
        "nn_inputs[0].timeframes: Invalid timeframe '4h'. Available timeframes: 1h",
    ),
    "bad_missing": (
        _edit("decisions", None, delete=True),
        V3ParseError,
        "decisions: Field required",
    ),
    "bad_nn_both": (
        _edit(
            "nn_inputs/0", {"fuzzy_set": "rsi_14", "raw_indicator": "rsi_14", "timeframes": "all"}
        ),
        V3ParseError,
        "Specify either fuzzy_set or raw_indicator, not both",
    ),
    "bad_indicator_type": (
        _edit("indicators/rsi_14/type", "rsx"),
        StrategyValidationError,
        "indicators.rsi_14.type: Unknown indicator type 'rsx'. Available: ['adline', 'adx',",
    ),
    "bad_mf_params": (
        _edit("fuzzy_sets/rsi_14/oversold", {"type": "triangular", "parameters": [0, 20]}),
        StrategyValidationError,
        "[MF-InvalidParameters] Invalid parameters for TriangularMF",
    ),
    "bad_mf_type": (
        _edit("fuzzy_sets/rsi_14/oversold", {"type": "sigmoid", "parameters": [0, 20]}),
        StrategyValidationError,
        "[ENGINE-MFCreationError] Failed to create membership function 'oversold'",
    ),
    "bad_no_hidden": (
        _edit("model/architecture", {}),
        StrategyValidationError,
        "'hidden_layers'",
    ),
    "bad_output_format": (
        _edit("decisions/output_format", "probabilities"),
        V3ValidationError,
        "decisions.output_format must be 'classification' or 'regression', got 'probabilities'",
    ),
    "bad_single_output_dot": (
        _edit("fuzzy_sets/rsi_14/indicator", "rsi_14.value"),
        V3ValidationError,
        "fuzzy_sets.rsi_14.indicator: Indicator 'rsi_14' (type: rsi) is single-output and does "
        "not support dot notation. Remove '.value' from reference.",
    ),
    "bad_raw_ref": (
        _edit("nn_inputs/0", {"raw_indicator": "roc_10", "timeframes": "all"}),
        V3ValidationError,
        "nn_inputs[0].raw_indicator: 'roc_10' not found in indicators. Available indicators: "
        "rsi_14",
    ),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_listed_mistake_is_refused_with_ktrdrs_message(mistake: str) -> None:
    change, kind, message = MISTAKES[mistake]
    document = example()
    change(document)
    with pytest.raises(kind) as caught:
        check_any_strategy(document, f"holdout_{mistake}")
    assert any(message in str(error) for error in caught.value.errors), caught.value.errors


@pytest.mark.parametrize("rate", [float("nan"), float("inf"), 0.0, -0.1])
def test_a_learning_rate_outside_zero_to_infinity_is_refused_naming_the_field(
    rate: float,
) -> None:
    document = example()
    document["training"]["learning_rate"] = rate
    with pytest.raises(StrategyValidationError) as caught:
        check_strategy_v3(document, "holdout_rate")
    assert [(e.field, e.message) for e in caught.value.errors] == [
        ("training.learning_rate", f"must be > 0, got {rate}")
    ]


def test_a_bad_dot_output_names_the_valid_outputs() -> None:
    document = example(HOLDOUT_V3_MULTI)
    document["fuzzy_sets"]["macd_x"] = {"indicator": "macd_12_26_9.nope", "a": [0, 1, 2]}
    with pytest.raises(V3ValidationError) as caught:
        validate_v3(document)
    assert [str(e) for e in caught.value.errors] == [
        "fuzzy_sets.macd_x.indicator: Invalid output 'nope' for macd indicator 'macd_12_26_9'. "
        "Valid outputs: line, signal, histogram"
    ]
    assert caught.value.error_code == "STRATEGY-V3ValidationFailed"


def test_a_missing_section_is_a_parse_failure_as_on_ktrdr() -> None:
    document = example()
    del document["decisions"]
    with pytest.raises(V3ParseError) as caught:
        validate_v3(document)
    assert caught.value.error_code == "STRATEGY-V3ParseFailed"


def test_a_v2_file_is_no_v3_file_for_todays_ktrdr() -> None:
    document = load_strategy_file(STRATEGIES / "eurusd_1h_rsi_macd_adx.yaml")
    assert not is_v3(document)
    with pytest.raises(V3ParseError) as caught:
        validate_v3(document)
    messages = [str(error) for error in caught.value.errors]
    assert "indicators: Input should be a valid dictionary" in messages
    assert "nn_inputs: Field required" in messages
    # ...while the same file is a valid v2 strategy for a December 2025 backend.
    assert isinstance(check_any_strategy(document), StrategyConfig)


def test_what_ktrdr_accepts_and_trains_anyway_is_accepted() -> None:
    epochs_in_model = example()
    del epochs_in_model["training"]["epochs"]
    epochs_in_model["model"]["training"] = {"epochs": 2}
    assert check_strategy_v3(epochs_in_model).epochs == 100  # ktrdr reads only training.epochs

    no_dot = example(HOLDOUT_V3_MULTI)
    no_dot["fuzzy_sets"]["macd_hist"]["indicator"] = "macd_12_26_9"
    config = check_strategy_v3(no_dot)
    assert resolve_features(config, ["1h"])[2].output is None  # the primary output (line)

    v2_param = example(HOLDOUT_V3_MULTI)
    v2_param["indicators"]["bb_20"] = {"type": "bbands", "period": 20, "std_dev": 2}
    check_strategy_v3(v2_param)


def test_name_must_equal_the_file_stem_and_follow_the_name_rule() -> None:
    with pytest.raises(V3ValidationError, match="must equal the file name 'other'"):
        check_any_strategy(example(), "other.yaml", stem="other")
    document = example()
    document["name"] = "has.dot"
    with pytest.raises(V3ValidationError, match="may only contain alphanumerics"):
        check_any_strategy(document)


def test_version_must_be_a_string_as_pydantic_says() -> None:
    document = example()
    document["version"] = 3.0
    with pytest.raises(V3ParseError, match="version: Input should be a valid string"):
        validate_v3(document)


@pytest.mark.parametrize("path", V2_EXAMPLES, ids=lambda p: p.stem)
def test_every_v2_example_converts_to_a_valid_v3_file(path: Path) -> None:
    v2 = load_strategy_file(path)
    conversion = convert_v2_to_v3(v2)
    text, notes = migrate_document(v2, path.name, path.stem)
    assert notes == conversion.notes
    document = yaml.safe_load(text)
    assert document == conversion.document
    config = check_any_strategy(document, path.name, stem=path.stem)
    assert isinstance(config, StrategyConfigV3) and config.version == "3.0"
    v2_config = check_any_strategy(v2)
    assert config.epochs == v2_config.model.training.epochs  # moved to where v3 reads it
    assert config.symbols == v2_config.symbols and config.timeframes == v2_config.timeframes
    assert (config.start_date, config.end_date) == (v2_config.start_date, v2_config.end_date)
    # The same indicators with the parameters ktrdr computed, one fuzzy input each.
    assert list(config.indicators) == v2_config.feature_ids
    for item in v2_config.indicators:
        indicator = config.indicators[item.feature_id]
        assert indicator.spec is not None and indicator.spec.name == item.spec.name
        assert indicator.params.items() <= item.resolved_params.items()
    # v2 trained on the last test_size as test and validation_size of the rest: so does v3.
    split = config.training_section.data_split
    expected_test = v2_config.data_split.test_size
    assert split.test == pytest.approx(expected_test)
    assert split.validation == pytest.approx(
        (1 - expected_test) * v2_config.data_split.validation_size
    )


def test_conversion_flattens_nested_params_and_names_what_v3_drops() -> None:
    v2 = load_strategy_file(STRATEGIES / "eurusd_1h_stoch_cci_roc.yaml")
    feature_id = v2["indicators"][0]["feature_id"]
    v2["indicators"][0] = {"name": "RSI", "feature_id": feature_id, "params": {"period": 9}}
    v2["indicators"][0]["std_dev"] = 2
    conversion = convert_v2_to_v3(v2)
    first = next(iter(conversion.document["indicators"].values()))
    assert first == {"type": "rsi", "period": 9}  # v3 would ignore a nested params: block
    notes = " | ".join(conversion.notes)
    assert "'std_dev' dropped" in notes
    assert "lookback_periods 2 dropped" in notes
    assert "early_stopping dropped" in notes
    assert "scope" not in conversion.document and "features" not in conversion.document["model"]


def test_migrating_a_v3_file_is_refused() -> None:
    with pytest.raises(StrategyError, match="v3 strategy already"):
        migrate_document(example(), "holdout_v3_rsi.yaml")


def test_written_text_reads_back_the_same_with_a_quoted_version() -> None:
    document = example(HOLDOUT_V3_MULTI)
    text = strategy_text(document)
    assert "version: '3.0'" in text
    assert yaml.safe_load(text) == document
    assert text.index("nn_inputs:") < text.index("model:")


@pytest.mark.parametrize("strategy_format", ["v2", "v3"])
def test_a_hundred_designs_per_format_validate(strategy_format: str) -> None:
    valid = 0
    for seed in range(100):
        rng = random.Random(seed)
        candidate = compose(rng, list(REFERENCE_DATASETS), None, None, strategy_format)
        config = check_any_strategy(candidate.config, "design", stem=candidate.config["name"])
        assert config.format == strategy_format
        valid += 1
    assert valid == 100


def test_v3_designs_read_epochs_and_dates_where_the_chain_and_ktrdr_look() -> None:
    for seed in range(50):
        config = compose(random.Random(seed), list(REFERENCE_DATASETS), None, None, "v3").config
        assert 12 <= config["training"]["epochs"] <= 20
        assert "training" not in config["model"] and "features" not in config["model"]
        dates = config["training_data"]
        assert dates["start_date"] < dates["end_date"]  # sent with the start request
        assert config["name"].endswith(design_fingerprint(config)[:6])


def test_the_designer_writes_v3_by_default(tmp_path: Path) -> None:
    settings = Settings(strategies_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.strategy_format == "v3"
    result = design_strategy(settings, [], seed=4)
    document = load_strategy_file(result.path)
    assert is_v3(document) and document == result.config
    assert "version: '3.0'" in result.path.read_text()
    assert isinstance(check_any_strategy(document, stem=result.path.stem), StrategyConfigV3)
    summary = summarize_design(document)
    assert summary["fingerprint"] == result.fingerprint
    assert summary["indicators"] and summary["symbols"] and summary["timeframes"]
    # The file on disk keeps the same design from being drawn again.
    again = design_strategy(settings, [], seed=4)
    assert again.fingerprint != result.fingerprint


def test_v2_format_setting_keeps_v2_designs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KTRDR_STRATEGY_FORMAT", "v2")
    settings = Settings(strategies_dir=tmp_path)  # type: ignore[call-arg]
    result = design_strategy(settings, [], seed=4)
    assert not is_v3(result.config) and isinstance(
        check_any_strategy(result.config), StrategyConfig
    )


def test_an_unknown_format_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_STRATEGY_FORMAT", "v4")
    with pytest.raises(ValueError, match="v3"):
        Settings()  # type: ignore[call-arg]


def test_fingerprints_tell_v3_designs_apart_but_ignore_names() -> None:
    config = compose(random.Random(1), list(REFERENCE_DATASETS), None, None, "v3").config
    renamed = {**copy.deepcopy(config), "name": "other", "description": "prose"}
    assert design_fingerprint(renamed) == design_fingerprint(config)
    changed = copy.deepcopy(config)
    first_set = next(iter(changed["fuzzy_sets"].values()))
    membership = next(v for k, v in first_set.items() if k != "indicator")
    membership["parameters"][-1] += 1
    assert design_fingerprint(changed) != design_fingerprint(config)


def test_the_chains_loader_reads_v3_training_data() -> None:
    from ktrdr_tasks.strategy import extract_training_params, load_strategy_config

    params = extract_training_params(load_strategy_config("eurusd_1h_4h_v3_multi", STRATEGIES))
    assert params == {
        "symbols": ["EURUSD"],
        "timeframes": ["1h", "4h"],
        "start_date": "2017-05-01",
        "end_date": "2018-02-01",
    }


def test_a_single_timeframe_string_is_one_timeframe() -> None:
    document = example()
    document["nn_inputs"][0]["timeframes"] = "1h"
    config = check_strategy_v3(document)
    assert [f.timeframe for f in resolve_features(config, ["1h"])] == ["1h", "1h", "1h"]
    document["nn_inputs"][0]["timeframes"] = "4h"
    with pytest.raises(V3ValidationError, match="Invalid timeframe '4h'"):
        validate_v3(document)
