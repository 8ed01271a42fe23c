"""``POST /hooks/<id>``: where outside systems call a trigger. Not an API view: no API key,
no session, no CSRF; the trigger's own ``auth`` is the authentication.

The steps, each answering before the next reads more of the request:

1. an unknown id, a malformed one and a disabled trigger all answer the same 404;
2. a declared Content-Length over the trigger's ``max_body_bytes`` is a 413 before anything is
   read; a body without one is read up to that size + 1 and refused past it;
3. the signature or token (``triggers.verify``): a 401 that stores nothing; failures count
   against the caller's address (the anonymous API rate), so guessing is throttled;
4. the trigger's own rate limit (``core.ratelimit``, counted per trigger): 429;
5. ``services.delivery_receive``: dedupe, filters, mapping, the template's trigger.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import Throttled

from core.errors import PROBLEM_CONTENT_TYPE, problem
from core.ratelimit import enforce_bucket
from triggers import services
from triggers.models import Trigger
from triggers.verify import Unauthenticated, verify


def _enabled_trigger(trigger_id: str) -> Trigger | None:
    try:
        pk = uuid.UUID(trigger_id)
    except ValueError:
        return None
    return Trigger.objects.select_related("template").filter(pk=pk, enabled=True).first()


def _answer(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


def _problem(request: HttpRequest, status: int, detail: str, **extra: Any) -> HttpResponse:
    """A problem whose ``instance`` is the path without the query (``?token=`` stays out)."""
    body = problem(status, detail, **extra)
    body["instance"] = request.path
    return _answer(JsonResponse(body, status=status, content_type=PROBLEM_CONTENT_TYPE))


def _throttled(request: HttpRequest, exc: Throttled) -> HttpResponse:
    wait = int(exc.wait or 1)
    response = _problem(request, 429, "Rate limit exceeded.", type_="rate-limited", retry_after=wait)
    response["Retry-After"] = str(wait)
    return response


def _read_body(request: HttpRequest, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` (never reading more than limit + 1 bytes)."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None
    body = request.read(limit + 1)
    return None if len(body) > limit else body


@csrf_exempt
def hook(request: HttpRequest, trigger_id: str) -> HttpResponse:
    if request.method != "POST":
        response = _problem(request, 405, "Send the delivery with POST.")
        response["Allow"] = "POST"
        return response
    trigger = _enabled_trigger(trigger_id)
    if trigger is None:
        return _problem(request, 404, "No enabled trigger has this URL.")
    body = _read_body(request, trigger.max_body_bytes)
    if body is None:
        return _problem(
            request,
            413,
            f"The body is over this trigger's limit of {trigger.max_body_bytes} bytes.",
            max_bytes=trigger.max_body_bytes,
        )
    headers = {name.lower(): value for name, value in request.headers.items()}
    try:
        verify(trigger.auth, body, headers, request.GET, trigger.accepted_secrets())
    except Unauthenticated as exc:
        return _refuse(request, str(exc))
    try:
        enforce_bucket(
            request, f"trigger:{trigger.pk}", trigger.rate_limit or settings.TASKFORGE_TRIGGER_RATE_LIMIT
        )
    except Throttled as exc:
        return _throttled(request, exc)
    answer = services.delivery_receive(
        trigger=trigger,
        incoming=services.Incoming(body=body, headers=headers, instance=request.path),
    )
    response = JsonResponse(
        answer.body,
        status=answer.status,
        content_type=PROBLEM_CONTENT_TYPE if answer.status >= 400 else "application/json",
    )
    if answer.duplicate:
        response["Taskforge-Duplicate-Delivery"] = "true"
    return _answer(response)


def _refuse(request: HttpRequest, detail: str) -> HttpResponse:
    """401 for a bad signature or token; past the anonymous rate for this address, 429."""
    try:
        enforce_bucket(
            request,
            f"hook-refused:{request.META.get('REMOTE_ADDR', '')}",
            settings.TASKFORGE_RATE_LIMIT_ANONYMOUS,
        )
    except Throttled as exc:
        return _throttled(request, exc)
    return _problem(request, 401, detail)
