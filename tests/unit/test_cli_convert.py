"""`ktrdr strategy convert NAME --to v3` and `ktrdr strategy validate` on v3 files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ktrdr_tasks.cli.strategy import strategy
from ktrdr_tasks.settings import get_settings
from ktrdr_tasks.strategy_schema import load_strategy_file
from ktrdr_tasks.strategy_v3 import StrategyConfigV3, check_any_strategy, is_v3

STRATEGIES = Path(__file__).resolve().parents[2] / "strategies"
NAME = "eurusd_1h_stoch_cci_roc"


@pytest.fixture
def strategies_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "strategies"
    directory.mkdir()
    shutil.copy(STRATEGIES / f"{NAME}.yaml", directory)
    monkeypatch.setenv("KTRDR_STRATEGIES_DIR", str(directory))
    get_settings.cache_clear()
    yield directory
    get_settings.cache_clear()


def run(*args: str):
    return CliRunner().invoke(strategy, list(args))


def test_convert_migrates_in_place_and_keeps_the_v2_original(strategies_dir: Path) -> None:
    original = (strategies_dir / f"{NAME}.yaml").read_text()
    result = run("convert", NAME, "--to", "v3")
    assert result.exit_code == 0, result.output
    path = strategies_dir / f"{NAME}.yaml"
    document = load_strategy_file(path)
    assert is_v3(document)
    assert isinstance(check_any_strategy(document, stem=NAME), StrategyConfigV3)
    assert (strategies_dir / f"{NAME}.yaml.v2").read_text() == original
    assert "lookback_periods 2 dropped" in result.stderr
    assert f"{path} is v3 now" in result.stdout
    assert sorted(p.name for p in strategies_dir.iterdir()) == [f"{NAME}.yaml", f"{NAME}.yaml.v2"]
    assert run("validate", NAME).output.strip() == "valid"


def test_convert_to_stdout_changes_no_file(strategies_dir: Path) -> None:
    before = (strategies_dir / f"{NAME}.yaml").read_text()
    result = run("convert", NAME, "--to", "v3", "--stdout")
    assert result.exit_code == 0, result.output
    assert is_v3(yaml.safe_load(result.stdout))
    assert (strategies_dir / f"{NAME}.yaml").read_text() == before
    assert not (strategies_dir / f"{NAME}.yaml.v2").exists()


def test_converting_twice_is_refused_with_exit_2(strategies_dir: Path) -> None:
    assert run("convert", NAME, "--to", "v3").exit_code == 0
    again = run("convert", NAME, "--to", "v3")
    assert again.exit_code == 2
    assert "v3 strategy already" in again.stderr


def test_convert_needs_a_target_format(strategies_dir: Path) -> None:
    assert run("convert", NAME).exit_code == 2
    assert run("convert", NAME, "--to", "v4").exit_code == 2


def test_validate_checks_a_v3_file_with_ktrdrs_messages(strategies_dir: Path) -> None:
    document = load_strategy_file(STRATEGIES / "eurusd_1h_4h_v3_multi.yaml")
    document["name"] = "broken_v3"
    document["fuzzy_sets"]["macd_hist"]["indicator"] = "macd_12_26_9.nope"
    (strategies_dir / "broken_v3.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = run("validate", "broken_v3", "--json")
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload["valid"] is False
    assert payload["errors"] == [
        {
            "field": "fuzzy_sets.macd_hist.indicator",
            "message": "Invalid output 'nope' for macd indicator 'macd_12_26_9'. "
            "Valid outputs: line, signal, histogram",
        }
    ]


def test_validate_refuses_a_v3_file_named_unlike_its_name(strategies_dir: Path) -> None:
    shutil.copy(STRATEGIES / "eurusd_1h_4h_v3_multi.yaml", strategies_dir / "renamed.yaml")
    result = run("validate", "renamed")
    assert result.exit_code == 2
    assert "must equal the file name 'renamed'" in result.output
