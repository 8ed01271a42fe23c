"""Workflows run by real ``manage.py runworker`` processes against the test database: a diamond
whose last node receives the first one's output, a failure with and without a failure edge and
the retry of only what failed, pause and resume while a node runs, cancel, a worker killed
mid-node, and several workers running several runs at once.

The diamond: A (python) publishes ``{"version": "1.2.3"}`` through ``$TASKFORGE_OUTPUTS_FILE``;
B and C follow A; D follows B and C and prints ``{{ nodes.a.outputs.version }}``. The scripts
are sandboxed as every run is (bwrap when the host has it, plain processes otherwise: nothing
here depends on which).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from events.models import Event
from executions.models import ErrorCode, Execution, ExecutionStatus
from templates_app.models import Template
from templates_app.services import template_create, template_update
from tests.live import wait_for, worker
from workflows import services
from workflows.models import NodeError, NodeStatus, RunStatus, WorkflowNode, WorkflowRun, WorkflowTemplate

pytestmark = pytest.mark.django_db(transaction=True)

PUBLISH = """import json, os
print("publishing")
with open(os.environ["TASKFORGE_OUTPUTS_FILE"], "w") as f:
    json.dump({"version": "1.2.3"}, f)
"""
# A short lease, so that a worker's death is noticed within seconds.
SHORT_LEASE = {"TASKFORGE_EXECUTION_LEASE_SECONDS": "2"}
NAP = "echo nap; sleep {{ seconds }}; echo woke"
SECONDS = [{"name": "seconds", "type": "integer", "default": 0}]


def bash(
    project, user, slug: str, script: str, parameters: list[dict] | None = None, **fields: Any
) -> Template:
    return template_create(
        project=project,
        actor=user,
        slug=slug,
        name=slug,
        name_pattern=slug,
        script_type="bash",
        script=script,
        parameters=parameters or [],
        **fields,
    )


@pytest.fixture
def templates(user, project) -> dict[str, Template]:
    return {
        "publish": template_create(
            project=project,
            actor=user,
            slug="publish",
            name="Publish",
            name_pattern="publish",
            script_type="python",
            script=PUBLISH,
        ),
        "nap": bash(
            project,
            user,
            "nap",
            NAP,
            SECONDS,
        ),
        "say": bash(
            project,
            user,
            "say",
            "echo got {{ message }}",
            [{"name": "message", "type": "string", "required": True}],
        ),
    }


def diamond(
    user, project, *, b: str = "nap", slug: str = "diamond", handler: bool = False
) -> WorkflowTemplate:
    """A -> B, A -> C, B and C -> D; B naps ``b_seconds`` (a workflow parameter); D says A's
    version. ``handler``: B's failure goes to a node H."""
    nodes = [
        {"key": "a", "template": "publish"},
        {"key": "b", "template": b, "parameters": {"seconds": "{{ params.b_seconds }}"}},
        {"key": "c", "template": "nap"},
        {"key": "d", "template": "say", "parameters": {"message": "{{ nodes.a.outputs.version }}"}},
    ]
    edges = [
        {"from": "a", "to": "b"},
        {"from": "a", "to": "c"},
        {"from": "b", "to": "d"},
        {"from": "c", "to": "d"},
    ]
    if handler:
        nodes.append({"key": "h", "template": "say", "parameters": {"message": "b failed"}})
        edges.append({"from": "b", "to": "h", "on": "failure"})
    return services.workflow_template_create(
        project=project,
        actor=user,
        slug=slug,
        name=slug,
        parameters=[{"name": "b_seconds", "type": "integer", "default": 0}],
        nodes=nodes,
        edges=edges,
    )


def node(run: WorkflowRun, key: str) -> WorkflowNode:
    return WorkflowNode.objects.select_related("task").get(run=run, key=key)


