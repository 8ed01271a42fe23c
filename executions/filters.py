from __future__ import annotations

import django_filters

from core.filters import CommaChoiceFilter, StrictFilterSet, UTCIsoDateTimeFilter
from executions.models import Execution, ExecutionStatus, Trigger


class ExecutionFilter(StrictFilterSet):
    status = CommaChoiceFilter(
        choices=ExecutionStatus.choices,
        enum_component="ExecutionStatusEnum",
        help_text="Executions in any of these statuses.",
    )
    trigger = django_filters.ChoiceFilter(choices=Trigger.choices)
    task = django_filters.UUIDFilter(field_name="task_id")
    project = django_filters.UUIDFilter(field_name="project_id")
    queued_after = UTCIsoDateTimeFilter(field_name="queued_at", lookup_expr="gte")
    queued_before = UTCIsoDateTimeFilter(field_name="queued_at", lookup_expr="lt")
    finished_after = UTCIsoDateTimeFilter(field_name="finished_at", lookup_expr="gte")
    finished_before = UTCIsoDateTimeFilter(field_name="finished_at", lookup_expr="lt")

    class Meta:
        model = Execution
        fields = ("status", "trigger", "task", "project")
