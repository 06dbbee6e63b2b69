"""``fit``: train one configuration into a run directory (DESIGN §5); ``run_variants``: several side by side.

One epoch: for each batch, ``L_T`` and ``L_M`` are the batch means of the per-sequence NLLs; ``backward_step``
writes the (aggregated) gradients and, every ``gradients.log_every`` steps, the conflict diagnostics; the total
gradient norm gives the non-finite flag (``guard.py``) and optional clipping; the guarded optimiser step follows.
Step records stay on the device until a flush every ``logging.flush_every`` steps (the only host syncs of the
loop). At the epoch end: validation NLL (fixed seed, so Monte Carlo compensators compare epochs on common
random numbers), early stopping, LR schedule, ``best.pt``, ``checkpoint.pt``. After the last epoch the best state
is evaluated on val and test into ``metrics.json`` and ``arrays_{val,test}.json``.

Resume: ``checkpoint.pt`` holds every piece of state (model, optimiser, scheduler, aggregator, RNGs, early
stopping, counters), the sampler is seeded by ``seed + epoch`` and ``log.jsonl`` is cut back to the checkpoint's
epoch, so a resumed run ends with exactly the metrics of an uninterrupted one (on CPU; CUDA kernels may not be
bitwise deterministic unless ``train.deterministic``).

The run folder (``mtpp.runs``): rank 0 holds its lock for the whole run (a second writer is refused, naming this
one), records the data (resolved source, SHA-256 of each part) in ``config.yaml`` ``run_info.data`` and in both
checkpoints, and copies its console lines into ``train.log``. ``--resume`` loads the recorded data and refuses
data with other fingerprints; a folder killed before its first ``checkpoint.pt`` restarts from scratch without
``--overwrite``; temporary files of interrupted writes are removed; starting over removes only the files a run
writes. Run-time options (``logging.quiet`` / ``logging.progress``) are not stored. A validation part without
scored events is refused (no best epoch could be chosen).

Devices and data parallelism: the same code runs on CPU and CUDA (bf16 autocast for the forward pass with
``train.amp`` on CUDA, float32 likelihood terms and losses; pinned host batches moved with
``non_blocking=True``), and under ``torchrun`` on several processes (``mtpp.training.distributed``: explicit
all-reduce of the per-task gradients through ``backward_step(reduce=...)``, rank 0 writes the run directory).
``train_step`` is the one training step, shared with ``mtpp bench`` (which builds a ``Stepper``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

import mtpp
from mtpp.config import RunConfig, config_from_dict, dump_yaml, load_config, variant_configs
from mtpp.data.catalog import time_unit_of, time_unit_text
from mtpp.data.checks import marks_absent_from_train
from mtpp.data.formats import warned
from mtpp.data.lattice import lattice_warning, scored_quantum, time_lattice
from mtpp.errors import ConfigError, MtppError
from mtpp.files import write_text
from mtpp.models import compiled
from mtpp.models.scaling import resolve_time_scale, same_time_scale
from mtpp.models.time_decoders import evaluation_rule_warning
from mtpp.runs import torch_threads
from mtpp.evaluation.evaluate import (
    METRICS_FILE,
    evaluate_model,
    evaluation_batches,
    json_safe,
    with_run_fields,
    write_json,
)
from mtpp.training import checkpoint
from mtpp.training import distributed
from mtpp.training.gradients import COS_KEYS
from mtpp.training.distributed import SINGLE, Dist
from mtpp.training.early_stopping import EarlyStopping
from mtpp.training.guard import NonFiniteGuard, grad_norm
from mtpp.training.logging import (
    TRAIN_LOG,
    Progress,
    RunLogger,
    attach_console_logs,
    console_log,
    echo,
    format_eta,
    truncate_log,
)
from mtpp.training.setup import (
    DTYPES,
    amp_enabled,
    autocast,
    build_run_model,
    compile_settings,
    count_parameters,
    determinism,
    load_data,
    make_optimizer,
    make_scheduler,
    resolve_device,
    set_float32_precision,
    training_nll,
    unique_parameters,
)

CONFIG_FILE = "config.yaml"
RUN_FILES = (CONFIG_FILE, "log.jsonl", checkpoint.CHECKPOINT, checkpoint.BEST, checkpoint.INITIAL, METRICS_FILE)


@dataclass
class Counters:
    """Host-side run counters (checkpointed). ``conflicts[key] = [steps with cos < 0, steps with cos defined]``."""

    step: int = 0
    events: int = 0
    train_seconds: float = 0.0
    # elapsed seconds of the run up to its last checkpoint, summed over every invocation (resumes included)
    wall_seconds: float = 0.0
    conflicts: dict[str, list[int]] = field(default_factory=lambda: {k: [0, 0] for k in COS_KEYS})

    def add_records(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            for k in COS_KEYS:
                v = r.get(k)
                if v is not None:
                    self.conflicts[k][0] += int(v < 0)
                    self.conflicts[k][1] += 1

    def conflict_rates(self) -> dict[str, float | None]:
        return {
            "conflict_rate" + k[len("cos_tm") :]: (neg / n if n else None) for k, (neg, n) in self.conflicts.items()
        }

    @property
    def events_per_second(self) -> float | None:
        return self.events / self.train_seconds if self.train_seconds > 0 else None


# ================================================================================================ public API


def fit(
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    *,
    data_dir: str | None = None,
    overwrite: bool = False,
    model: nn.Module | None = None,
    data: Any = None,
    on_epoch: Any = None,
    interrupt_hint: bool = True,
    expected_data: dict[str, Any] | None = None,
    resume_config: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``config`` into ``out_dir`` and return the final metrics (``metrics.json``'s content).

    ``resume``: continue from ``out_dir/checkpoint.pt`` (the model and data sections must match the stored
    ``config.yaml``; training settings such as ``train.max_epochs`` may change). Without ``resume``, a folder
    that already holds a run is an error unless ``overwrite``. ``model`` / ``data``: an already built model (whose
    ``cfg`` is ``config.model``) and already loaded data (a ``setup.RunData``) used instead of building them from
    ``config`` (``mtpp.training.api.fit`` composes them; the model is trained in place). ``on_epoch(epoch, val)``:
    called after each epoch's validation, checkpoint and log record with the validation NLLs (``_validate``'s
    dict; on every rank under DDP, with the same values); returning ``"stop"`` ends training there like early
    stopping (the best epoch's state is evaluated, ``metrics.json``'s ``stopped_by`` is ``"on_epoch"``; a
    ``resume`` would train on), and an exception it raises (e.g. Optuna's ``TrialPruned``, ``mtpp tune``) ends
    the run there without final metrics.
    ``interrupt_hint``: on Ctrl-C print how to continue this run (``resume_hint``); a caller that continues its
    runs another way (``mtpp tune``: rerun the search) passes ``False`` and says so itself. ``resume_config``: a
    CONFIG the hint names (``mtpp train RECORD``: the record, so that the resumed run still ends with the comparison).
    ``expected_data``: the data record (``mtpp.runs.data_record``) of a run this one repeats (``mtpp train RECORD``:
    a result record's ``run_info.data``): its recorded source is read first where it still holds those data, and
    any other data are refused (``MtppError`` naming what differs) before training, as ``resume`` does.

    The run seeds the global python / numpy / torch generators from ``train.seed``; their states on entry are
    restored on exit (``checkpoint.preserved_rng``), as are torch's thread count and deterministic-algorithm flags,
    so calling ``fit`` leaves a caller's own random stream where it was.
    """
    if config.variants:
        raise ConfigError("variants: fit() trains one configuration; use run_variants() (mtpp train does)")
    _check_resume_or_overwrite(resume, overwrite)
    _make_aggregator(config)  # its options checked before the run folder exists (a bad one left a folder behind)
    with checkpoint.preserved_rng(), torch_threads(config.train.threads), \
            distributed.session(config.train.device) as ddp:
        with _run_folder(Path(out_dir), ddp.is_main, config.logging.quiet or not ddp.is_main, interrupt_hint,
                         resume_config):
            with determinism(config.train.deterministic), compile_settings(config.train):
                trainer = Trainer(
                    config, Path(out_dir), resume=resume, data_dir=data_dir, overwrite=overwrite, dist=ddp,
                    model=model, data=data, expected_data=expected_data,
                )
                trainer.on_epoch = on_epoch
                try:
                    return trainer.run()
                finally:
                    trainer.close()


@contextlib.contextmanager
def _run_folder(out_dir: Path, main: bool, quiet: bool, interrupt_hint: bool = True,
                resume_config: str | Path | None = None) -> Iterator[None]:
    """Rank 0 holds the folder's lock (``mtpp.runs.RunLock``: one writer per run) and copies the run's console
    lines into ``train.log``; an interrupted run says how to continue it (unless ``interrupt_hint`` is false)."""
    if not main:
        yield
        return
    from mtpp.runs import RunLock

    with RunLock(out_dir), console_log(out_dir / TRAIN_LOG):
        try:
            yield
        except KeyboardInterrupt:
            if interrupt_hint:
                echo(resume_hint(out_dir, resume_config), quiet=False)
            raise
        except Exception as e:  # the command prints it; train.log keeps it beside the header of the failed start
            echo(f"error: {type(e).__name__}: {e}", quiet=True)
            raise


