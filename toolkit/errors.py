"""One family of errors; the CLI turns them into a message and an exit code."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


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
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ManifestError(AgentkitError):
    """The manifest has problems; all of them are collected, in file/line order."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


def did_you_mean(name: str, known) -> str:
    """' (did you mean 'X'?)' for the closest of `known`, else ''."""
    hint = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {hint[0]!r}?)" if hint else ""
