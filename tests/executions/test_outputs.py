"""Run outputs: a script writes a JSON object to $TASKFORGE_OUTPUTS_FILE; the worker stores it
on the execution (secret values masked), shows it in the API, the task's result and the admin,
and fails the run ``invalid_outputs`` when it is too large, not JSON or not an object. Real
scripts, with and without bubblewrap."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from events.models import Event
from executions import services
from executions.engine.sandbox import SandboxConfig
from executions.engine.worker import WorkerProcess
from executions.models import ErrorCode, Execution, ExecutionStatus
from templates_app import services as template_services
from tests.executions.test_sandbox import SYSTEM_PYTHON, bwrap_problem

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(SYSTEM_PYTHON is None, reason="no python3 on the sandbox PATH"),
]

PYTHON_OUTPUTS = """
import json, os
with open(os.environ["TASKFORGE_OUTPUTS_FILE"], "w") as handle:
    json.dump({"version": "1.2.3", "count": 3, "tags": ["a", "b"], "nested": {"ok": True}}, handle)
print("done")
"""


def bash_outputs(name: str) -> str:
    template = '{"artifact": "build-%s.tar", "size": 42}'
    return f"""name='{name}'; printf '{template}' "$name" > "$TASKFORGE_OUTPUTS_FILE"\n"""


@pytest.fixture(params=["never", "always"])
def worker(request: pytest.FixtureRequest, db) -> WorkerProcess:
    """A one-thread worker without bubblewrap and with it (skipped, with the reason, where it cannot work)."""
    if request.param == "always" and (problem := bwrap_problem()) is not None:
        pytest.skip(problem)
    return WorkerProcess(concurrency=1, sandbox=SandboxConfig.from_settings(use_bwrap=request.param))


def run(worker: WorkerProcess, make_task, user, script: str, script_type: str = "bash") -> Execution:
    task = make_task(script, script_type)
    services.execution_enqueue(task=task, actor=user)
    assert worker.run_pending() == 1
    return Execution.objects.get(task=task)


def test_a_python_script_publishes_outputs(api, make_task, user, worker):
    execution = run(worker, make_task, user, PYTHON_OUTPUTS, "python")
    assert execution.status == ExecutionStatus.SUCCEEDED, execution.error_detail
    expected = {"version": "1.2.3", "count": 3, "tags": ["a", "b"], "nested": {"ok": True}}
    assert execution.outputs == expected
    detail = api.get(f"/api/v1/tasks/{execution.task_id}/executions/{execution.pk}").json()
    assert detail["outputs"] == expected
    execution.task.refresh_from_db()
    assert execution.task.result["outputs"] == expected
    finished = Event.objects.get(task=execution.task, type="execution.finished")
    assert finished.data["output_keys"] == ["count", "nested", "tags", "version"]  # names, not values
    assert "1.2.3" not in str(finished.data)


def test_a_bash_script_publishes_outputs(make_task, user, worker):
    execution = run(worker, make_task, user, bash_outputs("7"))
    assert execution.status == ExecutionStatus.SUCCEEDED, execution.error_detail
    assert execution.outputs == {"artifact": "build-7.tar", "size": 42}


def test_no_file_and_an_empty_file_are_no_outputs(api, make_task, user, worker):
    for script in ("echo nothing published", 'rm -f "$TASKFORGE_OUTPUTS_FILE"; true'):
        execution = run(worker, make_task, user, script)
        assert execution.status == ExecutionStatus.SUCCEEDED, execution.error_detail
        assert execution.outputs == {}
        finished = Event.objects.get(task=execution.task, type="execution.finished")
        assert finished.data["output_keys"] == []


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("[1, 2, 3]", "must hold a JSON object, not list"),
        ('"just text"', "must hold a JSON object, not str"),
        ("{not json", "is not JSON"),
        ("\\xff\\xfe", "is not JSON"),
        ('{"ratio": NaN}', "NaN is not a JSON value"),
        ('{"x": "a\\\\u0000b"}', "NUL character or a lone surrogate"),
        ('{"x": "\\\\ud800"}', "NUL character or a lone surrogate"),
    ],
)
def test_what_is_not_a_json_object_fails_the_run(make_task, user, worker, content, detail):
    execution = run(worker, make_task, user, f"printf '{content}' > \"$TASKFORGE_OUTPUTS_FILE\"")
    assert execution.status == ExecutionStatus.FAILED
    assert execution.exit_code == 0
    assert execution.error == ErrorCode.INVALID_OUTPUTS
    assert detail in execution.error_detail
    assert execution.outputs == {}
    execution.task.refresh_from_db()
    assert execution.task.result["error"] == "invalid_outputs"


def test_outputs_nested_too_deeply_fail_the_run(make_task, user, worker):
    deep = (
        "import os\n"
        "text = '{\"x\": ' + '[' * 20000 + ']' * 20000 + '}'\n"
        "open(os.environ['TASKFORGE_OUTPUTS_FILE'], 'w').write(text)\n"
    )
    execution = run(worker, make_task, user, deep, "python")
    assert execution.error == ErrorCode.INVALID_OUTPUTS
    assert "nested too deeply" in execution.error_detail


def test_outputs_over_the_cap_fail_the_run(make_task, user, worker, settings):
    settings.TASKFORGE_OUTPUTS_MAX_BYTES = 1000
    worker.sandbox = SandboxConfig.from_settings(use_bwrap=worker.sandbox.use_bwrap)
    big = "import json, os\njson.dump({'x': 'y' * 1000}, open(os.environ['TASKFORGE_OUTPUTS_FILE'], 'w'))\n"
    execution = run(worker, make_task, user, big, "python")
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error == ErrorCode.INVALID_OUTPUTS
    assert "larger than 1000 bytes" in execution.error_detail
    assert execution.outputs == {}
    fits = "import json, os\njson.dump({'x': 'y' * 900}, open(os.environ['TASKFORGE_OUTPUTS_FILE'], 'w'))\n"
    assert run(worker, make_task, user, fits, "python").outputs == {"x": "y" * 900}


def test_a_failed_run_keeps_its_outputs_and_its_own_error(make_task, user, worker):
    script = 'echo \'{"stage": "tests"}\' > "$TASKFORGE_OUTPUTS_FILE"; exit 4'
    execution = run(worker, make_task, user, script)
    assert execution.error == ErrorCode.NONZERO_EXIT
    assert execution.outputs == {"stage": "tests"}
    broken = run(worker, make_task, user, 'echo "[" > "$TASKFORGE_OUTPUTS_FILE"; exit 4')
    assert broken.error == ErrorCode.NONZERO_EXIT  # the run's own failure comes first
    assert broken.outputs == {}


def test_a_link_instead_of_the_file_is_refused(make_task, user, worker):
    script = 'rm -f "$TASKFORGE_OUTPUTS_FILE"; ln -s /etc/hostname "$TASKFORGE_OUTPUTS_FILE"; true'
    execution = run(worker, make_task, user, script)
    if worker.sandbox.use_bwrap == "always":
        # The file is bound into the sandbox: it cannot be removed or replaced there.
        assert execution.status == ExecutionStatus.SUCCEEDED
    else:
        assert execution.error == ErrorCode.INVALID_OUTPUTS
        assert "could not be opened" in execution.error_detail
    assert execution.outputs == {}


def test_secret_values_are_masked_in_the_outputs(user, project, worker):
    template = template_services.template_create(
        project=project,
        actor=user,
        slug=f"t-{uuid.uuid4().hex[:6]}",
        name="deploy",
        name_pattern="deploy",
        script_type="python",
        script=(
            "import json, os\n"
            "token = os.environ['PARAM_TOKEN']\n"
            "pin = int(os.environ['PARAM_PIN'])\n"
            "outputs = {'token': token, 'url': 'https://x:' + token + '@host', token: 1, 'pin': pin}\n"
            "json.dump(outputs, open(os.environ['TASKFORGE_OUTPUTS_FILE'], 'w'))\n"
        ),
        parameters=[
            {"name": "token", "type": "string", "required": True, "secret": True},
            {"name": "pin", "type": "string", "required": True, "secret": True},
        ],
    )
    _task, execution = template_services.template_trigger(
        template=template, actor=user, parameters={"token": "s3cr3t-value", "pin": "98765"}, execute=True
    )
    assert worker.run_pending() == 1
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.SUCCEEDED, execution.error_detail
    assert execution.outputs == {"token": "***", "url": "https://x:***@host", "***": 1, "pin": "***"}
    execution.task.refresh_from_db()
    assert "s3cr3t-value" not in str(execution.task.result)


def test_the_admin_execution_page_shows_the_outputs(user, make_task, worker):
    execution = run(worker, make_task, user, bash_outputs("<b>9</b>"))
    user.is_staff = user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)
    page = client.get(f"/admin/executions/execution/{execution.pk}/change/").content.decode()
    assert "build-&lt;b&gt;9&lt;/b&gt;.tar" in page
    assert "&quot;size&quot;: 42" in page
