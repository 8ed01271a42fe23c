"""The execution engine in-process: enqueue, claim order, concurrency, fencing, retries,
the task following its latest execution, and the API around it (real scripts)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Role
from core import sql
from events.models import Event
from executions import services
from executions.engine import queue
from executions.models import ErrorCode, Execution, ExecutionStatus
from tasks.models import Status, Task

pytestmark = pytest.mark.django_db


def execute(api, task, body=None, **query):
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return api.post(f"/api/v1/tasks/{task.pk}/execute{'?' + qs if qs else ''}", body or {}, format="json")


def test_execute_answers_at_once_with_location(api, make_task):
    task = make_task()
    response = execute(api, task)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["number"] == 1
    assert response["Location"].endswith(f"/api/v1/tasks/{task.pk}/executions/{body['id']}")
    task.refresh_from_db()
    assert task.status == Status.QUEUED
    assert list(Event.objects.filter(task=task).values_list("type", flat=True)) == [
        "execution.queued",
        "task.status_changed",
    ]


def test_python_script_runs_and_history_is_kept(api, make_task, inline_worker):
    task = make_task("import sys\nprint('hello from python')\nprint('oops', file=sys.stderr)", "python")
    execution_id = execute(api, task).json()["id"]
    assert inline_worker.run_pending() == 1
    detail = api.get(f"/api/v1/tasks/{task.pk}/executions/{execution_id}").json()
    assert detail["status"] == "succeeded"
    assert detail["exit_code"] == 0
    assert detail["stdout"] == "hello from python\n"
    assert detail["stderr"] == "oops\n"
    assert detail["duration_ms"] is not None
    assert detail["worker"]["name"]
    task.refresh_from_db()
    assert task.status == Status.COMPLETED
    assert task.result["exit_code"] == 0
    assert task.result["stdout_tail"] == "hello from python\n"
    types = list(Event.objects.filter(task=task).values_list("type", flat=True))
    assert types.count("execution.started") == 1
    assert "execution.finished" in types
    assert "task.completed" in types


def test_failing_script_fails_with_exit_code(api, make_task, inline_worker):
    task = make_task("echo before; exit 3")
    execute(api, task)
    inline_worker.run_pending()
    execution = Execution.objects.get(task=task)
    assert execution.status == ExecutionStatus.FAILED
    assert execution.exit_code == 3
    assert execution.error == ErrorCode.NONZERO_EXIT
    task.refresh_from_db()
    assert task.status == Status.FAILED


def test_timeout(api, make_task, inline_worker):
    task = make_task("echo start; sleep 20", timeout_seconds=1)
    execute(api, task)
    inline_worker.run_pending()
    execution = Execution.objects.get(task=task)
    assert execution.status == ExecutionStatus.TIMED_OUT
    assert execution.error == ErrorCode.TIMEOUT


def test_timeout_override_in_request(api, make_task, inline_worker):
    task = make_task("sleep 20", timeout_seconds=600)
    assert execute(api, task, {"timeout_seconds": 1}).json()["timeout_seconds"] == 1
    inline_worker.run_pending()
    assert Execution.objects.get(task=task).status == ExecutionStatus.TIMED_OUT


def test_failed_execution_is_retried_up_to_max_retries(api, make_task, inline_worker):
    task = make_task("exit 1", max_retries=2)
    execute(api, task)
    assert inline_worker.run_pending() == 3
    runs = list(
        Execution.objects.filter(task=task).order_by("number").values_list("attempt", "trigger", "status")
    )
    assert runs == [(1, "api", "failed"), (2, "retry", "failed"), (3, "retry", "failed")]
    task.refresh_from_db()
    assert task.status == Status.FAILED


def test_script_is_snapshotted_when_queued(api, make_task, inline_worker):
    task = make_task("echo first")
    execute(api, task)
    Task.objects.filter(pk=task.pk).update(script_content="echo second")
    inline_worker.run_pending()
    execution = Execution.objects.get(task=task)
    assert execution.script == "echo first"
    assert execution.chunks.get().data == "first\n"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"script_content": "", "script_type": ""}, "no-script"),
        ({"archived": True}, "archived"),
    ],
)
def test_cannot_execute(api, make_task, fields, code):
    task = make_task(**{k: v for k, v in fields.items() if k == "archived"})
    Task.objects.filter(pk=task.pk).update(**fields)
    response = execute(api, task)
    assert response.status_code == 409
    assert response.json()["type"].endswith(code)
    assert not Execution.objects.exists()


def test_blocked_by_dependencies(api, make_task):
    first = make_task(name="first")
    second = make_task(name="second")
    second.depends_on.add(first)
    response = execute(api, second)
    assert response.status_code == 409
    assert response.json()["blockers"] == [str(first.pk)]
    Task.objects.filter(pk=first.pk).update(status=Status.COMPLETED)
    assert execute(api, second).status_code == 202


def test_other_projects_task_is_404_and_viewer_403(api, other_api, make_task, key_client, team):
    task = make_task()
    assert execute(other_api, task).status_code == 404
    assert other_api.get(f"/api/v1/tasks/{task.pk}/executions").status_code == 404
    project, viewer = team(Role.VIEWER)
    shared = make_task(in_project=project)
    viewer_api = key_client(viewer)
    assert viewer_api.get(f"/api/v1/tasks/{shared.pk}/executions").status_code == 200
    assert execute(viewer_api, shared).status_code == 403
    assert not Execution.objects.exists()


def test_execute_needs_execution_write_scope(user, key_client, make_task):
    task = make_task()
    response = execute(key_client(user, ["execution:read", "task:write"]), task)
    assert response.status_code == 403
    assert response.json()["required_scope"] == "execution:write"


def test_cancel_queued_then_finished_is_409(api, make_task):
    task = make_task()
    execution_id = execute(api, task).json()["id"]
    url = f"/api/v1/tasks/{task.pk}/executions/{execution_id}"
    response = api.delete(url)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    task.refresh_from_db()
    assert task.status == Status.CANCELLED
    again = api.delete(url)
    assert again.status_code == 409
    assert again.json()["status"] == "cancelled"


def test_claim_order_priority_then_age(make_task, inline_worker):
    low = make_task(name="low", priority=1)
    high = make_task(name="high", priority=9)
    services.execution_enqueue(task=low, actor=None)
    services.execution_enqueue(task=high, actor=None)
    worker = queue.worker_register(concurrency=1, sandbox="test")
    assert queue.execution_claim_next(worker=worker).task_id == high.pk
    assert queue.execution_claim_next(worker=worker).task_id == low.pk


def test_max_concurrency_keeps_the_rest_waiting_in_order(make_task):
    task = make_task(max_concurrency=1)
    first = services.execution_enqueue(task=task, actor=None)
    second = services.execution_enqueue(task=task, actor=None)
    worker = queue.worker_register(concurrency=4, sandbox="test")
    assert queue.execution_claim_next(worker=worker).pk == first.pk
    assert queue.execution_claim_next(worker=worker) is None
    first.refresh_from_db()
    queue.execution_finish(execution=first, claim_token=first.claim_token, status="succeeded", exit_code=0)
    assert queue.execution_claim_next(worker=worker).pk == second.pk


def test_writes_are_fenced_by_the_claim_token(make_task):
    task = make_task()
    execution = services.execution_enqueue(task=task, actor=None)
    worker = queue.worker_register(concurrency=1, sandbox="test")
    claimed = queue.execution_claim_next(worker=worker)
    stranger = uuid.uuid4()
    assert not queue.execution_append_output(
        execution_id=execution.pk, claim_token=stranger, chunks=[(1, "stdout", "x")]
    )
    assert queue.execution_finish(execution=claimed, claim_token=stranger, status="succeeded") is None
    assert (
        queue.execution_finish(
            execution=claimed, claim_token=claimed.claim_token, status="succeeded", exit_code=0
        )
        is not None
    )
    # A late write from the token holder after the end changes nothing either.
    assert queue.execution_finish(execution=claimed, claim_token=claimed.claim_token, status="failed") is None
    execution.refresh_from_db()
    assert execution.status == "succeeded"
    assert not execution.chunks.exists()


def test_reaper_fails_lost_executions_and_retries(make_task):
    task = make_task(max_retries=1)
    services.execution_enqueue(task=task, actor=None)
    worker = queue.worker_register(concurrency=1, sandbox="test")
    claimed = queue.execution_claim_next(worker=worker)
    Execution.objects.filter(pk=claimed.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert queue.reap_lost_executions() == 1
    claimed.refresh_from_db()
    assert claimed.status == ExecutionStatus.FAILED
    assert claimed.error == ErrorCode.WORKER_LOST
    retry = Execution.objects.get(retry_of=claimed)
    assert retry.status == ExecutionStatus.QUEUED
    assert retry.attempt == 2
    task.refresh_from_db()
    assert task.status == Status.QUEUED
    assert queue.reap_lost_executions() == 0


def test_history_lists_newest_first_and_filters(api, make_task, inline_worker):
    task = make_task("exit 0")
    for _ in range(3):
        execute(api, task)
    inline_worker.run_pending()
    listed = api.get(f"/api/v1/tasks/{task.pk}/executions").json()
    assert [e["number"] for e in listed["results"]] == [3, 2, 1]
    assert api.get("/api/v1/executions?status=succeeded").json()["count"] == 3
    assert api.get("/api/v1/executions?status=failed,timed_out").json()["count"] == 0
    assert api.get("/api/v1/executions?status=exploded").status_code == 400
    assert api.get("/api/v1/executions?queued_after=yesterday").status_code == 400


def test_log_from_offset(api, make_task, inline_worker):
    task = make_task("echo one; echo two >&2; echo three")
    execution_id = execute(api, task).json()["id"]
    inline_worker.run_pending()
    url = f"/api/v1/tasks/{task.pk}/executions/{execution_id}/log"
    whole = api.get(url).json()
    assert whole["finished"] is True
    text = "".join(c["data"] for c in whole["chunks"] if c["stream"] == "stdout")
    assert text == "one\nthree\n"
    rest = api.get(f"{url}?offset={whole['next_offset']}").json()
    assert rest["chunks"] == []
    assert api.get(f"{url}?offset=-1").status_code == 400


def test_wait_returns_the_finished_execution(api, make_task):
    """?wait holds the request; with no worker running it answers 202 when N runs out."""
    task = make_task()
    response = execute(api, task, wait=1)
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert execute(api, task, wait=61).status_code == 400


def test_status_shows_queue_running_and_workers(api, other_api, make_task):
    task = make_task()
    services.execution_enqueue(task=task, actor=None)
    services.execution_enqueue(task=make_task(name="second"), actor=None)
    worker = queue.worker_register(concurrency=2, sandbox="rlimits")
    running = queue.execution_claim_next(worker=worker)
    body = api.get("/api/v1/status").json()
    assert body["executions"] == {"queued": 1, "running": 1}
    assert [r["id"] for r in body["running"]] == [str(running.pk)]
    assert [w["name"] for w in body["workers"]] == [worker.name]
    assert other_api.get("/api/v1/status").json()["executions"] == {"queued": 0, "running": 0}


def test_output_over_the_cap_is_truncated_and_flagged(api, make_task):
    from executions.engine.sandbox import SandboxConfig
    from executions.engine.worker import WorkerProcess

    task = make_task("head -c 3000000 /dev/zero | tr '\\0' 'x'; echo done >&2")
    execution_id = execute(api, task).json()["id"]
    WorkerProcess(sandbox=SandboxConfig.from_settings(output_cap_bytes=100_000)).run_pending()
    execution = Execution.objects.get(pk=execution_id)
    assert execution.status == ExecutionStatus.SUCCEEDED
    assert execution.stdout_truncated is True
    assert execution.stderr_truncated is False
    stored = "".join(execution.chunks.filter(stream="stdout").values_list("data", flat=True))
    assert stored == "x" * 100_000
    detail = api.get(f"/api/v1/tasks/{task.pk}/executions/{execution_id}").json()
    assert detail["stdout_truncated"] is True
    assert detail["stderr"] == "done\n"


def test_script_cannot_read_the_workers_environment(api, make_task, inline_worker, monkeypatch):
    """Neither its own environment nor /proc/<pid>/environ of the worker (or anyone) shows
    the server's variables."""
    monkeypatch.setenv("TASKFORGE_CANARY_SECRET", "canary-7f3a")
    task = make_task(
        "env | grep -c canary-7f3a || true\n"
        "for p in /proc/[0-9]*; do cat $p/environ 2>/dev/null; done"
        " | tr '\\0' '\\n' | grep -c canary-7f3a || true"
    )
    execution_id = execute(api, task).json()["id"]
    inline_worker.run_pending()
    execution = Execution.objects.get(pk=execution_id)
    stdout = "".join(execution.chunks.filter(stream="stdout").values_list("data", flat=True))
    assert stdout.split() == ["0", "0"]


