"""Several models of one architecture as ONE vectorised ensemble: stacked parameters, ``vmap`` over members.

The members of a grid that differ only by split or seed have the same architecture; at the reference sizes a
training step of one of them is overhead-bound (hundreds of tiny kernels), so ``M`` members in one process cost
little more than one when every kernel runs once on ``[M, ...]`` tensors. This module is that step, tested
against separate models (``tests/test_stacked.py``) and timed by ``scripts/bench_ensemble.py``.

Status (issue 10 §4, measured, ``BENCHMARKS.md`` "Vectorised ensembles"): on MOOC at batch 8, 1 thread, five
members give 1.3-1.6x the events/s of one model for LNM / RMTPP / FNN and 0.7-0.95x for THP / SAHP (their
Monte Carlo node tensors ``[M, B, L, N, J]`` are memory-bound: stacking multiplies the working set, not the
overhead). Below the 2x that would justify it, so no training loop is built on it (no ``mtpp compare
--ensemble``); the pieces stay for a device where the stacked step pays (a GPU: one kernel launch per op for
all members).

- ``StackedMembers``: the parameters of ``M`` models as one flat leaf ``flat: [M, P]`` (column blocks in the
  order shared encoder, shared decoder, the rest, so every group is one slice), a parameter-free copy of the
  model on the ``meta`` device, and ``losses(batch)``: ``torch.func.functional_call`` of ``MarkedTPP.nll`` under
  ``torch.func.vmap`` over members (``randomness="different"``: each member draws its own Monte Carlo nodes).
  The fused CPU GRU / RNN (``mtpp.models.recurrence``) has a ``vmap`` rule: one time loop of batched matrix
  products for all members (``nn.GRU`` has no batching rule in torch 2.13).
- Time scales differ per member (per split): batches are divided by each member's scale before the vmapped call
  and each scored event's ``-log f`` gets ``+ log(scale)`` after it, as ``MarkedTPP.in_model_units`` does.
- ``stack_batches``: per-member batches padded to one ``StackedBatch`` ``[M, B, L]``; a member without a batch
  this step gets an empty one (no sequence) and a masked step.
- ``StackedAdam``: Adam (as ``torch.optim.Adam``, L2 ``weight_decay``) on ``[M, P]`` with a per-element step count
  and an update mask: where the mask is false, parameters AND optimiser state are left exactly as they were
  (skipped non-finite steps, members without a batch, stopped members, frozen "++" groups).
- ``member_conflict_stats``: ``cos_tm`` (all shared parameters, ``encoder``, ``decoder``), ``gms`` and both norms
  per member, the same definitions as ``mtpp.training.gradients.conflict_stats`` (NaN where undefined).

Losses per member are ``train_step``'s: the mean over the member's real sequences of the per-sequence ``L_T`` and
``L_M``. Gradients: with statistics, one backward per task (``autograd.grad`` of ``sum_m L_T^m`` and of
``sum_m L_M^m`` w.r.t. ``flat``: members are independent, so row ``m`` is member ``m``'s gradient), else one
backward of the sum. Only the ``sum`` aggregator (the plain sum on shared parameters) is supported.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from mtpp.data.batch import Batch

#: statistics per member and step, in this column order (``member_conflict_stats``)
MEMBER_STAT_KEYS: tuple[str, ...] = ("cos_tm", "cos_tm/encoder", "cos_tm/decoder", "gms", "norm_time", "norm_mark")


@dataclass
class StackedBatch:
    """Per-member batches padded to common sizes: every field of ``Batch`` with a leading member dimension
    (``times, taus, marks, mask: [M, B, L]``, ``lengths, window_end, survival_gap: [M, B]``); ``sequences: [M]``
    real sequences per member (0: no batch this step) and ``events: [M]`` real events per member (host ints)."""

    times: Tensor
    taus: Tensor
    marks: Tensor
    mask: Tensor
    lengths: Tensor
    window_end: Tensor
    survival_gap: Tensor
    sequences: list[int]
    events: list[int]

    @property
    def present(self) -> Tensor:
        """``[M]`` bool: the member has a batch this step."""
        return torch.tensor([n > 0 for n in self.sequences])


_BATCH_FIELDS = tuple(f.name for f in fields(Batch))


def stack_batches(batches: Sequence[Batch | None], dtype: torch.dtype) -> StackedBatch:
    """Pad ``M`` batches (``None``: no batch for that member) to ``[M, B_max, L_max]``.

    Padding rows are empty sequences (``lengths = 0``, ``mask`` false, zero gaps, no window): every term of theirs
    is exactly 0, and the per-member loss divides by the member's own number of sequences.
    """
    real = [b for b in batches if b is not None]
    if not real:
        raise ValueError("stack_batches: no member has a batch")
    size = max(b.batch_size for b in real)
    length = max(b.max_length for b in real)
    out: dict[str, list[Tensor]] = {k: [] for k in _BATCH_FIELDS}
    for b in batches:
        for k in _BATCH_FIELDS:
            if b is None:
                ref = getattr(real[0], k)
                shape = (size, length) if ref.dim() == 2 else (size,)
                out[k].append(torch.zeros(shape, dtype=ref.dtype))
                continue
            v = getattr(b, k)
            pad_rows = size - v.shape[0]
            if v.dim() == 2:
                v = torch.nn.functional.pad(v, (0, length - v.shape[1], 0, pad_rows))
            else:
                v = torch.nn.functional.pad(v, (0, pad_rows))
            out[k].append(v)
    stacked = {k: torch.stack(v) for k, v in out.items()}
    for k in ("times", "taus", "window_end", "survival_gap"):
        stacked[k] = stacked[k].to(dtype)
    return StackedBatch(
        **stacked,
        sequences=[0 if b is None else b.batch_size for b in batches],
        events=[0 if b is None else int(b.lengths.sum()) for b in batches],
    )


class StackedMembers:
    """``M`` models of one architecture (``MarkedTPP``) as one flat parameter tensor; see the module doc.

    Attributes: ``flat [M, P]`` (plain storage; ``forward`` differentiates w.r.t. fresh leaves that share it), ``names`` / ``shapes`` / ``sizes`` of the
    parameter blocks in column order, ``groups``: column ``slice`` of ``"shared"``, ``"encoder"``, ``"decoder"``
    (the shared groups of ``model.shared_parameters()``; empty slices for "++"), ``log_scales [M]``.
    """

    def __init__(self, models: Sequence[nn.Module], time_scales: Sequence[float]) -> None:
        if not models:
            raise ValueError("StackedMembers: no model")
        base = models[0]
        named = dict(base.named_parameters())
        ids = {id(p): n for n, p in named.items()}
        shared = base.shared_parameters()
        enc = [ids[id(p)] for p in shared.get("encoder", [])]
        dec = [ids[id(p)] for p in shared.get("decoder", [])]
        rest = [n for n in named if n not in set(enc) | set(dec)]
        self.names = [*enc, *dec, *rest]
        self.shapes = [tuple(named[n].shape) for n in self.names]
        self.sizes = [named[n].numel() for n in self.names]
        n_enc = sum(named[n].numel() for n in enc)
        n_dec = sum(named[n].numel() for n in dec)
        self.groups = {
            "shared": slice(0, n_enc + n_dec),
            "encoder": slice(0, n_enc),
            "decoder": slice(n_enc, n_enc + n_dec),
        }
        for m in models[1:]:
            if [tuple(p.shape) for p in (dict(m.named_parameters())[n] for n in self.names)] != self.shapes:
                raise ValueError("StackedMembers: the members differ in architecture")
        self.flat = torch.stack([self.row_of(m) for m in models])
        self.buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models]) for n, _ in base.named_buffers()}
        self.meta = copy.deepcopy(base).to("meta")
        self.meta.time_scale = 1.0  # batches arrive in model units (``losses``)
        # a shared encoder runs as its own vmapped stage: its histories are the boundary of one batched backward
        self.n_encoder = n_enc if getattr(self.meta, "encoder", None) is not None else 0
        self._histories = _Histories(self.meta.encoder) if self.n_encoder else None
        dtype = self.flat.dtype
        self.scales = torch.tensor([float(s) for s in time_scales], dtype=dtype)
        self.log_scales = self.scales.log()
        self.task_columns = self._task_columns(base, ids)

    @property
    def members(self) -> int:
        return self.flat.shape[0]

    def row_of(self, model: nn.Module) -> Tensor:
        """``[P]``: ``model``'s parameters in column order (a copy)."""
        named = dict(model.named_parameters())
        return torch.cat([named[n].detach().reshape(-1) for n in self.names])

    def load_row(self, member: int, model: nn.Module) -> None:
        """Copy ``model``'s parameters into row ``member`` of ``flat``."""
        with torch.no_grad():
            self.flat[member].copy_(self.row_of(model))

    def write_row(self, member: int, model: nn.Module) -> None:
        """Copy row ``member`` of ``flat`` into ``model``'s parameters."""
        named = dict(model.named_parameters())
        with torch.no_grad():
            for n, chunk, shape in zip(self.names, self.flat[member].split(self.sizes), self.shapes):
                named[n].copy_(chunk.view(shape))

    def _task_columns(self, base: nn.Module, ids: dict[int, str]) -> dict[str, Tensor]:
        """``{"time": [P] bool, "mark": [P] bool}``: the columns of ``model.task_parameters()`` (separate early
        stopping freezes them per member)."""
        out = {}
        for task, params in base.task_parameters().items():
            names = {ids[id(p)] for p in params}
            out[task] = torch.cat(
                [torch.full((s,), n in names, dtype=torch.bool) for n, s in zip(self.names, self.sizes)]
            )
        return out

    # ------------------------------------------------------------------ the vmapped likelihood

    def _params(self, row: Tensor, first: int) -> dict[str, Tensor]:
        """The parameters in a (member's) ``row`` holding columns ``first .. first + len(row)``, by name."""
        out, col, end = {}, 0, first + row.shape[-1]
        for n, size, shape in zip(self.names, self.sizes, self.shapes):
            if first <= col < end:
                out[n] = row[col - first : col - first + size].view(shape)
            col += size
        return out

    def _in_model_units(self, scale: Tensor, times: Tensor, taus: Tensor, marks: Tensor, mask: Tensor,
                        lengths: Tensor, window_end: Tensor, survival_gap: Tensor) -> Batch:  # fmt: skip
        return Batch(
            times=times / scale, taus=taus / scale, marks=marks, mask=mask, lengths=lengths,
            window_end=window_end / scale, survival_gap=survival_gap / scale,
        )  # fmt: skip

    def _member_histories(self, enc: Tensor, buffers: dict[str, Tensor], scale: Tensor, *fields: Tensor) -> Tensor:
        batch = self._in_model_units(scale, *fields)
        h = torch.func.functional_call(self._histories, (self._params(enc, 0), buffers), (batch,))
        return h.to(enc.dtype)

    def _member_losses(self, row: Tensor, history: Tensor | None, buffers: dict[str, Tensor], scale: Tensor,
                       log_scale: Tensor, sequences: Tensor, *fields: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
        batch = self._in_model_units(scale, *fields)
        params = self._params(row, self.n_encoder if history is not None else 0)
        kwargs = {} if history is None else {"histories": (history, history)}
        out = torch.func.functional_call(self.meta, (params, buffers), (batch,), kwargs, strict=False)
        # + log(scale) per scored event: the density per data unit (MarkedTPP.in_model_units)
        time_nll = out.time_nll + out.scored.sum(-1).to(out.time_nll.dtype) * log_scale
        return time_nll.float().sum() / sequences, out.mark_nll.float().sum() / sequences

    def forward(self, batch: StackedBatch) -> "LossPass":
        """Every member's losses on its own batch (``LossPass``): ``L_T [M]``, ``L_M [M]`` (batch means of the
        per-sequence NLLs; 0 for a member without a batch), differentiable w.r.t. fresh leaves that share
        ``flat``'s storage: ``[encoder columns, the rest]`` with a shared encoder (then ``history`` is the
        encoder's output ``[M, B, L + 1, D]``, the boundary), else ``[all columns]``."""
        sequences = torch.tensor([max(n, 1) for n in batch.sequences], dtype=torch.float32)
        fields_ = (batch.times, batch.taus, batch.marks, batch.mask, batch.lengths, batch.window_end,
                   batch.survival_gap)  # fmt: skip
        vmap = torch.func.vmap
        if self._histories is not None:
            enc = self.flat[:, : self.n_encoder].detach().requires_grad_(True)
            rest = self.flat[:, self.n_encoder :].detach().requires_grad_(True)
            history = vmap(self._member_histories, randomness="different")(enc, self.buffers, self.scales, *fields_)
            leaves = [enc, rest]
        else:
            rest, history = self.flat.detach().requires_grad_(True), None
            leaves = [rest]
        in_dims = (0, None if history is None else 0, 0, 0, 0, 0, *([0] * len(fields_)))
        lt, lm = vmap(self._member_losses, in_dims=in_dims, randomness="different")(
            rest, history, self.buffers, self.scales, self.log_scales, sequences, *fields_
        )
        return LossPass(lt, lm, leaves, history)

    def losses(self, batch: StackedBatch) -> tuple[Tensor, Tensor]:
        """``(L_T [M], L_M [M])`` of ``forward``."""
        p = self.forward(batch)
        return p.loss_time, p.loss_mark


class _Histories(nn.Module):
    """``encoder.histories(batch)`` as a module call (for ``functional_call``); parameter names as in the model."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, batch: Batch) -> Tensor:
        return self.encoder.histories(batch)


@dataclass
class LossPass:
    """``StackedMembers.forward``: losses ``[M]``, the leaves they are differentiable w.r.t. (column blocks of
    ``flat`` in order) and the shared encoder's histories (``None`` without a shared encoder)."""

    loss_time: Tensor
    loss_mark: Tensor
    leaves: list[Tensor]
    history: Tensor | None


class StackedAdam:
    """Adam on stacked parameters ``[M, P]``, the update of ``torch.optim.Adam`` (``amsgrad=False``, L2
    ``weight_decay``) with a per-element step count, so that a masked element keeps its parameter, moments and
    step count exactly. ``step(params, grad, mask)``: ``mask`` is a bool tensor broadcastable to ``[M, P]``."""

    def __init__(self, params: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:  # fmt: skip
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.exp_avg = torch.zeros_like(params, requires_grad=False)
        self.exp_avg_sq = torch.zeros_like(params, requires_grad=False)
        self.steps = torch.zeros_like(params, requires_grad=False)

    @torch.no_grad()
    def step(self, params: Tensor, grad: Tensor, mask: Tensor) -> None:
        b1, b2 = self.betas
        if self.weight_decay:
            grad = grad.add(params, alpha=self.weight_decay)
        mask = mask.expand_as(params)
        steps = torch.where(mask, self.steps + 1, self.steps)
        m = torch.where(mask, torch.lerp(self.exp_avg, grad, 1 - b1), self.exp_avg)
        v = torch.where(mask, self.exp_avg_sq * b2 + (1 - b2) * grad * grad, self.exp_avg_sq)
        bc1 = 1 - torch.pow(b1, steps)
        bc2_sqrt = (1 - torch.pow(b2, steps)).sqrt()
        update = (m / bc1) / (v.sqrt() / bc2_sqrt + self.eps) * self.lr
        params.copy_(torch.where(mask, params - update, params))
        self.exp_avg, self.exp_avg_sq, self.steps = m, v, steps

    def state_dict(self) -> dict[str, Any]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.exp_avg = state["exp_avg"].clone()
        self.exp_avg_sq = state["exp_avg_sq"].clone()
        self.steps = state["steps"].clone()


def member_conflict_stats(g_time: Tensor, g_mark: Tensor, groups: dict[str, slice]) -> Tensor:
    """``[M, len(MEMBER_STAT_KEYS)]`` per-member diagnostics from per-task gradients ``[M, P]`` (column groups from
    ``StackedMembers.groups``): cosines over the shared columns, the encoder and the decoder columns, GMS and the
    two norms over the shared columns; NaN where undefined (no shared column, a zero or non-finite gradient)."""
    nan = torch.full((g_time.shape[0],), math.nan, dtype=g_time.dtype)

    def cos(sl: slice) -> Tensor:
        a, b = g_time[:, sl], g_mark[:, sl]
        if a.shape[1] == 0:
            return nan
        den = torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1)
        return torch.where(den > 0, (a * b).sum(1) / den, nan)

    sh = groups["shared"]
    if g_time[:, sh].shape[1] == 0:
        return torch.full((g_time.shape[0], len(MEMBER_STAT_KEYS)), math.nan)
    n_t = torch.linalg.vector_norm(g_time[:, sh], dim=1)
    n_m = torch.linalg.vector_norm(g_mark[:, sh], dim=1)
    gms = 2 * n_t * n_m / (n_t.square() + n_m.square())
    out = torch.stack([cos(sh), cos(groups["encoder"]), cos(groups["decoder"]), gms, n_t, n_m], 1)
    finite = (torch.isfinite(n_t) & torch.isfinite(n_m)).unsqueeze(1)
    return torch.where(finite, out, torch.full_like(out, math.nan)).float()


def _task_gradients(p: LossPass) -> tuple[Tensor, Tensor]:
    """``(g_T, g_M)``, each ``[M, P]``. With a shared encoder: two decoder-side backwards that stop at the
    histories, then ONE batched vector-Jacobian product through the encoder for both tasks
    (``mtpp.training.gradients.batched_vjp``; the fused recurrence runs both cotangents in one backward loop for
    all members), as ``backward_step``'s boundary path does for one model. Otherwise one backward per task."""
    from mtpp.training.gradients import batched_vjp

    def fill(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> list[Tensor]:
        return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, like)]

    if p.history is None:
        g_t = fill(torch.autograd.grad(p.loss_time.sum(), p.leaves, retain_graph=True, allow_unused=True), p.leaves)
        g_m = fill(torch.autograd.grad(p.loss_mark.sum(), p.leaves, allow_unused=True), p.leaves)
        return torch.cat(g_t, 1), torch.cat(g_m, 1)
    enc, rest = p.leaves
    inputs = [p.history, rest]
    d_t = fill(torch.autograd.grad(p.loss_time.sum(), inputs, retain_graph=True, allow_unused=True), inputs)
    d_m = fill(torch.autograd.grad(p.loss_mark.sum(), inputs, retain_graph=True, allow_unused=True), inputs)
    g_enc = batched_vjp([p.history], [enc], [torch.stack([d_t[0], d_m[0]])])[0]
    if g_enc is None:
        g_enc = torch.zeros(2, *enc.shape, dtype=enc.dtype)
    return torch.cat([g_enc[0], d_t[1]], 1), torch.cat([g_enc[1], d_m[1]], 1)


