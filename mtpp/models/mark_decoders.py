"""Mark decoders: ``(h: [B, L, D], tau: [B, L] | None) -> log p(k | ...): [B, L, K]`` (log-softmax over ``K``).

Registered in ``MARK_DECODERS`` (constructor ``cls(input_size, num_marks, cfg)``):

- ``"categorical"``     ``CategoricalMarkDecoder``: ``p(k | h)``, ignores ``tau`` (base LNM / RMTPP).
- ``"categorical_tau"`` ``TimeCategoricalMarkDecoder``: ``p(k | tau, h) = softmax(MLP([h; log tau]))`` (the ``+``
  and ``++`` parametrisations: marks still depend on time).

Both MLPs have one hidden layer of width ``cfg.decoder_hidden_size`` (ReLU, dropout ``cfg.dropout``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtpp.models.config import ModelConfig
from mtpp.models.registry import MARK_DECODERS
from mtpp.models.time_decoders import TIE_FLOOR


def _mlp(input_size: int, hidden_size: int, output_size: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(input_size, hidden_size),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden_size, output_size),
    )


@MARK_DECODERS.register("categorical")
class CategoricalMarkDecoder(nn.Module):
    """``log p(k | h) = log_softmax(MLP(h))``: ``[B, L, K]``; ``tau`` is accepted and ignored."""

    def __init__(self, input_size: int, num_marks: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_marks = num_marks
        self.mlp = _mlp(input_size, cfg.decoder_hidden_size, num_marks, cfg.dropout)

    def forward(self, h: Tensor, tau: Tensor | None = None) -> Tensor:
        return torch.log_softmax(self.mlp(h), dim=-1)


@MARK_DECODERS.register("categorical_tau")
class TimeCategoricalMarkDecoder(nn.Module):
    """``log p(k | tau, h) = log_softmax(MLP([h; log max(tau, TIE_FLOOR)]))``: ``[B, L, K]``.

    Tie rule: a zero gap enters as the *feature* ``log TIE_FLOOR`` (about -23), never as ``-inf``; the floor only
    shapes the input, the output is a proper distribution over marks for every ``tau >= 0``.
    ``tau: [B, L]`` (or anything broadcastable to ``h.shape[:-1]``) is required.
    """

    def __init__(self, input_size: int, num_marks: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_marks = num_marks
        self.mlp = _mlp(input_size + 1, cfg.decoder_hidden_size, num_marks, cfg.dropout)

    def forward(self, h: Tensor, tau: Tensor | None) -> Tensor:
        if tau is None:
            raise ValueError("the categorical_tau mark decoder needs the gaps tau: [B, L]")
        log_tau = torch.log(tau.to(h.dtype).clamp_min(TIE_FLOOR)).expand(h.shape[:-1]).unsqueeze(-1)
        return torch.log_softmax(self.mlp(torch.cat([h, log_tau], dim=-1)), dim=-1)

    def on_grid(self, h: Tensor, tau: Tensor) -> Tensor:
        """``log p(k | tau_j, h)`` at ``P`` gaps per history: ``h: [*batch, D]``, ``tau: [*batch, P]`` ->
        ``[*batch, P, K]`` (the mark forecast's quadrature, ``mtpp.models.marginal``). The same function as
        ``forward(h expanded to [*batch, P, D], tau)``, equal to rounding: the first layer is split as
        ``W [h; log tau] + b = (W_h h + b) + w_tau log tau``, so ``W_h h`` is computed once per history, not per
        gap."""
        return torch.log_softmax(self.logits_on_grid(h, tau), dim=-1)

    def probs_on_grid(self, h: Tensor, tau: Tensor) -> Tensor:
        """``p(k | tau_j, h)`` in linear space (``softmax``: no ``log_softmax`` then ``exp``), as ``on_grid``."""
        return torch.softmax(self.logits_on_grid(h, tau), dim=-1)

    def logits_on_grid(self, h: Tensor, tau: Tensor) -> Tensor:
        """The MLP's output ``z: [*batch, P, K]`` at the gaps ``tau: [*batch, P]`` (``on_grid`` is its
        ``log_softmax``), for the mark forecast's blocked sum (``mtpp.models.marginal``)."""
        first = self.mlp[0]
        d = h.shape[-1]
        log_tau = torch.log(tau.to(h.dtype).clamp_min(TIE_FLOOR)).unsqueeze(-1)  # [*batch, P, 1]
        pre = nn.functional.linear(h, first.weight[:, :d], first.bias).unsqueeze(-2) + log_tau * first.weight[:, d]
        return self.mlp[1:](pre)
