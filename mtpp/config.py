"""Run configuration: typed dataclasses, YAML loading and ``--set section.key=value`` overrides.

A run configuration is one YAML file with up to six top-level keys::

    data:      DataConfig       which dataset, split, dtype
    model:     ModelConfig      encoder x decoder x parametrisation (see ``mtpp.models.config``)
    train:     TrainConfig      optimiser, epochs, early stopping, device, seed, guard
    gradients: GradientsConfig  aggregator and conflict diagnostics
    logging:   LoggingConfig    progress bar, TensorBoard, log flushing
    variants:  list             optional: train several variants of this config side by side

Every key is optional (defaults below); an unknown section or key, a value of the wrong type or an invalid
choice is a ``ConfigError`` naming the key and listing the valid ones. Overrides use dotted keys and YAML
scalars: ``--set model.decoder=lnm --set train.max_epochs=1 --set gradients.options.alpha=0.5``.

Variants
    ``variants`` is a list of mappings of dotted keys to values, each optionally with a ``name``::

        variants:
          - {name: thp_base, model.parametrisation: base}
          - {name: thp_plusplus, model.parametrisation: plusplus}

    ``mtpp train`` then trains one run per variant (the base config with that variant's overrides) into
    ``OUT/<name>/`` and prints a side-by-side table (``mtpp.training.trainer.run_variants``). Without a
    ``name`` the variant is named after its values (``plusplus``). ``--set`` overrides apply to every variant,
    after its own settings (``variants_with_overrides``).
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Union

import yaml

from mtpp.errors import ConfigError
from mtpp.models import config as _model_config
from mtpp.models.config import ModelConfig

__all__ = [
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "GradientsConfig",
    "LoggingConfig",
    "RunConfig",
    "load_config",
    "apply_overrides",
    "config_from_dict",
    "variant_configs",
    "as_run_config",
    "as_model_config",
    "validate_config",
]


@dataclass
class DataConfig:
    name: str = "synthetic_hawkes"  # catalog name or a path
    data_dir: str | None = None  # None: --data-dir, then MTPP_DATA_DIR, then ./data
    split: int = 0  # which of the dataset's splits (folds)
    dtype: str = "float32"  # float32 | float64: floating dtype of batches and model
    max_sequences: int | None = None  # use at most N sequences of each split (smoke tests); None: all
    # the model's unit of time: auto (median positive training gap) | none (data units) | a number of data units;
    # reported likelihoods are always in the data's units (mtpp.models.scaling)
    time_scale: float | str = "auto"
    num_workers: int = 0  # DataLoader workers
    # sort each sequence whose times are out of order (stable, marks follow; counted in the run's data notes)
    # instead of stopping at the first one (mtpp.data.formats.ReadOptions.sort)
    sort: bool = False
    # a split folder's common observation window (split_k/args.json 'window', e.g. mtpp simulate) ends every
    # sequence, so the likelihood scores the survival term after the last event; default: the benchmark
    # convention, the window ends at the last event (mtpp.data.formats.ReadOptions.use_window)
    use_window: bool = False
    # map the observed mark ids to 0..K-1 (sparse or large ids; mtpp.data.formats.ReadOptions.remap_marks)
    remap_marks: bool = False


EVALUATION_MARK_ELEMENTS = 1 << 25
"""Padded events x marks of one evaluation batch (``TrainConfig.evaluation_events``): a float32 ``[B, L, K]`` block
of 128 MiB. Scoring a batch holds a few such blocks (mark log-probabilities given the time and as a forecast,
their ranks and calibration bins)."""


@dataclass
class TrainConfig:
    max_epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max total grad norm; None: no clipping
    lr_schedule: str = "none"  # none | cosine (over max_epochs) | plateau (on validation loss)
    patience: int = 20  # epochs without improvement before stopping
    min_delta: float = 1e-4  # relative tolerance: improvement means val < best - min_delta * |best|
    separate_early_stopping: bool = False  # plusplus only: time / mark parameters stop separately
    # the time part's validation score for early stopping and the best checkpoint: nll (the continuous L_T, the
    # reference protocol) | binned (L_T of each gap's lattice bin; data on a lattice only, mtpp.data.lattice)
    select_time_on: str = "nll"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bf16 autocast on CUDA (likelihood terms stay float32)
    tf32: bool = False  # TensorFloat-32 matrix products / cuDNN on CUDA (faster, ~1e-3 relative error); default IEEE
    deterministic: bool = False  # torch.use_deterministic_algorithms + cudnn flags
    max_consecutive_skips: int = 20  # non-finite batches in a row before the run stops
    compile: bool = False  # torch.compile the model's nll
    # torch.compile only the THP / SAHP compensator integrand on the training nodes (mtpp.models.compiled): same
    # formula, fused kernels, values equal to rounding; needs a C++ compiler. BENCHMARKS.md, "Compiled integrand"
    compile_integrand: bool = False
    eval_batch_size: int | None = None  # None: 4 x batch_size
    # padded events (sequences x longest sequence) per training batch: a batch closes before it would pass this, a
    # longer sequence is a batch of its own (mtpp.data.sampler.cut_batches); evaluation batches take 4 x as many,
    # fewer with many marks (evaluation_events). None: batch_size alone decides (one outlier pads the whole batch)
    max_batch_events: int | None = 131072
    bucket: bool = True  # length-bucketing batch sampler
    # torch intra-op threads of the training process (torch.set_num_threads). 1 by default: models of the
    # reference size gain little from more on CPU, and a process with one thread per core collapses as soon as
    # another process takes a core (BENCHMARKS.md, "Threads"). mtpp compare caps it at cores // jobs.
    threads: int = 1

    @property
    def evaluation_batch_size(self) -> int:
        """Sequences per evaluation batch: ``eval_batch_size``, else 4 x ``batch_size`` (validation, final
        evaluation, ``evaluate`` / ``predict`` of a run)."""
        return self.eval_batch_size or 4 * self.batch_size

    def evaluation_events(self, num_marks: int) -> int | None:
        """Padded events per evaluation batch (validation, final evaluation, ``evaluate`` / ``predict`` /
        ``log_likelihood`` of a run): ``4 x max_batch_events``, and at most ``EVALUATION_MARK_ELEMENTS / K`` so that
        one ``[B, L, K]`` block of mark probabilities stays within 128 MiB of float32 whatever the number of marks
        ``K`` (20,000 marks: 1,677 padded events). ``None`` when ``max_batch_events`` is ``None``. Evaluation
        metrics do not depend on how the sequences are batched (``train.eval_batch_size`` is not semantic either)."""
        if self.max_batch_events is None:
            return None
        return max(1, min(4 * self.max_batch_events, EVALUATION_MARK_ELEMENTS // max(1, int(num_marks))))


@dataclass
class GradientsConfig:
    aggregator: str = "sum"  # sum | pcgrad | cograd | gradops | metabalance | cagrad | mgda | imtl | gradvac
    options: dict = field(default_factory=dict)  # aggregator keyword arguments
    log_every: int = 1  # measure and log cos_tm / gms / norms every N steps (a remedy aggregates every step)
    per_tensor: bool = False  # also log the cosine per shared tensor


@dataclass
class LoggingConfig:
    quiet: bool = False  # no progress bar, no summary
    tensorboard: bool = False  # TensorBoard scalars under OUT/tensorboard (needs the tensorboard package)
    progress: bool = True  # tqdm progress bar
    flush_every: int = 50  # steps between host syncs that write log.jsonl and refresh the progress bar
    # experiment trackers fed the log.jsonl records (mtpp.training.tracking): [mlflow], [wandb], [mlflow, wandb]
    trackers: list = field(default_factory=list)
    # per tracker, see TRACKER_OPTIONS: {mlflow: {tracking_uri: sqlite:///mlflow.db}, wandb: {mode: offline}}
    tracker_options: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gradients: GradientsConfig = field(default_factory=GradientsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    variants: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML / JSON serialisable) of the resolved configuration."""
        return asdict(self)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "gradients": GradientsConfig,
    "logging": LoggingConfig,
}
TOP_LEVEL = (*SECTIONS, "variants")

