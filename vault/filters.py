"""The secret list's filters."""

from __future__ import annotations

import django_filters as filters

from core.filters import StrictFilterSet
from vault.models import Secret


class SecretFilter(StrictFilterSet):
    project = filters.UUIDFilter(field_name="project_id")
    name = filters.CharFilter(help_text="Exactly this name.")

    class Meta:
        model = Secret
        fields: list[str] = []
