"""Claims on the cells of a results folder, so that several ``mtpp compare`` processes can share it.

Two processes that write records to the same ``--results`` folder (two ``--out`` folders, two machines on a shared
file system, a second command started to use another core) would otherwise both train a cell neither had finished
when it started, and the second would overwrite the first's record hours later. Before a cell starts, its process
claims it: an exclusive ``flock`` on ``<results>/.running/<cell name>.lock`` (:class:`mtpp.runs.RunLock`: the
kernel drops it when the process ends, however it ends, and the file names the holder), held until the cell's
result is in. A cell claimed by another process is not started ("running elsewhere"), and a cell whose record
appeared after this process read the folder (another process finished it) is skipped. The ``.running`` folder is
ignored by git (``.gitignore``) and never holds results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtpp.errors import MtppError
from mtpp.records import record_path
from mtpp.runs import RunLock

CLAIMS_DIR = ".running"


def claim_path(results_dir: str | Path, cell_name: str) -> Path:
    """``results_dir/.running/<cell name>.lock`` (cell names are ``DATASET/MODEL-PARAM-AGG/splitS-seedN``)."""
    return Path(results_dir) / CLAIMS_DIR / f"{cell_name}.lock"


def claim_holder(results_dir: str | Path | None, cell_name: str) -> dict[str, Any] | None:
    """Who trains ``cell_name`` against ``results_dir`` now (pid, host, command, since), ``None`` when nobody
    does or there is no results folder. Takes nothing."""
    if results_dir is None:
        return None
    path = claim_path(results_dir, cell_name)
    return RunLock.holder_of(path.parent, lock_file=path) if path.exists() else None


class CellClaims:
    """The claims this process holds on cells of ``results_dir`` (``None``: no results folder, every claim is
    granted and nothing is written).

    ``fresh``: the cells that had no record when this process read the folder; one of them that has a record by
    the time it would start was finished by another process.
    """

    def __init__(self, results_dir: str | Path | None, fresh: set[str] = frozenset()) -> None:
        self.results_dir = None if results_dir is None else Path(results_dir)
        self.fresh = set(fresh)
        self._held: dict[str, RunLock] = {}

    def take(self, cell_name: str) -> tuple[str, str] | None:
        """Claim ``cell_name``: ``None`` when this process may train it now, else ``(status, why)``:
        ``("elsewhere", "pid ... trains it")`` or ``("skipped", "finished by another process: ...")``."""
        if self.results_dir is None:
            return None
        path = claim_path(self.results_dir, cell_name)
        lock = RunLock(path.parent, lock_file=path)
        try:
            lock.acquire()
        except MtppError:
            return "elsewhere", f"{RunLock.describe(claim_holder(self.results_dir, cell_name))} trains it"
        record = record_path(self.results_dir, cell_name)
        if cell_name in self.fresh and record.exists():
            lock.release()
            return "skipped", f"finished by another process: {record} appeared after this run started"
        self._held[cell_name] = lock
        return None

    def release(self, cell_name: str) -> None:
        """Let go of ``cell_name`` (its result is in, or it never started); nothing when not held."""
        lock = self._held.pop(cell_name, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        for name in list(self._held):
            self.release(name)


__all__ = ["CLAIMS_DIR", "CellClaims", "claim_holder", "claim_path"]
