"""The hook endpoint over real HTTP (gunicorn on loopback), and each delivery once under
concurrent senders on real connections."""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
from django.db import connection

from executions.models import Execution
from tasks.models import Task
from tests.live import gunicorn
from tests.triggers.conftest import PUSH, body_of, github_headers
from triggers import services
from triggers.models import Delivery

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_github_push_over_http_starts_the_template_once(make_trigger):
    trigger, secret = make_trigger("github", filters={"events": ["push"], "ref": "main"})
    body = body_of(PUSH)
    with gunicorn(workers=2) as base:
        url = f"{base}/hooks/{trigger.pk}"
        headers = github_headers(secret, body, delivery="gh-live-1")
        first = httpx.post(url, content=body, headers=headers)
        assert first.status_code == 202, first.text
        assert set(first.json()) == {"task", "execution", "delivery"}
        again = httpx.post(url, content=body, headers=headers)
        assert again.json() == first.json()
        assert again.headers["Taskforge-Duplicate-Delivery"] == "true"
        wrong = httpx.post(url, content=body, headers=github_headers("wrong", body, delivery="gh-live-2"))
        assert wrong.status_code == 401
        other = body_of({**PUSH, "ref": "refs/heads/dev"})
        ignored = httpx.post(url, content=other, headers=github_headers(secret, other))
        assert ignored.status_code == 200 and "ignored" in ignored.json()
        assert first.headers["Cache-Control"] == "no-store"
    assert Task.objects.count() == Execution.objects.count() == 1
    assert Execution.objects.get().parameters["branch"] == "refs/heads/main"


def test_concurrent_copies_of_one_delivery_run_once(make_trigger):
    """Twelve connections send the same delivery at once to two gunicorn processes: one run,
    and every answer is the first answer. (On PostgreSQL the later inserts wait on the unique
    index for the first transaction, then conflict; on SQLite the writes take turns.)"""
    trigger, secret = make_trigger("github")
    body = body_of(PUSH)
    headers = github_headers(secret, body, delivery="race-1")
    with gunicorn(workers=2) as base:
        url = f"{base}/hooks/{trigger.pk}"
        barrier = threading.Barrier(12)

        def send(_: int) -> httpx.Response:
            with httpx.Client() as client:
                client.get(f"{base}/health")  # the connection is open before the barrier
                barrier.wait()
                return client.post(url, content=body, headers=headers)

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(send, range(12)))
    assert {r.status_code for r in answers} == {202}
    assert all(r.json() == answers[0].json() for r in answers)
    assert sum(r.headers.get("Taskforge-Duplicate-Delivery") == "true" for r in answers) == 11
    assert Task.objects.count() == Execution.objects.count() == 1
    assert Delivery.objects.get().duplicates == 11


def test_concurrent_service_calls_on_separate_connections_run_once(make_trigger):
    """The same claim without HTTP: threads, each with its own database connection, take the
    same delivery; the unique (trigger, dedupe key) lets exactly one of them run the template."""
    trigger, secret = make_trigger("github")
    body = body_of(PUSH)
    headers = {k.lower(): v for k, v in github_headers(secret, body, delivery="race-2").items()}
    barrier = threading.Barrier(8)

    def take(_: int) -> services.Answer:
        try:
            barrier.wait()
            return services.delivery_receive(
                trigger=trigger, incoming=services.Incoming(body=body, headers=headers)
            )
        finally:
            connection.close()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(take, range(8)))
    assert sorted(a.duplicate for a in answers) == [False] + [True] * 7
    assert all(a.body == answers[0].body for a in answers)
    assert Task.objects.count() == 1


def _raw(base: str, request: bytes, then: bytes = b"") -> bytes:
    """Send ``request`` on a raw socket, read the answer (sending ``then`` only if asked)."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        sock.sendall(then)
        sock.shutdown(socket.SHUT_WR) if not then else None
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
    return b"".join(chunks)


def test_an_oversize_body_is_refused_before_it_is_sent(make_trigger):
    """A declared Content-Length over the trigger's limit is answered 413 while the client has
    sent only the headers: the body is never read."""
    trigger, secret = make_trigger("github", max_body_bytes=4096)
    with gunicorn(workers=1) as base:
        head = (
            f"POST /hooks/{trigger.pk} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256=00\r\nContent-Length: 1000000\r\n\r\n"
        ).encode()
        answer = _raw(base, head)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        # A chunked body (no Content-Length) is read only up to the limit.
        chunked = httpx.post(
            f"{base}/hooks/{trigger.pk}",
            content=iter([b"{" + b" " * 3000, b" " * 3000 + b"}"]),
            headers=github_headers(secret, b"{}"),
        )
        assert chunked.status_code == 413
    assert not Delivery.objects.exists() and not Task.objects.exists()


def test_huge_headers_and_missing_headers_create_nothing(make_trigger):
    trigger, secret = make_trigger("github")
    body = body_of(PUSH)
    with gunicorn(workers=1) as base:
        url = f"{base}/hooks/{trigger.pk}"
        huge = {**github_headers(secret, body), "X-Padding": "x" * 200_000}
        try:
            status = httpx.post(url, content=body, headers=huge).status_code
        except httpx.TransportError:
            status = 0  # the server closed the connection: refused as well
        assert status == 0 or 400 <= status < 500
        bare = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
        assert bare.status_code == 401
    assert not Delivery.objects.exists() and not Task.objects.exists()


def test_the_documented_github_example_works_as_written(user, project):
    """docs/triggers.md's curl + openssl example, run as written against a live server."""
    import re
    import subprocess

    from templates_app import services as template_services
    from tests.live import ROOT

    template = template_services.template_create(
        project=project,
        actor=user,
        slug="deploy",
        name="Deploy",
        name_pattern="Deploy {{ branch }}",
        script_type="bash",
        script="echo deploying {{ branch }} at {{ sha }}",
        parameters=[
            {"name": "branch", "type": "string", "required": True},
            {"name": "sha", "type": "string", "pattern": "[0-9a-f]{40}"},
        ],
    )
    trigger, secret = services.trigger_create(
        project=project,
        actor=user,
        template=template,
        slug="deploy-on-push",
        auth="github",
        filters={"events": ["push"], "ref": "main"},
        mapping={"branch": "$.ref", "sha": "$.after"},
    )
    docs = (ROOT / "docs" / "triggers.md").read_text()
    script = next(block for block in re.findall(r"```bash\n(.*?)```", docs, re.S) if "openssl dgst" in block)
    with gunicorn(workers=1) as base:
        lines = script.splitlines()
        assert lines[0].startswith("URL=")
        lines[0] = f"URL={base}/hooks/{trigger.pk}   SECRET={secret}"
        result = subprocess.run(["bash", "-c", "\n".join(lines)], capture_output=True, text=True, check=True)
    answer = json.loads(result.stdout)
    task = Task.objects.get(pk=answer["task"])
    assert task.name == "Deploy refs/heads/main"
    assert task.parameters == {"branch": "refs/heads/main", "sha": "9fceb02d0ae598e95dc970b74767f19372d61af8"}
