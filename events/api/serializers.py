"""What a reader of the outbox may ask for: filters (list, stream, tickets) and the list's page."""

from __future__ import annotations

import uuid
from typing import Any

from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from core.serializers import StrictTypesMixin
from events.selectors import EventFilter
from events.serializers import StreamEventSerializer

GLOB_CHARS = 64
MAX_GLOBS = 20
_GLOB = rf"[a-z0-9_*.\-]{{1,{GLOB_CHARS}}}"
TYPES_RE = rf"^{_GLOB}(,{_GLOB}){{0,{MAX_GLOBS - 1}}}$"
FILTER_FIELDS = ("type", "project", "task", "execution", "agent", "workflow")
MAX_PAGE = 500
MAX_EVENT_ID = 2**63 - 1  # a bigint
DEFAULT_PAGE = 100


class EventFilterSerializer(serializers.Serializer):
    """The filters, all optional, combined with AND."""

    type = serializers.RegexField(
        TYPES_RE,
        required=False,
        error_messages={
            "invalid": "Must be event types or globs, comma-separated, each of lower-case letters, "
            f"digits, '_', '-', '.' and '*' (at most {MAX_GLOBS} of {GLOB_CHARS} characters)."
        },
        help_text="Event types, comma-separated; `*` matches any run of characters: "
        "`task.*`, `task.completed,execution.finished`, `*.failed`.",
    )
    project = serializers.UUIDField(required=False, help_text="Only this project's events.")
    task = serializers.UUIDField(required=False, help_text="Only the events of this task.")
    execution = serializers.UUIDField(
        required=False, help_text="Only the events of this execution (`data.execution_id`)."
    )
    agent = serializers.UUIDField(
        required=False, help_text="Only the events of this agent (`data.agent_id`)."
    )
    workflow = serializers.UUIDField(
        required=False, help_text="Only the events of this workflow (`data.workflow_id`)."
    )

    def validate_type(self, value: str) -> list[str]:
        return value.split(",")

    def stored(self) -> dict[str, Any]:
        """The validated filters as JSON (what a ticket keeps)."""
        return {
            name: value if isinstance(value, list) else str(value)
            for name, value in self.validated_data.items()
            if name in FILTER_FIELDS
        }


def event_filter(filters: dict[str, Any], projects: list[uuid.UUID] | None) -> EventFilter:
    """An ``EventFilter`` from validated (or a ticket's stored) filters, within ``projects``
    (None: every project)."""

    def value(name: str) -> str | None:
        return str(filters[name]) if filters.get(name) is not None else None

    project, task = value("project"), value("task")
    return EventFilter(
        projects=frozenset(projects) if projects is not None else None,
        types=tuple(filters.get("type") or ()),
        project=uuid.UUID(project) if project else None,
        task=uuid.UUID(task) if task else None,
        execution=value("execution"),
        agent=value("agent"),
        workflow=value("workflow"),
    )


class TicketFilterSerializer(StrictTypesMixin, EventFilterSerializer):
    """The filters a ticket keeps, as a JSON body: each of its JSON type (no number for a type)."""


class EventQuerySerializer(EventFilterSerializer):
    after = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_EVENT_ID,
        help_text="The cursor: events after this event id, in the stream's order (a page's "
        "`last_event_id`, an SSE event's `id`); 0 = from the oldest kept. `Last-Event-ID` wins "
        "over it on the stream.",
    )
    limit = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_PAGE,
        default=DEFAULT_PAGE,
        help_text="Events per page (list).",
    )
    ticket = serializers.CharField(required=False, help_text="A stream ticket (`POST /events/tickets`).")


class TicketSerializer(serializers.Serializer):
    ticket = serializers.CharField(help_text="Pass as `?ticket=` to open the stream once.")
    expires_at = serializers.DateTimeField()
    filters = serializers.DictField(help_text="The filters the stream will apply.")
    stream_url = serializers.CharField(help_text="The stream's URL with the ticket.")


@extend_schema_serializer(many=False)  # the list's answer is one page, not an array
class EventPageSerializer(serializers.Serializer):
    results = StreamEventSerializer(many=True)
    last_event_id = serializers.IntegerField(help_text="The cursor for the next page (`after`).")
    has_more = serializers.BooleanField(help_text="More events are ready now: ask again at once.")
    next = serializers.CharField(help_text="The next page's URL (the same cursor when nothing is new).")


@extend_schema_serializer(many=False)  # each Server-Sent Event of the stream
class StreamFrameSerializer(serializers.Serializer):
    """One Server-Sent Event: an event (no ``event`` field, so ``message``; ``id`` its id,
    ``data`` the event as JSON); ``reset`` (``data`` ``{"reason", "last_event_id"}``: the
    resume point was pruned); ``reconnect`` (``data`` ``{"last_event_id", "after_seconds"}``,
    then the stream closes)."""

    event = serializers.ChoiceField(choices=["message", "reset", "reconnect"], required=False)
    id = serializers.RegexField(r"^[0-9]+$", required=False)
    data = serializers.CharField(help_text="A JSON object.")
    retry = serializers.IntegerField(required=False)
