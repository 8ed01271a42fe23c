"""Issue 18 item 4: a templated task whose script is changed leaves its template and its
secret parameters, and a secret is only handed to the script its template rendered."""

from __future__ import annotations

import importlib
import uuid

import pytest

from accounts.models import Role
from events.models import Event, EventType
from executions.models import Execution, ExecutionStatus
from tasks import services as task_services
from tasks.models import Task
from templates_app import parameters as params
from templates_app import services
from tests.tasks.conftest import problem_of

pytestmark = pytest.mark.django_db

SECRET = f"s3cr3t-{uuid.uuid4().hex}"
SCRIPT = 'service={{ service }}\ntok={{ token }}\necho "deploying $service with ${#tok} chars"'
STEAL = 'echo "stolen: $PARAM_TOKEN"; cat "$TASKFORGE_PARAMS_FILE"'
PARAMETERS = [
    {"name": "service", "type": "string", "required": True},
    {"name": "token", "type": "string", "secret": True},
]


@pytest.fixture
def shared(user, team, key_client):
    """(project, alice's admin client, a member's client, a viewer's client, task T)."""
    project, member = team(Role.MEMBER)
    from tests.factories import MembershipFactory, UserFactory

    viewer = UserFactory()
    MembershipFactory(project=project, user=viewer, role=Role.VIEWER)
    template = services.template_create(
        project=project,
        actor=user,
        slug="deploy",
        name="Deploy",
        name_pattern="Deploy {{ service }}",
        script_type="bash",
        script=SCRIPT,
        parameters=PARAMETERS,
    )
    task, _ = services.template_trigger(
        template=template, actor=user, parameters={"service": "api"}, execute=False
    )
    return project, key_client(user), key_client(member), key_client(viewer), task


def execute(client, task, **values):
    return client.post(f"/api/v1/tasks/{task.pk}/execute", {"parameters": values}, format="json")


def printed(client, task, execution_id) -> str:
    return client.get(f"/api/v1/tasks/{task.pk}/executions/{execution_id}").json()["stdout"]


def test_an_untouched_templated_task_gets_its_secret(shared, inline_worker):
    _project, admin, _member, viewer, task = shared
    assert task.script_digest == params.script_digest(
        task.script_type, task.script_content, task.parameter_spec
    )
    response = execute(admin, task, token=SECRET)
    assert response.status_code == 202, response.content
    assert inline_worker.run_pending() == 1
    assert printed(viewer, task, response.json()["id"]) == f"deploying api with {len(SECRET)} chars\n"


