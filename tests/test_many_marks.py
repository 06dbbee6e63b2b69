"""Evaluation with many marks: the mark forecast's skip switch and time estimate (``mtpp evaluate
--no-mark-forecast``, ``evaluate(..., mark_forecast=False)``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from helpers import tiny_config

from mtpp.cli import main
from mtpp.data.sequence import EventSequence
from mtpp.evaluation import evaluate as ev
from mtpp.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _sequences(k: int, n: int = 6) -> list[EventSequence]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        length = 5 + i
        times = torch.cumsum(torch.rand(length, generator=g, dtype=torch.float64) + 0.05, 0).numpy()
        marks = torch.randint(0, k, (length,), generator=g).numpy()
        out.append(EventSequence(times, marks))
    return out


def test_skipping_the_mark_forecast_leaves_its_metrics_out_and_the_others_unchanged(monkeypatch) -> None:
    """``mark_forecast=False``: no ``*_forecast`` metric (never 0 or NaN), ``mark_forecast`` says "not computed",
    every other metric as with the forecast. With it, a "+" model whose evaluation is estimated to take long says
    so in one line after the first batch, naming the switch; base LNM (no quadrature) says nothing."""
    torch.manual_seed(0)
    k = 40
    seqs = _sequences(k)
    plus = build_model(tiny_config(encoder="gru", decoder="lnm", parametrisation="plus"), k)
    lines: list[str] = []
    full = ev.evaluate(plus, data=seqs, batch_size=2, log=lines.append)
    assert lines == []  # fast: no estimate
    skipped = ev.evaluate(plus, data=seqs, batch_size=2, mark_forecast=False, log=lines.append)
    assert skipped["mark_forecast"] == ev.NOT_COMPUTED and "mark_forecast" not in full
    forecast_keys = {key for key in full if "forecast" in key}
    assert {"accuracy_forecast", "ece_forecast", "nll_mark_forecast_per_seq"} <= forecast_keys
    assert not forecast_keys & set(skipped)
    assert {key: v for key, v in full.items() if key not in forecast_keys} == {
        key: v for key, v in skipped.items() if key != "mark_forecast"}
    monkeypatch.setattr(ev, "ESTIMATE_SECONDS", 0.0)
    ev.evaluate(plus, data=seqs, batch_size=2, log=lines.append)
    assert len(lines) == 1 and "--no-mark-forecast" in lines[0] and f"{sum(len(s) for s in seqs):,}" in lines[0]
    base = build_model(tiny_config(encoder="gru", decoder="lnm", parametrisation="base"), k)
    ev.evaluate(base, data=seqs, batch_size=2, log=lines.append)
    ev.evaluate(plus, data=seqs, batch_size=2, log=lines.append, mark_forecast=False)
    assert len(lines) == 1


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_evaluate_command_no_mark_forecast_says_not_computed_and_leaves_the_run_files(tmp_path: Path,
                                                                                      capsys) -> None:  # fmt: skip
    """``mtpp evaluate RUN --no-mark-forecast``: the forecast columns read "not computed", the other columns are
    those of a full evaluation, and the run's metrics.json / arrays files are not rewritten (they would lose the
    forecast metrics)."""
    import os

    os.environ.setdefault("MTPP_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", str(Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"),
                 "--out", str(out), "--variant", "thp_base",
                 "--set", "data.max_sequences=24", "--set", "train.max_epochs=1", "--set", "model.hidden_size=8",
                 "--set", "model.decoder_hidden_size=8", "--set", "model.num_components=2",
                 "--set", "logging.quiet=true", "--set", "logging.progress=false"]) == 0
    run = out / "thp_base"
    capsys.readouterr()
    before = _digest(run)
    assert main(["evaluate", str(run), "--no-mark-forecast"]) == 0
    text, err = capsys.readouterr()
    assert _digest(run) == before and "left as they were" in err
    row = next(line for line in text.splitlines() if line.startswith(f"| {run} | test |")).split(" | ")
    header = next(line for line in text.splitlines() if line.startswith("| run |")).split(" | ")
    cells = dict(zip(header, row))
    for column in ("acc. forecast", "MRR forecast", "ECE forecast |"):
        assert cells[column].strip(" |") == "not computed", column
    assert main(["evaluate", str(run)]) == 0
    full = capsys.readouterr()[0]
    cells_full = dict(zip(header, next(line for line in full.splitlines()
                                       if line.startswith(f"| {run} | test |")).split(" | ")))  # fmt: skip
    assert cells_full["L_M/seq"] == cells["L_M/seq"] and cells_full["PCE"] == cells["PCE"]
    assert cells_full["acc. forecast"] != "not computed"
