"""Tasks and their notes (their history, the events outbox, is ``events.models.Event``).

The task state machine is data: one table of moves per ``Mover`` beside ``Status`` (``MOVES``);
``tasks.status.status_check`` is the one function that reads them, and every write of a task's
status (``tasks.services``, ``tasks.status.task_follow_execution``) passes it first.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import connection, models
from django.db.models import Exists, OuterRef, Q, StringAgg, Subquery, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Cast
from django.utils import timezone

from accounts.models import ApiKey, Membership, Project, ProjectScopedQuerySet, Role, User
from agents.models import Agent, validate_labels
from core.validators import validate_name

# --- Limits (SPEC §3) ----------------------------------------------------------------------
NAME_MAX = 255
DESCRIPTION_MAX = 10_000
SCRIPT_MAX_BYTES = 1024 * 1024
METADATA_MAX_BYTES = 64 * 1024
RESULT_MAX_BYTES = 1024 * 1024
TAGS_MAX = 32
TAG_MAX = 64
TAG_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
AGENT_MAX = 64
TIMEOUT_MIN, TIMEOUT_MAX, TIMEOUT_DEFAULT = 1, 3600, 60
PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 10, 5
RETRIES_MAX = 10
CONCURRENCY_MIN, CONCURRENCY_MAX = 1, 100
LEASE_MIN, LEASE_MAX, LEASE_DEFAULT = 10, 86_400, 300
NOTE_MAX = 10_000


class Status(models.TextChoices):
    PENDING = "pending", "Pending"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# Who moves a task: a person (``task_move``: the API, the admin), the agent claim protocol
# (claim, complete, fail, release, a lapsed lease), or the execution engine (the task follows
# its latest execution). Each has its table of moves: status -> statuses it may move to.
class Mover(models.TextChoices):
    PERSON = "person", "Person"
    CLAIM = "claim", "Agent claim"
    EXECUTION = "execution", "Execution"


# A person's moves. pending -> running is how a claim starts; the finished states may be sent
# round again (pending to claim, queued to execute).
TRANSITIONS: dict[str, tuple[str, ...]] = {
    Status.PENDING: (Status.QUEUED, Status.RUNNING, Status.CANCELLED),
    Status.QUEUED: (Status.RUNNING, Status.CANCELLED),
    Status.RUNNING: (Status.COMPLETED, Status.FAILED, Status.CANCELLED),
    Status.COMPLETED: (Status.PENDING, Status.QUEUED),
    Status.FAILED: (Status.PENDING, Status.QUEUED),
    Status.CANCELLED: (Status.PENDING, Status.QUEUED),
}
# The claim protocol's moves: a claim starts (pending -> running) and ends completed, failed,
# or back to pending (released, or its lease lapsed: an edge no person takes).
CLAIM_TRANSITIONS: dict[str, tuple[str, ...]] = {
    Status.PENDING: (Status.RUNNING,),
    Status.RUNNING: (Status.COMPLETED, Status.FAILED, Status.PENDING),
}
# How an execution's status shows on its task (SPEC §5): never pending.
FOLLOWS_EXECUTION: tuple[str, ...] = (
    Status.QUEUED,
    Status.RUNNING,
    Status.COMPLETED,
    Status.FAILED,
    Status.CANCELLED,
)
# The engine's moves: the task takes its latest execution's status from whichever status it
# has (a person's moves can leave it anywhere meanwhile: queued -> running -> completed by hand
# while its run still waits, then the run starts), including the one it has (a second run
# queued while one is queued).
EXECUTION_TRANSITIONS: dict[str, tuple[str, ...]] = dict.fromkeys(Status, FOLLOWS_EXECUTION)
MOVES: dict[str, dict[str, tuple[str, ...]]] = {
    Mover.PERSON: TRANSITIONS,
    Mover.CLAIM: CLAIM_TRANSITIONS,
    Mover.EXECUTION: EXECUTION_TRANSITIONS,
}
TERMINAL: frozenset[str] = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
# A task in these states is being worked on: it cannot be deleted.
ACTIVE: frozenset[str] = frozenset({Status.QUEUED, Status.RUNNING})


class ScriptType(models.TextChoices):
    PYTHON = "python", "Python"
    BASH = "bash", "Bash"


# --- Validators (shared by the model, hence full_clean(), the admin and the API) ------------
def json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def validate_script_size(value: str) -> None:
    size = len(value.encode("utf-8"))
    if size > SCRIPT_MAX_BYTES:
        raise ValidationError(
            "The script is %(size)d bytes of UTF-8; the limit is %(limit)d (1 MiB).",
            code="max_bytes",
            params={"size": size, "limit": SCRIPT_MAX_BYTES},
        )


def validate_metadata(value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationError("Must be a JSON object.", code="not_an_object")
    size = json_size(value)
    if size > METADATA_MAX_BYTES:
        raise ValidationError(
            "Serialized metadata is %(size)d bytes; the limit is %(limit)d (64 KiB).",
            code="max_bytes",
            params={"size": size, "limit": METADATA_MAX_BYTES},
        )


def validate_tag(value: Any) -> None:
    if not isinstance(value, str) or not TAG_RE.match(value):
        raise ValidationError(
            "A tag is 1-64 characters of A-Z a-z 0-9 _ . : - (got %(value)r).",
            code="invalid_tag",
            params={"value": value},
        )


def validate_tags(value: Any) -> None:
    if not isinstance(value, list):
        raise ValidationError("Must be a list of strings.", code="not_a_list")
    if len(value) > TAGS_MAX:
        raise ValidationError(
            "At most %(limit)d tags (got %(count)d).",
            code="max_items",
            params={"limit": TAGS_MAX, "count": len(value)},
        )
    for tag in value:
        validate_tag(tag)


def _validate_required_labels(value: Any) -> None:
    try:
        validate_labels(value, field="required_labels")
    except ValidationError as exc:
        raise ValidationError(exc.message_dict["required_labels"]) from None


def validate_not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be empty (after trimming whitespace).", code="blank")


# --- Indexes ----------------------------------------------------------------------------------
class CoveringIndex(models.Index):
    """An index with INCLUDE columns on PostgreSQL, a plain index elsewhere.

    SQLite has no covering indexes. Django drops ``include`` there by itself but also warns
    (models.W040) on every management command, so the extra columns are kept in
    ``covering`` and become ``include`` only when the SQL is built on a database that has them.
    """

    def __init__(self, *args: Any, covering: tuple[str, ...] | list[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.covering = tuple(covering)

    def deconstruct(self) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        path, args, kwargs = super().deconstruct()
        kwargs["covering"] = self.covering
        return path, args, kwargs

    def create_sql(self, model: Any, schema_editor: Any, using: str = "", **kwargs: Any) -> Any:
        index: models.Index = self
        if self.covering and schema_editor.connection.features.supports_covering_indexes:
            index = copy.copy(self)
            index.include = self.covering
        return models.Index.create_sql(index, model, schema_editor, using=using, **kwargs)


# --- Tasks --------------------------------------------------------------------------------------
def tags_contain(queryset: models.QuerySet, tag: str) -> models.QuerySet:
    """Rows whose ``tags`` JSON list holds ``tag``: the one vendor switch for tag filters.

    PostgreSQL answers ``tags @> '["tag"]'`` (jsonb containment). SQLite has no JSON
    containment lookup in Django, so it asks ``json_each`` for an equal element
    (exact and case-sensitive, like PostgreSQL).
    """
    if connection.vendor == "postgresql":
        return queryset.filter(tags__contains=[tag])
    table = queryset.model._meta.db_table
    has_tag = RawSQL(  # noqa: S611 - the table name is ours; the tag is a bound parameter
        f'EXISTS (SELECT 1 FROM json_each("{table}"."tags") WHERE json_each.value = %s)',  # noqa: S608
        (tag,),
        output_field=models.BooleanField(),
    )
    return queryset.filter(has_tag)


def labels_within(queryset: models.QuerySet, labels: dict[str, str]) -> models.QuerySet:
    """Rows whose ``required_labels`` are all in ``labels``: the one vendor switch for routing.

    PostgreSQL answers ``required_labels <@ labels`` (jsonb containment). SQLite asks
    ``json_each`` whether any required label is missing or different (label keys carry no
    quote, so the JSON path built from one is safe; the labels are a bound parameter).
    """
    table = queryset.model._meta.db_table
    if connection.vendor == "postgresql":
        sql = f'"{table}"."required_labels" <@ %s::jsonb'
    else:
        sql = (
            f'NOT EXISTS (SELECT 1 FROM json_each("{table}"."required_labels") AS r '  # noqa: S608
            """WHERE json_extract(%s, '$."' || r.key || '"') IS NOT r.value)"""
        )
    within = RawSQL(sql, (json.dumps(labels),), output_field=models.BooleanField())  # noqa: S611
    return queryset.filter(within)


def writable_projects(user: User, api_key: ApiKey | None = None) -> models.QuerySet:
    """Projects where ``user`` may write (member or admin), narrowed to the key's project."""
    projects = Project.objects.visible_to(user, api_key)
    if user.is_superuser:
        return projects
    roles = Membership.objects.filter(user=user, role__in=(Role.MEMBER, Role.ADMIN))
    return projects.filter(pk__in=roles.values("project_id"))


