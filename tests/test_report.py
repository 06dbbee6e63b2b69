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
            test.update(nll_time_per_event=test["nll_time_per_seq"] / 10, mrr=0.7, pce=0.05, ece=0.04)
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
    assert "## synthetic_hawkes" in md
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


def test_single_run_cells_show_a_dash_for_the_standard_error(runs_root: Path) -> None:
    df = report.collect_runs(runs_root)
    one = df[df["split"] == 0]
    summary = report.summarise(one, ["nll_time_per_seq"])
    assert summary["n"].tolist() == [1, 1] and summary["stderr"].isna().all()
    md = report.format_markdown(summary)
    assert "10.00 ± –" in md and "**8.000 ± –**" in md


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
    assert main(["report", str(tmp_path / "missing")]) == 2
