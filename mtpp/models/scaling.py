"""The time scale: the unit of time a model works in, chosen from the data, invisible in every reported number.

Neural TPP decoders are initialised for gaps of order 1 (THP / SAHP intensities start at a rate of about 1, the
log-normal mixture's means near ``log tau = 0``, RMTPP's ``exp(b)`` near 1). Real data comes in any unit: MOOC's
median gap is ~1e-4 (times rescaled to [0, 10]), raw Unix-second data has gaps of 10 s to days. So the model divides
every time it sees by a scale ``s`` (``MarkedTPP.time_scale``) before any encoder or decoder:

* ``s = "auto"`` (the default): the **median of the positive within-sequence gaps** of the training split (the
  first gap ``t_1 - 0`` left out: on raw timestamps it is the epoch offset), so that the bulk of the gaps is of
  order 1 in model units. Decoders that read the gap linearly (THP's and FNN's ``a tau``, SAHP's ``gamma tau``,
  RMTPP's ``w tau``) must learn slopes and decay rates of order ``1 / (bulk gap)``; Adam moves a parameter by
  about the learning rate per step, so a bulk at 1e-3 model units means slopes of ~1e3 and ~1e6 steps. Measured on
  MOOC (split 1, THP "+", batch 8): with the mean gap as the unit (0.077; MOOC's median gap is 580 times smaller)
  the slopes went from -0.1 to -154 in 484 epochs at ~70 % of Adam's top speed and the validation ``L_T`` was
  -265 there, still improving; with the median (1.3e-4) it was -292 after 10 epochs. The median is also robust
  (fewer than half the gaps can move it anywhere). The tail then lies far out (MOOC's longest gap is ~7e4 model
  units, LastFM's ~5e4): every decoder starts within a small factor of the exponential distribution there
  (``tests/test_init_scale.py``; RMTPP's slope starts at 1e-5).
* a positive number: that scale (e.g. ``3600`` to work in hours on second data).
* ``"none"``: ``s = 1`` (the data's own unit).

**Every reported likelihood stays in the data's units.** For gaps ``tau`` and model units ``tau' = tau / s`` the
densities satisfy ``f(tau) = f'(tau / s) / s`` (change of variables), so ``MarkedTPP`` adds ``log s`` to each scored
event's ``-log f'`` term: ``L_T`` on data ``c t`` equals ``L_T`` on ``t`` plus ``n log c`` (``n`` scored events),
whatever ``s``. Survival terms ``S'(gap / s) = S(gap)``, PIT values and mark probabilities are unit-free; predicted
gaps and quantiles are multiplied back by ``s``. The scale is stored in the checkpoint (``MarkedTPP``'s extra
state) and in the run's ``config.yaml`` (``run_info.time_scale``).

Precision: gaps are computed in float64 by ``collate`` before the cast to the model's dtype, and encoders see times
relative to the sequence's first event (``Batch.times``), so large absolute offsets never reach float32.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from mtpp.data.sequence import within_sequence_gaps
from mtpp.errors import ConfigError

TIME_SCALE_CHOICES = ("auto", "none")
"""The non-numeric values of ``data.time_scale``."""


MAX_GAP_RATIO = 1e4
"""A given scale (a number or ``"none"``) is refused when the training data's typical gap is more than this many
times larger or smaller than it: decoders initialised for gaps of order 1 then start with intensities off by that
factor (RMTPP's ``exp(w tau)`` overflows float32, THP / SAHP compensators of ~1e4 per event), and every batch is
skipped as non-finite or training crawls, with no error that names the unit of time."""


def typical_gap(sequences: Iterable) -> float | None:
    """Median of the positive within-sequence gaps ``t_i - t_{i-1}`` (``i >= 2``) of ``sequences`` (robust to
    fewer than half the gaps being gross outliers).

    Falls back to the positive first gaps ``t_1`` when no sequence has two events with distinct times; ``None`` when
    there is no positive gap at all. Computed in float64 on the host (one pass over the data).
    """
    sequences = list(sequences)
    first = np.asarray([s.times[0] for s in sequences if len(s.times)], dtype=np.float64)
    for gaps in (within_sequence_gaps(sequences), first):
        gaps = gaps[np.isfinite(gaps) & (gaps > 0)]
        if gaps.size:
            return float(np.median(gaps))
    return None


def check_time_scale(value: object, key: str = "data.time_scale") -> None:
    """``ConfigError`` unless ``value`` is ``"auto"``, ``"none"`` or a finite positive number."""
    if isinstance(value, str):
        if value in TIME_SCALE_CHOICES:
            return
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key}: invalid value {value!r}; valid: auto, none, or a positive number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}: must be auto, none or a finite number > 0, got {value!r}")


def same_time_scale(a: float, b: float) -> bool:
    """Whether two resolved scales are one unit of time (relative tolerance 1e-9: a scale that went through
    ``config.yaml``, a result record or a checkpoint compares equal to the one resolved again from the same data).
    Used wherever a trained run is checked against what ``data.time_scale`` resolves to now (``--resume``, stale
    grid cells)."""
    return math.isclose(float(a), float(b), rel_tol=1e-9)


def resolve_time_scale(spec: object, train_sequences: Iterable) -> float:
    """The scale ``s`` (model unit = ``s`` data units) for ``data.time_scale = spec`` (see the module docstring).

    ``"auto"`` with no positive gap in the training data gives 1.0. Raises ``ConfigError`` for an invalid ``spec``,
    and for a number or ``"none"`` that puts the typical training gap (``typical_gap``) outside
    ``[1 / MAX_GAP_RATIO, MAX_GAP_RATIO]`` model units (the message names the scale ``auto`` would pick).
    """
    check_time_scale(spec)
    m = typical_gap(train_sequences)
    if spec == "auto":
        return 1.0 if m is None else m
    scale = 1.0 if spec == "none" else float(spec)  # type: ignore[arg-type]
    if m is not None and not 1.0 / MAX_GAP_RATIO <= m / scale <= MAX_GAP_RATIO:
        raise ConfigError(
            f"data.time_scale={spec}: the training data's typical gap ({m:.3g} data units) would be {m / scale:.3g} "
            f"model units, more than {MAX_GAP_RATIO:.0e} times from 1 where the decoders start; use "
            f"data.time_scale=auto (it picks {m:.3g}) or a number within that factor of it"
        )
    return scale
