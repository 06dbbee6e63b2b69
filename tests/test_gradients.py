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
    agg = make_aggregator("weighted", weights=[2.0, -0.5])
    expected = [2.0 * a - 0.5 * b for a, b in zip(gT, gM)]
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
