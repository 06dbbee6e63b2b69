"""Readers (and the canonical writer) for the on-disk formats of marked event sequences.

Every reader returns a :class:`ReadResult`: named *parts* (``"train"``, ``"val"``, ``"split_0/test"``, ``"all"``,
...) each holding a list of validated :class:`EventSequence`, plus the number of marks. Every sequence goes
through :func:`mtpp.data.sequence.make_sequence` with ``source=<file>`` and ``index=<position in that file>``, so
any problem is a :class:`DataError` naming the file and the sequence.

Formats (``detect_format`` / ``read_any`` pick one from the bytes and the file name; ``.gz`` is transparent and
detected by its magic bytes, not its name):

``bosser``
    JSON list of sequences, each a list of ``{"time": float, "labels": [int]}`` (Bosser & Ben Taieb).
    ``labels`` must have length 1 (multi-label events are an error). A folder of ``split_k/{train,val,test,cal}.json``
    plus ``args.json`` is a *split folder*; its ``args.json`` ``marks`` gives the number of marks.
    Optional sidecar ``<part>.windows.json`` (written by :func:`write_split_folder` when sequences carry an
    observation window end) holds one window end (or ``null``) per sequence.
``easytpp_json``
    JSON list of ``{"dim_process", "time_since_start", "time_since_last_event", "type_event", ...}``.
``easytpp_pickle``
    Pickle dict ``{"dim_process": int, "<split>": [[{"time_since_start", "type_event", ...}, ...], ...]}``
    (EasyTPP / NHP / THP pickles; split keys ``train``, ``dev``, ``valid``, ``test``; empty splits are skipped).
``gntpp_pickle``
    Pickle dict of object arrays ``{"timestamps", "types", "event_type_num", ...}`` (GNTPP).
``ifl_npz``
    ``.npz`` with object arrays ``arrival_times`` and optional ``marks`` (ifl-tpp). Unmarked sets get mark 0 and
    one mark.
``torch_zip``
    A ``torch.save`` zip whose ``*/data.pkl`` is ``{"sequences": [{"t_start", "t_end", "arrival_times", "marks"}],
    "num_marks"}`` (joint_tpp / ifl-tpp MIMIC-II). Read without torch.
``rmtpp``
    Paired whitespace-separated text files ``time*.txt`` and ``event*.txt`` / ``marker*.txt``: line ``i`` of both is
    sequence ``i``. Marks are 1-based in most RMTPP sets, 0-based in some (yelp): ``mark_base=None`` detects it per
    dataset (all pairs read together: 0-based if any mark is 0, else 1-based); pass ``mark_base=0`` or ``1`` to force.
``table``
    A long table (``.csv``, ``.csv.gz`` or ``.parquet``) with columns ``seq_id``, ``time`` and ``mark`` (optional:
    absent means unmarked) and optionally ``split`` (one part per value). Rows of one sequence keep their file order.

Time conventions: times are kept as given (absolute, not shifted), and must be ``>= 0``. EasyTPP's
``time_since_start`` is relative to the first event of each sequence in most sets (so the first event is at 0 and
``tau_1 = 0``); it is used as the absolute time without change (``time_since_last_event`` is ignored: it is
redundant). GNTPP ``timestamps`` are used as given (``intervals`` ignored). The joint_tpp pickle gives a window
``[t_start, t_end]``: times and window end are shifted by ``t_start`` (0 in the staged file), ``t_end`` becomes
``window_end``. RMTPP yelp has negative times: it is rejected (``negative time``), not shifted.

Mark ids: at most :data:`~mtpp.data.sequence.MAX_MARKS` (1,000,000) mark types, declared (``dim_process``,
``num_marks``, ``marks``, ``event_type_num``) or inferred (``1 + largest id``); larger ids are refused with a
``DataError`` naming the sequence, unless ``ReadOptions.remap_marks`` maps the observed ids (any up to ``2**63``)
to ``0..K-1`` in increasing order (all parts and inputs of one read share one map, kept in
``ReadResult.meta["mark_ids"]``). When fewer than half the ids below ``K`` occur, a note says so (and suggests
remapping). Header fields must have their type: a count is an integer (an integral float is accepted, a boolean,
fraction or string is not), a window bound is a number.

A JSON object that gives one key twice (``{"time": 0.5, "time": 0.7}``) is a ``DataError`` naming the key, both values
and the sequence (``json`` would keep the last value without a word).

Text is UTF-8 (a UTF-8 or UTF-16 byte-order mark is honoured); RMTPP lines end at ``\n`` (``\r\n`` too) and
only there: form feeds or NEL inside a line are whitespace, not line breaks. A blank line inside an RMTPP file is
an empty sequence (an error, or dropped and counted with ``drop_invalid``); blank lines at the end are ignored.

Pickles are only ever loaded with :class:`RestrictedUnpickler`, which allows plain containers and the few numpy
callables needed to rebuild arrays and scalars, and refuses every other class with a ``DataError``. Python 2
pickles (``str`` as bytes) are read with ``encoding="latin1"``, the setting the standard library documents for
them, through the same unpickler.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import gzip
import io
import json
import logging
import os
import pickle
import re
import stat
import warnings
import zipfile
import zlib
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from mtpp.data.sequence import (DATE_TIME_HINT, MAX_MARKS, REMAP_HINT, EventSequence, infer_num_marks, is_date_time,
                                make_sequence)
from mtpp.errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "ReadOptions",
    "ReadResult",
    "DataFile",
    "RestrictedUnpickler",
    "restricted_loads",
    "open_bytes",
    "detect_format",
    "scan_folder",
    "read_any",
    "read_file",
    "read_folder",
    "read_split",
    "is_split_folder",
    "read_bosser_json",
    "read_easytpp_json",
    "read_pickle",
    "read_npz",
    "read_torch_zip",
    "read_rmtpp_pair",
    "read_rmtpp",
    "read_table",
    "write_bosser_json",
    "write_split_folder",
    "normalise_part",
    "remap_marks",
    "finish_marks",
    "MAX_MARKS",
]

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
PARQUET_MAGIC = b"PAR1"

# Part names, in any case: dev / valid / validation / eval mean the validation set, training / testing the others.
_PART_ALIASES = {"dev": "val", "valid": "val", "validation": "val", "eval": "val", "training": "train",
                 "testing": "test"}  # fmt: skip
PARTS = ("train", "val", "test")
"""The parts of a split; ``normalise_part`` maps the accepted spellings onto them."""
_SKIP_FILES = {"args.json", "meta.txt", "manifest.md", "readme.md", "provenance.tsv"}
_RUN_MARKERS = ("best.pt", "checkpoint.pt", "log.jsonl")
"""Files that, beside a ``config.yaml``, make a folder a run of ``mtpp train`` (``mtpp.runs``), not data."""


def normalise_part(name: str) -> str:
    """``Train`` / ``training`` -> ``train``; ``dev`` / ``valid`` / ``validation`` / ``eval`` -> ``val``;
    ``testing`` -> ``test`` (any case, surrounding blanks ignored); other names lower-cased, otherwise unchanged."""
    low = str(name).strip().lower()
    return _PART_ALIASES.get(low, low)


# --------------------------------------------------------------------------------------------------------------
# Options and results


@dataclass
class ReadOptions:
    """How readers treat imperfect input.

    sort: sort each sequence whose times are not sorted (stable, marks follow) instead of raising; the number of
        sequences sorted is reported in ``ReadResult.notes``.
    mark_base: RMTPP marks are ``mark_base``-based (0 or 1); ``None`` detects it per dataset.
    drop_invalid: skip sequences that fail validation, counting them per reason (``ReadResult.dropped``),
        instead of raising. Default ``False``: the first bad sequence is an error.
    use_window: in a split folder whose ``split_k/args.json`` gives a numeric ``window`` (a common observation
        window end, e.g. the synthetic Hawkes data), attach it as every sequence's ``window_end``. Default
        ``False``: the benchmark convention, the window ends at the last event.
    remap_marks: map the observed mark ids to ``0..K-1`` (increasing order) after reading, so sparse or huge ids
        (beyond :data:`MAX_MARKS`) give ``K`` = the number of distinct ids. Default ``False``: ids are kept.
    rmtpp_fold: in an RMTPP folder, read only fold ``k``'s pairs (``time-k-train.txt``, ``time-k-test.txt``, ...).
        For folders whose folds cut one stream at different points (the book-order set): their union would hold
        the same events in several sequences. Default ``None``: every pair (or the full pair).
    """

    sort: bool = False
    mark_base: int | None = None
    drop_invalid: bool = False
    use_window: bool = False
    remap_marks: bool = False
    rmtpp_fold: int | None = None


@dataclass
class ReadResult:
    """What a reader found.

    parts: part name -> sequences, in file order (not de-duplicated).
    num_marks: number of mark types (declared by the file where it has one, else ``1 + max mark``).
    format: the detected format name.
    source: the file or folder read.
    notes: human-readable remarks (sorted sequences, skipped files, ...).
    dropped: reason -> number of sequences skipped (only with ``drop_invalid``).
    files: the data files read.
    meta: extra metadata found (e.g. a split folder's ``args.json``).
    """

    parts: dict[str, list[EventSequence]]
    num_marks: int
    format: str
    source: str
    notes: list[str] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    files: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sequences(self) -> list[EventSequence]:
        """All parts concatenated in part order (may contain duplicates across parts)."""
        return [s for seqs in self.parts.values() for s in seqs]

    @property
    def num_sequences(self) -> int:
        return sum(len(v) for v in self.parts.values())

    @property
    def num_events(self) -> int:
        return sum(len(s) for v in self.parts.values() for s in v)


_READING: ContextVar[Any] = ContextVar("mtpp_reading_progress", default=None)
"""The progress bar of the read in progress (``reading_progress``), or ``None``: every sequence a reader builds
(``_Builder``) advances it."""
_TICK = 1000
"""Sequences per update of the reading bar (one ``tqdm.update`` per ``_TICK`` sequences)."""


@contextlib.contextmanager
def reading_progress(enabled: bool, desc: str) -> Iterator[None]:
    """While active, a tqdm bar counts the sequences read (``desc``, unit ``seq``; on a terminal only, as every
    bar of mtpp: ``disable=None``), each file named as it is read (``_note_file``). Reading 100,000 sequences of a
    split folder took 11 s without a word. Nested reads (a split folder's files) share the outer bar; disabled:
    nothing."""
    if not enabled or _READING.get() is not None:
        yield
        return
    from tqdm.auto import tqdm

    with tqdm(desc=desc, unit="seq", leave=False, disable=None, unit_scale=True) as bar:
        bar.pending = 0  # sequences built since the last update
        token = _READING.set(bar)
        try:
            yield
        finally:
            _READING.reset(token)
            bar.update(bar.pending)


def _note_file(path: str | Path) -> None:
    """Name the file being read on the reading bar (``reading_progress``), if any."""
    bar = _READING.get()
    if bar is not None:
        bar.set_postfix_str(Path(path).name, refresh=True)


class _Builder:
    """Validates sequences for one file, applying ``ReadOptions`` (sorting, dropping) and counting."""

    def __init__(self, source: str | Path, options: ReadOptions | None, num_marks: int | None = None,
                 mark_source: str | Path | None = None) -> None:
        self.source = str(source)
        self.mark_source = None if mark_source is None else str(mark_source)
        self.options = options or ReadOptions()
        self.num_marks = num_marks
        self.max_mark = None if self.options.remap_marks else MAX_MARKS
        self.sorted = 0
        self.dropped: Counter = Counter()
        self.disagreeing = 0  # EasyTPP records whose time_since_last_event contradicts time_since_start
        self.first_disagreement = ""

    def __call__(self, times: Any, marks: Any, index: int, window_end: float | None = None,
                 name: str | None = None) -> EventSequence | None:
        bar = _READING.get()
        if bar is not None:
            bar.pending += 1
            if bar.pending >= _TICK:
                bar.update(bar.pending)
                bar.pending = 0
        if self.options.sort:
            times, marks = self._maybe_sort(times, marks)
        try:
            return make_sequence(
                times, marks, window_end=window_end, num_marks=self.num_marks, max_mark=self.max_mark,
                source=self.source, index=index, mark_source=self.mark_source, name=name,
            )
        except DataError as e:
            if not self.options.drop_invalid:
                if self.num_marks is not None and "out of range" in e.problem:
                    raise DataError(f"{e.problem} (the file declares {self.num_marks} marks)",
                                    source=e.source, sequence=index, event=e.event) from None
                if "not sorted" in e.problem:
                    raise DataError(f"{e.problem} (to sort such sequences and count them: data.sort=true in a run "
                                    "config, --sort for mtpp data prepare, ReadOptions(sort=True))",
                                    source=self.source, sequence=index, event=e.event) from None
                raise
            self.dropped[drop_reason(e.problem)] += 1
            return None

    def consistent(self, found: tuple[str | None, str | None], index: int) -> bool:
        """``found = (problem, disagreement)`` (:func:`easytpp_inconsistency`): a disagreement is counted for a
        note; a problem is a ``DataError`` naming the sequence, or with ``drop_invalid`` the sequence is counted as
        dropped (``False``: skip it)."""
        problem, disagreement = found
        if disagreement is not None:
            self.disagreeing += 1
            self.first_disagreement = self.first_disagreement or f"sequence {index}: {disagreement}"
        if problem is None:
            return True
        if not self.options.drop_invalid:
            raise DataError(problem, source=self.source, sequence=index)
        self.dropped[drop_reason(problem)] += 1
        return False

    def _maybe_sort(self, times: Any, marks: Any) -> tuple[Any, Any]:
        try:
            t = np.asarray(times, dtype=np.float64)
            m = np.asarray(marks)
        except (TypeError, ValueError):
            return times, marks  # make_sequence reports it
        if t.ndim == 1 and m.shape == t.shape and t.size > 1 and np.any(np.diff(t) < 0):
            order = np.argsort(t, kind="stable")
            self.sorted += 1
            return t[order], m[order]
        return times, marks

    def notes(self) -> list[str]:
        out = []
        if self.sorted:
            out.append(f"{self.source}: sorted the times of {self.sorted} unsorted sequence(s)")
        for reason, n in sorted(self.dropped.items()):
            out.append(f"{self.source}: dropped {n} invalid sequence(s): {reason}")
        if self.disagreeing:
            out.append(f"{self.source}: time_since_last_event contradicts time_since_start in {self.disagreeing} "
                       f"sequence(s) (first: {self.first_disagreement}); the times are read from time_since_start")
        return out


_REASON_PATTERNS = (
    ("times not sorted", "unsorted times"),
    ("negative time", "negative time"),
    ("non-finite time", "non-finite time"),
    ("empty sequence", "empty sequence"),
    ("out of range", "mark out of range"),
    ("negative mark", "negative mark"),
    ("marks must be integers", "non-integer mark"),
    ("marks are not integers", "non-integer mark"),
    ("not an integer", "non-integer mark"),
    ("exceeds the limit", "mark id beyond MAX_MARKS"),
    ("too large (mark ids", "mark id too large"),
    ("times are not numbers", "non-numeric time"),
    ("not a number", "non-numeric value"),
    ("too large for a float", "time too large"),
    ("window end", "window end before last event"),
    ("times but", "times and marks differ in length"),
)


def drop_reason(problem: str) -> str:
    """A short category for a validation problem (used to count dropped sequences per reason)."""
    for pattern, reason in _REASON_PATTERNS:
        if pattern in problem:
            return reason
    return re.sub(r"[-+]?\d[\d.e+-]*", "N", problem)[:60]


# --------------------------------------------------------------------------------------------------------------
# Bytes, gzip, restricted pickles


def open_bytes(path: str | Path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic (whatever the name says)."""
    path = Path(path)
    _check_regular(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", source=str(path)) from None
    except IsADirectoryError:
        raise DataError("is a folder, expected a file", source=str(path)) from None
    except OSError as e:
        raise DataError(f"cannot read ({e.strerror})", source=str(path)) from None
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"corrupt or truncated gzip file ({e})", source=str(path)) from None
    return raw


def _check_regular(path: Path) -> None:
    """``DataError`` for a broken symbolic link or a FIFO / socket / device (never opened: a FIFO would block)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise DataError(f"broken symbolic link (to {os.readlink(path)})", source=str(path)) from None
        return  # the caller reports a missing file
    except OSError as e:
        raise DataError(f"cannot read ({e.strerror})", source=str(path)) from None
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        raise DataError("not a regular file (a FIFO, socket or device): refusing to read it", source=str(path))


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 text (a UTF-8 BOM dropped); UTF-16 with its byte-order mark is decoded too. Anything else that is
    not UTF-8 is a ``DataError`` naming the first bad byte's offset."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise DataError(f"invalid UTF-16 text at byte {e.start}", source=source) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text: byte {data[e.start:e.start + 1]!r} at offset {e.start} (convert the file "
                        "to UTF-8)", source=source) from None


def _header_count(value: Any, field: str, source: str, options: ReadOptions | None = None) -> int:
    """A declared number of marks (``dim_process``, ``num_marks``, ...): a positive integer (an integral float
    is accepted), at most :data:`MAX_MARKS` unless ``remap_marks``. Anything else is a ``DataError``."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok and isinstance(value, (float, np.floating)) and np.isfinite(value) and value == int(value):
        value, ok = int(value), True
    if not ok:
        raise DataError(f"{field} must be an integer (the number of marks), got {_short_repr(value)}", source=source)
    value = int(value)
    if value < 1:
        raise DataError(f"{field} must be >= 1, got {value}", source=source)
    if value > MAX_MARKS and not (options is not None and options.remap_marks):
        raise DataError(f"{field} {value} exceeds the limit of {MAX_MARKS:,} mark types (MAX_MARKS); if the ids are "
                        f"sparse, remap them to 0..K-1 ({REMAP_HINT})", source=source)
    return value


def _header_number(value: Any, field: str, source: str, index: int | None = None) -> float:
    """A numeric header field (window bound, ``t_start`` / ``t_end``) as a finite float, else ``DataError``."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        try:
            v = float(value)
        except OverflowError:
            v = float("inf")
        if np.isfinite(v):
            return v
    raise DataError(f"{field} must be a finite number, got {_short_repr(value)}", source=source, sequence=index)


def _short_repr(x: Any) -> str:
    """``x`` as a message shows it: its ``repr``, at most 40 characters; a numpy scalar as the Python value it holds
    (``0.5``, not ``np.float64(0.5)``: a Parquet or pickle cell reads as the file's value)."""
    if isinstance(x, np.generic):
        x = x.item()
    r = repr(x)
    return r if len(r) <= 40 else r[:37] + "..."


def _numpy_attr(module: str, name: str) -> Any:
    """Resolve ``numpy.core.*`` (numpy 1 pickles) and ``numpy._core.*`` (numpy 2 pickles) on either numpy."""
    import importlib

    candidates = [module]
    if module.startswith("numpy.core"):
        candidates.insert(0, "numpy._core" + module[len("numpy.core"):])
    elif module.startswith("numpy._core"):
        candidates.append("numpy.core" + module[len("numpy._core"):])
    for mod in candidates:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"{module}.{name}")


class _GuardedArray(np.ndarray):
    """What ``numpy.ndarray`` resolves to inside :class:`RestrictedUnpickler`: refuses the two ways a few bytes
    of pickle could make numpy allocate gigabytes. An object array's state is checked against its shape before
    numpy allocates the shape (a flipped byte in a shape asked for 21 GB in the fuzzer); building a non-empty
    array directly (``numpy.ndarray((10**10,))``) is refused (pickles build arrays through ``_reconstruct`` with
    shape ``(0,)`` and then their state). Converted back to plain ``ndarray`` after loading."""

    built = 0  # how many were built (process-wide count: tells restricted_loads whether to convert)

    def __new__(cls, shape: Any = (0,), *args: Any, **kwargs: Any) -> "_GuardedArray":
        if _count(shape) != 0:
            raise ValueError(f"refusing numpy.ndarray({shape!r}) built directly by a pickle")
        return super().__new__(cls, shape, *args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) in (4, 5):
            shape, dtype, data = state[-4], state[-3], state[-1]
            if isinstance(dtype, np.dtype) and dtype.hasobject:
                n = _count(shape)
                if not isinstance(data, list) or len(data) != n:
                    got = len(data) if isinstance(data, list) else type(data).__name__
                    raise ValueError(f"object array state with shape {shape!r} ({n} items) holds {got} items")
        _GuardedArray.built += 1
        super().__setstate__(state)


def _count(shape: Any) -> int:
    """Number of elements of a shape given as an int or a tuple of ints (ValueError otherwise)."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    n = 1
    for d in dims:
        if not isinstance(d, (int, np.integer)) or d < 0:
            raise ValueError(f"bad array shape {shape!r}")
        n *= int(d)
    return n


def _unguard(obj: Any) -> Any:
    """``obj`` with every :class:`_GuardedArray` (at any depth of lists, tuples, dicts and object arrays) turned
    into a plain ``ndarray`` view. Only called when the pickle built such arrays."""
    if isinstance(obj, np.ndarray):
        arr = obj.view(np.ndarray) if isinstance(obj, _GuardedArray) else obj
        if arr.dtype.hasobject:
            flat = arr.reshape(-1)
            for i in range(flat.size):
                flat[i] = _unguard(flat[i])
        return arr
    if isinstance(obj, list):
        for i, x in enumerate(obj):
            if isinstance(x, (list, tuple, dict, np.ndarray)):
                obj[i] = _unguard(x)
        return obj
    if isinstance(obj, tuple):
        return tuple(_unguard(x) for x in obj)
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (list, tuple, dict, np.ndarray)):
                obj[k] = _unguard(v)
        return obj
    return obj


_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _check_memo_indices(data: bytes, source: str) -> None:
    """Refuse a memo index larger than the pickle itself: CPython's unpickler grows its memo table to the index
    (a 10-byte ``LONG_BINPUT 0x0fffffff`` asks for gigabytes). Real picklers number memo entries from 0, so a
    valid index is below the number of opcodes. One pass of ``pickletools.genops`` (about 0.1 s per MB)."""
    import pickletools

    limit = len(data)
    for op, arg, _ in pickletools.genops(data):
        if op.name in _MEMO_OPS and isinstance(arg, int) and arg > limit:
            raise DataError(f"cannot unpickle: memo index {arg} in a {limit}-byte pickle (corrupt or hostile)",
                            source=source)
        if op.name == "STOP":
            return


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds plain data: builtin containers and numpy arrays / dtypes / scalars.

    Allowed globals: ``numpy.ndarray`` (as :class:`_GuardedArray`), ``numpy.dtype``, ``numpy.dtypes.*DType``,
    ``numpy.{core,_core}.multiarray._reconstruct`` and ``.scalar``, ``_codecs.encode`` (used by protocol-2 numpy
    pickles for raw bytes), and ``collections.OrderedDict``. Anything else is a ``DataError`` naming the class.
    """

    _NUMPY = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # latin1: Python 2 ``str`` values (and numpy arrays pickled by Python 2) decode byte for byte, as the
        # pickle and numpy documentation prescribe; Python 3 pickles hold no such values, so nothing changes there.
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in {("_codecs", "encode"), ("collections", "OrderedDict")}:
            return super().find_class(module, name)
        if (module, name) == ("numpy", "ndarray"):
            return _GuardedArray
        if (module, name) in self._NUMPY or (module == "numpy.dtypes" and name.endswith("DType")):
            return _numpy_attr(module, name)
        raise DataError(
            f"refusing to unpickle {module}.{name}: only plain containers and numpy arrays/scalars are allowed",
            source=self.source,
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DataError("refusing a pickle with persistent references (tensors/storages)", source=self.source)


def restricted_loads(data: bytes, source: str) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; any failure is a ``DataError`` naming ``source``."""
    try:
        _check_memo_indices(data, source)
        before = _GuardedArray.built
        obj = RestrictedUnpickler(io.BytesIO(data), source).load()
        return _unguard(obj) if _GuardedArray.built != before else obj
    except DataError:
        raise
    except RecursionError:
        raise DataError("cannot unpickle: nested too deeply", source=source) from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is bad input
        text = " ".join(str(e).split())
        raise DataError(f"cannot unpickle ({type(e).__name__}: {text[:200]})", source=source) from None


# --------------------------------------------------------------------------------------------------------------
# Format detection


@dataclass(frozen=True)
class DataFile:
    """One data file found in a folder: ``format`` as :func:`detect_format` names it; ``partner`` is the marks
    file of an RMTPP time file; ``part`` the part name the file's sequences get."""

    path: Path
    format: str
    part: str
    partner: Path | None = None


def _strip_suffixes(name: str) -> str:
    for suffix in (".gz",):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def detect_format(path: str | Path, head: bytes | None = None) -> str:
    """The format of one file from its name and first bytes (after gunzip): one of ``bosser``/``easytpp_json``
    (``json`` when the content must be parsed to tell), ``pickle``, ``ifl_npz``, ``torch_zip``, ``table``,
    ``parquet``, ``rmtpp_time``, ``rmtpp_marks`` or ``unknown``."""
    path = Path(path)
    name = _strip_suffixes(path.name.lower())
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv") or name.endswith(".tsv"):
        return "table"
    if name.endswith(".txt"):
        stem = name[:-4]
        if re.search(r"(^|[-_])time([-_]|$)", stem) or stem.startswith("time"):
            return "rmtpp_time"
        if re.search(r"(^|[-_])(event|marker)([-_]|$)", stem) or stem.startswith(("event", "marker")):
            return "rmtpp_marks"
        return "unknown"
    if head is None:
        if not path.is_file():  # a folder, FIFO, socket or broken link: never opened here (a FIFO would block)
            return "unknown"
        try:
            with open(path, "rb") as f:
                head = f.read(4)
        except OSError:
            return "unknown"
    if head[:4] == ZIP_MAGIC:
        return "ifl_npz" if name.endswith(".npz") else "torch_zip"
    if head[:4] == PARQUET_MAGIC:
        return "parquet"
    if name.endswith(".npz"):
        return "ifl_npz"
    if name.endswith((".pkl", ".pickle", ".pt", ".pth")) or head[:1] == b"\x80":
        return "pickle"
    if name.endswith(".json") or head[:1] in (b"[", b"{"):
        return "json"
    if head[:2] == GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as f:
                inner = f.read(4)
        except (OSError, EOFError):
            return "unknown"
        return detect_format(Path(name), inner)
    return "unknown"


def _part_from_stem(stem: str) -> str:
    stem = re.sub(r"_manifold_format$", "", stem)
    return normalise_part(stem)


def _rmtpp_partner(time_file: Path) -> Path | None:
    name = time_file.name
    for word in ("event", "marker"):
        base = _strip_suffixes(name).replace("time", word, 1)
        for cand in (base, base + ".gz"):
            p = time_file.with_name(cand)
            if p.exists():
                return p
    return None


def _rmtpp_part(time_file: Path) -> str:
    stem = _strip_suffixes(time_file.name)[: -len(".txt")]
    rest = re.sub(r"time", "", stem, count=1).strip("-_")
    return normalise_part(rest) if rest else "all"  # time-dev.txt is the val part, as in every other format


def scan_folder(path: str | Path) -> list[DataFile]:
    """The data files of a folder (not recursive; ``split_k`` sub-folders are scanned by :func:`read_folder`):
    detected format and part name for each, RMTPP time files paired with their marks file. Metadata files
    (``args.json``, ``meta.txt``, ``*.windows.json``) and RMTPP marks files are not listed. Hidden files and
    sub-folders are skipped; a broken symbolic link or a FIFO / socket / device is a ``DataError`` (it would
    otherwise lose a part silently, or block)."""
    path = Path(path)
    out: list[DataFile] = []
    for p in sorted(path.iterdir()):
        if p.name.startswith("."):
            continue
        _check_regular(p)
        if not p.is_file() or p.name.lower() in _SKIP_FILES:
            continue
        low = _strip_suffixes(p.name.lower())
        if low.endswith(".windows.json") or low.endswith((".md", ".tsv", ".yaml", ".yml")):
            continue
        fmt = detect_format(p)
        if fmt in ("unknown", "rmtpp_marks"):
            continue
        if fmt == "rmtpp_time":
            out.append(DataFile(p, "rmtpp", _rmtpp_part(p), _rmtpp_partner(p)))
            continue
        stem = low.rsplit(".", 1)[0]
        out.append(DataFile(p, fmt, _part_from_stem(stem)))
    return out


# --------------------------------------------------------------------------------------------------------------
# JSON readers


class _DuplicateKey(Exception):
    """A JSON object that gives one key twice (``json`` would keep only the last value)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook``: the object as a dict, ``_DuplicateKey`` when a key occurs twice."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: dict[str, Any] = {}
        for k, v in pairs:
            if k in seen:
                raise _DuplicateKey(k, seen[k], v)
            seen[k] = v
    return obj


class _Twice(dict):
    """An object that gave a key twice, as the second (locating) parse keeps it."""


def _mark_twice(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    return _Twice(obj) if len(obj) != len(pairs) else obj


def _holds_twice(x: Any) -> bool:
    if isinstance(x, _Twice):
        return True
    items = x.values() if isinstance(x, dict) else x if isinstance(x, list) else ()
    return any(_holds_twice(v) for v in items)


def _load_json(path: Path) -> Any:
    """The parsed JSON of ``path``; ``DataError`` naming the file for invalid JSON, and for an object that gives a
    key twice (``{"time": 0.5, "time": 0.7}``: ``json`` keeps the last value without a word), naming the key, both
    values and, in a list of sequences, the sequence."""
    data = open_bytes(path)
    try:
        return json.loads(data, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise DataError("invalid JSON: nested too deeply", source=str(path)) from None
    except _DuplicateKey as e:
        key, first, second = e.args
        top = json.loads(data, object_pairs_hook=_mark_twice)  # parsed before: only locates the object
        index = next((i for i, x in enumerate(top) if _holds_twice(x)), None) if isinstance(top, list) else None
        raise DataError(f"an object gives the key {key!r} twice ({_short_repr(first)} and {_short_repr(second)}): "
                        "JSON readers keep only the last; remove one", source=str(path), sequence=index) from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, numbers of more than 4300 digits
        raise DataError(f"invalid JSON ({' '.join(str(e).split())[:200]})", source=str(path)) from None


def _expect_list(obj: Any, path: Path, what: str) -> list:
    if not isinstance(obj, list):
        raise DataError(f"expected a JSON list of {what}, got {type(obj).__name__}", source=str(path))
    return obj


def read_bosser_json(
    path: str | Path,
    *,
    num_marks: int | None = None,
    options: ReadOptions | None = None,
    part: str | None = None,
    data: Any = None,
) -> ReadResult:
    """Read one Bosser & Ben Taieb file: JSON list of sequences of ``{"time", "labels": [k]}``.

    A sidecar ``<stem>.windows.json`` next to it, if present, gives each sequence's window end.
    """
    path = Path(path)
    raw = _expect_list(_load_json(path) if data is None else data, path, "sequences")
    windows = _read_windows(path, len(raw))
    build = _Builder(path, options, num_marks)
    seqs: list[EventSequence] = []
    for i, seq in enumerate(raw):
        times, marks = _bosser_events(seq, path, i)
        s = build(times, marks, i, None if windows is None else windows[i])
        if s is not None:
            seqs.append(s)
    k = num_marks if num_marks is not None else infer_num_marks(seqs)
    name = part or _part_from_stem(_strip_suffixes(path.name.lower()).rsplit(".", 1)[0])
    return ReadResult({name: seqs}, k, "bosser", str(path), build.notes(), build.dropped, [str(path)])


def _bosser_events(seq: Any, path: Path, i: int) -> tuple[list, list]:
    if not isinstance(seq, list):
        raise DataError(f"expected a list of events, got {type(seq).__name__}", source=str(path), sequence=i)
    try:
        times = [e["time"] for e in seq]
        labels = [e["labels"] for e in seq]
    except KeyError as e:
        raise DataError(f"event without key {e.args[0]!r} (expected 'time' and 'labels')",
                        source=str(path), sequence=i) from None
    except TypeError:
        raise DataError("events must be objects {'time': ..., 'labels': [...]}", source=str(path), sequence=i) from None
    if not all(isinstance(x, list) and len(x) == 1 for x in labels):
        j = next(j for j, x in enumerate(labels) if not (isinstance(x, list) and len(x) == 1))
        raise DataError(
            f"event {j} has labels {labels[j]!r}: exactly one label per event is supported (multi-label data is not)",
            source=str(path), sequence=i,
        )
    return times, [x[0] for x in labels]


def _read_windows(path: Path, n: int) -> list | None:
    stem = _strip_suffixes(path.name)
    stem = stem[: -len(".json")] if stem.endswith(".json") else stem
    side = path.with_name(stem + ".windows.json")
    if not side.exists():
        return None
    w = _expect_list(_load_json(side), side, "window ends")
    if len(w) != n:
        raise DataError(f"{len(w)} window ends for {n} sequences in {path.name}", source=str(side))
    return w


def read_easytpp_json(
    path: str | Path, *, options: ReadOptions | None = None, part: str | None = None, data: Any = None
) -> ReadResult:
    """Read one EasyTPP JSON file: list of ``{"dim_process", "time_since_start", "type_event", ...}``.

    ``time_since_start`` is used as the absolute time (see the module docstring); ``dim_process`` is the
    number of marks (it must agree across records)."""
    path = Path(path)
    raw = _expect_list(_load_json(path) if data is None else data, path, "sequences")
    dims = {}
    for i, r in enumerate(raw):
        if isinstance(r, dict) and r.get("dim_process") is not None:
            d = _header_count(r["dim_process"], "dim_process", str(path), options)
            dims.setdefault(d, i)
    if len(dims) > 1:
        (a, i), (b, j) = sorted(dims.items(), key=lambda kv: kv[1])[:2]
        raise DataError(f"records disagree on dim_process: {a} (sequence {i}) and {b} (sequence {j})",
                        source=str(path))
    declared = next(iter(dims)) if dims else None
    build = _Builder(path, options, declared)
    seqs: list[EventSequence] = []
    for i, rec in enumerate(raw):
        if not isinstance(rec, dict):
            raise DataError(f"expected an object per sequence, got {type(rec).__name__}", source=str(path), sequence=i)
        times, marks = _get_keys(rec, ("time_since_start", "type_event"), path, i)
        if not build.consistent(easytpp_inconsistency(times, rec.get("seq_len"), rec.get("time_since_last_event")), i):
            continue
        s = build(times, marks, i)
        if s is not None:
            seqs.append(s)
    k = declared if declared is not None else infer_num_marks(seqs)
    name = part or _part_from_stem(_strip_suffixes(path.name.lower()).rsplit(".", 1)[0])
    return ReadResult({name: seqs}, k, "easytpp_json", str(path), build.notes(), build.dropped, [str(path)])


def easytpp_inconsistency(times: Any, seq_len: Any = None, since_last: Any = None) -> tuple[str | None, str | None]:
    """``(problem, disagreement)`` of an EasyTPP record's redundant fields against ``time_since_start``.

    ``problem`` (an error): ``seq_len`` differs from the number of events (a truncated or mis-assembled record),
    or ``time_since_last_event`` has another length or is not numbers. ``disagreement`` (a note; the staged
    LGNJSDE Taobao pickle has such records): ``time_since_last_event`` differs from the gaps of
    ``time_since_start`` from the second event on (``1e-5`` relative; its first value's convention varies).
    Times are always read from ``time_since_start``. Values that are not numbers are left to the sequence's own
    checks."""
    try:
        t = np.asarray(times, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None, None
    if t.ndim != 1:
        return None, None
    if seq_len is not None and isinstance(seq_len, (int, float, np.integer)) and not isinstance(seq_len, bool):
        if seq_len != t.size:
            return f"seq_len is {seq_len} but time_since_start has {t.size} events (a truncated record?)", None
    if since_last is None:
        return None, None
    try:
        d = np.asarray(since_last, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return "time_since_last_event is not a list of numbers", None
    if d.shape != t.shape:
        return f"time_since_last_event has {d.size} values but time_since_start has {t.size} events", None
    if t.size < 2 or not (np.all(np.isfinite(d)) and np.all(np.isfinite(t))):
        return None, None
    gaps = np.diff(t)
    ok = np.isclose(d[1:], gaps, rtol=1e-5, atol=1e-8 * max(1.0, float(np.abs(t).max())))
    if ok.all():
        return None, None
    j = int(np.argmin(ok)) + 1
    return None, (f"time_since_last_event[{j}] = {d[j]:.6g}, time_since_start's gap {gaps[j - 1]:.6g} "
                  f"({int((~ok).sum())} event(s))")


def _get_keys(rec: Mapping, keys: Sequence[str], path: Path, i: int) -> list:
    try:
        return [rec[k] for k in keys]
    except KeyError as e:
        raise DataError(f"missing key {e.args[0]!r} (expected {', '.join(keys)})", source=str(path), sequence=i) from None


def read_json(path: str | Path, *, options: ReadOptions | None = None, num_marks: int | None = None,
              part: str | None = None) -> ReadResult:
    """Read a JSON file, telling Bosser from EasyTPP by the first record."""
    path = Path(path)
    data = _expect_list(_load_json(path), path, "sequences")
    first = data[0] if data else []
    if isinstance(first, dict):
        return read_easytpp_json(path, options=options, part=part, data=data)
    return read_bosser_json(path, num_marks=num_marks, options=options, part=part, data=data)


# --------------------------------------------------------------------------------------------------------------
# Pickles, npz, torch zip


def read_pickle(path: str | Path, *, options: ReadOptions | None = None) -> ReadResult:
    """Read an EasyTPP/NHP/THP pickle (``dim_process`` + split keys) or a GNTPP dict-of-arrays pickle.

    Loaded with :class:`RestrictedUnpickler` only."""
    path = Path(path)
    data = open_bytes(path)
    if data[:4] == ZIP_MAGIC:
        return read_torch_zip(path, options=options)
    obj = restricted_loads(data, str(path))
    if not isinstance(obj, dict):
        raise DataError(f"expected a pickled dict, got {type(obj).__name__}", source=str(path))
    if "timestamps" in obj and "types" in obj:
        return _read_gntpp(obj, path, options)
    if "dim_process" in obj:
        return _read_easytpp_pickle(obj, path, options)
    if "sequences" in obj:
        return _read_ifl_dict(obj, path, options, "pickle")
    raise DataError(
        f"unknown pickle layout with keys {sorted(map(str, obj))[:8]} (expected EasyTPP 'dim_process' + splits, "
        "GNTPP 'timestamps'/'types', or ifl-tpp 'sequences')",
        source=str(path),
    )


_SPLIT_KEYS = {"train", "dev", "valid", "validation", "val", "test", "eval", "cal"}


def _as_list(value: Any) -> list | None:
    """A list, tuple or 1-d object/numeric array as a list; ``None`` for anything else."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return list(value)
    return None


def _read_easytpp_pickle(obj: dict, path: Path, options: ReadOptions | None) -> ReadResult:
    declared = _header_count(obj["dim_process"], "dim_process", str(path), options)
    parts: dict[str, list[EventSequence]] = {}
    notes: list[str] = []
    dropped: Counter = Counter()
    for key, value in obj.items():
        if key in ("dim_process", "args"):
            continue
        value = _as_list(value)
        if value is None:
            if str(key) in _SPLIT_KEYS:
                raise DataError(f"split {key!r} must be a list of sequences, got {type(obj[key]).__name__}",
                                source=str(path))
            notes.append(f"{path}: key {key!r} is not a list of sequences (ignored)")
            continue
        if not value:
            notes.append(f"{path}: split {key!r} is empty (skipped)")
            continue
        label = f"{path} [{key}]"
        build = _Builder(label, options, declared)
        seqs = []
        for i, seq in enumerate(value):
            seq = _as_list(seq)
            if seq is None:
                raise DataError(f"expected a list of events, got {type(value[i]).__name__}", source=label, sequence=i)
            try:
                times = [e["time_since_start"] for e in seq]
                marks = [e["type_event"] for e in seq]
            except KeyError as e:
                raise DataError(f"event without key {e.args[0]!r} (expected 'time_since_start', 'type_event')",
                                source=label, sequence=i) from None
            except (TypeError, IndexError):
                raise DataError("events must be dicts", source=label, sequence=i) from None
            since_last = [e.get("time_since_last_event") for e in seq]
            since_last = None if any(v is None for v in since_last) else since_last
            if not build.consistent(easytpp_inconsistency(times, None, since_last), i):
                continue
            s = build(times, marks, i)
            if s is not None:
                seqs.append(s)
        name = normalise_part(str(key))
        parts.setdefault(name, []).extend(seqs)
        notes += build.notes()
        dropped += build.dropped
    if not parts:
        raise DataError("no non-empty split in this pickle", source=str(path))
    return ReadResult(parts, declared, "easytpp_pickle", str(path), notes, dropped, [str(path)])


def _read_gntpp(obj: dict, path: Path, options: ReadOptions | None) -> ReadResult:
    declared = obj.get("event_type_num")
    declared = None if declared is None else _header_count(declared, "event_type_num", str(path), options)
    ts, ks = _as_list(obj["timestamps"]), _as_list(obj["types"])
    if ts is None or ks is None:
        raise DataError("'timestamps' and 'types' must be lists or 1-d arrays of sequences", source=str(path))
    if len(ts) != len(ks):
        raise DataError(f"{len(ts)} timestamp arrays but {len(ks)} type arrays", source=str(path))
    build = _Builder(path, options, declared)
    seqs = [s for i in range(len(ts)) if (s := build(ts[i], ks[i], i)) is not None]
    k = declared if declared is not None else infer_num_marks(seqs)
    part = _part_from_stem(_strip_suffixes(path.name.lower()).rsplit(".", 1)[0])
    return ReadResult({part: seqs}, k, "gntpp_pickle", str(path), build.notes(), build.dropped, [str(path)])


def _read_ifl_dict(obj: dict, path: Path, options: ReadOptions | None, fmt: str) -> ReadResult:
    raw = _as_list(obj["sequences"])
    if raw is None:
        raise DataError(f"'sequences' must be a list, got {type(obj['sequences']).__name__}", source=str(path))
    declared = obj.get("num_marks")
    declared = None if declared is None else _header_count(declared, "num_marks", str(path), options)
    marked = [isinstance(rec, dict) and rec.get("marks") is not None for rec in raw]
    unmarked = not any(marked)
    if unmarked and declared is not None and declared > 1:
        raise DataError(f"no sequence has 'marks' but num_marks is {declared}", source=str(path))
    build = _Builder(path, options, declared)
    seqs = []
    for i, rec in enumerate(raw):
        if not isinstance(rec, dict):
            raise DataError("expected a dict per sequence", source=str(path), sequence=i)
        (times,) = _get_keys(rec, ("arrival_times",) if unmarked else ("arrival_times", "marks"), path, i)[:1]
        if not unmarked and rec.get("marks") is None:
            raise DataError("missing key 'marks' (other sequences have marks)", source=str(path), sequence=i)
        t0 = rec.get("t_start")
        t0 = 0.0 if t0 is None else _header_number(t0, "t_start", str(path), i)
        t_end = rec.get("t_end")
        t_end = None if t_end is None else _header_number(t_end, "t_end", str(path), i)
        if isinstance(times, np.ndarray) and times.dtype.kind in "iuf":
            times = times.astype(np.float64)
        if t0 != 0.0:
            try:
                times = np.asarray(times, dtype=np.float64) - t0
            except (TypeError, ValueError, OverflowError):
                pass  # make_sequence reports it
        m = np.zeros(_length(times), dtype=np.int64) if unmarked else rec["marks"]
        s = build(times, m, i, None if t_end is None else t_end - t0)
        if s is not None:
            seqs.append(s)
    k = declared if declared is not None else max(infer_num_marks(seqs), 1)
    part = _part_from_stem(_strip_suffixes(path.name.lower()).rsplit(".", 1)[0])
    notes = build.notes() + ([f"{path}: no sequence has marks: unmarked data, every event gets mark 0"]
                             if unmarked else [])
    return ReadResult({part: seqs}, k, fmt, str(path), notes, build.dropped, [str(path)])


def _length(x: Any) -> int:
    try:
        return len(x)
    except TypeError:
        return 1  # a scalar: make_sequence reports it


# What a damaged zip member raises on reading: bad CRC / header (BadZipFile), inflate errors (zlib.error), cut
# data (EOFError), unsupported compression or encryption (NotImplementedError, RuntimeError), bad sizes (ValueError).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError, ValueError)


def _zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(open_bytes(path)))
    except _ZIP_ERRORS as e:
        raise DataError(f"corrupt zip/npz file ({e})", source=str(path)) from None


def _zip_read(zf: zipfile.ZipFile, member: str, source: str) -> bytes:
    try:
        return zf.read(member)
    except _ZIP_ERRORS as e:
        raise DataError(f"corrupt zip member {member!r} ({type(e).__name__}: {e})", source=source) from None


def _npz_array(zf: zipfile.ZipFile, member: str, source: str) -> np.ndarray:
    """Read one ``.npy`` member; object arrays are unpickled with the restricted unpickler. The header's shape
    must match the bytes that follow (no allocation from the header alone)."""
    f = io.BytesIO(_zip_read(zf, member, source))
    try:
        with warnings.catch_warnings():  # numpy parses the header with ast: a damaged one warns about escapes
            warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError, SyntaxError, TypeError, ... on bad headers
        raise DataError(f"cannot read array {member!r}: bad .npy header ({' '.join(str(e).split())[:120]})",
                        source=source) from None
    rest = f.read()
    if dtype.hasobject:
        arr = restricted_loads(rest, f"{source} [{member}]")
        arr = np.asarray(arr, dtype=object) if not isinstance(arr, np.ndarray) else arr
        if arr.shape != tuple(shape):
            raise DataError(f"array {member!r}: header says shape {tuple(shape)}, data has {arr.shape}",
                            source=source)
        return arr
    count = 1
    for n in shape:
        count *= int(n)
    if count * dtype.itemsize != len(rest):
        raise DataError(f"array {member!r}: header says shape {tuple(shape)} ({count * dtype.itemsize:,} bytes), the "
                        f"file holds {len(rest):,} bytes", source=source)
    arr = np.frombuffer(rest, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C")


def read_npz(path: str | Path, *, options: ReadOptions | None = None) -> ReadResult:
    """Read an ifl-tpp ``.npz``: ``arrival_times`` (object array of per-sequence lists) and optional ``marks``.
    Unmarked data gets mark 0 and ``num_marks = 1``."""
    path = Path(path)
    zf = _zip(path)
    members = {n[:-4] if n.endswith(".npy") else n: n for n in zf.namelist()}
    if "arrival_times" not in members:
        raise DataError(f"no 'arrival_times' array (found {sorted(members)})", source=str(path))
    times = _npz_array(zf, members["arrival_times"], str(path))
    marks = _npz_array(zf, members["marks"], str(path)) if "marks" in members else None
    for what, arr in (("arrival_times", times), ("marks", marks)):
        if arr is not None and arr.ndim == 0:
            raise DataError(f"{what!r} is a 0-d array (a scalar); expected one entry per sequence", source=str(path))
    if marks is not None and len(marks) != len(times):
        raise DataError(f"{len(times)} time sequences but {len(marks)} mark sequences", source=str(path))
    if times.dtype != object and times.ndim == 2:  # a rectangular numeric array: one row per sequence
        times = list(times)
    if marks is not None and marks.dtype != object and marks.ndim == 2:
        marks = list(marks)
    declared = None
    if "num_marks" in members:
        declared = _header_count(_npz_array(zf, members["num_marks"], str(path)), "num_marks", str(path), options)
    build = _Builder(path, options, declared)
    seqs = []
    for i in range(len(times)):
        m = marks[i] if marks is not None else np.zeros(len(times[i]), dtype=np.int64)
        s = build(times[i], m, i)
        if s is not None:
            seqs.append(s)
    k = declared if declared is not None else max(infer_num_marks(seqs), 1)
    notes = build.notes() + ([f"{path}: unmarked data, every event gets mark 0"] if marks is None else [])
    part = _part_from_stem(_strip_suffixes(path.name.lower()).rsplit(".", 1)[0])
    return ReadResult({part: seqs}, k, "ifl_npz", str(path), notes, build.dropped, [str(path)])


def read_torch_zip(path: str | Path, *, options: ReadOptions | None = None) -> ReadResult:
    """Read a ``torch.save`` zip holding plain Python (joint_tpp MIMIC-II): ``*/data.pkl`` is unpickled with the
    restricted unpickler, no torch needed. Tensors inside are refused."""
    path = Path(path)
    zf = _zip(path)
    names = [n for n in zf.namelist() if n.endswith("data.pkl")]
    if not names:
        raise DataError(f"zip without a data.pkl (found {zf.namelist()[:5]})", source=str(path))
    obj = restricted_loads(_zip_read(zf, names[0], str(path)), str(path))
    if isinstance(obj, dict) and "sequences" in obj:
        return _read_ifl_dict(obj, path, options, "torch_zip")
    raise DataError("expected {'sequences': [...], 'num_marks': int} inside the torch zip", source=str(path))


# --------------------------------------------------------------------------------------------------------------
# RMTPP text pairs


def _read_lines(path: Path) -> list[str]:
    """The file's lines, split at ``\n`` only (``str.splitlines`` would also split at form feeds, NEL, U+2028,
    ...), ``\r`` stripped, trailing blank lines dropped. Line ``i`` is sequence ``i``: inner blank lines stay."""
    lines = decode_text(open_bytes(path), str(path)).split("\n")
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _parse_times(line: str, path: Path, i: int) -> np.ndarray:
    tokens = line.split()
    try:
        return np.array(tokens, dtype=np.float64)
    except (ValueError, OverflowError):
        bad = next((j, x) for j, x in enumerate(tokens) if not _is_float(x))
        raise DataError(f"times are not numbers: {bad[1][:30]!r} at event {bad[0]}"
                        + (DATE_TIME_HINT if is_date_time(bad[1]) else ""), source=str(path), sequence=i) from None


def _is_float(x: str) -> bool:
    try:
        float(x)
    except ValueError:
        return False
    return True


def _parse_marks(line: str, path: Path, i: int) -> np.ndarray:
    """Integer marks exactly as written (``"3"``, or integral ``"3.0"``); a fraction, a word or an id of 2**63 or
    more is a ``DataError`` naming the marks file (no float rounding, no int64 overflow to a negative id)."""
    tokens = line.split()
    try:
        return np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    out = []
    for j, x in enumerate(tokens):  # error path or integral floats ("3.0"): exact Python ints
        try:
            v = int(x)
        except ValueError:
            try:
                f = float(x)
            except ValueError:
                raise DataError(f"marks are not integers: {x[:30]!r} at event {j}", source=str(path),
                                sequence=i) from None
            if not np.isfinite(f) or f != int(f):
                raise DataError(f"marks must be integers, got {x[:30]!r} at event {j}", source=str(path),
                                sequence=i) from None
            v = int(f)
        if v > 2**63 - 1 or v < -(2**63 - 1):
            raise DataError(f"mark {x[:30]} at event {j} is too large (mark ids must be below 2**63)",
                            source=str(path), sequence=i)
        out.append(v)
    return np.array(out, dtype=np.int64)


def _read_rmtpp_raw(time_file: Path, mark_file: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    tl, ml = _read_lines(time_file), _read_lines(mark_file)
    if len(tl) != len(ml):
        raise DataError(f"{len(tl)} lines of times but {len(ml)} lines of marks in {mark_file.name}",
                        source=str(time_file))
    times = [_parse_times(line, time_file, i) for i, line in enumerate(tl)]
    marks = [_parse_marks(line, mark_file, i) for i, line in enumerate(ml)]
    return times, marks


def _detect_mark_base(marks: Iterable[np.ndarray], option: int | None) -> int:
    if option is not None:
        if option not in (0, 1):
            raise DataError(f"mark_base must be 0 or 1, got {option!r}")
        return option
    lows = [int(m.min()) for m in marks if m.size]
    return 0 if lows and min(lows) <= 0 else 1


def read_rmtpp_pair(time_file: str | Path, mark_file: str | Path | None = None, *,
                    options: ReadOptions | None = None) -> ReadResult:
    """Read one RMTPP pair (marks file found next to the time file when not given)."""
    time_file = Path(time_file)
    mark_file = Path(mark_file) if mark_file is not None else _rmtpp_partner(time_file)
    if mark_file is None:
        raise DataError("no matching event*/marker* file for this time file", source=str(time_file))
    return _read_rmtpp_pairs([DataFile(time_file, "rmtpp", _rmtpp_part(time_file), mark_file)], options,
                             str(time_file))


def _read_rmtpp_pairs(pairs: Sequence[DataFile], options: ReadOptions | None, source: str) -> ReadResult:
    options = options or ReadOptions()
    raw = [(p, *_read_rmtpp_raw(p.path, p.partner)) for p in pairs]
    base = _detect_mark_base((m for _, _, ms in raw for m in ms), options.mark_base)
    parts: dict[str, list[EventSequence]] = {}
    notes = [f"{source}: RMTPP marks read as {base}-based"
             + (" (detected)" if options.mark_base is None else " (given)")
             + (", shifted to 0-based" if base == 1 else "")]
    dropped: Counter = Counter()
    for p, times, marks in raw:
        build = _Builder(p.path, options, mark_source=p.partner)
        seqs = [s for i, (t, m) in enumerate(zip(times, marks)) if (s := build(t, m - base, i)) is not None]
        parts.setdefault(p.part, []).extend(seqs)
        notes += build.notes()
        dropped += build.dropped
    k = infer_num_marks(s for v in parts.values() for s in v)
    files = [str(x) for p in pairs for x in (p.path, p.partner)]
    return ReadResult(parts, k, "rmtpp", source, notes, dropped, files)


def read_rmtpp(folder: str | Path, *, options: ReadOptions | None = None, prefer_full: bool = True) -> ReadResult:
    """Read every RMTPP pair in a folder (mark base detected over all of them together).

    With ``prefer_full`` and a full ``time.txt``/``event.txt`` pair present, only that pair is read (the RMTPP
    folds are re-partitions of the full set). Marks files without times are listed in ``notes``."""
    folder = Path(folder)
    files = [f for f in scan_folder(folder) if f.format == "rmtpp"]
    lonely = [f.path.name for f in files if f.partner is None]
    pairs = [f for f in files if f.partner is not None]
    if not pairs:
        raise DataError("no RMTPP time*/event* file pair here", source=str(folder))
    notes = []
    fold = options.rmtpp_fold if options is not None else None
    if fold is not None:
        folds = sorted({p.part.split("-")[0] for p in pairs if p.part.split("-")[0].isdigit()}, key=int)
        chosen = [p for p in pairs if p.part.split("-")[0] == str(fold)]
        if not chosen:
            raise DataError(f"no RMTPP fold {fold} here (folds: {', '.join(folds) or 'none'})", source=str(folder))
        notes.append(f"{folder}: read fold {fold} only ({len(chosen)} pair(s)); {len(pairs) - len(chosen)} other "
                     "pair(s) not read")
        other_folds = {p.partner.name for p in pairs if p not in chosen and p.partner is not None}
        pairs = chosen
    else:
        other_folds = set()
    full = [p for p in pairs if p.part == "all"]
    if prefer_full and full and len(pairs) > 1:
        notes.append(f"{folder}: read the full time/event pair only; {len(pairs) - 1} fold pair(s) not read")
        pairs = full
    res = _read_rmtpp_pairs(pairs, options, str(folder))
    used = {Path(f).name for f in res.files} | other_folds
    marks_only = sorted(
        p.name for p in folder.iterdir()
        if not p.name.startswith(".") and p.is_file() and detect_format(p) == "rmtpp_marks" and p.name not in used
    )
    if lonely:
        notes.append(f"{folder}: time file(s) without marks ignored: {', '.join(lonely)}")
    if marks_only and not (prefer_full and full):
        notes.append(f"{folder}: marks-only file(s) without times ignored: {', '.join(marks_only)}")
    res.notes = notes + res.notes
    return res


# --------------------------------------------------------------------------------------------------------------
# Long tables


TABLE_COLUMNS = ("seq_id", "time", "mark", "split")
"""The columns ``read_table`` reads; a column name close to a missing one (``marks``, ``Split``) is an error."""


def read_table(path: str | Path, *, options: ReadOptions | None = None, num_marks: int | None = None) -> ReadResult:
    """Read a long CSV/Parquet table ``seq_id, time[, mark][, split]`` (pandas; Parquet needs pyarrow).

    Sequences are in order of first appearance of their ``seq_id``; the index in error messages is that order
    (over the whole file, whatever the split), and a bad cell is named by its line (CSV: header = line 1).
    Rows of one ``seq_id`` need not be adjacent (an event log sorted by time interleaves sequences): they are
    gathered in file order, and a note counts the sequences whose rows were not adjacent. Blanks around a text
    ``seq_id`` are dropped (``'a '`` and ``'a'`` are one sequence; a note counts the ids written both ways). A missing or empty
    ``seq_id`` or ``split`` cell, a sequence whose rows carry different ``split`` values, a ``split`` value that is
    not a part name (``normalise_part``: any case of train / training, val / valid / validation / dev / eval, test /
    testing), a CSV row with more fields than the header (never read shifted by one column), a column name close to one of ``TABLE_COLUMNS`` that is missing (``marks``: every mark would
    silently be 0), and a non-numeric ``time`` / ``mark`` cell are ``DataError`` s; other columns are ignored with a
    note. A bad event is named by its line.
    """
    import pandas as pd

    path = Path(path)
    fmt = detect_format(path)
    try:
        if fmt == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise DataError("reading Parquet needs pyarrow: pip install pyarrow", source=str(path)) from None
            df = pd.read_parquet(io.BytesIO(open_bytes(path)))
        else:
            sep = "\t" if _strip_suffixes(path.name.lower()).endswith(".tsv") else ","
            text = decode_text(open_bytes(path), str(path))
            header = next(csv.reader(io.StringIO(text.lstrip("\ufeff").split("\n", 1)[0]), delimiter=sep), [])
            twice = sorted({c.strip() for c in header if [h.strip() for h in header].count(c.strip()) > 1})
            if twice:  # pandas would rename the second copy ('time.1') and read on without it
                raise DataError(f"the header (line 1) names column(s) {twice} more than once", source=str(path))
            # index_col=False: a first data row with more fields than the header must not make pandas take the
            # first column as an index (every column then shifts: seq_id <- time, time <- mark, silently)
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                try:
                    df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, index_col=False)
                except (pd.errors.ParserWarning, pd.errors.ParserError) as e:
                    raise _too_many_fields(text, sep, header, str(path)) or e from None
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - pandas raises many types for bad files
        raise DataError(f"cannot read table ({type(e).__name__}: {' '.join(str(e).split())[:200]})",
                        source=str(path)) from None
    src = str(path)
    # ' time' or 'Time' is the time column (blanks around a header name, any case), unless 'time' is there too
    plain = {str(c): str(c).strip().lower() for c in df.columns}
    df = df.rename(columns={c: p for c, p in plain.items() if p in TABLE_COLUMNS and p != c
                            and list(plain.values()).count(p) == 1 and p not in df.columns})  # fmt: skip
    unread = [str(c) for c in df.columns if c not in TABLE_COLUMNS]
    for c in unread:  # a misspelt column: a missing time / seq_id, or marks (or the split) silently dropped
        close = difflib.get_close_matches(c.strip().lower(), [k for k in TABLE_COLUMNS if k not in df.columns], 1, 0.6)
        if close:
            raise DataError(f"column {c!r} is not one mtpp reads, and the table has no {close[0]!r}: did you mean "
                            f"{close[0]!r}? (the columns are seq_id, time and optionally mark, split; another column "
                            "is ignored, unless it is this close to a missing one: rename it, or drop it)",
                            source=src)
    missing = [c for c in ("seq_id", "time") if c not in df.columns]
    if missing:
        hint = " (one column: is the separator a comma, or a tab for .tsv?)" if len(df.columns) == 1 else ""
        raise DataError(f"missing column(s) {missing}; expected seq_id, time and optionally mark, split (got "
                        f"{list(df.columns)}){hint}", source=src)
    line0 = 2 if fmt != "parquet" else 0  # CSV: the header is line 1; Parquet: row numbers from 0
    where = "line" if fmt != "parquet" else "row"
    seq_id = df["seq_id"]
    empty = seq_id.isna().to_numpy() | (seq_id.astype(str).str.strip() == "").to_numpy()
    if seq_id.dtype.kind == "f":
        empty |= ~np.isfinite(seq_id.to_numpy(dtype=np.float64, na_value=np.nan))
    if empty.any():
        r = int(np.flatnonzero(empty)[0])
        raise DataError(f"seq_id is missing or empty on {where} {r + line0} ({int(empty.sum())} such row(s))",
                        source=src)
    blank_merged = ""
    if not pd.api.types.is_numeric_dtype(seq_id):  # 'a ' and 'a' are one sequence (a CSV written with ', ' or a padded export)
        as_text = (seq_id.str.strip() if pd.api.types.is_string_dtype(seq_id)
                   else seq_id.map(lambda v: v.strip() if isinstance(v, str) else v))
        variants = pd.DataFrame({"raw": seq_id, "id": as_text}).drop_duplicates().groupby("id", sort=False)["raw"]
        merged = variants.size()
        merged = merged[merged > 1]
        if len(merged):
            example = " and ".join(_short_repr(v) for v in variants.get_group(merged.index[0]).iloc[:2])
            blank_merged = (f"{path}: {len(merged):,} seq_id(s) are written with and without blanks around them "
                            f"(first: {example}): read as one sequence each, the blanks dropped")
        seq_id = as_text
    codes, labels = pd.factorize(seq_id, sort=False)
    n_seq = int(codes.max()) + 1 if codes.size else 0

    def named(r: int) -> str:  # the user's own name of the sequence of row r (the index alone is the file order)
        return f"seq_id {_short_repr(labels[codes[r]])}"

    def cell_error(col: str, bad: np.ndarray, why: str, advice: str = "") -> DataError:
        r = int(np.flatnonzero(bad)[0])
        raw = df[col].iloc[r]
        shown = "is missing" if raw is None or (isinstance(raw, float) and np.isnan(raw)) or str(raw).strip() == "" \
            else f"{_short_repr(raw)} {why}"
        hint = " (a truncated file?)" if shown == "is missing" and r == len(df) - 1 else ""
        if shown == "is missing":  # the advice is about the value found (a category name), not an empty cell
            advice = ""
        return DataError(f"{col} {shown} on {where} {r + line0} ({named(r)}){hint}{advice}", source=src,
                         sequence=int(codes[r]))

    times = _table_column(df, "time", cell_error)
    if "mark" in df.columns:
        marks = _table_column(df, "mark", cell_error)
        if marks.dtype.kind == "f":
            bad = ~np.isfinite(marks) | (marks != np.round(marks))
            if bad.any():
                raise cell_error("mark", bad, "is not an integer")
    else:
        marks = np.zeros(len(df), dtype=np.int64)
    notes = []
    if "mark" not in df.columns:
        notes.append(f"{path}: no 'mark' column, every event gets mark 0")
    if unread:
        notes.append(f"{path}: column(s) {unread} ignored (mtpp reads {', '.join(TABLE_COLUMNS)})")
    if blank_merged:
        notes.append(blank_merged)
    # rows of one sequence that are not adjacent: the sequence starts more than one run of equal codes
    if codes.size:
        starts = np.concatenate([[True], codes[1:] != codes[:-1]])
        runs = np.bincount(codes[starts], minlength=n_seq)
        scattered = int(np.count_nonzero(runs > 1))
        if scattered:
            first = int(np.flatnonzero(runs > 1)[0])
            notes.append(f"{path}: the rows of {scattered} sequence(s) are not adjacent (first: sequence {first}, "
                         f"seq_id {_short_repr(labels[first])}); each sequence gathers its rows in file order")
    # rows repeated exactly (seq_id, time, mark): kept as simultaneous events (zero gaps), said, never merged silently
    repeated = pd.DataFrame({"c": codes, "t": times, "m": marks}).duplicated().to_numpy()
    if repeated.any():
        notes.append(f"{path}: {int(repeated.sum()):,} row(s) repeat an earlier row exactly (same seq_id, time and "
                     f"mark; first: {where} {int(np.flatnonzero(repeated)[0]) + line0}): read as events at the same "
                     "time (zero gaps); remove them first if they are copies")
    part_of = np.zeros(n_seq, dtype=np.int64)
    part_names = ["all"]
    if "split" in df.columns:
        split = df["split"]
        bad = split.isna().to_numpy() | (split.astype(str).str.strip() == "").to_numpy()
        if split.dtype.kind == "f":
            bad |= ~np.isfinite(split.to_numpy(dtype=np.float64, na_value=np.nan))
        if bad.any():
            raise cell_error("split", bad, "")
        raw = split.astype(str)
        unknown = [x for x in pd.unique(raw) if normalise_part(x) not in PARTS]
        if unknown:  # a part the loader would not recognise re-splits the whole file: say so instead
            r = int(np.flatnonzero(raw.isin(unknown).to_numpy())[0])
            raise DataError(f"split {_short_repr(unknown[0])} on {where} {r + line0} ({named(r)}) is not a part name "
                            f"({len(unknown)} such value(s): {', '.join(map(repr, unknown[:5]))}); use train / "
                            "training, val / valid / validation / dev, test / testing (any case)",
                            source=src, sequence=int(codes[r]))
        # every spelling of a part is that part (' Train' and 'training' in one sequence agree)
        scodes, part_names = pd.factorize(raw.map(normalise_part), sort=False)
        part_names = [str(x) for x in part_names]
        part_of[codes[::-1]] = scodes[::-1]  # the first row of each sequence decides ...
        differ = scodes != part_of[codes]  # ... and every other row must agree
        if differ.any():
            r = int(np.flatnonzero(differ)[0])
            raise DataError(f"rows of one sequence in different splits: {part_names[part_of[codes[r]]]!r} and "
                            f"{part_names[scodes[r]]!r} ({named(r)}, {where} {r + line0})", source=src,
                            sequence=int(codes[r]))
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=n_seq))])
    times, marks = times[order], marks[order]
    build = _Builder(path, options, num_marks)
    parts: dict[str, list[EventSequence]] = {}
    for j in range(n_seq):
        a, b = bounds[j], bounds[j + 1]
        try:
            s = build(times[a:b], marks[a:b], j, name=str(labels[j]))
        except DataError as e:  # name the sequence as the file does: its seq_id, and the event's line (or its first)
            rows = np.flatnonzero(codes == j)  # file order, as times[a:b] (unless the builder sorted them)
            known = e.event is not None and 0 <= e.event < rows.size and not (options and options.sort)
            line = f"{where} {int(rows[e.event]) + line0}" if known else f"first row on {where} {int(rows[0]) + line0}"
            raise DataError(f"{e.problem} (seq_id {_short_repr(labels[j])}, {line})", source=e.source,
                            sequence=e.sequence, event=e.event) from None
        if s is not None:
            parts.setdefault(normalise_part(part_names[part_of[j]]), []).append(s)
    notes += build.notes()
    k = num_marks if num_marks is not None else max(infer_num_marks(s for v in parts.values() for s in v), 1)
    return ReadResult(parts, k, "parquet" if fmt == "parquet" else "table", str(path), notes, build.dropped,
                      [str(path)])


