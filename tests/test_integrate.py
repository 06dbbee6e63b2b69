"""Compensators: Gauss-Legendre against scipy quadrature, Monte Carlo unbiasedness within its standard error, and an
exponential-kernel Hawkes log-likelihood pushed through the same machinery against its closed form (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import torch

from mtpp.data.synthetic import HawkesParams, hawkes_log_likelihood, simulate_hawkes
from mtpp.errors import ConfigError
from mtpp.models import integrate
from mtpp.models.joint import MarkedIntensityDistribution
from mtpp.models.time_decoders import log_softplus

DT = torch.float64


def _softplus_mixture(a: torch.Tensor, b: torch.Tensor):
    """``log lambda(s) = log sum_c softplus(a_c s + b_c)`` for ``a, b: [B, L, C]``, ``s: [B, L, *extra]``."""

    def log_intensity(s: torch.Tensor) -> torch.Tensor:
        view = (*a.shape[:2], *([1] * (s.dim() - 2)), a.shape[-1])
        x = a.reshape(view) * s.unsqueeze(-1) + b.reshape(view)
        return torch.logsumexp(log_softplus(x), dim=-1)

    return log_intensity


@pytest.fixture
def mixture():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 4, generator=g, dtype=DT)
    b = torch.randn(2, 3, 4, generator=g, dtype=DT)
    tau = torch.rand(2, 3, generator=g, dtype=DT) * 4 + 0.1
    fn = _softplus_mixture(a, b)

    def reference(i: int, j: int) -> float:
        lam = lambda s: np.sum(np.logaddexp(0.0, a[i, j].numpy() * s + b[i, j].numpy()))  # noqa: E731
        return scipy.integrate.quad(lam, 0.0, float(tau[i, j]), epsabs=1e-13, epsrel=1e-12)[0]

    ref = torch.tensor([[reference(i, j) for j in range(3)] for i in range(2)], dtype=DT)
    return fn, tau, ref


def test_gauss_legendre_matches_scipy_quad(mixture):
    fn, tau, ref = mixture
    calls = []

    def counted(s):
        calls.append(s.shape)
        return fn(s)

    got = integrate.compensator(counted, tau, "gauss_legendre", 40)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    assert calls == [torch.Size([2, 3, 40])]  # one call on all nodes


def test_gauss_legendre_is_exact_for_polynomials_and_cached():
    tau = torch.tensor([[0.5, 2.0, 3.0]], dtype=DT)
    # degree 2N - 1 = 9 with N = 5: int_0^tau s^9 ds = tau^10 / 10
    got = integrate.compensator(lambda s: 9 * torch.log(s), tau, "gauss_legendre", 5)
    torch.testing.assert_close(got, tau**10 / 10, rtol=1e-13, atol=0)
    x1, w1 = integrate.gauss_legendre(5, DT, torch.device("cpu"))
    x2, _ = integrate.gauss_legendre(5, DT, torch.device("cpu"))
    assert x1 is x2 and abs(float(w1.sum()) - 1.0) < 1e-15


def test_monte_carlo_is_unbiased_within_four_standard_errors(mixture):
    fn, tau, ref = mixture
    reps = 400
    taus = tau.unsqueeze(-1).expand(2, 3, reps)  # independent estimates, one call
    gen = torch.Generator().manual_seed(1)
    est = integrate.compensator(fn, taus, "mc", 16, generator=gen)  # [2, 3, reps]
    mean = est.mean(-1)
    se = est.std(-1) / reps**0.5
    assert ((mean - ref).abs() < 4 * se).all()
    assert (se > 0).all()


def test_monte_carlo_draws_fresh_nodes_and_is_exact_for_constants():
    tau = torch.tensor([[1.0, 2.0]], dtype=DT)
    fn = lambda s: torch.sin(s)  # noqa: E731
    assert not torch.equal(integrate.compensator(fn, tau, "mc", 8), integrate.compensator(fn, tau, "mc", 8))
    const = integrate.compensator(lambda s: torch.full_like(s, 0.7), tau, "mc", 8)
    torch.testing.assert_close(const, tau * torch.exp(torch.tensor(0.7, dtype=DT)))


def test_zero_gap_gives_zero_and_finite_gradients():
    a = torch.randn(1, 2, 3, dtype=DT, requires_grad=True)
    b = torch.randn(1, 2, 3, dtype=DT, requires_grad=True)
    tau = torch.zeros(1, 2, dtype=DT)
    for method in integrate.NODE_METHODS:
        out = integrate.compensator(_softplus_mixture(a, b), tau, method, 10)
        assert torch.equal(out, torch.zeros_like(out))
        ga, gb = torch.autograd.grad(out.sum(), [a, b])
        assert torch.isfinite(ga).all() and torch.isfinite(gb).all()


def test_bad_rule_is_a_config_error():
    tau = torch.ones(1, 1)
    with pytest.raises(ConfigError, match="per-component rule"):
        integrate.compensator(torch.log, tau, "adaptive", 10)
    with pytest.raises(ConfigError, match="gauss_legendre"):
        integrate.compensator(torch.log, tau, "trapezoid", 10)
    with pytest.raises(ConfigError, match=">= 1"):
        integrate.compensator(torch.log, tau, "mc", 0)


# --------------------------------------------------------------------------------------------- Hawkes


def _hawkes_marked_intensity(times: np.ndarray, marks: np.ndarray, params: HawkesParams):
    """Test-only decoder: between events the marked Hawkes intensities are ``mu_k + c_ik exp(-beta s)`` with
    ``c_ik = sum_{j < i} alpha[k, k_j] beta exp(-beta (t_{i-1} - t_j))`` (the excitation just after event
    ``i - 1``). Returns ``component_log_intensity(s: [1, n+1, *extra]) -> [1, n+1, *extra, K]`` for the ``n + 1``
    intervals (the last one runs from ``t_n`` to the window end)."""
    beta = float(params.beta)
    n = len(times)
    prev = np.concatenate([[0.0], times])  # t_{i-1}, i = 1..n+1
    # c[i, k]: events j with t_j <= t_{i-1}, i.e. j < i (0-based j <= i - 1 over the n events)
    dt = prev[:, None] - times[None, :]  # [n+1, n]
    before = np.arange(n)[None, :] < np.arange(n + 1)[:, None]
    kern = np.where(before, beta * np.exp(-beta * np.where(before, dt, 0.0)), 0.0)  # [n+1, n]
    c = kern @ params.alpha[:, marks].T  # [n+1, K]
    mu = torch.tensor(params.mu, dtype=DT)
    c_t = torch.tensor(c, dtype=DT).unsqueeze(0)  # [1, n+1, K]

    def component_log_intensity(s: torch.Tensor) -> torch.Tensor:
        extra = s.dim() - 2
        cc = c_t.reshape(1, n + 1, *([1] * extra), -1)
        return torch.log(mu + cc * torch.exp(-beta * s.unsqueeze(-1)))

    return component_log_intensity


@pytest.mark.parametrize("seed", [0, 1])
def test_hawkes_log_likelihood_through_the_compensator_machinery(seed):
    params = HawkesParams(mu=[0.3, 0.2, 0.1], alpha=[[0.2, 0.1, 0.0], [0.1, 0.3, 0.1], [0.0, 0.2, 0.2]], beta=1.5)
    seq = simulate_hawkes(params, window_end=20.0, rng=np.random.default_rng(seed))
    assert len(seq) > 5
    n = len(seq)
    fn = _hawkes_marked_intensity(seq.times, seq.marks, params)
    dist = MarkedIntensityDistribution(fn, torch.Size([1, n + 1]), DT, torch.device("cpu"), "gauss_legendre", 40)
    gaps = torch.tensor(np.append(seq.taus, seq.window_end - seq.times[-1]), dtype=DT).unsqueeze(0)  # [1, n+1]
    marks = torch.tensor(seq.marks).unsqueeze(0)
    log_f = dist.log_prob(gaps)[:, :n]
    log_p = dist.mark_log_probs(gaps)[:, :n].gather(-1, marks.unsqueeze(-1)).squeeze(-1)
    log_s = dist.log_survival(gaps)[:, n]
    total = (log_f + log_p).sum() + log_s.sum()
    expected = hawkes_log_likelihood(seq, params)
    assert abs(total.item() - expected) <= 1e-6 * abs(expected)


def test_linear_space_integral_matches_the_log_space_compensator(mixture):
    fn, tau, ref = mixture
    got = integrate.integral(lambda s: fn(s).exp(), tau, "gauss_legendre", 40)
    torch.testing.assert_close(got, integrate.compensator(fn, tau, "gauss_legendre", 40), rtol=1e-14, atol=0)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("decoder", ["thp", "sahp"])
def test_compiled_nll_with_monte_carlo_compensator(decoder):
    """``train.compile: true`` path: ``torch.compile(model.nll, dynamic=True)`` traces the MC quadrature (it used
    to fail on ``torch.rand(..., generator=None)``) over two batch shapes, with the eager values and a backward.

    Backend ``"eager"`` (dynamo tracing with fake tensors is what failed; it keeps the test at a few seconds).
    Checked by hand (torch 2.13 CPU): ``"aot_eager"`` gives the same values as eager; ``"inductor"`` compiles and
    trains too, but draws its MC uniforms from its own generator (values differ from eager under the same seed;
    with ``gauss_legendre`` they agree to 2.4e-7 in float32)."""
    from mtpp.data.batch import collate
    from mtpp.data.sequence import EventSequence
    from mtpp.models import ModelConfig, build_model

    cfg = ModelConfig(
        encoder="gru", decoder=decoder, parametrisation="base", hidden_size=8, mark_embedding_size=4,
        time_embedding_size=4, num_components=3, integration="mc", integration_nodes=8,
    )
    torch.manual_seed(0)
    model = build_model(cfg, 5)
    compiled = torch.compile(model.nll, dynamic=True, backend="eager")
    rng = np.random.default_rng(0)
    for lengths in [(9, 6), (12, 4, 7)]:
        seqs = [EventSequence(np.cumsum(rng.exponential(1.0, n)), rng.integers(0, 5, n), None) for n in lengths]
        batch = collate(seqs, dtype=torch.float32)
        torch.manual_seed(3)
        out = compiled(batch)
        torch.manual_seed(3)
        ref = model.nll(batch)
        torch.testing.assert_close(out.time_terms, ref.time_terms)
        torch.testing.assert_close(out.mark_terms, ref.mark_terms)
        (out.time_nll.sum() + out.mark_nll.sum()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_monte_carlo_cdf_is_biased_low_as_documented():
    """``Lambda_mc`` is unbiased, ``cdf_mc = 1 - exp(-Lambda_mc)`` is not (Jensen, concave): its mean is below the
    exact cdf by about ``exp(-Lambda) Var[Lambda_mc] / 2`` (IntensityDistribution's docstring)."""
    from mtpp.models.registry import TIME_DECODERS
    from mtpp.models.config import ModelConfig

    dec = TIME_DECODERS.build("thp", 2, ModelConfig(num_components=2, integration="mc", integration_nodes=4)).to(DT)
    with torch.no_grad():
        dec.intensity.linear.weight.zero_()
        dec.intensity.linear.bias.copy_(torch.tensor([3.0, 0.0], dtype=DT))
        dec.intensity.slope.copy_(torch.tensor([-8.0, -0.5], dtype=DT))
    h = torch.zeros(1, 1, 2, dtype=DT)
    reps = 20000
    tau = torch.full((1, 1, reps), 0.6, dtype=DT)
    torch.manual_seed(0)
    mc = dec(h)
    big = mc.cumulative_hazard(tau)
    cdf_mc = -torch.expm1(-big)
    exact_big = dec.eval()(h).cumulative_hazard(tau[..., :1])
    exact_cdf = -torch.expm1(-exact_big)
    se_big = big.std() / reps**0.5
    assert abs(float(big.mean() - exact_big)) < 4 * float(se_big)  # Lambda: unbiased
    bias = float(cdf_mc.mean() - exact_cdf)
    se = float(cdf_mc.std()) / reps**0.5
    assert bias < -6 * se  # cdf: biased low, many standard errors away
    predicted = -float(torch.exp(-exact_big)) * float(big.var()) / 2
    assert bias == pytest.approx(predicted, rel=0.3)


def test_softplus_antiderivative_equals_the_dilogarithm() -> None:
    """``SP(y) = -Li2(-e^y)`` (the closed form of THP's compensator) against mpmath's polylog, to rounding in
    float64 over ``y in [-700, 0]`` and to ~1e-5 in float32 wherever ``e^y`` is a normal float32."""
    mpmath = pytest.importorskip("mpmath")
    from mtpp.models.integrate import _softplus_antiderivative_negative

    y = np.concatenate([-np.logspace(-12, np.log10(700.0), 400), [0.0, -math.log(2.0)]])
    ref = np.array([float(-mpmath.polylog(2, -mpmath.exp(mpmath.mpf(v)))) for v in y])
    got = _softplus_antiderivative_negative(torch.tensor(y, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, ref, rtol=2e-15, atol=0)
    assert got[-2] == pytest.approx(math.pi**2 / 12, rel=1e-16)
    m = y > -80
    got32 = _softplus_antiderivative_negative(torch.tensor(y[m], dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got32, ref[m], rtol=1e-5, atol=0)


def test_sinh_gauss_legendre_is_the_sinh_map_and_integrates_a_transition() -> None:
    """``sinh_gauss_legendre`` (evaluated at every step of SAHP's quantile search, so written with few passes over
    the node tensor) is the rule of its docstring: nodes ``q + s sinh(v)`` and weights ``span w s cosh(v)`` to
    rounding, nodes in ``[0, length]``, zero weights for ``length = 0``; and it integrates a sharp softplus
    transition at ``centre`` (width ``scale``) to 1e-8 against scipy."""
    g = torch.Generator().manual_seed(0)
    length = torch.rand(40, generator=g, dtype=torch.float64) * torch.tensor([1.0, 1e-3, 10.0, 0.0]).repeat(10)
    centre = torch.randn(40, generator=g, dtype=torch.float64) * 2.0
    scale = torch.exp(torch.randn(40, generator=g, dtype=torch.float64) * 3.0)
    nodes, weights = integrate.sinh_gauss_legendre(length, centre, scale, 24)
    x, w = integrate.gauss_legendre(24, torch.float64, torch.device("cpu"))
    q = torch.minimum(centre.clamp(min=0.0), length)
    v0 = torch.asinh(-q / scale).unsqueeze(-1)
    span = torch.asinh((length - q) / scale).unsqueeze(-1) - v0
    v = v0 + span * x
    s = scale.unsqueeze(-1)
    want_nodes = torch.minimum((q.unsqueeze(-1) + s * torch.sinh(v)).clamp(min=0.0), length.unsqueeze(-1))
    torch.testing.assert_close(nodes, want_nodes, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(weights, span * w * s * torch.cosh(v), rtol=1e-14, atol=0.0)
    assert (nodes >= 0).all() and (nodes <= length.unsqueeze(-1)).all()
    assert (weights[length == 0] == 0).all()
    # a transition of width 1e-3 at 0.3 inside [0, 1]
    f = lambda d: np.logaddexp(0.0, (d - 0.3) / 1e-3) * 1e-3  # noqa: E731
    n, wt = integrate.sinh_gauss_legendre(torch.tensor([1.0], dtype=torch.float64),
                                          torch.tensor([0.3], dtype=torch.float64),
                                          torch.tensor([1e-3], dtype=torch.float64), 24)  # fmt: skip
    got = float((wt * torch.from_numpy(f(n.numpy()))).sum())
    want = scipy.integrate.quad(f, 0.0, 1.0, points=[0.3], epsabs=1e-14, limit=200)[0]
    assert abs(got - want) < 1e-8 * abs(want)  # measured 6e-10
