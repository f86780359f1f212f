"""The exception tree of ktrdr-tasks: retry and exit-code decisions read the type, never text.

KtrdrTasksError
+-- ConfigurationError        settings that cannot work together (fail at start-up)
+-- StrategyError             bad strategy name, missing file, bad YAML, missing field
|   +-- StrategyValidationError   the document breaks the ktrdr strategy schema
+-- DesignError               the designer could not produce a valid strategy
+-- TrainingApiError          the remote training service answered badly
|   +-- TransientApiError     connection refused, timeout, 5xx: retry
|   +-- PermanentApiError     4xx, malformed body: fail the cycle, say what to fix
|       +-- OperationNotFoundError   404 on an operation id: the host lost it
+-- OperationStateError       unknown operation id, or a transition from a final status
+-- StoreUnavailableError     Redis cannot be reached
"""

from __future__ import annotations

from dataclasses import dataclass


class KtrdrTasksError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigurationError(KtrdrTasksError):
    """Settings that cannot work together; raised when they are read."""


class StrategyError(KtrdrTasksError):
    """A strategy cannot be used: bad name, missing file, unreadable YAML or a missing field."""


@dataclass(frozen=True)
class FieldError:
    """One schema violation: `field` is a dotted path such as `indicators.0.feature_id`."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class StrategyValidationError(StrategyError):
    """The document breaks the ktrdr strategy format; `errors` names every bad field."""

    def __init__(self, errors: list[FieldError], source: str = "strategy") -> None:
        self.errors = list(errors)
        self.source = source
        listed = "; ".join(str(error) for error in self.errors)
        super().__init__(f"{source} is invalid: {listed}")


class DesignError(KtrdrTasksError):
    """The design phase could not produce a strategy (designer failure, LLM error, timeout)."""


class TrainingApiError(KtrdrTasksError):
    """The training service could not do what was asked."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class TransientApiError(TrainingApiError):
    """Worth retrying: the service was unreachable, slow or answered 5xx."""


class PermanentApiError(TrainingApiError):
    """Not worth retrying: the request or the answer is wrong and will stay wrong."""


class OperationNotFoundError(PermanentApiError):
    """The training service does not know the operation id (it may have restarted)."""


class OperationStateError(KtrdrTasksError):
    """The operation does not exist, or it already ended and cannot change."""


class StoreUnavailableError(KtrdrTasksError):
    """Redis cannot be reached at the configured URL."""
