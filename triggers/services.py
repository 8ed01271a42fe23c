"""Every write about inbound triggers: their configuration, their secrets, and each delivery.

The API, the admin and the hook endpoint call these. A delivery is taken in one transaction:
its row is inserted first (the unique (trigger, dedupe key) makes a concurrent or later retry
of the same delivery wait for it, then conflict), then the filters, the mapping and the
template's own trigger service run, and the row records the answer. A duplicate answers that
recorded answer and runs nothing.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from rest_framework.exceptions import APIException

from accounts.models import Project, User
from core.errors import Conflict, problem
from core.ratelimit import validate_rate
from events.models import EventType
from events.services import event_record
from executions.models import Trigger as RunTrigger
from templates_app import parameters as params
from templates_app.models import Template
from templates_app.services import template_trigger
from triggers import payload
from triggers.models import (
    DEDUPE_KEY_MAX,
    EVENT_MAX,
    TRIGGERS_PER_PROJECT_MAX,
    Auth,
    Delivery,
    Outcome,
    Trigger,
    generate_secret,
)
from triggers.verify import DEDUPE_HEADERS, EVENT_HEADERS, storable_headers
from vault.services import secret_ref_errors

WRITABLE_FIELDS: tuple[str, ...] = (
    "slug",
    "description",
    "enabled",
    "filters",
    "mapping",
    "dedupe_path",
    "max_body_bytes",
    "rate_limit",
)
IMMUTABLE_FIELDS: tuple[str, ...] = ("auth", "template")
PING_EVENT = "ping"


# --- configuration -------------------------------------------------------------------------------
def config_errors(trigger: Trigger) -> list[tuple[str, str, str]]:
    """Everything wrong with ``trigger``'s configuration, at once (``(field, code, message)``)."""
    errors: list[tuple[str, str, str]] = []
    try:
        trigger.full_clean(exclude=["project", "template", "secret"], validate_constraints=False)
    except ValidationError as exc:
        for name, messages in exc.error_dict.items():
            for error in messages:
                text = error.message % error.params if error.params else error.message
                errors.append((name, error.code or "invalid", str(text)))
    if trigger.template.project_id != trigger.project_id:
        errors.append(("template", "does_not_exist", "No template of this project has this id."))
    if (
        Trigger.objects.filter(project_id=trigger.project_id, slug=trigger.slug)
        .exclude(pk=trigger.pk)
        .exists()
    ):
        errors.append(("slug", "unique", f"This project already has a trigger {trigger.slug!r}."))
    if trigger.max_body_bytes > settings.TASKFORGE_MAX_BODY_BYTES:
        errors.append(
            (
                "max_body_bytes",
                "max_value",
                f"At most TASKFORGE_MAX_BODY_BYTES ({settings.TASKFORGE_MAX_BODY_BYTES}).",
            )
        )
    if trigger.rate_limit:
        try:
            validate_rate(trigger.rate_limit)
        except ValueError as exc:
            errors.append(("rate_limit", "invalid", str(exc)))
    if trigger.dedupe_path:
        errors.extend(payload.path_errors("dedupe_path", trigger.dedupe_path))
    errors.extend(payload.filter_errors(trigger.filters))
    problems = mapping_errors(trigger.mapping, trigger.template.spec())
    errors.extend(problems)
    if isinstance(trigger.mapping, Mapping):
        wrong = {field for field, _, _ in problems}
        sound = {name: source for name, source in trigger.mapping.items() if f"mapping.{name}" not in wrong}
        errors.extend(secret_ref_errors(trigger.project_id, sound, field="mapping"))
    return errors


