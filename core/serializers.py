"""Input serializers that take JSON types at their word.

DRF coerces by default: ``{"name": 0}`` becomes ``"0"``, ``{"archived": "yes"}`` becomes
``True``, ``{"priority": "7"}`` becomes ``7``. The OpenAPI schema promises a string, a
boolean, an integer; a client that sends something else has a bug, and accepting it hides
the bug (schemathesis' negative tests found every one of these). ``StrictSerializer``
refuses a value whose JSON type does not match its field with a 400 (with DRF's own codes:
``invalid``, ``not_a_list``, ``not_a_dict``).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

_JSON_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "an array",
    dict: "an object",
}


def _expected_types(field: serializers.Field) -> tuple[type, ...] | None:
    """The JSON (Python) types a field accepts, or None when it takes any JSON value."""
    if isinstance(field, serializers.BooleanField):
        return (bool,)
    if isinstance(field, serializers.IntegerField):
        return (int,)
    if isinstance(field, serializers.FloatField | serializers.DecimalField):
        return (int, float)
    if isinstance(
        field, serializers.ListField | serializers.ListSerializer | serializers.MultipleChoiceField
    ):
        return (list,)
    if isinstance(field, serializers.DictField | serializers.Serializer):
        return (dict,)
    if isinstance(field, serializers.JSONField):
        return None
    if isinstance(field, serializers.ChoiceField):
        # Choices are strings or integers; the choice check itself rejects the rest.
        return (str, int) if any(isinstance(key, int) for key in field.choices) else (str,)
    if isinstance(field, serializers.CharField | serializers.UUIDField | serializers.DateTimeField):
        return (str,)
    if isinstance(field, serializers.DateField | serializers.TimeField | serializers.DurationField):
        return (str,)
    return None


def _type_code(field: serializers.Field) -> str:
    """DRF's own code for a value of the wrong type, so clients see the codes they know."""
    if isinstance(field, serializers.ListField | serializers.ListSerializer):
        return "not_a_list"
    if isinstance(field, serializers.DictField):
        return "not_a_dict"
    return "invalid"


def type_errors(field: serializers.Field, value: Any) -> list[str]:
    """Messages for ``value`` (and list items) whose JSON type ``field`` does not accept."""
    if value is None:
        return []  # allow_null decides
    expected = _expected_types(field)
    if expected is None:
        return []
    # bool is a subclass of int: true is not an integer in JSON.
    wrong_bool = isinstance(value, bool) and bool not in expected
    if wrong_bool or not isinstance(value, expected):
        names = " or ".join(_JSON_NAMES[t] for t in expected)
        return [f"Must be {names}, not {_JSON_NAMES.get(type(value), type(value).__name__)[2:].lstrip()}."]
    child = getattr(field, "child", None)
    if isinstance(field, serializers.ListField) and child is not None and isinstance(value, list):
        for index, item in enumerate(value):
            for message in type_errors(child, item):
                return [f"Item {index}: {message}"]
    return []


def unstorable_text(value: Any) -> str | None:
    """The error code if ``value`` (any JSON, keys included) holds text no database can store.

    PostgreSQL's text and jsonb refuse NUL (``\\u0000``) and lone UTF-16 surrogates are not
    UTF-8: either reached the database as a 500 (schemathesis sent ``{"parameters":
    {"k": "\\u0000"}}`` to /execute). CharFields already refuse them; this covers JSON.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "null_characters_not_allowed"
            if any("\ud800" <= char <= "\udfff" for char in item):
                return "surrogate_characters_not_allowed"
    return None


UNSTORABLE_MESSAGES = {
    "null_characters_not_allowed": "Null characters are not allowed.",
    "surrogate_characters_not_allowed": "Surrogate characters are not allowed.",
}


# No docstrings on these two: drf-spectacular would inherit them as every request body's
# description (inspect.getdoc walks the MRO).
class StrictTypesMixin:
    # Refuses values of the wrong JSON type (and unstorable text) before DRF's coercing
    # validation runs.

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            errors: dict[str, list[serializers.ErrorDetail]] = {}
            for name, field in self.fields.items():  # type: ignore[attr-defined]
                if field.read_only or name not in data:
                    continue
                messages = type_errors(field, data[name])
                if messages:
                    code = _type_code(field)
                    errors[name] = [serializers.ErrorDetail(m, code=code) for m in messages]
                    continue
                code = unstorable_text(data[name])
                if code is not None:
                    errors[name] = [serializers.ErrorDetail(UNSTORABLE_MESSAGES[code], code=code)]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)  # type: ignore[misc]


class StrictSerializer(StrictTypesMixin, serializers.Serializer):
    pass  # the base for every input serializer of the API


@extend_schema_field({"type": "object", "additionalProperties": True})
class JSONObjectField(serializers.JSONField):
    """A JSON object (documented as one, so null or a list is a schema violation too)."""

    default_error_messages = {"not_an_object": "Must be a JSON object."}

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            self.fail("not_an_object")
        return value


class UserRefSerializer(serializers.Serializer):
    """A user as every API answer and webhook payload shows one (component ``UserRef``)."""

    id = serializers.IntegerField()
    username = serializers.CharField()


def user_ref(user: Any) -> dict[str, Any] | None:
    """``{id, username}``, or None: the one shape of a user in answers and webhooks."""
    return None if user is None else {"id": user.pk, "username": user.get_username()}
