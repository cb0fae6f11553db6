"""The baselines for bench_pipeline: plain Celery tasks running the same subprocess, untracked.

``plain_true`` is the issue's baseline (one hop).  ``plain_hop`` forwards to it from a
second worker: the same two hops (dispatch queue, then the slot queue) that a tracked run
makes, with nothing else, so the bench can show what the hops alone cost.
"""

import subprocess

from celery import shared_task


@shared_task(name="bench.plain_true", ignore_result=True)
def plain_true(counter_key: str) -> None:
    subprocess.run(["/bin/true"], check=False)
    from slots.redis_client import get_redis

    get_redis().incr(counter_key)


@shared_task(name="bench.plain_hop", ignore_result=True)
def plain_hop(counter_key: str, queue: str) -> None:
    plain_true.apply_async((counter_key,), queue=queue)
