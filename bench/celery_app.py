"""The Celery + Redis baseline for the ``executions`` scenario (``celery`` is in the optional
``bench`` extra, never a runtime dependency).

One task runs a command in a fresh temporary directory, like a Taskforge execution, and returns
its start and end times (kept in the Redis result backend: the history). The benchmark passes
the same command line the product uses (with or without bubblewrap); ``{workdir}`` in it is
replaced by the job's directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

from celery import Celery

BROKER = os.environ.get("TASKFORGE_BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/8")

app = Celery("taskforge_bench", broker=BROKER, backend=BROKER)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=4,
    result_expires=3600,
    worker_hijack_root_logger=False,
)


@app.task(name="taskforge_bench.run")
def run(argv: list[str]) -> list[float]:
    started = time.time()
    workdir = tempfile.mkdtemp(prefix="celery-bench-")
    try:
        completed = subprocess.run(
            [part.replace("{workdir}", workdir) for part in argv],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8"},
            check=False,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return [started, time.time(), float(completed.returncode)]
