"""Task list pagination: ``page`` + ``limit`` (or ``limit`` + ``offset``) as everywhere, plus a
keyset ``cursor`` mode whose cost does not grow with depth.

Cursor mode starts with ``?pagination=cursor`` and continues with the ``next`` link, which
carries ``cursor=<opaque>``. The cursor holds the sort key values of the last row (and the
ordering it belongs to); the next page is ``WHERE (sort key, id) after (those values)``,
served by the same index as the first page. No ``count`` is given in this mode: counting
is what grows with depth.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import F, OrderBy, Q, QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

from core.pagination import DEFAULT_LIMIT, MAX_LIMIT, PageNumberLimitPagination, _int_param

# (field name, descending, nulls last)
SortKey = tuple[str, bool, bool]


def sort_keys(queryset: QuerySet) -> list[SortKey]:
    """The queryset's ORDER BY as plain (field, descending, nulls_last) keys."""
    keys: list[SortKey] = []
    for item in queryset.query.order_by or queryset.model._meta.ordering:
        if isinstance(item, str):
            keys.append((item.lstrip("-"), item.startswith("-"), False))
        elif isinstance(item, OrderBy) and isinstance(item.expression, F):
            keys.append((item.expression.name, item.descending, bool(item.nulls_last)))
        else:  # pragma: no cover - a programming error, not a client one
            raise TypeError(f"cursor pagination cannot page on {item!r}")
    return keys


def after(keys: list[SortKey], values: list[Any]) -> Q:
    """Rows strictly after ``values`` in the order ``keys`` (lexicographic; nulls last)."""
    condition = Q(pk__in=[])
    equal_so_far = Q()
    for (field, descending, nulls_last), value in zip(keys, values, strict=True):
        if value is None:
            # Nothing sorts after a null (nulls last) within this key.
            equal_here = Q(**{f"{field}__isnull": True})
        else:
            beyond = Q(**{f"{field}__{'lt' if descending else 'gt'}": value})
            if nulls_last:
                beyond |= Q(**{f"{field}__isnull": True})
            condition |= equal_so_far & beyond
            equal_here = Q(**{field: value})
        equal_so_far &= equal_here
    (field, descending, nulls_last), value = keys[0], values[0]
    if value is not None and not nulls_last:
        # Redundant but decisive: the OR above is only a filter to the planner, which would walk
        # the index from the start of the range and discard every row before the cursor (3.5x
        # the first page's cost at page 500). This bound is an index condition: the scan starts
        # at the cursor, so a deep page costs what the first one does.
        condition &= Q(**{f"{field}__{'lte' if descending else 'gte'}": value})
    return condition


def _encode_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()  # full microseconds, unlike DjangoJSONEncoder
    return str(value)


class TaskPagination(PageNumberLimitPagination):
    cursor_query_param = "cursor"
    mode_query_param = "pagination"

    def paginate_queryset(self, queryset: QuerySet, request: Request, view: Any = None) -> list[Any]:
        mode = request.query_params.get(self.mode_query_param)
        if mode not in (None, "page", "cursor"):
            raise ValidationError(
                {self.mode_query_param: ["Must be 'page' or 'cursor'."]}, code="invalid_choice"
            )
        # An empty cursor (``cursor=``) is no cursor: it documents as a string, so "" is valid.
        self.cursor_mode = bool(request.query_params.get(self.cursor_query_param)) or mode == "cursor"
        if not self.cursor_mode:
            return super().paginate_queryset(queryset, request, view)
        for name in (self.page_query_param, self.offset_query_param):
            if name in request.query_params:
                raise ValidationError({name: ["Not used in cursor pagination; follow the next link."]})
        self.request = request
        self.limit = _int_param(request, self.limit_query_param, DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT
        self.keys = sort_keys(queryset)
        raw = request.query_params.get(self.cursor_query_param)
        if raw:
            queryset = queryset.filter(after(self.keys, self._decode(queryset, raw)))
        rows = list(queryset[: self.limit + 1])
        self.next_values = None
        if len(rows) > self.limit:
            rows = rows[: self.limit]
            self.next_values = [getattr(rows[-1], field) for field, _, _ in self.keys]
        return rows

    def _signature(self) -> list[str]:
        return [f"{'-' if desc else ''}{field}" for field, desc, _ in self.keys]

    def _encode(self, values: list[Any]) -> str:
        payload = json.dumps({"o": self._signature(), "v": [_encode_value(v) for v in values]})
        return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")

    def _decode(self, queryset: QuerySet, raw: str) -> list[Any]:
        invalid = ValidationError({self.cursor_query_param: ["Invalid cursor."]}, code="invalid_cursor")
        try:
            payload = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            order, values = payload["o"], payload["v"]
        except (ValueError, TypeError, KeyError, binascii.Error):
            raise invalid from None
        if order != self._signature():
            raise ValidationError(
                {self.cursor_query_param: ["This cursor belongs to another sort order; start again."]},
                code="cursor_mismatch",
            )
        if not isinstance(values, list) or len(values) != len(self.keys):
            raise invalid
        try:
            return [
                None if value is None else queryset.model._meta.get_field(field).to_python(value)
                for (field, _, _), value in zip(self.keys, values, strict=True)
            ]
        except DjangoValidationError:
            raise invalid from None

    def get_paginated_response(self, data: list[Any]) -> Response:
        if not self.cursor_mode:
            return super().get_paginated_response(data)
        next_link = None
        if self.next_values is not None:
            url = self.request.build_absolute_uri()
            url = remove_query_param(url, self.mode_query_param)
            url = replace_query_param(url, self.limit_query_param, self.limit)
            next_link = replace_query_param(url, self.cursor_query_param, self._encode(self.next_values))
        return Response({"next": next_link, "results": data})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        response = super().get_paginated_response_schema(schema)
        response["required"] = ["results"]
        response["description"] = "Page mode has count, next and previous; cursor mode has next only."
        return response

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            *super().get_schema_operation_parameters(view),
            {
                "name": self.mode_query_param,
                "required": False,
                "in": "query",
                "description": "`cursor` starts keyset pagination (cost independent of depth).",
                "schema": {"type": "string", "enum": ["page", "cursor"]},
            },
            {
                "name": self.cursor_query_param,
                "required": False,
                "in": "query",
                "description": "Opaque cursor from a previous page's `next` link (not with page/offset).",
                "schema": {"type": "string"},
            },
        ]
