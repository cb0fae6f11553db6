"""Settings of the observability features (stats, baselines, anomalies, alerts, retention).

Every value is read lazily as ``getattr(django.conf.settings, NAME, <env SMARTCRON_NAME>)``
so that ``override_settings(NAME=...)`` works in tests and a deployment can set them either
in the environment or in a settings module.  Access them as attributes: ``conf.BASELINE_EVERY_RUNS``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from django.conf import settings

from smartcron_project.env import envbool, envfloat, envint, envlist, envstr


@dataclasses.dataclass(frozen=True)
class Spec:
    env: str
    read: Callable[[], Any]
    help: str


def _int(name: str, default: int, minimum: int | None = 0, maximum: int | None = None) -> Callable[[], int]:
    return lambda: envint(name, default, minimum=minimum, maximum=maximum)


def _float(name: str, default: float, minimum: float | None = 0.0) -> Callable[[], float]:
    return lambda: envfloat(name, default, minimum=minimum)


SPECS: dict[str, Spec] = {
    # --- baselines -------------------------------------------------------------------------
    "BASELINE_EVERY_RUNS": Spec("SMARTCRON_BASELINE_EVERY_RUNS", _int("SMARTCRON_BASELINE_EVERY_RUNS", 10, 1),
                                "recompute a job's baseline after this many new successful runs"),
    "BASELINE_MIN_RUNS": Spec("SMARTCRON_BASELINE_MIN_RUNS", _int("SMARTCRON_BASELINE_MIN_RUNS", 10, 3),
                              "successful runs needed before a job has a baseline (and is judged at all)"),
    "BASELINE_WINDOW": Spec("SMARTCRON_BASELINE_WINDOW", _int("SMARTCRON_BASELINE_WINDOW", 50, 5),
                            "the baseline is computed from this many most recent successful runs"),
    "TREND_WINDOW": Spec("SMARTCRON_TREND_WINDOW", _int("SMARTCRON_TREND_WINDOW", 10, 3),
                         "'recent' = median of this many latest successful runs (trend vs baseline)"),
    # --- anomaly thresholds ------------------------------------------------------------------
    "ANOMALY_Z": Spec("SMARTCRON_ANOMALY_Z", _float("SMARTCRON_ANOMALY_Z", 3.5, 0.5),
                      "robust z-score (distance from the median in MAD-sigmas) above which a run is anomalous"),
    "ANOMALY_MIN_REL": Spec("SMARTCRON_ANOMALY_MIN_REL", _float("SMARTCRON_ANOMALY_MIN_REL", 0.5),
                            "a run must also exceed the median by this fraction (0.5 = +50%)"),
    "ANOMALY_MIN_SECONDS": Spec("SMARTCRON_ANOMALY_MIN_SECONDS", _float("SMARTCRON_ANOMALY_MIN_SECONDS", 1.0),
                                "... and by at least this many seconds (duration checks)"),
    "ANOMALY_MIN_MB": Spec("SMARTCRON_ANOMALY_MIN_MB", _float("SMARTCRON_ANOMALY_MIN_MB", 32.0),
                           "... and by at least this many MB (memory checks)"),
    "TOO_FAST_RATIO": Spec("SMARTCRON_TOO_FAST_RATIO", _float("SMARTCRON_TOO_FAST_RATIO", 0.2),
                           "a successful run shorter than this fraction of the median is 'too fast'"),
    "DEGRADED_PCT": Spec("SMARTCRON_DEGRADED_PCT", _float("SMARTCRON_DEGRADED_PCT", 50.0),
                         "recent median this many percent above the baseline median = degraded"),
    "UNSTABLE_CV": Spec("SMARTCRON_UNSTABLE_CV", _float("SMARTCRON_UNSTABLE_CV", 0.5),
                        "robust coefficient of variation (1.4826*MAD/median) above which a job is unstable"),
    # --- failures and the circuit breaker ---------------------------------------------------------
    "CONSECUTIVE_FAILURES_ALERT": Spec(
        "SMARTCRON_CONSECUTIVE_FAILURES_ALERT", _int("SMARTCRON_CONSECUTIVE_FAILURES_ALERT", 3, 1),
        "raise a consecutive_failures alert from this many failures in a row"),
    "BREAKER_THRESHOLD": Spec("SMARTCRON_BREAKER_THRESHOLD", _int("SMARTCRON_BREAKER_THRESHOLD", 5, 0),
                              "pause a job after this many failures in a row (per-job override; 0 = never)"),
    # --- alerts and channels ---------------------------------------------------------------------------
    "ALERT_EMAILS": Spec("SMARTCRON_ALERT_EMAILS", lambda: envlist("SMARTCRON_ALERT_EMAILS", []),
                         "comma separated recipients of alert e-mails (empty: no e-mail channel)"),
    "ALERT_EMAIL_FROM": Spec("SMARTCRON_ALERT_EMAIL_FROM", lambda: envstr("SMARTCRON_ALERT_EMAIL_FROM", ""),
                             "sender of alert e-mails (default: DEFAULT_FROM_EMAIL)"),
    "ALERT_WEBHOOK_URLS": Spec("SMARTCRON_ALERT_WEBHOOK_URLS", lambda: envlist("SMARTCRON_ALERT_WEBHOOK_URLS", []),
                               "comma separated http(s) URLs receiving a JSON POST per notification"),
    "ALERT_WEBHOOK_SECRET": Spec("SMARTCRON_ALERT_WEBHOOK_SECRET", lambda: envstr("SMARTCRON_ALERT_WEBHOOK_SECRET"),
                                 "when set, the body's HMAC-SHA256 is sent as X-SmartCron-Signature"),
    "ALERT_WEBHOOK_TIMEOUT": Spec("SMARTCRON_ALERT_WEBHOOK_TIMEOUT",
                                  _float("SMARTCRON_ALERT_WEBHOOK_TIMEOUT", 5.0, 0.1),
                                  "seconds a webhook POST may take"),
    "NOTIFY_MIN_SEVERITY": Spec("SMARTCRON_NOTIFY_MIN_SEVERITY",
                                lambda: envstr("SMARTCRON_NOTIFY_MIN_SEVERITY", "warning").strip().lower(),
                                "alerts below this severity are recorded but not sent (info/warning/error/critical)"),
    "NOTIFY_RESOLVED": Spec("SMARTCRON_NOTIFY_RESOLVED", lambda: envbool("SMARTCRON_NOTIFY_RESOLVED", True),
                            "also send a message when a notified alert is resolved"),
    "NOTIFY_DELIVERY": Spec("SMARTCRON_NOTIFY_DELIVERY",
                            lambda: envstr("SMARTCRON_NOTIFY_DELIVERY", "celery").strip().lower(),
                            "celery (task on the dispatch queue), thread, or inline (tests)"),
    "NOTIFY_MAX_ATTEMPTS": Spec("SMARTCRON_NOTIFY_MAX_ATTEMPTS", _int("SMARTCRON_NOTIFY_MAX_ATTEMPTS", 5, 1, 50),
                                "delivery attempts per channel and notification"),
    "NOTIFY_BACKOFF_SECONDS": Spec("SMARTCRON_NOTIFY_BACKOFF_SECONDS",
                                   _float("SMARTCRON_NOTIFY_BACKOFF_SECONDS", 30.0, 0.0),
                                   "first retry delay; doubles on every further attempt"),
    "ALERT_RENOTIFY_MINUTES": Spec("SMARTCRON_ALERT_RENOTIFY_MINUTES", _int("SMARTCRON_ALERT_RENOTIFY_MINUTES", 60, 0),
                                   "re-send open unacknowledged alerts this often (0 = never)"),
    "BASE_URL": Spec("SMARTCRON_BASE_URL", lambda: envstr("SMARTCRON_BASE_URL", "").rstrip("/"),
                     "public URL of the web UI, for links in notifications"),
    # --- periodic work ----------------------------------------------------------------------------------
    "WATCHDOG_SECONDS": Spec("SMARTCRON_WATCHDOG_SECONDS", _int("SMARTCRON_WATCHDOG_SECONDS", 60, 5),
                             "period of the watchdog (overdue jobs, reminders, health refresh)"),
    "OVERDUE_GRACE_SECONDS": Spec("SMARTCRON_OVERDUE_GRACE_SECONDS", _int("SMARTCRON_OVERDUE_GRACE_SECONDS", 120, 0),
                                  "a job is overdue this long after its due run's start window closed"),
    # --- retention -------------------------------------------------------------------------------------
    "RETENTION_DAYS": Spec("SMARTCRON_RETENTION_DAYS", _int("SMARTCRON_RETENTION_DAYS", 90, 0),
                           "the daily prune archives and deletes final runs older than this (0 = keep all)"),
    "RETENTION_ARCHIVE_DIR": Spec("SMARTCRON_RETENTION_ARCHIVE_DIR",
                                  lambda: envstr("SMARTCRON_RETENTION_ARCHIVE_DIR", ""),
                                  "where the daily prune writes its .jsonl.gz archives (default VAR_DIR/archive)"),
    "RETENTION_BATCH_SIZE": Spec("SMARTCRON_RETENTION_BATCH_SIZE",
                                 _int("SMARTCRON_RETENTION_BATCH_SIZE", 1000, 1, 100000),
                                 "runs archived and deleted per transaction"),
    "RETENTION_AT": Spec("SMARTCRON_RETENTION_AT", lambda: envstr("SMARTCRON_RETENTION_AT", "17 3"),
                         "'minute hour' (UTC) of the daily prune"),
    "STATS_HOURS_KEPT": Spec("SMARTCRON_STATS_HOURS_KEPT", _int("SMARTCRON_STATS_HOURS_KEPT", 25, 25),
                             "hourly stats buckets kept (the watchdog deletes older ones; the 24 h window needs "
                             "25)"),
    # --- /metrics ---------------------------------------------------------------------------------------
    "METRICS_JOB_HISTOGRAMS": Spec("SMARTCRON_METRICS_JOB_HISTOGRAMS",
                                   lambda: envbool("SMARTCRON_METRICS_JOB_HISTOGRAMS", True),
                                   "per-job duration/memory histograms on /metrics (0: per-slot only, ~60% fewer "
                                   "series with many jobs)"),
    "METRICS_TOKEN": Spec("SMARTCRON_METRICS_TOKEN", lambda: envstr("SMARTCRON_METRICS_TOKEN", ""),
                          "bearer token required by /metrics; empty: only loopback clients without a proxy"),
}


class _Conf:
    """Attribute access to the settings above (Django settings first, then the environment)."""

    def __getattr__(self, name: str) -> Any:
        spec = SPECS.get(name)
        if spec is None:
            raise AttributeError(name)
        return getattr(settings, name, None) if hasattr(settings, name) else spec.read()


conf = _Conf()

SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2, "critical": 3}


def severity_at_least(severity: str, minimum: str) -> bool:
    return SEVERITY_RANK.get(severity, 0) >= SEVERITY_RANK.get(minimum, 1)


def email_connection_kwargs() -> dict[str, Any]:
    """SMTP settings given in the environment (EMAIL_HOST, ...) for ``get_connection``.

    Django's own EMAIL_* settings stay the default; variables present in the environment
    win, so an operator can configure mail without a settings module.
    """
    import os

    out: dict[str, Any] = {}
    if os.environ.get("EMAIL_HOST"):
        out["host"] = envstr("EMAIL_HOST")
    if os.environ.get("EMAIL_PORT"):
        out["port"] = envint("EMAIL_PORT", 25, minimum=1, maximum=65535)
    if os.environ.get("EMAIL_HOST_USER"):
        out["username"] = envstr("EMAIL_HOST_USER")
    if os.environ.get("EMAIL_HOST_PASSWORD") or os.environ.get("EMAIL_HOST_PASSWORD_FILE"):
        out["password"] = envstr("EMAIL_HOST_PASSWORD")
    if os.environ.get("EMAIL_USE_TLS"):
        out["use_tls"] = envbool("EMAIL_USE_TLS")
    if os.environ.get("EMAIL_USE_SSL"):
        out["use_ssl"] = envbool("EMAIL_USE_SSL")
    return out