#: Settings that say where or how fast a run goes, not what it computes (dotted keys or whole sections): two runs
#: that differ only in them are the same experiment (``mtpp compare`` does not call a finished cell stale for
#: them, ``mtpp report`` does not split a cell by them). ``train.threads``: intra-op threads change only the
#: order of floating-point reductions, and ``mtpp compare`` caps them at cores // jobs on each machine.
#: ``train.eval_batch_size``: evaluation scores each sequence on its own (Monte Carlo compensator nodes of
#: ``model.eval_integration: mc`` included: counter-based, keyed by the sequence's history, not the batch;
#: ``tests/test_mc_evaluation.py``), so it changes the floating-point rounding of batched kernels only.
NON_SEMANTIC_KEYS = (
    "logging", "variants", "data.data_dir", "data.num_workers", "train.device", "train.compile",
    "train.compile_integrand", "train.eval_batch_size", "train.threads",
)

# Enum-like fields: (section, key) -> valid values.
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("data", "dtype"): ("float32", "float64"),
    ("model", "encoder"): _model_config.ENCODERS,
    ("model", "decoder"): _model_config.TIME_DECODERS,
    ("model", "parametrisation"): _model_config.PARAMETRISATIONS,
    ("model", "integration"): _model_config.INTEGRATION,
    ("model", "first_event"): _model_config.FIRST_EVENT,
    ("model", "rmtpp_form"): _model_config.RMTPP_FORMS,
    ("train", "optimizer"): ("adam", "adamw", "sgd"),
    ("train", "lr_schedule"): ("none", "cosine", "plateau"),
    ("train", "select_time_on"): ("nll", "binned"),
}

