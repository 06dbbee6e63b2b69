"""Synthetic marked point processes with exact log-likelihoods: exponential-kernel Hawkes and homogeneous Poisson.

Everything is numpy float64. These are reference processes: the simulator generates data, and the exact
likelihood scores it, so a model's NLL can be compared with the NLL of the true generating process.

Hawkes kernel normalisation
---------------------------
With ``K`` marks, baseline ``mu: [K]``, branching matrix ``alpha: [K, K]`` and decay ``beta`` (a scalar or a
``[K, K]`` matrix), the intensity of mark ``k`` is::

    lambda_k(t) = mu_k + sum_{j: t_j < t} alpha[k, k_j] * beta[k, k_j] * exp(-beta[k, k_j] * (t - t_j))

so the kernel ``phi_kl(s) = alpha[k, l] beta[k, l] exp(-beta[k, l] s)`` integrates to ``alpha[k, l]``: ``alpha[k, l]``
is the expected number of mark-``k`` events directly triggered by one mark-``l`` event (the *branching ratio*),
independent of ``beta``. The process is stationary iff the spectral radius of ``alpha`` is < 1, and then its
stationary rate is ``Lambda = (I - alpha)^{-1} mu``. ``HawkesParams`` validates this and raises ``ValueError``
otherwise. (Some libraries write the kernel as ``alpha exp(-beta s)``; their ``alpha`` is our ``alpha * beta``.)

History convention: the log-intensity of event ``i`` uses the events *before it in the sequence* (``j < i``), the
``H_i`` of the likelihood contract; it equals the left limit ``lambda_{k_i}(t_i-)`` whenever times are distinct
(always, for simulated data). ``hawkes_intensity`` at arbitrary query times uses ``t_j < t`` (left-continuous).

Window convention: the log-likelihood is over ``[0, T]`` with ``T = seq.window_end``, or the last event time when the
sequence has no window (the benchmark convention: no survival term).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mtpp.data.sequence import EventSequence

__all__ = [
    "HawkesParams",
    "SYNTHETIC_PARAMS",
    "SYNTHETIC_SEED",
    "SYNTHETIC_WINDOW",
    "SYNTHETIC_NUM_SEQUENCES",
    "SYNTHETIC_DIRNAME",
    "simulate_hawkes",
    "simulate_hawkes_many",
    "hawkes_log_intensities",
    "hawkes_intensity",
    "hawkes_ground_intensity",
    "hawkes_compensator",
    "hawkes_compensator_increments",
    "hawkes_log_likelihood",
    "random_hawkes_params",
    "simulate_poisson",
    "simulate_poisson_many",
    "poisson_log_likelihood",
    "write_simulated_splits",
    "default_cache_dir",
    "ensure_synthetic_dataset",
    "load_synthetic_split",
]


# --------------------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True, eq=False)
class HawkesParams:
    """Parameters of a ``K``-mark exponential-kernel Hawkes process (see the module docstring for the kernel).

    mu: ``[K]`` baseline rates, ``>= 0``.
    alpha: ``[K, K]`` branching ratios, ``alpha[k, l]`` = mean number of mark-``k`` children of a mark-``l``
        event; ``>= 0`` with spectral radius ``< 1``.
    beta: decay rate ``> 0``, a scalar (one for all pairs) or a ``[K, K]`` matrix (``beta[k, l]`` for the
        effect of mark ``l`` on mark ``k``).
    require_stationary: refuse a spectral radius ``>= 1`` (the default). ``False`` keeps such parameters (a fitted
        process, ``mtpp.forecast.hawkes_fit``, reports them instead of failing); simulating from them may explode.
    """

    mu: np.ndarray
    alpha: np.ndarray
    beta: float | np.ndarray = 1.0
    require_stationary: bool = field(default=True, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        mu = np.array(self.mu, dtype=np.float64, ndmin=1)
        alpha = np.array(self.alpha, dtype=np.float64)
        beta = np.array(self.beta, dtype=np.float64)
        k = mu.shape[0]
        if mu.ndim != 1 or k == 0:
            raise ValueError(f"mu must be a non-empty vector [K], got shape {mu.shape}")
        if alpha.shape != (k, k):
            raise ValueError(f"alpha must be [K, K] = [{k}, {k}] to match mu, got shape {alpha.shape}")
        if beta.ndim != 0 and beta.shape != (k, k):
            raise ValueError(f"beta must be a scalar or [K, K] = [{k}, {k}], got shape {beta.shape}")
        for name, v in (("mu", mu), ("alpha", alpha), ("beta", beta)):
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{name} must be finite, got {v.tolist()}")
        if np.any(mu < 0):
            raise ValueError(f"mu must be >= 0, got {mu.tolist()}")
        if np.any(alpha < 0):
            raise ValueError("alpha must be >= 0 (inhibition is not supported by the thinning simulator)")
        if np.any(beta <= 0):
            raise ValueError(f"beta must be > 0, got {beta.tolist()}")
        rho = float(np.max(np.abs(np.linalg.eigvals(alpha))))
        if self.require_stationary and not rho < 1.0:
            raise ValueError(
                f"the Hawkes process is not stationary: spectral radius of alpha is {rho:.4g} >= 1 "
                "(alpha is the branching matrix: each event triggers alpha.sum(0) events on average)"
            )
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "beta", float(beta) if beta.ndim == 0 else beta)

    @property
    def num_marks(self) -> int:
        return int(self.mu.shape[0])

    @property
    def scalar_beta(self) -> bool:
        return np.ndim(self.beta) == 0

    @property
    def beta_matrix(self) -> np.ndarray:
        """``[K, K]`` decay rates (the scalar broadcast when ``beta`` is a scalar)."""
        return np.broadcast_to(np.asarray(self.beta, dtype=np.float64), self.alpha.shape).copy()

    @property
    def spectral_radius(self) -> float:
        return float(np.max(np.abs(np.linalg.eigvals(self.alpha))))

    def stationary_rate(self) -> np.ndarray:
        """``[K]`` stationary event rate per mark, ``(I - alpha)^{-1} mu``."""
        return np.linalg.solve(np.eye(self.num_marks) - self.alpha, self.mu)

    def expected_counts(self, window: float) -> np.ndarray:
        """``[K]`` expected number of events of each mark on ``[0, window]`` for the process started at rest (no
        event before 0), as ``simulate_hawkes_many`` simulates it. Below the stationary ``window * Lambda``: the
        intensity starts at ``mu`` and reaches its stationary mean only after the transient (time scale
        ``1 / (beta (1 - rho))``).

        The mean intensity ``m(t) = E lambda(t)`` solves the renewal equation ``m(t) = mu + int_0^t phi(t - s)
        m(s) ds`` (Hawkes 1971, "Spectra of some self-exciting and mutually exciting point processes",
        Biometrika 58(1)); with exponential kernels it is a linear ODE. Scalar ``beta``, with ``M = beta (I -
        alpha)`` (closed form)::

            E N(T) = T Lambda - alpha (I - alpha)^{-1} (I - expm(-M T)) Lambda / beta

        A ``[K, K]`` ``beta``: the ODE of the ``K^2`` kernel states ``x_kl`` (``x_kl' = beta_kl (m_l - x_kl)``,
        ``m_k = mu_k + sum_l alpha_kl x_kl``) and their integrals, by one matrix exponential of size
        ``2 K^2 + 1``. ``window`` finite and ``>= 0`` (``ValueError`` otherwise).
        """
        import scipy.linalg

        t = float(window)
        if not (np.isfinite(t) and t >= 0):
            raise ValueError(f"window must be finite and >= 0, got {window}")
        k, a, mu = self.num_marks, self.alpha, self.mu
        eye = np.eye(k)
        if self.scalar_beta:
            lam = self.stationary_rate()
            decay = scipy.linalg.expm(-float(self.beta) * (eye - a) * t)
            return t * lam - a @ np.linalg.solve(eye - a, (eye - decay) @ lam) / float(self.beta)
        b = self.beta_matrix.reshape(-1)  # state x_kl at index k * K + l
        src = np.tile(np.arange(k), k)  # l of each state
        # x_kl' = beta_kl (mu_l + sum_j alpha_lj x_lj - x_kl)
        g = np.zeros((k * k, k * k))
        for l in range(k):  # K blocks of the [K^2, K^2] system (parameters, not events)
            g[src == l, l * k : (l + 1) * k] = a[l]
        g = b[:, None] * (g - np.eye(k * k))
        n = k * k
        big = np.zeros((2 * n + 1, 2 * n + 1))
        big[:n, :n] = g
        big[:n, -1] = b * mu[src]
        big[n : 2 * n, :n] = np.eye(n)  # d/dt int_0^t x = x
        z = scipy.linalg.expm(big * t)[:, -1]  # from x(0) = 0, int = 0, constant 1
        integral = z[n : 2 * n].reshape(k, k)  # int_0^T x_kl
        return t * mu + (a * integral).sum(1)

    def stationary_count_covariance(self) -> np.ndarray:
        """``[K, K]`` asymptotic covariance of counts per unit time, ``lim Cov(N(T)) / T``.

        For a stationary Hawkes process this is ``(I - alpha)^{-1} diag(Lambda) (I - alpha)^{-T}``
        (Bartlett spectrum at frequency 0); it sets the sampling error of empirical rates.
        """
        inv = np.linalg.inv(np.eye(self.num_marks) - self.alpha)
        return inv @ np.diag(self.stationary_rate()) @ inv.T

    def to_dict(self) -> dict:
        beta = self.beta if self.scalar_beta else np.asarray(self.beta).tolist()
        return {"mu": self.mu.tolist(), "alpha": self.alpha.tolist(), "beta": beta}

    @classmethod
    def from_dict(cls, d: dict) -> "HawkesParams":
        return cls(mu=d["mu"], alpha=d["alpha"], beta=d["beta"])


def _decay_and_jump(params: HawkesParams) -> tuple[np.ndarray, np.ndarray, bool]:
    """The recursive state's decay rates ``[K, C]`` and jumps ``[K, K]``.

    The excitation state is ``S[k, c]``: with a scalar beta ``C = 1`` and ``S[k, 0] = sum_j alpha[k, k_j] beta
    exp(-beta (t - t_j))`` (O(K) per update); with a matrix beta ``C = K`` and column ``l`` holds the
    contribution of mark-``l`` events (O(K^2) per update). A mark-``l`` event adds ``jump[:, l]`` to column
    ``l`` (or 0); ``lambda_k = mu_k + S[k].sum()``.
    """
    scalar = params.scalar_beta
    decay = np.full((1, 1), params.beta) if scalar else np.asarray(params.beta)
    jump = params.alpha * params.beta_matrix
    return decay, jump, scalar


# --------------------------------------------------------------------------------------------------- simulation


def simulate_hawkes_many(
    params: HawkesParams,
    num_sequences: int,
    window_end: float,
    rng: np.random.Generator,
    max_events: int | None = None,
    on_events: Callable[[int], None] | None = None,
) -> list[EventSequence]:
    """Simulate ``num_sequences`` independent sequences on ``[0, window_end]`` by Ogata thinning.

    ``on_events(n)``: called after each thinning step that accepted ``n > 0`` events (a progress bar).

    The sequences are advanced together (one vectorised thinning step for all unfinished sequences), and
    the intensity is updated recursively (O(K) per step for a scalar beta, O(K^2) for a matrix beta).
    Each sequence records ``window_end``; a sequence stopped by ``max_events`` is observed up to its last
    event instead (``window_end = t_n``), which keeps its likelihood exact (the stop is a stopping time).
    A sequence may be empty when the window is short; ``make_sequence`` would reject such a sequence.
    """
    if num_sequences < 0:
        raise ValueError(f"num_sequences must be >= 0, got {num_sequences}")
    window_end = float(window_end)
    if not (np.isfinite(window_end) and window_end >= 0):
        raise ValueError(f"window_end must be finite and >= 0, got {window_end}")
    if max_events is not None and max_events < 1:
        raise ValueError(f"max_events must be >= 1, got {max_events}")
    k = params.num_marks
    decay, jump, scalar = _decay_and_jump(params)
    c = decay.shape[1]
    mu, mu_total = params.mu, float(params.mu.sum())
    jump_total = jump.sum(0)  # [K]: jump of the ground intensity after a mark-l event

    state = np.zeros((num_sequences, k, c))
    now = np.zeros(num_sequences)
    bound = np.full(num_sequences, mu_total)  # intensity right after the last step: it only decays until the next
    count = np.zeros(num_sequences, dtype=np.int64)
    active = np.arange(num_sequences) if mu_total > 0 else np.arange(0)
    # accepted events as flat (sequence id, time, mark) records in fixed blocks: 24 bytes an event. A list of each
    # step's small arrays cost ~250 bytes an event when few sequences run long (two sequences on a window of 1e7
    # grew past 4 GiB while mtpp simulate's --max-memory estimate, simulation_bytes, said 2.6)
    events = _EventBuffer()

    while active.size:
        lam_bar = bound[active]
        t_new = now[active] + rng.standard_exponential(active.size) / lam_bar
        inside = t_new <= window_end
        active, t_new, lam_bar = active[inside], t_new[inside], lam_bar[inside]
        if not active.size:
            break
        dt = t_new - now[active]
        st = state[active] * np.exp(-decay[None] * dt[:, None, None])  # [m, K, C]
        lam_k = mu + st.sum(-1)  # [m, K]
        cum = np.cumsum(lam_k, axis=-1)
        lam = cum[:, -1]
        u = rng.random(active.size) * lam_bar
        v = rng.random(active.size) * lam
        state[active], now[active], bound[active] = st, t_new, lam
        accept = u < lam
        if accept.any():
            acc = active[accept]
            marks = np.minimum((cum[accept] <= v[accept, None]).sum(-1), k - 1)
            cols = marks if not scalar else np.zeros_like(marks)
            state[acc, :, cols] += jump[:, marks].T
            bound[acc] += jump_total[marks]
            count[acc] += 1
            events.add(acc, t_new[accept], marks)
            if on_events is not None:
                on_events(int(acc.size))
            if max_events is not None:
                active = active[count[active] < max_events]

    return _gather(num_sequences, events, window_end, count, max_events)


class _EventBuffer:
    """Flat ``(sequence id, time, mark)`` records, appended a thinning step at a time into fixed blocks of
    ``block`` events (no copy as it grows; 24 bytes an event plus one block) and gathered column by column, each
    column's blocks released once gathered (peak about 48 bytes an event)."""

    def __init__(self, block: int = 1 << 16) -> None:
        self.block = block
        self.columns: tuple[list[np.ndarray], ...] = ([], [], [])  # ids, times, marks
        self.fill = block  # the last block is full: the next add starts one

    def add(self, ids: np.ndarray, times: np.ndarray, marks: np.ndarray) -> None:
        pos = 0
        while pos < ids.size:
            if self.fill == self.block:
                for col, dtype in zip(self.columns, (np.int64, np.float64, np.int64)):
                    col.append(np.empty(self.block, dtype=dtype))
                self.fill = 0
            take = min(self.block - self.fill, ids.size - pos)
            for col, values in zip(self.columns, (ids, times, marks)):
                col[-1][self.fill : self.fill + take] = values[pos : pos + take]
            self.fill += take
            pos += take

    def take(self, column: int) -> np.ndarray:
        """Column ``column`` (0 ids, 1 times, 2 marks) as one ``[n]`` array; its blocks are released."""
        blocks = self.columns[column]
        if not blocks:
            return np.zeros(0, dtype=np.float64 if column == 1 else np.int64)
        blocks[-1] = blocks[-1][: self.fill]
        out = np.concatenate(blocks)
        blocks.clear()
        return out


