"""Per-task gradients, the time/mark gradient-conflict diagnostics, and the training step's gradient path.

DESIGN §4. ``L = L_T + L_M``; on the parameters shared by both tasks the per-task gradients ``g_T``, ``g_M`` may
conflict (``cos phi_TM < 0``). ``backward_step`` writes into ``.grad``:

- task-specific parameters: their exact gradient ``g_T + g_M`` (only one of the two is non-zero for them);
- shared parameters: the aggregator's combination of ``[g_T_shared, g_M_shared]`` (``sum`` gives ``g_T + g_M``);

and returns the diagnostics as 0-dim tensors on the device (no host sync; ``StatsBuffer`` moves them to the host
in one transfer at logging boundaries):

- ``cos_tm``: cosine of ``g_T`` and ``g_M`` over all shared parameters flattened and concatenated;
- ``cos_tm/encoder``, ``cos_tm/decoder``: the same per group of ``model.shared_parameters()``;
- ``gms = 2 |g_T| |g_M| / (|g_T|^2 + |g_M|^2)`` (gradient magnitude similarity, 1 = equal norms);
- ``norm_time``, ``norm_mark``: ``|g_T|``, ``|g_M|`` over the shared parameters;
- optionally ``cos_tm/<group>/<i>``: per shared tensor (``per_tensor=True``).

Undefined values (no shared parameter in that group, or a zero gradient) are NaN on the device and ``None`` (JSON
null) after ``StatsBuffer.flush`` -- never 0. No thresholding of small entries: every element counts.

Skipped steps. A step whose losses or gradients are not finite is skipped by the non-finite guard, and its
statistics mean nothing (an infinite gradient gave ``cos_tm = -0.0`` with ``norm_time = null`` before): every
statistic of such a step is NaN -> ``None``. ``conflict_stats`` does it for non-finite per-task gradients,
``backward_step`` also for non-finite losses, and the trainer for any skip (``guard.null_if_skipped`` with the
guard's own flag, which also sees task-specific parameters and other DDP ranks). The conflict rate counts only
steps where the cosine is defined, so skipped steps are out of its denominator (``conflict_rate(s)``).

The statistics are of the gradients of the losses as passed: if the trainer passes AMP-scaled losses, the norms are
scaled too (cosines and GMS are scale-free).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from mtpp.models.base import BOUNDARY_METADATA_KEY
from mtpp.training.aggregators import Aggregator, unflatten

Reduce = Callable[[Tensor], Tensor]
"""A function applied to a flat ``[P]`` per-task gradient vector (e.g. a DDP all-reduce mean) returning ``[P]``."""

GROUPS: tuple[str, ...] = ("encoder", "decoder")
STAT_KEYS: tuple[str, ...] = ("cos_tm", "cos_tm/encoder", "cos_tm/decoder", "gms", "norm_time", "norm_mark")
COS_KEYS: tuple[str, ...] = ("cos_tm", "cos_tm/encoder", "cos_tm/decoder")


# ----------------------------------------------------------------------------------------------------------------
# Per-task gradients
# ----------------------------------------------------------------------------------------------------------------


def task_gradients(
    loss_time: Tensor, loss_mark: Tensor, params: Sequence[Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """``(g_T, g_M)``: gradients of the scalar losses w.r.t. ``params`` (two ``autograd.grad`` calls).

    The graph is retained after the first call only. A parameter a loss does not reach gets zeros.
    Returns two lists of tensors shaped like ``params``.
    """
    params = list(params)
    if not params:
        return [], []
    g_T = torch.autograd.grad(loss_time, params, retain_graph=True, allow_unused=True)
    g_M = torch.autograd.grad(loss_mark, params, allow_unused=True)
    return _fill(g_T, params), _fill(g_M, params)


def _fill(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


# ----------------------------------------------------------------------------------------------------------------
# Statistics (on device)
# ----------------------------------------------------------------------------------------------------------------


def _nan(device: torch.device | None, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.full((), math.nan, device=device, dtype=dtype)


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine of two flat vectors as a 0-dim tensor; NaN when either is zero or empty (undefined, never 0)."""
    if a.numel() == 0:
        return _nan(a.device, a.dtype if a.is_floating_point() else torch.float32)
    den = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    return torch.where(den > 0, torch.dot(a, b) / den, torch.full_like(den, math.nan))


