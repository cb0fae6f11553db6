from django.db import migrations

DEFAULTS = (
    ("default", 5, 3072, 80, "Ordinary jobs."),
    ("heavy", 2, 4096, 90, "Long or memory-hungry jobs (backups, exports)."),
    ("light", 10, 1024, 50, "Short, small jobs (pings, queue pokes)."),
)


def create_default_slots(apps, schema_editor):
    ExecutionSlot = apps.get_model("slots", "ExecutionSlot")
    for name, jobs, memory, cpu, description in DEFAULTS:
        ExecutionSlot.objects.get_or_create(
            name=name,
            defaults={"max_concurrent": jobs, "memory_budget_mb": memory, "cpu_percent": cpu, "description": description},
        )


class Migration(migrations.Migration):
    dependencies = [("slots", "0001_initial")]
    operations = [migrations.RunPython(create_default_slots, migrations.RunPython.noop)]
