"""The tie policy (issue 11 §4): every decoder scores a gap below the tie resolution ``delta`` as ``log F(delta)``
(exact answers), the density plus the tie mass integrates to 1 (LNM: including the mass below 1e-10 that the old
density floor lost), no NLL can fall without bound on tied data, and the tie counts / warning are exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch

from mtpp.data.sequence import EventSequence
from mtpp.errors import ConfigError
from mtpp.models.config import ModelConfig
from mtpp.models.registry import JOINT_DECODERS, TIME_DECODERS
from mtpp.models.ties import count_ties, tie_mask, tie_summary, tie_warning
from mtpp.models.time_decoders import TIE_RESOLUTION, LogNormalMixture, log1mexp

DT = torch.float64
D = 4


def decoder(kind: str, name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(num_components=3, decoder_hidden_size=8, **kw)
    dec = TIME_DECODERS.build(name, D, cfg) if kind == "time" else JOINT_DECODERS.build(name, D, 3, cfg)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return dec.to(DT).eval()


CASES = [("time", n) for n in ("lnm", "rmtpp", "fnn", "thp", "sahp")] + [("joint", n) for n in ("thp", "sahp", "fnn")]


@pytest.mark.parametrize("kind,name", CASES)
def test_a_tie_scores_log_cdf_at_the_resolution(kind, name):
    dec = decoder(kind, name, tie_resolution=1e-3)
    h = torch.randn(2, 3, D, dtype=DT)
    dist = dec(h)
    assert dist.tie_resolution == 1e-3
    delta = torch.full((2, 3), 1e-3, dtype=DT)
    expected = log1mexp(dist.cumulative_hazard(delta))  # log F(delta) = log(1 - exp(-Lambda(delta)))
    if name == "lnm":  # log F directly from log_ndtr (F(delta) may be far below float64's resolution of S)
        expected = dist._log_cdf(delta)
    for t in (0.0, 1e-9, 0.999e-3):
        got = dist.log_prob(torch.full((2, 3), t, dtype=DT))
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    above = torch.full((2, 3), 2e-3, dtype=DT)  # at and above delta: the density, as before
    dens = dist.log_intensity(above) - dist.cumulative_hazard(above)
    torch.testing.assert_close(dist.log_prob(above), dens, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(dec(h).log_prob(torch.zeros(2, 3, dtype=DT)).sum(), list(dec.parameters()),
                                allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


def test_lnm_tie_mass_is_the_exact_normal_cdf_and_the_total_is_one():
    """One wide component far below 1e-10: the old floor lost ``F(1e-10)`` of the mass (here 0.16); now
    ``F(delta) + int_delta^inf f = 1`` and ``log_prob(0) = log Phi((log delta - m) / s)`` exactly."""
    m, s = -30.0, 4.0
    dist = LogNormalMixture(torch.zeros(1, 1, 1, dtype=DT), torch.full((1, 1, 1), m, dtype=DT),
                            torch.full((1, 1, 1), math.log(s), dtype=DT))
    delta = dist.tie_resolution
    lost_before = scipy.stats.norm.cdf((math.log(1e-10) - m) / s)
    assert lost_before > 0.1
    tie = float(dist.log_prob(torch.zeros(1, 1, dtype=DT)))
    assert tie == pytest.approx(scipy.stats.norm.logcdf((math.log(delta) - m) / s), rel=1e-12)
    f = lambda t: float(dist.log_prob(torch.full((1, 1), t, dtype=DT)).exp())  # noqa: E731
    edges = np.logspace(math.log10(delta), 12, 19)
    above = sum(
        scipy.integrate.quad(f, a, b, epsabs=1e-14, epsrel=1e-11, limit=200)[0] for a, b in zip(edges[:-1], edges[1:])
    )
    above += scipy.integrate.quad(f, edges[-1], np.inf)[0]
    assert math.exp(tie) + above == pytest.approx(1.0, abs=1e-9)


def test_no_decoder_nll_falls_without_bound_on_tied_data():
    """Adam on an LNM and a THP with half the gaps tied: the tie terms stay >= 0 (a probability) however the
    density spikes at 0; under the old rule (LNM density at max(tau, 1e-10)) the same 300 steps took the LNM tie
    term to -18.0 nats (measured) and falling."""
    taus = torch.tensor([[0.0, 0.0, 0.0, 0.7, 1.3, 2.0]], dtype=DT)
    tie = taus < TIE_RESOLUTION
    for name in ("lnm", "thp"):
        dec = decoder("time", name).train()
        opt = torch.optim.Adam(dec.parameters(), lr=0.1)
        h = torch.zeros(1, 6, D, dtype=DT)
        worst = math.inf
        for _ in range(300):
            opt.zero_grad()
            lp = dec(h).log_prob(taus)
            (-lp.sum()).backward()
            opt.step()
            worst = min(worst, float(-lp.detach()[tie].max()))
        assert worst >= 0.0, (name, worst)
        assert math.isfinite(worst)


def test_tie_resolution_is_validated():
    for bad in (0.0, -1.0, float("inf"), "1e-6", True):
        with pytest.raises(ConfigError, match="tie_resolution"):
            TIME_DECODERS.build("lnm", D, ModelConfig(tie_resolution=bad))


def test_count_ties_and_mask():
    taus = torch.tensor([[0.0, 0.5, 0.0, 1e-7], [0.0, 0.0, 2.0, 0.0]])
    scored = torch.tensor([[False, True, True, True], [False, True, True, False]])
    assert tie_mask(taus, scored).tolist() == [[False, False, True, True], [False, True, False, False]]
    assert int(count_ties(taus, scored)) == 3
    assert int(count_ties(taus, scored, resolution=1e-8)) == 2


def test_tie_summary_and_warning_are_exact():
    seqs = [
        EventSequence(np.array([0.0, 1.0, 1.0, 2.5]), np.zeros(4)),  # starts at 0; one tie
        EventSequence(np.array([3.0, 3.0, 3.0]), np.zeros(3)),  # two ties
        EventSequence(np.array([1.0, 2.0]), np.zeros(2)),  # none
    ]
    skip = tie_summary(seqs, "skip")
    assert (skip.sequences, skip.scored_gaps, skip.ties, skip.first_at_zero) == (3, 6, 3, 1)
    inc = tie_summary(seqs, "include")
    assert (inc.scored_gaps, inc.ties) == (9, 4)
    msg = tie_warning(seqs, "include")
    assert "4 of 9 scored gaps" in msg and "1 of 3 sequences start at t = 0" in msg and "tie_resolution" in msg
    assert "start at t = 0" not in tie_warning(seqs, "skip")
    # in the data's units: gaps of 0.5 are ties when the model divides by 1e6 and delta = 1e-6
    scaled = tie_summary([EventSequence(np.array([1.0, 1.5, 3.0]), np.zeros(3))], "skip", time_scale=1e6)
    assert scaled.ties == 1
    assert tie_warning([EventSequence(np.array([1.0, 2.0]), np.zeros(2))]) is None
    assert tie_summary([], "skip").ties == 0


@pytest.mark.parametrize("decoder,parametrisation", [("lnm", "base"), ("thp", "plus"), ("sahp", "plusplus")])
@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_evaluation_counts_the_scored_ties(decoder, parametrisation, scale):
    """``num_ties`` in the metrics: scored gaps below ``delta`` in the decoders' units, i.e. below ``delta * c`` in the
    data's units for a model with time scale ``c``; first events (not scored) never count."""
    from helpers import K, tiny_config

    from mtpp.evaluation.evaluate import evaluate_model
    from mtpp.models import build_model

    torch.manual_seed(0)
    cfg = tiny_config(encoder="gru", decoder=decoder, parametrisation=parametrisation,
                      integration="gauss_legendre", integration_nodes=8)  # fmt: skip
    model = build_model(cfg, K).to(DT)
    model.time_scale = scale
    d = TIE_RESOLUTION * scale  # the resolution in data units
    gaps = [[0.5, 0.0, 0.3, 0.2 * d, 1.0], [0.0, 0.7, 0.9 * d, 2.0 * d], [0.4, 1.1]]  # 3 scored ties (0, 0.2d, 0.9d)
    seqs = [EventSequence(np.cumsum(g), np.arange(len(g)) % K, None) for g in gaps]  # first gap: not scored
    metrics, _ = evaluate_model(model, seqs, batch_size=2, dtype=DT)
    assert metrics["num_ties"] == 3
    assert metrics["num_events"] == sum(len(g) - 1 for g in gaps)
