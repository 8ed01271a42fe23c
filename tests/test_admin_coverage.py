"""Walks the admin registry the way ``test_api_coverage`` walks the URL conf: no admin page,
action or inline lets staff step around the project roles.

For every registered ``ModelAdmin``, every action it offers and every inline it shows, a staff
user holding every model permission but only the viewer role in the object's project is
refused (nothing in the database changes), a staff user outside the project does not see the
object, and the role the API needs does get through. A new admin, action or inline without an
entry in ``ADMINS`` fails ``test_every_admin_action_and_inline_is_covered``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core import serializers
from django.forms import ModelChoiceField
from django.test import Client, RequestFactory

from accounts.admin_access import ProjectRoleAdmin, ProjectRoleInline
from accounts.models import Project, Role, User
from tests.factories import MembershipFactory, ProjectFactory, TaskFactory, UserFactory

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Entry:
    """``kind``: ``project`` (lives in a project: roles apply), ``owner`` (API keys: the
    owner's only), ``self`` (users: one's own account), ``superuser`` (superusers only)."""

    kind: str
    actions: frozenset[str] = frozenset()
    inlines: frozenset[str] = frozenset()
    view_role: str = Role.VIEWER
    write_role: str | None = None
    action_roles: dict[str, str] = field(default_factory=dict)


ADMINS: dict[str, Entry] = {
    "auth.group": Entry("superuser", frozenset({"delete_selected"})),
    "accounts.user": Entry("self", frozenset({"delete_selected"})),
    "accounts.project": Entry(
        "project", frozenset({"delete_selected"}), frozenset({"MembershipInline"}), write_role=Role.ADMIN
    ),
    "accounts.apikey": Entry("owner", frozenset({"delete_selected", "revoke"})),
    "accounts.invitation": Entry(
        "project", frozenset({"revoke"}), view_role=Role.ADMIN, write_role=Role.ADMIN
    ),
    "tasks.task": Entry(
        "project",
        frozenset({"delete_selected", "execute", "archive", "cancel", "back_to_pending"}),
        frozenset({"ExecutionInline", "NoteInline", "EventInline"}),
        write_role=Role.MEMBER,
    ),
    "events.event": Entry("project", write_role=Role.MEMBER),
    "agents.agent": Entry("project", frozenset({"pause", "drain", "resume"}), write_role=Role.MEMBER),
    "templates_app.template": Entry(
        "project",
        frozenset({"delete_selected"}),
        frozenset({"TemplateParameterInline"}),
        write_role=Role.ADMIN,
        action_roles={"trigger": Role.MEMBER},
    ),
    "executions.execution": Entry("project", frozenset({"cancel"}), write_role=Role.MEMBER),
    "executions.worker": Entry("superuser", frozenset({"delete_selected"})),
    "webhooks.subscription": Entry(
        "project",
        frozenset({"delete_selected", "send_test", "rotate_secret"}),
        frozenset({"DeliveryInline"}),
        view_role=Role.ADMIN,
        write_role=Role.ADMIN,
    ),
    "vault.secret": Entry("project", frozenset({"delete_selected"}), write_role=Role.ADMIN),
    "schedules.schedule": Entry(
        "project",
        frozenset({"delete_selected", "pause", "resume", "run_now"}),
        frozenset({"ScheduleFireInline"}),
        write_role=Role.ADMIN,
        action_roles={"run_now": Role.MEMBER},
    ),
    "webhooks.delivery": Entry(
        "project",
        frozenset({"replay"}),
        frozenset({"DeliveryAttemptInline"}),
        view_role=Role.ADMIN,
        write_role=Role.ADMIN,
    ),
    "triggers.trigger": Entry(
        "project",
        frozenset({"delete_selected", "rotate_secret"}),
        frozenset({"DeliveryInline"}),
        write_role=Role.ADMIN,
    ),
    "triggers.delivery": Entry("project", frozenset({"replay"}), write_role=Role.ADMIN),
    "workflows.workflowtemplate": Entry(
        "project",
        frozenset({"delete_selected"}),
        write_role=Role.ADMIN,
        action_roles={"run": Role.MEMBER},
    ),
    "workflows.workflowrun": Entry(
        "project", frozenset({"pause", "resume", "cancel", "retry"}), write_role=Role.MEMBER
    ),
}
PROJECT_ADMINS = sorted(label for label, entry in ADMINS.items() if entry.kind == "project")
SNAPSHOT_APPS = (
    "auth",
    "accounts",
    "agents",
    "tasks",
    "templates_app",
    "executions",
    "webhooks",
    "vault",
    "triggers",
    "schedules",
    "workflows",
)


# --- objects in a project, made by its admin ---------------------------------------------------
def _task(project: Project, owner: User) -> Any:
    return TaskFactory(project=project, created_by=owner, script_type="bash", script_content="echo hi")


def _event(project: Project, owner: User) -> Any:
    from events.models import Event, EventType

    task = _task(project, owner)
    return Event.objects.create(project=project, task=task, type=EventType.TASK_CREATED)


def _template(project: Project, owner: User) -> Any:
    from templates_app.services import template_create

    return template_create(
        project=project,
        actor=owner,
        slug=f"t-{uuid.uuid4().hex[:8]}",
        name="T",
        name_pattern="t",
        script_type="bash",
        script="echo hi",
    )


def _execution(project: Project, owner: User) -> Any:
    from executions.services import execution_enqueue

    return execution_enqueue(task=_task(project, owner), actor=owner)


def _subscription(project: Project, owner: User) -> Any:
    from webhooks.services import subscription_create

    subscription, _secret = subscription_create(
        project=project, actor=owner, url="https://93.184.216.34/hook"
    )
    return subscription


def _delivery(project: Project, owner: User) -> Any:
    from webhooks.services import send_test

    return send_test(subscription=_subscription(project, owner), actor=owner)


def _secret(project: Project, owner: User) -> Any:
    from vault.services import secret_create

    return secret_create(project=project, actor=owner, name=f"S_{uuid.uuid4().hex[:8]}", value="value-1234")


def _trigger(project: Project, owner: User) -> Any:
    from triggers.services import trigger_create

    trigger, _secret = trigger_create(
        project=project, actor=owner, template=_template(project, owner), slug="t", auth="token"
    )
    return trigger


def _trigger_delivery(project: Project, owner: User) -> Any:
    from triggers.services import Incoming, delivery_receive

    return delivery_receive(
        trigger=_trigger(project, owner), incoming=Incoming(body=b"{}", headers={})
    ).delivery


def _invitation(project: Project, owner: User) -> Any:
    from accounts.services import invitation_create

    invitee = UserFactory(username=f"invitee-{uuid.uuid4().hex[:8]}")
    return invitation_create(project=project, username=invitee.username, role=Role.MEMBER, actor=owner)


def _agent(project: Project, owner: User) -> Any:
    from agents.services import agent_register

    agent, _key = agent_register(project=project, actor=owner, name=f"agent-{uuid.uuid4().hex[:8]}")
    return agent


def _schedule(project: Project, owner: User) -> Any:
    from schedules.services import schedule_create

    return schedule_create(
        project=project, actor=owner, name="s", task=_task(project, owner), interval_seconds=60
    )


def _workflow_template(project: Project, owner: User) -> Any:
    from workflows.services import workflow_template_create

    template = _template(project, owner)
    return workflow_template_create(
        project=project,
        actor=owner,
        slug=f"w-{uuid.uuid4().hex[:8]}",
        name="W",
        nodes=[
            {"key": "a", "template": template.slug, "parameters": {}},
            {"key": "b", "template": template.slug, "parameters": {}},
        ],
        edges=[{"from": "a", "to": "b"}],
    )


def _workflow_run(project: Project, owner: User) -> Any:
    from workflows.services import workflow_run_create

    return workflow_run_create(workflow=_workflow_template(project, owner), actor=owner)  # running


BUILDERS: dict[str, Callable[[Project, User], Any]] = {
    "accounts.project": lambda project, owner: project,
    "accounts.invitation": _invitation,
    "tasks.task": _task,
    "events.event": _event,
    "agents.agent": _agent,
    "templates_app.template": _template,
    "executions.execution": _execution,
    "webhooks.subscription": _subscription,
    "webhooks.delivery": _delivery,
    "vault.secret": _secret,
    "triggers.trigger": _trigger,
    "triggers.delivery": _trigger_delivery,
    "schedules.schedule": _schedule,
    "workflows.workflowtemplate": _workflow_template,
    "workflows.workflowrun": _workflow_run,
}


# --- helpers -------------------------------------------------------------------------------------
def registry() -> dict[str, admin.ModelAdmin]:
    return {model._meta.label_lower: model_admin for model, model_admin in admin.site._registry.items()}


def staff(role: str | None, project: Project | None, username: str) -> User:
    """A staff user with every model permission there is, and ``role`` in ``project``."""
    user = UserFactory(username=username, is_staff=True)
    user.user_permissions.add(*Permission.objects.all())
    if role is not None:
        MembershipFactory(project=project, user=user, role=role)
    return User.objects.get(pk=user.pk)  # fresh: no cached permissions


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def request_for(user: User) -> Any:
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def snapshot() -> str:
    """Every row of the apps the admin writes, serialized: equal before and after means
    nothing was written."""
    rows = []
    for label in SNAPSHOT_APPS:
        for model in apps.get_app_config(label).get_models():
            rows.append(serializers.serialize("json", model._default_manager.order_by("pk")))
    return "\n".join(rows)


def url(model_admin: admin.ModelAdmin, view: str, *args: Any) -> str:
    from django.urls import reverse

    opts = model_admin.model._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_{view}", args=args)


def post_action(client: Client, model_admin: admin.ModelAdmin, name: str, pk: Any) -> Any:
    data = {"action": name, "_selected_action": [str(pk)], "index": 0, "post": "yes"}
    return client.post(url(model_admin, "changelist"), data)


@pytest.fixture
def world(db: Any) -> dict[str, Any]:
    owner = UserFactory(username="owner")
    project = ProjectFactory(name="shared project")
    MembershipFactory(project=project, user=owner, role=Role.ADMIN)
    return {"owner": owner, "project": project}


# --- the table matches the registry ---------------------------------------------------------------
def test_every_admin_action_and_inline_is_covered():
    root = User.objects.create_superuser("root", "root@example.com", "pw")
    found = registry()
    assert set(found) == set(ADMINS), "a ModelAdmin was added or removed: give it an entry in ADMINS"
    for label, model_admin in found.items():
        entry = ADMINS[label]
        actions = set(model_admin.get_actions(request_for(root)))
        assert actions == entry.actions, f"{label}: actions {sorted(actions)} vs ADMINS"
        inlines = {inline.__name__ for inline in model_admin.inlines}
        assert inlines == entry.inlines, f"{label}: inlines {sorted(inlines)} vs ADMINS"
        if entry.kind != "project":
            assert not isinstance(model_admin, ProjectRoleAdmin), label
            continue
        assert isinstance(model_admin, ProjectRoleAdmin), f"{label} does not check project roles"
        assert model_admin.view_role == entry.view_role, label
        assert model_admin.write_role == entry.write_role, label
        assert model_admin.action_roles == entry.action_roles, label
        for inline in model_admin.inlines:
            assert issubclass(inline, ProjectRoleInline), f"{label}: {inline.__name__} does not check roles"
        for name, action in model_admin.get_actions(request_for(root)).items():
            assert getattr(action.func, "required_role", None) == model_admin.action_role(name), (label, name)


# --- a viewer is refused everything, an outsider sees nothing -------------------------------------
@pytest.mark.parametrize("label", PROJECT_ADMINS)
def test_a_viewer_with_every_permission_changes_nothing(label, world):
    model_admin = registry()[label]
    obj = BUILDERS[label](world["project"], world["owner"])
    viewer = staff(Role.VIEWER, world["project"], "viewer")
    client = client_for(viewer)
    before = snapshot()

    page = client.get(url(model_admin, "change", obj.pk))
    if model_admin.view_role == Role.VIEWER:
        assert page.status_code == 200
        assert 'name="_save"' not in page.content.decode()  # read-only for a viewer
    else:
        assert page.status_code == 302  # not even shown: "does not exist"
    assert client.post(url(model_admin, "change", obj.pk), {}).status_code in (302, 403)
    assert client.post(url(model_admin, "delete", obj.pk), {"post": "yes"}).status_code in (302, 403)
    for name in ADMINS[label].actions:
        post_action(client, model_admin, name, obj.pk)
    assert snapshot() == before, f"{label}: a viewer's post changed the database"

    request = request_for(viewer)
    assert not model_admin.has_change_permission(request, obj)
    assert not model_admin.has_delete_permission(request, obj)
    for inline_class in model_admin.inlines:
        inline = inline_class(model_admin.model, admin.site)
        for check in (inline.has_add_permission, inline.has_change_permission, inline.has_delete_permission):
            assert not check(request, obj), f"{label}: {inline_class.__name__}.{check.__name__}"


@pytest.mark.parametrize("label", PROJECT_ADMINS)
def test_staff_outside_the_project_do_not_see_it(label, world):
    model_admin = registry()[label]
    obj = BUILDERS[label](world["project"], world["owner"])
    outsider = staff(None, None, "outsider")
    client = client_for(outsider)
    before = snapshot()

    listing = client.get(url(model_admin, "changelist"))
    assert listing.status_code == 200
    assert obj.pk not in {row.pk for row in listing.context["cl"].result_list}
    assert client.get(url(model_admin, "change", obj.pk)).status_code == 302  # "does not exist"
    assert not model_admin.get_queryset(request_for(outsider)).filter(pk=obj.pk).exists()
    for name in ADMINS[label].actions:
        post_action(client, model_admin, name, obj.pk)
    # 302 "does not exist", or 403 where nobody but superusers deletes (whether it exists or not).
    assert client.post(url(model_admin, "delete", obj.pk), {"post": "yes"}).status_code in (302, 403)
    assert snapshot() == before


@pytest.mark.parametrize("label", PROJECT_ADMINS)
def test_project_choices_offer_only_projects_with_the_role(label, world):
    model_admin = registry()[label]
    viewer = staff(Role.VIEWER, world["project"], "viewer")
    writable = ProjectFactory(name="writable")
    MembershipFactory(project=writable, user=viewer, role=model_admin.write_role)
    form = model_admin.get_form(request_for(viewer))()
    for name, form_field in form.fields.items():
        if isinstance(form_field, ModelChoiceField) and form_field.queryset.model is Project:
            offered = set(form_field.queryset.values_list("pk", flat=True))
            assert world["project"].pk not in offered, f"{label}.{name} offers a project where it is viewer"
            assert writable.pk in offered, f"{label}.{name}"


@pytest.mark.parametrize(
    ("label", "action"),
    [(label, action) for label in PROJECT_ADMINS for action in sorted(ADMINS[label].actions)],
)
def test_the_role_the_api_needs_gets_through(label, action, world):
    """The counterpart: with the action's role, the same post is not refused for the role."""
    model_admin = registry()[label]
    obj = BUILDERS[label](world["project"], world["owner"])
    role = model_admin.action_role(action)
    user = staff(role, world["project"], "enough")
    response = post_action(client_for(user), model_admin, action, obj.pk)
    refusals = [str(m) for m in get_messages(response.wsgi_request) if "Nothing was done" in str(m)]
    assert not refusals
    root = User.objects.create_superuser("root", "root@example.com", "pw")
    if role == model_admin.write_role:  # the form and the delete page open as for a superuser
        for check in (model_admin.has_change_permission, model_admin.has_delete_permission):
            if label != "accounts.project" or check == model_admin.has_change_permission:
                assert check(request_for(user), obj) == check(request_for(root), obj), (label, check)


# --- what lies outside projects ---------------------------------------------------------------------
def test_superuser_only_admins_refuse_staff(world):
    user = staff(Role.ADMIN, world["project"], "staffer")
    client = client_for(user)
    from django.contrib.auth.models import Group

    group = Group.objects.create(name="ops")
    before = snapshot()
    assert client.get("/admin/auth/group/").status_code == 403
    assert client.post(f"/admin/auth/group/{group.pk}/change/", {"name": "x"}).status_code == 403
    found = registry()
    assert not found["executions.worker"].has_delete_permission(request_for(user), None)
    assert not found["executions.worker"].has_change_permission(request_for(user), None)
    assert snapshot() == before
