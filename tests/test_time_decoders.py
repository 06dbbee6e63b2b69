"""Time decoders against exact answers: scipy log-normal mixture, numerical normalisation, quantiles, Poisson limits,
the tie rule, and finite values / gradients at the edges (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch

from mtpp.errors import ConfigError
from mtpp.models.base import TimeDistribution
from mtpp.models.config import ModelConfig
from mtpp.models import integrate
from mtpp.models.registry import TIME_DECODERS
from mtpp.models.time_decoders import (
    ADAPTIVE_NODES,
    CumulativeHazardDistribution,
    HazardDistribution,
    LOG_TAU_BRACKET,
    QUANTILE_GRID_STEP,
    IntensityDistribution,
    LogNormalMixture,
    RMTPPDistribution,
)

DT = torch.float64
NAMES = ["lnm", "rmtpp", "fnn", "thp", "sahp"]
D = 6


def make_decoder(name: str, seed: int = 0, **cfg_kw) -> torch.nn.Module:
    """A float64 decoder with random (but well-scaled) parameters, Gauss-Legendre compensators."""
    kw = dict(integration="gauss_legendre", integration_nodes=64, num_components=4, decoder_hidden_size=8)
    kw.update(cfg_kw)
    torch.manual_seed(seed)
    dec = TIME_DECODERS.build(name, D, ModelConfig(**kw)).to(DT)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(0.3 * torch.randn_like(p))
        if name == "thp":  # a visible floor, slopes of both signs
            dec.intensity.floor.fill_(-3.0)
            dec.intensity.slope.uniform_(-0.5, 0.5)
    return dec


def random_h(b: int = 2, l: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, l, D, generator=g, dtype=DT)


def total_mass(dist: TimeDistribution) -> np.ndarray:
    """``int_0^inf f(tau) dtau`` for every element of the batch, by scipy's adaptive quadrature, where ``f`` is
    the density that ``log_prob`` scores: the continuous ``lambda exp(-Lambda)`` on ``[0, delta)`` (checked against
    the tie term ``exp(log_prob(0)) = F(delta)``, the probability the tie policy scores there) and
    ``exp(log_prob)`` above."""
    shape = dist.batch_shape
    delta = dist.tie_resolution

    def f(t: float) -> np.ndarray:
        tau = torch.full(shape, t, dtype=DT)
        if t < delta:  # the continuous density below the tie resolution
            log_f = dist.log_intensity(tau) - dist.cumulative_hazard(tau)
            if isinstance(dist, LogNormalMixture):
                log_f = dist._log_density(tau)
            return log_f.exp().detach().numpy().ravel()
        return dist.log_prob(tau).exp().detach().numpy().ravel()

    below, _ = scipy.integrate.quad_vec(f, 0.0, delta, epsabs=1e-14, epsrel=1e-10)
    tie_mass = dist.log_prob(torch.zeros(shape, dtype=DT)).exp().detach().numpy().ravel()
    np.testing.assert_allclose(tie_mass, below, rtol=1e-6, atol=1e-12)
    # split at the median so the adaptive rule sees where the mass is
    med = dist.icdf(torch.full(shape, 0.5, dtype=DT)).detach().numpy().ravel()
    split = max(float(np.median(med)), 2 * delta)
    a, _ = scipy.integrate.quad_vec(f, delta, split, epsabs=1e-10, epsrel=1e-9)
    b, _ = scipy.integrate.quad_vec(f, split, np.inf, epsabs=1e-10, epsrel=1e-9)
    return below + a + b


# ------------------------------------------------------------------------------------------- LNM exact answers


def test_lnm_log_density_equals_scipy_lognormal_mixture():
    g = torch.Generator().manual_seed(3)
    c = 5
    logits = torch.randn(4, 3, c, generator=g, dtype=DT)
    means = torch.randn(4, 3, c, generator=g, dtype=DT)
    log_scales = 0.5 * torch.randn(4, 3, c, generator=g, dtype=DT)
    dist = LogNormalMixture(torch.log_softmax(logits, -1), means, log_scales)
    tau = torch.rand(4, 3, generator=g, dtype=DT) * 5 + 1e-3
    w = torch.softmax(logits, -1).numpy()
    m, s, t = means.numpy(), log_scales.exp().numpy(), tau.numpy()[..., None]
    pdf = (w * scipy.stats.lognorm.pdf(t, s, scale=np.exp(m))).sum(-1)
    sf = (w * scipy.stats.lognorm.sf(t, s, scale=np.exp(m))).sum(-1)
    mean = (w * scipy.stats.lognorm.mean(s, scale=np.exp(m))).sum(-1)
    np.testing.assert_allclose(dist.log_prob(tau).numpy(), np.log(pdf), rtol=1e-12)
    np.testing.assert_allclose(dist.log_survival(tau).numpy(), np.log(sf), rtol=1e-10)
    np.testing.assert_allclose(dist.mean().numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(dist.log_intensity(tau).numpy(), np.log(pdf / sf), rtol=1e-10)


def test_lnm_far_tail_survival_is_log_space():
    """``log S`` keeps resolving where ``1 - F`` underflows (no clamped CDF)."""
    zero = torch.zeros(1, 1, 1, dtype=DT)
    dist = LogNormalMixture(zero, zero, zero)
    tau = torch.tensor([[math.exp(40.0)]], dtype=DT)  # z = 40: S ~ exp(-800)
    expected = scipy.special.log_ndtr(-40.0)
    np.testing.assert_allclose(dist.log_survival(tau).numpy(), [[expected]], rtol=1e-12)


def test_lnm_tie_rule():
    """A zero gap scores log F(delta) (the tie policy; the exact answer is in tests/test_ties.py); S and F are the
    exact continuous ones at 0."""
    dec = make_decoder("lnm")
    dist = dec(random_h())
    zero = torch.zeros(2, 3, dtype=DT)
    lp0 = dist.log_prob(zero)
    torch.testing.assert_close(lp0, dist._log_cdf(torch.full_like(zero, dist.tie_resolution)))  # log space
    assert torch.isfinite(lp0).all() and (lp0 <= 0).all()
    assert torch.equal(dist.log_survival(zero), zero)  # S(0) = 1 exactly
    assert torch.equal(dist.cdf(zero), zero)


def test_lnm_sample_matches_cdf():
    dist = make_decoder("lnm")(random_h(1, 2))
    x = dist.sample((4000,), generator=torch.Generator().manual_seed(0))
    assert x.shape == (4000, 1, 2)
    pit = dist.cdf(x.permute(1, 2, 0)).detach().numpy()  # [1, 2, S]
    for row in pit.reshape(-1, 4000):
        assert scipy.stats.kstest(row, "uniform").pvalue > 1e-3


# ------------------------------------------------------------------------------------------- every decoder


@pytest.mark.parametrize("name", NAMES)
def test_density_integrates_to_one(name):
    for seed in (0, 1):
        dist = make_decoder(name, seed)(random_h(1, 3, seed=seed + 10))
        mass = total_mass(dist)
        np.testing.assert_allclose(mass, 1.0, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_cdf_survival_quantile_consistency(name):
    dist = make_decoder(name)(random_h())
    assert isinstance(dist, TimeDistribution)
    tau = torch.tensor([[0.05, 0.7, 3.0], [0.2, 1.5, 0.01]], dtype=DT)
    with torch.no_grad():
        torch.testing.assert_close(dist.cdf(tau), 1 - dist.log_survival(tau).exp(), rtol=1e-12, atol=1e-14)
        back = dist.icdf(dist.cdf(tau))
        torch.testing.assert_close(back, tau, rtol=1e-6, atol=0)
        u = torch.tensor([[0.1, 0.5, 0.9], [0.01, 0.3, 0.99]], dtype=DT)
        torch.testing.assert_close(dist.cdf(dist.icdf(u)), u, rtol=1e-6, atol=1e-9)
        # trailing query points: [B, L, M] in, [B, L, M] out, same values
        stacked = torch.stack([tau, 2 * tau], dim=-1)
        torch.testing.assert_close(dist.log_prob(stacked)[..., 1], dist.log_prob(2 * tau))
        torch.testing.assert_close(dist.log_survival(stacked)[..., 0], dist.log_survival(tau))


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_exact_by_pit(name):
    dist = make_decoder(name)(random_h(1, 1))
    with torch.no_grad():
        x = dist.sample((500,), generator=torch.Generator().manual_seed(5))
        assert x.shape == (500, 1, 1)
        pit = dist.cdf(x.reshape(1, 1, -1)).numpy().ravel()
    assert scipy.stats.kstest(pit, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t", [0.0, 1e-12, 1e6])
def test_finite_values_and_gradients_at_edges(name, t):
    dec = make_decoder(name)
    h = random_h().requires_grad_(True)
    dist = dec(h)
    tau = torch.full((2, 3), t, dtype=DT)
    lp = dist.log_prob(tau)
    ls = dist.log_survival(tau)
    assert torch.isfinite(lp).all() and torch.isfinite(ls).all()
    assert torch.isfinite(dist.cdf(tau)).all()
    grads = torch.autograd.grad((lp + ls).sum(), [h, *dec.parameters()], allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    if t == 0.0:
        assert torch.equal(ls, torch.zeros_like(ls))


@pytest.mark.parametrize("name", NAMES)
def test_large_batch_float32(name):
    """A [1, 5000] batch in the default float32: finite values and gradients, one call."""
    torch.manual_seed(0)
    dec = TIME_DECODERS.build(name, D, ModelConfig(num_components=8, decoder_hidden_size=16))
    h = torch.randn(1, 5000, D)
    tau = torch.cat([torch.zeros(1, 100), torch.rand(1, 4800) * 3, torch.full((1, 100), 1e4)], dim=1)
    lp = dec(h).log_prob(tau)
    assert lp.shape == (1, 5000) and torch.isfinite(lp).all()
    lp.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in dec.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
def test_no_grad_evaluation(name):
    dec = make_decoder(name).eval()
    with torch.no_grad():
        dist = dec(random_h())
        lp = dist.log_prob(torch.ones(2, 3, dtype=DT))
    assert torch.isfinite(lp).all() and not lp.requires_grad


# ------------------------------------------------------------------------------------------- RMTPP


@pytest.mark.parametrize("w0", [0.0, 1e-9])
def test_rmtpp_poisson_limit_values_and_gradients(w0):
    c = torch.tensor([[0.3, -1.2, 2.0]], dtype=DT, requires_grad=True)
    w = torch.tensor(w0, dtype=DT, requires_grad=True)
    dist = RMTPPDistribution(c, w)
    tau = torch.tensor([[0.01, 0.5, 7.0]], dtype=DT)  # above the tie resolution (ties: tests/test_ties.py)
    lp = dist.log_prob(tau)
    rate = c.detach().exp()
    torch.testing.assert_close(lp.detach(), c.detach() - rate * tau, rtol=1e-8, atol=1e-12)
    gc, gw = torch.autograd.grad(lp.sum(), [c, w])
    assert torch.isfinite(gc).all() and torch.isfinite(gw)
    # d/dw log f at w = 0: tau - e^c tau^2 / 2
    torch.testing.assert_close(gw, (tau - rate * tau**2 / 2).sum(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(gc, 1 - rate * tau, rtol=1e-8, atol=1e-12)
    u = torch.tensor([[0.1, 0.5, 0.9]], dtype=DT)
    torch.testing.assert_close(dist.icdf(u), -torch.log1p(-u) / rate, rtol=1e-8, atol=0)


def test_rmtpp_closed_forms_match_generic():
    c = torch.tensor([[0.3, -1.2, 2.0]], dtype=DT)
    dist = RMTPPDistribution(c, torch.tensor(0.7, dtype=DT))
    tau = torch.tensor([[0.2, 1.5, 0.01]], dtype=DT)
    lam = lambda s: np.exp(c.numpy()[0, 0] + 0.7 * s)  # noqa: E731
    big, _ = scipy.integrate.quad(lam, 0, 1.5)
    assert abs(dist.cumulative_hazard(torch.full((1, 3), 1.5, dtype=DT))[0, 0].item() - big) < 1e-10
    u = dist.cdf(tau)
    torch.testing.assert_close(dist.icdf(u), HazardDistribution.icdf(dist, u), rtol=1e-9, atol=0)


def test_rmtpp_decoder_keeps_w_nonnegative():
    dec = make_decoder("rmtpp")
    with torch.no_grad():
        dec.w_raw.fill_(-50.0)
    assert dec(random_h()).w.item() >= 0


@pytest.mark.parametrize("w0", [0.8, -0.8, 3e-5, -3e-5, 0.0])
def test_rmtpp_baseline_compensator_density_and_quantiles_are_exact(w0):
    """``lambda = mu + exp(c + w tau)``, ``w`` of either sign (and in the series branch near 0): ``Lambda`` is the
    integral of ``lambda`` (scipy quad), the density integrates to 1 (``mu > 0``), ``icdf`` inverts ``cdf``, and
    gradients are finite."""
    c = torch.tensor([[0.3, -1.2, 2.0]], dtype=DT, requires_grad=True)
    w = torch.tensor(w0, dtype=DT, requires_grad=True)
    mu = torch.tensor(0.05, dtype=DT)
    dist = RMTPPDistribution(c, w, mu)
    for j, t in enumerate((0.2, 1.5, 40.0)):
        lam = lambda s, j=j: 0.05 + np.exp(c.detach().numpy()[0, j] + w0 * s)  # noqa: E731
        want, _ = scipy.integrate.quad(lam, 0, t, epsabs=1e-13, epsrel=1e-12)
        got = dist.cumulative_hazard(torch.full((1, 3), t, dtype=DT))[0, j].item()
        assert got == pytest.approx(want, rel=1e-9), (t, j)
        assert dist.log_intensity(torch.full((1, 3), t, dtype=DT))[0, j].exp().item() == pytest.approx(lam(t))
    for j in range(3):  # total mass 1: S(tau) -> 0 because mu > 0, also for a decaying hazard
        f = lambda s, j=j: float(dist.log_prob(torch.full((1, 3), s, dtype=DT))[0, j].detach().exp())  # noqa: E731
        below = float(dist.cdf(torch.full((1, 3), dist.tie_resolution, dtype=DT))[0, j].detach())
        mass = sum(scipy.integrate.quad(f, a, b, limit=200, epsabs=1e-12)[0]
                   for a, b in ((dist.tie_resolution, 1.0), (1.0, 50.0), (50.0, 2000.0)))  # fmt: skip
        assert below + mass == pytest.approx(1.0, abs=1e-7)
    u = torch.tensor([[0.1, 0.5, 0.9]], dtype=DT)
    with torch.no_grad():
        torch.testing.assert_close(dist.cdf(dist.icdf(u)), u, rtol=1e-8, atol=1e-10)
    lp = dist.log_prob(torch.tensor([[0.01, 0.5, 7.0]], dtype=DT))
    gc, gw = torch.autograd.grad(lp.sum(), [c, w])
    assert torch.isfinite(gc).all() and torch.isfinite(gw)


def test_rmtpp_baseline_decoder_lets_w_decay_and_keeps_mu_positive():
    dec = make_decoder("rmtpp", rmtpp_form="baseline")
    with torch.no_grad():
        dec.w.fill_(-2.0)
        dec.mu_raw.fill_(-50.0)
    dist = dec(random_h())
    assert dist.w.item() == -2.0 and dist.mu.item() > 0
    assert not hasattr(make_decoder("rmtpp"), "mu_raw")  # the default form: no baseline, w >= 0
    with pytest.raises(ConfigError, match="rmtpp_form"):
        make_decoder("rmtpp", rmtpp_form="decaying")


# ------------------------------------------------------------------------------------------- FNN


def test_fnn_intensity_is_derivative_of_cumulative_hazard():
    dec = make_decoder("fnn")
    dist: CumulativeHazardDistribution = dec(random_h())
    tau = torch.tensor([[0.05, 0.7, 3.0], [0.2, 1.5, 10.0]], dtype=DT)
    eps = 1e-6
    fd = (dist.cumulative_hazard(tau + eps) - dist.cumulative_hazard(tau - eps)) / (2 * eps)
    torch.testing.assert_close(dist.log_intensity(tau).exp(), fd, rtol=1e-7, atol=0)
    # the same as reverse-mode autograd of Lambda
    t = tau.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(dist.cumulative_hazard(t).sum(), t)
    torch.testing.assert_close(dist.log_intensity(tau).exp(), g, rtol=1e-12, atol=0)
    zero = torch.zeros(2, 3, dtype=DT)
    assert torch.equal(dist.cumulative_hazard(zero), zero)  # Lambda(0) = 0 exactly
    # monotone, growing without bound (the positive linear term)
    grid = torch.logspace(-6, 6, 200, dtype=DT).expand(2, 3, 200)
    big = dist.cumulative_hazard(grid).detach()
    assert (big.diff(dim=-1) >= 0).all() and (big[..., -1] > 1e3).all()


# ------------------------------------------------------------------------------------------- THP / SAHP quadrature


def test_quadrature_decoders_follow_train_eval_mode():
    cfg = ModelConfig(
        integration="mc", integration_nodes=10, eval_integration_nodes=80, eval_integration="gauss_legendre"
    )
    dec = TIME_DECODERS.build("thp", D, cfg)
    dist = dec(torch.randn(1, 2, D))
    assert (dist.method, dist.num_nodes) == ("mc", 10)
    dec.eval()
    dist = dec(torch.randn(1, 2, D))
    assert (dist.method, dist.num_nodes) == ("gauss_legendre", 80)
    # evaluation default: the adaptive rule with its own node count (normalised within 1e-6, test_normalisation)
    dec = TIME_DECODERS.build("sahp", D, ModelConfig(integration="gauss_legendre", integration_nodes=12)).eval()
    assert (dec(torch.randn(1, 2, D)).method, dec(torch.randn(1, 2, D)).num_nodes) == ("adaptive", ADAPTIVE_NODES)
    cfg = ModelConfig(integration="gauss_legendre", integration_nodes=12, eval_integration_nodes=16)
    dec = TIME_DECODERS.build("thp", D, cfg).eval()
    assert (dec(torch.randn(1, 2, D)).method, dec(torch.randn(1, 2, D)).num_nodes) == ("adaptive", 16)


def test_bad_integration_config_is_a_config_error():
    with pytest.raises(ConfigError, match="integration"):
        TIME_DECODERS.build("thp", D, ModelConfig(integration="simpson"))
    with pytest.raises(ConfigError, match="integration_nodes"):
        TIME_DECODERS.build("sahp", D, ModelConfig(integration_nodes=0))


def test_thp_floor_makes_decaying_intensity_proper():
    """All slopes negative: without the floor the compensator would converge (defective); with it f integrates
    to 1."""
    dec = make_decoder("thp")
    with torch.no_grad():
        dec.intensity.slope.fill_(-2.0)
        dec.intensity.floor.fill_(-2.0)
    dist: IntensityDistribution = dec(random_h(1, 2))
    np.testing.assert_allclose(total_mass(dist), 1.0, atol=1e-3)


@pytest.mark.parametrize("method", ["mc", "gauss_legendre"])
@pytest.mark.parametrize("name", ["thp", "sahp"])
def test_constant_intensity_gives_poisson_likelihood(name, method):
    """Zero weights: constant intensity r, so L_T = -(n log r - r T) exactly (any quadrature rule)."""
    dec = make_decoder(name, integration=method, integration_nodes=7)
    with torch.no_grad():
        for p in dec.parameters():
            p.zero_()
        if name == "thp":
            dec.intensity.linear.bias.copy_(torch.linspace(-1, 1, 4, dtype=DT))
            dec.intensity.floor.fill_(-1.0)
            sp = torch.nn.functional.softplus
            r = (sp(torch.linspace(-1, 1, 4, dtype=DT)) + sp(torch.tensor(-1.0, dtype=DT))).sum()
        else:
            dec.intensity.linear.bias[:8].copy_(torch.linspace(-1, 1, 4, dtype=DT).repeat(2))  # mu = eta
            r = torch.nn.functional.softplus(torch.linspace(-1, 1, 4, dtype=DT)).sum()
    times = torch.tensor([0.3, 0.9, 1.0, 2.4, 4.1], dtype=DT)
    window = 5.0
    taus = torch.diff(times, prepend=torch.zeros(1, dtype=DT)).unsqueeze(0)
    h = random_h(1, 6)  # ignored by zero weights
    dist = dec(h[:, :5])
    last = dec(h[:, 5:])
    nll = -dist.log_prob(taus).sum() - last.log_survival(torch.tensor([[window - 4.1]], dtype=DT)).sum()
    expected = -(5 * torch.log(r) - r * window)
    torch.testing.assert_close(nll, expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------- quantile search


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_icdf_inverts_cdf_monotone_extremes_and_ties(name, dtype):
    """icdf(cdf(tau)) == tau over 8 decades, monotone in u, u near 0 and 1, u = 0 and repeated u (ties)."""
    dec = make_decoder(name).to(dtype).eval()
    rtol = 1e-5 if dtype == torch.float64 else 2e-3
    with torch.no_grad():
        dist = dec(random_h().to(dtype))
        tau = torch.logspace(-4, 2, 13, dtype=dtype).expand(2, 3, 13)
        u = dist.cdf(tau)
        # float32 cdf = -expm1(log S) itself is only ~1e-7 absolute: compare where that is small relative to u
        ok = (u > 1e-3) & (u < 1 - 1e-3) if dtype == torch.float32 else (u > 1e-12) & (u < 1 - 1e-9)
        back = dist.icdf(u)
        torch.testing.assert_close(back[ok], tau[ok], rtol=rtol, atol=0)
        grid = torch.tensor([0.0, 1e-6, 1e-3, 0.25, 0.5, 0.5, 0.75, 0.999, 1 - 1e-5], dtype=dtype).expand(2, 3, 9)
        q = dist.icdf(grid)
        assert torch.isfinite(q).all() and (q.diff(dim=-1) >= 0).all()
        assert torch.equal(q[..., 0], torch.zeros(2, 3, dtype=dtype))  # u = 0 gives a zero gap
        assert torch.equal(q[..., 4], q[..., 5])  # ties
        inner = grid[..., 1:]
        atol = 1e-6 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(dist.cdf(q[..., 1:]), inner, rtol=10 * rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lnm_icdf_on_a_wide_multimodal_mixture(dtype):
    """Newton in the component-quantile bracket against a long float64 bisection, 32 well-separated components."""
    g = torch.Generator().manual_seed(0)
    lw = torch.log_softmax(2 * torch.randn(4, 16, 32, generator=g, dtype=DT), -1)
    m = 3 * torch.randn(4, 16, 32, generator=g, dtype=DT)
    ls = torch.randn(4, 16, 32, generator=g, dtype=DT) - 0.5
    ref = LogNormalMixture(lw, m, ls)
    dist = LogNormalMixture(lw.to(dtype), m.to(dtype), ls.to(dtype))
    for uu in (1e-6, 0.01, 0.3, 0.5, 0.9, 1 - 1e-5):
        u = torch.full((4, 16), uu, dtype=dtype)
        x = dist.icdf(u).log().double()
        u64 = u.double()
        q = m + ls.exp() * torch.special.ndtri(u64).unsqueeze(-1)  # component quantiles bracket the mixture's
        lo, hi = q.amin(-1), q.amax(-1)
        for _ in range(80):  # the reference: bisection of F on the precise side
            mid = 0.5 * (lo + hi)
            t = torch.exp(mid)
            below = torch.where(u64 > 0.5, ref.log_survival(t) > torch.log1p(-u64), ref._log_cdf(t) < torch.log(u64))
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        tol = 1e-9 if dtype == DT else 1e-3
        torch.testing.assert_close(x, 0.5 * (lo + hi), rtol=0, atol=tol)


@pytest.mark.parametrize("name", ["thp", "sahp"])
def test_quadrature_icdf_inverts_the_gauss_legendre_compensator_under_mc(name):
    """With the Monte Carlo rule the quantile still inverts the deterministic Gauss-Legendre Lambda, and trailing
    query points ([B, L, M]) give the same quantiles as [B, L]."""
    dist = make_decoder(name, integration="mc", integration_nodes=64)(random_h())
    with torch.no_grad():
        u = torch.tensor([[0.1, 0.5, 0.9], [0.01, 0.3, 0.99]], dtype=DT)
        q = dist.icdf(u)
        big = integrate.compensator(dist.log_intensity, q, "gauss_legendre", 64)
        torch.testing.assert_close(big, -torch.log1p(-u), rtol=1e-9, atol=0)
        stacked = dist.icdf(torch.stack([u, u.flip(-1)], dim=-1))
        torch.testing.assert_close(stacked[..., 0], q, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_newton_stops_when_converged_and_each_root_is_its_own(dtype):
    """``_safeguarded_newton`` on ``g(x) = x^3 + x - c``: stops well before ``steps`` once every element has
    converged (to rounding), and an element's root does not depend on what else is in the batch (a slow one
    alongside keeps the loop running; the converged element stays frozen)."""
    from mtpp.models.time_decoders import _safeguarded_newton

    calls = []

    def fn(x):
        calls.append(1)
        return x**3 + x - c, 3 * x**2 + 1

    c = torch.tensor([2.0, 10.0, 0.5], dtype=dtype)
    lo, hi = torch.full_like(c, -5.0), torch.full_like(c, 5.0)
    x = _safeguarded_newton(fn, torch.zeros_like(c), lo, hi, 40)
    assert len(calls) < 12
    ref = torch.tensor([np.roots([1, 0, 1, -v])[np.isreal(np.roots([1, 0, 1, -v]))].real[0] for v in (2, 10, 0.5)])
    torch.testing.assert_close(x.double(), ref.double(), rtol=4 * torch.finfo(dtype).eps, atol=0)
    # alone vs beside an element that starts at the far edge of a huge bracket (many bisections first)
    calls.clear()
    c = torch.tensor([2.0, 1e6], dtype=dtype)
    both = _safeguarded_newton(fn, torch.tensor([0.0, -1e3], dtype=dtype), torch.tensor([-5.0, -1e3], dtype=dtype),
                               torch.tensor([5.0, 1e3], dtype=dtype), 40)
    many = len(calls)
    c = torch.tensor([2.0], dtype=dtype)
    alone = _safeguarded_newton(fn, torch.zeros(1, dtype=dtype), torch.full((1,), -5.0, dtype=dtype),
                                torch.full((1,), 5.0, dtype=dtype), 40)
    assert many > len(calls) - many  # the slow element needed more steps
    assert torch.equal(both[:1], alone)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_ndtr_gradient_is_right_in_the_far_tails(dtype):
    """``d/dz log Phi(z) = phi(z) / Phi(z)`` against mpmath at 50 digits, from z = -1e30 to 40 (torch's own rule
    gives 0.40 instead of 1e5 at z = -1e5 in float32, and NaN below -1.8e19)."""
    mpmath = pytest.importorskip("mpmath")
    from mtpp.models.time_decoders import log_ndtr

    zs = [-1e30, -1e20, -1e10, -1e5, -1e3, -100.0, -40.0, -5.0, -1.0, 0.0, 1.0, 5.0, 8.0]
    z = torch.tensor(zs, dtype=dtype, requires_grad=True)
    y = log_ndtr(z)
    y.sum().backward()
    with mpmath.workdps(50):  # beyond -1e10 mpmath's exponents lose digits: there phi / Phi = -z (1 + O(z^-2))
        ref = [-v if v < -1e10 else float(mpmath.npdf(mpmath.mpf(v)) / mpmath.ncdf(mpmath.mpf(v))) for v in zs]
    assert torch.isfinite(z.grad).all()
    torch.testing.assert_close(z.grad.double(), torch.tensor(ref, dtype=torch.float64),
                               rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
    torch.testing.assert_close(y.detach(), torch.special.log_ndtr(z.detach()))  # the values are torch's


def test_lnm_tie_term_gradient_is_finite_with_a_needle_component_far_away():
    """The tie term ``log F(delta)`` of a mixture with one extremely narrow component far above ``delta``
    (``z ~ -1e20`` there, ``log Phi = -inf`` in float32): finite gradients, the other components' as without it."""
    log_w = torch.log(torch.tensor([[0.5, 0.5]])).requires_grad_()
    m = torch.tensor([[-14.0, 2.0]], requires_grad=True)
    log_s = torch.tensor([[0.0, -45.0]], requires_grad=True)  # sigma 2.9e-20 at log tau = 2
    dist = LogNormalMixture(log_w, m, log_s)
    lp = dist.log_prob(torch.tensor([1e-9]))  # a tie: scores log F(delta)
    lp.sum().backward()
    for t in (log_w, m, log_s):
        assert torch.isfinite(t.grad).all()
    assert float(m.grad[0, 1]) == 0.0 and float(log_s.grad[0, 1]) == 0.0  # the needle has no mass at delta


