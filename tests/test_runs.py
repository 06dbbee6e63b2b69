"""Runs that know their data, have one writer, delete nothing they did not write, and talk (issues 11 and 13).

Tiny models on small simulated split folders (``mtpp simulate``); every test runs in a second or two.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mtpp.cli import main
from mtpp.config import load_config
from mtpp.errors import ConfigError, MtppError
from mtpp.evaluation.evaluate import evaluate
from mtpp.runs import RunLock, check_folder_name, fingerprint, open_run
from mtpp.training import checkpoint
from mtpp.training.trainer import fit, run_variants

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "train.batch_size=8",
    "train.max_epochs=1",
    "train.device=cpu",
    "model.hidden_size=8",
    "model.mark_embedding_size=4",
    "model.time_embedding_size=4",
    "model.decoder_hidden_size=8",
    "model.num_components=2",
    "model.decoder=lnm",
    "logging.quiet=true",
    "logging.progress=false",
]


def simulate(folder: Path, seed: int = 0, *extra: str) -> Path:
    args = ["simulate", "poisson", "--marks", "3", "--sequences", "40", "--window", "8", "--seed", str(seed),
            "--out", str(folder), *extra]  # fmt: skip
    assert main(args) == 0
    return folder


def tiny_base() -> dict:
    """TINY as an experiment file's ``base`` mapping."""
    base: dict = {k: {} for k in ("data", "model", "train", "logging")}
    for o in TINY:
        key, value = o.split("=")
        section, name = key.split(".")
        base[section][name] = yaml.safe_load(value)
    return base


def tiny(data: Path | str, *extra: str):
    return load_config(None, [*TINY, f"data.name={data}", *extra])


