"""The queue's SQL: claim, lease, fence, output, finish, reap, and the writes they share.

Writes about a running execution are fenced by ``(status=running, claim_token=token)``: a
worker that lost its lease (and whose execution another worker already failed and retried)
changes nothing when it comes back. The API, admin and commands go through
``executions.services`` (enqueue, cancel, prune), which builds on the helpers here.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from accounts.models import ApiKey, User
from core import sql
from core.crypto import Undecryptable, Unreadable
from core.sql import lock_skipping_locked
from events.models import Event, EventType
from events.services import event_build
from executions.engine import wakeup
from executions.models import (
    FINAL_STATUSES,
    RETRYABLE_STATUSES,
    ErrorCode,
    Execution,
    ExecutionStatus,
    OutputChunk,
    Stream,
    Trigger,
    Worker,
)
from tasks.hooks import task_finished
from tasks.models import Status, Task
from tasks.status import task_follow_execution
from vault.services import SecretMissing, secret_refs, secret_refs_resolve

logger = logging.getLogger("taskforge.executions")

QUEUE_CHANNEL = "taskforge_queue"


DONE_CHANNEL = "taskforge_done"


# New output stored for a running execution (payload: its id): live-log streams wake on it.
OUTPUT_CHANNEL = "taskforge_output"


RESULT_TAIL_CHARS = 4096


# The hot path (claim, finish, the task following its execution) is written as plain SQL
# (core.sql): the same statements through the ORM cost the worker ~10 ms more CPU per run.
# What claiming and finishing read of the task they lock (not its script or metadata).
TASK_LOCK_FIELDS = (
    "id",
    "project",
    "status",
    "max_concurrency",
    "max_retries",
    "last_execution",
    "in_workflow",
)


LATEST_FIELDS = ("id", "task", "number", "status", "exit_code", "error", "outputs")


EVENT_FIELDS = ("project", "task", "type", "actor", "actor_key_prefix", "data", "created_at")


CHUNK_FIELDS = ("execution", "seq", "stream", "data", "created_at")


# How an execution's status shows on its task (SPEC §5).
TASK_STATUS_FOR = {
    ExecutionStatus.QUEUED: Status.QUEUED,
    ExecutionStatus.RUNNING: Status.RUNNING,
    ExecutionStatus.SUCCEEDED: Status.COMPLETED,
    ExecutionStatus.FAILED: Status.FAILED,
    ExecutionStatus.TIMED_OUT: Status.FAILED,
    ExecutionStatus.CANCELLED: Status.CANCELLED,
}


def notify(channel: str, payload: str = "") -> None:
    """A wake-up hint, delivered when the transaction commits: ``NOTIFY`` on PostgreSQL (sent
    inside the caller's transaction, it reaches listeners at commit and never if the
    transaction rolls back, with no extra round trip after the commit), a local socket
    otherwise (``executions.engine.wakeup``). Correctness never depends on it: workers also poll,
    waiters re-read.
    """
    wakeup.notify(channel, payload)


def _execution_event(
    execution: Execution, type_: str, *, actor: User | None = None, api_key: ApiKey | None = None, **data: Any
) -> Event:
    """The event, not stored yet: ``_sync_task`` stores it with the task's own in one INSERT."""
    return event_build(
        type=type_,
        project=execution.project_id,
        task=execution.task_id,
        actor=actor,
        api_key=api_key,
        data={
            "execution_id": str(execution.pk),
            "number": execution.number,
            "status": execution.status,
            **data,
        },
    )


# --- Enqueue ----------------------------------------------------------------------------------
def _next_number(task: Task) -> int:
    return (Execution.objects.filter(task=task).aggregate(n=Max("number"))["n"] or 0) + 1


