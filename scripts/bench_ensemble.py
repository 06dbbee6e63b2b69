"""Training throughput of a vectorised ensemble of M members vs one model, same step, same thread count.

    MTPP_DATA_DIR=... python scripts/bench_ensemble.py --dataset mooc --models gru-lnm-base gru-thp-base \
        --members 5 --batch-size 8 --threads 1 --set model.hidden_size=46

Both sides run the training step with the gradient diagnostics (cos_tm every step, as paper_table1.yaml logs):
the single model ``mtpp.training.trainer.train_step`` (what ``mtpp bench`` times), the ensemble
``mtpp.training.stacked.ensemble_step`` on ``M`` per-member batches (each member its own shuffled batch of the
same training part, seeds 0..M-1), batch stacking included. Alternating rounds (single, ensemble, single, ...);
medians reported. Events are real events summed over members.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mooc")
    p.add_argument("--split", type=int, default=0)
    p.add_argument("--models", nargs="+", default=["gru-lnm-base", "gru-thp-base"])
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    p.add_argument("--align", action=argparse.BooleanOptionalAction, default=True,
                   help="plan the members' batches by length quantile (aligned_schedule; default on)")
    p.add_argument("--out", default=None, help="write the rows as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mtpp.bench import run_config_for
    from mtpp.data.catalog import load_dataset
    from mtpp.data.sampler import make_loader
    from mtpp.models.scaling import resolve_time_scale
    from mtpp.training.setup import DTYPES, build_run_model
    from mtpp.training.stacked import StackedAdam, aligned_schedule, StackedMembers, ensemble_step, stack_batches
    from mtpp.training.trainer import Stepper, train_step

    ds = load_dataset(args.dataset, split=args.split)
    rows = []
    for spec in args.models:
        cfg = run_config_for(spec, args.overrides)
        dtype = DTYPES[cfg.data.dtype]
        scale = resolve_time_scale(cfg.data.time_scale, ds.train)
        epoch = []  # [member][batch]: one epoch of each member's own sampler
        for m in range(args.members):
            loader = make_loader(ds.train, args.batch_size, shuffle=True, seed=m, dtype=dtype)
            loader.batch_sampler.set_epoch(1)
            epoch.append(list(loader))
        if args.align:  # mtpp.training.stacked.aligned_schedule: members at the same length quantile per step
            plan = aligned_schedule([[b.max_length for b in bs] for bs in epoch], torch.Generator().manual_seed(1))
            batches = [[epoch[m][plan[i][m]] for i in range(args.steps)] for m in range(args.members)]
        else:  # each member in its sampler order
            batches = [bs[: args.steps] for bs in epoch]
        padding = [1 - sum(sb.events) / sb.mask.numel() for sb in
                   (stack_batches([batches[m][i] for m in range(args.members)], dtype) for i in range(args.steps))]
        torch.manual_seed(0)
        single = Stepper(cfg, ds.num_marks, torch.device("cpu"))
        single.model.time_scale = scale
        single.model.train()
        models = []
        for m in range(args.members):
            torch.manual_seed(m)
            models.append(build_run_model(cfg, ds.num_marks, torch.device("cpu")))
        members = StackedMembers(models, [scale] * args.members)
        members.meta.train()
        adam = StackedAdam(members.flat, lr=cfg.train.lr)
        trainable = torch.ones_like(members.flat, dtype=torch.bool)

        def run_single() -> float:
            start, n = time.perf_counter(), 0
            for b in batches[0]:
                train_step(single, b, True)
                n += int(b.lengths.sum())
            single.records.flush()
            return n / (time.perf_counter() - start)

        def run_ensemble() -> float:
            start, n = time.perf_counter(), 0
            for i in range(args.steps):
                sb = stack_batches([batches[m][i] for m in range(args.members)], dtype)
                r = ensemble_step(members, adam, sb, trainable, True)
                r.stats.tolist()  # the host transfer the trainer does at flushes
                n += sum(sb.events)
            return n / (time.perf_counter() - start)

        run_single(), run_ensemble()  # warm-up (vmap / first-call costs)
        rates: dict[str, list[float]] = {"single": [], "ensemble": []}
        for _ in range(args.rounds):
            rates["single"].append(run_single())
            rates["ensemble"].append(run_ensemble())
        s, e = statistics.median(rates["single"]), statistics.median(rates["ensemble"])
        row = {
            "model": spec, "members": args.members, "batch_size": args.batch_size, "threads": args.threads,
            "single_events_per_second": s, "ensemble_events_per_second": e, "ratio": e / s,
            "single_rounds": rates["single"], "ensemble_rounds": rates["ensemble"],
            "overrides": args.overrides, "aligned": args.align,
            "ensemble_padding": statistics.mean(padding),
            "single_padding": statistics.mean(1 - b.mask.float().mean().item() for b in batches[0]),
        }  # fmt: skip
        rows.append(row)
        print(f"{spec}: single {s:,.0f} ev/s, ensemble of {args.members} {e:,.0f} ev/s (total), "
              f"ratio {e / s:.2f}x, padding {row['single_padding']:.0%} / {row['ensemble_padding']:.0%}  rounds {[round(x) for x in rates['single']]} / "
              f"{[round(x) for x in rates['ensemble']]}", flush=True)  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
