"""Fused recurrences for CPU training: a GRU and a tanh RNN layer with a hand-written backward.

On CPU, ``nn.GRU`` records about a dozen autograd nodes per time step and its backward replays them one by one;
at the sizes MTPP models use (32 units, a few dozen events) that per-node overhead, not arithmetic, is most of a
training step. ``run_fused`` runs the same recurrence as ``nn.GRU`` / ``nn.RNN(nonlinearity="tanh")`` (same gate
order, reading the module's own parameters, so checkpoints are unchanged) as ONE autograd node per layer:

- forward: the input projections of all steps in one matrix product, then per step one ``addmm`` and a few
  element-wise kernels writing into preallocated time-major buffers (no autograd recording);
- backward: the Jacobian factors of all steps precomputed in a few vectorised kernels, then per step one
  product, one ``addcmul`` and one ``addmm`` for ``dh_{t-1}``; the weight gradients come after the loop as one
  matrix product over all steps.

The backward rule takes ``T`` stacked cotangents at once (``T = 1`` in an ordinary backward): under
``torch.func.vmap`` over the cotangent, which is how the trainer gets the time and mark gradients of the encoder
(``mtpp.training.gradients.batched_vjp``), both tasks ride along the batch rows of one backward recurrence
(the older ``is_grads_batched`` vmap is not supported: it raises).

Numerically the same function as ``nn.GRU`` / ``nn.RNN`` (tested against them in float64 to 1e-12, and by
``gradcheck``). Used by ``RecurrentEncoder`` when training on CPU; on CUDA (cuDNN), without gradients, under
autocast or ``torch.compile`` the ``nn`` modules run instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _task_major(d_hs: Tensor) -> Tensor:
    """``[T, L + 1, B, H]`` cotangents -> ``[L + 1, B, T, H]`` (contiguous): the ``T`` tasks become extra rows
    (``b * T + t``) of every step's ``[B * T, H]`` matrix."""
    return d_hs.permute(1, 2, 0, 3).contiguous()


def _outer(inp: Tensor, d: Tensor) -> Tensor:
    """``sum_{l, b} d[l, b, t] (x) inp[l, b]`` for every task ``t``: ``inp [L, B, E]``, ``d [L, B, T, G]`` (any
    strides with unit last stride and uniform row stride) -> ``[T, G, E]``, the weight gradient of
    ``g = inp @ W.T``; one matrix product per task (``T`` is 1 or 2 in training), no copies."""
    rows = inp.reshape(-1, inp.shape[-1]).t()  # [E, L * B]
    flat = d.reshape(-1, *d.shape[2:])  # [L * B, T, G], a view
    return torch.stack([(rows @ flat[:, t]).t() for t in range(d.shape[2])])


