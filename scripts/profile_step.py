#!/usr/bin/env python
"""Where a training step's time goes: the torch profiler's operator table for one model on real batches.

    MTPP_DATA_DIR=... python scripts/profile_step.py gru-thp-base --dataset mooc --batch-size 8 \\
        --set model.hidden_size=36 --set model.num_components=32 --set model.integration_nodes=50

Builds the trainer's step exactly as ``mtpp bench`` does (``mtpp.bench``: seeded, length-bucketed batches of the
training split, the trainer's ``Stepper``), warms up, prints milliseconds per step without and with the gradient
diagnostics (``cos_tm``), then profiles ``--steps`` steps (diagnostics on unless ``--plain``) and prints the
operators sorted by their own CPU time. One thread unless ``--threads``.
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv: list[str] | None = None) -> int:
    from mtpp import bench
    from mtpp.training.setup import DTYPES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="ENCODER-DECODER-PARAMETRISATION, e.g. gru-thp-base")
    ap.add_argument("--dataset", default="synthetic_hawkes",
                    help="catalog name or path; its training part is batched (default synthetic_hawkes)")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default 8)")
    ap.add_argument("--steps", type=int, default=20, help="profiled steps (default 20)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--plain", action="store_true", help="profile the step without gradient diagnostics")
    ap.add_argument("--rows", type=int, default=25, help="operators shown (default 25)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="configuration override, e.g. model.hidden_size=36; repeatable")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = bench.BenchConfig(dataset=args.dataset, batch_size=args.batch_size, steps=args.steps,
                            overrides=list(args.overrides))  # fmt: skip
    run_cfg = bench.run_config_for(args.model, cfg.overrides)
    sequences, num_marks, label = bench.load_sequences(cfg)
    batches = bench.bench_batches(sequences, cfg, DTYPES[run_cfg.data.dtype], "cpu")
    ctx = bench.make_step_context(run_cfg, num_marks, torch.device("cpu"), False, False)
    ctx.model.train()
    for diagnostics in (False, True):
        for b in batches:  # warm-up: every batch shape once
            bench.train_step(ctx, b, diagnostics)
        start = time.perf_counter()
        for b in batches:
            bench.train_step(ctx, b, diagnostics)
        ms = (time.perf_counter() - start) / len(batches) * 1000
        print(f"{args.model} on {label}, batch {args.batch_size}: {ms:.1f} ms/step "
              f"{'with' if diagnostics else 'without'} diagnostics")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches:
            bench.train_step(ctx, b, not args.plain)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
