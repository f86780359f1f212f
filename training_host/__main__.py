"""`ktrdr-training-host` and `python -m training_host`: check what the host needs, then serve.

The host is the `host` extra of the distribution: without it (torch, FastAPI, ...) the entry
point says which extra to install instead of a `ModuleNotFoundError` traceback, and bad
settings end it in one line naming the variable, with the configuration exit code (4).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from ktrdr_tasks.errors import EXIT_CONFIG

# What the `host` extra brings, as import names.
HOST_MODULES = (
    "fastapi",
    "uvicorn",
    "pandas",
    "numpy",
    "torch",
    "backtesting",
    "prometheus_fastapi_instrumentator",
)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: blocked in sys.modules
        return False


def missing_host_modules() -> list[str]:
    return [name for name in HOST_MODULES if not _importable(name)]


def main(argv: Sequence[str] | None = None) -> int:
    missing = missing_host_modules()
    if missing:
        print(
            f"ktrdr-training-host needs the 'host' extra (missing: {', '.join(missing)}): "
            "pip install 'ktrdr-tasks[host]'",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    from pydantic import ValidationError

    from ktrdr_tasks.settings import describe_validation_error
    from training_host import main as host
    from training_host.settings import HostSettings

    try:
        return host.main(argv)
    except ValidationError as exc:  # only HostSettings is validated before serving starts
        problems = describe_validation_error(exc, HostSettings)
        print(f"ktrdr-training-host: invalid configuration: {problems}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    raise SystemExit(main())
