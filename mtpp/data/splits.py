"""De-duplication and seeded train/val/test splits: what ``mtpp data prepare`` does.

Seeds: split ``k`` is a permutation drawn from ``numpy.random.default_rng([seed, k])`` (a ``SeedSequence`` built
from the pair, so splits of one seed are independent streams and the same ``(seed, k)`` always gives the same
split on any platform). Sizes: ``n_val = round(r_val * n)``, ``n_test = round(r_test * n)``, train takes the rest.
Sequences are de-duplicated (same times, marks and window, :meth:`EventSequence.key`) in input order before
splitting, so a sequence that appears in several input files lands in exactly one part of each split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mtpp.data.formats import ReadOptions, ReadResult, check_output_folder, read_any, write_split_folder
from mtpp.data.sequence import EventSequence
from mtpp.errors import ConfigError, DataError

__all__ = [
    "PART_NAMES",
    "PrepareReport",
    "deduplicate",
    "split_sizes",
    "split_indices",
    "make_splits",
    "prepare",
    "prepare_sequences",
    "read_inputs",
    "source_fingerprint",
]

PART_NAMES = ("train", "val", "test")
DEFAULT_RATIOS = (0.6, 0.2, 0.2)


def deduplicate(sequences: Sequence[EventSequence]) -> tuple[list[EventSequence], int]:
    """Keep the first occurrence of each distinct sequence, in order. Returns ``(unique, number_removed)``."""
    seen: set[bytes] = set()
    unique = []
    for s in sequences:
        k = s.key()
        if k not in seen:
            seen.add(k)
            unique.append(s)
    return unique, len(sequences) - len(unique)


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3:
        raise ConfigError(f"ratios must be three numbers (train val test), got {list(ratios)}")
    r = tuple(float(x) for x in ratios)
    if any(not np.isfinite(x) or x < 0 for x in r) or r[0] <= 0 or abs(sum(r) - 1.0) > 1e-6:
        raise ConfigError(f"ratios must be >= 0 (train > 0) and sum to 1, got {list(ratios)}")
    return r  # type: ignore[return-value]


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
    dropped: dict[str, int]
    num_sequences: int
    num_events: int
    num_marks: int
    seed: int
    ratios: list[float]
    split_sizes: list[int]
    num_splits: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        """A short human-readable summary."""
        tr, va, te = self.split_sizes
        dropped = sum(self.dropped.values())
        out = [
            f"read {self.num_read:,} sequences from {len(self.files)} file(s)",
            f"removed {self.duplicates:,} duplicate sequence(s) (a sequence found in several files or splits, "
            "e.g. the val / test files of several published splits, is kept once)",
        ]
        if dropped:
            out.append(f"dropped {dropped:,} invalid sequence(s): "
                       + ", ".join(f"{n:,} {r}" for r, n in sorted(self.dropped.items())))
        else:
            out.append("dropped 0 invalid sequences")
        out += [
            f"kept {self.num_sequences:,} sequences, {self.num_events:,} events, {self.num_marks} marks",
            f"wrote {self.num_splits} split(s) (seed {self.seed}, ratios "
            + "/".join(f"{r:g}" for r in self.ratios)
            + f": train {tr:,} / val {va:,} / test {te:,}) to {self.out}",
        ]
        return out


def prepare_sequences(
    result: ReadResult,
    out: str | Path,
    *,
    seed: int = 0,
    num_splits: int = 5,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    sources: Sequence[str] | None = None,
) -> PrepareReport:
    """De-duplicate the sequences of ``result`` (all parts), split them and write the split folder."""
    ratios = _check_ratios(ratios)
    unique, dups = deduplicate(result.sequences)
    if not unique:
        raise DataError("no sequences left to split", source=result.source)
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
        num_read=result.num_sequences,
        duplicates=dups,
        dropped=dict(result.dropped),
        num_sequences=len(unique),
        num_events=int(sum(len(s) for s in unique)),
        num_marks=int(result.num_marks),
        seed=int(seed),
        ratios=list(ratios),
        split_sizes=list(split_sizes(len(unique), ratios)),
        num_splits=int(num_splits),
        notes=list(result.notes),
    )
    args = report.to_dict()
    args.pop("out")
    if "mark_ids" in result.meta:
        args["mark_ids"] = list(result.meta["mark_ids"])
    args["seeding"] = "split k = numpy.random.default_rng([seed, k]).permutation(n)"
    split_args = [{"seed": int(seed), "split": k} for k in range(num_splits)]
    write_split_folder(out, splits, num_marks=result.num_marks, args=args, split_args=split_args)
    return report


def read_inputs(inputs: Sequence[str | Path], options: ReadOptions | None = None, progress: bool = False) -> ReadResult:
    """Read several files/folders into one ``ReadResult`` (parts prefixed by the input's position). With
    ``options.remap_marks`` the ids of all inputs are remapped together (one map), after merging."""
    if not inputs:
        raise DataError("no input given")
    results = [read_any(p, options=options, progress=progress) for p in inputs]
    if len(results) == 1:
        return results[0]
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
            r.parts[name] = [EventSequence(s.times, np.searchsorted(union, ids[s.marks]), s.window_end) for s in part]
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
) -> PrepareReport:
    """Read ``inputs`` (files or folders of any supported format), de-duplicate, write ``num_splits`` seeded
    ``train``/``val``/``test`` splits to ``out``. Deterministic for a seed (same bytes)."""
    check_output_folder(out)  # before reading: a bad --out fails at once
    result = read_inputs(inputs, options, progress)
    return prepare_sequences(result, out, seed=seed, num_splits=num_splits, ratios=ratios,
                             sources=[str(p) for p in inputs])


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

