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

Devices and data parallelism: the same code runs on CPU and CUDA (bf16 autocast for the forward pass with
``train.amp`` on CUDA, float32 likelihood terms and losses; pinned host batches moved with
``non_blocking=True``), and under ``torchrun`` on several processes (``mtpp.training.distributed``: explicit
all-reduce of the per-task gradients through ``backward_step(reduce=...)``, rank 0 writes the run directory).
``train_step`` is the one training step, shared with ``mtpp bench`` (which builds a ``Stepper``).
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import mtpp
from mtpp.config import RunConfig, config_from_dict, dump_yaml, load_config, variant_configs
from mtpp.errors import ConfigError, MtppError
from mtpp.evaluation.evaluate import (
    METRICS_FILE,
    evaluate_model,
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
from mtpp.training.logging import Progress, RunLogger, echo, truncate_log
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
    unique_parameters,
)

CONFIG_FILE = "config.yaml"
RUN_FILES = (CONFIG_FILE, "log.jsonl", checkpoint.CHECKPOINT, checkpoint.BEST, METRICS_FILE)


@dataclass
class Counters:
    """Host-side run counters (checkpointed). ``conflicts[key] = [steps with cos < 0, steps with cos defined]``."""

    step: int = 0
    events: int = 0
    train_seconds: float = 0.0
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
) -> dict[str, Any]:
    """Train ``config`` into ``out_dir`` and return the final metrics (``metrics.json``'s content).

    ``resume``: continue from ``out_dir/checkpoint.pt`` (the model and data sections must match the stored
    ``config.yaml``; training settings such as ``train.max_epochs`` may change). Without ``resume``, a folder
    that already holds a run is an error unless ``overwrite``.
    """
    if config.variants:
        raise ConfigError("variants: fit() trains one configuration; use run_variants() (mtpp train does)")
    with distributed.session(config.train.device) as ddp:
        with determinism(config.train.deterministic), compile_settings(config.train.compile):
            trainer = Trainer(config, Path(out_dir), resume=resume, data_dir=data_dir, overwrite=overwrite, dist=ddp)
            try:
                return trainer.run()
            finally:
                trainer.close()


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
    side-by-side table (unless ``logging.quiet``). With ``resume``, finished variants are kept and unfinished ones
    continue from their checkpoints.
    """
    with distributed.session(config.train.device) as ddp:
        return _run_variants(config, variants, Path(out_dir), ddp, resume, data_dir, overwrite)


def _run_variants(
    config: RunConfig, variants: list[dict] | None, out_dir: Path, ddp: Dist, resume: bool, data_dir: str | None,
    overwrite: bool,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    configs = variant_configs(config, variants)
    results: dict[str, dict[str, Any]] = {}
    for i, (name, cfg) in enumerate(configs.items(), 1):
        run_dir = out_dir / name
        quiet = cfg.logging.quiet or not ddp.is_main
        echo(f"[{i}/{len(configs)}] variant {name} -> {run_dir}", quiet)

        def look(run_dir: Path = run_dir) -> tuple[dict | None, bool]:  # rank 0's view of the folder
            done = json.loads((run_dir / METRICS_FILE).read_text()) if resume and _finished(run_dir) else None
            return done, (run_dir / checkpoint.CHECKPOINT).exists()

        done, has_ckpt = ddp.on_main(look)
        if done is not None:
            echo(f"  {name} already finished; keeping its metrics.json", quiet)
            results[name] = done
            continue
        results[name] = fit(cfg, run_dir, resume=resume and has_ckpt, data_dir=data_dir, overwrite=overwrite)
    table = comparison_table(results)
    if ddp.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "comparison.json", results)
        (out_dir / "comparison.md").write_text(table + "\n", encoding="utf-8")
        if not config.logging.quiet:
            print(table)
    return results


COLUMNS = (
    ("L_T/seq", "test", "nll_time_per_seq"),
    ("L_M/seq", "test", "nll_mark_per_seq"),
    ("accuracy", "test", "accuracy"),
    ("PCE", "test", "pce"),
    ("ECE", "test", "ece"),
    ("conflict", "train", "conflict_rate"),
    ("events/s", "train", "train_events_per_second"),
    ("best ep.", "train", "best_epoch"),
    ("params", "train", "num_parameters"),
)


def comparison_table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table, one row per run: test NLL per sequence, accuracy, calibration, conflict rate, speed."""
    header = "| run | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, m in results.items():
        cells = [fmt_value(m.get(split, {}).get(key)) for _, split, key in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("(test split; NLL per sequence, lower is better; conflict = share of steps with cos_tm < 0)")
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
        self.amp = cfg.train.amp and device.type == "cuda"
        self.model = build_run_model(cfg, num_marks, device)
        self._nll = torch.compile(self.model.nll, dynamic=True) if cfg.train.compile else self.model.nll
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
    ) -> None:
        out_dir = Path(out_dir)
        self.cfg = cfg
        self.out = out_dir
        self.dist = dist
        self.main = dist.is_main
        self.quiet = cfg.logging.quiet or not self.main
        device = distributed.rank_device(cfg.train.device, dist.local_rank) if dist.enabled else cfg.train.device
        self.device = resolve_device(device)
        self.amp = amp_enabled(cfg.train, self.device)
        self.dtype = DTYPES[cfg.data.dtype]
        # rank 0 reads / prepares the run directory; its checkpoint (or its error) reaches every rank
        where = "cpu" if dist.enabled else self.device
        state = dist.on_main(lambda: _setup_out_dir(cfg, out_dir, resume, overwrite, where))
        checkpoint.seed_everything(cfg.train.seed)
        self.data = _load_data_rank0_first(cfg, data_dir, dist)
        self.model = build_run_model(cfg, self.data.num_marks, self.device)
        dist.broadcast_module(self.model)  # identical replicas (the same seed gives them anyway on CPU)
        if dist.rank > 0:  # Monte Carlo nodes / dropout differ across ranks; rank 0 keeps the single-process stream
            checkpoint.seed_everything(distributed.rank_seed(cfg.train.seed, dist.rank))
        self._nll = torch.compile(self.model.nll, dynamic=True) if cfg.train.compile else self.model.nll
        self.optimizer = make_optimizer(cfg.train, self.model, self.device)
        self.scheduler = make_scheduler(cfg.train, self.optimizer)
        self.aggregator = _make_aggregator(cfg)
        self.guard = NonFiniteGuard(self.optimizer, self.aggregator, cfg.train.max_consecutive_skips, self.device)
        self.early = self._make_early_stopping()
        self.counters = Counters()
        self.epoch = 0  # last finished epoch
        self.loader = self._make_loader()
        if resume:
            self._restore(state)
            if self.main:
                truncate_log(out_dir, self.epoch)
        from mtpp.training.gradients import StatsBuffer

        self.records = StatsBuffer()
        self.logger: RunLogger | _NoLogger = _NoLogger()
        if self.main:
            _write_config(out_dir / CONFIG_FILE, cfg, self.device, dist.world)
            self.logger = RunLogger(out_dir, tensorboard=cfg.logging.tensorboard)
        self.progress = Progress(cfg.logging.progress and not self.quiet)

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
        )

    # ------------------------------------------------------------------ main loop

    def run(self) -> dict[str, Any]:
        t = self.cfg.train
        if self.epoch:
            echo(f"resuming {self.out} after epoch {self.epoch} (step {self.counters.step})", self.quiet)
        while self.epoch < t.max_epochs and not self.early.done:
            epoch = self.epoch + 1
            seconds = self._train_epoch(epoch)
            val = self._validate()
            self._end_epoch(epoch, seconds, val)
        return self._finish()

    def _train_epoch(self, epoch: int) -> float:
        self.model.train()
        self.loader.batch_sampler.set_epoch(epoch)
        # under DDP: this rank's share of the global batch mean, per step (module doc of distributed.py)
        scales = self.loader.batch_sampler.loss_scales() if self.dist.enabled else None
        self.progress.start_epoch(epoch, len(self.loader), f"epoch {epoch}/{self.cfg.train.max_epochs}")
        start = last = time.perf_counter()
        pending_events = pending_steps = 0
        for i, batch in enumerate(self.loader):
            scale = None if scales is None else scales[i]
            # a CPU tensor: no device sync; events of every rank (the ranks' batches are equal in size up to one)
            n_events = int(batch.lengths.sum()) * self.dist.world if scale != 0.0 else 0
            self._train_step(epoch, batch, scale)
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
        self.logger.write_many(({"kind": "step", **r} for r in records), prefix="train")
        if steps:
            last = records[-1] if records else {}
            rate = events / (now - since) if now > since else None
            self.progress.update(
                steps,
                {
                    "L_T": last.get("loss_time"),
                    "L_M": last.get("loss_mark"),
                    "cos": last.get("cos_tm"),
                    "ev/s": None if rate is None else round(rate),
                },
            )
        self.guard.check_limit()
        return now

    # ------------------------------------------------------------------ validation and epoch end

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        from mtpp.data.sampler import make_loader

        self.model.eval()
        t = self.cfg.train
        part = distributed.shard(self.data.val, self.dist)  # all of it in one process
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # L_T, L_M, scored events
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(distributed.rank_seed(t.seed, self.dist.rank))
            if part:
                loader = make_loader(
                    part, t.eval_batch_size or 4 * t.batch_size, shuffle=False, dtype=self.dtype,
                    device_type=self.device.type,
                )  # fmt: skip
                for batch in loader:
                    batch = batch.to(self.device, non_blocking=True)
                    with autocast(self.amp, self.device):
                        out = self.model.nll(batch)
                    sums += torch.stack([out.time_nll.sum(), out.mark_nll.sum(), out.scored.sum()]).double()
        lt, lm, ev = self.dist.sum_(sums).tolist()  # every rank: the same totals, the same decisions
        n = len(self.data.val)
        return {
            "val_nll_time_per_seq": lt / n,
            "val_nll_mark_per_seq": lm / n,
            "val_nll_per_seq": (lt + lm) / n,
            "val_nll_per_event": (lt + lm) / ev if ev else math.nan,
        }

    def _end_epoch(self, epoch: int, seconds: float, val: dict[str, float]) -> None:
        improved, frozen = self.early.step(epoch, val["val_nll_time_per_seq"], val["val_nll_mark_per_seq"], self.model)
        for group in frozen:
            self._freeze(group)
        self._step_scheduler(val["val_nll_per_seq"])
        self.epoch = epoch
        if improved:
            self._save_best()
        state = self._checkpoint_state()  # a collective under DDP (every rank's generator states)
        if self.main:
            checkpoint.save_atomic(state, self.out / checkpoint.CHECKPOINT)
        guard = self.guard.state_dict()
        record = {
            "kind": "epoch", "epoch": epoch, "step": self.counters.step, **val, "epoch_seconds": seconds,
            "train_events_per_second": self.counters.events_per_second, "lr": self.optimizer.param_groups[0]["lr"],
            "skipped_batches": guard["skipped"], "best_epoch": self.early.best_epoch, "improved": improved,
            "frozen": self.early.done_groups() if self.early.separate else [],
        }  # fmt: skip
        self.logger.write(record, prefix="val")
        self.logger.flush()
        mark = "*" if improved else " "
        echo(
            f"epoch {epoch:>3} {mark} val L_T {val['val_nll_time_per_seq']:.3f}  L_M {val['val_nll_mark_per_seq']:.3f}"
            f"  ({seconds:.1f}s)" + (f"  frozen: {', '.join(frozen)}" if frozen else ""),
            self.quiet,
        )

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
        }
        checkpoint.save_atomic(state, self.out / checkpoint.BEST)

    def _checkpoint_state(self) -> dict[str, Any]:
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
            "version": mtpp.__version__,
            **({"rng_ranks": rng_ranks, "world_size": self.dist.world} if rng_ranks is not None else {}),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.early.load_state_dict(state["early_stopping"], self.device)
        for group in self.early.done_groups() if self.early.separate else []:
            self._freeze(group)
        self.optimizer.load_state_dict(state["optimizer"])
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
            kwargs = dict(batch_size=t.eval_batch_size or 4 * t.batch_size, device=self.device, dtype=self.dtype)
            if self.dist.enabled:
                m, arrays = distributed.evaluate_sharded(
                    self.model, self.data.split(split), self.dist, seed=t.seed, **kwargs
                )
            else:
                m, arrays = evaluate_model(self.model, self.data.split(split), seed=t.seed, **kwargs)
            m["first_event"] = self.cfg.model.first_event
            metrics[split] = with_run_fields(m, summary)
            if self.main:
                write_json(self.out / f"arrays_{split}.json", arrays)
        metrics["train"] = summary
        if self.main:
            write_json(self.out / METRICS_FILE, metrics)
        metrics = json.loads(json.dumps(json_safe(metrics)))  # NaN -> None, as on disk
        if not self.quiet:
            print(final_summary(self.out, metrics))
        self.dist.barrier()  # the run directory is complete before any rank returns
        return metrics

    def _train_summary(self) -> dict[str, Any]:
        guard = self.guard.state_dict()
        summary: dict[str, Any] = {
            **self.counters.conflict_rates(),
            "train_events_per_second": self.counters.events_per_second,
            "skipped_batches": guard["skipped"],
            "epochs": self.epoch,
            "steps": self.counters.step,
            "train_seconds": self.counters.train_seconds,
            "best_epoch": self.early.best_epoch,
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


Stepper._backward = Trainer._backward  # type: ignore[attr-defined]  # one backward path for trainer and bench


def final_summary(out_dir: Path, metrics: dict[str, Any]) -> str:
    tr, val, test = metrics["train"], metrics["val"], metrics["test"]
    lines = [
        f"run {out_dir}: best epoch {tr['best_epoch']} of {tr['epochs']}, {tr['num_parameters']} parameters",
        f"  val   L_T/seq {fmt_value(val.get('nll_time_per_seq'))}  L_M/seq {fmt_value(val.get('nll_mark_per_seq'))}"
        f"  accuracy {fmt_value(val.get('accuracy'))}",
        f"  test  L_T/seq {fmt_value(test.get('nll_time_per_seq'))}  L_M/seq {fmt_value(test.get('nll_mark_per_seq'))}"
        f"  accuracy {fmt_value(test.get('accuracy'))}  PCE {fmt_value(test.get('pce'))}  ECE {fmt_value(test.get('ece'))}",
        f"  conflict rate {fmt_value(tr.get('conflict_rate'))}  train {fmt_value(tr.get('train_events_per_second'))} events/s"
        f"  skipped batches {tr.get('skipped_batches', 0)}",
    ]
    return "\n".join(lines)


# ================================================================================================ helpers


def _make_aggregator(cfg: RunConfig) -> Any:
    from mtpp.training.aggregators import make_aggregator

    return make_aggregator(cfg.gradients.aggregator, **cfg.gradients.options)


class _NoLogger:
    """The logger of ranks other than 0: they write nothing."""

    def write(self, record: dict[str, Any], prefix: str = "train") -> None: ...

    def write_many(self, records: Any, prefix: str = "train") -> None:
        for _ in records:
            pass

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _setup_out_dir(
    cfg: RunConfig, out_dir: Path, resume: bool, overwrite: bool, map_location: Any
) -> dict[str, Any] | None:
    """Prepare ``out_dir`` (rank 0); with ``resume`` check the stored config and return the checkpoint."""
    stored = _prepare_out_dir(out_dir, resume, overwrite)
    if not resume:
        return None
    _check_resumable(cfg, stored)
    return checkpoint.load(out_dir / checkpoint.CHECKPOINT, map_location=map_location)


def _load_data_rank0_first(cfg: RunConfig, data_dir: str | None, ddp: Dist) -> Any:
    """Rank 0 loads (and, on first use, prepares) the data before the other ranks read it."""
    box: dict[str, Any] = {}

    def load() -> None:
        box["data"] = load_data(cfg.data, data_dir)

    ddp.on_main(load)
    return box["data"] if ddp.is_main else load_data(cfg.data, data_dir)


def _prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> dict | None:
    """Create ``out_dir``; refuse to clobber a run unless ``overwrite``; return the stored config on resume."""
    if resume:
        if not (out_dir / checkpoint.CHECKPOINT).is_file():
            raise MtppError(f"{out_dir}: nothing to resume (no {checkpoint.CHECKPOINT}); run without --resume")
        return _read_stored_config(out_dir / CONFIG_FILE)
    # config.yaml / log.jsonl alone are a run that died before its first checkpoint: nothing to lose
    existing = [f for f in (checkpoint.CHECKPOINT, checkpoint.BEST, METRICS_FILE) if (out_dir / f).exists()]
    if existing and not overwrite:
        raise MtppError(
            f"{out_dir} already holds a run ({', '.join(existing)}); pass --resume to continue it, "
            "--overwrite to start over, or choose another --out"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (*RUN_FILES, "arrays_val.json", "arrays_test.json"):
        (out_dir / name).unlink(missing_ok=True)
    return None


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
            raise ConfigError(f"--resume: {keys} differ from the stored config.yaml; the checkpoint cannot be reused")
    if old["train"]["seed"] != new["train"]["seed"]:
        raise ConfigError("--resume: train.seed differs from the stored config.yaml")


def _write_config(path: Path, cfg: RunConfig, device: torch.device, world_size: int = 1) -> None:
    data = cfg.to_dict()
    data.pop("variants", None)
    data["run_info"] = {
        "mtpp_version": mtpp.__version__,
        "git_revision": _git_revision(),
        "torch_version": str(torch.__version__),
        "seed": cfg.train.seed,
        "device": str(device),
        "world_size": world_size,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dump_yaml(data), encoding="utf-8")
    tmp.replace(path)


def _git_revision() -> str | None:
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
