"""``log_likelihood``: the log-likelihood of each of a user's sequences under a model, checked input first.

For a sequence ``(t_i, k_i)``, ``i = 1..n``, and the scored set ``I`` (every event, or every event but the first
with ``model.first_event: skip``), the terms of the likelihood contract (README, "The likelihood contract": the
marked point process log-likelihood written as a time part and a mark part, as in Bosser & Ben Taieb, TMLR 2024)::

    log L_T = sum_{i in I} log f(tau_i | H_i)  [+ log S(T - t_n | H_{n+1}) when the sequence has a window end T]
    log L_M = sum_{i in I} log p(k_i | tau_i, H_i)

in nats, with times in the data's own units: ``f`` is a density per data time unit (the model's internal time
scale enters through the change of variables, ``mtpp.models.scaling``), so ``log L_T`` of times ``c t`` is that of
``t`` minus ``|I| log c``. ``log L_T + log L_M`` is the sequence's log-likelihood, conditional on its first event
where that is not scored. These are the negatives of ``MarkedTPP.nll``'s per-sequence ``time_nll`` / ``mark_nll``,
the quantities ``evaluate`` averages (its ``nll_time_per_seq`` is the mean of ``-log_lik_time``).

Cost: one forward pass per batch of at most ``batch_size`` sequences and ``max_events`` padded events (sorted by
length to limit padding, ``mtpp.data.sampler.cut_batches``), no gradients, one host transfer per batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mtpp.errors import MtppError

__all__ = ["log_likelihood"]


def log_likelihood(model: nn.Module, sequences: Any, *, split: str = "test", batch_size: int | None = None,
                   device: str | None = None, seed: int = 0,
                   max_events: int | None | str = "auto") -> pd.DataFrame:  # fmt: skip
    """One row per sequence, in the order given: its log-likelihood under ``model`` (see the module docstring).

    ``sequences``: a list of ``EventSequence`` (``mtpp.data.sequence.make_sequence``), or a dataset whose ``split``
    part is scored. They are checked against the model first (``mtpp.data.checks.check_sequences``: at least one
    event, times finite, ``>= 0``, sorted and within the model's dtype, marks in ``[0, K)``): ``DataError`` in one
    line naming the sequence and event otherwise. ``batch_size``: sequences per forward pass (default 256).
    ``max_events``: padded events (sequences x longest) per forward pass; ``"auto"``: the default run's bound for
    the model's number of marks (``mtpp.config.TrainConfig.evaluation_events``); ``None``: no bound.
    ``device``: the model is computed where it is; a device given must be that one (``ConfigError`` otherwise).
    ``seed``: for the Monte Carlo nodes of a compensator that uses them in evaluation (none does by default:
    ``model.eval_integration``); they are counter-based (``mtpp.models.mtpp.evaluation_seed``), so a sequence's
    row does not depend on ``batch_size``, ``max_events``, the order of ``sequences`` or the other sequences.

    Columns: ``sequence`` (its index in ``sequences``, as ``predict``'s rows name it: the only name of a sequence
    read from a format without ids), ``seq_id`` (the sequences' names, a table's ``seq_id``; only when some
    sequence has one), ``events``
    (``n``), ``scored_events`` (``|I|``), ``log_lik_time`` and ``log_lik_mark`` (nats; the time part in the data's
    time unit, the survival term included), ``log_survival`` (that term, 0 without a window end) and ``log_lik``
    (their sum). The model's training mode is restored; nothing is written.
    """
    from mtpp.data.batch import collate
    from mtpp.data.checks import check_batch_size, check_sequences, sequences_of
    from mtpp.data.sampler import cut_batches
    from mtpp.models.mtpp import evaluation_seed
    from mtpp.training.setup import model_device

    what = "log_likelihood(model, sequences)"
    if not isinstance(model, nn.Module) or not hasattr(model, "num_marks") or not hasattr(model, "nll"):
        raise MtppError(f"{what}: expected a model (MarkedTPP, e.g. build_model(...) or load_run(run_dir).model), "
                        f"got {type(model).__name__}")
    batch_size = check_batch_size(batch_size) or 256
    dev = model_device(model, device, "log_likelihood(model, device=...)")
    dtype = next(model.parameters()).dtype
    seqs = check_sequences(sequences_of(sequences, split, what), int(model.num_marks), what=what, dtype=dtype)
    if not seqs:
        raise MtppError(f"{what}: no sequence to score (an empty list)")
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    order = np.argsort(lengths, kind="stable")  # similar lengths share a batch: little padding
    if max_events == "auto":
        from mtpp.evaluation.evaluate import default_evaluation_events

        max_events = default_evaluation_events(model)
    columns = {k: np.zeros(len(seqs)) for k in ("log_lik_time", "log_lik_mark", "log_survival")}
    scored = np.zeros(len(seqs), dtype=np.int64)
    was_training = model.training
    model.eval()
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=cuda), evaluation_seed(model, seed):
            torch.manual_seed(seed)
            for idx in cut_batches(order, lengths, batch_size, max_events):  # batches, not events: one forward each
                out = model.nll(collate([seqs[i] for i in idx], dtype=dtype).to(dev))
                # 0.0 - x, not -x: a term of 0 (no window end) is 0.0, never -0.0 in the written table
                parts = (0.0 - torch.stack([out.time_nll, out.mark_nll, out.survival_term])).double().cpu().numpy()
                for row, key in enumerate(columns):
                    columns[key][idx] = parts[row]
                scored[idx] = out.scored.sum(-1).cpu().numpy()
    finally:
        model.train(was_training)
    frame = pd.DataFrame({"sequence": np.arange(len(seqs)), "events": lengths, "scored_events": scored, **columns})
    frame["log_lik"] = frame["log_lik_time"] + frame["log_lik_mark"]
    names = [getattr(s, "name", None) for s in seqs]
    if any(n is not None for n in names):
        frame.insert(1, "seq_id", names)
    return frame
