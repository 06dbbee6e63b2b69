"""Processes that can be continued one event at a time: the trained model, and the reference baselines.

A *process* holds ``N`` rows (a row is one history being continued: a sequence x a sample, or a sequence cut at
a prediction point) and answers two calls, which is all the samplers of ``mtpp.forecast.generate`` need:

- ``next_event(rows: LongTensor[n]) -> NextEvent``: the law of the next event of those rows, given their history
  (including every event appended so far);
- ``append(rows, tau: [n], marks: [n])``: extend those rows by one event at gap ``tau`` after their last event.

``NextEvent`` (one per call, batch ``[n]``) is in the DATA's time units everywhere:

- ``icdf(u)``, ``cdf(tau)``, ``log_prob(tau)``, ``log_survival(tau)`` of the next gap; ``tau`` / ``u`` of shape
  ``[n]`` or ``[n, M]`` (``M`` query points per row), results of the same shape;
- ``mark_log_probs(tau) -> [n, K]`` (or ``[n, M, K]``): ``log p(k | tau, H)``;
- ``forecast_mark_log_probs() -> [n, K]``: ``log p(k | H)``, the next time unknown (``mtpp.models.marginal``);
- ``mean() -> [n]`` or ``None`` where the gap has no closed-form mean;
- ``component_rates(tau) -> [n, C]`` or ``[n, M, C]`` (linear space) when the process is a sum of ``C``
  intensities each **monotone in tau** (THP: ``softplus(a tau + b) + mu``, SAHP:
  ``softplus(mu + (eta - mu) e^{-gamma tau})``, exponential Hawkes after the last event, Poisson), else ``None``.
  The thinning sampler needs exactly this: ``sum_c max(lambda_c(a), lambda_c(b))`` bounds ``lambda`` on
  ``[a, b]``.

The processes:

- ``ModelProcess``: a ``MarkedTPP``. Rows live in a padded buffer ``[N, L_max + capacity]``; every
  ``next_event`` re-encodes the rows' (extended) histories (``O(L)`` per step, ``O(L^2)`` for the attention
  encoders) and decodes the history after the last event. Works for every encoder.
- ``RecurrentModelProcess``: the same for GRU / RNN encoders with the recurrent state carried incrementally
  (one recurrent step per appended event); ``make_model_process`` picks it for those encoders. Same samples as
  ``ModelProcess`` for the same seed (tested).
- ``CachedModelProcess``: the same for THP / SAHP encoders with a key/value cache per attention layer (one token
  through the layers per appended event, ``O(L)`` instead of re-encoding ``O(L^2)``; exact, the layers are
  causal); ``make_model_process`` picks it for those encoders. Same samples as ``ModelProcess`` (tested).
  A model unit is ``model.time_scale`` data units: the adapter divides every query gap by it and multiplies every
  returned gap by it (``log_prob`` gets ``- log s``).
- ``HawkesProcess``: the exact exponential-kernel Hawkes process of ``mtpp.data.synthetic`` (scalar ``beta``):
  the true model of the synthetic data. State: ``S_k`` = excitation at the last event;
  ``lambda_k(tau) = mu_k + S_k e^{-beta tau}``, ``Lambda(tau) = tau sum mu + sum S (1 - e^{-beta tau}) / beta``.
- ``PoissonProcess``: homogeneous marked Poisson, ``lambda_k`` constant (``fit_poisson``: the MLE
  ``n_k / sum of observed durations`` after each first event; its mark forecast is the training-set mark
  frequency).

Units of every tensor here: float64 for the baselines; the model's dtype for ``ModelProcess``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from mtpp.data.batch import Batch, collate
from mtpp.data.sequence import EventSequence
from mtpp.errors import DataError, MtppError

ICDF_BISECTION_STEPS = 80
"""Bisection steps of the baselines' quantile function (bracket ``[0, E / sum mu]`` halves to ~1e-24 of it)."""


# ---------------------------------------------------------------------------------------------------- model


