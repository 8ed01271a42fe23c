"""Output is stored whatever bytes a script writes (issue 19, item 1), on both databases.

NUL and invalid UTF-8 become U+FFFD in the chunks (the live log), the final output, the task's
result and the error detail; and a run whose outcome the database refuses to store ends
failed/worker_error at once, never worker_lost and a second run. Run this file on PostgreSQL
(DATABASE_URL set) and on SQLite: the store failures are real (a trigger that refuses a write).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from executions.engine.sandbox import output_text
from executions.models import ErrorCode, Execution, ExecutionStatus
from tasks.models import Status

R = "\ufffd"


def execute(api: Any, task: Any) -> str:
    response = api.post(f"/api/v1/tasks/{task.pk}/execute", {}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def live_log(api: Any, task: Any, execution_id: str, stream: str) -> str:
    body = api.get(f"/api/v1/tasks/{task.pk}/executions/{execution_id}/log").json()
    return "".join(c["data"] for c in body["chunks"] if c["stream"] == stream)


def test_output_text_replaces_nul_invalid_utf8_and_surrogates() -> None:
    assert output_text(b"before\0after\n") == f"before{R}after\n"
    assert output_text(b"\xff\xfe") == R + R
    assert output_text("caf\udce9\0") == f"caf{R}{R}"
    assert output_text("plain ascii") == "plain ascii"
    assert output_text("déjà vu ✓") == "déjà vu ✓"


@pytest.mark.parametrize(
    ("script", "script_type"),
    [
        ("printf 'before\\0after\\n'; printf '\\xff\\xfe'; printf 'err\\0or\\xff\\n' >&2", "bash"),
        (
            "import sys\nsys.stdout.buffer.write(b'before\\0after\\n\\xff\\xfe')\n"
            "sys.stderr.buffer.write(b'err\\0or\\xff\\n')",
            "python",
        ),
    ],
)
def test_nul_and_invalid_utf8_are_stored_as_replacement_characters(
    api: Any, make_task: Any, inline_worker: Any, script: str, script_type: str
) -> None:
    task = make_task(script, script_type, max_retries=2)
    execution_id = execute(api, task)
    assert inline_worker.run_pending() == 1
    detail = api.get(f"/api/v1/tasks/{task.pk}/executions/{execution_id}").json()
    assert detail["status"] == "succeeded", detail
    assert detail["stdout"] == f"before{R}after\n{R}{R}"
    assert detail["stderr"] == f"err{R}or{R}\n"
    assert live_log(api, task, execution_id, "stdout") == f"before{R}after\n{R}{R}"
    assert live_log(api, task, execution_id, "stderr") == f"err{R}or{R}\n"
    task.refresh_from_db()
    assert task.status == Status.COMPLETED
    assert task.result["stdout_tail"] == f"before{R}after\n{R}{R}"
    assert Execution.objects.filter(task=task).count() == 1


def test_cat_proc_self_environ_completes(api: Any, make_task: Any, inline_worker: Any) -> None:
    task = make_task("cat /proc/self/environ")
    execution_id = execute(api, task)
    inline_worker.run_pending()
    detail = api.get(f"/api/v1/tasks/{task.pk}/executions/{execution_id}").json()
    assert detail["status"] == "succeeded"
    assert f"{R}TASKFORGE_EXECUTION_ID={execution_id}{R}" in R + detail["stdout"]


def refuse_output_containing(word: str) -> None:
    """A real store failure: a trigger that makes every INSERT of output with ``word`` fail."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$"
                f" BEGIN IF NEW.data LIKE '%{word}%' THEN RAISE EXCEPTION 'refused by test trigger';"
                " END IF; RETURN NEW; END $$"
            )
            cursor.execute(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON executions_outputchunk"
                " FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON executions_outputchunk"
                f" WHEN NEW.data LIKE '%{word}%' BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END"
            )


def test_a_refused_store_is_a_worker_error_not_a_lost_worker_and_never_retried(
    api: Any, make_task: Any, inline_worker: Any
) -> None:
    refuse_output_containing("poison")
    task = make_task("echo poison; echo secret-run >&2; exit 0", max_retries=3)
    execution_id = execute(api, task)
    assert inline_worker.run_pending() == 1
    execution = Execution.objects.get(pk=execution_id)
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error == ErrorCode.WORKER_ERROR
    assert "could not store" in execution.error_detail
    assert "refused by test trigger" in execution.error_detail
    assert execution.finished_at is not None and execution.lease_expires_at is None
    assert execution.secret_parameters == {}
    # Not retried, and nothing left for the reaper: a second pass finds no work.
    assert Execution.objects.filter(task=task).count() == 1
    assert inline_worker.run_pending() == 0
    task.refresh_from_db()
    assert task.status == Status.FAILED
    assert task.result["error"] == "worker_error"
    events = list(task.events.values_list("type", flat=True)) if hasattr(task, "events") else []
    assert not events or "execution.finished" in events
    # The worker carries on: the next run is stored normally.
    other = make_task("echo fine", name="next")
    other_id = execute(api, other)
    assert inline_worker.run_pending() == 1
    assert Execution.objects.get(pk=other_id).status == ExecutionStatus.SUCCEEDED
