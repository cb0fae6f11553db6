from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

# The three slots every installation starts with (created by migration 0002 and by
# ensure_default_slots(), which tests call after a flush).
DEFAULT_SLOTS = (
    {"name": "default", "max_concurrent": 5, "memory_budget_mb": 3072, "cpu_percent": 80,
     "description": "Ordinary jobs."},
    {"name": "heavy", "max_concurrent": 2, "memory_budget_mb": 4096, "cpu_percent": 90,
     "description": "Long or memory-hungry jobs (backups, exports)."},
    {"name": "light", "max_concurrent": 10, "memory_budget_mb": 1024, "cpu_percent": 50,
     "description": "Short, small jobs (pings, queue pokes)."},
)


class ExecutionSlot(models.Model):
    """A pool of execution capacity; its name is also the Celery queue its worker consumes."""

    name = models.CharField(
        max_length=50,
        unique=True,
        validators=[RegexValidator(r"^[a-z][a-z0-9_-]*$", "lowercase letters, digits, '-' and '_' only")],
    )
    description = models.CharField(max_length=255, blank=True)
    max_concurrent = models.PositiveIntegerField(
        default=5, validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text="How many runs may hold a lease at once, cluster-wide.",
    )
    memory_budget_mb = models.PositiveIntegerField(
        default=3072, validators=[MinValueValidator(1)],
        help_text="Sum of the expected peaks of the runs admitted at once.",
    )
    cpu_percent = models.PositiveIntegerField(
        default=80, validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Share of the host's CPU the slot's running jobs may claim (by cpu weight).",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def queue(self) -> str:
        return self.name


def ensure_default_slots() -> None:
    for spec in DEFAULT_SLOTS:
        ExecutionSlot.objects.get_or_create(name=spec["name"], defaults=spec)
