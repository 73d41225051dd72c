"""Time as Docker's API and CLI write it: RFC 3339 with nanoseconds, and `docker ps`'s words."""
from __future__ import annotations

import datetime

ZERO_TIME = "0001-01-01T00:00:00Z"  # Docker's "never" in StartedAt / FinishedAt


def rfc3339(t: float | None) -> str:
    """Docker's timestamps: RFC 3339 with nanoseconds, UTC."""
    if t is None:
        return ZERO_TIME
    dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(t * 1e9) % 1_000_000_000:09d}Z"


def human_duration(seconds: float) -> str:
    """As `docker ps` words it: 'Less than a second', '5 seconds', 'About a minute', '3 hours'."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    return f"{hours // 24} days"
