"""Catalog names, data-directory resolution, split handling and auto-preparation."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from mtpp.data.catalog import (CATALOG, Dataset, cache_dir, load_dataset, resolve_data_dir, time_unit_of,
                                time_unit_text)
from mtpp.data.formats import write_split_folder
from mtpp.data.sequence import make_sequence
from mtpp.errors import DataError

REQUIRED = ("mooc", "lastfm", "reddit", "stack_overflow", "github", "wikipedia", "retweet", "mimic2", "taxi",
            "taobao", "stackoverflow_easytpp", "amazon", "earthquake", "synthetic_hawkes")


def _seqs(n: int, k: int = 3) -> list:
    return [make_sequence([0.5 + i, 1.0 + i, 2.0 + i], [i % k, (i + 1) % k, 0]) for i in range(n)]


def test_required_names_have_entries() -> None:
    for name in REQUIRED:
        e = CATALOG[name]
        assert e.description and e.source and e.format
        assert e.generated or e.candidates
    assert "no copy" in CATALOG["github"].description.lower()


def test_data_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MTPP_DATA_DIR", raising=False)
    assert resolve_data_dir() == Path("data")
    monkeypatch.setenv("MTPP_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir(tmp_path / "x") == tmp_path / "x"


def test_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTPP_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path


def test_prepared_split_folder_by_name(tmp_path: Path) -> None:
    seqs = _seqs(10)
    write_split_folder(tmp_path / "mooc", [{"train": seqs[:6], "val": seqs[6:8], "test": seqs[8:]}] * 2,
                       num_marks=3)
    ds = load_dataset("mooc", split=1, data_dir=tmp_path)
    assert isinstance(ds, Dataset)
    assert (len(ds.train), len(ds.val), len(ds.test), ds.num_marks, ds.name) == (6, 2, 2, 3, "mooc")
    assert ds.split == 1 and ds.source == str(tmp_path / "mooc")
    with pytest.raises(DataError, match="split 7 does not exist"):
        load_dataset("mooc", split=7, data_dir=tmp_path)


def test_train_dev_test_maps_dev_to_val(tmp_path: Path) -> None:
    d = tmp_path / "easytpp_taxi"
    d.mkdir()
    for part, n in (("train", 5), ("dev", 2), ("test", 3)):
        recs = [{"dim_process": 3, "time_since_start": s.times.tolist(), "type_event": s.marks.tolist()}
                for s in _seqs(n)]
        (d / f"{part}.json").write_text(json.dumps(recs))
    ds = load_dataset("taxi", data_dir=tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (5, 2, 3)
    with pytest.raises(DataError, match="one fixed train/val/test split"):
        load_dataset("taxi", split=1, data_dir=tmp_path)


def test_auto_prepare_single_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "data" / "ifltpp_wikipedia"
    d.mkdir(parents=True)
    import numpy as np

    seqs = _seqs(20)
    times = np.empty(20, dtype=object)
    marks = np.empty(20, dtype=object)
    for i, s in enumerate(seqs):
        times[i], marks[i] = s.times.tolist(), s.marks.tolist()
    np.savez(d / "wikipedia.npz", arrival_times=times, marks=marks)
    with caplog.at_level(logging.WARNING, logger="mtpp.data.catalog"):
        ds = load_dataset("wikipedia", split=2, data_dir=tmp_path / "data")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 4, 4)
    assert any("auto-prepared" in n for n in ds.notes)
    assert sum("auto-prepared" in r.getMessage() for r in caplog.records) == 1
    assert Path(ds.source).parent == cache_dir() / "prepared"
    keys = {s.key() for s in ds.train + ds.val + ds.test}
    assert keys == {s.key() for s in seqs}
    again = load_dataset("wikipedia", split=2, data_dir=tmp_path / "data")  # cache hit, same split
    assert [s.key() for s in again.test] == [s.key() for s in ds.test]


def test_path_instead_of_name(tmp_path: Path) -> None:
    seqs = _seqs(5)
    write_split_folder(tmp_path / "mine", [{"train": seqs[:3], "val": seqs[3:4], "test": seqs[4:]}], num_marks=3)
    ds = load_dataset(str(tmp_path / "mine"))
    assert ds.name == "mine" and len(ds.train) == 3


def test_unknown_name_lists_known() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'nope'.*mooc.*synthetic_hawkes"):
        load_dataset("nope")


def test_missing_data_dir_says_where(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data directory .*does-not-exist.* does not exist"):
        load_dataset("mooc", data_dir=tmp_path / "does-not-exist")


def test_github_not_staged(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"'github' not found.*No copy of this data is staged"):
        load_dataset("github", data_dir=tmp_path)


def test_synthetic_hawkes() -> None:
    pytest.importorskip("mtpp.data.synthetic")
    ds = load_dataset("synthetic_hawkes")
    assert ds.num_marks >= 1 and len(ds.train) > len(ds.test) > 0
    assert ds.time_unit is None  # simulated in no physical unit


def test_time_units_follow_the_sources_and_are_named_only_where_documented(tmp_path: Path) -> None:
    # the units the catalog's own descriptions (and the data MANIFEST) state, and nothing more
    assert {k: e.time_unit for k, e in CATALOG.items() if e.time_unit} == {
        "wikipedia": "second", "retweet": "second", "taxi": "hour", "yelp_toronto": "second",
        "mooc_gntpp": "second", "stack_overflow_gntpp": "second", "stack_overflow_rmtpp": "second",
        "twitter": "second", "ali": "day", "lastfm_rmtpp": "day"}
    for name, entry in CATALOG.items():
        if entry.time_unit:  # every named unit is also said in words in the description
            assert entry.time_unit in entry.description.lower() or "unix" in entry.description.lower(), name
    # rescaled to (0, 10] by their preprocessing: the original unit is not recorded
    assert all(time_unit_of(n) is None for n in ("mooc", "lastfm", "reddit", "stack_overflow", "synthetic_hawkes"))
    # a path to a staged folder is that dataset; anything else (a user's file) has no recorded unit
    assert time_unit_of("/somewhere/easytpp_taxi") == time_unit_of("/somewhere/easytpp_taxi/") == "hour"
    assert time_unit_of(tmp_path / "events.csv") is None and time_unit_of(None) is None
    assert (time_unit_text("hour"), time_unit_text("hour", per=True)) == ("hours", "hour")
    assert (time_unit_text(None), time_unit_text(None, per=True)) == ("data units", "time unit")
    seqs = _seqs(10)
    write_split_folder(tmp_path / "mine", [{"train": seqs[:6], "val": seqs[6:8], "test": seqs[8:]}], num_marks=3)
    assert load_dataset(tmp_path / "mine").time_unit is None
    write_split_folder(tmp_path / "taxi", [{"train": seqs[:6], "val": seqs[6:8], "test": seqs[8:]}], num_marks=3)
    assert load_dataset("taxi", data_dir=tmp_path).time_unit == "hour"  # the catalog's name: its documented unit


@pytest.mark.data
def test_real_lastfm_auto_prepared(data_dir: Path) -> None:
    ds = load_dataset("lastfm", split=4, data_dir=data_dir)  # partial source: union of cal/val/test, re-split
    assert (len(ds.train), len(ds.val), len(ds.test)) == (462, 154, 154) and ds.num_marks == 50
    assert sum(len(s) for s in ds.train + ds.val + ds.test) == 177349
    assert any("auto-prepared" in n for n in ds.notes)


@pytest.mark.data
def test_real_fixed_split_taxi_and_mimic2(data_dir: Path) -> None:
    ds = load_dataset("taxi", data_dir=data_dir)
    assert (len(ds.train), len(ds.val), len(ds.test), ds.num_marks) == (1400, 200, 400, 10)
    assert ds.time_unit == "hour"
    ds = load_dataset("mimic2", data_dir=data_dir)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 644 and ds.num_marks == 75  # 650 minus 6 duplicates
    # they are repeats inside time.txt (MIMIC-II admissions with the same events), and every load says so
    assert any("6 sequence(s) repeated within one file were removed" in n for n in ds.notes), ds.notes


@pytest.mark.parametrize("fname", [".events.json", "..json", ".hidden.data.json", "a b;c.json"])
def test_auto_prepared_dot_file_goes_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    fname: str) -> None:
    src = tmp_path / "in"
    src.mkdir()
    p = src / fname
    p.write_text(json.dumps([[{"time": 0.5 + i, "labels": [i % 2]}] for i in range(20)]))
    cache = tmp_path / "cache"
    monkeypatch.setenv("MTPP_CACHE_DIR", str(cache))
    ds = load_dataset(p)
    assert sorted(x.name for x in src.iterdir()) == [fname]  # nothing written beside the input
    assert Path(ds.source).parent == cache / "prepared"
    assert not Path(ds.source).name.startswith(".") and "/" not in ds.name and ds.name not in (".", "..")


@pytest.mark.parametrize("name, safe", [("..", "data"), (".events", "events"), ("a/b", "a_b"), ("", "data"),
                                        ("mooc", "mooc"), ("x" * 100, "x" * 64), ("../../etc", "_.._etc")])
def test_safe_name(name: str, safe: str) -> None:
    from mtpp.data.catalog import safe_name

    assert safe_name(name) == safe


def test_empty_validation_part_is_refused(tmp_path: Path) -> None:
    """A split whose val part holds no sequence would train to 'best epoch 1' silently (issue 11): refused."""
    splits = [{"train": _seqs(4), "val": [], "test": _seqs(2)}]
    out = write_split_folder(tmp_path / "ds", splits, num_marks=3)
    with pytest.raises(DataError, match=r"ds: the split_0/val part is empty"):
        load_dataset(out)


def test_prepared_cache_key_follows_contents_not_mtimes(tmp_path: Path) -> None:
    """A re-mounted or touched data folder keeps its prepared splits; a changed byte makes new ones."""
    import os

    from mtpp.data.splits import source_fingerprint

    d = tmp_path / "src"
    d.mkdir()
    (d / "a.csv").write_text("seq_id,time,mark\n0,1.0,0\n")
    (d / "b.csv").write_text("seq_id,time,mark\n1,2.0,1\n")
    key = source_fingerprint(d, 0, 5)
    os.utime(d / "a.csv", ns=(1, 1))  # touched: same bytes
    assert source_fingerprint(d, 0, 5) == key
    (d / "b.csv").write_text("seq_id,time,mark\n1,2.5,1\n")  # same size, other bytes
    assert source_fingerprint(d, 0, 5) != key
    assert source_fingerprint(d, 0, 5) != source_fingerprint(d, 1, 5)  # the preparation's settings count too


def test_one_rule_says_when_loading_re_splits() -> None:
    """``catalog.resplits``: the rule ``load_dataset`` follows and ``mtpp data describe`` reports."""
    from mtpp.data.catalog import CATALOG, resplits

    assert not resplits(None, ["train", "val", "test"]) and resplits(None, ["val", "test"])
    assert not resplits(None, ["split_0/train", "split_0/val"]) and resplits(None, ["split_0/val", "split_0/test"])
    always = next(e for e in CATALOG.values() if e.resplit)
    assert resplits(always, ["train", "val", "test"])


def _race_on_first_write(monkeypatch: pytest.MonkeyPatch, other_writer) -> None:
    """Make the first ``write_bosser_json`` of a split-folder write call ``other_writer()`` first: another process
    (a second grid worker) filling the destination after this one checked it was free, before it renames."""
    import mtpp.data.formats as formats

    real = formats.write_bosser_json
    state = {"raced": False}

    def racing(path, seqs):
        if not state["raced"]:
            state["raced"] = True
            other_writer()
        return real(path, seqs)

    monkeypatch.setattr(formats, "write_bosser_json", racing)


def test_split_folder_filled_meanwhile_is_kept_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "prepared"
    seqs = _seqs(5)

    def other() -> None:
        out.mkdir()
        (out / "args.json").write_text('{"marks": 3, "by": "other"}\n')

    _race_on_first_write(monkeypatch, other)
    with pytest.raises(DataError, match=r"prepared.*not empty \(written by another process meanwhile\)"):
        write_split_folder(out, [{"train": seqs[:3], "val": seqs[3:4], "test": seqs[4:]}], num_marks=3)
    assert json.loads((out / "args.json").read_text())["by"] == "other"  # theirs, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # our temporary folder is gone


def test_two_workers_auto_preparing_at_once_share_one_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ``mtpp compare`` workers started together on a fresh machine both auto-prepare the same source: the
    one that loses the race at the rename uses the winner's folder (identical: same source, same seed)."""
    import numpy as np

    monkeypatch.setenv("MTPP_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "data" / "ifltpp_wikipedia"
    d.mkdir(parents=True)
    seqs = _seqs(20)
    times, marks = np.empty(20, dtype=object), np.empty(20, dtype=object)
    for i, s in enumerate(seqs):
        times[i], marks[i] = s.times.tolist(), s.marks.tolist()
    np.savez(d / "wikipedia.npz", arrival_times=times, marks=marks)
    winner = {}

    def other() -> None:  # the winner prepares the whole folder (without racing: the flag is already set)
        winner["ds"] = load_dataset("wikipedia", split=1, data_dir=tmp_path / "data")

    _race_on_first_write(monkeypatch, other)
    ds = load_dataset("wikipedia", split=1, data_dir=tmp_path / "data")
    assert ds.source == winner["ds"].source
    assert [s.key() for s in ds.test] == [s.key() for s in winner["ds"].test]
    assert [p.name for p in (tmp_path / "cache" / "prepared").iterdir()] == [Path(ds.source).name]


@pytest.mark.data
def test_real_book_order_reads_one_fold_and_no_chunk_shares_events(data_dir: Path) -> None:
    """The five RMTPP book-order folds cut one stream at other points: the catalog reads fold 1 (200 chunks,
    414,800 events), whose chunks share no stretch of events (the prepare step would refuse them otherwise)."""
    from mtpp.data.splits import overlapping_sequences

    ds = load_dataset("book_order", split=0, data_dir=data_dir)
    seqs = ds.train + ds.val + ds.test
    assert len(seqs) == 200 and sum(len(s) for s in seqs) == 414800
    assert any("read fold 1 only" in n for n in ds.notes), ds.notes
    assert overlapping_sequences(seqs) == []


def test_an_old_cached_split_folder_of_a_table_is_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Folders auto-prepared from a table before its ``seq_id`` names were kept hold no ``seq_ids``: reusing one
    gave a run without the user's names (``predict`` lost its ``seq_id`` column). A table's cache key now marks the
    names, so such a folder is prepared again; the keys of other sources (the benchmark sets) are as before."""
    from mtpp.data import catalog
    from mtpp.data.formats import ReadOptions, read_any
    from mtpp.data.splits import prepare_sequences, source_fingerprint

    monkeypatch.setenv("MTPP_CACHE_DIR", str(tmp_path / "cache"))
    rows = ["seq_id,time,mark"] + [f"user_{i},{t + 0.1 * i},{(t + i) % 3}" for i in range(10) for t in range(1, 5)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")

    def old_key(path: Path) -> str:
        items = sorted((k, v) for k, v in ReadOptions().__dict__.items()
                       if not (k in catalog._LATER_OPTIONS and v is None))  # fmt: skip
        return source_fingerprint(path, catalog.AUTO_SEED, catalog.AUTO_SPLITS, catalog.AUTO_RATIOS, items,
                                  catalog.PREPARE_VERSION)  # fmt: skip

    stale = read_any(tmp_path / "t.csv")
    stale.parts = {k: [replace(s, name=None) for s in v] for k, v in stale.parts.items()}  # as prepared before
    old = tmp_path / "cache" / "prepared" / f"t-{old_key(tmp_path / 't.csv')}"
    prepare_sequences(stale, old, seed=catalog.AUTO_SEED, num_splits=catalog.AUTO_SPLITS, ratios=catalog.AUTO_RATIOS)
    ds = load_dataset(tmp_path / "t.csv")
    assert Path(ds.source) != old and all(s.name.startswith("user_") for s in ds.train + ds.val + ds.test)
    # a source without names keeps its key: its folder prepared before is reused
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "b.json").write_text(json.dumps([[{"time": 0.5 + i + j, "labels": [j % 2]} for j in range(3)]
                                                       for i in range(20)]))  # fmt: skip
    assert Path(load_dataset(tmp_path / "b" / "b.json").source).name == f"b-{old_key(tmp_path / 'b' / 'b.json')}"


def test_a_name_never_falls_back_to_another_variant(tmp_path: Path) -> None:
    """``amazon`` used to fall back to ``cdiff_amazon`` (800 sequences, another Amazon variant) when
    ``easytpp_amazon`` was absent, under its description of 2,773 sequences; ``taobao_lgnjsde`` to
    ``cdiff_taobao`` (its sequences in other parts). Each variant now has a name of its own, and no folder is
    tried under two names."""
    import pickle

    folder = tmp_path / "cdiff_amazon"
    folder.mkdir()
    for part, first in (("dev", 0), ("test", 3)):
        seqs = [[{"time_since_start": (1.0 + i) * (j + 1), "time_since_last_event": 1.0 + i, "type_event": j % 2}
                 for j in range(3)] for i in range(first, first + 3 + first // 3)]
        (folder / f"{part}.pkl").write_bytes(pickle.dumps({"dim_process": 2, part: seqs}))
    with pytest.raises(DataError, match="'amazon' not found"):
        load_dataset("amazon", data_dir=tmp_path)
    ds = load_dataset("amazon_cdiff", data_dir=tmp_path)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 7 and ds.source != str(folder)  # re-split: no train
    folders = [c for e in CATALOG.values() for c in e.candidates]
    assert len(folders) == len(set(folders)), sorted(c for c in folders if folders.count(c) > 1)


@pytest.mark.data
def test_real_folders_of_one_name_hold_the_same_data(data_dir: Path) -> None:
    """Every staged folder a name can read holds the same sequences in the same parts (``taxi``: ``easytpp_taxi``
    and ``lgnjsde_taxi``), so which one is found changes nothing."""
    from mtpp.data.formats import read_any

    def content(path: Path) -> dict:
        res = read_any(path)
        return {part: sorted((s.times.tobytes(), s.marks.tobytes()) for s in seqs) for part, seqs in res.parts.items()}

    compared = 0
    for name, entry in CATALOG.items():
        staged = [data_dir / c for c in entry.candidates if (data_dir / c).is_dir()]
        for other in staged[1:]:
            assert content(other) == content(staged[0]), (name, staged[0], other)
            compared += 1
    assert compared >= 1  # lgnjsde_taxi against easytpp_taxi
