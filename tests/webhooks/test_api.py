"""The webhooks API: the secret shown once, validation, roles, scopes and the 404 rule."""

from __future__ import annotations

import base64

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Role
from tasks import services as task_services
from tests.tasks.conftest import error_fields, problem_of
from tests.webhooks.conftest import PUBLIC_URL
from webhooks import services
from webhooks.dispatcher import fan_out
from webhooks.models import Delivery, DeliveryStatus, Subscription, Trigger

pytestmark = pytest.mark.django_db


def create(client, **body):
    return client.post("/api/v1/webhooks", {"url": PUBLIC_URL, **body}, format="json")


def test_create_shows_the_secret_once(api, user):
    response = create(api, event_types=["task.completed", "task.failed"], description="CI")
    assert response.status_code == 201, response.content
    body = response.json()
    secret = body["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert body["project"] == str(user.personal_project.pk)
    assert body["event_types"] == ["task.completed", "task.failed"]
    assert body["active"] is True and body["disabled_reason"] == ""
    assert response["Location"].endswith(f"/api/v1/webhooks/{body['id']}")

    detail = api.get(f"/api/v1/webhooks/{body['id']}")
    assert detail.status_code == 200 and "secret" not in detail.json()
    listing = api.get("/api/v1/webhooks")
    assert listing.json()["count"] == 1
    for response in (detail, listing):
        assert secret not in response.content.decode()
        assert secret.removeprefix("whsec_") not in response.content.decode()


def test_event_types_default_to_all(api):
    assert create(api).json()["event_types"] == ["*"]


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"url": "http://93.184.216.34/hook"}, "url", "https_required"),
        ({"url": "https://127.0.0.1/hook"}, "url", "forbidden_address"),
        ({"url": "https://169.254.169.254/latest"}, "url", "forbidden_address"),
        ({"url": "https://[::ffff:10.0.0.1]/hook"}, "url", "forbidden_address"),
        ({"url": "https://localhost/hook"}, "url", "forbidden_address"),
        ({"url": "https://user:pw@93.184.216.34/"}, "url", "userinfo"),
        ({"url": ""}, "url", "blank"),
        ({"url": "https://93.184.216.34/" + "a" * 2100}, "url", "max_length"),
        ({"event_types": ["task.exploded"]}, "event_types[0]", "invalid_choice"),
        ({"event_types": []}, "event_types", "min_length"),
        ({"event_types": ["*", "task.created"]}, "event_types", "ambiguous"),
        ({"event_types": "task.created"}, "event_types", "not_a_list"),
        ({"description": "x" * 1001}, "description", "max_length"),
        ({"active": "maybe"}, "active", "invalid"),
    ],
)
def test_validation_errors_name_the_field(api, body, field, code):
    body_problem = problem_of(create(api, **body), 400)
    assert error_fields(body_problem).get(field) == code, body_problem
    assert not Subscription.objects.exists()


def test_url_must_resolve(api, monkeypatch):
    def nxdomain(host, port):
        raise OSError("Name or service not known")

    monkeypatch.setattr("webhooks.ssrf.system_resolver", nxdomain)
    body = problem_of(create(api, url="https://hooks.nowhere.example/x"), 400)
    assert error_fields(body) == {"url": "unresolvable"}


def test_a_name_resolving_to_a_private_address_is_refused(api, monkeypatch):
    monkeypatch.setattr("webhooks.ssrf.system_resolver", lambda host, port: ["10.0.0.5"])
    body = problem_of(create(api, url="https://internal.example.com/x"), 400)
    assert error_fields(body) == {"url": "forbidden_address"}
    assert "10.0.0.5" in body["detail"]


def test_private_targets_with_the_development_setting(api, settings):
    settings.TASKFORGE_WEBHOOK_ALLOW_PRIVATE = True
    settings.TASKFORGE_WEBHOOK_ALLOW_HTTP = True
    assert create(api, url="http://127.0.0.1:9000/hook").status_code == 201


