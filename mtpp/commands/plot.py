"""``mtpp plot RUN_DIR --sequence ID --out PNG``: a sequence, the model's intensity and sampled continuations."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtpp.commands._forecast_args import SEQUENCE_HELP, add_max_events, add_run_options, sequence_index


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot",
        help="plot one sequence with the model's intensity and sampled continuations",
        description="Draw one sequence of a split (--sequence I): observed events by mark, the model's conditional "
        "intensity, and --samples continuations after a cut (their median and 50 / 90 % bands of the event count "
        "against the observed count; each is drawn while the continuations cut at --max-events cannot change it). See mtpp.forecast.plot.",
    )
    p.add_argument("run_dir", type=Path, help="a run directory written by mtpp train")
    p.add_argument("--sequence", required=True, help=SEQUENCE_HELP)
    p.add_argument("--out", type=Path, required=True,
                   help="output image, format by extension: .png, .pdf, .svg, ... (never replaced without --overwrite)")
    p.add_argument("--horizon", type=float,
                   help="forecast window after the cut (default: 1/4 of the sequence; of its last 400 events when "
                        "longer: the figure draws the last 400 history events)")
    p.add_argument("--cut", type=int, help="number of history events (default: the last cut with an observed window)")
    p.add_argument("--samples", type=int, default=50, help="sampled continuations (default 50)")
    add_max_events(p)
    add_run_options(p, input=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtpp.commands._forecast_args import input_sequences
    from mtpp.data.catalog import time_unit_of, time_unit_text
    from mtpp.data.checks import check_sequences
    from mtpp.errors import MtppError
    from mtpp.evaluation.report import param_symbol
    from mtpp.forecast.plot import beyond_data_note, check_plot_path, default_horizon, plot_forecast, save_forecast_plot
    from mtpp.forecast.runs import load_run

    check_plot_path(args.out, args.overwrite)  # before the model is loaded

    run = load_run(args.run_dir, args.data_dir, args.device, log=lambda m: print(m, file=sys.stderr, flush=True),
                   progress=True)
    seqs, where = input_sequences(run, args)  # a split of the run's data, or --input FILE's sequences
    index = sequence_index(seqs, args.sequence, "--sequence", where)
    seq = check_sequences([seqs[index]], int(run.model.num_marks), what=where, whose=f"the run {run.path}",
                          dtype=run.dtype)[0]
    horizon = args.horizon if args.horizon is not None else default_horizon(seq)
    m = run.cfg.model
    unit = time_unit_of(run.cfg.data.name)
    named = f" (seq_id {seq.name!r})" if seq.name is not None else ""  # the user's own id of the sequence
    which = f"{run.cfg.data.name} {args.split}" if args.input is None else Path(args.input).name
    # the parametrisation as the tables name it: base / + / ++ (param_symbol), not "plusplus"
    title = (f"{which} sequence {index}{named}: {m.encoder}-{m.decoder} "
             f"{param_symbol(m.parametrisation)}, horizon {horizon:.4g} {time_unit_text(unit)}")
    notes: list[str] = []  # sampled continuations cut at --max-events, if any
    with run.threads():
        fig = plot_forecast(run.model, seq, horizon=horizon, cut=args.cut, samples=args.samples, seed=args.seed,
                            title=title, max_events=args.max_events, log=notes.append, time_unit=unit,
                            mark_ids=getattr(run.data, "mark_ids", None))
    path = save_forecast_plot(fig, args.out, overwrite=args.overwrite)
    notes.append(beyond_data_note(seq, horizon, args.cut, unit))
    print(f"{path}: sequence {index}{named} ({len(seq)} events), {args.samples} samples"
          + "".join(f"; {n}" for n in notes if n))
    return 0