class ModelNextEvent:
    """``NextEvent`` of a ``MarkedTPP`` for ``n`` rows: wraps the time distribution of batch shape ``[n, 1]``
    (model units) and the mark histories ``[n, 1, D]``; every gap in and out in data units. Queries may live on
    any device (moved to the model's); results come back on the CPU (the generation loop's bookkeeping is there:
    one transfer per call, a loop over steps is expected)."""

    def __init__(self, model, dist, h_time: Tensor, h_mark: Tensor) -> None:
        self.model = model
        self.dist = dist
        self.h_time = h_time  # [n, 1, D]
        self.h_mark = h_mark
        self.s = float(model.time_scale)
        self.dtype = h_time.dtype
        self.device = h_time.device
        self.num_marks = int(model.num_marks)

    def _in(self, tau: Tensor) -> Tensor:
        return (tau.to(self.device, self.dtype) / self.s).unsqueeze(1)

    def icdf(self, u: Tensor) -> Tensor:
        return (self.dist.icdf(u.to(self.device, self.dtype).unsqueeze(1)).squeeze(1) * self.s).cpu()

    def cdf(self, tau: Tensor) -> Tensor:
        return self.dist.cdf(self._in(tau)).squeeze(1).cpu()

    def log_survival(self, tau: Tensor) -> Tensor:
        return self.dist.log_survival(self._in(tau)).squeeze(1).cpu()

    def log_prob(self, tau: Tensor) -> Tensor:
        return (self.dist.log_prob(self._in(tau)).squeeze(1) - math.log(self.s)).cpu()

    def mark_log_probs(self, tau: Tensor) -> Tensor:
        t = self._in(tau)  # [n, 1] or [n, 1, M]
        if self.model.joint is not None:
            out = self.dist.mark_log_probs(t)
        elif t.dim() == 2:
            out = self.model.mark_decoder(self.h_mark, t)
        else:
            out = self.model.mark_decoder(self.h_mark.unsqueeze(-2).expand(*t.shape, self.h_mark.shape[-1]), t)
        return out.squeeze(1).cpu()

    def forecast_mark_log_probs(self) -> Tensor:
        return self.model.mark_forecast_log_probs(self.h_time, self.h_mark).squeeze(1).cpu()

    def mean(self) -> Tensor | None:
        from mtpp.models.mtpp import _mean_of

        m = _mean_of(self.dist)
        return None if m is None else (m.squeeze(1) * self.s).cpu()

    @property
    def has_rates(self) -> bool:
        from mtpp.models.time_decoders import IntensityDistribution

        return isinstance(self.dist, IntensityDistribution)

    def component_rates(self, tau: Tensor) -> Tensor | None:
        """``lambda_c`` per data unit (``lambda'_c(tau / s) / s``), or ``None`` without an intensity form."""
        if not self.has_rates:
            return None
        return (self.dist.component_log_intensity(self._in(tau)).exp().squeeze(1) / self.s).cpu()


def model_next_events(model, batch: Batch) -> tuple[object, Tensor, Tensor]:
    """``(dist, h_time, h_mark)`` for every prefix of ``batch``: ``dist`` of batch shape ``[B, L + 1]`` in model
    units, histories ``[B, L + 1, D]`` (the first step of ``MarkedTPP.predict``, shared with ``mtpp.forecast``)."""
    h_time, h_mark = model.histories(batch)
    return model.next_time_distribution(h_time), h_time, h_mark


class ModelProcess:
    """Continue ``histories`` (one row each) with a ``MarkedTPP``; ``capacity`` events may be appended per row.

    histories: the sequences to continue (each at least one event: the encoder conditions on them; an empty one
        raises ``DataError`` naming its index).
    Buffers: ``[N, max_len + capacity]`` times / gaps / marks on the model's device and dtype.
    """

    def __init__(self, model, histories: Sequence[EventSequence], capacity: int, *, source: str | None = None):
        for i, s in enumerate(histories):
            if len(s) == 0:
                raise DataError("no history to continue (0 events): the model needs at least one", source=source,
                                sequence=i)
        if capacity < 1:
            raise MtppError(f"capacity must be >= 1, got {capacity}")
        param = next(model.parameters())
        self.model = model
        self.device, self.dtype = param.device, param.dtype
        b = collate(list(histories), dtype=self.dtype)
        pad = (0, capacity)
        f = torch.nn.functional.pad
        self.times = f(b.times, pad).to(self.device)
        self.taus = f(b.taus, pad).to(self.device)
        self.marks = f(b.marks, pad).to(self.device)
        self.lengths = b.lengths.to(self.device)
        self.num_marks = int(model.num_marks)
        self.last_time = torch.tensor([float(s.times[-1]) for s in histories], dtype=torch.float64)

    def _sub_batch(self, rows: Tensor) -> Batch:
        lengths = self.lengths[rows]
        width = int(lengths.max()) if rows.numel() else 1
        marks = self.marks[rows, :width]
        mask = torch.arange(width, device=self.device) < lengths.unsqueeze(-1)
        zero = torch.zeros(rows.shape[0], dtype=self.dtype, device=self.device)
        return Batch(
            times=self.times[rows, :width], taus=self.taus[rows, :width], marks=marks, mask=mask, lengths=lengths,
            window_end=zero, survival_gap=zero,
        )

    def next_event(self, rows: Tensor) -> ModelNextEvent:
        rows = rows.to(self.device)
        batch = self._sub_batch(rows)
        model = self.model
        h_time, h_mark = model.histories(batch)
        h_t = model.last_history(h_time, batch.lengths)  # [n, 1, D]
        h_m = model.last_history(h_mark, batch.lengths)
        return ModelNextEvent(model, model.next_time_distribution(h_t), h_t, h_m)

    def append(self, rows: Tensor, tau: Tensor, marks: Tensor) -> None:
        rows = rows.to(self.device)
        pos = self.lengths[rows]
        if int(pos.max()) >= self.times.shape[1]:
            raise MtppError("ModelProcess: capacity exhausted (a bug in the caller: the cap is checked up front)")
        tau = tau.to(self.device, self.dtype)
        prev = self.times[rows, (pos - 1).clamp_min(0)]
        self.times[rows, pos] = prev + tau
        self.taus[rows, pos] = tau
        self.marks[rows, pos] = marks.to(self.device)
        self.lengths[rows] = pos + 1


