"""Triggers under test: a deploy template, triggers of it, and senders that sign the way GitHub,
GitLab and Standard Webhooks senders do (the official ``standardwebhooks`` library)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client
from standardwebhooks import Webhook

from accounts.models import Project, User
from templates_app import services as template_services
from templates_app.models import Template
from triggers import services
from triggers.models import Trigger

DEPLOY_SCRIPT = 'printf "%s|%s|%s" {{ branch }} {{ replicas }} {{ env }}'
DEPLOY_PARAMETERS: list[dict[str, Any]] = [
    {"name": "branch", "type": "string", "required": True, "max_length": 200},
    {"name": "replicas", "type": "integer", "min": 1, "max": 5, "default": 1},
    {"name": "env", "type": "choice", "choices": ["staging", "production"], "default": "staging"},
    {"name": "token", "type": "string", "secret": True},
]
PUSH = {
    "ref": "refs/heads/main",
    "before": "0" * 40,
    "after": "a" * 40,
    "repository": {"full_name": "acme/api", "private": True},
    "pusher": {"name": "octocat"},
    "commits": [{"id": "a" * 40, "message": "Fix it"}],
}


def github_headers(
    secret: str, body: bytes, event: str = "push", delivery: str | None = None
) -> dict[str, str]:
    """The headers GitHub sends: the event, a delivery GUID and the HMAC-SHA256 of the raw body."""
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
        "User-Agent": "GitHub-Hookshot/abc123",
        "Content-Type": "application/json",
    }


def standard_headers(
    secret: str, body: bytes, message_id: str | None = None, at: datetime | None = None
) -> dict[str, str]:
    """Signed by the official Standard Webhooks library, as any compliant sender signs."""
    message_id = message_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(tz=UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, at, body),
        "Content-Type": "application/json",
    }


def as_meta(headers: dict[str, str]) -> dict[str, str]:
    """Headers as Django's test client takes them (``HTTP_X_GITHUB_EVENT``)."""
    meta = {}
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        meta[key if key == "CONTENT_TYPE" else f"HTTP_{key}"] = value
    return meta


def body_of(document: Any) -> bytes:
    return json.dumps(document).encode()


@pytest.fixture
def deploy_template(user: User, project: Project) -> Template:
    return template_services.template_create(
        project=project,
        actor=user,
        slug="deploy",
        name="Deploy",
        name_pattern="Deploy {{ branch }}",
        script_type="bash",
        script=DEPLOY_SCRIPT,
        parameters=DEPLOY_PARAMETERS,
    )


@pytest.fixture
def make_trigger(
    user: User, project: Project, deploy_template: Template
) -> Callable[..., tuple[Trigger, str]]:
    """``make_trigger(auth="github", **fields)`` -> (a trigger of the deploy template, its secret)."""

    def make(auth: str = "github", slug: str | None = None, **fields: Any) -> tuple[Trigger, str]:
        fields.setdefault("mapping", {"branch": "$.ref"})
        return services.trigger_create(
            project=fields.pop("in_project", project),
            actor=user,
            template=fields.pop("template", deploy_template),
            slug=slug or f"t-{uuid.uuid4().hex[:8]}",
            auth=auth,
            **fields,
        )

    return make


@pytest.fixture
def post_hook() -> Callable[..., Any]:
    """``post_hook(trigger, body, headers, query="")`` -> the test client's response."""
    client = Client()

    def post(
        trigger: Trigger | str, body: bytes, headers: dict[str, str] | None = None, query: str = ""
    ) -> Any:
        trigger_id = trigger.pk if isinstance(trigger, Trigger) else trigger
        meta = as_meta(headers or {})
        content_type = meta.pop("CONTENT_TYPE", "application/json")
        return client.post(f"/hooks/{trigger_id}{query}", data=body, content_type=content_type, **meta)

    return post


@pytest.fixture
def inline_worker(db: Any) -> Any:
    """A worker that runs queued executions in the test's own thread (``run_pending()``)."""
    from executions.engine.sandbox import SandboxConfig
    from executions.engine.worker import WorkerProcess

    return WorkerProcess(concurrency=1, sandbox=SandboxConfig.from_settings())
