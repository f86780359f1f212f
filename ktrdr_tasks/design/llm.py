"""The LLM designer: asks Claude (Anthropic Messages API) for a strategy through a forced tool call.

Used when `KTRDR_DESIGNER=anthropic`. The prompt carries what a ktrdr strategy must look like
in the format `KTRDR_STRATEGY_FORMAT` asks for (a summary of `ktrdr-strategy-format-v3.md`
or of the v2 `ktrdr-strategy-format.md`), the indicator catalogue with each output's typical
spread on the datasets the backend has, and the recent history, so the model proposes something
new that can train. Its answer is the input of the `save_strategy` tool (the strategy as one
object); `check_any_strategy` judges it. An invalid answer gets exactly one correction turn (a
`tool_result` with `is_error` listing the field errors); a second failure is a DesignError
naming the fields. The API key is sent as a header and never appears in a message or log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from ktrdr_tasks.catalogue import IndicatorSpec
from ktrdr_tasks.datasets import Dataset
from ktrdr_tasks.design.builtin import typical_spread, usable_indicators
from ktrdr_tasks.design.storage import (
    StrategyExistsError,
    design_fingerprint,
    save_strategy,
)
from ktrdr_tasks.errors import DesignError, FieldError, StrategyValidationError
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.strategy_schema import REQUIRED_TOP_LEVEL, STRATEGY_NAME
from ktrdr_tasks.strategy_v3 import REQUIRED_V3, V3_VERSION, check_any_strategy, is_v3

ANTHROPIC_VERSION = "2023-06-01"
TOOL_NAME = "save_strategy"
MAX_TOKENS = 4096
HISTORY_SHOWN = 20

FORMAT_RULES_V2 = """\
Write one ktrdr v2 strategy (the format a ktrdr backend validates and trains).
Top-level keys, all required: name, version (a STRING "1.0"), scope (symbol_specific),
training_data, deployment, indicators, fuzzy_sets, model, decisions, training.
Also give description: ONE sentence stating the hypothesis the strategy tests.
- name: letters, digits, _ and - only (regex ^[A-Za-z0-9][A-Za-z0-9_-]*$), at most 80 chars.
- training_data: {symbols: {mode: single, symbol: SYM}, timeframes: {mode: single,
  timeframe: TF}, history_required: 200, start_date: "YYYY-MM-DD", end_date: "YYYY-MM-DD"}
  using exactly one of the datasets listed below, with dates inside its span.
- deployment: {target_symbols: {mode: training_only}, target_timeframes: {mode: single,
  timeframe: TF}}
- indicators: 2-4 items {name: <catalogue name>, feature_id: <unique id>, <param>: <value>}.
  feature_id matches ^[a-zA-Z][a-zA-Z0-9_-]*$, is not open/high/low/close/volume, e.g. rsi_14.
  Use different families; parameters within the listed ranges.
- fuzzy_sets: for EVERY feature_id, 2-5 sets {<set_name>: {type, parameters}} where type is
  exactly "triangular" [a,b,c] (a<=b<=c), "trapezoidal" [a,b,c,d] (a<=b<=c<=d) or "gaussian"
  [mean, sigma>0]. Place sets over the indicator's typical spread on the chosen dataset
  (p5/p50/p95 below); adjacent sets overlap; use trapezoid shoulders reaching the edges of the
  output range; 0 must fall inside some set (warm-up bars read 0).
- model: {type: mlp, architecture: {hidden_layers: [32, 16], activation: relu, dropout: 0.2},
  features: {lookback_periods: 0-2}, training: {learning_rate: 0.001, batch_size: 32,
  epochs: 5-15, optimizer: adam}}. Inputs = number of fuzzy sets x (1 + lookback_periods).
- decisions: {output_format: classification, confidence_threshold: 0.6,
  position_awareness: true}
