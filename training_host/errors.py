"""Why a training job stops early; the job runner maps each type to a final status.

HostError
+-- TrainingFailed        the job cannot produce a model; the message says what to fix
|   +-- NoDataError       no bars for the symbol, timeframe or date range asked for
+-- TrainingCancelled     a cancel arrived; the job stops and writes nothing
"""

from __future__ import annotations


class HostError(Exception):
    """Base of every error the host raises on purpose."""


class TrainingFailed(HostError):
    """The job ends `failed`; `str(error)` becomes the operation's `error_message`."""


class NoDataError(TrainingFailed):
    """No bars match the request; the message names the data that does exist."""


class TrainingCancelled(HostError):
    """The operation was cancelled; nothing may be written after this is raised."""
