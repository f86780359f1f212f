"""The built-in designer: valid, varied, reproducible designs that never repeat or overwrite."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from ktrdr_tasks.catalogue import find_indicator
from ktrdr_tasks.datasets import REFERENCE_DATASETS, available_datasets
from ktrdr_tasks.design import (
    SkippedCandidate,
    design_fingerprint,
    design_strategy,
    summarize_design,
)
from ktrdr_tasks.design.builtin import compose, place_sets
from ktrdr_tasks.design.storage import StrategyExistsError, save_strategy
from ktrdr_tasks.errors import StrategyError
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.strategy_schema import STRATEGY_NAME, check_strategy, load_strategy_file

DATASETS = list(REFERENCE_DATASETS)


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    # These tests read the v2 shape; test_strategy_v3.py covers the v3 designs.
    options: dict[str, object] = {"strategy_format": "v2", **overrides}
    return Settings(strategies_dir=tmp_path / "strategies", **options)  # type: ignore[arg-type]


def membership(mf_type: str, params: list[float], x: float) -> float:
    """Reference membership functions, as ktrdr's trainer evaluates them."""
    if mf_type == "gaussian":
        mean, sigma = params
        return pow(2.718281828, -((x - mean) ** 2) / (2 * sigma**2))
    if mf_type == "triangular":
        a, b, c = params
        params = [a, b, b, c]
    a, b, c, d = params
    if b <= x <= c:
        return 1.0
    if a < x < b:
        return (x - a) / (b - a)
    if c < x < d:
        return (d - x) / (d - c)
    return 0.0


@pytest.fixture(scope="module")
def thousand_designs() -> list[dict]:
    return [compose(random.Random(seed), DATASETS).config for seed in range(1000)]


def test_a_thousand_designs_all_pass_the_trainer_rules(thousand_designs):
    for config in thousand_designs:
        check_strategy(config, config["name"])


def test_a_thousand_designs_have_distinct_fingerprints(thousand_designs):
    fingerprints = {design_fingerprint(config) for config in thousand_designs}
    assert len(fingerprints) == len(thousand_designs)


def test_designs_use_only_trainable_scale_free_indicators_from_distinct_families(
    thousand_designs,
):
    for config in thousand_designs:
        specs = [find_indicator(item["name"]) for item in config["indicators"]]
        assert all(spec is not None and spec.trainable for spec in specs)
        assert all(spec.scale not in ("price_level", "cumulative") for spec in specs)
        assert 2 <= len(specs) <= 4
        assert len({spec.family for spec in specs}) == len(specs)


def test_no_fuzzy_set_leaves_its_indicators_output_range(thousand_designs):
    for config in thousand_designs:
        for item in config["indicators"]:
            low, high = find_indicator(item["name"]).output_range
            for fuzzy_set in config["fuzzy_sets"][item["feature_id"]].values():
                points = fuzzy_set["parameters"]
                if fuzzy_set["type"] == "gaussian":
                    points = points[:1]
                assert low is None or min(points) >= low, (config["name"], fuzzy_set)
                assert high is None or max(points) <= high, (config["name"], fuzzy_set)


def test_every_value_including_warm_up_zero_has_a_membership(thousand_designs):
    for config in thousand_designs[:200]:
        for item in config["indicators"]:
            sets = list(config["fuzzy_sets"][item["feature_id"]].values())
            assert 2 <= len(sets) <= 5
            probes = [0.0] + [p for s in sets for p in s["parameters"]]
            for x in probes:
                degree = max(membership(s["type"], s["parameters"], x) for s in sets)
                assert degree > 0.0, (config["name"], item["feature_id"], x)


def test_names_follow_ktrdrs_rule_and_the_theme_indicators_hash_pattern(thousand_designs):
    for config in thousand_designs:
        assert STRATEGY_NAME.match(config["name"])
        assert len(config["name"]) <= 100
        assert config["name"].endswith(design_fingerprint(config)[:6])


def test_designs_train_in_seconds_and_split_explicitly(thousand_designs):
    for config in thousand_designs:
        assert config["model"]["training"]["epochs"] <= 20
        split = config["training"]["data_split"]
        assert {"test_size", "validation_size"} <= set(split)


def test_zigzag_threshold_suits_the_timeframe(thousand_designs):
    for config in thousand_designs:
        timeframe = config["training_data"]["timeframes"]["timeframe"]
        symbol = config["training_data"]["symbols"]["symbol"]
        threshold = config["training"]["labels"]["zigzag_threshold"]
        if symbol == "EURUSD" and timeframe == "1h":
            assert 0.003 <= threshold <= 0.01
        elif symbol == "EURUSD" and timeframe == "1d":
            assert 0.02 <= threshold <= 0.05
        elif symbol == "EURUSD":
            assert 0.005 <= threshold <= 0.02
        else:  # GOOG daily moves ~2 %: a larger threshold than FX daily
            assert 0.05 <= threshold <= 0.12


