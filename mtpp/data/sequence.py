"""EventSequence: one marked sequence ``(t_i, k_i)`` on ``[0, T]``, and its validation.

:func:`make_sequence` is the one place a sequence is validated (every reader goes through it): types (numbers
for times, integer ids for marks; never booleans or strings), finiteness, order, mark range and the
:data:`MAX_MARKS` bound. :func:`check_dtype_range` tells whether the times fit the run's floating dtype. Checks
are vectorised per sequence; only list inputs get one C-speed pass over their element types
(``set(map(type, ...))``), the error paths alone look at single events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

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
    origin: where a reader found it, ``(file, sequence index)`` as error messages name it (``None`` when built
        otherwise); not part of its identity (:meth:`key`), only for reports such as the de-duplication's.
    name: the source's own id of the sequence (a table's ``seq_id``), kept through preparation (a split folder's
        ``split_k/args.json`` ``seq_ids``) so that outputs can name it (``mtpp predict`` / ``generate``'s
        ``seq_id`` column, ``mtpp plot``'s title); ``None`` where the source has none. Not part of its identity.
    """

    times: np.ndarray
    marks: np.ndarray
    window_end: float | None = None
    origin: tuple[str, int] | None = field(default=None, repr=False)
    name: str | None = field(default=None, repr=False)

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


MAX_MARKS = 1_000_000
"""The largest number of mark types (and so the largest mark id + 1) a reader accepts without remapping.

Models allocate ``O(K)`` parameters and ``describe`` counts marks in an array of ``K`` entries, so an id such as
``10**12`` (a user id used as a mark) would ask for terabytes. Larger or sparse ids can be mapped to ``0..K-1``
with ``remap_marks=True`` (``mtpp data prepare --remap-marks``). The largest benchmark set (RMTPP yelp) has 17,239.
"""

REMAP_HINT = ("data.remap_marks=true in a run config; --remap-marks for mtpp data prepare / describe; "
              "ReadOptions(remap_marks=True) in Python")
"""Where to ask for the mark ids to be remapped to 0..K-1, in every command's terms."""

_INT64_MAX = 2**63 - 1
_QUOTED = " (write numbers unquoted)"
_NUMBER = (int, float, np.integer, np.floating)


DATE_TIME_HINT = (" (a date and time: times are numbers, e.g. seconds since 1970: pandas.to_datetime(col, "
                  "utc=True).astype('int64') / 1e9; then subtract each sequence's start)")
"""What a date-time where a time was expected is told (:func:`is_date_time`)."""


