"""The id of the request being served, for problem documents and log records.

Set by ``core.middleware.RequestIDMiddleware``; read by ``core.errors`` and the logging filter.
Its own module so that errors and middleware both use it without importing each other.
"""

from __future__ import annotations

import contextvars
import logging

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def get_request_id() -> str | None:
    return _request_id.get()


def set_request_id(request_id: str) -> None:
    _request_id.set(request_id)


class RequestIDLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get() or "-"
        return True
