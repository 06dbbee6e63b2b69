"""Run directories -> tables: one row per run, mean and standard error over splits, CSV and Markdown.

A run directory (DESIGN §5) holds ``config.yaml`` (the resolved configuration: sections ``data``, ``model``,
``train``, ``gradients``, ... plus version / git / seed / device) and ``metrics.json``
(``{"val": {...}, "test": {...}, <scalars>...}``). Folders are found recursively under the root; a folder with a
``config.yaml`` but no ``metrics.json`` (a run still going, or one that crashed) is not a row and is listed in
``df.attrs["incomplete"]``.

Cells: runs that differ only by split and seed form a cell (a "model" on a dataset); ``summarise`` gives the
mean and the standard error ``std(ddof=1) / sqrt(n)`` over the runs of each cell (NaN when ``n = 1``, shown
as "–").
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import yaml

__all__ = [
    "KEY_COLUMNS",
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

DEFAULT_METRICS = (
    "nll_time_per_seq",
    "nll_mark_per_seq",
    "nll_time_per_event",
    "nll_mark_per_event",
    "nll_mark_forecast_per_seq",
    "accuracy_forecast",
    "accuracy_given_time",
    "mrr_forecast",
    "mrr_given_time",
    "pce",
    "ece_forecast",
    "ece_given_time",
    "mae_tau",
    "conflict_rate",
)

LOWER_IS_BETTER = ("nll", "pce", "ece", "mce", "brier", "mae", "rmse")
"""Metric name prefixes where lower is better (bolded as best in Markdown)."""
HIGHER_IS_BETTER = ("accuracy", "top", "mrr")
"""Metric name prefixes where higher is better. Other metrics (conflict rate, timings) are never bolded."""

# Flattened config fields that never define a cell (bookkeeping, not the experiment).
_IGNORED_CONFIG_PREFIXES = (
    "config.logging.",
    "config.variants",
    "config.data.data_dir",
    "config.data.num_workers",
    "config.data.split",
    "config.train.seed",
    "config.train.device",
    "config.train.compile",
    "config.train.eval_batch_size",
)
_CONFIG_SECTIONS = ("data", "model", "train", "gradients")

PARAM_SYMBOLS = {"base": "base", "plus": "+", "plusplus": "++"}


def param_symbol(parametrisation: Any) -> str:
    """``base`` / ``+`` / ``++`` for the parametrisation names (anything else unchanged)."""
    return PARAM_SYMBOLS.get(str(parametrisation), str(parametrisation))


def direction(metric: str) -> int:
    """-1 if lower is better, +1 if higher is better, 0 if neither (never bolded)."""
    name = metric.rsplit("/", 1)[-1]
    if name.startswith(LOWER_IS_BETTER):
        return -1
    if name.startswith(HIGHER_IS_BETTER):
        return 1
    return 0


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


def _flatten(d: Any, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list):
        out[prefix[:-1]] = json.dumps(d)
    else:
        out[prefix[:-1]] = d
    return out


def _get(d: dict, path: Sequence[str]) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _number(v: Any) -> Any:
    return math.nan if v is None else v


def load_run(run_dir: str | Path, section: str = "test") -> dict[str, Any]:
    """One run as a flat dict: key columns, ``run`` (the folder), ``config.<section>.<key>`` fields, the
    metrics of ``metrics.json[section]`` under their own names, the other sections as ``<name>/<metric>``, and
    the top-level scalars of ``metrics.json`` under their own names (a metric of ``section`` wins a clash)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    config: dict = {}
    if config_path.exists():
        with config_path.open() as f:
            config = yaml.safe_load(f) or {}
    with (run_dir / "metrics.json").open() as f:
        metrics = json.load(f)

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
    row.update(_flatten({s: config[s] for s in _CONFIG_SECTIONS if isinstance(config.get(s), dict)}, "config."))

    scalars = {k: _number(v) for k, v in metrics.items() if not isinstance(v, dict)}
    row.update(scalars)
    for name, values in metrics.items():
        if isinstance(values, dict) and name != section:
            row.update({f"{name}/{k}": _number(v) for k, v in values.items() if not isinstance(v, (dict, list))})
    chosen = metrics.get(section, {})
    if isinstance(chosen, dict):
        row.update({k: _number(v) for k, v in chosen.items() if not isinstance(v, (dict, list))})
    return row


