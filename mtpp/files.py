"""Writing output files so that no reader, and no later command, ever sees half of one.

Every file mtpp writes for a user (``metrics.json``, ``config.yaml``, ``summary.md`` / ``summary.csv``, plots,
``experiment.yaml``, ``failures.json``, ``best.yaml``, prediction tables, records, ...) is written through
:func:`replacing`: into a temporary file of a unique name in the same folder, then renamed over the target with
``os.replace`` (atomic on POSIX and Windows within one file system). A command interrupted (Ctrl-C, ``kill``, a
full disk) while writing leaves the previous file, or none, and never a truncated one: a cut-off PNG once made the
next ``mtpp report`` refuse its own plot as "not written by mtpp", and a cut-off ``summary.md`` would have been
read as a complete table. Unique temporary names (``tempfile.mkstemp``) let two processes write the same file at
once (two ``mtpp compare`` sharing a grid): the last rename wins, each file whole.

:func:`check_writable` is the up-front check of an output path, so that a command which computes for minutes
(``predict``, ``generate``) is refused before the work, not after it, when it could not write its result.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from mtpp.errors import MtppError


@contextlib.contextmanager
def replacing(path: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` to write to; on a normal exit it replaces ``path`` (created
    or overwritten in one rename), on any exception (``KeyboardInterrupt`` included) it is removed and ``path`` is
    left as it was. ``durable``: ``fsync`` the file before the rename (checkpoints). The folder of ``path`` must
    exist. A symbolic link at ``path`` is kept: the file it points to is the one replaced (as ``open`` writes
    through a link; a rename over the link would have deleted the user's link). The temporary name is ``.<name>.<random>.tmp``, never taken for an output: writers that pick a format
    by the file's suffix must be told the format (``savefig(..., format="png")``)."""
    path = Path(path)
    if path.is_symlink():  # write where the link points, as open() would; the user's link itself is kept
        path = Path(os.path.realpath(path))
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # the user asked for `path`: the error names it, not a temporary name they never gave
        raise _naming(e, path, None) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        with contextlib.suppress(OSError):  # mkstemp creates 0600: the mode a plain open() gives (umask applied)
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:  # a full disk while writing the temporary file, ...: named as the file being written
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _naming(e, path, tmp) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _naming(e: OSError, path: Path, tmp: Path | None) -> OSError:
    """``e`` naming ``path`` where it named the temporary file beside it (or nothing: ``mkstemp``'s own failure),
    so ``mtpp.cli.describe_os_error`` says which output could not be written; other errors are returned as they
    are."""
    named = {os.fspath(f) for f in (e.filename, e.filename2) if f is not None}
    if tmp is not None and os.fspath(tmp) not in named:
        return e
    if tmp is None and named and not any(os.path.basename(f).startswith(f".{path.name}.") for f in named):
        return e
    out = type(e)(e.errno, e.strerror, os.fspath(path)) if e.errno is not None else e
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """``Path.write_text`` through :func:`replacing`: ``path`` holds all of ``text`` or is left as it was."""
    path = Path(path)
    with replacing(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return path


def check_writable(path: str | Path, option: str = "--out") -> Path:
    """``path`` as a ``Path`` when a file can be created there: its nearest existing ancestor folder is a folder
    this process may write into (missing folders between are created by the writers). ``MtppError`` in one line
    naming that folder otherwise (a file where a folder should be, or no write permission), or naming ``path`` when
    it is a link to nothing, before any work."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise MtppError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; create it or choose "
                        f"another {option}")
    ancestor = next((p for p in path.absolute().parents if p.exists()), None)
    if ancestor is None:
        return path
    if not ancestor.is_dir():
        raise MtppError(f"{path}: {ancestor} is a file, not a folder; choose another {option}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise MtppError(f"{path}: cannot write into {ancestor} (permission denied); choose another {option}")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a JSON-lines file that mtpp appends to (a run's ``log.jsonl``), one per line, ``[]``
    when the file does not exist. A line cut short by an interruption (the appending counterpart of a half-written
    file), a blank line or a line that is not an object is skipped."""
    import json

    path = Path(path)
    if not path.is_file():
        return []
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


__all__ = ["check_writable", "read_jsonl", "replacing", "write_text"]
