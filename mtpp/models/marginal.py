"""The mark forecast ``p(k | H)``: the mark distribution with the next time unknown, marginalised over it.

For a model whose marks depend on the gap (``p(k | tau, H)``: the ``+`` / ``++`` mark decoder, and the joint THP /
SAHP / FNN decoders of ``base``), the mark probability *before* the next event happens is

    p(k | H) = int_0^inf p(k | tau, H) f(tau | H) dtau = int_0^1 p(k | F^{-1}(u), H) du

(the law of total probability; Bosser & Ben Taieb 2024 use the conditional ``p(k | tau, H)`` for ``L_M``). For base
LNM / RMTPP the mark head ignores ``tau``: ``p(k | H)`` is the head itself, exactly.

**Quadrature** (``marginal_mark_log_probs``). Per event, a grid of ``P`` points ``g_0 < ... < g_{P-1}`` evenly spaced
in ``log tau`` between the quantiles ``F^{-1}(eps)`` and ``F^{-1}(1 - eps)``; ``u_j = F(g_j)``. The integral in ``u`` is
the trapezoid rule on the (non-uniform) points ``u_j``, plus the two tails, each given the integrand at its end::

    p(k | H) ~= u_0 g(0) + sum_j (u_{j+1} - u_j) (g(j) + g(j+1)) / 2 + (1 - u_{P-1}) g(P-1)

with ``g(j) = p(k | g_j, H)``. The weights are ``>= 0`` and sum to 1 exactly, so the result is a distribution over
marks for any ``P``. ``F`` on the grid is deterministic even for Monte Carlo compensators: for intensity decoders
(THP / SAHP) it is a cumulative Gauss-Legendre rule over the grid cells (``GRID_NODES`` nodes per cell, one
intensity call for all cells, ``cumulative_hazard_on_grid``), elsewhere the decoder's closed-form ``cdf``. Error:
``O(h^2)`` in the log spacing ``h`` plus ``eps`` in the tails; measured against adaptive quadrature in
``tests/test_forecast_marks.py``. The weighted sum is taken in linear space (a ``[1, P] @ [P, K]`` product of the
probabilities: from the decoder's logits where it has them, ``mark_logits_at``, as ``sum_j (w_j / Z_j)
exp(z_jk - m_j)`` with ``m_j`` the row maximum and ``Z_j`` the row sum of the exponentials, each normaliser computed
once and no ``[P, K]`` division; else its own linear-space probabilities, ``mark_probs_at``; else ``exp`` of the
log-probabilities), except for the events where some mark's forecast underflows the dtype (or a linear-space
intensity did): those take the ``logsumexp`` of the log-probabilities, so a mark improbable at every grid point
keeps a finite log-probability.

**Cost and blocks.** The work is ``P x K`` mark probabilities per event (with the mark MLP, ``P x H x K``
multiply-adds). It is done over blocks of consecutive grid points, ``[*batch, c, K]`` of about
``GRID_BLOCK_ELEMENTS`` elements (``c`` from the first point's ``K``), each accumulated into ``[*batch, K]``, so the
block stays near the core's cache: one ``[P, K]`` tensor per event (40 MB at ``K = 20,000`` in float32) went through
page faults and main memory (measured on one CPU thread, LNM ``+``: 17 -> 27 events per CPU second at
``K = 20,000``, 148 -> 226 at ``K = 2,000``; ``mtpp evaluate``'s system time 17 s -> 0.8 s). The blocks' sum equals the
one-product sum up to float rounding (the order of the additions). A distribution whose marks carry its CDF
(``marks_carry_cdf``: FNN's forward-mode pass gives ``Lambda`` with the marks) is evaluated on the whole grid at once.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from mtpp.models import integrate

GRID_POINTS = 512
"""``P``: points of the log-spaced ``tau`` grid per event, for decoders with a closed-form ``F`` (LNM, RMTPP, FNN):
the grid costs one ``[*batch, P]`` CDF and mark call. A wide log-normal mixture spans ~130 in ``log tau`` between
its 1e-6 and 1 - 1e-6 quantiles: 64 points left errors of 1e-2 there, 256 points 3e-3 (measured on perturbed
models, ``tests/test_forecast_marks.py``), 512 points 7e-4."""
INTENSITY_GRID_POINTS = 128
"""``P`` for intensity decoders (THP / SAHP: every grid cell costs ``GRID_NODES`` intensity evaluations of all ``C``
components); their quantile range is narrower (a softplus rate floor bounds the upper tail). Measured on a perturbed
THP: 64 points 8e-4, 256 points 5e-5 from the converged value."""
TAIL = 1e-6
"""``eps``: the grid spans the quantiles ``eps .. 1 - eps``; each tail's mass is given its end point's marks."""
GRID_NODES = 4
"""Gauss-Legendre nodes per grid cell for the cumulative compensator of intensity decoders (THP / SAHP)."""
GRID_BLOCK_ELEMENTS = 1 << 19
"""Elements of one ``[*batch, c, K]`` block of the quadrature's mark probabilities (2 MiB in float32: near a
core's L2 cache); at least one grid point per block."""


