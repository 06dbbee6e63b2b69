"""Each reader on small files written here, the writer round trip, format detection, and real-file counts."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mtpp.data.formats import (
    ReadOptions,
    detect_format,
    read_any,
    read_npz,
    read_pickle,
    read_rmtpp,
    read_table,
    read_torch_zip,
    scan_folder,
    write_bosser_json,
    write_split_folder,
)
from mtpp.data.sequence import make_sequence
from mtpp.errors import DataError

SEQS = [([0.5, 1.0, 1.0, 2.5], [0, 2, 1, 2]), ([0.1, 0.3], [1, 1]), ([3.0], [0])]


def _bosser(seqs=SEQS) -> list:
    return [[{"time": t, "labels": [k]} for t, k in zip(ts, ks)] for ts, ks in seqs]


def _easytpp(seqs=SEQS, dim=3) -> list:
    return [
        {"dim_process": dim, "seq_idx": i, "seq_len": len(ts), "time_since_start": ts,
         "time_since_last_event": np.diff(ts, prepend=ts[0]).tolist(), "type_event": ks}
        for i, (ts, ks) in enumerate(seqs)
    ]


def _write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _check(seqs, expected=SEQS) -> None:
    assert len(seqs) == len(expected)
    for s, (ts, ks) in zip(seqs, expected):
        np.testing.assert_array_equal(s.times, ts)
        np.testing.assert_array_equal(s.marks, ks)
        assert s.times.dtype == np.float64 and s.marks.dtype == np.int64


@pytest.mark.parametrize("gz", [False, True])
def test_bosser_split_folder(tmp_path: Path, gz: bool) -> None:
    d = tmp_path / "ds" / "split_0"
    d.mkdir(parents=True)
    name = "val.json.gz" if gz else "val.json"
    _write(d / name, json.dumps(_bosser()).encode(), gz)
    _write(d / "test.json", json.dumps(_bosser(SEQS[:1])).encode())
    (d / "args.json").write_text(json.dumps({"marks": 5, "window": None}))
    res = read_any(tmp_path / "ds")
    assert res.format == "split_folder" and res.num_marks == 5
    assert set(res.parts) == {"split_0/val", "split_0/test"}
    _check(res.parts["split_0/val"])


def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    p = _write(tmp_path / "train.json", json.dumps(_bosser()).encode(), gz=True)  # gzipped, no .gz suffix
    res = read_any(p)
    _check(res.sequences)
    assert res.num_marks == 3


def test_bosser_multilabel_is_an_error(tmp_path: Path) -> None:
    data = _bosser()
    data[1][1]["labels"] = [0, 1]
    p = _write(tmp_path / "test.json", json.dumps(data).encode())
    with pytest.raises(DataError, match=r"test.json: sequence 1: event 1 .*exactly one label"):
        read_any(p)


@pytest.mark.parametrize("gz", [False, True])
def test_easytpp_json(tmp_path: Path, gz: bool) -> None:
    d = tmp_path / "easy"
    d.mkdir()
    _write(d / ("train.json.gz" if gz else "train.json"), json.dumps(_easytpp()).encode(), gz)
    _write(d / "valid.json", json.dumps(_easytpp(SEQS[:2])).encode())
    _write(d / "test.json", json.dumps(_easytpp(SEQS[2:])).encode())
    res = read_any(d)
    assert res.format == "easytpp_json" and res.num_marks == 3
    assert set(res.parts) == {"train", "val", "test"}
    _check(res.parts["train"])


def test_easytpp_pickle_with_numpy_scalars(tmp_path: Path) -> None:
    def events(ts, ks):
        return [{"time_since_start": np.float32(t), "time_since_last_event": 0.0, "type_event": np.int32(k)}
                for t, k in zip(ts, ks)]

    obj = {"dim_process": np.int32(4), "args": None, "dev": [events(*s) for s in SEQS], "devtest": []}
    p = tmp_path / "dev.pkl"
    p.write_bytes(pickle.dumps(obj, protocol=4))
    res = read_pickle(p)
    assert res.format == "easytpp_pickle" and res.num_marks == 4 and set(res.parts) == {"val"}
    _check(res.parts["val"], [(np.float32(ts).astype(np.float64), ks) for ts, ks in SEQS])
    assert any("devtest" in n and "empty" in n for n in res.notes)


def test_easytpp_pickle_float_marks(tmp_path: Path) -> None:
    obj = {"dim_process": 3, "train": [[{"time_since_start": np.float64(t), "type_event": np.float64(k)}
                                         for t, k in zip(*s)] for s in SEQS]}
    p = tmp_path / "train.pkl"
    p.write_bytes(pickle.dumps(obj))
    _check(read_any(p).parts["train"])


def test_gntpp_pickle(tmp_path: Path) -> None:
    obj = {
        "timestamps": np.array([np.array(ts) for ts, _ in SEQS], dtype=object),
        "types": np.array([np.array(ks) for _, ks in SEQS], dtype=object),
        "lengths": np.array([len(ts) for ts, _ in SEQS]),
        "t_max": np.float64(3.0),
        "event_type_num": np.int64(6),
    }
    p = tmp_path / "val_manifold_format.pkl"
    p.write_bytes(pickle.dumps(obj, protocol=4))
    res = read_any(p)
    assert res.format == "gntpp_pickle" and res.num_marks == 6 and list(res.parts) == ["val"]
    _check(res.sequences)


def _npz(path: Path, marks: bool = True) -> Path:
    times = np.empty(len(SEQS), dtype=object)
    mk = np.empty(len(SEQS), dtype=object)
    for i, (ts, ks) in enumerate(SEQS):
        times[i], mk[i] = list(ts), list(ks)
    arrays = {"arrival_times": times, **({"marks": mk} if marks else {})}
    np.savez(path, **arrays)
    return path


def test_npz_marked_and_unmarked(tmp_path: Path) -> None:
    res = read_npz(_npz(tmp_path / "wiki.npz"))
    assert res.format == "ifl_npz" and res.num_marks == 3
    _check(res.sequences)
    res = read_any(_npz(tmp_path / "yelp.npz", marks=False))
    assert res.num_marks == 1
    _check(res.sequences, [(ts, [0] * len(ts)) for ts, _ in SEQS])
    assert any("unmarked" in n for n in res.notes)


def _torch_zip(path: Path, obj: object) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
        z.writestr("archive/version", "3\n")
    path.write_bytes(buf.getvalue())
    return path


def test_torch_zip_pickle_keeps_window(tmp_path: Path) -> None:
    obj = {"sequences": [{"t_start": 0, "t_end": 4.0, "arrival_times": ts, "marks": ks} for ts, ks in SEQS],
           "num_marks": 3}
    res = read_torch_zip(_torch_zip(tmp_path / "mimic.pkl", obj))
    assert res.format == "torch_zip" and res.num_marks == 3
    _check(res.sequences)
    assert [s.window_end for s in res.sequences] == [4.0, 4.0, 4.0]
    assert read_any(tmp_path / "mimic.pkl").format == "torch_zip"


def _rmtpp(folder: Path, seqs, base: int = 1, word: str = "event", prefix: str = "") -> Path:
    folder.mkdir(exist_ok=True)
    (folder / f"{prefix}time.txt").write_text("".join(" ".join(map(str, ts)) + " \n" for ts, _ in seqs))
    (folder / f"{prefix}{word}.txt").write_text("".join(" ".join(str(k + base) for k in ks) + "\n" for _, ks in seqs))
    return folder


def test_rmtpp_one_based_marks(tmp_path: Path) -> None:
    res = read_rmtpp(_rmtpp(tmp_path / "r", SEQS, base=1))
    assert res.num_marks == 3
    _check(res.parts["all"])
    assert any("1-based (detected)" in n for n in res.notes)


def test_rmtpp_zero_based_detected_and_forced(tmp_path: Path) -> None:
    d = _rmtpp(tmp_path / "r", SEQS, base=0, word="marker")
    _check(read_any(d).sequences)
    # Forcing 1-based on data that contains 0 gives a negative mark: an error naming the file.
    with pytest.raises(DataError, match="negative mark"):
        read_any(d, mark_base=1)


def test_rmtpp_pairs_and_gz(tmp_path: Path) -> None:
    d = tmp_path / "r"
    d.mkdir()
    (d / "time-1-train.txt.gz").write_bytes(gzip.compress(b"0 1 2\n0.5 0.75\n"))
    (d / "event-1-train.txt").write_text("1 2 2\n3 3\n")
    (d / "event-1-test.txt").write_text("1\n")  # marks only: ignored, said so
    files = scan_folder(d)
    assert [(f.format, f.part) for f in files] == [("rmtpp", "1-train")]
    res = read_any(d)
    assert res.parts["1-train"][1].marks.tolist() == [2, 2]
    assert any("marks-only" in n for n in res.notes)


def test_rmtpp_unsorted_error_and_sort_option(tmp_path: Path) -> None:
    d = _rmtpp(tmp_path / "tw", [([5.0, 3.0, 4.0], [0, 1, 0]), ([1.0, 2.0], [1, 1])], prefix="bolly-")
    with pytest.raises(DataError, match=r"bolly-time.txt: sequence 0: times not sorted"):
        read_any(d)
    res = read_any(d, sort=True)
    s = res.parts["bolly"][0]
    assert s.times.tolist() == [3.0, 4.0, 5.0] and s.marks.tolist() == [1, 0, 0]
    assert any("sorted the times of 1 unsorted" in n for n in res.notes)


def test_long_csv_and_gz(tmp_path: Path) -> None:
    rows = ["seq_id,time,mark"]
    for i, (ts, ks) in enumerate(SEQS):
        rows += [f"s{i},{t},{k}" for t, k in zip(ts, ks)]
    # interleave: rows of one sequence need not be contiguous
    body = rows[1:]
    text = "\n".join([rows[0], *body[4:], *body[:4]]) + "\n"
    p = _write(tmp_path / "events.csv", text.encode())
    res = read_table(p)
    assert res.format == "table" and res.num_marks == 3
    _check(res.sequences, [SEQS[1], SEQS[2], SEQS[0]])  # order of first appearance
    q = _write(tmp_path / "events.csv.gz", text.encode(), gz=True)
    assert len(read_any(q).sequences) == 3


def test_long_csv_with_a_column_named_twice_or_category_marks_is_one_clear_error(tmp_path: Path) -> None:
    """``seq_id,time,time``: pandas would read the second copy as 'time.1' and drop it silently (every mark 0).
    Category names as marks: the error says how to turn them into ids."""
    p = _write(tmp_path / "dup.csv", b"seq_id,time,time\na,1,0\na,2,1\n")
    with pytest.raises(DataError, match=r"dup.csv: the header \(line 1\) names column\(s\) \['time'\] more than once"):
        read_any(p)
    q = _write(tmp_path / "cat.csv", b"seq_id,time,mark\na,1,click\na,2,buy\n")
    with pytest.raises(DataError, match=r"mark 'click' is not a number on line 2 \(seq_id 'a'\) \(marks are integer "
                                        r"ids.*factorize"):
        read_any(q)


def test_long_csv_split_column(tmp_path: Path) -> None:
    text = "seq_id,time,mark,split\na,1,0,train\na,2,1,train\nb,1,1,dev\nc,3,0,test\n"
    res = read_any(_write(tmp_path / "t.csv", text.encode()))
    assert {k: len(v) for k, v in res.parts.items()} == {"train": 1, "val": 1, "test": 1}


def test_split_column_names_in_any_spelling_and_unknown_ones_are_an_error(tmp_path: Path) -> None:
    """The whole kind of "a split the loader does not recognise": every accepted spelling and case maps onto
    train / val / test (so the file keeps its own split), and any other value is an error naming it and its line,
    never a silent 60/20/20 re-split of the whole file."""
    spellings = {"train": ["train", "Train", "training", " TRAINING "], "val": ["val", "valid", "Validation", "dev",
                 "EVAL"], "test": ["test", "Test", "testing"]}  # fmt: skip
    rows, n = ["seq_id,time,mark,split"], 0
    for spelled in spellings.values():
        for word in spelled:
            rows += [f"s{n},1,0,{word}", f"s{n},2,1,{word}"]
            n += 1
    res = read_any(_write(tmp_path / "spelled.csv", "\n".join(rows).encode()))
    assert {k: len(v) for k, v in res.parts.items()} == {k: len(v) for k, v in spellings.items()}
    from mtpp.data.catalog import load_dataset

    ds = load_dataset(tmp_path / "spelled.csv")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 5, 3) and not any("re-split" in n for n in ds.notes)
    bad = "seq_id,time,mark,split\na,1,0,train\nb,1,0,validaton\nc,1,0,holdout\nd,1,0,test\n"
    with pytest.raises(DataError, match=r"split 'validaton' on line 3 \(seq_id 'b'\) is not a part name "
                                        r"\(2 such value\(s\): 'validaton', 'holdout'\); use train"):
        read_any(_write(tmp_path / "bad.csv", bad.encode()))


def test_a_misspelt_column_is_an_error_and_other_columns_are_noted(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"column 'marks' is not one mtpp reads, and the table has no 'mark': did you "
                                        r"mean 'mark'\? .*another column is ignored, unless it is this close to a "
                                        r"missing one: rename it, or drop it\)"):
        read_any(_write(tmp_path / "m.csv", b"seq_id,time,marks\na,1,3\na,2,4\n"))
    with pytest.raises(DataError, match=r"column 'splits' .*did you mean 'split'"):
        read_any(_write(tmp_path / "s.csv", b"seq_id,time,mark,splits\na,1,3,train\n"))
    with pytest.raises(DataError, match=r"column 'tme' is not one mtpp reads, and the table has no 'time': did you "
                                        r"mean 'time'\?"):
        read_any(_write(tmp_path / "t.csv", b"seq_id,tme,mark\na,1,3\n"))
    with pytest.raises(DataError, match=r"missing column\(s\) \['seq_id', 'time'\].*is the separator a comma"):
        read_any(_write(tmp_path / "semi.csv", b"seq_id;time;mark\na;1;3\n"))
    # header names in any case and with blanks around them are the columns
    res = read_any(_write(tmp_path / "case.csv", b"Seq_ID, Time , MARK,Split\na,1,3,Train\na,2,4,TRAINING\n"
                                                 b"b,1,0,test\nc,1,1,dev\n"))
    assert [s.marks.tolist() for s in res.parts["train"]] == [[3, 4]] and set(res.parts) == {"train", "val", "test"}
    res = read_any(_write(tmp_path / "u.csv", b"seq_id,time,mark,user_name\na,1,3,x\na,2,4,x\n"))
    assert [s.marks.tolist() for s in res.parts["all"]] == [[3, 4]]
    assert any("column(s) ['user_name'] ignored" in n for n in res.notes)


def test_parquet_needs_pyarrow_or_reads(tmp_path: Path) -> None:
    import pandas as pd

    df = pd.DataFrame({"seq_id": [0, 0, 1], "time": [0.5, 1.0, 2.0], "mark": [0, 1, 1]})
    p = tmp_path / "t.parquet"
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        p.write_bytes(b"PAR1" + b"\0" * 16 + b"PAR1")
        with pytest.raises(DataError, match="pip install pyarrow"):
            read_any(p)
        return
    df.to_parquet(p)
    assert len(read_any(p).sequences) == 2


def test_writer_round_trip_and_windows(tmp_path: Path) -> None:
    seqs = [make_sequence(ts, ks) for ts, ks in SEQS]
    seqs[0] = make_sequence(*SEQS[0], window_end=3.0)
    write_split_folder(tmp_path / "out", [{"train": seqs, "val": seqs[:1], "test": seqs[2:]}], num_marks=4,
                       args={"note": "x"})
    res = read_any(tmp_path / "out")
    assert res.num_marks == 4
    back = res.parts["split_0/train"]
    assert [s.key() for s in back] == [s.key() for s in seqs]
    assert (tmp_path / "out" / "split_0" / "train.windows.json").exists()
    assert json.loads((tmp_path / "out" / "args.json").read_text())["note"] == "x"
    # exact float round trip
    write_bosser_json(tmp_path / "f.json", [make_sequence([0.1 + 0.2, 1 / 3], [0, 0])])
    assert read_any(tmp_path / "f.json").sequences[0].times.tolist() == [0.1 + 0.2, 1 / 3]


def test_writer_refuses_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("")
    with pytest.raises(DataError, match="not empty"):
        write_split_folder(tmp_path / "x", [{"train": [make_sequence([1.0], [0])]}], num_marks=1)


def test_split_folder_window_option(tmp_path: Path) -> None:
    d = tmp_path / "syn" / "split_0"
    d.mkdir(parents=True)
    (d / "train.json").write_text(json.dumps(_bosser()))
    (d / "args.json").write_text(json.dumps({"marks": 3, "window": 10.0}))
    assert all(s.window_end is None for s in read_any(tmp_path / "syn").sequences)
    assert all(s.window_end == 10.0 for s in read_any(tmp_path / "syn", use_window=True).sequences)


def test_detect_format(tmp_path: Path) -> None:
    assert detect_format(Path("time-1-train.txt")) == "rmtpp_time"
    assert detect_format(Path("bolly-event.txt")) == "rmtpp_marks"
    assert detect_format(Path("marker-test.txt.gz")) == "rmtpp_marks"
    assert detect_format(Path("x.csv")) == "table"
    assert detect_format(Path("x.parquet")) == "parquet"
    p = _write(tmp_path / "blob", pickle.dumps({"a": 1}))
    assert detect_format(p) == "pickle"


# ------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="session")
def real(data_dir: Path):
    cache: dict[str, object] = {}

    def get(name: str, **kw):
        key = name + repr(sorted(kw.items()))
        if key not in cache:
            cache[key] = read_any(data_dir / name, options=ReadOptions(**kw))
        return cache[key]

    return get


def _stats(seqs) -> tuple[int, int, int]:
    return len(seqs), sum(len(s) for s in seqs), len({int(k) for s in seqs for k in np.unique(s.marks)})


@pytest.mark.data
def test_real_easytpp_taxi(real) -> None:
    res = real("easytpp_taxi")
    assert {k: len(v) for k, v in res.parts.items()} == {"train": 1400, "val": 200, "test": 400}
    assert _stats(res.sequences) == (2000, 74078, 10) and res.num_marks == 10


@pytest.mark.data
def test_real_rmtpp_mimic2_full(real) -> None:
    res = real("rmtpp_mimic2")
    assert list(res.parts) == ["all"]
    assert _stats(res.sequences) == (650, 2419, 75) and res.num_marks == 75
    assert min(int(s.marks.min()) for s in res.sequences) == 0  # 1-based file, read 0-based


@pytest.mark.data
def test_real_ifltpp_wikipedia(real) -> None:
    res = real("ifltpp_wikipedia")
    assert _stats(res.sequences) == (1000, 157471, 8227) and res.num_marks == 8227


@pytest.mark.data
def test_real_residualtpp_earthquake(real) -> None:
    res = real("residualtpp_earthquake")
    assert {k: len(v) for k, v in res.parts.items()} == {"train": 3000, "val": 400, "test": 896}
    assert _stats(res.sequences) == (4296, 70723, 7) and res.num_marks == 7


@pytest.mark.data
def test_real_other_formats(real) -> None:
    assert _stats(real("gntpp_mooc").sequences) == (2537, 109352, 97)
    assert _stats(real("jointtpp_mimic_ii").sequences) == (715, 2662, 75)
    assert real("ifltpp_yelp_toronto").num_events == 215146
    assert real("thpformat_mimic").num_sequences == 2635 + 290 + 325
    tw = real("rmtpp_twitter", sort=True)
    assert _stats(tw.sequences) == (3080, 102413, 2)
    assert any("sorted" in n for n in tw.notes)


def test_data_describe_says_when_training_would_re_split(tmp_path: Path, capsys) -> None:
    """A table with only train and test parts is re-split on use: ``describe`` says so; a full split does not."""
    from mtpp.cli import main

    two = _write(tmp_path / "two.csv", b"seq_id,time,mark,split\na,1,0,train\nb,1,0,test\n")
    three = _write(tmp_path / "three.csv", b"seq_id,time,mark,split\na,1,0,train\nb,1,0,test\nc,1,0,valid\n")
    assert main(["data", "describe", str(two)]) == 0
    assert "training on it re-splits all its sequences" in capsys.readouterr().out
    assert main(["data", "describe", str(three)]) == 0
    assert "re-splits" not in capsys.readouterr().out
    assert main(["data", "describe", str(two), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"resplit_on_use": true' in out and '"time_unit": null' in out
    assert main(["data", "describe", str(three)]) == 0  # a user's own table: its unit is not known to mtpp
    assert "time range     1 .. 1 (unit not recorded)" in capsys.readouterr().out


@pytest.mark.data
def test_data_describe_names_a_documented_time_unit(data_dir: Path, capsys) -> None:
    from mtpp.cli import main

    assert main(["data", "describe", "taxi", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "time range     0 .. 22.9492 (hours)" in out and "(= 1/3,600 hour)" in out  # whole seconds


def test_data_describe_of_a_staged_copy_by_path_names_the_unit_training_names(tmp_path: Path, capsys) -> None:
    """A staged copy addressed by its folder name or path (``easytpp_taxi``) is that catalog dataset for
    ``mtpp train`` (its unit: hours); ``describe`` said "unit not recorded" for it, as for a user's own file."""
    import json as _json

    from mtpp.cli import main

    folder = tmp_path / "easytpp_taxi"
    folder.mkdir()
    rec = {"dim_process": 2, "time_since_start": [0.0, 1.0, 2.5], "type_event": [0, 1, 0]}
    for part in ("train", "valid", "test"):
        (folder / f"{part}.json").write_text(_json.dumps([rec]))
    for target in (str(folder), "easytpp_taxi"):  # the path, and the folder's name under the data directory
        assert main(["data", "describe", target, "--data-dir", str(tmp_path)]) == 0
        assert "time range     0 .. 2.5 (hours)" in capsys.readouterr().out, target
    assert main(["data", "describe", str(folder), "--json"]) == 0
    assert '"time_unit": "hour"' in capsys.readouterr().out
    mine = tmp_path / "mine"  # the same files under a name of the user's: not recorded
    mine.mkdir()
    (mine / "train.json").write_text(_json.dumps([rec]))
    assert main(["data", "describe", str(mine)]) == 0
    assert "(unit not recorded)" in capsys.readouterr().out


