"""Evaluation of a trained model or run directory: ``evaluate(...)`` and the helpers ``fit`` uses at the end.

Metrics come from ``MetricAccumulator`` (see ``mtpp.evaluation.metrics`` for every convention). Evaluation runs
under a fixed seed (``train.seed`` for a run): Monte Carlo compensator nodes (``model.eval_integration: mc``) are
counter-based, a function of that seed, each sequence's history and the query gap
(``mtpp.models.mtpp.evaluation_seed``), so a sequence's numbers do not depend on the batch size, the batch
composition, the order of the sequences or ``train.max_batch_events``, and ``mtpp evaluate RUN`` reproduces the
``metrics.json`` that ``mtpp train`` wrote. The rest runs inside ``torch.random.fork_rng``: the caller's RNG
state is left untouched.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from mtpp.errors import MtppError
from mtpp.models.mtpp import evaluation_seed
from mtpp.runs import training_finished  # noqa: F401  (re-exported: where it was first defined)

METRICS_FILE = "metrics.json"
RUN_LEVEL_KEYS = ("conflict_rate", "train_events_per_second", "best_epoch", "num_parameters", "first_event")
SPLITS = ("train", "val", "test")
NOT_COMPUTED = "not computed"
"""``metrics["mark_forecast"]`` when the mark forecast ``p(k | H)`` was skipped (``mark_forecast=False``): the
``*_forecast`` metrics are then absent, never 0 or NaN, and a table says "not computed" in their columns."""
ESTIMATE_SECONDS = 60.0
"""An evaluation whose mark forecast is estimated (its first events timed) to take longer says so, once."""
SKIP_HINT = "mtpp evaluate --no-mark-forecast, or mark_forecast=False, skips the forecast metrics"
"""What the estimate line of an evaluation names (``_say_estimate``)."""


def _events(batch: Any) -> int:
    return int(batch.mask.sum())  # one host sync per batch: evaluation only


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    sequences: Sequence[Any],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    on_batch: Callable[[], None] | None = None,
    time_quantum: float | None = None,
    max_events: int | None | str = "auto",
    mark_forecast: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metrics, arrays)`` of ``model`` on ``sequences`` (``MetricAccumulator.compute()`` / ``.arrays()``).

    ``mark_forecast``: compute the mark forecast ``p(k | H)`` and its ``*_forecast`` metrics (default). For models
    whose marks depend on the gap ("+" / "++", joint THP / SAHP / FNN) it is a quadrature of ``P x K`` mark
    probabilities per event (``mtpp.models.marginal``), most of the time with many marks; ``False`` skips it: the
    ``*_forecast`` metrics and arrays are absent and ``metrics["mark_forecast"]`` is ``NOT_COMPUTED``. ``log``
    gets one line before the first batch is scored when the forecast is estimated (the time of its first
    ``PROBE_EVENTS`` events, ``_probe_forecast``, x events) to take over ``ESTIMATE_SECONDS``, naming how to skip
    it.

    ``on_batch``: called after each batch (a progress bar). ``time_quantum``: the lattice quantum of the data's
    times (``mtpp.data.lattice.time_lattice`` of the training split, data units): adds ``nll_time_binned_*`` and
    ``time_quantum`` to the metrics (``None``: neither). ``max_events``: padded events per batch (sequences x
    longest, ``mtpp.data.sampler.cut_batches``); ``"auto"``: the default run's bound for the model's number of
    marks (``TrainConfig.evaluation_events``); ``None``: ``batch_size`` alone. ``seed``: the evaluation seed of
    Monte Carlo compensator nodes (``mtpp.models.mtpp.evaluation_seed``; the numbers do not depend on
    ``batch_size`` or ``max_events``)."""
    from mtpp.data.sampler import make_loader
    from mtpp.evaluation.metrics import MetricAccumulator

    if len(sequences) == 0:
        raise MtppError("cannot evaluate on an empty split")
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    dtype = dtype or param.dtype
    if max_events == "auto":
        max_events = default_evaluation_events(model)
    loader = make_loader(sequences, batch_size, shuffle=False, dtype=dtype, device_type=device.type,
                         max_events=max_events)
    was_training = model.training
    model.eval()
    acc = MetricAccumulator()
    cuda = [device.index or 0] if device.type == "cuda" else []
    slow = mark_forecast and log is not None and bool(getattr(model, "marks_depend_on_time", False))
    try:
        with torch.random.fork_rng(devices=cuda), evaluation_seed(model, seed):
            torch.manual_seed(seed)
            for i, batch in enumerate(loader):
                batch = batch.to(device, non_blocking=True)
                if slow and i == 0:
                    forecast_estimate(model, sequences, batch, log)
                acc.update(model.score(batch, forecast=mark_forecast, time_quantum=time_quantum), batch)
                if on_batch is not None:
                    on_batch()
    finally:
        model.train(was_training)
    metrics = acc.compute()
    if not mark_forecast:
        metrics["mark_forecast"] = NOT_COMPUTED
    if time_quantum is not None:
        metrics["time_quantum"] = float(time_quantum)
    return metrics, acc.arrays()


