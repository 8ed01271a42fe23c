"""Task API shapes: input serializers validate, output serializers render. No side effects."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.serializers import JSONObjectField, StrictSerializer, UserRefSerializer, user_ref
from core.validators import validate_name
from events.models import Event
from tasks.models import (
    AGENT_MAX,
    CONCURRENCY_MAX,
    CONCURRENCY_MIN,
    DESCRIPTION_MAX,
    LEASE_DEFAULT,
    LEASE_MAX,
    LEASE_MIN,
    NAME_MAX,
    NOTE_MAX,
    PRIORITY_MAX,
    PRIORITY_MIN,
    RETRIES_MAX,
    TAG_MAX,
    TAGS_MAX,
    TIMEOUT_MAX,
    TIMEOUT_MIN,
    Note,
    ScriptType,
    Status,
    Task,
    validate_metadata,
    validate_script_size,
)


def tag_field() -> serializers.CharField:
    return serializers.CharField(
        min_length=1,
        max_length=TAG_MAX,
        trim_whitespace=False,
        validators=[
            RegexValidator(r"^[A-Za-z0-9_.:-]*$", "Only A-Z a-z 0-9 _ . : - are allowed.", code="invalid_tag")
        ],
    )


def agent_ref_field(**extra: Any) -> serializers.CharField:
    """A registered agent, by id or name (resolved by the service)."""
    return serializers.CharField(
        required=False, allow_null=True, allow_blank=True, max_length=AGENT_MAX, **extra
    )


class TaskWriteSerializer(StrictSerializer):
    """What a client may set on create (POST), replace (PUT) or change (PATCH).

    Read-only fields (status on create, result, claims, timestamps, ...) are not declared,
    so a body that sends them has them ignored. Absent fields take the model defaults on
    create and PUT (the service fills them in); PATCH leaves them alone.
    """

    project = serializers.UUIDField(
        required=False, help_text="Defaults to the key's project, else your personal project."
    )
    name = serializers.CharField(
        max_length=NAME_MAX, help_text="1-255 characters after trimming.", validators=[validate_name]
    )
    description = serializers.CharField(
        max_length=DESCRIPTION_MAX, required=False, allow_blank=True, trim_whitespace=False
    )
    script_type = serializers.ChoiceField(
        choices=ScriptType.choices, required=False, allow_blank=True, help_text="Required with a script."
    )
    script_content = serializers.CharField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        validators=[validate_script_size],
        help_text="At most 1 MiB of UTF-8. Without a script the task is a work item for agents.",
    )
    timeout_seconds = serializers.IntegerField(min_value=TIMEOUT_MIN, max_value=TIMEOUT_MAX, required=False)
    priority = serializers.IntegerField(
        min_value=PRIORITY_MIN, max_value=PRIORITY_MAX, required=False, help_text="10 runs first."
    )
    tags = serializers.ListField(
        child=tag_field(),
        max_length=TAGS_MAX,
        required=False,
        help_text="At most 32; when absent, a list of strings in metadata.tags is used.",
    )
    metadata = JSONObjectField(
        required=False, validators=[validate_metadata], help_text="A JSON object, at most 64 KiB."
    )
    agent = serializers.CharField(
        max_length=AGENT_MAX,
        required=False,
        allow_blank=True,
        help_text="The agent meant to handle it: naming a registered agent (id or name) pins the task "
        "to it, anything else is a label.",
    )
    required_labels = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text='Labels an agent must carry to take it: {"os": "linux"} (or ["os=linux"]); null or {} '
        "requires none.",
    )
    assigned_agent = agent_ref_field(
        help_text="Pin to this registered agent (its id or name; 400 if there is none); null unpins."
    )
    assignedAgentId = agent_ref_field(write_only=True, help_text="Alias of assigned_agent.")
    due_date = serializers.DateTimeField(required=False, allow_null=True)
    estimated_hours = serializers.DecimalField(
        max_digits=8, decimal_places=2, min_value=0, required=False, allow_null=True, coerce_to_string=False
    )
    depends_on = serializers.ListField(
        child=serializers.UUIDField(),
        required=False,
        max_length=1000,
        help_text="Ids of tasks in the same project.",
    )
    max_retries = serializers.IntegerField(min_value=0, max_value=RETRIES_MAX, required=False)
    max_concurrency = serializers.IntegerField(
        min_value=CONCURRENCY_MIN, max_value=CONCURRENCY_MAX, required=False
    )
    archived = serializers.BooleanField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "assignedAgentId" in attrs:
            alias = attrs.pop("assignedAgentId")
            attrs.setdefault("assigned_agent", alias)
        script = attrs.get("script_content")
        script_type = attrs.get("script_type")
        instance: Task | None = self.context.get("task")
        if instance is not None and self.partial:
            script = instance.script_content if script is None else script
            script_type = instance.script_type if script_type is None else script_type
        if script and not script_type:
            raise serializers.ValidationError(
                {
                    "script_type": serializers.ErrorDetail(
                        "Required when script_content is given.", code="required"
                    )
                }
            )
        return attrs


class TaskUpdateSerializer(TaskWriteSerializer):
    status = serializers.ChoiceField(
        choices=Status.choices,
        required=False,
        help_text="Changes only along allowed transitions (409 otherwise).",
    )


class ClaimSerializer(serializers.Serializer):
    user = UserRefSerializer()
    api_key = serializers.CharField(allow_null=True, help_text="Prefix of the key that claimed it.")


class LastExecutionSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    number = serializers.IntegerField()
    status = serializers.CharField()
    exit_code = serializers.IntegerField(allow_null=True)
    duration_ms = serializers.IntegerField(allow_null=True)
    queued_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


# Unbound fields for TaskSerializer.to_representation: DRF's own formatting of a date-time
# (ISO 8601, "Z" for UTC, in the current time zone) and of the estimate.
_DATETIME = serializers.DateTimeField()
_HOURS = serializers.DecimalField(max_digits=8, decimal_places=2, coerce_to_string=False)


def _when(value: datetime | None) -> str | None:
    return None if value is None else _DATETIME.to_representation(value)


class TaskSerializer(serializers.ModelSerializer):
    project = serializers.UUIDField(source="project_id")
    last_execution = LastExecutionSerializer(read_only=True, allow_null=True)
    depends_on = serializers.SerializerMethodField()
    estimated_hours = serializers.DecimalField(
        max_digits=8, decimal_places=2, allow_null=True, coerce_to_string=False
    )
    claimed_by = serializers.SerializerMethodField()
    assigned_agent = serializers.UUIDField(source="assigned_agent_id", allow_null=True, read_only=True)
    claimed_by_agent = serializers.UUIDField(
        source="claimed_by_agent_id",
        allow_null=True,
        read_only=True,
        help_text="The registered agent holding (or that held) the claim.",
    )
    created_by = serializers.SerializerMethodField()
    has_script = serializers.BooleanField(read_only=True)
    template = serializers.UUIDField(source="template_id", allow_null=True, read_only=True)
    parameters = serializers.JSONField(read_only=True, help_text="Values it was made with; secrets are ***.")
    parameter_spec = serializers.JSONField(
        read_only=True, help_text="Its template's parameter declarations when made (what execute takes)."
    )

    class Meta:
        model = Task
        fields = (
            "id",
            "project",
            "name",
            "description",
            "status",
            "script_type",
            "script_content",
            "has_script",
            "timeout_seconds",
            "priority",
            "tags",
            "metadata",
            "agent",
            "required_labels",
            "assigned_agent",
            "unroutable_since",
            "due_date",
            "estimated_hours",
            "depends_on",
            "max_retries",
            "max_concurrency",
            "archived",
            "result",
            "claimed_by",
            "claimed_by_agent",
            "claimed_at",
            "lease_expires_at",
            "progress",
            "template",
            "template_version",
            "parameters",
            "parameter_spec",
            "last_execution",
            "created_by",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields

    def to_representation(self, task: Task) -> dict[str, Any]:
        """DRF's field-by-field loop written out for this serializer, the one every task
        answer and list page goes through (20 tasks: 2.7 -> 0.9 ms of CPU). The fields above
        still declare the schema; a test holds this equal to DRF's own representation."""
        last = task.last_execution
        return {
            "id": str(task.id),
            "project": str(task.project_id),
            "name": task.name,
            "description": task.description,
            "status": task.status,
            "script_type": task.script_type,
            "script_content": task.script_content,
            "has_script": task.has_script,
            "timeout_seconds": task.timeout_seconds,
            "priority": task.priority,
            "tags": task.tags,
            "metadata": task.metadata,
            "agent": task.agent,
            "required_labels": task.required_labels,
            "assigned_agent": None if task.assigned_agent_id is None else str(task.assigned_agent_id),
            "unroutable_since": _when(task.unroutable_since),
            "due_date": _when(task.due_date),
            "estimated_hours": (
                None if task.estimated_hours is None else _HOURS.to_representation(task.estimated_hours)
            ),
            "depends_on": self.get_depends_on(task),
            "max_retries": task.max_retries,
            "max_concurrency": task.max_concurrency,
            "archived": task.archived,
            "result": task.result,
            "claimed_by": self.get_claimed_by(task),
            "claimed_by_agent": None if task.claimed_by_agent_id is None else str(task.claimed_by_agent_id),
            "claimed_at": _when(task.claimed_at),
            "lease_expires_at": _when(task.lease_expires_at),
            "progress": task.progress,
            "template": None if task.template_id is None else str(task.template_id),
            "template_version": task.template_version,
            "parameters": task.parameters,
            "parameter_spec": task.parameter_spec,
            "last_execution": None
            if last is None
            else {
                "id": str(last.id),
                "number": last.number,
                "status": last.status,
                "exit_code": last.exit_code,
                "duration_ms": last.duration_ms,
                "queued_at": _when(last.queued_at),
                "finished_at": _when(last.finished_at),
            },
            "created_by": self.get_created_by(task),
            "created_at": _when(task.created_at),
            "updated_at": _when(task.updated_at),
        }

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_depends_on(self, task: Task) -> list[str]:
        # Read with the row by TaskQuerySet.for_api(), which every rendered task comes from.
        ids = task.dependency_ids
        return [str(value) for value in sorted(uuid.UUID(value) for value in ids.split(","))] if ids else []

    @extend_schema_field(ClaimSerializer(allow_null=True))
    def get_claimed_by(self, task: Task) -> dict[str, Any] | None:
        if task.claimed_by_id is None:
            return None
        key = task.claimed_by_key
        return {
            "user": {"id": task.claimed_by.pk, "username": task.claimed_by.get_username()},
            "api_key": key.prefix if key is not None else None,
        }

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_created_by(self, task: Task) -> dict[str, Any] | None:
        return user_ref(task.created_by)