def _gather(
    num_sequences: int,
    events: _EventBuffer,
    window_end: float,
    count: np.ndarray,
    max_events: int | None,
) -> list[EventSequence]:
    """Split the flat ``(sequence id, time, mark)`` records of ``events`` (in time order per sequence) into
    sequences, one column at a time."""
    order = np.argsort(events.take(0), kind="stable")  # keeps each sequence's events in time order
    times = events.take(1)[order]
    marks = events.take(2)[order]
    del order
    bounds = np.concatenate([[0], np.cumsum(count)])
    out = []
    for s in range(num_sequences):
        t, m = times[bounds[s] : bounds[s + 1]], marks[bounds[s] : bounds[s + 1]]
        stopped = max_events is not None and count[s] >= max_events
        out.append(EventSequence(t, m, float(t[-1]) if stopped else window_end))
    return out


def simulate_hawkes(
    params: HawkesParams,
    window_end: float,
    rng: np.random.Generator,
    max_events: int | None = None,
) -> EventSequence:
    """One Hawkes sequence on ``[0, window_end]`` by Ogata thinning (see ``simulate_hawkes_many``)."""
    return simulate_hawkes_many(params, 1, window_end, rng, max_events)[0]


def simulation_bytes(num_marks: int, num_sequences: int, expected_events: float) -> int:
    """Peak memory (bytes, an estimate) of ``mtpp simulate``: ``simulate_hawkes_many``'s ``[N, K]`` float64
    intensity state and its per-step copies (about 4 of them), the ``[K, K]`` branching matrix and its inverse,
    and about 64 bytes per event (its time and mark arrays, gathered, then written as JSON lists)."""
    return int(8 * 4 * num_sequences * num_marks + 8 * 3 * num_marks**2 + 64 * expected_events)