def read(path: Path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ fingerprints


def test_fingerprint_depends_on_every_array_and_on_order() -> None:
    from mtpp.data.sequence import EventSequence

    a = EventSequence([0.5, 1.0], [0, 1])
    b = EventSequence([0.5, 1.5], [0, 1])
    assert fingerprint([a, b]) == fingerprint([EventSequence([0.5, 1.0], [0, 1]), b])
    assert fingerprint([a, b]) != fingerprint([b, a])
    assert fingerprint([a]) != fingerprint([EventSequence([0.5, 1.0], [0, 2])])
    assert fingerprint([a]) != fingerprint([EventSequence([0.5, 1.0], [0, 1], window_end=2.0)])
    # the boundary between sequences counts: [1, 2] + [3] is not [1] + [2, 3]
    x = [EventSequence([1.0, 2.0], [0, 0]), EventSequence([3.0], [0])]
    y = [EventSequence([1.0], [0]), EventSequence([2.0, 3.0], [0, 0])]
    assert fingerprint(x) != fingerprint(y)


def test_run_records_its_data_in_config_and_checkpoints(tmp_path: Path) -> None:
    data = simulate(tmp_path / "sim")
    fit(tiny(data), tmp_path / "run")
    info = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["run_info"]["data"]
    assert Path(info["source"]) == data.resolve()
    assert info["split"] == 0 and info["num_marks"] == 3
    assert set(info["parts"]) == {"train", "val", "test"}
    assert sum(p["sequences"] for p in info["parts"].values()) == 40
    for name in (checkpoint.CHECKPOINT, checkpoint.BEST):
        assert checkpoint.load(tmp_path / "run" / name)["data"] == info
    assert open_run(tmp_path / "run").data_record == info


# ------------------------------------------------------------------------------------------------ data checks


def test_evaluate_and_resume_refuse_other_data_and_other_data_goes_elsewhere(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    data = simulate(tmp_path / "sim", seed=0)
    run = tmp_path / "run"
    fit(tiny(data, "train.max_epochs=2"), run)
    before = (run / "metrics.json").read_text()
    simulate(data, 1, "--force")  # the same folder now holds other sequences
    with pytest.raises(MtppError) as e:
        evaluate(run, "test")
    msg = str(e.value)
    assert "differ" in msg and str(data.resolve()) in msg and "--other-data" in msg
    with pytest.raises(MtppError, match="--resume: the data differ"):
        fit(tiny(data, "train.max_epochs=3"), run, resume=True)
    m = evaluate(run, "test", other_data=True)
    assert (run / "metrics.json").read_text() == before  # never overwritten by other data
    other = [p for p in run.glob("metrics.other-*.json")]
    assert len(other) == 1 and read(other[0])["test"]["nll_time_per_seq"] == m["nll_time_per_seq"]
    assert read(other[0])["data"]["parts"]["test"]["sha256"] != read(run / "metrics.json").get("data", {}).get("x")
    assert list(run.glob("arrays_test.other-*.json"))
    # the command line: a clear error, exit 2, nothing written over metrics.json, no table header
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    assert (run / "metrics.json").read_text() == before and "| run |" not in capsys.readouterr().out
    # forecasting commands have no --other-data: their refusal points at the one that does
    from mtpp.forecast.predict import predict

    with pytest.raises(MtppError, match=r"forecast from .*; mtpp evaluate --other-data scores the run"):
        predict(run)


def test_evaluate_finds_the_runs_of_a_compare_folder_skips_unfinished_ones_and_goes_past_broken_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A ``compare --out`` folder nests runs as ``<dataset>/<cell>/split<i>-seed<j>``: every finished run below
    is evaluated (its metrics reproduced), one without ``best.pt`` is named and skipped, and nothing is searched
    inside a run."""
    data = simulate(tmp_path / "sim", seed=0)
    root = tmp_path / "grid"
    runs = [root / "sim" / cell / "split0-seed0" for cell in ("lnm-base-sum", "lnm-plus-sum")]
    for run, param in zip(runs, ("base", "plus")):
        fit(tiny(data, "train.max_epochs=1", f"model.parametrisation={param}"), run)
    unfinished = root / "sim" / "thp-base-sum" / "split0-seed0"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text((runs[0] / "config.yaml").read_text())
    (runs[0] / "inner").mkdir()
    (runs[0] / "inner" / "config.yaml").write_text("not: a run")  # would fail if it were taken for one
    reported = [read(r / "metrics.json")["test"]["nll_time_per_seq"] for r in runs]
    capsys.readouterr()
    assert main(["evaluate", str(root)]) == 0
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith(f"| {root}")]
    assert [row.split("|")[1].strip() for row in rows] == [str(r) for r in runs]
    # above the table, one line says what the columns condition on and their units
    legend, header = out.splitlines()[:2]
    assert header.startswith("| run | split | L_T/seq") and legend.startswith("(") and legend.endswith(")")
    for said in ("L_M: -log p(k | tau_obs, H), told the observed time", "nats per sequence (/seq)",
                 "forecast: p(k | H), next time unknown", "first event of each sequence not scored"):
        assert said in legend, said
    assert f"{unfinished}: skipped (no best.pt" in err and f"{root}: 3 runs below it" in err
    assert [read(r / "metrics.json")["test"]["nll_time_per_seq"] for r in runs] == pytest.approx(reported)
    # a broken run is named and the others are still evaluated; the command then fails, listing it
    broken = root / "sim" / "aaa-broken" / "split0-seed0"
    import shutil

    shutil.copytree(runs[0], broken)
    (broken / "config.yaml").write_text((broken / "config.yaml").read_text().replace("hidden_size: ", "hidden_size: 1"))
    assert main(["evaluate", str(root)]) == 2
    out, err = capsys.readouterr()
    assert f"{broken}: error:" in err and f"1 of 4 run(s) could not be evaluated (errors above): {broken}" in err
    assert [line.split("|")[1].strip() for line in out.splitlines() if line.startswith(f"| {root}")] == \
        [str(r) for r in runs]


def test_evaluate_and_resume_use_the_recorded_data_not_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # the case: trained with --data-dir A; later MTPP_DATA_DIR points at B holding other data of the name
    simulate(tmp_path / "A" / "mine", seed=0)
    simulate(tmp_path / "B" / "mine", seed=1)
    run = tmp_path / "run"
    fit(tiny("mine", "train.max_epochs=1"), run, data_dir=str(tmp_path / "A"))
    reported = read(run / "metrics.json")["test"]
    monkeypatch.setenv("MTPP_DATA_DIR", str(tmp_path / "B"))
    assert main(["evaluate", str(run)]) == 0
    err = capsys.readouterr().err
    assert str((tmp_path / "A" / "mine").resolve()) in err  # the resolved data path is printed
    again = read(run / "metrics.json")["test"]
    assert again["nll_time_per_seq"] == reported["nll_time_per_seq"]
    # --resume (a longer run) continues on A's data, and B's is refused when named explicitly
    fit(tiny("mine", "train.max_epochs=2"), run, resume=True)
    assert read(run / "metrics.json")["train"]["epochs"] == 2
    with pytest.raises(MtppError, match="differ"):
        fit(tiny("mine", "train.max_epochs=3"), run, resume=True, data_dir=str(tmp_path / "B"))


@pytest.mark.parametrize("text, said", [
    ("", "config.yaml: empty, not a run configuration"),
    ("# emptied by hand\n", "config.yaml: empty, not a run configuration"),
    ("model: {hiden_size: 8}\n", "config.yaml: unknown key 'model.hiden_size' (did you mean 'hidden_size'?)"),
    ("train: {max_epochs: many}\n", "config.yaml: train.max_epochs: expected int"),
    ("model: {hidden_size: 8}\nmodel: {hidden_size: 9}\n", "config.yaml: key 'model' is given twice"),
])
@pytest.mark.parametrize("command", [["evaluate"], ["predict", "--out", "p.csv"],
                                     ["generate", "--events", "1", "--out", "g.csv"]])
def test_a_damaged_run_config_is_named_by_every_command_that_reads_it(tmp_path: Path, text: str, said: str,
                                                                     command: list[str],
                                                                     capsys: pytest.CaptureFixture) -> None:
    """An empty config.yaml was read as every default (another model, the synthetic data): evaluate said "the
    model knows 3 marks, the data have 5", predict that the weights do not fit; a mistyped key was refused
    without naming the file. Each is one line naming RUN/config.yaml, and nothing is written."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(text)
    argv = [command[0], str(run), *[str(tmp_path / a) if a.endswith(".csv") else a for a in command[1:]]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run / 'config.yaml'}: " in err[0] and said in err[0], err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.yaml", "run"]
    with pytest.raises(MtppError, match=re.escape(said)):
        open_run(run)


def test_a_validation_split_without_scored_events_is_refused(tmp_path: Path) -> None:
    from mtpp.data.formats import write_split_folder
    from mtpp.data.sequence import EventSequence

    seqs = [EventSequence([0.5, 1.0, 1.7], [0, 1, 0]) for _ in range(6)]
    single = [EventSequence([0.5], [1]), EventSequence([0.7], [0])]  # first events only: nothing scored
    write_split_folder(tmp_path / "d", [{"train": seqs, "val": single, "test": seqs[:2]}], num_marks=2)
    with pytest.raises(MtppError, match="validation part has 2 sequence.*no scored event"):
        fit(tiny(tmp_path / "d"), tmp_path / "run")
    # with first_event: include the single events are scored: it trains
    assert fit(tiny(tmp_path / "d", "model.first_event=include"), tmp_path / "run2")["train"]["epochs"] == 1
    # a test part that scores nothing would report an NLL of 0: refused too
    write_split_folder(tmp_path / "t", [{"train": seqs, "val": seqs[:2], "test": single}], num_marks=2)
    with pytest.raises(MtppError, match="test part has 2 sequence.*no scored event.*the reported metrics"):
        fit(tiny(tmp_path / "t"), tmp_path / "run3")


# ------------------------------------------------------------------------------------------------ one writer


LOCK_HOLDER = """
import sys, time
from mtpp.runs import RunLock
lock = RunLock(sys.argv[1], command="holder-test").acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _hold_lock(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(folder)], stdout=subprocess.PIPE, env=env,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_one_writer_per_run_folder_and_stale_locks_are_taken_over(tmp_path: Path) -> None:
    data = simulate(tmp_path / "sim")
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        with pytest.raises(MtppError) as e:
            fit(tiny(data), run)
        assert f"pid {holder.pid}" in str(e.value) and "holder-test" in str(e.value)
        assert main(["train", "--out", str(run), "--set", f"data.name={data}", *sum([["--set", o] for o in TINY], [])]) == 2
        assert not (run / "log.jsonl").exists()  # the refused command wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / ".mtpp.lock").exists()  # the dead holder's file is still there ...
    fit(tiny(data), run)  # ... and taken over
    assert not (run / ".mtpp.lock").exists()
    with RunLock(run):  # a lock is a lock in this process too
        with pytest.raises(MtppError, match=f"pid {os.getpid()}"):
            RunLock(run).acquire()


# ------------------------------------------------------------------------------------------------ kill points


def test_a_run_killed_before_its_first_checkpoint_restarts_and_temp_files_go(tmp_path: Path) -> None:
    data = simulate(tmp_path / "sim")
    run = tmp_path / "run"
    fit(tiny(data), run)
    # what SIGKILL between the first best.pt and the first checkpoint.pt leaves (plus a torn atomic write)
    (run / "checkpoint.pt").unlink()
    (run / "metrics.json").unlink()
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"torn")
    (run / ".metrics.json.tmp").write_text("{")
    (run / "notes.txt").write_text("mine")
    (run / ".notes.json.tmp").write_text("not ours")  # a temporary-looking file of someone else's
    assert fit(tiny(data), run, resume=True)["train"]["epochs"] == 1  # --resume: starts over, no error
    assert sorted(p.name for p in run.glob(".*.tmp")) == [".notes.json.tmp"]
    assert (run / "notes.txt").read_text() == "mine"
    (run / "checkpoint.pt").unlink()
    (run / "metrics.json").unlink()
    assert fit(tiny(data), run)["train"]["epochs"] == 1  # and without --resume / --overwrite too


# ------------------------------------------------------------------------------------------------ nothing deleted


def test_overwrite_removes_only_the_runs_own_files(tmp_path: Path) -> None:
    data = simulate(tmp_path / "sim")
    run = tmp_path / "run"
    fit(tiny(data), run)
    (run / "notes.txt").write_text("mine")
    (run / "plots").mkdir()
    (run / "plots" / "a.png").write_bytes(b"png")
    fit(tiny(data), run, overwrite=True)
    assert (run / "notes.txt").read_text() == "mine" and (run / "plots" / "a.png").exists()


def test_simulate_force_replaces_only_what_simulate_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "sim"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    (out / "split_x").mkdir()
    (out / "train.json").write_text("[]")  # not a simulate output name: stays
    simulate(out, 0, "--splits", "3")
    assert main(["simulate", "poisson", "--marks", "3", "--sequences", "40", "--window", "8", "--out", str(out)]) == 2
    simulate(out, 1, "--force")  # one split now: split_1 and split_2 of the earlier simulation go too
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "notes.txt", "split_0", "split_x", "train.json"]
    assert (out / "notes.txt").read_text() == "keep" and read(out / "args.json")["simulation_seed"] == 1
    # --out . --force in a working directory: only split_* and args.json are replaced
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "paper.tex").write_text("x")
    monkeypatch.chdir(cwd)
    simulate(Path("."), 0)
    simulate(Path("."), 2, "--force")
    assert (cwd / "paper.tex").read_text() == "x" and (cwd / "split_0").is_dir()
    # a split_<k> that simulate did not write (the user's, or with the user's file in it) is never removed
    mine = tmp_path / "mine"
    (mine / "split_3").mkdir(parents=True)
    (mine / "split_3" / "mine.txt").write_text("keep")
    for extra in ([], ["--force"]):
        assert main(["simulate", "poisson", "--marks", "2", "--sequences", "20", "--window", "8", "--out", str(mine),
                     *extra]) == 2
    assert (mine / "split_3" / "mine.txt").read_text() == "keep" and sorted(p.name for p in mine.iterdir()) == ["split_3"]
    simulate(out, 2, "--force")  # an earlier simulation with a file of the user's added to a split: kept
    (out / "split_0" / "notes.md").write_text("mine")
    assert main(["simulate", "poisson", "--marks", "3", "--sequences", "40", "--window", "8", "--out", str(out),
                 "--force"]) == 2
    assert (out / "split_0" / "notes.md").read_text() == "mine"


def test_variant_and_dataset_labels_that_are_paths_are_refused(tmp_path: Path) -> None:
    from mtpp import experiments as ex

    cfg = load_config(None, [*TINY, "data.max_sequences=8"])
    for bad in ("..", "."):
        with pytest.raises(ConfigError, match="cannot be a folder name"):
            run_variants(cfg, [{"name": bad, "model.decoder": "lnm"}], tmp_path / "v")
    assert not (tmp_path / "v").exists()
    # a variant's bad aggregator option is refused before variants.yaml or an earlier variant is written (the
    # command failed but left variants.yaml, or a trained first variant, in a folder it had created)
    for variants in ([{"name": "a", "gradients.aggregator": "cagrad", "gradients.options": {"rescale": 5}}],
                     [{"name": "a"}, {"name": "b", "gradients.aggregator": "pcgrad", "gradients.options": {"c": 1}}]):
        with pytest.raises(ConfigError, match=r"variant \w: gradients\.options"):
            run_variants(cfg, variants, tmp_path / "w")
        assert not (tmp_path / "w").exists()
    exp = ex.experiment_from_dict({"grid": {"datasets": [{"name": "..", "path": "somewhere"}]}})
    with pytest.raises(ConfigError, match="cannot be a folder name"):
        ex.expand(exp)
    for ok in ("thp_base", "a.b", "x+y"):
        assert check_folder_name(ok, "t") == ok
    for bad in ("", "a/b", "..", "a\x00"):
        with pytest.raises(ConfigError):
            check_folder_name(bad, "t")


@pytest.mark.parametrize("name", ["variants.yaml", "comparison.json", "comparison.md", "Comparison.MD"])
def test_a_variant_named_as_a_file_train_writes_beside_it_is_refused_before_training(tmp_path: Path,
                                                                                     name: str) -> None:
    """A variant named comparison.md trained, then its folder stood where mtpp train writes comparison.md: the
    command failed after the work with '.comparison.md.<x>.tmp: comparison.md: Is a directory'."""
    cfg = load_config(None, [*TINY, "data.max_sequences=8"])
    with pytest.raises(ConfigError, match=rf"variant name: {re.escape(repr(name))} is the name of a file this "
                                          r"command writes beside it \(variants.yaml, comparison.json, comparison.md\)"):
        run_variants(cfg, [{"name": name, "model.decoder": "lnm"}], tmp_path / "v")
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("label", ["summary.csv", "summary.md", "experiment.yaml", "failures.json", "plots"])
def test_a_dataset_label_named_as_a_file_compare_writes_is_refused_before_training(tmp_path: Path, label: str,
                                                                                   capsys) -> None:
    """A dataset file called summary.csv labelled its cells' folder summary.csv: the whole grid trained, then the
    summary said 'summary.csv: exists and was not written by mtpp'. The file name is now refused up front, with
    how to label the dataset."""
    from mtpp import experiments as ex

    data = tmp_path / "data" / label
    data.parent.mkdir()
    data.write_text("seq_id,time,mark\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"base": {"train": {"max_epochs": 1}}, "grid": {"datasets": [str(data)]}}))
    with pytest.raises(ConfigError, match=rf"the dataset label: {re.escape(repr(label))} is the name of a file"):
        ex.expand(ex.load_experiment(exp, []))
    assert main(["compare", str(exp), "--out", str(tmp_path / "out")]) == 2
    assert "{name: LABEL, path: PATH}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    ok = ex.experiment_from_dict({"grid": {"datasets": [{"name": "mine", "path": str(data)}]}})
    assert [c.name for c in ex.expand(ok)] == ["mine/model-base-sum/split0-seed0"]


# ------------------------------------------------------------------------------------------------ --resume


def test_quiet_is_not_stored_and_a_later_resume_talks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = simulate(tmp_path / "sim")
    run = tmp_path / "run"
    sets = sum([["--set", o] for o in TINY if not o.startswith("logging")], [])
    assert main(["train", "--out", str(run), "-q", "--set", f"data.name={data}", *sets]) == 0
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert "quiet" not in stored["logging"] and "progress" not in stored["logging"]
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--set", "train.max_epochs=2",
                 "--set", "logging.progress=false"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "epoch   2/2" in err and "resuming" in err
    log = (run / "train.log").read_text()
    assert "epoch   1/1" in log and "epoch   2/2" in log  # the quiet first run is in train.log too


def test_variants_resume_like_a_single_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = simulate(tmp_path / "sim")
    cfg_file = tmp_path / "v.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "data": {"name": str(data)},
        "variants": [{"name": "a", "model.parametrisation": "base"}, {"name": "b", "model.parametrisation": "plus"}],
    }))  # fmt: skip
    out = tmp_path / "out"
    sets = sum([["--set", o] for o in TINY], [])
    assert main(["train", str(cfg_file), "--out", str(out), *sets]) == 0
    assert (out / "variants.yaml").is_file() and not (out / "config.yaml").exists()
    # --resume without CONFIG reads variants.yaml and extends both finished variants to 2 epochs
    assert main(["train", "--out", str(out), "--resume", *sets, "--set", "train.max_epochs=2"]) == 0
    for v in ("a", "b"):
        assert read(out / v / "metrics.json")["train"]["epochs"] == 2
    # a changed model is refused, as for a single run
    assert main(["train", "--out", str(out), "--resume", *sets, "--set", "model.hidden_size=16"]) == 2
    assert "model.hidden_size" in capsys.readouterr().err
    # a finished variant with nothing more to do is kept as is
    before = (out / "a" / "metrics.json").read_text()
    assert main(["train", "--out", str(out), "--resume", *sets, "--set", "train.max_epochs=2"]) == 0
    assert (out / "a" / "metrics.json").read_text() == before
    # a folder started with --variant continues that variant only (it used to train the others from scratch)
    only = tmp_path / "only"
    assert main(["train", str(cfg_file), "--out", str(only), "--variant", "b", *sets]) == 0
    assert main(["train", "--out", str(only), "--resume", *sets, "--set", "train.max_epochs=2"]) == 0
    assert not (only / "a").exists() and read(only / "b" / "metrics.json")["train"]["epochs"] == 2


# ------------------------------------------------------------------------------------------------ runs that talk


def test_header_epoch_lines_and_train_log(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = simulate(tmp_path / "sim")
    run = tmp_path / "run"
    fit(tiny(data, "logging.quiet=false", "train.max_epochs=2"), run)
    captured = capsys.readouterr()
    err = captured.err
    assert "NLL per sequence in nats" in captured.out + captured.err  # the final summary says its units
    for text in (str(data.resolve()), "train/val/test", "3 marks", "parameters", "device  cpu", "thread",
                 str(run), "'*' = best so far", "nats/seq", "epoch   1/2 *", "(L_T + L_M "):  # fmt: skip
        assert text in err, text
    log = (run / "train.log").read_text()
    assert str(data.resolve()) in log and "epoch   2/2" in log and "best epoch" in log
    assert "no effect" not in err
    # a remedy on '++' (nothing shared) is accepted but the header says it does nothing
    fit(tiny(data, "logging.quiet=false", "model.parametrisation=plusplus", "gradients.aggregator=pcgrad"),
        tmp_path / "pp")
    assert "aggregator pcgrad (seed=None; no effect: '++' shares no parameters" in capsys.readouterr().err
    # an option that changes nothing with two tasks (time, mark) is accepted, and the header says so
    fit(tiny(data, "logging.quiet=false", "gradients.aggregator=pcgrad", "gradients.options.seed=3"), tmp_path / "pc")
    err = capsys.readouterr().err
    assert "aggregator pcgrad (seed=3: no effect with two tasks (time, mark): no random task order)" in err, err
    assert "no random task order" in (tmp_path / "pc" / "train.log").read_text()


def test_interrupted_run_says_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    from mtpp.training.trainer import Trainer

    data = simulate(tmp_path / "sim")
    real = Trainer._end_epoch

    def end_then_interrupt(self, *a):
        real(self, *a)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_epoch", end_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(data, "train.max_epochs=3"), tmp_path / "run")
    hint = f"mtpp train --out {tmp_path / 'run'} --resume"
    assert hint in capsys.readouterr().err and hint in (tmp_path / "run" / "train.log").read_text()
    assert not (tmp_path / "run" / ".mtpp.lock").exists()


def test_progress_bar_counts_every_step_without_flushing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtpp.training import logging as run_logging
    from mtpp.training.gradients import StatsBuffer

    data = simulate(tmp_path / "sim")
    steps, flushes = [], []
    monkeypatch.setattr(run_logging.Progress, "step", lambda self, n=1: steps.append(n))
    real_flush = StatsBuffer.flush
    monkeypatch.setattr(StatsBuffer, "flush", lambda self: flushes.append(1) or real_flush(self))
    fit(tiny(data, "logging.flush_every=1000", "train.max_epochs=2"), tmp_path / "run")
    n_steps = read(tmp_path / "run" / "metrics.json")["train"]["steps"]
    assert len(steps) == n_steps > len(flushes) / 2  # one bar step per training step; flushes stay per epoch


# ------------------------------------------------------------------------------------------------ the CLI


def test_help_imports_no_torch_and_every_command_has_a_description() -> None:
    code = textwrap.dedent("""
        import argparse, contextlib, io, sys
        from mtpp.cli import build_parser, main
        for argv in (["--help"], ["train", "--help"], ["bench", "--help"], ["data", "list", "--help"]):
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(argv)
                except SystemExit:
                    pass
        assert "torch" not in sys.modules and "numpy" not in sys.modules, sorted(m for m in sys.modules if "torch" in m)[:5]
        def walk(p, path):
            for a in p._actions:
                if isinstance(a, argparse._SubParsersAction):
                    for name, sub in a.choices.items():
                        assert sub.description, path + [name]
                        page = sub.format_help()  # renders (help strings are %-formatted, descriptions are not)
                        assert "%%" not in page, (path + [name], "a literal %% on the help page")
                        walk(sub, path + [name])
        walk(build_parser(), [])
        print("ok")
    """)
    import resource

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run([sys.executable, "-m", "mtpp", "--help"], capture_output=True, text=True, env=env, timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert res.returncode == 0 and "usage: mtpp" in res.stdout and cpu < 1.0, cpu


def test_bench_warns_when_the_machine_is_busy() -> None:
    from mtpp.bench import busy_warning

    assert busy_warning(threads=1, cores=4, load=0.5) is None
    msg = busy_warning(threads=2, cores=2, load=1.5)
    assert msg is not None and "busy" in msg and "not comparable" in msg and "1.5" in msg


def test_bench_prints_progress_per_model_and_phase(capsys: pytest.CaptureFixture) -> None:
    args = ["bench", "--models", "gru-lnm-base", "gru-rmtpp-base", "--steps", "2", "--rounds", "1", "--warmup", "0",
            "--no-isolate", "--threads", "1", "--set", "model.hidden_size=8"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "bench: data synthetic_hawkes <- " in err
    assert "[1/2] gru-lnm-base" in err and "[2/2] gru-rmtpp-base" in err
    for phase in ("round 1/1: training step", "round 1/1: training step + diagnostics", "evaluation"):
        assert f"gru-rmtpp-base: {phase}" in err


# ------------------------------------------------------------------------------------------------ compare workers


FAKE_FIT = """
import os, time
from pathlib import Path

def fit(config, out_dir, resume=False, overwrite=False):
    Path(out_dir, "pid").write_text(str(os.getpid()))
    time.sleep(120)
"""

RUN_GRID = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's job, whatever the test runner inherited
sys.path.insert(0, sys.argv[2])
import fakefit
from mtpp import experiments as ex
exp = ex.experiment_from_dict({"base": {"train": {"max_epochs": 1}}, "grid": {"seeds": [0, 1, 2, 3, 4]}})
ex.run_grid(ex.expand(exp), sys.argv[1], jobs=2, progress=False, fit=fakefit.fit)
"""


def _start_grid(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "fakefit.py").write_text(FAKE_FIT)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path / "mods")])}
    proc = subprocess.Popen([sys.executable, "-c", RUN_GRID, str(out), str(tmp_path / "mods")], env=env,
                            start_new_session=True)  # its own process group, as a terminal's job
    deadline = time.monotonic() + 90
    while len(list(out.rglob("pid"))) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, "the workers did not start"
        time.sleep(0.2)
    return proc, out


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal and process checks: Linux")
@pytest.mark.parametrize("sig, group", [(signal.SIGKILL, False), (signal.SIGINT, False), (signal.SIGINT, True)])
def test_compare_workers_stop_with_their_parent(tmp_path: Path, sig: int, group: bool) -> None:
    """SIGKILL of the parent alone; Ctrl-C as the parent alone gets it; Ctrl-C in a terminal (the whole group)."""
    proc, out = _start_grid(tmp_path)
    pids = [int(p.read_text()) for p in out.rglob("pid")]
    try:
        start = time.monotonic()
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        proc.wait(timeout=30)
        if sig == signal.SIGINT:
            assert time.monotonic() - start < 10  # stops within seconds
        assert all(_gone(pid, 10) for pid in pids), "a worker outlived its parent"
        time.sleep(1)
        assert len(list(out.rglob("pid"))) == 2  # no queued cell started after the parent went
    finally:  # nothing outlives a failed test: the parent's group, then any worker that left it
        for kill in ([lambda: os.killpg(proc.pid, signal.SIGKILL)]
                     + [lambda pid=pid: os.kill(pid, signal.SIGKILL) for pid in pids]):  # fmt: skip
            try:
                kill()
            except ProcessLookupError:
                pass
        with contextlib.suppress(subprocess.TimeoutExpired):  # never hide the test's own failure
            proc.wait(timeout=10)


