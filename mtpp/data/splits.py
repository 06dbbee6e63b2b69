"""De-duplication and seeded train/val/test splits: what ``mtpp data prepare`` does.

Seeds: split ``k`` is a permutation drawn from ``numpy.random.default_rng([seed, k])`` (a ``SeedSequence`` built
from the pair, so splits of one seed are independent streams and the same ``(seed, k)`` always gives the same
split on any platform). Sizes: ``n_val = round(r_val * n)``, ``n_test = round(r_test * n)``, train takes the rest.
Sequences are de-duplicated (same times, marks and window, :meth:`EventSequence.key`) in input order before
splitting, so a sequence that appears in several input files lands in exactly one part of each split.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mtpp.data.formats import ReadOptions, ReadResult, check_output_folder, read_any, write_split_folder
from mtpp.data.sequence import EventSequence
from mtpp.errors import ConfigError, DataError

__all__ = [
    "PART_NAMES",
    "PrepareReport",
    "Duplicates",
    "deduplicate",
    "deduplicate_parts",
    "overlapping_sequences",
    "overlap_error",
    "split_sizes",
    "split_indices",
    "make_splits",
    "prepare",
    "prepare_sequences",
    "cut_long_sequences",
    "read_inputs",
    "source_fingerprint",
]

PART_NAMES = ("train", "val", "test")
DUPLICATES_FILE = "duplicates.tsv"
"""In a prepared folder: every sequence de-duplication removed and the kept sequence it copies."""
DEFAULT_RATIOS = (0.6, 0.2, 0.2)
OVERLAPS_FILE = "overlaps.tsv"
"""In a folder prepared with ``allow_overlapping``: every pair of sequences sharing a stretch of events."""
OVERLAP_WINDOW = 32
"""Gaps in a stretch that :func:`overlapping_sequences` compares. On every staged dataset (26 of them) only the
RMTPP book-order folds, re-cuts of one stream, have such stretches shared between distinct sequences."""
GAP_DIGITS = 5
"""Significant digits to which gaps are compared: re-based copies of one stream print each time with its own
rounding, so their gaps agree to about 1e-7 relative, not bit for bit."""


def deduplicate(sequences: Sequence[EventSequence]) -> tuple[list[EventSequence], int]:
    """Keep the first occurrence of each distinct sequence, in order. Returns ``(unique, number_removed)``."""
    unique, found = deduplicate_parts({"": list(sequences)})
    return unique, found.removed


@dataclass
class Duplicates:
    """What :func:`deduplicate_parts` removed, and why.

    across_parts: copies of a sequence already kept from another part (file): the same sequence in several
        files, e.g. the val / test files of several published splits.
    within_part: copies repeated inside one part (file): a duplicated record, or distinct entities whose events
        happen to be identical (short MIMIC-II admissions); kept with ``keep_within_part``.
    pairs: ``(removed, copy_of)`` for every removed sequence, each ``"file: sequence i"`` (the
        :attr:`EventSequence.origin` readers record; the part name and position when there is none).
    """

    across_parts: int = 0
    within_part: int = 0
    pairs: list[tuple[str, str]] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return self.across_parts + self.within_part

    def table(self) -> str:
        """Every removed sequence and the kept one it copies: a TSV with a header line."""
        return "removed\tcopy_of\n" + "".join(f"{a}\t{b}\n" for a, b in self.pairs)


def deduplicate_parts(parts: Mapping[str, Sequence[EventSequence]],
                      keep_within_part: bool = False) -> tuple[list[EventSequence], Duplicates]:  # fmt: skip
    """The distinct sequences of ``parts`` (part name -> sequences, in part order then file order): every copy of
    a sequence (same times, marks and window, :meth:`EventSequence.key`) after its first is removed. A "part" here
    is the file a sequence was read from (:attr:`EventSequence.origin`; the part name when it has none).

    ``keep_within_part``: copies inside one file are kept instead; a sequence then appears as many times as in the
    file that repeats it most (copies across parts are still removed, so the val / test files of several
    published splits still give each sequence once). Returns ``(unique, Duplicates)``.
    """
    kept: dict[bytes, list[str]] = {}  # key -> names of its kept copies
    seen: dict[tuple[str, bytes], int] = {}  # (file, key) -> copies met in that file so far
    found = Duplicates()
    unique: list[EventSequence] = []
    for part, seqs in parts.items():
        for i, s in enumerate(seqs):
            k = s.key()
            file = s.origin[0] if s.origin is not None else part  # one part may merge files (dev + valid)
            n = seen.get((file, k), 0)
            seen[(file, k)] = n + 1
            copies = kept.setdefault(k, [])
            name = _where(s, part, i)
            if n < len(copies) and (keep_within_part or n == 0):  # a copy of one kept from an earlier part
                found.across_parts += 1
                found.pairs.append((name, copies[n if keep_within_part else 0]))
            elif n > 0 and not keep_within_part:
                found.within_part += 1
                found.pairs.append((name, copies[0]))
            else:
                copies.append(name)
                unique.append(s)
    return unique, found


def _gap_codes(gaps: np.ndarray) -> np.ndarray:
    """Integers equal for gaps equal to ``GAP_DIGITS`` significant digits (0 for zero gaps)."""
    g = np.asarray(gaps, dtype=np.float64)
    pos = g > 0
    exp = np.zeros(g.shape, dtype=np.int64)
    exp[pos] = np.floor(np.log10(g[pos])).astype(np.int64)
    mant = np.zeros(g.shape, dtype=np.int64)
    mant[pos] = np.rint(g[pos] / 10.0 ** (exp[pos] - (GAP_DIGITS - 1))).astype(np.int64)
    return np.where(pos, (exp + 400) * 10 ** (GAP_DIGITS + 1) + mant, 0)


def overlapping_sequences(sequences: Sequence[EventSequence],
                          window: int = OVERLAP_WINDOW) -> list[tuple[int, int, int]]:  # fmt: skip
    """Pairs of sequences that share a stretch of events without being copies: ``[(i, j, stretches)]``, ``i < j``
    indices into ``sequences``, ``stretches`` the number of distinct ``window``-event stretches they share.

    A stretch is ``window`` consecutive gaps (``window + 1`` events), compared by the gaps (to ``GAP_DIGITS``
    significant digits, so a re-based copy of a stream matches) and the marks of the events they end at;
    stretches whose gaps are all equal are not compared (a regular clock is not evidence of a shared stream).
    What this finds: folds that cut one long stream at different points (the RMTPP book-order set), or
    overlapping sliding windows; split at random, such sequences put the same events in train and test.
    Vectorised: one hash per stretch (a random linear form of the stretch's event codes, modulo 2^64), then one
    sort of all hashes; sequences shorter than ``window + 1`` events are not compared. A hash collision could
    only add a pair, never hide one.
    """
    mult = np.random.default_rng(0x5EED).integers(1, 2**63 - 1, size=window, dtype=np.int64).astype(np.uint64)
    hashes, owners = [], []
    for i, s in enumerate(sequences):  # per sequence, not per event: each sequence's stretches at once
        if len(s) < window + 1:
            continue
        codes = _gap_codes(np.diff(s.times))
        marks = np.asarray(s.marks[1:], dtype=np.int64).astype(np.uint64)
        with np.errstate(over="ignore"):
            event = codes.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ marks * np.uint64(0xC2B2AE3D27D4EB4F)
            h = (np.lib.stride_tricks.sliding_window_view(event, window) * (mult | np.uint64(1))).sum(
                1, dtype=np.uint64)
        gw = np.lib.stride_tricks.sliding_window_view(codes, window)
        h = np.unique(h[gw.max(1) != gw.min(1)])
        hashes.append(h)
        owners.append(np.full(h.shape, i, dtype=np.int64))
    if not hashes:
        return []
    h, o = np.concatenate(hashes), np.concatenate(owners)
    order = np.argsort(h, kind="stable")
    h, o = h[order], o[order]
    at = np.nonzero(h[1:] == h[:-1])[0]
    if not at.size:
        return []
    pairs = np.stack([np.minimum(o[at], o[at + 1]), np.maximum(o[at], o[at + 1])], 1)
    uniq, counts = np.unique(pairs, axis=0, return_counts=True)
    return [(int(a), int(b), int(c)) for (a, b), c in zip(uniq, counts)]


def overlap_error(sequences: Sequence[EventSequence], pairs: Sequence[tuple[int, int, int]], source: str) -> DataError:
    """The one-line refusal of :func:`prepare_sequences` for ``pairs`` of :func:`overlapping_sequences`."""
    a, b, c = max(pairs, key=lambda p: p[2])
    involved = len({i for p in pairs for i in p[:2]})
    return DataError(
        f"{involved:,} of {len(sequences):,} sequences share stretches of {OVERLAP_WINDOW} consecutive gaps "
        f"(and marks) with another sequence without being copies, e.g. {_where(sequences[a], '', a)} and "
        f"{_where(sequences[b], '', b)} ({c:,} shared stretches): folds that cut one stream at different points, "
        "or overlapping windows? A random split would put the same events in train and test. Prepare one fold "
        "(mtpp data prepare --rmtpp-fold K, RMTPP folders), or keep them (mtpp data prepare "
        "--allow-overlapping-sequences)", source=source)


def within_file_advice(within: int, across: int, before: str = "", after: str = "") -> str:
    """What to make of sequences repeated within one file: distinct entities with identical events (MIMIC-II
    admissions; ``--keep-within-file-duplicates`` keeps them) only when the files share no sequence; when they do
    (concatenated folds, as in the THP copy of MIMIC-II) the repeats are copies too, and keeping them would put
    one sequence in train and test. ``""`` when there are none."""
    if not within:
        return ""
    if across:
        return (f"{before}the files also share sequences, so the repeats are likely copies too (e.g. concatenated "
                f"folds): keeping them would put one sequence in train and test{after}")
    return (f"{before}distinct entities with identical events? mtpp data prepare --keep-within-file-duplicates "
            f"keeps them{after}")


def _where(s: EventSequence, part: str, i: int) -> str:
    if s.origin is not None:
        return f"{s.origin[0]}: sequence {s.origin[1]}"
    return f"{part}: sequence {i}" if part else f"sequence {i}"


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3:
        raise ConfigError(f"ratios must be three numbers (train val test), got {list(ratios)}")
    r = tuple(float(x) for x in ratios)
    if any(not np.isfinite(x) or x < 0 for x in r) or r[0] <= 0 or abs(sum(r) - 1.0) > 1e-6:
        raise ConfigError(f"ratios must be >= 0 (train > 0) and sum to 1, got {list(ratios)}")
    return r  # type: ignore[return-value]


def _common_window(result: Any) -> tuple[float | None, str | None]:
    """``(window, note)``: the common observation window end the input's split folders declare
    (``args.json["window"]``, read into ``result.meta["args"]``), carried into the prepared folder so that
    ``data.use_window: true`` still finds it; ``None`` without one. When the input's folders declare different
    windows none is carried, and ``note`` says so."""
    args = result.meta.get("args")
    metas = args if isinstance(args, list) else [args] if isinstance(args, dict) else []
    windows = {m.get("window") for m in metas if isinstance(m, dict)}
    windows.discard(None)
    if len(windows) == 1:
        return float(windows.pop()), None
    if len(windows) > 1:
        return None, (f"the input's split folders declare different window ends {sorted(windows)}: none is carried "
                      "into the prepared folder (data.use_window needs one)")
    return None, None


def split_sizes(n: int, ratios: Sequence[float] = DEFAULT_RATIOS) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)``: val and test rounded from their ratios, train the rest."""
    _, rv, rt = _check_ratios(ratios)
    n_val, n_test = int(round(rv * n)), int(round(rt * n))
    return n - n_val - n_test, n_val, n_test


def split_indices(n: int, seed: int, k: int = 0, ratios: Sequence[float] = DEFAULT_RATIOS) -> dict[str, np.ndarray]:
    """Indices ``[n_part]`` (sorted) of each part of split ``k`` of ``n`` items, drawn with
    ``default_rng([seed, k])``."""
    n_train, n_val, _ = split_sizes(n, ratios)
    perm = np.random.default_rng([int(seed), int(k)]).permutation(n)
    cut = (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:])
    return {name: np.sort(idx) for name, idx in zip(PART_NAMES, cut)}