def _too_many_fields(text: str, sep: str, header: list[str], source: str) -> DataError | None:
    """The ``DataError`` for the first row of a CSV / TSV ``text`` with more fields than its ``header`` (a stray
    separator in a cell, a missing header name), naming its line and the value in its ``seq_id`` position; ``None``
    when every row fits. Only called once pandas has refused the table (one pass over its rows)."""
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    next(reader, None)
    names = [h.strip().lower() for h in header]
    for row in reader:
        if len(row) > len(header):
            who = f" (seq_id {_short_repr(row[names.index('seq_id')])})" if "seq_id" in names else ""
            shown = "tab" if sep == "\t" else repr(sep)
            return DataError(f"line {reader.line_num}{who} has {len(row)} fields but the header (line 1) names "
                             f"{len(header)} ({', '.join(header)}): a {shown} inside a value, or a column without a "
                             "name in the header?", source=source)
    return None


def _table_column(df: Any, col: str, cell_error: Any) -> np.ndarray:
    """A numeric column as an array (float64, or int64 / uint64 for exact integers); a cell that is empty, not a
    number or a boolean is a ``DataError`` naming its line and sequence."""
    import pandas as pd

    s = df[col]
    if s.dtype.kind == "b":
        raise cell_error(col, np.ones(len(s), dtype=bool), "is a boolean, not a number")
    if s.dtype.kind in "iuf":
        values = s.to_numpy()
        if s.dtype.kind == "f" and np.isnan(values).any():
            raise cell_error(col, np.isnan(values), "")
        return values
    text = s.astype(str).str.strip()
    num = pd.to_numeric(text, errors="coerce")
    bad = num.isna().to_numpy() & ~text.str.lower().isin(["nan", "inf", "-inf", "+inf", "infinity",
                                                         "-infinity"]).to_numpy()
    if bad.any():  # a category name as a mark: say how to get ids; a date as a time: how to get numbers
        first = s.iloc[int(np.flatnonzero(bad)[0])]
        advice = (" (marks are integer ids 0..K-1: map category names to ids first, e.g. with pandas.factorize)"
                  if col == "mark" else DATE_TIME_HINT if is_date_time(first) else "")
        raise cell_error(col, bad, "is not a number", advice)
    if text.str.lower().isin(["true", "false"]).any():
        raise cell_error(col, text.str.lower().isin(["true", "false"]).to_numpy(), "is a boolean, not a number")
    return num.to_numpy()


