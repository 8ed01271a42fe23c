"""Server-Sent Events for the API's live streams (the execution log, the event stream).

``EventStreamRenderer`` lets a view negotiate ``text/event-stream`` (``Accept`` or
``?format=sse``); ``sse_frame`` formats one event; ``stream_response`` answers with a body that
gives the request's slot (``core.holding``) back when the server closes it — the client left,
or the stream ended — even if it was never iterated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter
from rest_framework import renderers

from core.holding import Slot

FORMAT_PARAM = OpenApiParameter(
    "format",
    {"type": "string", "enum": ["json", "sse"]},
    description="`sse`: the live stream (as `Accept: text/event-stream`); `json`: pages, whatever "
    "`Accept` says.",
)


def last_event_id_param(what: str, instead_of: str) -> OpenApiParameter:
    """The ``Last-Event-ID`` header of a stream that resumes after ``what``."""
    return OpenApiParameter(
        "Last-Event-ID",
        {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
        location=OpenApiParameter.HEADER,
        description=f"Resume after this {what} (what an EventSource sends when it reconnects: the "
        f"`id` of the last event it received). Takes precedence over `{instead_of}`.",
    )


class EventStreamRenderer(renderers.BaseRenderer):
    """``text/event-stream`` for a streaming action only. The action answers it with a stream;
    problems stay JSON."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data: Any, media_type: str | None = None, renderer_context: Any = None) -> bytes:
        # Only problem documents reach here (the stream itself is a StreamingHttpResponse);
        # they are sent as application/problem+json (core.errors sets the content type).
        return json.dumps(data).encode()


def sse_frame(name: str | None, data: Any, ident: int | None = None) -> str:
    """One event: ``id:`` when given, ``event:`` when named (else a plain ``message``), and
    ``data:`` as JSON."""
    head = f"id: {ident}\n" if ident is not None else ""
    if name is not None:
        head += f"event: {name}\n"
    return f"{head}data: {json.dumps(data)}\n\n"


class SlotStream:
    """A stream's body: gives the request's slot back when the server closes the response."""

    def __init__(self, events: Iterator[str], slot: Slot) -> None:
        self.events = events
        self.slot = slot

    def __iter__(self) -> Iterator[str]:
        return self.events

    def close(self) -> None:
        try:
            self.events.close()  # type: ignore[attr-defined]
        finally:
            self.slot.release()


def stream_response(events: Iterator[str], slot: Slot) -> StreamingHttpResponse:
    """``text/event-stream``, never cached nor buffered by a proxy (``X-Accel-Buffering: no``)."""
    response = StreamingHttpResponse(
        SlotStream(events, slot), content_type="text/event-stream; charset=utf-8"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