def make_splits(
    sequences: Sequence[EventSequence], *, num_splits: int = 5, seed: int = 0, ratios: Sequence[float] = DEFAULT_RATIOS
) -> list[dict[str, list[EventSequence]]]:
    """``num_splits`` seeded partitions of ``sequences`` into ``train``/``val``/``test`` (order within a part
    follows the input order)."""
    if num_splits < 1:
        raise ConfigError(f"splits must be >= 1, got {num_splits}")
    out = []
    for k in range(num_splits):
        idx = split_indices(len(sequences), seed, k, ratios)
        out.append({name: [sequences[i] for i in ix] for name, ix in idx.items()})
    return out


@dataclass
class PrepareReport:
    """What ``prepare`` read, removed and wrote (also stored in the output ``args.json``)."""

    out: str
    sources: list[str]
    files: list[str]
    num_read: int
    duplicates: int
    duplicates_within_file: int
    dropped: dict[str, int]
    num_sequences: int
    num_events: int
    num_marks: int
    seed: int
    ratios: list[float]
    split_sizes: list[int]
    num_splits: int
    notes: list[str] = field(default_factory=list)
    max_length: int | None = None  # --max-length
    cut_sequences: int = 0  # sequences longer than max_length, cut
    pieces: int = 0  # the pieces they became
    distinct_sequences: int = 0  # after de-duplication, before cutting

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def cut_phrase(self) -> str:
        """What ``--max-length`` did, in one sentence."""
        return (f"{self.cut_sequences:,} sequence(s) longer than {self.max_length:,} events were cut into "
                f"{self.pieces:,} pieces (mtpp data prepare --max-length {self.max_length}; every gap kept, each piece "
                "read from an empty history; pieces of one sequence may land in different parts)")

    def duplicates_phrase(self) -> str:
        """``"N duplicates removed (...)"``, with the within-file ones told apart and what they likely are."""
        within = self.duplicates_within_file
        return (f"{self.duplicates:,} duplicates removed ({self.duplicates - within:,} found in several files or "
                f"parts, {within:,} repeated within one file; listed in {Path(self.out) / DUPLICATES_FILE}"
                + within_file_advice(within, self.duplicates - within, "; ") + ")")

    def lines(self) -> list[str]:
        """A short human-readable summary."""
        tr, va, te = self.split_sizes
        dropped = sum(self.dropped.values())
        within, across = self.duplicates_within_file, self.duplicates - self.duplicates_within_file
        out = [
            f"read {self.num_read:,} sequences from {len(self.files)} file(s)",
            f"removed {self.duplicates:,} duplicate sequence(s) (identical times and marks): {across:,} found in "
            f"several files or parts (e.g. the val / test files of several published splits), {within:,} repeated "
            "within one file" + within_file_advice(within, across, " (", ")")
            + (f"; each with the sequence it copies in {Path(self.out) / DUPLICATES_FILE}" if self.duplicates else ""),
        ]
        if dropped:
            out.append(f"dropped {dropped:,} invalid sequence(s): "
                       + ", ".join(f"{n:,} {r}" for r, n in sorted(self.dropped.items())))
        else:
            out.append("dropped 0 invalid sequences")
        if self.max_length is not None:
            out.append(self.cut_phrase() if self.cut_sequences else
                       f"cut 0 sequences (none longer than --max-length {self.max_length:,} events)")
        out += [
            f"kept {self.num_sequences:,} sequences, {self.num_events:,} events, {self.num_marks} marks",
            f"wrote {self.num_splits} split(s) (seed {self.seed}, ratios "
            + "/".join(f"{r:g}" for r in self.ratios)
            + f": train {tr:,} / val {va:,} / test {te:,}) to {self.out}",
        ]
        return out