# --------------------------------------------------------------------------------------------------------------
# Dispatch


def read_file(path: str | Path, *, options: ReadOptions | None = None, num_marks: int | None = None) -> ReadResult:
    """Read one data file of any supported format (detected from its bytes and name); marks finished by
    :func:`finish_marks` (remapped with ``options.remap_marks``, sparse ids noted)."""
    return finish_marks(_read_file(path, options=options, num_marks=num_marks), options)


def _read_file(path: str | Path, *, options: ReadOptions | None = None, num_marks: int | None = None) -> ReadResult:
    path = Path(path)
    _check_regular(path)  # before detect_format opens it: a FIFO would block
    if not path.exists():
        raise DataError("file not found", source=str(path))
    fmt = detect_format(path)
    if fmt == "json":
        return read_json(path, options=options, num_marks=num_marks)
    if fmt == "pickle":
        return read_pickle(path, options=options)
    if fmt == "ifl_npz":
        return read_npz(path, options=options)
    if fmt == "torch_zip":
        return read_torch_zip(path, options=options)
    if fmt in ("table", "parquet"):
        return read_table(path, options=options, num_marks=num_marks)
    if fmt == "rmtpp_time":
        return read_rmtpp_pair(path, options=options)
    if fmt == "rmtpp_marks":
        raise DataError("an RMTPP marks file alone has no times: give the time*.txt file or the folder",
                        source=str(path))
    raise DataError(
        "unknown file format (expected JSON, pickle, .npz, RMTPP time*/event*.txt, CSV or Parquet)",
        source=str(path),
    )


