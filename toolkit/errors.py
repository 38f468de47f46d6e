"""One family of errors; the CLI turns them into a message and an exit code."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

# Characters that would end the line or move the terminal's cursor: C0 and C1 controls,
# and Unicode's line and paragraph separators. A problem is one line of text, whatever
# a file's name or a value in it holds.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


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
        super().__init__("\n".join(str(p) for p in self.problems))


def did_you_mean(name: str, known) -> str:
    """' (did you mean 'X'?)' for the closest of `known`, else ''."""
    hint = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {hint[0]!r}?)" if hint else ""
