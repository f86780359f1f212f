"""The ktrdr v2 strategy format as a pydantic schema, with ktrdr's validator and trainer rules.

Two levels, as on a real ktrdr backend (`ktrdr-strategy-format.md`): `validate_strategy`
accepts what ktrdr's `StrategyValidator` accepts and words its errors the same way (section 9);
`trainability_errors` adds what only ktrdr's trainer refuses later, after a 200 on start
(exact lower-case membership types, ordered parameters, an MLP with hidden layers, zigzag
labels, trainable indicators). `check_strategy` runs both: the designer calls it before
saving, `ktrdr strategy validate` calls it, and the reference training host calls it before
training. Extra keys (`orchestrator`, `hypothesis`, ...) are allowed everywhere, so a file a
ktrdr backend accepts is never refused here. No I/O: files are read by `ktrdr_tasks.strategy`
(`load_strategy_file` is its bounded reader), and the name rule, the symbol/timeframe reading
and the date rules are that module's too, so the schema and the chain never disagree.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from ktrdr_tasks.catalogue import IndicatorSpec, find_indicator, param_errors, resolve_params
from ktrdr_tasks.errors import FieldError, StrategyValidationError
from ktrdr_tasks.strategy import STRATEGY_NAME as STRATEGY_NAME  # the one name rule
from ktrdr_tasks.strategy import (
    date_problem,
    date_selection,
    date_text,
    is_strategy_name,
    read_strategy_file,
    selection_names,
)

# The one bounded reader, under the name the host, the tools and the tests know it by.
load_strategy_file = read_strategy_file

FEATURE_ID = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]*$")
RESERVED_FEATURE_IDS = frozenset({"open", "high", "low", "close", "volume"})

# Parameter counts ktrdr's validator checks; it also accepts the three aliases, which the
# trainer then refuses ("validator vs trainer trap", spec section 5).
VALIDATOR_MF_PARAMS = {
    "triangular": 3,
    "triangle": 3,
    "trapezoidal": 4,
    "trapezoid": 4,
    "gaussian": 2,
    "sigmoid": 2,
}
TRAINER_MF_PARAMS = {"triangular": 3, "trapezoidal": 4, "gaussian": 2}

_SECTION_LABEL = {"model": "model", "decisions": "decisions", "training": "training"}


class _Open(BaseModel):
    """A section of the format: declared keys are typed, any other key is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


def _date_text(value: Any) -> str | None:
    # The chain's date rule (ktrdr_tasks.strategy), raised as a field error here.
    text = date_text(value)
    problem = None if text is None else date_problem(text)
    if problem:
        raise PydanticCustomError("date_format", "{problem}", {"problem": problem})
    return text


class SymbolsConfig(_Open):
    mode: Literal["single", "multi_symbol"]
    symbol: str | None = None
    list_: list[str] | None = Field(None, validation_alias=AliasChoices("list", "symbols"))

    @model_validator(mode="after")
    def _multi_needs_list(self) -> SymbolsConfig:
        if self.mode == "multi_symbol" and not self.list_:
            raise PydanticCustomError("multi_symbol", "Multi-symbol mode requires a symbol list")
        return self

    @property
    def names(self) -> list[str]:
        return selection_names({"symbol": self.symbol, "list": self.list_}, "symbol")


class TimeframesConfig(_Open):
    mode: Literal["single", "multi_timeframe"]
    timeframe: str | None = None
    list_: list[str] | None = Field(None, validation_alias=AliasChoices("list", "timeframes"))
    base_timeframe: str | None = None

    @model_validator(mode="after")
    def _multi_needs_two(self) -> TimeframesConfig:
        if self.mode == "multi_timeframe" and len(self.list_ or []) < 2:
            raise PydanticCustomError(
                "multi_timeframe", "Multi-timeframe mode requires at least 2 timeframes"
            )
        return self

    @property
    def names(self) -> list[str]:
        return selection_names({"timeframe": self.timeframe, "list": self.list_}, "timeframe")


class DateRange(_Open):
    start: str | None = None
    end: str | None = None

    _dates = field_validator("start", "end", mode="before")(_date_text)


