"""Reports from hand-written run directories: summary values, Markdown bolding, plots, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mtpp.cli import main
from mtpp.evaluation import plots, report

# Two models (THP base, THP +) x three splits. Hand-chosen metrics (test section):
#   base: nll_time_per_seq 10, 12, 14 -> mean 12, std 2,        se 2/sqrt(3)
#         nll_mark_per_seq  6,  6,  6 -> mean  6, se 0
#         accuracy        .5, .6, .7 -> mean .6, se .1/sqrt(3)
#   plus: nll_time_per_seq  8,  9, 13 -> mean 10, std sqrt(7),  se sqrt(7/3)
#         nll_mark_per_seq  3,  4,  8 -> mean  5, std sqrt(7),  se sqrt(7/3)
#         accuracy        .4, .5, .45 -> mean .45, se .05/sqrt(3)
# Best: nll_time -> plus (10), nll_mark -> plus (5), accuracy -> base (.6).
METRICS = {
    "base": {
        "nll_time_per_seq": [10.0, 12.0, 14.0],
        "nll_mark_per_seq": [6.0, 6.0, 6.0],
        "accuracy_forecast": [0.5, 0.6, 0.7],
        "conflict_rate": [0.3, 0.4, 0.5],
    },
    "plus": {
        "nll_time_per_seq": [8.0, 9.0, 13.0],
        "nll_mark_per_seq": [3.0, 4.0, 8.0],
        "accuracy_forecast": [0.4, 0.5, 0.45],
        "conflict_rate": [0.1, 0.2, 0.3],
    },
}
SUMMARY_METRICS = ["nll_time_per_seq", "nll_mark_per_seq", "accuracy_forecast", "conflict_rate"]


def _arrays(rng: np.random.Generator) -> dict:
    pit_counts = rng.integers(5, 15, 50)
    count = np.array([0, 0, 3, 10, 20, 15, 10, 8, 5, 4])
    conf = [None, None, 0.28, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95]
    acc = [None, None, 0.2, 0.3, 0.5, 0.5, 0.7, 0.7, 0.9, 0.9]
    return {
        "reliability_edges_forecast": list(np.linspace(0, 1, 11)),
        "reliability_count_forecast": count.tolist(),
        "reliability_confidence_forecast": conf,
        "reliability_accuracy_forecast": acc,
        "pit_edges": list(np.arange(51) / 50),
        "pit_counts": pit_counts.tolist(),
        "pit_cdf": (np.cumsum(pit_counts) / pit_counts.sum()).tolist(),
    }


def _log(param: str, split: int, rng: np.random.Generator) -> list[dict]:
    records = []
    for step in range(60):
        rec: dict = {"kind": "step", "epoch": step // 20, "step": step, "loss_time": 1.0, "loss_mark": 1.0}
        rec["cos_tm"] = float(np.tanh(rng.normal(-0.1 if param == "base" else 0.2, 0.4)))
        rec["cos_tm/encoder"] = float(np.tanh(rng.normal(0.0, 0.4)))
        rec["cos_tm/decoder"] = float(np.tanh(rng.normal(-0.2, 0.3))) if param == "base" else None
        records.append(rec)
        if step % 20 == 19:
            e = step // 20
            records.append({"kind": "epoch", "epoch": e, "step": step,
                            "val_nll_time_per_seq": 20.0 - 2 * e + split - 3 * (param == "plus"),
                            "val_nll_mark_per_seq": 8.0 - e + 0.5 * split})
    return records


def make_runs(root: Path) -> None:
    rng = np.random.default_rng(0)
    for param, metrics in METRICS.items():
        for split in range(3):
            run = root / "synthetic_hawkes" / f"thp-{param}-sum" / f"split{split}-seed0"
            run.mkdir(parents=True)
            config = {
                "data": {"name": "synthetic_hawkes", "split": split, "data_dir": f"/tmp/d{split}"},
                "model": {"encoder": "gru", "decoder": "thp", "parametrisation": param, "first_event": "skip",
                          "hidden_size": 32},
                "train": {"seed": 0, "lr": 1e-3, "device": "cpu" if split else "cuda"},
                "gradients": {"aggregator": "sum", "options": {}},
                "version": "0.1.0",
            }
            (run / "config.yaml").write_text(yaml.safe_dump(config))
            test = {m: values[split] for m, values in metrics.items() if m != "conflict_rate"}
            test.update(nll_time_per_event=test["nll_time_per_seq"] / 10, mrr=0.7, pce=0.05, ece=0.04,
                        ece_forecast=0.03 + 0.01 * split)
            out = {
                "val": {k: v + 1 for k, v in test.items()},
                "test": test,
                "train": {"conflict_rate": metrics["conflict_rate"][split], "best_epoch": 2, "num_parameters": 14000},
            }
            out["test"].update(conflict_rate=metrics["conflict_rate"][split], first_event="skip")
            (run / "metrics.json").write_text(json.dumps(out))
            (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in _log(param, split, rng)) + "\n")
            if param == "base":  # the trainer's layout: one file per split
                (run / "arrays_test.json").write_text(json.dumps(_arrays(rng)))
                (run / "arrays_val.json").write_text(json.dumps(_arrays(rng)))
            else:  # one file nested by split
                (run / "arrays.json").write_text(json.dumps({"test": _arrays(rng), "val": _arrays(rng)}))
    # A run still going: config, no metrics -> not a row.
    unfinished = root / "synthetic_hawkes" / "thp-plusplus-sum" / "split0-seed0"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text(yaml.safe_dump({"model": {"parametrisation": "plusplus"}}))


@pytest.fixture()
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    make_runs(root)
    return root


def test_collect_runs_one_row_per_finished_run(runs_root: Path) -> None:
    df = report.collect_runs(runs_root)
    assert len(df) == 6
    assert len(df.attrs["incomplete"]) == 1
    assert set(df["parametrisation"]) == {"base", "plus"}
    assert sorted(df["split"].unique()) == [0, 1, 2]
    assert (df["dataset"] == "synthetic_hawkes").all() and (df["decoder"] == "thp").all()
    assert (df["encoder"] == "gru").all() and (df["aggregator"] == "sum").all()
    row = df[(df["parametrisation"] == "plus") & (df["split"] == 2)].iloc[0]
    assert row["nll_time_per_seq"] == 13.0 and row["val/nll_time_per_seq"] == 14.0
    assert row["conflict_rate"] == 0.3 and row["train/num_parameters"] == 14000
    # Split, seed and bookkeeping fields (data_dir, device) never define a cell.
    assert report.cell_columns(df) == list(report.KEY_COLUMNS)


@pytest.mark.parametrize("name, content, said", [
    ("config.yaml", "model: [\n", "config.yaml: not readable YAML"),
    ("config.yaml", "- a list\n", "config.yaml: holds list, not the mapping mtpp writes there"),
    ("config.yaml", b"model: {decoder: \xe9}\n", "config.yaml: not readable YAML"),
    ("metrics.json", "{not json", "metrics.json: not readable JSON"),
    ("metrics.json", "[1, 2]", "metrics.json: holds list, not the mapping mtpp writes there"),
])
def test_a_run_with_a_damaged_file_is_skipped_and_named_not_a_traceback(runs_root: Path, tmp_path: Path, capsys,
                                                                         name: str, content, said: str) -> None:
    """``mtpp report`` over a folder holding one run whose config.yaml was damaged (or metrics.json) stopped with
    a yaml / json / AttributeError traceback; the run is now left out of the tables and named, with why."""
    bad = runs_root / "synthetic_hawkes" / "thp-plus-sum" / "split2-seed0"
    (bad / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    df = report.collect_runs(runs_root)
    assert len(df) == 5 and str(bad) not in set(df["run"])
    assert len(df.attrs["unreadable"]) == 1 and df.attrs["unreadable"][0].startswith(f"{bad / name}: ")
    assert main(["report", str(runs_root), "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert f"skipped (unreadable): {bad / name}: " in err and said in err and "Traceback" not in err
    assert (tmp_path / "rep" / "summary.md").is_file()


def test_summary_csv_holds_hand_computed_means_and_standard_errors(runs_root: Path, tmp_path: Path) -> None:
    df = report.collect_runs(runs_root)
    out = tmp_path / "out"
    paths = report.write_summary(df, out, metrics=SUMMARY_METRICS)
    assert [p.name for p in paths] == ["summary.csv", "summary.md"]
    csv = pd.read_csv(out / "summary.csv")
    assert {"dataset", "model", "parametrisation", "metric", "mean", "stderr", "n"} <= set(csv.columns)
    assert len(csv) == 2 * len(SUMMARY_METRICS)

    def get(param: str, metric: str) -> pd.Series:
        rows = csv[(csv["parametrisation"] == param) & (csv["metric"] == metric)]
        assert len(rows) == 1
        return rows.iloc[0]

    expected = {
        ("base", "nll_time_per_seq"): (12.0, 2 / math.sqrt(3)),
        ("base", "nll_mark_per_seq"): (6.0, 0.0),
        ("base", "accuracy_forecast"): (0.6, 0.1 / math.sqrt(3)),
        ("base", "conflict_rate"): (0.4, 0.1 / math.sqrt(3)),
        ("plus", "nll_time_per_seq"): (10.0, math.sqrt(7 / 3)),
        ("plus", "nll_mark_per_seq"): (5.0, math.sqrt(7 / 3)),
        ("plus", "accuracy_forecast"): (0.45, 0.05 / math.sqrt(3)),
        ("plus", "conflict_rate"): (0.2, 0.1 / math.sqrt(3)),
    }
    for (param, metric), (mean, se) in expected.items():
        row = get(param, metric)
        assert row["mean"] == pytest.approx(mean), (param, metric)
        assert row["stderr"] == pytest.approx(se, abs=1e-12), (param, metric)
        assert row["n"] == 3


def test_summary_md_bolds_the_best_cell_per_column(runs_root: Path, tmp_path: Path) -> None:
    df = report.collect_runs(runs_root)
    report.write_summary(df, tmp_path, metrics=SUMMARY_METRICS)
    md = (tmp_path / "summary.md").read_text()
    assert "## synthetic_hawkes (times in data units; n ≤ 3 runs per model)" in md  # simulated: no physical unit
    assert "First event: **skip**" in md and "per sequence" in md
    lines = [l for l in md.splitlines() if l.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[header.index("param")]] = dict(zip(header, cells))
    assert set(rows) == {"base", "+"}
    t, m, a, c = (next(h for h in header if h.startswith(x)) for x in SUMMARY_METRICS)
    assert t.endswith("↓") and a.endswith("↑")
    assert rows["+"][t] == f"**10.00 ± {math.sqrt(7 / 3):.2f}**" and not rows["base"][t].startswith("**")
    assert rows["+"][m].startswith("**5.000 ±") and rows["base"][m] == "6.000 ± 0.000"
    assert rows["base"][a] == f"**0.6000 ± {0.1 / math.sqrt(3):.4f}**" and not rows["+"][a].startswith("**")
    assert not any(r[c].startswith("**") for r in rows.values())  # the conflict rate has no "better"


def test_summary_md_names_each_datasets_documented_time_unit(runs_root: Path, tmp_path: Path) -> None:
    """L_T and the gap errors depend on the unit of time: each dataset's table says which one (the catalog's)."""
    df = report.collect_runs(runs_root)
    df["dataset"] = np.where(df["split"] == 0, "taxi", "synthetic_hawkes")
    md = report.format_markdown(report.summarise(df, SUMMARY_METRICS))
    assert "## taxi (times in hours; n ≤ 1 runs per model)" in md
    assert "## synthetic_hawkes (times in data units; n ≤ 2 runs per model)" in md


def test_single_run_cells_show_a_dash_for_the_standard_error(runs_root: Path) -> None:
    df = report.collect_runs(runs_root)
    one = df[df["split"] == 0]
    summary = report.summarise(one, ["nll_time_per_seq"])
    assert summary["n"].tolist() == [1, 1] and summary["stderr"].isna().all()
    md = report.format_markdown(summary)
    # one column, one precision (was 8.000 under 10.00): the decimals of the column's largest mean
    assert "10.00 ± –" in md and "**8.00 ± –**" in md


def test_make_all_plots_writes_non_empty_pngs(runs_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    written = plots.make_all_plots(runs_root, out)
    names = sorted(p.name for p in written)
    assert names == sorted(
        [
            "bars_synthetic_hawkes.png",
            "val_curves_synthetic_hawkes.png",
            "reliability_synthetic_hawkes.png",
            "pit_synthetic_hawkes.png",
            "cos_tm_synthetic_hawkes_thp-gru-sum.png",
        ]
    )
    for p in written:
        data = p.read_bytes()
        assert len(data) > 5000 and data[:8] == b"\x89PNG\r\n\x1a\n", p


def test_report_command_writes_tables_and_plots(runs_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert main(["report", str(runs_root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 runs" in printed and "summary.md" in printed and "pit_synthetic_hawkes.png" in printed
    assert (out / "summary.csv").exists() and (out / "summary.md").exists()
    assert len(list((out / "plots").glob("*.png"))) == 5
    assert main(["report", str(runs_root), "--out", str(out), "--metrics", "nope"]) == 2
    err = capsys.readouterr().err
    available = err.split("available: ")[1]
    assert "nll_time_per_seq" in available and not {"dataset", "seed", "run"} & set(available.strip().split(", "))
    assert main(["report", str(runs_root), "--out", str(out), "--split", "validation"]) == 2
    assert "--split validation: no run under" in capsys.readouterr().err and not (out / "summary_validation.md").exists()
    # "train" is the training split's metrics (train_eval, written by mtpp evaluate --split train), not the summary
    assert main(["report", str(runs_root), "--out", str(out), "--split", "train", "--no-plots"]) == 2
    assert "(metrics on the training split are written by mtpp evaluate RUN --split train)" in capsys.readouterr().err
    # another split or a metric selection writes its own files; the full test summary stays as it was
    full = (out / "summary.md").read_text()
    assert main(["report", str(runs_root), "--out", str(out), "--split", "val", "--no-plots"]) == 0
    assert main(["report", str(runs_root), "--out", str(out), "--metrics", "pce", "ece", "--no-plots"]) == 0
    assert main(["report", str(runs_root), "--out", str(out), "--split", "val", "--metrics", "pce"]) == 0
    assert (out / "summary.md").read_text() == full
    assert (out / "summary_val.md").is_file() and (out / "summary_test_pce_ece_given_time.md").is_file()
    assert (out / "summary_val_pce.csv").is_file() and any((out / "plots_val_pce").glob("*.png"))
    assert report.summary_stem("test", [f"metric_{i}" for i in range(20)]).startswith("summary_test_20-metrics-")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "same split" not in capsys.readouterr().err  # every run of runs_root is its own replicate


def test_report_warns_about_two_runs_of_one_split_and_seed(runs_root: Path, tmp_path: Path, capsys) -> None:
    """A copied run (or a rerun beside its original) is one replicate (n and the SE unchanged), and said, naming
    both: counted twice, it inflated n and shrank the standard error."""
    import shutil

    original = next(p.parent for p in sorted(runs_root.rglob("metrics.json")))
    before = report.summarise(report.collect_runs(runs_root))
    copy = original.parent / "copy-of-it"
    shutil.copytree(original, copy)
    after = report.summarise(report.collect_runs(runs_root))
    cols = ["n", "mean", "stderr"]
    assert np.allclose(after[cols].to_numpy(float), before[cols].to_numpy(float), equal_nan=True)
    assert (after["runs"].str.contains("copy-of-it")).any()  # the copy is listed among the cell's folders
    assert report.repeated_replicates(report.collect_runs(runs_root)) and not report.repeated_replicates(
        report.collect_runs(runs_root).iloc[0:0])
    assert main(["report", str(runs_root), "--out", str(tmp_path / "r"), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "warning: 2 runs of one cell have the same split" in err and str(copy) in err and str(original) in err


def test_report_never_overwrites_a_file_it_did_not_write(runs_root: Path, tmp_path: Path, capsys) -> None:
    """A user's summary.md / summary.csv / plot of the same name in --out is refused in one line and kept; the files
    an earlier report wrote (this version's or an earlier one's, recognised by their content) are rewritten."""
    from mtpp.owned import MD_MARK, is_ours

    out = tmp_path / "report"
    out.mkdir()
    for name in ("summary.md", "summary.csv"):
        (out / name).write_text("my notes\n")
        assert main(["report", str(runs_root), "--out", str(out), "--no-plots"]) == 2
        assert f"{out / name}: exists and was not written by mtpp" in capsys.readouterr().err
        assert (out / name).read_text() == "my notes\n"
        (out / name).unlink()
    assert not (out / "summary.md").exists()  # refused before writing either file
    assert main(["report", str(runs_root), "--out", str(out)]) == 0
    assert main(["report", str(runs_root), "--out", str(out)]) == 0  # its own files: rewritten
    plot = sorted((out / "plots").glob("*.png"))[0]
    assert is_ours(plot) and is_ours(out / "summary.md") and is_ours(out / "summary.csv")
    plot.write_bytes(b"\x89PNG\r\n\x1a\n not mine to replace")
    real = (out / "summary.md").read_text()
    (out / "summary.md").write_text(MD_MARK + "\nan earlier summary\n")
    assert main(["report", str(runs_root), "--out", str(out)]) == 2
    assert f"{plot}: exists and was not written by mtpp" in capsys.readouterr().err
    # refused before the summaries were rewritten
    assert (out / "summary.md").read_text() == MD_MARK + "\nan earlier summary\n"
    (out / "summary.md").write_text(real)
    # an earlier version's summary (no first-line mark) and summary.csv (columns ending at n) are still mtpp's
    legacy = (out / "summary.md").read_text().split("\n", 1)[1]
    (out / "summary.md").write_text(legacy)
    assert is_ours(out / "summary.md") and not is_ours(out / "plots")
    (out / "summary.csv").write_text("dataset,model,metric,mean,stderr,n\nmooc,lnm,time_nll,1.0,0.1,3\n")
    assert is_ours(out / "summary.csv")
    for header in ("dataset,model,n", "my_metric,mean,stderr,n", "model,metric,mean,stderr,n"):
        (out / "summary.csv").write_text(f"{header}\nmooc,lnm,3\n")
        assert not is_ours(out / "summary.csv"), header
    # a figure plain matplotlib saved (earlier versions' plots) is mtpp's only in a plots folder beside an mtpp
    # summary; anywhere else it is the user's
    import matplotlib.pyplot as plt

    fig = plt.figure()
    for folder in (out / "plots", tmp_path / "elsewhere" / "plots"):
        folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(folder / "pit_mooc.png")
    plt.close(fig)
    assert is_ours(out / "plots" / "pit_mooc.png") and not is_ours(tmp_path / "elsewhere" / "plots" / "pit_mooc.png")
    (tmp_path / "elsewhere" / "summary.md").write_text("# my own summary\n")
    assert not is_ours(tmp_path / "elsewhere" / "plots" / "pit_mooc.png")
    # an mtpp summary of another report (summary_val.md, whose plots go to plots_val/) does not vouch for plots/
    (tmp_path / "elsewhere" / "summary_val.md").write_text(MD_MARK + "\n")
    assert not is_ours(tmp_path / "elsewhere" / "plots" / "pit_mooc.png")
    (tmp_path / "elsewhere" / "plots").rename(tmp_path / "elsewhere" / "plots_val")
    assert is_ours(tmp_path / "elsewhere" / "plots_val" / "pit_mooc.png")


# ---------------------------------------------------------------------------------------------------------------
# Plots and tables that cannot mislead (issue 13 §3)


class Captured(list):
    """The figures the plot functions save (``plots._save`` patched): inspect what a reader would see."""


@pytest.fixture()
def figures(monkeypatch) -> Captured:
    captured = Captured()
    original = plots._save

    def save(fig, path):
        captured.append(fig)
        return original(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    return captured


def _texts(fig) -> list[str]:
    out = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    return [t for t in out if t]


def add_quick_run(root: Path, rng: np.random.Generator, *, name: str = "quick") -> Path:
    """A THP base run with the same model label as the grid's but another configuration (1 epoch, 300 sequences,
    another learning rate), in a folder of its own: the case of the issue."""
    run = root / name
    run.mkdir(parents=True)
    config = {
        "data": {"name": "synthetic_hawkes", "split": 0, "max_sequences": 300},
        "model": {"encoder": "gru", "decoder": "thp", "parametrisation": "base", "first_event": "skip",
                  "hidden_size": 32},
        "train": {"seed": 0, "lr": 0.003, "max_epochs": 1},
        "gradients": {"aggregator": "sum", "options": {}},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    test = {"nll_time_per_seq": 30.0, "nll_mark_per_seq": 9.0, "accuracy_given_time": 0.3, "pce": 0.2,
            "ece_given_time": 0.1, "conflict_rate": 0.9, "first_event": "skip"}  # the new metric names
    (run / "metrics.json").write_text(json.dumps({"test": test, "val": test, "train": {"conflict_rate": 0.9}}))
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in _log("base", 0, rng)) + "\n")
    (run / "arrays_test.json").write_text(json.dumps(_arrays(rng)))
    return run


def add_plusplus(root: Path, rng: np.random.Generator) -> None:
    """THP ++ x 3 splits: no shared parameter, so no cosine in the log and a null conflict rate."""
    for split in range(3):
        run = root / "synthetic_hawkes" / "thp-plusplus-sum" / f"split{split}-seed0"
        run.mkdir(parents=True, exist_ok=True)
        config = {"data": {"name": "synthetic_hawkes", "split": split},
                  "model": {"encoder": "gru", "decoder": "thp", "parametrisation": "plusplus", "first_event": "skip",
                            "hidden_size": 32},
                  "train": {"seed": 0, "lr": 1e-3}, "gradients": {"aggregator": "sum", "options": {}}}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        test = {"nll_time_per_seq": 9.0 + split, "nll_mark_per_seq": 4.0, "accuracy": 0.5, "pce": 0.04, "ece": 0.03,
                "conflict_rate": None, "first_event": "skip"}
        (run / "metrics.json").write_text(json.dumps({"test": test, "val": test, "train": {"conflict_rate": None}}))
        log = [{k: v for k, v in r.items() if not k.startswith("cos_tm")} for r in _log("plus", split, rng)]
        (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
        (run / "arrays_test.json").write_text(json.dumps(_arrays(rng)))


def test_runs_sharing_a_model_label_but_not_a_config_are_both_drawn_and_labelled(runs_root, tmp_path, figures):
    add_quick_run(runs_root, np.random.default_rng(1))
    df = report.collect_runs(runs_root)
    assert "config.train.max_epochs" in report.cell_columns(df) and "config.data.max_sequences" in report.cell_columns(df)
    plots.plot_metric_bars(df, tmp_path / "bars.png", ["nll_time_per_seq", "conflict_rate"])
    (fig,) = figures
    ax = fig.axes[0]
    ticks = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
    assert len(ticks) == 2 and len(set(ticks)) == 2  # two THP cells, none dropped
    assert any("max_sequences=300" in t and "max_epochs=1" in t for t in ticks)
    assert any("max_sequences=all" in t for t in ticks)
    # every point is drawn: the quick base run (30), the grid's base (12) and + (10) means
    ys = sorted(float(line.get_ydata()[0]) for line in ax.get_lines() if line.get_marker() == "o")
    assert ys == pytest.approx([10.0, 12.0, 30.0])
    # the y axis is zoomed to the values (not from 0), the title is in words with units, the figure says what it pooled
    assert ax.get_ylim()[0] > 0
    assert ax.get_title().replace("\n", " ").startswith("time NLL per sequence (nats) ↓ lower is better")
    text = " ".join(_texts(fig))
    assert "pooled over splits 0, 1, 2" in text and "n = 1–3 runs per point" in text
    assert "-16.7%" in text  # + vs base of the grid's THP: (10 - 12) / 12
    # the legend is outside every panel
    legend = fig.legends[0]
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert all(not box.overlaps(a.get_window_extent()) for a in fig.axes if a.get_visible())


def test_na_where_a_metric_does_not_apply(runs_root, tmp_path, figures):
    add_plusplus(runs_root, np.random.default_rng(2))
    df = report.collect_runs(runs_root)
    report.write_summary(df, tmp_path, metrics=["nll_time_per_seq", "conflict_rate"])
    md = (tmp_path / "summary.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| thp | gru | thp | ++ |"))
    assert "| n/a |" in row
    plots.plot_metric_bars(df, tmp_path / "bars.png", ["nll_time_per_seq", "conflict_rate"])
    conflict_ax = next(a for a in figures[0].axes if a.get_title().startswith("gradient conflict rate"))
    assert [t.get_text() for t in conflict_ax.texts] == ["n/a"]


def test_summary_md_has_run_folders_and_numbers_as_given(runs_root, tmp_path):
    add_quick_run(runs_root, np.random.default_rng(1))
    df = report.collect_runs(runs_root)
    report.write_summary(df, tmp_path, metrics=["nll_time_per_seq"])
    md = (tmp_path / "summary.md").read_text()
    lines = [l for l in md.splitlines() if l.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[-1] == "runs"
    rows = [dict(zip(header, [c.strip() for c in l.strip("|").split("|")])) for l in lines[1:]]
    quick = next(r for r in rows if r["runs"] == "`quick`")
    assert quick["data.max_sequences"] == "300" and quick["train.lr"] == "0.003" and quick["train.max_epochs"] == "1"
    grid_base = next(r for r in rows if r["param"] == "base" and r["runs"] != "`quick`")
    assert grid_base["runs"] == "`synthetic_hawkes/thp-base-sum/` split0-seed0, split1-seed0, split2-seed0"
    assert grid_base["train.lr"] == "0.001" and grid_base["data.max_sequences"] == "–"
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert set(csv["runs"]) >= {"quick"}


def test_reliability_ece_is_the_tables_and_sparse_bins_are_faded(runs_root, tmp_path, figures):
    df = report.collect_runs(runs_root)
    summary = report.summarise(df, ["ece_forecast"])  # the fixture's arrays are those of the forecast
    plots.plot_reliability(df, tmp_path / "rel.png")
    (fig,) = figures
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert len(titles) == 2  # one panel per cell
    for param, label in (("base", "THP:"), ("plus", "THP+:")):
        row = summary[summary["parametrisation"] == param].iloc[0]
        title = next(t for t in titles if t.startswith(label))
        assert title.endswith("ECE " + report.format_mean_se(row["mean"], row["stderr"]))  # as in summary.md
    # pooled over 3 runs the bins hold 3 x [3, 10, 20, 15, 10, 8, 5, 4] events: those under FEW_EVENTS = 30
    # (9, 24, 15, 12) are hollow, the others filled with an area proportional to their count
    ax = next(a for a in fig.axes if a.get_title().startswith("THP:"))
    solid, faint = [c for c in ax.collections if len(c.get_offsets())]
    assert len(faint.get_offsets()) == 4 and faint.get_facecolor().size == 0
    sizes = solid.get_sizes()
    counts = np.array([10, 20, 15, 10]) * 3
    assert np.allclose(sizes / sizes[0], counts / counts[0])
    # the grey bars have no axis: the tallest writes its share (20 of 75 events per run), the caption says so
    share_texts = [t.get_text() for a in fig.axes for t in a.texts if t.get_text().endswith("%")]
    assert f"{20 / 75:.0%}" in share_texts
    assert "the tallest (its share written on it)" in " ".join(fig._suptitle.get_text().split())


def test_pit_has_one_panel_per_cell(runs_root, tmp_path, figures):
    add_quick_run(runs_root, np.random.default_rng(1))
    add_plusplus(runs_root, np.random.default_rng(2))
    df = report.collect_runs(runs_root)
    plots.plot_pit(df, tmp_path / "pit.png")
    titles = [a.get_title() for a in figures[0].axes if a.get_visible() and a.get_title()]
    assert len(titles) == 4 and len({t.split(":")[0] for t in titles}) == 4
    assert all("PCE" in t for t in titles)


def test_cos_tm_title_and_panels_agree_and_no_panel_is_empty(runs_root, tmp_path, figures):
    add_plusplus(runs_root, np.random.default_rng(2))
    df = report.collect_runs(runs_root)
    plots.plot_cos_tm(df, tmp_path / "cos.png", title="THP")
    (fig,) = figures
    panels = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in panels] == ["all shared parameters", "shared encoder", "shared decoder"]
    for ax in panels:
        assert ax.patches, ax.get_title()  # every panel has a histogram
    overall = panels[0].get_legend().get_texts()
    for param, text in zip(("base", "plus"), overall):
        # the legend's conflict rate is the mean over runs of the logged share cos < 0, as the table's conflict_rate
        rates = []
        for run in df[df["parametrisation"] == param]["run"]:
            v = [r["cos_tm"] for r in plots.read_log(run) if r.get("kind") == "step"]
            rates.append(np.mean(np.array(v) < 0))
        assert f"conflict {100 * np.mean(rates):.0f}%" in text.get_text()
    assert "++ shares no parameter" in fig._suptitle.get_text()
    assert "conflict = share of measured steps with cos < 0" in fig._suptitle.get_text()


def test_cos_tm_with_only_the_encoder_shared_has_one_panel(tmp_path, figures):
    rng = np.random.default_rng(0)
    run = tmp_path / "runs" / "lnm"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"decoder": "lnm", "parametrisation": "base"}}))
    (run / "metrics.json").write_text(json.dumps({"test": {"nll_time_per_seq": 1.0}}))
    steps = []
    for i in range(30):
        c = float(np.tanh(rng.normal()))
        steps.append({"kind": "step", "step": i, "cos_tm": c, "cos_tm/encoder": c, "cos_tm/decoder": None})
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in steps))
    plots.plot_cos_tm(report.collect_runs(tmp_path / "runs"), tmp_path / "cos.png")
    panels = [a for a in figures[0].axes if a.get_visible()]
    assert [a.get_title() for a in panels] == ["all shared parameters (= the encoder)"]


def test_cos_tm_and_curve_figures_keep_every_text_inside_the_figure(tmp_path, figures):
    """A one-panel ``cos phi_TM`` figure (LNM: only the encoder shared) of base and + beside ++: its title was wrapped
    to a fixed 74 characters, wider than the 5.2-inch figure (cut off at both ends), and its y label was pushed past
    the left edge when the tick labels at the final axes size were wider than at the first layout pass (these
    cosines are a case that did)."""
    rng = np.random.default_rng(0)
    for param in ("base", "plus", "plusplus"):
        run = tmp_path / "runs" / f"lnm-{param}"
        run.mkdir(parents=True)
        model = {"encoder": "gru", "decoder": "lnm", "parametrisation": param}
        (run / "config.yaml").write_text(yaml.safe_dump({"data": {"name": "synthetic_hawkes"}, "model": model}))
        (run / "metrics.json").write_text(json.dumps({"test": {"nll_time_per_seq": 1.0}}))
        steps = []
        for i in range(16):
            c = None if param == "plusplus" else float(np.tanh(rng.normal(0, 0.3)))
            steps.append({"kind": "step", "step": i, "cos_tm": c, "cos_tm/encoder": c, "cos_tm/decoder": None})
        epochs = [{"kind": "epoch", "epoch": e, "val_nll_time_per_seq": 20.0 - e, "val_nll_mark_per_seq": 115.0 - e / 3}
                  for e in (1, 2)]  # fmt: skip
        (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in steps + epochs))
    plots.make_all_plots(tmp_path / "runs", tmp_path / "plots")
    names = [f._suptitle.get_text() for f in figures]
    assert any("cos φ_TM" in n for n in names) and any("validation losses" in n for n in names), names
    for fig in figures:
        box = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, every drawn artist
        title = " ".join(fig._suptitle.get_text().split())[:50]
        assert box.x0 >= 0 and box.y0 >= 0, title
        assert box.x1 <= fig.get_figwidth() and box.y1 <= fig.get_figheight(), title


def test_metric_table_accepts_old_and_new_names():
    assert report.canonical_metric("accuracy") == "accuracy_given_time"
    assert report.canonical_metric("val/ece") == "val/ece_given_time"
    assert report.metric_info("ece") == report.metric_info("ece_given_time") == report.METRICS["ece_given_time"]
    assert report.direction("nll_mark_forecast_per_seq") == -1 and report.direction("accuracy_forecast") == 1
    assert report.direction("conflict_rate") == 0
    assert report.metric_info("nll_time_per_seq").title() == "time NLL per sequence (nats) ↓ lower is better"


def test_topk_accuracies_of_a_model_with_k_marks_or_fewer_are_not_read(tmp_path, capsys):
    """metrics.json files written before top-k stopped below K (top5 = top10 = 1.0 on 2 marks) stay readable; the
    trivial top-k are left out, K from the metrics (newer files) or the config's data record (older ones)."""
    topk = {f"top{k}_accuracy_{kind}": 1.0 for k in (3, 5, 10) for kind in ("given_time", "forecast")}
    for name, marks_in_config, marks_in_metrics in (("two", 2, None), ("four", None, 4), ("unknown", None, None)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        config = {"data": {"name": name}, "model": {"decoder": "lnm", "parametrisation": "base"}}
        if marks_in_config:
            config["run_info"] = {"data": {"name": name, "num_marks": marks_in_config}}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        test = {"accuracy_forecast": 0.6, "accuracy_given_time": 0.7, **topk}
        if marks_in_metrics:
            test["num_marks"] = marks_in_metrics
        (run / "metrics.json").write_text(json.dumps({"test": test, "val": dict(test)}))
    rows = {r["dataset"]: r for _, r in report.collect_runs(tmp_path / "runs").iterrows()}
    shown = {name: sorted(k for k, v in r.items() if "top" in k and v == v) for name, r in rows.items()}
    assert shown["two"] == []
    kinds = ("given_time", "forecast")
    assert shown["four"] == sorted(f"{s}top3_accuracy_{kind}" for s in ("", "val/") for kind in kinds)
    assert len(shown["unknown"]) == 12  # nothing tells K: read as written
    assert rows["two"]["accuracy_forecast"] == 0.6  # the rest of the file as before
    # asking for a top-k that no run reports says why, not "unknown metric"
    only_two = tmp_path / "runs" / "two"
    assert main(["report", str(only_two), "--out", str(tmp_path / "r"), "--metrics", "top5_accuracy_forecast",
                 "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "top5_accuracy_forecast: not reported for these runs: a top-k accuracy needs more than k marks" in err
    assert main(["report", str(only_two), "--out", str(tmp_path / "r"), "--metrics", "accuracy_forecast",
                 "--no-plots"]) == 0


def test_reliability_reads_runs_written_before_the_forecast_arrays(tmp_path, figures):
    """Arrays without the ``_forecast`` / ``_given_time`` suffix (older runs) are the given-time diagram."""
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"decoder": "lnm", "parametrisation": "base"}}))
    (run / "metrics.json").write_text(json.dumps({"test": {"nll_time_per_seq": 1.0, "ece": 0.05}}))
    arrays = {k.removesuffix("_forecast"): v for k, v in _arrays(np.random.default_rng(0)).items()}
    (run / "arrays_test.json").write_text(json.dumps(arrays))
    assert plots.plot_reliability(report.collect_runs(tmp_path / "runs"), tmp_path / "rel.png") is not None
    (fig,) = figures
    assert [a.get_title() for a in fig.axes if a.get_title()] == ["LNM: ECE 0.0500 ± –"]  # ece = ece_given_time
    assert "mark reliability of p(k | τ, H), given the time" in " ".join(fig._suptitle.get_text().split())