def random_hawkes_params(
    num_marks: int,
    rng: np.random.Generator,
    *,
    branching: float = 0.5,
    base_rate: float = 1.0,
    beta: float = 1.0,
) -> HawkesParams:
    """Random stationary parameters: ``mu`` sums to ``base_rate``; ``alpha`` is a random non-negative matrix
    scaled to spectral radius ``branching`` (in ``[0, 1)``); scalar ``beta``."""
    if not 0.0 <= branching < 1.0:
        raise ValueError(f"branching must be in [0, 1) for a stationary process, got {branching}")
    if base_rate <= 0 or beta <= 0:
        raise ValueError(f"base_rate and beta must be > 0, got {base_rate} and {beta}")
    mu = rng.dirichlet(np.full(num_marks, 2.0)) * base_rate
    alpha = rng.random((num_marks, num_marks)) ** 2
    rho = float(np.max(np.abs(np.linalg.eigvals(alpha))))
    alpha = alpha * (branching / rho) if rho > 0 else alpha * 0.0
    return HawkesParams(mu=mu, alpha=alpha, beta=float(beta))


# --------------------------------------------------------------------------------------------------- likelihood


def _window(seq: EventSequence) -> float:
    if seq.window_end is not None:
        return float(seq.window_end)
    return float(seq.times[-1]) if len(seq) else 0.0


