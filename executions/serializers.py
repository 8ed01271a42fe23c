from __future__ import annotations

import re
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.serializers import StrictSerializer, UserRefSerializer, user_ref
from executions.models import ErrorCode, Execution, ExecutionStatus, OutputChunk, Stream


class WorkerSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()


class ExecutionSerializer(serializers.ModelSerializer):
    task = serializers.UUIDField(source="task_id", read_only=True)
    project = serializers.UUIDField(source="project_id", read_only=True)
    triggered_by = serializers.SerializerMethodField()
    worker = WorkerSummarySerializer(read_only=True, allow_null=True)
    retry_of = serializers.UUIDField(source="retry_of_id", read_only=True, allow_null=True)
    cancel_requested = serializers.SerializerMethodField()
    # null when there is no error, like a task's result.error and webhooks' data.error.
    error = serializers.SerializerMethodField()
    error_detail = serializers.SerializerMethodField()

    class Meta:
        model = Execution
        fields = (
            "id",
            "task",
            "project",
            "number",
            "attempt",
            "retry_of",
            "status",
            "trigger",
            "triggered_by",
            "parameters",
            "script_type",
            "timeout_seconds",
            "queued_at",
            "started_at",
            "finished_at",
            "duration_ms",
            "exit_code",
            "error",
            "error_detail",
            "stdout_truncated",
            "stderr_truncated",
            "worker",
            "sandbox",
            "cancel_requested",
        )
        read_only_fields = fields

    @extend_schema_field(UserRefSerializer(allow_null=True))
    def get_triggered_by(self, execution: Execution) -> dict[str, Any] | None:
        return user_ref(execution.triggered_by)

    @extend_schema_field(serializers.ChoiceField(choices=ErrorCode.choices, allow_null=True))
    def get_error(self, execution: Execution) -> str | None:
        return execution.error or None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_error_detail(self, execution: Execution) -> str | None:
        return execution.error_detail or None

    def get_cancel_requested(self, execution: Execution) -> bool:
        return execution.cancel_requested_at is not None


class ExecutionDetailSerializer(ExecutionSerializer):
    script_content = serializers.CharField(
        source="script", read_only=True, help_text="The script as it ran (named like a task's)."
    )
    stdout = serializers.SerializerMethodField()
    stderr = serializers.SerializerMethodField()
    outputs = serializers.DictField(
        read_only=True,
        help_text="The JSON object the script wrote to $TASKFORGE_OUTPUTS_FILE (secrets masked), or {}.",
    )

    class Meta(ExecutionSerializer.Meta):
        fields = (*ExecutionSerializer.Meta.fields, "script_content", "stdout", "stderr", "outputs")
        read_only_fields = fields

    def _output(self, execution: Execution) -> dict[str, str]:
        cached = getattr(execution, "_output", None)
        if cached is None:
            parts: dict[str, list[str]] = {Stream.STDOUT: [], Stream.STDERR: []}
            for stream, data in execution.chunks.order_by("seq").values_list("stream", "data"):
                parts[stream].append(data)
            cached = {stream: "".join(texts) for stream, texts in parts.items()}
            execution._output = cached  # type: ignore[attr-defined]
        return cached

    def get_stdout(self, execution: Execution) -> str:
        return self._output(execution)[Stream.STDOUT]

    def get_stderr(self, execution: Execution) -> str:
        return self._output(execution)[Stream.STDERR]


PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class ExecuteSerializer(StrictSerializer):
    timeout_seconds = serializers.IntegerField(
        min_value=1, max_value=3600, required=False, help_text="Override the task's timeout for this run."
    )
    parameters = serializers.DictField(
        required=False, default=dict, help_text="Template parameters (validated against the task's template)."
    )

    def validate_parameters(self, value: dict[str, Any]) -> dict[str, Any]:
        # Each becomes the environment variable PARAM_<NAME>: a name the sandbox would refuse
        # reached the worker and failed there (schemathesis sent {"X-SCHEMATHESIS-…": …}).
        bad = [name for name in value if not PARAMETER_NAME.fullmatch(name)]
        if bad:
            raise serializers.ValidationError(
                f"Parameter names are letters, digits and _ (not starting with a digit), at most 64: "
                f"{', '.join(repr(name[:40]) for name in bad[:5])}.",
                code="invalid_parameter_name",
            )
        return value


class LogChunkSerializer(serializers.ModelSerializer):
    class Meta:
        model = OutputChunk
        fields = ("seq", "stream", "data")


class LogSerializer(serializers.Serializer):
    execution = serializers.UUIDField()
    status = serializers.ChoiceField(choices=ExecutionStatus.choices)
    finished = serializers.BooleanField()
    chunks = LogChunkSerializer(many=True)
    next_offset = serializers.IntegerField(help_text="Pass as ?offset= to get what follows.")


def log_payload(execution: Execution, offset: int, limit: int = 500) -> dict[str, Any]:
    chunks = list(execution.chunks.filter(seq__gt=offset).order_by("seq")[:limit])
    return {
        "execution": execution.pk,
        "status": execution.status,
        "finished": execution.is_final,
        "chunks": [{"seq": c.seq, "stream": c.stream, "data": c.data} for c in chunks],
        "next_offset": chunks[-1].seq if chunks else offset,
    }
