"""Pagination whose bad parameters are 400s naming the parameter (DRF answers 404 or ignores them)."""

from __future__ import annotations

from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination, PageNumberPagination

from api import conf

MAX_ID = 2**63 - 1


def _page_size(request, default: int) -> int:
    raw = request.query_params.get("page_size")
    if raw is None or raw == "":
        return default
    maximum = int(conf.get("API_MAX_PAGE_SIZE"))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise ValidationError({"page_size": [f"must be an integer between 1 and {maximum}, got {raw[:40]!r}"]})
    return value


class PagePagination(PageNumberPagination):
    """``?page=N&page_size=M`` with a total ``count`` (jobs, alerts)."""

    page_size_query_param = "page_size"

    def get_page_size(self, request) -> int:
        return _page_size(request, int(conf.get("API_PAGE_SIZE")))

    def paginate_queryset(self, queryset, request, view=None):
        raw = request.query_params.get(self.page_query_param, "1")
        if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
            raise ValidationError({"page": [f"must be a positive integer, got {raw[:40]!r}"]})
        try:
            return super().paginate_queryset(queryset, request, view)
        except NotFound:
            raise ValidationError({"page": [f"page {raw} is past the last page"]}) from None


class RunCursorPagination(CursorPagination):
    """Newest runs first, by id: no COUNT and no deep OFFSET over millions of rows."""

    ordering = "-id"
    page_size_query_param = "page_size"
    invalid_cursor_message = "invalid cursor"

    def get_page_size(self, request) -> int:
        return _page_size(request, int(conf.get("API_PAGE_SIZE")))

    def decode_cursor(self, request):
        error = ValidationError({"cursor": ["invalid cursor: use the next/previous links as given"]})
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise error from None
        # The position is a run id taken from client input: it must be one before it reaches SQL.
        position = cursor.position if cursor is not None else None
        if position is not None and not (str(position).isascii() and str(position).isdigit()
                                         and int(position) <= MAX_ID):
            raise error
        return cursor
