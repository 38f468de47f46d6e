"""Unified diffs of a host's planned files against a directory (agentkit diff,
install --dry-run)."""

from __future__ import annotations

import difflib
import os
import re
from typing import Iterable, TextIO

from .files import RenderedFile


def show(place: str, planned: Iterable[RenderedFile], out: TextIO, *, ours: re.Pattern[str],
         owned: set[str] | None = None) -> int:
    """Write unified diffs of `place` against `planned` to `out`; count the files that differ.

    Files of `place` that are not planned count when they look like the backend's
    (`ours`), or, given `owned` (install's record), when agentkit installed them.
    """
    changed = 0
    wanted = {item.path: item for item in planned}
    present = []
    if os.path.isdir(place):
        present = [n for n in sorted(os.listdir(place))
                   if (n in owned if owned is not None else ours.match(n)) or n in wanted]
    for name in sorted(set(wanted) | set(present)):
        path = os.path.join(place, name)
        new = wanted[name].text.splitlines(keepends=True) if name in wanted else []
        old: list[str] = []
        if name in present:
            with open(path, encoding="utf-8", errors="replace") as handle:
                old = handle.read().splitlines(keepends=True)
        if old != new:
            changed += 1
            out.writelines(difflib.unified_diff(old, new, path if old else "/dev/null", path if new else "/dev/null"))
    return changed
