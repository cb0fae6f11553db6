from django.core.management.base import BaseCommand

from jobs.beat_sync import sync_all


class Command(BaseCommand):
    help = "Rebuild the beat schedule from the job registry (after bulk imports or manual DB edits)."

    def handle(self, *args, **opts) -> str:
        counts = sync_all()
        return f"beat schedule synced: {counts['ticked']} job(s) ticked, {counts['removed']} stale task(s) removed"
