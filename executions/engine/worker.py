"""The worker: claims queued executions and runs their scripts in the sandbox.

One process runs ``concurrency`` scripts at once, each in one of ``concurrency`` long-lived run
threads (each keeps its database connection from one script to the next). Besides those:

- the main loop claims work whenever a slot is free, woken by ``LISTEN/NOTIFY`` on
  PostgreSQL, by a local Unix socket that enqueues poke on SQLite (``executions.engine.wakeup``; so
  a queued execution starts within milliseconds either way) and by a poll timer (the
  safety net everywhere: a wake-up is a hint);
- a housekeeping thread stores buffered output as soon as a script prints (at most one store
  per run every OUTPUT_COALESCE seconds, so a burst becomes one chunk; the store NOTIFYs live-log
  streams), reads cancel requests twice a second,
  and every third of the lease renews the leases and the worker's heartbeat; every few
  seconds it reaps executions whose worker died and agent claims whose lease expired.

On SIGTERM/SIGINT the worker stops claiming, lets running scripts finish within ``grace``
seconds, then kills them and marks them failed/worker_shutdown (retried when allowed).

The database may go away under a running worker (PostgreSQL restarted, a failover, a dropped
connection): the worker does not exit. Every loop catches the error, drops the broken
connection and tries again; a script's output stays buffered until it can be stored, and how
a script ended is written again until it lands or the lease runs out (then the reaper fails it
``worker_lost`` and retries it, as for a dead worker). A script that succeeded during a short
outage is recorded as succeeded, not failed with a "worker error".
"""

from __future__ import annotations

import codecs
import json
import logging
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection, connections

from accounts.idempotency import prune as prune_idempotency_keys
from core.secrets import SecretMasker
from executions.engine import queue as execution_queue
from executions.engine import wakeup
from executions.engine.jobs import WEBHOOK_DELIVERY, Job, registered_jobs
from executions.engine.sandbox import (
    RunResult,
    SandboxConfig,
    describe_isolation,
    finish_cleanup,
    output_text,
    reaping_problem,
    run_script,
)
from executions.engine.sandbox.config import SURROGATES_RE
from executions.models import ErrorCode, Execution, ExecutionStatus, Worker
from tasks.services import reap_expired_claims

logger = logging.getLogger("taskforge.worker")

FLUSH_INTERVAL = 0.2
# Output is stored as soon as it arrives unless the last store was less than this ago (then
# at that point): live logs see a line within tens of milliseconds, a burst costs one store.
OUTPUT_COALESCE = 0.02
CANCEL_POLL_INTERVAL = 0.5
REAP_INTERVAL = 5.0
PRUNE_INTERVAL = 300.0
FLUSH_BYTES = 64 * 1024
# A lost connection (server restarting, failover): what a retry can cure. psycopg's own
# error too: the LISTEN connections are psycopg connections outside Django.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError)
try:
    import psycopg

    CONNECTION_ERRORS += (psycopg.OperationalError, psycopg.InterfaceError)
except ImportError:  # pragma: no cover - psycopg is a dependency; SQLite-only installs may lack it
    pass
RECONNECT_BACKOFF_MAX = 2.0

T = TypeVar("T")