def executions(run: WorkflowRun, key: str) -> list[Execution]:
    """Every execution of every task node ``key`` ever had (a retried node has a task per start)."""
    tasks = Event.objects.filter(
        type="workflow.node_started", data__workflow_id=str(run.pk), data__node=key
    ).values_list("data__task_id", flat=True)
    return list(Execution.objects.filter(task_id__in=list(tasks)).order_by("queued_at"))


def stdout(execution: Execution) -> str:
    return "".join(execution.chunks.filter(stream="stdout").values_list("data", flat=True))


def final(run: WorkflowRun, timeout: float = 60) -> WorkflowRun:
    """The run once it ended and none of its nodes runs any more."""

    def settled() -> WorkflowRun | None:
        current = WorkflowRun.objects.get(pk=run.pk)
        active = current.nodes.filter(status__in=(NodeStatus.QUEUED, NodeStatus.RUNNING)).exists()
        return current if current.is_final and not active else None

    return wait_for(settled, timeout=timeout)  # type: ignore[return-value]


def statuses(run: WorkflowRun) -> dict[str, str]:
    return dict(run.nodes.order_by("position").values_list("key", "status"))


def running(run: WorkflowRun, key: str) -> bool:
    """Node ``key``'s script has started (its first line is out)."""
    task_id = WorkflowNode.objects.get(run=run, key=key).task_id
    return Execution.objects.filter(
        task_id=task_id, status=ExecutionStatus.RUNNING, chunks__data__startswith="nap"
    ).exists()


def assert_ran_once(run: WorkflowRun, *keys: str) -> None:
    for key in keys:
        runs = executions(run, key)
        assert len(runs) == 1, (key, runs)
        assert runs[0].status == ExecutionStatus.SUCCEEDED and runs[0].attempt == 1
        assert node(run, key).attempts == 1
        started = Event.objects.filter(type="execution.started", data__execution_id=str(runs[0].pk))
        assert started.count() == 1, key  # claimed and started by one worker, once


def assert_d_got_the_version(run: WorkflowRun) -> None:
    d = node(run, "d")
    assert d.task.parameters == {"message": "1.2.3"}
    assert "got 1.2.3\n" in stdout(executions(run, "d")[-1])


def test_diamond_with_two_workers_passes_a_output_to_d(templates, user, project):
    run = services.workflow_run_create(workflow=diamond(user, project), actor=user)
    with worker("--concurrency", "2"), worker("--concurrency", "2"):
        run = final(run)
    assert run.status == RunStatus.SUCCEEDED, (run.error, statuses(run))
    assert statuses(run) == {"a": "succeeded", "b": "succeeded", "c": "succeeded", "d": "succeeded"}
    assert node(run, "a").outputs == {"version": "1.2.3"}
    assert_ran_once(run, "a", "b", "c", "d")
    assert_d_got_the_version(run)
    types = list(
        Event.objects.filter(data__workflow_id=str(run.pk)).order_by("id").values_list("type", flat=True)
    )
    assert types[0] == "workflow.started" and types[-1] == "workflow.succeeded"
    assert types.count("workflow.node_started") == types.count("workflow.node_finished") == 4
    print("sandbox:", sorted(set(Execution.objects.values_list("sandbox", flat=True))))