def train_command() -> str:
    """How to launch ``mtpp train`` again for this run: ``mtpp train``, or under torchrun ``torchrun
    --nproc_per_node=N [--nnodes=M ...] -m mtpp train`` with this launch's ranks (``LOCAL_WORLD_SIZE`` per node,
    ``WORLD_SIZE`` in all): ``train.batch_size`` is per rank, so a resume on another count of ranks would change
    the global batch (``ranks x batch_size``) mid-run."""
    world = distributed.env_world()
    if world is None or world[0] <= 1:
        return "mtpp train"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world[0]))
    nodes = max(1, world[0] // max(1, per_node))
    launch = f"torchrun --nnodes={nodes} --nproc_per_node={per_node} ..." if nodes > 1 else (
        f"torchrun --nproc_per_node={per_node}")
    return f"{launch} -m mtpp train"


def resume_hint(out_dir: Path, config: str | Path | None = None) -> str:
    """What to type after an interruption (a checkpoint: ``--resume``, under torchrun with the same ranks; none
    yet: the same command again). ``config``: a CONFIG the resume must be given again (``mtpp train RECORD``: the
    record, which the final comparison reads; ``--resume`` alone continues the run without it)."""
    if (out_dir / checkpoint.CHECKPOINT).is_file():
        given = f" {config}" if config is not None else ""
        return f"interrupted; continue with: {train_command()}{given} --out {out_dir} --resume"
    return f"interrupted before the first epoch ended (no {checkpoint.CHECKPOINT}); run the same command again"


def run_variants(
    config: RunConfig,
    variants: list[dict] | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    data_dir: str | None = None,
    overwrite: bool = False,
) -> dict[str, dict[str, Any]]:
    """Train each variant of ``config`` (its own ``variants`` unless given) into ``out_dir/<name>/``.

    Returns ``{name: metrics}``, writes ``out_dir/comparison.json`` and ``comparison.md`` and prints the
    side-by-side table (unless ``logging.quiet``). With ``resume`` every variant behaves as ``fit(..., resume=True)``
    alone: continued or extended from its checkpoint (a finished one with nothing left to train keeps its
    metrics), a changed model or other data refused, a variant not started yet trained from scratch. Variant names
    must be folder names (``mtpp.runs.check_folder_name``); one command per folder (``mtpp.runs.RunLock``).
    """
    from mtpp.runs import RunLock

    _check_resume_or_overwrite(resume, overwrite)
    configs = _checked_variants(config, variants)  # before the lock creates the folder
    with distributed.session(config.train.device) as ddp:
        with RunLock(out_dir) if ddp.is_main else contextlib.nullcontext():  # one command per variants folder
            return _run_variants(config, configs, Path(out_dir), ddp, resume, data_dir, overwrite)


def _checked_variants(config: RunConfig, variants: list[dict] | None) -> dict[str, RunConfig]:
    """``{name: configuration}`` of each variant, every name a folder name and every aggregator buildable (as ``fit``
    checks it), so a bad variant is refused before anything is written."""
    from mtpp.runs import check_folder_name

    configs = variant_configs(config, variants)
    for name, cfg in configs.items():
        check_folder_name(name, "variant name", VARIANTS_OUTPUTS)
        try:
            _make_aggregator(cfg)
        except ConfigError as e:
            raise ConfigError(f"variant {name}: {e}") from None
    return configs


def _check_resume_or_overwrite(resume: bool, overwrite: bool) -> None:
    """``ConfigError`` for ``--resume`` with ``--overwrite``: continuing a run and replacing it contradict each
    other, and guessing which was meant either loses the run or ignores the request."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: --resume continues the run in the folder, "
                          "--overwrite replaces it; pass one of them")


def _run_variants(
    config: RunConfig, configs: dict[str, RunConfig], out_dir: Path, ddp: Dist, resume: bool, data_dir: str | None,
    overwrite: bool,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each variant (``configs``: ``_checked_variants``) exactly as ``fit`` would train it alone: ``resume``
    continues (or extends, after a larger ``train.max_epochs``) every variant that has a checkpoint, refuses a
    changed model or other data, and trains the others from scratch. The base configuration is kept in
    ``out_dir/variants.yaml`` for a later ``--resume``."""
    if ddp.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_variants_config(out_dir / VARIANTS_FILE, config)
    results: dict[str, dict[str, Any]] = {}
    for i, (name, cfg) in enumerate(configs.items(), 1):
        run_dir = out_dir / name
        quiet = cfg.logging.quiet or not ddp.is_main
        echo(f"[{i}/{len(configs)}] variant {name} -> {run_dir}", quiet)
        started = ddp.on_main(lambda run_dir=run_dir: (run_dir / CONFIG_FILE).is_file())
        try:
            results[name] = fit(cfg, run_dir, resume=resume and started, data_dir=data_dir, overwrite=overwrite)
        except KeyboardInterrupt:
            if ddp.is_main:
                echo(f"to continue every variant: {train_command()} --out {out_dir} --resume")
            raise
    table = comparison_table(results, time_unit_of(config.data.name))
    if ddp.is_main:
        write_json(out_dir / "comparison.json", results)
        write_text(out_dir / "comparison.md", table + "\n")
        if not config.logging.quiet:
            print(table)
    return results


VARIANTS_FILE = "variants.yaml"
VARIANTS_OUTPUTS = (VARIANTS_FILE, "comparison.json", "comparison.md")
"""The files ``mtpp train`` writes beside the variants' run folders: no variant may be named as one of them."""


def _write_variants_config(path: Path, cfg: RunConfig) -> None:
    """The configuration with its ``variants`` list (run-time options left out), for ``--resume``."""
    data = cfg.to_dict()
    for section, key in RUNTIME_KEYS:
        data.get(section, {}).pop(key, None)
    write_text(path, dump_yaml(data))


COLUMNS = (
    ("L_T/seq", "test", "nll_time_per_seq"),
    ("L_M/seq", "test", "nll_mark_per_seq"),
    ("acc. forecast", "test", "accuracy_forecast"),
    ("acc. given time", "test", "accuracy_given_time"),
    ("PCE", "test", "pce"),
    ("ECE forecast", "test", "ece_forecast"),
    ("conflict", "train", "conflict_rate"),
    ("events/s", "train", "train_events_per_second"),
    ("best ep.", "train", "best_epoch"),
    ("params", "train", "num_parameters"),
)


CALIBRATION_WORDS = "PCE: calibration of the time distribution (its PIT), ECE forecast: of p(k | H), both unitless"
"""What the PCE and ECE columns of the run summaries score (``mtpp.evaluation.metrics``: PCE, ECE)."""


def comparison_table(results: dict[str, dict[str, Any]], time_unit: str | None = None) -> str:
    """A Markdown table, one row per run: test NLL per sequence, accuracy, calibration, conflict rate, speed, with
    a caption giving the units (nats; ``time_unit``, the data's documented unit, ``mtpp.data.catalog.time_unit_of``),
    what each mark column conditions on and which events were scored (the runs' ``first_event``)."""
    header = "| run | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, m in results.items():
        cells = [fmt_value(m.get(split, {}).get(key)) for _, split, key in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    rules = {m.get("test", {}).get("first_event") for m in results.values()}
    rule = str(rules.pop()) if len(rules) == 1 else None
    first = {"skip": "not scored", "include": "scored"}.get(rule, "as each run's model.first_event says")
    lines.append(
        f"(test split; L_T / L_M: time / mark NLL per sequence in nats, times in {time_unit_text(time_unit)}, lower "
        "is better; L_M scores p(k | tau_obs, H), told the observed time; acc. forecast: top-1 of p(k | H), the next "
        f"time unknown; acc. given time: of p(k | tau_obs, H); {CALIBRATION_WORDS}, lower is better; conflict = share "
        f"of measured steps with cos_tm < 0; first event of each sequence {first})"
    )
    return "\n".join(lines)


def fmt_value(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def _finished(run_dir: Path) -> bool:
    try:
        m = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return "test" in m and "val" in m


# ================================================================================================ the step


def train_step(
    s: Any, batch: Any, want_stats: bool, *, scale: float | None = None, meta: dict[str, Any] | None = None
) -> None:
    """One training step: the trainer's (``Trainer``) and the one ``mtpp bench`` times (``Stepper``).

    ``s`` has ``cfg``, ``model``, ``optimizer``, ``aggregator``, ``guard``, ``records`` (a ``StatsBuffer``),
    ``device``, ``amp``, ``dist`` (``mtpp.training.distributed.Dist``), ``_nll`` and ``_backward``. ``batch`` is
    a host batch (pinned on CUDA), moved with ``non_blocking=True``. ``scale``: the DDP share of the global batch
    mean (``ShardedBucketSampler.loss_scales``); ``None`` is 1. With ``want_stats`` the step's losses (global
    batch means under DDP), diagnostics, gradient norm and skip flag are appended to ``s.records`` with ``meta``.

    No host sync on CUDA: the losses are float32 even under bf16 autocast, the finite flag (all-reduced with MIN
    across ranks, so every rank skips the same steps) stays on the device and the guard masks the update.
    """
    batch = batch.to(s.device, non_blocking=True)
    ddp: Dist = s.dist
    if ddp.enabled:
        _zero_grads(s.model)
    else:
        s.optimizer.zero_grad(set_to_none=True)
    with autocast(s.amp, s.device):
        out = s._nll(batch)
    loss_time = out.time_nll.float().mean()
    loss_mark = out.mark_nll.float().mean()
    if scale is not None and scale != 1.0:
        loss_time, loss_mark = loss_time * scale, loss_mark * scale
    stats = s._backward(loss_time, loss_mark, want_stats)
    params = _trainable(s.model)
    norm = grad_norm(params)
    ok = ddp.all_true(NonFiniteGuard.finite_flag(loss_time, loss_mark, norm))
    if s.cfg.train.grad_clip is not None:
        torch.nn.utils.clip_grads_with_norm_(params, s.cfg.train.grad_clip, norm)
    s.guard.step(ok)
    if want_stats:
        losses = ddp.reduce_mean(torch.stack([loss_time.detach(), loss_mark.detach()]))
        record = {"loss_time": losses[0], "loss_mark": losses[1], **NonFiniteGuard.null_if_skipped(stats, ok)}
        record.update(grad_norm=norm, skipped=(~ok).float())
        s.records.append(record, **(meta or {}))


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in unique_parameters(model.parameters()) if p.requires_grad and p.grad is not None]


def _zero_grads(model: nn.Module) -> None:
    """DDP: every trainable parameter holds a zero ``.grad`` (not ``None``), so the flat gradient vectors that
    ``backward_step`` all-reduces have the same layout on every rank whatever each rank's batch reached."""
    for p in unique_parameters(model.parameters()):
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        else:
            p.grad.zero_()


class Stepper:
    """What ``train_step`` needs, built as the trainer builds it, without data or a run directory (``mtpp
    bench``). ``step(batch, want_stats)`` is exactly the trainer's step (``_backward`` is ``Trainer._backward``)."""

    def __init__(self, cfg: RunConfig, num_marks: int, device: torch.device, dist: Dist = SINGLE) -> None:
        from mtpp.training.gradients import StatsBuffer

        self.cfg, self.device, self.dist = cfg, device, dist
        if device.type == "cuda":
            set_float32_precision(cfg.train.tf32)
        self.amp = cfg.train.amp and device.type == "cuda"
        self.model = build_run_model(cfg, num_marks, device)
        self._nll = training_nll(self.model, cfg.train)
        self.optimizer = make_optimizer(cfg.train, self.model, device)
        self.aggregator = _make_aggregator(cfg)
        self.guard = NonFiniteGuard(self.optimizer, self.aggregator, cfg.train.max_consecutive_skips, device)
        self.records = StatsBuffer()

    def step(self, batch: Any, want_stats: bool) -> None:
        train_step(self, batch, want_stats)


# ================================================================================================ the trainer


class Trainer:
    """One run: setup, epochs, final evaluation. ``fit`` is the way in; this class keeps the pieces apart."""

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: str | Path,
        *,
        resume: bool = False,
        data_dir: str | None = None,
        overwrite: bool = False,
        dist: Dist = SINGLE,
        model: nn.Module | None = None,
        data: Any = None,
        expected_data: dict[str, Any] | None = None,
    ) -> None:
        out_dir = Path(out_dir)
        self.cfg = cfg
        self.out = out_dir
        self.dist = dist
        self.main = dist.is_main
        self.quiet = cfg.logging.quiet or not self.main
        device = distributed.rank_device(cfg.train.device, dist.local_rank) if dist.enabled else cfg.train.device
        self.device = resolve_device(device, cfg.train.tf32, fix="--set train.device=cpu, or auto")
        self.amp = amp_enabled(cfg.train, self.device)
        self.dtype = DTYPES[cfg.data.dtype]
        # rank 0 reads / prepares the run directory; its checkpoint (or its error) reaches every rank
        where = "cpu" if dist.enabled else self.device
        state, initial = dist.on_main(lambda: _setup_out_dir(cfg, out_dir, resume, overwrite, where, self.quiet))
        resume = state is not None  # False when --resume found only a run that died before its first checkpoint
        checkpoint.seed_everything(cfg.train.seed)
        if data is None:
            recorded = (state or {}).get("data")
            what = "--resume" if recorded else "retraining a result record"
            self.data, self.data_record = _load_data_rank0_first(cfg, data_dir, dist, recorded or expected_data, what)
        else:  # data the caller loaded (mtpp.training.api.fit), recorded like loaded data
            from mtpp.runs import data_record

            self.data, self.data_record = data, data_record(data, cfg.data)
        _check_validation_split(self.data, cfg)
        if model is None:
            self.model = build_run_model(cfg, self.data.num_marks, self.device)
        else:  # a model the caller built (mtpp.training.api.fit): trained in place
            self.model = model.to(device=self.device, dtype=self.dtype)
        # the model's unit of time (mtpp.models.scaling); a resumed run restores it from its checkpoint below
        self.model.time_scale = resolve_time_scale(cfg.data.time_scale, self.data.train)
        if initial is not None:  # a restart of a run whose initial weights were given (initial.pt): the same ones,
            from mtpp.runs import load_weights  # and the random streams from the seed, as when they were given

            load_weights(self.model, initial, out_dir / checkpoint.INITIAL, cfg.to_dict())
            checkpoint.seed_everything(cfg.train.seed)
        # where the weights before the first step came from (config.yaml run_info.initial_weights)
        self.initial_weights = (
            (state.get("stored_run_info") or {}).get("initial_weights") if state is not None
            else checkpoint.INITIAL if model is not None or initial is not None else "train.seed"
        )
        self.time_lattice = time_lattice(self.data.train)  # binned L_T in the final evaluation (mtpp.data.lattice)
        self.time_units = time_unit_text(time_unit_of(cfg.data.name))  # "hours" where the catalog documents it
        if cfg.train.select_time_on == "binned" and self.time_lattice is None:
            raise ConfigError(
                "train.select_time_on: binned scores each validation gap's lattice bin, but the training gaps of "
                f"{cfg.data.name} are not on a lattice (mtpp data describe shows it); use train.select_time_on: nll")
        if self.main:  # ties and t = 0 first events: say so before training (mtpp.models.ties)
            from mtpp.models.ties import tie_warning

            if self.time_lattice is not None and self.time_lattice.consequential:
                echo(f"warning: {lattice_warning(self.time_lattice, self.time_units)}", quiet=False, once=True)
            from mtpp.data.origin import absolute_clock_warning

            clock = absolute_clock_warning(self.data.train, cfg.model.first_event, self.time_units)
            if clock:
                echo(f"warning: {clock}", quiet=False, once=True)

            warning = tie_warning(self.data.train, cfg.model.first_event, cfg.model.tie_resolution,
                                  self.model.time_scale)  # fmt: skip
            if warning and self.time_lattice is not None:  # a tie on a lattice is a gap below half a quantum
                half = self.time_lattice.quantum / 2 / self.model.time_scale
                warning += (f"; the times lie on a lattice of q = {self.time_lattice.quantum:.6g} {self.time_units}, "
                            f"where a tie is a gap below q / 2: model.tie_resolution={half:.6g} (model units) scores "
                            "each tie as that bin, and nll_time_binned_per_seq scores every gap as its bin")
            if warning:
                echo(f"warning: {warning}", quiet=False, once=True)
            rule_warning = evaluation_rule_warning(self.model)  # a biased validation score / reported L_T
            if rule_warning:
                echo(f"warning: {rule_warning}", quiet=False, once=True)
        dist.broadcast_module(self.model)  # identical replicas (the same seed gives them anyway on CPU)
        if dist.rank > 0:  # Monte Carlo nodes / dropout differ across ranks; rank 0 keeps the single-process stream
            checkpoint.seed_everything(distributed.rank_seed(cfg.train.seed, dist.rank))
        self._nll = training_nll(self.model, cfg.train)
        self.optimizer = make_optimizer(cfg.train, self.model, self.device)
        self.scheduler = make_scheduler(cfg.train, self.optimizer)
        self.aggregator = _make_aggregator(cfg)
        self.guard = NonFiniteGuard(self.optimizer, self.aggregator, cfg.train.max_consecutive_skips, self.device)
        self.early = self._make_early_stopping()
        self.counters = Counters()
        self._wall_since = time.perf_counter()  # counters.wall_seconds holds the time before this point
        self.epoch = 0  # last finished epoch
        self.loader = self._make_loader()
        if resume:
            resolved = self.model.time_scale
            self._restore(state)  # restores the checkpoint's unit of time with its weights
            _check_resumed_time_scale(resolved, self.model.time_scale, cfg.data.time_scale, out_dir)
            if self.main:
                from mtpp.training.tracking import check_recorded_stores

                check_recorded_stores(out_dir)  # a store gone: refused before the log or config.yaml change
                truncate_log(out_dir, self.epoch)
        from mtpp.training.gradients import StatsBuffer

        self.records = StatsBuffer()
        self.logger: RunLogger | _NoLogger = _NoLogger()
        # a finished run that --resume has nothing left to train for: nothing about it is rewritten
        self.already_finished = bool(resume and self.epoch and (self.epoch >= cfg.train.max_epochs or self.early.done)
                                     and _finished(out_dir))  # fmt: skip
        self._unapplied = (state or {}).get("resume_changed") if self.already_finished else None
        if self.main and not self.already_finished:
            history = (state or {}).get(RESUMED_KEY) or []
            env = run_environment(self.device, dist.world)
            env_changed = environment_changes((state or {}).get("stored_run_info"), env) if state is not None else {}
            if env_changed:  # this resume's entry (its settings' changes, if any, are history[-1] already)
                if state.get("resume_changed"):
                    history[-1]["environment"] = env_changed
                else:
                    history.append({"epoch": int(state["epoch"]), "environment": env_changed})
            if (state or {}).get("resume_changed") or env_changed:
                changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in
                                    {**(state.get("resume_changed") or {}), **env_changed}.items())
                echo(f"--resume from epoch {self.epoch}: {changes} (recorded in config.yaml run_info.resumed)", False)
            _write_config(
                out_dir / CONFIG_FILE, cfg, self.device, dist.world, self.data_record, self.model.time_scale, history,
                env=env, initial_weights=self.initial_weights,
            )
            if self.initial_weights == checkpoint.INITIAL and state is None:  # what train.seed cannot give again
                checkpoint.save_atomic({"model": self.model.state_dict(), "config": cfg.to_dict(),
                                        "num_marks": self.data.num_marks, "data": self.data_record},
                                       out_dir / checkpoint.INITIAL)  # fmt: skip
            self.logger = RunLogger(out_dir, tensorboard=cfg.logging.tensorboard)
        self.progress = Progress(cfg.logging.progress and not self.quiet)
        self.on_epoch: Any = None  # fit(on_epoch=...): a per-epoch callback (pruning in mtpp tune)
        self.stopped_by: str | None = None  # "on_epoch" when that callback asked to stop
        self._timing = _Timing()
        self.memory_note: str | None = None  # the largest training batch's estimated memory, when large
        if self.main and not self.already_finished:
            for line in self._batch_cost_lines():
                if line.startswith("warning:"):
                    echo(line, quiet=False, once=True)
                else:
                    self.memory_note = line
        if self.main:
            echo(run_header(self), self.quiet, console=run_header(self, console=True))

    # ------------------------------------------------------------------ setup helpers

    def _make_early_stopping(self) -> EarlyStopping:
        t = self.cfg.train
        groups = None
        if t.separate_early_stopping:
            groups = {k: list(v) for k, v in self.model.task_parameters().items()}
        return EarlyStopping(self.model, t.patience, t.min_delta, separate=t.separate_early_stopping, groups=groups)

    def _make_loader(self) -> Any:
        from mtpp.data.sampler import make_loader

        t = self.cfg.train
        # under DDP: this rank's slice of every global batch (ShardedBucketSampler, with loss_scales())
        return make_loader(
            self.data.train,
            t.batch_size,
            shuffle=True,
            seed=t.seed,
            bucket=t.bucket,
            dtype=self.dtype,
            device_type=self.device.type,
            num_replicas=self.dist.world,
            rank=self.dist.rank,
            num_workers=self.cfg.data.num_workers,
            max_events=t.max_batch_events,
        )

    def _batch_cost_lines(self) -> list[str]:
        """``mtpp.training.memory.batch_warnings`` for this run's training data, model and batches."""
        from mtpp.training import memory

        t = self.cfg.train
        lengths = [len(s) for s in self.data.train]
        per_event = memory.bytes_per_event(self.model, self.model.nll, self.data.num_marks, self.dtype, self.device)
        return memory.batch_warnings(lengths=lengths, batch_size=t.batch_size, max_events=t.max_batch_events,
                                     per_event=per_event, encoder=self.cfg.model.encoder,
                                     available=memory.available_bytes(self.device))  # fmt: skip

    # ------------------------------------------------------------------ main loop

    def run(self) -> dict[str, Any]:
        t = self.cfg.train
        if self.already_finished:
            unapplied = ""
            if self._unapplied:  # said, not recorded: config.yaml keeps the settings that trained the run
                unapplied = ("; not applied, nothing trained with them (config.yaml unchanged): "
                             + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in self._unapplied.items()))
            stop = "early-stopped" if self.early.done else f"train.max_epochs {t.max_epochs}"
            echo(f"{self.out}: already finished (epoch {self.epoch}, {stop}); keeping its {METRICS_FILE}{unapplied}",
                 False if unapplied else self.quiet)
            return json.loads((self.out / METRICS_FILE).read_text(encoding="utf-8"))
        if self.epoch:
            echo(f"resuming {self.out} after epoch {self.epoch} (step {self.counters.step})", self.quiet)
        while self.epoch < t.max_epochs and not self.early.done:
            epoch = self.epoch + 1
            seconds = self._train_epoch(epoch)
            started = time.perf_counter()
            val = self._validate()
            val["validation_seconds"] = time.perf_counter() - started
            self._end_epoch(epoch, seconds, val)
            if self.on_epoch is not None and self.on_epoch(epoch, val) == "stop":
                self.stopped_by = "on_epoch"  # the caller's callback ended training: the best state so far stands
                break
        return self._finish()

    def _train_epoch(self, epoch: int) -> float:
        self.model.train()
        self.loader.batch_sampler.set_epoch(epoch)
        # under DDP: this rank's share of the global batch mean, per step (module doc of distributed.py)
        scales = self.loader.batch_sampler.loss_scales() if self.dist.enabled else None
        # events of the global batch of each step (all ranks'), known to every rank from the shared batch plan
        global_events = self.loader.batch_sampler.global_events() if self.dist.enabled else None
        self.progress.start_epoch(epoch, len(self.loader), f"epoch {epoch}/{self.cfg.train.max_epochs}")
        start = last = time.perf_counter()
        pending_events = pending_steps = 0
        for i, batch in enumerate(self.loader):
            scale = None if scales is None else scales[i]
            # a CPU tensor: no device sync; under DDP every rank's events (this rank's is one slice of them)
            n_events = int(batch.lengths.sum()) if global_events is None else global_events[i]
            self._train_step(epoch, batch, scale)
            self.progress.step()
            self.counters.events += n_events
            pending_events += n_events
            pending_steps += 1
            if pending_steps >= self.cfg.logging.flush_every:
                now = self._flush(pending_steps, pending_events, last)
                last, pending_events, pending_steps = now, 0, 0
        self._flush(pending_steps, pending_events, last)
        self.progress.close()
        seconds = time.perf_counter() - start
        self.counters.train_seconds += seconds
        self._timing.epoch_done(seconds, len(self.loader))
        return seconds

    def _train_step(self, epoch: int, batch: Any, scale: float | None = None) -> None:
        self.counters.step += 1
        step = self.counters.step
        want_stats = step % self.cfg.gradients.log_every == 0
        train_step(self, batch, want_stats, scale=scale, meta={"epoch": epoch, "step": step})

    def _backward(self, loss_time: Tensor, loss_mark: Tensor, want_stats: bool) -> dict[str, Tensor]:
        from mtpp.training.gradients import backward_step

        self.guard.before_backward()
        return backward_step(
            loss_time,
            loss_mark,
            self.model.shared_parameters(),
            self.model.parameters(),
            self.aggregator,
            want_stats,
            per_tensor=self.cfg.gradients.per_tensor,
            reduce=self.dist.reduce_mean if self.dist.enabled else None,  # DDP: global-batch gradients
        )

    def _flush(self, steps: int, events: int, since: float) -> float:
        """Write buffered step records (the one host transfer), refresh the bar, enforce the skip limit."""
        records = self.records.flush()
        now = time.perf_counter()
        for r in records:
            r["skipped"] = bool(r.get("skipped"))
        self.counters.add_records(records)
        self.logger.write_many({"kind": "step", **r} for r in records)
        if steps:
            last = records[-1] if records else {}
            rate = events / (now - since) if now > since else None
            self._timing.steps_done(steps, now - since)

            def window_mean(key: str) -> float | None:  # one batch's loss swings; the flushed steps' mean does not
                vals = [r[key] for r in records if not r["skipped"] and r.get(key) is not None]
                return sum(vals) / len(vals) if vals else None

            self.progress.update(
                0,  # the steps were counted one by one (Progress.step)
                {
                    # mean NLLs of the batches since the last refresh, in the units of the epoch lines (data units)
                    "L_T nats/seq": window_mean("loss_time"),
                    "L_M nats/seq": window_mean("loss_mark"),
                    "cos": last.get("cos_tm"),
                    "ev/s": None if rate is None else round(rate),
                    "run ETA": format_eta(self._timing.run_eta(self)),
                },
            )
        self.guard.check_limit()
        return now

    # ------------------------------------------------------------------ validation and epoch end

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        from mtpp.data.sampler import make_loader
        from mtpp.models.mtpp import evaluation_seed

        self.model.eval()
        t = self.cfg.train
        part = distributed.shard(self.data.val, self.dist)  # all of it in one process
        quantum = self.time_lattice.quantum if t.select_time_on == "binned" else None
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # L_T, L_M, scored events, binned L_T
        zero = torch.zeros((), device=self.device)
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        # Monte Carlo nodes keyed by train.seed (not the rank's seed), the final evaluation's: a validation score
        # does not depend on train.eval_batch_size, train.max_batch_events or the number of ranks
        with torch.random.fork_rng(devices=cuda), evaluation_seed(self.model, t.seed):
            torch.manual_seed(distributed.rank_seed(t.seed, self.dist.rank))
            if part:
                loader = make_loader(
                    part, t.evaluation_batch_size, shuffle=False, dtype=self.dtype,
                    device_type=self.device.type, max_events=t.evaluation_events(self.data.num_marks),
                )  # fmt: skip
                with self.progress.phase("validation", len(loader)) as bar:
                    for batch in loader:
                        batch = batch.to(self.device, non_blocking=True)
                        with autocast(self.amp, self.device):
                            if quantum is None:
                                out, binned = self.model.nll(batch), zero
                            else:
                                out, binned = self.model.nll_binned(batch, quantum)
                        sums += torch.stack([out.time_nll.sum(), out.mark_nll.sum(), out.scored.sum(),
                                             binned.sum()]).double()  # fmt: skip
                        if bar is not None:
                            bar.update()
        lt, lm, ev, lb = self.dist.sum_(sums).tolist()  # every rank: the same totals, the same decisions
        n = len(self.data.val)
        return {
            "val_nll_time_per_seq": lt / n,
            "val_nll_mark_per_seq": lm / n,
            "val_nll_per_seq": (lt + lm) / n,
            "val_nll_per_event": (lt + lm) / ev if ev else math.nan,
            **({} if quantum is None else {"val_nll_time_binned_per_seq": lb / n}),
        }

    def _end_epoch(self, epoch: int, seconds: float, val: dict[str, float]) -> None:
        binned = self.cfg.train.select_time_on == "binned"  # the time part's score (train.select_time_on)
        time_key = "val_nll_time_binned_per_seq" if binned else "val_nll_time_per_seq"
        improved, frozen = self.early.step(epoch, val[time_key], val["val_nll_mark_per_seq"], self.model)
        for group in frozen:
            self._freeze(group)
        self._step_scheduler(val[time_key] + val["val_nll_mark_per_seq"])  # the score early stopping follows
        self.epoch = epoch
        if improved:
            self._save_best()
        state = self._checkpoint_state()  # a collective under DDP (every rank's generator states)
        guard = self.guard.state_dict()
        record = {
            "kind": "epoch", "epoch": epoch, "step": self.counters.step, **val, "epoch_seconds": seconds,
            "train_events_per_second": self.counters.events_per_second, "lr": self.optimizer.param_groups[0]["lr"],
            "skipped_batches": guard["skipped"], "best_epoch": self.early.best_epoch, "improved": improved,
            "frozen": self.early.done_groups() if self.early.separate else [],
        }  # fmt: skip
        # the epoch's line before its checkpoint: a kill between the two leaves a line that a resume drops
        # (logging.truncate_log), never a checkpointed epoch without its line (the record reads the best epoch's)
        self.logger.write(record)
        self.logger.flush()
        if self.main:
            checkpoint.save_atomic(state, self.out / checkpoint.CHECKPOINT)
            self.logger.checkpointed(epoch)  # the trackers get the epoch now: a resume cannot repeat it
        self._timing.epoch_end_done()
        echo(epoch_line(epoch, self.cfg.train.max_epochs, improved, val, seconds, self.counters, frozen), self.quiet)

    def _freeze(self, group: str) -> None:
        """Separate early stopping: put the group's best values back and stop training it."""
        best = self.early.best_states.get(group, {})
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name in self.early.group_names[group]:
                p = params[name]
                if name in best:
                    p.copy_(best[name])
                p.requires_grad_(False)
                p.grad = None

    def _step_scheduler(self, val_total: float) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_total)
        else:
            self.scheduler.step()

    # ------------------------------------------------------------------ checkpoints

    def _save_best(self) -> None:
        if not self.main:
            return
        state = {
            "model": self.early.best_model_state(self.model),
            "epoch": self.early.best_epoch,
            "best_epochs": self.early.best_epochs(),
            "num_marks": self.data.num_marks,
            "config": self.cfg.to_dict(),
            "data": self.data_record,
        }
        checkpoint.save_atomic(state, self.out / checkpoint.BEST)

    def _checkpoint_state(self) -> dict[str, Any]:
        now = time.perf_counter()
        self.counters.wall_seconds += now - self._wall_since
        self._wall_since = now
        rng_ranks = self.dist.gather_objects(checkpoint.rng_state()) if self.dist.enabled else None
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "aggregator": self.aggregator.state_dict(),
            "rng": checkpoint.rng_state(),
            "early_stopping": self.early.state_dict(),
            "guard": self.guard.state_dict(),
            "counters": asdict(self.counters),
            "epoch": self.epoch,
            "step": self.counters.step,
            "num_marks": self.data.num_marks,
            "config": self.cfg.to_dict(),
            "data": self.data_record,
            "version": mtpp.__version__,
            **({"rng_ranks": rng_ranks, "world_size": self.dist.world} if rng_ranks is not None else {}),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        from mtpp.runs import load_weights

        load_weights(self.model, state, Path(self.out) / checkpoint.CHECKPOINT, self.cfg.to_dict())
        self.early.load_state_dict(state["early_stopping"], self.device)
        for group in self.early.done_groups() if self.early.separate else []:
            self._freeze(group)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.cfg.train.lr_schedule == "none":  # a resumed run trains at the rate its config says (not the old)
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.train.lr
                group["weight_decay"] = self.cfg.train.weight_decay
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.aggregator.load_state_dict(state["aggregator"])
        self.guard.load_state_dict(state["guard"])
        self.counters = Counters(**state["counters"])
        self.epoch = int(state["epoch"])
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == self.dist.world:
            checkpoint.set_rng_state(ranks[self.dist.rank])
        else:
            checkpoint.set_rng_state(state["rng"])
            if self.dist.rank > 0:  # another world size than the checkpoint's: fresh per-rank streams
                checkpoint.seed_everything(distributed.rank_seed(self.cfg.train.seed + self.epoch, self.dist.rank))

    # ------------------------------------------------------------------ the end

    def _finish(self) -> dict[str, Any]:
        self.progress.close()
        if self.early.best_epoch == 0:
            echo("warning: validation loss never improved (non-finite?); evaluating the last state", self.quiet)
        self.model.load_state_dict(self.early.best_model_state(self.model))
        self._save_best()
        summary = self._train_summary()
        metrics: dict[str, Any] = {}
        t = self.cfg.train
        for split in ("val", "test"):
            kwargs = dict(batch_size=t.evaluation_batch_size, device=self.device, dtype=self.dtype,
                          time_quantum=scored_quantum(self.time_lattice, t.select_time_on == "binned"),
                          max_events=t.evaluation_events(self.data.num_marks))
            if self.dist.enabled:
                m, arrays = distributed.evaluate_sharded(
                    self.model, self.data.split(split), self.dist, seed=t.seed, **kwargs
                )
            else:
                seqs = self.data.split(split)
                batches = evaluation_batches(seqs, kwargs["batch_size"], kwargs["max_events"])
                with self.progress.phase(f"final evaluation ({split})", batches) as bar:
                    hook = None if bar is None else (lambda bar=bar: bar.update())
                    m, arrays = evaluate_model(self.model, seqs, seed=t.seed, on_batch=hook, **kwargs)
            m["first_event"] = self.cfg.model.first_event
            metrics[split] = with_run_fields(m, summary)
            if self.main:
                write_json(self.out / f"arrays_{split}.json", arrays)
        # the whole run, every invocation, final evaluation included (not the epochs lost to a kill)
        summary["wall_seconds"] = self.counters.wall_seconds + (time.perf_counter() - self._wall_since)
        metrics["train"] = summary
        if self.main:
            write_json(self.out / METRICS_FILE, metrics)
        metrics = json.loads(json.dumps(json_safe(metrics)))  # NaN -> None, as on disk
        echo(final_summary(self.out, metrics, time_unit_of(self.cfg.data.name), self.cfg.gradients.aggregator),
             self.quiet, stream=sys.stdout)
        self.dist.barrier()  # the run directory is complete before any rank returns
        return metrics

    def _train_summary(self) -> dict[str, Any]:
        guard = self.guard.state_dict()
        summary: dict[str, Any] = {
            **self.counters.conflict_rates(),
            # the conflict rate's denominator: the steps whose cos_tm was measured (every gradients.log_every-th,
            # skipped batches not counted), and how many parameters both losses reach (0 for "++": nothing to measure)
            "conflict_rate_steps": self.counters.conflicts["cos_tm"][1],
            "shared_parameters": sum(p.numel() for group in self.model.shared_parameters().values() for p in group),
            "train_events_per_second": self.counters.events_per_second,
            "skipped_batches": guard["skipped"],
            "epochs": self.epoch,
            "steps": self.counters.step,
            "train_seconds": self.counters.train_seconds,
            "best_epoch": self.early.best_epoch,
            # why training ended: patience ran out (every group, under separate early stopping) or the epoch cap
            "stopped_by": self.stopped_by or ("early_stopping" if self.early.done else "max_epochs"),
            "num_parameters": count_parameters(self.model),
            "first_event": self.cfg.model.first_event,
            "aggregator": self.cfg.gradients.aggregator,
        }
        if self.early.separate:
            summary.update({f"best_epoch/{g}": e for g, e in self.early.best_epochs().items()})
        return summary

    def close(self) -> None:
        self.progress.close()
        if hasattr(self, "logger"):
            self.logger.close()
        if hasattr(self, "model"):  # the model leaves the run as it came: eager (train.compile_integrand)
            compiled.enable(self.model, False)


