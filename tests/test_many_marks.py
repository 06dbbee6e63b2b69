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
        length = 5 + i % 10
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
    done: list[int] = []  # the line comes up front: before the first batch is scored
    ev.evaluate_model(plus, seqs, batch_size=2, on_batch=lambda: done.append(1),
                      log=lambda m: lines.append(f"{len(done)} batches done: {m}"))  # fmt: skip
    assert len(lines) == 2 and lines[1].startswith("0 batches done") and len(done) >= 3
    lines.pop()
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


def test_reliability_figure_bins_span_the_observed_confidences_of_many_marks(tmp_path: Path, monkeypatch) -> None:
    """200 marks: every top-class probability is below 0.1, so the ECE's 10 equal-width bins hold every event in
    the first one. The figure's bins (from the arrays' fine bins) are 10 bins of about equal event counts over the
    observed confidences, its axes span them and its axis label says so; the ECE and its bins are unchanged."""
    import json

    import numpy as np
    import yaml

    from mtpp.evaluation import plots, report
    from mtpp.evaluation.metrics import MetricAccumulator, ece, reliability_diagram
    from mtpp.models.base import NLLOutput, Scores

    g = torch.Generator().manual_seed(1)
    b, length, k = 40, 25, 200
    logits = 0.6 * torch.randn(b, length, k, generator=g, dtype=torch.float64)
    log_probs = torch.log_softmax(logits, -1)
    labels = torch.distributions.Categorical(logits=logits).sample()
    mask = torch.ones(b, length, dtype=torch.bool)
    zeros = torch.zeros(b, length, dtype=torch.float64)
    nll = NLLOutput(time_nll=zeros.sum(-1), mark_nll=zeros.sum(-1), time_terms=zeros, mark_terms=zeros,
                    scored=mask, survival_term=zeros.sum(-1))  # fmt: skip
    scores = Scores(nll=nll, pit=zeros + 0.5, mark_log_probs=log_probs, median_tau=zeros + 1.0, mean_tau=None,
                    forecast_mark_log_probs=log_probs)  # fmt: skip
    batch = type("B", (), {"mask": mask, "marks": labels, "taus": zeros + 1.0, "lengths": torch.full((b,), length),
                           "survival_gap": torch.zeros(b, dtype=torch.float64)})()  # fmt: skip
    acc = MetricAccumulator()
    acc.update(scores, batch)
    metrics, arrays = acc.compute(), acc.arrays()
    flat_p, flat_y = log_probs.exp().reshape(-1, k), labels.reshape(-1)
    assert metrics["ece_forecast"] == pytest.approx(ece(flat_p, flat_y), rel=1e-9)  # the ECE as documented
    coarse = reliability_diagram(flat_p, flat_y)
    assert arrays["reliability_count_forecast"] == [int(c) for c in coarse["count"]]
    assert arrays["reliability_count_forecast"][0] == b * length  # all in the first equal-width bin
    fine = plots.reliability_plot_bins(
        np.asarray(arrays["reliability_fine_count_forecast"], float),
        np.nan_to_num(np.asarray(arrays["reliability_fine_confidence_forecast"], float))
        * np.asarray(arrays["reliability_fine_count_forecast"], float),
        np.nan_to_num(np.asarray(arrays["reliability_fine_accuracy_forecast"], float))
        * np.asarray(arrays["reliability_fine_count_forecast"], float),
        np.asarray(arrays["reliability_fine_edges_forecast"], float))
    conf = flat_p.max(-1).values.numpy()
    assert len(fine["count"]) >= 8 and fine["count"].sum() == b * length
    assert fine["count"].max() <= 2 * b * length / 10  # about equal masses
    assert fine["edges"][0] <= conf.min() and fine["edges"][-1] >= conf.max() and fine["edges"][-1] < 0.2
    assert np.all(np.diff(fine["confidence"]) > 0)
    # the figure: its discs are those bins, its axes end near the largest confidence, its label names the binning
    run = tmp_path / "runs" / "many"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"decoder": "lnm", "parametrisation": "plus"}}))
    (run / "metrics.json").write_text(json.dumps({"test": {"nll_time_per_seq": 1.0,
                                                            "ece_forecast": metrics["ece_forecast"]}}))
    (run / "arrays_test.json").write_text(json.dumps(arrays))
    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    plots.plot_reliability(report.collect_runs(tmp_path / "runs"), tmp_path / "rel.png")
    (fig,) = figures
    ax = next(a for a in fig.axes if a.get_title())
    points = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    assert len(points) == len(fine["count"])
    np.testing.assert_allclose(np.sort(points[:, 0]), fine["confidence"])
    assert ax.get_xlim()[1] < 0.25 and "equal-count bins" in ax.get_xlabel()
    title = " ".join(fig._suptitle.get_text().split())
    assert "10 bins of about equal event counts over the observed confidences" in title


class _Bar:
    """A stand-in for ``tqdm.auto.tqdm`` that records what a reader shows (the real one is off without a TTY)."""

    made: list["_Bar"] = []

    def __init__(self, *args, **kwargs) -> None:
        self.kwargs, self.n, self.files = kwargs, 0, []
        _Bar.made.append(self)

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.files.append(text)


def test_reading_a_big_folder_shows_a_bar_counting_its_sequences_when_asked(tmp_path: Path, monkeypatch) -> None:
    """``load_dataset(..., progress=True)`` (and a run's data loading, ``mtpp.training.setup.load_data``, which the
    commands call with their progress setting) reads under a bar that counts the sequences and names each file;
    ``progress=False`` shows none. Reading 100,000 sequences took 11 s without a word, and the old bar counted
    files (3 in a split folder: it could not move while the one big train file was read)."""
    import tqdm.auto

    from mtpp.config import DataConfig
    from mtpp.data.catalog import load_dataset
    from mtpp.data.formats import write_split_folder
    from mtpp.training.setup import load_data

    seqs = _sequences(5, n=1200)
    parts = {"train": seqs[:1000], "val": seqs[1000:1100], "test": seqs[1100:]}
    folder = write_split_folder(tmp_path / "big", [parts], num_marks=5)
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.made = []
    load_dataset(folder, progress=False)
    assert _Bar.made == []
    ds = load_dataset(folder, progress=True)
    assert len(ds.train) == 1000
    (bar,) = _Bar.made
    assert bar.n == 1200 and bar.kwargs["unit"] == "seq" and bar.kwargs["disable"] is None  # a TTY only
    assert sorted(bar.files) == ["test.json", "train.json", "val.json"]
    _Bar.made = []
    load_data(DataConfig(name=str(folder)), progress=True)
    assert len(_Bar.made) == 1 and _Bar.made[0].n == 1200


def test_predict_says_the_mark_forecasts_estimated_time_up_front(monkeypatch) -> None:
    """``mtpp predict``'s rows are the mark forecast: when it is estimated to take long, one line says so before
    the first batch is predicted (``predict_frame(log=...)``), and the table is the one without the line."""
    from mtpp.forecast.predict import predict_frame

    torch.manual_seed(0)
    k = 40
    seqs = _sequences(k)
    plus = build_model(tiny_config(encoder="gru", decoder="lnm", parametrisation="plus"), k)
    lines: list[str] = []
    quiet = predict_frame(plus, seqs, batch_size=2, log=lines.append)
    assert lines == []
    monkeypatch.setattr(ev, "ESTIMATE_SECONDS", 0.0)
    said = predict_frame(plus, seqs, batch_size=2, log=lines.append)
    assert len(lines) == 1 and "mark columns are this forecast" in lines[0]
    assert said.equals(quiet)
