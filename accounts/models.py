"""Identity and tenancy: users, projects, memberships and scoped API keys."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth.models import AbstractUser, AnonymousUser, UserManager
from django.db import models
from django.db.models import Q
from django.utils import timezone
from rest_framework_api_key.models import AbstractAPIKey, BaseAPIKeyManager

from accounts.scopes import scopes_grant
from config.validators import validate_name

if TYPE_CHECKING:
    from collections.abc import Iterable


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    MEMBER = "member", "Member"
    ADMIN = "admin", "Admin"


# Each role can do what the roles before it can.
ROLE_RANK = {Role.VIEWER: 1, Role.MEMBER: 2, Role.ADMIN: 3}


def role_at_least(role: str | None, needed: str) -> bool:
    return role is not None and ROLE_RANK[Role(role)] >= ROLE_RANK[Role(needed)]


class TaskforgeUserManager(UserManager):
    """Every user made through the manager (createsuperuser, services, tests) gets a
    personal project, so "users only see their own tasks" holds from the first request."""

    def create_user(
        self, username: str, email: str | None = None, password: str | None = None, **extra_fields: Any
    ) -> User:
        user = super().create_user(username, email, password, **extra_fields)
        ensure_personal_project(user)
        return user

    def create_superuser(
        self, username: str, email: str | None = None, password: str | None = None, **extra_fields: Any
    ) -> User:
        user = super().create_superuser(username, email, password, **extra_fields)
        ensure_personal_project(user)
        return user


class User(AbstractUser):
    """The custom user model (from the first migration, so it can grow without pain)."""

    objects = TaskforgeUserManager()

    class Meta:
        ordering = ("id",)


class ProjectQuerySet(models.QuerySet):
    def visible_to(self, user: User | AnonymousUser, api_key: ApiKey | None = None) -> ProjectQuerySet:
        """Projects ``user`` belongs to (all for superusers), narrowed to the key's project."""
        if not user.is_authenticated:
            return self.none()
        qs = self if user.is_superuser else self.filter(memberships__user=user)
        if api_key is not None and api_key.project_id is not None:
            qs = qs.filter(pk=api_key.project_id)
        return qs


class Project(models.Model):
    """A tenant: everything reachable through the API lives in exactly one project."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, validators=[validate_name])
    description = models.TextField(blank=True, max_length=10_000)
    # Set on a user's personal project (one each); null for team projects.
    personal_owner = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="personal_project",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ProjectQuerySet.as_manager()

    class Meta:
        ordering = ("name", "id")

    def __str__(self) -> str:
        return self.name


class ProjectScopedQuerySet(models.QuerySet):
    """Base for every model that lives in a project: the one tenancy rule.

    Subclasses set ``project_field`` to the lookup path from the model to its project.
    """

    project_field = "project"

    def visible_to(self, user: User | AnonymousUser, api_key: ApiKey | None = None) -> models.QuerySet:
        if not user.is_authenticated:
            return self.none()
        projects = Project.objects.visible_to(user, api_key)
        if user.is_superuser and (api_key is None or api_key.project_id is None):
            return self
        # Resolve the ids first: a literal list lets the planner use per-project statistics and
        # the (project_id, …) indexes, where an IN (subquery) made it misjudge big projects.
        return self.filter(**{f"{self.project_field}__in": list(projects.values_list("pk", flat=True))})


class MembershipQuerySet(ProjectScopedQuerySet):
    project_field = "project"


class Membership(models.Model):
    """A user's role in a project."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        ordering = ("project_id", "user_id")
        constraints = [
            models.UniqueConstraint(fields=("project", "user"), name="membership_unique_user"),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} ({self.role})"


class ApiKeyQuerySet(models.QuerySet):
    def visible_to(self, user: User | AnonymousUser, api_key: ApiKey | None = None) -> ApiKeyQuerySet:
        """A user sees their own keys only (superusers too: keys are personal)."""
        if not user.is_authenticated:
            return self.none()
        return self.filter(owner=user)


class ApiKeyManager(BaseAPIKeyManager.from_queryset(ApiKeyQuerySet)):  # type: ignore[misc]
    pass


class ApiKey(AbstractAPIKey):
    """A scoped API key. The secret is shown once; only its hash is stored.

    The public identifier is ``prefix`` (the part of the key before the dot).
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    scopes = models.JSONField(default=list, help_text="e.g. task:read, task:write, or *")
    project = models.ForeignKey(
        Project,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="api_keys",
        help_text="If set, the key reaches this project only.",
    )
    rate_limit = models.CharField(
        max_length=32,
        blank=True,
        help_text="Requests per window for this key, e.g. 5000/15m; empty uses the default.",
    )
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiKeyManager()

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"
        ordering = ("-created", "prefix")

    def grants(self, needed: str) -> bool:
        return scopes_grant(self.scopes, needed)

    def scopes_cover(self, scopes: Iterable[str]) -> bool:
        return all(self.grants(s) for s in scopes)

    def as_log(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "name": self.name}


def ensure_personal_project(user: User) -> Project:
    """The user's personal project, made (with the user as admin) if missing."""
    project, created = Project.objects.get_or_create(
        personal_owner=user, defaults={"name": f"{user.get_username()} (personal)"}
    )
    if created:
        Membership.objects.get_or_create(project=project, user=user, defaults={"role": Role.ADMIN})
    return project


class IdempotencyState(models.TextChoices):
    IN_FLIGHT = "in_flight", "In flight"
    COMPLETED = "completed", "Completed"


class IdempotencyKey(models.Model):
    """One ``Idempotency-Key`` a principal sent, and the response its first request got.

    The row is inserted (state in_flight) in its own committed transaction before the view
    runs; the unique constraint on (principal, key) is what makes a duplicate lose, on every
    database. See ``config/idempotency.py``.
    """

    # "key:<api key id>" or "user:<user id>" (session logins).
    principal = models.CharField(max_length=200)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="sha256 of method, path and body")
    state = models.CharField(
        max_length=10, choices=IdempotencyState.choices, default=IdempotencyState.IN_FLIGHT
    )
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    response_headers = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    locked_at = models.DateTimeField(default=timezone.now, help_text="when the in-flight request started")
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ("-created_at", "id")
        constraints = [
            models.UniqueConstraint(fields=("principal", "key"), name="idempotency_key_unique"),
        ]
        indexes = [models.Index(fields=["expires_at"], name="idempotency_expiry_idx")]

    def __str__(self) -> str:
        return f"{self.principal} {self.key} ({self.state})"
