"""``mtpp bench``: training / evaluation throughput, gradient-diagnostics overhead and peak memory per model.

What is measured, for each ``encoder-decoder-parametrisation`` model:

* **Batches.** ``steps`` batches are drawn once from :func:`mtpp.data.sampler.make_loader` (length bucketing on,
  seeded) over the training part of the dataset and kept (pinned on CUDA); every timed phase cycles over the same
  list, so the phases see exactly the same work. Collation is therefore *not* timed; the host-to-device copy is
  (``batch.to(device, non_blocking=True)`` inside the step, as in the trainer).
* **Events.** Every real (non-padded) event of a batch counts, including the first event of each sequence that
  ``first_event: skip`` does not score: ``events = batch.lengths.sum()``. The share of padded slots over all
  ``[B, L]`` slots of the batches is ``padding_fraction``.
* **Training step** (:func:`train_step`): :func:`mtpp.training.trainer.train_step`, the very function the
  trainer runs, on a :class:`mtpp.training.trainer.Stepper` built as the trainer builds its state --
  ``zero_grad``, ``model.nll`` (under bf16 autocast with ``amp`` on CUDA, ``torch.compile``-d with ``compile``),
  ``L_T``/``L_M`` batch means, ``Trainer._backward`` (``backward_step`` with the configured aggregator, ``sum`` by
  default), total gradient norm, non-finite flag, optional clipping, guarded ``optimizer.step()``. With
  diagnostics the step asks for ``cos_tm``/GMS/norms (``want_stats=True``) and buffers them on the device like
  the trainer; without, it is a plain step. ``diagnostics_overhead = time per event with / without - 1``.
* **Evaluation**: ``model.score(batch)`` (no_grad) in eval mode on the same batches.
* **Timing**: ``rounds`` alternating rounds of the plain and the diagnostics phase, ``steps`` timed steps each;
  the figures are the medians over rounds (a single pass of each was biased by whichever ran first: the first
  tens of steps of a process run up to 2x slower). ``warmup`` untimed steps before the first round of each phase
  and before evaluation (default: one pass over the batch list, so every batch shape has been seen once).
  ``time.perf_counter`` with ``torch.cuda.synchronize`` only at the two boundaries of a timed phase.
* **Threads**: ``num_threads`` (``torch.set_num_threads``) for the duration of a model's bench. On a busy machine
  use 1: with more intra-op threads than free cores, small models ran 10-100x slower in our measurements.
* **Peak memory**: on CPU the process peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``). It is a process-wide
  high-water mark, so by default (``isolate=True``) each model runs in a fresh ``spawn``-ed process and the figure
  is that model's own (it includes Python, torch and the loaded dataset: ``baseline_memory_mb`` is the mark just
  before the model is built). Without isolation the figure is cumulative over the models run so far. On CUDA:
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (reset before the model is built).

The functions here are the library; ``mtpp/commands/bench.py`` is the command line.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mtpp.data.batch import Batch
from mtpp.data.sequence import EventSequence
from mtpp.errors import ConfigError

#: A representative set covering every encoder (gru, thp, sahp, fnn), every time decoder (lnm, rmtpp, fnn, thp,
#: sahp) and every parametrisation (base, plusplus; plus differs from base only in its decoders).
DEFAULT_MODELS: tuple[str, ...] = (
    "gru-lnm-base",
    "gru-rmtpp-base",
    "gru-fnn-base",
    "gru-thp-base",
    "gru-sahp-base",
    "thp-thp-base",
    "sahp-sahp-base",
    "fnn-lnm-base",
    "gru-lnm-plusplus",
    "gru-thp-plusplus",
)

#: Keys every result row has (values may be ``None`` where a phase was not measured).
ROW_KEYS: tuple[str, ...] = (
    "model",
    "encoder",
    "decoder",
    "parametrisation",
    "num_parameters",
    "train_events_per_second",
    "train_events_per_second_diagnostics",
    "diagnostics_overhead",
    "train_events_per_second_rounds",
    "train_events_per_second_diagnostics_rounds",
    "eval_events_per_second",
    "peak_memory_mb",
    "peak_memory_kind",
    "baseline_memory_mb",
    "padding_fraction",
    "events_per_batch",
    "max_batch_length",
    "device",
    "device_name",
    "batch_size",
    "steps",
    "warmup",
    "rounds",
    "dataset",
    "num_marks",
    "amp",
    "compile",
    "compile_integrand",
    "overrides",
    "isolated",
    "torch_version",
    "num_threads",
    "load_average",
)

DIAGNOSTICS = ("on", "off", "both")
SYNTHETIC_LENGTH_SEQUENCES_MIN = 16


@dataclass
class BenchConfig:
    """Settings shared by every benchmarked model (picklable: sent to the isolated worker processes).

    dataset: catalog name or path (ignored when ``synthetic_length`` is set).
    split: which split of the dataset; the bench uses its training part.
    max_length: truncate every sequence to its first ``max_length`` events (``None``: as is).
    longest: build the batches from the longest sequences (worst-case memory) instead of a seeded bucketed epoch.
    synthetic_length: simulate long Hawkes sequences of ``synthetic_length`` events instead of reading data.
    diagnostics: ``on`` (only the step with gradient diagnostics), ``off`` (only the plain step) or ``both``.
    overrides: ``--set`` style ``section.key=value`` strings (``model.*``, ``train.lr`` / ``train.optimizer`` /
        ``train.compile_integrand``, ``data.dtype``); the model triple always wins over ``model.encoder`` etc.
    num_threads: ``torch.set_num_threads`` (``None``: torch's default).
    phase_progress: print one line per phase of each model to stderr (``bench: MODEL: round 1/3 plain ...``),
        from the worker process too.
    """

    dataset: str = "synthetic_hawkes"
    split: int = 0
    data_dir: str | None = None
    device: str = "cpu"
    batch_size: int = 16
    steps: int = 30
    warmup: int | None = None  # None: one pass over the batch list
    rounds: int = 3
    diagnostics: str = "both"
    max_length: int | None = None
    longest: bool = False
    synthetic_length: int | None = None
    amp: bool = False
    compile: bool = False
    overrides: list[str] = field(default_factory=list)
    num_threads: int | None = None
    seed: int = 0
    phase_progress: bool = False

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be >= 1, got {self.rounds}")
        if self.warmup is not None and self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup}")
        if self.diagnostics not in DIAGNOSTICS:
            raise ConfigError(f"--diagnostics must be one of {', '.join(DIAGNOSTICS)}, got {self.diagnostics!r}")
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"--max-length must be >= 1, got {self.max_length}")
        if self.synthetic_length is not None and self.synthetic_length < 2:
            raise ConfigError(f"--synthetic-length must be >= 2, got {self.synthetic_length}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.num_threads}")
        for item in self.overrides:
            why = _override_refused(item.split("=", 1)[0].strip())
            if why:
                raise ConfigError(f"--set {item}: {why}")
        if self.synthetic_length is not None and self.dataset != "synthetic_hawkes":
            raise ConfigError(f"--synthetic-length simulates its own sequences: --dataset {self.dataset} would be "
                              "ignored; give one of the two")
        if self.amp and self.device == "cpu":
            raise ConfigError("--amp is bf16 autocast on CUDA only: with --device cpu it would be ignored")


#: ``--set`` keys a bench takes (what its training step reads): the model (but the triple, which ``--models`` gives),
#: the gradient aggregation, the optimiser's settings, the data's dtype. Any other key would be recorded in the
#: row's ``overrides`` without changing what was measured.
BENCH_SET_KEYS = ("model.", "gradients.", "train.lr", "train.optimizer", "train.weight_decay", "train.grad_clip",
                  "train.tf32", "train.compile_integrand", "train.max_consecutive_skips", "data.dtype")
_BENCH_FLAGS = {
    "model.encoder": "--models", "model.decoder": "--models", "model.parametrisation": "--models",
    "data.name": "--dataset", "data.split": "--split", "data.data_dir": "--data-dir", "data.max_sequences":
    "--max-length / --longest", "train.device": "--device", "train.batch_size": "--batch-size", "train.amp": "--amp",
    "train.compile": "--compile", "train.threads": "--threads", "train.seed": "--seed",
}  # fmt: skip


def _override_refused(key: str) -> str | None:
    """Why ``mtpp bench --set KEY=...`` is refused (``None``: it is taken): a key one of bench's flags sets, or one
    its training step never reads (it would be written into the row as if it had been applied)."""
    if key in _BENCH_FLAGS:
        return f"bench sets this with {_BENCH_FLAGS[key]}, not --set"
    if key.startswith(BENCH_SET_KEYS) and (key.startswith(("model.", "gradients.")) or key in BENCH_SET_KEYS):
        return None
    return ("has no effect on what bench measures (it takes model.*, gradients.*, train.lr / optimizer / "
            "weight_decay / grad_clip / tf32 / compile_integrand / max_consecutive_skips and data.dtype)")


# ================================================================================================ models


def parse_model_spec(spec: str) -> tuple[str, str, str]:
    """``"gru-lnm-plusplus"`` -> ``("gru", "lnm", "plusplus")``; ``+`` / ``++`` are accepted for the last part."""
    from mtpp.models.config import ENCODERS, PARAMETRISATIONS, TIME_DECODERS

    parts = spec.strip().lower().split("-")
    if len(parts) != 3:
        raise ConfigError(f"model {spec!r}: expected encoder-decoder-parametrisation, e.g. gru-lnm-base")
    enc, dec, par = parts
    par = {"+": "plus", "++": "plusplus", "p": "plus", "pp": "plusplus"}.get(par, par)
    for kind, value, valid in (
        ("encoder", enc, ENCODERS),
        ("decoder", dec, TIME_DECODERS),
        ("parametrisation", par, PARAMETRISATIONS),
    ):
        if value not in valid:
            raise ConfigError(f"model {spec!r}: unknown {kind} {value!r}; valid: {', '.join(valid)}")
    return enc, dec, par


def run_config_for(spec: str, overrides: Sequence[str]) -> Any:
    """The validated ``RunConfig`` of one benchmarked model: defaults, then ``overrides``, then the triple."""
    from mtpp.config import load_config

    enc, dec, par = parse_model_spec(spec)
    triple = [f"model.encoder={enc}", f"model.decoder={dec}", f"model.parametrisation={par}"]
    return load_config(None, [*overrides, *triple])


# ================================================================================================ data


def truncate(sequences: Sequence[EventSequence], max_length: int) -> list[EventSequence]:
    """Every sequence cut to its first ``max_length`` events (observed up to its last kept event)."""
    out = []
    for s in sequences:
        if len(s) > max_length:
            s = EventSequence(s.times[:max_length], s.marks[:max_length], None)
        out.append(s)
    return out


def synthetic_long_sequences(length: int, num_sequences: int, seed: int = 0) -> list[EventSequence]:
    """``num_sequences`` Hawkes sequences of the built-in ``synthetic_hawkes`` process with ``length`` events each.

    The window is 3x the expected time to ``length`` events, and simulation stops at ``length`` events, so
    (almost) every sequence has exactly ``length`` events; windows end at the last event (benchmark convention).
    """
    from mtpp.data.synthetic import SYNTHETIC_PARAMS, simulate_hawkes_many

    rate = float(np.sum(SYNTHETIC_PARAMS.stationary_rate()))
    rng = np.random.default_rng(seed)
    seqs = simulate_hawkes_many(SYNTHETIC_PARAMS, num_sequences, 3.0 * length / rate, rng, max_events=length)
    return [EventSequence(s.times, s.marks, None) for s in seqs if len(s) > 0]


def load_sequences(cfg: BenchConfig) -> tuple[list[EventSequence], int, str]:
    """``(sequences, num_marks, dataset label)``: the training part of the dataset, or simulated long sequences."""
    if cfg.synthetic_length is not None:
        from mtpp.data.synthetic import SYNTHETIC_PARAMS

        n = max(2 * cfg.batch_size, SYNTHETIC_LENGTH_SEQUENCES_MIN)
        seqs = synthetic_long_sequences(cfg.synthetic_length, n, cfg.seed)
        label, num_marks = f"synthetic_hawkes_length_{cfg.synthetic_length}", SYNTHETIC_PARAMS.num_marks
    else:
        from mtpp.data.catalog import load_dataset

        ds = load_dataset(cfg.dataset, split=cfg.split, data_dir=cfg.data_dir)
        seqs, num_marks, label = list(ds.train), int(ds.num_marks), str(ds.name)
    if cfg.max_length is not None:
        seqs = truncate(seqs, cfg.max_length)
        label += f" (max length {cfg.max_length})"
    if cfg.longest:
        label += " (longest)"
    return seqs, num_marks, label


def bench_batches(
    sequences: Sequence[EventSequence], cfg: BenchConfig, dtype: torch.dtype, device_type: str
) -> list[Batch]:
    """``min(steps, number of batches)`` CPU batches (pinned on CUDA), cycled over by every timed phase.

    Default: the first batches of seeded, length-bucketed epochs (as the trainer sees them). ``longest``: the
    longest sequences, longest first.
    """
    from mtpp.data.sampler import make_loader

    seqs = list(sequences)
    shuffle = True
    if cfg.longest:
        order = np.argsort([-len(s) for s in seqs], kind="stable")
        seqs = [seqs[i] for i in order[: cfg.batch_size * cfg.steps]]
        shuffle = False
    loader = make_loader(seqs, cfg.batch_size, shuffle=shuffle, seed=cfg.seed, dtype=dtype, device_type=device_type)
    if cfg.longest:  # make_loader without shuffling orders by increasing length
        return list(reversed(list(loader)))
    batches: list[Batch] = []
    epoch = 0
    while len(batches) < cfg.steps:
        loader.batch_sampler.set_epoch(epoch)
        before = len(batches)
        for b in loader:
            batches.append(b)
            if len(batches) == cfg.steps:
                break
        epoch += 1
        if len(batches) == before:
            break
    return batches


def padding_of(batches: Sequence[Batch]) -> float:
    """Share of padded slots over all ``[B, L]`` slots of ``batches``."""
    slots = sum(b.mask.numel() for b in batches)
    real = sum(int(b.lengths.sum()) for b in batches)
    return 1.0 - real / slots if slots else 0.0


# ================================================================================================ the steps


def make_step_context(
    run_cfg: Any, num_marks: int, device: torch.device, use_amp: bool, compile: bool
) -> Any:
    """The trainer's ``Stepper`` (model, optimiser, aggregator, non-finite guard built as the trainer builds them)."""
    import dataclasses

    from mtpp.training.trainer import Stepper

    train = dataclasses.replace(run_cfg.train, amp=use_amp, compile=compile)
    return Stepper(dataclasses.replace(run_cfg, train=train), num_marks, device)


def train_step(ctx: Any, batch: Batch, want_stats: bool) -> None:
    """The trainer's step, :func:`mtpp.training.trainer.train_step` (the same function ``mtpp train`` runs).

    ``batch`` is a CPU batch; it is moved with ``non_blocking=True``. No host sync on CUDA (the guard masks the
    step on the device); on CPU the guard reads its flag, which is not a device sync.
    """
    from mtpp.training.trainer import train_step as trainer_step

    trainer_step(ctx, batch, want_stats)


def eval_step(ctx: Any, batch: Batch) -> None:
    """``model.score`` (no_grad) on one batch, under the same autocast as training."""
    from mtpp.training.setup import autocast

    batch = batch.to(ctx.device, non_blocking=True)
    with autocast(ctx.amp, ctx.device):
        ctx.model.score(batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    step: Callable[[Batch], None], batches: Sequence[Batch], events: Sequence[int], steps: int,
    warmup: int | None, device: torch.device,
) -> tuple[float, int]:
    """``(seconds, events)`` of ``steps`` calls of ``step`` cycling over ``batches``, after ``warmup`` calls
    (``None``: one pass over ``batches``)."""
    for i in range(len(batches) if warmup is None else warmup):
        step(batches[i % len(batches)])
    _sync(device)
    start = time.perf_counter()
    n = 0
    for i in range(steps):
        step(batches[i % len(batches)])
        n += events[i % len(batches)]
    _sync(device)
    return time.perf_counter() - start, n


# ================================================================================================ one model


def _rss_mb() -> float:
    """Process peak RSS in MB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024


def bench_model(spec: str, cfg: BenchConfig) -> dict[str, Any]:
    """Benchmark one model in this process; returns its row (see ``ROW_KEYS``).

    ``cfg.num_threads`` applies for the duration of the call (the previous thread count is restored).
    """

    from mtpp.runs import torch_threads

    cfg.validate()
    with torch_threads(cfg.num_threads):
        return _bench_model(spec, cfg)


def _bench_model(spec: str, cfg: BenchConfig) -> dict[str, Any]:
    from mtpp.training.setup import DTYPES, compile_settings, resolve_device

    torch.manual_seed(cfg.seed)
    run_cfg = run_config_for(spec, cfg.overrides)
    device = resolve_device(cfg.device, run_cfg.train.tf32, source="--device")
    sequences, num_marks, label = load_sequences(cfg)
    batches = bench_batches(sequences, cfg, DTYPES[run_cfg.data.dtype], device.type)
    del sequences
    events = [int(b.lengths.sum()) for b in batches]

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device) / 1024**2
    else:
        baseline = _rss_mb()
    ctx = make_step_context(run_cfg, num_marks, device, cfg.amp, cfg.compile)
    ctx.model.train()
    with compile_settings(ctx.cfg.train):
        return _measure(spec, cfg, ctx, batches, events, device, run_cfg, label, num_marks, baseline)


def _measure(
    spec: str, cfg: BenchConfig, ctx: Any, batches: list[Batch], events: list[int], device: torch.device,
    run_cfg: Any, label: str, num_marks: int, baseline: float,
) -> dict[str, Any]:  # fmt: skip
    from mtpp.training.setup import count_parameters
    from mtpp.training.trainer import device_name

    start = time.perf_counter()

    def say(phase: str) -> None:
        if cfg.phase_progress:
            print(f"bench: {spec}: {phase} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)

    def rate(step: Callable[[Batch], None], warmup: int | None) -> float:
        seconds, n = timed(step, batches, events, cfg.steps, warmup, device)
        return n / seconds

    phases = {
        "plain": lambda b: train_step(ctx, b, False),
        "diag": lambda b: train_step(ctx, b, True),
    }
    if cfg.diagnostics == "off":
        del phases["diag"]
    elif cfg.diagnostics == "on":
        del phases["plain"]
    rounds: dict[str, list[float]] = {k: [] for k in phases}
    for r in range(cfg.rounds):  # alternating rounds: slow drifts of a shared machine fall on both phases
        for k, step in phases.items():
            say(f"round {r + 1}/{cfg.rounds}: {'training step' if k == 'plain' else 'training step + diagnostics'}")
            rounds[k].append(rate(step, cfg.warmup if r == 0 else 0))
            ctx.records.flush()
    plain = statistics.median(rounds["plain"]) if "plain" in rounds else None
    diag = statistics.median(rounds["diag"]) if "diag" in rounds else None
    ctx.model.eval()
    say("evaluation")
    evaluation = rate(lambda b: eval_step(ctx, b), cfg.warmup)
    say("done")

    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device) / 1024**2, "cuda_max_allocated"
    else:
        peak, kind = _rss_mb(), "process_peak_rss"
    enc, dec, par = parse_model_spec(spec)
    return {
        "model": f"{enc}-{dec}-{par}",
        "encoder": enc,
        "decoder": dec,
        "parametrisation": par,
        "num_parameters": count_parameters(ctx.model),
        "train_events_per_second": plain,
        "train_events_per_second_diagnostics": diag,
        "diagnostics_overhead": plain / diag - 1.0 if plain and diag else None,
        "train_events_per_second_rounds": rounds.get("plain"),
        "train_events_per_second_diagnostics_rounds": rounds.get("diag"),
        "eval_events_per_second": evaluation,
        "peak_memory_mb": peak,
        "peak_memory_kind": kind,
        "baseline_memory_mb": baseline,
        "padding_fraction": padding_of(batches),
        "events_per_batch": sum(events) / len(events),
        "max_batch_length": max(b.max_length for b in batches),
        "device": str(device),
        "device_name": device_name(device),
        "batch_size": cfg.batch_size,
        "steps": cfg.steps,
        "warmup": cfg.warmup,
        "rounds": cfg.rounds,
        "dataset": label,
        "num_marks": num_marks,
        "amp": ctx.amp,
        "compile": cfg.compile,
        "compile_integrand": run_cfg.train.compile_integrand,
        "overrides": list(cfg.overrides),
        "isolated": False,
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "load_average": _load_average(),
    }


def _load_average() -> float | None:
    """The 1-minute load average (``None`` where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_warning(threads: int, cores: int | None = None, load: float | None = None) -> str | None:
    """A warning when the machine is busy: the 1-minute load plus this bench's ``threads`` exceed the cores
    (others then compete for them and throughput figures are not comparable with an idle machine's)."""
    load = _load_average() if load is None else load
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
    if load is None or load + threads <= cores:
        return None
    return (f"warning: the machine is busy: load average {load:.1f} over the last minute with {cores} core(s) "
            f"and {threads} bench thread(s); the figures are not comparable with an idle machine's "
            + ("(rerun when it is idle)" if threads <= 1 else "(use --threads 1, or rerun when it is idle)"))


def _bench_isolated(spec: str, cfg: BenchConfig) -> dict[str, Any]:
    """``bench_model`` in a fresh ``spawn``-ed process, so its peak RSS is this model's own."""
    from mtpp.allocator import tune_allocator

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=tune_allocator) as pool:
        row = pool.submit(bench_model, spec, cfg).result()
    row["isolated"] = True
    return row


# ================================================================================================ many models


def run_bench(
    models: Sequence[str],
    cfg: BenchConfig,
    *,
    isolate: bool = True,
    progress: Callable[[str], None] | None = None,
    on_row: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per model (see ``ROW_KEYS``), in the order given.

    ``on_row(rows)`` is called with the rows so far after each model, so a long bench that is stopped keeps the
    models it finished (``mtpp bench --out`` rewrites its JSON there).

    The model names and the data are checked here first (so a typo fails before any worker starts, and a dataset
    that needs auto-preparing is prepared once).
    """
    cfg.validate()
    models = list(models)
    if not models:
        raise ConfigError("--models: give at least one model")
    for spec in models:
        run_config_for(spec, cfg.overrides)
    from mtpp.training.setup import resolve_device

    # --device cuda on a machine without one: refused before any data or model
    resolve_device(cfg.device, source="--device")
    if isolate and cfg.synthetic_length is None:
        load_sequences(cfg)
    rows = []
    threads = cfg.num_threads or torch.get_num_threads()
    for i, spec in enumerate(models, 1):
        if progress is not None:
            progress(f"bench: [{i}/{len(models)}] {spec} ...")
            warning = busy_warning(threads) if cfg.device == "cpu" else None
            if warning is not None:
                progress(warning)
        rows.append(_bench_isolated(spec, cfg) if isolate else bench_model(spec, cfg))
        if on_row is not None:
            on_row(rows)
    return rows


# ================================================================================================ output


TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (header, row key, format)
    ("model", "model", "s"),
    ("params", "num_parameters", "d"),
    ("train ev/s", "train_events_per_second", ",.0f"),
    ("train ev/s (diag)", "train_events_per_second_diagnostics", ",.0f"),
    ("diag overhead %", "diagnostics_overhead", "pct"),
    ("eval ev/s", "eval_events_per_second", ",.0f"),
    ("peak MB", "peak_memory_mb", ",.0f"),
    ("padding %", "padding_fraction", "pct"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if fmt == "pct":
        return f"{100 * value:.1f}"
    return format(value, fmt)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Aligned text table of the rows, with a header line naming device, threads, torch and the data."""
    if not rows:
        return "(no rows)"
    cells = [[_cell(r.get(key), fmt) for _, key, fmt in TABLE_COLUMNS] for r in rows]
    heads = [h for h, _, _ in TABLE_COLUMNS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]

    def line(values: Sequence[str]) -> str:
        first = values[0].ljust(widths[0])
        return "  ".join([first, *(v.rjust(w) for v, w in zip(values[1:], widths[1:]))])

    r0 = rows[0]
    mem = "peak RSS" if r0["peak_memory_kind"] == "process_peak_rss" else "CUDA max allocated"
    iso = ", one process per model" if r0.get("isolated") else ""
    warm = "one warm-up pass" if r0["warmup"] is None else f"{r0['warmup']} warm-up"
    header = (
        f"{r0['dataset']}: batch size {r0['batch_size']}, {r0['steps']} steps after {warm}, "
        f"median of {r0.get('rounds', 1)} alternating rounds; "
        f"{r0['device']} ({r0['device_name']}), {r0['num_threads']} threads, torch {r0['torch_version']}; "
        f"peak MB = {mem}{iso}"
    )
    out = [header, line(heads), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    return "\n".join(out)


def write_json(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """The rows as a JSON list (``None`` -> ``null``)."""
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    from mtpp.files import write_text

    write_text(p, json.dumps(list(rows), indent=2) + "\n")