PROBE_EVENTS = 8
"""Events of the first batch whose mark forecast is timed before the evaluation starts (``_probe_forecast``)."""


def forecast_estimate(model: nn.Module, sequences: Sequence[Any], batch: Any, log: Callable[[str], None],
                      hint: str = SKIP_HINT) -> None:  # fmt: skip
    """One ``log`` line, before ``sequences`` are scored from their first ``batch``, when the mark forecast of
    ``model`` (a quadrature when its marks depend on the gap) is estimated to take over ``ESTIMATE_SECONDS``
    (``evaluate_model``; ``mtpp.forecast.predict``, whose rows are that forecast)."""
    if bool(getattr(model, "marks_depend_on_time", False)):
        _say_estimate(log, *_probe_forecast(model, batch), sequences, model, hint)


def _probe_forecast(model: nn.Module, batch: Any) -> tuple[float, int]:
    """``(seconds, events)``: the mark forecast of the first ``PROBE_EVENTS`` events of ``batch`` timed (their
    histories, ``MarkedTPP.mark_forecast_log_probs``), before anything else is computed, so the estimate comes
    up front, not after a first batch that may be the whole evaluation."""
    h_time, h_mark = model.histories(batch)
    n = min(PROBE_EVENTS, h_time.shape[1] - 1)
    if n < 1:
        return 0.0, 0
    start = time.perf_counter()
    model.mark_forecast_log_probs(h_time[:1, :n], h_mark[:1, :n])
    return time.perf_counter() - start, n


def _say_estimate(log: Callable[[str], None], seconds: float, events: int, sequences: Sequence[Any],
                  model: nn.Module, hint: str = SKIP_HINT) -> None:  # fmt: skip
    """``log`` the estimated time of the mark forecast (``evaluate_model``'s ``log``; ``seconds`` for ``events``
    probed events) when it exceeds ``ESTIMATE_SECONDS``; ``hint``: what the caller can do about it."""
    total = sum(len(s) for s in sequences)
    estimate = seconds / max(events, 1) * total
    if events and estimate > ESTIMATE_SECONDS:
        log(f"the mark forecast p(k | H) of {int(model.num_marks):,} marks is a quadrature over the next gap for "
            f"every event: {seconds:.2f} s for {events} events timed, so about {estimate / 60:.1f} min for these "
            f"{total:,} ({hint})")


def default_evaluation_events(model: nn.Module) -> int | None:
    """Padded events per evaluation batch of ``model`` outside a run: the default configuration's bound
    (``TrainConfig().evaluation_events``) for its number of marks."""
    from mtpp.config import TrainConfig

    return TrainConfig().evaluation_events(int(getattr(model, "num_marks", 1)))


def evaluation_batches(sequences: Sequence[Any], batch_size: int, max_events: int | None) -> int:
    """Number of batches ``evaluate_model`` cuts ``sequences`` into (a progress bar's total)."""
    import numpy as np

    from mtpp.data.sampler import cut_batches

    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    return len(cut_batches(np.argsort(lengths, kind="stable"), lengths, batch_size, max_events))


