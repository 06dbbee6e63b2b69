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
epoch, its worst and its last value after it: a run that diverged after its best epoch, see :func:`diverged`) and
``validation_curve`` (the validation ``L_T`` and ``L_M`` of every epoch, see :func:`validation_curve`; records
written before it gained the key through ``scripts/add_validation_curves.py``, from their runs' logs). A
record re-scored from its run's ``best.pt`` by
``scripts/rescore_records.py`` (metrics added, none changed) also holds ``rescored``: one entry per pass, with its
time, git revision and the metrics it added. The key dates from 51d67de: the MOOC split-0 records re-scored
before it (commit 3e2eae5, which added the lattice-binned ``nll_time_binned_*`` and ``pce_binned``) lack it, and
that commit's diff is their provenance.

``mtpp train RECORD`` trains a record's cell again on the record's data, and :func:`reproduction` compares the
new run with the record (docs/guide/grid.md, "Check a record").
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


def read_log(run_dir: Path) -> list[dict]:
    """The JSON lines of ``run_dir/log.jsonl`` (``[]`` without the file); a line cut by a kill is skipped."""
    from mtpp.files import read_jsonl

    return read_jsonl(Path(run_dir) / "log.jsonl")


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
    log = read_log(run_dir)
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
        **_from_epochs(epochs, train, config),
    }


def _from_epochs(epochs: list[dict], train: dict[str, Any], config: dict[str, Any] | None) -> dict[str, Any]:
    """The keys of a record read from the epoch log lines: ``validation_after_best`` and ``validation_curve``."""
    return {
        "validation_after_best": validation_after_best(
            epochs, train.get("best_epoch"),
            {g: train[f"best_epoch/{g}"] for g in ("time", "mark")} if "best_epoch/time" in train else None,
            binned=((config or {}).get("train") or {}).get("select_time_on") == "binned"),
        "validation_curve": validation_curve(epochs),
    }


