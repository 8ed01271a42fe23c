"""Webhook API shapes: input serializers validate, output serializers render. No side effects.

The secret appears in exactly two shapes: the create response and the rotate response.

Only the admins of a subscription's project see its URL whole and what receivers answered;
the other members and viewers see ``scheme://host/…`` and no response bodies
(``revealed``; the views put the caller's admin projects in the serializer context).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.serializers import StrictSerializer, UserRefSerializer, user_ref
from core.validators import validate_label_text
from webhooks.models import (
    ALL_EVENTS,
    DESCRIPTION_MAX,
    EVENT_TYPES,
    URL_MAX,
    Delivery,
    DeliveryAttempt,
    Subscription,
    validate_event_types,
)
from webhooks.services import mask_url, mask_urls_in

EVENT_TYPE_CHOICES = [ALL_EVENTS, *EVENT_TYPES]


def revealed(context: dict[str, Any], project_id: Any) -> bool:
    """Whether the caller may see ``project_id``'s webhook URLs and receivers' answers:
    ``context["reveal"]`` when the view decided for the whole response, else membership of
    ``context["admin_projects"]``. Without either, nothing is revealed."""
    if "reveal" in context:
        return bool(context["reveal"])
    return project_id in context.get("admin_projects", ())


def event_types_field(**kwargs: Any) -> serializers.ListField:
    return serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_TYPE_CHOICES),
        min_length=1,
        max_length=len(EVENT_TYPE_CHOICES),
        validators=[validate_event_types],
        help_text='Event types to receive, or ["*"] for all (the default).',
        **kwargs,
    )


# The scheme rule of webhooks.ssrf, stated as a pattern so the schema documents it (the
# service still checks https-only unless TASKFORGE_WEBHOOK_ALLOW_HTTP).
URL_SCHEME = RegexValidator(
    r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9._~%:@!$&'()*+,;=\[\]-]+([/?#][!-~]*)?$",
    "The URL must be https:// (or http://) then a host, in printable ASCII.",
    code="https_required",
)


class WebhookWriteSerializer(StrictSerializer):
    project = serializers.UUIDField(
        required=False, help_text="Defaults to the key's project, else your personal project."
    )
    url = serializers.CharField(
        max_length=URL_MAX,
        validators=[URL_SCHEME],
        help_text="https URL of a public host; private, loopback and metadata addresses are refused.",
    )
    event_types = event_types_field(required=False)
    active = serializers.BooleanField(required=False, default=True)
    description = serializers.CharField(
        max_length=DESCRIPTION_MAX, required=False, allow_blank=True, validators=[validate_label_text]
    )


class WebhookUpdateSerializer(StrictSerializer):
    url = serializers.CharField(max_length=URL_MAX, required=False, validators=[URL_SCHEME])
    event_types = event_types_field(required=False)
    active = serializers.BooleanField(
        required=False, help_text="Setting it back to true clears disabled_reason."
    )
    description = serializers.CharField(
        max_length=DESCRIPTION_MAX, required=False, allow_blank=True, validators=[validate_label_text]
    )


class WebhookSerializer(serializers.ModelSerializer):
    project = serializers.UUIDField(source="project_id")
    event_types = serializers.ListField(child=serializers.ChoiceField(choices=EVENT_TYPE_CHOICES))
    created_by = serializers.SerializerMethodField()
    secret_rotation_ends_at = serializers.DateTimeField(
        source="previous_secret_expires_at",
        allow_null=True,
        help_text="While in the future, deliveries are signed with the previous secret too.",
    )

    class Meta:
        model = Subscription
        fields = (
            "id",
            "project",
            "url",
            "event_types",
            "active",
            "description",
            "disabled_reason",
            "disabled_at",
            "failing_since",
            "secret_rotation_ends_at",
            "created_by",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields
        extra_kwargs = {
            "url": {"help_text": "Whole for the project's admins; scheme://host/… for everyone else."},
            "disabled_reason": {"help_text": "Why it was switched off (410 Gone, days of failures, owner)."},
            "failing_since": {"help_text": "Start of the current run of failed attempts."},
        }

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_created_by(self, subscription: Subscription) -> dict[str, Any] | None:
        return user_ref(subscription.created_by)

    def to_representation(self, instance: Subscription) -> dict[str, Any]:
        data = super().to_representation(instance)
        if not revealed(self.context, instance.project_id):
            data["url"] = mask_url(data["url"])
            data["disabled_reason"] = mask_urls_in(data["disabled_reason"])
        return data


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(help_text="Shown once: store it now. whsec_ + base64 of 32 bytes.")

    class Meta(WebhookSerializer.Meta):
        fields = (*WebhookSerializer.Meta.fields, "secret")
        read_only_fields = fields


class NullIfBlankCharField(serializers.CharField):
    """A text column that is "" when empty, shown as null (no error is null everywhere)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(read_only=True, allow_null=True, **kwargs)

    def to_representation(self, value: Any) -> str | None:
        return value or None


class DeliveryAttemptSerializer(serializers.ModelSerializer):
    response_body = serializers.CharField(
        allow_null=True,
        help_text="The start of the receiver's answer; null unless you are an admin of the project.",
    )
    error = NullIfBlankCharField(help_text="null when the receiver answered.")

    class Meta:
        model = DeliveryAttempt
        fields = (
            "number",
            "started_at",
            "duration_ms",
            "url",
            "address",
            "status_code",
            "response_body",
            "error",
        )
        read_only_fields = fields


class DeliverySerializer(serializers.ModelSerializer):
    webhook = serializers.UUIDField(source="subscription_id")
    webhook_id = serializers.CharField(source="message_id", help_text="The webhook-id header sent.")
    event = serializers.IntegerField(source="event_id", allow_null=True)
    payload = serializers.SerializerMethodField()
    attempts = DeliveryAttemptSerializer(many=True)
    last_error = NullIfBlankCharField()

    class Meta:
        model = Delivery
        fields = (
            "id",
            "webhook",
            "webhook_id",
            "event",
            "event_type",
            "trigger",
            "status",
            "attempt_count",
            "next_attempt_at",
            "last_attempt_at",
            "last_status_code",
            "last_error",
            "delivered_at",
            "created_at",
            "payload",
            "attempts",
        )
        read_only_fields = fields

    @extend_schema_field(serializers.JSONField(help_text="The body sent: {type, timestamp, data}."))
    def get_payload(self, delivery: Delivery) -> Any:
        return json.loads(delivery.payload)

    def to_representation(self, instance: Delivery) -> dict[str, Any]:
        data = super().to_representation(instance)
        if not revealed(self.context, None):
            data["last_error"] = mask_urls_in(data["last_error"])
            for attempt in data["attempts"]:
                attempt["url"] = mask_url(attempt["url"])
                attempt["error"] = mask_urls_in(attempt["error"])
                attempt["response_body"] = None
        return data
