"""The ktrdr v3 strategy format (today's ktrdr, 2c5c7173): schema, validation, writing.

A document is v3 when `indicators` is a mapping and `nn_inputs` is present, the test ktrdr
itself applies (`ktrdr-strategy-format-v3.md` section 1). Two levels, as for v2:
`validate_v3` accepts what ktrdr's `StrategyConfigurationV3` parse and `validate_v3_strategy`
accept and words its errors the same way (every reference resolves, dot notation names a real
output, nn_inputs timeframes are trained ones), plus the file rule a real deployment depends
on (`name` equals the file stem). `trainability_errors_v3` adds what ktrdr only finds after a
200 on start (unknown indicator type, bad membership functions, an MLP without hidden layers).
`resolve_features` is the one feature order (nn_inputs x timeframes x memberships) that the
training host and its model metadata share. `check_any_strategy` / `validate_any_strategy`
take either format (v2 goes to `strategy_schema`): what the designers, `ktrdr strategy
validate` and the training host call. Pure: no I/O beyond turning a document into text.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ktrdr_tasks.catalogue import (
    V3_TYPE_NAMES,
    IndicatorSpec,
    find_v3_indicator,
    is_v3_type,
)
from ktrdr_tasks.errors import (
    FieldError,
    StrategyValidationError,
    V3ParseError,
    V3ValidationError,
)
from ktrdr_tasks.strategy_schema import (
    STRATEGY_NAME,
    DeploymentConfig,
    StrategyConfig,
    TrainingDataConfig,
    TrainingDataReader,
    check_strategy,
    validate_strategy,
)

V3_VERSION = "3.0"
# The sections `StrategyConfigurationV3` requires (a missing one: 400 STRATEGY-V3ParseFailed).
REQUIRED_V3 = (
    "name",
    "training_data",
    "indicators",
    "fuzzy_sets",
    "nn_inputs",
    "model",
    "decisions",
    "training",
)
LABEL_SOURCES = ("zigzag", "forward_return", "context", "regime", "triple_barrier")
MODEL_TYPES = ("mlp", "lstm", "gru")
# ktrdr's membership registry: the three shapes and their `<name>mf` aliases.
MF_PARAMS = {"triangular": 3, "trapezoidal": 4, "gaussian": 2}
MF_CLASS = {"triangular": "TriangularMF", "trapezoidal": "TrapezoidalMF", "gaussian": "GaussianMF"}


def is_v3(document: object) -> bool:
    """ktrdr's own test: a mapping of indicators and an `nn_inputs` key."""
    return (
        isinstance(document, Mapping)
        and isinstance(document.get("indicators"), Mapping)
        and "nn_inputs" in document
    )


