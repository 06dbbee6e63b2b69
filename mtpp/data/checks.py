"""Checks of the data a Python caller hands to an entry point, shared by every one of them.

``fit(model, data)``, ``evaluate(model, data=...)``, ``predict(..., sequences=...)`` and ``generate(...)`` take
sequences that no reader has validated (a ``Dataset`` edited by hand, ``EventSequence`` objects built directly,
another dataset's parts) and a model built for some number of marks ``K``. A mark ``>= K`` would index past the
model's embedding table (a torch ``IndexError`` many frames deep), a non-finite or unsorted time gives a NaN loss
or wrong gaps, a time beyond the run's floating dtype becomes ``inf`` in every batch. These functions refuse such
data in one line (``DataError``) naming the data, the sequence, the event and what works, **before** any work or
file:

* :func:`check_sequences`: one list of sequences against a number of marks (and a dtype);
* :func:`check_parts`: the train / val / test parts a run trains on (each non-empty, then the above, then the
  dtype range over all parts at once); what ``mtpp train`` (``mtpp.training.setup.load_data``) and
  ``fit(model, data)`` (``mtpp.training.api``) both call;
* :func:`sequences_of`: a ``Dataset`` (its ``split`` part), or a list of sequences, from what a caller passed;
* :func:`check_batch_size`: a positive integer or ``None``; :func:`check_int`, :func:`check_real`,
  :func:`check_flag`: the other numbers and switches of the Python entry points (``generate``'s ``events``,
  ``predict``'s ``level``, ...), refused in one line naming the argument, never a ``TypeError`` from inside;
* :func:`shown`: a value as a message shows it (a short ``repr``, else its type and shape);
* :func:`marks_absent_from_train`: not a refusal but a note: the marks that occur in the val / test parts and
  never in the train part (the run header says it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mtpp.data.sequence import EventSequence, check_dtype_range
from mtpp.errors import DataError, MtppError

__all__ = ["check_sequences", "check_parts", "sequences_of", "is_dataset", "check_batch_size", "check_int",
           "check_real", "check_flag", "shown", "marks_absent_from_train"]

PARTS = ("train", "val", "test")


def is_dataset(data: Any) -> bool:
    """Whether ``data`` has ``train``, ``val`` and ``test`` parts (a ``Dataset`` of ``load_dataset``, a
    ``RunData``)."""
    return all(hasattr(data, p) for p in PARTS)


def sequences_of(data: Any, split: str, what: str) -> Any:
    """The sequences a caller means by ``data``: a dataset's ``split`` part (``train`` / ``val`` / ``test``), or
    ``data`` itself (a list of sequences; :func:`check_sequences` checks it). A name or a path is refused, saying
    to load it (``load_dataset``), since how to load it (split, options) would be a guess. ``what``: the argument
    as the message names it (``"evaluate(model, data=...)"``)."""
    if isinstance(data, (str, Path)):
        raise DataError(f"{what}: got {str(data)!r}, a dataset name or path, not data; pass "
                        f"load_dataset({str(data)!r}) (its {split} part is used) or a list of EventSequence")
    if is_dataset(data):
        if split not in PARTS:
            raise MtppError(f"unknown split {split!r}; valid: {', '.join(PARTS)}")
        return getattr(data, split)
    return data


def check_sequences(
    sequences: Any, num_marks: int, *, what: str = "sequences", dtype: Any = None, whose: str = "the model",
) -> list[EventSequence]:  # fmt: skip
    """``sequences`` as a list, refused (``DataError`` naming ``what``, the sequence, its ``seq_id`` where it has a
    ``name``, and the event) unless every item is an ``EventSequence`` of at least one event whose times are 1-D,
    finite, ``>= 0`` and non-decreasing, with as many marks, every mark in ``[0, num_marks)`` (``whose``: who knows
    ``num_marks`` marks, for the message: ``"the model"``, or ``"the run DIR"``, whose fix is the run's data's ids), a
    window end ``None`` or finite and ``>= `` the last time, and (``dtype`` given: a ``torch.dtype`` or
    ``"float32"``) every time within ``dtype``'s range (:func:`~mtpp.data.sequence.check_dtype_range`). Cost: a few
    vectorised passes per sequence."""
    if isinstance(sequences, (str, bytes, Path)) or is_dataset(sequences):
        raise DataError(f"{what}: expected a list of EventSequence, got {type(sequences).__name__}"
                        + (" (pass load_dataset(...) or its .test)" if isinstance(sequences, (str, Path)) else ""))
    try:
        seqs = list(sequences)
    except TypeError:
        raise DataError(f"{what}: expected a list of EventSequence (or a Dataset), got "
                        f"{type(sequences).__name__}") from None
    k = int(num_marks)
    for i, s in enumerate(seqs):
        def fail(problem: str) -> DataError:
            name = getattr(s, "name", None)  # the data's own id of the sequence (a table's seq_id), when it has one
            return DataError(problem + (f" (seq_id {name!r})" if name is not None else ""), source=what, sequence=i)

        if not isinstance(s, EventSequence):
            raise fail(f"is a {type(s).__name__}, not an EventSequence (load_dataset's parts hold them; "
                       "mtpp.data.sequence.make_sequence builds one from times and marks)")
        t, m = s.times, s.marks
        if t.ndim != 1 or m.shape != t.shape:
            raise fail(f"times of shape {t.shape} and marks of shape {m.shape}: expected two flat arrays of one length")
        if t.size == 0:
            raise fail("has no events (0 events): a model scores, predicts and continues sequences of at least one "
                       "event; drop it")
        if t.size:
            bad = ~np.isfinite(t)
            if bad.any():
                j = int(np.argmax(bad))
                raise fail(f"time {float(t[j])!r} at event {j} is not a finite number")
            if t[0] < 0:
                raise fail(f"time {float(t[0])!r} at event 0 is negative (times start at the window start, 0)")
            back = np.diff(t) < 0
            if back.any():
                j = int(np.argmax(back)) + 1
                raise fail(f"times out of order at event {j} ({float(t[j])!r} after {float(t[j - 1])!r}); sort them "
                           "(load_dataset(..., sort=True))")
            lo, hi = int(m.min()), int(m.max())
            if lo < 0 or hi >= k:
                x = hi if hi >= k else lo
                j = int(np.argmax(m == x))
                fix = ("give marks in the ids of the run's data" if whose.startswith("the run") else
                       "build the model for the data's marks (build_model(cfg, ds.num_marks)) or pass data with "
                       "those marks")
                raise fail(f"mark {x} at event {j} is out of range for the {k} marks of {whose} "
                           f"(marks are 0..{k - 1}); {fix}")
        w = s.window_end
        if w is not None and (not np.isfinite(w) or (t.size and w < t[-1])):
            raise fail(f"window end {float(w)!r} is not a finite time at or after the last event")
    if dtype is not None:
        check_dtype_range({"": seqs}, dtype, source=what)
    return seqs


def check_parts(
    parts: Mapping[str, Sequence[EventSequence]], num_marks: int, dtype: Any, *, source: str,
    whose: str = "the data",
) -> None:  # fmt: skip
    """The parts a run trains and is scored on (``{"train": [...], "val": [...], "test": [...]}``): each
    non-empty, each passing :func:`check_sequences` against ``num_marks``, and all their times within ``dtype``'s
    range (one message listing every offending sequence of every part). ``DataError`` naming ``source`` (the
    dataset) and the part. ``mtpp train`` and ``fit(model, data)`` both call it before the run folder is
    touched."""
    for part, seqs in parts.items():
        if len(seqs) == 0:
            raise DataError(f"the {part} part is empty (0 sequences)", source=source)
        check_sequences(seqs, num_marks, what=f"{source}: {part}", whose=whose)
    check_dtype_range(parts, dtype, source=source)


def check_batch_size(batch_size: Any, what: str = "batch_size") -> int | None:
    """``batch_size`` when it is ``None`` or a positive integer; ``MtppError`` otherwise (0 is not "the
    default": it is refused, as a negative one or a non-integer is)."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise MtppError(f"{what} must be a positive integer (or None for the default), got {shown(batch_size)}")
    return int(batch_size)


def shown(value: Any, width: int = 60) -> str:
    """``value`` as an error message shows it: its ``repr`` when that is one short line, else its type (with the
    shape or length of an array, a table or a list), so that a DataFrame or an array passed by mistake never
    fills the terminal with its contents."""
    r = repr(value)
    if "\n" not in r and len(r) <= width:
        return r
    kind = type(value).__name__
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple) or type(shape).__name__ == "Size":
        return f"a {kind} of shape {tuple(shape)}"
    if hasattr(value, "__len__"):
        try:
            return f"a {kind} of length {len(value)}"
        except TypeError:
            pass
    return f"a {kind} ({r.splitlines()[0][: width - 5]}...)" if r else f"a {kind}"


