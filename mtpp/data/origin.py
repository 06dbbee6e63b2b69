"""Where the times start: data on an absolute clock (Unix seconds), whose first gap is not a gap.

A sequence's first inter-event time is measured from the window start 0, ``tau_1 = t_1 - 0`` (``mtpp.data.batch``).
For benchmark data that is a real gap (EasyTPP sets start at 0; MOOC's times are rescaled onto the course's own
timeline). For times on an absolute clock (Unix seconds: ``t_1 ~ 1.4e9``) it is the time since 1970: with
``model.first_event: skip`` that "gap" is not scored, but it is still the first input of every history encoder,
an outlier many orders of magnitude beyond every real gap; with ``include`` it is scored as one gap of 44 years.

:func:`clock_origin` measures it; :func:`absolute_clock_warning` is the run-start warning when the median first
time exceeds :data:`FACTOR` times the longest gap within a training sequence (the staged RMTPP Stack Overflow and
Twitter sets, Unix seconds, and the LGNJSDE Taobao copy: 71x, 1,900x, 1,200x; every other catalog set below 0.3x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mtpp.data.sequence import EventSequence

FACTOR = 10.0
"""The median first time must exceed this many times the longest within-sequence gap to be warned about."""


@dataclass(frozen=True)
class ClockOrigin:
    """``median_first``: the median first event time (data units); ``longest_gap``: the longest gap between two
    events of one sequence (data units); ``absolute``: ``median_first > FACTOR * longest_gap``."""

    median_first: float
    longest_gap: float

    @property
    def absolute(self) -> bool:
        return self.longest_gap > 0 and self.median_first > FACTOR * self.longest_gap


def clock_origin(sequences: Sequence[EventSequence]) -> ClockOrigin | None:
    """The first times against the within-sequence gaps of ``sequences``; ``None`` without a gap to compare."""
    seqs = [s for s in sequences if len(s)]
    if not seqs:
        return None
    gaps = np.concatenate([np.diff(np.asarray(s.times, dtype=np.float64)) for s in seqs])
    if not gaps.size:
        return None
    first = np.array([float(s.times[0]) for s in seqs])
    return ClockOrigin(float(np.median(first)), float(gaps.max()))


def absolute_clock_warning(sequences: Sequence[EventSequence], first_event: str = "skip",
                           units: str = "data units") -> str | None:
    """The run-start warning for times on an absolute clock (module docstring), ``None`` otherwise; ``units``: the
    data's time unit in words (``mtpp.data.catalog.time_unit_text``)."""
    origin = clock_origin(sequences)
    if origin is None or not origin.absolute:
        return None
    effect = ("is not scored (model.first_event: skip) but is the first input of every history encoder"
              if first_event == "skip" else "is scored as one gap (model.first_event: include)")
    return (f"the times look absolute (Unix seconds?): the median first event is at t = {origin.median_first:.10g} "
            f"{units}, {origin.median_first / origin.longest_gap:,.0f} x the longest gap within a sequence "
            f"({origin.longest_gap:.4g}); each sequence's first gap is measured from 0 and {effect}. If 0 means "
            "nothing for this data, subtract each sequence's first time (or its own start) from its times before "
            "training (mtpp.data.origin)")
