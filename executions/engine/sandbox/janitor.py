"""The janitor: sweeps uids, removes work dirs and cgroups of finished runs in batches, off
the runs' paths."""

from __future__ import annotations

import atexit
import logging
import threading
import time

from executions.engine import cgroups
from executions.engine.cgroups import RunCgroup
from executions.engine.sandbox.config import JANITOR_INTERVAL
from executions.engine.sandbox.files import _remove_tree
from executions.engine.sandbox.uids import _sweep, _UidLease

logger = logging.getLogger(__name__)


class _Janitor:
    """Ends finished runs off their path, in batches: one /proc scan sweeps the uids of every
    run that ended in the last ``JANITOR_INTERVAL`` seconds, then their work directories are
    removed and their uids released. A scan costs ~2 ms of CPU on a quiet host (more with
    more processes on it); once per run it was a tenth of the worker's CPU per trivial run.

    A run whose pipes are still held when its main process exits is swept at once instead
    (the run cannot end before they close). A uid waiting here stays locked, so it is never
    handed to another run before it is swept. A run's cgroup that could not be removed at
    once (killed processes still exiting) is emptied and removed here too.
    :func:`finish_cleanup` empties the queue now: the worker calls it when it stops, and at
    interpreter exit it is called anyway.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the queue and the thread
        self._batch_lock = threading.Lock()  # one batch at a time
        self._queue: list[tuple[_UidLease | None, str | None, RunCgroup | None]] = []
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, lease: _UidLease | None, work_dir: str | None, cgroup: RunCgroup | None = None) -> None:
        with self._lock:
            self._queue.append((lease, work_dir, cgroup))
            if self._thread is None or not self._thread.is_alive():
                if self._thread is None:
                    atexit.register(self.finish)
                self._thread = threading.Thread(target=self._loop, name="sandbox-janitor", daemon=True)
                self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(JANITOR_INTERVAL)  # let a batch gather
            try:
                self.finish()
            except Exception:  # pragma: no cover - logged; the next holder of a uid sweeps it
                logger.exception("sandbox cleanup failed")

    def finish(self) -> None:
        """Sweep, clean up and release every run queued so far (waits for a batch in progress)."""
        with self._batch_lock:
            with self._lock:
                batch, self._queue = self._queue, []
            if not batch:
                return
            try:
                for _, _, cgroup in batch:
                    if cgroup is not None and not cgroup.remove(cgroups.KILL_SECONDS):
                        # Removed as stale by the next worker that starts on this host.
                        logger.warning("sandbox cgroup %s could not be removed", cgroup.paths)
                _sweep([lease for lease, _, _ in batch if lease is not None])
            finally:
                # Even if the sweep failed: its uids are then left unmarked (swept again by
                # their next holders), never locked for good.
                for lease, work_dir, _ in batch:
                    try:
                        if work_dir is not None:
                            _remove_tree(work_dir)  # logs what it cannot remove
                    finally:
                        if lease is not None:
                            lease.unlock()


_janitor = _Janitor()


def finish_cleanup() -> None:
    """Finish cleaning up after every run that has ended: their leftover processes killed,
    work directories removed, uids released. Runs end this way within ``JANITOR_INTERVAL``
    by themselves; call this to wait for it (a worker stopping, a test)."""
    _janitor.finish()