def _merge(results: Sequence[ReadResult], source: str, fmt: str) -> ReadResult:
    parts: dict[str, list[EventSequence]] = {}
    notes: list[str] = []
    dropped: Counter = Counter()
    files: list[str] = []
    declared = []
    for r in results:
        for name, seqs in r.parts.items():
            parts.setdefault(name, []).extend(seqs)
        notes += r.notes
        dropped += r.dropped
        files += r.files
        declared.append(r.num_marks)
    k = max(declared) if declared else 0
    if len(set(declared)) > 1:
        notes.append(f"{source}: files disagree on the number of marks {sorted(set(declared))}; using {k}")
    return ReadResult(parts, k, fmt, source, notes, dropped, files)


def split_dirs(folder: Path) -> list[Path]:
    """The ``split_k`` sub-folders of a split folder, by ``k``."""
    dirs = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"split_\d+", p.name)]
    return sorted(dirs, key=lambda p: int(p.name.split("_")[1]))


def _split_args(folder: Path) -> dict:
    args = folder / "args.json"
    if not args.exists():
        return {}
    meta = _load_json(args)
    if not isinstance(meta, dict):
        raise DataError(f"expected a JSON object, got {type(meta).__name__}", source=str(args))
    return meta


def _declared_marks(meta: Mapping, source: str, options: ReadOptions | None = None) -> int | None:
    for key in ("marks", "num_marks"):
        if meta.get(key) is not None:
            return _header_count(meta[key], key, source, options)
    return None