class _Open(BaseModel):
    """A v3 section: declared keys are typed, any other key is kept (ktrdr ignores them)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class IndicatorV3(_Open):
    """`<indicator_id>: {type, <param>: value, ...}`: every key but `type` is a parameter."""

    type: str

    @property
    def params(self) -> dict[str, Any]:
        """The parameters as written (`data_source` routes to context data; not a parameter)."""
        return {k: v for k, v in (self.model_extra or {}).items() if k != "data_source"}

    @property
    def spec(self) -> IndicatorSpec | None:
        return find_v3_indicator(self.type)


class FuzzySetV3(_Open):
    """`<fuzzy_set_id>: {indicator: <id>[.<output>], <membership>: ...}` in YAML order."""

    indicator: str

    @model_validator(mode="before")
    @classmethod
    def _expand_shorthand(cls, data: Any) -> Any:
        # ktrdr reads `neutral: [30, 50, 70]` as a triangular membership.
        if not isinstance(data, Mapping):
            return data
        return {
            key: {"type": "triangular", "parameters": value}
            if key != "indicator" and isinstance(value, list)
            else value
            for key, value in data.items()
        }

    @property
    def memberships(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class NNInputV3(_Open):
    """One entry of `nn_inputs`: exactly one of fuzzy_set / raw_indicator, on some timeframes."""

    fuzzy_set: str | None = None
    raw_indicator: str | None = None
    timeframes: list[str] | str
    normalization: Literal["minmax", "zscore", "none"] | None = None

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> NNInputV3:
        # ktrdr's wording, so a person sees the message its backend would send.
        if self.fuzzy_set and self.raw_indicator:
            raise ValueError("Specify either fuzzy_set or raw_indicator, not both")
        if not self.fuzzy_set and not self.raw_indicator:
            raise ValueError("Must specify either fuzzy_set or raw_indicator")
        if self.normalization and self.fuzzy_set:
            raise ValueError("normalization is only valid with raw_indicator, not fuzzy_set")
        return self


class ArchitectureV3(_Open):
    hidden_layers: list[int] | None = None
    dropout: float = 0.2
    activation: str = "relu"


class ModelV3(_Open):
    type: str = "mlp"
    architecture: ArchitectureV3 = Field(default_factory=ArchitectureV3)


class LabelsV3(_Open):
    source: str = "zigzag"
    zigzag_threshold: float = 0.02
    label_lookahead: int = 10


class DataSplitV3(_Open):
    """Fractions in bar order: train, then validation, then the rest is test."""

    train: float = 0.7
    validation: float = 0.15
    test: float | None = None


class TrainingV3(_Open):
    """`training:`, where v3 reads epochs, batch size and learning rate (not `model.training`)."""

    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 0.001
    loss: str = "cross_entropy"
    labels: LabelsV3 = Field(default_factory=LabelsV3)
    data_split: DataSplitV3 = Field(default_factory=DataSplitV3)


class StrategyConfigV3(TrainingDataReader):
    """A validated ktrdr v3 strategy, with what the chain and the training host read."""

    name: str
    description: str | None = None
    version: str = V3_VERSION
    training_data: TrainingDataConfig
    context_data: list[dict[str, Any]] | None = None
    deployment: DeploymentConfig | None = None
    indicators: dict[str, IndicatorV3]
    fuzzy_sets: dict[str, FuzzySetV3]
    nn_inputs: list[NNInputV3]
    # Free mappings in ktrdr; read through the typed views below once validated.
    model: dict[str, Any]
    decisions: dict[str, Any]
    training: dict[str, Any]

    @property
    def format(self) -> str:
        return "v3"

    @property
    def model_section(self) -> ModelV3:
        return ModelV3.model_validate(self.model)

    @property
    def training_section(self) -> TrainingV3:
        return TrainingV3.model_validate(self.training)

    @property
    def epochs(self) -> int:
        return self.training_section.epochs


@dataclass(frozen=True)
class ResolvedFeature:
    """One network input: `<tf>_<fuzzy set>_<membership>` or `<tf>_<indicator ref>_raw`."""

    feature_id: str
    timeframe: str
    indicator_id: str
    output: str | None
    fuzzy_set_id: str | None
    membership: str | None

    @property
    def raw(self) -> bool:
        return self.fuzzy_set_id is None


def split_reference(reference: str) -> tuple[str, str | None]:
    """`macd_12_26_9.histogram` -> ("macd_12_26_9", "histogram"); no dot -> (ref, None)."""
    base, _, output = reference.partition(".")
    return base, output or None


def resolve_features(config: StrategyConfigV3, timeframes: Sequence[str]) -> list[ResolvedFeature]:
    """The inputs in ktrdr's order: nn_inputs order, then timeframes, then memberships."""
    features: list[ResolvedFeature] = []
    for entry in config.nn_inputs:
        chosen = _entry_timeframes(entry, timeframes)
        if entry.fuzzy_set is not None:
            fuzzy_set = config.fuzzy_sets[entry.fuzzy_set]
            indicator_id, output = split_reference(fuzzy_set.indicator)
            for timeframe, membership in itertools.product(chosen, fuzzy_set.memberships):
                features.append(
                    ResolvedFeature(
                        f"{timeframe}_{entry.fuzzy_set}_{membership}",
                        timeframe,
                        indicator_id,
                        output,
                        entry.fuzzy_set,
                        membership,
                    )
                )
        else:
            reference = str(entry.raw_indicator)
            indicator_id, output = split_reference(reference)
            for timeframe in chosen:
                features.append(
                    ResolvedFeature(
                        f"{timeframe}_{reference}_raw", timeframe, indicator_id, output, None, None
                    )
                )
    return features


