from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import renderers, status
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings

from accounts.api.base import TaskforgeViewSet
from accounts.models import ApiKey, Project
from core.holding import take_slot
from core.openapi import ProblemSerializer
from core.sse import FORMAT_PARAM, EventStreamRenderer, last_event_id_param, sse_frame, stream_response
from events.api.authentication import StreamTicketAuthentication, ticket_of
from events.api.serializers import (
    FILTER_FIELDS,
    MAX_EVENT_ID,
    EventPageSerializer,
    EventQuerySerializer,
    StreamFrameSerializer,
    TicketFilterSerializer,
    TicketSerializer,
    event_filter,
)
from events.models import Event
from events.selectors import (
    EventFilter,
    Position,
    events_ready_after,
    newest_event_id,
    newest_position,
    position_of,
)
from events.serializers import StreamEventSerializer
from events.services import stream_ticket_create
from events.stream import KEEP_ALIVE_SECONDS, RETRY_MS, Subscription, event_document, sse_events

STREAM_DESCRIPTION = f"""\
The outbox events of every project the caller may read, oldest first, in the **stream's order**:
the order their transactions became final (an event committed late never appears before one
already listed; ids mostly ascend but may not). Filters combine with AND. `after` is the cursor:
pass a page's `last_event_id` to get what follows; a page with `has_more: false` is the end for
now (poll again with the same cursor). A cursor whose event was pruned (older than retention)
answers **410** `cursor_expired`: re-read the state you follow, then list again without `after`.

With `Accept: text/event-stream` (or `?format=sse`): a live Server-Sent Events stream. It starts
with `retry: {RETRY_MS}`, then sends each event as soon as it is final: `id:` the event's id,
`data:` the event as JSON (no `event:` line: an EventSource's `message`). It resumes after
`Last-Event-ID` (what an EventSource sends when it reconnects) or `?after=`; without either it
starts with what happens next. A resume point older than retention first gets `event: reset`
(`id:` where the stream now continues; re-read your state). A comment every
{KEEP_ALIVE_SECONDS} s keeps it alive; after {settings.TASKFORGE_STREAM_MAX_SECONDS} s it ends with
`event: reconnect`. A stream counts against the caller's cap on long-lived requests (429 with
`Retry-After` beyond it). Browsers: open it with `?ticket=` from `POST /events/tickets`.
Needs the `event:read` scope."""
LAST_EVENT_ID_PARAM = last_event_id_param("event", "after")


class CursorExpired(APIException):
    status_code = status.HTTP_410_GONE
    default_code = "cursor_expired"

    def __init__(self, event_id: int) -> None:
        super().__init__(
            detail=f"Event {event_id} is older than the events kept (pruned): re-read the state you "
            "follow, then list again without `after`.",
            code="cursor_expired",
        )
        self.extra = {"after": event_id}


