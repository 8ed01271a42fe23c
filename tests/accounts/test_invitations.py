"""Membership by invitation (issue 18, items 2 and 13): nobody joins a project without
accepting; the inviter learns nothing about accounts; members can leave; emails stay private;
another member cannot steer a key's claim-next or slug lookups into their project."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from accounts import services
from accounts.models import Invitation, InvitationStatus, Membership, Project, Role, User
from core.errors import Conflict
from tasks.models import Task
from tests.factories import TaskFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def bob(db: Any) -> User:
    return UserFactory(username="bob", email="bob@example.com")


@pytest.fixture
def carol(db: Any) -> User:
    return UserFactory(username="carol", email="carol@example.com")


@pytest.fixture
def bobs_project(bob: User) -> Project:
    return services.project_create(name="Bob's team", actor=bob)


def invite(client: Any, project: Project, username: str, role: str = "member") -> Any:
    return client.post(
        f"/api/v1/projects/{project.pk}/invitations", {"username": username, "role": role}, format="json"
    )


def received(client: Any) -> list[dict[str, Any]]:
    response = client.get("/api/v1/invitations")
    assert response.status_code == 200, response.content
    return response.json()["results"]


def accept(client: Any) -> Any:
    (invitation,) = received(client)
    return client.post(f"/api/v1/invitations/{invitation['id']}/accept")


# --- the repro: B invites C ---------------------------------------------------------------------------
def test_an_invitee_is_not_a_member_until_accepting(key_client, bob, carol, bobs_project):
    bob_api, carol_api = key_client(bob), key_client(carol)
    response = invite(bob_api, bobs_project, "carol", "viewer")
    assert response.status_code == 202
    assert "carol@example.com" not in response.content.decode()
    assert str(carol.pk) not in response.json().values()
    assert not Membership.objects.filter(project=bobs_project, user=carol).exists()
    projects = {p["id"] for p in carol_api.get("/api/v1/projects").json()["results"]}
    assert str(bobs_project.pk) not in projects
    assert carol_api.get(f"/api/v1/projects/{bobs_project.pk}").status_code == 404
    assert carol_api.get(f"/api/v1/projects/{bobs_project.pk}/members").status_code == 404

    (invitation,) = received(carol_api)
    assert invitation["project"] == {"id": str(bobs_project.pk), "name": "Bob's team"}
    assert invitation["role"] == "viewer" and invitation["invited_by"]["username"] == "bob"
    assert "bob@example.com" not in str(invitation)

    response = carol_api.post(f"/api/v1/invitations/{invitation['id']}/accept")
    assert response.status_code == 200, response.content
    assert response.json()["id"] == str(bobs_project.pk) and response.json()["role"] == "viewer"
    assert Membership.objects.get(project=bobs_project, user=carol).role == Role.VIEWER
    assert received(carol_api) == []
    assert carol_api.post(f"/api/v1/invitations/{invitation['id']}/accept").status_code == 404


def test_the_old_members_route_invites_too(key_client, bob, carol, bobs_project):
    bob_api = key_client(bob)
    response = bob_api.post(
        f"/api/v1/projects/{bobs_project.pk}/members", {"username": "carol"}, format="json"
    )
    assert response.status_code == 202
    assert response.json() == invite(bob_api, bobs_project, "carol").json()
    assert not Membership.objects.filter(project=bobs_project, user=carol).exists()
    assert Invitation.objects.filter(project=bobs_project, invitee=carol, status="pending").count() == 1


def test_unknown_known_and_member_usernames_answer_alike(key_client, bob, carol, bobs_project, user):
    bob_api = key_client(bob)
    services.membership_add(project=bobs_project, user=user, role=Role.MEMBER)
    answers = {}
    for name in ("carol", "nobody-has-this-name", "alice", "bob"):
        response = invite(bob_api, bobs_project, name)
        body = response.json()
        answers[name] = (response.status_code, response["Content-Type"], body["detail"], tuple(sorted(body)))
        assert body["username"] == name
    assert len(set(answers.values())) == 1, answers
    # The pending list does not tell real accounts from unknown names either.
    pending = bob_api.get(f"/api/v1/projects/{bobs_project.pk}/invitations").json()["results"]
    assert sorted(i["username"] for i in pending) == ["carol", "nobody-has-this-name"]
    assert {tuple(sorted(i)) for i in pending} == {
        ("created_at", "expires_at", "id", "invited_by", "role", "username")
    }
    # Nobody can accept the unknown name's invitation; members were not invited again.
    assert Invitation.objects.get(username="nobody-has-this-name").invitee is None
    assert not Invitation.objects.filter(username__in=["alice", "bob"]).exists()


def test_invite_validation_changes_nothing(key_client, bob, bobs_project):
    bob_api = key_client(bob)
    for body in ({"username": ""}, {"username": "x", "role": "owner"}, {"username": "x" * 151}, {}):
        response = bob_api.post(f"/api/v1/projects/{bobs_project.pk}/invitations", body, format="json")
        assert response.status_code == 400, body
        assert response["Content-Type"] == "application/problem+json"
    assert not Invitation.objects.exists()


def test_inviting_again_renews_the_pending_invitation(key_client, bob, carol, bobs_project):
    bob_api = key_client(bob)
    invite(bob_api, bobs_project, "carol", "viewer")
    Invitation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    invite(bob_api, bobs_project, "carol", "admin")
    invitation = Invitation.objects.get()
    assert invitation.role == Role.ADMIN and not invitation.expired


def test_decline(key_client, bob, carol, bobs_project):
    bob_api, carol_api = key_client(bob), key_client(carol)
    invite(bob_api, bobs_project, "carol")
    (invitation,) = received(carol_api)
    assert carol_api.post(f"/api/v1/invitations/{invitation['id']}/decline").status_code == 204
    assert not Membership.objects.filter(project=bobs_project, user=carol).exists()
    assert received(carol_api) == []
    assert bob_api.get(f"/api/v1/projects/{bobs_project.pk}/invitations").json()["results"] == []
    assert Invitation.objects.get().status == InvitationStatus.DECLINED


def test_an_expired_invitation_cannot_be_accepted(key_client, bob, carol, bobs_project, settings):
    settings.TASKFORGE_INVITATION_TTL = 60
    invite(key_client(bob), bobs_project, "carol")
    invitation = Invitation.objects.get()
    assert timedelta(seconds=59) < invitation.expires_at - invitation.created_at <= timedelta(seconds=60)
    Invitation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    carol_api = key_client(carol)
    assert received(carol_api) == []
    response = carol_api.post(f"/api/v1/invitations/{invitation.pk}/accept")
    assert response.status_code == 409
    assert response.json()["type"].endswith("invitation-expired")
    assert not Membership.objects.filter(project=bobs_project, user=carol).exists()


def test_only_the_invitee_can_answer(key_client, bob, carol, bobs_project, user):
    invite(key_client(bob), bobs_project, "carol")
    invitation = Invitation.objects.get()
    alice_api = key_client(user)
    assert received(alice_api) == []
    for verb in ("accept", "decline"):
        assert alice_api.post(f"/api/v1/invitations/{invitation.pk}/{verb}").status_code == 404
        assert key_client(bob).post(f"/api/v1/invitations/{invitation.pk}/{verb}").status_code == 404
    with pytest.raises(Invitation.DoesNotExist):
        services.invitation_accept(invitation=invitation, actor=user)
    assert Invitation.objects.get().status == InvitationStatus.PENDING


def test_a_project_restricted_key_cannot_accept(key_client, bob, carol, bobs_project):
    invite(key_client(bob), bobs_project, "carol")
    restricted = key_client(carol, project=carol.personal_project)
    assert received(restricted) == []
    invitation = Invitation.objects.get()
    assert restricted.post(f"/api/v1/invitations/{invitation.pk}/accept").status_code == 404
    assert (
        key_client(carol, ["task:write"]).post(f"/api/v1/invitations/{invitation.pk}/accept").status_code
        == 403
    )


def test_admins_list_and_revoke_non_admins_cannot(key_client, bob, carol, bobs_project, user):
    bob_api = key_client(bob)
    services.membership_add(project=bobs_project, user=user, role=Role.MEMBER)
    invite(bob_api, bobs_project, "carol")
    invitation = Invitation.objects.get()
    url = f"/api/v1/projects/{bobs_project.pk}/invitations"
    alice_api = key_client(user)
    assert alice_api.get(url).status_code == 403
    assert invite(alice_api, bobs_project, "mallory").status_code == 403
    assert alice_api.delete(f"{url}/{invitation.pk}").status_code == 403
    stranger = key_client(UserFactory())
    assert stranger.get(url).status_code == 404
    assert stranger.delete(f"{url}/{invitation.pk}").status_code == 404
    assert bob_api.delete(f"{url}/{invitation.pk}").status_code == 204
    assert Invitation.objects.get().status == InvitationStatus.REVOKED
    assert bob_api.delete(f"{url}/{invitation.pk}").status_code == 404  # no longer pending
    assert received(key_client(carol)) == []
    assert key_client(carol).post(f"/api/v1/invitations/{invitation.pk}/accept").status_code == 404


# --- leaving ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", [Role.VIEWER, Role.MEMBER, Role.ADMIN])
def test_any_member_can_leave(key_client, bob, carol, bobs_project, role):
    services.membership_add(project=bobs_project, user=carol, role=role)
    response = key_client(carol).delete(f"/api/v1/projects/{bobs_project.pk}/members/{carol.pk}")
    assert response.status_code == 204
    assert not Membership.objects.filter(project=bobs_project, user=carol).exists()


def test_the_last_admin_of_a_team_hands_over_before_leaving(key_client, bob, carol, bobs_project):
    services.membership_add(project=bobs_project, user=carol, role=Role.MEMBER)
    url = f"/api/v1/projects/{bobs_project.pk}/members"
    bob_api = key_client(bob)
    response = bob_api.delete(f"{url}/{bob.pk}")
    assert response.status_code == 409 and response.json()["type"].endswith("last-admin")
    bob_api.patch(f"{url}/{carol.pk}", {"role": "admin"}, format="json")
    assert bob_api.delete(f"{url}/{bob.pk}").status_code == 204


def test_the_owner_cannot_leave_their_personal_project(key_client, bob, carol):
    personal = carol.personal_project
    services.membership_add(project=personal, user=bob, role=Role.ADMIN)  # a co-admin: not the last
    response = key_client(carol).delete(f"/api/v1/projects/{personal.pk}/members/{carol.pk}")
    assert response.status_code == 409 and response.json()["type"].endswith("personal-owner")


# --- item 13: a co-admin cannot demote or remove the personal project's owner -------------------------
def test_a_co_admin_cannot_demote_or_remove_the_personal_owner(key_client, bob, carol):
    personal = carol.personal_project
    services.membership_add(project=personal, user=bob, role=Role.ADMIN)
    url = f"/api/v1/projects/{personal.pk}/members/{carol.pk}"
    bob_api = key_client(bob)
    for role in ("viewer", "member"):
        response = bob_api.patch(url, {"role": role}, format="json")
        assert response.status_code == 400
        assert response.json()["errors"][0] == {
            "field": "role",
            "code": "personal_owner",
            "message": "The owner of a personal project stays its admin.",
        }
    response = bob_api.delete(url)
    assert response.status_code == 409 and response.json()["type"].endswith("personal-owner")
    assert Membership.objects.get(project=personal, user=carol).role == Role.ADMIN


def test_services_refuse_demoting_or_removing_the_personal_owner(carol, bob):
    personal = carol.personal_project
    services.membership_add(project=personal, user=bob, role=Role.ADMIN)
    owner = Membership.objects.get(project=personal, user=carol)
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        services.membership_set_role(membership=owner, role=Role.VIEWER)
    with pytest.raises(Conflict):
        services.membership_remove(membership=owner)
    assert Membership.objects.get(project=personal, user=carol).role == Role.ADMIN


# --- emails -------------------------------------------------------------------------------------------
def test_members_see_no_other_users_email(key_client, bob, carol, bobs_project, user):
    services.membership_add(project=bobs_project, user=carol, role=Role.VIEWER)
    for client, me in ((key_client(carol), carol), (key_client(bob), bob)):  # viewer and admin alike
        members = client.get(f"/api/v1/projects/{bobs_project.pk}/members").json()["results"]
        emails = {m["user"]["username"]: m["user"]["email"] for m in members}
        assert emails == {
            "bob": "bob@example.com" if me == bob else None,
            "carol": "carol@example.com" if me == carol else None,
        }
    assert key_client(carol).get("/api/v1/me").json()["user"]["email"] == "carol@example.com"
    boss = UserFactory(username="boss", is_superuser=True)
    members = key_client(boss).get(f"/api/v1/projects/{bobs_project.pk}/members").json()["results"]
    assert {m["user"]["email"] for m in members} == {"bob@example.com", "carol@example.com"}


# --- the key's implicit projects: claim-next and slug lookups ------------------------------------------
def test_a_task_pinned_to_my_agent_in_someone_elses_project_is_not_mine(key_client, bob, carol, bobs_project):
    carol_agent = key_client(carol, ["task:write"])
    pinned = TaskFactory(created_by=bob, project=bobs_project, agent="carol-bot", priority=10)
    assert (
        carol_agent.post("/api/v1/tasks/claim-next", {"agent": "carol-bot"}, format="json").status_code == 204
    )
    invite(key_client(bob), bobs_project, "carol")
    assert (
        carol_agent.post("/api/v1/tasks/claim-next", {"agent": "carol-bot"}, format="json").status_code == 204
    )
    assert accept(key_client(carol)).status_code == 200
    # Carol joined after her agent's key was made: it still does not pick from Bob's project ...
    assert (
        carol_agent.post("/api/v1/tasks/claim-next", {"agent": "carol-bot"}, format="json").status_code == 204
    )
    # ... until she names it.
    response = carol_agent.post(
        "/api/v1/tasks/claim-next", {"agent": "carol-bot", "project": str(bobs_project.pk)}, format="json"
    )
    assert response.status_code == 200 and response.json()["id"] == str(pinned.pk)
    # A key made after joining does consider the project.
    Task.objects.filter(pk=pinned.pk).update(claimed_by=None, lease_expires_at=None, status="pending")
    later = key_client(carol, ["task:write"])
    assert later.post("/api/v1/tasks/claim-next", {"agent": "carol-bot"}, format="json").json()["id"] == str(
        pinned.pk
    )


def nightly(project: Project, actor: User) -> Any:
    from templates_app.services import template_create

    return template_create(
        project=project,
        actor=actor,
        slug="nightly",
        name="Nightly",
        name_pattern="nightly",
        script_type="bash",
        script="echo nightly",
    )


def test_someone_elses_slug_does_not_break_my_trigger(key_client, user, bob, bobs_project):
    alice_ci = key_client(user, ["template:read", "task:write"])
    mine = nightly(user.personal_project, user)
    nightly(bobs_project, bob)

    def trigger(client: Any, query: str = "") -> Any:
        return client.post(f"/api/v1/templates/nightly/trigger{query}", {"execute": False}, format="json")

    response = trigger(alice_ci)
    assert response.status_code == 201, response.content
    assert response.json()["task"]["project"] == str(user.personal_project.pk)
    invite(key_client(bob), bobs_project, "alice", "admin")
    assert trigger(alice_ci).status_code == 201  # invited: nothing changes
    assert accept(key_client(user)).status_code == 200
    # Alice joined after her CI key was made: its slug lookups still mean her own template.
    response = trigger(alice_ci)
    assert response.status_code == 201 and response.json()["task"]["project"] == str(mine.project_id)
    response = trigger(alice_ci, f"?project={bobs_project.pk}")
    assert response.status_code == 201 and response.json()["task"]["project"] == str(bobs_project.pk)
    # A key made after joining sees both, and says so.
    response = trigger(key_client(user, ["template:read", "task:write"]))
    assert response.status_code == 409 and response.json()["type"].endswith("ambiguous-slug")


# --- the admin ------------------------------------------------------------------------------------------
def test_the_admin_sends_and_revokes_invitations_within_the_staff_members_projects(
    client, bob, carol, bobs_project
):
    from django.contrib.auth.models import Permission

    staff = UserFactory(username="staffer", is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_invitation", "view_invitation", "change_invitation"])
    )
    services.membership_add(project=bobs_project, user=staff, role=Role.MEMBER)
    services.invitation_create(project=carol.personal_project, username="bob", role="member", actor=carol)
    client.force_login(staff)
    add = "/admin/accounts/invitation/add/"
    # A member (not admin) of Bob's team cannot invite to it, nor see its invitations.
    response = client.post(add, {"project": str(bobs_project.pk), "username": "carol", "role": "admin"})
    assert response.status_code == 200  # the form refuses the project: not one of the choices
    assert not Invitation.objects.filter(project=bobs_project).exists()
    assert "carol (personal)" not in client.get("/admin/accounts/invitation/").content.decode()
    Membership.objects.filter(project=bobs_project, user=staff).update(role=Role.ADMIN)
    response = client.post(add, {"project": str(bobs_project.pk), "username": "carol", "role": "viewer"})
    assert response.status_code == 302, response.content.decode()[:2000]
    invitation = Invitation.objects.get(project=bobs_project)
    assert (invitation.invitee, invitation.role, invitation.invited_by) == (carol, Role.VIEWER, staff)
    assert not Membership.objects.filter(project=bobs_project, user=carol).exists()
    listing = client.get("/admin/accounts/invitation/").content.decode()
    assert "Bob&#x27;s team" in listing and "carol (personal)" not in listing
    response = client.post(
        "/admin/accounts/invitation/",
        {"action": "revoke", "_selected_action": [str(i.pk) for i in Invitation.objects.all()]},
    )
    assert response.status_code == 302
    assert Invitation.objects.get(project=bobs_project).status == InvitationStatus.REVOKED
    assert Invitation.objects.get(project=carol.personal_project).status == InvitationStatus.PENDING
