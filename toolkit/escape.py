"""Escaping per output format, each function tested on its own.

systemd unit files: '%' starts a specifier everywhere, '$' starts a variable in
Exec lines, and arguments are split on white space with C-style double quotes.
Commands are never wrapped in 'sh -c': the agent must be the main process, or
socket activation and sd_notify break.
"""

from __future__ import annotations

import re

_NEEDS_QUOTES = re.compile(r'[\s"\'\\;]|^$')


def systemd_text(value: str) -> str:
    """Free text (Description=, values): only specifiers need escaping."""
    return value.replace("%", "%%")


def _quote(word: str) -> str:
    if not _NEEDS_QUOTES.search(word) or word == ";":
        # A lone ';' separates commands in Exec lines; '\;' passes it literally.
        return "\\;" if word == ";" else word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_exec(argv: list[str] | tuple[str, ...]) -> str:
    """An argv list as one ExecStart= value: each word survives systemd's parsing intact."""
    return " ".join(_quote(word.replace("%", "%%").replace("$", "$$")) for word in argv)


def systemd_env(name: str, value: str) -> str:
    """One Environment= assignment, quoted so spaces and quotes survive."""
    assignment = f"{name}={value}".replace("%", "%%")
    if _NEEDS_QUOTES.search(assignment):
        return '"' + assignment.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return assignment
