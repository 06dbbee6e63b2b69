"""Shared fixtures. Tests that need the real benchmark files use ``data_dir`` and skip cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Generated caches (the synthetic dataset, auto-prepared splits) go to a per-session temp folder.
    cache = tmp_path_factory.getbasetemp() / "mtpp-cache"
    monkeypatch.setenv("MTPP_CACHE_DIR", str(cache))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    torch.manual_seed(0)
    # console lines said once per process (mtpp.training.logging.echo(once=True)): each test starts afresh
    from mtpp.training import logging as mtpp_logging

    monkeypatch.setattr(mtpp_logging, "_SAID", set())
    from mtpp.data import formats  # data warnings said once per process (formats.warn_once): likewise

    monkeypatch.setattr(formats, "_WARNED", set())


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is fastest and immune to oversubscription on shared cores.

    Test files of tiny models use it for every test: ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The staged benchmark data (``MTPP_DATA_DIR``); tests using it skip when it is absent."""
    d = os.environ.get("MTPP_DATA_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("MTPP_DATA_DIR is not set or not a folder: real-data test skipped")
    return Path(d)
