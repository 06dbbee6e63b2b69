"""RESULTS.md / BENCHMARKS.md generation (``mtpp.experiments_tables``, ``scripts/results_md.py``) from synthetic
records, and the published values against the text they cite."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest

from mtpp import experiments_tables as tables
from mtpp.records import write_record

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "results" / "published"


def record(dataset: str, model: str, param: str, split: int, agg: str = "sum", **test: float) -> dict:
    return {
        "record_version": 1,
        "cell": {"name": f"{dataset}/{model}-{param}-{agg}/split{split}-seed0", "dataset": dataset, "model": model,
                 "parametrisation": param, "aggregator": agg, "split": split, "seed": 0},  # fmt: skip
        "config": {"run_info": {"device": "cpu", "threads": 1, "written": f"2026-12-04T1{split}:00:00+0000"}},
        "metrics": {"test": test},
        "epochs": 10 + split, "best_epoch": 5, "wall_seconds": 600.0, "epoch_seconds": 2.0,
        "validation_seconds": 60.0, "conflict_rate": None if param == "plusplus" else 0.75,
        "cos_tm_histogram": None if param == "plusplus" else [3] + [0] * 38 + [1],
        "cos_tm_bins": [-1.0, 1.0, 40],
    }  # fmt: skip


def grid(tmp_path: Path) -> Path:
    """lnm base (3 splits) and ++ (2 splits, no forecast accuracy); rmtpp with no metric; thp sum vs pcgrad."""
    folder = tmp_path / "results"
    recs = [record("mooc", "lnm", "base", s, nll_time_per_seq=-300.0 - 2 * s, nll_mark_per_seq=80.0,
                   accuracy_forecast=0.4, accuracy_given_time=0.40 + 0.02 * s) for s in range(3)]  # fmt: skip
    recs += [record("mooc", "lnm", "plusplus", s, nll_time_per_seq=-305.0 - s, accuracy_given_time=[0.50, 0.49][s])
             for s in range(2)]  # fmt: skip
    recs += [{**record("mooc", "rmtpp", "base", 0), "metrics": {}, "wall_seconds": None, "epoch_seconds": None}]
    recs += [record("mooc", "thp", "base", s, agg=a, nll_time_per_seq=-250.0 + s + (a == "pcgrad"))
             for s in range(2) for a in ("sum", "pcgrad")]  # fmt: skip
    for r in recs:
        write_record(folder, r["cell"]["name"], r)
    return folder


def load_script(monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("results_md", ROOT / "scripts" / "results_md.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "results_md", module)
    spec.loader.exec_module(module)
    return module


def test_mean_se_and_paired_differences_equal_hand_computed_values(tmp_path: Path) -> None:
    from mtpp.records import read_records

    cells = tables.group(read_records(grid(tmp_path)))
    base, pp = cells[("mooc", "lnm", "base", "sum")], cells[("mooc", "lnm", "plusplus", "sum")]
    m, se, n = tables.mean_se(tables.metric(r, "nll_time_per_seq") for r in base)  # -300, -302, -304
    assert (m, n) == (-302.0, 3) and se == pytest.approx(2 / math.sqrt(3))
    d = tables.paired(base, pp, "nll_time_per_seq")  # splits 0, 1: -5, -4
    assert d[0] == pytest.approx(-4.5) and d[1] == pytest.approx(0.5) and d[2] == 2
    d = tables.paired(base, pp, "accuracy_given_time")  # 0.10, 0.07
    assert d[0] == pytest.approx(0.085) and d[1] == pytest.approx(0.015)
    assert tables.paired(base, pp, "accuracy_forecast") is None
    assert tables.histogram_stats(base[0]) == pytest.approx((0.75, (3 * -0.975 + 0.975) / 4))
    text = "\n".join(tables.dataset_tables(cells, "mooc"))
    assert "| lnm base | 3 (0, 1, 2) | -302.0 ± 1.2 | 80.0 ± 0.0 | n/a | 0.750 ± 0.000 | 10 (5), 11 (5), 12 (5) |" in text
    assert tables._epochs({"epochs": 9, "best_epoch": 4, "metrics": {"train": {"skipped_batches": 3}}}) \
        == "9 (4, 3 steps skipped)"
    assert "| lnm | base → ++ | 2 | -4.50 ± 0.50 | n/a | n/a | +0.0850 ± 0.0150 |" in text
    assert "| lnm ++ | 2 (0, 1) | -305.5 ± 0.5 | n/a | n/a | n/a |" in text  # nothing shared: conflict n/a
    # the paper's claim, checked by counting decoders whose paired difference improves (and significantly)
    assert "Against the paper's claim: disjoint parametrisations show" in text
    # L_T: -4.5 ± 0.5 (t = 9); accuracy given time: +0.085 ± 0.015 (t = 5.7): with two pairs neither passes the
    # paired t-test at 5 % (t > 12.7); nothing else is paired
    assert ("- base → ++, decoders improved (paired by split; pairs: lnm 2): L_T/seq 1 of 1, 0 significant; acc. "
            "given time 1 of 1, 0 significant.") in text
    assert tables.significant((-4.5, 0.5, 2)) == 0 and tables.significant((-4.5, 0.5, 3)) == -1  # t = 9 > 4.30
    assert tables.significant((0.085, 0.015, 5)) == 1 and tables.significant((1.0, None, 1)) == 0
    assert "- base → +," not in text


def test_the_at_a_glance_table_counts_what_the_claim_checks_count() -> None:
    """One row per dataset and change: improved / decoders, with the significant ones where a test is possible (two
    splits or more) and the significantly worse ones; one split gives signs only; a metric no decoder pairs is
    n/a. The counts are the per-dataset claim check's."""
    base, plus = [0.45, 0.46, 0.47], [0.43, 0.445, 0.452]  # forecast accuracy: significantly worse for lnm
    recs = [record("mooc", "lnm", "base", s, accuracy_forecast=base[s], nll_time_per_seq=-300.0 - s)
            for s in range(3)]
    recs += [record("mooc", "lnm", "plus", s, accuracy_forecast=plus[s], nll_time_per_seq=-305.0 - s * 1.1)
             for s in range(3)]  # L_T lower by 5.0, 5.1, 5.2: significant
    recs += [record("mooc", "thp", p, s, accuracy_forecast=0.4 + (p == "plus") * 0.01 * (s + 1),
                    nll_time_per_seq=-200.0) for p in ("base", "plus") for s in range(3)]
    recs += [record("lastfm", "lnm", p, 0, nll_time_per_seq=-1000.0 - (p == "plusplus")) for p in ("base", "plusplus")]
    cells = tables.group(recs)
    text = "\n".join(tables.claims_summary(cells, ["mooc", "lastfm", "reddit"]))
    assert "| mooc | base → + | 3 | 1/2 (1 sig.) | n/a | n/a | n/a | 1/2 (0 sig., 1 sig. worse) | n/a | n/a |" in text
    assert "| lastfm | base → ++ | 1 | 1/1 | n/a | n/a | n/a | n/a | n/a | n/a |" in text
    assert "reddit" not in text and "| mooc | base → ++" not in text and "| lastfm | base → + |" not in text
    claim = "\n".join(tables.claim_check(cells, "mooc"))
    assert "L_T/seq 1 of 2 (lnm), 1 significant" in claim
    assert "acc. forecast 1 of 2 (thp), 0 significant, significantly worse: lnm" in claim
    assert tables.claims_summary(tables.group([]), ["mooc"]) == []
    # a metric some of a decoder's pairs lack (L_T binned on split 0 only) is marked: tested over fewer splits
    binned = [r for r in recs if not (r["cell"]["model"] == "lnm" and r["cell"]["split"] == 0)]
    binned += [record("mooc", "lnm", p, 0, accuracy_forecast=[0.45, 0.43][p == "plus"],
                      nll_time_per_seq=[-300.0, -305.0][p == "plus"],
                      nll_time_binned_per_seq=[300.0, 299.0][p == "plus"]) for p in ("base", "plus")]
    text = "\n".join(tables.claims_summary(tables.group(binned), ["mooc"]))
    assert "| mooc | base → + | 3 | 1/2 (1 sig.) | 1/1* |" in text and "`*`: some decoder pairs this metric" in text


