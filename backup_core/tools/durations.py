"""Durations as people write them: `90s`, `15m`, `1h`, `7d`, `1h30m`."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from backup_core.tools.errors import ConfigError

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# A century: longer spans are typos, and would overflow date arithmetic further on.
MAX_SECONDS = 100 * 365.25 * 86400


def parse_duration(text: str, *, what: str = "duration") -> float:
    """Seconds in `text`; a bare number is seconds. Refuses NaN, infinities, negatives and
    more than a century with a `ConfigError` that says what to write instead."""
    raw = text.strip().lower()
    try:
        total = float(raw)
    except ValueError:
        pos, total = 0, 0.0
        for m in _PART.finditer(raw):
            if raw[pos:m.start()].strip():
                break
            total += float(m.group(1)) * _UNIT[m.group(2)]
            pos = m.end()
        if pos == 0 or raw[pos:].strip():
            raise ConfigError(f"cannot read {what} {text!r}: use e.g. 90s, 15m, 1h, 7d") from None
    return check_seconds(total, text=text, what=what)


def check_seconds(total: float, *, text: str, what: str) -> float:
    if not math.isfinite(total) or total < 0 or total > MAX_SECONDS:
        raise ConfigError(f"{what} {text!r} is out of range: give a span from 0 to 100 years, "
                          "e.g. 15m or 7d")
    return total


def human(seconds: float | None) -> str:
    """A short readable duration: `4.2s`, `42s`, `3m 05s`, `2h 10m`, `7d 00h 00m`. Past a
    day every unit down to minutes is written, so a span never reads as two (`7d 30s`)."""
    if seconds is None:
        return "-"
    if seconds < 0:  # a backup dated in the future, say
        return "-" + human(-seconds)
    s = round(seconds)
    if abs(seconds) < 10:
        return f"{seconds:.1f}s"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h {s % 3600 // 60:02d}m"


def human_time(value: datetime | str | float | None) -> str:
    """A moment for a person, in UTC to the second: `2026-11-23 23:04:00 UTC` (from a
    datetime, an ISO 8601 string or epoch seconds), never raw epoch seconds."""
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    elif isinstance(value, datetime):
        moment = value
    else:
        moment = datetime.fromtimestamp(value, UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """`1 complete backup`, `2 complete backups`: the count with its noun agreeing."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural_form or noun + 's'}"
