"""``mtpp evaluate RUN_DIR``: recompute a run's metrics from its ``best.pt`` and update ``metrics.json``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from mtpp.commands._forecast_args import MAX_EVENTS, add_max_events, positive_int

SHOWN = (
    ("L_T/seq", "nll_time_per_seq"),
    ("L_M/seq", "nll_mark_per_seq"),
    ("L_T/ev", "nll_time_per_event"),
    ("L_M/ev", "nll_mark_per_event"),
    ("acc. forecast", "accuracy_forecast"),
    ("acc. given time", "accuracy_given_time"),
    ("MRR forecast", "mrr_forecast"),
    ("PCE", "pce"),
    ("ECE forecast", "ece_forecast"),
)
LATTICE_SHOWN = (("L_T binned/seq", "nll_time_binned_per_seq"), ("PCE binned", "pce_binned"))
"""Added after ``L_T/seq`` / ``PCE`` when the first evaluated run's data lie on a lattice (``mtpp.data.lattice``)."""


def caption(columns: tuple[tuple[str, str], ...], first_event: str | None, time_units: set | None = None) -> str:
    """The line above the table: units and what each kind of column conditions on. ``time_units``: the runs'
    documented time units (``mtpp.data.catalog.time_unit_of``; ``None`` = not recorded), named when they agree."""
    from mtpp.data.catalog import time_unit_text

    skipped = {"skip": "not scored", "include": "scored"}.get(str(first_event), "as each run's model.first_event says")
    binned = any(k == "nll_time_binned_per_seq" for _, k in columns)
    units = time_units or {None}
    unit = time_unit_text(next(iter(units))) if len(units) == 1 else "each run's data unit (they differ)"
    return ("(L_T: -log f(tau | H), L_M: -log p(k | tau_obs, H), told the observed time; NLL in nats "
            f"per sequence (/seq) or per scored event (/ev), times in {unit}; acc. / MRR forecast: p(k | H), "
            "next time unknown; acc. given time: p(k | tau_obs, H); PCE: calibration of the time distribution (PIT), "
            "ECE: of the forecast marks, both unitless"
            + ("; binned: of each gap's lattice bin, unitless (mtpp.data.lattice)" if binned else "")
            + f"; first event of each sequence {skipped})")