def conflict_stats(
    g_T: Mapping[str, Sequence[Tensor]],
    g_M: Mapping[str, Sequence[Tensor]],
    per_tensor: bool = False,
    device: torch.device | None = None,
) -> dict[str, Tensor]:
    """Diagnostics from per-group per-task gradients (``{"encoder": [...], "decoder": [...]}`` each).

    Returns the ``STAT_KEYS`` (and per-tensor cosines when asked) as 0-dim tensors on the device; NaN where
    undefined (empty group, zero gradient). Norms and GMS are NaN when there is no shared parameter at all.
    """
    groups = list(dict.fromkeys([*GROUPS, *g_T.keys()]))
    flat_T = {k: _cat(g_T.get(k, [])) for k in groups}
    flat_M = {k: _cat(g_M.get(k, [])) for k in groups}
    if device is None:
        nonempty = [v for v in flat_T.values() if v.numel()]
        device = nonempty[0].device if nonempty else None
    all_T = [v for k in groups for v in g_T.get(k, [])]
    all_M = [v for k in groups for v in g_M.get(k, [])]
    fT, fM = _cat(all_T), _cat(all_M)
    out: dict[str, Tensor] = {}
    if fT.numel() == 0:
        for key in STAT_KEYS:
            out[key] = _nan(device)
        return out
    out["cos_tm"] = cosine(fT, fM)
    for k in groups:
        out[f"cos_tm/{k}"] = cosine(flat_T[k], flat_M[k]) if flat_T[k].numel() else _nan(device, fT.dtype)
    nT, nM = torch.linalg.vector_norm(fT), torch.linalg.vector_norm(fM)
    out["gms"] = 2 * nT * nM / (nT.square() + nM.square())  # 0/0 = NaN when both are zero
    out["norm_time"], out["norm_mark"] = nT, nM
    if per_tensor:
        for k in groups:
            for i, (a, b) in enumerate(zip(g_T.get(k, []), g_M.get(k, []))):
                out[f"cos_tm/{k}/{i}"] = cosine(a.reshape(-1), b.reshape(-1))
    return null_unless(out, torch.isfinite(nT) & torch.isfinite(nM))


def null_unless(stats: Mapping[str, Tensor], ok: Tensor) -> dict[str, Tensor]:
    """Every statistic NaN (``None`` once flushed) where the 0-dim bool ``ok`` is false; on the device, no sync."""
    return {k: torch.where(ok.to(v.device), v, torch.full_like(v, math.nan)) for k, v in stats.items()}


def _cat(ts: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts]) if len(ts) else torch.zeros(0)


# ----------------------------------------------------------------------------------------------------------------
# The training step's gradient path
# ----------------------------------------------------------------------------------------------------------------


def _unique_trainable(params: Iterable[Tensor], seen: set[int]) -> list[Tensor]:
    out = []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _accumulate(p: Tensor, g: Tensor) -> None:
    """Add ``g`` into ``p.grad`` the way ``.backward()`` does (so gradient accumulation keeps working)."""
    g = g.detach()
    if p.grad is None:
        p.grad = g
    else:
        p.grad.add_(g)