def test_the_claim_check_names_decoders_that_got_significantly_worse() -> None:
    """A change that hurts (forecast accuracy -0.0177 ± 0.0015 over three splits, t = 12.2 > 4.30) is named, not
    only left uncounted; over the first two splits alone (t = 7 < 12.7) it is not called significant."""
    base, plus = [0.45, 0.46, 0.47], [0.43, 0.445, 0.452]
    recs = [record("mooc", "lnm", "base", s, accuracy_forecast=base[s]) for s in range(3)]
    recs += [record("mooc", "lnm", "plus", s, accuracy_forecast=plus[s]) for s in range(3)]
    text = "\n".join(tables.claim_check(tables.group(recs), "mooc"))
    assert ("- base → +, decoders improved (paired by split; pairs: lnm 3): acc. forecast 0 of 1, 0 significant, "
            "significantly worse: lnm.") in text
    two = [r for r in recs if r["cell"]["split"] < 2]
    text = "\n".join(tables.claim_check(tables.group(two), "mooc"))
    assert "(paired by split; pairs: lnm 2): acc. forecast 0 of 1, 0 significant." in text
    # the note under the lines gives the t threshold of the pair counts tested, not of a fixed list
    assert "`|mean / SE| > t(0.975, pairs - 1)`, which is 12.71 with 2 pairs; a decoder" in text
    four = recs + [record("mooc", "thp", p, s, accuracy_forecast=0.4) for p in ("base", "plus") for s in range(4)]
    text = "\n".join(tables.claim_check(tables.group(four), "mooc"))
    assert "which is 4.30 with 3 pairs, 3.18 with 4; a decoder with one pair" in text


def test_missing_metrics_show_na_and_remedies_table(tmp_path: Path) -> None:
    from mtpp.records import read_records

    records = read_records(grid(tmp_path))
    published = [{"dataset": "mooc", "model": "lnm", "parametrisation": "base", "metric": "nll_time_per_seq",
                  "value": -310.0, "se": 1.5, "source": "Table 1"},
                 {"dataset": "mooc", "model": "fnn", "parametrisation": "plus", "metric": "accuracy_given_time",
                  "value": 0.5, "se": None, "source": "Table 9"}]  # fmt: skip
    text = tables.results_block(records, "cmd", published)
    assert "| rmtpp base | 1 (0) | n/a | n/a | n/a | 0.750 | 10 (5) |" in text
    assert "| lnm base | L_T/seq | -310.0 ± 1.5 | Table 1 | -302.0 ± 1.2 (n=3) | +8.0 |" in text
    assert "| fnn + | acc. given time | 0.500 | Table 9 | not run yet |  |" in text
    assert "### Remedies" in text and "#### thp on mooc" in text
    # the remedies' introduction is under their own heading, not in the last dataset's section
    assert text.index("### Remedies") < text.index("Fix by optimiser") < text.index("#### thp on mooc")
    row = "| thp base [pcgrad] | 2 (0, 1) | -248.5 ± 0.5 | n/a | n/a | n/a | 0.750 ± 0.000 | -0.49 ± 0.00 |"
    assert row + " +1.00 ± 0.00 | n/a |" in text  # Δ L_T vs sum paired by split: +1, +1
    assert "| thp ++ | 0 | not run yet |" in text
    bench = tables.benchmarks_block(records, "cmd")
    assert "| mooc | lnm | base | sum | 0 | 0 | 10 (5) | 2.00 | 10.0% | 10.0 | cpu, 1 thr |" in bench
    assert "| mooc | rmtpp | base | sum | 0 | 0 | 10 (5) | n/a | n/a | n/a | cpu, 1 thr |" in bench
    assert "**Totals:** 10 cells, 1.50 cell-hours" in bench and "6.00 cells per cell-hour" in bench
    assert "No cell of this grid has finished yet" in tables.results_block([], "cmd")
    assert "No cell has finished yet" in tables.benchmarks_block([], "cmd")