# ------------------------------------------------------------------------------------------- two spaces, cache


def _spy_on_calls(dist: IntensityDistribution) -> dict[str, list[torch.Size]]:
    """Record the query shapes of the log-space (component) and linear-space (ground) intensity calls."""
    calls: dict[str, list[torch.Size]] = {"log": [], "ground": []}
    log_fn, ground_fn = dist.component_log_intensity, dist._ground

    def log_spy(tau):
        calls["log"].append(tau.shape)
        return log_fn(tau)

    def ground_spy(tau):
        calls["ground"].append(tau.shape)
        return ground_fn(tau)

    dist.component_log_intensity, dist._ground = log_spy, ground_spy
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["thp", "sahp"])
def test_linear_node_intensity_equals_log_space_intensity(name, dtype):
    """The node path (linear ``sum_c lambda_c``) is the log path exponentiated, over 18 decades of tau."""
    dist = make_decoder(name).to(dtype)(random_h().to(dtype))
    tau = torch.tensor([0.0, 1e-12, 1e-3, 0.5, 3.0, 1e2, 1e6], dtype=dtype).expand(2, 3, 7)
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(dist.ground_intensity(tau), dist.log_intensity(tau).exp(), rtol=rtol, atol=0)
    assert (dist.ground_intensity(tau) > 0).all()


