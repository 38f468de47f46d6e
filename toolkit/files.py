"""Rendered files, and writing them: atomic, and never over what agentkit did not write."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Iterable

from .errors import AgentkitError

@dataclass(frozen=True)
class RenderedFile:
    """One file a backend plans: its path relative to the host's directory, and its text."""

    path: str
    text: str


# What a host directory of agentkit's units may hold; anything else there is the user's.
OURS = re.compile(r"^agentkit[A-Za-z0-9_.:@-]*\.(service|socket|slice|target|timer)$")


def atomic_write(path: str, text: str, mode: int = 0o644) -> None:
    """Write `path` through a temporary file and a rename: readers see the old or the new file, whole."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}{TEMP_MARK}", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# atomic_write's temporary files: "." + the file's name + TEMP_MARK + mkstemp's 8 random characters.
# The mark keeps a file of the user's (.agentkit-x.service.original, a backup) from ever looking like one.
TEMP_MARK = ".agentkit-tmp-"
TEMP = re.compile(r"^\.(?P<name>.+)\.agentkit-tmp-[a-z0-9_]{8}$")


def stale_temp_files(directory: str, ours: re.Pattern[str] = OURS) -> list[str]:
    """The temporary files atomic_write left in `directory` for files named like `ours` (a writer
    killed between mkstemp and rename leaves one): regular files only, sorted. Nothing else."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = TEMP.match(name)
        if match and ours.match(match.group("name")) and os.path.isfile(os.path.join(directory, name)) \
                and not os.path.islink(os.path.join(directory, name)):
            found.append(name)
    return sorted(found)


def remove_stale_temp_files(directory: str, ours: re.Pattern[str] = OURS) -> list[str]:
    """Delete what stale_temp_files() finds; the caller must be the only writer (hold the lock)."""
    removed = []
    for name in stale_temp_files(directory, ours):
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def foreign_files(directory: str, ours: re.Pattern[str] = OURS) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(name for name in os.listdir(directory) if not ours.match(name))


def check_replaceable(directory: str, ours: re.Pattern[str] = OURS) -> None:
    """Refuse a directory that holds files agentkit would not have written (`ours`: the backend's names)."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise AgentkitError(f"{directory}: exists and is not a directory")
    foreign = foreign_files(directory, ours)
    if foreign:
        raise AgentkitError(f"{directory}: holds files agentkit did not write ({', '.join(foreign[:5])}"
                            f"{', ...' if len(foreign) > 5 else ''}); choose another --out")


def replace_tree(directory: str, files: Iterable[RenderedFile], ours: re.Pattern[str] = OURS) -> None:
    """Make `directory` hold exactly `files`, swapping a complete new tree in."""
    check_replaceable(directory, ours)
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.new-", dir=parent)
    try:
        for item in files:
            target = os.path.join(staging, item.path)
            with open(target, "w", encoding="utf-8") as handle:
                handle.write(item.text)
            os.chmod(target, 0o644)
        os.chmod(staging, 0o755)
        if os.path.isdir(directory):
            old = staging.replace(".new-", ".old-")
            os.rename(directory, old)
            os.rename(staging, directory)
            shutil.rmtree(old)
        else:
            os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
