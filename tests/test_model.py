"""MarkedTPP: the likelihood contract as properties, for every encoder x decoder x parametrisation.

Exact properties: causality of every per-event term (bit-identical), mark normalisation, which parameters each
loss reaches (shared / task-specific, checked with autograd), first-event convention, the survival term against
the time decoder on the history after the last event, finite values and gradients at extreme gaps and sizes.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import K, make_batch, perturb, tiny_config
from torch import nn

import mtpp.models.embeddings as embeddings_module
import mtpp.models.encoders as encoders_module
import mtpp.models.mtpp as mtpp_module
from mtpp.data.batch import Batch, collate
from mtpp.data.sequence import EventSequence
from mtpp.errors import ConfigError
from mtpp.models import (
    JOINT_DECODERS,
    MARK_DECODERS,
    TIME_DECODERS,
    MarkedTPP,
    ModelConfig,
    build_model,
    count_parameters,
)

# ---------------------------------------------------------------- a tiny stand-in decoder family
# An exponential ground process with rate softplus(w.h) and, for the joint form, constant-in-tau marks. It
# tests the composition independently of the real decoders (which are tested too, when registered).


class _ExpDist:
    def __init__(self, rate: torch.Tensor, mark_logits: torch.Tensor | None = None) -> None:
        self.rate = rate
        self.batch_shape = rate.shape
        self.mark_logits = mark_logits

    def _r(self, tau):
        r = self.rate
        while r.dim() < tau.dim():
            r = r.unsqueeze(-1)
        return r

    def log_prob(self, tau):
        return torch.log(self._r(tau)) - self._r(tau) * tau

    def log_survival(self, tau):
        return -self._r(tau) * tau

    def cdf(self, tau):
        return -torch.expm1(self.log_survival(tau))

    def icdf(self, u):
        return -torch.log1p(-u) / self._r(u)

    def sample(self, sample_shape=torch.Size()):
        return self.icdf(torch.rand(*sample_shape, *self.batch_shape))

    @property
    def mean(self):
        return 1.0 / self.rate

    def mark_log_probs(self, tau):  # tau: [B, L] or [B, L, M] (trailing query points, as JointDistribution)
        lp = self.mark_logits.log_softmax(-1)
        while lp.dim() < tau.dim() + 1:
            lp = lp.unsqueeze(-2)
        return lp.expand(*tau.shape, -1)


class _ExpTime(nn.Module):
    def __init__(self, input_size: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.lin = nn.Linear(input_size, 1)

    def forward(self, h):
        return _ExpDist(F.softplus(self.lin(h)).squeeze(-1) + 1e-3)


class _ExpJoint(nn.Module):
    """Constant marked intensities ``lambda_k = softplus(W h)_k``: ground rate ``sum_k lambda_k``."""

    def __init__(self, input_size: int, num_marks: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.lin = nn.Linear(input_size, num_marks)

    def forward(self, h):
        log_lambda_k = torch.log(F.softplus(self.lin(h)) + 1e-3)
        return _ExpDist(log_lambda_k.logsumexp(-1).exp(), log_lambda_k)


if "_exp" not in TIME_DECODERS:
    TIME_DECODERS.register("_exp")(_ExpTime)
    JOINT_DECODERS.register("_exp")(_ExpJoint)

# ---------------------------------------------------------------- grid


# tiny models: one intra-op thread (the ``one_thread`` fixture of conftest.py) for every test of this file
pytestmark = pytest.mark.usefixtures("one_thread")


ENCODERS = ("gru", "thp", "sahp", "fnn")
REAL_DECODERS = ("lnm", "rmtpp", "fnn", "thp", "sahp")
DECODERS = ("_exp", *REAL_DECODERS)
PARAMS = ("base", "plus", "plusplus")


def tiny_cfg(encoder: str = "gru", decoder: str = "_exp", parametrisation: str = "base", **kw) -> ModelConfig:
    fields = dict(
        num_layers=1,
        num_heads=2,
        integration="gauss_legendre",  # deterministic compensators: exact comparisons
        integration_nodes=8,
    )
    return tiny_config(encoder=encoder, decoder=decoder, parametrisation=parametrisation, **{**fields, **kw})


def combos(encoders=ENCODERS, decoders=DECODERS, params=PARAMS):
    return [pytest.param(e, d, p, id=f"{e}-{d}-{p}") for e in encoders for d in decoders for p in params]


def model_for(encoder, decoder, parametrisation, num_marks=K, **kw) -> MarkedTPP:
    torch.manual_seed(0)
    return build_model(tiny_cfg(encoder, decoder, parametrisation, **kw), num_marks)


# ---------------------------------------------------------------- composition


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("parametrisation", PARAMS)
def test_parts_by_parametrisation(decoder: str, parametrisation: str) -> None:
    m = model_for("gru", decoder, parametrisation)
    if parametrisation == "plusplus":
        assert m.encoder is None and m.time_encoder is not None and m.mark_encoder is not None
        assert m.time_encoder is not m.mark_encoder
    else:
        assert m.encoder is not None and m.time_encoder is None and m.mark_encoder is None
    if parametrisation == "base" and decoder in JOINT_DECODERS:
        assert m.joint is not None and m.time_decoder is None and m.mark_decoder is None
    else:
        assert m.joint is None and m.time_decoder is not None
        expected = MARK_DECODERS.get("categorical" if parametrisation == "base" else "categorical_tau")
        assert isinstance(m.mark_decoder, expected)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("parametrisation", PARAMS)
def test_shared_and_task_parameters(decoder: str, parametrisation: str) -> None:
    """Groups partition the parameters, and autograd agrees: shared ones reached by both losses, task ones by one."""
    m = model_for("gru", decoder, parametrisation)
    shared = m.shared_parameters()
    task = m.task_parameters()
    assert set(shared) == {"encoder", "decoder"} and set(task) == {"time", "mark"}
    ids = lambda ps: [id(p) for p in ps]  # noqa: E731
    groups = [ids(shared["encoder"]), ids(shared["decoder"]), ids(task["time"]), ids(task["mark"])]
    flat = [i for g in groups for i in g]
    assert len(flat) == len(set(flat)), "groups overlap"
    assert set(flat) == set(ids(m.parameters())), "groups do not cover the model"

    if parametrisation == "plusplus":
        assert shared["encoder"] == [] and shared["decoder"] == []
    elif parametrisation == "plus":
        assert ids(shared["encoder"]) == ids(m.encoder.parameters()) and shared["decoder"] == []
    else:
        assert ids(shared["encoder"]) == ids(m.encoder.parameters())
        if decoder in JOINT_DECODERS:
            assert ids(shared["decoder"]) == ids(m.joint.parameters()) and shared["decoder"]
            assert task["time"] == [] and task["mark"] == []
        else:
            assert shared["decoder"] == []

    out = m.nll(make_batch(windows=(0.5, None)))
    params = list(m.parameters())
    g_t = torch.autograd.grad(out.time_nll.sum(), params, allow_unused=True, retain_graph=True)
    g_m = torch.autograd.grad(out.mark_nll.sum(), params, allow_unused=True)
    reached_t = {id(p) for p, g in zip(params, g_t) if g is not None and bool(g.abs().sum() > 0)}
    reached_m = {id(p) for p, g in zip(params, g_m) if g is not None and bool(g.abs().sum() > 0)}
    for i in groups[0] + groups[1]:
        assert i in reached_t and i in reached_m
    assert not set(groups[2]) & reached_m, "a time-only parameter gets a mark gradient"
    assert not set(groups[3]) & reached_t, "a mark-only parameter gets a time gradient"


def test_unknown_names_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="valid: .*gru"):
        build_model(tiny_cfg("lstm"), K)
    with pytest.raises(ConfigError, match="valid: .*_exp"):
        build_model(tiny_cfg(decoder="nope", parametrisation="plus"), K)
    with pytest.raises(ConfigError, match="valid: base, plus, plusplus"):
        build_model(tiny_cfg(parametrisation="++"), K)
    with pytest.raises(ConfigError, match="valid: skip, include"):
        build_model(tiny_cfg(first_event="drop"), K)


# ---------------------------------------------------------------- likelihood contract


@pytest.mark.parametrize("time", [True, False], ids=["time", "mark"])
@pytest.mark.parametrize("encoder,decoder,parametrisation", combos())
def test_causality_of_every_term(encoder: str, decoder: str, parametrisation: str, time: bool) -> None:
    """Changing event j (time or mark) leaves every term before j bit-identical."""
    m = model_for(encoder, decoder, parametrisation, first_event="include").eval()
    batch = make_batch()
    j = 4
    with torch.no_grad():
        a = m.nll(batch)
        b = m.nll(perturb(batch, j, time=time))
    assert torch.equal(a.time_terms[:, :j], b.time_terms[:, :j])
    assert torch.equal(a.mark_terms[:, :j], b.mark_terms[:, :j])
    # and the change is seen later on (the model does read event j)
    assert not torch.equal(a.time_terms[:, j:], b.time_terms[:, j:]) or not torch.equal(
        a.mark_terms[:, j:], b.mark_terms[:, j:]
    )


@pytest.mark.parametrize("encoder,decoder,parametrisation", combos(encoders=("gru", "thp")))
def test_mark_probabilities_sum_to_one(encoder: str, decoder: str, parametrisation: str) -> None:
    m = model_for(encoder, decoder, parametrisation)
    batch = make_batch()
    scores = m.score(batch)
    lse = scores.mark_log_probs.logsumexp(-1)[batch.mask]
    assert torch.allclose(lse, torch.zeros_like(lse), atol=1e-5)
    pred = m.predict(batch)
    lse = pred["mark_log_probs"].logsumexp(-1)[pred["valid"]]
    assert torch.allclose(lse, torch.zeros_like(lse), atol=1e-5)


@pytest.mark.parametrize("decoder", DECODERS)
def test_first_event_skip_vs_include(decoder: str) -> None:
    batch = make_batch()
    skip = model_for("gru", decoder, "plus", first_event="skip").nll(batch)
    incl = model_for("gru", decoder, "plus", first_event="include").nll(batch)
    assert not skip.scored[:, 0].any() and incl.scored[:, 0].all()
    assert torch.equal(incl.scored, batch.mask)
    assert torch.equal(skip.time_terms[:, 0], torch.zeros(2)) and torch.equal(skip.mark_terms[:, 0], torch.zeros(2))
    assert torch.equal(skip.time_terms[:, 1:], incl.time_terms[:, 1:])
    assert torch.allclose(incl.time_nll - skip.time_nll, incl.time_terms[:, 0], atol=1e-5)
    assert torch.allclose(incl.mark_nll - skip.mark_nll, incl.mark_terms[:, 0], atol=1e-5)
    # padding is never scored, and scores are zero there
    assert not (incl.scored & ~batch.mask).any()
    assert torch.equal(incl.time_terms[~batch.mask], torch.zeros(int((~batch.mask).sum())))


def _after_last_distribution(m: MarkedTPP, batch: Batch):
    """The time decoder on H_{n+1}, computed independently: append an event at T and read position n."""
    seqs = []
    for b in range(batch.batch_size):
        n = int(batch.lengths[b])
        t = batch.times[b, :n].double().numpy() + float(batch.taus[b, 0])  # Batch.times: since the first event
        seqs.append(EventSequence(np.append(t, float(batch.window_end[b])), np.append(batch.marks[b, :n], 0)))
    ext = collate(seqs)
    encoder = m.encoder if m.encoder is not None else m.time_encoder
    head = m.joint if m.joint is not None else m.time_decoder
    h = encoder(ext)  # [B, L + 1, D]: position n is the history after event n
    idx = batch.lengths.view(-1, 1, 1).expand(-1, 1, h.shape[-1])
    return head(h.gather(1, idx))


@pytest.mark.parametrize("encoder,decoder,parametrisation", combos(encoders=("gru", "sahp")))
def test_survival_term(encoder: str, decoder: str, parametrisation: str) -> None:
    m = model_for(encoder, decoder, parametrisation).eval()
    gaps = (0.7, None, 3.0)
    batch = make_batch(lengths=(5, 8, 3), windows=gaps)
    out = m.nll(batch)
    with torch.no_grad():
        dist = _after_last_distribution(m, batch)
        expected = -dist.log_survival(batch.survival_gap.unsqueeze(-1)).squeeze(-1)
    assert out.survival_term[1] == 0.0  # no window: exactly 0
    assert torch.allclose(out.survival_term[[0, 2]], expected[[0, 2]], rtol=1e-4, atol=1e-5)
    assert (out.survival_term[[0, 2]] > 0).all()
    assert torch.allclose(out.time_nll, out.time_terms.sum(-1) + out.survival_term)
    assert torch.equal(out.mark_nll, out.mark_terms.sum(-1))


@pytest.mark.parametrize("decoder", DECODERS)
def test_no_window_survival_is_exactly_zero_with_finite_gradients(decoder: str) -> None:
    m = model_for("gru", decoder, "base")
    batch = make_batch()
    out = m.nll(batch)
    assert torch.equal(out.survival_term, torch.zeros(2))
    assert torch.equal(out.time_nll, out.time_terms.sum(-1))
    (out.time_nll.sum() + out.mark_nll.sum()).backward()
    for p in m.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def _assert_finite_nll_and_grads(m: MarkedTPP, batch: Batch) -> None:
    out = m.nll(batch)
    for t in (out.time_nll, out.mark_nll, out.time_terms, out.mark_terms, out.survival_term):
        assert torch.isfinite(t).all()
    (out.time_nll.sum() + out.mark_nll.sum()).backward()
    for name, p in m.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("tau", [0.0, 1e-12, 1e6])
@pytest.mark.parametrize("encoder,decoder,parametrisation", combos(encoders=("gru",)))
def test_extreme_gaps(encoder: str, decoder: str, parametrisation: str, tau: float) -> None:
    n = 6
    times = 1.0 + np.cumsum(np.full(n, tau))
    batch = collate([EventSequence(times, np.arange(n) % K, window_end=times[-1] + max(tau, 1.0))])
    _assert_finite_nll_and_grads(model_for(encoder, decoder, parametrisation), batch)


@pytest.mark.parametrize("num_marks", [1, 500])
@pytest.mark.parametrize("encoder,decoder,parametrisation", combos(encoders=("fnn",)))
def test_mark_vocabulary_sizes(encoder: str, decoder: str, parametrisation: str, num_marks: int) -> None:
    m = model_for(encoder, decoder, parametrisation, num_marks=num_marks)
    batch = make_batch(num_marks=num_marks)
    _assert_finite_nll_and_grads(m, batch)
    if num_marks == 1:
        assert torch.equal(m.nll(batch).mark_nll, torch.zeros(2))


@pytest.mark.parametrize(
    "encoder,decoder,parametrisation",
    [*combos(encoders=("gru",), params=("base",)), *combos(("thp",), ("_exp",), ("plusplus",))],
)
def test_long_sequence(encoder: str, decoder: str, parametrisation: str) -> None:
    batch = make_batch(lengths=(5000, 17), windows=(1.0, None))
    _assert_finite_nll_and_grads(model_for(encoder, decoder, parametrisation), batch)


def test_float64_model_and_batch_compute_in_float64() -> None:
    m = model_for("thp", "_exp", "plus").double()
    out = m.nll(make_batch(dtype=torch.float64, windows=(1.0, None)))
    assert out.time_terms.dtype == torch.float64 and out.mark_nll.dtype == torch.float64


@pytest.mark.parametrize("decoder", DECODERS)
def test_terms_are_float32_under_autocast(decoder: str) -> None:
    m = model_for("thp", decoder, "plus")
    batch = make_batch(windows=(1.0, None))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.nll(batch)
    assert out.time_terms.dtype == torch.float32 and out.mark_terms.dtype == torch.float32
    assert torch.isfinite(out.time_nll).all() and torch.isfinite(out.mark_nll).all()


def test_nll_path_has_no_host_sync() -> None:
    """Review aid: the model code calls no ``.item()``, ``.tolist()``, ``.cpu()``, ``nonzero`` or the like."""
    syncing = {"item", "tolist", "cpu", "numpy", "nonzero", "masked_select", "synchronize"}
    for module in (mtpp_module, encoders_module, embeddings_module):
        tree = ast.parse(inspect.getsource(module))
        called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert not called & syncing, f"{module.__name__} calls {called & syncing}"


# ---------------------------------------------------------------- scores and prediction


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("parametrisation", PARAMS)
def test_score_and_predict(decoder: str, parametrisation: str) -> None:
    m = model_for("gru", decoder, parametrisation)
    batch = make_batch(windows=(1.0, None))
    s = m.score(batch)
    L = batch.max_length
    assert s.pit.shape == (2, L) and s.median_tau.shape == (2, L)
    assert ((s.pit >= 0) & (s.pit <= 1)).all()
    assert torch.equal(s.pit[~batch.mask], torch.zeros(int((~batch.mask).sum())))
    assert torch.allclose(s.nll.time_nll, m.nll(batch).time_nll.detach())

    p = m.predict(batch, tau="observed", top_k=3)
    valid = p["valid"]
    assert valid.shape == (2, L + 1) and torch.equal(valid.sum(1), batch.lengths + 1)
    # position i < L of predict is the distribution of event i: same median as score, same mark log-probs
    assert torch.allclose(p["median_tau"][:, :L][batch.mask], s.median_tau[batch.mask], rtol=1e-4)
    assert torch.allclose(p["mark_tau"][:, :L][batch.mask], batch.taus[batch.mask])
    assert torch.allclose(p["mark_log_probs"][:, :L][batch.mask], s.mark_log_probs[batch.mask], atol=1e-5)
    assert torch.equal(p["mark"], p["mark_log_probs"].argmax(-1))
    assert p["top_k_marks"].shape == (2, L + 1, 3)
    top = p["mark_log_probs"].gather(-1, p["top_k_marks"])  # ranked, the first one is an argmax (ties allowed)
    assert (top[..., :-1] >= top[..., 1:]).all()
    assert torch.equal(top[..., 0], p["mark_log_probs"].amax(-1))
    if s.mean_tau is not None:
        assert (s.mean_tau[batch.mask] > 0).all()
    pm = m.predict(batch, tau="median")  # marks at the predicted (median) gap
    assert torch.equal(pm["mark_tau"], pm["median_tau"])
    pf = m.predict(batch)  # default: the forecast p(k | H), the same as score's at the event positions
    assert pf["mark_tau"] is None
    assert torch.allclose(pf["mark_log_probs"][:, :L][batch.mask], s.forecast_mark_log_probs[batch.mask], atol=1e-5)

    # the median is the median: F(median) = 1/2
    fwd = m._forward(batch)
    with torch.no_grad():
        f = fwd.dist.cdf(s.median_tau.clamp_min(1e-30))[batch.mask]
    assert torch.allclose(f, torch.full_like(f, 0.5), atol=1e-3)


@pytest.mark.parametrize("decoder", DECODERS)
def test_sample_next(decoder: str) -> None:
    m = model_for("sahp", decoder, "plus")
    batch = make_batch(lengths=(9, 6, 1))
    tau1, k1 = m.sample_next(batch, generator=torch.Generator().manual_seed(3))
    tau2, k2 = m.sample_next(batch, generator=torch.Generator().manual_seed(3))
    assert tau1.shape == (3,) and k1.shape == (3,) and k1.dtype == torch.int64
    assert torch.equal(tau1, tau2) and torch.equal(k1, k2)
    assert (tau1 >= 0).all() and torch.isfinite(tau1).all() and ((k1 >= 0) & (k1 < K)).all()


# ---------------------------------------------------------------- shipped configurations

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "models"
# Documented size on 50 marks, every shipped file x parametrisation: 12k-18.5k parameters (the reference models
# are ~13-18k; ++ keeps that budget through ``plusplus_hidden_size``).
COUNT_RANGE = (12_000, 18_500)
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))


def test_shipped_configs_cover_the_families() -> None:
    names = {p.stem for p in CONFIG_FILES}
    assert {"gru_lnm", "gru_rmtpp", "gru_fnn", "gru_thp", "gru_sahp", "thp_thp", "sahp_sahp"} <= names


@pytest.mark.parametrize("parametrisation", PARAMS)
@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_shipped_config_parameter_counts(path: Path, parametrisation: str) -> None:
    from mtpp.config import load_config

    assert set(yaml.safe_load(path.read_text())) == {"model"}, "model config files hold only the model section"
    cfg = load_config(path, [f"model.parametrisation={parametrisation}"]).model
    assert cfg.parametrisation == parametrisation
    n = count_parameters(build_model(cfg, 50))
    lo, hi = COUNT_RANGE
    assert lo <= n <= hi, f"{path.name} {parametrisation}: {n} parameters"
