"""The ``mtpp`` command. Each sub-command lives in ``mtpp/commands/<name>.py`` and exposes
``register(subparsers) -> None`` (adds its parser, sets ``func``). Heavy imports happen inside ``func``:
building the parser (``mtpp --help``, ``mtpp COMMAND --help``) imports neither torch nor numpy
(``tests/test_cli.py`` checks it)."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import Callable

from mtpp.allocator import tune_allocator
from mtpp.errors import MtppError

# The one place sub-commands are listed, in the order ``mtpp --help`` shows them.
COMMANDS = ("train", "evaluate", "compare", "report", "tune", "bench", "data", "simulate")
COMMANDS += ("predict", "generate", "plot")  # forecasting: mtpp/forecast/


def build_parser() -> argparse.ArgumentParser:
    from mtpp import __version__

    parser = argparse.ArgumentParser(
        prog="mtpp",
        description="Neural marked temporal point processes: train, evaluate, compare, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"mtpp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mtpp.commands.{name}")
        except ModuleNotFoundError as e:  # a command not written yet
            if e.name != f"mtpp.commands.{name}":
                raise
            continue
        module.register(sub)
    _describe_all(parser)
    return parser


def _describe_all(parser: argparse.ArgumentParser) -> None:
    """Every (sub-)sub-command's help page gets a description: its one-line help where it states none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not sub.description and helps.get(name):
                    sub.description = helps[name][0].upper() + helps[name][1:] + "."
                _describe_all(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    expand_home(args)
    tune_allocator()  # a process-level setting: here, not at import
    previous = _terminate_as_interrupt()
    try:
        code = args.func(args)
    except MtppError as e:
        print(f"mtpp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"mtpp {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"mtpp {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mtpp data list | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # the file system said no (permissions, a file where a folder goes, a full disk)
        print(f"mtpp {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return int(code or 0)


def expand_home(args: argparse.Namespace) -> None:
    """A leading ``~`` of every path argument is the home folder, as a shell would make it: shells leave it in
    ``--out=~/runs/x`` and in quotes, and the folder ``./~`` that a literal ``~`` became (a later ``rm -rf ~`` of
    it is a disaster) is never created. Applies to ``pathlib.Path`` values and to strings that start with ``~``
    (no option value of mtpp that is not a path does); lists item by item."""
    import os
    from pathlib import Path

    def expand(value: object) -> object:
        if isinstance(value, Path) and value.parts[:1] and value.parts[0].startswith("~"):
            return value.expanduser()
        if isinstance(value, str) and value.startswith("~"):
            return os.path.expanduser(value)
        return value

    for key, value in vars(args).items():
        setattr(args, key, [expand(v) for v in value] if isinstance(value, list) else expand(value))


def run_script(prog: str, work: Callable[[], int]) -> int:
    """``work()``'s exit code, with a ``MtppError`` or ``OSError`` it raises said as :func:`main` says it for a
    command: one line ``PROG: error: ...`` on stderr and exit code 2. For the scripts under ``scripts/``
    (``results_md.py``, ``add_validation_curves.py``, ``rescore_records.py``): bad input never ends in a
    traceback there either."""
    try:
        return work()
    except MtppError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system said no (a file that cannot be read or written)
        print(f"{prog}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:  # a file read as text that is not UTF-8 (where no caller named it)
        print(f"{prog}: error: a file it read is not UTF-8 text ({e.reason} at byte {e.start})", file=sys.stderr)
        return 2


def describe_os_error(e: OSError) -> str:
    """One line for an ``OSError`` that reached the command: the path(s) it names, the system's reason and what to
    do, instead of a traceback (``--out`` in a read-only folder, ``--out a_file/run``, a full disk, an
    ``MTPP_CACHE_DIR`` that cannot be written)."""
    import errno
    import os
    from pathlib import Path

    where = ": ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    reason = e.strerror or str(e) or type(e).__name__
    text = f"{where}: {reason}" if where else reason
    hints = {
        errno.EACCES: "no permission there; choose another folder (--out) or change its permissions",
        errno.EROFS: "the file system is read-only; choose another folder (--out)",
        errno.ENOTDIR: "a part of that path is a file, not a folder",
        errno.ENOSPC: "the disk is full; free space and run the command again (an interrupted run resumes with "
                      "--resume)",
        errno.EDQUOT: "the disk quota is exceeded; free space and run the command again",
    }
    hint = hints.get(e.errno) if e.errno is not None else None
    if e.errno == errno.EEXIST and e.filename is not None and os.path.isfile(e.filename):  # mkdir under a file
        hint = "a file is where a folder is needed"
    if hint is None and isinstance(e, PermissionError):
        hint = hints[errno.EACCES]
    cache = os.environ.get("MTPP_CACHE_DIR") or str(Path.home() / ".cache" / "mtpp")
    if e.filename is not None and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
        target = os.path.abspath(os.fspath(e.filename))
        root = os.path.abspath(cache)
        if target == root or target.startswith(root.rstrip(os.sep) + os.sep):
            origin = "MTPP_CACHE_DIR" if os.environ.get("MTPP_CACHE_DIR") else "the default cache, ~/.cache/mtpp"
            hint = (f"the cache folder {root} ({origin}) cannot be written; set MTPP_CACHE_DIR to a folder you can "
                    "write")
    return f"{text} ({hint})" if hint else text


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``), raised where the command is, so that it stops as after Ctrl-C: a training run says
    how to resume it (also in its ``train.log``), a grid stops its workers and says how to continue."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _terminate_as_interrupt() -> object | None:
    """Install the SIGTERM handler (main thread only); return the previous one to restore, ``None`` if not set."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


if __name__ == "__main__":
    sys.exit(main())
