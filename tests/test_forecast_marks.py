"""The mark forecast ``p(k | H) = int p(k | tau, H) f(tau | H) dtau`` (``mtpp.models.marginal``): exact for base
LNM / RMTPP, a distribution for every model, and equal to adaptive quadrature of the integral."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate as si
import torch
from helpers import K, make_batch, tiny_config

from mtpp.models import build_model
from mtpp.models.marginal import trapezoid_weights

pytestmark = pytest.mark.usefixtures("one_thread")

DECODERS = ("lnm", "rmtpp", "fnn", "thp", "sahp")
PARAMETRISATIONS = ("base", "plus", "plusplus")


def _model(decoder: str, parametrisation: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = tiny_config(encoder="gru", decoder=decoder, parametrisation=parametrisation,
                      integration="gauss_legendre", integration_nodes=50)  # fmt: skip
    m = build_model(cfg, K).double().eval()
    with torch.no_grad():  # move away from the initialisation: marks that really depend on the gap
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("decoder", ("lnm", "rmtpp"))
def test_base_closed_form_heads_forecast_is_the_head(decoder: str) -> None:
    m = _model(decoder, "base")
    s = m.score(make_batch(dtype=torch.float64))
    assert not m.marks_depend_on_time
    assert torch.equal(s.forecast_mark_log_probs, s.mark_log_probs)


@pytest.mark.parametrize("parametrisation", PARAMETRISATIONS)
@pytest.mark.parametrize("decoder", DECODERS)
def test_forecast_matches_adaptive_quadrature_and_sums_to_one(decoder: str, parametrisation: str) -> None:
    m = _model(decoder, parametrisation, seed=3)
    batch = make_batch(dtype=torch.float64)
    scores = m.score(batch)
    fp = scores.forecast_mark_log_probs.exp()
    valid = batch.mask
    torch.testing.assert_close(fp.sum(-1)[valid], torch.ones(int(valid.sum()), dtype=torch.float64),
                               rtol=0, atol=1e-12)  # fmt: skip
    h_time, h_mark = m.histories(batch)
    with torch.no_grad():
        for b, i in ((0, 0), (1, 5)):
            dist = m.next_time_distribution(h_time[b : b + 1, i : i + 1])
            h = h_mark[b : b + 1, i : i + 1]

            def integrand(tau: float, k: int) -> float:
                t = torch.tensor([[tau]], dtype=torch.float64)
                return float(m._mark_log_probs(dist, h, t)[0, 0, k].exp() * dist.log_prob(t).exp())

            # reference 1: adaptive quadrature of p(k | tau) f(tau) over tau (scipy), where f integrates to 1
            ref = np.array([si.quad(integrand, 0, np.inf, args=(k,), limit=400, epsabs=1e-11)[0] for k in range(K)])
            # reference 2: a Riemann-Stieltjes sum of p(k | tau) dF(tau) on 40,001 log-spaced points from 1e-40
            # to 1e40 (midpoint marks; mass below / above the grid to the end points). Needs only F, so it also
            # holds where the density's tie floor makes f lose the mass below 1e-10 (LNM, issue 11 §4)
            grid = torch.logspace(-40, 40, 40_001, dtype=torch.float64).view(1, 1, -1)
            if hasattr(dist, "ground_intensity"):  # THP / SAHP: Lambda by the trapezoid rule on the fine grid
                lam = dist.ground_intensity(grid)
                big = torch.cumsum(0.5 * (lam[..., 1:] + lam[..., :-1]) * grid.diff(dim=-1), -1)
                big = torch.cat([lam[..., :1] * grid[..., :1], lam[..., :1] * grid[..., :1] + big], -1)
                cdf_grid = -torch.expm1(-big)
            else:
                cdf_grid = dist.cdf(grid)
            cdf = torch.cat([torch.zeros(1, 1, 1, dtype=torch.float64), cdf_grid, torch.ones(1, 1, 1,
                            dtype=torch.float64)], -1).diff(dim=-1)  # fmt: skip
            mids = torch.cat([grid[..., :1], (grid[..., 1:] * grid[..., :-1]).sqrt(), grid[..., -1:]], -1)
            fine = (m._mark_log_probs(dist, h.expand(1, 1, 1, h.shape[-1]).expand(1, 1, mids.shape[-1], -1)
                                      if m.joint is None else h, mids).exp() * cdf.unsqueeze(-1)).sum(-2)[0, 0]  # fmt: skip
            if abs(ref.sum() - 1.0) < 1e-6 and not hasattr(dist, "ground_intensity"):
                np.testing.assert_allclose(fine.numpy(), ref, atol=1e-5)  # the two references agree
            # measured on these perturbed models: <= 7e-4 with the default grids (trapezoid in u, O(h^2) in the
            # log spacing; see mtpp.models.marginal)
            np.testing.assert_allclose(fp[b, i].numpy(), fine.numpy(), atol=1e-3)


def test_the_forecast_differs_from_the_given_time_distribution() -> None:
    """A '+' model's forecast is not its conditional at the observed gap (the two tasks of issue 10 §1)."""
    m = _model("lnm", "plus", seed=1)
    s = m.score(make_batch(dtype=torch.float64))
    gap = (s.forecast_mark_log_probs.exp() - s.mark_log_probs.exp()).abs()[make_batch().mask]
    assert float(gap.max()) > 1e-3