# --- The task follows its latest execution ---------------------------------------------------
def _tails(execution: Execution) -> dict[str, str]:
    """The last RESULT_TAIL_CHARS of each stream, from its last 64 chunks (one statement)."""
    last = (
        'SELECT * FROM (SELECT "stream", "seq", "data" FROM "executions_outputchunk"'
        ' WHERE "execution_id" = %s AND "stream" = %s ORDER BY "seq" DESC LIMIT 64) AS {}'
    )
    execution_id = sql.values(OutputChunk, execution=execution.pk)[0]
    found = sql.rows(
        f"{last.format('o')} UNION ALL {last.format('e')}",
        [execution_id, Stream.STDOUT, execution_id, Stream.STDERR],
    )
    tails = {}
    for stream in Stream.values:
        chunks = sorted((seq, data) for name, seq, data in found if name == stream)
        tails[stream] = "".join(data for _, data in chunks)[-RESULT_TAIL_CHARS:]
    return tails


def _lock_task(task_id: Any) -> Task:
    """The task's row, locked (its TASK_LOCK_FIELDS; the rest deferred)."""
    found = sql.rows(
        f'SELECT {sql.columns(Task, TASK_LOCK_FIELDS)} FROM "tasks_task" WHERE "id" = %s{sql.for_update()}',
        sql.values(Task, id=task_id),
    )
    if not found:
        raise Task.DoesNotExist(f"task {task_id}")
    return sql.load(Task, TASK_LOCK_FIELDS, found[0])


def _store_events(events: list[Event]) -> None:
    """The events in one INSERT, in order (the outbox reads them by id)."""
    sql.insert(Event, EVENT_FIELDS, events)


def _sync_task(
    task: Task,
    changed: Execution,
    *,
    created: bool = False,
    actor: User | None = None,
    api_key: ApiKey | None = None,
    events: list[Event] | None = None,
    tails: Mapping[str, str] | None = None,
) -> None:
    """Make ``task.status`` (and ``result`` once finished) follow its latest execution, after
    ``changed`` was ``created`` or changed, and store ``events`` (the caller's, not stored
    yet) followed by the task's own in one INSERT. ``tails``: the last RESULT_TAIL_CHARS of
    ``changed``'s stdout and stderr when the caller has them (the worker keeps them as the
    output goes by); read from the stored output otherwise.

    The caller holds the task's row lock (or SQLite's write lock) and read ``task`` under it,
    so ``task.status`` is the current status; it is updated here too. Every execution is
    created under that lock by ``execution_enqueue`` or a retry, numbered last and recorded
    as the task's ``last_execution``: when that names another execution, a newer one leads
    the task and nothing of the task changes. Only a task whose ``last_execution`` is unset
    (the row was deleted) has its latest read.
    """
    events = list(events or [])
    latest: Execution | None = changed
    if created or task.last_execution_id == changed.pk:
        pass
    elif task.last_execution_id is not None:
        _store_events(events)
        return
    else:
        found = sql.rows(
            f'SELECT {sql.columns(Execution, LATEST_FIELDS)} FROM "executions_execution"'
            ' WHERE "task_id" = %s ORDER BY "number" DESC LIMIT 1',
            sql.values(Execution, task=task.pk),
        )
        latest = sql.load(Execution, LATEST_FIELDS, found[0]) if found else None
    if latest is None:
        _store_events(events)
        return
    result = None
    if latest.is_final:
        if tails is None or latest.pk != changed.pk:
            tails = _tails(latest)
        result = {
            "execution_id": str(latest.pk),
            "number": latest.number,
            "status": latest.status,
            "exit_code": latest.exit_code,
            "error": latest.error or None,
            "stdout_tail": tails[Stream.STDOUT],
            "stderr_tail": tails[Stream.STDERR],
            "outputs": latest.outputs,
        }
    before = task.status
    events += task_follow_execution(
        task=task,
        to_status=TASK_STATUS_FOR[ExecutionStatus(latest.status)],
        last_execution=latest,
        result=result,
        actor=actor,
        api_key=api_key,
    )
    _store_events(events)
    if task.status != before:  # a workflow node's end decides what runs next (tasks.hooks)
        task_finished(task, outputs=latest.outputs if result else None, actor=actor, api_key=api_key)


# --- Workers ------------------------------------------------------------------------------------
def worker_register(*, concurrency: int, sandbox: str, name: str | None = None) -> Worker:
    hostname = socket.gethostname()
    pid = os.getpid()
    return Worker.objects.create(
        name=name or f"{hostname}:{pid}", hostname=hostname, pid=pid, concurrency=concurrency, sandbox=sandbox
    )