def test_data_describe_names_a_split_that_training_would_refuse(tmp_path: Path, capsys) -> None:
    """A split folder whose split_0 has train and test but no val: ``describe`` says what ``train`` will refuse
    (it used to list the parts and say nothing); a complete split says nothing."""
    import json as _json

    from mtpp.cli import main
    from mtpp.data.formats import write_bosser_json
    from mtpp.data.sequence import make_sequence

    seqs = [make_sequence(np.array([0.5, 1.0 + i]), np.array([0, 1])) for i in range(4)]
    for name, parts in (("partial", ("train", "test")), ("full", ("train", "val", "test"))):
        d = tmp_path / name / "split_0"
        d.mkdir(parents=True)
        (d / "args.json").write_text(_json.dumps({"marks": 2}))
        for part in parts:
            write_bosser_json(d / f"{part}.json", seqs)
    assert main(["data", "describe", str(tmp_path / "partial")]) == 0
    out = capsys.readouterr().out
    assert "split_0 has no val file: mtpp train refuses it (it needs train, val and test)" in out
    assert main(["data", "describe", str(tmp_path / "full")]) == 0
    assert "refuses" not in capsys.readouterr().out


def test_rows_repeated_exactly_in_a_table_are_said(tmp_path: Path) -> None:
    """20 repeated rows of a CSV became 20 zero gaps and ``describe`` said "no duplicates" (it checks whole
    sequences): exact repeats of (seq_id, time, mark) are now a note naming their count and the first line."""
    from mtpp.data.formats import read_table

    p = tmp_path / "d.csv"
    p.write_text("seq_id,time,mark\na,0.5,1\na,1.0,0\na,1.0,0\nb,0.2,1\nb,0.2,0\nb,0.3,1\nb,0.3,1\n")
    res = read_table(p)
    (note,) = [n for n in res.notes if "repeat an earlier row" in n]
    assert "2 row(s)" in note and "line 4" in note
    assert sum(len(s) for v in res.parts.values() for s in v) == 7  # kept, not merged
    p.write_text("seq_id,time,mark\na,0.5,1\na,1.0,0\nb,0.2,1\nb,0.2,0\n")  # same time, other mark: a tie, no copy
    assert not any("repeat an earlier row" in n for n in read_table(p).notes)


