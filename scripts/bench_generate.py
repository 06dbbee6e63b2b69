"""Generation with THP / SAHP encoders: re-encoding every step (``incremental=False``, the path before the
key/value cache) vs the cached default, in one process, on the same model, histories and seed.

    python scripts/bench_generate.py --lengths 100 1000 --events 50 --threads 1

Untrained models of the default sizes (``ModelConfig()``, the given decoder); ``--histories`` histories of each
length (unit-rate exponential gaps, uniform marks) x ``--samples`` samples, ``--events`` events each. Alternating
rounds (re-encode, cached, re-encode, ...); best of ``--rounds`` reported, with whether both gave the same marks
and the largest time difference (float rounding).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mtpp.data.sequence import EventSequence
from mtpp.forecast.generate import generate
from mtpp.models import ModelConfig, build_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoders", nargs="+", default=["thp", "sahp"])
    p.add_argument("--decoder", default="thp")
    p.add_argument("--lengths", nargs="+", type=int, default=[100, 1000])
    p.add_argument("--histories", type=int, default=4)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--events", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    k = 5
    print("| encoder | history | rows x events | re-encode (s) | cached (s) | speed-up | same marks "
          "| max abs time diff |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for enc in args.encoders:
        torch.manual_seed(0)
        model = build_model(ModelConfig(encoder=enc, decoder=args.decoder, integration="gauss_legendre"), k).eval()
        for length in args.lengths:
            rng = np.random.default_rng(0)
            hs = [EventSequence(np.cumsum(rng.exponential(1.0, length)), rng.integers(0, k, length))
                  for _ in range(args.histories)]
            best = {False: float("inf"), None: float("inf")}
            out = {}
            for _ in range(args.rounds):
                for incremental in (False, None):
                    t0 = time.perf_counter()
                    out[incremental] = generate(model, hs, events=args.events, samples=args.samples, seed=1,
                                                incremental=incremental)
                    best[incremental] = min(best[incremental], time.perf_counter() - t0)
            same = bool(np.array_equal(out[False].mark, out[None].mark))
            diff = float(np.abs(out[False].time - out[None].time).max())
            rows = args.histories * args.samples
            print(f"| {enc} | {length:,} | {rows} x {args.events} | {best[False]:.2f} | {best[None]:.2f} | "
                  f"{best[False] / best[None]:.1f}x | {same} | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
