from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from accounts.models import User
from executions.models import Execution, Trigger
from templates_app.models import Template

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(user: User) -> Client:
    user.is_staff = True
    user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)
    return client


def form_data(project: Any, **overrides: Any) -> dict[str, Any]:
    data = {
        "project": str(project.pk),
        "slug": "greet",
        "name": "Greet",
        "description": "",
        "name_pattern": "Greet {{ who }}",
        "description_pattern": "",
        "script_type": "bash",
        "script": "echo hello {{ who }} {{ times }}",
        "timeout_seconds": "60",
        "priority": "5",
        "tags": "[]",
        "metadata": "{}",
        "agent": "",
        "max_retries": "0",
        "max_concurrency": "1",
        "parameters-TOTAL_FORMS": "2",
        "parameters-INITIAL_FORMS": "0",
        "parameters-MIN_NUM_FORMS": "0",
        "parameters-MAX_NUM_FORMS": "1000",
        "parameters-0-position": "0",
        "parameters-0-name": "who",
        "parameters-0-type": "string",
        "parameters-0-required": "on",
        "parameters-1-position": "1",
        "parameters-1-name": "times",
        "parameters-1-type": "integer",
        "parameters-1-default": "2",
        "parameters-1-max": "5",
    }
    data.update(overrides)
    return data


def test_create_with_inline_parameters_and_pages_render(admin_client, project):
    response = admin_client.post("/admin/templates_app/template/add/", form_data(project))
    assert response.status_code == 302, response.content.decode()[:3000]
    template = Template.objects.get()
    assert [p.as_spec()["name"] for p in template.parameters.all()] == ["who", "times"]
    assert template.parameters.get(name="times").default == 2
    assert template.version == 1
    assert admin_client.get("/admin/templates_app/template/").status_code == 200
    page = admin_client.get(f"/admin/templates_app/template/{template.pk}/change/")
    assert page.status_code == 200 and "Trigger…" in page.content.decode()
    # Editing through the admin bumps the version.
    ids = list(template.parameters.values_list("pk", flat=True))
    edit = form_data(project, name="Greet people", **{"parameters-INITIAL_FORMS": "2"})
    for index, pk in enumerate(ids):
        edit[f"parameters-{index}-id"] = str(pk)
        edit[f"parameters-{index}-template"] = str(template.pk)
    response = admin_client.post(f"/admin/templates_app/template/{template.pk}/change/", edit)
    assert response.status_code == 302, response.content.decode()[:3000]
    template.refresh_from_db()
    assert template.version == 2 and template.name == "Greet people"


def test_admin_refuses_undeclared_placeholders_and_bad_defaults(admin_client, project):
    data = form_data(project, script="echo {{ whom }}", **{"parameters-1-default": "9"})
    response = admin_client.post("/admin/templates_app/template/add/", data)
    assert response.status_code == 200
    html = response.content.decode()
    assert "{{ whom }} is not a declared parameter" in html
    assert "The default breaks its own rules" in html
    assert not Template.objects.exists()


def test_trigger_form_typed_fields_errors_and_redirect(admin_client, user, project):
    from templates_app import services

    template = services.template_create(
        project=project,
        actor=user,
        slug="greet",
        name="Greet",
        name_pattern="Greet {{ who }}",
        script_type="bash",
        script="echo hello {{ who }} {{ times }} {{ loud }} {{ token }}",
        parameters=[
            {"name": "who", "type": "string", "required": True, "pattern": "[a-z]+"},
            {"name": "times", "type": "integer", "max": 5, "default": 1},
            {"name": "loud", "type": "boolean"},
            {"name": "colour", "type": "choice", "choices": ["red", "blue"]},
            {"name": "token", "type": "string", "secret": True},
        ],
    )
    url = f"/admin/templates_app/template/{template.pk}/trigger/"
    page = admin_client.get(url).content.decode()
    assert 'type="number"' in page and 'type="checkbox"' in page and "<select" in page
    assert 'type="password"' in page
    bad = admin_client.post(url, {"who": "Bob!", "times": "9", "token": "hunter2"})
    assert bad.status_code == 200
    html = bad.content.decode()
    assert "Ensure this value is less than or equal to 5" in html
    assert "hunter2" not in html
    bad = admin_client.post(url, {"who": "Bob", "times": "2"})
    assert "Does not match the pattern" in bad.content.decode()
    good = admin_client.post(url, {"who": "bob", "times": "3", "loud": "on", "token": "hunter2"})
    execution = Execution.objects.get()
    assert good.status_code == 302
    assert good["Location"] == f"/admin/executions/execution/{execution.pk}/change/"
    assert execution.trigger == Trigger.ADMIN
    assert execution.parameters == {"who": "bob", "times": 3, "loud": True, "token": "***"}
    shown = admin_client.get(good["Location"]).content.decode()
    assert "hunter2" not in shown
    assert (
        execution.task.name
        in admin_client.get(f"/admin/templates_app/template/{template.pk}/change/").content.decode()
    )
