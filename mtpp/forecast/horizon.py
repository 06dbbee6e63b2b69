"""Forecast metrics: the next event, the events within a horizon, and the calibration of both.

Every metric is an accumulator (``update`` per prediction point or batch of points, ``compute`` at the end), the
shape of ``mtpp.evaluation.metrics``; each definition below is what ``compute`` returns.

**Prediction points.** ``evaluate_horizon`` cuts each sequence after event ``i - 1`` (``i = min_history, ...``
every ``stride`` events) where the window ``(t_{i-1}, t_{i-1} + H]`` is fully observed (``t_{i-1} + H <= T``, the
window end or the last event). The history is events ``0..i-1``; the targets are the observed events in the
window (and the next ``N`` events for OTD). At most ``max_points`` points (evenly spaced over all candidates).

Next event (``NextEventMetrics``), from the law of the next event at each point:

- ``next_accuracy``: share of points where ``argmax_k p(k | H)`` (the forecast, next time unknown) is the observed
  next mark. ``next_nll_mark``: mean ``-log p(k_obs | H)``.
- ``next_mae``: mean ``|F^{-1}(0.5 | H) - tau_obs|`` (median as point forecast, data units).
- ``next_interval_coverage``: share of observed gaps inside the central interval
  ``[F^{-1}((1 - l) / 2), F^{-1}((1 + l) / 2)]`` at level ``l``; calibrated forecasts give ``l``
  (Gneiting & Raftery 2007, "Strictly proper scoring rules, prediction, and estimation", JASA, §6 on interval
  forecasts). ``next_interval_width``: its mean width.

Horizon (``TMAP``, ``OTD``), from the point-forecast rollout (``sampler="mode"``: conditional median gaps, most
probable marks with their log-probabilities as scores), as in HoTPP (Karpukhin et al. 2024, "HoTPP benchmark: Are
we good at the long horizon events forecasting?", arXiv:2406.14341):

- ``tmap``: T-mAP. For a time tolerance ``delta`` and a mark ``c``: at each point, predicted events (each with a
  score ``s_c``, the log-probability of ``c``) and target events of mark ``c`` are matched one-to-one, a pair
  allowed only when ``|t_pred - t_true| <= delta``, by a linear assignment that maximises the number of pairs and
  then the total score. Over all points, rank the predictions by ``s_c``; a prediction is a true positive when
  matched. ``AP_c = sum_r precision@r * (recall@r - recall@(r-1))`` with recall relative to ALL targets of mark
  ``c`` (so unmatched targets cap it: HoTPP's ``AP * max_recall``). ``mAP(delta) = mean_c AP_c`` over all ``K``
  marks (HoTPP's convention: a mark without targets counts 0); ``tmap`` = mean over the ``deltas``. Departure
  from HoTPP's code: a mark whose every prediction is matched gets its AP (HoTPP's ``label_mask`` sets it to 0).
- ``otd``: the optimal transport distance of Mei, Qin & Eisner (ICML 2019, "Imputing missing events in
  continuous-time event streams") between the first ``N`` predicted and the first ``N`` observed events after
  the point: ``min`` over partial matchings of ``sum_matched |t - t'|`` (same mark only) ``+ cost`` per unmatched
  event on either side (insert = delete = ``cost``), i.e. the assignment on ``min(|t - t'|, 2 cost)`` with
  ``2 cost`` for different marks (HoTPP's ``OTDMetric``). Mean over points.

Calibration of the count in the window (``CountCalibration``), from ``S`` sampled continuations per point:

- ``count_pit``: the randomised PIT of the observed count ``n`` among the ``S`` sampled counts ``s_1..s_S``:
  ``u = (#{s_j < n} + v (#{s_j = n} + 1)) / (S + 1)``, ``v ~ U(0, 1)``: the rank of the observation among the
  ``S + 1`` values with ties broken at random, made continuous (the verification rank of an ensemble forecast,
  Anderson 1996, J. Climate 9(7); Hamill 2001, Mon. Wea. Rev. 129(3); randomised for counts as in Czado, Gneiting
  & Held 2009, "Predictive model assessment for count data", Biometrics). Exactly ``U(0, 1)`` whenever the
  observed count and the samples are exchangeable (a calibrated forecast), for every ``S``. The plug-in PIT of
  the samples' empirical CDF, ``F_S(n - 1) + v (F_S(n) - F_S(n - 1))``, is not: it has atoms at multiples of
  ``1 / S`` and gave a perfectly calibrated forecaster a PCE of 0.026 with 8 samples and 0.006 with 32 (measured,
  Poisson counts). ``count_pce``: the PCE of these PITs (``mtpp.evaluation.metrics.pce``); ``count_pit_hist``:
  their histogram.
- ``count_coverage``: share of observed counts inside the central interval of the sampled counts at level
  ``l`` (the ``(1 - l) / 2`` and ``(1 + l) / 2`` quantiles, inverted-CDF rule, inclusive); ``count_mae``: mean
  ``|median sampled count - n|``; ``count_mean_pred`` / ``count_mean_obs``.

**Continuations cut at ``max_events``** (``Generated.truncated``: the cap reached before the window's end) are
counted, never hidden: ``truncated_samples`` of the ``points x samples`` sampled continuations (their counts are
lower bounds, and so is every count metric from them) and ``truncated_rollouts`` of the ``points`` mode rollouts
(their T-mAP predictions stop early); ``format_horizon`` marks the metrics they touch.

Python loops: over prediction points and marks in ``TMAP`` / ``OTD`` (one small assignment problem each;
``scipy.optimize.linear_sum_assignment``); evaluation only, never a training path.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from mtpp.data.sequence import EventSequence
from mtpp.errors import MtppError
from mtpp.forecast.generate import DEFAULT_MAX_EVENTS, PIT_DRAW, RowUniforms, row_keys, truncation_note

DEFAULT_DELTAS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5)
"""Default T-mAP tolerances as fractions of the horizon."""


# ------------------------------------------------------------------------------------------------ next event


class NextEventMetrics:
    """Accuracy, NLL of the forecast mark, gap MAE and interval coverage of next-event forecasts (module doc)."""

    def __init__(self, level: float = 0.9) -> None:
        self.level = level
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.hits = 0.0
        self.nll = 0.0
        self.abs_err = 0.0
        self.covered = 0
        self.width = 0.0

    def update(self, mark_log_probs, observed_mark, median, lower, upper, observed_gap) -> None:
        """Arrays over points: ``mark_log_probs: [P, K]`` (forecast), ``observed_mark: [P]``, ``median``,
        ``lower``, ``upper``, ``observed_gap: [P]`` (data units)."""
        lp = np.asarray(mark_log_probs, dtype=np.float64)
        y = np.asarray(observed_mark, dtype=np.int64)
        gap = np.asarray(observed_gap, dtype=np.float64)
        lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
        self.n += int(y.shape[0])
        self.hits += float((lp.argmax(-1) == y).sum())
        self.nll += float(-np.take_along_axis(lp, y[:, None], 1).sum())
        self.abs_err += float(np.abs(np.asarray(median, dtype=np.float64) - gap).sum())
        self.covered += int(((gap >= lo) & (gap <= hi)).sum())
        self.width += float((hi - lo).sum())

    def compute(self) -> dict[str, float]:
        n = max(self.n, 1)
        nan = math.nan
        return {
            "next_points": self.n,
            "next_accuracy": self.hits / n if self.n else nan,
            "next_nll_mark": self.nll / n if self.n else nan,
            "next_mae": self.abs_err / n if self.n else nan,
            "next_interval_coverage": self.covered / n if self.n else nan,
            "next_interval_width": self.width / n if self.n else nan,
            "next_interval_level": self.level,
        }


# ------------------------------------------------------------------------------------------------ T-mAP


def _match(pred_t: np.ndarray, score: np.ndarray, true_t: np.ndarray, delta: float) -> np.ndarray:
    """``[P]`` bool: predictions matched to a target within ``delta`` (max pairs, then max total score).

    Infinite scores are ranks at the ends: a ``-inf`` log-probability (a mark the forecaster gives probability 0,
    e.g. the Poisson baseline's rate of a mark absent from the training split) is matched after every finite one
    (it was NaN in the cost matrix, and SciPy refused it); a NaN score is an ``MtppError``."""
    ok = np.abs(pred_t[:, None] - true_t[None, :]) <= delta  # [P, T]
    matched = np.zeros(pred_t.shape[0], dtype=bool)
    if not ok.any():
        return matched
    score = _finite_ranks(score)
    s = score - score.max() if score.size else score  # <= 0: a feasible pair always beats an infeasible one
    big = 1.0 + float(np.abs(s).sum()) + 1.0
    cost = np.where(ok, -s[:, None] - big, 0.0)  # feasible pairs: -big - score; infeasible: 0
    r, c = linear_sum_assignment(cost)
    good = ok[r, c]
    matched[r[good]] = True
    return matched


def _finite_ranks(score: np.ndarray) -> np.ndarray:
    """``score`` with ``-inf`` / ``+inf`` replaced by one below / above every finite score (the order kept)."""
    if np.isnan(score).any():
        raise MtppError("T-mAP: a prediction's mark score is NaN (the forecaster's mark probabilities are not finite)")
    finite = np.isfinite(score)
    if finite.all():
        return score
    lo, hi = (float(score[finite].min()), float(score[finite].max())) if finite.any() else (0.0, 0.0)
    return np.where(score == -np.inf, lo - 1.0, np.where(score == np.inf, hi + 1.0, score))


def average_precision(scores: np.ndarray, positive: np.ndarray, total: int) -> float:
    """``sum_r precision@r * (recall@r - recall@(r-1))`` over predictions ranked by descending score (stable), with
    recall relative to ``total`` targets; 0 when ``total == 0``."""
    if total == 0 or scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(positive[order])
    precision = tp / np.arange(1, tp.size + 1)
    return float((precision * positive[order]).sum() / total)


class TMAP:
    """HoTPP's T-mAP (module docstring) for ``num_marks`` marks, tolerances ``deltas`` (data units)."""

    def __init__(self, num_marks: int, deltas: Sequence[float]) -> None:
        if not deltas or any(d <= 0 for d in deltas):
            raise MtppError(f"T-mAP tolerances must be > 0, got {list(deltas)}")
        self.num_marks = int(num_marks)
        self.deltas = [float(d) for d in deltas]
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []  # per point [P, K]
        self._matched: list[list[np.ndarray]] = [[] for _ in self.deltas]  # per delta, per point [P, K] bool
        self._totals = np.zeros(self.num_marks, dtype=np.int64)

    def update(self, pred_times, pred_scores, true_times, true_marks) -> None:
        """One prediction point: ``pred_times: [P]`` with ``pred_scores: [P, K]`` (log-probabilities or any
        monotone score), targets ``true_times: [T]``, ``true_marks: [T]``; all within the horizon."""
        pt = np.asarray(pred_times, dtype=np.float64).reshape(-1)
        ps = np.asarray(pred_scores, dtype=np.float64).reshape(pt.shape[0], self.num_marks)
        tt = np.asarray(true_times, dtype=np.float64).reshape(-1)
        tm = np.asarray(true_marks, dtype=np.int64).reshape(-1)
        self._totals += np.bincount(tm, minlength=self.num_marks)[: self.num_marks]
        self._scores.append(ps)
        for d, delta in enumerate(self.deltas):
            m = np.zeros(ps.shape, dtype=bool)
            for c in np.unique(tm):  # marks present in the targets (others cannot match)
                m[:, c] = _match(pt, ps[:, c], tt[tm == c], delta)
            self._matched[d].append(m)

    def compute(self) -> dict[str, float]:
        if not self._scores:
            return {"tmap": math.nan}
        scores = np.concatenate(self._scores)  # [V, K]
        out = {}
        maps = []
        for d, delta in enumerate(self.deltas):
            matched = np.concatenate(self._matched[d])
            aps = [average_precision(scores[:, c], matched[:, c], int(self._totals[c])) for c in range(self.num_marks)]
            maps.append(float(np.mean(aps)))
            out[f"map@{delta:g}"] = maps[-1]
        out["tmap"] = float(np.mean(maps))
        return out


# ------------------------------------------------------------------------------------------------ OTD


def otd_distance(pred_times, pred_marks, true_times, true_marks, cost: float) -> float:
    """Optimal transport distance between two event sets (module docstring): ``insert = delete = cost``."""
    pt, pm = np.asarray(pred_times, dtype=np.float64), np.asarray(pred_marks)
    tt, tm = np.asarray(true_times, dtype=np.float64), np.asarray(true_marks)
    if pt.size == 0 or tt.size == 0:
        return cost * (pt.size + tt.size)
    cap = 2.0 * cost
    c = np.minimum(np.abs(pt[:, None] - tt[None, :]), cap)
    c = np.where(pm[:, None] == tm[None, :], c, cap)
    r, k = linear_sum_assignment(c)
    unmatched = pt.size + tt.size - 2 * r.size
    return float(c[r, k].sum() + cost * unmatched)


class OTD:
    """Mean OTD over prediction points between the first ``N`` predicted and observed events (``cost`` each for
    an insertion or a deletion)."""

    def __init__(self, cost: float) -> None:
        if not cost > 0:
            raise MtppError(f"OTD cost must be > 0, got {cost}")
        self.cost = float(cost)
        self.reset()

    def reset(self) -> None:
        self.total = 0.0
        self.n = 0

    def update(self, pred_times, pred_marks, true_times, true_marks) -> None:
        self.total += otd_distance(pred_times, pred_marks, true_times, true_marks, self.cost)
        self.n += 1

    def compute(self) -> dict[str, float]:
        return {"otd": self.total / self.n if self.n else math.nan, "otd_points": self.n, "otd_cost": self.cost}


# ------------------------------------------------------------------------------------------------ counts


def count_pit_bounds(samples: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(#{s < n} / (S + 1), (#{s <= n} + 1) / (S + 1))`` for the observed counts ``observed: [P]`` among
    ``samples: [P, S]`` (integers): the randomised PIT (module docstring) lies uniformly between them."""
    s = np.asarray(samples)
    n = np.asarray(observed)[:, None]
    total = s.shape[-1] + 1
    return (s < n).sum(-1) / total, ((s <= n).sum(-1) + 1) / total


class CountCalibration:
    """Randomised PIT, central-interval coverage and MAE of the event count in the horizon window (module doc)."""

    def __init__(self, level: float = 0.9, seed: int = 0) -> None:
        self.level = level
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self.pit: list[np.ndarray] = []
        self.covered = 0
        self.abs_err = 0.0
        self.pred_sum = 0.0
        self.obs_sum = 0.0
        self.n = 0

    def update(self, samples, observed, keys=None) -> None:
        """``samples: [P, S]`` sampled counts, ``observed: [P]`` observed counts; ``keys: [P]`` int64 keys of the
        points (``mtpp.forecast.generate.row_keys``): the PIT's uniforms counter-based, each point's own whatever
        the order of the points; ``None``: drawn from the seeded generator in the order given."""
        s = np.asarray(samples, dtype=np.int64)
        y = np.asarray(observed, dtype=np.int64)
        lo_f, hi_f = count_pit_bounds(s, y)
        if keys is None:
            v = self.rng.random(y.shape[0])
        else:
            keys = torch.as_tensor(np.asarray(keys), dtype=torch.int64)
            v = RowUniforms(keys).draw(torch.arange(keys.shape[0]), 0, PIT_DRAW).numpy()
        self.pit.append(lo_f + v * (hi_f - lo_f))
        a = (1.0 - self.level) / 2.0
        lo = np.quantile(s, a, axis=-1, method="inverted_cdf")
        hi = np.quantile(s, 1.0 - a, axis=-1, method="inverted_cdf")
        self.covered += int(((y >= lo) & (y <= hi)).sum())
        med = np.quantile(s, 0.5, axis=-1, method="inverted_cdf")
        self.abs_err += float(np.abs(med - y).sum())
        self.pred_sum += float(s.mean(-1).sum())
        self.obs_sum += float(y.sum())
        self.n += int(y.shape[0])

    def compute(self) -> dict:
        from mtpp.evaluation.metrics import pce, pit_histogram

        if not self.n:
            return {"count_points": 0}
        pit = np.concatenate(self.pit)
        return {
            "count_points": self.n,
            "count_pce": pce(pit),
            "count_pit_hist": pit_histogram(pit, 10).tolist(),
            "count_coverage": self.covered / self.n,
            "count_level": self.level,
            "count_mae": self.abs_err / self.n,
            "count_mean_pred": self.pred_sum / self.n,
            "count_mean_obs": self.obs_sum / self.n,
        }


# ------------------------------------------------------------------------------------------------ driver


def prediction_points(
    sequences: Sequence[EventSequence], horizon: float, *, min_history: int = 1, stride: int = 1,
    max_points: int | None = 1000,
) -> list[tuple[int, int]]:
    """``(sequence, i)`` cut points (history = events ``0..i-1``) whose horizon window is fully observed."""
    pts = []
    for s_id, s in enumerate(sequences):  # per sequence (setup); the window test is vectorised over events
        n = len(s)
        end = float(s.window_end) if s.window_end is not None else float(s.times[-1])
        i = np.arange(max(min_history, 1), n, stride)
        ok = s.times[i - 1] + horizon <= end
        pts.extend((s_id, int(j)) for j in i[ok])
    if max_points is not None and len(pts) > max_points:
        keep = np.linspace(0, len(pts) - 1, max_points).round().astype(int)
        pts = [pts[j] for j in keep]
    return pts


def evaluate_horizon(
    model_or_factory,
    sequences: Sequence[EventSequence],
    horizon: float,
    num_marks: int,
    *,
    samples: int = 32,
    level: float = 0.9,
    deltas: Sequence[float] | None = None,
    otd_events: int = 5,
    otd_cost: float | None = None,
    min_history: int = 1,
    stride: int = 1,
    max_points: int | None = 1000,
    max_events: int = DEFAULT_MAX_EVENTS,
    seed: int = 0,
    progress: str | None = None,
) -> dict:
    """Every metric of the module docstring for a model (``MarkedTPP``) or a baseline ``factory(histories)``.

    deltas: T-mAP tolerances (default ``DEFAULT_DELTAS_FRACTIONS x horizon``); otd_cost: default ``horizon / 2``.
    progress: a label to show a progress bar over the stages under (on a terminal); ``None``: no bar.
    max_events: the cap on events per continuation (sampled or rollout) within the horizon.
    Returns a flat dict (plus ``window`` = the horizon, ``points``, ``samples``, ``max_events``,
    ``truncated_samples`` (of ``points x samples``) and ``truncated_rollouts`` (of ``points``): the continuations
    cut at ``max_events`` before the window's end, module docstring).
    """
    from tqdm.auto import tqdm

    from mtpp.forecast.generate import generate
    from mtpp.forecast.process import ModelProcess

    if not (math.isfinite(horizon) and horizon > 0):
        raise MtppError(f"horizon must be a finite time span > 0, got {horizon}")
    deltas = list(deltas) if deltas is not None else [round(f * horizon, 12) for f in DEFAULT_DELTAS_FRACTIONS]
    otd_cost = float(otd_cost) if otd_cost is not None else horizon / 2.0
    pts = prediction_points(sequences, horizon, min_history=min_history, stride=stride, max_points=max_points)
    if not pts:
        raise MtppError(f"no prediction point with a fully observed window of {horizon:g} (sequences too short?)")
    hist = [EventSequence(sequences[s].times[:i], sequences[s].marks[:i]) for s, i in pts]
    is_model = isinstance(model_or_factory, torch.nn.Module)

    # next event: the law at each point
    nxt_m = NextEventMetrics(level)
    chunk = 256
    bar = tqdm(total=-(-len(hist) // chunk) + 4, desc=f"horizon {progress}: next event", unit="stage",
               leave=False, disable=None if progress else True)  # fmt: skip
    with torch.no_grad():
        for lo in range(0, len(hist), chunk):
            hs = hist[lo : lo + chunk]
            proc = ModelProcess(model_or_factory, hs, 1) if is_model else model_or_factory(hs)
            nxt = proc.next_event(torch.arange(len(hs)))
            k = len(hs)
            dtype = torch.float64

            def q(p: float):
                return nxt.icdf(torch.full((k,), p, dtype=dtype)).double().cpu().numpy()

            flp = nxt.forecast_mark_log_probs().double().cpu().numpy()
            here = pts[lo : lo + chunk]  # the observed next event of each point
            gaps = np.array([sequences[s].times[i] - sequences[s].times[i - 1] for s, i in here])
            marks = np.array([sequences[s].marks[i] for s, i in here])
            nxt_m.update(flp, marks, q(0.5), q((1 - level) / 2), q((1 + level) / 2), gaps)
            bar.update()

    def stage(name: str) -> None:
        bar.set_description_str(f"horizon {progress}: {name}")

    gen_kw = dict(max_events=max_events, seed=seed)
    stage("mode rollout")
    rollout = generate(model_or_factory, hist, horizon=horizon, sampler="mode", **gen_kw)
    bar.update()
    stage(f"first {otd_events} events")
    first_n = generate(model_or_factory, hist, events=otd_events, sampler="mode", **gen_kw)
    bar.update()
    stage(f"{samples} sampled continuations")
    sampled = generate(model_or_factory, hist, horizon=horizon, samples=samples, **gen_kw)
    bar.update()
    stage("matching")

    tmap, otd, cal = TMAP(num_marks, deltas), OTD(otd_cost), CountCalibration(level, seed)
    observed_counts = np.zeros(len(pts), dtype=np.int64)
    # group the rollouts' flat events by row once (sorted by row, then index)
    def split_rows(g):
        order = np.lexsort((g.index, g.row))
        bounds = np.searchsorted(g.row[order], np.arange(g.rows + 1))
        return order, bounds

    o1, b1 = split_rows(rollout)
    o2, b2 = split_rows(first_n)
    for p, (s, i) in enumerate(pts):  # per prediction point: small matching problems
        seq = sequences[s]
        t0 = seq.times[i - 1]
        in_win = (seq.times > t0) & (seq.times <= t0 + horizon)
        in_win[:i] = False
        observed_counts[p] = int(in_win.sum())
        sel = o1[b1[p] : b1[p + 1]]
        tmap.update(rollout.time[sel] - t0, rollout.scores[sel] if rollout.scores is not None else
                    np.zeros((0, num_marks)), seq.times[in_win] - t0, seq.marks[in_win])
        if i + otd_events <= len(seq):
            sel2 = o2[b2[p] : b2[p + 1]]
            otd.update(first_n.time[sel2] - t0, first_n.mark[sel2], seq.times[i : i + otd_events] - t0,
                       seq.marks[i : i + otd_events])
    # the PIT's uniforms keyed by each point's history: the same whatever the order of the sequences
    cal.update(sampled.counts.reshape(len(pts), samples), observed_counts,
               keys=row_keys(hist, np.zeros(len(hist), dtype=np.int64), seed))
    bar.update()
    bar.close()
    out = {"window": horizon, "points": len(pts), "samples": samples}
    out.update(nxt_m.compute())
    out.update(tmap.compute())
    out["tmap_deltas"] = deltas
    out.update(otd.compute())
    out["otd_events"] = otd_events
    out.update(cal.compute())
    out["max_events"] = max_events
    out["truncated_samples"] = int(sampled.truncated.sum())
    out["truncated_rollouts"] = int(rollout.truncated.sum())
    return out


HORIZON_PREFIX = "horizon_"


def evaluate_run_horizon(
    run_dir,
    split: str,
    horizon: float,
    data_dir: str | None = None,
    *,
    samples: int = 32,
    baselines: bool = True,
    max_points: int | None = 1000,
    device: str | None = None,
    write: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    **kwargs,
) -> dict:
    """``evaluate_horizon`` of a run directory's model on ``split`` (and of the baselines that apply:
    ``mtpp.forecast.baselines``), seeded with the run's seed.

    With ``write``, ``metrics.json[split]`` gains the model's metrics as flat ``horizon_<name>`` keys (so
    ``mtpp compare`` / ``mtpp report`` tables can show them) and ``horizon_baselines: {name: {...}}``, replacing
    every ``horizon_*`` key of an earlier horizon evaluation (another horizon's ``map@`` tolerances, an older
    file's ``horizon_truncated_rows``); nothing else in the file changes. ``progress``: a bar per model /
    baseline on a terminal. A run whose training has not finished gets them in ``metrics.interim.json``
    (``mtpp.evaluation.evaluate.metrics_path``, said to ``log``). Returns ``{"model": {...}, "baselines": {name:
    {...}}}``.
    """
    from pathlib import Path

    from mtpp.evaluation.evaluate import json_safe, metrics_path, read_metrics, write_json
    from mtpp.forecast.baselines import available_baselines, baseline_factory
    from mtpp.forecast.runs import load_run

    run = load_run(run_dir, data_dir, device)
    seqs = run.split(split)
    seed = int(run.cfg.train.seed)
    kw = dict(samples=samples, max_points=max_points, seed=seed, **kwargs)
    k = run.data.num_marks
    with run.threads():
        result = {"model": evaluate_horizon(run.model, seqs, horizon, k, progress="model" if progress else None,
                                            **kw), "baselines": {}}  # fmt: skip
        if baselines:
            for name in available_baselines(run):
                result["baselines"][name] = evaluate_horizon(baseline_factory(name, run), seqs, horizon, k,
                                                             progress=name if progress else None, **kw)  # fmt: skip
    result = json_safe(result)
    if write:
        target = metrics_path(Path(run_dir), log)  # metrics.interim.json while its training has not finished
        existing = read_metrics(Path(run_dir), target)
        section = existing.setdefault(split, {})
        for key in [k for k in section if k.startswith(HORIZON_PREFIX)]:  # one horizon evaluation, not a mix
            del section[key]
        section.update({f"{HORIZON_PREFIX}{name}": v for name, v in result["model"].items()})
        if baselines:
            section[f"{HORIZON_PREFIX}baselines"] = result["baselines"]
        write_json(target, existing)
    return result


SHOWN = (
    ("acc.", "next_accuracy"), ("MAE", "next_mae"), ("gap cov.", "next_interval_coverage"), ("T-mAP", "tmap"),
    ("OTD", "otd"), ("count PCE", "count_pce"), ("count cov.", "count_coverage"),
)


TRUNCATION_TOUCHES = {"truncated_samples": ("count_pce", "count_coverage"), "truncated_rollouts": ("tmap",)}
"""The shown metrics computed from each kind of continuation, flagged ``*`` when some were cut at ``max_events``."""


def format_horizon(result: dict, label: str, units: str = "data units") -> str:
    """A Markdown table of ``evaluate_run_horizon``'s result: the model and each baseline, one row each; a metric
    computed from continuations cut at ``max_events`` is marked ``*``, with a line under the table per forecaster
    saying how many of how many were cut. ``units``: the data's time unit in words (the horizon, MAE, OTD)."""
    def cell(v) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    m = result["model"]
    head = (f"horizon {m['window']:g} {units}, {m['points']} points, {m['samples']} samples, "
            f"intervals at {m['next_interval_level']:g}")
    lines = [f"{label}: {head}", "| forecaster | " + " | ".join(s for s, _ in SHOWN) + " |",
             "|" + "---|" * (len(SHOWN) + 1)]
    notes = []
    for name, r in [("model", m), *result.get("baselines", {}).items()]:
        cut = {kind: int(r.get(kind) or 0) for kind in TRUNCATION_TOUCHES}
        flagged = {k for kind, keys in TRUNCATION_TOUCHES.items() if cut[kind] for k in keys}
        lines.append(f"| {name} | " + " | ".join(cell(r.get(k)) + "*" * (k in flagged) for _, k in SHOWN) + " |")
        of = {"truncated_samples": (r["points"] * r["samples"], "sampled continuations"),
              "truncated_rollouts": (r["points"], "mode rollouts")}
        said = [f"{truncation_note(cut[kind], of[kind][0], r['max_events'], of[kind][1])} "
                f"({', '.join(s for s, k in SHOWN if k in TRUNCATION_TOUCHES[kind])})"
                for kind in TRUNCATION_TOUCHES if cut[kind]]  # fmt: skip
        if said:
            notes.append(f"* {name}: " + "; ".join(said))
    deltas = m.get("tmap_deltas")
    return "\n".join(lines + notes + [HORIZON_CAPTION.format(
        level=m["next_interval_level"], units=units,
        deltas=", ".join(f"{d:g}" for d in deltas) if deltas else "?", otd_events=m.get("otd_events", "N"),
        otd_cost=f"{m['otd_cost']:g}" if m.get("otd_cost") is not None else "?")])


HORIZON_CAPTION = (
    "(at each prediction point, told only the history: acc.: next mark by argmax p(k | H), share of points; MAE: "
    "|median gap - observed gap|, {units}; gap cov.: share of observed gaps inside the central {level:g} "
    "interval of the gap; T-mAP: mean average precision of the events predicted in the horizon by the "
    "median-gap rollout, matched within time tolerances {deltas} {units} (HoTPP), unitless in [0, 1]; OTD: "
    "optimal transport distance between the first {otd_events} predicted and the next {otd_events} observed "
    "events, {units}, {otd_cost} per unmatched event (at most {otd_events} x 2 x {otd_cost}); "
    "count PCE / count cov.: calibration of the sampled number of events in the horizon (PCE of its PIT, "
    "unitless; share inside the central {level:g} interval))"
)
"""The line under :func:`format_horizon`'s table: what each column conditions on, its parameters (T-mAP
tolerances, OTD's number of events and cost) and its unit."""
