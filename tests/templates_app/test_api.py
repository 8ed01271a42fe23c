from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from accounts.models import Role
from events.models import Event
from executions.models import Execution, Trigger
from tasks.models import Task
from templates_app.models import Template
from tests.factories import MembershipFactory, UserFactory
from tests.tasks.conftest import error_fields, problem_of
from tests.templates_app.conftest import DEPLOY_PARAMETERS

pytestmark = pytest.mark.django_db

LIST = "/api/v1/templates"


def body(**overrides: Any) -> dict[str, Any]:
    data = {
        "slug": "deploy",
        "name": "Deploy",
        "name_pattern": "Deploy {{ service }} to {{ env }}",
        "description_pattern": "{{ replicas }} replicas",
        "script_type": "bash",
        "script_content": 'service={{ service }}\necho "deploying $service" {{ replicas }}',
        "priority": 7,
        "tags": ["deploy"],
        "parameters": DEPLOY_PARAMETERS,
    }
    data.update(overrides)
    return data


def test_create_read_list_and_lookup_by_slug(api, project):
    response = api.post(LIST, body(), format="json")
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["version"] == 1
    assert created["project"] == str(project.pk)
    assert [p["name"] for p in created["parameters"]] == [p["name"] for p in DEPLOY_PARAMETERS]
    assert response["Location"].endswith(f"/api/v1/templates/{created['id']}")
    assert api.get(f"{LIST}/{created['id']}").json()["slug"] == "deploy"
    assert api.get(f"{LIST}/deploy").json()["id"] == created["id"]
    listed = api.get(LIST).json()
    assert [t["slug"] for t in listed["results"]] == ["deploy"]


