"""A node whose template has no script is a task for agents: an agent claims it and completes
it (its ``result`` object is the node's outputs) or fails it, over the HTTP API with the
agent-bound key a registered agent gets, as tests/agents drive the protocol."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from events.models import Event
from executions.models import Execution
from tasks.models import Status, Task
from templates_app.services import template_create
from tests.workflows.conftest import end_node, statuses
from workflows import services
from workflows.models import NodeStatus, RunStatus

pytestmark = pytest.mark.django_db

# review (an agent's) -> publish (a script) that receives the agent's verdict; a failure of the
# review goes to the handler instead.
REVIEWED = {
    "nodes": [
        {"key": "review", "template": "review", "parameters": {"topic": "{{ params.greeting }}"}},
        {
            "key": "publish",
            "template": "step",
            "parameters": {"message": "{{ nodes.review.outputs.verdict }}"},
        },
        {"key": "handler", "template": "step", "parameters": {"message": "review failed"}},
    ],
    "edges": [
        {"from": "review", "to": "publish", "on": "success"},
        {"from": "review", "to": "handler", "on": "failure"},
    ],
}


@pytest.fixture
def review(user, project):
    """A template with no script: its tasks are for agents."""
    return template_create(
        project=project,
        actor=user,
        slug="review",
        name="Review",
        name_pattern="review {{ topic }}",
        parameters=[{"name": "topic", "type": "string", "required": True}],
    )


@pytest.fixture
def agent(api: APIClient) -> APIClient:
    """A registered agent's client (its agent-bound key)."""
    response = api.post("/api/v1/agents", {"name": "reviewer"}, format="json")
    assert response.status_code == 201, response.content
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['key']}")
    return client


@pytest.fixture
def run(make_workflow, review, user):
    workflow = make_workflow(slug="reviewed", name="Reviewed", **REVIEWED)
    return services.workflow_run_create(workflow=workflow, actor=user, parameters={"greeting": "v2 release"})


def claim(agent: APIClient, run) -> Task:
    """The agent claims the review node's task by claim-next (the way an agent finds work)."""
    node = run.nodes.get(key="review")
    response = agent.post("/api/v1/tasks/claim-next")
    assert response.status_code == 200, response.content
    assert response.json()["id"] == str(node.task_id)
    node.refresh_from_db()
    assert node.shown_status() == NodeStatus.RUNNING  # read off the claimed task
    return node.task


def test_an_agent_node_queues_a_task_and_no_execution(run):
    node = run.nodes.get(key="review")
    assert node.status == NodeStatus.QUEUED and node.attempts == 1
    assert node.task.status == Status.PENDING and node.task.in_workflow
    assert node.task.parameters == {"topic": "v2 release"}
    assert node.task.name == "review v2 release"
    assert not Execution.objects.filter(task=node.task).exists()  # nothing for a worker to run


def test_the_agents_result_object_is_the_nodes_outputs(run, agent):
    task = claim(agent, run)
    result = {"verdict": "approved", "score": 9, "notes": ["tests pass"]}
    response = agent.post(f"/api/v1/tasks/{task.pk}/complete", {"result": result}, format="json")
    assert response.status_code == 200, response.content
    node = run.nodes.get(key="review")
    assert node.status == NodeStatus.SUCCEEDED and node.outputs == result
    assert statuses(run) == {"review": "succeeded", "publish": "queued", "handler": "skipped"}
    publish = run.nodes.get(key="publish")
    assert publish.task.parameters == {"message": "approved"}  # the agent's output, passed on
    finished = Event.objects.get(type="workflow.node_finished", data__node="review")
    assert finished.data["output_keys"] == ["notes", "score", "verdict"]
    end_node(run, "publish")
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED


@pytest.mark.parametrize("result", ["approved", ["approved"], 7, None])
def test_a_result_that_is_not_an_object_publishes_nothing(run, agent, result):
    task = claim(agent, run)
    body: dict[str, Any] = {} if result is None else {"result": result}
    response = agent.post(f"/api/v1/tasks/{task.pk}/complete", body, format="json")
    assert response.status_code == 200, response.content
    task.refresh_from_db()
    assert task.status == Status.COMPLETED and task.result == result  # the task keeps what was sent
    review_node = run.nodes.get(key="review")
    assert review_node.status == NodeStatus.SUCCEEDED and review_node.outputs == {}
    publish = run.nodes.get(key="publish")
    assert publish.status == NodeStatus.FAILED and publish.error == "binding_unresolved"
    assert "verdict" in publish.error_detail and publish.task is None
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and '"publish" failed' in run.error


