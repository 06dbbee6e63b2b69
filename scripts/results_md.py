#!/usr/bin/env python
"""Generate RESULTS.md's tables and figures and BENCHMARKS.md's grid timings from the committed result records.

    python scripts/results_md.py results/paper_table1 results/paper_remedies \\
        --update RESULTS.md --benchmarks BENCHMARKS.md          # the documented command (from the repository root)
    python scripts/results_md.py results/paper_table1           # print RESULTS.md's block, write nothing

Nothing is typed by hand: every number comes from a record (``mtpp/records.py``) under the given folders (a folder
that does not exist yet counts as empty; a cell recorded in two folders is taken from the first). ``--update``
replaces the text between RESULTS.md's ``<!-- BEGIN generated tables -->`` / ``<!-- END generated tables -->``
lines and writes one ``cos_tm`` figure and one figure of validation curves per dataset to ``--figures`` (default
``results/figures`` beside the updated file);
``--benchmarks`` replaces BENCHMARKS.md's ``<!-- BEGIN generated grid timings -->`` block. The published values
beside ours are read from ``--published`` (default ``results/published/bosser2024_table1.csv``). What the tables
contain and how they are computed: ``mtpp/experiments_tables.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtpp import experiments_tables as tables  # noqa: E402
from mtpp.experiments_curves import validation_curve_figures  # noqa: E402
from mtpp.records import read_records  # noqa: E402

BEGIN, END = "<!-- BEGIN generated tables -->", "<!-- END generated tables -->"
BENCH_BEGIN, BENCH_END = "<!-- BEGIN generated grid timings -->", "<!-- END generated grid timings -->"
PUBLISHED = ROOT / "results" / "published" / "bosser2024_table1.csv"


def load(folders: list[Path]) -> tuple[list[dict], list[str]]:
    """The records of ``folders``, one per cell name (the first folder's wins); the names seen twice."""
    seen: dict[str, dict] = {}
    twice = []
    for folder in folders:
        for r in read_records(folder) if folder.is_dir() else []:
            name = (r.get("cell") or {}).get("name") or r["_path"]
            if name in seen:
                twice.append(name)
            else:
                seen[name] = r
    return list(seen.values()), twice


def update(path: Path, text: str, begin: str, end: str) -> None:
    doc = path.read_text(encoding="utf-8")
    try:
        path.write_text(tables.replace_block(doc, text, begin, end, str(path)), encoding="utf-8")
    except ValueError as e:
        raise SystemExit(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, nargs="+", help="folders of records, e.g. results/paper_table1")
    ap.add_argument("--update", type=Path, help="replace the generated block of this file (RESULTS.md)")
    ap.add_argument("--benchmarks", type=Path, help="replace the generated grid-timings block of this file")
    ap.add_argument("--figures", type=Path, default=None, help="folder of the cos_tm PNGs (results/figures)")
    ap.add_argument("--published", type=Path, default=PUBLISHED, help="published values (CSV)")
    ap.add_argument("--datasets", nargs="*", default=list(tables.DATASETS), metavar="NAME",
                    help="datasets that get a section before any of their cells has a record (default: Table 1's "
                    f"{' '.join(tables.DATASETS)}; none: --datasets with no name)")
    args = ap.parse_args(argv)

    for folder in args.results:
        if not folder.is_dir():
            print(f"note: {folder}: no such folder (yet): no record from it", file=sys.stderr)
    records, twice = load(args.results)
    if not records and (args.update or args.benchmarks):
        raise SystemExit(f"no result record under {', '.join(map(str, args.results))}: refusing to replace the "
                         "generated blocks with empty ones (a misspelt folder?)")
    if twice:
        print(f"note: {len(twice)} cell(s) recorded in more than one folder, first kept: {twice[:3]}", file=sys.stderr)
    if args.published != PUBLISHED and not args.published.is_file():  # a path given by hand that is not there
        raise SystemExit(f"results_md: --published {args.published}: no such file")
    published = tables.read_published(args.published) if args.published.is_file() else []
    command = "python scripts/results_md.py " + " ".join(str(p) for p in args.results)
    command += "".join(f" --{k} {v}" for k, v in (("update", args.update), ("benchmarks", args.benchmarks)) if v)
    figures, curves = {}, {}
    if args.update is not None:
        # beside the file they are linked from: RESULTS.md at the root -> results/figures
        folder = args.figures or args.update.resolve().parent / "results" / "figures"
        figures = tables.cos_tm_figures(records, folder)
        curves = validation_curve_figures(records, folder)
    text = tables.results_block(records, command, published, figures,
                                relative_to=(args.update.resolve().parent if args.update else None),
                                datasets=args.datasets, curves=curves)  # fmt: skip
    if args.update is None:
        print(text, end="")
    else:
        update(args.update, text, BEGIN, END)
        paths = [*figures.values(), *(path for path, _ in curves.values())]
        print(f"{args.update}: tables of {len(records)} records; figures: "
              + (", ".join(str(p) for p in paths) or "none"), file=sys.stderr)
    if args.benchmarks is not None:
        update(args.benchmarks, tables.benchmarks_block(records, command), BENCH_BEGIN, BENCH_END)
        print(f"{args.benchmarks}: grid timings of {len(records)} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
