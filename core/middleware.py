"""Request id and body-size limit: the two pieces that must wrap every request."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.core.handlers.wsgi import LimitedStream
from django.http import HttpRequest, HttpResponse

from core.errors import problem_response
from core.request_id import set_request_id

# Echo a client's id only when it is short and harmless in logs and headers.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


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
        set_request_id(request_id)
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response["X-Request-ID"] = request.request_id  # type: ignore[attr-defined]
        return response


class BodySizeLimitMiddleware(_DualMiddleware):
    """Every request body is bounded by ``TASKFORGE_MAX_BODY_BYTES`` before a view reads it
    (DRF reads the stream directly, bypassing Django's own upload limit):

    - a declared Content-Length over the limit: 413 at once, nothing read;
    - no Content-Length but a Transfer-Encoding (a chunked body): Django's ``WSGIRequest``
      takes a missing Content-Length for an empty body (it ignores ``wsgi.input_terminated``),
      so the view saw nothing. Where the server de-chunks the body and ends the stream for us
      (gunicorn and most WSGI servers say so with ``wsgi.input_terminated``), it is read here,
      at most limit + 1 bytes: over the limit 413, else it goes on as if it had been sent with
      its Content-Length. Where the server does not (Django's runserver), 411 Length Required;
    - under ASGI Django has already read the body into a file: a body without Content-Length is
      measured and handled the same way.
    """

    CHUNK = 64 * 1024

    def before(self, request: HttpRequest) -> HttpResponse | None:
        limit = settings.TASKFORGE_MAX_BODY_BYTES
        declared = request.META.get("CONTENT_LENGTH")
        if declared:
            try:
                length = int(declared)
            except ValueError:
                length = 0
            return self._too_large(request, length, limit) if length > limit else None
        if isinstance(request, ASGIRequest):
            return self._measure_asgi(request, limit)
        if not request.META.get("HTTP_TRANSFER_ENCODING"):
            return None  # no body (HTTP/1.1: no length and no transfer coding means none)
        if not request.META.get("wsgi.input_terminated"):
            return self._length_required(request)
        body = self._read_terminated(request.META["wsgi.input"], limit)
        if body is None:
            return self._too_large(request, None, limit)
        request._stream = LimitedStream(io.BytesIO(body), len(body))  # type: ignore[attr-defined]
        request.META["CONTENT_LENGTH"] = str(len(body))
        return None

    def _read_terminated(self, stream: Any, limit: int) -> bytes | None:
        """The whole body, or None as soon as it is known to be over ``limit``."""
        parts: list[bytes] = []
        size = 0
        while size <= limit:
            part = stream.read(min(self.CHUNK, limit + 1 - size))
            if not part:
                return b"".join(parts)
            parts.append(part)
            size += len(part)
        return None

    def _measure_asgi(self, request: HttpRequest, limit: int) -> HttpResponse | None:
        stream = request._stream  # type: ignore[attr-defined]
        size = stream.seek(0, io.SEEK_END)
        stream.seek(0)
        if size > limit:
            return self._too_large(request, size, limit)
        if size:
            request.META["CONTENT_LENGTH"] = str(size)
        return None

    @staticmethod
    def _too_large(request: HttpRequest, length: int | None, limit: int) -> HttpResponse:
        said = f"is {length} bytes" if length is not None else f"is over {limit} bytes"
        return problem_response(
            request, 413, f"The request body {said}; the limit is {limit} bytes.", max_bytes=limit
        )

    @staticmethod
    def _length_required(request: HttpRequest) -> HttpResponse:
        return problem_response(
            request,
            411,
            "This server cannot read a body without Content-Length here: send Content-Length.",
        )


class ApiNoStoreMiddleware(_DualMiddleware):
    """``Cache-Control: no-store`` on every API response that sets no Cache-Control itself.

    API responses carry tenant data, and some carry a secret shown once (a new API key, a
    webhook's signing secret at creation and rotation): no browser or shared cache may keep
    them. The API has no conditional requests, so nothing is lost.
    """

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if request.path.startswith("/api/v1/") and not response.has_header("Cache-Control"):
            response["Cache-Control"] = "no-store"
        return response
