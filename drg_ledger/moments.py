"""Moments and days as a person types them, read the same way by the CLI and the HTTP service.

`known_at` (transaction time): an ISO date means the end of that day, China time; an ISO
datetime without a zone is China time (+08:00). `as_of` (valid time): an ISO date.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

CHINA = timezone(timedelta(hours=8))


class BadMoment(ValueError):
    """A date or moment that is not ISO; `field` names the option or parameter."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def parse_moment(text: str | None, field: str = "--known-at") -> datetime | None:
    """`--known-at`: a date means the end of that day; a time without zone is China time."""
    if text is None:
        return None
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time.max, CHINA)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadMoment(field, f"{text!r} is not an ISO date or datetime") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=CHINA)


def parse_day(text: str, field: str = "--as-of") -> date:
    """A valid-time date, `YYYY-MM-DD`."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadMoment(field, f"{text!r} is not an ISO date YYYY-MM-DD") from None
