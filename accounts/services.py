"""Every write to accounts: users, projects, memberships, API keys."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import (
    ApiKey,
    Invitation,
    InvitationStatus,
    Membership,
    Project,
    Role,
    User,
    rate_within,
    validate_key_rate,
)
from accounts.scopes import normalize_scopes
from core.errors import Conflict, field_error
from core.ratelimit import validate_rate
from core.validators import first_refused_character


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
    """Add ``user`` directly. Internal (operators, tests): through the API and the admin a
    user joins a project only by accepting an invitation (``invitation_accept``)."""
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
    if membership.project.personal_owner_id == membership.user_id and role != Role.ADMIN:
        raise field_error("role", "The owner of a personal project stays its admin.", "personal_owner")
    if membership.role == Role.ADMIN and role != Role.ADMIN and _admin_count(membership.project) == 1:
        raise field_error("role", "The last admin of a project cannot be demoted.", "last_admin")
    membership.role = role
    membership.full_clean()
    membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership) -> None:
    """Remove a member (an admin removing someone, or a member leaving): 409 for the owner of
    a personal project and for a team project's last admin (who must hand over first)."""
    _lock_admins(membership.project)
    membership.refresh_from_db()
    if membership.project.personal_owner_id == membership.user_id:
        raise Conflict(
            "The owner of a personal project cannot leave it or be removed from it.", code="personal_owner"
        )
    if membership.role == Role.ADMIN and _admin_count(membership.project) == 1:
        raise Conflict(
            "The last admin of a project cannot leave or be removed: make another member admin first.",
            code="last_admin",
        )
    membership.delete()


# --- Invitations: the only way into someone else's project -------------------------------------
@transaction.atomic
def invitation_create(*, project: Project, username: str, role: str, actor: User) -> Invitation | None:
    """Invite ``username`` to ``project`` with ``role`` (the caller checked ``actor`` is admin).

    The same work happens whether or not the name belongs to an active user: an unknown name
    gets an invitation with no invitee (listed like the others, never acceptable), so neither
    the answer nor the pending list tells the inviter whether the account exists. A name
    that is already a member gets nothing (admins see the member list anyway). Inviting a
    name again while its invitation is pending renews that one (role, expiry, inviter).
    """
    if role not in Role.values:
        raise field_error("role", f"Not a role: {role!r}.", "invalid_choice")
    username = username.strip()
    if not username or len(username) > 150:
        raise field_error("username", "A username of 1 to 150 characters is required.", "invalid")
    invitee = User.objects.filter(username=username, is_active=True).first()
    # The same query whether or not the account exists (no timing difference to measure).
    if Membership.objects.filter(project=project, user__username=username).exists():
        return None
    now = timezone.now()
    fields = {
        "invitee": invitee,
        "role": role,
        "invited_by": actor,
        "created_at": now,
        "expires_at": now + timedelta(seconds=settings.TASKFORGE_INVITATION_TTL),
    }
    for _attempt in range(2):  # a concurrent invite of the same name: renew the winner's row
        try:
            with transaction.atomic():
                invitation, _ = Invitation.objects.update_or_create(
                    project=project, username=username, status=InvitationStatus.PENDING, defaults=fields
                )
                return invitation
        except IntegrityError:
            continue
    return None  # pragma: no cover - lost the race twice


def _respondable(invitation: Invitation, actor: User) -> Invitation:
    locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if locked.invitee_id is None or locked.invitee_id != actor.pk:
        raise Invitation.DoesNotExist(invitation.pk)
    if locked.status != InvitationStatus.PENDING:
        raise Conflict(f"This invitation is {locked.status}.", code="invitation_not_pending")
    if locked.expired:
        raise Conflict("This invitation has expired; ask for a new one.", code="invitation_expired")
    return locked


@transaction.atomic
def invitation_accept(*, invitation: Invitation, actor: User) -> Membership:
    """The invitee accepts: they become a member with the invitation's role."""
    locked = _respondable(invitation, actor)
    membership, _ = Membership.objects.get_or_create(
        project_id=locked.project_id, user=actor, defaults={"role": locked.role}
    )
    locked.status = InvitationStatus.ACCEPTED
    locked.responded_at = timezone.now()
    locked.save(update_fields=["status", "responded_at"])
    return membership


@transaction.atomic
def invitation_decline(*, invitation: Invitation, actor: User) -> Invitation:
    locked = _respondable(invitation, actor)
    locked.status = InvitationStatus.DECLINED
    locked.responded_at = timezone.now()
    locked.save(update_fields=["status", "responded_at"])
    return locked


