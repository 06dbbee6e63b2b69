"""``mtpp data``: ``list`` the named datasets, ``describe`` a dataset or path, ``prepare`` a seeded split folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mtpp.commands._types import positive_int, seed as seed_type


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="list, describe and prepare datasets",
                              description="List, describe and prepare event-sequence datasets.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    p.set_defaults(func=_no_action(p))

    ls = sub.add_parser("list", help="known dataset names, found or not, and where")
    ls.add_argument("--data-dir", help="data directory (default: $MTPP_DATA_DIR, else ./data)")
    ls.set_defaults(func=cmd_list)

    de = sub.add_parser("describe", help="statistics of a dataset (name or path)")
    de.add_argument("target", metavar="NAME|PATH",
                    help="a catalog name (mtpp data list) or a file or folder in any supported format")
    de.add_argument("--data-dir", help="data directory (default: $MTPP_DATA_DIR, else ./data)")
    de.add_argument("--json", action="store_true", help="print the statistics as JSON")
    de.add_argument("--top", type=positive_int, default=10, help="number of most frequent marks shown (default 10)")
    _read_flags(de)
    de.set_defaults(func=cmd_describe)

    pr = sub.add_parser("prepare", help="de-duplicate inputs and write seeded train/val/test splits")
    pr.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders in any supported format")
    pr.add_argument("--out", required=True, help="output split folder (must not exist or be empty)")
    pr.add_argument("--seed", type=seed_type, default=0, help="split k uses default_rng([seed, k]) (default 0)")
    pr.add_argument("--splits", type=int, default=5, help="number of random splits (default 5)")
    pr.add_argument("--ratios", type=float, nargs=3, default=[0.6, 0.2, 0.2], metavar=("TRAIN", "VAL", "TEST"),
                    help="split ratios (default 0.6 0.2 0.2)")
    pr.add_argument("--drop-invalid", action="store_true",
                    help="skip sequences that fail validation (counted per reason) instead of stopping")
    pr.add_argument("--keep-within-file-duplicates", action="store_true",
                    help="keep identical sequences repeated inside one file (distinct entities with the same "
                         "events, e.g. short MIMIC-II admissions; not when the files also share sequences, e.g. "
                         "concatenated folds, whose repeats are copies); copies found in several files are still "
                         "kept once (default: every copy after the first is removed; duplicates.tsv lists them)")
    pr.add_argument("--allow-overlapping-sequences", action="store_true",
                    help="keep distinct sequences that share stretches of 32 consecutive gaps and marks (folds "
                         "that cut one stream at different points, overlapping windows; listed in overlaps.tsv) "
                         "instead of stopping: a random split then puts the same events in train and test")
    pr.add_argument("--max-length", type=positive_int, default=None, metavar="N",
                    help="cut sequences longer than N events into consecutive pieces of at most N (counted; each "
                         "piece's times start at the event before it, so every gap is kept, but a model reads it "
                         "from an empty history): one stream of 1,000,000 events is otherwise one training batch "
                         "of several GB (default: keep every sequence whole)")
    _read_flags(pr)
    pr.set_defaults(func=cmd_prepare)


def _read_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sort", action="store_true", help="sort unsorted sequences (counted) instead of stopping")
    p.add_argument("--mark-base", type=int, choices=(0, 1), default=None,
                   help="RMTPP marks are 0- or 1-based (default: detect per dataset)")
    p.add_argument("--remap-marks", action="store_true",
                   help="map the observed mark ids to 0..K-1 (sparse or huge ids; the original ids are kept in "
                        "args.json 'mark_ids')")
    p.add_argument("--rmtpp-fold", type=int, default=None, metavar="K",
                   help="in an RMTPP folder, read only fold K's time/event pairs (folds that cut one stream at "
                        "other points share events; default: every pair)")


def _no_action(p: argparse.ArgumentParser):
    def run(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    return run


# ------------------------------------------------------------------------------------------------------- list


def cmd_list(args: argparse.Namespace) -> int:
    from mtpp.data.catalog import CATALOG, find_dataset, resolve_data_dir, unread_folders

    root = resolve_data_dir(args.data_dir)
    rows = []
    for name, entry in CATALOG.items():
        if entry.generated:
            status, where = "generated", "cache (on first use)"
        else:
            path = find_dataset(name, args.data_dir) if root.is_dir() else None
            status, where = ("found", str(path)) if path else ("missing", " | ".join(entry.candidates))
            if path and _resplit_on_use(entry, path):
                status = "found (re-split)"
        rows.append((name, status, entry.format, where))
    print(f"data directory: {root}" + ("" if root.is_dir() else "  (a file, not a folder)" if root.exists()
                                       else "  (does not exist)"))
    print(_table(("name", "status", "format", "folder (or candidates)"), rows))
    if any(r[1] == "found (re-split)" for r in rows):
        print("(re-split): the copy has no train part (or overlapping parts); its first use prepares seeded 60/20/20 "
              "splits into the cache, as mtpp data prepare does")
    unnamed, second = unread_folders(args.data_dir)
    if unnamed:
        print(f"other folders in {root}, read by no name (describe or train them by folder name or path): "
              + ", ".join(unnamed))
    if second:
        print("second copies, read only where their name's first folder is missing: "
              + ", ".join(f"{folder} ({name})" for folder, name in second.items()))
    return 0


def _resplit_on_use(entry: Any, path: Path) -> bool:
    """Whether loading ``path`` re-splits it (``mtpp.data.catalog.load_dataset``): the entry always is, or it is a
    split folder without a train part (``lacks_train_part``), or a folder whose files' parts, judged from their
    names (``scan_folder``: ``valid.json.gz`` -> val, ``wikipedia.npz`` -> wikipedia, ``time-1-train.txt`` -> 1-train),
    lack one of train / val / test; an RMTPP folder with a full ``time.txt`` pair is read from that pair alone, so
    it is re-split whatever its folds. Files whose parts are decided inside them (a table's split column, a pickle
    not named after a part) are not opened here: ``found`` then says nothing about a re-split."""
    from mtpp.data.catalog import is_split_folder, lacks_train_part, resplits
    from mtpp.data.formats import PARTS, scan_folder

    if resplits(entry, PARTS):  # an entry that always re-splits
        return True
    if not path.is_dir():
        return False
    if is_split_folder(path):
        return lacks_train_part(path)
    files = [f for f in scan_folder(path) if f.format != "rmtpp" or f.partner is not None]  # unpaired: not read
    if not files or any(f.format not in PARTS_FROM_NAME and not (f.format == "pickle" and f.part in PARTS)
                        for f in files):  # fmt: skip
        return False
    if any(f.format == "rmtpp" and f.part == "all" for f in files):  # read_rmtpp's prefer_full
        return True
    return not set(PARTS) <= {f.part for f in files}


PARTS_FROM_NAME = ("json", "ifl_npz", "torch_zip", "rmtpp")
"""File formats whose part is their name's (``mtpp.data.formats``); a pickle's are its keys, which the
EasyTPP / GNTPP / THP copies name like the file."""


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*cells[0]).rstrip(), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*r).rstrip() for r in cells[1:]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- describe


def describe_sequences(seqs: list, num_marks: int, top: int = 10) -> dict[str, Any]:
    """Statistics of a list of sequences: counts, lengths, time range, zero gaps, time lattice, mark frequencies."""
    import numpy as np

    from mtpp.data.lattice import time_lattice
    from mtpp.data.sequence import within_sequence_gaps

    if not seqs:
        return {"sequences": 0, "events": 0}
    lengths = np.array([len(s) for s in seqs])
    times = np.concatenate([s.times for s in seqs])
    marks = np.concatenate([s.marks for s in seqs])
    gaps = within_sequence_gaps(seqs)
    first = np.array([s.times[0] for s in seqs])
    counts = np.bincount(marks, minlength=max(num_marks, 1))
    order = np.argsort(-counts, kind="stable")[:top]
    n = int(marks.size)
    lattice = time_lattice(seqs)
    return {
        "sequences": len(seqs),
        "events": n,
        "num_marks": int(num_marks),
        "marks_observed": int(np.count_nonzero(counts)),
        "length": {"min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max())},
        "time": {"min": float(times.min()), "max": float(times.max())},
        "zero_gap_share": float(np.mean(gaps == 0)) if gaps.size else 0.0,
        # the gap scale, to choose a forecast horizon (mtpp evaluate --horizon T, plot / generate --horizon)
        "gaps": None if not gaps.size else {
            "median": float(np.median(gaps)), "mean": float(gaps.mean()),
            "p90": float(np.quantile(gaps, 0.9)), "p99": float(np.quantile(gaps, 0.99))},
        "first_event_at_zero": int(np.count_nonzero(first == 0)),
        "lattice": None if lattice is None else {"quantum": lattice.quantum, "share_near": lattice.share_near,
                                                 "consequential": lattice.consequential},  # mtpp.data.lattice
        "windows": int(sum(s.window_end is not None for s in seqs)),
        "top_marks": [{"mark": int(k), "count": int(counts[k]), "share": float(counts[k] / n)} for k in order
                      if counts[k]],
    }


def cmd_describe(args: argparse.Namespace) -> int:
    from mtpp.data.catalog import resolve_source, resplits
    from mtpp.data.formats import ReadOptions, notes_reported, read_any
    from mtpp.data.splits import deduplicate_parts, overlap_error, overlapping_sequences

    name, path, entry = resolve_source(args.target, args.data_dir)
    opts = dict(entry.options) if entry else {}
    if args.sort:
        opts["sort"] = True
    if args.mark_base is not None:
        opts["mark_base"] = args.mark_base
    if args.remap_marks:
        opts["remap_marks"] = True
    if args.rmtpp_fold is not None:
        opts["rmtpp_fold"] = args.rmtpp_fold
    with notes_reported():  # its notes: section says them
        res = read_any(path, options=ReadOptions(**opts), progress=True)
    unique, dups = deduplicate_parts(res.parts)
    overlaps = overlapping_sequences(unique)
    if overlaps:
        res.notes.append(str(overlap_error(unique, overlaps, str(path))))
    res.notes += incomplete_splits(res.parts)
    from mtpp.data.catalog import time_unit_of, time_unit_text
    from mtpp.data.origin import absolute_clock_warning

    # a staged copy addressed by its folder name or path is that catalog dataset, as for mtpp train
    unit = entry.time_unit if entry else time_unit_of(path)
    clock = absolute_clock_warning(unique, units=time_unit_text(unit))
    res.notes += [f"{path}: {clock}"] if clock else []
    stats = {
        "name": name,
        "source": str(path),
        "format": res.format,
        "description": entry.description if entry else None,
        "time_unit": unit,
        "mark_ids": res.meta.get("mark_ids") if args.remap_marks else None,  # the source's id of each new mark
        "total": describe_sequences(unique, res.num_marks, args.top),
        "duplicates": dups.removed,
        "duplicates_within_file": dups.within_part,
        "duplicate_examples": [{"removed": a, "copy_of": b} for a, b in dups.pairs[:10]],
        "parts": {k: describe_sequences(v, res.num_marks, 0) for k, v in res.parts.items()},
        "notes": res.notes,
        "resplit_on_use": resplits(entry, res.parts),
    }
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(_describe_text(stats))
    return 0


def incomplete_splits(parts: Any) -> list[str]:
    """One note per ``split_k`` of a split folder that has a train part but lacks val (or cal) or test: what
    ``mtpp train`` refuses (``mtpp.data.catalog.load_dataset``), said before anyone trains on it."""
    splits: dict[str, set[str]] = {}
    for key in parts:
        split, _, part = str(key).partition("/")
        if part:
            splits.setdefault(split, set()).add(part)
    out = []
    for split, have in sorted(splits.items()):
        lacking = [name for name, alts in (("val", {"val", "cal"}), ("test", {"test"})) if not have & alts]
        if "train" in have and lacking:
            out.append(f"{split} has no {' and no '.join(lacking)} file: mtpp train refuses it (it needs train, val "
                       "and test); mtpp data prepare re-splits the folder's sequences")
    return out


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _fmt_range(lo: float, hi: float) -> str:
    """``lo .. hi`` with the digits that tell them apart: 6 significant, more when the range is narrow against
    its magnitude (Unix seconds: ``1700000000 .. 1700086400``, not ``1.7e+09 .. 1.70009e+09``)."""
    import math

    big, span = max(abs(lo), abs(hi)), hi - lo
    extra = math.ceil(math.log10(big / span)) if span > 0 and big > 0 else 0
    d = min(17, 6 + max(0, extra))
    return f"{lo:.{d}g} .. {hi:.{d}g}"


def _lattice_line(lattice: dict[str, Any] | None, unit: str | None = None) -> str:
    if lattice is None:
        return ("time lattice   none found (no quantum q = the smallest positive gap / 1..6 has every gap of up to "
                "10,000 q a whole multiple of q; a coarser lattice, if any, has bins too narrow to matter)")
    from mtpp.data.lattice import NEAR

    q = float(lattice["quantum"])
    n = round(1 / q) if q < 1 else 0  # 1/3600: seconds on an hours axis
    frac = f" (= 1/{n:,} {unit or 'of a data unit'})" if n > 1 and abs(n * q - 1) < 1e-6 else ""
    if not frac and unit:  # q = 1 on retweet: one second
        frac = f" {unit}{'s' * (q != 1)}"
    return (f"time lattice   gaps are whole multiples of q = {_fmt(q)}{frac}; "
            f"{100 * lattice['share_near']:.1f}% of the positive gaps within {NEAR} q"
            + ("; compare time models on nll_time_binned_per_seq (continuous L_T rewards spikes on the lattice)"
               if lattice["consequential"] else ""))  # fmt: skip


def _gaps_line(gaps: dict[str, float] | None, unit: str | None = None) -> list[str]:
    """The gap scale in one line (``[]`` without a within-sequence gap): what a forecast horizon is read against
    (``mtpp evaluate --horizon T`` scores the events within ``T`` of each point: a ``T`` near the median gap asks
    for about the next event, one of several mean gaps for several)."""
    if not gaps:
        return []
    units = f"{unit}s" if unit else "data units"
    return [f"gaps           median {_fmt(gaps['median'])} / mean {_fmt(gaps['mean'])} / 90% {_fmt(gaps['p90'])} / "
            f"99% {_fmt(gaps['p99'])} {units} (within sequences; the scale of a forecast --horizon)"]


def _duplicates_text(st: dict[str, Any]) -> str:
    n, within = st["duplicates"], st["duplicates_within_file"]
    if not n:
        return "no duplicates"
    ex = st["duplicate_examples"][0]
    return (f"{n:,} duplicate copies removed: {n - within:,} found in several parts, {within:,} repeated within one "
            f"file; e.g. {ex['removed']} = {ex['copy_of']}")


def _describe_text(st: dict[str, Any]) -> str:
    t = st["total"]
    out = [f"{st['name']}  ({st['format']}, {st['source']})"]
    if st["description"]:
        out.append(st["description"])
    out.append("")
    if not t["sequences"]:
        return "\n".join(out + ["no sequences"])
    ln = t["length"]
    out += [
        f"sequences      {t['sequences']:,} distinct ({_duplicates_text(st)})",
        f"events         {t['events']:,}",
        f"marks          {t['num_marks']} ({t['marks_observed']} observed)",
        f"length         min {ln['min']} / median {ln['median']:g} / max {ln['max']}",
        f"time range     {_fmt_range(t['time']['min'], t['time']['max'])} "
        + (f"({st['time_unit']}s)" if st.get("time_unit") else "(unit not recorded)"),
        f"zero gaps      {100 * t['zero_gap_share']:.2f}% of within-sequence gaps; "
        f"{t['first_event_at_zero']:,} sequences start at time 0",
        *_gaps_line(t.get("gaps"), st.get("time_unit")),
        _lattice_line(t.get("lattice"), st.get("time_unit")),
    ]
    if t["windows"]:
        out.append(f"windows        {t['windows']:,} sequences carry an observation window end")
    ids = st.get("mark_ids")  # remapped: the source's own id beside each new one

    def mark(k: int) -> str:
        return f"{k:>6} <- {ids[k]}" if ids else f"{k:>6}"

    out += ["", "most frequent marks" + (" (remapped id <- the data's id):" if ids else ":")]
    out += [f"  {mark(m['mark'])}  {m['count']:>9,}  {100 * m['share']:5.1f}%" for m in t["top_marks"]]
    rows = [(k, f"{v['sequences']:,}", f"{v['events']:,}",
             f"{v['length']['min']} / {v['length']['median']:g} / {v['length']['max']}",
             _fmt_range(v['time']['min'], v['time']['max']))
            for k, v in st["parts"].items() if v["sequences"]]
    unit = f" ({st['time_unit']}s)" if st.get("time_unit") else ""
    out += ["", _table(("part", "sequences", "events", "len min/med/max", f"time range{unit}"), rows)]
    if st.get("resplit_on_use"):
        out += ["", "training on it re-splits all its sequences into 5 seeded 60/20/20 splits (its parts are not a "
                "full train / val / test split, or they overlap); mtpp data prepare does the same into a folder"]
    if st["notes"]:
        out += ["", "notes:"] + [f"  - {n}" for n in st["notes"]]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- prepare


def cmd_prepare(args: argparse.Namespace) -> int:
    from mtpp.data.formats import ReadOptions, notes_reported
    from mtpp.data.splits import prepare

    options = ReadOptions(sort=args.sort, mark_base=args.mark_base, drop_invalid=args.drop_invalid,
                          remap_marks=args.remap_marks, rmtpp_fold=args.rmtpp_fold)
    with notes_reported():  # its note: lines say them
        report = prepare(args.inputs, args.out, seed=args.seed, num_splits=args.splits, ratios=args.ratios,
                         options=options, progress=True, keep_within_file_duplicates=args.keep_within_file_duplicates,
                         allow_overlapping=args.allow_overlapping_sequences, max_length=args.max_length)
    for line in report.lines():
        print(line)
    for note in report.notes:
        print(f"note: {note}")
    return 0
