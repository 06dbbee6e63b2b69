"""``mtpp simulate {hawkes,poisson}``: write a seeded synthetic split folder (Bosser JSON format)."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from mtpp.commands._types import positive_float, seed as seed_type
from mtpp.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate a synthetic marked Hawkes or Poisson dataset",
        description="Simulate i.i.d. sequences on [0, WINDOW] with random (seeded) stationary parameters and write "
        "OUT/split_<s>/{train,val,test,args}.json (60/20/20; args.json holds the parameters).",
    )
    sub = parser.add_subparsers(dest="process", metavar="PROCESS", required=True)
    hawkes = sub.add_parser(
        "hawkes", help="multivariate Hawkes process with exponential kernels",
        description="Simulate a stationary K-variate Hawkes process with exponential kernels (random seeded "
        "baseline rates and branching matrix scaled to --branching) by Ogata thinning on [0, WINDOW].",
    )  # fmt: skip
    _common(hawkes)
    hawkes.add_argument("--branching", type=float, default=0.5,
                        help="spectral radius of the branching matrix, in [0, 1) (default 0.5)")
    hawkes.add_argument("--base-rate", type=float, default=1.0, help="total baseline rate sum(mu) (default 1)")
    hawkes.add_argument("--beta", type=float, default=1.0, help="kernel decay rate (default 1)")
    poisson = sub.add_parser(
        "poisson", help="homogeneous marked Poisson process",
        description="Simulate a homogeneous marked Poisson process of total rate --rate on [0, WINDOW], mark "
        "probabilities drawn from a seeded Dirichlet(2, ..., 2).",
    )  # fmt: skip
    _common(poisson)
    poisson.add_argument("--rate", type=float, default=1.0, help="total event rate (default 1)")
    parser.set_defaults(func=run)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--marks", type=int, required=True, help="number of marks K")
    p.add_argument("--sequences", type=int, required=True, help="number of sequences")
    p.add_argument("--window", type=float, required=True, help="observation window end T of every sequence")
    p.add_argument("--seed", type=seed_type, default=0, help="seed of the parameters, the simulation and the splits")
    p.add_argument("--splits", type=int, default=1, help="number of random train/val/test partitions (default 1)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--max-memory", type=positive_float, default=4.0, metavar="GIB",
                   help="memory budget in GiB (default 4): a simulation estimated to need more is refused up front")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier simulation in OUT (its split_* folders and args.json; nothing else)")


def _validate(args: argparse.Namespace) -> None:
    if args.marks < 1:
        raise ConfigError(f"--marks must be >= 1, got {args.marks}")
    if args.sequences < 1:
        raise ConfigError(f"--sequences must be >= 1, got {args.sequences}")
    if not (math.isfinite(args.window) and args.window > 0):
        raise ConfigError(f"--window must be finite and > 0, got {args.window}")
    if args.splits < 1:
        raise ConfigError(f"--splits must be >= 1, got {args.splits}")
    if args.process == "hawkes" and not 0.0 <= args.branching < 1.0:
        raise ConfigError(f"--branching must be in [0, 1) for a stationary process, got {args.branching}")
    for name in ("base_rate", "beta", "rate"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out}: exists and is not a folder")
    existing = owned_entries(args.out)
    if existing and not args.force:
        raise ConfigError(f"{existing[0]} already exists (use --force to replace the earlier simulation)")
    foreign = not_simulated(args.out)
    if foreign:
        raise ConfigError(f"{foreign}; --force replaces only an earlier mtpp simulate output: choose another --out")


def _check_size(args: argparse.Namespace, events: float, marks: int) -> None:
    """Refuse (``ConfigError``, one line) a simulation whose estimated peak memory
    (``mtpp.data.synthetic.simulation_bytes``: ``events`` expected in all, the ``[sequences, marks]`` intensity
    state of a Hawkes process) exceeds ``--max-memory``, before any array is allocated (``--marks 100000`` asked
    numpy for 74.5 GiB and failed with its own error)."""
    from mtpp.data.synthetic import simulation_bytes

    need = simulation_bytes(marks, args.sequences, events)
    if need > args.max_memory * (1 << 30):
        raise ConfigError(
            f"this simulation needs about {need / (1 << 30):.3g} GiB ({args.sequences:,} sequences on [0, "
            f"{args.window:g}], about {events:.3g} events in all{f', {marks:,} marks' if marks else ''}), over "
            f"--max-memory {args.max_memory:g} GiB: fewer --sequences, a shorter --window, lower rates or fewer "
            "--marks (or raise --max-memory)")


_SIMULATED_FILES = {"args.json", "train.json", "val.json", "test.json"}


def not_simulated(out: Path) -> str | None:
    """Why the ``owned_entries`` of OUT are not an earlier ``mtpp simulate`` output (``None`` when they are, or
    there are none): an ``args.json`` without the simulation's ``process`` / ``simulation_seed``, or a ``split_<k>``
    holding anything but the files simulate writes there. ``--force`` never removes those."""
    import json

    entries = owned_entries(out)
    if not entries:
        return None
    top = out / "args.json"
    try:
        meta = json.loads(top.read_text(encoding="utf-8")) if top.is_file() else None
    except (OSError, ValueError):
        meta = None
    if not (isinstance(meta, dict) and "process" in meta and "simulation_seed" in meta):
        return f"{out} holds {entries[0].name} but no args.json of mtpp simulate"
    for p in entries:
        if p.name == "args.json":
            continue
        if not p.is_dir() or p.is_symlink():
            return f"{p} is not a folder simulate wrote"
        other = sorted(c.name for c in p.iterdir() if c.name not in _SIMULATED_FILES or not c.is_file())
        if other:
            return f"{p} holds {', '.join(other[:3])}, which simulate did not write"
    return None


def owned_entries(out: Path) -> list[Path]:
    """What ``simulate`` writes into OUT (and so may replace): ``args.json`` and the ``split_<k>`` folders."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.name == "args.json" or re.fullmatch(r"split_\d+", p.name))