def backward_step(
    loss_time: Tensor,
    loss_mark: Tensor,
    shared: Mapping[str, Sequence[Tensor]],
    other_params: Iterable[Tensor],
    aggregator: Aggregator,
    want_stats: bool,
    reduce: Reduce | None = None,
    per_tensor: bool = False,
    use_boundary: bool = True,
) -> dict[str, Tensor]:
    """Back-propagate ``L_T`` and ``L_M`` and write ``.grad`` (accumulating, like ``.backward()``).

    Args:
        loss_time, loss_mark: scalar losses ``L_T``, ``L_M`` (e.g. batch means of ``time_nll [B]``, ``mark_nll [B]``).
        shared: ``model.shared_parameters()``: ``{"encoder": [...], "decoder": [...]}`` (both empty for ``++``).
        other_params: every other trainable parameter (task-specific); shared ones in it are ignored.
        aggregator: from ``make_aggregator``; combines ``[g_T_shared, g_M_shared]``.
        want_stats: compute the diagnostics this step (at logging steps; otherwise ``{}`` is returned).
        reduce: applied to each task's flat gradient vector over ALL trainable parameters before statistics and
            aggregation. Under DDP pass an all-reduce mean and run EVERY step's forward/backward under
            ``model.no_sync()``: ``autograd.grad`` does not fire DDP's gradient hooks, so ``reduce`` is what
            synchronises the replicas, on both paths (on the single-backward path it is applied to ``.grad``).
            Consequently, under DDP, ``cos_tm`` is computed on the all-reduced (global-batch) per-task gradients.
        per_tensor: also return ``cos_tm/<group>/<i>`` per shared tensor.
        use_boundary: use the encoder boundary the model recorded on the losses' graph when there is one (see
            below); ``False`` forces the generic path (same gradients, slower).

    Cost: with nothing shared, or the ``sum`` aggregator on a step without statistics, one ordinary
    ``(L_T + L_M).backward()`` (plus the DDP-style ``reduce`` on ``.grad`` if given). Otherwise:

    - **boundary path** (``MarkedTPP`` base / plus): ``NLLOutput`` records its ``boundary`` (the shared encoder's
      histories ``h``) on the graphs of ``time_nll`` and ``mark_nll``, and each loss is a chain of one-input
      operations of one of them (``.float()``, ``.mean()``, a scale), so both reach the encoder parameters only
      through ``h``. Then ``dL_T/d(h, rest)`` and ``dL_M/d(h, rest)`` by two ``autograd.grad`` calls that stop at
      ``h`` (decoder-side only: together they cost about the decoder part of one ordinary backward), and ONE
      vector-Jacobian product through the encoder with the two cotangents stacked (``batched_vjp``:
      ``torch.func.vmap`` over ``autograd.grad``) gives ``[g_T, g_M]`` for every encoder parameter. Exact (no
      subtraction): the gradients of the generic path up to float rounding. The fused CPU GRU / RNN
      (``mtpp.models.recurrence``) has a vmap rule that runs both cotangents through ONE backward recurrence
      (~1.7x the cost of one GRU backward at batch 16 x 60 steps, alone; the per-task weight-gradient products
      cannot be shared); ops without a batching rule (the CPU flash-attention
      backward of the thp / sahp encoders) run once per cotangent. Measured over a plain step on MOOC (batch
      16, 1 thread): +16-29 % with a THP / SAHP / FNN decoder, +39-58 % with LNM / RMTPP (BENCHMARKS.md). Not
      measured on CUDA (cuDNN's RNN backward runs per cotangent there, or raises and two sequential backwards
      are used; same gradients either way). The graph is retained until the losses are freed (as usual, at
      the end of the step). The first batched call in a process pays a one-off vmap warm-up (~1-3 s on CPU).
    - **generic path** (any other model or loss, ``torch.compile``-d ``nll``, or ``use_boundary=False``): two
      ``autograd.grad`` calls over all trainable parameters: one extra full backward compared with a plain step.

    Either way each task-specific parameter gets its exact own gradient.

    Returns:
        ``{}`` when ``want_stats`` is false, else the ``STAT_KEYS`` (see module doc) as 0-dim device tensors.
    """
    seen: set[int] = set()
    groups = {k: _unique_trainable(v, seen) for k, v in shared.items()}
    shared_list = [p for ps in groups.values() for p in ps]
    others = _unique_trainable(other_params, seen)
    device = loss_time.device

    if not shared_list or (aggregator.is_plain_sum and not want_stats):
        (loss_time + loss_mark).backward()
        if reduce is not None:
            _reduce_grads(shared_list + others, reduce)
        if not want_stats:
            return {}
        return conflict_stats({k: [] for k in groups}, {k: [] for k in groups}, per_tensor, device)

    params = shared_list + others
    boundary = find_boundary(loss_time, loss_mark) if use_boundary else None
    if boundary is not None:
        raw_T, raw_M = _boundary_task_grads(loss_time, loss_mark, boundary, groups.get("encoder", []), params)
    else:
        raw_T = torch.autograd.grad(loss_time, params, retain_graph=True, allow_unused=True)
        raw_M = torch.autograd.grad(loss_mark, params, allow_unused=True)
    # a parameter neither loss reaches keeps ``.grad`` untouched (as ``.backward()`` would leave it None)
    reached = [a is not None or b is not None for a, b in zip(raw_T, raw_M)]
    g_T, g_M = _fill(raw_T, params), _fill(raw_M, params)
    if reduce is not None:
        reached = [True] * len(params)  # another replica may have reached it
        g_T = unflatten(reduce(_cat(g_T)), params)
        g_M = unflatten(reduce(_cat(g_M)), params)

    n_shared = len(shared_list)
    sT, sM = g_T[:n_shared], g_M[:n_shared]
    stats: dict[str, Tensor] = {}
    if want_stats:
        by_T, by_M, i = {}, {}, 0
        for k, ps in groups.items():
            by_T[k], by_M[k] = sT[i : i + len(ps)], sM[i : i + len(ps)]
            i += len(ps)
        finite = torch.isfinite(loss_time.detach()) & torch.isfinite(loss_mark.detach())
        stats = null_unless(conflict_stats(by_T, by_M, per_tensor, device), finite)

    combined = aggregator([sT, sM])
    for p, g, r in zip(shared_list, combined, reached):
        if r:
            _accumulate(p, g)
    for p, a, b, r in zip(others, g_T[n_shared:], g_M[n_shared:], reached[n_shared:]):
        if r:
            _accumulate(p, a + b)
    return stats