def test_update_replaces_only_the_marked_blocks_and_writes_the_figure(tmp_path: Path, monkeypatch, capsys) -> None:
    script = load_script(monkeypatch)
    folder = grid(tmp_path)
    results, bench, figures = tmp_path / "RESULTS.md", tmp_path / "BENCHMARKS.md", tmp_path / "figs"
    results.write_text(f"intro\n{script.BEGIN}\nold table\n{script.END}\ntail\n")
    bench.write_text(f"# B\n{script.BENCH_BEGIN}\nold\n{script.BENCH_END}\nmore\n")
    argv = [str(folder), str(tmp_path / "absent"), "--update", str(results), "--benchmarks", str(bench),
            "--figures", str(figures)]  # fmt: skip
    assert script.main(argv) == 0
    doc = results.read_text()
    assert doc.startswith(f"intro\n{script.BEGIN}\n<!-- generated by:") and doc.endswith(f"{script.END}\ntail\n")
    assert "old table" not in doc and "![cos_tm on mooc](figs/mooc_cos_tm.png)" in doc
    png = figures / "mooc_cos_tm.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
    text = bench.read_text()
    assert text.startswith(f"# B\n{script.BENCH_BEGIN}\n") and text.endswith(f"{script.BENCH_END}\nmore\n")
    assert "old\n" not in text and "| mooc | thp | base | pcgrad | 1 | 0 |" in text
    assert script.main(argv) == 0 and results.read_text() == doc  # idempotent
    # without --figures the figures go beside the updated file, not into this repository
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "R.md").write_text(f"{script.BEGIN}\n{script.END}\n")
    assert script.main([str(folder), "--update", str(elsewhere / "R.md")]) == 0
    assert (elsewhere / "results" / "figures" / "mooc_cos_tm.png").is_file()
    assert "](results/figures/mooc_cos_tm.png)" in (elsewhere / "R.md").read_text()
    results.write_text("no markers\n")
    capsys.readouterr()
    assert script.main(argv) == 2 and "needs exactly one" in capsys.readouterr().err
    # a misspelt folder: said, and the blocks are not replaced by empty ones
    results.write_text(doc)
    (tmp_path / "empty").mkdir()
    assert script.main([str(tmp_path / "empty"), "--update", str(results)]) == 2
    assert re.search("^results_md: error: no result record under .*empty: refusing to replace", capsys.readouterr().err)
    assert script.main([str(tmp_path / "typo"), "--update", str(results)]) == 2
    assert "typo: no such folder of result records (a misspelt path?)" in capsys.readouterr().err
    assert results.read_text() == doc


def test_results_md_refuses_bad_input_in_one_line_before_writing_anything(tmp_path: Path, monkeypatch, capsys) -> None:
    """Every mistake in the input is one line ``results_md: error: ...`` and exit code 2, never a traceback, and
    the output files are checked before anything (a table, a figure) is written."""
    script = load_script(monkeypatch)
    folder = grid(tmp_path)
    results, bench = tmp_path / "RESULTS.md", tmp_path / "BENCHMARKS.md"
    results.write_text(f"{script.BEGIN}\nold\n{script.END}\n")
    bench.write_text(f"{script.BENCH_BEGIN}\nold\n{script.BENCH_END}\n")
    figures = tmp_path / "figs"

    def refused(argv: list[str], message: str) -> None:
        capsys.readouterr()
        assert script.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("results_md: error: ") and err.count("\n") == 1 and message in err, err
        assert results.read_text() == f"{script.BEGIN}\nold\n{script.END}\n" and not figures.exists()
        assert bench.read_text() == f"{script.BENCH_BEGIN}\nold\n{script.BENCH_END}\n"

    base = [str(folder), "--figures", str(figures)]
    refused([*base, "--update", str(results), "--benchmarks", str(tmp_path / "nonexist.md")],
            f"--benchmarks {tmp_path / 'nonexist.md'}: no such file")
    refused([*base, "--update", str(tmp_path / "sub" / "nonexist.md")], "--update ")
    refused([*base, "--update", str(results), "--benchmarks", str(results)], "needs exactly one")  # no bench markers
    refused([*base, "--update", str(tmp_path)], "a folder, not a file")
    latin = tmp_path / "latin1.md"  # markers fine, one byte not UTF-8: a traceback before
    latin.write_bytes(f"caf\xe9\n{script.BEGIN}\nold\n{script.END}\n".encode("latin-1"))
    refused([*base, "--update", str(latin)], f"--update {latin}: not UTF-8 text (invalid continuation byte at byte 3)")
    refused([str(results), "--update", str(results)], f"{results}: a file, not a folder of result records")
    refused([str(tmp_path / "nonexist")], "no such folder of result records")
    (folder / "mooc" / "cut.json").write_text('{"record_version": 1, "cell"')  # a record cut by a kill
    refused([*base, "--update", str(results)], "cut.json: not readable as JSON")
    # without --figures nothing is written beside a file that is not there
    refused([str(folder), "--update", str(tmp_path / "sub" / "nonexist.md")], "no such file")
    assert not (tmp_path / "sub").exists()