def test_every_change_bumps_the_version(api, make_template):
    template = make_template()
    response = api.patch(f"{LIST}/deploy", {"priority": 9}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["version"] == 2
    # Same values again: nothing changed, no bump.
    assert api.patch(f"{LIST}/deploy", {"priority": 9}, format="json").json()["version"] == 2
    params = [*DEPLOY_PARAMETERS, {"name": "extra", "type": "string"}]
    assert api.patch(f"{LIST}/deploy", {"parameters": params}, format="json").json()["version"] == 3
    template.refresh_from_db()
    assert template.version == 3
    assert [p.name for p in template.parameters.all()][-1] == "extra"


def test_undeclared_placeholders_are_refused_by_name(api):
    response = api.post(
        LIST,
        body(
            name_pattern="Deploy {{ servce }}", script_content="echo {{ nope }}", parameters=DEPLOY_PARAMETERS
        ),
        format="json",
    )
    problem = problem_of(response, 400)
    fields = error_fields(problem)
    assert fields["name_pattern"] == "undeclared_placeholder"
    assert fields["script_content"] == "undeclared_placeholder"
    messages = " ".join(e["message"] for e in problem["errors"])
    assert "{{ servce }}" in messages and "{{ nope }}" in messages
    assert not Template.objects.exists()


def test_a_default_that_breaks_its_own_rules_is_refused(api):
    params = [
        {"name": "n", "type": "integer", "min": 1, "max": 5, "default": 9},
        {"name": "c", "type": "choice", "choices": ["a", "b"], "default": "z"},
        {"name": "s", "type": "string", "pattern": "[a-z]+", "default": "ABC"},
        {"name": "t", "type": "string", "secret": True, "default": "hunter2"},
        {"name": "b", "type": "boolean", "default": "true"},
    ]
    data = body(name_pattern="x", description_pattern="", script_content="echo hi", parameters=params)
    response = api.post(LIST, data, format="json")
    fields = error_fields(problem_of(response, 400))
    assert fields == {
        "parameters[0].default": "max_value",
        "parameters[1].default": "invalid_choice",
        "parameters[2].default": "pattern_mismatch",
        "parameters[3].default": "not_allowed",
        "parameters[4].default": "invalid_type",
    }
    assert "hunter2" not in response.content.decode()


def test_placeholders_inside_quotes_are_refused(api):
    response = api.post(LIST, body(script_content='echo "Hello {{ service }}"'), format="json")
    problem = problem_of(response, 400)
    assert error_fields(problem)["script_content"] == "unsafe_placeholder"
    assert "double-quoted" in problem["errors"][0]["message"]


def test_secret_placeholders_cannot_be_in_patterns(api):
    response = api.post(LIST, body(name_pattern="Deploy {{ token }}"), format="json")
    assert error_fields(problem_of(response, 400))["name_pattern"] == "secret_placeholder"


def test_slug_is_unique_per_project_and_not_a_uuid(api, make_template):
    make_template()
    assert error_fields(problem_of(api.post(LIST, body(), format="json"), 400))["slug"] == "unique"
    response = api.post(LIST, body(slug="6f1c1a52-3b1e-4c55-9a2e-0b5d9e0c7a11"), format="json")
    assert error_fields(problem_of(response, 400))["slug"] == "invalid"


def test_ambiguous_slug_answers_409_and_project_param_resolves(user, key_client, make_template, project):
    mine = make_template()
    team = MembershipFactory(user=user, role=Role.ADMIN).project
    theirs = make_template(in_project=team)
    api = key_client(user)  # made after joining the team: its slug lookups see both projects
    problem = problem_of(api.get(f"{LIST}/deploy"), 409)
    assert problem["type"].endswith("ambiguous-slug")
    assert api.get(f"{LIST}/deploy?project={team.pk}").json()["id"] == str(theirs.pk)
    assert api.get(f"{LIST}/deploy?project={project.pk}").json()["id"] == str(mine.pk)
    assert api.get(f"{LIST}/{theirs.pk}").status_code == 200


def test_writing_needs_admin_role_and_template_write_scope(user, key_client, team, make_template):
    project, member = team(Role.MEMBER)
    make_template(in_project=project)
    member_api = key_client(member)
    assert member_api.get(f"{LIST}/deploy").status_code == 200
    problem = problem_of(member_api.patch(f"{LIST}/deploy", {"priority": 1}, format="json"), 403)
    assert "admin" in problem["detail"]
    reader = key_client(user, ["template:read"])
    problem = problem_of(reader.patch(f"{LIST}/deploy", {"priority": 1}, format="json"), 403)
    assert problem["required_scope"] == "template:write"


def test_another_projects_template_is_404(other_api, make_template):
    template = make_template()
    assert other_api.get(f"{LIST}/{template.pk}").status_code == 404
    assert other_api.get(f"{LIST}/deploy").status_code == 404
    assert other_api.post(f"{LIST}/deploy/trigger", {}, format="json").status_code == 404


def test_delete_keeps_tasks(api, make_template):
    template = make_template()
    response = api.post(
        f"{LIST}/deploy/trigger", {"parameters": {"service": "api"}, "execute": False}, format="json"
    )
    task_id = response.json()["task"]["id"]
    assert api.delete(f"{LIST}/deploy").status_code == 204
    task = Task.objects.get(pk=task_id)
    assert task.template_id is None and task.template_version == template.version


# --- trigger --------------------------------------------------------------------------------------
def test_trigger_creates_task_and_execution(api, make_template, project):
    template = make_template()
    response = api.post(
        f"{LIST}/deploy/trigger",
        {
            "parameters": {"service": "api", "replicas": 3, "token": "s3cr3t-value"},
            "overrides": {"priority": 9},
        },
        format="json",
    )
    assert response.status_code == 202, response.content  # queued: not finished (see test_trigger)
    data = response.json()
    task, execution = data["task"], data["execution"]
    assert task["name"] == "Deploy api to staging"
    assert task["template"] == str(template.pk) and task["template_version"] == 1
    assert task["priority"] == 9
    assert task["parameters"] == {
        "service": "api",
        "env": "staging",
        "replicas": 3,
        "dry_run": False,
        "token": "***",
    }
    assert execution["trigger"] == Trigger.TEMPLATE
    assert execution["parameters"]["token"] == "***"
    assert response["Location"].endswith(f"/api/v1/tasks/{task['id']}")
    stored = Execution.objects.get(pk=execution["id"])
    assert stored.secret_parameters == {"token": "s3cr3t-value"}
    assert "s3cr3t-value" not in stored.script
    assert "s3cr3t-value" not in response.content.decode()
    for event in Event.objects.all():
        assert "s3cr3t-value" not in str(event.data)
    # The tasks list filters by template.
    listed = api.get(f"/api/v1/tasks?template={template.pk}").json()
    assert [t["id"] for t in listed["results"]] == [task["id"]]


def test_trigger_without_execute_creates_only_the_task(api, make_template):
    make_template()
    response = api.post(
        f"{LIST}/deploy/trigger", {"parameters": {"service": "api"}, "execute": False}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["execution"] is None
    assert not Execution.objects.exists()


def test_trigger_names_every_bad_parameter_and_creates_nothing(api, make_template):
    make_template()
    response = api.post(
        f"{LIST}/deploy/trigger",
        {
            "parameters": {
                "replicas": "3",
                "ratio": 1.5,
                "env": "qa",
                "dry_run": "yes",
                "unknown": 1,
                "token": 12345,
            }
        },
        format="json",
    )
    problem = problem_of(response, 400)
    assert error_fields(problem) == {
        "parameters.service": "required",
        "parameters.replicas": "invalid_type",
        "parameters.ratio": "max_value",
        "parameters.env": "invalid_choice",
        "parameters.dry_run": "invalid_type",
        "parameters.unknown": "unknown",
        "parameters.token": "invalid_type",
    }
    assert "12345" not in response.content.decode()
    assert not Task.objects.exists() and not Execution.objects.exists()


@pytest.mark.parametrize(
    ("value", "code"),
    [("Api", "pattern_mismatch"), ("a" * 21, "max_length"), ("", "pattern_mismatch")],
)
def test_string_rules(api, make_template, value, code):
    make_template()
    response = api.post(f"{LIST}/deploy/trigger", {"parameters": {"service": value}}, format="json")
    assert error_fields(problem_of(response, 400)) == {"parameters.service": code}


def test_trigger_scopes_and_role(user, key_client, team, make_template):
    project, viewer = team(Role.VIEWER)
    make_template(in_project=project)
    url = f"{LIST}/deploy/trigger"
    payload = {"parameters": {"service": "api"}}
    assert problem_of(key_client(viewer).post(url, payload, format="json"), 403)
    only_templates = key_client(user, ["template:read"])
    assert problem_of(only_templates.post(url, payload, format="json"), 403)["required_scope"] == "task:write"
    no_exec = key_client(user, ["template:read", "task:write"])
    assert problem_of(no_exec.post(url, payload, format="json"), 403)["required_scope"] == "execution:write"
    assert no_exec.post(url, {**payload, "execute": False}, format="json").status_code == 201
    full = key_client(user, ["template:read", "task:write", "execution:write"])
    assert full.post(url, payload, format="json").status_code == 202


# --- execute with parameters ----------------------------------------------------------------------
def trigger(api, **parameters: Any) -> dict[str, Any]:
    response = api.post(f"{LIST}/deploy/trigger", {"parameters": parameters, "execute": False}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["task"]


def test_execute_reuses_the_tasks_values_and_validates_new_ones(api, make_template):
    make_template()
    task = trigger(api, service="api", replicas=4)
    url = reverse("task-execute", kwargs={"id": task["id"]})
    first = api.post(url, {}, format="json")
    assert first.status_code == 202, first.content
    assert first.json()["parameters"]["replicas"] == 4
    assert "x'4'" not in Execution.objects.get(pk=first.json()["id"]).script
    again = api.post(url, {"parameters": {"replicas": 5}}, format="json")
    assert again.json()["parameters"]["replicas"] == 5
    bad = api.post(url, {"parameters": {"replicas": 50, "nope": 1}}, format="json")
    assert error_fields(problem_of(bad, 400)) == {
        "parameters.replicas": "max_value",
        "parameters.nope": "unknown",
    }


def test_execute_requires_secret_again(api, make_template):
    make_template(
        parameters=[
            *DEPLOY_PARAMETERS[:-1],
            {"name": "token", "type": "string", "secret": True, "required": True},
        ]
    )
    response = api.post(
        f"{LIST}/deploy/trigger", {"parameters": {"service": "api", "token": "abc"}}, format="json"
    )
    task_id = response.json()["task"]["id"]
    url = reverse("task-execute", kwargs={"id": task_id})
    problem = problem_of(api.post(url, {}, format="json"), 400)
    assert error_fields(problem) == {"parameters.token": "required"}
    assert api.post(url, {"parameters": {"token": "xyz"}}, format="json").status_code == 202


def test_a_task_without_template_takes_no_parameters(api, project):
    task = Task.objects.create(project=project, name="t", script_type="bash", script_content="echo hi")
    url = reverse("task-execute", kwargs={"id": task.pk})
    problem = problem_of(api.post(url, {"parameters": {"a": 1}}, format="json"), 400)
    assert error_fields(problem) == {"parameters": "no_parameters"}
    assert api.post(url, {}, format="json").status_code == 202


def test_session_user_can_use_the_browsable_api(client, user, make_template):
    make_template()
    client.force_login(user)
    assert client.get(f"{LIST}/deploy", HTTP_ACCEPT="application/json").status_code == 200


def test_other_user_cannot_see_template_by_slug(key_client, make_template):
    make_template()
    stranger = UserFactory()
    assert key_client(stranger).get(f"{LIST}/deploy").status_code == 404