def test_compare_refuses_finished_cells_trained_on_other_data(tmp_path: Path) -> None:
    from mtpp import experiments as ex

    data = simulate(tmp_path / "sim")
    base = tiny_base()
    exp = ex.experiment_from_dict({"base": base, "grid": {"datasets": [str(data)], "seeds": [0]}})
    cells = ex.expand(exp)
    assert [r.status for r in ex.run_grid(cells, tmp_path / "out", progress=False)] == ["done"]
    assert [r.status for r in ex.run_grid(cells, tmp_path / "out", progress=False)] == ["skipped"]
    simulate(data, 1, "--force")
    with pytest.raises(ConfigError, match="other data: recorded .*differing: train, val, test"):
        ex.run_grid(cells, tmp_path / "out", progress=False)
    assert [r.status for r in ex.run_grid(cells, tmp_path / "out", progress=False, rerun_stale=True)] == ["done"]


def test_a_result_record_of_other_data_is_stale_on_a_fresh_machine(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """A committed record stands in for a cell only on the data it was tested on: on a fresh machine (no run
    folder) whose data differ, the grid refuses it as stale, naming what differs."""
    from mtpp import experiments as ex

    data = simulate(tmp_path / "sim")
    base = tiny_base()
    cells = ex.expand(ex.experiment_from_dict({"base": base, "grid": {"datasets": [str(data)], "seeds": [0]}}))
    results = tmp_path / "results"
    assert [r.status for r in ex.run_grid(cells, tmp_path / "m1", progress=False, results_dir=results)] == ["done"]
    statuses = [r.status for r in ex.run_grid(cells, tmp_path / "m2", progress=False, results_dir=results)]
    assert statuses == ["skipped"] and not (tmp_path / "m2" / cells[0].name).exists()
    simulate(data, 1, "--force")
    with pytest.raises(ConfigError, match=r"its record .*other data: recorded .*differing: train, val, test"):
        ex.run_grid(cells, tmp_path / "m3", progress=False, results_dir=results)
    # the dry run says so too (for the record and for the finished run folder)
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"base": base, "grid": {"datasets": [str(data)], "seeds": [0]}}))
    capsys.readouterr()
    for out in ("m3", "m1"):
        assert main(["compare", str(exp), "--out", str(tmp_path / out), "--results", str(results), "--dry-run"]) == 1
        printed = capsys.readouterr()
        assert printed.out.split()[0] == "stale" and "the real run would stop: 1 stale cell(s)" in printed.err