@pytest.mark.parametrize("name", ["add_validation_curves", "rescore_records"])
def test_the_other_record_scripts_say_bad_input_in_one_line(name: str, tmp_path: Path, capsys) -> None:
    """Like results_md.py and the mtpp commands: a record cut short or a folder not there is one line and exit
    code 2, never a traceback (rescore_records.py read a folder not there as empty, and exited 0)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(tmp_path / "nonexist"), str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"{name}: error: {tmp_path / 'nonexist'}: no such folder of result records\n"
    folder = grid(tmp_path)
    (folder / "cut.json").write_text('{"record_version": 1, "cell"')
    assert script.main([str(folder), str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{name}: error: {folder / 'cut.json'}: not readable as JSON") and err.count("\n") == 1


def test_results_md_names_json_files_that_are_not_records_and_folders_not_there_yet(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    script = load_script(monkeypatch)
    folder = grid(tmp_path)
    (folder / "notes.json").write_text('{"a": 1}')
    assert script.main([str(folder), str(tmp_path / "remedies")]) == 0  # one of two folders not there yet: fine
    err = capsys.readouterr().err
    assert f"note: {tmp_path / 'remedies'}: no such folder (yet)" in err
    assert f"note: 1 JSON file(s) that are not result records passed over: {folder / 'notes.json'}" in err


def test_small_standard_errors_keep_two_significant_digits_and_grid_datasets_get_a_section() -> None:
    assert tables.fmt((9.0, 0.036, 2), 1) == "9.000 ± 0.036"  # not "9.0 ± 0.0"
    assert tables.fmt((9.04, 0.36, 2), 1) == "9.0 ± 0.4" and tables.fmt((9.0, 0.0, 2), 1) == "9.0 ± 0.0"
    text = tables.results_block([record("mooc", "lnm", "base", 0, nll_time_per_seq=1.0)], "cmd",
                                datasets=("mooc", "reddit"))  # fmt: skip
    assert "### reddit\n\nNo cell has finished yet." in text and text.index("### mooc") < text.index("### reddit")


def test_grid_projection_weights_each_decoder_and_parametrisation() -> None:
    """The MOOC projection: each (decoder, parametrisation) at the mean of its recorded splits, x 5 splits / 2
    jobs; while a combination has no record only a lower bound naming the missing ones; other datasets and remedy
    cells do not count."""

    def rec(model: str, param: str, hours: float, dataset: str = "mooc", aggregator: str = "sum") -> dict:
        return {"cell": {"dataset": dataset, "model": model, "parametrisation": param, "aggregator": aggregator},
                "wall_seconds": hours * 3600}

    records = [rec("lnm", "base", 1.0), rec("lnm", "base", 2.0), rec("thp", "plus", 0.5),
               rec("thp", "base", 40.0, aggregator="pcgrad"), rec("lnm", "base", 40.0, dataset="lastfm")]  # fmt: skip
    text = tables.grid_projection(records)
    # (1.5 + 0.5) x 5 splits / 2 jobs = 5.0 h from the two recorded combinations
    assert "75-cell mooc grid (5 decoders x 3 parametrisations x 5 splits) as 2 parallel jobs: at least 5.0 h" in text
    assert "2 of 15 decoder/parametrisation combinations with a record" in text
    assert "no record yet for lnm +, lnm ++, rmtpp base," in text and "thp +," not in text
    # every combination recorded: the full projection, (1.5 + 0.5 + 13 x 2.0) x 5 / 2 = 70.0 h
    full = records + [rec(m, p, 2.0) for m in tables.MOOC_GRID[1] for p in tables.MOOC_GRID[2]
                      if (m, p) not in {("lnm", "base"), ("thp", "plus")}]  # fmt: skip
    assert "as 2 parallel jobs: about 70.0 h (each decoder/parametrisation at the mean" in tables.grid_projection(full)
    assert tables.grid_projection([rec("lnm", "base", 1.0, dataset="lastfm")]) is None
    # every cell of the grid recorded (split by split): measured, the sum of the 75 wall times / 2 jobs
    every = [dict(rec(m, p, 0.4 if m == "fnn" else 0.2), cell={**rec(m, p, 0)["cell"], "split": s})
             for m in tables.MOOC_GRID[1] for p in tables.MOOC_GRID[2] for s in range(5)]  # fmt: skip
    text = tables.grid_projection(every + [rec("thp", "base", 40.0, aggregator="pcgrad")])
    # 60 cells x 0.2 h + 15 x 0.4 h = 18.0 cell-hours, 9.0 h on 2 slots
    assert "Measured wall time of the 75-cell mooc grid" in text and "18.0 cell-hours" in text and "9.0 h" in text
    assert "Projected" in tables.grid_projection(every[1:])  # one split missing: still a projection


def test_published_values_match_the_text_they_cite() -> None:
    rows = tables.read_published(PUBLISHED / "bosser2024_table1.csv")
    assert len(rows) >= 8 and all(r["metric"] in tables.METRICS for r in rows)
    quote = " ".join(line[2:] for line in (PUBLISHED / "README.md").read_text().splitlines() if line.startswith("> "))
    names = {"mooc": "MOOC", "lastfm": "LastFM", "stack_overflow": "Stack Overflow", "github": "Github"}
    symbol = {"base": "", "plus": "+", "plusplus": "++"}
    for r in rows:
        assert "DESIGN.md" in r["source"] and r["se"] is None
        segment = quote.split(names[r["dataset"]], 1)[1].split(";")[0]  # e.g. "-1334.7 / 637.2 (LNM++)"
        label = re.escape(f"({r['model'].upper()}{symbol[r['parametrisation']]})")
        assert re.search(re.escape(f"{r['value']:g}") + r"[^()]*" + label, segment), (r, segment)
    # spot checks, one per dataset
    value = {(r["dataset"], r["model"], r["parametrisation"], r["metric"]): r["value"] for r in rows}
    assert value[("mooc", "lnm", "plus", "nll_time_per_seq")] == -310.6
    assert value[("mooc", "thp", "plusplus", "nll_mark_per_seq")] == 70.9
    assert value[("lastfm", "lnm", "plusplus", "nll_mark_per_seq")] == 637.2
    assert value[("stack_overflow", "thp", "plusplus", "nll_mark_per_seq")] == 103.0
    assert value[("github", "fnn", "plusplus", "nll_mark_per_seq")] == 109.5
    design = [p / "shared" / "DESIGN.md" for p in (ROOT, ROOT.parent, ROOT.parent.parent)]
    design = next((p for p in design if p.is_file()), None)
    if design is None:
        pytest.skip("the shared DESIGN.md is not beside this checkout: the quote was checked against itself only")
    assert " ".join(quote.split()) in " ".join(design.read_text().split())


def test_capped_cells_are_marked_old_and_new_records_alike() -> None:
    """``stopped_by``: recorded by the trainer, or judged from epochs vs ``train.max_epochs`` for older records."""
    from mtpp.experiments_tables import _epochs
    from mtpp.records import stopped_by

    old_capped = {**record("mooc", "fnn", "base", 0), "epochs": 1000, "config": {"train": {"max_epochs": 1000}}}
    old_early = {**old_capped, "epochs": 160}
    new_capped = {**record("mooc", "fnn", "base", 1), "stopped_by": "max_epochs"}
    assert stopped_by(old_capped) == "max_epochs" and stopped_by(old_early) == "early_stopping"
    assert stopped_by(record("mooc", "fnn", "base", 2)) is None  # no cap recorded: unknown
    assert _epochs(old_capped) == "1000 (5, capped)" and _epochs(old_early) == "160 (5)"
    assert _epochs(new_capped) == "11 (5, capped)"


def test_a_row_says_when_its_time_likelihood_came_from_a_non_normalised_compensator_rule() -> None:
    """A THP / SAHP record validated and evaluated with fixed Gauss-Legendre nodes (the grid's rule before
    73fb6ac, L_T 0.07-0.67 nats/seq too low on MOOC) is marked in the epochs column; the normalised rule, a decoder
    that never reads the rule and a record without a model configuration are not."""
    from mtpp.experiments_tables import _epochs

    def with_model(decoder: str, param: str, **model) -> dict:
        r = record("mooc", decoder, param, 0)
        return {**r, "config": {**r["config"], "model": {"decoder": decoder, "parametrisation": param,
                                                        "hidden_size": 8, "num_components": 3, **model}}}

    fixed = {"eval_integration": "gauss_legendre", "eval_integration_nodes": 100}
    note = ", L_T by a non-normalised compensator rule"
    for decoder, param in (("thp", "base"), ("thp", "plus"), ("sahp", "plusplus")):
        assert _epochs(with_model(decoder, param, **fixed)) == f"10 (5{note})"
        assert _epochs(with_model(decoder, param, eval_integration="adaptive")) == "10 (5)"
    assert _epochs(with_model("lnm", "base", **fixed)) == "10 (5)"  # closed form: the rule is inert
    assert _epochs(record("mooc", "thp", "base", 0)) == "10 (5)"  # no model configuration recorded
    assert _epochs(with_model("thp", "base", decoder_kind="no such key")) == "10 (5)"  # unreadable: no claim


def test_record_wall_time_spans_every_invocation() -> None:
    """A cell resumed only for its final evaluation records hours, not the minutes of its last invocation."""
    from mtpp.records import _wall_seconds

    epochs = [{"epoch_seconds": 10.0, "validation_seconds": 1.0}] * 100
    assert _wall_seconds({"wall_seconds": 1234.5}, 60.0, epochs) == 1234.5  # the trainer's own total wins
    assert _wall_seconds({"wall_seconds": 300.0}, 60.0, epochs) == 1100.0  # resumed from a checkpoint without it
    assert _wall_seconds({}, 180.0, epochs) == 1100.0  # older runs: the logged epochs, not the last invocation
    assert _wall_seconds({}, 2000.0, epochs) == 2000.0  # one uninterrupted invocation: its own time
    assert _wall_seconds({}, None, []) is None


def test_every_column_of_the_cos_tm_figure_has_x_tick_labels_under_its_lowest_panel() -> None:
    """Nine panels in four columns: columns 1-3 end on the second row, whose tick labels ``sharex`` hid."""
    from mtpp.experiments_tables import bottom_panels

    assert bottom_panels(9, 4) == [(2, 0), (1, 1), (1, 2), (1, 3)]
    assert bottom_panels(8, 4) == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert bottom_panels(3, 3) == [(0, 0), (0, 1), (0, 2)]
    assert bottom_panels(5, 4) == [(1, 0), (0, 1), (0, 2), (0, 3)]


def test_the_binned_time_nll_is_shown_only_where_the_data_is_on_a_lattice_and_says_what_it_covers() -> None:
    """MOOC records carry ``nll_time_binned_per_seq`` (times on a lattice): its column, its paired difference and
    its line in the claim check appear; a cell where only some records have it says "(k of n)"; a dataset without
    it (Reddit) shows no such column."""
    recs = [record("mooc", "fnn", "plus", s, nll_time_per_seq=-320.0 - s, nll_time_binned_per_seq=314.0 + s)
            for s in range(2)]  # fmt: skip
    recs += [record("mooc", "fnn", "plusplus", 0, nll_time_per_seq=-349.0, nll_time_binned_per_seq=312.0),
             record("mooc", "fnn", "plusplus", 1, nll_time_per_seq=-350.0)]  # fmt: skip
    recs += [record("reddit", "fnn", "plus", 0, nll_time_per_seq=-10.0)]
    cells = tables.group(recs)
    text = "\n".join(tables.dataset_tables(cells, "mooc"))
    assert "| model | n | L_T/seq | L_T binned/seq | L_M/seq | PCE | conflict rate | epochs (best) |" in text
    assert "| fnn + | 2 (0, 1) | -320.5 ± 0.5 | 314.5 ± 0.5 | n/a | n/a | 0.750 ± 0.000 |" in text
    assert "| fnn ++ | 2 (0, 1) | -349.5 ± 0.5 | 312.0 (1 of 2) | n/a | n/a | n/a |" in text
    assert "| fnn | + → ++ | 2 | -29.00 ± 0.00 | -2.00 (1 of 2) | n/a |" in text  # binned paired on split 0 only
    assert "L_T binned/seq 0 of 0" not in text
    reddit = "\n".join(tables.dataset_tables(cells, "reddit"))
    assert "binned" not in reddit and "| fnn + | 1 (0) | -10.0 | n/a | n/a | 0.750 |" in reddit
    assert "`L_T binned/seq`: time NLL of each gap's lattice bin" in "\n".join(tables.legend())


def test_the_timings_say_which_cells_ran_with_the_compiled_integrand() -> None:
    """``train.compile_integrand`` changes speed only where it applies (THP / SAHP): the device column says so for
    those cells, and not for an LNM cell with the same setting or a THP cell without it."""

    def with_compile(r: dict, on: bool) -> dict:
        return {**r, "config": {**r["config"], "train": {"compile_integrand": on}}}

    recs = [with_compile(record("mooc", "thp", "base", 0), True), with_compile(record("mooc", "lnm", "base", 0), True),
            with_compile(record("mooc", "sahp", "base", 1), False)]  # fmt: skip
    bench = tables.benchmarks_block(recs, "cmd")
    assert "| mooc | thp | base | sum | 0 | 0 | 10 (5) | 2.00 | 10.0% | 10.0 | cpu, 1 thr, compiled integrand |" in bench
    assert "| mooc | lnm | base | sum | 0 | 0 | 10 (5) | 2.00 | 10.0% | 10.0 | cpu, 1 thr |" in bench
    assert "| mooc | sahp | base | sum | 1 | 0 | 11 (5) | 2.00 | 10.0% | 10.0 | cpu, 1 thr |" in bench


def test_a_run_that_diverged_after_its_best_epoch_says_so_in_its_record_and_rows(tmp_path: Path) -> None:
    """CoGrad with a gamma too large for the loss's scale: best at epoch 4, then the validation NLL blew up (a
    finite 7e5 nats/event, later non-finite); early stopping hands back epoch 4's sound model, and the record and
    the timings / remedies rows say that the method diverged after it. Noise after the best epoch is not flagged."""
    from mtpp.experiments_tables import _epochs
    from mtpp.records import build_record, diverged, validation_after_best

    def lines(values):
        return [{"kind": "epoch", "epoch": i + 1, "val_nll_per_event": v} for i, v in enumerate(values)]

    calm = validation_after_best(lines([-3.0, -3.4, -3.38, -3.35]), 2)
    assert calm == {"best": -3.4, "worst": -3.35, "last": -3.35, "non_finite": False}
    blown = validation_after_best(lines([-3.0, -3.4, 7.1e5, None]), 2)
    assert blown == {"best": -3.4, "worst": 7.1e5, "last": None, "non_finite": True}
    assert validation_after_best(lines([-3.0, -3.4]), 2) == {"best": -3.4, "worst": None, "last": -3.4,
                                                              "non_finite": False}  # fmt: skip
    assert validation_after_best(lines([-3.0]), None) is None
    rec = record("mooc", "thp", "base", 0, agg="cograd", nll_time_per_seq=-260.0)
    assert diverged(rec) is None and _epochs(rec) == "10 (5)"  # records written before the field
    assert diverged({**rec, "validation_after_best": calm}) is None
    finite = {**rec, "validation_after_best": {"best": -3.4, "worst": 7.1e5, "last": 6e5, "non_finite": False}}
    assert diverged(finite) == pytest.approx(7.1e5 + 3.4)
    assert _epochs(finite) == "10 (5, diverged after best: val +7.1e+05 nats/event)"
    assert _epochs({**rec, "validation_after_best": blown}) == "10 (5, diverged after best: val non-finite)"
    text = tables.results_block([record("mooc", "thp", "base", 0, nll_time_per_seq=-270.0), finite], "cmd")
    assert "| thp base [cograd] | 1 (0) |" in text and "diverged after best: val +7.1e+05 nats/event" in text

    run = tmp_path / "run"  # build_record reads it from the run's log
    run.mkdir()
    (run / "metrics.json").write_text('{"train": {"epochs": 4, "best_epoch": 2}, "test": {}}')
    (run / "config.yaml").write_text("train: {max_epochs: 10}\n")
    import json

    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines([-3.0, -3.4, 7.1e5, 8e5])))
    built = build_record(run, {"name": "x"}, 10.0)
    assert built["validation_after_best"] == {"best": -3.4, "worst": 8e5, "last": 8e5, "non_finite": False}
    assert diverged(built) == pytest.approx(8e5 + 3.4)


def test_divergence_survives_the_record_file_and_is_judged_per_part_under_separate_early_stopping(
    tmp_path: Path,
) -> None:
    """A non-finite validation NLL after the best epoch is still "diverged" after the record went through JSON
    (which has no inf); a "++" run whose time part blew up after its own best epoch and was frozen there is flagged
    although every epoch after the run's best (the mark part's, later) was calm."""
    from mtpp.records import diverged, read_records, validation_after_best

    rec = {**record("mooc", "thp", "base", 0, agg="cograd"),
           "validation_after_best": validation_after_best(
               [{"epoch": e, "val_nll_per_event": v} for e, v in ((1, -3.0), (2, -3.4), (3, float("nan")))], 2)}
    assert diverged(rec) == math.inf
    write_record(tmp_path, rec["cell"]["name"], rec)
    (back,) = read_records(tmp_path)
    assert diverged(back) == math.inf

    # 50 events per sequence: per event = per sequence / 50; time best at 2, blows up at 3-4, frozen; mark best at 8
    t = [-150.0, -170.0, 5e4, 9e4] + [-170.0] * 6
    m = [100.0, 95.0, 94.0, 93.0, 92.0, 91.0, 90.5, 90.0, 90.2, 90.3]
    log = [{"epoch": e + 1, "val_nll_time_per_seq": a, "val_nll_mark_per_seq": b, "val_nll_per_seq": a + b,
            "val_nll_per_event": (a + b) / 50} for e, (a, b) in enumerate(zip(t, m))]  # fmt: skip
    assert validation_after_best(log, 8)["worst"] < validation_after_best(log, 8)["best"] + 1  # joint view: calm
    parts = validation_after_best(log, 8, {"time": 2, "mark": 8})
    assert parts["time"] == {"best": -3.4, "worst": 1800.0, "last": -3.4, "non_finite": False}
    assert parts["mark"]["best"] == pytest.approx(1.8) and parts["mark"]["worst"] == pytest.approx(1.806)
    assert diverged({**rec, "validation_after_best": parts}) == pytest.approx(1803.4)
    calm = validation_after_best(log, 8, {"time": 5, "mark": 8})  # from epoch 5 on, the time part was calm
    assert diverged({**rec, "validation_after_best": calm}) is None


def test_the_cos_tm_figure_of_a_dataset_with_one_cell_keeps_its_title_inside(tmp_path: Path, monkeypatch) -> None:
    """One cell gives a 3-inch figure: its one-line title (about 4.5 inches) was cut off at both ends."""
    import matplotlib.figure

    saved = []
    original = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (saved.append(fig),
                                                                                   original(fig, *a, **k))[1])
    tables.cos_tm_figures([record("stack_overflow", "lnm", "base", 0, nll_time_per_seq=1.0)], tmp_path)
    (fig,) = saved
    box = fig.get_tightbbox()  # inches, every drawn artist
    assert "cos_tm over training steps" in fig._suptitle.get_text()
    assert box.x0 >= 0 and box.x1 <= fig.get_figwidth() and box.y1 <= fig.get_figheight(), box


def test_a_difference_over_fewer_pairs_than_its_row_states_says_so() -> None:
    """A metric some records lack (here the binned L_T of two of lnm base's four splits, the conflict rate and L_M
    of one pcgrad split) is left out of its paired difference: the row's pairs count (4) is then not that difference's,
    and every place a paired statistic is printed says over how many pairs it is (as a cell's mean already does,
    "(2 of 4)"): the differences table, the claim check (tested over 2 pairs, not the 4 the line lists) and the
    remedies table (its Δ columns and its means)."""
    recs = [record("mooc", "lnm", "base", s, nll_time_per_seq=-300.0 - s,
                   **({"nll_time_binned_per_seq": 300.0 + s} if s < 2 else {})) for s in range(4)]  # fmt: skip
    recs += [record("mooc", "lnm", "plus", s, nll_time_per_seq=-301.0 - 1.1 * s,
                    nll_time_binned_per_seq=299.0 + 0.9 * s) for s in range(4)]  # fmt: skip
    recs += [record("mooc", "thp", "base", s, nll_time_per_seq=-250.0 + s, nll_mark_per_seq=90.0) for s in (0, 1)]
    recs += [{**record("mooc", "thp", "base", s, agg="pcgrad", nll_time_per_seq=-249.0 + s,
                       **({"nll_mark_per_seq": 89.0} if s < 2 else {})),
              **({"conflict_rate": None, "cos_tm_histogram": None} if s == 2 else {})} for s in range(3)]  # fmt: skip
    cells = tables.group(recs)
    text = "\n".join(tables.dataset_tables(cells, "mooc"))
    assert "| lnm base | 4 (0, 1, 2, 3) | -301.5 ± 0.6 | 300.5 ± 0.5 (2 of 4) |" in text  # the cell's mean: said
    # L_T over the 4 pairs, binned over the 2 pairs both cells have (-1.0, -1.1): the 2 is said
    assert "| lnm | base → + | 4 | -1.15 ± 0.06 | -1.05 ± 0.05 (2 of 4) | n/a | n/a | n/a |" in text
    # binned: t = 21 > 12.7, the threshold of 2 pairs (with the 4 the line lists it would be 3.18)
    assert ("- base → +, decoders improved (paired by split; pairs: lnm 4): L_T/seq 1 of 1, 1 significant; "
            "L_T binned/seq 1 of 1, 1 significant (pairs: lnm 2).") in text
    remedies = "\n".join(tables.remedies_table(cells))
    # pcgrad split 2 has no sum twin: Δ L_T over 2 of its 3 splits; its L_M and conflict rate over 2 of 3 records
    assert ("| thp base [pcgrad] | 3 (0, 1, 2) | -248.0 ± 0.6 | 89.0 ± 0.0 (2 of 3) | n/a | n/a "
            "| 0.750 ± 0.000 (2 of 3) | -0.49 ± 0.00 (2 of 3) | +1.00 ± 0.00 (2 of 3) "
            "| -1.00 ± 0.00 (2 of 3) |") in remedies


def test_equal_values_have_a_standard_error_of_zero_not_of_rounding_noise() -> None:
    """Three equal values (a metric that did not move across splits, two bit-identical runs) have SE 0: computed in
    floating point, the mean of [0.1] * 3 is 0.10000000000000002 and the SE 1.6e-17, which the "two significant
    digits of a small SE" rule then printed as "0.10000000000000002 ± 0.000000000000000016"."""
    assert tables.mean_se([0.1] * 3) == (0.1, 0.0, 3)
    assert tables.fmt(tables.mean_se([0.1] * 3), 3) == "0.100 ± 0.000"
    recs = [record("mooc", "thp", "base", s, nll_time_per_seq=-250.0) for s in range(3)]  # cos_tm -0.4875 thrice
    assert "| -0.49 ± 0.00 |" in "\n".join(tables.remedies_table(tables.group(
        recs + [record("mooc", "thp", "base", s, agg="pcgrad") for s in range(3)])))
    m, se, n = tables.mean_se([1.0, 2.0, 4.0])
    assert (m, n) == (pytest.approx(7 / 3), 3) and se == pytest.approx(math.sqrt(7 / 3 / 3))