class TrainingDataConfig(_Open):
    symbols: SymbolsConfig
    timeframes: TimeframesConfig
    history_required: int = 200
    start_date: str | None = None
    end_date: str | None = None
    date_range: DateRange | None = None

    _dates = field_validator("start_date", "end_date", mode="before")(_date_text)

    @field_validator("history_required")
    @classmethod
    def _enough_history(cls, value: int) -> int:
        if value < 50:
            raise PydanticCustomError(
                "history_required", "History required must be at least 50 bars"
            )
        return value

    @model_validator(mode="after")
    def _date_order(self) -> TrainingDataConfig:
        start, end = self.start, self.end
        if start and end and start > end:
            raise PydanticCustomError(
                "date_order",
                "start date {start} is after end date {end}",
                {"start": start, "end": end},
            )
        return self

    @property
    def start(self) -> str | None:
        return self.dates()[0]

    @property
    def end(self) -> str | None:
        return self.dates()[1]

    def dates(self) -> tuple[str | None, str | None]:
        """(start, end) with the chain's precedence: `date_range` first, then `*_date`."""
        written = {
            "date_range": self.date_range.model_dump() if self.date_range else None,
            "start_date": self.start_date,
            "end_date": self.end_date,
        }
        start, end = date_selection(written)
        return date_text(start), date_text(end)


class TargetSymbols(_Open):
    mode: Literal["training_only", "universal", "group_restricted"]


class TargetTimeframes(_Open):
    mode: Literal["single", "multi_timeframe"]
    timeframe: str | None = None
    supported: list[str] | None = None

    @model_validator(mode="after")
    def _multi_needs_supported(self) -> TargetTimeframes:
        if self.mode == "multi_timeframe" and not self.supported:
            raise PydanticCustomError(
                "multi_timeframe", "Multi-timeframe deployment requires a 'supported' list"
            )
        return self


class DeploymentConfig(_Open):
    target_symbols: TargetSymbols
    target_timeframes: TargetTimeframes


class IndicatorConfig(_Open):
    name: str
    feature_id: str
    params: dict[str, Any] | None = None

    @property
    def spec(self) -> IndicatorSpec | None:
        """The catalogue entry (None only for a config built without validation)."""
        return find_indicator(self.name)

    @property
    def resolved_params(self) -> dict[str, Any]:
        """Every parameter ktrdr will compute with: defaults, flat keys, nested `params:`."""
        return resolve_params(self.model_dump(by_alias=True))


class FuzzySet(_Open):
    type: str
    parameters: list[float] = Field(default_factory=list)


class Architecture(_Open):
    hidden_layers: list[int] | None = None
    activation: str = "relu"
    dropout: float = 0.2


class Features(_Open):
    lookback_periods: int = Field(0, ge=0)


class ModelTraining(_Open):
    learning_rate: float = 0.001
    batch_size: int = 32
    epochs: int = 100
    optimizer: str = "adam"
    weight_decay: float = 0.0001
    early_stopping: dict[str, Any] | None = None


class ModelConfig(_Open):
    type: str
    architecture: Architecture
    features: Features
    training: ModelTraining


class DecisionsConfig(_Open):
    output_format: str
    confidence_threshold: float
    position_awareness: bool


class LabelsConfig(_Open):
    source: str = "zigzag"
    zigzag_threshold: float | None = None
    label_lookahead: int | None = None


class DataSplit(_Open):
    # ktrdr reads only these two; train/validation/test are accepted and ignored (spec §8).
    test_size: float = 0.1
    validation_size: float = 0.2


class TrainingConfig(_Open):
    method: str
    labels: LabelsConfig
    data_split: DataSplit


class TrainingDataReader(_Open):
    """What every strategy format reads the same way: the data it trains on (v2 and v3)."""

    if TYPE_CHECKING:
        training_data: TrainingDataConfig

    @property
    def symbols(self) -> list[str]:
        return self.training_data.symbols.names

    @property
    def timeframes(self) -> list[str]:
        return self.training_data.timeframes.names

    @property
    def start_date(self) -> str | None:
        return self.training_data.start

    @property
    def end_date(self) -> str | None:
        return self.training_data.end


