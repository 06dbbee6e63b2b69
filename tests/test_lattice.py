"""Times on a lattice (``mtpp.data.lattice``): the quantum is found, and the binned time NLL is a probability of the
gap's bin (the integral of the density over it), unitless, and reported by evaluation and training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import K, tiny_model

from mtpp.config import load_config
from mtpp.data.batch import collate
from mtpp.data.formats import write_split_folder
from mtpp.data.lattice import NEAR, TimeLattice, time_lattice
from mtpp.data.sequence import EventSequence
from mtpp.evaluation.evaluate import evaluate_model
from mtpp.evaluation.metrics import MetricAccumulator
from mtpp.models.scaling import resolve_time_scale
from mtpp.training.trainer import fit

pytestmark = pytest.mark.usefixtures("one_thread")

DECODERS = ("lnm", "rmtpp", "rmtpp-baseline", "fnn", "thp", "sahp")  # rmtpp-baseline: model.rmtpp_form
PARAMETRISATIONS = ("base", "plus", "plusplus")
Q = 3.887894882481646e-06  # MOOC's quantum: one second of its [0, 10] time axis


def _lattice_sequences(n: int, length: int, seed: int, q: float = Q, low: int = 1, offset: float = 0.0,
                       num_marks: int = K) -> list[EventSequence]:  # fmt: skip
    """Gaps of ``low..60`` quanta (geometric-ish, many small), marks at random."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = np.minimum(low + rng.geometric(0.08, length) - 1, 60)
        times = offset + q * np.cumsum(k).astype(np.float64)
        out.append(EventSequence(times, rng.integers(0, num_marks, length), None))
    return out


def test_time_lattice_finds_the_quantum_and_its_shares() -> None:
    seqs = _lattice_sequences(40, 30, 0)
    lat = time_lattice(seqs)
    assert isinstance(lat, TimeLattice) and lat.quantum == pytest.approx(Q, rel=1e-12)
    gaps = np.concatenate([np.diff(s.times) for s in seqs])
    assert lat.gaps == gaps.size
    assert lat.share_near == pytest.approx(np.mean(np.round(gaps / Q) <= NEAR))
    assert lat.share_zero == 0.0 and lat.consequential
    assert "lattice of q = 3.88789e-06" in lat.describe()
    # the same data in another unit (and far from 0): the quantum follows the unit
    for c, offset in ((1e4, 0.0), (1e-3, 0.0), (1.0, 1.4e3)):
        other = [EventSequence(c * s.times + offset, s.marks, None) for s in seqs]
        assert time_lattice(other).quantum == pytest.approx(c * Q, rel=1e-6)
    # no gap of exactly one quantum: the smallest gap (2 q) is divided down to q (3 q gaps exist)
    two_up = _lattice_sequences(40, 30, 1, low=2)
    assert min(np.diff(s.times).min() for s in two_up) == pytest.approx(2 * Q)
    assert time_lattice(two_up).quantum == pytest.approx(Q, rel=1e-12)
    # ties (zero gaps) are counted and make a lattice consequential even when no gap is a few quanta
    gaps = np.array([0.0] * 4 + [1.0] + [1000.0] * 199)  # 1 of 200 positive gaps within NEAR quanta, 4 ties
    wide = [EventSequence(np.concatenate([[0.0], np.cumsum(gaps)]), np.zeros(205, int), None)]
    lat = time_lattice(wide)
    assert lat.quantum == 1.0 and lat.share_near == 1 / 200 and lat.share_zero == 4 / 204
    assert lat.consequential
    no_ties = [EventSequence(np.concatenate([[0.0], np.cumsum(gaps[4:])]), np.zeros(201, int), None)]
    assert not time_lattice(no_ties).consequential  # 0.5 % of the gaps within NEAR quanta, no tie
    # the evaluation scores bins only on a consequential lattice (elsewhere binned = L_T + a constant)
    from mtpp.data.lattice import scored_quantum

    assert scored_quantum(lat) == 1.0 and scored_quantum(time_lattice(no_ties)) is None and scored_quantum(None) is None


def test_time_lattice_is_none_off_a_lattice_or_without_evidence() -> None:
    rng = np.random.default_rng(0)
    continuous = [EventSequence(np.cumsum(rng.exponential(1.0, 30)), np.zeros(30, int), None) for _ in range(20)]
    assert time_lattice(continuous) is None
    assert time_lattice(_lattice_sequences(2, 20, 0)) is None  # 38 gaps: too few to claim a lattice
    assert time_lattice([EventSequence(np.array([1.0]), np.array([0]), None)]) is None
    # the smallest gap is 50 quanta: beyond MAX_DIVISOR, the quantum is not inferred (no bin is consequential)
    assert time_lattice(_lattice_sequences(40, 30, 0, q=1.0, low=50)) is None