def _recurrent_encoders(model) -> list | None:
    """The model's encoders when every one is a ``RecurrentEncoder`` (GRU / RNN), else ``None``."""
    from mtpp.models.encoders import RecurrentEncoder

    encs = [model.encoder] if model.encoder is not None else [model.time_encoder, model.mark_encoder]
    return encs if all(isinstance(e, RecurrentEncoder) for e in encs) else None


class _IncrementalProcess:
    """What the incremental processes share: the checks of their histories and encoders, the model's device and
    dtype, and the distinct histories (by object: the rows of ``generate``'s samples of one history share it, so it
    is encoded once and its state copied to every row that continues it)."""

    def _start(self, model, histories: Sequence[EventSequence], encs: list | None, needs: str,
               source: str | None) -> tuple[Tensor, list[EventSequence]]:  # fmt: skip
        """Set the shared attributes; return ``row_of: [N]`` (each row's distinct history) and the distinct
        histories. ``DataError`` for an empty history, ``MtppError`` (naming ``needs``) without ``encs``."""
        for i, s in enumerate(histories):
            if len(s) == 0:
                raise DataError("no history to continue (0 events): the model needs at least one", source=source,
                                sequence=i)
        if encs is None:
            raise MtppError(f"{type(self).__name__} needs {needs} encoders")
        param = next(model.parameters())
        self.model = model
        self.device, self.dtype = param.device, param.dtype
        self.encoders = encs
        self.num_marks = int(model.num_marks)
        self.last_time = torch.tensor([float(s.times[-1]) for s in histories], dtype=torch.float64)
        first: dict[int, int] = {}
        row_of = torch.tensor([first.setdefault(id(s), len(first)) for s in histories], device=self.device)
        return row_of, list({id(s): s for s in histories}.values())

    def _next(self, h: list[Tensor]) -> ModelNextEvent:
        """The next-event forecast from each encoder's history embedding ``[n, 1, D]`` (time encoder first)."""
        h_t, h_m = h[0], h[-1]
        return ModelNextEvent(self.model, self.model.next_time_distribution(h_t), h_t, h_m)


