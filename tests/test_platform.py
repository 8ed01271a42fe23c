"""Cross-cutting behaviour: problem documents, request ids, body limits, rate limits,
health and the OpenAPI schema."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest
from django.core.management import call_command
from django.db import connection
from rest_framework.test import APIClient

from accounts.models import Project
from tests.factories import make_key
from tests.live import gunicorn

pytestmark = pytest.mark.django_db


def assert_problem(response, status):
    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"
    body = json.loads(response.content)
    assert body["status"] == status
    assert body["request_id"] == response["X-Request-ID"]
    return body


def test_request_id_is_generated_and_echoed(api):
    generated = api.get("/api/v1/me")["X-Request-ID"]
    assert len(generated) == 32
    assert api.get("/api/v1/me", HTTP_X_REQUEST_ID="ci-run-42.step:3")["X-Request-ID"] == "ci-run-42.step:3"
    unsafe = api.get("/api/v1/me", HTTP_X_REQUEST_ID="bad id\twith spaces")["X-Request-ID"]
    assert unsafe != "bad id\twith spaces" and len(unsafe) == 32


def test_unknown_api_route_is_404_problem(api):
    body = assert_problem(api.get("/api/v1/no-such-thing"), 404)
    assert body["instance"] == "/api/v1/no-such-thing"


def test_method_not_allowed_is_405_problem(api):
    assert_problem(api.put("/api/v1/me", {}, format="json"), 405)


def test_malformed_json_is_400(api):
    before = Project.objects.count()
    response = api.post("/api/v1/projects", data="{not json", content_type="application/json")
    assert assert_problem(response, 400)["type"].endswith("parse-error")
    assert Project.objects.count() == before


def test_wrong_content_type_is_415(api):
    response = api.post("/api/v1/projects", data="name=x", content_type="application/x-www-form-urlencoded")
    assert_problem(response, 415)


def test_body_over_limit_is_413(api, settings):
    settings.TASKFORGE_MAX_BODY_BYTES = 1000
    before = Project.objects.count()
    response = api.post("/api/v1/projects", {"name": "x" * 2000}, format="json")
    body = assert_problem(response, 413)
    assert body["max_bytes"] == 1000
    assert Project.objects.count() == before


def test_validation_error_lists_fields(api):
    body = assert_problem(api.post("/api/v1/projects", {"name": ""}, format="json"), 400)
    assert body["errors"] == [{"field": "name", "code": "blank", "message": "This field may not be blank."}]


@pytest.mark.urls("tests.crash_urls")
def test_500_is_a_problem_without_trace_and_logs_request_id(user, caplog):
    _api_key, raw = make_key(user)
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    with caplog.at_level(logging.ERROR):
        response = client.get("/api/v1/crash")
    body = assert_problem(response, 500)
    assert "secret internals" not in response.content.decode()
    assert "Traceback" not in response.content.decode()
    assert any(body["request_id"] in record.getMessage() for record in caplog.records)


@pytest.mark.urls("tests.crash_urls")
def test_a_lost_database_is_a_503_with_retry_after(user):
    # A PostgreSQL restart or failover: retry shortly (503), not a server bug (500).
    _api_key, raw = make_key(user)
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    response = client.get("/api/v1/crash-db")
    body = assert_problem(response, 503)
    assert body["type"].endswith(":database-unavailable")
    assert response["Retry-After"] == str(body["retry_after"])
    assert "10.0.0.5" not in response.content.decode()


def test_rate_limit_headers_and_429(user, key_client):
    client = key_client(user, rate_limit="3/15m")
    for remaining in (2, 1, 0):
        response = client.get("/api/v1/me")
        assert response.status_code == 200
        assert response["X-RateLimit-Limit"] == "3"
        assert response["X-RateLimit-Remaining"] == str(remaining)
        assert int(response["X-RateLimit-Reset"]) > 0
    response = client.get("/api/v1/me")
    body = assert_problem(response, 429)
    assert int(response["Retry-After"]) >= 1
    assert body["retry_after"] == int(response["Retry-After"])
    # Another key of the same user has its own bucket with the default limit.
    assert key_client(user).get("/api/v1/me")["X-RateLimit-Limit"] == "1000"


def test_anonymous_calls_are_limited_per_ip(db, settings):
    settings.TASKFORGE_RATE_LIMIT_ANONYMOUS = "2/15m"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Api-Key zzzzzzzz.bad-key-guessing")
    assert [client.get("/api/v1/me").status_code for _ in range(3)] == [401, 401, 429]
    # A different client address has its own bucket.
    assert APIClient(REMOTE_ADDR="10.9.8.7").get("/api/v1/me").status_code == 401


@pytest.mark.django_db(transaction=True)
def test_rate_limit_holds_across_gunicorn_processes(user):
    """Two gunicorn worker processes share one counter (the database cache or Redis)."""
    _, raw = make_key(user, rate_limit="10/15m")
    headers = {"Authorization": f"Api-Key {raw}"}
    with gunicorn(workers=2) as base, httpx.Client(base_url=base, headers=headers) as http:
        codes = [http.get("/api/v1/me").status_code for _ in range(16)]
    assert codes.count(200) == 10, codes
    assert codes.count(429) == 6, codes


def test_health_is_public_and_healthy(client):
    no_worker = client.get("/health").json()
    assert no_worker["status"] == "degraded"
    assert no_worker["components"]["workers"] == "degraded"
    from executions.engine.queue import worker_register

    worker_register(concurrency=1, sandbox="test")
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["components"]["workers"] == "healthy"
    assert body["components"]["database"] == "healthy"
    assert body["components"]["cache"] == "healthy"
    assert {"timestamp", "uptime", "version"} <= body.keys()


def test_health_503_when_database_is_unreachable(client):
    original = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "postgresql":
        connection.settings_dict["PORT"] = "1"  # nothing listens there: connection refused
        connection.settings_dict["OPTIONS"] = {k: v for k, v in original["OPTIONS"].items() if k != "pool"}
    else:
        connection.settings_dict["NAME"] = "/nonexistent-dir/taskforge.sqlite3"
    try:
        response = client.get("/health")
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(original)
    assert response.status_code == 503
    assert response.json()["components"]["database"] == "unhealthy"
    assert response.json()["status"] == "unhealthy"


def test_schema_generates_without_warnings():
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out)
    assert "/api/v1/api-keys" in out.getvalue()


@pytest.mark.parametrize("path", ["/api/schema/", "/api/docs/", "/api/redoc/"])
def test_docs_are_served_without_a_key(client, path):
    response = client.get(path)
    assert response.status_code == 200
    if path != "/api/schema/":
        assert b"cdn" not in response.content.lower() or b"sidecar" in response.content.lower()
