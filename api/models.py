"""API keys: stored only as a keyed hash, scoped read-only or read-write, revocable."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from api import keys


class ApiKeyQuerySet(models.QuerySet):
    def usable(self) -> ApiKeyQuerySet:
        """Keys that may authenticate now (not revoked, not expired)."""
        now = timezone.now()
        not_expired = models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        return self.filter(not_expired, revoked_at__isnull=True)

    def issue(self, name: str, *, scope: str, created_by=None, expires_at: dt.datetime | None = None
              ) -> tuple[ApiKey, str]:
        """Create a key; return (row, the full key).  The full key is never stored: show it once."""
        for _ in range(5):
            raw, prefix = keys.new_key()
            key = ApiKey(name=name, scope=scope, prefix=prefix, key_hash=keys.hash_key(raw),
                         created_by=created_by, expires_at=expires_at)
            key.full_clean(exclude=["prefix", "key_hash"])
            try:
                with transaction.atomic():
                    key.save()
            except IntegrityError:
                # A prefix collision (2^48 space) is astronomically rare; a name clash is not
                # retried because full_clean above already refused it.
                continue
            return key, raw
        raise RuntimeError("could not allocate a unique API key prefix")


class ApiKey(models.Model):
    class Scope(models.TextChoices):
        READ_ONLY = "read", "Read only"
        READ_WRITE = "read_write", "Read and write"

    name = models.CharField(
        max_length=100, unique=True,
        validators=[RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$",
                                   "letters, digits, '.', '_', ':', '@' and '-' only, "
                                   "starting with a letter or digit")],
        help_text="Who or what uses the key (e.g. 'grafana', 'deploy-bot').",
    )
    prefix = models.CharField(max_length=16, unique=True, editable=False,
                              help_text="The start of the key, kept in clear to tell keys apart.")
    key_hash = models.CharField(max_length=64, editable=False)
    scope = models.CharField(max_length=12, choices=Scope.choices, default=Scope.READ_ONLY)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Optional: the key stops working then.")
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({keys.KEY_PREFIX}_{self.prefix}_…)"

    @property
    def can_write(self) -> bool:
        return self.scope == self.Scope.READ_WRITE

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())

    def revoke(self) -> bool:
        """Revoke the key (once); returns False if it was already revoked."""
        n = ApiKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.refresh_from_db(fields=["revoked_at"])
        return n == 1

    def touch(self, ip: str | None, every_s: int) -> None:
        """Record use, at most once every ``every_s`` seconds (a conditional UPDATE, no read)."""
        now = timezone.now()
        if self.last_used_at is not None and (now - self.last_used_at).total_seconds() < every_s:
            return
        stale = models.Q(last_used_at__isnull=True) | models.Q(last_used_at__lte=now - dt.timedelta(seconds=every_s))
        ApiKey.objects.filter(stale, pk=self.pk).update(last_used_at=now, last_used_ip=ip)
        self.last_used_at = now
