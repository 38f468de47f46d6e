"""The value syntaxes systemd 252 accepts for the settings we render.

Each parser returns a normalised value or raises ValueError with a message fit
for the user; each formatter writes the value back the way systemd reads it.
"""

from __future__ import annotations

import re

_SPAN_UNITS_US = {
    "us": 1, "usec": 1, "µs": 1, "μs": 1,
    "ms": 1_000, "msec": 1_000,
    "s": 1_000_000, "sec": 1_000_000, "second": 1_000_000, "seconds": 1_000_000,
    "m": 60_000_000, "min": 60_000_000, "minute": 60_000_000, "minutes": 60_000_000,
    "h": 3_600_000_000, "hr": 3_600_000_000, "hour": 3_600_000_000, "hours": 3_600_000_000,
    "d": 86_400_000_000, "day": 86_400_000_000, "days": 86_400_000_000,
    "w": 604_800_000_000, "week": 604_800_000_000, "weeks": 604_800_000_000,
}
# The longest span: poll() and epoll_wait(), which agentkit's own waits end in, take
# a timeout in 32-bit milliseconds (24.8 days). systemd holds longer ones, but a
# timeout or an idle time of weeks is a typo rather than a plan.
MAX_SPAN_US = 24 * 86_400_000_000
_SPAN_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zµμ]*)")


def parse_span(value: object) -> int:
    """A systemd time span ('90s', '1min 30s', '500ms', or a number of seconds) in microseconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a time span like '30s' or '5min', got {value!r}")
    if isinstance(value, (int, float)):
        if value != value:  # nan
            raise ValueError("expected a time span like '30s' or '5min', got nan")
        if value < 0:
            raise ValueError(f"a time span cannot be negative, got {value!r}")
        if not value * 1_000_000 <= MAX_SPAN_US:  # also nan and inf
            return _bounded_span(MAX_SPAN_US + 1, value)
        return round(value * 1_000_000)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a time span like '30s' or '5min', got {value!r}")
    text, pos, total = value.strip(), 0, 0
    while pos < len(text):
        match = _SPAN_PART.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError(f"{value!r} is not a time span systemd understands (try '30s' or '5min')")
        number, unit = match.groups()
        if unit not in _SPAN_UNITS_US and unit != "":
            raise ValueError(f"{value!r}: unknown time unit {unit!r} (use us, ms, s, min, h, d or w)")
        if len(number) > 20:  # float() would make it inf
            return _bounded_span(MAX_SPAN_US + 1, value[:40])
        total += round(float(number) * _SPAN_UNITS_US.get(unit, 1_000_000))
        pos = match.end()
    return _bounded_span(total, value)


def _bounded_span(usec: int, value: object) -> int:
    if usec > MAX_SPAN_US:
        raise ValueError(f"{value!r} is too long: a time span is at most 24 days (24d)")
    return usec


def seconds(usec: int) -> float:
    """A span's microseconds as the seconds programs count in."""
    return usec / 1_000_000


def format_span(usec: int) -> str:
    """Microseconds as the shortest exact systemd span: 300000000 -> '5min'."""
    for unit, size in (("h", 3_600_000_000), ("min", 60_000_000), ("s", 1_000_000), ("ms", 1_000)):
        if usec and usec % size == 0:
            return f"{usec // size}{unit}"
    return f"{usec}us"


_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
# The largest size systemd 252 takes: parse_size() stops at 2^64 bytes, and
# MemoryMax=18446744073709551615 (2^64 - 1, its own "infinity") is refused too.
MAX_BYTES = (1 << 64) - 2
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?$", re.IGNORECASE)


def parse_size(value: object, *, percent: bool = False) -> int | str:
    """Bytes as systemd reads them (1024-based K/M/G/T/P): '4G' -> 4294967296.

    With percent=True, 'N%' and 'infinity' are kept as text (MemoryMax= accepts them).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '512M' or '4G', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"a size must be positive, got {value}")
        return _bounded_size(value, value, percent)
    if not isinstance(value, str):
        raise ValueError(f"expected a size like '512M' or '4G', got {value!r}")
    text = value.strip()
    if percent and text == "infinity":
        return text
    if percent and text.endswith("%"):
        try:
            number = float(text[:-1])
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage") from None
        if not 0 < number <= 100:
            raise ValueError(f"{value!r}: a percentage must be above 0 and at most 100")
        return text
    match = _SIZE.match(text)
    if not match:
        hint = ", a percentage like '80%' or 'infinity'" if percent else ""
        raise ValueError(f"{value!r} is not a size systemd understands (try '512M' or '4G'{hint})")
    number, unit = match.groups()
    size = int(float(number) * _SIZE_UNITS[unit.upper()]) if len(number) < 30 else MAX_BYTES + 1
    if size <= 0:
        raise ValueError(f"a size must be positive, got {value!r}")
    return _bounded_size(size, value, percent)


def _bounded_size(size: int, value: object, percent: bool) -> int:
    if size > MAX_BYTES:
        shown = repr(value) if len(str(value)) <= 40 else f"{str(value)[:30]}... ({len(str(value)):,} characters)"
        raise ValueError(f"{shown} is more than systemd can hold: at most 16383P"
                         + (", or infinity for no limit" if percent else ""))
    return size


def format_size(value: int | str) -> str:
    """Bytes in the largest exact unit: 4294967296 -> '4G'."""
    if isinstance(value, str):
        return value
    for unit in ("P", "T", "G", "M", "K"):
        size = _SIZE_UNITS[unit]
        if value % size == 0:
            return f"{value // size}{unit}"
    return str(value)
