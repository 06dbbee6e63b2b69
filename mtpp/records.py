"""Result records: the few kilobytes of a finished grid cell that outlive its run directory.

A run directory holds checkpoints and per-step logs (megabytes); a **record** is what a table needs, small enough
to commit (``results/<experiment>/<cell name>.json``), so a grid resumes from the committed records on a fresh
machine and ``RESULTS.md`` is generated from them (``scripts/results_md.py``), never typed by hand.

A record (``RECORD_VERSION`` 1) holds: ``cell`` (the cell's name and axis labels), ``config`` (the resolved run
configuration, ``run_info`` included: mtpp version, git revision, device, threads, time scale), ``metrics`` (the
run's ``metrics.json``: ``val``, ``test``, ``train``), ``epochs``, ``best_epoch`` (and ``best_epoch/time`` /
``best_epoch/mark`` with separate early stopping), ``stopped_by`` (``early_stopping`` or ``max_epochs``: a capped
run), ``wall_seconds`` (the cell from start to the end of its final
evaluation), ``epoch_seconds`` (median training seconds per epoch), ``validation_seconds`` (total), the
``conflict_rate`` and ``cos_tm_histogram`` (counts of the logged steps' ``cos_tm`` in ``COS_BINS`` equal bins of
``[-1, 1]``; ``null`` with nothing shared) and ``validation_after_best`` (the validation NLL per event at the best
epoch, its worst and its last value after it: a run that diverged after its best epoch, see :func:`diverged`). A
record re-scored from its run's ``best.pt`` by
``scripts/rescore_records.py`` (metrics added, none changed) also holds ``rescored``: one entry per pass, with its
time, git revision and the metrics it added.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import yaml

RECORD_VERSION = 1
COS_BINS = 40
"""Equal-width bins of ``[-1, 1]`` for the ``cos_tm`` histogram of a record."""
DIVERGENCE_NATS_PER_EVENT = 1.0
"""A run **diverged** after its best epoch when a later validation NLL exceeded the best one by more than this many
nats per event (the model's likelihood of the validation events fell by a factor ``e`` per event or more): early
stopping then reports the best epoch's model, a sound model, but the run says nothing about how the method trains
after it (e.g. CoGrad with a ``gamma`` too large for the loss's scale). Ordinary noise after the best epoch is
~0.01-0.1 nats per event on the grid's datasets."""


def _read_log(run_dir: Path) -> list[dict]:
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill; the record says what the complete lines say
    return out


def cos_histogram(values: list[float], bins: int = COS_BINS) -> list[int] | None:
    """Counts of ``values`` in ``bins`` equal bins of ``[-1, 1]`` (``None`` for no value)."""
    if not values:
        return None
    counts, _ = np.histogram(np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0), bins=bins, range=(-1, 1))
    return [int(c) for c in counts]


def build_record(run_dir: str | Path, cell: dict[str, Any], wall_seconds: float | None) -> dict[str, Any]:
    """The record of a complete run directory (``metrics.json`` with ``test``)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    log = _read_log(run_dir)
    steps = [r for r in log if r.get("kind") == "step"]
    epochs = [r for r in log if r.get("kind") == "epoch"]
    cos = [float(r["cos_tm"]) for r in steps if isinstance(r.get("cos_tm"), (int, float)) and not r.get("skipped")]
    train = metrics.get("train", {})
    epoch_seconds = [float(r["epoch_seconds"]) for r in epochs if isinstance(r.get("epoch_seconds"), (int, float))]
    return {
        "record_version": RECORD_VERSION,
        "cell": cell,
        "config": config,
        "metrics": metrics,
        "epochs": train.get("epochs"),
        "best_epoch": train.get("best_epoch"),
        **{k: v for k, v in train.items() if k.startswith("best_epoch/")},
        "stopped_by": train.get("stopped_by") or _stopped_by(train, config),
        "wall_seconds": _wall_seconds(train, wall_seconds, epochs),
        "train_seconds": train.get("train_seconds"),
        "epoch_seconds": statistics.median(epoch_seconds) if epoch_seconds else None,
        "validation_seconds": _validation_seconds(epochs),
        "conflict_rate": train.get("conflict_rate"),
        # training steps the non-finite guard skipped up to the best epoch (those could change the model that was
        # selected; the run's total is metrics.train.skipped_batches)
        "skipped_steps_to_best": (
            sum(1 for r in steps if r.get("skipped") and r.get("epoch", 0) <= train["best_epoch"])
            if isinstance(train.get("best_epoch"), int) else None
        ),
        "cos_tm_histogram": cos_histogram(cos),
        "cos_tm_bins": [-1.0, 1.0, COS_BINS],
        "validation_after_best": validation_after_best(epochs, train.get("best_epoch")),
    }


def validation_after_best(epochs: list[dict], best_epoch: Any) -> dict[str, Any] | None:
    """``{"best", "worst", "last"}``: the validation NLL per event (nats; ``val_nll_per_event`` of the epoch log
    lines) at ``best_epoch``, the largest after it (``None`` when it is the last epoch) and the last epoch's;
    non-finite values as ``inf``. ``None`` without the best epoch's line."""
    def value(r: dict) -> float:
        v = r.get("val_nll_per_event")
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.inf

    lines = [r for r in epochs if isinstance(r.get("epoch"), int)]
    best = [r for r in lines if r["epoch"] == best_epoch]
    if not best or not lines:
        return None
    after = [value(r) for r in lines if r["epoch"] > best_epoch]
    return {"best": value(best[-1]), "worst": max(after) if after else None, "last": value(lines[-1])}


def diverged(record: dict[str, Any]) -> float | None:
    """How far (nats per event) the validation NLL rose above the best epoch's after it, when by more than
    ``DIVERGENCE_NATS_PER_EVENT`` (``inf`` for a non-finite one); ``None`` otherwise or for records without
    ``validation_after_best`` (written before it existed)."""
    v = record.get("validation_after_best") or {}
    best, worst = v.get("best"), v.get("worst")
    if not isinstance(best, (int, float)) or not isinstance(worst, (int, float)):
        return None
    rise = worst - best if math.isfinite(worst) else math.inf
    return rise if rise > DIVERGENCE_NATS_PER_EVENT else None


def stopped_by(record: dict[str, Any]) -> str | None:
    """Why a recorded cell stopped training: ``early_stopping`` or ``max_epochs`` (capped); ``None`` if unknown.
    Records written before the field existed are judged by their epoch count against ``train.max_epochs``."""
    train = {**((record.get("metrics") or {}).get("train") or {}), "epochs": record.get("epochs")}
    return record.get("stopped_by") or _stopped_by(train, record.get("config") or {})


def _wall_seconds(train: dict[str, Any], invocation: float | None, epochs: list[dict]) -> float | None:
    """The cell's wall time over all its invocations: the largest of the trainer's own total (``train.wall_seconds``,
    resumes included), this invocation's time and the logged epochs' training plus validation seconds. The trainer's
    total is the right one for runs that started with it; a run resumed from a checkpoint written before it existed
    counts only the later invocations there, and a cell resumed only for its final evaluation would otherwise
    record minutes, not hours."""
    logged = sum(float(r.get("epoch_seconds") or 0.0) + float(r.get("validation_seconds") or 0.0) for r in epochs)
    own = train.get("wall_seconds")
    values = [float(v) for v in (own, invocation, logged or None) if isinstance(v, (int, float))]
    return max(values) if values else None


def _stopped_by(train: dict[str, Any], config: dict[str, Any]) -> str | None:
    """``early_stopping`` / ``max_epochs`` for a run whose summary predates ``stopped_by``: it stopped early exactly
    when it ran fewer epochs than ``train.max_epochs`` (a run that reached the cap is counted as capped)."""
    epochs, cap = train.get("epochs"), (config.get("train") or {}).get("max_epochs")
    if not isinstance(epochs, int) or not isinstance(cap, int):
        return None
    return "early_stopping" if epochs < cap else "max_epochs"


def _validation_seconds(epochs: list[dict]) -> float | None:
    vals = [r.get("validation_seconds") for r in epochs]
    vals = [float(v) for v in vals if isinstance(v, (int, float))]
    return sum(vals) if vals else None


def record_path(results_dir: str | Path, cell_name: str) -> Path:
    """``results_dir/<cell name>.json`` (cell names are ``DATASET/MODEL-PARAM-AGG/splitS-seedN``)."""
    return Path(results_dir) / f"{cell_name}.json"


def write_record(results_dir: str | Path, cell_name: str, record: dict[str, Any]) -> Path:
    """Write ``record`` atomically to ``record_path`` (creating folders)."""
    from mtpp.evaluation.evaluate import json_safe

    path = record_path(results_dir, cell_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(json_safe(record), indent=1, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_records(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every record under ``results_dir`` (recursively), in path order."""
    root = Path(results_dir)
    out = []
    for path in sorted(root.rglob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("record_version") == RECORD_VERSION:
            data["_path"] = str(path.relative_to(root))
            out.append(data)
    return out
