from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from accounts.models import User
from tasks.models import Task
from tests.factories import TaskFactory


def problem_of(response: Any, status: int) -> dict[str, Any]:
    """The response's RFC 9457 body, after checking its status and content type."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    return body


def error_fields(body: dict[str, Any]) -> dict[str, str]:
    return {error["field"]: error["code"] for error in body["errors"]}


@pytest.fixture
def task(user: User) -> Task:
    return TaskFactory(created_by=user)


def is_postgres() -> bool:
    return connection.vendor == "postgresql"
