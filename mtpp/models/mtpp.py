"""MarkedTPP: history encoder(s) + decoders composed by ``cfg.parametrisation``; likelihood, scores, prediction.

Parametrisations (Bosser & Ben Taieb, TMLR 2024), for any encoder x decoder pair:

- ``base``: one encoder. If the decoder has a joint form (``cfg.decoder in JOINT_DECODERS``: thp, sahp, fnn), one
  joint decoder gives the ground process *and* the marks ``p(k | tau, H) = lambda_k(tau) / lambda(tau)``;
  otherwise (lnm, rmtpp) a time decoder and the ``p(k | h)`` mark decoder (``"categorical"``) share the encoder.
- ``plus``: one encoder, disjoint decoders: time decoder (ground process) + ``p(k | tau, h)`` (``"categorical_tau"``).
- ``plusplus``: a time encoder and a mark encoder (same type, both read times and marks, each of
  ``cfg.plusplus_hidden_size`` units when set), then the ``plus`` decoders. Nothing is shared.

History after the last event. Encoders return ``histories(batch): [B, L + 1, D]`` where position ``i`` is the
history before event ``i`` and position ``lengths[b]`` the history after the last real event (``H_{n+1}``). The
per-event terms use positions ``0..L-1``; the survival term and ``sample_next`` gather position ``lengths[b]`` and
call the time decoder on that single ``[B, 1, D]`` state (a second, tiny decoder call: no extra compensator over
the whole sequence).

Time scale (``mtpp.models.scaling``). The model works in units of ``time_scale`` data units: every batch is divided
by it before the encoders (``in_model_units``), each scored ``-log f`` term gets ``+ log(time_scale)`` (the
change of variables ``f(tau) = f'(tau / s) / s``; a tie's ``-log F(delta)``, a probability, gets none), and
predicted gaps are multiplied back, so every number that leaves the model is in the data's units. The scale is
part of the ``state_dict`` (extra state), hence of every checkpoint.

Monte Carlo compensators in evaluation (``model.eval_integration: mc``). The nodes are counter-based
(``mtpp.models.integrate.counter_uniforms``): a hash of the model's ``mc_seed``, the history (``mc_streams``: the
events before each position of each sequence), the query gap and the node index. So ``nll``, ``score`` and
``predict`` in eval mode give each sequence the same numbers whatever batch it is in (batch size, the other
sequences, their order, the padding, the device) and on every call; ``evaluation_seed`` sets the seed for a block
(the evaluation functions pass ``train.seed``). In training mode the nodes are fresh ``torch.rand`` draws.

Mark forecasts. ``score`` also returns ``forecast_mark_log_probs``, ``log p(k | H)`` with the next time unknown
(``mtpp.models.marginal``); ``mark_log_probs`` is ``log p(k | tau_i, H)`` given the observed gap, the quantity of
``L_M``. For base LNM / RMTPP the two are the same tensor.

Numerics. The encoders run under whatever autocast the caller set; their output is cast to the dtype of the
model's parameters (float32, or float64 for a ``model.double()`` with a float64 batch) and every decoder, term and
sum is computed with autocast disabled. Padded positions and absent windows are evaluated at a safe gap of 1 and
masked with ``torch.where``, so they contribute exactly 0 and never a NaN gradient. No ``.item()``, no boolean
indexing, no host sync anywhere in ``nll``.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator
from dataclasses import dataclass, replace

import math

import torch
from torch import Tensor, nn

from mtpp.data.batch import Batch
from mtpp.errors import ConfigError
from mtpp.models import integrate
from mtpp.models.base import NLLOutput, Scores, TimeDistribution
from mtpp.models.config import FIRST_EVENT, PARAMETRISATIONS, ModelConfig
from mtpp.models.marginal import marginal_mark_log_probs
from mtpp.models.ties import tie_mask
from mtpp.models.time_decoders import interval_log_prob
from mtpp.models.registry import ENCODERS, JOINT_DECODERS, MARK_DECODERS, TIME_DECODERS


@dataclass
class _Forward:
    """Internals of one pass: the per-event time distribution, the mark log-probs and the NLL."""

    dist: TimeDistribution  # batch_shape [B, L], in model units
    mark_log_probs: Tensor  # [B, L, K] at the observed (safe) gaps
    taus: Tensor  # [B, L] observed gaps in model units, 1 at padding (compute dtype)
    nll: NLLOutput
    h_time: Tensor  # [B, L + 1, D_time] time histories
    h_mark: Tensor  # [B, L + 1, D_mark] mark histories


def _autocast_off(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know
        return nullcontext()


def pack_positions(at: Tensor, h: Tensor) -> Tensor:
    """``h: [B, N, *rest]`` at the positions ``at: [B, N]`` (bool), as ``[R, 1, *rest]`` (``R`` positions in row-major
    order): the histories a forecast is made from without the padding of a batch of unequal sequences (on MOOC's
    first 32 sequences, 1,206 of the 6,208 positions of one batch are real). Boolean indexing: one host sync, for
    evaluation only (never in ``nll``). ``unpack_positions`` puts results back."""
    return h[at].unsqueeze(1)


def unpack_positions(at: Tensor, x: Tensor, fill: float) -> Tensor:
    """``x: [R, 1, *rest]`` (values at the positions of ``at: [B, N]``, ``pack_positions``) as ``[B, N, *rest]``,
    ``fill`` at the other positions."""
    out = x.new_full((*at.shape, *x.shape[2:]), fill)
    out[at] = x.squeeze(1)
    return out


@contextmanager
def evaluation_seed(model: nn.Module, seed: int) -> Iterator[None]:
    """Inside the block, ``model.mc_seed = seed`` (the seed of the counter-based Monte Carlo nodes of evaluation,
    ``MarkedTPP.mc_streams``); restored on exit. A model without ``mc_seed`` is left alone. ``seed``: an int in
    ``0 .. 2^32 - 1`` (``train.seed``)."""
    if not hasattr(model, "mc_seed"):
        yield
        return
    before = model.mc_seed
    model.mc_seed = int(seed)
    try:
        yield
    finally:
        model.mc_seed = before


def _mean_of(dist: TimeDistribution) -> Tensor | None:
    """``dist.mean`` (property or method) where the distribution has a closed-form mean, else ``None``."""
    mean = getattr(type(dist), "mean", None)
    if mean is None:
        return None
    try:
        m = dist.mean
        return m() if callable(m) else m
    except NotImplementedError:
        return None


class MarkedTPP(nn.Module):
    """A neural marked TPP: ``nll(batch) -> NLLOutput``, ``score(batch) -> Scores``, ``predict``, ``sample_next``.

    Submodules (``None`` where the parametrisation has no such part): ``encoder`` (base, plus) or
    ``time_encoder`` + ``mark_encoder`` (plusplus); ``joint`` (base with a joint decoder) or ``time_decoder`` +
    ``mark_decoder``.
    """

    def __init__(self, cfg: ModelConfig, num_marks: int) -> None:
        super().__init__()
        if cfg.parametrisation not in PARAMETRISATIONS:
            raise ConfigError(
                f"unknown model.parametrisation {cfg.parametrisation!r}; valid: {', '.join(PARAMETRISATIONS)}"
            )
        if cfg.first_event not in FIRST_EVENT:
            raise ConfigError(f"unknown model.first_event {cfg.first_event!r}; valid: {', '.join(FIRST_EVENT)}")
        if cfg.plusplus_hidden_size is not None and cfg.plusplus_hidden_size < 1:
            raise ConfigError(f"model.plusplus_hidden_size must be >= 1, got {cfg.plusplus_hidden_size}")
        if num_marks < 1:
            raise ConfigError(f"num_marks must be >= 1, got {num_marks}")
        self.cfg = cfg
        self.num_marks = num_marks
        self.parametrisation = cfg.parametrisation
        self._time_scale = 1.0
        self.mc_seed = 0  # the seed of evaluation's counter-based Monte Carlo nodes (``evaluation_seed``)

        self.encoder: nn.Module | None = None
        self.time_encoder: nn.Module | None = None
        self.mark_encoder: nn.Module | None = None
        if cfg.parametrisation == "plusplus":
            enc_cfg = cfg if cfg.plusplus_hidden_size is None else replace(cfg, hidden_size=cfg.plusplus_hidden_size)
            self.time_encoder = ENCODERS.build(cfg.encoder, num_marks, enc_cfg)
            self.mark_encoder = ENCODERS.build(cfg.encoder, num_marks, enc_cfg)
        else:
            self.encoder = ENCODERS.build(cfg.encoder, num_marks, cfg)

        self.joint: nn.Module | None = None
        self.time_decoder: nn.Module | None = None
        self.mark_decoder: nn.Module | None = None
        d_time = self._time_encoder.output_size
        d_mark = self._mark_encoder.output_size
        if cfg.parametrisation == "base" and cfg.decoder in JOINT_DECODERS:
            self.joint = JOINT_DECODERS.build(cfg.decoder, d_time, num_marks, cfg)
        else:
            self.time_decoder = TIME_DECODERS.build(cfg.decoder, d_time, cfg)
            mark_kind = "categorical" if cfg.parametrisation == "base" else "categorical_tau"
            self.mark_decoder = MARK_DECODERS.build(mark_kind, d_mark, num_marks, cfg)

    # ------------------------------------------------------------------ time scale

    @property
    def time_scale(self) -> float:
        """Data units per model unit of time (``mtpp.models.scaling``); 1.0 until set."""
        return self._time_scale

    @time_scale.setter
    def time_scale(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"time_scale must be a finite number > 0, got {value!r}")
        self._time_scale = value

    def get_extra_state(self) -> dict:
        return {"time_scale": self._time_scale}

    def set_extra_state(self, state: dict) -> None:
        self.time_scale = state.get("time_scale", 1.0)

    def in_model_units(self, batch: Batch) -> Batch:
        """``batch`` (data units) with times, gaps and window in model units (``/ time_scale``); the batch itself
        when the scale is 1. Everything the encoders and decoders see is in model units."""
        s = self._time_scale
        if s == 1.0:
            return batch
        return replace(
            batch,
            times=batch.times / s,
            taus=batch.taus / s,
            window_end=batch.window_end / s,
            survival_gap=batch.survival_gap / s,
        )

    @property
    def marks_depend_on_time(self) -> bool:
        """Whether the mark distribution depends on the gap (everything but base LNM / RMTPP)."""
        return self.joint is not None or self.parametrisation != "base"

    # ------------------------------------------------------------------ structure

    @property
    def _time_encoder(self) -> nn.Module:
        return self.time_encoder if self.encoder is None else self.encoder

    @property
    def _mark_encoder(self) -> nn.Module:
        return self.mark_encoder if self.encoder is None else self.encoder

    @property
    def _time_head(self) -> nn.Module:
        return self.joint if self.joint is not None else self.time_decoder

    def shared_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters reached by both ``L_T`` and ``L_M``, by group.

        base + joint decoder: encoder and joint decoder; base lnm / rmtpp and plus: encoder (decoder group empty);
        plusplus: both groups empty.
        """
        enc = list(self.encoder.parameters()) if self.encoder is not None else []
        dec = list(self.joint.parameters()) if self.joint is not None else []
        return {"encoder": enc, "decoder": dec}

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters reached by one loss only: ``{"time": [...], "mark": [...]}`` (empty for base + joint)."""
        time: list[nn.Parameter] = []
        mark: list[nn.Parameter] = []
        for module, group in (
            (self.time_encoder, time),
            (self.time_decoder, time),
            (self.mark_encoder, mark),
            (self.mark_decoder, mark),
        ):
            if module is not None:
                group.extend(module.parameters())
        return {"time": time, "mark": mark}

    def _compute_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # ------------------------------------------------------------------ histories and heads

    def _histories(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``([B, L + 1, D_time], [B, L + 1, D_mark])`` in the compute dtype (the same tensor unless plusplus)."""
        dtype = self._compute_dtype()
        h_time = self._time_encoder.histories(batch)
        h_mark = h_time if self.mark_encoder is None else self.mark_encoder.histories(batch)
        return h_time.to(dtype), h_mark.to(dtype)

    # ------------------------------------------------------------------ the forecasting interface (mtpp.forecast)

    def histories(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``(h_time, h_mark)``, each ``[B, L + 1, D]``: the histories after ``0..L`` events of ``batch`` (data
        units; converted here). Position ``i`` conditions event ``i``; position ``lengths[b]`` the event after the
        observed sequence (``last_history``). ``h_mark`` is ``h_time`` unless the encoders are disjoint ("++")."""
        return self._histories(self.in_model_units(batch))

    def next_time_distribution(self, h_time: Tensor, stream: Tensor | None = None) -> TimeDistribution:
        """``f(tau | H)`` of the next gap for histories ``h_time: [..., D]``, **in model units** (a gap ``tau`` in
        data units is ``tau / time_scale`` there, and a density picks up ``1 / time_scale``). Built outside
        autocast, so its likelihood terms are float32 or float64. ``stream: [...]``: the histories' keys
        (``mc_streams``, gathered like ``h_time``) for evaluation's Monte Carlo nodes; ``None``: nodes keyed by
        the query gap alone (see ``QuadratureDecoder.node_stream``)."""
        with _autocast_off(h_time.device):
            return self._head(h_time, stream)

    def mc_streams(self, batch: Batch) -> Tensor | None:
        """``[B, L + 1]`` int64 keys of the histories of ``batch`` (position ``i``: events ``0..i-1``, as
        ``histories``) under ``mc_seed`` (``integrate.history_streams``, from the batch's gaps and marks as
        given), when the time decoder draws counter-based Monte Carlo nodes now (eval mode, ``eval_integration:
        mc``); ``None`` otherwise (nothing to key)."""
        if not getattr(self._time_head, "counter_nodes", False):
            return None
        return integrate.history_streams(batch.taus, batch.marks, batch.mask, self.mc_seed)

    def _head(self, h: Tensor, stream: Tensor | None = None) -> TimeDistribution:
        """The time head on ``h: [*batch, D]``, given the histories' keys ``stream: [*batch]`` where there are any
        (only decoders with Monte Carlo nodes take them)."""
        if stream is None:
            return self._time_head(h)
        return self._time_head(h, stream=stream)

    def _mark_log_probs(self, dist: TimeDistribution, h_mark: Tensor, tau: Tensor) -> Tensor:
        """``[B, N, K]`` ``log p(k | tau, H)`` for histories ``h_mark: [B, N, D]`` and gaps ``tau: [B, N]``."""
        if self.joint is not None:
            return dist.mark_log_probs(tau)
        return self.mark_decoder(h_mark, tau)

    @staticmethod
    def last_history(h: Tensor, lengths: Tensor) -> Tensor:
        """``[B, 1, D]``: the history after the last real event (position ``lengths[b]`` of ``h: [B, L + 1, D]``)."""
        idx = lengths.clamp(max=h.shape[1] - 1).to(torch.long).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
        return h.gather(1, idx)

    @staticmethod
    def last_stream(streams: Tensor, lengths: Tensor) -> Tensor:
        """``[B, 1]``: the key of the history after the last real event (``last_history`` of ``mc_streams``)."""
        idx = lengths.clamp(max=streams.shape[1] - 1).to(torch.long).view(-1, 1)
        return streams.gather(1, idx.to(streams.device))

    def scored_mask(self, batch: Batch) -> Tensor:
        """``[B, L]`` bool: the scored events ``I`` of the likelihood contract (real events, minus the first with
        ``first_event: skip``)."""
        scored = batch.mask
        if self.cfg.first_event == "skip":
            first = torch.arange(batch.mask.shape[1], device=batch.mask.device) == 0
            scored = scored & ~first
        return scored

    def _forward(self, batch: Batch, histories: tuple[Tensor, Tensor] | None = None) -> _Forward:
        streams = self.mc_streams(batch)  # [B, L + 1] or None (not evaluating with Monte Carlo nodes)
        batch = self.in_model_units(batch)
        h_time, h_mark = self._histories(batch) if histories is None else histories
        dtype = h_time.dtype
        L = batch.marks.shape[1]
        with _autocast_off(h_time.device):
            taus = torch.where(batch.mask, batch.taus.to(dtype), torch.ones((), dtype=dtype, device=h_time.device))
            head = self._time_head
            dist = self._head(h_time[:, :L], None if streams is None else streams[:, :L])
            mark_lp = self._mark_log_probs(dist, h_mark[:, :L], taus)  # [B, L, K]

            scored = self.scored_mask(batch)
            zero = torch.zeros((), dtype=dtype, device=h_time.device)
            # + log s: the density per data unit, f(tau) = f'(tau / s) / s (see the module docstring); a tie's term
            # is the probability F(delta) (the tie policy, mtpp.models.time_decoders): unitless, no change of variables
            unit: float | Tensor = math.log(self._time_scale)
            resolution = getattr(head, "tie_resolution", None)  # None: a decoder without the tie policy
            if resolution is not None and unit != 0.0:
                unit = torch.where(tie_mask(taus, scored, resolution), zero, unit)
            time_terms = torch.where(scored, unit - dist.log_prob(taus), zero)
            observed = mark_lp.gather(-1, batch.marks.unsqueeze(-1)).squeeze(-1)
            mark_terms = torch.where(scored, -observed, zero)

            # survival term -log S(T - t_n | H_{n+1}); exactly 0 (value and gradient) where there is no window
            gap = batch.survival_gap.to(dtype)
            has_window = gap > 0
            safe_gap = torch.where(has_window, gap, torch.ones_like(gap))
            last_stream = None if streams is None else self.last_stream(streams, batch.lengths)
            last = self._head(self.last_history(h_time, batch.lengths), last_stream)  # batch_shape [B, 1]
            log_s = last.log_survival(safe_gap.unsqueeze(-1)).squeeze(-1)
            survival = torch.where(has_window, -log_s, zero)

            nll = NLLOutput(
                time_nll=time_terms.sum(-1) + survival,
                mark_nll=mark_terms.sum(-1),
                time_terms=time_terms,
                mark_terms=mark_terms,
                scored=scored,
                survival_term=survival,
                # what backward_step needs for one batched backward through the shared encoder (DESIGN §4)
                boundary=(
                    {"history": h_time}
                    if self.encoder is not None and h_time.requires_grad and not torch.compiler.is_compiling()
                    else None
                ),
            )
        return _Forward(dist=dist, mark_log_probs=mark_lp, taus=taus, nll=nll, h_time=h_time, h_mark=h_mark)

    # ------------------------------------------------------------------ public API

    def nll(self, batch: Batch, histories: tuple[Tensor, Tensor] | None = None) -> NLLOutput:
        """Per-event and per-sequence ``L_T`` (with the survival term) and ``L_M``; see ``NLLOutput``.

        ``histories``: ``(h_time, h_mark)``, each ``[B, L + 1, D]`` in the compute dtype, already computed by the
        encoder(s) on ``batch`` in model units (``mtpp.training.stacked`` runs the encoder as a separate stage, so
        that its output is the boundary of one batched backward); ``None`` (default) computes them.
        """
        return self._forward(batch, histories).nll

    def forward(self, batch: Batch, histories: tuple[Tensor, Tensor] | None = None) -> NLLOutput:
        """Same as ``nll`` (so wrappers such as DistributedDataParallel see a ``forward``)."""
        return self.nll(batch, histories)

    @torch.no_grad()
    def score(self, batch: Batch, forecast: bool = True, time_quantum: float | None = None) -> Scores:
        """NLL, PIT ``F(tau_i | H_i)``, mark log-probs given the observed gaps and as forecasts, predicted gaps.

        ``forecast=False`` skips the mark forecast (``forecast_mark_log_probs`` is then ``None``).
        ``time_quantum``: the lattice quantum ``q`` of the data's times (data units; ``mtpp.data.lattice``), to
        also score the binned time NLL ``time_nll_binned`` (``None``: not computed). Gaps are in the data's units.
        Every ``[B, L]`` output is 0 at padded positions (the mark forecast uniform there: it is computed at the
        events only, ``forecasts_at``).
        """
        fwd = self._forward(batch)
        mask = batch.mask
        s = self._time_scale
        zero = torch.zeros((), dtype=fwd.taus.dtype, device=fwd.taus.device)
        with _autocast_off(fwd.taus.device):
            pit = torch.where(mask, fwd.dist.cdf(fwd.taus), zero)
            # the median and the mark forecast at the events only (not the padding): forecasts_at
            L = batch.marks.shape[1]
            half = torch.tensor([0.5], dtype=fwd.taus.dtype, device=fwd.taus.device)
            quadrature = forecast and self.marks_depend_on_time  # else the mark head itself, below
            q, _, forecast_lp = self.forecasts_at(fwd.h_time[:, :L], fwd.h_mark[:, :L], mask, half, quadrature)
            median = torch.where(mask, q.squeeze(-1) * s, zero)
            mean = _mean_of(fwd.dist)
            if mean is not None:
                mean = torch.where(mask, mean * s, zero)
            resolution = getattr(self._time_head, "tie_resolution", None)  # None: a decoder without the tie policy
            tied = None if resolution is None else tie_mask(fwd.taus, fwd.nll.scored, resolution)
            binned = edges = None
            if time_quantum is not None:
                binned, edges = self._lattice_scores(fwd, time_quantum, pit)
            if forecast and not quadrature:
                forecast_lp = fwd.mark_log_probs  # base LNM / RMTPP: p(k | H) is the head, exactly
        return Scores(
            nll=fwd.nll,
            pit=pit,
            mark_log_probs=fwd.mark_log_probs,
            median_tau=median,
            mean_tau=mean,
            forecast_mark_log_probs=forecast_lp,
            tied=tied,
            time_nll_binned=binned,
            pit_bin_edges=edges,
        )

    @torch.no_grad()
    def nll_binned(self, batch: Batch, time_quantum: float) -> tuple[NLLOutput, Tensor]:
        """``(nll(batch), binned time NLL per sequence [B])``: the validation pass of ``train.select_time_on:
        binned``, without the PIT, quantiles and mark forecast of ``score``. ``time_quantum`` as in ``score``
        (data units); the binned NLL as ``Scores.time_nll_binned`` (nats, unitless)."""
        fwd = self._forward(batch)
        with _autocast_off(fwd.taus.device):
            binned, _ = self._lattice_scores(fwd, time_quantum, None)
        return fwd.nll, binned

    BINNED_EXACT_QUANTA = 1000
    """Gaps of at most this many quanta get the exact bin probability ``S(lo) - S(hi)``; longer ones ``f(tau) q``
    (the midpoint rule, relative error ``O(1 / k^2)`` for a density smooth on the scale of the gap), because in
    float32 the bin edges of a gap of ``k`` quanta are only resolved to ``k * 6e-8`` quanta."""

    def _lattice_scores(self, fwd: _Forward, quantum: float,
                        pit: Tensor | None) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:  # fmt: skip
        """``(binned NLL [B], (F(lo), F(hi)) [B, L] each)`` for the lattice bins ``[lo, hi)`` of the observed gaps
        (the edges ``None`` when ``pit`` is).

        Binned NLL: ``-log P(k q - q/2 <= tau < k q + q/2 | H)`` (``k = round(tau / q)``, the lower edge clamped
        at 0) summed over the scored events, plus the survival term (``mtpp.data.lattice``; nats, unitless).
        ``F`` at the edges: the non-randomised PIT of Czado, Gneiting & Held (2009, Biometrics 65(4), eq. 2);
        ``pit`` (``F(tau)``, both edges) for gaps beyond ``BINNED_EXACT_QUANTA`` quanta."""
        if not (isinstance(quantum, (int, float)) and math.isfinite(quantum) and quantum > 0):
            raise ValueError(f"time_quantum must be a finite positive number of data units, got {quantum!r}")
        q = quantum / self._time_scale  # model units
        k = torch.round(fwd.taus / q)
        exact = k <= self.BINNED_EXACT_QUANTA
        k = torch.where(exact, k, torch.zeros_like(k))
        lo, hi = ((k - 0.5) * q).clamp_min(0.0), (k + 0.5) * q
        # long gaps: log f(tau) + log q in data units, i.e. minus the L_T term already computed (which holds + log s)
        log_s_lo, log_s_hi = fwd.dist.log_survival(lo), fwd.dist.log_survival(hi)  # once: NLL and PIT edges
        log_p = torch.where(exact, interval_log_prob(log_s_lo, log_s_hi),
                            math.log(quantum) - fwd.nll.time_terms)  # fmt: skip
        zero = torch.zeros((), dtype=log_p.dtype, device=log_p.device)
        binned = torch.where(fwd.nll.scored, -log_p, zero).sum(-1) + fwd.nll.survival_term
        if pit is None:
            return binned, None
        edges = (torch.where(exact, -torch.expm1(log_s_lo), pit), torch.where(exact, -torch.expm1(log_s_hi), pit))
        return binned, edges

    FORECAST_CHUNK_ELEMENTS = 1 << 24
    """Bound on the elements of one intensity call of the mark forecast (rows are processed in chunks)."""

    def mark_forecast_log_probs(self, h_time: Tensor, h_mark: Tensor, given_time: Tensor | None = None,
                                elapsed: Tensor | None = None) -> Tensor:  # fmt: skip
        """``log p(k | H): [B, N, K]`` for histories ``[B, N, D]`` (``mtpp.models.marginal``).

        Base LNM / RMTPP: the ``p(k | h)`` head (``given_time`` itself when given: the same values). Otherwise the
        quadrature over the next gap, in chunks of the ``B`` rows (sequences; the packed positions of
        ``forecasts_at``, ``[R, 1, D]``) so one intensity call stays below ``FORECAST_CHUNK_ELEMENTS`` elements, and
        of positions within a row longer than one chunk (one sequence of 1,000,000 events asked for 64 GB at once);
        each position's forecast depends on its own history only, so the chunks give the same values (evaluation
        only; the loops are over chunks, not events).
        ``elapsed: [B, N]`` (model units): the forecast given that no event came in that gap after the last one,
        ``p(k | H, tau > elapsed)`` (``marginal_mark_log_probs``).
        """
        if not self.marks_depend_on_time:
            return given_time if given_time is not None else self.mark_decoder(h_mark, None)
        from mtpp.models.marginal import GRID_NODES, GRID_POINTS

        b, n = h_time.shape[:2]
        width = max(self.num_marks, self.cfg.num_components, self.cfg.decoder_hidden_size, 1)
        span = max(1, self.FORECAST_CHUNK_ELEMENTS // (GRID_POINTS * GRID_NODES * width))  # positions per call
        rows = max(1, span // max(1, n))
        cols = n if n <= span else span

        def part(i: int, j: int) -> Tensor:
            return self._forecast_rows(h_time[i : i + rows, j : j + cols], h_mark[i : i + rows, j : j + cols],
                                       None if elapsed is None else elapsed[i : i + rows, j : j + cols])

        return torch.cat([torch.cat([part(i, j) for j in range(0, n, cols)], dim=1) if n > cols else part(i, 0)
                          for i in range(0, b, rows)])  # fmt: skip

    def forecasts_at(self, h_time: Tensor, h_mark: Tensor, at: Tensor, probs: Tensor,
                     forecast: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:  # fmt: skip
        """The next-event forecasts from the histories ``h_time, h_mark: [B, N, D]`` at the positions ``at: [B, N]``
        (bool) only: the gap quantiles ``[B, N, P]`` at ``probs: [P]`` (``icdf``; model units), the mean
        ``[B, N]`` (``None`` without a closed form) and, with ``forecast``, the mark forecast ``log p(k | H):
        [B, N, K]`` (``mark_forecast_log_probs``; ``None`` otherwise). Other positions (a batch's padding) are not
        computed: gaps 0 there, marks uniform.

        The positions are packed first (``pack_positions``), so the quantile searches and the mark quadrature, the
        cost of a forecast, run on the real positions only; each position's numbers are those of the padded
        batch's computation (every search and quadrature is per element; tested)."""
        b, n = at.shape
        k = self.num_marks
        ht = pack_positions(at, h_time)
        hm = ht if h_mark is h_time else pack_positions(at, h_mark)
        r, dtype = ht.shape[0], ht.dtype
        with _autocast_off(ht.device):
            dist = self._time_head(ht)  # batch_shape [R, 1]
            q = dist.icdf(probs.to(dtype).expand(r, 1, probs.shape[-1]))  # [R, 1, P]
            mean = _mean_of(dist)
            marks = self.mark_forecast_log_probs(ht, hm) if forecast and r > 0 else None
        uniform = -math.log(k)
        if not forecast:
            out_marks = None
        elif marks is None:  # no position to forecast at
            out_marks = ht.new_full((b, n, k), uniform)
        else:
            out_marks = unpack_positions(at, marks, uniform)
        return unpack_positions(at, q, 0.0), None if mean is None else unpack_positions(at, mean, 0.0), out_marks

    def survived_next(self, h_time: Tensor, h_mark: Tensor, elapsed: Tensor, probs: Tensor,
                      forecast: bool = True, stream: Tensor | None = None,
                      ) -> tuple[Tensor, Tensor | None, Tensor | None]:  # fmt: skip
        """The next event after a quiet stretch: histories ``h_time, h_mark: [n, 1, D]`` after the last event, of
        which ``elapsed: [n]`` (model units) passed without an event (the window ends after it).

        Returns the quantiles ``[n, P]`` of the gap given ``tau > elapsed`` at ``probs: [P]``
        (``mtpp.models.marginal.survived_icdf``; gaps since the last event, model units), its mean
        ``E[tau | tau > elapsed]: [n]`` (``None`` without a closed form) and, with ``forecast``, the mark forecast
        ``log p(k | H, tau > elapsed): [n, K]``. ``elapsed = 0`` gives the unconditional law's. ``stream: [n, 1]``:
        the histories' keys (``last_stream`` of ``mc_streams``) for evaluation's Monte Carlo nodes (``F(elapsed)``).
        """
        from mtpp.models.marginal import survived_icdf

        n = h_time.shape[0]
        e = elapsed.to(h_time.dtype).unsqueeze(1)  # [n, 1]
        with _autocast_off(h_time.device):
            dist = self._head(h_time, stream)  # batch_shape [n, 1]
            q = survived_icdf(dist, probs.to(h_time.dtype).expand(n, 1, probs.shape[-1]), e).squeeze(1)
            mean_above = getattr(dist, "mean_above", None)
            mean = None if mean_above is None else mean_above(e).squeeze(1)
            marks = self.mark_forecast_log_probs(h_time, h_mark, elapsed=e).squeeze(1) if forecast else None
        return q, mean, marks

    def _forecast_rows(self, h_time: Tensor, h_mark: Tensor, elapsed: Tensor | None = None) -> Tensor:
        dist = self._time_head(h_time)
        probs = logits = None  # the same function in linear space / as logits, where the decoder has one
        if self.joint is not None:
            fn = dist.mark_log_probs  # tau: [B, N, P] -> [B, N, P, K]
            probs = getattr(dist, "mark_probs", None)
        elif hasattr(self.mark_decoder, "on_grid"):

            def fn(tau: Tensor) -> Tensor:
                return self.mark_decoder.on_grid(h_mark, tau)

            def logits(tau: Tensor) -> Tensor:
                return self.mark_decoder.logits_on_grid(h_mark, tau)

        else:
            h = h_mark.unsqueeze(-2)

            def fn(tau: Tensor) -> Tensor:
                return self.mark_decoder(h.expand(*tau.shape, h.shape[-1]), tau)

        return marginal_mark_log_probs(dist, h_time[..., 0], fn, elapsed=elapsed, mark_probs_at=probs,
                                       mark_logits_at=logits)

    @torch.no_grad()
    def predict(self, batch: Batch, tau: str | Tensor = "forecast", top_k: int = 5) -> dict[str, Tensor | None]:
        """Next-event predictions after every prefix, positions ``0..L`` (``[B, L + 1]``), gaps in data units.

        Position ``i`` predicts event ``i`` from events ``0..i-1``; position ``lengths[b]`` predicts the event
        after the observed sequence, given that none came before its window end where the window ends after the
        last event (``batch.survival_gap > 0``: quantiles, mean and mark forecast of ``survived_next``; the gap is
        still counted from the last event); positions past it are padding (``valid`` is False there).

        tau: which mark distribution: ``"forecast"`` (default) ``p(k | H)``, the next time unknown
            (``mtpp.models.marginal``); ``"median"``: ``p(k | tau, H)`` at the predicted median gap;
            ``"observed"``: at the observed gap ``tau_i`` where there is one, else the median; or a ``[B, L + 1]``
            tensor of gaps (data units).
        top_k: number of ranked marks returned (capped at ``K``).

        Returns ``median_tau``, ``mean_tau`` (``None`` without a closed form), ``mark_tau`` (the gap used for the
        marks; ``None`` for the forecast), ``mark_log_probs: [B, L + 1, K]``, ``mark``: argmax ``[B, L + 1]``,
        ``top_k_marks: [B, L + 1, k]``, ``valid: [B, L + 1]``. At padding (``valid`` False) nothing is forecast:
        gaps 0, the mark forecast uniform.
        """
        streams = self.mc_streams(batch)
        batch = self.in_model_units(batch)
        s = self._time_scale
        h_time, h_mark = self._histories(batch)
        b, n = h_time.shape[:2]
        valid = torch.arange(n, device=batch.lengths.device) <= batch.lengths.unsqueeze(-1)
        wants_forecast = isinstance(tau, str) and tau == "forecast"
        with _autocast_off(h_time.device):
            quiet = self.quiet_positions(batch)
            # computed at the real positions only (forecasts_at), the quiet ones by survived_next below
            at = valid.to(h_time.device) if quiet is None else valid.to(h_time.device) & ~quiet
            half = torch.tensor([0.5], dtype=h_time.dtype, device=h_time.device)
            median, mean, forecast_lp = self.forecasts_at(h_time, h_mark, at, half, wants_forecast)
            median = median.squeeze(-1)
            after = None
            if quiet is not None:  # the last position of sequences whose window ends after their last event
                last = None if streams is None else self.last_stream(streams, batch.lengths)
                after = self.survived_next(self.last_history(h_time, batch.lengths),
                                           self.last_history(h_mark, batch.lengths), batch.survival_gap,
                                           half, forecast=wants_forecast, stream=last)
                median = torch.where(quiet, after[0], median)
                if mean is not None:
                    mean = torch.where(quiet, after[1].unsqueeze(-1) if after[1] is not None else torch.nan, mean)
            mark_tau: Tensor | None
            if isinstance(tau, Tensor):
                if tau.shape != (b, n):
                    raise ValueError(f"tau must have shape {(b, n)}, got {tuple(tau.shape)}")
                mark_tau = tau.to(h_time.dtype) / s
            elif tau == "median":
                mark_tau = median
            elif tau == "observed":
                observed = torch.nn.functional.pad(batch.taus.to(h_time.dtype), (0, 1))
                has = torch.nn.functional.pad(batch.mask, (0, 1))
                mark_tau = torch.where(has, observed, median)
            elif tau == "forecast":
                mark_tau = None
            else:
                raise ValueError(f"tau must be 'forecast', 'median', 'observed' or a tensor, got {tau!r}")
            if mark_tau is None:
                mark_lp = forecast_lp
                if after is not None:
                    mark_lp = torch.where(quiet.unsqueeze(-1), after[2].unsqueeze(1), mark_lp)
            else:
                mark_lp = self._mark_log_probs(self._time_head(h_time), h_mark, mark_tau)
        k = min(top_k, self.num_marks)
        return {
            "median_tau": median * s,
            "mean_tau": None if mean is None else mean * s,
            "mark_tau": None if mark_tau is None else mark_tau * s,
            "mark_log_probs": mark_lp,
            "mark": mark_lp.argmax(-1),
            "top_k_marks": mark_lp.topk(k, dim=-1).indices,
            "valid": valid,
        }

    @staticmethod
    def quiet_positions(batch: Batch) -> Tensor | None:
        """``[B, L + 1]`` bool: the position after the last event (``lengths``) of the sequences of ``batch`` whose
        window ends after it (``survival_gap = T - t_n > 0``), where a forecast is given that no event came before
        the window end (``survived_next``); ``None`` when there is none (no window, the benchmark convention)."""
        quiet = batch.survival_gap > 0
        if not bool(quiet.any()):
            return None
        positions = torch.arange(batch.marks.shape[1] + 1, device=quiet.device)
        return (positions == batch.lengths.to(quiet.device).unsqueeze(-1)) & quiet.unsqueeze(-1)

    @torch.no_grad()
    def sample_next(self, batch: Batch, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Sample the next event ``(tau: [B], mark: [B])`` after each sequence's last event (``tau`` in data units,
        counted from the last event).

        ``tau`` by inverse transform on ``U(F(e), 1)`` (``mtpp.models.marginal.survived_icdf``), ``e`` the quiet
        stretch ``batch.survival_gap = T - t_n`` of a window that ends after the last event (0 without one): the
        next gap given that no event came before the window end, as ``mtpp.forecast.generate`` continues a history;
        then ``mark ~ p(k | tau, H_{n+1})``. Both draws use ``generator`` when given (reproducible).
        """
        from mtpp.models.marginal import survived_icdf

        streams = self.mc_streams(batch)
        batch = self.in_model_units(batch)
        h_time, h_mark = self._histories(batch)
        h_t = self.last_history(h_time, batch.lengths)  # [B, 1, D]
        h_m = self.last_history(h_mark, batch.lengths)
        dtype, device = h_t.dtype, h_t.device
        with _autocast_off(device):
            dist = self._head(h_t, None if streams is None else self.last_stream(streams, batch.lengths))
            u = torch.rand(h_t.shape[0], 1, generator=generator, dtype=dtype, device=device)
            u = u.clamp_min(torch.finfo(dtype).eps)  # (0, 1): icdf(0) would be a zero gap
            tau = survived_icdf(dist, u, batch.survival_gap.to(dtype).unsqueeze(1))  # [B, 1]
            probs = self._mark_log_probs(dist, h_m, tau).exp().squeeze(1)  # [B, K]
            mark = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        return tau.squeeze(-1) * self._time_scale, mark
