"""The authorization matrix, generated from the URL conf (the one walker in
tests/test_api_coverage.py): every API route x every verb x every kind of caller.

Callers: no key, a malformed / unknown / revoked / expired key, a key missing the scope, a
read-only key, a key restricted to another project, a viewer / member / admin of the
object's project, a user of another project, and a superuser. Each gets exactly the status
the rules give (401, 403, 404, or "allowed": anything else, since an allowed request can
still be a 400 for an empty body or a 409 for the object's state), and a caller who may not
see the object's project never receives a byte of it (ids, names, output).

A new route is covered automatically; a new model behind a detail route must be added to
``FOREIGN_OBJECTS`` in tests/test_api_coverage.py, or that module's test fails.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.api.base import TaskforgeViewSet
from accounts.models import ApiKey, Membership, Project, Role, role_at_least
from accounts.scopes import required_scope
from events.models import Event
from tasks.models import Task
from tests.factories import MembershipFactory, ProjectFactory, UserFactory, make_key
from tests.test_api_coverage import FOREIGN_OBJECTS, api_routes

pytestmark = pytest.mark.django_db

DENIED_401 = ("no_key", "malformed", "unknown", "revoked", "expired")
CALLERS = (
    *DENIED_401,
    "missing_scope",
    "read_only",
    "other_project_key",
    "viewer",
    "member",
    "admin",
    "foreign_user",
    "superuser",
)
ALLOWED = "allowed"
# A key restricted to one project cannot create another (it would escape its restriction).
RESTRICTED_KEY_REFUSED = {("project-list", "post")}
# Routes on invitations the caller received: nobody but the invitee finds them.
INVITEE_ONLY = {"invitation-accept", "invitation-decline"}
# Reads that need the admin role (a project's pending invitations).
ADMIN_READS = {"project-invitation-list"}


@dataclass(frozen=True)
class Operation:
    route: str
    name: str
    method: str
    action: str | None
    view: type
    kwarg_names: tuple[str, ...]

    @property
    def kind(self) -> str:
        if self.method in ("get", "head", "options"):
            return "read"
        return (
            getattr(getattr(self.view, self.action or "", None), "kwargs", {}).get("scope_action") or "write"
        )

    @property
    def model(self) -> type | None:
        return self.view.queryset.model if issubclass(self.view, TaskforgeViewSet) else None


def operations() -> list[Operation]:
    found = []
    for route, pattern in api_routes():
        view = pattern.callback.cls
        actions = getattr(pattern.callback, "actions", None)
        methods = dict(actions) if actions else {m: None for m in ("get", "post") if hasattr(view, m)}
        for method, action in methods.items():
            found.append(
                Operation(route, pattern.name, method, action, view, tuple(pattern.pattern.regex.groupindex))
            )
    return found


def scope_object(op: Operation) -> str:
    return op.view.scope_object


# Operations that need more than their view's scope and role (SPEC §4: triggering a template
# creates a task and queues its execution): extra scopes, and the role they need.
EXTRA_RULES: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    ("template-trigger", "post"): (("task:write", "execution:write"), Role.MEMBER),
    # Registering an agent mints a key that claims tasks; submitting to an agent creates one.
    ("agent-list", "post"): (("task:write",), Role.MEMBER),
    ("agent-tasks", "post"): (("task:write",), Role.MEMBER),
    # Running a schedule now queues an execution; members may, like a template trigger.
    ("schedule-trigger", "post"): (("schedule:write", "execution:write"), Role.MEMBER),
    # Running a workflow queues its nodes' executions: members may, with execution:write too
    # (pause queues nothing: workflow:write and the member role, the view's own rule).
    ("workflow-list", "post"): (("execution:write",), Role.MEMBER),
    ("workflow-start", "post"): (("execution:write",), Role.MEMBER),
    ("workflow-resume", "post"): (("execution:write",), Role.MEMBER),
    ("workflow-cancel", "post"): (("execution:write",), Role.MEMBER),
    ("workflow-retry", "post"): (("execution:write",), Role.MEMBER),
}
# Only the agent itself (its agent-bound key, never one of these callers) may do these.
AGENT_KEY_ONLY = {"agent-heartbeat"}


def expected(op: Operation, caller: str) -> str | int:
    """The rules of SPEC section 2, applied to one operation and one caller."""
    if caller in DENIED_401:
        return 401
    needed = required_scope(scope_object(op), op.kind)  # type: ignore[arg-type]
    extra_scopes, extra_role = EXTRA_RULES.get((op.name, op.method), ((), None))
    if caller == "missing_scope":
        return ALLOWED if not needed and not extra_scopes else 403
    if caller == "read_only":
        return ALLOWED if op.kind == "read" and not extra_scopes else 403
    if extra_role is not None and op.kwarg_names and caller in ("viewer", "member", "admin"):
        return ALLOWED if role_at_least(caller, extra_role) else 403
    if not op.kwarg_names:
        if caller == "other_project_key" and (op.name, op.method) in RESTRICTED_KEY_REFUSED:
            return 403
        return ALLOWED  # lists, creates, /me, /status, claim-next: scoped to what the caller sees
    # Keys are personal: only their owner finds them (superusers too), and a key restricted to
    # a project finds only that project's keys (alice's key here is unrestricted).
    if op.model is ApiKey:
        return 404
    if op.name in INVITEE_ONLY:  # an invitation someone else received: only its invitee finds it
        return 404
    if caller in ("foreign_user", "other_project_key"):
        return 404
    if op.name in AGENT_KEY_ONLY:
        return 403
    if caller == "superuser":
        return ALLOWED
    if op.kind == "read":
        return 403 if op.name in ADMIN_READS and caller in ("viewer", "member") else ALLOWED
    write_role = op.view.write_role
    if caller == "viewer":
        return 403
    if caller == "member":
        return ALLOWED if write_role == Role.MEMBER else 403
    return ALLOWED  # admin


class World:
    """Alice's personal project P holds the objects; others get roles in it."""

    def __init__(self) -> None:
        self.alice = UserFactory(username="alice-owner")
        self.project: Project = self.alice.personal_project
        self.users = {role: UserFactory(username=f"{role}-user") for role in ("viewer", "member", "admin")}
        for role, user in self.users.items():
            Membership.objects.get_or_create(project=self.project, user=user, defaults={"role": role})
        self.mallory = UserFactory(username="mallory-foreign")
        self.root = UserFactory(username="root-super")
        self.root.is_superuser = True
        self.root.is_staff = True
        self.root.save()
        self.elsewhere = ProjectFactory(name="elsewhere")
        MembershipFactory(project=self.elsewhere, user=self.alice, role=Role.ADMIN)
        self.clients: dict[str, APIClient] = {}

    def client(self, op: Operation, caller: str) -> APIClient:
        client = APIClient()
        scope = scope_object(op)
        unrelated = "task:read" if scope == "webhook" else "webhook:read"
        header: str | None
        if caller == "no_key":
            header = None
        elif caller == "malformed":
            header = "Api-Key not-a-key"
        elif caller == "unknown":
            header = "Api-Key Zz9Zz9Zz.this-key-does-not-exist-anywhere0"
        elif caller == "revoked":
            api_key, raw = make_key(self.alice)
            ApiKey.objects.filter(pk=api_key.pk).update(revoked=True, revoked_at=timezone.now())
            header = f"Api-Key {raw}"
        elif caller == "expired":
            _, raw = make_key(self.alice, expiry_date=timezone.now() - timedelta(minutes=1))
            header = f"Api-Key {raw}"
        elif caller == "missing_scope":
            header = f"Api-Key {make_key(self.alice, [unrelated])[1]}"
        elif caller == "read_only":
            read = f"{scope}:read" if scope != "account" else "task:read"
            header = f"Api-Key {make_key(self.alice, [read])[1]}"
        elif caller == "other_project_key":
            header = f"Api-Key {make_key(self.alice, ['*'], project=self.elsewhere)[1]}"
        elif caller in self.users:
            header = f"Api-Key {make_key(self.users[caller])[1]}"
        elif caller == "foreign_user":
            header = f"Api-Key {make_key(self.mallory)[1]}"
        elif caller == "superuser":
            header = f"Api-Key {make_key(self.root)[1]}"
        else:  # pragma: no cover
            raise AssertionError(caller)
        if header:
            client.credentials(HTTP_AUTHORIZATION=header)
        return client

    def url(self, op: Operation) -> tuple[str, dict[str, Any]]:
        if not op.kwarg_names:
            return reverse(op.name), {}
        assert op.model in FOREIGN_OBJECTS, f"{op.route}: add {op.model} to FOREIGN_OBJECTS"
        kwargs = FOREIGN_OBJECTS[op.model](self.alice)
        return reverse(op.name, kwargs={name: kwargs[name] for name in op.kwarg_names}), kwargs