def cut_long_sequences(sequences: Sequence[EventSequence], max_length: int) -> tuple[list[EventSequence], int, int]:
    """Every sequence of more than ``max_length`` events cut into consecutive pieces of at most ``max_length``
    (``mtpp data prepare --max-length``): ``(sequences, number cut, pieces they became)``, shorter ones as they were.

    Piece ``j`` holds events ``j * max_length .. (j + 1) * max_length - 1``. Its times are measured from the event
    before it (``t - t_{j * max_length - 1}``; the first piece as it was), so its window starts at that event and
    every gap ``tau_i`` is kept exactly, the piece's first included; the last piece keeps the sequence's window end
    (shifted alike), the others end at their last event. What is lost is the history: a model reads each piece
    from an empty history. Pieces are named ``<name>#<j>`` where the sequence has a name. One pass over the
    sequences, array slices per piece (no loop over events)."""
    if max_length < 1:
        raise ConfigError(f"--max-length must be >= 1, got {max_length}")
    out: list[EventSequence] = []
    cut = pieces = 0
    for s in sequences:
        n = len(s)
        if n <= max_length:
            out.append(s)
            continue
        cut += 1
        for j, lo in enumerate(range(0, n, max_length)):
            hi = min(lo + max_length, n)
            shift = float(s.times[lo - 1]) if lo else 0.0
            last = hi == n
            window = None if not last or s.window_end is None else float(s.window_end) - shift
            out.append(EventSequence(s.times[lo:hi] - shift, s.marks[lo:hi], window, s.origin,
                                     None if s.name is None else f"{s.name}#{j}"))
            pieces += 1
    return out, cut, pieces