def worker_heartbeat(*, worker: Worker, running: Mapping[uuid.UUID, uuid.UUID]) -> set[uuid.UUID]:
    """Renew the worker's heartbeat and the leases of its running executions.

    ``running`` maps execution id -> claim token. Returns the ids whose lease this worker no
    longer holds (another worker reaped them): the caller must stop those scripts.
    """
    now = timezone.now()
    Worker.objects.filter(pk=worker.pk).update(last_heartbeat_at=now)
    lease = now + timedelta(seconds=settings.TASKFORGE_EXECUTION_LEASE_SECONDS)
    lost: set[uuid.UUID] = set()
    for execution_id, token in running.items():
        renewed = Execution.objects.filter(
            pk=execution_id, status=ExecutionStatus.RUNNING, claim_token=token
        ).update(lease_expires_at=lease)
        if not renewed:
            lost.add(execution_id)
    return lost


def worker_stop(*, worker: Worker) -> None:
    Worker.objects.filter(pk=worker.pk).update(stopped_at=timezone.now())


def cancel_requested(execution_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these running executions someone asked to cancel (one query)."""
    ids = list(execution_ids)
    if not ids:
        return set()
    return set(
        Execution.objects.filter(pk__in=ids, cancel_requested_at__isnull=False).values_list("pk", flat=True)
    )


# --- Claim ------------------------------------------------------------------------------------
def _claim_if_startable(pk: Any, task: Task, worker: Worker, *, project_cap: int = 0) -> Execution | None:
    """Mark queued execution ``pk`` running for ``worker`` if its task may start another run:
    fewer running than its ``max_concurrency``, no unfinished dependency, and (``project_cap``
    above 0) fewer than ``project_cap`` running in its project. One UPDATE, sent after the
    task's (and project's) row lock is taken, so its conditions see every claim committed
    before (in PostgreSQL's read committed mode each statement takes a fresh snapshot; a
    condition in the locking statement itself would not). Returns the whole row, or None.
    """
    now = timezone.now()
    assigned, params = sql.assignments(
        Execution,
        status=ExecutionStatus.RUNNING,
        claim_token=uuid.uuid4(),
        worker=worker.pk,
        started_at=now,
        sandbox=worker.sandbox,
        lease_expires_at=now + timedelta(seconds=settings.TASKFORGE_EXECUTION_LEASE_SECONDS),
    )
    task_id = sql.values(Task, id=task.pk)[0]
    names = [field.name for field in Execution._meta.concrete_fields]
    capped, cap_params = "", []
    if project_cap:
        capped = (
            ' AND (SELECT COUNT(*) FROM "executions_execution" c'
            ' WHERE c."project_id" = %s AND c."status" = %s) < %s'
        )
        cap_params = [*sql.values(Execution, project=task.project_id), ExecutionStatus.RUNNING, project_cap]
    updated = sql.rows(
        f'UPDATE "executions_execution" SET {assigned} WHERE "id" = %s AND "status" = %s'
        ' AND (SELECT COUNT(*) FROM "executions_execution" r WHERE r."task_id" = %s AND r."status" = %s) < %s'
        ' AND NOT EXISTS(SELECT 1 FROM "tasks_task_depends_on" d INNER JOIN "tasks_task" t'
        ' ON t."id" = d."to_task_id" WHERE d."from_task_id" = %s AND t."status" <> %s)'
        f"{capped} RETURNING {sql.columns(Execution, names)}",
        [
            *params,
            pk,
            ExecutionStatus.QUEUED,
            task_id,
            ExecutionStatus.RUNNING,
            task.max_concurrency,
            task_id,
            Status.COMPLETED,
            *cap_params,
        ],
    )
    return sql.load(Execution, names, updated[0]) if updated else None


# The projects with queued work, found by a skip scan of the per-project queue index (one
# index probe per project, however long its queue), each with its running executions and
# when its head (the run it would start next) was queued. Read without locks: it only orders
# the projects; the runs themselves are locked by PROJECT_HEAD.
QUEUED_PROJECTS = (
    'WITH RECURSIVE p("project_id") AS ('
    ' SELECT (SELECT "project_id" FROM "executions_execution" WHERE "status" = %s'
    ' ORDER BY "project_id" LIMIT 1)'
    " UNION ALL"
    ' SELECT (SELECT e."project_id" FROM "executions_execution" e WHERE e."status" = %s'
    ' AND e."project_id" > p."project_id" ORDER BY e."project_id" LIMIT 1)'
    ' FROM p WHERE p."project_id" IS NOT NULL)'
    ' SELECT p."project_id",'
    ' (SELECT COUNT(*) FROM "executions_execution" r WHERE r."project_id" = p."project_id"'
    ' AND r."status" = %s),'
    ' (SELECT h."queued_at" FROM "executions_execution" h WHERE h."project_id" = p."project_id"'
    ' AND h."status" = %s ORDER BY h."priority" DESC, h."queued_at", h."id" LIMIT 1)'
    ' FROM p WHERE p."project_id" IS NOT NULL'
)


# One project's queue head, highest priority first, then oldest (ids as the database gives
# them: text on SQLite, passed back as parameters unchanged), with the project's running
# executions (counted after its row lock: exact).
PROJECT_HEAD = (
    'SELECT "id", "task_id", (SELECT COUNT(*) FROM "executions_execution" r'
    ' WHERE r."project_id" = %s AND r."status" = %s)'
    ' FROM "executions_execution" WHERE "project_id" = %s AND "status" = %s'
    ' ORDER BY "priority" DESC, "queued_at", "id" LIMIT %s'
)


def _read_in_index_order() -> None:
    if connection.vendor == "postgresql":
        # Read the queue in the order of its partial index, never by sorting every queued
        # row. A queue's planner statistics are often stale (a burst enqueued since the last
        # ANALYZE: "17 queued" for 20,000 real ones) and PostgreSQL then prefers a bitmap
        # scan and a sort of the whole queue: 7-21 ms per claim against 0.2 ms (measured,
        # docs/performance.md). SET LOCAL: for this transaction only.
        sql.execute("SET LOCAL enable_sort = off")


def _queued_projects() -> list[tuple[Any, int, Any]]:
    """``(project id, running, head queued_at)`` of every project with queued work."""
    queued, running = ExecutionStatus.QUEUED, ExecutionStatus.RUNNING
    return sql.rows(QUEUED_PROJECTS, [queued, queued, running, queued])


def _project_head(project_id: Any, limit: int) -> list[tuple[Any, Any, int]]:
    """``(id, task id, the project's running count)`` of the first ``limit`` queued
    executions of a project that nobody else is claiming, locked (SKIP LOCKED)."""
    return sql.rows(
        PROJECT_HEAD + sql.for_update(skip_locked=True),
        [project_id, ExecutionStatus.RUNNING, project_id, ExecutionStatus.QUEUED, limit],
    )


def _lock_project(project_id: Any, *, wait: bool) -> bool:
    """Lock the project's row for this claim; False if another claim holds it (``wait``:
    wait for it instead). ``FOR NO KEY UPDATE`` does not block the key-share lock that an
    enqueue's foreign key takes. SQLite: its IMMEDIATE transaction already excludes others."""
    if not connection.features.has_select_for_update:
        return True
    skip = "" if wait else " SKIP LOCKED"
    return bool(
        sql.rows(f'SELECT 1 FROM "accounts_project" WHERE "id" = %s FOR NO KEY UPDATE{skip}', [project_id])
    )


