"""Production headers and Django's own 400 (issue 18, items 12 and 17).

- HSTS on HTTPS requests (TLS at the proxy: ``X-Forwarded-Proto: https`` trusted with
  ``TASKFORGE_BEHIND_TLS_PROXY``), never on plain HTTP;
- a Content-Security-Policy on every response, with a nonce on the docs pages' inline code;
- ``Cache-Control: no-store`` on API responses, above all those that show a secret once;
- a bad ``Host`` answers a plain problem that does not echo it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
from django.conf import settings
from django.test import Client, override_settings

from tests.live import ROOT
from tests.webhooks.conftest import PUBLIC_URL

pytestmark = pytest.mark.django_db

PROXY = ("HTTP_X_FORWARDED_PROTO", "https")
YEAR = 365 * 24 * 3600


def directives(response: Any, header: str = "Content-Security-Policy") -> dict[str, list[str]]:
    assert header in response, f"no {header} on {response.request['PATH_INFO']}"
    parsed = {}
    for part in response[header].split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


# --- HSTS -------------------------------------------------------------------------------------
def test_hsts_on_https_through_the_tls_proxy() -> None:
    with override_settings(SECURE_PROXY_SSL_HEADER=PROXY):
        secure = Client().get("/health", HTTP_X_FORWARDED_PROTO="https")
        plain = Client().get("/health")
    assert secure["Strict-Transport-Security"] == f"max-age={YEAR}"
    assert "Strict-Transport-Security" not in plain


def test_hsts_is_not_sent_over_plain_http_or_for_a_forged_proto_without_the_proxy_setting() -> None:
    assert settings.SECURE_PROXY_SSL_HEADER is None  # TASKFORGE_BEHIND_TLS_PROXY unset here
    response = Client().get("/health", HTTP_X_FORWARDED_PROTO="https")
    assert "Strict-Transport-Security" not in response


def test_hsts_options() -> None:
    with override_settings(
        SECURE_PROXY_SSL_HEADER=PROXY, SECURE_HSTS_INCLUDE_SUBDOMAINS=True, SECURE_HSTS_PRELOAD=True
    ):
        response = Client().get("/health", HTTP_X_FORWARDED_PROTO="https")
    assert response["Strict-Transport-Security"] == f"max-age={YEAR}; includeSubDomains; preload"


def settings_in_subprocess(env: dict[str, str], expr: str) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "TASKFORGE_TESTING": "1", "DJANGO_SECRET_KEY": "x" * 50}
    return subprocess.run(
        [sys.executable, "-c", f"import config.settings as s; print({expr})"],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_header_settings_come_from_the_environment() -> None:
    expr = (
        "(s.SECURE_HSTS_SECONDS, s.SECURE_HSTS_INCLUDE_SUBDOMAINS, bool(s.SECURE_CSP), "
        "bool(s.SECURE_CSP_REPORT_ONLY))"
    )
    default = settings_in_subprocess({}, expr)
    assert default.stdout.strip() == f"({YEAR}, False, True, False)", default.stderr
    debug = settings_in_subprocess({"DEBUG": "1"}, expr)
    assert debug.stdout.strip() == "(0, False, True, False)", debug.stderr
    tuned = settings_in_subprocess(
        {"SECURE_HSTS_SECONDS": "600", "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1", "TASKFORGE_CSP": "report-only"},
        expr,
    )
    assert tuned.stdout.strip() == "(600, True, False, True)", tuned.stderr
    off = settings_in_subprocess({"TASKFORGE_CSP": "off"}, expr)
    assert off.stdout.strip() == f"({YEAR}, False, False, False)", off.stderr
    bad = settings_in_subprocess({"TASKFORGE_CSP": "strict"}, expr)
    assert bad.returncode != 0 and "TASKFORGE_CSP must be" in bad.stderr


# --- Content-Security-Policy -------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/admin/login/", "/api/v1/tasks", "/health", "/api/schema/", "/nowhere"])
def test_every_response_carries_the_policy(path: str) -> None:
    policy = directives(Client().get(path))
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"][0] == "'self'"
    assert "'unsafe-inline'" not in policy["script-src"] and "'unsafe-eval'" not in policy["script-src"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]


def test_the_admin_has_no_inline_script() -> None:
    response = Client().get("/admin/login/")
    assert response.status_code == 200
    html = response.content.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", html)


def test_swagger_ui_inline_code_carries_the_nonce() -> None:
    response = Client().get("/api/docs/")
    assert response.status_code == 200
    policy = directives(response)
    nonce = next(v for v in policy["script-src"] if v.startswith("'nonce-"))[len("'nonce-") : -1]
    assert f"'nonce-{nonce}'" in policy["style-src"]
    html = response.content.decode()
    inline = re.findall(r"<(script|style)(?![^>]*\bsrc=)([^>]*)>", html)
    assert inline, "the page has its inline start-up code"
    for _tag, attrs in inline:
        assert f'nonce="{nonce}"' in attrs
    # Everything else comes from this origin (drf-spectacular-sidecar), no CDN.
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith("/static/"), url
    second = directives(Client().get("/api/docs/"))
    assert second["script-src"] != policy["script-src"]  # a fresh nonce per response


def test_redoc_relaxes_style_only() -> None:
    response = Client().get("/api/redoc/")
    assert response.status_code == 200
    policy = directives(response)
    assert policy["style-src"] == ["'self'", "'unsafe-inline'"]
    assert policy["worker-src"] == ["'self'", "blob:"]
    assert policy["script-src"] == ["'self'"]
    html = response.content.decode()
    assert "<script>" not in html and "fonts.googleapis" not in html
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith("/static/"), url


# --- Cache-Control ----------------------------------------------------------------------------
def test_responses_with_a_secret_are_never_stored(api: Any, settings: Any) -> None:
    key = api.post("/api/v1/api-keys", {"name": "ci", "scopes": ["task:read"]}, format="json")
    assert key.status_code == 201 and key.json()["key"]
    assert key["Cache-Control"] == "no-store"
    hook = api.post("/api/v1/webhooks", {"url": PUBLIC_URL}, format="json")
    assert hook.status_code == 201 and hook.json()["secret"]
    assert hook["Cache-Control"] == "no-store"
    rotated = api.post(f"/api/v1/webhooks/{hook.json()['id']}/rotate-secret")
    assert rotated.status_code == 200 and rotated.json()["secret"]
    assert rotated["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/api/v1/tasks", "/api/v1/me", "/api/v1/api-keys", "/api/v1/nowhere"])
def test_every_api_response_is_no_store(api: Any, path: str) -> None:
    assert api.get(path)["Cache-Control"] == "no-store"


def test_errors_are_no_store_too() -> None:
    assert Client().get("/api/v1/tasks")["Cache-Control"] == "no-store"  # 401


# --- Bad Host ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/v1/tasks", "/admin/", "/health", "/"])
def test_a_bad_host_is_a_plain_problem(path: str) -> None:
    assert not settings.DEBUG
    response = Client().get(path, HTTP_HOST="evil.com")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["detail"] == "Bad Request: invalid Host header."
    assert body["type"] == "urn:taskforge:problem:invalid-host"
    assert "evil" not in response.content.decode()
    assert "ALLOWED_HOSTS" not in response.content.decode()


def test_other_suspicious_requests_do_not_echo_either() -> None:
    with override_settings(DATA_UPLOAD_MAX_NUMBER_FIELDS=2):
        response = Client().get("/admin/login/?a=evil1&b=evil2&c=evil3")
        response = Client().post("/admin/login/", {"a": "evil1", "b": "evil2", "c": "evil3"})
    assert response.status_code == 400
    assert response.json()["detail"] == "Bad Request: too many form fields."
    assert "DATA_UPLOAD" not in response.content.decode()
