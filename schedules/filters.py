"""The schedule list's filters."""

from __future__ import annotations

import django_filters as filters
from django.db.models import Q, QuerySet

from core.filters import StrictFilterSet
from schedules.models import Schedule
from tasks.filters import BOOLEAN_CHOICES, TRUE_VALUES, BooleanParameterFilter


class ScheduleFilter(StrictFilterSet):
    project = filters.UUIDFilter(field_name="project_id")
    enabled = BooleanParameterFilter(
        choices=BOOLEAN_CHOICES, method="filter_enabled", help_text="false: the paused ones."
    )
    template = filters.UUIDFilter(field_name="template_id")
    task = filters.UUIDFilter(field_name="task_id")
    search = filters.CharFilter(method="filter_search", help_text="Words in the name or description.")

    class Meta:
        model = Schedule
        fields: list[str] = []

    def filter_enabled(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(enabled=value in TRUE_VALUES)

    def filter_search(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(Q(name__icontains=value) | Q(description__icontains=value))
