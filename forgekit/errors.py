"""The one error type users meet: `ForgekitError` carries a list of problems; the CLI prints them and exits 2.

Each stage raises its own subclass (`ConfigError` for the config and its files, `DataError` for data files with
`file:line`, and the model, format, export and generation errors), so that callers can tell them apart;
`merge` turns the errors of several checks into one, so that a user sees every problem at once.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ForgekitError", "merge", "utf8_problem"]


class ForgekitError(Exception):
    """Bad input: `problems` lists each one (`key: message` or `file:line: message`); nothing was trained."""

    def __init__(self, problems: str | Sequence[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        """The message the CLI prints."""
        return "\n".join(self.problems)

    def as_problems(self) -> list[str]:
        """The problems as lines of a combined report."""
        return list(self.problems)


def merge(errors: Sequence[ForgekitError]) -> ForgekitError | None:
    """One error for several: the only one as it is, data errors together as one `DataError`, anything else as
    one `ConfigError` listing every problem (None when there is none)."""
    from forgekit.config import ConfigError
    from forgekit.data import DataError

    if len(errors) <= 1:
        return errors[0] if errors else None
    if all(isinstance(e, DataError) for e in errors):
        return DataError([p for e in errors for p in e.problems], total=sum(e.total for e in errors))
    return ConfigError([p for e in errors for p in e.as_problems()])


def utf8_problem(raw: bytes, e: UnicodeDecodeError) -> str:
    """`LINE: ...` for a file that is not UTF-8: the line (1-based) and column of the first bad byte, and the byte."""
    line = raw.count(b"\n", 0, e.start) + 1
    column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
    return f"{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {column}: {e.reason}); save the file as UTF-8"
