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


# --- issue 18, item 1: staff who are not superusers stay inside their own rights -------------------
def staff_with(*codenames: str, username: str = "staffer"):
    from django.contrib.auth.models import Permission

    from accounts.models import User

    staff = UserFactory(username=username, is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return User.objects.get(pk=staff.pk)


def test_staff_with_add_apikey_cannot_make_a_key_for_someone_else(client, operator):
    staff = staff_with("add_apikey")
    client.force_login(staff)
    assert 'name="owner"' not in client.get("/admin/accounts/apikey/add/").content.decode()
    response = client.post(
        "/admin/accounts/apikey/add/",
        {"name": "mine", "owner": operator.pk, "scopes": ["*"], "rate_limit": ""},
        follow=True,
    )
    assert response.status_code == 200
    api_key = ApiKey.objects.get(name="mine")
    assert api_key.owner == staff  # the posted owner was ignored
    assert not ApiKey.objects.filter(owner=operator).exists()
    raw = next(str(m) for m in get_messages(response.wsgi_request) if "new-api-key" in str(m))
    secret = raw.split('id="new-api-key">')[1].split("<")[0]
    me = client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Api-Key {secret}")
    assert me.status_code == 200
    assert me.json()["user"]["username"] == "staffer"


def test_staff_key_only_for_a_project_they_belong_to(client, operator):
    staff = staff_with("add_apikey")
    client.force_login(staff)
    before = ApiKey.objects.count()
    response = client.post(
        "/admin/accounts/apikey/add/",
        {"name": "theirs", "scopes": ["*"], "project": operator.personal_project.pk, "rate_limit": ""},
    )
    assert response.status_code == 200  # the form again, with the error
    assert "Select a valid choice" in response.content.decode()
    assert ApiKey.objects.count() == before
    own = client.post(
        "/admin/accounts/apikey/add/",
        {"name": "own", "scopes": ["task:read"], "project": staff.personal_project.pk, "rate_limit": ""},
    )
    assert own.status_code == 302
    assert ApiKey.objects.get(name="own").project == staff.personal_project


def test_superuser_key_for_a_user_outside_the_project_is_refused(client, operator, user):
    client.force_login(operator)
    response = client.post(
        "/admin/accounts/apikey/add/",
        {"name": "k", "owner": user.pk, "scopes": ["*"], "project": operator.personal_project.pk},
    )
    assert response.status_code == 200
    assert "is not a member of this project" in response.content.decode()
    assert not ApiKey.objects.filter(name="k").exists()


def test_staff_cannot_change_another_users_key(client, operator):
    staff = staff_with("change_apikey", "view_apikey", "delete_apikey")
    others, _ = make_key(operator)
    client.force_login(staff)
    assert client.get(f"/admin/accounts/apikey/{others.pk}/change/").status_code == 302  # not shown
    client.post("/admin/accounts/apikey/", {"action": "revoke", "_selected_action": [others.pk]})
    others.refresh_from_db()
    assert not others.revoked


def test_membership_inline_does_not_raise_ones_own_role(client):
    staff = staff_with("view_project", "change_project", "view_membership", "change_membership")
    membership = MembershipFactory(user=staff, role=Role.VIEWER)
    project = membership.project
    MembershipFactory(project=project, role=Role.ADMIN)
    client.force_login(staff)
    response = client.post(
        f"/admin/accounts/project/{project.pk}/change/",
        {
            "name": project.name,
            "description": "",
            "memberships-TOTAL_FORMS": "1",
            "memberships-INITIAL_FORMS": "1",
            "memberships-0-id": membership.pk,
            "memberships-0-project": project.pk,
            "memberships-0-user": staff.pk,
            "memberships-0-role": "admin",
        },
    )
    assert response.status_code == 403
    membership.refresh_from_db()
    assert membership.role == Role.VIEWER


def membership_post(project, rows, **extra):
    data = {
        "name": project.name,
        "description": "",
        "memberships-TOTAL_FORMS": str(len(rows)),
        "memberships-INITIAL_FORMS": str(len(rows)),
        **extra,
    }
    for i, (membership, role, delete) in enumerate(rows):
        data |= {
            f"memberships-{i}-id": membership.pk,
            f"memberships-{i}-project": project.pk,
            f"memberships-{i}-role": role,
        }
        if delete:
            data[f"memberships-{i}-DELETE"] = "on"
    return data


def test_project_admin_changes_roles_through_the_services_but_not_the_owner(client):
    from accounts.models import Membership

    staff = staff_with(
        "view_project", "change_project", "view_membership", "change_membership", "delete_membership"
    )
    owner = UserFactory(username="owner")
    project = owner.personal_project
    mine = MembershipFactory(project=project, user=staff, role=Role.ADMIN)
    theirs = MembershipFactory(project=project, role=Role.VIEWER)
    owners = Membership.objects.get(project=project, user=owner)
    client.force_login(staff)
    url = f"/admin/accounts/project/{project.pk}/change/"
    # A co-admin may not demote, nor remove, the owner of a personal project (item 13).
    for row in ((owners, "viewer", False), (owners, "admin", True)):
        response = client.post(url, membership_post(project, [row, (mine, "admin", False)]))
        assert response.status_code == 200
        assert "stay its admin" in response.content.decode()
    owners.refresh_from_db()
    assert owners.role == Role.ADMIN
    # Other members' roles change, and members are removed.
    response = client.post(
        url,
        membership_post(
            project, [(owners, "admin", False), (theirs, "member", False), (mine, "admin", False)]
        ),
    )
    assert response.status_code == 302
    theirs.refresh_from_db()
    assert theirs.role == Role.MEMBER
    response = client.post(
        url,
        membership_post(
            project, [(owners, "admin", False), (theirs, "member", True), (mine, "admin", False)]
        ),
    )
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=theirs.pk).exists()
    # Adding someone is an invitation, not an inline row, for anyone but a superuser.
    formset = client.get(url).context["inline_admin_formsets"][0].formset
    assert formset.max_num == 0


