"""Templates: a named, versioned recipe for tasks, with typed parameters.

A template lives in a project (its ``slug`` is unique there). Triggering it renders a task from
the patterns and defaults and, usually, queues an execution. Every change bumps ``version``;
tasks record the template and the version they came from, and keep a copy of the parameter
declarations (``Task.parameter_spec``) so a later edit, or deleting the template, never
changes how an existing task runs.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Project, ProjectScopedQuerySet
from core.validators import validate_name
from tasks.models import (
    AGENT_MAX,
    CONCURRENCY_MAX,
    CONCURRENCY_MIN,
    DESCRIPTION_MAX,
    NAME_MAX,
    PRIORITY_DEFAULT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    RETRIES_MAX,
    TIMEOUT_DEFAULT,
    TIMEOUT_MAX,
    TIMEOUT_MIN,
    ScriptType,
    validate_metadata,
    validate_not_blank,
    validate_script_size,
    validate_tags,
)
from templates_app import parameters as params


class ParameterType(models.TextChoices):
    STRING = "string", "String"
    INTEGER = "integer", "Integer"
    NUMBER = "number", "Number"
    BOOLEAN = "boolean", "Boolean"
    CHOICE = "choice", "Choice"


class TemplateQuerySet(ProjectScopedQuerySet):
    project_field = "project"

    def for_api(self) -> TemplateQuerySet:
        return self.select_related("created_by").prefetch_related("parameters")


class Template(models.Model):
    """A recipe for tasks: patterns, a script, defaults and typed parameters."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="templates")
    slug = models.SlugField(max_length=100, help_text="Unique in its project; usable instead of the id.")
    name = models.CharField(
        max_length=200, validators=[validate_not_blank, validate_name], help_text="What the template is."
    )
    description = models.TextField(blank=True, max_length=DESCRIPTION_MAX, help_text="What it is for.")
    name_pattern = models.CharField(
        max_length=NAME_MAX,
        validators=[validate_not_blank, validate_name],
        help_text="The task's name; {{ param }} allowed.",
    )
    description_pattern = models.TextField(
        blank=True, max_length=DESCRIPTION_MAX, help_text="The task's description; {{ param }} allowed."
    )
    script_type = models.CharField(max_length=10, choices=ScriptType.choices, blank=True)
    script = models.TextField(
        blank=True,
        validators=[validate_script_size],
        help_text="{{ param }} is replaced by the value quoted for the language. "
        "Empty: the tasks are work items for agents.",
    )
    timeout_seconds = models.PositiveIntegerField(
        default=TIMEOUT_DEFAULT, validators=[MinValueValidator(TIMEOUT_MIN), MaxValueValidator(TIMEOUT_MAX)]
    )
    priority = models.PositiveSmallIntegerField(
        default=PRIORITY_DEFAULT,
        validators=[MinValueValidator(PRIORITY_MIN), MaxValueValidator(PRIORITY_MAX)],
    )
    tags = models.JSONField(default=list, blank=True, validators=[validate_tags])
    metadata = models.JSONField(default=dict, blank=True, validators=[validate_metadata])
    agent = models.CharField(max_length=AGENT_MAX, blank=True)
    max_retries = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(RETRIES_MAX)])
    max_concurrency = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(CONCURRENCY_MIN), MaxValueValidator(CONCURRENCY_MAX)]
    )
    version = models.PositiveIntegerField(default=1, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = TemplateQuerySet.as_manager()

    class Meta:
        ordering = ("slug", "id")
        constraints = [
            models.UniqueConstraint(fields=("project", "slug"), name="template_slug_per_project"),
            models.CheckConstraint(
                condition=Q(priority__gte=PRIORITY_MIN, priority__lte=PRIORITY_MAX),
                name="template_priority_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.slug} (v{self.version})"

    def spec(self) -> list[dict[str, Any]]:
        """The parameter declarations as plain dicts, in order (what tasks keep a copy of)."""
        return [parameter.as_spec() for parameter in self.parameters.all()]


class TemplateParameter(models.Model):
    """One typed parameter of a template (a child row, so the admin edits them inline)."""

    template = models.ForeignKey(Template, on_delete=models.CASCADE, related_name="parameters")
    position = models.PositiveSmallIntegerField(default=0)
    name = models.CharField(max_length=64, help_text="A-Z a-z 0-9 _; reaches the script as PARAM_<NAME>.")
    type = models.CharField(max_length=10, choices=ParameterType.choices, default=ParameterType.STRING)
    required = models.BooleanField(default=False)
    default = models.JSONField(null=True, blank=True, help_text="JSON; not allowed for secrets.")
    choices = models.JSONField(null=True, blank=True, help_text="choice only: a JSON list of strings.")
    min = models.JSONField(null=True, blank=True, help_text="integer/number only.")
    max = models.JSONField(null=True, blank=True, help_text="integer/number only.")
    min_length = models.PositiveIntegerField(null=True, blank=True, help_text="string only.")
    max_length = models.PositiveIntegerField(null=True, blank=True, help_text="string only.")
    pattern = models.CharField(max_length=params.PATTERN_MAX, blank=True, help_text="string only: a regex.")
    secret = models.BooleanField(
        default=False, help_text="Never shown or stored in tasks; reaches the script through PARAM_<NAME>."
    )
    description = models.CharField(max_length=params.DESCRIPTION_MAX, blank=True)

    class Meta:
        ordering = ("template", "position", "id")
        constraints = [
            models.UniqueConstraint(fields=("template", "name"), name="template_parameter_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.type})"

    def as_spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "required": self.required,
            "default": self.default,
            "choices": self.choices,
            "min": self.min,
            "max": self.max,
            "min_length": self.min_length,
            "max_length": self.max_length,
            "pattern": self.pattern,
            "secret": self.secret,
            "description": self.description,
        }
