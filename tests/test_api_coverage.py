"""Walks the URL conf: no API endpoint can escape tenancy, scopes or the 404 rule.

Every view under /api/v1/ must inherit the shared base (``TaskforgeAPIMixin``), declare a
valid scope object, and answer 404 on every verb for another project's object. A new
model behind a detail route needs an entry in ``FOREIGN_OBJECTS`` or this test fails.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts.api.base import TaskforgeAPIMixin, TaskforgeViewSet
from accounts.models import ApiKey, Invitation, Membership, Project, User
from accounts.scopes import SCOPE_OBJECTS
from agents.models import Agent
from executions.models import Execution
from schedules.models import Schedule
from tasks.models import Task
from templates_app.models import Template
from tests.factories import TaskFactory, make_key
from triggers.models import Trigger
from vault.models import Secret
from webhooks.models import Subscription
from workflows.models import WorkflowRun, WorkflowTemplate

pytestmark = pytest.mark.django_db


def walk(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from walk(entry.url_patterns, prefix + str(entry.pattern))
        else:
            yield prefix + str(entry.pattern), entry


def api_routes() -> list[tuple[str, URLPattern]]:
    return [(route, p) for route, p in walk(get_resolver().url_patterns) if route.startswith("api/v1/")]


def foreign_api_key(owner: User) -> dict[str, Any]:
    api_key, _ = make_key(owner)
    return {"id": api_key.prefix}


def foreign_project(owner: User) -> dict[str, Any]:
    return {"pk": owner.personal_project.pk, "project_pk": owner.personal_project.pk}


def foreign_membership(owner: User) -> dict[str, Any]:
    return {"project_pk": owner.personal_project.pk, "user": owner.pk}


def foreign_invitation(owner: User) -> dict[str, Any]:
    from accounts.services import invitation_create
    from tests.factories import UserFactory

    invitee = UserFactory()  # someone else's invitation, from someone else's project
    invitation = invitation_create(
        project=owner.personal_project, username=invitee.username, role="member", actor=owner
    )
    return {"project_pk": owner.personal_project.pk, "pk": invitation.pk}


def foreign_task(owner: User) -> dict[str, Any]:
    return {"pk": TaskFactory(created_by=owner).pk}


def foreign_execution(owner: User) -> dict[str, Any]:
    from executions.services import execution_enqueue

    task = TaskFactory(created_by=owner, script_type="bash", script_content="echo secret-output")
    execution = execution_enqueue(task=task, actor=owner)
    return {"id": task.pk, "execution_id": execution.pk}


def foreign_webhook(owner: User) -> dict[str, Any]:
    from webhooks import services

    subscription, _ = services.subscription_create(
        project=owner.personal_project, actor=owner, url="https://93.184.216.34/hook"
    )
    delivery = services.send_test(subscription=subscription, actor=owner)
    return {"pk": subscription.pk, "delivery_id": delivery.pk}


def foreign_template(owner: User) -> dict[str, Any]:
    from templates_app.services import template_create

    template = template_create(
        project=owner.personal_project,
        actor=owner,
        slug=f"foreign-{uuid.uuid4().hex[:8]}",
        name="Foreign",
        name_pattern="secret task",
        script_type="bash",
        script="echo secret-output",
    )
    return {"ref": template.pk}


def foreign_secret(owner: User) -> dict[str, Any]:
    from vault.services import secret_create

    name = f"FOREIGN_{uuid.uuid4().hex[:8]}"
    secret = secret_create(project=owner.personal_project, actor=owner, name=name, value="value-1234")
    return {"pk": secret.pk}


def foreign_trigger(owner: User) -> dict[str, Any]:
    from triggers.services import Incoming, delivery_receive, trigger_create

    template = foreign_template(owner)["ref"]
    trigger, _ = trigger_create(
        project=owner.personal_project,
        actor=owner,
        template=Template.objects.get(pk=template),
        slug=f"foreign-{uuid.uuid4().hex[:8]}",
        auth="token",
    )
    answer = delivery_receive(trigger=trigger, incoming=Incoming(body=b"{}", headers={}))
    return {"pk": trigger.pk, "delivery_id": answer.delivery.pk}


def foreign_agent(owner: User) -> dict[str, Any]:
    from agents.services import agent_register

    agent, _key = agent_register(
        project=owner.personal_project, actor=owner, name=f"secret-{uuid.uuid4().hex[:8]}"
    )
    return {"pk": agent.pk}


def foreign_schedule(owner: User) -> dict[str, Any]:
    from schedules.services import schedule_create

    schedule = schedule_create(
        project=owner.personal_project,
        actor=owner,
        name="foreign",
        task=TaskFactory(created_by=owner, script_type="bash", script_content="echo secret-output"),
        interval_seconds=60,
    )
    return {"pk": schedule.pk}


def foreign_workflow_template(owner: User) -> dict[str, Any]:
    from workflows.services import workflow_template_create

    step = foreign_template(owner)["ref"]
    workflow = workflow_template_create(
        project=owner.personal_project,
        actor=owner,
        slug=f"foreign-flow-{uuid.uuid4().hex[:8]}",
        name="Foreign flow",
        nodes=[{"key": "a", "template": str(step)}, {"key": "b", "template": str(step)}],
        edges=[{"from": "a", "to": "b"}],
    )
    return {"ref": workflow.pk}


def foreign_workflow_run(owner: User) -> dict[str, Any]:
    from workflows.services import workflow_run_create

    workflow = WorkflowTemplate.objects.get(pk=foreign_workflow_template(owner)["ref"])
    run = workflow_run_create(workflow=workflow, actor=owner, name="secret run")
    return {"pk": run.pk}


# model -> builds an object owned by another user and returns the URL kwargs reaching it.
FOREIGN_OBJECTS: dict[type, Callable[[User], dict[str, Any]]] = {
    ApiKey: foreign_api_key,
    Project: foreign_project,
    Membership: foreign_membership,
    Invitation: foreign_invitation,
    Execution: foreign_execution,
    Task: foreign_task,
    Subscription: foreign_webhook,
    Template: foreign_template,
    Secret: foreign_secret,
    Trigger: foreign_trigger,
    Agent: foreign_agent,
    Schedule: foreign_schedule,
    WorkflowTemplate: foreign_workflow_template,
    WorkflowRun: foreign_workflow_run,
}


def test_every_api_view_goes_through_the_base():
    routes = api_routes()
    assert routes, "no API routes found"
    for route, pattern in routes:
        cls = getattr(pattern.callback, "cls", None)
        assert cls is not None, f"{route} is not a DRF view"
        assert issubclass(cls, TaskforgeAPIMixin), f"{route}: {cls.__name__} bypasses the shared base"
        assert cls.scope_object in SCOPE_OBJECTS, f"{route}: {cls.__name__} has no valid scope_object"


def test_every_object_route_answers_404_for_another_projects_object(api, other_user):
    checked = 0
    for route, pattern in api_routes():
        names = list(pattern.pattern.regex.groupindex)
        if not names:
            continue
        cls = pattern.callback.cls
        model = cls.queryset.model if issubclass(cls, TaskforgeViewSet) else None
        assert model in FOREIGN_OBJECTS, f"{route}: add {model} to FOREIGN_OBJECTS"
        kwargs_all = FOREIGN_OBJECTS[model](other_user)
        kwargs = {name: kwargs_all[name] for name in names}
        url = reverse(pattern.name, kwargs=kwargs)
        methods = list(pattern.callback.actions) if hasattr(pattern.callback, "actions") else ["get"]
        for method in methods:
            response = getattr(api, method)(url, {}, format="json")
            assert response.status_code == 404, f"{method.upper()} {url} -> {response.status_code}"
            assert other_user.username not in response.content.decode()
            checked += 1
    assert checked >= 5


def test_a_view_overriding_get_queryset_is_refused():
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="scoped_queryset"):

        class Sneaky(TaskforgeViewSet):
            scope_object = "task"

            def get_queryset(self):  # pragma: no cover
                return Project.objects.all()


def _views_under_api() -> list[Any]:
    from pathlib import Path

    from django.conf import settings

    root = Path(settings.BASE_DIR)
    return sorted(path for path in root.glob("*/api/*.py") if ".venv" not in path.parts)


def test_no_api_module_calls_visible_to_itself():
    # The tenancy rule is applied by the sealed base (get_queryset, visible(), visible_project());
    # a view reaching for visible_to itself could pass the wrong user or forget the key.
    modules = _views_under_api()
    assert len(modules) >= 5, modules
    offenders = [
        f"{path.parent.parent.name}/api/{path.name}"
        for path in modules
        if ".visible_to(" in path.read_text() and path.as_posix().endswith("accounts/api/base.py") is False
    ]
    assert not offenders, f"call visible_to through the base (self.visible(...)), not in {offenders}"


class _FakeRequest:
    def __init__(self, method: str) -> None:
        self.method = method


def _write_handlers(pattern: URLPattern) -> Iterator[tuple[str, str | None]]:
    """(HTTP method, viewset action or None) for every writing method the route answers."""
    actions = getattr(pattern.callback, "actions", None)
    if actions is not None:
        yield from ((m.upper(), a) for m, a in actions.items() if m.upper() not in ("GET", "HEAD", "OPTIONS"))
        return
    cls = pattern.callback.cls
    for method in ("post", "put", "patch", "delete"):
        if hasattr(cls, method):
            yield method.upper(), None


# POSTs that change nothing the caller could not already read, with the read scope they need:
# a stream ticket opens, once, the stream its maker may open anyway (docs/api.md); a schedule
# preview computes fire times from the body alone (docs/schedules.md).
READING_POSTS = {
    ("api/v1/^events/tickets$", "POST"): ("event:read",),
    ("api/v1/^schedules/preview$", "POST"): ("schedule:read",),
}


def test_every_write_declares_or_inherits_its_scopes():
    from accounts.permissions import declared_scopes
    from accounts.scopes import SCOPES

    checked = 0
    for route, pattern in api_routes():
        cls = pattern.callback.cls
        for method, action_name in _write_handlers(pattern):
            view = cls(**getattr(pattern.callback, "initkwargs", {}))
            view.action = action_name
            scopes = declared_scopes(_FakeRequest(method), view)
            assert all(scope in SCOPES for scope in scopes), f"{method} {route}: unknown scope in {scopes}"
            writes = [scope for scope in scopes if scope == "*" or scope.endswith(":write")]
            if (route, method) in READING_POSTS:
                assert scopes == READING_POSTS[route, method], f"{method} {route}: {scopes}"
                continue
            assert writes, f"{method} {route} ({cls.__name__}.{action_name}) needs no write scope: {scopes}"
            checked += 1
    assert checked >= 20, checked


def test_the_trigger_declares_task_write_and_adds_execution_write_when_it_executes(user, key_client):
    # The per-action declaration (task:write) and the body-dependent hook (execution:write),
    # seen from narrow keys; a refused trigger makes nothing.
    from templates_app.services import template_create

    template = template_create(
        project=user.personal_project,
        actor=user,
        slug="scoped",
        name="Scoped",
        name_pattern="scoped",
        script_type="bash",
        script="echo hi",
    )
    url = reverse("template-trigger", kwargs={"ref": template.pk})
    only_templates = key_client(user, ["template:read"])
    response = only_templates.post(url, {"execute": False}, format="json")
    assert response.status_code == 403 and response.json()["required_scope"] == "task:write"
    no_exec = key_client(user, ["template:read", "task:write"])
    for body in ({}, {"execute": True}, {"parameters": {}}):
        response = no_exec.post(url, body, format="json")
        assert response.status_code == 403 and response.json()["required_scope"] == "execution:write"
    assert not Task.objects.filter(project=user.personal_project).exists()
    # A body the serializer refuses stays its 400 (it executes nothing), strict types included.
    for value in ("maybe", "true", 1):
        response = no_exec.post(url, {"execute": value}, format="json")
        assert response.status_code == 400 and "execute" in response.content.decode()
    response = no_exec.post(url, {"execute": False}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["execution"] is None
