"""``plot_forecast``: one sequence, the model's conditional intensity, and sampled continuations with their spread.

Three panels sharing the time axis (data units):

1. **Events**: the observed history (filled markers, one row per mark), the observed future after the cut
   (hollow), and a few sampled continuations (small, faint), so one sees where and which marks the model expects.
2. **Conditional intensity** ``lambda*(t) = f(tau | H) / S(tau | H)`` (events per time unit), evaluated on a grid
   in every inter-event interval given the OBSERVED history (the decoder's ``log_intensity``, every decoder has
   one; even and geometric points, each interval clipped to the horizon's end: ``intensity_path``),
   with the cut marked; after the cut the curve (dashed, labelled so) uses the observed events too (it is what
   the model would say as they arrive), while panel 3 shows what it forecasts without them. With
   ``first_event: skip`` the curve starts at the first event (the gap before it is never scored).
3. **Cumulative count after the cut**: the observed count ``N(t) - N(cut)`` against the median and the 50 % /
   90 % bands of the sampled continuations. A continuation cut at ``max_events`` before the horizon
   (``Generated.truncated``) counts only a lower bound after its last event: each curve is drawn while the cut
   samples cannot change it (:func:`determined_quantiles`), the first cut is a red dash-dot line, and the title and
   ``log`` say how many of how many were cut.

A long sequence is drawn from the last :data:`SHOWN_EVENTS` history events before the cut on (the figure says so);
the model still reads the whole history. Drawn whole, a sequence of 200,000 events asked for ``[200,001 x GRID]``
intensity points (more than 3 GB for an LNM decoder) and a line no one could read.

Cost: one history encoding of the sequence, one distribution call on ``[S + 1, GRID]`` gaps (``S`` the shown
events), and ``generate`` for the continuations.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mtpp.data.batch import collate
from mtpp.data.catalog import time_unit_text
from mtpp.data.sequence import EventSequence
from mtpp.errors import MtppError

GRID = 64
"""Intensity evaluation points per inter-event interval (``interval_grid``)."""
SHOWN_EVENTS = 400
"""History events drawn before the cut (the last ones); a longer history is read by the model, not drawn."""
TITLE_WIDTH = 100
"""Characters per line of the figure's title (9 in wide at 11 pt); longer titles are wrapped."""


def observed_end(seq: EventSequence) -> float:
    """Where the sequence's observation ends (data units): its window end, else its last event."""
    return float(seq.window_end) if seq.window_end is not None else float(seq.times[-1])


def determined_quantiles(counts: np.ndarray, grid: np.ndarray, exact_until: np.ndarray,
                         levels: Sequence[float]) -> np.ndarray:
    """Quantiles over samples of counts that some samples know only as lower bounds, NaN where those bounds leave
    the quantile open.

    counts: ``[R, G]`` events of each sampled continuation up to each ``grid`` time ``[G]``; exact_until: ``[R]``,
    the time after which row ``r``'s count is only a lower bound (a continuation cut at ``max_events``: its last
    event; ``inf`` for a whole one). levels: quantile levels in (0, 1). Returns ``[len(levels), G]``: the
    ``inverted_cdf`` quantile (a whole number of events) of the counts where it is the same with every lower bound
    taken as it is and raised to infinity, so it is the quantile of the true counts whatever they are; NaN
    elsewhere. A curve thus runs on past the first cut sample while enough samples are whole: the lower quantiles
    the longest."""
    levels = list(levels)
    lower = np.quantile(counts, levels, axis=0, method="inverted_cdf")
    open_ended = np.where(grid[None, :] > exact_until[:, None], np.inf, counts)
    upper = np.quantile(open_ended, levels, axis=0, method="inverted_cdf")
    return np.where(lower == upper, lower, np.nan)


def default_horizon(seq: EventSequence) -> float:
    """``mtpp plot``'s horizon when none is given: a quarter of the time spanned by the sequence's last
    ``SHOWN_EVENTS`` events (all of them for a shorter one), or 1 where they span no time."""
    return 0.25 * float(seq.times[-1] - seq.times[max(0, len(seq) - SHOWN_EVENTS)]) or 1.0