def test_marks_numbered_from_one_are_said() -> None:
    """Ids 1..K-1 with no 0 (a 1-based file) gave a model a class never seen, without a word (sparse ids get the
    --remap-marks hint); the same hint now, and nothing for ids that start at 0."""
    from mtpp.data.formats import ReadResult, finish_marks
    from mtpp.data.sequence import EventSequence

    def result(marks: list[int]) -> ReadResult:
        seq = EventSequence(np.arange(1.0, len(marks) + 1), np.asarray(marks), None)
        return ReadResult({"all": [seq]}, max(marks) + 1, "table", "f.csv", [], {}, ["f.csv"])

    (note,) = finish_marks(result([1, 2, 3, 1])).notes
    assert "mark ids run 1..3 and 0 never occurs" in note and "--remap-marks" in note
    assert "data.remap_marks=true in a run config" in note  # what mtpp train takes, not only prepare's flag
    assert finish_marks(result([0, 1, 2, 1])).notes == []


def test_a_mark_note_is_said_once_for_a_file_and_the_split_folder_prepared_from_it(tmp_path: Path, caplog,
                                                                                   capsys) -> None:
    """Marks 1..4 in a user's CSV: the warning came three times and the run header's note twice (the file, then
    the prepared split folder read at once, which has the same marks)."""
    from mtpp.data.catalog import load_dataset

    rows = ["seq_id,time,mark"] + [f"s{i},{t + 0.5 * i},{1 + (t + i) % 4}" for i in range(20) for t in range(1, 6)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with caplog.at_level("WARNING"):
        ds = load_dataset(tmp_path / "m.csv")
    warned = [r for r in caplog.records if "never occurs" in r.getMessage()]
    assert len(warned) == 1 and str(tmp_path / "m.csv") in warned[0].getMessage()
    assert sum("never occurs" in n for n in ds.notes) == 1


def test_a_mark_note_reaches_the_console_once_per_command_and_every_runs_log(tmp_path: Path, capsys) -> None:
    """A run on marks 1..4 said the warning and then the same words as a note in its header; ``data describe``
    (its ``notes:``) and ``data prepare`` (its ``note:`` lines) likewise said each note twice. Now the console has
    it once per command, and every run's ``train.log`` keeps the note, a second run in the same process (a grid at
    ``--jobs 1``, a notebook) too, whose read no longer warns."""
    from mtpp.cli import main

    rows = ["seq_id,time,mark"] + [f"s{i},{t + 0.5 * i},{1 + (t + i) % 4}" for i in range(20) for t in range(1, 6)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")

    def said(argv: list[str]) -> int:
        capsys.readouterr()
        assert main(argv) == 0
        out, err = capsys.readouterr()
        return (out + err).count("never occurs")

    train = ["train", "--set", f"data.name={tmp_path / 'm.csv'}", "--set", "train.max_epochs=1", "--set",
             "model.hidden_size=4", "--set", "logging.progress=false", "--out"]
    assert said(train + [str(tmp_path / "run1")]) == 1
    assert said(train + [str(tmp_path / "run2")]) == 0  # said above, in this process
    for run in ("run1", "run2"):
        assert "never occurs" in (tmp_path / run / "train.log").read_text()
    assert said(["data", "describe", str(tmp_path / "m.csv")]) == 1
    assert said(["data", "prepare", str(tmp_path / "m.csv"), "--out", str(tmp_path / "prepared")]) == 1


def test_a_split_folder_keeps_the_sources_sequence_ids_and_only_theirs(tmp_path: Path) -> None:
    """``EventSequence.name`` (a table's seq_id) is written to split_k/args.json ``seq_ids`` and read back; a
    folder of unnamed sequences (every benchmark set) gets no such key, so its files are as before; a list that
    no longer fits its part is left out with a note."""
    from dataclasses import replace

    from mtpp.data.formats import read_split, write_split_folder

    seqs = [make_sequence(np.array([0.5, 1.0 + i]), np.array([0, 1]), name=f"id{i}") for i in range(6)]
    write_split_folder(tmp_path / "named", [{"train": seqs[:4], "val": seqs[4:5], "test": seqs[5:]}], num_marks=2)
    back = read_split(tmp_path / "named", 0)
    assert [s.name for s in back.parts["split_0/train"]] == ["id0", "id1", "id2", "id3"]
    assert [s.name for s in back.parts["split_0/test"]] == ["id5"]
    plain = [replace(s, name=None) for s in seqs]
    write_split_folder(tmp_path / "plain", [{"train": plain[:4], "val": plain[4:5], "test": plain[5:]}], num_marks=2)
    assert "seq_ids" not in json.loads((tmp_path / "plain" / "split_0" / "args.json").read_text())
    args = tmp_path / "named" / "split_0" / "args.json"
    meta = json.loads(args.read_text())
    meta["seq_ids"]["train"] = meta["seq_ids"]["train"][:2]  # edited by hand
    args.write_text(json.dumps(meta))
    back = read_split(tmp_path / "named", 0)
    assert all(s.name is None for s in back.parts["split_0/train"]) and back.parts["split_0/val"][0].name == "id4"
    assert any("'seq_ids' of train does not match its 4 sequence(s)" in n for n in back.notes)


def test_data_describe_gives_the_gap_scale_a_forecast_horizon_is_chosen_from(tmp_path: Path, capsys) -> None:
    """``evaluate --horizon T``, ``plot`` and ``generate`` take a time span in the data's units, but nothing said
    the data's gap scale (MOOC: median gap 1.3e-4, mean 0.076 on a 0..10 clock): describe gives it."""
    import json

    from mtpp.cli import main

    table = _write(tmp_path / "t.csv", b"seq_id,time,mark\na,1,0\na,2,1\na,4,0\nb,1,1\nb,1.5,0\nc,3,0\n")
    assert main(["data", "describe", str(table)]) == 0
    out = capsys.readouterr().out
    # within-sequence gaps 1, 2, 0.5 (c has none): median 1, mean 7/6, numpy's 90 % / 99 % quantiles 1.8 / 1.98
    assert ("gaps           median 1 / mean 1.16667 / 90% 1.8 / 99% 1.98 data units (within sequences; the scale "
            "of a forecast --horizon)") in out
    assert main(["data", "describe", str(table), "--json"]) == 0
    gaps = json.loads(capsys.readouterr().out)["total"]["gaps"]
    assert gaps["median"] == 1.0 and gaps["p90"] == pytest.approx(1.8)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_seq_ids_differing_only_by_blanks_are_one_sequence(tmp_path: Path, fmt: str) -> None:
    """``a`` and ``a `` (a padded export, or a CSV written with ', ') were read as two sequences, splitting one
    sequence's events between train and test. Blanks around text ids are dropped, and a note says how many ids
    were written both ways; ids that differ otherwise stay distinct."""
    import pandas as pd

    df = pd.DataFrame({"seq_id": ["a", "a ", " b", "b", "c", "a b"], "time": [0.5, 1.0, 0.2, 0.9, 0.3, 0.4],
                       "mark": [1, 0, 1, 1, 0, 0]})
    path = tmp_path / f"x.{fmt}"
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False)
    r = read_table(path)
    assert [(s.name, list(s.times)) for s in r.sequences] == [("a", [0.5, 1.0]), ("b", [0.2, 0.9]), ("c", [0.3]),
                                                              ("a b", [0.4])]
    assert [n for n in r.notes if "blanks" in n] == [
        f"{path}: 2 seq_id(s) are written with and without blanks around them (first: 'a' and 'a '): read as one "
        "sequence each, the blanks dropped"]
    # consistent blanks (every id padded) are dropped without a note: nothing was merged
    df["seq_id"] = [" a", " a", " b", " b", " c", " a b"]
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False)
    r = read_table(path)
    assert [s.name for s in r.sequences] == ["a", "b", "c", "a b"] and not [n for n in r.notes if "blanks" in n]
