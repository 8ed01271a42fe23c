"""OpenAPI: every operation documents its problem responses and the API-key scheme."""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from drf_spectacular.contrib.django_filters import DjangoFilterExtension
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import get_doc
from rest_framework import serializers, viewsets

from core.validators import validate_label_text, validate_name

# Ids in paths: any UUID spelling (upper case, no dashes) is accepted; documented as a UUID.
UUID_LOOKUP_REGEX = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"


NAME_VALIDATORS = (validate_name, validate_label_text)
NAME_RULE = (
    "One line of visible text: no control or invisible formatting characters (Unicode "
    "categories Cc, Cf except U+200C/U+200D, Cs, Zl, Zp; 400 `invalid_character`)."
)
LABEL_RULE = (
    "No control or invisible formatting characters except line feed and tab (Unicode "
    "categories Cc, Cf except U+200C/U+200D, Cs, Zl, Zp; 400 `invalid_character`)."
)


class ProblemFieldErrorSerializer(serializers.Serializer):
    field = serializers.CharField(
        allow_null=True, help_text="Dotted path of the field, null for the whole body."
    )
    code = serializers.CharField(help_text="Machine-readable rule, e.g. required, max_length.")
    message = serializers.CharField()


class ProblemSerializer(serializers.Serializer):
    """RFC 9457 problem document. `code` is the kind of problem (the end of `type`, in
    snake_case): branch on it. The other optional members come with some kinds only."""

    type = serializers.CharField(help_text="urn:taskforge:problem:<kind>, e.g. ...:already-claimed")
    code = serializers.CharField(
        help_text="The kind, stable and machine-readable: the end of `type` in snake_case "
        "(already_claimed, not_claimed, blocked_by_dependencies, validation_error, not_found, ...)."
    )
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    instance = serializers.CharField(allow_null=True)
    request_id = serializers.CharField(allow_null=True)
    errors = ProblemFieldErrorSerializer(
        many=True, required=False, help_text="validation_error: every invalid field."
    )
    current_status = serializers.CharField(
        required=False, help_text="Task conflicts (409): the task's status now."
    )
    allowed = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="move (409): the statuses it can go to."
    )
    blockers = serializers.ListField(
        child=serializers.UUIDField(), required=False, help_text="blocked (409): unfinished dependencies."
    )
    projects = serializers.ListField(
        child=serializers.UUIDField(), required=False, help_text="ambiguous_slug (409): where the slug is."
    )
    required_scope = serializers.CharField(required=False, help_text="403: the scope the key lacks.")
    retry_after = serializers.IntegerField(required=False, help_text="429/503: seconds to wait.")


ERROR_DESCRIPTIONS = {
    "400": "Invalid input (problem document with an `errors` list)",
    "401": "Missing, malformed, unknown, revoked or expired API key",
    "403": "The key lacks the scope, or the caller's role is too low",
    "404": "Not found (objects of other projects answer 404 too; on a list, a page past the end)",
    "413": "Request body too large",
    "415": "Unsupported media type (send JSON)",
    "429": "Rate limit exceeded (see Retry-After)",
}


