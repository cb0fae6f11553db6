"""API keys in the admin: created here or by ``create_api_key``; the key is shown once."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from api import keys
from api.models import ApiKey


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "shown_prefix", "scope", "state", "created_at", "created_by", "last_used_at",
                    "last_used_ip", "expires_at")
    list_filter = ("scope", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "prefix")
    list_select_related = ("created_by",)
    actions = ["revoke_keys"]
    readonly_fields = ("shown_prefix", "created_at", "created_by", "last_used_at", "last_used_ip", "revoked_at")

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None):
        if obj is None:
            return ("name", "scope", "expires_at")
        return ("name", "scope", "expires_at", *self.readonly_fields)

    @admin.display(description="key starts with")
    def shown_prefix(self, key: ApiKey) -> str:
        return f"{keys.KEY_PREFIX}_{key.prefix}_…" if key.prefix else "-"

    @admin.display(description="state")
    def state(self, key: ApiKey) -> str:
        if key.revoked_at:
            return "revoked"
        return "active" if key.is_active else "expired"

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        raw, prefix = keys.new_key()
        obj.prefix, obj.key_hash, obj.created_by = prefix, keys.hash_key(raw), request.user
        super().save_model(request, obj, form, change)
        # Kept on the request only, for response_add: never in the session, a cookie or a message.
        request._smartcron_new_api_key = raw

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue=None) -> HttpResponse:
        raw = getattr(request, "_smartcron_new_api_key", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {**self.admin_site.each_context(request), "opts": self.opts, "key": obj, "raw_key": raw,
                   "title": f"API key {obj.name} created"}
        response = TemplateResponse(request, "admin/api/apikey/created.html", context)
        add_never_cache_headers(response)
        return response

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        n = sum(key.revoke() for key in queryset)
        self.message_user(request, f"{n} key(s) revoked.", messages.SUCCESS)