Stepper._backward = Trainer._backward  # type: ignore[attr-defined]  # one backward path for trainer and bench


def conflict_text(train: dict[str, Any]) -> str:
    """The run's conflict rate (share of measured steps with ``cos_tm < 0``) and what it is over: ``0.333 (of 6
    measured steps)``; ``n/a (nothing shared: ...)`` for "++"; ``n/a (no step measured: ...)`` when
    ``gradients.log_every`` exceeded the steps a run with shared parameters trained. ``train``: ``metrics.json``'s
    ``train`` section (runs written before ``conflict_rate_steps`` existed: the bare rate)."""
    rate, n = train.get("conflict_rate"), train.get("conflict_rate_steps")
    if n is None:
        return fmt_value(rate)
    steps = train.get("steps")
    of = f" of {steps:,} steps" if isinstance(steps, int) and steps != n else ""
    if rate is not None:
        return f"{fmt_value(rate)} (over {n:,} measured step{'s' * (n != 1)}{of})"
    if train.get("shared_parameters") == 0:
        return "n/a (nothing shared: no parameter gets both gradients)"
    return (f"n/a (no step measured{of}: gradients.log_every is larger than the steps trained, or every step was "
            "skipped)")


def final_summary(out_dir: Path, metrics: dict[str, Any], time_unit: str | None = None,
                  aggregator: str | None = None) -> str:
    tr, val, test = metrics["train"], metrics["val"], metrics["test"]

    def binned(m: dict, key: str, label: str) -> str:  # data on a lattice: the binned kin beside the continuous
        return f" ({label} {fmt_value(m[key])})" if m.get(key) is not None else ""

    lines = [
        f"run {out_dir}: best epoch {tr['best_epoch']} of {tr['epochs']}, {tr['num_parameters']} parameters"
        + (f", aggregator {aggregator}" if aggregator else ""),  # the remedy the numbers below were trained with
        f"  val   L_T/seq {fmt_value(val.get('nll_time_per_seq'))}{binned(val, 'nll_time_binned_per_seq', 'binned')}"
        f"  L_M/seq {fmt_value(val.get('nll_mark_per_seq'))}"
        f"  accuracy forecast {fmt_value(val.get('accuracy_forecast'))}"
        f" / given time {fmt_value(val.get('accuracy_given_time'))}",
        f"  test  L_T/seq {fmt_value(test.get('nll_time_per_seq'))}{binned(test, 'nll_time_binned_per_seq', 'binned')}"
        f"  L_M/seq {fmt_value(test.get('nll_mark_per_seq'))}"
        f"  accuracy forecast {fmt_value(test.get('accuracy_forecast'))}"
        f" / given time {fmt_value(test.get('accuracy_given_time'))}  PCE {fmt_value(test.get('pce'))}"
        f"{binned(test, 'pce_binned', 'binned')}  ECE forecast {fmt_value(test.get('ece_forecast'))}",
        f"  conflict rate {conflict_text(tr)}  train {fmt_value(tr.get('train_events_per_second'))} events/s"
        f"  skipped batches {tr.get('skipped_batches', 0)}",
        f"  (L_T / L_M: NLL per sequence in nats, times in {time_unit_text(time_unit)}; accuracy forecast: p(k | H), "
        f"next time unknown; given time: p(k | tau_obs, H); {CALIBRATION_WORDS}"
        + ("; binned: of each gap's lattice bin, unitless (mtpp.data.lattice)" if "nll_time_binned_per_seq" in test
           else "") + ")",
    ]
    return "\n".join(lines)


