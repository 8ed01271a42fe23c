"""One pagination class: ``page`` + ``limit`` (or ``limit`` + ``offset``).

Out-of-range values are a 400 problem, never silently clamped: a client asking for
``limit=500`` learns the maximum instead of getting fewer rows than it thinks.
"""

from __future__ import annotations

from typing import Any

from django.core.paginator import InvalidPage
from django.db.models import QuerySet
from rest_framework import pagination
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def _int_param(request: Request, name: str, default: int | None, low: int, high: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:  # "" is not an integer: a 400 like any other (schemathesis: page=)
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError({name: [f"Must be an integer, got {raw!r}."]}, code="invalid") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValidationError({name: [f"Must be {bound}, got {value}."]}, code="out_of_range")
    return value


class PageNumberLimitPagination(pagination.BasePagination):
    page_query_param = "page"
    limit_query_param = "limit"
    offset_query_param = "offset"

    def paginate_queryset(self, queryset: QuerySet, request: Request, view: Any = None) -> list[Any]:
        self.request = request
        self.limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT
        page = _int_param(request, "page", None, 1, None)
        offset = _int_param(request, "offset", None, 0, None)
        if page is not None and offset is not None:
            raise ValidationError({"offset": ["Use either page or offset, not both."]}, code="conflict")
        self.offset = offset if offset is not None else ((page or 1) - 1) * self.limit
        self.use_offset = offset is not None
        self.count = queryset.count()
        if self.offset and self.offset >= self.count:
            raise NotFound(f"Page out of range: there are {self.count} results.")
        try:
            return list(queryset[self.offset : self.offset + self.limit])
        except InvalidPage as exc:  # pragma: no cover - slicing never raises it
            raise NotFound(str(exc)) from exc

    def _link(self, offset: int | None) -> str | None:
        if offset is None:
            return None
        url = self.request.build_absolute_uri()
        url = replace_query_param(url, self.limit_query_param, self.limit)
        if self.use_offset:
            return replace_query_param(url, self.offset_query_param, offset)
        url = remove_query_param(url, self.offset_query_param)
        return replace_query_param(url, self.page_query_param, offset // self.limit + 1)

    def get_paginated_response(self, data: list[Any]) -> Response:
        next_offset = self.offset + self.limit if self.offset + self.limit < self.count else None
        prev_offset = max(0, self.offset - self.limit) if self.offset > 0 else None
        return Response(
            {
                "count": self.count,
                "next": self._link(next_offset),
                "previous": self._link(prev_offset),
                "results": data,
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["count", "results"],
            "properties": {
                "count": {"type": "integer", "example": 123},
                "next": {"type": "string", "nullable": True, "format": "uri"},
                "previous": {"type": "string", "nullable": True, "format": "uri"},
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        def param(name: str, description: str, minimum: int, maximum: int | None = None) -> dict[str, Any]:
            schema: dict[str, Any] = {"type": "integer", "minimum": minimum}
            if maximum:
                schema["maximum"] = maximum
            return {
                "name": name,
                "required": False,
                "in": "query",
                "description": description,
                "schema": schema,
            }

        return [
            param("page", "Page number (1-based). Not together with `offset` (400).", 1),
            param("limit", f"Results per page (default {DEFAULT_LIMIT}, max {MAX_LIMIT}).", 1, MAX_LIMIT),
            param("offset", "Start at this result instead of a page number; not with `page`.", 0),
        ]