def test_dates_lie_inside_the_dataset(thousand_designs):
    for config in thousand_designs:
        data = config["training_data"]
        dataset = next(
            d
            for d in DATASETS
            if d.symbol == data["symbols"]["symbol"]
            and d.timeframe == data["timeframes"]["timeframe"]
        )
        assert dataset.start_date <= data["start_date"] <= data["end_date"] <= dataset.end_date


def test_place_sets_covers_a_bounded_range_with_overlap():
    sets = place_sets(31, 74, (0, 100), 3)
    assert sets["low"]["parameters"][0] == 0
    assert sets["high"]["parameters"][-1] == 100
    for x in range(0, 101):
        assert max(membership(s["type"], s["parameters"], x) for s in sets.values()) > 0


def test_same_seed_gives_the_same_design(tmp_path):
    first = design_strategy(settings_for(tmp_path / "a"), [], seed=42)
    second = design_strategy(settings_for(tmp_path / "b"), [], seed=42)
    assert first.config == second.config
    assert first.path.read_text() == second.path.read_text()


def test_same_seed_gives_the_same_design_beside_other_strategies(tmp_path):
    crowded = settings_for(tmp_path / "crowded")
    crowded.strategies_dir.mkdir(parents=True)
    for example in Path(__file__).resolve().parents[2].joinpath("strategies").glob("*.yaml"):
        (crowded.strategies_dir / example.name).write_text(example.read_text())
    alone = design_strategy(settings_for(tmp_path / "alone"), [], seed=7)
    beside = design_strategy(crowded, [], seed=7)
    assert beside.config == alone.config
    assert (beside.seed, beside.candidate, beside.skipped) == (7, 1, ())


def test_a_seed_whose_candidate_exists_says_which_it_chose_and_why(tmp_path):
    settings = settings_for(tmp_path)
    first = design_strategy(settings, [], seed=7)
    second = design_strategy(settings, [], seed=7)
    assert (second.seed, second.candidate) == (7, 2)
    assert second.skipped == (SkippedCandidate(1, first.name, "known_design"),)
    # The choice is reproducible: candidate 2 of seed 7 is the same design anywhere.
    elsewhere = settings_for(tmp_path / "elsewhere")
    history = [{"fingerprint": first.fingerprint}]
    assert design_strategy(elsewhere, history, seed=7).config == second.config


def test_a_drawn_seed_is_reported_and_reproduces_the_design(tmp_path):
    drawn = design_strategy(settings_for(tmp_path / "a"), [])
    assert isinstance(drawn.seed, int) and drawn.candidate == 1
    assert design_strategy(settings_for(tmp_path / "b"), [], seed=drawn.seed).config == drawn.config


def test_different_seeds_give_different_designs(tmp_path):
    settings = settings_for(tmp_path)
    fingerprints = {design_strategy(settings, [], seed=seed).fingerprint for seed in range(5)}
    assert len(fingerprints) == 5


def test_a_fingerprint_in_history_is_not_designed_again(tmp_path):
    previous = design_strategy(settings_for(tmp_path / "a"), [], seed=7)
    history = [{"strategy_name": previous.name, "fingerprint": previous.fingerprint}]
    again = design_strategy(settings_for(tmp_path / "b"), history, seed=7)
    assert again.fingerprint != previous.fingerprint


def test_an_existing_file_is_never_overwritten_and_not_reproduced(tmp_path):
    settings = settings_for(tmp_path)
    first = design_strategy(settings, [], seed=11)
    before = first.path.read_text()
    second = design_strategy(settings, [], seed=11)
    assert second.path != first.path
    assert second.fingerprint != first.fingerprint
    assert first.path.read_text() == before


def test_saved_file_is_the_validated_design_with_a_quoted_version(tmp_path):
    result = design_strategy(settings_for(tmp_path), [], seed=3)
    assert result.path == tmp_path / "strategies" / f"{result.name}.yaml"
    assert "version: '1.0'" in result.path.read_text()
    document = load_strategy_file(result.path)
    assert document == result.config
    assert check_strategy(document).name == result.path.stem
    assert result.hypothesis == document["description"]
    assert result.designer == "builtin"


