"""``mtpp tune CONFIG --trials N --space SPACE.yaml --out DIR``: hyper-parameter search with Optuna.

Thin: parse, call :func:`mtpp.tuning.tune`, print. The space format, the objective, pruning and resuming are
documented in :mod:`mtpp.tuning`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  mtpp tune configs/models/gru_lnm.yaml --space space.yaml --trials 30 --out runs/tune_lnm
  mtpp tune configs/models/gru_lnm.yaml --space space.yaml --trials 40 --out runs/tune_lnm   # 10 more

space.yaml maps config keys to distributions:
  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  model.hidden_size: {type: int, low: 8, high: 64, step: 8}
  model.decoder: [lnm, rmtpp]

Every value of a categorical or of a range of at most 256 values (every combination, up to 512) is checked
against the config before the search (a continuous float range at its ends); a point that fails anyway fails
its trial in one line. Keys that change the data the NLL is measured on (data.name, data.split,
data.max_sequences, ...), how it is computed (model.eval_integration, model.eval_integration_nodes,
model.tie_resolution) or nothing a run computes (logging.*, train.device, ...) cannot be searched, nor an
entry of one value.

Objective: validation NLL per sequence (nats, lower is better; under train.select_time_on: binned the
binned L_T + L_M, val nll_binned_per_seq, as early stopping); trials are pruned by the median rule
after an epoch from the second on (never after the first nor after the last, train.max_epochs).
Each trial is a run directory OUT/trial_NNN; the study is OUT/study.db (rerun the command to resume it);
the best configuration is written to OUT/best.yaml (train it with mtpp train OUT/best.yaml --out DIR) and
every trial to OUT/trials.csv. OUT must be new, empty or a folder mtpp tune wrote (its study.db, best.yaml,
trials.csv, trial_NNN runs of that study, mtpp report's summaries): anything else is refused before any work.
Needs the 'tune' extra: pip install -e ".[tune]"."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune",
        help="hyper-parameter search with Optuna (pruning, resumable study, best config as YAML)",
        description="Search the keys of SPACE.yaml around the configuration CONFIG, minimising the validation "
        "NLL per sequence; one run directory per trial under --out.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, nargs="?", help="base run configuration YAML (default: every default)")
    p.add_argument("--space", type=Path, required=True, help="search space YAML (config key -> distribution)")
    p.add_argument("--trials", type=int, required=True, help="total number of finished trials wanted (>= 1)")
    p.add_argument("--out", type=Path, required=True, help="output folder: trial runs, study.db, best.yaml")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override the base config, e.g. --set train.max_epochs=20; repeatable",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="sampler seed, 0 to 2**32-1 (default: train.seed)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="start no new trial after this many seconds (> 0)")
    p.add_argument("--verbose-runs", action="store_true", help="show each trial's progress bar and epoch lines")
    p.add_argument("--data-dir", help="where the datasets are (default: $MTPP_DATA_DIR, then ./data)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtpp.config import load_config
    from mtpp.tuning import load_space, tune

    cfg = load_config(args.config, list(args.overrides))
    if args.data_dir is not None:
        from mtpp.training.setup import refuse_unused_data_dir

        refuse_unused_data_dir(cfg, args.data_dir)
    space = load_space(args.space)
    result = tune(cfg, space, args.out, args.trials, data_dir=args.data_dir, seed=args.seed,
                  timeout=args.timeout, space_source=str(args.space), verbose_runs=args.verbose_runs)
    params = "  ".join(f"{k}={v!r}" for k, v in result["best_params"].items())
    print(f"best: trial {result['best_trial']}  {result['objective']} {result['best_value']:.4f} nats  {params}")
    print(f"{result['finished']} complete, {result['pruned']} pruned, {result['failed']} failed; "
          f"wrote {result['best_config']}")
    return 0