def test_a_failure_without_then_with_a_failure_edge_and_the_retry_of_only_b(templates, user, project):
    """B fails (exit 1). Without a failure edge the run fails and D never starts; once B's
    template is fixed, retry runs B and then D only: A's and C's executions stay one each and
    D still gets A's version. With a failure edge, B's failure runs the handler instead and
    the run succeeds (D, which needs B's success, is skipped).

    B fails on its first attempt by its template's script, then the script is fixed: a retry
    keeps the run's parameters, and a marker file would not do (under bwrap a script sees
    neither the host's /tmp nor any directory the test could write to)."""
    flaky = bash(project, user, "flaky", "echo failing {{ seconds }}; exit 1", SECONDS)
    failing = services.workflow_run_create(workflow=diamond(user, project, b="flaky"), actor=user)
    handled = services.workflow_run_create(
        workflow=diamond(user, project, b="flaky", slug="handled", handler=True), actor=user
    )
    with worker("--concurrency", "2"), worker("--concurrency", "2"):
        failing, handled = final(failing), final(handled)
        assert failing.status == RunStatus.FAILED and '"b" failed' in failing.error
        assert statuses(failing) == {"a": "succeeded", "b": "failed", "c": "succeeded", "d": "waiting"}
        b = node(failing, "b")
        assert b.error == NodeError.TASK_FAILED and node(failing, "d").task is None
        assert executions(failing, "b")[0].exit_code == 1
        assert handled.status == RunStatus.SUCCEEDED, (handled.error, statuses(handled))
        assert statuses(handled) == {
            "a": "succeeded",
            "b": "failed",
            "c": "succeeded",
            "d": "skipped",
            "h": "succeeded",
        }
        assert "got b failed\n" in stdout(executions(handled, "h")[0])

        template_update(template=flaky, actor=user, fields={"script": "echo fixed {{ seconds }}"})
        services.workflow_run_retry(run=failing, actor=user)
        failing = final(failing)
    assert failing.status == RunStatus.SUCCEEDED, (failing.error, statuses(failing))
    assert_ran_once(failing, "a", "c", "d")  # A and C not again; D once, after the retry
    first, second = executions(failing, "b")
    assert first.status == ExecutionStatus.FAILED and second.status == ExecutionStatus.SUCCEEDED
    assert stdout(second) == "fixed 0\n"
    assert node(failing, "b").attempts == 2
    assert_d_got_the_version(failing)
    assert failing.retries == 1


def test_pause_while_b_runs_lets_it_finish_and_starts_d_only_on_resume(templates, user, project):
    run = services.workflow_run_create(
        workflow=diamond(user, project), actor=user, parameters={"b_seconds": 3}
    )
    with worker("--concurrency", "2"):
        wait_for(lambda: running(run, "b"), timeout=30)
        run = services.workflow_run_pause(run=run, actor=user)
        # B's end is decided in the transaction that records it: were D to start, it would
        # be queued by the time B shows succeeded.
        wait_for(lambda: statuses(run)["b"] == "succeeded", timeout=30)
        wait_for(lambda: statuses(run)["c"] == "succeeded", timeout=30)
        assert statuses(run) == {"a": "succeeded", "b": "succeeded", "c": "succeeded", "d": "waiting"}
        run.refresh_from_db()
        assert run.status == RunStatus.PAUSED and node(run, "d").task is None
        time.sleep(1)  # a worker's poll later, still nothing
        assert statuses(run)["d"] == "waiting"
        services.workflow_run_resume(run=run, actor=user)
        run = final(run)
    assert run.status == RunStatus.SUCCEEDED, (run.error, statuses(run))
    assert_ran_once(run, "a", "b", "c", "d")
    assert_d_got_the_version(run)
    types = list(
        Event.objects.filter(data__workflow_id=str(run.pk)).order_by("id").values_list("type", flat=True)
    )
    assert types.index("workflow.paused") < types.index("workflow.resumed")


