"""The secrets admin: write-only value ("set" / "not set"), services behind every change, roles."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import Role
from events.models import Event
from tests.factories import MembershipFactory, UserFactory
from vault.models import Secret

pytestmark = pytest.mark.django_db


def staff_client(user) -> Client:
    user.is_staff = True
    user.is_superuser = False
    user.save()
    from django.contrib.auth.models import Permission

    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="vault"))
    client = Client()
    client.force_login(user)
    return client


def test_admins_add_and_replace_without_ever_seeing_the_value(user, project):
    client = staff_client(user)
    value = "admin-set-value-0001"
    added = client.post(
        "/admin/vault/secret/add/",
        {"project": project.pk, "name": "API_TOKEN", "description": "d", "new_value": value},
    )
    assert added.status_code == 302, added.content.decode()[:2000]
    secret = Secret.objects.get()
    assert secret.value == value and secret.created_by == user
    assert Event.objects.filter(type="secret.created").count() == 1
    page = client.get(f"/admin/vault/secret/{secret.pk}/change/").content.decode()
    assert value not in page and '<div class="readonly">set</div>' in page
    # Saving with the value left empty keeps it; a new one replaces it.
    client.post(f"/admin/vault/secret/{secret.pk}/change/", {"description": "changed", "new_value": ""})
    secret.refresh_from_db()
    assert secret.value == value and secret.description == "changed"
    client.post(
        f"/admin/vault/secret/{secret.pk}/change/",
        {"description": "changed", "new_value": "second-value-0002"},
    )
    secret.refresh_from_db()
    assert secret.value == "second-value-0002"
    for url in (
        "/admin/vault/secret/",
        f"/admin/vault/secret/{secret.pk}/change/",
        f"/admin/vault/secret/{secret.pk}/history/",
    ):
        body = client.get(url).content.decode()
        assert value not in body and "second-value-0002" not in body, url
    assert client.post(f"/admin/vault/secret/{secret.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Secret.objects.exists() and Event.objects.filter(type="secret.deleted").exists()


def test_a_new_secret_needs_a_value_and_a_good_unique_name(user, project):
    client = staff_client(user)
    Secret.objects.create(project=project, name="TAKEN", value="x" * 8)
    for body in (
        {"name": "NEW", "new_value": ""},
        {"name": "1bad", "new_value": "v" * 8},
        {"name": "TAKEN", "new_value": "v" * 8},
    ):
        response = client.post("/admin/vault/secret/add/", {"project": project.pk, **body})
        assert response.status_code == 200 and response.context["errors"], body
    assert Secret.objects.count() == 1


def test_a_viewer_sees_metadata_and_changes_nothing(user, project):
    secret = Secret.objects.create(project=project, name="VIEWED", value="viewer-cannot-see-1")
    viewer = UserFactory()
    MembershipFactory(project=project, user=viewer, role=Role.VIEWER)
    client = staff_client(viewer)
    page = client.get(f"/admin/vault/secret/{secret.pk}/change/")
    assert page.status_code == 200 and "viewer-cannot-see-1" not in page.content.decode()
    client.post(f"/admin/vault/secret/{secret.pk}/change/", {"description": "x", "new_value": "stolen-1234"})
    secret.refresh_from_db()
    assert secret.value == "viewer-cannot-see-1"
