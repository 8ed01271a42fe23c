"""Every write about templates: create, update (bumps the version), delete, trigger.

The API, the admin and the ``trigger`` command call these and nothing else. A template is
checked as a whole before it is saved: its parameter declarations (each default obeying its
own rules), and every placeholder of its patterns and script (declared, not secret in the
patterns, and placed where its quoted value is safe).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import ApiKey, Project, User
from core.validators import is_uuid
from executions.models import Execution, Trigger
from executions.services import execution_enqueue
from tasks.models import Task
from tasks.services import task_create
from templates_app import parameters as params
from templates_app.models import Template, TemplateParameter
from vault.services import secret_refs_check

# Template fields a client may set (besides ``parameters``).
WRITABLE_FIELDS: tuple[str, ...] = (
    "slug",
    "name",
    "description",
    "name_pattern",
    "description_pattern",
    "script_type",
    "script",
    "timeout_seconds",
    "priority",
    "tags",
    "metadata",
    "agent",
    "max_retries",
    "max_concurrency",
)
# Task fields a trigger may override (the rest come from the template).
OVERRIDABLE_FIELDS: tuple[str, ...] = (
    "name",
    "description",
    "timeout_seconds",
    "priority",
    "tags",
    "metadata",
    "agent",
    "due_date",
    "estimated_hours",
    "max_retries",
    "max_concurrency",
    "depends_on",
)


def slugged_errors(obj: Any, noun: str, exclude: list[str]) -> list[tuple[str, str, str]]:
    """The field errors of ``obj`` (a model with ``project`` and ``slug``, unique together, like
    templates and workflow templates), ``exclude`` not checked; its slug must not look like an
    id (URLs take either) and must be free in the project (``noun`` names the kind)."""
    errors: list[tuple[str, str, str]] = []
    try:
        obj.full_clean(exclude=exclude, validate_constraints=False)
    except ValidationError as exc:
        for field, messages in exc.error_dict.items():
            for error in messages:
                message = error.message % error.params if error.params else error.message
                errors.append((field if field != "__all__" else "", error.code or "invalid", str(message)))
    if obj.slug and is_uuid(obj.slug):
        errors.append(("slug", "invalid", "A slug cannot look like an id (a UUID)."))
    elif (
        obj.slug
        and type(obj).objects.filter(project_id=obj.project_id, slug=obj.slug).exclude(pk=obj.pk).exists()
    ):
        errors.append(("slug", "unique", f"This project already has a {noun} {obj.slug!r}."))
    return errors


def slugged_save(obj: Any, noun: str) -> None:
    """Save ``obj`` (see ``slugged_errors``); a slug taken meanwhile is the same 400."""
    try:
        with transaction.atomic():
            obj.save()
    except IntegrityError:
        raise params.as_validation_error(
            [("slug", "unique", f"This project already has a {noun} {obj.slug!r}.")]
        ) from None


def template_errors(template: Template, spec: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Everything wrong with ``template`` and its declarations ``spec``, at once."""
    errors = slugged_errors(template, "template", exclude=["project"])
    spec_errors = params.validate_spec(spec)
    errors.extend(spec_errors)
    valid = [item for item in spec if isinstance(item, Mapping)]
    secret = {item["name"] for item in params.normalize_spec(valid) if item["secret"]}
    declared = {item.get("name") for item in valid}
    for field in ("name_pattern", "description_pattern"):
        text = getattr(template, field)
        for name in params.placeholders(text):
            if name not in declared:
                errors.append(
                    (
                        field,
                        "undeclared_placeholder",
                        f"{{{{ {name} }}}} is not a declared parameter "
                        f"(declared: {', '.join(sorted(declared)) or 'none'}).",
                    )
                )
            elif name in secret:
                errors.append(
                    (
                        field,
                        "secret_placeholder",
                        f"{{{{ {name} }}}} is secret: it cannot appear in the task.",
                    )
                )
    if spec_errors:  # where placeholders stand is checked against valid declarations only
        for name in params.placeholders(template.script):
            if name not in declared:
                errors.append(
                    (
                        "script_content",
                        "undeclared_placeholder",
                        f"{{{{ {name} }}}} is not a declared parameter.",
                    )
                )
    else:
        errors.extend(params.script_errors(template.script, template.script_type, spec, "script_content"))
    if template.script and not template.script_type:
        errors.append(("script_type", "required", "Required when script_content is given."))
    return errors


def _raise(errors: list[tuple[str, str, str]]) -> None:
    if errors:
        raise params.as_validation_error([(field or "__all__", code, msg) for field, code, msg in errors])


def _save_parameters(template: Template, spec: list[dict[str, Any]]) -> None:
    template.parameters.all().delete()
    TemplateParameter.objects.bulk_create(
        TemplateParameter(template=template, position=index, **item)
        for index, item in enumerate(params.normalize_spec(spec))
    )