# Numeric fields with a lower bound: (section, key) -> (bound, strict).
BOUNDS: dict[tuple[str, str], tuple[float, bool]] = {
    ("data", "split"): (0, False),
    ("data", "max_sequences"): (1, False),
    ("data", "num_workers"): (0, False),
    ("train", "max_epochs"): (1, False),
    ("train", "batch_size"): (1, False),
    ("train", "lr"): (0, True),
    ("train", "weight_decay"): (0, False),
    ("train", "grad_clip"): (0, True),
    ("train", "patience"): (1, False),
    ("train", "min_delta"): (0, False),
    ("train", "max_consecutive_skips"): (1, False),
    ("train", "eval_batch_size"): (1, False),
    ("train", "max_batch_events"): (1, False),
    ("train", "threads"): (1, False),
    ("train", "seed"): (0, False),
    ("gradients", "log_every"): (1, False),
    # model sizes: a zero-size layer or mixture is not a model (num_components 0 gave an infinite loss and a
    # traceback at evaluation; hidden_size 0 a torch error)
    ("model", "hidden_size"): (1, False),
    ("model", "mark_embedding_size"): (1, False),
    ("model", "time_embedding_size"): (1, False),
    ("model", "num_layers"): (1, False),
    ("model", "num_heads"): (1, False),
    ("model", "window"): (1, False),
    ("model", "decoder_hidden_size"): (1, False),
    ("model", "num_components"): (1, False),
    ("model", "integration_nodes"): (1, False),
    ("model", "eval_integration_nodes"): (1, False),
    ("model", "plusplus_hidden_size"): (1, False),
    ("model", "dropout"): (0, False),
    ("logging", "flush_every"): (1, False),
}

# Numeric fields with an upper bound: (section, key) -> (bound, strict).
UPPER_BOUNDS: dict[tuple[str, str], tuple[float, bool]] = {
    ("model", "dropout"): (1, True),  # a probability; 1 drops everything (torch refuses > 1 deep in nn.Dropout)
    ("train", "seed"): (2**32 - 1, False),  # SEED_MAX: numpy's and torch's generators take 0 .. 2^32 - 1
}

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
DEVICE_NAMES = "auto, cpu, cuda, cuda:N, mps"

# logging.trackers: name -> the keys its logging.tracker_options entry may hold (mtpp.training.tracking).
TRACKER_OPTIONS: dict[str, tuple[str, ...]] = {
    "mlflow": ("tracking_uri", "experiment", "run_name", "tags"),
    "wandb": ("project", "entity", "mode", "group", "run_name", "tags"),
}


