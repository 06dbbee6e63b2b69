"""Builders shared by the model tests (imported as ``from helpers import ...``: pytest puts tests/ on sys.path).

Tiny model configurations, seeded batches of random sequences, and the one-event perturbation of the causality
tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtpp.data.batch import Batch, collate
from mtpp.data.sequence import EventSequence
from mtpp.models import ModelConfig

K = 5  # number of marks of the default batches

# the sizes of a tiny model; every test file adds the fields it cares about
TINY: dict[str, Any] = dict(
    hidden_size=8,
    mark_embedding_size=4,
    time_embedding_size=4,
    window=3,
    decoder_hidden_size=8,
    num_components=3,
)


def tiny_config(**fields: Any) -> ModelConfig:
    """A ``ModelConfig`` of ``TINY`` sizes, ``fields`` overriding them."""
    return ModelConfig(**{**TINY, **fields})


def tiny_model(decoder: str, parametrisation: str, encoder: str, dtype: torch.dtype = torch.float64):
    """A seeded tiny ``MarkedTPP`` in eval mode, THP / SAHP trained with 30 Gauss-Legendre nodes. ``decoder`` may
    carry a form: ``"rmtpp-baseline"`` is RMTPP with ``model.rmtpp_form: baseline``."""
    from mtpp.models import build_model

    torch.manual_seed(0)
    decoder, _, form = decoder.partition("-")
    cfg = tiny_config(rmtpp_form=form or "monotone", encoder=encoder, decoder=decoder,
                      parametrisation=parametrisation, integration="gauss_legendre", integration_nodes=30)  # fmt: skip
    return build_model(cfg, K).to(dtype).eval()


def make_batch(lengths=(9, 6), num_marks: int = K, seed: int = 0, windows=None, dtype=torch.float32) -> Batch:
    """Seeded sequences of the given lengths (unit-rate exponential gaps, uniform marks).

    ``windows``: per sequence, ``None`` (the window ends at the last event) or the survival gap after it.
    """
    rng = np.random.default_rng(seed)
    seqs = []
    for i, n in enumerate(lengths):
        times = np.cumsum(rng.exponential(1.0, n))
        extra = None if windows is None else windows[i]
        seqs.append(EventSequence(times, rng.integers(0, num_marks, n), None if extra is None else times[-1] + extra))
    return collate(seqs, dtype=dtype)


def perturb(batch: Batch, j: int, *, time: bool, num_marks: int = K) -> Batch:
    """Change event ``j`` of every sequence (its time, keeping later times, or its mark)."""
    times, taus, marks = batch.times.clone(), batch.taus.clone(), batch.marks.clone()
    if time:  # move t_j inside (t_{j-1}, t_{j+1}); only tau_j and tau_{j+1} change
        shift = 0.63 * taus[:, j]
        times[:, j] -= shift
        taus[:, j] -= shift
        taus[:, j + 1] += shift
    else:
        marks[:, j] = (marks[:, j] + 1) % num_marks
    return Batch(times, taus, marks, batch.mask, batch.lengths, batch.window_end, batch.survival_gap)