def _check_marks(seq: EventSequence, k: int) -> None:
    if len(seq) and (seq.marks.min() < 0 or seq.marks.max() >= k):
        raise ValueError(f"marks must be in [0, {k}) for these parameters, got max {int(seq.marks.max())}")


def _post_event_states(seq: EventSequence, params: HawkesParams) -> np.ndarray:
    """``[n, K, C]`` excitation state right after each event (its own jump included). O(n K C)."""
    _check_marks(seq, params.num_marks)
    decay, jump, scalar = _decay_and_jump(params)
    n = len(seq)
    factors = np.exp(-decay[None] * seq.taus[:, None, None])  # [n, K, C]
    jumps = np.zeros((n, params.num_marks, decay.shape[1]))
    cols = np.zeros(n, dtype=np.int64) if scalar else seq.marks
    jumps[np.arange(n), :, cols] = jump[:, seq.marks].T
    out = np.empty_like(jumps)
    s = np.zeros(jumps.shape[1:])
    for i in range(n):  # linear recursion s_i = s_{i-1} * exp(-beta tau_i) + jump_i
        s = s * factors[i] + jumps[i]
        out[i] = s
    return out


def _pre_event_states(seq: EventSequence, params: HawkesParams, post: np.ndarray) -> np.ndarray:
    """``[n, K, C]`` state just before each event (history ``j < i``), from the post-event states."""
    decay, _, _ = _decay_and_jump(params)
    prev = np.concatenate([np.zeros((1,) + post.shape[1:]), post[:-1]], axis=0)
    return prev * np.exp(-decay[None] * seq.taus[:, None, None])