# --------------------------------------------------------------------------------------------- type checks


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp`` (int -> float and '1e-3' -> float are accepted)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise _type_error(key, tp, value)
    base = origin or tp
    if base is float:
        if isinstance(value, bool):
            raise _type_error(key, tp, value)
        if isinstance(value, (int, float)):
            try:
                return float(value)
            except OverflowError:  # an int beyond any float
                raise ConfigError(f"{key}: must be a finite number, got an integer too large for a float") from None
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, tp, value)
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if base is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, tp, value)
    if base in (dict, list):
        if isinstance(value, base):
            return value
        raise _type_error(key, tp, value)
    return value


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def flatten(
    d: Any, prefix: str = "", leaf: typing.Callable[[str, dict], bool] | None = None
) -> dict[str, Any]:
    """``{"model": {"hidden_size": 8}}`` -> ``{"model.hidden_size": 8}``: nested mappings as dotted keys (lists and
    other values are leaves; an empty nested mapping adds no key). ``leaf(key, mapping)``: nested mappings it
    returns true for are kept whole under their dotted key (e.g. free-form ``gradients.options``). Used to compare,
    log and tabulate configurations (``mtpp.runs``, ``mtpp.experiments``, ``mtpp.evaluation.report``,
    ``mtpp.training.tracking``)."""
    if not isinstance(d, dict) or (prefix and leaf is not None and leaf(prefix, d)):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k), leaf))
    return out