def _entry_timeframes(entry: NNInputV3, trained: Sequence[str]) -> list[str]:
    # `timeframes: 1h` (a string but not "all") means that one timeframe, not '1' and 'h'.
    if entry.timeframes == "all":
        return list(trained)
    if isinstance(entry.timeframes, str):
        return [entry.timeframes]
    return list(entry.timeframes)


# --- ktrdr's validator ---


def validate_v3(
    document: Mapping[str, Any], source: str = "strategy", stem: str | None = None
) -> StrategyConfigV3:
    """Parse and validate as ktrdr does; `stem` (the file name) must equal `name` when given."""
    if not isinstance(document, Mapping):
        raise V3ParseError(
            [FieldError("", f"a strategy is a YAML mapping, got {type(document).__name__}")],
            source,
        )
    try:
        config = StrategyConfigV3.model_validate(dict(document))
    except ValidationError as exc:
        raise V3ParseError([_parse_error(detail) for detail in exc.errors()], source) from None
    errors = _name_errors(config.name, stem) + reference_errors(config)
    if errors:
        raise V3ValidationError(errors, source)
    return config


def reference_errors(config: StrategyConfigV3) -> list[FieldError]:
    """ktrdr's `validate_v3_strategy`: every reference resolves, in its own words."""
    errors: list[FieldError] = []
    indicator_ids = ", ".join(sorted(config.indicators))
    for fuzzy_set_id, fuzzy_set in config.fuzzy_sets.items():
        field = f"fuzzy_sets.{fuzzy_set_id}.indicator"
        indicator_id, output = split_reference(fuzzy_set.indicator)
        if indicator_id not in config.indicators:
            errors.append(
                FieldError(
                    field,
                    f"'{indicator_id}' not found in indicators. "
                    f"Available indicators: {indicator_ids}",
                )
            )
        elif output is not None:
            message = _fuzzy_output_error(indicator_id, config.indicators[indicator_id], output)
            if message:
                errors.append(FieldError(field, message))
    for index, entry in enumerate(config.nn_inputs):
        if entry.raw_indicator is not None:
            errors.extend(_raw_reference_errors(index, entry.raw_indicator, config, indicator_ids))
        elif entry.fuzzy_set not in config.fuzzy_sets:
            errors.append(
                FieldError(
                    f"nn_inputs[{index}].fuzzy_set",
                    f"'{entry.fuzzy_set}' not found in fuzzy_sets. "
                    f"Available fuzzy_sets: {', '.join(sorted(config.fuzzy_sets))}",
                )
            )
    available = config.timeframes
    for index, entry in enumerate(config.nn_inputs):
        for timeframe in _entry_timeframes(entry, available):
            if timeframe not in available:
                errors.append(
                    FieldError(
                        f"nn_inputs[{index}].timeframes",
                        f"Invalid timeframe '{timeframe}'. "
                        f"Available timeframes: {', '.join(sorted(available))}",
                    )
                )
    for fuzzy_set_id, fuzzy_set in config.fuzzy_sets.items():
        if not fuzzy_set.memberships:
            errors.append(
                FieldError(
                    f"fuzzy_sets.{fuzzy_set_id}",
                    "Fuzzy set has no membership functions defined. At least one membership "
                    "function is required (e.g., oversold, overbought).",
                )
            )
    errors.extend(_decision_errors(config.decisions))
    return errors