def record_from_log(run_dir: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """``validation_after_best`` and ``validation_curve`` of ``record`` as :func:`build_record` would write them,
    from the epoch lines of ``run_dir``'s ``log.jsonl`` and the record's own training summary and config (for
    records written before they had those keys; ``find_run`` checks that ``run_dir`` is the record's run)."""
    epochs = [r for r in read_log(Path(run_dir)) if r.get("kind") == "epoch"]
    return _from_epochs(epochs, (record.get("metrics") or {}).get("train") or {}, record.get("config"))


CURVE_DECIMALS = 2
"""Decimals kept of the per-epoch validation NLLs in a record (nats per sequence): 0.01 nats per sequence is far
below the epoch-to-epoch noise of every grid dataset, and keeps a 1,000-epoch curve at about 20 KB."""


def validation_curve(epochs: list[dict]) -> dict[str, list] | None:
    """The course of training as the validation split saw it, from the epoch log lines: ``{"epoch": [e],
    "nll_time_per_seq": [L_T], "nll_mark_per_seq": [L_M]}``, one entry per logged epoch (the last line of an epoch
    logged twice, as after a resume), the validation NLLs in nats per sequence (the tables' unit, ``L_T`` /
    ``L_M``) rounded to :data:`CURVE_DECIMALS`, a non-finite value as ``None`` (JSON has no ``inf``). Under
    separate early stopping a frozen part stays flat from its best epoch on. ``None`` without an epoch line."""
    by_epoch: dict[int, dict] = {}
    for r in epochs:
        if isinstance(r.get("epoch"), int):
            by_epoch[r["epoch"]] = r
    if not by_epoch:
        return None

    def value(v: Any) -> float | None:
        return round(float(v), CURVE_DECIMALS) if _finite(v) else None

    ordered = [by_epoch[e] for e in sorted(by_epoch)]
    return {"epoch": sorted(by_epoch),
            "nll_time_per_seq": [value(r.get("val_nll_time_per_seq")) for r in ordered],
            "nll_mark_per_seq": [value(r.get("val_nll_mark_per_seq")) for r in ordered]}  # fmt: skip


def validation_after_best(epochs: list[dict], best_epoch: Any, part_best: dict[str, Any] | None = None,
                          binned: bool = False) -> dict[str, Any] | None:  # fmt: skip
    """The validation NLL per event (nats) after the best epoch, from the epoch log lines: ``{"best", "worst",
    "last", "non_finite"}``, the value at ``best_epoch``, the largest finite one after it (``None`` when there is
    none), the last epoch's, and whether any value after it was non-finite (stored as a flag, since JSON has no
    ``inf``). ``None`` without the best epoch's line.

    ``part_best`` (``{"time": e_t, "mark": e_m}``, separate early stopping): each part from its own best epoch, on
    its own validation NLL (``val_nll_time_per_seq`` / ``val_nll_mark_per_seq`` per event, by the lines' ratio
    of ``val_nll_per_event`` to ``val_nll_per_seq``), as ``{"time": {...}, "mark": {...}}``: the run's best epoch is
    the later of the two, after which a part that blew up and was frozen earlier looks calm.

    ``binned`` (``train.select_time_on: binned``): the time part is the binned ``val_nll_time_binned_per_seq``, the
    score the run was selected on, so a continuous ``L_T`` that keeps falling by sharpening onto the lattice (or
    rises while the binned one does not) is not read as the selected score's course."""
    lines = [r for r in epochs if isinstance(r.get("epoch"), int)]
    ratio = next((r["val_nll_per_event"] / r["val_nll_per_seq"] for r in lines
                  if _finite(r.get("val_nll_per_event")) and _finite(r.get("val_nll_per_seq"))
                  and r["val_nll_per_seq"] != 0), None)  # fmt: skip
    time_key = "val_nll_time_binned_per_seq" if binned else "val_nll_time_per_seq"
    if part_best:
        if ratio is None:
            return None
        keys = {"time": time_key, "mark": "val_nll_mark_per_seq"}
        parts = {part: _after_best(lines, best, lambda r, k=keys[part]: _scaled(r.get(k), ratio))
                 for part, best in part_best.items()}  # fmt: skip
        return None if any(v is None for v in parts.values()) else parts
    if binned:
        if ratio is None:
            return None
        return _after_best(lines, best_epoch, lambda r: _scaled(_sum(r.get(time_key), r.get("val_nll_mark_per_seq")),
                                                                ratio))
    return _after_best(lines, best_epoch, lambda r: r.get("val_nll_per_event"))


def _sum(a: Any, b: Any) -> float | None:
    return float(a) + float(b) if _finite(a) and _finite(b) else None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _scaled(v: Any, ratio: float) -> float | None:
    return float(v) * ratio if _finite(v) else None


def _after_best(lines: list[dict], best_epoch: Any, value: Any) -> dict[str, Any] | None:
    best = [r for r in lines if r["epoch"] == best_epoch]
    if not best:
        return None
    after = [value(r) for r in lines if r["epoch"] > best_epoch]
    finite = [float(v) for v in after if _finite(v)]
    last = value(lines[-1])
    b = value(best[-1])
    return {"best": float(b) if _finite(b) else None, "worst": max(finite) if finite else None,
            "last": float(last) if _finite(last) else None, "non_finite": len(finite) < len(after)}  # fmt: skip


def diverged(record: dict[str, Any]) -> float | None:
    """How far (nats per event) the validation NLL rose above the best epoch's after it, when by more than
    ``DIVERGENCE_NATS_PER_EVENT`` (``inf`` when a later value was non-finite; the larger part's rise under
    separate early stopping); ``None`` otherwise or for records without ``validation_after_best`` (written before
    it existed)."""
    v = record.get("validation_after_best") or {}
    parts = [v] if "best" in v else [p for p in v.values() if isinstance(p, dict)]
    rises = []
    for p in parts:
        if p.get("non_finite"):
            rises.append(math.inf)
        elif _finite(p.get("best")) and _finite(p.get("worst")):
            rises.append(p["worst"] - p["best"])
    rise = max(rises, default=None)
    return rise if rise is not None and rise > DIVERGENCE_NATS_PER_EVENT else None


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


def same_run(run_metrics: dict[str, Any], record_metrics: dict[str, Any]) -> bool:
    """Whether a run directory's ``metrics.json`` (``run_metrics``) is the one a record was built from: the same
    training summary and validation metrics, exactly (the test section is what a rescoring rewrites), so a rerun or
    a withdrawn run of the same cell is never taken for it."""
    return all(run_metrics.get(k) == record_metrics.get(k) for k in ("train", "val"))


def find_run(record: dict[str, Any], roots: list[Path]) -> Path | None:
    """The run directory ``<root>/<cell name>`` under the first of ``roots`` whose ``metrics.json`` is the
    record's (:func:`same_run`); ``None`` when no root has it."""
    for root in roots:
        run = Path(root) / record["cell"]["name"]
        metrics = run / "metrics.json"
        if metrics.is_file() and same_run(json.loads(metrics.read_text(encoding="utf-8")), record["metrics"]):
            return run
    return None


def record_path(results_dir: str | Path, cell_name: str) -> Path:
    """``results_dir/<cell name>.json`` (cell names are ``DATASET/MODEL-PARAM-AGG/splitS-seedN``)."""
    return Path(results_dir) / f"{cell_name}.json"


def write_record(results_dir: str | Path, cell_name: str, record: dict[str, Any]) -> Path:
    """Write ``record`` atomically to ``record_path`` (creating folders)."""
    from mtpp.evaluation.evaluate import json_safe

    path = record_path(results_dir, cell_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    from mtpp.files import write_text

    write_text(path, dumps(json_safe(record)) + "\n")
    return path


def dumps(obj: Any, level: int = 0) -> str:
    """``json.dumps(obj, indent=1)``, except that a list of numbers, strings, booleans or nulls is written on one
    line: a 1,000-epoch ``validation_curve`` is then three lines of a record, not 3,000 (the diff of a committed
    record stays readable), and ``json.loads`` gives back the same object."""
    pad = " " * (level + 1)
    if isinstance(obj, dict) and obj:
        items = (f"{pad}{json.dumps(k)}: {dumps(v, level + 1)}" for k, v in obj.items())
        return "{\n" + ",\n".join(items) + "\n" + " " * level + "}"
    if isinstance(obj, list) and obj and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(pad + dumps(v, level + 1) for v in obj) + "\n" + " " * level + "]"
    return json.dumps(obj)


def read_records(results_dir: str | Path, passed_over: list[str] | None = None) -> list[dict[str, Any]]:
    """Every record under ``results_dir`` (recursively), in path order; other JSON files are passed over (their
    paths, relative to ``results_dir``, appended to ``passed_over`` when given, for the caller to name them), and
    one that is not JSON is a ``ConfigError`` naming it."""
    root = Path(results_dir)
    out = []
    for path in sorted(root.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:  # a file cut by a kill, or not JSON at all
            from mtpp.errors import ConfigError

            raise ConfigError(f"{path}: not readable as JSON ({e}); a result record is a JSON file written by "
                              "mtpp compare --results (move the file away, or restore it from git)") from None
        if isinstance(data, dict) and data.get("record_version") == RECORD_VERSION:
            data["_path"] = str(path.relative_to(root))
            out.append(data)
        elif passed_over is not None:
            passed_over.append(str(path.relative_to(root)))
    return out


#: ``metrics.json`` keys that measure the machine or the run's duration, not the model: never compared when a
#: record's cell is trained again (:func:`reproduction`).
MACHINE_KEYS = frozenset({"train_events_per_second", "train_seconds", "wall_seconds"})
#: The training summary keys that say whether a retrained cell followed the record's trajectory.
TRAJECTORY_KEYS = ("epochs", "best_epoch", "best_epoch/time", "best_epoch/mark", "stopped_by", "skipped_batches")
#: ``run_info`` keys whose difference explains a retraining that does not reproduce its record.
PROVENANCE_KEYS = ("git_revision", "torch_version", "numpy_version", "python_version", "cpu_capability", "device",
                   "device_name", "threads", "world_size", "time_scale")
#: Settings that do not make a run another one (``mtpp.config.NON_SEMANTIC_KEYS``) but change its floating-point
#: rounding: listed with the provenance when a retraining sets them otherwise than the record.
ROUNDING_SETTINGS = ("train.compile", "train.compile_integrand", "train.eval_batch_size")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _relative(a: Any, b: Any) -> float | None:
    """``|a - b| / max(|a|, |b|)`` for two finite numbers (0 when equal); 0 for equal values and for two NaNs;
    ``None`` when they differ otherwise (a value against n/a, an infinity, unequal text): no relative size."""
    if a == b or (_number(a) and _number(b) and math.isnan(a) and math.isnan(b)):
        return 0.0
    if _number(a) and _number(b) and _finite(a) and _finite(b):
        return abs(a - b) / max(abs(a), abs(b))
    return None


def reproduction(record: dict[str, Any], metrics: dict[str, Any], run_config: dict[str, Any] | None = None,
                 ) -> dict[str, Any]:  # fmt: skip
    """How a run that trained ``record``'s cell again (``metrics``: its ``metrics.json``; ``run_config``: its
    ``config.yaml``, ``run_info`` included) compares with the record.

    Returns ``trajectory``: ``[(key, recorded, now)]`` of the training summary's :data:`TRAJECTORY_KEYS` that differ
    (another number of epochs or best epoch: the run took another path); ``compared``: how many validation and test
    values both hold (metrics and counts such as ``num_events``; :data:`MACHINE_KEYS` left out); ``different``:
    ``[(part.key, recorded, now, relative difference)]`` of the numbers that differ, largest first; ``mismatched``:
    ``[(part.key, recorded, now)]`` of the values that differ without a relative size (a number against n/a, an
    infinity, other text); two NaNs are equal; ``provenance``: ``[(key, recorded, now)]`` of the
    :data:`PROVENANCE_KEYS` of ``run_info`` and the :data:`ROUNDING_SETTINGS` that differ (what may explain a
    difference: another code revision, torch, CPU instruction set, device, thread count or compilation rounds
    otherwise); a ``run_info`` key the record lacks (written before it existed) is left out."""
    recorded = record.get("metrics") or {}
    rec_train, now_train = recorded.get("train") or {}, metrics.get("train") or {}
    trajectory = [(k, rec_train.get(k), now_train.get(k)) for k in TRAJECTORY_KEYS
                  if (k in rec_train or k in now_train) and rec_train.get(k) != now_train.get(k)]
    compared, different, mismatched = 0, [], []
    for part in ("val", "test"):
        a, b = recorded.get(part) or {}, metrics.get(part) or {}
        for key in sorted(set(a) & set(b) - MACHINE_KEYS):
            compared += 1
            rel = _relative(a[key], b[key])
            if rel is None:
                mismatched.append((f"{part}.{key}", a[key], b[key]))
            elif rel > 0:
                different.append((f"{part}.{key}", a[key], b[key], rel))
    different.sort(key=lambda d: -d[3])
    rec_config = record.get("config") or {}
    rec_info = rec_config.get("run_info") or {}
    provenance = []
    if run_config is not None:
        from mtpp.config import flatten

        info = run_config.get("run_info") or {}
        provenance = [(k, rec_info[k], info[k]) for k in PROVENANCE_KEYS  # a key the record predates: not known
                      if k in rec_info and k in info and rec_info[k] != info[k]]
        was, now = flatten(rec_config), flatten(run_config)
        provenance += [(k, was.get(k), now.get(k)) for k in ROUNDING_SETTINGS if was.get(k) != now.get(k)]
    return {"trajectory": trajectory, "compared": compared, "different": different, "mismatched": mismatched,
            "provenance": provenance}


def describe_reproduction(where: str, result: dict[str, Any], shown: int = 3) -> str:
    """One line on :func:`reproduction`'s ``result`` for the record at ``where``: nothing to compare, reproduced
    exactly, reproduced to a relative difference (the same epochs; the ``shown`` largest differences), or not
    reproduced (another trajectory, or values that differ without a relative size: a number against n/a), with
    the provenance keys that differ."""

    def pairs(items: list[tuple]) -> str:
        return ", ".join(f"{k} {a!r} recorded vs {b!r} now" for k, a, b, *_ in items[:shown])

    n, diff, odd = result["compared"], result["different"], result.get("mismatched") or []
    if result["trajectory"] or odd:
        why = [f"the run took another path ({pairs(result['trajectory'])})"] if result["trajectory"] else []
        why += [f"values differ beyond rounding ({pairs(odd)})"] if odd else []
        line = (f"{where}: NOT reproduced: {'; '.join(why)}"
                + (f"; largest relative differences: {pairs(diff)}" if diff else ""))
    elif n == 0:
        line = f"{where}: nothing to compare (the record and the run share no validation or test value)"
    elif not diff:
        line = f"{where}: reproduced exactly (the same epochs; {n} validation and test values equal)"
    else:
        line = (f"{where}: reproduced to a relative {diff[0][3]:.1e} (the same epochs; {n - len(diff)} of {n} "
                f"validation and test values equal; largest differences: {pairs(diff)})")
    if result["provenance"]:
        line += f"; differs from the record's run: {pairs(result['provenance'])}"
    return line