def test_staff_cannot_edit_other_users_or_grant_themselves_staff_flags(client, operator):
    from accounts.models import User

    staff = staff_with("view_user", "change_user", "add_user", "delete_user")
    client.force_login(staff)
    assert client.get(f"/admin/accounts/user/{operator.pk}/change/").status_code == 302  # not shown
    assert client.post(f"/admin/accounts/user/{operator.pk}/password/", {}).status_code in (302, 403, 404)
    assert client.get("/admin/accounts/user/add/").status_code == 403
    response = client.post(
        f"/admin/accounts/user/{staff.pk}/change/",
        {
            "username": "staffer",
            "first_name": "S",
            "last_name": "",
            "email": "s@example.com",
            "is_active": "on",
            "is_staff": "on",
            "is_superuser": "on",
        },
    )
    assert response.status_code == 302
    staff = User.objects.get(pk=staff.pk)
    assert staff.first_name == "S"
    assert not staff.is_superuser
    listing = client.get("/admin/accounts/user/").content.decode()
    assert operator.email not in listing


# --- issue 18, item 10: the admin login is throttled ---------------------------------------------------
def login(client, username, password, ip="203.0.113.7"):
    return client.post(
        "/admin/login/?next=/admin/", {"username": username, "password": password}, REMOTE_ADDR=ip
    )


def test_admin_login_refuses_even_the_right_password_after_too_many_failures(client, operator):
    for _ in range(110):
        assert login(client, "root", "wrong").status_code in (200, 429)
    response = login(client, "root", "pw")
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert int(response["Retry-After"]) > 0
    assert "_auth_user_id" not in client.session


def test_a_username_over_its_limit_does_not_lock_others_on_the_same_ip(client, operator, settings):
    settings.TASKFORGE_ADMIN_LOGIN_RATE_USERNAME = "10/15m"
    settings.TASKFORGE_ADMIN_LOGIN_RATE_IP = "30/15m"
    UserFactory(username="bob", is_staff=True, password="pw-for-tests")
    for _ in range(10):
        assert login(client, "root", "wrong").status_code == 200
    assert login(client, "ROOT", "pw").status_code == 429  # usernames are counted case-folded
    assert login(client, "root", "pw").status_code == 429
    assert login(client, "bob", "pw-for-tests").status_code == 302  # the IP is under its limit


def test_an_ip_over_its_limit_is_refused_for_every_username(client, operator, settings):
    settings.TASKFORGE_ADMIN_LOGIN_RATE_IP = "5/15m"
    for n in range(5):
        assert login(client, f"guess{n}", "wrong").status_code == 200
    assert login(client, "root", "pw").status_code == 429
    assert login(client, "root", "pw", ip="198.51.100.9").status_code == 302