def test_fork_bomb_is_contained_and_the_worker_survives(api, make_task):
    import os as _os

    from executions.engine.sandbox import SandboxConfig
    from executions.engine.worker import WorkerProcess

    if _os.geteuid() != 0:
        pytest.skip("RLIMIT_NPROC applies only when the worker drops to the unprivileged user (root)")
    task = make_task("bomb() { bomb | bomb & }; bomb; sleep 2; echo survived-fork-limit", timeout_seconds=4)
    execution_id = execute(api, task).json()["id"]
    WorkerProcess(sandbox=SandboxConfig.from_settings(max_processes=64)).run_pending()
    execution = Execution.objects.get(pk=execution_id)
    assert execution.status in (ExecutionStatus.SUCCEEDED, ExecutionStatus.TIMED_OUT, ExecutionStatus.FAILED)
    # The worker (this process) is fine and runs the next script normally.
    follow_up = make_task("echo still-here", name="after")
    execute(api, follow_up)
    WorkerProcess(sandbox=SandboxConfig.from_settings()).run_pending()
    assert Execution.objects.get(task=follow_up).chunks.get().data == "still-here\n"


def test_memory_hog_is_stopped(api, make_task, inline_worker):
    task = make_task("x = bytearray(3 * 1024**3)\nprint('allocated')", "python")
    execution_id = execute(api, task).json()["id"]
    inline_worker.run_pending()
    execution = Execution.objects.get(pk=execution_id)
    assert execution.status == ExecutionStatus.FAILED
    assert "MemoryError" in "".join(execution.chunks.filter(stream="stderr").values_list("data", flat=True))