def test_pit_panel_shows_the_binned_pit_where_every_run_has_it(tmp_path, figures):
    """Runs scored on a time lattice carry ``pit_cdf_binned``: the panel draws it (pooled event-weighted over the
    runs) beside the continuous PIT and names ``pce_binned``; a panel with one run lacking it draws the continuous
    PIT only."""
    rng = np.random.default_rng(3)
    grid = np.arange(1, 51) / 50
    pooled, n_total = np.zeros(50), 0
    for split, decoder in ((0, "lnm"), (1, "lnm"), (0, "thp")):
        run = tmp_path / "runs" / f"{decoder}{split}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"data": {"split": split},
                                                         "model": {"decoder": decoder, "parametrisation": "base"}}))
        (run / "metrics.json").write_text(json.dumps({"test": {"nll_time_per_seq": 1.0, "pce": 0.05,
                                                               "pce_binned": 0.01 * (split + 1)}}))
        arrays = _arrays(rng)
        if decoder == "lnm":
            cdf = np.clip(grid + rng.normal(0, 0.01, 50), 0, 1)
            arrays["pit_cdf_binned"] = cdf.tolist()
            n = int(np.sum(arrays["pit_counts"]))
            pooled, n_total = pooled + n * cdf, n_total + n
        (run / "arrays_test.json").write_text(json.dumps(arrays))
    plots.plot_pit(report.collect_runs(tmp_path / "runs"), tmp_path / "pit.png")
    (fig,) = figures
    panels = {a.get_title().split(":")[0]: a for a in fig.axes if a.get_visible() and a.get_title()}
    lnm, thp = panels["LNM"], panels["THP"]
    title = " ".join(lnm.get_title().split())
    assert "PCE binned 0.0150" in title and "continuous 0.0500" in title
    binned = next(line for line in lnm.get_lines() if line.get_label() == "binned PIT")
    np.testing.assert_allclose(binned.get_ydata()[1:], pooled / n_total - grid, atol=1e-12)
    assert "binned" not in thp.get_title() and not any(ln.get_label() == "binned PIT" for ln in thp.get_lines())
    assert "solid = binned PIT" in " ".join(fig._suptitle.get_text().split())
    # the title's lines fit the two-panel figure (they were cut off at both ends)
    renderer = fig.canvas.get_renderer()
    box = fig._suptitle.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width