- training: {method: supervised, labels: {source: zigzag, zigzag_threshold: <fraction>,
  label_lookahead: 20}, data_split: {test_size: 0.15, validation_size: 0.15}}.
  zigzag_threshold: about 4-6 typical bar moves: 0.003-0.006 for EURUSD 1h, 0.006-0.012 for
  4h, 0.02-0.03 for EURUSD 1d, 0.07-0.11 for a volatile stock's daily bars.
Call the save_strategy tool with the whole strategy as its input."""

FORMAT_RULES_V3 = """\
Write one ktrdr v3 strategy (the format today's ktrdr backend validates and trains; it refuses
v2). Top-level keys, all required: name, version (the STRING "3.0"), training_data, indicators,
fuzzy_sets, nn_inputs, model, decisions, training. Also give description: ONE sentence
stating the hypothesis the strategy tests.
- name: letters, digits, _ and - only (regex ^[A-Za-z0-9][A-Za-z0-9_-]*$), at most 80 chars.
- training_data: {symbols: {mode: single, symbol: SYM}, timeframes: {mode: single,
  timeframe: TF}, history_required: 200, start_date: "YYYY-MM-DD", end_date: "YYYY-MM-DD"}
  using exactly one of the datasets listed below, with dates inside its span (ktrdr ignores
  dates in the file; they are sent with the training request).
- indicators: a MAPPING of 2-4 entries <indicator_id>: {type: <type below>, <param>: value},
  e.g. rsi_14: {type: rsi, period: 14}. Use different families; parameters within the listed
  ranges; parameters are flat keys (no nested params:).
- fuzzy_sets: a MAPPING <fuzzy_set_id>: {indicator: <indicator_id>, <membership>: {type,
  parameters}, ...}, one fuzzy set per indicator, 2-5 memberships each. A multi-output
  indicator may be referenced as <indicator_id>.<output> (outputs listed below, the first is
  used without a dot). type is exactly "triangular" [a,b,c] (a<=b<=c), "trapezoidal"
  [a,b,c,d] (a<=b<=c<=d) or "gaussian" [mean, sigma>0]. Place memberships over the output's
  typical spread on the chosen dataset (p5/p50/p95 below, of the first output); adjacent ones
  overlap; trapezoid shoulders reach the edges of the output range; 0 must fall inside some
  membership (warm-up bars read 0).
- nn_inputs: a LIST with one entry per fuzzy set: {fuzzy_set: <fuzzy_set_id>, timeframes:
  all}. The network inputs are the memberships, in this order.
- model: {type: mlp, architecture: {hidden_layers: [32, 16], activation: relu,
  dropout: 0.2}}
- decisions: {output_format: classification, confidence_threshold: 0.6,
  position_awareness: true}
- training: {epochs: 5-15, batch_size: 32, learning_rate: 0.001, labels: {source: zigzag,
  zigzag_threshold: <fraction>, label_lookahead: 20}, data_split: {train: 0.7,
  validation: 0.15, test: 0.15}}. Epochs go HERE (ktrdr ignores model.training).
  zigzag_threshold: about 4-6 typical bar moves: 0.003-0.006 for EURUSD 1h, 0.006-0.012 for
  4h, 0.02-0.03 for EURUSD 1d, 0.07-0.11 for a volatile stock's daily bars.
