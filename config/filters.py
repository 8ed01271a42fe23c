"""The base of every FilterSet: a typed filter given an empty value is a 400, not ignored.

django-filter skips empty values, so ``?task=`` or ``?created_after=`` silently returned the
unfiltered list although the schema documents a UUID or a date-time there (schemathesis'
negative tests caught it). Free-text filters (``CharFilter``: ``agent``, ``search``) still
take "" as "no filter".
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
    """``status=failed,timed_out``: a comma list, each value one of the choices (else 400).

    Documented as a comma-separated array of the choices, so a schema-valid value is one the
    API accepts (schemathesis sent "¨_튊" to what was documented as any string).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # drf-spectacular documents a CSV filter as an array (style form, explode false) of this.
        set_override(
            self, "field", {"type": "string", "enum": [str(v) for v, _ in kwargs.get("choices", ())]}
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
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        if not isinstance(cls.__dict__.get("base_filters"), _CopiedShallowly):
            cls.base_filters = _CopiedShallowly(cls.base_filters)
        super().__init__(*args, **kwargs)

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