def test_a_cell_trained_in_another_time_scale_is_stale(tmp_path: Path) -> None:
    """The resolved time scale is part of what trained a cell: a record (or a finished run folder) whose
    ``run_info.time_scale`` is not what ``data.time_scale`` resolves to now (the ``auto`` rule changed, as it did
    from the mean to the median gap) is refused as stale, naming both scales; ``--rerun-stale`` retrains it."""
    import json

    from mtpp import experiments as ex
    from mtpp.records import record_path

    data = simulate(tmp_path / "sim")
    cells = ex.expand(ex.experiment_from_dict({"base": tiny_base(), "grid": {"datasets": [str(data)], "seeds": [0]}}))
    results = tmp_path / "results"
    assert [r.status for r in ex.run_grid(cells, tmp_path / "m1", progress=False, results_dir=results)] == ["done"]
    path = record_path(results, cells[0].name)
    record = json.loads(path.read_text())
    scale = record["config"]["run_info"]["time_scale"]
    record["config"]["run_info"]["time_scale"] = 580.0 * scale
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"its record .*other time scale: trained in units of .*data.time_scale=auto "
                                          r"gives .* now"):  # fmt: skip
        ex.run_grid(cells, tmp_path / "m2", progress=False, results_dir=results)
    # the same for a finished run folder
    cfg = tmp_path / "m1" / cells[0].name / "config.yaml"
    stored = yaml.safe_load(cfg.read_text())
    stored["run_info"]["time_scale"] = 2.0 * scale
    cfg.write_text(yaml.safe_dump(stored))
    with pytest.raises(ConfigError, match="other time scale"):
        ex.run_grid(cells, tmp_path / "m1", progress=False)
    assert [r.status for r in ex.run_grid(cells, tmp_path / "m1", progress=False, rerun_stale=True)] == ["done"]
    assert [r.status for r in ex.run_grid(cells, tmp_path / "m1", progress=False)] == ["skipped"]
    # an interrupted cell (a checkpoint, no test metrics) started in another scale is stale too, not resumed in it
    run = tmp_path / "m1" / cells[0].name
    (run / "metrics.json").unlink()
    assert ex.grid_states(cells, tmp_path / "m1", []) == {cells[0].name: "resume"}
    stored = yaml.safe_load(cfg.read_text())
    stored["run_info"]["time_scale"] = 3.0 * scale
    cfg.write_text(yaml.safe_dump(stored))
    with pytest.raises(ConfigError, match="other time scale: trained in units of"):
        ex.run_grid(cells, tmp_path / "m1", progress=False)


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
import torch
from mtpp.training import checkpoint, trainer
from mtpp.evaluation import evaluate as ev
from mtpp.config import load_config