def _fuzzy_output_error(indicator_id: str, indicator: IndicatorV3, output: str) -> str | None:
    spec = indicator.spec
    if spec is None:
        return None  # ktrdr skips the check for an unknown type; training then fails on it
    if not spec.outputs:
        return (
            f"Indicator '{indicator_id}' (type: {indicator.type}) is single-output and does "
            f"not support dot notation. Remove '.{output}' from reference."
        )
    if output not in spec.outputs:
        return (
            f"Invalid output '{output}' for {indicator.type} indicator '{indicator_id}'. "
            f"Valid outputs: {', '.join(spec.outputs)}"
        )
    return None


def _raw_reference_errors(
    index: int, reference: str, config: StrategyConfigV3, indicator_ids: str
) -> list[FieldError]:
    field = f"nn_inputs[{index}].raw_indicator"
    indicator_id, output = split_reference(reference)
    indicator = config.indicators.get(indicator_id)
    if indicator is None:
        message = f"'{indicator_id}' not found in indicators. Available indicators: {indicator_ids}"
        return [FieldError(field, message)]
    spec = indicator.spec
    if output is None or spec is None:
        return []
    if not spec.outputs:
        message = f"'{indicator_id}' is single-output but dot notation '.{output}' was used"
        return [FieldError(field, message)]
    if output not in spec.outputs:
        message = (
            f"'{output}' is not a valid output of '{indicator.type}'. "
            f"Valid outputs: {', '.join(spec.outputs)}"
        )
        return [FieldError(field, message)]
    return []


def _decision_errors(decisions: Mapping[str, Any]) -> list[FieldError]:
    output_format = decisions.get("output_format", "classification")
    if output_format == "classification":
        return []
    if output_format != "regression":
        return [
            FieldError(
                "",
                "decisions.output_format must be 'classification' or 'regression', "
                f"got '{output_format}'",
            )
        ]
    cost_model = decisions.get("cost_model")
    if not isinstance(cost_model, Mapping) or not cost_model:
        return [
            FieldError(
                "decisions.cost_model",
                "is required for regression mode (must include round_trip_cost and "
                "min_edge_multiplier)",
            )
        ]
    errors = []
    for key in ("round_trip_cost", "min_edge_multiplier"):
        value = cost_model.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            errors.append(FieldError(f"decisions.cost_model.{key}", "must be a positive number"))
    return errors


def _name_errors(name: str, stem: str | None) -> list[FieldError]:
    errors = []
    if not STRATEGY_NAME.match(name):
        errors.append(
            FieldError(
                "name",
                f"Strategy name '{name}' may only contain alphanumerics, dashes, or underscores",
            )
        )
    if stem is not None and name != stem:
        errors.append(
            FieldError(
                "name",
                f"'{name}' must equal the file name '{stem}': ktrdr finds the file by its stem "
                "but stores the model under the name, so a later backtest of "
                f"'{stem}' would miss it",
            )
        )
    return errors


def _parse_error(detail: Any) -> FieldError:
    # pydantic's own words, as ktrdr's "V3 strategy structure invalid" answer carries them.
    field = ".".join(str(part) for part in detail["loc"])
    return FieldError(field, str(detail["msg"]))


# --- either format ---


def validate_any_strategy(
    document: Mapping[str, Any], source: str = "strategy", stem: str | None = None
) -> StrategyConfig | StrategyConfigV3:
    """ktrdr's validator for the document's format: v3 here, v2 by `strategy_schema`.

    `stem`, the file name without `.yaml`, is held to `name` for v3 (v2 ignores it).
    """
    if is_v3(document):
        return validate_v3(document, source, stem)
    return validate_strategy(document, source)


def check_any_strategy(
    document: Mapping[str, Any], source: str = "strategy", stem: str | None = None
) -> StrategyConfig | StrategyConfigV3:
    """Validator and trainer rules of the document's format: what must hold to train it."""
    if is_v3(document):
        return check_strategy_v3(document, source, stem)
    return check_strategy(document, source)


