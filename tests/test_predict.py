"""The prediction table (``mtpp.forecast.predict``) and the forecasting commands end to end on a tiny run:
``mtpp predict | generate | plot`` and ``mtpp evaluate --horizon``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_config

import mtpp
from mtpp.cli import main
from mtpp.data.batch import collate
from mtpp.data.sequence import EventSequence
from mtpp.errors import MtppError
from mtpp.forecast.predict import predict_frame, write_table
from mtpp.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
K = 5


def _sequences(offset: float = 100.0) -> list[EventSequence]:
    rng = np.random.default_rng(0)
    return [EventSequence(np.cumsum(rng.exponential(1, n)) + offset, rng.integers(0, K, n)) for n in (5, 9, 3)]


COMBOS = [(e, d, p) for e, d, p in [
    ("gru", "lnm", "base"), ("gru", "thp", "base"), ("thp", "sahp", "plusplus"), ("fnn", "fnn", "plus"),
    ("sahp", "rmtpp", "plus"), ("gru", "fnn", "base"), ("thp", "lnm", "plusplus"),
]]


@pytest.mark.parametrize("encoder,decoder,parametrisation", COMBOS)
def test_table_equals_the_model_predict_and_score(encoder: str, decoder: str, parametrisation: str) -> None:
    """Every number of the table is the one ``MarkedTPP.predict`` / ``score`` give on the same batch."""
    torch.manual_seed(0)
    m = build_model(tiny_config(encoder=encoder, decoder=decoder, parametrisation=parametrisation,
                                integration="gauss_legendre"), K).eval()
    m.time_scale = 2.0
    seqs = _sequences()
    df = predict_frame(m, seqs, level=0.8, top_k=3)
    batch = collate(seqs)
    p, sc = m.predict(batch, top_k=3), m.score(batch)
    scored = sc.nll.scored
    assert len(df) == int(scored.sum()) == 14  # first event skipped: 4 + 8 + 2
    rows = scored.nonzero()
    assert df["sequence"].tolist() == rows[:, 0].tolist() and df["index"].tolist() == rows[:, 1].tolist()
    times = np.concatenate([s.times[1:] for s in seqs])
    assert np.array_equal(df["time"].to_numpy(), times)  # float64, absolute
    assert np.allclose(df["observed_gap"], np.concatenate([np.diff(s.times) for s in seqs]))
    np.testing.assert_allclose(df["median_gap"], p["median_tau"][:, :-1][scored].double(), rtol=1e-6)
    np.testing.assert_allclose(df["log_density_gap"], -sc.nll.time_terms[scored].double(), rtol=1e-5, atol=1e-6)
    obs = batch.marks[scored]
    flp = sc.forecast_mark_log_probs[scored]
    np.testing.assert_allclose(df["log_prob_mark"], flp.gather(-1, obs[:, None])[:, 0].double(), atol=1e-6)
    assert df[["mark_1", "mark_2", "mark_3"]].to_numpy().tolist() == p["top_k_marks"][:, :-1][scored].tolist()
    assert np.all(np.diff(df[["prob_1", "prob_2", "prob_3"]].to_numpy(), axis=1) <= 0)
    assert np.all((df["lower_gap_80"] < df["median_gap"]) & (df["median_gap"] < df["upper_gap_80"]))
    if decoder == "lnm":
        np.testing.assert_allclose(df["mean_gap"], p["mean_tau"][:, :-1][scored].double(), rtol=1e-6)
    else:
        assert df["mean_gap"].isna().all()


PADDING_COMBOS = [("lnm", "plus"), ("rmtpp", "base"), ("fnn", "base"), ("thp", "base"), ("sahp", "plusplus"),
                  ("thp", "plusplus")]


@pytest.mark.parametrize("decoder,parametrisation", PADDING_COMBOS)
def test_forecasts_at_the_real_positions_equal_those_of_the_whole_padded_batch(decoder: str,
                                                                                parametrisation: str) -> None:
    """``predict_batch``, ``MarkedTPP.predict`` and ``score`` compute the quantile searches and the mark quadrature
    at the real positions only (``MarkedTPP.forecasts_at``; the padding of a batch of unequal sequences was 4/5 of
    the work on MOOC): every number equals the computation over every position of the padded batch (float64, to
    rounding), and a sequence's rows do not depend on the other sequences of its batch."""
    from mtpp.forecast.predict import predict_batch

    torch.manual_seed(0)
    m = build_model(tiny_config(decoder=decoder, parametrisation=parametrisation), K).double().eval()
    with torch.no_grad():  # away from the initialisation: quantiles and marks that differ between positions
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    m.time_scale = 2.0
    seqs = _sequences()  # lengths 5, 9, 3: padding after the first and the third
    batch = collate(seqs, dtype=torch.float64)
    level = 0.8
    out, pred, sc = predict_batch(m, batch, level, top_k=K), m.predict(batch, top_k=K), m.score(batch)
    # the reference: every position of the padded batch in one call, as the quantiles and forecast were computed
    with torch.no_grad():
        h_time, h_mark = m.histories(batch)
        dist = m.next_time_distribution(h_time)
        b, n = h_time.shape[:2]
        probs = torch.tensor([(1 - level) / 2, 0.5, (1 + level) / 2], dtype=torch.float64)
        q = dist.icdf(probs.expand(b, n, 3)) * 2.0
        flp = m.mark_forecast_log_probs(h_time, h_mark)
        taus = torch.nn.functional.pad(torch.where(batch.mask, batch.taus / 2.0, 1.0), (0, 1), value=1.0)
        log_density = (dist.log_prob(taus) - math.log(2.0))[:, :-1]
    valid = torch.arange(n) <= batch.lengths.unsqueeze(-1)
    assert int(valid.sum()) == 20 < valid.numel() == 30
    close = dict(rtol=1e-12, atol=1e-14)
    for j, key in enumerate(("lower", "median", "upper")):
        torch.testing.assert_close(out[key][valid], q[..., j][valid], **close)
    torch.testing.assert_close(pred["median_tau"][valid], q[..., 1][valid], **close)
    torch.testing.assert_close(out["mark_log_probs"][valid], flp[valid], **close)
    torch.testing.assert_close(pred["mark_log_probs"][valid], flp[valid], **close)
    torch.testing.assert_close(out["log_density"][batch.mask], log_density[batch.mask], **close)
    L = batch.max_length
    torch.testing.assert_close(sc.median_tau[batch.mask], q[:, :L, 1][batch.mask], **close)
    torch.testing.assert_close(sc.forecast_mark_log_probs[batch.mask], flp[:, :L][batch.mask], **close)
    if decoder == "lnm":
        torch.testing.assert_close(out["mean"][valid], (dist.mean() * 2.0)[valid], **close)
    # padding: nothing forecast there, finite placeholders (gaps 0, uniform marks)
    assert (out["median"][~valid] == 0).all() and (sc.median_tau[~batch.mask] == 0).all()
    torch.testing.assert_close(pred["mark_log_probs"][~valid].exp().sum(-1), torch.ones(10, dtype=torch.float64))
    # one sequence at a time gives the same rows as the batch of three
    together = predict_frame(m, seqs, level=level, include_next=True)
    alone = pd.concat([predict_frame(m, [s], level=level, include_next=True, ids=[i]) for i, s in enumerate(seqs)],
                      ignore_index=True)  # fmt: skip
    pd.testing.assert_frame_equal(alone, together, check_exact=False, rtol=1e-12, atol=1e-14)


def test_interval_is_the_central_interval_of_the_gap_law() -> None:
    """F(lower) = (1 - level) / 2 and F(upper) = (1 + level) / 2 under the model's own CDF."""
    from mtpp.forecast.process import ModelProcess

    torch.manual_seed(0)
    m = build_model(tiny_config(decoder="rmtpp"), K).eval()
    seqs = _sequences()
    df = predict_frame(m, seqs, level=0.9, include_next=True)
    assert "lower" not in df and "upper" not in df  # the columns name their level
    nxt_rows = df[df["observed_mark"].isna()]
    assert nxt_rows["index"].tolist() == [5, 9, 3] and nxt_rows["observed_gap"].isna().all()
    assert str(df["observed_mark"].dtype) == "Int64"  # missing, not a sentinel that reads as a mark
    # the time each prediction is made from: the last event of the history (the window start 0 before the first)
    assert nxt_rows["history_end"].tolist() == [s.times[-1] for s in seqs]
    seen = df[df["observed_mark"].notna()]
    np.testing.assert_allclose(seen["history_end"] + seen["observed_gap"], seen["time"], rtol=1e-12)
    nxt = ModelProcess(m, seqs, 1).next_event(torch.arange(3))
    with torch.no_grad():
        lo = nxt.cdf(torch.as_tensor(nxt_rows["lower_gap_90"].to_numpy().copy()))
        hi = nxt.cdf(torch.as_tensor(nxt_rows["upper_gap_90"].to_numpy().copy()))
    np.testing.assert_allclose(lo.double(), 0.05, atol=1e-4)
    np.testing.assert_allclose(hi.double(), 0.95, atol=1e-4)