Call the save_strategy tool with the whole strategy as its input."""


def design_with_llm(
    settings: Settings,
    datasets: Sequence[Dataset],
    history: Sequence[Mapping[str, Any]],
    avoid: set[str],
    progress: Any,
) -> Any:
    """Ask the model for one design, correct it once if needed, validate and save it."""
    from ktrdr_tasks.design import DesignResult  # the package imports this module lazily

    if not settings.anthropic_api_key:
        raise DesignError(
            "KTRDR_DESIGNER=anthropic needs ANTHROPIC_API_KEY to be set "
            "(or use KTRDR_DESIGNER=builtin)"
        )
    fmt = settings.strategy_format
    prompt = build_prompt(datasets, history, fmt)
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    with httpx.Client(timeout=settings.anthropic_timeout_s) as client:
        progress(5, f"Asking {settings.anthropic_model} for a design")
        config, errors, reply = _attempt(client, settings, messages, avoid)
        if errors:
            progress(15, f"Correcting {len(errors)} field errors")
            messages += [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": _correction(reply, errors)},
            ]
            config, errors, reply = _attempt(client, settings, messages, avoid)
        if errors:
            fields = ", ".join(dict.fromkeys(e.field or "(document)" for e in errors))
            listed = "; ".join(str(e) for e in errors[:10])
            raise DesignError(
                f"the LLM designer produced an invalid strategy twice; bad fields: {fields} "
                f"({listed})"
            )
    assert config is not None
    progress(25, "Validating")
    path = _save_unique(settings.strategies_dir, config)
    progress(30, f"Saved {path}")
    hypothesis = str(config.get("hypothesis") or config.get("description") or "")
    return DesignResult(
        name=config["name"],
        path=path,
        config=config,
        hypothesis=hypothesis,
        fingerprint=design_fingerprint(config),
        designer="anthropic",
    )


def build_prompt(
    datasets: Sequence[Dataset],
    history: Sequence[Mapping[str, Any]],
    strategy_format: str = "v3",
) -> str:
    """The user message: format rules, datasets, catalogue with spreads, recent history."""
    rules = FORMAT_RULES_V3 if strategy_format == "v3" else FORMAT_RULES_V2
    parts = [rules, "", "Datasets the training backend has:"]
    parts += [
        f"- {d.symbol} {d.timeframe}: {d.start_date or '?'} .. {d.end_date or '?'}"
        f"{f', ~{d.bars} bars' if d.bars else ''}"
        f"{f', price ~{d.price_level:g}' if d.price_level else ''}"
        for d in datasets
    ]
    key = "type" if strategy_format == "v3" else "name"
    legend = "outputs" if strategy_format == "v3" else "output"
    parts += ["", f"Indicators ({key} [family]: params (default; range); {legend}; p5/p50/p95):"]
    names = {spec.name: spec for d in datasets for spec in usable_indicators(d)}
    parts += [_catalogue_line(spec, datasets, strategy_format) for spec in names.values()]
    parts += ["", _history_text(history)]
    parts += ["Propose something that differs from the history; learn from its results."]
    return "\n".join(parts)


def tool_definition(strategy_format: str = "v3") -> dict[str, Any]:
    """The `save_strategy` tool: its input is the strategy itself, in the asked format."""
    section = {"type": "object"}
    if strategy_format == "v3":
        return {
            "name": TOOL_NAME,
            "description": "Save the designed ktrdr v3 strategy. The input is the whole strategy.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string", "description": "one-sentence hypothesis"},
                    "version": {"type": "string", "enum": [V3_VERSION]},
                    "training_data": section,
                    "indicators": {
                        "type": "object",
                        "description": "indicator_id -> {type, params...}",
                        "minProperties": 1,
                    },
                    "fuzzy_sets": {
                        "type": "object",
                        "description": "fuzzy_set_id -> {indicator, memberships...}",
                    },
                    "nn_inputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "fuzzy_set": {"type": "string"},
                                "timeframes": {"type": "string", "enum": ["all"]},
                            },
                            "required": ["fuzzy_set", "timeframes"],
                        },
                        "minItems": 1,
                    },
                    "model": section,
                    "decisions": section,
                    "training": section,
                },
                "required": [*REQUIRED_V3, "version", "description"],
            },
        }
    return {
        "name": TOOL_NAME,
        "description": "Save the designed ktrdr v2 strategy. The input is the whole strategy.",
        "input_schema": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "description": {"type": "string", "description": "one-sentence hypothesis"},
                "version": {"type": "string", "enum": ["1.0"]},
                "scope": {"type": "string", "enum": ["symbol_specific"]},
                "training_data": section,
                "deployment": section,
                "indicators": {"type": "array", "items": {"type": "object"}, "minItems": 1},
                "fuzzy_sets": section,
                "model": section,
                "decisions": section,
                "training": section,
            },
            # The schema's required keys, plus the hypothesis the designer must state.
            "required": [*REQUIRED_TOP_LEVEL, "description"],
        },
    }


def sanitize_name(raw: Any, fingerprint: str) -> str:
    """The model's name if it follows ktrdr's rule, else a cleaned one; never empty."""
    text = str(raw or "").strip()
    if STRATEGY_NAME.match(text) and len(text) <= 90:
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_-")[:80]
    return cleaned if cleaned else f"llm_design_{fingerprint[:8]}"


# --- one exchange with the API ---


def _attempt(
    client: httpx.Client,
    settings: Settings,
    messages: list[dict[str, Any]],
    avoid: set[str],
) -> tuple[dict[str, Any] | None, list[FieldError], list[dict[str, Any]]]:
    """One request: (valid config, []) or (None, field errors) plus the assistant content."""
    reply = _post(client, settings, messages)
    call = next(
        (b for b in reply if b.get("type") == "tool_use" and b.get("name") == TOOL_NAME), None
    )
    if call is None or not isinstance(call.get("input"), dict):
        return None, [FieldError("", "no save_strategy tool call with an object input")], reply
    config = dict(call["input"])
    fingerprint = design_fingerprint(config)
    config["name"] = sanitize_name(config.get("name"), fingerprint)
    if fingerprint in avoid:
        duplicate = FieldError(
            "indicators", "this design repeats one already tried: change indicators or params"
        )
        return None, [duplicate], reply
    wrong_format = _format_error(config, settings.strategy_format)
    if wrong_format is not None:
        return None, [wrong_format], reply
    try:
        check_any_strategy(config, f"LLM design '{config['name']}'", stem=config["name"])
    except StrategyValidationError as exc:
        return None, exc.errors, reply
    return config, [], reply


def _format_error(config: Mapping[str, Any], strategy_format: str) -> FieldError | None:
    # A valid strategy in the other format would be refused by the backend this is for.
    if strategy_format == "v3" and not is_v3(config):
        return FieldError(
            "indicators",
            "write ktrdr v3: indicators as a mapping of indicator_id -> {type, params} and an "
            "nn_inputs list (this backend refuses v2)",
        )
    if strategy_format == "v2" and is_v3(config):
        return FieldError(
            "indicators", "write ktrdr v2: indicators as a list of {name, feature_id, params}"
        )
    return None


def _post(
    client: httpx.Client, settings: Settings, messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    url = f"{settings.anthropic_base_url.rstrip('/')}/v1/messages"
    body = {
        "model": settings.anthropic_model,
        "max_tokens": MAX_TOKENS,
        "tools": [tool_definition(settings.strategy_format)],
        "tool_choice": {"type": "tool", "name": TOOL_NAME},
        "messages": messages,
    }
    headers = {
        "x-api-key": settings.anthropic_api_key.get_secret_value()
        if settings.anthropic_api_key
        else "",
        "anthropic-version": ANTHROPIC_VERSION,
        "content-type": "application/json",
    }
    try:
        response = client.post(url, json=body, headers=headers)
    except httpx.TimeoutException:
        raise DesignError(
            f"the Anthropic API at {settings.anthropic_base_url} did not answer within "
            f"{settings.anthropic_timeout_s:g}s (KTRDR_ANTHROPIC_TIMEOUT_S)"
        ) from None
    except httpx.HTTPError as exc:
        raise DesignError(
            f"cannot reach the Anthropic API at {settings.anthropic_base_url}: {type(exc).__name__}"
        ) from None
    if response.status_code >= 400:
        raise DesignError(
            f"the Anthropic API answered {response.status_code}: {_api_message(response)}"
        )
    try:
        content = response.json()["content"]
    except (ValueError, KeyError, TypeError):
        raise DesignError("the Anthropic API answered without a message content") from None
    if not isinstance(content, list):
        raise DesignError("the Anthropic API answered with a malformed message content")
    return [block for block in content if isinstance(block, dict)]


def _api_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return str(error.get("message") or error.get("type") or response.reason_phrase)
    except (ValueError, AttributeError):
        return response.reason_phrase or "no detail"


def _correction(reply: list[dict[str, Any]], errors: list[FieldError]) -> list[dict[str, Any]]:
    listed = "\n".join(f"- {error}" for error in errors)
    text = (
        f"The strategy is invalid:\n{listed}\nFix every error and call {TOOL_NAME} again "
        "with the whole corrected strategy."
    )
    call = next((b for b in reply if b.get("type") == "tool_use"), None)
    if call is None or not call.get("id"):
        return [{"type": "text", "text": text}]
    return [{"type": "tool_result", "tool_use_id": call["id"], "is_error": True, "content": text}]


def _save_unique(directory: Path, config: dict[str, Any]) -> Path:
    base = config["name"]
    suffix = design_fingerprint(config)[:6]
    for attempt in range(10):
        if attempt:
            config["name"] = f"{base}_{suffix}" if attempt == 1 else f"{base}_{suffix}_{attempt}"
        if (Path(directory) / f"{config['name']}.yaml").exists():
            continue
        try:
            return save_strategy(directory, config)
        except StrategyExistsError:
            continue
    raise DesignError(f"no free file name for the LLM design '{base}' in {directory}")


# --- prompt pieces ---


def _catalogue_line(
    spec: IndicatorSpec, datasets: Sequence[Dataset], strategy_format: str = "v3"
) -> str:
    params = ", ".join(_param_text(p) for p in spec.params) or "none"
    low, high = spec.output_range
    bounds = f"{'-inf' if low is None else f'{low:g}'}..{'inf' if high is None else f'{high:g}'}"
    defaults = {p.name: p.default for p in spec.params}
    spreads_by_dataset = {
        f"{d.symbol} {d.timeframe}": "/".join(f"{v:.4g}" for v in typical_spread(spec, defaults, d))
        for d in datasets
        if spec in usable_indicators(d)
    }
    if len(set(spreads_by_dataset.values())) == 1:
        spreads = f"every dataset: {next(iter(spreads_by_dataset.values()))}"
    else:
        spreads = "; ".join(f"{k}: {v}" for k, v in spreads_by_dataset.items())
    if strategy_format == "v3":
        outputs = f"outputs {', '.join(spec.outputs)}" if spec.outputs else "single output"
        return (
            f"- {spec.name.lower()} [{spec.family}]: {params}; {outputs} (first: "
            f"{spec.output}), {bounds}; {spreads}"
        )
    return f"- {spec.name} [{spec.family}]: {params}; output {spec.output}, {bounds}; {spreads}"


def _param_text(p: Any) -> str:
    if p.choices:
        return f"{p.name} ({p.default}; {'/'.join(p.choices)})"
    if p.low is not None and p.high is not None:
        return f"{p.name} ({p.default}; {p.low:g}-{p.high:g})"
    return f"{p.name} ({p.default})"


def _history_text(history: Sequence[Mapping[str, Any]]) -> str:
    if not history:
        return "History: none yet (this is the first design)."
    # The history comes newest first (the store's `recent_history`): the newest are its head.
    recent = list(history)[:HISTORY_SHOWN]
    keys = ("strategy_name", "verdict", "test_accuracy", "test_loss", "indicators", "symbols")
    rows = [json.dumps({k: entry.get(k) for k in keys}, default=str) for entry in recent]
    return (
        f"History (the newest {len(recent)} of {len(history)} designs, newest first):\n"
        + "\n".join(rows)
    )