def hawkes_log_intensities(seq: EventSequence, params: HawkesParams) -> np.ndarray:
    """``[n]`` ``log lambda_{k_i}(t_i)`` given the events before ``i``. O(n K^2) at most."""
    if len(seq) == 0:
        return np.zeros(0)
    pre = _pre_event_states(seq, params, _post_event_states(seq, params))
    n = len(seq)
    lam = params.mu[seq.marks] + pre[np.arange(n), seq.marks].sum(-1)
    with np.errstate(divide="ignore"):
        return np.log(lam)


def hawkes_intensity(seq: EventSequence, params: HawkesParams, t: np.ndarray | float) -> np.ndarray:
    """Marked intensities ``[m, K]`` at query times ``t: [m]`` given the events with ``t_j < t``
    (left-continuous: at an event time the event itself is not yet counted)."""
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    k = params.num_marks
    if len(seq) == 0:
        return np.broadcast_to(params.mu, (t.shape[0], k)).copy()
    decay, _, _ = _decay_and_jump(params)
    post = _post_event_states(seq, params)
    idx = np.searchsorted(seq.times, t, side="left")  # number of events strictly before each query
    last = np.maximum(idx - 1, 0)
    dt = t - seq.times[last]
    st = post[last] * np.exp(-decay[None] * np.maximum(dt, 0.0)[:, None, None])
    st[idx == 0] = 0.0
    return params.mu + st.sum(-1)