def _gru_vjp(
    d_hs: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor, hs: Tensor, rz: Tensor, n: Tensor, hn: Tensor
) -> tuple[Tensor, ...]:
    """Gradients of a fused GRU layer (``_gru_forward``) for ``T`` cotangents ``d_hs [T, L + 1, B, H]`` in ONE
    backward recurrence. Returns ``(dx, dh0, dW_ih, dW_hh, db_ih, db_hh)``, each with a leading ``T``.

    ``a_r, a_z, a_n`` are the pre-activations of ``r, z, n`` and ``g = W_hh h + b_hh = [g_r, g_z, g_n]``. Given
    ``dh = dL/dh'`` of a step, everything is ``dh`` times a factor known from the forward pass:
    ``dL/da_n = dh (1 - z)(1 - n^2)``, ``dL/dg_n = dL/da_n r``, ``dL/da_r = dL/da_n g_n r(1 - r)``,
    ``dL/da_z = dh (h - n) z(1 - z)``; then ``dL/dh = dh z + dL/dg @ W_hh``. The four factors of every step are
    computed before the loop as blocks ``[g_n, a_r, a_z, a_n]``, so that blocks 0-2 are ``dL/dg`` (with the rows
    of ``W_hh`` rotated to match) and blocks 1-3 ``dL/d(W_ih x + b_ih)``, each a strided slice. The loop is one
    product, one ``addcmul`` and one ``addmm`` per step, written into preallocated buffers; the weight gradients
    are two matrix products after it.
    """
    tasks = d_hs.shape[0]
    steps, batch, size = n.shape
    rows = batch * tasks
    factors = _gru_factors(hs, rz, n, hn).unsqueeze(2)  # [L, B, 1, 4, H]
    d_all = _task_major(d_hs)  # [L + 1, B, T, H]; d_all[0] is the cotangent of hs[0] = h0
    dh = d_hs.new_empty(steps + 1, batch, tasks, size)  # dL/dh of every state, filled backwards
    dh[steps] = d_all[steps]
    d4 = d_hs.new_empty(steps, batch, tasks, 4, size)
    carry = d_hs.new_empty(batch, tasks, size)
    w_rot = torch.cat([w_hh[2 * size :], w_hh[: 2 * size]])  # rows [n, r, z]: the block order
    dh_t, dh_in, dh_out = dh.unsqueeze(3).unbind(0), dh.unbind(0), dh.view(steps + 1, rows, size).unbind(0)
    d4_t, dg_t = d4.unbind(0), d4.view(steps, rows, 4 * size)[..., : 3 * size].unbind(0)
    f_t, z_t, d_t = factors.unbind(0), rz[..., size:].unsqueeze(2).unbind(0), d_all.unbind(0)
    carry_2d = carry.view(rows, size)
    for t in range(steps - 1, -1, -1):
        torch.mul(dh_t[t + 1], f_t[t], out=d4_t[t])
        torch.addcmul(d_t[t], dh_in[t + 1], z_t[t], out=carry)
        torch.addmm(carry_2d, dg_t[t], w_rot, out=dh_out[t])
    d4 = d4.view(steps, batch, tasks, 4 * size)
    gh, gi = d4[..., : 3 * size], d4[..., size:]
    dx = (gi.reshape(-1, 3 * size) @ w_ih).view(steps, batch, tasks, -1).permute(2, 0, 1, 3)
    p_gh = _outer(hs[:-1], gh)  # [T, 3H, H] in the rotated row order
    sums = d4.sum((0, 1))  # [T, 4H]
    dw_hh = torch.cat([p_gh[:, size:], p_gh[:, :size]], 1)
    db_hh = torch.cat([sums[:, size : 3 * size], sums[:, :size]], 1)
    return dx, dh[0].transpose(0, 1), _outer(x, gi), dw_hh, sums[:, size:], db_hh


def _gru_factors(hs: Tensor, rz: Tensor, n: Tensor, hn: Tensor) -> Tensor:
    """``[L, B, 4, H]``: ``d(g_n, a_r, a_z, a_n) / dh'`` of every step (see ``_gru_vjp``), ten kernels (any
    leading dimensions: ``[L, M, B, 4, H]`` for the member-stacked layers)."""
    size = n.shape[-1]
    r, z = rz[..., :size], rz[..., size:]
    out = n.new_empty(*n.shape[:-1], 4, size)
    f_gn, f_r, f_z, f_an = out.unbind(-2)
    one = n.new_ones(())
    torch.mul(torch.addcmul(one, n, n, value=-1), torch.rsub(z, 1), out=f_an)  # (1 - n^2)(1 - z)
    torch.mul(f_an, r, out=f_gn)
    torch.mul(f_an, hn, out=f_r).mul_(torch.addcmul(r, r, r, value=-1))  # * g_n r(1 - r)
    torch.sub(hs[:-1], n, out=f_z).mul_(torch.addcmul(z, z, z, value=-1))  # (h - n) z(1 - z)
    return out


