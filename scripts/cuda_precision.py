#!/usr/bin/env python
"""Where CUDA and CPU gradients differ: the same weights and batch on both devices, TF32 on and off.

    python scripts/cuda_precision.py      # needs a CUDA device; prints one line per model and setting

Uses the models and the batch of ``tests/test_device.py`` (``test_cuda_matches_cpu_on_the_same_weights_and_batch``).
"TF32 on" switches TensorFloat-32 on for cuDNN and CUDA matrix products; "off" is full float32 (mtpp's default,
``train.tf32: false``). Output of a run on an H200: ``benchmarks/cuda_h200_tf32.txt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mtpp.data.batch import collate  # noqa: E402
from mtpp.training.setup import set_float32_precision  # noqa: E402
from test_device import MODELS, nll_and_grads, sequences, stepper  # noqa: E402


def worst_relative(a: dict, b: dict) -> tuple[float, str]:
    """Largest ``max|a - b| / max|b|`` over the parameters, and its name."""
    return max((((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item(), k) for k in b)


def main() -> int:
    if not torch.cuda.is_available():
        raise SystemExit("scripts/cuda_precision.py: no CUDA device")
    batch = collate(sequences())
    for enc, dec, par in MODELS:
        cpu = stepper(enc, dec, par, "cpu")
        _, _, g_cpu = nll_and_grads(cpu, batch)
        for tf32 in (True, False):
            gpu = stepper(enc, dec, par, "cuda", f"train.tf32={str(tf32).lower()}")
            set_float32_precision(tf32)
            gpu.model.load_state_dict(cpu.model.state_dict())
            _, _, g_gpu = nll_and_grads(gpu, batch.pin_memory())
            rel, name = worst_relative(g_gpu, g_cpu)
            print(f"{enc}-{dec}-{par} tf32={tf32}: worst rel. grad diff GPU vs CPU {rel:.2e} ({name})", flush=True)
    set_float32_precision(False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
