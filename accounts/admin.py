from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.forms import BaseInlineFormSet
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey as LibraryAPIKey

from accounts import services
from accounts.admin_access import ProjectRoleAdmin, ProjectRoleInline, require_project_role, superuser_only
from accounts.models import (
    ROLE_RANK,
    ApiKey,
    Invitation,
    InvitationStatus,
    Membership,
    Project,
    Role,
    User,
    ensure_personal_project,
)
from accounts.scopes import SCOPES
from core.ratelimit import validate_rate

# The library's own concrete key model is unused (ours is accounts.ApiKey): keep it out of sight.
admin.site.unregister(LibraryAPIKey)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    """Superusers manage every account. Other staff see and edit only their own account, and
    never its flags, groups or permissions (nobody grants themselves staff or superuser)."""

    list_display = ("username", "email", "is_staff", "is_superuser", "is_active", "date_joined")
    ACCOUNT_FLAGS = ("username", "is_active", "is_staff", "is_superuser", "groups", "user_permissions")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        qs = super().get_queryset(request)
        return qs if request.user.is_superuser else qs.filter(pk=request.user.pk)

    def get_readonly_fields(self, request: HttpRequest, obj: User | None = None) -> tuple[str, ...]:
        fields = tuple(super().get_readonly_fields(request, obj))
        if request.user.is_superuser:
            return fields
        return (*fields, *self.ACCOUNT_FLAGS, "last_login", "date_joined")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return superuser_only(request)

    def has_change_permission(self, request: HttpRequest, obj: User | None = None) -> bool:
        if not super().has_change_permission(request, obj):
            return False
        return request.user.is_superuser or obj is None or obj.pk == request.user.pk

    def has_delete_permission(self, request: HttpRequest, obj: User | None = None) -> bool:
        return superuser_only(request)

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        if not request.user.is_superuser and obj.pk != request.user.pk:
            raise PermissionDenied("Only superusers manage other accounts.")
        super().save_model(request, obj, form, change)
        ensure_personal_project(obj)


