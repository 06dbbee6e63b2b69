"""glibc malloc tuning: applied by the CLI where glibc is, skipped on request or when the user tuned it."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import pytest

from mtpp.allocator import OPT_OUT_ENV, USER_SETTINGS_ENV, tune_allocator


def _has_glibc_mallopt() -> bool:
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallopt")
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (OPT_OUT_ENV, *USER_SETTINGS_ENV):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.skipif(not (sys.platform.startswith("linux") and _has_glibc_mallopt()), reason="needs glibc")
def test_applied_on_glibc() -> None:
    assert tune_allocator() is True
    assert tune_allocator() is True  # idempotent


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_opt_out(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(OPT_OUT_ENV, value)
    assert tune_allocator() is False


@pytest.mark.parametrize("key", USER_SETTINGS_ENV)
def test_user_settings_win(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setenv(key, "1048576")
    assert tune_allocator() is False


def test_not_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert tune_allocator() is False