# ================================================================================================ what a run says


def run_header(tr: "Trainer", console: bool = False) -> str:
    """The lines a run starts with: data (resolved source, sizes, marks), model, parameters, device, threads.
    ``console``: the console's copy, without the notes this process already gave as a WARNING (``train.log`` keeps
    every note: a later run in the same process, whose read warns no more, still records them)."""
    from mtpp.runs import describe_data

    cfg, data = tr.cfg, tr.data
    m = cfg.model
    scale = getattr(tr.model, "time_scale", None)
    threads = getattr(cfg.train, "threads", None) or torch.get_num_threads()
    events = "/".join(str(p["events"]) for p in tr.data_record["parts"].values())
    epoch = f"resuming after epoch {tr.epoch}" if tr.epoch else "from scratch"
    world = int(getattr(getattr(tr, "dist", None), "world", 1) or 1)  # torchrun ranks: the batch is per rank
    return "\n".join([
        f"run {tr.out} ({epoch}, up to {cfg.train.max_epochs} epoch{'s' * (cfg.train.max_epochs != 1)})",
        f"  data    {describe_data(data)}; events {events}",
        (f"  times   time scale {scale:.6g} (the model sees times / {scale:.6g})" if scale is not None
         else "  times   as given (no time scale)")
        + ("" if getattr(tr, "time_lattice", None) is None else f"; {tr.time_lattice.describe(tr.time_units)}"),
        f"  model   {m.encoder} encoder, {m.decoder} decoder, {m.parametrisation}; "
        f"{count_parameters(tr.model):,} parameters; aggregator {_aggregator_text(tr)}",
        f"  device  {tr.device} ({device_name(tr.device)}){' (bf16 autocast)' if tr.amp else ''}, {threads} thread(s), "
        f"{cfg.data.dtype}, "
        + (f"{world} ranks x batch {cfg.train.batch_size} (global batch {world * cfg.train.batch_size})"
           if world > 1 else f"batch {cfg.train.batch_size}")
        + f", lr {cfg.train.lr:g}" + _compiled_note(tr),
        # what reading the data did on the way (sequences sorted, files skipped); the re-split is left out: the data
        # line names the prepared folder, and a fresh preparation was just said as a WARNING
        *(f"  note    {n}" for n in (getattr(data, "notes", None) or [])
          if "auto-prepared" not in str(n) and not (console and warned(n))),
        # marks the model meets only in evaluation (the parts as trained on, after any max_sequences cut)
        *(f"  note    {n}" for n in [marks_absent_from_train(data)] if n),
        # each experiment tracker's store and run (also in OUT/tracking.json, where --resume finds them)
        *(f"  tracker {w}" for w in getattr(getattr(tr, "logger", None), "tracking", None) or []),
        *([f"  {tr.memory_note}"] if getattr(tr, "memory_note", None) else []),
        "  epoch lines: val NLL per sequence in nats (time L_T, mark L_M); '*' = best so far (best.pt updated)"
        + ("; the time part is judged by its binned L_T (train.select_time_on: binned)"
           if cfg.train.select_time_on == "binned" else ""),
    ])  # fmt: skip


