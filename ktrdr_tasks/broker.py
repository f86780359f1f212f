"""kombu's Redis transport, fixed so a worker survives a Redis restart.

The fault (Celery 5.7 with kombu 5.x; `Unrecoverable error: AttributeError: 'NoneType' object
has no attribute 'hostname'`, the worker exits): when the broker connection drops, the
consumer calls `connection.collect()` and then `connection.close()`. `collect()` closes the
default channel, but that close stops at the first Redis error (the server is gone) before
the channel is marked closed, and then `collect()` detaches the transport from the connection
(`transport.client = None`). The second close runs the channel's close again, which restores
the unacked messages (every countdown poll is one) through a new connection pool built from
`transport.client.hostname`: `None.hostname`. An AttributeError is not one of the connection
errors that `close()` ignores, so it reaches the worker's blueprint and ends the process.

The fix (`install()`, run when the Celery app is configured): a channel whose transport is
detached has no connection to build, which is a connection error, and close() ignores those.
The messages stay in Redis's unacked set (kept by the AOF) and come back through the
visibility-timeout sweep once the broker is back, as after any lost connection. It changes
nothing else: the wrapped method only raises where the original raised AttributeError, so
URLs (`redis://` in logs and Flower), options and every other path stay kombu's own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kombu_redis

_PATCHED = "_ktrdr_detached_check"


def _refuse_when_detached(connparams: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(connparams)
    def checked(self: kombu_redis.Channel, *args: Any, **kwargs: Any) -> Any:
        if self.connection.client is None:
            # A builtin ConnectionError is an OSError: among the transport's connection errors.
            raise ConnectionError(
                "broker connection already closed; unacked messages stay in Redis until the "
                "visibility timeout restores them"
            )
        return connparams(self, *args, **kwargs)

    setattr(checked, _PATCHED, True)
    return checked


def install() -> None:
    """Apply the fix to kombu's Redis channel; idempotent."""
    current = kombu_redis.Channel._connparams
    if not getattr(current, _PATCHED, False):
        kombu_redis.Channel._connparams = _refuse_when_detached(current)  # type: ignore[method-assign]
