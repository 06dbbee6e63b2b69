"""``mtpp report DIR [--out OUT]``: summary tables and plots regenerated from existing run directories."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtpp.errors import MtppError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="summary tables (CSV, Markdown) and plots from finished runs",
        description="Collect every run directory under DIR (config.yaml + metrics.json, found recursively), "
        "write summary.csv and summary.md (mean ± standard error over splits / seeds per cell, with its run "
        "folders) and the plots (cos phi_TM distributions, validation curves, reliability diagrams and PIT per "
        "cell, base vs + vs ++ points). Runs that share a model name but not a configuration are separate cells.",
    )
    p.add_argument("runs", type=Path, metavar="DIR", help="a run directory or a folder of run directories")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write (default: DIR): summary.csv, summary.md, plots/; with another --split or "
                   "--metrics the names say so (summary_val.md, plots_val/, ...) and the full summary is kept")
    p.add_argument("--split", default="test", metavar="NAME",
                   help="which section of metrics.json to summarise: test (default), val, or train (the metrics "
                        "mtpp evaluate --split train writes, section train_eval)")
    p.add_argument("--metrics", nargs="+", default=None, metavar="NAME",
                   help="metrics to tabulate and plot (default: the per-sequence / per-event NLLs, accuracy, MRR, "
                   "PCE, ECE, MAE of the gap, conflict rate; names and units: mtpp.evaluation.report.METRICS)")
    p.add_argument("--no-plots", action="store_true", help="write the tables only")
    p.add_argument("--allow-mixed-data", action="store_true",
                   help="summarise runs of one dataset and split that were tested on different data (their recorded "
                   "fingerprints differ); default: refuse")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtpp.evaluation import plots, report

    root: Path = args.runs
    if not root.is_dir():
        raise MtppError(f"{root}: not a directory")
    out: Path = args.out or root
    if args.split == "train":  # metrics.json's "train" is the training summary; the split's metrics are train_eval
        args.split = "train_eval"
    df = report.collect_runs(root, section=args.split)
    from mtpp.runs import RunLock

    for folder in df.attrs.get("incomplete", []):
        holder = RunLock.holder_of(folder)  # a cell that a running compare / train is training now
        why = ("no metrics.json yet: still training, in use by " + RunLock.describe(holder) if holder is not None
               else "no metrics.json: interrupted, failed or not finished")  # fmt: skip
        print(f"skipped ({why}): {folder}", file=sys.stderr)
    for problem in df.attrs.get("unreadable", []):
        print(f"skipped (unreadable): {problem}", file=sys.stderr)
    if df.empty:
        raise MtppError(f"no finished run (a folder with metrics.json) under {root}")
    sections = _sections(df["run"])
    if args.split not in sections:
        how = (" (metrics on the training split are written by mtpp evaluate RUN --split train)"
               if args.split == "train_eval" else "")
        asked = "train" if args.split == "train_eval" else args.split
        raise MtppError(f"--split {asked}: no run under {root} has that section in metrics.json{how}; found: "
                        f"{', '.join(sorted(sections))}")
    from mtpp.runs import mixed_data

    mixed = mixed_data(df["run"])
    if mixed and not args.allow_mixed_data:
        raise MtppError(f"{mixed[0]}; pass --allow-mixed-data to summarise them anyway")
    for problem in [*mixed, *report.repeated_replicates(df)]:
        print(f"warning: {problem}", file=sys.stderr)
    if args.metrics:
        args.metrics = [report.canonical_metric(m) for m in args.metrics]  # old names (accuracy, ece) accepted
        missing = [m for m in args.metrics if m not in df.columns]
        from mtpp.evaluation.metrics import MARK_KINDS, TOPK

        topk = {f"top{k}_accuracy_{kind}": f"accuracy_{kind}" for k in TOPK if k > 1 for kind in MARK_KINDS}
        trivial = [m for m in missing if topk.get(m) in df.columns]  # the runs have the kind, not this k
        if trivial:  # left out of metrics.json / the rows: see mtpp.evaluation.metrics.topk_reported
            raise MtppError(f"{', '.join(trivial)}: not reported for these runs: a top-k accuracy needs more than k "
                            "marks (with k or fewer every event is in the top k: 1 whatever the model)")
        if missing:
            known = sorted(c for c in df.columns if not c.startswith("config.") and "/" not in c
                           and c not in (*report.KEY_COLUMNS, *report.REPLICATE_COLUMNS, "run",
                                         report.HORIZON_COLUMN))  # fmt: skip
            raise MtppError(f"unknown metric(s) {', '.join(missing)}; available: {', '.join(known)}")
    stem = report.summary_stem(args.split, args.metrics)  # another split or a selection: its own files
    folder = out / ("plots" + stem.removeprefix("summary"))  # plots_val, ... beside summary_val.md
    if not args.no_plots:  # a user's figure under a plot's name is refused before any file is written
        from mtpp.owned import check_ours

        check_ours(plots.existing_plots(folder, df["dataset"].unique()))
    written = report.write_summary(df, out, metrics=args.metrics, title=f"Results of {root}", stem=stem)
    if not args.no_plots:
        written += plots.make_all_plots(root, folder, metrics=args.metrics, section=args.split, runs=df,
                                        say=lambda line: print(line, file=sys.stderr))
        left = plots.left_over(folder, written, root)
        if left:
            print(left, file=sys.stderr)
    print(f"{len(df)} run{'s' * (len(df) != 1)} under {root}")
    for path in written:
        print(f"wrote {path}")
    return 0


def _sections(runs) -> set[str]:
    """The sections (``val``, ``test``, ``train_eval``, ...) of the runs' ``metrics.json`` that hold metrics."""
    import json

    found: set[str] = set()
    for run in runs:
        try:
            metrics = json.loads((Path(run) / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found |= {k for k, v in metrics.items() if isinstance(v, dict) and k not in ("train", "data")}
    return found
