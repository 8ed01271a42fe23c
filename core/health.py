"""``GET /health``: no auth, no rate limit; 503 when the database is unreachable."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

STARTED = time.monotonic()
HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"


def check_database() -> str:
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception:
        # Drop the broken connection so the next check reconnects.
        connection.close()
        return UNHEALTHY
    return HEALTHY


def check_cache() -> str:
    probe = f"health:{uuid.uuid4().hex}"
    try:
        cache.set(probe, "1", timeout=5)
        ok = cache.get(probe) == "1"
        cache.delete(probe)
    except Exception:
        return UNHEALTHY
    return HEALTHY if ok else DEGRADED


# Components beyond the database and cache register here (the worker adds "workers").
COMPONENT_CHECKS: dict[str, Callable[[], str]] = {}


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    components = {"database": check_database()}
    components["cache"] = check_cache()
    for name, check in COMPONENT_CHECKS.items():
        components[name] = check() if components["database"] == HEALTHY else UNHEALTHY
    if components["database"] == UNHEALTHY:
        overall = UNHEALTHY
    elif all(state == HEALTHY for state in components.values()):
        overall = HEALTHY
    else:
        overall = DEGRADED
    body = {
        "status": overall,
        "timestamp": timezone.now().isoformat(),
        "uptime": round(time.monotonic() - STARTED, 3),
        "version": settings.TASKFORGE_VERSION,
        "components": components,
    }
    return JsonResponse(body, status=503 if overall == UNHEALTHY else 200)
