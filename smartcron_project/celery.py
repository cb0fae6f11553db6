import os

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smartcron_project.settings")

app = Celery("smartcron")
# All Celery settings live in Django settings under the CELERY_ prefix.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# Database connections of worker threads are kept between tasks (Django's CONN_MAX_AGE,
# checked with CONN_HEALTH_CHECKS) instead of Celery's default of closing them around
# every task: a new connection per task (and on SQLite its PRAGMAs) cost more than the
# task's own queries.  Celery stopped reusing connections because a task interrupted by
# its time limit in the middle of a query can leave one unusable; Smart Cron sets no
# Celery time limits (jobs are timed out by the runner, in the child process), and a
# connection that saw an error is closed by close_old_connections() before the next task.
@task_prerun.connect(weak=False, dispatch_uid="smartcron_db_prerun")
@task_postrun.connect(weak=False, dispatch_uid="smartcron_db_postrun")
def _recycle_db_connections(**_kwargs) -> None:
    from django.db import close_old_connections

    close_old_connections()
