"""The documentation site builds with ``mkdocs build --strict`` (no warning: a broken link, a missing page or an
API object that no longer exists fails the suite), fast, and its API reference is generated from the docstrings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")
pytest.importorskip("material")

ROOT = Path(__file__).resolve().parent.parent


def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "WARNING" not in log, log
    assert seconds < 60, f"the docs build took {seconds:.0f} s (budget 60 s)"
    site = tmp_path / "site"
    # every user-guide page of the nav is there, and the reference holds the public API from the docstrings
    for page in ("guide/likelihood", "guide/gradient-conflict", "guide/forecasting", "guide/calibration",
                 "guide/multi-gpu", "guide/data", "guide/models"):
        assert (site / page / "index.html").is_file(), page
    models = (site / "reference/models/index.html").read_text(encoding="utf-8")
    assert 'id="mtpp.models.build_model"' in models and 'id="mtpp.models.mtpp.MarkedTPP.sample_next"' in models
    training = (site / "reference/training/index.html").read_text(encoding="utf-8")
    assert 'id="mtpp.training.api.fit"' in training and 'id="mtpp.training.tracking.open_trackers"' in training
    assert 'id="mtpp.tuning.tune"' in (site / "reference/tuning/index.html").read_text(encoding="utf-8")


def test_every_catalog_name_is_in_the_dataset_tables():
    """README's and the data guide's dataset tables list every name the catalog knows."""
    import re

    from mtpp.data.catalog import known_names

    for doc in (ROOT / "README.md", ROOT / "docs" / "guide" / "data.md"):
        rows = [line for line in doc.read_text().splitlines() if line.startswith("| `")]
        listed = {name for row in rows for name in re.findall(r"`([a-z0-9_]+)`", row.split("|")[1])}
        assert set(known_names()) <= listed, (doc.name, sorted(set(known_names()) - listed))
