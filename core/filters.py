"""The base of every FilterSet: a typed filter given an empty value is a 400, not ignored.

django-filter skips empty values, so ``?task=`` or ``?created_after=`` silently returned the
unfiltered list although the schema documents a UUID or a date-time there (schemathesis'
negative tests caught it). Free-text filters (``CharFilter``: ``agent``, ``search``) still
take "" as "no filter".

Repeated parameters, one rule for every list endpoint (issue 19): a list parameter
(``status``, ``tag``) takes its values repeated (``status=a&status=b``, what generated clients
send: the schema documents these as ``style: form, explode: true`` arrays) or comma-separated
(``status=a,b``), and both spellings mean the same set; any other parameter given twice is a
400 naming it (``QueryDict.get`` kept the last value and silently dropped the others).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import django_filters
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_filters.fields import IsoDateTimeField
from drf_spectacular.drainage import set_override
from rest_framework import exceptions
from rest_framework.exceptions import ErrorDetail


class UTCDateTimeField(IsoDateTimeField):
    """An ISO 8601 date-time, normalized to UTC before it reaches the database.

    Python accepts UTC offsets up to ±23:59, PostgreSQL only up to ±15:59: ``-18:22`` was a
    500 (schemathesis). Converting first also turns an out-of-range instant (year 1 at
    -18:00) into a 400 instead of an OverflowError.
    """

    def to_python(self, value: Any) -> datetime | None:
        parsed = super().to_python(value)
        if parsed is None or timezone.is_naive(parsed):
            return parsed
        try:
            return parsed.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValidationError("Out of the supported date range.", code="out_of_range") from None


class UTCIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCDateTimeField


class CommaChoiceFilter(django_filters.BaseInFilter, django_filters.ChoiceFilter):
    """``status=failed,timed_out`` or ``status=failed&status=timed_out``: each value one of the
    choices (else 400). StrictFilterSet joins the repeated spelling into the comma one.

    Documented as an array of the choices, so a schema-valid value is one the API accepts
    (schemathesis sent "¨_튊" to what was documented as any string).
    """

    def __init__(self, *args: Any, enum_component: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # drf-spectacular documents a CSV filter as an array of this (core.openapi makes it
        # explode: true, the repeated spelling generated clients send). Naming the enum's
        # component (TaskStatusEnum) gives clients the same type as the objects' own status.
        item: dict[str, Any] = {"type": "string", "enum": [str(v) for v, _ in kwargs.get("choices", ())]}
        if enum_component is not None:
            item = {"$ref": f"#/components/schemas/{enum_component}"}
        set_override(self, "field", item)


def takes_many(filter_: django_filters.Filter) -> bool:
    """Whether a filter takes several values (repeated or comma-separated)."""
    if isinstance(filter_, django_filters.filters.BaseCSVFilter):
        return True
    return bool(getattr(filter_.field_class.widget, "allow_multiple_selected", False))


def list_parameters(view: Any) -> frozenset[str]:
    """The query parameters of a view that may be repeated: its list filters (list action)."""
    filterset_class = getattr(view, "filterset_class", None)
    if filterset_class is None or getattr(view, "action", "list") != "list":
        return frozenset()
    return frozenset(name for name, f in filterset_class.base_filters.items() if takes_many(f))


def refuse_repeated(query: Any, allowed: frozenset[str]) -> None:
    """400 naming every query parameter given more than once that takes one value."""
    repeated = {
        name: len(values) for name, values in query.lists() if len(values) > 1 and name not in allowed
    }
    if repeated:
        raise exceptions.ValidationError(
            {
                name: [ErrorDetail(f"Given {count} times; this parameter takes one value.", code="repeated")]
                for name, count in sorted(repeated.items())
            }
        )


class _CopiedShallowly(dict):
    """A class's filters or form fields, which django-filter and Django forms deep-copy for
    every request (~0.65 ms of a task list's CPU, most of it in widgets and choices): here
    each filter is copied alone, and form fields are shared. Nothing mutates them while a
    request is served: the filters only get their ``parent`` and ``model`` set (on the copy)
    and these forms only validate query parameters, they are never rendered."""

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        copies = {}
        for name, item in self.items():
            if isinstance(item, django_filters.Filter):
                item = copy.copy(item)
                if item.method is not None:
                    item.method = item.method  # bind its FilterMethod to the copy
            copies[name] = item
        return copies


class StrictFilterSet(django_filters.FilterSet):
    def __init__(self, data: Any = None, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        if not isinstance(cls.__dict__.get("base_filters"), _CopiedShallowly):
            cls.base_filters = _CopiedShallowly(cls.base_filters)
        self.repeated: list[str] = []
        if data is not None and hasattr(data, "lists"):
            data = self._one_spelling(data)
        super().__init__(data, *args, **kwargs)

    def _one_spelling(self, data: Any) -> Any:
        """The repeated spelling of a list parameter as the comma one (a CSV filter reads
        one string) or as one value per item (a multiple-value field reads a list); any
        other parameter given twice is remembered, to be refused by is_valid."""
        changes: dict[str, list[str]] = {}
        for name, values in data.lists():
            filter_ = self.base_filters.get(name)
            if filter_ is None:
                continue
            if isinstance(filter_, django_filters.filters.BaseCSVFilter):
                if len(values) > 1:
                    changes[name] = [",".join(values)]
            elif takes_many(filter_):
                items = [item for value in values for item in value.split(",")]
                if items != values:
                    changes[name] = items
            elif len(values) > 1:
                self.repeated.append(name)
        if not changes:
            return data
        data = data.copy()
        for name, values in changes.items():
            data.setlist(name, values)
        return data

    def get_form_class(self) -> type:
        """The form class, built once per FilterSet class (django-filter builds it on every
        request: ~1 ms of a list's CPU). Safe because no filter here varies per request (no
        request-dependent querysets)."""
        cls = type(self)
        form_class = cls.__dict__.get("_form_class")
        if form_class is None:
            form_class = super().get_form_class()
            form_class.base_fields = _CopiedShallowly(form_class.base_fields)
            cls._form_class = form_class
        return form_class

    def is_valid(self) -> bool:
        valid = super().is_valid()
        for name in self.repeated:
            message = f"Given {len(self.data.getlist(name))} times; this parameter takes one value."
            self.form.add_error(name, ValidationError(message, code="repeated"))
            valid = False
        getlist = getattr(self.data, "getlist", None)
        for name, filter_ in self.filters.items():
            if name not in self.data:
                continue
            values: list[Any] = getlist(name) if getlist is not None else [self.data.get(name)]
            if isinstance(filter_, django_filters.filters.BaseCSVFilter):
                # An empty item (status=, status=failed, or a bare status=) is not one of
                # the choices the schema lists: 400, not silently dropped. (A bare status= was
                # "no filter" until the 500-example schemathesis runs, which read it as [""],
                # as OpenAPI's form style allows.) To filter on nothing, omit the parameter.
                if any("" in str(value).split(",") for value in values):
                    if name not in self.form.errors:
                        self.form.add_error(name, ValidationError("Empty item in the list.", code="blank"))
                    valid = False
                continue
            if isinstance(filter_, django_filters.CharFilter):
                continue
            if any(value == "" for value in values) and name not in self.form.errors:
                self.form.add_error(name, ValidationError("Must not be empty.", code="blank"))
                valid = False
        return valid
