"""API keys (issue 18, items 5 and 6): a project-restricted key manages only its project's keys;
a key made by a key is never wider than it; rates are capped; revoking cascades."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from accounts import services
from accounts.models import ApiKey, Role, rate_within
from tests.factories import MembershipFactory, make_key

pytestmark = pytest.mark.django_db

KEYS = "/api/v1/api-keys"


def create(client: Any, **body: Any) -> Any:
    return client.post(KEYS, {"name": "child", "scopes": ["task:read"], **body}, format="json")


def errors_of(response: Any) -> dict[str, str]:
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    return {e["field"]: e["message"] for e in response.json()["errors"]}


# --- item 5: a restricted key sees and manages only its project's keys ---------------------------------
def test_a_restricted_key_lists_and_revokes_only_its_projects_keys(key_client, user):
    team = MembershipFactory(user=user, role=Role.ADMIN).project
    restricted = key_client(user, ["task:read"], project=team)
    star_restricted = key_client(user, ["*"], project=team)
    unrestricted, _ = make_key(user)
    personal, _ = make_key(user, project=user.personal_project)
    listed = restricted.get(KEYS).json()["results"]
    assert {k["id"] for k in listed} == {restricted.api_key.prefix, star_restricted.api_key.prefix}
    assert str(user.personal_project.pk) not in restricted.get(KEYS).content.decode()
    for victim in (unrestricted, personal):
        assert star_restricted.delete(f"{KEYS}/{victim.prefix}").status_code == 404
        assert not ApiKey.objects.get(pk=victim.pk).revoked
    assert star_restricted.delete(f"{KEYS}/{restricted.api_key.prefix}").status_code == 204
    # An unrestricted key still manages every key of its owner.
    everything = key_client(user)
    assert {k["id"] for k in everything.get(KEYS).json()["results"]} >= {unrestricted.prefix, personal.prefix}
    assert everything.delete(f"{KEYS}/{personal.prefix}").status_code == 204


# --- item 6: never wider than the parent ------------------------------------------------------------------
def test_the_repro_a_narrow_parent_cannot_mint_an_unbounded_child(key_client, user):
    expiry = timezone.now() + timedelta(hours=1)
    parent = key_client(user, ["*"], expiry_date=expiry, rate_limit="20/15m")
    errors = errors_of(create(parent, rate_limit="999999999/1s"))
    assert "TASKFORGE_RATE_LIMIT_MAX" in errors["rate_limit"]
    errors = errors_of(create(parent, rate_limit="30/15m"))
    assert "20/15m" in errors["rate_limit"]
    errors = errors_of(create(parent, rate_limit="10/1s"))  # fewer per window, but faster
    assert "20/15m" in errors["rate_limit"]
    errors = errors_of(create(parent, expires_at=(expiry + timedelta(minutes=1)).isoformat()))
    assert expiry.isoformat() in errors["expires_at"]
    assert ApiKey.objects.filter(parent=parent.api_key).count() == 0

    # Each refusal carries a code a client can branch on.
    def code_of(response: Any) -> str:
        return response.json()["errors"][0]["code"]

    assert code_of(create(parent, rate_limit="30/15m")) == "wider_than_parent"
    assert (
        code_of(create(parent, expires_at=(expiry + timedelta(minutes=1)).isoformat())) == "wider_than_parent"
    )
    assert code_of(create(parent, rate_limit="999999999/1s")) == "above_cap"
    # Left out, the expiry and the rate are the parent's.
    response = create(parent)
    assert response.status_code == 201, response.content
    child = ApiKey.objects.get(prefix=response.json()["id"])
    assert (child.expiry_date, child.rate_limit, child.parent_id) == (expiry, "20/15m", parent.api_key.pk)
    assert response.json()["parent"] == parent.api_key.prefix
    response = create(parent, rate_limit="10/1h", expires_at=(expiry - timedelta(minutes=1)).isoformat())
    assert response.status_code == 201, response.content


def test_a_child_of_a_default_rate_parent_stays_within_the_default(key_client, user, settings):
    settings.TASKFORGE_RATE_LIMIT_AUTHENTICATED = "1000/15m"
    parent = key_client(user)
    assert "1000/15m" in errors_of(create(parent, rate_limit="2000/15m"))["rate_limit"]
    assert create(parent, rate_limit="500/15m").status_code == 201
    assert create(parent).json()["rate_limit"] == ""


def test_a_restricted_parent_makes_only_keys_of_its_project(key_client, user):
    team = MembershipFactory(user=user, role=Role.ADMIN).project
    parent = key_client(user, ["*"], project=team)
    for project in (None, str(user.personal_project.pk)):
        response = create(parent, project=project)
        assert response.status_code == 400
        assert {e["field"] for e in response.json()["errors"]} == {"project"}
    response = create(parent, project=str(team.pk))
    assert response.status_code == 201 and response.json()["project"] == str(team.pk)


def test_scopes_stay_within_the_parents(user):
    parent, _ = make_key(user, ["task:write", "execution:read"])
    with pytest.raises(ValidationError) as caught:
        services.api_key_create(owner=user, name="x", scopes=["*"], creator_key=parent)
    assert "scopes" in caught.value.message_dict
    with pytest.raises(ValidationError):
        services.api_key_create(owner=user, name="x", scopes=["webhook:read"], creator_key=parent)
    child, _ = services.api_key_create(owner=user, name="x", scopes=["task:read"], creator_key=parent)
    assert child.scopes == ["task:read"] and child.parent == parent


# --- the operator's cap ------------------------------------------------------------------------------------
def test_the_rate_cap_holds_in_the_api_and_the_model(key_client, user, settings):
    settings.TASKFORGE_RATE_LIMIT_MAX = "100/1m"
    session = key_client(user)  # a key without a rate of its own: the default applies
    errors = errors_of(
        session.post(KEYS, {"name": "x", "scopes": ["*"], "rate_limit": "101/1m"}, format="json")
    )
    assert "100/1m" in errors["rate_limit"] and "TASKFORGE_RATE_LIMIT_MAX" in errors["rate_limit"]
    before = ApiKey.objects.count()
    with pytest.raises(ValidationError) as caught:
        services.api_key_create(owner=user, name="x", scopes=["*"], rate_limit="2/1s")
    assert "100/1m" in caught.value.message_dict["rate_limit"][0]
    assert ApiKey.objects.count() == before
    # The admin's form validates through the model's clean().
    key = ApiKey(owner=user, name="admin-made", scopes=["*"], rate_limit="1000/1h")
    with pytest.raises(ValidationError) as caught:
        key.full_clean(exclude=["hashed_key", "prefix", "id"])
    assert "rate_limit" in caught.value.message_dict
    key.rate_limit = "100/1h"
    key.full_clean(exclude=["hashed_key", "prefix", "id"])


@pytest.mark.parametrize(
    ("rate", "limit", "within"),
    [
        ("20/15m", "20/15m", True),
        ("10/15m", "20/15m", True),
        ("21/15m", "20/15m", False),
        ("10/1s", "20/15m", False),  # a smaller window lets it through faster
        ("20/1h", "20/15m", True),
        ("80/1h", "20/15m", False),  # the same pace, but a bigger burst
        ("999999999/1s", "20000/15m", False),
        ("1/d", "1/s", True),
    ],
)
def test_rate_within(rate, limit, within):
    assert rate_within(rate, limit) is within


# --- revoking cascades -------------------------------------------------------------------------------------
def test_revoking_a_key_revokes_the_keys_it_made(key_client, user):
    from rest_framework.test import APIClient

    parent = key_client(user)
    raw_child = create(parent, scopes=["*"]).json()["key"]
    child = APIClient()
    child.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw_child}")
    raw_grandchild = create(child).json()["key"]
    sibling, _ = make_key(user)
    assert parent.delete(f"{KEYS}/{parent.api_key.prefix}").status_code == 204
    for raw in (raw_child, raw_grandchild):
        assert ApiKey.objects.get(prefix=raw.partition(".")[0]).revoked
    assert child.get("/api/v1/me").status_code == 401
    assert not ApiKey.objects.get(pk=sibling.pk).revoked


def test_revoking_can_leave_the_children(key_client, user):
    parent = key_client(user)
    child_prefix = create(parent).json()["id"]
    other = key_client(user)
    assert other.delete(f"{KEYS}/{parent.api_key.prefix}?cascade=false").status_code == 204
    assert not ApiKey.objects.get(prefix=child_prefix).revoked
    assert other.delete(f"{KEYS}/{child_prefix}?cascade=maybe").status_code == 400
    assert not ApiKey.objects.get(prefix=child_prefix).revoked
