"""``mtpp bench``: training / evaluation events per second, gradient-diagnostics overhead and peak memory per model.

The measurement itself lives in :mod:`mtpp.bench` (its docstring says exactly what is timed and counted).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtpp.commands._types import seed as seed_type

TRAIN_THREADS = 1
"""``mtpp bench``'s default thread count: ``train.threads``'s default (tested to agree), so the figures are the ones
``mtpp train`` gets."""

EPILOG = """\
examples:
  mtpp bench                                        # default models on synthetic_hawkes, CPU
  mtpp bench --models gru-lnm-base thp-thp-plusplus --steps 50 --out bench.json
  mtpp bench --dataset mooc --device cuda --amp --batch-size 64
  mtpp bench --dataset lastfm --longest --batch-size 8 --models gru-lnm-base     # LastFM-length memory
  mtpp bench --synthetic-length 6396 --batch-size 8 --models gru-lnm-base        # same without real data
  mtpp bench --set model.hidden_size=64 --set model.num_components=16

Events are all real (non-padded) events of the batches. "diag" steps compute cos_tm / GMS / norms every step
(backward_step(want_stats=True)); overhead % = (plain ev/s) / (diag ev/s) - 1. Peak MB: process peak RSS on CPU
(each model in a fresh process unless --no-isolate), torch.cuda.max_memory_allocated on CUDA.
Keep the default --threads 1 on a shared or busy CPU: oversubscribed intra-op threads can make small models
10-100x slower."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark training / evaluation throughput and peak memory of models",
        description="For each model: training events per second with and without gradient diagnostics, "
        "evaluation events per second, peak memory, parameter count and padding fraction; a table on stdout "
        "and optionally a JSON list of rows.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", default="synthetic_hawkes", metavar="NAME|PATH",
                   help="catalog name or path (default synthetic_hawkes); its training part is used")
    p.add_argument("--split", type=int, default=0, help="dataset split (default 0)")
    p.add_argument("--data-dir", default=None, help="data directory (default: $MTPP_DATA_DIR, then ./data)")
    p.add_argument("--models", nargs="+", default=None, metavar="ENC-DEC-PAR",
                   help="encoder-decoder-parametrisation triples (default: mtpp.bench.DEFAULT_MODELS, ten models "
                   "covering every encoder, decoder and parametrisation)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch (default 16)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per phase (default 30)")
    p.add_argument(
        "--warmup", type=int, default=None,
        help="untimed steps before each phase (default: one pass over the timed batches, so every batch shape has "
        "been seen once)",
    )
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds of the plain and the diagnostics phase; medians are reported (default 3)")
    p.add_argument("--diagnostics", choices=("on", "off", "both"), default="both",
                   help="time the training step with gradient diagnostics, without, or both (default both)")
    p.add_argument("--max-length", type=int, default=None, metavar="N",
                   help="truncate every sequence to its first N events")
    p.add_argument("--longest", action="store_true",
                   help="batch the longest sequences (worst-case memory) instead of a bucketed random epoch")
    p.add_argument("--synthetic-length", type=int, default=None, metavar="N",
                   help="instead of --dataset, simulate Hawkes sequences of N events each (no data needed)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the encoders (CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model's nll (compile time is "
                   "spent in the warm-up)")
    p.add_argument("--threads", type=int, default=TRAIN_THREADS,
                   help=f"torch.set_num_threads (default {TRAIN_THREADS}: what mtpp train runs with, train.threads; "
                        "torch's own choice, one thread per core, ran 10-100x slower on a busy machine)")
    p.add_argument("--seed", type=seed_type, default=0, help="seed of the batches and the model (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="configuration override for every model, e.g. model.hidden_size=64; repeatable")
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="run every model in this process (peak RSS is then cumulative)")
    p.add_argument("--out", type=Path, default=None,
                   help="write the rows as a JSON list to this file (never replaced unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtpp.bench import DEFAULT_MODELS, BenchConfig, format_table, run_bench, write_json

    cfg = BenchConfig(
        dataset=args.dataset,
        split=args.split,
        data_dir=args.data_dir,
        device=args.device,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        rounds=args.rounds,
        diagnostics=args.diagnostics,
        max_length=args.max_length,
        longest=args.longest,
        synthetic_length=args.synthetic_length,
        amp=args.amp,
        compile=args.compile,
        overrides=list(args.overrides),
        num_threads=args.threads,
        seed=args.seed,
        phase_progress=not args.quiet,
    )
    if args.out is not None and args.out.exists() and (args.out.is_dir() or not args.overwrite):
        from mtpp.errors import MtppError

        raise MtppError(f"{args.out}: " + ("is a folder; --out must name a file" if args.out.is_dir()
                                           else "exists; choose another --out or pass --overwrite"))
    if args.out is not None:
        from mtpp.files import check_writable

        check_writable(args.out)  # before the benchmark, not after it
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if progress is not None and args.synthetic_length is None:
        from mtpp.data.catalog import resolve_source

        name, path, _ = resolve_source(args.dataset, args.data_dir)
        progress(f"bench: data {name} <- {path} (split {args.split}, training part)")
    def on_row(rows: list) -> None:  # finished models survive a stopped bench
        if progress is not None:
            progress(format_table(rows[-1:]).splitlines()[-1])
        if args.out is not None:
            write_json(rows, args.out)

    rows = run_bench(args.models or list(DEFAULT_MODELS), cfg, isolate=args.isolate, progress=progress, on_row=on_row)
    print(format_table(rows))
    if args.out is not None:
        print(f"wrote {len(rows)} rows to {args.out}")
    return 0