def _unknown(kind: str, name: str, valid: typing.Iterable[str], where: str = "") -> ConfigError:
    valid = sorted(valid)
    close = difflib.get_close_matches(name.split(".")[-1], valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown {kind} {name!r}{hint}; valid {kind}s{where}: {', '.join(valid)}")


# --------------------------------------------------------------------------------------------- building


def _build_section(section: str, values: Any) -> Any:
    cls = SECTIONS[section]
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a mapping of keys to values, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown("key", f"{section}.{key}", names, f" in {section!r}")
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
    obj = cls(**kwargs)
    _validate_section(section, obj)
    return obj


def valid_device(name: Any) -> bool:
    """Whether ``name`` is a device mtpp accepts (``train.device``, ``--device``): auto, cpu, cuda, cuda:N, mps."""
    return isinstance(name, str) and _DEVICE.match(name) is not None


SEED_MAX = 2**32 - 1
"""The largest seed numpy's generators and ``torch.manual_seed`` both take (seeds are ``0 .. SEED_MAX``)."""


def _check_dataclass(section: str, obj: Any) -> None:
    """A section built directly (``ModelConfig(hidden_size=-4)``) checked as the dict / YAML route checks it: the
    type of every field (``_coerce``), then ``_validate_section``; the same one-line ``ConfigError``. The model's
    ``encoder`` / ``decoder`` names are left to ``MarkedTPP`` (the registries, which plug-ins extend)."""
    cls = SECTIONS[section]
    if not isinstance(obj, cls):
        raise ConfigError(f"{section}: expected a {cls.__name__} (or a dict of its keys), got {type(obj).__name__}")
    hints = typing.get_type_hints(cls)
    for f in fields(obj):
        _coerce(getattr(obj, f.name), hints[f.name], f"{section}.{f.name}")
    _validate_section(section, obj, registry_names=section == "model")


def validate_config(cfg: RunConfig | ModelConfig) -> RunConfig | ModelConfig:
    """``cfg`` unchanged when it is valid, else the ``ConfigError`` its dict would give (``config_from_dict``):
    every section's types, choices and bounds, the variants and the cross-section rules. For configurations built
    from the dataclasses directly (``RunConfig(train=TrainConfig(lr=-1.0))``), which no loader has checked;
    ``as_run_config`` / ``as_model_config`` (hence ``fit`` and ``build_model``) call it."""
    if isinstance(cfg, ModelConfig):
        _check_dataclass("model", cfg)
        return cfg
    if not isinstance(cfg, RunConfig):
        raise ConfigError(f"expected a RunConfig or a ModelConfig, got {type(cfg).__name__}")
    for name in SECTIONS:
        _check_dataclass(name, getattr(cfg, name))
    _check_variants(cfg.variants)
    _validate_run(cfg)
    for v in cfg.variants:
        _apply_variant(cfg, v)
    return cfg


def _validate_section(section: str, obj: Any, registry_names: bool = False) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = (section, f.name)
        if registry_names and key in (("model", "encoder"), ("model", "decoder")):
            continue
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{section}.{f.name}: invalid value {value!r}; valid: {', '.join(CHOICES[key])}")
        if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison below
            raise ConfigError(f"{section}.{f.name}: must be a finite number, got {value!r}")
        if key in BOUNDS and value is not None:
            bound, strict = BOUNDS[key]
            if value < bound or (strict and value == bound):
                op = ">" if strict else ">="
                raise ConfigError(f"{section}.{f.name}: must be {op} {bound}, got {value!r}")
        if key in UPPER_BOUNDS and value is not None:
            bound, strict = UPPER_BOUNDS[key]
            if value > bound or (strict and value == bound):
                op = "<" if strict else "<="
                raise ConfigError(f"{section}.{f.name}: must be {op} {bound}, got {value!r}")
    if section == "data":
        from mtpp.models.scaling import check_time_scale

        check_time_scale(obj.time_scale)
    if section == "train" and not valid_device(obj.device):
        raise ConfigError(f"train.device: invalid value {obj.device!r}; valid: {DEVICE_NAMES}")
    if section == "logging":
        _validate_trackers(obj)


def _validate_trackers(obj: LoggingConfig) -> None:
    for name in obj.trackers:
        if name not in TRACKER_OPTIONS:
            raise _unknown("tracker", str(name), TRACKER_OPTIONS, " in logging.trackers")
    if len(set(obj.trackers)) != len(obj.trackers):
        raise ConfigError(f"logging.trackers: a tracker is listed twice: {obj.trackers}")
    for name, opts in obj.tracker_options.items():
        if name not in TRACKER_OPTIONS:
            raise _unknown("tracker", str(name), TRACKER_OPTIONS, " in logging.tracker_options")
        if not isinstance(opts, dict):
            raise ConfigError(f"logging.tracker_options.{name}: expected a mapping, got {type(opts).__name__}")
        for key in opts:
            if key not in TRACKER_OPTIONS[name]:
                raise _unknown("key", f"logging.tracker_options.{name}.{key}", TRACKER_OPTIONS[name])


def _validate_run(cfg: RunConfig) -> None:
    if cfg.train.separate_early_stopping and cfg.model.parametrisation != "plusplus":
        raise ConfigError(
            "train.separate_early_stopping: only valid with model.parametrisation=plusplus "
            f"(got {cfg.model.parametrisation!r}): other parametrisations share parameters between the tasks"
        )


def config_from_dict(raw: dict | None) -> RunConfig:
    """A validated ``RunConfig`` from a nested dict (unknown sections or keys are errors)."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"a configuration must be a mapping of sections, got {type(raw).__name__}")
    for section in raw:
        if section not in TOP_LEVEL:
            raise _unknown("section", str(section), TOP_LEVEL)
    sections = {name: _build_section(name, raw.get(name)) for name in SECTIONS}
    variants = _check_variants(raw.get("variants"))
    cfg = RunConfig(**sections, variants=variants)
    _validate_run(cfg)
    for v in variants:  # every variant must give a valid configuration too
        _apply_variant(cfg, v)
    return cfg


def _check_variants(variants: Any) -> list:
    if variants is None:
        return []
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise ConfigError("variants: expected a list of mappings like {model.parametrisation: plusplus}")
    names = [variant_name(v) for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"variants: duplicate variant names {', '.join(dupes)}; give each a distinct 'name'")
    return [dict(v) for v in variants]


# --------------------------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.lr=3e-4'`` -> ``('train.lr', 0.0003)``; the value is a YAML scalar (or flow list / map)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected section.key=value (e.g. --set train.max_epochs=5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in SECTIONS:
        if parts[0] not in SECTIONS:
            raise _unknown("section", parts[0], SECTIONS)
        raise ConfigError(f"--set {key}: expected section.key=value (e.g. --set train.max_epochs=5)")
    node = raw.setdefault(parts[0], {})
    if node is None:
        node = raw[parts[0]] = {}
    if not isinstance(node, dict):  # "train: 5" in the file: the same line as without --set
        raise ConfigError(f"{parts[0]}: expected a mapping of keys to values, got {type(node).__name__}")
    for p in parts[1:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {p!r} is not a mapping, cannot set a sub-key")
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict, overrides: list[str] | list[tuple[str, Any]]) -> dict:
    """A copy of the nested dict ``raw`` with dotted overrides applied (strings are parsed first)."""
    out = yaml.safe_load(yaml.safe_dump(raw)) if raw else {}
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        _set_dotted(out, key, value)
    return out


class _DuplicateKey(Exception):
    pass


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML itself keeps the last, silently)."""


def _unique_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.setdefault(key, key_node.start_mark)  # by position: {a: 1, a: 2} is on one line
        except TypeError:  # an unhashable key: construct_mapping says so
            continue
        if first.index != key_node.start_mark.index:
            where = (f"line {first.line + 1}" if first.line == key_node.start_mark.line
                     else f"lines {first.line + 1} and {key_node.start_mark.line + 1}")
            raise _DuplicateKey(f"key {key!r} is given twice in one mapping ({where}); YAML would keep only the "
                                "last")
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: str | Path) -> Any:
    """A YAML file a user wrote (a run configuration, an experiment, a search space; a ``.json`` result record,
    JSON being YAML), parsed safely: ``ConfigError`` naming the file for text that is not UTF-8, for invalid YAML
    (for a ``.json`` file or one that opens with ``{``, what JSON finds wrong, and whether it looks cut short) or
    for a key given twice in one mapping (``model:`` twice
    trained the second one's settings without a word)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except _DuplicateKey as e:
        raise ConfigError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):  # a result record (JSON is YAML),
            # whatever its name: say what JSON finds wrong
            import json

            try:
                json.loads(text)
            except ValueError as j:
                cut = " (cut short: a copy or a write that did not finish?)" if not text.rstrip().endswith("}") else ""
                raise ConfigError(f"{p}: not valid JSON ({j}){cut}") from None
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(e).split())})") from None


def is_result_record(raw: Any) -> bool:
    """Whether a parsed file is a grid cell's result record (``mtpp.records``: ``record_version`` and a ``config``
    mapping), not a run configuration."""
    return isinstance(raw, dict) and "record_version" in raw and isinstance(raw.get("config"), dict)


def read_config_file(path: str | Path) -> dict:
    """The parsed content of a configuration file, as written (a run configuration, a run's ``config.yaml`` or a
    result record): ``ConfigError`` naming the file when it is missing, empty, invalid YAML (:func:`read_yaml`) or
    not a mapping. What :func:`load_config` reads; a command that also looks at the file's other sections (a
    record's ``metrics``, a run's ``run_info``) reads it once with this and passes it as ``parsed``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    raw = read_yaml(p)
    if raw is None:
        raise ConfigError(f"{p}: the file is empty (no setting); give a configuration, or no file at all to "
                          "train with every default")
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a configuration must be a mapping of sections")
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None, *,
                parsed: dict | None = None) -> RunConfig:  # fmt: skip
    """Load a YAML run configuration (``None``: all defaults) and apply ``--set`` overrides. ``ConfigError`` for a
    missing, empty or invalid file (:func:`read_config_file`), or one that is not a mapping of sections;
    ``parsed``: the file's content when the caller has read it already (:func:`read_config_file`), else it is read
    here.

    A run's ``config.yaml`` loads as its configuration (its ``run_info`` ignored), and so does a grid cell's result
    record (``results/<experiment>/<cell>.json``, JSON being YAML; ``mtpp.records``): its ``config`` section, so
    that ``mtpp train RECORD`` trains that cell again."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        raw = parsed if parsed is not None else read_config_file(p)
        raw = dict(raw["config"]) if is_result_record(raw) else dict(raw)
        raw.pop("run_info", None)  # written by the trainer into a run's config.yaml
        try:  # the file's own mistakes name the file; the --set overrides' (below) name their key
            config_from_dict(apply_overrides(raw, []))
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None
    return config_from_dict(apply_overrides(raw, overrides or []))


# --------------------------------------------------------------------------------------------- variants


def variant_name(variant: dict) -> str:
    """The variant's ``name``, else its values joined by '_' (``{model.parametrisation: plusplus}`` -> 'plusplus')."""
    if "name" in variant:
        name = str(variant["name"])
    else:
        name = "_".join(str(v) for k, v in variant.items()) or "default"
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", name)
    return name


