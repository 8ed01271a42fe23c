"""Idempotency-Key on the creating POSTs (accounts/idempotency.py)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import idempotency
from accounts.models import IdempotencyKey, IdempotencyState
from executions.models import Execution
from tasks.models import Note, Task
from tests.tasks.conftest import problem_of

TASKS = "/api/v1/tasks"


def post(client: APIClient, url: str, data: Any, key: str | None = "k-1", **extra: Any) -> Any:
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(url, data, format="json", **headers, **extra)


@pytest.mark.django_db
class TestReplay:
    def test_same_key_replays_the_first_response(self, api):
        first = post(api, TASKS, {"name": "once"})
        assert first.status_code == 201
        assert not first.has_header("Idempotent-Replayed")
        second = post(api, TASKS, {"name": "once"})
        assert second.status_code == 201
        assert second["Idempotent-Replayed"] == "true"
        assert second.json() == first.json()
        assert second["Location"] == first["Location"]
        assert Task.objects.count() == 1

    def test_same_key_different_body_is_422(self, api):
        post(api, TASKS, {"name": "once"})
        problem = problem_of(post(api, TASKS, {"name": "twice"}), 422)
        assert problem["type"].endswith("idempotency-key-reused")
        assert Task.objects.count() == 1

    def test_keys_are_scoped_per_principal(self, api, user, key_client, other_api):
        post(api, TASKS, {"name": "once"})
        assert post(key_client(user), TASKS, {"name": "once"}).status_code == 201
        assert post(other_api, TASKS, {"name": "once"}).status_code == 201
        assert Task.objects.count() == 3

    def test_session_principal_is_the_user(self, client, user):
        client.force_login(user)
        kwargs = {"content_type": "application/json", "HTTP_IDEMPOTENCY_KEY": "s-1"}
        first = client.post(TASKS, {"name": "session"}, **kwargs)
        second = client.post(TASKS, {"name": "session"}, **kwargs)
        assert first.status_code == second.status_code == 201
        assert second["Idempotent-Replayed"] == "true"
        assert IdempotencyKey.objects.get().principal == f"user:{user.pk}"

    def test_no_header_no_idempotency(self, api):
        post(api, TASKS, {"name": "a"}, key=None)
        post(api, TASKS, {"name": "a"}, key=None)
        assert Task.objects.count() == 2
        assert not IdempotencyKey.objects.exists()

    def test_invalid_key_is_400(self, api):
        problem = problem_of(post(api, TASKS, {"name": "a"}, key="x" * 256), 400)
        assert problem["errors"][0]["field"] == "Idempotency-Key"

    def test_validation_errors_are_replayed(self, api):
        first = post(api, TASKS, {"name": ""})
        assert first.status_code == 400
        second = post(api, TASKS, {"name": ""})
        assert second.status_code == 400 and second["Idempotent-Replayed"] == "true"
        assert second["Content-Type"] == "application/problem+json"

    def test_conflicts_are_not_stored(self, api, project):
        task = Task.objects.create(project=project, name="t")  # no script: execute is a 409
        url = reverse("task-execute", kwargs={"id": task.pk})
        assert post(api, url, {}).status_code == 409
        assert not IdempotencyKey.objects.exists()
        Task.objects.filter(pk=task.pk).update(script_type="bash", script_content="echo hi")
        assert post(api, url, {}).status_code == 202

    def test_a_crash_releases_the_key(self, api, monkeypatch):
        from tasks import services

        def boom(**kwargs: Any) -> None:
            raise RuntimeError("boom")

        monkeypatch.setattr(services, "task_create", boom)
        api.raise_request_exception = False
        assert post(api, TASKS, {"name": "a"}).status_code == 500
        assert not IdempotencyKey.objects.exists()
        monkeypatch.undo()
        assert post(api, TASKS, {"name": "a"}).status_code == 201

    def test_in_flight_duplicate_is_409_and_a_stale_one_is_taken_over(self, api):
        post(api, TASKS, {"name": "a"})
        row = IdempotencyKey.objects.get()
        IdempotencyKey.objects.filter(pk=row.pk).update(state=IdempotencyState.IN_FLIGHT)
        problem = problem_of(post(api, TASKS, {"name": "a"}), 409)
        assert problem["type"].endswith("idempotency-in-flight")
        IdempotencyKey.objects.filter(pk=row.pk).update(locked_at=timezone.now() - timedelta(hours=1))
        response = post(api, TASKS, {"name": "a"})
        assert response.status_code == 201 and not response.has_header("Idempotent-Replayed")
        assert IdempotencyKey.objects.get().state == IdempotencyState.COMPLETED

    def test_expired_keys_are_new_and_pruned(self, api):
        post(api, TASKS, {"name": "a"})
        IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
        assert post(api, TASKS, {"name": "b"}).status_code == 201  # a new request, not a 422
        assert Task.objects.count() == 2
        IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
        assert idempotency.prune() == 1
        post(api, TASKS, {"name": "c"}, key="k-2")
        IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
        call_command("prune_idempotency_keys")
        assert not IdempotencyKey.objects.exists()


@pytest.mark.django_db
def test_every_creating_endpoint_replays(api, project, make_template):
    task = Task.objects.create(project=project, name="t", script_type="bash", script_content="echo hi")
    make_template()
    cases = [
        (reverse("task-execute", kwargs={"id": task.pk}), {}, Execution),
        (f"{TASKS}/{task.pk}/notes", {"body": "hello"}, Note),
        ("/api/v1/templates/deploy/trigger", {"parameters": {"service": "api"}}, Execution),
    ]
    for url, data, model in cases:
        before = model.objects.count()
        first = post(api, url, data, key=f"key-{url}")
        second = post(api, url, data, key=f"key-{url}")
        assert first.status_code in (201, 202), first.content
        assert (second.status_code, second.json()) == (first.status_code, first.json())
        assert second["Idempotent-Replayed"] == "true"
        assert model.objects.count() == before + 1, url
    Task.objects.create(project=project, name="work item")
    first = post(api, f"{TASKS}/claim-next", {}, key="claim")
    second = post(api, f"{TASKS}/claim-next", {}, key="claim")
    assert first.status_code == second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second["Idempotent-Replayed"] == "true"


# --- the race, on PostgreSQL with real connections ------------------------------------------------
RACERS = 50  # the hardening issue: fifty concurrent requests with one key


def race(url: str, data: Any, raw_key: str) -> list[Any]:
    barrier = threading.Barrier(RACERS)
    responses: list[Any] = []
    lock = threading.Lock()

    def one() -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw_key}")
        try:
            barrier.wait(timeout=30)
            response = post(client, url, data, key="race-1")
            with lock:
                responses.append(response)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(responses) == RACERS
    return responses


def check_race(responses: list[Any], created_status: int) -> None:
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {created_status, 409}, statuses
    originals = [
        r for r in responses if r.status_code == created_status and not r.has_header("Idempotent-Replayed")
    ]
    assert len(originals) == 1
    bodies = {str(r.json().get("id")) for r in responses if r.status_code == created_status}
    assert len(bodies) == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="real concurrent connections need PostgreSQL")
def test_concurrent_creates_make_exactly_one_task(user, key_client):
    client = key_client(user)
    responses = race(TASKS, {"name": "raced"}, client.raw_key)
    check_race(responses, 201)
    assert Task.objects.count() == 1
    assert IdempotencyKey.objects.get().state == IdempotencyState.COMPLETED


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="real concurrent connections need PostgreSQL")
def test_concurrent_executes_make_exactly_one_execution(user, key_client, project):
    client = key_client(user)
    task = Task.objects.create(project=project, name="t", script_type="bash", script_content="echo hi")
    responses = race(reverse("task-execute", kwargs={"id": task.pk}), {}, client.raw_key)
    check_race(responses, 202)
    assert Execution.objects.count() == 1
