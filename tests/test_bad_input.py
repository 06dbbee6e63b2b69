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