class _Claim:
    """One claim transaction: the projects it serves (their rows locked, in turn), their
    locked candidates, the task rows it locked, and what it claimed."""

    def __init__(self, worker: Worker, limit: int, scan: int) -> None:
        self.worker, self.limit, self.scan = worker, limit, scan
        self.cap: int = settings.TASKFORGE_PROJECT_MAX_RUNNING
        self.heads: dict[Any, list[tuple[Any, Any]]] = {}  # per project served: its candidates
        self.allowance: dict[Any, int] = {}  # per project served: how many more it may start
        self.tasks: dict[Any, Task] = {}
        self.skipped_tasks: set[Any] = set()
        self.claimed: list[tuple[Execution, Task]] = []

    def open(self, project_id: Any, *, wait: bool = False, lock: bool = True) -> int | None:
        """Serve ``project_id``: lock its row (None if another claim holds it), then read
        how many of its executions run now (after the lock: exact) and its candidates.
        ``lock=False``: the only project with work and no cap, nothing to order or count
        against others (one statement fewer in a single-tenant queue)."""
        if lock and not _lock_project(project_id, wait=wait):
            return None
        head = _project_head(project_id, max(self.scan, self.limit))
        running = head[0][2] if head else 0
        self.allowance[project_id] = max(0, self.cap - running) if self.cap else self.limit
        self.heads[project_id] = [(pk, task_id) for pk, task_id, _ in head]
        return running

    def take(self, project_id: Any) -> bool:
        """Claim the project's next startable candidate; False if it has none (left now)."""
        candidates = self.heads[project_id]
        while candidates and self.allowance[project_id] > 0:
            pk, task_id = candidates.pop(0)
            if task_id in self.skipped_tasks:
                continue  # keep a task's executions in order: the oldest waits first
            task = self.tasks.get(task_id)
            if task is None:
                task = self.tasks[task_id] = _lock_task(task_id)
            execution = _claim_if_startable(pk, task, self.worker, project_cap=self.cap)
            if execution is None:  # (the candidate itself is locked: it is still queued)
                self.skipped_tasks.add(task_id)
                continue
            self.claimed.append((execution, task))
            self.allowance[project_id] -= 1
            return True
        return False

    def take_turns(self) -> list[Any]:
        """Give free slots to projects in turn, the one with the fewest running first (ties:
        the one whose next run has waited longest); returns the projects skipped because
        another claim is serving them right now."""
        load = {pid: (running, head) for pid, running, head in _queued_projects()}
        lock = bool(self.cap) or len(load) > 1
        busy: list[Any] = []
        while len(self.claimed) < self.limit and load:
            project_id = min(load, key=lambda pid: (*load[pid], pid))
            running, head = load[project_id]
            if project_id not in self.heads:
                fresh = self.open(project_id, lock=lock)
                if fresh is None:
                    busy.append(project_id)
                    del load[project_id]
                else:  # the count read unlocked may be stale: choose again with this one
                    load[project_id] = (fresh, head)
                continue
            if not self.take(project_id):
                del load[project_id]  # nothing (more) this project may start now
                continue
            load[project_id] = (running + 1, head)
        return busy


