"""What the largest training batch will cost, said before the first step.

A training step holds, for every padded event of its batch (sequences x longest sequence), the activations the
backward pass needs: about 8 KB per event for a GRU-LNM of 8 units and 10 marks, 12 KB at the reference sizes, 250
KB with 20,000 marks (the ``[B, L, K]`` mark log-probabilities and their gradients). One sequence of 1,000,000
events is therefore one batch of about 8 GB, and nothing can make that step smaller without cutting the sequence
(``mtpp data prepare --max-length``). Attention encoders (THP, SAHP) keep memory linear in ``L`` (PyTorch's fused
``scaled_dot_product_attention``) but their time grows as ``L^2``: a THP step over 20,000 events took 17 s (5,000
events: 1.2 s) on a loaded 2-core CPU machine, so one over 1,000,000 would take about 2,500 times as long.

:func:`bytes_per_event` measures the first: one forward pass of the training loss on a probe batch of
``PROBE_SEQUENCES x PROBE_LENGTH`` events, counting every tensor storage saved for the backward pass
(``torch.autograd.graph.saved_tensors_hooks``), times :data:`STEP_FACTOR` for the backward's own temporaries and
the second task's gradient. Measured against the peak resident memory of a real step on CPU (``ru_maxrss``, one
sequence of 20,000 events; 80 events x 20,000 marks) the factor was between 1.7 (SAHP "++") and 4.3 (GRU-LNM of 8
units), so the estimate is good to about a factor of 2: enough to tell a step of 100 MB from one of 10 GB. The
probe runs under ``torch.random.fork_rng``: the run's random stream is untouched.

:func:`batch_warnings` turns the estimate into lines for the run header: the largest batch's estimate when it is
large (:data:`REPORT_BYTES`), a warning when it exceeds the memory available (``/proc/meminfo`` ``MemAvailable``;
on CUDA the device's free memory), and a warning for attention over sequences longer than
:data:`ATTENTION_LENGTH`, each naming the settings that help.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

PROBE_SEQUENCES = 2
PROBE_LENGTH = 64
STEP_FACTOR = 3.0
"""Peak memory of a training step / bytes saved for its backward (measured 1.7 to 4.3; see the module docstring)."""
REPORT_BYTES = 1 << 30
"""Largest-batch estimates from this size on (1 GiB) are shown in the run header."""
ATTENTION_LENGTH = 16384
"""Longest training sequence from which attention encoders get a warning about their ``L^2`` time."""
ATTENTION_ENCODERS = ("thp", "sahp")


def bytes_per_event(model: nn.Module, loss: Callable[[Any], Any], num_marks: int, dtype: torch.dtype,
                    device: torch.device) -> float:  # fmt: skip
    """Estimated peak bytes of a training step per padded event of its batch (see the module docstring).

    ``loss(batch)`` is the training loss function (``NLLOutput`` with ``time_nll`` and ``mark_nll``); the probe
    batch has ``PROBE_SEQUENCES`` sequences of ``PROBE_LENGTH`` events with marks spread over ``0..num_marks-1``.
    Nothing is updated: the model's gradients and the global random state are as before."""
    from mtpp.data.batch import collate
    from mtpp.data.sequence import EventSequence

    n = PROBE_LENGTH
    marks = np.arange(n, dtype=np.int64) % max(1, int(num_marks))
    seqs = [EventSequence(np.arange(1, n + 1, dtype=np.float64) * (1.0 + 0.1 * s), marks) for s in
            range(PROBE_SEQUENCES)]  # fmt: skip
    batch = collate(seqs, dtype=dtype).to(device)
    seen: set[tuple[int, int]] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
        return t

    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = loss(batch)
        del out
    return STEP_FACTOR * total / (PROBE_SEQUENCES * n)


def largest_batch(lengths: Sequence[int], batch_size: int, max_events: int | None) -> tuple[int, int]:
    """``(sequences, longest)`` of the most padded batch the sampler can form: ``batch_size`` sequences as long
    as the longest, at most ``max_events`` padded events, a longer sequence alone."""
    longest = int(max(lengths)) if len(lengths) else 0
    if longest == 0:
        return 0, 0
    count = min(batch_size, len(lengths))
    if max_events is not None:
        count = max(1, min(count, max_events // longest))
    return count, longest


def available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device``: CUDA's free device memory, else the host's ``MemAvailable`` (Linux); ``None``
    where neither is known."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # noqa: BLE001 - informative only
            return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _gib(x: float) -> str:
    if x >= 1 << 28:
        return f"{x / (1 << 30):.1f} GiB"
    return f"{x / (1 << 20):.0f} MiB" if x >= 1 << 20 else f"{x / 1024:.0f} KiB"


def batch_warnings(
    *, lengths: Sequence[int], batch_size: int, max_events: int | None, per_event: float, encoder: str,
    available: int | None,
) -> list[str]:  # fmt: skip
    """Lines for the run header about the largest training batch (see the module docstring): ``memory ...`` (an
    estimate of 1 GiB or more), ``warning: ...`` (more than ``available`` bytes; attention over more than
    ``ATTENTION_LENGTH`` events). ``per_event``: :func:`bytes_per_event`."""
    count, longest = largest_batch(lengths, batch_size, max_events)
    lines: list[str] = []
    if not count:
        return lines
    need = count * longest * per_event
    cut = ("cut long sequences into pieces with mtpp data prepare --max-length N (every gap kept; the history "
           "restarts at each piece)")
    if need >= REPORT_BYTES or (available is not None and need > available):
        shape = f"{count:,} x {longest:,} padded events"
        lines.append(f"memory  largest training batch {shape}: about {_gib(need)} per step (estimate, "
                     f"{per_event / 1024:.1f} KiB per padded event"
                     + ("; mtpp data prepare --max-length N cuts long sequences)" if count == 1 else ")"))
    if available is not None and need > available:
        helps = ([f"lower train.max_batch_events (now {max_events:,})" if max_events is not None else
                  "set train.max_batch_events"] if count > 1 else []) + [cut]  # fmt: skip
        lines.append(f"warning: the largest training batch ({count:,} x {longest:,} padded events) needs about "
                     f"{_gib(need)}, more than the {_gib(available)} available: the run will likely be killed; "
                     + "; or ".join(helps))
    if encoder in ATTENTION_ENCODERS and longest > ATTENTION_LENGTH:
        lines.append(f"warning: the longest training sequence has {longest:,} events: the {encoder} encoder's "
                     f"attention takes time in L^2 ({float(longest) ** 2:.2g} query-key pairs per layer and head, "
                     f"{(longest / ATTENTION_LENGTH) ** 2:,.0f} x those of {ATTENTION_LENGTH:,} events) per step; "
                     f"a recurrent encoder (model.encoder: gru) is linear in L, or {cut}")
    return lines
