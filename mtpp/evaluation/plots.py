"""Plots of a folder of runs (PNG, matplotlib's Agg canvas; nothing global is touched, no pyplot state).

* :func:`plot_cos_tm` — distribution of ``cos phi_TM`` over training steps, base vs ``+``, for the shared
  encoder (``cos_tm/encoder``) and the shared decoder (``cos_tm/decoder``), conflict rates in the title.
* :func:`plot_validation_curves` — validation ``L_T`` and ``L_M`` per epoch.
* :func:`plot_reliability` — reliability diagram of the mark predictions (from ``arrays.json``).
* :func:`plot_pit` — PIT histogram and PIT CDF against the diagonal (from ``arrays.json``).
* :func:`plot_metric_bars` — base vs ``+`` vs ``++`` per metric, standard-error bars.
* :func:`make_all_plots` — all of them for every dataset under a root folder.

Inputs per run directory (DESIGN §5): ``log.jsonl`` (step records with ``cos_tm``, ``cos_tm/encoder``,
``cos_tm/decoder``; epoch records with validation losses, see :data:`VAL_TIME_KEYS`), and the arrays
(:meth:`mtpp.evaluation.metrics.MetricAccumulator.arrays`) as ``arrays_<split>.json`` (the trainer's files) or
``arrays.json`` (flat, or ``{"val": {...}, "test": {...}}``).
Runs of one cell (splits / seeds) are pooled.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import pandas as pd

from mtpp.evaluation.report import DEFAULT_METRICS, collect_runs, direction, param_symbol, summarise

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "ARRAYS_FILE",
    "VAL_TIME_KEYS",
    "VAL_MARK_KEYS",
    "read_log",
    "read_arrays",
    "plot_cos_tm",
    "plot_validation_curves",
    "plot_reliability",
    "plot_pit",
    "plot_metric_bars",
    "make_all_plots",
]

ARRAYS_FILE = "arrays.json"
LOG_FILE = "log.jsonl"
COS_KEYS = ("cos_tm/encoder", "cos_tm/decoder")
VAL_TIME_KEYS = ("val/nll_time_per_seq", "val_nll_time_per_seq", "val/loss_time", "val_loss_time", "val/nll_time")
"""Keys of an epoch record holding the validation time NLL, first match wins."""
VAL_MARK_KEYS = ("val/nll_mark_per_seq", "val_nll_mark_per_seq", "val/loss_mark", "val_loss_mark", "val/nll_mark")
"""Keys of an epoch record holding the validation mark NLL, first match wins."""
PARAM_ORDER = ("base", "plus", "plusplus")
PARAM_COLORS = {"base": "#4C72B0", "plus": "#DD8452", "plusplus": "#55A868"}
PARAM_STYLES = {"base": "-", "plus": "--", "plusplus": ":"}
MODEL_KEYS = ("model", "encoder", "aggregator")  # what names a model besides its parametrisation


# ----------------------------------------------------------------------------------------------------------------
# Reading


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/log.jsonl`` (a missing file gives ``[]``; a line cut short is skipped)."""
    path = Path(run_dir) / LOG_FILE
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records


def read_arrays(run_dir: str | Path, section: str = "test") -> dict[str, list] | None:
    """The plot arrays of a run for ``section``: ``arrays_<section>.json`` (what the trainer writes), else
    ``arrays.json`` (flat, or nested by section); ``None`` when absent."""
    path = Path(run_dir) / f"arrays_{section}.json"
    if path.exists():
        with path.open() as f:
            return json.load(f)
    path = Path(run_dir) / ARRAYS_FILE
    if not path.exists():
        return None
    with path.open() as f:
        data = json.load(f)
    if isinstance(data.get(section), dict):
        return data[section]
    return data if "pit_counts" in data or any(k.startswith("reliability_count") for k in data) else None


def _step_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "step" in r and r.get("kind", "step") == "step" and not _is_epoch(r)]


def _is_epoch(r: dict[str, Any]) -> bool:
    return r.get("kind") == "epoch" or any(k in r for k in (*VAL_TIME_KEYS, *VAL_MARK_KEYS))


