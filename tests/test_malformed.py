"""Every kind of malformed input found by the issue-11 fuzzer: one ``DataError`` line naming the file and, where
there is one, the sequence; never a traceback, never a silent drop. Inputs are generated in ``tmp_path``."""

from __future__ import annotations

import json
import pickle
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import malformed as M
from mtpp.cli import main
from mtpp.data.catalog import load_dataset
from mtpp.data.formats import MAX_MARKS, ReadOptions, read_any
from mtpp.errors import DataError


def _deep_json(d: Path) -> Path:
    p = d / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    return p


def _utf16(d: Path) -> Path:
    return M.rmtpp(d, "0.5 1.0\n0.2 0.4\n".encode("utf-16"), "1 2\n2 1\n".encode("utf-16"))


def _latin1(d: Path) -> Path:
    return M.rmtpp(d, b"0.5 1.0\n0.2 0.4 \xe9\n", b"1 2\n2 1 1\n")


def _npz_0d(d: Path) -> Path:
    return M.npz(d, {"arrival_times": M.npy_bytes(np.array(3.0))})


def _npz_num_marks_str(d: Path) -> Path:
    return M.npz(d, {**M.npz_good_members(), "num_marks": M.npy_bytes(np.array("many"))})


def _npz_corrupt(d: Path) -> Path:
    p = M.npz(d, M.npz_good_members())
    raw = bytearray(p.read_bytes())
    j = raw.index(b"NUMPY") + 40  # inside the first member's stored bytes: its CRC no longer matches
    raw[j:j + 8] = b"\x00" * 8
    p.write_bytes(bytes(raw))
    return p


