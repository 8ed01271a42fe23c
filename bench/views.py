"""The throughput baseline: the task list's query in a bare Django view (no DRF, no auth,
no rate limit, no serializer). Mounted only by ``bench.urls``.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from tasks.models import Task, tags_contain

FIELDS = (
    "id",
    "project_id",
    "name",
    "status",
    "priority",
    "tags",
    "created_at",
    "updated_at",
)


def bare_task_list(request: HttpRequest) -> JsonResponse:
    """``?project=&status=a,b&created_after=&created_before=&tag=``: count and first 20 rows,
    the same two statements the API's page mode runs."""
    params = request.GET
    queryset = Task.objects.filter(
        project_id=params["project"],
        archived=False,
        status__in=params["status"].split(","),
        created_at__gte=params["created_after"],
        created_at__lt=params["created_before"],
    )
    queryset = tags_contain(queryset, params["tag"]).order_by("-created_at", "-id")
    count = queryset.count()
    rows = list(queryset.values(*FIELDS)[:20])
    return JsonResponse({"count": count, "results": rows})
