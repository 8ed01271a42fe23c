"""Template API shapes: input serializers check types; the services check the rules."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.serializers import StrictSerializer, user_ref
from core.validators import validate_name
from executions.serializers import ExecutionSerializer
from tasks.models import (
    AGENT_MAX,
    CONCURRENCY_MAX,
    CONCURRENCY_MIN,
    DESCRIPTION_MAX,
    NAME_MAX,
    PRIORITY_MAX,
    PRIORITY_MIN,
    RETRIES_MAX,
    TAGS_MAX,
    TIMEOUT_MAX,
    TIMEOUT_MIN,
    ScriptType,
    validate_metadata,
    validate_script_size,
)
from tasks.serializers import TaskSerializer, TaskWriteSerializer, UserRefSerializer, tag_field
from templates_app import parameters as params
from templates_app.models import ParameterType, Template


@extend_schema_field(
    {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}], "nullable": True}
)
class ScalarField(serializers.JSONField):
    """A JSON scalar (string, number, boolean) or null, kept as sent (no coercion)."""


@extend_schema_field({"type": "number", "nullable": True})
class NumberBoundField(serializers.JSONField):
    """A JSON number kept as sent (an integer stays an integer)."""


class ParameterSerializer(StrictSerializer):
    """One typed parameter. The rules that tie keys together are checked on save."""

    name = serializers.CharField(max_length=64, help_text="A-Z a-z 0-9 _; the script gets PARAM_<NAME>.")
    type = serializers.ChoiceField(choices=ParameterType.choices, default=ParameterType.STRING)
    required = serializers.BooleanField(default=False)
    default = ScalarField(required=False, allow_null=True, help_text="Must obey the rules; not for secrets.")
    choices = serializers.ListField(
        child=serializers.CharField(trim_whitespace=False),
        required=False,
        allow_null=True,
        max_length=params.CHOICES_MAX,
        help_text="choice only.",
    )
    min = NumberBoundField(required=False, allow_null=True, help_text="integer/number only.")
    max = NumberBoundField(required=False, allow_null=True, help_text="integer/number only.")
    min_length = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, help_text="string only."
    )
    max_length = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, help_text="string only."
    )
    pattern = serializers.CharField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        max_length=params.PATTERN_MAX,
        help_text="string only: the whole value must match this regular expression.",
    )
    secret = serializers.BooleanField(
        default=False, help_text="Masked as *** everywhere; reaches the script only through PARAM_<NAME>."
    )
    description = serializers.CharField(required=False, allow_blank=True, max_length=params.DESCRIPTION_MAX)


class TemplateWriteSerializer(StrictSerializer):
    """What a client may set on a template. Absent fields: defaults on create and PUT."""

    project = serializers.UUIDField(
        required=False, help_text="Create only. Defaults to the key's project, else your personal project."
    )
    slug = serializers.SlugField(max_length=100, help_text="Unique in the project; usable in URLs.")
    name = serializers.CharField(max_length=200, validators=[validate_name])
    description = serializers.CharField(
        max_length=DESCRIPTION_MAX, required=False, allow_blank=True, trim_whitespace=False
    )
    name_pattern = serializers.CharField(
        validators=[validate_name], max_length=NAME_MAX, help_text="The task's name; {{ param }} allowed."
    )
    description_pattern = serializers.CharField(
        max_length=DESCRIPTION_MAX, required=False, allow_blank=True, trim_whitespace=False
    )
    script_type = serializers.ChoiceField(choices=ScriptType.choices, required=False, allow_blank=True)
    script_content = serializers.CharField(
        source="script",
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        validators=[validate_script_size],
        help_text="{{ param }} becomes the value quoted for the language (secrets: a PARAM_ reference). "
        "Named like a task's script_content.",
    )
    script = serializers.CharField(
        source="deprecated_script",
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        write_only=True,
        validators=[validate_script_size],
        help_text="Deprecated: the old name of script_content, still accepted on input (not with it).",
    )
    timeout_seconds = serializers.IntegerField(min_value=TIMEOUT_MIN, max_value=TIMEOUT_MAX, required=False)
    priority = serializers.IntegerField(min_value=PRIORITY_MIN, max_value=PRIORITY_MAX, required=False)
    tags = serializers.ListField(child=tag_field(), max_length=TAGS_MAX, required=False)
    metadata = serializers.JSONField(required=False, validators=[validate_metadata])
    agent = serializers.CharField(max_length=AGENT_MAX, required=False, allow_blank=True)
    max_retries = serializers.IntegerField(min_value=0, max_value=RETRIES_MAX, required=False)
    max_concurrency = serializers.IntegerField(
        min_value=CONCURRENCY_MIN, max_value=CONCURRENCY_MAX, required=False
    )
    parameters = ParameterSerializer(many=True, required=False, help_text="The whole list (replaces it).")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "deprecated_script" in attrs:
            old = attrs.pop("deprecated_script")
            if "script" in attrs:
                raise serializers.ValidationError(
                    {"script": [serializers.ErrorDetail("Give script_content only.", code="conflict")]}
                )
            attrs["script"] = old
        return attrs


class TemplateSerializer(serializers.ModelSerializer):
    project = serializers.UUIDField(source="project_id")
    script_content = serializers.CharField(source="script")
    parameters = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = Template
        fields = (
            "id",
            "project",
            "slug",
            "name",
            "description",
            "name_pattern",
            "description_pattern",
            "script_type",
            "script_content",
            "timeout_seconds",
            "priority",
            "tags",
            "metadata",
            "agent",
            "max_retries",
            "max_concurrency",
            "parameters",
            "version",
            "created_by",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields

    @extend_schema_field(ParameterSerializer(many=True))
    def get_parameters(self, template: Template) -> list[dict[str, Any]]:
        return [parameter.as_spec() for parameter in template.parameters.all()]

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_created_by(self, template: Template) -> dict[str, Any] | None:
        return user_ref(template.created_by)


class TriggerOverridesSerializer(TaskWriteSerializer):
    """Task fields a trigger may set instead of the template's (script fields excepted)."""

    project = None
    script_type = None
    script_content = None
    archived = None
    name = serializers.CharField(
        max_length=NAME_MAX, required=False, validators=[validate_name], help_text="Instead of the pattern."
    )

    def to_internal_value(self, data: Any) -> Any:
        # An override the trigger cannot apply is refused, never silently dropped.
        if isinstance(data, dict):
            unknown = sorted(str(k) for k in data if k not in self.fields or self.fields[k].read_only)
            if unknown:
                raise serializers.ValidationError(
                    {
                        k: [
                            serializers.ErrorDetail(
                                "Not a field a trigger can override.", code="unknown_field"
                            )
                        ]
                        for k in unknown
                    }
                )
        return super().to_internal_value(data)


class TriggerSerializer(StrictSerializer):
    parameters = serializers.DictField(
        required=False,
        default=dict,
        help_text="Values by parameter name, as JSON types: booleans true/false, numbers as numbers.",
    )
    execute = serializers.BooleanField(
        default=True, help_text="Queue an execution (default); false only creates the task."
    )
    overrides = TriggerOverridesSerializer(required=False, help_text="Task fields instead of the template's.")
    timeout_seconds = serializers.IntegerField(
        min_value=TIMEOUT_MIN, max_value=TIMEOUT_MAX, required=False, help_text="For this execution only."
    )


class TriggerResultSerializer(serializers.Serializer):
    task = TaskSerializer()
    execution = ExecutionSerializer(allow_null=True, help_text="null when execute is false.")
