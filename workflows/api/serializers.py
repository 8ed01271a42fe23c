"""Workflow API shapes: input serializers check JSON types; ``workflows.services`` checks the
rules (the graph, the bindings, the parameters) and names the node or edge in its 400."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.serializers import JSONObjectField, StrictSerializer, UserRefSerializer, user_ref
from core.validators import validate_label_text, validate_name
from workflows import graph
from workflows.models import (
    DESCRIPTION_MAX,
    EDGES_MAX,
    NAME_MAX,
    NODES_MAX,
    PARALLEL_DEFAULT,
    PARALLEL_MAX,
    EdgeOn,
    Join,
    NodeError,
    NodeStatus,
    RunStatus,
    WorkflowNode,
    WorkflowRun,
    WorkflowTemplate,
)

KEY_PATTERN = graph.KEY_RE.pattern


# --- Shapes for the schema (the service checks them: a 400 naming nodes[i] / edges[i]) ------------
class WorkflowNodeSpecSerializer(serializers.Serializer):
    """A node of a workflow template."""

    key = serializers.RegexField(
        KEY_PATTERN,
        max_length=64,
        help_text="Unique in the workflow: a letter, then letters, digits, _ or -.",
    )
    template = serializers.CharField(
        help_text="The template this node runs, by id or slug (same project); stored as its id."
    )
    parameters = JSONObjectField(
        required=False,
        help_text="The template's parameters: a literal, `{{ params.<name> }}` (the run's parameter), "
        "`{{ nodes.<key>.outputs.<name> }}` (an upstream node's output), or text with those; a secret "
        'parameter as {"secret": "<project secret name>"} or a secret run parameter.',
    )
    join = serializers.ChoiceField(
        choices=Join.choices,
        required=False,
        default=Join.ALL,
        help_text="all: runs when every incoming edge's condition is met; any: when one is.",
    )
    for_each = serializers.CharField(
        required=False,
        help_text="Fan-out: `{{ nodes.<key>.outputs.<name> }}` naming an upstream list output; the node "
        "runs once per item, `{{ item }}` / `{{ item.<name> }}` in its parameters.",
    )
    max_parallel = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=PARALLEL_MAX,
        help_text=f"With for_each: items running at once (default {PARALLEL_DEFAULT}).",
    )


class WorkflowEdgeSpecSerializer(serializers.Serializer):
    """An edge: ``to`` may run once ``from`` ended the way ``on`` says."""

    # "from" is a Python keyword: the field is added under that name below.
    to = serializers.RegexField(KEY_PATTERN, max_length=64, help_text="The key of the node that follows.")
    on = serializers.ChoiceField(
        choices=EdgeOn.choices, required=False, default=EdgeOn.SUCCESS, help_text="Default: success."
    )

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        return {
            "from": serializers.RegexField(
                KEY_PATTERN, max_length=64, help_text="The key of the node it leaves."
            ),
            **fields,
        }


@extend_schema_field(
    {
        "type": "array",
        "items": {"type": "object", "additionalProperties": True},
        "description": "Parameter declarations, as a template takes them (docs/templates.md): "
        "name, type, required, default, choices, min, max, min_length, max_length, pattern, "
        "secret, description.",
    }
)
class DeclarationsField(serializers.ListField):
    """A list of JSON objects, kept as sent (the service checks each declaration)."""

    child = JSONObjectField()


@extend_schema_field(WorkflowNodeSpecSerializer(many=True))
class NodesField(serializers.ListField):
    child = JSONObjectField()


@extend_schema_field(WorkflowEdgeSpecSerializer(many=True))
class EdgesField(serializers.ListField):
    child = JSONObjectField()


class WorkflowTemplateWriteSerializer(StrictSerializer):
    """What a client may set on a workflow template. Absent fields: defaults on create and PUT."""

    project = serializers.UUIDField(
        required=False, help_text="Create only. Defaults to the key's project, else your personal project."
    )
    slug = serializers.SlugField(max_length=100, help_text="Unique in the project; usable in URLs.")
    name = serializers.CharField(max_length=NAME_MAX, validators=[validate_name])
    description = serializers.CharField(
        max_length=DESCRIPTION_MAX, required=False, allow_blank=True, validators=[validate_label_text]
    )
    parameters = DeclarationsField(required=False, help_text="The whole list (replaces it).")
    nodes = NodesField(min_length=1, max_length=NODES_MAX, help_text=f"1 to {NODES_MAX} nodes.")
    edges = EdgesField(required=False, max_length=EDGES_MAX, help_text="Default: none.")


class WorkflowTemplateSerializer(serializers.ModelSerializer):
    project = serializers.UUIDField(source="project_id")
    parameters = DeclarationsField()
    nodes = NodesField(help_text="As stored: each node's template is its id.")
    edges = EdgesField()
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = WorkflowTemplate
        fields = (
            "id",
            "project",
            "slug",
            "name",
            "description",
            "parameters",
            "nodes",
            "edges",
            "version",
            "created_by",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_created_by(self, workflow: WorkflowTemplate) -> dict[str, Any] | None:
        return user_ref(workflow.created_by)


# --- Runs ------------------------------------------------------------------------------------------
ALIAS = "templateId"  # the Task Master reference's name for ``template``


class WorkflowRunCreateSerializer(StrictSerializer):
    """A run of a workflow template (``templateId`` is accepted for ``template``)."""

    template = serializers.CharField(
        max_length=100,
        help_text="The workflow template's id, or its slug (add `project` when the slug exists in "
        "several of your projects). `templateId` (the Task Master reference's name) is accepted "
        "instead.",
    )
    project = serializers.UUIDField(required=False, help_text="Narrows a slug lookup to one project.")
    parameters = JSONObjectField(
        required=False,
        help_text='Values by parameter name (JSON types); a secret parameter as {"secret": "<name>"}.',
    )
    name = serializers.CharField(
        max_length=NAME_MAX,
        required=False,
        validators=[validate_name],
        help_text="Default: the template's name.",
    )
    start = serializers.BooleanField(default=True, help_text="Start at once (default); false: pending.")

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and ALIAS in data:
            data = dict(data)
            alias = data.pop(ALIAS)
            if "template" in data and data["template"] != alias:
                raise serializers.ValidationError(
                    {
                        ALIAS: [
                            serializers.ErrorDetail("Give template or templateId, not both.", code="conflict")
                        ]
                    }
                )
            data["template"] = alias
        return super().to_internal_value(data)


class WorkflowItemSerializer(serializers.ModelSerializer):
    """One item of a fan-out node."""

    index = serializers.IntegerField(source="item_index")
    item = serializers.JSONField(help_text="The list's element this item ran with.")
    status = serializers.SerializerMethodField()
    task = serializers.UUIDField(source="task_id", allow_null=True)
    execution = serializers.SerializerMethodField()
    outputs = JSONObjectField()
    error = serializers.SerializerMethodField()
    error_detail = serializers.SerializerMethodField()

    class Meta:
        model = WorkflowNode
        fields = (
            "index",
            "item",
            "status",
            "task",
            "execution",
            "attempts",
            "outputs",
            "error",
            "error_detail",
            "started_at",
            "finished_at",
        )
        read_only_fields = fields

    @extend_schema_field(serializers.ChoiceField(choices=NodeStatus.choices))
    def get_status(self, node: WorkflowNode) -> str:
        return str(node.shown_status())

    @extend_schema_field(serializers.ChoiceField(choices=NodeError.choices, allow_null=True))
    def get_error(self, node: WorkflowNode) -> str | None:
        return node.error or None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_error_detail(self, node: WorkflowNode) -> str | None:
        return node.error_detail or None

    @extend_schema_field(serializers.UUIDField(allow_null=True))
    def get_execution(self, node: WorkflowNode) -> str | None:
        if node.task is None or node.task.last_execution_id is None:
            return None
        return str(node.task.last_execution_id)


class WorkflowStepSerializer(WorkflowItemSerializer):
    """One node of a run, as the reference's ``steps`` show it."""

    id = serializers.CharField(source="key", help_text="The node's key.")
    name = serializers.CharField(source="template_name", help_text="Its template's name.")
    status = serializers.SerializerMethodField()
    template = serializers.UUIDField(source="template_id", allow_null=True)
    task = serializers.UUIDField(source="task_id", allow_null=True)
    execution = serializers.SerializerMethodField(help_text="Its task's latest execution.")
    outputs = JSONObjectField(help_text="What its run published (secrets masked).")
    result = JSONObjectField(source="outputs", help_text="The same as outputs (the reference's name).")
    # null when there is no error, as everywhere (an execution's error, a task's result.error).
    error = serializers.SerializerMethodField(
        help_text="Why it failed without its task failing, or task_failed / task_cancelled."
    )
    error_detail = serializers.SerializerMethodField()
    for_each = serializers.SerializerMethodField(help_text="A fan-out's list, or null.")
    items = WorkflowItemSerializer(many=True, help_text="A fan-out's items, in item order ([] otherwise).")

    class Meta:
        model = WorkflowNode
        fields = (
            "id",
            "name",
            "key",
            "status",
            "template",
            "task",
            "execution",
            "attempts",
            "outputs",
            "result",
            "error",
            "error_detail",
            "started_at",
            "finished_at",
            "for_each",
            "items",
        )
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_for_each(self, node: WorkflowNode) -> str | None:
        return node.for_each or None


class WorkflowRunSerializer(serializers.ModelSerializer):
    project = serializers.UUIDField(source="project_id")
    template = serializers.UUIDField(source="template_id", allow_null=True)
    status = serializers.ChoiceField(choices=RunStatus.choices)
    parameters = JSONObjectField(help_text="As given (a secret only as its reference).")
    error = serializers.SerializerMethodField(help_text="Why it failed (null: it did not).")
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = WorkflowRun
        fields = (
            "id",
            "project",
            "template",
            "template_version",
            "name",
            "status",
            "parameters",
            "error",
            "retries",
            "created_by",
            "created_at",
            "started_at",
            "paused_at",
            "finished_at",
            "updated_at",
        )
        read_only_fields = fields

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_error(self, run: WorkflowRun) -> str | None:
        return run.error or None

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_created_by(self, run: WorkflowRun) -> dict[str, Any] | None:
        return user_ref(run.created_by)


class WorkflowRunDetailSerializer(WorkflowRunSerializer):
    steps = WorkflowStepSerializer(source="nodes", many=True, help_text="Every node, in topological order.")

    class Meta(WorkflowRunSerializer.Meta):
        fields = (*WorkflowRunSerializer.Meta.fields, "steps")
        read_only_fields = fields
