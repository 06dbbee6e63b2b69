"""Evaluation metrics: NLL, mark accuracy / top-k / MRR / Brier, calibration (PCE, ECE, MCE), gap errors.

Two layers:

* **Pure functions** on arrays (torch tensors, numpy arrays or lists) returning floats or numpy arrays:
  :func:`pce`, :func:`pit_histogram`, :func:`pit_cdf`, :func:`ece`, :func:`mce`, :func:`reliability_diagram`,
  :func:`brier`, :func:`topk_accuracy`, :func:`mrr`, :func:`true_class_rank_stats`.
* :class:`MetricAccumulator`, fed with one :class:`~mtpp.models.base.Scores` per batch. It keeps only
  **running sums and fixed-size histograms on the scores' device** (no per-event storage, no host sync in
  ``update``), so two batches give exactly the metrics of their concatenation, memory is ``O(1)`` in the
  number of events, and data-parallel ranks merge with one ``all_reduce`` per state tensor. The single move
  to the CPU happens in :meth:`MetricAccumulator.compute` / :meth:`MetricAccumulator.arrays`.

Conventions (every report should state them):

* **Scored events** are ``scores.nll.scored`` (the set ``I`` of the likelihood contract: every real event, or
  every event but the first with ``first_event: skip``). Every per-event metric (marks, PIT, gap errors) and
  ``num_events`` count scored events only. ``num_ties`` counts the scored events whose gap is below the tie
  resolution (``Scores.tied``): their ``L_T`` terms are probabilities ``F(delta)``, not densities.
* ``nll_time_per_seq`` = sum over sequences of ``L_T`` (survival term included) / number of sequences: the
  paper's unit. ``nll_time_per_event`` = the same total divided by the number of scored events (the ifl-tpp
  convention: the survival term is part of the total, not a separate event).
* ``nll_time_binned_per_seq`` / ``_per_event``: the same sums of ``-log P(gap's lattice bin | H)`` (nats,
  unitless), reported when every batch was scored with the data's time quantum (``Scores.time_nll_binned``): on
  data whose times lie on a lattice (``mtpp.data.lattice``) the continuous ``L_T`` rewards density spikes on the
  lattice points; the binned NLL does not.
* ``pce_binned``: PCE of the non-randomised PIT of the lattice bins (Czado, Gneiting & Held 2009, Biometrics 65(4),
  eq. 2): an event whose gap falls in the bin ``[lo, hi)`` spreads its PIT uniformly over ``[F(lo), F(hi)]``, so
  the empirical CDF at ``j/50`` is the mean over events of ``clip((j/50 - F(lo)) / (F(hi) - F(lo)), 0, 1)``. The
  continuous PIT ``F(tau)`` of rounded data is not uniform even under the model that generated them; reported
  with ``nll_time_binned_*``.
* **PIT / PCE.** ``u_i = F(tau_i | H_i)``. The empirical CDF at ``j/50`` is the share of ``u <= j/50``
  (``j = 1..50``); ``PCE = (1/50) sum_j |F_hat(j/50) - j/50|``. Sources: probabilistic calibration = uniform PIT
  (Gneiting, Balabdaoui & Raftery 2007, JRSS B 69(2)); the PCE of a neural TPP's time distribution as in Bosser &
  Ben Taieb (2023, TMLR, "On the predictive accuracy of neural temporal point process models for continuous-time
  event data"). The PIT histogram has bins
  ``((j-1)/50, j/50]`` (``u = 0`` in the first bin), so its cumulative sum is exactly ``F_hat(j/50)``.
* **Ranks and ties.** For the true mark ``y`` with score ``s_y``: ``g`` = number of marks with a strictly larger
  score, ``t`` = number of *other* marks with an equal score. Rank-based metrics are the **expected value under
  uniformly random tie-breaking** (rank uniform on ``1+g .. 1+g+t``): top-``k`` hit = ``clip((k - g)/(t + 1), 0,
  1)``, reciprocal rank = ``(H_{g+t+1} - H_g)/(t + 1)`` (harmonic numbers). Without ties this is the usual
  ``rank = 1 + g``; a degenerate model that outputs uniform probabilities gets accuracy ``1/K`` (chance), never
  1 (the optimistic rule) or 0 (the pessimistic one). ``accuracy_*`` is top-1 under this rule.
* **Top-k only where it says something.** ``top{k}_accuracy_*`` is reported for the ``k`` of ``TOPK`` below the
  number of marks ``K`` (:func:`topk_reported`): with ``k >= K`` every event is in the top ``k``, so the value is 1
  whatever the model. ``num_marks`` (``K``) is reported beside them.
* **Two mark distributions** (``MARK_KINDS``), every mark metric reported for each, the name saying which:
  ``*_given_time`` scores ``p(k | tau_i, H_i)`` (given the observed gap: the distribution of ``L_M``,
  ``nll_mark_*``), ``*_forecast`` scores ``p(k | H_i)`` (the next time unknown; ``nll_mark_forecast_*``). E.g.
  ``accuracy_given_time``, ``accuracy_forecast``, ``top5_accuracy_forecast``, ``mrr_*``, ``brier_*``, ``ece_*``,
  ``mce_*``. Forecast metrics are absent when the scores carry no forecast (``Scores.forecast_mark_log_probs``).
* **ECE / MCE.** Confidence = top-class probability, correctness = the (tie-aware) top-1 hit. 10 equal-width
  bins ``(b/10, (b+1)/10]`` (confidence 0 in the first bin); ``ECE = sum_b (n_b/N) |acc_b - conf_b|``,
  ``MCE = max`` over non-empty bins (Naeini, Cooper & Hauskrecht 2015, AAAI; the top-label, equal-width form of
  Guo, Pleiss, Sun & Weinberger 2017, ICML).
* **Brier** (multi-class): ``mean_i sum_k (p_ik - 1[k = y_i])^2`` (range ``[0, 2]``).
* **Gap errors.** ``mae_tau`` / ``rmse_tau``: the median ``F^{-1}(0.5)`` as point predictor of ``tau_i``;
  ``mae_tau_mean`` / ``rmse_tau_mean``: the mean, present only when every batch gave ``Scores.mean_tau``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from mtpp.data.batch import Batch
    from mtpp.models.base import Scores

PIT_BINS = 50
"""Number of PIT bins / CDF grid points ``j/50`` used by PCE."""
CALIBRATION_BINS = 10
"""Number of equal-width confidence bins of ECE / MCE (and of the reliability diagram of runs without the fine
bins below)."""
FINE_RELIABILITY_EDGES = np.concatenate([[0.0], np.logspace(-6, 0, 301)])
"""Edges of the fine, log-spaced confidence bins (50 per decade from 1e-6 to 1, and ``[0, 1e-6)``) whose sums the
accumulator also keeps for the reliability *figure* only (``mtpp.evaluation.plots.reliability_plot_bins`` merges
them into equal-mass bins over the observed confidences): with ``K`` marks the top-class probability can be as low
as ``1 / K`` (with 200 marks every event's was below 0.1, all in the first equal-width bin). ECE / MCE never use
them."""
TOPK = (1, 3, 5, 10)
"""The ``k`` of the top-``k`` accuracies reported by :class:`MetricAccumulator` (those below ``K``:
:func:`topk_reported`)."""

ArrayLike = Tensor | np.ndarray | Sequence[float]

__all__ = [
    "PIT_BINS",
    "CALIBRATION_BINS",
    "TOPK",
    "topk_reported",
    "pce",
    "pit_histogram",
    "pit_cdf",
    "ece",
    "mce",
    "reliability_diagram",
    "brier",
    "topk_accuracy",
    "mrr",
    "true_class_rank_stats",
    "MetricAccumulator",
]


def topk_reported(k: int, num_marks: int) -> bool:
    """Whether ``top{k}_accuracy`` means anything for a model of ``num_marks`` marks: top-1 always; ``k >= 2`` only
    when ``k < num_marks`` (else every event is in the top ``k`` and the accuracy is 1 whatever the model)."""
    return k == 1 or k < num_marks


# ----------------------------------------------------------------------------------------------------------------
# Shared kernels (torch, any device, no host sync)


def _as_tensor(x: ArrayLike, dtype: torch.dtype | None = None) -> Tensor:
    if isinstance(x, Tensor):
        t = x
    else:
        a = np.asarray(x)
        # a read-only array (a pandas column's .values, a memory map) is copied: torch warns about sharing it
        t = torch.as_tensor(a if a.flags.writeable else a.copy())
    return t.to(dtype) if dtype is not None else t


def _float_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device supports it (sums of millions of terms), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def _inner_edges(bins: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[1/bins, ..., (bins-1)/bins]`` computed as ``j / bins`` (so ``0.3`` is the double nearest 3/10)."""
    return torch.arange(1, bins, device=device, dtype=dtype) / bins


def _bin_index(values: Tensor, bins: int) -> Tensor:
    """Index of the bin ``(b/bins, (b+1)/bins]`` of each value; values <= 0 go to bin 0, values > 1 to the last."""
    edges = _inner_edges(bins, values.device, values.dtype)
    return torch.bucketize(values, edges, right=False)


def _rank_stats(log_probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``g`` (strictly larger scores) and ``t`` (other equal scores) of the true class; shapes ``labels.shape``."""
    true = log_probs.gather(-1, labels.unsqueeze(-1))
    greater = (log_probs > true).sum(-1)
    ties = (log_probs == true).sum(-1) - 1
    return greater, ties


def _expected_topk(greater: Tensor, ties: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    """P(rank <= k) with rank uniform on ``1+g .. 1+g+t``."""
    return ((k - greater.to(dtype)) / (ties.to(dtype) + 1)).clamp(0.0, 1.0)


def _expected_reciprocal_rank(greater: Tensor, ties: Tensor, dtype: torch.dtype) -> Tensor:
    """E[1/rank] with rank uniform on ``1+g .. 1+g+t``: ``(H_{g+t+1} - H_g) / (t+1)`` via digamma."""
    g = greater.to(dtype)
    t = ties.to(dtype)
    return (torch.digamma(g + t + 2) - torch.digamma(g + 1)) / (t + 1)


# ----------------------------------------------------------------------------------------------------------------
# Pure functions


def pit_histogram(pit: ArrayLike, bins: int = PIT_BINS) -> np.ndarray:
    """Counts of PIT values in the bins ``((j-1)/bins, j/bins]``, ``j = 1..bins`` (``u = 0`` in the first)."""
    u = _as_tensor(pit, torch.float64).reshape(-1)
    idx = _bin_index(u, bins)
    return torch.bincount(idx, minlength=bins).cpu().numpy()


def pit_cdf(pit: ArrayLike, bins: int = PIT_BINS) -> np.ndarray:
    """Empirical CDF of the PIT values at ``j/bins``, ``j = 1..bins``: the share of ``u <= j/bins``."""
    counts = pit_histogram(pit, bins)
    n = counts.sum()
    if n == 0:
        raise ValueError("pit_cdf of an empty array")
    return np.cumsum(counts) / n


def pce(pit: ArrayLike, bins: int = PIT_BINS) -> float:
    """Probabilistic calibration error ``(1/50) sum_{j=1..50} |mean(u <= j/50) - j/50|`` of PIT values ``u``."""
    cdf = pit_cdf(pit, bins)
    grid = np.arange(1, bins + 1) / bins
    return float(np.mean(np.abs(cdf - grid)))


def _confidence_correct(probs: ArrayLike, labels: ArrayLike) -> tuple[Tensor, Tensor]:
    """(top-class probability ``[N]``, tie-aware top-1 hit ``[N]``) from ``probs [N, K]`` + ``labels [N]``, or
    passed through when ``probs`` is already the top-class probability ``[N]`` and ``labels`` the correctness."""
    p = _as_tensor(probs, torch.float64)
    y = _as_tensor(labels)
    if p.dim() == 1:
        if y.shape != p.shape:
            raise ValueError(f"confidence {tuple(p.shape)} and correctness {tuple(y.shape)} differ in shape")
        return p, y.to(torch.float64)
    if p.dim() != 2 or y.dim() != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"expected probs [N, K] and labels [N], got {tuple(p.shape)} and {tuple(y.shape)}")
    y = y.long()
    greater, ties = _rank_stats(p, y)
    return p.max(-1).values, _expected_topk(greater, ties, 1, torch.float64)


def reliability_diagram(
    probs: ArrayLike, labels: ArrayLike, bins: int = CALIBRATION_BINS
) -> dict[str, np.ndarray]:
    """Per confidence bin ``(b/bins, (b+1)/bins]``: ``count``, mean ``confidence``, ``accuracy`` (NaN if empty),
    and the ``edges`` (``bins + 1``). Inputs as in :func:`ece`."""
    conf, correct = _confidence_correct(probs, labels)
    idx = _bin_index(conf, bins)
    count = torch.bincount(idx, minlength=bins).to(torch.float64)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, conf)
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, correct)
    return _reliability_from_sums(count.numpy(), conf_sum.numpy(), acc_sum.numpy())


def _reliability_from_sums(count: np.ndarray, conf_sum: np.ndarray, acc_sum: np.ndarray) -> dict[str, np.ndarray]:
    bins = len(count)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, acc_sum / count, np.nan)
    return {
        "edges": np.arange(bins + 1) / bins,
        "count": count.astype(np.int64),
        "confidence": confidence,
        "accuracy": accuracy,
    }


def _ece_mce(diagram: dict[str, np.ndarray]) -> tuple[float, float]:
    count = diagram["count"]
    n = count.sum()
    if n == 0:
        return math.nan, math.nan
    nonempty = count > 0
    gap = np.abs(diagram["accuracy"][nonempty] - diagram["confidence"][nonempty])
    return float(np.sum(count[nonempty] / n * gap)), float(gap.max())


def ece(probs: ArrayLike, labels: ArrayLike, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error of the top-class probability over ``bins`` equal-width bins.

    ``probs [N, K]`` (probabilities) with integer ``labels [N]``; or ``probs [N]`` = top-class probability with
    ``labels [N]`` = correctness (bool or float in ``[0, 1]``). ``ECE = sum_b (n_b/N) |acc_b - conf_b|``.
    """
    return _ece_mce(reliability_diagram(probs, labels, bins))[0]


def mce(probs: ArrayLike, labels: ArrayLike, bins: int = CALIBRATION_BINS) -> float:
    """Maximum calibration error: ``max_b |acc_b - conf_b|`` over non-empty bins. Inputs as in :func:`ece`."""
    return _ece_mce(reliability_diagram(probs, labels, bins))[1]


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score ``mean_i sum_k (p_ik - 1[k = y_i])^2`` of ``probs [N, K]``, ``labels [N]``."""
    p = _as_tensor(probs, torch.float64)
    y = _as_tensor(labels).long()
    onehot = torch.nn.functional.one_hot(y, p.shape[-1]).to(torch.float64)
    return float(((p - onehot) ** 2).sum(-1).mean())


def true_class_rank_stats(log_probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(g, t)`` per row: marks scored strictly higher than the true one, and other marks tied with it."""
    g, t = _rank_stats(_as_tensor(log_probs), _as_tensor(labels).long())
    return g.cpu().numpy(), t.cpu().numpy()


def topk_accuracy(log_probs: ArrayLike, labels: ArrayLike, k: int = 1) -> float:
    """Share of rows whose true label ranks in the top ``k`` (ties broken uniformly at random, in expectation).

    ``log_probs [N, K]`` (any monotone score works: log-probabilities, probabilities, logits), ``labels [N]``.
    """
    g, t = _rank_stats(_as_tensor(log_probs), _as_tensor(labels).long())
    return float(_expected_topk(g, t, k, torch.float64).mean())


def mrr(log_probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean reciprocal rank of the true label; rank ``1 + #(strictly larger scores)``, ties broken uniformly at
    random in expectation (see the module docstring). Inputs as in :func:`topk_accuracy`."""
    g, t = _rank_stats(_as_tensor(log_probs), _as_tensor(labels).long())
    return float(_expected_reciprocal_rank(g, t, torch.float64).mean())


# ----------------------------------------------------------------------------------------------------------------
# Accumulator


MARK_KINDS = ("given_time", "forecast")
"""The two mark distributions every accumulator scores (suffixes of the mark metric names):

* ``given_time``: ``p(k | tau_i, H_i)``, given the observed gap: the distribution of ``L_M`` (Bosser & Ben Taieb
  2024); for ``+`` / ``++`` and joint decoders it knows when the event happened, so it is not a forecast.
* ``forecast``: ``p(k | H_i) = int p(k | tau, H_i) f(tau | H_i) dtau``, the next time unknown
  (``mtpp.models.marginal``); the same distribution as ``given_time`` for base LNM / RMTPP.
"""

_MARK_SCALARS = ("nll_mark", "brier", "rr", *(f"top{k}" for k in TOPK))
_MARK_HISTOGRAMS = ("cal_count", "cal_conf", "cal_acc")
_FINE_HISTOGRAMS = ("fine_count", "fine_conf", "fine_acc")
_SCALARS = (
    "num_sequences",
    "num_events",
    "num_ties",
    "nll_time",
    "nll_time_binned",
    "nll_survival",
    "abs_err_median",
    "sq_err_median",
    "abs_err_mean",
    "sq_err_mean",
    "num_events_mean",
    *(f"{name}/{kind}" for kind in MARK_KINDS for name in _MARK_SCALARS),
)


class MetricAccumulator:
    """Accumulates the metrics of a data set batch by batch from ``MarkedTPP.score(batch)``.

    >>> acc = MetricAccumulator()
    >>> for batch in loader:                      # doctest: +SKIP
    ...     acc.update(model.score(batch), batch)
    >>> metrics = acc.compute()                   # dict[str, float]  -> metrics.json
    >>> arrays = acc.arrays()                     # dict[str, list]   -> arrays.json (plots)

    State is a fixed set of sums (float64, int64) and histograms living on the device of the first batch; see
    the module docstring for every convention. :meth:`all_reduce` sums the state over data-parallel ranks.
    """

    _FLAGS = ("_mean_missing", "_forecast_missing", "_ties_missing", "_binned_missing")
    """Per-batch "this part was not scored" flags: a metric is reported only when every batch had its part."""

    def __init__(self, pit_bins: int = PIT_BINS, calibration_bins: int = CALIBRATION_BINS) -> None:
        self.pit_bins = pit_bins
        self.calibration_bins = calibration_bins
        self._state: dict[str, Tensor] | None = None
        self.num_marks: int | None = None  # K, the last dimension of the mark log-probabilities seen
        for flag in self._FLAGS:
            setattr(self, flag, False)

    # -- state -------------------------------------------------------------------------------------------------
    def reset(self, device: torch.device | str | None = None) -> None:
        """Forget everything; with ``device``, allocate the (zero) state there at once."""
        self._state = None
        self.num_marks = None
        for flag in self._FLAGS:
            setattr(self, flag, False)
        if device is not None:
            self._init_state(torch.device(device))

    def _init_state(self, device: torch.device) -> dict[str, Tensor]:
        dt = _float_dtype(device)
        state = {name: torch.zeros((), dtype=dt, device=device) for name in _SCALARS}
        state["pit_counts"] = torch.zeros(self.pit_bins, dtype=dt, device=device)
        state["pit_cdf_binned"] = torch.zeros(self.pit_bins, dtype=dt, device=device)
        for kind in MARK_KINDS:
            for name in _MARK_HISTOGRAMS:
                state[f"{name}/{kind}"] = torch.zeros(self.calibration_bins, dtype=dt, device=device)
            for name in _FINE_HISTOGRAMS:
                state[f"{name}/{kind}"] = torch.zeros(len(FINE_RELIABILITY_EDGES) - 1, dtype=dt, device=device)
        self._state = state
        return state

    @property
    def device(self) -> torch.device | None:
        return None if self._state is None else self._state["num_events"].device

    # -- update ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, scores: "Scores", batch: "Batch") -> None:
        """Add one batch. ``scores`` and ``batch`` on the same device; no host synchronisation happens here."""
        nll = scores.nll
        device = nll.time_nll.device
        state = self._state if self._state is not None else self._init_state(device)
        dt = state["num_events"].dtype
        if device != state["num_events"].device:
            raise ValueError(f"scores on {device} but the accumulator lives on {state['num_events'].device}")

        scored = nll.scored
        w = scored.to(dt)  # [B, L]
        zero = torch.zeros((), dtype=dt, device=device)

        def masked(x: Tensor) -> Tensor:  # padding may hold NaN / inf: select, never multiply
            return torch.where(scored, x.to(dt), zero)

        state["num_sequences"] += scored.shape[0]
        state["num_events"] += w.sum()
        if scores.tied is None:
            self._ties_missing = True  # a decoder without the tie policy: no count
        else:
            state["num_ties"] += (scores.tied & scored).to(dt).sum()
        state["nll_time"] += nll.time_nll.to(dt).sum()
        if scores.time_nll_binned is None or scores.pit_bin_edges is None:
            self._binned_missing = True  # scored without the data's time quantum (no lattice, or not asked)
        else:
            state["nll_time_binned"] += scores.time_nll_binned.to(dt).sum()
            lo, hi = (e.to(dt).unsqueeze(-1) for e in scores.pit_bin_edges)  # [B, L, 1]
            levels = torch.arange(1, self.pit_bins + 1, device=device, dtype=dt) / self.pit_bins
            width = hi - lo
            # share of the bin's PIT mass at or below each level (a step at F(tau) where the bin is a point)
            below = torch.where(width > 0, ((levels - lo) / torch.where(width > 0, width, 1.0)).clamp(0.0, 1.0),
                                (lo <= levels).to(dt))  # fmt: skip
            state["pit_cdf_binned"] += torch.where(scored.unsqueeze(-1), below, zero).sum((0, 1))
        state["nll_survival"] += nll.survival_term.to(dt).sum()
        state["nll_mark/given_time"] += nll.mark_nll.to(dt).sum()

        self.num_marks = max(self.num_marks or 0, int(scores.mark_log_probs.shape[-1]))  # a shape: no host sync
        labels = batch.marks.to(device).long().clamp(0, scores.mark_log_probs.shape[-1] - 1)
        forecast = scores.forecast_mark_log_probs
        if forecast is None:
            self._forecast_missing = True
        if forecast is not None:  # L_M's terms come from the NLL; the forecast's NLL from its log-probs
            true = forecast.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            state["nll_mark/forecast"] -= masked(true.to(dt)).sum()
        # base LNM / RMTPP: the forecast IS the given-time distribution (one tensor), its [B, L, K] statistics are
        # computed once for both (with 20,000 marks they were most of an evaluation's time)
        same = forecast is scores.mark_log_probs
        self._update_marks(state, ("given_time", "forecast") if same else ("given_time",),
                           scores.mark_log_probs.to(dt), labels, masked, w)
        if forecast is not None and not same:
            self._update_marks(state, ("forecast",), forecast.to(dt), labels, masked, w)

        # Times: PIT histogram and gap errors.
        pit = scores.pit.to(dt)
        pit_idx = _bin_index(pit, self.pit_bins).reshape(-1)
        state["pit_counts"].index_add_(0, pit_idx, w.reshape(-1))
        tau = batch.taus.to(device=device, dtype=dt)
        err = masked(scores.median_tau.to(dt) - tau)
        state["abs_err_median"] += err.abs().sum()
        state["sq_err_median"] += (err * err).sum()
        if scores.mean_tau is None:
            self._mean_missing = True
        else:
            err = masked(scores.mean_tau.to(dt) - tau)
            state["abs_err_mean"] += err.abs().sum()
            state["sq_err_mean"] += (err * err).sum()
            state["num_events_mean"] += w.sum()

    def _update_marks(self, state: dict, kinds: tuple[str, ...], log_probs: Tensor, labels: Tensor, masked,
                      w: Tensor) -> None:  # fmt: skip
        """Tie-aware ranks, Brier and confidence bins of one mark distribution ``log_probs: [B, L, K]``, added to the
        state of each of ``kinds`` (``given_time`` and / or ``forecast``: the same sums for each)."""
        dt = log_probs.dtype
        greater, ties = _rank_stats(log_probs, labels)
        top1 = _expected_topk(greater, ties, 1, dt)
        sums = {f"top{k}": masked(top1 if k == 1 else _expected_topk(greater, ties, k, dt)).sum() for k in TOPK}
        sums["rr"] = masked(_expected_reciprocal_rank(greater, ties, dt)).sum()
        probs = log_probs.exp()
        p_true = probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        sums["brier"] = masked((probs * probs).sum(-1) - 2.0 * p_true + 1.0).sum()
        conf = probs.max(-1).values
        cal_idx = _bin_index(conf.clamp(0.0, 1.0), self.calibration_bins).reshape(-1)
        inner = torch.as_tensor(FINE_RELIABILITY_EDGES[1:-1], dtype=conf.dtype, device=conf.device)
        fine_idx = torch.bucketize(conf.clamp(0.0, 1.0), inner, right=True).reshape(-1)  # [lo, hi); 1 in the last
        for kind in kinds:
            for name, value in sums.items():
                state[f"{name}/{kind}"] += value
            state[f"cal_count/{kind}"].index_add_(0, cal_idx, w.reshape(-1))
            state[f"cal_conf/{kind}"].index_add_(0, cal_idx, masked(conf).reshape(-1))
            state[f"cal_acc/{kind}"].index_add_(0, cal_idx, masked(top1).reshape(-1))
            state[f"fine_count/{kind}"].index_add_(0, fine_idx, w.reshape(-1))
            state[f"fine_conf/{kind}"].index_add_(0, fine_idx, masked(conf).reshape(-1))
            state[f"fine_acc/{kind}"].index_add_(0, fine_idx, masked(top1).reshape(-1))

    def merge(self, other: "MetricAccumulator") -> "MetricAccumulator":
        """Add ``other``'s state into this one (same bins); returns ``self``."""
        if (other.pit_bins, other.calibration_bins) != (self.pit_bins, self.calibration_bins):
            raise ValueError("cannot merge accumulators with different bins")
        if other._state is None:
            return self
        if self._state is None:
            self._init_state(other._state["num_events"].device)
        assert self._state is not None
        for name, value in other._state.items():
            self._state[name] += value.to(self._state[name].device)
        for flag in self._FLAGS:
            setattr(self, flag, getattr(self, flag) or getattr(other, flag))
        self.num_marks = max(self.num_marks or 0, other.num_marks or 0) or None
        return self

    def all_reduce(self, device: torch.device | str | None = None) -> None:
        """Sum the state over the ranks of the default ``torch.distributed`` group (no-op when not initialised).

        Every rank must call it; a rank that saw no batch allocates zeros on ``device`` first.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        if self._state is None:
            if device is None:
                raise ValueError("all_reduce on an empty accumulator needs a device")
            self._init_state(torch.device(device))
        assert self._state is not None
        for name in sorted(self._state):
            dist.all_reduce(self._state[name])
        flags = torch.tensor([float(getattr(self, f)) for f in self._FLAGS], device=self._state["num_events"].device)
        dist.all_reduce(flags)
        for flag, value in zip(self._FLAGS, flags.tolist()):
            setattr(self, flag, value > 0)
        marks = torch.tensor(float(self.num_marks or 0), device=flags.device)
        dist.all_reduce(marks, op=dist.ReduceOp.MAX)  # a rank that saw no batch learns K from the others
        self.num_marks = int(marks.item()) or None

    # -- results -----------------------------------------------------------------------------------------------
    def _cpu_state(self) -> dict[str, np.ndarray]:
        if self._state is None:
            raise ValueError("MetricAccumulator: no batch was added")
        names = sorted(self._state)
        flat = torch.cat([self._state[n].reshape(-1).to(torch.float64) for n in names]).cpu().numpy()  # one copy
        out, i = {}, 0
        for n in names:
            size = self._state[n].numel()
            out[n] = flat[i : i + size] if self._state[n].dim() else flat[i]
            i += size
        return out

    def compute(self) -> dict[str, float | int]:
        """The metrics as plain Python numbers (NaN where undefined, e.g. no scored event); ``top{k}_accuracy_*``
        only for ``k < num_marks`` (:func:`topk_reported`)."""
        s = self._cpu_state()
        n_seq = int(s["num_sequences"])
        n_ev = int(s["num_events"])

        def div(a: float, b: float) -> float:
            return float(a / b) if b > 0 else math.nan

        nll_mark = s["nll_mark/given_time"]
        out: dict[str, float | int] = {
            "nll_per_seq": div(s["nll_time"] + nll_mark, n_seq),
            "nll_time_per_seq": div(s["nll_time"], n_seq),
            "nll_mark_per_seq": div(nll_mark, n_seq),
            "nll_survival_per_seq": div(s["nll_survival"], n_seq),
            "nll_per_event": div(s["nll_time"] + nll_mark, n_ev),
            "nll_time_per_event": div(s["nll_time"], n_ev),
            "nll_mark_per_event": div(nll_mark, n_ev),
        }
        if not self._binned_missing:  # the data's times lie on a lattice (mtpp.data.lattice)
            out["nll_time_binned_per_seq"] = div(s["nll_time_binned"], n_seq)
            out["nll_time_binned_per_event"] = div(s["nll_time_binned"], n_ev)
        for kind in self._mark_kinds():
            if kind == "forecast":
                out["nll_mark_forecast_per_seq"] = div(s["nll_mark/forecast"], n_seq)
                out["nll_mark_forecast_per_event"] = div(s["nll_mark/forecast"], n_ev)
            for k in TOPK:
                if topk_reported(k, self.num_marks or 0):
                    out[("accuracy" if k == 1 else f"top{k}_accuracy") + f"_{kind}"] = div(s[f"top{k}/{kind}"], n_ev)
            out[f"mrr_{kind}"] = div(s[f"rr/{kind}"], n_ev)
            out[f"brier_{kind}"] = div(s[f"brier/{kind}"], n_ev)
            diagram = _reliability_from_sums(s[f"cal_count/{kind}"], s[f"cal_conf/{kind}"], s[f"cal_acc/{kind}"])
            out[f"ece_{kind}"], out[f"mce_{kind}"] = _ece_mce(diagram)
        grid = np.arange(1, self.pit_bins + 1) / self.pit_bins
        out["pce"] = float(np.mean(np.abs(np.cumsum(s["pit_counts"]) / n_ev - grid))) if n_ev > 0 else math.nan
        if not self._binned_missing:
            out["pce_binned"] = float(np.mean(np.abs(s["pit_cdf_binned"] / n_ev - grid))) if n_ev > 0 else math.nan
        out["mae_tau"] = div(s["abs_err_median"], n_ev)
        out["rmse_tau"] = math.sqrt(div(s["sq_err_median"], n_ev)) if n_ev > 0 else math.nan
        if not self._mean_missing:
            n_mean = s["num_events_mean"]
            out["mae_tau_mean"] = div(s["abs_err_mean"], n_mean)
            out["rmse_tau_mean"] = math.sqrt(div(s["sq_err_mean"], n_mean)) if n_mean > 0 else math.nan
        out["num_sequences"] = n_seq
        out["num_events"] = n_ev
        if self.num_marks is not None:
            out["num_marks"] = self.num_marks
        if not self._ties_missing:  # scored gaps below the tie resolution: L_T holds log F(delta) there
            out["num_ties"] = int(s["num_ties"])
        return out

    def _mark_kinds(self) -> tuple[str, ...]:
        return ("given_time",) if self._forecast_missing else MARK_KINDS

    def arrays(self) -> dict[str, list[Any]]:
        """Plot arrays as JSON-ready lists (``None`` for empty bins).

        Per mark kind (``_given_time`` / ``_forecast`` suffix): ``reliability_edges_*`` (bins + 1),
        ``reliability_count_*``, ``reliability_confidence_*``, ``reliability_accuracy_*`` (per confidence bin, those
        of ECE), and the same four as ``reliability_fine_*`` on ``FINE_RELIABILITY_EDGES`` (for the figure);
        ``pit_edges`` (51), ``pit_counts`` (50, bins
        ``((j-1)/50, j/50]``), ``pit_cdf`` (50, the empirical CDF at ``j/50``); where the times were scored on a
        lattice, ``pit_cdf_binned`` (50, the mean CDF of the bins' non-randomised PIT at ``j/50``, whose PCE is
        ``pce_binned``; Czado, Gneiting & Held 2009).
        """
        s = self._cpu_state()
        counts = s["pit_counts"]
        n = counts.sum()
        cdf = np.cumsum(counts) / n if n > 0 else np.full_like(counts, np.nan)

        def lst(a: np.ndarray) -> list[Any]:
            return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64)]

        out: dict[str, list[Any]] = {}
        for kind in self._mark_kinds():
            diagram = _reliability_from_sums(s[f"cal_count/{kind}"], s[f"cal_conf/{kind}"], s[f"cal_acc/{kind}"])
            out.update({
                f"reliability_edges_{kind}": lst(diagram["edges"]),
                f"reliability_count_{kind}": [int(c) for c in diagram["count"]],
                f"reliability_confidence_{kind}": lst(diagram["confidence"]),
                f"reliability_accuracy_{kind}": lst(diagram["accuracy"]),
            })  # fmt: skip
            fine = _reliability_from_sums(s[f"fine_count/{kind}"], s[f"fine_conf/{kind}"], s[f"fine_acc/{kind}"])
            out.update({
                f"reliability_fine_edges_{kind}": lst(FINE_RELIABILITY_EDGES),
                f"reliability_fine_count_{kind}": [int(c) for c in fine["count"]],
                f"reliability_fine_confidence_{kind}": lst(fine["confidence"]),
                f"reliability_fine_accuracy_{kind}": lst(fine["accuracy"]),
            })  # fmt: skip
        return {
            **out,
            "pit_edges": lst(np.arange(self.pit_bins + 1) / self.pit_bins),
            "pit_counts": [int(round(c)) for c in counts],
            "pit_cdf": lst(cdf),
            **({} if self._binned_missing else
               {"pit_cdf_binned": lst(s["pit_cdf_binned"] / n if n > 0 else np.full_like(counts, np.nan))}),
        }