@pytest.mark.parametrize("name", ["thp", "sahp"])
def test_log_prob_evaluates_nodes_in_linear_space_and_tau_in_log_space(name):
    """One ``[B, L, N]`` linear call on the nodes, one ``[B, L]`` log call at tau: no log values on the nodes."""
    dist = make_decoder(name, integration_nodes=9)(random_h())
    tau = torch.tensor([[0.0, 0.4, 2.0], [1e-12, 1.0, 1e6]], dtype=DT)
    expected = dist.log_prob(tau)
    calls = _spy_on_calls(dist)
    tau2 = tau.clone()
    torch.testing.assert_close(dist.log_prob(tau2), expected, rtol=0, atol=0)
    assert calls == {"log": [torch.Size([2, 3])], "ground": [torch.Size([2, 3, 9])]}


@pytest.mark.parametrize("name", ["thp", "sahp"])
def test_compensator_cache_at_the_observed_gaps(name):
    """``cdf`` after ``log_prob`` on the same tensor reuses its ``Lambda`` (with ``mc``: the very same nodes);
    another tensor, an in-place change or another grad mode recomputes (no stale values)."""
    dist = make_decoder(name, integration="mc", integration_nodes=5)(random_h())
    tau = torch.tensor([[0.0, 0.4, 2.0], [1e-12, 1.0, 30.0]], dtype=DT)
    big = dist.log_intensity(tau) - dist.log_prob(tau)
    calls = _spy_on_calls(dist)
    cached = dist.cumulative_hazard(tau)
    tie = tau < dist.tie_resolution  # ties: log_prob is log F(delta), the kept Lambda interpolated (0 at 0)
    torch.testing.assert_close(cached[~tie], big[~tie], rtol=1e-12, atol=1e-15)  # up to cancellation in log_prob
    assert cached[0, 0] == 0
    assert torch.equal(dist.cdf(tau), -torch.expm1(-cached))
    assert calls["ground"] == []  # no new nodes
    fresh = dist.cumulative_hazard(tau.clone())  # fresh MC draw: differs except at tau = 0
    assert calls["ground"] == [torch.Size([2, 3, 5])]
    assert not torch.equal(fresh[tau > 0], big[tau > 0])
    with torch.no_grad():
        dist.cumulative_hazard(tau)
    assert len(calls["ground"]) == 2  # other grad mode: recomputed
    tau.mul_(2.0)  # in place: the version counter changes
    dist.cumulative_hazard(tau)
    assert len(calls["ground"]) == 3
    # deterministic rule: the cached value is exactly what a recomputation gives
    dist = make_decoder(name)(random_h())
    tau = torch.tensor([[0.0, 0.4, 2.0], [1e-12, 1.0, 30.0]], dtype=DT)
    dist.log_prob(tau)
    tie = tau < dist.tie_resolution
    assert torch.equal(dist.cumulative_hazard(tau)[~tie], dist.cumulative_hazard(tau.clone())[~tie])


