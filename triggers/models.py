"""Inbound triggers: a URL an outside system calls to start a template, and every delivery.

A ``Trigger`` belongs to a project and names a template, how a caller proves itself
(``auth``), which deliveries it acts on (``filters``) and how a delivery's payload becomes the
template's parameters (``mapping``). Each call to ``POST /hooks/<id>`` that gets past the
signature check is a ``Delivery``: one row per (trigger, dedupe key), so a sender's retry of
the same delivery finds the first answer and runs nothing.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Project, ProjectScopedQuerySet
from core.crypto import EncryptedTextField, secrets_in_force
from core.validators import validate_label_text

SLUG_MAX = 100
DESCRIPTION_MAX = 1000
DEDUPE_KEY_MAX = 200
EVENT_MAX = 100
BODY_MIN = 1024
TRIGGERS_PER_PROJECT_MAX = 100
STANDARD_SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks format's prefix
SECRET_BYTES = 32


class Auth(models.TextChoices):
    STANDARD = "standard", "Standard Webhooks signature"
    GITHUB = "github", "GitHub (X-Hub-Signature-256)"
    GITLAB = "gitlab", "GitLab (X-Gitlab-Token)"
    TOKEN = "token", "Bearer token in a header"
    TOKEN_IN_URL = "token_in_url", "Token in the URL (weaker: URLs end up in logs)"


def generate_secret(auth: str) -> str:
    """A new secret for ``auth``: the Standard Webhooks format (``whsec_`` + base64 of 32 random
    bytes) for ``standard``, else 32 random bytes URL-safe (a header or query value as it is)."""
    if auth == Auth.STANDARD:
        return STANDARD_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")
    return secrets.token_urlsafe(SECRET_BYTES)


def default_body_max() -> int:
    """TASKFORGE_TRIGGER_BODY_MAX, within the server's own TASKFORGE_MAX_BODY_BYTES."""
    return min(settings.TASKFORGE_TRIGGER_BODY_MAX, settings.TASKFORGE_MAX_BODY_BYTES)


class TriggerQuerySet(ProjectScopedQuerySet):
    project_field = "project"


