from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts.models import Project, Role, User
from tests.factories import MembershipFactory, UserFactory, make_key


@pytest.fixture(autouse=True)
def _clean_cache(django_db_setup: Any, django_db_blocker: Any) -> None:
    # Rate-limit counters and stream slots live in the shared cache (Redis in CI, the test
    # database's cache table without REDIS_URL): start every test clean. The test database
    # exists first (django_db_setup), so a test whose own database fixture comes later in its
    # setup can still clear a database cache.
    with django_db_blocker.unblock():
        cache.clear()


@pytest.fixture(scope="session", autouse=True)
def _stop_listeners(django_db_setup: Any, django_db_blocker: Any) -> Any:
    # Torn down before the test database is dropped: the ?wait listener holds a connection.
    yield
    from core.listening import dispatcher

    dispatcher.stop()


@pytest.fixture
def user(db: Any) -> User:
    return UserFactory(username="alice")


@pytest.fixture
def other_user(db: Any) -> User:
    return UserFactory(username="mallory")


@pytest.fixture
def project(user: User) -> Project:
    return user.personal_project


@pytest.fixture
def key_client() -> Callable[..., APIClient]:
    """``key_client(user, scopes=[...], **key_fields)`` -> an APIClient sending that key."""

    def make(user: User, scopes: list[str] | None = None, scheme: str = "Api-Key", **extra: Any) -> APIClient:
        api_key, raw = make_key(user, scopes, **extra)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"{scheme} {raw}")
        client.api_key = api_key  # type: ignore[attr-defined]
        client.raw_key = raw  # type: ignore[attr-defined]
        return client

    return make


@pytest.fixture
def api(user: User, key_client: Callable[..., APIClient]) -> APIClient:
    """Alice's client with an all-scopes key."""
    return key_client(user)


@pytest.fixture
def other_api(other_user: User, key_client: Callable[..., APIClient]) -> APIClient:
    return key_client(other_user)


@pytest.fixture
def team(user: User) -> Callable[[str], tuple[Project, User]]:
    """``team(role)`` -> (a shared project where alice is admin, a new user with ``role``)."""

    def make(role: str) -> tuple[Project, User]:
        membership = MembershipFactory(user=user, role=Role.ADMIN)
        other = UserFactory()
        MembershipFactory(project=membership.project, user=other, role=role)
        return membership.project, other

    return make
