"""The workflow lists' filters."""

from __future__ import annotations

import django_filters as filters
from django.db.models import Q, QuerySet

from core.filters import CommaChoiceFilter, StrictFilterSet
from workflows.models import RunStatus, WorkflowRun, WorkflowTemplate


class WorkflowTemplateFilter(StrictFilterSet):
    project = filters.UUIDFilter(field_name="project_id")
    slug = filters.CharFilter()
    search = filters.CharFilter(method="filter_search", help_text="Words in the slug, name or description.")

    class Meta:
        model = WorkflowTemplate
        fields: list[str] = []

    def filter_search(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(
            Q(slug__icontains=value) | Q(name__icontains=value) | Q(description__icontains=value)
        )


class WorkflowRunFilter(StrictFilterSet):
    project = filters.UUIDFilter(field_name="project_id")
    template = filters.UUIDFilter(field_name="template_id", help_text="Runs of this workflow template.")
    status = CommaChoiceFilter(
        choices=RunStatus.choices,
        enum_component="WorkflowRunStatusEnum",
        help_text="One or more, repeated or comma-separated.",
    )

    class Meta:
        model = WorkflowRun
        fields: list[str] = []
