"""The torchjd adapter (``gradients.aggregator: torchjd:NAME``) and torchjd as the oracle of the aggregators both
libraries have (issue 13 §4). Skipped without the optional extra (``pip install 'mtpp[torchjd]'``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mtpp.errors import ConfigError
from mtpp.training.aggregators import TorchJD, make_aggregator

J = pytest.importorskip("torchjd.aggregation")

DT = torch.float64


def task_matrices() -> list[torch.Tensor]:
    """``[2, P]`` task gradients: strongly conflicting, random, aligned, one zero row."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(9, generator=g, dtype=DT)
    conflict = torch.stack([a, -0.5 * a + 0.1 * torch.randn(9, generator=g, dtype=DT)])
    rand = torch.randn(2, 9, generator=g, dtype=DT)
    aligned = torch.stack([a, 2.0 * a + 0.01 * torch.randn(9, generator=g, dtype=DT)])
    zero = torch.stack([a, torch.zeros(9, dtype=DT)])
    return [conflict, rand, aligned, zero]


ORACLES = [  # (mtpp name, mtpp options, torchjd aggregator) -- same definition, same scale
    ("sum", {}, lambda: J.Sum()),
    ("weighted", {"weights": (1.0, 1.0)}, lambda: J.Sum()),
    ("pcgrad", {}, lambda: J.PCGrad()),
    ("mgda", {}, lambda: J.MGDA(epsilon=1e-12, max_iters=10_000)),
    ("imtl", {}, lambda: J.IMTLG()),
]


@pytest.mark.parametrize("name,options,oracle", ORACLES, ids=[o[0] for o in ORACLES])
def test_aggregators_match_torchjd(name, options, oracle):
    for i, F in enumerate(task_matrices()):
        ours = make_aggregator(name, **options).combine(F)
        if name == "imtl" and i == 3:
            # the one documented difference: a zero task gradient gives mtpp's IMTL-G a zero update (its docstring),
            # torchjd's the other task's gradient
            assert torch.equal(ours, torch.zeros_like(ours))
            torch.testing.assert_close(oracle()(F), F[0])
            continue
        torch.testing.assert_close(ours, oracle()(F), rtol=1e-9, atol=1e-12)


def test_gradvac_matches_torchjd_over_a_trajectory():
    """Stateful: the moving-average target evolves the same way over successive steps (torchjd's ``eps`` 1e-8 in
    its denominators is the only difference, hence the tolerance)."""
    ours = make_aggregator("gradvac", beta=0.5)
    theirs = J.GradVac(beta=0.5)
    for F in task_matrices()[:3] * 2:
        torch.testing.assert_close(ours.combine(F), theirs(F), rtol=1e-6, atol=1e-8)


def test_adapter_is_an_aggregator_with_torchjd_semantics():
    agg = make_aggregator("torchjd:UPGrad")
    assert isinstance(agg, TorchJD) and repr(agg) == "TorchJD(UPGrad)"
    g_T = [torch.tensor([1.0, 0.0], dtype=DT), torch.tensor([[2.0]], dtype=DT)]
    g_M = [torch.tensor([-1.0, 1.0], dtype=DT), torch.tensor([[-1.0]], dtype=DT)]
    out = agg([g_T, g_M])
    assert [o.shape for o in out] == [(2,), (1, 1)]
    F = torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in (g_T, g_M)])
    torch.testing.assert_close(torch.cat([o.reshape(-1) for o in out]), J.UPGrad()(F))
    # UPGrad's defining property: no conflict with any task after aggregation
    assert (F @ torch.cat([o.reshape(-1) for o in out]) >= -1e-12).all()
    # options pass through (lists become tensors)
    pref = make_aggregator("torchjd:UPGrad", pref_vector=[0.9, 0.1])
    torch.testing.assert_close(pref.combine(F), J.UPGrad(pref_vector=torch.tensor([0.9, 0.1]))(F))
    assert make_aggregator("torchjd:Mean").state_dict() == {}


def test_unknown_names_and_options_are_config_errors():
    with pytest.raises(ConfigError, match="unknown torchjd aggregator 'Nope'; valid: .*torchjd:UPGrad"):
        make_aggregator("torchjd:Nope")
    with pytest.raises(ConfigError, match="unknown option.*cc.*valid: c, norm_eps"):
        make_aggregator("torchjd:CAGrad", cc=1.0)
    with pytest.raises(ConfigError, match="unknown aggregator 'UPGrad'"):
        make_aggregator("UPGrad")  # without the prefix: mtpp's own registry


def test_missing_torchjd_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchjd.aggregation", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"needs the optional package torchjd: pip install 'mtpp\[torchjd\]'"):
        make_aggregator("torchjd:UPGrad")


def test_training_step_with_a_torchjd_aggregator(tmp_path: Path):
    from mtpp.training.trainer import Trainer

    from test_trainer import tiny

    trainer = Trainer(tiny("gradients.aggregator=torchjd:UPGrad", decoder="thp"), tmp_path, resume=False,
                      data_dir=None, overwrite=False)  # fmt: skip
    try:
        before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        trainer._train_step(1, next(iter(trainer.loader)))
        after = dict(trainer.model.named_parameters())
        assert any(not torch.equal(before[k], after[k]) for k in before)
        assert int(trainer.guard.skipped) == 0
    finally:
        trainer.close()