def collect_runs(root: str | Path, section: str = "test") -> pd.DataFrame:
    """One row per finished run under ``root`` (see :func:`load_run`), sorted by cell then split / seed.

    ``df.attrs["incomplete"]``: run folders without ``metrics.json``; ``df.attrs["section"]``: ``section``.
    """
    rows, incomplete = [], []
    for run_dir in find_runs(root):
        if (run_dir / "metrics.json").exists():
            rows.append(load_run(run_dir, section))
        else:
            incomplete.append(str(run_dir))
    df = pd.DataFrame(rows)
    if len(df):
        order = [c for c in (*KEY_COLUMNS, *REPLICATE_COLUMNS, "run") if c in df.columns]
        df = df.sort_values(order, na_position="last", kind="stable").reset_index(drop=True)
    df.attrs["incomplete"] = incomplete
    df.attrs["section"] = section
    return df


def cell_columns(df: pd.DataFrame) -> list[str]:
    """The columns defining a cell: :data:`KEY_COLUMNS` plus every experiment config field that varies between
    runs of the same key-cell (e.g. a learning-rate sweep), never split / seed / bookkeeping fields."""
    keys = [c for c in KEY_COLUMNS if c in df.columns]
    covered = {f"config.{'.'.join(p)}" for p in _KEY_PATHS.values()}
    extra = []
    for col in df.columns:
        if not col.startswith("config.") or col in covered or col.startswith(_IGNORED_CONFIG_PREFIXES):
            continue
        varies = df.groupby(keys, dropna=False)[col].nunique(dropna=False).gt(1).any() if keys else False
        if varies:
            extra.append(col)
    return keys + extra


# ----------------------------------------------------------------------------------------------------------------
# Summaries


def summarise(df: pd.DataFrame, metrics: Iterable[str] | None = None) -> pd.DataFrame:
    """Mean and standard error over the runs of each cell, in long form.

    Returns one row per (cell, metric): the cell columns, ``metric``, ``mean``, ``stderr`` (``std(ddof=1) /
    sqrt(n)``, NaN when ``n < 2``), ``n`` (runs with a finite value). ``metrics`` defaults to those of
    :data:`DEFAULT_METRICS` present in ``df``; NaN values (e.g. the conflict rate of ``++``) are left out of a
    cell's statistics.
    """
    metrics = [m for m in (metrics or DEFAULT_METRICS) if m in df.columns]
    keys = cell_columns(df)
    out_cols = [*keys, "metric", "mean", "stderr", "n"]
    if df.empty or not metrics:
        return pd.DataFrame(columns=out_cols)
    long = df[keys + metrics].melt(id_vars=keys, value_vars=metrics, var_name="metric", value_name="value")
    long["value"] = pd.to_numeric(long["value"], errors="coerce").replace([np.inf, -np.inf], np.nan)
    grouped = long.groupby([*keys, "metric"], dropna=False, sort=False)["value"]
    stats = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1), n="count").reset_index()
    stats["stderr"] = np.where(stats["n"] >= 2, stats["std"] / np.sqrt(stats["n"].clip(lower=1)), np.nan)
    stats["metric"] = pd.Categorical(stats["metric"], categories=metrics, ordered=True)
    stats = stats.sort_values([*keys, "metric"], kind="stable").reset_index(drop=True)
    stats["metric"] = stats["metric"].astype(str)
    stats["n"] = stats["n"].astype(int)
    return stats[out_cols]


def _decimals(x: float) -> int:
    if not math.isfinite(x) or x == 0:
        return 2
    return int(np.clip(3 - math.floor(math.log10(abs(x))), 1, 4))


