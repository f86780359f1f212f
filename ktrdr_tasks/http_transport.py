"""The training client's HTTP/1.1 transport for httpx, on the standard library's `http.client`.

A waiting cycle polls its training every few seconds, so the CPU of one GET decides how many
cycles a worker machine holds. Through httpx's default transport (httpcore and h11) a poll's
GET costs about 0.74 ms of CPU on the benchmark machine; `http.client` sends the same request
and reads the same answer in 0.22 ms (docs/performance.md). The training API's calls are small
JSON requests to one origin, so this transport keeps only what they need:

- keep-alive connections per origin, at most `max_idle` kept, none idle longer than
  `keepalive_expiry` (below uvicorn's 5 s keep-alive, so the peer has not closed it), and none
  the peer has closed or written to meanwhile;
- TLS verified with httpx's default context;
- the request's connect, read and write timeouts, and a total deadline (`Deadline`) checked
  before every socket operation: a peer that drips one byte every second is cut off there,
  not after hours;
- httpx's exceptions (`ConnectError`, `ReadTimeout`, ...), so the client classifies failures as
  it does for any httpx transport, including whether a request may have reached the service.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

DEFAULT_KEEPALIVE_EXPIRY_S = 4.0
READ_CHUNK = 64 * 1024
# The most of an answer's unread rest read to keep its connection open (else: closed).
DRAIN_LIMIT = 64 * 1024


class Deadline(threading.local):
    """The monotonic deadline of the request this thread is sending (None: no request)."""

    at: float | None = None

    def remaining(
        self, timeout: float | None, overrun: type[httpx.TimeoutException] = httpx.ReadTimeout
    ) -> float | None:
        """The per-operation timeout shortened to what is left; raises when nothing is."""
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise overrun("the request's total deadline passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineSocket:
    """A connection's socket as `http.client` uses it: every send and read within the deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self.sock = sock
        self.deadline = deadline
        self.read_timeout: float | None = None
        self.write_timeout: float | None = None

    def sendall(self, data: bytes) -> None:
        self.sock.settimeout(self.deadline.remaining(self.write_timeout, httpx.WriteTimeout))
        self.sock.sendall(data)

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        self.sock.settimeout(self.deadline.remaining(self.read_timeout))
        return self.sock.recv_into(buffer, nbytes)

    def makefile(self, mode: str = "rb", *_: Any, **__: Any) -> io.BufferedReader:
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]

    def _decref_socketios(self) -> None:  # `SocketIO.close` calls it; the socket stays open
        pass

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        # `http.client` closes its socket on reading `Connection: close`, before the body is
        # read; the connection closes it once the answer is done with (`_Connection.close`).
        pass

    def peer_has_spoken(self) -> bool:
        """Whether the idle connection is readable: closed by the peer, or sent unasked bytes."""
        try:
            poller = select.poll()  # `select.select` refuses descriptors above 1023
            poller.register(self.sock, select.POLLIN | select.POLLPRI)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True


class _Connection:
    def __init__(self, origin: tuple[str, str, int], sock: _DeadlineSocket) -> None:
        self.origin = origin
        self.sock = sock
        self.http = http.client.HTTPConnection(origin[1], origin[2])
        self.http.sock = sock  # type: ignore[assignment]
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.http.sock = None
        self.sock.sock.close()


class _Body(httpx.SyncByteStream):
    """The answer as it arrives; the connection goes back to the pool once it is read whole."""

    def __init__(
        self, response: http.client.HTTPResponse, connection: _Connection, pool: KeepAliveTransport
    ) -> None:
        self._response, self._connection, self._pool = response, connection, pool

    def __iter__(self) -> Iterator[bytes]:
        response = self._response
        with _as_httpx(httpx.ReadTimeout, httpx.ReadError, "reading the answer"):
            while chunk := response.read1(READ_CHUNK):
                yield chunk
        _check_complete(response)

    def close(self) -> None:
        response, connection = self._response, self._connection
        keep = not response.will_close and self._drained()
        response.close()  # its file object only: the socket is the connection's
        if keep:
            self._pool.keep(connection)
        else:
            connection.close()

    def _drained(self) -> bool:
        """Whether the answer is read to its end, reading a small rest now.

        A reader may stop once it has what it needs (a poll's, in a long answer:
        `operation_answer`); a small rest is read here so the connection serves the next
        request, rather than a new connection for it (a TCP connect and close, 0.1-0.2 ms of
        CPU on each side).
        """
        response = self._response
        left = DRAIN_LIMIT
        try:
            while not _read_whole(response):
                if response.length is not None and response.length > left:
                    return False
                chunk = response.read1(min(left, READ_CHUNK))
                left -= len(chunk)
                if not chunk or left <= 0:
                    break
        except (httpx.TimeoutException, http.client.HTTPException, OSError):
            return False
        return _read_whole(response)


