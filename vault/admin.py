"""Operators' UI for project secrets: the project's members see names, metadata and where each
is used; its admins add, replace and delete them, through ``vault.services``. The value field
is write-only: a password box that never renders a value, and "set" / "not set" on the page."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import BooleanField, ExpressionWrapper, Q, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join

from accounts.admin_access import ProjectRoleAdmin, require_project_role
from accounts.models import Role
from events.models import Event, EventType
from vault import services
from vault.models import VALUE_MAX_CHARS, Secret

RECENT_USES = 10


class SecretForm(forms.ModelForm):
    new_value = forms.CharField(
        label="Value",
        required=False,
        strip=False,
        max_length=VALUE_MAX_CHARS,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: never shown again. On a change, leave it empty to keep the current value.",
    )

    class Meta:
        model = Secret
        fields = ("project", "name", "description")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.instance._state.adding and not cleaned.get("new_value"):
            self.add_error("new_value", "A new secret needs a value.")
        return cleaned


@admin.register(Secret)
class SecretAdmin(ProjectRoleAdmin):
    view_role = Role.VIEWER
    write_role = Role.ADMIN
    form = SecretForm
    list_display = ("name", "project", "value_state", "last_used_at", "updated_at")
    list_select_related = ("project",)
    search_fields = ("name", "description")
    readonly_fields = (
        "value_state",
        "created_by",
        "created_at",
        "updated_by",
        "updated_at",
        "last_used_at",
        "recent_uses",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Whether a value is stored, read without loading (and decrypting) it.
        has_value = ExpressionWrapper(~Q(value=""), output_field=BooleanField())
        return super().get_queryset(request).defer("value").annotate(has_value=has_value)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        editable = ("project", "name", "description", "new_value")
        if obj is None:
            return editable
        return (
            *editable,
            "value_state",
            ("created_by", "created_at"),
            ("updated_by", "updated_at"),
            "last_used_at",
            "recent_uses",
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        return (*fields, "name") if obj is not None else fields  # runs refer to it by name

    @admin.display(description="value")
    def value_state(self, secret: Secret) -> str:
        return "set" if getattr(secret, "has_value", False) else "not set"

    @admin.display(description=f"used by (the last {RECENT_USES} runs)")
    def recent_uses(self, secret: Secret) -> str:
        events = Event.objects.filter(
            project_id=secret.project_id, type=EventType.SECRET_USED, data__secret_id=str(secret.pk)
        ).order_by("-created_at", "-id")[:RECENT_USES]
        rows = []
        for event in events:
            execution_id = event.data.get("execution_id")
            try:
                link = reverse("admin:executions_execution_change", args=[execution_id])
            except NoReverseMatch:
                link = ""
            rows.append(
                (
                    link,
                    f"{event.created_at:%Y-%m-%d %H:%M:%S} execution {execution_id}",
                    ", ".join(event.data.get("parameters", [])),
                )
            )
        if not rows:
            return "never used"
        return format_html("<ul>{}</ul>", format_html_join("", '<li><a href="{}">{}</a> as {}</li>', rows))

    def save_model(self, request: HttpRequest, obj: Secret, form: ModelForm, change: bool) -> None:
        data = form.cleaned_data
        require_project_role(request, data.get("project") or obj.project_id, self.write_role)
        if not change:
            saved = services.secret_create(
                project=data["project"],
                actor=request.user,
                name=data["name"],
                value=data["new_value"],
                description=data.get("description", ""),
            )
            obj.pk = saved.pk
            return
        fields: dict[str, Any] = {}
        if "description" in form.changed_data:
            fields["description"] = data["description"]
        if data.get("new_value"):
            fields["value"] = data["new_value"]
        if fields:
            services.secret_update(secret=Secret.objects.get(pk=obj.pk), actor=request.user, fields=fields)

    def delete_model(self, request: HttpRequest, obj: Secret) -> None:
        require_project_role(request, obj.project_id, self.write_role)
        services.secret_delete(secret=obj, actor=request.user)
