"""The contracts every model part follows. Read this before writing an encoder, a decoder or a consumer.

Shapes: ``B`` sequences, ``L`` padded events, ``D`` history size, ``K`` marks, ``N`` integration nodes,
``C`` mixture / intensity components.

Encoders
    ``encoder(batch) -> h: [B, L, D]`` where ``h[:, i]`` depends only on events ``0..i-1`` (strictly before
    event ``i``); ``h[:, 0]`` is a learned start state. An encoder also exposes ``output_size: int``.

Time decoders (the ground process)
    ``decoder(h: [B, L, D]) -> TimeDistribution`` with ``batch_shape == h.shape[:-1]``.

Mark decoders
    ``decoder(h: [B, L, D], tau: [B, L] | None) -> log_probs: [B, L, K]`` (log-softmax; ``tau`` is ignored by the
    ``p(k | h)`` decoder and used as ``log tau`` by the ``p(k | tau, h)`` decoder).

Joint decoders (base THP / SAHP / FNN)
    ``decoder(h) -> JointDistribution``: a ``TimeDistribution`` of the ground process that also gives
    ``mark_log_probs(tau) -> [B, L, K]`` = ``log lambda_k(tau) - log lambda(tau)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class TimeDistribution(Protocol):
    """Distribution of the inter-event time ``tau > 0`` given the history, batched over ``batch_shape``.

    Every method takes ``tau`` broadcastable against ``batch_shape`` **with optional trailing sample
    dimensions**: ``tau: [B, L]`` gives ``[B, L]``; ``tau: [B, L, N]`` (e.g. integration nodes) gives
    ``[B, L, N]`` when the method documents node support (``log_intensity`` and ``log_survival`` do).
    ``tau = 0`` must give finite values (ties exist in real data).
    """

    batch_shape: torch.Size

    def log_prob(self, tau: Tensor) -> Tensor:
        """``log f(tau | H) = log lambda(tau) - Lambda(tau)``."""

    def log_survival(self, tau: Tensor) -> Tensor:
        """``log S(tau) = -Lambda(tau)``."""

    def cdf(self, tau: Tensor) -> Tensor:
        """``F(tau) = 1 - S(tau)``."""

    def log_interval_prob(self, lo: Tensor, hi: Tensor) -> Tensor:
        """``log P(lo <= tau < hi)`` for ``0 <= lo < hi`` (a lattice bin: ``mtpp.data.lattice``)."""

    def icdf(self, u: Tensor) -> Tensor:
        """Quantile: closed form where it exists, else bisection on ``cdf``."""

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """Exact samples ``[*sample_shape, *batch_shape]`` (inverse transform where no closed form)."""


@runtime_checkable
class JointDistribution(TimeDistribution, Protocol):
    """Ground-process distribution from marked intensities ``lambda_k``; marks ``p(k | tau) = lambda_k / lambda``."""

    def mark_log_probs(self, tau: Tensor) -> Tensor:
        """``[B, L, K]`` log mark probabilities at ``tau: [B, L]``; sums (in prob space) to 1 over ``K``."""


BOUNDARY_METADATA_KEY = "mtpp.boundary"
"""Key of ``NLLOutput.boundary`` in the ``metadata`` of the autograd nodes of ``time_nll`` and ``mark_nll``."""


@dataclass
class NLLOutput:
    """What ``MarkedTPP.nll(batch)`` returns (all on the batch's device, no host sync).

    time_nll: ``[B]`` per-sequence ``L_T`` (sum over scored events of ``-log f`` plus the survival term).
    mark_nll: ``[B]`` per-sequence ``L_M``.
    time_terms: ``[B, L]`` per-event ``-log f(tau_i | H_i)``, 0 where not scored.
    mark_terms: ``[B, L]`` per-event ``-log p(k_i | tau_i, H_i)``, 0 where not scored.
    scored: ``[B, L]`` bool, events in the scored set ``I`` (mask minus the first event if ``first_event: skip``).
    survival_term: ``[B]`` ``-log S(T - t_n | H_{n+1})`` (0 when the window ends at the last event).
    boundary: optional ``{name: tensor}``, the tensors both losses read the shared encoder through (e.g. the
        ``[B, L + 1, D]`` histories, after-the-last-event position included): ``time_nll`` and ``mark_nll``
        depend on the parameters of ``model.shared_parameters()["encoder"]`` only through these tensors. Only set
        when it is useful (gradients enabled, an encoder shared by both losses, not under ``torch.compile``);
        then it is also recorded on the autograd graph of ``time_nll`` / ``mark_nll`` (see
        ``BOUNDARY_METADATA_KEY``), where ``mtpp.training.gradients.backward_step`` finds it from the losses to
        get the per-task encoder gradients with one batched backward through the encoder.
    """

    time_nll: Tensor
    mark_nll: Tensor
    time_terms: Tensor
    mark_terms: Tensor
    scored: Tensor
    survival_term: Tensor
    boundary: dict[str, Tensor] | None = None

    def __post_init__(self) -> None:
        if self.boundary is None:
            return
        for t in (self.time_nll, self.mark_nll):
            if t.grad_fn is not None:
                t.grad_fn.metadata[BOUNDARY_METADATA_KEY] = self.boundary


@dataclass
class Scores:
    """Everything evaluation needs about one batch, from ``MarkedTPP.score(batch)`` (under ``no_grad``).

    nll: the ``NLLOutput``.
    pit: ``[B, L]`` ``F(tau_i | H_i)`` at the observed gaps (PIT values).
    mark_log_probs: ``[B, L, K]`` ``log p(k | tau_i, H_i)`` at the observed gaps.
    median_tau: ``[B, L]`` predicted gap, the median ``F^{-1}(0.5)`` (data units).
    mean_tau: ``[B, L]`` predicted mean gap where closed form (LNM), else ``None`` (data units).
    forecast_mark_log_probs: ``[B, L, K]`` ``log p(k | H_i)``, the mark forecast with the gap unknown
        (``mtpp.models.marginal``); ``None`` when not computed.
    tied: ``[B, L]`` bool, scored events whose gap is below the tie resolution (``model.tie_resolution``, in the
        decoders' units): their ``L_T`` term is ``-log F(delta)``, a probability, not a density (tie policy,
        ``mtpp.models.time_decoders``); ``None`` when not computed.
    time_nll_binned: ``[B]`` binned time NLL per sequence, ``-log P(observed gap's lattice bin | H)`` summed over
        the scored events plus the survival term (nats, unitless; ``mtpp.data.lattice``); ``None`` unless
        ``score`` was given the data's ``time_quantum``.
    pit_bin_edges: ``(F(lo), F(hi))``, each ``[B, L]``: the CDF at the edges of each observed gap's lattice bin, for
        the non-randomised PIT of binned data (``F(tau)`` twice for gaps beyond ``BINNED_EXACT_QUANTA`` quanta);
        ``None`` like ``time_nll_binned``.
    """

    nll: NLLOutput
    pit: Tensor
    mark_log_probs: Tensor
    median_tau: Tensor
    mean_tau: Tensor | None = None
    forecast_mark_log_probs: Tensor | None = None
    tied: Tensor | None = None
    time_nll_binned: Tensor | None = None
    pit_bin_edges: tuple[Tensor, Tensor] | None = None