point, out, data = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
real_save, real_json = checkpoint.save_atomic, ev.write_json

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def save_atomic(obj, path):
    name = Path(path).name
    if point == "before-best" and name == checkpoint.BEST:
        die()
    if point == "torn-checkpoint" and name == checkpoint.CHECKPOINT:
        import tempfile
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=Path(path).parent)
        os.write(fd, b"half")
        die()
    if point == "before-checkpoint" and name == checkpoint.CHECKPOINT:
        die()
    real_save(obj, path)
    if point == "after-checkpoint" and name == checkpoint.CHECKPOINT:
        die()

def write_json(path, obj):
    if point == "before-metrics" and Path(path).name == "metrics.json":
        die()
    real_json(path, obj)

checkpoint.save_atomic = save_atomic
trainer.write_json = write_json
cfg = load_config(None, sys.argv[4:] + [f"data.name={data}"])
trainer.fit(cfg, out)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL of a child process")
@pytest.mark.parametrize("point", ["before-best", "before-checkpoint", "torn-checkpoint", "after-checkpoint",
                                   "before-metrics"])  # fmt: skip
def test_every_sigkill_point_is_resumable(tmp_path: Path, point: str) -> None:
    data = simulate(tmp_path / "sim")
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", KILLED_RUN, point, str(run), str(data), *TINY, "train.max_epochs=2"],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert not (run / "metrics.json").exists()
    # the documented way on: --resume (a restart when there is no checkpoint yet), no --overwrite
    metrics = fit(tiny(data, "train.max_epochs=2"), run, resume=True)
    assert metrics["train"]["epochs"] == 2 and (run / "metrics.json").is_file()
    assert not list(run.glob(".*.tmp")), list(run.glob(".*.tmp"))