def _saved_figures(monkeypatch) -> list:
    import matplotlib.figure

    saved: list = []
    original = matplotlib.figure.Figure.savefig

    def savefig(fig, *a, **k):
        saved.append((fig, k.get("dpi")))
        return original(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return saved


def test_the_cos_tm_figure_wraps_a_long_model_name_inside_its_panel(tmp_path: Path, monkeypatch) -> None:
    """A model named without spaces (``lnm_gru_hidden64_components8_dropout01_...``): its panel title ran over the
    next panel's."""
    saved = _saved_figures(monkeypatch)
    long = "lnm_gru_hidden64_components8_dropout01_weightdecay1e4"
    recs = [record("mooc", m, p, 0, nll_time_per_seq=1.0) for m in (long, "thp") for p in ("base", "plus")]
    tables.cos_tm_figures(recs, tmp_path)
    ((fig, _),) = saved
    fig.canvas.draw()
    axes = [a for a in fig.axes if a.get_title()]
    assert len(axes) == 4
    boxes = [a.title.get_window_extent() for a in axes]
    assert all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert any(long[:20] in a.get_title() and "\n" in a.get_title() for a in axes)


def test_every_text_of_the_cos_tm_figure_is_readable_at_the_saved_resolution(tmp_path: Path, monkeypatch) -> None:
    """Saved at 72 dpi, its 7 pt tick labels and 8 pt titles were 7-8 pixels tall: unreadable on the RESULTS.md page
    (the report's own figures are saved at 110 dpi)."""
    saved = _saved_figures(monkeypatch)
    recs = [record("mooc", m, p, 0, nll_time_per_seq=1.0) for m in ("lnm", "thp") for p in ("base", "plus")]
    tables.cos_tm_figures(recs, tmp_path)
    ((fig, dpi),) = saved
    texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and a.get_text()) if t.get_visible()]
    assert texts and min(t.get_fontsize() for t in texts) * dpi / 72 >= 10  # pixels