def _rnn_vjp(d_hs: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor, hs: Tensor) -> tuple[Tensor, ...]:
    """``_gru_vjp`` for a fused tanh RNN layer (``_rnn_forward``): ``(dx, dh0, dW_ih, dW_hh, db_ih, db_hh)``,
    each with a leading ``T``; ``dL/da = dh (1 - h'^2)``, ``dL/dh = dL/da @ W_hh`` (two kernels per step)."""
    tasks = d_hs.shape[0]
    steps, batch, size = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    rows = batch * tasks
    da_dh = torch.addcmul(hs.new_ones(()), hs[1:], hs[1:], value=-1).unsqueeze(2)  # 1 - h'^2: [L, B, 1, H]
    d_all = _task_major(d_hs)
    dh = d_hs.new_empty(steps + 1, batch, tasks, size)
    dh[steps] = d_all[steps]
    da = d_hs.new_empty(steps, batch, tasks, size)
    dh_in, dh_out, f_t = dh.unbind(0), dh.view(steps + 1, rows, size).unbind(0), da_dh.unbind(0)
    da_t, da_2d, d_t = da.unbind(0), da.view(steps, rows, size).unbind(0), d_all.view(steps + 1, rows, size).unbind(0)
    for t in range(steps - 1, -1, -1):
        torch.mul(dh_in[t + 1], f_t[t], out=da_t[t])
        torch.addmm(d_t[t], da_2d[t], w_hh, out=dh_out[t])
    db = da.sum((0, 1))
    dx = (da @ w_ih).permute(2, 0, 1, 3)
    # b_ih and b_hh get the same values, but never the same tensor: as two ``.grad`` sharing storage, an in-place
    # clip or accumulation would reach both twice
    return dx, dh[0].transpose(0, 1), _outer(x, da), _outer(hs[:-1], da), db, db.clone()


class _TaskBatchedVJP(torch.autograd.Function):
    """Runs a layer's backward rule (``_gru_vjp`` / ``_rnn_vjp``) from inside its ``backward``.

    Plainly: the rule with ``T = 1``. Under ``torch.func.vmap`` over the cotangent (the trainer's per-task
    gradients, ``mtpp.training.gradients``), the ``vmap`` rule below hands the rule all cotangents at once, so
    ``T`` tasks cost one backward recurrence instead of ``T``. The rules write into preallocated buffers, so the
    older ``autograd.grad(..., is_grads_batched=True)`` vmap cannot run them and raises a ``RuntimeError``
    (``mtpp.training.gradients`` then takes two backwards); use ``torch.func.vmap``.
    """

    @staticmethod
    def forward(rule: Any, d_hs: Tensor, *saved: Tensor) -> tuple[Tensor, ...]:
        return tuple(g.squeeze(0) for g in rule(d_hs.unsqueeze(0), *saved))

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError("double backward through the fused CPU recurrence is not supported")

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], rule: Any, d_hs: Tensor, *saved: Tensor) -> Any:
        if any(d is not None for d in in_dims[2:]) or in_dims[1] is None:
            raise RuntimeError("the fused CPU recurrence vmaps over its cotangent only")
        out = rule(d_hs.movedim(in_dims[1], 0), *saved)
        return out, (0,) * len(out)