class StrategyConfig(TrainingDataReader):
    """A validated ktrdr v2 strategy, with what the chain and the training host read."""

    name: str
    description: str | None = None
    version: str
    scope: Literal["universal", "symbol_group", "symbol_specific"]
    training_data: TrainingDataConfig
    deployment: DeploymentConfig
    indicators: list[IndicatorConfig] = Field(min_length=1)
    fuzzy_sets: dict[str, dict[str, FuzzySet]]
    model: ModelConfig
    decisions: DecisionsConfig
    training: TrainingConfig

    @property
    def labels(self) -> LabelsConfig:
        return self.training.labels

    @property
    def data_split(self) -> DataSplit:
        return self.training.data_split

    @property
    def feature_ids(self) -> list[str]:
        return [indicator.feature_id for indicator in self.indicators]

    @property
    def format(self) -> str:
        return "v2"

    @property
    def epochs(self) -> int:
        return self.model.training.epochs


REQUIRED_TOP_LEVEL = (
    "name",
    "version",
    "scope",
    "training_data",
    "deployment",
    "indicators",
    "fuzzy_sets",
    "model",
    "decisions",
    "training",
)


def validate_strategy(document: Mapping[str, Any], source: str = "strategy") -> StrategyConfig:
    """Validate as ktrdr's `StrategyValidator` does; raise listing every bad field."""
    if not isinstance(document, Mapping):
        raise StrategyValidationError(
            [FieldError("", f"a strategy is a YAML mapping, got {type(document).__name__}")],
            source,
        )
    errors: list[FieldError] = []
    config: StrategyConfig | None = None
    try:
        config = StrategyConfig.model_validate(dict(document))
    except ValidationError as exc:
        errors.extend(_field_error(detail) for detail in exc.errors())
    errors.extend(_indicator_errors(document.get("indicators")))
    errors.extend(_fuzzy_errors(document.get("indicators"), document.get("fuzzy_sets")))
    if errors or config is None:
        raise StrategyValidationError(_dedupe(errors), source)
    return config


def trainability_errors(config: StrategyConfig) -> list[FieldError]:
    """What ktrdr's trainer refuses although its validator accepted it (spec sections 5-9)."""
    errors: list[FieldError] = []
    if not is_strategy_name(config.name):
        errors.append(
            FieldError(
                "name",
                f"Strategy name '{config.name}' may only contain alphanumerics, dashes, or "
                "underscores (and start with a letter or digit, at most 100 characters)",
            )
        )
    errors.extend(_indicator_training_errors(config))
    for feature_id, sets in config.fuzzy_sets.items():
        if feature_id in config.feature_ids and not sets:
            errors.append(FieldError(f"fuzzy_sets.{feature_id}", "needs at least one fuzzy set"))
        for set_name, fuzzy_set in sets.items():
            where = f"fuzzy_sets.{feature_id}.{set_name}"
            errors.extend(FieldError(where, m) for m in membership_errors(fuzzy_set))
    errors.extend(_model_training_errors(config.model))
    errors.extend(_labels_and_split_errors(config.training))
    return errors


def check_strategy(document: Mapping[str, Any], source: str = "strategy") -> StrategyConfig:
    """Validator and trainer rules together: what must hold for the strategy to train."""
    config = validate_strategy(document, source)
    errors = trainability_errors(config)
    if errors:
        raise StrategyValidationError(errors, source)
    return config


def membership_errors(fuzzy_set: FuzzySet) -> list[str]:
    """The trainer's rules for one membership function: exact type, count, order, sigma."""
    expected = TRAINER_MF_PARAMS.get(fuzzy_set.type)
    if expected is None:
        return [
            f"membership type '{fuzzy_set.type}' does not train: use one of "
            f"{', '.join(TRAINER_MF_PARAMS)} (exact, lower-case)"
        ]
    values = fuzzy_set.parameters
    if len(values) != expected:
        return [f"'{fuzzy_set.type}' needs exactly {expected} parameters, got {len(values)}"]
    if fuzzy_set.type == "gaussian":
        return [] if values[1] > 0 else [f"gaussian sigma must be > 0, got {values[1]:g}"]
    if any(a > b for a, b in itertools.pairwise(values)):
        return [f"'{fuzzy_set.type}' parameters must be in ascending order, got {values}"]
    return []