class Trigger(models.Model):
    """An inbound URL, ``/hooks/<id>``, that starts ``template`` (see the module docstring).

    The id is the URL: random (UUID4), so a URL cannot be guessed from a project or a slug, and
    an unknown id and a disabled trigger answer the same 404. The secrets are stored encrypted
    (``core.crypto``: they must be read back to check a signature, so they cannot be hashed)
    and shown only by the create and rotate answers. After a rotation the previous secret is
    still accepted until ``previous_secret_expires_at``.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="triggers", db_index=False)
    template = models.ForeignKey(
        "templates_app.Template", on_delete=models.CASCADE, related_name="inbound_triggers"
    )
    slug = models.SlugField(max_length=SLUG_MAX, help_text="Unique in the project; a name for people.")
    description = models.TextField(blank=True, max_length=DESCRIPTION_MAX, validators=[validate_label_text])
    enabled = models.BooleanField(default=True)
    auth = models.CharField(max_length=16, choices=Auth.choices, default=Auth.STANDARD)
    filters = models.JSONField(default=dict, blank=True)
    mapping = models.JSONField(default=dict, blank=True)
    dedupe_path = models.CharField(
        max_length=200,
        blank=True,
        help_text="JSON path of a delivery id in the body, for senders that send no delivery header.",
    )
    max_body_bytes = models.PositiveIntegerField(
        default=default_body_max, validators=[MinValueValidator(BODY_MIN)]
    )
    rate_limit = models.CharField(
        max_length=32, blank=True, help_text="count/period, e.g. 60/1m; empty: TASKFORGE_TRIGGER_RATE_LIMIT."
    )
    secret = EncryptedTextField(editable=False)
    previous_secret = EncryptedTextField(blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = TriggerQuerySet.as_manager()

    class Meta:
        ordering = ("created_at", "id")
        indexes = [models.Index(fields=["project", "created_at", "id"], name="trigger_list_idx")]
        constraints = [
            models.UniqueConstraint(fields=("project", "slug"), name="trigger_unique_slug"),
            models.CheckConstraint(condition=Q(auth__in=Auth.values), name="trigger_auth_valid"),
        ]

    def __str__(self) -> str:
        return self.slug

    @property
    def path(self) -> str:
        """The URL path a sender calls (``?token=<secret>`` added for ``token_in_url``)."""
        return f"/hooks/{self.pk}"

    def accepted_secrets(self, now: datetime | None = None) -> list[str]:
        """The current secret, and the previous one while its grace lasts."""
        return secrets_in_force(
            self.secret, self.previous_secret, self.previous_secret_expires_at, now or timezone.now()
        )


class Outcome(models.TextChoices):
    ACCEPTED = "accepted", "Accepted (a run was queued)"
    IGNORED = "ignored", "Ignored (filtered out, or a ping)"
    REJECTED = "rejected", "Rejected (bad body or parameters)"


class DeliveryQuerySet(ProjectScopedQuerySet):
    project_field = "trigger__project"


class Delivery(models.Model):
    """One authenticated call of a trigger (or an operator's replay of one), and its answer.

    ``dedupe_key`` comes from the sender (``X-GitHub-Delivery``, ``webhook-id``,
    ``X-Gitlab-Event-UUID`` or the trigger's ``dedupe_path``); the unique constraint makes a
    sender's retry of the same delivery lose the race at the database, so it runs nothing and
    answers ``response_status``/``response_body``, the first answer. ``headers`` never holds
    a credential (signatures and tokens are dropped); ``body`` is cut at
    ``TASKFORGE_TRIGGER_STORED_BODY_MAX`` (``body_truncated``).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    trigger = models.ForeignKey(Trigger, on_delete=models.CASCADE, related_name="deliveries", db_index=False)
    dedupe_key = models.CharField(max_length=DEDUPE_KEY_MAX)
    event = models.CharField(max_length=EVENT_MAX, blank=True)
    headers = models.JSONField(default=dict, blank=True)
    body = models.TextField(blank=True)
    body_truncated = models.BooleanField(default=False)
    # GitHub signs neither a timestamp nor the delivery id: the body's digest is what lets a
    # captured delivery re-sent under a fresh X-GitHub-Delivery be recognised (empty otherwise).
    body_sha256 = models.CharField(max_length=64, blank=True, editable=False)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    reason = models.TextField(blank=True, help_text="Why it was ignored or rejected.")
    response_status = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(200), MaxValueValidator(599)]
    )
    response_body = models.JSONField(default=dict)
    task = models.ForeignKey(
        "tasks.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    execution = models.ForeignKey(
        "executions.Execution",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,
    )
    replay_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replays"
    )
    replayed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    duplicates = models.PositiveIntegerField(default=0, help_text="Later calls with the same dedupe key.")
    received_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        verbose_name = "trigger delivery"
        verbose_name_plural = "trigger deliveries"
        ordering = ("-received_at", "-id")
        indexes = [models.Index(fields=["trigger", "-received_at", "-id"], name="trigger_delivery_list_idx")]
        constraints = [
            # Each delivery once: a retry of the same delivery conflicts here and runs nothing.
            models.UniqueConstraint(fields=("trigger", "dedupe_key"), name="trigger_delivery_once"),
            models.UniqueConstraint(
                fields=("trigger", "body_sha256"),
                condition=~Q(body_sha256=""),
                name="trigger_delivery_body_once",
            ),
            models.CheckConstraint(condition=Q(outcome__in=Outcome.values), name="trigger_delivery_outcome"),
        ]

    def __str__(self) -> str:
        return f"{self.trigger_id} {self.dedupe_key} ({self.outcome})"

    @property
    def is_replay(self) -> bool:
        return self.replay_of_id is not None

    def answer(self) -> dict[str, Any]:
        return dict(self.response_body)