def test_compare_and_variants_keep_unrelated_files(tmp_path: Path) -> None:
    from mtpp import experiments as ex

    data = simulate(tmp_path / "sim")
    base = {"data": {"name": str(data)}, "train": {"max_epochs": 1, "batch_size": 8, "device": "cpu"},
            "model": {"hidden_size": 8, "decoder": "lnm", "num_components": 2}}  # fmt: skip
    cells = ex.expand(ex.experiment_from_dict({"base": base}))
    out = tmp_path / "out"
    cell_dir = out / cells[0].name
    cell_dir.mkdir(parents=True)
    (out / "notes.md").write_text("mine")
    (cell_dir / "notes.md").write_text("mine")
    # a run that died before its checkpoint (the trainer's config.yaml carries run_info)
    (cell_dir / "config.yaml").write_text("train: {max_epochs: 1}\nrun_info: {seed: 0}\n")
    (cell_dir / "log.jsonl").write_text("")
    assert [r.status for r in ex.run_grid(cells, out, progress=False)] == ["done"]
    assert (out / "notes.md").read_text() == "mine" and (cell_dir / "notes.md").read_text() == "mine"
    cfg = load_config(None, [*TINY, f"data.name={data}"])
    vout = tmp_path / "variants"
    vout.mkdir()
    (vout / "notes.md").write_text("mine")
    run_variants(cfg, [{"name": "a"}], vout)
    run_variants(cfg, [{"name": "a"}], vout, overwrite=True)
    assert (vout / "notes.md").read_text() == "mine"


def test_report_refuses_runs_of_one_dataset_tested_on_different_data(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    simulate(tmp_path / "A" / "mine", seed=0)
    simulate(tmp_path / "B" / "mine", seed=1)
    fit(tiny("mine"), tmp_path / "runs" / "a", data_dir=str(tmp_path / "A"))
    fit(tiny("mine", "model.decoder=rmtpp"), tmp_path / "runs" / "b", data_dir=str(tmp_path / "A"))
    assert main(["report", str(tmp_path / "runs"), "--no-plots"]) == 0
    fit(tiny("mine", "train.seed=1"), tmp_path / "runs" / "c", data_dir=str(tmp_path / "B"))
    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "tested on different data" in err and str(tmp_path / "runs" / "c") in err
    assert main(["report", str(tmp_path / "runs"), "--no-plots", "--allow-mixed-data"]) == 0
    assert "warning: mine split 0" in capsys.readouterr().err


def test_auto_preparing_a_dot_file_writes_into_the_cache(tmp_path: Path) -> None:
    from mtpp.data.catalog import cache_dir, load_dataset

    rng = np.random.default_rng(0)
    seqs = [{"time_since_start": np.sort(rng.uniform(0, 10, 5)).tolist(), "type_event": rng.integers(0, 2, 5).tolist()}
            for _ in range(30)]  # fmt: skip
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / ".events.json").write_text(json.dumps(seqs))
    ds = load_dataset(tmp_path / "in" / ".events.json")
    assert ds.name == "events"
    assert Path(ds.source).parent == cache_dir() / "prepared"
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == [".events.json"]  # nothing beside the input