def _attach_window(res: ReadResult, window: Any, options: ReadOptions | None, args: str = "args.json") -> None:
    """Attach a split folder's common window end to every sequence (``use_window``), or note that it exists."""
    if window is None:
        if options is not None and options.use_window:  # asked for a window the data do not have: say so
            raise DataError("use_window (data.use_window=true) asks for the common observation window of a split "
                            "folder, but its args.json gives no 'window'", source=args)
        return
    window = _header_number(window, "window", args)
    if options is None or not options.use_window:
        res.notes.append(f"{res.source}: args.json gives a common window end {window}; not used (the window ends "
                         "at each sequence's last event; data.use_window=true attaches it)")
        return
    for name, seqs in res.parts.items():
        out = []
        for i, s in enumerate(seqs):
            out.append(make_sequence(s.times, s.marks, window_end=float(window), source=f"{res.source} [{name}]",
                                     index=i))
        res.parts[name] = out


def _read_one_split(d: Path, options: ReadOptions | None, progress: bool) -> ReadResult:
    meta = _split_args(d)
    args = str(d / "args.json")
    declared = _declared_marks(meta, args, options)
    window = meta.get("window")
    if window is not None:
        _header_number(window, "window", args)
    r = _read_plain_folder(d, options, progress, default_marks=declared)
    _attach_window(r, window, options, args)
    _attach_names(r, meta.get("seq_ids"))
    r.meta["args"] = meta
    return r


