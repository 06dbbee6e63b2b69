"""A seeded mutation fuzzer over small valid files of every format: each mutant either loads correctly (every
sequence valid, marks below ``num_marks <= MAX_MARKS``) or is one ``DataError`` line that names the file and never
repeats its own prefix. Bounded: a fixed number of mutants per format (about a second in all).

``MTPP_FUZZ_N=2000 pytest tests/test_fuzz_readers.py`` runs a longer campaign with the same invariant.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import malformed as M
from mtpp.data.formats import MAX_MARKS, read_any
from mtpp.errors import DataError

N = int(os.environ.get("MTPP_FUZZ_N", "40"))
SEED = os.environ.get("MTPP_FUZZ_SEED", "0")

# values a fuzzer puts where a number, a list or a header belongs
ODD_VALUES: list[Any] = [True, False, None, "1", "x", "", [], {}, [1, 2], -1, 0, 2**63, 2**64, 10**12, 10**400,
                         1e39, -0.0, 1.5, float("nan"), float("inf"), "nan", 2**31, "1e400"]


def _seqs() -> list[tuple[list[float], list[int]]]:
    return [([0.5, 1.0, 1.0, 2.5], [0, 1, 2, 1]), ([0.1], [2]), ([0.0, 3.0], [1, 0])]


def _bosser_obj() -> Any:
    return [[{"time": t, "labels": [k]} for t, k in zip(ts, ks)] for ts, ks in _seqs()]


def _easytpp_obj() -> Any:
    return [{"dim_process": 3, "time_since_start": ts, "time_since_last_event": ts, "type_event": ks}
            for ts, ks in _seqs()]


def _pickle_obj() -> Any:
    ev = [[{"time_since_start": t, "type_event": k} for t, k in zip(ts, ks)] for ts, ks in _seqs()]
    return {"dim_process": 3, "train": ev, "dev": ev[:1], "test": ev[1:]}


def _gntpp_obj() -> Any:
    return {"timestamps": M.obj_array([ts for ts, _ in _seqs()]), "types": M.obj_array([ks for _, ks in _seqs()]),
            "event_type_num": 3}


def _torch_obj() -> Any:
    return {"sequences": [{"t_start": 0.0, "t_end": ts[-1] + 1, "arrival_times": ts, "marks": ks}
                          for ts, ks in _seqs()], "num_marks": 3}


def _mutate_obj(obj: Any, rng: random.Random) -> Any:
    """Replace one random leaf or container of ``obj`` (a deep copy) by an odd value, or delete a dict key."""
    if rng is None:
        return obj
    obj = pickle.loads(pickle.dumps(obj))
    paths: list[tuple[Any, Any]] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k in list(x):
                paths.append((x, k))
                walk(x[k])
        elif isinstance(x, list):
            for i in range(len(x)):
                paths.append((x, i))
                walk(x[i])
        elif isinstance(x, np.ndarray) and x.dtype == object:
            for i in range(len(x)):
                paths.append((x, i))

    walk(obj)
    parent, key = rng.choice(paths)
    if isinstance(parent, dict) and rng.random() < 0.15:
        del parent[key]
    else:
        parent[key] = rng.choice(ODD_VALUES)
    return obj


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    if rng is None:
        return data
    b = bytearray(data)
    op = rng.randrange(4)
    if op == 0 and b:  # truncate
        return bytes(b[: rng.randrange(len(b))])
    if op == 1 and b:  # flip a few bytes
        for _ in range(rng.randint(1, 4)):
            j = rng.randrange(len(b))
            b[j] = rng.randrange(256)
        return bytes(b)
    if op == 2:  # insert odd text
        j = rng.randrange(len(b) + 1)
        return bytes(b[:j]) + rng.choice([b"\x0c", b"\xc2\x85", b"\n\n", b"\xff", b" 1e400 ", b"-", b"9" * 30,
                                           b"\r", b"\x00", b",,", b"\"", b"true"]) + bytes(b[j:])
    j = rng.randrange(len(b) + 1)  # delete a slice
    return bytes(b[:j]) + bytes(b[j + rng.randint(1, 8):])


def _write_json(d: Path, obj: Any, name: str) -> Path:
    p = d / name
    try:
        p.write_text(json.dumps(obj))
    except ValueError:  # nan etc: json.dumps writes NaN, which is fine; circular never happens
        p.write_text(json.dumps(obj, allow_nan=True))
    return p


def _write_pickle(d: Path, obj: Any, name: str) -> Path:
    p = d / name
    p.write_bytes(pickle.dumps(obj))
    return p


def _rmtpp_files(d: Path) -> tuple[bytes, bytes]:
    t = "\n".join(" ".join(map(str, ts)) for ts, _ in _seqs()) + "\n"
    k = "\n".join(" ".join(str(x + 1) for x in ks) for _, ks in _seqs()) + "\n"
    return t.encode(), k.encode()


def _csv_bytes() -> bytes:
    rows = ["seq_id,time,mark,split"]
    for i, (ts, ks) in enumerate(_seqs()):
        rows += [f"s{i},{t},{k},{'train' if i < 2 else 'test'}" for t, k in zip(ts, ks)]
    return ("\n".join(rows) + "\n").encode()


def _npz_members() -> dict[str, bytes]:
    return {"arrival_times": M.npy_bytes(M.obj_array([ts for ts, _ in _seqs()])),
            "marks": M.npy_bytes(M.obj_array([ks for _, ks in _seqs()]))}


def _make(fmt: str, d: Path, rng: random.Random | None) -> Path:
    """One mutant of format ``fmt`` under ``d``: a structural mutation (value-level) or a byte mutation; the
    valid original when ``rng`` is None."""
    structural = rng is not None and rng.random() < 0.5
    if fmt == "bosser":
        if structural:
            return _write_json(d, _mutate_obj(_bosser_obj(), rng), "b.json")
        return _bytes(d, "b.json", json.dumps(_bosser_obj()).encode(), rng)
    if fmt == "easytpp_json":
        if structural:
            return _write_json(d, _mutate_obj(_easytpp_obj(), rng), "e.json")
        return _bytes(d, "e.json", json.dumps(_easytpp_obj()).encode(), rng)
    if fmt == "easytpp_pickle":
        if structural:
            return _write_pickle(d, _mutate_obj(_pickle_obj(), rng), "p.pkl")
        return _bytes(d, "p.pkl", pickle.dumps(_pickle_obj()), rng)
    if fmt == "gntpp_pickle":
        if structural:
            return _write_pickle(d, _mutate_obj(_gntpp_obj(), rng), "g.pkl")
        return _bytes(d, "g.pkl", pickle.dumps(_gntpp_obj()), rng)
    if fmt == "torch_zip":
        obj = _mutate_obj(_torch_obj(), rng) if structural else _torch_obj()
        p = M.torch_zip(d, obj)
        return p if structural else _bytes(d, "data.pt", p.read_bytes(), rng)
    if fmt == "npz":
        members = _npz_members()
        if structural:
            key = rng.choice(list(members))
            members[key] = _mutate_bytes(members[key], rng)
            return M.npz(d, members)
        p = M.npz(d, members)
        return _bytes(d, "data.npz", p.read_bytes(), rng)
    if fmt == "rmtpp":
        t, k = _rmtpp_files(d)
        if rng is None:
            pass
        elif rng.random() < 0.5:
            t = _mutate_bytes(t, rng)
        else:
            k = _mutate_bytes(k, rng)
        return M.rmtpp(d, t, k)
    if fmt == "csv":
        return _bytes(d, "t.csv", _csv_bytes(), rng)
    if fmt == "parquet":
        import pandas as pd

        ts = [t for s, _ in _seqs() for t in s]
        ks = [k for _, s in _seqs() for k in s]
        ids = [i for i, (s, _) in enumerate(_seqs()) for _ in s]
        cols: dict[str, list] = {"seq_id": ids, "time": ts, "mark": ks}
        if rng is None:
            p = d / "t.parquet"
            pd.DataFrame(cols).to_parquet(p)
            return p
        col = rng.choice(list(cols))
        j = rng.randrange(len(ts))
        cols[col] = list(cols[col])
        cols[col][j] = rng.choice([None, float("nan"), -1, 2**62, 1.5, 1e39])
        p = d / "t.parquet"
        try:
            pd.DataFrame(cols).to_parquet(p)
        except Exception:  # noqa: BLE001 - pyarrow refuses some mixes: then mutate the bytes instead
            pd.DataFrame({"seq_id": ids, "time": ts, "mark": ks}).to_parquet(p)
            return _bytes(d, "t.parquet", p.read_bytes(), rng)
        return p
    if fmt == "split_folder":
        root = M.split_folder(d, parts={"train": _bosser_obj(), "val": _bosser_obj()[:1],
                                        "test": _bosser_obj()[1:]}, marks=3)
        if rng is None:
            return root
        target = root / "split_0" / rng.choice(["train.json", "val.json", "args.json"])
        if structural:
            obj = json.loads(target.read_text())
            target.write_text(json.dumps(_mutate_obj(obj, rng) if obj else obj))
        else:
            target.write_bytes(_mutate_bytes(target.read_bytes(), rng))
        return root
    raise AssertionError(fmt)


def _bytes(d: Path, name: str, data: bytes, rng: random.Random | None) -> Path:
    p = d / name
    p.write_bytes(_mutate_bytes(data, rng))
    return p


FORMATS = ["bosser", "easytpp_json", "easytpp_pickle", "gntpp_pickle", "torch_zip", "npz", "rmtpp", "csv",
           "parquet", "split_folder"]


def check_invariant(path: Path, read: Callable[[Path], Any]) -> str:
    """``"ok"`` or ``"error"``; raises AssertionError when the invariant fails."""
    try:
        res = read(path)
    except DataError as e:
        msg = str(e)
        assert "\n" not in msg, msg
        folder = str(path if path.is_dir() else path.parent)
        assert folder in msg, f"error does not name the file: {msg}"
        head = msg.split(": ", 1)[0]
        assert msg.count(head + ":") == 1, f"prefix repeated: {msg}"
        return "error"
    assert 1 <= res.num_marks <= MAX_MARKS
    for seqs in res.parts.values():
        for s in seqs:
            assert len(s) > 0 and s.times.dtype == np.float64 and s.marks.dtype == np.int64
            assert np.all(np.isfinite(s.times)) and s.times[0] >= 0 and np.all(np.diff(s.times) >= 0)
            assert s.marks.min() >= 0 and s.marks.max() < res.num_marks
    return "ok"


@pytest.mark.parametrize("fmt", FORMATS)
def test_mutants_load_or_fail_cleanly(tmp_path: Path, fmt: str) -> None:
    pytest.importorskip("pyarrow") if fmt == "parquet" else None
    rng = random.Random(f"mtpp-fuzz-{fmt}-{SEED}")
    outcomes = {"ok": 0, "error": 0}
    for i in range(N):
        d = tmp_path / f"m{i}"
        d.mkdir()
        path = _make(fmt, d, rng)
        try:
            outcomes[check_invariant(path, read_any)] += 1
        except AssertionError as e:
            raise AssertionError(f"{fmt} mutant {i} ({path}): {e}") from None
        except Exception as e:  # noqa: BLE001 - the point: nothing but DataError may escape
            raise AssertionError(f"{fmt} mutant {i} ({path}): {type(e).__name__}: {e}") from e
    print(fmt, outcomes)
    assert outcomes["error"] > 0  # the mutations do reach the validation


@pytest.mark.parametrize("fmt", FORMATS)
def test_unmutated_originals_load(tmp_path: Path, fmt: str) -> None:
    """The fuzzer's starting files are valid and load completely (a reader refusing everything fails here)."""
    pytest.importorskip("pyarrow") if fmt == "parquet" else None
    path = _make(fmt, tmp_path, None)
    assert check_invariant(path, read_any) == "ok"
    from mtpp.data.splits import deduplicate

    unique, _ = deduplicate(read_any(path).sequences)  # the pickle and split folder repeat sequences across parts
    assert len(unique) == len(_seqs()) and sum(map(len, unique)) == sum(len(t) for t, _ in _seqs())


