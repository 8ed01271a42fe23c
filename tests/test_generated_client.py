"""A client generated from the schema by ``openapi-python-client`` works (issue 19).

The generator (a dev dependency; no network) runs on the schema this code serves and must
print no warning; the client it writes is imported and drives an agent's claim loop against
a real gunicorn: create tasks, claim-next, heartbeat, complete, then ``tasks_list`` with two
statuses, which the client sends as ``status=a&status=b`` (the schema's form/explode style),
returns both tasks.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from tests.factories import UserFactory, make_key
from tests.live import gunicorn

GENERATOR = str(Path(sys.executable).with_name("openapi-python-client"))
GENERATOR = GENERATOR if Path(GENERATOR).exists() else (shutil.which("openapi-python-client") or GENERATOR)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(GENERATOR).exists(), reason="openapi-python-client is not installed"),
]


def generate(tmp_path: Path) -> Path:
    schema = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(schema), "--validate", "--fail-on-warn")
    config = tmp_path / "config.yaml"
    config.write_text("project_name_override: tf-client\npackage_name_override: tf_client\npost_hooks: []\n")
    out = tmp_path / "tf-client"
    result = subprocess.run(
        [GENERATOR, "generate", "--path", str(schema), "--output-path", str(out), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    said = (result.stdout + result.stderr).lower()
    assert "warning" not in said and "error" not in said, result.stdout + result.stderr
    return out


def test_the_generated_client_has_sensible_names(tmp_path: Path) -> None:
    out = generate(tmp_path)
    models = {path.stem for path in (out / "tf_client" / "models").glob("*.py")}
    assert {"task", "execution", "problem", "lease_request", "user_ref"} <= models
    assert not any("request_request" in name for name in models)
    # ?format= is a parameter of the streams alone (json or sse), not of every operation.
    formats = {name for name in models if name.endswith("_format")}
    assert formats == {"tasks_executions_log_retrieve_format", "events_list_format"}
    tasks_api = {path.stem for path in (out / "tf_client" / "api" / "tasks").glob("*.py")}
    assert {"tasks_claim_next_create", "tasks_heartbeat_create", "tasks_execute_create"} <= tasks_api
    claim = (out / "tf_client" / "api" / "tasks" / "tasks_heartbeat_create.py").read_text()
    assert "id: UUID" in claim  # a task's id is a UUID on every route
    execute = (out / "tf_client" / "api" / "tasks" / "tasks_execute_create.py").read_text()
    assert "id: UUID" in execute and "task_pk" not in execute
    listing = (out / "tf_client" / "api" / "tasks" / "tasks_list.py").read_text()
    assert "claimed: bool | Unset" in listing
    # Each operation has its own docstring, not the viewset's.
    assert "Extend the claimer's lease" in claim
    assert "Tasks of the caller's projects" not in claim


def test_a_generated_client_runs_the_claim_loop(tmp_path: Path) -> None:
    out = generate(tmp_path)
    user = UserFactory(username="agent-owner")
    _, raw_key = make_key(user)
    sys.path.insert(0, str(out))
    try:
        client_module = importlib.import_module("tf_client")
        run_claim_loop(client_module, raw_key)
    finally:
        sys.path.remove(str(out))
        for name in [name for name in sys.modules if name == "tf_client" or name.startswith("tf_client.")]:
            del sys.modules[name]


def run_claim_loop(tf: Any, raw_key: str) -> None:
    from tf_client.api.tasks import (
        tasks_claim_next_create,
        tasks_complete_create,
        tasks_create,
        tasks_heartbeat_create,
        tasks_list,
    )
    from tf_client.models import (
        ClaimNextRequest,
        CompleteRequest,
        LeaseRequest,
        PaginatedTaskList,
        Problem,
        Task,
        TaskStatusEnum,
        TaskWriteRequest,
    )

    with gunicorn(workers=1) as base:
        client = tf.AuthenticatedClient(base_url=base, token=raw_key, prefix="Api-Key")
        made = [
            tasks_create.sync(client=client, body=TaskWriteRequest(name=name, agent="reviewer", priority=p))
            for name, p in (("first", 9), ("second", 1))
        ]
        assert all(isinstance(task, Task) for task in made), made
        claimed = tasks_claim_next_create.sync(client=client, body=ClaimNextRequest(agent="reviewer"))
        assert isinstance(claimed, Task) and claimed.name == "first", claimed
        assert isinstance(tasks_heartbeat_create.sync(claimed.id, client=client, body=LeaseRequest()), Task)
        done = tasks_complete_create.sync(
            claimed.id, client=client, body=CompleteRequest(result={"ok": True})
        )
        assert isinstance(done, Task) and done.status == TaskStatusEnum.COMPLETED, done
        again = tasks_complete_create.sync(claimed.id, client=client, body=CompleteRequest())
        assert isinstance(again, Problem) and again.code == "not_claimed", again
        assert again.current_status == "completed"
        page = tasks_list.sync(client=client, status=[TaskStatusEnum.PENDING, TaskStatusEnum.COMPLETED])
        assert isinstance(page, PaginatedTaskList), page
        assert page.count == 2 and {task.name for task in page.results} == {"first", "second"}
        one = tasks_list.sync(client=client, status=[TaskStatusEnum.COMPLETED])
        assert isinstance(one, PaginatedTaskList) and [task.name for task in one.results] == ["first"]