def shown_columns(first: dict) -> tuple[tuple[str, str], ...]:
    """The table's columns: ``SHOWN``, with ``LATTICE_SHOWN`` beside their continuous kin when ``first`` (the first
    row's metrics) has the binned NLL."""
    if "nll_time_binned_per_seq" not in first:
        return SHOWN
    after = {"nll_time_per_seq": LATTICE_SHOWN[0], "pce": LATTICE_SHOWN[1]}
    return tuple(c for col in SHOWN for c in (col, after.get(col[1])) if c is not None)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="recompute a run's metrics from best.pt",
        description="Rebuild the model from RUN_DIR/config.yaml, load best.pt, evaluate on a split of the data the "
        "run recorded (its folder and fingerprints in config.yaml) and update RUN_DIR/metrics.json and "
        "arrays_<split>.json. Data with other fingerprints are refused unless --other-data, which writes "
        "metrics.other-<fingerprint>.json instead. A folder of runs (variants, or a compare --out folder) "
        "evaluates each run below it.",
    )
    p.add_argument("run_dir", type=Path, help="a run directory written by mtpp train")
    p.add_argument("--split", choices=("val", "test", "train", "all"), default=None,
                   help="default: test; all = val and test (train only when named)")
    p.add_argument("--input", type=Path, metavar="FILE",
                   help="score the sequences of this file or folder instead of a split (a CSV / Parquet table with "
                   "seq_id, time, mark, or any format mtpp data describe reads; marks in the ids of the run's data): "
                   "the metrics are printed, nothing is written into the run folder")
    p.add_argument("--sort", action="store_true", help="with --input: sort unsorted sequences instead of refusing them")
    p.add_argument("--per-sequence", type=Path, metavar="OUT",
                   help="with --input: also write each sequence's time and mark log-likelihood (mtpp.log_likelihood) "
                   "to this .csv / .parquet (never replaced)")
    p.add_argument("--data-dir", help="where the datasets are (default: the run's recorded data folder, then "
                   "$MTPP_DATA_DIR, then ./data)")
    p.add_argument("--other-data", action="store_true",
                   help="accept data whose fingerprints differ from the run's; results go to "
                   "metrics.other-<fingerprint>.json, never metrics.json")
    p.add_argument("--device", help="override train.device (auto, cpu, cuda[:n])")
    p.add_argument("--batch-size", type=positive_int, help="evaluation batch size (default: the run's)")
    p.add_argument("--horizon", type=float, help="also score forecasts of the events within this time span "
                   "(T-mAP, OTD, count calibration; mtpp.forecast.horizon), with the baselines, as horizon_* keys")
    p.add_argument("--samples", type=positive_int, help="sampled continuations per point for --horizon (default 32)")
    p.add_argument("--points", type=positive_int,
                   help="at most this many prediction points for --horizon (default 1000)")
    p.add_argument("--no-mark-forecast", action="store_true",
                   help="skip the mark forecast p(k | H) (a quadrature over the next gap for every event and mark: "
                   "slow with many marks for + / ++ and joint THP / SAHP / FNN models; the command says its estimated "
                   "time up front when over a minute): its columns say 'not computed', and the run's metrics.json and "
                   "arrays files are not rewritten (they keep the forecast metrics training computed)")
    add_max_events(p)
    p.set_defaults(func=run)


def run_dirs(path: Path) -> list[Path]:
    """``path`` itself if it is a run, else the runs below it at any depth (a variants folder, or a ``compare
    --out`` folder of ``<dataset>/<cell>/split<i>-seed<j>``), sorted; a run's own sub-folders are not searched."""
    if (path / "config.yaml").is_file():
        return [path]
    if not path.is_dir():
        return []
    found = sorted(p.parent for p in path.rglob("config.yaml"))
    return [p for i, p in enumerate(found) if not any(q in p.parents for q in found[:i])]


def run(args: argparse.Namespace) -> int:
    from mtpp.errors import MtppError

    import math

    if args.horizon is not None and not (math.isfinite(args.horizon) and args.horizon > 0):
        raise MtppError(f"--horizon: a time span > 0 in the data's units, got {args.horizon}")
    given = [f"--{n.replace('_', '-')}" for n in ("samples", "points", "max_events") if getattr(args, n) is not None]
    if given and args.horizon is None:
        raise MtppError(f"{' and '.join(given)} only apply with --horizon (the horizon metrics); add --horizon T")
    if args.input is not None or args.per_sequence is not None or args.sort:
        return _evaluate_input(args)
    args.split = args.split or "test"
    samples = 32 if args.samples is None else args.samples
    points = 1000 if args.points is None else args.points
    runs = run_dirs(args.run_dir)
    if not runs:
        from mtpp.runs import not_a_run

        raise MtppError(not_a_run(args.run_dir))
    splits = ("val", "test") if args.split == "all" else (args.split,)
    from mtpp.training.checkpoint import BEST

    folder = len(runs) > 1
    if folder:
        print(f"{args.run_dir}: {len(runs)} runs below it; each one's metrics and arrays files are rewritten "
              "from its best.pt", file=sys.stderr, flush=True)
    table, log, failed = _Table(stream=not folder), _warn_once(), []
    for run_dir in runs:
        if folder and not (run_dir / BEST).is_file():  # one unfinished run does not stop the rest
            print(f"{run_dir}: skipped (no {BEST}: not trained yet)", file=sys.stderr, flush=True)
            continue
        try:
            for split in splits:
                _evaluate_split(run_dir, split, args, table, log, samples, points)
        except MtppError as e:  # in a folder, one broken or busy run does not stop the others
            if not folder:
                raise
            failed.append(str(run_dir))
            print(f"{run_dir}: error: {e}", file=sys.stderr, flush=True)
    table.flush()
    if failed:
        raise MtppError(f"{len(failed)} of {len(runs)} run(s) could not be evaluated (errors above): "
                        + ", ".join(failed))
    return 0


