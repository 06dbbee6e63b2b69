"""Mark and joint decoders: normalisation over marks and over time, ``p(k | tau) = lambda_k / lambda``, per-mark
derivatives of the FNN hazards, a constant-intensity marked Poisson limit, and edge values for K = 1 / K = 500."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
import torch
import torch.nn.functional as F

from mtpp.models.base import JointDistribution
from mtpp.models.config import ModelConfig
from mtpp.models.registry import JOINT_DECODERS, MARK_DECODERS, TIME_DECODERS
from mtpp.models.time_decoders import TIE_FLOOR, MonotoneCumulativeHazard, SoftplusGapIntensity

DT = torch.float64
D = 6
JOINT = ["thp", "sahp", "fnn"]
CFG = dict(integration="gauss_legendre", integration_nodes=64, decoder_hidden_size=8)


def make_joint(name: str, k: int, seed: int = 0, **cfg_kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    dec = JOINT_DECODERS.build(name, D, k, ModelConfig(**{**CFG, **cfg_kw})).to(DT)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(0.3 * torch.randn_like(p))
        if name == "thp":
            dec.intensity.floor.fill_(-3.0)
    return dec


def random_h(b: int = 2, l: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, l, D, generator=torch.Generator().manual_seed(seed), dtype=DT)


# ------------------------------------------------------------------------------------------- mark decoders


@pytest.mark.parametrize("name", ["categorical", "categorical_tau"])
@pytest.mark.parametrize("k", [1, 7, 500])
def test_mark_decoders_are_normalised(name, k):
    dec = MARK_DECODERS.build(name, D, k, ModelConfig(decoder_hidden_size=8)).to(DT)
    h = random_h().requires_grad_(True)
    tau = torch.tensor([[0.0, 1e-12, 1.0], [1e6, 0.3, 2.0]], dtype=DT)
    lp = dec(h, tau)
    assert lp.shape == (2, 3, k)
    torch.testing.assert_close(lp.logsumexp(-1), torch.zeros(2, 3, dtype=DT), rtol=0, atol=1e-12)
    (g,) = torch.autograd.grad(lp[..., 0].sum(), h)
    assert torch.isfinite(g).all()


def test_categorical_ignores_tau_and_categorical_tau_uses_log_tau():
    h = random_h()
    cat = MARK_DECODERS.build("categorical", D, 4, ModelConfig()).to(DT)
    assert torch.equal(cat(h, None), cat(h, torch.rand(2, 3, dtype=DT)))
    dec = MARK_DECODERS.build("categorical_tau", D, 4, ModelConfig()).to(DT)
    a, b = dec(h, torch.full((2, 3), 0.1, dtype=DT)), dec(h, torch.full((2, 3), 10.0, dtype=DT))
    assert not torch.allclose(a, b)
    # tie rule: a zero gap is the feature log(TIE_FLOOR)
    zero = torch.zeros(2, 3, dtype=DT)
    torch.testing.assert_close(dec(h, zero), dec(h, torch.full_like(zero, TIE_FLOOR)))
    with pytest.raises(ValueError, match="tau"):
        dec(h, None)


# ------------------------------------------------------------------------------------------- joint decoders


@pytest.mark.parametrize("name", JOINT)
def test_marks_are_intensity_ratios(name):
    dist = make_joint(name, 5)(random_h())
    assert isinstance(dist, JointDistribution)
    tau = torch.tensor([[0.05, 0.7, 3.0], [0.2, 1.5, 0.0]], dtype=DT)
    comp = dist.component_log_intensity(tau)  # [2, 3, 5]
    torch.testing.assert_close(dist.log_intensity(tau), comp.logsumexp(-1))
    lp = dist.mark_log_probs(tau)
    torch.testing.assert_close(lp, comp - dist.log_intensity(tau).unsqueeze(-1))
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2, 3, dtype=DT))


@pytest.mark.parametrize("name", JOINT)
def test_joint_ground_density_integrates_to_one(name):
    dist = make_joint(name, 4, seed=2)(random_h(1, 3, seed=3))

    def f(t: float) -> np.ndarray:
        return dist.log_prob(torch.full((1, 3), t, dtype=DT)).exp().detach().numpy().ravel()

    split = float(dist.icdf(torch.full((1, 3), 0.5, dtype=DT)).median())
    quad = scipy.integrate.quad_vec
    mass = quad(f, 0, split, epsabs=1e-10)[0] + quad(f, split, np.inf, epsabs=1e-10)[0]
    np.testing.assert_allclose(mass, 1.0, atol=1e-3)
    u = torch.tensor([[0.1, 0.5, 0.9]], dtype=DT)
    with torch.no_grad():
        torch.testing.assert_close(dist.cdf(dist.icdf(u)), u, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", JOINT)
@pytest.mark.parametrize("k", [1, 500])
def test_joint_finite_values_and_gradients(name, k):
    dec = make_joint(name, k)
    h = random_h().requires_grad_(True)
    dist = dec(h)
    tau = torch.tensor([[0.0, 1e-12, 1e6], [1.0, 0.0, 1e6]], dtype=DT)
    lp, ls, mk = dist.log_prob(tau), dist.log_survival(tau), dist.mark_log_probs(tau)
    assert torch.isfinite(lp).all() and torch.isfinite(ls).all() and torch.isfinite(mk).all()
    torch.testing.assert_close(mk.logsumexp(-1), torch.zeros(2, 3, dtype=DT), rtol=0, atol=1e-10)
    loss = (lp + ls).sum() + mk[..., 0].sum()
    grads = torch.autograd.grad(loss, [h, *dec.parameters()], allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", JOINT)
def test_joint_large_batch_float32(name):
    torch.manual_seed(0)
    dec = JOINT_DECODERS.build(name, D, 3, ModelConfig(integration_nodes=8, decoder_hidden_size=8))
    h = torch.randn(1, 5000, D)
    tau = torch.cat([torch.zeros(1, 100), torch.rand(1, 4900) * 3], dim=1)
    dist = dec(h)
    loss = -dist.log_prob(tau).sum() - dist.mark_log_probs(tau)[..., 0].sum()
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in dec.parameters() if p.grad is not None)


def test_fnn_per_mark_intensities_are_derivatives():
    dist = make_joint("fnn", 4)(random_h())
    tau = torch.tensor([[0.05, 0.7, 3.0], [0.2, 1.5, 10.0]], dtype=DT)
    big, lam = dist.hazards(tau)  # [2, 3, 4] each
    eps = 1e-6
    fd = (dist.hazards(tau + eps)[0] - dist.hazards(tau - eps)[0]) / (2 * eps)
    torch.testing.assert_close(lam, fd, rtol=1e-7, atol=0)
    for k in range(4):  # reverse-mode autograd, one output at a time
        t = tau.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(dist.hazards(t)[0][..., k].sum(), t)
        torch.testing.assert_close(lam[..., k], g, rtol=1e-12, atol=0)
    zero = torch.zeros(2, 3, dtype=DT)
    assert torch.equal(dist.hazards(zero)[0], torch.zeros(2, 3, 4, dtype=DT))


@pytest.mark.parametrize("method", ["mc", "gauss_legendre"])
@pytest.mark.parametrize("name", ["thp", "sahp"])
def test_constant_marked_intensities_give_marked_poisson_likelihood(name, method):
    """Zero weights: lambda_k = r_k constant, so L_T + L_M = -(sum_i log r_{k_i} - T sum_k r_k)."""
    k = 3
    dec = make_joint(name, k, integration=method, integration_nodes=5)
    base = torch.tensor([-1.0, 0.0, 0.5], dtype=DT)
    with torch.no_grad():
        for p in dec.parameters():
            p.zero_()
        if name == "thp":
            dec.intensity.linear.bias.copy_(base)
            dec.intensity.floor.fill_(-2.0)
            rates = F.softplus(base) + F.softplus(torch.tensor(-2.0, dtype=DT))
        else:
            dec.intensity.linear.bias[: 2 * k].copy_(base.repeat(2))
            rates = F.softplus(base)
    times = torch.tensor([0.4, 1.1, 1.3, 2.9], dtype=DT)
    marks = torch.tensor([[2, 0, 1, 2]])
    window = 4.0
    taus = torch.diff(times, prepend=torch.zeros(1, dtype=DT)).unsqueeze(0)
    h = random_h(1, 5)
    dist, last = dec(h[:, :4]), dec(h[:, 4:])
    l_t = -dist.log_prob(taus).sum() - last.log_survival(torch.tensor([[window - 2.9]], dtype=DT)).sum()
    l_m = -dist.mark_log_probs(taus).gather(-1, marks.unsqueeze(-1)).sum()
    expected = -(torch.log(rates[marks]).sum() - window * rates.sum())
    torch.testing.assert_close(l_t + l_m, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dist.mark_log_probs(taus)[0, 0], torch.log(rates / rates.sum()))


def test_joint_and_ground_share_the_intensity_code():
    """Composition, not copies: a joint decoder is the ground decoder's intensity module with K outputs."""
    cfg = ModelConfig(num_components=6)
    for name, module, attr in (("thp", SoftplusGapIntensity, "intensity"), ("fnn", MonotoneCumulativeHazard, "hazard")):
        ground = getattr(TIME_DECODERS.build(name, D, cfg), attr)
        joint = getattr(JOINT_DECODERS.build(name, D, 11, cfg), attr)
        assert type(ground) is type(joint) is module
        assert joint.num_outputs == 11


