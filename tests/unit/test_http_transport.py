"""The training client's transport against a real local HTTP/1.1 server: connections kept and
reused, never reused once the peer closed them, closed when an answer is left unread, and
failures raised as httpx's own exceptions."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ktrdr_tasks.http_transport import DRAIN_LIMIT, Deadline, KeepAliveTransport


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.body = b'{"status": "running"}'
        self.close_after_answer = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                server.connections += 1
                super().setup()

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(server.body)))
                if server.close_after_answer:
                    self.send_header("connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(server.body)

            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                echoed = self.rfile.read(length)
                self.send_response(201)
                self.send_header("content-length", str(len(echoed)))
                self.end_headers()
                self.wfile.write(echoed)

            def log_message(self, *_: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    threading.Thread(target=server.http.serve_forever, daemon=True).start()
    yield server
    server.http.shutdown()
    server.http.server_close()


def client_for(server: Server, **options: float) -> httpx.Client:
    transport = KeepAliveTransport(Deadline(), **options)  # type: ignore[arg-type]
    return httpx.Client(base_url=server.url, transport=transport, timeout=2.0)


def test_answers_and_bodies_arrive_as_sent(server: Server) -> None:
    with client_for(server) as client:
        got = client.get("/x")
        posted = client.post("/y", json={"strategy_name": "s"})

    assert got.status_code == 200 and got.json() == {"status": "running"}
    assert posted.status_code == 201 and posted.json() == {"strategy_name": "s"}


def test_one_connection_serves_many_requests(server: Server) -> None:
    with client_for(server) as client:
        for _ in range(20):
            client.get("/x").read()

    assert server.connections == 1


def test_a_partly_read_small_answer_still_keeps_its_connection(server: Server) -> None:
    server.body = b'{"status": "running", "metrics": [' + b"1, " * 1000 + b"1]}"
    with client_for(server) as client:
        for _ in range(5):
            with client.stream("GET", "/x") as response:
                next(response.iter_bytes())  # a reader that stops early, as a poll's does

    assert server.connections == 1


def test_a_large_unread_rest_closes_the_connection_instead_of_reading_it(
    server: Server,
) -> None:
    server.body = b"[" + b"1, " * DRAIN_LIMIT + b"1]"
    with client_for(server) as client:
        for _ in range(3):
            with client.stream("GET", "/x") as response:
                next(response.iter_bytes())

    assert server.connections == 3


def test_a_connection_the_peer_closed_is_not_reused(server: Server) -> None:
    server.close_after_answer = True
    with client_for(server) as client:
        for _ in range(3):
            assert client.get("/x").status_code == 200

    assert server.connections == 3


def test_an_idle_connection_past_its_expiry_is_replaced(server: Server) -> None:
    with client_for(server, keepalive_expiry=0.05) as client:
        client.get("/x")
        time.sleep(0.1)
        client.get("/x")

    assert server.connections == 2


def test_a_refused_connection_is_httpx_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    with (
        httpx.Client(transport=KeepAliveTransport(Deadline())) as client,
        pytest.raises(httpx.ConnectError),
    ):
        client.get(f"http://127.0.0.1:{port}/x")


def test_a_silent_peer_is_httpx_read_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"
        with (
            httpx.Client(transport=KeepAliveTransport(Deadline()), timeout=0.2) as client,
            pytest.raises(httpx.ReadTimeout),
        ):
            client.get(url)


def test_a_peer_that_hangs_up_without_answering_is_a_protocol_error() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def hang_up() -> None:
            peer, _ = listener.accept()
            peer.recv(65536)
            peer.close()

        threading.Thread(target=hang_up, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"
        with (
            httpx.Client(transport=KeepAliveTransport(Deadline()), timeout=2.0) as client,
            pytest.raises(httpx.RemoteProtocolError),
        ):
            client.get(url)


def raw_server(answer: bytes) -> tuple[socket.socket, str]:
    """A peer that reads the request, sends `answer` as it is, and hangs up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        peer, _ = listener.accept()
        peer.recv(65536)
        peer.sendall(answer)
        peer.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_body_cut_short_is_a_protocol_error_not_half_an_answer() -> None:
    listener, url = raw_server(
        b'HTTP/1.1 200 OK\r\nContent-Length: 38\r\n\r\n{"data": {"status": "runn'
    )
    with listener, pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
        KeepAliveTransport(Deadline()).handle_request(httpx.Request("GET", f"{url}/x")).read()


def test_a_training_answer_cut_short_is_a_transient_error() -> None:
    from ktrdr_tasks.errors import TransientApiError
    from ktrdr_tasks.training_api import TrainingApiClient

    listener, url = raw_server(
        b'HTTP/1.1 200 OK\r\nContent-Length: 90\r\n\r\n{"success": true, "data": {"status"'
    )
    with listener, pytest.raises(TransientApiError):
        TrainingApiClient(url, timeout_s=2.0).get_operation("op_training_1")


def test_a_header_outside_ascii_arrives_as_sent() -> None:
    listener, url = raw_server(
        b"HTTP/1.1 400 Bad Request\r\nX-Msg: Ung\xfcltig\r\nContent-Length: 2\r\n\r\n{}"
    )
    with listener:
        response = KeepAliveTransport(Deadline()).handle_request(httpx.Request("GET", url))
        response.read()
    assert response.status_code == 400
    assert response.headers.raw[0] == (b"X-Msg", b"Ung\xfcltig")
