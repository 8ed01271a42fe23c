"""Accounts API: me, projects, members, API keys; scopes and roles."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import ApiKey, Membership, Role
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_me_lists_projects_with_role(api, user):
    body = api.get("/api/v1/me").json()
    assert body["personal_project"] == str(user.personal_project.pk)
    assert body["projects"] == [
        {**body["projects"][0], "id": str(user.personal_project.pk), "role": "admin", "personal": True}
    ]
    assert body["api_key"]["id"] == api.api_key.prefix
    assert "key" not in body["api_key"] and "hashed_key" not in str(body)


def test_every_new_user_gets_a_personal_project(db):
    user = UserFactory()
    assert user.personal_project.memberships.get().role == Role.ADMIN


def test_projects_only_show_own(api, other_user):
    ids = {p["id"] for p in api.get("/api/v1/projects").json()["results"]}
    assert str(other_user.personal_project.pk) not in ids
    assert api.get(f"/api/v1/projects/{other_user.personal_project.pk}").status_code == 404


def test_create_project_makes_caller_admin(api, user):
    response = api.post("/api/v1/projects", {"name": "  Team X "}, format="json")
    assert response.status_code == 201
    assert response.json()["role"] == "admin" and response.json()["name"] == "Team X"
    assert Membership.objects.get(project_id=response.json()["id"], user=user).role == Role.ADMIN


def test_admin_manages_members_and_last_admin_stays(api, user, team, key_client):
    project, bob = team(Role.VIEWER)
    url = f"/api/v1/projects/{project.pk}/members"
    carol = UserFactory(username="carol")
    # Adding someone is an invitation now: carol is not a member until she accepts.
    response = api.post(url, {"username": "carol", "role": "member"}, format="json")
    assert response.status_code == 202, response.json()
    assert not Membership.objects.filter(project=project, user=carol).exists()
    carol_api = key_client(carol)
    (invitation,) = carol_api.get("/api/v1/invitations").json()["results"]
    assert carol_api.post(f"/api/v1/invitations/{invitation['id']}/accept").status_code == 200
    assert Membership.objects.get(project=project, user=carol).role == Role.MEMBER
    assert api.patch(f"{url}/{bob.pk}", {"role": "admin"}, format="json").json()["role"] == "admin"
    assert api.patch(f"{url}/{bob.pk}", {"role": "owner"}, format="json").status_code == 400
    # Two admins: alice may step down; then bob is the last one and cannot be removed.
    assert api.delete(f"{url}/{user.pk}").status_code == 204
    response = api.delete(f"{url}/{bob.pk}")
    assert response.status_code == 404  # alice is no longer a member: the project is gone for her
    assert Membership.objects.filter(project=project, user=bob, role=Role.ADMIN).exists()
    assert Membership.objects.filter(project=project, user=carol).exists()


def test_last_admin_cannot_be_demoted_or_removed(api, user, team):
    project, _ = team(Role.MEMBER)
    url = f"/api/v1/projects/{project.pk}/members/{user.pk}"
    response = api.patch(url, {"role": "member"}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "last_admin"
    response = api.delete(url)
    assert response.status_code == 409
    assert response.json()["type"].endswith("last-admin")
    assert "admin first" in response.json()["detail"]
    assert Membership.objects.get(project=project, user=user).role == Role.ADMIN


@pytest.mark.parametrize("role", [Role.VIEWER, Role.MEMBER])
def test_non_admins_cannot_manage_members(key_client, team, role, user):
    project, other = team(role)
    client = key_client(other)
    url = f"/api/v1/projects/{project.pk}/members"
    assert client.get(url).status_code == 200
    response = client.post(url, {"username": other.username}, format="json")
    assert response.status_code == 403
    assert "admin" in response.json()["detail"]
    assert client.delete(f"{url}/{user.pk}").status_code == 403
    assert client.patch(f"{url}/{other.pk}", {"role": "admin"}, format="json").status_code == 403
    assert Membership.objects.get(project=project, user=user).role == Role.ADMIN
    assert Membership.objects.get(project=project, user=other).role == role


def test_api_key_create_shows_secret_once(api):
    response = api.post("/api/v1/api-keys", {"name": "ci", "scopes": ["task:read"]}, format="json")
    assert response.status_code == 201
    body = response.json()
    prefix, _, _ = body["key"].partition(".")
    assert body["id"] == prefix and body["scopes"] == ["task:read"]
    listed = api.get("/api/v1/api-keys").json()["results"]
    assert {k["id"] for k in listed} >= {prefix}
    assert all("key" not in k for k in listed)
    assert body["key"] not in str(ApiKey.objects.values_list())


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "", "scopes": ["*"]}, "name"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["task:delete"]}, "scopes[0]"),
        ({"name": "x", "scopes": ["*"], "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "x", "scopes": ["*"], "rate_limit": "lots"}, "rate_limit"),
        ({"name": "x", "scopes": ["*"], "project": "00000000-0000-0000-0000-000000000000"}, "project"),
    ],
)
def test_api_key_create_validation(api, payload, field):
    before = ApiKey.objects.count()
    response = api.post("/api/v1/api-keys", payload, format="json")
    assert response.status_code == 400, response.json()
    assert field in [e["field"] for e in response.json()["errors"]]
    assert ApiKey.objects.count() == before


def test_a_key_cannot_mint_a_wider_key(user, key_client):
    narrow = key_client(user, ["task:write"])
    response = narrow.post("/api/v1/api-keys", {"name": "x", "scopes": ["*"]}, format="json")
    assert response.status_code == 403
    assert response.json()["required_scope"] == "*"


def test_project_restricted_key_cannot_create_unrestricted(user, key_client, team):
    project, _ = team(Role.MEMBER)
    client = key_client(user, ["*"], project=project)
    response = client.post("/api/v1/api-keys", {"name": "x", "scopes": ["task:read"]}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "project"


def test_revoke_key(api, user, key_client):
    victim = key_client(user)
    assert api.delete(f"/api/v1/api-keys/{victim.api_key.prefix}").status_code == 204
    assert victim.get("/api/v1/me").status_code == 401
    assert ApiKey.objects.get(prefix=victim.api_key.prefix).revoked_at is not None


def test_cannot_revoke_someone_elses_key(api, other_api):
    assert api.delete(f"/api/v1/api-keys/{other_api.api_key.prefix}").status_code == 404
    assert other_api.get("/api/v1/me").status_code == 200


def test_project_restricted_key_sees_only_its_project(user, key_client, team):
    project, _ = team(Role.MEMBER)
    client = key_client(user, ["*"], project=project)
    ids = [p["id"] for p in client.get("/api/v1/projects").json()["results"]]
    assert ids == [str(project.pk)]
    assert client.get(f"/api/v1/projects/{user.personal_project.pk}").status_code == 404


def test_expiry_in_the_future_works(user, key_client):
    client = key_client(user, expiry_date=timezone.now() + timedelta(hours=1))
    assert client.get("/api/v1/me").status_code == 200


def test_scope_write_implies_read():
    from accounts.scopes import scopes_grant

    assert scopes_grant(["task:write"], "task:read")
    assert not scopes_grant(["task:read"], "task:write")
    assert not scopes_grant(["task:write"], "execution:read")
    assert scopes_grant(["*"], "webhook:write")
