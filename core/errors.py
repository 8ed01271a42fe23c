"""RFC 9457 problem documents for every error, from DRF views and from Django itself."""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.exceptions import (
    DisallowedHost,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django_ratelimit.exceptions import Ratelimited
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler

from core.request_id import get_request_id

logger = logging.getLogger("taskforge.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:taskforge:problem:"

TITLES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    410: "Gone",
    411: "Length required",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}
# Problem type per status unless the exception says otherwise.
DEFAULT_TYPES = {
    400: "bad-request",
    401: "not-authenticated",
    403: "permission-denied",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    410: "gone",
    411: "length-required",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "unprocessable",
    429: "rate-limited",
    500: "server-error",
    503: "unavailable",
}


class Conflict(exceptions.APIException):
    """409: the request is valid but the resource's state forbids it."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The resource's current state does not allow this."
    default_code = "conflict"

    def __init__(self, detail: str, code: str = "conflict", **extra: Any) -> None:
        super().__init__(detail=detail, code=code)
        self.extra = extra


def problem(
    status_code: int,
    detail: str,
    *,
    request: HttpRequest | None = None,
    type_: str | None = None,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    kind = type_ or DEFAULT_TYPES.get(status_code, "error")
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + kind,
        # The kind again, machine-readable (the 409s' documentation says "see `code`").
        "code": kind.replace("-", "_"),
        "title": title or TITLES.get(status_code, "Error"),
        "status": status_code,
        "detail": detail,
        "instance": request.get_full_path() if request is not None else None,
        "request_id": get_request_id(),
    }
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    return body


def flatten_errors(detail: Any, field: str | None = None) -> list[dict[str, Any]]:
    """DRF's nested error detail as a flat ``[{field, code, message}]`` list."""
    if isinstance(detail, dict):
        out: list[dict[str, Any]] = []
        for key, value in detail.items():
            if key in ("non_field_errors", "__all__"):
                path = field
            elif isinstance(key, int) or str(key).isdigit():  # list items: DRF keys them by index
                path = f"{field or ''}[{key}]"
            else:
                path = f"{field}.{key}" if field else str(key)
            out.extend(flatten_errors(value, path))
        return out
    if isinstance(detail, list):
        out = []
        for index, item in enumerate(detail):
            if isinstance(item, dict | list):
                out.extend(flatten_errors(item, f"{field}[{index}]" if field else f"[{index}]"))
            else:
                out.extend(flatten_errors(item, field))
        return out
    return [{"field": field, "code": getattr(detail, "code", None) or "invalid", "message": str(detail)}]


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every handled error becomes a problem document."""
    request = context.get("request")
    if isinstance(exc, Ratelimited):  # a PermissionDenied subclass: it is a 429, not a 403
        exc = exceptions.Throttled()
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(as_serializer_error(exc))
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # unhandled: Django's handler500 answers with a problem
    assert isinstance(exc, exceptions.APIException)
    code = response.status_code
    extra: dict[str, Any] = dict(getattr(exc, "extra", {}) or {})
    errors = None
    if isinstance(exc, exceptions.ValidationError):
        errors = flatten_errors(exc.detail)
        detail = (
            "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors[:5])
            or "Invalid input."
        )
        type_ = "validation-error"
    else:
        detail = str(exc.detail) if not isinstance(exc.detail, dict | list) else "Request failed."
        codes = exc.get_codes()
        type_ = codes.replace("_", "-") if isinstance(codes, str) and code != 429 else None
        if isinstance(exc, exceptions.Throttled):
            type_ = "rate-limited"
            if exc.wait is not None:
                extra["retry_after"] = int(exc.wait)
    if hasattr(exc, "required_scope"):
        extra["required_scope"] = exc.required_scope
    response.data = problem(code, detail, request=request, type_=type_, errors=errors, **extra)
    response.content_type = PROBLEM_CONTENT_TYPE
    return response


def _wants_problem(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/health")) or "json" in request.headers.get("Accept", "")


def problem_response(request: HttpRequest, status_code: int, detail: str, **extra: Any) -> JsonResponse:
    return JsonResponse(
        problem(status_code, detail, request=request, **extra),
        status=status_code,
        content_type=PROBLEM_CONTENT_TYPE,
    )


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_problem(request):
        return problem_response(request, 404, f"No route or resource matches {request.path}.")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)  # type: ignore[arg-type]


# A database that went away (restarting, failing over, a pool with no connection to lend):
# the request may well succeed in a few seconds, so it is a 503 with Retry-After, not a 500.
DATABASE_UNAVAILABLE_RETRY_AFTER = 5


def handler500(request: HttpRequest) -> HttpResponse:
    exc = sys.exc_info()[1]  # Django calls this inside the except block of the failed request
    if isinstance(exc, OperationalError | InterfaceError):
        logger.warning(
            "Database unavailable on %s %s (request id %s): %s",
            request.method,
            request.path,
            get_request_id(),
            (str(exc).strip().splitlines() or [type(exc).__name__])[0],
        )
        response = problem_response(
            request,
            503,
            "The database is unavailable for a moment; retry shortly.",
            type_="database-unavailable",
            retry_after=DATABASE_UNAVAILABLE_RETRY_AFTER,
        )
        response["Retry-After"] = str(DATABASE_UNAVAILABLE_RETRY_AFTER)
        return response
    logger.error("Unhandled error on %s %s (request id %s)", request.method, request.path, get_request_id())
    return problem_response(
        request,
        500,
        "An unexpected error occurred. Quote the request_id when reporting it.",
    )


# What a 400 from Django itself (a SuspiciousOperation) says. Never the exception's own text:
# DisallowedHost's names the Host the client sent and tells it how to get it accepted.
BAD_REQUEST_DETAILS: dict[type[Exception], tuple[str, str]] = {
    DisallowedHost: ("Bad Request: invalid Host header.", "invalid-host"),
    RequestDataTooBig: ("Bad Request: the request body is too large.", "bad-request"),
    TooManyFieldsSent: ("Bad Request: too many form fields.", "bad-request"),
    TooManyFilesSent: ("Bad Request: too many files.", "bad-request"),
}


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    detail, type_ = next(
        (value for cls, value in BAD_REQUEST_DETAILS.items() if isinstance(exception, cls)),
        ("Bad request.", "bad-request"),
    )
    return problem_response(request, 400, detail, type_=type_)


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_problem(request):
        return problem_response(request, 403, "Forbidden.")
    from django.views.defaults import permission_denied

    return permission_denied(request, exception)  # type: ignore[arg-type]


def field_error(field: str, message: str, code: str) -> DjangoValidationError:
    """A Django ValidationError for one field that keeps its code through to the problem."""
    return DjangoValidationError({field: [DjangoValidationError(message, code=code)]})
