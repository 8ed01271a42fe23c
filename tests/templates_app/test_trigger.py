"""Triggering templates with hostile values, running the real scripts: values are printed
literally and never run."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from core.validators import first_refused_character
from executions.models import Execution, ExecutionStatus
from executions.serializers import ExecutionDetailSerializer
from templates_app import services

pytestmark = pytest.mark.django_db

HOSTILE = [
    "$(touch {marker})",
    "`touch {marker}`",
    "'; touch {marker}; '",
    '"; touch {marker}; "',
    '"""; import os; os.system("touch {marker}"); """',
    "a\ntouch {marker}\n",
    "\\'; touch {marker} #",
    "${{IFS}}touch${{IFS}}{marker}",
    "{{{{ other }}}} %s %d \\x00 ünïcødé ✓",
]


def run(inline_worker: Any, execution: Execution) -> Execution:
    assert inline_worker.run_pending() == 1
    execution.refresh_from_db()
    return execution


def output(execution: Execution) -> str:
    return ExecutionDetailSerializer(execution).data["stdout"]


@pytest.fixture
def marker() -> Path:
    path = Path(f"/tmp/pwned-{uuid.uuid4().hex}")  # noqa: S108 - the point is to prove it never appears
    yield path
    path.unlink(missing_ok=True)


def hostile_template(
    user: Any,
    project: Any,
    script_type: str,
    script: str,
    secret: bool = False,
    name_pattern: str | None = None,
    **fields: Any,
) -> Any:
    return services.template_create(
        project=project,
        actor=user,
        slug=f"t-{uuid.uuid4().hex[:6]}",
        name="hostile",
        name_pattern=name_pattern or ("Echo {{ msg }}" if not secret else "Echo"),
        script_type=script_type,
        script=script,
        parameters=[{"name": "msg", "type": "string", "required": True, "secret": secret}],
        **fields,
    )


@pytest.mark.parametrize("pattern", HOSTILE)
@pytest.mark.parametrize(
    ("script_type", "script"),
    [
        ("bash", 'msg={{ msg }}\nprintf "%s" "$msg"'),
        ("bash", "printf '%s' {{ msg }}"),
        ("python", "import sys\nsys.stdout.write({{ msg }})"),
        ("python", "msg = {{ msg }}\nprint(f'{msg}', end='')"),
    ],
)
def test_hostile_values_are_printed_literally(
    user, project, inline_worker, marker, pattern, script_type, script
):
    value = pattern.format(marker=marker)
    # A value with a line break cannot be part of a task name (core/validators.py; refused
    # in tests/hardening/test_names.py): such values go to the script only.
    nameable = first_refused_character(value) is None
    template = hostile_template(user, project, script_type, script, name_pattern=None if nameable else "Echo")
    task, execution = services.template_trigger(template=template, actor=user, parameters={"msg": value})
    execution = run(inline_worker, execution)
    assert execution.status == ExecutionStatus.SUCCEEDED, (execution.error_detail, output(execution))
    assert output(execution) == value
    assert not marker.exists()
    assert task.name.startswith("Echo")


@pytest.mark.parametrize("script_type", ["bash", "python"])
def test_secrets_reach_the_script_but_are_never_stored_or_shown(
    user, project, inline_worker, marker, script_type
):
    secret = f"s3cr3t $(touch {marker}) '\"\n-{uuid.uuid4().hex}"
    # The script prints what it received base64-encoded: printed as it is, it would be masked.
    script = (
        'tok={{ msg }}\n{ printf "%s|%s" "$tok" "$PARAM_MSG"; printf "|"; cat "$TASKFORGE_PARAMS_FILE"; }'
        " | base64 -w0"
        if script_type == "bash"
        else "import base64, os, json\nprint(base64.b64encode('|'.join([{{ msg }}, os.environ['PARAM_MSG'], "
        "json.load(open(os.environ['TASKFORGE_PARAMS_FILE']))['msg']]).encode()).decode(), end='')"
    )
    template = hostile_template(user, project, script_type, script, secret=True)
    task, execution = services.template_trigger(template=template, actor=user, parameters={"msg": secret})
    assert secret not in execution.script
    assert task.parameters == {"msg": "***"} and execution.parameters == {"msg": "***"}
    execution = run(inline_worker, execution)
    assert execution.status == ExecutionStatus.SUCCEEDED, output(execution)
    printed = base64.b64decode(output(execution)).decode()
    if script_type == "bash":
        first, second, params_file = printed.split("|", 2)
        assert first == second == secret
        assert json.loads(params_file)["msg"] == secret
    else:
        assert printed == f"{secret}|{secret}|{secret}"
    assert not marker.exists()
    execution.refresh_from_db()
    assert execution.secret_parameters == {}  # wiped when finished
    assert secret not in json.dumps(ExecutionDetailSerializer(execution).data)


def test_typed_values_render_as_literals(user, project, inline_worker):
    params = [
        {"name": "n", "type": "integer"},
        {"name": "x", "type": "number"},
        {"name": "flag", "type": "boolean"},
        {"name": "opt", "type": "string"},
    ]
    template = services.template_create(
        project=project,
        actor=user,
        slug="typed",
        name="typed",
        name_pattern="n={{ n }} flag={{ flag }}",
        script_type="python",
        script="print(repr({{ n }}), repr({{ x }}), repr({{ flag }}), repr({{ opt }}), '{{ n }}')",
        parameters=params,
    )
    task, execution = services.template_trigger(
        template=template, actor=user, parameters={"n": -3, "x": 2.5, "flag": True}
    )
    assert task.name == "n=-3 flag=true"
    execution = run(inline_worker, execution)
    assert output(execution) == "-3 2.5 True None -3\n"
    bash = services.template_create(
        project=project,
        actor=user,
        slug="typed-bash",
        name="typed",
        name_pattern="t",
        script_type="bash",
        script='if {{ flag }}; then echo "yes $(( {{ n }} * 2 )) {{ x }}" {{ opt }}; fi',
        parameters=params,
    )
    _task, execution = services.template_trigger(
        template=bash, actor=user, parameters={"n": 21, "x": 0.5, "flag": True}
    )
    assert output(run(inline_worker, execution)) == "yes 42 0.5 \n"


def test_wait_returns_the_finished_execution(api, user, project, make_template, inline_worker, monkeypatch):
    make_template(script='echo "deploying" {{ service }}')
    # The inline worker runs the execution while the request waits.
    from executions.api import views as execution_views
    from templates_app.api import views

    def run_then_read(execution_id: Any, timeout: float) -> Execution:
        inline_worker.run_pending()
        return Execution.objects.get(pk=execution_id)

    monkeypatch.setattr(views, "wait_until_final", run_then_read)
    monkeypatch.setattr(execution_views, "wait_until_final", run_then_read)
    response = api.post(
        "/api/v1/templates/deploy/trigger?wait=10", {"parameters": {"service": "api"}}, format="json"
    )
    # Finished within ?wait: 200, the same answer as POST /tasks/{id}/execute?wait gives.
    assert response.status_code == 200, response.content
    execution = response.json()["execution"]
    assert execution["status"] == "succeeded"
    assert execution["stdout"] == "deploying api\n"
    assert execution["error"] is None and execution["error_detail"] is None
    assert response["Location"].endswith(f"/api/v1/tasks/{response.json()['task']['id']}")
    again = api.post(f"/api/v1/tasks/{response.json()['task']['id']}/execute?wait=10", {}, format="json")
    assert again.status_code == 200, again.content


def test_wait_that_runs_out_answers_202_on_both_endpoints(api, make_template, monkeypatch):
    """Still queued or running when ?wait ends: 202 from trigger and from execute alike, so a
    CI step tells "finished" (200) from "not yet" (202) the same way on both."""
    make_template(script='echo "deploying" {{ service }}')
    from executions.api import views as execution_views
    from templates_app.api import views

    def nothing_runs(execution_id: Any, timeout: float) -> Execution:
        return Execution.objects.get(pk=execution_id)

    monkeypatch.setattr(views, "wait_until_final", nothing_runs)
    monkeypatch.setattr(execution_views, "wait_until_final", nothing_runs)
    response = api.post(
        "/api/v1/templates/deploy/trigger?wait=1", {"parameters": {"service": "api"}}, format="json"
    )
    assert response.status_code == 202, response.content
    assert response.json()["execution"]["status"] == "queued"
    task_id = response.json()["task"]["id"]
    execution_id = response.json()["execution"]["id"]
    assert api.delete(f"/api/v1/tasks/{task_id}/executions/{execution_id}").status_code == 200
    again = api.post(f"/api/v1/tasks/{task_id}/execute?wait=1", {}, format="json")
    assert again.status_code == 202, again.content
    assert again.json()["status"] == "queued"


def test_an_automatic_retry_gets_the_secret_parameters_too(user, project, inline_worker):
    """A failed attempt's retry runs with the same secret (wiped from both once finished),
    not with the variable unset."""
    template = hostile_template(
        user, project, "bash", 'printf "%s|" {{ msg }}; exit 1', secret=True, max_retries=1
    )
    task, _ = services.template_trigger(template=template, actor=user, parameters={"msg": "s3cr3t"})
    assert inline_worker.run_pending() == 2
    attempts = list(Execution.objects.filter(task=task).order_by("number"))
    assert [e.attempt for e in attempts] == [1, 2]
    assert [output(e) for e in attempts] == ["***|", "***|"]  # received, and masked in the output
    assert [e.secret_parameters for e in attempts] == [{}, {}]