def test_progress_goes_from_0_to_30_with_readable_steps(tmp_path):
    steps: list[tuple[float, str]] = []
    design_strategy(
        settings_for(tmp_path),
        [{"fingerprint": "x"}] * 12,
        seed=5,
        on_progress=lambda p, s: steps.append((p, s)),
    )
    percentages = [p for p, _ in steps]
    assert percentages[0] == 0 and percentages[-1] == 30
    assert percentages == sorted(percentages)
    texts = " | ".join(s for _, s in steps)
    assert "Reading 12 past designs" in texts
    assert "Choosing indicators: " in texts
    assert "Validating" in texts
    assert steps[-1][1].startswith("Saved ")


def test_design_filters_follow_the_settings(tmp_path):
    settings = settings_for(tmp_path, design_symbols=["GOOG"], design_timeframes=[])
    for seed in range(5):
        result = design_strategy(settings, [], seed=seed)
        assert summarize_design(result.config)["symbols"] == ["GOOG"]


def test_a_user_dataset_gets_the_settings_dates(tmp_path):
    settings = settings_for(
        tmp_path,
        design_symbols=["GBPUSD"],
        design_timeframes=["1h"],
        training_start_date="2020-01-01",
        training_end_date="2021-06-30",
    )
    config = design_strategy(settings, [], seed=1).config
    assert config["training_data"]["symbols"]["symbol"] == "GBPUSD"
    assert (config["training_data"]["start_date"], config["training_data"]["end_date"]) == (
        "2020-01-01",
        "2021-06-30",
    )
    units = {find_indicator(i["name"]).scale for i in config["indicators"]}
    assert "price_units" not in units  # no price level known for an unknown symbol


def test_available_datasets_filters_and_trusts_unknown_names():
    assert available_datasets([], []) == DATASETS
    assert [d.timeframe for d in available_datasets(["EURUSD"], [])] == ["1h", "4h", "1d"]
    assert [d.symbol for d in available_datasets([], ["1d"])] == ["EURUSD", "GOOG"]
    (user,) = available_datasets(["GBPUSD"], ["15m"], "2020-01-01", None)
    assert (user.symbol, user.timeframe, user.start_date, user.reference) == (
        "GBPUSD",
        "15m",
        "2020-01-01",
        False,
    )


def test_fingerprint_ignores_name_and_prose_but_not_parameters():
    config = compose(random.Random(1), DATASETS).config
    renamed = {**config, "name": "other", "description": "another sentence"}
    assert design_fingerprint(renamed) == design_fingerprint(config)
    changed = yaml.safe_load(yaml.safe_dump(config))
    changed["training"]["labels"]["zigzag_threshold"] = 0.0123
    assert design_fingerprint(changed) != design_fingerprint(config)


def test_summarize_design_for_the_history_record():
    config = compose(random.Random(2), DATASETS).config
    summary = summarize_design(config)
    assert summary["fingerprint"] == design_fingerprint(config)
    assert summary["indicators"] and all(find_indicator(n) for n in summary["indicators"])
    assert summary["symbols"] == [config["training_data"]["symbols"]["symbol"]]
    assert summary["timeframes"] == [config["training_data"]["timeframes"]["timeframe"]]


def test_save_strategy_refuses_to_overwrite(tmp_path):
    config = compose(random.Random(3), DATASETS).config
    path = save_strategy(tmp_path / "new_dir", config)
    path.write_text("sentinel")
    with pytest.raises(StrategyExistsError):
        save_strategy(tmp_path / "new_dir", config)
    assert path.read_text() == "sentinel"
    assert [p.name for p in (tmp_path / "new_dir").iterdir()] == [path.name]  # no temp left


def test_save_strategy_refuses_path_like_names(tmp_path):
    with pytest.raises(StrategyError):
        save_strategy(tmp_path, {"name": "../escape"})


def test_configured_dates_stay_inside_each_reference_dataset() -> None:
    import random

    from ktrdr_tasks.datasets import REFERENCE_DATASETS
    from ktrdr_tasks.design.builtin import compose

    goog = [d for d in REFERENCE_DATASETS if d.symbol == "GOOG"]
    eurusd = [d for d in REFERENCE_DATASETS if d.symbol == "EURUSD" and d.timeframe == "1h"]
    goog_design = compose(random.Random(1), goog, "2017-05-01", "2018-02-01")
    eurusd_design = compose(random.Random(1), eurusd, "2017-05-01", "2018-02-01")

    goog_data = goog_design.config["training_data"]
    assert (goog_data["start_date"], goog_data["end_date"]) == ("2004-08-19", "2011-12-31")
    eurusd_data = eurusd_design.config["training_data"]
    assert (eurusd_data["start_date"], eurusd_data["end_date"]) == ("2017-05-01", "2018-02-01")
