"""Where on the time lattice do decoders differ? Test ``L_T`` per sequence of trained runs, split by gap size in quanta.

On data whose times lie on a lattice (``mtpp.data.lattice``), a continuous density can lower ``L_T`` by concentrating
on the lattice points; this shows which gaps a difference in ``L_T`` comes from. For each run directory (its
``best.pt``, its own data and test split), the scored events' terms ``-log f(tau | H)`` (nats, data units) are summed
per gap class (``k = round(tau / q)`` quanta) and divided by the number of test sequences, so each row sums to the
run's ``L_T`` per sequence (survival terms, 0 in the benchmark grids, are left out); the last column is the binned
NLL per sequence (``nll_time_binned_per_seq``). Prints a Markdown table.

    python scripts/lattice_decomposition.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

CLASSES = ((0, 0), (1, 1), (2, 2), (3, 5), (6, 10), (11, 20), (21, 100), (101, 1000), (1001, None))
"""Gap classes in quanta (inclusive bounds; ``None``: no upper bound)."""


def decompose(run_dir: Path) -> tuple[str, list[float], float, float]:
    """``(label, L_T per sequence per class, L_T per sequence, binned NLL per sequence)`` of one run's test split."""
    import torch

    from mtpp.data.batch import collate
    from mtpp.data.lattice import time_lattice
    from mtpp.runs import open_run, torch_threads
    from mtpp.training.setup import DTYPES, build_run_model

    run = open_run(run_dir)
    cfg = run.config
    with torch_threads(cfg.train.threads):
        data, _, _ = run.load_data(None)
        lattice = time_lattice(data.train)
        if lattice is None:
            raise SystemExit(f"{run_dir}: the training gaps of its data are not on a lattice")
        state = run.best_state(map_location="cpu")
        dtype = DTYPES[cfg.data.dtype]
        model = build_run_model(cfg, int(state.get("num_marks") or data.num_marks), torch.device("cpu")).to(dtype)
        run.load_best(model, state)
        model.eval()
        seqs = data.split("test")
        sums = np.zeros(len(CLASSES))
        total = binned = 0.0
        with torch.no_grad():
            for i in range(0, len(seqs), 64):
                batch = collate(seqs[i : i + 64], dtype=dtype)
                scores = model.score(batch, forecast=False, time_quantum=lattice.quantum)
                out = scores.nll
                total += float(out.time_nll.double().sum())
                binned += float(scores.time_nll_binned.double().sum())
                k = np.round(batch.taus.double().numpy() / lattice.quantum)[out.scored.numpy()]
                terms = out.time_terms.double().numpy()[out.scored.numpy()]
                for j, (lo, hi) in enumerate(CLASSES):
                    sums[j] += terms[(k >= lo) & ((k <= hi) if hi is not None else True)].sum()
    n = len(seqs)
    label = f"{run_dir.parent.parent.name}/{run_dir.parent.name}/{run_dir.name}"
    return label, list(sums / n), total / n, binned / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="run directories with best.pt")
    args = p.parse_args(argv)
    heads = [f"{lo}" if lo == hi else f"{lo}-{hi}" if hi is not None else f">{lo - 1}" for lo, hi in CLASSES]
    print("| run | " + " | ".join(f"gaps of {h} q" for h in heads) + " | L_T/seq | L_T binned/seq |")
    print("|---" * (len(CLASSES) + 3) + "|")
    for run in args.runs:
        label, parts, total, binned = decompose(run)
        print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in parts) + f" | {total:.2f} | {binned:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
