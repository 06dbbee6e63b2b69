"""Run directories -> tables: one row per run, mean and standard error over splits, CSV and Markdown.

A run directory (DESIGN §5) holds ``config.yaml`` (the resolved configuration: sections ``data``, ``model``,
``train``, ``gradients``, ... plus version / git / seed / device) and ``metrics.json``
(``{"val": {...}, "test": {...}, <scalars>...}``). Folders are found recursively under the root; a folder with a
``config.yaml`` but no ``metrics.json`` (a run still going, or one that crashed) is not a row and is listed in
``df.attrs["incomplete"]``.

Cells: runs that differ only by split and seed form a cell (a "model" on a dataset); ``summarise`` gives the
mean and the standard error ``std(ddof=1) / sqrt(n)`` over the runs of each cell (NaN when ``n = 1``, shown
as "–"). The ``horizon_*`` metrics of ``mtpp evaluate RUN --horizon T`` are pooled and ranked only among runs
scored at the same horizon (:data:`HORIZON_COLUMN`, a cell column where they are summarised).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from dataclasses import dataclass

import numpy as np
import pandas as pd
import yaml

from mtpp.data.catalog import time_unit_of, time_unit_text
from mtpp.config import NON_SEMANTIC_KEYS
from mtpp.errors import MtppError
from mtpp.files import replacing, write_text

__all__ = [
    "KEY_COLUMNS",
    "METRICS",
    "MetricInfo",
    "LEGACY_NAMES",
    "canonical_metric",
    "metric_info",
    "metric_unit",
    "TIME_UNIT",
    "cell_label",
    "cell_labels",
    "format_value",
    "format_runs",
    "DEFAULT_METRICS",
    "LOWER_IS_BETTER",
    "HIGHER_IS_BETTER",
    "find_runs",
    "load_run",
    "collect_runs",
    "cell_columns",
    "summarise",
    "write_summary",
    "format_markdown",
    "format_baselines",
    "NOMINAL_LEVEL",
    "param_symbol",
]

KEY_COLUMNS = ("dataset", "model", "encoder", "decoder", "parametrisation", "aggregator", "first_event")
"""Cell keys always present; ``split`` and ``seed`` are the replicate keys. Read from the config, except that
the labels of ``cell.json`` (written by ``mtpp compare``: dataset, model, parametrisation, aggregator, split,
seed) win where present; without one, ``model`` is the decoder name."""
REPLICATE_COLUMNS = ("split", "seed")

# Where each key column lives in the nested config.
_KEY_PATHS: dict[str, tuple[str, ...]] = {
    "dataset": ("data", "name"),
    "encoder": ("model", "encoder"),
    "decoder": ("model", "decoder"),
    "parametrisation": ("model", "parametrisation"),
    "aggregator": ("gradients", "aggregator"),
    "first_event": ("model", "first_event"),
    "split": ("data", "split"),
    "seed": ("train", "seed"),
}

@dataclass(frozen=True)
class MetricInfo:
    """How a metric is shown: ``label`` in words, ``unit`` ("" when unitless; :data:`TIME_UNIT` for a time in the
    data's unit), ``better`` (-1 lower is better, +1 higher, 0 neither: never bolded), ``source`` (the paper that
    defines it, "" for the textbook ones)."""

    label: str
    unit: str
    better: int
    source: str = ""

    def title(self) -> str:
        """``"time NLL per sequence (nats) ↓ lower is better"``."""
        unit = f" ({self.unit})" if self.unit else ""
        arrow = {-1: " ↓ lower is better", 1: " ↑ higher is better"}.get(self.better, "")
        return f"{self.label}{unit}{arrow}"

    def described(self) -> str:
        """:meth:`title` and the source: ``"T-mAP ... ↑ higher is better [HoTPP, Karpukhin et al. 2024 ...]"``."""
        return self.title() + (f" [{self.source}]" if self.source else "")

    def meaning(self) -> str:
        """The label and the source, without unit or direction (the CSV's ``meaning`` column)."""
        return self.label + (f" [{self.source}]" if self.source else "")


TIME_UNIT = "the data's time units"
"""The :attr:`MetricInfo.unit` of a time (a gap, a distance between event times): the dataset's own unit, which
each Markdown table names in its heading and the CSV's ``unit`` column spells out per dataset
(:func:`metric_unit`, from :func:`mtpp.data.catalog.time_unit_of`)."""

HOTPP = "HoTPP, Karpukhin et al. 2024, arXiv:2406.14341"
"""The source of T-mAP and of the OTD horizon protocol (``mtpp.forecast.horizon``)."""

HORIZON_PREFIX = "horizon_"
"""The prefix of the keys ``mtpp evaluate RUN --horizon T`` writes into ``metrics.json[split]``
(``mtpp.forecast.horizon.HORIZON_PREFIX``; repeated here so that reading runs never imports torch)."""

_HORIZON_METRICS: dict[str, MetricInfo] = {
    "window": MetricInfo("forecast horizon: the time span after each prediction point the horizon_* metrics score",
                         TIME_UNIT, 0),
    "points": MetricInfo("prediction points scored (horizon window fully observed)", "points", 0),
    "samples": MetricInfo("sampled continuations per prediction point", "continuations", 0),
    "next_points": MetricInfo("prediction points of the next-event metrics", "points", 0),
    "next_accuracy": MetricInfo("next mark accuracy at the prediction points, forecast argmax p(k | H)",
                                "share of points", 1),
    "next_nll_mark": MetricInfo("next mark NLL at the prediction points, forecast -log p(k | H)",
                                "nats per point", -1),
    "next_mae": MetricInfo("absolute error of the median next gap at the prediction points", TIME_UNIT, -1),
    "next_interval_coverage": MetricInfo(
        "share of next gaps inside their central interval (calibrated: the level, horizon_next_interval_level)",
        "share of points", 0, "Gneiting & Raftery 2007, JASA, §6"),
    "next_interval_width": MetricInfo("mean width of the next gap's central interval", TIME_UNIT, 0),
    "next_interval_level": MetricInfo("level of the next gap's central interval", "probability", 0),
    "tmap": MetricInfo("T-mAP: mean over time tolerances of the mAP of the events forecast within the horizon",
                       "", 1, HOTPP),
    "tmap_deltas": MetricInfo("the T-mAP time tolerances (a list)", TIME_UNIT, 0, HOTPP),
    "otd": MetricInfo("OTD: optimal transport distance between the first N forecast and observed events",
                      TIME_UNIT, -1, f"Mei, Qin & Eisner 2019; {HOTPP}"),
    "otd_points": MetricInfo("prediction points of the OTD (N observed events after them)", "points", 0),
    "otd_cost": MetricInfo("OTD cost of an inserted or deleted event", TIME_UNIT, 0),
    "otd_events": MetricInfo("events compared by the OTD (N)", "events", 0),
    "count_points": MetricInfo("prediction points of the count calibration", "points", 0),
    "count_pce": MetricInfo("calibration error (PCE) of the randomised PIT of the event count within the horizon",
                            "", -1, "Czado, Gneiting & Held 2009, Biometrics"),
    "count_pit_hist": MetricInfo("histogram of the count PITs over 10 equal bins (a list)", "points", 0),
    "count_coverage": MetricInfo("share of observed counts within the horizon inside the central interval of the "
                                 "sampled counts (calibrated: the level, horizon_count_level)", "share of points", 0),
    "count_level": MetricInfo("level of the count's central interval", "probability", 0),
    "count_mae": MetricInfo("absolute error of the median sampled count within the horizon", "events", -1),
    "count_mean_pred": MetricInfo("mean sampled count within the horizon", "events", 0),
    "count_mean_obs": MetricInfo("mean observed count within the horizon", "events", 0),
    "max_events": MetricInfo("cap on the events of a continuation within the horizon (--max-events)", "events", 0),
    "truncated_samples": MetricInfo("sampled continuations cut at the cap before the horizon's end (their counts "
                                    "are lower bounds)", "continuations", 0),
    "truncated_rollouts": MetricInfo("mode rollouts cut at the cap before the horizon's end (their T-mAP "
                                     "predictions stop early)", "rollouts", 0),
    "truncated_rows": MetricInfo("continuations cut at the cap before the horizon's end (older evaluations: "
                                 "sampled and rollouts together)", "continuations", 0),
    "baselines": MetricInfo("the horizon metrics of the baselines (mtpp.forecast.baselines), by name; the same "
                            "keys without the prefix", "", 0),
}
"""What ``mtpp.forecast.horizon.evaluate_horizon`` returns (module docstring there), by key without the prefix;
:data:`METRICS` holds them as ``horizon_<key>``. The per-tolerance ``map@<delta>`` keys: :func:`metric_info`."""

HORIZON_COLUMN = "horizon"
"""The cell column of the horizon a run's ``horizon_*`` metrics were scored at (its ``metrics.json[split]
["horizon_window"]``, written by ``mtpp evaluate RUN --horizon T``; absent: never evaluated so). A cell column only
where ``horizon_*`` metrics are summarised (:func:`cell_columns`): runs scored at different horizons are never
pooled into one row, and their ``horizon_*`` metrics are ranked only among rows of one horizon."""

NOT_EVALUATED = "not evaluated"
"""A ``horizon_*`` cell of runs never evaluated with ``--horizon`` (``n/a`` means the metric does not apply)."""


def is_horizon_metric(name: str) -> bool:
    """Whether ``name`` is a ``horizon_*`` metric of the summarised section (``val/horizon_tmap`` is not: its
    horizon is another section's)."""
    return "/" not in name and name.startswith(HORIZON_PREFIX)


NOMINAL_LEVEL = {
    f"{HORIZON_PREFIX}next_interval_coverage": f"{HORIZON_PREFIX}next_interval_level",
    f"{HORIZON_PREFIX}count_coverage": f"{HORIZON_PREFIX}count_level",
}
"""Coverage metrics -> the key of the level they are calibrated at (a calibrated forecaster's coverage equals it):
the report's plots draw it as the reference line, since neither higher nor lower coverage is better."""

BASELINE_PREFIX = f"{HORIZON_PREFIX}baselines/"
"""Row keys of the baselines' horizon metrics: ``horizon_baselines/<name>/<key>`` (:func:`load_run`; the
``horizon_baselines`` dict that ``mtpp evaluate --horizon`` writes beside the model's flat keys)."""


HORIZON_MAP = re.compile(r"^horizon_map@(.+)$")
"""``horizon_map@0.001``: the mAP at one T-mAP time tolerance (group 1, in the data's time units)."""


_KIND_WORDS = {"given_time": " given the time p(k | τ_obs, H)", "forecast": ", forecast p(k | H)"}
"""How a mark metric's label says which distribution it scores (``mtpp.evaluation.metrics.MARK_KINDS``)."""

# The ONE table of the metrics the report and the plots know: name in metrics.json -> label, unit, direction.
# Mark metrics come in two flavours: "given_time" (p(k | tau observed, H), the likelihood's mark term) and
# "forecast" (p(k | H), the time not known). Older metrics.json files name the given-time ones without the
# suffix; LEGACY_NAMES maps them on reading, so old and new runs share one column.
METRICS: dict[str, MetricInfo] = {
    "nll_per_seq": MetricInfo("NLL per sequence, time + mark", "nats", -1),
    "nll_time_per_seq": MetricInfo("time NLL per sequence", "nats", -1),
    "nll_mark_per_seq": MetricInfo("mark NLL per sequence, given the time p(k | τ_obs, H)", "nats", -1),
    "nll_time_binned_per_seq": MetricInfo("binned time NLL per sequence, -log P(gap's lattice bin)", "nats", -1),
    "nll_time_binned_per_event": MetricInfo("binned time NLL per event, -log P(gap's lattice bin)", "nats", -1),
    "nll_mark_forecast_per_seq": MetricInfo("mark NLL per sequence, forecast p(k | H)", "nats", -1),
    "nll_survival_per_seq": MetricInfo("survival term per sequence", "nats", 0),
    "nll_per_event": MetricInfo("NLL per event, time + mark", "nats", -1),
    "nll_time_per_event": MetricInfo("time NLL per event", "nats", -1),
    "nll_mark_per_event": MetricInfo("mark NLL per event, given the time p(k | τ_obs, H)", "nats", -1),
    "nll_mark_forecast_per_event": MetricInfo("mark NLL per event, forecast p(k | H)", "nats", -1),
    "accuracy_given_time": MetricInfo("mark accuracy given the time p(k | τ_obs, H)", "share of events", 1),
    "accuracy_forecast": MetricInfo("mark accuracy, forecast p(k | H)", "share of events", 1),
    "top3_accuracy": MetricInfo("top-3 mark accuracy", "share of events", 1),
    "top5_accuracy": MetricInfo("top-5 mark accuracy", "share of events", 1),
    "top10_accuracy": MetricInfo("top-10 mark accuracy", "share of events", 1),
    "mrr_given_time": MetricInfo("mark MRR given the time", "", 1),
    "mrr_forecast": MetricInfo("mark MRR, forecast", "", 1),
    "ece_given_time": MetricInfo("mark calibration error (ECE) given the time", "", -1),
    "ece_forecast": MetricInfo("mark calibration error (ECE), forecast", "", -1),
    "mce": MetricInfo("maximum mark calibration error (MCE)", "", -1),
    "brier": MetricInfo("Brier score of the marks", "", -1),
    "pce": MetricInfo("time calibration error (PCE)", "", -1),
    "pce_binned": MetricInfo("time calibration error of the lattice bins (PCE, non-randomised PIT)", "", -1),
    "mae_tau": MetricInfo("absolute error of the median gap", TIME_UNIT, -1),
    "rmse_tau": MetricInfo("RMS error of the median gap", TIME_UNIT, -1),
    "conflict_rate": MetricInfo("gradient conflict rate (steps with cos φ_TM < 0)", "share of measured steps", 0),
    "train_events_per_second": MetricInfo("training speed", "events / s", 0),
    **{f"top{k}_accuracy_{kind}": MetricInfo(f"top-{k} mark accuracy{words}", "share of events", 1)
       for k in (3, 5, 10) for kind, words in _KIND_WORDS.items()},
    **{f"mce_{kind}": MetricInfo(f"maximum mark calibration error (MCE){words}", "", -1)
       for kind, words in _KIND_WORDS.items()},
    **{f"brier_{kind}": MetricInfo(f"Brier score of the marks{words}", "", -1) for kind, words in _KIND_WORDS.items()},
    **{f"{HORIZON_PREFIX}{key}": info for key, info in _HORIZON_METRICS.items()},
}
"""The one table of metric names the report and the plots use: name in ``metrics.json`` -> :class:`MetricInfo`
(label in words, unit, lower or higher is better). Names not listed fall back to :data:`LOWER_IS_BETTER` /
:data:`HIGHER_IS_BETTER` prefixes."""
LEGACY_NAMES = {"accuracy": "accuracy_given_time", "mrr": "mrr_given_time", "ece": "ece_given_time"}
"""Old metric name -> the name it has now (applied when reading runs and to ``--metrics``)."""

DEFAULT_METRICS = (
    "nll_time_per_seq",
    "nll_time_binned_per_seq",  # data on a lattice only (mtpp.data.lattice)
    "nll_mark_per_seq",
    "nll_time_per_event",
    "nll_mark_per_event",
    "nll_mark_forecast_per_seq",
    "accuracy_forecast",
    "accuracy_given_time",
    "mrr_forecast",
    "mrr_given_time",
    "pce",
    "pce_binned",  # data on a lattice only
    "ece_forecast",
    "ece_given_time",
    "mae_tau",
    "conflict_rate",
)
"""What ``mtpp report`` tabulates and plots by default (those present in the runs)."""

LOWER_IS_BETTER = ("nll", "pce", "ece", "mce", "brier", "mae", "rmse")
"""Fallback for names not in :data:`METRICS`: prefixes where lower is better."""
HIGHER_IS_BETTER = ("accuracy", "top", "mrr")
"""Fallback for names not in :data:`METRICS`: prefixes where higher is better."""


def canonical_metric(name: str) -> str:
    """The current name of a metric (``accuracy`` -> ``accuracy_given_time``; ``val/ece`` -> ``val/ece_given_time``)."""
    head, sep, tail = name.rpartition("/")
    return head + sep + LEGACY_NAMES.get(tail, tail)


def metric_info(name: str) -> MetricInfo:
    """The :data:`METRICS` entry of ``name`` (legacy names accepted), else one derived from the name."""
    base = canonical_metric(name).rsplit("/", 1)[-1]
    if base in METRICS:
        return METRICS[base]
    if m := HORIZON_MAP.match(base):
        return MetricInfo(f"mAP of the events forecast within the horizon at time tolerance {m.group(1)} (the "
                          "data's time units)", "", 1, HOTPP)
    better = -1 if base.startswith(LOWER_IS_BETTER) else 1 if base.startswith(HIGHER_IS_BETTER) else 0
    return MetricInfo(base.replace("_", " "), "", better)


# Flattened config fields that never define a cell (bookkeeping, not the experiment).
_IGNORED_CONFIG_PREFIXES = (
    *(f"config.{k}" for k in NON_SEMANTIC_KEYS),
    "config.data.split",  # the replicates of a cell
    "config.train.seed",
)
_CONFIG_SECTIONS = ("data", "model", "train", "gradients")

PARAM_SYMBOLS = {"base": "base", "plus": "+", "plusplus": "++"}


def param_symbol(parametrisation: Any) -> str:
    """``base`` / ``+`` / ``++`` for the parametrisation names (anything else unchanged)."""
    return PARAM_SYMBOLS.get(str(parametrisation), str(parametrisation))


def metric_unit(name: str, dataset: Any = None) -> str:
    """The unit of ``name`` (:func:`metric_info`) on ``dataset``: :data:`TIME_UNIT` spelt out as the catalog's
    documented unit (``"hours"``, ``mtpp.data.catalog.time_unit_text``; ``"data units"`` where none is recorded)."""
    unit = metric_info(name).unit
    return time_unit_text(time_unit_of(dataset)) if unit == TIME_UNIT and dataset is not None else unit


def direction(metric: str) -> int:
    """-1 if lower is better, +1 if higher is better, 0 if neither (never bolded): :func:`metric_info`."""
    return metric_info(metric).better


# ----------------------------------------------------------------------------------------------------------------
# Reading runs


def find_runs(root: str | Path) -> list[Path]:
    """Run directories under ``root`` (``root`` itself included): folders holding ``metrics.json`` or
    ``config.yaml``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    dirs = {p.parent for name in ("metrics.json", "config.yaml") for p in root.rglob(name)}
    return sorted(dirs)


def _flatten(d: dict, prefix: str) -> dict[str, Any]:
    """``config.model.hidden_size``-style columns (``prefix`` + dotted keys); lists as JSON text (hashable)."""
    from mtpp.config import flatten

    return {f"{prefix}{k}": json.dumps(v) if isinstance(v, list) else v for k, v in flatten(d).items()}


def _get(d: dict, path: Sequence[str]) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _number(v: Any) -> Any:
    return math.nan if v is None else v


TOPK_NAME = re.compile(r"(?:^|/)top(\d+)_accuracy")
"""A top-``k`` accuracy column (``top5_accuracy_forecast``, ``val/top3_accuracy_given_time``); group 1 is ``k``."""


def _num_marks(metrics: dict, section: str, config: dict) -> int | None:
    """The run's number of marks ``K``: ``num_marks`` of its metrics (written since top-k accuracies stop below
    ``K``), else the data record of ``config.yaml`` (``run_info.data.num_marks``); ``None`` when neither has it."""
    sections = [metrics.get(section), *(v for v in metrics.values() if isinstance(v, dict))]
    found = next((s["num_marks"] for s in sections if isinstance(s, dict) and s.get("num_marks")), None)
    return int(found or _get(config, ("run_info", "data", "num_marks")) or 0) or None


class _UnreadableRun(MtppError):
    """A run folder whose ``config.yaml`` or ``metrics.json`` cannot be read; the message names the file."""


def load_run(run_dir: str | Path, section: str = "test") -> dict[str, Any]:
    """One run as a flat dict: key columns, ``run`` (the folder), ``config.<section>.<key>`` fields, the
    metrics of ``metrics.json[section]`` under their own names, the other sections as ``<name>/<metric>``, and
    the top-level scalars of ``metrics.json`` under their own names (a metric of ``section`` wins a clash).
    Legacy metric names are read under their current ones (:data:`LEGACY_NAMES`); top-``k`` accuracies with
    ``k >= K`` marks (1 whatever the model, written by older versions) are left out
    (:func:`mtpp.evaluation.metrics.topk_reported`)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    config: Any = {}
    try:
        if config_path.exists():
            config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise _UnreadableRun(f"{config_path}: not readable YAML ({' '.join(str(e).split())[:120]})") from None
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _UnreadableRun(f"{run_dir / 'metrics.json'}: not readable JSON ({e})") from None
    for name, value, path in (("config.yaml", config, config_path), ("metrics.json", metrics, run_dir / "metrics.json")):
        if not isinstance(value, dict):
            raise _UnreadableRun(f"{path}: holds {type(value).__name__}, not the mapping mtpp writes there")

    row: dict[str, Any] = {"run": str(run_dir)}
    for col, path in _KEY_PATHS.items():
        value = _get(config, path)
        if value is None and col == "seed":
            value = config.get("seed")
        row[col] = value
    if row["aggregator"] is None:
        row["aggregator"] = "sum"
    if row["dataset"] is None:
        row["dataset"] = run_dir.name
    row["model"] = row["decoder"]
    cell_path = run_dir / "cell.json"
    if cell_path.exists():
        with cell_path.open() as f:
            cell = json.load(f)
        row.update({k: v for k, v in cell.items() if k in (*KEY_COLUMNS, *REPLICATE_COLUMNS) and v is not None})
    gradients = config.get("gradients")
    if isinstance(gradients, dict):  # the options the aggregator ran with: an explicit default is no other cell
        from mtpp.training.aggregators import options_with_defaults

        options = options_with_defaults(gradients.get("aggregator") or "sum", gradients.get("options"))
        config = {**config, "gradients": {**gradients, "options": options}}
    row.update(_flatten({s: config[s] for s in _CONFIG_SECTIONS if isinstance(config.get(s), dict)}, "config."))

    c = canonical_metric  # old names (accuracy, mrr, ece) read under their current ones
    scalars = {c(k): _number(v) for k, v in metrics.items() if not isinstance(v, dict)}
    row.update(scalars)
    for name, values in metrics.items():
        if isinstance(values, dict) and name != section:
            row.update({f"{name}/{c(k)}": _number(v) for k, v in values.items() if not isinstance(v, (dict, list))})
    chosen = metrics.get(section, {})
    if isinstance(chosen, dict):
        row.update({c(k): _number(v) for k, v in chosen.items() if not isinstance(v, (dict, list))})
        if f"{HORIZON_PREFIX}window" in chosen:  # the horizon the horizon_* metrics were scored at
            row[HORIZON_COLUMN] = _number(chosen[f"{HORIZON_PREFIX}window"])
        baselines = chosen.get(f"{HORIZON_PREFIX}baselines")
        if isinstance(baselines, dict):  # the baselines scored beside the model: horizon_baselines/<name>/<key>
            for name, values in baselines.items():
                if isinstance(values, dict):
                    row.update({f"{BASELINE_PREFIX}{name}/{k}": _number(v) for k, v in values.items()
                                if not isinstance(v, (dict, list))})  # fmt: skip
    marks = _num_marks(metrics, section, config)
    if marks is not None:
        from mtpp.evaluation.metrics import topk_reported

        for key in [k for k in row if (m := TOPK_NAME.search(k)) and not topk_reported(int(m.group(1)), marks)]:
            del row[key]
    return row


