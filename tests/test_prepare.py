"""``prepare`` / ``mtpp data prepare``: deterministic, disjoint and covering splits, duplicates counted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mtpp.cli import main
from mtpp.data.formats import ReadOptions, read_any, write_bosser_json
from mtpp.data.sequence import make_sequence
from mtpp.data.splits import deduplicate, deduplicate_parts, make_splits, prepare, split_indices, split_sizes
from mtpp.errors import ConfigError, DataError


def _seqs(n: int, offset: int = 0) -> list:
    rng = np.random.default_rng(offset)
    return [make_sequence(np.sort(rng.uniform(0, 10, 1 + i % 7)), rng.integers(0, 4, 1 + i % 7))
            for i in range(n)]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def inputs(tmp_path: Path) -> list[Path]:
    a, b = _seqs(30), _seqs(30, offset=1)
    write_bosser_json(tmp_path / "a.json", a + a[:5])  # 5 duplicates inside a file
    write_bosser_json(tmp_path / "b.json", b + a[5:10])  # 5 more across files
    return [tmp_path / "a.json", tmp_path / "b.json"]


def test_split_sizes_and_indices() -> None:
    assert split_sizes(10) == (6, 2, 2)
    assert split_sizes(6234) == (3740, 1247, 1247)
    idx = split_indices(100, seed=3, k=1)
    allidx = np.concatenate(list(idx.values()))
    assert sorted(allidx.tolist()) == list(range(100))
    assert not np.array_equal(split_indices(100, 3, 0)["test"], idx["test"])
    with pytest.raises(ConfigError):
        split_sizes(10, (0.5, 0.2, 0.2))


def test_deduplicate_keeps_first() -> None:
    s = _seqs(4)
    unique, n = deduplicate([s[0], s[1], s[0], s[2], s[1]])
    assert n == 2 and [u.key() for u in unique] == [s[0].key(), s[1].key(), s[2].key()]


def test_prepare_deterministic_disjoint_covering(tmp_path: Path, inputs: list[Path]) -> None:
    r1 = prepare(inputs, tmp_path / "o1", seed=7, num_splits=3)
    r2 = prepare(inputs, tmp_path / "o2", seed=7, num_splits=3)
    assert _digest(tmp_path / "o1") == _digest(tmp_path / "o2")  # same bytes twice
    assert r1.num_read == 70 and r1.duplicates == 10 and r1.num_sequences == 60
    assert r1.split_sizes == [36, 12, 12] and r2.num_events == r1.num_events
    unique = {s.key() for s in deduplicate(read_any(inputs[0]).sequences + read_any(inputs[1]).sequences)[0]}
    res = read_any(tmp_path / "o1")
    tests = []
    for k in range(3):
        parts = [{s.key() for s in res.parts[f"split_{k}/{p}"]} for p in ("train", "val", "test")]
        assert sum(map(len, parts)) == 60 and set().union(*parts) == unique  # disjoint and covering
        tests.append(parts[2])
    assert tests[0] != tests[1]  # different partitions
    args = json.loads((tmp_path / "o1" / "args.json").read_text())
    assert args["duplicates"] == 10 and args["seed"] == 7 and args["num_sequences"] == 60
    assert args["dropped"] == {} and len(args["files"]) == 2
    # honest about where the copies were, and every removed one named with the sequence it copies
    assert r1.duplicates_within_file == 5 and args["duplicates_within_file"] == 5
    rows = [line.split("\t") for line in (tmp_path / "o1" / "duplicates.tsv").read_text().splitlines()]
    a, b = str(inputs[0]), str(inputs[1])
    assert rows[0] == ["removed", "copy_of"] and len(rows) == 11
    assert rows[1:6] == [[f"{a}: sequence {30 + i}", f"{a}: sequence {i}"] for i in range(5)]
    assert rows[6:] == [[f"{b}: sequence {30 + i}", f"{a}: sequence {5 + i}"] for i in range(5)]
    line = next(x for x in r1.lines() if x.startswith("removed"))
    assert "5 found in several files or parts" in line and "5 repeated within one file" in line
    prepare(inputs, tmp_path / "o3", seed=8, num_splits=1)
    assert _digest(tmp_path / "o3")["split_0/test.json"] != _digest(tmp_path / "o1")["split_0/test.json"]


def test_make_splits_order_within_parts() -> None:
    seqs = _seqs(20)
    (parts,) = make_splits(seqs, num_splits=1, seed=0)
    pos = {s.key(): i for i, s in enumerate(seqs)}
    for p in parts.values():
        assert [pos[s.key()] for s in p] == sorted(pos[s.key()] for s in p)


def test_drop_invalid_counts_per_reason(tmp_path: Path) -> None:
    data = [[{"time": 1.0, "labels": [0]}], [{"time": 2.0, "labels": [0]}, {"time": 1.0, "labels": [1]}], [],
            [{"time": -1.0, "labels": [0]}]] + [[{"time": float(i + 1), "labels": [1]}] for i in range(6)]
    p = tmp_path / "x.json"
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match="sequence 1: times not sorted"):
        prepare([p], tmp_path / "o")
    from mtpp.data.formats import ReadOptions

    rep = prepare([p], tmp_path / "o", options=ReadOptions(drop_invalid=True), num_splits=1)
    assert rep.dropped == {"unsorted times": 1, "empty sequence": 1, "negative time": 1}
    assert rep.num_sequences == 7
    # "read" counts every sequence of the input, so read - duplicates - dropped = kept
    assert rep.num_read == 10 and rep.num_read - rep.duplicates - sum(rep.dropped.values()) == rep.num_sequences
    assert rep.lines()[0].startswith("read 10 sequences")


def test_copies_within_one_file_can_be_kept_while_copies_across_files_are_not(tmp_path: Path) -> None:
    """Distinct entities with identical events (short MIMIC-II admissions) repeat inside one file; the val / test
    files of several published splits repeat sequences across files. ``keep_within_file_duplicates`` keeps the
    former: each sequence as often as in the file that repeats it most."""
    s = _seqs(8)
    parts = {"a": [s[0], s[0], s[1], s[2]], "b": [s[0], s[0], s[0], s[1], s[3]]}
    unique, found = deduplicate_parts(parts)
    assert [u.key() for u in unique] == [x.key() for x in (s[0], s[1], s[2], s[3])]
    assert (found.across_parts, found.within_part) == (2, 3)
    unique, found = deduplicate_parts(parts, keep_within_part=True)
    counts = [sum(u.key() == x.key() for u in unique) for x in s[:4]]
    assert counts == [3, 1, 1, 1] and (found.across_parts, found.within_part) == (3, 0)
    assert found.pairs[0] == ("b: sequence 0", "a: sequence 0") and found.pairs[1] == ("b: sequence 1", "a: sequence 1")
    write_bosser_json(tmp_path / "a.json", parts["a"])
    write_bosser_json(tmp_path / "b.json", parts["b"])
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    assert prepare(files, tmp_path / "o1", num_splits=1, ratios=(0.5, 0.25, 0.25)).num_sequences == 4
    rep = prepare(files, tmp_path / "o2", num_splits=1, ratios=(0.5, 0.25, 0.25), keep_within_file_duplicates=True)
    assert rep.num_sequences == 6 and rep.duplicates == 3 and rep.duplicates_within_file == 0
    assert json.loads((tmp_path / "o2" / "args.json").read_text())["keep_within_file_duplicates"] is True
    assert read_any(tmp_path / "o2").num_sequences == 6 and not read_any(tmp_path / "o2").notes  # the list is no data


def test_one_part_merging_two_files_counts_their_shared_sequence_as_found_in_several_files(tmp_path: Path) -> None:
    """dev.json and valid.json are one part (val) of a folder; a sequence in both is a copy across files, which
    --keep-within-file-duplicates does not keep, and the report says so."""
    s = _seqs(9)
    (tmp_path / "d").mkdir()
    write_bosser_json(tmp_path / "d" / "train.json", s[:5])
    write_bosser_json(tmp_path / "d" / "dev.json", [s[5], s[6]])
    write_bosser_json(tmp_path / "d" / "valid.json", [s[5], s[7]])
    write_bosser_json(tmp_path / "d" / "test.json", [s[8]])
    res = read_any(tmp_path / "d")
    _, found = deduplicate_parts(res.parts)
    assert (found.across_parts, found.within_part) == (1, 0)
    assert found.pairs[0][0].endswith("valid.json: sequence 0") and found.pairs[0][1].endswith("dev.json: sequence 0")
    unique, _ = deduplicate_parts(res.parts, keep_within_part=True)
    assert len(unique) == 9  # 10 read, the copy in valid.json removed even so


def test_repeats_within_a_file_are_called_copies_when_the_files_also_share_sequences(tmp_path: Path) -> None:
    """Concatenated folds (the THP copy of MIMIC-II) repeat sequences inside a file AND share them across files:
    keeping the repeats would put one sequence in train and test, so the report does not suggest it."""
    s = _seqs(6)
    write_bosser_json(tmp_path / "a.json", s + s)  # the same sequences twice: a file of concatenated folds
    distinct = prepare([tmp_path / "a.json"], tmp_path / "o1", num_splits=1)
    assert "--keep-within-file-duplicates keeps" in " ".join(distinct.lines())  # may be distinct entities
    write_bosser_json(tmp_path / "b.json", s[:2])
    shared = prepare([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "o2", num_splits=1)
    text = " ".join(shared.lines()) + shared.duplicates_phrase()
    assert "--keep-within-file-duplicates" not in text and "likely copies too" in text
    notes = json.loads((tmp_path / "o2" / "args.json").read_text())["notes"]
    assert any("likely copies too" in n for n in notes)


@pytest.mark.parametrize("second", ["same", "respelt", "symlink", "file_in_folder"])
def test_one_file_given_through_two_inputs_is_refused(tmp_path: Path, second: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    """``prepare a.json a.json`` called every sequence a copy "repeated within one file" (advising
    --keep-within-file-duplicates), and with that flag kept each sequence twice: the same events in train and
    test. Any file reached through two inputs is now one line naming both, before anything is written."""
    (tmp_path / "d").mkdir()
    a = tmp_path / "d" / "train.json"
    write_bosser_json(a, _seqs(20))
    write_bosser_json(tmp_path / "d" / "test.json", _seqs(10, offset=1))
    first, other = {"same": (a, a), "respelt": (a, tmp_path / "d" / ".." / "d" / "train.json"),
                    "symlink": (a, tmp_path / "link.json"), "file_in_folder": (tmp_path / "d", a)}[second]
    if second == "symlink":
        (tmp_path / "link.json").symlink_to(a)
    for keep in ([], ["--keep-within-file-duplicates"]):
        code = main(["data", "prepare", str(first), str(other), "--out", str(tmp_path / "out"), *keep])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert f"inputs {str(first)!r} and {str(other)!r} both hold {a.resolve()}" in err[0], err
        assert not (tmp_path / "out").exists()


def test_cli_prepare(tmp_path: Path, inputs: list[Path], capsys: pytest.CaptureFixture) -> None:
    code = main(["data", "prepare", *map(str, inputs), "--out", str(tmp_path / "cli"), "--seed", "1",
                 "--splits", "2", "--ratios", "0.5", "0.25", "0.25"])
    out = capsys.readouterr().out
    assert code == 0
    assert "removed 10 duplicate" in out and "kept 60 sequences" in out and "train 30 / val 15 / test 15" in out
    assert "5 repeated within one file (the files also share sequences, so the repeats are likely copies too" in out
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["args.json", "duplicates.tsv", "split_0", "split_1"]
    assert main(["data", "prepare", *map(str, inputs), "--out", str(tmp_path / "keep"), "--splits", "1",
                 "--keep-within-file-duplicates"]) == 0
    assert "kept 65 sequences" in capsys.readouterr().out
    # describe on the result, text and JSON
    assert main(["data", "describe", str(tmp_path / "cli"), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["total"]["sequences"] == 60 and st["duplicates"] == 60 and st["duplicates_within_file"] == 0
    ex = st["duplicate_examples"]  # every sequence of split_1 is a copy of one in split_0
    assert len(ex) == 10 and all(e["removed"].startswith(str(tmp_path / "cli" / "split_1")) for e in ex)
    assert all(e["copy_of"].startswith(str(tmp_path / "cli" / "split_0")) and ": sequence " in e["copy_of"] for e in ex)
    assert main(["data", "describe", str(tmp_path / "cli")]) == 0
    assert "most frequent marks" in capsys.readouterr().out


def test_cli_list(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "easytpp_taxi").mkdir()
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "taxi" in out and "found" in out and "missing" in out and "synthetic_hawkes" in out
    assert "(re-split)" not in out
    # a Bosser-style copy without train files: found, and the list says it will be re-split on use
    (tmp_path / "conftpp_mooc_filtered" / "split_0").mkdir(parents=True)
    (tmp_path / "conftpp_mooc_filtered" / "split_0" / "test.json").write_text("[]")
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("mooc "))
    assert "found (re-split)" in line and "its first use prepares seeded 60/20/20 splits" in out
    # a copy of files named after parts that lacks one (EasyTPP's Retweets: valid + test) is re-split on use too;
    # a complete one, and a pickle not named after a part (its parts are its keys), are plain "found"
    for folder, files in (("easytpp_retweet", ["valid.json.gz", "test.json.gz"]),
                          ("easytpp_taobao", ["train.json", "valid.json", "test.json"]),
                          ("lgnjsde_taobao", ["all.pkl"])):  # fmt: skip
        (tmp_path / folder).mkdir()
        for f in files:
            (tmp_path / folder / f).write_bytes(b"[]" if ".json" in f else b"\x80\x04N.")
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln and not ln.startswith("-")}
    assert "found (re-split)" in rows["retweet"]
    assert "found " in rows["taobao"] + " " and "re-split" not in rows["taobao"]
    assert "re-split" not in rows["taobao_lgnjsde"] and "found" in rows["taobao_lgnjsde"]


def test_cli_list_names_the_folders_no_name_reads(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A staged copy without a catalog name (the MANIFEST's ``rmtpp_yelp``) and a second copy behind its name's
    first folder (``lgnjsde_taxi`` behind ``easytpp_taxi``) were not in ``data list`` at all: a user could not
    tell they were there, nor how to read them. The list now names them; hidden folders and files are left out."""
    from mtpp.data.catalog import unread_folders

    for folder in ("easytpp_taxi", "lgnjsde_taxi", "rmtpp_yelp", "my_prepared", ".git"):
        (tmp_path / folder).mkdir()
    (tmp_path / "MANIFEST.md").write_text("notes")
    assert unread_folders(tmp_path) == (["my_prepared", "rmtpp_yelp"], {"lgnjsde_taxi": "taxi"})
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (f"other folders in {tmp_path}, read by no name (describe or train them by folder name or path): "
            "my_prepared, rmtpp_yelp") in out
    assert "second copies, read only where their name's first folder is missing: lgnjsde_taxi (taxi)" in out
    (tmp_path / "easytpp_taxi").rmdir()  # now lgnjsde_taxi is what taxi reads
    assert unread_folders(tmp_path) == (["my_prepared", "rmtpp_yelp"], {})
    assert unread_folders(tmp_path / "absent") == ([], {})


