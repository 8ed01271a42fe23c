"""Operators' UI for inbound triggers: the URL to give the sender, copy-paste settings for
GitHub and GitLab, secret rotation (the new secret shown once), and the delivery log with a
replay action. Every change goes through ``triggers.services``, as in the API."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from accounts.admin_access import ProjectRoleAdmin, ProjectRoleInline, projects_with_role
from accounts.models import Role
from core.admin_actions import apply_each
from core.admin_badges import status_badge
from templates_app.models import Template
from triggers import services
from triggers.models import Auth, Delivery, Outcome, Trigger

OUTCOME_COLOURS: dict[str, str] = {
    Outcome.ACCEPTED: "#16a34a",
    Outcome.IGNORED: "#6b7280",
    Outcome.REJECTED: "#dc2626",
}
WEAKER = {"weaker": "#d97706"}
_current_request: ContextVar[HttpRequest | None] = ContextVar("trigger_admin_request", default=None)
WEAK_AUTH_WARNING = (
    "Weaker: the token travels in the URL, and URLs are written to proxy and server logs. Use it only "
    "for senders that cannot set a header."
)


class TriggerForm(forms.ModelForm):
    class Meta:
        model = Trigger
        fields = (
            "project",
            "template",
            "slug",
            "description",
            "enabled",
            "auth",
            "filters",
            "mapping",
            "dedupe_path",
            "max_body_bytes",
            "rate_limit",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.instance._state.adding:  # the sender is configured for one scheme and template
            for name in services.IMMUTABLE_FIELDS:
                if name in self.fields:
                    self.fields[name].disabled = True

    def clean(self) -> dict[str, Any]:
        """The service's own checks (mapping, filters, ...), shown on the form's fields."""
        data = super().clean()
        trigger = self.instance
        if self.errors or not data.get("template"):
            return data
        for name, value in data.items():
            setattr(trigger, name, value)
        for field, _code, message in services.config_errors(trigger):
            name = field.split(".", 1)[0]
            label = f"{field}: {message}" if field != name else message
            self.add_error(name if name in self.fields else None, label)
        return data


class DeliveryInline(ProjectRoleInline, admin.TabularInline):
    model = Delivery
    fk_name = "trigger"
    fields = ("received_at", "event", "outcome_badge", "response_status", "reason", "task", "replay_of")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("-received_at", "-id")
    show_change_link = True
    verbose_name_plural = "recent deliveries (newest first)"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).defer("body", "headers", "response_body")

    @admin.display(description="outcome")
    def outcome_badge(self, delivery: Delivery) -> str:
        return status_badge(delivery.outcome, OUTCOME_COLOURS)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def sender_snippet(trigger: Trigger, url: str) -> str:
    """What to paste into the sender's webhook settings page."""
    if trigger.auth == Auth.GITHUB:
        rows = [
            ("Payload URL", url),
            ("Content type", "application/json"),
            ("Secret", "the secret shown when the trigger was created or last rotated"),
            ("SSL verification", "Enable"),
            ("Events", ", ".join((trigger.filters or {}).get("events") or ["Just the push event"])),
        ]
        title = "GitHub: Settings → Webhooks → Add webhook"
    elif trigger.auth == Auth.GITLAB:
        rows = [
            ("URL", url),
            ("Secret token", "the secret shown when the trigger was created or last rotated"),
            ("Trigger", ", ".join((trigger.filters or {}).get("events") or ["Push events"])),
            ("SSL verification", "Enable"),
        ]
        title = "GitLab: Settings → Webhooks → Add new webhook"
    elif trigger.auth == Auth.TOKEN_IN_URL:
        rows = [("URL", f"{url}?token=<secret>"), ("Warning", WEAK_AUTH_WARNING)]
        title = "Any sender (token in the URL)"
    elif trigger.auth == Auth.TOKEN:
        rows = [("URL", url), ("Header", "Authorization: Bearer <secret>")]
        title = "Any sender (bearer token)"
    else:
        rows = [
            ("URL", url),
            ("Signing", "Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature)"),
        ]
        title = "A Standard Webhooks sender"
    return format_html(
        "<strong>{}</strong><table>{}</table>",
        title,
        format_html_join("", "<tr><th>{}</th><td><code>{}</code></td></tr>", rows),
    )


