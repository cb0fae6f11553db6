from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self) -> None:
        from jobs import metrics, signals  # noqa: F401  (signals connects the beat sync)

        # Run metrics, baselines, anomalies, alerts, breaker: see jobs/metrics.py.
        metrics.install()