# --- ktrdr's trainer rules (refused only after a 200 on start) ---


def trainability_errors_v3(config: StrategyConfigV3) -> list[FieldError]:
    """What ktrdr's training worker fails on although its validator accepted the file."""
    errors: list[FieldError] = []
    available = sorted(V3_TYPE_NAMES)
    for indicator_id, indicator in config.indicators.items():
        if not is_v3_type(indicator.type):
            errors.append(
                FieldError(
                    f"indicators.{indicator_id}.type",
                    f"Unknown indicator type '{indicator.type}'. Available: {available}",
                )
            )
    for fuzzy_set_id, fuzzy_set in config.fuzzy_sets.items():
        for name, definition in fuzzy_set.memberships.items():
            message = membership_error_v3(name, definition)
            if message:
                errors.append(FieldError(f"fuzzy_sets.{fuzzy_set_id}.{name}", message))
    errors.extend(_section_errors("model", ModelV3, config.model))
    errors.extend(_section_errors("training", TrainingV3, config.training))
    if errors:
        return errors
    errors.extend(_model_errors(config.model_section))
    errors.extend(_training_errors(config.training_section))
    if not config.timeframes:
        errors.append(
            FieldError(
                "training_data.timeframes",
                "TimeframeConfiguration must have either 'timeframe' or 'timeframes' set",
            )
        )
    return errors


def check_strategy_v3(
    document: Mapping[str, Any], source: str = "strategy", stem: str | None = None
) -> StrategyConfigV3:
    """Validator and trainer rules together: what must hold for a v3 strategy to train."""
    config = validate_v3(document, source, stem)
    errors = trainability_errors_v3(config)
    if errors:
        raise StrategyValidationError(errors, source)
    return config


def membership_error_v3(name: str, definition: Any) -> str | None:
    """ktrdr's membership rules for one function, with its error codes and the reason."""
    if not isinstance(definition, Mapping):
        return f"[ENGINE-MFCreationError] Failed to create membership function '{name}'"
    kind = str(definition.get("type", "triangular")).lower().removesuffix("mf")
    if kind not in MF_PARAMS:
        return (
            f"[ENGINE-MFCreationError] Failed to create membership function '{name}': "
            f"type '{definition.get('type')}' is not one of {', '.join(MF_PARAMS)}"
        )
    values = definition.get("parameters")
    prefix = f"[MF-InvalidParameters] Invalid parameters for {MF_CLASS[kind]}"
    if not isinstance(values, list) or len(values) != MF_PARAMS[kind]:
        count = len(values) if isinstance(values, list) else 0
        return f"{prefix}: needs exactly {MF_PARAMS[kind]} parameters, got {count}"
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        return f"{prefix}: parameters must be numbers, got {values}"
    if kind == "gaussian":
        return None if values[1] > 0 else f"{prefix}: sigma must be > 0, got {values[1]}"
    if any(a > b for a, b in itertools.pairwise(values)):
        return f"{prefix}: parameters must be in ascending order, got {values}"
    return None


def _section_errors(section: str, model: type[BaseModel], value: Any) -> list[FieldError]:
    try:
        model.model_validate(value)
    except ValidationError as exc:
        return [
            FieldError(".".join([section, *(str(p) for p in detail["loc"])]), str(detail["msg"]))
            for detail in exc.errors()
        ]
    return []


def _model_errors(model: ModelV3) -> list[FieldError]:
    errors = []
    if model.type not in MODEL_TYPES:
        errors.append(FieldError("model.type", f"Unknown model type: {model.type}"))
    layers = model.architecture.hidden_layers
    if model.type == "mlp" and not layers:
        errors.append(
            FieldError(
                "model.architecture.hidden_layers",
                "'hidden_layers' is required for an mlp: a list of layer sizes, e.g. [32, 16]",
            )
        )
    elif layers and any(size < 1 for size in layers):
        errors.append(
            FieldError("model.architecture.hidden_layers", f"sizes must be >= 1, got {layers}")
        )
    if not 0 <= model.architecture.dropout < 1:
        errors.append(FieldError("model.architecture.dropout", "must be in [0, 1)"))
    return errors