def default_cut(seq: EventSequence, horizon: float) -> int:
    """The number of history events: the last cut whose window ``(t_{i-1}, t_{i-1} + horizon]`` is observed,
    at most ``3/4`` of the sequence (so some history and some future show); at least 1."""
    end = observed_end(seq)
    ok = np.nonzero(seq.times + horizon <= end)[0]
    limit = max(1, int(round(0.75 * len(seq))))
    return int(min(ok[-1] + 1, limit)) if ok.size else 1


def time_axis_offset(start: float, end: float) -> float:
    """``start`` when the times are far from 0 for their span (``|start| > 1000 (end - start)``, e.g. Unix
    seconds), so a figure's ticks show the time since it; else 0 (ticks show the times themselves)."""
    return float(start) if abs(start) > 1000.0 * max(end - start, 0.0) else 0.0


def beyond_data_note(seq: EventSequence, horizon: float, cut: int | None = None, time_unit: str | None = None) -> str:
    """``""``, or a phrase saying the window after the cut (``default_cut`` when ``None``) runs past the data's end,
    where the figure draws no observed count; spans in ``time_unit`` (``mtpp.data.catalog.time_unit_text``)."""
    cut = default_cut(seq, horizon) if cut is None else int(cut)
    data_end = observed_end(seq)
    end = float(seq.times[cut - 1]) + horizon
    if end <= data_end:
        return ""
    return (f"the data end at t = {data_end:.10g}, {end - data_end:g} {time_unit_text(time_unit)} before the horizon's "
            "end: nothing observed after")


