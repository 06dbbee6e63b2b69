"""The vectorised ensemble step (``mtpp.training.stacked``) equals separate models: the fused recurrence under
``vmap``, the per-member losses (time scales included), ``StackedAdam`` against ``torch.optim.Adam``, masked
members, and the aligned batch plan."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtpp.config import load_config
from mtpp.data.batch import collate
from mtpp.data.synthetic import SYNTHETIC_PARAMS, simulate_hawkes_many
from mtpp.models.recurrence import run_fused
from mtpp.training.setup import build_run_model
from mtpp.training.stacked import (
    StackedAdam,
    StackedMembers,
    aligned_schedule,
    ensemble_step,
    member_conflict_stats,
    stack_batches,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class _Wrap(nn.Module):
    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        return run_fused(self.rnn, x, h0)


@pytest.mark.parametrize("cell", [nn.GRU, nn.RNN])
def test_fused_recurrence_under_vmap_equals_each_member(cell: type[nn.RNNBase]) -> None:
    torch.manual_seed(0)
    members = [_Wrap(cell(5, 4, batch_first=True).double()) for _ in range(3)]
    x = torch.randn(3, 2, 6, 5, dtype=torch.float64)
    h0 = torch.randn(3, 1, 2, 4, dtype=torch.float64)
    params, _ = torch.func.stack_module_state(members)
    meta = copy.deepcopy(members[0]).to("meta")
    out = torch.func.vmap(lambda p, a, b: torch.func.functional_call(meta, p, (a, b)))(params, x, h0)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), list(params.values()))
    for m, mod in enumerate(members):
        ref = mod(x[m], h0[m])
        torch.testing.assert_close(out[m], ref, atol=1e-13, rtol=0)
        want = torch.autograd.grad((ref * w[m]).sum(), list(mod.parameters()))
        for g, r in zip(grads, want):
            torch.testing.assert_close(g[m], r, atol=1e-12, rtol=0)


def _data(n: int, seed: int) -> list:
    rng = __import__("numpy").random.default_rng(seed)
    return [s for s in simulate_hawkes_many(SYNTHETIC_PARAMS, n, 8.0, rng) if len(s) > 1]


def _models(decoder: str, parametrisation: str = "base", seeds=(0, 1)) -> tuple[list[nn.Module], object]:
    cfg = load_config(None, [
        f"model.decoder={decoder}", f"model.parametrisation={parametrisation}", "data.dtype=float64",
        "model.integration=gauss_legendre", "model.hidden_size=8", "model.num_components=3",
        "model.decoder_hidden_size=8", "model.mark_embedding_size=4", "model.time_embedding_size=4",
    ])  # fmt: skip
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(build_run_model(cfg, SYNTHETIC_PARAMS.num_marks, torch.device("cpu")))
    return models, cfg


@pytest.mark.parametrize("decoder,parametrisation", [("lnm", "base"), ("thp", "base"), ("lnm", "plusplus")])
def test_ensemble_steps_equal_separate_models(decoder: str, parametrisation: str) -> None:
    """A few Adam steps of two members (different time scales, batch sizes, lengths) equal two separate models
    trained by ``torch.optim.Adam`` on the same batches: losses and parameters in float64."""
    models, _ = _models(decoder, parametrisation)
    scales = [0.7, 1.9]
    for m, s in zip(models, scales):
        m.time_scale = s
    stacked = StackedMembers(models, scales)
    adam = StackedAdam(stacked.flat, lr=1e-2)
    trainable = torch.ones_like(stacked.flat, dtype=torch.bool)
    seqs = [_data(6, 0), _data(6, 1)]
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in models]
    for step in range(3):
        batches = [collate(seqs[0][step : step + 4], torch.float64), collate(seqs[1][step : step + 3], torch.float64)]
        res = ensemble_step(stacked, adam, stack_batches(batches, torch.float64), trainable, want_stats=True)
        for m, (model, batch, opt) in enumerate(zip(models, batches, opts)):
            opt.zero_grad()
            out = model.nll(batch)
            lt, lm = out.time_nll.float().mean(), out.mark_nll.float().mean()
            (lt + lm).backward()
            opt.step()
            torch.testing.assert_close(res.loss_time[m], lt.detach(), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(res.loss_mark[m], lm.detach(), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(stacked.flat[m].detach(), stacked.row_of(model), rtol=0, atol=1e-9)
        assert res.ok.all() and res.updated.all()
        if parametrisation == "plusplus":  # nothing shared: every statistic undefined
            assert torch.isnan(res.stats).all()
        else:
            assert torch.isfinite(res.stats[:, 0]).all()


def test_masked_member_is_left_exactly_as_it_was() -> None:
    """A member without a batch, or whose columns are not trainable, keeps its parameters, moments and steps."""
    models, _ = _models("lnm")
    stacked = StackedMembers(models, [1.0, 1.0])
    adam = StackedAdam(stacked.flat, lr=1e-2)
    seqs = _data(6, 0)
    trainable = torch.ones_like(stacked.flat, dtype=torch.bool)
    ensemble_step(stacked, adam, stack_batches([collate(seqs[:3], torch.float64)] * 2, torch.float64), trainable, False)
    before = stacked.flat.detach().clone(), adam.exp_avg.clone(), adam.exp_avg_sq.clone(), adam.steps.clone()
    # member 1: no batch; member 0: trainable only on the first half of its columns
    trainable[0, stacked.flat.shape[1] // 2 :] = False
    res = ensemble_step(stacked, adam, stack_batches([collate(seqs[3:], torch.float64), None], torch.float64),
                        trainable, True)  # fmt: skip
    assert res.updated.tolist() == [True, False]
    half = stacked.flat.shape[1] // 2
    for new, old in zip((stacked.flat.detach(), adam.exp_avg, adam.exp_avg_sq, adam.steps), before):
        assert torch.equal(new[1], old[1])
        assert torch.equal(new[0, half:], old[0, half:])
    assert not torch.equal(stacked.flat[0, :half].detach(), before[0][0, :half])


def test_stacked_adam_equals_torch_adam_with_weight_decay() -> None:
    torch.manual_seed(0)
    p = torch.randn(3, 10, dtype=torch.float64)
    ref = [nn.Parameter(row.clone()) for row in p]
    opts = [torch.optim.Adam([r], lr=3e-3, weight_decay=0.1) for r in ref]
    adam = StackedAdam(p, lr=3e-3, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(3, 10, dtype=torch.float64)
        adam.step(p, g, torch.ones(3, 1, dtype=torch.bool))
        for r, o, gr in zip(ref, opts, g):
            r.grad = gr.clone()
            o.step()
    torch.testing.assert_close(p, torch.stack([r.detach() for r in ref]), rtol=0, atol=1e-14)


def test_conflict_stats_per_member_match_the_definition() -> None:
    g_t = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
    g_m = torch.tensor([[-1.0, 0.0, 5.0], [0.0, 0.0, 3.0]])
    stats = member_conflict_stats(g_t, g_m, {"shared": slice(0, 2), "encoder": slice(0, 1), "decoder": slice(1, 2)})
    assert stats[0, 0].item() == pytest.approx(-1.0)  # cos over the shared columns
    assert torch.isnan(stats[0, 2])  # zero decoder gradients: undefined, never 0
    assert torch.isnan(stats[1, 0])  # member 1 has zero shared gradients


def test_aligned_schedule_is_a_permutation_per_member_at_common_lengths() -> None:
    lengths = [[5, 50, 10, 30, 20], [11, 52, 29, 6], [21, 9, 49, 31, 4, 60]]
    plan = aligned_schedule(lengths, torch.Generator().manual_seed(0))
    assert len(plan) == 6
    for m, lens in enumerate(lengths):
        used = [step[m] for step in plan if step[m] is not None]
        assert sorted(used) == list(range(len(lens)))
        assert all(step[m] is None for step in plan[len(lens) :])
    # members of equal batch counts see the same length rank at every step
    ranks = [sorted(range(5), key=lambda j: lengths[0][j]).index(step[0]) for step in plan[:5]]
    assert sorted(ranks) == list(range(5))
