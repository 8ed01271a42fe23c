"""Secret API shapes. The value is write-only: it is in the input serializers (``writeOnly``
in the schema) and in no output serializer, so no answer can carry it."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import ErrorDetail

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


class ClosedSerializer(StrictSerializer):
    """Refuses fields it does not know (a ``name`` sent to PATCH is a 400, not ignored)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                known = ", ".join(self.fields)
                raise serializers.ValidationError(
                    {
                        name: [ErrorDetail(f"Not a field you can send here ({known}).", code="unknown_field")]
                        for name in unknown
                    }
                )
        return super().to_internal_value(data)


class SecretWriteSerializer(ClosedSerializer):
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


class SecretReplaceSerializer(ClosedSerializer):
    """PUT: a new value (required), and the description."""

    value = value_field()
    description = description_field()


class SecretUpdateSerializer(ClosedSerializer):
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
