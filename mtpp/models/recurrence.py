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
(``mtpp.training.gradients.batched_vjp``), both tasks ride along the batch rows of one backward recurrence. It is
also functional (no in-place writes into shared buffers), so the older ``is_grads_batched`` vmap works through it
too, op by op.

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
    of every step's ``[B * T, H]`` matrix, and the stacked per-step products reshape to ``[L * B, T * G]``
    without copies."""
    return d_hs.permute(1, 2, 0, 3).contiguous()


def _outer(inp: Tensor, d: Tensor, tasks: int) -> Tensor:
    """``sum_{l, b} d[l, b, t] (x) inp[l, b]`` for every task ``t``: ``inp [L, B, E]``, ``d [L, B, T, G]`` ->
    ``[T, G, E]`` (one matrix product; the weight gradient of ``g = inp @ W.T``)."""
    e = inp.shape[-1]
    prod = inp.reshape(-1, e).t() @ d.reshape(-1, d.shape[-1] * tasks)  # [E, T * G]
    return prod.view(e, tasks, -1).permute(1, 2, 0)


def _gru_vjp(
    d_hs: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor, hs: Tensor, rz: Tensor, n: Tensor, hn: Tensor
) -> tuple[Tensor, ...]:
    """Gradients of a ``_GRULayer`` for ``T`` cotangents ``d_hs [T, L + 1, B, H]`` in ONE backward recurrence.
    Returns ``(dx, dh0, dW_ih, dW_hh, db_ih, db_hh)``, each with a leading ``T``.

    ``a_r, a_z, a_n`` are the pre-activations of ``r, z, n`` and ``g = W_hh h + b_hh = [g_r, g_z, g_n]``. Given
    ``dh = dL/dh'`` of a step, everything is ``dh`` times a factor known from the forward pass:
    ``dL/da_n = dh (1 - z)(1 - n^2)``, ``dL/dg_n = dL/da_n r``, ``dL/da_r = dL/da_n g_n r(1 - r)``,
    ``dL/da_z = dh (h - n) z(1 - z)``; then ``dL/dh = dh z + dL/dg @ W_hh``. The four factors of every step are
    computed before the loop, as blocks ``[a_r, a_z, g_n, a_n]``; the loop is one product, one ``addcmul`` and
    one ``addmm`` per step, and ``dL/dg`` (blocks 0-2) and ``dL/d(W_ih x + b_ih)`` (blocks 0, 1, 3) of all steps
    give the weight gradients in two matrix products after it.
    """
    tasks = d_hs.shape[0]
    steps, batch, size = n.shape
    factors = _gru_factors(hs, rz, n, hn)  # [L, B, 4, H]
    d_all = _task_major(d_hs)  # [L + 1, B, T, H]
    d_out, f_t, z_t = d_all[1:].unbind(0), factors.unsqueeze(2).unbind(0), rz[..., size:].unsqueeze(2).unbind(0)
    rows = batch * tasks
    dh = d_out[steps - 1]  # [B, T, H]
    blocks = []
    for t in range(steps - 1, -1, -1):
        d4 = (dh.unsqueeze(-2) * f_t[t]).view(rows, 4 * size)  # [a_r, a_z, g_n, a_n] blocks
        carry = dh * z_t[t] if t == 0 else torch.addcmul(d_out[t - 1], dh, z_t[t])
        dh = torch.addmm(carry.view(rows, size), d4[:, : 3 * size], w_hh).view(batch, tasks, size)
        blocks.append(d4)
    d4 = torch.stack(blocks[::-1]).view(steps, batch, tasks, 4 * size)
    two, three = 2 * size, 3 * size
    # the g_n block is not an input-projection gradient: a zero block in W_ih, dropped from the products
    w_ih4 = torch.cat([w_ih[:two], w_ih.new_zeros(size, w_ih.shape[1]), w_ih[two:]])
    dx = (d4 @ w_ih4).permute(2, 0, 1, 3)
    p_x, p_h, sums = _outer(x, d4, tasks), _outer(hs[:-1], d4, tasks), d4.sum((0, 1))
    dw_ih, db_ih = torch.cat([p_x[:, :two], p_x[:, three:]], 1), torch.cat([sums[:, :two], sums[:, three:]], 1)
    return dx, dh.transpose(0, 1) + d_hs[:, 0], dw_ih, p_h[:, :three], db_ih, sums[:, :three]


def _gru_factors(hs: Tensor, rz: Tensor, n: Tensor, hn: Tensor) -> Tensor:
    """``[L, B, 4, H]``: ``d(a_r, a_z, g_n, a_n) / dh'`` of every step (see ``_gru_vjp``), ten kernels."""
    size = n.shape[-1]
    r, z = rz[..., :size], rz[..., size:]
    out = n.new_empty(*n.shape[:2], 4, size)
    f_r, f_z, f_gn, f_an = out.unbind(2)
    one = n.new_ones(())
    torch.mul(torch.addcmul(one, n, n, value=-1), torch.rsub(z, 1), out=f_an)  # (1 - n^2)(1 - z)
    torch.mul(f_an, r, out=f_gn)
    torch.mul(f_an, hn, out=f_r).mul_(torch.addcmul(r, r, r, value=-1))  # * g_n r(1 - r)
    torch.sub(hs[:-1], n, out=f_z).mul_(torch.addcmul(z, z, z, value=-1))  # (h - n) z(1 - z)
    return out


