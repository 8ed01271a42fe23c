"""Every write to accounts: users, projects, memberships, API keys."""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, Membership, Project, Role, User
from accounts.scopes import normalize_scopes
from config.errors import field_error
from config.ratelimit import validate_rate
from config.validators import first_refused_character


@transaction.atomic
def project_create(*, name: str, actor: User, description: str = "") -> Project:
    project = Project(name=name.strip(), description=description)
    project.full_clean()
    project.save()
    Membership.objects.create(project=project, user=actor, role=Role.ADMIN)
    return project


def _admin_count(project: Project) -> int:
    return project.memberships.filter(role=Role.ADMIN).count()


@transaction.atomic
def membership_add(*, project: Project, user: User, role: str) -> Membership:
    if Membership.objects.filter(project=project, user=user).exists():
        raise field_error("user", "This user is already a member of the project.", "already_member")
    membership = Membership(project=project, user=user, role=role)
    membership.full_clean()
    membership.save()
    return membership


def _lock_admins(project: Project) -> None:
    # Serialise role changes per project so two concurrent demotions cannot both pass
    # the "last admin" check.
    list(Project.objects.select_for_update().filter(pk=project.pk).values_list("pk"))


@transaction.atomic
def membership_set_role(*, membership: Membership, role: str) -> Membership:
    _lock_admins(membership.project)
    membership.refresh_from_db()
    if membership.role == Role.ADMIN and role != Role.ADMIN and _admin_count(membership.project) == 1:
        raise field_error("role", "The last admin of a project cannot be demoted.", "last_admin")
    membership.role = role
    membership.full_clean()
    membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership) -> None:
    _lock_admins(membership.project)
    membership.refresh_from_db()
    if membership.role == Role.ADMIN and _admin_count(membership.project) == 1:
        raise field_error("user", "The last admin of a project cannot be removed.", "last_admin")
    if membership.project.personal_owner_id == membership.user_id:
        raise field_error("user", "The owner cannot leave their personal project.", "personal_owner")
    membership.delete()


@transaction.atomic
def api_key_create(
    *,
    owner: User,
    name: str,
    scopes: list[str],
    project: Project | None = None,
    expires_at: datetime | None = None,
    rate_limit: str = "",
    creator_key: ApiKey | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never shown again.

    When a key creates a key (``creator_key``), the new one can be no wider: its scopes are
    covered by the creator's and it is bound to the creator's project if that one is.
    """
    errors: dict[str, list[str]] = {}
    name = (name or "").strip()
    if not name or len(name) > 50:
        errors["name"] = ["A name of 1 to 50 characters is required."]
    elif first_refused_character(name):
        errors["name"] = ["A name must not contain control or invisible formatting characters."]
    try:
        scopes = normalize_scopes(list(scopes))
        if not scopes:
            errors["scopes"] = ["At least one scope is required."]
    except ValueError as exc:
        errors["scopes"] = [str(exc)]
    if expires_at is not None and expires_at <= timezone.now():
        errors["expires_at"] = ["The expiry must be in the future."]
    if rate_limit:
        try:
            validate_rate(rate_limit)
        except ValueError as exc:
            errors["rate_limit"] = [str(exc)]
    if project is not None and not Project.objects.visible_to(owner).filter(pk=project.pk).exists():
        errors["project"] = ["You are not a member of this project."]
    if creator_key is not None and "scopes" not in errors:
        if not creator_key.scopes_cover(scopes):
            errors["scopes"] = ["A key cannot create a key with scopes it does not have."]
        if creator_key.project_id is not None and (project is None or project.pk != creator_key.project_id):
            errors["project"] = ["A project-restricted key can only create keys for its project."]
    if errors:
        raise ValidationError(errors)
    return ApiKey.objects.create_key(
        owner=owner,
        name=name,
        scopes=scopes,
        project=project,
        expiry_date=expires_at,
        rate_limit=rate_limit,
    )


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key for good (idempotent: revoking twice keeps the first time)."""
    locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if not locked.revoked:
        locked.revoked = True
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked", "revoked_at"])
    return locked
