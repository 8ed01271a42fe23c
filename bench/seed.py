"""Seeding the benchmark database quickly: bulk inserts for people and keys, one
``INSERT … SELECT generate_series`` per batch of tasks on PostgreSQL (bulk_create elsewhere)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from accounts.models import ApiKey, Membership, Project, Role, User
from tasks.models import Status, Task

# Tags as in docs/performance.md: 30 % "ci,nightly", 35 % "ci", 35 % "deploy".
TAG_MIX = ((0.30, ["ci", "nightly"]), (0.65, ["ci"]), (1.0, ["deploy"]))
STATUSES = [s.value for s in Status]
SPAN_DAYS = 280
# Rate-limit override for the benchmark's keys, so repeated runs within the window (with
# Redis counters that outlive a run) never see a 429. The limiter still counts every request.
BENCH_RATE = "10000000/15m"


@dataclass(frozen=True)
class Account:
    user_id: int
    project_id: uuid.UUID
    key: str  # the raw API key

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Api-Key {self.key}"}


def settle(*tables: str) -> None:
    """Bring what was just seeded to the state autovacuum keeps a deployment's tables in:
    statistics for the planner and pages already vacuumed. Without statistics PostgreSQL
    plans for empty tables (a machine may run with autovacuum off, as this one's does): the
    list then joined 1,000 users by scanning them all for each row, 2.5 ms of its 2.9 ms
    query. Unvacuumed, the first reads of each freshly written page set its hint bits,
    writing it again, inside whichever request reads it first. (Inside a transaction, as in
    the test suite's run, VACUUM is not allowed: statistics only.)"""
    if connection.vendor != "postgresql":
        return
    command = "ANALYZE" if connection.in_atomic_block else "VACUUM (ANALYZE)"
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"{command} {connection.ops.quote_name(table)}")


def seed_accounts(count: int, *, prefix: str) -> list[Account]:
    """``count`` users, each with a personal project (admin) and a ``*`` API key."""
    accounts = _seed_accounts(count, prefix=prefix)
    settle(*(model._meta.db_table for model in (User, Project, Membership, ApiKey)))
    return accounts


@transaction.atomic
def _seed_accounts(count: int, *, prefix: str) -> list[Account]:
    users = User.objects.bulk_create(
        [User(username=f"{prefix}-{i}", password="!") for i in range(count)]  # noqa: S106 - unusable
    )
    if users and users[0].pk is None:  # pragma: no cover - SQLite < 3.35 returns no ids
        users = list(User.objects.filter(username__startswith=f"{prefix}-").order_by("id"))
    projects = Project.objects.bulk_create(
        [Project(name=f"{u.username} (personal)", personal_owner=u) for u in users]
    )
    Membership.objects.bulk_create(
        [Membership(project=p, user=u, role=Role.ADMIN) for u, p in zip(users, projects, strict=True)]
    )
    keys, raws = [], []
    for user in users:
        api_key = ApiKey(name="benchmark", owner=user, scopes=["*"], rate_limit=BENCH_RATE)
        raws.append(ApiKey.objects.assign_key(api_key))
        keys.append(api_key)
    ApiKey.objects.bulk_create(keys)
    return [Account(u.pk, p.pk, raw) for u, p, raw in zip(users, projects, raws, strict=True)]


def seed_tasks(
    accounts: list[Account],
    total: int,
    *,
    heavy_share: float = 0.2,
    batch: int = 50_000,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """``total`` tasks: ``heavy_share`` of them in the first account's project (a heavy tenant,
    for deep pages), the rest spread evenly; random status, tags and creation time."""
    every = max(1, round(1 / heavy_share)) if heavy_share else 0
    if connection.vendor == "postgresql":
        _seed_tasks_sql(accounts, total, every=every, batch=batch, on_progress=on_progress)
    else:
        _seed_tasks_orm(accounts, total, every=every, batch=min(batch, 5_000), on_progress=on_progress)
    settle(Task._meta.db_table)


SEED_SQL = """
WITH p AS (
    SELECT (ord - 1)::int AS n, pid, uid
    FROM unnest(%(projects)s::uuid[], %(users)s::bigint[]) WITH ORDINALITY AS t(pid, uid, ord)
), s AS (
    SELECT g, random() AS r, now() - random() * interval '{span} days' AS ts
    FROM generate_series(%(start)s::int, %(stop)s::int) AS g
)
INSERT INTO tasks_task (
    id, project_id, name, description, script_type, script_content, timeout_seconds, priority,
    tags, metadata, agent, required_labels, max_retries, max_concurrency, archived, status, parameters,
    parameter_spec, created_by_id, created_at, updated_at
)
SELECT gen_random_uuid(), p.pid, 'task ' || s.g, '', '', '', 60, s.g %% 11,
    CASE WHEN s.r < 0.30 THEN '["ci", "nightly"]'::jsonb
         WHEN s.r < 0.65 THEN '["ci"]'::jsonb ELSE '["deploy"]'::jsonb END,
    '{{}}'::jsonb, '', '{{}}'::jsonb, 0, 1, false,
    (ARRAY['pending', 'queued', 'running', 'completed', 'failed', 'cancelled'])[1 + s.g %% 6],
    '{{}}'::jsonb, '[]'::jsonb, p.uid, s.ts, s.ts
FROM s JOIN p ON p.n = CASE
    WHEN %(every)s > 0 AND s.g %% %(every)s = 0 THEN 0
    ELSE 1 + s.g %% %(others)s END
"""


def _seed_tasks_sql(
    accounts: list[Account],
    total: int,
    *,
    every: int,
    batch: int,
    on_progress: Callable[[int], None] | None,
) -> None:
    params = {
        "projects": [a.project_id for a in accounts],
        "users": [a.user_id for a in accounts],
        "every": every,
        "others": max(1, len(accounts) - 1),
    }
    sql = SEED_SQL.format(span=SPAN_DAYS)
    for start in range(0, total, batch):
        stop = min(total, start + batch) - 1
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, {**params, "start": start, "stop": stop})
        if on_progress:
            on_progress(stop - start + 1)


def _seed_tasks_orm(
    accounts: list[Account],
    total: int,
    *,
    every: int,
    batch: int,
    on_progress: Callable[[int], None] | None,
) -> None:
    rng = random.Random(8)  # noqa: S311 - sample data, not secrets
    now = timezone.now()
    others = max(1, len(accounts) - 1)
    for start in range(0, total, batch):
        rows = []
        for g in range(start, min(total, start + batch)):
            account = accounts[0 if every and g % every == 0 else 1 + g % others]
            r = rng.random()
            tags = next(tags for bound, tags in TAG_MIX if r < bound)
            created = now - timedelta(days=SPAN_DAYS * rng.random())
            rows.append(
                Task(
                    project_id=account.project_id,
                    name=f"task {g}",
                    priority=g % 11,
                    tags=tags,
                    status=STATUSES[g % 6],
                    created_by_id=account.user_id,
                    created_at=created,
                    updated_at=created,
                )
            )
        Task.objects.bulk_create(rows)
        if on_progress:
            on_progress(len(rows))
