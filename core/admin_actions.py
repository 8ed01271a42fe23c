"""The admin actions' loop, shared by every app's admin (a service call per selected item)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from rest_framework.exceptions import APIException


def apply_each(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    items: QuerySet,
    verb: str,
    change: Callable[[Any], Any],
) -> None:
    """An admin action's loop: ``change(item)`` (a service call) for each selected item; one
    success message, and a warning per refusal (the first 10) instead of a failed request."""
    done, refused = 0, []
    for item in items:
        try:
            change(item)
            done += 1
        except (APIException, ValidationError) as exc:
            refused.append(f"{item}: {getattr(exc, 'detail', exc)}")
    if done:
        meta = model_admin.model._meta
        noun = meta.verbose_name if done == 1 else meta.verbose_name_plural
        model_admin.message_user(request, f"{verb} {done} {noun}.", messages.SUCCESS)
    for line in refused[:10]:
        model_admin.message_user(request, line, messages.WARNING)