def _rnn_vjp(d_hs: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor, hs: Tensor) -> tuple[Tensor, ...]:
    """``_gru_vjp`` for a ``_RNNLayer``: ``(dx, dh0, dW_ih, dW_hh, db_ih, db_hh)`` with a leading ``T``;
    ``dL/da = dh (1 - h'^2)``, ``dL/dh = dL/da @ W_hh``."""
    tasks = d_hs.shape[0]
    steps, batch, size = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    da_dh = (1 - hs[1:] * hs[1:]).unsqueeze(2).unbind(0)  # [B, 1, H] per step
    d_out = _task_major(d_hs)[1:].unbind(0)
    rows = batch * tasks
    dh = d_out[steps - 1]
    das = []
    for t in range(steps - 1, -1, -1):
        da = (dh * da_dh[t]).view(rows, size)
        dh = da @ w_hh if t == 0 else torch.addmm(d_out[t - 1].view(rows, size), da, w_hh)
        dh = dh.view(batch, tasks, size)
        das.append(da)
    da = torch.stack(das[::-1]).view(steps, batch, tasks, size)
    db = da.sum((0, 1))
    dx = (da @ w_ih).permute(2, 0, 1, 3)
    return dx, dh.transpose(0, 1) + d_hs[:, 0], _outer(x, da, tasks), _outer(hs[:-1], da, tasks), db, db


class _TaskBatchedVJP(torch.autograd.Function):
    """Runs a layer's backward rule (``_gru_vjp`` / ``_rnn_vjp``) from inside its ``backward``.

    Plainly: the rule with ``T = 1``. Under ``torch.func.vmap`` over the cotangent (the trainer's per-task
    gradients, ``mtpp.training.gradients``), the ``vmap`` rule below hands the rule all cotangents at once, so
    ``T`` tasks cost one backward recurrence instead of ``T``. Under the older ``is_grads_batched`` vmap the plain
    path runs batched op by op: same values, slower.
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


class _GRULayer(torch.autograd.Function):
    """One GRU layer, time-major: ``x [L, B, E]``, ``h0 [B, H]`` -> ``hs [L + 1, B, H]`` (``hs[0] = h0``).

    Gates as ``nn.GRU``: ``r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
    """

    @staticmethod
    def forward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Any:
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

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, ...], output: tuple[Tensor, ...]) -> None:
        x, _, w_ih, w_hh, _, _ = inputs
        hs, rz, n, hn = output
        ctx.save_for_backward(x, w_ih, w_hh, hs, rz, n, hn)
        ctx.mark_non_differentiable(rz, n, hn)

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor, *_: Any) -> tuple[Any, ...]:
        grads = _TaskBatchedVJP.apply(_gru_vjp, d_hs, *ctx.saved_tensors)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


class _RNNLayer(torch.autograd.Function):
    """One tanh RNN layer, time-major: ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)``; ``x [L, B, E]``, ``h0 [B, H]``
    -> ``hs [L + 1, B, H]``."""

    @staticmethod
    def forward(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Any:
        steps, batch, _ = x.shape
        size = h0.shape[-1]
        gi = torch.addmm(b_ih + b_hh, x.reshape(steps * batch, -1), w_ih.t()).view(steps, batch, size)
        hs = x.new_empty(steps + 1, batch, size)
        hs[0] = h0
        w_hh_t = w_hh.t()
        gi_t, h_t = gi.unbind(0), hs.unbind(0)
        for t in range(steps):
            torch.addmm(gi_t[t], h_t[t], w_hh_t, out=h_t[t + 1]).tanh_()
        return hs

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x, _, w_ih, w_hh, _, _ = inputs
        ctx.save_for_backward(x, w_ih, w_hh, output)

    @staticmethod
    def backward(ctx: Any, d_hs: Tensor) -> tuple[Any, ...]:
        grads = _TaskBatchedVJP.apply(_rnn_vjp, d_hs, *ctx.saved_tensors)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


def fused_available(x: Tensor) -> bool:
    """Whether the fused layers should run: CPU, gradients on, no autocast, not being traced by the compiler."""
    return (
        x.device.type == "cpu"
        and torch.is_grad_enabled()
        and x.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def run_fused(rnn: torch.nn.RNNBase, x: Tensor, h0: Tensor) -> Tensor:
    """``rnn(x, h0)[0]`` for a batch-first ``nn.GRU`` / tanh ``nn.RNN`` (any number of layers, with biases),
    computed by the fused layers: ``x [B, L, E]``, ``h0 [layers, B, H]`` -> ``[B, L, H]``. Dropout between layers
    as ``nn.GRU`` applies it (after every layer but the last, in training mode)."""
    layer_fn = _GRULayer if isinstance(rnn, torch.nn.GRU) else _RNNLayer
    if not rnn.batch_first or not rnn.bias or rnn.bidirectional or rnn.proj_size:
        raise ValueError("run_fused: needs a batch-first, unidirectional nn.GRU / nn.RNN with biases")
    if isinstance(rnn, torch.nn.RNN) and rnn.nonlinearity != "tanh":
        raise ValueError("run_fused: only the tanh nn.RNN is fused")
    seq = x.transpose(0, 1)  # [L, B, E]
    for k in range(rnn.num_layers):
        w = [getattr(rnn, f"{name}_l{k}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        out = layer_fn.apply(seq.contiguous(), h0[k], *w)
        seq = (out[0] if isinstance(out, tuple) else out)[1:]
        if rnn.dropout and rnn.training and k < rnn.num_layers - 1:
            seq = torch.nn.functional.dropout(seq, rnn.dropout, training=True)
    return seq.transpose(0, 1)
