"""/api/v1/triggers: configuration, secrets shown once, the delivery log and replays, with the
tenancy, role and scope rules of every API object."""

from __future__ import annotations

import pytest

from accounts.models import Role
from events.models import Event
from executions.models import Execution
from tasks.models import Task
from templates_app import services as template_services
from tests.factories import MembershipFactory, ProjectFactory
from tests.triggers.conftest import DEPLOY_PARAMETERS, DEPLOY_SCRIPT, PUSH, body_of, github_headers
from triggers.models import Delivery, Trigger
from vault.services import secret_create

pytestmark = pytest.mark.django_db


def create_body(template, **extra):
    return {
        "template": str(template.pk),
        "slug": "on-push",
        "auth": "github",
        "filters": {"events": ["push"], "ref": "main"},
        "mapping": {"branch": "$.ref", "env": "=production"},
        **extra,
    }


def test_create_shows_the_secret_once_and_the_url(api, deploy_template):
    response = api.post("/api/v1/triggers", create_body(deploy_template), format="json")
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["secret"] and data["auth"] == "github"
    assert data["url"] == f"http://testserver/hooks/{data['id']}"
    assert response["Location"].endswith(f"/api/v1/triggers/{data['id']}")
    again = api.get(f"/api/v1/triggers/{data['id']}").json()
    assert "secret" not in again
    assert data["secret"] not in str(api.get("/api/v1/triggers").content)
    assert Event.objects.filter(type="trigger.created").count() == 1


def test_every_configuration_problem_is_one_400_and_nothing_is_created(api, deploy_template):
    body = create_body(
        deploy_template,
        mapping={
            "branch": "$.ref[",
            "nope": "$.x",
            "replicas": "ref",
            "token": "$.secret",
            "env": {"secret": "x"},
        },
        filters={"events": "push", "ref_path": "ref", "unknown": 1, "match": {"$.a": {"b": 1}}},
        dedupe_path="id",
        rate_limit="lots",
    )
    response = api.post("/api/v1/triggers", body, format="json")
    assert response.status_code == 400
    fields = {e["field"]: e["code"] for e in response.json()["errors"]}
    assert fields.get("rate_limit") == "invalid"
    response = api.post("/api/v1/triggers", {**body, "rate_limit": "10/1m"}, format="json")
    fields = {e["field"]: e["code"] for e in response.json()["errors"]}
    assert fields == {
        "mapping.branch": "invalid_path",
        "mapping.nope": "unknown",
        "mapping.replicas": "invalid",
        "mapping.token": "secret_parameter",
        "mapping.env": "not_secret",
        "filters.events": "invalid",
        "filters.ref_path": "invalid_path",
        "filters.unknown": "unknown_key",
        "filters.match.$.a": "invalid",
        "dedupe_path": "invalid_path",
    }
    assert not Trigger.objects.exists()


@pytest.mark.parametrize("source", ["$.head_commit.message", "header:X-Token", "=hunter2"])
def test_a_payload_value_never_maps_to_a_secret_parameter(api, deploy_template, source):
    body = create_body(deploy_template, mapping={"branch": "$.ref", "token": source})
    response = api.post("/api/v1/triggers", body, format="json")
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert (error["field"], error["code"]) == ("mapping.token", "secret_parameter")


def test_a_secret_reference_is_stored_as_given(api, user, deploy_template):
    secret_create(project=deploy_template.project, actor=user, name="DEPLOY_TOKEN", value="s3cret-value")
    mapping = {"branch": "$.ref", "token": {"secret": "DEPLOY_TOKEN"}}
    response = api.post("/api/v1/triggers", create_body(deploy_template, mapping=mapping), format="json")
    assert response.status_code == 201
    assert response.json()["mapping"] == mapping


def test_a_reference_to_a_secret_the_project_lacks_is_refused_at_save(api, other_user, deploy_template):
    # Another project's secret of the same name does not count.
    secret_create(
        project=other_user.personal_project, actor=other_user, name="DEPLOY_TOKEN", value="theirs-1234"
    )
    mapping = {"branch": "$.ref", "token": {"secret": "DEPLOY_TOKEN"}}
    response = api.post("/api/v1/triggers", create_body(deploy_template, mapping=mapping), format="json")
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert (error["field"], error["code"]) == ("mapping.token", "secret_not_found")
    assert "DEPLOY_TOKEN" in error["message"]
    assert not Trigger.objects.exists()


