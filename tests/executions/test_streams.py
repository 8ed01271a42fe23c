"""The execution log: JSON pages and the live Server-Sent Events stream (formats, resuming with
``Last-Event-ID``, the push from the worker), and the caps on long-lived requests."""

from __future__ import annotations

import json
import threading
import time

import pytest
from django.db import connection
from rest_framework.exceptions import Throttled

from core import holding
from executions import services
from executions.engine import queue
from executions.engine import waiting as engine_waiting
from executions.models import Execution, ExecutionStatus

SSE = "text/event-stream"


def log_url(task, execution_id) -> str:
    return f"/api/v1/tasks/{task.pk}/executions/{execution_id}/log"


def events(body: str) -> list[dict]:
    """Each Server-Sent Event as {"event", "id", "data"} (comments and `retry` skipped)."""
    found = []
    for block in body.split("\n\n"):
        fields: dict = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            if name in ("event", "id", "data"):
                fields[name] = value
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            found.append(fields)
    return found


def streamed(response) -> str:
    """The whole body (the test client closes the response at its end)."""
    return b"".join(response.streaming_content).decode()


def close(response) -> None:
    """What the server does when a client leaves mid-stream (without Django's end-of-request
    connection handling, which would close the test's transaction; the test client does the
    same)."""
    from django.core.signals import request_finished
    from django.db import close_old_connections

    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


@pytest.fixture
def finished(api, make_task, inline_worker):
    """A finished execution with three chunks: (task, execution id)."""
    task = make_task("echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three")
    execution_id = api.post(f"/api/v1/tasks/{task.pk}/execute", {}, format="json").json()["id"]
    inline_worker.run_pending()
    assert list(Execution.objects.get(pk=execution_id).chunks.values_list("seq", flat=True)) == [1, 2, 3]
    return task, execution_id


@pytest.fixture
def running(make_task, user):
    """An execution claimed by a (fake) worker and never finished: (task, execution)."""
    task = make_task("echo hi")
    services.execution_enqueue(task=task, actor=user)
    worker = queue.worker_register(concurrency=1, sandbox="test")
    return task, queue.execution_claim_next(worker=worker)


# --- Formats -----------------------------------------------------------------------------------
def test_format_sse_is_a_stream_and_json_is_json(api, finished):
    task, execution_id = finished
    url = log_url(task, execution_id)

    by_format = api.get(f"{url}?format=sse")
    assert by_format.streaming and by_format["Content-Type"].startswith(SSE)
    by_accept = api.get(url, HTTP_ACCEPT=SSE)
    assert by_accept.streaming and by_accept["Content-Type"].startswith(SSE)
    for response in (by_format, by_accept):
        got = events(streamed(response))
        assert [e["event"] for e in got] == ["chunk", "chunk", "chunk", "end"]
        assert got[-1]["data"] == {"status": "succeeded", "exit_code": 0}

    # ?format=json wins over Accept (no 406); an Accept nothing matches gets JSON.
    for response in (
        api.get(f"{url}?format=json", HTTP_ACCEPT=SSE),
        api.get(url, HTTP_ACCEPT="image/png"),
        api.get(url),
    ):
        assert response.status_code == 200
        assert not response.streaming
        assert response["Content-Type"] == "application/json"
        assert [c["seq"] for c in response.json()["chunks"]] == [1, 2, 3]


def test_the_execution_detail_never_answers_sse(api, finished):
    task, execution_id = finished
    url = f"/api/v1/tasks/{task.pk}/executions/{execution_id}"
    unknown = api.get(f"{url}?format=sse")
    assert unknown.status_code == 404
    assert unknown["Content-Type"] == "application/problem+json"
    accept = api.get(url, HTTP_ACCEPT=SSE)
    assert accept.status_code == 200
    assert accept["Content-Type"] == "application/json"
    assert accept.json()["stdout"] == "one\nthree\n"
    assert api.get(f"/api/v1/tasks/{task.pk}/executions?format=sse").status_code == 404


