"""The time lattice of a data set: the quantum ``q`` every gap is a whole multiple of (timestamps rounded to seconds).

Many benchmarks record times to a fixed resolution: MOOC's times (rescaled to [0, 10]) are whole seconds, ``q =
3.89e-6``, and 44 % of its positive training gaps are at most 20 quanta (7.7 % exactly one). Retweets are whole
seconds too (4 % of the gaps are 0). On such data the continuous time likelihood ``-log f(tau | H)`` is unbounded:
a density that concentrates its mass on the lattice points ``k q`` scores ever better without predicting the gap
any better. Measured on MOOC split 0: FNN "++", trained to the 1000-epoch cap, has a test ``L_T`` 28.7 nats per
sequence lower than LNM "++", all of it from gaps of at most ~9 quanta; on the binned likelihood below the
difference is 3.3 nats.

**Binned time NLL** (``nll_time_binned``): the probability the model gives to the lattice bin of the observed gap,

    -log P(k q - q/2 <= tau < k q + q/2 | H) = -log (S(lo) - S(hi)),   k = round(tau / q),

with ``lo = max(0, k q - q / 2)`` (the bin of ``k = 0``, a tie, is ``[0, q / 2)``): the bins partition
``[0, inf)``, so these probabilities sum to 1 over ``k`` for any model, the value is ``>= 0``, unitless (no
change-of-variables term) and bounded whatever the density does inside a bin. It is the likelihood of the data as
recorded (interval censoring; Theis, van den Oord & Bethge 2016, "A note on the evaluation of generative models",
Sec. 3.1, on continuous likelihoods of discretised data). Computed by ``MarkedTPP.score(..., time_quantum=q)``,
with the CDF at the bin's edges for the non-randomised PIT of binned data (``pce_binned``, Czado, Gneiting & Held
2009, "Predictive model assessment for count data", Biometrics 65(4)): the continuous PIT ``F(tau)`` of rounded
gaps is not uniform even under the model that generated them.

``time_lattice`` finds ``q`` from the training gaps (float64, on the host): the smallest positive gap, or that
divided by ``2..MAX_DIVISOR`` (refitted by least squares over the gaps when that one gap is stored rounded),
such that every positive gap of at most ``MAX_MULTIPLE`` quanta lies within ``TOLERANCE`` quanta of a whole
multiple (bins are only consequential where gaps are few quanta; gaps far beyond have bins narrower than a 1e-4
share of themselves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from mtpp.data.sequence import within_sequence_gaps

TOLERANCE = 1e-3
"""Largest distance, in quanta, from a whole multiple of ``q`` that a gap on the lattice may have (rounding of the
stored times)."""
MAX_MULTIPLE = 1e4
"""Gaps of at most this many quanta are checked against the lattice (beyond, a bin is under 1e-4 of the gap)."""
MAX_DIVISOR = 6
"""The quantum may be the smallest positive gap divided by ``1..MAX_DIVISOR`` (no gap of exactly one quantum)."""
MIN_CHECKED = 100
"""Fewest positive gaps within ``MAX_MULTIPLE`` quanta for a lattice to be claimed (a lone tiny gap proves nothing)."""
NEAR = 10
"""``TimeLattice.share_near``: share of the positive gaps of at most this many quanta."""
WARN_SHARE = 0.01
"""``TimeLattice.consequential`` when at least this share of the positive gaps is within ``NEAR`` quanta."""


@dataclass(frozen=True)
class TimeLattice:
    """``quantum``: ``q`` in data units; ``share_near``: share of the positive gaps ``<= NEAR q``; ``share_zero``:
    share of all gaps that are 0 (ties); ``gaps``: number of gaps examined."""

    quantum: float
    share_near: float
    share_zero: float
    gaps: int

    @property
    def consequential(self) -> bool:
        """Whether enough gaps are a few quanta for the continuous ``L_T`` to be moved by the lattice."""
        return self.share_near >= WARN_SHARE or self.share_zero >= WARN_SHARE

    def describe(self, units: str = "data units") -> str:
        """One line for a run header: the quantum (in ``units``, ``mtpp.data.catalog.time_unit_text``) and the
        shares."""
        return (f"times on a lattice of q = {self.quantum:.6g} {units} ({100 * self.share_near:.1f} % of the "
                f"positive gaps within {NEAR} q, {100 * self.share_zero:.1f} % zero)")  # fmt: skip


def scored_quantum(lattice: TimeLattice | None, selected: bool = False) -> float | None:
    """The quantum the evaluation scores lattice bins at (``nll_time_binned_*``, ``pce_binned``): a consequential
    lattice's, else ``None`` (times merely written to a few decimals are a lattice too, where the binned NLL is
    ``L_T`` plus a constant and would only add a column); any lattice's with ``selected`` (a run whose early
    stopping followed the binned L_T, ``train.select_time_on: binned``, reports what it selected on)."""
    if lattice is None:
        return None
    return lattice.quantum if lattice.consequential or selected else None


def lattice_warning(lattice: TimeLattice, units: str = "data units") -> str:
    """The run-start warning for data on a consequential lattice (``TimeLattice.consequential``); ``units``: the
    data's time unit in words."""
    return (f"{lattice.describe(units)}: a continuous density can lower L_T without bound by concentrating its mass on "
            "the lattice points, so L_T differences between decoders may measure that, not better forecasts; the "
            "evaluation also reports nll_time_binned_per_seq, -log P(gap's lattice bin | H), which does not reward "
            "it (mtpp.data.lattice)")  # fmt: skip


def _refined_quantum(positive: np.ndarray, q: float) -> float:
    """``q`` refitted by least squares, ``q = sum k g / sum k^2`` over the gaps ``g`` of ``k = round(g / q)``
    quanta, on ever wider ranges of ``k`` (10, 100, ... ``MAX_MULTIPLE``), so that a quantum read off one rounded
    gap (``1.66666e-05`` for ``1 / 60000``) is corrected before far multiples are checked against it."""
    for most in (10.0, 100.0, 1e3, MAX_MULTIPLE):
        k = np.round(positive / q)
        sel = (k >= 1) & (k <= most)
        if not sel.any():
            break
        q = float(np.sum(k[sel] * positive[sel]) / np.sum(k[sel] ** 2))
    return q


def time_lattice(sequences: Iterable) -> TimeLattice | None:
    """The lattice of the within-sequence gaps of ``sequences`` (module docstring), or ``None`` when the gaps are
    not on one (or too few are close enough to tell)."""
    gaps = within_sequence_gaps(sequences)
    gaps = gaps[np.isfinite(gaps) & (gaps >= 0)]
    positive = gaps[gaps > 0]
    if positive.size == 0:
        return None
    smallest = float(positive.min())
    for divisor in range(1, MAX_DIVISOR + 1):
        q = smallest / divisor
        r = positive / q
        checked = r[r <= MAX_MULTIPLE]
        if checked.size < MIN_CHECKED:
            return None
        if not np.all(np.abs(checked - np.round(checked)) <= TOLERANCE):
            q = _refined_quantum(positive, q)  # the smallest gap itself may be stored rounded (book_order: 6 digits)
            r = positive / q
            checked = r[r <= MAX_MULTIPLE]
        if checked.size >= MIN_CHECKED and np.all(np.abs(checked - np.round(checked)) <= TOLERANCE):
            return TimeLattice(
                quantum=q,
                share_near=float(np.mean(r <= NEAR + 0.5)),
                share_zero=float(np.mean(gaps == 0)),
                gaps=int(gaps.size),
            )
    return None
