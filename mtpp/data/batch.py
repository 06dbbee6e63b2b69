"""Batch: padded ``[B, L]`` tensors of a list of sequences, and the collate function."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from mtpp.data.sequence import EventSequence
from mtpp.errors import DataError


@dataclass
class Batch:
    """A padded batch of ``B`` sequences of at most ``L`` events.

    times: ``[B, L]`` event times measured from the sequence's first event, ``t_i - t_1`` (0 in padding). The
        subtraction is done in float64 before any cast, so sequences of large absolute times (Unix seconds,
        ~1.4e9) keep distinct, exact relative times in float32 (absolute float32 times are spaced 128 s apart
        there). Encoders that use times (THP's temporal encoding) therefore see time since the sequence start.
    taus: ``[B, L]`` inter-event times ``tau_i = t_i - t_{i-1}``, ``t_0 = 0`` (0 in padding). Computed in
        float64 before any cast, so large absolute times (Unix seconds) keep exact gaps.
    marks: ``[B, L]`` int64 mark ids (0 in padding).
    mask: ``[B, L]`` bool, True for real events.
    lengths: ``[B]`` int64 number of events.
    window_end: ``[B]`` window end ``T`` (equals the last time when the data gives no window).
    survival_gap: ``[B]`` ``T - t_n`` (0 when no window: the survival term vanishes).
    """

    times: Tensor
    taus: Tensor
    marks: Tensor
    mask: Tensor
    lengths: Tensor
    window_end: Tensor
    survival_gap: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.marks.shape[0])

    @property
    def max_length(self) -> int:
        return int(self.marks.shape[1])

    @property
    def num_events(self) -> Tensor:
        """Number of real events, a 0-dim int64 tensor (no host sync)."""
        return self.lengths.sum()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def with_dtype(self, dtype: torch.dtype) -> "Batch":
        """The same batch with floating tensors cast to ``dtype``."""
        cast = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("times", "taus", "window_end", "survival_gap"):
            cast[k] = cast[k].to(dtype)
        return Batch(**cast)


def collate(sequences: Sequence[EventSequence], dtype: torch.dtype = torch.float32) -> Batch:
    """Pad ``sequences`` into a ``Batch`` (floating tensors in ``dtype``).

    Does not validate the events (``mtpp.data.checks.check_sequences`` does, against a model's marks); refuses an
    empty list (``ValueError``) and a sequence of no events (``DataError`` naming it), which a batch cannot hold."""
    if len(sequences) == 0:
        raise ValueError("cannot collate an empty list of sequences")
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if lengths.min() == 0:
        raise DataError("has no events (0 events): a batch holds sequences of at least one event",
                        source="collate", sequence=int(np.argmin(lengths)))
    b, l = len(sequences), int(lengths.max())
    times = np.zeros((b, l), dtype=np.float64)
    taus = np.zeros((b, l), dtype=np.float64)
    marks = np.zeros((b, l), dtype=np.int64)
    window_end = np.empty(b, dtype=np.float64)
    gap = np.zeros(b, dtype=np.float64)
    for i, s in enumerate(sequences):
        n = len(s)
        times[i, :n] = s.times - s.times[0]  # float64: relative times stay exact whatever the offset
        taus[i, :n] = s.taus
        marks[i, :n] = s.marks
        last = s.times[-1]
        window_end[i] = last if s.window_end is None else s.window_end
        gap[i] = window_end[i] - last
    mask = np.arange(l)[None, :] < lengths[:, None]
    return Batch(
        times=torch.from_numpy(times).to(dtype),
        taus=torch.from_numpy(taus).to(dtype),
        marks=torch.from_numpy(marks),
        mask=torch.from_numpy(mask),
        lengths=torch.from_numpy(lengths),
        window_end=torch.from_numpy(window_end).to(dtype),
        survival_gap=torch.from_numpy(gap).to(dtype),
    )
