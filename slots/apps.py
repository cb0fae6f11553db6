from __future__ import annotations

from django.apps import AppConfig


class SlotsConfig(AppConfig):
    name = "slots"
    verbose_name = "Execution slots"

    def ready(self) -> None:
        from celery.signals import worker_ready

        from jobs import hooks
        from slots import conf, dependencies

        conf.check()  # a malformed SMARTCRON_HOST_GUARD_* value stops start-up, naming it
        hooks.on_run_finished(dependencies.on_run_finished)
        worker_ready.connect(_start_host_guard, dispatch_uid="smartcron_host_guard", weak=False)


def _start_host_guard(sender=None, **kwargs) -> None:
    """In a worker that consumes slot queues (not only dispatch), watch host memory."""
    from django.conf import settings

    from slots.host_guard import start_guard

    try:
        queues = list(sender.app.amqp.queues.consume_from)
    except AttributeError:
        return
    slot_queues = [q for q in queues if q != settings.DISPATCH_QUEUE]
    if slot_queues:
        start_guard(slot_queues)
