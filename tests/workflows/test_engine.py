"""The engine's decisions: the truth table, failure edges, joins, pause/resume, cancel, retry."""

from __future__ import annotations

import pytest

from events.models import Event
from executions.models import Execution
from tasks.models import Status
from tests.workflows.conftest import end_node, statuses
from workflows import services
from workflows.graph import MET, PENDING, RUN, SKIP, UNMET, VOID, WAIT, decide, edge_state
from workflows.models import NodeStatus, RunStatus


@pytest.mark.parametrize(
    ("join", "states", "expected"),
    [
        ("all", [], RUN),
        ("all", [MET, MET], RUN),
        ("all", [MET, PENDING], WAIT),
        ("all", [MET, UNMET], SKIP),
        ("all", [UNMET, PENDING], SKIP),
        ("all", [MET, VOID], RUN),
        ("all", [VOID, VOID], SKIP),
        ("any", [MET, PENDING], RUN),
        ("any", [UNMET, PENDING], WAIT),
        ("any", [UNMET, VOID], SKIP),
        ("any", [UNMET, MET], RUN),
    ],
)
def test_truth_table(join, states, expected):
    assert decide(join, states) == expected


@pytest.mark.parametrize(
    ("status", "on", "expected"),
    [
        ("succeeded", "success", MET),
        ("succeeded", "failure", UNMET),
        ("succeeded", "always", MET),
        ("failed", "success", UNMET),
        ("failed", "failure", MET),
        ("cancelled", "failure", MET),
        ("failed", "always", MET),
        ("skipped", "always", VOID),
        ("running", "success", PENDING),
        ("waiting", "always", PENDING),
    ],
)
def test_edge_states(status, on, expected):
    assert edge_state(status, on) == expected


def test_diamond_passes_a_output_to_d(make_workflow, user):
    workflow = make_workflow()
    run = services.workflow_run_create(workflow=workflow, actor=user, parameters={"greeting": "hey"})
    assert run.status == RunStatus.RUNNING
    assert statuses(run) == {"a": "queued", "b": "waiting", "c": "waiting", "d": "waiting"}
    a_task = run.nodes.get(key="a").task
    assert a_task.parameters == {"message": "hey"}
    end_node(run, "a", outputs={"message": "from-a"})
    assert statuses(run) == {"a": "succeeded", "b": "queued", "c": "queued", "d": "waiting"}
    end_node(run, "b")
    assert statuses(run)["d"] == "waiting"
    end_node(run, "c")
    assert statuses(run)["d"] == "queued"
    assert run.nodes.get(key="d").task.parameters == {"message": "from-a!"}
    end_node(run, "d")
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    types = list(Event.objects.filter(data__workflow_id=str(run.pk)).values_list("type", flat=True))
    assert types.count("workflow.node_started") == 4
    assert types.count("workflow.node_finished") == 4
    assert types[0] == "workflow.started" and types[-1] == "workflow.succeeded"


def test_unhandled_failure_fails_the_run(make_workflow, user):
    run = services.workflow_run_create(workflow=make_workflow(), actor=user)
    end_node(run, "a")
    end_node(run, "b", status="failed")
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and '"b" failed' in run.error
    end_node(run, "c")  # a running branch still finishes and is recorded; nothing new starts
    assert statuses(run) == {"a": "succeeded", "b": "failed", "c": "succeeded", "d": "waiting"}


def test_failure_edge_handles_it(make_workflow, user):
    definition = {
        "nodes": [
            {"key": "a", "template": "step"},
            {"key": "b", "template": "step"},
            {"key": "handler", "template": "step", "parameters": {"message": "cleanup"}},
            {"key": "after", "template": "step"},
        ],
        "edges": [
            {"from": "a", "to": "b"},
            {"from": "b", "to": "handler", "on": "failure"},
            {"from": "b", "to": "after", "on": "success"},
        ],
    }
    run = services.workflow_run_create(workflow=make_workflow(**definition), actor=user)
    end_node(run, "a")
    end_node(run, "b", status="failed")
    assert statuses(run) == {"a": "succeeded", "b": "failed", "handler": "queued", "after": "skipped"}
    end_node(run, "handler")
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    # And when b succeeds, the handler is skipped.
    run2 = services.workflow_run_create(workflow=run.template, actor=user)
    end_node(run2, "a")
    end_node(run2, "b")
    assert statuses(run2)["handler"] == "skipped"
    end_node(run2, "after")
    run2.refresh_from_db()
    assert run2.status == RunStatus.SUCCEEDED


