"""Plots of a folder of runs (PNG, matplotlib's Agg canvas; nothing global is touched, no pyplot state).

* :func:`plot_cos_tm` — distribution of ``cos phi_TM`` over training steps, base vs ``+``, one panel per group of
  shared parameters some run has (all, encoder, decoder), each legend with its panel's conflict rate.
* :func:`plot_validation_curves` — validation ``L_T`` and ``L_M`` (nats per sequence) per epoch, one line per run.
* :func:`plot_reliability` — mark reliability, one panel per cell, bins sized by their number of events.
* :func:`plot_pit` — time calibration, one panel per cell: ``F_hat(u) - u`` with a 95 % noise band.
* :func:`plot_metric_bars` — base vs ``+`` vs ``++`` per metric: points with standard-error bars on zoomed axes.
* :func:`make_all_plots` — all of them for every dataset under a root folder.

Cells, not labels. Runs are grouped by their full cell identity (``report.cell_columns``: dataset, model,
encoder, decoder, parametrisation, aggregator, first event, and any experiment setting that differs between
runs with the same model name, e.g. ``train.max_epochs``), named by ``report.cell_labels``; only the runs of one
cell (its splits / seeds) are pooled, and every figure says what it pooled. Numbers printed in a figure (ECE,
PCE) are the tables' (``summary.md``), and metric names, units and directions come from ``report.METRICS``.

Inputs per run directory (DESIGN §5): ``log.jsonl`` (step records with ``cos_tm``, ``cos_tm/encoder``,
``cos_tm/decoder``; epoch records with validation losses, see :data:`VAL_TIME_KEYS`), and the arrays
(:meth:`mtpp.evaluation.metrics.MetricAccumulator.arrays`) as ``arrays_<split>.json`` (the trainer's files) or
``arrays.json`` (flat, or ``{"val": {...}, "test": {...}}``).
"""

from __future__ import annotations

import glob
import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from mtpp.evaluation.report import (
    DATA_CUT_COLUMNS,
    DEFAULT_METRICS,
    HORIZON_COLUMN,
    NOT_EVALUATED,
    canonical_metric,
    cell_columns,
    cell_labels,
    collect_runs,
    format_mean_se,
    format_value,
    is_horizon_metric,
    metric_info,
    metric_unit,
    param_symbol,
    summarise,
)

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
    "wrapped_suptitle",
    "wrap_text",
]

ARRAYS_FILE = "arrays.json"
LOG_FILE = "log.jsonl"
COS_KEYS = ("cos_tm/encoder", "cos_tm/decoder")
VAL_TIME_KEYS = ("val/nll_time_per_seq", "val_nll_time_per_seq", "val/loss_time", "val_loss_time", "val/nll_time")
"""Keys of an epoch record holding the validation time NLL, first match wins."""
VAL_MARK_KEYS = ("val/nll_mark_per_seq", "val_nll_mark_per_seq", "val/loss_mark", "val_loss_mark", "val/nll_mark")
"""Keys of an epoch record holding the validation mark NLL, first match wins."""
MAX_FIGURE_WIDTH = 16.0
"""Inches: a figure of many panels puts no more of them side by side than fit this width (at the 110 dpi of the
PNGs, 1760 pixels: a page or a screen shows it with 8 pt text still readable), and the rest below."""
PARAM_ORDER = ("base", "plus", "plusplus")
PARAM_COLORS = {"base": "#4C72B0", "plus": "#DD8452", "plusplus": "#55A868"}
PARAM_STYLES = {"base": "-", "plus": "--", "plusplus": ":"}
MODEL_KEYS = ("model", "encoder", "aggregator")  # what names a model besides its parametrisation


# ----------------------------------------------------------------------------------------------------------------
# Reading


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/log.jsonl`` (a missing file gives ``[]``; a line cut short is skipped)."""
    from mtpp.files import read_jsonl

    return read_jsonl(Path(run_dir) / LOG_FILE)


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
    """The finite numbers under ``key``: null, NaN and inf (a step whose cosine is undefined) are not measured steps,
    as for the trainer's ``conflict_rate`` (``mtpp.training.gradients.conflict_rate``)."""
    vals = [r.get(key) for r in records]
    return np.array([v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)],
                    dtype=float)


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
    from mtpp.files import replacing
    from mtpp.owned import PNG_SOFTWARE, check_ours

    check_ours([path])  # a user's own figure of the same name is never overwritten
    path.parent.mkdir(parents=True, exist_ok=True)
    # constrained layout sizes the margins from the tick labels of the axes' first size, and the tick locator may pick
    # wider labels at the final size (a y label pushed past the figure's left edge): one layout pass before the one
    # savefig does lets it settle
    fig.draw_without_rendering()
    with replacing(path) as tmp:  # an interrupted report leaves no half a PNG (which the next would refuse)
        fig.savefig(tmp, format="png", metadata={"Software": PNG_SOFTWARE})
    return path


def _slug(*parts: Any) -> str:
    text = "-".join(str(p) for p in parts if p is not None and str(p) != "")
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "all"


def _cells(runs: pd.DataFrame, with_param: bool = True) -> tuple[list[str], Iterable[tuple[str, pd.DataFrame]]]:
    """``(keys, [(label, runs of the cell), ...])``: runs grouped by their full cell identity (every cell column
    of :func:`~mtpp.evaluation.report.cell_columns` but the dataset; without the parametrisation when
    ``with_param`` is false), each named by :func:`~mtpp.evaluation.report.cell_labels`. Two runs that share a
    model name but differ in any experiment setting are two cells, never one dropped."""
    keys = [k for k in cell_columns(runs) if k != "dataset" and (with_param or k != "parametrisation")]
    parts = [part for _, part in _groups(runs, keys)]
    if not parts:
        return keys, []
    firsts = pd.DataFrame([part.iloc[0] for part in parts])
    return keys, list(zip(cell_labels(firsts, keys, with_param), parts))


def _conflict_rate(values: np.ndarray) -> float:
    return float(np.mean(values < 0)) if len(values) else math.nan


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.0f}%"


def _groups(df: pd.DataFrame, keys: Sequence[str]) -> Iterable[tuple[tuple, pd.DataFrame]]:
    keys = [k for k in keys if k in df.columns]
    if not keys:
        yield (), df
        return
    filled = df.astype({k: object for k in keys}).fillna({k: "" for k in keys})
    for key, part in filled.groupby(keys, sort=True, dropna=False):
        yield (key if isinstance(key, tuple) else (key,)), df.loc[part.index]