def _apply_variant(cfg: RunConfig, variant: dict) -> RunConfig:
    raw = cfg.to_dict()
    raw["variants"] = []
    pairs = [(k, v) for k, v in variant.items() if k != "name"]
    try:
        return config_from_dict(apply_overrides(raw, pairs))
    except ConfigError as e:
        raise ConfigError(f"variant {variant_name(variant)!r}: {e}") from None


def variant_configs(cfg: RunConfig, variants: list[dict] | None = None) -> dict[str, RunConfig]:
    """``{name: config}`` for each variant of ``cfg`` (its own ``variants`` list unless given)."""
    variants = cfg.variants if variants is None else _check_variants(variants)
    return {variant_name(v): _apply_variant(cfg, v) for v in variants}


def variants_with_overrides(variants: list[dict], overrides: Sequence[str]) -> tuple[list[dict], list[str]]:
    """``variants`` with the command line's ``--set`` overrides applied after each variant's own settings (the
    command line is the more specific: ``--set train.lr=0.01`` trains every variant at that rate), each variant's
    name kept; and one note per variant setting that an override replaces (``variant 'fast': train.lr=0.1
    replaced by --set train.lr=0.01``), for the caller to print. A ``--set variants=...`` is not re-applied."""
    pairs = [parse_override(o) for o in overrides]
    pairs = [(k, v) for k, v in pairs if k != "variants" and not k.startswith("variants.")]
    out, notes = [], []
    for variant in variants:
        name = variant_name(variant)
        for key, value in variant.items():
            hit = [(k, v) for k, v in pairs if key != "name" and (k == key or k.startswith(key + ".")
                                                                  or key.startswith(k + "."))]
            notes += [f"variant {name!r}: {key}={value!r} replaced by --set {k}={v!r}" for k, v in hit if v != value]
        out.append({"name": name, **{k: v for k, v in variant.items() if k != "name"}, **dict(pairs)})
    return out, notes