@dataclass
class Run:
    """A script being run by this worker, and what the housekeeping thread knows of it."""

    execution: Execution
    token: uuid.UUID
    stop_reason: str | None = None  # "cancelled" | "worker_shutdown" | "lease_lost"
    seq: int = 0
    pending: list[tuple[int, str, str]] = field(default_factory=list)
    pending_bytes: int = 0
    # Set when storing this run's output failed for a reason other than a lost connection
    # (the database refused it): housekeeping stops retrying it, the finish tries once more.
    store_failed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Held while chunks are taken and stored, so the final flush (before the finish is
    # recorded) waits for a housekeeping flush in progress: no chunk can land after the
    # finish, where the fence would reject it.
    flush_lock: threading.Lock = field(default_factory=threading.Lock)
    decoders: dict[str, Any] = field(
        default_factory=lambda: {
            "stdout": codecs.getincrementaldecoder("utf-8")(errors="replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")(errors="replace"),
        }
    )

    # The end of each stream, for the task's result (the finish need not read it back).
    tails: dict[str, str] = field(default_factory=lambda: {"stdout": "", "stderr": ""})
    # Set when output arrives: wakes the housekeeping thread to store it (WorkerProcess sets it).
    output_ready: threading.Event | None = None
    # One per stream: the secret values this run received become *** before anything is stored
    # (chunks, and so the live log; the tails, and so the task's result and webhook payloads).
    maskers: dict[str, SecretMasker] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = [as_env_value(v) for v in (self.execution.secret_values or {}).values()]
        self.maskers = {stream: SecretMasker(values) for stream in ("stdout", "stderr")}

    def mask(self, text: str) -> str:
        """``text`` (an error detail) with this run's secret values masked."""
        return self.maskers["stdout"].mask(text)

    def on_output(self, stream: str, data: bytes | str) -> None:
        text = output_text(data, None if isinstance(data, str) else self.decoders[stream])
        if not text:
            return
        with self.lock:
            self._add(stream, self.maskers[stream].feed(text))
        if self.output_ready is not None:
            self.output_ready.set()

    def _add(self, stream: str, text: str) -> None:
        if not text:
            return
        self.seq += 1
        self.pending.append((self.seq, stream, text))
        self.pending_bytes += len(text)
        self.tails[stream] = (self.tails[stream] + text)[-execution_queue.RESULT_TAIL_CHARS :]

    def take(self, *, final: bool = False) -> list[tuple[int, str, str]]:
        """The output not stored yet; ``final``: the run is over, so what the maskers hold back
        (the possible start of a secret value at the very end) is let out too."""
        with self.lock:
            for stream, decoder in self.decoders.items():
                rest = output_text(b"", decoder)
                if rest:
                    self._add(stream, self.maskers[stream].feed(rest))
                if final:
                    self._add(stream, self.maskers[stream].flush())
            chunks, self.pending, self.pending_bytes = self.pending, [], 0
        return chunks

    def put_back(self, chunks: list[tuple[int, str, str]]) -> None:
        """Chunks that could not be stored (database unreachable): keep them, in order."""
        with self.lock:
            self.pending = chunks + self.pending
            self.pending_bytes += sum(len(text) for _, _, text in chunks)

    def should_cancel(self) -> str | None:
        # The sandbox knows two reasons; a lost lease stops the script like a cancel.
        if self.stop_reason is None:
            return None
        return "worker_shutdown" if self.stop_reason == "worker_shutdown" else "cancelled"


class WorkerProcess:
    def __init__(
        self,
        *,
        concurrency: int = 2,
        poll_interval: float = 1.0,
        grace: float = 30.0,
        name: str | None = None,
        sandbox: SandboxConfig | None = None,
        on_event: Callable[[str], None] | None = None,
        webhooks: bool = True,
        skip_jobs: Collection[str] = (),
    ) -> None:
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.grace = grace
        self.name = name
        self.sandbox = sandbox or SandboxConfig.from_settings()
        self.on_event = on_event or (lambda message: logger.info("%s", message))
        self.runs: dict[uuid.UUID, Run] = {}
        self.runs_lock = threading.Lock()
        # Claimed runs wait here for a free run thread (there is one per slot, so never long).
        self.ready: queue.SimpleQueue[Run | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.wake = threading.Event()
        self.output_ready = threading.Event()  # a run printed: store it (housekeeping)
        # Set while the claim loop waits for work (a wake-up, a free slot or the poll timer).
        self.idle = threading.Event()
        self.stopping = threading.Event()
        self.killing = threading.Event()
        self.worker: Worker | None = None
        # Registered periodic jobs (executions.engine.jobs) this worker does not run.
        self.skip_jobs = frozenset(skip_jobs) | (frozenset() if webhooks else {WEBHOOK_DELIVERY})

    # --- lifecycle -------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: Any) -> None:
            if self.stopping.is_set():
                self.on_event("second signal: killing running scripts now")
                self.killing.set()
            else:
                self.on_event(
                    f"signal {signum}: no new work; waiting up to {self.grace:g}s for running scripts"
                )
                self.stopping.set()
            self.wake.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def run(self) -> None:
        """Run until stopped (signal or ``stopping``); returns after a clean shutdown."""
        # Bound before the first claim: whatever is queued after that claim's read pokes it.
        local = self._local_listener() if connection.vendor != "postgresql" else None
        self.worker = execution_queue.worker_register(
            concurrency=self.concurrency, sandbox=describe_isolation(self.sandbox), name=self.name
        )
        if problem := reaping_problem():
            logger.error(problem)
        woken_by = (
            "LISTEN/NOTIFY + polling"
            if connection.vendor == "postgresql"
            else "local wake-up socket + polling"
            if local is not None
            else "polling"
        )
        self.on_event(
            f"worker {self.worker.name} started: concurrency {self.concurrency}, "
            f"isolation {self.worker.sandbox}, {woken_by} every {self.poll_interval:g}s"
        )
        self.threads = [
            threading.Thread(target=self._run_thread, name=f"run-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in self.threads:
            thread.start()
        helpers = [threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)]
        if connection.vendor == "postgresql":
            helpers.append(threading.Thread(target=self._listen, name="listen", daemon=True))
        elif local is not None:
            helpers.append(
                threading.Thread(target=self._listen_local, args=(local,), name="listen", daemon=True)
            )
        for job in registered_jobs():
            if job.name not in self.skip_jobs:
                helpers.append(
                    threading.Thread(target=self._run_job, args=(job,), name=job.name, daemon=True)
                )
        for thread in helpers:
            thread.start()
        try:
            self._loop()
        finally:
            self._shutdown()
            finish_cleanup()  # the last runs' uid sweeps and work directories
            if local is not None:
                local.close()
            execution_queue.worker_stop(worker=self.worker)
            self.on_event(f"worker {self.worker.name} stopped")
            connections.close_all()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.idle.clear()
            self.wake.clear()
            try:
                while self._free_slots() > 0 and not self.stopping.is_set():
                    if not self._claim_batch():
                        break
            except Exception:
                log_retry("claiming failed; retrying")
                close_old_connections()
                time.sleep(1)
            self.idle.set()
            self.wake.wait(self.poll_interval)

    def _free_slots(self) -> int:
        # Counted from ``runs``: an entry leaves before its thread wakes this loop.
        with self.runs_lock:
            return self.concurrency - len(self.runs)

    def _claim_batch(self) -> bool:
        """Claim as many executions as there are free slots (one transaction); False if none."""
        assert self.worker is not None
        executions = execution_queue.execution_claim_batch(
            worker=self.worker, limit=max(1, self._free_slots())
        )
        for execution in executions:
            run = Run(execution=execution, token=execution.claim_token)
            with self.runs_lock:
                self.runs[execution.pk] = run
            self.ready.put(run)
        return bool(executions)

    def _shutdown(self) -> None:
        for _ in self.threads:
            self.ready.put(None)  # each run thread ends after its current script
        deadline = time.monotonic() + self.grace
        while any(t.is_alive() for t in self.threads):
            if self.killing.is_set() or time.monotonic() >= deadline:
                with self.runs_lock:
                    for run in self.runs.values():
                        run.stop_reason = run.stop_reason or "worker_shutdown"
            time.sleep(0.05)
        for thread in self.threads:
            thread.join()

    def run_pending(self, limit: int = 100) -> int:
        """Claim and run queued executions one by one in this thread until none is left
        (or ``limit``); returns how many ran. For tests and one-shot use, no threads."""
        if self.worker is None:
            self.worker = execution_queue.worker_register(
                concurrency=1, sandbox=describe_isolation(self.sandbox), name=self.name
            )
        done = 0
        while done < limit:
            execution = execution_queue.execution_claim_next(worker=self.worker)
            if execution is None:
                break
            self._execute(Run(execution=execution, token=execution.claim_token))
            done += 1
        return done

    # --- running one script ------------------------------------------------------------------
    def _run_thread(self) -> None:
        """Run the scripts handed over by the main loop, one at a time, until told to stop."""
        try:
            while (run := self.ready.get()) is not None:
                try:
                    self._execute(run)
                finally:
                    self.wake.set()
        finally:
            connections.close_all()

    def _execute(self, run: Run) -> None:
        execution = run.execution
        self.on_event(f"execution {execution.pk} (task {execution.task_id} #{execution.number}) started")
        try:
            env = {
                "TASKFORGE_EXECUTION_ID": str(execution.pk),
                "TASKFORGE_TASK_ID": str(execution.task_id),
            }
            # secret_values: the passed secrets and the project secrets resolved at the claim.
            params = {**execution.parameters, **(execution.secret_values or {})}
            for key, value in params.items():
                env[f"PARAM_{str(key).upper()}"] = as_env_value(value)
            run.output_ready = self.output_ready
            result = run_script(
                script=execution.script,
                script_type=execution.script_type,
                timeout_seconds=execution.timeout_seconds,
                env_extra=env,
                params=params,
                on_output=run.on_output,
                should_cancel=run.should_cancel,
                config=self.sandbox,
            )
            try:
                self._until_stored(f"end of {execution.pk}", lambda: self._record(run, result))
            except CONNECTION_ERRORS:
                raise
            except Exception as exc:
                # The database refused what the run produced (not a lost connection): record
                # that as it is, in a write that holds nothing of the run's output.
                self._record_unstored(run, exc)
        except CONNECTION_ERRORS:
            # The database stayed away for a whole lease: the reaper fails the run worker_lost
            # (and retries it); recording a "worker error" here would blame the script.
            log_retry(f"could not record how {execution.pk} ended; the reaper will")
        except Exception as exc:
            logger.exception("execution %s crashed in the worker", execution.pk)
            detail = run.mask(f"worker error: {exc}")[:500]
            try:
                self._until_stored(
                    f"failure of {execution.pk}",
                    lambda: self._finish(
                        run, status=ExecutionStatus.FAILED, error=ErrorCode.SPAWN_FAILED, error_detail=detail
                    ),
                )
            except CONNECTION_ERRORS:
                logger.exception("could not record the failure of %s; the reaper will", execution.pk)
            except Exception as store_exc:
                self._record_unstored(run, store_exc)
        finally:
            with self.runs_lock:
                self.runs.pop(execution.pk, None)

    def _record(self, run: Run, result: RunResult) -> None:
        execution = run.execution
        if run.stop_reason == "lease_lost":
            self.on_event(f"execution {execution.pk} stopped: this worker lost its lease")
            return
        status, error = {
            "succeeded": (ExecutionStatus.SUCCEEDED, ""),
            "failed": (ExecutionStatus.FAILED, ErrorCode.NONZERO_EXIT),
            "timed_out": (ExecutionStatus.TIMED_OUT, ErrorCode.TIMEOUT),
            "cancelled": (ExecutionStatus.CANCELLED, ErrorCode.CANCELLED),
            "killed": (ExecutionStatus.FAILED, ErrorCode.WORKER_SHUTDOWN),
            "spawn_failed": (ExecutionStatus.FAILED, ErrorCode.SPAWN_FAILED),
        }[result.outcome]
        if result.outcome == "failed" and result.error == ErrorCode.MEMORY_EXCEEDED:
            error = ErrorCode.MEMORY_EXCEEDED
        elif result.outcome == "failed" and result.exit_code is None:
            error = ErrorCode.KILLED_BY_SIGNAL
        detail = result.error_detail or ""
        outputs, problem = published_outputs(result.outputs, result.outputs_problem, run.mask)
        if problem is not None and status == ExecutionStatus.SUCCEEDED:
            # The script succeeded but what it published cannot be used: the run failed.
            status, error, detail = ExecutionStatus.FAILED, ErrorCode.INVALID_OUTPUTS, problem
        finished = self._finish(
            run,
            status=status,
            exit_code=result.exit_code,
            error=error,
            error_detail=run.mask(output_text(detail))[:500],
            outputs=outputs,
            stdout_truncated=result.stdout_truncated,
            stderr_truncated=result.stderr_truncated,
        )
        outcome = finished.status if finished else "lost (another worker took over)"
        self.on_event(f"execution {execution.pk} finished: {outcome} exit={result.exit_code}")

    def _finish(self, run: Run, **outcome: Any) -> Execution | None:
        """Record the end of ``run`` with its last output in one transaction. The flush lock
        is held throughout, so a housekeeping flush cannot store chunks after the finish; if
        the write fails (the database went away), the chunks are kept for the retry."""
        with run.flush_lock:
            chunks = run.take(final=True)
            try:
                return execution_queue.execution_finish(
                    execution=run.execution, claim_token=run.token, chunks=chunks, tails=run.tails, **outcome
                )
            except Exception:
                run.put_back(chunks)
                raise

    def _record_unstored(self, run: Run, exc: Exception) -> None:
        """Storing how ``run`` ended failed for a reason a retry cannot cure (the database
        refused the output, a constraint, a bug): record it as ``worker_error``, never
        retried, in a fresh minimal write that stores nothing from the script. Left as it is,
        the run would stay ``running`` until the reaper failed it ``worker_lost`` and ran the
        script a second time."""
        execution = run.execution
        logger.error("could not store the end of execution %s: %r", execution.pk, exc, exc_info=exc)
        detail = run.mask(
            output_text(f"the worker could not store this run's outcome: {type(exc).__name__}: {exc}")
        )
        try:
            stored = self._until_stored(
                f"worker error of {execution.pk}",
                lambda: execution_queue.execution_fail_unstored(
                    execution=execution, claim_token=run.token, error_detail=detail[:500]
                ),
            )
        except Exception:
            logger.exception("could not record the worker error of %s; the reaper will", execution.pk)
            return
        if stored:
            self.on_event(f"execution {execution.pk} finished: failed (worker_error)")

    def _until_stored(self, what: str, write: Callable[[], T]) -> T:
        """Run a database write, retrying through a lost connection (PostgreSQL restarting)
        for up to one lease: after that the reaper has failed the run and the claim-token
        fence would refuse the write anyway. The writes are idempotent under the fence (a
        finish that did commit before its connection died is simply not applied twice)."""
        deadline = time.monotonic() + settings.TASKFORGE_EXECUTION_LEASE_SECONDS
        delay = 0.1
        while True:
            try:
                return write()
            except CONNECTION_ERRORS as exc:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("storing the %s failed (%s); retrying in %.1fs", what, exc, delay)
                drop_connection()
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_BACKOFF_MAX)

    # --- housekeeping ------------------------------------------------------------------------
    def _flush(self, run: Run) -> None:
        with run.flush_lock:
            chunks = run.take()
            if not chunks:
                return
            try:
                stored = execution_queue.execution_append_output(
                    execution_id=run.execution.pk, claim_token=run.token, chunks=chunks
                )
            except Exception:
                run.put_back(chunks)  # stored on the next flush, once the database is back
                raise
            if not stored:
                run.stop_reason = run.stop_reason or "lease_lost"

    def _flush_or_give_up(self, run: Run) -> None:
        """Flush one run; a refusal that is not a lost connection stops the flushing of that
        run only (its finish tries once more, then records ``worker_error``), so one run's
        bad output never holds up the others' output, cancels and lease renewals."""
        try:
            self._flush(run)
        except CONNECTION_ERRORS:
            raise
        except Exception:
            logger.exception("storing the output of %s failed; not retried", run.execution.pk)
            run.store_failed = True

    def _housekeeping(self) -> None:
        lease_every = max(1.0, settings.TASKFORGE_EXECUTION_LEASE_SECONDS / 3)
        last_lease = last_reap = last_cancel = last_prune = last_store = 0.0
        # Until the worker stops and its last runs are over (run() returns after them).
        while not self.stopping.is_set() or self.runs:
            now = time.monotonic()
            try:
                with self.runs_lock:
                    runs = list(self.runs.values())
                for run in runs:
                    if run.pending and not run.store_failed:
                        self._flush_or_give_up(run)
                        last_store = now
                if now - last_cancel >= CANCEL_POLL_INTERVAL and runs:
                    last_cancel = now
                    for execution_id in execution_queue.cancel_requested(r.execution.pk for r in runs):
                        run = self.runs.get(execution_id)
                        if run is not None and run.stop_reason is None:
                            run.stop_reason = "cancelled"
                if now - last_lease >= lease_every:
                    last_lease = now
                    assert self.worker is not None
                    lost = execution_queue.worker_heartbeat(
                        worker=self.worker, running={r.execution.pk: r.token for r in runs}
                    )
                    for execution_id in lost:
                        run = self.runs.get(execution_id)
                        if run is not None:
                            run.stop_reason = run.stop_reason or "lease_lost"
                if now - last_reap >= REAP_INTERVAL:
                    last_reap = now
                    execution_queue.reap_lost_executions()
                    reap_expired_claims()
                if now - last_prune >= PRUNE_INTERVAL:
                    last_prune = now
                    prune_idempotency_keys()
            except Exception:
                log_retry("housekeeping failed; retrying")
                close_old_connections()
                time.sleep(1)
            # Until output arrives (then no sooner than OUTPUT_COALESCE after the last store),
            # or FLUSH_INTERVAL passes: the leases, cancels and reaping keep their own clocks.
            if self.output_ready.wait(FLUSH_INTERVAL):
                self.output_ready.clear()
                time.sleep(max(0.0, last_store + OUTPUT_COALESCE - time.monotonic()))
        connections.close_all()

    def _run_job(self, job: Job) -> None:
        """Call a registered job until the worker stops, at the pace it asks for."""
        while not self.stopping.is_set():
            try:
                pause = job.func()
            except Exception:
                log_retry(f"{job.name} failed; retrying")
                close_old_connections()
                pause = None
            if pause is None or pause > 0:
                self.stopping.wait(job.every_seconds if pause is None else pause)
        connections.close_all()

    def _listen(self) -> None:
        """Wake the main loop on NOTIFY (a dedicated connection outside Django's pool)."""
        import psycopg

        while not self.stopping.is_set():
            try:
                params = connection.get_connection_params()
                params.pop("cursor_factory", None)
                params.pop("context", None)
                with psycopg.connect(**params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {execution_queue.QUEUE_CHANNEL}")
                    self.wake.set()  # anything queued while we were not listening
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.wake.set()
            except Exception:
                log_retry("LISTEN connection failed; polling meanwhile, reconnecting in 1s")
                time.sleep(1)

    def _local_listener(self) -> wakeup.Listener | None:
        """Without PostgreSQL: the socket enqueues poke (``executions.engine.wakeup``), or None
        (then the worker only polls) if it cannot be bound."""
        try:
            return wakeup.Listener(execution_queue.QUEUE_CHANNEL)
        except OSError as exc:
            logger.warning("no wake-up socket in %s (%s); polling only", wakeup.base_dir(), exc)
            return None

    def _listen_local(self, listener: wakeup.Listener) -> None:
        """Wake the main loop when an enqueue pokes the worker's socket (SQLite)."""
        while not self.stopping.is_set():
            try:
                if listener.wait(1.0):
                    self.wake.set()
            except Exception:
                if self.stopping.is_set():
                    return  # closed by run() on the way out
                logger.exception("reading the wake-up socket failed; polling meanwhile")
                time.sleep(1)


def log_retry(message: str) -> None:
    """Log, from inside an ``except`` block, a failure the caller will retry: a lost database
    connection (expected while PostgreSQL restarts) as one warning line, anything else with
    its traceback."""
    exc = sys.exc_info()[1]
    if isinstance(exc, CONNECTION_ERRORS):
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        logger.warning("%s (database unavailable: %s)", message, first_line)
    else:
        logger.exception("%s", message)


def drop_connection() -> None:
    """Hand back this thread's connection after a connection error, so the next query gets
    a fresh one (the pool discards a broken connection instead of lending it again)."""
    try:
        connection.close()
    except Exception:  # it is broken already; closing is best effort
        logger.debug("closing a broken connection failed", exc_info=True)


def published_outputs(
    data: bytes | None, problem: str | None, mask: Callable[[str], str]
) -> tuple[dict[str, Any], str | None]:
    """The outputs a script published (the bytes of its outputs file, as the sandbox read
    them) with the secret values it received masked, and why they cannot be used (then
    ``{}``). No file, or an empty one, is no outputs; the file must hold a JSON object."""
    if problem is not None:
        return {}, problem
    if data is None or not data.strip():
        return {}, None
    try:
        outputs = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        return {}, f"the outputs file is not JSON: {exc}"
    except RecursionError:
        return {}, "the outputs file is not JSON: nested too deeply"
    if not isinstance(outputs, dict):
        return {}, f"the outputs file must hold a JSON object, not {type(outputs).__name__}"
    try:
        return masked_outputs(outputs, mask), None
    except ValueError as exc:
        return {}, f"the outputs file cannot be stored: {exc}"
    except RecursionError:
        return {}, "the outputs file cannot be stored: nested too deeply"


def _refuse_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (and no database stores them as JSON)."""
    raise ValueError(f"{name} is not a JSON value")


def masked_outputs(value: Any, mask: Callable[[str], str]) -> Any:
    """``value`` (decoded JSON) with every secret value masked: in strings (keys too), and a
    number or boolean whose text is a secret value becomes the mask itself."""
    if isinstance(value, dict):
        return {masked_outputs(key, mask): masked_outputs(item, mask) for key, item in value.items()}
    if isinstance(value, list):
        return [masked_outputs(item, mask) for item in value]
    if isinstance(value, str):
        if "\0" in value or SURROGATES_RE.search(value):
            # PostgreSQL's jsonb refuses both: the run would otherwise fail worker_error.
            raise ValueError("a string holds a NUL character or a lone surrogate")
        return mask(value)
    if value is not None:
        text = json.dumps(value)
        if mask(text) != text:
            return mask(text)
    return value


def as_env_value(value: Any) -> str:
    """A parameter's value as the script's environment carries it: text as it is, else JSON."""
    return value if isinstance(value, str) else json.dumps(value)
