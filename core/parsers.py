"""The API's JSON parser: DRF's, made safe against bodies it would choke on.

- JSON nested deeper than Python's recursion limit raised RecursionError inside ``json.loads``:
  a 500 (found by tests/hardening/test_bad_input.py with ``[`` * 100,000). Any RecursionError
  is now a 400, and so is nesting deeper than ``MAX_DEPTH`` (stored JSON is re-serialized
  and compared later; nothing legitimate nests 64 levels deep).
- A chunked body has no Content-Length, so BodySizeLimitMiddleware cannot see its size; the
  parser reads at most TASKFORGE_MAX_BODY_BYTES + 1 bytes and answers 413 beyond that,
  instead of reading the whole stream into memory.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

from django.conf import settings
from rest_framework import exceptions, parsers, status

MAX_DEPTH = 64


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


def _too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        limit = settings.TASKFORGE_MAX_BODY_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise PayloadTooLarge(f"The request body is over {limit} bytes.")
        try:
            text = codecs.decode(raw, encoding)
            data = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None
        except ValueError as exc:
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
        if _too_deep(data):
            raise exceptions.ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels.")
        return data


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (DRF's STRICT_JSON refuses them the same way).
    raise ValueError(f"{name} is not valid JSON")
