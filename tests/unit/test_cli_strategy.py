"""`ktrdr strategy design|validate`: output, JSON shapes and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ktrdr_tasks.cli import main
from ktrdr_tasks.cli.strategy import strategy
from ktrdr_tasks.settings import get_settings

STRATEGIES = Path(__file__).resolve().parents[2] / "strategies"


@pytest.fixture
def strategies_dir(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "strategies"
    monkeypatch.setenv("KTRDR_STRATEGIES_DIR", str(directory))
    monkeypatch.setenv("KTRDR_DESIGNER", "builtin")
    # No Redis in unit tests: design without cycle history.
    monkeypatch.setattr("ktrdr_tasks.cli.strategy.history_provider", list)
    get_settings.cache_clear()
    yield directory
    get_settings.cache_clear()


def run(*args: str):
    return CliRunner().invoke(strategy, list(args))


def test_design_json_prints_one_object_and_saves_the_file(strategies_dir):
    result = run("design", "--seed", "4", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {
        "name",
        "path",
        "fingerprint",
        "hypothesis",
        "designer",
        "seed",
        "candidate",
        "skipped",
    }
    assert payload["designer"] == "builtin"
    assert Path(payload["path"]) == strategies_dir / f"{payload['name']}.yaml"
    assert Path(payload["path"]).exists()


def test_design_prints_name_and_path(strategies_dir):
    result = run("design", "--seed", "4")
    assert result.exit_code == 0, result.output
    (saved,) = strategies_dir.glob("*.yaml")
    assert saved.stem in result.output and str(saved) in result.output


def test_validate_a_valid_path(strategies_dir):
    result = run("validate", str(STRATEGIES / "eurusd_1h_rsi_macd_adx.yaml"))
    assert result.exit_code == 0
    assert result.output.strip() == "valid"


def test_validate_by_name_in_the_strategies_directory(strategies_dir):
    designed = json.loads(run("design", "--seed", "9", "--json").stdout)
    result = run("validate", designed["name"], "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"valid": True, "errors": [], "name": designed["name"]}


def test_validate_an_invalid_file_lists_each_field_and_exits_2(strategies_dir, tmp_path):
    document = yaml.safe_load((STRATEGIES / "eurusd_1h_rsi_macd_adx.yaml").read_text())
    document["fuzzy_sets"]["rsi_14"]["mid"]["type"] = "triangle"
    del document["scope"]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(document))
    result = run("validate", str(path))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert any(line.startswith("scope: Missing required field: scope") for line in lines)


def test_validate_json_for_trainer_only_errors(strategies_dir, tmp_path):
    document = yaml.safe_load((STRATEGIES / "eurusd_1h_rsi_macd_adx.yaml").read_text())
    document["fuzzy_sets"]["rsi_14"]["mid"]["type"] = "triangle"
    path = tmp_path / "triangle.yaml"
    path.write_text(yaml.safe_dump(document))
    result = run("validate", str(path), "--json")
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload["valid"] is False
    assert payload["name"] == "eurusd_1h_rsi_macd_adx"
    assert [e["field"] for e in payload["errors"]] == ["fuzzy_sets.rsi_14.mid"]


def test_validate_unknown_name_exits_2_with_a_message(strategies_dir):
    result = run("validate", "no_such_strategy")
    assert result.exit_code == 2
    assert "not found" in result.output


def test_validate_refuses_a_name_that_is_not_a_name(strategies_dir):
    result = run("validate", "bad name!", "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["valid"] is False


def test_validate_bad_yaml_exits_2(strategies_dir, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [oops\n")
    result = run("validate", str(path))
    assert result.exit_code == 2
    assert "not valid YAML" in result.output


def test_design_json_says_which_candidate_of_the_seed_was_chosen_and_why(strategies_dir):
    first = json.loads(run("design", "--seed", "7", "--json").stdout)
    assert (first["seed"], first["candidate"], first["skipped"]) == (7, 1, [])
    second = json.loads(run("design", "--seed", "7", "--json").stdout)
    assert (second["seed"], second["candidate"]) == (7, 2)
    assert second["skipped"] == [{"candidate": 1, "name": first["name"], "reason": "known_design"}]


def test_design_text_names_the_seed_and_candidate(strategies_dir):
    run("design", "--seed", "7")
    result = run("design", "--seed", "7")
    assert "seed 7, candidate 2 of its sequence (1 skipped: 1 already designed)" in result.output


def test_design_beside_a_hostile_file_designs_and_never_prints_a_traceback(strategies_dir, capsys):
    strategies_dir.mkdir(parents=True)
    (strategies_dir / "deep.yaml").write_text("a: " + "[" * 600 + "]" * 600 + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["strategy", "design", "--seed", "7", "--json"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0
    assert json.loads(captured.out)["candidate"] == 1
    assert "Traceback" not in captured.err


def test_validate_of_a_deep_file_via_the_entry_point_is_one_line(strategies_dir, tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 600 + "]" * 600 + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["strategy", "validate", str(path)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert captured.out.strip() == f"strategy file {path} nests deeper than 50 levels " + (
        "(limit for strategy files; line 1)"
    )
    assert "Traceback" not in captured.err
