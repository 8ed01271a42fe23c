"""Taskforge settings: one module, configured from the environment only (12-factor).

Nothing secret has a default here. Without ``DEBUG`` a missing ``DJANGO_SECRET_KEY``
stops the process at start-up with a message saying what to set.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from exc


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG")
TESTING = env_bool("TASKFORGE_TESTING")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if DEBUG or TESTING:
        # Development and tests only: a per-process random key (sessions do not survive a restart).
        from django.core.management.utils import get_random_secret_key

        SECRET_KEY = get_random_secret_key()
    else:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it to a long random string "
            "(python -c 'import secrets; print(secrets.token_urlsafe(50))'), "
            "or set DEBUG=1 for local development."
        )

# Encryption at rest of stored credentials (core/crypto.py): Fernet keys, newest first; the
# first encrypts, every one decrypts, so a key rotates by putting a new one in front and running
# ``manage.py rotate_secrets_key``. The embedded default (DEBUG, tests, SQLite without
# DATABASE_URL) makes one in var/secrets.key on first use and says so; production must set it.
TASKFORGE_SECRETS_KEYS = env_list("TASKFORGE_SECRETS_KEYS")
TASKFORGE_SECRETS_KEY_FILE: Path | None = None
for _position, _key in enumerate(TASKFORGE_SECRETS_KEYS, start=1):
    try:
        _valid = len(base64.urlsafe_b64decode(_key.encode("ascii"))) == 32
    except (ValueError, UnicodeEncodeError):
        _valid = False
    if not _valid:
        raise ImproperlyConfigured(
            f"TASKFORGE_SECRETS_KEYS entry {_position} is not a Fernet key (32 url-safe base64 bytes). "
            "Make one with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'"
        )
if not TASKFORGE_SECRETS_KEYS:
    if DEBUG or TESTING or not os.environ.get("DATABASE_URL"):
        TASKFORGE_SECRETS_KEY_FILE = BASE_DIR / "var" / "secrets.key"
    else:
        raise ImproperlyConfigured(
            "TASKFORGE_SECRETS_KEYS is not set: stored secrets are encrypted with it. Set it to one "
            "or more Fernet keys, newest first, comma-separated (make one with: python -c 'from "
            "cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'); keep every "
            "key until `manage.py rotate_secrets_key` has run, or what it encrypted is lost."
        )

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG or TESTING else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    # The operations room (ops/) first: its templates (admin/index.html, base_site.html, the
    # throttled login page) override django.contrib.admin's, which app templates do in this order.
    "ops",
    # Django's admin with the Taskforge site (ops.admin.TaskforgeAdminSite, the dashboard).
    "ops.admin.TaskforgeAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_api_key",
    "django_filters",
    "django_ratelimit",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "accounts",
    "events",
    "vault",
    "agents",
    "tasks",
    "templates_app",
    "executions",
    "webhooks",
    "workflows",
    "triggers",
    "schedules",
    # The benchmark harness (bench/): only its ``manage.py benchmark`` command, no models.
    "bench",
]

MIDDLEWARE = [
    "core.middleware.RequestIDMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "core.middleware.ApiNoStoreMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "core.middleware.BodySizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "config" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.csp",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
# PostgreSQL through DATABASE_URL (psycopg 3 with Django's connection pool); SQLite in WAL
# mode when unset, so a newcomer needs nothing but Python.
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=0, conn_health_checks=False)
    if _db["ENGINE"] == "django.db.backends.postgresql":
        from psycopg_pool import ConnectionPool

        _db.setdefault("OPTIONS", {})["pool"] = {
            "min_size": env_int("DATABASE_POOL_MIN_SIZE", 1),
            "max_size": env_int("DATABASE_POOL_MAX_SIZE", 20),
            "timeout": env_int("DATABASE_POOL_TIMEOUT", 10),
            # Test a pooled connection before lending it (one empty round trip): after a
            # PostgreSQL restart or failover every idle connection is dead, and without the
            # check each would fail one request (or worker write) before being discarded.
            "check": ConnectionPool.check_connection,
        }
else:
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TASKFORGE_SQLITE_PATH", str(BASE_DIR / "var" / "taskforge.sqlite3")),
        "OPTIONS": {
            # WAL lets the web and worker processes read while one writes; IMMEDIATE takes the
            # write lock at BEGIN so two writers queue on busy_timeout instead of failing late.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
    }
    # The test database is a file (beside the main one), not memory, so tests can start real
    # gunicorn and worker processes against it.
    _db["TEST"] = {"NAME": str(Path(_db["NAME"]).with_suffix("")) + "-test.sqlite3"}
    Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (rate limits, last-used throttling) --------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "taskforge",
        }
    }
else:
    # The database cache is shared by every web and worker process, so rate limits hold
    # across processes with no extra service. Its table is created by a migration; its
    # incr is made atomic by the subclass.
    CACHES = {
        "default": {
            "BACKEND": "core.ratelimit.AtomicDatabaseCache",
            "LOCATION": "taskforge_cache",
        }
    }

# django-ratelimit's check knows only the third-party django-redis and memcached backends.
# Both backends used here are shared across processes and increment atomically (Django's
# RedisCache uses INCR; AtomicDatabaseCache locks the row), so its "not officially
# supported" warning W001 is a false alarm for them.
SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if TESTING:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("TASKFORGE_STATIC_ROOT", str(BASE_DIR / "var" / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if not (DEBUG or TESTING)
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG or TESTING

# --- Security (production defaults; DEBUG relaxes nothing that matters behind TLS) ---------
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG and not TESTING)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("TASKFORGE_BEHIND_TLS_PROXY") else None
)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# HSTS: Django's SecurityMiddleware sends it on HTTPS requests only (request.is_secure():
# TLS at gunicorn, or X-Forwarded-Proto: https from the proxy with TASKFORGE_BEHIND_TLS_PROXY),
# so a plain-HTTP development server never pins a host. One year unless DEBUG; set 0 to turn
# it off, and opt into subdomains and the preload list only when every subdomain has TLS.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS")
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD")
# Redirect plain HTTP to HTTPS (usually the proxy's job); /health stays reachable over HTTP
# for load balancers.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT")
SECURE_REDIRECT_EXEMPT = [r"^health$"]
# Content-Security-Policy on every response (Django's CSP middleware): the admin, the API
# docs (Swagger UI, ReDoc: served from drf-spectacular-sidecar, no CDN) and the browsable API
# load scripts, styles, images and fonts from this origin only; inline scripts and styles
# need the per-response nonce (config/templates/api_docs/ and the admin's templates pass it;
# no inline event handlers: static/taskforge/admin.js wires the admin's buttons). ReDoc's own view relaxes
# style-src (config/urls.py): its styling library injects <style> elements without a nonce.
# TASKFORGE_CSP: "enforce" (default), "report-only" (the browser reports, blocks nothing) or
# "off".
TASKFORGE_CSP = os.environ.get("TASKFORGE_CSP", "enforce").strip().lower() or "enforce"
if TASKFORGE_CSP not in {"enforce", "report-only", "off"}:
    raise ImproperlyConfigured(f"TASKFORGE_CSP must be enforce, report-only or off, got {TASKFORGE_CSP!r}")
CSP_POLICY = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF, CSP.NONCE],
    # style="..." attributes (the admin's status badges and output boxes): they cannot run
    # code or read the page, and load images and fonts only as img-src/font-src allow.
    "style-src-attr": [CSP.UNSAFE_INLINE],
    "img-src": [CSP.SELF, "data:"],
    "font-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "worker-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}
SECURE_CSP = CSP_POLICY if TASKFORGE_CSP == "enforce" else {}
SECURE_CSP_REPORT_ONLY = CSP_POLICY if TASKFORGE_CSP == "report-only" else {}

# --- Product settings (TASKFORGE_*) --------------------------------------------------------
TASKFORGE_VERSION = "0.1.0"
# Largest request body accepted (413 above it). A task's script may be 1 MiB and its
# metadata 64 KiB, so 2 MiB leaves room for JSON escaping.
TASKFORGE_MAX_BODY_BYTES = env_int("TASKFORGE_MAX_BODY_BYTES", 2 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = TASKFORGE_MAX_BODY_BYTES
# Rate limits, django-ratelimit syntax (count/period, e.g. 1000/15m).
TASKFORGE_RATE_LIMIT_AUTHENTICATED = os.environ.get("TASKFORGE_RATE_LIMIT_AUTHENTICATED", "1000/15m")
TASKFORGE_RATE_LIMIT_ANONYMOUS = os.environ.get("TASKFORGE_RATE_LIMIT_ANONYMOUS", "100/15m")
TASKFORGE_RATE_LIMIT_ENABLED = env_bool("TASKFORGE_RATE_LIMIT_ENABLED", True)
# The widest rate any API key may carry (its own rate_limit, set in the API or the admin):
# a key asking for more is refused with a 400 naming this cap.
TASKFORGE_RATE_LIMIT_MAX = os.environ.get("TASKFORGE_RATE_LIMIT_MAX", "20000/15m")
# How long a project invitation waits for its invitee to accept it (seconds; 7 days).
TASKFORGE_INVITATION_TTL = env_int("TASKFORGE_INVITATION_TTL", 7 * 24 * 3600)
# How often an API key's last_used_at may be written (seconds).
TASKFORGE_KEY_LAST_USED_INTERVAL = env_int("TASKFORGE_KEY_LAST_USED_INTERVAL", 60)
# Agents (agents/, docs/agents.md): how often a registered agent is expected to heartbeat
# (seconds; told to it in every heartbeat answer) and how many beats it may miss before it
# counts as offline and its claims return to pending.
TASKFORGE_AGENT_HEARTBEAT_SECONDS = env_int("TASKFORGE_AGENT_HEARTBEAT_SECONDS", 15)
TASKFORGE_AGENT_MISSED_HEARTBEATS = env_int("TASKFORGE_AGENT_MISSED_HEARTBEATS", 3)
if TASKFORGE_AGENT_HEARTBEAT_SECONDS < 1 or TASKFORGE_AGENT_MISSED_HEARTBEATS < 1:
    raise ImproperlyConfigured("TASKFORGE_AGENT_HEARTBEAT_SECONDS and _MISSED_HEARTBEATS must be 1 or more")
# Executions and workers.
# A running execution's lease; its worker renews it every third of this. A worker killed
# with -9 is noticed (execution failed/worker_lost, retried if allowed) once it runs out.
TASKFORGE_EXECUTION_LEASE_SECONDS = env_int("TASKFORGE_EXECUTION_LEASE_SECONDS", 30)
# A worker whose heartbeat is older than this is shown as lost.
TASKFORGE_WORKER_DEAD_AFTER = env_int("TASKFORGE_WORKER_DEAD_AFTER", 60)
# How many executions of one project may run at once, over all workers (0: no cap). Projects
# take turns for free worker slots either way; the cap also keeps slots free for the others
# while one project's long runs hold them (set it below the fleet's total slots when several
# tenants share the workers).
TASKFORGE_PROJECT_MAX_RUNNING = env_int("TASKFORGE_PROJECT_MAX_RUNNING", 0)
if TASKFORGE_PROJECT_MAX_RUNNING < 0:
    raise ImproperlyConfigured("TASKFORGE_PROJECT_MAX_RUNNING must be 0 (no cap) or more")
# Where the processes sharing a SQLite database poke each other awake (Unix sockets:
# executions.engine.wakeup); empty: beside the database file (<file>.wakeup/). PostgreSQL uses
# LISTEN/NOTIFY instead.
TASKFORGE_WAKEUP_DIR = os.environ.get("TASKFORGE_WAKEUP_DIR", "")
# How long ?wait=N may hold a request (seconds).
# (At most 60, the SPEC's bound; lower it where request threads are scarce: each waiting
# request holds one.)
TASKFORGE_MAX_WAIT_SECONDS = min(env_int("TASKFORGE_MAX_WAIT_SECONDS", 60), 60)
# Long-lived requests (live-log and event streams, ?wait): each holds a request thread. At most
# TASKFORGE_MAX_STREAMS_PER_PRINCIPAL at once per user (all of their keys and sessions together,
# counted across processes in the shared cache), at most TASKFORGE_MAX_STREAMS_PER_PROCESS per
# web process (0, the default: derived from the web server's threads, keeping a quarter of them,
# at least 8 and at most half, for ordinary requests; config/gunicorn.conf.py tells each process
# its thread count; core.holding.process_cap); beyond either, 429 + Retry-After.
# A stream ends after TASKFORGE_STREAM_MAX_SECONDS with an event asking the client to reconnect
# (Last-Event-ID resumes it).
TASKFORGE_MAX_STREAMS_PER_PRINCIPAL = env_int("TASKFORGE_MAX_STREAMS_PER_PRINCIPAL", 8)
TASKFORGE_MAX_STREAMS_PER_PROCESS = env_int("TASKFORGE_MAX_STREAMS_PER_PROCESS", 0)
TASKFORGE_STREAM_MAX_SECONDS = env_int("TASKFORGE_STREAM_MAX_SECONDS", 300)
# The event stream's tickets (POST /api/v1/events/tickets, for browsers' EventSource): valid
# this many seconds, once.
TASKFORGE_EVENT_TICKET_SECONDS = env_int("TASKFORGE_EVENT_TICKET_SECONDS", 60)
# Idempotency-Key: how long a key replays its first response, and after how long a request
# still "in flight" (its process died) may be taken over by a retry.
TASKFORGE_IDEMPOTENCY_TTL_SECONDS = env_int("TASKFORGE_IDEMPOTENCY_TTL_SECONDS", 24 * 3600)
TASKFORGE_IDEMPOTENCY_LOCK_SECONDS = env_int("TASKFORGE_IDEMPOTENCY_LOCK_SECONDS", 300)
RATELIMIT_USE_CACHE = "default"
# Failed admin logins allowed per window, per username and per client IP; past either, every
# attempt (the right password too) is refused with 429 until the window passes.
TASKFORGE_ADMIN_LOGIN_RATE_USERNAME = os.environ.get("TASKFORGE_ADMIN_LOGIN_RATE_USERNAME", "10/15m")
TASKFORGE_ADMIN_LOGIN_RATE_IP = os.environ.get("TASKFORGE_ADMIN_LOGIN_RATE_IP", "30/15m")
# Webhooks (docs/webhooks.md). Targets must be public https URLs; the two ALLOW_ switches are
# for tests and local development only.
TASKFORGE_WEBHOOK_ALLOW_HTTP = env_bool("TASKFORGE_WEBHOOK_ALLOW_HTTP")
TASKFORGE_WEBHOOK_ALLOW_PRIVATE = env_bool("TASKFORGE_WEBHOOK_ALLOW_PRIVATE")
TASKFORGE_WEBHOOK_TIMEOUT = env_int("TASKFORGE_WEBHOOK_TIMEOUT", 15)  # seconds per attempt
TASKFORGE_WEBHOOK_CONCURRENCY = env_int("TASKFORGE_WEBHOOK_CONCURRENCY", 8)  # sends in parallel
# Longest Retry-After honoured (seconds); the old secret's life after a rotation; how long
# every attempt may fail before the subscription is disabled.
TASKFORGE_WEBHOOK_RETRY_AFTER_MAX = env_int("TASKFORGE_WEBHOOK_RETRY_AFTER_MAX", 24 * 3600)
TASKFORGE_WEBHOOK_ROTATION_GRACE = env_int("TASKFORGE_WEBHOOK_ROTATION_GRACE", 24 * 3600)
TASKFORGE_WEBHOOK_DISABLE_AFTER = env_int("TASKFORGE_WEBHOOK_DISABLE_AFTER", 3 * 24 * 3600)
# Inbound triggers (docs/triggers.md): the rate a trigger accepts verified deliveries at when
# it sets none, the body size a new trigger accepts (each may set up to TASKFORGE_MAX_BODY_BYTES),
# how much of each body is kept in its delivery log, and how long the previous secret still
# works after a rotation.
TASKFORGE_TRIGGER_RATE_LIMIT = os.environ.get("TASKFORGE_TRIGGER_RATE_LIMIT", "60/1m")
TASKFORGE_TRIGGER_BODY_MAX = env_int("TASKFORGE_TRIGGER_BODY_MAX", 1024 * 1024)
TASKFORGE_TRIGGER_STORED_BODY_MAX = env_int("TASKFORGE_TRIGGER_STORED_BODY_MAX", 64 * 1024)
TASKFORGE_TRIGGER_ROTATION_GRACE = env_int("TASKFORGE_TRIGGER_ROTATION_GRACE", 24 * 3600)
# How long fan-out keeps looking for an event id it skipped (its transaction not committed yet).
TASKFORGE_WEBHOOK_OUTBOX_GAP_SECONDS = env_int("TASKFORGE_WEBHOOK_OUTBOX_GAP_SECONDS", 600)
# Schedules: a due slot found later than this (no worker ticked) is a misfire (docs/schedules.md);
# the dashboard lists schedules due longer ago than this while workers are up.
TASKFORGE_SCHEDULE_MISFIRE_GRACE_SECONDS = env_int("TASKFORGE_SCHEDULE_MISFIRE_GRACE_SECONDS", 60)
# A workflow for_each node runs at most this many items (docs/workflows.md "Fan-out").
TASKFORGE_WORKFLOW_FOR_EACH_MAX = env_int("TASKFORGE_WORKFLOW_FOR_EACH_MAX", 100)

# --- REST framework and OpenAPI -------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.APIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.permissions.HasScope"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.PageNumberLimitPagination",
    "PAGE_SIZE": 20,
    "EXCEPTION_HANDLER": "core.errors.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "core.openapi.ProblemAutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_VERSIONING_CLASS": None,
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Taskforge API",
    "DESCRIPTION": (
        "Create, trigger and follow tasks; workers run their scripts in a sandbox. "
        "Authenticate with `Authorization: Api-Key <key>` (or `Bearer <key>`). "
        "Every error is an RFC 9457 problem document."
    ),
    "VERSION": TASKFORGE_VERSION,
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and its UIs are public documentation: no key needed to read them.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # No badge from the public validator service (a third-party request the CSP refuses).
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.openapi.add_links",
        "core.openapi.require_comma_list_items",
    ],
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "TaskStatusEnum": "tasks.models.Status",
        "ExecutionStatusEnum": "executions.models.ExecutionStatus",
        "DeliveryStatusEnum": "webhooks.models.DeliveryStatus",
        "ExecutionTriggerEnum": "executions.models.Trigger",
        "DeliveryTriggerEnum": "webhooks.models.Trigger",
        "TriggerAuthEnum": "triggers.models.Auth",
        "TriggerDeliveryOutcomeEnum": "triggers.models.Outcome",
        "AgentStatusEnum": "agents.models.AgentState",
        "HeartbeatActionEnum": ["continue", "drain", "pause"],
        "EventTypeEnum": "events.models.EventType",
        "ScheduleFireOutcomeEnum": "schedules.models.FireOutcome",
        "ScheduleRunOutcomeEnum": "schedules.models.RunOutcome",
        # Pinned: another "error" enum (workflow nodes) would otherwise rename this one.
        "ErrorEnum": "executions.models.ErrorCode",
        "WorkflowRunStatusEnum": "workflows.models.RunStatus",
        "WorkflowNodeStatusEnum": "workflows.models.NodeStatus",
        "WorkflowNodeErrorEnum": "workflows.models.NodeError",
        "WorkflowJoinEnum": "workflows.models.Join",
        "WorkflowEdgeOnEnum": "workflows.models.EdgeOn",
    },
}

# --- Logging: one line per record, with the request id -------------------------------------
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "core.request_id.RequestIDLogFilter"}},
    "formatters": {
        "plain": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
        }
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # httpx logs every webhook request with its URL at INFO; paths may carry tokens.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}

# --- Sandbox for task scripts (executions/engine/sandbox.py, SandboxConfig.from_settings) -----------
# "auto" uses bubblewrap when it is installed and works; "always" refuses to run scripts without
# it (outcome spawn_failed); "never" skips it (resource limits and the user drop still apply).
TASKFORGE_SANDBOX_BWRAP = os.environ.get("TASKFORGE_SANDBOX_BWRAP", "auto").strip().lower() or "auto"
if TASKFORGE_SANDBOX_BWRAP not in {"auto", "always", "never"}:
    raise ImproperlyConfigured(
        f"TASKFORGE_SANDBOX_BWRAP must be auto, always or never, got {TASKFORGE_SANDBOX_BWRAP!r}"
    )
TASKFORGE_SANDBOX_ADDRESS_SPACE_BYTES = env_int("TASKFORGE_SANDBOX_ADDRESS_SPACE_BYTES", 1024**3)
TASKFORGE_SANDBOX_FILE_SIZE_BYTES = env_int("TASKFORGE_SANDBOX_FILE_SIZE_BYTES", 64 * 1024**2)
# Each writable tmpfs under bwrap (/tmp, /dev/shm, the work directory) holds at most this.
TASKFORGE_SANDBOX_TMPFS_BYTES = env_int("TASKFORGE_SANDBOX_TMPFS_BYTES", 64 * 1024**2)
# A run's whole memory (every process's RAM plus what it keeps in tmpfs), bounded by a memory
# cgroup per run where the host allows one (executions/engine/cgroups.py); 0 = no memory limit.
TASKFORGE_SANDBOX_MEMORY_BYTES = env_int("TASKFORGE_SANDBOX_MEMORY_BYTES", 512 * 1024**2)
# "auto" makes a cgroup per run (memory, pids) when cgroup v2 is delegated or v1 is writable;
# "always" refuses to run scripts without one (spawn_failed); "never" does not try.
TASKFORGE_SANDBOX_CGROUP = os.environ.get("TASKFORGE_SANDBOX_CGROUP", "auto").strip().lower() or "auto"
if TASKFORGE_SANDBOX_CGROUP not in {"auto", "always", "never"}:
    raise ImproperlyConfigured(
        f"TASKFORGE_SANDBOX_CGROUP must be auto, always or never, got {TASKFORGE_SANDBOX_CGROUP!r}"
    )
TASKFORGE_SANDBOX_OPEN_FILES = env_int("TASKFORGE_SANDBOX_OPEN_FILES", 256)
TASKFORGE_SANDBOX_MAX_PROCESSES = env_int("TASKFORGE_SANDBOX_MAX_PROCESSES", 512)
TASKFORGE_SANDBOX_CPU_EXTRA_SECONDS = env_int("TASKFORGE_SANDBOX_CPU_EXTRA_SECONDS", 5)
TASKFORGE_SANDBOX_OUTPUT_CAP_BYTES = env_int("TASKFORGE_SANDBOX_OUTPUT_CAP_BYTES", 1024**2)
# The most a script may write to $TASKFORGE_OUTPUTS_FILE (its outputs, a JSON object).
TASKFORGE_OUTPUTS_MAX_BYTES = env_int("TASKFORGE_OUTPUTS_MAX_BYTES", 64 * 1024)
TASKFORGE_SANDBOX_KILL_GRACE_SECONDS = env_int("TASKFORGE_SANDBOX_KILL_GRACE_SECONDS", 5)
# When the worker runs as root, each run gets a uid (and the same gid) of its own from this
# inclusive range, "low-high"; no user or group of the host may own one of them.
if "TASKFORGE_SANDBOX_USER" in os.environ:
    raise ImproperlyConfigured(
        "TASKFORGE_SANDBOX_USER is gone: each run now gets its own uid from TASKFORGE_SANDBOX_UID_RANGE"
    )
_uid_range = os.environ.get("TASKFORGE_SANDBOX_UID_RANGE", "200000-200999").strip()
try:
    _low, _high = (int(part) for part in _uid_range.split("-"))
except ValueError:
    raise ImproperlyConfigured(
        f"TASKFORGE_SANDBOX_UID_RANGE must be two uids 'low-high', got {_uid_range!r}"
    ) from None
if not 0 < _low <= _high < 2**32 - 1:
    raise ImproperlyConfigured(
        f"TASKFORGE_SANDBOX_UID_RANGE must satisfy 0 < low <= high, got {_uid_range!r}"
    )
TASKFORGE_SANDBOX_UID_RANGE = (_low, _high)
# The directory of the per-uid lock files, shared by every worker on the host (None: the default,
# /run/taskforge-sandbox).
TASKFORGE_SANDBOX_UID_LOCK_DIR = os.environ.get("TASKFORGE_SANDBOX_UID_LOCK_DIR") or None
# The interpreter of python scripts (a name looked up on the sandbox PATH
# /usr/local/bin:/usr/bin:/bin, or an absolute path there). The template checker tokenizes
# scripts with this same interpreter, so web and worker hosts must have the same version.
TASKFORGE_SCRIPT_PYTHON = os.environ.get("TASKFORGE_SCRIPT_PYTHON", "python3").strip() or "python3"