class MoveSerializer(StrictSerializer):
    status = serializers.ChoiceField(choices=Status.choices)


class LeaseSerializer(StrictSerializer):
    """The body of claim and heartbeat (component ``LeaseRequest``)."""

    lease_seconds = serializers.IntegerField(
        min_value=LEASE_MIN, max_value=LEASE_MAX, default=LEASE_DEFAULT, help_text="10-86400, default 300."
    )


class ClaimNextSerializer(LeaseSerializer):
    tags = serializers.ListField(
        child=tag_field(), required=False, max_length=TAGS_MAX, help_text="All must match."
    )
    agent = serializers.CharField(max_length=AGENT_MAX, required=False, allow_blank=True)
    project = serializers.UUIDField(required=False)
    priority_min = serializers.IntegerField(min_value=PRIORITY_MIN, max_value=PRIORITY_MAX, required=False)
    count = serializers.IntegerField(
        min_value=1,
        max_value=100,
        required=False,
        help_text="Claim up to this many at once (an agent: within its free capacity); the answer is "
        "then {tasks, reason}.",
    )


class NoClaimSerializer(serializers.Serializer):
    code = serializers.ChoiceField(choices=("draining", "paused", "at_capacity", "no_task"))
    detail = serializers.CharField()


class ClaimBatchSerializer(serializers.Serializer):
    """claim-next's answer when ``count`` is given."""

    tasks = TaskSerializer(many=True)
    reason = NoClaimSerializer(allow_null=True, help_text="Why the agent got nothing (null otherwise).")