def test_pit_noise_band_counts_each_test_event_once(tmp_path, figures):
    """Seeds of one split score the same test events: the band of a calibrated model's noise uses the events of
    the distinct splits (here 2 seeds of split 0: n = 300, not 600; splits 0 and 1: n = 600)."""
    rng = np.random.default_rng(5)
    for decoder, reps in (("lnm", [(0, 0), (0, 1)]), ("thp", [(0, 0), (1, 0)])):
        for split, seed in reps:
            run = tmp_path / "runs" / f"{decoder}{split}{seed}"
            run.mkdir(parents=True)
            (run / "config.yaml").write_text(yaml.safe_dump({"data": {"split": split}, "train": {"seed": seed},
                                                             "model": {"decoder": decoder, "parametrisation": "base"}}))
            (run / "metrics.json").write_text(json.dumps({"test": {"nll_time_per_seq": 1.0, "pce": 0.05}}))
            counts = np.full(50, 6)  # 300 events per run
            (run / "arrays_test.json").write_text(json.dumps({**_arrays(rng), "pit_counts": counts.tolist()}))
    plots.plot_pit(report.collect_runs(tmp_path / "runs"), tmp_path / "pit.png")
    (fig,) = figures
    panels = {a.get_title().split(":")[0]: a for a in fig.axes if a.get_visible() and a.get_title()}
    for name, n in (("LNM", 300), ("THP", 600)):
        band = panels[name].patches[0]  # axhspan(-eps, eps): a rectangle in data y units
        assert band.get_y() + band.get_height() == pytest.approx(math.sqrt(math.log(2 / 0.05) / (2 * n))), name