def test_errors_of_a_stream_request_are_problems(api, other_api, finished):
    task, execution_id = finished
    foreign = other_api.get(log_url(task, execution_id), HTTP_ACCEPT=SSE)
    assert foreign.status_code == 404
    assert foreign["Content-Type"] == "application/problem+json"
    assert foreign.json()["status"] == 404


def test_the_schema_describes_the_stream_and_the_caps(api):
    schema = api.get("/api/schema/?format=json").json()
    log = schema["paths"]["/api/v1/tasks/{id}/executions/{execution_id}/log"]["get"]
    ok = log["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/Log"}
    event = ok[SSE]["schema"]
    assert event["properties"]["event"]["enum"] == ["chunk", "end", "reconnect"]
    assert {"400", "429"} <= set(log["responses"])
    headers = [p["name"] for p in log["parameters"] if p["in"] == "header"]
    assert headers == ["Last-Event-ID"]
    for path, method in (
        ("/api/v1/tasks/{id}/executions/{execution_id}", "get"),
        ("/api/v1/tasks/{id}/executions", "get"),
        ("/api/v1/tasks/{id}/execute", "post"),
        ("/api/v1/executions", "get"),
    ):
        operation = schema["paths"][path][method]
        assert "format" not in [p["name"] for p in operation.get("parameters", [])], path
        assert SSE not in json.dumps(operation["responses"]), path
    execute = schema["paths"]["/api/v1/tasks/{id}/execute"]["post"]
    assert "long-lived" in execute["responses"]["429"]["description"]


# --- Resuming ----------------------------------------------------------------------------------
def test_last_event_id_resumes_after_that_chunk(api, finished):
    task, execution_id = finished
    url = log_url(task, execution_id)
    whole = events(streamed(api.get(url, HTTP_ACCEPT=SSE)))
    assert [e.get("id") for e in whole] == ["1", "2", "3", None]
    assert [e["data"]["seq"] for e in whole[:3]] == [1, 2, 3]

    resumed = events(streamed(api.get(url, HTTP_ACCEPT=SSE, HTTP_LAST_EVENT_ID="1")))
    assert [e.get("id") for e in resumed] == ["2", "3", None]
    # The header (an EventSource reconnecting to the same URL) wins over ?offset=.
    resumed = events(streamed(api.get(f"{url}?offset=0", HTTP_ACCEPT=SSE, HTTP_LAST_EVENT_ID="2")))
    assert [e.get("id") for e in resumed] == ["3", None]
    at_end = events(streamed(api.get(url, HTTP_ACCEPT=SSE, HTTP_LAST_EVENT_ID="3")))
    assert [e["event"] for e in at_end] == ["end"]
    # JSON pages honour it too, and ?offset= as before.
    assert [c["seq"] for c in api.get(url, HTTP_LAST_EVENT_ID="1").json()["chunks"]] == [2, 3]
    page = api.get(f"{url}?offset=3").json()
    assert page["chunks"] == [] and page["next_offset"] == 3


@pytest.mark.parametrize(
    ("query", "header", "field"),
    [
        ("?offset=99", None, "offset"),
        ("?offset=4", None, "offset"),
        ("", "99", "Last-Event-ID"),
        ("", "abc", "Last-Event-ID"),
        ("", "-1", "Last-Event-ID"),
        ("?offset=-1", None, "offset"),
    ],
)
def test_a_bad_or_past_the_end_offset_is_a_400_naming_it(api, finished, query, header, field):
    task, execution_id = finished
    extra = {"HTTP_LAST_EVENT_ID": header} if header is not None else {}
    for accept in ("application/json", SSE):
        response = api.get(f"{log_url(task, execution_id)}{query}", HTTP_ACCEPT=accept, **extra)
        assert response.status_code == 400
        assert response["Content-Type"] == "application/problem+json"
        problem = response.json()
        assert [e["field"] for e in problem["errors"]] == [field]
        if query == "?offset=99" or header == "99":
            assert "the last chunk is 3" in problem["detail"]


