"""Load a finished run directory for forecasting: its configuration, ``best.pt`` and data.

The steps of ``mtpp.evaluation.evaluate._evaluate_run`` (``load_config``, ``load_data``, ``build_run_model``,
``checkpoint.load``), kept small and local until the shared ``mtpp.runs`` loader lands (then this module should
become a re-export of it). Never imports the trainer.

Errors: ``MtppError`` naming the folder when it is not a run (no ``config.yaml``) or has no ``best.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def load_run(run_dir: str | Path, data_dir: str | None = None, device: str | None = None) -> LoadedRun:
    """Rebuild the model of ``run_dir`` from ``config.yaml`` and ``best.pt`` and load its data."""
    from mtpp.config import load_config
    from mtpp.training import checkpoint
    from mtpp.training.setup import DTYPES, build_run_model, load_data, resolve_device

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise MtppError(f"{run_dir}: not a run directory (no config.yaml)")
    if not (run_dir / checkpoint.BEST).is_file():
        raise MtppError(f"{run_dir}: no {checkpoint.BEST} (the run has not finished an epoch)")
    cfg = load_config(run_dir / "config.yaml")
    dev = resolve_device(device or cfg.train.device)
    data = load_data(cfg.data, data_dir)
    model = build_run_model(cfg, data.num_marks, dev)
    state = checkpoint.load(run_dir / checkpoint.BEST, map_location=dev)
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedRun(run_dir, cfg, model, data, DTYPES[cfg.data.dtype], dev)