def _write(out: Path, force: bool, write: Any) -> Any:
    """Write the split folder with ``write(folder)`` into a fresh temporary folder inside OUT, then (``--force``)
    remove the ``owned_entries`` of an earlier simulation and move the new ones in. Nothing else in OUT is
    touched: ``--out . --force`` replaces split_* and args.json, never the rest of the working directory."""
    import shutil
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".simulate.", dir=out))
    try:
        result = write(tmp / "data")
        new = sorted((tmp / "data").iterdir())
        clash = [p for p in owned_entries(out) if (out / p.name).exists()]
        if clash and not force:
            raise ConfigError(f"{clash[0]} already exists (use --force to replace the earlier simulation)")
        foreign = not_simulated(out)  # checked again: OUT may have changed while simulating
        if foreign:
            raise ConfigError(f"{foreign}; --force replaces only an earlier mtpp simulate output")
        for old in owned_entries(out):
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        for p in new:
            os.replace(p, out / p.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from mtpp.data import synthetic as syn

    _validate(args)
    hawkes = args.process == "hawkes"
    # before any array exists: the stationary rate of a branching ratio rho is about base_rate / (1 - rho)
    rate = args.base_rate / (1.0 - args.branching) if hawkes else args.rate
    _check_size(args, rate * args.window * args.sequences, args.marks if hawkes else 0)
    rng = np.random.default_rng(args.seed)
    if hawkes:
        params = syn.random_hawkes_params(
            args.marks, rng, branching=args.branching, base_rate=args.base_rate, beta=args.beta
        )
        stationary = params.stationary_rate()
        # the simulation starts at rest: on [0, WINDOW] the mean rate is below the stationary one (the transient)
        expected = params.expected_counts(args.window) / args.window
        total = float(np.sum(expected)) * args.window * args.sequences
        _check_size(args, total, args.marks)  # the exact expected count, now that the parameters exist
        from tqdm.auto import tqdm

        with tqdm(total=round(total), unit="event", desc="simulate", disable=None, leave=False) as bar:
            seqs = syn.simulate_hawkes_many(params, args.sequences, args.window, rng, on_events=bar.update)
        described = {
            "process": "hawkes",
            "kernel": "lambda_k(t) = mu_k + sum_{t_j<t} alpha[k,k_j] * beta * exp(-beta * (t - t_j))",
            "params": params.to_dict(),
            "branching": args.branching,
        }
    else:
        rates = rng.dirichlet(np.full(args.marks, 2.0)) * args.rate
        expected = stationary = rates
        seqs = syn.simulate_poisson_many(rates, args.sequences, args.window, rng)
        described = {"process": "poisson", "params": {"rates": rates.tolist()}}

    kept = [s for s in seqs if len(s) > 0]
    dropped = len(seqs) - len(kept)
    if not kept:
        raise ConfigError("every simulated sequence is empty: increase --window or the rates")
    counts = np.bincount(np.concatenate([s.marks for s in kept]), minlength=args.marks)
    args_json = {
        **described,
        "stationary_rate": np.asarray(stationary).tolist(),
        "expected_rate": np.asarray(expected).tolist(),
        "expected_rate_note": "expected events per unit time on [0, window] of a process started at rest (the "
        "stationary rate for Poisson; below it for Hawkes, whose intensity starts at mu)",
        "window": args.window,
        "marks": args.marks,
        "num_sequences": len(kept),
        "num_events": int(counts.sum()),
        "dropped_empty_sequences": dropped,
        "simulation_seed": args.seed,
    }
    sizes = _write(args.out, args.force, lambda folder: syn.write_simulated_splits(
        folder, kept, args=args_json, num_marks=args.marks, window=args.window, num_splits=args.splits, seed=args.seed
    ))  # fmt: skip

    observed = counts / (len(seqs) * args.window)  # empty sequences were observed too
    split_sizes = "/".join(str(sizes[p]) for p in ("train", "val", "test"))
    print(f"wrote {args.splits} split(s) to {args.out}: train/val/test = {split_sizes}")
    empty = [p for p in ("train", "val", "test") if not sizes[p]]
    if empty:  # mtpp train refuses an empty part: say so now, not at the first run
        print(f"warning: the {' and '.join(empty)} part(s) are empty ({len(kept)} non-empty sequences split "
              "60/20/20); mtpp train needs every part: simulate more --sequences", file=sys.stderr)
    print(f"{len(kept)} sequences ({dropped} empty dropped), {int(counts.sum())} events, {args.marks} marks, "
          f"{counts.sum() / len(kept):.1f} events per sequence")
    how = f"from rest on [0, {args.window:g}]; stationary {float(np.sum(stationary)):.4g}" if hawkes else "stationary"
    print(f"rate per unit time: expected {float(np.sum(expected)):.4g} ({how}), observed {observed.sum():.4g}")
    if args.marks <= 10:
        print("  per mark expected: " + " ".join(f"{v:.3g}" for v in expected))
        print("  per mark observed: " + " ".join(f"{v:.3g}" for v in observed))
    return 0
