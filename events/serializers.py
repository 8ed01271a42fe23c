"""An event as the API shows it: the event stream and its list (``GET /api/v1/events``)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.serializers import UserRefSerializer, user_ref
from events.models import Event


class StreamEventSerializer(serializers.ModelSerializer):
    project = serializers.UUIDField(source="project_id")
    task = serializers.UUIDField(source="task_id", allow_null=True)
    actor = serializers.SerializerMethodField()
    api_key = serializers.CharField(source="actor_key_prefix", allow_blank=True)

    class Meta:
        model = Event
        fields = ("id", "type", "project", "task", "actor", "api_key", "data", "created_at")
        read_only_fields = fields

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_actor(self, event: Event) -> dict[str, Any] | None:
        return user_ref(event.actor)