def test_bold_ranks_only_rows_tested_on_the_same_data() -> None:
    """Cells cut to another max_sequences were tested on other sequences: their per-sequence NLLs are not ranked
    against each other (a 60-sequence cell was bolded as best against 200-sequence ones)."""
    import pandas as pd

    from mtpp.evaluation.report import format_markdown

    rows = [{"dataset": "sim", "model": model, "config.data.max_sequences": cut, "metric": "nll_mark_per_seq",
             "mean": v, "stderr": 0.5, "n": 2}
            for cut, vals in ((60, (107.5, 110.0)), (200, (109.4, 108.0))) for model, v in zip(("lnm", "rmtpp"), vals)]
    table = [line for line in format_markdown(pd.DataFrame(rows)).splitlines() if line.startswith("| lnm")
             or line.startswith("| rmtpp")]  # fmt: skip
    assert table == ["| lnm | 60 | **107.5 ± 0.5** |", "| lnm | 200 | 109.4 ± 0.5 |",
                     "| rmtpp | 60 | 110.0 ± 0.5 |", "| rmtpp | 200 | **108.0 ± 0.5** |"]
    one_cut = [dict(r, **{"config.data.max_sequences": 60}) for r in rows[:2]]  # one data group: one best
    assert format_markdown(pd.DataFrame(one_cut)).count("**107.5") == 1


def test_bars_of_equal_values_and_long_cell_labels_stay_readable(tmp_path, figures):
    """Every accuracy 0 gave a y axis of +-1e-15 under a '1e-15' offset; cell labels without spaces
    ('(max_sequences=200)') ran into each other."""
    import pandas as pd

    rows = [{"dataset": "sim", "model": "lnm", "parametrisation": p, "aggregator": agg, "seed": seed, "split": 0,
             "config.data.max_sequences": cut, "accuracy_given_time": 0.0, "nll_mark_per_seq": 100.0 + seed,
             "run": f"/r/{cut}{agg}{p}{seed}"}
            for cut in (60, 200) for agg in ("sum", "pcgrad") for p in ("base", "plus") for seed in (0, 1)]
    plots.plot_metric_bars(pd.DataFrame(rows), tmp_path / "bars.png", ["accuracy_given_time", "nll_mark_per_seq"])
    fig = figures[0]
    fig.canvas.draw()
    acc = next(a for a in fig.axes if a.get_title().startswith("mark accuracy"))
    low, high = acc.get_ylim()
    assert high - low >= 0.05 and low < 0 < high and acc.yaxis.get_offset_text().get_text() == ""
    ticks = acc.get_xticklabels()
    assert ticks and all(t.get_rotation() == 25 for t in ticks)  # slanted: each runs under its own group


def test_cos_tm_file_names_hold_each_setting_once(tmp_path, figures):
    """``cos_tm_<dataset>_<model>-<encoder>-<aggregator>[_<settings>].png``: the aggregator is named once, however
    the label repeats it, and a setting that tells cells of one model apart stays in the name."""
    rng = np.random.default_rng(0)
    for name, agg, lr, options in (("pcg", "pcgrad", 1e-3, None), ("sum_a", "sum", 1e-3, None),
                                   ("sum_b", "sum", 1e-2, None), ("cag_default", "cagrad", 1e-3, {}),
                                   ("cag_c05", "cagrad", 1e-3, {"c": 0.5}), ("cag_c09", "cagrad", 1e-3, {"c": 0.9})):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        cfg = {"data": {"name": "mimic2"}, "model": {"encoder": "gru", "decoder": "lnm", "parametrisation": "base"},
               "train": {"lr": lr}, "gradients": {"aggregator": agg, **({} if options is None else {"options": options})}}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        (run / "metrics.json").write_text(json.dumps({"test": {"nll_time_per_seq": 1.0}}))
        steps = [{"kind": "step", "step": i, "cos_tm": float(np.tanh(rng.normal()))} for i in range(20)]
        (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in steps))
    written = plots.make_all_plots(tmp_path / "runs", tmp_path / "plots")
    names = sorted(p.name for p in written if p.name.startswith("cos_tm_"))
    # "THP (cagrad) (c=0.9)" gave "lnm-gru-cagrad_cagrad_c_0.9": the settings were read from the first parentheses
    assert names == ["cos_tm_mimic2_lnm-gru-cagrad_c_0.5.png", "cos_tm_mimic2_lnm-gru-cagrad_c_0.9.png",
                     "cos_tm_mimic2_lnm-gru-pcgrad.png", "cos_tm_mimic2_lnm-gru-sum_lr_0.001.png",
                     "cos_tm_mimic2_lnm-gru-sum_lr_0.01.png"], names  # fmt: skip


