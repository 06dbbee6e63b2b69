"""Load a finished run directory for forecasting: its configuration, ``best.pt`` and data.

Through the shared run loader ``mtpp.runs`` (``open_run``: the stored configuration; ``Run.load_data``: the data
the run recorded, refused when its fingerprint differs), plus the model rebuilt from ``best.pt``. Never imports the
trainer.

Errors: ``MtppError`` naming the folder when it is not a run (no ``config.yaml``) or has no ``best.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from mtpp.errors import MtppError


@dataclass
class LoadedRun:
    """A run ready to forecast: ``model`` (eval mode, on ``device``), ``cfg`` (``RunConfig``), ``data``
    (``RunData``: ``.train/.val/.test``, ``num_marks``), ``dtype`` of the batches, ``path``."""

    path: Path
    cfg: Any
    model: torch.nn.Module
    data: Any
    dtype: torch.dtype
    device: torch.device

    def split(self, name: str) -> list:
        return self.data.split(name)

    def threads(self):
        """Context in which torch computes with the run's ``train.threads`` intra-op threads (not one per core:
        a second process on a busy core collapses otherwise), the caller's count restored on leaving
        (``mtpp.runs.torch_threads``). ``predict``, ``generate``, ``plot`` and the horizon evaluation compute
        inside it."""
        from mtpp.runs import torch_threads

        return torch_threads(int(self.cfg.train.threads))


def load_run(run_dir: str | Path, data_dir: str | None = None, device: str | None = None,
             log: Callable[[str], None] | None = None) -> LoadedRun:
    """Rebuild the model of ``run_dir`` from ``config.yaml`` and ``best.pt`` and load its data; ``log`` gets one
    line saying which data (name, source folder, split, sizes), as ``mtpp evaluate`` prints it, and a warning when
    the run's training has not finished (interrupted, or still running: ``best.pt`` is the best model so far, as
    ``mtpp evaluate`` warns). The caller's torch thread count is left as it is: compute inside
    :meth:`LoadedRun.threads` to use the run's ``train.threads``."""
    from mtpp.runs import describe_data, open_run, training_finished
    from mtpp.training import checkpoint
    from mtpp.training.setup import DTYPES, build_run_model, run_device

    run = open_run(run_dir)
    run_dir = run.path
    if not (run_dir / checkpoint.BEST).is_file():
        raise MtppError(f"{run_dir}: no {checkpoint.BEST} (the run has not finished an epoch)")
    cfg = run.config
    dev = run_device(device, cfg, run_dir, cfg.train.tf32)
    data, _, _ = run.load_data(data_dir, purpose="forecast from")
    if log is not None:
        log(f"{run_dir}: data {describe_data(data)}")
    model = build_run_model(cfg, data.num_marks, dev)
    best = run.best_state(map_location=dev)
    if log is not None and not training_finished(run_dir):
        epoch = f" (epoch {best['epoch']})" if isinstance(best.get("epoch"), int) else ""
        log(f"{run_dir}: warning: its training has not finished (no final metrics.json: interrupted, or still "
            f"running): forecasting with its best.pt so far{epoch}; finish it with: mtpp train --out {run_dir} "
            "--resume")
    run.load_best(model, best)
    model.eval()
    return LoadedRun(run_dir, cfg, model, data, DTYPES[cfg.data.dtype], dev)
