"""One door for the programs agentkit runs (supervisord, supervisorctl, journalctl):
an argv list, a timeout, the output captured. A failure raises one error that names
the command and its last output."""

from __future__ import annotations

import logging
import shlex
import subprocess
from typing import Collection

from .errors import AgentkitError

log = logging.getLogger("agentkit.proc")
TAIL_LINES = 10  # of a failed command's output, in its error
LAST_WORDS = 300  # characters from the end of a program's last line, where a status or a log line quotes it


class CommandError(AgentkitError):
    def __init__(self, argv: list[str], why: str, output: str = ""):
        self.argv = list(argv)
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-TAIL_LINES:])
        super().__init__(f"{shlex.join(argv)}: {why}" + (f": {tail}" if tail else ""))


def run(argv: list[str], *, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    """Run argv to its end; with check, a non-zero exit, a timeout or a missing program raises CommandError."""
    log.debug("running %s", shlex.join(argv))
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        output = (exc.stderr or exc.stdout or b"")
        raise CommandError(argv, f"still running after {timeout:g} s",
                           output.decode(errors="replace") if isinstance(output, bytes) else output) from None
    except OSError as exc:
        raise CommandError(argv, exc.strerror or str(exc)) from None
    if check and result.returncode != 0:
        raise CommandError(argv, f"exit status {result.returncode}", result.stderr or result.stdout)
    return result


def last_line(text: str, skip: Collection[str] = ()) -> str | None:
    """A program's last words: the last non-blank line of its output (but those in `skip`),
    at most LAST_WORDS characters from its end; None when it said nothing."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() not in skip]
    return lines[-1][-LAST_WORDS:] if lines else None