def _curve_run(path: Path, values: list[tuple], train: dict, val: dict) -> Path:
    """A run directory whose log has one epoch line per (L_T, L_M) of ``values`` (epoch 2 logged twice, as a resume
    does), and whose metrics.json has ``train`` / ``val``."""
    import json

    path.mkdir(parents=True)
    lines = [{"kind": "step", "epoch": 1, "step": 1, "cos_tm": 0.1}]
    for i, (t, m) in enumerate(values):
        lines.append({"kind": "epoch", "epoch": i + 1, "val_nll_time_per_seq": t, "val_nll_mark_per_seq": m,
                      "val_nll_per_seq": t + m, "val_nll_per_event": (t + m) / 10})  # fmt: skip
    lines.insert(2, {**lines[2], "val_nll_time_per_seq": 99.0})  # a first pass of epoch 2, superseded
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "epo')  # a cut line
    (path / "metrics.json").write_text(json.dumps({"train": train, "val": val, "test": {}}))
    (path / "config.yaml").write_text("train: {max_epochs: 10}\n")
    return path


def test_a_record_keeps_the_validation_curve_of_every_epoch_once_rounded_and_inf_as_null(tmp_path: Path) -> None:
    from mtpp.records import build_record, validation_curve

    run = _curve_run(tmp_path / "run", [(-10.123456, 5.0), (-11.0, float("inf")), (-11.5, 4.25)],
                     {"epochs": 3, "best_epoch": 3}, {"nll_per_seq": -7.25})  # fmt: skip
    curve = build_record(run, {"name": "x"}, 1.0)["validation_curve"]
    assert curve == {"epoch": [1, 2, 3], "nll_time_per_seq": [-10.12, -11.0, -11.5],
                     "nll_mark_per_seq": [5.0, None, 4.25]}  # fmt: skip
    assert validation_curve([{"kind": "step", "epoch": 1}][1:]) is None