# Groups carry model permissions: only superusers hand them out.
admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(DjangoGroupAdmin):
    def has_module_permission(self, request: HttpRequest) -> bool:
        return superuser_only(request)

    def has_view_permission(self, request: HttpRequest, obj: Group | None = None) -> bool:
        return superuser_only(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return superuser_only(request)

    def has_change_permission(self, request: HttpRequest, obj: Group | None = None) -> bool:
        return superuser_only(request)

    def has_delete_permission(self, request: HttpRequest, obj: Group | None = None) -> bool:
        return superuser_only(request)


class MembershipFormSet(BaseInlineFormSet):
    """The membership rows as edited, checked as a whole before anything is saved (the
    services check again): nobody raises their own role, the owner of a personal project stays
    its admin, a project keeps an admin."""

    request: HttpRequest

    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        problems: list[str] = []
        admins = 0
        for form in self.forms:
            data = getattr(form, "cleaned_data", None)
            if not data or (form.instance.pk is None and not form.has_changed()):
                continue
            deleting = bool(data.get("DELETE"))
            role = data.get("role") or form.instance.role
            if form.instance.pk is not None:
                problems += self._change_problems(form, role, deleting)
            if not deleting and role == Role.ADMIN:
                admins += 1
        if admins == 0 and self.instance.pk is not None and self.instance.memberships.exists():
            problems.append("A project keeps at least one admin.")
        if problems:
            raise ValidationError(problems)

    def _change_problems(self, form: Any, role: str, deleting: bool) -> list[str]:
        stored = Membership.objects.select_related("user").get(pk=form.instance.pk)
        problems = []
        if "user" in form.changed_data:
            problems.append(f"{stored.user}: a membership cannot move to another user; remove it instead.")
        owner = self.instance.personal_owner_id
        if owner is not None and stored.user_id == owner and (deleting or role != Role.ADMIN):
            problems.append(f"{stored.user} owns this personal project: they stay its admin.")
        actor = self.request.user
        if stored.user_id == actor.pk and not actor.is_superuser and ROLE_RANK[role] > ROLE_RANK[stored.role]:
            problems.append("Nobody raises their own role.")
        return problems


class MembershipInline(ProjectRoleInline, admin.TabularInline):
    """Project admins change roles and remove members; adding someone is an invitation the
    invitee accepts (superusers, as operators, may add directly)."""

    model = Membership
    formset = MembershipFormSet
    extra = 1
    autocomplete_fields = ("user",)
    write_role = Role.ADMIN

    def get_extra(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> int:
        return 1 if request.user.is_superuser else 0

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return () if request.user.is_superuser else ("user",)

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        formset = super().get_formset(request, obj, **kwargs)
        formset.request = request
        return formset

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return superuser_only(request) and super().has_add_permission(request, obj)


@admin.register(Project)
class ProjectAdmin(ProjectRoleAdmin):
    """Members see their projects; the project's admins rename it and manage its members.
    Anyone with the add permission may create a project (and becomes its admin, as in the API);
    only superusers delete one or set a personal project's owner."""

    list_display = ("name", "personal_owner", "member_count", "created_at")
    search_fields = ("name", "personal_owner__username")
    readonly_fields = ("id", "created_at")
    inlines = (MembershipInline,)
    project_path = "pk"
    write_role = Role.ADMIN

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("memberships")

    def get_readonly_fields(self, request: HttpRequest, obj: Project | None = None) -> tuple[str, ...]:
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if request.user.is_superuser else (*fields, "personal_owner")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return admin.ModelAdmin.has_add_permission(self, request)

    def has_delete_permission(self, request: HttpRequest, obj: Project | None = None) -> bool:
        return superuser_only(request)

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> Any:
        if change:
            return super().save_form(request, form, change)
        return form.save(commit=False)  # a new project has no role yet: save_model makes one

    def save_model(self, request: HttpRequest, obj: Project, form: Any, change: bool) -> None:
        if change or request.user.is_superuser:
            super().save_model(request, obj, form, change)
            return
        project = services.project_create(name=obj.name, description=obj.description, actor=request.user)
        obj.pk = project.pk
        obj._state.adding = False
        obj.refresh_from_db()

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not Membership:
            super().save_formset(request, form, formset, change)
            return
        require_project_role(request, form.instance.pk, Role.ADMIN)
        project = form.instance
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for row in formset.deleted_forms:
            if row.instance.pk is not None:
                services.membership_remove(membership=row.instance)
                formset.deleted_objects.append(row.instance)
        for row in formset.forms:
            if row in formset.deleted_forms or not row.has_changed():
                continue
            if row.instance.pk is None:
                if not request.user.is_superuser:
                    raise PermissionDenied("Members join by invitation.")
                data = row.cleaned_data
                added = services.membership_add(project=project, user=data["user"], role=data["role"])
                formset.new_objects.append(added)
            elif "role" in row.changed_data:
                stored = Membership.objects.get(pk=row.instance.pk)
                changed = services.membership_set_role(membership=stored, role=row.cleaned_data["role"])
                formset.changed_objects.append((changed, ["role"]))

    @admin.display(description="members")
    def member_count(self, project: Project) -> int:
        return len(project.memberships.all())


def _member_of(user: User, project: Project) -> bool:
    return Project.objects.visible_to(user).filter(pk=project.pk).exists()


class ApiKeyForm(forms.ModelForm):
    """A key's fields, checked as the API checks them: its project must be one its owner
    belongs to, its rate a valid rate. ``acting_user`` is set per request by ``get_form``."""

    scopes = forms.MultipleChoiceField(
        choices=[(s, s) for s in SCOPES],
        widget=forms.CheckboxSelectMultiple,
        help_text="Write implies read; * grants everything.",
    )
    acting_user: User | None = None

    class Meta:
        model = ApiKey
        fields = ("name", "owner", "scopes", "project", "expiry_date", "rate_limit")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        owner = data.get("owner") if "owner" in self.fields else None
        if owner is None:
            owner = self.instance.owner if self.instance.owner_id else self.acting_user
        project = data.get("project")
        if project is not None and owner is not None and not _member_of(owner, project):
            self.add_error("project", f"{owner} is not a member of this project.")
        if data.get("rate_limit"):
            try:
                validate_rate(data["rate_limit"])
            except ValueError as exc:
                self.add_error("rate_limit", str(exc))
        expiry = data.get("expiry_date")
        if self.instance.pk is None and expiry is not None and expiry <= timezone.now():
            self.add_error("expiry_date", "The expiry must be in the future.")
        return data


@admin.register(ApiKey)
class ApiKeyAdmin(APIKeyModelAdmin):
    """Keys are created here with the secret shown once (as a message), and revoked.

    Staff who are not superusers see and create only their own keys: the owner is always the
    caller (the field is not offered, a posted owner is ignored) and the project one they
    belong to. A key is then fixed (its name aside): revoke it and make another."""

    form = ApiKeyForm
    list_display = (
        "prefix",
        "name",
        "owner",
        "scope_list",
        "project",
        "expiry_date",
        "revoked",
        "last_used_at",
        "created",
    )
    list_filter = ("revoked", "created")
    search_fields = ("name", "prefix", "owner__username")
    autocomplete_fields = ("owner", "project")
    actions = ("revoke",)
    KEY_FIELDS = ("owner", "scopes", "project", "expiry_date", "rate_limit")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        qs = super().get_queryset(request).select_related("owner", "project")
        return qs if request.user.is_superuser else qs.filter(owner=request.user)

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        fields = list(super().get_fields(request, obj))
        if not request.user.is_superuser and obj is None:
            fields.remove("owner")
        return fields

    def get_form(self, request: HttpRequest, obj: ApiKey | None = None, change: bool = False, **kwargs: Any):
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"acting_user": request.user})

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "project":
            kwargs["queryset"] = Project.objects.visible_to(request.user)
        elif db_field.name == "owner" and not request.user.is_superuser:
            kwargs["queryset"] = User.objects.filter(pk=request.user.pk)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        base = ("prefix", "last_used_at", "revoked_at")
        if obj is None:
            return base
        if not request.user.is_superuser:
            return (*base, *self.KEY_FIELDS, "revoked")
        return (*base, "owner", "revoked")

    def has_change_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        if not super().has_change_permission(request, obj):
            return False
        return obj is None or request.user.is_superuser or obj.owner_id == request.user.pk

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        if not super().has_delete_permission(request, obj):
            return False
        return obj is None or request.user.is_superuser or obj.owner_id == request.user.pk

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any = None, change: bool = False) -> None:
        if change:
            if not request.user.is_superuser and obj.owner_id != request.user.pk:
                raise PermissionDenied("A key is changed by its owner.")
            obj.save()
            return
        owner = form.cleaned_data.get("owner") if request.user.is_superuser else request.user
        api_key, raw = services.api_key_create(
            owner=owner or request.user,
            name=form.cleaned_data["name"],
            scopes=form.cleaned_data["scopes"],
            project=form.cleaned_data.get("project"),
            expires_at=form.cleaned_data.get("expiry_date"),
            rate_limit=form.cleaned_data.get("rate_limit") or "",
        )
        obj.pk = api_key.pk
        obj._state.adding = False
        obj.refresh_from_db()
        # Shown once, with a copy button; only the hash is stored.
        self.message_user(
            request,
            format_html(
                'The API key for {} is <code id="new-api-key">{}</code> '
                '<button type="button" onclick="navigator.clipboard.writeText('
                "document.getElementById('new-api-key').textContent);"
                "this.textContent='Copied'\">Copy</button> "
                "Store it now: you will not be able to see it again.",
                obj.name,
                raw,
            ),
            messages.WARNING,
        )

    @admin.display(description="scopes")
    def scope_list(self, api_key: ApiKey) -> str:
        return ", ".join(api_key.scopes)

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        for api_key in queryset:
            services.api_key_revoke(api_key=api_key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)


