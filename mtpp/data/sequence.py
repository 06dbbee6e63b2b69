"""EventSequence: one marked sequence ``(t_i, k_i)`` on ``[0, T]``, and its validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from mtpp.errors import DataError


@dataclass(frozen=True, eq=False)
class EventSequence:
    """One sequence of marked events.

    times: ``[n]`` float64, absolute event times, non-decreasing, finite, ``>= 0``
        (``t_0 = 0`` is the window start, so ``tau_1 = t_1``).
    marks: ``[n]`` int64, 0-based mark ids in ``[0, num_marks)``.
    window_end: the observation window end ``T >= t_n``, or ``None`` when the window ends at the last
        event (the benchmark convention: no survival term).
    """

    times: np.ndarray
    marks: np.ndarray
    window_end: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "times", np.ascontiguousarray(self.times, dtype=np.float64))
        object.__setattr__(self, "marks", np.ascontiguousarray(self.marks, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @property
    def taus(self) -> np.ndarray:
        """``[n]`` inter-event times ``tau_i = t_i - t_{i-1}`` with ``t_0 = 0``, float64."""
        return np.diff(self.times, prepend=0.0)

    def key(self) -> bytes:
        """A hashable identity for de-duplication (same times, marks and window)."""
        w = np.float64(np.nan if self.window_end is None else self.window_end).tobytes()
        return self.times.tobytes() + b"|" + self.marks.tobytes() + b"|" + w

    def to_dict(self) -> dict:
        return {
            "times": self.times.tolist(),
            "marks": self.marks.tolist(),
            "window_end": self.window_end,
        }


def make_sequence(
    times: Sequence[float] | np.ndarray,
    marks: Sequence[int] | np.ndarray,
    *,
    window_end: float | None = None,
    num_marks: int | None = None,
    source: str | None = None,
    index: int | None = None,
) -> EventSequence:
    """Build and validate one sequence, raising ``DataError`` naming ``source`` and ``index``.

    Checks: same length, non-empty, numeric finite times, ``>= 0``, non-decreasing (ties allowed),
    integer marks in ``[0, num_marks)`` when ``num_marks`` is given, ``window_end >= t_n``.
    """

    def fail(problem: str) -> DataError:
        return DataError(problem, source=source, sequence=index)

    try:
        t = np.asarray(times, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise fail(f"times are not numbers ({e})") from None
    try:
        m_raw = np.asarray(marks)
        if m_raw.size and m_raw.dtype.kind not in "iub":
            if m_raw.dtype.kind == "f" and np.all(np.isfinite(m_raw)) and np.all(m_raw == np.round(m_raw)):
                pass
            else:
                bad = m_raw.reshape(-1)[:3].tolist()
                raise fail(f"marks must be integers, got {bad!r}...")
        m = m_raw.astype(np.int64)
    except (TypeError, ValueError) as e:
        raise fail(f"marks are not integers ({e})") from None
    if t.ndim != 1 or m.ndim != 1:
        raise fail(f"times and marks must be flat lists (got shapes {t.shape} and {m.shape})")
    if t.shape[0] != m.shape[0]:
        raise fail(f"{t.shape[0]} times but {m.shape[0]} marks")
    if t.shape[0] == 0:
        raise fail("empty sequence")
    if not np.all(np.isfinite(t)):
        j = int(np.flatnonzero(~np.isfinite(t))[0])
        raise fail(f"non-finite time {float(t[j])!r} at event {j}")
    if t[0] < 0:
        raise fail(f"negative time {float(t[0])!r} at event 0 (times are measured from the window start 0)")
    d = np.diff(t)
    if np.any(d < 0):
        j = int(np.flatnonzero(d < 0)[0]) + 1
        raise fail(f"times not sorted: event {j} at {float(t[j])!r} comes before event {j - 1} at {float(t[j - 1])!r}")
    if m.min() < 0:
        j = int(np.argmin(m))
        raise fail(f"negative mark {int(m[j])} at event {j}")
    if num_marks is not None and m.max() >= num_marks:
        j = int(np.argmax(m))
        raise fail(f"mark {int(m[j])} at event {j} is out of range for {num_marks} marks")
    if window_end is not None:
        window_end = float(window_end)
        if not np.isfinite(window_end) or window_end < t[-1]:
            raise fail(f"window end {window_end!r} is before the last event {float(t[-1])!r}")
    return EventSequence(t, m, window_end)


def infer_num_marks(sequences: Iterable[EventSequence]) -> int:
    """``1 + max mark`` over the sequences (0 for none)."""
    top = -1
    for s in sequences:
        if len(s):
            top = max(top, int(s.marks.max()))
    return top + 1


def check_marks(sequences: Sequence[EventSequence], num_marks: int, source: str | None = None) -> None:
    """Raise ``DataError`` if any mark is outside ``[0, num_marks)``."""
    for i, s in enumerate(sequences):
        if len(s) and (s.marks.min() < 0 or s.marks.max() >= num_marks):
            bad = int(s.marks.max() if s.marks.max() >= num_marks else s.marks.min())
            raise DataError(f"mark {bad} is out of range for {num_marks} marks", source=source, sequence=i)