def test_trapezoid_weights() -> None:
    u = torch.tensor([[0.1, 0.3, 0.3, 0.9], [0.0, 0.5, 0.4, 1.0]], dtype=torch.float64)  # 2nd: not monotone
    w = trapezoid_weights(u)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, dtype=torch.float64))
    # by hand: tails 0.1 and 0.1; cells 0.2, 0, 0.6 split in halves
    torch.testing.assert_close(w[0], torch.tensor([0.1 + 0.1, 0.1 + 0.0, 0.0 + 0.3, 0.3 + 0.1], dtype=torch.float64))


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_lognormal_mixture_cdf_is_one_minus_survival(dtype: torch.dtype) -> None:
    """LNM's ``cdf`` (a sum of ``ndtr``, what the forecast grid evaluates) against ``1 - S`` from ``log_ndtr``, from
    0 through both tails, and against the mixture's definition by scipy; small ``F`` keeps its relative precision."""
    from scipy.stats import norm

    from mtpp.models.time_decoders import LogNormalMixture

    g = torch.Generator().manual_seed(0)
    log_w = torch.log_softmax(torch.randn(3, 8, generator=g, dtype=torch.float64), -1)
    means = 2.0 * torch.randn(3, 8, generator=g, dtype=torch.float64)
    log_scales = 0.7 * torch.randn(3, 8, generator=g, dtype=torch.float64)
    tau = torch.tensor([0.0, 1e-30, 1e-8, 1e-3, 0.5, 1.0, 3.0, 1e2, 1e6, 1e30], dtype=torch.float64)
    tau = tau.expand(3, -1)
    exact = np.einsum("bc,btc->bt", log_w.exp().numpy(),
                      norm.cdf((np.log(tau.numpy(), where=tau.numpy() > 0, out=np.full(tau.shape, -np.inf))[..., None]
                                - means.numpy()[:, None]) / np.exp(log_scales.numpy())[:, None]))  # fmt: skip
    dist = LogNormalMixture(log_w.to(dtype), means.to(dtype), log_scales.to(dtype))
    f = dist.cdf(tau.to(dtype)).double()
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(f, torch.from_numpy(exact), rtol=50 * eps, atol=20 * eps)
    torch.testing.assert_close(f, -torch.expm1(dist.log_survival(tau.to(dtype))).double(), rtol=0, atol=20 * eps)
    assert f[:, 0].eq(0).all() and (f >= 0).all() and (f <= 1).all()
    exact = torch.from_numpy(exact)
    small = (exact > 1e3 * torch.finfo(dtype).tiny) & (exact < 1e-3)  # normal numbers of the dtype, lower tail
    assert small.sum() >= 5
    # relative error ~ z^2 eps there: the condition number of Phi at z, not a cancellation
    torch.testing.assert_close(f[small], exact[small], rtol=2000 * eps, atol=0)