def mapping_errors(mapping: Any, spec: list[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """Problems with a mapping for a template whose declarations are ``spec``.

    Each on ``mapping.<parameter>``. A secret parameter takes only a ``{"secret": "<name>"}``
    reference: a payload value (anyone who can call the URL controls it) or a literal (stored
    in the clear) never reaches it.
    """
    if not isinstance(mapping, Mapping):
        return [("mapping", "invalid", "An object: parameter name -> source.")]
    items = {item["name"]: item for item in params.normalize_spec(spec)}
    errors: list[tuple[str, str, str]] = []
    for name, source in mapping.items():
        at = f"mapping.{name}"
        item = items.get(name)
        if item is None:
            declared = ", ".join(items) or "none"
            errors.append((at, "unknown", f"Not a parameter of the template ({declared})."))
            continue
        problems = payload.source_errors(at, source)
        errors.extend(problems)
        if problems:
            continue
        reference = payload.is_secret_reference(source)
        if item["secret"] and not reference:
            errors.append(
                (
                    at,
                    "secret_parameter",
                    f"{name} is a secret parameter: map it to a project secret, "
                    '{"secret": "<name>"}, never to a payload value, header or literal.',
                )
            )
        elif reference and not item["secret"]:
            errors.append(
                (
                    at,
                    "not_secret",
                    f"{name} is not a secret parameter: a secret reference "
                    "would reveal the secret in the task.",
                )
            )
    return errors


def _raise(errors: list[tuple[str, str, str]]) -> None:
    if errors:
        raise params.as_validation_error(errors)


def _record(trigger: Trigger, type_: str, actor: User | None, **data: Any) -> None:
    event_record(
        type=type_,
        project=trigger.project_id,
        task=None,
        actor=actor,
        data={"trigger": str(trigger.pk), "slug": trigger.slug, **data},
    )


def trigger_create(
    *,
    project: Project,
    actor: User | None,
    template: Template,
    slug: str,
    auth: str = Auth.STANDARD,
    **fields: Any,
) -> tuple[Trigger, str]:
    """Create a trigger of ``template`` in ``project``; returns it and its secret (the only time
    the secret is handed out). The caller checks the actor's role in ``project``."""
    unknown = set(fields) - set(WRITABLE_FIELDS)
    if unknown:
        raise TypeError(f"not writable trigger fields: {sorted(unknown)}")
    if auth not in Auth.values:
        raise params.as_validation_error([("auth", "invalid_choice", f"One of {', '.join(Auth.values)}.")])
    trigger = Trigger(
        project=project,
        template=template,
        slug=slug,
        auth=auth,
        created_by=actor if actor is not None and actor.is_authenticated else None,
        secret=generate_secret(auth),
        **fields,
    )
    with transaction.atomic():
        # Lock the project row so two creates cannot both pass the per-project limit.
        Project.objects.select_for_update().filter(pk=project.pk).first()
        _raise(config_errors(trigger))
        if Trigger.objects.filter(project=project).count() >= TRIGGERS_PER_PROJECT_MAX:
            raise Conflict(
                f"A project may have at most {TRIGGERS_PER_PROJECT_MAX} triggers.", code="limit_reached"
            )
        trigger.save(force_insert=True)
        _record(trigger, EventType.TRIGGER_CREATED, actor, auth=trigger.auth, template=str(template.pk))
    return trigger, trigger.secret


@transaction.atomic
def trigger_update(*, trigger: Trigger, actor: User | None, fields: Mapping[str, Any]) -> Trigger:
    """Change a trigger's writable fields. ``auth`` and ``template`` never change (the sender
    is configured for one scheme and one secret format): make another trigger instead."""
    fields = dict(fields)
    trigger = Trigger.objects.select_for_update().select_related("template").get(pk=trigger.pk)
    current = {"auth": trigger.auth, "template": trigger.template_id}
    fixed = sorted(name for name in set(fields) & set(IMMUTABLE_FIELDS) if fields[name] != current[name])
    if fixed:
        raise params.as_validation_error(
            [(name, "immutable", "Cannot change; create another trigger instead.") for name in fixed]
        )
    for name in IMMUTABLE_FIELDS:
        fields.pop(name, None)
    unknown = set(fields) - set(WRITABLE_FIELDS)
    if unknown:
        raise TypeError(f"not writable trigger fields: {sorted(unknown)}")
    changed = [name for name, value in fields.items() if getattr(trigger, name) != value]
    if not changed:
        return trigger
    for name in changed:
        setattr(trigger, name, fields[name])
    _raise(config_errors(trigger))
    trigger.updated_at = timezone.now()
    try:
        with transaction.atomic():
            trigger.save(update_fields=[*changed, "updated_at"])
    except IntegrityError:  # a concurrent rename took the slug after the check above
        _raise([("slug", "unique", f"This project already has a trigger {trigger.slug!r}.")])
    _record(trigger, EventType.TRIGGER_UPDATED, actor, fields=sorted(changed))
    return trigger


@transaction.atomic
def trigger_rotate_secret(
    *, trigger: Trigger, actor: User | None, now: datetime | None = None
) -> tuple[Trigger, str]:
    """A new secret; the old one is still accepted for TASKFORGE_TRIGGER_ROTATION_GRACE
    seconds, so the sender can be switched without losing deliveries. Rotating again drops
    the older one at once (for a leaked secret)."""
    now = now or timezone.now()
    trigger = Trigger.objects.select_for_update().get(pk=trigger.pk)
    trigger.previous_secret = trigger.secret
    trigger.previous_secret_expires_at = now + timedelta(seconds=settings.TASKFORGE_TRIGGER_ROTATION_GRACE)
    trigger.secret = generate_secret(trigger.auth)
    trigger.updated_at = now
    trigger.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"])
    _record(trigger, EventType.TRIGGER_SECRET_ROTATED, actor)
    return trigger, trigger.secret


@transaction.atomic
def trigger_delete(*, trigger: Trigger, actor: User | None) -> None:
    """Delete a trigger and its delivery log; the tasks it made stay."""
    _record(trigger, EventType.TRIGGER_DELETED, actor)
    Trigger.objects.filter(pk=trigger.pk).delete()


# --- deliveries ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """What the hook endpoint answers: a status, a JSON body and whether it is a duplicate."""

    status: int
    body: dict[str, Any]
    duplicate: bool = False
    delivery: Delivery | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Incoming:
    """One delivery as received (or as stored, for a replay)."""

    body: bytes
    headers: Mapping[str, str]  # lower-cased names
    instance: str = ""  # the request path, for problem documents


def _storable(text: str) -> str:
    """``text`` without NUL, which PostgreSQL refuses in text columns."""
    return text.replace("\x00", "\ufffd")


def _text(body: bytes) -> str:
    return _storable(body.decode("utf-8", "replace"))


def _dedupe_key(trigger: Trigger, incoming: Incoming, document: Any) -> str:
    """The sender's id of this delivery, or a fresh one when it sends none (then every call runs)."""
    found: Any = None
    if trigger.dedupe_path and document is not None:
        found = payload.resolve(document, trigger.dedupe_path)
        found = None if found is payload.MISSING or found is None else payload.as_text(found)
    if not found and trigger.auth in DEDUPE_HEADERS:
        found = incoming.headers.get(DEDUPE_HEADERS[trigger.auth])
    if not found:
        return f"none:{uuid.uuid4()}"
    return _storable(str(found))[:DEDUPE_KEY_MAX]


def _event(trigger: Trigger, incoming: Incoming, document: Any) -> str:
    """The delivery's event type: the GitHub/GitLab header, else the value at ``event_path``."""
    if trigger.auth in EVENT_HEADERS:
        return _storable(incoming.headers.get(EVENT_HEADERS[trigger.auth], ""))[:EVENT_MAX]
    path = (trigger.filters or {}).get("event_path")
    if path and document is not None:
        found = payload.resolve(document, path)
        return "" if found is payload.MISSING else _storable(payload.as_text(found))[:EVENT_MAX]
    return ""


def _parse(body: bytes) -> tuple[Any, str | None]:
    """``(document, None)``, or ``(None, why)`` when the body is not a JSON object or array."""
    if not body.strip():
        return {}, None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None, "The body is not JSON (send Content-Type: application/json)."
    if not isinstance(document, dict | list):
        return None, "The body is JSON but not an object or an array."
    return document, None


def delivery_receive(*, trigger: Trigger, incoming: Incoming) -> Answer:
    """Take an authenticated delivery of ``trigger`` (the caller verified it and counted it).

    Once per (trigger, dedupe key): a duplicate answers the first answer and runs nothing. A
    GitHub delivery is also once per body: its signature covers the body only, so the same
    signed body under another delivery id is a copy (a captured delivery sent again).
    """
    return _take(
        trigger=trigger,
        incoming=incoming,
        body_sha256=hashlib.sha256(incoming.body).hexdigest() if trigger.auth == Auth.GITHUB else "",
    )


def delivery_replay(*, delivery: Delivery, actor: User | None) -> Answer:
    """Take a stored delivery again, as a new delivery marked as a replay of it: the trigger's
    current filters and mapping apply, and the run it starts is a ``hook_replay``. 409 when the
    trigger is disabled or the body was not kept whole."""
    trigger = Trigger.objects.select_related("template").get(pk=delivery.trigger_id)
    if not trigger.enabled:
        raise Conflict(
            "The trigger is disabled: enable it to replay its deliveries.", code="trigger_disabled"
        )
    if delivery.body_truncated:
        raise Conflict(
            "The body of this delivery was too long to keep whole: it cannot be replayed.",
            code="body_truncated",
        )
    incoming = Incoming(body=delivery.body.encode("utf-8"), headers=dict(delivery.headers))
    return _take(trigger=trigger, incoming=incoming, replay_of=delivery, actor=actor)


def _take(
    *,
    trigger: Trigger,
    incoming: Incoming,
    replay_of: Delivery | None = None,
    actor: User | None = None,
    body_sha256: str = "",
) -> Answer:
    """Record the delivery (once: see the module docstring), decide it, record the answer."""
    document, not_json = _parse(incoming.body)
    # A replay is a new delivery of its own, never a duplicate of the one it replays.
    dedupe_key = (
        f"replay:{uuid.uuid4()}" if replay_of is not None else _dedupe_key(trigger, incoming, document)
    )
    stored_max = settings.TASKFORGE_TRIGGER_STORED_BODY_MAX
    text = _text(incoming.body)
    delivery = Delivery(
        trigger=trigger,
        dedupe_key=dedupe_key,
        event=_event(trigger, incoming, document),
        headers=storable_headers(incoming.headers),
        body=text[:stored_max],
        body_truncated=len(text) > stored_max,
        body_sha256=body_sha256,
        outcome=Outcome.ACCEPTED,
        response_status=202,
        replay_of=replay_of,
        replayed_by=actor if replay_of is not None and actor is not None and actor.is_authenticated else None,
    )
    with transaction.atomic():
        try:
            with transaction.atomic():
                # On PostgreSQL a concurrent insert of the same key waits here for this
                # transaction, then conflicts: exactly one of them runs the template.
                delivery.save(force_insert=True)
        except IntegrityError:
            return _duplicate(trigger, dedupe_key, body_sha256)
        outcome, reason, status, body, task, execution = _decide(
            trigger, incoming, document, not_json, replay=replay_of is not None
        )
        if status >= 400:
            body = problem(status, reason, type_="validation-error" if status == 422 else None, **body)
            body["instance"] = incoming.instance or None
        delivery.outcome, delivery.reason, delivery.response_status = outcome, reason, status
        delivery.task_id = getattr(task, "pk", None)
        delivery.execution_id = getattr(execution, "pk", None)
        body = {**body, "delivery": str(delivery.pk)}
        if replay_of is not None:
            body["replay_of"] = str(replay_of.pk)
        delivery.response_body = body
        delivery.save(
            update_fields=["outcome", "reason", "response_status", "task", "execution", "response_body"]
        )
    return Answer(status=status, body=body, delivery=delivery)


def _duplicate(trigger: Trigger, dedupe_key: str, body_sha256: str) -> Answer:
    """The first answer to this delivery (the one with its key, or its body for GitHub)."""
    same = Q(dedupe_key=dedupe_key) | (Q(body_sha256=body_sha256) if body_sha256 else Q(pk__in=[]))
    first = Delivery.objects.filter(same, trigger=trigger).order_by("received_at", "id").first()
    if first is None:  # pragma: no cover - a conflict means a committed row exists
        raise Conflict("The first copy of this delivery went away; send it again.", code="delivery_gone")
    Delivery.objects.filter(pk=first.pk).update(duplicates=F("duplicates") + 1)
    return Answer(status=first.response_status, body=first.answer(), duplicate=True, delivery=first)


Decision = tuple[str, str, int, dict[str, Any], Any, Any]


def _decide(
    trigger: Trigger, incoming: Incoming, document: Any, not_json: str | None, *, replay: bool
) -> Decision:
    """``(outcome, reason, status, body, task, execution)`` for one new delivery."""
    if trigger.auth == Auth.GITHUB and incoming.headers.get("x-github-event") == PING_EVENT:
        return Outcome.IGNORED, PING_EVENT, 200, {"ignored": PING_EVENT}, None, None
    if not_json is not None:
        return Outcome.REJECTED, not_json, 400, {}, None, None
    event = _event(trigger, incoming, document)
    reason = payload.ignored_reason(trigger.filters or {}, event, document)
    if reason is not None:
        return Outcome.IGNORED, reason, 200, {"ignored": reason}, None, None
    return _run(trigger, incoming, document, replay=replay)


def _run(trigger: Trigger, incoming: Incoming, document: Any, *, replay: bool) -> Decision:
    """Map the payload to parameters and start the template through its own trigger service
    (the same validation as ``POST /templates/{id}/trigger``); every bad parameter is one 422
    naming the parameter and where its value came from, and nothing is created."""
    template = trigger.template
    spec = params.normalize_spec(template.spec())
    # The template may have changed since the mapping was saved (a parameter made secret,
    # or removed): checked again, so a payload value never reaches a secret parameter.
    stale = mapping_errors(trigger.mapping, spec)
    if stale:
        listed = [
            {"field": field, "code": code, "message": message, "source": _source_of(trigger.mapping, field)}
            for field, code, message in stale
        ]
        return Outcome.REJECTED, _summary(listed), 422, {"errors": listed}, None, None
    values, strings = payload.extract(trigger.mapping, document, incoming.headers)
    # Text (headers, literals) is typed as the command line types --param values; a text the
    # type refuses goes on as it is, so the template's validation reports it with the rest.
    coerced, coerce_errors = params.coerce_strings(spec, strings)
    try:
        with transaction.atomic():
            task, execution = template_trigger(
                template=template,
                actor=None,
                parameters={**values, **strings, **coerced},
                trigger=RunTrigger.HOOK_REPLAY if replay else RunTrigger.HOOK,
            )
    except ValidationError as exc:
        listed = _mapped_errors(exc, trigger.mapping, coerce_errors)
        return Outcome.REJECTED, _summary(listed), 422, {"errors": listed}, None, None
    except APIException as exc:
        return Outcome.REJECTED, str(exc.detail), exc.status_code, {}, None, None
    body = {"task": str(task.pk), "execution": str(execution.pk) if execution else None}
    return Outcome.ACCEPTED, "", 202, body, task, execution


def _summary(listed: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e['field']} ({e['source']}): {e['message']}" for e in listed[:5]) or "Invalid."


def _source_of(mapping: Mapping[str, Any], field: str) -> str:
    """Where the value of ``field`` (``parameters.<name>`` or ``mapping.<name>``) comes from."""
    source = mapping.get(field.split(".", 1)[-1])
    return payload.describe(source) if source is not None else "(not mapped)"


def _mapped_errors(
    exc: ValidationError, mapping: Mapping[str, Any], coerce_errors: list[tuple[str, str, str]]
) -> list[dict[str, Any]]:
    """The template's errors as ``{field, code, message, source}``; a text value the type
    refused keeps the command line's clearer message."""
    clearer = {field: (code, message) for field, code, message in coerce_errors}
    by_field = exc.error_dict if hasattr(exc, "error_dict") else {"parameters": exc.error_list}
    out = []
    for name, errors in by_field.items():
        for error in errors:
            code, message = clearer.get(name) or (error.code or "invalid", " ".join(error.messages))
            out.append({"field": name, "code": code, "message": message, "source": _source_of(mapping, name)})
    return out