def _training_errors(training: TrainingV3) -> list[FieldError]:
    errors = []
    for key in ("epochs", "batch_size", "learning_rate"):
        value = getattr(training, key)
        if not 0 < value < float("inf"):  # NaN fails every comparison, so ask for the range
            errors.append(FieldError(f"training.{key}", f"must be > 0, got {value}"))
    labels = training.labels
    if labels.source not in LABEL_SOURCES:
        errors.append(
            FieldError(
                "training.labels.source",
                f"Unknown label source '{labels.source}': use one of {', '.join(LABEL_SOURCES)}",
            )
        )
    if labels.source == "zigzag" and not 0 < labels.zigzag_threshold < 1:
        errors.append(
            FieldError(
                "training.labels.zigzag_threshold",
                f"must be a fraction between 0 and 1, got {labels.zigzag_threshold}",
            )
        )
    split = training.data_split
    test = split.test if split.test is not None else 1 - split.train - split.validation
    if min(split.train, split.validation, test) < 0 or split.train <= 0 or test <= 0:
        errors.append(
            FieldError(
                "training.data_split",
                f"train {split.train} + validation {split.validation} must leave a test share "
                "(fractions in bar order)",
            )
        )
    return errors


# --- writing ---

# The order a strategy file is written in: identity, data, the v3 sections, model and training.
SECTION_ORDER = (
    "name",
    "description",
    "version",
    "training_data",
    "deployment",
    "indicators",
    "fuzzy_sets",
    "nn_inputs",
    "model",
    "decisions",
    "training",
)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def strategy_text(document: Mapping[str, Any]) -> str:
    """The document as YAML in the format's key order; the version stays a quoted string."""
    ordered = {key: document[key] for key in SECTION_ORDER if key in document}
    ordered.update({key: value for key, value in document.items() if key not in ordered})
    return yaml.safe_dump(
        _plain(ordered), sort_keys=False, default_flow_style=None, allow_unicode=True, width=100
    )


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def essence_view(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """A v3 document seen in v2's shape (indicator list, sets by indicator), for fingerprints.

    The history check compares designs by what is trained; this lets the same comparison
    read both formats. A v2 document is returned unchanged.
    """
    if not is_v3(document):
        return document
    items = []
    for indicator_id, definition in _mapping(document.get("indicators")).items():
        if not isinstance(definition, Mapping):
            continue
        spec = find_v3_indicator(str(definition.get("type")))
        params = {k: v for k, v in definition.items() if k != "type"}
        name = spec.name if spec else definition.get("type")
        items.append({"name": name, "feature_id": indicator_id, **params})
    sets: dict[str, dict[str, Any]] = {}
    for fuzzy_set in _mapping(document.get("fuzzy_sets")).values():
        if not isinstance(fuzzy_set, Mapping):
            continue
        try:
            parsed = FuzzySetV3.model_validate(fuzzy_set)
        except ValidationError:
            continue
        sets.setdefault(parsed.indicator, {}).update(parsed.memberships)
    training = _mapping(document.get("training"))
    model = dict(_mapping(document.get("model")))
    read = ("epochs", "batch_size", "learning_rate")
    model["training"] = {key: training[key] for key in read if key in training}
    return {**document, "indicators": items, "fuzzy_sets": sets, "model": model}


__all__ = [
    "REQUIRED_V3",
    "SECTION_ORDER",
    "ResolvedFeature",
    "StrategyConfigV3",
    "check_any_strategy",
    "check_strategy_v3",
    "essence_view",
    "is_v3",
    "resolve_features",
    "strategy_text",
    "trainability_errors_v3",
    "validate_any_strategy",
    "validate_v3",
]
