"""Output files are whole or absent after an interruption, and a file system that says no gives one line.

Found by trying the CLI as a user: Ctrl-C during ``mtpp report`` left a 92-byte ``plots/val_curves_*.png`` that
the next ``mtpp report`` refused as "not written by mtpp"; ``--out`` in a read-only folder, under a file, or an
``MTPP_CACHE_DIR`` that cannot be written ended in a Python traceback.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from mtpp.cli import describe_os_error, main
from mtpp.errors import MtppError
from mtpp.files import check_writable, replacing, write_text

from test_report import make_runs


def test_replacing_keeps_the_old_file_whole_when_the_write_is_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "summary.md"
    path.write_text("old, complete\n")
    with pytest.raises(KeyboardInterrupt):
        with replacing(path) as tmp:
            tmp.write_text("new, cut sho")
            raise KeyboardInterrupt
    assert path.read_text() == "old, complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]  # no temporary file left behind
    write_text(path, "new, complete\n")
    assert path.read_text() == "new, complete\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # a plain file's mode, not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_report_interrupted_while_saving_a_plot_leaves_nothing_that_stops_the_next(tmp_path: Path, capsys,
                                                                                     monkeypatch) -> None:  # fmt: skip
    from matplotlib.figure import Figure

    root = tmp_path / "runs"
    make_runs(root)
    out = tmp_path / "report"
    save = Figure.savefig
    calls = []

    def cut_off(self, fname, *args, **kwargs):  # the second plot: half a PNG written, then Ctrl-C
        calls.append(fname)
        if len(calls) == 2:
            Path(fname).write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
            raise KeyboardInterrupt
        return save(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", cut_off)
    assert main(["report", str(root), "--out", str(out)]) == 130
    monkeypatch.setattr(Figure, "savefig", save)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    capsys.readouterr()
    assert main(["report", str(root), "--out", str(out)]) == 0, capsys.readouterr().err
    assert len(list((out / "plots").glob("*.png"))) == 5


def test_writers_of_regenerated_files_leave_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch) -> None:
    """A full disk while writing a prediction table, a summary or metrics.json: the old file stays whole."""
    import pandas as pd

    from mtpp.evaluation import evaluate, report
    from mtpp.forecast.predict import write_table

    root = tmp_path / "runs"
    make_runs(root)
    runs = report.collect_runs(root)
    out = tmp_path / "report"
    report.write_summary(runs, out)
    summary = {name: (out / name).read_text() for name in ("summary.csv", "summary.md")}
    (tmp_path / "table.csv").write_text("a\n1\n")
    (tmp_path / "metrics.json").write_text('{"old": 1}\n')

    def full(self, path, *args, **kwargs):  # half the bytes, then the disk is full
        with open(path, "w") as f:
            f.write("dataset,metr")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    def full_text(self, *args, **kwargs):
        return full(None, self)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with pytest.raises(OSError):
        write_table(pd.DataFrame({"a": [2]}), tmp_path / "table.csv", overwrite=True)
    with pytest.raises(OSError):
        report.write_summary(runs, out)
    monkeypatch.undo()
    monkeypatch.setattr(Path, "write_text", full_text)
    with pytest.raises(OSError):
        evaluate.write_json(tmp_path / "metrics.json", {"new": 2})
    monkeypatch.undo()
    assert (tmp_path / "table.csv").read_text() == "a\n1\n"
    assert (tmp_path / "metrics.json").read_text() == '{"old": 1}\n'
    assert {name: (out / name).read_text() for name in summary} == summary
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_check_writable_names_the_folder_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(MtppError, match="a_file is a file, not a folder; choose another --out"):
        check_writable(tmp_path / "a_file" / "sub" / "pred.csv")
    assert check_writable(tmp_path / "new" / "pred.csv") == tmp_path / "new" / "pred.csv"


def test_os_errors_reach_the_user_as_one_line_naming_the_path(tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "a_file").write_text("x")
    assert main(["train", "--out", str(tmp_path / "a_file" / "run"), "--set", "train.max_epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"mtpp train: error: {tmp_path / 'a_file' / 'run'}: ") and "is a file, not a folder" in err
    assert main(["predict", str(tmp_path / "x"), "--out", str(tmp_path / "a_file" / "p.csv")]) == 2
    assert f"{tmp_path / 'a_file'} is a file, not a folder" in capsys.readouterr().err
    # the reason and what to do, for the errors of a read-only place, a full disk and an unwritable cache
    denied = PermissionError(errno.EACCES, "Permission denied", "ro/run")
    assert describe_os_error(denied) == ("ro/run: Permission denied (no permission there; choose another folder "
                                         "(--out) or change its permissions)")
    assert "the disk is full" in describe_os_error(OSError(errno.ENOSPC, "No space left on device", "r/log.jsonl"))
    monkeypatch.setenv("MTPP_CACHE_DIR", str(tmp_path / "cache"))
    cached = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "cache" / ".synthetic_hawkes-v2.x1"))
    assert f"the cache folder {tmp_path / 'cache'} (MTPP_CACHE_DIR) cannot be written" in describe_os_error(cached)


def test_output_and_data_folders_under_a_file_are_named_as_such(tmp_path: Path, capsys, monkeypatch) -> None:
    """``mtpp data prepare --out a_file/x`` said 'a_file: File exists'; ``MTPP_DATA_DIR=a_file`` said the data
    directory 'does not exist'."""
    (tmp_path / "a_file").write_text("x")
    sim = tmp_path / "sim"
    assert main(["simulate", "poisson", "--marks", "2", "--sequences", "10", "--window", "5", "--out", str(sim)]) == 0
    capsys.readouterr()
    assert main(["data", "prepare", str(sim), "--out", str(tmp_path / "a_file" / "prep")]) == 2
    assert f"{tmp_path / 'a_file'} is a file, not a folder" in capsys.readouterr().err
    monkeypatch.setenv("MTPP_DATA_DIR", str(tmp_path / "a_file"))
    assert main(["train", "--out", str(tmp_path / "run"), "--set", "data.name=mooc"]) == 2
    assert f"data directory {tmp_path / 'a_file'} (MTPP_DATA_DIR) is a file, not a folder" in capsys.readouterr().err
    exists = FileExistsError(errno.EEXIST, "File exists", str(tmp_path / "a_file"))
    assert describe_os_error(exists).endswith("File exists (a file is where a folder is needed)")


def test_a_link_at_the_output_is_written_through_and_a_link_to_nothing_is_named(tmp_path: Path, capsys) -> None:
    """``--out`` naming a symbolic link: the rename of an atomic write replaced the user's link by a file (and
    a dangling link was replaced without --overwrite, since it does not 'exist'); ``mtpp train --out LINK`` to a
    missing folder said 'LINK: File exists'."""
    target = tmp_path / "target.md"
    target.write_text("old\n")
    link = tmp_path / "link.md"
    link.symlink_to(target)
    write_text(link, "new\n")
    assert link.is_symlink() and target.read_text() == "new\n"
    dangling = tmp_path / "runs"
    dangling.symlink_to(tmp_path / "nowhere" / "runs")
    assert main(["train", "--out", str(dangling)]) == 2
    err = capsys.readouterr().err
    assert f"{dangling}: a symbolic link to {tmp_path / 'nowhere' / 'runs'}, which does not exist" in err
    assert dangling.is_symlink()


def test_an_output_that_cannot_be_written_is_named_not_its_temporary_file(tmp_path: Path, capsys, monkeypatch) -> None:
    """``mtpp predict RUN --out /proc/x.csv`` (as root: the folder passes the up-front check) said
    ``error: /proc/.x.csv.pmlbxd80.tmp: No such file or directory``: a temporary name the user never gave. Every write
    goes through ``replacing``, whose errors (creating the temporary file, or writing it: a full disk) now name the
    output; other errors in the body pass unchanged, and nothing is left behind."""
    import tempfile

    target = tmp_path / "x.csv"
    with pytest.raises(OSError) as caught:
        with replacing(target) as tmp:  # the disk fills while the temporary file is written
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    line = describe_os_error(caught.value)
    assert line.startswith(f"{target}: No space left on device") and ".tmp" not in line
    other = FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "input.csv"))
    with pytest.raises(FileNotFoundError) as caught:
        with replacing(target):
            raise other
    assert caught.value is other  # not about the output: as it was
    assert list(tmp_path.iterdir()) == []

    def refuse(prefix: str = "", suffix: str = "", dir: str | None = None):  # noqa: A002 - mkstemp's name
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir or "", f"{prefix}abc{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as caught:
        write_text(target, "x")
    assert caught.value.filename == str(target) and not target.exists()
    run = tmp_path / "run"
    make_runs(run)
    assert main(["report", str(run), "--no-plots"]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(error) == 1 and f"{run / 'summary.csv'}: Permission denied" in error[0] and ".tmp" not in error[0]
