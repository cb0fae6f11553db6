from celery import shared_task


@shared_task(name="discovery.refresh_peer", ignore_result=True)
def refresh_peer() -> str:
    """Daily refresh of the peer's schedule (a failure keeps the cache and raises an alert)."""
    from discovery.peer import refresh

    schedule, error = refresh()
    return error or f"{len(schedule.jobs) if schedule else 0} peer job(s) cached"
