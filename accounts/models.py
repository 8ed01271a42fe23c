"""Identity and tenancy: users, projects, memberships and scoped API keys."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth.models import AbstractUser, AnonymousUser, UserManager
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone
from rest_framework_api_key.models import AbstractAPIKey, BaseAPIKeyManager

from accounts.scopes import scopes_grant
from core.ratelimit import RATE_RE, validate_rate
from core.validators import validate_name

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

    def implicit_for(self, user: User | AnonymousUser, api_key: ApiKey | None = None) -> ProjectQuerySet:
        """The projects a request reaches when it names none (claim-next, slug lookups).

        A project-restricted key: its project. An unrestricted key: the projects where the
        caller's membership is older than the key, so joining a project later (accepting an
        invitation) never changes what an existing key's implicit lookups find. A session
        login: the caller's memberships. Superusers too reach only their own memberships
        here; every other project must be named.
        """
        if not user.is_authenticated:
            return self.none()
        if api_key is not None and api_key.project_id is not None:
            return self.visible_to(user, api_key)
        memberships = Membership.objects.filter(user=user)
        if api_key is not None:
            memberships = memberships.filter(created_at__lte=api_key.created)
        return self.filter(pk__in=memberships.values("project_id"))


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
        projects = visible_project_ids(user, api_key)
        if projects is None:
            return self
        # Resolve the ids first: a literal list lets the planner use per-project statistics and
        # the (project_id, …) indexes, where an IN (subquery) made it misjudge big projects.
        return self.filter(**{f"{self.project_field}__in": projects})


def visible_project_ids(user: User | AnonymousUser, api_key: ApiKey | None = None) -> list[uuid.UUID] | None:
    """The ids of the projects ``user`` (narrowed by ``api_key``) may read; None: every project
    (a superuser, unless the key is restricted to one). The one tenancy rule, for querysets
    (``ProjectScopedQuerySet.visible_to``) and for readers that filter in memory (the event
    stream)."""
    if not user.is_authenticated:
        return []
    if user.is_superuser and (api_key is None or api_key.project_id is None):
        return None
    return list(Project.objects.visible_to(user, api_key).values_list("pk", flat=True))


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


class InvitationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    ACCEPTED = "accepted", "Accepted"
    DECLINED = "declined", "Declined"
    REVOKED = "revoked", "Revoked"


class InvitationQuerySet(models.QuerySet):
    def visible_to(self, user: User | AnonymousUser, api_key: ApiKey | None = None) -> InvitationQuerySet:
        """Invitations the caller received (the invitee's side; a restricted key: none).

        The inviting side (a project's admins) reads them through ``of_project``.
        """
        if not user.is_authenticated or (api_key is not None and api_key.project_id is not None):
            return self.none()
        return self.filter(invitee=user)

    def of_project(self, project: Project) -> InvitationQuerySet:
        return self.filter(project=project)

    def pending(self) -> InvitationQuerySet:
        return self.filter(status=InvitationStatus.PENDING, expires_at__gt=timezone.now())


class AdminInvitationQuerySet(InvitationQuerySet):
    def visible_to(self, user: User | AnonymousUser, api_key: ApiKey | None = None) -> InvitationQuerySet:
        """The inviting side: invitations of the projects where the caller is admin."""
        if not user.is_authenticated:
            return self.none()
        projects = Project.objects.visible_to(user, api_key)
        if not user.is_superuser:
            projects = projects.filter(memberships__user=user, memberships__role=Role.ADMIN)
        return self.filter(project__in=list(projects.values_list("pk", flat=True)))


class Invitation(models.Model):
    """An offer of a role in a project, which only the invitee can turn into a membership.

    ``username`` is what the inviter typed. ``invitee`` is the active user of that name at
    the time, or null when there was none: such an invitation is kept (and listed to the
    project's admins) exactly like a real one, so it tells the inviter nothing, and it can
    never be accepted.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="invitations")
    username = models.CharField(max_length=150)
    invitee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="invitations_received",
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="invitations_sent",
    )
    status = models.CharField(
        max_length=10, choices=InvitationStatus.choices, default=InvitationStatus.PENDING
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    responded_at = models.DateTimeField(null=True, blank=True)

    objects = InvitationQuerySet.as_manager()
    # The same rows from the inviting side (the project admins' API and admin pages).
    of_admins = AdminInvitationQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at", "id")
        constraints = [
            models.UniqueConstraint(
                fields=("project", "username"),
                condition=Q(status="pending"),
                name="invitation_one_pending_per_username",
            ),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="invitation_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.username} to {self.project} ({self.role}, {self.status})"

    @property
    def expired(self) -> bool:
        return self.expires_at <= timezone.now()


def rate_bounds(rate: str) -> tuple[int, int]:
    """``count/[n]unit`` as (count, window seconds); raises ValueError for anything else."""
    validate_rate(rate)
    match = RATE_RE.match(rate)
    assert match is not None  # validate_rate checked it
    count, multiplier, unit = match.groups()
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit] * int(multiplier or 1)
    return int(count), seconds


def rate_within(rate: str, limit: str) -> bool:
    """True when ``rate`` allows no more than ``limit``: no bigger burst (count) and no
    higher sustained rate (count per second), so no time window lets it through more."""
    count, seconds = rate_bounds(rate)
    limit_count, limit_seconds = rate_bounds(limit)
    return count <= limit_count and count * limit_seconds <= limit_count * seconds


def validate_key_rate(rate: str) -> None:
    """Raise ValidationError (on ``rate_limit``) unless ``rate`` is empty or a rate within
    the operator's cap, TASKFORGE_RATE_LIMIT_MAX. The API and the admin both use it."""
    if not rate:
        return
    try:
        within = rate_within(rate, settings.TASKFORGE_RATE_LIMIT_MAX)
    except ValueError as exc:
        raise ValidationError({"rate_limit": [ValidationError(str(exc), code="invalid_rate")]}) from None
    if not within:
        raise ValidationError(
            {
                "rate_limit": [
                    ValidationError(
                        f"{rate!r} is above this server's cap of {settings.TASKFORGE_RATE_LIMIT_MAX} "
                        "(TASKFORGE_RATE_LIMIT_MAX).",
                        code="above_cap",
                    )
                ]
            }
        )


class ApiKeyQuerySet(models.QuerySet):
    def visible_to(self, user: User | AnonymousUser, api_key: ApiKey | None = None) -> ApiKeyQuerySet:
        """A user sees their own keys only (superusers too: keys are personal); a key
        restricted to a project sees only the keys restricted to that same project."""
        if not user.is_authenticated:
            return self.none()
        qs = self.filter(owner=user)
        if api_key is not None and api_key.project_id is not None:
            qs = qs.filter(project_id=api_key.project_id)
        return qs


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
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="children",
        editable=False,
        verbose_name="created by key",
        help_text="The key that created this one (never wider than it); revoking it revokes this.",
    )
    # The key of a registered agent (agents.Agent.api_key): it may act only as that agent, on
    # the few actions a view lists in ``agent_actions`` (accounts.permissions.HasScope).
    agent_bound = models.BooleanField(default=False, editable=False)

    objects = ApiKeyManager()

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"
        ordering = ("-created", "prefix")

    def clean(self) -> None:
        super().clean()
        validate_key_rate(self.rate_limit)

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
    database. See ``accounts/idempotency.py``.
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