@dataclass
class StepResult:
    """What one ensemble step leaves on the host side: per member ``loss_time``, ``loss_mark``, ``grad_norm``,
    ``ok`` (finite), ``updated`` (the step changed the member) and ``stats [M, K]`` (``None`` without)."""

    loss_time: Tensor
    loss_mark: Tensor
    grad_norm: Tensor
    ok: Tensor
    updated: Tensor
    stats: Tensor | None


def ensemble_step(
    members: StackedMembers, adam: StackedAdam, batch: StackedBatch, trainable: Tensor, want_stats: bool,
    grad_clip: float | None = None,
) -> StepResult:  # fmt: skip
    """One training step of every member: losses, gradients (per task with ``want_stats``), per-member gradient
    norm over its trainable columns, finite flag, optional clipping, and the masked Adam update.

    ``trainable``: ``[M, P]`` bool, the columns each member may update (false for stopped members and frozen
    "++" groups). A member is updated where it has a batch, its step is finite, and the column is trainable.
    """
    p = members.forward(batch)
    loss_time, loss_mark = p.loss_time, p.loss_mark
    has_shared = members.groups["shared"].stop > 0
    if want_stats and has_shared:
        g_time, g_mark = _task_gradients(p)
        grad = g_time + g_mark
        stats = member_conflict_stats(g_time, g_mark, members.groups)
    else:
        grads = torch.autograd.grad((loss_time + loss_mark).sum(), p.leaves, allow_unused=True)
        grad = torch.cat([torch.zeros_like(x) if g is None else g for g, x in zip(grads, p.leaves)], 1)
        stats = torch.full((members.members, len(MEMBER_STAT_KEYS)), math.nan) if want_stats else None
    grad = torch.where(trainable, grad, torch.zeros((), dtype=grad.dtype))
    norm = torch.linalg.vector_norm(grad, dim=1)
    lt, lm = loss_time.detach(), loss_mark.detach()
    ok = torch.isfinite(lt) & torch.isfinite(lm) & torch.isfinite(norm)
    if grad_clip is not None:
        coef = (grad_clip / (norm + 1e-6)).clamp(max=1.0)
        grad = grad * coef.unsqueeze(1)
    updated = ok & batch.present
    adam.step(members.flat, grad, trainable & updated.unsqueeze(1))
    if stats is not None:
        finite = (torch.isfinite(lt) & torch.isfinite(lm) & ok).unsqueeze(1)
        stats = torch.where(finite, stats, torch.full_like(stats, math.nan))
    return StepResult(lt, lm, norm, ok, updated, stats)


