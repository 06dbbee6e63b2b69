"""History encoders: ``encoder(batch) -> h: [B, L, D]`` with ``h[:, i]`` a function of events ``0..i-1`` only.

Every encoder also gives ``histories(batch) -> [B, L + 1, D]``: position ``i`` is the history before event ``i``
(position 0 the learned start state of the empty history) and position ``n = lengths[b]`` the history **after
the last event**, ``h_{n+1}`` in the likelihood contract, which the survival term ``-log S(T - t_n | H_{n+1})``
and next-event prediction need. ``forward(batch) == histories(batch)[:, :L]``.

Padding: padded events sit after the real ones and every encoder is causal, so they never change a real
position (nor position ``lengths[b]``); no key-padding mask is needed and no ``[B, L, L]`` tensor is built by
the GRU or FNN encoders (memory linear in ``L``). Attention encoders use
``scaled_dot_product_attention(is_causal=True)``, which picks a memory-efficient kernel where one exists.

Incremental encoding (generation). The THP / SAHP encoders can append one event at a time with a key/value cache
per layer (``start_cache`` / ``extend_cache``), computing only the new token's row of each layer. This is exact:
every layer is causal (a token attends to itself and earlier tokens), layer normalisation is over the features of
one token (never across the sequence), THP's temporal encoding is of the event's own time and SAHP's of
its own position and gap (nothing is relative to the last event), and dropout is off in eval mode; so appending
an event changes no earlier token's keys, values or output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtpp.data.batch import Batch
from mtpp.errors import ConfigError, MtppError
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

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x: [B, N, D] -> (q, k, v)``, each ``[B, H, N, D / H]``."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def _out(self, x: Tensor, a: Tensor) -> Tensor:
        """The residual attention output ``a: [B, H, N, D / H]`` and the feed-forward block: ``[B, N, D]``."""
        b, _, n, _ = a.shape
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, -1))
        return x + self.ffn(self.norm2(x))

    def forward(self, x: Tensor, keep: list | None = None) -> Tensor:
        """``x: [B, N, D] -> [B, N, D]``; ``keep``: a list to append this layer's ``(k, v)`` to (a key/value cache)."""
        q, k, v = self._heads(x)
        a = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, N, d/H]
        if keep is not None:
            keep.append((k, v))
        return self._out(x, a)

    def step(self, x: Tensor, keys: Tensor, values: Tensor, rows: Tensor | None, slot: Tensor) -> Tensor:
        """One new token per row, attending to its row's cached tokens and itself (exact: causal attention).

        x: ``[n, 1, D]`` the new tokens; keys, values: ``[N, H, P, D / H]`` this layer's cache, the new keys and
        values written in place at ``slot: [n]`` (the token's position); rows: ``[n]`` the cache rows of ``x``
        (``None``: all ``N``, in order). Keys after a row's slot (padding, stale entries) are masked out.
        Returns ``[n, 1, D]``. Eval mode only (no attention dropout).
        """
        q, k, v = self._heads(x)  # [n, H, 1, d/H]
        n = x.shape[0]
        width = int(slot.max()) + 1
        if rows is None:
            keys[torch.arange(n, device=x.device), :, slot] = k[:, :, 0]
            values[torch.arange(n, device=x.device), :, slot] = v[:, :, 0]
            ks, vs = keys[:, :, :width], values[:, :, :width]
        else:
            keys[rows, :, slot] = k[:, :, 0]
            values[rows, :, slot] = v[:, :, 0]
            ks, vs = keys[rows, :, :width], values[rows, :, :width]  # [n, H, W, d/H]
        mask = (torch.arange(width, device=x.device) <= slot.unsqueeze(-1)).view(n, 1, 1, width)
        a = F.scaled_dot_product_attention(q, ks, vs, attn_mask=mask)  # [n, H, 1, d/H]
        return self._out(x, a)


