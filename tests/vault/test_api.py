"""The secrets API: write-only values, validation, roles, scopes, narrow keys and the 404 rule."""

from __future__ import annotations

import json

import pytest
from django.db.models import TextField
from django.db.models.functions import Cast

from accounts.models import Role
from events.models import Event
from tests.factories import UserFactory
from tests.tasks.conftest import error_fields, problem_of
from tests.vault.conftest import a_value
from vault.models import Secret

pytestmark = pytest.mark.django_db


def create(client, name="DEPLOY_TOKEN", value=None, **body):
    value = value or a_value()
    return client.post("/api/v1/secrets", {"name": name, "value": value, **body}, format="json"), value


def test_the_value_is_never_in_any_answer_event_or_the_column(api, user):
    response, value = create(api, description="CI deploys")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "DEPLOY_TOKEN" and body["value"] == "set" and body["last_used_at"] is None
    assert body["project"] == str(user.personal_project.pk) and body["created_by"]["username"] == "alice"
    assert response["Location"].endswith(f"/api/v1/secrets/{body['id']}")
    url = f"/api/v1/secrets/{body['id']}"
    new_value = a_value()
    answers = [
        response,
        api.get("/api/v1/secrets"),
        api.get(url),
        api.put(url, {"value": new_value}, format="json"),
        api.patch(url, {"description": "rotated"}, format="json"),
        api.patch(url, {"value": value}, format="json"),
        api.get("/api/v1/secrets", {"name": "DEPLOY_TOKEN"}),
    ]
    assert [a.status_code for a in answers] == [201, 200, 200, 200, 200, 200, 200]
    for answer in answers:
        assert value not in answer.content.decode() and new_value not in answer.content.decode()
    assert Secret.objects.get().value == value  # the last PATCH put it back
    # The column holds ciphertext: read raw (without the field's decryption).
    raw = Secret.objects.values_list(Cast("value", TextField()), flat=True).get()
    assert value not in raw and raw.startswith("gAAAA")
    events = list(Event.objects.filter(type__startswith="secret.").order_by("id"))
    assert [e.type for e in events] == [
        "secret.created",
        "secret.updated",
        "secret.updated",
        "secret.updated",
    ]
    assert [e.data.get("changed") for e in events[1:]] == [["value"], ["description"], ["value"]]
    dumped = json.dumps([e.data for e in events])
    assert value not in dumped and new_value not in dumped
    assert api.delete(url).status_code == 204
    assert Event.objects.filter(type="secret.deleted", data__name="DEPLOY_TOKEN").exists()
    assert api.get(url).status_code == 404


def test_the_schema_marks_the_value_write_only(api):
    schema = api.get("/api/schema/", {"format": "json"}).json()
    components = schema["components"]["schemas"]
    for name in ("SecretWriteRequest", "SecretReplaceRequest", "PatchedSecretUpdateRequest"):
        assert components[name]["properties"]["value"]["writeOnly"] is True, name
    assert components["Secret"]["properties"]["value"].get("readOnly") is True
    assert "enum" not in components["Secret"]["properties"]["value"]


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"name": "1BAD"}, "name", "invalid_name"),
        ({"name": "has-dash"}, "name", "invalid_name"),
        ({"name": "A" * 65}, "name", "max_length"),
        ({"value": ""}, "value", "blank"),
        ({"value": 42}, "value", "invalid_type"),
        ({"value": "x" * (32 * 1024 + 1)}, "value", "max_length"),
        ({"colour": "red"}, "colour", "unknown_field"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_never_the_value(api, body, field, code):
    payload = {"name": "GOOD", "value": "v" * 20, **body}
    response = api.post("/api/v1/secrets", payload, format="json")
    problem = problem_of(response, 400)
    assert field in error_fields(problem), problem
    if isinstance(payload["value"], str) and payload["value"]:
        assert payload["value"][:20] not in response.content.decode()
    assert not Secret.objects.exists()


def test_a_name_is_unique_per_project_not_across_projects(api, other_api):
    assert create(api)[0].status_code == 201
    again, value = create(api)
    assert "name" in error_fields(problem_of(again, 400)) and value not in again.content.decode()
    assert create(other_api)[0].status_code == 201  # the same name in another project
    assert Secret.objects.count() == 2


def test_the_name_never_changes(api):
    created, _ = create(api)
    url = f"/api/v1/secrets/{created.json()['id']}"
    assert "name" in error_fields(problem_of(api.patch(url, {"name": "OTHER"}, format="json"), 400))
    assert problem_of(api.patch(url, {}, format="json"), 400)["errors"][0]["code"] == "nothing_to_change"
    assert "value" in error_fields(problem_of(api.put(url, {"description": "x"}, format="json"), 400))


def test_another_projects_secret_is_404_on_every_verb(api, other_api):
    created, value = create(other_api)
    url = f"/api/v1/secrets/{created.json()['id']}"
    for method in ("get", "put", "patch", "delete"):
        response = getattr(api, method)(url, {"value": "new-value-123"}, format="json")
        assert response.status_code == 404, (method, response.content)
    assert api.get("/api/v1/secrets").json()["count"] == 0
    assert Secret.objects.get().value == value


def test_viewers_and_members_read_metadata_only_admins_write(team, key_client):
    for role in (Role.VIEWER, Role.MEMBER):
        project, other = team(role)
        client = key_client(other)
        response, _ = create(client, project=str(project.pk))
        assert problem_of(response, 403)
        owner_client = key_client(project.memberships.get(role=Role.ADMIN).user)
        made, _ = create(owner_client, name=f"S_{role}", project=str(project.pk))
        url = f"/api/v1/secrets/{made.json()['id']}"
        assert client.get(url).json()["value"] == "set"
        assert client.patch(url, {"value": "new-value-123"}, format="json").status_code == 403
        assert client.delete(url).status_code == 403


def test_scopes(user, key_client):
    reader = key_client(user, scopes=["secret:read"])
    tasks_only = key_client(user, scopes=["task:write"])
    writer = key_client(user, scopes=["secret:write"])
    assert problem_of(create(reader)[0], 403)["required_scope"] == "secret:write"
    assert problem_of(tasks_only.get("/api/v1/secrets"), 403)["required_scope"] == "secret:read"
    made, _ = create(writer)
    assert made.status_code == 201
    assert reader.get(f"/api/v1/secrets/{made.json()['id']}").status_code == 200


def test_a_project_key_stays_in_its_project(user, key_client, team):
    shared, _ = team(Role.VIEWER)
    narrow = key_client(user, project=user.personal_project)
    wide = key_client(user)
    made, _ = create(wide, project=str(shared.pk))
    assert made.status_code == 201
    assert narrow.get(f"/api/v1/secrets/{made.json()['id']}").status_code == 404
    assert narrow.get("/api/v1/secrets").json()["count"] == 0
    refused, _ = create(narrow, project=str(shared.pk))
    assert refused.status_code == 400
    assert create(narrow)[0].status_code == 201


def test_an_unknown_user_sees_nothing(key_client):
    stranger = key_client(UserFactory())
    assert stranger.get("/api/v1/secrets").json()["count"] == 0
