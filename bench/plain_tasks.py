"""The baseline for bench_pipeline: a plain Celery task running the same subprocess, untracked."""

import subprocess

from celery import shared_task


@shared_task(name="bench.plain_true", ignore_result=True)
def plain_true(counter_key: str) -> None:
    subprocess.run(["/bin/true"], check=False)
    from slots.redis_client import get_redis

    get_redis().incr(counter_key)
