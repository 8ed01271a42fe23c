"""The task list's filters and sort order (one FilterSet).

Every filter validates its value: a bad status, date, number or boolean is a 400 problem
(DjangoFilterBackend raises on an invalid form), never an empty list.
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Any

import django_filters as filters
from django import forms
from django.db.models import F, OrderBy, Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date
from drf_spectacular.drainage import set_override
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from core.filters import CommaChoiceFilter, StrictFilterSet, UTCDateTimeField
from tasks.models import PRIORITY_MAX, PRIORITY_MIN, TAG_RE, ScriptType, Status, Task

# sort key -> whether the column is nullable (nulls always sort last, on every database).
SORT_FIELDS: dict[str, bool] = {
    "created_at": False,
    "updated_at": False,
    "priority": False,
    "name": False,
    "due_date": True,
}
BOOLEAN_CHOICES = (("true", "true"), ("false", "false"), ("1", "1"), ("0", "0"))
TRUE_VALUES = ("true", "1")


def task_ordering(sort: str = "created_at", order: str = "desc") -> list[str | OrderBy]:
    """ORDER BY for a sort key: stable, ties broken by id in the same direction."""
    descending = order == "desc"
    if SORT_FIELDS[sort]:
        key: str | OrderBy = OrderBy(F(sort), descending=descending, nulls_last=True)
    else:
        key = f"-{sort}" if descending else sort
    return [key, "-id" if descending else "id"]


class DateOrDateTimeField(UTCDateTimeField):
    """ISO 8601 date-time, or a plain date meaning its midnight (UTC when no offset)."""

    def strptime(self, value: str, format: str) -> datetime:
        date = parse_date(value) if len(value) == 10 else None
        if date is not None:
            return datetime.combine(date, time.min)
        return super().strptime(value, format)

    def to_python(self, value: Any) -> datetime | None:
        parsed = super().to_python(value)
        if parsed is not None and timezone.is_naive(parsed):
            parsed = timezone.make_aware(parsed, timezone.get_current_timezone())
        return parsed


@extend_schema_field(OpenApiTypes.DATETIME)
class DateTimeFilter(filters.IsoDateTimeFilter):
    field_class = DateOrDateTimeField


@extend_schema_field(OpenApiTypes.INT)
class IntegerFilter(filters.Filter):
    """An integer query parameter; its bounds are documented in the schema too."""

    field_class = forms.IntegerField

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Ids are BIGINT: a larger number overflowed SQLite (a 500), so it is out of range.
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)
        schema: dict[str, Any] = {"type": "integer"}
        if kwargs.get("min_value") is not None:
            schema["minimum"] = kwargs["min_value"]
        if kwargs.get("max_value") is not None:
            schema["maximum"] = kwargs["max_value"]
        set_override(self, "field", schema)


class StatusInFilter(CommaChoiceFilter):
    """``status=pending,running``: each value must be a status."""


class TagListField(forms.Field):
    """A list query parameter (``tag=a&tag=b`` or ``tag=a,b``: StrictFilterSet splits the
    commas), each value a valid tag."""

    widget = forms.SelectMultiple

    def to_python(self, value: Any) -> list[str]:
        if not value:
            return []
        values = [value] if isinstance(value, str) else list(value)
        for tag in values:
            if not TAG_RE.match(tag):
                raise forms.ValidationError(
                    "%(tag)r is not a tag (1-64 of A-Z a-z 0-9 _ . : -).",
                    code="invalid_tag",
                    params={"tag": tag},
                )
        return values


@extend_schema_field({"type": "array", "items": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,64}$"}})
class AllTagsFilter(filters.Filter):
    """Tasks carrying every one of the given tags."""

    field_class = TagListField

    def filter(self, qs: QuerySet, value: list[str]) -> QuerySet:
        return qs.with_tags(value) if value else qs


@extend_schema_field(OpenApiTypes.BOOL)
class BooleanParameterFilter(filters.ChoiceFilter):
    """A boolean query parameter: true/false (1/0 also accepted), documented as a boolean."""


class ParameterFilter(filters.ChoiceFilter):
    """A validated parameter that does not filter by itself (``sort``, ``order``)."""

    def filter(self, qs: QuerySet, value: Any) -> QuerySet:
        return qs


class TaskFilter(StrictFilterSet):
    status = StatusInFilter(
        choices=Status.choices, enum_component="TaskStatusEnum", help_text="Tasks in any of these statuses."
    )
    priority = IntegerFilter(min_value=PRIORITY_MIN, max_value=PRIORITY_MAX)
    priority_min = IntegerFilter(
        field_name="priority", lookup_expr="gte", min_value=PRIORITY_MIN, max_value=PRIORITY_MAX
    )
    priority_max = IntegerFilter(
        field_name="priority", lookup_expr="lte", min_value=PRIORITY_MIN, max_value=PRIORITY_MAX
    )
    script_type = filters.ChoiceFilter(choices=ScriptType.choices)
    tag = AllTagsFilter(help_text="A task must carry all of them.")
    agent = filters.CharFilter()
    project = filters.UUIDFilter(field_name="project_id")
    template = filters.UUIDFilter(field_name="template_id", help_text="Tasks made from this template (id).")
    created_by = IntegerFilter(field_name="created_by_id", min_value=1, help_text="User id.")
    claimed = BooleanParameterFilter(
        choices=BOOLEAN_CHOICES, method="filter_claimed", help_text="Whether an agent holds a claim now."
    )
    assigned_agent = filters.UUIDFilter(
        field_name="assigned_agent_id", help_text="Tasks pinned to this registered agent (id)."
    )
    claimed_by_agent = filters.UUIDFilter(
        field_name="claimed_by_agent_id", help_text="Tasks this registered agent claimed (id)."
    )
    unroutable = BooleanParameterFilter(
        choices=BOOLEAN_CHOICES,
        method="filter_unroutable",
        help_text="Whether no online agent can take it (it has an unroutable_since).",
    )
    archived = filters.ChoiceFilter(
        choices=(("false", "false"), ("true", "true"), ("all", "all")),
        method="filter_archived",
        help_text="false (default), true, or all.",
    )
    created_after = DateTimeFilter(field_name="created_at", lookup_expr="gte", help_text="Inclusive.")
    created_before = DateTimeFilter(field_name="created_at", lookup_expr="lt", help_text="Exclusive.")
    updated_after = DateTimeFilter(field_name="updated_at", lookup_expr="gte", help_text="Inclusive.")
    updated_before = DateTimeFilter(field_name="updated_at", lookup_expr="lt", help_text="Exclusive.")
    due_after = DateTimeFilter(field_name="due_date", lookup_expr="gte", help_text="Inclusive.")
    due_before = DateTimeFilter(field_name="due_date", lookup_expr="lt", help_text="Exclusive.")
    search = filters.CharFilter(method="filter_search", help_text="Words in the name or description.")
    sort = ParameterFilter(choices=[(key, key) for key in SORT_FIELDS], help_text="Default created_at.")
    order = ParameterFilter(choices=(("asc", "asc"), ("desc", "desc")), help_text="Default desc.")

    class Meta:
        model = Task
        fields: list[str] = []

    def __init__(self, data: Any = None, *args: Any, **kwargs: Any) -> None:
        if data is not None and "archived" not in data:  # (an empty archived= is a 400)
            data = data.copy()
            data["archived"] = "false"
        super().__init__(data, *args, **kwargs)

    def filter_claimed(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(lease_expires_at__isnull=value not in TRUE_VALUES)

    def filter_unroutable(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(unroutable_since__isnull=value not in TRUE_VALUES)

    def filter_archived(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        if value == "all":
            return queryset
        return queryset.filter(archived=value == "true")

    def filter_search(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(Q(name__icontains=value) | Q(description__icontains=value))

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        queryset = super().filter_queryset(queryset)
        data = self.form.cleaned_data
        return queryset.order_by(
            *task_ordering(data.get("sort") or "created_at", data.get("order") or "desc")
        )
