from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import ApiKey, Membership, Project, Role
from accounts.scopes import SCOPES
from config.ratelimit import RATE_PATTERN
from config.serializers import StrictSerializer
from config.validators import validate_name

User = get_user_model()


class UserSummarySerializer(serializers.ModelSerializer):
    # Not an EmailField: the address is optional, and "" is not a valid `format: email`.
    email = serializers.CharField(read_only=True, help_text="Empty when the user has none.")

    class Meta:
        model = User
        fields = ("id", "username", "email")
        read_only_fields = fields


class ProjectSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField(help_text="The caller's role in the project.")
    personal = serializers.SerializerMethodField()

    class Meta:
        model = Project
        fields = ("id", "name", "description", "personal", "role", "created_at")
        read_only_fields = ("id", "personal", "role", "created_at")

    @extend_schema_field(serializers.ChoiceField(choices=Role.choices, allow_null=True))
    def get_role(self, project: Project) -> str | None:
        roles: dict[Any, str] = self.context.get("roles", {})
        if project.pk in roles:
            return roles[project.pk]
        request = self.context["request"]
        return "admin" if request.user.is_superuser else None

    def get_personal(self, project: Project) -> bool:
        return project.personal_owner_id is not None


class ProjectCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=200, trim_whitespace=True)
    description = serializers.CharField(max_length=10_000, required=False, allow_blank=True, default="")


class MembershipSerializer(serializers.ModelSerializer):
    user = UserSummarySerializer(read_only=True)

    class Meta:
        model = Membership
        fields = ("user", "role", "created_at")
        read_only_fields = ("user", "created_at")


class MembershipCreateSerializer(StrictSerializer):
    username = serializers.CharField(help_text="Username of the user to add.")
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)

    def validate_username(self, value: str) -> Any:
        user = User.objects.filter(username=value, is_active=True).first()
        if user is None:
            raise serializers.ValidationError("No active user has this username.", code="does_not_exist")
        return user


class MembershipUpdateSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=Role.choices)


class ApiKeySerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="prefix", read_only=True, help_text="The key's public prefix.")
    project = serializers.PrimaryKeyRelatedField(
        read_only=True, allow_null=True, help_text="The project the key is restricted to, if any."
    )
    expires_at = serializers.DateTimeField(source="expiry_date", read_only=True, allow_null=True)
    created_at = serializers.DateTimeField(source="created", read_only=True)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=SCOPES), read_only=True)

    class Meta:
        model = ApiKey
        fields = (
            "id",
            "name",
            "scopes",
            "project",
            "expires_at",
            "rate_limit",
            "revoked",
            "revoked_at",
            "last_used_at",
            "created_at",
        )
        read_only_fields = fields


class ApiKeyCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=50, trim_whitespace=True, validators=[validate_name])
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=SCOPES), min_length=1, max_length=len(SCOPES)
    )
    project = serializers.UUIDField(required=False, allow_null=True, default=None)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    rate_limit = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=32,
        # The same rule as config.ratelimit.validate_rate, as a pattern so the schema states it.
        validators=[RegexValidator(RATE_PATTERN, "Not a rate like 1000/15m.", code="invalid_rate")],
        help_text="count/[n]unit, e.g. 5000/15m; empty uses the default.",
    )


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The secret key. It is shown only once.")

    class Meta(ApiKeySerializer.Meta):
        fields = (*ApiKeySerializer.Meta.fields, "key")
        read_only_fields = fields


class MeSerializer(serializers.Serializer):
    user = UserSummarySerializer()
    is_superuser = serializers.BooleanField()
    personal_project = serializers.UUIDField(allow_null=True)
    api_key = ApiKeySerializer(allow_null=True, help_text="The key this request used, if any.")
    projects = ProjectSerializer(many=True)