def _gru_forward(
    x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One GRU layer, time-major: ``x [L, B, E]``, ``h0 [B, H]`` -> ``hs [L + 1, B, H]`` (``hs[0] = h0``) and
    what the backward needs: the gates ``rz [L, B, 2H]``, ``n [L, B, H]`` and ``g_n = W_hn h + b_hn [L, B, H]``.

    Gates as ``nn.GRU``: ``r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
    """
    steps, batch, _ = x.shape
    size = h0.shape[-1]
    gi = torch.addmm(b_ih, x.reshape(steps * batch, -1), w_ih.t()).view(steps, batch, 3 * size)
    hs = x.new_empty(steps + 1, batch, size)
    hs[0] = h0
    rz = x.new_empty(steps, batch, 2 * size)
    n = x.new_empty(steps, batch, size)
    gh = x.new_empty(steps, batch, 3 * size)  # W_hh h + b_hh of every step
    w_hh_t = w_hh.t()
    gi_rz, gi_n = gi[..., : 2 * size].unbind(0), gi[..., 2 * size :].unbind(0)
    gh_t, gh_rz, gh_n = gh.unbind(0), gh[..., : 2 * size].unbind(0), gh[..., 2 * size :].unbind(0)
    rz_t, r_t, z_t = rz.unbind(0), rz[..., :size].unbind(0), rz[..., size:].unbind(0)
    n_t, h_t = n.unbind(0), hs.unbind(0)
    for t in range(steps):
        torch.addmm(b_hh, h_t[t], w_hh_t, out=gh_t[t])
        torch.add(gi_rz[t], gh_rz[t], out=rz_t[t]).sigmoid_()
        torch.addcmul(gi_n[t], r_t[t], gh_n[t], out=n_t[t]).tanh_()
        torch.lerp(n_t[t], h_t[t], z_t[t], out=h_t[t + 1])
    return hs, rz, n, gh[..., 2 * size :]


def _rnn_forward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> tuple[Tensor]:
    """One tanh RNN layer, time-major: ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)``; ``x [L, B, E]``, ``h0 [B, H]``
    -> ``(hs [L + 1, B, H],)``."""
    steps, batch, _ = x.shape
    size = h0.shape[-1]
    gi = torch.addmm(b_ih + b_hh, x.reshape(steps * batch, -1), w_ih.t()).view(steps, batch, size)
    hs = x.new_empty(steps + 1, batch, size)
    hs[0] = h0
    w_hh_t = w_hh.t()
    gi_t, h_t = gi.unbind(0), hs.unbind(0)
    for t in range(steps):
        torch.addmm(gi_t[t], h_t[t], w_hh_t, out=h_t[t + 1]).tanh_()
    return (hs,)


def _save_for_rule(table: dict, ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    """``setup_context`` of the fused Functions: keep what ``table[cell]``'s backward rule reads."""
    cell, x, _, *weights = inputs
    hs, *extra = output
    ctx.rule = table[cell][1]
    ctx.save_for_backward(x, weights[0], weights[1], hs, *extra)
    ctx.mark_non_differentiable(*extra)


def _rule_backward(ctx: Any, d_hs: Tensor) -> tuple[Any, ...]:
    """``backward`` of the fused Functions: the saved rule through ``_TaskBatchedVJP`` (``T`` cotangents at once)."""
    grads = _TaskBatchedVJP.apply(ctx.rule, d_hs, *ctx.saved_tensors)
    return (None, *(g if need else None for g, need in zip(grads, ctx.needs_input_grad[1:])))


class _FusedLayer(torch.autograd.Function):
    """``apply(cell, x, h0, w_ih, w_hh, b_ih, b_hh) -> (hs, *saved)``: one layer as one autograd node; ``cell`` is
    ``"gru"`` or ``"rnn"`` (``CELLS``: forward pass and backward rule). Only ``hs`` is differentiable; the other
    outputs are what the backward rule needs.

    Under ``torch.func.vmap`` over a leading member dimension (an ensemble of models with stacked parameters,
    ``mtpp.training.stacked``) the ``vmap`` rule runs ``_FusedMembers``: the same recurrence for ``M`` members in
    one loop of batched matrix products (``baddbmm``), so ``M`` models cost one time loop, not ``M``.
    """

    @staticmethod
    def forward(cell: str, x: Tensor, h0: Tensor, *weights: Tensor) -> tuple[Tensor, ...]:
        return tuple(CELLS[cell][0](x, h0, *weights))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        _save_for_rule(CELLS, ctx, inputs, output)

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor, *_: Any) -> tuple[Any, ...]:
        return _rule_backward(ctx, d_hs)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], cell: str, x: Tensor, h0: Tensor, *weights: Tensor) -> Any:
        members = info.batch_size

        def lead(t: Tensor, dim: int | None) -> Tensor:  # the member dimension first (expanded if unbatched)
            return t.expand(members, *t.shape) if dim is None else t.movedim(dim, 0)

        x_m = lead(x, in_dims[1]).transpose(0, 1).contiguous()  # [L, M, B, E]
        h0_m = lead(h0, in_dims[2]).contiguous()
        w_m = [lead(w, d).contiguous() for w, d in zip(weights, in_dims[3:])]
        out = _FusedMembers.apply(cell, x_m, h0_m, *w_m)
        return out, (1,) * len(out)  # every output is time-major: [L (+ 1), M, B, ...]