def _attach_names(res: ReadResult, names: Any) -> None:
    """The sources' own sequence ids a split folder keeps (``args.json`` ``seq_ids``: part -> list, written by
    :func:`write_split_folder`) attached to its sequences (``EventSequence.name``); a list that does not fit its
    part (a file edited by hand) is left out, with a note."""
    if not isinstance(names, dict):
        return
    for part, seqs in res.parts.items():
        ids = names.get(part)
        if ids is None:
            continue
        if not isinstance(ids, list) or len(ids) != len(seqs):
            res.notes.append(f"{res.source}: args.json 'seq_ids' of {part} does not match its {len(seqs)} "
                             "sequence(s); the sequence ids are not used")
            continue
        res.parts[part] = [s if i is None else replace(s, name=str(i)) for s, i in zip(seqs, ids)]


def read_split(folder: str | Path, k: int, *, options: ReadOptions | None = None, progress: bool = False) -> ReadResult:
    """Read only ``split_<k>`` of a split folder; parts are keyed ``split_<k>/<part>``, ``meta["splits"]`` lists
    the split folders present. ``DataError`` if there is no such split."""
    folder = Path(folder)
    splits = split_dirs(folder) if folder.is_dir() else []
    d = folder / f"split_{k}"
    if d not in splits:
        raise DataError(f"split {k} does not exist (available: {', '.join(p.name for p in splits) or 'none'})",
                        source=str(folder))
    r = _read_one_split(d, options, progress)
    r.parts = {f"{d.name}/{name}": seqs for name, seqs in r.parts.items()}
    r.meta["splits"] = [p.name for p in splits]
    return finish_marks(r, options)


