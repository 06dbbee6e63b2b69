"""Validation curves of a grid: how ``L_T`` and ``L_M`` moved during training, drawn from the result records.

A table gives the selected epoch's numbers; a curve shows how the run got there: a mark loss that stays at the
marginal mark distribution for a hundred epochs while the time loss falls, then creeps down while the time loss
rises again, is what conflicting gradients between the two losses look like (Bosser & Ben Taieb, TMLR 2024,
Section 4 and their Figure 4, the validation curves of SAHP "++" on MOOC). The curves come from the records'
``validation_curve`` (:func:`mtpp.records.validation_curve`: the validation NLL per sequence of every epoch), so
the figure is regenerated from committed files like every table of ``RESULTS.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtpp.experiments_tables import PARAMS, PARAM_LABEL, group, replicate, save_figure

PARTS = (("nll_time_per_seq", "validation L_T (nats / sequence)"),
         ("nll_mark_per_seq", "validation L_M (nats / sequence)"))  # fmt: skip
COLOURS = {"base": "#1f77b4", "plus": "#ff7f0e", "plusplus": "#2ca02c"}


def curve_split(records: list[dict], dataset: str) -> int | None:
    """The split whose ``sum`` cells of ``dataset`` have the most validation curves (the lowest on a tie), seed 0
    taken first; ``None`` when no cell of the dataset has one."""
    counts: dict[int, int] = {}
    for r in records:
        c = r.get("cell") or {}
        if c.get("dataset") == dataset and c.get("aggregator", "sum") == "sum" and r.get("validation_curve"):
            counts[replicate(r)[0]] = counts.get(replicate(r)[0], 0) + 1
    return min(counts, key=lambda s: (-counts[s], s)) if counts else None


def _limits(values: list[np.ndarray]) -> tuple[float, float] | None:
    """A y range showing where the curves spend their epochs: from the lowest value to the 95th percentile (the
    first epochs of a run start far above where it settles and would flatten everything else)."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
    if finite.size == 0:
        return None
    lo, hi = float(finite.min()), float(np.percentile(finite, 95))
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def validation_curve_figures(records: list[dict], folder: str | Path) -> dict[str, tuple[Path, int]]:
    """One PNG per dataset (``<dataset>_validation_curves.png``) with a row per decoder and two columns (validation
    ``L_T``, ``L_M`` in nats per sequence against the epoch): base, "+" and "++" of the ``sum`` aggregator on the
    split :func:`curve_split` picks, each run's selected epoch marked (the time and mark parts' own best epochs
    under separate early stopping). Returns ``{dataset: (path, split)}`` for the datasets with a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtpp.evaluation.plots import wrapped_suptitle

    cells = group(records)
    written: dict[str, tuple[Path, int]] = {}
    for dataset in sorted({k[0] for k in cells}):
        split = curve_split(records, dataset)
        if split is None:
            continue
        runs: dict[str, dict[str, dict]] = {}  # model -> parametrisation -> record
        for (ds, model, param, agg), rs in cells.items():
            if ds != dataset or agg != "sum":
                continue
            r = next((r for r in rs if replicate(r)[0] == split and r.get("validation_curve")), None)
            if r is not None:
                runs.setdefault(model, {})[param] = r
        models = sorted(runs)
        fig, axes = plt.subplots(len(models), 2, figsize=(7.5, 1.9 * len(models) + 0.6), squeeze=False)
        for row, model in enumerate(models):
            for col, (key, ylabel) in enumerate(PARTS):
                ax = axes[row, col]
                shown = []
                for param in [p for p in PARAMS if p in runs[model]]:
                    r = runs[model][param]
                    curve = r["validation_curve"]
                    epochs = np.asarray(curve["epoch"], dtype=float)
                    values = np.asarray([np.nan if v is None else v for v in curve[key]], dtype=float)
                    shown.append(values)
                    ax.plot(epochs, values, lw=0.9, color=COLOURS.get(param), label=PARAM_LABEL.get(param, param))
                    part = "time" if key.startswith("nll_time") else "mark"
                    best = r.get(f"best_epoch/{part}", r.get("best_epoch"))
                    at = np.flatnonzero(epochs == best) if isinstance(best, int) else []
                    if len(at):
                        ax.plot([best], [values[at[-1]]], "o", ms=3.5, color=COLOURS.get(param))
                limits = _limits(shown)
                if limits:
                    ax.set_ylim(*limits)
                ax.set_title(f"{model}: {ylabel.split(' (')[0]}", fontsize=8)
                ax.tick_params(labelsize=7)
                if col == 0:
                    ax.set_ylabel("nats / seq", fontsize=7)
                if row == len(models) - 1:
                    ax.set_xlabel("epoch", fontsize=8)
            axes[row, 0].legend(fontsize=7, loc="best", frameon=False)
        wrapped_suptitle(fig, f"{dataset}, split {split}: validation L_T and L_M per epoch (dots: selected epochs; "
                         "y axis from the lowest value to the 95th percentile)", fontsize=9)  # fmt: skip
        written[dataset] = (save_figure(fig, Path(folder) / f"{dataset}_validation_curves.png"), split)
    return written