def _evaluate_input(args: argparse.Namespace) -> int:
    """``--input FILE``: the run's model on the file's sequences (``LoadedRun.read_sequences``), its metrics row
    printed, and with ``--per-sequence OUT`` each sequence's log-likelihood written; the run folder is not touched."""
    from mtpp.errors import MtppError
    from mtpp.evaluation.evaluate import evaluate
    from mtpp.evaluation.likelihood import log_likelihood
    from mtpp.forecast.predict import check_table_path, write_table
    from mtpp.forecast.runs import load_run

    if args.input is None and args.sort:
        raise MtppError("--sort only applies with --input (the run's own data were read as its config says)")
    if args.input is None:
        raise MtppError("--per-sequence applies with --input FILE (the run's own splits: mtpp predict gives one row "
                        "per event)")
    given = [f for f, v in (("--split", args.split), ("--other-data", args.other_data), ("--horizon", args.horizon))
             if v]  # fmt: skip
    if given:
        raise MtppError(f"--input scores the file's sequences: {' and '.join(given)} do not apply with it")
    if args.per_sequence is not None:
        check_table_path(args.per_sequence, False)  # before anything is computed
    run = load_run(args.run_dir, args.data_dir, args.device, log=lambda m: print(m, file=sys.stderr, flush=True),
                   progress=True)
    seqs = run.read_sequences(args.input, sort=args.sort, log=lambda m: print(m, file=sys.stderr), progress=True)
    from mtpp.commands._forecast_args import require_scored_events

    require_scored_events(seqs, run.cfg.model.first_event, str(args.input), "score longer sequences (mtpp predict "
                          "--include-next forecasts the event after each)")
    bs = args.batch_size or run.cfg.train.evaluation_batch_size
    with run.threads():
        events = run.cfg.train.evaluation_events(int(run.model.num_marks))  # the run's bound, not the default's
        metrics = evaluate(run.model, data=seqs, batch_size=bs, max_events=events,
                           mark_forecast=not args.no_mark_forecast, log=lambda m: print(m, file=sys.stderr, flush=True))
        frame = None if args.per_sequence is None else log_likelihood(run.model, seqs, batch_size=bs,
                                                                      max_events=events)
    metrics["first_event"] = run.cfg.model.first_event
    table = _Table()
    table.row(run.path, Path(args.input).name, metrics)
    if frame is not None:
        path = write_table(frame, args.per_sequence)
        print(f"{path}: {len(frame)} sequences, their log-likelihoods in nats (log_lik_time, log_lik_mark, log_lik)",
              file=sys.stderr)
    print(f"{run.path}: scored {len(seqs)} sequences of {args.input}; nothing written into the run folder",
          file=sys.stderr)
    return 0