@pytest.mark.parametrize("extra", [(), (3,)])
def test_fnn_rate_is_the_derivative_of_its_cumulative_hazard(extra):
    """``MonotoneCumulativeHazard``'s written-out chain rule equals forward-mode autograd of ``Lambda`` in ``tau``
    (float64, gaps from 0 to 1e6, one or several query points per event), and so do its parameter gradients (what
    training differentiates)."""
    from mtpp.models.time_decoders import MonotoneCumulativeHazard

    torch.manual_seed(0)
    net = MonotoneCumulativeHazard(5, 4, 6).double()
    with torch.no_grad():  # positive-weight logits spread, so that units saturate at some gaps and not at others
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    h = torch.randn(2, 7, 5, dtype=torch.float64)
    tau = torch.cat([torch.zeros(2, 1), torch.full((2, 1), 1e-9), torch.logspace(-6, 6, 5).expand(2, 5)], 1)
    tau = tau.double()[(...,) + (None,) * len(extra)].expand(2, 7, *extra).contiguous() * (1 + torch.rand(2, 7, *extra))
    hazards = net(h)
    big, rate = hazards(tau)
    ref_big, ref_rate = torch.func.jvp(lambda t: hazards(t, with_rate=False)[0], (tau,), (torch.ones_like(tau),))
    torch.testing.assert_close(big, ref_big, rtol=0, atol=0)
    torch.testing.assert_close(rate, ref_rate, rtol=1e-12, atol=1e-300)
    weights = torch.rand_like(rate)
    grads = torch.autograd.grad((rate * weights).sum(), list(net.parameters()))
    hazards = net(h)
    _, ref_rate = torch.func.jvp(lambda t: hazards(t, with_rate=False)[0], (tau,), (torch.ones_like(tau),))
    ref_grads = torch.autograd.grad((ref_rate * weights).sum(), list(net.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("guide_scale", [1.0, 0.2, 5.0])
def test_sahp_guided_grid_search_is_the_binary_search_bit_for_bit(guide_scale):
    """Under ``"adaptive"`` SAHP's ``icdf`` finds the grid cell of a quantile from the cheap cumulative guide and
    checks it with the exact rule at the cell's two ends (2 points of the costly rule per quantile instead of
    5): the cell, its end values and so every quantile are the binary search's, bit for bit; a guide off by
    cells (here scaled by 0.2 or 5) falls back to the binary search, with the same result."""
    dist = make_decoder("sahp", integration="mc", eval_integration="adaptive").eval()(random_h(3, 4))
    assert dist._guided_search
    a, b = LOG_TAU_BRACKET
    grid = torch.linspace(a, b, int(round((b - a) / QUANTILE_GRID_STEP)) + 1, dtype=DT)
    u = torch.tensor([1e-300, 1e-12, 1e-6, 0.05, 0.5, 0.95, 1 - 1e-6, 1 - 1e-15], dtype=DT).expand(3, 4, 8)
    target = torch.cat([-torch.log1p(-u), torch.full((3, 4, 1), 1e30, dtype=DT)], -1)  # 1e30: past the grid
    guide = dist._grid_hazard
    dist._grid_hazard = lambda g: guide(g) * guide_scale
    with torch.no_grad():
        got = dist._search_grid(grid, target)
        want = HazardDistribution._search_grid(dist, grid, target)
        for x, y in zip(got, want):
            assert torch.equal(x, y)
        assert (got[0] == 0).any() and (got[0] == grid.shape[0]).any()  # both ends of the grid are exercised
        q = dist.icdf(u)
        dist._guided_search = False
        assert torch.equal(q, dist.icdf(u))
