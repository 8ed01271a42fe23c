"""Request id and body-size limit: the two pieces that must wrap every request."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# Echo a client's id only when it is short and harmless in logs and headers.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def get_request_id() -> str | None:
    return _request_id.get()


class RequestIDLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get() or "-"
        return True


class _DualMiddleware:
    """Middleware that runs natively in both WSGI and ASGI (no thread hop under ASGI)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def before(self, request: HttpRequest) -> HttpResponse | None:
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        early = self.before(request)
        response = early if early is not None else self.get_response(request)
        return self.after(request, response)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        early = self.before(request)
        response = early if early is not None else await self.get_response(request)
        return self.after(request, response)


class RequestIDMiddleware(_DualMiddleware):
    """Every response carries ``X-Request-ID``: the client's own (when sane) or a new one."""

    def before(self, request: HttpRequest) -> None:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        _request_id.set(request_id)
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response["X-Request-ID"] = request.request_id  # type: ignore[attr-defined]
        return response


class BodySizeLimitMiddleware(_DualMiddleware):
    """413 problem for a declared body over ``TASKFORGE_MAX_BODY_BYTES``, before anything
    reads it (DRF reads the stream directly, bypassing Django's own upload limit)."""

    def before(self, request: HttpRequest) -> HttpResponse | None:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        limit = settings.TASKFORGE_MAX_BODY_BYTES
        if length > limit:
            from config.errors import problem_response

            return problem_response(
                request,
                413,
                f"The request body is {length} bytes; the limit is {limit} bytes.",
                max_bytes=limit,
            )
        return None
