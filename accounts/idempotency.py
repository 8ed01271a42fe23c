"""``Idempotency-Key`` for creating POSTs: one reusable decorator for viewset actions.

The same key from the same principal (API key, or user for session logins) within 24 h replays
the first response (status, body, ``Location``, plus ``Idempotent-Replayed: true``); the same
key with a different request (method, path or body) answers 422; a duplicate that arrives while
the first is still running answers 409.

How exactly one task or execution is created whatever the race:

1. Before the view runs, insert the key row (state ``in_flight``, the request's fingerprint)
   in its own, committed transaction. The unique constraint on (principal, key) lets exactly
   one request win; the losers read the row: in flight -> 409, completed with the same
   fingerprint -> replay, a different fingerprint -> 422.
2. The winner runs the view. Without ``?wait`` the view's writes and the stored response are
   committed in one transaction, so a crash either leaves nothing created (and the key in
   flight, taken over after ``TASKFORGE_IDEMPOTENCY_LOCK_SECONDS``) or both. With ``?wait=N``
   the creation must commit before waiting, so the response is stored right after the view;
   only a crash in that instant can leave a created execution with a key in flight.
3. Responses stored: 2xx and the 4xx that depend on the request alone (400, 413, 415, 422).
   For a 5xx, an unexpected error, or a 4xx that may change without the request changing
   (403, 404, 409, 429), the row is deleted, so a retry with the same key runs again.
4. Rows expire after ``TASKFORGE_IDEMPOTENCY_TTL_SECONDS``; an expired key is reused as new,
   and ``prune()`` (``manage.py prune_idempotency_keys``) deletes them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import exceptions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder

from accounts.models import ApiKey, IdempotencyKey, IdempotencyState
from core.errors import Conflict
from core.openapi import ProblemSerializer

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
# 4xx answers that depend on the request alone: replaying them is faithful.
STORED_CLIENT_ERRORS = frozenset({400, 413, 415, 422})
KEPT_HEADERS = ("Location",)

IDEMPOTENCY_PARAMETER = OpenApiParameter(
    HEADER,
    {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    OpenApiParameter.HEADER,
    required=False,
    description="Up to 255 printable ASCII characters, unique per request you mean to make once. "
    "Retrying with the same key within 24 h replays the first response (header "
    "`Idempotent-Replayed: true`); the same key with a different body answers 422; "
    "while the first request is still running, 409.",
)


def idempotency_responses() -> dict[int, OpenApiResponse]:
    return {
        409: OpenApiResponse(
            ProblemSerializer, description="Conflict (or a request with this Idempotency-Key is in flight)"
        ),
        422: OpenApiResponse(
            ProblemSerializer, description="This Idempotency-Key was used for a different request"
        ),
    }


class IdempotencyKeyReused(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "This Idempotency-Key was already used for a different request."
    default_code = "idempotency_key_reused"


def ttl() -> timedelta:
    return timedelta(seconds=settings.TASKFORGE_IDEMPOTENCY_TTL_SECONDS)


def lock_timeout() -> timedelta:
    return timedelta(seconds=settings.TASKFORGE_IDEMPOTENCY_LOCK_SECONDS)


def principal_of(request: Request) -> str:
    """Keys are scoped per principal: the API key, or the user of a session login."""
    if isinstance(request.auth, ApiKey):
        return f"key:{request.auth.pk}"
    return f"user:{request.user.pk}"


def fingerprint(request: Request) -> str:
    """sha256 of the method, the path (without the query string) and the canonical JSON body."""
    body = json.dumps(request.data, sort_keys=True, separators=(",", ":"), cls=JSONEncoder)
    raw = f"{request.method}\n{request.path}\n{body}".encode()
    return hashlib.sha256(raw).hexdigest()


def _replay(row: IdempotencyKey) -> Response:
    headers = {**row.response_headers.get("headers", {}), REPLAYED_HEADER: "true"}
    return Response(
        row.response_body,
        status=row.status_code,
        headers=headers,
        content_type=row.response_headers.get("content_type"),
    )


def claim(principal: str, key: str, fp: str) -> IdempotencyKey | Response:
    """Take the key for this request (the row), or answer for it (replay; 409 and 422 raise)."""
    for _attempt in range(5):
        now = timezone.now()
        try:
            with transaction.atomic():
                return IdempotencyKey.objects.create(
                    principal=principal, key=key, fingerprint=fp, locked_at=now, expires_at=now + ttl()
                )
        except IntegrityError:
            pass
        existing = IdempotencyKey.objects.filter(principal=principal, key=key).first()
        if existing is None:
            continue  # released meanwhile: try again
        if existing.expires_at <= now:
            IdempotencyKey.objects.filter(pk=existing.pk, expires_at=existing.expires_at).delete()
            continue
        if existing.fingerprint != fp:
            raise IdempotencyKeyReused()
        if existing.state == IdempotencyState.COMPLETED:
            return _replay(existing)
        if existing.locked_at < now - lock_timeout():
            # The first request died without finishing (nothing it did was committed without
            # its response, see the module docstring): take the key over.
            taken = IdempotencyKey.objects.filter(
                pk=existing.pk, state=IdempotencyState.IN_FLIGHT, locked_at=existing.locked_at
            ).update(locked_at=now)
            if taken:
                existing.locked_at = now
                return existing
        raise Conflict(
            "A request with this Idempotency-Key is still being processed; retry later.",
            code="idempotency_in_flight",
        )
    raise Conflict("This Idempotency-Key is contended; retry later.", code="idempotency_in_flight")


def complete(row: IdempotencyKey, response: Response) -> None:
    """Store the response the key will replay."""
    body = None if response.data is None else json.loads(json.dumps(response.data, cls=JSONEncoder))
    headers = {name: response[name] for name in KEPT_HEADERS if response.has_header(name)}
    IdempotencyKey.objects.filter(pk=row.pk).update(
        state=IdempotencyState.COMPLETED,
        status_code=response.status_code,
        response_body=body,
        response_headers={"headers": headers, "content_type": response.content_type},
    )


def release(row: IdempotencyKey) -> None:
    """Forget the key so a retry runs again (5xx, unexpected errors, transient 4xx)."""
    IdempotencyKey.objects.filter(pk=row.pk, state=IdempotencyState.IN_FLIGHT).delete()


def prune(now: datetime | None = None) -> int:
    """Delete expired keys; returns how many. Safe to run anywhere, any time."""
    deleted, _ = IdempotencyKey.objects.filter(expires_at__lt=now or timezone.now()).delete()
    return deleted


def _storable(code: int) -> bool:
    return 200 <= code < 300 or code in STORED_CLIENT_ERRORS


def idempotent(view_method: Callable[..., Response]) -> Callable[..., Response]:
    """Decorate a creating viewset action so it honours ``Idempotency-Key``."""

    @functools.wraps(view_method)
    def wrapper(self: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return view_method(self, request, *args, **kwargs)
        if not KEY_RE.match(key):
            raise exceptions.ValidationError(
                {HEADER: ["Must be 1-255 printable ASCII characters (no spaces)."]}, code="invalid"
            )
        row = claim(principal_of(request), key, fingerprint(request))
        if isinstance(row, Response):
            return row
        waits = request.query_params.get("wait") not in (None, "", "0")
        stored = False
        try:
            # Without ?wait, the creation and its stored response commit together.
            with transaction.atomic() if not waits else contextlib.nullcontext():
                response = view_method(self, request, *args, **kwargs)
                if _storable(response.status_code):
                    complete(row, response)
                    stored = True
        except Exception as exc:
            try:
                response = self.handle_exception(exc)
            except Exception:
                release(row)
                raise
        if not stored:
            if _storable(response.status_code):
                complete(row, response)
            else:
                release(row)
        return response

    return wrapper