def test_records_write_number_lists_on_one_line_and_read_back_equal(tmp_path: Path) -> None:
    import json

    from mtpp.records import dumps, read_records

    rec = {**record("mooc", "lnm", "base", 0, nll_time_per_seq=-300.0),
           "validation_curve": {"epoch": list(range(1, 1001)), "nll_time_per_seq": [-1.5] * 1000,
                                "nll_mark_per_seq": [None, 2.0] * 500}}  # fmt: skip
    path = write_record(tmp_path, rec["cell"]["name"], rec)
    text = path.read_text()
    assert len(text.splitlines()) < 60 and '"epoch": [1, 2, 3,' in text
    back = read_records(tmp_path)[0]
    back.pop("_path")
    assert back == rec
    no_lists = {"a": {"b": 1, "c": [{"d": None}], "e": {}}, "f": []}
    assert dumps(no_lists) == json.dumps(no_lists, indent=1)  # everything else as before


def test_adding_validation_curves_takes_only_the_run_that_wrote_the_record_and_changes_nothing_else(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import json

    from mtpp.records import read_records

    spec = importlib.util.spec_from_file_location("add_curves", ROOT / "scripts" / "add_validation_curves.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results, runs = tmp_path / "results", tmp_path / "runs"
    train, val = {"epochs": 2, "best_epoch": 2}, {"nll_per_seq": -7.0}
    mine = {**record("mooc", "lnm", "base", 0), "metrics": {"train": train, "val": val, "test": {"x": 1.0}}}
    rerun = {**record("mooc", "lnm", "plus", 0), "metrics": {"train": train, "val": {"nll_per_seq": -6.0}}}
    for r in (mine, rerun, record("mooc", "lnm", "plusplus", 0)):
        write_record(results, r["cell"]["name"], r)
    _curve_run(runs / mine["cell"]["name"], [(-1.0, 2.0), (-1.5, 1.75)], train, val)
    _curve_run(runs / rerun["cell"]["name"], [(-1.0, 2.0), (-1.5, 1.75)], train, val)  # another run of the cell
    before = {r["cell"]["name"]: r for r in read_records(results)}
    assert script.main([str(results), str(tmp_path / "elsewhere"), str(runs)]) == 0
    after = {r["cell"]["name"]: r for r in read_records(results)}
    name = mine["cell"]["name"]
    assert after[name]["validation_curve"] == {"epoch": [1, 2], "nll_time_per_seq": [-1.0, -1.5],
                                               "nll_mark_per_seq": [2.0, 1.75]}  # fmt: skip
    assert after[name]["validation_after_best"] == {"best": 0.025, "worst": None, "last": 0.025, "non_finite": False}
    assert after[name]["validation_curve_added"]["keys"] == ["validation_after_best", "validation_curve"]
    assert set(after[name]["validation_curve_added"]) == {"when", "git_revision", "keys"}
    assert {k: v for k, v in after[name].items() if not k.startswith(("validation_c", "validation_a"))} == before[name]
    for other in set(before) - {name}:
        assert after[other] == before[other]  # a rerun's log is never taken for a record
    assert "1 record(s) gained a validation curve or divergence check; 2 lacking one" in capsys.readouterr().err
    assert script.main([str(results), str(runs)]) == 0 and json.dumps(read_records(results)) == json.dumps(
        list(after.values()))  # a second pass adds nothing


def test_validation_curves_figure_draws_the_split_with_most_curves_and_results_links_it(
    tmp_path: Path, monkeypatch
) -> None:
    from mtpp.experiments_curves import curve_split, validation_curve_figures

    def with_curve(r: dict, n: int) -> dict:
        return {**r, "validation_curve": {"epoch": list(range(1, n + 1)), "nll_time_per_seq": [-1.0 * i for i in
                range(n)], "nll_mark_per_seq": [None] + [2.0] * (n - 1)}}  # fmt: skip

    recs = [with_curve(record("mooc", "lnm", p, 1), 6) for p in ("base", "plus", "plusplus")]
    recs += [with_curve(record("mooc", "thp", "base", 0), 9), record("mooc", "thp", "base", 1)]
    recs += [with_curve(record("mooc", "thp", "base", 2, agg="pcgrad"), 4), record("lastfm", "lnm", "base", 0)]
    assert curve_split(recs, "mooc") == 1 and curve_split(recs, "lastfm") is None
    written = validation_curve_figures(recs, tmp_path / "figs")
    assert set(written) == {"mooc"} and written["mooc"][1] == 1
    assert written["mooc"][0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = tables.results_block(recs, "cmd", curves=written, relative_to=tmp_path)
    assert "on split 1, one run each" in text and "![validation curves on mooc](figs/mooc_validation_curves.png)" in text


def test_the_timings_name_the_hardware_of_records_that_carry_it() -> None:
    """Records written since ``run_info.device_name`` existed say what the timings were measured on ("cpu (AMD
    EPYC 7B13)"); older records, without the key, keep the bare device."""
    named = record("mooc", "lnm", "base", 0)
    named["config"] = {"run_info": {**named["config"]["run_info"], "device_name": "AMD EPYC 7B13"}}
    bench = tables.benchmarks_block([named, record("mooc", "lnm", "base", 1)], "cmd")
    assert "| mooc | lnm | base | sum | 0 | 0 | 10 (5) | 2.00 | 10.0% | 10.0 | cpu (AMD EPYC 7B13), 1 thr |" in bench
    assert "| mooc | lnm | base | sum | 1 | 0 | 11 (5) | 2.00 | 10.0% | 10.0 | cpu, 1 thr |" in bench