def test_project_rules(api, other_user, team, key_client):
    body = problem_of(create(api, project=str(other_user.personal_project.pk)), 400)
    assert error_fields(body) == {"project": "does_not_exist"}

    project, member = team(Role.MEMBER)
    assert create(api, project=str(project.pk)).status_code == 201  # alice is its admin
    body = problem_of(create(key_client(member), project=str(project.pk)), 403)
    assert "admin" in body["detail"]

    # A key restricted to a project creates there by default.
    restricted = key_client(project.memberships.get(role=Role.ADMIN).user, project=project)
    assert create(restricted).json()["project"] == str(project.pk)


def make_team_webhook(team, role):
    project, other = team(role)
    admin = project.memberships.get(role=Role.ADMIN).user
    subscription, _ = services.subscription_create(project=project, actor=admin, url=PUBLIC_URL)
    delivery = services.send_test(subscription=subscription, actor=admin)
    return subscription, delivery, other


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_non_admins_read_but_cannot_write(team, key_client, role):
    subscription, delivery, other = make_team_webhook(team, role)
    client = key_client(other)
    base = f"/api/v1/webhooks/{subscription.pk}"
    assert client.get(base).status_code == 200
    assert client.get(f"{base}/deliveries").status_code == 200
    assert client.get(f"{base}/deliveries/{delivery.pk}").status_code == 200
    for method, url in [
        ("patch", base),
        ("delete", base),
        ("post", f"{base}/rotate-secret"),
        ("post", f"{base}/test"),
        ("post", f"{base}/deliveries/{delivery.pk}/replay"),
    ]:
        response = getattr(client, method)(url, {"description": "x"}, format="json")
        assert problem_of(response, 403)["type"].endswith("insufficient-role"), (method, url)
    assert Subscription.objects.get().description == ""


def test_read_scope_cannot_write(user, key_client):
    subscription, _ = services.subscription_create(project=user.personal_project, actor=user, url=PUBLIC_URL)
    reader = key_client(user, ["webhook:read"])
    assert reader.get("/api/v1/webhooks").status_code == 200
    for response in (
        create(reader),
        reader.patch(f"/api/v1/webhooks/{subscription.pk}", {"active": False}, format="json"),
        reader.post(f"/api/v1/webhooks/{subscription.pk}/rotate-secret"),
        reader.post(f"/api/v1/webhooks/{subscription.pk}/test"),
        reader.delete(f"/api/v1/webhooks/{subscription.pk}"),
    ):
        assert problem_of(response, 403)["required_scope"] == "webhook:write"
    tasks_only = key_client(user, ["task:write"])
    assert problem_of(tasks_only.get("/api/v1/webhooks"), 403)["required_scope"] == "webhook:read"


def test_another_projects_webhook_is_404_on_every_verb(api, other_user):
    subscription, _ = services.subscription_create(
        project=other_user.personal_project, actor=other_user, url=PUBLIC_URL
    )
    delivery = services.send_test(subscription=subscription, actor=other_user)
    base = f"/api/v1/webhooks/{subscription.pk}"
    for method, url in [
        ("get", base),
        ("patch", base),
        ("delete", base),
        ("post", f"{base}/rotate-secret"),
        ("post", f"{base}/test"),
        ("get", f"{base}/deliveries"),
        ("get", f"{base}/deliveries/{delivery.pk}"),
        ("post", f"{base}/deliveries/{delivery.pk}/replay"),
    ]:
        assert getattr(api, method)(url, {}, format="json").status_code == 404, (method, url)
    assert api.get("/api/v1/webhooks").json()["count"] == 0
    # Nor can one's own webhook reach another's delivery.
    own = create(api).json()["id"]
    assert api.get(f"/api/v1/webhooks/{own}/deliveries/{delivery.pk}").status_code == 404
    assert api.post(f"/api/v1/webhooks/{own}/deliveries/{delivery.pk}/replay").status_code == 404


def test_patch_and_disable_reason(api):
    webhook = create(api).json()
    url = f"/api/v1/webhooks/{webhook['id']}"
    response = api.patch(url, {"event_types": ["task.failed"], "description": "ops"}, format="json")
    assert response.status_code == 200
    assert response.json()["event_types"] == ["task.failed"] and "secret" not in response.json()

    off = api.patch(url, {"active": False}, format="json").json()
    assert off["active"] is False and off["disabled_reason"] == "Disabled by its owner."
    on = api.patch(url, {"active": True}, format="json").json()
    assert on["active"] is True and on["disabled_reason"] == "" and on["disabled_at"] is None

    body = problem_of(api.patch(url, {"url": "https://10.0.0.1/"}, format="json"), 400)
    assert error_fields(body) == {"url": "forbidden_address"}
    assert problem_of(api.patch(url, {}, format="json"), 400)
    assert api.put(url, {"url": PUBLIC_URL}, format="json").status_code == 405


