"""``mtpp predict RUN_DIR --out FILE``: next-event predictions, one row per scored event (``mtpp.forecast.predict``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtpp.commands._forecast_args import add_run_options, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="next-event predictions of a run, one row per scored event",
        description="Load RUN_DIR (config.yaml, best.pt, its data) and write, for every scored event of a split "
        "(or of the sequences of --input FILE), "
        "the predicted gap (median, mean where defined, central interval), the top-k forecast marks p(k | H) and "
        "the log-density of what happened. Columns: see mtpp.forecast.predict.",
    )
    p.add_argument("run_dir", type=Path, help="a run directory written by mtpp train")
    p.add_argument("--out", type=Path, required=True, help="output table, .csv or .parquet (never replaced)")
    p.add_argument("--level", type=float, default=0.9, help="central interval level (default 0.9)")
    p.add_argument("--top-k", type=int, default=5, help="ranked marks per row (default 5)")
    p.add_argument("--include-next", action="store_true", help="add the forecast after each sequence's last event")
    p.add_argument("--batch-size", type=positive_int, help="sequences per batch (default: the run's evaluation batch)")
    add_run_options(p, seed=False, input=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtpp.commands._forecast_args import input_sequences
    from mtpp.forecast.predict import check_table_path, interval_columns, predict_run, write_table
    from mtpp.forecast.runs import load_run

    check_table_path(args.out, args.overwrite)  # before the model is loaded and anything predicted

    run = load_run(args.run_dir, args.data_dir, args.device, log=lambda m: print(m, file=sys.stderr, flush=True),
                   progress=True)
    seqs, where = input_sequences(run, args)
    if not args.include_next:  # an empty table with 'forecast accuracy nan' said nothing of why
        from mtpp.commands._forecast_args import require_scored_events

        require_scored_events(seqs, run.cfg.model.first_event, where, "--include-next forecasts the event after "
                              "each sequence's last one")
    frame = predict_run(run, seqs, level=args.level, top_k=args.top_k, batch_size=args.batch_size,
                        include_next=args.include_next, progress=True,
                        log=lambda m: print(m, file=sys.stderr, flush=True))
    path = write_table(frame, args.out, overwrite=args.overwrite)
    shown = sum(c.startswith("mark_") for c in frame.columns)
    if shown < args.top_k:
        print(f"note: --top-k {args.top_k} but the model has {shown} marks: {shown} mark columns", file=sys.stderr)
    scored = frame[frame["observed_mark"].notna()]
    acc = float((scored["mark_1"] == scored["observed_mark"]).mean()) if len(scored) else float("nan")
    lo, hi = interval_columns(args.level)
    cover = float(((scored["observed_gap"] >= scored[lo]) & (scored["observed_gap"] <= scored[hi])).mean())
    print(f"{path}: {len(frame)} rows ({frame['sequence'].nunique()} sequences); forecast accuracy {acc:.4f}, "
          f"{args.level:g} interval coverage {cover:.4f}")
    return 0