def test_a_default_option_given_explicitly_is_the_same_cell(tmp_path):
    """cagrad with ``options: {}`` and with ``{c: 0.5}`` (its default) ran the same method: one row of n = 2, not two
    rows of n = 1 ("c: –" beside "c: 0.5") with the same numbers both in bold."""
    for name, options, seed, value in (("a", {}, 0, 1.0), ("b", {"c": 0.5}, 1, 2.0), ("c", {"c": 0.9}, 0, 3.0)):
        run = tmp_path / name
        run.mkdir()
        cfg = {"data": {"name": "mimic2"}, "model": {"decoder": "lnm", "parametrisation": "base"},
               "train": {"seed": seed}, "gradients": {"aggregator": "cagrad", "options": options}}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        (run / "metrics.json").write_text(json.dumps({"test": {"nll_time_per_seq": value}}))
    summary = report.summarise(report.collect_runs(tmp_path), ["nll_time_per_seq"])
    cells = sorted(zip(summary["config.gradients.options.c"], summary["n"], summary["mean"]))
    assert cells == [(0.5, 2, 1.5), (0.9, 1, 3.0)], cells


def test_bars_group_cells_by_the_data_they_were_tested_on(tmp_path, figures):
    """Cells of other data cuts (max_sequences ...) are columns of separate groups, interleaved input or not, with a
    dark line between groups and a caption saying so; within a group the light separators stay."""
    import pandas as pd

    rows = [{"dataset": "sim", "model": m, "parametrisation": p, "aggregator": "sum", "seed": 0, "split": 0,
             "config.data.max_sequences": cut, "nll_mark_per_seq": 100.0 + cut / 100, "run": f"/r/{m}{cut}{p}"}
            for m in ("thp", "lnm") for cut in (60, 200) for p in ("base", "plus")]  # model-major: cuts interleave
    plots.plot_metric_bars(pd.DataFrame(rows), tmp_path / "bars.png", ["nll_mark_per_seq"])
    fig = figures[0]
    ax = next(a for a in fig.axes if a.get_visible())
    ticks = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
    assert len(ticks) == 4
    cut_of_tick = ["max_sequences=60" in t for t in ticks]
    assert cut_of_tick == [True, True, False, False], ticks  # grouped by cut, in order of first appearance
    lines = [ln for ln in ax.get_lines() if ln.get_xdata()[0] in (0.5, 1.5, 2.5) and len(set(ln.get_xdata())) == 1]
    dark = sorted(ln.get_xdata()[0] for ln in lines if ln.get_linewidth() > 1)
    assert dark == [1.5]
    assert "tested on different data (max_sequences in the labels)" in fig._suptitle.get_text().replace("\n", " ")
    figures.clear()
    plots.plot_metric_bars(pd.DataFrame([r for r in rows if r["config.data.max_sequences"] == 60]),
                           tmp_path / "bars1.png", ["nll_mark_per_seq"])  # fmt: skip
    assert "different data" not in figures[0]._suptitle.get_text()


def test_cells_pooled_over_other_splits_are_not_ranked_against_each_other(tmp_path, figures):
    """A cell run on split 1 only was bolded against cells averaged over splits 0 and 1 (split 1 alone scores
    lower): rows are ranked only among the same splits / seeds, a `pooled` column names them, the CSV keeps them
    (and stays mtpp's), and the bar plot groups them apart with the pooled runs under each label."""
    import pandas as pd

    rows = [{"dataset": "sim", "model": m, "parametrisation": "base", "aggregator": "sum", "seed": 0, "split": sp,
             "nll_mark_per_seq": v, "run": f"/r/{m}{sp}"}
            for m, sp, v in (("lnm", 0, 12.0), ("lnm", 1, 11.0), ("thp", 0, 12.2), ("thp", 1, 11.2),
                             ("rmtpp", 1, 10.7))]  # fmt: skip
    df = pd.DataFrame(rows)
    summary = report.summarise(df, ["nll_mark_per_seq"])
    assert dict(zip(summary["model"], summary["replicates"])) == {
        "lnm": "splits 0, 1 x seed 0", "thp": "splits 0, 1 x seed 0", "rmtpp": "split 1 x seed 0"}
    md = report.format_markdown(summary)
    lines = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ") and "nll" not in ln}
    assert "**11.50 ± 0.50**" in lines["lnm"] and "**" not in lines["thp"]
    assert "**" not in lines["rmtpp"] and "split 1 x seed 0" in lines["rmtpp"]  # alone in its group: not bolded
    assert "| pooled |" in md
    out = tmp_path / "rep"
    report.write_summary(df, out, metrics=["nll_mark_per_seq"])
    csv = pd.read_csv(out / "summary.csv")
    assert list(csv.columns)[-8:] == ["replicates", "metric", "meaning", "unit", "mean", "stderr", "n", "runs"]
    report.write_summary(df, out, metrics=["nll_mark_per_seq"])  # its own files: rewritten, not refused
    plots.plot_metric_bars(df, tmp_path / "bars.png", ["nll_mark_per_seq"])
    fig = figures[-1]
    ax = next(a for a in fig.axes if a.get_visible())
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[-1].endswith("[split 1 x seed 0]") and all(t.endswith("[splits 0, 1 x seed 0]") for t in ticks[:2])
    assert "pooled over different splits / seeds" in fig._suptitle.get_text().replace("\n", " ")


def test_labels_show_the_settings_that_tell_cells_apart_before_redundant_ones() -> None:
    """Three THP cells: two differ from the third in max_sequences and max_epochs together, and from each other
    only in lr. Labels of two settings must name lr (the one that separates the last two), not max_epochs, which
    repeats what max_sequences says, with lr hidden behind '+1 more' and the cells numbered #1 / #2."""
    rows = [{"model": "thp", "parametrisation": "base", "config.data.max_sequences": ms,
             "config.train.max_epochs": ep, "config.train.lr": lr}
            for ms, ep, lr in ((300, 1, 1e-3), (None, 4, 1e-3), (None, 4, 1e-2))]  # fmt: skip
    df = pd.DataFrame(rows)
    labels = report.cell_labels(df, [c for c in df.columns if c.startswith("config.")])
    assert labels == ["THP (max_sequences=300, lr=0.001, +1 more)", "THP (max_sequences=all, lr=0.001, +1 more)",
                      "THP (max_sequences=all, lr=0.01, +1 more)"], labels  # fmt: skip
    # two cells that differ in both settings: both named, in the priority order
    two = report.cell_labels(df.iloc[:2], ["config.data.max_sequences", "config.train.max_epochs"])
    assert two == ["THP (max_sequences=300, max_epochs=1)", "THP (max_sequences=all, max_epochs=4)"], two