# (id, make input, expected message fragment (regex), sequence index named or None, file name named)
CASES: list[tuple[str, Callable[[Path], Path], str, int | None, str]] = [
    # huge mark ids
    ("mark_1e9", lambda d: M.bosser(d, M.ev((1.0, 10**9))), r"mark 1000000000 .*exceeds", 2, "bad.json"),
    ("mark_2_63", lambda d: M.bosser(d, M.ev((1.0, 2**63))), r"mark 9223372036854775808 ", 2, "bad.json"),
    ("mark_2_64", lambda d: M.bosser(d, M.ev((1.0, 2**64))), r"mark 18446744073709551616 ", 2, "bad.json"),
    ("mark_1e20_float", lambda d: M.bosser(d, M.ev((1.0, 1e20))), r"mark 1e\+20 ", 2, "bad.json"),
    ("declared_1e12", lambda d: M.easytpp_json(d, dim=10**12), r"dim_process 1000000000000 .*exceeds", None,
     "bad.json"),
    ("declared_1e9_pickle", lambda d: M.easytpp_pickle(d, {"dim_process": 10**9, "train": [M.easytpp_events([0])]}),
     r"exceeds", None, "train.pkl"),
    ("rmtpp_mark_2_63", lambda d: M.rmtpp(d, "0.5 1.0\n0.2 0.4\n", "1 2\n2 9223372036854775808\n"),
     r"mark 9223372036854775808 ", 1, "event.txt"),
    ("args_marks_1e12", lambda d: M.split_folder(d, marks=10**12), r"marks 1000000000000 .*exceeds", None,
     "args.json"),
    # wrong types
    ("bool_time", lambda d: M.bosser(d, [{"time": True, "labels": [0]}]), r"boolean", 2, "bad.json"),
    ("bool_mark", lambda d: M.bosser(d, [{"time": 1.0, "labels": [True]}]), r"boolean", 2, "bad.json"),
    ("string_times", lambda d: M.easytpp_json(d, {"time_since_start": ["0.5", "1"]}),
     r"is a string \('0.5'\), not a number", 1, "bad.json"),
    ("string_mark", lambda d: M.easytpp_json(d, {"type_event": ["0", "1"]}), r"is a string \('0'\)", 1, "bad.json"),
    ("float_dim_process", lambda d: M.easytpp_json(d, dim=2.5), r"dim_process .*2\.5", None, "bad.json"),
    ("string_dim_process", lambda d: M.easytpp_json(d, dim="two"), r"dim_process .*'two'", None, "bad.json"),
    ("bool_dim_process", lambda d: M.easytpp_json(d, dim=True), r"dim_process .*True", None, "bad.json"),
    ("pickle_dim_str", lambda d: M.easytpp_pickle(d, {"dim_process": "x", "train": [M.easytpp_events([0])]}),
     r"dim_process .*'x'", None, "train.pkl"),
    ("args_marks_float", lambda d: M.split_folder(d, marks=2.5), r"marks .*2\.5", None, "args.json"),
    ("args_marks_string", lambda d: M.split_folder(d, marks="2"), r"marks .*'2'", None, "args.json"),
    ("args_marks_too_few", lambda d: M.split_folder(d, marks=1), r"out of range for 1 marks", 0, "train.json"),
    ("torch_missing_marks", lambda d: M.torch_zip(d, {"sequences": [M.torch_seq(), M.torch_seq(marks=False)],
                                                      "num_marks": 2}), r"missing key 'marks'", 1, "data.pt"),
    ("gntpp_float_num", lambda d: M.easytpp_pickle(d, {"timestamps": M.obj_array([[0.5, 1.0]]),
                                                       "types": M.obj_array([[0, 1]]), "event_type_num": 2.5}),
     r"event_type_num .*2\.5", None, "train.pkl"),
    # tracebacks before
    ("int_too_big_for_float", lambda d: M.bosser_text(d, '[{"time": 1' + "0" * 400 + ', "labels": [0]}]'),
     r"too large", 2, "bad.json"),
    ("digits_5000", lambda d: M.bosser_text(d, '[{"time": ' + "9" * 5000 + ', "labels": [0]}]'),
     r"invalid JSON|too large|digits", None, "bad.json"),
    ("deep_json", _deep_json, r"nested too deeply", None, "deep.json"),
    ("latin1_rmtpp", _latin1, r"not UTF-8", None, "time.txt"),
    ("corrupt_torch_zip", lambda d: M.torch_zip(d, {"sequences": [M.torch_seq()], "num_marks": 2}, corrupt=True),
     r"corrupt", None, "data.pt"),
    ("corrupt_npz", _npz_corrupt, r"corrupt|cannot read", None, "data.npz"),
    ("torch_t_start_string", lambda d: M.torch_zip(d, {"sequences": [M.torch_seq(), M.torch_seq(t_start="zero")],
                                                       "num_marks": 2}), r"t_start .*'zero'", 1, "data.pt"),
    ("torch_t_end_string", lambda d: M.torch_zip(d, {"sequences": [M.torch_seq(t_end="late")], "num_marks": 2}),
     r"t_end .*'late'", 0, "data.pt"),
    ("torch_num_marks_string", lambda d: M.torch_zip(d, {"sequences": [M.torch_seq()], "num_marks": "2"}),
     r"num_marks .*'2'", None, "data.pt"),
    ("args_window_string", lambda d: _split_window(d, "late"), r"window .*'late'", None, "args.json"),
    ("csv_nan_seq_id", lambda d: M.csv(d, "seq_id,time,mark\na,1,0\n,2,1\nb,1,0\n"), r"seq_id .*empty|missing",
     None, "t.csv"),
    ("parquet_nan_seq_id", lambda d: M.parquet(d, {"seq_id": [1.0, float("nan"), 2.0], "time": [1.0, 2.0, 1.0],
                                                   "mark": [0, 1, 0]}), r"seq_id", None, "t.parquet"),
    ("npz_0d", _npz_0d, r"0-d|scalar|one-dimensional", None, "data.npz"),
    ("npz_num_marks_string", _npz_num_marks_str, r"num_marks .*'many'", None, "data.npz"),
    ("npz_lying_header", M.npz_lying_header, r"header|size|cannot read", None, "data.npz"),
    # silent drops / wrong counts before
    ("broken_symlink", lambda d: M.split_folder_with(d, "symlink"), r"broken symbolic link", None, "cal.json"),
    ("fifo", lambda d: M.split_folder_with(d, "fifo"), r"not a regular file", None, "cal.json"),
    ("csv_nan_split", lambda d: M.csv(d, "seq_id,time,mark,split\na,1,0,train\nb,1,0,\n"), r"split .*empty|missing",
     None, "t.csv"),
    ("rmtpp_blank_line", lambda d: M.rmtpp(d, "0.5 1.0\n\n0.2 0.4\n", "1 2\n\n2 1\n"), r"empty sequence", 1,
     "time.txt"),
    ("rmtpp_blank_line_one_file", lambda d: M.rmtpp(d, "0.5 1.0\n0.2 0.4\n0.3\n", "1 2\n\n2 1\n"),
     r"empty sequence|0 marks|times but", 1, "event.txt"),
    # a key given twice in one JSON object: json keeps the last value without a word (every JSON the readers read)
    ("json_key_twice_bosser", lambda d: M.bosser_text(d, '[{"time": 0.5, "time": 0.7, "labels": [0]}]'),
     r"an object gives the key 'time' twice \(0\.5 and 0\.7\): JSON readers keep only the last", 2, "bad.json"),
    ("json_key_twice_easytpp", lambda d: _text(d, "e.json", '[{"dim_process": 2, "time_since_start": [0, 1], '
                                                 '"type_event": [0, 1]}, {"dim_process": 2, "time_since_start": '
                                                 '[0, 1], "type_event": [0, 1], "type_event": [1, 1]}]'),
     r"key 'type_event' twice \(\[0, 1\] and \[1, 1\]\)", 1, "e.json"),
    ("json_key_twice_args", lambda d: _args_text(d, '{"marks": 2, "marks": 3}'), r"key 'marks' twice \(2 and 3\)",
     None, "args.json"),
    # errors that blamed the wrong place
    ("csv_bad_cell_seq_7", lambda d: M.csv(d, "seq_id,time,mark\n" + "".join(f"s{i},1,0\n" for i in range(7))
                                           + "s7,1,x\n"), r"mark 'x'", 7, "t.csv"),
    ("csv_bad_time_seq_3", lambda d: M.csv(d, "seq_id,time,mark\n" + "".join(f"s{i},1,0\n" for i in range(3))
                                           + "s3,soon,0\n"), r"time 'soon'", 3, "t.csv"),
    ("rmtpp_bad_mark_in_event", lambda d: M.rmtpp(d, "0.5 1.0\n0.2 0.4\n", "1 2\n2 x\n"), r"marks are not", 1,
     "event.txt"),
    ("rmtpp_index_after_blank", lambda d: M.rmtpp(d, "0.5 1.0\n\n0.2 0.1\n", "1 2\n\n2 1\n"),
     r"empty sequence", 1, "time.txt"),
    ("rmtpp_unsorted_after_blank", lambda d: M.rmtpp(d, "0.5 1.0\n0.3\n0.2 0.1\n", "1 2\n1\n2 1\n"),
     r"not sorted", 2, "time.txt"),
]


