import datetime as dt

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from api.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key and print it once (only a keyed hash is stored)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", required=True, help="Who or what uses the key, e.g. grafana.")
        parser.add_argument("--read-only", action="store_true", help="Read-only key (default: read-write).")
        parser.add_argument("--expires-days", type=int, default=None, help="Stop working after this many days.")

    def handle(self, *args, **opts) -> str:
        expires = None
        if opts["expires_days"] is not None:
            if opts["expires_days"] < 1:
                raise CommandError("--expires-days: must be at least 1")
            expires = timezone.now() + dt.timedelta(days=opts["expires_days"])
        scope = ApiKey.Scope.READ_ONLY if opts["read_only"] else ApiKey.Scope.READ_WRITE
        try:
            key, raw = ApiKey.objects.issue(opts["name"], scope=scope, expires_at=expires)
        except ValidationError as exc:
            field, messages = next(iter(exc.message_dict.items()))
            raise CommandError(f"--{field}: {'; '.join(messages)}") from None
        self.stderr.write(f"Created {key.get_scope_display().lower()} API key {key.name!r}. "
                          "Copy it now: it is shown only this once.")
        # The key alone on stdout, so that scripts can capture it: KEY=$(manage.py create_api_key ...)
        return raw
