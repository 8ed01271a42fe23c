"""The execution admin: cancel and re-run need the member role; a re-run never sends ***."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client

from accounts.models import Role, User
from executions.models import Execution
from templates_app import services as template_services
from tests.factories import MembershipFactory, TaskFactory, UserFactory

pytestmark = pytest.mark.django_db


def staff_client(role: str, project) -> Client:
    staff = UserFactory(username=f"staff-{role}", is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_execution", "change_execution"])
    )
    MembershipFactory(user=staff, project=project, role=role)
    client = Client()
    client.force_login(User.objects.get(pk=staff.pk))
    return client


def templated_run(user, project, secret: bool):
    template = template_services.template_create(
        project=project,
        actor=user,
        slug=f"t-{uuid.uuid4().hex[:6]}",
        name="deploy",
        name_pattern="deploy",
        script_type="bash",
        script='printf "%s" "$PARAM_TOKEN" > /dev/null; echo {{ env }}',
        parameters=[
            {"name": "env", "type": "string", "required": True},
            {"name": "token", "type": "string", "required": True, "secret": secret},
        ],
    )
    _task, execution = template_services.template_trigger(
        template=template, actor=user, parameters={"env": "prod", "token": "s3cr3t"}, execute=True
    )
    return execution


def test_rerun_refuses_when_a_secret_would_be_sent_masked(user, project):
    execution = templated_run(user, project, secret=True)
    assert execution.parameters["token"] == "***"
    client = Client()
    user.is_staff = user.is_superuser = True
    user.save()
    client.force_login(user)
    before = Execution.objects.count()
    response = client.post(f"/admin/executions/execution/{execution.pk}/rerun/")
    assert response.status_code == 302
    assert response["Location"] == f"/admin/tasks/task/{execution.task_id}/run/"  # give it again
    shown = " ".join(str(m) for m in get_messages(response.wsgi_request))
    assert "token" in shown
    assert "Give them again" in shown
    assert Execution.objects.count() == before


def test_rerun_without_secrets_queues_the_same_values(user, project):
    execution = templated_run(user, project, secret=False)
    client = Client()
    user.is_staff = user.is_superuser = True
    user.save()
    client.force_login(user)
    response = client.post(f"/admin/executions/execution/{execution.pk}/rerun/")
    assert response.status_code == 302
    rerun = Execution.objects.exclude(pk=execution.pk).get(task=execution.task)
    assert rerun.parameters == {"env": "prod", "token": "s3cr3t"}


def test_a_viewer_cannot_cancel_or_rerun(user, project):
    from executions.services import execution_enqueue

    shared = MembershipFactory(user=user, role=Role.ADMIN).project
    task = TaskFactory(created_by=user, project=shared, script_type="bash", script_content="echo hi")
    execution = execution_enqueue(task=task, actor=user)
    client = staff_client(Role.VIEWER, shared)
    assert client.post(f"/admin/executions/execution/{execution.pk}/rerun/").status_code == 403
    assert client.post(f"/admin/executions/execution/{execution.pk}/cancel/").status_code == 403
    client.post("/admin/executions/execution/", {"action": "cancel", "_selected_action": [str(execution.pk)]})
    execution.refresh_from_db()
    assert execution.status == "queued"
    assert Execution.objects.filter(task=task).count() == 1
    member = staff_client(Role.MEMBER, shared)
    member.post("/admin/executions/execution/", {"action": "cancel", "_selected_action": [str(execution.pk)]})
    execution.refresh_from_db()
    assert execution.status == "cancelled"
