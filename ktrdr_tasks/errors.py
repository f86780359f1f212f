"""The exception tree of ktrdr-tasks and the exit codes: decisions read the type, never text.

KtrdrTasksError
+-- ConfigurationError        settings that cannot work together (fail at start-up)
+-- StrategyError             bad strategy name, missing file, bad YAML, missing field
|   +-- StrategyValidationError   the document breaks the ktrdr strategy schema
|   |   +-- V3ParseError          not the shape ktrdr parses as v3 (STRATEGY-V3ParseFailed)
|   |   +-- V3ValidationError     a v3 reference that does not resolve (...V3ValidationFailed)
|   +-- StrategyExistsError       a design would overwrite an existing file
+-- DesignError               the designer could not produce a valid strategy
+-- TrainingApiError          the remote training service answered badly
|   +-- TransientApiError     connection refused, timeout, 5xx: retry
|   +-- PermanentApiError     4xx, malformed body: fail the cycle, say what to fix
|       +-- OperationNotFoundError   404 on an operation id: the host lost it
+-- OperationStateError       unknown operation id, or a transition from a final status
|   +-- CycleEnded            a step found its cycle ended (or moved on) elsewhere: stop quietly
+-- CycleOver                 a step task ends FAILURE: its cycle failed there or was cancelled
+-- StoreUnavailableError     Redis cannot be reached
+-- FollowTimeout             a followed cycle did not end in the time allowed
+-- StackError                a local process could not start, or a stack already runs here

In a step, the policy is the subtree: transient (retry within the error budget), `CycleEnded`
(stop without side effects), anything else (fail the cycle with the message).
The exit codes of every command are defined here too, with the one mapping from the tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


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

    error_code = "STRATEGY-ValidationFailed"  # ktrdr's code in its 400 answer

    def __init__(self, errors: list[FieldError], source: str = "strategy") -> None:
        self.errors = list(errors)
        self.source = source
        listed = "; ".join(str(error) for error in self.errors)
        super().__init__(f"{source} is invalid: {listed}")


class V3ParseError(StrategyValidationError):
    """The document does not parse as ktrdr's `StrategyConfigurationV3` (a missing section)."""

    error_code = "STRATEGY-V3ParseFailed"


class V3ValidationError(StrategyValidationError):
    """It parses as v3, but ktrdr's v3 validator refuses it (a reference that does not resolve)."""

    error_code = "STRATEGY-V3ValidationFailed"


class StrategyExistsError(StrategyError):
    """A strategy file with this name already exists; designs never overwrite one."""


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


class CycleEnded(OperationStateError):
    """The cycle ended (cancelled, failed) or moved on without this run: stop quietly."""


class CycleOver(KtrdrTasksError):
    """Ends a step's Celery task as FAILURE with its cycle's message (the cycle failed at this
    step, or was cancelled or failed elsewhere), so Flower shows the truth. Expected: the
    worker logs it as one line, without a traceback."""


class FollowTimeout(KtrdrTasksError):
    """The cycle did not end within the time the caller allowed."""


class StackError(KtrdrTasksError):
    """A local process could not be started, or a stack is already running here."""


class ExitCode(IntEnum):
    """Process exit codes scripts can rely on (README "Exit codes")."""

    OK = 0
    CYCLE_NOT_COMPLETED = 1
    """`--follow`: the cycle ended failed or cancelled; a refused trigger; demo: no verdict."""
    BAD_INPUT = 2
    """Bad usage or input: unknown strategy, invalid file, unknown operation id."""
    UNAVAILABLE = 3
    """A service is unreachable (Redis, the training API), or the demo stack did not start."""
    CONFIG = 4
    """Configuration error (e.g. Flower beyond loopback without credentials)."""
    INTERRUPTED = 130
    """Ctrl+C or SIGTERM."""


EXIT_OK = ExitCode.OK
EXIT_CYCLE_NOT_COMPLETED = ExitCode.CYCLE_NOT_COMPLETED
EXIT_BAD_INPUT = ExitCode.BAD_INPUT
EXIT_UNAVAILABLE = ExitCode.UNAVAILABLE
EXIT_CONFIG = ExitCode.CONFIG
EXIT_INTERRUPTED = ExitCode.INTERRUPTED


def exit_code_for(error: KtrdrTasksError) -> ExitCode:
    """The one mapping from the exception tree to process exit codes."""
    if isinstance(error, ConfigurationError):
        return ExitCode.CONFIG
    if isinstance(error, StoreUnavailableError | TransientApiError):
        return ExitCode.UNAVAILABLE
    return ExitCode.BAD_INPUT