def test_report_of_one_run_draws_no_bars_and_says_why(tmp_path: Path, capsys) -> None:
    """One cell, one parametrisation: a bar panel would be one point on a zoomed axis, comparing nothing."""
    root = tmp_path / "runs"
    add_quick_run(root, np.random.default_rng(0))
    out = tmp_path / "report"
    assert main(["report", str(root), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert not (out / "plots" / "bars_synthetic_hawkes.png").exists()
    assert "no bars_synthetic_hawkes.png: one cell on synthetic_hawkes, nothing to compare" in cap.err
    assert (out / "plots" / "reliability_synthetic_hawkes.png").exists() and "summary.md" in cap.out
    # a second parametrisation of the cell is something to compare
    add_plusplus(root, np.random.default_rng(1))
    assert main(["report", str(root), "--out", str(tmp_path / "two")]) == 0
    assert (tmp_path / "two" / "plots" / "bars_synthetic_hawkes.png").exists()
    assert "no bars_" not in capsys.readouterr().err


def test_cells_told_apart_only_by_their_encoder_are_labelled_with_it() -> None:
    """GRU-THP and THP-THP are both named "THP" (the encoder is left out when it is GRU or the decoder's
    namesake): figures called them "THP #1" / "THP #2", which no table row names."""
    df = pd.DataFrame([{"model": "thp", "encoder": enc, "parametrisation": "base"} for enc in ("gru", "thp")])
    assert report.cell_labels(df, ["model", "encoder", "parametrisation"]) == ["THP (encoder=gru)",
                                                                               "THP (encoder=thp)"]
    alone = pd.DataFrame([{"model": "thp", "encoder": "thp", "parametrisation": p} for p in ("base", "plusplus")])
    assert report.cell_labels(alone, ["model", "encoder", "parametrisation"]) == ["THP", "THP++"]


def test_a_report_says_which_figures_are_left_from_an_earlier_one(runs_root: Path, tmp_path: Path, capsys) -> None:
    """A run moved out of the folder: the next report redraws every other figure; the moved run's cos_tm figure
    stays (mtpp deletes nothing) but is named as left over, so the folder is not read as one report."""
    out = tmp_path / "report"
    add_plusplus(runs_root, np.random.default_rng(1))
    assert main(["report", str(runs_root), "--out", str(out)]) == 0
    assert "from an earlier report" not in capsys.readouterr().err
    extra = out / "plots" / "cos_tm_synthetic_hawkes_old-cell.png"
    import shutil

    shutil.copy(out / "plots" / "cos_tm_synthetic_hawkes_thp-gru-sum.png", extra)  # an earlier report's figure
    assert main(["report", str(runs_root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "1 figure(s)" in err and "cos_tm_synthetic_hawkes_old-cell.png" in err and extra.exists()


def test_bars_of_one_value_get_a_readable_band_and_the_caption_names_only_what_is_drawn(tmp_path, figures) -> None:
    """Every conflict rate 1.0 zoomed to 0.999..1.001 (ticks at 1.00025); the caption promised NLL changes vs base
    for cells without a base, where none is drawn."""
    rows = [{"dataset": "sim", "model": "thp", "parametrisation": p, "seed": 0, "split": 0, "conflict_rate": 1.0,
             "nll_time_per_seq": 10.0 + (p == "plus"), "run": f"/r/{p}"} for p in ("plus", "plusplus")]
    plots.plot_metric_bars(pd.DataFrame(rows), tmp_path / "bars.png", ["conflict_rate", "nll_time_per_seq"])
    fig = figures[0]
    rate = next(a for a in fig.axes if "conflict" in a.get_title())
    low, high = rate.get_ylim()
    assert high - low >= 0.09 and low < 1.0 < high
    assert "change vs base" not in fig._suptitle.get_text()


def test_report_of_a_split_no_run_has_names_the_flag_as_typed(runs_root: Path, tmp_path: Path, capsys) -> None:
    """``--split train`` was refused as "--split train_eval", a value the user never typed."""
    assert main(["report", str(runs_root), "--out", str(tmp_path / "r"), "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert "--split train: no run under" in err and "--split train_eval" not in err
    assert "mtpp evaluate RUN --split train" in err


# ---------------------------------------------------------------------------------------------------------------
# Horizon metrics (mtpp evaluate RUN --horizon T): scored at one horizon each, never pooled or ranked across two

# (param, split) -> (horizon, horizon_otd, horizon_tmap); split 2 of plus was never evaluated with --horizon
HORIZONS = {("base", 0): (0.005, 0.02, 0.30), ("base", 1): (0.005, 0.03, 0.40), ("base", 2): (0.02, 0.10, 0.10),
            ("plus", 0): (0.02, 0.08, 0.20), ("plus", 1): (0.02, 0.12, 0.30)}


def add_horizon_metrics(root: Path) -> None:
    """What ``evaluate_run_horizon`` writes (flat keys, the horizon as ``horizon_window``) into the fixture's runs."""
    for (param, split), (horizon, otd, tmap) in HORIZONS.items():
        path = root / "synthetic_hawkes" / f"thp-{param}-sum" / f"split{split}-seed0" / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["test"].update(horizon_window=horizon, horizon_otd=otd, horizon_tmap=tmap, horizon_points=50,
                               horizon_tmap_deltas=[horizon / 10], horizon_baselines={"poisson": {"otd": 1.0}})
        path.write_text(json.dumps(metrics))


def _md_rows(md: str) -> list[dict[str, str]]:
    """The rows of the first table of ``md`` (the models'; baseline tables follow it)."""
    all_lines = md.splitlines()
    start = next(i for i, line in enumerate(all_lines) if line.startswith("| "))
    lines = []
    for line in all_lines[start:]:
        if not line.startswith("|"):
            break
        if line.startswith("| "):
            lines.append(line)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, [c.strip() for c in line.strip("|").split("|")])) for line in lines[1:]]


def test_horizon_metrics_are_never_pooled_or_ranked_across_horizons(runs_root: Path, tmp_path: Path) -> None:
    """The trial's report put OTD 0.0250 at horizon 0.005 beside 0.1000 at horizon 0.02 as comparable (and pooled
    runs of one cell scored at two horizons), with no horizon anywhere: the horizon is a column of the .md and
    .csv, one row per horizon, and horizon_* metrics are bolded only among rows of one horizon."""
    add_horizon_metrics(runs_root)
    df = report.collect_runs(runs_root)
    assert df.set_index(["parametrisation", "split"])[report.HORIZON_COLUMN].to_dict() == {
        ("base", 0): 0.005, ("base", 1): 0.005, ("base", 2): 0.02, ("plus", 0): 0.02, ("plus", 1): 0.02,
        ("plus", 2): pytest.approx(math.nan, nan_ok=True)}
    assert report.HORIZON_COLUMN not in report.cell_columns(df, ["nll_time_per_seq"])  # other tables: as before
    out = tmp_path / "rep"
    report.write_summary(df, out, metrics=["horizon_otd", "nll_time_per_seq"], stem="s")
    csv = pd.read_csv(out / "s.csv")
    otd = csv[csv["metric"] == "horizon_otd"].set_index(["parametrisation", "horizon"], drop=False)
    assert otd.at[("base", 0.005), "mean"] == pytest.approx(0.025) and otd.at[("base", 0.005), "n"] == 2
    assert otd.at[("base", 0.02), "mean"] == pytest.approx(0.10) and otd.at[("base", 0.02), "n"] == 1
    assert otd.at[("plus", 0.02), "mean"] == pytest.approx(0.10)
    assert list(csv.columns)[-8:] == ["replicates", "metric", "meaning", "unit", "mean", "stderr", "n", "runs"]
    md = (out / "s.md").read_text()
    rows = {(r["param"], r["horizon"]): r for r in _md_rows(md)}
    assert set(rows) == {("base", "0.005"), ("base", "0.02"), ("+", "0.02"), ("+", "–")}
    # base at 0.005 and + at 0.02 pool the same splits: their OTDs are not ranked, their NLLs are (plus: 8.5)
    assert "**" not in rows[("base", "0.005")]["horizon_otd ↓"] + rows[("+", "0.02")]["horizon_otd ↓"]
    assert rows[("+", "0.02")]["nll_time_per_seq ↓"].startswith("**8.5")
    assert "`horizon`: the time span after each prediction point" in md and "never pooled" in md


def test_a_run_never_evaluated_with_a_horizon_reads_not_evaluated(runs_root: Path, tmp_path: Path) -> None:
    """A run without horizon_* keys showed `n/a`, which the header defines as "the metric does not apply"."""
    add_horizon_metrics(runs_root)
    add_plusplus(runs_root, np.random.default_rng(2))  # no horizon evaluation, and a conflict rate that is n/a
    df = report.collect_runs(runs_root)
    md = report.format_markdown(report.summarise(df, ["horizon_tmap", "conflict_rate"]))
    rows = {(r["param"], r["horizon"]): r for r in _md_rows(md)}
    assert rows[("+", "–")]["horizon_tmap ↑"] == report.NOT_EVALUATED
    plusplus = rows[("++", "–")]
    assert plusplus["horizon_tmap ↑"] == report.NOT_EVALUATED and plusplus["conflict_rate"] == "n/a"
    assert rows[("base", "0.005")]["horizon_tmap ↑"].startswith("0.35")
    assert "not evaluated (horizon –): the row's runs were never evaluated with `--horizon`" in md


def test_bars_mark_a_horizon_metric_never_evaluated_as_such(runs_root: Path, tmp_path: Path, figures) -> None:
    """The bar plot wrote "n/a" (the metric does not apply) where summary.md says "not evaluated": a run never
    evaluated with --horizon; a conflict rate of "++" stays n/a."""
    add_horizon_metrics(runs_root)
    add_plusplus(runs_root, np.random.default_rng(2))
    df = report.collect_runs(runs_root)
    plots.plot_metric_bars(df, tmp_path / "bars.png", ["horizon_tmap", "conflict_rate"])
    fig = figures[-1]
    tmap_ax = next(a for a in fig.axes if a.get_visible() and "T-mAP" in a.get_title().replace("\n", " "))
    conflict_ax = next(a for a in fig.axes if a.get_visible() and a.get_title().startswith("gradient conflict"))
    assert {t.get_text() for t in tmap_ax.texts} == {report.NOT_EVALUATED}
    assert "n/a" in {t.get_text() for t in conflict_ax.texts}


def test_every_label_names_its_horizon_when_a_figure_holds_several() -> None:
    """The bars named the horizon only for a model whose cells differed in it ("LNM (horizon=0.1)" beside a bare
    "RMTPP" at the same horizon): with more than one horizon in a figure, every label says its own."""
    df = pd.DataFrame({"model": ["lnm", "lnm", "rmtpp"], "parametrisation": ["base", "plus", "base"],
                       report.HORIZON_COLUMN: [0.1, math.nan, 0.1]})
    labels = report.cell_labels(df, [report.HORIZON_COLUMN], with_param=False)
    assert labels == ["LNM (horizon=0.1)", "LNM (horizon=none)", "RMTPP (horizon=0.1)"]
    one = df.assign(**{report.HORIZON_COLUMN: 0.1})
    assert report.cell_labels(one, [report.HORIZON_COLUMN], with_param=False) == ["LNM", "LNM", "RMTPP"]


def test_horizon_bars_label_and_separate_the_horizons(runs_root: Path, tmp_path: Path, figures) -> None:
    """The bar plot of horizon metrics: one group per horizon, named in the label, dark lines between."""
    add_horizon_metrics(runs_root)
    df = report.collect_runs(runs_root)
    plots.plot_metric_bars(df, tmp_path / "bars.png", ["horizon_otd"])
    fig = figures[-1]
    ax = next(a for a in fig.axes if a.get_visible())
    ticks = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
    assert any("horizon=0.005" in t for t in ticks) and any("horizon=0.02" in t for t in ticks), ticks
    assert any("horizon=none" in t for t in ticks), ticks
    assert "scored at different horizons" in fig._suptitle.get_text().replace("\n", " ")


def test_report_command_of_horizon_metrics(runs_root: Path, tmp_path: Path, capsys) -> None:
    """The trial's command: `mtpp report ROOT --metrics horizon_tmap horizon_otd --no-plots` names the horizon of
    each row; the horizon column is not offered as a metric."""
    add_horizon_metrics(runs_root)
    out = tmp_path / "rep"
    assert main(["report", str(runs_root), "--metrics", "horizon_tmap", "horizon_otd", "--out", str(out),
                 "--no-plots"]) == 0
    md = (out / "summary_test_horizon_tmap_horizon_otd.md").read_text()
    assert "| horizon |" in md and "| 0.005 |" in md and report.NOT_EVALUATED in md
    assert main(["report", str(runs_root), "--out", str(out), "--metrics", "nope"]) == 2
    available = capsys.readouterr().err.split("available: ")[1].strip().split(", ")
    assert "horizon_tmap" in available and report.HORIZON_COLUMN not in available


def test_one_column_has_one_precision() -> None:
    """summary.md printed `1.000 ± –` and `0.00 ± –` in one conflict_rate column (each row's own 4 significant
    digits, 2 decimals for a 0), and `0.00 ± –` for a T-mAP of 0 beside 0.0123: the decimals are the column's."""
    rows = [{"dataset": "sim", "model": model, "metric": metric, "mean": mean, "stderr": math.nan, "n": 1}
            for model, values in (("lnm", (1.0, 0.0)), ("thp", (0.0, 0.0123)), ("rmtpp", (math.nan, 0.5)))
            for metric, mean in zip(("conflict_rate", "horizon_tmap"), values)]
    md = report.format_markdown(pd.DataFrame(rows))
    cells = {r["model"]: (r["conflict_rate"], r["horizon_tmap ↑"]) for r in _md_rows(md)}
    assert cells == {"lnm": ("1.000 ± –", "0.0000 ± –"), "thp": ("0.000 ± –", "0.0123 ± –"),
                     "rmtpp": ("n/a", "**0.5000 ± –**")}
    assert report.format_mean_se(0.0, math.nan) == "0.00 ± –"  # alone (a figure's title): its own digits
    assert report.column_decimals([math.nan, 0.0]) == 2 and report.column_decimals([123.4, -0.5]) == 1


def test_the_stated_precision_rule_is_the_one_applied() -> None:
    """summary.md's header (and docs/guide/reports.md) said "4 significant digits of its largest mean", but the
    decimals are capped at 4 and floored at 1: an ECE column of 0.0430 and 0.0058 prints 3 and 2 significant digits,
    a column of 21412.3 prints 6. The header now states the cap and the floor, and this is what is applied."""
    assert report.column_decimals([0.0430, 0.0058]) == 4 and report.column_decimals([21412.3, 9.1]) == 1
    rows = [{"dataset": "sim", "model": model, "metric": "ece_forecast", "mean": mean, "stderr": math.nan, "n": 1}
            for model, mean in (("lnm", 0.0430), ("thp", 0.0058))]
    md = report.format_markdown(pd.DataFrame(rows))
    cells = {r["model"]: r["ece_forecast ↓"] for r in _md_rows(md)}
    assert cells == {"lnm": "0.0430 ± –", "thp": "**0.0058 ± –**"}
    assert "at most 4 decimals" in md and "at least 1" in md
    guide = (Path(__file__).resolve().parent.parent / "docs" / "guide" / "reports.md").read_text()
    assert "at most 4 decimals" in " ".join(guide.split())


def test_a_report_of_the_given_time_ece_draws_the_given_time_reliability(runs_root, tmp_path, figures):
    """``mtpp report --metrics ece_given_time`` tabulates the ECE of ``p(k | tau, H)``: its reliability figure is the
    diagram of that distribution, with that ECE, not the forecast's (a number absent from its table)."""
    for run in sorted(runs_root.glob("synthetic_hawkes/thp-*-sum/split*-seed0")):
        if not (run / "metrics.json").is_file():
            continue
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["test"]["ece_given_time"] = 0.2  # the forecast's is 0.03 + 0.01 * split
        (run / "metrics.json").write_text(json.dumps(metrics))
        for name in ("arrays_test.json", "arrays.json"):
            if (run / name).is_file():
                arrays = json.loads((run / name).read_text())
                test = arrays.get("test", arrays)
                test.update({k.replace("_forecast", "_given_time"): v for k, v in _arrays(np.random.default_rng(3)).items()
                             if k.startswith("reliability_")})
                test["reliability_count_given_time"] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 40]  # all in the top bin
                (run / name).write_text(json.dumps(arrays))
    assert plots.reliability_kind(["pce", "ece_given_time"]) == "given_time"
    assert plots.reliability_kind(["ece_forecast", "ece_given_time"]) == plots.reliability_kind(None) == "forecast"
    for metrics, words, ece, top in ((["pce", "ece_given_time"], "p(k | τ, H), given the time", "0.2000", "100%"),
                                     (None, "the forecast p(k | H)", "0.0400", "27%")):
        figures.clear()
        plots.make_all_plots(runs_root, tmp_path / f"plots_{ece}", metrics=metrics)
        (fig,) = [f for f in figures if f._suptitle is not None and "mark reliability" in f._suptitle.get_text()]
        assert f"mark reliability of {words}" in " ".join(fig._suptitle.get_text().split())
        titles = [a.get_title() for a in fig.axes if a.get_title()]
        assert any(t.startswith("THP:") and t.endswith(f"ECE {ece} ± 0.0058" if ece == "0.0400" else f"ECE {ece} ± 0.0000")
                   for t in titles), titles
        assert top in [t.get_text() for a in fig.axes for t in a.texts]  # the pooled bins are that distribution's


def test_report_says_which_skipped_runs_are_still_training(runs_root: Path, tmp_path: Path, capsys) -> None:
    """``mtpp report`` of a grid that ``mtpp compare`` is still training listed the cells in progress as
    'skipped (no metrics.json)', as if they had failed; a folder another process holds is now said to be training,
    naming the holder, and an abandoned one to be interrupted or failed."""
    import os

    from mtpp.runs import RunLock

    training, abandoned = runs_root / "training", runs_root / "abandoned"
    abandoned.mkdir()
    (abandoned / "config.yaml").write_text("{}\n")
    with RunLock(training):
        (training / "config.yaml").write_text("{}\n")
        assert main(["report", str(runs_root), "--out", str(tmp_path / "r"), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert f"skipped (no metrics.json yet: still training, in use by pid {os.getpid()} " in err
    assert f"{training}\n" in err
    assert f"skipped (no metrics.json: interrupted, failed or not finished): {abandoned}\n" in err


def test_a_coverage_panel_draws_the_level_it_is_calibrated_at(tmp_path, figures):
    """The bars of horizon_next_interval_coverage (0.65 .. 0.88 on MOOC, level 0.9) were zoomed to the values with
    no reference: the best-looking point was not visibly the calibrated one. Now the panel draws the level, inside
    the axis; a panel of another metric draws none."""
    import pandas as pd

    rows = [{"dataset": "sim", "model": model, "parametrisation": p, "aggregator": "sum", "seed": 0, "split": 0,
             "first_event": "skip", "horizon": 2.0, "horizon_next_interval_coverage": cov,
             "horizon_next_interval_level": 0.8, "horizon_tmap": 0.2, "run": f"/r/{model}{p}"}
            for model, p, cov in (("lnm", "base", 0.6), ("lnm", "plus", 0.65), ("thp", "base", 0.7))]
    plots.plot_metric_bars(pd.DataFrame(rows), tmp_path / "bars.png",
                           ["horizon_next_interval_coverage", "horizon_tmap"])
    fig = figures[0]
    cov = next(a for a in fig.axes if a.get_title().startswith("share of next gaps"))
    lines = [ln for ln in cov.get_lines() if list(ln.get_ydata()) == [0.8, 0.8]]
    assert len(lines) == 1 and lines[0].get_linestyle() == "--"
    low, high = cov.get_ylim()
    assert low < 0.6 and high > 0.8  # the level is inside the zoomed axis
    assert "calibrated: 0.8" in _texts(fig)
    tmap = next(a for a in fig.axes if a.get_title().startswith("T-mAP"))
    assert not [ln for ln in tmap.get_lines() if list(ln.get_ydata()) == [0.8, 0.8]]


# ---------------------------------------------------------------------------------------------------------------
# Figures at the edges a paper meets: long model names, many cells, one epoch, diverged runs


def make_cells(root: Path, names: list[str], params=("base", "plus"), epochs: int = 3, seeds=(0,),
               dataset: str = "synthetic_hawkes") -> None:
    """One run per (model name, parametrisation, seed), named by ``cell.json`` as ``mtpp compare`` does: metrics,
    a log with ``epochs`` validation records and cosines, and the plot arrays."""
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        for p in params:
            for seed in seeds:
                run = root / dataset / f"{name}-{p}-sum" / f"split0-seed{seed}"
                run.mkdir(parents=True)
                model = {"encoder": "gru", "decoder": "thp", "parametrisation": p, "first_event": "skip"}
                (run / "config.yaml").write_text(yaml.safe_dump({"data": {"name": dataset, "split": 0},
                                                                 "model": model, "train": {"seed": seed}}))
                (run / "cell.json").write_text(json.dumps({"dataset": dataset, "model": name, "parametrisation": p,
                                                           "aggregator": "sum", "split": 0, "seed": seed}))
                test = {"nll_time_per_seq": 10.0 + i + seed, "nll_mark_per_seq": 5.0 + (p == "plus"), "pce": 0.05,
                        "ece_forecast": 0.03, "mae_tau": 0.4 + 0.01 * i, "conflict_rate": 0.4, "first_event": "skip"}
                (run / "metrics.json").write_text(json.dumps({"test": test, "val": test}))
                log = [r for r in _log(p, 0, rng) if r.get("kind") == "step" or r["epoch"] < epochs]
                (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
                (run / "arrays_test.json").write_text(json.dumps(_arrays(rng)))


def _overlap(a, b) -> bool:
    return a.width > 0 and b.width > 0 and a.overlaps(b)


def test_a_long_model_name_is_wrapped_in_every_figure_not_run_into_the_next_panel(tmp_path, figures):
    """A 70-character model name without spaces: the bars' tick labels squeezed every panel to a sliver
    (constrained layout "collapsed to zero"), and the reliability / PIT panel titles ran into each other."""
    long = "a_very_long_model_name_with_many_settings_lnm_gru_hidden16_components4"
    make_cells(tmp_path / "runs", [long, "thp"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied because axes sizes collapsed to zero"
        plots.make_all_plots(tmp_path / "runs", tmp_path / "plots")
    kinds = {" ".join(f._suptitle.get_text().split())[:60]: f for f in figures}
    assert len(figures) >= 5, list(kinds)
    for title, fig in kinds.items():
        fig.canvas.draw()
        panels = [a for a in fig.axes if a.get_visible() and a.get_label() != "<colorbar>" and a.get_title()
                  or a.get_xlabel()]
        for ax in panels:  # every panel keeps a readable share of the figure
            assert ax.get_position().width > 0.15, (title, ax.get_title())
        boxes = [a.title.get_window_extent() for a in panels if a.get_title()]
        for i, a in enumerate(boxes):
            assert not any(_overlap(a, b) for b in boxes[i + 1:]), title
        legends = [leg.get_window_extent() for leg in fig.legends]
        assert all(b.x0 >= -1 and b.x1 <= fig.bbox.width + 1 for b in legends), title  # the legend fits too
        box = fig.get_tightbbox()
        assert box.x0 >= -0.01 and box.x1 <= fig.get_figwidth() + 0.01, title


def test_bars_of_many_cells_stay_within_a_page_width(tmp_path, figures):
    """15 models x base / + in three columns of panels made a 51-inch-wide figure (5626 pixels), unreadable at any
    page's width; now panels go below one another once three (or two) side by side would pass 16 inches, and no two
    tick labels of a panel overlap."""
    make_cells(tmp_path / "runs", [f"model{i:02d}" for i in range(15)])
    df = report.collect_runs(tmp_path / "runs")
    metrics = ["nll_time_per_seq", "nll_mark_per_seq", "pce", "mae_tau"]
    plots.plot_metric_bars(df, tmp_path / "bars.png", metrics)
    (fig,) = figures
    assert fig.get_figwidth() <= 16.0  # plots.MAX_FIGURE_WIDTH
    panels = [a for a in fig.axes if a.get_visible()]
    assert len(panels) == len(metrics)  # every metric still has its panel
    fig.canvas.draw()
    for ax in panels:
        assert len(ax.get_xticklabels()) == 15
        boxes = [t.get_window_extent() for t in ax.get_xticklabels()]
        assert all(not a.overlaps(b) for a, b in zip(boxes, boxes[1:])), ax.get_title()
    # a few cells keep three panels side by side as before
    figures.clear()
    plots.plot_metric_bars(df[df["model"].isin(["model00", "model01"])], tmp_path / "few.png", metrics)
    assert len({round(a.get_position().x0, 2) for a in figures[0].axes if a.get_visible()}) == 3


def test_reliability_discs_at_the_edges_are_drawn_whole(tmp_path, figures):
    """One mark (every confidence and accuracy 1) or a sure model put the largest disc on the frame's corner, where
    the axes cut three quarters of it off; so did a bin at confidence 0 (200 marks)."""
    run = tmp_path / "runs" / "sure"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"decoder": "lnm", "parametrisation": "base"}}))
    (run / "metrics.json").write_text(json.dumps({"test": {"nll_time_per_seq": 1.0, "ece_forecast": 0.01}}))
    arrays = {"reliability_edges_forecast": list(np.linspace(0, 1, 11)),
              "reliability_count_forecast": [300] + [0] * 8 + [700],
              "reliability_confidence_forecast": [0.01] + [None] * 8 + [1.0],
              "reliability_accuracy_forecast": [0.0] + [None] * 8 + [1.0]}
    (run / "arrays_test.json").write_text(json.dumps(arrays))
    plots.plot_reliability(report.collect_runs(tmp_path / "runs"), tmp_path / "rel.png")
    (fig,) = figures
    fig.canvas.draw()
    ax = next(a for a in fig.axes if a.get_title())
    frame = ax.get_window_extent()
    discs = [c for c in ax.collections if len(c.get_offsets())]
    assert sum(len(c.get_offsets()) for c in discs) == 2  # the two bins with events
    for c in discs:
        assert not c.get_clip_on()  # the frame cuts no disc
        centres = c.get_offset_transform().transform(c.get_offsets())
        assert all(frame.x0 < x < frame.x1 and frame.y0 < y < frame.y1 for x, y in centres)  # inside, not on it
        r = np.sqrt(c.get_sizes()).max() / 2 * fig.dpi / 72  # marker size is the area in points^2
        assert all(min(x - frame.x0, frame.x1 - x, y - frame.y0, frame.y1 - y) > 0.5 * r for x, y in centres)


def _edit_log(run: Path, epoch: int, **values) -> None:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    for r in records:
        if r.get("kind") == "epoch" and r["epoch"] == epoch:
            r.update(values)
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_validation_curves_of_one_epoch_have_whole_epoch_ticks(tmp_path, figures):
    """A one-epoch run's axis was ticked 0.945, 0.960, ... 1.050 epochs."""
    make_cells(tmp_path / "runs", ["thp"], params=("base",), epochs=1)
    plots.plot_validation_curves(report.collect_runs(tmp_path / "runs"), tmp_path / "v.png")
    (fig,) = figures
    fig.canvas.draw()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks == [0.0], ticks  # _log numbers epochs from 0


def test_validation_curves_mark_diverged_epochs_instead_of_dropping_them_or_flattening_the_rest(tmp_path, figures):
    """An epoch with a null validation loss (the trainer writes NaN / inf as null) was left out without a word, and
    one run diverging to 8.3e7 nats (a finite value) squeezed every other curve into a flat line at the bottom."""
    make_cells(tmp_path / "runs", ["lnm", "thp"], params=("base",))
    root = tmp_path / "runs" / "synthetic_hawkes"
    _edit_log(root / "lnm-base-sum" / "split0-seed0", 2, val_nll_time_per_seq=None)
    _edit_log(root / "thp-base-sum" / "split0-seed0", 2, val_nll_time_per_seq=8.3e7)
    plots.plot_validation_curves(report.collect_runs(tmp_path / "runs"), tmp_path / "v.png")
    (fig,) = figures
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert low < 18.0 and 20.0 < high < 100  # the other values (18 and 20 nats) fill the axis
    edge = {line.get_marker(): list(line.get_xdata()) for line in ax.get_lines() if line.get_linestyle() == "None"}
    assert edge["x"] == [2.0] and edge["^"] == [2.0]  # the null epoch and the diverged value, at their epoch
    text = fig._suptitle.get_text()
    assert "×: an epoch whose validation loss is not finite" in text and "▲ / ▼: values beyond the axis" in text
    # the mark panel of the same runs has neither: no marker, no note about it is drawn there
    assert not [line for line in fig.axes[1].get_lines() if line.get_linestyle() == "None"]


def test_validation_curves_of_more_cells_than_colours_stay_distinct(tmp_path, figures):
    """tab20 has 20 colours: cells 1 and 21 (both base, solid) were drawn identically."""
    make_cells(tmp_path / "runs", [f"m{i:02d}" for i in range(22)], params=("base",), epochs=2)
    plots.plot_validation_curves(report.collect_runs(tmp_path / "runs"), tmp_path / "v.png")
    (fig,) = figures
    import matplotlib.colors as mcolors

    looks = [(mcolors.to_hex(h.get_color()), h.get_linestyle(), h.get_marker()) for h in fig.legends[0].legend_handles]
    assert len(looks) == 22 and len(set(looks)) == 22


def test_bar_titles_name_the_datas_time_unit_as_the_tables_do(tmp_path, figures):
    """The MAE panel of a taxi report said "(the data's time units)" where summary.md's unit column says hours."""
    rows = [{"dataset": "taxi", "model": "lnm", "parametrisation": p, "aggregator": "sum", "seed": 0, "split": 0,
             "mae_tau": 0.4 + 0.1 * (p == "plus"), "nll_time_per_seq": 3.0, "run": f"/r/{p}"} for p in ("base", "plus")]
    plots.plot_metric_bars(pd.DataFrame(rows), tmp_path / "bars.png", ["mae_tau", "nll_time_per_seq"])
    titles = [" ".join(a.get_title().split()) for a in figures[0].axes if a.get_title()]
    assert any(t.startswith("absolute error of the median gap (hours)") for t in titles), titles
    assert report.metric_unit("mae_tau", "taxi") == "hours"
    assert any(t.startswith("time NLL per sequence (nats)") for t in titles)
    # a dataset with no documented unit keeps the words the tables use for it
    figures.clear()
    plots.plot_metric_bars(pd.DataFrame(rows).assign(dataset="synthetic_hawkes"), tmp_path / "b2.png", ["mae_tau"])
    titles = [" ".join(a.get_title().split()) for a in figures[0].axes if a.get_title()]
    unit = report.metric_unit("mae_tau", "synthetic_hawkes")
    assert titles[0].startswith(f"absolute error of the median gap ({unit})")


def test_cos_tm_counts_only_finite_cosines_as_measured_steps(tmp_path, figures):
    """A log with NaN cosines (written by hand or by another tool: mtpp writes null) counted them as measured,
    non-conflicting steps: "++: conflict 0% (8 steps)" for a parametrisation that shares nothing, and every rate
    diluted; the trainer's conflict_rate leaves them out."""
    from mtpp.training.gradients import conflict_rate

    rng = np.random.default_rng(0)
    measured = [float(np.tanh(rng.normal(-0.2, 0.3))) for _ in range(8)]
    for param, cos in (("base", measured + [math.nan] * 8), ("plusplus", [math.nan] * 8)):
        run = tmp_path / "runs" / f"lnm-{param}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"data": {"name": "synthetic_hawkes"},
                                                         "model": {"decoder": "lnm", "parametrisation": param}}))
        (run / "metrics.json").write_text(json.dumps({"test": {"nll_time_per_seq": 1.0}}))
        lines = [json.dumps({"kind": "step", "step": i, "cos_tm": c, "cos_tm/encoder": c}) for i, c in enumerate(cos)]
        (run / "log.jsonl").write_text("\n".join(lines) + "\n")  # json writes NaN
    df = report.collect_runs(tmp_path / "runs")
    assert plots.plot_cos_tm(df, tmp_path / "cos.png") is not None
    (fig,) = figures
    texts = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    rate = conflict_rate(measured + [math.nan] * 8)  # the trainer's: NaN steps are not measured
    assert texts == [f"base: conflict {100 * rate:.0f}% (8 steps, 1 run)"], texts  # no "++" entry: it has no cosine
    assert "++ shares no parameter: no cosine" in " ".join(fig._suptitle.get_text().split())


def test_cos_tm_histograms_keep_each_shape_visible_where_they_overlap(runs_root, tmp_path, figures):
    """Base and + were two translucent fills: where they overlapped they made a third colour (brown) that no legend
    entry names, and neither shape could be traced through it. Each now has an opaque outline in its colour."""
    import matplotlib.colors as mcolors

    df = report.collect_runs(runs_root)
    plots.plot_cos_tm(df, tmp_path / "cos.png")
    (fig,) = figures
    for ax in [a for a in fig.axes if a.get_legend()]:
        names = [t.get_text().split(":")[0] for t in ax.get_legend().get_texts()]
        assert len(ax.patches) == len(names)  # one shape per parametrisation, not 40 bars each
        for patch, name in zip(ax.patches, names):
            param = {"base": "base", "+": "plus"}[name]
            assert mcolors.to_hex(patch.get_edgecolor()) == mcolors.to_hex(plots.PARAM_COLORS[param])
            assert patch.get_edgecolor()[3] == 1.0 and patch.get_facecolor()[3] < 0.5  # opaque edge, light fill


def test_rows_trained_with_other_settings_are_said_under_the_table(runs_root: Path, tmp_path: Path) -> None:
    """A cell trained with another budget (``--set train.max_epochs=3`` for one cell of a grid, 2 for the rest) sat
    in the same table, bolded best, with nothing to say its budget differed (a new user's trial). The summary now
    lists such training settings per dataset, naming the runs of the minority; settings that vary inside a cell
    are cell columns already and are not repeated, nor are the non-semantic ones (device) or the seed."""
    for run in sorted(runs_root.glob("synthetic_hawkes/*/split*-seed0")):
        path = run / "config.yaml"
        config = yaml.safe_load(path.read_text())
        if "train" in config:
            config["train"]["max_epochs"] = 3 if "base" in run.parent.name and run.name == "split1-seed0" else 2
            path.write_text(yaml.safe_dump(config))
    df = report.collect_runs(runs_root)
    assert report.setting_notes(df) == []  # max_epochs varies inside the base cell: a cell column, shown already
    df = df[~df["run"].astype(str).str.contains("base-sum/split[02]")]  # base keeps split 1 only: not inside a cell
    notes = report.setting_notes(df)
    assert notes == ["synthetic_hawkes: `train.max_epochs` 2 (3 runs), 3 (1 run: "
                     "synthetic_hawkes/thp-base-sum/split1-seed0)"]
    report.write_summary(df, tmp_path, metrics=SUMMARY_METRICS)
    md = (tmp_path / "summary.md").read_text()
    assert "**Training settings that differ between rows of one dataset**" in md and f"- {notes[0]}" in md
    same = report.collect_runs(runs_root)
    same = same[same["run"].astype(str).str.contains("plus-sum")]  # train.device differs too: not semantic
    assert report.setting_notes(same) == []


def test_setting_notes_skip_the_plusplus_protocol_and_count_old_runs_at_the_defaults(runs_root: Path) -> None:
    """The paper grid's "++" cells stop time and mark separately (``train.separate_early_stopping``, refused for
    base / "+"): every summary listed that as a difference; it is now compared among the "++" rows only. A run
    written before a setting existed trained with its default: not a difference from runs that state it."""
    from mtpp.config import RunConfig

    default = RunConfig().train.max_epochs
    for run in sorted(runs_root.glob("synthetic_hawkes/thp-plus-sum/split*-seed0")):
        path = run / "config.yaml"
        config = yaml.safe_load(path.read_text())
        config["model"]["parametrisation"] = "plusplus"
        config["train"]["separate_early_stopping"] = True
        if run.name != "split0-seed0":
            config["train"]["max_epochs"] = default  # split 0 predates the key: the default, unstated
        path.write_text(yaml.safe_dump(config))
    df = report.collect_runs(runs_root)
    assert set(df["parametrisation"]) == {"base", "plusplus"}
    assert report.setting_notes(df) == []