def wrap_text(text: str, width: int) -> str:
    """``text`` in lines of at most ``width`` characters, broken at spaces; a word longer than a line (a model
    named ``my_lnm_gru_hidden64_components8``, a path) is cut at ``width``, so no label runs past its panel into
    the next one or squeezes the axes beside it to nothing."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False)) or text


_wrap = wrap_text
PANEL_TITLE_CHARS = 38
"""Characters per line of a 3.6-inch panel's 9 pt title: 38 capitals (cell labels spell model names in capitals, about
0.68 em each in DejaVu Sans) span 3.2 inches, so a wrapped title never reaches the next panel's."""


def wrapped_suptitle(fig: "Figure", text: str, fontsize: float = 9) -> None:
    """``fig.suptitle`` with each of ``text``'s lines wrapped to the figure's width (a one- or two-panel figure
    would otherwise cut the ends of a long line off)."""
    per_line = max(20, int(fig.get_figwidth() * 72 / (0.56 * fontsize)))  # characters that fit, DejaVu Sans
    fig.suptitle("\n".join(_wrap(line, per_line) for line in text.split("\n")), fontsize=fontsize)


def _pooled_note(runs: pd.DataFrame) -> str:
    """What one point / curve pools: ``"pooled over seeds 0, 1 (split 0)"``."""
    parts = []
    for col, word in (("split", "split"), ("seed", "seed")):
        if col in runs.columns:
            vals = sorted({format_value(v) for v in runs[col].dropna()}, key=lambda v: (len(v), v))
            if vals:
                parts.append(f"{word}{'s' if len(vals) > 1 else ''} {', '.join(vals)}")
    return "runs of a cell pooled over " + " x ".join(parts) if parts else "runs of a cell pooled"


def _table_value(part: pd.DataFrame, metric: str) -> str:
    """The cell's ``metric`` exactly as ``summary.md`` prints it (mean ± standard error over its runs)."""
    name = canonical_metric(metric)
    if name not in part.columns:
        return "n/a"
    v = pd.to_numeric(part[name], errors="coerce").replace([np.inf, -np.inf], np.nan).dropna()
    if v.empty:
        return "n/a"
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return format_mean_se(float(v.mean()), se)


# ----------------------------------------------------------------------------------------------------------------
# (a) cos phi_TM distributions

COS_PANELS = (
    ("cos_tm", "all shared parameters"),
    ("cos_tm/encoder", "shared encoder"),
    ("cos_tm/decoder", "shared decoder"),
)


def plot_cos_tm(runs: pd.DataFrame, path: str | Path, title: str = "") -> Path | None:
    """Histograms of ``cos phi_TM`` over the logged training steps of ``runs`` (one model on one dataset, any
    parametrisations), one panel per group of shared parameters that some run logged (all shared parameters,
    the encoder, the decoder; a group no run shares has no panel, and the encoder panel is left out when it is
    all that is shared, where it equals the first), base and ``+`` overlaid. Each legend gives the conflict
    rate of its panel (share of measured steps with ``cos < 0``, the mean over the runs, as ``conflict_rate`` in the
    tables); the title only says what the rates are. ``++`` shares nothing and has no cosine (said in the
    title). ``None`` when no run logged a cosine."""
    per_param: dict[str, dict[str, list[np.ndarray]]] = {}
    no_cos: list[str] = []
    for param, part in runs.groupby("parametrisation", sort=False):
        runs_vals = []
        for run in part["run"]:
            steps = _step_records(read_log(run))
            runs_vals.append({k: _values(steps, k) for k, _ in COS_PANELS})
        if any(len(v) for rv in runs_vals for v in rv.values()):
            per_param[str(param)] = {k: [rv[k] for rv in runs_vals if len(rv[k])] for k, _ in COS_PANELS}
        else:
            no_cos.append(str(param))
    if not per_param:
        return None
    order = [p for p in PARAM_ORDER if p in per_param] + [p for p in per_param if p not in PARAM_ORDER]
    panels = [(k, name) for k, name in COS_PANELS if any(per_param[p][k] for p in order)]
    only_encoder = all(
        len(per_param[p]["cos_tm"]) == len(per_param[p]["cos_tm/encoder"])
        and all(np.array_equal(a, b) for a, b in zip(per_param[p]["cos_tm"], per_param[p]["cos_tm/encoder"]))
        for p in order
    ) and not any(per_param[p]["cos_tm/decoder"] for p in order)
    if only_encoder:  # the encoder is all that is shared: one panel, not two identical ones
        panels = [("cos_tm", "all shared parameters (= the encoder)")]
    from matplotlib.colors import to_rgba

    fig = _figure(4.6 * len(panels) + 0.6, 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    bins = np.linspace(-1, 1, 41)
    for ax, (key, name) in zip(axes, panels):
        for p in order:
            per_run = per_param[p][key]
            if not per_run:
                continue
            v = np.concatenate(per_run)
            rate = float(np.mean([_conflict_rate(r) for r in per_run]))
            # a translucent fill under an opaque outline: where base and + overlap, both shapes stay traceable (two
            # translucent fills made a third colour, brown, that no legend entry names)
            color = PARAM_COLORS.get(p, "0.4")
            ax.hist(v, bins=bins, density=True, histtype="stepfilled", facecolor=to_rgba(color, 0.3),
                    edgecolor=color, lw=1.4,
                    label=f"{param_symbol(p)}: conflict {_pct(rate)} ({len(v)} steps, {len(per_run)} run"
                    f"{'s' if len(per_run) > 1 else ''})")
        ax.axvline(0, color="black", lw=0.8, ls="--")
        ax.set_xlim(-1, 1)
        ax.set_xlabel(r"$\cos\varphi_{TM}$ (time vs mark gradient)")
        ax.set_ylabel("density over training steps")
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.08), frameon=False)
    head = f"{title}: " if title else ""
    tail = f"; {', '.join(param_symbol(p) for p in no_cos)} shares no parameter: no cosine" if no_cos else ""
    wrapped_suptitle(fig, f"{head}cos φ_TM over training steps; conflict = share of measured steps with cos < 0 "
                   f"(mean over runs){tail}", fontsize=10)
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------------------------------------------
# (b) validation curves


def _val_value(r: dict[str, Any], keys: Sequence[str]) -> float:
    """The first of ``keys`` that ``r`` holds, as a float (NaN where it is null / NaN / inf: a diverged epoch); NaN
    when it holds none."""
    k = next((k for k in keys if k in r), None)
    v = r.get(k) if k else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else math.nan


