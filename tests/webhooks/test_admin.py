"""The operators' admin for webhooks: pages, the secret shown once, actions through the services,
and staff limited to their projects."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.models import Role, User
from tests.factories import MembershipFactory, UserFactory
from tests.webhooks.conftest import PUBLIC_URL
from webhooks import services
from webhooks.models import Delivery, DeliveryStatus, Subscription, Trigger

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> User:
    return User.objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def admin_client(operator: User) -> Client:
    client = Client()
    client.force_login(operator)
    return client


def test_pages_render_with_deliveries_and_the_disabled_reason(admin_client, user):
    subscription, secret = services.subscription_create(
        project=user.personal_project, actor=user, url=PUBLIC_URL
    )
    delivery = services.send_test(subscription=subscription, actor=user)
    services.subscription_disable(subscription_id=subscription.pk, reason="The endpoint answered 410 Gone.")
    listing = admin_client.get("/admin/webhooks/subscription/")
    assert listing.status_code == 200 and "The endpoint answered 410 Gone." in listing.content.decode()
    page = admin_client.get(f"/admin/webhooks/subscription/{subscription.pk}/change/")
    assert page.status_code == 200
    content = page.content.decode()
    assert "webhook.test" in content and "The endpoint answered 410 Gone." in content
    assert secret not in content
    assert admin_client.get("/admin/webhooks/subscription/add/").status_code == 200
    assert admin_client.get("/admin/webhooks/delivery/").status_code == 200
    assert admin_client.get(f"/admin/webhooks/delivery/{delivery.pk}/change/").status_code == 200


def test_add_goes_through_the_service_and_shows_the_secret_once(admin_client, operator):
    form = {
        "project": operator.personal_project.pk,
        "url": PUBLIC_URL,
        "event_types": '["task.failed"]',
        "active": "on",
        "description": "from admin",
        "deliveries-TOTAL_FORMS": 0,
        "deliveries-INITIAL_FORMS": 0,
    }
    response = admin_client.post("/admin/webhooks/subscription/add/", form, follow=True)
    assert response.status_code == 200
    subscription = Subscription.objects.get()
    assert subscription.created_by == operator and subscription.event_types == ["task.failed"]
    assert subscription.secret in response.content.decode()

    refused = admin_client.post("/admin/webhooks/subscription/add/", {**form, "url": "https://10.0.0.1/x"})
    assert refused.status_code == 200 and "private address" in refused.content.decode()
    assert Subscription.objects.count() == 1


def test_test_and_replay_actions(admin_client, user):
    subscription, _ = services.subscription_create(project=user.personal_project, actor=user, url=PUBLIC_URL)
    admin_client.post(
        "/admin/webhooks/subscription/",
        {"action": "send_test", "_selected_action": [subscription.pk]},
    )
    delivery = Delivery.objects.get()
    assert delivery.trigger == Trigger.TEST
    Delivery.objects.update(status=DeliveryStatus.FAILED, next_attempt_at=None)
    admin_client.post("/admin/webhooks/delivery/", {"action": "replay", "_selected_action": [delivery.pk]})
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING and delivery.trigger == Trigger.REPLAY


def test_staff_see_only_their_projects(user, other_user):
    mine = MembershipFactory(user=user, role=Role.ADMIN).project
    services.subscription_create(project=mine, actor=user, url=PUBLIC_URL + "/mine")
    services.subscription_create(
        project=other_user.personal_project, actor=other_user, url=PUBLIC_URL + "/theirs"
    )
    staff = UserFactory(is_staff=True)
    MembershipFactory(project=mine, user=staff, role=Role.ADMIN)
    staff.user_permissions.add(*Permission.objects.filter(content_type__app_label="webhooks"))
    client = Client()
    client.force_login(staff)
    content = client.get("/admin/webhooks/subscription/").content.decode()
    assert "/mine" in content and "/theirs" not in content
    theirs = Subscription.objects.get(url__endswith="/theirs")
    assert client.get(f"/admin/webhooks/subscription/{theirs.pk}/change/").status_code == 302
