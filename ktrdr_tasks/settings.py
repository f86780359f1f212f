"""One `Settings` read from the environment; every process (CLI, worker, beat) reads the same.

Names follow DESIGN section 6. A ktrdr deployment's own names (`TRAINING_GATE_MIN_ACCURACY`,
`AGENT_TRAINING_START_DATE`, ...) are accepted as aliases so an existing `.env` keeps working.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ktrdr_tasks.errors import EXIT_CONFIG, ConfigurationError

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Durations are bounded so that a typo (or `inf`) is refused here instead of overflowing in
# kombu or Redis later (an `inf` visibility timeout crashed the worker with OverflowError).
MAX_DURATION_S = 30 * 86400
# The rule for KTRDR_POLL_INTERVAL_S: anything below this (0 included) is raised to it. Zero
# made every waiting cycle poll 20 times a second; a tenth of a second is still faster than
# any training worth polling, and keeps tests and benchmarks that ask for "no wait" working.
MIN_POLL_INTERVAL_S = 0.1
# What an error line may echo of a bad value: a 100 kB value must not become a 100 kB line.
MAX_ECHO_CHARS = 80


def _log_level_name(value: object) -> str:
    level = str(value).strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return level


# One variable (KTRDR_LOG_LEVEL) sets the level of every process of a deployment, the
# training host included, so every settings class reads it through this type.
LogLevel = Annotated[str, BeforeValidator(_log_level_name)]
# Likewise KTRDR_LOG_FORMAT: `text` for people, `json` (one object per line) for collectors.
LogFormat = Annotated[
    Literal["text", "json"], BeforeValidator(lambda value: str(value).strip().lower())
]


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _redis_url(value: object) -> str:
    """A URL both kombu (the broker) and redis-py (the store) can use, checked at start-up.

    Without this a malformed REDIS_URL surfaced as a 40-line traceback from whichever library
    parsed it first, in the CLI, the worker or beat.
    """
    text = str(value).strip()
    expected = "expected redis://[[user]:password@]host[:port][/db] or rediss://..."
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{expected} ({exc})") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(expected)
    if port == 0:
        raise ValueError(f"{expected} (port 0)")
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ValueError(f"{expected} (the database is a number, got {database[:20]!r})")
    return text


RedisUrl = Annotated[str, BeforeValidator(_redis_url)]


def _http_url(value: object) -> str:
    text = str(value).strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise ValueError(f"expected http(s)://host[:port] ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http(s)://host[:port]")
    return text


HttpUrl = Annotated[str, BeforeValidator(_http_url)]


class Settings(BaseSettings):
    """Configuration of the chain, its workers and its CLI. The README's table documents each."""

    # `inf` and `nan` are never a useful setting here: refuse them with the variable's name.
    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", populate_by_name=True, allow_inf_nan=False
    )

    redis_url: RedisUrl = Field("redis://localhost:6379/0", validation_alias=_env("REDIS_URL"))
    api_url: HttpUrl = Field("http://localhost:8000", validation_alias=_env("KTRDR_API_URL"))
    api_timeout_s: float = Field(
        10.0, gt=0, le=MAX_DURATION_S, validation_alias=_env("KTRDR_API_TIMEOUT_S")
    )
    strategies_dir: Path = Field(Path("strategies"), validation_alias=_env("KTRDR_STRATEGIES_DIR"))
    models_dir: Path = Field(Path("models"), validation_alias=_env("KTRDR_MODELS_DIR"))

    poll_interval_s: float = Field(
        5.0,
        ge=0,
        le=MAX_DURATION_S,
        validation_alias=_env("KTRDR_POLL_INTERVAL_S"),
    )
    training_timeout_s: float = Field(
        1800.0, gt=0, le=MAX_DURATION_S, validation_alias=_env("KTRDR_TRAINING_TIMEOUT_S")
    )
    poll_max_errors: int = Field(10, ge=1, validation_alias=_env("KTRDR_POLL_MAX_ERRORS"))
    max_active_cycles: int = Field(1, ge=1, validation_alias=_env("KTRDR_MAX_ACTIVE_CYCLES"))
    retention_days: float = Field(
        30.0, gt=0, le=3650, validation_alias=_env("KTRDR_RETENTION_DAYS")
    )

    resume_after_s: float = Field(
        60.0, gt=0, le=MAX_DURATION_S, validation_alias=_env("KTRDR_RESUME_AFTER_S")
    )
    lost_after_s: float = Field(
        600.0, gt=0, le=MAX_DURATION_S, validation_alias=_env("KTRDR_LOST_AFTER_S")
    )
    visibility_timeout_s: float = Field(
        30.0, gt=0, le=MAX_DURATION_S, validation_alias=_env("KTRDR_VISIBILITY_TIMEOUT_S")
    )
    reconcile_interval_s: float = Field(
        15.0, gt=0, le=MAX_DURATION_S, validation_alias=_env("KTRDR_RECONCILE_INTERVAL_S")
    )

    training_start_date: str | None = Field(
        None, validation_alias=_env("KTRDR_TRAINING_START_DATE", "AGENT_TRAINING_START_DATE")
    )
    training_end_date: str | None = Field(
        None, validation_alias=_env("KTRDR_TRAINING_END_DATE", "AGENT_TRAINING_END_DATE")
    )

    gate_min_accuracy: float = Field(
        0.45, validation_alias=_env("KTRDR_GATE_MIN_ACCURACY", "TRAINING_GATE_MIN_ACCURACY")
    )
    gate_max_loss: float = Field(
        0.8, validation_alias=_env("KTRDR_GATE_MAX_LOSS", "TRAINING_GATE_MAX_LOSS")
    )
    gate_min_loss_decrease: float = Field(
        0.2,
        validation_alias=_env("KTRDR_GATE_MIN_LOSS_DECREASE", "TRAINING_GATE_MIN_LOSS_DECREASE"),
    )
    gate_min_win_rate: float = Field(
        0.45, validation_alias=_env("KTRDR_GATE_MIN_WIN_RATE", "BACKTEST_GATE_MIN_WIN_RATE")
    )
    gate_max_drawdown: float = Field(
        0.4, validation_alias=_env("KTRDR_GATE_MAX_DRAWDOWN", "BACKTEST_GATE_MAX_DRAWDOWN")
    )
    gate_min_sharpe: float = Field(
        -0.5, validation_alias=_env("KTRDR_GATE_MIN_SHARPE", "BACKTEST_GATE_MIN_SHARPE")
    )
    # Backtest phase: the out-of-sample window (default: right after the training window,
    # see ktrdr_tasks.backtest.backtest_window), the evidence floor and the baseline lift.
    backtest_start_date: str | None = Field(
        None, validation_alias=_env("KTRDR_BACKTEST_START_DATE", "AGENT_BACKTEST_START_DATE")
    )
    backtest_end_date: str | None = Field(
        None, validation_alias=_env("KTRDR_BACKTEST_END_DATE", "AGENT_BACKTEST_END_DATE")
    )
    backtest_timeout_s: float = Field(
        600.0, gt=0, validation_alias=_env("KTRDR_BACKTEST_TIMEOUT_S")
    )
    gate_min_trades: int = Field(
        1, ge=0, validation_alias=_env("KTRDR_GATE_MIN_TRADES", "BACKTEST_GATE_MIN_TRADES")
    )
    gate_min_lift: float | None = Field(
        None, validation_alias=_env("KTRDR_GATE_MIN_LIFT", "TRAINING_GATE_MIN_LIFT")
    )

    @field_validator("backtest_start_date", "backtest_end_date", mode="before")
    @classmethod
    def _backtest_date(cls, value: object) -> object:
        if value in (None, ""):
            return None
        if not _DATE.match(str(value)):
            raise ValueError(f"expected a date as YYYY-MM-DD, got {value!r}")
        return str(value)

    @field_validator("gate_min_lift", mode="before")
    @classmethod
    def _lift_blank_is_off(cls, value: object) -> object:
        return None if value in (None, "") else value

    designer: Literal["builtin", "anthropic"] = Field(
        "builtin", validation_alias=_env("KTRDR_DESIGNER")
    )
    # What the designers write: v3 for today's ktrdr (it refuses v2), v2 for a December 2025
    # backend. Everything reads both.
    strategy_format: Literal["v3", "v2"] = Field(
        "v3", validation_alias=_env("KTRDR_STRATEGY_FORMAT")
    )
    # Empty means "whatever the reference training host ships" (ktrdr_tasks.datasets).
    design_symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_env("KTRDR_DESIGN_SYMBOLS")
    )
    design_timeframes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_env("KTRDR_DESIGN_TIMEFRAMES")
    )
    anthropic_api_key: SecretStr | None = Field(None, validation_alias=_env("ANTHROPIC_API_KEY"))
    anthropic_base_url: str = Field(
        "https://api.anthropic.com", validation_alias=_env("ANTHROPIC_BASE_URL")
    )
    anthropic_model: str = Field(
        "claude-sonnet-4-5", validation_alias=_env("KTRDR_ANTHROPIC_MODEL")
    )
    anthropic_timeout_s: float = Field(
        120.0, gt=0, le=MAX_DURATION_S, validation_alias=_env("KTRDR_ANTHROPIC_TIMEOUT_S")
    )

    log_level: LogLevel = Field("INFO", validation_alias=_env("KTRDR_LOG_LEVEL"))
    log_format: LogFormat = Field("text", validation_alias=_env("KTRDR_LOG_FORMAT"))
    # The worker's Prometheus endpoint (0: none); its pool processes share one registry.
    metrics_port: int = Field(0, ge=0, le=65535, validation_alias=_env("KTRDR_METRICS_PORT"))
    metrics_bind: str = Field("127.0.0.1", validation_alias=_env("KTRDR_METRICS_BIND"))

    # TLS to Redis (a `rediss://` REDIS_URL): verify the server unless told otherwise.
    redis_ssl_cert_reqs: Literal["required", "optional", "none"] = Field(
        "required", validation_alias=_env("KTRDR_REDIS_SSL_CERT_REQS")
    )
    redis_ssl_ca_certs: str | None = Field(None, validation_alias=_env("KTRDR_REDIS_SSL_CA_CERTS"))

    @field_validator("design_symbols", "design_timeframes", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("poll_interval_s")
    @classmethod
    def _poll_floor(cls, value: float) -> float:
        return max(value, MIN_POLL_INTERVAL_S)

    @field_validator("training_start_date", "training_end_date", mode="before")
    @classmethod
    def _iso_date(cls, value: object) -> object:
        if value in (None, ""):
            return None
        text = str(value)
        if not _DATE.match(text):
            raise ValueError(f"expected a date as YYYY-MM-DD, got {text!r}")
        return text

    @model_validator(mode="after")
    def _poll_fits_visibility(self) -> Settings:
        # A countdown longer than the visibility timeout is redelivered while it still waits
        # in a worker: every poll would then run twice (DESIGN section 4).
        if self.poll_interval_s >= self.visibility_timeout_s:
            raise ValueError(
                f"KTRDR_POLL_INTERVAL_S ({self.poll_interval_s}) must be shorter than "
                f"KTRDR_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s})"
            )
        # A healthy poll writes the heartbeat once per interval: a shorter stale limit would
        # have the reconciler "resume" every healthy cycle on every pass.
        if self.resume_after_s <= 2 * self.poll_interval_s:
            raise ValueError(
                f"KTRDR_RESUME_AFTER_S ({self.resume_after_s}) must be more than twice "
                f"KTRDR_POLL_INTERVAL_S ({self.poll_interval_s})"
            )
        # The LLM design step runs up to two calls: a message held longer than the visibility
        # timeout is delivered a second time while the first run still designs.
        design_run_s = 2 * self.anthropic_timeout_s
        if self.designer == "anthropic" and self.visibility_timeout_s <= design_run_s:
            raise ValueError(
                f"KTRDR_DESIGNER=anthropic can take {design_run_s:.0f} s per design "
                f"(2 x KTRDR_ANTHROPIC_TIMEOUT_S): set KTRDR_VISIBILITY_TIMEOUT_S above it "
                f"(now {self.visibility_timeout_s:.0f}) or lower KTRDR_ANTHROPIC_TIMEOUT_S"
            )
        return self

    def redis_ssl_options(self) -> dict[str, object] | None:
        """TLS options for kombu (`broker_use_ssl`) and redis-py; None for a `redis://` URL.

        Without them kombu connects to a `rediss://` broker with CERT_NONE (no verification).
        """
        if not self.redis_url.startswith("rediss://"):
            return None
        import ssl

        options: dict[str, object] = {
            "ssl_cert_reqs": {
                "required": ssl.CERT_REQUIRED,
                "optional": ssl.CERT_OPTIONAL,
                "none": ssl.CERT_NONE,
            }[self.redis_ssl_cert_reqs]
        }
        if self.redis_ssl_ca_certs:
            options["ssl_ca_certs"] = self.redis_ssl_ca_certs
        return options

    def safe_redis_url(self) -> str:
        """The Redis URL with any password masked, for logs and messages."""
        return _mask_credentials(self.redis_url)

    def safe_api_url(self) -> str:
        """The training API's URL with any password masked, for logs and messages."""
        return _mask_credentials(self.api_url)


def _field_names(model: type[BaseSettings], location: str) -> tuple[str | None, list[str]]:
    """The field an error location means (a field or one of its variables) and its variables."""
    for field, info in model.model_fields.items():
        alias = info.validation_alias
        names = (
            [n for n in alias.choices if isinstance(n, str)]
            if isinstance(alias, AliasChoices)
            else []
        )
        if location == field or location in names:
            return field, names
    return None, []


def _variable_name(model: type[BaseSettings], location: str) -> str:
    """The environment variable a person set (or would set), e.g. REDIS_URL."""
    _, names = _field_names(model, location)
    for name in names:
        if name in os.environ:
            return name
    return names[0] if names else location


def _mask_credentials(text: str) -> str:
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", text)


def _echo(value: object) -> str:
    """A bad value as an error line may show it: bounded, and never a URL's password."""
    text = _mask_credentials(repr(value))
    if len(text) <= MAX_ECHO_CHARS:
        return text
    return f"{text[:MAX_ECHO_CHARS]}... ({len(text)} characters)"


def describe_validation_error(exc: ValidationError, model: type[BaseSettings]) -> str:
    """One line naming each bad variable and, bounded, the value it was given.

    Model-wide checks have no field of their own; their message names the variables, so it
    is shown without a (formerly empty) name in front.
    """
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            location = str(error["loc"][0])
            name = _variable_name(model, location)
            field, _ = _field_names(model, location)
            info = model.model_fields.get(field or "")
            secret = info is not None and "Secret" in str(info.annotation)
            given = error.get("input")
            shown = "" if secret or isinstance(given, dict) else f" (got {_echo(given)})"
            problems.append(f"{name}: {message}{shown}")
        else:
            problems.append(message)
    return " ".join("; ".join(problems).split())


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once; tests call `get_settings.cache_clear()`."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = describe_validation_error(exc, Settings)
        raise ConfigurationError(f"invalid configuration: {problems}") from exc


def settings_or_exit(process: str) -> Settings:
    """The settings for a process entry point (worker, beat): bad ones end it in one line.

    A traceback of 90 lines from deep inside Celery's start-up hid the one line that said
    which variable was wrong; this prints that line and exits with the configuration code.
    """
    try:
        return get_settings()
    except ConfigurationError as exc:
        print(f"{process}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CONFIG) from None
