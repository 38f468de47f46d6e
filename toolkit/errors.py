"""One family of errors; the CLI turns them into a message and an exit code."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import re
from dataclasses import dataclass

# Characters that would end the line, move the terminal's cursor or reorder what it shows:
# C0 and C1 controls, Unicode's line and paragraph separators, and its bidirectional
# controls. A problem is one line of text, whatever a file's name or a value in it holds.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def one_line(text: str) -> str:
    """`text` with every unsafe character written as an escape (\\n, \\x1b)."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class AgentkitError(Exception):
    """An error the user can act on. The CLI prints it without a traceback."""

    exit_code = 1


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the manifest, located as precisely as we can."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        return one_line(text)


class ManifestError(AgentkitError):
    """The manifest has problems; all of them are collected, in file/line order."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(set(problems))
        more = len(self.problems) - SHOWN
        super().__init__("\n".join(str(p) for p in self.problems[:SHOWN])
                         + (f"\n... and {more:,} more problems" if more > 0 else ""))


# How many more names "did you mean" hints may still be compared with (None: no bound). A
# hint compares the name with every known one: thousands of typos against thousands of agents
# would take minutes, so a load gives hints until this many comparisons (about a second), and
# the rest of the problems go without.
_hints_left: contextvars.ContextVar[int | None] = contextvars.ContextVar("hints_left", default=None)
HINTS = 100_000
# The problems the command line prints; the count says how many there are in all.
SHOWN = 200


@contextlib.contextmanager
def hint_budget(limit: int = HINTS):
    token = _hints_left.set(limit)
    try:
        yield
    finally:
        _hints_left.reset(token)


def close_match(name: str, known) -> str | None:
    """The closest of `known` to `name`, or None (also once the hint budget is spent)."""
    known = list(known)
    left = _hints_left.get()
    if left is not None:
        if left < len(known):
            return None
        _hints_left.set(left - len(known))
    hint = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return hint[0] if hint else None


def did_you_mean(name: str, known) -> str:
    """' (did you mean 'X'?)' for the closest of `known`, else ''."""
    hint = close_match(name, known)
    return f" (did you mean {hint!r}?)" if hint else ""


def some(names, most: int = 10) -> str:
    """Names for a message: all of a few, or the first `most` and how many there are."""
    names = list(names)
    if len(names) <= most:
        return ", ".join(names) or "none"
    return f"{', '.join(names[:most])}, ... ({len(names):,} in all)"
