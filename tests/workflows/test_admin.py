"""The workflows admin: templates edited as JSON through the services (errors on the form, a
table and a picture of the graph), runs read-only with their steps, the graph coloured by node
status, live while they run, and the start / pause / resume / cancel / retry buttons, each
under the caller's role in the project."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client

from accounts.models import Project, Role, User
from tests.factories import MembershipFactory, UserFactory
from tests.workflows.conftest import diamond, end_node, statuses
from workflows import services
from workflows.models import RunStatus, WorkflowRun, WorkflowTemplate
from workflows.svg import STATUS_STYLE

pytestmark = pytest.mark.django_db

RUNS = "/admin/workflows/workflowrun/"
TEMPLATES = "/admin/workflows/workflowtemplate/"


def client_of(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def root(user: User) -> Client:
    user.is_staff = user.is_superuser = True
    user.save()
    return client_of(user)


@pytest.fixture
def staff(project: Project):
    """``staff(role)``: a client for a staff user with every model permission and ``role`` in
    alice's project (``None``: no membership)."""

    def make(role: str | None) -> Client:
        person = UserFactory(is_staff=True)
        person.user_permissions.add(*Permission.objects.all())
        if role is not None:
            MembershipFactory(project=project, user=person, role=role)
        return client_of(User.objects.get(pk=person.pk))

    return make


@pytest.fixture
def run(make_workflow, user) -> WorkflowRun:
    return services.workflow_run_create(workflow=make_workflow(), actor=user, parameters={"greeting": "yo"})


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def change_data(workflow: WorkflowTemplate, **override: Any) -> dict[str, str]:
    data = {
        "slug": workflow.slug,
        "name": workflow.name,
        "description": workflow.description,
        "parameters": json.dumps(workflow.parameters),
        "nodes": json.dumps(workflow.nodes),
        "edges": json.dumps(workflow.edges),
    }
    data.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in override.items()})
    return data


# --- templates ------------------------------------------------------------------------------------
def test_template_list_and_change_page_show_the_graph(root, make_workflow, step):
    workflow = make_workflow()
    listing = root.get(TEMPLATES).content.decode()
    assert "diamond" in listing and "Diamond" in listing
    assert '<td class="field-node_count">4</td>' in listing and '<td class="field-version">1</td>' in listing
    page = root.get(f"{TEMPLATES}{workflow.pk}/change/").content.decode()
    assert page.count('class="wf-node"') == 4 and page.count('class="wf-edge ') == 4
    assert f"/admin/templates_app/template/{step.pk}/change/" in page  # node -> its template
    assert "<th>bindings</th>" in page and "{{ params.greeting }}" in page
    assert "<th>from</th><th>to</th><th>on</th>" in page
    assert 'name="nodes"' in page and 'name="_save"' in page
    assert f"{TEMPLATES}{workflow.pk}/run/" in page  # Run…


def test_a_cycle_in_the_json_is_shown_on_the_form_and_nothing_is_saved(root, make_workflow):
    workflow = make_workflow()
    before = WorkflowTemplate.objects.values().get(pk=workflow.pk)
    cyclic = [*workflow.edges, {"from": "d", "to": "a", "on": "success"}]
    response = root.post(f"{TEMPLATES}{workflow.pk}/change/", change_data(workflow, edges=cyclic, name="New"))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "cycle" in " ".join(errors["edges"])
    assert "The edges make a cycle through" in response.content.decode()
    assert WorkflowTemplate.objects.values().get(pk=workflow.pk) == before


def test_errors_name_the_node_and_a_good_edit_goes_through_the_service(root, make_workflow):
    workflow = make_workflow()
    nodes = [dict(n) for n in workflow.nodes]
    nodes[3]["parameters"] = {"message": "{{ nodes.zz.outputs.message }}"}
    response = root.post(f"{TEMPLATES}{workflow.pk}/change/", change_data(workflow, nodes=nodes))
    assert response.status_code == 200
    assert any(
        e.startswith("nodes[3].parameters.message:")
        for e in response.context["adminform"].form.errors["nodes"]
    )
    assert WorkflowTemplate.objects.get(pk=workflow.pk).version == 1

    response = root.post(f"{TEMPLATES}{workflow.pk}/change/", change_data(workflow, name="Renamed"))
    assert response.status_code == 302, response.context["adminform"].form.errors
    workflow.refresh_from_db()
    assert (workflow.name, workflow.version) == ("Renamed", 2)


