"""Untrusted input and secrets: strategy names stay inside the strategies directory (symlinks
included), YAML never constructs objects, Redis passwords never leak into messages, TLS URLs
configure verified TLS, the training host refuses oversized bodies and holds no slow request
forever, and no module named `celeryconfig` on a host's path replaces the app's settings."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from ktrdr_tasks.errors import StoreUnavailableError, StrategyError
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.store import Store
from ktrdr_tasks.strategy import load_strategy_config, strategy_path, validate_strategy_name
from tests.support.processes import REPO, free_port
from training_host.settings import HostSettings

VALID = "strategy: {}\ntraining_data: {symbols: [EURUSD], timeframes: [1h]}\n"


@pytest.fixture
def strategies(tmp_path: Path) -> Path:
    directory = tmp_path / "strategies"
    directory.mkdir()
    (directory / "good.yaml").write_text(VALID)
    (tmp_path / "secret.yaml").write_text("password: hunter2\n")
    return directory


@pytest.mark.parametrize(
    "name",
    [
        "../secret",
        "..",
        "/etc/passwd",
        "a/b",
        "a\\b",
        ".hidden",
        "good.yaml",
        "good\x00",
        "good\n",
        "-flag",
        "_under",
        "ünïcode",
        "a" * 101,
        "",
        " good",
        "good ",
        "%2e%2e%2fsecret",
    ],
)
def test_names_outside_the_rule_are_refused_before_touching_the_disk(
    name: str, strategies: Path
) -> None:
    with pytest.raises(StrategyError, match="invalid strategy name"):
        load_strategy_config(name, strategies)


@pytest.mark.parametrize("name", [None, 42, b"good", ["good"]])
def test_non_text_names_are_refused(name: object) -> None:
    with pytest.raises(StrategyError):
        validate_strategy_name(name)


def test_symlink_leading_out_of_the_directory_is_refused(strategies: Path) -> None:
    (strategies / "escape.yaml").symlink_to(strategies.parent / "secret.yaml")

    with pytest.raises(StrategyError, match="outside the strategies directory"):
        load_strategy_config("escape", strategies)


def test_symlinked_subdirectory_leading_out_is_refused(strategies: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.yaml").write_text(VALID)
    (strategies / "link.yaml").symlink_to(outside / "x.yaml")

    with pytest.raises(StrategyError, match="outside"):
        strategy_path("link", strategies)


def test_symlink_within_the_directory_is_allowed(strategies: Path) -> None:
    (strategies / "alias.yaml").symlink_to(strategies / "good.yaml")
    assert load_strategy_config("alias", strategies)["training_data"]["symbols"] == ["EURUSD"]


def test_a_strategies_directory_that_is_itself_a_symlink_works(
    strategies: Path, tmp_path: Path
) -> None:
    linked = tmp_path / "linked"
    linked.symlink_to(strategies, target_is_directory=True)
    assert load_strategy_config("good", linked)["strategy"] == {}


@pytest.mark.parametrize(
    "document",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "x: !!python/object/apply:subprocess.check_output [['touch', '{marker}']]",
        "!!python/object/new:os.system ['touch {marker}']",
        "x: !!python/name:os.system",
        "x: !!python/module:os",
    ],
)
def test_yaml_never_constructs_objects(document: str, strategies: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (strategies / "evil.yaml").write_text(document.format(marker=marker))

    with pytest.raises(StrategyError, match="not valid YAML"):
        load_strategy_config("evil", strategies)
    assert not marker.exists()


def test_yaml_alias_bomb_is_refused_without_blowing_up(strategies: Path) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append("training_data: {symbols: *a8, timeframes: [1h]}")
    (strategies / "bomb.yaml").write_text("\n".join(lines))
    # Shared references in memory, but 9^9 leaves to anyone who serialises or walks them.
    with pytest.raises(StrategyError, match=r"bomb\.yaml expands to more than"):
        load_strategy_config("bomb", strategies)


# -- secrets ---------------------------------------------------------------------------------


def test_safe_redis_url_masks_the_password() -> None:
    settings = Settings(redis_url="redis://:s3cret@redis.example:6379/0")
    assert settings.safe_redis_url() == "redis://:***@redis.example:6379/0"
    user = Settings(redis_url="rediss://app:s3cret@redis.example:6380/1")
    assert "s3cret" not in user.safe_redis_url()


def test_unreachable_redis_error_names_the_url_without_the_password() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    store = Store.from_url(url, 60, Settings(redis_url=url).safe_redis_url())
    with pytest.raises(StoreUnavailableError) as error:
        store.ping()
    assert "127.0.0.1" in str(error.value)
    assert "s3cret" not in str(error.value)


# -- TLS (rediss://) ---------------------------------------------------------------------------


def _celeryconfig(env: dict[str, str]) -> dict:
    """celeryconfig as a fresh process sees it (it reads the settings at import)."""
    code = (
        "import json, ktrdr_tasks.celeryconfig as c;"
        "print(json.dumps({'url': c.broker_url, 'ssl': getattr(c, 'broker_use_ssl', None)}))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KTRDR_", "REDIS_URL"))}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_rediss_url_configures_verified_tls_for_the_broker() -> None:
    config = _celeryconfig({"REDIS_URL": "rediss://:pw@redis.example:6380/0"})
    assert config["ssl"] == {"ssl_cert_reqs": int(ssl.CERT_REQUIRED)}


def test_rediss_cert_reqs_and_ca_are_settable() -> None:
    config = _celeryconfig(
        {
            "REDIS_URL": "rediss://redis.example:6380/0",
            "KTRDR_REDIS_SSL_CERT_REQS": "none",
            "KTRDR_REDIS_SSL_CA_CERTS": "/etc/ssl/ca.pem",
        }
    )
    assert config["ssl"] == {"ssl_cert_reqs": int(ssl.CERT_NONE), "ssl_ca_certs": "/etc/ssl/ca.pem"}


def test_plain_redis_url_has_no_tls_options() -> None:
    assert _celeryconfig({"REDIS_URL": "redis://localhost:6379/0"})["ssl"] is None


def test_rediss_url_gives_the_store_a_verifying_tls_client() -> None:
    settings = Settings(redis_url="rediss://redis.example:6380/0", redis_ssl_ca_certs="/ca.pem")
    store = Store.from_url(settings.redis_url, 60, ssl_options=settings.redis_ssl_options())
    pool = store.redis.connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert pool.connection_kwargs["ssl_ca_certs"] == "/ca.pem"


def test_an_invalid_cert_reqs_value_is_refused() -> None:
    with pytest.raises(ValueError):
        Settings(redis_url="rediss://x:6380/0", redis_ssl_cert_reqs="maybe")


# -- the training host's body limit -------------------------------------------------------------


def test_host_refuses_a_chunked_body_over_the_limit_with_413() -> None:
    pytest.importorskip("fastapi")
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from training_host.middleware import BodySizeLimit

    async def echo(request: object) -> JSONResponse:
        body = await request.body()  # type: ignore[attr-defined]
        return JSONResponse({"size": len(body)})

    app = BodySizeLimit(Starlette(routes=[Route("/x", echo, methods=["POST"])]), max_bytes=1024)
    client = TestClient(app)

    def chunks(total: int) -> object:
        for _ in range(total // 256):
            yield b"x" * 256

    assert client.post("/x", content=b"x" * 1024).json() == {"size": 1024}
    declared = client.post("/x", content=b"x" * 1025)
    assert declared.status_code == 413
    chunked = client.post("/x", content=chunks(4096))  # no Content-Length
    assert chunked.status_code == 413
    assert "KTRDR_HOST_MAX_BODY_BYTES" in chunked.json()["detail"]


# -- the app's configuration is the package's own -----------------------------------------------


def test_a_host_module_named_celeryconfig_does_not_replace_ktrdr_settings(tmp_path: Path) -> None:
    """A backend with its own `celeryconfig.py` first on sys.path (and as its working
    directory) imports ktrdr's app: the broker, acks and visibility timeout stay ktrdr's."""
    (tmp_path / "celeryconfig.py").write_text(
        "broker_url = 'redis://127.0.0.1:1/9'\n"
        "task_acks_late = False\n"
        "broker_transport_options = {}\n"
    )
    code = (
        "import json, sys;"
        f"sys.path.insert(0, {str(tmp_path)!r});"
        "import celeryconfig;"  # the host's module really is importable
        "from ktrdr_tasks.app import app;"
        "c = app.conf;"
        "print(json.dumps({'url': c.broker_url, 'acks_late': c.task_acks_late,"
        " 'visibility': c.broker_transport_options.get('visibility_timeout'),"
        " 'host_module': celeryconfig.broker_url}))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KTRDR_", "REDIS_URL"))}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "REDIS_URL": "redis://127.0.0.1:6390/3", "KTRDR_VISIBILITY_TIMEOUT_S": "45"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(out.stdout)
    assert seen == {
        "url": "redis://127.0.0.1:6390/3",
        "acks_late": True,
        "visibility": 45,
        "host_module": "redis://127.0.0.1:1/9",
    }


def test_the_package_installs_no_top_level_celeryconfig() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "py-modules" not in project.get("tool", {}).get("setuptools", {})
    # The repository's file only re-exports the package's module.
    shim = (REPO / "celeryconfig.py").read_text()
    assert "from ktrdr_tasks.celeryconfig import *" in shim


# -- the training host's server limits (slowloris) ----------------------------------------------

SLOW_CLIENTS = 200


@pytest.fixture
def limited_host() -> Iterator[tuple[int, HostSettings]]:
    """The host's server (its protocol and limits) on loopback, serving a tiny app."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from training_host.server import server_options

    async def hello(_: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    port = free_port()
    settings = HostSettings(
        KTRDR_HOST_PORT=port, KTRDR_HOST_REQUEST_TIMEOUT_S=1, KTRDR_HOST_MAX_CONNECTIONS=1000
    )
    app = Starlette(routes=[Route("/hello", hello)])
    server = uvicorn.Server(uvicorn.Config(app, **server_options(settings)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield port, settings
    server.should_exit = True
    thread.join(timeout=10)


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection (after an optional 408)."""
    try:
        while chunk := sock.recv(4096):
            if b"408" not in chunk:
                return False
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_host_drops_requests_that_never_finish_within_the_request_timeout(
    limited_host: tuple[int, HostSettings],
) -> None:
    port, settings = limited_host
    partial = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    slow_body = (
        b"POST /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    )
    sockets, drippers = [], []
    try:
        for index in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            # a third send half a header, a third half a body, a third nothing at all
            sock.sendall([partial, slow_body, b""][index % 3])
            sock.setblocking(False)
            sockets.append(sock)
            if index % 3 == 1:
                drippers.append(sock)
        started = time.monotonic()
        # Meanwhile a well-behaved client is served.
        answer = httpx.get(f"http://127.0.0.1:{port}/hello", timeout=5)
        assert answer.status_code == 200
        open_sockets = list(sockets)
        while open_sockets and time.monotonic() - started < 10 * settings.request_timeout_s:
            for sock in [s for s in drippers if s in open_sockets]:
                with contextlib.suppress(OSError):
                    sock.send(b"x")  # dripping the body does not extend the deadline
            open_sockets = [s for s in open_sockets if not _closed_by_server(s)]
            time.sleep(0.05)
        held_for = time.monotonic() - started
    finally:
        for sock in sockets:
            sock.close()
    assert open_sockets == [], f"{len(open_sockets)} of {SLOW_CLIENTS} slow sockets still held"
    assert held_for < 3 * settings.request_timeout_s + 1
    print(f"slowloris: {SLOW_CLIENTS} slow sockets all closed {held_for:.2f} s after they began")


def test_host_server_options_bound_connections_and_keep_alive() -> None:
    from training_host.server import BoundedH11Protocol, server_options

    options = server_options(
        HostSettings(
            KTRDR_HOST_MAX_CONNECTIONS=50,
            KTRDR_HOST_KEEP_ALIVE_S=3,
            KTRDR_HOST_REQUEST_TIMEOUT_S=7,
        )
    )
    assert options["limit_concurrency"] == 50
    assert options["timeout_keep_alive"] == 3
    assert issubclass(options["http"], BoundedH11Protocol)
    assert options["http"].request_timeout_s == 7


def test_host_limits_are_command_line_options_too() -> None:
    from training_host.main import parse_args
    from training_host.server import server_options

    args = parse_args(["--request-timeout", "3", "--max-connections", "7", "--keep-alive", "2"])
    settings = HostSettings(**{k: v for k, v in vars(args).items() if v is not None})
    options = server_options(settings)
    assert (options["http"].request_timeout_s, options["limit_concurrency"]) == (3, 7)
    assert options["timeout_keep_alive"] == 2
