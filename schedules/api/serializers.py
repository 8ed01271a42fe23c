"""Schedule API shapes: input serializers check types; the services check the rules."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.serializers import JSONObjectField, StrictSerializer, UserRefSerializer, user_ref
from core.validators import validate_label_text, validate_name
from schedules import timing
from schedules.models import (
    CATCHUP_MAX,
    CRON_MAX,
    DESCRIPTION_MAX,
    FAILURES_MAX,
    INTERVAL_MAX,
    INTERVAL_MIN,
    JITTER_MAX,
    NAME_MAX,
    FireKind,
    FireOutcome,
    MisfirePolicy,
    OverlapPolicy,
    RunOutcome,
    Schedule,
    ScheduleFire,
)
from schedules.services import PREVIEW_MAX, WRITABLE_FIELDS


class WhenSerializer(StrictSerializer):
    """When a schedule fires: ``cron`` (with ``timezone``) or ``interval_seconds``."""

    cron = serializers.CharField(
        max_length=CRON_MAX,
        required=False,
        allow_blank=True,
        help_text="5 fields, Debian cron semantics (e.g. '30 3 * * 1-5'); read in `timezone`.",
    )
    timezone = serializers.CharField(
        max_length=64, required=False, default="UTC", help_text="An IANA zone, e.g. Europe/Riga."
    )
    interval_seconds = serializers.IntegerField(
        min_value=INTERVAL_MIN,
        max_value=INTERVAL_MAX,
        required=False,
        allow_null=True,
        help_text=f"Instead of cron: every N seconds (N >= {INTERVAL_MIN}) from start_at.",
    )
    start_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="No fire before; an interval's anchor (default: creation)."
    )
    end_at = serializers.DateTimeField(required=False, allow_null=True, help_text="No fire after.")


class ScheduleWriteSerializer(WhenSerializer):
    project = serializers.UUIDField(
        required=False, help_text="Defaults to the key's project, else your personal project."
    )
    name = serializers.CharField(max_length=NAME_MAX, validators=[validate_name])
    description = serializers.CharField(
        max_length=DESCRIPTION_MAX, required=False, allow_blank=True, validators=[validate_label_text]
    )
    enabled = serializers.BooleanField(required=False, help_text="false: paused.")
    template = serializers.UUIDField(
        required=False, allow_null=True, help_text="Run this template (of the same project)..."
    )
    parameters = JSONObjectField(
        required=False,
        help_text='...with these parameters; a secret parameter as {"secret": "<project secret name>"}.',
    )
    overrides = JSONObjectField(required=False, help_text="...and these task fields (name, priority, ...).")
    task = serializers.UUIDField(required=False, allow_null=True, help_text="Or run this existing task.")
    jitter_seconds = serializers.IntegerField(
        min_value=0,
        max_value=JITTER_MAX,
        required=False,
        help_text="Delay each run by 0..N s (stable per slot).",
    )
    overlap_policy = serializers.ChoiceField(choices=OverlapPolicy.choices, required=False)
    misfire_policy = serializers.ChoiceField(choices=MisfirePolicy.choices, required=False)
    catchup_window_seconds = serializers.IntegerField(min_value=0, max_value=CATCHUP_MAX, required=False)
    pause_after_failures = serializers.IntegerField(
        min_value=1, max_value=FAILURES_MAX, required=False, allow_null=True
    )


class PreviewSerializer(WhenSerializer):
    count = serializers.IntegerField(min_value=1, max_value=PREVIEW_MAX, required=False, default=5)
    after = serializers.DateTimeField(required=False, allow_null=True, help_text="Default: now.")


class PreviewQuerySerializer(serializers.Serializer):
    count = serializers.IntegerField(min_value=1, max_value=PREVIEW_MAX, required=False, default=5)
    after = serializers.DateTimeField(required=False, help_text="Default: now.")


class FirePreviewSerializer(serializers.Serializer):
    local = serializers.CharField(help_text="Wall time in the schedule's zone, with its offset.")
    utc = serializers.CharField()
    dst = serializers.BooleanField(help_text="Whether daylight saving time is in effect then.")


class PreviewResultSerializer(serializers.Serializer):
    timezone = serializers.CharField()
    fires = FirePreviewSerializer(many=True)


class ScheduleFireSerializer(serializers.ModelSerializer):
    task = serializers.UUIDField(source="task_id", allow_null=True, read_only=True)
    execution = serializers.UUIDField(source="execution_id", allow_null=True, read_only=True)
    outcome = serializers.ChoiceField(choices=FireOutcome.choices, read_only=True)
    kind = serializers.ChoiceField(choices=FireKind.choices, read_only=True)

    class Meta:
        model = ScheduleFire
        fields = ("id", "scheduled_for", "kind", "outcome", "reason", "task", "execution", "created_at")
        read_only_fields = fields


class ScheduleSerializer(serializers.ModelSerializer):
    project = serializers.UUIDField(source="project_id", read_only=True)
    template = serializers.UUIDField(source="template_id", allow_null=True, read_only=True)
    task = serializers.UUIDField(source="task_id", allow_null=True, read_only=True)
    next_fire = serializers.SerializerMethodField(help_text="The next slot: local, utc, dst (null: none).")
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = Schedule
        fields = (
            "id",
            "project",
            *WRITABLE_FIELDS,
            "next_fire_at",
            "due_at",
            "next_fire",
            "pending_slot",
            "paused_at",
            "paused_reason",
            "last_outcome",
            "last_scheduled_for",
            "created_by",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields

    @extend_schema_field(FirePreviewSerializer(allow_null=True))
    def get_next_fire(self, schedule: Schedule) -> dict[str, Any] | None:
        if schedule.next_fire_at is None:
            return None
        return timing.describe(schedule.next_fire_at, timing.zone(schedule.timezone))

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_created_by(self, schedule: Schedule) -> dict[str, Any] | None:
        return user_ref(schedule.created_by)


class ScheduleRunSerializer(serializers.Serializer):
    outcome = serializers.ChoiceField(
        choices=RunOutcome.choices, help_text="queued: queue_one holds it behind the active run."
    )
    fire = ScheduleFireSerializer(allow_null=True)
