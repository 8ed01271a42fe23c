"""The accounts admin: pages render, keys are shown once and revoked, projects are scoped."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages

from accounts.models import ApiKey, Role
from tests.factories import MembershipFactory, UserFactory, make_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(db):
    return user_objects().create_superuser("root", "root@example.com", "pw")


def user_objects():
    from accounts.models import User

    return User.objects


@pytest.mark.parametrize(
    "url",
    [
        "/admin/",
        "/admin/accounts/user/",
        "/admin/accounts/project/",
        "/admin/accounts/apikey/",
        "/admin/accounts/apikey/add/",
    ],
)
def test_admin_pages_render(client, operator, url):
    client.force_login(operator)
    assert client.get(url).status_code == 200


def test_admin_creates_key_and_shows_it_once(client, operator):
    client.force_login(operator)
    response = client.post(
        "/admin/accounts/apikey/add/",
        {"name": "from-admin", "owner": operator.pk, "scopes": ["task:read", "task:write"], "rate_limit": ""},
        follow=True,
    )
    assert response.status_code == 200
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    api_key = ApiKey.objects.get(name="from-admin")
    assert any(api_key.prefix in m and "not be able to see it again" in m for m in shown), shown
    assert api_key.scopes == ["task:read", "task:write"]


def test_admin_revoke_action(client, operator):
    api_key, _ = make_key(operator)
    client.force_login(operator)
    client.post("/admin/accounts/apikey/", {"action": "revoke", "_selected_action": [api_key.pk]})
    api_key.refresh_from_db()
    assert api_key.revoked
    assert api_key.revoked_at is not None


def test_admin_user_created_in_admin_gets_personal_project(client, operator):
    client.force_login(operator)
    client.post(
        "/admin/accounts/user/add/",
        {
            "username": "newbie",
            "password1": "a-Strong-pw-123",
            "password2": "a-Strong-pw-123",
            "usable_password": "true",
        },
    )
    from accounts.models import User

    assert User.objects.get(username="newbie").personal_project is not None


def test_staff_sees_only_own_projects(client, db):
    staff = UserFactory(username="staffer", is_staff=True)
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_project", "change_project"]))
    stranger = UserFactory(username="stranger")
    shared = MembershipFactory(user=staff, role=Role.VIEWER).project
    client.force_login(staff)
    page = client.get("/admin/accounts/project/").content.decode()
    assert shared.name in page
    assert str(stranger.personal_project) not in page
    assert client.get(f"/admin/accounts/project/{stranger.personal_project.pk}/change/").status_code in (
        302,
        404,
    )