def collect_runs(root: str | Path, section: str = "test") -> pd.DataFrame:
    """One row per finished run under ``root`` (see :func:`load_run`), sorted by cell then split / seed.

    ``df.attrs["incomplete"]``: run folders without ``metrics.json``; ``df.attrs["unreadable"]``: ``"RUN/FILE:
    why"`` for each run whose ``config.yaml`` or ``metrics.json`` cannot be read (damaged, edited by hand: left out
    and named, never a traceback); ``df.attrs["section"]``: ``section``; ``df.attrs["root"]``: ``root`` (run
    folders are shown relative to it).
    """
    rows, incomplete, unreadable = [], [], []
    for run_dir in find_runs(root):
        if (run_dir / "metrics.json").exists():
            try:
                rows.append(load_run(run_dir, section))
            except _UnreadableRun as e:
                unreadable.append(str(e))
        else:
            incomplete.append(str(run_dir))
    df = pd.DataFrame(rows)
    if len(df):
        order = [c for c in (*KEY_COLUMNS, *REPLICATE_COLUMNS, "run") if c in df.columns]
        df = df.sort_values(order, na_position="last", kind="stable").reset_index(drop=True)
    df.attrs["incomplete"] = incomplete
    df.attrs["unreadable"] = unreadable
    df.attrs["section"] = section
    df.attrs["root"] = str(root)
    return df