def execution_claim_next(*, worker: Worker, scan: int = 20) -> Execution | None:
    """Claim the next queued execution this worker may start, or None."""
    claimed = execution_claim_batch(worker=worker, limit=1, scan=scan)
    return claimed[0] if claimed else None


@transaction.atomic
def execution_claim_batch(*, worker: Worker, limit: int, scan: int = 20) -> list[Execution]:
    """Claim up to ``limit`` queued executions this worker may start, in one transaction.

    Projects take turns: each free slot goes to the project with the fewest running
    executions (ties: the one whose next run has waited longest), never to one at
    ``TASKFORGE_PROJECT_MAX_RUNNING``; within a project, highest priority first, then oldest.
    A project is served under its row lock (taken SKIP LOCKED: a project another worker is
    serving is passed over for the next one), so the count it is chosen by, and capped by,
    is exact. Its candidates are locked with SKIP LOCKED; each candidate's task row is then
    locked to respect its ``max_concurrency`` (executions beyond it stay queued, in order)
    and its dependencies. Claiming several at once (a worker with free slots) costs one
    commit instead of one each. Candidates are read as ids (a script may be 1 MiB); only
    the claimed rows are read whole.
    """
    _read_in_index_order()
    while True:
        claimed, refused = _claim_once(worker, limit, scan)
        # A run failed at its claim (a project secret gone) is over: claim again in its place.
        if claimed or not refused:
            return claimed


