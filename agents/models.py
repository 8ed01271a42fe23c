"""The agent registry: agents of a project, their labels, capacity, liveness and state.

An agent's **state** is computed, never stored as such: ``offline`` when it has not been heard
from within ``TASKFORGE_AGENT_HEARTBEAT_SECONDS * TASKFORGE_AGENT_MISSED_HEARTBEATS`` (or the
sweep marked it so), else what its operator set (``mode``): ``draining``, ``paused`` (until
``paused_until``, if given) or ``online``. ``AgentQuerySet.with_state`` computes the same in
SQL, so a list filter and a claim agree with what a page shows.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Case, Q, Value, When
from django.utils import timezone

from accounts.models import ApiKey, Project, ProjectScopedQuerySet
from core.validators import validate_name

NAME_MAX = 64
TEXT_MAX = 64
NOTE_MAX = 1000
CAPACITY_MIN, CAPACITY_MAX, CAPACITY_DEFAULT = 1, 1000, 1
LABELS_MAX = 32
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9_.:/+-]{0,128}$")


class Mode(models.TextChoices):
    """What the agent's operator asked of it."""

    ACTIVE = "active", "Active"
    PAUSED = "paused", "Paused"
    DRAINING = "draining", "Draining"


class AgentState(models.TextChoices):
    ONLINE = "online", "Online"
    DRAINING = "draining", "Draining"
    PAUSED = "paused", "Paused"
    OFFLINE = "offline", "Offline"


def offline_after() -> timedelta:
    """How long an agent may stay silent before it counts as offline."""
    return timedelta(
        seconds=settings.TASKFORGE_AGENT_HEARTBEAT_SECONDS * settings.TASKFORGE_AGENT_MISSED_HEARTBEATS
    )


# --- Labels (an agent's, and the ones a task requires) ---------------------------------------------
def parse_labels(value: Any, *, field: str = "labels") -> dict[str, str]:
    """``{"os": "linux"}`` or ``["os=linux"]`` as a dict; ValidationError naming ``field``."""
    if isinstance(value, list):
        pairs: dict[str, Any] = {}
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise ValidationError(
                    {field: [ValidationError(f"{item!r} is not key=value.", code="invalid_label")]}
                )
            key, _, label_value = item.partition("=")
            pairs[key] = label_value
        value = pairs
    validate_labels(value, field=field)
    return dict(value)


def validate_labels(value: Any, *, field: str = "labels") -> None:
    def refuse(message: str, code: str) -> ValidationError:
        return ValidationError({field: [ValidationError(message, code=code)]})

    if not isinstance(value, dict):
        raise refuse("Must be an object of key -> value (or a list of key=value).", "not_an_object")
    if len(value) > LABELS_MAX:
        raise refuse(f"At most {LABELS_MAX} labels (got {len(value)}).", "max_items")
    for key, label_value in value.items():
        if not LABEL_KEY_RE.match(str(key)):
            raise refuse(f"Label key {key!r}: 1-64 of A-Z a-z 0-9 _ . : / -.", "invalid_label")
        if not isinstance(label_value, str) or not LABEL_VALUE_RE.match(label_value):
            raise refuse(
                f"Label {key!r}: the value must be a string of 0-128 of A-Z a-z 0-9 _ . : / + -.",
                "invalid_label",
            )


def _validate_labels_field(value: Any) -> None:
    try:
        validate_labels(value)
    except ValidationError as exc:
        raise ValidationError(exc.message_dict["labels"]) from None


def labels_match(required: dict[str, str], labels: dict[str, str]) -> bool:
    """True when ``labels`` carry every one of ``required`` (the same rule as the SQL)."""
    return all(labels.get(key) == value for key, value in required.items())


