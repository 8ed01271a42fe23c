"""Races at 50: fifty concurrent claims of one task, fifty agents on claim-next over a pool
of ten. (Fifty concurrent requests with one Idempotency-Key are in
tests/templates_app/test_idempotency.py.)"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Role
from core.errors import Conflict
from events.models import Event, EventType
from tasks import services
from tasks.models import Status, Task
from tests.factories import TaskFactory, UserFactory
from tests.tasks.test_claims import run_concurrently

RACERS = 50


@pytest.mark.django_db(transaction=True)
def test_fifty_claimers_on_one_task_exactly_one_wins() -> None:
    users = [UserFactory() for _ in range(RACERS)]
    project = users[0].personal_project
    for agent in users[1:]:
        project.memberships.create(user=agent, role=Role.MEMBER)
    task = TaskFactory(created_by=users[0], project=project)

    def claim(index: int) -> str:
        try:
            services.task_claim(task=Task.objects.get(pk=task.pk), actor=users[index])
            return "won"
        except Conflict:
            return "lost"

    results = run_concurrently(RACERS, claim)
    assert Counter(results) == {"won": 1, "lost": RACERS - 1}, results
    task.refresh_from_db()
    assert task.status == Status.RUNNING
    assert users.index(task.claimed_by) == results.index("won")
    assert Event.objects.filter(task=task, type=EventType.TASK_CLAIMED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_fifty_agents_on_claim_next_over_ten_tasks() -> None:
    owner = UserFactory()
    project = owner.personal_project
    agents = [UserFactory() for _ in range(RACERS)]
    for agent in agents:
        project.memberships.create(user=agent, role=Role.MEMBER)
    now = timezone.now()
    Task.objects.bulk_create(
        Task(project=project, name=f"t{i}", priority=i % 3, created_at=now - timedelta(seconds=i))
        for i in range(10)
    )

    def claim_one(index: int) -> str | None:
        task = services.task_claim_next(actor=agents[index])
        return str(task.pk) if task is not None else None

    results = run_concurrently(RACERS, claim_one)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    won = [r for r in results if r is not None]
    assert len(won) == 10 and len(set(won)) == 10, results
    assert Task.objects.filter(status=Status.RUNNING).count() == 10
    assert Event.objects.filter(type=EventType.TASK_CLAIMED).count() == 10
