"""``?ticket=`` on the event stream: a browser's ``EventSource`` cannot send a header, and an
API key never goes in a URL (it would land in access logs); a ticket is single-use and expires
within a minute, so one seen in a log is worthless."""

from __future__ import annotations

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts.models import ApiKey, User
from events.models import StreamTicket
from events.services import stream_ticket_redeem


class TicketAuthenticationFailed(exceptions.AuthenticationFailed):
    def __init__(self, detail: str) -> None:
        super().__init__(detail=detail, code="invalid_ticket")


class StreamTicketAuthentication(authentication.BaseAuthentication):
    """The ticket's principal: its user and the API key it was made with (whose scopes and
    project still apply, and which must still be valid). The ticket is used up here."""

    def authenticate(self, request: Request) -> tuple[User, ApiKey | None] | None:
        raw = request.query_params.get("ticket")
        if raw is None or request.method != "GET":  # never to make another ticket
            return None
        ticket = stream_ticket_redeem(raw)
        if ticket is None:
            raise TicketAuthenticationFailed("This stream ticket is unknown, already used or expired.")
        key = ticket.api_key
        if key is not None and (key.revoked or key.has_expired):
            raise TicketAuthenticationFailed("The API key this ticket was made with is no longer valid.")
        if not ticket.user.is_active:
            raise TicketAuthenticationFailed("The owner of this ticket is inactive.")
        request._stream_ticket = ticket  # type: ignore[attr-defined]
        return ticket.user, key


def ticket_of(request: Request) -> StreamTicket | None:
    """The ticket this request was authenticated with, if any."""
    return getattr(request, "_stream_ticket", None)
