"""The template list's filters."""

from __future__ import annotations

import django_filters as filters
from django.db.models import Q, QuerySet

from core.filters import StrictFilterSet
from templates_app.models import Template


class TemplateFilter(StrictFilterSet):
    project = filters.UUIDFilter(field_name="project_id")
    slug = filters.CharFilter()
    search = filters.CharFilter(method="filter_search", help_text="Words in the slug, name or description.")

    class Meta:
        model = Template
        fields: list[str] = []

    def filter_search(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(
            Q(slug__icontains=value) | Q(name__icontains=value) | Q(description__icontains=value)
        )