def _text(d: Path, name: str, text: str) -> Path:
    (d / name).write_text(text)
    return d / name


def _args_text(d: Path, text: str) -> Path:
    root = M.split_folder(d)
    (root / "split_0" / "args.json").write_text(text)
    return root


def _split_window(d: Path, window: object) -> Path:
    root = M.split_folder(d)
    args = root / "split_0" / "args.json"
    args.write_text(json.dumps({"marks": 2, "window": window}))
    return root


def _one_line(msg: str) -> None:
    assert "\n" not in msg and "Traceback" not in msg


@pytest.mark.parametrize("make, fragment, index, fname", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_is_one_data_error(tmp_path: Path, make, fragment: str, index: int | None, fname: str) -> None:
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        read_any(path)
    msg = str(info.value)
    _one_line(msg)
    assert re.search(fragment, msg), msg
    assert fname in msg, msg
    assert str(tmp_path) in msg, msg
    if index is not None:
        assert info.value.sequence == index and f"sequence {index}:" in msg, msg
    # the prefix is never repeated (a DataError wrapped into another)
    assert msg.count(str(tmp_path)) <= 1 or msg.count(": sequence") <= 1, msg
    assert msg.count(f"{fname}: ") <= 1, msg


@pytest.mark.parametrize("kind", ["mark_1e9", "declared_1e12", "deep_json", "csv_nan_seq_id", "npz_lying_header",
                                  "broken_symlink", "latin1_rmtpp", "corrupt_torch_zip"])
@pytest.mark.parametrize("action", ["describe", "prepare"])
def test_cli_one_line_exit_2(tmp_path: Path, kind: str, action: str, capsys: pytest.CaptureFixture) -> None:
    make = next(c[1] for c in CASES if c[0] == kind)
    path = make(tmp_path)
    argv = ["data", action, str(path)] + (["--out", str(tmp_path / "out")] if action == "prepare" else [])
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("mtpp data: error: ") and str(tmp_path) in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["mark_2_63", "bool_time", "torch_missing_marks", "csv_nan_split",
                                  "rmtpp_blank_line"])
