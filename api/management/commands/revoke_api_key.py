from django.core.management.base import BaseCommand, CommandError

from api.models import ApiKey


class Command(BaseCommand):
    help = "Revoke an API key by name or by the prefix shown in list_api_keys."

    def add_arguments(self, parser) -> None:
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--name", help="Key name.")
        group.add_argument("--prefix", help="Key prefix (the 12 hex digits after 'sck_').")

    def handle(self, *args, **opts) -> str:
        if opts["name"]:
            key = ApiKey.objects.filter(name=opts["name"]).first()
            what = f"--name: no API key named {opts['name']!r}"
        else:
            prefix = opts["prefix"].removeprefix("sck_").split("_")[0]
            key = ApiKey.objects.filter(prefix=prefix).first()
            what = f"--prefix: no API key with prefix {prefix!r}"
        if key is None:
            raise CommandError(what)
        if not key.revoke():
            return f"API key {key.name!r} was already revoked at {key.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
        return f"API key {key.name!r} revoked"
