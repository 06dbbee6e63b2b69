"""History encoders: ``encoder(batch) -> h: [B, L, D]`` with ``h[:, i]`` a function of events ``0..i-1`` only.

Every encoder also gives ``histories(batch) -> [B, L + 1, D]``: position ``i`` is the history before event ``i``
(position 0 the learned start state of the empty history) and position ``n = lengths[b]`` the history **after
the last event**, ``h_{n+1}`` in the likelihood contract, which the survival term ``-log S(T - t_n | H_{n+1})``
and next-event prediction need. ``forward(batch) == histories(batch)[:, :L]``.

Padding: padded events sit after the real ones and every encoder is causal, so they never change a real
position (nor position ``lengths[b]``); no key-padding mask is needed and no ``[B, L, L]`` tensor is built by
the GRU or FNN encoders (memory linear in ``L``). Attention encoders use
``scaled_dot_product_attention(is_causal=True)``, which picks a memory-efficient kernel where one exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtpp.data.batch import Batch
from mtpp.errors import ConfigError
from mtpp.models.config import ModelConfig
from mtpp.models.embeddings import (
    EventEmbedding,
    MarkEmbedding,
    SinusoidalTimeEncoding,
    TimeShiftedPositionalEncoding,
)
from mtpp.models.recurrence import fused_available, run_fused
from mtpp.models.registry import ENCODERS


class Encoder(nn.Module):
    """Base class: subclasses implement ``histories``; ``forward`` drops the after-the-last-event position."""

    output_size: int

    def histories(self, batch: Batch) -> Tensor:  # pragma: no cover - abstract
        """``[B, L + 1, D]``: history before each event, then the history after the last padded position."""
        raise NotImplementedError

    def forward(self, batch: Batch) -> Tensor:
        return self.histories(batch)[:, :-1]


def _param_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


class RecurrentEncoder(Encoder):
    """A recurrent network over ``[mark embedding; Time2Vec(log tau)]`` event inputs, learned initial state as the
    start state. Subclasses choose the cell (``cell``: ``nn.GRU`` or ``nn.RNN``).

    ``h_0`` = learned initial hidden state (last layer), ``h_i`` = state after events ``0..i-1``.
    Size: ``hidden_size`` units, ``num_layers`` stacked layers (``dropout`` between layers). Memory linear in ``L``.
    When training on CPU the recurrence runs as one fused autograd node (``mtpp.models.recurrence``; same
    parameters, same function), elsewhere as the ``nn`` module (cuDNN on CUDA).
    """

    cell: type[nn.RNNBase] = nn.GRU

    def __init__(self, num_marks: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed = EventEmbedding(num_marks, cfg.mark_embedding_size, cfg.time_embedding_size)
        self.num_layers = cfg.num_layers
        self.rnn = self.cell(
            self.embed.output_size,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        self.h0 = nn.Parameter(torch.zeros(cfg.num_layers, cfg.hidden_size))
        self.output_size = cfg.hidden_size

    def histories(self, batch: Batch) -> Tensor:
        x = self.embed(batch.marks, batch.taus)  # [B, L, E]
        b = x.shape[0]
        h0 = self.h0.unsqueeze(1).expand(-1, b, -1).contiguous()  # [layers, B, D]
        if fused_available(x):
            out = run_fused(self.rnn, x, h0)  # [B, L, D]: state after events 0..i
        else:
            out, _ = self.rnn(x, h0)
        start = self.h0[-1].to(out.dtype).expand(b, 1, -1)
        return torch.cat([start, out], dim=1)


@ENCODERS.register("gru")
class GRUEncoder(RecurrentEncoder):
    """GRU history encoder (the Bosser & Ben Taieb reference encoder)."""

    cell = nn.GRU


@ENCODERS.register("rnn")
class RNNEncoder(RecurrentEncoder):
    """Vanilla tanh RNN history encoder (RMTPP's original recurrent cell; cheaper than a GRU)."""

    cell = nn.RNN


class CausalSelfAttentionLayer(nn.Module):
    """Pre-norm transformer layer: causal multi-head SDPA, then a 2-layer feed-forward, both residual."""

    def __init__(self, dim: int, num_heads: int, ffn_size: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"model.hidden_size ({dim}) must be divisible by model.num_heads ({num_heads})")
        self.num_heads = num_heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_size), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_size, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, N, d/H]
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.ffn(self.norm2(x))