def _values(records: Iterable[dict[str, Any]], key: str) -> np.ndarray:
    vals = [r.get(key) for r in records]
    return np.array([v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)], dtype=float)


def _first_key(record: dict[str, Any], keys: Sequence[str]) -> str | None:
    return next((k for k in keys if isinstance(record.get(k), (int, float))), None)


# ----------------------------------------------------------------------------------------------------------------
# Figure helpers


def _figure(width: float, height: float) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # the Agg canvas, chosen here, not at import
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: "Figure", path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _slug(*parts: Any) -> str:
    text = "-".join(str(p) for p in parts if p is not None and str(p) != "")
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "all"


def _model_label(row: pd.Series | dict, with_param: bool = True) -> str:
    name = str(row.get("model") or row.get("decoder") or "?").upper()
    if with_param:
        p = str(row.get("parametrisation", "base"))
        name += "" if p == "base" else param_symbol(p)
    extra = []
    if row.get("encoder") and str(row.get("encoder")) != "gru":
        extra.append(str(row["encoder"]))
    if row.get("aggregator") and str(row.get("aggregator")) != "sum":
        extra.append(str(row["aggregator"]))
    return name + (f" ({', '.join(extra)})" if extra else "")


def _conflict_rate(values: np.ndarray) -> float:
    return float(np.mean(values < 0)) if len(values) else math.nan


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.0f}%"


def _groups(df: pd.DataFrame, keys: Sequence[str]) -> Iterable[tuple[tuple, pd.DataFrame]]:
    keys = [k for k in keys if k in df.columns]
    filled = df.astype({k: object for k in keys}).fillna({k: "" for k in keys})
    for key, part in filled.groupby(keys, sort=True, dropna=False):
        yield (key if isinstance(key, tuple) else (key,)), part


# ----------------------------------------------------------------------------------------------------------------
# (a) cos phi_TM distributions


def plot_cos_tm(runs: pd.DataFrame, path: str | Path, title: str = "") -> Path | None:
    """Histograms of ``cos_tm/encoder`` and ``cos_tm/decoder`` over all logged steps of ``runs`` (one model on
    one dataset, any parametrisations; ``++`` has no shared parameter and no cosine), base vs ``+`` overlaid.
    The title gives each parametrisation's conflict rate (share of steps with ``cos_tm < 0``). ``None`` when no
    run logged a cosine."""
    per_param: dict[str, dict[str, np.ndarray]] = {}
    for param, part in runs.groupby("parametrisation", sort=False):
        steps = [r for run in part["run"] for r in _step_records(read_log(run))]
        vals = {k: _values(steps, k) for k in ("cos_tm", *COS_KEYS)}
        if any(len(v) for v in vals.values()):
            per_param[str(param)] = vals
    if not per_param:
        return None
    order = [p for p in PARAM_ORDER if p in per_param] + [p for p in per_param if p not in PARAM_ORDER]
    fig = _figure(9.5, 3.8)
    axes = fig.subplots(1, 2, sharey=False)
    bins = np.linspace(-1, 1, 41)
    for ax, key in zip(axes, COS_KEYS):
        group = key.split("/")[1]
        drawn = False
        for p in order:
            v = per_param[p][key]
            if not len(v):
                continue
            ax.hist(v, bins=bins, density=True, alpha=0.5, color=PARAM_COLORS.get(p), edgecolor="none",
                    label=f"{param_symbol(p)} (n={len(v)}, conflict {_pct(_conflict_rate(v))})")
            drawn = True
        ax.axvline(0, color="black", lw=0.8, ls="--")
        ax.set_xlim(-1, 1)
        ax.set_xlabel(r"$\cos\varphi_{TM}$ on the shared " + group)
        ax.set_ylabel("density over training steps")
        ax.set_title(f"shared {group}")
        if drawn:
            ax.legend(fontsize=8, loc="upper left")
        else:
            ax.text(0.5, 0.5, f"no shared {group}", ha="center", va="center", transform=ax.transAxes, color="gray")
    rates = ", ".join(f"{param_symbol(p)} {_pct(_conflict_rate(_overall(per_param[p])))}" for p in order)
    fig.suptitle(f"{title}: gradient conflict rate (cos < 0) {rates}" if title else f"conflict rate {rates}")
    return _save(fig, Path(path))


