"""Services: the state machine, the outbox, dependencies, the reaper."""

from __future__ import annotations

import itertools
from datetime import timedelta
from io import StringIO
from unittest import mock

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone

from core.errors import Conflict
from events.models import Event, EventType
from tasks import services
from tasks.models import TRANSITIONS, Status, Task
from tests.factories import TaskFactory

pytestmark = pytest.mark.django_db

ALLOWED = [(old, new) for old, targets in TRANSITIONS.items() for new in targets]
FORBIDDEN = [(old, new) for old in Status.values for new in Status.values if new not in TRANSITIONS[old]]


def test_the_table_is_the_spec():
    assert TRANSITIONS == {
        "pending": ("queued", "running", "cancelled"),
        "queued": ("running", "cancelled"),
        "running": ("completed", "failed", "cancelled"),
        "completed": ("pending", "queued"),
        "failed": ("pending", "queued"),
        "cancelled": ("pending", "queued"),
    }


@pytest.mark.parametrize(("old", "new"), ALLOWED)
def test_every_allowed_transition(user, old, new):
    task = TaskFactory(created_by=user, status=old)
    moved = services.task_move(task=task, to_status=new, actor=user)
    assert moved.status == new
    event = Event.objects.get(task=task, type=EventType.TASK_STATUS_CHANGED)
    assert event.data == {"from": old, "to": new, "reason": "move"}
    assert event.actor == user


@pytest.mark.parametrize(("old", "new"), FORBIDDEN)
def test_every_forbidden_transition_is_a_conflict_listing_allowed(user, old, new):
    task = TaskFactory(created_by=user, status=old)
    with pytest.raises(Conflict) as caught:
        services.task_move(task=task, to_status=new, actor=user)
    assert caught.value.extra["allowed"] == list(TRANSITIONS[old])
    assert caught.value.get_codes() == "invalid_transition"
    task.refresh_from_db()
    assert task.status == old
    assert not Event.objects.filter(task=task).exists()


def test_back_to_pending_clears_the_claim(user):
    task = TaskFactory(created_by=user)
    services.task_claim(task=task, actor=user)
    services.task_complete(task=task, actor=user, result={"ok": True})
    task.refresh_from_db()
    assert task.claimed_by == user  # who did it stays on record
    assert task.lease_expires_at is None
    task = services.task_move(task=task, to_status=Status.PENDING, actor=user)
    assert (task.claimed_by, task.claimed_at, task.lease_expires_at) == (None, None, None)
    assert task.result == {"ok": True}


def test_a_change_and_its_event_share_one_transaction(user):
    task = TaskFactory(created_by=user)
    with (
        mock.patch("tasks.services.events_record", side_effect=RuntimeError("outbox down")),
        pytest.raises(RuntimeError),
    ):
        services.task_move(task=task, to_status=Status.QUEUED, actor=user)
    task.refresh_from_db()
    assert task.status == Status.PENDING
    services.task_claim(task=task, actor=user)
    with (
        mock.patch("tasks.services.events_record", side_effect=RuntimeError("outbox down")),
        pytest.raises(RuntimeError),
    ):
        services.task_complete(task=task, actor=user, result={"ok": True})
    task.refresh_from_db()
    assert (task.status, task.result) == (Status.RUNNING, None)
    with (
        mock.patch("tasks.services.event_record", side_effect=RuntimeError("outbox down")),
        pytest.raises(RuntimeError),
    ):
        services.task_create(project=user.personal_project, actor=user, name="ghost")
    assert not Task.objects.filter(name="ghost").exists()


def test_update_records_changed_fields_only(user):
    task = TaskFactory(created_by=user, priority=5)
    services.task_update(task=task, actor=user, fields={"priority": 5})
    assert not Event.objects.filter(task=task).exists()
    services.task_update(task=task, actor=user, fields={"priority": 6, "name": task.name})
    assert Event.objects.get(task=task).data == {"fields": ["priority"]}


def test_update_validates_with_the_model_rules(user):
    task = TaskFactory(created_by=user)
    with pytest.raises(ValidationError) as caught:
        services.task_update(task=task, actor=user, fields={"priority": 11, "tags": ["no spaces"]})
    assert set(caught.value.message_dict) == {"priority", "tags"}


def test_long_cycle_is_found(user):
    chain = TaskFactory.create_batch(6, created_by=user)
    for first, second in itertools.pairwise(chain):
        services.task_update(task=first, actor=user, fields={"depends_on": [second.pk]})
    with pytest.raises(ValidationError) as caught:
        services.task_update(task=chain[-1], actor=user, fields={"depends_on": [chain[0].pk]})
    assert caught.value.error_dict["depends_on"][0].code == "cycle"
    # A diamond is not a cycle.
    services.task_update(task=chain[0], actor=user, fields={"depends_on": [chain[1].pk, chain[2].pk]})


def test_delete_keeps_the_history(user):
    task = TaskFactory(created_by=user)
    services.task_update(task=task, actor=user, fields={"priority": 1})
    services.task_delete(task=task, actor=user)
    assert list(Event.objects.filter(task_id=task.pk).values_list("type", flat=True)) == [
        "task.updated",
        "task.deleted",
    ]


def test_deleting_a_dependency_unblocks_its_dependents(user):
    first, second = TaskFactory.create_batch(2, created_by=user)
    services.task_update(task=second, actor=user, fields={"depends_on": [first.pk]})
    assert Task.objects.claimable().filter(pk=second.pk).count() == 0
    services.task_delete(task=first, actor=user)
    assert Task.objects.claimable().filter(pk=second.pk).count() == 1


def test_reaper_returns_lapsed_claims_and_records_it(user):
    lapsed, fresh = TaskFactory.create_batch(2, created_by=user)
    services.task_claim(task=lapsed, actor=user, lease_seconds=10)
    services.task_claim(task=fresh, actor=user, lease_seconds=300)
    Task.objects.filter(pk=lapsed.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert services.reap_expired_claims() == 1
    lapsed.refresh_from_db()
    fresh.refresh_from_db()
    assert lapsed.status == Status.PENDING
    assert lapsed.claimed_by is None
    assert fresh.status == Status.RUNNING
    event = Event.objects.get(task=lapsed, type=EventType.TASK_LEASE_EXPIRED)
    assert event.actor is None
    assert event.data["claimed_by"] == user.pk
    assert services.reap_expired_claims() == 0


def test_reap_claims_command(user):
    task = TaskFactory(created_by=user)
    services.task_claim(task=task, actor=user)
    Task.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now() - timedelta(minutes=1))
    out = StringIO()
    call_command("reap_claims", stdout=out)
    assert "Returned 1 expired claim to pending" in out.getvalue()
    task.refresh_from_db()
    assert task.status == Status.PENDING


def test_note_create_records_an_event(user):
    task = TaskFactory(created_by=user)
    note = services.note_create(task=task, actor=user, body="  hello ")
    assert note.body == "hello"
    assert Event.objects.get(task=task).data == {"note": note.pk}