def secrets_of(world: World, kwargs: dict[str, Any]) -> list[str]:
    """Strings that identify project P's data and must never reach an outsider."""
    values = [str(world.project.pk), world.alice.username, "secret-output"]
    values += [str(v) for k, v in kwargs.items() if k not in ("user",)]
    return values


def body_without_instance(response: Any) -> str:
    """The response text minus the problem's ``instance`` (it echoes the requested path)."""
    text = response.content.decode(errors="replace")
    if text and response.get("Content-Type", "").startswith("application/problem+json"):
        data = json.loads(text)
        data.pop("instance", None)
        return json.dumps(data)
    return text


def call(client: APIClient, method: str, url: str) -> Any:
    if method in ("get", "head", "options"):
        return getattr(client, method)(url)
    return getattr(client, method)(url, {}, format="json")


def test_the_matrix_covers_every_route_and_verb() -> None:
    ops = operations()
    assert len(ops) >= 40, [op.route for op in ops]
    assert {op.method for op in ops} >= {"get", "post", "put", "patch", "delete"}


@pytest.mark.parametrize("caller", CALLERS)
# The matrix walks more routes than one address may call anonymously in 15 minutes (100):
# the rate limit has tests of its own (tests/test_platform.py); here it would
# only turn a 401 into a 429.
@override_settings(TASKFORGE_RATE_LIMIT_ANONYMOUS="100000/15m")
def test_authorization_matrix(caller: str) -> None:
    world = World()
    mismatches: list[str] = []
    checked = 0
    for op in operations():
        url, kwargs = world.url(op)
        client = world.client(op, caller)
        events_before = Event.objects.filter(task__project=world.project).count()
        tasks_before = Task.objects.filter(project=world.project).count()
        response = call(client, op.method, url)
        want = expected(op, caller)
        got = response.status_code
        ok = got not in (401, 403, 404) and got < 500 if want == ALLOWED else got == want
        if not ok:
            mismatches.append(f"{op.method.upper()} {url} [{op.action}]: want {want}, got {got}")
        assert got < 500, f"{op.method.upper()} {url} -> {got}"
        if got >= 400 and op.method != "head":  # every refusal is a problem document
            assert response.content, f"{op.method.upper()} {url} as {caller}: empty {got}"
        if want != ALLOWED:
            assert response.get("Content-Type", "").startswith("application/problem+json"), url
            if got == 401:
                assert response.has_header("WWW-Authenticate"), url
            # Refused: nothing written to P.
            assert Event.objects.filter(task__project=world.project).count() == events_before, url
            assert Task.objects.filter(project=world.project).count() == tasks_before, url
        if caller in ("foreign_user", "other_project_key", *DENIED_401) or want in (401, 404):
            text = body_without_instance(response)
            leaked = [value for value in secrets_of(world, kwargs) if value in text]
            # A project-restricted key of alice still sees alice herself (/me, her keys).
            if caller == "other_project_key":
                leaked = [v for v in leaked if v != world.alice.username]
                if op.model is ApiKey:  # her own key, found through her own key
                    leaked = [v for v in leaked if v not in kwargs.values()]
            assert not leaked, f"{op.method.upper()} {url} as {caller} leaked {leaked}: {text[:300]}"
        checked += 1
    assert not mismatches, "\n".join(mismatches)
    assert checked >= 40


