"""The package's shape, read from its source with `ast`: no import circle between its modules
(lazy imports inside functions count too: they are how circles hide), and the pure modules
(progress maths, gates, the step table, the records) reach no Redis, HTTP or Celery, not even
through another module of the package."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ktrdr_tasks"
PURE = (
    "ktrdr_tasks.progress",
    "ktrdr_tasks.gates",
    "ktrdr_tasks.steps",
    "ktrdr_tasks.models",
    "ktrdr_tasks.operation_answer",
    "ktrdr_tasks.backtest",
)
IO_MODULES = ("ktrdr_tasks.store", "ktrdr_tasks.training_api", "httpx", "celery", "redis")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> Iterator[str]:
    """Every module `path` imports, anywhere in the file."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            # `from ktrdr_tasks import cycle` imports the module `ktrdr_tasks.cycle`
            yield from (f"{base}.{alias.name}" for alias in node.names)


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for target in imported(path):
            if name.startswith(f"{target}."):
                continue  # a module's own package: Python runs its __init__ first anyway
            if target in modules and target != name:
                targets.add(target)
            elif not target.startswith("ktrdr_tasks"):
                targets.add(target.split(".")[0])
        edges[name] = targets
    return edges


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in edges.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_no_import_circle_between_modules_of_the_package() -> None:
    edges = graph()
    internal = {name: {t for t in targets if t in edges} for name, targets in edges.items()}
    circles = sorted(name for name in internal if name in reachable(internal, name))
    assert circles == []


@pytest.mark.parametrize("pure", PURE)
def test_pure_module_reaches_no_redis_http_or_celery(pure: str) -> None:
    reached = reachable(graph(), pure)
    assert sorted(reached & set(IO_MODULES)) == []


def test_in_the_chain_only_store_imports_redis_and_only_training_api_imports_httpx() -> None:
    edges = graph()
    chain = reachable(edges, "ktrdr_tasks.tasks") & set(edges)  # what a worker runs
    assert {"ktrdr_tasks.cycle", "ktrdr_tasks.reconciler", "ktrdr_tasks.workflow"} <= chain
    assert sorted(name for name in chain if "redis" in edges[name]) == ["ktrdr_tasks.store"]
    # The LLM designer talks HTTP to Anthropic's API, not to the training service.
    assert sorted(name for name in chain if "httpx" in edges[name]) == [
        "ktrdr_tasks.design.llm",
        "ktrdr_tasks.http_transport",
        "ktrdr_tasks.training_api",
    ]
    # The transport is the training client's own: nothing else sends through it.
    assert sorted(name for name in edges if "ktrdr_tasks.http_transport" in edges[name]) == [
        "ktrdr_tasks.training_api"
    ]
