from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey as LibraryAPIKey

from accounts import services
from accounts.models import (
    ApiKey,
    Invitation,
    InvitationStatus,
    Membership,
    Project,
    Role,
    User,
    ensure_personal_project,
    role_at_least,
)
from accounts.permissions import project_role
from accounts.scopes import SCOPES

# The library's own concrete key model is unused (ours is accounts.ApiKey): keep it out of sight.
admin.site.unregister(LibraryAPIKey)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ("username", "email", "is_staff", "is_superuser", "is_active", "date_joined")

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        ensure_personal_project(obj)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ("user",)


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "personal_owner", "member_count", "created_at")
    search_fields = ("name", "personal_owner__username")
    readonly_fields = ("id", "created_at")
    inlines = (MembershipInline,)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Staff who are not superusers see only the projects they belong to.
        return Project.objects.visible_to(request.user).prefetch_related("memberships")

    @admin.display(description="members")
    def member_count(self, project: Project) -> int:
        return len(project.memberships.all())


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(s, s) for s in SCOPES],
        widget=forms.CheckboxSelectMultiple,
        help_text="Write implies read; * grants everything.",
    )

    class Meta:
        model = ApiKey
        fields = ("name", "owner", "scopes", "project", "expiry_date", "rate_limit")


@admin.register(ApiKey)
class ApiKeyAdmin(APIKeyModelAdmin):
    """Keys are created here with the secret shown once (as a message), and revoked."""

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

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        qs = super().get_queryset(request).select_related("owner", "project")
        return qs if request.user.is_superuser else qs.filter(owner=request.user)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> tuple[str, ...]:
        base = ("prefix", "last_used_at", "revoked_at")
        if obj is not None:
            return (*base, "owner", "revoked")
        return base

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any = None, change: bool = False) -> None:
        if change:
            obj.save()
            return
        raw = ApiKey.objects.assign_key(obj)
        obj.save()
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
class InvitationAdmin(admin.ModelAdmin):
    """Invitations: the way a user joins a project (they accept it through the API).

    Staff who are not superusers see, send and revoke invitations only for the projects they
    administer; an invitation is never edited (revoke it and send another).
    """

    form = InvitationForm
    list_display = ("username", "project", "role", "status", "invited_by", "created_at", "expires_at")
    list_filter = ("status", "role")
    search_fields = ("username", "project__name")
    actions = ("revoke",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return Invitation.of_admins.visible_to(request.user).select_related("project", "invited_by")

    def get_readonly_fields(self, request: HttpRequest, obj: Invitation | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return ("project", "username", "role", "status", "invited_by", "created_at", "expires_at")

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "project" and not request.user.is_superuser:
            kwargs["queryset"] = Project.objects.filter(
                memberships__user=request.user, memberships__role=Role.ADMIN
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_change_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)  # list only, no edits

    def has_delete_permission(self, request: HttpRequest, obj: Invitation | None = None) -> bool:
        return False  # revoke instead: the record stays

    def save_model(self, request: HttpRequest, obj: Invitation, form: Any, change: bool) -> None:
        if change:  # pragma: no cover - has_change_permission refuses edits
            return
        if not role_at_least(project_role(request.user, obj.project), Role.ADMIN):
            raise PermissionDenied("Only the project's admins can invite to it.")
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
