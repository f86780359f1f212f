"""Flower never serves ktrdr's tasks without credentials beyond 127.0.0.1, however it starts.

Flower's own default is every interface and no login, and anyone who reaches it reads task
arguments and revokes tasks. The rule is checked against the options Flower itself parsed
(command line in any spelling tornado accepts, `FLOWER_*` environment, `flowerconfig.py`),
just before it binds its socket, and against the addresses that bind would really use: no
second parser of Flower's arguments that a `-address=` or a repeated option could fool.

`install(app)` (called by `ktrdr_tasks.app`) arms the check for every Flower built on the
ktrdr app: `celery -A ktrdr_tasks flower`, `python -m ktrdr_tasks.stack flower`, compose.
Flower builds its application with `app.loader.import_default_modules()`, which sends
Celery's `import_modules` signal; the handler wraps `Flower.start_http_server` then, so the
check runs before the server binds whatever imported Flower first. A refusal prints one
line and exits with the configuration exit code.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery import Celery
from celery.signals import import_modules

from ktrdr_tasks.errors import EXIT_CONFIG, ConfigurationError

# The only addresses Flower may serve on without a login: this machine's own loopback.
OPEN_ADDRESSES = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})
_GUARDED = "_ktrdr_guarded"


def bound_addresses(address: str, port: int = 0) -> set[str]:
    """The IP addresses a tornado `bind_sockets(port, address)` would listen on.

    '' (Flower's default) is every interface. A name is resolved as tornado resolves it, so
    `localhost` counts as what it resolves to here.
    """
    host = address.strip().strip("[]") or None
    if host is None:
        return {"0.0.0.0", "::"}
    try:
        infos = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except (OSError, UnicodeError):
        return {host}  # unresolvable: Flower fails to bind; never treat it as loopback
    return {str(info[4][0]).split("%")[0] for info in infos}


def is_open_address(address: str) -> bool:
    """True when every address Flower would bind is 127.0.0.1 or ::1."""
    found = bound_addresses(address)
    with contextlib.suppress(ValueError):
        return bool(found) and all(ipaddress.ip_address(ip) in OPEN_ADDRESSES for ip in found)
    return False


def check_flower_exposure(
    address: str,
    basic_auth: Sequence[str] = (),
    oauth: str = "",
    unix_socket: str = "",
) -> None:
    """Refuse a Flower that listens beyond 127.0.0.1 without basic auth or OAuth."""
    for credential in basic_auth:
        user, _, password = credential.partition(":")
        if not user or not password:
            raise ConfigurationError(
                "Flower basic auth must be user:password (FLOWER_BASIC_AUTH or --basic-auth)"
            )
    if unix_socket or basic_auth or oauth or is_open_address(address):
        return
    shown = address or "every interface"
    raise ConfigurationError(
        f"refusing to start Flower on {shown} without credentials: anyone who reaches it "
        "could read task arguments and revoke tasks. Set FLOWER_BASIC_AUTH=user:password "
        "(or --basic-auth), or listen on 127.0.0.1 only (--address=127.0.0.1)"
    )


def check_flower_options(options: Any) -> None:
    """`check_flower_exposure` on Flower's parsed options (tornado's `options` object)."""
    basic_auth = [str(item) for item in (getattr(options, "basic_auth", None) or []) if item]
    check_flower_exposure(
        str(getattr(options, "address", "") or ""),
        basic_auth,
        str(getattr(options, "auth", "") or ""),
        str(getattr(options, "unix_socket", "") or ""),
    )


def parse_flower_arguments(argv: Sequence[str], environ: Mapping[str, str]) -> Any:
    """Flower's options from `argv` and the `FLOWER_*` environment, parsed as Flower does.

    Flower's own definitions on a private tornado parser, the same filter and order
    (environment first, then the command line); for a check before Flower starts. The
    check inside Flower (`install`) also sees `flowerconfig.py`.
    """
    import flower.options  # noqa: F401  (defines Flower's options on tornado's parser)
    from tornado.options import Error, OptionParser
    from tornado.options import options as defined

    parser = OptionParser()
    for option in defined._options.values():
        if option.name not in parser._options:
            parser.define(
                option.name, default=option.default, type=option.type, multiple=option.multiple
            )
    try:
        for variable, raw in environ.items():
            name = variable.removeprefix("FLOWER_").lower().replace("_", "-")
            if variable.startswith("FLOWER_") and name in parser._options:
                option = parser._options[name]
                option.parse(raw)
        wanted = [
            arg for arg in argv if arg.lstrip("-").partition("=")[0].replace("-", "_") in parser
        ]
        parser.parse_command_line(["flower", *wanted], final=False)
    except (Error, ValueError) as exc:
        raise ConfigurationError(f"Flower cannot read its options: {exc}") from exc
    return parser


def guard_flower(argv: Sequence[str], environ: Mapping[str, str]) -> None:
    """`check_flower_exposure` on what Flower would make of `argv` and `environ`."""
    check_flower_options(parse_flower_arguments(argv, environ))


def refuse(exc: ConfigurationError) -> None:
    """One line on stderr and the configuration exit code; no traceback."""
    print(f"error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(int(EXIT_CONFIG))


def _guarded(start_http_server: Callable[..., Any]) -> Callable[..., Any]:
    def start_checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            check_flower_options(self.options)
        except ConfigurationError as exc:
            refuse(exc)
        return start_http_server(self, *args, **kwargs)

    setattr(start_checked, _GUARDED, True)
    start_checked.__doc__ = start_http_server.__doc__
    return start_checked


def arm_loaded_flower() -> bool:
    """Wrap Flower's `start_http_server` with the check if Flower is imported; idempotent."""
    module = sys.modules.get("flower.app")
    flower_class = getattr(module, "Flower", None)
    if flower_class is None:
        return False
    if not getattr(flower_class.start_http_server, _GUARDED, False):
        flower_class.start_http_server = _guarded(flower_class.start_http_server)
    return True


def install(app: Celery) -> None:
    """Arm the check now if Flower is loaded, and again whenever `app` imports its modules."""
    arm_loaded_flower()

    def on_import_modules(sender: object = None, **_: object) -> None:
        if sender is app:
            arm_loaded_flower()

    import_modules.connect(on_import_modules, weak=False)