def test_a_member_rewriting_the_script_detaches_the_task_and_never_gets_the_secret(shared, inline_worker):
    _project, admin, member, viewer, task = shared
    response = member.patch(f"/api/v1/tasks/{task.pk}", {"script_content": STEAL}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["template"] is None and body["template_version"] is None
    assert [item["name"] for item in body["parameter_spec"]] == ["service"]
    task.refresh_from_db()
    assert task.script_digest == "" and "token" not in task.parameters
    event = Event.objects.filter(task=task, type=EventType.TASK_UPDATED).latest("id")
    assert event.data["detached_from_template"] is not None
    assert event.data["dropped_secret_parameters"] == ["token"]
    # The admin's next execute with the secret: refused, nothing queued, nothing printed.
    refused = execute(admin, task, token=SECRET)
    problem = problem_of(refused, 400)
    assert SECRET not in refused.content.decode()
    assert "parameters.token" in {e["field"] for e in problem["errors"]}
    assert not Execution.objects.filter(task=task).exists()
    # Without it the new script runs, and has nothing to print.
    ran = execute(admin, task)
    assert ran.status_code == 202, ran.content
    assert inline_worker.run_pending() == 1
    assert SECRET not in printed(viewer, task, ran.json()["id"])


def test_the_rule_is_the_same_for_an_admin_for_script_type_and_for_put(shared):
    _project, admin, _member, _viewer, task = shared
    response = admin.patch(f"/api/v1/tasks/{task.pk}", {"script_type": "python"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["template"] is None
    assert [item["name"] for item in response.json()["parameter_spec"]] == ["service"]
    again = services.template_trigger(
        template=Task.objects.get(pk=task.pk).project.templates.get(slug="deploy"),
        actor=task.created_by,
        parameters={"service": "api"},
        execute=False,
    )[0]
    put = admin.put(f"/api/v1/tasks/{again.pk}", {"name": "renamed"}, format="json")
    assert put.status_code == 200, put.content
    assert put.json()["template"] is None and put.json()["script_content"] == ""
    assert Event.objects.filter(task=again, data__dropped_secret_parameters=["token"]).exists()


def test_other_changes_keep_the_template_and_the_secret(shared, inline_worker):
    _project, admin, member, viewer, task = shared
    response = member.patch(f"/api/v1/tasks/{task.pk}", {"priority": 9, "name": "x"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["template"] is not None
    ran = execute(admin, task, token=SECRET)
    assert ran.status_code == 202, ran.content
    assert inline_worker.run_pending() == 1
    assert printed(viewer, task, ran.json()["id"]).endswith(f"{len(SECRET)} chars\n")


def test_the_admin_save_path_detaches_too(shared, user):
    # The admin saves through task_update with the changed fields, as here.
    *_rest, task = shared
    task_services.task_update(task=task, actor=user, fields={"script_content": STEAL})
    task.refresh_from_db()
    assert task.template_id is None and not any(i.get("secret") for i in task.parameter_spec)


def test_a_script_changed_behind_the_services_back_is_not_given_secrets(shared, inline_worker):
    _project, admin, _member, viewer, task = shared
    # A write that bypasses every service (a shell, a raw UPDATE): the digest no longer matches.
    Task.objects.filter(pk=task.pk).update(
        script_content='service={{ service }}\ntok={{ token }}\necho "stolen: $tok"'
    )
    refused = execute(admin, task, service="api", token=SECRET)
    problem = problem_of(refused, 400)
    assert {e["code"] for e in problem["errors"]} == {"script_changed"}
    assert SECRET not in refused.content.decode()
    assert not Execution.objects.filter(task=task).exists()
    # The same through the service (the admin's Run button, the CLI).
    from django.core.exceptions import ValidationError

    from executions.services import execution_enqueue

    with pytest.raises(ValidationError):
        execution_enqueue(task=task, actor=None, parameters={"token": SECRET})
    ran = execute(admin, task)  # no secret given: it runs without one
    assert ran.status_code == 202
    assert inline_worker.run_pending() == 1
    execution = Execution.objects.get(pk=ran.json()["id"])
    assert execution.status == ExecutionStatus.SUCCEEDED
    assert SECRET not in printed(viewer, task, execution.pk)


def test_a_stranger_cannot_patch_the_task(shared, other_api):
    *_rest, task = shared
    assert (
        other_api.patch(f"/api/v1/tasks/{task.pk}", {"script_content": STEAL}, format="json").status_code
        == 404
    )
    task.refresh_from_db()
    assert task.template_id is not None


def test_a_viewer_cannot_patch_the_task(shared):
    _project, _admin, _member, viewer, task = shared
    assert (
        viewer.patch(f"/api/v1/tasks/{task.pk}", {"script_content": STEAL}, format="json").status_code == 403
    )


def test_the_migration_records_digests_only_for_scripts_still_their_templates(shared, user):
    *_rest, task = shared
    template = task.template
    other, _ = services.template_trigger(
        template=template, actor=user, parameters={"service": "b"}, execute=False
    )
    Task.objects.filter(pk__in=[task.pk, other.pk]).update(script_digest="")
    Task.objects.filter(pk=other.pk).update(script_content=STEAL)
    migration = importlib.import_module("tasks.migrations.0005_task_script_digest_scripts")
    from django.apps import apps

    migration.record_digests(apps, None)
    task.refresh_from_db()
    other.refresh_from_db()
    assert task.script_digest == params.script_digest(
        task.script_type, task.script_content, task.parameter_spec
    )
    assert other.script_digest == ""
