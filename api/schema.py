"""OpenAPI additions: the API key security schemes and the error responses of every operation."""

from __future__ import annotations

from typing import Any

from drf_spectacular.authentication import SessionScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
                   "description": "400 only: per field, query parameter, header or 'body', the reasons."},
    },
    "required": ["detail", "code"],
}
_ERRORS = {
    "400": "Invalid input: `errors` names each field and the reason.",
    "401": "Missing, invalid, expired or revoked API key.",
    "403": "The key (or user) may not do this (e.g. a read-only key on a write).",
    "404": "No such object.",
    "429": "Too many invalid API keys from this address; retry after `Retry-After` seconds.",
}


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.ApiKeyAuthentication"
    name = ["bearerAuth", "apiKeyHeader"]

    def get_security_requirement(self, auto_schema) -> list[dict[str, list]]:
        # Either header will do.
        return [{"bearerAuth": []}, {"apiKeyHeader": []}]

    def get_security_definition(self, auto_schema) -> list[dict[str, Any]]:
        return [
            {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer sck_..."},
            {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        ]


class StaffSessionScheme(SessionScheme):
    target_class = "api.authentication.StaffSessionAuthentication"


def add_error_responses(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """Document the shared error format on every operation (the exception handler produces it)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Error", ERROR_SCHEMA)
    ref = {"$ref": "#/components/schemas/Error"}
    for item in result.get("paths", {}).values():
        for method, operation in item.items():
            if method not in {"get", "post", "patch", "put", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            for code, text in _ERRORS.items():
                responses.setdefault(code, {"description": text, "content": {"application/json": {"schema": ref}}})
    return result