def test_a_key_restricted_to_another_project_lists_nothing_of_this_one(
    key_client: Callable[..., APIClient],
) -> None:
    world = World()
    task = Task.objects.create(
        project=world.project, created_by=world.alice, name="hidden-" + uuid.uuid4().hex
    )
    client = key_client(world.alice, ["*"], project=world.elsewhere)
    for url in ("/api/v1/tasks", "/api/v1/executions", "/api/v1/webhooks", "/api/v1/projects", "/api/v1/me"):
        text = client.get(url).content.decode()
        assert task.name not in text and str(world.project.pk) not in text, url


# --- mass assignment -----------------------------------------------------------------------
# A minimal valid body per write (route name, method); others send {}. Every documented
# read-only property of the response is added with a bogus value: a 2xx must not echo it.
MINIMAL_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("task-list", "post"): {"name": "mass"},
    ("task-detail", "put"): {"name": "mass"},
    ("project-list", "post"): {"name": "mass"},
    ("apikey-list", "post"): {"name": "mass", "scopes": ["task:read"]},
    ("api-key-list", "post"): {"name": "mass", "scopes": ["task:read"]},
    ("webhook-list", "post"): {"url": "https://93.184.216.34/hook"},
    ("webhook-detail", "patch"): {"description": "mass"},
    ("task-notes", "post"): {"body": "mass"},
    ("task-fail", "post"): {"error": "mass"},
    ("task-move", "post"): {"status": "queued"},
    ("workflow-template-detail", "patch"): {"description": "mass"},
}