def _aggregator_text(tr: Trainer) -> str:
    """The aggregator's name and every option it runs with, defaults included (``cograd (gamma=4e-07)``), an option
    that changes nothing with mtpp's two tasks (``pcgrad (seed=3: no effect with two tasks ...)``), and that a
    remedy does nothing on "++"."""
    from mtpp.training.aggregators import TASK_NAMES

    opts = getattr(tr.aggregator, "_options", None) or {}
    plusplus = tr.cfg.model.parametrisation == "plusplus"  # the whole remedy does nothing: said once, below
    unused = getattr(tr.aggregator, "unused_with_two_tasks", ()) if len(TASK_NAMES) == 2 and not plusplus else ()
    notes = [f"{k}={v!r}" + (": no effect with two tasks (time, mark): no random task order" if k in unused else "")
             for k, v in opts.items()]  # fmt: skip
    if plusplus and tr.cfg.gradients.aggregator != "sum":
        notes.append("no effect: '++' shares no parameters, each task's gradient reaches only its own")
    return tr.cfg.gradients.aggregator + (f" ({'; '.join(notes)})" if notes else "")


def _compiled_note(tr: Trainer) -> str:
    """What ``train.compile`` / ``train.compile_integrand`` compiled, for the header's device line."""
    parts = ["nll compiled"] if tr.cfg.train.compile else []
    if tr.cfg.train.compile_integrand:
        on = any(getattr(m, "compile_integrand", False) for m in tr.model.modules())
        parts.append("compensator integrand compiled" if on else
                     "compile_integrand: no effect (no compensator integrand is evaluated in training)")
    return "".join(f", {p}" for p in parts)