@transaction.atomic
def template_create(
    *,
    project: Project,
    actor: User | None,
    api_key: ApiKey | None = None,
    parameters: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> Template:
    """Create a template in ``project`` (the caller checks the role there)."""
    unknown = set(fields) - set(WRITABLE_FIELDS)
    if unknown:
        raise TypeError(f"not writable template fields: {sorted(unknown)}")
    spec = list(parameters or [])
    template = Template(
        project=project, created_by=actor if actor and actor.is_authenticated else None, **fields
    )
    _raise(template_errors(template, spec))
    slugged_save(template, "template")
    _save_parameters(template, spec)
    return template


@transaction.atomic
def template_update(
    *,
    template: Template,
    actor: User | None,
    api_key: ApiKey | None = None,
    fields: Mapping[str, Any],
    parameters: list[dict[str, Any]] | None = None,
    replace: bool = False,
) -> Template:
    """Change a template; any change bumps ``version``. ``parameters`` replaces the whole list.

    With ``replace`` (PUT) the fields not given return to their defaults.
    """
    fields = dict(fields)
    unknown = set(fields) - set(WRITABLE_FIELDS)
    if unknown:
        raise TypeError(f"not writable template fields: {sorted(unknown)}")
    template = Template.objects.select_for_update().get(pk=template.pk)
    if replace:
        for name in WRITABLE_FIELDS:
            if name not in fields and name != "slug":
                fields[name] = Template._meta.get_field(name).get_default()
        parameters = [] if parameters is None else parameters
    current_spec = params.normalize_spec(template.spec())
    spec = current_spec if parameters is None else params.normalize_spec(parameters)
    changed = [name for name, value in fields.items() if getattr(template, name) != value]
    for name in changed:
        setattr(template, name, fields[name])
    spec_changed = spec != current_spec
    _raise(template_errors(template, spec))
    if changed or spec_changed:
        template.version += 1
        template.updated_at = timezone.now()
        slugged_save(template, "template")
        if spec_changed:
            _save_parameters(template, spec)
    return template


@transaction.atomic
def template_delete(*, template: Template, actor: User | None, api_key: ApiKey | None = None) -> None:
    """Delete a template. Its tasks stay (their ``template`` becomes null) and still run:
    they keep the script and the parameter declarations they were made with."""
    template.delete()


def template_trigger(
    *,
    template: Template,
    actor: User | None,
    api_key: ApiKey | None = None,
    parameters: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    execute: bool = True,
    timeout_seconds: int | None = None,
    trigger: str = Trigger.TEMPLATE,
    in_workflow: bool = False,
) -> tuple[Task, Execution | None]:
    """Make a task from ``template`` with ``parameters`` and, if ``execute``, queue its run.

    Every bad parameter is named in one ValidationError (``parameters.<name>``) and nothing is
    created (``in_workflow``: a workflow node's task, whose end the workflow hears of). The task
    keeps the template's script (placeholders and all) and a copy of its
    declarations; each execution renders the script with its own values.
    """
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(OVERRIDABLE_FIELDS)
    if unknown:
        raise TypeError(f"not overridable task fields: {sorted(unknown)}")
    spec = params.normalize_spec(template.spec())
    clean, errors = params.validate(spec, dict(parameters or {}))
    if errors:
        raise params.as_validation_error(errors)
    shown, secrets = params.split_secrets(spec, clean)
    secret_refs_check(template.project_id, secrets)  # 400 naming a secret the project lacks
    fields: dict[str, Any] = {
        "name": params.render_pattern(template.name_pattern, shown).strip(),
        "description": params.render_pattern(template.description_pattern, shown),
        "script_type": template.script_type,
        "script_content": template.script,
        "timeout_seconds": template.timeout_seconds,
        "priority": template.priority,
        "tags": list(template.tags),
        "metadata": dict(template.metadata),
        "agent": template.agent,
        "max_retries": template.max_retries,
        "max_concurrency": template.max_concurrency,
    }
    fields.update(overrides)
    with transaction.atomic():
        task = task_create(
            project=template.project,
            actor=actor,  # type: ignore[arg-type]
            api_key=api_key,
            template=template,
            template_version=template.version,
            parameters=shown,
            parameter_spec=spec,
            script_digest=params.script_digest(fields["script_type"], fields["script_content"], spec),
            in_workflow=in_workflow,
            **fields,
        )
        execution = None
        if execute:
            # The values were validated above, once: the run gets the rendered script.
            script, shown_run, secrets = params.render_run(
                spec=spec, script=task.script_content, script_type=task.script_type, clean=clean
            )
            execution = execution_enqueue(
                task=task,
                actor=actor,
                api_key=api_key,
                trigger=trigger,
                timeout_seconds=timeout_seconds,
                parameters=shown_run,
                secret_parameters=secrets,
                script=script,
            )
    return task, execution


def template_lookup(queryset: Any, ref: str, project: uuid.UUID | str | None = None) -> Template:
    """The template ``ref`` (an id or a slug) among ``queryset``; raises Template.DoesNotExist,
    or ``Template.MultipleObjectsReturned`` when a slug is in several projects and no
    ``project`` narrows it."""
    if is_uuid(ref):
        return queryset.get(pk=ref)
    matches = queryset.filter(slug=ref)
    if project is not None:
        matches = matches.filter(project_id=project)
    found = list(matches[:2])
    if not found:
        raise Template.DoesNotExist(ref)
    if len(found) > 1:
        raise Template.MultipleObjectsReturned(ref)
    return found[0]
