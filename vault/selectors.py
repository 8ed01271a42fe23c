"""Reads of project secrets that other apps make (names only: values leave only through
``vault.services.secret_refs_resolve``)."""

from __future__ import annotations

import uuid

from vault.models import Secret


def secret_names(project_id: uuid.UUID | str) -> list[str]:
    """The names of ``project_id``'s secrets, in order (the admin's run forms offer them)."""
    return list(Secret.objects.filter(project_id=project_id).order_by("name").values_list("name", flat=True))
