"""A skipped step (non-finite guard) logs every gradient statistic as null and stays out of the conflict rate
(issue 11 §4: it logged ``cos_tm: -0.0`` with ``norm_time: null`` and counted in the denominator)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from mtpp.training.gradients import STAT_KEYS, StatsBuffer, conflict_rates, conflict_stats
from mtpp.training.guard import NonFiniteGuard
from mtpp.training.trainer import Trainer

from test_trainer import tiny  # the tiny synthetic run of the trainer tests


def test_conflict_stats_are_null_when_a_task_gradient_is_not_finite():
    g_T = {"encoder": [torch.tensor([1.0, math.inf])], "decoder": []}
    g_M = {"encoder": [torch.tensor([-1.0, 2.0])], "decoder": []}
    stats = conflict_stats(g_T, g_M)
    assert all(math.isnan(float(stats[k])) for k in STAT_KEYS)
    buf = StatsBuffer()
    buf.append(stats)
    assert all(v is None for v in buf.flush()[0].values())


def test_null_if_skipped_and_conflict_rates_exclude_skipped_steps():
    stats = {"cos_tm": torch.tensor(-0.0), "gms": torch.tensor(0.5)}
    out = NonFiniteGuard.null_if_skipped(stats, torch.tensor(False))
    assert all(math.isnan(float(v)) for v in out.values())
    kept = NonFiniteGuard.null_if_skipped(stats, torch.tensor(True))
    assert all(torch.equal(kept[k], stats[k]) for k in stats)
    records = [{"cos_tm": 0.5, "skipped": False}, {"cos_tm": -0.0, "skipped": True}, {"cos_tm": -0.2}]
    assert conflict_rates(records)["conflict_rate"] == 0.5  # 1 of the 2 steps that were taken


@pytest.mark.parametrize("poison", ["loss", "gradient"])
def test_trainer_logs_a_skipped_step_as_null_and_leaves_it_out_of_the_rate(tmp_path: Path, poison: str) -> None:
    trainer = Trainer(tiny(decoder="thp"), tmp_path, resume=False, data_dir=None, overwrite=False)
    try:
        batches = list(trainer.loader)
        trainer._train_step(1, batches[0])
        if poison == "loss":
            nll = trainer._nll
            trainer._nll = lambda b: dataclasses.replace(nll(b), time_nll=nll(b).time_nll * math.inf)
            trainer._train_step(1, batches[1])
            trainer._nll = nll
        else:  # finite losses, an infinite gradient
            p = next(trainer.model.parameters())
            handle = p.register_hook(lambda g: g * math.inf)
            trainer._train_step(1, batches[1])
            handle.remove()
        trainer._train_step(1, batches[2])
        records = trainer.records.flush()
        assert [bool(r["skipped"]) for r in records] == [False, True, False]
        assert all(records[1][k] is None for k in STAT_KEYS), records[1]
        assert all(records[i]["cos_tm"] is not None for i in (0, 2))
        trainer.counters.add_records(records)
        assert trainer.counters.conflicts["cos_tm"][1] == 2  # the skipped step is not in the denominator
    finally:
        trainer.close()
