"""``mtpp bench``: the rows' contract, JSON output and the CLI table. No speed thresholds here (timings are noise on
a shared machine); the figures themselves are checked to be positive and finite only."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from mtpp.bench import (
    ROW_KEYS,
    BenchConfig,
    format_table,
    parse_model_spec,
    run_bench,
    synthetic_long_sequences,
    truncate,
)
from mtpp.cli import main
from mtpp.data.sequence import EventSequence
from mtpp.errors import ConfigError

TINY = ["model.hidden_size=8", "model.decoder_hidden_size=8", "model.num_components=4",
        "model.mark_embedding_size=4", "model.time_embedding_size=4", "model.integration_nodes=8"]
MODELS = ["gru-lnm-base", "thp-thp-plusplus"]


def _tiny_cfg(**kw) -> BenchConfig:
    # one thread: on a shared, oversubscribed machine two OpenMP threads can be 100x slower (tests stay fast)
    base = dict(steps=2, warmup=1, batch_size=4, max_length=12, overrides=list(TINY), num_threads=1)
    return BenchConfig(**{**base, **kw})


def _check_row(row: dict, model: str) -> None:
    assert set(ROW_KEYS) <= set(row)
    assert row["model"] == model
    assert (row["encoder"], row["decoder"], row["parametrisation"]) == parse_model_spec(model)
    assert isinstance(row["num_parameters"], int) and row["num_parameters"] > 0
    for key in ("train_events_per_second", "train_events_per_second_diagnostics", "eval_events_per_second",
                "peak_memory_mb", "events_per_batch"):
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, key
    assert isinstance(row["diagnostics_overhead"], float) and math.isfinite(row["diagnostics_overhead"])
    for key in ("train_events_per_second", "train_events_per_second_diagnostics"):  # median of the rounds
        assert len(row[f"{key}_rounds"]) == row["rounds"]
        assert row[key] == statistics.median(row[f"{key}_rounds"])
    assert 0.0 <= row["padding_fraction"] < 1.0
    assert row["max_batch_length"] <= 12
    assert row["device"] == "cpu" and row["peak_memory_kind"] == "process_peak_rss"
    assert row["batch_size"] == 4 and row["steps"] == 2
    assert row["dataset"].startswith("synthetic_hawkes")
    assert row["num_threads"] == 1
    assert isinstance(row["torch_version"], str)


def test_run_bench_rows_in_process() -> None:
    seen: list[list[str]] = []  # on_row: the rows so far after every model (a stopped bench keeps them)
    rows = run_bench(MODELS, _tiny_cfg(synthetic_length=12, max_length=None, warmup=0, rounds=3), isolate=False,
                     on_row=lambda so_far: seen.append([r["model"] for r in so_far]))  # fmt: skip
    assert [r["model"] for r in rows] == MODELS
    assert seen == [MODELS[: i + 1] for i in range(len(MODELS))]
    for row, model in zip(rows, MODELS):
        _check_row(row, model)
        assert row["isolated"] is False
    json.dumps(rows)  # plain JSON types only
    table = format_table(rows).splitlines()
    assert "train ev/s (diag)" in table[1] and "padding %" in table[1]
    assert len({len(line) for line in table[1:]}) == 1  # aligned columns


def test_diagnostics_off_leaves_diag_columns_null() -> None:
    cfg = _tiny_cfg(diagnostics="off", synthetic_length=12, max_length=None, warmup=0)
    (row,) = run_bench(["gru-rmtpp-base"], cfg, isolate=False)
    assert row["train_events_per_second"] > 0
    assert row["train_events_per_second_diagnostics"] is None and row["diagnostics_overhead"] is None
    assert row["train_events_per_second_diagnostics_rounds"] is None
    assert " - " in format_table([row]).splitlines()[-1] + " "


def test_cli_table_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    code = main(["bench", "--models", *MODELS, "--steps", "2", "--warmup", "1", "--batch-size", "4",
                 "--max-length", "12", "--threads", "1", "--no-isolate", "--quiet", "--out", str(out),
                 *(a for s in TINY for a in ("--set", s))])
    assert code == 0
    text = capsys.readouterr().out
    for model in MODELS:
        assert model in text
    assert "peak MB" in text and "diag overhead %" in text
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == MODELS
    for row, model in zip(rows, MODELS):
        _check_row(row, model)
    # an existing --out is never replaced without --overwrite (checked before anything is measured)
    notes = tmp_path / "notes.json"
    notes.write_text("my notes")
    assert main(["bench", "--models", MODELS[0], "--steps", "1", "--out", str(notes)]) == 2
    assert "exists; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert notes.read_text() == "my notes"


def test_isolated_worker_and_synthetic_length() -> None:
    cfg = _tiny_cfg(synthetic_length=40, max_length=None, steps=1, warmup=0, diagnostics="on")
    (row,) = run_bench(["gru-lnm-base"], cfg, isolate=True)
    assert row["isolated"] is True
    assert row["max_batch_length"] == 40 and row["padding_fraction"] == pytest.approx(0.0)
    assert row["peak_memory_mb"] >= row["baseline_memory_mb"] > 0
    assert row["train_events_per_second"] is None and row["train_events_per_second_diagnostics"] > 0


def test_bad_inputs_are_config_errors(capsys) -> None:
    with pytest.raises(ConfigError, match="unknown decoder"):
        parse_model_spec("gru-xyz-base")
    with pytest.raises(ConfigError, match="encoder-decoder-parametrisation"):
        parse_model_spec("gru-lnm")
    assert parse_model_spec("GRU-LNM-++") == ("gru", "lnm", "plusplus")
    with pytest.raises(ConfigError, match="--steps"):
        run_bench(["gru-lnm-base"], BenchConfig(steps=0), isolate=False)
    with pytest.raises(ConfigError, match="--rounds"):
        run_bench(["gru-lnm-base"], BenchConfig(rounds=0), isolate=False)
    assert main(["bench", "--models", "gru-lnm-nope", "--no-isolate"]) == 2
    assert "unknown parametrisation" in capsys.readouterr().err


def test_data_helpers() -> None:
    seqs = synthetic_long_sequences(50, 3, seed=1)
    assert [len(s) for s in seqs] == [50, 50, 50]
    assert all(s.window_end is None and np.all(np.diff(s.times) >= 0) for s in seqs)
    cut = truncate([seqs[0], EventSequence(np.array([1.0]), np.array([0]), 2.0)], 10)
    assert len(cut[0]) == 10 and cut[0].window_end is None
    assert len(cut[1]) == 1 and cut[1].window_end == 2.0  # short sequences are untouched


def test_profile_step_script_reports_both_steps_and_the_operator_table(capsys) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "profile_step.py"
    spec = importlib.util.spec_from_file_location("profile_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["gru-lnm-base", "--steps", "3", "--rows", "5", "--set", "model.hidden_size=8"]) == 0
    out = capsys.readouterr().out
    assert "ms/step without diagnostics" in out and "ms/step with diagnostics" in out
    assert "Self CPU time total" in out


def test_bench_predict_script_appends_rows_per_model(tmp_path, capsys) -> None:
    """``scripts/bench_predict.py``: one row per model (rows = scored events of the sequences, rows/s = rows over
    the median time), appended to --out so two code versions can share one file; bench_md renders it."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "scripts"
    spec = importlib.util.spec_from_file_location("bench_predict", root / "bench_predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "p.json"
    args = ["gru-lnm-base", "gru-rmtpp-base", "--sequences", "6", "--rounds", "1", "--set", "model.hidden_size=8",
            "--out", str(out)]
    assert module.main([*args, "--label", "old"]) == 0
    assert module.main([*args, "--label", "new"]) == 0
    rows = json.loads(out.read_text())
    assert [(r["predict_model"], r["code"]) for r in rows] == [
        ("gru-lnm-base", "old"), ("gru-rmtpp-base", "old"), ("gru-lnm-base", "new"), ("gru-rmtpp-base", "new")]
    for r in rows:
        assert r["rows"] > 0 and r["rows_per_second"] == pytest.approx(r["rows"] / r["seconds_median"])
    assert "rows/s" in capsys.readouterr().out


def test_bench_defaults_to_the_thread_count_mtpp_train_runs_with() -> None:
    """With torch's default (a thread per core) a busy machine benched 230x slower than training ran, and a
    -96 % diagnostics overhead went into the table: the CLI default is train.threads's."""
    from mtpp.cli import build_parser
    from mtpp.commands.bench import TRAIN_THREADS
    from mtpp.config import TrainConfig

    assert TRAIN_THREADS == TrainConfig().threads
    assert build_parser().parse_args(["bench"]).threads == TrainConfig().threads


@pytest.mark.parametrize("argv, fragment", [
    # recorded in the row's overrides, never applied: the triple, the data and the device come from bench's flags
    (["--set", "model.decoder=rmtpp"], "--set model.decoder=rmtpp: bench sets this with --models"),
    (["--set", "model.parametrisation=plusplus"], "bench sets this with --models"),
    (["--set", "data.name=mooc"], "--set data.name=mooc: bench sets this with --dataset"),
    (["--set", "train.device=cuda"], "bench sets this with --device"),
    (["--set", "train.max_epochs=3"], "has no effect on what bench measures"),
    (["--set", "logging.quiet=true"], "has no effect on what bench measures"),
    (["--synthetic-length", "20", "--dataset", "mooc"], "--dataset mooc would be ignored"),
    (["--amp", "--device", "cpu"], "--amp is bf16 autocast on CUDA only"),
    (["--device", "bogus"], "device 'bogus': invalid value"),
])  # fmt: skip
def test_bench_refuses_settings_it_would_record_without_applying(argv, fragment, tmp_path, capsys) -> None:
    """``--set data.name=mooc`` benchmarked the synthetic data and wrote the override into the JSON row as if applied;
    a clashing or inert setting is now one line before anything runs, and no --out is written."""
    out = tmp_path / "b.json"
    assert main(["bench", "--models", "gru-lnm-base", "--steps", "1", "--rounds", "1", "--no-isolate", "--quiet",
                 "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err, err
    assert not out.exists()
    # what a bench does take (the model's sizes, the aggregator, the optimiser, the dtype) still passes the check
    BenchConfig(overrides=["model.hidden_size=8", "gradients.aggregator=pcgrad", "train.lr=0.01",
                           "data.dtype=float64", "train.compile_integrand=true"]).validate()
