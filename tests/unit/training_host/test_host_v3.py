"""The host trains v3 strategies: nn_inputs order, `id.output` of multi-output indicators, raw
inputs, several timeframes, ktrdr's fraction split, and metadata_v3.json beside the model."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from ktrdr_tasks.catalogue import INDICATORS as CATALOGUE
from ktrdr_tasks.catalogue import resolve_params
from ktrdr_tasks.datasets import REFERENCE_DATASETS
from ktrdr_tasks.design.builtin import compose
from ktrdr_tasks.strategy_migration import convert_v2_to_v3
from ktrdr_tasks.strategy_schema import load_strategy_file
from ktrdr_tasks.strategy_v3 import check_any_strategy, is_v3, resolve_features
from training_host import indicators
from training_host.errors import TrainingFailed
from training_host.features import build_inputs_v3, fraction_split, v3_features
from training_host.jobs import JobContext
from training_host.market_data import resample_bars
from training_host.operations import OperationRegistry
from training_host.pipeline import TrainingJob, input_plan, run_training, training_timeframes

STRATEGIES = Path(__file__).resolve().parents[3] / "strategies"
V2_EXAMPLES = sorted(p for p in STRATEGIES.glob("*.yaml") if not is_v3(load_strategy_file(p)))
# Short windows keep each training to a few seconds; both are inside the shipped data.
SHORT = {"EURUSD": ("2017-05-01", "2017-08-15"), "GOOG": ("2009-01-01", "2013-02-28")}

HYBRID = """
name: hybrid
training_data:
  symbols: {mode: single, symbol: EURUSD}
  timeframes: {mode: multi_timeframe, list: [1h, 4h]}
indicators:
  roc_10: {type: roc, period: 10}
  macd_12_26_9: {type: MACDIndicator}
  stoch_14: {type: stochastic, k_period: 14, d_period: 3, smooth_k: 3}
fuzzy_sets:
  stoch_d:
    indicator: stoch_14.d
    low: {type: trapezoidalmf, parameters: [0, 0, 20, 40]}
    high: [60, 80, 100]
nn_inputs:
  - {raw_indicator: roc_10, timeframes: [1h]}
  - {raw_indicator: macd_12_26_9.histogram, timeframes: all}
  - {fuzzy_set: stoch_d, timeframes: [4h]}