def test_add_form_creates_through_the_service(root, project, step):
    definition = diamond()
    data = {
        "project": str(project.pk),
        "slug": "made-here",
        "name": "Made here",
        "description": "",
        "parameters": json.dumps([{"name": "greeting", "type": "string", "default": "hi"}]),
        "nodes": json.dumps(definition["nodes"]),
        "edges": json.dumps(definition["edges"]),
    }
    assert root.get(f"{TEMPLATES}add/").status_code == 200
    response = root.post(f"{TEMPLATES}add/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    made = WorkflowTemplate.objects.get(slug="made-here")
    assert made.version == 1 and made.nodes[0]["template"] == str(step.pk)  # slug resolved by the service


def test_template_writes_need_the_project_admin(staff, make_workflow):
    workflow = make_workflow()
    member = staff(Role.MEMBER)
    page = member.get(f"{TEMPLATES}{workflow.pk}/change/").content.decode()
    assert 'name="_save"' not in page and 'class="wf-node"' in page
    response = member.post(f"{TEMPLATES}{workflow.pk}/change/", change_data(workflow, name="Nope"))
    assert response.status_code == 403
    assert WorkflowTemplate.objects.get(pk=workflow.pk).name == "Diamond"
    assert (
        staff(Role.ADMIN)
        .post(f"{TEMPLATES}{workflow.pk}/change/", change_data(workflow, name="Yes"))
        .status_code
        == 302
    )
    assert WorkflowTemplate.objects.get(pk=workflow.pk).name == "Yes"


def test_run_form_makes_a_run_for_a_member_and_shows_parameter_errors(staff, make_workflow):
    workflow = make_workflow()
    member = staff(Role.MEMBER)
    url = f"{TEMPLATES}{workflow.pk}/run/"
    assert member.get(url).status_code == 200
    bad = member.post(url, {"name": "", "parameters": json.dumps({"greeting": 5}), "start": "on"})
    assert bad.status_code == 200 and bad.context["form"].errors["parameters"]
    assert not WorkflowRun.objects.exists()
    good = member.post(url, {"name": "mine", "parameters": json.dumps({"greeting": "yo"}), "start": "on"})
    run = WorkflowRun.objects.get()
    assert good.status_code == 302 and good["Location"] == f"{RUNS}{run.pk}/change/"
    assert (run.name, run.status, run.parameters) == ("mine", RunStatus.RUNNING, {"greeting": "yo"})
    viewer = staff(Role.VIEWER)
    assert viewer.post(url, {"parameters": "{}", "start": "on"}).status_code == 403
    assert WorkflowRun.objects.count() == 1


# --- runs -----------------------------------------------------------------------------------------
def test_run_list_and_change_page(root, run):
    listing = root.get(RUNS).content.decode()
    assert "Diamond" in listing and ">running<" in listing
    page = root.get(f"{RUNS}{run.pk}/change/").content.decode()
    # The graph: a queued (its task not claimed yet), the rest waiting; a links to its task and
    # its execution.
    a = run.nodes.get(key="a")
    execution = a.task.executions.get()
    assert 'data-key="a" data-status="queued"' in page and 'data-key="d" data-status="waiting"' in page
    assert f'fill="{STATUS_STYLE["queued"][0]}"' in page
    assert f"/admin/tasks/task/{a.task_id}/change/" in page
    assert f"/admin/executions/execution/{execution.pk}/change/" in page
    assert "<th>attempts</th>" in page and "<th>outputs</th>" in page
    # Buttons the status allows, and the live script.
    assert f"{RUNS}{run.pk}/do/pause/" in page and f"{RUNS}{run.pk}/do/cancel/" in page
    assert f"{RUNS}{run.pk}/do/resume/" not in page and f"{RUNS}{run.pk}/do/retry/" not in page
    assert f"{RUNS}{run.pk}/live/" in page and "setTimeout(poll, 2000)" in page
    assert 'name="_save"' not in page
    assert root.get(f"{RUNS}add/").status_code == 403  # runs are made by the API or the Run form


def test_live_view_follows_the_run_and_the_final_page_has_no_script(root, run):
    end_node(run, "a")
    body = root.get(f"{RUNS}{run.pk}/live/").json()
    assert body["status"] == "running" and body["final"] is False
    assert 'data-key="a" data-status="succeeded"' in body["graph"]
    assert 'data-key="b" data-status="queued"' in body["graph"]
    assert "&quot;message&quot;: &quot;a&quot;" in body["steps"]  # a's outputs, escaped
    svg = root.get(f"{RUNS}{run.pk}/graph.svg")
    assert svg["Content-Type"] == "image/svg+xml" and b'data-status="succeeded"' in svg.content
    for key in ("b", "c"):
        end_node(run, key)
    end_node(run, "d")
    assert root.get(f"{RUNS}{run.pk}/live/").json() | {"graph": "", "steps": "", "badge": ""} == {
        "status": "succeeded",
        "final": True,
        "graph": "",
        "steps": "",
        "badge": "",
    }
    page = root.get(f"{RUNS}{run.pk}/change/").content.decode()
    assert "/live/" not in page and "<script nonce" not in page.split("admin_change_form_document_ready")[-1]
    assert "/do/" not in page  # a succeeded run has no button


def test_buttons_call_the_services(staff, run, user, make_workflow):
    member = staff(Role.MEMBER)
    change = f"{RUNS}{run.pk}/change/"
    response = member.post(f"{RUNS}{run.pk}/do/pause/")
    assert response.status_code == 302 and response["Location"] == change
    assert WorkflowRun.objects.get(pk=run.pk).status == RunStatus.PAUSED
    assert f"{RUNS}{run.pk}/do/resume/" in member.get(change).content.decode()
    member.post(f"{RUNS}{run.pk}/do/resume/")
    assert WorkflowRun.objects.get(pk=run.pk).status == RunStatus.RUNNING
    member.post(f"{RUNS}{run.pk}/do/cancel/")
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert statuses(run)["d"] == "cancelled"
    assert f"{RUNS}{run.pk}/do/retry/" in member.get(change).content.decode()
    response = member.post(f"{RUNS}{run.pk}/do/retry/")
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.retries == 1
    assert any(m.startswith("Retrying") for m in messages_of(response))

    pending = services.workflow_run_create(workflow=run.template, actor=user, start=False)
    assert f"{RUNS}{pending.pk}/do/start/" in member.get(f"{RUNS}{pending.pk}/change/").content.decode()
    member.post(f"{RUNS}{pending.pk}/do/start/")
    assert WorkflowRun.objects.get(pk=pending.pk).status == RunStatus.RUNNING


def test_a_conflict_is_a_message_not_an_error(staff, run):
    member = staff(Role.MEMBER)
    response = member.post(f"{RUNS}{run.pk}/do/resume/")  # it is running, not paused
    assert response.status_code == 302
    assert any("cannot resume" in m for m in messages_of(response))
    assert WorkflowRun.objects.get(pk=run.pk).status == RunStatus.RUNNING
    assert member.post(f"{RUNS}{run.pk}/do/explode/").status_code == 404
    assert member.get(f"{RUNS}{run.pk}/do/pause/").status_code == 405


def test_a_viewer_reads_but_cannot_press(staff, run):
    viewer = staff(Role.VIEWER)
    page = viewer.get(f"{RUNS}{run.pk}/change/")
    assert page.status_code == 200
    assert "/do/" not in page.content.decode()  # no button
    assert viewer.get(f"{RUNS}{run.pk}/live/").status_code == 200
    before = list(WorkflowRun.objects.values())
    for button in ("pause", "cancel", "resume", "retry", "start"):
        assert viewer.post(f"{RUNS}{run.pk}/do/{button}/").status_code == 403
    viewer.post(RUNS, {"action": "cancel", "_selected_action": [str(run.pk)]})
    assert list(WorkflowRun.objects.values()) == before


def test_an_outsider_sees_nothing(staff, run):
    outsider = staff(None)
    assert run.pk not in {r.pk for r in outsider.get(RUNS).context["cl"].result_list}
    assert outsider.get(f"{RUNS}{run.pk}/change/").status_code == 302  # the admin's "does not exist"
    assert outsider.get(f"{TEMPLATES}{run.template_id}/change/").status_code == 302
    for url in (f"{RUNS}{run.pk}/live/", f"{RUNS}{run.pk}/graph.svg", f"{TEMPLATES}{run.template_id}/run/"):
        assert outsider.get(url).status_code == 404, url
    before = list(WorkflowRun.objects.values())
    assert outsider.post(f"{RUNS}{run.pk}/do/cancel/").status_code == 404
    assert list(WorkflowRun.objects.values()) == before


def test_names_are_escaped_in_the_picture_and_the_steps(root, user, project, make_workflow):
    from templates_app.services import template_create

    template_create(
        project=project,
        actor=user,
        slug="evil",
        name='<img src=x onerror="alert(1)">',
        name_pattern="evil",
        script_type="bash",
        script="echo",
    )
    workflow = make_workflow(
        slug="evil-flow",
        parameters=[],
        nodes=[{"key": "x", "template": "evil", "parameters": {}}],
        edges=[],
    )
    run = services.workflow_run_create(workflow=workflow, actor=user)
    for url in (f"{RUNS}{run.pk}/change/", f"{TEMPLATES}{workflow.pk}/change/"):
        page = root.get(url).content.decode()
        assert "<img src=x" not in page
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page


def test_a_slug_taken_between_the_check_and_the_save_is_a_message(root, project, step):
    """Another operator takes the slug after the form was checked: the service's refusal at
    save rolls everything back and is said on the page, not a server error."""
    from django.db.models.signals import pre_save

    def rival(sender: Any, instance: WorkflowTemplate, **kwargs: Any) -> None:
        if instance.slug == "raced" and not WorkflowTemplate.objects.filter(slug="raced").exists():
            WorkflowTemplate.objects.bulk_create(  # no signal: the other operator's row
                [WorkflowTemplate(project=project, slug="raced", name="Theirs", nodes=instance.nodes)]
            )

    data = {
        "project": str(project.pk),
        "slug": "raced",
        "name": "Mine",
        "description": "",
        "parameters": "[]",
        "nodes": json.dumps([{"key": "a", "template": "step", "parameters": {}}]),
        "edges": "[]",
    }
    pre_save.connect(rival, sender=WorkflowTemplate)
    try:
        response = root.post(f"{TEMPLATES}add/", data)
    finally:
        pre_save.disconnect(rival, sender=WorkflowTemplate)
    assert response.status_code == 302 and response["Location"] == f"{TEMPLATES}add/"
    assert any("Not saved: slug: This project already has" in m for m in messages_of(response))
    assert not WorkflowTemplate.objects.filter(name="Mine").exists()


def test_run_form_refuses_a_secret_by_value_or_a_missing_secret(root, make_workflow):
    workflow = make_workflow(
        parameters=[
            {"name": "greeting", "type": "string", "default": "hello"},
            {"name": "token", "type": "string", "secret": True, "required": False},
        ]
    )
    url = f"{TEMPLATES}{workflow.pk}/run/"
    for given, expected in (
        ("plain", 'A workflow takes a secret as {"secret": "<name>"} only.'),
        ({"secret": "NOPE"}, "NOPE"),
    ):
        response = root.post(url, {"parameters": json.dumps({"token": given}), "start": "on"})
        assert response.status_code == 200
        errors = response.context["form"].errors["parameters"]
        assert any(e.startswith("parameters.token: ") and expected in e for e in errors), errors
    assert not WorkflowRun.objects.exists()


def test_a_fan_out_is_one_box_in_the_picture_and_its_items_are_steps(root, user, project, step):
    from tests.workflows.conftest import end_node
    from workflows import services

    workflow = services.workflow_template_create(
        project=project,
        actor=user,
        slug="fan",
        name="Fan",
        nodes=[
            {"key": "list", "template": "step"},
            {
                "key": "each",
                "template": "step",
                "for_each": "{{ nodes.list.outputs.hosts }}",
                "parameters": {"message": "{{ item }}"},
            },
        ],
        edges=[{"from": "list", "to": "each"}],
    )
    run = services.workflow_run_create(workflow=workflow, actor=user)
    end_node(run, "list", outputs={"hosts": ["x", "y"]})
    page = root.get(f"/admin/workflows/workflowrun/{run.pk}/change/").content.decode()
    assert 'data-key="each[0]"' in page and 'data-key="each[1]"' in page
    picture = root.get(f"/admin/workflows/workflowrun/{run.pk}/graph.svg").content.decode()
    assert "(2 items)" in picture and "each[0]" not in picture
