"""gunicorn settings for production: ``gunicorn -c config/gunicorn.conf.py config.wsgi``.

Threaded workers (gthread): requests that wait (``?wait=N``, live logs over SSE) block a
thread on an in-process event, not the CPU and not the database, so a few hundred threads
serve a few hundred waiting clients while the rest of the API stays responsive (measured in
docs/performance.md). Every value can be overridden with GUNICORN_* environment variables.
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count()))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 128))
# gthread: the worker heartbeat comes from its main loop, so long requests do not trip this.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 30
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 0))
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")