class ProblemAutoSchema(AutoSchema):
    """Adds the problem responses every API operation can give, unless declared.

    Every 4xx/5xx is served as ``application/problem+json`` (core.errors), including the
    ones a view declares itself (409 conflicts): their content type is rewritten to match.
    """

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for code, response in responses.items():
            content = response.get("content") if isinstance(response, dict) else None
            if str(code)[0] in "45" and content and "application/problem+json" not in content:
                response["content"] = {"application/problem+json": next(iter(content.values()))}
        problem = self._get_response_for_code(ProblemSerializer, "400")["content"]
        problem = {"application/problem+json": next(iter(problem.values()))}
        codes = ["400", "401", "403", "429"]
        if self.method in ("POST", "PUT", "PATCH"):
            codes += ["413", "415"]
        # Detail routes 404 for unknown or foreign objects; lists 404 for a page past the end.
        if "{" in self.path or self._is_list_view():
            codes.append("404")
        for code in codes:
            responses.setdefault(
                code, {"description": ERROR_DESCRIPTIONS.get(code, "Error"), "content": problem}
            )
        # The HTTP server (gunicorn, or a proxy in front) refuses a request line longer than
        # its limit before the API sees it, with its own HTML page (schemathesis sent a
        # 7.5 KB query string in the 500-example run). Documented as what it is.
        responses.setdefault(
            "414",
            {
                "description": "Request line (path and query string) too long: refused by the HTTP "
                "server in front of the API, with an HTML page, not a problem document",
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
        )
        return responses

    def get_description(self) -> str:  # type: ignore[override]
        # An operation's own docstring only: a viewset's docstring given to all of its
        # operations made every generated method say the same thing (issue 19).
        action = getattr(self.view, getattr(self.view, "action", None) or self.method.lower(), None)
        own = get_doc(action) if action is not None else ""
        if own or isinstance(self.view, viewsets.ViewSetMixin):
            return own
        return get_doc(self.view.__class__)

    def get_summary(self) -> str | None:
        return SUMMARIES.get(self.get_operation_id())

    def _get_format_parameters(self) -> list[Any]:
        # ?format= (DRF's URL format override) is not part of the API: clients send Accept.
        return []

    def _resolve_path_parameters(self, variables: list[str]) -> list[dict[str, Any]]:
        parameters = super()._resolve_path_parameters(variables)
        for parameter in parameters:
            if parameter["schema"].get("pattern") == f"^{UUID_LOOKUP_REGEX}$":
                parameter["schema"] = {"type": "string", "format": "uuid"}
        return parameters

    def get_filter_backends(self) -> list[Any]:
        # Viewsets filter their ``list`` only (see TaskViewSet.filter_queryset); documenting the
        # list's filters on other GET actions (a task's events, notes) promised what they ignore.
        action = getattr(self.view, "action", None)
        if action is not None and action != "list":
            return []
        return super().get_filter_backends()

    def _map_serializer_field(self, field: Any, direction: str, bypass_extensions: bool = False) -> Any:
        # A read-only ChoiceField built by a ModelSerializer loses the model field's blank=True
        # (DRF only copies it for writable fields), so "" (no script type, no error) would be
        # outside the documented enum. Restore it from the model field.
        if isinstance(field, serializers.ChoiceField) and field.read_only and not field.allow_blank:
            model_field = _model_field(field)
            if model_field is not None and getattr(model_field, "blank", False):
                field.allow_blank = True
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if isinstance(schema, dict) and any(v in NAME_VALIDATORS for v in field.validators):
            # ECMA-262 patterns (OpenAPI 3.0) cannot name Unicode categories: say it in words.
            note = NAME_RULE if validate_name in field.validators else LABEL_RULE
            schema["description"] = f"{schema.get('description', '')} {note}".strip()
        # DRF refuses "" (and, when trimming, whitespace only) unless allow_blank; say so, so a
        # schema-valid "" is not a 400 (schemathesis found it on /fail's `error`).
        if (
            direction == "request"
            and type(field) in (serializers.CharField, serializers.RegexField)
            and not field.allow_blank
            and isinstance(schema, dict)
            and schema.get("type") == "string"
        ):
            schema.setdefault("minLength", 1)
            has_regex = any(isinstance(v, RegexValidator) for v in field.validators)
            if field.trim_whitespace and "pattern" not in schema and not has_regex:
                schema["pattern"] = r"\S"
        return schema


# Summaries of operations whose views do not give one (generated clients use them as the
# method's docstring). Views with @extend_schema(summary=...) win.
SUMMARIES = {
    "api_keys_list": "Your API keys",
    "api_keys_create": "Create an API key (its secret is shown once)",
    "api_keys_destroy": "Revoke an API key",
    "me_retrieve": "Who the caller is: user, key, projects",
    "status_retrieve": "Queue depth, workers and running executions",
    "projects_list": "Projects you belong to",
    "projects_create": "Create a team project",
    "projects_retrieve": "A project",
    "projects_members_list": "Members of a project",
    "projects_members_create": "Add a member (project admins)",
    "projects_members_retrieve": "A member of a project",
    "projects_members_partial_update": "Change a member's role (project admins)",
    "projects_members_destroy": "Remove a member (project admins)",
    "executions_list": "Executions across your tasks",
    "tasks_execute_create": "Run a task's script",
    "tasks_executions_list": "Executions of a task, newest first",
    "tasks_executions_retrieve": "An execution with its script and output",
    "tasks_executions_destroy": "Cancel an execution",
    "tasks_executions_log_retrieve": "An execution's output (JSON page, or a live text/event-stream)",
}


class ArrayParametersRepeated(DjangoFilterExtension):
    """List filters as ``style: form, explode: true`` arrays (``status=a&status=b``), the
    spelling generated clients send; the API takes the comma spelling too (core.filters)."""

    priority = 1

    def resolve_filter_field(
        self, auto_schema: Any, model: Any, filterset_class: Any, field_name: str, filter_field: Any
    ) -> list[dict[str, Any]]:
        parameters = super().resolve_filter_field(
            auto_schema, model, filterset_class, field_name, filter_field
        )
        help_text = str(filter_field.extra.get("help_text") or "")
        for parameter in parameters:
            # A filter with a schema override loses its help text in drf-spectacular.
            description = parameter.get("description") or help_text
            if parameter.get("schema", {}).get("type") == "array":
                parameter["style"], parameter["explode"] = "form", True
                description = (
                    f"{description} Several values: repeat the parameter ({field_name}=x&{field_name}=y) "
                    f"or separate them with commas ({field_name}=x,y)."
                ).strip()
            if description:
                parameter["description"] = description
        return parameters


def _model_field(field: serializers.Field) -> Any:
    parent = getattr(field, "parent", None)
    model = getattr(getattr(parent, "Meta", None), "model", None)
    if model is None or not isinstance(field.source, str) or "." in field.source:
        return None
    try:
        return model._meta.get_field(field.source)
    except Exception:
        return None


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.APIKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Api-Key <prefix>.<secret>` or `Bearer <prefix>.<secret>`",
        }


class StreamTicketAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "events.api.authentication.StreamTicketAuthentication"
    name = "StreamTicket"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {
            "type": "apiKey",
            "in": "query",
            "name": "ticket",
            "description": "A single-use ticket from `POST /api/v1/events/tickets`, for the event "
            "stream only (a browser's EventSource cannot send a header).",
        }


# OpenAPI links (operationId -> what its success response leads to), so clients and stateful
# testers (schemathesis) can follow create -> get -> update -> execute -> cancel -> delete.
# source operationId: (status, [(target operationId, {parameter: runtime expression})]).
_ID = "$response.body#/id"
_EXECUTION_TARGETS = {"id": "$response.body#/task", "execution_id": "$response.body#/id"}
LINKS: dict[str, tuple[str, list[tuple[str, dict[str, str]]]]] = {
    "tasks_create": (
        "201",
        [
            ("tasks_retrieve", {"id": _ID}),
            ("tasks_update", {"id": _ID}),
            ("tasks_partial_update", {"id": _ID}),
            ("tasks_execute_create", {"id": _ID}),
            ("tasks_claim_create", {"id": _ID}),
            ("tasks_move_create", {"id": _ID}),
            ("tasks_notes_create", {"id": _ID}),
            ("tasks_events_list", {"id": _ID}),
            ("tasks_executions_list", {"id": _ID}),
            ("tasks_destroy", {"id": _ID}),
        ],
    ),
    "tasks_claim_create": (
        "200",
        [
            ("tasks_heartbeat_create", {"id": _ID}),
            ("tasks_complete_create", {"id": _ID}),
            ("tasks_fail_create", {"id": _ID}),
            ("tasks_release_create", {"id": _ID}),
        ],
    ),
    "tasks_execute_create": (
        "202",
        [
            ("tasks_executions_retrieve", _EXECUTION_TARGETS),
            ("tasks_executions_log_retrieve", _EXECUTION_TARGETS),
            ("tasks_executions_destroy", _EXECUTION_TARGETS),
            ("tasks_retrieve", {"id": "$response.body#/task"}),
            ("tasks_destroy", {"id": "$response.body#/task"}),
        ],
    ),
    "projects_create": (
        "201",
        [
            ("projects_retrieve", {"id": _ID}),
            ("projects_members_list", {"project_pk": _ID}),
            ("projects_members_create", {"project_pk": _ID}),
        ],
    ),
    "api_keys_create": ("201", [("api_keys_destroy", {"id": "$response.body#/id"})]),
    "webhooks_create": (
        "201",
        [
            ("webhooks_retrieve", {"id": _ID}),
            ("webhooks_partial_update", {"id": _ID}),
            ("webhooks_test_create", {"id": _ID}),
            ("webhooks_rotate_secret_create", {"id": _ID}),
            ("webhooks_deliveries_list", {"id": _ID}),
            ("webhooks_destroy", {"id": _ID}),
        ],
    ),
    "workflow_templates_create": (
        "201",
        [
            ("workflow_templates_retrieve", {"ref": _ID}),
            ("workflow_templates_partial_update", {"ref": _ID}),
            ("workflow_templates_update", {"ref": _ID}),
            ("workflow_templates_destroy", {"ref": _ID}),
        ],
    ),
    "workflows_create": (
        "201",
        [
            ("workflows_retrieve", {"id": _ID}),
            ("workflows_start_create", {"id": _ID}),
            ("workflows_pause_create", {"id": _ID}),
            ("workflows_resume_create", {"id": _ID}),
            ("workflows_cancel_create", {"id": _ID}),
            ("workflows_retry_create", {"id": _ID}),
        ],
    ),
}


def require_comma_list_items(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: a comma-list filter (``status=a,b``: an array in
    form style, not exploded) holds at least one item. ``?status=`` on the wire is both the
    empty array and ``[""]``; the API refuses it (400: omit the parameter to not filter), so
    the schema says ``minItems: 1`` and the empty array is not a valid value."""
    for path in result.get("paths", {}).values():
        for operation in path.values():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema") or {}
                comma_list = schema.get("type") == "array" and not parameter.get("explode", True)
                if parameter.get("in") == "query" and comma_list:
                    schema["minItems"] = 1
    return result


def add_links(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: attach ``LINKS`` to the success responses."""
    operations = {
        operation["operationId"]: operation
        for path in result.get("paths", {}).values()
        for operation in path.values()
        if isinstance(operation, dict) and "operationId" in operation
    }
    # PATCH /webhooks/{id} needs at least one field (400 "nothing to change" otherwise).
    patched = result.get("components", {}).get("schemas", {}).get("PatchedWebhookUpdateRequest")
    if patched is not None:
        patched["minProperties"] = 1
    for source, (code, targets) in LINKS.items():
        response = operations.get(source, {}).get("responses", {}).get(code)
        if response is None:
            continue
        links = response.setdefault("links", {})
        for target, parameters in targets:
            if target in operations:
                name = "".join(part.title() for part in target.split("_"))
                links[name] = {"operationId": target, "parameters": parameters}
    return result
