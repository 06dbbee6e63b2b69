"""Per-task gradients, cos phi_TM diagnostics, backward_step and StatsBuffer (DESIGN §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mtpp.training.aggregators import make_aggregator
from mtpp.training.gradients import (
    STAT_KEYS,
    StatsBuffer,
    backward_step,
    conflict_rate,
    conflict_rates,
    task_gradients,
)


class Toy(nn.Module):
    """Shared encoder + shared decoder layer, then a time head and a mark head; same two methods as MarkedTPP."""

    def __init__(self, share: str = "base") -> None:
        super().__init__()
        self.share = share
        self.enc = nn.Linear(3, 4)
        self.dec = nn.Linear(4, 4)
        self.time_head = nn.Linear(4, 1)
        self.mark_head = nn.Linear(4, 2)
        # "++": separate encoders, nothing shared
        self.enc_m = nn.Linear(3, 4)

    def shared_parameters(self) -> dict[str, list[nn.Parameter]]:
        if self.share == "base":
            return {"encoder": list(self.enc.parameters()), "decoder": list(self.dec.parameters())}
        if self.share == "plus":
            return {"encoder": list(self.enc.parameters()), "decoder": []}
        return {"encoder": [], "decoder": []}

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        t = list(self.time_head.parameters())
        m = list(self.mark_head.parameters())
        if self.share == "plus":
            t += list(self.dec.parameters())
        if self.share == "plusplus":
            t += list(self.enc.parameters()) + list(self.dec.parameters())
            m += list(self.enc_m.parameters())
        return {"time": t, "mark": m}

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.enc(x))
        ht = torch.tanh(self.dec(h))
        hm = ht if self.share == "base" else h
        if self.share == "plusplus":
            hm = torch.tanh(self.enc_m(x))
        lt = (self.time_head(ht).squeeze(-1) - 1.0).square().mean()
        lm = nn.functional.cross_entropy(self.mark_head(hm), torch.zeros(x.shape[0], dtype=torch.long))
        return lt, lm

    def other_params(self) -> list[nn.Parameter]:
        tp = self.task_parameters()
        return tp["time"] + tp["mark"]


def _x() -> torch.Tensor:
    return torch.randn(8, 3, generator=torch.Generator().manual_seed(1))


def _flat_grads(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def test_task_gradients_zero_for_unused_params() -> None:
    m = Toy("base")
    lt, lm = m.losses(_x())
    params = list(m.time_head.parameters()) + list(m.mark_head.parameters())
    gT, gM = task_gradients(lt, lm, params)
    assert torch.all(gT[2] == 0) and torch.all(gT[3] == 0)  # mark head does not affect L_T
    assert torch.all(gM[0] == 0) and torch.all(gM[1] == 0)
    assert gT[0].abs().sum() > 0 and gM[2].abs().sum() > 0


def test_cos_tm_matches_two_separate_backwards() -> None:
    torch.manual_seed(0)
    m = Toy("base")
    shared = m.shared_parameters()
    sp = shared["encoder"] + shared["decoder"]
    # reference: two separate .backward() calls on fresh graphs
    lt, _ = m.losses(_x())
    lt.backward()
    ref_T = {k: torch.cat([p.grad.reshape(-1).clone() for p in v]) for k, v in shared.items()}
    m.zero_grad(set_to_none=True)
    _, lm = m.losses(_x())
    lm.backward()
    ref_M = {k: torch.cat([p.grad.reshape(-1).clone() for p in v]) for k, v in shared.items()}
    m.zero_grad(set_to_none=True)

    lt, lm = m.losses(_x())
    stats = backward_step(lt, lm, shared, m.other_params(), make_aggregator("sum"), want_stats=True)
    assert set(STAT_KEYS) <= set(stats)
    a = np.concatenate([ref_T["encoder"].numpy(), ref_T["decoder"].numpy()]).astype(np.float64)
    b = np.concatenate([ref_M["encoder"].numpy(), ref_M["decoder"].numpy()]).astype(np.float64)
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert stats["cos_tm"].item() == pytest.approx(cos, abs=1e-5)
    for k in ("encoder", "decoder"):
        ak, bk = ref_T[k].double().numpy(), ref_M[k].double().numpy()
        assert stats[f"cos_tm/{k}"].item() == pytest.approx(ak @ bk / np.linalg.norm(ak) / np.linalg.norm(bk), abs=1e-5)
    nT, nM = np.linalg.norm(a), np.linalg.norm(b)
    assert stats["norm_time"].item() == pytest.approx(nT, rel=1e-5)
    assert stats["norm_mark"].item() == pytest.approx(nM, rel=1e-5)
    assert stats["gms"].item() == pytest.approx(2 * nT * nM / (nT**2 + nM**2), rel=1e-5)
    assert all(v.dim() == 0 for v in stats.values())
    assert len(sp) == 4


@pytest.mark.parametrize("share", ["base", "plus", "plusplus"])
@pytest.mark.parametrize("want_stats", [True, False])
def test_sum_equals_plain_backward(share: str, want_stats: bool) -> None:
    torch.manual_seed(0)
    m = Toy(share)
    params = [p for p in m.parameters()]
    lt, lm = m.losses(_x())
    (lt + lm).backward()
    ref = {id(p): (None if p.grad is None else p.grad.clone()) for p in params}
    m.zero_grad(set_to_none=True)

    lt, lm = m.losses(_x())
    backward_step(lt, lm, m.shared_parameters(), m.other_params(), make_aggregator("sum"), want_stats)
    for p in m.shared_parameters()["encoder"] + m.shared_parameters()["decoder"] + m.other_params():
        assert torch.allclose(p.grad, ref[id(p)], atol=1e-6)


def test_gradient_accumulates_like_backward() -> None:
    torch.manual_seed(0)
    m = Toy("base")
    for _ in range(2):
        lt, lm = m.losses(_x())
        (lt + lm).backward()
    ref = [None if p.grad is None else p.grad.clone() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    for want in (True, False):
        lt, lm = m.losses(_x())
        backward_step(lt, lm, m.shared_parameters(), m.other_params(), make_aggregator("sum"), want)
    for p, r in zip(m.parameters(), ref):
        if r is None:
            assert p.grad is None
            continue
        assert torch.allclose(p.grad, r, atol=1e-6)


@pytest.mark.parametrize("agg", ["sum", "pcgrad", "gradops", "mgda", "cagrad"])
def test_task_specific_params_get_their_own_gradient(agg: str) -> None:
    torch.manual_seed(0)
    m = Toy("base")
    lt, lm = m.losses(_x())
    lt.backward(retain_graph=True)
    ref_t = [p.grad.clone() for p in m.time_head.parameters()]
    m.zero_grad(set_to_none=True)
    lm.backward()
    ref_m = [p.grad.clone() for p in m.mark_head.parameters()]
    m.zero_grad(set_to_none=True)

    lt, lm = m.losses(_x())
    backward_step(lt, lm, m.shared_parameters(), m.other_params(), make_aggregator(agg), want_stats=False)
    for p, r in zip(m.time_head.parameters(), ref_t):
        assert torch.allclose(p.grad, r, atol=1e-6)
    for p, r in zip(m.mark_head.parameters(), ref_m):
        assert torch.allclose(p.grad, r, atol=1e-6)


def test_shared_params_get_aggregator_output() -> None:
    torch.manual_seed(0)
    m = Toy("base")
    sh = m.shared_parameters()
    sp = sh["encoder"] + sh["decoder"]
    lt, lm = m.losses(_x())
    gT, gM = task_gradients(lt, lm, sp)
    agg = make_aggregator("weighted", weights=[2.0, 0.5])
    expected = [2.0 * a + 0.5 * b for a, b in zip(gT, gM)]
    lt, lm = m.losses(_x())
    backward_step(lt, lm, sh, m.other_params(), agg, want_stats=False)
    for p, e in zip(sp, expected):
        assert torch.allclose(p.grad, e, atol=1e-6)


def test_no_shared_params_gives_nan_then_null() -> None:
    m = Toy("plusplus")
    lt, lm = m.losses(_x())
    stats = backward_step(lt, lm, m.shared_parameters(), m.other_params(), make_aggregator("weighted"), True)
    assert set(STAT_KEYS) <= set(stats)
    assert all(torch.isnan(v) for v in stats.values())
    buf = StatsBuffer()
    buf.append(stats, step=3)
    (rec,) = buf.flush()
    assert rec["step"] == 3
    assert all(rec[k] is None for k in STAT_KEYS)


def test_empty_group_is_nan_not_zero() -> None:
    m = Toy("plus")
    lt, lm = m.losses(_x())
    stats = backward_step(lt, lm, m.shared_parameters(), m.other_params(), make_aggregator("sum"), True)
    assert torch.isnan(stats["cos_tm/decoder"])
    assert not torch.isnan(stats["cos_tm/encoder"])
    assert stats["cos_tm"].item() == pytest.approx(stats["cos_tm/encoder"].item(), abs=1e-6)


def test_per_tensor_cosines() -> None:
    m = Toy("base")
    lt, lm = m.losses(_x())
    sh = m.shared_parameters()
    gT, gM = task_gradients(lt, lm, sh["encoder"])
    lt, lm = m.losses(_x())
    stats = backward_step(lt, lm, sh, m.other_params(), make_aggregator("sum"), True, per_tensor=True)
    a, b = gT[0].reshape(-1).double(), gM[0].reshape(-1).double()
    assert stats["cos_tm/encoder/0"].item() == pytest.approx((a @ b / a.norm() / b.norm()).item(), abs=1e-5)
    assert "cos_tm/decoder/1" in stats


def test_zero_gradient_cosine_is_nan() -> None:
    w = nn.Parameter(torch.ones(3))
    lt = (w * 0).sum()
    lm = (w * torch.tensor([1.0, 2.0, 3.0])).sum()
    stats = backward_step(lt, lm, {"encoder": [w], "decoder": []}, [], make_aggregator("sum"), True)
    assert torch.isnan(stats["cos_tm"]) and torch.isnan(stats["cos_tm/encoder"])
    assert stats["gms"].item() == 0.0 and stats["norm_time"].item() == 0.0


def test_reduce_is_applied_before_stats_and_aggregation() -> None:
    w = nn.Parameter(torch.tensor([1.0, 0.0]))
    v = nn.Parameter(torch.tensor([1.0]))
    lt = (w * torch.tensor([1.0, 1.0])).sum() + v.sum()
    lm = (w * torch.tensor([-1.0, 1.0])).sum()
    calls = []

    def reduce(flat: torch.Tensor) -> torch.Tensor:  # stand-in for an all-reduce mean
        calls.append(flat.numel())
        return flat * 2

    stats = backward_step(lt, lm, {"encoder": [w]}, [v], make_aggregator("sum"), True, reduce=reduce)
    assert calls == [3, 3]
    assert torch.allclose(w.grad, torch.tensor([0.0, 4.0]))
    assert torch.allclose(v.grad, torch.tensor([2.0]))
    assert stats["cos_tm"].item() == pytest.approx(0.0, abs=1e-7)
    assert stats["norm_time"].item() == pytest.approx(2 * math.sqrt(2))


def test_stats_buffer_single_transfer_and_nan_to_none() -> None:
    buf = StatsBuffer()
    buf.append({"cos_tm": torch.tensor(0.5), "gms": torch.tensor(float("nan"))}, step=1)
    buf.append({"cos_tm": torch.tensor(-0.25)}, step=2, epoch=0)
    buf.append({}, step=3)
    assert len(buf) == 3
    recs = buf.flush()
    assert recs == [
        {"step": 1, "cos_tm": 0.5, "gms": None},
        {"step": 2, "epoch": 0, "cos_tm": -0.25},
        {"step": 3},
    ]
    assert len(buf) == 0 and buf.flush() == []


def test_conflict_rate() -> None:
    assert conflict_rate([0.5, -0.1, None, -0.3, float("nan")]) == pytest.approx(2 / 3)
    assert conflict_rate([None, None]) is None
    assert conflict_rate([]) is None
    assert conflict_rate([0.0, 0.1]) == 0.0
    recs = [
        {"cos_tm": -0.1, "cos_tm/encoder": 0.2, "cos_tm/decoder": None},
        {"cos_tm": 0.3, "cos_tm/encoder": -0.2, "cos_tm/decoder": None},
        {"cos_tm": -0.3, "cos_tm/encoder": -0.1},
    ]
    assert conflict_rates(recs) == {
        "conflict_rate": pytest.approx(2 / 3),
        "conflict_rate/encoder": pytest.approx(2 / 3),
        "conflict_rate/decoder": None,
    }


def test_unreached_param_keeps_grad_none() -> None:
    w = nn.Parameter(torch.ones(2))
    unused = nn.Parameter(torch.ones(2))
    lt, lm = (w * 2).sum(), (w * -1).sum()
    backward_step(lt, lm, {"encoder": [w, unused]}, [], make_aggregator("weighted"), True)
    assert unused.grad is None
    assert torch.allclose(w.grad, torch.tensor([1.0, 1.0]))


# ----------------------------------------------------------------------------------------------------------------
# The boundary path on real MarkedTPP models: same gradients and statistics as the generic path
# ----------------------------------------------------------------------------------------------------------------

import warnings  # noqa: E402

from helpers import make_batch, tiny_config  # noqa: E402

from mtpp.models import build_model  # noqa: E402
from mtpp.training.aggregators import AGGREGATORS  # noqa: E402
from mtpp.training.gradients import find_boundary  # noqa: E402

K_REAL = 3


def _real_model(encoder: str, decoder: str, parametrisation: str, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    cfg = tiny_config(
        encoder=encoder,
        decoder=decoder,
        parametrisation=parametrisation,
        integration_nodes=5,
        dropout=0.1,  # random: the forward of both paths is reseeded identically
    )
    return build_model(cfg, K_REAL).to(dtype).train()


def _real_batch(dtype: torch.dtype = torch.float64):
    # survival windows after the last event, and none
    return make_batch((7, 4, 1), num_marks=K_REAL, windows=(0.7, None, 2.0), dtype=dtype)


def _run(model, batch, agg: str, use_boundary: bool, want_stats: bool = True, reduce=None, cast=False):
    """One backward_step from a freshly seeded forward; returns (grads by name, stats, boundary found)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # MC integration nodes and dropout: the same forward for both paths
    out = model.nll(batch)
    lt, lm = out.time_nll.mean(), out.mark_nll.mean()
    if cast:
        lt, lm = lt.float(), lm.float()
    found = find_boundary(lt, lm) is not None
    stats = backward_step(
        lt, lm, model.shared_parameters(), model.parameters(), make_aggregator(agg), want_stats,
        reduce=reduce, per_tensor=True, use_boundary=use_boundary,
    )  # fmt: skip
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    return grads, stats, found