def test_time_mark_decoder_on_grid_is_forward_on_expanded_histories() -> None:
    """``on_grid`` (the forecast's split first layer) is ``forward`` with the history repeated per gap."""
    m = _model("lnm", "plus", seed=2)
    dec = m.mark_decoder
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 5, dec.mlp[0].in_features - 1, generator=g, dtype=torch.float64)
    tau = torch.rand(2, 5, 7, generator=g, dtype=torch.float64) * torch.tensor([0.0, 1e-12, 1e-3, 0.1, 1, 10, 1e4])
    with torch.no_grad():
        want = dec(h.unsqueeze(-2).expand(2, 5, 7, h.shape[-1]), tau)
        got = dec.on_grid(h, tau)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_the_linear_space_forecast_equals_logsumexp_and_keeps_underflowing_marks_finite(dtype) -> None:
    """The forecast's weighted sum is taken as ``w @ exp(lp)``; a mark whose probability underflows the dtype at
    every grid point (``lp = -120`` in float32, ``-800`` in float64) gets the exact logsumexp, not ``-inf``."""
    from mtpp.models.marginal import marginal_mark_log_probs
    from mtpp.models.time_decoders import LogNormalMixture

    g = torch.Generator().manual_seed(0)
    b, k = 6, 5
    dist = LogNormalMixture(torch.log_softmax(torch.randn(b, 3, generator=g, dtype=dtype), -1),
                            torch.randn(b, 3, generator=g, dtype=dtype), 0.3 * torch.randn(b, 3, generator=g, dtype=dtype))
    floor = -120.0 if dtype == torch.float32 else -800.0
    slope = torch.randn(k, generator=g, dtype=dtype)

    def mark_log_probs_at(tau):
        z = torch.log(tau).unsqueeze(-1) * slope  # [b, P, K]: marks depend on the gap
        z = z.clone()
        z[:3, :, -1] = floor  # mark K-1 improbable at every gap for the first three events
        return torch.log_softmax(z, -1)

    got = marginal_mark_log_probs(dist, torch.zeros(b, dtype=dtype), mark_log_probs_at, points=64)
    assert torch.isfinite(got).all()
    # the reference: logsumexp over the grid of lp + log w, as the quadrature defines it
    from mtpp.models.marginal import quantile_grid, trapezoid_weights

    grid = quantile_grid(dist, torch.zeros(b, dtype=dtype), 64)
    lp = mark_log_probs_at(grid)
    want = torch.logsumexp(lp + torch.log(trapezoid_weights(dist.cdf(grid))).unsqueeze(-1), dim=-2)
    want = want - torch.logsumexp(want, -1, keepdim=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert (got[:3, -1] < floor + 30).all()  # the improbable mark: exact, far below, finite


def test_fnn_forecast_grid_takes_lambda_from_the_marks_forward_mode_pass() -> None:
    """Base FNN's marks on the forecast grid need the forward-mode pass, which also gives ``Lambda``: ``F`` on the
    same grid reuses it (no second, value-only pass through the network; the grid's largest cost before) and is
    the value-only pass's ``F`` exactly. Another tensor, or the same one changed in place, is computed afresh."""
    m = _model("fnn", "base", seed=4)
    h_time, _ = m.histories(make_batch(dtype=torch.float64))
    with torch.no_grad():
        dist = m.next_time_distribution(h_time)
        calls = []
        hazards = dist.hazards
        dist.hazards = lambda tau, with_rate=True: calls.append(with_rate) or hazards(tau, with_rate)
        grid = torch.logspace(-3, 2, 7, dtype=torch.float64).expand(*h_time.shape[:2], 7).contiguous()
        lp = dist.mark_log_probs(grid)
        f = dist.cdf(grid)
        assert calls == [True]  # one pass for the marks and F
        want = -torch.expm1(-hazards(grid, with_rate=False)[0].sum(-1))
        assert torch.equal(f, want)
        assert torch.equal(lp, torch.log_softmax(torch.log(hazards(grid)[1]), -1))
        dist.cdf(grid.clone())
        grid.mul_(2.0)
        torch.testing.assert_close(dist.cdf(grid), -torch.expm1(-hazards(grid, with_rate=False)[0].sum(-1)))
        assert calls == [True, False, False]


@pytest.mark.parametrize("decoder,parametrisation", [("thp", "base"), ("sahp", "base"), ("fnn", "base"),
                                                     ("lnm", "plus"), ("thp", "plusplus")])
def test_the_linear_space_grid_probabilities_give_the_log_space_forecast(decoder: str, parametrisation: str) -> None:
    """The forecast's grid takes the decoders' linear-space probabilities (``lambda_k / lambda``, ``softmax``)
    instead of ``exp`` of their log-probabilities: the same forecast, to rounding (float64)."""
    from mtpp.models.marginal import marginal_mark_log_probs

    m = _model(decoder, parametrisation, seed=5)
    h_time, h_mark = m.histories(make_batch(dtype=torch.float64))
    with torch.no_grad():
        fast = m.mark_forecast_log_probs(h_time, h_mark)
        dist = m.next_time_distribution(h_time)
        grid = torch.logspace(-4, 3, 9, dtype=torch.float64).expand(*h_time.shape[:2], 9)
        if m.joint is not None:
            fn = dist.mark_log_probs
            torch.testing.assert_close(dist.mark_probs(grid), fn(grid).exp(), rtol=1e-13, atol=1e-15)
        else:
            def fn(tau):
                return m.mark_decoder.on_grid(h_mark, tau)

            torch.testing.assert_close(m.mark_decoder.probs_on_grid(h_mark, grid), fn(grid).exp(), rtol=1e-13,
                                       atol=1e-15)  # fmt: skip
        slow = marginal_mark_log_probs(dist, h_time[..., 0], fn)  # log space only
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-13)