class CompleteSerializer(StrictSerializer):
    result = serializers.JSONField(required=False, allow_null=True, help_text="Any JSON, at most 1 MiB.")


class FailSerializer(StrictSerializer):
    error = serializers.CharField(max_length=10_000, help_text="Why the task failed.")


class NoteCreateSerializer(StrictSerializer):
    body = serializers.CharField(max_length=NOTE_MAX)


class NoteSerializer(serializers.ModelSerializer):
    author = serializers.SerializerMethodField()
    api_key = serializers.CharField(source="author_key_prefix", allow_blank=True)

    class Meta:
        model = Note
        fields = ("id", "task", "author", "api_key", "body", "created_at")
        read_only_fields = fields

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_author(self, note: Note) -> dict[str, Any] | None:
        user = note.author
        return None if user is None else {"id": user.pk, "username": user.get_username()}


class EventSerializer(serializers.ModelSerializer):
    task = serializers.UUIDField(source="task_id", allow_null=True)
    actor = serializers.SerializerMethodField()
    api_key = serializers.CharField(source="actor_key_prefix", allow_blank=True)

    class Meta:
        model = Event
        fields = ("id", "type", "task", "actor", "api_key", "data", "created_at")
        read_only_fields = fields

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_actor(self, event: Event) -> dict[str, Any] | None:
        user = event.actor
        return None if user is None else {"id": user.pk, "username": user.get_username()}
