"""Ties: gaps below the tie resolution, counted for reports and flagged before training.

The tie policy itself (one rule for every decoder) is in ``mtpp.models.time_decoders``: a scored gap
``tau < delta`` (``model.tie_resolution``, default ``TIE_RESOLUTION`` in the decoders' time units) contributes
``log F(delta)``, a probability, instead of a density. NLLs on tied data are therefore bounded below but are a mix
of densities and probabilities: a report should say how many terms were ties, and a user should hear about ties
before training. This module gives both, and nothing else:

- ``tie_mask`` / ``count_ties``: on device, no host sync, for the evaluation layer's metrics (a ``ties`` count per
  split next to the NLLs).
- ``tie_summary`` / ``tie_warning``: host side, over ``EventSequence`` objects (the training data), for the trainer
  to log once before the first epoch: ties among the scored gaps, and first events at ``t = 0`` under
  ``first_event: include`` (their first gap ``t_1 - t_0 = 0`` is a tie).

Units: ``delta`` is in the decoders' units. Data read in other units and divided by a time scale ``c`` before the
decoders (``tau_model = tau_data / c``) has its ties at ``tau_data < delta * c``: pass ``time_scale=c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
from torch import Tensor

from mtpp.data.sequence import EventSequence
from mtpp.models.time_decoders import TIE_RESOLUTION


def tie_mask(taus: Tensor, scored: Tensor, resolution: float = TIE_RESOLUTION) -> Tensor:
    """``[B, L]`` bool: scored events whose gap (decoder units) is below ``resolution`` (``scored``: ``[B, L]``,
    e.g. ``NLLOutput.scored``, which excludes padding and, with ``first_event: skip``, the first event)."""
    return scored & (taus < resolution)


def count_ties(taus: Tensor, scored: Tensor, resolution: float = TIE_RESOLUTION) -> Tensor:
    """Number of tied scored events as a 0-dim int64 tensor on the device of ``taus`` (no host sync)."""
    return tie_mask(taus, scored, resolution).sum()


@dataclass(frozen=True)
class TieSummary:
    """Counts over a set of sequences; see ``tie_summary``."""

    sequences: int
    scored_gaps: int
    ties: int  # scored gaps below the resolution, first events included where they are scored
    first_at_zero: int  # sequences whose first event is at t = 0 (a tie when first events are scored)
    first_event: str
    resolution: float
    time_scale: float

    def message(self, what: str = "training data") -> str | None:
        """A one-paragraph warning, or ``None`` when there is no tie among the scored gaps."""
        if self.ties == 0:
            return None
        share = 100.0 * self.ties / max(self.scored_gaps, 1)
        unit = "" if self.time_scale == 1.0 else f" (= {self.resolution * self.time_scale:g} in the data's units)"
        parts = [
            f"{what}: {self.ties:,} of {self.scored_gaps:,} scored gaps ({share:.2g} %) are ties, below the tie "
            f"resolution {self.resolution:g}{unit}"
        ]
        if self.first_event == "include" and self.first_at_zero:
            parts.append(
                f"{self.first_at_zero:,} of {self.sequences:,} sequences start at t = 0 and first_event: include "
                "scores their first gap, a tie (first_event: skip does not)"
            )
        parts.append(
            "each tie scores log F(delta), a probability, not a density (model.tie_resolution; mtpp.models."
            "time_decoders, tie policy): the time NLL stays bounded, but compare NLLs on tied data only between "
            "runs with the same resolution and first_event"
        )
        return "; ".join(parts)


def tie_summary(
    sequences: Iterable[EventSequence],
    first_event: str = "skip",
    resolution: float = TIE_RESOLUTION,
    time_scale: float = 1.0,
) -> TieSummary:
    """Ties among the gaps the likelihood scores (``first_event``: ``"skip"`` or ``"include"``).

    ``time_scale``: the factor the model divides the data's gaps by (1 when there is none); a gap is a tie when
    ``tau_data / time_scale < resolution``. One vectorised pass over the concatenated gaps.
    """
    seqs = [s for s in sequences if len(s)]
    if not seqs:
        return TieSummary(0, 0, 0, 0, first_event, resolution, time_scale)
    taus = np.concatenate([s.taus for s in seqs]) / time_scale
    lengths = np.array([len(s) for s in seqs])
    first = np.zeros(taus.shape[0], dtype=bool)
    first[np.concatenate([[0], np.cumsum(lengths)[:-1]])] = True
    scored = np.ones_like(first) if first_event == "include" else ~first
    tied = scored & (taus < resolution)
    first_at_zero = int(np.count_nonzero(np.array([s.times[0] for s in seqs]) == 0.0))
    return TieSummary(
        sequences=len(seqs),
        scored_gaps=int(np.count_nonzero(scored)),
        ties=int(np.count_nonzero(tied)),
        first_at_zero=first_at_zero,
        first_event=first_event,
        resolution=resolution,
        time_scale=time_scale,
    )


def tie_warning(
    sequences: Iterable[EventSequence],
    first_event: str = "skip",
    resolution: float = TIE_RESOLUTION,
    time_scale: float = 1.0,
    what: str = "training data",
) -> str | None:
    """The warning the trainer prints before training (``None`` when the scored gaps have no tie)."""
    return tie_summary(sequences, first_event, resolution, time_scale).message(what)


__all__ = ["TieSummary", "count_ties", "tie_mask", "tie_summary", "tie_warning"]
