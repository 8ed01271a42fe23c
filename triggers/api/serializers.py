"""Trigger API shapes: input serializers check types; the services check the rules.

The secret appears in exactly two shapes: the create answer and the rotate answer.
"""

from __future__ import annotations

import json
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.ratelimit import RATE_PATTERN
from core.serializers import JSONObjectField, StrictSerializer, UserRefSerializer, user_ref
from core.validators import validate_label_text
from triggers.models import BODY_MIN, DESCRIPTION_MAX, SLUG_MAX, Auth, Delivery, Trigger

MAPPING_HELP = (
    'Template parameter -> source: "$.json.path" (a value of the body), "header:Name", "=literal", '
    'or {"secret": "<project secret>"} (secret parameters only).'
)
FILTERS_HELP = (
    'Any of: "events" (list; GitHub/GitLab event header, or the value at "event_path"), "ref" (a glob '
    'on the ref or branch at "ref_path", default $.ref), "match" ({"$.path": value} equalities).'
)


class TriggerWriteSerializer(StrictSerializer):
    project = serializers.UUIDField(
        required=False, help_text="Create only. Defaults to the key's project, else your personal project."
    )
    template = serializers.UUIDField(help_text="Create only: the template (of the same project) it starts.")
    slug = serializers.SlugField(max_length=SLUG_MAX)
    description = serializers.CharField(
        max_length=DESCRIPTION_MAX, required=False, allow_blank=True, validators=[validate_label_text]
    )
    enabled = serializers.BooleanField(required=False, default=True)
    auth = serializers.ChoiceField(
        choices=Auth.choices,
        required=False,
        default=Auth.STANDARD,
        help_text="Create only. token_in_url is weaker: the token travels in the URL, which proxies log.",
    )
    filters = JSONObjectField(required=False, help_text=FILTERS_HELP)
    mapping = JSONObjectField(required=False, help_text=MAPPING_HELP)
    dedupe_path = serializers.CharField(
        max_length=200, required=False, allow_blank=True, help_text="JSON path of the sender's delivery id."
    )
    max_body_bytes = serializers.IntegerField(
        min_value=BODY_MIN, required=False, help_text="413 above it (default TASKFORGE_TRIGGER_BODY_MAX)."
    )
    rate_limit = serializers.RegexField(
        RATE_PATTERN, max_length=32, required=False, allow_blank=True, help_text="count/period, e.g. 60/1m."
    )


class TriggerUpdateSerializer(TriggerWriteSerializer):
    project = None
    template = serializers.UUIDField(required=False, help_text="Cannot change (400).")
    slug = serializers.SlugField(max_length=SLUG_MAX, required=False)
    enabled = serializers.BooleanField(required=False)
    auth = serializers.ChoiceField(choices=Auth.choices, required=False, help_text="Cannot change (400).")


class TriggerSerializer(serializers.ModelSerializer):
    project = serializers.UUIDField(source="project_id")
    template = serializers.UUIDField(source="template_id")
    url = serializers.SerializerMethodField()
    secret_rotation_ends_at = serializers.DateTimeField(
        source="previous_secret_expires_at",
        allow_null=True,
        help_text="While in the future, the previous secret is still accepted.",
    )
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = Trigger
        fields = (
            "id",
            "project",
            "template",
            "slug",
            "description",
            "enabled",
            "auth",
            "url",
            "filters",
            "mapping",
            "dedupe_path",
            "max_body_bytes",
            "rate_limit",
            "secret_rotation_ends_at",
            "created_by",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields

    @extend_schema_field(
        serializers.URLField(help_text="Where the sender posts (token_in_url: add ?token=).")
    )
    def get_url(self, trigger: Trigger) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(trigger.path) if request is not None else trigger.path

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_created_by(self, trigger: Trigger) -> dict[str, Any] | None:
        return user_ref(trigger.created_by)


class TriggerCreatedSerializer(TriggerSerializer):
    secret = serializers.CharField(help_text="Shown this once: store it in the sender now.")

    class Meta(TriggerSerializer.Meta):
        fields = (*TriggerSerializer.Meta.fields, "secret")
        read_only_fields = fields


class TriggerDeliverySerializer(serializers.ModelSerializer):
    trigger = serializers.UUIDField(source="trigger_id")
    task = serializers.UUIDField(source="task_id", allow_null=True)
    execution = serializers.UUIDField(source="execution_id", allow_null=True)
    replay_of = serializers.UUIDField(source="replay_of_id", allow_null=True)
    replayed_by = serializers.SerializerMethodField()
    body = serializers.SerializerMethodField()

    class Meta:
        model = Delivery
        fields = (
            "id",
            "trigger",
            "dedupe_key",
            "event",
            "outcome",
            "reason",
            "response_status",
            "response_body",
            "task",
            "execution",
            "replay_of",
            "replayed_by",
            "duplicates",
            "received_at",
            "headers",
            "body",
            "body_truncated",
        )
        read_only_fields = fields

    @extend_schema_field(serializers.JSONField(help_text="The body (parsed when it is JSON), as kept."))
    def get_body(self, delivery: Delivery) -> Any:
        if not delivery.body_truncated:
            try:
                return json.loads(delivery.body)
            except ValueError:
                pass
        return delivery.body

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_replayed_by(self, delivery: Delivery) -> dict[str, Any] | None:
        return user_ref(delivery.replayed_by)