def bogus(prop: dict[str, Any]) -> Any:
    kind = prop.get("type")
    if prop.get("format") == "uuid":
        return "00000000-0000-4000-8000-000000000bad"
    if prop.get("format") == "date-time":
        return "2001-02-03T04:05:06Z"
    return {
        "integer": 424242,
        "number": 4242.5,
        "boolean": True,
        "array": ["INJECTED"],
        "object": {"injected": 1},
    }.get(kind or "", "INJECTED")


def test_read_only_fields_in_every_write_are_ignored_or_refused() -> None:
    from tests.hardening.test_bad_input import body_properties, openapi

    world = World()
    schema = openapi()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {make_key(world.alice)[1]}")
    checked = 0
    for op in operations():
        if op.method not in ("post", "put", "patch"):
            continue
        url, _ = world.url(op)
        writable = body_properties(op, url)
        documented = next(
            p
            for p in sorted(schema["paths"], key=lambda p: p.count("{"))
            if __import__("re").fullmatch(__import__("re").sub(r"\{[^}]+\}", "[^/]+", p), url)
        )
        responses = schema["paths"][documented][op.method]["responses"]
        read_only: dict[str, Any] = {}
        for code, response in responses.items():
            ref = (response.get("content") or {}).get("application/json", {}).get("schema", {}).get("$ref")
            if code.startswith("2") and ref:
                component = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
                read_only.update(
                    {k: v for k, v in component.get("properties", {}).items() if k not in writable}
                )
        if not read_only:
            continue
        # Booleans have two values: a bogus one cannot be told from the real one.
        injected = {name: bogus(prop) for name, prop in read_only.items() if prop.get("type") != "boolean"}
        body = {**injected, **MINIMAL_BODIES.get((op.name, op.method), {})}
        response = getattr(client, op.method)(url, body, format="json")
        assert response.status_code < 500, (url, response.status_code)
        if 200 <= response.status_code < 300 and response.content:
            data = response.json()
            applied = [name for name, value in injected.items() if name in data and data[name] == value]
            assert not applied, f"{op.method.upper()} {url} applied read-only {applied}"
            checked += 1
    assert checked >= 8
