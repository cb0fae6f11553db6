from django.apps import AppConfig
from django.core import checks


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "API"

    def ready(self) -> None:
        # api.schema (the OpenAPI security schemes) is imported by api/urls.py, not here: it
        # pulls in DRF and drf-spectacular, which Celery workers, beat and Flower never use.
        checks.register(check_pepper, checks.Tags.security, deploy=False)


def check_pepper(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """A dedicated pepper must be long enough to be a secret."""
    from api import conf

    pepper = str(conf.get("API_KEY_PEPPER") or "")
    if pepper and len(pepper) < 32:
        return [checks.Error("SMARTCRON_API_KEY_PEPPER is shorter than 32 characters",
                             hint="use e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))'",
                             id="api.E001")]
    return []