def cell_columns(df: pd.DataFrame, metrics: Iterable[str] | None = None) -> list[str]:
    """The columns defining a cell: :data:`KEY_COLUMNS` plus every experiment config field that varies between
    runs of the same key-cell (e.g. a learning-rate sweep), never split / seed / bookkeeping fields; and
    :data:`HORIZON_COLUMN` when ``metrics`` name a ``horizon_*`` metric and some run has a horizon (runs scored at
    different horizons are not replicates of one cell)."""
    keys = [c for c in KEY_COLUMNS if c in df.columns]
    covered = {f"config.{'.'.join(p)}" for p in _KEY_PATHS.values()}
    extra = []
    for col in df.columns:
        if not col.startswith("config.") or col in covered or col.startswith(_IGNORED_CONFIG_PREFIXES):
            continue
        varies = df.groupby(keys, dropna=False)[col].nunique(dropna=False).gt(1).any() if keys else False
        if varies:
            extra.append(col)
    horizon = HORIZON_COLUMN in df.columns and any(is_horizon_metric(canonical_metric(m)) for m in metrics or ())
    return keys + extra + [HORIZON_COLUMN] * horizon


# ----------------------------------------------------------------------------------------------------------------
# Summaries


def repeated_replicates(df: pd.DataFrame) -> list[str]:
    """Cells with two or more runs of the same split and seed (copies of a run, or a rerun beside the original):
    :func:`summarise` averages them into one replicate. One line per repeated (cell, split, seed)."""
    reps = [c for c in REPLICATE_COLUMNS if c in df.columns]
    if df.empty or not reps:
        return []
    keys = cell_columns(df)
    out = []
    for key, part in df.groupby([*keys, *reps], dropna=False, sort=True):
        if len(part) > 1:
            where = ", ".join(f"{c} {v}" for c, v in zip(reps, key[len(keys):]))
            out.append(f"{len(part)} runs of one cell have the same {where}: averaged into one replicate of its "
                       f"mean ± standard error: {', '.join(str(r) for r in part['run'])}")
    return out


