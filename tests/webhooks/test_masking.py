"""Who sees a webhook's URL and its receivers' answers (issue 18, item 14).

A webhook URL often carries a credential (a path token, ``?token=``), and a receiver's answer
may echo anything. The project's admins see them whole; members and viewers see
``scheme://host/…``, errors with their URLs masked, and no response bodies.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from accounts.models import Role
from tests.factories import UserFactory
from webhooks.models import Delivery, DeliveryAttempt, DeliveryStatus, Subscription, Trigger
from webhooks.services import mask_url, mask_urls_in

pytestmark = pytest.mark.django_db

URL = "https://93.184.216.34/hooks/T0KEN-path-secret?token=q-secret#frag"
MASKED = "https://93.184.216.34/…"
LOCATION = "https://93.184.216.34/login?session=redirect-secret"
ERROR = f"Redirect (302) to {LOCATION!r} not followed."
BODY = "receiver says body-secret"
SECRETS = ("T0KEN-path-secret", "q-secret", "redirect-secret", "body-secret")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (URL, MASKED),
        ("https://ci.example.com/", "https://ci.example.com/"),
        ("https://ci.example.com", "https://ci.example.com/"),
        ("https://ci.example.com:8443/x", "https://ci.example.com:8443/…"),
        ("https://ci.example.com?token=1", "https://ci.example.com/…"),
        ("https://user:pw@ci.example.com/", "https://ci.example.com/…"),
        ("https://[2001:db8::1]:8443/hook", "https://[2001:db8::1]:8443/…"),
        ("https://[bad/", "…"),
        ("not a url", "…"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_urls_in_text() -> None:
    assert mask_urls_in(ERROR) == "Redirect (302) to 'https://93.184.216.34/…' not followed."
    assert mask_urls_in("HTTP 500.") == "HTTP 500."
    assert mask_urls_in("") == ""


@pytest.fixture
def hook(team: Any, user: Any) -> tuple[Subscription, dict[str, Any]]:
    """A subscription with a secret-bearing URL, one failed delivery and its attempt; and the
    users of its project by role."""
    project, member = team(Role.MEMBER)
    viewer = UserFactory()
    from tests.factories import MembershipFactory

    MembershipFactory(project=project, user=viewer, role=Role.VIEWER)
    subscription = Subscription.objects.create(
        project=project, created_by=user, url=URL, disabled_reason=f"Failing for days; last error: {ERROR}"
    )
    now = timezone.now()
    delivery = Delivery.objects.create(
        subscription=subscription,
        event_type="task.completed",
        trigger=Trigger.EVENT,
        payload='{"type": "task.completed"}',
        status=DeliveryStatus.FAILED,
        next_attempt_at=None,
        created_at=now,
        attempt_count=1,
        last_error=ERROR,
    )
    DeliveryAttempt.objects.create(
        delivery=delivery,
        number=1,
        started_at=now,
        url=URL,
        address="93.184.216.34",
        status_code=302,
        response_body=BODY,
        error=ERROR,
    )
    return subscription, {"admin": user, "member": member, "viewer": viewer}


def reads(client: Any, subscription: Subscription) -> dict[str, Any]:
    base = f"/api/v1/webhooks/{subscription.pk}"
    delivery = subscription.deliveries.get()
    responses = {
        "list": client.get("/api/v1/webhooks"),
        "detail": client.get(base),
        "deliveries": client.get(f"{base}/deliveries"),
        "delivery": client.get(f"{base}/deliveries/{delivery.pk}"),
    }
    for name, response in responses.items():
        assert response.status_code == 200, (name, response.content)
    return responses


@pytest.mark.parametrize("role", ["member", "viewer"])
def test_members_and_viewers_see_masked_values(hook: Any, key_client: Any, role: str) -> None:
    subscription, users = hook
    responses = reads(key_client(users[role]), subscription)
    for name, response in responses.items():
        text = response.content.decode()
        for secret in SECRETS:
            assert secret not in text, (name, secret)
    assert responses["detail"].json()["url"] == MASKED
    assert responses["list"].json()["results"][0]["url"] == MASKED
    assert responses["detail"].json()["disabled_reason"].endswith("'https://93.184.216.34/…' not followed.")
    delivery = responses["delivery"].json()
    assert delivery["last_error"] == "Redirect (302) to 'https://93.184.216.34/…' not followed."
    attempt = delivery["attempts"][0]
    assert attempt["url"] == MASKED
    assert attempt["response_body"] is None
    assert attempt["status_code"] == 302  # what happened stays visible
    assert responses["deliveries"].json()["results"][0]["attempts"][0]["response_body"] is None


def test_admins_see_everything(hook: Any, key_client: Any) -> None:
    subscription, users = hook
    responses = reads(key_client(users["admin"]), subscription)
    assert responses["detail"].json()["url"] == URL
    assert responses["list"].json()["results"][0]["url"] == URL
    attempt = responses["delivery"].json()["attempts"][0]
    assert attempt["url"] == URL and attempt["response_body"] == BODY and attempt["error"] == ERROR
    assert responses["delivery"].json()["last_error"] == ERROR
    assert responses["deliveries"].json()["results"][0]["attempts"][0]["response_body"] == BODY


def test_a_superuser_sees_everything(hook: Any, key_client: Any) -> None:
    subscription, _users = hook
    root = UserFactory(is_superuser=True, is_staff=True)
    responses = reads(key_client(root), subscription)
    assert responses["detail"].json()["url"] == URL
    assert responses["delivery"].json()["attempts"][0]["response_body"] == BODY


def test_a_key_restricted_to_the_project_keeps_its_owners_role(hook: Any, key_client: Any) -> None:
    subscription, users = hook
    admin = key_client(users["admin"], project=subscription.project)
    member = key_client(users["member"], project=subscription.project)
    assert admin.get(f"/api/v1/webhooks/{subscription.pk}").json()["url"] == URL
    assert member.get(f"/api/v1/webhooks/{subscription.pk}").json()["url"] == MASKED


def test_a_list_masks_per_project(hook: Any, key_client: Any, user: Any) -> None:
    """Alice is admin of her personal project and of the team's; the member administers their
    own personal project only: each row is masked by its own project."""
    subscription, users = hook
    member = users["member"]
    own = Subscription.objects.create(project=member.personal_project, created_by=member, url=URL)
    rows = {row["id"]: row["url"] for row in key_client(member).get("/api/v1/webhooks").json()["results"]}
    assert rows == {str(own.pk): URL, str(subscription.pk): MASKED}


def test_writes_answer_admins_whole(api: Any) -> None:
    created = api.post("/api/v1/webhooks", {"url": URL.split("#")[0]}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["url"] == URL.split("#")[0]
    detail = f"/api/v1/webhooks/{created.json()['id']}"
    assert api.post(f"{detail}/rotate-secret").json()["url"] == URL.split("#")[0]
    test = api.post(f"{detail}/test")
    assert test.status_code == 202
