"""Load a finished run directory for forecasting: its configuration, ``best.pt`` and data.

Through the shared run loader ``mtpp.runs`` (``open_run``: the stored configuration; ``Run.load_data``: the data
the run recorded, refused when its fingerprint differs), plus the model rebuilt from ``best.pt``. Never imports the
trainer.

Errors: ``MtppError`` naming the folder when it is not a run (no ``config.yaml``) or has no ``best.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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

    def read_sequences(self, path: str | Path, *, sort: bool = False,
                       log: Callable[[str], None] | None = None, progress: bool = False) -> list:  # fmt: skip
        """The sequences of a file or folder of the user's (any format ``mtpp.data.formats.read_any`` reads: a CSV /
        Parquet table, EasyTPP JSON, ...), every part in file order, their marks in the model's ids ``0..K-1``.

        A run trained on remapped marks (``data.mark_ids``: the source's id of each model mark) reads the file in
        the source's ids and maps them; an id its training data did not have is a ``DataError`` naming the file,
        the sequence (and its ``seq_id``) and the id. Otherwise the ids are the model's, checked here against
        ``K`` (``mtpp.data.checks.check_sequences``: a ``DataError`` naming the file, the sequence and its
        ``seq_id``). ``sort``: sort an unsorted sequence (stable) instead of refusing it; ``log`` gets the line
        saying how many were sorted (refused without ``sort``: the ``DataError`` names ``--sort``). A table's
        ``seq_id`` stays the sequences' ``name``. ``progress``: a bar counting the sequences read (on a terminal)."""
        import re

        import numpy as np

        from mtpp.data.formats import ReadOptions, notes_reported, read_any, warn_once
        from mtpp.data.sequence import REMAP_HINT
        from mtpp.errors import DataError

        ids = getattr(self.data, "mark_ids", None)
        with notes_reported():  # said below, but for the reader's advice on the file's mark ids
            try:
                res = read_any(path, options=ReadOptions(sort=sort), progress=progress)
            except DataError as e:  # the reader's fix names a run config's data.sort; here it is this call's sort
                if "not sorted" not in e.problem:
                    raise
                problem = re.sub(r" \(to sort such sequences[^)]*\)\)", " (to sort them: --sort with --input; "
                                 "read_sequences(path, sort=True))", e.problem)
                raise DataError(problem, source=e.source, sequence=e.sequence, event=e.event) from None
        for note in res.notes:
            if REMAP_HINT in note:
                # "only 3 of 100 mark ids occur ... remap": advice for training data; a trained run's marks are
                # fixed (its K, or its own map), checked below, and no remap of this file could apply
                continue
            if "sorted the times of" in note:
                if log is not None:  # what --sort did is said, never silent
                    log(note)
            else:
                warn_once(note)
        seqs = [s for part in res.parts.values() for s in part]
        if not seqs:
            raise DataError("holds no sequence", source=str(path))
        if not ids:  # the model's ids: checked here, so every --input command names the file and the sequence
            from mtpp.data.checks import check_sequences

            return check_sequences(seqs, int(self.model.num_marks), what=str(path), whose=f"the run {self.path}",
                                   dtype=self.dtype)
        known = np.asarray(ids, dtype=np.int64)  # increasing: the remap numbers the sorted distinct ids
        order = np.argsort(known, kind="stable")
        out = []
        for i, seq in enumerate(seqs):  # one vectorised lookup per sequence
            at = np.searchsorted(known[order], seq.marks).clip(max=len(known) - 1)
            bad = known[order][at] != seq.marks
            if bad.any():
                j = int(np.argmax(bad))
                name = f" (seq_id {seq.name!r})" if seq.name is not None else ""
                raise DataError(f"mark {int(seq.marks[j])} at event {j}{name} is not one of the {len(known)} mark ids "
                                f"the run {self.path} was trained on (its data's ids, remapped to 0..{len(known) - 1})",
                                source=str(path), sequence=i)
            out.append(replace(seq, marks=order[at].astype(seq.marks.dtype)))
        return out

    def threads(self):
        """Context in which torch computes with the run's ``train.threads`` intra-op threads (not one per core:
        a second process on a busy core collapses otherwise), the caller's count restored on leaving
        (``mtpp.runs.torch_threads``). ``predict``, ``generate``, ``plot`` and the horizon evaluation compute
        inside it."""
        from mtpp.runs import torch_threads

        return torch_threads(int(self.cfg.train.threads))


def load_run(run_dir: str | Path, data_dir: str | None = None, device: str | None = None,
             log: Callable[[str], None] | None = None, progress: bool = False) -> LoadedRun:
    """Rebuild the model of ``run_dir`` from ``config.yaml`` and ``best.pt`` and load its data; ``log`` gets one
    line saying which data (name, source folder, split, sizes), as ``mtpp evaluate`` prints it, and a warning when
    the run's training has not finished (interrupted, or still running: ``best.pt`` is the best model so far, as
    ``mtpp evaluate`` warns). The caller's torch thread count is left as it is: compute inside
    :meth:`LoadedRun.threads` to use the run's ``train.threads``. ``progress``: a bar counting the sequences read
    (on a terminal)."""
    from mtpp.runs import describe_data, open_run, training_finished
    from mtpp.training import checkpoint
    from mtpp.training.setup import DTYPES, build_run_model, run_device

    run = open_run(run_dir)
    run_dir = run.path
    if not (run_dir / checkpoint.BEST).is_file():
        raise MtppError(f"{run_dir}: no {checkpoint.BEST} (the run has not finished an epoch)")
    cfg = run.config
    dev = run_device(device, cfg, run_dir, cfg.train.tf32)
    data, _, _ = run.load_data(data_dir, purpose="forecast from", progress=progress)
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