def test_join_any_against_all(make_workflow, user):
    definition = {
        "nodes": [
            {"key": "a", "template": "step"},
            {"key": "b", "template": "step"},
            {"key": "c", "template": "step"},
            {"key": "d", "template": "step", "join": "any"},
        ],
        "edges": [
            {"from": "a", "to": "b"},
            {"from": "a", "to": "c"},
            {"from": "b", "to": "d", "on": "always"},
            {"from": "c", "to": "d", "on": "always"},
        ],
    }
    any_run = services.workflow_run_create(workflow=make_workflow(slug="any", **definition), actor=user)
    end_node(any_run, "a")
    end_node(any_run, "b")
    assert statuses(any_run)["d"] == "queued"  # one branch is enough, c still runs
    definition["nodes"][3]["join"] = "all"
    all_run = services.workflow_run_create(workflow=make_workflow(slug="all", **definition), actor=user)
    end_node(all_run, "a")
    end_node(all_run, "b")
    assert statuses(all_run)["d"] == "waiting"
    end_node(all_run, "c", status="failed")  # always: c's failure still counts for d
    assert statuses(all_run)["d"] == "queued"


def test_pause_lets_running_finish_and_starts_nothing(make_workflow, user):
    run = services.workflow_run_create(workflow=make_workflow(), actor=user)
    end_node(run, "a")
    services.workflow_run_pause(run=run, actor=user)
    end_node(run, "b")
    end_node(run, "c")
    assert statuses(run) == {"a": "succeeded", "b": "succeeded", "c": "succeeded", "d": "waiting"}
    assert run.status == RunStatus.PAUSED
    services.workflow_run_resume(run=run, actor=user)
    assert statuses(run)["d"] == "queued"


def test_pending_run_starts_on_request(make_workflow, user):
    run = services.workflow_run_create(workflow=make_workflow(), actor=user, start=False)
    assert run.status == RunStatus.PENDING
    assert set(statuses(run).values()) == {"waiting"}
    services.workflow_run_start(run=run, actor=user)
    assert statuses(run)["a"] == "queued"


def test_cancel_cancels_running_nodes(make_workflow, user):
    run = services.workflow_run_create(workflow=make_workflow(), actor=user)
    end_node(run, "a")
    run = services.workflow_run_cancel(run=run, actor=user)
    assert run.status == RunStatus.CANCELLED
    assert statuses(run) == {"a": "succeeded", "b": "cancelled", "c": "cancelled", "d": "cancelled"}
    assert run.nodes.get(key="b").task.status == Status.CANCELLED


def test_retry_reruns_only_the_failed_branch(make_workflow, user):
    run = services.workflow_run_create(workflow=make_workflow(), actor=user)
    end_node(run, "a", outputs={"message": "kept"})
    end_node(run, "c")
    end_node(run, "b", status="failed")
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    a_task = run.nodes.get(key="a").task
    run = services.workflow_run_retry(run=run, actor=user)
    assert run.status == RunStatus.RUNNING
    assert statuses(run) == {"a": "succeeded", "b": "queued", "c": "succeeded", "d": "waiting"}
    end_node(run, "b")
    assert run.nodes.get(key="d").task.parameters == {"message": "kept!"}
    end_node(run, "d")
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert Execution.objects.filter(task=a_task).count() == 1
    assert run.nodes.get(key="b").attempts == 2


def test_a_missing_output_fails_the_node_clearly(make_workflow, user):
    run = services.workflow_run_create(workflow=make_workflow(), actor=user)
    end_node(run, "a", outputs={"other": 1})
    end_node(run, "b")
    end_node(run, "c")
    node = run.nodes.get(key="d")
    assert node.status == NodeStatus.FAILED and node.error == "binding_unresolved"
    assert "did not publish it (it has: other)" in node.error_detail
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED


def test_an_output_of_the_wrong_type_fails_the_node(make_workflow, user, counter):
    definition = {
        "nodes": [
            {"key": "a", "template": "step"},
            {"key": "n", "template": "count", "parameters": {"n": "{{ nodes.a.outputs.message }}"}},
        ],
        "edges": [{"from": "a", "to": "n"}],
    }
    run = services.workflow_run_create(workflow=make_workflow(**definition), actor=user)
    end_node(run, "a", outputs={"message": "not a number"})
    node = run.nodes.get(key="n")
    assert node.status == NodeStatus.FAILED and node.error == "invalid_binding"
    assert "integer" in node.error_detail


def test_a_waiting_agent_task_of_a_run_cannot_be_deleted(make_workflow, user, project):
    from core.errors import Conflict
    from tasks.services import task_delete
    from templates_app.services import template_create

    template_create(project=project, actor=user, slug="review", name="Review", name_pattern="review")
    workflow = make_workflow(slug="agentic", nodes=[{"key": "r", "template": "review"}], edges=[])
    run = services.workflow_run_create(workflow=workflow, actor=user)
    task = run.nodes.get(key="r").task
    assert task.status == Status.PENDING and task.in_workflow
    with pytest.raises(Conflict) as caught:
        task_delete(task=task, actor=user)
    assert caught.value.get_codes() == "task_in_workflow"
    services.workflow_run_cancel(run=run, actor=user)
    assert statuses(run) == {"r": "cancelled"}
    task_delete(task=task, actor=user)  # ended: it may go now
