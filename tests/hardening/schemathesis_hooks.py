"""Schemathesis hooks for the live run (loaded through SCHEMATHESIS_HOOKS).

Two things OpenAPI 3.0 cannot state, so they are written here with their reasons:

1. Mutually exclusive query parameters. ``page`` and ``offset`` (and, on the task list,
   ``cursor``/``pagination=cursor`` with either) are each valid alone and a documented 400
   together; OpenAPI has no way to say "not both" for parameters. The generator is told not
   to combine them; tests/hardening/test_bad_input.py checks that the combination is a 400.

2. Referential and environmental validation. A schema-valid body can still name a task,
   project or user that does not exist, or a webhook host that does not resolve; the API
   answers 400 with the field and a specific code. Schemathesis' built-in
   ``positive_data_acceptance`` counts every such 400 as a failure, so it is replaced by
   ``positive_data_accepted_unless_referential``: any other 400 on schema-valid data still
   fails the run.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

EXCLUSIVE = (("page", "offset"), ("page", "cursor"), ("offset", "cursor"))

# Codes of 400s that depend on data outside the request (or on a rule the schema cannot
# state), each with why it is not a schema gap.
REFERENTIAL_CODES = {
    "does_not_exist",  # depends_on / project / username naming something that is not there
    "not_in_project",  # depends_on naming a task of another project
    "cycle",  # depends_on that would close a cycle
    "unresolvable",  # webhook host that does not resolve (DNS, not syntax)
    "forbidden_address",  # webhook host resolving to a private / metadata address
    "null_characters_not_allowed",  # PostgreSQL text cannot hold NUL; JSON Schema patterns can't say it well
    "surrogate_characters_not_allowed",  # lone UTF-16 surrogates cannot be stored as UTF-8
    # Names refuse Unicode categories Cc, Cf, Cs, Zl and Zp (core/validators.py, stated in
    # each field's description): OpenAPI 3.0's ECMA-262 patterns have no \p{...} to say it.
    "invalid_character",
    "above_cap",  # a key's rate_limit above the operator's TASKFORGE_RATE_LIMIT_MAX (a setting)
    "wider_than_parent",  # a key made by a key: no wider than the key that makes it (its rate)
    "immutable",  # PUT/PATCH may repeat a task's project but not change it
    "last_admin",  # removing or demoting a project's last admin: depends on the other members
    "already_member",  # adding a user who is already in the project
    "ambiguous",  # webhook event_types ["*", ...]: "*" must come alone (no JSON Schema for it)
    "max_digits",  # estimated_hours precision: multipleOf on binary floats is unreliable
    "past_end",  # a log offset / Last-Event-ID past the last chunk: depends on the output
    "no_parameters",  # execute with parameters on a task that was not made from a template
    "unique",  # a template slug already taken in the project
    "unknown_field",  # a trigger override naming a field a trigger cannot set (refused, not dropped)
    "max_decimal_places",
    "max_whole_digits",
    "invalid_cursor",  # the cursor is an opaque token: any string is schema-valid, few decode
    # PATCH /webhooks/{id} with no known field: minProperties says 1, but an unknown property
    # satisfies minProperties and is still nothing to change.
    "nothing_to_change",
    # /execute parameters become PARAM_<NAME> variables: names must be identifiers, and
    # OpenAPI 3.0 has no propertyNames to say so.
    "invalid_parameter_name",
}
# (field, code) pairs: a rule on one field that the schema cannot state.
FIELD_RULES = {
    ("expires_at", "invalid"),  # an API key's expiry must lie in the future
    ("script_type", "required"),  # required when script_content is given (a cross-field rule)
    ("url", "userinfo"),  # user:password@ in a webhook URL is refused (credentials leak in logs)
    ("url", "invalid"),  # URL details past the documented pattern (port range, IDNA) are
    # checked by the webhook SSRF guard
    ("estimated_hours", "max_digits"),  # see REFERENTIAL_CODES["max_digits"]
    ("until", "in_the_past"),  # an agent's pause must end in the future
    # Labels are {key: value} or ["key=value"] with character rules per key and value
    # (docs/agents.md): documented as free JSON, checked by agents.models.parse_labels.
    ("labels", "invalid_label"),
    ("labels", "not_an_object"),
    ("labels", "max_items"),
    ("required_labels", "invalid_label"),
    ("required_labels", "not_an_object"),
    ("required_labels", "max_items"),
}


@schemathesis.hook
def filter_query(ctx: Any, query: dict[str, Any] | None) -> bool:
    if not query:
        return True
    if any(a in query and b in query for a, b in EXCLUSIVE):
        return False
    return not (query.get("pagination") == "cursor" and ("page" in query or "offset" in query))


def _field_rule(response: Any, code: str) -> bool:
    try:
        errors = response.json().get("errors") or []
    except ValueError:
        return False
    return all((e.get("field"), e.get("code")) in FIELD_RULES for e in errors if e.get("code") == code)


def _codes(response: Any) -> set[str]:
    try:
        body = response.json()
    except ValueError:
        return set()
    return {str(error.get("code")) for error in body.get("errors") or [] if isinstance(error, dict)}


def _blank_after_strip(case: Any, response: Any) -> bool:
    r"""Every ``blank`` error names a body field whose text Python's ``strip()`` empties: it also
    trims \x1c-\x1f and \x85, which JSON Schema's ``\S`` (the schema's pattern) counts as text,
    so a name, username or error message of only those is blank to the API: one rule for every
    text field, not one field at a time."""
    body = case.body if isinstance(case.body, dict) else {}
    try:
        errors = response.json().get("errors") or []
    except ValueError:
        return False
    blank = [e for e in errors if isinstance(e, dict) and e.get("code") == "blank"]
    return bool(blank) and all(
        isinstance(body.get(e.get("field")), str)
        and body[e["field"]] != ""
        and body[e["field"]].strip() == ""
        for e in blank
    )


# A template's declarations have rules that span fields and the script (a parameter name's
# syntax and uniqueness, choices only for choice parameters, defaults obeying their own bounds,
# placeholders declared and safely placed: docs/templates.md). JSON Schema cannot state them, so
# on template writes a 400 naming only those fields is the documented answer.
TEMPLATE_DECLARATION_FIELDS = ("parameters", "script", "name_pattern", "description_pattern")


# A schedule's rules span fields and data the schema cannot hold: cron or interval_seconds (one
# of them), a cron expression that can fire (``0 0 31 2 *`` matches the field patterns), a zone
# of the tz database, end_at after start_at, jitter below the interval, a template or a task
# (one of them) and parameters / overrides checked against that template (docs/schedules.md).
# On schedule writes, previews, resume and run now (the template may have changed since) a 400
# naming only those fields is the documented answer.
SCHEDULE_RULE_FIELDS = (
    "cron",
    "timezone",
    "interval_seconds",
    "start_at",
    "end_at",
    "after",
    "jitter_seconds",
    "template",
    "task",
    "parameters",
    "overrides",
)


# A workflow template's graph is checked whole (docs/api.md, "Workflows"): node keys unique,
# templates that exist in the project, edges between declared nodes, no cycle, bindings that
# name a declared parameter or an upstream node and fit the target's type, required parameters
# bound; its parameter declarations follow the template rules. A run's parameters are checked
# against its workflow template's declarations (data no single schema can list). On those writes
# a 400 naming only these fields is the documented answer.
WORKFLOW_TEMPLATE_RULE_FIELDS = ("parameters", "nodes", "edges")
WORKFLOW_RUN_RULE_FIELDS = ("parameters", "nodes[")


def _path(case: Any) -> str:
    return getattr(getattr(case, "operation", None), "path", "") or ""


def _errors(response: Any) -> list[dict[str, Any]]:
    """The ``errors`` of a problem response ([] when the body is not JSON)."""
    try:
        return response.json().get("errors") or []
    except ValueError:
        return []


def _template_parameters_unknown(case: Any, response: Any) -> bool:
    """A trigger's ``parameters`` are checked against the template's declarations (data the
    schema of one endpoint for every template cannot list): ``parameters.<name>`` unknown. So
    are an execute's on a task made from a template (a workflow node's, say), against the
    declarations the task kept: any ``parameters.<name>`` error there depends on that task."""
    path = _path(case)
    if not path.endswith(("/trigger", "/execute")):
        return False
    errors = _errors(response)
    return bool(errors) and all(
        str(e.get("field") or "").startswith("parameters.")
        and (e.get("code") == "unknown" or path.endswith("/execute"))
        for e in errors
    )


def _schedule_rules(case: Any, response: Any) -> bool:
    path = _path(case)
    if not path.startswith("/api/v1/schedules"):
        return False
    errors = _errors(response)
    return bool(errors) and all(str(e.get("field") or "").startswith(SCHEDULE_RULE_FIELDS) for e in errors)


def _workflow_rules(case: Any, response: Any) -> bool:
    path = _path(case)
    if path.startswith("/api/v1/workflow-templates"):
        fields = WORKFLOW_TEMPLATE_RULE_FIELDS
    elif path == "/api/v1/workflows":
        fields = WORKFLOW_RUN_RULE_FIELDS
    else:
        return False
    errors = _errors(response)
    return bool(errors) and all(str(e.get("field") or "").startswith(fields) for e in errors)


def _template_declaration_rules(case: Any, response: Any) -> bool:
    path = _path(case)
    if not path.startswith("/api/v1/templates") or path.endswith("/trigger"):
        return False
    errors = _errors(response)
    return bool(errors) and all(
        str(e.get("field") or "").startswith(TEMPLATE_DECLARATION_FIELDS) for e in errors
    )


@schemathesis.check
def positive_data_accepted_unless_referential(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schema-valid data is accepted: 2xx, or 401/403/404/409/429 (state, not input), or a
    400 whose every error code is in REFERENTIAL_CODES."""
    from schemathesis.generation import GenerationMode

    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return None
    if response.status_code != 400:
        return None
    query = case.query or {}
    if any(a in query and b in query for a, b in EXCLUSIVE):
        return None  # see the module docstring: "not both" is documented, not in the schema
    if query.get("pagination") == "cursor" and ("page" in query or "offset" in query):
        return None
    if _template_declaration_rules(case, response) or _template_parameters_unknown(case, response):
        return None
    if _schedule_rules(case, response) or _workflow_rules(case, response):
        return None
    codes = _codes(response)
    if _blank_after_strip(case, response):
        codes.discard("blank")
        if not codes:
            return None
    unexplained = {c for c in codes if c not in REFERENTIAL_CODES and not _field_rule(response, c)}
    if not codes or unexplained:
        raise AssertionError(
            f"Schema-valid request rejected with 400 ({', '.join(sorted(unexplained)) or 'no codes'}): "
            f"{response.text[:500]}"
        )
    return None


@schemathesis.hook
def filter_path_parameters(ctx: Any, path_parameters: dict[str, Any] | None) -> bool:
    # The run must not revoke the key it authenticates with (DELETE /api-keys/{its prefix}):
    # every later request would be a 401 and the run would test nothing.
    own = os.environ.get("TASKFORGE_ST_KEY_PREFIX")
    if not own or not path_parameters or ctx.operation is None:
        return True
    return not (ctx.operation.path == "/api/v1/api-keys/{id}" and path_parameters.get("id") == own)


@schemathesis.hook
def filter_headers(ctx: Any, headers: dict[str, Any] | None) -> bool:
    # A negative case that only adds an unknown header field is not invalid HTTP: recipients
    # ignore header fields they do not recognise (RFC 9110 §5.1), so it is not refused.
    return not headers or not any("unknown-property" in str(name).lower() for name in headers)