def hawkes_ground_intensity(seq: EventSequence, params: HawkesParams, t: np.ndarray | float) -> np.ndarray:
    """Ground intensity ``lambda(t) = sum_k lambda_k(t)``, ``[m]`` at query times ``t: [m]`` (see
    ``hawkes_intensity`` for the convention at event times)."""
    return hawkes_intensity(seq, params, t).sum(-1)


def hawkes_compensator(seq: EventSequence, params: HawkesParams, t: float | None = None) -> float:
    """Ground compensator ``int_0^t lambda(s) ds`` in closed form (``t`` defaults to the window end):

    ``t sum_k mu_k + sum_{t_j < t} sum_k alpha[k, k_j] (1 - exp(-beta[k, k_j] (t - t_j)))``. O(n K).
    """
    t = _window(seq) if t is None else float(t)
    _check_marks(seq, params.num_marks)
    sel = seq.times < t
    dt = t - seq.times[sel]  # [n']
    marks = seq.marks[sel]
    a = params.alpha[:, marks].T  # [n', K]
    b = params.beta_matrix[:, marks].T  # [n', K]
    return float(t * params.mu.sum() + np.sum(a * -np.expm1(-b * dt[:, None])))


def hawkes_compensator_increments(seq: EventSequence, params: HawkesParams) -> np.ndarray:
    """``[n]`` ``int_{t_{i-1}}^{t_i} lambda(s) ds`` (``t_0 = 0``). Under the true process these are i.i.d.
    Exp(1) (time-rescaling theorem), which makes them the reference for PIT / calibration tests."""
    if len(seq) == 0:
        return np.zeros(0)
    decay, _, _ = _decay_and_jump(params)
    post = _post_event_states(seq, params)
    prev = np.concatenate([np.zeros((1,) + post.shape[1:]), post[:-1]], axis=0)
    tau = seq.taus[:, None, None]
    excited = (prev * -np.expm1(-decay[None] * tau) / decay[None]).sum((1, 2))
    return params.mu.sum() * seq.taus + excited


def hawkes_log_likelihood(seq: EventSequence, params: HawkesParams) -> float:
    """Exact log-likelihood on ``[0, T]`` (``T`` = window end, or the last time when there is none):
    ``sum_i log lambda_{k_i}(t_i) - int_0^T lambda(s) ds``."""
    return float(hawkes_log_intensities(seq, params).sum() - hawkes_compensator(seq, params, _window(seq)))


# --------------------------------------------------------------------------------------------------- Poisson


def _rates(rates: Sequence[float] | np.ndarray) -> np.ndarray:
    r = np.array(rates, dtype=np.float64, ndmin=1)
    if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"rates must be a non-empty vector of finite values >= 0, got {r.tolist()}")
    return r


