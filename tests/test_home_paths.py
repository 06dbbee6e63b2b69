"""A leading ``~`` is the home folder wherever a user can write a path, not only where a shell expands it.

Found by trying the CLI as a user: ``--out=~/runs/x`` (bash leaves ``~`` after ``=``) and ``--out "~/x"`` created a
folder named ``~`` in the working directory; ``data.name: ~/data/x`` in a config, ``MTPP_DATA_DIR="~/data"`` and
``MTPP_CACHE_DIR="~/cache"`` were not found or created ``./~/cache``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mtpp.cli import main
from mtpp.data.catalog import cache_dir, resolve_data_dir, resolve_source

from test_runs import TINY, simulate


@pytest.fixture()
def home(tmp_path: Path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


def test_data_paths_and_folders_of_the_environment_expand_the_home_folder(home: Path, monkeypatch) -> None:
    simulate(home / "sim")
    assert resolve_source("~/sim")[1] == home / "sim"
    monkeypatch.setenv("MTPP_DATA_DIR", "~")
    assert resolve_data_dir() == home and resolve_source("sim")[1] == home / "sim"
    assert resolve_data_dir("~/elsewhere") == home / "elsewhere"
    monkeypatch.setenv("MTPP_CACHE_DIR", "~/cache")
    assert cache_dir() == home / "cache"


def test_cli_paths_with_an_unexpanded_tilde_land_in_the_home_folder(home: Path, capsys) -> None:
    simulate(home / "sim")
    assert main(["train", "--out=~/runs/a", *sum((["--set", o] for o in TINY), []), "--set", "data.name=~/sim",
                 "-q"]) == 0, capsys.readouterr().err  # fmt: skip
    assert (home / "runs" / "a" / "metrics.json").is_file()
    assert main(["evaluate", "~/runs/a"]) == 0
    assert main(["predict", "~/runs/a", "--out", "~/pred.csv"]) == 0
    assert (home / "pred.csv").is_file()
    assert not (Path.cwd() / "~").exists()  # no folder named ~ in the working directory
