"""The host's HTTP server: uvicorn with limits a slow or hostile client cannot outlast.

uvicorn bounds the idle time between requests (`timeout_keep_alive`) but not the time a
client takes to send one: a socket that never finishes its headers or its body is held
forever, and a few hundred of them (slowloris) pin the event loop's connections. So:

- every request's head and body must arrive within `KTRDR_HOST_REQUEST_TIMEOUT_S` of its
  first byte (or of the connection, for a client that sends nothing); past that the host
  answers 408 when no response has started, and closes the connection either way;
- at most `KTRDR_HOST_MAX_CONNECTIONS` connections are served at once (`limit_concurrency`:
  beyond it requests get 503, which the chain retries like any transient error);
- an idle keep-alive connection is closed after `KTRDR_HOST_KEEP_ALIVE_S`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from training_host.settings import HostSettings

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\n"
    b"content-length: 44\r\n\r\n"
    b"request not received in time; send it whole"
)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on reading each request."""

    request_timeout_s = 10.0  # set per server by `protocol_for`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._arm_read_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            self._cancel_read_deadline()
        elif self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            # A request is on its way (keep-alive's idle timer was just cancelled).
            if self._read_deadline is None:
                self._arm_read_deadline()
        else:
            self._cancel_read_deadline()  # the whole request is in

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_deadline()
        super().connection_lost(exc)

    def _arm_read_deadline(self) -> None:
        self._read_deadline = self.loop.call_later(self.request_timeout_s, self._read_timed_out)

    def _cancel_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def protocol_for(settings: HostSettings) -> type[BoundedH11Protocol]:
    """A protocol class carrying this server's request timeout."""
    return type(
        "HostH11Protocol", (BoundedH11Protocol,), {"request_timeout_s": settings.request_timeout_s}
    )


def server_options(settings: HostSettings) -> dict[str, Any]:
    """uvicorn.run's keyword arguments for these settings."""
    return {
        "host": settings.host,
        "port": settings.port,
        "http": protocol_for(settings),
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.keep_alive_s,
        "log_level": settings.log_level.lower(),
        "log_config": None,  # uvicorn's lines go through the root logger, in KTRDR_LOG_FORMAT
    }


def serve(app: Any, settings: HostSettings) -> None:
    uvicorn.run(app, **server_options(settings))