# --- Lifetime ----------------------------------------------------------------------------------
def test_a_stream_ends_after_its_lifetime_asking_to_reconnect(api, running, settings):
    settings.TASKFORGE_STREAM_MAX_SECONDS = 1
    task, execution = running
    queue.execution_append_output(
        execution_id=execution.pk, claim_token=execution.claim_token, chunks=[(1, "stdout", "hi\n")]
    )
    got = events(streamed(api.get(log_url(task, execution.pk), HTTP_ACCEPT=SSE)))
    assert [e["event"] for e in got] == ["chunk", "reconnect"]
    assert got[-1]["id"] == "1"
    assert got[-1]["data"]["last_event_id"] == 1
    assert holding.slots_held_here() == 0


# --- Caps on long-lived requests -----------------------------------------------------------------
def test_streams_per_user_are_capped_with_retry_after(api, key_client, user, running, settings):
    settings.TASKFORGE_MAX_STREAMS_PER_PRINCIPAL = 2
    task, execution = running
    url = log_url(task, execution.pk)
    held = [api.get(url, HTTP_ACCEPT=SSE) for _ in range(2)]
    assert all(r.status_code == 200 for r in held)

    refused = key_client(user).get(url, HTTP_ACCEPT=SSE)  # another key of the same user
    assert refused.status_code == 429
    assert refused["Content-Type"] == "application/problem+json"
    assert 1 <= int(refused["Retry-After"]) <= 10
    problem = refused.json()
    assert problem["concurrency_limit"] == "user"
    assert problem["type"].endswith("rate-limited")
    # ?wait counts against the same cap, and a refused one queues nothing.
    before = Execution.objects.count()
    waited = api.post(f"/api/v1/tasks/{task.pk}/execute?wait=5", {}, format="json")
    assert waited.status_code == 429 and "Retry-After" in waited
    assert Execution.objects.count() == before
    # JSON pages are not long-lived: never refused.
    assert api.get(url).status_code == 200

    close(held[0])  # the client went away: its slot is free again
    again = api.get(url, HTTP_ACCEPT=SSE)
    assert again.status_code == 200
    for response in (held[1], again):
        close(response)
    assert holding.slots_held_here() == 0


def test_another_users_streams_do_not_count(api, team, key_client, make_task, settings):
    settings.TASKFORGE_MAX_STREAMS_PER_PRINCIPAL = 1
    project, viewer = team("viewer")
    task = make_task(in_project=project)
    execution = services.execution_enqueue(task=task, actor=None)
    url = log_url(task, execution.pk)
    mine = api.get(url, HTTP_ACCEPT=SSE)
    theirs = key_client(viewer).get(url, HTTP_ACCEPT=SSE)
    assert (mine.status_code, theirs.status_code) == (200, 200)
    for response in (mine, theirs):
        close(response)


def test_the_process_cap_keeps_threads_for_ordinary_requests(api, team, key_client, make_task, settings):
    settings.TASKFORGE_MAX_STREAMS_PER_PROCESS = 1
    project, viewer = team("viewer")
    task = make_task(in_project=project)
    execution = services.execution_enqueue(task=task, actor=None)
    url = log_url(task, execution.pk)
    mine = api.get(url, HTTP_ACCEPT=SSE)
    assert mine.status_code == 200
    theirs = key_client(viewer).get(url, HTTP_ACCEPT=SSE)
    assert theirs.status_code == 429
    assert theirs.json()["concurrency_limit"] == "process"
    assert api.get(f"/api/v1/tasks/{task.pk}").status_code == 200
    close(mine)
    assert holding.slots_held_here() == 0


def test_a_finished_wait_gives_its_slot_back(api, make_task, settings):
    settings.TASKFORGE_MAX_STREAMS_PER_PRINCIPAL = 1
    task = make_task()
    for _ in range(2):  # the first ?wait's slot is free again for the second
        assert api.post(f"/api/v1/tasks/{task.pk}/execute?wait=1", {}, format="json").status_code == 202
    assert api.post(f"/api/v1/tasks/{task.pk}/execute?wait=61", {}, format="json").status_code == 400
    assert holding.slots_held_here() == 0


