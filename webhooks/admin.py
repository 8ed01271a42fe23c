"""Operators' UI for webhooks. Every change goes through ``webhooks.services`` (the same calls
the API makes); staff who are not superusers see only their projects' subscriptions."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from accounts.admin_access import ProjectRoleAdmin, ProjectRoleInline
from accounts.models import Role
from core.admin_actions import apply_each
from webhooks import services, ssrf
from webhooks.models import Delivery, DeliveryAttempt, DeliveryStatus, Subscription

STATUS_COLOURS = {
    DeliveryStatus.PENDING: "#2563eb",
    DeliveryStatus.SUCCEEDED: "#16a34a",
    DeliveryStatus.FAILED: "#dc2626",
    DeliveryStatus.CANCELLED: "#6b7280",
}


def badge(text: str, colour: str) -> str:
    return format_html(
        '<span style="background:{};color:#fff;padding:2px 8px;border-radius:10px;font-size:11px">{}</span>',
        colour,
        text,
    )


class SubscriptionForm(forms.ModelForm):
    class Meta:
        model = Subscription
        fields = ("project", "url", "event_types", "active", "description")

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        try:
            ssrf.check_url(url)
        except ssrf.UnsafeURL as exc:
            raise ValidationError(str(exc), code=exc.code) from None
        return url


class DeliveryInline(ProjectRoleInline, admin.TabularInline):
    model = Delivery
    fields = (
        "created_at",
        "event_type",
        "trigger",
        "status_badge",
        "attempt_count",
        "last_status_code",
        "last_error",
    )
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("-created_at", "-id")
    show_change_link = True
    verbose_name_plural = "deliveries (newest first)"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).defer("payload")

    @admin.display(description="status")
    def status_badge(self, delivery: Delivery) -> str:
        return badge(delivery.status, STATUS_COLOURS.get(delivery.status, "#6b7280"))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Subscription)
class SubscriptionAdmin(ProjectRoleAdmin):
    """Webhooks are project settings: only the project's admins see and manage them here (their
    URLs may carry tokens, their logs the receivers' answers)."""

    view_role = Role.ADMIN
    write_role = Role.ADMIN
    form = SubscriptionForm
    list_display = ("url", "project", "state", "event_list", "failing_since", "created_at")
    list_filter = ("active",)
    list_select_related = ("project",)
    search_fields = ("url", "description")
    readonly_fields = (
        "id",
        "state",
        "disabled_reason",
        "disabled_at",
        "failing_since",
        "previous_secret_expires_at",
        "created_by",
        "created_at",
        "updated_at",
    )
    fields = (
        "id",
        "project",
        "url",
        "event_types",
        "active",
        "description",
        "state",
        "disabled_reason",
        ("disabled_at", "failing_since"),
        "previous_secret_expires_at",
        ("created_by", "created_at", "updated_at"),
    )
    inlines = (DeliveryInline,)
    actions = ("send_test", "rotate_secret")

    @admin.display(description="state", ordering="active")
    def state(self, subscription: Subscription) -> str:
        if subscription.active:
            return badge("active", "#16a34a")
        return format_html("{} {}", badge("disabled", "#dc2626"), subscription.disabled_reason)

    @admin.display(description="events")
    def event_list(self, subscription: Subscription) -> str:
        return ", ".join(subscription.event_types)

    def save_model(
        self, request: HttpRequest, obj: Subscription, form: forms.ModelForm, change: bool
    ) -> None:
        fields = {
            name: form.cleaned_data[name] for name in services.WRITABLE_FIELDS if name in form.cleaned_data
        }
        if change:
            changed = {name: value for name, value in fields.items() if name in form.changed_data}
            services.subscription_update(subscription=obj, actor=request.user, fields=changed)
            obj.refresh_from_db()
            return
        subscription, secret = services.subscription_create(
            project=form.cleaned_data["project"], actor=request.user, **fields
        )
        obj.pk = subscription.pk
        obj._state.adding = False
        obj.refresh_from_db()
        self.message_user(request, f"Signing secret (shown once, store it now): {secret}", messages.WARNING)

    def delete_model(self, request: HttpRequest, obj: Subscription) -> None:
        services.subscription_delete(subscription=obj, actor=request.user)

    @admin.action(description="Send a test delivery", permissions=["change"])
    def send_test(self, request: HttpRequest, queryset: QuerySet) -> None:
        apply_each(
            self,
            request,
            queryset,
            "Queued test deliveries:",
            lambda s: services.send_test(subscription=s, actor=request.user),
        )

    @admin.action(description="Rotate the signing secret (shows the new one once)", permissions=["change"])
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet) -> None:
        for subscription in queryset:
            _, secret = services.subscription_rotate_secret(subscription=subscription, actor=request.user)
            self.message_user(
                request, f"{subscription.url}: new secret (shown once): {secret}", messages.WARNING
            )


class DeliveryAttemptInline(ProjectRoleInline, admin.TabularInline):
    model = DeliveryAttempt
    fields = ("number", "started_at", "duration_ms", "address", "status_code", "error", "response_body")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(ProjectRoleAdmin):
    """The delivery log, read-only, with a replay action: the project's admins only."""

    project_path = "subscription__project"
    view_role = Role.ADMIN
    write_role = Role.ADMIN

    list_display = (
        "created_at",
        "event_type",
        "subscription",
        "status_badge",
        "attempt_count",
        "last_status_code",
    )
    list_filter = ("status", "trigger", "event_type")
    list_select_related = ("subscription",)
    date_hierarchy = "created_at"
    readonly_fields = (
        "id",
        "subscription",
        "event",
        "event_type",
        "trigger",
        "status_badge",
        "attempt_count",
        "next_attempt_at",
        "last_attempt_at",
        "last_status_code",
        "last_error",
        "delivered_at",
        "created_at",
        "payload",
    )
    fields = readonly_fields
    inlines = (DeliveryAttemptInline,)
    actions = ("replay",)

    @admin.display(description="status", ordering="status")
    def status_badge(self, delivery: Delivery) -> str:
        return badge(delivery.status, STATUS_COLOURS.get(delivery.status, "#6b7280"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)  # the action, not the form

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Replay selected deliveries", permissions=["change"])
    def replay(self, request: HttpRequest, queryset: QuerySet) -> None:
        apply_each(
            self,
            request,
            queryset,
            "Queued again:",
            lambda d: services.delivery_replay(delivery=d, actor=request.user),
        )