@contextlib.contextmanager
def _as_httpx(
    timed_out: type[httpx.TimeoutException],
    failed: type[httpx.TransportError],
    what: str,
    protocol: type[httpx.TransportError] | None = None,
) -> Iterator[None]:
    """One stage's socket and `http.client` errors as httpx's: `timed_out` for a timeout,
    `protocol` (default `failed`) for an answer `http.client` cannot read, `failed` for the
    rest. A passed deadline is an httpx timeout already."""
    try:
        yield
    except httpx.TimeoutException:
        raise
    except TimeoutError as exc:
        raise timed_out(f"timed out {what}") from exc
    except http.client.HTTPException as exc:  # RemoteDisconnected too, before OSError
        raise (protocol or failed)(f"{type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise failed(f"{type(exc).__name__}: {exc}") from exc


def _read_whole(response: http.client.HTTPResponse) -> bool:
    # `http.client` closes a Content-Length answer only on a read past its end, and closes
    # one the peer cut short too (with `length` still above 0).
    return response.length == 0 or (response.isclosed() and not response.length)


def _check_complete(response: http.client.HTTPResponse) -> None:
    """A body the peer cut short is a protocol error, as httpx's own transport says.

    `read1` ends such a body with b"" like a complete one: without this, half an answer would
    reach the decoder, and a start the service took would read as a permanent refusal.
    """
    if response.length:
        raise httpx.RemoteProtocolError(
            f"peer closed connection without sending complete message body "
            f"({response.length} bytes missing)"
        )


class KeepAliveTransport(httpx.BaseTransport):
    """HTTP/1.1 over pooled keep-alive connections (see the module's docstring)."""

    def __init__(
        self,
        deadline: Deadline,
        *,
        max_idle: int = 20,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._deadline = deadline
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    # -- the pool ---------------------------------------------------------------------------

    def keep(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(connection)
                return
        connection.close()

    def _reuse(self, origin: tuple[str, str, int]) -> _Connection | None:
        stale = []
        found = None
        now = time.monotonic()
        with self._lock:
            for index in range(len(self._idle) - 1, -1, -1):
                connection = self._idle[index]
                if connection.origin != origin:
                    continue
                del self._idle[index]
                if now - connection.idle_since > self._keepalive_expiry:
                    stale.append(connection)
                    continue
                found = connection
                break
        for connection in stale:
            connection.close()
        if found is not None and found.sock.peer_has_spoken():
            found.close()
            return None
        return found

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    # -- one request ------------------------------------------------------------------------

    def _connect(self, origin: tuple[str, str, int], timeout: float | None) -> _Connection:
        scheme, host, port = origin
        with _as_httpx(httpx.ConnectTimeout, httpx.ConnectError, f"connecting to {host}:{port}"):
            sock = socket.create_connection(
                (host, port), self._deadline.remaining(timeout, httpx.ConnectTimeout)
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                context = self._ssl_context or httpx.create_ssl_context()
                self._ssl_context = context
                try:
                    sock.settimeout(self._deadline.remaining(timeout, httpx.ConnectTimeout))
                    sock = context.wrap_socket(sock, server_hostname=host)
                except BaseException:
                    sock.close()
                    raise
        return _Connection(origin, _DeadlineSocket(sock, self._deadline))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}")
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        connection = self._reuse(origin) or self._connect(origin, timeouts.get("connect"))
        connection.sock.read_timeout = timeouts.get("read")
        connection.sock.write_timeout = timeouts.get("write")
        try:
            self._send(connection, request)
            response = self._receive(connection)
            return httpx.Response(
                status_code=response.status,
                # http.client decoded them as latin-1; httpx takes bytes as they came.
                headers=[
                    (name.encode("latin-1"), value.encode("latin-1"))
                    for name, value in response.getheaders()
                ],
                stream=_Body(response, connection, self),
                extensions={
                    "http_version": b"HTTP/1.1",
                    "reason_phrase": response.reason.encode("latin-1"),
                },
            )
        except BaseException:
            connection.close()
            raise

    @staticmethod
    def _send(connection: _Connection, request: httpx.Request) -> None:
        target = request.url.raw_path.decode("ascii")
        with _as_httpx(httpx.WriteTimeout, httpx.WriteError, "sending the request"):
            conn = connection.http
            conn.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in request.headers.raw:
                conn.putheader(name.decode("latin-1"), value.decode("latin-1"))
            conn.endheaders(request.read() or None)

    @staticmethod
    def _receive(connection: _Connection) -> http.client.HTTPResponse:
        with _as_httpx(
            httpx.ReadTimeout,
            httpx.ReadError,
            "waiting for the answer",
            protocol=httpx.RemoteProtocolError,  # no status line: hung up, or not HTTP
        ):
            response = connection.http.getresponse()
        return response
