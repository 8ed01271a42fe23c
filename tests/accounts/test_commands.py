"""Management commands of accounts: createapikey, revokeapikey, bootstrap_operator."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from accounts.models import ApiKey, User

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def test_createapikey_prints_a_working_key_once(user):
    raw, note = run("createapikey", "--user", "alice", "--scopes", "task:read,task:write", "--name", "ci")
    assert "not shown again" in note
    api_key = ApiKey.objects.get(prefix=raw.partition(".")[0])
    assert api_key.scopes == ["task:read", "task:write"]
    assert raw not in str(ApiKey.objects.values_list())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    assert client.get("/api/v1/me").status_code == 200


def test_createapikey_with_project_and_expiry(user):
    project = user.personal_project
    raw, _ = run(
        "createapikey", "--user", "alice", "--project", str(project.pk), "--expires", "2099-01-01T00:00:00Z"
    )
    api_key = ApiKey.objects.get(prefix=raw.partition(".")[0])
    assert api_key.project == project
    assert api_key.expiry_date.year == 2099


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "nobody"], "No user"),
        (["--user", "alice", "--scopes", "task:destroy"], "unknown scope"),
        (["--user", "alice", "--project", "not-a-uuid"], "No project"),
        (["--user", "alice", "--expires", "tomorrow"], "ISO 8601"),
    ],
)
def test_createapikey_refuses_bad_input(user, args, message):
    with pytest.raises(CommandError, match=message):
        run("createapikey", *args)
    assert not ApiKey.objects.exists()


def test_revokeapikey(user, key_client):
    client = key_client(user)
    out, _ = run("revokeapikey", client.api_key.prefix)
    assert "Revoked" in out
    assert client.get("/api/v1/me").status_code == 401
    with pytest.raises(CommandError):
        run("revokeapikey", "zzzzzzzz")


def test_bootstrap_operator_runs_once(db):
    out, _ = run("bootstrap_operator", "--username", "op")
    raw = out.split("API key (all scopes):")[1].split()[0]
    operator = User.objects.get(username="op")
    assert operator.is_superuser
    assert ApiKey.objects.get(prefix=raw.partition(".")[0]).owner == operator
    again, _ = run("bootstrap_operator", "--username", "op")
    assert "exists already" in again
    assert ApiKey.objects.count() == 1
