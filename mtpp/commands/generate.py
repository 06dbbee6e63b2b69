"""``mtpp generate RUN_DIR --horizon T | --events N --out FILE``: sample continuations of a split's sequences."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtpp.commands._forecast_args import (
    MAX_EVENTS,
    SEQUENCE_HELP,
    add_max_events,
    add_run_options,
    positive_float,
    sequence_index,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from mtpp.forecast.baselines import BASELINES

    p = subparsers.add_parser(
        "generate",
        help="sample future events after each sequence of a run's split",
        description="Continue each sequence (its whole observed history) by sampling whole future sequences from "
        "the model of RUN_DIR (or a baseline): events within --horizon after the end of the history, or the next "
        "--events events. Writes one row per generated event: sequence, sample, index, time, mark. Samplers: "
        "inverse CDF (default) or Ogata thinning (THP / SAHP decoders); see mtpp.forecast.generate.",
    )
    p.add_argument("run_dir", type=Path, help="a run directory written by mtpp train")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--horizon", type=float, help="time span to fill after each history (data units)")
    what.add_argument("--events", type=int, help="number of events to generate after each history")
    p.add_argument("--samples", type=int, default=1, help="continuations per sequence (default 1)")
    p.add_argument("--out", type=Path, required=True, help="output table, .csv or .parquet (never replaced)")
    p.add_argument("--sequences", help=f"comma-separated sequences, each {SEQUENCE_HELP} (default: all)")
    p.add_argument("--sampler", choices=("auto", "icdf", "thinning", "mode"), default="auto",
                   help="icdf: exact inverse-CDF sampling (every decoder); thinning: Ogata thinning (THP / SAHP "
                   "decoders and the baselines); mode: the deterministic point forecast (median gap, most probable "
                   "mark); auto (default): icdf")
    p.add_argument("--baseline", choices=("model", *BASELINES), default="model",
                   help="generate from a baseline instead: poisson (fit on the training split), hawkes-fit (an "
                   "exponential-kernel Hawkes process fit by maximum likelihood on the training split, cached in "
                   "RUN_DIR/baselines/hawkes_fit.json) or hawkes (the true process, synthetic_hawkes only)")
    add_max_events(p)
    p.add_argument("--max-memory", type=positive_float, default=2.0, help="memory budget in GiB (default 2)")
    add_run_options(p, input=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import pandas as pd

    from mtpp.commands._forecast_args import input_sequences
    from mtpp.data.checks import check_sequences
    from mtpp.errors import MtppError
    from mtpp.forecast.baselines import baseline_factory
    from mtpp.forecast.generate import generate, truncation_note
    from mtpp.forecast.predict import source_marks
    from mtpp.forecast.predict import check_table_path, write_table
    from mtpp.forecast.runs import load_run

    if args.events is not None and args.max_events is not None:
        raise MtppError("--max-events only applies with --horizon (--events N already fixes each sample's events)")
    check_table_path(args.out, args.overwrite)  # before the model is loaded and anything sampled
    per_sample = samples_table_path(Path(args.out))
    check_table_path(per_sample, args.overwrite)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    run = load_run(args.run_dir, args.data_dir, args.device, log=say, progress=True)
    seqs, where = input_sequences(run, args)  # a split of the run's data, or --input FILE's sequences
    if args.input is not None:
        seqs = check_sequences(seqs, int(run.model.num_marks), what=str(args.input), whose=f"the run {run.path}",
                               dtype=run.dtype)
    ids = list(range(len(seqs)))
    if args.sequences:
        ids = [sequence_index(seqs, x, "--sequences:", where) for x in args.sequences.split(",") if x.strip()]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:  # the rows of two copies could not be told apart (same sequence, sample and index)
            raise MtppError(f"--sequences: {', '.join(map(str, twice))} given more than once; name each sequence "
                            "once (--samples N gives N continuations of each)")
    histories = [seqs[i] for i in ids]
    source = f"{run.cfg.data.name}/{args.split}" if args.input is None else str(args.input)
    with run.threads():  # the baselines' fits too (hawkes-fit: 12x slower with a second thread on a busy core)
        target = run.model if args.baseline == "model" else baseline_factory(args.baseline, run, log=say)
        t = time.perf_counter()
        g = generate(target, histories, horizon=args.horizon, events=args.events, samples=args.samples,
                     max_events=args.max_events or MAX_EVENTS, sampler=args.sampler, seed=args.seed,
                     max_memory=int(args.max_memory * (1 << 30)), source=source, progress=True)
    seconds = time.perf_counter() - t
    frame, samples = g.to_frame(), g.samples_frame(args.horizon)
    source_marks(frame, getattr(run.data, "mark_ids", None), ["mark"])  # the data's own mark ids, if remapped
    names = np.array([s.name for s in histories], dtype=object)  # the user's own ids (a table's seq_id), if any
    for table in (frame, samples):
        local = table["sequence"].to_numpy()
        table["sequence"] = np.asarray(ids)[local]  # split indices
        if any(n is not None for n in names):
            table.insert(1, "seq_id", pd.array(names[local], dtype="string"))
    path = write_table(frame, args.out, overwrite=args.overwrite)
    write_table(samples, per_sample, overwrite=args.overwrite)
    empty = int((samples["events"] == 0).sum())
    print(f"{path}: {len(frame)} events in {g.rows} samples of {len(histories)} sequences "
          f"({'' if args.baseline == 'model' else f'baseline {args.baseline}, '}{g.info['sampler']} sampler, "
          f"{len(frame) / max(seconds, 1e-9):.0f} events/s)"
          + (f"; {truncation_note(int(g.truncated.sum()), g.rows, g.info['max_events'])}"
             if args.horizon is not None else ""))
    print(f"{per_sample}: one row per sample, its event count ({empty} of {g.rows} samples have no event, so they "
          "have no row in the event table)")
    return 0


def samples_table_path(out: Path) -> Path:
    """The per-sample table written beside the event table ``out``: ``future.parquet`` -> ``future.samples.parquet``
    (``Generated.samples_frame``)."""
    return out.with_name(f"{out.stem}.samples{out.suffix}")
