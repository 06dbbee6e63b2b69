"""A table of bad inputs: each is a DataError naming the file and (where it applies) the sequence."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path
from typing import Callable

import pytest

from mtpp.cli import main
from mtpp.data.catalog import load_dataset
from mtpp.data.formats import read_any
from mtpp.errors import DataError

GOOD = [{"time": 0.5, "labels": [0]}, {"time": 1.5, "labels": [1]}]


def _bosser_file(tmp_path: Path, bad_seq: object) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps([GOOD, GOOD, bad_seq]))
    return p


def _ev(*pairs) -> list:
    return [{"time": t, "labels": [k]} for t, k in pairs]


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _truncated_gz(tmp_path: Path) -> Path:
    data = gzip.compress(json.dumps([GOOD] * 50).encode())
    p = tmp_path / "trunc.json.gz"
    p.write_bytes(data[: len(data) // 2])
    return p


def _evil_pickle(tmp_path: Path) -> Path:
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"dim_process": 2, "train": [Evil()]}))
    return p


def _easytpp_string_time(tmp_path: Path) -> Path:
    p = tmp_path / "bad.json"
    rec = {"dim_process": 2, "time_since_start": [0.0, 1.0], "type_event": [0, 1]}
    p.write_text(json.dumps([rec, {**rec, "time_since_start": [0.0, "soon"]}]))
    return p


def _csv_out_of_range(tmp_path: Path) -> Path:
    p = tmp_path / "bad.csv"
    p.write_text("seq_id,time,mark\na,1,0\nb,1,1\nb,2,-3\n")
    return p


def _rmtpp_nan(tmp_path: Path) -> Path:
    (tmp_path / "time.txt").write_text("0 1 2\n0 nan 3\n")
    (tmp_path / "event.txt").write_text("1 1 2\n2 2 1\n")
    return tmp_path


def _pickle_out_of_range(tmp_path: Path) -> Path:
    p = tmp_path / "train.pkl"
    ev = lambda ks: [{"time_since_start": float(i), "type_event": k} for i, k in enumerate(ks)]  # noqa: E731
    p.write_bytes(pickle.dumps({"dim_process": 3, "train": [ev([0, 1]), ev([2, 3])]}))
    return p


# (id, make input, expected message fragment, sequence index named or None)
CASES: list[tuple[str, Callable[[Path], Path], str, int | None]] = [
    ("unsorted", lambda d: _bosser_file(d, _ev((2.0, 0), (1.0, 1))), "times not sorted", 2),
    ("negative_time", lambda d: _bosser_file(d, _ev((-1.0, 0), (1.0, 1))), "negative time", 2),
    # a negative time after the first event is that, not "not sorted" (sorting would not fix it)
    ("negative_later", lambda d: _bosser_file(d, _ev((1.0, 0), (-0.5, 1))), "negative time -0.5 at event 1", 2),
    ("nan_time", lambda d: _rmtpp_nan(d), "non-finite time", 1),
    ("inf_time", lambda d: _bosser_file(d, [{"time": 1e400, "labels": [0]}]), "non-finite time", 2),
    ("mark_out_of_range", _pickle_out_of_range, "out of range for 3 marks", 1),
    ("negative_mark_csv", _csv_out_of_range, "negative mark", 1),
    ("non_integer_mark", lambda d: _bosser_file(d, _ev((1.0, 0.5))), "mark 0.5 at event 0 is not an integer", 2),
    ("empty_sequence", lambda d: _bosser_file(d, []), "empty sequence", 2),
    ("missing_key", lambda d: _bosser_file(d, [{"time": 1.0}]), "without key 'labels'", 2),
    ("string_time", _easytpp_string_time, "time at event 1 is a string ('soon'), not a number", 1),
    ("truncated_gzip", _truncated_gz, "truncated gzip", None),
    ("malicious_pickle", _evil_pickle, "refusing to unpickle builtins.print", None),
]


@pytest.mark.parametrize("make, fragment, index", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_data_error(tmp_path: Path, make, fragment: str, index: int | None,
                                   capsys: pytest.CaptureFixture) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        read_any(path)
    msg = str(info.value)
    assert fragment in msg
    assert msg.count(str(tmp_path)) == 1  # names the file, once (no DataError wrapped into another)
    if index is not None:
        assert f"sequence {index}:" in msg and info.value.sequence == index
    assert "pwned" not in capsys.readouterr().out


def test_unknown_dataset_name() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'no_such_set'; known names: mooc"):
        load_dataset("no_such_set")


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path / "missing")):
        load_dataset("taxi", data_dir=tmp_path / "missing")


def test_missing_file() -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        read_any("/definitely/not/here.json")


def test_tensor_pickle_refused(tmp_path: Path) -> None:
    import io
    import zipfile

    import torch

    buf = io.BytesIO()
    torch.save({"sequences": [torch.zeros(2)]}, buf)
    p = tmp_path / "t.pt"
    p.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match=r"t.pt.*refusing"):
        read_any(p)
    assert zipfile.is_zipfile(p)


def test_cli_exit_code_2_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    p = _bosser_file(tmp_path, _ev((2.0, 0), (1.0, 1)))
    code = main(["data", "prepare", str(p), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("mtpp data: error: ") and "bad.json: sequence 2: times not sorted" in err[0]
    assert not (tmp_path / "o").exists()


def test_prepare_into_an_existing_file_is_one_line_before_reading(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    p = _bosser_file(tmp_path, _ev((1.0, 0), (2.0, 1)))
    target = tmp_path / "single.csv"
    target.write_text("mine")
    assert main(["data", "prepare", str(p), "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "single.csv" in err[0] and "is a file" in err[0]
    assert target.read_text() == "mine"


def test_unsorted_sequences_name_the_run_setting_that_sorts_them(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """The hint names a switch that exists where the user is: data.sort for a run, --sort for mtpp data prepare;
    with data.sort=true the run loads the data and says how many sequences it sorted."""
    from mtpp.config import DataConfig
    from mtpp.training.setup import load_data

    seqs = [_ev((0.1 * i, 0), (0.1 * i + 1.0, 1), (0.1 * i + 2.0, 0)) for i in range(12)]
    seqs[7] = _ev((2.0, 0), (1.0, 1), (3.0, 1))
    p = tmp_path / "events.json"
    p.write_text(json.dumps(seqs))
    code = main(["train", "--out", str(tmp_path / "run"), "--set", f"data.name={p}", "--set", "train.max_epochs=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "events.json: sequence 7: times not sorted" in err[0] and "data.sort=true in a run config" in err[0]
    log = (tmp_path / "run" / "train.log").read_text()  # the failed start says why in the run's own log
    assert "error: DataError:" in log and "sequence 7: times not sorted" in log
    assert main(["train", "--out", str(tmp_path / "run"), "--set", f"data.name={p}", "--set", "train.max_epochs=1",
                 "--set", "data.sort=true", "--set", "model.hidden_size=4", "-q"]) == 0  # fmt: skip
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert "note    " in (log := (tmp_path / "run" / "train.log").read_text()) and "sorted the times of 1" in log
    data = load_data(DataConfig(name=str(p), sort=True))
    assert len(data.train) + len(data.val) + len(data.test) == 12
    assert any("sorted the times of 1 unsorted sequence" in n for n in data.notes), data.notes
    assert all((s.times[1:] >= s.times[:-1]).all() for s in [*data.train, *data.val, *data.test])


def test_use_window_scores_the_simulation_window(tmp_path: Path) -> None:
    """data.use_window attaches a split folder's observation window (the synthetic Hawkes data's) to every sequence;
    by default the window ends at the last event (the benchmark convention)."""
    from mtpp.config import DataConfig
    from mtpp.training.setup import load_data

    plain = load_data(DataConfig(name="synthetic_hawkes", max_sequences=5))
    windowed = load_data(DataConfig(name="synthetic_hawkes", max_sequences=5, use_window=True))
    assert all(s.window_end is None for s in plain.train)
    assert len({float(s.window_end) for s in windowed.train}) == 1
    # asking for a window the data do not have is an error, not a silent no-op
    from mtpp.data.formats import write_split_folder

    write_split_folder(tmp_path / "nowindow", [{"train": plain.train, "val": plain.val,
                                                "test": plain.test}], num_marks=plain.num_marks)  # fmt: skip
    with pytest.raises(DataError, match="args.json.*use_window.*gives no 'window'"):
        load_data(DataConfig(name=str(tmp_path / "nowindow"), use_window=True))
    assert all(float(s.times[-1]) <= float(s.window_end) for s in windowed.train)


def test_a_bad_sequence_of_a_long_table_is_named_by_its_seq_id_and_line(tmp_path: Path) -> None:
    p = tmp_path / "events.csv"
    p.write_text("seq_id,time,mark\nuserA,1,0\nuserA,2,1\nuserB,3,0\nuserB,1,1\n")
    with pytest.raises(DataError, match=r"sequence 1: times not sorted.*\(seq_id 'userB', line 5\)"):
        read_any(p)  # the line of the event out of order, not of the sequence's first row
    p.write_text("seq_id,time,mark\nuserA,1,0\nuserB,3,0\nuserA,nan,1\nuserB,4,-1\n")
    with pytest.raises(DataError, match=r"sequence 0: non-finite time nan at event 1 \(seq_id 'userA', line 4\)"):
        read_any(p)
    p.write_text("seq_id,time,mark\nuserA,1,0\nuserB,3,0\nuserA,2,1\nuserB,4,-1\n")
    with pytest.raises(DataError, match=r"sequence 1: negative mark -1 at event 1 \(seq_id 'userB', line 5\)"):
        read_any(p)


@pytest.mark.parametrize("name", ["missing.json", "events.csv.gz", "seqs.PKL", "./missing", "sub/missing"])
def test_a_missing_file_named_bare_is_a_missing_file_not_an_unknown_dataset(name: str, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``mtpp data describe missing.json`` said "unknown dataset 'missing.json'; known names: ...": a name with a
    file's ending (or a path) is a file that is not there, said with where it was looked for."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="no such file or folder") as e:
        load_dataset(name, data_dir=tmp_path)
    assert "unknown dataset" not in str(e.value)
    with pytest.raises(DataError, match="unknown dataset 'mocc'; did you mean 'mooc'"):
        load_dataset("mocc", data_dir=tmp_path)


@pytest.mark.parametrize("argv", [
    ["simulate", "hawkes", "--marks", "2", "--sequences", "5", "--window", "5", "--out", "OUT/s"],
    ["data", "prepare", "OUT/missing.json", "--out", "OUT/p"],
    ["bench", "--models", "gru-lnm-base", "--steps", "1"],
    ["plot", "OUT/run", "--out", "OUT/p.png"],
    ["generate", "OUT/run", "--out", "OUT/g.csv", "--horizon", "1"],
])  # fmt: skip
@pytest.mark.parametrize("seed", ["-1", str(2**32), "x"])
def test_every_seed_option_takes_numpys_range_only(argv: list[str], seed: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """``--seed -1`` failed inside numpy ("expected non-negative integer"): every command's --seed is one argparse
    line (exit 2), before any work or file."""
    args = [a.replace("OUT", str(tmp_path)) for a in argv] + ["--seed", seed]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--seed" in err and ("0 .. 4294967295" in err or "integer seed" in err) and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_train_seed_and_device_are_checked_before_torch_sees_them(tmp_path: Path) -> None:
    """``train.seed: -1`` failed in numpy and ``--device bogus`` (evaluate / predict) in torch.device: one
    ConfigError each, naming the setting and the valid values."""
    from mtpp.config import load_config
    from mtpp.errors import ConfigError
    from mtpp.training.setup import resolve_device

    for bad in (-1, 2**32):
        with pytest.raises(ConfigError, match=r"^train\.seed: must be"):
            load_config(None, [f"train.seed={bad}"])
    assert load_config(None, [f"train.seed={2**32 - 1}"]).train.seed == 2**32 - 1
    for bad in ("bogus", "cuda:x", "", "gpu"):
        with pytest.raises(ConfigError, match="invalid value; valid: auto, cpu, cuda, cuda:N, mps"):
            resolve_device(bad)
    assert resolve_device("cpu").type == "cpu"


def test_marks_absent_from_train_are_named_in_the_run_header(tmp_path, capsys) -> None:
    """A mark that occurs in val / test but never in training is trained only to be improbable: the run header says
    which marks and how many evaluated events carry them (counted on the parts the run uses), never silently."""
    import numpy as np

    from mtpp import build_model, fit
    from mtpp.data.catalog import Dataset
    from mtpp.data.checks import marks_absent_from_train
    from mtpp.data.sequence import EventSequence

    rng = np.random.default_rng(0)

    def seqs(n: int, marks: list[int]) -> list[EventSequence]:
        return [EventSequence(np.cumsum(rng.exponential(1.0, 8)), rng.choice(marks, 8)) for _ in range(n)]

    seen = Dataset(seqs(6, [0, 1, 2]), seqs(3, [0, 1, 2]), seqs(3, [0, 1, 2]), 4, "hand", "hand")
    assert marks_absent_from_train(seen) is None  # mark 3 occurs nowhere: nothing is scored on it
    data = Dataset(seqs(6, [0, 1]), seqs(3, [0, 1, 2]), seqs(3, [0, 1, 2, 3]), 4, "hand", "hand")
    val_2 = sum(int((s.marks == 2).sum()) for s in data.val)
    test_23 = sum(int((s.marks >= 2).sum()) for s in data.test)
    note = marks_absent_from_train(data)
    assert note is not None and note.startswith("marks absent from the train part but present in val / test: 2, 3 ")
    assert f"({val_2} val / {test_23} test events)" in note
    model = build_model({"encoder": "gru", "decoder": "lnm", "hidden_size": 8, "num_components": 2}, 4)
    fit(model, data, tmp_path / "run", config={"train": {"max_epochs": 1, "batch_size": 4}})
    header = capsys.readouterr()
    assert f"note    {note}" in header.out + header.err


@pytest.mark.parametrize("text, said", [
    ("gradients: {aggregator: pcgrad, options: {alpah: 0.5}}\n",
     "gradients.options: unknown option(s) alpah for aggregator 'pcgrad'"),
    ("gradients: {aggregator: pc-grad}\n", "gradients.aggregator: unknown aggregator 'pc-grad'"),
    ("model: {encoder: thp, hidden_size: 8, num_heads: 3}\n", "model.hidden_size (8) must be divisible by "
                                                               "model.num_heads (3)"),
    ("gradients: {aggregator: cagrad, options: {c: 1, rescale: 7}}\nvariants:\n  - {name: a}\n",
     "variant a: gradients.options"),
])
def test_a_config_files_own_mistake_found_by_the_trainer_names_the_file(tmp_path: Path, text: str, said: str,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """Aggregator names and options and the model's layer constraints are checked by the training layer, after
    the file was read: the error named the key but not the file it was mistyped in. Each is one line naming the
    file, before any folder is made; the same mistake made on the command line (--set) is not blamed on the file."""
    cfg = tmp_path / "my run.yaml"
    cfg.write_text(text)
    assert main(["train", str(cfg), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mtpp train: error: {cfg}: ") and said in err[0], err
    assert not (tmp_path / "out").exists()
    cfg.write_text("train: {max_epochs: 1}\n")
    sets = ["--set", "gradients.aggregator=pcgrad", "--set", "gradients.options={alpah: 0.5}"]
    assert main(["train", str(cfg), "--out", str(tmp_path / "out"), "-q", *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cfg) not in err[0] and "unknown option(s) alpah" in err[0], err


@pytest.mark.parametrize("command", ["train", "tune"])
@pytest.mark.parametrize("name_kind", ["generated", "path"])
@pytest.mark.parametrize("dir_kind", ["data folder", "catalog root"])
def test_a_data_dir_the_run_would_not_read_is_refused_naming_the_setting_that_reads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, command: str, name_kind: str, dir_kind: str
) -> None:
    """``mtpp train --data-dir FOLDER`` (or ``--data FOLDER``, argparse's abbreviation) with the default
    ``data.name: synthetic_hawkes`` trained on the built-in synthetic data and said nothing: the folder plays no
    part in finding a generated dataset, nor a dataset given as a path. Refused before any work, in one line that
    names the setting that reads the folder."""
    from mtpp.data.formats import write_split_folder
    from mtpp.data.sequence import make_sequence

    folder = tmp_path / "mine"
    seqs = [make_sequence([0.1 * (j + 1) * (i + 1) for j in range(4)], [j % 2 for j in range(4)]) for i in range(9)]
    if dir_kind == "data folder":
        write_split_folder(folder, [{"train": seqs[:5], "val": seqs[5:7], "test": seqs[7:]}], num_marks=2)
    else:  # a data directory holding a catalog dataset's folder
        write_split_folder(folder / "conftpp_mooc_filtered", [{"train": seqs[:5], "val": seqs[5:7], "test": seqs[7:]}],
                           num_marks=2)
    other = tmp_path / "other.csv"
    other.write_text("seq_id,time,mark\n" + "".join(f"s{i},{0.1 * (j + 1)},{j % 2}\n" for i in range(9)
                                                    for j in range(3)))
    name = "synthetic_hawkes" if name_kind == "generated" else str(other)
    out = tmp_path / "out"
    argv = {"train": ["train", "--out", str(out)],
            "tune": ["tune", "--space", str(_space(tmp_path)), "--out", str(out), "--trials", "1"]}[command]
    code = main([*argv, "--data", str(folder), "--set", f"data.name={name}", "--set", "train.max_epochs=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"--data-dir {folder} would not be used: data.name is" in err[0]
    fix = f"--set data.name={folder}" if dir_kind == "data folder" else "--set data.name=NAME for a dataset in it"
    assert fix in err[0] and not out.exists()


def _space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text("train.lr: [0.001, 0.01]\n")
    return path


def test_a_data_dir_that_a_variant_reads_is_accepted(tmp_path: Path) -> None:
    """The refusal is only for a folder no part of the run reads: one variant reading a catalog name from it is
    enough (the synthetic variant then ignores it, as its name says)."""
    from mtpp.config import config_from_dict
    from mtpp.training.setup import refuse_unused_data_dir

    cfg = config_from_dict({"variants": [{"name": "syn"}, {"name": "mooc", "data.name": "mooc"}]})
    refuse_unused_data_dir(cfg, str(tmp_path))  # no error
    with pytest.raises(Exception, match="would not be used"):
        refuse_unused_data_dir(config_from_dict({"variants": [{"name": "a"}, {"name": "b", "train.lr": 0.1}]}),
                               str(tmp_path))


def test_a_cache_folder_that_cannot_be_written_is_named_as_the_cache_folder_with_the_fix(tmp_path: Path, monkeypatch,
                                                                                       capsys) -> None:
    """``MTPP_CACHE_DIR`` under a file (it cannot be created; as root a permission bit would not stop it): the
    synthetic data and an auto-prepared table both need the cache, and said only ``<path>: Not a directory``. Now one
    line names it as the cache folder, where the path came from, and the fix."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("MTPP_CACHE_DIR", str(blocker / "cache"))
    table = tmp_path / "t.csv"
    table.write_text("seq_id,time,mark\n" + "".join(f"s{i},{j + 1},{j % 2}\n" for i in range(6) for j in range(3)))
    for data in ("synthetic_hawkes", str(table)):
        code = main(["train", "--set", f"data.name={data}", "--set", "train.max_epochs=1", "--out",
                     str(tmp_path / "run"), "--set", "logging.progress=false"])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert f"{blocker / 'cache'}: the cache folder (MTPP_CACHE_DIR) cannot be created or written" in err[0]
        assert "set MTPP_CACHE_DIR to a writable folder" in err[0]