_MAX_CHAIN = 16  # one-input nodes walked from a loss to the tagged ``time_nll`` / ``mark_nll`` node


def find_boundary(loss_time: Tensor, loss_mark: Tensor) -> list[Tensor] | None:
    """The boundary tensors ``NLLOutput`` recorded on the graph of both losses, or ``None``.

    Found only when each loss is a chain of one-input autograd nodes (``.float()``, ``.mean()``, a constant scale,
    indexing) ending at the node of ``time_nll`` / ``mark_nll`` that carries the boundary, the same boundary for
    both: then nothing else (a regulariser on the encoder, another model's loss) feeds the losses, and the losses
    depend on the encoder parameters only through the boundary (the ``NLLOutput.boundary`` contract).
    """
    found_T, found_M = _tagged(loss_time), _tagged(loss_mark)
    if found_T is None or found_T is not found_M:
        return None
    tensors = [t for t in found_T.values() if isinstance(t, Tensor) and t.requires_grad]
    return tensors or None


def _tagged(loss: Tensor) -> Mapping[str, Tensor] | None:
    node = loss.grad_fn
    for _ in range(_MAX_CHAIN):
        if node is None:
            return None
        found = node.metadata.get(BOUNDARY_METADATA_KEY)
        if found is not None:
            return found
        nxt = [f for f, _ in node.next_functions if f is not None]
        if len(nxt) != 1:
            return None
        node = nxt[0]
    return None


def _boundary_task_grads(
    loss_time: Tensor,
    loss_mark: Tensor,
    boundary: Sequence[Tensor],
    upstream: Sequence[Tensor],
    params: Sequence[Tensor],
) -> tuple[list[Tensor | None], list[Tensor | None]]:
    """``(g_T, g_M)`` over ``params`` (``None`` where a loss does not reach), through the boundary tensors.

    ``upstream``: the parameters the losses reach only through ``boundary`` (the encoder group). The others get
    their gradients from two decoder-side ``autograd.grad`` calls that also give ``dL/d boundary`` (these stop at
    the boundary: nothing upstream of it is an input); the upstream ones from one batched vector-Jacobian product
    of the boundary with the two cotangents. A parameter the boundary depends on but not listed in ``upstream``
    still gets its full gradient (the decoder-side call then also runs through the encoder): slower, not wrong.
    """
    up_ids = {id(p) for p in upstream}
    down = [p for p in params if id(p) not in up_ids]
    n = len(boundary)
    inputs = [*boundary, *down]
    d_T = torch.autograd.grad(loss_time, inputs, retain_graph=True, allow_unused=True)
    d_M = torch.autograd.grad(loss_mark, inputs, retain_graph=True, allow_unused=True)
    outs, cots = [], []
    for t, a, b in zip(boundary, d_T[:n], d_M[:n]):
        if a is None and b is None:
            continue
        outs.append(t)
        cots.append(torch.stack([torch.zeros_like(t) if a is None else a, torch.zeros_like(t) if b is None else b]))
    up_T: list[Tensor | None] = [None] * len(upstream)
    up_M: list[Tensor | None] = [None] * len(upstream)
    if outs and upstream:
        # retain_graph: a failing batched backward must leave the graph intact for the fallback; the graph is
        # freed with the losses at the end of the step, as usual
        try:
            g = batched_vjp(outs, upstream, cots)
        except RuntimeError:  # an op without a vmap rule (e.g. a custom autograd.Function): two backwards
            up_T = list(torch.autograd.grad(outs, upstream, [c[0] for c in cots], retain_graph=True, allow_unused=True))
            up_M = list(torch.autograd.grad(outs, upstream, [c[1] for c in cots], allow_unused=True))
        else:
            up_T = [None if x is None else x[0] for x in g]
            up_M = [None if x is None else x[1] for x in g]
    by_id = {id(p): (a, b) for p, a, b in zip(down, d_T[n:], d_M[n:])}
    by_id.update((id(p), (a, b)) for p, a, b in zip(upstream, up_T, up_M))
    return [by_id[id(p)][0] for p in params], [by_id[id(p)][1] for p in params]