def test_a_slot_of_a_dead_process_expires(user, monkeypatch, settings):
    """A process killed while holding slots never gives them back: each slot's cache key
    expires on its own (the request's longest hold plus a grace)."""
    settings.TASKFORGE_MAX_STREAMS_PER_PRINCIPAL = 1
    monkeypatch.setattr(holding, "SLOT_GRACE_SECONDS", 0)
    leaked = holding.take_slot(user.pk, 1, "?wait")
    leaked.released = True  # never given back: that process is gone, with its own counter
    with holding._local_lock:
        holding._local_held -= 1
    with pytest.raises(Throttled) as refused:
        holding.take_slot(user.pk, 1, "?wait")
    assert refused.value.status_code == 429
    time.sleep(2.1)  # the database cache keeps expiries in whole seconds: up to 2 s for a 1 s slot
    holding.take_slot(user.pk, 1, "?wait").release()
    assert holding.slots_held_here() == 0


# --- Push ----------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_stored_output_wakes_a_follower_at_once(running):
    """The worker's store NOTIFYs (PostgreSQL): a follower wakes on it, not on its poll."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has no NOTIFY: followers poll")
    _, execution = running
    with engine_waiting.OutputFollower(execution.pk) as follower:
        follower.interval = 30  # no poll could explain a wake-up
        time.sleep(0.5)  # the listener thread is connected
        woke = threading.Event()

        def follow() -> None:
            follower.wait(30)
            woke.set()

        thread = threading.Thread(target=follow)
        thread.start()
        queue.execution_append_output(
            execution_id=execution.pk, claim_token=execution.claim_token, chunks=[(1, "stdout", "x\n")]
        )
        assert woke.wait(10)
        thread.join()


@pytest.mark.django_db(transaction=True)
def test_live_stream_over_http_resumes_without_duplicates(user, make_task):
    import httpx

    from tests.factories import make_key
    from tests.live import gunicorn, worker

    _, raw = make_key(user)
    task = make_task("echo first; sleep 2; echo second; sleep 1; echo third")
    headers = {"Authorization": f"Api-Key {raw}", "Accept": SSE}
    with (
        gunicorn(workers=1) as base,
        worker(),
        httpx.Client(base_url=base, headers=headers, timeout=30) as http,
    ):
        execution_id = http.post(f"/api/v1/tasks/{task.pk}/execute", json={}).json()["id"]
        url = log_url(task, execution_id)
        with http.stream("GET", url) as stream:
            assert stream.headers["content-type"].startswith(SSE)
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            # Pushed while the script still runs (it sleeps 3 s more), not at the end.
            assert Execution.objects.get(pk=execution_id).status == ExecutionStatus.RUNNING
        assert json.loads(first[6:]) == {"seq": 1, "stream": "stdout", "data": "first\n"}
        with http.stream("GET", url, headers={"Last-Event-ID": "1"}) as stream:
            rest = events("\n".join(stream.iter_lines()))
    assert [e["event"] for e in rest] == ["chunk", "chunk", "end"]
    assert [e["data"]["data"] for e in rest[:2]] == ["second\n", "third\n"]
    assert rest[-1]["data"] == {"status": "succeeded", "exit_code": 0}


def test_followers_in_one_process_share_their_reads(running):
    """N streams on one run cost one read per stored chunk in a process, not N."""
    from django.test.utils import CaptureQueriesContext

    _, execution = running

    def store(seq: int) -> None:
        queue.execution_append_output(
            execution_id=execution.pk, claim_token=execution.claim_token, chunks=[(seq, "stdout", f"{seq}\n")]
        )

    store(1)
    with engine_waiting.OutputFollower(execution.pk) as a, engine_waiting.OutputFollower(execution.pk) as b:
        with CaptureQueriesContext(connection) as first:
            got_a = a.read(0)
        with CaptureQueriesContext(connection) as second:
            got_b = b.read(0)
        assert (len(first), len(second)) == (2, 0)
        assert got_a.chunks == got_b.chunks == [(1, "stdout", "1\n")]
        assert got_a.caught_up and got_a.status == ExecutionStatus.RUNNING

        store(2)
        engine_waiting.dispatcher.wake(a.key)  # what the listener does on the worker's NOTIFY
        with CaptureQueriesContext(connection) as first:
            got_a = a.read(1)
        with CaptureQueriesContext(connection) as second:
            got_b = b.read(1)
        assert (len(first), len(second)) == (2, 0)
        assert got_a.chunks == got_b.chunks == [(2, "stdout", "2\n")]
        # A follower that comes later, from the start, gets everything kept here.
        with engine_waiting.OutputFollower(execution.pk) as late:
            assert [c[0] for c in late.read(0).chunks] == [1, 2]


@pytest.mark.django_db(transaction=True)
def test_gunicorns_thread_count_sets_the_process_cap(user, make_task, tmp_path):
    """With config/gunicorn.conf.py, a web process keeps a quarter of its threads (at least
    8, at most half) for ordinary requests, from the thread count gunicorn really uses
    (GUNICORN_CMD_ARGS overrides the file's): 4 threads -> 2 streams, and /health answers."""
    import subprocess
    import sys

    import httpx

    from tests.factories import make_key
    from tests.live import ROOT, free_port, test_database_env, wait_for

    _, raw = make_key(user)
    execution = services.execution_enqueue(task=make_task(), actor=None)  # no worker: stays queued
    port = free_port()
    env = {
        **test_database_env(),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "1",
        "GUNICORN_THREADS": "64",
        "GUNICORN_CMD_ARGS": "--threads 4 --graceful-timeout 2",
        "GUNICORN_ACCESSLOG": "",
    }
    log = (tmp_path / "gunicorn.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "config.wsgi"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    url = f"{base}{log_url(execution.task, execution.pk)}"
    headers = {"Authorization": f"Api-Key {raw}", "Accept": SSE}
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{base}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=30)
        with (
            httpx.Client(timeout=10) as one,
            httpx.Client(timeout=10) as two,
            one.stream("GET", url, headers=headers) as first,
            two.stream("GET", url, headers=headers) as second,
        ):
            assert (first.status_code, second.status_code) == (200, 200)
            third = httpx.get(url, headers=headers, timeout=10)
            assert third.status_code == 429, third.text
            assert third.json()["concurrency_limit"] == "process"
            assert httpx.get(f"{base}/health", timeout=10).status_code == 200
            tasks = httpx.get(f"{base}/api/v1/tasks", headers={"Authorization": f"Api-Key {raw}"}, timeout=10)
            assert tasks.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def test_a_refused_trigger_wait_creates_nothing(api, user, project, running, settings):
    """A template trigger with ?wait counts against the same cap; refused, it makes no task
    and no execution (the slot is taken before anything is written)."""
    from tasks.models import Task
    from templates_app import services as templates

    settings.TASKFORGE_MAX_STREAMS_PER_PRINCIPAL = 1
    templates.template_create(
        project=project,
        actor=user,
        slug="deploy",
        name="deploy",
        name_pattern="deploy",
        script_type="bash",
        script="echo hi",
        parameters=[],
    )
    task, execution = running
    stream = api.get(log_url(task, execution.pk), HTTP_ACCEPT=SSE)
    assert stream.status_code == 200
    counts = (Task.objects.count(), Execution.objects.count())
    refused = api.post("/api/v1/templates/deploy/trigger?wait=5", {}, format="json")
    assert refused.status_code == 429, refused.content
    assert refused.json()["concurrency_limit"] == "user"
    assert (Task.objects.count(), Execution.objects.count()) == counts
    # Without ?wait it is an ordinary request.
    assert api.post("/api/v1/templates/deploy/trigger", {}, format="json").status_code == 202
    close(stream)
    assert holding.slots_held_here() == 0