def _assert_same(a, b, atol: float, rtol: float) -> None:
    ga, sa, _ = a
    gb, sb, _ = b
    assert ga.keys() == gb.keys()
    for n in ga:
        assert (ga[n] is None) == (gb[n] is None), n
        if ga[n] is not None:
            torch.testing.assert_close(ga[n], gb[n], atol=atol, rtol=rtol, msg=n)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=rtol, equal_nan=True, msg=k)


@pytest.mark.parametrize("parametrisation", ["base", "plus"])
@pytest.mark.parametrize("decoder", ["lnm", "thp"])
@pytest.mark.parametrize("encoder", ["gru", "thp", "sahp", "fnn"])
def test_boundary_path_equals_generic_path_every_aggregator(encoder: str, decoder: str, parametrisation: str) -> None:
    model, batch = _real_model(encoder, decoder, parametrisation), _real_batch()
    for agg in AGGREGATORS:
        new = _run(model, batch, agg, use_boundary=True)
        old = _run(model, batch, agg, use_boundary=False)
        assert new[2], "the model's boundary was not found from the losses"
        _assert_same(new, old, atol=1e-12, rtol=1e-10)
        assert set(STAT_KEYS) <= set(new[1])


@pytest.mark.parametrize("parametrisation", ["base", "plus"])
@pytest.mark.parametrize("decoder", ["rmtpp", "sahp", "fnn"])
@pytest.mark.parametrize("encoder", ["gru", "thp", "sahp", "fnn"])
def test_boundary_path_other_decoders(encoder: str, decoder: str, parametrisation: str) -> None:
    model, batch = _real_model(encoder, decoder, parametrisation), _real_batch()
    for agg, want in (("sum", True), ("pcgrad", False)):
        new = _run(model, batch, agg, use_boundary=True, want_stats=want)
        old = _run(model, batch, agg, use_boundary=False, want_stats=want)
        assert new[2]
        _assert_same(new, old, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("decoder", ["lnm", "thp"])
@pytest.mark.parametrize("encoder", ["gru", "thp"])
def test_boundary_path_float32_and_plain_backward(encoder: str, decoder: str) -> None:
    """float32 (the trainer's ``.float()`` losses): allclose 1e-6 to the generic path and to ``.backward()``."""
    model, batch = _real_model(encoder, decoder, "base", torch.float32), _real_batch(torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new = _run(model, batch, "sum", use_boundary=True, cast=True)
    assert not [w for w in caught if "performance drop" in str(w.message)], "vmap fell back to a per-sample loop"
    old = _run(model, batch, "sum", use_boundary=False, cast=True)
    assert new[2]
    _assert_same(new, old, atol=1e-6, rtol=1e-5)
    plain = _run(model, batch, "sum", use_boundary=True, want_stats=False, cast=True)
    for n, g in plain[0].items():
        if g is not None:
            torch.testing.assert_close(new[0][n], g, atol=1e-6, rtol=1e-5, msg=n)


def test_boundary_path_with_reduce_and_accumulation() -> None:
    model, batch = _real_model("gru", "thp", "base"), _real_batch()

    def reduce(flat: torch.Tensor) -> torch.Tensor:
        return flat * 0.5

    new = _run(model, batch, "pcgrad", use_boundary=True, reduce=reduce)
    old = _run(model, batch, "pcgrad", use_boundary=False, reduce=reduce)
    _assert_same(new, old, atol=1e-12, rtol=1e-10)
    # accumulation into existing .grad, like .backward()
    for use in (True, False):
        model.zero_grad(set_to_none=True)
        for _ in range(2):
            torch.manual_seed(1)
            out = model.nll(batch)
            backward_step(
                out.time_nll.mean(), out.mark_nll.mean(), model.shared_parameters(), model.parameters(),
                make_aggregator("sum"), True, use_boundary=use,
            )  # fmt: skip
        if use:
            acc = [p.grad.clone() for p in model.parameters()]
    for a, p in zip(acc, model.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-12, rtol=1e-10)


def test_boundary_is_set_only_where_it_is_used() -> None:
    batch = _real_batch()
    out = _real_model("gru", "lnm", "plusplus").nll(batch)
    assert out.boundary is None and find_boundary(out.time_nll.mean(), out.mark_nll.mean()) is None
    model = _real_model("gru", "lnm", "base")
    with torch.no_grad():
        assert model.nll(batch).boundary is None
    out = model.nll(batch)
    assert set(out.boundary) == {"history"} and out.boundary["history"].shape[:2] == (3, 8)  # [B, L + 1, D]
    assert find_boundary(out.time_nll.float().mean() * 2.0, out.mark_nll[:2].sum()) is not None


def test_boundary_refused_when_something_else_feeds_the_loss() -> None:
    """A regulariser on the encoder bypasses the histories: the generic path is taken, the gradients stay exact."""
    model, batch = _real_model("gru", "lnm", "base"), _real_batch()
    enc = model.shared_parameters()["encoder"]

    def step(use: bool):
        model.zero_grad(set_to_none=True)
        out = model.nll(batch)
        lt = out.time_nll.mean() + 0.1 * sum(p.square().sum() for p in enc)
        lm = out.mark_nll.mean()
        if use:
            assert find_boundary(lt, lm) is None
            other = model.nll(batch)  # a boundary from another forward is never mixed in
            assert find_boundary(other.time_nll.mean(), lm) is None
        stats = backward_step(lt, lm, model.shared_parameters(), model.parameters(), make_aggregator("sum"), True)
        return {n: p.grad.clone() for n, p in model.named_parameters()}, stats

    model.eval()
    (g1, s1), (g2, s2) = step(True), step(False)
    ref = model.nll(batch)
    model.zero_grad(set_to_none=True)
    (ref.time_nll.mean() + 0.1 * sum(p.square().sum() for p in enc) + ref.mark_nll.mean()).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(g1[n], p.grad, atol=1e-12, rtol=1e-10)


def test_boundary_fallback_when_batched_backward_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import mtpp.training.gradients as gradients

    model, batch = _real_model("sahp", "thp", "plus"), _real_batch()
    old = _run(model, batch, "gradops", use_boundary=False)
    real_grad = torch.autograd.grad
    calls = []

    def no_batched(*args, **kwargs):
        calls.append("batched")
        raise RuntimeError("no vmap rule")

    def counted(*args, **kwargs):
        calls.append("grad")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(gradients, "batched_vjp", no_batched)
    monkeypatch.setattr(torch.autograd, "grad", counted)
    new = _run(model, batch, "gradops", use_boundary=True)
    assert calls == ["grad", "grad", "batched", "grad", "grad"]
    _assert_same(new, old, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("encoder", ["gru", "rnn", "thp", "sahp", "fnn"])
def test_batched_vjp_equals_one_backward_per_cotangent(encoder: str) -> None:
    from mtpp.training.gradients import batched_vjp

    model, batch = _real_model(encoder, "lnm", "base"), _real_batch()
    h = model.encoder.histories(batch)
    params = [p for p in model.encoder.parameters()]
    cots = torch.randn(3, *h.shape, dtype=h.dtype, generator=torch.Generator().manual_seed(1))
    got = batched_vjp([h], params, [cots])
    for i in range(3):
        want = torch.autograd.grad(h, params, cots[i], retain_graph=True, allow_unused=True)
        for g, w in zip(got, want):
            torch.testing.assert_close(g[i], w, atol=1e-12, rtol=1e-10)


def test_plain_sum_without_stats_is_one_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or real_grad(*a, **k))
    for par in ("base", "plusplus"):
        _run(_real_model("gru", "lnm", par), _real_batch(), "sum", use_boundary=True, want_stats=False)
    _run(_real_model("gru", "lnm", "plusplus"), _real_batch(), "pcgrad", use_boundary=True, want_stats=True)
    assert calls == []
