"""Authentication: every 401 case, both header schemes, scopes, expiry, revocation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services
from accounts.models import ApiKey

pytestmark = pytest.mark.django_db


def problem_of(response):
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "instance", "request_id"} <= body.keys()
    assert body["status"] == response.status_code
    return body


@pytest.mark.parametrize("scheme", ["Api-Key", "Bearer", "bearer"])
def test_both_header_schemes_authenticate(user, key_client, scheme):
    response = key_client(user, scheme=scheme).get("/api/v1/me")
    assert response.status_code == 200
    assert response.json()["user"]["username"] == "alice"


def test_missing_credentials_is_401_with_www_authenticate():
    response = APIClient().get("/api/v1/me")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Api-Key")
    assert problem_of(response)["type"].endswith("not-authenticated")


@pytest.mark.parametrize(
    ("header", "kind"),
    [
        ("Api-Key", "malformed-key"),
        ("Api-Key nodot", "malformed-key"),
        ("Api-Key short.secret", "malformed-key"),
        ("Basic dXNlcjpwdw==", "malformed-key"),
        ("Api-Key abcdefgh.not-a-real-secret", "unknown-key"),
    ],
)
def test_bad_keys_are_401_saying_which(db, header, kind):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert "WWW-Authenticate" in response
    assert problem_of(response)["type"] == f"urn:taskforge:problem:{kind}"


def test_known_prefix_with_wrong_secret_reads_as_unknown(user, key_client):
    """A wrong secret for an existing prefix must not reveal that the prefix exists."""
    client = key_client(user)
    prefix = client.api_key.prefix
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {prefix}.wrong-secret-value")
    unknown = APIClient()
    unknown.credentials(HTTP_AUTHORIZATION="Api-Key zzzzzzzz.wrong-secret-value")
    a, b = client.get("/api/v1/me"), unknown.get("/api/v1/me")
    assert a.status_code == b.status_code == 401
    assert a.json()["type"] == b.json()["type"] == "urn:taskforge:problem:unknown-key"
    assert a.json()["detail"] == b.json()["detail"]


def test_revoked_key_is_401_revoked(user, key_client):
    client = key_client(user)
    services.api_key_revoke(api_key=client.api_key)
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert problem_of(response)["type"].endswith("revoked-key")


def test_expired_key_is_401_expired(user, key_client):
    client = key_client(user, expiry_date=timezone.now() - timedelta(seconds=1))
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert problem_of(response)["type"].endswith("expired-key")


def test_key_in_query_string_is_ignored(user, key_client):
    raw = key_client(user).raw_key
    response = APIClient().get(f"/api/v1/me?api_key={raw}&key={raw}")
    assert response.status_code == 401


def test_last_used_is_written_at_most_once_a_minute(user, key_client):
    client = key_client(user)
    assert client.get("/api/v1/me").status_code == 200
    first = ApiKey.objects.get(pk=client.api_key.pk).last_used_at
    assert first is not None
    assert client.get("/api/v1/me").status_code == 200
    assert ApiKey.objects.get(pk=client.api_key.pk).last_used_at == first


def test_inactive_owner_cannot_use_key(user, key_client):
    client = key_client(user)
    user.is_active = False
    user.save()
    assert client.get("/api/v1/me").status_code == 401


def test_session_login_uses_csrf(user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.get("/api/v1/me").status_code == 200
    response = client.post("/api/v1/projects", {"name": "x"}, format="json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