def read_folder(folder: str | Path, *, options: ReadOptions | None = None, progress: bool = False) -> ReadResult:
    """Read every data file in a folder: a split folder (``split_k/``, parts ``split_k/<part>``), RMTPP pairs,
    or any mix of files (each file's parts keyed by its normalised stem, e.g. ``dev.pkl`` -> ``val``); marks
    finished by :func:`finish_marks` over all of them together."""
    return finish_marks(_read_folder(folder, options=options, progress=progress), options)


def _read_folder(folder: str | Path, *, options: ReadOptions | None = None, progress: bool = False) -> ReadResult:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("folder not found", source=str(folder))
    if (folder / "config.yaml").is_file() and any((folder / f).is_file() for f in _RUN_MARKERS):
        # its arrays_*.json would be read as sequences and refused as "a dict" (or worse, a run's files as data)
        raise DataError("a run folder of mtpp train (config.yaml, " + ", ".join(
            f for f in _RUN_MARKERS if (folder / f).is_file()) + "), not data: give the data it was trained on (its "
            "config.yaml's data.name; mtpp evaluate / predict RUN use them by themselves)", source=str(folder))
    splits = split_dirs(folder)
    if splits:
        results = [_read_one_split(d, options, progress) for d in splits]
        res = _merge(results, str(folder), "split_folder")
        res.parts = {}
        for d, r in zip(splits, results):
            for name, seqs in r.parts.items():
                res.parts[f"{d.name}/{name}"] = seqs
        res.meta["splits"] = [d.name for d in splits]
        res.meta["args"] = [r.meta["args"] for r in results]
        return res
    return _read_plain_folder(folder, options, progress)


