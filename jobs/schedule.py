"""Cron and interval maths: validation, fire times, planned seconds.

Pure functions (no database), shared by the models, the tick task, the beat sync
and the load planner.

Planned seconds come from the schedule's own grid, never from the moment a beat
tick happens to arrive:
- cron jobs fire at the cron minute (evaluated in the job's timezone) plus
  ``wait_seconds``;
- interval jobs fire on an epoch-aligned grid ``k * interval + phase`` (phase =
  ``wait_seconds`` modulo the interval), so they stay on the second whatever beat's
  drift is.  Beat only has to wake the tick once per minute (or per grid minute);
  see :func:`interval_crontab`.

DST (cron jobs in a timezone other than UTC), as Vixie cron does it:
- spring forward: a wall-clock time inside the skipped hour (02:30 on the change day
  in Europe/Paris) fires once, at the first instant after the gap (03:00 local);
- fall back: a wall-clock time inside the repeated hour fires once, at its first
  occurrence, for jobs with a fixed hour; jobs whose hour field is a wildcard
  ("every N minutes", "hourly") keep firing through both occurrences, because for
  them each occurrence is a distinct moment in real time.
Jobs in UTC are unaffected.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

UTC = dt.UTC
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")
_FIELD_RE = re.compile(r"^[0-9A-Za-z*/,\-?LW#]+$")
MIN_INTERVAL_SECONDS = 5
MAX_INTERVAL_SECONDS = 7 * 86400
# How far ahead of the planned minute a tick may arrive and still count for it.
TICK_EARLY_TOLERANCE = dt.timedelta(seconds=2)


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message says why."""


@functools.lru_cache(maxsize=4096)
def normalize_cron(expr: str) -> str:
    """Validate a 5-field cron expression (or @alias); return it normalised.

    Raises ScheduleError naming the offending field.
    """
    if expr is None or not str(expr).strip():
        raise ScheduleError("cron expression is empty")
    text = " ".join(str(expr).split())
    if text.startswith("@"):
        if text == "@reboot":
            raise ScheduleError("@reboot is not supported: Smart Cron schedules recurring runs")
        if text not in ALIASES:
            raise ScheduleError(f"unknown alias {text!r}; use one of {', '.join(sorted(ALIASES))}")
        return ALIASES[text]
    parts = text.split(" ")
    if len(parts) == 6:
        raise ScheduleError(
            "6 fields given: Smart Cron cron expressions have no seconds field; "
            "use the 5-field form and set wait_seconds for the second"
        )
    if len(parts) != 5:
        raise ScheduleError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}")
    for name, part in zip(FIELD_NAMES, parts, strict=True):
        if not _FIELD_RE.match(part):
            raise ScheduleError(f"{name} field {part!r} contains invalid characters")
        try:
            croniter(" ".join("*" if n != name else part for n in FIELD_NAMES))
        except (ValueError, KeyError, TypeError) as exc:
            raise ScheduleError(f"{name} field {part!r} is invalid: {exc}") from None
    try:
        croniter(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise ScheduleError(f"invalid cron expression: {exc}") from None
    return text


def validate_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown timezone {name!r} (use an IANA name like 'Europe/Paris' or 'UTC')") from None


def validate_interval(seconds: int | None, wait_seconds: int = 0) -> int:
    if seconds is None:
        raise ScheduleError("interval_seconds is required for an interval schedule")
    if not MIN_INTERVAL_SECONDS <= int(seconds) <= MAX_INTERVAL_SECONDS:
        raise ScheduleError(
            f"interval_seconds must be between {MIN_INTERVAL_SECONDS} and {MAX_INTERVAL_SECONDS}, got {seconds}"
        )
    if int(seconds) < 60 and wait_seconds >= int(seconds):
        raise ScheduleError(f"wait_seconds ({wait_seconds}) must be below interval_seconds ({seconds})")
    return int(seconds)


def daily_cron(at: dt.time) -> str:
    return f"{at.minute} {at.hour} * * *"


def weekly_cron(at: dt.time, weekday: int) -> str:
    """weekday: 0=Monday .. 6=Sunday (Python's convention); cron uses 0=Sunday."""
    return f"{at.minute} {at.hour} * * {(weekday + 1) % 7}"


def cron_fields(expr: str) -> dict[str, str]:
    """Split a normalised expression into django-celery-beat CrontabSchedule fields."""
    minute, hour, dom, month, dow = normalize_cron(expr).split(" ")
    return {"minute": minute, "hour": hour, "day_of_month": dom, "month_of_year": month, "day_of_week": dow}


def interval_crontab(interval: int) -> str:
    """The beat crontab that wakes the tick for an interval job.

    The tick then creates the runs of every grid point in its minute, so beat's own
    interval drift never moves a planned second.
    """
    if interval % 60 == 0 and interval < 3600 and 60 % (interval // 60) == 0:
        k = interval // 60
        return "* * * * *" if k == 1 else f"*/{k} * * * *"
    if interval % 3600 == 0 and interval < 86400 and 24 % (interval // 3600) == 0:
        h = interval // 3600
        return "0 * * * *" if h == 1 else f"0 */{h} * * *"
    if interval == 86400:
        return "0 0 * * *"
    return "* * * * *"


def _aware(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime given; Smart Cron works with aware UTC datetimes only")
    return moment


def is_dst_repeat(expr: str, tz: str, fire: dt.datetime) -> bool:
    """True for the second occurrence of a fixed-hour fire in a fall-back overlap."""
    local = _aware(fire).astimezone(validate_timezone(tz))
    if local.fold != 1:
        return False
    hour_field = normalize_cron(expr).split(" ")[1]
    return not hour_field.startswith("*")


def cron_prev_fire(expr: str, tz: str, ref: dt.datetime) -> dt.datetime:
    """Latest fire time at or before ``ref`` (aware), as aware UTC (DST repeats included)."""
    zone = validate_timezone(tz)
    local = _aware(ref).astimezone(zone)
    # croniter's get_prev is strict; step forward a microsecond to include ref itself.
    it = croniter(normalize_cron(expr), local + dt.timedelta(microseconds=1))
    prev = it.get_prev(dt.datetime)
    return prev.astimezone(UTC)


def cron_fires_between(expr: str, tz: str, start: dt.datetime, end: dt.datetime) -> Iterator[dt.datetime]:
    """Fire times in [start, end), aware UTC."""
    zone = validate_timezone(tz)
    it = croniter(normalize_cron(expr), _aware(start).astimezone(zone) - dt.timedelta(microseconds=1))
    while True:
        nxt = it.get_next(dt.datetime).astimezone(UTC)
        if nxt >= end:
            return
        if nxt >= start and not is_dst_repeat(expr, tz, nxt):
            yield nxt


def interval_points_between(interval: int, phase: int, start: dt.datetime, end: dt.datetime) -> Iterator[dt.datetime]:
    """Epoch-aligned grid points k*interval + phase in [start, end), aware UTC."""
    s = _aware(start).timestamp()
    e = _aware(end).timestamp()
    phase %= interval
    k = -(-(s - phase) // interval)  # ceil
    t = k * interval + phase
    while t < e:
        yield dt.datetime.fromtimestamp(t, UTC)
        t += interval


def tick_minute(now: dt.datetime) -> dt.datetime:
    """The minute a tick arriving at ``now`` stands for (a tick may arrive a bit early)."""
    ref = _aware(now) + TICK_EARLY_TOLERANCE
    return ref.replace(second=0, microsecond=0)