# --- validator-level checks on the raw document (they run even when pydantic failed) ---


def _indicator_errors(indicators: Any) -> list[FieldError]:
    if not isinstance(indicators, list):
        return []
    errors: list[FieldError] = []
    seen: dict[str, list[int]] = {}
    for index, item in enumerate(indicators):
        if not isinstance(item, Mapping):
            continue
        name = item.get("name")
        if isinstance(name, str) and find_indicator(name) is None:
            errors.append(
                FieldError(
                    f"indicators.{index}.name",
                    f"Unknown indicator type '{name}' at index {index}. "
                    "This indicator is not available in KTRDR.",
                )
            )
        feature_id = item.get("feature_id")
        if isinstance(feature_id, str):
            errors.extend(_feature_id_errors(index, feature_id))
            seen.setdefault(feature_id, []).append(index)
    for feature_id, indices in seen.items():
        if len(indices) > 1:
            errors.append(
                FieldError(
                    "indicators",
                    f"Duplicate feature_ids found: '{feature_id}' appears at indices {indices}",
                )
            )
    return errors


def _feature_id_errors(index: int, feature_id: str) -> list[FieldError]:
    field = f"indicators.{index}.feature_id"
    if not FEATURE_ID.match(feature_id):
        return [
            FieldError(
                field,
                f"Indicator at index {index} has invalid feature_id '{feature_id}': must start "
                "with a letter and contain only letters, numbers, underscores and dashes",
            )
        ]
    if feature_id.lower() in RESERVED_FEATURE_IDS:
        return [
            FieldError(
                field,
                f"Indicator at index {index} has invalid feature_id '{feature_id}': "
                f"'{feature_id}' is a reserved word",
            )
        ]
    return []


def _fuzzy_errors(indicators: Any, fuzzy_sets: Any) -> list[FieldError]:
    if not isinstance(fuzzy_sets, Mapping):
        return []
    errors: list[FieldError] = []
    feature_ids = [
        item["feature_id"]
        for item in (indicators if isinstance(indicators, list) else [])
        if isinstance(item, Mapping) and isinstance(item.get("feature_id"), str)
    ]
    missing = [fid for fid in dict.fromkeys(feature_ids) if fid not in fuzzy_sets]
    if missing:
        errors.append(
            FieldError(
                "fuzzy_sets",
                f"Missing fuzzy_sets for indicators: {', '.join(missing)}. "
                "All indicators must have corresponding fuzzy_sets defined.",
            )
        )
    for feature_id, sets in fuzzy_sets.items():
        if not isinstance(sets, Mapping):
            continue
        for set_name, definition in sets.items():
            if isinstance(definition, Mapping):
                message = _membership_validator_error(feature_id, set_name, definition)
                if message:
                    errors.append(FieldError(f"fuzzy_sets.{feature_id}.{set_name}", message))
    return errors


def _membership_validator_error(
    feature_id: str, set_name: str, definition: Mapping[str, Any]
) -> str | None:
    mf_type = definition.get("type")
    if not isinstance(mf_type, str):
        return None  # pydantic reports the missing or mistyped `type`
    expected = VALIDATOR_MF_PARAMS.get(mf_type.lower())
    if expected is None:
        return f"Unknown fuzzy membership type '{mf_type}' for {feature_id}.{set_name}"
    parameters = definition.get("parameters")
    if isinstance(parameters, list) and len(parameters) != expected:
        return (
            f"Fuzzy membership '{mf_type}' for {feature_id}.{set_name} requires exactly "
            f"{expected} parameters, but got {len(parameters)}"
        )
    return None


# --- trainer-level checks on a validated config ---


