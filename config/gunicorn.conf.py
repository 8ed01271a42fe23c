"""gunicorn settings for production: ``gunicorn -c config/gunicorn.conf.py config.wsgi``.

Threaded workers (gthread): requests that wait (``?wait=N``, live logs over SSE) block a
thread on an in-process event, not the CPU and not the database, so a few hundred threads
serve a few hundred waiting clients while the rest of the API stays responsive (measured in
docs/performance.md); a cap derived from ``threads`` keeps some of them for ordinary
requests. Every value can be overridden with GUNICORN_* environment variables.
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count()))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 128))
# The web processes size their cap on long-lived requests (live-log streams, ?wait) from the
# thread count: by default a quarter of the threads (at least 8, at most half) stay free for
# ordinary requests, whatever clients hold open (core.holding.process_cap). post_fork
# tells each worker the effective count (GUNICORN_CMD_ARGS may have changed it).
os.environ["TASKFORGE_GUNICORN_THREADS"] = str(threads)


def post_fork(server: object, worker: object) -> None:
    threads = worker.cfg.threads  # type: ignore[attr-defined]
    os.environ["TASKFORGE_GUNICORN_THREADS"] = str(threads)
    cap = int(os.environ.get("TASKFORGE_MAX_STREAMS_PER_PROCESS") or 0)
    if cap >= threads:
        server.log.warning(  # type: ignore[attr-defined]
            "TASKFORGE_MAX_STREAMS_PER_PROCESS=%s leaves none of the %s threads for ordinary requests",
            cap,
            threads,
        )


# gthread: the worker heartbeat comes from its main loop, so long requests do not trip this.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 30
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 0))
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")


def post_worker_init(worker: object) -> None:
    """Load the URL conf (every view, serializer and filter) now, then freeze what start-up
    made: those objects live as long as the process, and left to the garbage collector every
    full collection would walk them all again, inside some unlucky request."""
    import gc

    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - imported for its side effect
    gc.collect()
    gc.freeze()
