"""A checkpoint that needs a global weights-only loading refuses: the message keeps that global's name."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from mtpp.errors import MtppError
from mtpp.training.checkpoint import load


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


class Payload:
    """A class with a long qualified name: its name must survive in the message, whatever torch prefixes."""


def test_refused_global_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    p = tmp_path / "evil.pt"
    buf = io.BytesIO()
    torch.save({"model": Evil()}, buf)
    p.write_bytes(buf.getvalue())
    with pytest.raises(MtppError) as info:
        load(p)
    msg = str(info.value)
    assert "\n" not in msg and str(p) in msg
    assert "global print" in msg or "builtins.print" in msg, msg
    assert "pwned" not in capsys.readouterr().out


def test_refused_class_is_named(tmp_path: Path) -> None:
    p = tmp_path / "cls.pt"
    torch.save({"model": Payload()}, p)
    with pytest.raises(MtppError, match=r"test_checkpoint_refusal.Payload"):
        load(p)