@pytest.mark.parametrize("level, names", [(0.9, ("lower_gap_90", "upper_gap_90")),
                                          (0.975, ("lower_gap_97.5", "upper_gap_97.5")),
                                          (0.5, ("lower_gap_50", "upper_gap_50"))])
def test_interval_columns_name_their_level(level: float, names: tuple[str, str]) -> None:
    from mtpp.forecast.predict import interval_columns

    assert interval_columns(level) == names
    m = build_model(tiny_config(decoder="lnm"), K).eval()
    df = predict_frame(m, _sequences(), level=level)
    assert set(names) <= set(df.columns)


def test_an_output_path_that_is_a_folder_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    m = build_model(tiny_config(decoder="lnm"), K).eval()
    df = predict_frame(m, _sequences())
    (tmp_path / "d.csv").mkdir()
    (tmp_path / "d.csv" / "mine.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(MtppError, match=r"d.csv: is a folder"):
            write_table(df, tmp_path / "d.csv", overwrite=overwrite)
    assert (tmp_path / "d.csv" / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]  # no temporary file left


def test_bad_arguments_and_never_overwriting(tmp_path: Path) -> None:
    m = build_model(tiny_config(decoder="lnm"), K).eval()
    with pytest.raises(MtppError, match="level"):
        predict_frame(m, _sequences(), level=1.5)
    with pytest.raises(MtppError, match="sequences"):
        mtpp.predict(m)
    df = predict_frame(m, _sequences())
    out = write_table(df, tmp_path / "p.csv")
    with pytest.raises(MtppError, match="exists"):
        write_table(df, out)
    with pytest.raises(MtppError, match=r"\.csv or \.parquet"):
        write_table(df, tmp_path / "p.txt")
    back = pd.read_csv(out)
    assert list(back.columns) == list(df.columns) and len(back) == len(df)


# ------------------------------------------------------------------------------------------------ commands


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny THP run on 24 synthetic Hawkes sequences (one epoch)."""
    import os

    os.environ.setdefault("MTPP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mtpp-cache"))
    out = tmp_path_factory.mktemp("forecast") / "run"
    code = main(["train", str(Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"),
                 "--out", str(out), "--variant", "thp_base",
                 "--set", "data.max_sequences=24", "--set", "train.max_epochs=1", "--set", "model.hidden_size=8",
                 "--set", "model.decoder_hidden_size=8", "--set", "model.num_components=2",
                 "--set", "logging.quiet=true", "--set", "logging.progress=false"])
    assert code == 0
    return out / "thp_base"


def test_predict_command_matches_python(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    out = tmp_path / "pred.parquet"
    if importlib.util.find_spec("pyarrow") is None:  # the parquet extra is not installed: said before any work
        assert main(["predict", str(run_dir), "--out", str(out), "--top-k", "2"]) == 2
        assert "writing Parquet needs pyarrow" in capsys.readouterr().err and not out.exists()
    else:
        assert main(["predict", str(run_dir), "--out", str(out), "--top-k", "2"]) == 0
        assert "rows" in capsys.readouterr().out
        df = pd.read_parquet(out)
        py = mtpp.predict(run_dir, top_k=2)
        pd.testing.assert_frame_equal(df, py)
        assert main(["predict", str(run_dir), "--out", str(out)]) == 2  # exists: refused, file untouched
        assert "exists" in capsys.readouterr().err
        pd.testing.assert_frame_equal(pd.read_parquet(out), py)
    # more ranked marks than the model has: K columns, and the command says so; next-event rows: an empty mark
    csv = tmp_path / "pred.csv"
    assert main(["predict", str(run_dir), "--out", str(csv), "--top-k", "9", "--include-next"]) == 0
    assert "--top-k 9 but the model has 5 marks" in capsys.readouterr().err
    df = pd.read_csv(csv, dtype={"observed_mark": "Int64"})
    assert [c for c in df if c.startswith("mark_")] == [f"mark_{j}" for j in range(1, 6)]
    nxt = df[df["observed_gap"].isna()]
    assert len(nxt) == df["sequence"].nunique() and nxt["observed_mark"].isna().all()
    assert df.loc[df["observed_gap"].notna(), "observed_mark"].notna().all()


def test_generate_command_and_baselines(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "gen.csv"
    assert main(["generate", str(run_dir), "--horizon", "2", "--samples", "3", "--sequences", "0,2",
                 "--out", str(out)]) == 0
    msg = capsys.readouterr().out
    assert "events/s" in msg and "cut at --max-events 1000 before the horizon" in msg
    df = pd.read_csv(out)
    assert set(df["sequence"]) <= {0, 2} and set(df["sample"]) <= {0, 1, 2}
    assert main(["generate", str(run_dir), "--events", "3", "--sequences", "0", "--out", str(tmp_path / "e.csv")]) == 0
    assert "max-events" not in capsys.readouterr().out  # a fixed number of events is never "cut"
    assert main(["generate", str(run_dir), "--events", "3", "--max-events", "2", "--out", str(tmp_path / "m.csv")]) == 2
    assert "--max-events only applies with --horizon" in capsys.readouterr().err and not (tmp_path / "m.csv").exists()
    for name in ("hawkes", "poisson"):
        o = tmp_path / f"{name}.csv"
        assert main(["generate", str(run_dir), "--events", "4", "--baseline", name, "--sampler", "thinning",
                     "--sequences", "1", "--out", str(o)]) == 0
        assert len(pd.read_csv(o)) == 4
        assert f"baseline {name}, thinning sampler" in capsys.readouterr().out
    dup = ["generate", str(run_dir), "--events", "2", "--sequences", "0,1,0", "--out", str(tmp_path / "d.csv")]
    assert main(dup) == 2  # two copies of sequence 0 would give rows that cannot be told apart
    assert "0 given more than once" in capsys.readouterr().err and not (tmp_path / "d.csv").exists()
    assert main(["generate", str(run_dir), "--events", "5", "--samples", "100000", "--max-memory", "0.001",
                 "--out", str(tmp_path / "x.csv")]) == 2
    assert "refused" in capsys.readouterr().err
    bad = ["generate", str(run_dir), "--events", "2", "--sequences", "999", "--out", str(tmp_path / "y.csv")]
    assert main(bad) == 2
    assert "out of range" in capsys.readouterr().err


def test_plot_command_writes_a_png(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.png"
    assert main(["plot", str(run_dir), "--sequence", "1", "--horizon", "3", "--samples", "8", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert main(["plot", str(run_dir), "--sequence", "1", "--out", str(out)]) == 2  # never replaced


def test_a_horizon_past_the_data_draws_no_observed_count_after_the_data_end(run_dir: Path) -> None:
    """A horizon longer than the sequence drew the observed count flat to the horizon ("no events happened")."""
    import matplotlib.pyplot as plt

    from mtpp.forecast.plot import plot_forecast
    from mtpp.forecast.runs import load_run

    run = load_run(run_dir)
    seq = run.split("test")[1]
    data_end = float(seq.window_end if seq.window_end is not None else seq.times[-1])
    horizon = 1.5 * data_end
    fig = plot_forecast(run.model, seq, horizon=horizon, samples=4)
    try:
        ax2 = fig.axes[2]
        observed = next(line for line in ax2.get_lines() if line.get_label() == "observed")
        x, y = (np.asarray(v, dtype=float) for v in observed.get_data())
        assert np.isnan(y[x > data_end]).all() and np.isfinite(y[x <= data_end]).all()
        assert any(line.get_label() == "end of the observed data" for line in ax2.get_lines())
        assert f"the data end at t = {data_end:.10g}" in " ".join(fig._suptitle.get_text().split())
    finally:
        plt.close(fig)


def test_the_plot_command_says_when_the_horizon_runs_past_the_data(run_dir: Path, tmp_path: Path, capsys) -> None:
    from mtpp.forecast.runs import load_run

    span = float(load_run(run_dir).split("test")[1].times[-1])
    argv = ["plot", str(run_dir), "--sequence", "1", "--horizon", f"{1.5 * span:g}", "--samples", "2",
            "--out", str(tmp_path / "f.png")]
    assert main(argv) == 0
    assert "data units before the horizon's end: nothing observed after" in capsys.readouterr().out  # its unit


@pytest.mark.parametrize("command, name, said", [
    ("plot", "fc.txt", "'.txt' is not an image format; --out takes one of"),
    ("plot", "forecast", "no file extension; --out takes one of"),
    ("predict", "p.xlsx", "the output must end in .csv or .parquet"),
    ("generate", "g.json", "the output must end in .csv or .parquet"),
])
def test_a_bad_out_path_is_refused_before_any_work(
    run_dir: Path, tmp_path: Path, capsys, monkeypatch, command: str, name: str, said: str
) -> None:
    """--out is checked first: one line, no matplotlib / pandas traceback, and the model is never loaded."""
    import mtpp.forecast.runs

    monkeypatch.setattr(mtpp.forecast.runs, "load_run", lambda *a, **k: pytest.fail("the model was loaded"))
    extra = {"plot": ["--sequence", "1"], "predict": [], "generate": ["--events", "2"]}[command]
    assert main([command, str(run_dir), *extra, "--out", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "lots"])
def test_generate_refuses_a_memory_budget_that_is_not_positive(run_dir: Path, tmp_path: Path, value: str, capsys) -> None:
    argv = ["generate", str(run_dir), "--events", "2", "--max-memory", value, "--out", str(tmp_path / "g.csv")]
    assert _exit_code(argv) == 2
    assert "--max-memory" in capsys.readouterr().err and not (tmp_path / "g.csv").exists()


def test_generate_from_the_fitted_hawkes_baseline_fits_once_and_reuses_the_cache(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """``--baseline hawkes-fit`` fits on the training split once and caches the parameters in
    ``RUN/baselines/hawkes_fit.json`` keyed by the training data's fingerprint (the one ``config.yaml`` records);
    the next call reads them (no fit, the file untouched, the same samples), a stale key is refitted, and a file
    there that mtpp did not write is never replaced."""
    import logging
    import shutil

    import yaml

    from mtpp.forecast import hawkes_fit
    from mtpp.forecast.baselines import HAWKES_FIT_CACHE, available_baselines

    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    fits = []
    real = hawkes_fit.fit_hawkes
    monkeypatch.setattr(hawkes_fit, "fit_hawkes", lambda *a, **kw: fits.append(1) or real(*a, **kw))
    cache = run / HAWKES_FIT_CACHE

    errs: list[str] = []

    def gen(name: str, *extra: str) -> pd.DataFrame:
        out = tmp_path / f"{name}.csv"
        assert main(["generate", str(run), "--events", "4", "--baseline", "hawkes-fit", "--sequences", "1", "--out",
                     str(out), *extra]) == 0
        said = capsys.readouterr()
        assert "baseline hawkes-fit, " in said.out
        errs.append(said.err)
        return pd.read_csv(out)

    first = gen("first", "--sampler", "thinning")
    assert len(first) == 4 and len(fits) == 1 and cache.is_file()
    record = json.loads(cache.read_text())
    recorded = yaml.safe_load((run / "config.yaml").read_text())["run_info"]["data"]["parts"]["train"]["sha256"]
    assert record["key"]["train_sha256"] == recorded and record["written_by"] == "mtpp"
    assert set(record["params"]) == {"mu", "alpha", "beta"} and record["fit"]["events"] > 0
    stamp = cache.stat().st_mtime_ns
    again = gen("again", "--sampler", "thinning")
    assert len(fits) == 1 and cache.stat().st_mtime_ns == stamp  # read, not refitted nor rewritten
    pd.testing.assert_frame_equal(first, again)  # the same parameters, the same seed: the same samples
    assert len(gen("icdf")) == 4 and len(fits) == 1  # the inverse-CDF sampler too
    record["key"]["version"] = -1  # a fit of other data (or an older fitter): refitted and replaced
    cache.write_text(json.dumps(record))
    gen("stale")
    assert len(fits) == 2 and json.loads(cache.read_text())["key"]["train_sha256"] == recorded
    cache.write_text('{"mine": true}')  # the user's own file: used around, never replaced
    with caplog.at_level(logging.WARNING, logger="mtpp.forecast.baselines"):
        gen("foreign")
    assert len(fits) == 3 and cache.read_text() == '{"mine": true}'
    assert any("was not written by mtpp" in r.getMessage() for r in caplog.records)
    assert "not cached (see the warning)" in errs[-1] and "cached in" not in errs[-1]  # said after the write
    # a cached non-stationary fit warns at every use, not only when fitted
    cache.unlink()
    gen("refit")
    record = json.loads(cache.read_text())
    record["params"]["alpha"] = [[1.5 if i == j else 0.0 for j in range(len(row))]
                                 for i, row in enumerate(record["params"]["alpha"])]
    cache.write_text(json.dumps(record))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mtpp.forecast.baselines"):
        gen("explosive")
    assert len(fits) == 4 and "branching ratio 1.5" in errs[-1]
    assert any("not stationary (branching ratio 1.5 >= 1)" in r.getMessage() for r in caplog.records)
    from mtpp.forecast.runs import load_run

    assert "hawkes-fit" not in available_baselines(load_run(run))  # asked for by name only


def _exit_code(argv: list[str]) -> int:
    """The process exit code of ``mtpp ARGV``: ``main``'s return, or argparse's exit for a bad option value."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


def test_evaluate_horizon_adds_flat_keys_and_baselines(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    before = json.loads((run / "metrics.json").read_text())
    import io
    import sys

    class Terminal(io.StringIO):  # what a person at a terminal sees: a progress bar per model / baseline
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    import functools

    import tqdm.std  # every update drawn, however fast this machine is (TQDM_MININTERVAL is read at import only)

    monkeypatch.setattr(tqdm.std.tqdm, "__init__", functools.partialmethod(tqdm.std.tqdm.__init__, mininterval=0))
    real, sys.stderr = sys.stderr, screen
    try:
        assert main(["evaluate", str(run), "--horizon", "2", "--samples", "8", "--points", "150"]) == 0
        assert main(["predict", str(run), "--out", str(tmp_path / "p.csv")]) == 0
        assert main(["generate", str(run), "--events", "3", "--samples", "2", "--out", str(tmp_path / "g.csv")]) == 0
    finally:
        sys.stderr = real
    shown = screen.getvalue()
    assert "horizon model: matching" in shown and "horizon hawkes" in shown and "predict:" in shown
    assert "evaluate test:" in shown and "generate:" in shown and "rows still running" in shown  # every long command
    printed = capsys.readouterr().out  # each table says what its columns condition on and their units
    assert "L_M: -log p(k | tau_obs, H), told the observed time" in printed
    assert "(at each prediction point, told only the history: acc.: next mark by argmax p(k | H)" in printed
    assert "MAE: |median gap - observed gap|, data units" in printed
    after = json.loads((run / "metrics.json").read_text())
    test = after["test"]
    for key in ("horizon_tmap", "horizon_otd", "horizon_count_pce", "horizon_count_coverage",
                "horizon_next_accuracy", "horizon_next_mae", "horizon_next_interval_coverage"):
        assert isinstance(test[key], float) and math.isfinite(test[key]), key
    assert set(test["horizon_baselines"]) == {"poisson", "hawkes"}
    assert 0.0 <= test["horizon_baselines"]["hawkes"]["tmap"] <= 1.0
    assert after["train"] == before["train"]  # nothing else changed
    from mtpp.evaluation.report import load_run

    row = load_run(run)
    assert "horizon_tmap" in row and "horizon_baselines" not in row  # tables pick up the flat keys
    # a plain re-evaluation keeps the forecast scores (same best.pt, same data); bad arguments stop first
    assert main(["evaluate", str(run)]) == 0
    again = json.loads((run / "metrics.json").read_text())["test"]
    assert again["horizon_tmap"] == test["horizon_tmap"] and "horizon_baselines" in again
    stamp = (run / "metrics.json").stat().st_mtime_ns
    for bad in (["--horizon", "-1"], ["--horizon", "2", "--points", "0"], ["--horizon", "2", "--samples", "0"],
                ["--samples", "8"], ["--points", "10"], ["--batch-size", "0"]):  # fmt: skip
        assert _exit_code(["evaluate", str(run), *bad]) == 2, bad
    assert "only apply with --horizon" in capsys.readouterr().err
    assert _exit_code(["predict", str(run), "--batch-size", "0", "--out", str(tmp_path / "z.csv")]) == 2
    assert "argument --batch-size: must be >= 1, got 0" in capsys.readouterr().err
    assert (run / "metrics.json").stat().st_mtime_ns == stamp


def test_every_sampling_command_has_the_one_max_events_option() -> None:
    from mtpp.cli import build_parser
    from mtpp.commands._forecast_args import MAX_EVENTS, positive_int
    from mtpp.forecast.generate import DEFAULT_MAX_EVENTS

    assert MAX_EVENTS == DEFAULT_MAX_EVENTS
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    options = {name: next(a for a in sub[name]._actions if a.dest == "max_events")
               for name in ("generate", "plot", "evaluate")}  # fmt: skip
    helps = {o.help for o in options.values()}
    assert len(helps) == 1 and f"default {DEFAULT_MAX_EVENTS}" in helps.pop()
    assert {(o.type, o.default, *o.option_strings) for o in options.values()} == {(positive_int, None, "--max-events")}


def test_the_plot_stops_the_sampled_counts_where_a_continuation_was_cut(run_dir: Path) -> None:
    """Continuations cut at max_events counted only up to the cap: the sampled curves ran flat at the cap to the
    horizon's end, read as a forecast of no further events. They stop at the first cut, which the figure says."""
    import matplotlib.pyplot as plt

    from mtpp.forecast.plot import plot_forecast
    from mtpp.forecast.runs import load_run

    run = load_run(run_dir)
    seq = run.split("test")[1]
    for cap in (1, None):
        notes: list[str] = []
        fig = plot_forecast(run.model, seq, horizon=3.0, samples=6, max_events=cap, log=notes.append)
        try:
            lines = {line.get_label(): line for line in fig.axes[2].get_lines()}
            x, median = (np.asarray(v, dtype=float) for v in lines["median of 6 samples"].get_data())
            cuts = [line for label, line in lines.items() if label.startswith("first sample cut at --max-events")]
            if cap is None:  # nothing cut: whole curves, nothing said
                assert not notes and not cuts and np.isfinite(median).all()
                continue
            assert len(notes) == 1 and notes[0].endswith("cut at --max-events 1 before the horizon: their event "
                                                         "counts are lower bounds") and " of 6 sampled" in notes[0]
            assert notes[0] in " ".join(fig._suptitle.get_text().split())
            first_capped = float(np.asarray(cuts[0].get_xdata())[0])
            assert np.isfinite(median[x <= first_capped]).all() and (x > first_capped).any()
            assert np.nanmax(median) <= 1  # where drawn, a cut sample cannot change it (at most the cap of 1 event)
        finally:
            plt.close(fig)


def test_a_count_quantile_is_drawn_while_the_cut_samples_cannot_change_it() -> None:
    """All bands stopped at the first cut sample, even the low ones that the cut samples (whose counts after
    their last event are lower bounds) could no longer move. Each quantile now runs while it is the same with the
    lower bounds as they are and raised to infinity. Four samples, the last cut at t = 1.5 with count 1."""
    from mtpp.forecast.plot import determined_quantiles

    grid = np.array([0.0, 1.0, 2.0, 3.0])
    counts = np.array([[0, 1, 2, 3], [0, 0, 1, 1], [0, 2, 2, 2], [0, 1, 1, 1]], dtype=float)
    exact_until = np.array([np.inf, np.inf, np.inf, 1.5])
    q = determined_quantiles(counts, grid, exact_until, [0.25, 0.5, 0.95])
    # t <= 1.5: every count exact, sorted [0, 1, 1, 2] at t = 1
    np.testing.assert_array_equal(q[:, :2], [[0, 0], [0, 1], [0, 2]])
    # t = 2, 3: the cut sample is >= 1: the lowest order statistic is 1 whatever it is, the others are open
    np.testing.assert_array_equal(q[0, 2:], [1, 1])
    assert np.isnan(q[1:, 2:]).all()
    # nothing cut: plain inverted-CDF quantiles
    whole = determined_quantiles(counts, grid, np.full(4, np.inf), [0.5])
    np.testing.assert_array_equal(whole, np.quantile(counts, [0.5], axis=0, method="inverted_cdf"))


def test_sampling_commands_say_when_continuations_were_cut(run_dir: Path, tmp_path: Path, capsys) -> None:
    import shutil

    plot = ["plot", str(run_dir), "--sequence", "1", "--horizon", "3", "--samples", "8", "--max-events", "1"]
    assert main([*plot, "--out", str(tmp_path / "f.png")]) == 0
    said = " of 8 sampled continuations cut at --max-events 1 before the horizon: their event counts are lower bounds"
    assert said in capsys.readouterr().out
    assert main(["generate", str(run_dir), "--horizon", "2", "--samples", "3", "--sequences", "0,2",
                 "--max-events", "1", "--out", str(tmp_path / "g.csv")]) == 0
    out = capsys.readouterr().out
    assert " of 6 sampled continuations cut at --max-events 1 before the horizon: their event counts" in out
    assert pd.read_csv(tmp_path / "g.csv").groupby(["sequence", "sample"]).size().max() == 1
    # evaluate --horizon: sampled and rollout cuts apart, each against its total; the table marks what they touch
    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"]["horizon_truncated_rows"] = 450  # an older evaluation's summed count: replaced, not kept
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["evaluate", str(run), "--horizon", "2", "--samples", "4", "--points", "20", "--max-events", "1"]) == 0
    printed = capsys.readouterr().out
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert "horizon_truncated_rows" not in test and test["horizon_max_events"] == 1
    samples, rollouts = test["horizon_truncated_samples"], test["horizon_truncated_rollouts"]
    assert test["horizon_points"] == 20 and 0 < samples <= 20 * 4 and 0 < rollouts <= 20
    assert test["horizon_count_mean_pred"] == pytest.approx(samples / 80)  # a cap of 1: a cut row counts 1
    assert (f"* model: {samples} of 80 sampled continuations cut at --max-events 1 before the horizon: their event "
            "counts are lower bounds (count PCE, count cov.)") in printed
    row = next(line for line in printed.splitlines() if line.startswith("| model |")).strip("| ").split(" | ")
    assert row[6].endswith("*") and row[7].endswith("*") and not row[5].endswith("*")
    for bad, said in ((["--horizon", "2", "--max-events", "0"], "--max-events: must be >= 1, got 0"),
                      (["--max-events", "5"], "--max-events only apply with --horizon")):
        assert _exit_code(["evaluate", str(run), *bad]) == 2
        assert said in capsys.readouterr().err


def test_every_encoder_decoder_parametrisation_predicts_and_generates() -> None:
    """All 4 x 5 x 3 models: a finite prediction table and sorted continuations (both samplers where they apply)."""
    from mtpp.forecast.generate import generate

    seqs = _sequences(offset=0.0)[:2]
    for enc in ("gru", "thp", "sahp", "fnn"):
        for dec in ("lnm", "rmtpp", "fnn", "thp", "sahp"):
            for par in ("base", "plus", "plusplus"):
                torch.manual_seed(0)
                m = build_model(tiny_config(encoder=enc, decoder=dec, parametrisation=par), K).eval()
                df = predict_frame(m, seqs, top_k=2)
                cols = ["median_gap", "lower_gap_90", "upper_gap_90", "prob_1", "log_density_gap", "log_prob_mark"]
                assert np.isfinite(df[cols].to_numpy()).all(), (enc, dec, par)
                for sampler in ("icdf", "thinning") if dec in ("thp", "sahp") else ("icdf",):
                    g = generate(m, seqs, events=3, samples=2, sampler=sampler)
                    assert g.counts.tolist() == [3] * 4, (enc, dec, par, sampler)
                    for r in range(g.rows):
                        assert np.all(np.diff(g.events_of(r)[0]) >= 0)


def test_forecast_commands_say_which_data_they_use(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for args in (["predict", str(run_dir), "--out", str(tmp_path / "p.csv")],
                 ["generate", str(run_dir), "--events", "2", "--sequences", "0", "--out", str(tmp_path / "g.csv")]):
        capsys.readouterr()
        assert main(args) == 0
        err = capsys.readouterr().err
        assert f"{run_dir}: data " in err and "train/val/test" in err and "marks" in err, args


def test_a_one_event_sequence_is_forecast_after_its_event(run_dir: Path) -> None:
    """``mtpp plot`` refused a one-event sequence ("nothing to split") although the forecast after its only
    event is well defined (``predict --include-next`` gives it): the history is the event, the future sampled."""
    import matplotlib.pyplot as plt

    from mtpp.data.sequence import EventSequence
    from mtpp.forecast.plot import plot_forecast
    from mtpp.forecast.runs import load_run

    run = load_run(run_dir)
    seq = run.split("test")[1]
    one = EventSequence(seq.times[:1], seq.marks[:1])
    fig = plot_forecast(run.model, one, horizon=2.0, samples=4)
    try:
        ax2 = fig.axes[2]
        assert any(line.get_label().startswith("median of 4 samples") for line in ax2.get_lines())
        assert "the data end at" in fig._suptitle.get_text()  # nothing observed after the one event
    finally:
        plt.close(fig)


def test_the_intensity_panel_starts_at_the_first_event_and_says_what_it_sees_after_the_cut(run_dir: Path) -> None:
    """The curve before the first event (never scored under first_event: skip) showed meaningless values, and after
    the cut it jumped at future events under the label 'given the observed history'."""
    import matplotlib.pyplot as plt

    from mtpp.forecast.plot import intensity_path, plot_forecast
    from mtpp.forecast.runs import load_run

    run = load_run(run_dir)
    assert run.model.cfg.first_event == "skip"
    seq = run.split("test")[1]
    t, lam = intensity_path(run.model, seq, float(seq.times[-1]))
    assert t.min() > seq.times[0] and np.isfinite(lam).all()
    fig = plot_forecast(run.model, seq, horizon=1.0, cut=3, samples=2)
    try:
        lines = {ln.get_label(): ln for ln in fig.axes[1].get_lines()}
        before = lines["model intensity given the observed history"].get_xdata()
        after = next(ln for label, ln in lines.items() if label.startswith("after the cut: given the observed future"))
        assert before.max() <= seq.times[2] < after.get_xdata().min() and after.get_linestyle() == "--"
    finally:
        plt.close(fig)


def test_generate_writes_every_sample_with_its_count_zeros_included(run_dir: Path, tmp_path: Path, capsys) -> None:
    """A sample with no event in the horizon left no row at all: counts from the event table were biased upward.
    The per-sample table beside it has one row per (sequence, sample), its count equal to the event table's, and
    an existing per-sample file is never replaced."""
    out = tmp_path / "gen.csv"
    argv = ["generate", str(run_dir), "--horizon", "0.05", "--samples", "20", "--sequences", "1,2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    events, samples = pd.read_csv(out), pd.read_csv(tmp_path / "gen.samples.csv")
    assert len(samples) == 40 and set(samples["sequence"]) == {1, 2}
    assert list(samples.columns) == ["sequence", "sample", "origin", "events", "truncated", "window_end"]
    by_event = events.groupby(["sequence", "sample"]).size()
    for _, r in samples.iterrows():
        assert by_event.get((r["sequence"], r["sample"]), 0) == r["events"]
    empty = int((samples["events"] == 0).sum())
    assert empty > 0, "the horizon is short enough for some samples to have no event"
    assert f"{empty} of 40 samples have no event" in printed
    np.testing.assert_allclose(samples["window_end"] - samples["origin"], 0.05)
    (tmp_path / "other.samples.csv").write_text("mine\n")
    assert main([*argv[:-1], str(tmp_path / "other.csv")]) == 2
    assert (tmp_path / "other.samples.csv").read_text() == "mine\n" and not (tmp_path / "other.csv").exists()


def test_far_from_zero_times_are_ticked_from_the_first_event() -> None:
    """Unix-second times drew ticks as '1.4309 ... 1e9' under 'time (data units)'."""
    from mtpp.forecast.plot import time_axis_offset

    assert time_axis_offset(1.4e9, 1.4e9 + 3600.0) == 1.4e9
    assert time_axis_offset(0.0, 10.0) == 0.0 and time_axis_offset(5.0, 50.0) == 0.0


def test_evaluating_an_unfinished_run_never_marks_it_complete(run_dir: Path, tmp_path: Path, capsys) -> None:
    """An interrupted run (checkpoints, no final metrics.json) scored by ``mtpp evaluate`` got a metrics.json with
    only ``test``: what marks a run complete, so ``mtpp compare`` would record the half-trained cell. Its metrics
    now go to metrics.interim.json, with a warning naming the resume command; plain or with --horizon. A horizon
    the data cannot score fails before any file is written or row printed."""
    import shutil

    from mtpp.experiments import is_complete

    run = tmp_path / "interrupted"
    shutil.copytree(run_dir, run)
    (run / "metrics.json").unlink()
    arrays = (run / "arrays_test.json").read_bytes()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--horizon", "2", "--samples", "4", "--points", "20"]) == 0
    # its arrays go beside its interim metrics, not over the arrays_test.json of a final evaluation
    assert (run / "arrays_test.json").read_bytes() == arrays and (run / "arrays_test.interim.json").is_file()
    cap = capsys.readouterr()
    assert "its training has not finished" in cap.err and f"mtpp train --out {run} --resume" in cap.err
    assert not (run / "metrics.json").exists() and not is_complete(run)
    interim = json.loads((run / "metrics.interim.json").read_text())
    assert "nll_time_per_seq" in interim["test"] and "horizon_tmap" in interim["test"]  # both kinds, one file
    # a finished run: metrics.json as before; an impossible horizon: exit 2, nothing written or printed as a row
    done = tmp_path / "done"
    shutil.copytree(run_dir, done)
    before = (done / "metrics.json").read_bytes()
    assert main(["evaluate", str(done), "--horizon", "1e9", "--samples", "2"]) == 2
    cap = capsys.readouterr()
    assert "no prediction point" in cap.err and f"| {done} |" not in cap.out
    assert (done / "metrics.json").read_bytes() == before and not (done / "metrics.interim.json").exists()


def test_forecasting_from_an_unfinished_run_says_so(run_dir: Path, tmp_path: Path, capsys) -> None:
    """``mtpp evaluate`` of an interrupted run warned that its training had not finished; ``predict``, ``generate``
    and ``plot`` of the same run (or of one still training) used its best.pt so far without a word."""
    import shutil

    run = tmp_path / "interrupted"
    shutil.copytree(run_dir, run)
    (run / "metrics.json").unlink()
    for args in (["predict", str(run), "--out", str(tmp_path / "p.csv")],
                 ["generate", str(run), "--events", "2", "--sequences", "0", "--out", str(tmp_path / "g.csv")],
                 ["plot", str(run), "--sequence", "0", "--horizon", "1", "--samples", "2",
                  "--out", str(tmp_path / "f.png")]):  # fmt: skip
        capsys.readouterr()
        assert main(args) == 0, args
        err = capsys.readouterr().err
        assert f"{run}: warning: its training has not finished" in err and "best.pt so far (epoch 1)" in err, args
        assert f"finish it with: mtpp train --out {run} --resume" in err
    capsys.readouterr()
    assert main(["predict", str(run_dir), "--out", str(tmp_path / "done.csv")]) == 0
    assert "has not finished" not in capsys.readouterr().err  # a finished run: no warning


@pytest.mark.parametrize("command", [["evaluate"], ["predict", "--out", "OUT/p.csv"],
                                     ["generate", "--events", "2", "--out", "OUT/g.csv"]])
def test_a_data_dir_that_does_not_exist_is_refused(run_dir: Path, tmp_path: Path, command: list[str], capsys) -> None:
    """``--data-dir /nonexistent`` was passed over silently (the run's recorded data were read instead)."""
    argv = [command[0], str(run_dir), *[a.replace("OUT", str(tmp_path)) for a in command[1:]],
            "--data-dir", str(tmp_path / "nowhere")]
    assert main(argv) == 2
    assert f"--data-dir {tmp_path / 'nowhere'}: no such file or folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_long_forecast_title_is_wrapped_to_the_figure(run_dir: Path) -> None:
    """A title with the data-end note ran past both edges of the figure ("equence 2: gru-lnm ... nothing obse")."""
    import matplotlib.pyplot as plt

    from mtpp.forecast.plot import TITLE_WIDTH, plot_forecast
    from mtpp.forecast.runs import load_run

    run = load_run(run_dir)
    seq = run.split("test")[1]
    title = "a_dataset_with_a_long_name test sequence 2: gru-lnm base, horizon 2.109 hours"
    fig = plot_forecast(run.model, seq, horizon=3.0 * float(seq.times[-1]), samples=2, title=title)
    try:
        text = fig._suptitle.get_text()
        assert "\n" in text and all(len(line) <= TITLE_WIDTH for line in text.splitlines())
        assert " ".join(text.split()).startswith(title + "; the data end at t = ")
        fig.canvas.draw()
        box = fig._suptitle.get_window_extent()
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width  # inside the figure
    finally:
        plt.close(fig)


def test_the_forecast_plot_legend_and_axes_say_what_they_show(run_dir: Path) -> None:
    """The history's legend entry took the first point's mark colour; the samples' entry did not say how many of
    them are drawn; the horizon was printed unrounded and without its unit; a log intensity axis spanning less
    than a decade had one or two ticks."""
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    from mtpp.forecast.plot import plot_forecast
    from mtpp.forecast.runs import load_run

    run = load_run(run_dir)
    seq = run.split("test")[1]
    fig = plot_forecast(run.model, seq, horizon=2.0 / 3.0, samples=7)
    try:
        legend = fig.axes[0].get_legend()
        texts = [t.get_text() for t in legend.get_texts()]
        assert texts[0] == "observed history (coloured by mark)" and "sampled continuations (3 of 7 shown)" in texts
        assert mcolors.to_hex(legend.legend_handles[0].get_color()) == mcolors.to_hex("0.35")
        assert "horizon 0.6667 data units" in fig._suptitle.get_text()
        lam = np.concatenate([line.get_ydata() for line in fig.axes[1].get_lines()[:2]]).astype(float)
        lam = lam[np.isfinite(lam) & (lam > 0)]
        assert fig.axes[1].get_yscale() == ("log" if lam.max() > 10 * lam.min() else "linear")
    finally:
        plt.close(fig)
    # counts are whole events: every band edge and the median are integers (linear interpolation drew 0.55 events)
    for poly in fig.axes[2].collections:
        y = poly.get_paths()[0].vertices[:, 1]
        assert np.allclose(y[np.isfinite(y)], np.round(y[np.isfinite(y)]))
    median = next(line for line in fig.axes[2].get_lines() if line.get_label().startswith("median of"))
    y = np.asarray(median.get_ydata(), dtype=float)
    assert np.allclose(y[np.isfinite(y)], np.round(y[np.isfinite(y)]))
    assert fig.axes[2].get_xlabel() == "time (data units)"  # synthetic data: no physical unit
    assert fig.axes[1].get_ylabel().endswith("(events per time unit)")
    fig = plot_forecast(run.model, seq, horizon=2.0 / 3.0, samples=2, time_unit="hour")  # a documented unit
    try:
        assert fig.axes[2].get_xlabel() == "time (hours)" and "horizon 0.6667 hours" in fig._suptitle.get_text()
        assert fig.axes[1].get_ylabel().endswith("(events per hour)")
    finally:
        plt.close(fig)


def test_the_users_sequence_ids_reach_predict_generate_and_plot(tmp_path: Path, capsys) -> None:
    """A table's seq_id (user_17, ...) was lost on reading: outputs named sequences by their index in a re-split
    the user never sees. The ids now travel through the auto-prepared split folder (split_k/args.json seq_ids)
    into predict's and generate's seq_id column and the plot's title."""
    import pandas as pd

    from mtpp.data.catalog import load_dataset

    rng = np.random.default_rng(0)
    rows = ["seq_id,time,mark"]
    for j in range(30):
        t = np.cumsum(rng.exponential(1.0, 6 + j % 5))
        rows += [f"user_{j},{x:.4f},{int(k)}" for x, k in zip(t, rng.integers(0, 3, t.size))]
    csv = tmp_path / "events.csv"
    csv.write_text("\n".join(rows) + "\n")
    by_id = pd.read_csv(csv).groupby("seq_id")["time"].apply(lambda s: s.to_numpy())
    ds = load_dataset(csv)  # no split column: re-split into a cached split folder, ids kept
    for s in ds.train + ds.val + ds.test:  # every sequence carries its own id
        assert s.name is not None and np.allclose(s.times, by_id[s.name], atol=1e-4), s.name
    run = tmp_path / "run"
    assert main(["train", "--set", f"data.name={csv}", "--set", "train.max_epochs=1", "--set", "model.hidden_size=4",
                 "--out", str(run), "-q"]) == 0
    assert main(["predict", str(run), "--out", str(tmp_path / "p.csv")]) == 0
    p = pd.read_csv(tmp_path / "p.csv")
    assert list(p.columns[:3]) == ["sequence", "seq_id", "index"]
    assert all(p["seq_id"] == [ds.test[i].name for i in p["sequence"]])
    assert main(["generate", str(run), "--horizon", "1", "--samples", "2", "--out", str(tmp_path / "g.csv")]) == 0
    for table in ("g.csv", "g.samples.csv"):
        g = pd.read_csv(tmp_path / table)
        assert list(g.columns[:2]) == ["sequence", "seq_id"] and all(g["seq_id"] == [ds.test[i].name
                                                                                     for i in g["sequence"]])
    capsys.readouterr()
    assert main(["plot", str(run), "--sequence", "1", "--samples", "2", "--out", str(tmp_path / "f.png")]) == 0
    assert f"sequence 1 (seq_id '{ds.test[1].name}')" in capsys.readouterr().out
    # a sequence named by its seq_id (any text, or id:X), in plot and generate
    name = ds.test[2].name
    for token in (name, f"id:{name}"):
        assert main(["plot", str(run), "--sequence", token, "--samples", "2", "--out", str(tmp_path / "f.png"),
                     "--overwrite"]) == 0
        assert f"sequence 2 (seq_id '{name}')" in capsys.readouterr().out
    assert main(["generate", str(run), "--events", "2", "--sequences", f"{name},0", "--out",
                 str(tmp_path / "n.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "n.csv")["seq_id"]) == {name, ds.test[0].name}
    assert main(["plot", str(run), "--sequence", "user_999", "--out", str(tmp_path / "x.png")]) == 2
    assert "--sequence 'user_999': no sequence of the test split has seq_id 'user_999' (its seq_ids: " in (
        capsys.readouterr().err)


def test_remapped_marks_are_given_back_in_the_datas_own_ids(tmp_path: Path) -> None:
    """Marks 10, 20, 30, 40 trained with data.remap_marks=true (the model's 0..3): predict's observed and top-k
    marks and generate's marks were the model's 0..3, which the user's data never had."""
    import pandas as pd

    from mtpp.data.catalog import load_dataset
    from mtpp.forecast.predict import source_marks

    frame = pd.DataFrame({"observed_mark": pd.array([0, 3, None], dtype="Int64"), "mark_1": [1, 2, 0], "x": [0, 1, 2]})
    source_marks(frame, [10, 20, 30, 40], ["observed_mark", "mark_1", "mark"])
    assert frame["observed_mark"].tolist()[:2] == [10, 40] and frame["observed_mark"].isna().tolist() == [0, 0, 1]
    assert frame["mark_1"].tolist() == [20, 30, 10] and frame["x"].tolist() == [0, 1, 2]
    rng = np.random.default_rng(1)
    rows = ["seq_id,time,mark"]
    for j in range(30):
        t = np.cumsum(rng.exponential(1.0, 8))
        rows += [f"s{j},{x:.4f},{10 * int(k)}" for x, k in zip(t, rng.integers(1, 5, t.size))]
    csv = tmp_path / "sparse.csv"
    csv.write_text("\n".join(rows) + "\n")
    assert load_dataset(csv, remap_marks=True).mark_ids == [10, 20, 30, 40]  # auto-prepared: its args.json
    assert load_dataset(csv).mark_ids is None  # not remapped: the ids are the data's own
    split = ["seq_id,time,mark,split"] + [f"{r},{('train', 'val', 'test')[int(r[1:].split(',')[0]) % 3]}"
                                          for r in rows[1:]]
    (tmp_path / "split.csv").write_text("\n".join(split) + "\n")  # its own split: read directly, remapped
    assert load_dataset(tmp_path / "split.csv", remap_marks=True).mark_ids == [10, 20, 30, 40]
    # a folder prepared without the remap, read with it: the read's own map (it said "remapped (10, ...) to 0..3")
    assert main(["data", "prepare", str(csv), "--out", str(tmp_path / "prep"), "--splits", "1"]) == 0
    assert load_dataset(tmp_path / "prep", remap_marks=True).mark_ids == [10, 20, 30, 40]
    # prepared with the remap and read with it again: the folder's map, through the read's (identity here)
    assert main(["data", "prepare", str(csv), "--out", str(tmp_path / "prep2"), "--splits", "1",
                 "--remap-marks"]) == 0
    assert load_dataset(tmp_path / "prep2", remap_marks=True).mark_ids == [10, 20, 30, 40]
    assert load_dataset(tmp_path / "prep2").mark_ids == [10, 20, 30, 40]
    run = tmp_path / "run"
    assert main(["train", "--set", f"data.name={csv}", "--set", "data.remap_marks=true", "--set",
                 "train.max_epochs=1", "--set", "model.hidden_size=4", "--out", str(run), "-q"]) == 0
    assert main(["predict", str(run), "--out", str(tmp_path / "p.csv"), "--include-next"]) == 0
    p = pd.read_csv(tmp_path / "p.csv")
    assert set(p["observed_mark"].dropna().astype(int)) <= {10, 20, 30, 40} and p["observed_mark"].isna().any()
    assert set(p["mark_1"]) <= {10, 20, 30, 40}
    assert main(["generate", str(run), "--horizon", "2", "--samples", "2", "--out", str(tmp_path / "g.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "g.csv")["mark"]) <= {10, 20, 30, 40}
    from mtpp.forecast.generate import generate

    assert set(generate(run, horizon=2.0, samples=2).to_frame()["mark"]) <= {10, 20, 30, 40}  # Python too
    import matplotlib.pyplot as plt

    from mtpp.forecast.plot import plot_forecast
    from mtpp.forecast.runs import load_run

    loaded = load_run(run)
    fig = plot_forecast(loaded.model, loaded.split("test")[0], horizon=1.0, samples=2, mark_ids=loaded.data.mark_ids)
    try:  # the mark axis in the data's ids too
        assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["10", "20", "30", "40"]
    finally:
        plt.close(fig)


def test_evaluate_all_splits_says_the_runs_data_once(run_dir: Path, capsys) -> None:
    """``evaluate --split all`` printed the run's data line once per split; it is said once, each split's row and
    written files as before."""
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--split", "all"]) == 0
    out, err = capsys.readouterr()
    assert err.count(f"{run_dir}: data ") == 1
    assert err.count(f"{run_dir}: wrote metrics.json") == 2
    assert [line.split(" | ")[1] for line in out.splitlines() if line.startswith(f"| {run_dir} |")] == ["val", "test"]


def test_forecasting_commands_take_new_sequences_from_a_file(tmp_path: Path, capsys) -> None:
    """``predict`` / ``generate`` / ``plot`` forecast only a split of the run's own data; ``--input FILE`` takes a
    user's new sequences (here: a table in the data's own mark ids 10..40 of a run trained with remapped marks),
    maps them to the model's ids and gives them back in the data's, with their seq_ids. A mark the training data
    never had, ``--input`` with ``--split``, and ``--sort`` without ``--input`` are one line each."""
    import pandas as pd

    rng = np.random.default_rng(2)

    def table(path: Path, n: int, prefix: str, marks=(1, 2, 3, 4)) -> Path:
        rows = ["seq_id,time,mark"]
        for j in range(n):
            t = np.cumsum(rng.exponential(1.0, 7))
            rows += [f"{prefix}{j},{x:.4f},{10 * int(k)}" for x, k in zip(t, rng.choice(marks, t.size))]
        path.write_text("\n".join(rows) + "\n")
        return path

    csv = table(tmp_path / "train.csv", 30, "s")
    run = tmp_path / "run"
    assert main(["train", "--set", f"data.name={csv}", "--set", "data.remap_marks=true", "--set",
                 "train.max_epochs=1", "--set", "model.hidden_size=4", "--out", str(run), "-q"]) == 0
    new = table(tmp_path / "new.csv", 3, "new_")
    assert main(["predict", str(run), "--input", str(new), "--out", str(tmp_path / "p.csv")]) == 0
    p = pd.read_csv(tmp_path / "p.csv")
    given = pd.read_csv(new)
    assert sorted(set(p["seq_id"])) == ["new_0", "new_1", "new_2"] and len(p) == 3 * 6  # first events not scored
    for sid, rows in p.groupby("seq_id"):
        assert rows["observed_mark"].astype(int).tolist() == given[given.seq_id == sid]["mark"].tolist()[1:]
    assert set(p["mark_1"]) <= {10, 20, 30, 40}
    assert main(["generate", str(run), "--input", str(new), "--sequences", "new_1", "--events", "3", "--out",
                 str(tmp_path / "g.csv")]) == 0
    g = pd.read_csv(tmp_path / "g.csv")
    assert set(g["seq_id"]) == {"new_1"} and len(g) == 3 and set(g["mark"]) <= {10, 20, 30, 40}
    capsys.readouterr()
    assert main(["plot", str(run), "--input", str(new), "--sequence", "new_2", "--samples", "2", "--out",
                 str(tmp_path / "f.png")]) == 0
    out, err = capsys.readouterr()
    assert "f.png: sequence 2 (seq_id 'new_2') (7 events)" in out and "mark ids occur" not in err
    odd = table(tmp_path / "odd.csv", 2, "odd_", marks=(1, 5))  # mark 50: not one of the run's
    assert main(["predict", str(run), "--input", str(odd), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert "odd.csv: sequence 0: mark 50 at event" in err and "(seq_id 'odd_0') is not one of the 4 mark ids" in err
    assert main(["predict", str(run), "--input", str(new), "--split", "val", "--out", str(tmp_path / "x.csv")]) == 2
    assert "give one" in capsys.readouterr().err
    assert main(["predict", str(run), "--sort", "--out", str(tmp_path / "x.csv")]) == 2
    assert "--sort only applies with --input" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "x.csv").exists()


def test_evaluate_scores_a_files_sequences_without_touching_the_run(run_dir: Path, tmp_path: Path, capsys) -> None:
    """``mtpp evaluate RUN --input FILE``: the run's model on a user's new sequences, its metrics row printed and,
    with ``--per-sequence OUT``, each sequence's log-likelihood written (``mtpp.log_likelihood``); the run folder
    is left as it was. Flags that do not apply are one line each."""
    import pandas as pd

    from mtpp.evaluation.likelihood import log_likelihood
    from mtpp.forecast.runs import load_run

    rng = np.random.default_rng(3)
    rows = ["seq_id,time,mark"]
    for j in range(4):
        t = np.cumsum(rng.exponential(0.5, 6 + j))
        rows += [f"u{j},{x:.5f},{int(k)}" for x, k in zip(t, rng.integers(0, 5, t.size))]
    new = tmp_path / "new.csv"
    new.write_text("\n".join(rows) + "\n")
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--input", str(new), "--per-sequence", str(tmp_path / "ll.csv")]) == 0
    out, err = capsys.readouterr()
    assert f"| {run_dir} | new.csv |" in out and "nothing written into the run folder" in err
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
    ll = pd.read_csv(tmp_path / "ll.csv")
    run = load_run(run_dir)
    want = log_likelihood(run.model, run.read_sequences(new))
    assert ll["seq_id"].tolist() == ["u0", "u1", "u2", "u3"]
    assert ll["log_lik"].tolist() == pytest.approx(want["log_lik"].tolist(), rel=1e-6)
    row = next(line for line in out.splitlines() if line.startswith(f"| {run_dir} | new.csv |"))
    assert float(row.split(" | ")[2]) == pytest.approx(-want["log_lik_time"].mean(), rel=1e-3)  # L_T/seq
    for bad, said in ((["--split", "val"], "--split do not apply"), (["--horizon", "1"], "--horizon do not apply")):
        assert main(["evaluate", str(run_dir), "--input", str(new), *bad]) == 2
        assert said in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--per-sequence", str(tmp_path / "x.csv")]) == 2
    assert "--per-sequence applies with --input" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--input", str(new), "--per-sequence", str(tmp_path / "ll.csv")]) == 2
    assert not (tmp_path / "x.csv").exists()


def test_the_intensity_curve_covers_the_shown_window_and_the_start_of_each_gap() -> None:
    """The grid was spread evenly over each whole interval: the one holding the window's end (up to a next event
    far beyond it) kept 0 of its 64 points inside the window, so the curve after the cut started late or not at
    all, and the first point after every event was 1/64 of its gap away (a bursty model's spike there unseen)."""
    from mtpp.forecast.plot import GEOMETRIC_QUANTILE, GRID, intensity_path
    from mtpp.forecast.process import model_next_events

    torch.manual_seed(0)
    m = build_model(tiny_config(encoder="gru", decoder="lnm", parametrisation="base"), K).eval()
    seq = EventSequence(np.array([0.5, 1.0, 1.001, 100.0]), np.array([0, 1, 2, 3]))
    until = 1.5
    t, lam = intensity_path(m, seq, until)
    assert np.isfinite(lam).all() and (lam >= 0).all() and t.max() <= until
    shown = t > 1.001  # the interval after the cut, 1.001 .. 100, clipped to the window end 1.5
    assert shown.sum() >= GRID // 2 and math.isclose(t[shown].max(), until)
    with torch.no_grad():
        dist, _, _ = model_next_events(m, collate([seq]))
        q = dist.icdf(torch.full((1, 5, 1), GEOMETRIC_QUANTILE))[0, :, 0].double().numpy() * m.time_scale
    for i, (start, stop) in enumerate([(0.5, 1.0), (1.0, 1.001), (1.001, until)], start=1):
        inside = t[(t > start) & (t <= stop)]
        # the model's short gaps are drawn: a point at its 1 % gap quantile (where inside the interval)
        assert inside.min() - start <= min(q[i], stop - start) * (1 + 1e-6)
    # the values are the model's hazard at those times (a hazard, not the likelihood's tie rule)
    with torch.no_grad():
        tau = torch.tensor((t[shown] - 1.001) / m.time_scale, dtype=torch.float32).view(1, 1, -1).expand(1, 5, -1)
        hazard = dist.log_intensity(tau)[0, 3].exp().double().numpy() / m.time_scale
    np.testing.assert_allclose(lam[shown], hazard, rtol=1e-3)


def _input_refusal(run_dir: Path, tmp_path: Path, command: list[str], capsys, name: str,
                   rows: str) -> tuple[Path, list[str], str]:  # fmt: skip
    """Write the table ``rows`` (after its header) to ``name``, run ``command`` on it with ``--input`` (its outputs
    in ``tmp_path``), expect the refusal (exit 2); the file, the argv and the refusal's last line."""
    new = tmp_path / name
    new.write_text(f"seq_id,time,mark\n{rows}\n")
    verb, *rest = command
    argv = [verb, str(run_dir), "--input", str(new), *[str(tmp_path / a) if a.endswith(("csv", "png")) else a
                                                      for a in rest]]
    capsys.readouterr()
    assert main(argv) == 2
    return new, argv, capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("command", [["predict", "--out", "o.csv"], ["generate", "--events", "2", "--out", "g.csv"],
                                     ["plot", "--sequence", "u_1", "--out", "f.png"], ["evaluate"]])
def test_a_files_mark_the_run_does_not_have_names_the_file_the_sequence_and_its_seq_id(
    run_dir: Path, tmp_path: Path, command: list[str], capsys
) -> None:
    """``--input FILE`` on a run of the data's own ids (not remapped, K = 5): a mark past K - 1 is one line naming
    the file, the sequence, its ``seq_id`` and the run, whatever the command, with the fix for a run (the run's
    data's ids), not a model builder's."""
    new, argv, err = _input_refusal(run_dir, tmp_path, command, capsys, "bad.csv",
                                    "u_0,0.5,1\nu_0,1.0,2\nu_1,0.2,0\nu_1,0.9,7\nu_1,1.4,3")
    assert f"{new}: sequence 1: mark 7 at event 1 is out of range for the 5 marks of the run {run_dir}" in err
    assert "(seq_id 'u_1')" in err and "build_model" not in err and "Traceback" not in err
    assert not list(tmp_path.glob("[ogf].*"))


def test_check_sequences_names_a_named_sequences_seq_id() -> None:
    """``log_likelihood`` / ``predict`` on a user's sequences: the error names the sequence's own id too."""
    from mtpp.errors import DataError

    seqs = [EventSequence(np.array([0.1, 0.2]), np.array([0, 1]), name="a"),
            EventSequence(np.array([0.1, 0.2]), np.array([0, 9]), name="user_7")]
    model = build_model(tiny_config(), K)
    with pytest.raises(DataError, match=r"sequence 1: mark 9 at event 1 .*\(seq_id 'user_7'\)$"):
        mtpp.log_likelihood(model, seqs)


@pytest.mark.parametrize("command", [["predict", "--out", "o.csv"], ["generate", "--events", "2", "--out", "g.csv"],
                                     ["plot", "--sequence", "u_1", "--out", "f.png"], ["evaluate"]])
def test_every_input_command_sorts_with_sort_says_so_and_names_sort_when_refusing(
    run_dir: Path, tmp_path: Path, command: list[str], capsys
) -> None:
    """``--input FILE`` with an unsorted sequence: refused in one line that names the command's ``--sort`` (not a
    run config's ``data.sort``); with ``--sort`` (``evaluate`` has it too) sorted, and the count said."""
    new, argv, err = _input_refusal(run_dir, tmp_path, command, capsys, "unsorted.csv",
                                    "u_0,0.5,1\nu_0,1.0,2\nu_1,0.9,0\nu_1,0.2,4\nu_1,1.4,3")
    assert f"{new}: sequence 1: times not sorted" in err and "--sort with --input" in err and "data.sort" not in err
    assert main([*argv, "--sort"]) == 0
    assert f"{new}: sorted the times of 1 unsorted sequence(s)" in capsys.readouterr().err


def test_evaluate_sort_applies_only_with_input(run_dir: Path, capsys) -> None:
    assert main(["evaluate", str(run_dir), "--sort"]) == 2
    assert "--sort only applies with --input" in capsys.readouterr().err


def test_the_events_legend_covers_no_event_and_the_cut_line_is_named() -> None:
    """With 60 marks the legend sat inside the events panel over its top rows (a fixed headroom of 0.6 mark) and hid
    the events of the highest marks; the intensity's legend ("best") lay over the curve that spans its panel; the
    dashed cut line was in no legend."""
    import matplotlib.pyplot as plt

    from mtpp.forecast.plot import plot_forecast

    torch.manual_seed(0)
    k = 60
    model = build_model(tiny_config(decoder="lnm"), k).eval()
    rng = np.random.default_rng(0)
    marks = np.r_[np.full(12, k - 1), rng.integers(0, k, 28)]  # the highest marks first, where the legend was
    seq = EventSequence(np.cumsum(rng.exponential(1.0, 40)), marks)
    fig = plot_forecast(model, seq, horizon=5.0, samples=4)
    try:
        fig.canvas.draw()
        ax0, ax1, ax2 = fig.axes
        legend = ax0.get_legend().get_window_extent()
        points = np.concatenate([c.get_offset_transform().transform(c.get_offsets()) for c in ax0.collections])
        assert len(points) >= 30 and legend.count_contains(points) == 0
        # nor does the intensity's legend cover its curve, which runs across the whole panel
        curve = np.concatenate([line.get_transform().transform(line.get_xydata()) for line in ax1.get_lines()
                                if line.get_label() in [t.get_text() for t in ax1.get_legend().get_texts()]])
        assert ax1.get_legend().get_window_extent().count_contains(curve) == 0
        low, high = ax0.get_ylim()
        assert low < 0 and high > k - 1  # every row of marks inside the panel
        texts = [t.get_text() for t in ax2.get_legend().get_texts()]
        assert any(t.startswith("cut: last of the") for t in texts)
        cut_line = next(line for line in ax2.get_lines() if line.get_label().startswith("cut:"))
        cut = int(cut_line.get_label().split()[4])  # "cut: last of the N history events"
        assert cut_line.get_xdata()[0] == pytest.approx(seq.times[cut - 1])
    finally:
        plt.close(fig)


def test_the_plot_title_names_the_parametrisation_as_the_tables_do(run_dir: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """The title said "gru-thp plusplus" where every table and report figure says "THP++" (base / + / ++)."""
    import mtpp.forecast.plot as forecast_plot
    import mtpp.forecast.runs as runs

    titles: list[str] = []
    original_load, original_plot = runs.load_run, forecast_plot.plot_forecast

    def load(*a, **k):
        run = original_load(*a, **k)
        run.cfg.model.parametrisation = "plusplus"  # the label only: the weights stay those of the run
        return run

    def plot(*a, **k):
        titles.append(k["title"])
        return original_plot(*a, **k)

    monkeypatch.setattr(runs, "load_run", load)
    monkeypatch.setattr(forecast_plot, "plot_forecast", plot)
    assert main(["plot", str(run_dir), "--sequence", "1", "--horizon", "3", "--samples", "2",
                 "--out", str(tmp_path / "f.png")]) == 0
    assert ": gru-thp ++, horizon 3 data units" in titles[0]


def test_the_legends_above_the_panels_leave_no_margin_beside_them(run_dir: Path) -> None:
    """The intensity's two-column legend, anchored at the panel's left, stuck out on the right at tight_layout's first
    pass, which then kept 0.6 inch empty right of all three panels."""
    import matplotlib.pyplot as plt

    from mtpp.forecast.plot import plot_forecast
    from mtpp.forecast.runs import load_run

    run = load_run(run_dir)
    fig = plot_forecast(run.model, run.split("test")[1], horizon=2.0, samples=2)
    try:
        fig.canvas.draw()
        for ax in fig.axes[:2]:
            legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
            assert legend.x0 >= frame.x0 - 1 and legend.x1 <= frame.x1 + 1 and legend.y0 >= frame.y1 - 1
        assert all(1 - ax.get_position().x1 < 0.03 for ax in fig.axes)  # the panels reach the figure's right side
    finally:
        plt.close(fig)


@pytest.mark.parametrize("command, fix", [(["predict", "--out", "o.csv"], "--include-next forecasts the event after"),
                                          (["evaluate"], "score longer sequences")])
def test_a_file_of_one_event_sequences_has_nothing_to_score_and_says_so_naming_the_file(
    run_dir: Path, tmp_path: Path, command: list[str], fix: str, capsys
) -> None:
    """Every sequence one event long and first_event: skip: evaluate --input blamed 'evaluate(model, data=...)'
    (not the file), predict wrote an empty table and printed 'forecast accuracy nan'. Both now refuse in one line
    naming the file and what works; predict --include-next still forecasts each sequence's next event."""
    new, argv, err = _input_refusal(run_dir, tmp_path, command, capsys, "singles.csv", "u_0,0.5,1\nu_1,0.2,0\nu_2,0.9,3")
    assert err.startswith(f"mtpp {command[0]}: error: {new}: 3 sequence(s) of one event each and no scored event")
    assert fix in err and "evaluate(model" not in err
    assert not (tmp_path / "o.csv").exists()
    if command[0] == "predict":
        assert main([*argv, "--include-next"]) == 0
        assert len(pd.read_csv(tmp_path / "o.csv")) == 3


def test_input_with_few_of_its_mark_ids_gets_no_advice_to_remap_them(run_dir: Path, tmp_path: Path, caplog) -> None:
    """A file whose marks are 0 and 4 of the run's 5: the reader's advice to remap sparse ids is for training data
    (a trained run's marks are fixed, the file's are checked against them), so forecasting commands do not give it;
    the reader's other notes (here: seq_ids written with blanks) still reach the user."""
    import logging

    from mtpp.data import formats
    from mtpp.forecast.runs import load_run

    new = tmp_path / "sparse.csv"
    new.write_text("seq_id,time,mark\na,0.5,0\na,1.0,4\na,1.5,0\n a ,2.0,4\n")
    formats._WARNED.clear()
    with caplog.at_level(logging.WARNING):
        seqs = load_run(run_dir).read_sequences(new)
    assert [s.marks.tolist() for s in seqs] == [[0, 4, 0, 4]]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "remap" not in said and "mark ids occur" not in said
    assert "blank" in said  # another note of the same read is still said
    with caplog.at_level(logging.WARNING):
        formats._WARNED.clear()
        formats.read_any(new)  # reading it as data to train on still advises it
    assert "only 2 of 5 mark ids occur" in " ".join(r.getMessage() for r in caplog.records)
