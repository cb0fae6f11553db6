import json

from django.core.management.base import BaseCommand

from api.models import ApiKey
from jobs.management.commands._base import table


class Command(BaseCommand):
    help = "List API keys (names, prefixes, scopes, last use; never the keys themselves)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", help="Print JSON (for automation).")

    def handle(self, *args, **opts) -> str:
        rows = []
        for key in ApiKey.objects.select_related("created_by"):
            state = "revoked" if key.revoked_at else ("active" if key.is_active else "expired")
            rows.append({"name": key.name, "prefix": f"sck_{key.prefix}", "scope": key.scope, "state": state,
                         "created_at": key.created_at, "last_used_at": key.last_used_at,
                         "last_used_ip": key.last_used_ip, "expires_at": key.expires_at})
        if opts["json"]:
            return json.dumps(rows, indent=2, default=str)
        if not rows:
            return "no API keys (create one with: manage.py create_api_key --name NAME [--read-only])"
        fmt = "%Y-%m-%d %H:%M"
        return table([[r["name"], r["prefix"], r["scope"], r["state"], r["created_at"].strftime(fmt),
                       r["last_used_at"].strftime(fmt) if r["last_used_at"] else "never", r["last_used_ip"] or "-"]
                      for r in rows], ["name", "prefix", "scope", "state", "created", "last used", "from"])