def test_where_linear_space_probabilities_fail_the_log_space_ones_are_used() -> None:
    """Linear-space intensities that all underflow give ``0 / 0`` probabilities: those events take the
    logsumexp of the log-probabilities, as without the linear-space function."""
    from mtpp.models.marginal import marginal_mark_log_probs
    from mtpp.models.time_decoders import LogNormalMixture

    g = torch.Generator().manual_seed(0)
    b, k = 6, 5
    dist = LogNormalMixture(torch.log_softmax(torch.randn(b, 3, generator=g, dtype=torch.float64), -1),
                            torch.randn(b, 3, generator=g, dtype=torch.float64),
                            0.3 * torch.randn(b, 3, generator=g, dtype=torch.float64))  # fmt: skip
    slope = torch.randn(k, generator=g, dtype=torch.float64)

    def log_probs(tau):
        return torch.log_softmax(torch.log(tau).unsqueeze(-1) * slope, -1)

    def probs(tau):
        lam = torch.exp(torch.log(tau).unsqueeze(-1) * slope)
        lam[:2] = 0.0  # every intensity of the first two events underflowed
        return lam / lam.sum(-1, keepdim=True)

    like = torch.zeros(b, dtype=torch.float64)
    want = marginal_mark_log_probs(dist, like, log_probs, points=64)
    got = marginal_mark_log_probs(dist, like, log_probs, points=64, mark_probs_at=probs)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_many_marks_forecast_is_summed_over_cache_sized_blocks_with_the_same_numbers(dtype, monkeypatch) -> None:
    """With many marks the forecast never asks the mark head for the whole ``[P, K]`` grid at once (one such
    tensor per event, 40 MB at K = 20,000, made ``mtpp evaluate`` run at about 4 events/s): the logits come in
    blocks of at most ``GRID_BLOCK_ELEMENTS`` elements (the first grid point alone), each softmax normaliser is
    folded into the weights, and the result is the one-product ``w @ softmax(z)`` of the whole grid to rounding;
    a mark that underflows at every grid point still gets the blocked logsumexp, finite and exact."""
    from mtpp.models import marginal
    from mtpp.models.time_decoders import LogNormalMixture

    monkeypatch.setattr(marginal, "GRID_BLOCK_ELEMENTS", 4096)
    g = torch.Generator().manual_seed(3)
    b, k, points = 3, 300, 64
    dist = LogNormalMixture(torch.log_softmax(torch.randn(b, 3, generator=g, dtype=dtype), -1),
                            torch.randn(b, 3, generator=g, dtype=dtype),
                            0.3 * torch.randn(b, 3, generator=g, dtype=dtype))  # fmt: skip
    slope, bias = torch.randn(k, generator=g, dtype=dtype), 3 * torch.randn(k, generator=g, dtype=dtype)
    floor = -200.0 if dtype == torch.float32 else -1000.0
    sizes = []

    def logits(tau):
        sizes.append(tau.shape[-1] * b * k)
        z = torch.log(tau).unsqueeze(-1) * slope + bias
        z[0, :, 7] = floor  # mark 7 of the first event: below the dtype's smallest number at every gap
        return z

    like = torch.zeros(b, dtype=dtype)
    got = marginal.marginal_mark_log_probs(dist, like, lambda t: torch.log_softmax(logits(t), -1), points=points,
                                           mark_logits_at=logits)  # fmt: skip
    assert max(sizes) <= 4096 and sizes[0] == b * k and len(sizes) > 5
    grid = marginal.quantile_grid(dist, like, points)
    w = marginal.trapezoid_weights(dist.cdf(grid))
    z = logits(grid)
    want = torch.log((w.unsqueeze(-2) @ torch.softmax(z, -1)).squeeze(-2))  # the whole grid in one product
    want[0] = torch.logsumexp(torch.log_softmax(z[0], -1) + torch.log(w[0]).unsqueeze(-1), dim=-2)
    want = want - torch.logsumexp(want, -1, keepdim=True)
    assert torch.isfinite(got).all() and got[0, 7] < floor + 30
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_a_time_quantile_beyond_the_dtype_range_leaves_the_mark_forecast_finite(monkeypatch) -> None:
    """A mixture with a very wide component (log-scale 3: its ``1 - 1e-6`` quantile is ``exp(~95)``, past float32's
    largest number) had the quantile grid's upper end at ``inf``, so the grid was ``inf * 0 = NaN`` and the mark
    forecast NaN for those histories. The end is now the largest finite gap: the forecast is finite, sums to 1, and
    equals the float64 one (whose grid still reaches the quantile) to float32 rounding plus the 1e-6 tail."""
    torch.manual_seed(0)
    model = build_model(tiny_config(encoder="gru", decoder="lnm", parametrisation="plus"), K).eval()
    decoder = model.time_decoder
    forward = type(decoder).forward

    def wide(self, x):
        dist = forward(self, x)
        dist.log_scales = torch.full_like(dist.log_scales, 3.0)  # every component's s = e^3 in log tau
        return dist

    monkeypatch.setattr(type(decoder), "forward", wide)
    h = torch.randn(6, 1, model.cfg.hidden_size)
    with torch.no_grad():
        assert decoder(h).icdf(torch.full((6, 1), 1 - 1e-6)).isinf().all()  # the case: past float32's range
        lp32 = model.mark_forecast_log_probs(h, h)
        lp64 = model.double().mark_forecast_log_probs(h.double(), h.double())
    assert lp32.isfinite().all()
    assert torch.allclose(lp32.exp().sum(-1), torch.ones(6, 1), atol=1e-5)
    assert (lp32.double().exp() - lp64.exp()).abs().max() < 1e-4
