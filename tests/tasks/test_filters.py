"""The task list: every filter, bad values as 400s, sorting, both pagination modes, volume."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks.models import Status, Task
from tests.factories import TaskFactory
from tests.tasks.conftest import error_fields, problem_of

pytestmark = pytest.mark.django_db

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def names(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["name"] for row in response.json()["results"]]


@pytest.fixture
def spread(user):
    """Five tasks with distinct times, priorities, tags and states."""
    rows = [
        {
            "name": "a",
            "priority": 1,
            "tags": ["ops"],
            "status": Status.PENDING,
            "script_type": "bash",
            "agent": "bot",
        },
        {"name": "b", "priority": 5, "tags": ["ops", "db"], "status": Status.QUEUED, "script_type": "python"},
        {"name": "c", "priority": 9, "tags": ["db"], "status": Status.FAILED, "description": "disk full"},
        {"name": "d", "priority": 5, "tags": ["Ops"], "status": Status.COMPLETED, "agent": "bot"},
        {"name": "e", "priority": 10, "tags": [], "status": Status.PENDING, "archived": True},
    ]
    tasks = []
    for index, fields in enumerate(rows):
        moment = T0 + timedelta(days=index)
        tasks.append(
            TaskFactory(
                created_by=user,
                created_at=moment,
                updated_at=moment + timedelta(hours=1),
                due_date=moment + timedelta(days=10) if index % 2 == 0 else None,
                **fields,
            )
        )
    return tasks


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["d", "c", "b", "a"]),
        ("status=pending", ["a"]),
        ("status=pending,failed", ["c", "a"]),
        ("priority=5", ["d", "b"]),
        ("priority_min=5", ["d", "c", "b"]),
        ("priority_max=5", ["d", "b", "a"]),
        ("priority_min=2&priority_max=8", ["d", "b"]),
        ("script_type=bash", ["a"]),
        ("tag=ops", ["b", "a"]),
        ("tag=ops&tag=db", ["b"]),
        ("tag=Ops", ["d"]),
        ("tag=nothing", []),
        ("agent=bot", ["d", "a"]),
        ("archived=true", ["e"]),
        ("archived=all", ["e", "d", "c", "b", "a"]),
        ("archived=false", ["d", "c", "b", "a"]),
        ("created_after=2030-01-02", ["d", "c", "b"]),
        ("created_before=2030-01-02T00:00:00Z", ["a"]),
        ("created_after=2030-01-02&created_before=2030-01-04", ["c", "b"]),
        ("updated_after=2030-01-04T01:00:00%2B00:00", ["d"]),
        ("updated_before=2030-01-01T02:00:00Z", ["a"]),
        ("due_after=2030-01-12", ["c"]),
        ("due_before=2030-01-12", ["a"]),
        ("search=DISK", ["c"]),
        ("search=c", ["c"]),
        ("claimed=false", ["d", "c", "b", "a"]),
        ("claimed=true", []),
    ],
)
def test_filters(api, spread, query, expected):
    assert names(api.get(f"/api/v1/tasks?{query}")) == expected


def test_project_created_by_and_claimed_filters(api, user, team, spread):
    project, member = team("member")
    TaskFactory(created_by=member, project=project, name="team")
    assert names(api.get(f"/api/v1/tasks?project={project.pk}")) == ["team"]
    assert names(api.get(f"/api/v1/tasks?created_by={member.pk}")) == ["team"]
    assert len(names(api.get(f"/api/v1/tasks?created_by={user.pk}"))) == 4
    api.post(f"/api/v1/tasks/{spread[0].pk}/claim")
    assert names(api.get("/api/v1/tasks?claimed=true")) == ["a"]
    assert "a" not in names(api.get("/api/v1/tasks?claimed=false"))


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=bogus", "status"),
        ("status=pending,bogus", "status"),
        ("status=,", "status"),  # empty items are not statuses (schemathesis, 500-example runs)
        ("status=", "status"),
        ("status=pending,", "status"),
        ("priority=high", "priority"),
        ("priority=11", "priority"),
        ("priority_min=-1", "priority_min"),
        ("script_type=ruby", "script_type"),
        ("tag=bad%20tag", "tag"),
        ("project=not-a-uuid", "project"),
        ("claimed=maybe", "claimed"),
        ("archived=sometimes", "archived"),
        ("archived=", "archived"),  # not "the default" (schemathesis, CI of 2026-12-02)
        ("created_after=yesterday", "created_after"),
        ("created_before=2030-13-01", "created_before"),
        ("updated_after=2030-01-01T25:00", "updated_after"),
        ("due_before=soon", "due_before"),
        ("created_by=alice", "created_by"),
        ("sort=size", "sort"),
        ("order=up", "order"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("page=0", "page"),
        ("pagination=pages", "pagination"),
        ("cursor=garbage!", "cursor"),
    ],
)
def test_bad_filter_values_are_400_never_an_empty_list(api, spread, query, field):
    body = problem_of(api.get(f"/api/v1/tasks?{query}"), 400)
    assert field in error_fields(body), body


@pytest.mark.parametrize("sort", ["created_at", "updated_at", "priority", "name", "due_date"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_sort_is_stable_with_nulls_last(api, user, sort, order):
    random.seed(7)
    for index in range(30):
        TaskFactory(
            created_by=user,
            name=random.choice("xyz"),
            priority=random.randint(0, 2),
            created_at=T0 + timedelta(minutes=random.randint(0, 3)),
            updated_at=T0 + timedelta(minutes=random.randint(0, 3)),
            due_date=None if index % 3 == 0 else T0 + timedelta(days=random.randint(0, 2)),
        )
    rows = api.get(f"/api/v1/tasks?sort={sort}&order={order}&limit=100").json()["results"]
    descending = order == "desc"

    def key(row):
        value = row[sort]
        return (value is None, value if value is not None else "", row["id"])

    present = [r for r in rows if r[sort] is not None]
    nulls = [r for r in rows if r[sort] is None]
    expected = sorted(present, key=key, reverse=descending) + sorted(nulls, key=key, reverse=descending)
    if sort in ("created_at", "updated_at", "due_date"):  # compare as times, not strings
        expected = sorted(
            present, key=lambda r: (datetime.fromisoformat(r[sort]), uuid.UUID(r["id"])), reverse=descending
        ) + sorted(nulls, key=lambda r: uuid.UUID(r["id"]), reverse=descending)
    else:
        expected = sorted(present, key=lambda r: (r[sort], uuid.UUID(r["id"])), reverse=descending) + nulls
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    # Cursor pages walk the same order, whatever the page size.
    walked, url = [], f"/api/v1/tasks?sort={sort}&order={order}&limit=7&pagination=cursor"
    while url:
        page = api.get(url).json()
        walked += [r["id"] for r in page["results"]]
        url = page["next"]
    assert walked == [r["id"] for r in rows]


def test_page_and_offset_pagination(api, user):
    TaskFactory.create_batch(25, created_by=user)
    first = api.get("/api/v1/tasks").json()
    assert first["count"] == 25
    assert len(first["results"]) == 20
    assert first["previous"] is None
    second = api.get(first["next"]).json()
    assert len(second["results"]) == 5
    assert second["next"] is None
    by_offset = api.get("/api/v1/tasks?limit=5&offset=20").json()
    assert [r["id"] for r in by_offset["results"]] == [r["id"] for r in second["results"]]
    problem_of(api.get("/api/v1/tasks?page=9"), 404)


def test_cursor_pagination(api, user):
    TaskFactory.create_batch(12, created_by=user)
    first = api.get("/api/v1/tasks?pagination=cursor&limit=5").json()
    assert "count" not in first
    assert len(first["results"]) == 5
    assert "cursor=" in first["next"]
    assert "pagination=" not in first["next"]
    second = api.get(first["next"]).json()
    third = api.get(second["next"]).json()
    assert len(third["results"]) == 2
    assert third["next"] is None
    seen = [r["id"] for page in (first, second, third) for r in page["results"]]
    assert len(set(seen)) == 12
    # A cursor is tied to its sort order, and page/offset do not mix with it.
    cursor = first["next"].split("cursor=")[1]
    body = problem_of(api.get(f"/api/v1/tasks?cursor={cursor}&sort=name"), 400)
    assert error_fields(body) == {"cursor": "cursor_mismatch"}
    problem_of(api.get(f"/api/v1/tasks?cursor={cursor}&page=2"), 400)


def test_cursor_pages_are_stable_when_rows_arrive(api, user):
    TaskFactory.create_batch(6, created_by=user)
    first = api.get("/api/v1/tasks?pagination=cursor&limit=3").json()
    TaskFactory.create_batch(3, created_by=user)  # newer rows land before the cursor
    second = api.get(first["next"]).json()
    assert not {r["id"] for r in first["results"]} & {r["id"] for r in second["results"]}
    assert len(second["results"]) == 3


def test_a_thousand_tasks_listed_and_filtered(api, user, other_user):
    now = timezone.now()
    project = user.personal_project
    Task.objects.bulk_create(
        Task(
            project=project,
            created_by=user,
            name=f"bulk {i:04d}",
            priority=i % 11,
            status=Status.FAILED if i % 10 == 0 else Status.PENDING,
            tags=["even"] if i % 2 == 0 else ["odd", "x"],
            created_at=now - timedelta(seconds=i),
            updated_at=now,
        )
        for i in range(1200)
    )
    Task.objects.bulk_create(
        Task(project=other_user.personal_project, name=f"theirs {i}", created_at=now) for i in range(50)
    )
    assert api.get("/api/v1/tasks").json()["count"] == 1200
    assert api.get("/api/v1/tasks?status=failed").json()["count"] == 120
    assert api.get("/api/v1/tasks?tag=even").json()["count"] == 600
    assert api.get("/api/v1/tasks?tag=odd&tag=x&priority=10").json()["count"] == len(
        [i for i in range(1200) if i % 2 == 1 and i % 11 == 10]
    )
    last = api.get("/api/v1/tasks?page=12&limit=100").json()
    assert last["results"][-1]["name"] == "bulk 1199"
    seen, url = [], "/api/v1/tasks?pagination=cursor&limit=100&status=pending"
    while url:
        page = api.get(url).json()
        seen += [r["name"] for r in page["results"]]
        url = page["next"]
    assert len(seen) == len(set(seen)) == 1080
    assert seen == sorted(seen)  # newest first == ascending index here


def list_queries(api, url: str) -> tuple[int, int]:
    """Queries for one request: (on task tables, in all). The first request of a key also
    records its last use and the rate limiter's cache queries vary by backend, so only
    requests after the first are compared in all."""
    with CaptureQueriesContext(connection) as captured:
        assert api.get(url).status_code == 200
    queries = [query["sql"] for query in captured.captured_queries]
    return sum("tasks_" in sql for sql in queries), len(queries)


def test_list_query_count_does_not_grow_with_rows(api, user):
    key = api.api_key
    for index in range(3):
        task = TaskFactory(created_by=user, claimed_by=user, claimed_by_key=key)
        task.depends_on.set(Task.objects.exclude(pk=task.pk)[:index])
    list_queries(api, "/api/v1/tasks")  # the key's first use is recorded
    few, few_in_all = list_queries(api, "/api/v1/tasks")
    assert few <= 2  # count, page (dependencies and joined rows read with the page)
    TaskFactory.create_batch(30, created_by=user, claimed_by=user, claimed_by_key=key)
    assert list_queries(api, "/api/v1/tasks?limit=50") == (few, few_in_all)
    cursor = list_queries(api, "/api/v1/tasks?limit=50&pagination=cursor")
    assert cursor == (few - 1, few_in_all - 1)  # no count


def test_filtersets_never_share_their_filters_or_the_requests_values():
    """Filters are copied one by one per request (not deep-copied): a method filter must still
    call the FilterSet it belongs to, and two requests' values never mix."""
    from django.http import QueryDict

    from tasks.filters import TaskFilter

    claimed = TaskFilter(QueryDict("claimed=true&search=deploy"), Task.objects.all())
    free = TaskFilter(QueryDict("claimed=false&archived=all"), Task.objects.all())
    assert claimed.filters["claimed"] is not free.filters["claimed"]
    for filterset in (claimed, free):
        assert filterset.is_valid(), filterset.errors
        for name in ("claimed", "archived", "search"):
            assert filterset.filters[name].parent is filterset
            assert filterset.filters[name].filter.method.__self__ is filterset
        assert TaskFilter.base_filters["claimed"] not in filterset.filters.values()
    where_claimed, where_free = (str(f.qs.query).split("WHERE")[1] for f in (claimed, free))
    assert "IS NOT NULL" in where_claimed and "LIKE" in where_claimed and "archived" in where_claimed
    assert "IS NULL" in where_free and "LIKE" not in where_free and "archived" not in where_free
