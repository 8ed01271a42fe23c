"""Key rotation: every encrypted column of every installed model re-encrypted under the newest
key (``manage.py rotate_secrets_key``; the runbook is in docs/secrets.md).

The columns are found, not listed: every concrete ``core.crypto.EncryptedTextField`` (and its
subclasses) of every model ``django.apps.apps`` knows, so a new app's encrypted fields are
rotated without touching this module. Rows are read raw (the token, never the plain text) and
re-encrypted in batches, each batch in its own transaction under ``select_for_update``, so a
concurrent write to a row is never overwritten with an older value and an interrupted rotation
simply runs again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from django.apps import apps
from django.db import models, transaction
from django.db.models import TextField, Value
from django.db.models.functions import Cast

from core import crypto

Progress = Callable[[str, int, int], None]


def encrypted_columns() -> Iterator[tuple[type[models.Model], list[str]]]:
    """``(model, [field names])`` for every model with an encrypted column."""
    for model in apps.get_models():
        if model._meta.proxy or not model._meta.managed:
            continue
        names = [f.name for f in model._meta.concrete_fields if isinstance(f, crypto.EncryptedTextField)]
        if names:
            yield model, names


def _rotate_batch(model: type[models.Model], names: list[str], pks: list[object]) -> None:
    raw = {f"_raw_{name}": Cast(name, TextField()) for name in names}
    with transaction.atomic():
        rows = (
            model._default_manager.filter(pk__in=pks)
            .select_for_update()
            .order_by("pk")
            .annotate(**raw)
            .values_list("pk", *raw)
        )
        for pk, *tokens in rows:
            changed = {
                name: Value(_rotate(model, pk, token), output_field=TextField())
                for name, token in zip(names, tokens, strict=True)
                if token
            }
            if changed:
                model._default_manager.filter(pk=pk).update(**changed)


def _rotate(model: type[models.Model], pk: object, token: str) -> str:
    try:
        return crypto.rotate(token)
    except crypto.Undecryptable as exc:
        raise crypto.Undecryptable(
            f"{model._meta.label} {pk}: no key in TASKFORGE_SECRETS_KEYS opens it (put the old key "
            "back behind the new one and run the rotation again)"
        ) from exc


def rotate_all(*, batch_size: int = 500, progress: Progress | None = None) -> dict[str, int]:
    """Re-encrypt every stored value under the newest key; ``{model label: rows}``.
    ``progress(label, done, total)`` is called after each batch (and once for an empty table)."""
    counts: dict[str, int] = {}
    for model, names in encrypted_columns():
        label = model._meta.label
        pks = list(model._default_manager.order_by("pk").values_list("pk", flat=True))
        if progress is not None and not pks:
            progress(label, 0, 0)
        for start in range(0, len(pks), batch_size):
            _rotate_batch(model, names, pks[start : start + batch_size])
            if progress is not None:
                progress(label, min(start + batch_size, len(pks)), len(pks))
        counts[label] = len(pks)
    return counts