def batched_vjp(outs: Sequence[Tensor], inputs: Sequence[Tensor], cots: Sequence[Tensor]) -> list[Tensor | None]:
    """``d(outs)/d(inputs)^T c`` for a stack of cotangents at once: ``cots[i]`` is ``[T, *outs[i].shape]``; returns
    ``[T, *inputs[j].shape]`` per input (``None`` where no output reaches it). The graph is retained.

    ``torch.func.vmap`` over ``autograd.grad``: every backward node runs once on the stacked cotangents (batching
    rules), and the fused CPU recurrences (``mtpp.models.recurrence``) take all ``T`` in one backward recurrence.
    """
    unused: list[bool] = []

    def vjp(*c: Tensor) -> tuple[Tensor, ...]:
        g = torch.autograd.grad(outs, inputs, c, retain_graph=True, allow_unused=True)
        unused[:] = [x is None for x in g]
        return tuple(torch.zeros_like(p) if x is None else x for x, p in zip(g, inputs))

    with warnings.catch_warnings():
        # ops without a batching rule (the CPU flash-attention backward of the thp / sahp encoders) run once per
        # cotangent, as two separate backwards would: expected here, not worth a warning every step
        warnings.filterwarnings("ignore", "There is a performance drop because we have not yet implemented")
        out = torch.func.vmap(vjp)(*cots)
    return [None if u else g for g, u in zip(out, unused)]


def _reduce_grads(params: Sequence[Tensor], reduce: Reduce) -> None:
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return
    flat = reduce(_cat([p.grad for p in with_grad]))
    for p, g in zip(with_grad, unflatten(flat, [p.grad for p in with_grad])):
        p.grad.copy_(g)


# ----------------------------------------------------------------------------------------------------------------
# Host side: buffering and conflict rate
# ----------------------------------------------------------------------------------------------------------------


class StatsBuffer:
    """Accumulates per-step stats dicts on the device; ``flush`` moves them to the host in one transfer.

    ``append(stats, **meta)`` stacks the dict's 0-dim tensors into one ``[K]`` device tensor (no sync); ``meta``
    holds plain Python values (``step=...``, ``epoch=...``) merged into the flushed record. ``flush()`` concatenates
    everything, calls ``.cpu().tolist()`` once, and returns one ``dict[str, float | None]`` per appended step, NaN
    (undefined) becoming ``None``. Values are transferred as float32.
    """

    def __init__(self) -> None:
        self._rows: list[tuple[tuple[str, ...], Tensor, dict[str, Any]]] = []

    def append(self, stats: Mapping[str, Tensor], **meta: Any) -> None:
        """Record one step's stats (0-dim tensors or Python numbers)."""
        keys = tuple(stats)
        if keys:
            vals = torch.stack([torch.as_tensor(v).detach().reshape(()).float() for v in stats.values()])
        else:
            vals = torch.zeros(0)
        self._rows.append((keys, vals, dict(meta)))

    def __len__(self) -> int:
        return len(self._rows)

    def flush(self) -> list[dict[str, Any]]:
        """All recorded steps as host dicts (NaN -> None), in order; empties the buffer."""
        if not self._rows:
            return []
        rows, self._rows = self._rows, []
        devices = {r[1].device for r in rows if r[1].numel()}
        dev = next(iter(devices)) if len(devices) == 1 else torch.device("cpu")
        flat = torch.cat([r[1].to(dev) for r in rows]).cpu().tolist()
        out, i = [], 0
        for keys, _, meta in rows:
            rec: dict[str, Any] = dict(meta)
            for k in keys:
                v = flat[i]
                rec[k] = None if math.isnan(v) else v
                i += 1
            out.append(rec)
        return out


def conflict_rate(values: Iterable[float | None]) -> float | None:
    """Share of logged steps with ``cos < 0`` among those where it is defined; ``None`` if none is defined."""
    defined = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not defined:
        return None
    return sum(v < 0 for v in defined) / len(defined)


def conflict_rates(records: Iterable[Mapping[str, Any]], keys: Sequence[str] = COS_KEYS) -> dict[str, float | None]:
    """``conflict_rate`` per cosine key over flushed records: ``{"conflict_rate": ..., "conflict_rate/encoder": ...}``.

    Records of skipped steps (``skipped`` true) are left out whatever their cosines say (older logs wrote
    ``cos_tm: -0.0`` for them)."""
    records = [r for r in records if not r.get("skipped")]
    out: dict[str, float | None] = {}
    for k in keys:
        name = "conflict_rate" + k[len("cos_tm") :]
        out[name] = conflict_rate(r.get(k) for r in records)
    return out
