"""Hand-written SQL for the worker's hot path (claim, finish, the task following its run).

The ORM spends ~0.7 ms of Python per statement building and compiling a query (measured
on this project's 2-core machine: 14.6 ms of the worker's CPU for the 16 statements of a
claim + finish, against 4.3 ms for 11 statements sent as text). These helpers send plain
statements through Django's own cursor (so transactions, error wrapping and the query log
stay Django's) on either database: values are adapted by the model fields, rows are turned into model
instances by the fields' converters, exactly as a queryset would.

Only statements that both PostgreSQL and SQLite understand are written here; the one
PostgreSQL-only clause, the row lock, comes from :func:`for_update`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from django.db import connection, models


def rows(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run ``sql`` (``%s`` placeholders) and return its rows (none for a statement without)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description is not None else []


def execute(sql: str, params: Sequence[Any] = ()) -> int:
    """Run ``sql``; returns the number of rows it changed."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def for_update(*, skip_locked: bool = False) -> str:
    """`` FOR UPDATE [SKIP LOCKED]`` where the database has row locks; SQLite has none (its
    IMMEDIATE transaction holds the database's write lock from BEGIN)."""
    if not connection.features.has_select_for_update:
        return ""
    return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"


def table(model: type[models.Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def columns(model: type[models.Model], names: Sequence[str]) -> str:
    """The quoted columns of fields ``names`` (``"project"`` or ``"project_id"`` alike)."""
    return ", ".join(connection.ops.quote_name(model._meta.get_field(n).column) for n in names)


def values(model: type[models.Model], **fields: Any) -> list[Any]:
    """Python values of ``fields`` as the database takes them (a UUID as text on SQLite,
    JSON wrapped for jsonb on PostgreSQL), in the order given."""
    meta = model._meta
    return [
        meta.get_field(name).get_db_prep_save(
            value.pk if isinstance(value, models.Model) else value, connection
        )
        for name, value in fields.items()
    ]


def assignments(model: type[models.Model], **fields: Any) -> tuple[str, list[Any]]:
    """``"col" = %s, …`` and its parameters, for an UPDATE's SET clause."""
    quote = connection.ops.quote_name
    sql = ", ".join(f"{quote(model._meta.get_field(name).column)} = %s" for name in fields)
    return sql, values(model, **fields)


def insert(
    model: type[models.Model],
    names: Sequence[str],
    objs: Sequence[models.Model],
    *,
    ignore_conflicts: bool = False,
) -> None:
    """One multi-row INSERT of ``objs`` (fields ``names``), in order; nothing is read back.
    ``ignore_conflicts``: rows that would break a unique constraint are skipped."""
    if not objs:
        return
    fields = [model._meta.get_field(n) for n in names]
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    params = [
        field.get_db_prep_save(field.pre_save(obj, add=True), connection) for obj in objs for field in fields
    ]
    conflicts = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""
    rows_sql = ", ".join([row] * len(objs))
    execute(f"INSERT INTO {table(model)} ({columns(model, names)}) VALUES {rows_sql}{conflicts}", params)


def load[M: models.Model](model: type[M], names: Sequence[str], row: Sequence[Any]) -> M:
    """A model instance from a row of fields ``names`` (deferred: the other fields), with the
    values converted as a queryset would (UUIDs and JSON on SQLite, JSON on PostgreSQL)."""
    converters = _converters(model, tuple(names))
    by_attname = {
        model._meta.get_field(name).attname: convert(value) if convert else value
        for name, convert, value in zip(names, converters, row, strict=True)
    }
    # from_db takes the loaded values in the order of the model's fields.
    ordered = [f.attname for f in model._meta.concrete_fields if f.attname in by_attname]
    return model.from_db(connection.alias, ordered, [by_attname[a] for a in ordered])


@cache
def _converters_for(
    model: type[models.Model], names: tuple[str, ...], vendor: str
) -> list[Callable[[Any], Any] | None]:
    result: list[Callable[[Any], Any] | None] = []
    for name in names:
        field = model._meta.get_field(name)
        expression = field.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(expression) + field.get_db_converters(connection)
        if not found:
            result.append(None)
            continue

        def convert(value: Any, found: list[Any] = found, expression: Any = expression) -> Any:
            for converter in found:
                value = converter(value, expression, connection)
            return value

        result.append(convert)
    return result


def _converters(model: type[models.Model], names: tuple[str, ...]) -> list[Callable[[Any], Any] | None]:
    return _converters_for(model, names, connection.vendor)


def lock_skipping_locked(queryset: models.QuerySet) -> models.QuerySet:
    """``SELECT … FOR UPDATE SKIP LOCKED`` where the database has it (PostgreSQL).

    SQLite has no row locks; there the IMMEDIATE transaction already holds the write lock, so
    the pick and the conditional UPDATE after it cannot interleave with another claimer.
    """
    if connection.features.has_select_for_update_skip_locked:
        return queryset.select_for_update(skip_locked=True, of=("self",))
    return queryset