def _val_curve(run: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(epochs, L_T, L_M)`` of the run's epoch records that hold a validation loss key, NaN where its value is not
    finite (the trainer writes a NaN / inf loss as null)."""
    epochs, lt, lm = [], [], []
    last: dict[int, dict[str, Any]] = {}
    for r in read_log(run):
        if "epoch" in r and any(k in r for k in (*VAL_TIME_KEYS, *VAL_MARK_KEYS)):
            last[int(r["epoch"])] = r  # a resumed run may repeat an epoch: keep the last record
    for e in sorted(last):
        epochs.append(e)
        lt.append(_val_value(last[e], VAL_TIME_KEYS))
        lm.append(_val_value(last[e], VAL_MARK_KEYS))
    return np.array(epochs, dtype=float), np.array(lt, dtype=float), np.array(lm, dtype=float)


OFF_SCALE_IQR = 10.0
"""A validation loss further than this many interquartile ranges (of every finite value of the panel) beyond the
quartiles is drawn as a marker on the panel's edge, not on the axis: one diverging run (CoGrad at gamma 0.1 reached
8.3e7 nats per sequence on MOOC) would otherwise flatten every other curve of the panel into one line."""
CURVE_MARKERS = ("o", "s", "^", "D", "v", "P")
"""Markers of the validation curves, one per block of 20 cells: beyond the 20 colours of ``tab20`` a cell repeats
a colour, and with the same parametrisation (line style) it would be drawn like another."""


def _in_scale(values: np.ndarray) -> tuple[float, float] | None:
    """``(low, high)``: the range of ``values`` (finite ones) within :data:`OFF_SCALE_IQR` interquartile ranges of the
    quartiles; ``None`` when every finite value is within it (the axis shows them all) or there is none."""
    v = values[np.isfinite(values)]
    if v.size < 4:
        return None
    q1, q3 = np.percentile(v, [25, 75])
    reach = OFF_SCALE_IQR * max(q3 - q1, 1e-9 * max(abs(q1), abs(q3), 1.0))
    inside = v[(v >= q1 - reach) & (v <= q3 + reach)]
    if inside.size == v.size:
        return None
    return float(inside.min()), float(inside.max())


def plot_validation_curves(runs: pd.DataFrame, path: str | Path, title: str = "") -> Path | None:
    """Validation ``L_T`` and ``L_M`` (nats per sequence) per epoch, one colour per cell, one line per run
    (split / seed); line style by parametrisation (base solid, ``+`` dashed, ``++`` dotted), and beyond 20 cells
    a marker per block of 20 (:data:`CURVE_MARKERS`). The legend is below the panels.

    Epochs whose loss is not finite (null in ``log.jsonl``: NaN / inf) are an ``x`` below the panel's top edge, values
    off the scale of the others (:data:`OFF_SCALE_IQR`) a triangle on the edge they are beyond; the caption says
    so when there are any. The epoch axis has whole epochs only (one epoch too)."""
    curves = []
    _, cells = _cells(runs)
    for label, part in cells:
        style = PARAM_STYLES.get(str(part["parametrisation"].iloc[0]), "-")
        for run in part["run"]:
            e, lt, lm = _val_curve(run)
            if len(e):
                curves.append((label, style, e, lt, lm))
    if not curves:
        return None
    labels = list(dict.fromkeys(c[0] for c in curves))
    colors = _colors(len(labels))
    fig = _figure(10, 4.2 + 0.22 * math.ceil(len(labels) / 3))
    axes = fig.subplots(1, 2)
    scales = [_in_scale(np.concatenate([c[3 + i] for c in curves])) for i in range(2)]
    seen: set[str] = set()
    marks = {"nonfinite": False, "off": False}
    for label, style, e, lt, lm in curves:
        i = labels.index(label)
        c, marker = colors[i], CURVE_MARKERS[(i // 20) % len(CURVE_MARKERS)]
        kw = {"label": _wrap(label, 40)} if label not in seen else {}  # three columns of the legend fit 10 inches
        seen.add(label)
        for ax, y, scale in zip(axes, (lt, lm), scales):
            ax.plot(e, y, color=c, ls=style, lw=1.3, alpha=0.8, marker=marker, ms=2.5, **kw)  # a 1-epoch run too
            kw = {}
            edge = ax.get_xaxis_transform()  # x in epochs, y in axes fraction
            bad = ~np.isfinite(y)
            if bad.any():
                marks["nonfinite"] = True
                ax.plot(e[bad], np.full(bad.sum(), 0.92), transform=edge, color=c, ls="", marker="x", ms=6,
                        clip_on=False, zorder=4)
            if scale is not None:
                for where, sel, sym in ((0.98, y > scale[1], "^"), (0.02, y < scale[0], "v")):
                    if sel.any():
                        marks["off"] = True
                        ax.plot(e[sel], np.full(sel.sum(), where), transform=edge, color=c, ls="", marker=sym,
                                ms=6, clip_on=False, zorder=4)
    from matplotlib.ticker import MaxNLocator

    names = ("validation time NLL $L_T$ (nats per sequence)", "validation mark NLL $L_M$ (nats per sequence)")
    epochs = np.concatenate([c[2] for c in curves])
    for ax, name, scale in zip(axes, names, scales):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # no "0.975 epochs" around one epoch
        if epochs.min() == epochs.max():
            ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
        if scale is not None:
            pad = 0.08 * max(scale[1] - scale[0], 1e-9 * max(abs(scale[0]), 1.0))
            ax.set_ylim(scale[0] - pad, scale[1] + pad)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=min(3, len(labels)), fontsize=8, frameon=False)
    notes = (["×: an epoch whose validation loss is not finite (NaN / inf)"] * marks["nonfinite"]
             + [f"▲ / ▼: values beyond the axis (more than {OFF_SCALE_IQR:g} interquartile ranges off the others)"]
             * marks["off"])  # fmt: skip
    head = f"{title}: validation losses per epoch (one line per run)" if title else \
        "validation losses per epoch (one line per run)"
    wrapped_suptitle(fig, head + "".join(f"\n{n}" for n in notes), fontsize=11)
    return _save(fig, Path(path))


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _grid(n: int, width: float = 3.6, height: float = 3.3, extra: float = 0.6,
          sharey: bool = True) -> tuple["Figure", np.ndarray]:  # fmt: skip
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = _figure(width * ncols + 0.4, height * nrows + extra)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=sharey)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _label_axes(axes: np.ndarray, n: int, xlabel: str, ylabel: str) -> None:
    """Axis labels of a grid of ``n`` panels: x on the lowest panel of each column, y on the first column."""
    ncols = min(3, n)
    for i, ax in enumerate(axes[:n]):
        if i + ncols >= n:
            ax.set_xlabel(xlabel)
            ax.tick_params(labelbottom=True)
        if i % ncols == 0:
            ax.set_ylabel(ylabel)


# ----------------------------------------------------------------------------------------------------------------
# (c) reliability and (d) PIT, pooled over the runs of a cell


RELIABILITY_KIND = "forecast"
"""Which mark distribution the reliability diagrams show by default: the forecast ``p(k | H)`` (``given_time`` for
runs whose arrays have no forecast); :func:`reliability_kind` picks the given-time one for a report whose metrics
ask only for its calibration."""


def reliability_kind(metrics: Sequence[str] | None) -> str:
    """The mark distribution (``forecast`` / ``given_time``, ``mtpp.evaluation.metrics.MARK_KINDS``) the reliability
    diagrams of a report of ``metrics`` show: ``given_time`` when the metrics name the calibration of ``p(k | tau,
    H)`` (``ece_given_time`` / ``mce_given_time``) and not that of the forecast, so the ECE in the figure is the one
    of the table; else :data:`RELIABILITY_KIND` (``None``: the default metrics, which hold both)."""
    names = set(metrics or ())
    given = {"ece_given_time", "mce_given_time", "ece", "mce"} & names  # ece / mce: the old names of given_time
    forecast = {"ece_forecast", "mce_forecast"} & names
    return "given_time" if given and not forecast else RELIABILITY_KIND


def _pooled_arrays(part: pd.DataFrame, section: str,
                   kind_wanted: str = RELIABILITY_KIND) -> dict[str, np.ndarray] | None:  # fmt: skip
    count = conf_sum = acc_sum = pit = binned = None
    edges = pit_edges = None
    fine: dict[str, np.ndarray] | None = None  # the fine bins (figure only), pooled while every run has them
    all_fine = True
    all_binned = True
    kinds: set[str] = set()
    distinct: dict[Any, float] = {}  # split -> events of its largest run: runs of one split share their test events
    splits = part["split"] if "split" in part.columns else [None] * len(part)
    for run, split in zip(part["run"], splits):
        a = read_arrays(run, section)
        if not a:
            continue
        kind = kind_wanted if a.get(f"reliability_count_{kind_wanted}") is not None else "given_time"
        if a.get(f"reliability_count_{kind}") is None and a.get("reliability_count") is not None:
            a = {f"{k}_given_time" if k.startswith("reliability_") else k: v for k, v in a.items()}  # older runs
        if a.get(f"reliability_count_{kind}") is not None:
            kinds.add(kind)
            c = np.asarray(a[f"reliability_count_{kind}"], dtype=float)
            conf = np.nan_to_num(np.asarray(a[f"reliability_confidence_{kind}"], dtype=float))
            acc = np.nan_to_num(np.asarray(a[f"reliability_accuracy_{kind}"], dtype=float))
            count = c if count is None else count + c
            conf_sum = c * conf if conf_sum is None else conf_sum + c * conf
            acc_sum = c * acc if acc_sum is None else acc_sum + c * acc
            edges = np.asarray(a.get(f"reliability_edges_{kind}") or np.linspace(0, 1, len(c) + 1), dtype=float)
            if a.get(f"reliability_fine_count_{kind}") is None:
                all_fine = False
            elif all_fine:
                fc = np.asarray(a[f"reliability_fine_count_{kind}"], dtype=float)
                fconf = fc * np.nan_to_num(np.asarray(a[f"reliability_fine_confidence_{kind}"], dtype=float))
                facc = fc * np.nan_to_num(np.asarray(a[f"reliability_fine_accuracy_{kind}"], dtype=float))
                if fine is None:
                    fine = {"count": fc, "conf_sum": fconf, "acc_sum": facc,
                            "edges": np.asarray(a[f"reliability_fine_edges_{kind}"], dtype=float)}
                else:
                    fine = {**fine, "count": fine["count"] + fc, "conf_sum": fine["conf_sum"] + fconf,
                            "acc_sum": fine["acc_sum"] + facc}
        if a.get("pit_counts") is not None:
            p = np.asarray(a["pit_counts"], dtype=float)
            pit = p if pit is None else pit + p
            key = run if split is None or split != split else split  # no split column: every run its own events
            distinct[key] = max(distinct.get(key, 0.0), float(p.sum()))
            pit_edges = np.asarray(a.get("pit_edges") or np.linspace(0, 1, len(p) + 1), dtype=float)
            if a.get("pit_cdf_binned") is None:
                all_binned = False
            else:  # pooled as the event-weighted mean of the runs' mean CDFs
                b = p.sum() * np.asarray(a["pit_cdf_binned"], dtype=float)
                binned = b if binned is None else binned + b
    if count is None and pit is None:
        return None
    out: dict[str, np.ndarray] = {}
    if count is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            out.update(count=count, confidence=conf_sum / count, accuracy=acc_sum / count, edges=edges)
        out["kind"] = kinds.pop() if len(kinds) == 1 else "mixed"  # type: ignore[assignment]
        if all_fine and fine is not None:
            out["fine"] = fine  # type: ignore[assignment]
    if pit is not None:
        out.update(pit_counts=pit, pit_edges=pit_edges, independent_events=sum(distinct.values()))
        if all_binned and binned is not None:
            out["pit_cdf_binned"] = binned / pit.sum()
    return out


RELIABILITY_PLOT_BINS = 10
"""Bins of the reliability figure: equal-mass bins over the observed confidences (``reliability_plot_bins``)."""


def reliability_plot_bins(count: np.ndarray, conf_sum: np.ndarray, acc_sum: np.ndarray, edges: np.ndarray,
                          bins: int = RELIABILITY_PLOT_BINS) -> dict[str, np.ndarray]:  # fmt: skip
    """The reliability figure's bins from fine confidence bins (``count``, ``conf_sum``, ``acc_sum`` per fine bin
    ``[edges[i], edges[i+1])``; ``mtpp.evaluation.metrics.FINE_RELIABILITY_EDGES``): consecutive fine bins merged
    into at most ``bins`` bins of about equal event counts (the first fine bin where the running count passes
    ``j / bins`` of the events closes bin ``j``), empty fine bins dropped from both ends, so the bins span the
    observed confidences whatever the number of marks (with ``K`` marks the top-class probability can be as low as
    ``1 / K``; 10 equal-width bins on ``[0, 1]`` put every event of a 200-mark model in the first).

    Returns ``count``, ``confidence`` and ``accuracy`` (means per bin) and ``edges`` (``len + 1``, each a fine
    edge); the ECE of the tables is not computed from them (it keeps its equal-width bins)."""
    count = np.asarray(count, dtype=float)
    nonzero = np.flatnonzero(count > 0)
    if nonzero.size == 0:
        return {"count": np.zeros(0), "confidence": np.zeros(0), "accuracy": np.zeros(0), "edges": np.zeros(1)}
    lo, hi = int(nonzero[0]), int(nonzero[-1]) + 1
    c, cs, acs = count[lo:hi], np.asarray(conf_sum, float)[lo:hi], np.asarray(acc_sum, float)[lo:hi]
    running = np.cumsum(c)
    total = running[-1]
    # fine bin i closes a figure bin where the running count first reaches each j / bins of the events
    cuts = np.unique(np.searchsorted(running, total * np.arange(1, bins + 1) / bins - 1e-9 * total)) + 1
    starts = np.concatenate([[0], cuts[:-1]])
    n = np.add.reduceat(c, starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.add.reduceat(cs, starts) / n
        acc = np.add.reduceat(acs, starts) / n
    fine_edges = np.asarray(edges, dtype=float)[lo : hi + 1]
    return {"count": n, "confidence": conf, "accuracy": acc, "edges": fine_edges[np.concatenate([starts, [hi - lo]])]}


FEW_EVENTS = 30
"""Reliability bins with fewer pooled events than this (or under 1 % of the events) are drawn faded and hollow:
their accuracy is too noisy to read as miscalibration (a binomial share of 30 events has a standard error up to
0.09)."""


def plot_reliability(runs: pd.DataFrame, path: str | Path, title: str = "", section: str = "test",
                     kind: str = RELIABILITY_KIND) -> Path | None:  # fmt: skip
    """Reliability diagrams of the top-class mark probability of ``kind``: the forecast ``p(k | H)`` (default,
    :data:`RELIABILITY_KIND`) or ``given_time``, ``p(k | tau, H)`` (:func:`reliability_kind`; also for runs whose
    arrays have no forecast), one panel per cell (its runs' bins pooled):
    accuracy vs mean confidence per bin, each bin a disc whose area is proportional to its number of events
    (hollow and faded below :data:`FEW_EVENTS` events or 1 % of them), the diagonal, and the share of events
    per bin as grey bars. The ECE in each panel is the one of the tables for that distribution
    (``ece_forecast`` / ``ece_given_time``: mean ± standard error of the runs' ECEs), not a value recomputed from
    the pooled bins. Bins: :data:`RELIABILITY_PLOT_BINS` of about equal event counts over the observed confidences
    (:func:`reliability_plot_bins` of the arrays' fine bins), both axes to the observed range when it ends below
    0.5 (many marks); runs whose arrays predate the fine bins: the 10 equal-width bins of the ECE. The axis label
    and the title say which."""
    _, cells = _cells(runs)
    models = [(label, part, arr) for label, part in cells
              if (arr := _pooled_arrays(part, section, kind)) is not None and "count" in arr]
    if not models:
        return None
    fig, axes = _grid(len(models))
    colors = _colors(len(models))
    equal_mass = all("fine" in a for _, _, a in models)
    for ax, (label, part, a), c in zip(axes, models, colors):
        if equal_mass:  # bins over the observed confidences, about equal counts (the ECE keeps equal widths)
            f = a["fine"]
            a = {**a, **reliability_plot_bins(f["count"], f["conf_sum"], f["acc_sum"], f["edges"])}
        n = a["count"].sum()
        ok = a["count"] > 0
        few = ok & ((a["count"] < FEW_EVENTS) | (a["count"] < 0.01 * n))
        share = a["count"] / max(n, 1)
        centers = (a["edges"][:-1] + a["edges"][1:]) / 2
        share_ax = ax.twinx()
        share_ax.bar(centers, share, width=np.diff(a["edges"]) * 0.9, color="0.85", zorder=0)
        share_ax.set_ylim(0, max(4 * share.max(), 1e-9))
        share_ax.set_yticks([])
        top = int(np.argmax(share))  # the bars have no axis: the tallest says its share
        ax.annotate(f"{share[top]:.0%}", (centers[top], share[top]), xycoords=share_ax.transData, xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7, color="0.35", zorder=6,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})  # above the discs
        ax.set_zorder(share_ax.get_zorder() + 1)
        ax.patch.set_visible(False)
        top_value = 1.0
        if equal_mass and ok.any():  # both axes to the observed range (the diagonal stays the diagonal)
            seen = np.concatenate([a["edges"][1:][ok], a["accuracy"][ok]])
            top_value = 1.0 if seen.max() > 0.5 else float(np.ceil(seen.max() * 1.1 * 100) / 100)
        ax.plot([0, top_value], [0, top_value], color="gray", ls="--", lw=1)
        sizes = 400 * share
        solid, faint = ok & ~few, few
        ax.plot(a["confidence"][solid], a["accuracy"][solid], color=c, lw=1, alpha=0.6)
        # discs drawn whole (unclipped) inside a margin of 0.05: a bin at confidence or accuracy 0 or 1 (one mark, a
        # sure model, 200 marks) was drawn as a half or a quarter disc, cut off by the frame
        ax.scatter(a["confidence"][solid], a["accuracy"][solid], s=np.maximum(sizes[solid], 6), color=c,
                   edgecolor="white", lw=0.5, zorder=3, clip_on=False)
        ax.scatter(a["confidence"][faint], a["accuracy"][faint], s=np.maximum(sizes[faint], 6),
                   facecolor="none", edgecolor=c, alpha=0.45, lw=1, zorder=3, clip_on=False)
        ax.set_xlim(-0.05 * top_value, 1.05 * top_value)
        ax.set_ylim(-0.05 * top_value, 1.05 * top_value)
        ax.grid(alpha=0.3)
        kind = str(a["kind"])
        ece = _table_value(part, f"ece_{kind}") if kind != "mixed" else "n/a (forecast and given-time runs mixed)"
        ax.set_title(_wrap(f"{label}: ECE {ece}", PANEL_TITLE_CHARS), fontsize=9)
    binning = (f"{RELIABILITY_PLOT_BINS} bins of about equal event counts over the observed confidences"
               if equal_mass else f"{len(models[0][2]['count'])} equal-width bins")
    short = "equal-count bins" if equal_mass else "equal-width bins"
    _label_axes(axes, len(models), f"confidence (top-class prob., {short})", "accuracy (share of top-1 hits)")
    head = f"{title}: " if title else ""
    wrapped_suptitle(
        fig,
        f"{head}mark reliability of {_kind_words({str(a['kind']) for _, _, a in models})} "
        f"({section}; {_pooled_note(runs)})\n"
        f"disc area ∝ events in the bin; hollow: < {FEW_EVENTS} events or < 1 % (too few to judge)\n"
        "grey bars: share of events per bin, the tallest (its share written on it) a quarter of the panel's height; "
        f"bins: {binning}; ECE as in the tables (10 equal-width bins)",
    )
    return _save(fig, Path(path))


def _kind_words(kinds: set[str]) -> str:
    if kinds == {"forecast"}:
        return "the forecast p(k | H)"
    if kinds == {"given_time"}:
        return "p(k | τ, H), given the time"
    return "the forecast p(k | H) where runs have it, else p(k | τ, H)"


def plot_pit(runs: pd.DataFrame, path: str | Path, title: str = "", section: str = "test") -> Path | None:
    """Time calibration, one panel per cell (its runs' PIT counts pooled): the deviation ``F_hat(u) - u`` of the
    empirical CDF of the PIT values ``u = F(tau | H)`` from the uniform one (0 is perfect calibration; above 0:
    too many small PIT values, i.e. predicted gaps too long), with the 95 % band of a calibrated model's
    sampling noise (DKW: ``sqrt(log(2 / 0.05) / (2 n))``, ``n`` = the distinct test events pooled: runs of one split
    with other seeds score the same events, so they count once), each panel on its own symmetric
    y scale (the band shows it), so any number of models can be told apart. The PCE in each panel is the one of the tables (mean ± standard error
    of the runs' PCEs); PCE is the mean of ``|F_hat(j/50) - j/50|``.

    Where every run of a panel was scored on a time lattice (``pit_cdf_binned`` in its arrays, ``mtpp.data.lattice``),
    the solid line is the bins' non-randomised PIT (Czado, Gneiting & Held 2009; its PCE is ``pce_binned``) and the
    continuous PIT is drawn thin and dotted: the continuous PIT of rounded gaps is not uniform even under the true
    model. The band is the same (conservative for the non-randomised PIT, whose per-event CDFs vary less than
    indicators)."""
    _, cells = _cells(runs)
    models = [(label, part, arr) for label, part in cells
              if (arr := _pooled_arrays(part, section)) is not None and "pit_counts" in arr
              and arr["pit_counts"].sum() > 0]
    if not models:
        return None
    fig, axes = _grid(len(models), height=2.9, sharey=False)
    colors = _colors(len(models))
    for ax, (label, part, a), c in zip(axes, models, colors):
        counts, edges = a["pit_counts"], a["pit_edges"]
        n = counts.sum()
        u = np.r_[0.0, edges[1:]]
        dev = np.r_[0.0, np.cumsum(counts) / n - edges[1:]]
        # the band counts each test event once: runs of one split (other seeds) score the same events
        eps = math.sqrt(math.log(2 / 0.05) / (2 * a.get("independent_events", n)))
        ax.axhspan(-eps, eps, color="0.88", lw=0)
        ax.axhline(0, color="gray", ls="--", lw=1)
        if "pit_cdf_binned" in a:
            binned = np.r_[0.0, a["pit_cdf_binned"] - edges[1:]]
            ax.plot(u, dev, color=c, lw=0.9, ls=":", label="continuous PIT")
            ax.plot(u, binned, color=c, lw=1.6, label="binned PIT")
            ax.legend(fontsize=7, loc="best")
            lim = 1.25 * max(float(np.abs(binned).max()), float(np.abs(dev).max()), 2 * eps)
            head = (f"{label}: PCE binned {_table_value(part, 'pce_binned')}, continuous {_table_value(part, 'pce')}"
                    f" ({int(n)} events)")  # fmt: skip
        else:
            ax.plot(u, dev, color=c, lw=1.6)
            lim = 1.25 * max(float(np.abs(dev).max()), 2 * eps)
            head = f"{label}: PCE {_table_value(part, 'pce')} ({int(n)} events)"
        ax.set_ylim(-lim, lim)  # each panel its own symmetric scale: one bad model does not flatten the rest
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_title(_wrap(head, PANEL_TITLE_CHARS), fontsize=9)
    _label_axes(axes, len(models), r"PIT level $u$", r"$\hat F(u) - u$")
    head = f"{title}: " if title else ""
    lattice = any("pit_cdf_binned" in a for _, _, a in models)
    wrapped_suptitle(
        fig,
        f"{head}time calibration ({section}; {_pooled_note(runs)})\n"
        "deviation of the PIT's empirical CDF from uniform; 0 = calibrated; PCE as in the tables"
        + ("; times on a lattice: solid = binned PIT, dotted = continuous" if lattice else "") + "\n"
        "grey: 95 % band of a calibrated model's noise (y scales differ: read them against the band)",
    )
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------------------------------------------
# (e) base vs + vs ++


def _nominal_level(runs: pd.DataFrame, metric: str) -> float | None:
    """The level a coverage ``metric`` is calibrated at (:data:`~mtpp.evaluation.report.NOMINAL_LEVEL`) when every
    run that has it agrees; ``None`` for other metrics or mixed levels."""
    from mtpp.evaluation.report import NOMINAL_LEVEL

    key = NOMINAL_LEVEL.get(metric)
    if key is None or key not in runs.columns:
        return None
    levels = pd.to_numeric(runs[key], errors="coerce").dropna().unique()
    return float(levels[0]) if len(levels) == 1 else None


def plot_metric_bars(
    runs: pd.DataFrame, path: str | Path, metrics: Sequence[str] | None = None, title: str = ""
) -> Path | None:
    """One panel per metric, one group per cell (model and every setting that differs, so runs sharing a model
    name but not a configuration are separate groups), one point per parametrisation (base / ``+`` / ``++``):
    the mean over the cell's runs with a standard-error bar (none when n = 1), on a y axis zoomed to the
    values (it does not start at 0, so differences of 1 % are visible), with the change relative to base
    written beside the ``+`` / ``++`` points of NLL panels; a coverage panel draws the level it is calibrated at
    (a dashed line, "calibrated: 0.9"), inside the zoomed axis. ``n/a`` marks a metric that does not apply (the
    conflict rate of ``++``), "not evaluated" a horizon metric of runs never evaluated with ``--horizon`` (as in
    summary.md). Panel titles give the metric in words, its unit and whether lower or higher is
    better (:data:`~mtpp.evaluation.report.METRICS`); the legend sits below the panels; the title says what
    each point pools. ``None`` (nothing drawn) without runs or with a single cell and parametrisation: nothing
    to compare."""
    summary = summarise(runs, metrics or DEFAULT_METRICS)
    if summary.empty:
        return None
    mets = list(dict.fromkeys(summary["metric"]))
    datasets = list(runs["dataset"].dropna().unique()) if "dataset" in runs.columns else []
    keys = [k for k in cell_columns(runs, mets) if k not in ("dataset", "parametrisation")]  # horizon_*: + horizon
    summary = summary.assign(_label=cell_labels(summary, keys, with_param=False))
    if len(summary.drop_duplicates(["_label", "parametrisation"])) < 2:
        return None  # one point per panel on a zoomed axis compares nothing: summary.md has the values
    labels = list(dict.fromkeys(summary["_label"]))
    # cells tested on other data (another max_sequences cut, ...) or pooled over other splits / seeds are not
    # comparable: one group of columns per (cut, replicates), in order of first appearance, a dark line between
    cut_cols = [k for k in keys if k in DATA_CUT_COLUMNS or k == HORIZON_COLUMN]  # horizon_* at another horizon
    first_rows = summary.drop_duplicates("_label").set_index("_label")
    cut_of = {lbl: (*(format_value(first_rows.at[lbl, c]) for c in cut_cols), first_rows.at[lbl, "replicates"])
              for lbl in labels}  # fmt: skip
    reps = list(dict.fromkeys(v[-1] for v in cut_of.values()))
    cuts = list(dict.fromkeys(cut_of.values()))
    labels.sort(key=lambda lbl: cuts.index(cut_of[lbl]))
    params = [p for p in PARAM_ORDER if p in set(summary["parametrisation"])]
    params += [p for p in dict.fromkeys(summary["parametrisation"]) if p not in params]
    # one group of points per cell, 1.05 inch wide (0.85 beyond 8 cells); panels side by side only while the figure
    # stays within MAX_FIGURE_WIDTH: 15 cells in three columns made a 51-inch figure whose text no page could show
    # at a readable size; the other panels go below
    per_label = 1.05 if len(labels) <= 8 else 0.85
    panel_width = max(4.3, per_label * len(labels) + 1.3)
    ncols = max(1, min(3, len(mets), int(MAX_FIGURE_WIDTH // panel_width)))
    nrows = math.ceil(len(mets) / ncols)
    fig = _figure(ncols * panel_width, 3.4 * nrows + 1.0)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    width = 0.7 / max(len(params), 1)
    x = np.arange(len(labels))
    tick_labels = [_wrap(lbl, 20) + (f"\n[{cut_of[lbl][-1]}]" if len(reps) > 1 else "") for lbl in labels]
    # a label line wider than its group (about 13 characters per inch at 8 pt) would run into the next one
    longest = max((len(line) for lbl in tick_labels for line in lbl.split("\n")), default=0)
    slanted = ({"rotation": 25, "ha": "right", "rotation_mode": "anchor"}
               if longest > 13.4 * per_label and len(labels) > 1 else {})  # fmt: skip
    drawn_change = False  # a "+" / "++" point of an NLL panel annotated with its change vs base
    for ax, m in zip(axes, mets):
        part = summary[summary["metric"] == m]
        # a time in the data's own unit is named as the tables name it ("hours" on taxi), where one dataset is drawn
        info = replace(metric_info(m), unit=metric_unit(m, datasets[0])) if len(datasets) == 1 else metric_info(m)
        base = part[part["parametrisation"] == "base"].set_index("_label")["mean"]
        ymin, ymax = np.inf, -np.inf
        na: list[tuple[float, str]] = []  # where a point is missing, and why
        for j, p in enumerate(params):
            rows = part[part["parametrisation"] == p].set_index("_label")
            pos = x + (j - (len(params) - 1) / 2) * width
            for xi, lbl in zip(pos, labels):
                if lbl not in rows.index:
                    continue
                mean, se = float(rows.at[lbl, "mean"]), float(rows.at[lbl, "stderr"])
                if not math.isfinite(mean):  # a horizon metric of runs never evaluated with --horizon, or n/a
                    unscored = (is_horizon_metric(m) and HORIZON_COLUMN in rows.columns
                                and pd.isna(rows.at[lbl, HORIZON_COLUMN]))  # fmt: skip
                    na.append((xi, NOT_EVALUATED if unscored else "n/a"))
                    continue
                err = se if math.isfinite(se) else 0.0
                ax.errorbar(xi, mean, yerr=err, fmt="o", ms=6, color=PARAM_COLORS.get(p), capsize=3, lw=1.2)
                ymin, ymax = min(ymin, mean - err), max(ymax, mean + err)
                b = base.get(lbl, math.nan)
                if p != "base" and m.startswith("nll") and math.isfinite(b) and b != 0:
                    drawn_change = True
                    ax.annotate(f"{(mean - b) / abs(b):+.1%}", (xi, mean + err), xytext=(0, 3),
                                textcoords="offset points", fontsize=7, ha="center", va="bottom", color="0.25")
        nominal = _nominal_level(runs, m)
        if nominal is not None and math.isfinite(ymin):  # a coverage: its calibrated value is the reference
            ax.axhline(nominal, color="0.3", ls="--", lw=1.0)
            ax.annotate(f"calibrated: {nominal:g}", (0.01, nominal), xycoords=("axes fraction", "data"),
                        xytext=(0, 2), textcoords="offset points", fontsize=7, color="0.3", va="bottom")
            ymin, ymax = min(ymin, nominal), max(ymax, nominal)
        if math.isfinite(ymin):
            scale = max(abs(ymin), abs(ymax))  # equal values (every accuracy 0) get a readable band, not +-1e-15
            pad = max(0.18 * (ymax - ymin), 1e-3 * scale, 0.05 if scale < 1e-9 else 0.0,
                      0.05 * scale if ymax == ymin else 0.0)  # one value: a band around it, not +-0.1 % of it
            ax.set_ylim(ymin - pad, ymax + pad)
        ax.ticklabel_format(axis="y", useOffset=False)  # the values themselves, never "+1e-15" above the axis
        for xi, why in na:
            ax.text(xi, 0.5, why, transform=ax.get_xaxis_transform(), ha="center", va="center",
                    fontsize=8, color="0.4", rotation=90)
        ax.set_title(_wrap(info.title(), 38), fontsize=9)
        ax.set_xticks(x, tick_labels, fontsize=8, **slanted)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.grid(axis="y", alpha=0.3)
        for i, xb in enumerate(x[:-1] + 0.5):
            other_data = cut_of[labels[i]] != cut_of[labels[i + 1]]
            ax.axvline(xb, color="0.2" if other_data else "0.85", lw=1.6 if other_data else 0.8)
    for ax in axes[len(mets):]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=PARAM_COLORS.get(p), label=param_symbol(p)) for p in params]
    fig.legend(handles=handles, title="parametrisation", loc="outside lower center", ncols=len(params),
               fontsize=8, title_fontsize=8, frameon=False)
    ns = sorted(set(int(n) for n in summary["n"] if n > 0)) or [0]
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
    head = f"{title}: " if title else ""
    wrapped_suptitle(
        fig,
        f"{head}base vs + vs ++: mean ± standard error ({n_text} runs per point; {_pooled_note(runs)})\n"
        "y axes are zoomed (they do not start at 0)"
        + ("; NLL panels: change vs base beside + and ++" if drawn_change else "")
        + (f"\ndark lines separate cells tested on different data"
           + " or scored at different horizons" * (HORIZON_COLUMN in cut_cols)
           + f" ({', '.join(c.rsplit('.', 1)[-1] for c in cut_cols)} in the labels): compare points within a group only"
           if len({v[:-1] for v in cuts}) > 1 else "")
        + ("\ncells pooled over different splits / seeds (under each label) are grouped apart, dark lines between: "
           "compare points within a group only" if len(reps) > 1 else ""),
    )
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------------------------------------------
# Everything


def existing_plots(out_dir: str | Path, datasets: Iterable[Any] | None = None) -> list[Path]:
    """The files already in ``out_dir`` that :func:`make_all_plots` could write for runs on ``datasets`` (its
    names: ``bars_<dataset>.png``, ``val_curves_``, ``reliability_``, ``pit_``, ``cos_tm_<dataset>_*.png``; every
    dataset when ``None``): what to check with :func:`mtpp.owned.check_ours` before long work, so a user's figure
    is refused up front, not after training. Any ``cos_tm_<dataset>_*.png`` counts (the cell part of the name is
    known only from the runs), so a figure of the user's named so is refused even if no report would write it."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    kinds = ("bars", "val_curves", "reliability", "pit")
    if datasets is None:
        found = [p for k in (*kinds, "cos_tm") for p in sorted(out_dir.glob(f"{k}_*.png"))]
        return sorted(set(found))
    found: list[Path] = []
    for ds in sorted({_slug(d) for d in datasets}):
        found += [out_dir / f"{kind}_{ds}.png" for kind in kinds]
        found += sorted(out_dir.glob(f"cos_tm_{glob.escape(ds)}_*.png"))
    return [p for p in found if p.exists()]


def left_over(out_dir: str | Path, written: Iterable[Path], root: str | Path) -> str | None:
    """A warning naming the figures in ``out_dir`` that an earlier report drew and this one did not (their runs are
    not in this report: no longer under ``root``, or left out of it): kept, since mtpp deletes nothing, but said, so the folder is not read as one report;
    ``None`` when there are none."""
    written = set(written)
    stale = [p for p in existing_plots(out_dir) if p not in written]
    if not stale:
        return None
    names = ", ".join(p.name for p in stale[:5]) + (", ..." if len(stale) > 5 else "")
    return (f"warning: {len(stale)} figure(s) in {out_dir} are from an earlier report and were not redrawn (their runs "
            f"are not in this report: no longer under {root}, or left out of it): {names}")


def make_all_plots(
    root: str | Path,
    out_dir: str | Path,
    metrics: Sequence[str] | None = None,
    section: str = "test",
    runs: pd.DataFrame | None = None,
    say: Callable[[str], None] | None = None,
) -> list[Path]:
    """All plots of the finished runs under ``root`` into ``out_dir``; returns the files written.

    Per dataset: ``bars_<dataset>.png``, ``val_curves_<dataset>.png``, ``reliability_<dataset>.png`` (of the
    forecast, or of ``p(k | tau, H)`` when ``metrics`` ask only for its calibration: :func:`reliability_kind`),
    ``pit_<dataset>.png``; per dataset and cell without its parametrisation (base and ``+`` side by side):
    ``cos_tm_<dataset>_<cell>.png``.
    A plot whose inputs no run has (no ``arrays.json``, no cosine logged) is skipped, and so is the bar plot of a
    dataset with one cell and parametrisation (nothing to compare); ``say`` gets one line for the latter.
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
            plot_reliability(part, out_dir / f"reliability_{ds}.png", title=str(dataset), section=section,
                             kind=reliability_kind(metrics)),
            plot_pit(part, out_dir / f"pit_{ds}.png", title=str(dataset), section=section),
        ):
            if p is not None:
                written.append(p)
        if say is not None and len(_cells(part)[1]) == 1:
            say(f"no bars_{ds}.png: one cell on {dataset}, nothing to compare (its values are in the summary table)")
        _, cells = _cells(part, with_param=False)
        for label, model_part in cells:
            first = model_part.iloc[0]
            named = [first.get(k) for k in MODEL_KEYS]
            name = _slug(*named)
            # the label's settings without the encoder / aggregator the name already holds (no "lnm-gru-pcgrad_pcgrad")
            # ("THP (cagrad) (c=0.9)": the settings are in the last parentheses, after the aggregator's)
            inside = label.rpartition(" (")[2].rstrip(")") if " (" in label else ""
            settings = [s for s in inside.split(", ") if s and s not in map(str, named)]
            name += f"_{_slug(', '.join(settings))}" if settings else ""
            p = plot_cos_tm(model_part, out_dir / f"cos_tm_{ds}_{name}.png", title=f"{dataset} {label}")
            if p is not None:
                written.append(p)
    return written
