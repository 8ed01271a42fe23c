"""Every write to project secrets, and the two calls other apps make: checking references
(``secret_refs_check``, at save/trigger time) and resolving them (``secret_refs_resolve``, when
the worker claims a run).

A reference is ``{"secret": "<name>"}`` in place of a secret parameter's value. Nothing here
puts a value in an event, a log line or an error message.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import ApiKey, Project, User
from core.errors import Conflict, field_error
from events.models import EventType
from events.services import event_build, event_record, events_record
from vault.models import SECRETS_PER_PROJECT_MAX, Secret

REF_KEY = "secret"
WRITABLE_FIELDS: tuple[str, ...] = ("value", "description")


class SecretMissing(Exception):
    """A reference names a secret its project no longer has (deleted after the trigger)."""

    def __init__(self, parameter: str, name: str) -> None:
        self.parameter, self.name = parameter, name
        super().__init__(
            f"The secret parameter {parameter!r} names the project secret {name!r}, which no longer "
            "exists (deleted after the run was queued). Create it again, then re-run."
        )


# --- References ------------------------------------------------------------------------------------
def is_secret_ref(value: Any) -> bool:
    """Whether ``value`` is a reference: a JSON object with exactly one key, ``"secret"``."""
    return isinstance(value, Mapping) and set(value) == {REF_KEY}


def secret_refs(values: Mapping[str, Any]) -> dict[str, str]:
    """``{parameter: secret name}`` of the references among ``values`` (others ignored)."""
    return {param: value[REF_KEY] for param, value in values.items() if is_secret_ref(value)}


def secret_refs_check(
    project: Project | uuid.UUID, values: Mapping[str, Any], *, field: str = "parameters"
) -> dict[str, str]:
    """Check every reference among ``values`` (``{parameter: value or {"secret": name}}``):
    its name is a string naming a secret of ``project`` (another project's secret of the same
    name does not count). Returns ``{parameter: secret name}``; raises one Django
    ``ValidationError`` keyed ``"<field>.<parameter>"`` (a 400 through the API's handler) that
    names each parameter and secret that is not there. Values that are not references pass."""
    project_id = project.pk if isinstance(project, Project) else project
    errors: dict[str, list[ValidationError]] = {}
    refs: dict[str, str] = {}
    for param, value in values.items():
        if not isinstance(value, Mapping) or REF_KEY not in value:
            continue
        name = value[REF_KEY]
        if set(value) != {REF_KEY} or not isinstance(name, str) or not name:
            errors[f"{field}.{param}"] = [
                ValidationError(
                    'A secret reference is {"secret": "<name>"}, nothing else.', code="invalid_reference"
                )
            ]
            continue
        refs[param] = name
    found = (
        set()
        if not refs
        else set(
            Secret.objects.filter(project_id=project_id, name__in=set(refs.values())).values_list(
                "name", flat=True
            )
        )
    )
    for param, name in refs.items():
        if name not in found:
            errors[f"{field}.{param}"] = [
                ValidationError(
                    f"No secret named {name!r} in this project (parameter {param!r}).",
                    code="secret_not_found",
                )
            ]
    if errors:
        raise ValidationError(errors)
    return refs


def secret_ref_errors(
    project: Project | uuid.UUID, values: Mapping[str, Any], *, field: str = "parameters"
) -> list[tuple[str, str, str]]:
    """``secret_refs_check`` as ``(field, code, message)`` problems, for a save that reports
    every problem at once (a schedule's parameters, a trigger's mapping)."""
    try:
        secret_refs_check(project, values, field=field)
    except ValidationError as exc:
        found = exc.error_dict.items()
        return [(at, error.code or "invalid", error.messages[0]) for at, errs in found for error in errs]
    return []


@transaction.atomic
def secret_refs_resolve(
    *,
    project: Project | uuid.UUID,
    refs: Mapping[str, str],
    task: Any = None,
    execution_id: Any = None,
) -> dict[str, str]:
    """The values behind ``refs`` (``{parameter: secret name}``), for a run about to start.

    Records ``secret.used`` per secret (never the value) and its ``last_used_at``. Raises
    ``SecretMissing`` for the first reference whose secret is gone; then nothing is recorded.
    ``task``: the run's task (or its id), linked to the events.
    """
    if not refs:
        return {}
    project_id = project.pk if isinstance(project, Project) else project
    secrets = {s.name: s for s in Secret.objects.filter(project_id=project_id, name__in=set(refs.values()))}
    for param, name in refs.items():
        if name not in secrets:
            raise SecretMissing(param, name)
    now = timezone.now()
    Secret.objects.filter(pk__in=[s.pk for s in secrets.values()]).update(last_used_at=now)
    events_record(
        *(
            event_build(
                type=EventType.SECRET_USED,
                project=project_id,
                task=task,
                actor=None,
                data={
                    "secret_id": str(secret.pk),
                    "name": secret.name,
                    "parameters": sorted(p for p, n in refs.items() if n == secret.name),
                    "execution_id": str(execution_id) if execution_id is not None else None,
                },
            )
            for secret in secrets.values()
        )
    )
    return {param: secrets[name].value for param, name in refs.items()}


# --- Writes ----------------------------------------------------------------------------------------
def _event(secret: Secret, type_: str, actor: User | None, api_key: ApiKey | None, **data: Any) -> None:
    event_record(
        type=type_,
        project=secret.project_id,
        task=None,
        actor=actor,
        api_key=api_key,
        data={"secret_id": str(secret.pk), "name": secret.name, **data},
    )


def _save(secret: Secret, **kwargs: Any) -> None:
    """full_clean, then save; a name taken by a concurrent create is the same 400."""
    secret.full_clean()
    try:
        with transaction.atomic():
            secret.save(**kwargs)
    except IntegrityError:
        raise field_error(
            "name", f"This project already has a secret named {secret.name!r}.", "unique"
        ) from None


@transaction.atomic
def secret_create(
    *,
    project: Project,
    actor: User | None,
    name: str,
    value: str,
    description: str = "",
    api_key: ApiKey | None = None,
) -> Secret:
    """A new secret in ``project`` (the caller checks the actor's role there)."""
    Project.objects.select_for_update().filter(pk=project.pk).first()  # serialises the count
    if Secret.objects.filter(project=project).count() >= SECRETS_PER_PROJECT_MAX:
        raise Conflict(f"A project may have at most {SECRETS_PER_PROJECT_MAX} secrets.", code="limit_reached")
    if Secret.objects.filter(project=project, name=name).exists():
        raise field_error("name", f"This project already has a secret named {name!r}.", "unique")
    actor = actor if actor is not None and actor.is_authenticated else None
    secret = Secret(
        project=project, name=name, value=value, description=description, created_by=actor, updated_by=actor
    )
    _save(secret, force_insert=True)
    _event(secret, EventType.SECRET_CREATED, actor, api_key)
    return secret


@transaction.atomic
def secret_update(
    *, secret: Secret, actor: User | None, fields: Mapping[str, Any], api_key: ApiKey | None = None
) -> Secret:
    """Replace the value and/or the description. The name never changes (runs refer to it)."""
    unknown = set(fields) - set(WRITABLE_FIELDS)
    if unknown:
        raise TypeError(f"not writable secret fields: {sorted(unknown)}")
    secret = Secret.objects.select_for_update().get(pk=secret.pk)
    for name, value in fields.items():
        setattr(secret, name, value)
    secret.updated_by = actor if actor is not None and actor.is_authenticated else None
    secret.updated_at = timezone.now()
    _save(secret)
    # Which parts changed, never what they are (equal values encrypt differently anyway).
    _event(secret, EventType.SECRET_UPDATED, actor, api_key, changed=sorted(fields))
    return secret


@transaction.atomic
def secret_delete(*, secret: Secret, actor: User | None, api_key: ApiKey | None = None) -> None:
    """Delete it. Runs queued with a reference to it fail at claim, saying so."""
    _event(secret, EventType.SECRET_DELETED, actor, api_key)
    secret.delete()