def prepare_sequences(
    result: ReadResult,
    out: str | Path,
    *,
    seed: int = 0,
    num_splits: int = 5,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    sources: Sequence[str] | None = None,
    keep_within_file_duplicates: bool = False,
    allow_overlapping: bool = False,
    max_length: int | None = None,
) -> PrepareReport:
    """De-duplicate the sequences of ``result`` (all parts; :func:`deduplicate_parts`, copies within one file kept
    with ``keep_within_file_duplicates``), split them and write the split folder, with the removed sequences and
    the ones they copy in its ``duplicates.tsv``. ``max_length``: sequences longer than that are cut into pieces
    after de-duplication (:func:`cut_long_sequences`; counted in the report, ``args.json`` and its notes), and the
    pieces are split like sequences.

    Raises ``DataError`` when distinct sequences share stretches of events (:func:`overlapping_sequences`: a
    random split would leak events from train into test), unless ``allow_overlapping``: then the pairs are
    listed in ``overlaps.tsv`` and every later load of the folder says so."""
    ratios = _check_ratios(ratios)
    if min(ratios[1:]) <= 0:  # an empty part by design: every split folder it wrote would be refused by mtpp train
        raise ConfigError(f"ratios {'/'.join(f'{r:g}' for r in ratios)}: the val and test ratios must be > 0 (a run "
                          "needs validation events for early stopping and test events for its metrics)")
    unique, found = deduplicate_parts(result.parts, keep_within_part=keep_within_file_duplicates)
    if not unique:  # an empty file (a header, []) is not "left" with nothing: say which it is
        dropped = sum(result.dropped.values())
        raise DataError(f"no sequences left to split: all {dropped} were dropped as invalid (--drop-invalid)" if dropped
                        else "holds no sequence (an empty file, a header only, or an empty list)",
                        source=result.source)
    distinct = len(unique)
    cut = pieces = 0
    if max_length is not None:
        unique, cut, pieces = cut_long_sequences(unique, max_length)
    overlaps = overlapping_sequences(unique)
    if overlaps and not allow_overlapping:
        raise overlap_error(unique, overlaps, result.source)
    sizes = split_sizes(len(unique), ratios)
    empty = [name for name, n, r in zip(PART_NAMES, sizes, ratios) if r > 0 and n == 0]
    if empty:
        shown = "/".join(f"{r:g}" for r in ratios)
        raise DataError(f"{len(unique)} distinct sequence(s) are too few for ratios {shown}: "
                        f"the {' and '.join(empty)} part would be empty (a model would train or stop early on "
                        "nothing)", source=result.source)
    splits = make_splits(unique, num_splits=num_splits, seed=seed, ratios=ratios)
    report = PrepareReport(
        out=str(out),
        sources=list(sources or [result.source]),
        files=list(result.files),
        num_read=result.num_sequences + sum(result.dropped.values()),  # every sequence in the input
        duplicates=found.removed,
        duplicates_within_file=found.within_part,
        dropped=dict(result.dropped),
        num_sequences=len(unique),
        num_events=int(sum(len(s) for s in unique)),
        num_marks=int(result.num_marks),
        seed=int(seed),
        ratios=list(ratios),
        split_sizes=list(split_sizes(len(unique), ratios)),
        num_splits=int(num_splits),
        notes=list(result.notes),
        max_length=max_length,
        cut_sequences=cut,
        pieces=pieces,
        distinct_sequences=distinct,
    )
    args = report.to_dict()
    args.pop("out")
    if "mark_ids" in result.meta:
        args["mark_ids"] = list(result.meta["mark_ids"])
    args["seeding"] = "split k = numpy.random.default_rng([seed, k]).permutation(n)"
    window, why = _common_window(result)  # a split folder's observation window end, for data.use_window later
    split_args = [{"seed": int(seed), "split": k, **({} if window is None else {"window": window})}
                  for k in range(num_splits)]  # fmt: skip
    if why:
        report.notes.append(why)
        args["notes"] = args["notes"] + [why]
    from mtpp.data.origin import absolute_clock_warning

    clock = absolute_clock_warning(unique)  # said where the times can still be fixed; every run says it again
    if clock:
        report.notes.append(f"{result.source}: {clock}")
    args["keep_within_file_duplicates"] = bool(keep_within_file_duplicates)
    if cut:  # every later load of the folder says so: its sequences are not the source's
        args["notes"] = args["notes"] + [report.cut_phrase()]
    else:  # folders prepared without --max-length keep their bytes
        for key in ("max_length", "cut_sequences", "pieces", "distinct_sequences"):
            args.pop(key)
    if found.within_part:  # every later load of the folder says so (mtpp.data.catalog reads these notes)
        args["notes"] = args["notes"] + [
            f"{found.within_part:,} sequence(s) repeated within one file were removed as duplicates (listed in "
            f"{DUPLICATES_FILE}{within_file_advice(found.within_part, found.across_parts, '; ')})"]
    files = {DUPLICATES_FILE: found.table()} if found.removed else {}
    if overlaps:
        involved = len({i for p in overlaps for i in p[:2]})
        note = (f"{involved:,} sequence(s) share stretches of {OVERLAP_WINDOW} gaps with another (kept with "
                f"--allow-overlapping-sequences; train and test may share events; pairs in {OVERLAPS_FILE})")
        args["notes"] = args["notes"] + [note]
        report.notes.append(note)
        files[OVERLAPS_FILE] = "sequence\tshares_events_with\tstretches\n" + "".join(
            f"{_where(unique[a], '', a)}\t{_where(unique[b], '', b)}\t{c}\n" for a, b, c in overlaps)
        args["allow_overlapping_sequences"] = True  # only then: folders without overlaps keep their bytes
    write_split_folder(out, splits, num_marks=result.num_marks, args=args, split_args=split_args, files=files or None)
    return report