def data_time_quantum(data: Any, log: Callable[[str], None] | None = None, selected: bool = False) -> float | None:
    """The lattice quantum the evaluation of ``data`` scores bins at (``mtpp.data.lattice.scored_quantum`` of its
    training split: ``None`` off a lattice or on an inconsequential one; any lattice's with ``selected``, a run
    whose early stopping followed the binned L_T); ``log`` gets the trainer's run-start warning
    (``lattice_warning``) when the lattice is consequential."""
    from mtpp.data.catalog import time_unit_text
    from mtpp.data.lattice import lattice_warning, scored_quantum, time_lattice

    lattice = time_lattice(getattr(data, "train", None) or [])
    if lattice is not None and lattice.consequential and log is not None:
        log(f"warning: {lattice_warning(lattice, time_unit_text(getattr(data, 'time_unit', None)))}")
    return scored_quantum(lattice, selected)


def json_safe(value: Any) -> Any:
    """Strict-JSON form, recursively: NaN / inf -> None; numpy / torch scalars -> Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    from mtpp.files import write_text

    write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


INTERIM_METRICS_FILE = "metrics.interim.json"
"""Where ``mtpp evaluate`` writes the metrics of a run whose training has not finished (interrupted, or still
running): never ``metrics.json``, whose test section is what marks a run complete (``mtpp compare`` would record
a half-trained cell, ``--resume`` would take it for done)."""


def metrics_path(run_dir: Path, log: Callable[[str], None] | None = None) -> Path:
    """The file an evaluation of ``run_dir`` on the run's own data updates: ``metrics.json`` once training has
    finished (:func:`training_finished`), else ``metrics.interim.json`` (:data:`INTERIM_METRICS_FILE`), said to
    ``log`` with how to finish the run."""
    run_dir = Path(run_dir)
    if training_finished(run_dir):
        return run_dir / METRICS_FILE
    if log is not None:
        log(f"{run_dir}: warning: its training has not finished (no final metrics.json: interrupted, or still "
            f"running): these are the metrics of its best.pt so far, written to {INTERIM_METRICS_FILE}, not "
            f"metrics.json; finish it with: mtpp train --out {run_dir} --resume")
    return run_dir / INTERIM_METRICS_FILE


def read_metrics(run_dir: Path, path: Path | None = None) -> dict[str, Any]:
    """``run_dir``'s ``metrics.json`` (or ``path``) as a dict; ``{}`` when absent; ``MtppError`` when not JSON."""
    path = Path(run_dir) / METRICS_FILE if path is None else Path(path)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MtppError(f"{path}: not valid JSON ({e})") from None


def with_run_fields(split_metrics: dict[str, Any], train_summary: dict[str, Any]) -> dict[str, Any]:
    """A split's metrics plus the run-level fields, so each split dict alone satisfies DESIGN §5."""
    out = dict(split_metrics)
    for k in RUN_LEVEL_KEYS:
        if k in train_summary:
            out[k] = train_summary[k]
    return out


KEPT_PREFIXES = ("horizon_",)
"""Keys of a ``metrics.json`` section that re-evaluating the run keeps (``mtpp.forecast.horizon.HORIZON_PREFIX``:
scored from the same ``best.pt`` and data, by a separate, slower command)."""