def test_a_disabled_reason_from_the_dispatcher_is_visible(api, user):
    webhook = create(api).json()
    services.subscription_disable(subscription_id=webhook["id"], reason="The endpoint answered 410 Gone.")
    body = api.get(f"/api/v1/webhooks/{webhook['id']}").json()
    assert body["active"] is False and body["disabled_reason"] == "The endpoint answered 410 Gone."


def test_rotate_secret_shows_the_new_one_once(api):
    webhook = create(api).json()
    response = api.post(f"/api/v1/webhooks/{webhook['id']}/rotate-secret")
    assert response.status_code == 200
    body = response.json()
    assert body["secret"] != webhook["secret"] and body["secret"].startswith("whsec_")
    assert body["secret_rotation_ends_at"] is not None
    subscription = Subscription.objects.get()
    assert subscription.signing_secrets() == [body["secret"], webhook["secret"]]
    assert "secret" not in api.get(f"/api/v1/webhooks/{webhook['id']}").json()


def test_test_delivery_log_and_replay(api, user):
    webhook = create(api).json()
    base = f"/api/v1/webhooks/{webhook['id']}"
    response = api.post(f"{base}/test")
    assert response.status_code == 202
    test = response.json()
    assert test["event_type"] == "webhook.test" and test["trigger"] == "test" and test["status"] == "pending"
    assert test["payload"]["type"] == "webhook.test" and test["webhook_id"].startswith("msg_")

    task_services.task_create(project=user.personal_project, actor=user, name="x")
    fan_out()
    log = api.get(f"{base}/deliveries").json()
    assert log["count"] == 2
    assert [d["event_type"] for d in log["results"]] == ["task.created", "webhook.test"]
    assert api.get(f"{base}/deliveries?status=succeeded").json()["count"] == 0
    assert problem_of(api.get(f"{base}/deliveries?status=nope"), 400)

    Delivery.objects.filter(pk=test["id"]).update(
        status=DeliveryStatus.FAILED, next_attempt_at=None, failures=9, attempt_count=10
    )
    replayed = api.post(f"{base}/deliveries/{test['id']}/replay")
    assert replayed.status_code == 202
    assert replayed.json()["status"] == "pending" and replayed.json()["trigger"] == Trigger.REPLAY
    assert replayed.json()["webhook_id"] == test["webhook_id"]
    assert Delivery.objects.get(pk=test["id"]).failures == 0

    Delivery.objects.filter(pk=test["id"]).update(claim_token="00000000-0000-0000-0000-000000000001")
    body = problem_of(api.post(f"{base}/deliveries/{test['id']}/replay"), 409)
    assert body["type"].endswith("delivery-in-flight")


def test_delete(api):
    webhook = create(api).json()
    api.post(f"/api/v1/webhooks/{webhook['id']}/test")
    assert api.delete(f"/api/v1/webhooks/{webhook['id']}").status_code == 204
    assert not Subscription.objects.exists() and not Delivery.objects.exists()
    assert api.get(f"/api/v1/webhooks/{webhook['id']}").status_code == 404


def queries_for(client, url):
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def test_lists_cost_the_same_for_one_row_or_many(api, user):
    subscription = Subscription.objects.get(pk=create(api).json()["id"])
    services.send_test(subscription=subscription, actor=user)
    deliveries = f"/api/v1/webhooks/{subscription.pk}/deliveries"
    baseline = queries_for(api, "/api/v1/webhooks"), queries_for(api, deliveries)
    for _ in range(5):
        create(api)
        services.send_test(subscription=subscription, actor=user)
    assert (queries_for(api, "/api/v1/webhooks"), queries_for(api, deliveries)) == baseline


def test_per_project_limit(api, monkeypatch):
    monkeypatch.setattr("webhooks.services.SUBSCRIPTIONS_PER_PROJECT_MAX", 2)
    create(api)
    create(api)
    assert problem_of(create(api), 409)["type"].endswith("limit-reached")