def cumulative_hazard_on_grid(dist: object, grid: Tensor) -> Tensor:
    """``Lambda`` at increasing ``grid: [*batch, P]`` (``> 0``), deterministic, ``[*batch, P]``.

    Intensity decoders with a linear ground intensity (``dist.ground_intensity``): a cumulative Gauss-Legendre rule,
    ``GRID_NODES`` nodes in each cell ``[g_{j-1}, g_j]`` (``g_{-1} = 0``), all cells in one call, summed with
    ``cumsum`` (so ``Lambda`` is non-decreasing on the grid by construction). Others: ``-log S`` in closed form.
    """
    ground = getattr(dist, "ground_intensity", None)
    if ground is None:
        return -dist.log_survival(grid)
    x, w = integrate.gauss_legendre(GRID_NODES, grid.dtype, grid.device)
    left = torch.cat([torch.zeros_like(grid[..., :1]), grid[..., :-1]], dim=-1)
    width = (grid - left).unsqueeze(-1)  # [*batch, P, 1]
    nodes = left.unsqueeze(-1) + width * x  # [*batch, P, n]
    lam = ground(nodes.flatten(-2)).unflatten(-1, nodes.shape[-2:])  # [*batch, P, n]
    return (lam * (width * w)).sum(-1).cumsum(-1)


def survived_icdf(dist: object, u: Tensor, elapsed: Tensor) -> Tensor:
    """``F^{-1}(u | tau > e) = F^{-1}(F(e) + u (1 - F(e)))``, at least ``e``: the quantile function of the gap given
    that no event came in the ``elapsed`` time ``e`` already observed after the last event (a window that ends after
    it), the law of the next gap every forecast after a quiet stretch must use (inverse transform on
    ``U(F(e), 1)``).

    dist: any gap law with ``cdf`` and ``icdf`` (a ``TimeDistribution``, a ``mtpp.forecast`` ``NextEvent``).
    u: ``[*batch]`` or ``[*batch, M]`` probabilities (``M`` per element), its dtype is the sum's;
    elapsed: ``[*batch]``, ``>= 0`` in the distribution's units (``0``: exactly ``icdf(u)``). Where ``F(e)`` is 1 to
    the dtype's rounding (a model that gives the quiet stretch no probability) the quantiles are those of ``u = 1``.
    """
    u0 = dist.cdf(elapsed).to(u.dtype)
    e = elapsed.to(u.dtype)
    if u.dim() > u0.dim():
        u0, e = u0.unsqueeze(-1), e.unsqueeze(-1)
    return torch.maximum(dist.icdf(u0 + u * (1.0 - u0)).to(u.dtype), e)


def quantile_grid(
    dist: object, like: Tensor, points: int = GRID_POINTS, tail: float = TAIL, elapsed: Tensor | None = None
) -> Tensor:
    """``[*batch, P]`` gaps evenly spaced in ``log tau`` from ``F^{-1}(tail)`` to ``F^{-1}(1 - tail)`` (of the law
    given ``tau > elapsed``, ``survived_icdf``, when ``elapsed: [*batch]`` is given).

    ``like: [*batch]``: a tensor of the distribution's batch shape, dtype and device. An end beyond the dtype's
    range is taken at its largest (smallest) finite gap; the mass past it goes with the tail's end point."""
    ends = torch.tensor([tail, 1.0 - tail], dtype=like.dtype, device=like.device).expand(*like.shape, 2)
    if elapsed is None:
        lo, hi = dist.icdf(ends).unbind(-1)  # both ends in one search (one bracketing grid)
    else:
        lo, hi = survived_icdf(dist, ends, elapsed).unbind(-1)
    info = torch.finfo(like.dtype)
    # a quantile beyond the dtype's range (a very wide component: F^{-1}(1 - tail) = inf, or 0 at the low end) is
    # taken at the largest (smallest) finite gap: inf in log space made the grid inf * 0 = NaN and the forecast NaN
    log_lo = torch.log(lo.clamp(info.tiny, info.max))
    log_hi = torch.maximum(torch.log(hi.clamp(info.tiny, info.max)), log_lo)
    frac = torch.linspace(0.0, 1.0, points, dtype=like.dtype, device=like.device)
    grid = torch.exp(log_lo.unsqueeze(-1) + (log_hi - log_lo).unsqueeze(-1) * frac)
    return grid.clamp_max_(info.max)  # exp(log(max)) may round past max


