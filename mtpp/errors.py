"""Error types users see. The CLI turns any ``MtppError`` into one line on stderr and exit code 2."""

from __future__ import annotations


class MtppError(Exception):
    """Base class of every error that is the user's input, not a bug."""


class DataError(MtppError, ValueError):
    """Bad or missing data: the message names the file, the sequence index and the problem."""

    def __init__(self, problem: str, *, source: str | None = None, sequence: int | None = None,
                 event: int | None = None) -> None:  # fmt: skip
        self.problem = problem
        self.source = source
        self.sequence = sequence
        self.event = event  # the event's index in its sequence, when the problem is one event (readers name its line)
        where = []
        if source is not None:
            where.append(str(source))
        if sequence is not None:
            where.append(f"sequence {sequence}")
        super().__init__(f"{': '.join(where)}: {problem}" if where else problem)


class ConfigError(MtppError, ValueError):
    """A bad configuration key or value: the message names the key and lists the valid ones."""
