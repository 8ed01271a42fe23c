"""Names refuse control and invisible formatting characters (issue 18, item 18).

``\\n``/``\\r`` forge log lines and break one-line displays; bidi overrides (U+202E) show
``exe.txt`` as ``txt.exe``; zero-width characters make two names look alike. Every name
field refuses them with a 400 naming the field, through the API, and nothing is written.
"""

from __future__ import annotations

from typing import Any

import pytest

from accounts.models import ApiKey, Project
from core.validators import first_refused_character, validate_label_text, validate_name
from tasks.models import Task
from templates_app.models import Template
from tests.tasks.conftest import error_fields, problem_of
from webhooks.models import Subscription

pytestmark = pytest.mark.django_db

# "books" in Persian: its ZERO WIDTH NON-JOINER is part of the spelling.
PERSIAN = "\u0646\u0627\u0645\u0647\u200c\u0647\u0627"
REFUSED = [
    "line\nbreak",
    "carriage\rreturn",
    "tab\tinside",
    "nul\x00byte",
    "escape\x1b[31mred",
    "del\x7f",
    "c1\x85next-line",
    "invoice_\u202egnp.exe",  # RIGHT-TO-LEFT OVERRIDE
    "rlm\u200f",
    "lrm\u200e",
    "embed\u202a",
    "isolate\u2066x\u2069",
    "arabic-mark\u061c",
    "zero\u200bwidth",
    "word\u2060joiner",
    "bom\ufeff",
    "soft\u00adhyphen",
    "tag\U000e0041",
    "line\u2028separator",
    "para\u2029separator",
]
ACCEPTED = [
    "Deploy api to production",
    "Déploiement — ünïcødé ✓",
    PERSIAN,
    "family 👨\u200d👩\u200d👧",  # ZERO WIDTH JOINER inside an emoji sequence
    "日本語のタスク",
    "עברית",  # right-to-left text itself is fine; only the invisible controls are refused
]


@pytest.mark.parametrize("value", REFUSED)
def test_the_validator_refuses(value: str) -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as info:
        validate_name(value)
    assert info.value.code == "invalid_character"
    assert "U+" in info.value.messages[0]


@pytest.mark.parametrize("value", ACCEPTED)
def test_the_validator_accepts(value: str) -> None:
    validate_name(value)
    assert first_refused_character(value) is None


def test_label_text_allows_line_breaks_and_tabs_but_not_bidi() -> None:
    from django.core.exceptions import ValidationError

    validate_label_text("CI pipeline\n\tsecond line")
    with pytest.raises(ValidationError):
        validate_label_text("CI \u202epipeline")
    with pytest.raises(ValidationError):
        validate_label_text("carriage\rreturn")


def refused(response: Any, field: str) -> None:
    body = problem_of(response, 400)
    assert error_fields(body).get(field) == "invalid_character", body


@pytest.mark.parametrize("value", ["a\nb", "a\r\nb", "invoice_\u202egnp.exe", "zero\u200bwidth"])
def test_task_name_on_create_and_update(api: Any, project: Project, value: str) -> None:
    refused(api.post("/api/v1/tasks", {"name": value}, format="json"), "name")
    assert not Task.objects.exists()
    created = api.post("/api/v1/tasks", {"name": "fine"}, format="json")
    assert created.status_code == 201, created.content
    url = f"/api/v1/tasks/{created.json()['id']}"
    refused(api.patch(url, {"name": value}, format="json"), "name")
    assert Task.objects.get().name == "fine"


def template_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "slug": "label",
        "name": "Labelled",
        "name_pattern": "Run {{ label }}",
        "script_type": "bash",
        "script": "echo hello",
        "parameters": [{"name": "label", "type": "string", "required": True}],
    }
    body.update(overrides)
    return body


@pytest.mark.parametrize("field", ["name", "name_pattern"])
def test_template_name_and_name_pattern(api: Any, field: str) -> None:
    value = "Run \u202e{{ label }}" if field == "name_pattern" else "Lab\nelled"
    refused(api.post("/api/v1/templates", template_body(**{field: value}), format="json"), field)
    assert not Template.objects.exists()
    assert api.post("/api/v1/templates", template_body(), format="json").status_code == 201
    refused(api.patch("/api/v1/templates/label", {field: value}, format="json"), field)
    assert getattr(Template.objects.get(), field) == template_body()[field]


def test_a_name_rendered_from_name_pattern_is_checked(api: Any) -> None:
    assert api.post("/api/v1/templates", template_body(), format="json").status_code == 201
    url = "/api/v1/templates/label/trigger"
    for value in ["x\u202egnp.exe", "two\nlines", "fa\rke"]:
        response = api.post(url, {"parameters": {"label": value}, "execute": False}, format="json")
        refused(response, "name")
    assert not Task.objects.exists()
    # An override of the name is a name too.
    overrides = {"name": "over\u2066ride"}
    response = api.post(
        url, {"parameters": {"label": "ok"}, "execute": False, "overrides": overrides}, format="json"
    )
    refused(response, "overrides.name")
    ok = api.post(url, {"parameters": {"label": PERSIAN}, "execute": False}, format="json")
    assert ok.status_code == 201, ok.content
    assert Task.objects.get().name == f"Run {PERSIAN}"


def test_project_name(api: Any) -> None:
    before = Project.objects.count()
    refused(api.post("/api/v1/projects", {"name": "team\u202e"}, format="json"), "name")
    refused(api.post("/api/v1/projects", {"name": "team\nrow"}, format="json"), "name")
    assert Project.objects.count() == before


def test_api_key_name(api: Any) -> None:
    before = ApiKey.objects.count()
    for value in ["ci\u202e", "ci\nkey", "ci\x1b[0m"]:
        response = api.post("/api/v1/api-keys", {"name": value, "scopes": ["task:read"]}, format="json")
        refused(response, "name")
    assert ApiKey.objects.count() == before


def test_api_key_service_refuses_too(user: Any) -> None:
    """The service behind the API and the admin checks the name itself."""
    from django.core.exceptions import ValidationError

    from accounts.services import api_key_create

    with pytest.raises(ValidationError) as info:
        api_key_create(owner=user, name="ci\u202e", scopes=["task:read"])
    assert "name" in info.value.message_dict


def test_webhook_description(api: Any, settings: Any) -> None:
    settings.TASKFORGE_WEBHOOK_ALLOW_PRIVATE = True
    url = "https://93.184.216.34/hooks/taskforge"
    response = api.post("/api/v1/webhooks", {"url": url, "description": "CI \u202epipeline"}, format="json")
    refused(response, "description")
    assert not Subscription.objects.exists()
    created = api.post("/api/v1/webhooks", {"url": url, "description": "CI\npipeline"}, format="json")
    assert created.status_code == 201, created.content
    detail = f"/api/v1/webhooks/{created.json()['id']}"
    refused(api.patch(detail, {"description": "zero\u200bwidth"}, format="json"), "description")
    assert Subscription.objects.get().description == "CI\npipeline"
