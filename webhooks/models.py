"""Webhook subscriptions, their deliveries and every attempt, and the outbox cursor.

A subscription belongs to a project. The dispatcher (``webhooks.dispatcher``) reads the
events outbox (``events.Event``), makes one ``Delivery`` per matching active subscription and
sends it, logging each try as a ``DeliveryAttempt``. ``webhooks.services`` holds every write
made on behalf of a person (API, admin).
"""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Project, ProjectScopedQuerySet
from core.crypto import EncryptedTextField, secrets_in_force
from core.validators import validate_label_text

# Event types a subscription may ask for. Listed here, not derived from events.EventType, so a
# new internal event type never reaches receivers by accident: add it here to publish it.
EVENT_TYPES: tuple[str, ...] = (
    "task.created",
    "task.updated",
    "task.deleted",
    "task.status_changed",
    "task.claimed",
    "task.released",
    "task.lease_expired",
    "task.completed",
    "task.failed",
    "task.note_added",
    "execution.queued",
    "execution.started",
    "execution.finished",
    "schedule.fired",
    "schedule.skipped",
    "schedule.paused",
)
ALL_EVENTS = "*"
TEST_EVENT_TYPE = "webhook.test"

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32
URL_MAX = 2048
DESCRIPTION_MAX = 1000
SUBSCRIPTIONS_PER_PROJECT_MAX = 50
RESPONSE_BODY_MAX = 4096


def generate_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes: the Standard Webhooks secret format."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def validate_event_types(value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise ValidationError('A non-empty list of event types (or ["*"] for all).', code="not_a_list")
    unknown = [item for item in value if item != ALL_EVENTS and item not in EVENT_TYPES]
    if unknown:
        raise ValidationError(
            "Unknown event type %(type)r; allowed: %(allowed)s, or * for all.",
            code="invalid_choice",
            params={"type": unknown[0], "allowed": ", ".join(EVENT_TYPES)},
        )
    if ALL_EVENTS in value and len(value) > 1:
        raise ValidationError('"*" already means every event type; send it alone.', code="ambiguous")


class SubscriptionQuerySet(ProjectScopedQuerySet):
    project_field = "project"

    def active(self) -> SubscriptionQuerySet:
        return self.filter(active=True)


class Subscription(models.Model):
    """A receiver URL of a project, the event types it wants and the secret that signs them.

    The secret is stored encrypted (``core.crypto``: the dispatcher must sign with it, so it
    cannot be hashed); it is never rendered after the create and rotate responses. During a rotation the old
    secret stays in ``previous_secret`` until ``previous_secret_expires_at``.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhooks", db_index=False)
    url = models.CharField(max_length=URL_MAX, help_text="https URL receiving the deliveries.")
    event_types = models.JSONField(default=list, validators=[validate_event_types])
    active = models.BooleanField(default=True)
    description = models.TextField(blank=True, max_length=DESCRIPTION_MAX, validators=[validate_label_text])
    secret = EncryptedTextField(editable=False, default=generate_secret)
    previous_secret = EncryptedTextField(blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Why the dispatcher switched it off (410, or days of failures); cleared when re-enabled.
    disabled_reason = models.TextField(blank=True, editable=False)
    disabled_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Start of the current run of failed attempts; cleared by any 2xx answer.
    failing_since = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = SubscriptionQuerySet.as_manager()

    class Meta:
        verbose_name = "webhook subscription"
        ordering = ("created_at", "id")
        indexes = [models.Index(fields=["project", "created_at", "id"], name="webhook_list_idx")]

    def __str__(self) -> str:
        return self.url

    def wants(self, event_type: str) -> bool:
        return ALL_EVENTS in self.event_types or event_type in self.event_types

    def signing_secrets(self, now: datetime | None = None) -> list[str]:
        """The secrets to sign with: the current one, and the previous one while it is valid."""
        return secrets_in_force(
            self.secret, self.previous_secret, self.previous_secret_expires_at, now or timezone.now()
        )


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"  # the retry schedule ran out, or 410 Gone
    CANCELLED = "cancelled", "Cancelled"  # its subscription was disabled before it was sent


class Trigger(models.TextChoices):
    EVENT = "event", "Event"
    TEST = "test", "Test"
    REPLAY = "replay", "Replay"


class DeliveryQuerySet(ProjectScopedQuerySet):
    project_field = "subscription__project"

    def due(self, now: datetime) -> DeliveryQuerySet:
        """Pending deliveries whose time has come (or whose sender's lease ran out)."""
        return self.filter(status=DeliveryStatus.PENDING, next_attempt_at__lte=now)


class Delivery(models.Model):
    """One message for one subscription: an event, a test, or a replay of either.

    ``payload`` is the exact body, fixed when the delivery is made, so every retry sends the
    same bytes (only the timestamp and signatures change). ``id`` is the ``webhook-id``
    header, the receiver's idempotency key. While a sender holds it, ``next_attempt_at`` is
    the end of that sender's lease and ``claim_token`` names the sender.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    event = models.ForeignKey(
        "events.Event", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    event_type = models.CharField(max_length=64)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.EVENT)
    payload = models.TextField()
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempt_count = models.PositiveIntegerField(default=0, help_text="Attempts made, replays included.")
    failures = models.PositiveIntegerField(
        default=0, help_text="Failed attempts since it was queued or replayed: the retry schedule's step."
    )
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    claim_token = models.UUIDField(null=True, blank=True, editable=False)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "deliveries"
        ordering = ("-created_at", "-id")
        indexes = [
            models.Index(fields=["subscription", "-created_at", "-id"], name="delivery_list_idx"),
            # The dispatcher's claim: pending deliveries by due time.
            models.Index(fields=["next_attempt_at"], condition=Q(status="pending"), name="delivery_due_idx"),
        ]
        constraints = [
            # One delivery per event and subscription: fan-out may safely see an event twice.
            models.UniqueConstraint(fields=("subscription", "event"), name="delivery_unique_event"),
            models.CheckConstraint(
                condition=Q(status__in=DeliveryStatus.values), name="delivery_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(status="pending", next_attempt_at__isnull=False)
                | (~Q(status="pending") & Q(next_attempt_at__isnull=True)),
                name="delivery_due_iff_pending",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} -> {self.subscription_id} ({self.status})"

    @property
    def message_id(self) -> str:
        return f"msg_{self.pk.hex}"


class DeliveryAttempt(models.Model):
    """One HTTP try of a delivery: what was answered, how fast, or what went wrong."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempts", db_index=False)
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    url = models.CharField(max_length=URL_MAX)
    address = models.CharField(max_length=64, blank=True, help_text="The IP address connected to.")
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True, help_text="The first 4 KiB of the answer.")
    error = models.TextField(blank=True)

    class Meta:
        ordering = ("started_at", "id")
        indexes = [models.Index(fields=["delivery", "started_at"], name="attempt_delivery_idx")]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class OutboxCursor(models.Model):
    """How far fan-out has read the events outbox (one row, id 1).

    ``last_event_id``: every event id up to it was either seen or recorded in ``gaps``.
    ``gaps``: ``[[low, high, first_seen_epoch], ...]`` ranges of ids below ``last_event_id``
    not seen yet, because their transaction had not committed (PostgreSQL hands out ids at
    insert, commits in any order) or rolled back. They are read again on every pass until
    found, and forgotten after ``TASKFORGE_WEBHOOK_OUTBOX_GAP_SECONDS``.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_event_id = models.BigIntegerField(default=0)
    gaps = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "outbox cursor"

    def __str__(self) -> str:
        return f"events read up to {self.last_event_id} ({len(self.gaps)} gaps)"