def simulate_poisson_many(
    rates: Sequence[float] | np.ndarray, num_sequences: int, window_end: float, rng: np.random.Generator
) -> list[EventSequence]:
    """``num_sequences`` homogeneous marked Poisson sequences on ``[0, window_end]`` (rates ``[K]``)."""
    r = _rates(rates)
    total = float(r.sum())
    counts = rng.poisson(total * window_end, size=num_sequences)
    out = []
    for n in counts:
        times = np.sort(rng.uniform(0.0, window_end, size=n))
        marks = rng.choice(r.size, size=n, p=r / total) if n else np.zeros(0, dtype=np.int64)
        out.append(EventSequence(times, marks, float(window_end)))
    return out


def simulate_poisson(
    rates: Sequence[float] | np.ndarray, window_end: float, rng: np.random.Generator
) -> EventSequence:
    """One homogeneous marked Poisson sequence on ``[0, window_end]`` with per-mark ``rates: [K]``."""
    return simulate_poisson_many(rates, 1, window_end, rng)[0]


def poisson_log_likelihood(seq: EventSequence, rates: Sequence[float] | np.ndarray) -> float:
    """``sum_i log rate_{k_i} - T sum_k rate_k`` with ``T`` the window end (or the last time)."""
    r = _rates(rates)
    with np.errstate(divide="ignore"):
        return float(np.log(r[seq.marks]).sum() - _window(seq) * r.sum())


# --------------------------------------------------------------------------------------------------- files


def write_simulated_splits(
    out: Path,
    sequences: Sequence[EventSequence],
    *,
    args: dict,
    num_marks: int,
    window: float,
    num_splits: int = 1,
    seed: int = 0,
) -> dict[str, int]:
    """Write simulated sequences as a canonical split folder (seeded 60/20/20 splits, ``mtpp.data.splits``).

    The common observation window end is stored as ``window`` in every ``split_k/args.json``, so readers attach it
    with ``ReadOptions(use_window=True)`` and ignore it by default (the benchmark convention). Returns the part sizes.
    """
    from mtpp.data.formats import write_split_folder
    from mtpp.data.splits import make_splits

    # the window is common to all sequences: stored once in args.json, not per sequence
    bare = [EventSequence(s.times, s.marks, None) for s in sequences]
    splits = make_splits(bare, num_splits=num_splits, seed=seed)
    split_args = [{"window": float(window), "seed": seed, "split": k} for k in range(num_splits)]
    write_split_folder(out, splits, num_marks=num_marks, args=args, split_args=split_args)
    return {part: len(seqs) for part, seqs in splits[0].items()}


# --------------------------------------------------------------------------------------------------- built-in dataset

#: The ``synthetic_hawkes`` dataset: 5 marks in a cycle 0 -> 1 -> 2 -> 3 -> 4 -> 0 (each mark strongly excites
#: the next one, weakly itself and slightly every other mark), so both the next time and the next mark are
#: predictable from the history. Branching matrix spectral radius 0.58 (stationary), beta = 1 (time unit = the
#: mean kernel delay), stationary ground rate 2.38 events per unit time.
SYNTHETIC_PARAMS = HawkesParams(
    mu=np.array([0.3, 0.2, 0.2, 0.15, 0.15]),
    alpha=0.02 + np.diag(np.full(5, 0.14)) + 0.34 * np.roll(np.eye(5), 1, axis=0),
    beta=1.0,
)
SYNTHETIC_SEED = 20240501
#: Every sequence is observed on ``[0, SYNTHETIC_WINDOW]``: 72.9 events expected (``expected_counts``: the process
#: starts at rest, so below the stationary 32 x 2.38 = 76.2).
SYNTHETIC_WINDOW = 32.0
SYNTHETIC_NUM_SEQUENCES = 600
SYNTHETIC_DIRNAME = "synthetic_hawkes-v2"