model: {type: mlp, architecture: {hidden_layers: [8]}}
decisions: {output_format: classification}
training: {epochs: 1, labels: {source: zigzag, zigzag_threshold: 0.005}}
"""


def train(document: dict[str, Any], models_dir: Path, epochs: int = 2) -> dict[str, Any]:
    """One job through the pipeline, as the start route submits it, on a short window."""
    document = {**document, "training": {**document["training"], "epochs": epochs}}
    config = check_any_strategy(document, "test", stem=document["name"])
    symbols = tuple(config.symbols)
    start, end = SHORT[symbols[0]]
    registry = OperationRegistry()
    operation, _ = registry.create({"strategy_name": config.name})
    job = TrainingJob(
        config.name, STRATEGIES, document, config, symbols, tuple(config.timeframes), start, end
    )
    context = JobContext(operation.operation_id, registry)
    return run_training(job, context, models_dir=models_dir, data_dir=None, seed=7)


@pytest.mark.parametrize("path", V2_EXAMPLES, ids=lambda p: p.stem)
def test_every_converted_example_trains_and_writes_ktrdrs_v3_metadata(
    path: Path, tmp_path: Path
) -> None:
    document = convert_v2_to_v3(load_strategy_file(path)).document
    result = train(document, tmp_path)
    model_dir = Path(result["model_path"])
    assert model_dir.parent.name == path.stem
    meta = json.loads((model_dir / "metadata_v3.json").read_text())
    features = json.loads((model_dir / "features.json").read_text())["feature_names"]
    config = check_any_strategy(document)
    expected = [f.feature_id for f in resolve_features(config, config.timeframes)]
    assert meta["resolved_features"] == features == expected
    assert result["model_info"]["input_size"] == len(expected)
    assert meta["strategy_name"] == meta["model_name"] == path.stem
    assert meta["strategy_version"] == "3.0" and meta["output_type"] == "classification"
    assert meta["indicators"] == document["indicators"]
    assert meta["nn_inputs"] == document["nn_inputs"]
    assert meta["normalization_params"] == {}
    assert meta["training_symbols"] == config.symbols
    assert all(isinstance(v, float) for v in meta["training_metrics"].values())
    assert result["training_metrics"]["epochs_completed"] == 2
    assert 0 < result["test_metrics"]["test_accuracy"] <= 1


def test_the_multi_timeframe_example_trains(tmp_path: Path) -> None:
    document = load_strategy_file(STRATEGIES / "eurusd_1h_4h_v3_multi.yaml")
    result = train(document, tmp_path, epochs=1)
    assert result["model_info"]["input_size"] == 14
    assert result["data_summary"]["timeframes"] == ["1h", "4h"]


def test_two_v3_designs_train_on_the_host(tmp_path: Path) -> None:
    for seed in (0, 1):
        rng = random.Random(seed)
        eurusd = [d for d in REFERENCE_DATASETS if d.symbol == "EURUSD" and d.timeframe == "1h"]
        config = compose(rng, eurusd, "2017-05-01", "2017-08-15", "v3").config
        result = train(config, tmp_path, epochs=1)
        assert (Path(result["model_path"]) / "metadata_v3.json").is_file()


def test_raw_inputs_dot_outputs_and_a_coarser_timeframe(eurusd: pd.DataFrame) -> None:
    document = yaml.safe_load(HYBRID)
    config = check_any_strategy(document, stem="hybrid")
    bars = {"1h": eurusd.iloc[:1200], "4h": resample_bars(eurusd.iloc[:1200], "4h")}
    resolved = v3_features(config, ["1h", "4h"])
    inputs = build_inputs_v3(bars, config, resolved)
    assert list(inputs.columns) == [
        "1h_roc_10_raw",
        "1h_macd_12_26_9.histogram_raw",
        "4h_macd_12_26_9.histogram_raw",
        "4h_stoch_d_low",
        "4h_stoch_d_high",
    ]
    assert not inputs.isna().any().any() and len(inputs) == 1200
    roc = indicators.compute("ROC", bars["1h"], {"period": 10, "source": "close"})
    np.testing.assert_allclose(inputs["1h_roc_10_raw"], roc.fillna(0.0), rtol=1e-5)
    assert inputs["1h_roc_10_raw"].iloc[0] == 0.0  # warm-up reads 0, as ktrdr's NaN fill
    macd = indicators.OUTPUTS["MACD"](bars["1h"], resolve_params({"name": "MACD"}))
    expected = (macd["line"] - macd["signal"]).fillna(0.0)
    np.testing.assert_allclose(inputs["1h_macd_12_26_9.histogram_raw"], expected, atol=1e-7)
    memberships = inputs[["4h_stoch_d_low", "4h_stoch_d_high"]].to_numpy()
    assert memberships.min() >= 0 and memberships.max() <= 1


@pytest.mark.parametrize("name", sorted(indicators.OUTPUTS))
def test_multi_output_indicators_give_ktrdrs_outputs_primary_first(
    name: str, eurusd: pd.DataFrame
) -> None:
    params = resolve_params({"name": name})
    outputs = indicators.OUTPUTS[name](eurusd, params)
    assert tuple(outputs) == CATALOGUE[name].outputs
    primary = indicators.compute(name, eurusd, params)
    np.testing.assert_allclose(outputs[CATALOGUE[name].outputs[0]], primary, equal_nan=True)
    for series in outputs.values():
        assert np.isfinite(series.dropna()).all() and series.notna().sum() > len(eurusd) * 0.9


def test_fraction_split_cuts_at_whole_bars_as_ktrdr() -> None:
    split = fraction_split(4358, 0.7, 0.15)  # the spec's run: 3050 / 654 / 654
    assert (split.train.stop, split.validation.stop - split.validation.start) == (3050, 654)
    assert split.test.stop - split.test.start == 654


def test_what_only_a_ktrdr_backend_trains_fails_with_the_reason(tmp_path: Path) -> None:
    document = yaml.safe_load(HYBRID)
    document["training"]["labels"] = {"source": "triple_barrier"}
    document["model"]["type"] = "lstm"
    config = check_any_strategy(document)
    job = TrainingJob("hybrid", tmp_path, document, config, ("EURUSD",), ("1h", "4h"), None, None)
    with pytest.raises(
        TrainingFailed, match=r"labels\.source is triple_barrier; model\.type is lstm"
    ):
        input_plan(job)


def test_an_indicator_the_host_cannot_compute_fails_with_the_reason() -> None:
    document = yaml.safe_load(HYBRID)
    document["indicators"]["roc_10"] = {"type": "keltnerchannels"}
    config = check_any_strategy(document)
    with pytest.raises(TrainingFailed, match="cannot be trained by the reference host"):
        v3_features(config, ["1h", "4h"])


def test_a_multi_timeframe_strategy_trains_its_own_list_base_first(tmp_path: Path) -> None:
    document = yaml.safe_load(HYBRID)
    document["training_data"]["timeframes"] = {
        "mode": "multi_timeframe",
        "list": ["4h", "1h"],
        "base_timeframe": "1h",
    }
    config = check_any_strategy(document)
    job = TrainingJob("hybrid", tmp_path, document, config, ("EURUSD",), ("4h",), None, None)
    assert training_timeframes(job) == ["1h", "4h"]