def _claim_once(worker: Worker, limit: int, scan: int) -> tuple[list[Execution], int]:
    """``(claimed executions ready to run, how many were failed at the claim instead)``."""
    claim = _Claim(worker, limit, scan)
    busy = claim.take_turns()
    if not claim.claimed and not claim.heads and busy:
        # Every project with work is being served by another claim: wait for the first one's
        # lock (holding no project lock, this wait cannot deadlock), then choose again with
        # what that claim committed (read committed: each statement sees the latest).
        claim.open(busy[0], wait=True)
        claim.take_turns()
    executions, refused = [], 0
    for execution, task in claim.claimed:
        started = _execution_event(execution, EventType.EXECUTION_STARTED, worker=worker.name)
        _sync_task(task, execution, events=[started])
        if _resolve_secrets(execution):
            executions.append(execution)
        else:
            refused += 1
    return executions, refused


def _resolve_secrets(execution: Execution) -> bool:
    """Give the claimed ``execution`` its secret values (``execution.secret_values``): the ones
    passed with the trigger, and references to project secrets resolved now (vault records
    ``secret.used``). The stored references stay as they are (a retry resolves them again).
    False, with the execution failed ``secret_missing`` (never retried) and nothing else
    changed, when a secret is gone or no configured key opens it."""
    if isinstance(execution.secret_parameters, Unreadable):  # its key was dropped unrotated
        _finish(
            execution,
            status=ExecutionStatus.FAILED,
            claim_token=execution.claim_token,
            error=ErrorCode.SECRET_MISSING,
            error_detail=f"The secret values passed to this run: {execution.secret_parameters.reason}"[:500],
            retry=False,
        )
        return False
    refs = secret_refs(execution.secret_parameters)
    if not refs:  # the common case costs the claim no statement
        execution.secret_values = dict(execution.secret_parameters)
        return True
    try:
        resolved = secret_refs_resolve(
            project=execution.project_id, refs=refs, task=execution.task_id, execution_id=execution.pk
        )
    except (SecretMissing, Undecryptable) as exc:
        detail = str(exc) if isinstance(exc, SecretMissing) else f"A project secret it refers to: {exc}"
        _finish(
            execution,
            status=ExecutionStatus.FAILED,
            claim_token=execution.claim_token,
            error=ErrorCode.SECRET_MISSING,
            error_detail=detail[:500],
            retry=False,
        )
        return False
    execution.secret_values = {**execution.secret_parameters, **resolved}
    return True


# --- Output and finish ------------------------------------------------------------------------
@transaction.atomic
def execution_append_output(
    *, execution_id: uuid.UUID, claim_token: uuid.UUID, chunks: list[tuple[int, str, str]]
) -> bool:
    """Store ``(seq, stream, text)`` chunks; False (nothing stored) if the claim was lost."""
    if not _holds(execution_id, claim_token):
        return False
    _store_chunks(execution_id, chunks)
    notify(OUTPUT_CHANNEL, str(execution_id))  # delivered at commit: the chunks are visible
    return True


def _store_chunks(execution_id: uuid.UUID, chunks: list[tuple[int, str, str]]) -> None:
    # ignore_conflicts: a worker whose connection died after the commit stores the same
    # chunks again (same seq, same text) when it retries; the copy already there stands.
    sql.insert(
        OutputChunk,
        CHUNK_FIELDS,
        [
            OutputChunk(execution_id=execution_id, seq=seq, stream=stream, data=text)
            for seq, stream, text in chunks
        ],
        ignore_conflicts=True,
    )


def _holds(execution_id: uuid.UUID, claim_token: uuid.UUID) -> bool:
    """Whether the execution is running under ``claim_token`` (its row locked, if so)."""
    return bool(
        sql.rows(
            'SELECT 1 FROM "executions_execution" WHERE "id" = %s AND "status" = %s'
            f' AND "claim_token" = %s{sql.for_update()}',
            [
                *sql.values(Execution, id=execution_id),
                ExecutionStatus.RUNNING,
                *sql.values(Execution, claim_token=claim_token),
            ],
        )
    )


