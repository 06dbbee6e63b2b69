"""Data-parallel training over ranks started by ``torchrun`` (one process per GPU, or per CPU worker with gloo).

    torchrun --nproc_per_node=4 -m mtpp train CONFIG --out DIR                       # one machine, 4 GPUs
    torchrun --nnodes=2 --node_rank=R --nproc_per_node=8 \\
        --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 --rdzv_id=RUN -m mtpp train CONFIG --out DIR

``session()`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), initialises the default
process group (``nccl`` when the run's device is CUDA, ``gloo`` on CPU), pins each process to ``cuda:LOCAL_RANK``
and destroys the group at the end. Without those variables (or ``WORLD_SIZE=1``) it yields a single-process
``Dist`` whose collectives are no-ops, so the trainer has one code path.

**No ``DistributedDataParallel`` wrapper: explicit all-reduce through ``backward_step(reduce=...)``.** The trainer's
step takes per-task gradients with ``torch.autograd.grad`` (for ``cos_tm`` and the aggregators), and
``autograd.grad`` does not fire DDP's bucket hooks; a DDP wrapper would therefore need ``no_sync()`` on every step
plus a manual reduction anyway, and two different paths (``.backward()`` with hooks on plain steps, manual
reduction on diagnostic steps) would make the diagnostics measure something else than the applied update. Instead
every step hands ``Dist.reduce_mean`` to ``backward_step``: the flat per-task gradient vectors ``g_T`` and ``g_M``
(over all trainable parameters; on the plain ``sum`` path the flat ``.grad``) are all-reduced and divided by the
world size *before* statistics and aggregation. Consequences:

* ``cos_tm`` (and ``gms``, the norms, every aggregator's input) is computed on the all-reduced per-task gradients,
  i.e. on the gradients of the **global** batch -- the same numbers a single process with the global batch would
  log, not an average of per-rank cosines.
* Stateful aggregators see identical inputs on every rank, so their states (and the replicas) stay identical.
* Cost: one all-reduce of ``P`` floats per step on plain steps (as DDP), two (``g_T`` and ``g_M``) on steps that
  need per-task gradients; no overlap with the backward pass (DDP's bucketing overlap is given up). For the model
  sizes of this toolkit (10^4-10^6 parameters) the all-reduce is small next to the forward/backward.

**Batches.** The training loader is ``mtpp.data.sampler.make_loader(..., num_replicas=world, rank=rank)``: its
``ShardedBucketSampler`` builds exactly the batches a single process would build with the global batch size
``world x train.batch_size`` (same seed, same length bucketing) and gives rank ``r`` the ``r``-th contiguous slice
of each, so every rank takes the same number of steps and the union of the ranks' step-``k`` batches is the
single-process step-``k`` batch. **Loss normalisation**: rank ``r`` scales its batch-mean losses by
``world * n_r / N`` (``n_r`` its sequences, ``N`` the global batch's; ``loss_scales()`` of that sampler), so the
mean over ranks of the scaled losses -- and of their gradients -- is exactly the global batch mean, also for the
last, smaller global batch whose slices are unequal. A global batch with fewer sequences than ranks gives the
ranks without a sequence a copy of one with weight 0 (they contribute nothing).

**Randomness.** Every rank seeds with ``train.seed`` before building the model (identical initialisation; the
parameters and buffers are also broadcast from rank 0), then ranks ``r > 0`` reseed with ``(seed, r)`` so the
Monte Carlo integration nodes and dropout masks differ across ranks (rank 0 keeps the single-process stream).
Checkpoints store every rank's generator states, so a resumed run continues every rank's stream.

**Evaluation.** Validation and the final val/test metrics are computed on disjoint shards
(``sequences[r::world]``) and summed across ranks (``MetricAccumulator.all_reduce``); every rank gets the same
reduced numbers, so early stopping, LR schedules and the non-finite guard (whose finite flag is all-reduced with
MIN) decide identically everywhere.

**Files.** Only rank 0 writes (``config.yaml``, ``log.jsonl``, checkpoints, metrics) and shows progress. Setup
that reads the run directory (``--resume``, refusing to overwrite) runs on rank 0 and its outcome -- the
checkpoint, or the error -- is broadcast, so ranks on other machines need not see rank 0's file system.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtpp.errors import ConfigError, MtppError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass
class Dist:
    """This process's place in the data-parallel job; ``world == 1``: every collective is a no-op."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ tensors (no host sync)

    def reduce_mean(self, flat: Tensor) -> Tensor:
        """All-reduce mean of a flat tensor (the ``reduce`` of ``backward_step``); identity for one process."""
        if not self.enabled:
            return flat
        out = flat.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.div_(self.world)

    def sum_(self, t: Tensor) -> Tensor:
        """In-place all-reduce sum (returns ``t``)."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_true(self, flag: Tensor) -> Tensor:
        """A 0-dim bool that is true on every rank iff ``flag`` is true on every rank."""
        if not self.enabled:
            return flag
        v = flag.to(torch.int32).reshape(1)
        dist.all_reduce(v, op=dist.ReduceOp.MIN)
        return v[0].bool()

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's ``module``."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    # ------------------------------------------------------------------ host objects

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather_objects(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only and return its result on every rank; if it raised, raise on every rank.

        ``MtppError`` / ``ConfigError`` keep their type and message; other exceptions become ``MtppError`` on the
        other ranks (and are re-raised unchanged on rank 0).
        """
        if not self.enabled:
            return fn()
        box: list[Any] = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as e:  # noqa: BLE001 -- sent to the other ranks, re-raised below
                error = e
                kind = type(e).__name__ if isinstance(e, (MtppError, ConfigError)) else "MtppError"
                box[0] = ("error", kind, str(e))
        dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        if box[0][0] == "error":
            _, kind, msg = box[0]
            raise (ConfigError if kind == "ConfigError" else MtppError)(msg)
        return box[0][1]