@pytest.mark.data
def test_real_cli_list_names_every_staged_folder(data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """Every folder of the staged data is a found name's folder or named by ``data list`` as read by no name /
    a second copy."""
    from mtpp.data.catalog import CATALOG, find_dataset, unread_folders

    read = {find_dataset(n, data_dir).name for n, e in CATALOG.items() if not e.generated and find_dataset(n, data_dir)}
    unnamed, second = unread_folders(data_dir)
    folders = {p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert read | set(unnamed) | set(second) == folders and not read & (set(unnamed) | set(second))
    assert main(["data", "list", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert all(f in out for f in folders)


def test_cli_list_says_re_split_exactly_when_describe_and_training_do_for_rmtpp_folders(tmp_path: Path,
                                                                                      capsys) -> None:
    """The RMTPP copies (folds of train / test, a full time.txt, topic files) were listed as plain "found", while
    ``describe`` said ``resplit_on_use`` and training warned it auto-prepared them. The list now judges an RMTPP
    folder from its pairs' names like the other formats, and agrees with ``describe`` on every case."""
    import json as _json

    def pair(folder: Path, stem: str) -> None:
        folder.mkdir(exist_ok=True)
        (folder / f"time{stem}.txt").write_text("".join(f"{0.5 + i} {1.0 + i} {2.0 + i}\n" for i in range(3)))
        (folder / f"event{stem}.txt").write_text("1 2 1\n" * 3)

    cases = {"rmtpp_mimic2": ["", "-1-train", "-1-test"],  # full pair + folds: the full pair alone is read
             "rmtpp_book_order": ["-1-train", "-1-test", "-2-train", "-2-test"],  # folds: no val part
             "rmtpp_ali": ["-train", "-test"],
             "rmtpp_twitter": ["-bolly", "-movie"],  # topic files
             "rmtpp_stack_overflow": ["-train", "-dev", "-test"]}  # a full split: dev is the val part
    for folder, stems in cases.items():
        for stem in stems:
            pair(tmp_path / folder, stem)
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln and not ln.startswith("-")}
    names = {"rmtpp_mimic2": "mimic2", "rmtpp_book_order": "book_order", "rmtpp_ali": "ali",
             "rmtpp_twitter": "twitter", "rmtpp_stack_overflow": "stack_overflow_rmtpp"}
    for folder, name in names.items():
        assert main(["data", "describe", name, "--data-dir", str(tmp_path), "--json"]) == 0
        resplit = _json.loads(capsys.readouterr().out)["resplit_on_use"]
        assert ("found (re-split)" in rows[name]) == resplit, (name, rows[name])
        assert resplit == (folder != "rmtpp_stack_overflow"), name
    from mtpp.data.catalog import load_dataset

    ds = load_dataset("stack_overflow_rmtpp", data_dir=tmp_path)  # train / dev / test: read as the fixed split
    assert (len(ds.train), len(ds.val), len(ds.test)) == (3, 3, 3) and not any("auto-prepared" in n for n in ds.notes)


@pytest.fixture(scope="session")
def mooc_prepared(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """``mtpp data prepare conftpp_mooc_filtered`` once per session: (output folder, stdout, exit code)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("prepared") / "mooc"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["data", "prepare", str(data_dir / "conftpp_mooc_filtered"), "--out", str(out)])
    return out, buf.getvalue(), code


@pytest.mark.data
def test_real_prepare_mooc_prints_counts(mooc_prepared) -> None:
    _, out, code = mooc_prepared
    assert code == 0
    assert "read 12,335 sequences from 15 file(s)" in out
    assert "removed 6,101 duplicate" in out  # the 5 partial splits overlap: union = 6,234 distinct
    assert "6,234 sequences, 311,806 events, 50 marks" in out
    assert "wrote 5 split(s)" in out and "train 3,740 / val 1,247 / test 1,247" in out


@pytest.mark.data
def test_real_prepared_mooc_union_matches_manifest(mooc_prepared) -> None:
    folder, _, _ = mooc_prepared
    res = read_any(folder / "split_0")
    seqs = res.sequences
    assert res.num_marks == 50
    assert (len(seqs), sum(len(s) for s in seqs)) == (6234, 311806)
    assert len({int(k) for s in seqs for k in np.unique(s.marks)}) == 50
    assert len({s.key() for s in seqs}) == 6234
    args = json.loads((folder / "args.json").read_text())
    assert (args["num_sequences"], args["num_events"], args["duplicates"]) == (6234, 311806, 6101)


def test_too_few_sequences_for_the_ratios_is_an_error(tmp_path: Path) -> None:
    """Two sequences cannot fill 60/20/20: an empty validation part would score nothing (issue 11)."""
    p = tmp_path / "two.json"
    p.write_text(json.dumps([[{"time": 0.5, "labels": [0]}], [{"time": 1.5, "labels": [1]}]]))
    with pytest.raises(DataError, match=r"two.json: 2 distinct sequence\(s\) are too few .*val and test part"):
        prepare([p], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # a ratio of 0 empties a part by design: refused the same way (it wrote five unusable splits)
    for ratios in ((1.0, 0.0, 0.0), (0.8, 0.2, 0.0)):
        with pytest.raises(ConfigError, match=r"the val and test ratios must be > 0"):
            prepare([p], tmp_path / "out", ratios=ratios)
    assert not (tmp_path / "out").exists()


def _stream_folds(folder: Path, cuts: list[list[int]], rebase: bool = True) -> np.ndarray:
    """RMTPP folds that each cut ONE stream of 600 events into chunks at their own points (the book-order set),
    times re-based per chunk and printed with 12 significant digits, so copies agree only to rounding."""
    rng = np.random.default_rng(7)
    times = np.cumsum(rng.exponential(1.0, 600)) + 1e4
    marks = rng.integers(1, 3, 600)
    for k, fold in enumerate(cuts, start=1):
        for part, (lo, hi) in zip(("train", "test"), zip(fold[:-1], fold[1:])):
            chunks = [(times[a:b] - (times[a] if rebase else 0), marks[a:b]) for a, b in zip(range(lo, hi, 100),
                                                                                       range(lo + 100, hi + 1, 100))]
            (folder / f"time-{k}-{part}.txt").write_text("".join(" ".join(f"{t:.12g}" for t in c[0]) + "\n"
                                                                 for c in chunks))  # fmt: skip
            (folder / f"event-{k}-{part}.txt").write_text("".join(" ".join(map(str, c[1])) + "\n" for c in chunks))
    return times


def test_folds_that_cut_one_stream_are_refused_naming_both_sequences(tmp_path: Path, capsys) -> None:
    """Sequences sharing stretches of events without being copies (folds re-cutting one stream) would put the same
    events in train and test: one line naming two of them and both ways out; a fold alone prepares cleanly."""
    src = tmp_path / "book"
    src.mkdir()
    _stream_folds(src, [[0, 400, 600], [50, 450, 550]])  # fold 2's chunks straddle fold 1's
    with pytest.raises(DataError) as e:
        prepare([src], tmp_path / "all")
    msg = str(e.value)
    assert "share stretches of 32 consecutive gaps" in msg and "time-1-" in msg and "time-2-" in msg
    assert "--rmtpp-fold K" in msg and "--allow-overlapping-sequences" in msg and "\n" not in msg
    assert not (tmp_path / "all").exists()
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "one"), "--rmtpp-fold", "2"]) == 0
    out = capsys.readouterr().out
    assert "read fold 2 only (2 pair(s)); 2 other pair(s) not read" in out and "marks-only" not in out
    assert sum(len(s) for p in read_any(tmp_path / "one" / "split_0").parts.values() for s in p) == 500
    assert main(["data", "prepare", str(src), "--out", str(tmp_path / "kept"), "--allow-overlapping-sequences"]) == 0
    assert "share stretches of 32 gaps with another" in capsys.readouterr().out
    table = (tmp_path / "kept" / "overlaps.tsv").read_text().splitlines()
    assert table[0] == "sequence\tshares_events_with\tstretches" and len(table) > 1
    args = json.loads((tmp_path / "kept" / "args.json").read_text())
    assert args["allow_overlapping_sequences"] is True and any("overlaps.tsv" in n for n in args["notes"])
    with pytest.raises(DataError, match=r"no RMTPP fold 3 here \(folds: 1, 2\)"):
        prepare([src], tmp_path / "three", options=ReadOptions(rmtpp_fold=3))


def test_overlap_detection_has_no_false_positives_on_regular_or_short_sequences() -> None:
    """Distinct sequences on one clock (equal gaps), sequences equal in marks only, shorter than a stretch, or
    sharing fewer than 32 gaps are not overlaps; a shared stretch of 32 gaps is, re-based or not."""
    from mtpp.data.splits import OVERLAP_WINDOW, overlapping_sequences

    rng = np.random.default_rng(0)
    clock = [make_sequence(np.arange(100.0) + i, np.zeros(100, dtype=int)) for i in range(3)]  # one regular clock
    same_marks = [make_sequence(np.cumsum(rng.exponential(1, 80)), np.ones(80, dtype=int)) for _ in range(2)]
    base_t, base_m = np.cumsum(rng.exponential(1, 200)), rng.integers(0, 3, 200)
    short = [make_sequence(base_t[:OVERLAP_WINDOW], base_m[:OVERLAP_WINDOW]),
             make_sequence(base_t[:OVERLAP_WINDOW] + 5, base_m[:OVERLAP_WINDOW])]  # 31 gaps: below a stretch
    assert overlapping_sequences(clock + same_marks + short) == []
    a = make_sequence(base_t[:120], base_m[:120])
    lo = 120 - OVERLAP_WINDOW - 1
    b = make_sequence(base_t[lo:] - base_t[lo], base_m[lo:])  # re-based
    c = make_sequence(base_t[120 - OVERLAP_WINDOW:] + 3.0, base_m[120 - OVERLAP_WINDOW:])  # shares 32 events = 31 gaps
    assert overlapping_sequences([a, b]) == [(0, 1, 1)]  # 33 shared events: exactly one stretch of 32 gaps
    assert overlapping_sequences([a, c]) == []


def test_describe_top_takes_a_positive_count(capsys) -> None:
    """``--top -3`` listed one of four marks (a Python slice) and ``--top 0`` an empty header."""
    from mtpp.cli import main

    for bad in ("0", "-3"):
        with pytest.raises(SystemExit) as stop:
            main(["data", "describe", "synthetic_hawkes", "--top", bad])
        assert stop.value.code == 2 and "--top: must be >= 1" in capsys.readouterr().err


def test_prepare_carries_a_split_folders_window_for_use_window(tmp_path: Path) -> None:
    """A simulated folder (common window 20) prepared again lost its window (``"window": null``), and
    ``data.use_window: true`` on the prepared folder failed although the reading note said it would attach it."""
    from mtpp.cli import main
    from mtpp.data.catalog import load_dataset

    sim = tmp_path / "sim"
    assert main(["simulate", "poisson", "--marks", "2", "--sequences", "30", "--window", "20", "--out", str(sim)]) == 0
    prepare([sim], tmp_path / "p", num_splits=1)
    assert json.loads((tmp_path / "p" / "split_0" / "args.json").read_text())["window"] == 20.0
    ds = load_dataset(str(tmp_path / "p"), use_window=True)
    assert {s.window_end for s in ds.train} == {20.0}


@pytest.mark.parametrize("name, content", [("e.csv", "seq_id,time,mark\n"), ("e.json", "[]"),
                                           ("e.tsv", "seq_id\ttime\tmark\n")])
def test_an_input_without_sequences_says_so_not_that_none_are_left(tmp_path: Path, name: str, content: str,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """A header-only CSV or an empty JSON list said "no sequences left to split", as if some had been removed."""
    p = tmp_path / name
    p.write_text(content)
    assert main(["data", "prepare", str(p), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{p}: holds no sequence" in err[0] and "left" not in err[0], err
    bad = tmp_path / "nan.csv"
    bad.write_text("seq_id,time,mark\na,nan,0\n")
    assert main(["data", "prepare", str(bad), "--drop-invalid", "--out", str(tmp_path / "out")]) == 2
    assert "no sequences left to split: all 1 were dropped as invalid" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ --max-length


def test_cut_long_sequences_keeps_every_event_and_gap() -> None:
    from mtpp.data.sequence import EventSequence
    from mtpp.data.splits import cut_long_sequences

    rng = np.random.default_rng(0)
    times = 100.0 + np.cumsum(rng.exponential(1.0, 10))
    long = EventSequence(times, np.arange(10) % 3, window_end=float(times[-1]) + 2.5, name="user_7")
    short = make_sequence([0.5, 1.0], [0, 1])
    out, cut, pieces = cut_long_sequences([short, long], 4)
    assert (cut, pieces) == (1, 3) and out[0] is short
    assert [len(p) for p in out[1:]] == [4, 4, 2]
    # every gap kept, the first piece's included: tau_1 = t_1 - 0, the next pieces start at the event before them
    np.testing.assert_allclose(np.concatenate([p.taus for p in out[1:]]), long.taus, rtol=0, atol=1e-12)
    assert np.array_equal(np.concatenate([p.marks for p in out[1:]]), long.marks)
    assert [p.window_end for p in out[1:3]] == [None, None]
    assert out[3].window_end == pytest.approx(float(times[-1]) + 2.5 - float(times[7]))  # the window end, shifted
    assert [p.name for p in out[1:]] == ["user_7#0", "user_7#1", "user_7#2"]
    with pytest.raises(ConfigError):
        cut_long_sequences([short], 0)


def test_prepare_max_length_cuts_and_counts_and_loses_no_event(tmp_path: Path, capsys) -> None:
    # one stream of many events among short ones: whole, it is one training batch (1,000,000 events: about 8 GB)
    rng = np.random.default_rng(1)
    seqs = [make_sequence(np.cumsum(rng.exponential(1, 5)), rng.integers(0, 3, 5)) for _ in range(9)]
    seqs.append(make_sequence(np.cumsum(rng.exponential(1, 1000)), rng.integers(0, 3, 1000)))
    write_bosser_json(tmp_path / "in.json", seqs)
    assert main(["data", "prepare", str(tmp_path / "in.json"), "--out", str(tmp_path / "out"), "--splits", "1",
                 "--max-length", "64"]) == 0
    out = capsys.readouterr().out
    assert "1 sequence(s) longer than 64 events were cut into 16 pieces (mtpp data prepare --max-length 64" in out
    assert "kept 25 sequences, 1,045 events" in out
    args = json.loads((tmp_path / "out" / "args.json").read_text())
    assert (args["max_length"], args["cut_sequences"], args["pieces"], args["num_sequences"]) == (64, 1, 16, 25)
    assert any("were cut into 16 pieces" in n for n in args["notes"])
    parts = read_any(tmp_path / "out" / "split_0").parts  # every event is written once: 45 + 1,000 in, 1,045 out
    written = [s for p in parts.values() for s in p]
    assert len(written) == 25 and sum(len(s) for s in written) == 1045
    assert max(len(s) for s in written) == 64
    # without the option nothing changes, and args.json has no trace of it
    assert main(["data", "prepare", str(tmp_path / "in.json"), "--out", str(tmp_path / "whole"), "--splits", "1"]) == 0
    assert "max_length" not in json.loads((tmp_path / "whole" / "args.json").read_text())