def read_inputs(inputs: Sequence[str | Path], options: ReadOptions | None = None, progress: bool = False) -> ReadResult:
    """Read several files/folders into one ``ReadResult`` (parts prefixed by the input's position). With
    ``options.remap_marks`` the ids of all inputs are remapped together (one map), after merging. A file that two
    inputs both read (the same path twice, however spelt or linked; a folder and a file inside it) is a
    ``DataError`` naming both inputs."""
    if not inputs:
        raise DataError("no input given")
    results = [read_any(p, options=options, progress=progress) for p in inputs]
    if len(results) == 1:
        return results[0]
    # one file read through two inputs (the same path twice, spelt alike or not; a folder and a file in it): its
    # sequences would be called copies "within one file", and --keep-within-file-duplicates would keep both
    read_by: dict[str, int] = {}
    for i, r in enumerate(results):
        for f in dict.fromkeys(os.path.realpath(f) for f in r.files):
            j = read_by.setdefault(f, i)
            if j != i:
                raise DataError(f"inputs {str(inputs[j])!r} and {str(inputs[i])!r} both hold {f}: give each file "
                                "once (its sequences would be counted as copies, or kept twice with "
                                "--keep-within-file-duplicates)")
    remap = options is not None and options.remap_marks
    if remap:
        _share_mark_map(results)
    merged = ReadResult({}, max(r.num_marks for r in results), "+".join(sorted({r.format for r in results})),
                        ", ".join(str(p) for p in inputs))
    for i, r in enumerate(results):
        for name, seqs in r.parts.items():
            merged.parts[f"{i}:{name}"] = seqs
        merged.notes += r.notes
        merged.dropped += r.dropped
        merged.files += r.files
    if len({r.num_marks for r in results}) > 1:
        merged.notes.append(f"inputs disagree on the number of marks {[r.num_marks for r in results]}; "
                            f"using {merged.num_marks}")
    if remap:
        merged.meta["mark_ids"] = results[0].meta["mark_ids"]
        merged.num_marks = len(merged.meta["mark_ids"])
    return merged