def evaluate(
    run_dir_or_model: str | Path | nn.Module,
    split: str = "test",
    data_dir: str | None = None,
    *,
    data: Any = None,
    batch_size: int | None = None,
    device: str | None = None,
    write: bool = True,
    other_data: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    max_events: int | None | str = "auto",
    mark_forecast: bool = True,
) -> dict[str, Any]:
    """Metrics of a run directory's ``best.pt`` (or of a model) on ``split``.

    Run directory: rebuilds the model from its ``config.yaml``, loads the data the run recorded (``mtpp.runs``:
    its recorded folder, else the configured name under ``data_dir``), loads ``best.pt``, evaluates, and
    (``write=True``) updates ``metrics.json[split]`` (``train_eval`` for the training split: ``train`` holds the
    training summary) and ``arrays_{split}.json`` (a run whose training has not finished: ``metrics.interim.json``
    and ``arrays_{split}.interim.json``, :func:`metrics_path`). Data whose fingerprints differ
    from the run's are an ``MtppError`` naming both, unless ``other_data``: their metrics then go to
    ``metrics.other-<fingerprint>.json`` / ``arrays_{split}.other-<fingerprint>.json`` (never ``metrics.json``),
    with the data's record under ``data``. ``log`` receives one line naming the resolved data. ``progress``: a bar
    over the batches (on a terminal; the mark forecast of "+" / "++" models makes this minutes on MOOC-sized sets).
    Model: ``data`` is a dataset with ``.train/.val/.test`` (its ``split`` part is scored) or a list of
    sequences; nothing is written; it is computed where the model is (``device``, if given, must be that one:
    ``ConfigError`` otherwise, ``training.setup.model_device``). The sequences are checked first (``mtpp.data.checks.check_sequences``: marks in
    ``[0, K)`` of the model, times finite, sorted, within the model's dtype): ``DataError`` in one line otherwise;
    a dataset name or path is refused, saying to load it (``load_dataset``).
    ``split="all"``: ``{"val": metrics, "test": metrics}`` (as ``mtpp evaluate --split all``).
    ``batch_size``: a positive integer, or ``None`` for the default (the run's ``train.eval_batch_size``, else
    4 x its ``train.batch_size``; 256 for a model). ``max_events``: padded events per batch (``evaluate_model``);
    ``"auto"``: the run's ``TrainConfig.evaluation_events`` for its marks (a model: the default configuration's).
    ``mark_forecast=False``: skip the mark forecast (``evaluate_model``; ``metrics["mark_forecast"]`` says
    ``NOT_COMPUTED``); a run directory's files are then not written (``write`` is refused: they would lose the
    forecast metrics that training computed). ``log`` also gets the estimate of a slow mark forecast.
    """
    from mtpp.data.checks import check_batch_size, check_sequences, sequences_of

    if split == "all":
        return {s: evaluate(run_dir_or_model, s, data_dir, data=data, batch_size=batch_size, device=device,
                            write=write, other_data=other_data, log=log, progress=progress, max_events=max_events,
                            mark_forecast=mark_forecast)
                for s in ("val", "test")}
    if split not in SPLITS:
        raise MtppError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}, all")
    batch_size = check_batch_size(batch_size)
    if isinstance(run_dir_or_model, nn.Module):
        if data is None:
            raise MtppError("evaluate(model, ...) needs data= (a dataset or a list of sequences)")
        from mtpp.training.setup import model_device

        model = run_dir_or_model
        device = model_device(model, device, "evaluate(model, device=...)")
        what = f"evaluate(model, data=...) {split}" if hasattr(data, split) else "evaluate(model, data=...)"
        seqs = check_sequences(sequences_of(data, split, "evaluate(model, data=...)"), int(model.num_marks),
                               what=what, dtype=next(model.parameters()).dtype)
        first = getattr(getattr(model, "cfg", None), "first_event", "skip")
        if first == "skip" and seqs and all(len(s) == 1 for s in seqs):  # every metric would be 0 / 0
            raise MtppError(f"{what}: {len(seqs)} sequence(s) of one event each and no scored event (the model's "
                            "first_event: skip leaves each sequence's first event unscored): score longer sequences, "
                            "or use mtpp.log_likelihood for each sequence's terms")
        metrics, _ = evaluate_model(model, seqs, batch_size=batch_size or 256, device=device, max_events=max_events,
                                    mark_forecast=mark_forecast, log=log)
        return metrics
    if not isinstance(run_dir_or_model, (str, Path)):
        raise MtppError(f"evaluate: expected a run directory or a model (MarkedTPP), got "
                        f"{type(run_dir_or_model).__name__}")
    if data is not None:
        raise MtppError("evaluate(run_dir, ...): a run is scored on the data it recorded; data= is for "
                        "evaluate(model, data=...) (load the model with mtpp.forecast.runs.load_run(run_dir).model)")
    from mtpp.runs import open_run, torch_threads

    run_dir = Path(run_dir_or_model)
    if write and not mark_forecast:
        raise MtppError(f"{run_dir}: evaluate(..., mark_forecast=False) leaves out the forecast metrics, so it does "
                        "not rewrite the run's metrics.json / arrays files: pass write=False")
    with torch_threads(open_run(run_dir).config.train.threads):  # the run's train.threads, not every core
        return _evaluate_run(run_dir, split, data_dir, batch_size, device, write, other_data, log, progress,
                             max_events, mark_forecast)


