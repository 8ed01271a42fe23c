"""Secret API shapes. The value is write-only: it is in the input serializers (``writeOnly``
in the schema) and in no output serializer, so no answer can carry it."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.serializers import StrictSerializer, UserRefSerializer, user_ref
from core.validators import validate_label_text
from vault.models import DESCRIPTION_MAX, NAME_MAX, VALUE_MAX_CHARS, Secret, validate_secret_name


def value_field(**kwargs: Any) -> serializers.CharField:
    return serializers.CharField(
        write_only=True,
        trim_whitespace=False,
        max_length=VALUE_MAX_CHARS,
        style={"input_type": "password"},
        help_text="The secret value. Write-only: never returned, logged or shown after it is set.",
        **kwargs,
    )


def description_field() -> serializers.CharField:
    return serializers.CharField(
        max_length=DESCRIPTION_MAX, required=False, allow_blank=True, validators=[validate_label_text]
    )


class SecretWriteSerializer(StrictSerializer):
    project = serializers.UUIDField(
        required=False, help_text="Defaults to the key's project, else your personal project."
    )
    name = serializers.CharField(
        max_length=NAME_MAX,
        validators=[validate_secret_name],
        help_text="An environment variable name, unique in the project; runs refer to it as "
        '{"secret": "<name>"}.',
    )
    value = value_field()
    description = description_field()


class SecretReplaceSerializer(StrictSerializer):
    """PUT: a new value (required), and the description."""

    value = value_field()
    description = description_field()


class SecretUpdateSerializer(StrictSerializer):
    """PATCH: a new value, a new description, or both."""

    value = value_field(required=False)
    description = description_field()


class SecretSerializer(serializers.ModelSerializer):
    project = serializers.UUIDField(source="project_id")
    value = serializers.SerializerMethodField(help_text='Always "set": the value itself is never shown.')
    created_by = serializers.SerializerMethodField()
    updated_by = serializers.SerializerMethodField()

    class Meta:
        model = Secret
        fields = (
            "id",
            "project",
            "name",
            "description",
            "value",
            "created_by",
            "created_at",
            "updated_by",
            "updated_at",
            "last_used_at",
        )
        read_only_fields = fields
        extra_kwargs = {"last_used_at": {"help_text": "When a run last received it (null: never)."}}

    def get_value(self, secret: Secret) -> str:
        return "set"

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_created_by(self, secret: Secret) -> dict[str, Any] | None:
        return user_ref(secret.created_by)

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_updated_by(self, secret: Secret) -> dict[str, Any] | None:
        return user_ref(secret.updated_by)
