"""Cron and interval maths (pure logic)."""

import datetime as dt

import pytest

from jobs import schedule as sched

UTC = dt.UTC


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("* * *", "expected 5 fields"),
        ("61 * * * *", "minute field '61'"),
        ("* 24 * * *", "hour field '24'"),
        ("* * 32 * *", "day of month field '32'"),
        ("* * * 13 *", "month field '13'"),
        ("* * * * 8", "day of week field '8'"),
        ("*/0 * * * *", "minute field '*/0'"),
        ("0 0 * * * *", "no seconds field"),
        ("@reboot", "not supported"),
        ("@sometimes", "unknown alias"),
        ("", "empty"),
        ("0 0 * * mon;rm", "invalid characters"),
    ],
)
def test_it_rejects_bad_cron_naming_the_field(expr, fragment):
    with pytest.raises(sched.ScheduleError, match=None) as exc:
        sched.normalize_cron(expr)
    assert fragment in str(exc.value)


def test_it_normalises_whitespace_and_aliases():
    assert sched.normalize_cron("  */5   *  * * * ") == "*/5 * * * *"
    assert sched.normalize_cron("@daily") == "0 0 * * *"
    assert sched.normalize_cron("0 4 * * mon-fri") == "0 4 * * mon-fri"


def test_unknown_timezone_is_refused():
    with pytest.raises(sched.ScheduleError, match="unknown timezone"):
        sched.validate_timezone("Mars/Olympus")


def test_interval_validation():
    assert sched.validate_interval(30, 7) == 30
    with pytest.raises(sched.ScheduleError, match="between"):
        sched.validate_interval(1)
    with pytest.raises(sched.ScheduleError, match="below interval_seconds"):
        sched.validate_interval(20, 25)


def test_interval_grid_is_epoch_aligned_with_phase():
    start = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    points = list(sched.interval_points_between(20, 7, start, start + dt.timedelta(minutes=1)))
    assert [p.second for p in points] == [7, 27, 47]


@pytest.mark.parametrize(
    ("interval", "crontab"),
    [(60, "* * * * *"), (300, "*/5 * * * *"), (3600, "0 * * * *"), (7200, "0 */2 * * *"),
     (86400, "0 0 * * *"), (30, "* * * * *"), (90, "* * * * *"), (420, "* * * * *")],
)
def test_interval_jobs_are_ticked_on_their_grid_minutes(interval, crontab):
    assert sched.interval_crontab(interval) == crontab


def test_tick_minute_tolerates_an_early_tick():
    assert sched.tick_minute(dt.datetime(2026, 1, 1, 11, 59, 59, 500000, tzinfo=UTC)) == dt.datetime(
        2026, 1, 1, 12, 0, tzinfo=UTC)
    assert sched.tick_minute(dt.datetime(2026, 1, 1, 12, 0, 0, 4000, tzinfo=UTC)) == dt.datetime(
        2026, 1, 1, 12, 0, tzinfo=UTC)


def test_dst_spring_forward_runs_once_right_after_the_gap():
    fires = list(sched.cron_fires_between("30 2 * * *", "Europe/Paris", dt.datetime(2026, 3, 28, tzinfo=UTC),
                                          dt.datetime(2026, 3, 31, tzinfo=UTC)))
    # 28th 02:30 CET, 29th: 02:30 does not exist -> 03:00 CEST (01:00 UTC), 30th 02:30 CEST.
    assert fires == [dt.datetime(2026, 3, 28, 1, 30, tzinfo=UTC), dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
                     dt.datetime(2026, 3, 30, 0, 30, tzinfo=UTC)]


def test_dst_fall_back_runs_a_fixed_time_job_once():
    fires = list(sched.cron_fires_between("30 2 * * *", "Europe/Paris", dt.datetime(2026, 10, 24, tzinfo=UTC),
                                          dt.datetime(2026, 10, 27, tzinfo=UTC)))
    assert fires == [dt.datetime(2026, 10, 24, 0, 30, tzinfo=UTC), dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
                     dt.datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]


def test_dst_fall_back_keeps_hourly_jobs_hourly():
    fires = list(sched.cron_fires_between("0 * * * *", "Europe/Paris", dt.datetime(2026, 10, 25, tzinfo=UTC),
                                          dt.datetime(2026, 10, 25, 3, tzinfo=UTC)))
    assert len(fires) == 3  # one per real hour, through the repeated hour


def test_prev_fire_in_a_timezone():
    ref = dt.datetime(2026, 7, 1, 6, 0, 1, tzinfo=UTC)  # 08:00:01 in Paris (CEST)
    assert sched.cron_prev_fire("0 8 * * *", "Europe/Paris", ref) == dt.datetime(2026, 7, 1, 6, 0, tzinfo=UTC)
    assert sched.cron_prev_fire("0 8 * * *", "Europe/Paris", ref - dt.timedelta(seconds=2)) == dt.datetime(
        2026, 6, 30, 6, 0, tzinfo=UTC)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="naive"):
        list(sched.interval_points_between(60, 0, dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 2)))