def test_sse_log_stream_replays_and_ends(api, make_task, inline_worker):
    task = make_task("echo one; echo two")
    execution_id = execute(api, task).json()["id"]
    inline_worker.run_pending()
    response = api.get(
        f"/api/v1/tasks/{task.pk}/executions/{execution_id}/log", HTTP_ACCEPT="text/event-stream"
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    body = b"".join(response.streaming_content).decode()
    assert "event: chunk" in body
    assert '"data": "one\\ntwo\\n"' in body or ('"one\\n"' in body and '"two\\n"' in body)
    assert body.rstrip().endswith('data: {"status": "succeeded", "exit_code": 0}')


def test_admin_dashboard_and_execution_pages(client, user, make_task, inline_worker):
    user.is_staff = True
    user.is_superuser = True
    user.save()
    client.force_login(user)
    task = make_task("echo '<b>not bold</b>'; exit 2")
    services.execution_enqueue(task=task, actor=user)
    inline_worker.run_pending()
    execution = Execution.objects.get(task=task)
    page = client.get("/admin/").content.decode()
    assert "Failed in the last 24 h" in page
    assert "?status__exact=failed&amp;finished_at__gte=" in page
    failed_link = page.split("?status__exact=failed&amp;finished_at__gte=")[1].split('"')[0]
    from urllib.parse import unquote

    listing = client.get(
        "/admin/executions/execution/", {"status__exact": "failed", "finished_at__gte": unquote(failed_link)}
    )
    assert listing.status_code == 200
    assert str(task.name) in listing.content.decode()
    detail = client.get(f"/admin/executions/execution/{execution.pk}/change/").content.decode()
    assert "&lt;b&gt;not bold&lt;/b&gt;" in detail
    task_page = client.get(f"/admin/tasks/task/{task.pk}/change/").content.decode()
    assert f"/admin/executions/execution/{execution.pk}/change/" in task_page
    response = client.post("/admin/tasks/task/", {"action": "execute", "_selected_action": [task.pk]})
    assert response.status_code == 302
    assert Execution.objects.filter(task=task, trigger="admin").count() == 1


def test_cancelling_the_task_cancels_its_queued_execution(api, make_task):
    task = make_task()
    execution_id = execute(api, task).json()["id"]
    response = api.post(f"/api/v1/tasks/{task.pk}/move", {"status": "cancelled"}, format="json")
    assert response.status_code == 200, response.json()
    assert Execution.objects.get(pk=execution_id).status == ExecutionStatus.CANCELLED
    assert api.delete(f"/api/v1/tasks/{task.pk}").status_code == 204


def test_delete_is_409_while_an_execution_is_active(api, make_task):
    task = make_task()
    execute(api, task)
    response = api.delete(f"/api/v1/tasks/{task.pk}")
    assert response.status_code == 409
    assert Task.objects.filter(pk=task.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_flush_in_progress_finishes_before_the_final_one(make_task):
    """The housekeeping thread's flush and the run's final flush are serialised: output
    taken by one is stored before the other proceeds (no chunk can arrive after the finish)."""
    import threading

    from executions.engine.worker import Run, WorkerProcess

    task = make_task()
    services.execution_enqueue(task=task, actor=None)
    worker = queue.worker_register(concurrency=1, sandbox="test")
    execution = queue.execution_claim_next(worker=worker)
    run = Run(execution=execution, token=execution.claim_token)
    run.on_output("stdout", b"hello\n")
    process = WorkerProcess()
    run.flush_lock.acquire()  # a housekeeping flush "in progress"
    finished = threading.Event()

    def final_flush() -> None:
        process._flush(run)
        finished.set()

    thread = threading.Thread(target=final_flush)
    thread.start()
    assert not finished.wait(0.2)  # the final flush waits for the one in progress
    run.flush_lock.release()
    thread.join(5)
    assert finished.is_set()
    assert execution.chunks.get().data == "hello\n"


def test_admin_execution_page_follows_live_and_has_cancel_and_rerun(client, user, make_task):
    user.is_staff = True
    user.is_superuser = True
    user.save()
    client.force_login(user)
    task = make_task("echo hi")
    execution = services.execution_enqueue(task=task, actor=user)
    worker = queue.worker_register(concurrency=1, sandbox="test")
    queue.execution_claim_next(worker=worker)
    page = client.get(f"/admin/executions/execution/{execution.pk}/change/").content.decode()
    log_url = f"/api/v1/tasks/{task.pk}/executions/{execution.pk}/log"
    assert log_url.replace("-", "\\u002D") in page  # inside the polling script (escapejs)
    assert 'id="output-stdout"' in page
    assert "Re-run" in page
    response = client.post(f"/admin/executions/execution/{execution.pk}/cancel/")
    assert response.status_code == 302
    execution.refresh_from_db()
    assert execution.cancel_requested_at is not None
    assert client.get(f"/admin/executions/execution/{execution.pk}/cancel/").status_code == 405
    client.post(f"/admin/executions/execution/{execution.pk}/rerun/")
    assert Execution.objects.filter(task=task, trigger="admin").count() == 1


def test_prune_keeps_recent_active_and_latest(make_task, inline_worker):
    import io

    from django.core.management import CommandError, call_command

    task = make_task("true")
    for _ in range(3):
        services.execution_enqueue(task=task, actor=None)
    inline_worker.run_pending()
    queued = services.execution_enqueue(task=make_task(name="waiting"), actor=None)
    old = timezone.now() - timedelta(days=40)
    Execution.objects.filter(status="succeeded").update(finished_at=old)
    Execution.objects.filter(pk=queued.pk).update(queued_at=old)
    Event.objects.update(created_at=old)
    out = io.StringIO()
    call_command("prune", "--days", "30", "--dry-run", stdout=out)
    assert "Would delete 2 executions" in out.getvalue()
    assert Execution.objects.count() == 4
    call_command("prune", "--days", "30", stdout=out)
    task.refresh_from_db()
    assert set(Execution.objects.values_list("pk", flat=True)) == {task.last_execution_id, queued.pk}
    assert not Event.objects.exists()
    with pytest.raises(CommandError):
        call_command("prune", "--days", "0")


def test_admin_run_now_and_run_with_parameters(client, user, make_task, inline_worker):
    from templates_app.services import template_create, template_trigger

    user.is_staff = True
    user.is_superuser = True
    user.save()
    client.force_login(user)
    plain = make_task("echo plain")
    page = client.get(f"/admin/tasks/task/{plain.pk}/change/").content.decode()
    assert "Run now" in page
    assert "Run with parameters" not in page
    response = client.post(f"/admin/tasks/task/{plain.pk}/run/")
    execution = Execution.objects.get(task=plain)
    assert response["Location"] == f"/admin/executions/execution/{execution.pk}/change/"
    assert execution.trigger == "admin"

    template = template_create(
        project=user.personal_project,
        actor=user,
        slug="greet",
        name="Greet",
        name_pattern="greet {{ who }}",
        script_type="bash",
        script='who={{ who }}\necho "hello $who x{{ times }}"',
        parameters=[
            {"name": "who", "type": "string", "required": True},
            {"name": "times", "type": "integer", "default": 1, "min": 1, "max": 3},
        ],
    )
    task, _ = template_trigger(template=template, actor=user, parameters={"who": "ops"}, execute=False)
    form = client.get(f"/admin/tasks/task/{task.pk}/run/").content.decode()
    assert 'type="number"' in form
    bad = client.post(f"/admin/tasks/task/{task.pk}/run/", {"_run_form": "1", "who": "x", "times": "9"})
    assert bad.status_code == 200
    assert "Ensure this value is less than or equal to 3" in bad.content.decode()
    assert not Execution.objects.filter(task=task).exists()
    client.post(f"/admin/tasks/task/{task.pk}/run/", {"_run_form": "1", "who": "$(id)", "times": "2"})
    inline_worker.run_pending()
    run = Execution.objects.get(task=task)
    assert run.chunks.get().data == "hello $(id) x2\n"
    listing = client.get("/admin/tasks/task/").content.decode()
    assert f"/admin/executions/execution/{run.pk}/change/" in listing


def test_claim_batch_respects_order_and_max_concurrency(make_task):
    one = make_task(name="one", max_concurrency=1, priority=9)
    two = make_task(name="two", max_concurrency=2, priority=1)
    first_one = services.execution_enqueue(task=one, actor=None)
    services.execution_enqueue(task=one, actor=None)
    runs_two = [services.execution_enqueue(task=two, actor=None) for _ in range(3)]
    worker = queue.worker_register(concurrency=8, sandbox="test")
    claimed = queue.execution_claim_batch(worker=worker, limit=8)
    assert [e.pk for e in claimed] == [first_one.pk, runs_two[0].pk, runs_two[1].pk]
    assert queue.execution_claim_batch(worker=worker, limit=8) == []


# --- races: real concurrent connections -----------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_racing_claimers_respect_max_concurrency(make_task):
    """Twelve workers claim at once over two tasks (max_concurrency 2 and 1): exactly three
    executions start, each task's oldest first. The claiming UPDATE's conditions must see
    every claim committed while it waited for the task's lock."""
    from tests.tasks.test_claims import run_concurrently

    wide, narrow = make_task(name="wide", max_concurrency=2), make_task(name="narrow", max_concurrency=1)
    queued = {
        t.pk: [services.execution_enqueue(task=t, actor=None).pk for _ in range(6)] for t in (wide, narrow)
    }
    workers = [queue.worker_register(concurrency=1, sandbox="test") for _ in range(12)]

    def claim(index: int) -> list[uuid.UUID]:
        claimed = []
        while (execution := queue.execution_claim_next(worker=workers[index])) is not None:
            claimed.append(execution.pk)
        return claimed

    results = run_concurrently(12, claim)
    assert not [r for r in results if isinstance(r, Exception)], results
    claimed = [pk for r in results for pk in r]
    assert sorted(claimed) == sorted(queued[wide.pk][:2] + queued[narrow.pk][:1])
    running = Execution.objects.filter(status=ExecutionStatus.RUNNING)
    assert set(running.values_list("pk", flat=True)) == set(claimed)
    assert Event.objects.filter(type="execution.started").count() == 3


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's planner only")
def test_the_queue_is_read_in_index_order_even_with_stale_statistics(make_task, other_user):
    """Statistics taken while the queue was empty, then a burst of 3,000 executions over two
    projects behind a long finished history: the planner, left alone, sorts the whole queue
    for every claim (bitmap scan + sort) or walks the history by the list index."""
    team = other_user.personal_project
    tasks = [make_task(), make_task(in_project=team)]
    with connection.cursor() as cursor:
        cursor.execute('ANALYZE "executions_execution"')
    base = timezone.now()

    def run(n: int, status: str = ExecutionStatus.QUEUED) -> Execution:
        task = tasks[n % 2]
        done = status != ExecutionStatus.QUEUED
        return Execution(
            project_id=task.project_id,
            task=task,
            number=n,
            status=status,
            script_type="bash",
            script="true",
            timeout_seconds=60,
            priority=5,
            queued_at=base + timedelta(microseconds=n),
            finished_at=base if done else None,
        )

    Execution.objects.bulk_create(run(n, ExecutionStatus.SUCCEEDED) for n in range(1, 3001))
    Execution.objects.bulk_create(run(n) for n in range(3001, 6001))
    queued, running = ExecutionStatus.QUEUED, ExecutionStatus.RUNNING
    with transaction.atomic():
        queue._read_in_index_order()
        projects = queue._queued_projects()
        head = queue._project_head(team.pk, 5)
        plans = [
            "\n".join(row[0] for row in sql.rows(f"EXPLAIN {statement}", params))
            for statement, params in (
                (queue.QUEUED_PROJECTS, [queued, queued, running, queued]),
                (f"{queue.PROJECT_HEAD} FOR UPDATE SKIP LOCKED", [team.pk, running, team.pk, queued, 5]),
            )
        ]
    assert {project_id for project_id, _, _ in projects} == {tasks[0].project_id, team.pk}
    numbers = dict(Execution.objects.filter(pk__in=[row[0] for row in head]).values_list("pk", "number"))
    assert sorted(numbers.values()) == [3001, 3003, 3005, 3007, 3009]
    for plan in plans:
        assert "execution_project_queue_idx" in plan, plan
        assert "Sort" not in plan, plan
        assert "execution_list_idx" not in plan, plan


def test_the_result_keeps_the_end_of_long_output_as_the_log_has_it(api, make_task, inline_worker):
    """Output in many chunks (flushed line by line, 0.05 s apart) and longer than the tail:
    the task's result holds exactly the last RESULT_TAIL_CHARS of each stream, as stored."""
    script = (
        "import sys, time\n"
        "for i in range(40):\n"
        "    print(f'line {i:03d} ' + 'x' * 150, flush=True)\n"
        "    print(f'err {i:03d}', file=sys.stderr, flush=True)\n"
        "    time.sleep(0.05)\n"
    )
    task = make_task(script, "python")
    execution_id = execute(api, task).json()["id"]
    assert inline_worker.run_pending() == 1
    detail = api.get(f"/api/v1/tasks/{task.pk}/executions/{execution_id}").json()
    assert detail["status"] == "succeeded"
    assert len(detail["stdout"]) == 40 * 160
    task.refresh_from_db()
    assert task.result["stdout_tail"] == detail["stdout"][-queue.RESULT_TAIL_CHARS :]
    assert task.result["stderr_tail"] == detail["stderr"]
    assert len(task.result["stdout_tail"]) == queue.RESULT_TAIL_CHARS
