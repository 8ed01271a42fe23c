"""for_each: one task per item, at most max_parallel at once, outputs gathered as lists."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from tests.workflows.conftest import end_node, statuses
from workflows import services
from workflows.models import NodeStatus, RunStatus

FAN = {
    "nodes": [
        {"key": "list", "template": "step"},
        {
            "key": "each",
            "template": "step",
            "for_each": "{{ nodes.list.outputs.hosts }}",
            "max_parallel": 2,
            "parameters": {"message": "deploy {{ item.name }}"},
        },
        {
            "key": "report",
            "template": "step",
            "parameters": {"message": "all: {{ nodes.each.outputs.message }}"},
        },
    ],
    "edges": [{"from": "list", "to": "each"}, {"from": "each", "to": "report"}],
}
HOSTS = [{"name": "h0"}, {"name": "h1"}, {"name": "h2"}]


def items(run):
    return {item.key: item.status for item in run.nodes.exclude(parent=None).order_by("item_index")}


def end_item(run, key, status="succeeded"):
    item = run.nodes.get(key=key)
    return end_node(run, key, status=status, outputs={"message": item.task.parameters["message"]})


def test_each_item_runs_with_at_most_max_parallel_at_once(make_workflow, user):
    run = services.workflow_run_create(workflow=make_workflow(**FAN), actor=user)
    end_node(run, "list", outputs={"hosts": HOSTS})
    assert items(run) == {"each[0]": "queued", "each[1]": "queued", "each[2]": "waiting"}
    assert run.nodes.get(key="each[1]").task.parameters == {"message": "deploy h1"}
    end_item(run, "each[0]")
    assert items(run)["each[2]"] == "queued"
    end_item(run, "each[2]")
    assert statuses(run)["each"] == "queued"
    end_item(run, "each[1]")
    each = run.nodes.get(key="each")
    assert each.status == NodeStatus.SUCCEEDED
    assert each.outputs == {"message": ["deploy h0", "deploy h1", "deploy h2"]}
    # The join over the fan-out receives the list.
    assert run.nodes.get(key="report").task.parameters == {
        "message": 'all: ["deploy h0", "deploy h1", "deploy h2"]'
    }


def test_a_failed_item_fails_the_node_and_retry_reruns_only_it(make_workflow, user):
    run = services.workflow_run_create(workflow=make_workflow(**FAN), actor=user)
    end_node(run, "list", outputs={"hosts": HOSTS})
    end_item(run, "each[0]")
    end_item(run, "each[1]", status="failed")
    assert statuses(run)["each"] == "queued"  # waits for the others
    end_item(run, "each[2]")
    each = run.nodes.get(key="each")
    assert each.status == NodeStatus.FAILED and each.error == "items_failed"
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    first = run.nodes.get(key="each[0]").task_id
    services.workflow_run_retry(run=run, actor=user)
    assert items(run) == {"each[0]": "succeeded", "each[1]": "queued", "each[2]": "succeeded"}
    assert run.nodes.get(key="each[0]").task_id == first
    end_item(run, "each[1]")
    assert run.nodes.get(key="each").status == NodeStatus.SUCCEEDED
    end_node(run, "report")
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED


def test_not_a_list_and_too_many_items(make_workflow, user, settings):
    run = services.workflow_run_create(workflow=make_workflow(**FAN), actor=user)
    end_node(run, "list", outputs={"hosts": "h0"})
    each = run.nodes.get(key="each")
    assert each.status == NodeStatus.FAILED and "not a list" in each.error_detail
    settings.TASKFORGE_WORKFLOW_FOR_EACH_MAX = 2
    run = services.workflow_run_create(workflow=run.template, actor=user)
    end_node(run, "list", outputs={"hosts": HOSTS})
    each = run.nodes.get(key="each")
    assert each.error == "too_many_items" and not run.nodes.exclude(parent=None).exists()


def test_an_empty_list_succeeds_at_once(make_workflow, user):
    run = services.workflow_run_create(workflow=make_workflow(**FAN), actor=user)
    end_node(run, "list", outputs={"hosts": []})
    assert statuses(run)["each"] == "succeeded"
    assert run.nodes.get(key="report").status == NodeStatus.FAILED  # it has no outputs to bind


def test_pause_holds_items_and_cancel_ends_the_fan_out(make_workflow, user):
    run = services.workflow_run_create(workflow=make_workflow(**FAN), actor=user)
    end_node(run, "list", outputs={"hosts": HOSTS})
    services.workflow_run_pause(run=run, actor=user)
    end_item(run, "each[0]")
    assert items(run)["each[2]"] == "waiting"
    services.workflow_run_resume(run=run, actor=user)
    assert items(run)["each[2]"] == "queued"
    services.workflow_run_cancel(run=run, actor=user)
    assert items(run) == {"each[0]": "succeeded", "each[1]": "cancelled", "each[2]": "cancelled"}
    assert statuses(run)["each"] == "cancelled"


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"for_each": "{{ params.greeting }}"}, "nodes[1].for_each", "invalid"),
        ({"for_each": "{{ nodes.report.outputs.x }}"}, "nodes[1].for_each", "not_upstream"),
        ({"max_parallel": 0}, "nodes[1].max_parallel", "invalid"),
    ],
)
def test_bad_fan_outs_are_refused(make_workflow, change, field, code):
    definition = {"nodes": [dict(node) for node in FAN["nodes"]], "edges": FAN["edges"]}
    definition["nodes"][1].update(change)
    with pytest.raises(ValidationError) as caught:
        make_workflow(**definition)
    assert code in [error.code for error in caught.value.error_dict[field]]


def test_item_outside_a_fan_out_is_refused(make_workflow):
    with pytest.raises(ValidationError) as caught:
        make_workflow(
            nodes=[{"key": "a", "template": "step", "parameters": {"message": "{{ item }}"}}], edges=[]
        )
    assert caught.value.error_dict["nodes[0].parameters.message"][0].code == "item_outside_for_each"
