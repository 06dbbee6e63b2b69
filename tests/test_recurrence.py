"""The fused CPU recurrences equal ``nn.GRU`` / ``nn.RNN``: values, gradients, batched cotangents."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtpp.models.recurrence import fused_available, run_fused

CELLS = [nn.GRU, nn.RNN]


def _setup(cell: type[nn.RNNBase], layers: int, dtype: torch.dtype = torch.float64, b: int = 3, l: int = 7):
    torch.manual_seed(0)
    rnn = cell(5, 4, num_layers=layers, batch_first=True).to(dtype)
    x = torch.randn(b, l, 5, dtype=dtype, requires_grad=True)
    h0 = torch.randn(layers, b, 4, dtype=dtype, requires_grad=True)
    return rnn, x, h0, [x, h0, *rnn.parameters()]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_values_and_gradients_equal_the_nn_module(cell: type[nn.RNNBase], layers: int) -> None:
    rnn, x, h0, inputs = _setup(cell, layers)
    ref = rnn(x, h0)[0]
    out = run_fused(rnn, x, h0)
    torch.testing.assert_close(out, ref, atol=1e-13, rtol=0)
    w = torch.randn_like(ref)
    want = torch.autograd.grad((ref * w).sum(), inputs)
    got = torch.autograd.grad((out * w).sum(), inputs)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck(cell: type[nn.RNNBase]) -> None:
    rnn, x, h0, _ = _setup(cell, 2, b=2, l=4)
    assert torch.autograd.gradcheck(lambda a, b: run_fused(rnn, a, b), (x, h0))


@pytest.mark.parametrize("cell", CELLS)
def test_float32_agrees_with_the_nn_module(cell: type[nn.RNNBase]) -> None:
    rnn, x, h0, inputs = _setup(cell, 1, torch.float32, b=16, l=60)
    ref, out = rnn(x, h0)[0], run_fused(rnn, x, h0)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    want = torch.autograd.grad(ref.square().sum(), inputs)
    got = torch.autograd.grad(out.square().sum(), inputs)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_stacked_cotangents_equal_one_backward_each(cell: type[nn.RNNBase]) -> None:
    """Under ``torch.func.vmap`` the task-batched rule runs all cotangents through one backward recurrence."""
    rnn, x, h0, inputs = _setup(cell, 2)
    out = run_fused(rnn, x, h0)
    cots = torch.randn(3, *out.shape, dtype=out.dtype)
    got = torch.func.vmap(lambda c: torch.autograd.grad(out, inputs, c, retain_graph=True))(cots)
    for i in range(3):
        want = torch.autograd.grad(out, inputs, cots[i], retain_graph=True)
        for g, w in zip(got, want):
            torch.testing.assert_close(g[i], w, atol=1e-12, rtol=0)


def test_older_batched_grads_raise_rather_than_mislead() -> None:
    rnn, x, h0, inputs = _setup(nn.GRU, 1)
    out = run_fused(rnn, x, h0)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(out, inputs, torch.randn(2, *out.shape, dtype=out.dtype), is_grads_batched=True)


def test_double_backward_is_refused_clearly() -> None:
    rnn, x, h0, _ = _setup(nn.GRU, 1)
    (g,) = torch.autograd.grad(run_fused(rnn, x, h0).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_unsupported_modules_are_refused() -> None:
    x, h0 = torch.randn(2, 3, 5), torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="tanh"):
        run_fused(nn.RNN(5, 4, nonlinearity="relu", batch_first=True), x, h0)
    with pytest.raises(ValueError, match="batch-first"):
        run_fused(nn.GRU(5, 4), x, h0)
    with pytest.raises(ValueError, match="batch-first"):
        run_fused(nn.GRU(5, 4, batch_first=True, bidirectional=True), x, torch.zeros(2, 2, 4))


def test_used_only_where_it_helps() -> None:
    x = torch.zeros(2, 3)
    assert fused_available(x)
    with torch.no_grad():
        assert not fused_available(x)
    assert not fused_available(x.half())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_available(x)


@pytest.mark.parametrize("encoder", ["gru", "rnn"])
def test_encoder_histories_same_with_and_without_gradients(encoder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training (fused) and evaluation (nn module) give the same histories; the fused path is what trains."""
    import mtpp.models.encoders as encoders
    from helpers import make_batch, tiny_config

    from mtpp.models import build_model

    calls = []
    real = encoders.run_fused
    monkeypatch.setattr(encoders, "run_fused", lambda *a: calls.append(1) or real(*a))
    model = build_model(tiny_config(encoder=encoder, decoder="lnm", num_layers=2), 4).double()
    batch = make_batch((6, 3, 1), num_marks=4, dtype=torch.float64)
    trained = model.encoder.histories(batch)
    assert calls == [1]
    with torch.no_grad():
        evaluated = model.encoder.histories(batch)
    assert calls == [1]
    torch.testing.assert_close(trained, evaluated, atol=1e-13, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_every_parameter_gets_its_own_gradient_tensor(cell: type[nn.RNNBase]) -> None:
    """The RNN's two biases have equal gradients; as one shared tensor an in-place clip would scale it twice."""
    rnn, x, h0, _ = _setup(cell, 1)
    run_fused(rnn, x, h0).square().sum().backward()
    grads = [p.grad for p in rnn.parameters()]
    assert len({g.data_ptr() for g in grads}) == len(grads)
    want = [g.clone() for g in grads]
    torch.nn.utils.clip_grads_with_norm_(list(rnn.parameters()), 0.5, torch.tensor(1.0, dtype=x.dtype))
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w * 0.5 / (1.0 + 1e-6))
