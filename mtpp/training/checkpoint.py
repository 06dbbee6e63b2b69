"""Checkpoints: atomic writes, RNG state capture / restore, and loading with a clear error.

``checkpoint.pt`` (written at the end of every epoch) holds everything ``fit(..., resume=True)`` needs to continue
as if never interrupted: ``model``, ``optimizer``, ``scheduler``, ``aggregator`` state, ``rng`` (python, numpy,
torch, cuda), ``early_stopping`` state, ``epoch`` (last finished), ``step``, ``counters`` (skips, conflict
counts, events, training seconds) and the resolved ``config``. ``best.pt`` holds ``model`` (the best state so
far: with separate early stopping, the time parameters of the best-``L_T`` epoch and the mark parameters of the
best-``L_M`` epoch), ``epoch``, ``config`` and ``num_marks``. ``initial.pt`` (only for a model passed to
``fit(model, data)``, whose initial weights ``train.seed`` does not give) holds ``model`` (its weights before the
first step), ``config``, ``num_marks`` and ``data``: ``config.yaml``'s ``run_info.initial_weights`` names it.

Both are written to a temporary file in the same folder, then ``os.replace``-d: a crash never leaves a torn file.
Every value is a tensor, a number, a string or a container of those, so ``torch.load(weights_only=True)`` reads
them (no arbitrary pickles).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from mtpp.errors import MtppError

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
INITIAL = "initial.pt"


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, fsync, then ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MtppError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, foreign pickle, ...
        msg = " ".join(str(e).split())
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
        if refused:  # torch's message opens with 700 characters of advice: keep the refused global's name
            raise MtppError(f"{path}: refusing to load checkpoint: it needs the global {refused.group(1)}, which "
                            "weights-only loading does not allow (not an mtpp checkpoint, or not a safe one)") from None
        msg = msg[msg.index("WeightsUnpickler error:"):] if "WeightsUnpickler error:" in msg else msg
        raise MtppError(f"{path}: cannot read checkpoint ({type(e).__name__}: {msg[:300]})") from None


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and every CUDA device's) generator states, as weights-only-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_python_state(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


def _as_python_state(s: Any) -> tuple:
    # torch.save keeps tuples, but be lenient with lists (e.g. a state that went through JSON)
    version, internal, gauss = s
    return (version, tuple(internal), gauss)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """The python, numpy and torch (and initialised CUDA) generator states as they were on entry, restored on exit.

    A run seeds the global generators from ``train.seed`` (:func:`seed_everything`); inside this context that
    seeding ends with the run, so a caller's own random stream (``np.random``, ``random``, ``torch``) continues
    after ``fit`` exactly as it would have without it."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
