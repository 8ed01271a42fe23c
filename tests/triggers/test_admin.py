"""The trigger admin: the URL and the sender's settings, the secret shown once, replays."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.test import Client

from accounts.models import User
from tasks.models import Task
from tests.triggers.conftest import PUSH, body_of, github_headers
from triggers.models import Delivery, Trigger

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(user: User) -> Client:
    user.is_staff = user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    ("auth", "shows"),
    [
        ("github", ["GitHub: Settings", "Payload URL", "application/json"]),
        ("gitlab", ["GitLab: Settings", "Secret token"]),
        ("token_in_url", ["?token=&lt;secret&gt;", "Weaker"]),
    ],
)
def test_the_change_page_shows_the_url_and_what_to_paste(operator, make_trigger, auth, shows):
    trigger, secret = make_trigger(auth)
    page = operator.get(f"/admin/triggers/trigger/{trigger.pk}/change/").content.decode()
    assert f"http://testserver/hooks/{trigger.pk}" in page
    for text in shows:
        assert text in page
    assert secret not in page


def test_adding_in_the_admin_shows_the_secret_once(operator, project, deploy_template):
    response = operator.post(
        "/admin/triggers/trigger/add/",
        {
            "project": project.pk,
            "template": deploy_template.pk,
            "slug": "from-admin",
            "enabled": "on",
            "auth": "gitlab",
            "filters": "{}",
            "mapping": '{"branch": "$.ref"}',
            "max_body_bytes": 1048576,
            "deliveries-TOTAL_FORMS": 0,
            "deliveries-INITIAL_FORMS": 0,
        },
        follow=True,
    )
    trigger = Trigger.objects.get(slug="from-admin")
    shown = [str(m) for m in get_messages(response.wsgi_request)] + [response.content.decode()]
    assert any(trigger.secret in text for text in shown)


def test_a_secret_mapping_is_refused_in_the_admin_too(operator, project, deploy_template):
    response = operator.post(
        "/admin/triggers/trigger/add/",
        {
            "project": project.pk,
            "template": deploy_template.pk,
            "slug": "bad",
            "auth": "github",
            "filters": "{}",
            "mapping": '{"branch": "$.ref", "token": "$.token"}',
            "max_body_bytes": 1048576,
            "deliveries-TOTAL_FORMS": 0,
            "deliveries-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code == 200
    assert "secret parameter" in response.content.decode()
    assert not Trigger.objects.exists()


def test_rotate_and_replay_actions(operator, make_trigger, post_hook):
    trigger, old = make_trigger("github")
    response = operator.post(
        "/admin/triggers/trigger/",
        {"action": "rotate_secret", "_selected_action": [str(trigger.pk)]},
        follow=True,
    )
    trigger.refresh_from_db()
    assert trigger.secret != old
    assert any(trigger.secret in str(m) for m in get_messages(response.wsgi_request))
    body = body_of(PUSH)
    post_hook(trigger, body, github_headers(trigger.secret, body))
    delivery = Delivery.objects.get()
    operator.post(
        "/admin/triggers/delivery/", {"action": "replay", "_selected_action": [str(delivery.pk)]}, follow=True
    )
    assert Delivery.objects.filter(replay_of=delivery).count() == 1
    assert Task.objects.count() == 2
    page = operator.get(f"/admin/triggers/trigger/{trigger.pk}/change/").content.decode()
    assert "recent deliveries" in page.lower()