def check_int(value: Any, what: str, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an ``int`` when it is an integer (a Python or numpy integer, not a boolean) in
    ``[minimum, maximum]``; ``MtppError`` naming ``what`` otherwise (``2.5``, ``"3"``, ``True``, an array)."""
    import operator

    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        n = None
    if n is None or n < minimum or (maximum is not None and n > maximum):
        bound = f"in {minimum} .. {maximum}" if maximum is not None else f">= {minimum}"
        raise MtppError(f"{what} must be an integer {bound}, got {shown(value)}")
    return int(n)


def check_real(value: Any, what: str, low: float, high: float | None = None, *, closed: bool = False) -> float:
    """``value`` as a ``float`` when it is a finite real number (Python, numpy or a one-element tensor; not a
    boolean or a string) above ``low`` and below ``high`` (bounds included when ``closed``); ``MtppError``
    naming ``what`` otherwise."""
    x = None
    if not isinstance(value, (bool, np.bool_, str, bytes)):
        try:
            x = float(value)
        except (TypeError, ValueError, RuntimeError):
            x = None
    above = x is not None and (x >= low if closed else x > low)
    below = x is not None and (high is None or (x <= high if closed else x < high))
    if x is None or not np.isfinite(x) or not above or not below:
        lo, hi = ("[", "]") if closed else ("(", ")")
        where = f"in {lo}{low:g}, {high:g}{hi}" if high is not None else (f">= {low:g}" if closed else f"> {low:g}")
        raise MtppError(f"{what} must be a finite number {where}, got {shown(value)}")
    return x


def check_flag(value: Any, what: str, none: bool = False) -> bool | None:
    """``value`` when it is ``True`` or ``False`` (or ``None`` where ``none``); ``MtppError`` naming ``what``
    otherwise (a string such as ``"no"`` is truthy, so it is refused rather than read)."""
    if (value is None and none) or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    raise MtppError(f"{what} must be True or False{' (or None)' if none else ''}, got {shown(value)}")


def marks_absent_from_train(data: Any, shown: int = 10) -> str | None:
    """A note naming the marks that occur in ``data``'s val or test part but never in its train part, with their
    event counts; ``None`` when every evaluated mark occurs in training (or ``data`` has no ``num_marks``).

    A model learns nothing about such a mark but to give it little probability, so the mark metrics (``L_M``,
    accuracy, ECE) of those events measure that. ``data``: ``.train`` / ``.val`` / ``.test`` lists of
    ``EventSequence`` (the parts a run uses, after any ``max_sequences`` cut) and ``num_marks`` ``K``; marks are the
    model's ids ``0..K-1``, at most ``shown`` of them listed. One ``bincount`` per part (no loop over events)."""
    k = getattr(data, "num_marks", None)
    if not isinstance(k, (int, np.integer)) or k <= 0:
        return None

    def counts(seqs: Sequence[EventSequence]) -> np.ndarray:
        marks = [np.asarray(s.marks, dtype=np.int64) for s in seqs]
        flat = np.concatenate(marks) if marks else np.zeros(0, dtype=np.int64)
        return np.bincount(flat[(flat >= 0) & (flat < k)], minlength=k)

    train, val, test = (counts(getattr(data, part, None) or []) for part in ("train", "val", "test"))
    unseen = np.flatnonzero((train == 0) & (val + test > 0))
    if unseen.size == 0:
        return None
    more = f", ... ({unseen.size} marks)" if unseen.size > shown else ""
    listed = ", ".join(str(int(m)) for m in unseen[:shown]) + more
    return (f"marks absent from the train part but present in val / test: {listed} ({int(val[unseen].sum())} val / "
            f"{int(test[unseen].sum())} test events): the model can only learn to give them little probability, and "
            "the mark metrics (L_M, accuracy, ECE) of those events measure that")
