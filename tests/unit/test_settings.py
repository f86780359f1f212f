"""Settings: names and aliases of DESIGN section 6, and combinations that cannot work."""

from __future__ import annotations

import pytest

from ktrdr_tasks.errors import ConfigurationError
from ktrdr_tasks.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults_work_on_a_laptop(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.poll_interval_s == 5
    assert settings.max_active_cycles == 1
    assert settings.gate_min_accuracy == 0.45


def test_ktrdr_deployment_names_are_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINING_GATE_MIN_ACCURACY", "0.1")
    monkeypatch.setenv("BACKTEST_GATE_MIN_WIN_RATE", "0.3")
    monkeypatch.setenv("AGENT_TRAINING_START_DATE", "2017-05-01")
    settings = Settings()
    assert settings.gate_min_accuracy == 0.1
    assert settings.gate_min_win_rate == 0.3
    assert settings.training_start_date == "2017-05-01"


def test_poll_interval_accepts_fractions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_POLL_INTERVAL_S", "0.5")
    assert Settings().poll_interval_s == 0.5


def test_comma_separated_design_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_DESIGN_SYMBOLS", "EURUSD, GOOG")
    assert Settings().design_symbols == ["EURUSD", "GOOG"]


def test_poll_interval_must_be_below_the_visibility_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KTRDR_POLL_INTERVAL_S", "45")
    with pytest.raises(ConfigurationError, match="KTRDR_VISIBILITY_TIMEOUT_S"):
        get_settings()


def test_llm_designer_needs_a_visibility_timeout_longer_than_a_design(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KTRDR_DESIGNER", "anthropic")
    with pytest.raises(ConfigurationError, match="KTRDR_VISIBILITY_TIMEOUT_S above it"):
        get_settings()
    monkeypatch.setenv("KTRDR_VISIBILITY_TIMEOUT_S", "300")
    assert get_settings().designer == "anthropic"


def test_stale_limit_must_leave_room_for_healthy_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_POLL_INTERVAL_S", "20")
    monkeypatch.setenv("KTRDR_RESUME_AFTER_S", "30")
    with pytest.raises(ConfigurationError, match="KTRDR_RESUME_AFTER_S"):
        get_settings()


def test_log_level_is_checked_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_LOG_LEVEL", "debug")
    assert Settings().log_level == "DEBUG"
    monkeypatch.setenv("KTRDR_LOG_LEVEL", "chatty")
    with pytest.raises(ConfigurationError, match="KTRDR_LOG_LEVEL"):
        get_settings()


def test_training_host_reads_the_same_log_level_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from training_host.settings import HostSettings

    monkeypatch.setenv("KTRDR_LOG_LEVEL", "warning")
    assert HostSettings().log_level == "WARNING"
    monkeypatch.setenv("KTRDR_LOG_LEVEL", "trace")
    with pytest.raises(ValidationError, match="DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        HostSettings()


def test_api_key_never_shows_in_a_printed_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-do-not-print")
    settings = Settings()
    assert "sk-ant-do-not-print" not in repr(settings)
    assert "sk-ant-do-not-print" not in settings.model_dump_json()
    assert settings.anthropic_api_key.get_secret_value() == "sk-ant-do-not-print"


def test_bad_date_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_TRAINING_END_DATE", "next year")
    with pytest.raises(ConfigurationError, match="YYYY-MM-DD"):
        get_settings()


def test_masked_redis_url_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://user:s3cret@redis:6379/0")
    assert Settings().safe_redis_url() == "redis://user:***@redis:6379/0"
