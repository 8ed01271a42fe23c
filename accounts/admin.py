from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey as LibraryAPIKey

from accounts import services
from accounts.models import ApiKey, Membership, Project, User, ensure_personal_project
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