def _overall(vals: dict[str, np.ndarray]) -> np.ndarray:
    """The all-shared-parameters cosine, or the encoder's when the overall one was not logged."""
    return vals["cos_tm"] if len(vals["cos_tm"]) else vals["cos_tm/encoder"]


# ----------------------------------------------------------------------------------------------------------------
# (b) validation curves


def _val_curve(run: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    epochs, lt, lm = [], [], []
    last: dict[int, dict[str, Any]] = {}
    for r in read_log(run):
        if "epoch" in r and (_first_key(r, VAL_TIME_KEYS) or _first_key(r, VAL_MARK_KEYS)):
            last[int(r["epoch"])] = r  # a resumed run may repeat an epoch: keep the last record
    for e in sorted(last):
        r = last[e]
        kt, km = _first_key(r, VAL_TIME_KEYS), _first_key(r, VAL_MARK_KEYS)
        epochs.append(e)
        lt.append(r[kt] if kt else np.nan)
        lm.append(r[km] if km else np.nan)
    return np.array(epochs, dtype=float), np.array(lt, dtype=float), np.array(lm, dtype=float)


def plot_validation_curves(runs: pd.DataFrame, path: str | Path, title: str = "") -> Path | None:
    """Validation ``L_T`` and ``L_M`` per epoch, one colour per model, one line per run (split / seed); line
    style by parametrisation (base solid, ``+`` dashed, ``++`` dotted)."""
    curves = []
    for label, part in _label_groups(runs):
        style = PARAM_STYLES.get(str(part["parametrisation"].iloc[0]), "-")
        for run in part["run"]:
            e, lt, lm = _val_curve(run)
            if len(e):
                curves.append((label, style, e, lt, lm))
    if not curves:
        return None
    labels = list(dict.fromkeys(c[0] for c in curves))
    colors = _colors(len(labels))
    fig = _figure(10, 4)
    axes = fig.subplots(1, 2)
    seen: set[str] = set()
    for label, style, e, lt, lm in curves:
        c = colors[labels.index(label)]
        kw = {"label": label} if label not in seen else {}
        seen.add(label)
        axes[0].plot(e, lt, color=c, ls=style, lw=1.3, alpha=0.8, **kw)
        axes[1].plot(e, lm, color=c, ls=style, lw=1.3, alpha=0.8)
    from matplotlib.ticker import MaxNLocator

    for ax, name in zip(axes, (r"validation $L_T$ (time NLL)", r"validation $L_M$ (mark NLL)")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}: validation losses per epoch" if title else "validation losses per epoch")
    return _save(fig, Path(path))


def _label_groups(runs: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    keys = [k for k in (*MODEL_KEYS, "parametrisation") if k in runs.columns]
    for _, part in _groups(runs, keys):
        yield _model_label(part.iloc[0]), part


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# (c) reliability and (d) PIT, pooled over the runs of a model


RELIABILITY_KIND = "forecast"
"""Which mark distribution the reliability diagrams show: the forecast ``p(k | H)`` (``given_time`` for runs whose
arrays have no forecast)."""


def _pooled_arrays(part: pd.DataFrame, section: str) -> dict[str, np.ndarray] | None:
    count = conf_sum = acc_sum = pit = None
    edges = pit_edges = None
    for run in part["run"]:
        a = read_arrays(run, section)
        if not a:
            continue
        kind = RELIABILITY_KIND if a.get(f"reliability_count_{RELIABILITY_KIND}") is not None else "given_time"
        if a.get(f"reliability_count_{kind}") is not None:
            c = np.asarray(a[f"reliability_count_{kind}"], dtype=float)
            conf = np.nan_to_num(np.asarray(a[f"reliability_confidence_{kind}"], dtype=float))
            acc = np.nan_to_num(np.asarray(a[f"reliability_accuracy_{kind}"], dtype=float))
            count = c if count is None else count + c
            conf_sum = c * conf if conf_sum is None else conf_sum + c * conf
            acc_sum = c * acc if acc_sum is None else acc_sum + c * acc
            edges = np.asarray(a.get(f"reliability_edges_{kind}") or np.linspace(0, 1, len(c) + 1), dtype=float)
        if a.get("pit_counts") is not None:
            p = np.asarray(a["pit_counts"], dtype=float)
            pit = p if pit is None else pit + p
            pit_edges = np.asarray(a.get("pit_edges") or np.linspace(0, 1, len(p) + 1), dtype=float)
    if count is None and pit is None:
        return None
    out: dict[str, np.ndarray] = {}
    if count is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            out.update(count=count, confidence=conf_sum / count, accuracy=acc_sum / count, edges=edges)
    if pit is not None:
        out.update(pit_counts=pit, pit_edges=pit_edges)
    return out


def plot_reliability(runs: pd.DataFrame, path: str | Path, title: str = "", section: str = "test") -> Path | None:
    """Reliability diagram of the top-class mark forecast ``p(k | H)`` (``RELIABILITY_KIND``): accuracy vs mean
    confidence per bin, one line per
    model (runs pooled), the diagonal, and the share of events per bin below. ECE in the legend."""
    models = [(label, arr) for label, part in _label_groups(runs)
              if (arr := _pooled_arrays(part, section)) is not None and "count" in arr]
    if not models:
        return None
    colors = _colors(len(models))
    fig = _figure(6.5, 6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="perfect calibration")
    for (label, a), c in zip(models, colors):
        ok = a["count"] > 0
        n = a["count"].sum()
        ece = float(np.sum(a["count"][ok] / n * np.abs(a["accuracy"][ok] - a["confidence"][ok])))
        top.plot(a["confidence"][ok], a["accuracy"][ok], marker="o", ms=4, color=c, label=f"{label} (ECE {ece:.3f})")
        centers = (a["edges"][:-1] + a["edges"][1:]) / 2
        bottom.step(centers, a["count"] / n, where="mid", color=c)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy (share of top-1 hits)")
    top.legend(fontsize=8, loc="upper left")
    top.grid(alpha=0.3)
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("share of events")
    bottom.grid(alpha=0.3)
    top.set_title(f"{title}: mark reliability ({section})" if title else f"mark reliability ({section})")
    return _save(fig, Path(path))


def plot_pit(runs: pd.DataFrame, path: str | Path, title: str = "", section: str = "test") -> Path | None:
    """PIT histogram (density, uniform = 1) and PIT CDF against the diagonal, one line per model (runs pooled);
    PCE in the legend."""
    models = [(label, arr) for label, part in _label_groups(runs)
              if (arr := _pooled_arrays(part, section)) is not None and "pit_counts" in arr]
    if not models:
        return None
    colors = _colors(len(models))
    fig = _figure(10.5, 4)
    hist_ax, cdf_ax = fig.subplots(1, 2)
    for (label, a), c in zip(models, colors):
        counts, edges = a["pit_counts"], a["pit_edges"]
        n = counts.sum()
        if n == 0:
            continue
        density = counts / n / np.diff(edges)
        hist_ax.stairs(density, edges, color=c, lw=1.4, label=label)
        cdf = np.cumsum(counts) / n
        pce = float(np.mean(np.abs(cdf - edges[1:])))
        cdf_ax.plot(np.r_[0.0, edges[1:]], np.r_[0.0, cdf], color=c, lw=1.4, label=f"{label} (PCE {pce:.3f})")
    hist_ax.axhline(1.0, color="gray", ls="--", lw=1, label="uniform")
    hist_ax.set_xlim(0, 1)
    hist_ax.set_xlabel(r"PIT value $u = F(\tau \mid H)$")
    hist_ax.set_ylabel("density")
    hist_ax.set_title("PIT histogram")
    hist_ax.legend(fontsize=8)
    cdf_ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="perfect calibration")
    cdf_ax.set_xlim(0, 1)
    cdf_ax.set_ylim(0, 1)
    cdf_ax.set_xlabel("quantile level $j/50$")
    cdf_ax.set_ylabel(r"empirical CDF of PIT, share $u \leq j/50$")
    cdf_ax.set_title("PIT CDF")
    cdf_ax.legend(fontsize=8, loc="upper left")
    for ax in (hist_ax, cdf_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: time calibration ({section})" if title else f"time calibration ({section})")
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------------------------------------------
# (e) base vs + vs ++


def plot_metric_bars(
    runs: pd.DataFrame, path: str | Path, metrics: Sequence[str] | None = None, title: str = ""
) -> Path | None:
    """One panel per metric: a group of bars per model (base / ``+`` / ``++``), height = mean over the runs,
    error bar = standard error (none when n = 1)."""
    summary = summarise(runs, metrics or DEFAULT_METRICS)
    if summary.empty:
        return None
    summary = summary[np.isfinite(summary["mean"].astype(float))]
    mets = list(dict.fromkeys(summary["metric"]))
    if not mets:
        return None
    summary = summary.assign(_label=[_model_label(r, with_param=False) for _, r in summary.iterrows()])
    labels = list(dict.fromkeys(summary["_label"]))
    params = [p for p in PARAM_ORDER if p in set(summary["parametrisation"])]
    params += [p for p in dict.fromkeys(summary["parametrisation"]) if p not in params]
    ncols = min(3, len(mets))
    nrows = math.ceil(len(mets) / ncols)
    fig = _figure(4.2 * ncols, 3.2 * nrows + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    width = 0.8 / max(len(params), 1)
    x = np.arange(len(labels))
    for ax, m in zip(axes, mets):
        part = summary[summary["metric"] == m]
        for j, p in enumerate(params):
            rows = part[part["parametrisation"] == p].set_index("_label")
            rows = rows[~rows.index.duplicated()]
            means = np.array([rows["mean"].get(lbl, np.nan) for lbl in labels], dtype=float)
            errs = np.array([rows["stderr"].get(lbl, np.nan) for lbl in labels], dtype=float)
            ax.bar(x + (j - (len(params) - 1) / 2) * width, means, width, yerr=np.nan_to_num(errs),
                   capsize=3, color=PARAM_COLORS.get(p), label=param_symbol(p), error_kw={"lw": 1})
        arrow = {-1: " (lower is better)", 1: " (higher is better)"}.get(direction(m), "")
        ax.set_title(m + arrow, fontsize=10)
        ax.set_xticks(x, labels, rotation=20 if len(labels) > 3 else 0, fontsize=8)
        ax.axhline(0, color="black", lw=0.6)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(mets):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8, title="parametrisation", title_fontsize=8)
    n = int(summary["n"].max())
    head = f"{title}: " if title else ""
    fig.suptitle(f"{head}base vs + vs ++ (mean ± standard error over up to {n} runs)")
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------------------------------------------
# Everything


def make_all_plots(
    root: str | Path,
    out_dir: str | Path,
    metrics: Sequence[str] | None = None,
    section: str = "test",
    runs: pd.DataFrame | None = None,
) -> list[Path]:
    """All plots of the finished runs under ``root`` into ``out_dir``; returns the files written.

    Per dataset: ``bars_<dataset>.png``, ``val_curves_<dataset>.png``, ``reliability_<dataset>.png``,
    ``pit_<dataset>.png``; per dataset and model (base and ``+`` side by side): ``cos_tm_<dataset>_<model>.png``.
    A plot whose inputs no run has (no ``arrays.json``, no cosine logged) is skipped.
    """
    out_dir = Path(out_dir)
    df = collect_runs(root, section) if runs is None else runs
    written: list[Path] = []
    if df.empty:
        return written
    for (dataset,), part in _groups(df, ["dataset"]):
        ds = _slug(dataset)
        for p in (
            plot_metric_bars(part, out_dir / f"bars_{ds}.png", metrics, title=str(dataset)),
            plot_validation_curves(part, out_dir / f"val_curves_{ds}.png", title=str(dataset)),
            plot_reliability(part, out_dir / f"reliability_{ds}.png", title=str(dataset), section=section),
            plot_pit(part, out_dir / f"pit_{ds}.png", title=str(dataset), section=section),
        ):
            if p is not None:
                written.append(p)
        for key, model_part in _groups(part, list(MODEL_KEYS)):
            label = _model_label(model_part.iloc[0], with_param=False)
            p = plot_cos_tm(model_part, out_dir / f"cos_tm_{ds}_{_slug(*key)}.png", title=f"{dataset} {label}")
            if p is not None:
                written.append(p)
    return written