def aligned_schedule(lengths: Sequence[Sequence[int]], generator: torch.Generator) -> list[list[int | None]]:
    """An epoch's step plan for ``M`` members whose batches have the given maximum lengths (``lengths[m][j]``:
    batch ``j`` of member ``m``, in the member's sampler order): ``plan[i][m]`` = the batch member ``m`` trains on
    at step ``i`` (``None`` once its epoch is over). ``len(plan) = max_m len(lengths[m])``.

    Why: members' batches are padded to a common ``[M, B, L]``, so members at very different lengths in the same
    step waste most of it (measured on MOOC, batch 8, 5 members in their own sampler orders: 53 % padding, 4 %
    for one model). The plan draws one random permutation ``r`` of the steps (``generator``) and gives member
    ``m`` at step ``i`` its batch whose length rank equals the rank of ``r[i]`` among ``r[:n_m]``: every member
    sees each of its batches exactly once per epoch, in a uniformly random order, and at every step all members
    train on batches of about the same length quantile. The batches themselves are the member's own (its
    sampler and seed); only their order within the epoch differs from a separate run's.
    """
    n_max = max((len(x) for x in lengths), default=0)
    r = torch.randperm(n_max, generator=generator)
    plan: list[list[int | None]] = [[None] * len(lengths) for _ in range(n_max)]
    for m, lens in enumerate(lengths):
        n = len(lens)
        by_length = sorted(range(n), key=lambda j: (lens[j], j))
        ranks = torch.argsort(torch.argsort(r[:n])).tolist()
        for i in range(n):
            plan[i][m] = by_length[ranks[i]]
    return plan