def test_load_dataset_one_error(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTPP_CACHE_DIR", str(tmp_path / "cache"))
    make = next(c[1] for c in CASES if c[0] == kind)
    with pytest.raises(DataError) as info:
        load_dataset(make(tmp_path))
    _one_line(str(info.value))
    assert str(tmp_path) in str(info.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("args.json"))


# ----------------------------------------------------------------------------------------------------------------
# inputs that are valid (or valid with an option) and must load completely


def test_rmtpp_form_feed_and_nel_are_not_line_breaks(tmp_path: Path) -> None:
    M.rmtpp(tmp_path, "0.5\x0c1.0 2.0\n0.2\u0085 0.4\n1.0\u2028 3.0\n", "1 2 1\n2 1\n1 1\n")
    res = read_any(tmp_path)
    assert res.num_sequences == 3
    assert [len(s) for s in res.sequences] == [3, 2, 2]


def test_utf16_and_bom_text_is_read(tmp_path: Path) -> None:
    _utf16(tmp_path)
    assert [len(s) for s in read_any(tmp_path).sequences] == [2, 2]
    p = M.csv(tmp_path, "")
    p.write_bytes("\ufeffseq_id,time,mark\na,1,0\n".encode())
    assert read_any(p).num_sequences == 1


def test_rmtpp_crlf_and_trailing_blank_lines(tmp_path: Path) -> None:
    M.rmtpp(tmp_path, "0.5 1.0\r\n0.2 0.4\r\n\r\n\n", "1 2\r\n2 1\r\n")
    res = read_any(tmp_path)
    assert [len(s) for s in res.sequences] == [2, 2]


def test_rmtpp_blank_line_dropped_is_counted(tmp_path: Path) -> None:
    M.rmtpp(tmp_path, "0.5 1.0\n\n0.2 0.4\n", "1 2\n\n2 1\n")
    res = read_any(tmp_path, drop_invalid=True)
    assert res.num_sequences == 2 and res.dropped == {"empty sequence": 1}


@pytest.mark.parametrize("container", ["ndarray", "tuple"])
def test_easytpp_pickle_split_as_ndarray_or_tuple(tmp_path: Path, container: str) -> None:
    train = [M.easytpp_events([0, 1]), M.easytpp_events([1])]
    value = tuple(train) if container == "tuple" else np.array(train + [None], dtype=object)[:2]
    p = M.easytpp_pickle(tmp_path, {"dim_process": 2, "train": value, "dev": [M.easytpp_events([0])],
                                    "test": (M.easytpp_events([1, 1]),)})
    res = read_any(p)
    assert {k: len(v) for k, v in res.parts.items()} == {"train": 2, "val": 1, "test": 1}


def test_easytpp_pickle_split_of_wrong_type_is_an_error(tmp_path: Path) -> None:
    p = M.easytpp_pickle(tmp_path, {"dim_process": 2, "train": {"a": 1}, "test": [M.easytpp_events([0])]})
    with pytest.raises(DataError, match=r"train.pkl.*split 'train' .*dict"):
        read_any(p)


def test_python2_pickle_is_read_through_the_restricted_unpickler(tmp_path: Path) -> None:
    res = read_any(M.py2_pickle(tmp_path))
    assert {k: len(v) for k, v in res.parts.items()} == {"train": 2, "val": 1, "test": 1}
    assert res.num_marks == 2


def test_python2_pickle_with_a_global_is_still_refused(tmp_path: Path) -> None:
    p = tmp_path / "evil.pkl"
    p.write_bytes(b"\x80\x02cos\nsystem\nU\x04echoq\x00\x85R.")  # os.system('echo'), protocol 2, py2 str
    with pytest.raises(DataError, match=r"refusing to unpickle os.system"):
        read_any(p)


def test_csv_non_adjacent_rows_are_merged_and_noted(tmp_path: Path) -> None:
    p = M.csv(tmp_path, "seq_id,time,mark\na,1,0\nb,1,1\na,2,1\nb,3,0\nc,1,0\n")
    res = read_any(p)
    assert [len(s) for s in res.sequences] == [2, 2, 1]
    assert any("not adjacent" in n and "2 sequence" in n for n in res.notes), res.notes


def test_parquet_non_adjacent_rows_are_merged_and_noted(tmp_path: Path) -> None:
    p = M.parquet(tmp_path, {"seq_id": [1, 2, 1], "time": [1.0, 1.0, 2.0], "mark": [0, 1, 1]})
    res = read_any(p)
    assert [len(s) for s in res.sequences] == [2, 1]
    assert any("not adjacent" in n for n in res.notes)


def test_truncated_csv_last_row_is_an_error(tmp_path: Path) -> None:
    p = M.csv(tmp_path, "seq_id,time,mark\na,1,0\na,2,1\nb,1,0\nb,2")
    with pytest.raises(DataError, match=r"t.csv: sequence 1: mark is missing on line 5 \(seq_id 'b'\) "
                                        r"\(a truncated file\?\)$"):
        read_any(p)


@pytest.mark.parametrize("sep, name", [(",", "t.csv"), ("\t", "t.tsv")])
@pytest.mark.parametrize("rows, line", [
    (["a,1,0,7", "a,2,1", "b,1,0", "b,2,1"], 2),  # the first data row: pandas took column 1 as an index
    (["a,1,0,7", "a,2,1,7", "b,1,0,7", "b,2,1,7"], 2),  # every row: the table was read shifted, with no error
    (["a,1,0", "a,2,1", "b,1,0,7", "b,2,1"], 4),  # a later row: a pandas tokenizer message
])
def test_a_row_with_more_fields_than_the_header_names_its_line(tmp_path: Path, sep: str, name: str,
                                                               rows: list[str], line: int) -> None:
    """A row with one field more than the header (a stray separator, an unnamed column) made pandas use the
    first column as the index when it was the first data row: seq_id <- time, time <- mark, and with every row
    alike the file was read without a word as sequences of one event at time 0."""
    p = M.csv(tmp_path, "\n".join(["seq_id,time,mark", *rows]).replace(",", sep) + "\n", name=name)
    with pytest.raises(DataError) as err:
        read_any(p)
    msg = str(err.value)
    _one_line(msg)
    assert msg.startswith(f"{p}: line {line} (seq_id ") and "has 4 fields but the header (line 1) names 3" in msg, msg


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_a_parquet_cell_is_shown_as_its_value_not_a_numpy_repr(tmp_path: Path, dtype: str) -> None:
    """A Parquet mark 0.5 was shown as "mark np.float64(0.5)": numpy's repr of the cell, not the file's value."""
    p = M.parquet(tmp_path, {"seq_id": ["a", "a", "b"], "time": [0.5, 1.0, 0.2],
                             "mark": np.array([1.0, 0.5, 2.0], dtype=dtype)})
    with pytest.raises(DataError) as err:
        read_any(p)
    assert str(err.value).endswith("sequence 0: mark 0.5 is not an integer on row 1 (seq_id 'a')"), str(err.value)
    assert "np." not in str(err.value)


_ISO = "2024-03-01T09:30:00+01:00"
_DATE_INPUTS = {
    "csv": lambda d: M.csv(d, f"seq_id,time,mark\na,{_ISO},0\na,2024-03-01T10:00:00Z,1\n"),
    "parquet_text": lambda d: M.parquet(d, {"seq_id": ["a", "a"], "time": [_ISO, "2024-03-01T10:00:00Z"],
                                            "mark": [0, 1]}),
    "parquet_timestamp": lambda d: M.parquet(d, {"seq_id": ["a", "a"], "mark": [0, 1], "time": __import__(
        "pandas").to_datetime(["2024-03-01 09:30", "2024-03-01 10:00"], utc=True)}),
    "bosser": lambda d: M.bosser(d, M.ev((_ISO, 0))),
    "easytpp_json": lambda d: M.easytpp_json(d, {"time_since_start": [_ISO, "2024-03-01 10:00:00"]}),
    "easytpp_pickle": lambda d: M.easytpp_pickle(d, {"dim_process": 2, "train": [M.easytpp_events([0, 1], [_ISO, _ISO])]}),
    "rmtpp": lambda d: M.rmtpp(d, f"{_ISO} 2024-03-01T10:00:00Z\n", "1 2\n"),
    # datetime64[ns] arrays were read as integers: nanoseconds since 1970, without a word
    "npz_datetime64": lambda d: M.npz(d, {"arrival_times": M.npy_bytes(M.obj_array([
        np.array(["2024-03-01T09:30", "2024-03-01T10:00"], dtype="datetime64[ns]")]))}),
    "pickle_datetime64": lambda d: M.easytpp_pickle(d, {"dim_process": 1, "train": [[
        {"time_since_start": np.datetime64("2024-03-01T09:30", "ns"), "type_event": 0}]]}),
}


@pytest.mark.parametrize("kind", sorted(_DATE_INPUTS))
def test_date_times_where_times_belong_say_how_to_make_numbers(tmp_path: Path, kind: str) -> None:
    """Event logs come with timestamps ('2024-03-01T09:30:00+01:00'); every reader said "is not a number" (a JSON
    one even "write numbers unquoted", which cannot work for a date). Each now says it is a date and time and
    how to turn it into seconds."""
    with pytest.raises(DataError) as err:
        read_any(_DATE_INPUTS[kind](tmp_path))
    msg = str(err.value)
    _one_line(msg)
    assert "(a date and time: times are numbers, e.g. seconds since 1970: pandas.to_datetime(" in msg, msg
    assert "unquoted" not in msg


def test_a_missing_mark_is_not_told_to_map_category_names(tmp_path: Path) -> None:
    """The category hint is for a name in the mark column; an empty cell (a text column because of one name
    elsewhere, or not) is said to be missing, with no advice about names."""
    p = M.csv(tmp_path, "seq_id,time,mark\na,1,click\na,2,\nb,1,0\nb,2,1")
    with pytest.raises(DataError, match=r"mark 'click' is not a number on line 2 .*pandas.factorize"):
        read_any(p)
    p = M.csv(tmp_path, "seq_id,time,mark\na,1,\na,2,x\nb,1,0\nb,2,1")
    with pytest.raises(DataError, match=r"sequence 0: mark is missing on line 2 \(seq_id 'a'\)$"):
        read_any(p)


@pytest.mark.parametrize("last, said", [
    ("user_7,0.7,", "mark is missing on line 5 (seq_id 'user_7')"),
    ("user_7,0.7,cart", "mark 'cart' is not a number on line 5 (seq_id 'user_7')"),
    ("user_7,,0", "time is missing on line 5 (seq_id 'user_7')"),
    ("user_7,abc,0", "time 'abc' is not a number on line 5 (seq_id 'user_7')"),
    ("user_7,0.7,1.5", "mark '1.5' is not an integer on line 5 (seq_id 'user_7')"),
    ("user_7,0.7,1,bogus", "split 'bogus' on line 5 (seq_id 'user_7') is not a part name"),
    ("user_7,0.7,1,test", "rows of one sequence in different splits: 'train' and 'test' (seq_id 'user_7', line 5)"),
])
def test_every_table_cell_error_names_the_users_seq_id(tmp_path: Path, last: str, said: str) -> None:
    """A cell error said "sequence 1" (the file order) and a line, while the unsorted / negative time errors also
    named the seq_id: the user looks for user_7, not user_1."""
    split = last.count(",") == 3
    head = "seq_id,time,mark" + ",split" * split
    rows = [f"user_9,1.0,0{',train' * split}", f"user_9,2.0,1{',train' * split}", f"user_7,0.5,1{',train' * split}"]
    p = M.csv(tmp_path, "\n".join([head, *rows, last]))
    with pytest.raises(DataError) as err:
        read_any(p)
    assert "sequence 1: " in str(err.value) and said in str(err.value), str(err.value)


def test_csv_split_column_keeps_each_sequence_in_one_part(tmp_path: Path) -> None:
    p = M.csv(tmp_path, "seq_id,time,mark,split\na,1,0,train\na,2,0,test\n")
    with pytest.raises(DataError, match=r"t.csv: sequence 0: .*split.*train.*test"):
        read_any(p)


def test_torch_zip_without_any_marks_is_unmarked_with_a_note(tmp_path: Path) -> None:
    p = M.torch_zip(tmp_path, {"sequences": [M.torch_seq(marks=False), M.torch_seq(3, marks=False)]})
    res = read_any(p)
    assert res.num_marks == 1 and any("unmarked" in n for n in res.notes)


# ----------------------------------------------------------------------------------------------------------------
# mark ids: the bound, remapping, the sparse warning


def test_max_marks_is_documented_and_sane() -> None:
    assert 10_000 <= MAX_MARKS <= 10_000_000
    from mtpp.data import formats

    assert "MAX_MARKS" in formats.__doc__


def test_sparse_marks_are_noted_and_remapped_on_request(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    seqs = [M.ev((0.5, 0), (1.0, 500)), M.ev((0.2, 1000)), M.ev((0.1, 500), (0.3, 0))] * 4
    p = tmp_path / "sparse.json"
    p.write_text(json.dumps(seqs))
    plain = read_any(p)
    assert plain.num_marks == 1001
    assert any("3 of 1001" in n and "--remap-marks" in n for n in plain.notes), plain.notes
    res = read_any(p, remap_marks=True)
    assert res.num_marks == 3
    assert sorted({int(k) for s in res.sequences for k in s.marks}) == [0, 1, 2]
    assert res.meta["mark_ids"] == [0, 500, 1000]
    out = tmp_path / "out"
    assert main(["data", "prepare", str(p), "--out", str(out), "--remap-marks", "--splits", "1"]) == 0
    args = json.loads((out / "args.json").read_text())
    assert args["marks"] == 3 and args["mark_ids"] == [0, 500, 1000]
    assert json.loads((out / "split_0" / "args.json").read_text())["marks"] == 3


def test_remapping_ids_that_already_are_0_to_k_minus_1_says_nothing(tmp_path: Path) -> None:
    """A folder prepared with --remap-marks, read again with the remap (mtpp train with data.remap_marks=true
    reads the prepared split): the note "remapped 4 observed mark ids (0, 1, 2, 3) to 0..3" misled."""
    p = tmp_path / "dense.json"
    p.write_text(json.dumps([M.ev((0.5, 0), (1.0, 1)), M.ev((0.2, 2))] * 3))
    res = read_any(p, remap_marks=True)
    assert res.num_marks == 3 and res.meta["mark_ids"] == [0, 1, 2]
    assert not any("remapped" in n for n in res.notes), res.notes


def test_remap_allows_huge_sparse_ids(tmp_path: Path) -> None:
    p = M.bosser(tmp_path, M.ev((1.0, 10**12), (2.0, 2**62)))
    res = read_any(p, remap_marks=True)
    assert res.num_marks == 4 and res.meta["mark_ids"] == [0, 1, 10**12, 2**62]
    assert res.parts["bad"][2].marks.tolist() == [2, 3]


def test_remap_is_shared_across_inputs_of_prepare(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x.json").write_text(json.dumps([M.ev((0.5, 7))] * 3))
    (b / "y.json").write_text(json.dumps([M.ev((0.5, 9)), M.ev((0.5, 7), (0.7, 9))]))
    out = tmp_path / "out"
    assert main(["data", "prepare", str(a), str(b), "--out", str(out), "--remap-marks", "--splits", "1"]) == 0
    args = json.loads((out / "args.json").read_text())
    assert args["mark_ids"] == [7, 9] and args["marks"] == 2


# ----------------------------------------------------------------------------------------------------------------
# float32 range


def test_float32_range_names_the_sequences(tmp_path: Path) -> None:
    import torch

    from mtpp.data.sequence import check_dtype_range, make_sequence

    seqs = [make_sequence([0.5, 1.0], [0, 1]) for _ in range(5)]
    seqs[3] = make_sequence([0.5, 2e39], [0, 1])
    seqs[4] = make_sequence([1e40], [0])
    check_dtype_range({"train": seqs}, torch.float64, source="x")  # fine in float64
    with pytest.raises(DataError) as info:
        check_dtype_range({"train": seqs}, torch.float32, source="x")
    msg = str(info.value)
    _one_line(msg)
    assert "train sequences 3, 4" in msg and "float64" in msg and "3.4" in msg
    check_dtype_range({"train": seqs[:3]}, "float32", source="x")


@pytest.mark.parametrize("dtype, tiny", [("float32", float(np.finfo(np.float32).tiny)),
                                         ("float64", float(np.finfo(np.float64).tiny)),
                                         ("float16", float(np.finfo(np.float16).tiny)),
                                         ("bfloat16", float(np.finfo(np.float32).tiny))])
@pytest.mark.parametrize("where", ["first_gap", "inner_gap", "survival_gap"])
def test_gaps_below_the_dtypes_smallest_normal_name_the_sequences(dtype: str, tiny: float, where: str) -> None:
    """Times in units of 1e-200 trained in float32 "successfully": every gap and the automatic time scale became
    0 in a batch, every loss NaN, and metrics.json held nulls. A positive gap (the first event's t_1, a gap
    between events, the survival gap to a window end) below the dtype's smallest normal number is refused,
    naming the sequences by index and seq_id; ties (zero gaps) and the dtype's own normal range are fine."""
    from mtpp.data.sequence import check_dtype_range, make_sequence

    seqs = [make_sequence([0.5, 1.0, 1.0], [0, 1, 1], name=f"u{i}") for i in range(4)]  # a tie: fine
    small = tiny / 4
    seqs[2] = {"first_gap": make_sequence([small, 1.0], [0, 1], name="u2"),
               "inner_gap": make_sequence([0.0, small, 1.0], [0, 1, 0], name="u2"),
               "survival_gap": make_sequence([0.0, 0.0], [0, 1], window_end=small, name="u2")}[where]
    check_dtype_range({"train": [seqs[i] for i in (0, 1, 3)]}, dtype, source="x")
    check_dtype_range({"train": [make_sequence([tiny, 2 * tiny], [0, 1])]}, dtype, source="x")  # normal: fine
    with pytest.raises(DataError) as info:
        check_dtype_range({"train": seqs, "": seqs[:3]}, dtype, source="x")
    msg = str(info.value)
    _one_line(msg)
    assert msg.startswith("x: 2 sequence(s) have gaps between events below") and f"{dtype}'s smallest normal" in msg
    assert "train sequences 2 (seq_id 'u2') of 4; sequences 2 (seq_id 'u2') of 3;" in msg, msg
    assert "data.dtype: float64" in msg


def test_times_in_units_of_1e_200_stop_the_run_before_training(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """The run that trained on NaN (exit 0, null metrics) now stops in one line naming the data, the seq_ids and
    the fix; and the same file given to evaluate --input of a float32 run no longer becomes ties silently."""
    rng = np.random.default_rng(0)
    rows = [f"u{s},{t!r},{k}" for s in range(12) for t, k in zip((np.cumsum(rng.exponential(1.0, 4)) * 1e-200).tolist(),
                                                                   rng.integers(0, 2, 4).tolist())]
    p = M.csv(tmp_path, "seq_id,time,mark\n" + "\n".join(rows) + "\n")
    code = main(["train", "--out", str(tmp_path / "run"), "--set", f"data.name={p}", "--set", "train.max_epochs=1",
                 "--set", "model.hidden_size=4", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "error:" in err[-1] and "below float32's smallest normal number" in err[-1], err
    assert "(seq_id 'u" in err[-1] and not (tmp_path / "run" / "metrics.json").exists()


def test_dataset_check_dtype(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTPP_CACHE_DIR", str(tmp_path / "cache"))
    seqs = [M.ev((0.5, 0), (1.0 + i, 1)) for i in range(10)]
    seqs[7] = M.ev((0.5, 0), (1e39, 1))
    p = tmp_path / "big.json"
    p.write_text(json.dumps(seqs))
    ds = load_dataset(p)
    with pytest.raises(DataError, match=r"big.*beyond float32"):
        ds.check_dtype("float32")
    ds.check_dtype("float64")


def test_fifo_given_directly_is_refused_without_blocking(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fifo = tmp_path / "events.json"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"events.json: not a regular file"):
        read_any(fifo)
    assert main(["data", "describe", str(fifo)]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_rmtpp_folder_with_a_sub_folder(tmp_path: Path) -> None:
    """A sub-folder (e.g. a split folder prepared into the input folder) is skipped, never opened as a file."""
    M.rmtpp(tmp_path, "0.5 1.0\n0.2 0.4\n", "1 2\n2 1\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "event_more").mkdir()
    assert read_any(tmp_path).num_sequences == 2


# ----------------------------------------------------------------------------------------------------------------
# pickles that would make the unpickler allocate gigabytes (run under a 1.5 GB address-space limit in a child)

_BOMB_SCRIPT = r"""
import io, pickle, resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))
from mtpp.data.formats import restricted_loads
from mtpp.errors import DataError
kind = sys.argv[1]
if kind == "memo":
    data = b"\x80\x02K\x01r\xff\xff\xff\x0f."
elif kind == "object_shape":
    arr = np.empty(2, dtype=object); arr[0] = [1.0]; arr[1] = [2.0]
    data = pickle.dumps(arr, protocol=2)
    data = data.replace(b"K\x02\x85", b"J\x00\x00\x00\x40\x85", 1)  # shape (2,) -> (2**30,)
    assert data.count(b"J\x00\x00\x00\x40") == 1
else:
    data = b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x40\x85R."  # numpy.ndarray((2**30,))
try:
    restricted_loads(data, "bomb.pkl")
except DataError as e:
    print("DataError:", e)
"""


@pytest.mark.parametrize("kind", ["memo", "object_shape", "direct_ndarray"])
def test_pickle_memory_bombs_are_refused(kind: str) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _BOMB_SCRIPT, kind], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0 and out.stdout.startswith("DataError: bomb.pkl: "), (out.stdout, out.stderr[-500:])
    assert "MemoryError" not in out.stdout


def test_numpy_arrays_in_pickles_come_back_as_plain_arrays(tmp_path: Path) -> None:
    from mtpp.data.formats import restricted_loads

    obj = {"a": np.arange(3.0), "b": [M.obj_array([[1, 2], [3]])], "c": (np.zeros((2, 2), dtype=np.int32),)}
    for protocol in (2, 3, 4, 5):
        back = restricted_loads(pickle.dumps(obj, protocol=protocol), "x")
        assert type(back["a"]) is np.ndarray and back["a"].tolist() == [0.0, 1.0, 2.0]
        assert type(back["b"][0]) is np.ndarray and type(back["b"][0][0]) is np.ndarray
        assert back["b"][0][1].tolist() == [3]
        assert type(back["c"][0]) is np.ndarray and back["c"][0].dtype == np.int32


def test_declared_marks_far_more_than_observed_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                     capsys: pytest.CaptureFixture) -> None:
    p = M.easytpp_json(tmp_path, dim=50)
    with caplog.at_level("WARNING"):
        res = read_any(p)
    assert res.num_marks == 50
    assert any("only 2 of 50 mark ids occur" in n for n in res.notes)
    assert any("only 2 of 50" in r.getMessage() for r in caplog.records)
    assert main(["data", "describe", str(p)]) == 0
    assert "only 2 of 50 mark ids occur" in capsys.readouterr().out
    assert main(["data", "describe", str(p), "--remap-marks", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["total"]["num_marks"] == 2 and len(described["mark_ids"]) == 2
    assert main(["data", "describe", str(p), "--remap-marks"]) == 0  # each new id beside the data's own
    out = capsys.readouterr().out
    assert "most frequent marks (remapped id <- the data's id):" in out
    assert all(f"{k} <- {i}" in out for k, i in enumerate(described["mark_ids"]))


def test_easytpp_redundant_fields_that_contradict_the_times(tmp_path: Path) -> None:
    """``seq_len`` that is not the number of events is an error (a truncated record?), dropped and counted with
    drop_invalid; ``time_since_last_event`` that contradicts ``time_since_start`` is a note counting the
    sequences (the staged LGNJSDE Taobao pickle has 1,268 such training sequences); consistent ones say nothing."""
    p = M.easytpp_json(tmp_path, {"seq_len": 99})
    with pytest.raises(DataError, match=r"bad.json: sequence 1: seq_len is 99 but time_since_start has 2 events"):
        read_any(p)
    res = read_any(p, options=ReadOptions(drop_invalid=True))
    assert res.num_sequences == 1 and sum(res.dropped.values()) == 1
    p = M.easytpp_json(tmp_path, {"time_since_start": [0.0, 1.0, 3.0], "time_since_last_event": [0.0, 1.0, 5.0],
                                  "type_event": [0, 1, 1]}, name="gaps.json")  # fmt: skip
    res = read_any(p)
    assert res.num_sequences == 2 and np.allclose(res.parts["gaps"][1].times, [0.0, 1.0, 3.0])
    assert any("contradicts time_since_start in 1 sequence(s) (first: sequence 1: time_since_last_event[2] = 5"
               in n for n in res.notes), res.notes  # fmt: skip
    with pytest.raises(DataError, match="time_since_last_event has 1 values but time_since_start has 2 events"):
        read_any(M.easytpp_json(tmp_path, {"time_since_last_event": [0.0]}, name="short.json"))
    assert not any("contradicts" in n for n in read_any(M.easytpp_json(tmp_path, name="good.json")).notes)
    events = M.easytpp_events([0, 1, 1], [0.0, 1.0, 3.0])
    events[2]["time_since_last_event"], events[1]["time_since_last_event"], events[0]["time_since_last_event"] = 9, 1, 0
    res = read_any(M.easytpp_pickle(tmp_path, {"dim_process": 2, "train": [events]}))
    assert any("contradicts time_since_start in 1 sequence(s)" in n for n in res.notes), res.notes


@pytest.mark.parametrize("marker", ["best.pt", "checkpoint.pt", "log.jsonl"])
@pytest.mark.parametrize("action", ["describe", "prepare", "train"])
def test_a_run_folder_given_as_data_is_named_as_one(tmp_path: Path, marker: str, action: str,
                                                    capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``mtpp data describe RUN`` (or a run as data.name, or evaluate --input RUN) read the run's
    arrays_test.json as sequences: "arrays_test.json: expected a JSON list of sequences, got dict"."""
    monkeypatch.setenv("MTPP_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data: {name: synthetic_hawkes}\n")
    (run / marker).write_bytes(b"x")
    (run / "arrays_test.json").write_text(json.dumps({"pit": [0.5]}))
    argv = {"describe": ["data", "describe", str(run)],
            "prepare": ["data", "prepare", str(run), "--out", str(tmp_path / "out")],
            "train": ["train", "--out", str(tmp_path / "out"), "--set", f"data.name={run}", "-q"]}[action]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"{run}: a run folder of mtpp train (config.yaml, {marker}), not data" in err[-1], err
    assert "arrays_test.json" not in err[-1]
    assert not (tmp_path / "out" / "metrics.json").exists() and not (tmp_path / "out" / "split_0").exists()
