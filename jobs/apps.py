from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from jobs import metrics, signals  # noqa: F401  (signals connects the beat sync)
        from smartcron_project import sqlite_wal

        # SQLite: WAL checkpoints in a background thread instead of inside commits.
        connection_created.connect(sqlite_wal.on_connection_created, dispatch_uid="smartcron-sqlite-checkpoint")

        # Run metrics, baselines, anomalies, alerts, breaker: see jobs/metrics.py.
        metrics.install()