@admin.register(Trigger)
class TriggerAdmin(ProjectRoleAdmin):
    """Triggers are project settings: the project's admins change them; members see them."""

    write_role = Role.ADMIN
    form = TriggerForm
    list_display = ("slug", "project", "template", "auth_label", "enabled", "created_at")
    list_filter = ("enabled", "auth")
    list_select_related = ("project", "template")
    search_fields = ("slug", "description")
    readonly_fields = (
        "id",
        "hook_url",
        "auth_note",
        "snippet",
        "previous_secret_expires_at",
        "created_by",
        "created_at",
        "updated_at",
    )
    fields = (
        "id",
        "project",
        "template",
        "slug",
        "description",
        "enabled",
        "auth",
        "auth_note",
        "hook_url",
        "snippet",
        "filters",
        "mapping",
        "dedupe_path",
        ("max_body_bytes", "rate_limit"),
        "previous_secret_expires_at",
        ("created_by", "created_at", "updated_at"),
    )
    inlines = (DeliveryInline,)
    actions = ("rotate_secret",)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "template":  # a template of a project the caller administers
            kwargs["queryset"] = Template.objects.filter(
                project__in=projects_with_role(request.user, self.write_role)
            ).select_related("project")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_form(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        # The URL fields need the host the operator reaches us at; a context variable, not an
        # attribute: this ModelAdmin is shared by every request thread.
        _current_request.set(request)
        return super().get_form(request, obj, **kwargs)

    def _url(self, trigger: Trigger) -> str:
        request = _current_request.get()
        return request.build_absolute_uri(trigger.path) if request is not None else trigger.path

    @admin.display(description="auth", ordering="auth")
    def auth_label(self, trigger: Trigger) -> str:
        if trigger.auth == Auth.TOKEN_IN_URL:
            return format_html("{} {}", trigger.get_auth_display(), status_badge("weaker", WEAKER))
        return trigger.get_auth_display()

    @admin.display(description="URL")
    def hook_url(self, trigger: Trigger) -> str:
        if trigger._state.adding:
            return "(shown once saved)"
        return format_html("<code>{}</code>", self._url(trigger))

    @admin.display(description="about this auth")
    def auth_note(self, trigger: Trigger) -> str:
        if trigger.auth == Auth.TOKEN_IN_URL:
            return format_html("{} {}", status_badge("weaker", WEAKER), WEAK_AUTH_WARNING)
        return "The signature or token is checked before anything is stored."

    @admin.display(description="sender settings")
    def snippet(self, trigger: Trigger) -> str:
        if trigger._state.adding:
            return "(shown once saved)"
        return sender_snippet(trigger, self._url(trigger))

    def save_model(self, request: HttpRequest, obj: Trigger, form: forms.ModelForm, change: bool) -> None:
        data = form.cleaned_data
        fields = {name: data[name] for name in services.WRITABLE_FIELDS if name in data}
        if change:  # form.clean ran the service's checks: the service will not refuse it
            changed = {name: value for name, value in fields.items() if name in form.changed_data}
            services.trigger_update(trigger=obj, actor=request.user, fields=changed)
            obj.refresh_from_db()
            return
        trigger, secret = services.trigger_create(
            project=data["project"],
            actor=request.user,
            template=data["template"],
            auth=data["auth"],
            **fields,
        )
        obj.pk = trigger.pk
        obj._state.adding = False
        obj.refresh_from_db()
        self.message_user(
            request, f"Secret (shown once, store it in the sender now): {secret}", messages.WARNING
        )

    def delete_model(self, request: HttpRequest, obj: Trigger) -> None:
        services.trigger_delete(trigger=obj, actor=request.user)

    @admin.action(description="Rotate the secret (shows the new one once)", permissions=["change"])
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet) -> None:
        for trigger in queryset:
            _, secret = services.trigger_rotate_secret(trigger=trigger, actor=request.user)
            self.message_user(request, f"{trigger.slug}: new secret (shown once): {secret}", messages.WARNING)


@admin.register(Delivery)
class DeliveryAdmin(ProjectRoleAdmin):
    """The delivery log, read-only, with a replay action (the project's admins)."""

    project_path = "trigger__project"
    write_role = Role.ADMIN
    list_display = ("received_at", "trigger", "event", "outcome_badge", "response_status", "replay_of")
    list_filter = ("outcome", "event")
    list_select_related = ("trigger",)
    date_hierarchy = "received_at"
    readonly_fields = (
        "id",
        "trigger",
        "dedupe_key",
        "event",
        "outcome_badge",
        "reason",
        "response_status",
        "response_body",
        "task",
        "execution",
        "replay_of",
        "replayed_by",
        "duplicates",
        "received_at",
        "headers",
        "body",
        "body_truncated",
    )
    fields = readonly_fields
    actions = ("replay",)

    @admin.display(description="outcome", ordering="outcome")
    def outcome_badge(self, delivery: Delivery) -> str:
        return status_badge(delivery.outcome, OUTCOME_COLOURS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)  # the action, not the form

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(
        description="Replay selected deliveries (a new run, marked as a replay)", permissions=["change"]
    )
    def replay(self, request: HttpRequest, queryset: QuerySet) -> None:
        apply_each(
            self,
            request,
            queryset,
            "Replayed:",
            lambda d: services.delivery_replay(delivery=d, actor=request.user),
        )