def _evaluate_run(
    run_dir: Path, split: str, data_dir: str | None, batch_size: int | None, device: str | None, write: bool,
    other_data: bool = False, log: Callable[[str], None] | None = None, progress: bool = False,
    max_events: int | None | str = "auto", mark_forecast: bool = True,
) -> dict[str, Any]:  # fmt: skip
    from tqdm.auto import tqdm

    from mtpp.models.time_decoders import evaluation_rule_warning
    from mtpp.runs import describe_data, open_run
    from mtpp.training.setup import DTYPES, build_run_model, run_device

    run = open_run(run_dir)
    cfg = run.config
    dev = run_device(device, cfg, run.path, cfg.train.tf32)
    run_data, record, same = run.load_data(data_dir, other_data=other_data, progress=progress)
    if log is not None:
        log(f"{run_dir}: data {describe_data(run_data)}" + ("" if same else " (OTHER data than the run's)"))
    state = run.best_state(map_location=dev)
    num_marks = int(state.get("num_marks") or run_data.num_marks)  # the model's K, whatever data it is shown
    if run_data.num_marks > num_marks:
        raise MtppError(f"{run_dir}: the model knows {num_marks} marks, the data have {run_data.num_marks}: "
                        "it cannot score them")
    model = build_run_model(cfg, num_marks, dev)
    run.load_best(model, state)
    rule_warning = evaluation_rule_warning(model)  # a run configured before the normalised rule was its default
    if rule_warning and log is not None:
        log(f"{run_dir}: warning: {rule_warning}")
    bs = batch_size or cfg.train.evaluation_batch_size
    quantum = data_time_quantum(run_data, None if log is None else lambda msg: log(f"{run_dir}: {msg}"),
                                selected=cfg.train.select_time_on == "binned")  # fmt: skip
    seqs = run_data.split(split)
    events = cfg.train.evaluation_events(num_marks) if max_events == "auto" else max_events
    with tqdm(total=evaluation_batches(seqs, bs, events), desc=f"evaluate {split}", unit="batch", leave=False,
              disable=None if progress else True) as bar:  # fmt: skip
        metrics, arrays = evaluate_model(model, seqs, batch_size=bs, device=dev, dtype=DTYPES[cfg.data.dtype],
                                         seed=cfg.train.seed, time_quantum=quantum, on_batch=bar.update,
                                         max_events=events, mark_forecast=mark_forecast,
                                         log=None if log is None else lambda msg: log(f"{run_dir}: {msg}"))  # fmt: skip
    metrics["first_event"] = cfg.model.first_event
    if write:
        key = hashlib.sha256("".join(p["sha256"] for p in record["parts"].values()).encode()).hexdigest()[:12]
        suffix = "" if same else f".other-{key}"
        target = metrics_path(run_dir, log) if same else run_dir / f"metrics{suffix}.json"
        if target.name == INTERIM_METRICS_FILE:  # the arrays go with their metrics, never over a final run's
            suffix = ".interim"
        existing = read_metrics(run_dir, target if same else None)
        metrics = with_run_fields(metrics, existing.get("train", {}))
        out = existing if same else (json.loads(target.read_text(encoding="utf-8")) if target.is_file() else {})
        section = "train_eval" if split == "train" else split  # "train" holds the run's training summary
        # forecasts scored earlier from the same best.pt and data (mtpp evaluate --horizon) stay beside the new numbers
        kept = {k: v for k, v in (out.get(section) or {}).items() if k.startswith(KEPT_PREFIXES) and k not in metrics}
        out[section] = {**metrics, **kept}
        if not same:
            out["data"] = record
        write_json(target, out)
        write_json(run_dir / f"arrays_{split}{suffix}.json", arrays)
        if log is not None:
            log(f"{run_dir}: wrote {target.name}, arrays_{split}{suffix}.json")
    return json_safe(metrics)