def is_date_time(x: Any) -> bool:
    """Whether ``x`` is a date-time, not a number of time units: a ``datetime`` / ``date`` (pandas ``Timestamp``
    included), a ``numpy.datetime64``, or a string in ISO 8601 form (``2024-01-01T09:30:00+01:00``, ``...Z``)."""
    import datetime as dt

    if isinstance(x, (dt.date, np.datetime64)):
        return True
    if isinstance(x, bytes):
        x = x.decode("utf-8", "replace")
    if not isinstance(x, str) or len(x) < 8 or not x[:4].isdigit() or x[4:5] != "-":
        return False
    try:
        dt.datetime.fromisoformat(x.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return True


def _short(x: Any) -> str:
    """``repr(x)``, shortened for numbers with thousands of digits and long strings."""
    r = repr(x)
    if isinstance(x, int) and not isinstance(x, bool) and len(r) > 24:
        return f"{r[:12]}...({len(r)} digits)"
    return r if len(r) <= 40 else r[:37] + "..."


def _first(values: Sequence[Any], bad: Callable[[Any], bool]) -> tuple[int, Any]:
    """Index and value of the first element of ``values`` for which ``bad`` holds (error path only)."""
    for j, x in enumerate(values):
        if bad(x):
            return j, x
    return -1, None


def _is_bool(x: Any) -> bool:
    return isinstance(x, (bool, np.bool_))


def _not_number(x: Any) -> bool:
    return _is_bool(x) or not isinstance(x, _NUMBER)


def _what(x: Any) -> str:
    if _is_bool(x):
        return f"a boolean ({x!r})"
    if isinstance(x, (str, bytes)):
        return f"a string ({_short(x)})"
    if isinstance(x, _NUMBER):
        return _short(x)
    return f"a {type(x).__name__} ({_short(x)})"


def _as_times(times: Any, fail: Callable[..., DataError]) -> np.ndarray:
    """``times`` as a float64 array, refusing booleans, strings, nested values and ints too large for a float."""
    if isinstance(times, np.ndarray) and times.dtype.kind in "iuf":
        if times.ndim != 1:
            raise fail(f"times must be a flat list (got an array of shape {times.shape})")
        return times.astype(np.float64)
    if isinstance(times, np.ndarray):
        if times.ndim != 1:
            raise fail(f"times must be a flat list (got an array of shape {times.shape})")
        if times.dtype.kind in "Mm" and times.size:  # .tolist() of datetime64[ns] gives ints: nanoseconds, silently
            what = "a date and time" if times.dtype.kind == "M" else "a duration"
            raise fail(f"time at event 0 is {what} ({times.dtype}), not a number"
                       + (DATE_TIME_HINT if times.dtype.kind == "M" else " (give durations as numbers, e.g. "
                          "seconds: array / numpy.timedelta64(1, 's'))"), 0)
        times = times.tolist()
    if not isinstance(times, (list, tuple)):
        raise fail(f"times must be a list of numbers, got {_what(times)}")
    types = set(map(type, times))
    if not all(issubclass(t, _NUMBER) and not issubclass(t, (bool, np.bool_)) for t in types):
        j, x = _first(times, _not_number)
        hint = DATE_TIME_HINT if is_date_time(x) else _QUOTED * isinstance(x, (str, bytes))
        raise fail(f"time at event {j} is {_what(x)}, not a number" + hint, j)
    try:
        return np.asarray(times, dtype=np.float64)
    except OverflowError:
        j, x = _first(times, lambda v: isinstance(v, int) and abs(v) > 1.7e308)
        raise fail(f"time {_short(x)} at event {j} is too large for a float", j) from None


def _as_marks(marks: Any, fail: Callable[..., DataError]) -> np.ndarray:
    """``marks`` as an int64 array of ids in ``[0, 2**63)``: integers (or integral floats) only; a negative,
    fractional, boolean, string or too-large id is an error naming the event and the value as written."""
    if isinstance(marks, np.ndarray):
        if marks.ndim != 1:
            raise fail(f"marks must be a flat list (got an array of shape {marks.shape})")
        kind = marks.dtype.kind
        if kind == "i":
            m = marks.astype(np.int64)
        elif kind == "u":
            if marks.size and marks.max() > _INT64_MAX:
                j = int(np.argmax(marks))
                raise fail(f"mark {int(marks[j])} at event {j} is too large (mark ids must be below 2**63)", j)
            m = marks.astype(np.int64)
        elif kind == "f":
            bad = ~np.isfinite(marks) | (marks != np.round(marks)) | (np.abs(marks) >= 2.0**63)
            if np.any(bad):
                j = int(np.flatnonzero(bad)[0])
                x = float(marks[j])
                why = "is too large (mark ids must be below 2**63)" if np.isfinite(x) and x == round(x) else \
                    "is not an integer"
                raise fail(f"mark {x!r} at event {j} {why}", j)
            m = marks.astype(np.int64)
        else:
            return _as_marks(marks.tolist(), fail)
    else:
        if not isinstance(marks, (list, tuple)):
            raise fail(f"marks must be a list of integers, got {_what(marks)}")
        types = set(map(type, marks))
        if not all(issubclass(t, _NUMBER) and not issubclass(t, (bool, np.bool_)) for t in types):
            j, x = _first(marks, _not_number)
            raise fail(f"mark at event {j} is {_what(x)}, not an integer" + _QUOTED * isinstance(x, (str, bytes)), j)
        if types and all(issubclass(t, (int, np.integer)) for t in types):
            lo, hi = min(marks), max(marks)
            if hi > _INT64_MAX:
                j = marks.index(hi) if isinstance(marks, list) else list(marks).index(hi)
                raise fail(f"mark {_short(int(hi))} at event {j} is too large (mark ids must be below 2**63)", j)
            if lo < -_INT64_MAX:
                j = list(marks).index(lo)
                raise fail(f"negative mark {_short(int(lo))} at event {j}", j)
            m = np.asarray(marks, dtype=np.int64)
        elif any(issubclass(t, (int, np.integer)) for t in types):
            m = _as_marks_mixed(marks, fail)
        else:
            return _as_marks(np.asarray(marks, dtype=np.float64), fail)
    if m.size and m.min() < 0:
        j = int(np.argmin(m))
        raise fail(f"negative mark {int(m[j])} at event {j}", j)
    return m


def _as_marks_mixed(marks: Sequence[Any], fail: Callable[..., DataError]) -> np.ndarray:
    """Integers and floats mixed in one list (rare): floats must be integral; ints are taken exactly (no float
    rounding near ``2**63``)."""
    exact = []
    for j, x in enumerate(marks):
        if isinstance(x, (float, np.floating)) and not (np.isfinite(x) and x == int(x)):
            raise fail(f"mark {float(x)!r} at event {j} is not an integer", j)
        exact.append(int(x))
    hi = max(exact)
    if hi > _INT64_MAX:
        raise fail(f"mark {_short(hi)} at event {exact.index(hi)} is too large (mark ids must be below 2**63)")
    return np.asarray(exact, dtype=np.int64)


def make_sequence(
    times: Sequence[float] | np.ndarray,
    marks: Sequence[int] | np.ndarray,
    *,
    window_end: float | None = None,
    num_marks: int | None = None,
    max_mark: int | None = MAX_MARKS,
    source: str | None = None,
    index: int | None = None,
    mark_source: str | None = None,
    name: str | None = None,
) -> EventSequence:
    """Build and validate one sequence, raising ``DataError`` naming ``source`` and ``index``.

    Checks: times are numbers (not booleans, not strings, not nested lists; ints must fit a float), finite,
    ``>= 0`` and non-decreasing (ties allowed); marks are integers (or integral floats; not booleans or strings),
    ``>= 0``, below ``num_marks`` when given, else below ``max_mark`` (:data:`MAX_MARKS` by default; ``None``
    allows any id below ``2**63``, for remapping); same length, non-empty; ``window_end`` a number ``>= t_n``.
    Problems with the marks name ``mark_source`` when given (the marks file of an RMTPP pair). ``name``: the
    source's own id of the sequence (:attr:`EventSequence.name`).
    """

    def fail(problem: str, event: int | None = None) -> DataError:
        return DataError(problem, source=source, sequence=index, event=event)

    def fail_mark(problem: str, event: int | None = None) -> DataError:
        return DataError(problem, source=mark_source or source, sequence=index, event=event)

    t = _as_times(times, fail)
    m = _as_marks(marks, fail_mark)
    if t.shape[0] != m.shape[0]:
        where = f" in {mark_source.replace(chr(92), '/').rsplit('/', 1)[-1]}" if mark_source else ""
        raise fail(f"{t.shape[0]} times but {m.shape[0]} marks{where}")
    if t.shape[0] == 0:
        raise fail("empty sequence")
    if not np.all(np.isfinite(t)):
        j = int(np.flatnonzero(~np.isfinite(t))[0])
        raise fail(f"non-finite time {float(t[j])!r} at event {j}", j)
    if np.any(t < 0):  # any event, not only the first: sorting cannot fix a negative time
        j = int(np.flatnonzero(t < 0)[0])
        raise fail(f"negative time {float(t[j])!r} at event {j} (times are measured from the window start 0)", j)
    d = np.diff(t)
    if np.any(d < 0):
        j = int(np.flatnonzero(d < 0)[0]) + 1
        raise fail(f"times not sorted: event {j} at {float(t[j])!r} comes before event {j - 1} at {float(t[j - 1])!r}",
                   j)
    if num_marks is not None and m.max() >= num_marks:
        j = int(np.argmax(m))
        raise fail_mark(f"mark {int(m[j])} at event {j} is out of range for {num_marks} marks", j)
    if num_marks is None and max_mark is not None and m.max() >= max_mark:
        j = int(np.argmax(m))
        raise fail_mark(f"mark {int(m[j])} at event {j} exceeds the limit of {max_mark:,} mark ids (MAX_MARKS); "
                        f"if the ids are sparse, remap them to 0..K-1 ({REMAP_HINT})", j)
    if window_end is not None:
        if _not_number(window_end):
            raise fail(f"window end is {_what(window_end)}, not a number")
        window_end = float(window_end)
        if not np.isfinite(window_end) or window_end < t[-1]:
            raise fail(f"window end {window_end!r} is before the last event {float(t[-1])!r}")
    origin = None if source is None or index is None else (str(source), int(index))
    return EventSequence(t, m, window_end, origin, None if name is None else str(name))


def within_sequence_gaps(sequences: Iterable[EventSequence]) -> np.ndarray:
    """``[m]`` float64: the gaps ``t_i - t_{i-1}`` (``i >= 2``) of every sequence, concatenated, in the data's time
    unit; zero gaps (ties) included, the first event's ``t_1`` not (it is measured from the window start)."""
    parts = [np.diff(np.asarray(s.times, dtype=np.float64)) for s in sequences if len(s.times) > 1]
    return np.concatenate(parts) if parts else np.zeros(0)


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


# Largest finite value of each floating dtype a batch can be cast to (``Batch`` casts times, gaps, window ends).
_DTYPE_MAX = {
    "float16": float(np.finfo(np.float16).max),
    "bfloat16": 3.3895313892515355e38,
    "float32": float(np.finfo(np.float32).max),
    "float64": float(np.finfo(np.float64).max),
}
# Smallest positive normal value of each: a gap below it becomes 0 or subnormal (a few bits) in a batch.
_DTYPE_TINY = {
    "float16": float(np.finfo(np.float16).tiny),
    "bfloat16": 1.1754943508222875e-38,
    "float32": float(np.finfo(np.float32).tiny),
    "float64": float(np.finfo(np.float64).tiny),
}


def check_dtype_range(
    parts: Mapping[str, Sequence[EventSequence]], dtype: Any, *, source: str | None = None, show: int = 10
) -> None:
    """Refuse data whose times do not fit ``dtype`` (a ``torch.dtype``, numpy dtype or name such as
    ``"float32"``): ``Batch`` casts absolute times, gaps and window ends to the run's dtype, where

    * a value beyond the dtype's largest finite number becomes ``inf`` (a NaN loss: the trainer skips the step,
      validation NLLs become null). Times are sorted and ``>= 0`` and gaps are at most the times, so the last time
      and the window end of each sequence decide;
    * a positive gap (``tau_i``, the first event's ``t_1`` included, and the survival gap ``T - t_n``) below the
      dtype's smallest normal number (``finfo.tiny``: 1.2e-38 for float32) becomes 0, a tie, or keeps a few bits
      of precision; with every gap that small the automatic time scale itself is 0 there and every loss NaN
      (times in units of 1e-200 trained "successfully" with null metrics).

    Raises ``DataError`` naming ``source``, each part (``""``: none) with its offending sequences (the first
    ``show``, by index and, where they have one, their ``seq_id``), the limit, and what works: ``data.dtype:
    float64``, or dropping or rescaling those sequences. Cost: a few vectorised passes over each part's times.
    """
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPE_MAX:
        raise DataError(f"unknown floating dtype {dtype!r} (known: {', '.join(_DTYPE_MAX)})", source=source)
    limit, tiny = _DTYPE_MAX[name], _DTYPE_TINY[name]
    found: dict[str, list[str]] = {"large": [], "small": []}
    total = {"large": 0, "small": 0}
    for part, seqs in parts.items():
        seqs = list(seqs)
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        if not lengths.any():
            continue
        times = np.concatenate([s.times for s in seqs])
        ends = np.cumsum(lengths)
        starts = ends - lengths
        taus = np.diff(times, prepend=0.0)
        some = lengths > 0
        taus[starts[some]] = times[starts[some]]  # tau_1 = t_1: measured from the window start 0
        window = np.array([np.nan if s.window_end is None else s.window_end for s in seqs], dtype=np.float64)
        last = np.full(len(seqs), np.nan)
        last[some] = times[ends[some] - 1]
        with np.errstate(invalid="ignore"):
            large = some & ((last > limit) | (window > limit))
            survival = window - last
            small = some & ((survival > 0) & (survival < tiny))
        seq_of = np.repeat(np.arange(len(seqs)), lengths)
        small[seq_of[(taus > 0) & (taus < tiny)]] = True
        for kind, bad in (("large", large), ("small", small)):
            idx = np.flatnonzero(bad)
            if idx.size:
                total[kind] += int(idx.size)
                listed = ", ".join(str(i) if seqs[i].name is None else f"{i} (seq_id {seqs[i].name!r})"
                                   for i in idx[:show].tolist())
                more = f" (+{idx.size - show} more)" if idx.size > show else ""
                found[kind].append(f"{part + ' ' if part else ''}sequences {listed}{more} of {len(seqs)}")
    if found["large"]:
        raise DataError(
            f"{total['large']} sequence(s) have times beyond {name}'s range (largest {limit:.3g}): "
            f"{'; '.join(found['large'])}; use data.dtype: float64, or drop or rescale these sequences",
            source=source,
        )
    if found["small"]:
        raise DataError(
            f"{total['small']} sequence(s) have gaps between events below {name}'s smallest normal number "
            f"({tiny:.3g}), which become 0 (ties) or lose their precision there: {'; '.join(found['small'])}; "
            f"use data.dtype: float64, or give the times in a smaller unit (multiply them by a power of 10)",
            source=source,
        )
