"""The host's one `HostSettings` object: environment first, command-line options on top.

Names follow the chain's settings where they share a meaning (`KTRDR_STRATEGIES_DIR`,
`KTRDR_MODELS_DIR`) so one `.env` configures both deployables on one machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ktrdr_tasks.settings import LogFormat, LogLevel


def _default_torch_threads() -> int:
    # Measured (bench training): one intra-op thread trains these small MLPs faster than two
    # (42.5k vs 37.6k samples/s on 2 cores), and leaves the other core to a second job.
    return 1


class HostSettings(BaseSettings):
    """Where the host reads strategies and bars, where it writes models, and how much it runs."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    host: str = Field("127.0.0.1", validation_alias=AliasChoices("KTRDR_HOST_BIND"))
    port: int = Field(8000, ge=0, le=65535, validation_alias=AliasChoices("KTRDR_HOST_PORT"))
    data_dir: Path | None = Field(None, validation_alias=AliasChoices("KTRDR_DATA_DIR"))
    models_dir: Path = Field(Path("models"), validation_alias=AliasChoices("KTRDR_MODELS_DIR"))
    strategies_dir: Path = Field(
        Path("strategies"), validation_alias=AliasChoices("KTRDR_STRATEGIES_DIR")
    )
    concurrency: int = Field(
        1, ge=1, le=64, validation_alias=AliasChoices("KTRDR_TRAINING_CONCURRENCY")
    )
    max_body_bytes: int = Field(
        1024 * 1024, ge=1, validation_alias=AliasChoices("KTRDR_HOST_MAX_BODY_BYTES")
    )
    # Server limits (training_host.server): a request must arrive whole within this time,
    # at most this many connections at once, idle keep-alive connections closed after this.
    request_timeout_s: float = Field(
        10.0, gt=0, le=3600, validation_alias=AliasChoices("KTRDR_HOST_REQUEST_TIMEOUT_S")
    )
    max_connections: int = Field(
        100, ge=1, validation_alias=AliasChoices("KTRDR_HOST_MAX_CONNECTIONS")
    )
    keep_alive_s: int = Field(
        5, ge=1, le=600, validation_alias=AliasChoices("KTRDR_HOST_KEEP_ALIVE_S")
    )
    torch_threads: int = Field(
        default_factory=_default_torch_threads,
        ge=1,
        validation_alias=AliasChoices("KTRDR_TORCH_THREADS"),
    )
    seed: int = Field(42, validation_alias=AliasChoices("KTRDR_TRAINING_SEED"))
    log_level: LogLevel = Field("INFO", validation_alias=AliasChoices("KTRDR_LOG_LEVEL"))
    log_format: LogFormat = Field("text", validation_alias=AliasChoices("KTRDR_LOG_FORMAT"))
    # `503`: refuse a start while every worker is busy, as today's ktrdr does (the client's
    # retry path then runs against this host too); `queue` (default): it waits as pending.
    busy: Literal["queue", "503"] = Field("queue", validation_alias=AliasChoices("KTRDR_HOST_BUSY"))
