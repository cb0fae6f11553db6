from django.core.management.base import BaseCommand, CommandError

from smartcron_project.launcher import Stack


class Command(BaseCommand):
    help = ("Run the whole Smart Cron stack on this machine: Redis (bundled, unless REDIS_URL is set), migrations, "
            "an admin login, web + admin, beat, the dispatch worker, one worker per slot and Flower.")
    # The system checks run in the `manage.py migrate` child that the launcher starts first
    # (smartcron_project/launcher.py), so that this long-lived process never imports the URLconf.
    requires_system_checks = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("--demo", action="store_true", help="Load the example jobs from examples/.")
        parser.add_argument("--host", default="127.0.0.1", help="Address to bind web and Flower to (default loopback).")
        parser.add_argument("--port", type=int, default=8000, help="Web port (default 8000).")
        parser.add_argument("--flower-port", type=int, default=5555, help="Flower port (default 5555).")
        # Django adds this option only to commands that run the checks themselves.
        parser.add_argument("--skip-checks", action="store_true", help="Skip system checks.")

    def handle(self, *args, **opts) -> None:
        try:
            code = Stack(self.stdout, host=opts["host"], web_port=opts["port"], flower_port=opts["flower_port"],
                         demo=opts["demo"], skip_checks=opts.get("skip_checks", False)).run()
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        if code:
            raise CommandError("a component stopped unexpectedly")
