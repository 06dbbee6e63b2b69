"""Time decoders: ``h: [B, L, D] -> TimeDistribution`` of the gap ``tau`` (the ground process), all in log space.

Registered in ``TIME_DECODERS`` (constructor ``cls(input_size, cfg)``):

- ``"lnm"``   ``LNMDecoder``: mixture of ``C`` log-normals (closed-form density, survival, mean; exact sampling).
- ``"rmtpp"`` ``RMTPPDecoder``: ``lambda(tau) = exp(v.h + b + w tau)``, ``w >= 0``; closed-form compensator / icdf.
- ``"fnn"``   ``FNNDecoder``: a cumulative hazard ``Lambda(tau | h)`` monotone in ``tau`` (Omi et al. 2019).
- ``"thp"``   ``THPDecoder``: ``sum_c softplus(a_c tau + w_c.h + b_c) + mu_c``; compensator by quadrature.
- ``"sahp"``  ``SAHPDecoder``: ``sum_c softplus(mu_c + (eta_c - mu_c) exp(-gamma_c tau))``; quadrature.

The intensity modules (``SoftplusGapIntensity``, ``SAHPIntensity``, ``MonotoneCumulativeHazard``) have a number of
outputs: ``C`` components here, ``K`` marks in ``mtpp.models.joint``: the same code, composed differently.

Shapes: every distribution has ``batch_shape = h.shape[:-1]`` (``[B, L]``); its methods take ``tau: [B, L]`` or
``tau: [B, L, M]`` (``M`` query points per event, e.g. integration nodes) and return the same shape.

**Tie policy** (one rule for every decoder, here and in ``mtpp.models.joint``): a gap below the tie resolution
``delta`` (``TIE_RESOLUTION``, ``model.tie_resolution``; a zero gap above all) is an observation "the event came
within ``delta`` of the previous one", and ``log_prob`` returns its log PROBABILITY ``log F(delta)``; every gap
``tau >= delta`` gets its log density ``log f(tau)``. This is the likelihood of the gaps discretised at ``delta``
(interval censoring of ``[0, delta)``): it is proper, ``F(delta) + int_delta^inf f = 1`` (tested), and a tie's
NLL is ``-log F(delta) >= 0``, so no decoder's NLL can fall without bound on tied data however its density
spikes at 0 (before this rule LNM scored ties at ``log f(1e-10)``: -52.5 nats per sequence on retweet and
falling, and intensity decoders at ``log lambda(0)``, equally unbounded). ``log_survival``, ``cdf`` and ``icdf``
are the exact continuous ones (``S(0) = 1``). Counting ties and warning about them: ``mtpp.models.ties``. The
``p(k | tau, h)`` mark decoder feeds ``log max(tau, TIE_FLOOR)`` as a feature (a feature, not a likelihood).

**Spaces.** Densities, survivals and intensities at the query gaps are in log space. The one exception is by
design: the integrand of a numerical compensator (THP, SAHP) on its ``N`` nodes is evaluated in LINEAR space as a
sum of positive terms (``ComponentIntensities.ground``: ``softplus`` plus a floor), which is exact to rounding and
avoids a ``log``/``exp`` round trip and ``logaddexp``/``logsumexp`` on the ``[B, L, N, C]`` tensor (see
``IntensityDistribution``); overflow for huge arguments is as in log space (``softplus(x) ~ x``).

**Normalisation.** Every density here integrates to 1 over ``[0, inf)`` for every parameter value (proper, not
defective): each class docstring says which constraint guarantees ``Lambda(inf) = inf``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtpp.errors import ConfigError
from mtpp.models import compiled, integrate
from mtpp.models.config import RMTPP_FORMS, ModelConfig
from mtpp.models.registry import TIME_DECODERS


class _LogNdtr(torch.autograd.Function):
    """``torch.special.log_ndtr`` with a derivative that is right in the far tails and a ``vmap`` rule (torch 2.13
    has none: its fallback loops over the batch).

    ``d/dz log Phi(z) = phi(z) / Phi(z) = sqrt(2 / pi) / erfcx(-z / sqrt(2))`` (``erfcx(x) = exp(x^2) erfc(x)``, the
    scaled complementary error function; Abramowitz & Stegun 7.1.2), ``~ -z`` as ``z -> -inf`` and ``-> 0`` as
    ``z -> inf``, without cancellation. torch's own rule ``exp(-(log Phi(z) + z^2 / 2)) / sqrt(2 pi)`` subtracts two
    numbers of size ``z^2 / 2``: in float32 it gives 955 instead of 1000 at ``z = -1e3``, 0.40 instead of 1e5 at
    ``-1e5``, and NaN once ``log Phi(z)`` is ``-inf`` (``z < -1.8e19``), where a mixture component far from the
    tie point turned an LNM training step's gradient NaN (the MOOC lnm ++ split 1 cell of the Table 1 grid stopped
    after 20 such batches in a row)."""

    @staticmethod
    def forward(z: Tensor) -> Tensor:
        return torch.special.log_ndtr(z)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
        (z,) = ctx.saved_tensors
        return grad * (math.sqrt(2.0 / math.pi) / torch.special.erfcx(z * -math.sqrt(0.5)))

    @staticmethod
    def vmap(info, in_dims, z: Tensor):  # type: ignore[no-untyped-def]
        return _LogNdtr.apply(z), in_dims[0]  # element-wise: the batched tensor as it is


def log_ndtr(z: Tensor) -> Tensor:
    """``log Phi(z)``: ``torch.special.log_ndtr``'s values, with the derivative of ``_LogNdtr`` (right in the far
    tails, finite everywhere) and a batching rule for ``torch.func`` (``mtpp.training.stacked``)."""
    if z.requires_grad or torch._C._are_functorch_transforms_active():
        return _LogNdtr.apply(z)
    return torch.special.log_ndtr(z)

TIE_FLOOR = 1e-10
"""Smallest gap of the ``log tau`` FEATURE of the ``p(k | tau, h)`` mark decoder and of LNM's hazard (not used by
any likelihood: see the tie policy)."""

TIE_RESOLUTION = 1e-6
"""Default tie resolution ``delta`` (decoder time units; after the model's time scale the median gap is ~1): gaps
below it score ``log F(delta)`` (module docstring, "Tie policy"). ``model.tie_resolution`` overrides it."""


def interval_log_prob(log_s_lo: Tensor, log_s_hi: Tensor) -> Tensor:
    """``log(S(lo) - S(hi))`` from ``log S`` at ``lo <= hi``: ``log S(lo) + log1mexp(Lambda(hi) - Lambda(lo))``."""
    return log_s_lo + log1mexp((log_s_lo - log_s_hi).clamp_min(0.0))


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(-x))`` for ``x >= 0`` (Maechler 2012, "Accurately computing log(1 - exp(-|a|))"): ``expm1``
    below ``log 2``, ``log1p`` above. ``x`` below the smallest normal number is taken at it (a finite, huge NLL
    instead of ``-inf`` for a compensator that underflowed)."""
    x = x.clamp(min=torch.finfo(x.dtype).tiny)
    small = x < math.log(2.0)
    return torch.where(
        small,
        torch.log(-torch.expm1(-torch.where(small, x, torch.ones_like(x)))),
        torch.log1p(-torch.exp(-torch.where(small, torch.ones_like(x), x))),
    )

LOG_TAU_BRACKET = (-30.0, 30.0)
"""Quantile search range in ``log tau`` for distributions without a closed-form quantile (~1e-13 to ~1e13)."""

BISECTION_STEPS = 40
"""Fixed bisection steps of FNN's ``icdf``: the bracket width 60 shrinks to ``60 / 2**40 ~ 5e-11`` in ``log tau``."""

QUANTILE_GRID_STEP = 2.0
"""Spacing in ``log tau`` of the grid over ``LOG_TAU_BRACKET`` on which ``icdf`` first brackets the quantile (31
points): ``Lambda`` at every grid point comes from ONE batched call (``_grid_hazard``), or, where one point of the
exact rule is costly, from a binary search over the grid points (``_search_grid``), so the Newton search starts
inside a cell of width 2 from a log-log interpolation instead of the whole bracket."""

QUANTILE_GRID_NODES = 4
"""Gauss-Legendre nodes per grid cell for the cumulative compensator of THP / SAHP on the grid under ``"mc"`` /
``"gauss_legendre"`` (a guide only: the search then inverts the decoder's own ``num_nodes`` rule). Under
``"adaptive"`` the grid uses the rule itself: a 4-node guide misplaced the bracket of a THP component switching on
sharply (cdf(icdf(u)) off by a factor 8, measured)."""

NEWTON_STEPS = 16
"""Safeguarded Newton steps of ``icdf`` after the grid (hazard-based decoders), in ``log Lambda`` vs ``log tau``.
Each costs one ``(Lambda, lambda)`` evaluation of the batch (one compensator call with the query point appended for
THP / SAHP; one forward-mode pass for FNN). Steps that would leave the bracket or do not shrink fast enough are
bisections (``_safeguarded_newton``). 16, not 10: a THP component switching on sharply inside one grid cell
(slope 1e3) needed 15 to invert to rounding (10 left cdf(icdf(u)) 26 % off at u = 1e-4; measured)."""

LNM_NEWTON_STEPS = 20
"""Fixed steps of the log-normal mixture's safeguarded Newton search (one ``log_ndtr`` per component per step)."""

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_HALF = math.sqrt(0.5)


# ----------------------------------------------------------------------------------------------- numerics helpers


def log_softplus(x: Tensor) -> Tensor:
    """``log(softplus(x))`` without underflow: ``x - exp(x) / 2`` for ``x < -15`` (error < 1e-13), finite gradients."""
    thr = -15.0
    small = x < thr
    lo = x.clamp(max=thr)
    hi = x.clamp(min=thr)
    return torch.where(small, lo - 0.5 * torch.exp(lo), torch.log(F.softplus(hi)))


def inverse_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (for initialising positive parameters)."""
    return y + math.log(-math.expm1(-y))


def _expand_params(p: Tensor, tau: Tensor, batch_dims: int, event_dims: int = 1) -> Tensor:
    """View ``p: [*batch, *event]`` as ``[*batch, 1 ... 1, *event]`` to broadcast against ``tau: [*batch, *extra]``."""
    extra = tau.dim() - batch_dims
    if extra <= 0:
        return p
    shape = p.shape
    return p.reshape(*shape[:batch_dims], *([1] * extra), *shape[batch_dims : batch_dims + event_dims])


def thp_node_intensity(base: Tensor, tau: Tensor, slope: Tensor) -> Tensor:
    """``sum_j softplus(base_j + slope_j tau)``: the softplus part of THP's ground intensity on integration nodes.

    ``base: [*batch, 1 ... 1, J]`` (broadcast against ``tau``), ``tau: [*batch, *extra]``, ``slope: [J]`` ->
    ``[*batch, *extra]``. A function of tensors only, so ``train.compile_integrand`` can compile it
    (``mtpp.models.compiled``)."""
    return _sum_last(F.softplus(torch.addcmul(base, tau.unsqueeze(-1), slope)))


def sahp_node_intensity(mu: Tensor, eta: Tensor, gamma: Tensor, tau: Tensor) -> Tensor:
    """``sum_j softplus(mu_j + (eta_j - mu_j) exp(-gamma_j tau))``: SAHP's ground intensity on integration nodes
    (parameters ``[*batch, 1 ... 1, J]`` broadcast against ``tau: [*batch, *extra]`` -> ``[*batch, *extra]``);
    see ``thp_node_intensity``."""
    return _sum_last(F.softplus(torch.addcmul(mu, eta - mu, torch.exp(-gamma * tau.unsqueeze(-1)))))


def _sum_last(x: Tensor) -> Tensor:
    """``x.sum(-1)`` as a product with a vector of ones: on the ``[B, L, N, J]`` node tensor its backward gives a
    contiguous gradient (an outer product) instead of a stride-0 expansion, which made the following elementwise
    backward (``softplus_backward``, the ``addcmul`` gradients) about 1.5x slower on CPU (measured: node path
    forward + backward 2.7 -> 1.8 ms at ``[64, 37, 20, 10]``). Callers run it with autocast off (the likelihood)."""
    return torch.matmul(x, x.new_ones(x.shape[-1]))


def _overflow_safe_exp(x: Tensor) -> Tensor:
    """``exp(x)`` for ``x <= M``, continued linearly ``exp(M) (1 + x - M)`` above (C1, finite, nonzero gradient).

    ``M = log(finfo.max) / 2`` (~44 in float32, ~354 in float64): only values that are already astronomical
    (a survival of ``exp(-1e19)`` or less) are affected, so a loss never becomes ``inf``.
    """
    m = 0.5 * math.log(torch.finfo(x.dtype).max)
    below = x.clamp(max=m)
    above = x.clamp(min=m)
    return torch.where(x <= m, torch.exp(below), math.exp(m) * (1.0 + above - m))


def _safeguarded_newton(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]], x: Tensor, lo: Tensor, hi: Tensor, steps: int
) -> Tensor:
    """Root of an increasing ``g`` in ``[lo, hi]`` (``g(lo) <= 0 <= g(hi)``) by at most ``steps`` safeguarded
    Newton steps.

    ``fn(x) -> (g(x), g'(x))`` elementwise. Every evaluation shrinks the bracket by the sign of ``g``; the next
    point is the Newton point where it lies in the bracket and the step is at most half the step before last
    (``rtsafe``; steps below ``sqrt(eps)`` are always taken: near the root they are rounding noise, and a
    bisection of a still one-sided bracket would throw the iterate far away), else the bracket's midpoint.
    NaN or infinite ``g`` / ``g'`` fall back to bisection. Returns the last iterate (always inside the bracket).

    Convergence: an element whose last two steps were both below ``sqrt(eps)`` is converged (Newton is quadratic
    there, so the next step would be at rounding level) and is frozen; the loop ends when every element is, so
    a typical batch takes 4-6 evaluations instead of ``steps`` (one host sync per step, outside any training
    step). Freezing makes each element's result its own trajectory's, whatever else is in the batch.
    """
    tol = math.sqrt(torch.finfo(x.dtype).eps)  # steps this small are always taken (rounding noise of g)
    dx = hi - lo
    dx_old = dx
    small = torch.zeros_like(x, dtype=torch.bool)
    done = torch.zeros_like(x, dtype=torch.bool)
    for _ in range(steps):
        g, dg = fn(x)
        below = g < 0
        lo = torch.where(below, x, lo)
        hi = torch.where(below, hi, x)
        newton = x - g / dg
        step = (newton - x).abs()
        fast = (2.0 * step <= dx_old) | (step <= tol)
        ok = (newton >= lo) & (newton <= hi) & fast  # False for NaN
        nxt = torch.where(ok, newton, 0.5 * (lo + hi))
        dx_old = dx
        dx = (nxt - x).abs()
        x = torch.where(done, x, nxt)
        done = done | (small & (dx <= tol))
        small = dx <= tol
        if bool(done.all()):
            break
    return x


# ----------------------------------------------------------------------------------------------- distributions


class HazardDistribution:
    """Shared machinery of the gap distributions, defined by ``log_intensity`` and ``cumulative_hazard``.

    Subclasses implement ``log_intensity(tau)`` (``log lambda``) and ``cumulative_hazard(tau)`` (``Lambda``);
    this class derives ``log_prob = log lambda - Lambda``, ``log_survival = -Lambda``, ``cdf = -expm1(-Lambda)``,
    ``icdf`` by a grid bracket and safeguarded Newton on ``log Lambda(tau) = log(-log1p(-u))`` in ``log tau``
    (see ``icdf``; bracket ``LOG_TAU_BRACKET``, quantiles outside it are returned at its edge), and ``sample`` by
    inverse transform.

    ``tau`` may be ``[*batch_shape]`` or ``[*batch_shape, M]`` (trailing query points); lower-rank ``tau`` is
    broadcast to ``batch_shape``.
    """

    tie_resolution: float = TIE_RESOLUTION
    """``delta`` of the tie policy (module docstring); decoders set it from ``model.tie_resolution``."""

    def __init__(self, batch_shape: torch.Size, dtype: torch.dtype, device: torch.device) -> None:
        self.batch_shape = torch.Size(batch_shape)
        self.dtype = dtype
        self.device = device
        self._cache: dict[str, tuple[Tensor, int, bool, Tensor]] = {}

    # -- values kept for the very tensor they were computed at (identity, unchanged version, same grad mode)
    def _cached(self, key: str, tau: Tensor) -> Tensor | None:
        hit = self._cache.get(key)
        if hit is None or hit[0] is not tau or hit[2] != torch.is_grad_enabled():
            return None
        if not torch.compiler.is_compiling() and hit[1] != tau._version:
            return None
        return hit[3]

    def _store(self, key: str, tau: Tensor, value: Tensor) -> Tensor:
        version = 0 if torch.compiler.is_compiling() else tau._version
        self._cache[key] = (tau, version, torch.is_grad_enabled(), value)
        return value

    def _ties(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        """``(tie, t)``: ``tie = tau < delta`` and the gap the terms are evaluated at, ``t = max(tau, delta)``."""
        tie = tau < self.tie_resolution
        return tie, torch.where(tie, torch.full_like(tau, self.tie_resolution), tau)

    # -- shapes
    @property
    def _nb(self) -> int:
        return len(self.batch_shape)

    def _align(self, tau: Tensor) -> Tensor:
        tau = torch.as_tensor(tau, dtype=self.dtype, device=self.device)
        if tau.dim() < self._nb:
            tau = tau.expand(self.batch_shape)
        return tau

    def _p(self, p: Tensor, tau: Tensor, event_dims: int = 1) -> Tensor:
        return _expand_params(p, tau, self._nb, event_dims)

    # -- to implement
    def log_intensity(self, tau: Tensor) -> Tensor:
        """``log lambda(tau)`` (the hazard), same shape as ``tau``."""
        raise NotImplementedError

    def cumulative_hazard(self, tau: Tensor) -> Tensor:
        """``Lambda(tau) = int_0^tau lambda(s) ds``, same shape as ``tau``."""
        raise NotImplementedError

    # -- derived
    def log_prob(self, tau: Tensor) -> Tensor:
        """``log f(tau) = log lambda(tau) - Lambda(tau)`` for ``tau >= delta``; ``log F(delta)`` at ties (the tie
        policy); both from ONE ``Lambda`` evaluation at ``max(tau, delta)``."""
        tau = self._align(tau)
        tie, t = self._ties(tau)
        big = self.cumulative_hazard(t)
        return torch.where(tie, log1mexp(big), self.log_intensity(t) - big)

    def log_survival(self, tau: Tensor) -> Tensor:
        """``log S(tau) = -Lambda(tau)``."""
        return -self.cumulative_hazard(self._align(tau))

    def cdf(self, tau: Tensor) -> Tensor:
        """``F(tau) = 1 - S(tau)``, computed as ``-expm1(log S)`` (accurate near 0)."""
        return -torch.expm1(self.log_survival(tau))

    def log_interval_prob(self, lo: Tensor, hi: Tensor) -> Tensor:
        """``log P(lo <= tau < hi) = log(S(lo) - S(hi))`` for ``0 <= lo < hi`` (same shape), as
        ``log S(lo) + log(1 - exp(-(Lambda(hi) - Lambda(lo))))``: no cancellation of two survival values near 1.
        The probability of a lattice bin (``mtpp.data.lattice``); finite (``log1mexp``'s floor) when the two
        ``Lambda`` agree to rounding."""
        return interval_log_prob(self.log_survival(lo), self.log_survival(hi))

    def _quantile_hazard(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        """``(Lambda(tau), log lambda(tau))``: the deterministic, monotone ``Lambda`` that ``icdf`` inverts and
        (an approximation of) its derivative, which only steers the search. Subclasses evaluate both in one pass."""
        return self.cumulative_hazard(tau), self.log_intensity(tau)

    _grid_is_exact = True
    """Whether ``_grid_hazard`` is the very ``Lambda`` that ``icdf`` inverts (else the bracket is widened by a cell)."""

    _grid_by_search = False
    """Whether ``icdf`` finds the grid cell by binary search (``_search_grid``: ``ceil(log2(G + 1))`` calls of the
    exact ``Lambda`` at one point per quantile) instead of ``Lambda`` at all ``G`` grid points: for rules where a
    point costs much (SAHP's ``"adaptive"`` rule, ``C x N`` nodes per point). Needs ``_grid_is_exact``."""

    def _grid_hazard(self, log_grid: Tensor) -> Tensor:
        """``Lambda`` at ``exp(log_grid): [G]`` for every batch element: ``[*batch_shape, G]``, in one call."""
        return self.cumulative_hazard(torch.exp(log_grid).expand(*self.batch_shape, -1))

    def _exact_hazard(self, tau: Tensor) -> Tensor:
        """The very ``Lambda`` that ``icdf`` inverts at ``tau: [*batch, *extra]`` (``_search_grid``'s points)."""
        return self.cumulative_hazard(tau)

    def _search_grid(self, grid: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(k, log Lambda(e^grid[k - 1]), log Lambda(e^grid[k]))`` per quantile, ``k`` the number of grid points
        with ``Lambda < target`` (``target: [*batch, *extra]``, ``grid: [G]`` increasing), by binary search over
        the grid indices: ``ceil(log2(G + 1))`` calls of ``_exact_hazard`` at one point per quantile. ``Lambda``
        is non-decreasing, so ``k`` is the count the full grid gives, at ``5 / 31`` of its points' cost for one
        quantile (``G = 31``; ``S`` quantiles per element cost ``5 S`` points, more than the grid for ``S > 6``:
        ``sample`` with many draws per element). The two values are those at the cell's ends; where ``k`` is 0 or ``G`` (outside the
        grid; the caller's bracket is then one point) they are placeholders (0)."""
        n = grid.shape[0]
        lo = torch.full(target.shape, -1, dtype=torch.long, device=target.device)  # Lambda(grid[lo]) < target
        hi = torch.full(target.shape, n, dtype=torch.long, device=target.device)  # Lambda(grid[hi]) >= target
        log_lo = torch.zeros_like(target)
        log_hi = torch.zeros_like(target)
        for _ in range(math.ceil(math.log2(n + 1))):  # the interval hi - lo halves (at least) every step
            active = hi - lo > 1
            mid = torch.div(lo + hi, 2, rounding_mode="floor").clamp(0, n - 1)
            big = self._exact_hazard(torch.exp(grid[mid]))
            below = big < target
            log_big = torch.log(big)
            lo, log_lo = torch.where(active & below, mid, lo), torch.where(active & below, log_big, log_lo)
            hi, log_hi = torch.where(active & ~below, mid, hi), torch.where(active & ~below, log_big, log_hi)
        return hi, log_lo, log_hi

    def icdf(self, u: Tensor) -> Tensor:
        """``F^{-1}(u)``: the ``tau`` with ``Lambda(tau) = E = -log1p(-u)``; ``u = 0`` gives 0.

        1. ``Lambda`` on the grid of ``LOG_TAU_BRACKET`` with spacing ``QUANTILE_GRID_STEP`` (one batched call,
           ``_grid_hazard``, or a binary search over the grid, ``_search_grid``, where ``_grid_by_search``) gives the
           cell that holds the quantile and a start by log-log interpolation.
        2. At most ``NEWTON_STEPS`` safeguarded Newton steps (``_safeguarded_newton``, which stops when every element
           has converged) on ``g(x) = log Lambda(e^x) - log E``
           in ``x = log tau``, slope ``g'(x) = tau lambda(tau) / Lambda(tau)``, inside the cell (widened by a cell
           on each side where the grid ``Lambda`` is only a guide).

        Quantiles outside the bracket are returned at its edge (``u = 1`` gives the upper edge). No data-dependent
        branching inside a step (one host sync per Newton step for the convergence test; icdf is not on the training
        path); memory of one grid call / one ``log_prob``.
        """
        u = self._align(u)
        log_target = torch.log(-torch.log1p(-u))  # -inf at u = 0, inf at u = 1
        a, b = LOG_TAU_BRACKET
        n_grid = int(round((b - a) / QUANTILE_GRID_STEP)) + 1
        grid = torch.linspace(a, b, n_grid, dtype=self.dtype, device=self.device)
        if self._grid_by_search:
            assert self._grid_is_exact, "the grid search needs the very Lambda icdf inverts"
            k, f0, f1 = self._search_grid(grid, torch.exp(log_target))  # the same k as the full grid
        else:
            big = self._grid_hazard(grid)  # [*batch, G], non-decreasing (up to rounding: may be <= 0 near 0)
            if u.dim() > self._nb:  # trailing query points: the grid is per batch element
                big = _expand_params(big, u, self._nb)
            k = (big < torch.exp(log_target).unsqueeze(-1)).sum(-1)  # grid points below the quantile
            log_big = torch.log(big).expand(*u.shape, n_grid)
            j = (k - 1).clamp(0, n_grid - 2).unsqueeze(-1)  # the cell [grid[j], grid[j + 1]] of the start
            f0, f1 = log_big.gather(-1, j).squeeze(-1), log_big.gather(-1, j + 1).squeeze(-1)
        pad = 0 if self._grid_is_exact else 1
        lo = grid[(k - 1 - pad).clamp(0, n_grid - 1)]
        hi = grid[(k + pad).clamp(0, n_grid - 1)]
        x_lo = grid[(k - 1).clamp(0, n_grid - 2)]
        frac = torch.nan_to_num((log_target - f0) / (f1 - f0), nan=0.5).clamp(0.0, 1.0)
        x0 = torch.minimum(torch.maximum(x_lo + frac * QUANTILE_GRID_STEP, lo), hi)

        def g(x: Tensor) -> tuple[Tensor, Tensor]:
            big, log_rate = self._quantile_hazard(torch.exp(x))
            log_big = torch.log(big)
            return log_big - log_target, torch.exp(x + log_rate - log_big)

        x = _safeguarded_newton(g, x0, lo, hi, NEWTON_STEPS)
        x = torch.where(u >= 1, torch.full_like(x, b), x)
        return torch.where(u > 0, torch.exp(x), torch.zeros_like(x))

    def sample(self, sample_shape: torch.Size = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        """Exact samples ``[*sample_shape, *batch_shape]`` by inverse transform ``icdf(U)``, ``U ~ U(0, 1)``."""
        sample_shape = torch.Size(sample_shape)
        u = torch.rand(
            (*self.batch_shape, max(sample_shape.numel(), 1)),
            dtype=self.dtype,
            device=self.device,
            generator=generator,
        )
        u = u.clamp_min(torch.finfo(self.dtype).tiny)
        x = self.icdf(u)  # [*batch, S]
        return x.movedim(-1, 0).reshape(*sample_shape, *self.batch_shape)


class LogNormalMixture(HazardDistribution):
    """Mixture of ``C`` log-normals (ifl-tpp): ``f(tau) = sum_c w_c LogNormal(tau; m_c, s_c)``.

    Args: ``log_weights, means, log_scales: [*batch, C]`` (``log_weights`` normalised over ``C``).

    Closed forms: log density by ``logsumexp``; ``log S = logsumexp_c(log w_c + log_ndtr(-(log tau - m_c)/s_c))``
    (no clamped CDF); mean ``sum_c w_c exp(m_c + s_c^2 / 2)``; exact sampling (component, then normal).
    ``icdf`` by safeguarded Newton in ``log tau`` inside ``[min_c q_c(u), max_c q_c(u)]`` (the component quantiles
    bracket the mixture quantile). Ties: ``log F(delta)`` from ``log_ndtr`` (the tie policy; no density floor, so
    no mass below any floor is lost).
    """

    def __init__(self, log_weights: Tensor, means: Tensor, log_scales: Tensor) -> None:
        super().__init__(means.shape[:-1], means.dtype, means.device)
        self.log_weights = log_weights
        self.means = means
        self.log_scales = log_scales

    def _params(self, tau: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self._p(self.log_weights, tau), self._p(self.means, tau), self._p(self.log_scales, tau)

    def _log_density(self, tau: Tensor) -> Tensor:
        """``log f(tau)`` for ``tau > 0``."""
        log_w, m, log_s = self._params(tau)
        x = torch.log(tau).unsqueeze(-1)
        z = (x - m) * torch.exp(-log_s)
        comp = -0.5 * z.square() - log_s - _HALF_LOG_2PI - x
        return torch.logsumexp(log_w + comp, dim=-1)

    def log_prob(self, tau: Tensor) -> Tensor:
        """``log f(tau)`` for ``tau >= delta``, ``log F(delta)`` below (the tie policy), both in closed form."""
        tau = self._align(tau)
        tie, t = self._ties(tau)
        return torch.where(tie, self._log_cdf(torch.full_like(tau, self.tie_resolution)), self._log_density(t))

    def log_survival(self, tau: Tensor) -> Tensor:
        tau = self._align(tau)
        log_w, m, log_s = self._params(tau)
        positive = tau > 0
        safe = torch.where(positive, tau, torch.ones_like(tau))  # S(0) = 1 exactly; no inf * 0 gradients
        z = (torch.log(safe).unsqueeze(-1) - m) * torch.exp(-log_s)
        log_s_tau = torch.logsumexp(log_w + log_ndtr(-z), dim=-1)
        return torch.where(positive, log_s_tau, torch.zeros_like(log_s_tau))

    def cdf(self, tau: Tensor) -> Tensor:
        """``F(tau) = sum_c w_c Phi((log tau - m_c) / s_c)`` with ``Phi(z) = erfc(-z / sqrt 2) / 2``: no logarithms
        (about ten times cheaper than ``log_ndtr`` + ``logsumexp`` on CPU; the mark forecast's quadrature evaluates
        it on ``GRID_POINTS`` gaps per event, ``mtpp.models.marginal``). Absolute error a few units of the dtype's
        epsilon; small ``F`` keeps its relative precision (``erfc``, unlike torch's ``ndtr = (1 + erf) / 2``, is
        precise in the lower tail, and the terms are all non-negative). ``F(0) = 0``."""
        tau = self._align(tau)
        log_w, m, log_s = self._params(tau)
        positive = tau > 0
        safe = torch.where(positive, tau, torch.ones_like(tau))
        z = (torch.log(safe).unsqueeze(-1) - m) * torch.exp(-log_s)
        f = (torch.erfc(z * -_SQRT_HALF) * (0.5 * torch.exp(log_w))).sum(-1).clamp(0.0, 1.0)
        return torch.where(positive, f, torch.zeros_like(f))

    def _log_cdf(self, tau: Tensor) -> Tensor:
        log_w, m, log_s = self._params(tau)
        z = (torch.log(tau).unsqueeze(-1) - m) * torch.exp(-log_s)
        return torch.logsumexp(log_w + log_ndtr(z), dim=-1)

    def cumulative_hazard(self, tau: Tensor) -> Tensor:
        return -self.log_survival(tau)

    def log_intensity(self, tau: Tensor) -> Tensor:
        """Hazard ``log f - log S``, the density taken at ``max(tau, TIE_FLOOR)`` (finite at 0)."""
        tau = self._align(tau)
        return self._log_density(tau.clamp_min(TIE_FLOOR)) - self.log_survival(tau)

    def icdf(self, u: Tensor) -> Tensor:
        """Safeguarded Newton (``LNM_NEWTON_STEPS``) in ``x = log tau`` inside the exact bracket
        ``[min_c q_c(u), max_c q_c(u)]`` of the component quantiles, from the weighted mean of the ``q_c``.

        One tail per element and step, chosen before the ``logsumexp`` (one ``log_ndtr`` per component):
        ``g = log F(x) - log u`` for ``u <= 1/2``, ``g = log(1 - u) - log S(x)`` above (the side where the
        comparison is precise); ``g' = p(x) / F(x)`` resp. ``p(x) / S(x)`` with ``p`` the density of ``log tau``.
        ``u <= 0`` gives 0, ``u >= 1`` gives ``inf``.
        """
        u = self._align(u)
        tiny = torch.finfo(self.dtype).tiny
        u_in = u.clamp(tiny, 1.0 - torch.finfo(self.dtype).eps)
        log_w, m, log_s = self._params(u_in)
        inv_s = torch.exp(-log_s)
        q = m + torch.exp(log_s) * torch.special.ndtri(u_in).unsqueeze(-1)  # component quantiles, log tau
        lo = q.amin(-1)
        hi = q.amax(-1)
        x0 = (log_w.exp() * q).sum(-1).clamp(lo, hi)
        upper = u_in > 0.5
        sign = torch.where(upper, -1.0, 1.0).to(self.dtype)  # tail: log_ndtr(sign * z) is log F or log S
        log_p = torch.where(upper, torch.log1p(-u_in), torch.log(u_in))
        log_dens_w = log_w - log_s - _HALF_LOG_2PI  # component densities of log tau, without the exponent

        def g(x: Tensor) -> tuple[Tensor, Tensor]:
            z = (x.unsqueeze(-1) - m) * inv_s
            log_tail = torch.logsumexp(log_w + log_ndtr(sign.unsqueeze(-1) * z), dim=-1)
            log_dens = torch.logsumexp(log_dens_w - 0.5 * z.square(), dim=-1)
            return sign * (log_tail - log_p), torch.exp(log_dens - log_tail)

        tau = torch.exp(_safeguarded_newton(g, x0, lo, hi, LNM_NEWTON_STEPS))
        zero = torch.zeros_like(tau)
        return torch.where(u <= 0, zero, torch.where(u >= 1, torch.full_like(tau, math.inf), tau))

    def sample(self, sample_shape: torch.Size = torch.Size(), generator: torch.Generator | None = None) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        shape = (*sample_shape, *self.batch_shape)
        c = self.means.shape[-1]
        gumbel_u = torch.rand((*shape, c), dtype=self.dtype, device=self.device, generator=generator)
        gumbel = -torch.log(-torch.log(gumbel_u.clamp_min(torch.finfo(self.dtype).tiny)))
        idx = (self.log_weights + gumbel).argmax(-1, keepdim=True)  # Gumbel-max: component ~ w
        m = torch.gather(self.means.expand(*shape, c), -1, idx).squeeze(-1)
        s = torch.gather(self.log_scales.expand(*shape, c), -1, idx).squeeze(-1).exp()
        eps = torch.randn(shape, dtype=self.dtype, device=self.device, generator=generator)
        return torch.exp(m + s * eps)

    def mean(self) -> Tensor:
        """``E[tau] = sum_c w_c exp(m_c + s_c^2 / 2)``: ``[*batch_shape]``."""
        return torch.exp(torch.logsumexp(self.log_weights + self.means + 0.5 * torch.exp(2 * self.log_scales), -1))

    def mean_above(self, elapsed: Tensor) -> Tensor:
        """``E[tau | tau > e]``, ``[*batch_shape]`` for ``elapsed: [*batch_shape]`` (``>= 0``; 0 gives ``mean``):
        the partial expectations ``E[tau; tau > e] = exp(m_c + s_c^2 / 2) Phi((m_c + s_c^2 - log e) / s_c)`` of the
        components, weighted, over ``S(e)``; in log space."""
        e = self._align(elapsed)
        positive = e > 0
        log_e = torch.log(torch.where(positive, e, torch.ones_like(e)))
        scale = torch.exp(self.log_scales)
        z = (self.means + scale.square() - log_e.unsqueeze(-1)) / scale
        z = torch.where(positive.unsqueeze(-1), z, torch.full_like(z, math.inf))  # e = 0: Phi = 1
        log_part = torch.logsumexp(self.log_weights + self.means + 0.5 * scale.square() + log_ndtr(z), -1)
        return torch.exp(log_part - self.log_survival(e))


class RMTPPDistribution(HazardDistribution):
    """``lambda(tau) = mu + exp(c + w tau)`` (Du et al. 2016 with ``mu = 0``), ``c: [*batch]``, ``w`` and ``mu``
    scalars or broadcastable to ``c``.

    ``Lambda(tau) = mu tau + exp(c) (exp(w tau) - 1) / w = mu tau + exp(c) tau phi(w tau)`` with
    ``phi(x) = expm1(x) / x``, computed as ``log phi`` by a series (``x/2 + x^2/24``) for ``|x| < 1e-4``,
    ``x + log(-expm1(-x)) - log x`` above and ``log(-expm1(x)) - log(-x)`` below, through ``torch.where`` with safe
    inputs in every branch: values and gradients are finite at ``w = 0`` (the Poisson limit ``exp(c) tau``).
    ``mu = None`` (no baseline) needs ``w >= 0`` (``w < 0`` would be a defective distribution: ``Lambda(inf)`` finite);
    with ``mu > 0``, ``w`` may take either sign (a hazard that decays onto ``mu``; ``Lambda(inf) = inf``). The
    decoder guarantees both with softplus. Closed-form ``icdf`` without a baseline, else the generic search of
    ``HazardDistribution.icdf``. Overflow guard: see ``_overflow_safe_exp``.
    """

    _SMALL = 1e-4

    def __init__(self, log_base: Tensor, w: Tensor, mu: Tensor | None = None) -> None:
        super().__init__(log_base.shape, log_base.dtype, log_base.device)
        self.log_base = log_base
        self.w = torch.as_tensor(w, dtype=log_base.dtype, device=log_base.device)
        self.mu = None if mu is None else torch.as_tensor(mu, dtype=log_base.dtype, device=log_base.device)

    def _cw(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        c = self._p(self.log_base, tau, 0)
        w = self.w if self.w.dim() == 0 else self._p(self.w.expand(self.batch_shape), tau, 0)
        return c, w

    def log_intensity(self, tau: Tensor) -> Tensor:
        tau = self._align(tau)
        c, w = self._cw(tau)
        if self.mu is None:
            return c + w * tau
        return torch.logaddexp(torch.log(self.mu), c + w * tau)

    def cumulative_hazard(self, tau: Tensor) -> Tensor:
        tau = self._align(tau)
        c, w = self._cw(tau)
        x = w * tau
        small = x.abs() < self._SMALL
        up = x >= self._SMALL
        xs = torch.where(small, torch.ones_like(x), x.abs())  # |x| away from 0 in the two outer branches
        xl = torch.where(small, x, torch.zeros_like(x))
        log_phi = torch.where(
            small,
            xl / 2 + xl.square() / 24,
            torch.where(up, xs + torch.log(-torch.expm1(-xs)), torch.log(-torch.expm1(-xs))) - torch.log(xs),
        )
        big = tau * _overflow_safe_exp(c + log_phi)
        return big if self.mu is None else big + self.mu * tau

    def icdf(self, u: Tensor) -> Tensor:
        """``tau = log1p(w E e^-c) / w`` with ``E = -log1p(-u)`` (series ``1 - y/2 + y^2/3`` of ``log1p(y)/y``);
        with a baseline ``mu``, the generic search (``HazardDistribution.icdf``)."""
        if self.mu is not None:
            return super().icdf(u)
        u = self._align(u)
        c, w = self._cw(u)
        r = -torch.log1p(-u) * torch.exp(-c)  # Poisson limit E e^{-c}
        y = w * r
        small = y < self._SMALL
        ys = torch.where(small, torch.ones_like(y), y)
        yl = torch.where(small, y, torch.zeros_like(y))
        ratio = torch.where(small, 1 - yl / 2 + yl.square() / 3, torch.log1p(ys) / ys)
        return r * ratio


class IntensityDistribution(HazardDistribution):
    """Ground process of ``C`` component intensities without a closed-form integral (THP, SAHP).

    Args:
        component_log_intensity: ``tau: [*batch, *extra] -> [*batch, *extra, C]`` (``log lambda_c``); a
            ``ComponentIntensities`` (what the intensity modules return) also gives the linear-space ground
            intensity used on the integration nodes.
        batch_shape, dtype, device: of the parameters.
        method, num_nodes, generator: the compensator rule (see ``mtpp.models.integrate``).
        stream: ``[*batch]`` int64 keys of the histories (``integrate.history_streams``) for counter-based Monte
            Carlo nodes (``integrate.counter_uniforms``; what the decoders pass in evaluation), or ``None``: fresh
            ``torch.rand`` nodes on every call (training). Used by ``"mc"`` only.
        ground_intensity: ``tau: [*batch, *extra] -> [*batch, *extra]``, ``sum_c lambda_c`` in linear space;
            default: ``component_log_intensity.ground`` when it has one, else ``exp(logsumexp_c log lambda_c)``.

    **Two spaces.** ``Lambda`` by ``integrate.integral`` of the LINEAR ground intensity on all ``N`` nodes in one
    call (a sum of positive terms: no ``log``/``exp`` round trip, no ``logsumexp`` over components on the
    ``[*batch, N, C]`` tensor); ``log lambda(tau) = logsumexp_c log lambda_c(tau)`` in log space at the query
    points only (``[*batch, C]``). ``log_prob`` makes these two calls.

    **Cache at the observed gaps.** ``log_prob(tau)`` keeps ``(tau, Lambda(tau))`` and the component log
    intensities at ``tau``; a later ``cumulative_hazard`` / ``log_survival`` / ``cdf`` or ``mark_log_probs`` /
    ``log_intensity`` with the very same tensor (identity, unchanged version counter, same grad mode) reuses them
    instead of recomputing: exactly the same values, and with ``"mc"`` the PIT of ``score`` uses the same nodes as
    its NLL (at gaps below the tie resolution the kept ``Lambda`` is interpolated, see ``log_prob``). Any other
    ``tau`` is computed afresh.

    ``"mc"`` nodes: fresh on every call without ``stream`` (training); with it (evaluation), a function of (the
    history's key, the query gap, the node index) only (``integrate.counter_uniforms``), so a reported number does
    not depend on the batching and two evaluations agree.

    ``cdf`` uses the configured rule. With ``"mc"`` the compensator is an unbiased estimate of ``Lambda`` and so is
    ``log_prob = log lambda - Lambda`` (linear in it) at ``tau >= delta``, but the ``cdf = 1 - exp(-Lambda)``, the
    survival and the tie term ``log F(delta)`` are NOT: ``1 - exp(-x)`` is concave, so by Jensen's inequality
    ``E[cdf_mc] <= cdf``, biased low by about ``exp(-Lambda) Var[Lambda_mc] / 2`` (tested). Reported values use
    the evaluation rule (``"adaptive"`` by default: deterministic). ``icdf`` and ``sample`` invert a deterministic
    ``Lambda``: the ``"adaptive"`` rule when it is configured, else Gauss-Legendre with ``num_nodes`` nodes.
    """

    def __init__(
        self,
        component_log_intensity: Callable[[Tensor], Tensor],
        batch_shape: torch.Size,
        dtype: torch.dtype,
        device: torch.device,
        method: str = "gauss_legendre",
        num_nodes: int = 50,
        generator: torch.Generator | None = None,
        ground_intensity: Callable[[Tensor], Tensor] | None = None,
        stream: Tensor | None = None,
    ) -> None:
        super().__init__(batch_shape, dtype, device)
        self.component_log_intensity = component_log_intensity
        if ground_intensity is None:
            ground_intensity = getattr(component_log_intensity, "ground", None)
        self._ground = ground_intensity
        self._adaptive = getattr(component_log_intensity, "compensator", None)
        if method == "adaptive" and self._adaptive is None:
            raise ConfigError(
                "integration 'adaptive' needs an intensity module with a per-component rule (SoftplusGapIntensity, "
                "SAHPIntensity); use 'gauss_legendre' or 'mc' for this intensity"
            )
        self.method = method
        self._grid_is_exact = method == "adaptive"
        self._grid_by_search = method == "adaptive"  # one point of the rule costs C x N nodes (SAHP)
        self.num_nodes = num_nodes
        self.generator = generator
        self.stream = stream
        # SAHP's rule costs C x N nodes per point: the grid search is guided by the cheap cumulative guide
        self._guided_search = method == "adaptive" and not getattr(component_log_intensity, "closed_form", False)

    # -- the two spaces
    def ground_intensity(self, tau: Tensor) -> Tensor:
        """``lambda(tau) = sum_c lambda_c(tau)`` in linear space (the integrand of ``Lambda``)."""
        if self._ground is not None:
            return self._ground(tau)
        return torch.logsumexp(self.component_log_intensity(tau), dim=-1).exp()  # no linear form given

    def _event_log_rates(self, tau: Tensor) -> Tensor:
        """``log lambda_c(tau): [*tau.shape, C]`` (log space), cached for this very ``tau``."""
        hit = self._cached("log_rates", tau)
        if hit is not None:
            return hit
        return self._store("log_rates", tau, self.component_log_intensity(tau))

    def log_intensity(self, tau: Tensor) -> Tensor:
        return torch.logsumexp(self._event_log_rates(self._align(tau)), dim=-1)

    def _compensator(self, tau: Tensor) -> Tensor:
        if self.method == "adaptive":
            return self._adaptive(tau, self.num_nodes)
        stream = None if self.stream is None else self._p(self.stream, tau, 0)
        return integrate.integral(self.ground_intensity, tau, self.method, self.num_nodes, self.generator, stream)

    def cumulative_hazard(self, tau: Tensor) -> Tensor:
        tau = self._align(tau)
        hit = self._cached("Lambda", tau)
        if hit is not None:
            return hit
        return self._compensator(tau)

    _grid_is_exact = False

    def _exact_hazard(self, tau: Tensor) -> Tensor:
        """Under ``"adaptive"``: the rule itself (exact, so the bracket needs no widening), at one point per
        quantile of the binary search (``_grid_by_search``; memory ``[*batch, *extra, C, N]`` for SAHP)."""
        return self._adaptive(tau, self.num_nodes)

    def _search_grid(self, grid: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``HazardDistribution._search_grid``'s ``(k, log Lambda(e^grid[k - 1]), log Lambda(e^grid[k]))``, where
        one point of the rule is costly (SAHP's ``"adaptive"`` rule: ``C x N`` nodes), from a guide checked by the
        rule: ``k`` as the cumulative Gauss-Legendre guide on the whole grid counts it (``_grid_hazard``, one
        intensity call of ``G x QUANTILE_GRID_NODES`` points per element, shared by its quantiles), then the exact
        ``Lambda`` at the cell's two ends (2 points per quantile instead of the binary search's 5). Where they
        confirm it (``Lambda(grid[k - 1]) < target <= Lambda(grid[k])``; ``Lambda`` is non-decreasing, so ``k`` is
        then the binary search's), the values are the binary search's own, bit for bit; elsewhere (a guide off by
        a cell: a component switching on sharply) the binary search's result is taken."""
        if not self._guided_search:
            return super()._search_grid(grid, target)
        n = grid.shape[0]
        guide = self._grid_hazard(grid)  # [*batch, G]
        if target.dim() > self._nb:
            guide = _expand_params(guide, target, self._nb)
        k = (guide < target.unsqueeze(-1)).sum(-1)
        ends = torch.stack([(k - 1).clamp(0, n - 1), k.clamp(0, n - 1)], dim=-1)  # [*batch, *extra, 2]
        big = self._exact_hazard(torch.exp(grid[ends]))
        below, above = big[..., 0] < target, big[..., 1] >= target
        ok = torch.where(k == 0, above, torch.where(k == n, below, below & above))
        log_big = torch.log(big)
        zero = torch.zeros_like(target)  # the binary search's placeholders outside the grid
        f0 = torch.where(k == 0, zero, log_big[..., 0])
        f1 = torch.where(k == n, zero, log_big[..., 1])
        if not bool(ok.all()):
            k_s, f0_s, f1_s = super()._search_grid(grid, target)
            k, f0, f1 = torch.where(ok, k, k_s), torch.where(ok, f0, f0_s), torch.where(ok, f1, f1_s)
        return k, f0, f1

    def _grid_hazard(self, log_grid: Tensor) -> Tensor:
        """``Lambda`` on the grid ``[*batch, G]`` (under ``"adaptive"`` only SAHP's guide, ``_search_grid``): a guide,
        cumulative Gauss-Legendre with ``QUANTILE_GRID_NODES`` nodes in each cell ``[t_{g-1}, t_g]``
        (``t_{-1} = 0``), every node of every cell in ONE intensity call ``[*batch, G n]``."""
        x, w = integrate.gauss_legendre(QUANTILE_GRID_NODES, self.dtype, self.device)
        t = torch.exp(log_grid)
        left = torch.cat([t.new_zeros(1), t[:-1]])
        width = (t - left).unsqueeze(-1)  # [G, 1]
        nodes = (left.unsqueeze(-1) + width * x).reshape(-1)  # [G n]
        lam = self.ground_intensity(nodes.expand(*self.batch_shape, -1))
        cells = (lam.unflatten(-1, (t.shape[0], x.shape[0])) * (width * w)).sum(-1)
        return cells.cumsum(-1)

    def _quantile_hazard(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        """The deterministic ``Lambda`` that ``icdf`` inverts (the ``"adaptive"`` rule when configured, else
        Gauss-Legendre with ``num_nodes``, also under ``"mc"``) and ``log lambda(tau)``."""
        if self.method == "adaptive":
            big = self._adaptive(tau, self.num_nodes)
        else:
            big = integrate.integral(self.ground_intensity, tau, "gauss_legendre", self.num_nodes)
        return big, torch.logsumexp(self.component_log_intensity(tau), dim=-1)

    def log_prob(self, tau: Tensor) -> Tensor:
        """``log lambda(tau) - Lambda(tau)``, ``log F(delta)`` at ties (the tie policy): ``Lambda`` at
        ``max(tau, delta)`` by the rule (nodes in linear space, one ``[*batch, N]`` call), ``log lambda`` in log
        space at ``tau`` (one ``[*batch, C]`` call); both kept for this ``tau`` (see the class docstring; at gaps
        below ``delta`` the kept ``Lambda(tau)`` is ``Lambda(delta) tau / delta``: exact at 0, off by at most
        ``delta^2 max|lambda'| / 2`` between)."""
        tau = self._align(tau)
        tie, t = self._ties(tau)
        big = self._compensator(t)
        self._store("Lambda", tau, torch.where(tie, big * (tau / self.tie_resolution), big))
        return torch.where(tie, log1mexp(big), self.log_intensity(tau) - big)


class CumulativeHazardDistribution(HazardDistribution):
    """Ground process of ``C`` component cumulative hazards given in closed form by a network (FNN).

    Args: ``hazards(tau: [*batch, *extra], with_rate: bool) -> (Lambda_c, lambda_c)``, both
    ``[*batch, *extra, C]``, with ``lambda_c > 0`` (``None`` when ``with_rate`` is False).
    ``Lambda = sum_c Lambda_c``, ``lambda = sum_c lambda_c``.
    """

    def __init__(
        self,
        hazards: Callable[..., tuple[Tensor, Tensor | None]],
        batch_shape: torch.Size,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__(batch_shape, dtype, device)
        self.hazards = hazards

    def _rated(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        """``(Lambda_c, lambda_c)`` from one forward-mode pass; ``Lambda`` is kept for this very ``tau``, so a
        following ``cumulative_hazard`` / ``cdf`` / ``log_survival`` at it costs nothing (the mark forecast's grid:
        marks, then ``F``; ``mtpp.models.marginal``). The same values as the value-only pass (the same operations)."""
        big, small = self.hazards(tau)
        self._store("Lambda", tau, big.sum(-1))
        return big, small

    def component_log_intensity(self, tau: Tensor) -> Tensor:
        return torch.log(self._rated(self._align(tau))[1])

    def log_intensity(self, tau: Tensor) -> Tensor:
        return torch.log(self._rated(self._align(tau))[1].sum(-1))

    def cumulative_hazard(self, tau: Tensor) -> Tensor:
        tau = self._align(tau)
        hit = self._cached("Lambda", tau)
        return hit if hit is not None else self.hazards(tau, with_rate=False)[0].sum(-1)

    def log_prob(self, tau: Tensor) -> Tensor:
        """``log lambda - Lambda`` (one forward-mode pass), ``log F(delta)`` at ties (the tie policy)."""
        tau = self._align(tau)
        tie, t = self._ties(tau)
        big, small = self.hazards(t)
        big = big.sum(-1)
        return torch.where(tie, log1mexp(big), torch.log(small.sum(-1)) - big)

    def _quantile_hazard(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        """``Lambda`` and its exact derivative ``lambda`` from one forward-mode pass."""
        big, small = self.hazards(tau)
        return big.sum(-1), torch.log(small.sum(-1))

    def icdf(self, u: Tensor) -> Tensor:
        """Plain bisection (``BISECTION_STEPS``) of ``Lambda(tau) = -log1p(-u)`` in ``log tau`` over
        ``LOG_TAU_BRACKET``: a value-only ``Lambda`` pass of this network is several times cheaper than the
        forward-mode pass Newton needs, and a ``[*batch, G]`` grid call costs as much as the whole bisection
        (measured), so the grid + Newton search of ``HazardDistribution.icdf`` would be slower here."""
        u = self._align(u)
        target = -torch.log1p(-u)
        lo = torch.full_like(u, LOG_TAU_BRACKET[0])
        hi = torch.full_like(u, LOG_TAU_BRACKET[1])
        for _ in range(BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            left = self.cumulative_hazard(torch.exp(mid)) < target
            lo = torch.where(left, mid, lo)
            hi = torch.where(left, hi, mid)
        tau = torch.exp(0.5 * (lo + hi))
        return torch.where(u > 0, tau, torch.zeros_like(tau))


# ----------------------------------------------------------------------------------------------- intensity modules


class ComponentIntensities:
    """The ``J`` intensities of a batch of histories in two representations of the same function, and (where the
    module has one) their compensator by the ``"adaptive"`` rule.

    - ``self(tau)`` / ``log(tau)``: ``log lambda_j(tau): [*batch, *extra, J]`` in log space (no underflow): for the
      density and the mark probabilities at the event times, computed on ``[B, L, J]`` only.
    - ``rates(tau)``: ``lambda_j(tau)`` in linear space, and ``ground(tau) = sum_j lambda_j(tau): [*batch, *extra]``:
      for the integration nodes, where only the ground intensity is needed and the values are sums of positive
      terms (no ``log``/``exp`` round trip, no ``logaddexp``/``logsumexp`` on the ``[B, L, N, J]`` tensor).
    - ``compensator(tau, num_nodes) -> sum_j int_0^tau lambda_j: [*batch, *extra]``: each component integrated by
      a rule that follows its own scale (closed form for THP, sinh-mapped Gauss-Legendre for SAHP; see
      ``mtpp.models.integrate``); ``None`` where the module has none. ``closed_form``: whether it is a closed form
      (one point costs ``J`` terms, not ``J x N`` nodes: how ``IntensityDistribution.icdf`` searches its grid).

    Calling the object gives the log intensities, so it can be passed wherever a ``component_log_intensity``
    callable is expected.
    """

    def __init__(
        self,
        log: Callable[[Tensor], Tensor],
        rates: Callable[[Tensor], Tensor],
        ground: Callable[[Tensor], Tensor] | None = None,
        compensator: Callable[[Tensor, int], Tensor] | None = None,
        closed_form: bool = False,
    ) -> None:
        self.log = log
        self.rates = rates
        self.ground = ground if ground is not None else (lambda tau: rates(tau).sum(-1))
        self.compensator = compensator
        self.closed_form = closed_form

    def __call__(self, tau: Tensor) -> Tensor:
        return self.log(tau)


class SoftplusGapIntensity(nn.Module):
    """THP-style intensities ``lambda_j(tau) = softplus(a_j tau + w_j.h + b_j) + mu_j`` for ``j < num_outputs``.

    Time feature: the gap ``tau`` since the last event. (THP uses ``(t - t_j) / t_j``, which needs the absolute
    clock that a decoder given ``h`` does not see, and is singular at ``t_j = 0``; the Bosser et al. reference
    uses the gap too.) The slope ``a_j`` is free in sign (init -0.1 as in THP) so intensities may rise or decay.

    Compensator (``"adaptive"`` rule): in closed form, ``int_0^tau softplus(a s + b) ds = tau * mean of softplus
    over [b, b + a tau]`` through the dilogarithm (``integrate.softplus_mean``), exact for every slope and scale.

    Normalisation: with ``a_j < 0`` the softplus term decays to 0 and ``Lambda(inf)`` would be finite (a defective
    density). The learned floor ``mu_j = softplus(rho_j) > 0`` (initialised so that ``sum_j mu_j = 1e-3``) makes
    ``lambda(tau) >= sum_j mu_j > 0``, hence ``Lambda(inf) = inf`` and ``f`` integrates to 1 for every value of the
    parameters. At event times in log space, ``log lambda_j = logaddexp(log_softplus(.), log_softplus(rho_j))``; on
    integration nodes in linear space, ``softplus(.) + mu_j`` (a sum of positives: exact to rounding, no log/exp
    round trip on the node tensor).
    """

    def __init__(self, input_size: int, num_outputs: int) -> None:
        super().__init__()
        self.num_outputs = num_outputs
        self.linear = nn.Linear(input_size, num_outputs)
        self.slope = nn.Parameter(torch.full((num_outputs,), -0.1))
        self.floor = nn.Parameter(torch.full((num_outputs,), inverse_softplus(1e-3 / num_outputs)))
        self.compile_integrand = False  # train.compile_integrand (mtpp.models.compiled); not in the state dict
        with torch.no_grad():  # initial ground rate ~1 whatever the number of outputs
            self.linear.bias.fill_(inverse_softplus(1.0 / num_outputs))

    def forward(self, h: Tensor) -> ComponentIntensities:
        """``h: [*batch, D]`` -> ``ComponentIntensities`` of ``tau: [*batch, *extra]``: ``log lambda_j`` (log space,
        for event times) and ``lambda_j`` / ``sum_j lambda_j`` (linear space, for integration nodes)."""
        base = self.linear(h)  # [*batch, J]
        nb = h.dim() - 1
        slope = self.slope.to(base.dtype)
        floor = F.softplus(self.floor.to(base.dtype))
        log_floor = log_softplus(self.floor.to(base.dtype))

        def arg(tau: Tensor) -> Tensor:
            return torch.addcmul(_expand_params(base, tau, nb), tau.unsqueeze(-1), slope)

        def component_log_intensity(tau: Tensor) -> Tensor:
            return torch.logaddexp(log_softplus(arg(tau)), log_floor)

        def component_intensity(tau: Tensor) -> Tensor:
            return F.softplus(arg(tau)) + floor

        def ground_intensity(tau: Tensor) -> Tensor:
            node = compiled.integrand(thp_node_intensity, self.compile_integrand)
            return node(_expand_params(base, tau, nb), tau, slope) + floor.sum()

        def compensator(tau: Tensor, num_nodes: int) -> Tensor:  # closed form; num_nodes unused
            start = _expand_params(base, tau, nb)  # [*batch, *extra, J]
            t = tau.unsqueeze(-1)
            mean = integrate.softplus_mean(start, torch.addcmul(start, t, slope))
            return tau * (mean.sum(-1) + floor.sum())

        return ComponentIntensities(component_log_intensity, component_intensity, ground_intensity, compensator,
                                    closed_form=True)  # fmt: skip


class SAHPIntensity(nn.Module):
    """SAHP intensities ``lambda_j(tau) = softplus(mu_j + (eta_j - mu_j) exp(-gamma_j tau))``.

    ``mu, eta, gamma`` are linear in ``h``, ``gamma = softplus(.) > 0``. Normalisation is automatic: as
    ``tau -> inf`` the intensity tends to ``softplus(mu_j) > 0``, so ``Lambda(inf) = inf``.

    Compensator (``"adaptive"`` rule), per component: ``tau softplus(mu) + (1 / gamma) int_{y0}^1 D(y) dy`` with
    ``y = exp(-gamma s)``, ``y0 = exp(-gamma tau)`` and ``D(y) = (softplus(mu + (eta - mu) y) - softplus(mu)) / y``
    (bounded, smooth on ``[0, 1]``): the decay, however fast, becomes the fixed interval ``[y0, 1]``, and the one
    feature left, the softplus transition at ``y* = -mu / (eta - mu)`` of width ``1 / |eta - mu|``, is resolved by
    the sinh-mapped Gauss-Legendre rule clustered there (``integrate.sinh_gauss_legendre``, in ``1 - y``).
    """

    def __init__(self, input_size: int, num_outputs: int) -> None:
        super().__init__()
        self.num_outputs = num_outputs
        self.linear = nn.Linear(input_size, 3 * num_outputs)
        self.compile_integrand = False  # train.compile_integrand (mtpp.models.compiled); not in the state dict
        with torch.no_grad():  # mu, eta biases: initial ground rate ~1 whatever the number of outputs
            self.linear.bias[: 2 * num_outputs].fill_(inverse_softplus(1.0 / num_outputs))

    def forward(self, h: Tensor) -> ComponentIntensities:
        """``h: [*batch, D]`` -> ``ComponentIntensities`` (log space for event times, linear for nodes)."""
        mu, eta, gamma_raw = self.linear(h).chunk(3, dim=-1)  # [*batch, J] each
        gamma = F.softplus(gamma_raw)
        nb = h.dim() - 1

        def arg(tau: Tensor) -> Tensor:
            m, e, g = (_expand_params(p, tau, nb) for p in (mu, eta, gamma))
            return torch.addcmul(m, e - m, torch.exp(-g * tau.unsqueeze(-1)))

        def component_log_intensity(tau: Tensor) -> Tensor:
            return log_softplus(arg(tau))

        def component_intensity(tau: Tensor) -> Tensor:
            return F.softplus(arg(tau))

        def ground_intensity(tau: Tensor) -> Tensor:
            node = compiled.integrand(sahp_node_intensity, self.compile_integrand)
            return node(*(_expand_params(p, tau, nb) for p in (mu, eta, gamma)), tau)

        def compensator(tau: Tensor, num_nodes: int) -> Tensor:
            m, e, g = (_expand_params(p, tau, nb) for p in (mu, eta, gamma))  # [*batch, *extra, J]
            t = tau.unsqueeze(-1)
            d = e - m
            length = -torch.expm1(-g * t)  # 1 - y0, y0 = exp(-gamma tau)
            centre = 1.0 + m / torch.where(d == 0, torch.ones_like(d), d)  # 1 - y* where mu + d y* = 0
            scale = 1.0 / d.abs().clamp(min=1.0)
            delta, w = integrate.sinh_gauss_legendre(length, centre, scale, num_nodes)  # [..., J, N]
            y = 1.0 - delta
            rise = F.softplus(torch.addcmul(e.unsqueeze(-1), d.unsqueeze(-1), delta, value=-1.0))
            rise = rise - F.softplus(m).unsqueeze(-1)
            excess = (w * rise / y).sum(-1) / g  # int_0^tau [lambda_j - softplus(mu_j)] ds
            return (t * F.softplus(m) + excess).sum(-1)

        return ComponentIntensities(component_log_intensity, component_intensity, ground_intensity, compensator)


class MonotoneCumulativeHazard(nn.Module):
    """FullyNN (Omi et al. 2019) cumulative hazards ``Lambda_j(tau | h)``, ``j < num_outputs``, one network.

    ``z1 = tanh(u * x(tau) + A h + a)``, ``z2 = tanh(W z1 + b)``, ``o = V z2 + c`` with ``u, W, V >= 0`` (softplus of
    free parameters) so every ``o_j`` is non-decreasing in ``tau``; then
    ``Lambda_j(tau) = softplus(o_j(tau)) - softplus(o_j(0)) + eps_j tau`` with ``eps_j = softplus(.) > 0``:
    ``Lambda_j(0) = 0`` exactly, ``lambda_j >= eps_j > 0`` (finite ``log lambda`` everywhere, also at ties), and
    ``Lambda_j -> inf`` so the density integrates to 1.

    Time feature ``x(tau) = log1p(tau)``: monotone, 0 at 0 and finite there (``log tau`` is neither), ~``tau`` for
    small gaps and ~``log tau`` for large ones, so the tanh units resolve gaps over several orders of magnitude.

    ``lambda_j = dLambda_j / dtau`` is exact, by the chain rule written out (forward mode, tangent 1 on ``tau``):
    ``x' = 1 / (1 + tau)``, ``z1' = (1 - z1^2) u x'``, ``z2' = (1 - z2^2) W z1'``, ``o' = V z2'``,
    ``lambda_j = sigmoid(o_j) o_j' + eps_j``. One pass gives all ``J`` derivatives (reverse-mode ``autograd.grad``
    would need one pass per output), it is differentiable for training and needs no autograd under
    ``torch.no_grad()``. It equals ``torch.func.jvp`` of the value to rounding (``tests/test_time_decoders.py``) at
    about half the cost of a training step of this module (measured: 1.7-2.1 ms against 3.3-3.8 ms at batch 8 x
    60 events, 32 hidden units and outputs, one thread).
    """

    def __init__(self, input_size: int, num_outputs: int, hidden_size: int) -> None:
        super().__init__()
        self.num_outputs = num_outputs
        self.context = nn.Linear(input_size, hidden_size)
        self.tau_weight = nn.Parameter(torch.empty(hidden_size))
        self.hidden_weight = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.hidden_bias = nn.Parameter(torch.zeros(hidden_size))
        self.out_weight = nn.Parameter(torch.empty(num_outputs, hidden_size))
        self.out_bias = nn.Parameter(torch.zeros(num_outputs))
        self.slope = nn.Parameter(torch.empty(num_outputs))
        self.reset_positive_weights()

    def reset_positive_weights(self) -> None:
        """Positive weights ``softplus(raw)`` of about ``1 / fan_in`` (so the initial rate is O(1)); output biases
        and slopes scaled by ``1 / J`` so the initial ground rate does not grow with the number of outputs."""
        h = self.hidden_weight.shape[0]
        j = self.out_weight.shape[0]
        with torch.no_grad():
            self.tau_weight.uniform_(-1.0, 1.0)
            self.hidden_weight.uniform_(math.log(0.5 / h), math.log(2.0 / h))
            self.out_weight.uniform_(math.log(0.5 / h), math.log(2.0 / h))
            self.out_bias.fill_(inverse_softplus(1.0 / j))
            self.slope.fill_(inverse_softplus(0.05 / j))

    def forward(self, h: Tensor) -> Callable[..., tuple[Tensor, Tensor | None]]:
        """``h: [*batch, D]`` -> ``hazards(tau: [*batch, *extra], with_rate=True) -> (Lambda_j, lambda_j)``, both
        ``[*batch, *extra, J]`` (``lambda_j`` is ``None`` when ``with_rate=False``: no forward-mode pass)."""
        ctx = self.context(h)  # [*batch, H]
        nb = h.dim() - 1
        dtype = ctx.dtype
        u = F.softplus(self.tau_weight).to(dtype)
        w = F.softplus(self.hidden_weight).to(dtype)
        v = F.softplus(self.out_weight).to(dtype)
        b2 = self.hidden_bias.to(dtype)
        b3 = self.out_bias.to(dtype)
        eps = F.softplus(self.slope).to(dtype)

        def raw(tau: Tensor, with_rate: bool) -> tuple[Tensor, Tensor | None]:
            """``softplus(o(tau))`` (``[*batch, *extra, J]``, non-decreasing in ``tau``) and, ``with_rate``, its
            derivative in ``tau`` by the chain rule of the class docstring."""
            z1 = torch.tanh(u * torch.log1p(tau).unsqueeze(-1) + _expand_params(ctx, tau, nb))
            z2 = torch.tanh(F.linear(z1, w, b2))
            o = F.linear(z2, v, b3)
            if not with_rate:
                return F.softplus(o), None
            d1 = (1 - z1 * z1) * (u * (1 + tau).reciprocal().unsqueeze(-1))  # dz1 / dtau
            d2 = (1 - z2 * z2) * F.linear(d1, w)  # dz2 / dtau
            return F.softplus(o), torch.sigmoid(o) * F.linear(d2, v)

        zero = torch.zeros(ctx.shape[:-1], dtype=dtype, device=ctx.device)
        at_zero, _ = raw(zero, False)  # [*batch, J]

        def hazards(tau: Tensor, with_rate: bool = True) -> tuple[Tensor, Tensor | None]:
            value, rate = raw(tau, with_rate)
            big = value - _expand_params(at_zero, tau, nb) + eps * tau.unsqueeze(-1)
            return big, None if rate is None else rate + eps

        return hazards


# ----------------------------------------------------------------------------------------------- decoders


def tie_resolution(cfg: ModelConfig) -> float:
    """``model.tie_resolution`` (default ``TIE_RESOLUTION``), checked: a positive finite number of time units."""
    value = getattr(cfg, "tie_resolution", None)
    value = TIE_RESOLUTION if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < float(value) < math.inf):
        raise ConfigError(f"model.tie_resolution must be a positive number of time units, got {value!r}")
    return float(value)


class TiePolicy:
    """Mixin of every decoder: ``self.tie_resolution`` from the config, ``self._tied(dist)`` sets it on a
    distribution (the tie policy of the module docstring)."""

    tie_resolution: float = TIE_RESOLUTION

    def _tied(self, dist: HazardDistribution) -> HazardDistribution:
        dist.tie_resolution = self.tie_resolution
        return dist


def _check_integration(cfg: ModelConfig) -> None:
    for key in ("integration", "eval_integration"):
        value = getattr(cfg, key, None)
        if value is not None and value not in integrate.METHODS:
            raise ConfigError(f"unknown model.{key} {value!r}; valid: {', '.join(integrate.METHODS)}")
    if cfg.integration_nodes < 1 or (cfg.eval_integration_nodes is not None and cfg.eval_integration_nodes < 1):
        raise ConfigError("model.integration_nodes and model.eval_integration_nodes must be >= 1")


ADAPTIVE_NODES = 24
"""Nodes per component of the ``"adaptive"`` rule where SAHP needs them (THP's is closed form) when
``cfg.eval_integration_nodes`` is not set: with 24 the density integrates to 1 within 1e-6 over the tested parameter
ranges (``tests/test_normalisation.py``; measured worst error 7e-12 with 16 nodes, 7e-7 with 8)."""


NORMALISED_EVAL_RULES = ("adaptive",)
"""Evaluation rules whose density integrates to 1 for every parameter value tested (``tests/test_normalisation.py``);
``"gauss_legendre"`` and ``"mc"`` are not (see ``mtpp.models.integrate``)."""


def evaluation_rule_warning(model: nn.Module) -> str | None:
    """One line when a decoder of ``model`` with a numerical compensator (``QuadratureDecoder``: THP, SAHP, time or
    joint) validates and reports with a rule that is not normalised, else ``None``.

    Fixed Gauss-Legendre nodes miss an intensity that decays fast onto its floor, so ``Lambda`` comes out too small
    and ``L_T`` too low; measured on MOOC (gaps over orders of magnitude, trained split-0 cells, 100 nodes): test
    ``L_T`` 0.07-0.67 nats per sequence below the closed form, as large as the base / + / ++ differences it was
    meant to compare (configs/experiments/paper_table1.yaml). ``"mc"`` is unbiased for ``Lambda`` but not for
    ``log f`` or the PIT."""
    rules = sorted({f"{m.eval_rule[0]} ({m.eval_rule[1]} nodes)" for m in model.modules()
                    if isinstance(m, QuadratureDecoder) and m.eval_rule[0] not in NORMALISED_EVAL_RULES})  # fmt: skip
    if not rules:
        return None
    return (f"model.eval_integration={', '.join(rules)} is not normalised where an intensity decays fast onto its "
            "floor: validation and the reported L_T / PCE may be biased (on MOOC, 100 Gauss-Legendre nodes gave "
            "L_T 0.07-0.67 nats/seq too low); model.eval_integration=adaptive (the default) is exact for THP and "
            "within 1e-6 for SAHP")


class QuadratureDecoder(TiePolicy, nn.Module):
    """Base of decoders whose compensator is numerical: picks the rule and node count by train / eval mode.

    Training: ``cfg.integration`` with ``cfg.integration_nodes`` (``"mc"`` by default: cheap, unbiased for
    ``Lambda``, its noise averages out over steps). Evaluation (``module.eval()``, what every reported metric and
    validation score uses): ``cfg.eval_integration``, default (``None``) ``"adaptive"`` (normalised within 1e-6 for
    every parameter value tested, see ``mtpp.models.integrate``), with ``cfg.eval_integration_nodes`` nodes
    (default: ``ADAPTIVE_NODES`` for ``"adaptive"``, else ``cfg.integration_nodes``). Setting ``eval_integration``
    to ``"mc"`` or ``"gauss_legendre"`` is allowed (e.g. to reproduce older runs) but is not normalised for
    fast-varying intensities. Evaluation's ``"mc"`` nodes are counter-based (``node_stream``): a function of the
    evaluation seed, the history and the query gap, never of the batching.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _check_integration(cfg)
        self.tie_resolution = tie_resolution(cfg)
        self.train_rule = (cfg.integration, int(cfg.integration_nodes))
        eval_method = getattr(cfg, "eval_integration", None) or "adaptive"
        default_nodes = ADAPTIVE_NODES if eval_method == "adaptive" else cfg.integration_nodes
        self.eval_rule = (eval_method, int(cfg.eval_integration_nodes or default_nodes))

    def integration_rule(self) -> tuple[str, int]:
        return self.train_rule if self.training else self.eval_rule

    @property
    def counter_nodes(self) -> bool:
        """Whether this decoder's Monte Carlo nodes are counter-based now: evaluation mode with
        ``eval_integration: mc``; then ``forward`` takes the histories' keys (``integrate.history_streams``)."""
        return not self.training and self.eval_rule[0] == "mc"

    def node_stream(self, h: Tensor, stream: Tensor | None) -> Tensor | None:
        """The ``stream`` of the distribution built from ``h: [*batch, D]``: ``None`` in training (fresh nodes on
        every step, as intended) or under a deterministic rule; in evaluation with ``"mc"``, ``stream: [*batch]``
        (the histories' keys), or, where the caller has none (a distribution built from bare histories), key 0 for
        every element: the nodes then depend on the query gap alone, still reproducible and independent of the
        batching (histories asked at the very same gap share their nodes)."""
        if not self.counter_nodes:
            return None
        if stream is None:
            return torch.zeros(h.shape[:-1], dtype=torch.int64, device=h.device)
        return stream.to(h.device)


@TIME_DECODERS.register("lnm")
class LNMDecoder(TiePolicy, nn.Module):
    """``h -> LogNormalMixture``: logits, means and log-scales of ``cfg.num_components`` log-normals from one
    linear layer of ``h`` (ifl-tpp). Normalised by construction."""

    def __init__(self, input_size: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_components = cfg.num_components
        self.tie_resolution = tie_resolution(cfg)
        self.linear = nn.Linear(input_size, 3 * cfg.num_components)

    def forward(self, h: Tensor) -> LogNormalMixture:
        logits, means, log_scales = self.linear(h).chunk(3, dim=-1)
        return self._tied(LogNormalMixture(torch.log_softmax(logits, dim=-1), means, log_scales))


@TIME_DECODERS.register("rmtpp")
class RMTPPDecoder(TiePolicy, nn.Module):
    """``h -> RMTPPDistribution``: ``lambda(tau) = exp(v.h + b + w tau)`` with one learned ``w = softplus(.) >= 0``:
    the hazard is non-decreasing, ``Lambda(inf) = inf``, the density integrates to 1.

    Initial slope ``INIT_SLOPE = 1e-5`` per model time unit (one model unit is the data's median gap,
    ``mtpp.models.scaling``): the model starts at its Poisson limit ``exp(c) tau`` for every gap up to ~1e5
    model units (MOOC's longest is ~7e4, LastFM's ~5e4), as the reference starts near it (Bosser & Ben Taieb's code
    draws ``w ~ U(0, 1e-3)`` per data unit). A larger start makes the compensator ``exp(c) (exp(w tau) - 1) / w``
    astronomical on heavy-tailed gaps: ``w = 0.1`` on LastFM (then in mean-gap units, longest gap 790) gave
    ``exp(79)`` and a first-epoch time NLL of ~1e21 nats per sequence whose gradients drowned the mark head for
    hundreds of epochs. ``tests/test_init_scale.py`` checks the start of every decoder on such gaps.

    ``model.rmtpp_form: baseline``: ``lambda(tau) = mu + exp(v.h + b + w tau)`` with one learned ``mu = softplus(.)
    > 0`` and ``w`` free in sign, the form of Bosser & Ben Taieb's reference code (which keeps ``mu >= 0`` by
    clipping, so ``mu = 0`` with ``w < 0`` would there be a defective density; the softplus rules it out): the hazard
    may decay onto ``mu``. Starts with ``w = INIT_SLOPE`` and ``mu = INIT_BASELINE`` model-unit rates.
    """

    INIT_SLOPE = 1e-5
    INIT_BASELINE = 0.1

    def __init__(self, input_size: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.tie_resolution = tie_resolution(cfg)
        self.linear = nn.Linear(input_size, 1)
        form = getattr(cfg, "rmtpp_form", "monotone")
        if form not in RMTPP_FORMS:
            raise ConfigError(f"model.rmtpp_form must be one of {', '.join(RMTPP_FORMS)}, got {form!r}")
        self.baseline = form == "baseline"
        if self.baseline:  # w itself, either sign; mu through a softplus
            self.w = nn.Parameter(torch.tensor(self.INIT_SLOPE))
            self.mu_raw = nn.Parameter(torch.tensor(inverse_softplus(self.INIT_BASELINE)))
        else:
            self.w_raw = nn.Parameter(torch.tensor(inverse_softplus(self.INIT_SLOPE)))

    def forward(self, h: Tensor) -> RMTPPDistribution:
        c = self.linear(h).squeeze(-1)
        if self.baseline:
            return self._tied(RMTPPDistribution(c, self.w.to(h.dtype), F.softplus(self.mu_raw).to(h.dtype)))
        return self._tied(RMTPPDistribution(c, F.softplus(self.w_raw).to(h.dtype)))


@TIME_DECODERS.register("fnn")
class FNNDecoder(TiePolicy, nn.Module):
    """``h -> CumulativeHazardDistribution`` of one ``MonotoneCumulativeHazard`` output (width
    ``cfg.decoder_hidden_size``); see that class for the monotonicity, ``Lambda(0) = 0`` and normalisation."""

    def __init__(self, input_size: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.tie_resolution = tie_resolution(cfg)
        self.hazard = MonotoneCumulativeHazard(input_size, 1, cfg.decoder_hidden_size)

    def forward(self, h: Tensor) -> CumulativeHazardDistribution:
        return self._tied(CumulativeHazardDistribution(self.hazard(h), h.shape[:-1], h.dtype, h.device))


@TIME_DECODERS.register("thp")
class THPDecoder(QuadratureDecoder):
    """Ground THP: ``lambda(tau) = sum_c softplus(a_c tau + w_c.h + b_c) + mu_c`` over ``cfg.num_components``
    (``SoftplusGapIntensity``: gap feature, learned positive floor so the density integrates to 1)."""

    def __init__(self, input_size: int, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.intensity = SoftplusGapIntensity(input_size, cfg.num_components)

    def forward(self, h: Tensor, stream: Tensor | None = None) -> IntensityDistribution:
        """``h: [*batch, D]``; ``stream: [*batch]`` int64 history keys for evaluation's ``"mc"`` (``node_stream``)."""
        method, nodes = self.integration_rule()
        return self._tied(IntensityDistribution(self.intensity(h), h.shape[:-1], h.dtype, h.device, method, nodes,
                                                stream=self.node_stream(h, stream)))


@TIME_DECODERS.register("sahp")
class SAHPDecoder(QuadratureDecoder):
    """Ground SAHP: ``lambda(tau) = sum_c softplus(mu_c + (eta_c - mu_c) exp(-gamma_c tau))`` over
    ``cfg.num_components`` (``SAHPIntensity``; proper since ``lambda(inf) > 0``)."""

    def __init__(self, input_size: int, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.intensity = SAHPIntensity(input_size, cfg.num_components)

    def forward(self, h: Tensor, stream: Tensor | None = None) -> IntensityDistribution:
        """``h: [*batch, D]``; ``stream: [*batch]`` int64 history keys for evaluation's ``"mc"`` (``node_stream``)."""
        method, nodes = self.integration_rule()
        return self._tied(IntensityDistribution(self.intensity(h), h.shape[:-1], h.dtype, h.device, method, nodes,
                                                stream=self.node_stream(h, stream)))