def _unfinished_dependencies() -> models.QuerySet:
    """Dependency links of the outer task whose target is not completed (for Exists())."""
    return Task.depends_on.through.objects.filter(from_task=OuterRef("pk")).exclude(
        to_task__status=Status.COMPLETED
    )


# What a task's API shape shows of its latest execution (tasks.serializers).
LAST_EXECUTION_FIELDS = ("id", "number", "status", "exit_code", "duration_ms", "queued_at", "finished_at")


class TaskQuerySet(ProjectScopedQuerySet):
    def writable_by(self, user: User, api_key: ApiKey | None = None) -> TaskQuerySet:
        """Tasks in projects where the caller is at least a member.

        The project ids are resolved first (as ``visible_to`` does): with ``IN (subquery)`` the
        planner misjudged a big project and sorted all its pending tasks for every claim-next
        (66 ms a pick on the benchmark's data) instead of walking ``task_claim_idx`` in order.
        """
        return self.filter(project__in=list(writable_projects(user, api_key).values_list("pk", flat=True)))

    def with_tags(self, tags: list[str]) -> TaskQuerySet:
        """Tasks carrying every one of ``tags``."""
        queryset = self
        for tag in tags:
            queryset = tags_contain(queryset, tag)
        return queryset

    def blocked(self) -> TaskQuerySet:
        """Tasks with at least one dependency that is not completed."""
        return self.filter(Exists(_unfinished_dependencies()))

    def claimable(self) -> TaskQuerySet:
        """Tasks an agent may claim now: pending, unclaimed, not archived, dependencies done."""
        return self.filter(status=Status.PENDING, claimed_by__isnull=True, archived=False).exclude(
            Exists(_unfinished_dependencies())
        )

    def claim_order(self) -> TaskQuerySet:
        """The order claim-next hands tasks out in: highest priority, then oldest."""
        return self.order_by("-priority", "created_at", "id")

    def routable_to(self, agent: Agent) -> TaskQuerySet:
        """Tasks ``agent`` may take: not pinned to another agent, every required label carried."""
        pinned = Q(assigned_agent__isnull=True) | Q(assigned_agent=agent)
        return labels_within(self.filter(pinned), agent.labels)

    def routed(self) -> TaskQuerySet:
        """Tasks only a registered agent can take: pinned to one, or requiring labels."""
        return self.filter(Q(assigned_agent__isnull=False) | ~Q(required_labels={}))

    def unrouted(self) -> TaskQuerySet:
        """Tasks any claimer may take: pinned to no agent, requiring no labels."""
        return self.filter(assigned_agent__isnull=True, required_labels={})

    def held_by(self, agent: Agent) -> TaskQuerySet:
        """The claims ``agent`` holds now."""
        return self.filter(claimed_by_agent=agent, status=Status.RUNNING, lease_expires_at__isnull=False)

    def lease_expired(self, now: datetime | None = None) -> TaskQuerySet:
        return self.filter(status=Status.RUNNING, lease_expires_at__lt=now or timezone.now())

    def for_api(self) -> TaskQuerySet:
        # The joined rows bring only what the API renders of them: a user's password hash,
        # a key's hash or an execution's whole script would only widen every row read.
        return (
            self.select_related("created_by", "claimed_by", "claimed_by_key", "last_execution")
            .only(
                *(field.name for field in Task._meta.concrete_fields),
                *(f"{user}__{name}" for user in ("created_by", "claimed_by") for name in ("id", "username")),
                "claimed_by_key__id",
                "claimed_by_key__prefix",
                # rest_framework_api_key's ApiKey.__init__ reads ``revoked`` (to refuse un-revoking
                # on save): deferred, it would cost a query per claimed task rendered.
                "claimed_by_key__revoked",
                *(f"last_execution__{name}" for name in LAST_EXECUTION_FIELDS),
            )
            .annotate(dependency_ids=_dependency_ids())
        )


