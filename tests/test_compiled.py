"""``train.compile_integrand`` (``mtpp.models.compiled``): the THP / SAHP node intensities compiled by inductor equal
the eager ones to rounding, values and gradients, inside the model's NLL and through a training run; eager where
no gradient is recorded; a clear error where torch cannot compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtpp.errors import ConfigError
from mtpp.models import ModelConfig, build_model, compiled
from mtpp.models.time_decoders import sahp_node_intensity, thp_node_intensity


@pytest.fixture(scope="module")
def inductor():
    """Skip (with the backend's reason) where torch cannot compile: no C++ compiler on the machine."""
    try:
        compiled.check_backend()
    except ConfigError as err:
        pytest.skip(str(err))


def _node_inputs(dtype, seed=0, shape=(3, 7, 5), j=4):
    g = torch.Generator().manual_seed(seed)
    b, l, n = shape
    params = [torch.randn(b, l, 1, j, generator=g, dtype=dtype).requires_grad_() for _ in range(3)]
    tau = (torch.rand(b, l, n, generator=g, dtype=dtype) * 3).requires_grad_()
    slope = (-0.3 * torch.rand(j, generator=g, dtype=dtype)).requires_grad_()
    return params, tau, slope


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
def test_compiled_node_intensities_equal_eager_values_and_gradients(inductor, dtype, tol):
    """Two shapes each (dynamic shapes: one compiled function), against eager: the values and the gradients of a
    weighted sum with respect to every input."""
    cases = {
        "thp": (thp_node_intensity, lambda p, tau, slope: (p[0], tau, slope)),
        "sahp": (sahp_node_intensity, lambda p, tau, slope: (p[0], p[1], p[2].abs(), tau)),
    }
    for name, (fn, args_of) in cases.items():
        for shape in [(3, 7, 5), (2, 11, 6)]:
            params, tau, slope = _node_inputs(dtype, shape=shape)
            leaves = [*params, tau, slope]
            weights = torch.rand(shape, dtype=dtype)
            ref = fn(*args_of(params, tau, slope))
            ref_grads = torch.autograd.grad((ref * weights).sum(), leaves, allow_unused=True)
            with torch.enable_grad():
                fast = compiled.integrand(fn, True)
            assert fast is not fn
            got = fast(*args_of(params, tau, slope))
            grads = torch.autograd.grad((got * weights).sum(), leaves, allow_unused=True)
            torch.testing.assert_close(got, ref, rtol=tol, atol=tol, msg=f"{name} {shape}")
            for a, b in zip(grads, ref_grads):
                if b is None:
                    assert a is None or not a.any()
                else:
                    torch.testing.assert_close(a, b, rtol=tol * 10, atol=tol * 10, msg=f"{name} {shape} grad")


def test_integrand_is_eager_when_off_or_without_gradients():
    assert compiled.integrand(thp_node_intensity, False) is thp_node_intensity
    with torch.no_grad():
        assert compiled.integrand(thp_node_intensity, True) is thp_node_intensity


def _spy(monkeypatch, fn) -> list:
    """Count the calls of ``fn``'s compiled version (``compiled.integrand(fn, True)``)."""
    with torch.enable_grad():
        real = compiled.integrand(fn, True)
    calls: list = []

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setitem(compiled._COMPILED, fn, counted)
    return calls


def _batch(lengths, seed=0, num_marks=5):
    from mtpp.data.batch import collate
    from mtpp.data.sequence import EventSequence

    rng = np.random.default_rng(seed)
    seqs = [EventSequence(np.cumsum(rng.exponential(1.0, n)), rng.integers(0, num_marks, n), None) for n in lengths]
    return collate(seqs, dtype=torch.float32)


@pytest.mark.parametrize("decoder, parametrisation", [("thp", "base"), ("sahp", "base"), ("thp", "plus")])
def test_model_nll_with_compiled_integrand_equals_eager(inductor, monkeypatch, decoder, parametrisation):
    """The whole NLL (the same Monte Carlo nodes: they are drawn outside the compiled function) and its parameter
    gradients, on two batch shapes; ``enable`` switches every intensity module and back."""
    cfg = ModelConfig(
        encoder="gru", decoder=decoder, parametrisation=parametrisation, hidden_size=8, mark_embedding_size=4,
        time_embedding_size=4, num_components=3, integration="mc", integration_nodes=8,
    )
    torch.manual_seed(0)
    model = build_model(cfg, 5)
    params = [p for p in model.parameters() if p.requires_grad]
    fn = thp_node_intensity if decoder == "thp" else sahp_node_intensity
    calls = _spy(monkeypatch, fn)
    for lengths in [(9, 6), (12, 4, 7)]:
        batch = _batch(lengths)
        out = {}
        for on in (False, True):
            assert (compiled.enable(model, on) >= 1) == on
            torch.manual_seed(3)
            nll = model.nll(batch)
            loss = nll.time_nll.sum() + nll.mark_nll.sum()
            out[on] = (nll.time_terms.detach(), nll.mark_terms.detach(), torch.autograd.grad(loss, params))
        assert calls  # the compiled function ran inside model.nll (only when switched on)
        calls.clear()
        torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-5, atol=1e-5)
        for a, b in zip(out[True][2], out[False][2]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_enable_counts_modules_and_lnm_or_the_adaptive_rule_have_none():
    """LNM has no numerical compensator; THP trained with ``integration: adaptive`` never evaluates the
    integrand: nothing to compile, and no backend check."""
    cfg = ModelConfig(encoder="gru", decoder="lnm", parametrisation="base", hidden_size=8, num_components=3)
    assert compiled.enable(build_model(cfg, 5)) == 0
    cfg = ModelConfig(encoder="gru", decoder="thp", parametrisation="base", hidden_size=8, num_components=3,
                      integration="adaptive")  # fmt: skip
    model = build_model(cfg, 5)
    assert compiled.enable(model) == 0
    assert not any(getattr(m, "compile_integrand", False) for m in model.modules())


def test_a_machine_that_cannot_compile_gets_one_line_naming_the_fix(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx")

    monkeypatch.setattr(compiled, "_WORKS", set())
    monkeypatch.setattr(torch, "compile", broken)
    cfg = ModelConfig(encoder="gru", decoder="thp", parametrisation="base", hidden_size=8, num_components=3)
    with pytest.raises(ConfigError, match=r"C\+\+ compiler.*train\.compile_integrand: false") as err:
        compiled.enable(build_model(cfg, 5))
    # docs/guide/grid.md and paper_table1.yaml promise the command-line form (mtpp compare / train --set)
    assert "--set train.compile_integrand=false" in str(err.value)
    assert "\n" not in str(err.value)


def test_training_run_with_compiled_integrand_matches_eager(inductor, monkeypatch, tmp_path):
    """``train.compile_integrand: true`` through the trainer (Monte Carlo compensator, ``cos_tm`` at every step,
    whose two backward passes share the graph): two epochs give the eager run's test metrics to rounding, and
    the run's config and header keep the setting."""
    from mtpp.config import load_config
    from mtpp.training.trainer import fit

    tiny = [
        "data.max_sequences=12", "train.batch_size=4", "train.max_epochs=2", "model.decoder=thp",
        "model.hidden_size=8", "model.mark_embedding_size=4", "model.time_embedding_size=4",
        "model.num_components=2", "model.integration=mc", "model.integration_nodes=4", "gradients.log_every=1",
        "logging.quiet=true", "logging.progress=false",
    ]  # fmt: skip
    calls = _spy(monkeypatch, thp_node_intensity)
    eager = fit(load_config(None, tiny), tmp_path / "eager")
    assert not calls
    fast = fit(load_config(None, [*tiny, "train.compile_integrand=true"]), tmp_path / "compiled")
    assert calls  # the trainer's steps ran the compiled integrand
    assert "compile_integrand: true" in (tmp_path / "compiled" / "config.yaml").read_text()
    assert ", compensator integrand compiled" in (tmp_path / "compiled" / "train.log").read_text()
    assert "integrand compiled" not in (tmp_path / "eager" / "train.log").read_text()
    for key in ("nll_time_per_seq", "nll_mark_per_seq", "accuracy_given_time"):
        assert fast["test"][key] == pytest.approx(eager["test"][key], rel=1e-4, abs=1e-6), key


def test_the_header_says_when_compile_integrand_has_nothing_to_compile(tmp_path):
    from mtpp.config import load_config
    from mtpp.training.trainer import fit

    fit(load_config(None, ["data.max_sequences=8", "train.batch_size=4", "train.max_epochs=1", "model.decoder=lnm",
                           "model.hidden_size=8", "model.num_components=2", "train.compile_integrand=true",
                           "logging.quiet=true", "logging.progress=false"]), tmp_path / "lnm")  # fmt: skip
    assert "compile_integrand: no effect (no compensator integrand is evaluated in training)" in (tmp_path / "lnm" / "train.log").read_text()


def test_a_model_trained_with_it_is_handed_back_eager(inductor, tmp_path):
    """``fit(model, data)`` switches the integrand on for the run and off at its end: the returned model is eager,
    and a second run of it without the setting (``cos_tm`` at every step: two backward passes over one graph) does
    not inherit it (it used to, and failed on AOTAutograd's donated-buffer check). Switched on again outside any
    trainer, the model backpropagates twice over one graph under torch's default settings."""
    import mtpp

    cfg = ModelConfig(encoder="gru", decoder="thp", parametrisation="base", hidden_size=8, mark_embedding_size=4,
                      time_embedding_size=4, num_components=3, integration="mc", integration_nodes=4)  # fmt: skip
    ds = mtpp.load_dataset("synthetic_hawkes")
    model = build_model(cfg, ds.num_marks)
    base = {"data": {"max_sequences": 8}, "logging": {"quiet": True, "progress": False}, "gradients": {"log_every": 1}}
    train = {"max_epochs": 1, "batch_size": 4}
    mtpp.fit(model, ds, tmp_path / "on", config={**base, "train": {**train, "compile_integrand": True}})
    assert not any(getattr(m, "compile_integrand", False) for m in model.modules())
    mtpp.fit(model, ds, tmp_path / "off", config={**base, "train": train})
    assert "integrand compiled" not in (tmp_path / "off" / "train.log").read_text()

    compiled.enable(model)
    nll = model.nll(_batch((9, 6), num_marks=ds.num_marks))
    params = [p for p in model.parameters() if p.requires_grad]
    first = torch.autograd.grad(nll.time_nll.sum(), params, retain_graph=True, allow_unused=True)
    second = torch.autograd.grad(nll.time_nll.sum(), params, allow_unused=True)
    for a, b in zip(first, second):
        assert (a is None and b is None) or torch.equal(a, b)
    compiled.enable(model, False)


@pytest.mark.parametrize("decoder", ["lnm", "rmtpp", "fnn", "thp", "sahp"])
@pytest.mark.parametrize("parametrisation", ["base", "plus"])
def test_the_decoders_it_applies_to_are_the_models_with_a_node_integrand(decoder, parametrisation):
    """``compiled.applies`` (what the grid timings mark) is exactly where ``enable`` finds modules to switch."""
    for integration in ("mc", "adaptive"):
        cfg = ModelConfig(encoder="gru", decoder=decoder, parametrisation=parametrisation, hidden_size=8,
                          num_components=3, integration=integration)  # fmt: skip
        model = build_model(cfg, 5)
        has = any(hasattr(m, "compile_integrand") for m in model.modules()) and integration != "adaptive"
        assert compiled.applies(decoder, integration) == has