@dataclass
class AttentionCache:
    """Key/value cache of a causal attention encoder for ``N`` rows (histories being continued).

    keys, values: per layer ``[N, H, P, D / H]`` (``P`` token slots: the start token, the history, the room for
    appended events); ``filled: [N]`` tokens so far (``1 + events``; the next event goes to slot ``filled``);
    ``last: [N, D]`` the encoder output at the last token (the history after the last event, ``h_{n+1}``). Built by
    ``_AttentionEncoder.start_cache``, advanced by ``_AttentionEncoder.extend_cache``.
    """

    keys: list[Tensor]
    values: list[Tensor]
    filled: Tensor
    last: Tensor


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

    def event_tokens(self, marks: Tensor, times: Tensor, taus: Tensor, positions: Tensor | None) -> Tensor:
        """``[B, N, D]`` tokens of events: marks, times (as ``Batch.times``: from the sequence's first event), gaps
        and token positions, each ``[B, N]``, times in model units; the start token is position 0, event ``i`` of a
        sequence position ``i + 1``. THP uses marks and times, SAHP marks, positions and gaps."""
        raise NotImplementedError  # pragma: no cover - abstract

    def histories(self, batch: Batch) -> Tensor:
        x = self.tokens(batch)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def start_cache(self, batch: Batch, row_of: Tensor, capacity: int) -> AttentionCache:
        """Encode ``batch`` (``U`` distinct histories, model units, each at least one event) once and copy each
        one's keys and values to the rows continuing it (``row_of: [N]``, values in ``[0, U)``), with room for
        ``capacity`` appended events per row. Memory: ``2 * layers * N * (L + 1 + capacity) * D`` numbers."""
        if self.training:
            raise MtppError("start_cache: put the model in eval mode (dropout would make the cache inexact)")
        x = self.tokens(batch)  # [U, L + 1, D]
        kept: list = []
        for layer in self.layers:
            x = layer(x, keep=kept)
        h = self.norm(x)
        n, width = row_of.shape[0], x.shape[1]
        keys, values = [], []
        for k, v in kept:  # [U, H, L + 1, d/H] -> [N, H, L + 1 + capacity, d/H]
            for src, dst in ((k, keys), (v, values)):
                buf = src.new_zeros(n, src.shape[1], width + capacity, src.shape[3])
                buf[:, :, :width] = src[row_of]
                dst.append(buf)
        lengths = batch.lengths.to(row_of.device)
        idx = torch.arange(lengths.shape[0], device=row_of.device)
        last = h[idx, lengths][row_of]  # [N, D]: the history after each row's last event
        return AttentionCache(keys, values, (lengths + 1)[row_of].clone(), last)

    def extend_cache(self, cache: AttentionCache, rows: Tensor | None, marks: Tensor, times: Tensor,
                     taus: Tensor) -> Tensor:
        """Append one event per row: ``marks: [n]`` (int64), ``times: [n]`` its time and ``taus: [n]`` its gap after
        the row's last event (model units, as a ``Batch`` gives them: times from the sequence's first event);
        rows: ``[n]`` distinct rows of the cache (``None``: all rows, in order). Computes only the new token's row
        of every layer: ``O(P D)`` per row and layer. Updates ``cache`` in place and returns the rows' new
        ``last``: ``[n, D]``."""
        sel = slice(None) if rows is None else rows
        slot = cache.filled[sel]  # [n]
        x = self.event_tokens(marks.unsqueeze(1), times.unsqueeze(1), taus.unsqueeze(1), slot.unsqueeze(1))
        for layer, k, v in zip(self.layers, cache.keys, cache.values):
            x = layer.step(x, k, v, rows, slot)
        h = self.norm(x)[:, 0]
        cache.last[sel] = h
        cache.filled[sel] = slot + 1
        return h


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

    def event_tokens(self, marks: Tensor, times: Tensor, taus: Tensor, positions: Tensor | None) -> Tensor:
        return self.mark(marks) + self.time(times, _param_dtype(self))  # [B, N, D]

    def tokens(self, batch: Batch) -> Tensor:
        e = self.event_tokens(batch.marks, batch.times, batch.taus, None)  # [B, L, D]
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

    def event_tokens(self, marks: Tensor, times: Tensor, taus: Tensor, positions: Tensor | None) -> Tensor:
        return self.mark(marks) + self.position(positions, taus)  # [B, N, D]


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
