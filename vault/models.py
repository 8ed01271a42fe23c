"""Project secrets: named credentials that runs receive without a caller passing them.

A ``Secret`` belongs to a project; its name is an environment-variable name, unique in the
project; its value is kept encrypted (``core.crypto.EncryptedTextField``) and is write-only:
no API answer, admin page, event, log line or error shows it after it is set. A template's
secret parameter names one with ``{"secret": "<name>"}``; the worker resolves the reference
when it claims the run (``vault.services.secret_refs_resolve``). See docs/secrets.md.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from accounts.models import Project, ProjectScopedQuerySet
from core.crypto import EncryptedTextField
from core.validators import validate_label_text

NAME_MAX = 64
DESCRIPTION_MAX = 1000
VALUE_MAX_CHARS = 32 * 1024
SECRETS_PER_PROJECT_MAX = 200
validate_secret_name = RegexValidator(
    r"^[A-Za-z_][A-Za-z0-9_]*\Z",
    "A letter or underscore, then letters, digits and underscores (an environment variable name).",
    code="invalid_name",
)


class SecretQuerySet(ProjectScopedQuerySet):
    project_field = "project"


class Secret(models.Model):
    """A project's named credential. The value is encrypted at rest and never rendered."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="secrets", db_index=False)
    name = models.CharField(max_length=NAME_MAX, validators=[validate_secret_name])
    value = EncryptedTextField(max_length=VALUE_MAX_CHARS)
    description = models.TextField(blank=True, max_length=DESCRIPTION_MAX, validators=[validate_label_text])
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = SecretQuerySet.as_manager()

    class Meta:
        ordering = ("project", "name")
        constraints = [models.UniqueConstraint(fields=("project", "name"), name="secret_name_per_project")]

    def __str__(self) -> str:
        return self.name
