"""A schedule's parameters checked against its template's typed declarations.

A schedule stores its values, so it must never store a secret: a secret parameter is bound to a
project secret by name, ``{"secret": "<name>"}``, resolved by the template trigger at each fire
(the secrets app). A literal value for a secret parameter is refused, naming the parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from templates_app import parameters as params

Errors = list[tuple[str, str, str]]
SECRET_NAME_MAX = 200
BIND_HINT = 'bind it to a project secret: {"secret": "name"}'


def is_secret_ref(value: Any) -> bool:
    """``{"secret": "<name>"}``: a reference to a project secret, never a value."""
    return (
        isinstance(value, Mapping)
        and set(value) == {"secret"}
        and isinstance(value["secret"], str)
        and 0 < len(value["secret"]) <= SECRET_NAME_MAX
        and value["secret"].isprintable()
        and value["secret"] == value["secret"].strip()
    )


def parameter_errors(spec: list[Mapping[str, Any]], values: Any) -> Errors:
    """Everything wrong with ``values`` for a template declaring ``spec``, each error naming
    ``parameters.<name>``: the template's own checks for plain values, and for secrets that
    they are references and never literal values."""
    if not isinstance(values, Mapping):
        return [("parameters", "invalid", "An object of parameter names to values.")]
    items = {item["name"]: item for item in params.normalize_spec(spec)}
    errors: Errors = []
    plain: dict[str, Any] = {}
    bound: set[str] = set()
    for name, value in values.items():
        item = items.get(name)
        secret = item is not None and item["secret"]
        if secret and value is not None:
            if is_secret_ref(value):
                bound.add(name)
            else:
                errors.append(
                    (
                        f"parameters.{name}",
                        "secret_value",
                        f"{name} is a secret parameter: a schedule never stores its value; {BIND_HINT}.",
                    )
                )
            continue
        if item is not None and is_secret_ref(value):
            errors.append(
                (
                    f"parameters.{name}",
                    "not_secret",
                    f"{name} is not a secret parameter: give its value, not a secret reference.",
                )
            )
            continue
        plain[name] = value
    _clean, found = params.validate(spec, plain)
    for field, code, message in found:
        name = field.removeprefix("parameters.")
        item = items.get(name)
        if item is not None and item["secret"]:
            if name in bound or (name in values and name not in plain):
                continue  # bound to a secret, or already reported as a literal value
            if code == "required":
                message = f"This secret parameter is required: {BIND_HINT}."
        errors.append((field, code, message))
    return errors
