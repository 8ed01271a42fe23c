"""Status badges for the admin: one helper and the colour tables, shared by the apps' admins.

Keyed by the status values (plain strings: ``tasks.models.Status`` and
``executions.models.ExecutionStatus`` are TextChoices of these), so this kit imports no app.
"""

from __future__ import annotations

from django.utils.html import format_html

GREY = "#6b7280"

# tasks.models.Status
STATUS_COLOURS: dict[str, str] = {
    "pending": GREY,
    "queued": "#2563eb",
    "running": "#d97706",
    "completed": "#16a34a",
    "failed": "#dc2626",
    "cancelled": "#374151",
}
# executions.models.ExecutionStatus
EXECUTION_COLOURS: dict[str, str] = {
    "queued": "#2563eb",
    "running": "#d97706",
    "succeeded": "#16a34a",
    "failed": "#dc2626",
    "timed_out": "#b45309",
    "cancelled": "#374151",
}
# agents.models.AgentState
AGENT_COLOURS: dict[str, str] = {
    "online": "#16a34a",
    "draining": "#d97706",
    "paused": "#2563eb",
    "offline": GREY,
}


def status_badge(status: str, colours: dict[str, str] = STATUS_COLOURS) -> str:
    return format_html(
        '<span style="background:{};color:#fff;padding:2px 8px;border-radius:10px;font-size:11px">{}</span>',
        colours.get(status, GREY),
        status,
    )