def test_one_compare_and_one_variants_command_per_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"base": {"train": {"max_epochs": 1}}}))
    holder = _hold_lock(tmp_path / "out")
    try:
        assert main(["compare", str(exp), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert not (tmp_path / "out" / "experiment.yaml").exists()
        cfg = load_config(None, [*TINY])
        with pytest.raises(MtppError, match=f"pid {holder.pid}"):
            run_variants(cfg, [{"name": "a"}], tmp_path / "out")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_other_data_with_more_marks_than_the_model_is_one_clear_error(tmp_path: Path) -> None:
    data = simulate(tmp_path / "sim")
    fit(tiny(data), tmp_path / "run")
    assert main(["simulate", "poisson", "--marks", "5", "--sequences", "40", "--window", "8", "--out",
                 str(data), "--force"]) == 0  # fmt: skip
    with pytest.raises(MtppError, match="knows 3 marks, the data have 5"):
        evaluate(tmp_path / "run", "test", other_data=True)


def test_a_refused_checkpoint_names_the_refused_global(tmp_path: Path) -> None:
    import fractions

    torch.save({"model": {}, "x": fractions.Fraction(1, 3)}, tmp_path / "best.pt")
    with pytest.raises(MtppError) as e:
        checkpoint.load(tmp_path / "best.pt")
    msg = str(e.value)
    assert "fractions.Fraction" in msg and str(tmp_path / "best.pt") in msg and "\n" not in msg
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(MtppError, match="torn.pt: cannot read checkpoint"):
        checkpoint.load(tmp_path / "torn.pt")


def test_the_lock_without_flock_decides_by_the_holders_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    def no_flock(fd, op):
        raise OSError(37, "No locks available")  # ENOLCK, as on some network file systems

    monkeypatch.setattr(fcntl, "flock", no_flock)
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(MtppError, match=f"pid {os.getpid()}"):
            RunLock(run).acquire()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (run / ".mtpp.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with RunLock(run):  # a dead holder of this host: taken over
        pass
    (run / ".mtpp.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(MtppError, match="pid 1 on elsewhere"):
        RunLock(run).acquire()


def test_train_log_keeps_the_auto_preparation_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(1)
    seqs = [{"time_since_start": np.sort(rng.uniform(0, 10, 6)).tolist(), "type_event": rng.integers(0, 2, 6).tolist()}
            for _ in range(40)]  # fmt: skip
    (tmp_path / "events.json").write_text(json.dumps(seqs))
    fit(tiny(tmp_path / "events.json"), tmp_path / "run")
    assert capsys.readouterr().err.count("auto-prepared 5 seeded") == 1  # still on the console, once
    log = (tmp_path / "run" / "train.log").read_text()
    assert "WARNING: " in log and "auto-prepared 5 seeded 60/20/20 splits" in log
    # with the run header on the console too, the re-split is still said once (not again as a header note)
    (tmp_path / "other.json").write_text(json.dumps(seqs[:-1]))
    fit(tiny(tmp_path / "other.json", "logging.quiet=false"), tmp_path / "loud")
    err = capsys.readouterr().err
    assert err.count("auto-prepared 5 seeded") == 1 and "run " in err


def test_holder_of_names_a_live_holder_and_takes_nothing(tmp_path: Path) -> None:
    """``RunLock.holder_of`` (``compare --dry-run`` says "running"): None without a lock file or with a free one,
    the holder's pid while held, and the lock stays takeable afterwards."""
    import os

    from mtpp.runs import LOCK_FILE, RunLock

    run = tmp_path / "run"
    assert RunLock.holder_of(run) is None
    with RunLock(run):
        holder = RunLock.holder_of(run)
        assert holder is not None and int(holder["pid"]) == os.getpid()
    (run / LOCK_FILE).write_text('{"pid": 1, "host": "elsewhere"}')  # a file left by a killed process
    assert RunLock.holder_of(run) is None
    with RunLock(run):  # still takeable
        pass


def test_last_epoch_record_reads_the_tail_of_a_long_log(tmp_path: Path) -> None:
    """The last epoch line behind many step lines and a line cut by a kill, in small blocks."""
    import json

    from mtpp.experiments import last_epoch_record

    run = tmp_path / "run"
    run.mkdir()
    assert last_epoch_record(run) is None
    lines = []
    for epoch in (1, 2):
        lines += [json.dumps({"kind": "step", "step": i, "cos_tm": 0.1}) for i in range(200)]
        lines.append(json.dumps({"kind": "epoch", "epoch": epoch, "best_epoch": 1}))
    lines += [json.dumps({"kind": "step", "step": 999}) for _ in range(50)]
    (run / "log.jsonl").write_text("\n".join(lines) + '\n{"kind": "epoch", "epo')  # cut by a kill
    assert last_epoch_record(run, chunk=1000) == {"kind": "epoch", "epoch": 2, "best_epoch": 1}
    assert last_epoch_record(run, chunk=1000, limit=1000) is None  # not within the last 1000 bytes


@pytest.mark.skipif(sys.platform != "linux", reason="signals: Linux")
def test_kill_stops_a_run_as_ctrl_c_does(tmp_path: Path) -> None:
    """``kill PID`` (SIGTERM, the way to stop a background job that ignores SIGINT) ends mtpp train like Ctrl-C:
    exit 143, a line saying so, and train.log telling how to continue from the checkpoint; --resume then works."""
    data = simulate(tmp_path / "sim")
    out = tmp_path / "run"
    # no end but the signal: early stopping (patience) could end this easy run between its first checkpoint and
    # the signal, which then met a finished process (exit 0, or 1 when it hit the interpreter's shutdown)
    args = [*[a for a in TINY if not a.startswith("train.max_epochs")], "train.max_epochs=100000",
            "train.patience=100000", f"data.name={data}"]  # fmt: skip
    cmd = [sys.executable, "-m", "mtpp", "train", "--out", str(out), "-q", *[x for a in args for x in ("--set", a)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").is_file():
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "mtpp train: terminated (SIGTERM)" in err
    hint = f"interrupted; continue with: mtpp train --out {out} --resume"
    assert hint in err and hint in (out / "train.log").read_text()
    assert main(["train", "--out", str(out), "--resume", "-q", "--set", "train.max_epochs=2"]) == 0
    assert (out / "metrics.json").is_file()


def test_report_says_why_when_only_the_window_setting_differs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Same source, one run scoring the simulation window and one not: the refusal names ``data.use_window``."""
    simulate(tmp_path / "A" / "mine", seed=0)
    fit(tiny("mine"), tmp_path / "runs" / "a", data_dir=str(tmp_path / "A"))
    fit(tiny("mine", "data.use_window=true"), tmp_path / "runs" / "b", data_dir=str(tmp_path / "A"))
    capsys.readouterr()
    assert main(["report", str(tmp_path / "runs"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "tested on different data" in err
    assert "data.use_window false vs true" in err and "survival term" in err


def test_a_config_edited_after_training_is_one_line_naming_the_setting(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """best.pt no longer fitting config.yaml (hidden size edited): evaluate / predict / generate and --resume say
    so in one line naming the file and the model setting, not torch's shape list."""
    data = simulate(tmp_path / "sim")
    run = tmp_path / "run"
    fit(tiny(data), run)
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("hidden_size: 8", "hidden_size: 16"))
    for args in (["evaluate", str(run)], ["predict", str(run), "--out", str(tmp_path / "p.csv")],
                 ["generate", str(run), "--events", "2", "--out", str(tmp_path / "g.csv")]):
        capsys.readouterr()
        assert main(args) != 0
        err = capsys.readouterr().err
        assert "best.pt: the weights do not fit" in err and "model.hidden_size: 8 (trained) vs 16" in err, args
        assert "Traceback" not in err and "size mismatch" in err.splitlines()[-1]
    # --resume restores checkpoint.pt through the same loader
    from mtpp.models import build_model
    from mtpp.runs import load_weights

    wide = load_config(None, [*TINY, "model.hidden_size=16"])
    state = checkpoint.load(run / checkpoint.CHECKPOINT)
    with pytest.raises(MtppError, match=r"checkpoint.pt: the weights do not fit.*model.hidden_size: 8 \(trained\)"):
        load_weights(build_model(wide.model, 3), state, run / checkpoint.CHECKPOINT, wide.to_dict())


def test_data_dir_finds_a_copy_of_the_recorded_data_of_a_dataset_given_as_a_path(tmp_path: Path,
                                                                                 capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Trained on a CSV given by path (auto-prepared into the cache). The CSV is then edited and the prepared folder
    moved: the run refuses the edited data, and --data-dir pointing at the moved folder (the recorded data) works,
    as the refusal says."""
    import shutil

    import pandas as pd

    rng = np.random.default_rng(0)
    rows = [(s, float(t), int(rng.integers(0, 3))) for s in range(40) for t in np.sort(rng.uniform(0, 10, 6))]
    csv = tmp_path / "mine.csv"
    pd.DataFrame(rows, columns=["seq_id", "time", "mark"]).to_csv(csv, index=False)
    run = tmp_path / "run"
    fit(tiny(csv), run)
    recorded = Path(open_run(run).data_record["source"])
    moved = tmp_path / "moved"
    shutil.move(str(recorded), moved)
    csv.write_text("".join(csv.read_text().splitlines(keepends=True)[:-6]))  # the last sequence gone: other data
    capsys.readouterr()
    assert main(["predict", str(run), "--out", str(tmp_path / "a.csv")]) == 2
    assert "the data differ from the run's" in capsys.readouterr().err
    assert main(["predict", str(run), "--out", str(tmp_path / "b.csv"), "--data-dir", str(moved)]) == 0
    assert main(["evaluate", str(run), "--data-dir", str(moved)]) == 0
    # the recorded folder back, but edited too: the refusal names both places it read, not only the last one
    import json as _json

    shutil.copytree(moved, recorded)
    test = recorded / "split_0" / "test.json"
    seqs = _json.loads(test.read_text())
    test.write_text(_json.dumps(seqs[:-1] if isinstance(seqs, list) else seqs))
    assert main(["predict", str(run), "--out", str(tmp_path / "c.csv")]) == 2
    err = capsys.readouterr().err
    assert "the data differ from the run's" in err and f"also tried {recorded} (" in err, err


def test_a_path_that_is_not_one_run_says_what_it_is(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A missing path, a folder of runs (variants / a grid) and a plain folder: three different one-line errors."""
    runs = tmp_path / "variants"
    for name in ("a", "b"):
        (runs / name).mkdir(parents=True)
        (runs / name / "config.yaml").write_text("train: {max_epochs: 1}\n")
    (tmp_path / "plain").mkdir()
    cases = [(tmp_path / "nowhere", "does not exist"),
             (runs, f"a folder of 2 runs, not one run; pass one of them: {runs / 'a'}, {runs / 'b'}"),
             (tmp_path / "plain", "not a run directory (no config.yaml)")]  # fmt: skip
    for path, fragment in cases:
        with pytest.raises(MtppError, match="^" + re.escape(f"{path}: {fragment}")):
            open_run(path)
        assert main(["predict", str(path), "--out", str(tmp_path / "x.csv")]) == 2
        assert fragment in capsys.readouterr().err


def test_train_never_replaces_files_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--out holding the user's own config.yaml (even the one being trained from) or log.jsonl: refused in one line,
    with or without --overwrite, the files untouched; --out naming a file: one line, no traceback."""
    data = simulate(tmp_path / "sim")
    own = tmp_path / "exp"
    own.mkdir()
    cfg = own / "config.yaml"
    cfg.write_text(f"data: {{name: {data}}}\ntrain: {{max_epochs: 1, batch_size: 8, device: cpu}}\n# my notes\n")
    before = cfg.read_text()
    for extra in ([], ["--overwrite"]):
        capsys.readouterr()
        assert main(["train", str(cfg), "--out", str(own), *extra]) == 2
        err = capsys.readouterr().err
        assert "config.yaml that mtpp did not write" in err and "Traceback" not in err
    assert cfg.read_text() == before  # a refused folder gets nothing, not even a train.log
    assert sorted(p.name for p in own.iterdir()) == ["config.yaml"]
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "log.jsonl").write_text("my own log\n")
    assert main(["train", str(cfg), "--out", str(logs)]) == 2
    assert "log.jsonl that mtpp did not write" in capsys.readouterr().err
    assert (logs / "log.jsonl").read_text() == "my own log\n"
    (logs / "log.jsonl").unlink()
    (logs / "train.log").write_text("my training notes\n")  # a user's train.log is not appended to
    assert main(["train", str(cfg), "--out", str(logs)]) == 2
    assert "train.log that mtpp did not write" in capsys.readouterr().err
    assert sorted(p.name for p in logs.iterdir()) == ["train.log"]
    assert (logs / "train.log").read_text() == "my training notes\n"
    # a finished run refused without --overwrite: its train.log gets no line of the refused command
    run = tmp_path / "finished"
    assert main(["train", str(cfg), "--out", str(run), "-q"]) == 0
    log = (run / "train.log").read_text()
    assert main(["train", str(cfg), "--out", str(run), "-q"]) == 2
    assert "already holds a run" in capsys.readouterr().err and (run / "train.log").read_text() == log
    (tmp_path / "afile").write_text("hi")
    assert main(["train", str(cfg), "--out", str(tmp_path / "afile")]) == 2
    assert "exists and is a file" in capsys.readouterr().err
    # every file a run replaces is checked, not only the text logs: a user's JSON object named metrics.json, plot
    # arrays, a checkpoint that is not mtpp's (another torch file, or not a torch file at all)
    import torch

    for name, write in (("metrics.json", lambda f: f.write_text('{"mine": 1}')),
                        ("arrays_test.json", lambda f: f.write_text('{"mine": 2}')),
                        ("best.pt", lambda f: f.write_bytes(b"not a checkpoint")),
                        ("checkpoint.pt", lambda f: torch.save({"weights": torch.zeros(2)}, f))):  # fmt: skip
        folder = tmp_path / f"user_{name}"
        folder.mkdir()
        write(folder / name)
        before = (folder / name).read_bytes()
        for extra in ([], ["--overwrite"]):
            assert main(["train", str(cfg), "--out", str(folder), "-q", *extra]) == 2
            err = capsys.readouterr().err
            assert f"{name} that mtpp did not write" in err and "Traceback" not in err, (name, err)
        assert (folder / name).read_bytes() == before and [p.name for p in folder.iterdir()] == [name]
    # mtpp's own folders still restart and resume as before
    fit(tiny(data), tmp_path / "run")
    assert {"metrics.json", "arrays_test.json", "best.pt", "checkpoint.pt"} <= {p.name for p in (tmp_path / "run").iterdir()}
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--overwrite"]) == 0


def test_simulate_warns_when_a_part_is_empty(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two sequences split 60/20/20 leave val and test empty: written, with a warning that training needs them."""
    assert main(["simulate", "poisson", "--marks", "2", "--sequences", "2", "--window", "10",
                 "--out", str(tmp_path / "s")]) == 0
    assert "warning: the val and test part(s) are empty" in capsys.readouterr().err
    simulate(tmp_path / "ok")
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("extra, fragment", [
    (["hawkes", "--marks", "100000", "--sequences", "2", "--window", "1"], "100,000 marks"),  # numpy asked 74.5 GiB
    (["hawkes", "--marks", "2", "--sequences", "10", "--window", "1e12"], "about 2e+13 events"),
    (["hawkes", "--marks", "2", "--sequences", "10", "--window", "5", "--base-rate", "1e10"], "events in all"),
    (["poisson", "--marks", "2", "--sequences", "100000000", "--window", "1"], "100,000,000 sequences"),
])  # fmt: skip
def test_simulate_refuses_what_would_not_fit_before_allocating(extra: list[str], fragment: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """Sizes that ran out of memory inside numpy, or ran for minutes without a word: refused up front from the
    expected number of events and the intensity state's size, naming them and --max-memory; nothing written."""
    out = tmp_path / "sim"
    assert main(["simulate", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "this simulation needs about" in err and fragment in err and "--max-memory 4 GiB" in err, err
    assert "Traceback" not in err and not out.exists()
    # a raised budget lets a moderate one through
    assert main(["simulate", "hawkes", "--marks", "2", "--sequences", "20", "--window", "5", "--out", str(out),
                 "--max-memory", "0.5"]) == 0


def test_data_moved_after_training_is_named_with_the_option_that_finds_it(tmp_path: Path, capsys) -> None:
    """A run trained on a folder given by path, the folder moved: evaluate / predict / --resume said only that
    the path was not found in the working directory or the data folder, not that the run had read its data from
    a folder now gone, nor that --data-dir NEW_PLACE finds them."""
    data = simulate(tmp_path / "sim")
    run = tmp_path / "run"
    fit(tiny(data), run)
    moved = data.rename(tmp_path / "sim moved")
    for command in (["evaluate", str(run)], ["predict", str(run), "--out", str(tmp_path / "p.csv")],
                    ["train", "--out", str(run), "--resume", "--set", "train.max_epochs=2"]):  # fmt: skip
        capsys.readouterr()
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"the run read its data from {data.resolve()}, which no longer exists" in err, err
        assert "pass --data-dir with its new location" in err
    assert main(["evaluate", str(run), "--data-dir", str(moved)]) == 0