def _share_mark_map(results: Sequence[ReadResult]) -> None:
    """Inputs each remapped on reading (``meta["mark_ids"]``: original id of each local mark) get one shared
    map: the sorted union of their original ids. In place; every result's ``mark_ids`` becomes the union."""
    local = [np.asarray(r.meta.get("mark_ids", []), dtype=np.int64) for r in results]
    union = np.unique(np.concatenate(local)) if local else np.zeros(0, dtype=np.int64)
    for r, ids in zip(results, local):
        for name, part in r.parts.items():
            r.parts[name] = [replace(s, marks=np.searchsorted(union, ids[s.marks])) for s in part]
        r.meta["mark_ids"] = union.tolist()
        r.num_marks = int(union.size)


def prepare(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    seed: int = 0,
    num_splits: int = 5,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    options: ReadOptions | None = None,
    progress: bool = False,
    keep_within_file_duplicates: bool = False,
    allow_overlapping: bool = False,
    max_length: int | None = None,
) -> PrepareReport:
    """Read ``inputs`` (files or folders of any supported format), de-duplicate, cut sequences longer than
    ``max_length`` into pieces (:func:`cut_long_sequences`), write ``num_splits`` seeded ``train``/``val``/``test``
    splits to ``out``. Deterministic for a seed (same bytes)."""
    check_output_folder(out)  # before reading: a bad --out fails at once
    result = read_inputs(inputs, options, progress)
    return prepare_sequences(result, out, seed=seed, num_splits=num_splits, ratios=ratios,
                             sources=[str(p) for p in inputs], keep_within_file_duplicates=keep_within_file_duplicates,
                             allow_overlapping=allow_overlapping, max_length=max_length)


def source_fingerprint(path: str | Path, *extra: Any) -> str:
    """A short hash of a source (resolved path, names and contents of its files) and ``extra`` values: the cache
    key of an auto-prepared split folder.

    Contents, not modification times: a data folder that is copied, re-mounted or touched keeps its key (and its
    prepared splits), while any change to a file's bytes makes a new one. Hashing reads every file once (the
    catalog's largest benchmark folders are ~10 MB)."""
    path = Path(path).resolve()
    h = hashlib.sha256(str(path).encode())
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(f"|{p.relative_to(path) if path.is_dir() else p.name}:{p.stat().st_size}:".encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    h.update(repr(extra).encode())
    return h.hexdigest()[:12]