SINGLE = Dist()


def env_world() -> tuple[int, int, int] | None:
    """``(world, rank, local_rank)`` from torchrun's environment, or ``None`` outside torchrun."""
    if not all(k in os.environ for k in ENV_KEYS):
        return None
    world, rank, local = (int(os.environ[k]) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    return world, rank, local


def rank_device(name: str, local_rank: int) -> str:
    """The device of one rank: ``auto`` / ``cuda`` / ``cuda:N`` -> ``cuda:LOCAL_RANK`` (when CUDA exists)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {name!r} requested but CUDA is not available; valid here: auto, cpu")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) on this machine; "
                "use --nproc_per_node <= the number of GPUs"
            )
        return f"cuda:{local_rank}"
    return name


_ACTIVE: Dist | None = None


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[Dist]:
    """The data-parallel context of this process (see the module doc); nested sessions reuse the outer one.

    Initialises the default process group from torchrun's environment when ``WORLD_SIZE > 1`` and no group exists
    yet, and destroys it on exit (only if this session created it).
    """
    global _ACTIVE
    if _ACTIVE is not None:
        yield _ACTIVE
        return
    env = env_world()
    if env is None or env[0] <= 1:
        yield SINGLE
        return
    world, rank, local = env
    created = False
    if not dist.is_initialized():
        dev = rank_device(device, local)
        backend = "nccl" if dev.startswith("cuda") else "gloo"
        if dev.startswith("cuda"):
            torch.cuda.set_device(torch.device(dev))
        # torch._dynamo, imported lazily by the first optimiser, keeps ~10 references to a default group that
        # exists when it is imported: destroy_process_group then cannot free the gloo group, its worker threads
        # live into interpreter shutdown and, finishing a collective there, abort the process (SIGABRT after a
        # complete run, a few percent of runs on a loaded machine). Imported first, it holds none.
        import torch._dynamo  # noqa: F401
        dist.init_process_group(backend=backend, device_id=torch.device(dev) if backend == "nccl" else None)
        created = True
    ctx = Dist(world=dist.get_world_size(), rank=dist.get_rank(), local_rank=local, backend=dist.get_backend())
    _ACTIVE = ctx
    try:
        yield ctx
    finally:
        _ACTIVE = None
        if created and dist.is_initialized():
            gc.collect()  # the run's garbage goes while the interpreter (and the group) is fully alive
            dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The generator seed of rank ``rank > 0`` (rank 0 keeps ``seed``: its stream is the single-process one)."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def shard(sequences: Sequence[Any], ctx: Dist) -> list[Any]:
    """This rank's evaluation shard ``sequences[rank::world]`` (disjoint, covering)."""
    return list(sequences)[ctx.rank :: ctx.world]


@torch.no_grad()
def evaluate_sharded(
    model: nn.Module,
    sequences: Sequence[Any],
    ctx: Dist,
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
    time_quantum: float | None = None,
    max_events: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``evaluate_model`` over the ranks: each scores its shard, the accumulators are summed across ranks
    (``max_events``: padded events per batch, ``mtpp.data.sampler.cut_batches``)."""
    from mtpp.data.sampler import make_loader
    from mtpp.evaluation.metrics import MetricAccumulator
    from mtpp.models.mtpp import evaluation_seed

    if len(sequences) == 0:
        raise MtppError("cannot evaluate on an empty split")
    part = shard(sequences, ctx)
    acc = MetricAccumulator()
    was_training = model.training
    model.eval()
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        # Monte Carlo nodes keyed by ``seed`` on every rank (not the rank's seed): a sequence gets the numbers of
        # the single-process evaluation whichever rank scores it
        with torch.random.fork_rng(devices=cuda), evaluation_seed(model, seed):
            torch.manual_seed(rank_seed(seed, ctx.rank))
            if part:
                loader = make_loader(part, batch_size, shuffle=False, dtype=dtype, device_type=device.type,
                                     max_events=max_events)
                for batch in loader:
                    batch = batch.to(device, non_blocking=True)
                    acc.update(model.score(batch, time_quantum=time_quantum), batch)
    finally:
        model.train(was_training)
    acc.all_reduce(device)
    metrics = acc.compute()
    if time_quantum is not None:
        metrics["time_quantum"] = float(time_quantum)
    return metrics, acc.arrays()


__all__ = [
    "Dist", "SINGLE", "session", "env_world", "rank_device", "rank_seed", "shard", "evaluate_sharded",
]  # fmt: skip