class Task(models.Model):
    """A unit of work: a script for the workers to run, or a work item for agents to claim."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # db_index=False: task_list_idx leads with project_id.
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="tasks", db_index=False)
    name = models.CharField(max_length=NAME_MAX, validators=[validate_not_blank, validate_name])
    description = models.TextField(blank=True, max_length=DESCRIPTION_MAX)
    script_type = models.CharField(max_length=10, choices=ScriptType.choices, blank=True)
    script_content = models.TextField(blank=True, validators=[validate_script_size])
    timeout_seconds = models.PositiveIntegerField(
        default=TIMEOUT_DEFAULT,
        validators=[MinValueValidator(TIMEOUT_MIN), MaxValueValidator(TIMEOUT_MAX)],
    )
    priority = models.PositiveSmallIntegerField(
        default=PRIORITY_DEFAULT,
        validators=[MinValueValidator(PRIORITY_MIN), MaxValueValidator(PRIORITY_MAX)],
        help_text="0-10; 10 runs first.",
    )
    tags = models.JSONField(default=list, blank=True, validators=[validate_tags])
    metadata = models.JSONField(default=dict, blank=True, validators=[validate_metadata])
    agent = models.CharField(max_length=AGENT_MAX, blank=True, help_text="Agent meant to handle it.")
    # Routing (tasks.routing): the labels an agent must carry to take it, and the one
    # registered agent it is pinned to (set from ``agent`` when that names a registered agent).
    required_labels = models.JSONField(default=dict, blank=True, validators=[_validate_required_labels])
    assigned_agent = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="assigned_tasks"
    )
    # Since when no online agent can take it (pending, routed, nobody matching): see routing.
    unroutable_since = models.DateTimeField(null=True, blank=True, editable=False)
    due_date = models.DateTimeField(null=True, blank=True)
    estimated_hours = models.DecimalField(
        max_digits=8, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(0)]
    )
    depends_on = models.ManyToManyField("self", symmetrical=False, related_name="dependents", blank=True)
    max_retries = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(RETRIES_MAX)])
    max_concurrency = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(CONCURRENCY_MIN), MaxValueValidator(CONCURRENCY_MAX)]
    )
    archived = models.BooleanField(default=False)
    # A node of a workflow run: its end is reported to the layer above (tasks.hooks).
    in_workflow = models.BooleanField(default=False, db_default=False, editable=False)

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, editable=False)
    result = models.JSONField(null=True, blank=True, editable=False)
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="claimed_tasks",
        editable=False,
    )
    claimed_by_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    # The registered agent holding (or that held) the claim; only it may finish the claim.
    claimed_by_agent = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="claims", editable=False
    )
    claimed_at = models.DateTimeField(null=True, blank=True, editable=False)
    # What the claiming agent last reported of its progress (0-1), with its heartbeats.
    progress = models.FloatField(null=True, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The latest execution (denormalised by the execution services so lists need one join).
    last_execution = models.ForeignKey(
        "executions.Execution",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )
    # Where a task came from: its template (kept null if the template is deleted), the
    # template's version, the parameter values it was triggered with (secrets masked), and a
    # copy of the parameter declarations, so later runs validate and render the same way.
    template = models.ForeignKey(
        "templates_app.Template",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tasks",
        editable=False,
    )
    template_version = models.PositiveIntegerField(null=True, blank=True, editable=False)
    parameters = models.JSONField(default=dict, blank=True, editable=False)
    parameter_spec = models.JSONField(default=list, blank=True, editable=False)
    # sha256 of (script_type, script_content, parameter_spec) as its template rendered them
    # (templates_app.parameters.script_digest); empty once the script is changed. Secret
    # values are only handed to a script whose digest still matches.
    script_digest = models.CharField(max_length=64, blank=True, default="", db_default="", editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="created_tasks",
        editable=False,
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = TaskQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [
            # The task list: one project, newest first. Status and tags ride along on
            # PostgreSQL so the common filters are checked in the index (measured: better than
            # a GIN index on tags, and better than putting status before created_at).
            CoveringIndex(
                fields=["project", "-created_at", "-id"],
                covering=("status", "tags"),
                name="task_list_idx",
            ),
            # claim-next: pending tasks of a project by priority, then age.
            models.Index(
                fields=["project", "-priority", "created_at", "id"],
                condition=Q(status="pending"),
                name="task_claim_idx",
            ),
            # The reaper: running tasks whose lease ran out.
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(lease_expires_at__isnull=False),
                name="task_lease_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(priority__gte=PRIORITY_MIN, priority__lte=PRIORITY_MAX),
                name="task_priority_range",
            ),
            models.CheckConstraint(
                condition=Q(timeout_seconds__gte=TIMEOUT_MIN, timeout_seconds__lte=TIMEOUT_MAX),
                name="task_timeout_range",
            ),
            models.CheckConstraint(condition=Q(status__in=Status.values), name="task_status_valid"),
            # A lease exists only while a claim is running.
            models.CheckConstraint(
                condition=Q(lease_expires_at__isnull=True) | Q(status=Status.RUNNING),
                name="task_lease_only_running",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.script_content and not self.script_type:
            raise ValidationError(
                {"script_type": ValidationError("Required when script_content is given.", code="required")}
            )

    @property
    def has_script(self) -> bool:
        return bool(self.script_content)

    @property
    def is_claimed(self) -> bool:
        return self.lease_expires_at is not None


def _dependency_ids() -> Subquery:
    """The ids of the tasks a task depends on, comma-separated (in no order: SQLite before 3.44
    cannot order an aggregate), read with the task row itself as ``dependency_ids``, None when
    there are none. prefetch_related cost a query of its own and about 1 ms of Python per
    list page (it clones querysets deeply)."""
    through = Task.depends_on.through
    return Subquery(
        through.objects.filter(from_task=OuterRef("pk"))
        .order_by()
        .values("from_task")
        .annotate(ids=StringAgg(Cast("to_task", models.TextField()), Value(",")))
        .values("ids")
    )


class Note(models.Model):
    """A comment on a task (by a person or an agent)."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="notes", db_index=False)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    author_key_prefix = models.CharField(max_length=16, blank=True)
    body = models.TextField(max_length=NOTE_MAX, validators=[validate_not_blank])
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ("created_at", "id")
        indexes = [models.Index(fields=["task", "created_at"], name="note_task_idx")]

    def __str__(self) -> str:
        return f"Note on {self.task_id}"
