"""The agent claim protocol: claim, claim-next, heartbeat, complete, fail, release, leases,
dependency gating, and races between real concurrent database connections."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError, close_old_connections, connection
from django.utils import timezone

from accounts.models import Role
from core.errors import Conflict
from events.models import Event, EventType
from tasks import services
from tasks.models import Status, Task
from tests.factories import TaskFactory, UserFactory
from tests.tasks.conftest import error_fields, problem_of

pytestmark = pytest.mark.django_db


# --- claim --------------------------------------------------------------------------------------
def test_claim_takes_a_pending_task_with_a_lease(api, user, task):
    before = timezone.now()
    body = api.post(f"/api/v1/tasks/{task.pk}/claim").json()
    assert body["status"] == "running"
    assert body["claimed_by"] == {"user": {"id": user.pk, "username": "alice"}, "api_key": api.api_key.prefix}
    task.refresh_from_db()
    lease = (task.lease_expires_at - before).total_seconds()
    assert 299 < lease < 302
    types = list(Event.objects.filter(task=task).values_list("type", flat=True))
    assert types == ["task.claimed", "task.status_changed"]


@pytest.mark.parametrize(
    ("lease", "ok"), [(9, False), (10, True), (86_400, True), (86_401, False), ("x", False)]
)
def test_lease_bounds(api, task, lease, ok):
    response = api.post(f"/api/v1/tasks/{task.pk}/claim", {"lease_seconds": lease})
    if ok:
        assert response.status_code == 200
    else:
        assert error_fields(problem_of(response, 400)) == {
            "lease_seconds": response.json()["errors"][0]["code"]
        }


def test_claiming_a_claimed_task_is_409(api, user, key_client, task):
    api.post(f"/api/v1/tasks/{task.pk}/claim")
    body = problem_of(key_client(user).post(f"/api/v1/tasks/{task.pk}/claim"), 409)
    assert body["type"] == "urn:taskforge:problem:already-claimed"


@pytest.mark.parametrize("status", [Status.QUEUED, Status.COMPLETED, Status.FAILED, Status.CANCELLED])
def test_only_pending_tasks_are_claimable(api, user, status):
    task = TaskFactory(created_by=user, status=status)
    body = problem_of(api.post(f"/api/v1/tasks/{task.pk}/claim"), 409)
    assert body["type"] == "urn:taskforge:problem:not-claimable"
    assert body["current_status"] == status


def test_archived_tasks_are_not_claimable(api, user):
    task = TaskFactory(created_by=user, archived=True)
    problem_of(api.post(f"/api/v1/tasks/{task.pk}/claim"), 409)
    assert api.post("/api/v1/tasks/claim-next").status_code == 204


def test_unfinished_dependencies_block_the_claim(api, user):
    first, second, blocked = TaskFactory.create_batch(3, created_by=user)
    blocked.depends_on.set([first, second])
    second.status = Status.COMPLETED
    second.save()
    body = problem_of(api.post(f"/api/v1/tasks/{blocked.pk}/claim"), 409)
    assert body["type"] == "urn:taskforge:problem:blocked-by-dependencies"
    assert body["blockers"] == [str(first.pk)]
    # claim-next skips the blocked task and hands out its dependency instead.
    assert api.post("/api/v1/tasks/claim-next").json()["id"] == str(first.pk)
    api.post(f"/api/v1/tasks/{first.pk}/complete", {"result": 1})
    assert api.post(f"/api/v1/tasks/{blocked.pk}/claim").status_code == 200


# --- claim-next ---------------------------------------------------------------------------------------
def test_claim_next_takes_highest_priority_then_oldest(api, user):
    now = timezone.now()
    old_low = TaskFactory(created_by=user, priority=1, created_at=now - timedelta(hours=3))
    new_high = TaskFactory(created_by=user, priority=9, created_at=now)
    old_high = TaskFactory(created_by=user, priority=9, created_at=now - timedelta(hours=1))
    order = [api.post("/api/v1/tasks/claim-next").json()["id"] for _ in range(3)]
    assert order == [str(old_high.pk), str(new_high.pk), str(old_low.pk)]
    response = api.post("/api/v1/tasks/claim-next")
    assert response.status_code == 204
    assert response.content == b""


def test_claim_next_filters(api, user, team):
    project, _ = team(Role.MEMBER)
    TaskFactory(created_by=user, name="plain", priority=9)
    TaskFactory(created_by=user, name="tagged", tags=["gpu", "linux"], priority=1)
    TaskFactory(created_by=user, name="agent", agent="reviewer", priority=1)
    TaskFactory(created_by=user, name="team", project=project, priority=1)
    TaskFactory(created_by=user, name="urgent", priority=10)

    def claim(body: dict[str, Any]) -> str | None:
        response = api.post("/api/v1/tasks/claim-next", body, format="json")
        return response.json()["name"] if response.status_code == 200 else None

    assert claim({"tags": ["gpu", "linux"]}) == "tagged"
    assert claim({"tags": ["gpu"]}) is None
    assert claim({"agent": "reviewer"}) == "agent"
    assert claim({"project": str(project.pk)}) == "team"
    assert claim({"priority_min": 10}) == "urgent"
    assert claim({"priority_min": 10}) is None
    assert claim({"lease_seconds": 60}) == "plain"
    assert error_fields(problem_of(api.post("/api/v1/tasks/claim-next", {"tags": ["a b"]}), 400)) == {
        "tags[0]": "invalid_tag"
    }


def test_claim_next_never_reaches_other_or_read_only_projects(api, other_user, team, key_client, user):
    TaskFactory(created_by=other_user)
    project, viewer = team(Role.VIEWER)
    TaskFactory(created_by=user, project=project)
    assert key_client(viewer).post("/api/v1/tasks/claim-next").status_code == 204
    problem_of(key_client(viewer).post("/api/v1/tasks/claim-next", {"project": str(project.pk)}), 403)
    assert (
        api.post("/api/v1/tasks/claim-next", {"project": str(other_user.personal_project.pk)}).status_code
        == 400
    )


def test_project_restricted_key_claims_only_in_its_project(user, team, key_client):
    project, _ = team(Role.MEMBER)
    TaskFactory(created_by=user, priority=10)
    inside = TaskFactory(created_by=user, project=project, priority=0)
    client = key_client(user, project=project)
    assert client.post("/api/v1/tasks/claim-next").json()["id"] == str(inside.pk)
    assert client.post("/api/v1/tasks/claim-next").status_code == 204


# --- heartbeat, complete, fail, release ---------------------------------------------------------------
def test_heartbeat_extends_the_lease(api, task):
    api.post(f"/api/v1/tasks/{task.pk}/claim", {"lease_seconds": 10})
    body = api.post(f"/api/v1/tasks/{task.pk}/heartbeat", {"lease_seconds": 600}).json()
    task.refresh_from_db()
    assert (task.lease_expires_at - timezone.now()).total_seconds() > 590
    assert body["lease_expires_at"] is not None


def test_complete_stores_any_json_result(api, task):
    api.post(f"/api/v1/tasks/{task.pk}/claim")
    body = api.post(f"/api/v1/tasks/{task.pk}/complete", {"result": [1, {"a": None}]}, format="json").json()
    assert body["status"] == "completed"
    assert body["result"] == [1, {"a": None}]
    assert body["lease_expires_at"] is None
    assert body["claimed_by"]["user"]["username"] == "alice"
    types = list(Event.objects.filter(task=task).values_list("type", flat=True))
    assert types[-2:] == ["task.completed", "task.status_changed"]
    problem_of(api.post(f"/api/v1/tasks/{task.pk}/complete"), 409)


def test_fail_stores_the_error(api, task):
    api.post(f"/api/v1/tasks/{task.pk}/claim")
    problem_of(api.post(f"/api/v1/tasks/{task.pk}/fail", {}), 400)
    body = api.post(f"/api/v1/tasks/{task.pk}/fail", {"error": "disk full"}).json()
    assert body["status"] == "failed"
    assert body["result"] == {"error": "disk full"}
    assert Event.objects.get(task=task, type=EventType.TASK_FAILED).data == {"error": "disk full"}


def test_release_hands_the_task_back(api, task):
    api.post(f"/api/v1/tasks/{task.pk}/claim")
    body = api.post(f"/api/v1/tasks/{task.pk}/release").json()
    assert body["status"] == "pending"
    assert body["claimed_by"] is None
    assert body["claimed_at"] is None
    assert body["lease_expires_at"] is None
    assert api.post(f"/api/v1/tasks/{task.pk}/claim").status_code == 200


@pytest.mark.parametrize("verb", ["heartbeat", "complete", "fail", "release"])
def test_only_the_claimer_may_finish(verb, team, key_client, user):
    project, member = team(Role.MEMBER)
    task = TaskFactory(created_by=user, project=project)
    claimer = key_client(user)
    claimer.post(f"/api/v1/tasks/{task.pk}/claim")
    body = problem_of(key_client(member).post(f"/api/v1/tasks/{task.pk}/{verb}", {"error": "x"}), 409)
    assert body["type"] == "urn:taskforge:problem:not-claimer"
    # The same user with another key (or a session) is the claimer too.
    assert key_client(user).post(f"/api/v1/tasks/{task.pk}/{verb}", {"error": "x"}).status_code == 200


@pytest.mark.parametrize("verb", ["heartbeat", "complete", "fail", "release"])
def test_finishing_an_unclaimed_task_is_409(api, task, verb):
    body = problem_of(api.post(f"/api/v1/tasks/{task.pk}/{verb}", {"error": "x"}), 409)
    assert body["type"] == "urn:taskforge:problem:not-claimed"


# --- leases -------------------------------------------------------------------------------------------
def expire(task: Task) -> None:
    Task.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def test_a_lapsed_claim_goes_back_to_pending_and_the_old_claimer_loses_it(api, user, key_client, team):
    project, member = team(Role.MEMBER)
    task = TaskFactory(created_by=user, project=project)
    api.post(f"/api/v1/tasks/{task.pk}/claim", {"lease_seconds": 10})
    expire(task)
    other = key_client(member)
    assert other.post("/api/v1/tasks/claim-next").json()["id"] == str(task.pk)  # reaped, then claimed
    assert Event.objects.filter(task=task, type=EventType.TASK_LEASE_EXPIRED).count() == 1
    problem_of(api.post(f"/api/v1/tasks/{task.pk}/complete"), 409)
    # A direct claim on a lapsed task takes it over as well.
    expire(task)
    assert api.post(f"/api/v1/tasks/{task.pk}/claim").status_code == 200


def test_a_late_heartbeat_before_the_reaper_keeps_the_claim(api, task):
    api.post(f"/api/v1/tasks/{task.pk}/claim", {"lease_seconds": 10})
    expire(task)
    assert api.post(f"/api/v1/tasks/{task.pk}/heartbeat").status_code == 200
    assert services.reap_expired_claims() == 0


# --- races: real concurrent connections -----------------------------------------------------------------
def run_concurrently(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads released together; each has its own connection."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def runner(index: int) -> None:
        try:
            barrier.wait()
            for _attempt in range(50):
                try:
                    results[index] = work(index)
                    break
                except OperationalError as exc:
                    # SQLite's shared-cache in-memory test database reports a table lock at
                    # once instead of waiting on busy_timeout as a file database does; retry.
                    if "locked" not in str(exc):
                        raise
        except Exception as exc:  # reported to the main thread, which asserts on it
            results[index] = exc
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.mark.django_db(transaction=True)
def test_twenty_claimers_on_one_task_exactly_one_wins():
    users = [UserFactory() for _ in range(20)]
    project = users[0].personal_project
    for agent in users[1:]:
        project.memberships.create(user=agent, role=Role.MEMBER)
    task = TaskFactory(created_by=users[0], project=project)

    def claim(index: int) -> str:
        try:
            services.task_claim(task=Task.objects.get(pk=task.pk), actor=users[index])
            return "won"
        except Conflict:
            return "lost"

    results = run_concurrently(20, claim)
    assert Counter(results) == {"won": 1, "lost": 19}, results
    task.refresh_from_db()
    assert task.status == Status.RUNNING
    assert users.index(task.claimed_by) == results.index("won")
    assert Event.objects.filter(task=task, type=EventType.TASK_CLAIMED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_agents_racing_on_claim_next_never_claim_a_task_twice():
    owner = UserFactory()
    project = owner.personal_project
    agents = [UserFactory() for _ in range(8)]
    for agent in agents:
        project.memberships.create(user=agent, role=Role.MEMBER)
    now = timezone.now()
    Task.objects.bulk_create(
        Task(project=project, name=f"t{i}", priority=i % 4, created_at=now - timedelta(seconds=i))
        for i in range(60)
    )

    def drain(index: int) -> list[str]:
        claimed = []
        while (task := services.task_claim_next(actor=agents[index])) is not None:
            claimed.append(str(task.pk))
        return claimed

    results = run_concurrently(len(agents), drain)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    everything = [pk for claimed in results for pk in claimed]
    assert len(everything) == 60
    assert len(set(everything)) == 60
    assert Task.objects.filter(status=Status.RUNNING).count() == 60
    assert Event.objects.filter(type=EventType.TASK_CLAIMED).count() == 60