@pytest.mark.parametrize("k", [3, 500])
@pytest.mark.parametrize("name", ["thp", "sahp"])
def test_joint_nodes_use_only_the_linear_ground_intensity(name, k):
    """``mark_log_probs(tau)`` then ``log_prob(tau)`` (what the model does): ONE per-mark log call ``[B, L]`` at
    the event times, shared by both, and ONE linear ground call ``[B, L, N]`` on the nodes (no per-mark values)."""
    dist = make_joint(name, k, integration_nodes=7)(random_h())
    tau = torch.tensor([[0.0, 0.7, 3.0], [1e-12, 1.5, 1e6]], dtype=DT)
    ref_mk, ref_lp = dist.mark_log_probs(tau.clone()), dist.log_prob(tau.clone())
    calls: dict[str, list] = {"log": [], "ground": []}
    log_fn, ground_fn = dist.component_log_intensity, dist._ground
    dist.component_log_intensity = lambda s: calls["log"].append(s.shape) or log_fn(s)
    dist._ground = lambda s: calls["ground"].append(s.shape) or ground_fn(s)
    mk, lp = dist.mark_log_probs(tau), dist.log_prob(tau)
    assert calls == {"log": [torch.Size([2, 3])], "ground": [torch.Size([2, 3, 7])]}
    assert torch.equal(mk, ref_mk) and torch.equal(lp, ref_lp)
    torch.testing.assert_close(dist.ground_intensity(tau), dist.log_intensity(tau).exp(), rtol=1e-12, atol=0)
