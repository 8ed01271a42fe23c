"""Agent API shapes (``/agents``): input serializers validate, output serializers render."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents.models import CAPACITY_MAX, CAPACITY_MIN, NAME_MAX, NOTE_MAX, TEXT_MAX, Agent, AgentState
from core.serializers import StrictSerializer
from core.validators import validate_name
from tasks.models import LEASE_DEFAULT, LEASE_MAX, LEASE_MIN


class AgentCreateSerializer(StrictSerializer):
    project = serializers.UUIDField(
        required=False, help_text="Defaults to the key's project, else your personal project."
    )
    name = serializers.CharField(
        max_length=NAME_MAX, validators=[validate_name], help_text="Unique in the project."
    )
    type = serializers.CharField(max_length=TEXT_MAX, required=False, allow_blank=True)
    labels = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text='What it offers, key -> value: {"os": "linux"} (or ["os=linux"]); null: none.',
    )
    capacity = serializers.IntegerField(
        min_value=CAPACITY_MIN,
        max_value=CAPACITY_MAX,
        required=False,
        help_text="Tasks it may hold at once (1).",
    )
    version = serializers.CharField(max_length=TEXT_MAX, required=False, allow_blank=True)
    platform = serializers.CharField(max_length=TEXT_MAX, required=False, allow_blank=True)


class AgentSerializer(serializers.ModelSerializer):
    project = serializers.UUIDField(source="project_id")
    status = serializers.ChoiceField(
        choices=AgentState.choices, source="computed_state", help_text="online, draining, paused or offline."
    )
    capabilities = serializers.ListField(child=serializers.CharField(), help_text="The labels as key=value.")
    max_concurrent_tasks = serializers.IntegerField(source="capacity", help_text="Its capacity.")
    current_tasks = serializers.IntegerField(help_text="How many claims it holds now.")
    load = serializers.SerializerMethodField()
    last_heartbeat = serializers.DateTimeField(source="last_heartbeat_at", allow_null=True)
    api_key = serializers.SerializerMethodField()

    class Meta:
        model = Agent
        fields = (
            "id",
            "project",
            "name",
            "type",
            "status",
            "labels",
            "capabilities",
            "capacity",
            "max_concurrent_tasks",
            "current_tasks",
            "load",
            "version",
            "platform",
            "last_heartbeat",
            "offline_since",
            "pause_note",
            "paused_until",
            "api_key",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields

    @extend_schema_field(serializers.FloatField(help_text="current_tasks / capacity"))
    def get_load(self, agent: Agent) -> float:
        return round(agent.current_tasks / agent.capacity, 4)

    @extend_schema_field(serializers.CharField(allow_null=True, help_text="Prefix of its agent-bound key."))
    def get_api_key(self, agent: Agent) -> str | None:
        return agent.api_key.prefix if agent.api_key is not None else None


class AgentRegisteredSerializer(AgentSerializer):
    key = serializers.CharField(help_text="The agent-bound API key. Shown this once; store it now.")

    class Meta(AgentSerializer.Meta):
        fields = (*AgentSerializer.Meta.fields, "key")
        read_only_fields = fields


class PauseSerializer(StrictSerializer):
    note = serializers.CharField(max_length=NOTE_MAX, required=False, allow_blank=True, default="")
    until = serializers.DateTimeField(
        required=False, allow_null=True, default=None, help_text="Resume by itself then (optional)."
    )


class ReportedTaskSerializer(StrictSerializer):
    id = serializers.UUIDField()
    progress = serializers.FloatField(min_value=0, max_value=1, required=False, allow_null=True)


class AgentHeartbeatSerializer(StrictSerializer):
    tasks = serializers.ListField(
        child=ReportedTaskSerializer(),
        required=False,
        max_length=1000,
        help_text="Every task it is working on, with its progress (0-1): their leases are renewed.",
    )
    lease_seconds = serializers.IntegerField(
        min_value=LEASE_MIN, max_value=LEASE_MAX, default=LEASE_DEFAULT, help_text="10-86400, default 300."
    )
    version = serializers.CharField(max_length=TEXT_MAX, required=False)
    platform = serializers.CharField(max_length=TEXT_MAX, required=False)


class HeartbeatAnswerSerializer(serializers.Serializer):
    action = serializers.ChoiceField(
        choices=("continue", "drain", "pause"),
        help_text="continue; drain: finish what you hold, take nothing new, exit; pause: take nothing new.",
    )
    status = serializers.ChoiceField(choices=AgentState.choices)
    cancelled_tasks = serializers.ListField(
        child=serializers.UUIDField(), help_text="Reported tasks it no longer holds: stop working on them."
    )
    held_tasks = serializers.ListField(child=serializers.UUIDField(), help_text="The claims it holds.")
    lease_expires_at = serializers.DateTimeField(help_text="The renewed leases' end.")
    heartbeat_seconds = serializers.IntegerField(help_text="Beat again within this.")


class CurrentTaskSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    started_at = serializers.DateTimeField(source="claimed_at")
    progress = serializers.FloatField(allow_null=True)
    lease_expires_at = serializers.DateTimeField()


class AgentStatusSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=AgentState.choices)
    current_tasks = CurrentTaskSerializer(many=True)
    capacity = serializers.IntegerField()
    load = serializers.FloatField()
    last_heartbeat = serializers.DateTimeField(allow_null=True)
    pause_note = serializers.CharField()
    paused_until = serializers.DateTimeField(allow_null=True)
