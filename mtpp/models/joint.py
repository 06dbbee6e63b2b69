"""Joint decoders (base THP / SAHP / FNN): marked intensities ``lambda_k(tau | h)`` give both tasks.

Registered in ``JOINT_DECODERS`` (constructor ``cls(input_size, num_marks, cfg)``), ``forward(h) ->
JointDistribution``:

- ``"thp"``  ``THPJointDecoder``: ``lambda_k(tau) = softplus(a_k tau + w_k.h + b_k) + mu_k``.
- ``"sahp"`` ``SAHPJointDecoder``: ``lambda_k(tau) = softplus(mu_k + (eta_k - mu_k) exp(-gamma_k tau))``.
- ``"fnn"``  ``FNNJointDecoder``: ``K`` monotone cumulative hazards ``Lambda_k`` from one network with ``K``
  outputs, ``lambda_k = dLambda_k / dtau`` (forward-mode autograd, all ``K`` in one pass).

The intensity modules are the ones of ``mtpp.models.time_decoders`` with ``K`` outputs instead of ``C``
components; the distributions are the ground-process ones plus ``mark_log_probs``. The ground intensity
``lambda = sum_k lambda_k`` gives the time distribution (its normalisation guarantees carry over: the floor of
THP, ``lambda(inf) > 0`` of SAHP, the positive linear term of FNN), and
``log p(k | tau) = log lambda_k(tau) - log lambda(tau)`` = ``log_softmax_k log lambda_k(tau)``. Ties: the tie policy
of ``mtpp.models.time_decoders`` (the time term of a gap below ``delta`` is ``log F(delta)``; the mark term stays
``p(k | tau)`` at the observed gap, finite at 0 since every ``lambda_k(0) > 0``).

Spaces: the compensator needs only the ground intensity on the integration nodes, evaluated in linear space as
``sum_k lambda_k`` (never per-mark log values on the ``[B, L, N, K]`` node tensor); the per-mark log intensities
are computed in log space at the event times only (``[B, L, K]``), once: ``mark_log_probs(tau)`` and
``log_prob(tau)`` on the same ``tau`` tensor share them (see ``IntensityDistribution``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtpp.models.config import ModelConfig
from mtpp.models.registry import JOINT_DECODERS
from mtpp.models.time_decoders import (
    CumulativeHazardDistribution,
    IntensityDistribution,
    MonotoneCumulativeHazard,
    QuadratureDecoder,
    SAHPIntensity,
    SoftplusGapIntensity,
    TiePolicy,
    tie_resolution,
)


class MarkedIntensityDistribution(IntensityDistribution):
    """``IntensityDistribution`` whose components are the marks: ``mark_log_probs(tau): [B, L, K]``."""

    def mark_log_probs(self, tau: Tensor) -> Tensor:
        """``log lambda_k(tau) - log lambda(tau)``; ``tau: [B, L]`` (or ``[B, L, M]``) -> ``[..., K]``."""
        return torch.log_softmax(self._event_log_rates(self._align(tau)), dim=-1)

    def mark_probs(self, tau: Tensor) -> Tensor:
        """``lambda_k(tau) / lambda(tau)`` in linear space (the intensities as sums of positive terms, no ``log`` /
        ``exp`` round trip): ``exp(mark_log_probs(tau))`` to rounding where no ``lambda_k`` underflows; for the
        mark forecast's grid (``mtpp.models.marginal``), which falls back to ``mark_log_probs`` where it must."""
        rates = getattr(self.component_log_intensity, "rates", None)
        if rates is None:  # an intensity given in log space only
            return torch.softmax(self._event_log_rates(self._align(tau)), dim=-1)
        lam = rates(self._align(tau))
        return lam / lam.sum(-1, keepdim=True)


class MarkedCumulativeHazardDistribution(CumulativeHazardDistribution):
    """``CumulativeHazardDistribution`` whose components are the marks: ``mark_log_probs(tau): [B, L, K]``."""

    marks_carry_cdf = True
    """The marks' forward-mode pass keeps ``Lambda`` at the same gaps (``_rated``), so the mark forecast evaluates
    them on its whole grid, then ``F`` from the kept values (``mtpp.models.marginal``), not in blocks."""

    def mark_log_probs(self, tau: Tensor) -> Tensor:
        return torch.log_softmax(self.component_log_intensity(tau), dim=-1)

    def mark_probs(self, tau: Tensor) -> Tensor:
        """``lambda_k(tau) / lambda(tau)`` in linear space (``lambda_k`` of the forward-mode pass, positive): see
        ``MarkedIntensityDistribution.mark_probs``."""
        lam = self._rated(self._align(tau))[1]
        return lam / lam.sum(-1, keepdim=True)


class _JointIntensityDecoder(QuadratureDecoder):
    """Base THP / SAHP: the subclass's ``intensity`` module with ``K`` outputs (one marked intensity per mark);
    the ground intensity is their sum, its compensator by quadrature (``cfg.integration``)."""

    intensity_cls: type[nn.Module]

    def __init__(self, input_size: int, num_marks: int, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.num_marks = num_marks
        self.intensity = self.intensity_cls(input_size, num_marks)

    def forward(self, h: Tensor, stream: Tensor | None = None) -> MarkedIntensityDistribution:
        """``h: [*batch, D]``; ``stream: [*batch]`` int64 history keys for evaluation's ``"mc"`` (``node_stream``)."""
        method, nodes = self.integration_rule()
        dist = MarkedIntensityDistribution(self.intensity(h), h.shape[:-1], h.dtype, h.device, method, nodes,
                                           stream=self.node_stream(h, stream))
        return self._tied(dist)


@JOINT_DECODERS.register("thp")
class THPJointDecoder(_JointIntensityDecoder):
    """Base THP: ``SoftplusGapIntensity`` with ``K`` outputs (gap feature; learned floor ``mu_k > 0`` so the
    ground density integrates to 1); compensator of the ground intensity by quadrature (``cfg.integration``)."""

    intensity_cls = SoftplusGapIntensity


@JOINT_DECODERS.register("sahp")
class SAHPJointDecoder(_JointIntensityDecoder):
    """Base SAHP: ``SAHPIntensity`` with ``K`` outputs; compensator of the ground intensity by quadrature."""

    intensity_cls = SAHPIntensity


@JOINT_DECODERS.register("fnn")
class FNNJointDecoder(TiePolicy, nn.Module):
    """Base FNN: ``MonotoneCumulativeHazard`` with ``K`` outputs (width ``cfg.decoder_hidden_size``); closed-form
    ground compensator ``sum_k Lambda_k``, exact ``lambda_k`` by forward-mode autograd."""

    def __init__(self, input_size: int, num_marks: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_marks = num_marks
        self.tie_resolution = tie_resolution(cfg)
        self.hazard = MonotoneCumulativeHazard(input_size, num_marks, cfg.decoder_hidden_size)

    def forward(self, h: Tensor) -> MarkedCumulativeHazardDistribution:
        return self._tied(MarkedCumulativeHazardDistribution(self.hazard(h), h.shape[:-1], h.dtype, h.device))