@torch.no_grad()
def intensity_path(model, seq: EventSequence, until: float, grid: int = GRID,
                   first: int = 0) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(t, lambda*(t))`` on about ``grid`` points per interval from the window start to ``until`` (data units);
    with ``model.first_event: skip`` from the first event (the gap before it is not scored, so the model never
    learnt the intensity there). ``first > 0``: from event ``first`` on (the intervals after it; the history
    before it is still encoded); intervals that start at or after ``until`` are not gridded, so a long sequence
    costs the shown intervals' ``[S, grid]`` points, not ``[L + 1, grid]``.

    Each interval ``(t_{i-1}, min(t_i, until)]`` is clipped to ``until`` before it is gridded, so the interval
    that holds ``until`` is drawn over the whole shown part (not only the few points of a grid spread to a next
    event far beyond it). Its grid is the union of ``grid / 2`` evenly spaced gaps and ``grid / 2`` geometrically
    spaced ones from the model's own ``GEOMETRIC_QUANTILE`` gap quantile (``icdf``, at least ``GEOMETRIC_FLOOR`` of
    the interval) to its end: a hazard that changes fast just after an event (bursty data, gaps over many
    decades) is drawn at the scale of the gaps the model expects, not skipped by the first even step.
    Returns ``t: [P]`` (sorted within each interval) and ``lambda*(t): [P]`` in events per data unit (the
    decoder's ``log_intensity``; 0 where it underflows)."""

    param = next(model.parameters())
    batch = collate([seq], dtype=param.dtype).to(param.device)
    lo = first + 1 if first > 0 else 0  # interval i is (t_{i-1}, t_i]: the first one after event `first`
    starts = np.concatenate([[0.0], seq.times])  # interval i starts at t_{i-1} (t_{-1} = 0)
    hi = max(lo + 1, int(np.searchsorted(starts, until, side="left")))  # intervals wholly after until: none drawn
    h_time, _ = model.histories(batch)
    dist = model.next_time_distribution(h_time[:, lo:hi])  # [1, hi - lo]
    s = float(model.time_scale)
    ends = np.minimum(np.concatenate([seq.times, [max(until, seq.times[-1])]]), until)[lo:hi]  # clipped to the span
    starts = starts[lo:hi]
    span = np.maximum(ends - starts, 0.0)  # [L + 1]; 0: an interval wholly after until (dropped below)
    u = torch.full((1, span.size, 1), GEOMETRIC_QUANTILE, dtype=param.dtype, device=param.device)
    q = dist.icdf(u)[0, :, 0].double().cpu().numpy() * s  # [L + 1], data units
    first = np.clip(np.nan_to_num(q, nan=0.0), GEOMETRIC_FLOOR * span, span)  # the geometric part's first gap
    half = grid // 2
    even = span[:, None] * np.linspace(0.0, 1.0, half + 1)[None, 1:]  # [L + 1, half]
    ratio = np.where(span > 0, span / np.where(first > 0, first, 1.0), 1.0)
    geometric = first[:, None] * ratio[:, None] ** np.linspace(0.0, 1.0, grid - half)[None, :]  # first .. span
    taus = np.sort(np.concatenate([even, geometric], axis=1), axis=1)  # [L + 1, G]
    tq = torch.as_tensor(np.maximum(taus, 1e-12) / s, dtype=param.dtype, device=param.device).unsqueeze(0)
    log_hazard = dist.log_intensity(tq)  # [1, L + 1, G]: the hazard f / S itself (no tie rule: not a likelihood)
    lam = torch.exp(log_hazard).squeeze(0).double().cpu().numpy() / s
    t = (starts[:, None] + taus).reshape(-1)
    keep = np.repeat(span > 0, grid) & (t <= until)
    if getattr(model.cfg, "first_event", "skip") == "skip" and lo == 0:
        keep[:grid] = False  # interval 0: before the first event
    return t[keep], lam.reshape(-1)[keep]


GEOMETRIC_QUANTILE = 0.01
"""The gap quantile of the model where the geometric half of an interval's intensity grid starts."""
GEOMETRIC_FLOOR = 1e-6
"""The geometric half starts no earlier than this fraction of the interval."""


def plot_forecast(
    model,
    seq: EventSequence,
    *,
    horizon: float,
    cut: int | None = None,
    samples: int = 50,
    seed: int = 0,
    title: str | None = None,
    shown_samples: int = 3,
    max_events: int | None = None,
    log: Callable[[str], None] | None = None,
    time_unit: str | None = None,
    mark_ids: Sequence[int] | None = None,
):
    """The figure of the module docstring (a ``matplotlib.figure.Figure``).

    cut: number of history events (default ``default_cut``); horizon: data units, > 0. time_unit: the data's
    documented unit (``mtpp.data.catalog.time_unit_of``) for the axes and title; ``None``: "data units".
    mark_ids: the data's own id of each model mark where they were remapped (``Dataset.mark_ids``): the mark
    axis is labelled with them.
    max_events: the cap on events per sampled continuation (default ``mtpp.forecast.generate.DEFAULT_MAX_EVENTS``);
    when some were cut there, ``log`` receives one line saying how many (``truncation_note``), which the title
    also carries.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from mtpp.forecast.generate import DEFAULT_MAX_EVENTS, generate, truncation_note

    if not horizon > 0:
        raise MtppError(f"horizon must be > 0, got {horizon}")
    if len(seq) < 1:
        raise MtppError("the sequence has no event: no history to forecast from")
    cut = default_cut(seq, horizon) if cut is None else int(cut)
    if not 1 <= cut < len(seq) + 1:
        raise MtppError(f"cut must be in 1..{len(seq)}, got {cut}")
    t0 = float(seq.times[cut - 1])
    end = t0 + horizon
    units = time_unit_text(time_unit)
    hist = EventSequence(seq.times[:cut], seq.marks[:cut])
    gen = generate(model, [hist], horizon=horizon, samples=samples, seed=seed,
                   max_events=DEFAULT_MAX_EVENTS if max_events is None else max_events)
    capped_rows = np.nonzero(gen.truncated)[0]
    capped = truncation_note(capped_rows.size, gen.rows, gen.info["max_events"]) if capped_rows.size else ""
    # a cut row's count after its last event is a lower bound: the sampled curves are exact only before the first
    first_capped = min(float(gen.events_of(r)[0][-1]) for r in capped_rows) if capped_rows.size else np.inf
    k = int(model.num_marks)
    shown = max(0, cut - SHOWN_EVENTS)  # the first history event drawn
    start = float(seq.times[shown])

    fig, axes = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True, gridspec_kw={"height_ratios": [1.3, 1.0, 1.0]})
    ax0, ax1, ax2 = axes
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20")
    # one colour per mark only while the palette has one for each: beyond 20 marks, repeated colours would pair
    # unrelated marks, so every mark gets one colour (the y axis tells them apart)
    colors = cmap if k <= 20 else (lambda m: "tab:blue")
    # 1. events
    past = slice(shown, cut)
    fut = (seq.times > t0) & (seq.times <= end)
    fut[:cut] = False
    ax0.scatter(seq.times[past], seq.marks[past], c=[colors(m % 20) for m in seq.marks[past]], s=28, zorder=3)
    ax0.scatter(seq.times[fut], seq.marks[fut], facecolors="none", edgecolors="black", s=40, zorder=3,
                label="observed future")
    rng = np.random.default_rng(seed)
    drawn = min(shown_samples, gen.rows)
    for r in range(drawn):
        t, m = gen.events_of(r)
        ax0.scatter(t, m + rng.uniform(-0.25, 0.25, m.shape), marker="x", s=14, alpha=0.6, color="tab:gray",
                    label=f"sampled continuations ({drawn} of {gen.rows} shown)" if r == 0 else None)
    from matplotlib.lines import Line2D

    # the history's points take their mark's colour: its legend entry is neutral, not the first point's colour
    history = Line2D([], [], marker="o", ls="", color="0.35", label="observed history (coloured by mark)"
                     + (f"; the last {cut - shown:,} of {cut:,} shown" if shown else ""))
    handles, labels = ax0.get_legend_handles_labels()
    mark_ids = mark_ids if mark_ids is not None and len(mark_ids) >= k else None  # a map of every model mark
    ax0.set_ylabel("mark (the data's ids)" if mark_ids else "mark")
    ticks = range(k) if k <= 12 else np.linspace(0, k - 1, 6).round().astype(int)
    ax0.set_yticks(ticks, [str(mark_ids[t]) for t in ticks] if mark_ids else [str(t) for t in ticks])
    pad = max(0.7, 0.03 * k)  # samples are jittered by 0.25 within their row; a marker on the top row stays whole
    ax0.set_ylim(-pad, k - 1 + pad)
    # legends above their panel, never over it: every row of marks may hold events (with 200 marks, a legend inside
    # the top rows hid the events of marks 180-199), and the intensity runs across its whole panel, so "best" finds
    # no empty corner in either
    # (spread over the panel's width, mode "expand": anchored at its left, a two-column legend as wide as the panel
    # stuck out on the right at tight_layout's first pass, which then kept a margin of 0.6 inch there)
    above = {"loc": "lower left", "bbox_to_anchor": (0.0, 1.0, 1.0, 0.0), "mode": "expand", "fontsize": 8,
             "frameon": False, "borderaxespad": 0.2}
    ax0.legend(handles=[history, *handles], ncol=3, **above)
    # 2. intensity
    tt, lam = intensity_path(model, seq, end, first=shown)
    before = tt <= t0
    ax1.plot(tt[before], lam[before], color="tab:blue", lw=1.2, label="model intensity given the observed history")
    ax1.plot(tt[~before], lam[~before], color="tab:blue", lw=1.0, ls="--", alpha=0.8,
             label="after the cut: given the observed future too (the samples do not see it)")
    ax1.set_ylabel(f"intensity λ*(t)\n(events per {time_unit_text(time_unit, per=True)})")
    finite = lam[np.isfinite(lam) & (lam > 0)]
    if finite.size and finite.max() > 10 * finite.min():  # a log axis only where it spans a decade or more
        ax1.set_yscale("log")
    ax1.legend(ncol=2, **above)
    # 3. cumulative counts after the cut
    grid = np.linspace(t0, end, 200)
    obs = np.searchsorted(seq.times[fut], grid, side="right").astype(float)
    data_end = observed_end(seq)
    obs[grid > data_end] = np.nan  # nothing was observed after the data's end: no count, not a flat one
    counts = np.zeros((gen.rows, grid.size))
    for r in range(gen.rows):  # samples (a few dozen), each a searchsorted over its events
        counts[r] = np.searchsorted(gen.events_of(r)[0], grid, side="right")
    exact_until = np.full(gen.rows, np.inf)
    exact_until[capped_rows] = [float(gen.events_of(r)[0][-1]) for r in capped_rows]
    q = determined_quantiles(counts, grid, exact_until, [0.05, 0.25, 0.5, 0.75, 0.95])
    ax2.fill_between(grid, q[0], q[4], color="tab:orange", alpha=0.2, label="90 % of samples")
    ax2.fill_between(grid, q[1], q[3], color="tab:orange", alpha=0.4, label="50 % of samples")
    ax2.plot(grid, q[2], color="tab:orange", lw=1.5, label=f"median of {gen.rows} samples")
    ax2.step(grid, obs, where="post", color="black", lw=1.5, label="observed")
    if capped_rows.size:
        ax2.axvline(first_capped, color="tab:red", ls="-.", lw=1.2,
                    label=f"first sample cut at --max-events {gen.info['max_events']}: a curve ends where the cut "
                          "samples could change it")
    ax2.set_ylabel("events after the cut")
    offset = time_axis_offset(start, end)
    if offset:  # Unix seconds: round ticks of the time since the first event, not "1.4309 ... 1e9"
        from matplotlib.ticker import MaxNLocator

        rel = [v for v in MaxNLocator(7).tick_values(0.0, end - start) if 0.0 <= v <= end - start]
        ax2.set_xticks([offset + v for v in rel], [f"{v:g}" for v in rel])
        ax2.set_xlabel(f"time since the first event, t = {offset:.10g} ({units})")
    else:
        ax2.set_xlabel(f"time ({units})")
    for ax in axes:
        ax.axvline(t0, color="black", ls="--", lw=0.8,
                   label=f"cut: last of the {cut} history events" if ax is ax2 else None)  # fmt: skip
        if end > data_end:
            ax.axvline(data_end, color="tab:red", ls=":", lw=1.2,
                       label="end of the observed data" if ax is ax2 else None)  # fmt: skip
        ax.grid(alpha=0.3)
    ax2.legend(loc="best", fontsize=8, framealpha=0.9)
    ax0.set_xlim(start - 0.02 * (end - start), end + 0.02 * (end - start))
    beyond = beyond_data_note(seq, horizon, cut, time_unit)
    heading = (title or f"forecast after {cut} events, horizon {horizon:.4g} {units}") + (f"; {beyond}" * bool(beyond))
    heading = [heading, capped]
    # wrapped to the figure's width (about 100 characters at 11 pt on 9 in): a long title was cut on both sides
    fig.suptitle("\n".join(textwrap.fill(h, TITLE_WIDTH, break_on_hyphens=False) for h in heading if h), fontsize=11)
    if capped and log is not None:
        log(capped)
    fig.tight_layout()
    return fig


def check_plot_path(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` as a ``Path`` if a figure can be saved there: its extension is an image format matplotlib writes
    (``.png``, ``.pdf``, ``.svg``, ...), it is not an existing file (unless ``overwrite``) or a folder, and its
    folder can be written (``mtpp.files.check_writable``).
    ``MtppError`` in one line otherwise (checked before any work, so a typo does not cost a model load)."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    formats = FigureCanvasBase.get_supported_filetypes()
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in formats:
        shown = ", ".join(f".{f}" for f in sorted(formats))
        got = f"'{path.suffix}' is not an image format" if path.suffix else "no file extension"
        raise MtppError(f"{path}: {got}; --out takes one of {shown} (e.g. forecast.png)")
    if path.is_dir():
        raise MtppError(f"{path}: is a folder; --out names the image file to write")
    if path.exists() and not overwrite:
        raise MtppError(f"{path}: exists; choose another --out or pass --overwrite")
    from mtpp.files import check_writable

    return check_writable(path)  # refused before the model is loaded and sampled, not after


def save_forecast_plot(fig, path: str | Path, overwrite: bool = False) -> Path:
    """Save ``fig`` at ``path`` in the format of its extension (``check_plot_path``; never replacing a file unless
    ``overwrite``), close it."""
    import matplotlib.pyplot as plt

    from mtpp.files import replacing

    path = check_plot_path(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:  # whole or not at all (mtpp.files)
        fig.savefig(tmp, dpi=110, format=path.suffix.lower().lstrip("."))
    plt.close(fig)
    return path