@transaction.atomic
def invitation_revoke(*, invitation: Invitation) -> Invitation:
    """A project admin withdraws a pending invitation (revoking twice is a no-op)."""
    locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if locked.status == InvitationStatus.REVOKED:
        return locked
    if locked.status != InvitationStatus.PENDING:
        raise Conflict(f"This invitation is already {locked.status}.", code="invitation_not_pending")
    locked.status = InvitationStatus.REVOKED
    locked.responded_at = timezone.now()
    locked.save(update_fields=["status", "responded_at"])
    return locked


def _check_rate(rate_limit: str, errors: dict[str, list[Any]]) -> None:
    if not rate_limit:
        return
    try:
        validate_rate(rate_limit)
        validate_key_rate(rate_limit)
    except ValueError as exc:
        errors["rate_limit"] = [ValidationError(str(exc), code="invalid_rate")]
    except ValidationError as exc:
        errors["rate_limit"] = list(exc.error_dict["rate_limit"])  # keeps its code (above_cap)


def _wider(message: str) -> ValidationError:
    return ValidationError(message, code="wider_than_parent")


def _no_wider_than_parent(
    parent: ApiKey,
    *,
    scopes: list[str],
    project: Project | None,
    expires_at: datetime | None,
    rate_limit: str,
    errors: dict[str, list[Any]],
) -> None:
    """Record in ``errors`` every way a key asked of ``parent`` would be wider than it (each
    with the code ``wider_than_parent``)."""
    if "scopes" not in errors and not parent.scopes_cover(scopes):
        granted = ", ".join(parent.scopes)
        errors["scopes"] = [
            _wider(f"A key cannot create a key with scopes it does not have (it has: {granted}).")
        ]
    if parent.project_id is not None and (project is None or project.pk != parent.project_id):
        errors["project"] = [
            _wider(f"A project-restricted key can only create keys for its project ({parent.project_id}).")
        ]
    outlives = parent.expiry_date is not None and (expires_at is None or expires_at > parent.expiry_date)
    if outlives and "expires_at" not in errors:
        errors["expires_at"] = [
            _wider(
                "A key cannot outlive the key that creates it (that one expires at "
                f"{parent.expiry_date.isoformat()})."  # type: ignore[union-attr]
            )
        ]
    parent_rate = parent.rate_limit or settings.TASKFORGE_RATE_LIMIT_AUTHENTICATED
    if rate_limit and "rate_limit" not in errors and not rate_within(rate_limit, parent_rate):
        errors["rate_limit"] = [
            _wider(f"{rate_limit!r} is wider than the rate of the key that creates it ({parent_rate}).")
        ]


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
    agent_bound: bool = False,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never shown again.

    When a key creates a key (``creator_key``, recorded as the new key's ``parent``), the new
    one is never wider: scopes covered by the parent's, the parent's project if it has one,
    an expiry no later than the parent's (the parent's when none is given) and a rate no
    wider than the parent's (the parent's when none is given). Every key's rate is within
    TASKFORGE_RATE_LIMIT_MAX.
    """
    errors: dict[str, list[Any]] = {}
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
    if creator_key is not None:
        expires_at = expires_at if expires_at is not None else creator_key.expiry_date
        rate_limit = rate_limit or creator_key.rate_limit
    _check_rate(rate_limit, errors)
    if project is not None and not Project.objects.visible_to(owner).filter(pk=project.pk).exists():
        errors["project"] = ["You are not a member of this project."]
    if creator_key is not None:
        _no_wider_than_parent(
            creator_key,
            scopes=scopes,
            project=project,
            expires_at=expires_at,
            rate_limit=rate_limit,
            errors=errors,
        )
    if errors:
        raise ValidationError(errors)
    return ApiKey.objects.create_key(
        owner=owner,
        name=name,
        scopes=scopes,
        project=project,
        expiry_date=expires_at,
        rate_limit=rate_limit,
        parent=creator_key,
        agent_bound=agent_bound,
    )


def _descendants(api_key: ApiKey) -> list[int]:
    """Ids of every key ``api_key`` created, and the keys those created, and so on."""
    found: list[int] = []
    frontier = [api_key.pk]
    while frontier:
        frontier = [
            pk
            for pk in ApiKey.objects.filter(parent__in=frontier).values_list("pk", flat=True)
            if pk not in found
        ]
        found.extend(frontier)
    return found


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, cascade: bool = True) -> ApiKey:
    """Revoke a key for good (idempotent: revoking twice keeps the first time).

    By default the keys it created (recursively) are revoked with it; ``cascade=False``
    leaves them working.
    """
    locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    now = timezone.now()
    if not locked.revoked:
        locked.revoked = True
        locked.revoked_at = now
        locked.save(update_fields=["revoked", "revoked_at"])
    if cascade:
        ApiKey.objects.filter(pk__in=_descendants(locked), revoked=False).update(revoked=True, revoked_at=now)
    return locked
