"""Request bodies without Content-Length (chunked) are read, within the body limit (issue 18,
item 16).

Django's WSGIRequest reads a missing Content-Length as an empty body, so under gunicorn a
valid chunked JSON body got 400 "name required". BodySizeLimitMiddleware now reads such a
body itself where the server ends the stream (``wsgi.input_terminated``: gunicorn), at most
limit + 1 bytes (413 beyond), and answers 411 where the server does not.
"""

from __future__ import annotations

import http.client
import io
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import RequestFactory, override_settings
from django.test.client import ClientHandler

from tasks.models import Task
from tests.factories import UserFactory, make_key
from tests.live import gunicorn

BODY = json.dumps({"name": "chunked task", "description": "sent without Content-Length"}).encode()


class CountingStream(io.BytesIO):
    """A terminated wsgi.input that remembers how much was read from it."""


def call_wsgi(raw: str, body: bytes, *, terminated: bool = True) -> tuple[int, dict[str, Any]]:
    environ = RequestFactory()._base_environ(
        PATH_INFO="/api/v1/tasks",
        REQUEST_METHOD="POST",
        CONTENT_TYPE="application/json",
        HTTP_TRANSFER_ENCODING="chunked",
        HTTP_AUTHORIZATION=f"Api-Key {raw}",
    )
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = stream = CountingStream(body)
    if terminated:
        environ["wsgi.input_terminated"] = True
    # Django's handler with the test client's handling of connections (no close at the end).
    response = ClientHandler(enforce_csrf_checks=False)(environ)
    return response.status_code, {"body": json.loads(response.content), "read": stream.tell()}


@pytest.mark.django_db
def test_a_terminated_chunked_body_is_read() -> None:
    _key, raw = make_key(UserFactory())
    code, out = call_wsgi(raw, BODY)
    assert code == 201, out
    assert out["body"]["name"] == "chunked task"
    assert Task.objects.get().description == "sent without Content-Length"


@pytest.mark.django_db
def test_a_chunked_body_over_the_limit_is_413_and_read_no_further() -> None:
    _key, raw = make_key(UserFactory())
    big = json.dumps({"name": "x" * 10_000}).encode()
    with override_settings(TASKFORGE_MAX_BODY_BYTES=1024):
        code, out = call_wsgi(raw, big)
    assert code == 413
    assert out["body"]["type"] == "urn:taskforge:problem:payload-too-large"
    assert out["body"]["max_bytes"] == 1024
    assert out["read"] == 1025  # stopped one byte past the limit
    assert not Task.objects.exists()


@pytest.mark.django_db
def test_a_chunked_body_the_server_did_not_terminate_is_411() -> None:
    _key, raw = make_key(UserFactory())
    code, out = call_wsgi(raw, BODY, terminated=False)
    assert code == 411
    assert out["body"]["type"] == "urn:taskforge:problem:length-required"
    assert out["read"] == 0
    assert not Task.objects.exists()


def chunks(body: bytes, size: int = 7) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def post_chunked(base: str, raw: str, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST ``body`` with Transfer-Encoding: chunked (http.client sends no Content-Length)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/api/v1/tasks",
            body=chunks(body),
            headers={"Authorization": f"Api-Key {raw}", "Content-Type": "application/json"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        conn.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_chunked_bodies_under_gunicorn(worker_class: str) -> None:
    _key, raw = make_key(UserFactory())
    env = {
        "GUNICORN_CMD_ARGS": f"--worker-class {worker_class} --threads 2",
        "TASKFORGE_MAX_BODY_BYTES": "4096",
    }
    with gunicorn(workers=1, extra_env=env) as base:
        status, body, _headers = post_chunked(base, raw, BODY)
        assert status == 201, body
        assert body["name"] == "chunked task"
        assert body["description"] == "sent without Content-Length"

        status, body, _headers = post_chunked(base, raw, json.dumps({"name": "y" * 8000}).encode())
        assert status == 413, body
        assert body["max_bytes"] == 4096

        # Malformed JSON sent chunked is a parse error, as it is with a Content-Length.
        status, body, _headers = post_chunked(base, raw, b'{"name": ')
        assert status == 400 and body["type"] == "urn:taskforge:problem:parse-error", body
    assert list(Task.objects.values_list("name", flat=True)) == ["chunked task"]