@pytest.mark.parametrize("fmt", FORMATS)
def test_mutants_through_the_cli_and_load_dataset(tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The same mutants through ``mtpp data describe``, ``mtpp data prepare`` and ``load_dataset``: exit 0, or
    exit 2 with one line on stderr naming the file; ``load_dataset`` returns or raises ``DataError``."""
    pytest.importorskip("pyarrow") if fmt == "parquet" else None
    from mtpp.cli import main
    from mtpp.data.catalog import load_dataset

    monkeypatch.setenv("MTPP_CACHE_DIR", str(tmp_path / "cache"))
    rng = random.Random(f"mtpp-fuzz-cli-{fmt}-{SEED}")
    for i in range(max(N // 5, 4)):
        d = tmp_path / f"m{i}"
        d.mkdir()
        path = _make(fmt, d, rng)
        for argv in (["data", "describe", str(path)], ["data", "prepare", str(path), "--out", str(d / "out")]):
            code = main(argv)
            err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
            assert code in (0, 2), (fmt, i, argv, err)
            if code == 2:
                assert len(err) == 1 and err[0].startswith("mtpp data: error: ") and str(d) in err[0], err
        try:
            load_dataset(path)
        except DataError as e:
            assert "\n" not in str(e) and str(d) in str(e), str(e)