def _indicator_training_errors(config: StrategyConfig) -> list[FieldError]:
    errors: list[FieldError] = []
    for index, indicator in enumerate(config.indicators):
        spec = indicator.spec
        if spec is None:
            continue
        field = f"indicators.{index}"
        if not spec.trainable:
            errors.append(
                FieldError(
                    f"{field}.name",
                    f"{spec.name} produces no usable feature column in ktrdr training "
                    "(choose a trainable indicator, e.g. RSI, ADX, ROC)",
                )
            )
            continue
        problems = param_errors(spec, indicator.resolved_params)
        errors.extend(FieldError(field, f"{spec.name}: {problem}") for problem in problems)
    return errors


def _model_training_errors(model: ModelConfig) -> list[FieldError]:
    errors: list[FieldError] = []
    if model.type != "mlp":
        errors.append(
            FieldError("model.type", f"Unknown model type '{model.type}': training needs 'mlp'")
        )
    layers = model.architecture.hidden_layers
    if not layers:
        errors.append(
            FieldError("model.architecture.hidden_layers", "required: a list of layer sizes")
        )
    elif any(size < 1 for size in layers):
        errors.append(
            FieldError("model.architecture.hidden_layers", f"sizes must be >= 1, got {layers}")
        )
    if not 0 <= model.architecture.dropout < 1:
        errors.append(FieldError("model.architecture.dropout", "must be in [0, 1)"))
    training = model.training
    for key, value in (
        ("epochs", training.epochs),
        ("batch_size", training.batch_size),
        ("learning_rate", training.learning_rate),
    ):
        if not 0 < value < float("inf"):  # NaN fails every comparison, so ask for the range
            errors.append(FieldError(f"model.training.{key}", f"must be > 0, got {value}"))
    return errors


def _labels_and_split_errors(training: TrainingConfig) -> list[FieldError]:
    errors: list[FieldError] = []
    labels = training.labels
    if labels.zigzag_threshold is None:
        errors.append(
            FieldError("training.labels.zigzag_threshold", "required by the trainer (e.g. 0.005)")
        )
    elif not 0 < labels.zigzag_threshold < 1:
        errors.append(
            FieldError(
                "training.labels.zigzag_threshold",
                f"must be a fraction between 0 and 1, got {labels.zigzag_threshold}",
            )
        )
    if labels.label_lookahead is None:
        errors.append(
            FieldError("training.labels.label_lookahead", "required by the trainer (e.g. 20)")
        )
    split = training.data_split
    if not 0 < split.test_size < 1 or not 0 <= split.validation_size < 1:
        errors.append(
            FieldError("training.data_split", "test_size and validation_size must be in (0, 1)")
        )
    elif split.test_size + split.validation_size >= 1:
        errors.append(
            FieldError(
                "training.data_split", "test_size + validation_size must leave training data"
            )
        )
    return errors


# --- turning pydantic's errors into ktrdr's wording ---


def _field_error(detail: ErrorDetails) -> FieldError:
    loc = tuple(detail["loc"])
    field = ".".join(str(part) for part in loc)
    kind = detail["type"]
    if kind == "missing":
        return FieldError(field, _missing_message(loc))
    if kind in {"model_type", "dict_type", "model_attributes_type"}:
        return FieldError(field, f"Validation error in '{field}': must be a mapping")
    message = detail["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    return FieldError(field, f"Validation error in '{field}': {message}")


def _missing_message(loc: tuple[Any, ...]) -> str:
    last = loc[-1]
    if len(loc) == 1:
        return f"Missing required field: {last}"
    if len(loc) == 2 and loc[0] in _SECTION_LABEL:
        return f"Missing required {_SECTION_LABEL[loc[0]]} field: {last}"
    if len(loc) == 3 and loc[0] == "indicators":
        index = loc[1]
        if last == "feature_id":
            return f"Indicator at index {index} is missing required field 'feature_id'"
        return f"Indicator at index {index}: {last} - Field required"
    return f"Missing required field: {'.'.join(str(p) for p in loc)}"


def _dedupe(errors: list[FieldError]) -> list[FieldError]:
    return list(dict.fromkeys(errors))
