#!/usr/bin/env python
"""Generate RESULTS.md's tables and figures and BENCHMARKS.md's grid timings from the committed result records.

    python scripts/results_md.py results/paper_table1 results/paper_remedies \\
        --update RESULTS.md --benchmarks BENCHMARKS.md          # the documented command (from the repository root)
    python scripts/results_md.py results/paper_table1           # print RESULTS.md's block, write nothing

Nothing is typed by hand: every number comes from a record (``mtpp/records.py``) under the given folders (a folder
that does not exist yet counts as empty, with a note, but when none of them exists, or one is a file, the script
stops; a cell recorded in two folders is taken from the first; other JSON files under them are named in a note).
``--update``
replaces the text between RESULTS.md's ``<!-- BEGIN generated tables -->`` / ``<!-- END generated tables -->``
lines and writes one ``cos_tm`` figure and one figure of validation curves per dataset to ``--figures`` (default
``results/figures`` beside the updated file);
``--benchmarks`` replaces BENCHMARKS.md's ``<!-- BEGIN generated grid timings -->`` block. The published values
beside ours are read from ``--published`` (default ``results/published/bosser2024_table1.csv``). What the tables
contain and how they are computed: ``mtpp/experiments_tables.py``.

A mistake in the input (a record cut short, a file without its markers, a path that is not there) is one line
``results_md: error: ...`` on stderr and exit code 2, as ``mtpp`` says it; the ``--update`` / ``--benchmarks``
files are checked before anything is written, so a refused command writes nothing (no figure either).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtpp import experiments_tables as tables  # noqa: E402
from mtpp.cli import run_script  # noqa: E402
from mtpp.errors import ConfigError  # noqa: E402
from mtpp.experiments_curves import validation_curve_figures  # noqa: E402
from mtpp.records import read_records  # noqa: E402

BEGIN, END = "<!-- BEGIN generated tables -->", "<!-- END generated tables -->"
BENCH_BEGIN, BENCH_END = "<!-- BEGIN generated grid timings -->", "<!-- END generated grid timings -->"
PUBLISHED = ROOT / "results" / "published" / "bosser2024_table1.csv"


def load(folders: list[Path], passed_over: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """The records of ``folders``, one per cell name (the first folder's wins); the names seen twice. The other
    JSON files under them (``mtpp.records.read_records``) are appended to ``passed_over`` as ``folder/path``."""
    seen: dict[str, dict] = {}
    twice = []
    for folder in folders:
        others: list[str] = []
        for r in read_records(folder, others) if folder.is_dir() else []:
            name = (r.get("cell") or {}).get("name") or r["_path"]
            if name in seen:
                twice.append(name)
            else:
                seen[name] = r
        if passed_over is not None:
            passed_over.extend(str(folder / p) for p in others)
    return list(seen.values()), twice


def check_folders(folders: list[Path]) -> None:
    """``ConfigError`` when one of ``folders`` is a file, or none of them exists (a misspelt path); a note on
    stderr for each that does not exist yet while another does (a grid not started yet: no record from it)."""
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{folder}: a file, not a folder of result records (give the folder that holds the "
                              "records, e.g. results/paper_table1)")
    missing = [f for f in folders if not f.exists()]
    if missing and len(missing) == len(folders):
        raise ConfigError(f"{', '.join(map(str, missing))}: no such folder of result records (a misspelt path?)")
    for folder in missing:
        print(f"note: {folder}: no such folder (yet): no record from it", file=sys.stderr)


def read_block_file(path: Path, option: str, begin: str, end: str, doc: str | None = None) -> str:
    """The text of the file ``option`` (``--update`` / ``--benchmarks``) names (``doc``: its text, read already
    for the other option), checked before anything is written: ``ConfigError`` unless it is a file holding exactly
    one ``begin`` line followed by one ``end``."""
    if doc is None and not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file"
        raise ConfigError(f"{option} {path}: {what} (it must exist and hold the lines {begin} and {end})")
    try:
        doc = path.read_text(encoding="utf-8") if doc is None else doc
    except UnicodeDecodeError as e:
        raise ConfigError(f"{option} {path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    try:
        tables.replace_block(doc, "", begin, end, str(path))
    except ValueError as e:
        raise ConfigError(f"{option} {e}") from None
    return doc


def main(argv: list[str] | None = None) -> int:
    """Run the script; a ``MtppError`` or an ``OSError`` is one line ``results_md: error: ...`` and exit code 2
    (``mtpp.cli.run_script``)."""
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
    return run_script("results_md", lambda: run(args))


def run(args: argparse.Namespace) -> int:
    """The script's work once its arguments are parsed: every input and output path checked, then written."""
    check_folders(args.results)
    docs: dict[Path, str] = {}  # the files to rewrite, read (and checked) before anything is written
    for option, path, begin, end in (("--update", args.update, BEGIN, END),
                                     ("--benchmarks", args.benchmarks, BENCH_BEGIN, BENCH_END)):  # fmt: skip
        if path is not None:
            docs[path.resolve()] = read_block_file(path, option, begin, end, docs.get(path.resolve()))
    if args.published != PUBLISHED and not args.published.is_file():  # a path given by hand that is not there
        raise ConfigError(f"--published {args.published}: no such file")
    passed_over: list[str] = []
    records, twice = load(args.results, passed_over)
    if passed_over:
        print(f"note: {len(passed_over)} JSON file(s) that are not result records passed over: "
              f"{', '.join(passed_over[:5])}{', ...' if len(passed_over) > 5 else ''}", file=sys.stderr)
    if not records and (args.update or args.benchmarks):
        raise ConfigError(f"no result record under {', '.join(map(str, args.results))}: refusing to replace the "
                          "generated blocks with empty ones (a misspelt folder?)")
    if twice:
        print(f"note: {len(twice)} cell(s) recorded in more than one folder, first kept: {twice[:3]}", file=sys.stderr)
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
        key = args.update.resolve()
        docs[key] = tables.replace_block(docs[key], text, BEGIN, END, str(args.update))
        key.write_text(docs[key], encoding="utf-8")
        paths = [*figures.values(), *(path for path, _ in curves.values())]
        print(f"{args.update}: tables of {len(records)} records; figures: "
              + (", ".join(str(p) for p in paths) or "none"), file=sys.stderr)
    if args.benchmarks is not None:
        key = args.benchmarks.resolve()
        docs[key] = tables.replace_block(docs[key], tables.benchmarks_block(records, command), BENCH_BEGIN, BENCH_END,
                                         str(args.benchmarks))  # fmt: skip
        key.write_text(docs[key], encoding="utf-8")
        print(f"{args.benchmarks}: grid timings of {len(records)} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
