"""One error format for every API failure.

``{"detail": "<summary>", "code": "<machine code>", "errors": {"<field>": ["<reason>", ...]}}``
(``errors`` only for 400s: the field is a body field, a query parameter, ``body`` for a
body that is not valid JSON, or a header name such as ``Idempotency-Key``).
"""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def _errors(data: Any) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    if isinstance(data, list):
        return {"non_field_errors": data}
    return {"non_field_errors": [data]}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a real bug: Django logs it and answers 500
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"detail": "Invalid input.", "code": "invalid", "errors": _errors(response.data)}
    elif isinstance(exc, exceptions.ParseError):
        response.data = {"detail": "The request body is not valid JSON.", "code": "parse_error",
                         "errors": {"body": [str(exc.detail)]}}
    elif isinstance(exc, exceptions.UnsupportedMediaType):
        response.data = {"detail": str(exc.detail), "code": "unsupported_media_type",
                         "errors": {"Content-Type": ["send the body as application/json"]}}
    else:
        detail = response.data.get("detail", "") if isinstance(response.data, dict) else response.data
        code = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        if isinstance(exc, Http404):
            code = "not_found"
        response.data = {"detail": str(detail), "code": code if isinstance(code, str) else "error"}
    return response


@csrf_exempt  # it changes nothing; a CSRF failure page would only hide the JSON 404
def not_found(request: HttpRequest, *args, **kwargs) -> HttpResponse:
    """Catch-all for unknown /api/ paths: JSON, not the HTML 404 page.

    Like APPEND_SLASH (which this catch-all would otherwise defeat), a GET for an
    endpoint without its trailing slash is redirected to it.
    """
    if not request.path.endswith("/"):
        match = _resolve(request.path_info + "/")
        if match is not None and match.url_name != "not-found":
            if request.method in ("GET", "HEAD"):
                query = request.META.get("QUERY_STRING", "")
                return HttpResponsePermanentRedirect(request.path + "/" + (f"?{query}" if query else ""))
            return JsonResponse({"detail": f"no API endpoint at {request.path}; did you mean {request.path}/ ?",
                                 "code": "not_found"}, status=404)
    return JsonResponse({"detail": f"no API endpoint at {request.path}", "code": "not_found"}, status=404)


def _resolve(path: str):
    try:
        return resolve(path)
    except Resolver404:
        return None
