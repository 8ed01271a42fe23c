"""Every filter of every list endpoint, found from the URL conf: a list parameter takes its
values repeated or comma-separated as the same set, any other parameter given twice is a
400 naming it, never the last value with the others dropped (issue 19)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import django_filters
import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from core.filters import takes_many
from executions.models import Execution, ExecutionStatus
from tasks.models import Status
from tests.factories import TaskFactory

pytestmark = pytest.mark.django_db

PAGINATION = ("page", "limit", "offset")


def list_routes() -> Iterator[tuple[str, type]]:
    """(url name, FilterSet) of every route whose ``list`` action filters."""

    def walk(patterns: list[Any]) -> Iterator[URLPattern]:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns)
            else:
                yield pattern

    for pattern in walk(get_resolver().url_patterns):
        view = getattr(pattern.callback, "cls", None)
        actions = getattr(pattern.callback, "actions", None) or {}
        filterset = getattr(view, "filterset_class", None)
        if filterset is not None and actions.get("get") == "list" and pattern.name:
            yield pattern.name, filterset


ROUTES = sorted(set(list_routes()), key=lambda route: route[0])


def test_the_walk_finds_every_list_endpoint() -> None:
    assert {name for name, _ in ROUTES} >= {
        "task-list",
        "execution-list",
        "task-execution-list",
        "template-list",
    }


@pytest.fixture
def world(user: Any, project: Any) -> dict[str, Any]:
    """Tasks, executions and workflow runs in several statuses, tasks with several tags."""
    pending = TaskFactory(project=project, created_by=user, status=Status.PENDING, tags=["a", "b"])
    done = TaskFactory(project=project, created_by=user, status=Status.COMPLETED, tags=["a"])
    TaskFactory(project=project, created_by=user, status=Status.FAILED, tags=["b"])
    for number, (task, status) in enumerate(
        [
            (pending, ExecutionStatus.QUEUED),
            (done, ExecutionStatus.SUCCEEDED),
            (done, ExecutionStatus.FAILED),
        ],
        start=1,
    ):
        Execution.objects.create(
            task=task,
            project=project,
            number=number,
            status=status,
            script_type="bash",
            script="true",
            timeout_seconds=60,
            priority=5,
            **(
                {"started_at": task.created_at, "finished_at": task.created_at, "exit_code": 0}
                if status != ExecutionStatus.QUEUED
                else {}
            ),
        )
    # Workflow runs in two statuses (the run list's status filter).
    from workflows.models import RunStatus, WorkflowRun

    for status in (RunStatus.PENDING, RunStatus.SUCCEEDED):
        WorkflowRun.objects.create(project=project, template_version=1, name=f"run {status}", status=status)
    return {"task": done}


def url_of(name: str, world: dict[str, Any]) -> str:
    if name == "task-execution-list":
        return reverse(name, kwargs={"id": world["task"].pk})
    return reverse(name)


def two_values(filter_: django_filters.Filter) -> tuple[str, str]:
    """Two valid values of a list filter (a new kind of list filter must be added here)."""
    choices = [str(value) for value, _ in filter_.extra.get("choices", ())]
    if choices:
        preferred = [c for c in ("pending", "completed", "succeeded", "failed") if c in choices]
        picked = (preferred + [c for c in choices if c not in preferred])[:2]
        return picked[0], picked[1]
    if filter_.field_name == "tag":
        return "a", "b"
    raise AssertionError(f"no sample values for the list filter {filter_.field_name!r}")


def ids(response: Any) -> set[str]:
    assert response.status_code == 200, response.content
    return {row["id"] for row in response.json()["results"]}


@pytest.mark.parametrize(("name", "filterset"), ROUTES, ids=[name for name, _ in ROUTES])
def test_list_filters_take_both_spellings_as_one_set(api, world, name, filterset) -> None:
    url = url_of(name, world)
    many = {field: f for field, f in filterset.base_filters.items() if takes_many(f)}
    for field, filter_ in many.items():
        first, second = two_values(filter_)
        repeated = ids(api.get(f"{url}?{field}={first}&{field}={second}"))
        comma = ids(api.get(f"{url}?{field}={first},{second}"))
        assert repeated == comma, field
        assert ids(api.get(f"{url}?{field}={second}&{field}={first}")) == repeated, field
        if isinstance(filter_, django_filters.filters.BaseCSVFilter):  # any of the values
            union = ids(api.get(f"{url}?{field}={first}")) | ids(api.get(f"{url}?{field}={second}"))
            assert repeated == union and len(union) >= 2, field


@pytest.mark.parametrize(("name", "filterset"), ROUTES, ids=[name for name, _ in ROUTES])
def test_any_other_parameter_given_twice_is_a_400_naming_it(api, world, name, filterset) -> None:
    url = url_of(name, world)
    singles = [field for field, f in filterset.base_filters.items() if not takes_many(f)]
    assert singles, name
    for field in [*singles, *PAGINATION]:
        response = api.get(f"{url}?{field}=1&{field}=2")
        assert response.status_code == 400, (field, response.content)
        problem = response.json()
        assert problem["code"] == "validation_error"
        assert [error["field"] for error in problem["errors"]] == [field], problem
        assert problem["errors"][0]["code"] == "repeated"


def test_task_list_status_twice_returns_both(api, world) -> None:
    """The issue's case: status=pending&status=completed returned only the completed."""
    body = api.get("/api/v1/tasks?status=pending&status=completed").json()
    assert body["count"] == 2
    assert {row["status"] for row in body["results"]} == {"pending", "completed"}
    assert api.get("/api/v1/tasks?tag=a&tag=b").json()["count"] == 1
    assert api.get("/api/v1/tasks?tag=a,b").json()["count"] == 1