def trapezoid_weights(u: Tensor) -> Tensor:
    """Weights ``[*batch, P]`` of the trapezoid rule in ``u`` on points ``u: [*batch, P]`` plus the two tails.

    Non-negative (``u`` is made non-decreasing first) and summing to exactly 1 (up to rounding).
    """
    u = torch.cummax(u.clamp(0.0, 1.0), dim=-1).values
    du = u[..., 1:] - u[..., :-1]  # [*batch, P-1]
    half = 0.5 * du
    w = torch.zeros_like(u)
    w[..., :-1] += half
    w[..., 1:] += half
    w[..., 0] += u[..., 0]
    w[..., -1] += 1.0 - u[..., -1]
    return w


def marginal_mark_log_probs(
    dist: object,
    like: Tensor,
    mark_log_probs_at: Callable[[Tensor], Tensor],
    points: int | None = None,
    tail: float = TAIL,
    elapsed: Tensor | None = None,
    mark_probs_at: Callable[[Tensor], Tensor] | None = None,
    mark_logits_at: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``log p(k | H): [*batch, K]`` by the quadrature of the module docstring.

    dist: the time distribution (``batch_shape [*batch]``) with ``icdf`` and ``log_survival`` (or
        ``ground_intensity``).
    like: ``[*batch]``, any tensor of the batch shape, dtype and device.
    points: ``P`` (default ``INTENSITY_GRID_POINTS`` for intensity decoders, else ``GRID_POINTS``).
    mark_log_probs_at: ``tau: [*batch, P'] -> log p(k | tau, H): [*batch, P', K]`` for any number ``P'`` of gaps
        per element (it is called on blocks of the grid).
    elapsed: ``[*batch]`` gaps already survived (``>= 0``, the distribution's units), or ``None``: the forecast
        given that no event came in them, ``p(k | H, tau > e) = int_e^inf p(k | tau, H) f(tau | H) dtau / S(e)``
        (the mark forecast after a window that ends after the last event): the same rule on the quantile grid of
        the law given ``tau > e``, with its CDF ``1 - exp(-(Lambda(g) - Lambda(e)))`` (no cancellation near 1).
    mark_probs_at: the same function in linear space, ``tau -> p(k | tau, H)`` (``softmax`` instead of
        ``log_softmax`` then ``exp``; the joint decoders' ``lambda_k / lambda``), or ``None``. Used for the
        weighted sum; ``mark_log_probs_at`` is then called only where that sum underflows or is not finite.
    mark_logits_at: ``tau -> z: [*batch, P', K]`` with ``p(k | tau, H) = softmax_k(z)`` (the mark MLP's output),
        or ``None``; preferred to both others for the weighted sum (each softmax normaliser computed once, folded
        into the weights), and ``log_softmax`` of it replaces ``mark_log_probs_at`` where the sum underflows.
    """
    if points is None:
        points = INTENSITY_GRID_POINTS if hasattr(dist, "ground_intensity") else GRID_POINTS
    grid = quantile_grid(dist, like, points, tail, elapsed)
    whole = None  # [*batch, P, K] probabilities on the whole grid, for a distribution whose marks carry its CDF
    if getattr(dist, "marks_carry_cdf", False):  # the marks first: FNN's forward-mode pass keeps Lambda for F below
        whole = mark_probs_at(grid) if mark_probs_at is not None else torch.exp(mark_log_probs_at(grid))
    if elapsed is not None:
        e = elapsed.to(grid.dtype).unsqueeze(-1)
        if hasattr(dist, "ground_intensity"):  # Lambda(g) - Lambda(e): the cells after e (the first cancels)
            big = cumulative_hazard_on_grid(dist, torch.cat([e, grid], dim=-1))
            u = -torch.expm1(big[..., :1] - big[..., 1:])
        else:
            u = -torch.expm1(dist.log_survival(grid) - dist.log_survival(e))
    elif hasattr(dist, "ground_intensity"):
        u = -torch.expm1(-cumulative_hazard_on_grid(dist, grid))
    else:
        u = dist.cdf(grid)  # closed form (LNM: a sum of ndtr, no log_ndtr)
    w = trapezoid_weights(u)
    # sum_j w_j p(k | g_j): a [1, P] @ [P, K] product per event, in linear space, over blocks of grid points ...
    if whole is not None:
        forecast = (w.unsqueeze(-2) @ whole).squeeze(-2)  # [*batch, K]
    else:
        forecast = _blocked_sum(grid, w, mark_log_probs_at, mark_probs_at, mark_logits_at)
    out = torch.log(forecast)
    # ... except where a mark's probability underflows (or is subnormal) at every grid point, or a linear-space
    # intensity did (0 / 0): there the logsumexp of the log-probabilities keeps it exact (evaluation only: one
    # host sync per chunk)
    lost = ~(forecast >= torch.finfo(forecast.dtype).tiny).all(-1)
    if bool(lost.any()):
        log_w = torch.log(w[lost]).unsqueeze(-1)  # -inf for empty cells: they drop out of the logsumexp
        total = None
        for i, j in _blocks(grid.shape[-1], _block_points(grid, forecast.shape[-1])):
            lp = log_softmax_or(mark_logits_at, mark_log_probs_at, grid[..., i:j])[lost]  # [lost, c, K]
            part = torch.logsumexp(lp + log_w[..., i:j, :], dim=-2)
            total = part if total is None else torch.logaddexp(total, part)
        out[lost] = total
    return out - torch.logsumexp(out, dim=-1, keepdim=True)  # exact normalisation against rounding


def log_softmax_or(logits_at: Callable[[Tensor], Tensor] | None, log_probs_at: Callable[[Tensor], Tensor],
                   tau: Tensor) -> Tensor:  # fmt: skip
    """``log p(k | tau, H): [*batch, P', K]``: ``log_softmax`` of ``logits_at(tau)`` where given, else
    ``log_probs_at(tau)``."""
    return log_probs_at(tau) if logits_at is None else torch.log_softmax(logits_at(tau), dim=-1)


def _block_points(grid: Tensor, num_marks: int) -> int:
    """Grid points per ``[*batch, c, K]`` block: about ``GRID_BLOCK_ELEMENTS`` elements, at least 1."""
    rows = max(1, grid[..., 0].numel())
    return max(1, GRID_BLOCK_ELEMENTS // (rows * max(1, num_marks)))


def _blocks(points: int, size: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``0 .. points`` in steps of ``size``."""
    return [(i, min(i + size, points)) for i in range(0, points, size)]


def _blocked_sum(grid: Tensor, w: Tensor, log_probs_at: Callable[[Tensor], Tensor],
                 probs_at: Callable[[Tensor], Tensor] | None,
                 logits_at: Callable[[Tensor], Tensor] | None) -> Tensor:  # fmt: skip
    """``sum_j w_j p(k | g_j, H): [*batch, K]`` for ``grid, w: [*batch, P]``, over blocks of grid points (the module
    docstring's cost note): the first grid point alone (it gives ``K``), then blocks of ``_block_points``."""

    def block(i: int, j: int) -> Tensor:
        tau, wb = grid[..., i:j], w[..., i:j]
        if logits_at is not None:  # softmax folded into the weights: sum_j (w_j / Z_j) exp(z_jk - m_j)
            z = logits_at(tau)  # [*batch, c, K]
            e = (z - z.amax(-1, keepdim=True)).exp_()
            wb = wb / e.sum(-1)
        else:
            e = probs_at(tau) if probs_at is not None else torch.exp(log_probs_at(tau))
        return (wb.unsqueeze(-2) @ e).squeeze(-2)

    acc = block(0, 1)
    size = _block_points(grid, acc.shape[-1])
    for i, j in _blocks(grid.shape[-1] - 1, size):
        acc.add_(block(i + 1, j + 1))
    return acc