class EventViewSet(TaskforgeViewSet):
    """The outbox, read by clients: a list with a cursor, a live stream, stream tickets."""

    queryset = Event.objects.all()
    scope_object = "event"
    serializer_class = StreamEventSerializer
    pagination_class = None  # a cursor of its own (``after``), not pages
    authentication_classes = [
        *api_settings.DEFAULT_AUTHENTICATION_CLASSES[:1],
        StreamTicketAuthentication,
        *api_settings.DEFAULT_AUTHENTICATION_CLASSES[1:],
    ]

    def get_renderers(self) -> list[Any]:
        if self.action == "list":
            return [renderers.JSONRenderer(), EventStreamRenderer()]
        return super().get_renderers()

    def _streaming(self) -> bool:
        return self.request.accepted_renderer.format == EventStreamRenderer.format

    @extend_schema(
        parameters=[EventQuerySerializer, LAST_EVENT_ID_PARAM, FORMAT_PARAM],
        responses={
            (200, "application/json"): EventPageSerializer,
            (200, "text/event-stream"): OpenApiResponse(
                StreamFrameSerializer, description="Server-Sent Events."
            ),
            400: OpenApiResponse(ProblemSerializer, description="A filter or cursor that is not valid"),
            410: OpenApiResponse(ProblemSerializer, description="`after` was pruned (list only)"),
            429: OpenApiResponse(ProblemSerializer, description="Too many long-lived requests at once"),
        },
        description=STREAM_DESCRIPTION,
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        # A plain dict: in a QueryDict an empty value counts as absent (DRF's form handling), and
        # `?workflow=` must be a 400, not "no filter".
        query = EventQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        ticket = ticket_of(request)
        if ticket is not None:
            if not self._streaming():
                only = "A ticket opens the stream (Accept: text/event-stream) only."
                raise ValidationError({"ticket": [only]})
            given = [name for name in FILTER_FIELDS if name in request.query_params]
            if given:
                carried = "A ticket carries its filters: give them when you make it."
                raise ValidationError({given[0]: [carried]})
            filters = ticket.filters
        else:
            filters = query.validated_data
        self._check_project(filters.get("project"))
        cursor = self._cursor(request, query.validated_data.get("after"))
        if self._streaming():
            return self._stream(request, filters, cursor)
        return self._page(request, filters, cursor, query.validated_data["limit"])

    @staticmethod
    def _cursor(request: Request, after: int | None) -> tuple[str, int | None]:
        """The cursor and its name: the ``Last-Event-ID`` header (what an EventSource sends when
        it reconnects) wins over ``?after=``, on the stream and on pages alike."""
        header = request.headers.get("Last-Event-ID")
        if header is None:
            return "after", after
        raw = header.strip()
        if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_EVENT_ID:
            raise ValidationError({"Last-Event-ID": ["Must be a non-negative integer (an event id)."]})
        return "Last-Event-ID", int(raw)

    def _check_project(self, project: Any) -> None:
        """400 for a ``project`` filter naming a project the caller cannot read."""
        if project is not None and not self.visible(Project).filter(pk=project).exists():
            message = f"There is no project {project} you can read."
            raise ValidationError({"project": [message]}, code="does_not_exist")

    def _current_filter(self, filters: dict[str, Any]) -> EventFilter | None:
        """What the caller may see now (a stream re-reads it every keep-alive); None once its
        API key was revoked or expired, which ends the stream."""
        key = self.api_key
        if key is not None:
            key = ApiKey.objects.filter(pk=key.pk).first()
            if key is None or key.revoked or key.has_expired:
                return None
        return event_filter(filters, self.visible_project_ids())

    def _page(
        self, request: Request, filters: dict[str, Any], cursor: tuple[str, int | None], limit: int
    ) -> Response:
        name, after = cursor[0], cursor[1] or 0
        position = position_of(after)
        if position is None:
            raise self._unknown_or_expired(after, name)
        where = event_filter(filters, self.visible_project_ids()).q()
        read = events_ready_after(position, limit, where=where)
        results = [event_document(event) for event in read.ready]
        last = read.ready[-1].pk if read.ready else after
        url = request.build_absolute_uri(reverse("event-list"))
        params = request.query_params.copy()
        params["after"] = str(last)
        return Response(
            {
                "results": results,
                "last_event_id": last,
                "has_more": not read.complete,
                "next": f"{url}?{params.urlencode()}",
            }
        )

    def _unknown_or_expired(self, event_id: int, name: str) -> APIException:
        if event_id > newest_event_id():
            return ValidationError({name: [f"There is no event {event_id}."]}, code="does_not_exist")
        return CursorExpired(event_id)

    def _resume_point(self, cursor: tuple[str, int | None]) -> tuple[Position, list[str]]:
        """Where the stream starts (after the cursor, else now) and the frames it sends first
        (``reset`` when the cursor's event was pruned)."""
        name, after = cursor
        if after is None:
            return newest_position(), []
        position = position_of(after)
        if position is not None:
            return position, []
        problem = self._unknown_or_expired(after, name)
        if isinstance(problem, ValidationError):
            raise problem
        now = newest_position()
        reset = {"reason": "cursor_expired", "last_event_id": after}
        return now, [sse_frame("reset", reset, now[1])]

    def _stream(self, request: Request, filters: dict[str, Any], cursor: tuple[str, int | None]) -> Any:
        position, first = self._resume_point(cursor)
        lifetime = settings.TASKFORGE_STREAM_MAX_SECONDS
        slot = take_slot(request.user.pk, lifetime, "event streams")
        subscription = Subscription(event_filter(filters, self.visible_project_ids()), position)
        frames = sse_events(
            subscription, lifetime=lifetime, first=first, still_visible=lambda: self._current_filter(filters)
        )
        return stream_response(frames, slot)

    @extend_schema(
        request=TicketFilterSerializer,
        auth=[{"ApiKeyAuth": []}, {"cookieAuth": []}],  # never a ticket: it opens the stream only
        responses={
            201: TicketSerializer,
            400: OpenApiResponse(ProblemSerializer, description="A filter that is not valid"),
        },
        description="A ticket to open the event stream once within "
        f"{settings.TASKFORGE_EVENT_TICKET_SECONDS} s as `GET /events?ticket=…` (a browser's "
        "EventSource cannot send the API key, and a key never goes in a URL). The stream is the "
        "caller's, narrowed by the key that asked, with these filters. Needs `event:read`.",
    )
    @action(detail=False, methods=["post"], scope_action="read")
    def tickets(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        incoming = TicketFilterSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        filters = incoming.stored()
        self._check_project(filters.get("project"))
        ticket, raw = stream_ticket_create(user=request.user, api_key=self.api_key, filters=filters)
        url = request.build_absolute_uri(reverse("event-list"))
        return Response(
            TicketSerializer(
                {
                    "ticket": raw,
                    "expires_at": ticket.expires_at,
                    "filters": filters,
                    "stream_url": f"{url}?ticket={raw}",
                }
            ).data,
            status=status.HTTP_201_CREATED,
        )