def without_variants(cfg: RunConfig) -> RunConfig:
    return replace(cfg, variants=[])


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)



# --------------------------------------------------------------------------------------------- coercion (Python API)


def as_run_config(config: RunConfig | dict | str | Path | None) -> RunConfig:
    """A validated ``RunConfig`` from what a Python user has at hand.

    ``RunConfig``: itself, validated as its dict would be (``validate_config``). ``dict``: nested sections (``config_from_dict``). ``str`` / ``Path``: a YAML file
    (``load_config``). ``None``: every default. Anything else, an unknown key or an invalid value is a
    ``ConfigError`` naming the key.
    """
    if isinstance(config, RunConfig):
        return validate_config(config)
    if config is None or isinstance(config, dict):
        return config_from_dict(config)
    if isinstance(config, (str, Path)):
        return load_config(config)
    raise ConfigError(f"a run configuration must be a RunConfig, a dict, a YAML path or None, got {type(config).__name__}")


def as_model_config(config: ModelConfig | RunConfig | dict | None) -> ModelConfig:
    """A validated ``ModelConfig``: a ``ModelConfig`` itself (unchanged, checked by ``validate_config``), a ``RunConfig``'s ``model``
    section, a dict of ``model`` keys (``{"encoder": "gru", "decoder": "lnm"}``) or a whole run dict with a
    ``model`` section (``{"model": {...}, "train": {...}}``); ``None``: the defaults.

    Raises ``ConfigError`` for an unknown key (with the closest valid one), a wrong type or an invalid choice, and
    for a run configuration whose ``variants`` change ``model`` settings (one model cannot be all of them: pick one
    with ``variant_configs``).
    """
    if isinstance(config, RunConfig):
        return _single_model(validate_config(config))
    if isinstance(config, ModelConfig):
        # types, choices and bounds as a dict's; the encoder / decoder names are MarkedTPP's to check against the
        # registries (which tests and plug-ins extend)
        return validate_config(config)
    if config is None:
        return ModelConfig()
    if isinstance(config, dict):
        if "model" in config and all(k in TOP_LEVEL for k in config):
            return _single_model(config_from_dict(config))
        return _build_section("model", config)
    raise ConfigError(f"a model configuration must be a ModelConfig, a dict or None, got {type(config).__name__}")


def _single_model(cfg: RunConfig) -> ModelConfig:
    """``cfg.model``, unless a variant of ``cfg`` changes a ``model`` setting: building the base section would then
    silently drop that variant's model (``configs/quickstart.yaml``'s ``++`` twin), so that is a ``ConfigError``
    naming the variants and how to pick one. Variants of other sections only (``train.lr``) build the same model."""
    changing = {variant_name(v): [k for k in v if k == "model" or k.startswith("model.")] for v in cfg.variants}
    changing = {name: keys for name, keys in changing.items() if keys}
    if changing:
        listed = "; ".join(f"{name!r} sets {', '.join(keys)}" for name, keys in changing.items())
        first = next(iter(changing))
        raise ConfigError(
            f"the configuration has {len(cfg.variants)} variant(s) and one model cannot be all of them ({listed}): "
            f"build one with mtpp.config.variant_configs(cfg)[{first!r}], or drop variants")
    return cfg.model
