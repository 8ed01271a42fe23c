"""The tasks API: create, validation, update, delete, tenancy, roles, scopes, notes, events."""

from __future__ import annotations

import uuid
from io import StringIO

import pytest
from django.core.management import call_command

from accounts.models import Role
from events.models import Event, EventType
from tasks.models import Status, Task
from tests.factories import TaskFactory
from tests.tasks.conftest import error_fields, problem_of

pytestmark = pytest.mark.django_db

MIB = 1024 * 1024


# --- Create ---------------------------------------------------------------------------------------
def test_create_minimal_task_has_defaults_and_location(api, user):
    response = api.post("/api/v1/tasks", {"name": "  Write report  "})
    assert response.status_code == 201, response.content
    body = response.json()
    assert response["Location"].endswith(f"/api/v1/tasks/{body['id']}")
    assert body["name"] == "Write report"
    assert body["project"] == str(user.personal_project.pk)
    assert body["status"] == "pending"
    assert body["timeout_seconds"] == 60
    assert body["priority"] == 5
    assert body["max_retries"] == 0
    assert body["max_concurrency"] == 1
    assert body["tags"] == []
    assert body["metadata"] == {}
    assert body["archived"] is False
    assert body["has_script"] is False
    assert body["created_by"] == {"id": user.pk, "username": "alice"}
    assert Event.objects.filter(task_id=body["id"], type=EventType.TASK_CREATED).count() == 1


def test_create_full_task(api):
    payload = {
        "name": "Backup",
        "description": "Nightly",
        "script_type": "bash",
        "script_content": "echo hi",
        "timeout_seconds": 3600,
        "priority": 10,
        "tags": ["ops", "db:main"],
        "metadata": {"owner": "ops"},
        "agent": "backup-bot",
        "due_date": "2030-01-01T00:00:00Z",
        "estimated_hours": 1.5,
        "max_retries": 10,
        "max_concurrency": 100,
        "archived": True,
    }
    body = api.post("/api/v1/tasks", payload).json()
    for key, value in payload.items():
        if key == "due_date":
            assert body[key].startswith("2030-01-01T00:00:00")
        else:
            assert body[key] == value, key
    assert body["has_script"] is True


def test_read_only_fields_are_ignored_on_create(api, other_user):
    forged = {
        "name": "x",
        "id": str(uuid.uuid4()),
        "status": "completed",
        "result": {"forged": True},
        "claimed_by": other_user.pk,
        "claimed_at": "2020-01-01T00:00:00Z",
        "lease_expires_at": "2020-01-01T00:00:00Z",
        "created_by": other_user.pk,
        "created_at": "2000-01-01T00:00:00Z",
        "parameters": {"a": 1},
    }
    body = api.post("/api/v1/tasks", forged).json()
    assert body["id"] != forged["id"]
    assert body["status"] == "pending"
    assert body["result"] is None
    assert body["claimed_by"] is None
    assert body["lease_expires_at"] is None
    assert body["created_by"]["username"] == "alice"
    assert not body["created_at"].startswith("2000")
    assert body["parameters"] == {}