def epoch_line(
    epoch: int, max_epochs: int, improved: bool, val: dict[str, float], seconds: float, counters: Counters,
    frozen: list[str],
) -> str:  # fmt: skip
    """``epoch   3/100 * val L_T 1.234 L_M 0.567 nats/seq (L_T + L_M 1.802 nats/event)  12.3 s, 4,321 events/s``; with
    ``train.select_time_on: binned`` the binned validation L_T, which early stopping follows, beside L_T."""
    rate = counters.events_per_second
    return (
        f"epoch {epoch:>3}/{max_epochs} {'*' if improved else ' '} val L_T {val['val_nll_time_per_seq']:.3f}"
        + (f" (binned {val['val_nll_time_binned_per_seq']:.3f})" if "val_nll_time_binned_per_seq" in val else "")
        + f"  L_M {val['val_nll_mark_per_seq']:.3f} nats/seq (L_T + L_M {val['val_nll_per_event']:.4g} nats/event)"
        f"  {seconds:.1f} s" + (f", {rate:,.0f} train events/s" if rate else "")
        + (f"  frozen: {', '.join(frozen)}" if frozen else "")
    )


class _Timing:
    """Host clocks for the ETA of the run: seconds per training step (this epoch's flushes, else the last
    epoch's) and the epoch-end overhead (validation, checkpoints) of the last epoch."""

    def __init__(self) -> None:
        self.step_seconds: float | None = None
        self._steps = 0
        self._seconds = 0.0
        self.epoch_end: float | None = None
        self._epoch_end_start: float | None = None

    def steps_done(self, steps: int, seconds: float) -> None:
        self._steps += steps
        self._seconds += seconds
        self.step_seconds = self._seconds / self._steps if self._steps else self.step_seconds

    def epoch_done(self, seconds: float, steps: int) -> None:
        self._steps, self._seconds = 0, 0.0
        if steps:
            self.step_seconds = seconds / steps
        self._epoch_end_start = time.perf_counter()

    def epoch_end_done(self) -> None:
        if self._epoch_end_start is not None:
            self.epoch_end = time.perf_counter() - self._epoch_end_start

    def run_eta(self, tr: "Trainer") -> float | None:
        """Seconds left if every remaining epoch runs (early stopping may end sooner)."""
        if self.step_seconds is None:
            return None
        per_epoch = len(tr.loader)
        done = tr.progress.done
        epochs_after = max(tr.cfg.train.max_epochs - tr.epoch - 1, 0)
        end = self.epoch_end or 0.0
        return (per_epoch - done + epochs_after * per_epoch) * self.step_seconds + (epochs_after + 1) * end


# ================================================================================================ helpers


def _make_aggregator(cfg: RunConfig) -> Any:
    from mtpp.training.aggregators import make_aggregator

    return make_aggregator(cfg.gradients.aggregator, **cfg.gradients.options)


