"""Workflows over HTTP: workflow templates (CRUD, the 400s naming the node or edge) and runs (the
Task Master reference's create / get with steps / start / pause / resume, and cancel, retry),
tenancy on every verb, roles and scopes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from accounts.models import Role
from executions.models import Execution
from tasks.models import Task
from templates_app.models import Template
from templates_app.services import template_create
from tests.factories import MembershipFactory, UserFactory
from tests.tasks.conftest import error_fields, problem_of
from tests.workflows.conftest import STEP_SCRIPT, diamond, end_node, statuses
from workflows import services
from workflows.models import NODES_MAX, WorkflowRun, WorkflowTemplate

pytestmark = pytest.mark.django_db

TEMPLATES = "/api/v1/workflow-templates"
RUNS = "/api/v1/workflows"
STEP_FIELDS = {
    "id",
    "name",
    "key",
    "status",
    "template",
    "task",
    "execution",
    "attempts",
    "for_each",
    "items",
    "outputs",
    "result",
    "error",
    "error_detail",
    "started_at",
    "finished_at",
}
RUN_FIELDS = {
    "id",
    "project",
    "template",
    "template_version",
    "name",
    "status",
    "parameters",
    "error",
    "retries",
    "created_by",
    "created_at",
    "started_at",
    "paused_at",
    "finished_at",
    "updated_at",
}


def definition(**extra: Any) -> dict[str, Any]:
    return {
        "slug": "diamond",
        "name": "Diamond",
        "parameters": [{"name": "greeting", "type": "string", "default": "hello"}],
        **diamond(),
        **extra,
    }


def fields_of(problem: dict[str, Any]) -> dict[str, str]:
    return error_fields(problem)


def step_template(owner: Any, project: Any = None, slug: str = "step") -> Template:
    return template_create(
        project=project or owner.personal_project,
        actor=owner,
        slug=slug,
        name="Step",
        name_pattern="step {{ message }}",
        script_type="python",
        script=STEP_SCRIPT,
        parameters=[{"name": "message", "type": "string", "default": "hi"}],
    )


# --- Workflow templates ----------------------------------------------------------------------------
def test_create_read_change_delete_a_workflow_template(api, project, step):
    created = api.post(TEMPLATES, definition(), format="json")
    assert created.status_code == 201, created.content
    data = created.json()
    assert set(data) == {
        "id",
        "project",
        "slug",
        "name",
        "description",
        "parameters",
        "nodes",
        "edges",
        "version",
        "created_by",
        "created_at",
        "updated_at",
    }
    assert created["Location"].endswith(f"{TEMPLATES}/{data['id']}")
    assert data["project"] == str(project.pk) and data["version"] == 1
    assert data["created_by"]["username"] == "alice"
    # Node templates named by slug are stored by id.
    assert {node["template"] for node in data["nodes"]} == {str(step.pk)}
    assert [node["join"] for node in data["nodes"]] == ["all"] * 4
    assert data["parameters"][0]["name"] == "greeting"

    by_id = api.get(f"{TEMPLATES}/{data['id']}")
    assert by_id.status_code == 200 and by_id.json() == data
    assert api.get(f"{TEMPLATES}/diamond").json()["id"] == data["id"]
    assert [w["slug"] for w in api.get(TEMPLATES).json()["results"]] == ["diamond"]
    assert api.get(TEMPLATES, {"search": "diam"}).json()["count"] == 1
    assert api.get(TEMPLATES, {"search": "nothing-like-it"}).json()["count"] == 0
    assert api.get(TEMPLATES, {"project": str(project.pk)}).json()["count"] == 1

    changed = api.patch(f"{TEMPLATES}/diamond", {"description": "A then B and C, then D"}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["version"] == 2 and changed.json()["description"] == "A then B and C, then D"
    # The same values again change nothing: no new version.
    assert api.patch(f"{TEMPLATES}/diamond", {"description": "A then B and C, then D"}).json()["version"] == 2

    replaced = api.put(
        f"{TEMPLATES}/{data['id']}",
        {"slug": "single", "name": "Single", "nodes": [{"key": "only", "template": "step"}]},
        format="json",
    )
    assert replaced.status_code == 200, replaced.content
    body = replaced.json()
    assert body["slug"] == "single" and body["version"] == 3
    assert body["edges"] == [] and body["parameters"] == [] and body["description"] == ""
    assert [node["key"] for node in body["nodes"]] == ["only"]

    run = services.workflow_run_create(workflow=WorkflowTemplate.objects.get(), actor=None, start=False)
    assert api.delete(f"{TEMPLATES}/single").status_code == 204
    assert not WorkflowTemplate.objects.exists()
    run.refresh_from_db()
    assert run.template is None  # the run stays, with its own graph
    assert api.get(f"{RUNS}/{run.pk}").json()["template"] is None


def _chain(count: int) -> dict[str, Any]:
    return {
        "nodes": [{"key": f"n{i}", "template": "step"} for i in range(count)],
        "edges": [{"from": f"n{i}", "to": f"n{i + 1}"} for i in range(count - 1)],
    }


@pytest.mark.parametrize(
    ("change", "field", "code", "words"),
    [
        # A cycle: named by the nodes on it.
        (
            {"edges": [*diamond()["edges"], {"from": "d", "to": "a"}]},
            "edges",
            "cycle",
            "a, b, c, d",
        ),
        ({"edges": [{"from": "b", "to": "b"}]}, "edges[0]", "cycle", "'b' -> 'b'"),
        # An unknown template: the node and the template it named.
        (
            {"nodes": [*diamond()["nodes"][:3], {"key": "d", "template": "nope"}]},
            "nodes[3].template",
            "unknown_template",
            "Node \"d\": no template 'nope'",
        ),
        # A reference to a node that is not upstream (b and c are siblings).
        (
            {
                "nodes": [
                    *diamond()["nodes"][:2],
                    {
                        "key": "c",
                        "template": "step",
                        "parameters": {"message": "{{ nodes.b.outputs.message }}"},
                    },
                    diamond()["nodes"][3],
                ]
            },
            "nodes[2].parameters.message",
            "not_upstream",
            "not upstream",
        ),
        # A binding whose type cannot fit: a string parameter into an integer one.
        (
            {
                "nodes": [
                    {"key": "a", "template": "step"},
                    {"key": "n", "template": "count", "parameters": {"n": "{{ params.greeting }}"}},
                ],
                "edges": [{"from": "a", "to": "n"}],
            },
            "nodes[1].parameters.n",
            "type_mismatch",
            "a string cannot fit an integer",
        ),
        ({"edges": [{"from": "a", "to": "zz"}]}, "edges[0].to", "unknown_node", "no node 'zz'"),
        ({"edges": [{"from": "zz", "to": "a"}]}, "edges[0].from", "unknown_node", "no node 'zz'"),
        ({"edges": [{"from": "a", "to": "b", "on": "maybe"}]}, "edges[0].on", "invalid_choice", ""),
        (
            {"nodes": [{"key": "a", "template": "count"}], "edges": []},
            "nodes[0].parameters.n",
            "required",
            "not bound",
        ),
        ({"nodes": [{"key": "a", "template": "step", "color": "red"}], "edges": []}, "nodes[0]", "", "color"),
        ({"nodes": ["a"], "edges": []}, "nodes[0]", "", ""),
        ({"nodes": []}, "nodes", "min_length", ""),
        (_chain(NODES_MAX + 1), "nodes", "max_length", str(NODES_MAX)),
        ({"slug": "3fa85f64-5717-4562-b3fc-2c963f66afa6"}, "slug", "invalid", ""),
        ({"parameters": [{"name": "x y"}]}, "parameters[0].name", "", ""),
    ],
)
def test_a_bad_definition_is_one_400_naming_the_node_or_edge(api, step, counter, change, field, code, words):
    problem = problem_of(api.post(TEMPLATES, definition(**change), format="json"), 400)
    fields = fields_of(problem)
    assert field in fields, problem
    if code:
        assert fields[field] == code, problem
    if words:
        messages = " ".join(e["message"] for e in problem["errors"] if e["field"] == field)
        assert words in messages, problem
    assert not WorkflowTemplate.objects.exists()


def test_every_problem_of_a_definition_comes_in_one_answer(api, step):
    nodes = [
        {"key": "a", "template": "nope"},
        {"key": "b", "template": "step", "parameters": {"message": "{{ nodes.c.outputs.x }}"}},
        {"key": "c", "template": "step"},
    ]
    problem = problem_of(
        api.post(TEMPLATES, definition(nodes=nodes, edges=[{"from": "a", "to": "q"}]), format="json"), 400
    )
    assert {"nodes[0].template", "nodes[1].parameters.message", "edges[0].to"} <= set(fields_of(problem))


def test_a_bad_change_is_refused_and_changes_nothing(api, make_workflow):
    workflow = make_workflow()
    cyclic = [*diamond()["edges"], {"from": "d", "to": "a"}]
    problem = problem_of(api.patch(f"{TEMPLATES}/diamond", {"edges": cyclic}, format="json"), 400)
    assert fields_of(problem) == {"edges": "cycle"}
    workflow.refresh_from_db()
    assert workflow.version == 1 and len(workflow.edges) == 4


def test_a_slug_is_unique_per_project_and_cannot_move_project(api, make_workflow, user):
    make_workflow()
    problem = problem_of(api.post(TEMPLATES, definition(), format="json"), 400)
    assert fields_of(problem) == {"slug": "unique"}
    team = MembershipFactory(user=user, role=Role.ADMIN).project
    problem = problem_of(api.patch(f"{TEMPLATES}/diamond", {"project": str(team.pk)}, format="json"), 400)
    assert fields_of(problem) == {"project": "immutable"}


def test_a_slug_in_two_of_my_projects_is_a_409_until_the_project_is_named(user, key_client, make_workflow):
    make_workflow()
    team = MembershipFactory(user=user, role=Role.ADMIN).project
    step_template(user, team)
    services.workflow_template_create(
        project=team,
        actor=user,
        slug="diamond",
        name="Team diamond",
        nodes=[{"key": "x", "template": "step"}],
    )
    client = key_client(user)  # made after joining: both projects are implicit
    problem = problem_of(client.get(f"{TEMPLATES}/diamond"), 409)
    assert problem["code"] == "ambiguous_slug" and str(team.pk) in problem["projects"]
    named = client.get(f"{TEMPLATES}/diamond", {"project": str(team.pk)})
    assert named.status_code == 200 and named.json()["name"] == "Team diamond"
    # A run by slug: the same rule, the project in the body.
    problem = problem_of(client.post(RUNS, {"template": "diamond", "start": False}, format="json"), 409)
    assert problem["code"] == "ambiguous_slug"
    run = client.post(RUNS, {"template": "diamond", "project": str(team.pk), "start": False}, format="json")
    assert run.status_code == 201, run.content
    assert run.json()["project"] == str(team.pk)


# --- Runs -------------------------------------------------------------------------------------------
def test_the_reference_calls_create_get_with_steps_start_pause_resume(api, make_workflow, project, user):
    workflow = make_workflow()
    created = api.post(
        RUNS,
        {"templateId": "diamond", "parameters": {"greeting": "hey"}, "name": "User Service", "start": False},
        format="json",
    )
    assert created.status_code == 201, created.content
    run = created.json()
    assert created["Location"].endswith(f"{RUNS}/{run['id']}")
    assert set(run) == RUN_FIELDS | {"steps"}
    assert run["status"] == "pending" and run["name"] == "User Service"
    assert run["template"] == str(workflow.pk) and run["template_version"] == 1
    assert run["project"] == str(project.pk) and run["parameters"] == {"greeting": "hey"}
    assert run["created_by"]["username"] == "alice" and run["started_at"] is None
    assert [s["id"] for s in run["steps"]] == ["a", "b", "c", "d"]
    assert {s["status"] for s in run["steps"]} == {"waiting"}
    assert not Task.objects.filter(project=project).exists()

    url = f"{RUNS}/{run['id']}"
    started = api.post(f"{url}/start")
    assert started.status_code == 200, started.content
    assert started.json()["status"] == "running" and started.json()["started_at"]
    steps = {s["id"]: s for s in started.json()["steps"]}
    assert steps["a"]["status"] == "queued" and steps["a"]["attempts"] == 1
    a_task = Task.objects.get(pk=steps["a"]["task"])
    assert a_task.parameters == {"message": "hey"}
    assert steps["a"]["execution"] == str(a_task.last_execution_id)
    assert problem_of(api.post(f"{url}/start"), 409)["code"] == "invalid_transition"

    # "running" is read off the task.
    Task.objects.filter(pk=a_task.pk).update(status="running")
    assert {s["id"]: s["status"] for s in api.get(url).json()["steps"]}["a"] == "running"
    Task.objects.filter(pk=a_task.pk).update(status="queued")

    paused = api.post(f"{url}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused" and paused.json()["paused_at"]
    db_run = WorkflowRun.objects.get(pk=run["id"])
    end_node(db_run, "a", outputs={"message": "from-a", "length": 6})
    # Paused: nothing new starts, the end is recorded.
    assert statuses(db_run) == {"a": "succeeded", "b": "waiting", "c": "waiting", "d": "waiting"}
    assert problem_of(api.post(f"{url}/pause"), 409)["current_status"] == "paused"

    resumed = api.post(f"{url}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    assert resumed.json()["paused_at"] is None
    assert {s["id"]: s["status"] for s in resumed.json()["steps"]} == {
        "a": "succeeded",
        "b": "queued",
        "c": "queued",
        "d": "waiting",
    }
    end_node(db_run, "b")
    end_node(db_run, "c")
    end_node(db_run, "d")
    done = api.get(url).json()
    assert done["status"] == "succeeded" and done["finished_at"]
    steps = {s["id"]: s for s in done["steps"]}
    assert steps["a"]["outputs"] == {"message": "from-a", "length": 6}
    assert steps["a"]["result"] == steps["a"]["outputs"]
    d_task = Task.objects.get(pk=steps["d"]["task"])
    assert d_task.parameters == {"message": "from-a!"}  # D received A's output
    assert problem_of(api.post(f"{url}/resume"), 409)["code"] == "invalid_transition"
    assert problem_of(api.post(f"{url}/cancel"), 409)["code"] == "invalid_transition"
    assert problem_of(api.post(f"{url}/retry"), 409)["code"] == "invalid_transition"


def test_steps_shape(api, make_workflow, step):
    make_workflow()
    run = api.post(RUNS, {"template": "diamond"}, format="json").json()
    assert run["status"] == "running"
    for item in run["steps"]:
        assert set(item) == STEP_FIELDS
        assert item["id"] == item["key"] and item["name"] == "Step"
        assert item["template"] == str(step.pk)
    a = run["steps"][0]
    execution = Execution.objects.get(task_id=a["task"])
    assert a["execution"] == str(execution.pk)
    assert a["started_at"] and a["finished_at"] is None and a["error"] is None and a["outputs"] == {}
    waiting = run["steps"][1]
    assert waiting["task"] is None and waiting["execution"] is None and waiting["attempts"] == 0


def test_a_failed_run_retries_only_what_failed_and_reuses_outputs(api, make_workflow):
    make_workflow()
    run = api.post(RUNS, {"template": "diamond"}, format="json").json()
    url = f"{RUNS}/{run['id']}"
    db_run = WorkflowRun.objects.get(pk=run["id"])
    end_node(db_run, "a", outputs={"message": "kept", "length": 4})
    a_task = db_run.nodes.get(key="a").task_id
    end_node(db_run, "b", status="failed")
    # No failure edge leaves b: the run fails at once; c, still queued, must end before a retry.
    failed = api.get(url).json()
    assert failed["status"] == "failed" and 'Node "b" failed' in failed["error"]
    problem = problem_of(api.post(f"{url}/retry"), 409)
    assert problem["code"] == "nodes_running" and problem["nodes"] == ["c"]
    end_node(db_run, "c")
    failed = api.get(url).json()
    steps = {s["id"]: s for s in failed["steps"]}
    assert steps["b"]["status"] == "failed" and steps["b"]["error"] == "task_failed"
    assert steps["c"]["status"] == "succeeded" and steps["d"]["status"] == "waiting"

    retried = api.post(f"{url}/retry")
    assert retried.status_code == 200, retried.content
    body = retried.json()
    assert body["status"] == "running" and body["retries"] == 1 and body["error"] is None
    steps = {s["id"]: s for s in body["steps"]}
    assert steps["a"]["status"] == "succeeded" and steps["a"]["task"] == str(a_task)
    assert steps["c"]["status"] == "succeeded"
    assert steps["b"]["status"] == "queued" and steps["b"]["attempts"] == 2
    end_node(db_run, "b")
    end_node(db_run, "d")
    done = api.get(url).json()
    assert done["status"] == "succeeded"
    assert Execution.objects.filter(task_id=a_task).count() == 1  # A ran once
    d_task = Task.objects.get(pk={s["id"]: s for s in done["steps"]}["d"]["task"])
    assert d_task.parameters == {"message": "kept!"}


def test_cancel_cancels_waiting_nodes_and_running_tasks(api, make_workflow):
    make_workflow()
    run = api.post(RUNS, {"template": "diamond"}, format="json").json()
    url = f"{RUNS}/{run['id']}"
    cancelled = api.post(f"{url}/cancel")
    assert cancelled.status_code == 200, cancelled.content
    body = cancelled.json()
    assert body["status"] == "cancelled" and body["finished_at"]
    steps = {s["id"]: s for s in body["steps"]}
    assert steps["a"]["status"] == "cancelled"  # its queued task was cancelled at once
    assert Task.objects.get(pk=steps["a"]["task"]).status == "cancelled"
    assert {steps[k]["status"] for k in "bcd"} == {"cancelled"}
    assert problem_of(api.post(f"{url}/pause"), 409)["code"] == "invalid_transition"
    retried = api.post(f"{url}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "running"


def test_runs_are_listed_newest_first_and_filtered(api, make_workflow, project):
    workflow = make_workflow()
    first = api.post(RUNS, {"template": "diamond", "start": False}, format="json").json()
    second = api.post(RUNS, {"template": str(workflow.pk)}, format="json").json()
    listed = api.get(RUNS).json()
    assert [r["id"] for r in listed["results"]] == [second["id"], first["id"]]
    assert "steps" not in listed["results"][0]
    assert set(listed["results"][0]) == RUN_FIELDS
    assert [r["id"] for r in api.get(RUNS, {"status": "pending"}).json()["results"]] == [first["id"]]
    both = api.get(f"{RUNS}?status=pending&status=running").json()["results"]
    assert len(both) == 2
    assert api.get(RUNS, {"status": "pending,running"}).json()["count"] == 2
    assert api.get(RUNS, {"template": str(workflow.pk)}).json()["count"] == 2
    assert api.get(RUNS, {"template": str(uuid.uuid4())}).json()["count"] == 0
    assert api.get(RUNS, {"project": str(project.pk)}).json()["count"] == 2
    assert "status" in fields_of(problem_of(api.get(RUNS, {"status": "done"}), 400))
    assert "template" in fields_of(problem_of(api.get(RUNS, {"template": "diamond"}), 400))


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"parameters": {"greeting": 5}}, "parameters.greeting", None),
        ({"parameters": {"nope": "x"}}, "parameters.nope", "unknown"),
        ({"parameters": []}, "parameters", "not_an_object"),
        ({"start": "yes"}, "start", "invalid"),
        ({"name": "   "}, "name", "blank"),
        ({"template": ""}, "template", "blank"),
        ({"template": "missing"}, "template", "does_not_exist"),
        ({"template": str(uuid.uuid4())}, "template", "does_not_exist"),
        ({"template": None}, "template", "null"),
        ({"templateId": "other", "template": "diamond"}, "templateId", "conflict"),
    ],
)
def test_a_bad_run_request_is_a_400_naming_the_field(api, make_workflow, body, field, code):
    make_workflow()
    problem = problem_of(api.post(RUNS, {"template": "diamond", **body}, format="json"), 400)
    fields = fields_of(problem)
    assert field in fields, problem
    if code:
        assert fields[field] == code
    assert not WorkflowRun.objects.exists()


def test_a_secret_parameter_is_a_reference_and_never_shown(api, user, project):
    from vault.services import secret_create

    secret_create(project=project, actor=user, name="DEPLOY_TOKEN", value="tok-abcdef-123456")
    template_create(
        project=project,
        actor=user,
        slug="secretive",
        name="Secretive",
        name_pattern="secretive",
        script_type="bash",
        script="echo {{ token }}",
        parameters=[{"name": "token", "type": "string", "secret": True, "required": True}],
    )
    body = {
        "slug": "sec",
        "name": "Sec",
        "parameters": [{"name": "token", "type": "string", "secret": True, "required": True}],
        "nodes": [{"key": "a", "template": "secretive", "parameters": {"token": "{{ params.token }}"}}],
    }
    assert api.post(TEMPLATES, body, format="json").status_code == 201
    plain = problem_of(
        api.post(RUNS, {"template": "sec", "parameters": {"token": "hunter2"}}, format="json"), 400
    )
    assert fields_of(plain) == {"parameters.token": "secret_reference_required"}
    assert "hunter2" not in str(plain)
    missing = api.post(RUNS, {"template": "sec", "parameters": {"token": {"secret": "NOPE"}}}, format="json")
    assert "parameters.token" in fields_of(problem_of(missing, 400))
    assert not WorkflowRun.objects.exists()
    created = api.post(
        RUNS, {"template": "sec", "parameters": {"token": {"secret": "DEPLOY_TOKEN"}}}, format="json"
    )
    assert created.status_code == 201, created.content
    assert created.json()["parameters"] == {"token": {"secret": "DEPLOY_TOKEN"}}
    url = f"{RUNS}/{created.json()['id']}"
    for response in (created, api.get(url), api.get(RUNS)):
        assert "tok-abcdef-123456" not in response.content.decode()


def test_a_run_requires_a_template(api):
    assert fields_of(problem_of(api.post(RUNS, {}, format="json"), 400)) == {"template": "required"}


def test_a_deleted_node_template_is_a_400_naming_the_node(api, make_workflow, step):
    make_workflow()
    step.delete()
    problem = problem_of(api.post(RUNS, {"template": "diamond"}, format="json"), 400)
    assert fields_of(problem)["nodes[0]"] == "template_missing"
    assert 'Node "a"' in problem["errors"][0]["message"]


def test_runs_cannot_be_changed_or_deleted(api, make_workflow):
    make_workflow()
    run = api.post(RUNS, {"template": "diamond", "start": False}, format="json").json()
    url = f"{RUNS}/{run['id']}"
    for response in (api.put(url, {}, format="json"), api.patch(url, {}, format="json"), api.delete(url)):
        assert problem_of(response, 405)
    assert WorkflowRun.objects.filter(pk=run["id"]).exists()


def test_idempotency_key_makes_one_run(api, make_workflow):
    make_workflow()
    headers = {"HTTP_IDEMPOTENCY_KEY": "run-once-1"}
    first = api.post(RUNS, {"template": "diamond"}, format="json", **headers)
    again = api.post(RUNS, {"template": "diamond"}, format="json", **headers)
    assert first.status_code == again.status_code == 201
    assert again["Idempotent-Replayed"] == "true" and again.json()["id"] == first.json()["id"]
    assert WorkflowRun.objects.count() == 1


# --- Tenancy, roles, scopes -------------------------------------------------------------------------
def _foreign(owner: Any) -> tuple[WorkflowTemplate, WorkflowRun]:
    step_template(owner)
    workflow = services.workflow_template_create(
        project=owner.personal_project,
        actor=owner,
        slug="secret-flow",
        name="Secret flow",
        parameters=[{"name": "greeting", "type": "string", "default": "hello"}],
        **diamond(),
    )
    run = services.workflow_run_create(workflow=workflow, actor=owner)
    return workflow, run


def test_another_projects_workflows_are_404_on_every_verb(api, other_user):
    workflow, run = _foreign(other_user)
    before = (workflow.version, run.status, Task.objects.count())
    template_url = f"{TEMPLATES}/{workflow.pk}"
    run_url = f"{RUNS}/{run.pk}"
    calls = [
        api.get(template_url),
        api.get(f"{TEMPLATES}/secret-flow"),
        api.get(f"{TEMPLATES}/secret-flow", {"project": str(other_user.personal_project.pk)}),
        api.patch(template_url, {"name": "x"}, format="json"),
        api.put(template_url, definition(), format="json"),
        api.delete(template_url),
        api.patch(f"{TEMPLATES}/secret-flow", {"name": "x"}, format="json"),
        api.delete(f"{TEMPLATES}/secret-flow"),
        api.get(run_url),
        *(api.post(f"{run_url}/{verb}") for verb in ("start", "pause", "resume", "cancel", "retry")),
    ]
    for response in calls:
        problem = problem_of(response, 404)
        assert "Secret flow" not in response.content.decode() and "mallory" not in response.content.decode()
        assert problem["status"] == 404
    # A run has no PUT, PATCH or DELETE at all: 405 whoever asks, the same for an id that does not
    # exist, so the answer tells nothing about another project's run.
    for method in ("put", "patch", "delete"):
        foreign = getattr(api, method)(run_url, {}, format="json")
        missing = getattr(api, method)(f"{RUNS}/{uuid.uuid4()}", {}, format="json")
        seen = {k: v for k, v in problem_of(foreign, 405).items() if k not in ("instance", "request_id")}
        unseen = {k: v for k, v in problem_of(missing, 405).items() if k not in ("instance", "request_id")}
        assert seen == unseen and "Secret flow" not in foreign.content.decode()
    assert api.get(TEMPLATES).json()["results"] == []
    assert api.get(RUNS).json()["results"] == []
    assert api.get(RUNS, {"template": str(workflow.pk)}).json()["results"] == []
    workflow.refresh_from_db()
    run.refresh_from_db()
    assert (workflow.version, run.status, Task.objects.count()) == before


def test_another_projects_workflow_template_cannot_be_run(api, other_user, step):
    workflow, _ = _foreign(other_user)
    for ref in (str(workflow.pk), "secret-flow"):
        response = api.post(RUNS, {"template": ref}, format="json")
        problem = problem_of(response, 400)
        assert fields_of(problem) == {"template": "does_not_exist"}
        assert "Secret flow" not in response.content.decode()
    response = api.post(
        RUNS, {"template": "secret-flow", "project": str(other_user.personal_project.pk)}, format="json"
    )
    assert fields_of(problem_of(response, 400)) == {"template": "does_not_exist"}
    assert WorkflowRun.objects.filter(project=other_user.personal_project).count() == 1


def test_a_node_cannot_name_another_projects_template(api, other_user):
    foreign = step_template(other_user, slug="foreign-step")
    for ref in (str(foreign.pk), "foreign-step"):
        body = {"slug": "x", "name": "X", "nodes": [{"key": "a", "template": ref}]}
        problem = problem_of(api.post(TEMPLATES, body, format="json"), 400)
        assert fields_of(problem) == {"nodes[0].template": "unknown_template"}


def test_viewers_read_members_run_admins_write_templates(user, key_client, team):
    project, viewer = team(Role.VIEWER)
    member = UserFactory()
    MembershipFactory(project=project, user=member, role=Role.MEMBER)
    step_template(user, project)
    admin = key_client(user)
    created = admin.post(TEMPLATES, {**definition(), "project": str(project.pk)}, format="json")
    assert created.status_code == 201, created.content
    workflow_id = created.json()["id"]
    run = admin.post(RUNS, {"template": workflow_id, "start": False}, format="json").json()
    as_viewer, as_member = key_client(viewer), key_client(member)
    template_url, run_url = f"{TEMPLATES}/{workflow_id}", f"{RUNS}/{run['id']}"

    assert as_viewer.get(template_url).status_code == 200
    assert as_viewer.get(run_url).status_code == 200
    assert as_viewer.get(RUNS).json()["count"] == 1
    refused = [
        as_viewer.post(TEMPLATES, {**definition(slug="v"), "project": str(project.pk)}, format="json"),
        as_viewer.patch(template_url, {"name": "x"}, format="json"),
        as_viewer.put(template_url, definition(), format="json"),
        as_viewer.delete(template_url),
        as_viewer.post(RUNS, {"template": workflow_id}, format="json"),
        *(as_viewer.post(f"{run_url}/{verb}") for verb in ("start", "pause", "resume", "cancel", "retry")),
        as_member.post(TEMPLATES, {**definition(slug="m"), "project": str(project.pk)}, format="json"),
        as_member.patch(template_url, {"name": "x"}, format="json"),
        as_member.delete(template_url),
    ]
    for response in refused:
        assert problem_of(response, 403)["code"] == "insufficient_role", response.content
    assert WorkflowRun.objects.get().status == "pending" and WorkflowTemplate.objects.count() == 1

    # Members run workflows: create, start, pause, resume, cancel, retry.
    mine = as_member.post(RUNS, {"template": workflow_id, "start": False}, format="json")
    assert mine.status_code == 201, mine.content
    assert mine.json()["created_by"]["id"] == member.pk
    url = f"{RUNS}/{mine.json()['id']}"
    for verb, expected in (
        ("start", "running"),
        ("pause", "paused"),
        ("resume", "running"),
        ("cancel", "cancelled"),
        ("retry", "running"),
    ):
        response = as_member.post(f"{url}/{verb}")
        assert response.status_code == 200, (verb, response.content)
        assert response.json()["status"] == expected, verb


def test_narrow_keys_stay_narrow(user, key_client, make_workflow):
    make_workflow()
    run = services.workflow_run_create(workflow=WorkflowTemplate.objects.get(), actor=user, start=False)
    run_url = f"{RUNS}/{run.pk}"
    tasks_only = key_client(user, ["task:read"])
    for response in (
        tasks_only.get(TEMPLATES),
        tasks_only.get(f"{TEMPLATES}/diamond"),
        tasks_only.get(RUNS),
        tasks_only.get(run_url),
    ):
        assert problem_of(response, 403)["required_scope"] == "workflow:read"
    for response in (
        tasks_only.post(TEMPLATES, definition(slug="t"), format="json"),
        tasks_only.patch(f"{TEMPLATES}/diamond", {"name": "x"}, format="json"),
        tasks_only.delete(f"{TEMPLATES}/diamond"),
        tasks_only.post(RUNS, {"template": "diamond"}, format="json"),
        tasks_only.post(f"{run_url}/start"),
    ):
        assert problem_of(response, 403)["required_scope"] == "workflow:write"

    reader = key_client(user, ["workflow:read"])
    assert reader.get(run_url).status_code == 200 and reader.get(f"{TEMPLATES}/diamond").status_code == 200
    for response in (
        reader.post(TEMPLATES, definition(slug="r"), format="json"),
        reader.put(f"{TEMPLATES}/diamond", definition(), format="json"),
        reader.patch(f"{TEMPLATES}/diamond", {"name": "x"}, format="json"),
        reader.delete(f"{TEMPLATES}/diamond"),
        reader.post(RUNS, {"template": "diamond", "start": False}, format="json"),
        *(reader.post(f"{run_url}/{verb}") for verb in ("start", "pause", "resume", "cancel", "retry")),
    ):
        assert problem_of(response, 403)["required_scope"] == "workflow:write"

    # Queuing executions needs execution:write too (as running a schedule now does).
    writer = key_client(user, ["workflow:write"])
    problem = problem_of(writer.post(RUNS, {"template": "diamond"}, format="json"), 403)
    assert problem["required_scope"] == "execution:write"
    for verb in ("start", "resume", "cancel", "retry"):
        assert problem_of(writer.post(f"{run_url}/{verb}"), 403)["required_scope"] == "execution:write"
    assert WorkflowRun.objects.count() == 1 and not Task.objects.exists()
    pending = writer.post(RUNS, {"template": "diamond", "start": False}, format="json")
    assert pending.status_code == 201, pending.content
    assert writer.patch(f"{TEMPLATES}/diamond", {"name": "Renamed"}, format="json").status_code == 200
    runner = key_client(user, ["workflow:write", "execution:write"])
    assert runner.post(f"{run_url}/start").status_code == 200
    assert writer.post(f"{run_url}/pause").status_code == 200

    # A key restricted to another of alice's projects sees none of this one.
    shared = MembershipFactory(user=user, role=Role.ADMIN).project
    restricted = key_client(user, project=shared)
    assert restricted.get(run_url).status_code == 404
    assert restricted.get(f"{TEMPLATES}/diamond").status_code == 404
    assert restricted.get(RUNS).json()["results"] == []
    problem = problem_of(restricted.post(RUNS, {"template": "diamond"}, format="json"), 400)
    assert fields_of(problem) == {"template": "does_not_exist"}


def test_a_fan_out_shows_its_items(api, user, project, step):
    from tests.workflows.conftest import end_node

    definition = {
        "slug": "fan",
        "name": "Fan",
        "nodes": [
            {"key": "list", "template": "step"},
            {
                "key": "each",
                "template": "step",
                "for_each": "{{ nodes.list.outputs.hosts }}",
                "max_parallel": 1,
                "parameters": {"message": "{{ item }}"},
            },
        ],
        "edges": [{"from": "list", "to": "each"}],
    }
    created = api.post("/api/v1/workflow-templates", definition, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["nodes"][1]["for_each"] == "{{ nodes.list.outputs.hosts }}"
    run = api.post("/api/v1/workflows", {"template": "fan"}, format="json").json()
    from workflows.models import WorkflowRun

    end_node(WorkflowRun.objects.get(pk=run["id"]), "list", outputs={"hosts": ["x", "y"]})
    steps = {s["key"]: s for s in api.get(f"/api/v1/workflows/{run['id']}").json()["steps"]}
    assert list(steps) == ["list", "each"]  # items are not steps of their own
    assert steps["list"]["items"] == [] and steps["list"]["for_each"] is None
    each = steps["each"]
    assert each["for_each"] == "{{ nodes.list.outputs.hosts }}"
    assert [(i["index"], i["item"], i["status"]) for i in each["items"]] == [
        (0, "x", "queued"),
        (1, "y", "waiting"),
    ]
    assert each["items"][0]["task"] is not None and each["items"][1]["task"] is None