@pytest.mark.parametrize(
    ("payload", "field", "code"),
    [
        ({}, "name", "required"),
        ({"name": ""}, "name", "blank"),
        ({"name": "   "}, "name", "blank"),
        ({"name": "x" * 256}, "name", "max_length"),
        ({"name": "x", "description": "d" * 10_001}, "description", "max_length"),
        ({"name": "x", "script_content": "echo"}, "script_type", "required"),
        ({"name": "x", "script_type": "ruby", "script_content": "puts"}, "script_type", "invalid_choice"),
        (
            {"name": "x", "script_type": "bash", "script_content": "é" * (MIB // 2 + 1)},
            "script_content",
            "max_bytes",
        ),
        ({"name": "x", "timeout_seconds": 0}, "timeout_seconds", "min_value"),
        ({"name": "x", "timeout_seconds": 3601}, "timeout_seconds", "max_value"),
        ({"name": "x", "timeout_seconds": "soon"}, "timeout_seconds", "invalid"),
        ({"name": "x", "priority": -1}, "priority", "min_value"),
        ({"name": "x", "priority": 11}, "priority", "max_value"),
        ({"name": "x", "priority": 5.5}, "priority", "invalid"),
        ({"name": "x", "tags": [f"t{i}" for i in range(33)]}, "tags", "max_length"),
        ({"name": "x", "tags": ["a" * 65]}, "tags[0]", "max_length"),
        ({"name": "x", "tags": ["ok", "bad tag"]}, "tags[1]", "invalid_tag"),
        ({"name": "x", "tags": [""]}, "tags[0]", "blank"),
        ({"name": "x", "tags": "ops"}, "tags", "not_a_list"),
        ({"name": "x", "metadata": [1, 2]}, "metadata", "not_an_object"),
        ({"name": "x", "metadata": {"blob": "x" * (64 * 1024)}}, "metadata", "max_bytes"),
        ({"name": "x", "metadata": {"tags": ["bad tag"]}}, "metadata.tags", "invalid_tag"),
        ({"name": "x", "agent": "a" * 65}, "agent", "max_length"),
        ({"name": "x", "due_date": "tomorrow"}, "due_date", "invalid"),
        ({"name": "x", "estimated_hours": -1}, "estimated_hours", "min_value"),
        ({"name": "x", "max_retries": 11}, "max_retries", "max_value"),
        ({"name": "x", "max_retries": -1}, "max_retries", "min_value"),
        ({"name": "x", "max_concurrency": 0}, "max_concurrency", "min_value"),
        ({"name": "x", "max_concurrency": 101}, "max_concurrency", "max_value"),
        ({"name": "x", "depends_on": [str(uuid.uuid4())]}, "depends_on", "does_not_exist"),
        ({"name": "x", "depends_on": ["nope"]}, "depends_on[0]", "invalid"),
        ({"name": "x", "archived": "maybe"}, "archived", "invalid"),
        ({"name": "x", "project": str(uuid.uuid4())}, "project", "does_not_exist"),
    ],
)
def test_every_violation_is_a_400_naming_field_and_rule(api, payload, field, code):
    body = problem_of(api.post("/api/v1/tasks", payload, format="json"), 400)
    assert body["type"] == "urn:taskforge:problem:validation-error"
    assert error_fields(body).get(field) == code, body["errors"]
    assert not Task.objects.exists()


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "x" * 255},
        {"name": "x", "description": "d" * 10_000},
        {"name": "x", "script_type": "python", "script_content": "é" * (MIB // 2)},
        {"name": "x", "timeout_seconds": 1},
        {"name": "x", "timeout_seconds": 3600},
        {"name": "x", "priority": 0},
        {"name": "x", "priority": 10},
        {"name": "x", "tags": [f"t{i}" for i in range(32)]},
        {"name": "x", "tags": ["a" * 64, "A-Z_0.9:x"]},
        {"name": "x", "metadata": {"blob": "x" * (64 * 1024 - 20)}},
        {"name": "x", "agent": "a" * 64},
        {"name": "x", "max_retries": 0},
        {"name": "x", "max_concurrency": 1},
    ],
)
def test_boundaries_are_accepted(api, payload):
    assert api.post("/api/v1/tasks", payload, format="json").status_code == 201


def test_tags_fall_back_to_metadata_tags(api):
    body = api.post("/api/v1/tasks", {"name": "x", "metadata": {"tags": ["a", "b", "a"]}}).json()
    assert body["tags"] == ["a", "b"]
    explicit = api.post("/api/v1/tasks", {"name": "x", "tags": ["c"], "metadata": {"tags": ["a"]}}).json()
    assert explicit["tags"] == ["c"]
    not_strings = api.post("/api/v1/tasks", {"name": "x", "metadata": {"tags": [1, 2]}}).json()
    assert not_strings["tags"] == []


def test_create_in_team_project_needs_member_role(api, team, key_client):
    project, viewer = team(Role.VIEWER)
    assert api.post("/api/v1/tasks", {"name": "x", "project": str(project.pk)}).status_code == 201
    body = problem_of(
        key_client(viewer).post("/api/v1/tasks", {"name": "x", "project": str(project.pk)}), 403
    )
    assert "viewer" in body["detail"]


def test_create_in_a_project_you_cannot_see_is_400_not_a_leak(api, other_user):
    body = problem_of(
        api.post("/api/v1/tasks", {"name": "x", "project": str(other_user.personal_project.pk)}), 400
    )
    assert error_fields(body) == {"project": "does_not_exist"}


def test_project_restricted_key_defaults_to_its_project(user, team, key_client):
    project, _ = team(Role.MEMBER)
    client = key_client(user, project=project)
    assert client.post("/api/v1/tasks", {"name": "x"}).json()["project"] == str(project.pk)
    personal = str(user.personal_project.pk)
    assert problem_of(client.post("/api/v1/tasks", {"name": "x", "project": personal}), 400)


# --- Read, update, delete -----------------------------------------------------------------------
def test_retrieve_and_archived_task_is_still_reachable(api, task):
    task.archived = True
    task.save()
    body = api.get(f"/api/v1/tasks/{task.pk}").json()
    assert body["id"] == str(task.pk)
    assert body["archived"] is True


def test_non_uuid_id_is_404(api):
    problem_of(api.get("/api/v1/tasks/not-a-task"), 404)


def test_patch_changes_given_fields_and_records_an_event(api, task):
    response = api.patch(f"/api/v1/tasks/{task.pk}", {"priority": 9, "status": "cancelled", "result": 1})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["priority"] == 9
    assert body["status"] == "cancelled"
    assert body["result"] is None
    assert body["name"] == task.name
    types = list(Event.objects.filter(task=task).values_list("type", "data"))
    assert (EventType.TASK_UPDATED, {"fields": ["priority"]}) in types
    assert (EventType.TASK_STATUS_CHANGED, {"from": "pending", "to": "cancelled", "reason": "move"}) in types


def test_put_replaces_and_resets_omitted_fields(api, task):
    task.priority = 9
    task.tags = ["x"]
    task.description = "old"
    task.save()
    body = api.put(f"/api/v1/tasks/{task.pk}", {"name": "renamed"}).json()
    assert body["name"] == "renamed"
    assert body["priority"] == 5
    assert body["tags"] == []
    assert body["description"] == ""
    assert body["status"] == "pending"


def test_put_without_name_is_400(api, task):
    assert error_fields(problem_of(api.put(f"/api/v1/tasks/{task.pk}", {"priority": 1}), 400)) == {
        "name": "required"
    }


def test_patch_script_needs_type_unless_task_has_one(api, task):
    problem_of(api.patch(f"/api/v1/tasks/{task.pk}", {"script_content": "echo"}), 400)
    api.patch(f"/api/v1/tasks/{task.pk}", {"script_type": "bash"})
    assert api.patch(f"/api/v1/tasks/{task.pk}", {"script_content": "echo"}).status_code == 200


def test_forbidden_status_change_is_409_listing_allowed(api, task):
    body = problem_of(api.patch(f"/api/v1/tasks/{task.pk}", {"status": "completed"}), 409)
    assert body["type"] == "urn:taskforge:problem:invalid-transition"
    assert body["allowed"] == ["queued", "running", "cancelled"]
    assert body["status"] == 409
    task.refresh_from_db()
    assert task.status == "pending"


def test_patch_cannot_move_task_to_another_project(api, task, team):
    project, _ = team(Role.MEMBER)
    body = problem_of(api.patch(f"/api/v1/tasks/{task.pk}", {"project": str(project.pk)}), 400)
    assert error_fields(body) == {"project": "immutable"}


def test_dependencies_and_cycles(api, user):
    a, b, c = (TaskFactory(created_by=user, name=n) for n in "abc")
    assert api.patch(f"/api/v1/tasks/{a.pk}", {"depends_on": [str(b.pk)]}).status_code == 200
    assert api.patch(f"/api/v1/tasks/{b.pk}", {"depends_on": [str(c.pk)]}).status_code == 200
    body = problem_of(api.patch(f"/api/v1/tasks/{c.pk}", {"depends_on": [str(a.pk)]}), 400)
    assert error_fields(body) == {"depends_on": "cycle"}
    assert f"{c.pk} -> {a.pk} -> {b.pk} -> {c.pk}" in body["errors"][0]["message"]
    body = problem_of(api.patch(f"/api/v1/tasks/{a.pk}", {"depends_on": [str(a.pk)]}), 400)
    assert error_fields(body) == {"depends_on": "cycle"}
    assert api.get(f"/api/v1/tasks/{a.pk}").json()["depends_on"] == [str(b.pk)]


def test_depends_on_another_projects_task_is_rejected(api, other_user):
    foreign = TaskFactory(created_by=other_user)
    body = problem_of(api.post("/api/v1/tasks", {"name": "x", "depends_on": [str(foreign.pk)]}), 400)
    assert error_fields(body) == {"depends_on": "does_not_exist"}


def test_delete_keeps_history_and_refuses_running_tasks(api, user, task):
    running = TaskFactory(created_by=user, status=Status.RUNNING)
    problem_of(api.delete(f"/api/v1/tasks/{running.pk}"), 409)
    assert api.delete(f"/api/v1/tasks/{task.pk}").status_code == 204
    assert not Task.objects.filter(pk=task.pk).exists()
    assert Event.objects.filter(task_id=task.pk, type=EventType.TASK_DELETED).exists()


def test_move_endpoint(api, task):
    body = api.post(f"/api/v1/tasks/{task.pk}/move", {"status": "queued"}).json()
    assert body["status"] == "queued"
    body = problem_of(api.post(f"/api/v1/tasks/{task.pk}/move", {"status": "pending"}), 409)
    assert body["allowed"] == ["running", "cancelled"]
    body = problem_of(api.post(f"/api/v1/tasks/{task.pk}/move", {"status": "done"}), 400)
    assert error_fields(body) == {"status": "invalid_choice"}


# --- Notes and history --------------------------------------------------------------------------
def test_notes_and_events(api, task):
    response = api.post(f"/api/v1/tasks/{task.pk}/notes", {"body": "first"})
    assert response.status_code == 201
    assert response.json()["author"]["username"] == "alice"
    api.post(f"/api/v1/tasks/{task.pk}/notes", {"body": "second"})
    problem_of(api.post(f"/api/v1/tasks/{task.pk}/notes", {"body": "  "}), 400)
    problem_of(api.post(f"/api/v1/tasks/{task.pk}/notes", {"body": "x" * 10_001}), 400)
    notes = api.get(f"/api/v1/tasks/{task.pk}/notes").json()
    assert notes["count"] == 2
    assert [n["body"] for n in notes["results"]] == ["first", "second"]
    api.post(f"/api/v1/tasks/{task.pk}/move", {"status": "cancelled"})
    events = api.get(f"/api/v1/tasks/{task.pk}/events").json()["results"]
    assert [e["type"] for e in events] == ["task.note_added", "task.note_added", "task.status_changed"]
    assert events[0]["actor"]["username"] == "alice"
    assert events[0]["api_key"] == api.api_key.prefix


# --- Tenancy, roles, scopes -------------------------------------------------------------------------
VERBS = [
    ("get", ""),
    ("put", ""),
    ("patch", ""),
    ("delete", ""),
    ("post", "/move"),
    ("post", "/claim"),
    ("post", "/heartbeat"),
    ("post", "/complete"),
    ("post", "/fail"),
    ("post", "/release"),
    ("get", "/notes"),
    ("post", "/notes"),
    ("get", "/events"),
]


@pytest.mark.parametrize(("method", "suffix"), VERBS)
def test_another_projects_task_is_404_on_every_verb(other_api, task, method, suffix):
    response = getattr(other_api, method)(
        f"/api/v1/tasks/{task.pk}{suffix}", {"name": "x", "status": "queued", "body": "x", "error": "x"}
    )
    problem_of(response, 404)
    task.refresh_from_db()
    assert task.status == "pending"
    assert task.name != "x"


def test_other_projects_tasks_are_not_listed(api, other_api, task):
    assert api.get("/api/v1/tasks").json()["count"] == 1
    assert other_api.get("/api/v1/tasks").json()["count"] == 0


@pytest.mark.parametrize(
    ("method", "suffix", "data"),
    [
        ("patch", "", {"priority": 1}),
        ("put", "", {"name": "x"}),
        ("delete", "", None),
        ("post", "/move", {"status": "queued"}),
        ("post", "/claim", {}),
        ("post", "/notes", {"body": "x"}),
    ],
)
def test_viewers_read_but_cannot_write(team, key_client, user, method, suffix, data):
    project, viewer = team(Role.VIEWER)
    task = TaskFactory(created_by=user, project=project)
    client = key_client(viewer)
    assert client.get(f"/api/v1/tasks/{task.pk}").status_code == 200
    assert client.get(f"/api/v1/tasks/{task.pk}/events").status_code == 200
    assert client.get(f"/api/v1/tasks/{task.pk}/notes").status_code == 200
    body = problem_of(getattr(client, method)(f"/api/v1/tasks/{task.pk}{suffix}", data), 403)
    assert body["type"] == "urn:taskforge:problem:insufficient-role"


def test_members_of_a_team_project_can_write(team, key_client, user):
    project, member = team(Role.MEMBER)
    task = TaskFactory(created_by=user, project=project)
    assert key_client(member).patch(f"/api/v1/tasks/{task.pk}", {"priority": 1}).status_code == 200


def test_read_scope_cannot_write(user, key_client, task):
    client = key_client(user, ["task:read"])
    assert client.get("/api/v1/tasks").status_code == 200
    assert client.get(f"/api/v1/tasks/{task.pk}/events").status_code == 200
    for response in (
        client.post("/api/v1/tasks", {"name": "x"}),
        client.patch(f"/api/v1/tasks/{task.pk}", {"priority": 1}),
        client.post(f"/api/v1/tasks/{task.pk}/claim"),
        client.post("/api/v1/tasks/claim-next"),
        client.post(f"/api/v1/tasks/{task.pk}/notes", {"body": "x"}),
    ):
        body = problem_of(response, 403)
        assert body["required_scope"] == "task:write"
        assert "task:write" in body["detail"]


def test_other_scopes_cannot_read_tasks(user, key_client):
    body = problem_of(key_client(user, ["execution:read"]).get("/api/v1/tasks"), 403)
    assert body["required_scope"] == "task:read"


def test_status_counts_tasks_by_status(api, user, other_user):
    TaskFactory.create_batch(2, created_by=user)
    TaskFactory(created_by=user, status=Status.FAILED)
    TaskFactory(created_by=other_user)
    tasks = api.get("/api/v1/status").json()["tasks"]
    assert tasks == {"pending": 2, "queued": 0, "running": 0, "completed": 0, "failed": 1, "cancelled": 0}


def test_openapi_schema_has_no_warnings():
    out = StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    schema = out.getvalue()
    for path in ("/api/v1/tasks/claim-next:", "/api/v1/tasks/{id}/heartbeat:", "/api/v1/tasks/{id}/events:"):
        assert path in schema