def _read_plain_folder(folder: Path, options: ReadOptions | None, progress: bool,
                       default_marks: int | None = None) -> ReadResult:
    files = scan_folder(folder)
    if not files:
        raise DataError("no data files found (expected .json[.gz], .pkl, .npz, time*/event*.txt, .csv, .parquet)",
                        source=str(folder))
    results = []
    rmtpp = [f for f in files if f.format == "rmtpp"]
    if rmtpp:
        results.append(read_rmtpp(folder, options=options))
    others = [f for f in files if f.format != "rmtpp"]
    with reading_progress(progress, f"reading {folder.name}"):
        for f in others:
            _note_file(f.path)
            results.append(_read_file(f.path, options=options, num_marks=default_marks))
    fmts = sorted({r.format for r in results})
    res = _merge(results, str(folder), fmts[0] if len(fmts) == 1 else "+".join(fmts))
    if default_marks is not None:
        res.num_marks = max(res.num_marks, default_marks)
    return res


def read_any(path: str | Path, *, options: ReadOptions | None = None, progress: bool = False, **kwargs: Any) -> ReadResult:
    """Read a file or a folder of any supported format. ``kwargs`` are :class:`ReadOptions` fields
    (``sort``, ``mark_base``, ``drop_invalid``) when ``options`` is not given."""
    if options is None:
        options = ReadOptions(**kwargs)
    elif kwargs:
        raise TypeError("give either options or keyword options, not both")
    path = Path(path)
    if path.is_dir():
        return read_folder(path, options=options, progress=progress)
    if not path.exists():
        _check_regular(path)  # a broken symbolic link says so
        raise DataError("no such file or folder", source=str(path))
    with reading_progress(progress, f"reading {path.name}"):
        return read_file(path, options=options)


def remap_marks(res: ReadResult) -> ReadResult:
    """Map the mark ids observed in ``res`` (all parts together) to ``0..K-1`` in increasing order, in place:
    ``num_marks`` becomes ``K``, ``meta["mark_ids"]`` lists the original id of each new mark, and a note says
    so; ids that already are ``0..K-1`` are left as they are (``mark_ids`` the identity), without a note.
    Vectorised per sequence (``np.searchsorted`` on the sorted distinct ids)."""
    seqs = res.sequences
    if not seqs:
        return res
    ids = np.unique(np.concatenate([s.marks for s in seqs]))
    if ids.size == res.num_marks and ids[-1] == ids.size - 1:  # already 0..K-1 (a folder prepared with the remap)
        res.meta.setdefault("mark_ids", ids.tolist())  # the identity (prepare shares maps across inputs)
        return res  # nothing to map, nothing to say: "remapped (0, 1, 2, 3) to 0..3" misled
    for name, part in res.parts.items():
        res.parts[name] = [replace(s, marks=np.searchsorted(ids, s.marks)) for s in part]
    old = res.num_marks
    res.num_marks = int(ids.size)
    res.meta["mark_ids"] = ids.tolist()
    shown = ", ".join(map(str, ids[:5].tolist())) + (", ..." if ids.size > 5 else "")
    res.notes.append(f"{res.source}: remapped {ids.size} observed mark ids ({shown}) to 0..{ids.size - 1} "
                     f"(was {old} marks); args.json 'mark_ids' keeps the original ids")
    return res


def finish_marks(res: ReadResult, options: ReadOptions | None = None) -> ReadResult:
    """The last step of every public reader: remap the mark ids (``options.remap_marks``), else note when fewer
    than half of the ids below ``num_marks`` occur (the model would get ``num_marks`` classes, most never seen).
    Readers already refused more than :data:`MAX_MARKS` marks (without remapping)."""
    if options is not None and options.remap_marks:
        return remap_marks(res)
    seqs = res.sequences
    if res.num_marks >= 2 and seqs:
        ids = np.unique(np.concatenate([s.marks for s in seqs]))
        observed = int(ids.size)
        msg = None
        if res.num_marks > 2 and 2 * observed <= res.num_marks:
            msg = (f"{res.source}: only {observed} of {res.num_marks} mark ids occur (a model gets {res.num_marks} "
                   f"mark classes); to map the observed ids to 0..{observed - 1}: {REMAP_HINT}")
        elif ids[0] == 1 and observed == res.num_marks - 1:  # ids 1..K-1, none 0: numbered from 1
            msg = (f"{res.source}: mark ids run 1..{res.num_marks - 1} and 0 never occurs (numbered from 1?): a model "
                   f"gets {res.num_marks} mark classes, one never seen; to map them to 0..{observed - 1}: {REMAP_HINT}")
        if msg:
            res.notes.append(msg)
            warn_once(msg)
    return res


_WARNED: set[str] = set()


def what_it_says(note: str) -> str:
    """A note or warning without its source (``path: ...``): a user's file and the split folder prepared from it
    say the same about their marks under two paths."""
    return note.split(": ", 1)[-1]


_REPORTED = 0  # > 0 inside notes_reported(): the caller shows the read's notes itself


@contextlib.contextmanager
def notes_reported() -> Iterator[None]:
    """Inside, :func:`warn_once` is silent: the caller shows every note of the read itself (``mtpp data describe``'s
    ``notes:``, ``mtpp data prepare``'s ``note:`` lines), which would otherwise say each one twice."""
    global _REPORTED
    _REPORTED += 1
    try:
        yield
    finally:
        _REPORTED -= 1


def warned(note: str) -> bool:
    """Whether this process already gave ``note`` (or the same words from another source) as a WARNING: a run's
    header leaves it off the console (``train.log`` keeps it)."""
    return what_it_says(str(note)) in _WARNED


def warn_once(msg: str) -> None:
    """``log.warning(msg)`` once per process for what ``msg`` says after its source (:func:`what_it_says`); nothing
    inside :func:`notes_reported`."""
    said = what_it_says(msg)
    if said not in _WARNED and not _REPORTED:
        _WARNED.add(said)
        log.warning(msg)




# --------------------------------------------------------------------------------------------------------------
# Writer (canonical split folder)


def _bosser_chunks(sequences: Sequence[EventSequence], block: int = 1 << 12) -> Iterator[bytes]:
    """``[[{"time": t, "labels": [k]}, ...], ...]`` as compact, deterministic JSON (``repr`` floats round-trip
    exactly), in pieces of at most ``block`` events: the text of a file never exists whole in memory (its events'
    strings cost ~150 bytes each while joined, so one long simulated sequence took several times the memory
    ``mtpp simulate --max-memory`` allows for)."""
    yield b"["
    for i, s in enumerate(sequences):
        yield b",\n[" if i else b"["
        for a in range(0, len(s), block):
            times, marks = s.times[a : a + block].tolist(), s.marks[a : a + block].tolist()
            yield (("," if a else "") + ",".join(f'{{"time":{t!r},"labels":[{k}]}}'
                                                 for t, k in zip(times, marks))).encode()
        yield b"]"
    yield b"]\n"


def write_bosser_json(path: str | Path, sequences: Sequence[EventSequence]) -> Path:
    """Write sequences as a plain Bosser JSON file (and ``<stem>.windows.json`` if any has a window end),
    streamed in pieces of events (:func:`_bosser_chunks`; ``write_split_folder`` writes into a temporary folder
    that is renamed into place, so no reader sees a part-written file there)."""
    path = Path(path)
    with open(path, "wb", buffering=1 << 20) as f:
        for chunk in _bosser_chunks(sequences):
            f.write(chunk)
    if any(s.window_end is not None for s in sequences):
        stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
        side = path.with_name(stem + ".windows.json")
        side.write_text(json.dumps([s.window_end for s in sequences]) + "\n")
    return path


def check_output_folder(out_dir: str | Path) -> Path:
    """``out_dir`` as a ``Path`` when a split folder may be written there (it does not exist, or is an empty
    folder); ``DataError`` naming it otherwise (a file, or a folder with contents: never replaced)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError("exists and is a file; --out must name a new (or empty) folder", source=str(out_dir))
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DataError("output folder exists and is not empty", source=str(out_dir))
    from mtpp.files import check_writable

    check_writable(out_dir)  # a file on the way, or a folder without write permission: named before any work
    return out_dir


def write_split_folder(
    out_dir: str | Path,
    splits: Sequence[Mapping[str, Sequence[EventSequence]]],
    *,
    num_marks: int,
    args: Mapping[str, Any] | None = None,
    split_args: Sequence[Mapping[str, Any]] | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write the canonical split folder: ``out_dir/split_k/{part}.json`` (plain JSON, Bosser layout) for each
    ``splits[k]`` (part name -> sequences, usually ``train``/``val``/``test``), ``split_k/args.json``
    (``marks``, ``<part>_size``, plus ``split_args[k]``), ``out_dir/args.json`` (``args`` plus ``marks``) and
    the text ``files`` (name -> content) beside it.

    Writes into a temporary sibling folder and renames it into place, so readers never see half a folder.
    ``out_dir`` must not exist or be empty; ``DataError`` otherwise, also when another process fills it while
    this one writes (two grid workers auto-preparing the same source at once), and then nothing of it is replaced.
    """
    import contextlib
    import os
    import shutil
    import tempfile

    out_dir = check_output_folder(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for k, parts in enumerate(splits):
            d = tmp / f"split_{k}"
            d.mkdir()
            meta: dict[str, Any] = {"marks": int(num_marks), "window": None}
            for name, seqs in parts.items():
                write_bosser_json(d / f"{name}.json", seqs)
                meta[f"{name}_size"] = len(seqs)
                if any(s.name is not None for s in seqs):  # the sources' own ids (a table's seq_id), for outputs
                    meta.setdefault("seq_ids", {})[name] = [s.name for s in seqs]
            if split_args is not None:
                meta.update(split_args[k])
            (d / "args.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        top = dict(args or {})
        top["marks"] = int(num_marks)
        (tmp / "args.json").write_text(json.dumps(top, indent=2, sort_keys=True, default=str) + "\n")
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        try:
            if out_dir.exists():
                with contextlib.suppress(FileNotFoundError):  # another process removed the empty folder first
                    out_dir.rmdir()
            os.replace(tmp, out_dir)
        except OSError as err:  # another process filled out_dir after check_output_folder: never replace it
            if out_dir.is_dir() and any(out_dir.iterdir()):
                raise DataError("output folder exists and is not empty (written by another process meanwhile)",
                                source=str(out_dir)) from err
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def is_split_folder(path: str | Path) -> bool:
    """True if ``path`` holds ``split_k`` sub-folders."""
    path = Path(path)
    return path.is_dir() and bool(split_dirs(path))