# --- Agents ------------------------------------------------------------------------------------------
class AgentQuerySet(ProjectScopedQuerySet):
    def alive(self) -> AgentQuerySet:
        """Registered agents (not deleted)."""
        return self.filter(deleted_at__isnull=True)

    def with_state(self, now: datetime | None = None) -> AgentQuerySet:
        """Annotate ``computed_state`` (an ``AgentState``), computed as ``Agent.state_at`` does."""
        now = now or timezone.now()
        cutoff = now - offline_after()
        offline = (
            Q(offline_since__isnull=False)
            | Q(last_heartbeat_at__isnull=True)
            | Q(last_heartbeat_at__lt=cutoff)
        )
        paused = Q(mode=Mode.PAUSED) & (Q(paused_until__isnull=True) | Q(paused_until__gt=now))
        return self.annotate(
            computed_state=Case(
                When(offline, then=Value(AgentState.OFFLINE)),
                When(mode=Mode.DRAINING, then=Value(AgentState.DRAINING)),
                When(paused, then=Value(AgentState.PAUSED)),
                default=Value(AgentState.ONLINE),
                output_field=models.CharField(),
            )
        )

    def ready(self, now: datetime | None = None) -> AgentQuerySet:
        """Agents that take new work now: registered and online."""
        return self.alive().with_state(now).filter(computed_state=AgentState.ONLINE)

    def lapsed(self, now: datetime | None = None) -> AgentQuerySet:
        """Agents not yet marked offline whose last sign of life is older than the threshold."""
        cutoff = (now or timezone.now()) - offline_after()
        return self.alive().filter(offline_since__isnull=True, last_heartbeat_at__lt=cutoff)


class Agent(models.Model):
    """A registered agent of a project: who it is, what it can take (labels, capacity), whether
    it is alive (heartbeats) and what its operator asked of it (pause, drain)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="agents")
    name = models.CharField(max_length=NAME_MAX, validators=[validate_name])
    type = models.CharField(max_length=TEXT_MAX, blank=True, help_text="What kind of agent (free text).")
    labels = models.JSONField(default=dict, blank=True, validators=[_validate_labels_field])
    capacity = models.PositiveIntegerField(
        default=CAPACITY_DEFAULT,
        validators=[MinValueValidator(CAPACITY_MIN), MaxValueValidator(CAPACITY_MAX)],
        help_text="How many tasks it may hold at once.",
    )
    version = models.CharField(max_length=TEXT_MAX, blank=True)
    platform = models.CharField(max_length=TEXT_MAX, blank=True)
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.ACTIVE, editable=False)
    pause_note = models.CharField(max_length=NOTE_MAX, blank=True, editable=False)
    paused_until = models.DateTimeField(null=True, blank=True, editable=False)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Set when the agent was found silent (or at registration, before it was ever heard from);
    # cleared by its next sign of life.
    offline_since = models.DateTimeField(null=True, blank=True, editable=False)
    api_key = models.OneToOneField(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="agent", editable=False
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)
    # Deleted agents stay as rows (their tasks' history names them); they are never listed.
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = AgentQuerySet.as_manager()

    class Meta:
        ordering = ("name", "id")
        constraints = [
            models.UniqueConstraint(
                fields=("project", "name"), condition=Q(deleted_at__isnull=True), name="agent_unique_name"
            ),
            models.CheckConstraint(condition=Q(mode__in=Mode.values), name="agent_mode_valid"),
            models.CheckConstraint(
                condition=Q(capacity__gte=CAPACITY_MIN, capacity__lte=CAPACITY_MAX),
                name="agent_capacity_range",
            ),
        ]
        indexes = [models.Index(fields=["last_heartbeat_at"], name="agent_heartbeat_idx")]

    def __str__(self) -> str:
        return self.name

    def state_at(self, now: datetime | None = None) -> str:
        now = now or timezone.now()
        if (
            self.offline_since is not None
            or self.last_heartbeat_at is None
            or self.last_heartbeat_at < now - offline_after()
        ):
            return AgentState.OFFLINE
        if self.mode == Mode.DRAINING:
            return AgentState.DRAINING
        if self.mode == Mode.PAUSED and (self.paused_until is None or self.paused_until > now):
            return AgentState.PAUSED
        return AgentState.ONLINE

    @property
    def capabilities(self) -> list[str]:
        """The labels as ``key=value`` strings (the reference's ``capabilities``)."""
        return [f"{key}={value}" for key, value in sorted(self.labels.items())]