class _NoLogger:
    """The logger of ranks other than 0: they write nothing."""

    def write(self, record: dict[str, Any]) -> None: ...

    def write_many(self, records: Any) -> None:
        for _ in records:
            pass

    def checkpointed(self, epoch: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _setup_out_dir(
    cfg: RunConfig, out_dir: Path, resume: bool, overwrite: bool, map_location: Any, quiet: bool = False
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Prepare ``out_dir`` (rank 0); with ``resume`` check the stored config and return ``(checkpoint, None)``.
    ``(None, None)``: train from scratch; ``(None, initial)``: ``--resume`` found a run that died before its first
    checkpoint and whose initial weights were given (``initial.pt``, read before the folder is cleared): it starts
    over from them. The checkpoint carries the stored ``run_info`` as ``stored_run_info``."""
    from mtpp.runs import clean_temporary_files

    removed = clean_temporary_files(out_dir) if out_dir.is_dir() else []
    if removed:
        echo(f"removed {len(removed)} temporary file(s) of an interrupted write: "
             f"{', '.join(p.name for p in removed)}", quiet)  # fmt: skip
    initial = None
    if resume and _died_before_first_checkpoint(out_dir):
        _check_resumable(cfg, _read_stored_config(out_dir / CONFIG_FILE))
        if _stored_run_info(out_dir / CONFIG_FILE).get("initial_weights") == checkpoint.INITIAL:
            initial = checkpoint.load(out_dir / checkpoint.INITIAL, map_location=map_location)
        echo(f"{out_dir}: no {checkpoint.CHECKPOINT} yet (interrupted during its first epoch): starting over"
             + (f" from its {checkpoint.INITIAL}" if initial is not None else ""), quiet)
        resume = False
    stored = _prepare_out_dir(out_dir, resume, overwrite)
    attach_console_logs()  # the folder is the run's: train.log from here (with the lines so far)
    if not resume:
        return None, initial
    _check_resumable(cfg, stored)
    state = checkpoint.load(out_dir / checkpoint.CHECKPOINT, map_location=map_location)
    run_info = _stored_run_info(out_dir / CONFIG_FILE)
    history = list(run_info.get(RESUMED_KEY) or [])
    changed = _resume_changes(cfg, stored)
    if changed:
        history.append({"epoch": int(state["epoch"]), "changed": changed})
    state[RESUMED_KEY] = history
    state["resume_changed"] = changed  # what this --resume changes (said in the run's first lines)
    state["stored_run_info"] = run_info  # the environment of the epochs so far (environment_changes)
    return state, None


RESUMED_KEY = "resumed"
"""``run_info.resumed`` of ``config.yaml`` (and the key under which ``_setup_out_dir`` hands it over): one entry
``{epoch, changed: {key: [old, new]}, environment: {key: [old, new]}}`` per ``--resume`` that changed a setting
(``changed``) or ran in another environment (``environment``: ``ENVIRONMENT_KEYS`` of ``run_info``, e.g. another
git revision or torch version), so that what trained the epochs before it is not lost when ``config.yaml`` is
rewritten with the new values."""


def _resume_changes(cfg: RunConfig, stored: dict | None) -> dict[str, list]:
    """The settings (outside ``model`` / ``data``, which ``_check_resumable`` fixes) that a ``--resume`` changes,
    as ``{"train.lr": [old, new], ...}``; run-time options (``RUNTIME_KEYS``) do not count."""
    if stored is None:
        return {}
    old, new = config_from_dict(stored).to_dict(), cfg.to_dict()
    out = {}
    for section, values in new.items():
        if section in ("model", "data", "variants") or not isinstance(values, dict):
            continue
        for key, value in values.items():
            before = (old.get(section) or {}).get(key)
            if (section, key) not in RUNTIME_KEYS and before != value:
                out[f"{section}.{key}"] = [before, value]
    return out


def _died_before_first_checkpoint(out_dir: Path) -> bool:
    """The folder holds only files a run writes before its first ``checkpoint.pt`` (``config.yaml``,
    ``log.jsonl``, ``best.pt``, ``train.log``): it was killed in its first epoch, nothing is lost by restarting."""
    return (
        out_dir.is_dir()
        and (out_dir / CONFIG_FILE).is_file()
        and not (out_dir / checkpoint.CHECKPOINT).exists()
        and not (out_dir / METRICS_FILE).exists()
    )


def _load_data_rank0_first(
    cfg: RunConfig, data_dir: str | None, ddp: Dist, recorded: dict | None = None, what: str = "--resume"
) -> tuple[Any, dict]:
    """Rank 0 loads (and, on first use, prepares) the data before the other ranks read it; returns the data and
    its record (``mtpp.runs``). ``recorded``: a resumed run's record (or the one ``fit``'s ``expected_data`` gives):
    its data are used, other data refused (``what`` names the caller in the message).
    Rank 0 shows the reading bar (on a terminal) unless ``logging.progress`` is off or ``logging.quiet`` on."""
    progress = bool(cfg.logging.progress and not cfg.logging.quiet)
    from mtpp.runs import check_same_data, load_recorded_data

    box: dict[str, Any] = {}

    def load() -> None:
        tried: list = []
        box["data"] = load_recorded_data(cfg.data, data_dir, recorded, tried, progress)
        check_same_data(recorded, box["data"][1], what, tried=tried)

    ddp.on_main(load)
    return box["data"] if ddp.is_main else load_recorded_data(cfg.data, data_dir, recorded)


def _check_validation_split(data: Any, cfg: RunConfig) -> None:
    """A validation part that scores no event cannot choose a best epoch, and a test part that scores none would
    report an NLL of 0: refuse both before training (issue 11 §3)."""
    skip_first = cfg.model.first_event == "skip"
    for part, need in (("validation", "early stopping and best.pt need validation events"),
                       ("test", "the reported metrics need test events")):  # fmt: skip
        seqs = data.val if part == "validation" else data.test
        scored = sum(max(len(s) - (1 if skip_first else 0), 0) for s in seqs)
        if not seqs or scored == 0:
            raise MtppError(
                f"{data.name}: the {part} part has {len(seqs)} sequence(s) and no scored event "
                f"(model.first_event: {cfg.model.first_event}); {need}: use longer sequences, another split, or "
                "more data (data.max_sequences)"
            )


def _prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> dict | None:
    """Create ``out_dir``; refuse to clobber a run unless ``overwrite``; return the stored config on resume.

    Starting over removes only the files a run writes (``RUN_FILES``, ``arrays_*.json``); anything else in the
    folder stays. A run killed before its first ``checkpoint.pt`` (``best.pt`` may exist) restarts without
    ``--overwrite``: it has nothing to lose."""
    from mtpp.runs import make_out_folder

    make_out_folder(out_dir)
    foreign = _foreign_run_files(out_dir)
    if foreign:  # never replaced, not even with --overwrite: mtpp did not write them
        raise MtppError(f"{out_dir} holds {', '.join(foreign)} that mtpp did not write (a run's config.yaml has a "
                        "run_info section, its log.jsonl one JSON record per line, its train.log starts with a '--- ' "
                        "line, its metrics.json / arrays_*.json hold metric sections / plot arrays, its .pt files are "
                        "mtpp checkpoints); "
                       "choose another --out")
    if resume:
        if not (out_dir / checkpoint.CHECKPOINT).is_file():
            raise MtppError(f"{out_dir}: nothing to resume (no {checkpoint.CHECKPOINT}); run without --resume")
        return _read_stored_config(out_dir / CONFIG_FILE)
    existing = [f for f in (checkpoint.CHECKPOINT, checkpoint.BEST, METRICS_FILE) if (out_dir / f).exists()]
    if existing and not overwrite and not _died_before_first_checkpoint(out_dir):
        raise MtppError(
            f"{out_dir} already holds a run ({', '.join(existing)}); pass --resume to continue it, "
            "--overwrite to start over, or choose another --out"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (*RUN_FILES, "arrays_val.json", "arrays_test.json"):
        (out_dir / name).unlink(missing_ok=True)
    return None


def _foreign_run_files(out_dir: Path) -> list[str]:
    """The files of ``out_dir`` named like a run's files that a run did not write: a ``config.yaml`` without
    ``run_info`` (e.g. the user's own configuration, even the one being trained from), a ``log.jsonl`` whose first
    line is not one of the trainer's JSON records, a ``metrics.json`` without a metrics section
    (:func:`_metrics_json`), an ``arrays_{val,test}.json`` without plot arrays (:func:`_arrays_json`), a
    ``checkpoint.pt`` / ``best.pt`` that is not an mtpp checkpoint (:func:`_checkpoint_file`), a ``train.log``
    whose first line is not a command's ``--- `` line (``mtpp.training.logging.console_log``). Starting a run
    there (``--overwrite`` included) would replace them."""
    import yaml

    out = []
    cfg = out_dir / CONFIG_FILE
    if cfg.is_file():
        try:
            raw = yaml.safe_load(cfg.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            raw = None
        if not (isinstance(raw, dict) and isinstance(raw.get("run_info"), dict)):
            out.append(CONFIG_FILE)
    log = out_dir / "log.jsonl"
    if log.is_file() and log.stat().st_size:
        with log.open("rb") as f:
            first = f.readline(1 << 16)
        try:
            ok = isinstance(json.loads(first), dict) and "kind" in json.loads(first)
        except ValueError:
            ok = first.strip() == b""
        if not ok:
            out.append("log.jsonl")
    for name, ours in ((METRICS_FILE, _metrics_json), ("arrays_val.json", _arrays_json),
                       ("arrays_test.json", _arrays_json)):  # fmt: skip
        path = out_dir / name
        if path.is_file():
            try:
                ok = ours(json.loads(path.read_text(encoding="utf-8")))
            except (ValueError, UnicodeDecodeError):
                ok = False
            if not ok:
                out.append(name)
    out += [name for name in (checkpoint.CHECKPOINT, checkpoint.BEST, checkpoint.INITIAL)
            if (out_dir / name).is_file() and not _checkpoint_file(out_dir / name)]  # fmt: skip
    train_log = out_dir / TRAIN_LOG
    if train_log.is_file() and train_log.stat().st_size:
        with train_log.open("rb") as f:
            if not f.readline(1 << 16).startswith(b"--- "):  # each command's copy starts with its "--- " line
                out.append(TRAIN_LOG)
    return out


def _metrics_json(obj: object) -> bool:
    """A run's ``metrics.json``: a JSON object with at least one section (``train``, ``val``, ``test``,
    ``train_eval``) that is itself an object, as the trainer and ``mtpp evaluate`` write it."""
    return isinstance(obj, dict) and any(isinstance(obj.get(k), dict) for k in ("train", "val", "test", "train_eval"))


def _arrays_json(obj: object) -> bool:
    """A run's ``arrays_<split>.json``: the plot arrays (``pit_*``, ``reliability_*`` keys) of
    :meth:`mtpp.evaluation.metrics.MetricAccumulator.arrays`."""
    return isinstance(obj, dict) and any(str(k).startswith(("pit_", "reliability_")) for k in obj)


def _checkpoint_file(path: Path) -> bool:
    """A checkpoint mtpp wrote (``checkpoint.pt`` / ``best.pt``): a torch file holding a mapping with ``model``
    (read memory-mapped, without loading the tensors' data)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch zip file, or not loadable as weights: not a checkpoint of ours
        return False
    return isinstance(state, dict) and "model" in state


def _stored_run_info(path: Path) -> dict:
    """``run_info`` of a run's stored ``config.yaml`` (``{}`` when it has none)."""
    import yaml

    info = (yaml.safe_load(path.read_text()) or {}).get("run_info") if path.is_file() else None
    return dict(info) if isinstance(info, dict) else {}


def _read_stored_config(path: Path) -> dict | None:
    import yaml

    if not path.is_file():
        return None
    raw = yaml.safe_load(path.read_text()) or {}
    raw.pop("run_info", None)
    return raw


def _check_resumable(cfg: RunConfig, stored: dict | None) -> None:
    """The model and data sections (and the seed) must match the run being resumed."""
    if stored is None:
        return
    old = config_from_dict(stored).to_dict()
    new = cfg.to_dict()
    for section in ("model", "data"):
        diff = [k for k in new[section] if old[section].get(k) != new[section][k]]
        if diff:
            keys = ", ".join(f"{section}.{k}" for k in diff)
            verb = "differs" if len(diff) == 1 else "differ"
            raise ConfigError(f"--resume: {keys} {verb} from the stored config.yaml; the checkpoint cannot be reused")
    if old["train"]["seed"] != new["train"]["seed"]:
        raise ConfigError("--resume: train.seed differs from the stored config.yaml")
    # the checkpoint's optimiser, scheduler, early-stopping and aggregator states belong to these settings
    fixed = [f"train.{k}" for k in RESUME_FIXED_TRAIN if old["train"].get(k) != new["train"].get(k)]
    fixed += [f"gradients.{k}" for k in ("aggregator", "options") if old["gradients"].get(k) != new["gradients"].get(k)]
    if old["train"]["lr_schedule"] != "none" and old["train"]["lr"] != new["train"]["lr"]:
        fixed.append("train.lr (with train.lr_schedule: the schedule's state holds the old rate)")
    if fixed:
        changes = "; ".join(f"{k}: {_dotted(old, k)!r} -> {_dotted(new, k)!r}" if "(" not in k else k for k in fixed)
        raise ConfigError(f"--resume: {changes} {'differs' if len(fixed) == 1 else 'differ'} from the stored "
                          "config.yaml; the checkpoint's state cannot "
                          "follow them (start a new run with another --out)")


def _check_resumed_time_scale(resolved: float, trained: float, spec: object, out_dir: Path) -> None:
    """A checkpoint trained in another unit of time than ``data.time_scale`` resolves to now (the rule for
    ``auto`` changed, ``mtpp.models.scaling``) is refused: its weights and optimiser moments belong to the old
    unit, so continuing it would finish a run in a scale that its config no longer gives (``MtppError``)."""
    if same_time_scale(resolved, trained):
        return
    raise MtppError(f"--resume: {Path(out_dir) / checkpoint.CHECKPOINT} was trained in model units of {trained:.6g} "
                    f"data units, but data.time_scale={spec} resolves to {resolved:.6g} now (the rule changed since, "
                    "mtpp.models.scaling); its weights belong to the old unit: start the run afresh with another "
                    "--out (or --overwrite)")


#: Training settings whose state lives in the checkpoint (optimiser moments, schedule, early-stopping groups):
#: a resumed run cannot change them. ``train.lr`` and ``train.weight_decay`` can change (without a schedule):
#: the restored optimiser takes the new values.
RESUME_FIXED_TRAIN = ("optimizer", "lr_schedule", "separate_early_stopping", "select_time_on")


def _dotted(d: dict, key: str) -> Any:
    section, name = key.split(".", 1)
    return (d.get(section) or {}).get(name)


#: Run-time options: how this command shows its progress, not what the run is. Never stored in config.yaml, so
#: a later ``--resume`` (which reads it) follows its own command line (``-q`` of the first command stays there).
RUNTIME_KEYS = (("logging", "quiet"), ("logging", "progress"))


ENVIRONMENT_KEYS = ("mtpp_version", "git_revision", "torch_version", "numpy_version", "python_version",
                    "cpu_capability", "device", "device_name", "world_size", "threads")
"""The keys of ``run_info`` that say what computed a run besides its configuration: the code (version, git
revision), the numerical libraries (torch's kernels; numpy's generators shuffle the batches), the CPU's vector
instruction set that torch dispatches to (AVX2 and AVX-512 kernels round differently), the device and its model
name (``device_name``: what a run's timings were measured on), the number of processes and of threads. A ``--resume`` that finds any of them changed records the change
(``run_info.resumed``)."""


def device_name(device: torch.device | str) -> str:
    """The model name of the hardware a run computes on: the GPU's (``torch.cuda.get_device_name``) for a CUDA
    device, else the CPU's (``model name`` in ``/proc/cpuinfo`` on Linux, ``machdep.cpu.brand_string`` on macOS),
    falling back to ``platform.processor()`` or the architecture (``"x86_64"``) where neither is readable. Virtual
    machines may report a shortened name (``"AMD EPYC"``): it is what the machine says, not looked up."""
    import platform

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5, check=False).stdout.strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def run_environment(device: torch.device | str, world_size: int = 1) -> dict[str, Any]:
    """``ENVIRONMENT_KEYS`` of this process: ``{"mtpp_version": "0.1.0", "git_revision": "a230e85ae1ce", ...}``."""
    import platform

    import numpy as np

    return {
        "mtpp_version": mtpp.__version__,
        "git_revision": git_revision(),
        "torch_version": str(torch.__version__),
        "numpy_version": str(np.__version__),
        "python_version": platform.python_version(),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "device": str(device),
        "device_name": device_name(device),
        "world_size": int(world_size),
        "threads": torch.get_num_threads(),
    }


def environment_changes(stored: dict | None, env: dict[str, Any]) -> dict[str, list]:
    """``{key: [old, new]}`` for each ``ENVIRONMENT_KEYS`` entry of a run's stored ``run_info`` that ``env`` (this
    process's ``run_environment``) changes; a key the stored record lacks (a run written before it existed) is not
    a change."""
    stored = stored or {}
    return {k: [stored[k], env[k]] for k in ENVIRONMENT_KEYS if k in stored and k in env and stored[k] != env[k]}


def _write_config(
    path: Path, cfg: RunConfig, device: torch.device, world_size: int = 1, data: dict | None = None,
    time_scale: float | None = None, resumed: list | None = None, *, env: dict[str, Any] | None = None,
    initial_weights: str | None = None,
) -> None:  # fmt: skip
    """``config.yaml``: the resolved configuration (run-time options left out) and ``run_info``: the environment
    (``env``, else this process's ``run_environment``), seed, time scale, data record, ``initial_weights`` (where the
    weights before the first step came from: ``train.seed``, or ``initial.pt`` for a model passed to ``fit(model,
    data)``) and what each ``--resume`` changed (``resumed``, ``RESUMED_KEY``)."""
    record = data
    data = cfg.to_dict()
    data.pop("variants", None)
    for section, key in RUNTIME_KEYS:
        data.get(section, {}).pop(key, None)
    env = env if env is not None else run_environment(device, world_size)
    data["run_info"] = {
        **{k: env[k] for k in ("mtpp_version", "git_revision", "torch_version", "numpy_version", "python_version",
                               "cpu_capability")},
        "seed": cfg.train.seed,
        **({"initial_weights": initial_weights} if initial_weights is not None else {}),
        "device": env["device"],
        **({"device_name": env["device_name"]} if "device_name" in env else {}),
        "world_size": env["world_size"],
        "time_scale": time_scale,  # data units per model unit (data.time_scale resolved)
        "threads": env["threads"],
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"data": record} if record is not None else {}),
        **({RESUMED_KEY: resumed} if resumed else {}),  # settings and environment changed by --resume, with the epoch
    }
    write_text(path, dump_yaml(data))


def git_revision() -> str | None:
    """The short git revision of the mtpp checkout (``-dirty`` with uncommitted changes to tracked files), or
    ``None`` outside a git checkout."""
    root = Path(mtpp.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)  # fmt: skip
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved configuration of a finished or interrupted run."""
    return load_config(Path(run_dir) / CONFIG_FILE)


__all__ = ["fit", "run_variants", "comparison_table", "Trainer", "load_run_config"]