def test_cancel_while_b_runs_kills_it_and_cancels_the_run_then_retry_finishes_it(templates, user, project):
    run = services.workflow_run_create(
        workflow=diamond(user, project), actor=user, parameters={"b_seconds": 60}
    )
    with worker("--concurrency", "2"):
        wait_for(lambda: running(run, "b"), timeout=30)
        asked = time.monotonic()
        run = services.workflow_run_cancel(run=run, actor=user)
        assert run.status == RunStatus.CANCELLED
        run = final(run, timeout=20)
        assert run.status == RunStatus.CANCELLED
        # The node is cancelled with its task, at once; its script is killed by its worker
        # within the next 2 s (the execution's own end).
        (b_run,) = executions(run, "b")
        b_run = wait_for(lambda: (e := Execution.objects.get(pk=b_run.pk)).is_final and e, timeout=20)
        took = time.monotonic() - asked
        assert b_run.status == ExecutionStatus.CANCELLED and b_run.error == ErrorCode.CANCELLED
        assert "woke" not in stdout(b_run)  # killed, not left to finish its 60 s
        print(f"cancel to killed: {took:.2f}s")
        assert took < 15, took
        states = statuses(run)
        assert states["b"] == "cancelled" and states["d"] == "cancelled" and states["a"] == "succeeded"
        assert node(run, "b").error == NodeError.TASK_CANCELLED
        assert node(run, "d").task is None
        # Retry runs the cancelled nodes (B, D) again; B's template no longer naps (the run
        # keeps its 60 s parameter).
        c_finished = WorkflowRun.objects.get(pk=run.pk).nodes.get(key="c").status
        template_update(template=templates["nap"], actor=user, fields={"script": "echo quick {{ seconds }}"})
        services.workflow_run_retry(run=run, actor=user)
        run = final(run)
    assert run.status == RunStatus.SUCCEEDED, (run.error, statuses(run))
    if c_finished == NodeStatus.SUCCEEDED:  # C had ended before the cancel: not run again
        assert_ran_once(run, "a", "c", "d")
    else:
        assert_ran_once(run, "a", "d")
    assert node(run, "b").attempts == 2 and stdout(executions(run, "b")[-1]) == "quick 60\n"
    assert_d_got_the_version(run)


def test_a_worker_killed_mid_node_is_reaped_and_the_node_retried(templates, user, project):
    """B's template allows one retry. The worker running B is killed (SIGKILL): the next
    worker's reaper fails that execution ``worker_lost`` once its lease (2 s here) runs out and
    queues B's second attempt; B succeeds, and the run goes on to D."""
    sturdy = bash(project, user, "sturdy", NAP, SECONDS, max_retries=1)
    run = services.workflow_run_create(
        workflow=diamond(user, project, b=sturdy.slug), actor=user, parameters={"b_seconds": 3}
    )
    # One slot: when B runs, nothing else of the run is on the doomed worker.
    with worker("--concurrency", "1", extra_env=SHORT_LEASE) as doomed:
        wait_for(lambda: running(run, "b"), timeout=30)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
    (lost,) = executions(run, "b")
    assert lost.status == ExecutionStatus.RUNNING  # nobody noticed yet
    assert statuses(run)["b"] == "queued"
    with worker("--concurrency", "2", extra_env=SHORT_LEASE):
        run = final(run, timeout=60)
    assert run.status == RunStatus.SUCCEEDED, (run.error, statuses(run))
    lost, retried = executions(run, "b")  # one task, two executions
    assert lost.task_id == retried.task_id
    assert lost.status == ExecutionStatus.FAILED and lost.error == ErrorCode.WORKER_LOST
    assert retried.status == ExecutionStatus.SUCCEEDED and retried.attempt == 2
    assert retried.retry_of_id == lost.pk
    b = node(run, "b")
    assert b.status == NodeStatus.SUCCEEDED and b.attempts == 1  # the node started once
    assert_ran_once(run, "a", "c", "d")
    assert_d_got_the_version(run)


def test_three_workers_run_five_diamonds_at_once_and_no_node_twice(templates, user, project):
    workflow = diamond(user, project)
    runs = [
        services.workflow_run_create(workflow=workflow, actor=user, parameters={"b_seconds": i % 2})
        for i in range(5)
    ]
    with worker("--concurrency", "2"), worker("--concurrency", "2"), worker("--concurrency", "2"):
        runs = [final(run, timeout=90) for run in runs]
    for run in runs:
        assert run.status == RunStatus.SUCCEEDED, (run.error, statuses(run))
        assert_ran_once(run, "a", "b", "c", "d")
        assert_d_got_the_version(run)
    assert Execution.objects.count() == 20
    # Every execution was claimed once (one start each), spread over the workers that ran.
    assert Event.objects.filter(type="execution.started").count() == 20
    workers = set(Execution.objects.values_list("worker_id", flat=True))
    print(f"{len(workers)} workers ran the 20 executions")