class RecurrentModelProcess(_IncrementalProcess):
    """``ModelProcess`` for GRU / RNN encoders with the state carried incrementally: one recurrent step per
    appended event (``O(1)`` per row and step instead of re-encoding ``O(L)``).

    Start: each encoder's per-layer state after the history, ``h_n: [layers, N, D]``, from one packed pass over
    the distinct histories (``pack_padded_sequence``: the state at each row's own length), each encoded once and its
    state copied to every row that continues it (``generate``'s samples of one history: 50 samples of a history of
    150,000 events embedded it 50 times, 2.7 GB for ``mtpp plot``). ``next_event`` decodes the
    top layer; ``append`` embeds the new event ``(mark, tau / time_scale)`` and runs one step of the encoder's
    ``nn.GRU`` / ``nn.RNN``. The same function as re-encoding (tested against ``ModelProcess``); with dropout off
    (eval mode) it is exact up to float rounding.
    """

    def __init__(self, model, histories: Sequence[EventSequence], capacity: int, *, source: str | None = None):
        row_of, distinct = self._start(model, histories, _recurrent_encoders(model), "GRU / RNN", source)
        encs = self.encoders
        b = model.in_model_units(collate(distinct, dtype=self.dtype).to(self.device))
        pack = torch.nn.utils.rnn.pack_padded_sequence
        self.states = []
        for enc in encs:
            x = enc.embed(b.marks, b.taus)  # [U, L, E]
            h0 = enc.h0.unsqueeze(1).expand(-1, x.shape[0], -1).contiguous().to(x.dtype)
            packed = pack(x, b.lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, h_n = enc.rnn(packed, h0)
            self.states.append(h_n.to(self.dtype)[:, row_of].contiguous())  # [layers, N, D]

    def next_event(self, rows: Tensor) -> ModelNextEvent:
        rows = rows.to(self.device)
        return self._next([st[-1, rows].unsqueeze(1) for st in self.states])  # [n, 1, D] each

    def append(self, rows: Tensor, tau: Tensor, marks: Tensor) -> None:
        rows = rows.to(self.device)
        tau = (tau.to(self.device, self.dtype) / float(self.model.time_scale)).unsqueeze(1)  # model units
        marks = marks.to(self.device).unsqueeze(1)
        for i, enc in enumerate(self.encoders):
            x = enc.embed(marks, tau)  # [n, 1, E]
            _, h_n = enc.rnn(x, self.states[i][:, rows].contiguous())
            self.states[i][:, rows] = h_n.to(self.dtype)


def _attention_encoders(model) -> list | None:
    """The model's encoders when every one is a causal attention encoder (THP / SAHP), else ``None``."""
    from mtpp.models.encoders import _AttentionEncoder

    encs = [model.encoder] if model.encoder is not None else [model.time_encoder, model.mark_encoder]
    return encs if all(isinstance(e, _AttentionEncoder) for e in encs) else None


class CachedModelProcess(_IncrementalProcess):
    """``ModelProcess`` for THP / SAHP encoders with a key/value cache per attention layer: appending an event
    computes only the new token's row of each layer (``O(L)`` per row and step instead of re-encoding
    ``O(L^2)``).

    Exact, not an approximation: the layers are causal (a token attends to itself and earlier tokens), layer
    normalisation is per token, THP's temporal encoding is of each event's own absolute time and SAHP's of its own
    position and gap, so an appended event never changes an earlier token's keys, values or output. Same samples
    as ``ModelProcess`` for the same seed, up to float rounding (tested). Needs eval mode (no dropout).

    Start: the distinct histories (by object, as ``RecurrentModelProcess``: the rows of ``generate``'s samples share
    one) are encoded once with their keys and values kept (``_AttentionEncoder.start_cache``), copied to each row
    with room for ``capacity`` events. ``next_event`` decodes each encoder's output at the last token; ``append``
    runs one token through the layers (``_AttentionEncoder.extend_cache``). Times and gaps go in as
    ``ModelProcess`` gives them to the encoder: in the model's dtype, the new time ``previous + tau``, then divided
    by ``time_scale``. Memory per row: ``2 x layers x (L + 1 + capacity) x hidden_size`` numbers per encoder.
    """

    def __init__(self, model, histories: Sequence[EventSequence], capacity: int, *, source: str | None = None):
        row_of, distinct = self._start(model, histories, _attention_encoders(model), "THP / SAHP (attention)", source)
        if capacity < 1:
            raise MtppError(f"capacity must be >= 1, got {capacity}")
        encs = self.encoders
        b = collate(distinct, dtype=self.dtype).to(self.device)
        # the previous time in data units and the model's dtype, as ModelProcess keeps it
        idx = torch.arange(len(distinct), device=self.device)
        self.prev_time = b.times[idx, b.lengths - 1][row_of].clone()  # [N]
        b = model.in_model_units(b)
        self.caches = [enc.start_cache(b, row_of, capacity) for enc in encs]
        self.capacity = self.caches[0].filled + capacity  # [N] slots per row

    def next_event(self, rows: Tensor) -> ModelNextEvent:
        rows = rows.to(self.device)
        return self._next([c.last[rows].to(self.dtype).unsqueeze(1) for c in self.caches])  # [n, 1, D] each

    def append(self, rows: Tensor, tau: Tensor, marks: Tensor) -> None:
        rows = rows.to(self.device)
        if bool((self.caches[0].filled[rows] >= self.capacity[rows]).any()):
            raise MtppError("CachedModelProcess: capacity exhausted (a bug in the caller: the cap is checked up front)")
        n = self.prev_time.shape[0]
        sel = None if rows.shape[0] == n and bool((rows == torch.arange(n, device=self.device)).all()) else rows
        tau = tau.to(self.device, self.dtype)
        t_new = self.prev_time[rows] + tau  # data units, model dtype (ModelProcess's buffer)
        s = float(self.model.time_scale)
        t_m, tau_m = (t_new, tau) if s == 1.0 else (t_new / s, tau / s)  # in_model_units, as ModelProcess
        marks = marks.to(self.device)
        for enc, cache in zip(self.encoders, self.caches):
            enc.extend_cache(cache, sel, marks, t_m, tau_m)
        self.prev_time[rows] = t_new


def make_model_process(model, histories: Sequence[EventSequence], capacity: int, *, incremental: bool | None = None,
                       source: str | None = None):
    """The incremental process where the encoders have one (``incremental`` None or True): ``RecurrentModelProcess``
    for GRU / RNN encoders, ``CachedModelProcess`` for THP / SAHP encoders; else ``ModelProcess`` (re-encoding;
    ``incremental=False`` forces it, e.g. to check the incremental ones; FNN encoders always re-encode).
    ``MtppError`` for ``incremental=True`` with an FNN encoder."""
    recurrent, attention = _recurrent_encoders(model) is not None, _attention_encoders(model) is not None
    if incremental is None:
        incremental = recurrent or attention
    if incremental and recurrent:
        return RecurrentModelProcess(model, histories, capacity, source=source)
    if incremental and attention:
        return CachedModelProcess(model, histories, capacity, source=source)
    if incremental:
        raise MtppError(f"incremental generation needs GRU / RNN or THP / SAHP encoders, not {model.cfg.encoder!r}; "
                        "leave incremental unset (re-encoding)")
    return ModelProcess(model, histories, capacity, source=source)


# ---------------------------------------------------------------------------------------------------- baselines


def _bisect_icdf(cum_hazard, u: Tensor, rate_floor: Tensor) -> Tensor:
    """``tau`` with ``Lambda(tau) = -log(1 - u)`` for a non-decreasing ``Lambda >= rate_floor * tau``: bisection on
    ``[0, E / rate_floor]`` (``ICDF_BISECTION_STEPS`` steps, vectorised, no data-dependent branching)."""
    target = -torch.log1p(-u.clamp(max=1.0 - 1e-16))
    floor = rate_floor.reshape(rate_floor.shape + (1,) * (u.dim() - rate_floor.dim()))
    lo = torch.zeros_like(target)
    hi = target / floor
    for _ in range(ICDF_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        below = cum_hazard(mid) < target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


class _RatesNextEvent:
    """Shared ``NextEvent`` of the baselines: ``lambda_k(tau) = mu_k + S_k e^{-beta tau}`` (``S = 0``: Poisson).

    ``mu: [K]``, ``S: [n, K]``, ``beta > 0``; float64. Marks are the components (``C = K``)."""

    def __init__(self, mu: Tensor, state: Tensor, beta: float) -> None:
        self.mu, self.S, self.beta = mu, state, float(beta)
        self.num_marks = int(mu.shape[0])

    def _s(self, tau: Tensor) -> Tensor:
        return self.S if tau.dim() == 1 else self.S.unsqueeze(1)

    def component_rates(self, tau: Tensor) -> Tensor:
        tau = tau.to(torch.float64)
        return self.mu + self._s(tau) * torch.exp(-self.beta * tau).unsqueeze(-1)

    has_rates = True

    def cumulative_hazard(self, tau: Tensor) -> Tensor:
        tau = tau.to(torch.float64)
        excited = self._s(tau).sum(-1) * -torch.expm1(-self.beta * tau) / self.beta
        return tau * self.mu.sum() + excited

    def log_survival(self, tau: Tensor) -> Tensor:
        return -self.cumulative_hazard(tau)

    def cdf(self, tau: Tensor) -> Tensor:
        return -torch.expm1(-self.cumulative_hazard(tau))

    def log_prob(self, tau: Tensor) -> Tensor:
        return torch.log(self.component_rates(tau).sum(-1)) - self.cumulative_hazard(tau)

    def icdf(self, u: Tensor) -> Tensor:
        return _bisect_icdf(self.cumulative_hazard, u.to(torch.float64), self.mu.sum().expand(self.S.shape[0]))

    def mark_log_probs(self, tau: Tensor) -> Tensor:
        return torch.log_softmax(torch.log(self.component_rates(tau)), dim=-1)

    def forecast_mark_log_probs(self) -> Tensor:
        from mtpp.models.marginal import marginal_mark_log_probs

        like = torch.zeros(self.S.shape[0], dtype=torch.float64)
        return marginal_mark_log_probs(self, like, self.mark_log_probs)

    def ground_intensity(self, tau: Tensor) -> Tensor:
        """Linear-space ``lambda(tau)`` (lets ``mtpp.models.marginal`` integrate it on its grid)."""
        return self.component_rates(tau).sum(-1)

    def mean(self) -> Tensor | None:
        if bool((self.S == 0).all()):
            return 1.0 / self.mu.sum().expand(self.S.shape[0])
        return None


class HawkesProcess:
    """The exponential-kernel Hawkes process ``params`` (``mtpp.data.synthetic.HawkesParams``, scalar ``beta``)
    continued from ``histories`` (empty histories allowed: the process starts at rest)."""

    def __init__(self, params, histories: Sequence[EventSequence]) -> None:
        if not params.scalar_beta:
            raise MtppError("HawkesProcess supports a scalar beta only")
        self.params = params
        self.mu = torch.as_tensor(params.mu, dtype=torch.float64)
        self.jump = torch.as_tensor(params.alpha * params.beta, dtype=torch.float64)  # [K, K]: column l = a mark l
        self.beta = float(params.beta)
        self.num_marks = params.num_marks
        state = np.zeros((len(histories), self.num_marks))
        for i, s in enumerate(histories):  # O(n K) per history, once (setup, not the generation loop)
            if len(s):
                w = np.exp(-self.beta * (s.times[-1] - s.times))  # [n]
                state[i] = (self.jump.numpy()[:, s.marks] * w).sum(-1)
        self.state = torch.from_numpy(state)
        self.last_time = torch.tensor([float(s.times[-1]) if len(s) else 0.0 for s in histories], dtype=torch.float64)

    def next_event(self, rows: Tensor) -> _RatesNextEvent:
        return _RatesNextEvent(self.mu, self.state[rows.cpu()], self.beta)

    def append(self, rows: Tensor, tau: Tensor, marks: Tensor) -> None:
        rows = rows.cpu()
        decayed = self.state[rows] * torch.exp(-self.beta * tau.to(torch.float64).cpu()).unsqueeze(-1)
        self.state[rows] = decayed + self.jump[:, marks.cpu()].T


class PoissonProcess:
    """Homogeneous marked Poisson process with rates ``rates: [K]`` (per data unit), continued from ``histories``
    (only their last times matter: the process has no memory)."""

    def __init__(self, rates, histories: Sequence[EventSequence]) -> None:
        self.mu = torch.as_tensor(np.asarray(rates, dtype=np.float64))
        if self.mu.dim() != 1 or not bool((self.mu >= 0).all()) or float(self.mu.sum()) <= 0:
            raise MtppError(f"Poisson rates must be a vector >= 0 with a positive sum, got {self.mu.tolist()}")
        self.num_marks = int(self.mu.shape[0])
        self.last_time = torch.tensor([float(s.times[-1]) if len(s) else 0.0 for s in histories], dtype=torch.float64)

    def next_event(self, rows: Tensor) -> _RatesNextEvent:
        return _RatesNextEvent(self.mu, torch.zeros(rows.shape[0], self.num_marks, dtype=torch.float64), 1.0)

    def append(self, rows: Tensor, tau: Tensor, marks: Tensor) -> None:
        pass


def fit_poisson(sequences: Sequence[EventSequence], num_marks: int) -> np.ndarray:
    """MLE rates ``[K]`` of a homogeneous marked Poisson process given each sequence's first event:
    ``n_k / sum_s (T_s - t_1)``, counting the events after the first (``n_k``) over the time after it (``T_s``:
    the window end, else the last time). Conditioning on the first event makes the fit independent of where a
    dataset's clock starts (Unix times, say). The implied mark forecast ``lambda_k / lambda`` is the training-set
    mark frequency (of the scored events, ``first_event: skip``)."""
    counts = np.zeros(num_marks)
    duration = 0.0
    for s in sequences:  # per sequence: numpy over its events
        if len(s):
            counts += np.bincount(s.marks[1:], minlength=num_marks)[:num_marks]
            end = float(s.window_end if s.window_end is not None else s.times[-1])
            duration += end - float(s.times[0])
    if duration <= 0 or counts.sum() == 0:
        raise MtppError("cannot fit a Poisson baseline: the training sequences have no events after their first "
                        "or zero duration")
    return counts / duration