class _FusedMembers(torch.autograd.Function):
    """``_FusedLayer`` for ``M`` models at once (stacked parameters): ``apply(cell, x [L, M, B, E], h0 [M, B, H],
    w_ih [M, G, E], w_hh [M, G, H], b_ih [M, G], b_hh [M, G]) -> (hs [L + 1, M, B, H], *saved)``, ``G = 3H``
    (GRU) or ``H`` (RNN). Reached through ``_FusedLayer.vmap``; the backward rules take ``T`` cotangents as the
    single-model ones do (``_TaskBatchedVJP``)."""

    @staticmethod
    def forward(cell: str, x: Tensor, h0: Tensor, *weights: Tensor) -> tuple[Tensor, ...]:
        return tuple(MEMBER_CELLS[cell][0](x, h0, *weights))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        _save_for_rule(MEMBER_CELLS, ctx, inputs, output)

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor, *_: Any) -> tuple[Any, ...]:
        return _rule_backward(ctx, d_hs)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], *args: Any) -> Any:
        raise RuntimeError("the fused CPU recurrence supports one vmap level over members")


def _gru_forward_members(
    x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``_gru_forward`` for ``M`` members: ``x [L, M, B, E]``, ``h0 [M, B, H]``, weights with a leading ``M`` ->
    ``hs [L + 1, M, B, H]``, ``rz [L, M, B, 2H]``, ``n [L, M, B, H]``, ``g_n [L, M, B, H]``; one ``baddbmm`` per
    step for all members."""
    steps, members, batch, _ = x.shape
    size = h0.shape[-1]
    flat = x.transpose(0, 1).reshape(members, steps * batch, -1)
    gi = torch.baddbmm(b_ih.unsqueeze(1), flat, w_ih.transpose(1, 2)).view(members, steps, batch, 3 * size)
    gi = gi.transpose(0, 1)  # [L, M, B, 3H], a view
    hs = x.new_empty(steps + 1, members, batch, size)
    hs[0] = h0
    rz = x.new_empty(steps, members, batch, 2 * size)
    n = x.new_empty(steps, members, batch, size)
    gh = x.new_empty(steps, members, batch, 3 * size)
    w_hh_t, b_hh_1 = w_hh.transpose(1, 2), b_hh.unsqueeze(1)
    gi_rz, gi_n = gi[..., : 2 * size].unbind(0), gi[..., 2 * size :].unbind(0)
    gh_t, gh_rz, gh_n = gh.unbind(0), gh[..., : 2 * size].unbind(0), gh[..., 2 * size :].unbind(0)
    rz_t, r_t, z_t = rz.unbind(0), rz[..., :size].unbind(0), rz[..., size:].unbind(0)
    n_t, h_t = n.unbind(0), hs.unbind(0)
    for t in range(steps):
        torch.baddbmm(b_hh_1, h_t[t], w_hh_t, out=gh_t[t])
        torch.add(gi_rz[t], gh_rz[t], out=rz_t[t]).sigmoid_()
        torch.addcmul(gi_n[t], r_t[t], gh_n[t], out=n_t[t]).tanh_()
        torch.lerp(n_t[t], h_t[t], z_t[t], out=h_t[t + 1])
    return hs, rz, n, gh[..., 2 * size :]


def _gru_vjp_members(
    d_hs: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor, hs: Tensor, rz: Tensor, n: Tensor, hn: Tensor
) -> tuple[Tensor, ...]:
    """``_gru_vjp`` for ``M`` members: cotangents ``d_hs [T, L + 1, M, B, H]`` -> ``(dx [T, L, M, B, E],
    dh0 [T, M, B, H], dW_ih [T, M, 3H, E], dW_hh [T, M, 3H, H], db_ih [T, M, 3H], db_hh [T, M, 3H])``; the same
    factors and loop as ``_gru_vjp`` with ``baddbmm`` over the members."""
    tasks = d_hs.shape[0]
    steps, members, batch, size = n.shape
    rows = batch * tasks
    factors = _gru_factors(hs, rz, n, hn).unsqueeze(3)  # [L, M, B, 1, 4, H]
    d_all = d_hs.permute(1, 2, 3, 0, 4).contiguous()  # [L + 1, M, B, T, H]
    dh = d_hs.new_empty(steps + 1, members, batch, tasks, size)
    dh[steps] = d_all[steps]
    d4 = d_hs.new_empty(steps, members, batch, tasks, 4, size)
    carry = d_hs.new_empty(members, batch, tasks, size)
    w_rot = torch.cat([w_hh[:, 2 * size :], w_hh[:, : 2 * size]], 1)  # [M, 3H, H], rows [n, r, z]
    dh_t, dh_in = dh.unsqueeze(4).unbind(0), dh.unbind(0)
    dh_out = dh.view(steps + 1, members, rows, size).unbind(0)
    d4_t, dg_t = d4.unbind(0), d4.view(steps, members, rows, 4 * size)[..., : 3 * size].unbind(0)
    f_t, z_t, d_t = factors.unbind(0), rz[..., size:].unsqueeze(3).unbind(0), d_all.unbind(0)
    carry_2d = carry.view(members, rows, size)
    for t in range(steps - 1, -1, -1):
        torch.mul(dh_t[t + 1], f_t[t], out=d4_t[t])
        torch.addcmul(d_t[t], dh_in[t + 1], z_t[t], out=carry)
        torch.baddbmm(carry_2d, dg_t[t], w_rot, out=dh_out[t])
    d4 = d4.view(steps, members, batch, tasks, 4 * size)
    gh, gi = d4[..., : 3 * size], d4[..., size:]
    dx = torch.einsum("lmbtg,mge->tlmbe", gi, w_ih)
    dw_ih = torch.einsum("lmbtg,lmbe->tmge", gi, x)
    p_gh = torch.einsum("lmbtg,lmbh->tmgh", gh, hs[:-1])  # rotated row order
    sums = d4.sum((0, 2)).transpose(0, 1)  # [T, M, 4H]
    dw_hh = torch.cat([p_gh[:, :, size:], p_gh[:, :, :size]], 2)
    db_hh = torch.cat([sums[..., size : 3 * size], sums[..., :size]], -1)
    return dx, dh[0].permute(2, 0, 1, 3), dw_ih, dw_hh, sums[..., size:], db_hh


def _rnn_forward_members(
    x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> tuple[Tensor]:
    """``_rnn_forward`` for ``M`` members: ``x [L, M, B, E]`` -> ``(hs [L + 1, M, B, H],)``."""
    steps, members, batch, _ = x.shape
    size = h0.shape[-1]
    flat = x.transpose(0, 1).reshape(members, steps * batch, -1)
    gi = torch.baddbmm((b_ih + b_hh).unsqueeze(1), flat, w_ih.transpose(1, 2)).view(members, steps, batch, size)
    gi = gi.transpose(0, 1)
    hs = x.new_empty(steps + 1, members, batch, size)
    hs[0] = h0
    w_hh_t = w_hh.transpose(1, 2)
    gi_t, h_t = gi.unbind(0), hs.unbind(0)
    for t in range(steps):
        torch.baddbmm(gi_t[t], h_t[t], w_hh_t, out=h_t[t + 1]).tanh_()
    return (hs,)


def _rnn_vjp_members(d_hs: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor, hs: Tensor) -> tuple[Tensor, ...]:
    """``_rnn_vjp`` for ``M`` members (shapes as ``_gru_vjp_members``)."""
    tasks = d_hs.shape[0]
    steps, members, batch, size = hs.shape[0] - 1, hs.shape[1], hs.shape[2], hs.shape[3]
    rows = batch * tasks
    da_dh = torch.addcmul(hs.new_ones(()), hs[1:], hs[1:], value=-1).unsqueeze(3)  # [L, M, B, 1, H]
    d_all = d_hs.permute(1, 2, 3, 0, 4).contiguous()  # [L + 1, M, B, T, H]
    dh = d_hs.new_empty(steps + 1, members, batch, tasks, size)
    dh[steps] = d_all[steps]
    da = d_hs.new_empty(steps, members, batch, tasks, size)
    dh_in, dh_out, f_t = dh.unbind(0), dh.view(steps + 1, members, rows, size).unbind(0), da_dh.unbind(0)
    da_t, da_2d = da.unbind(0), da.view(steps, members, rows, size).unbind(0)
    d_t = d_all.view(steps + 1, members, rows, size).unbind(0)
    for t in range(steps - 1, -1, -1):
        torch.mul(dh_in[t + 1], f_t[t], out=da_t[t])
        torch.baddbmm(d_t[t], da_2d[t], w_hh, out=dh_out[t])
    db = da.sum((0, 2)).transpose(0, 1)  # [T, M, H]
    dx = torch.einsum("lmbth,mhe->tlmbe", da, w_ih)
    dw_ih = torch.einsum("lmbth,lmbe->tmhe", da, x)
    dw_hh = torch.einsum("lmbth,lmbg->tmhg", da, hs[:-1])
    return dx, dh[0].permute(2, 0, 1, 3), dw_ih, dw_hh, db, db.clone()


#: cell name -> (forward pass, backward rule)
CELLS: dict[str, tuple[Any, Any]] = {"gru": (_gru_forward, _gru_vjp), "rnn": (_rnn_forward, _rnn_vjp)}
#: the same for ``M`` stacked members (``_FusedMembers``)
MEMBER_CELLS: dict[str, tuple[Any, Any]] = {
    "gru": (_gru_forward_members, _gru_vjp_members),
    "rnn": (_rnn_forward_members, _rnn_vjp_members),
}


def fused_available(x: Tensor) -> bool:
    """Whether the fused layers should run: CPU, gradients on, no autocast, not being traced by the compiler."""
    return (
        x.device.type == "cpu"
        and torch.is_grad_enabled()
        and x.dtype in (torch.float32, torch.float64)
        and not _cpu_autocast()
        and not torch.compiler.is_compiling()
    )


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled()


def run_fused(rnn: torch.nn.RNNBase, x: Tensor, h0: Tensor) -> Tensor:
    """``rnn(x, h0)[0]`` for a batch-first ``nn.GRU`` / tanh ``nn.RNN`` (any number of layers, with biases),
    computed by the fused layers: ``x [B, L, E]``, ``h0 [layers, B, H]`` -> ``[B, L, H]``. Dropout between layers
    as ``nn.GRU`` applies it (after every layer but the last, in training mode)."""
    cell = "gru" if isinstance(rnn, torch.nn.GRU) else "rnn"
    if not rnn.batch_first or not rnn.bias or rnn.bidirectional or rnn.proj_size:
        raise ValueError("run_fused: needs a batch-first, unidirectional nn.GRU / nn.RNN with biases")
    if isinstance(rnn, torch.nn.RNN) and rnn.nonlinearity != "tanh":
        raise ValueError("run_fused: only the tanh nn.RNN is fused")
    seq = x.transpose(0, 1)  # [L, B, E]
    for k in range(rnn.num_layers):
        w = [getattr(rnn, f"{name}_l{k}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        seq = _FusedLayer.apply(cell, seq.contiguous(), h0[k], *w)[0][1:]
        if rnn.dropout and rnn.training and k < rnn.num_layers - 1:
            seq = torch.nn.functional.dropout(seq, rnn.dropout, training=True)
    return seq.transpose(0, 1)