class _AttentionEncoder(Encoder):
    """Tokens ``[start, e_0, ..., e_{L-1}]`` through causal layers; output ``i`` sees ``start, e_0..e_{i-1}``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.start = nn.Parameter(torch.randn(d) * d**-0.5)
        self.layers = nn.ModuleList(
            CausalSelfAttentionLayer(d, cfg.num_heads, 2 * d, cfg.dropout) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.output_size = d

    def tokens(self, batch: Batch) -> Tensor:  # pragma: no cover - abstract
        """``[B, L + 1, D]`` input tokens, the start token first."""
        raise NotImplementedError

    def histories(self, batch: Batch) -> Tensor:
        x = self.tokens(batch)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


@ENCODERS.register("thp")
class THPEncoder(_AttentionEncoder):
    """Transformer Hawkes (Zuo et al., 2020): token = mark embedding + sinusoidal encoding of the absolute time.

    Embeddings have ``hidden_size`` dims (THP adds them); ``num_layers`` layers of ``num_heads`` heads,
    feed-forward width ``2 * hidden_size``.
    """

    def __init__(self, num_marks: int, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.mark = MarkEmbedding(num_marks, cfg.hidden_size)
        self.time = SinusoidalTimeEncoding(cfg.hidden_size)

    def tokens(self, batch: Batch) -> Tensor:
        dtype = _param_dtype(self)
        e = self.mark(batch.marks) + self.time(batch.times, dtype)  # [B, L, D]
        start = self.start.expand(e.shape[0], 1, -1)
        return torch.cat([start, e], dim=1)


@ENCODERS.register("sahp")
class SAHPEncoder(_AttentionEncoder):
    """Self-attentive Hawkes (Zhang et al., 2020): token = mark embedding + time-shifted positional encoding.

    The start token sits at position 0 with gap 0; event ``i`` at position ``i + 1`` with its gap ``tau_i``.
    ``hidden_size`` must be even.
    """

    def __init__(self, num_marks: int, cfg: ModelConfig) -> None:
        if cfg.hidden_size % 2:
            raise ConfigError(f"model.hidden_size must be even for the sahp encoder, got {cfg.hidden_size}")
        super().__init__(cfg)
        self.mark = MarkEmbedding(num_marks, cfg.hidden_size)
        self.position = TimeShiftedPositionalEncoding(cfg.hidden_size)

    def tokens(self, batch: Batch) -> Tensor:
        b, l = batch.marks.shape
        e = torch.cat([self.start.expand(b, 1, -1), self.mark(batch.marks)], dim=1)  # [B, L + 1, D]
        positions = torch.arange(l + 1, device=e.device).expand(b, -1)
        taus = F.pad(batch.taus, (1, 0))  # the start token has gap 0
        return e + self.position(positions, taus)


@ENCODERS.register("fnn")
class FNNEncoder(Encoder):
    """MLP over the last ``m = window`` events: ``h_i = MLP([e_{i-m}; ...; e_{i-1}])``.

    ``e_j = [mark embedding; Time2Vec(log tau_j)]``; slots before the first event hold a learned "no event"
    vector, so ``h_0`` (all slots empty) is the learned start state. Windows are ``m`` shifted slices of the
    front-padded sequence: memory ``B * (L + 1) * m * E``, linear in ``L``.
    """

    def __init__(self, num_marks: int, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.window < 1:
            raise ConfigError(f"model.window must be >= 1 for the fnn encoder, got {cfg.window}")
        self.window = cfg.window
        self.embed = EventEmbedding(num_marks, cfg.mark_embedding_size, cfg.time_embedding_size)
        e = self.embed.output_size
        self.empty = nn.Parameter(torch.zeros(e))
        self.mlp = nn.Sequential(
            nn.Linear(cfg.window * e, cfg.hidden_size),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden_size, cfg.hidden_size),
        )
        self.output_size = cfg.hidden_size

    def histories(self, batch: Batch) -> Tensor:
        x = self.embed(batch.marks, batch.taus)  # [B, L, E]
        b, l, e = x.shape
        x = torch.cat([self.empty.to(x.dtype).expand(b, self.window, e), x], dim=1)  # [B, m + L, E]
        # window slot j holds event i - m + j: m shifted slices (m is a model size, not a number of events;
        # cheaper than ``unfold``, whose backward has no batching rule for the per-task gradients)
        windows = torch.stack([x[:, j : j + l + 1] for j in range(self.window)], 2)  # [B, L + 1, m, E]
        windows = windows.reshape(b, l + 1, self.window * e)  # oldest event first
        return self.mlp(windows)