def format_mean_se(mean: float, stderr: float) -> str:
    """``"70.90 ± 1.23"`` (4 significant digits, at least 1 and at most 4 decimals), ``"– "`` for NaN parts."""
    if not math.isfinite(mean):
        return "–"
    d = _decimals(mean)
    se = f"{stderr:.{d}f}" if math.isfinite(stderr) else "–"
    return f"{mean:.{d}f} ± {se}"


def _model_columns(keys: Sequence[str]) -> list[str]:
    return [k for k in keys if k not in ("dataset", "first_event")]


def format_markdown(summary: pd.DataFrame, title: str = "Results", section: str = "test") -> str:
    """Markdown: one table per dataset, one row per model, one column per metric ("mean ± se"), the best mean
    of each column in bold (lower is better for NLL / PCE / ECE / MCE / Brier / MAE / RMSE, higher for accuracy
    / top-k / MRR; other columns are not bolded)."""
    if summary.empty:
        return f"# {title}\n\nNo finished runs.\n"
    keys = [c for c in summary.columns if c not in ("metric", "mean", "stderr", "n")]
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
        "Cells: mean ± standard error (std with ddof=1 / sqrt(n)) over the n splits / seeds; – where n = 1. "
        "Best mean per column in **bold** (↓ lower is better, ↑ higher is better)."
    )
    lines.append("")
    datasets = list(dict.fromkeys(summary["dataset"])) if "dataset" in summary else [None]
    for ds in datasets:
        part = summary if ds is None else summary[summary["dataset"] == ds]
        part = part.astype({k: object for k in model_keys}).fillna({k: "–" for k in model_keys})
        indexed = part.set_index([*model_keys, "metric"])
        wide_mean = indexed["mean"].unstack("metric")
        wide_se = indexed["stderr"].unstack("metric")
        wide_n = indexed["n"].unstack("metric")
        cols = [m for m in metrics if m in wide_mean.columns]
        best: dict[str, float] = {}
        for m in cols:
            d = direction(m)
            vals = wide_mean[m].dropna()
            if d and len(vals) > 1:
                best[m] = float(vals.min() if d < 0 else vals.max())
        n_runs = int(np.nanmax(wide_n.to_numpy())) if wide_n.size else 0
        lines.append(f"## {ds}" + (f" (n ≤ {n_runs} runs per model)" if n_runs else ""))
        lines.append("")
        header = [_pretty_key(k) for k in model_keys] + [
            f"{m} {'↓' if direction(m) < 0 else '↑' if direction(m) > 0 else ''}".strip() for m in cols
        ]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join([":--"] * len(model_keys) + ["--:"] * len(cols)) + "|")
        for idx in wide_mean.index:
            idx_t = idx if isinstance(idx, tuple) else (idx,)
            cells = [
                param_symbol(v) if k == "parametrisation" else str(v)
                for k, v in zip(model_keys, idx_t)
            ]
            for m in cols:
                mean, se = float(wide_mean.at[idx, m]), float(wide_se.at[idx, m])
                text = format_mean_se(mean, se)
                if m in best and mean == best[m]:
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _pretty_key(k: str) -> str:
    return {"parametrisation": "param"}.get(k, k.removeprefix("config."))


def write_summary(
    df: pd.DataFrame,
    out_dir: str | Path,
    metrics: Iterable[str] | None = None,
    title: str = "Results",
) -> list[Path]:
    """Write ``summary.csv`` (one row per cell and metric: cell keys, metric, mean, stderr, n) and
    ``summary.md`` (:func:`format_markdown`) into ``out_dir``; returns the two paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(df, metrics)
    csv_path = out_dir / "summary.csv"
    summary.to_csv(csv_path, index=False)
    md_path = out_dir / "summary.md"
    md_path.write_text(format_markdown(summary, title=title, section=df.attrs.get("section", "test")))
    return [csv_path, md_path]
