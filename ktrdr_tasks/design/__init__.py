"""The design phase: produce one new, valid ktrdr strategy file and say what it tests.

`design_strategy` is what the chain's `design` task calls (progress 0 -> 30 of the cycle). It
picks the designer from the settings (the built-in composer, or an LLM through the Anthropic
Messages API), keeps away from every design already tried (fingerprints in the cycle history
and in the strategies directory), validates the result with the trainer's rules
(`check_any_strategy`) and saves it without ever overwriting a file.

A seed fixes the built-in designer's sequence of candidates, the same in any directory; the
design chosen is the first candidate of that sequence that is not already known (its
fingerprint in the history or in the strategies directory, or its name taken). So a seed
gives the same design in any directory that holds none of its earlier candidates, and the
result records the seed, the candidate's position and every candidate skipped with the reason.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ktrdr_tasks.datasets import Dataset, available_datasets
from ktrdr_tasks.design import builtin
from ktrdr_tasks.design.storage import (
    StrategyExistsError,
    design_fingerprint,
    existing_fingerprints,
    history_fingerprints,
    save_strategy,
    summarize_design,
)
from ktrdr_tasks.errors import DesignError
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.strategy_v3 import check_any_strategy

__all__ = [
    "DesignResult",
    "ProgressCallback",
    "SkippedCandidate",
    "design_fingerprint",
    "design_strategy",
    "summarize_design",
]

ProgressCallback = Callable[[float, str], None]

# How many fresh candidates the built-in designer tries before giving up: each is a new draw,
# so running out means the history covers nearly everything this seed stream produces.
MAX_CANDIDATES = 200


@dataclass(frozen=True)
class SkippedCandidate:
    """A candidate of the seed's sequence that was not chosen, and why."""

    candidate: int
    name: str
    reason: str  # "known_design" (fingerprint in history or directory) or "name_taken"


@dataclass(frozen=True)
class DesignResult:
    """A saved design: the file, its content and the one-sentence hypothesis it tests.

    For the built-in designer, `seed` and `candidate` (1-based position in the seed's
    sequence) reproduce the choice, and `skipped` says why earlier candidates were passed over.
    """

    name: str
    path: Path
    config: dict[str, Any]
    hypothesis: str
    fingerprint: str
    designer: str
    seed: int | None = None
    candidate: int | None = None
    skipped: tuple[SkippedCandidate, ...] = field(default_factory=tuple)


def design_strategy(
    settings: Settings,
    history: Sequence[Mapping[str, Any]],
    seed: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> DesignResult:
    """Design, validate and save one strategy that differs from everything tried before."""
    progress = on_progress or _no_progress
    progress(0, f"Reading {len(history)} past designs")
    avoid = history_fingerprints(history) | existing_fingerprints(settings.strategies_dir)
    datasets = available_datasets(
        settings.design_symbols,
        settings.design_timeframes,
        settings.training_start_date,
        settings.training_end_date,
    )
    if not datasets:
        raise DesignError("no dataset to design for: check KTRDR_DESIGN_SYMBOLS/TIMEFRAMES")
    progress(3, f"Datasets: {', '.join(f'{d.symbol} {d.timeframe}' for d in datasets)}")
    if settings.designer == "anthropic":
        from ktrdr_tasks.design import llm

        return llm.design_with_llm(settings, datasets, history, avoid, progress)
    return _design_builtin(settings, datasets, avoid, seed, progress)


def _design_builtin(
    settings: Settings,
    datasets: list[Dataset],
    avoid: set[str],
    seed: int | None,
    progress: ProgressCallback,
) -> DesignResult:
    seed = secrets.randbits(63) if seed is None else seed
    stream = builtin.candidates(
        seed,
        datasets,
        settings.training_start_date,
        settings.training_end_date,
        settings.strategy_format,
    )
    skipped: list[SkippedCandidate] = []
    for position, candidate in zip(range(1, MAX_CANDIDATES + 1), stream, strict=False):
        name = candidate.config["name"]
        if candidate.fingerprint in avoid:
            skipped.append(SkippedCandidate(position, name, "known_design"))
            continue
        if (settings.strategies_dir / f"{name}.yaml").exists():
            skipped.append(SkippedCandidate(position, name, "name_taken"))
            continue
        progress(10, f"Choosing indicators: {', '.join(candidate.indicators)}")
        progress(20, "Validating")
        check_any_strategy(candidate.config, f"designed strategy '{name}'")
        try:
            path = save_strategy(settings.strategies_dir, candidate.config)
        except StrategyExistsError:
            # another designer took this name between our check and our save
            skipped.append(SkippedCandidate(position, name, "name_taken"))
            continue
        progress(30, f"Saved {path}")
        return DesignResult(
            name=name,
            path=path,
            config=candidate.config,
            hypothesis=candidate.hypothesis,
            fingerprint=candidate.fingerprint,
            designer="builtin",
            seed=seed,
            candidate=position,
            skipped=tuple(skipped),
        )
    raise DesignError(
        f"the built-in designer found no new design in {MAX_CANDIDATES} candidates "
        f"(seed {seed}); {len(avoid)} designs are already known"
    )


def _no_progress(percentage: float, step: str) -> None:
    """Progress sink when the caller does not listen."""