def test_a_template_of_another_project_is_refused(api, other_user, deploy_template):
    foreign = template_services.template_create(
        project=other_user.personal_project,
        actor=other_user,
        slug="theirs",
        name="T",
        name_pattern="t",
        script_type="bash",
        script="echo hi",
    )
    response = api.post("/api/v1/triggers", create_body(foreign), format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "template"
    # A template of another project of one's own is refused too: a trigger starts its own project's.
    shared = ProjectFactory()
    MembershipFactory(project=shared, user=deploy_template.created_by, role=Role.ADMIN)
    body = {**create_body(deploy_template), "project": str(shared.pk)}
    assert api.post("/api/v1/triggers", body, format="json").status_code == 400
    assert not Trigger.objects.exists()


def test_auth_and_template_never_change(api, make_trigger):
    trigger, _ = make_trigger("github")
    response = api.patch(f"/api/v1/triggers/{trigger.pk}", {"auth": "token"}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0] == {
        "field": "auth",
        "code": "immutable",
        "message": response.json()["errors"][0]["message"],
    }
    response = api.patch(
        f"/api/v1/triggers/{trigger.pk}", {"enabled": False, "slug": "renamed"}, format="json"
    )
    assert response.status_code == 200
    assert (response.json()["enabled"], response.json()["slug"]) == (False, "renamed")


def test_rotate_shows_the_new_secret_once(api, make_trigger):
    trigger, old = make_trigger("github")
    response = api.post(f"/api/v1/triggers/{trigger.pk}/rotate-secret")
    assert response.status_code == 200
    new = response.json()["secret"]
    assert new != old and response.json()["secret_rotation_ends_at"]
    trigger.refresh_from_db()
    assert trigger.accepted_secrets() == [new, old]


def test_deliveries_are_listed_and_replayed_as_a_new_run(api, make_trigger, post_hook):
    trigger, secret = make_trigger("github")
    body = body_of(PUSH)
    first = post_hook(trigger, body, github_headers(secret, body)).json()
    listed = api.get(f"/api/v1/triggers/{trigger.pk}/deliveries").json()
    assert listed["count"] == 1
    [row] = listed["results"]
    assert row["body"] == PUSH and row["outcome"] == "accepted" and row["task"] == first["task"]
    assert "x-hub-signature-256" not in row["headers"]
    response = api.post(f"/api/v1/triggers/{trigger.pk}/deliveries/{row['id']}/replay")
    assert response.status_code == 201, response.content
    replay = response.json()
    assert replay["replay_of"] == row["id"] and replay["replayed_by"]["username"] == "alice"
    assert replay["task"] != first["task"]
    assert Execution.objects.get(pk=replay["execution"]).trigger == "hook_replay"
    assert api.get(f"/api/v1/triggers/{trigger.pk}/deliveries?outcome=ignored").json()["count"] == 0
    assert api.get(f"/api/v1/triggers/{trigger.pk}/deliveries?outcome=bogus").status_code == 400


def test_a_disabled_trigger_does_not_replay(api, make_trigger, post_hook):
    trigger, secret = make_trigger("github")
    body = body_of(PUSH)
    delivery = post_hook(trigger, body, github_headers(secret, body)).json()["delivery"]
    api.patch(f"/api/v1/triggers/{trigger.pk}", {"enabled": False}, format="json")
    response = api.post(f"/api/v1/triggers/{trigger.pk}/deliveries/{delivery}/replay")
    assert response.status_code == 409 and response.json()["code"] == "trigger_disabled"


# --- who may do what ------------------------------------------------------------------------------
def test_another_projects_key_sees_nothing_on_every_verb(other_api, make_trigger, post_hook):
    trigger, secret = make_trigger("github")
    body = body_of(PUSH)
    delivery = post_hook(trigger, body, github_headers(secret, body)).json()["delivery"]
    base = f"/api/v1/triggers/{trigger.pk}"
    for method, url in [
        ("get", base),
        ("patch", base),
        ("delete", base),
        ("post", f"{base}/rotate-secret"),
        ("get", f"{base}/deliveries"),
        ("get", f"{base}/deliveries/{delivery}"),
        ("post", f"{base}/deliveries/{delivery}/replay"),
    ]:
        response = getattr(other_api, method)(url, {}, format="json")
        assert response.status_code == 404, (method, url, response.status_code)
    assert other_api.get("/api/v1/triggers").json()["count"] == 0
    assert Trigger.objects.filter(pk=trigger.pk, enabled=True).exists()
    assert Task.objects.count() == 1


@pytest.mark.parametrize("role", [Role.VIEWER, Role.MEMBER])
def test_only_project_admins_change_triggers(team, key_client, role, user):
    project, other = team(role)
    template = template_services.template_create(
        project=project,
        actor=user,
        slug="deploy",
        name="D",
        name_pattern="D {{ branch }}",
        script_type="bash",
        script=DEPLOY_SCRIPT,
        parameters=DEPLOY_PARAMETERS,
    )
    client = key_client(other)
    body = {**create_body(template), "project": str(project.pk)}
    assert client.post("/api/v1/triggers", body, format="json").status_code == 403
    admin_client = key_client(user)
    created = admin_client.post("/api/v1/triggers", body, format="json").json()
    base = f"/api/v1/triggers/{created['id']}"
    assert client.get(base).status_code == 200  # readable by every role
    assert client.patch(base, {"enabled": False}, format="json").status_code == 403
    assert client.post(f"{base}/rotate-secret").status_code == 403
    assert client.delete(base).status_code == 403
    assert Trigger.objects.get(pk=created["id"]).enabled


def test_a_narrow_key_stays_narrow(key_client, user, make_trigger, post_hook):
    trigger, secret = make_trigger("github")
    body = body_of(PUSH)
    delivery = post_hook(trigger, body, github_headers(secret, body)).json()["delivery"]
    base = f"/api/v1/triggers/{trigger.pk}"
    templates_only = key_client(user, ["template:write", "task:write", "execution:write"])
    response = templates_only.get("/api/v1/triggers")
    assert response.status_code == 403 and response.json()["required_scope"] == "trigger:read"
    reader = key_client(user, ["trigger:read"])
    assert reader.get(f"{base}/deliveries").status_code == 200
    response = reader.patch(base, {"enabled": False}, format="json")
    assert response.status_code == 403 and response.json()["required_scope"] == "trigger:write"
    writer = key_client(user, ["trigger:write"])
    assert writer.patch(base, {"description": "x"}, format="json").status_code == 200
    response = writer.post(f"{base}/deliveries/{delivery}/replay")
    assert response.status_code == 403 and response.json()["required_scope"] == "task:write"
    assert Task.objects.count() == 1


def test_a_project_restricted_key_stays_in_its_project(key_client, user, make_trigger):
    trigger, _ = make_trigger("github")
    elsewhere = ProjectFactory()
    MembershipFactory(project=elsewhere, user=user, role=Role.ADMIN)
    client = key_client(user, project=elsewhere)
    assert client.get(f"/api/v1/triggers/{trigger.pk}").status_code == 404
    assert client.get("/api/v1/triggers").json()["count"] == 0


def test_deleting_keeps_the_tasks_it_made(api, make_trigger, post_hook):
    trigger, secret = make_trigger("github")
    body = body_of(PUSH)
    post_hook(trigger, body, github_headers(secret, body))
    assert api.delete(f"/api/v1/triggers/{trigger.pk}").status_code == 204
    assert not Delivery.objects.exists() and Task.objects.count() == 1
    assert post_hook(trigger, body, github_headers(secret, body)).status_code == 404


def test_sending_the_same_auth_and_template_back_is_no_change(api, make_trigger):
    trigger, _ = make_trigger("github")
    body = {"auth": "github", "template": str(trigger.template_id), "description": "same scheme"}
    response = api.patch(f"/api/v1/triggers/{trigger.pk}", body, format="json")
    assert response.status_code == 200 and response.json()["description"] == "same scheme"