class InvitationForm(forms.ModelForm):
    class Meta:
        model = Invitation
        fields = ("project", "username", "role")


@admin.register(Invitation)
class InvitationAdmin(ProjectRoleAdmin):
    """Invitations: the way a user joins a project (they accept it through the API).

    Staff who are not superusers see, send and revoke invitations only for the projects they
    administer; an invitation is never edited (revoke it and send another).
    """

    form = InvitationForm
    list_display = ("username", "project", "role", "status", "invited_by", "created_at", "expires_at")
    list_filter = ("status", "role")
    search_fields = ("username", "project__name")
    actions = ("revoke",)

    view_role = Role.ADMIN
    write_role = Role.ADMIN

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("project", "invited_by")

    def get_readonly_fields(self, request: HttpRequest, obj: Invitation | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return ("project", "username", "role", "status", "invited_by", "created_at", "expires_at")

    def has_change_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)  # list only, no edits

    def has_delete_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return False  # revoke instead: the record stays

    def save_model(self, request: HttpRequest, obj: Invitation, form: Any, change: bool) -> None:
        if change:  # pragma: no cover - has_change_permission refuses edits
            return
        require_project_role(request, obj.project_id, Role.ADMIN)
        invitation = services.invitation_create(
            project=obj.project, username=obj.username, role=obj.role, actor=request.user
        )
        if invitation is not None:
            obj.pk = invitation.pk  # the admin's redirect and log name the row that exists
        self.message_user(request, "Invitation sent.", messages.SUCCESS)

    def response_add(self, request: HttpRequest, obj: Invitation, post_url_continue: Any = None) -> Any:
        # The same page whether or not a row was made (an existing member gets none).
        return HttpResponseRedirect(reverse("admin:accounts_invitation_changelist"))

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        # An invitation to an existing member creates no row: there is nothing to log against.
        if Invitation.objects.filter(pk=obj.pk).exists():
            return super().log_addition(request, obj, message)
        return None

    @admin.action(description="Revoke selected pending invitations")
    def revoke(self, request: HttpRequest, queryset: QuerySet) -> None:
        revoked = 0
        for invitation in queryset.filter(status=InvitationStatus.PENDING):
            services.invitation_revoke(invitation=invitation)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} invitation(s).", messages.SUCCESS)