@transaction.atomic
def execution_finish(
    *,
    execution: Execution,
    claim_token: uuid.UUID,
    status: str,
    exit_code: int | None = None,
    error: str = "",
    error_detail: str = "",
    stdout_truncated: bool = False,
    stderr_truncated: bool = False,
    chunks: list[tuple[int, str, str]] | None = None,
    tails: Mapping[str, str] | None = None,
    outputs: Mapping[str, Any] | None = None,
) -> Execution | None:
    """Record how the run of ``execution`` (as claimed) ended, with its last output ``chunks``
    (stored in the same transaction: one commit for both); None, and nothing stored, if this
    worker no longer holds the claim. ``tails``: the last RESULT_TAIL_CHARS of each stream
    of all its output (``{"stdout": ..., "stderr": ...}``), for the task's result; read back
    from the stored output when not given. ``outputs``: what the script published (masked)."""
    assert status in FINAL_STATUSES
    return _finish(
        execution,
        status=status,
        claim_token=claim_token,
        exit_code=exit_code,
        error=error,
        error_detail=error_detail,
        stdout_truncated=stdout_truncated,
        stderr_truncated=stderr_truncated,
        chunks=chunks,
        tails=tails,
        outputs=dict(outputs or {}),
    )


def _finish(
    execution: Execution,
    *,
    status: str,
    claim_token: uuid.UUID | None = None,
    chunks: list[tuple[int, str, str]] | None = None,
    actor: User | None = None,
    api_key: ApiKey | None = None,
    tails: Mapping[str, str] | None = None,
    retry: bool = True,
    **fields: Any,
) -> Execution | None:
    """Finish ``execution`` with ``status`` (and ``fields``); returns it finished (a copy:
    ``execution`` is left as it was, so a caller retrying after a lost connection starts
    from the same values), or None if ``claim_token`` is given and no longer holds it.

    ``execution`` is the whole row: as read under its row lock (cancel, the reaper) or as
    claimed (the worker; then the UPDATE, fenced by ``claim_token``, takes the row lock). Its
    task is locked after it, in the order claims take them. ``chunks``: the run's last output.
    ``retry=False``: never retried (a missing secret stays missing).
    """
    now = timezone.now()
    fields = {
        "status": status,
        "finished_at": now,
        "duration_ms": (
            int((now - execution.started_at).total_seconds() * 1000) if execution.started_at else None
        ),
        "lease_expires_at": None,
        "secret_parameters": {},
        **fields,
    }
    assigned, params = sql.assignments(Execution, **fields)
    where, fence = '"status" = %s', [execution.status]
    if claim_token is not None:
        where += ' AND "claim_token" = %s'
        fence = [ExecutionStatus.RUNNING, *sql.values(Execution, claim_token=claim_token)]
    statement = f'UPDATE "executions_execution" SET {assigned} WHERE "id" = %s AND {where}'
    values = [*params, *sql.values(Execution, id=execution.pk), *fence]
    if connection.vendor == "postgresql":
        # The wake-up of those waiting on it (``?wait=``) rides on the UPDATE, one round trip
        # fewer (NOTIFY is delivered at commit, and never if the transaction rolls back).
        notified = sql.rows(
            f"{statement} RETURNING pg_notify(%s, %s)", [*values, DONE_CHANNEL, str(execution.pk)]
        )
        changed = len(notified)
    else:
        changed = sql.execute(statement, values)
    if not changed:
        return None
    if chunks:  # before the task's result reads the tails
        _store_chunks(execution.pk, chunks)
    # What a retry runs, taken before the secrets are wiped (the retry needs them too).
    source = {name: getattr(execution, name) for name in RETRY_COPIED}
    execution = copy.copy(execution)
    for name, value in fields.items():
        setattr(execution, name, value)
    task = _lock_task(execution.task_id)
    finished = _execution_event(
        execution,
        EventType.EXECUTION_FINISHED,
        actor=actor,
        api_key=api_key,
        exit_code=execution.exit_code,
        error=execution.error or None,
        duration_ms=execution.duration_ms,
        # Names only: the values can be large (and a webhook payload should not be).
        output_keys=sorted(execution.outputs),
    )
    if retry and status in RETRYABLE_STATUSES and execution.attempt <= task.max_retries:
        _queue_retry(execution, source, task, events=[finished])
    else:
        _sync_task(task, execution, actor=actor, api_key=api_key, events=[finished], tails=tails)
    return execution