def summarise(df: pd.DataFrame, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Mean and standard error over the runs of each cell, in long form.

    Returns one row per (cell, metric): the cell columns, ``metric``, ``mean``, ``stderr`` (``std(ddof=1) /
    sqrt(n)``, NaN when ``n < 2``), ``n`` (replicates with a finite value: runs of the same split and seed, copies or
    reruns, are averaged into one), ``runs`` (the cell's run folders, relative
    to ``df.attrs["root"]``, joined by ``"; "``), ``replicates`` (the splits and seeds the cell pools,
    :func:`replicate_label`: means over other splits are not comparable). ``metrics`` defaults to those of :data:`DEFAULT_METRICS`
    present in ``df`` (legacy names accepted); NaN values (e.g. the conflict rate of ``++``, which has no shared
    parameter) are left out of a cell's statistics, and a cell without any finite value has a NaN mean ("n/a").
    With ``horizon_*`` metrics, the cell columns end with :data:`HORIZON_COLUMN` (:func:`cell_columns`): one row
    per horizon, NaN for the runs never evaluated with ``--horizon``.
    """
    metrics = [canonical_metric(m) for m in (metrics or DEFAULT_METRICS)]
    metrics = [m for m in dict.fromkeys(metrics) if m in df.columns]
    keys = cell_columns(df, metrics)
    out_cols = [*keys, "metric", "mean", "stderr", "n", "runs", "replicates"]
    if df.empty or not metrics:
        return pd.DataFrame(columns=out_cols)
    reps = [c for c in REPLICATE_COLUMNS if c in df.columns]
    long = df[keys + reps + metrics].melt(id_vars=keys + reps, value_vars=metrics, var_name="metric",
                                          value_name="value")  # fmt: skip
    long["value"] = pd.to_numeric(long["value"], errors="coerce").replace([np.inf, -np.inf], np.nan)
    if reps:  # runs of one cell with the same split and seed are one replicate (their mean), not several
        long = long.groupby([*keys, *reps, "metric"], dropna=False, sort=False)["value"].mean().reset_index()
    grouped = long.groupby([*keys, "metric"], dropna=False, sort=False)["value"]
    stats = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1), n="count").reset_index()
    stats["stderr"] = np.where(stats["n"] >= 2, stats["std"] / np.sqrt(stats["n"].clip(lower=1)), np.nan)
    stats["metric"] = pd.Categorical(stats["metric"], categories=metrics, ordered=True)
    stats = stats.sort_values([*keys, "metric"], kind="stable").reset_index(drop=True)
    stats["metric"] = stats["metric"].astype(str)
    stats["n"] = stats["n"].astype(int)
    runs = _relative_runs(df)
    filled = df.assign(_runs=runs).astype({k: object for k in keys}).fillna({k: "\0" for k in keys})
    per_cell = filled.groupby(keys, dropna=False, sort=False)["_runs"].agg("; ".join)
    key_of = stats[keys].astype(object).fillna("\0")
    stats["runs"] = [per_cell.get(tuple(r) if len(keys) > 1 else r[0], "") for r in key_of.itertuples(index=False)]
    reps = {name: replicate_label([part[c].tolist() if c in part.columns else [None] * len(part)
                                   for c in REPLICATE_COLUMNS])
            for name, part in filled.groupby(keys, dropna=False, sort=False)}  # fmt: skip
    stats["replicates"] = [reps.get(tuple(r) if len(keys) > 1 else r[0], "") for r in key_of.itertuples(index=False)]
    return stats[out_cols]


def replicate_label(columns: Sequence[Sequence[Any]]) -> str:
    """The (split, seed) pairs of a cell's runs in words, from the two columns: ``"splits 0, 1 x seed 0"`` when
    they are all pairs of the listed splits and seeds, else the pairs (``"split/seed 0/0, 1/1"``)."""
    splits, seeds = columns
    pairs = {(format_value(a), format_value(b)) for a, b in zip(splits, seeds)}
    order = lambda v: (len(v), v)  # noqa: E731  numbers as numbers: 2 before 10
    sp = sorted({a for a, _ in pairs}, key=order)
    se = sorted({b for _, b in pairs}, key=order)
    if len(pairs) == len(sp) * len(se):
        return f"split{'s' * (len(sp) > 1)} {', '.join(sp)} x seed{'s' * (len(se) > 1)} {', '.join(se)}"
    return "split/seed " + ", ".join(f"{a}/{b}" for a, b in sorted(pairs, key=lambda p: (order(p[0]), order(p[1]))))


def _relative_runs(df: pd.DataFrame) -> list[str]:
    root = df.attrs.get("root")
    out = []
    for run in df["run"] if "run" in df.columns else [""] * len(df):
        p = Path(str(run))
        try:
            rel = p.relative_to(root) if root else p
        except ValueError:
            rel = p
        out.append(str(rel) if str(rel) != "." else p.name or str(p))
    return out


def _decimals(x: float) -> int:
    if not math.isfinite(x) or x == 0:
        return 2
    return int(np.clip(3 - math.floor(math.log10(abs(x))), 1, 4))


def column_decimals(means: Iterable[float]) -> int:
    """The decimals of one table column: 4 significant digits of its largest finite mean in magnitude (at least 1,
    at most 4; 2 when every mean is 0 or missing), so every row of the column has the same precision (``1.000``
    above ``0.000``, never ``0.00``; ``10.00`` above ``8.00``)."""
    finite = [abs(float(v)) for v in means if math.isfinite(float(v))]
    return _decimals(max(finite, default=0.0))


def format_mean_se(mean: float, stderr: float, decimals: int | None = None) -> str:
    """``"70.90 ± 1.23"`` (4 significant digits, at least 1 and at most 4 decimals; ``decimals`` when given: a
    table passes :func:`column_decimals` of the column); ``"n/a"`` when the mean is NaN (the metric does not
    apply, e.g. the conflict rate of ``++``), ``"–"`` for a missing standard error."""
    if not math.isfinite(mean):
        return "n/a"
    d = _decimals(mean) if decimals is None else decimals
    se = f"{stderr:.{d}f}" if math.isfinite(stderr) else "–"
    return f"{mean:.{d}f} ± {se}"


DATA_CUT_COLUMNS = ("config.data.max_sequences", "config.data.use_window", "config.data.sort",
                    "config.data.remap_marks")
"""Summary columns whose values give a run other test data from the same source (``mtpp.runs.mixed_data``): the
report compares (bolds, ranks) rows only among equal values of these."""


def _model_columns(keys: Sequence[str]) -> list[str]:
    return [k for k in keys if k not in ("dataset", "first_event")]


def format_markdown(summary: pd.DataFrame, title: str = "Results", section: str = "test") -> str:
    """Markdown: one table per dataset, one row per model, one column per metric ("mean ± se", every row of a
    column with the decimals of :func:`column_decimals`), the best mean of each column in bold (lower is better
    for NLL / PCE / ECE / MCE / Brier / MAE / RMSE, higher for accuracy / top-k / MRR; other columns are not
    bolded)."""
    if summary.empty:
        return f"# {title}\n\nNo finished runs.\n"
    keys = [c for c in summary.columns if c not in ("metric", "mean", "stderr", "n", "runs", "replicates")]
    model_keys = _model_columns(keys)
    metrics = list(dict.fromkeys(summary["metric"]))
    lines = [f"# {title}", ""]
    first_event = sorted({str(v) for v in summary.get("first_event", pd.Series(["?"])).dropna()}) or ["?"]
    conv = {
        "skip": "the first event of each sequence is not scored (empty history; the reference benchmark's rule)",
        "include": "every event is scored, the first one included",
    }
    lines.append(
        f"Split: **{section}**. First event: **{', '.join(first_event)}** — "
        + "; ".join(conv.get(f, f) for f in first_event)
        + ". Units: NLL in nats per sequence (`*_per_seq`: sum over the sequences / number of sequences, the "
        "paper's unit; the time NLL includes the survival term), or per scored event (`*_per_event`: the same "
        "total / number of scored events). "
        "Cells: mean ± standard error (std with ddof=1 / sqrt(n)) over the n splits / seeds, with one number of "
        "decimals per column (4 significant digits of its largest mean, with at least 1 and at most 4 decimals: "
        "0.0058 beside 0.0430, 21412.3 beside 9.1); – where n = 1; "
        "n/a where the metric does not apply (the conflict rate of ++, which shares no parameter; a top-k accuracy "
        "of a model with k marks or fewer, 1 whatever the model). "
        "Best mean per column in **bold** (↓ lower is better, ↑ higher is better), among the rows tested on the "
        "same data (rows of another `max_sequences`, `use_window` or `sort` are not compared with each other) and "
        "pooled over the same splits and seeds (a `pooled` column names them where rows differ). "
        "`runs`: the run folders pooled in each row."
    )
    if HORIZON_COLUMN in keys:
        lines[-1] += (
            " `horizon`: the time span after each prediction point that the `horizon_*` metrics score "
            "(`mtpp evaluate RUN --horizon T`, in the data's time units): runs scored at different horizons are "
            "separate rows, never pooled, and their `horizon_*` metrics are ranked only among rows of the same "
            f"horizon; {NOT_EVALUATED} (horizon –): the row's runs were never evaluated with `--horizon`."
        )
    lines.append("")
    lines.append("Metrics: " + "; ".join(f"`{m}` = {metric_info(m).described()}" for m in metrics) + ".")
    lines.append("")
    datasets = list(dict.fromkeys(summary["dataset"])) if "dataset" in summary else [None]
    for ds in datasets:
        part = summary if ds is None else summary[summary["dataset"] == ds]
        part = part.astype({k: object for k in model_keys}).fillna({k: "–" for k in model_keys})
        runs_of, reps_of = {}, {}
        for _, r in part.iterrows():
            if "runs" in part.columns:
                runs_of.setdefault(tuple(r[k] for k in model_keys), r["runs"])
            reps_of.setdefault(tuple(r[k] for k in model_keys), r.get("replicates", ""))
        pooled = len(set(reps_of.values())) > 1  # rows pooled over other splits / seeds: said, and not ranked
        indexed = part.set_index([*model_keys, "metric"])
        wide_mean = indexed["mean"].unstack("metric")
        wide_se = indexed["stderr"].unstack("metric")
        wide_n = indexed["n"].unstack("metric")
        cols = [m for m in metrics if m in wide_mean.columns]
        decimals = {m: column_decimals(wide_mean[m]) for m in cols}  # one precision per column
        # rows tested on other data (another max_sequences cut, ...) are not compared: bold within each data group
        cut = [i for i, k in enumerate(model_keys) if k in DATA_CUT_COLUMNS]
        # horizon_* metrics scored at different horizons are not compared either (other metrics of those rows are)
        at = [i for i, k in enumerate(model_keys) if k == HORIZON_COLUMN]

        def group(idx: Any, m: str) -> tuple:
            idx_t = idx if isinstance(idx, tuple) else (idx,)
            horizon = tuple(idx_t[i] for i in at) if is_horizon_metric(m) else ()
            return (*(idx_t[i] for i in cut), *horizon, reps_of.get(idx_t, ""))

        best: dict[tuple[str, tuple], float] = {}
        for m in cols:
            d = direction(m)
            for g in {group(i, m) for i in wide_mean.index}:
                vals = wide_mean[m][[group(i, m) == g for i in wide_mean.index]].dropna()
                if d and len(vals) > 1:
                    best[(m, g)] = float(vals.min() if d < 0 else vals.max())
        n_runs = int(np.nanmax(wide_n.to_numpy())) if wide_n.size else 0
        about = [f"times in {time_unit_text(time_unit_of(ds))}"] if ds is not None else []
        about += [f"n ≤ {n_runs} runs per model"] if n_runs else []
        lines.append(f"## {ds}" + (f" ({'; '.join(about)})" if about else ""))
        lines.append("")
        header = [_pretty_key(k) for k in model_keys] + ["pooled"] * pooled + [
            f"{m} {'↓' if direction(m) < 0 else '↑' if direction(m) > 0 else ''}".strip() for m in cols
        ]
        if runs_of:
            header.append("runs")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join([":--"] * (len(model_keys) + pooled) + ["--:"] * len(cols)
                                    + [":--"] * bool(runs_of)) + "|")  # fmt: skip
        for idx in wide_mean.index:
            idx_t = idx if isinstance(idx, tuple) else (idx,)
            cells = [
                param_symbol(v) if k == "parametrisation" else format_value(v)
                for k, v in zip(model_keys, idx_t)
            ] + [reps_of.get(idx_t, "")] * pooled
            unscored = bool(at) and idx_t[at[0]] == "–"  # no horizon: never evaluated with --horizon
            for m in cols:
                mean, se = float(wide_mean.at[idx, m]), float(wide_se.at[idx, m])
                text = format_mean_se(mean, se, decimals[m])
                if not math.isfinite(mean) and unscored and is_horizon_metric(m):
                    text = NOT_EVALUATED
                if best.get((m, group(idx, m))) == mean:
                    text = f"**{text}**"
                cells.append(text)
            if runs_of:
                cells.append(format_runs(runs_of.get(idx_t, "")))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def format_value(v: Any) -> str:
    """A configuration value as the user wrote it: ``300`` (not ``300.0``, which a pandas column with gaps makes of
    it), ``0.001`` (the shortest repr), ``True``, ``lnm``; ``–`` for a missing value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    if isinstance(v, np.integer):
        return str(int(v))
    return str(v)


def format_runs(runs: str) -> str:
    """``"a/x/split0; a/x/split1"`` -> ``"`a/x/` split0, split1"``: the run folders of a row, their common
    parent once."""
    parts = [r for r in str(runs).split("; ") if r]
    if not parts:
        return ""
    if len(parts) == 1:
        return f"`{parts[0]}`"
    split = [p.split("/") for p in parts]
    common = []
    for segs in zip(*split):
        if len(set(segs)) != 1:
            break
        common.append(segs[0])
    common = common[: min(len(p) for p in split) - 1]
    rest = ", ".join("/".join(p[len(common):]) for p in split)
    return (f"`{'/'.join(common)}/` " if common else "") + rest


def cell_label(row: Any, keys: Sequence[str], with_param: bool = True) -> str:
    """A cell's name in a figure: the model (``THP``, ``THP+`` ...; encoder and aggregator when not the defaults)
    and every other cell key that is set, e.g. ``THP (max_epochs=1, max_sequences=300)``; ``keys`` are the cell
    columns (:func:`cell_columns`)."""
    get = row.get if hasattr(row, "get") else (lambda k, d=None: getattr(row, k, d))
    name = str(get("model") or get("decoder") or "?").upper()
    if with_param:
        p = str(get("parametrisation", "base"))
        name += "" if p == "base" else param_symbol(p)
    extra = []
    if get("encoder") and str(get("encoder")) != "gru" and str(get("encoder")).upper() not in name:
        extra.append(str(get("encoder")))
    if get("aggregator") and str(get("aggregator")) != "sum":
        extra.append(str(get("aggregator")))
    for k in keys:
        if k.startswith("config.") or k == HORIZON_COLUMN:
            value = _label_value(k, get(k)) if k == HORIZON_COLUMN else format_value(get(k))
            extra.append(f"{k.rsplit('.', 1)[-1]}={value}")
    return name + (f" ({', '.join(extra)})" if extra else "")


LABEL_PRIORITY = ("config.data.max_sequences", "config.train.max_epochs", "config.data.name", "config.train.lr",
                  "config.model.hidden_size")
"""The settings a figure label names first when cells with one model name differ in several."""


def cell_labels(df: pd.DataFrame, keys: Sequence[str], with_param: bool = True, max_extra: int = 2) -> list[str]:
    """One figure label per row of ``df`` (runs or summary rows): the model name (:func:`cell_label` without
    settings) plus the settings among ``keys`` in which cells **of the same model name** differ, at most
    ``max_extra`` of them and ``+N more`` (first the settings that tell the most of those cells apart, ties in the
    order of :data:`LABEL_PRIORITY`): ``THP (max_sequences=300,
    max_epochs=1)`` beside ``THP (max_sequences=all, max_epochs=4)``; a model name that is unique stays bare. The
    horizon (:data:`HORIZON_COLUMN`) is on every label when the rows hold more than one.
    Labels still equal after that get ``#1``, ``#2`` ... so no two cells ever share one."""
    rows = [r for _, r in df.iterrows()]
    names = [cell_label(r, [], with_param) for r in rows]
    # the settings that may tell cells of one name apart; the encoder too, which the name leaves out when it is
    # GRU or the decoder's namesake (GRU-THP and THP-THP are both "THP")
    config_keys = [k for k in ("encoder", *keys) if (k in ("encoder", HORIZON_COLUMN) or k.startswith("config."))
                   and k in df.columns]  # fmt: skip
    config_keys = list(dict.fromkeys(config_keys))
    prio = {k: i for i, k in enumerate(("encoder", *LABEL_PRIORITY))}
    cell_key = [tuple(format_value(r.get(k)) for k in keys if k in df.columns) for r in rows]
    labels = []
    by_name: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        by_name.setdefault(n, []).append(i)
    diff_of: dict[str, list[str]] = {}
    # the horizon of horizon_* metrics is named on every label once the figure holds more than one: a value is
    # read against its horizon, even where every cell of that model shares one
    everywhere = [k for k in config_keys if k == HORIZON_COLUMN and len({format_value(r.get(k)) for r in rows}) > 1]
    for n, idx in by_name.items():
        diff = [k for k in config_keys
                if k in everywhere or len({format_value(rows[i].get(k)) for i in idx}) > 1]  # fmt: skip
        diff = sorted(diff, key=lambda k: (prio.get(k, len(prio)), config_keys.index(k)))
        diff_of[n] = _most_telling(diff, [[format_value(rows[i].get(k)) for k in diff] for i in idx])
    for i, r in enumerate(rows):
        diff = diff_of[names[i]]
        shown = [f"{k.rsplit('.', 1)[-1]}={_label_value(k, r.get(k))}" for k in diff[:max_extra]]
        if len(diff) > max_extra:
            shown.append(f"+{len(diff) - max_extra} more")
        labels.append(names[i] + (f" ({', '.join(shown)})" if shown else ""))
    # cells that still share a label (they differ only in settings not shown) are numbered
    first: dict[str, list[tuple]] = {}
    for lbl, ck in zip(labels, cell_key):
        if ck not in first.setdefault(lbl, []):
            first[lbl].append(ck)
    return [lbl if len(first[lbl]) == 1 else f"{lbl} #{first[lbl].index(ck) + 1}" for lbl, ck in zip(labels, cell_key)]


def _most_telling(keys: list[str], values: list[list[str]]) -> list[str]:
    """``keys`` reordered greedily: next the key that tells apart the most of the rows (``values``: one list per
    row, in the order of ``keys``) that the keys before it leave equal; ties keep the order of ``keys``. So a
    label that shows only the first few keys shows the ones that separate cells, never a second key that repeats
    what the first one already said while the key the cells differ in hides behind ``+N more``."""
    order: list[int] = []
    rest = list(range(len(keys)))
    while rest:
        def groups(j: int) -> int:
            return len({tuple(v[i] for i in (*order, j)) for v in values})

        best = max(rest, key=lambda j: (groups(j), -rest.index(j)))
        order.append(best)
        rest.remove(best)
    return [keys[j] for j in order]


_UNSET = {"config.data.max_sequences": "all", HORIZON_COLUMN: "none"}  # what a null setting means, where it means
# something (no horizon: the run was never evaluated with --horizon)


def _label_value(key: str, v: Any) -> str:
    text = format_value(v)
    return _UNSET.get(key, "unset") if text == "–" else text


def _pretty_key(k: str) -> str:
    return {"parametrisation": "param"}.get(k, k.removeprefix("config."))


def summary_stem(section: str = "test", metrics: Sequence[str] | None = None) -> str:
    """The file name (without suffix) of a summary of ``section`` restricted to ``metrics``: ``summary`` for the
    test split and the default metrics; ``summary_val``, ``summary_test_pce_ece``, ... otherwise, so a summary of
    another split or of a few metrics never replaces the full one (a long metric list: its count and a hash)."""
    import hashlib

    parts = ["summary"] if section == "test" and not metrics else ["summary", section]
    if metrics:
        joined = "_".join(metrics)
        digest = hashlib.sha1(joined.encode()).hexdigest()[:8]
        parts.append(joined if len(joined) <= 60 else f"{len(metrics)}-metrics-{digest}")
    return "_".join(parts)


def format_baselines(df: pd.DataFrame, metrics: Iterable[str] | None = None) -> str:
    """Markdown: the baselines' values of the ``horizon_*`` metrics among ``metrics`` (those of the runs' rows,
    :data:`BASELINE_PREFIX`), one table per dataset and horizon, one row per baseline: mean ± standard error over
    the (split, seed) replicates of the runs scored at that horizon (the runs of one split share their baseline:
    it is fit on that split's training part and scored on the same points, so each replicate counts once).
    ``""`` when no metric is a horizon metric or no run has baselines."""
    metrics = [canonical_metric(m) for m in (metrics or ())]
    shown = [m for m in dict.fromkeys(metrics) if is_horizon_metric(m)]
    base_cols = [c for c in df.columns if c.startswith(BASELINE_PREFIX)]
    if not shown or not base_cols or HORIZON_COLUMN not in df.columns:
        return ""
    names = list(dict.fromkeys(c[len(BASELINE_PREFIX):].split("/", 1)[0] for c in base_cols))
    reps = [c for c in REPLICATE_COLUMNS if c in df.columns]
    lines = []
    datasets = list(dict.fromkeys(df["dataset"])) if "dataset" in df.columns else [None]
    for ds in datasets:
        part = df if ds is None else df[df["dataset"] == ds]
        for horizon in sorted(part[HORIZON_COLUMN].dropna().unique()):
            at = part[part[HORIZON_COLUMN] == horizon]
            rows = []
            for name in names:
                cells = []
                for m in shown:
                    col = f"{BASELINE_PREFIX}{name}/{m[len(HORIZON_PREFIX):]}"
                    if col not in at.columns:
                        cells.append("–")
                        continue
                    v = pd.to_numeric(at[col], errors="coerce").replace([np.inf, -np.inf], np.nan)
                    per_rep = (v.groupby([at[c] for c in reps], dropna=False).mean() if reps else v).dropna()
                    if per_rep.empty:
                        cells.append("–")
                        continue
                    se = float(per_rep.std(ddof=1) / math.sqrt(len(per_rep))) if len(per_rep) > 1 else math.nan
                    cells.append(format_mean_se(float(per_rep.mean()), se, column_decimals([per_rep.mean()])))
                if any(c != "–" for c in cells):
                    rows.append(f"| {name} | " + " | ".join(cells) + " |")
            if not rows:
                continue
            pooled = replicate_label([at[c].tolist() if c in at.columns else [None] * len(at)
                                      for c in REPLICATE_COLUMNS])  # fmt: skip
            unit = time_unit_text(time_unit_of(ds)) if ds is not None else "the data's time units"
            lines += [f"## {ds}: baselines at horizon {format_value(horizon)} ({unit}; {pooled})" if ds is not None
                      else f"## baselines at horizon {format_value(horizon)}", "",
                      "The reference forecasters scored by the same metrics on the same prediction points as the "
                      "models above at this horizon (`mtpp.forecast.baselines`: `poisson` is a homogeneous marked "
                      "Poisson process fit on each split's training part; `hawkes` the true process of "
                      "synthetic_hawkes): read each model's row against them. Mean ± standard error over the "
                      "splits / seeds named.", "",
                      "| baseline | " + " | ".join(shown) + " |", "|:--|" + "--:|" * len(shown), *rows, ""]
    return "\n".join(lines)


TRUNCATION_TOUCHES = {
    "truncated_samples": ("count_pce", "count_coverage", "count_mae", "count_mean_pred", "count_pit_hist"),
    "truncated_rollouts": ("tmap",),
}
"""The horizon metrics (without the prefix) computed from each kind of continuation that ``--max-events`` may cut
(``mtpp.forecast.horizon.TRUNCATION_TOUCHES``, with the count metrics the console table does not show; repeated
here so that reading runs never imports torch). ``map@<delta>`` keys go with ``tmap``."""


def truncation_notes(df: pd.DataFrame, metrics: Iterable[str] | None = None) -> list[str]:
    """One line per run whose ``horizon_*`` metrics among ``metrics`` were computed from continuations cut at
    ``--max-events`` before the horizon's end (``horizon_truncated_samples`` / ``horizon_truncated_rollouts`` of
    its row > 0): which metrics, how many of how many were cut, so a table never shows them as whole. ``[]``
    when none."""
    shown = [canonical_metric(m)[len(HORIZON_PREFIX):] for m in (metrics or ()) if is_horizon_metric(m)]
    shown = ["tmap" if HORIZON_MAP.match(f"{HORIZON_PREFIX}{m}") else m for m in shown]
    runs = _relative_runs(df) if len(df) else []
    out = []
    for (_, row), run in zip(df.iterrows(), runs):
        said = []
        for kind, touched in TRUNCATION_TOUCHES.items():
            cut = pd.to_numeric(pd.Series([row.get(f"{HORIZON_PREFIX}{kind}")]), errors="coerce").iloc[0]
            hit = [f"{HORIZON_PREFIX}{m}" for m in touched if m in shown]
            if not (cut > 0 and hit):
                continue
            points = pd.to_numeric(pd.Series([row.get(f"{HORIZON_PREFIX}points")]), errors="coerce").iloc[0]
            samples = pd.to_numeric(pd.Series([row.get(f"{HORIZON_PREFIX}samples")]), errors="coerce").iloc[0]
            total = points * samples if kind == "truncated_samples" else points
            what = "sampled continuations" if kind == "truncated_samples" else "mode rollouts"
            of = f" of {int(total)}" if total == total else ""
            cap = row.get(f"{HORIZON_PREFIX}max_events")
            at = f" at --max-events {int(cap)}" if pd.notna(cap) else ""
            said.append(f"{int(cut)}{of} {what} cut{at} before the horizon, their event counts lower bounds "
                        f"(computed from them: {', '.join(f'`{h}`' for h in hit)})")
        if said:
            out.append(f"`{run}`: " + "; ".join(said))
    return out


SETTING_APPLIES = {"config.train.separate_early_stopping": ("parametrisation", "plusplus")}
"""Training settings that exist for some rows only (``mtpp.config`` refuses them elsewhere): :func:`setting_notes`
compares them among those rows, so the "++" protocol (separate early stopping) is not reported as a difference
from the base and "+" rows that cannot have it."""


def _setting_defaults() -> dict[str, Any]:
    from mtpp.config import RunConfig

    return {f"config.{k}": v for k, v in _flatten(RunConfig().to_dict(), "").items()}


def setting_notes(df: pd.DataFrame, prefix: str = "config.train.", most: int = 6) -> list[str]:
    """One line per training setting (``config.train.*`` columns, not the non-semantic ones or the seed) whose
    value differs between rows of one dataset without being a cell column already (:func:`cell_columns`: it varies
    inside a cell there): ``"mooc: `train.max_epochs` 2 (5 runs), 3 (1 run: mooc/lnm-base-sum/split0-seed0)"``.
    A table silently put a model trained for 3 epochs beside models trained for 2 and bolded it best; the rows
    still show, and this says what they do not. A setting some rows cannot have (:data:`SETTING_APPLIES`) is
    compared among the rows that can; a run older than a setting counts with its default (``RunConfig``'s).
    ``[]`` when every dataset's rows share their training settings
    (at most ``most`` lines, the last one counting the rest)."""
    if df.empty or "dataset" not in df.columns:
        return []
    shown = set(cell_columns(df))
    cols = [c for c in df.columns if c.startswith(prefix) and c not in shown
            and not c.startswith(_IGNORED_CONFIG_PREFIXES)]  # fmt: skip
    runs = pd.Series(_relative_runs(df), index=df.index)
    defaults = _setting_defaults()
    out = []
    for dataset, part in df.groupby("dataset", dropna=False, sort=True):
        for col in cols:
            rows = part
            if col in SETTING_APPLIES and SETTING_APPLIES[col][0] in part.columns:
                key, value = SETTING_APPLIES[col]
                rows = part[part[key].astype(str) == value]
            default = defaults.get(col)  # a run older than the setting: it trained with the default
            values = rows[col].map(lambda v: json.dumps(default if _missing(v) else v, sort_keys=True, default=str))
            if values.nunique(dropna=False) < 2:
                continue
            groups = sorted(values.groupby(values, sort=False).groups.items(), key=lambda kv: -len(kv[1]))
            said = []
            for value, index in groups:
                n = len(index)
                named = f": {', '.join(runs[index])}" if n <= 3 and n < len(rows) / 2 else ""
                said.append(f"{value} ({n} run{'s' * (n != 1)}{named})")
            out.append(f"{dataset}: `{col[len('config.'):]}` " + ", ".join(said))
    if len(out) > most:
        out = out[: most - 1] + [f"... and {len(out) - most + 1} more"]
    return out


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def write_summary(
    df: pd.DataFrame,
    out_dir: str | Path,
    metrics: Iterable[str] | None = None,
    title: str = "Results",
    stem: str = "summary",
    notes: Iterable[str] | None = None,
) -> list[Path]:
    """Write ``STEM.csv`` (long format, one row per cell and metric: cell keys, metric, mean, stderr, n) and
    ``STEM.md`` (:func:`format_markdown`: one row per cell, one column per metric) into ``out_dir``; returns the
    two paths. ``stem``: ``summary`` (see :func:`summary_stem` for other splits or metric selections).
    ``MtppError`` (before writing anything) when either file exists and was not written by mtpp (``mtpp.owned``).
    ``notes``: lines stated under the Markdown title ("Not in this table: ..."; ``mtpp compare`` lists the cells of
    its grid without a run folder here).
    """
    from mtpp.owned import MD_MARK, check_ours

    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    check_ours([csv_path, md_path])
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(df, metrics)
    at = summary.columns.get_loc("metric") + 1  # beside each metric: what it measures and its unit, as in the .md
    table = summary.drop(columns="replicates")
    table.insert(at - 1, "replicates", summary["replicates"])  # a cell column: mtpp.owned reads the last seven
    at += 1
    datasets = summary["dataset"] if "dataset" in summary.columns else [None] * len(summary)
    table.insert(at, "unit", [metric_unit(m, ds) for m, ds in zip(summary["metric"], datasets)])
    table.insert(at, "meaning", [metric_info(m).meaning() for m in summary["metric"]])
    with replacing(csv_path) as tmp:  # whole or not at all (mtpp.files)
        table.to_csv(tmp, index=False)
    text = format_markdown(summary, title=title, section=df.attrs.get("section", "test"))
    asked = list(summary["metric"].unique())
    cut = truncation_notes(df, asked)
    if cut:  # horizon metrics from continuations cut at --max-events: said, never shown as whole
        text = (text.rstrip("\n") + "\n\n**Horizon metrics from continuations cut at `--max-events`** (`mtpp evaluate "
                "--horizon` with a larger `--max-events` gives whole ones, at more cost):\n\n"
                + "".join(f"- {line}\n" for line in cut))
    differ = setting_notes(df)
    if differ:  # rows trained with other budgets or protocols: said under the tables, never hidden
        text = (text.rstrip("\n") + "\n\n**Training settings that differ between rows of one dataset** (not cell "
                "columns; compare those rows knowing it):\n\n" + "".join(f"- {line}\n" for line in differ))
    baselines = format_baselines(df, asked)
    if baselines:  # the reference forecasters of the horizon metrics, after the models' tables
        text = text.rstrip("\n") + "\n\n" + baselines
    notes = list(notes or [])
    if notes:  # under the title, before the tables: a reader must not take the tables for the whole grid
        head, _, rest = text.partition("\n\n")
        text = head + "\n\n" + "**Not in this table:**\n\n" + "".join(f"- {n}\n" for n in notes) + "\n" + rest
    write_text(md_path, MD_MARK + "\n" + text)
    return [csv_path, md_path]


def write_notes_summary(out_dir: str | Path, notes: Iterable[str], title: str = "Results",
                        stem: str = "summary") -> Path:  # fmt: skip
    """Write ``STEM.md`` for a grid none of whose cells has a finished run folder in ``out_dir`` (all complete by
    their result records, deferred, failed): the title, ``notes`` (the cells and why they are not here, as
    :func:`write_summary` states them) and no table; returns its path. An earlier ``STEM.csv`` of mtpp's is
    emptied to its header (its rows were an earlier table's, which this summary no longer shows); none is created.
    ``MtppError`` (before writing) when either file exists and was not written by mtpp."""
    from mtpp.owned import MD_MARK, check_ours

    out_dir = Path(out_dir)
    md_path, csv_path = out_dir / f"{stem}.md", out_dir / f"{stem}.csv"
    check_ours([md_path, csv_path])
    out_dir.mkdir(parents=True, exist_ok=True)
    text = (f"# {title}\n\nNo finished run of this grid in this folder: no table.\n\n**Not in this table:**\n\n"
            + "".join(f"- {n}\n" for n in notes))
    write_text(md_path, MD_MARK + "\n" + text)
    if csv_path.is_file():  # the header write_summary writes, no row (mtpp.owned still knows it for its own)
        write_text(csv_path, "dataset,replicates,metric,meaning,unit,mean,stderr,n,runs\n")
    return md_path
