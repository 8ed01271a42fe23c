"""The operators' admin for tasks: pages render, actions go through the services, projects hold."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.models import Role, User
from events.models import Event, EventType
from tasks.models import Status, Task
from tests.factories import MembershipFactory, TaskFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> User:
    return User.objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def admin_client(operator: User) -> Client:
    client = Client()
    client.force_login(operator)
    return client


def test_pages_render(admin_client, user):
    task = TaskFactory(created_by=user, status=Status.FAILED, tags=["x"])
    Event.objects.create(project=task.project, task=task, type=EventType.TASK_CREATED)
    listing = admin_client.get("/admin/tasks/task/")
    assert listing.status_code == 200
    assert "failed</span>" in listing.content.decode()
    assert f"{user.personal_project.name} (1)" in listing.content.decode()
    assert admin_client.get(f"/admin/tasks/task/{task.pk}/change/").status_code == 200
    assert admin_client.get("/admin/tasks/task/add/").status_code == 200
    assert admin_client.get("/admin/tasks/task/?status__exact=failed&archived__exact=0").status_code == 200
    assert admin_client.get("/admin/events/event/").status_code == 200


def test_add_and_change_go_through_the_services(admin_client, operator):
    project = operator.personal_project
    form = {
        "project": project.pk,
        "name": "from admin",
        "description": "",
        "script_type": "",
        "timeout_seconds": 60,
        "script_content": "",
        "priority": 5,
        "agent": "",
        "tags": "[]",
        "metadata": "{}",
        "max_retries": 0,
        "max_concurrency": 1,
        "notes-TOTAL_FORMS": 0,
        "notes-INITIAL_FORMS": 0,
        "events-TOTAL_FORMS": 0,
        "events-INITIAL_FORMS": 0,
        "executions-TOTAL_FORMS": 0,
        "executions-INITIAL_FORMS": 0,
    }
    response = admin_client.post("/admin/tasks/task/add/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    task = Task.objects.get(name="from admin")
    assert task.created_by == operator
    assert Event.objects.filter(task=task, type=EventType.TASK_CREATED, actor=operator).exists()
    form.pop("project")
    form.update({"priority": 8, "notes-TOTAL_FORMS": 1, "notes-0-body": "a note"})
    response = admin_client.post(f"/admin/tasks/task/{task.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    task.refresh_from_db()
    assert task.priority == 8
    assert task.notes.get().author == operator
    types = set(Event.objects.filter(task=task).values_list("type", flat=True))
    assert {"task.updated", "task.note_added"} <= types


def test_actions_use_the_state_machine(admin_client, operator, user):
    pending = TaskFactory(created_by=user)
    done = TaskFactory(created_by=user, status=Status.COMPLETED)
    ids = [str(pending.pk), str(done.pk)]
    admin_client.post("/admin/tasks/task/", {"action": "cancel", "_selected_action": ids})
    pending.refresh_from_db()
    done.refresh_from_db()
    assert pending.status == Status.CANCELLED
    assert done.status == Status.COMPLETED  # refused: completed -> cancelled is not allowed
    admin_client.post("/admin/tasks/task/", {"action": "back_to_pending", "_selected_action": ids})
    assert set(Task.objects.values_list("status", flat=True)) == {Status.PENDING}
    admin_client.post("/admin/tasks/task/", {"action": "archive", "_selected_action": ids})
    assert set(Task.objects.values_list("archived", flat=True)) == {True}
    assert Event.objects.filter(actor=operator, type=EventType.TASK_STATUS_CHANGED).count() == 3


def test_staff_see_only_their_projects(user, other_user):
    staff = UserFactory(username="staff", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_task", "change_task"]))
    membership = MembershipFactory(user=staff, role=Role.MEMBER)
    TaskFactory(created_by=user, project=membership.project, name="ours")
    TaskFactory(created_by=other_user, name="theirs")
    client = Client()
    client.force_login(staff)
    page = client.get("/admin/tasks/task/").content.decode()
    assert "ours" in page
    assert "theirs" not in page
    hidden = Task.objects.get(name="theirs")
    assert client.get(f"/admin/tasks/task/{hidden.pk}/change/").status_code == 302  # "doesn't exist"


def staff_with(role: str, *codenames: str) -> tuple[User, Client, object]:
    staff = UserFactory(username=f"staff-{role}", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    project = MembershipFactory(user=staff, role=role).project
    client = Client()
    client.force_login(User.objects.get(pk=staff.pk))
    return staff, client, project


def test_a_viewer_with_change_task_cannot_execute_move_or_note(user):
    """Issue 18 item 1: with change_task and only the viewer role, the execute action ran."""
    from executions.models import Execution
    from tasks.models import Note

    _staff, client, project = staff_with(Role.VIEWER, "change_task", "view_task", "add_note", "delete_task")
    task = TaskFactory(created_by=user, project=project, script_type="bash", script_content="echo hi")
    for action in ("execute", "cancel", "archive", "delete_selected"):
        response = client.post(
            "/admin/tasks/task/", {"action": action, "_selected_action": [str(task.pk)], "post": "yes"}
        )
        assert response.status_code in (302, 403)
    assert client.post(f"/admin/tasks/task/{task.pk}/run/").status_code == 403
    assert not Execution.objects.filter(task=task).exists()
    task.refresh_from_db()
    assert (task.status, task.archived) == (Status.PENDING, False)
    response = client.post(
        f"/admin/tasks/task/{task.pk}/change/",
        {"notes-TOTAL_FORMS": 1, "notes-INITIAL_FORMS": 0, "notes-0-body": "sneaky"},
    )
    assert response.status_code == 403
    assert not Note.objects.filter(task=task).exists()


def test_a_member_executes_and_adds_a_task_only_in_projects_where_they_are_member(user):
    from executions.models import Execution

    staff, client, project = staff_with(Role.MEMBER, "change_task", "view_task", "add_task")
    task = TaskFactory(created_by=user, project=project, script_type="bash", script_content="echo hi")
    client.post("/admin/tasks/task/", {"action": "execute", "_selected_action": [str(task.pk)]})
    assert Execution.objects.filter(task=task).count() == 1
    watched = MembershipFactory(user=staff, role=Role.VIEWER).project
    form = client.get("/admin/tasks/task/add/").context["adminform"].form
    offered = set(form.fields["project"].queryset.values_list("pk", flat=True))
    assert project.pk in offered
    assert watched.pk not in offered
