"""Workflows: templates composed into a graph, and the runs of such a graph.

A ``WorkflowTemplate`` (project, slug, versioned like templates) declares typed parameters, the
``nodes`` (each runs a template with bound parameters) and the ``edges`` between them (taken on
the source's success, failure, or always). Its graph is checked as a whole at save
(``workflows.graph``). A ``WorkflowRun`` is one run of it: a snapshot of the graph and the
parameters it was given, and one ``WorkflowNode`` row per node, whose task does the work.
Which nodes start or are skipped is decided by ``workflows.engine`` under the run's row lock.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import Project, ProjectScopedQuerySet
from core.validators import validate_label_text, validate_name

NAME_MAX = 200
DESCRIPTION_MAX = 1000
NODES_MAX = 200
EDGES_MAX = 1000
ERROR_DETAIL_MAX = 1000
PARALLEL_MAX = 50
PARALLEL_DEFAULT = 10


class Join(models.TextChoices):
    ALL = "all", "All incoming conditions met"
    ANY = "any", "Any incoming condition met"


class EdgeOn(models.TextChoices):
    SUCCESS = "success", "On success"
    FAILURE = "failure", "On failure"
    ALWAYS = "always", "Always"


class RunStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


RUN_FINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class NodeStatus(models.TextChoices):
    WAITING = "waiting", "Waiting"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"
    CANCELLED = "cancelled", "Cancelled"


# A node whose task exists and has not ended (``running`` is read off the task).
NODE_ACTIVE = frozenset({NodeStatus.QUEUED, NodeStatus.RUNNING})
NODE_ENDED = frozenset({NodeStatus.SUCCEEDED, NodeStatus.FAILED, NodeStatus.SKIPPED, NodeStatus.CANCELLED})


class NodeError(models.TextChoices):
    """Why a node failed without its task failing (the task's own error says the rest)."""

    TASK_FAILED = "task_failed", "Its task failed"
    TASK_CANCELLED = "task_cancelled", "Its task was cancelled"
    BINDING_UNRESOLVED = "binding_unresolved", "A binding found no value"
    INVALID_BINDING = "invalid_binding", "A bound value does not fit the parameter"
    TEMPLATE_MISSING = "template_missing", "Its template was deleted"
    ITEMS_FAILED = "items_failed", "An item of its fan-out failed"
    TOO_MANY_ITEMS = "too_many_items", "Its for_each list is longer than the cap"


class WorkflowTemplateQuerySet(ProjectScopedQuerySet):
    project_field = "project"


class WorkflowTemplate(models.Model):
    """A graph of templates: typed parameters, nodes and edges (checked whole at save)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="workflow_templates", db_index=False
    )
    slug = models.SlugField(max_length=100, help_text="Unique in its project; usable instead of the id.")
    name = models.CharField(max_length=NAME_MAX, validators=[validate_name])
    description = models.TextField(blank=True, max_length=DESCRIPTION_MAX, validators=[validate_label_text])
    parameters = models.JSONField(default=list, blank=True, help_text="Declarations, as templates take them.")
    nodes = models.JSONField(
        default=list,
        help_text='[{"key", "template": <id or slug>, "parameters": {...}, "join": "all"|"any"}]',
    )
    edges = models.JSONField(
        default=list, blank=True, help_text='[{"from", "to", "on": "success"|"failure"|"always"}]'
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

    objects = WorkflowTemplateQuerySet.as_manager()

    class Meta:
        ordering = ("slug", "id")
        constraints = [
            models.UniqueConstraint(fields=("project", "slug"), name="workflow_template_slug_per_project"),
        ]

    def __str__(self) -> str:
        return f"{self.slug} (v{self.version})"


class WorkflowRunQuerySet(ProjectScopedQuerySet):
    project_field = "project"


class WorkflowRun(models.Model):
    """One run of a workflow template: the graph as it was, the parameters, and a status."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="workflow_runs", db_index=False
    )
    template = models.ForeignKey(
        WorkflowTemplate, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    template_version = models.PositiveIntegerField(editable=False)
    name = models.CharField(max_length=NAME_MAX, validators=[validate_name])
    # The parameters as given (secrets only as {"secret": NAME} references) and the graph as it
    # was when the run was made: a later change of the template does not change this run.
    parameters = models.JSONField(default=dict, blank=True, editable=False)
    parameter_spec = models.JSONField(default=list, blank=True, editable=False)
    edges = models.JSONField(default=list, blank=True, editable=False)
    status = models.CharField(
        max_length=10, choices=RunStatus.choices, default=RunStatus.PENDING, editable=False
    )
    error = models.CharField(max_length=300, blank=True, editable=False, help_text="Why it failed.")
    retries = models.PositiveIntegerField(default=0, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True, editable=False)
    paused_at = models.DateTimeField(null=True, blank=True, editable=False)
    finished_at = models.DateTimeField(null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = WorkflowRunQuerySet.as_manager()

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [models.Index(fields=("project", "-created_at"), name="workflow_run_project_recent")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_final(self) -> bool:
        return self.status in RUN_FINAL


class WorkflowNode(models.Model):
    """One node of a run: what it runs (template, bindings), its status, its task, its outputs."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="nodes")
    key = models.CharField(max_length=64)
    position = models.PositiveSmallIntegerField(default=0, help_text="Its place in a topological order.")
    template = models.ForeignKey(
        "templates_app.Template", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    template_name = models.CharField(max_length=200, blank=True, help_text="As it was when the run was made.")
    bindings = models.JSONField(default=dict, blank=True)
    join = models.CharField(max_length=3, choices=Join.choices, default=Join.ALL)
    # Fan-out: the node runs once per item of the list ``for_each`` names, at most
    # ``max_parallel`` at once; each item is a child row (``parent``, ``item_index``, ``item``).
    for_each = models.CharField(max_length=200, blank=True)
    max_parallel = models.PositiveSmallIntegerField(default=PARALLEL_DEFAULT)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="items")
    item_index = models.PositiveIntegerField(null=True, blank=True)
    item = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=NodeStatus.choices, default=NodeStatus.WAITING)
    task = models.ForeignKey(
        "tasks.Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="workflow_nodes"
    )
    outputs = models.JSONField(default=dict, blank=True)
    error = models.CharField(max_length=32, choices=NodeError.choices, blank=True)
    error_detail = models.TextField(blank=True, max_length=ERROR_DETAIL_MAX)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="How many times it started.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("run", "position")
        constraints = [models.UniqueConstraint(fields=("run", "key"), name="workflow_node_key_per_run")]

    def __str__(self) -> str:
        return self.key

    def shown_status(self) -> str:
        """``running`` once its task runs (read off the task; stored as ``queued``)."""
        if self.status == NodeStatus.QUEUED and self.task is not None and self.task.status == "running":
            return NodeStatus.RUNNING
        return self.status

    def about(self) -> dict[str, Any]:
        return {"workflow_id": str(self.run_id), "node": self.key}