def _model(decoder: str, parametrisation: str, dtype: torch.dtype = torch.float64):
    return tiny_model(decoder, parametrisation, "gru", dtype)


@pytest.mark.parametrize("parametrisation", ("base", "plus"))
@pytest.mark.parametrize("decoder", DECODERS)
def test_interval_probability_is_the_integral_of_the_density(decoder: str, parametrisation: str) -> None:
    """``exp(log_interval_prob(lo, hi))`` equals ``int_lo^hi f`` (64-node Gauss-Legendre of ``exp(log_prob)``) for
    every time head under its evaluation rule, and ``F(hi)`` for ``lo = 0``."""
    m = _model(decoder, parametrisation)
    seqs = _lattice_sequences(3, 8, 2, q=0.3)
    m.time_scale = resolve_time_scale("auto", seqs)
    batch = collate(seqs, dtype=torch.float64)
    with torch.no_grad():
        h_time, _ = m.histories(batch)
        dist = m.next_time_distribution(h_time)
        shape = dist.batch_shape
        x, w = np.polynomial.legendre.leggauss(64)
        for lo_v, hi_v in ((0.01, 0.3), (0.5, 0.6), (2.0, 7.0)):
            lo, hi = torch.full(shape, lo_v, dtype=torch.float64), torch.full(shape, hi_v, dtype=torch.float64)
            got = dist.log_interval_prob(lo, hi).exp()
            mid, half = 0.5 * (lo_v + hi_v), 0.5 * (hi_v - lo_v)
            want = sum(wi * half * dist.log_prob(torch.full(shape, mid + half * xi, dtype=torch.float64)).exp()
                       for xi, wi in zip(x, w))  # fmt: skip
            torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)
        zero, hi = torch.zeros(shape, dtype=torch.float64), torch.full(shape, 0.4, dtype=torch.float64)
        torch.testing.assert_close(dist.log_interval_prob(zero, hi).exp(), dist.cdf(hi), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("parametrisation", PARAMETRISATIONS)
@pytest.mark.parametrize("decoder", DECODERS)
def test_binned_nll_is_unitless_and_a_probability(decoder: str, parametrisation: str) -> None:
    """At fixed weights, the binned time NLL of times ``c t`` with quantum ``c q`` is the same for every ``c``
    (no change-of-variables term: it is a probability), every term is ``>= 0``, and it is ``-log`` of the bin's
    interval probability, term by term (windows included: the survival term is the same as ``L_T``'s)."""
    seqs = _lattice_sequences(3, 9, 3)
    windows = [None, 5 * Q, 40 * Q]
    m = _model(decoder, parametrisation)
    ref = None
    for c in (1.0, 1e-4, 1e4):
        data = [EventSequence(c * s.times, s.marks, None if w is None else c * (s.times[-1] + w))
                for s, w in zip(seqs, windows)]  # fmt: skip
        m.time_scale = resolve_time_scale("auto", data)
        batch = collate(data, dtype=torch.float64)
        with torch.no_grad():
            scores = m.score(batch, forecast=False, time_quantum=c * Q)
            unbinned = m.score(batch, forecast=False)
        assert unbinned.time_nll_binned is None
        binned = scores.time_nll_binned
        assert binned.shape == (3,) and torch.all(binned >= 0)
        f_lo, f_hi = scores.pit_bin_edges
        scored = scores.nll.scored
        assert torch.all((f_lo <= scores.pit + 1e-12)[scored]) and torch.all((scores.pit <= f_hi + 1e-12)[scored])
        edges = torch.stack([f_lo, f_hi])
        if ref is None:
            ref, ref_edges = binned, edges
            # term by term: -log(S(lo) - S(hi)) of each scored gap's bin, in model units, + the survival term
            with torch.no_grad():
                h_time, _ = m.histories(batch)
                dist = m.next_time_distribution(h_time[:, : batch.taus.shape[1]])
                q = Q / m.time_scale
                k = torch.round(batch.taus / m.time_scale / q)
                lo, hi = ((k - 0.5) * q).clamp_min(0), (k + 0.5) * q
                p = (dist.log_survival(lo).exp() - dist.log_survival(hi).exp()).log()
            want = torch.where(scores.nll.scored, -p, torch.zeros_like(p)).sum(-1) + scores.nll.survival_term
            torch.testing.assert_close(binned, want, rtol=1e-9, atol=1e-9)
            continue
        torch.testing.assert_close(binned, ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(edges, ref_edges, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("decoder", DECODERS)
def test_long_gaps_use_the_midpoint_rule_continuously(decoder: str) -> None:
    """Beyond ``BINNED_EXACT_QUANTA`` quanta the bin probability is ``f(tau) q``: at ``k`` just above the switch it
    agrees with the exact ``S(lo) - S(hi)`` (float64) to ``O(1 / k^2)``."""
    m = _model(decoder, "plus")
    k_switch = m.BINNED_EXACT_QUANTA
    q = 1e-3
    seqs = [EventSequence(q * np.cumsum([5, k_switch + 1, 3, k_switch + 40, 7]).astype(np.float64),
                          np.array([0, 1, 2, 1, 0]), None)]  # fmt: skip
    m.time_scale = 1.0  # gaps of ~1 model unit: the density is smooth on the scale of a bin
    batch = collate(seqs, dtype=torch.float64)
    with torch.no_grad():
        scores = m.score(batch, forecast=False, time_quantum=q)
        h_time, _ = m.histories(batch)
        dist = m.next_time_distribution(h_time[:, :5])
        k = torch.round(batch.taus / q)
        exact = -dist.log_interval_prob(((k - 0.5) * q).clamp_min(0), (k + 0.5) * q)
    terms = -scores.nll.time_terms  # log f(tau) (data units: time_scale 1)
    midpoint = -(terms + math.log(q))
    long = k[0] > k_switch
    assert long.tolist() == [False, True, False, True, False]
    torch.testing.assert_close(midpoint[0][long], exact[0][long], rtol=1e-5, atol=1e-6)
    scored = scores.nll.scored[0]
    want = torch.where(long, midpoint[0], exact[0])
    torch.testing.assert_close(scores.time_nll_binned[0], want[scored].sum(), rtol=1e-12, atol=1e-12)
    f_lo, f_hi = scores.pit_bin_edges  # long gaps: the continuous PIT at both edges
    assert torch.equal(f_lo[0][long], scores.pit[0][long]) and torch.equal(f_hi[0][long], scores.pit[0][long])
    assert torch.all(f_lo[0][~long] < f_hi[0][~long])


def test_evaluation_reports_the_binned_nll_only_when_every_batch_has_it() -> None:
    m = _model("lnm", "plus", torch.float32)
    seqs = _lattice_sequences(12, 10, 4)
    m.time_scale = resolve_time_scale("auto", seqs)
    metrics, arrays = evaluate_model(m, seqs, batch_size=5, time_quantum=Q)
    assert metrics["time_quantum"] == Q
    assert metrics["nll_time_binned_per_seq"] > 0 and 0 <= metrics["pce_binned"] < 0.5
    # the plotted binned PIT CDF is the one pce_binned measures (its mean distance from the levels j/50)
    levels = np.arange(1, 51) / 50
    assert np.mean(np.abs(np.asarray(arrays["pit_cdf_binned"]) - levels)) == pytest.approx(metrics["pce_binned"])
    assert metrics["nll_time_binned_per_event"] == pytest.approx(
        metrics["nll_time_binned_per_seq"] * metrics["num_sequences"] / metrics["num_events"])
    # binned ~ L_T + n log(1 / q) where the density is smooth on the lattice's scale (gaps of many quanta)
    assert metrics["nll_time_binned_per_event"] > metrics["nll_time_per_event"]
    plain, plain_arrays = evaluate_model(m, seqs, batch_size=5)
    assert not {"nll_time_binned_per_seq", "pce_binned", "time_quantum"} & set(plain)
    assert "pit_cdf_binned" not in plain_arrays
    # merging an accumulator without the binned part drops the metric (it would cover only some sequences)
    batch = collate(seqs[:3])
    with torch.no_grad():
        a, b = MetricAccumulator(), MetricAccumulator()
        a.update(m.score(batch, time_quantum=Q), batch)
        b.update(m.score(batch), batch)
    assert "nll_time_binned_per_seq" in a.compute()
    assert "nll_time_binned_per_seq" not in a.merge(b).compute()
    with pytest.raises(ValueError, match="time_quantum"):
        m.score(batch, time_quantum=0.0)


def test_a_grid_says_the_lattice_warning_once_on_the_console_and_in_every_run_log(tmp_path: Path, capsys) -> None:
    """Twelve cells of one grid printed the same lattice paragraph twelve times: the console has it once per
    process, every run's train.log has it."""
    splits = {"train": _lattice_sequences(40, 12, 5), "val": _lattice_sequences(10, 12, 6),
              "test": _lattice_sequences(10, 12, 7)}  # fmt: skip
    data = write_split_folder(tmp_path / "lattice", [splits], num_marks=K)
    for name in ("a", "b"):
        cfg = load_config(None, [f"data.name={data}", "train.max_epochs=1", "model.hidden_size=4",
                                 "logging.quiet=true", "logging.progress=false"])  # fmt: skip
        fit(cfg, tmp_path / name)
    assert capsys.readouterr().err.count("warning: times on a lattice of q = 3.88789e-06") == 1
    for name in ("a", "b"):
        assert "warning: times on a lattice of q = 3.88789e-06" in (tmp_path / name / "train.log").read_text()


def test_training_warns_on_a_consequential_lattice_and_reports_binned(tmp_path: Path, capsys) -> None:
    splits = {"train": _lattice_sequences(40, 12, 5), "val": _lattice_sequences(10, 12, 6),
              "test": _lattice_sequences(10, 12, 7)}  # fmt: skip
    data = write_split_folder(tmp_path / "lattice", [splits], num_marks=K)
    cfg = load_config(None, [f"data.name={data}", "train.max_epochs=1", "model.hidden_size=4",
                             "logging.quiet=true", "logging.progress=false"])  # fmt: skip
    metrics = fit(cfg, tmp_path / "run")
    err = capsys.readouterr().err
    assert "warning: times on a lattice of q = 3.88789e-06" in err and "nll_time_binned_per_seq" in err
    for split in ("val", "test"):
        assert metrics[split]["time_quantum"] == pytest.approx(Q, rel=1e-12)
        assert metrics[split]["nll_time_binned_per_seq"] > 0
    from mtpp.training.trainer import fmt_value, final_summary

    summary = final_summary(tmp_path / "run", metrics)  # what a run prints at its end
    assert "times in data units" in summary  # no documented unit; a catalog unit is named
    assert "times in hours" in final_summary(tmp_path / "run", metrics, time_unit="hour")
    first = final_summary(tmp_path / "run", metrics, aggregator="mgda").splitlines()[0]  # the remedy trained with
    assert first.endswith(" parameters, aggregator mgda")
    assert f"(binned {fmt_value(metrics['test']['nll_time_binned_per_seq'])})" in summary
    assert f"(binned {fmt_value(metrics['test']['pce_binned'])})" in summary and "lattice bin" in summary
    # re-evaluating the run says the same, and reproduces the trainer's binned NLL
    from mtpp.cli import main

    assert main(["evaluate", str(tmp_path / "run"), "--split", "test"]) == 0
    out, err = capsys.readouterr()
    assert "warning: times on a lattice of q = 3.88789e-06" in err
    legend, header, _, row = out.splitlines()[:4]
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[2:5] == ["L_T/seq", "L_T binned/seq", "L_M/seq"] and "PCE binned" in cols
    assert "binned: of each gap's lattice bin, unitless" in legend  # the line above the table says so
    assert "times in data units" in legend  # the run's data (a prepared folder) has no documented unit
    from mtpp.commands.evaluate import caption

    assert "times in hours" in caption((), "skip", {"hour"})  # runs on taxi
    assert "times in each run's data unit (they differ)" in caption((), "skip", {"hour", None})
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[3]) == pytest.approx(metrics["test"]["nll_time_binned_per_seq"], rel=1e-3)
    # a folder of runs on the same data: the warning once, every run's row
    import shutil

    for name in ("a", "b"):
        shutil.copytree(tmp_path / "run", tmp_path / "runs" / name)
    assert main(["evaluate", str(tmp_path / "runs"), "--split", "test"]) == 0
    out, err = capsys.readouterr()
    assert err.count("warning: times on a lattice") == 1 and out.count(f"| {tmp_path / 'runs'}") == 2
    rng = np.random.default_rng(0)
    smooth = [EventSequence(np.cumsum(rng.exponential(1.0, 12)), rng.integers(0, K, 12), None) for _ in range(40)]
    data = write_split_folder(tmp_path / "smooth", [{"train": smooth, "val": smooth[:10], "test": smooth[:10]}],
                              num_marks=K)  # fmt: skip
    cfg = load_config(None, [f"data.name={data}", "train.max_epochs=1", "model.hidden_size=4",
                             "logging.quiet=true", "logging.progress=false"])  # fmt: skip
    metrics = fit(cfg, tmp_path / "run_smooth")
    assert "lattice" not in capsys.readouterr().err
    assert "nll_time_binned_per_seq" not in metrics["test"]
    assert "binned" not in final_summary(tmp_path / "run_smooth", metrics)
    # a folder whose first run is off the lattice: the table still has the lattice columns, n/a in that row
    for name, run in (("a_smooth", "run_smooth"), ("b_lattice", "run")):
        shutil.copytree(tmp_path / run, tmp_path / "mixed" / name)
    assert main(["evaluate", str(tmp_path / "mixed"), "--split", "test"]) == 0
    _, header, _, first, second = capsys.readouterr().out.splitlines()[:5]  # the legend line, then the table
    cols = [c.strip() for c in header.strip("|").split("|")]
    binned = cols.index("L_T binned/seq")
    assert "a_smooth" in first and first.strip("|").split("|")[binned].strip() == "n/a"
    assert "b_lattice" in second and float(second.strip("|").split("|")[binned]) > 0


def test_ties_on_a_lattice_name_the_resolution_of_half_a_quantum(tmp_path: Path, capsys) -> None:
    """Zero gaps on a lattice are gaps below q / 2: the tie warning names the tie resolution that scores each as
    that bin (in model units: q / 2 / time scale), and with it the ties are scored as exactly that bin."""
    seqs = _lattice_sequences(40, 12, 8, low=0)  # some gaps of 0 quanta: ties
    data = write_split_folder(tmp_path / "ties", [{"train": seqs, "val": seqs[:10], "test": seqs[:10]}],
                              num_marks=K)  # fmt: skip
    overrides = [f"data.name={data}", "train.max_epochs=1", "model.hidden_size=4", "logging.quiet=true",
                 "logging.progress=false", "model.parametrisation=plusplus"]  # fmt: skip
    fit(load_config(None, overrides), tmp_path / "run")
    err = capsys.readouterr().err
    scale = resolve_time_scale("auto", seqs)
    assert f"model.tie_resolution={Q / 2 / scale:.6g} (model units)" in err
    fit(load_config(None, [*overrides, f"model.tie_resolution={Q / 2 / scale!r}"]), tmp_path / "run_half")
    from mtpp.runs import open_run
    from mtpp.training.setup import build_run_model

    run = open_run(tmp_path / "run_half")
    model = build_run_model(run.config, K, torch.device("cpu"))
    run.load_best(model)
    assert model.time_scale == pytest.approx(scale)
    # sequences whose scored gaps are all ties: each tie term is -log F(q / 2) = -log P(bin [0, q / 2)), so the
    # time NLL under that resolution is the binned NLL
    tied = [EventSequence(np.full(9, 5 * Q), np.arange(9) % K, None) for _ in range(4)]
    metrics, _ = evaluate_model(model, tied, batch_size=4, time_quantum=Q)
    assert metrics["num_ties"] == 4 * 8
    assert metrics["nll_time_per_seq"] == pytest.approx(metrics["nll_time_binned_per_seq"], rel=1e-5)


def test_rescore_records_adds_the_binned_nll_and_leaves_the_rest(tmp_path: Path, monkeypatch) -> None:
    """``scripts/rescore_records.py``: a record written before the binned NLL existed gains it from its run's
    ``best.pt``, every metric it had comes back unchanged; a record whose run directory holds other metrics (a rerun
    of the cell) is left alone."""
    import importlib.util
    import json
    import sys

    from mtpp.records import build_record, read_records, write_record

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("rescore_records", root / "scripts" / "rescore_records.py")
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "rescore_records", script)
    spec.loader.exec_module(script)

    splits = {"train": _lattice_sequences(40, 12, 5), "val": _lattice_sequences(10, 12, 6),
              "test": _lattice_sequences(10, 12, 7)}  # fmt: skip
    data = write_split_folder(tmp_path / "lattice", [splits], num_marks=K)
    results, runs = tmp_path / "results", tmp_path / "runs"
    for name in ("old", "rerun"):
        cell = {"name": f"synthetic/lnm-plus-sum/split0-{name}", "dataset": "synthetic"}
        run = runs / cell["name"]
        cfg = load_config(None, [f"data.name={data}", "train.max_epochs=1", "model.hidden_size=4",
                                 "model.decoder=lnm", "model.parametrisation=plus",
                                 "logging.quiet=true", "logging.progress=false"])  # fmt: skip
        fit(cfg, run)
        metrics = json.loads((run / "metrics.json").read_text())
        for section in ("val", "test"):  # as written before the binned NLL existed
            for key in ("nll_time_binned_per_seq", "nll_time_binned_per_event", "pce_binned", "time_quantum"):
                metrics[section].pop(key)
        (run / "metrics.json").write_text(json.dumps(metrics))
        write_record(results, cell["name"], build_record(run, cell, 12.0))
    rerun = runs / "synthetic/lnm-plus-sum/split0-rerun" / "metrics.json"
    rerun.write_text(rerun.read_text().replace('"epochs": 1', '"epochs": 2'))  # another run of the same cell
    interrupted = runs / "synthetic/lnm-plus-sum/split0-old" / "metrics.json"  # test section already rescored
    metrics = json.loads(interrupted.read_text())
    metrics["test"]["time_quantum"] = 1.0
    interrupted.write_text(json.dumps(metrics))
    before = {r["cell"]["name"]: r for r in read_records(results)}
    assert script.main([str(results), str(runs)]) == 0
    after = {r["cell"]["name"]: r for r in read_records(results)}
    old, new = before["synthetic/lnm-plus-sum/split0-old"], after["synthetic/lnm-plus-sum/split0-old"]
    assert new["metrics"]["test"]["time_quantum"] == pytest.approx(Q, rel=1e-12)
    assert new["metrics"]["test"]["nll_time_binned_per_seq"] > 0
    for key, value in old["metrics"]["test"].items():
        assert new["metrics"]["test"][key] == pytest.approx(value, rel=1e-9), key
    assert new["wall_seconds"] == old["wall_seconds"] and new["config"] == old["config"]
    (mark,) = new["rescored"]  # the record says it was rescored, and what that added
    assert "nll_time_binned_per_seq" in mark["added"] and mark["when"].startswith("20") and "git_revision" in mark
    assert after["synthetic/lnm-plus-sum/split0-rerun"] == before["synthetic/lnm-plus-sum/split0-rerun"]
    # --missing: records that have the metric already are not scored again
    (runs / "synthetic/lnm-plus-sum/split0-old" / "best.pt").unlink()  # would fail if it were evaluated
    assert script.main([str(results), str(runs), "--missing", "pce_binned"]) == 0


def test_data_describe_names_the_lattice() -> None:
    from mtpp.commands.data import _lattice_line, describe_sequences

    on = describe_sequences(_lattice_sequences(40, 12, 0), K)
    assert on["lattice"]["quantum"] == pytest.approx(Q, rel=1e-12) and on["lattice"]["consequential"]
    assert _lattice_line(on["lattice"]).startswith("time lattice   gaps are whole multiples of q = 3.88789e-06; ")
    assert "nll_time_binned" in _lattice_line(on["lattice"])
    hours = describe_sequences(_lattice_sequences(40, 12, 0, q=1 / 3600), K)  # seconds on an hours axis
    assert "q = 0.000277778 (= 1/3,600 of a data unit); " in _lattice_line(hours["lattice"])
    assert "q = 0.000277778 (= 1/3,600 hour); " in _lattice_line(hours["lattice"], "hour")  # a documented unit
    assert "q = 3.88789e-06 seconds; " in _lattice_line(on["lattice"], "second")  # no whole fraction: the unit
    from mtpp.data.lattice import TimeLattice, lattice_warning

    one = TimeLattice(quantum=1.0, share_near=0.5, share_zero=0.0, gaps=10)  # retweet: whole seconds
    assert lattice_warning(one, "seconds").startswith("times on a lattice of q = 1 seconds (50.0 % ")
    rng = np.random.default_rng(0)
    off = describe_sequences([EventSequence(np.cumsum(rng.exponential(1.0, 30)), np.zeros(30, int), None)
                              for _ in range(20)], K)  # fmt: skip
    assert off["lattice"] is None and "none found" in _lattice_line(off["lattice"])


def _accumulate(pit: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> dict:
    from mtpp.data.batch import Batch
    from mtpp.models.base import NLLOutput, Scores

    b, l = pit.shape
    zeros = torch.zeros(b, l, dtype=torch.float64)
    mask = torch.ones(b, l, dtype=torch.bool)
    nll = NLLOutput(zeros.sum(1), zeros.sum(1), zeros, zeros, mask, zeros.sum(1))
    scores = Scores(nll=nll, pit=pit, mark_log_probs=torch.zeros(b, l, 2), median_tau=zeros,
                    time_nll_binned=zeros.sum(1), pit_bin_edges=(lo, hi))  # fmt: skip
    batch = Batch(zeros, zeros, torch.zeros(b, l, dtype=torch.long), mask, mask.sum(1), zeros[:, 0], zeros[:, 0])
    acc = MetricAccumulator()
    acc.update(scores, batch)
    return acc.compute()


def test_pce_binned_is_calibrated_for_the_true_model_of_rounded_gaps() -> None:
    """Unit-rate exponential gaps recorded to q = 0.5: under the true model the continuous PIT ``F(k q)`` is far from
    uniform (PCE ~0.06) while the non-randomised PIT of the bins (Czado, Gneiting & Held 2009) is calibrated, and
    the accumulator's value is the mean of ``clip((u - F(lo)) / (F(hi) - F(lo)), 0, 1)`` computed directly."""
    from mtpp.evaluation.metrics import pce

    rng = np.random.default_rng(0)
    q = 0.5
    k = np.round(rng.exponential(1.0, (200, 100)) / q)
    lo, hi = np.clip((k - 0.5) * q, 0, None), (k + 0.5) * q
    f_lo, f_hi, f_tau = (-np.expm1(-x) for x in (lo, hi, k * q))
    got = _accumulate(*(torch.from_numpy(x) for x in (f_tau, f_lo, f_hi)))
    assert got["pce"] == pytest.approx(pce(f_tau.ravel())) and got["pce"] > 0.04
    levels = np.arange(1, 51) / 50
    cdf = np.clip((levels - f_lo[..., None]) / (f_hi - f_lo)[..., None], 0, 1).mean((0, 1))
    assert got["pce_binned"] == pytest.approx(np.mean(np.abs(cdf - levels)), rel=1e-12)
    assert got["pce_binned"] < 0.005  # sampling noise of 20,000 events
    # a wrong rate (twice the true one) is caught by the binned PCE as well
    wrong_lo, wrong_hi = -np.expm1(-2 * lo), -np.expm1(-2 * hi)
    assert _accumulate(torch.from_numpy(f_tau), torch.from_numpy(wrong_lo), torch.from_numpy(wrong_hi))["pce_binned"] > 0.05
    # bins of zero width: the binned PIT is the continuous one
    same = torch.from_numpy(f_tau)
    assert _accumulate(same, same, same)["pce_binned"] == pytest.approx(got["pce"], rel=1e-12)


def _epochs(run: Path) -> list[dict]:
    import json

    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "epoch"]


@pytest.mark.parametrize("parametrisation", ["base", "plusplus"])
def test_selecting_on_the_binned_time_nll(tmp_path: Path, parametrisation: str, monkeypatch) -> None:
    """``train.select_time_on: binned``: every epoch logs the binned validation L_T, which is the one the model's
    own evaluation gives, and the best epoch (of the whole model, or of the time part under separate early
    stopping) is its minimum; data off a lattice are refused with the fix named."""
    from mtpp.errors import ConfigError
    from mtpp.evaluation.evaluate import evaluate

    splits = {"train": _lattice_sequences(40, 12, 5), "val": _lattice_sequences(10, 12, 6),
              "test": _lattice_sequences(10, 12, 7)}  # fmt: skip
    data = write_split_folder(tmp_path / "lattice", [splits], num_marks=K)
    extra = ["train.separate_early_stopping=true"] if parametrisation == "plusplus" else []
    cfg = load_config(None, [f"data.name={data}", "train.max_epochs=6", "train.min_delta=0", "train.patience=100",
                             "model.hidden_size=4", f"model.parametrisation={parametrisation}", "train.lr=0.03",
                             "train.select_time_on=binned", "logging.quiet=true", "logging.progress=false",
                             "train.lr_schedule=plateau", *extra])  # fmt: skip
    from mtpp.training.early_stopping import EarlyStopping

    seen, step = [], EarlyStopping.step
    plateau, plateau_step = [], torch.optim.lr_scheduler.ReduceLROnPlateau.step

    def spy(self, epoch, val_time, val_mark, model):  # what early stopping is given as the time part's score
        seen.append(val_time)
        return step(self, epoch, val_time, val_mark, model)

    def plateau_spy(self, metrics, *args, **kwargs):  # what the plateau schedule is given
        plateau.append(metrics)
        return plateau_step(self, metrics, *args, **kwargs)

    monkeypatch.setattr(EarlyStopping, "step", spy)
    monkeypatch.setattr(torch.optim.lr_scheduler.ReduceLROnPlateau, "step", plateau_spy)
    run = tmp_path / "run"
    metrics = fit(cfg, run)
    epochs = _epochs(run)
    binned = np.array([e["val_nll_time_binned_per_seq"] for e in epochs])
    mark = np.array([e["val_nll_mark_per_seq"] for e in epochs])
    continuous = np.array([e["val_nll_time_per_seq"] for e in epochs])
    assert np.all(binned > 0) and not np.allclose(binned, continuous)
    np.testing.assert_allclose(seen, binned, rtol=1e-12)
    from mtpp.training.trainer import Counters, epoch_line

    line = epoch_line(1, 6, True, {k: v for k, v in epochs[0].items() if k.startswith("val_")}, 1.0, Counters(), [])
    assert f"(binned {binned[0]:.3f})" in line  # the score the '*' follows is on the epoch line
    chosen = binned if parametrisation == "plusplus" else binned + mark
    key = "best_epoch/time" if parametrisation == "plusplus" else "best_epoch"
    assert metrics["train"][key] == epochs[int(np.argmin(chosen))]["epoch"]
    np.testing.assert_allclose(plateau, binned + mark, rtol=1e-12)  # the schedule follows the selected score too
    # the record judges the course after the best epoch (divergence) on the selected score, per event
    from mtpp.records import build_record

    after = build_record(run, {"name": "x"}, 1.0)["validation_after_best"]
    per_event = np.array([e["val_nll_per_event"] / e["val_nll_per_seq"] for e in epochs])
    if parametrisation == "plusplus":
        best = int(np.argmin(binned))
        assert after["time"]["best"] == pytest.approx(binned[best] * per_event[best])
        later = (binned * per_event)[best + 1:]
    else:
        best = int(np.argmin(binned + mark))
        assert after["best"] == pytest.approx((binned + mark)[best] * per_event[best])
        later = ((binned + mark) * per_event)[best + 1:]
    assert (after["time"] if parametrisation == "plusplus" else after)["worst"] == (
        pytest.approx(later.max()) if len(later) else None)
    if parametrisation == "base":  # best.pt holds the best epoch's weights: its binned val L_T is the logged one
        again = evaluate(run, "val")
        assert again["nll_time_binned_per_seq"] == pytest.approx(binned.min(), rel=1e-5)
    rng = np.random.default_rng(0)
    smooth = [EventSequence(np.cumsum(rng.exponential(1.0, 12)), rng.integers(0, K, 12), None) for _ in range(40)]
    data = write_split_folder(tmp_path / "smooth", [{"train": smooth, "val": smooth[:10], "test": smooth[:10]}],
                              num_marks=K)  # fmt: skip
    cfg = load_config(None, [f"data.name={data}", "train.max_epochs=1", "model.hidden_size=4",
                             "train.select_time_on=binned", "logging.quiet=true", "logging.progress=false"])
    with pytest.raises(ConfigError, match="not on a lattice.*train.select_time_on: nll"):
        fit(cfg, tmp_path / "run_smooth")
    with pytest.raises(ConfigError, match="select_time_on"):
        load_config(None, ["train.select_time_on=bins"])


def test_a_mild_lattice_is_scored_binned_only_when_selection_follows_it(tmp_path: Path) -> None:
    """Times on a lattice that hardly matters (0.2 % of the gaps within NEAR quanta): the evaluation adds no binned
    metrics (they would be L_T plus a constant), unless the run's early stopping followed the binned L_T, whose
    final numbers then say what it selected on; ``mtpp evaluate`` of the run agrees."""
    from mtpp.evaluation.evaluate import evaluate

    rng = np.random.default_rng(3)
    seqs = []
    for i in range(40):
        gaps = rng.integers(900, 1100, 12).astype(float)
        if i == 0:
            gaps[5] = 1.0  # the one short gap that reveals the lattice of q = 1
        seqs.append(EventSequence(np.cumsum(gaps), rng.integers(0, K, 12), None))
    lat = time_lattice(seqs)
    assert lat is not None and lat.quantum == 1.0 and not lat.consequential
    data = write_split_folder(tmp_path / "mild", [{"train": seqs, "val": seqs[:10], "test": seqs[:10]}],
                              num_marks=K)  # fmt: skip
    for select in ("nll", "binned"):
        cfg = load_config(None, [f"data.name={data}", "train.max_epochs=1", "model.hidden_size=4",
                                 f"train.select_time_on={select}", "logging.quiet=true", "logging.progress=false"])
        metrics = fit(cfg, tmp_path / select)
        assert ("nll_time_binned_per_seq" in metrics["test"]) == (select == "binned"), select
        again = evaluate(tmp_path / select, "test")
        assert ("nll_time_binned_per_seq" in again) == (select == "binned"), select


def test_time_lattice_survives_a_smallest_gap_stored_rounded() -> None:
    """book_order's quantum is 1/60,000, its one-quantum gaps stored as 1.66666e-05 (6 digits): the quantum read
    off that gap is refitted over all gaps instead of missing the lattice; continuous gaps still give none."""
    q = 1 / 60000
    rng = np.random.default_rng(3)
    seqs = []
    for _ in range(30):
        k = rng.integers(1, 3000, 40).astype(float)
        t = np.concatenate([[0.0], np.cumsum(k * q)])
        t = np.array([float(f"{x:.12g}") for x in t])  # the file's 12 significant digits
        seqs.append(EventSequence(t, np.zeros(t.size, int), None))
    seqs.append(EventSequence(np.array([0.0, 1.66666e-05]), np.zeros(2, int), None))  # one gap stored rounded
    lat = time_lattice(seqs)
    assert lat is not None and lat.quantum == pytest.approx(q, rel=1e-9)
    rough = [EventSequence(np.concatenate([[0.0], np.cumsum(rng.integers(1, 3000, 40) * q
                                                             + rng.uniform(0, 0.05 * q, 40))]), np.zeros(41, int), None)
             for _ in range(30)]  # fmt: skip
    assert time_lattice(rough) is None
