#!/usr/bin/env python
"""Rows per second of ``mtpp predict``'s table (``mtpp.forecast.predict.predict_frame``) per model.

    MTPP_DATA_DIR=... python scripts/bench_predict.py gru-thp-base gru-sahp-base gru-lnm-base --dataset mooc \\
        --sequences 128 --set model.hidden_size=36 --out benchmarks/predict_mooc.json

Each model is built as ``mtpp bench`` builds it (``mtpp.bench.run_config_for``: defaults, ``--set``, the triple),
with seeded random weights (prediction cost does not depend on training), in evaluation mode, one thread. The first
``--sequences`` sequences of the dataset's training part are predicted at the default level (0.9) and top-k (5),
batch ``--batch-size``; one untimed pass, then ``--rounds`` timed passes, the median reported as rows per second
(one row per scored event). Run it at two commits (``PYTHONPATH=<checkout>``) to compare code versions on the
same machine; ``scripts/bench_md.py`` renders the ``--out`` rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from mtpp import bench
    from mtpp.forecast.predict import predict_frame
    from mtpp.models import build_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="ENCODER-DECODER-PARAMETRISATION, e.g. gru-thp-base")
    ap.add_argument("--dataset", default="synthetic_hawkes")
    ap.add_argument("--sequences", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--label", default="", help="a name for the code version measured (e.g. a commit)")
    ap.add_argument("--out", type=Path, help="append the rows to this JSON list")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seqs, num_marks, label = bench.load_sequences(bench.BenchConfig(dataset=args.dataset))
    seqs = seqs[: args.sequences]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(bench.__file__).parent, check=False).stdout.strip() or None
    except OSError:
        commit = None
    rows = []
    for spec in args.models:
        cfg = bench.run_config_for(spec, args.overrides)
        torch.manual_seed(0)
        model = build_model(cfg.model, num_marks).eval()
        predict_frame(model, seqs, batch_size=args.batch_size)  # untimed: allocator and caches warm
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            frame = predict_frame(model, seqs, batch_size=args.batch_size)
            times.append(time.perf_counter() - t0)
        row = {
            "predict_model": spec,
            "dataset": label,
            "sequences": len(seqs),
            "rows": len(frame),
            "batch_size": args.batch_size,
            "overrides": args.overrides,
            "seconds_median": statistics.median(times),
            "rows_per_second": len(frame) / statistics.median(times),
            "rounds": times,
            "code": args.label or commit,
            "torch_version": torch.__version__,
            "threads": 1,
        }
        rows.append(row)
        print(f"{spec}: {row['rows']} rows, {row['seconds_median']:.2f} s (median of {args.rounds}), "
              f"{row['rows_per_second']:,.0f} rows/s [{row['code']}]", flush=True)
    if args.out:
        old = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else []
        args.out.write_text(json.dumps(old + rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
