"""The one rate-limit hook: django-ratelimit counters in the shared Django cache.

Authenticated calls count per API key (or per user for session logins) against the key's
own limit or the default; everything else counts per client IP. The usage is kept on the
request so every API response can carry the ``X-RateLimit-*`` headers.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache.backends.db import DatabaseCache
from django.db import connections, router, transaction
from django.http import HttpRequest
from django_ratelimit.core import get_usage
from rest_framework.exceptions import Throttled
from rest_framework.request import Request

RATE_RE = re.compile(r"^(\d+)/(\d*)([smhd])$")
# What validate_rate accepts, as one regular expression (documented in the OpenAPI schema).
RATE_PATTERN = r"^(0*[1-9][0-9]*/([0-9]*[1-9][0-9]*)?[smhd])?$"  # empty: the default
GROUP = "taskforge.api"


def validate_rate(rate: str) -> None:
    """Raise ValueError unless ``rate`` is ``count/[n]unit``, e.g. ``1000/15m``."""
    match = RATE_RE.match(rate)
    if not match or int(match.group(1)) < 1 or match.group(2) == "0":
        raise ValueError(f"{rate!r} is not a rate like 1000/15m (count/[n]s|m|h|d).")


@dataclass(frozen=True)
class RateUsage:
    limit: int
    remaining: int
    reset: int  # seconds until the window resets
    limited: bool


def _identity(request: Request) -> tuple[str, str]:
    """(bucket key, rate) for this request, after authentication ran."""
    api_key = getattr(request, "auth", None)
    user = getattr(request, "user", None)
    if api_key is not None and hasattr(api_key, "prefix"):
        return f"key:{api_key.prefix}", api_key.rate_limit or settings.TASKFORGE_RATE_LIMIT_AUTHENTICATED
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}", settings.TASKFORGE_RATE_LIMIT_AUTHENTICATED
    return f"ip:{request.META.get('REMOTE_ADDR', '')}", settings.TASKFORGE_RATE_LIMIT_ANONYMOUS


def enforce_rate_limit(request: Request) -> RateUsage | None:
    """Count this request; raise 429 (``Throttled``) when its bucket is spent."""
    bucket, rate = _identity(request)
    return enforce_bucket(request, bucket, rate)


def enforce_bucket(request: HttpRequest, bucket: str, rate: str) -> RateUsage | None:
    """Count this request in ``bucket`` (at most ``rate``); raise 429 (``Throttled``) when it
    is spent. The one counter every limit uses (the API's, and each inbound trigger's own)."""
    if not settings.TASKFORGE_RATE_LIMIT_ENABLED:
        return None
    usage = get_usage(request, group=GROUP, key=lambda _g, _r: bucket, rate=rate, increment=True)
    if usage is None:
        return None
    result = RateUsage(
        limit=usage["limit"],
        remaining=max(0, usage["limit"] - usage["count"]),
        reset=max(0, usage["time_left"]),
        limited=usage["should_limit"],
    )
    request._rate_usage = result  # type: ignore[attr-defined] # read by finalize_response for the headers
    if result.limited:
        raise Throttled(wait=result.reset or 1, detail="Rate limit exceeded.")
    return result


def rate_limit_headers(usage: RateUsage) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(usage.limit),
        "X-RateLimit-Remaining": str(usage.remaining),
        "X-RateLimit-Reset": str(int(time.time()) + usage.reset),
    }


class AtomicDatabaseCache(DatabaseCache):
    """Django's database cache with an atomic ``incr``, so counters shared by every web
    and worker process never lose an increment.

    The stock ``incr`` is get-then-set; here it runs inside a transaction that first locks
    the row (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's IMMEDIATE transactions already
    serialise writers).
    """

    def incr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        db = router.db_for_write(self.cache_model_class)
        connection = connections[db]
        with transaction.atomic(using=db):
            if connection.features.has_select_for_update:
                table = connection.ops.quote_name(self._table)
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"SELECT cache_key FROM {table} WHERE cache_key = %s FOR UPDATE",  # noqa: S608
                        [self.make_and_validate_key(key, version=version)],
                    )
            return super().incr(key, delta, version)
