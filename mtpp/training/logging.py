"""Run logging: ``log.jsonl``, optional TensorBoard scalars, the tqdm progress bar, on-device step records.

Nothing here forces a host sync: per-step values (losses, cosines, norms, the skip flag) stay 0-dim device
tensors in a ``mtpp.training.gradients.StatsBuffer`` until the trainer flushes it (every
``logging.flush_every`` steps and at epoch ends, one transfer) and hands the records to ``RunLogger``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch

from mtpp.evaluation.evaluate import json_safe

LOG_FILE = "log.jsonl"



class RunLogger:
    """Appends JSON objects to ``OUT/log.jsonl`` and mirrors numeric fields to TensorBoard when enabled, and to
    the experiment trackers of ``OUT/config.yaml`` (``logging.trackers``: ``mtpp.training.tracking``)."""

    def __init__(self, out_dir: Path, tensorboard: bool = False) -> None:
        from mtpp.training.tracking import open_trackers

        self.path = Path(out_dir) / LOG_FILE
        self._trackers = open_trackers(out_dir)  # before the log is opened: an empty log means a fresh run
        self._fh = self.path.open("a", encoding="utf-8")
        self._tb = _make_tensorboard(Path(out_dir) / "tensorboard") if tensorboard else None

    def write(self, record: dict[str, Any], prefix: str = "train", track: bool = True) -> None:
        record = json_safe(record)
        self._fh.write(json.dumps(record, allow_nan=False) + "\n")
        if track:
            self._trackers.log([record], prefix)
        if self._tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if k not in ("epoch", "step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{prefix}/{k}", v, step)

    def write_many(self, records: Iterable[dict[str, Any]], prefix: str = "train") -> None:
        records = list(records) if self._trackers else records
        for r in records:
            self.write(r, prefix, track=False)
        self._fh.flush()
        self._trackers.log(records, prefix)

    def flush(self) -> None:
        self._fh.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        self._trackers.close()


def truncate_log(out_dir: Path, max_epoch: int) -> None:
    """On resume: keep only the records of epochs ``<= max_epoch`` (those covered by the checkpoint)."""
    path = Path(out_dir) / LOG_FILE
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the interruption
            continue
        if rec.get("epoch", 0) <= max_epoch:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _make_tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # ImportError, or tensorboard present but broken
        warnings.warn(
            "logging.tensorboard is true but tensorboard is not importable (pip install 'mtpp[tensorboard]'); "
            "writing log.jsonl only",
            stacklevel=3,
        )
        return None
    return SummaryWriter(log_dir=str(log_dir))


class Progress:
    """A tqdm bar over the steps of one epoch; a no-op when disabled. Refreshed only on flushes."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None

    def start_epoch(self, epoch: int, total: int, desc: str = "") -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.close()
        self._bar = tqdm(total=total, desc=desc or f"epoch {epoch}", leave=False, file=sys.stderr, dynamic_ncols=True)

    def update(self, steps: int, postfix: dict[str, Any]) -> None:
        if self._bar is None:
            return
        self._bar.update(steps)
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items() if v is not None}
        self._bar.set_postfix(shown, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def echo(message: str, quiet: bool = False) -> None:
    """A line for the user (stderr, so stdout stays clean for tables), unless quiet."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)