class _Table:
    """The Markdown table on stdout, no header without a row (a refusal prints no table). One run: printed row by
    row (``shown_columns`` of its first row). A folder (``stream=False``): printed by ``flush`` at the end, with the
    lattice columns when any row has them (``n/a`` in the others), whatever order the runs come in."""

    def __init__(self, stream: bool = True) -> None:
        self.stream = stream
        self.columns: tuple[tuple[str, str], ...] | None = None
        self.rows: list[tuple[Path, str, dict]] = []

    def row(self, run_dir: Path, split: str, metrics: dict) -> None:
        if not self.stream:
            self.rows.append((run_dir, split, metrics))
            return
        if self.columns is None:
            self._header(shown_columns(metrics), {metrics.get("first_event")}, {_time_unit(run_dir)})
        self._print(run_dir, split, metrics)

    def flush(self) -> None:
        if self.rows:
            lattice = next((m for _, _, m in self.rows if "nll_time_binned_per_seq" in m), self.rows[0][2])
            self._header(shown_columns(lattice), {m.get("first_event") for _, _, m in self.rows},
                         {_time_unit(r) for r, _, _ in self.rows})
            for row in self.rows:
                self._print(*row)
        self.rows = []

    def _header(self, columns: tuple[tuple[str, str], ...], first_events: set, time_units: set) -> None:
        self.columns = columns
        print(caption(columns, first_events.pop() if len(first_events) == 1 else None, time_units))
        print("| run | split | " + " | ".join(c for c, _ in columns) + " |")
        print("|" + "---|" * (len(columns) + 2))

    def _print(self, run_dir: Path, split: str, metrics: dict) -> None:
        from mtpp.training.trainer import fmt_value

        from mtpp.evaluation.evaluate import NOT_COMPUTED

        skipped = metrics.get("mark_forecast") == NOT_COMPUTED  # --no-mark-forecast: said, never n/a / 0 / NaN
        cells = " | ".join(NOT_COMPUTED if skipped and k.endswith("_forecast") and k not in metrics
                           else fmt_value(metrics.get(k)) for _, k in self.columns or ())
        print(f"| {run_dir} | {split} | {cells} |", flush=True)


def _time_unit(run_dir: Path) -> str | None:
    """The documented time unit of the run's data (its ``config.yaml``'s ``data.name``), ``None`` if not recorded."""
    from mtpp.data.catalog import time_unit_of
    from mtpp.runs import open_run

    return time_unit_of(open_run(run_dir).config.data.name)


def _warn_once() -> Callable[[str], None]:
    """A stderr logger that says each line once: a warning once whatever run it is about (the same data's warning,
    not once per run of a folder), any other line once as it is (a run's data line, not once per split of
    ``--split all``)."""
    said: set[str] = set()

    def log(msg: str) -> None:
        text = msg.split(": ", 1)[-1]
        key = text if text.startswith("warning:") else msg
        if key in said:
            return
        said.add(key)
        print(msg, file=sys.stderr, flush=True)

    return log


def _evaluate_split(run_dir: Path, split: str, args: argparse.Namespace, table: _Table, log: Callable[[str], None],
                    samples: int, points: int) -> None:  # fmt: skip
    """One run on one split: its metrics (rewritten from best.pt), its table row, its horizon metrics if asked."""
    from mtpp.evaluation.evaluate import evaluate
    from mtpp.runs import RunLock

    from mtpp.forecast.horizon import evaluate_run_horizon, format_horizon

    with RunLock(run_dir):  # no training or other evaluation writes the folder meanwhile
        # the horizon metrics first: a horizon the data cannot score (no prediction point) fails before any file is
        # written or row printed; the plain evaluation then keeps their horizon_* keys beside its own
        h = None if args.horizon is None else evaluate_run_horizon(
            run_dir, split, args.horizon, args.data_dir, samples=samples, max_points=points,
            max_events=args.max_events or MAX_EVENTS, device=args.device, progress=True, log=log)  # fmt: skip
        skip = args.no_mark_forecast
        m = evaluate(run_dir, split, args.data_dir, batch_size=args.batch_size, device=args.device,
                     other_data=args.other_data, log=log, progress=True, write=not skip,
                     mark_forecast=not skip)  # fmt: skip
    if skip:
        print(f"{run_dir}: {split}: mark forecast not computed (--no-mark-forecast); metrics.json and "
              f"arrays_{split}.json left as they were", file=sys.stderr, flush=True)
    table.row(run_dir, split, m)
    if h is not None:
        from mtpp.data.catalog import time_unit_text

        print(format_horizon(h, f"{run_dir} {split}", time_unit_text(_time_unit(run_dir))))