def execution_fail_unstored(*, execution: Execution, claim_token: uuid.UUID, error_detail: str) -> bool:
    """Record that the worker could not store how ``execution`` ended (the database refused
    its output or its finish, for a reason a retry cannot cure): failed with ``worker_error``,
    never retried (the script did run; running it again would not store it either). False if
    this worker no longer holds the claim.

    First a minimal UPDATE of the execution alone (status, error, times; no output, no
    secrets), committed by itself so that nothing else can make it fail; then, best effort,
    the task follows and the events are stored, as for any finish.
    """
    now = timezone.now()
    started = execution.started_at
    fields: dict[str, Any] = {
        "status": ExecutionStatus.FAILED,
        "error": ErrorCode.WORKER_ERROR,
        "error_detail": error_detail[:500],
        "finished_at": now,
        "duration_ms": int((now - started).total_seconds() * 1000) if started else None,
        "lease_expires_at": None,
        "secret_parameters": {},
    }
    assigned, params = sql.assignments(Execution, **fields)
    values = [
        *params,
        *sql.values(Execution, id=execution.pk),
        ExecutionStatus.RUNNING,
        *sql.values(Execution, claim_token=claim_token),
    ]
    statement = (
        f'UPDATE "executions_execution" SET {assigned}'
        ' WHERE "id" = %s AND "status" = %s AND "claim_token" = %s'
    )
    with transaction.atomic():
        if connection.vendor == "postgresql":
            changed = len(
                sql.rows(
                    f"{statement} RETURNING pg_notify(%s, %s)", [*values, DONE_CHANNEL, str(execution.pk)]
                )
            )
        else:
            changed = sql.execute(statement, values)
    if not changed:
        return False
    failed = copy.copy(execution)
    for name, value in fields.items():
        setattr(failed, name, value)
    try:
        with transaction.atomic():
            finished = _execution_event(
                failed,
                EventType.EXECUTION_FINISHED,
                exit_code=None,
                error=ErrorCode.WORKER_ERROR,
                duration_ms=failed.duration_ms,
                output_keys=[],  # nothing of the run was stored
            )
            _sync_task(_lock_task(failed.task_id), failed, events=[finished])
    except Exception:
        logger.exception("execution %s: failed with worker_error, but its task was not updated", execution.pk)
    return True


# What a retry copies from the execution it retries.
RETRY_COPIED = ("parameters", "secret_parameters", "script_type", "script", "timeout_seconds", "priority")


def _queue_retry(
    execution: Execution, source: dict[str, Any], task: Task, *, events: list[Event]
) -> Execution:
    retry = Execution.objects.create(
        project_id=execution.project_id,
        task_id=execution.task_id,
        number=_next_number(task),
        attempt=execution.attempt + 1,
        retry_of=execution,
        trigger=Trigger.RETRY,
        **source,
    )
    queued = _execution_event(
        retry, EventType.EXECUTION_QUEUED, trigger=Trigger.RETRY, retry_of=str(execution.pk)
    )
    _sync_task(task, retry, created=True, events=[*events, queued])
    notify(QUEUE_CHANNEL, str(retry.pk))
    return retry


# --- Reaper -----------------------------------------------------------------------------------
def reap_lost_executions() -> int:
    """Fail running executions whose lease ran out (their worker died): error worker_lost,
    retried when the task allows. Safe to run from every worker at once."""
    reaped = 0
    for execution_id in Execution.objects.lease_expired().values_list("pk", flat=True)[:100]:
        with transaction.atomic():
            execution = lock_skipping_locked(
                Execution.objects.lease_expired().filter(pk=execution_id)
            ).first()
            if execution is None:
                continue
            logger.warning("Execution %s lost its worker (lease expired); marking it failed", execution.pk)
            _finish(
                execution,
                status=ExecutionStatus.FAILED,
                error=ErrorCode.WORKER_LOST,
                error_detail="The worker stopped renewing the lease (killed or lost).",
            )
            reaped += 1
    return reaped