def default_cache_dir() -> Path:
    """``$MTPP_CACHE_DIR`` (a leading ``~`` is the home folder, also when no shell expanded it), else
    ``~/.cache/mtpp``."""
    env = os.environ.get("MTPP_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mtpp"


def writable_cache_dir() -> Path:
    """:func:`default_cache_dir`, created if missing, for a command about to write into it (the synthetic data,
    auto-prepared splits). ``DataError`` naming the folder, where its path came from and the fix when it cannot
    be created or written: ``/proc/nope: No such file or directory`` said neither that this was the cache folder
    nor what to do."""
    from mtpp.errors import DataError

    root = default_cache_dir()
    origin = "MTPP_CACHE_DIR" if os.environ.get("MTPP_CACHE_DIR") else "the default cache folder"
    try:
        root.mkdir(parents=True, exist_ok=True)
        problem = None if os.access(root, os.W_OK | os.X_OK) else "not writable"
    except OSError as e:
        problem = e.strerror or str(e)
    if problem:
        raise DataError(f"the cache folder ({origin}) cannot be created or written ({problem}); set MTPP_CACHE_DIR "
                        "to a writable folder", source=str(root))
    return root


def _synthetic_sequences() -> list[EventSequence]:
    rng = np.random.default_rng(SYNTHETIC_SEED)
    seqs = simulate_hawkes_many(SYNTHETIC_PARAMS, SYNTHETIC_NUM_SEQUENCES, SYNTHETIC_WINDOW, rng)
    # Redraw the (astronomically unlikely) empty sequences so every sequence is valid; deterministic.
    for i, s in enumerate(seqs):
        while len(s) == 0:
            s = simulate_hawkes(SYNTHETIC_PARAMS, SYNTHETIC_WINDOW, rng)
        seqs[i] = s
    return seqs


def _write_synthetic(folder: Path) -> None:
    seqs = _synthetic_sequences()
    args = {
        "dataset": "synthetic_hawkes",
        "version": 2,
        "process": "hawkes",
        "kernel": "lambda_k(t) = mu_k + sum_{t_j<t} alpha[k,k_j] * beta * exp(-beta * (t - t_j))",
        "params": SYNTHETIC_PARAMS.to_dict(),
        "stationary_rate": SYNTHETIC_PARAMS.stationary_rate().tolist(),
        "window": SYNTHETIC_WINDOW,
        "window_note": "every sequence is observed on [0, window]; with the benchmark convention (window at the "
        "last event) the survival term is dropped",
        "marks": SYNTHETIC_PARAMS.num_marks,
        "num_sequences": len(seqs),
        "num_events": int(sum(len(s) for s in seqs)),
        "simulation_seed": SYNTHETIC_SEED,
    }
    write_simulated_splits(folder, seqs, args=args, num_marks=SYNTHETIC_PARAMS.num_marks, window=SYNTHETIC_WINDOW)


def ensure_synthetic_dataset(cache_dir: Path | None = None) -> Path:
    """The built-in ``synthetic_hawkes`` dataset, generated on first use; returns its folder.

    Layout: ``<cache_dir>/synthetic_hawkes-v2/split_0/{train,val,test,args}.json`` (Bosser format, 360/120/120
    sequences from ``SYNTHETIC_PARAMS`` with seed ``SYNTHETIC_SEED``). Every sequence is observed on
    ``[0, SYNTHETIC_WINDOW]``: the common window end is ``split_0/args.json["window"]``; readers that follow the
    benchmark convention ignore it and end each window at the last event. Generation is deterministic
    (byte-identical files) and atomic (written to a temporary folder, then renamed), so concurrent first
    uses are safe. ``cache_dir`` defaults to ``default_cache_dir()``.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / SYNTHETIC_DIRNAME
    if cache_dir is None and not final.is_dir():
        writable_cache_dir()  # a folder that cannot be written is said as the cache folder, with the fix
    if final.is_dir():
        return final
    try:
        _write_synthetic(final)  # atomic: written to a temporary sibling, then renamed
    except (OSError, ValueError):
        if not final.is_dir():  # not a lost race with a concurrent first use: a real error
            raise
    return final


def load_synthetic_split(
    part: str = "train", cache_dir: Path | None = None, window: bool = True
) -> list[EventSequence]:
    """Sequences of one part (``train``, ``val``, ``test``) of ``synthetic_hawkes``, with the common window end
    attached when ``window`` (exact likelihood on ``[0, T]``), else ``None`` (benchmark convention)."""
    if part not in ("train", "val", "test"):
        raise ValueError(f"part must be 'train', 'val' or 'test', got {part!r}")
    from mtpp.data.formats import ReadOptions, read_split

    result = read_split(ensure_synthetic_dataset(cache_dir), 0, options=ReadOptions(use_window=window))
    return result.parts[f"split_0/{part}"]
