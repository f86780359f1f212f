"""Settings: names and aliases of DESIGN section 6, and combinations that cannot work."""

from __future__ import annotations

import pytest

from ktrdr_tasks.errors import EXIT_CONFIG, ConfigurationError
from ktrdr_tasks.settings import (
    MIN_POLL_INTERVAL_S,
    Settings,
    describe_validation_error,
    get_settings,
    settings_or_exit,
)


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


# -- one line naming the variable, for every bad value a person can type --------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_URL", "notaurl"),
        ("REDIS_URL", "http://localhost:6379/0"),
        ("REDIS_URL", "redis://localhost:notaport/0"),
        ("REDIS_URL", "redis://localhost:6379/zero"),
        ("KTRDR_VISIBILITY_TIMEOUT_S", "inf"),
        ("KTRDR_TRAINING_TIMEOUT_S", "nan"),
        ("KTRDR_GATE_MIN_ACCURACY", "nan"),
        ("KTRDR_LOG_FORMAT", "xml"),
        ("KTRDR_METRICS_PORT", "70000"),
        ("KTRDR_API_URL", "localhost:8000"),
    ],
)
def test_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    message = str(caught.value)
    assert message.startswith(f"invalid configuration: {variable}: ")
    assert "\n" not in message


def test_an_inf_visibility_timeout_never_reaches_celery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_VISIBILITY_TIMEOUT_S", "1e12")
    with pytest.raises(ConfigurationError, match=r"KTRDR_VISIBILITY_TIMEOUT_S: .*less than"):
        get_settings()


def test_poll_interval_zero_is_raised_to_the_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_POLL_INTERVAL_S", "0")
    assert Settings().poll_interval_s == MIN_POLL_INTERVAL_S == 0.1
    monkeypatch.setenv("KTRDR_POLL_INTERVAL_S", "-1")
    with pytest.raises(ConfigurationError, match="KTRDR_POLL_INTERVAL_S"):
        get_settings()


def test_a_check_across_variables_shows_no_empty_field_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KTRDR_POLL_INTERVAL_S", "45")
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    message = str(caught.value)
    assert ": :" not in message and "Value error" not in message
    assert message.startswith("invalid configuration: KTRDR_POLL_INTERVAL_S (45.0) must be")


def test_the_alias_a_person_set_is_the_name_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINING_GATE_MIN_ACCURACY", "lots")
    with pytest.raises(ConfigurationError, match=r"^invalid configuration: TRAINING_GATE_MIN"):
        get_settings()


def test_a_huge_value_is_echoed_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_LOG_FORMAT", "x" * 100_000)
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    assert len(str(caught.value)) < 300
    assert "100002 characters" in str(caught.value)


def test_a_bad_redis_url_is_echoed_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@redis:port/0")
    with pytest.raises(ConfigurationError) as caught:
        get_settings()
    assert "hunter2" not in str(caught.value)
    assert "redis://:***@redis:port/0" in str(caught.value)


def test_a_bad_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        Settings(anthropic_api_key=12345)  # type: ignore[arg-type]
    assert "12345" not in describe_validation_error(caught.value, Settings)


def test_good_redis_urls_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("redis://localhost", "rediss://u:p@h.example:6380/2", "redis://[::1]:6379/0"):
        monkeypatch.setenv("REDIS_URL", url)
        assert Settings().redis_url == url


def test_log_format_defaults_to_text_and_accepts_json(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().log_format == "text"
    monkeypatch.setenv("KTRDR_LOG_FORMAT", "JSON")
    assert Settings().log_format == "json"


def test_a_process_entry_point_exits_4_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "notaurl")
    with pytest.raises(SystemExit) as caught:
        settings_or_exit("celery")
    assert caught.value.code == EXIT_CONFIG == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("celery: invalid configuration: REDIS_URL: ")


def test_host_settings_errors_are_described_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from training_host.settings import HostSettings

    monkeypatch.setenv("KTRDR_HOST_PORT", "99999")
    with pytest.raises(ValidationError) as caught:
        HostSettings()
    assert describe_validation_error(caught.value, HostSettings).startswith(
        "KTRDR_HOST_PORT: Input should be less than or equal to 65535 (got '99999')"
    )


def test_the_api_url_shown_in_messages_hides_its_password() -> None:
    settings = Settings(api_url="https://ktrdr:s3cret@trainer:8000")
    assert settings.safe_api_url() == "https://ktrdr:***@trainer:8000"
