"""Mark embeddings and temporal encodings of event times and gaps.

Shapes: ``B`` sequences, ``L`` positions, ``E`` embedding size.

Temporal features are computed in the dtype of the times they encode (float64 when the batch is float64, so
large absolute times keep their precision) and cast to the dtype of the module's parameters at the end.

Ties (``tau = 0``) are real in event data. Every gap feature here is finite at ``tau = 0``: the log-gap feature
floors the gap at ``TAU_FLOOR`` before the log (``log tau`` becomes ``log(1e-10) ~ -23.03`` for a tie), the other
encodings are smooth functions of ``tau`` itself. Inputs carry no gradient (they are data), so the floor never
hides a gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

TAU_FLOOR = 1e-10  # gaps below this (ties) are treated as this value inside ``log_gap``


def log_gap(tau: Tensor) -> Tensor:
    """``log(max(tau, TAU_FLOOR))``: a finite log-gap feature, ``tau = 0`` (a tie) maps to ``log(1e-10)``."""
    return torch.log(tau.clamp_min(TAU_FLOOR))


def _param_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    for b in module.buffers():
        if b.is_floating_point():
            return b.dtype
    return torch.get_default_dtype()


class MarkEmbedding(nn.Embedding):
    """``marks: [B, L] int64 -> [B, L, E]``: one learned vector per mark."""

    def __init__(self, num_marks: int, dim: int) -> None:
        super().__init__(num_marks, dim)
        nn.init.normal_(self.weight, std=dim**-0.5)


class GapEncoding(nn.Module):
    """Time2Vec (Kazemi et al., 2019) of the log-gap: ``tau: [B, L] -> [B, L, E]``.

    With ``x = log_gap(tau)``: ``out[..., 0] = w_0 x + b_0`` and ``out[..., j] = sin(w_j x + b_j)`` for
    ``j >= 1``, learned ``w``, ``b``. Working on ``log tau`` makes the features scale-free over many orders of
    magnitude of gaps (seconds to years), and finite for ties.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError("GapEncoding needs dim >= 1")
        self.dim = dim
        self.linear = nn.Linear(1, dim)
        with torch.no_grad():
            # frequencies spread over ~2 decades of log-gap scale; phases uniform
            self.linear.weight.copy_(torch.logspace(-1, 1, dim).unsqueeze(-1) / 4.0)
            self.linear.bias.uniform_(-math.pi, math.pi)

    def forward(self, tau: Tensor) -> Tensor:
        dtype = _param_dtype(self)
        x = log_gap(tau).to(dtype).unsqueeze(-1)  # [B, L, 1]
        z = self.linear(x)  # [B, L, E]
        return torch.cat([z[..., :1], torch.sin(z[..., 1:])], dim=-1)


class SinusoidalTimeEncoding(nn.Module):
    """THP's temporal encoding of absolute times (Zuo et al., 2020): ``times: [B, L] -> [B, L, E]``.

    ``z(t)_{2j} = sin(t / 10000^{2j/E})`` and ``z(t)_{2j+1} = cos(t / 10000^{2j/E})``; fixed, no parameters.
    Computed in the dtype of ``times`` (float64 batches keep large absolute times exact), then cast.
    """

    def __init__(self, dim: int, max_scale: float = 10000.0) -> None:
        super().__init__()
        self.dim = dim
        self.max_scale = max_scale

    def forward(self, times: Tensor, out_dtype: torch.dtype) -> Tensor:
        compute = torch.promote_types(times.dtype, torch.float32)
        half = (self.dim + 1) // 2
        # frequencies built in the compute dtype on the fly (a float32 buffer would blur float64 times)
        inv_freq = self.max_scale ** (-torch.arange(half, dtype=compute, device=times.device) * 2.0 / self.dim)
        arc = times.to(compute).unsqueeze(-1) * inv_freq  # [B, L, E/2]
        z = torch.stack([torch.sin(arc), torch.cos(arc)], dim=-1).flatten(-2)[..., : self.dim]
        return z.to(out_dtype)


class TimeShiftedPositionalEncoding(nn.Module):
    """SAHP's time-shifted positional encoding (Zhang et al., 2020): ``[B, L] positions and gaps -> [B, L, E]``.

    ``arc_j = pos * omega_j + w_j * tau`` with fixed ``omega_j = 10000^{-2j/E}`` and learned ``w_j``;
    ``out = [sin(arc); cos(arc)]``. The position tells the order, the learned phase shift the elapsed gap.
    """

    def __init__(self, dim: int, max_scale: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError("TimeShiftedPositionalEncoding needs an even dim")
        half = dim // 2
        self.register_buffer(
            "omega", max_scale ** (-torch.arange(half, dtype=torch.float32) * 2.0 / dim), persistent=False
        )
        self.time_weight = nn.Linear(1, half, bias=False)

    def forward(self, positions: Tensor, tau: Tensor) -> Tensor:
        dtype = self.time_weight.weight.dtype
        arc = positions.to(dtype).unsqueeze(-1) * self.omega.to(dtype) + self.time_weight(tau.to(dtype).unsqueeze(-1))
        return torch.cat([torch.sin(arc), torch.cos(arc)], dim=-1)


class EventEmbedding(nn.Module):
    """Per-event input of the recurrent and window encoders: ``[mark embedding; Time2Vec(log tau)]``.

    ``(marks: [B, L], taus: [B, L]) -> [B, L, mark_dim + time_dim]``.
    """

    def __init__(self, num_marks: int, mark_dim: int, time_dim: int) -> None:
        super().__init__()
        self.mark = MarkEmbedding(num_marks, mark_dim)
        self.gap = GapEncoding(time_dim)
        self.output_size = mark_dim + time_dim

    def forward(self, marks: Tensor, taus: Tensor) -> Tensor:
        return torch.cat([self.mark(marks), self.gap(taus)], dim=-1)
