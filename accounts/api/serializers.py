from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import ApiKey, Invitation, Membership, Project, Role
from accounts.scopes import SCOPES
from core.ratelimit import RATE_PATTERN
from core.serializers import StrictSerializer, UserRefSerializer
from core.validators import validate_name

User = get_user_model()


class UserSummarySerializer(serializers.ModelSerializer):
    email = serializers.SerializerMethodField(
        help_text="Only for yourself (or to a superuser): null for other users. Empty when none."
    )

    class Meta:
        model = User
        fields = ("id", "username", "email")
        read_only_fields = fields

    # Not an EmailField: the address is optional, and "" is not a valid `format: email`.
    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_email(self, user: Any) -> str | None:
        """Another user's address is never shown, except to superusers (issue 18)."""
        request = self.context.get("request")
        viewer = getattr(request, "user", None)
        if viewer is not None and viewer.is_authenticated and (viewer.is_superuser or viewer.pk == user.pk):
            return user.email
        return None


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
    name = serializers.CharField(max_length=200, trim_whitespace=True, validators=[validate_name])
    description = serializers.CharField(max_length=10_000, required=False, allow_blank=True, default="")


class MembershipSerializer(serializers.ModelSerializer):
    user = UserSummarySerializer(read_only=True)

    class Meta:
        model = Membership
        fields = ("user", "role", "created_at")
        read_only_fields = ("user", "created_at")


class InvitationCreateSerializer(StrictSerializer):
    username = serializers.CharField(max_length=150, help_text="Username of the user to invite.")
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


class InvitationSentSerializer(serializers.Serializer):
    """The same answer whether or not the username belongs to an account."""

    detail = serializers.CharField()
    username = serializers.CharField()
    role = serializers.ChoiceField(choices=Role.choices)


class ProjectInvitationSerializer(serializers.ModelSerializer):
    """A pending invitation as the project's admins see it: the name they typed, no more."""

    invited_by = UserRefSerializer(read_only=True, allow_null=True)

    class Meta:
        model = Invitation
        fields = ("id", "username", "role", "invited_by", "created_at", "expires_at")
        read_only_fields = fields


class InvitedProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ("id", "name")
        read_only_fields = fields


class ReceivedInvitationSerializer(serializers.ModelSerializer):
    """An invitation the caller received."""

    project = InvitedProjectSerializer(read_only=True)
    invited_by = UserRefSerializer(read_only=True, allow_null=True)

    class Meta:
        model = Invitation
        fields = ("id", "project", "role", "invited_by", "created_at", "expires_at")
        read_only_fields = fields


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
    parent = serializers.SerializerMethodField(
        help_text="The prefix of the key that created this one, if a key did (null when that key "
        "is outside what the calling key may see)."
    )

    class Meta:
        model = ApiKey
        fields = (
            "id",
            "name",
            "scopes",
            "project",
            "parent",
            "expires_at",
            "rate_limit",
            "revoked",
            "revoked_at",
            "last_used_at",
            "created_at",
        )
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_parent(self, api_key: ApiKey) -> str | None:
        parent = api_key.parent
        if parent is None:
            return None
        caller = getattr(self.context.get("request"), "auth", None)
        restricted = isinstance(caller, ApiKey) and caller.project_id is not None
        if restricted and parent.project_id != caller.project_id:
            return None  # a restricted key learns nothing about keys beyond its project
        return parent.prefix


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
        # The same rule as core.ratelimit.validate_rate, as a pattern so the schema states it.
        validators=[RegexValidator(RATE_PATTERN, "Not a rate like 1000/15m.", code="invalid_rate")],
        help_text="count/[n]unit, e.g. 5000/15m; empty uses the default (or, for a key created by "
        "a key, that key's rate). At most the server's TASKFORGE_RATE_LIMIT_MAX.",
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
