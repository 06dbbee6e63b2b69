"""Small generated malformed inputs, one maker per kind found by the issue-11 fuzzer (shared by the tests).

Each maker writes into a temporary folder and returns the path to give to ``read_any`` / ``mtpp data``. Nothing
here copies a benchmark file: every input is a few events built in code.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

GOOD = [{"time": 0.5, "labels": [0]}, {"time": 1.5, "labels": [1]}]


def ev(*pairs: tuple[Any, Any]) -> list[dict]:
    """Bosser events ``[{"time": t, "labels": [k]}, ...]``."""
    return [{"time": t, "labels": [k]} for t, k in pairs]


def bosser(d: Path, bad_seq: Any, name: str = "bad.json") -> Path:
    """A Bosser file whose sequence 2 is ``bad_seq`` (0 and 1 are fine)."""
    p = d / name
    p.write_text(json.dumps([GOOD, GOOD, bad_seq]))
    return p


def bosser_text(d: Path, seq_text: str) -> Path:
    """A Bosser file whose sequence 2 is the raw JSON text ``seq_text`` (numbers JSON can hold, Python cannot)."""
    p = d / "bad.json"
    good = json.dumps(GOOD)
    p.write_text(f"[{good}, {good}, {seq_text}]")
    return p


def easytpp_json(d: Path, bad: dict | None = None, dim: Any = 2, name: str = "bad.json") -> Path:
    """EasyTPP JSON with two good records; sequence 1 updated with ``bad``."""
    rec = {"dim_process": dim, "time_since_start": [0.0, 1.0], "time_since_last_event": [0.0, 1.0],
           "type_event": [0, 1]}
    p = d / name
    p.write_text(json.dumps([rec, {**rec, **(bad or {})}]))
    return p


def easytpp_events(ks: list[int], ts: list[float] | None = None) -> list[dict]:
    ts = ts if ts is not None else [float(i) for i in range(len(ks))]
    return [{"time_since_start": t, "type_event": k} for t, k in zip(ts, ks)]


def easytpp_pickle(d: Path, obj: dict, name: str = "train.pkl", protocol: int = 4) -> Path:
    p = d / name
    p.write_bytes(pickle.dumps(obj, protocol=protocol))
    return p


class _Py2Pickler(pickle._Pickler):  # type: ignore[misc]
    """Writes ``str`` as Python 2 did (``SHORT_BINSTRING``: latin-1 bytes, no encoding), protocol 2."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: str) -> None:
        b = obj.encode("latin1")
        assert len(b) < 256
        self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        self.memoize(obj)

    dispatch[str] = _save_py2_str


def py2_pickle(d: Path) -> Path:
    """A protocol-2 pickle as Python 2 wrote it, with a non-ASCII ``str`` (latin-1 'é') among the values."""
    obj = {"dim_process": 2, "train": [easytpp_events([0, 1]), easytpp_events([1, 1, 0])],
           "dev": [easytpp_events([1])], "test": [easytpp_events([0, 0])], "note": "caf\xe9"}
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    p = d / "py2.pkl"
    p.write_bytes(buf.getvalue())
    return p


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


def obj_array(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        out[i] = np.asarray(x)
    return out


def npz(d: Path, members: dict[str, bytes], name: str = "data.npz") -> Path:
    p = d / name
    with zipfile.ZipFile(p, "w") as zf:
        for k, v in members.items():
            zf.writestr(k + ".npy", v)
    return p


def npz_good_members() -> dict[str, bytes]:
    return {"arrival_times": npy_bytes(obj_array([[0.5, 1.0], [0.2, 0.3, 2.0], [1.0]])),
            "marks": npy_bytes(obj_array([[0, 1], [1, 1, 0], [0]]))}


def npz_lying_header(d: Path) -> Path:
    """An ``.npz`` whose plain float64 array header claims 10**12 elements but holds 3."""
    raw = npy_bytes(np.array([0.5, 1.0, 2.0]))
    raw = raw.replace(b"(3,)", b"(1000000000000,)".ljust(4, b" "), 1)
    # keep the header block length a multiple of 64 (numpy checks the 16-byte alignment padding only loosely)
    return npz(d, {"arrival_times": raw})


def torch_zip(d: Path, obj: Any, name: str = "data.pt", corrupt: bool = False) -> Path:
    """A ``torch.save``-like zip: ``archive/data.pkl`` holding ``obj`` (plain Python)."""
    p = d / name
    payload = pickle.dumps(obj, protocol=2)
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")
    if corrupt:  # flip bytes inside the compressed member: the CRC / inflate fails on read
        raw = bytearray(p.read_bytes())
        start = raw.index(b"archive/data.pkl") + len("archive/data.pkl")
        for j in range(start + 4, start + 24):
            raw[j] ^= 0x5A
        p.write_bytes(bytes(raw))
    return p


def torch_seq(n: int = 2, marks: bool = True, **extra: Any) -> dict:
    rec = {"t_start": 0.0, "t_end": float(n + 1), "arrival_times": [float(i + 1) for i in range(n)]}
    if marks:
        rec["marks"] = [i % 2 for i in range(n)]
    rec.update(extra)
    return rec


def rmtpp(d: Path, times: str | bytes, events: str | bytes) -> Path:
    for name, text in (("time.txt", times), ("event.txt", events)):
        (d / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return d


def csv(d: Path, text: str, name: str = "t.csv") -> Path:
    p = d / name
    p.write_text(text)
    return p


def parquet(d: Path, columns: dict[str, list], name: str = "t.parquet") -> Path:
    import pandas as pd

    p = d / name
    pd.DataFrame(columns).to_parquet(p)
    return p


def split_folder(d: Path, marks: Any = 2, parts: dict[str, list] | None = None) -> Path:
    """A Bosser split folder ``d/sf/split_0/{train,val,test}.json`` with ``args.json`` ``marks``."""
    root = d / "sf"
    s = root / "split_0"
    s.mkdir(parents=True)
    parts = parts or {"train": [GOOD, ev((0.1, 1))], "val": [GOOD], "test": [ev((2.0, 0))]}
    for k, v in parts.items():
        (s / f"{k}.json").write_text(json.dumps(v))
    (s / "args.json").write_text(json.dumps({"marks": marks}))
    return root


def split_folder_with(d: Path, entry: str) -> Path:
    """A split folder with a broken symlink or a FIFO named ``train.json``'s sibling ``cal.json``."""
    root = split_folder(d)
    target = root / "split_0" / "cal.json"
    if entry == "symlink":
        os.symlink(d / "gone.json", target)
    else:
        os.mkfifo(target)
    return root