def test_an_object_without_the_bound_name_fails_the_downstream_node(run, agent):
    task = claim(agent, run)
    agent.post(f"/api/v1/tasks/{task.pk}/complete", {"result": {"score": 3}}, format="json")
    publish = run.nodes.get(key="publish")
    assert publish.status == NodeStatus.FAILED and publish.error == "binding_unresolved"
    assert "(it has: score)" in publish.error_detail


def test_an_agents_fail_fails_the_node_and_takes_the_failure_edge(run, agent):
    task = claim(agent, run)
    response = agent.post(f"/api/v1/tasks/{task.pk}/fail", {"error": "cannot reach the repo"}, format="json")
    assert response.status_code == 200, response.content
    node = run.nodes.get(key="review")
    assert node.status == NodeStatus.FAILED and node.error == "task_failed"
    assert node.error_detail == "cannot reach the repo"
    assert statuses(run) == {"review": "failed", "publish": "skipped", "handler": "queued"}
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING  # handled: the failure edge took it
    end_node(run, "handler")
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED


def test_an_agents_fail_publishes_no_outputs(run, agent):
    task = claim(agent, run)
    agent.post(f"/api/v1/tasks/{task.pk}/fail", {"error": "cannot reach the repo"}, format="json")
    assert run.nodes.get(key="review").outputs == {}


def test_an_agents_fail_without_a_failure_edge_fails_the_run(make_workflow, review, user, agent):
    workflow = make_workflow(
        slug="lone",
        name="Lone",
        nodes=[
            {"key": "review", "template": "review", "parameters": {"topic": "x"}},
            {"key": "after", "template": "step"},
        ],
        edges=[{"from": "review", "to": "after"}],
    )
    run = services.workflow_run_create(workflow=workflow, actor=user)
    task = claim(agent, run)
    agent.post(f"/api/v1/tasks/{task.pk}/fail", {"error": "no"}, format="json")
    assert statuses(run) == {"review": "failed", "after": "waiting"}  # a failed run starts nothing
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and '"review" failed' in run.error
    # Retry makes a new task for the agent; the old one no longer speaks for the node.
    run = services.workflow_run_retry(run=run, actor=user)
    node = run.nodes.get(key="review")
    assert node.status == NodeStatus.QUEUED and node.attempts == 2 and node.task_id != task.pk
    again = claim(agent, run)
    agent.post(f"/api/v1/tasks/{again.pk}/complete", {"result": {"ok": True}}, format="json")
    assert statuses(run) == {"review": "succeeded", "after": "queued"}


def test_a_released_claim_leaves_the_node_queued(run, agent):
    """Release is not an end: the node waits for the next claimer."""
    task = claim(agent, run)
    assert agent.post(f"/api/v1/tasks/{task.pk}/release").status_code == 200
    node = run.nodes.get(key="review")
    assert node.status == NodeStatus.QUEUED and node.shown_status() == NodeStatus.QUEUED
    again = claim(agent, run)
    assert again.pk == task.pk
    agent.post(f"/api/v1/tasks/{task.pk}/complete", {"result": {"verdict": "ok"}}, format="json")
    assert run.nodes.get(key="publish").task.parameters == {"message": "ok"}


def test_cancelling_the_run_cancels_a_claimed_agent_node(run, agent, user):
    task = claim(agent, run)
    run = services.workflow_run_cancel(run=run, actor=user)
    assert run.status == RunStatus.CANCELLED
    task.refresh_from_db()
    assert task.status == Status.CANCELLED
    assert statuses(run) == {"review": "cancelled", "publish": "cancelled", "handler": "cancelled"}
    response = agent.post(f"/api/v1/tasks/{task.pk}/complete", {"result": {"verdict": "late"}}, format="json")
    assert response.status_code == 409  # the claim is gone with the task
    assert run.nodes.get(key="review").outputs == {}


def test_an_agent_nodes_task_cannot_be_deleted_before_it_ends(run, api, user):
    """Deleting the pending task of a queued agent node would leave the run waiting for ever:
    409 task_in_workflow (over HTTP), nothing changes; once the run is cancelled it may go."""
    task = run.nodes.get(key="review").task
    response = api.delete(f"/api/v1/tasks/{task.pk}")
    assert response.status_code == 409 and response.json()["code"] == "task_in_workflow"
    assert Task.objects.filter(pk=task.pk).exists()
    assert statuses(run)["review"] == "queued"
    services.workflow_run_cancel(run=run, actor=user)
    assert api.delete(f"/api/v1/tasks/{task.pk}").status_code == 204
