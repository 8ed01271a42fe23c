"""The workflow lists' filters."""

from __future__ import annotations

import django_filters as filters

from core.filters import CommaChoiceFilter, StrictFilterSet
from templates_app.filters import TemplateFilter
from workflows.models import RunStatus, WorkflowRun, WorkflowTemplate


class WorkflowTemplateFilter(TemplateFilter):
    """The templates' filters (project, slug, search), on workflow templates."""

    class Meta:
        model = WorkflowTemplate
        fields: list[str] = []


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
