"""v2 -> v3: the document today's ktrdr trains from a strategy a December 2025 backend trained.

Beyond ktrdr's own `migrate_v2_to_v3`: nested `params:` are flattened (v3 would ignore them
and train the defaults), epochs, batch size and learning rate move to `training` (where v3
reads them), and the split keeps v2's effective shares (v2 read only test_size and
validation_size). What v3 cannot express (lagged inputs, early stopping, an optimizer other
than Adam) is dropped and named in the notes. `ktrdr strategy convert` and the v3 designs
use it. Pure: documents in, documents and text out.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ktrdr_tasks.catalogue import find_indicator
from ktrdr_tasks.errors import StrategyError
from ktrdr_tasks.strategy_v3 import (
    SECTION_ORDER,
    V3_VERSION,
    check_strategy_v3,
    is_v3,
    strategy_text,
)

_V2_ONLY_TOP_LEVEL = ("scope",)
_INDICATOR_KEYS = frozenset({"name", "feature_id", "params", "parameters", "type"})


@dataclass(frozen=True)
class Conversion:
    """A migrated document and what a person should know about the migration."""

    document: dict[str, Any]
    notes: list[str]


def convert_v2_to_v3(v2: Mapping[str, Any]) -> Conversion:
    """The v3 document that trains what ktrdr trained from the v2 one, as far as v3 can."""
    notes: list[str] = []
    document = copy.deepcopy(dict(v2))
    indicators: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(v2.get("indicators") or []):
        if not isinstance(item, Mapping):
            notes.append(f"indicators[{index}] is not a mapping: dropped")
            continue
        indicator_id = str(item.get("feature_id") or item.get("name") or f"indicator_{index}")
        indicators[indicator_id] = _v3_indicator(indicator_id, item, notes)
    fuzzy_sets: dict[str, dict[str, Any]] = {}
    for set_id, sets in _mapping(v2.get("fuzzy_sets")).items():
        if set_id not in indicators:
            notes.append(f"fuzzy_sets.{set_id} names no indicator (v2 ignored it): dropped")
            continue
        memberships = copy.deepcopy(dict(sets)) if isinstance(sets, Mapping) else {}
        fuzzy_sets[str(set_id)] = {"indicator": str(set_id), **memberships}
    document["indicators"] = indicators
    document["fuzzy_sets"] = fuzzy_sets
    document["nn_inputs"] = [{"fuzzy_set": set_id, "timeframes": "all"} for set_id in fuzzy_sets]
    document["version"] = V3_VERSION
    document["model"], document["training"] = _v3_model_and_training(v2, notes)
    for key in _V2_ONLY_TOP_LEVEL:
        document.pop(key, None)
    ordered = {key: document[key] for key in SECTION_ORDER if key in document}
    ordered.update({key: value for key, value in document.items() if key not in ordered})
    return Conversion(ordered, notes)


def migrate_document(
    document: Mapping[str, Any], source: str, stem: str | None = None
) -> tuple[str, list[str]]:
    """The text of a v2 document migrated to v3 and checked, with the migration's notes.

    StrategyError when the document is v3 already or the result would not train (so a
    migration never writes a file today's ktrdr refuses).
    """
    if is_v3(document):
        raise StrategyError(f"{source} is a v3 strategy already: nothing to convert")
    conversion = convert_v2_to_v3(document)
    check_strategy_v3(conversion.document, source, stem)
    return strategy_text(conversion.document), conversion.notes


def _v3_indicator(indicator_id: str, item: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    name = str(item.get("name") or item.get("type") or indicator_id)
    spec = find_indicator(name)
    supplied = {k: v for k, v in item.items() if k not in _INDICATOR_KEYS}
    nested = item.get("params")
    if isinstance(nested, Mapping):
        supplied.update(nested)
    if "parameters" in item:
        notes.append(f"indicators.{indicator_id}: 'parameters' dropped (v2 ignored it too)")
    if spec is None:
        return {"type": name, **supplied}
    known = {p.name for p in spec.params}
    for key in sorted(set(supplied) - known):
        notes.append(
            f"indicators.{indicator_id}: '{key}' dropped ({spec.name} has no such parameter; "
            "ktrdr ignored it)"
        )
    return {"type": spec.name.lower(), **{k: v for k, v in supplied.items() if k in known}}


def _v3_model_and_training(
    v2: Mapping[str, Any], notes: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    model = _mapping(v2.get("model"))
    model_training = _mapping(model.get("training"))
    lookback = _mapping(model.get("features")).get("lookback_periods", 0)
    if lookback:
        notes.append(f"model.features.lookback_periods {lookback} dropped: v3 has no lagged inputs")
    if str(model_training.get("optimizer", "adam")).lower() != "adam":
        notes.append("model.training.optimizer dropped: v3 always trains with Adam")
    if model_training.get("early_stopping"):
        notes.append("model.training.early_stopping dropped: v3 trains every epoch")
    for key in ("weight_decay", "gradient_clip", "lr_scheduler"):
        if key in model_training:
            notes.append(f"model.training.{key} dropped: v3 does not read it")
    v3_model = {
        key: copy.deepcopy(value)
        for key, value in model.items()
        if key not in ("features", "training")
    }
    v2_training = _mapping(v2.get("training"))
    split = _mapping(v2_training.get("data_split"))
    # v2 read only these two keys (defaults 0.1 / 0.2): test is the tail, validation the
    # tail of what remains. v3 takes plain fractions in bar order.
    test = float(split.get("test_size", 0.1))
    validation = (1 - test) * float(split.get("validation_size", 0.2))
    training: dict[str, Any] = {
        "epochs": model_training.get("epochs", 100),
        "batch_size": model_training.get("batch_size", 32),
        "learning_rate": model_training.get("learning_rate", 0.001),
        "labels": copy.deepcopy(dict(_mapping(v2_training.get("labels")))),
        "data_split": {
            "train": round(1 - test - validation, 4),
            "validation": round(validation, 4),
            "test": round(test, 4),
        },
    }
    extras = {
        k: copy.deepcopy(v)
        for k, v in v2_training.items()
        if k not in ("method", "labels", "data_split")
    }
    training.update(extras)
    return v3_model, training


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
