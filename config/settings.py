"""Herald's one settings module. Every value comes from the environment;
.env.example lists each variable with its default and meaning."""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("HERALD_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "accounts",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "smtpservers",
    "dispatchers",
    "campaigns",
    "bounces",
    "jobs",
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves collected static files, so pages are styled with DEBUG off and
    # no web server in front (make run, the docker image).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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

DATABASES = {"default": env.db("DATABASE_URL")}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.str("STATIC_ROOT", default=str(VAR_DIR / "static"))
STATICFILES_DIRS = [BASE_DIR / "static"]
# WhiteNoise serves STATIC_ROOT (filled by collectstatic) and warns on every
# request while the folder is missing, e.g. before the first collectstatic.
Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)

SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# --- Herald -----------------------------------------------------------------
# Newest key first: everything is encrypted under the first key and can be
# decrypted under any of them, so a key can be rotated in without downtime.
HERALD_ENCRYPTION_KEYS = env.list("HERALD_ENCRYPTION_KEYS")
HERALD_PUBLIC_URL = env.str("HERALD_PUBLIC_URL", default="http://127.0.0.1:8000").rstrip("/")
HERALD_OUTBOX_DIR = env.str("HERALD_OUTBOX_DIR", default=str(VAR_DIR / "outbox"))
HERALD_ITEMS_PAGE_SIZE = env.int("HERALD_ITEMS_PAGE_SIZE", default=5000)
HERALD_BATCH_LEASE_SECONDS = env.int("HERALD_BATCH_LEASE_SECONDS", default=600)
HERALD_RETRY_FIRST_SECONDS = env.int("HERALD_RETRY_FIRST_SECONDS", default=300)
HERALD_RETRY_MAX_SECONDS = env.int("HERALD_RETRY_MAX_SECONDS", default=4 * 3600)
HERALD_RETRY_GIVE_UP_SECONDS = env.int("HERALD_RETRY_GIVE_UP_SECONDS", default=3 * 86400)
# How long job runs and finished batches are kept for the job manager.
HERALD_HISTORY_DAYS = env.int("HERALD_HISTORY_DAYS", default=30)
# The job manager flags a job that fails this many runs in a row, or a run
# longer than both SLOW_FACTOR x its recent median and SLOW_SECONDS.
HERALD_JOB_MAX_FAILURES = env.int("HERALD_JOB_MAX_FAILURES", default=3)
HERALD_JOB_SLOW_FACTOR = env.float("HERALD_JOB_SLOW_FACTOR", default=5.0)
HERALD_JOB_SLOW_SECONDS = env.float("HERALD_JOB_SLOW_SECONDS", default=60.0)
# How long the job manager waits for live workers to answer, and how long
# it reuses their answer.
HERALD_WORKERS_TIMEOUT = env.float("HERALD_WORKERS_TIMEOUT", default=1.0)
HERALD_WORKERS_MAX_AGE = env.float("HERALD_WORKERS_MAX_AGE", default=10.0)
HERALD_DISPATCHER_MAX_FAILURES = env.int("HERALD_DISPATCHER_MAX_FAILURES", default=5)
# A pool member that cannot connect is out of rotation for this long,
# doubling with each failure in a row up to the cap, then tried again.
HERALD_POOL_BACKOFF_SECONDS = env.int("HERALD_POOL_BACKOFF_SECONDS", default=30)
HERALD_POOL_BACKOFF_MAX_SECONDS = env.int("HERALD_POOL_BACKOFF_MAX_SECONDS", default=900)
HERALD_CAMPAIGN_MAX_CONSECUTIVE_ERRORS = env.int(
    "HERALD_CAMPAIGN_MAX_CONSECUTIVE_ERRORS", default=100
)
# Where bounces come back: the domain of the VERP return path. Empty means
# the domain of each dispatcher's sender address.
HERALD_BOUNCE_DOMAIN = env.str("HERALD_BOUNCE_DOMAIN", default="")
# OAuth 2.0 providers of SMTP servers (changed only to test against fakes).
HERALD_MICROSOFT_AUTHORITY_HOST = env.str(
    "HERALD_MICROSOFT_AUTHORITY_HOST", default="https://login.microsoftonline.com"
)
HERALD_GOOGLE_AUTH_URL = env.str(
    "HERALD_GOOGLE_AUTH_URL", default="https://accounts.google.com/o/oauth2/v2/auth"
)
HERALD_GOOGLE_TOKEN_URL = env.str(
    "HERALD_GOOGLE_TOKEN_URL", default="https://oauth2.googleapis.com/token"
)
# DNS servers for the SPF/DKIM/DMARC checks of sender domains and the MX
# look-ups of direct delivery (IP addresses); empty: the system resolver.
HERALD_DNS_NAMESERVERS = env.list("HERALD_DNS_NAMESERVERS", default=[])
HERALD_DNS_PORT = env.int("HERALD_DNS_PORT", default=53)
# Per-provider throttling: how long a recipient domain's MX look-up (which
# mailbox provider hosts it) is trusted before it is looked up again.
HERALD_PROVIDER_MX_TTL_HOURS = env.int("HERALD_PROVIDER_MX_TTL_HOURS", default=7 * 24)
# The port direct delivery connects to on recipients' mail servers.
HERALD_DIRECT_SMTP_PORT = env.int("HERALD_DIRECT_SMTP_PORT", default=25)
# Send nothing from a dispatcher whose sender domain is not verified.
HERALD_REQUIRE_VERIFIED_DOMAINS = env.bool("HERALD_REQUIRE_VERIFIED_DOMAINS", default=False)
# Also offer List-Unsubscribe by mail (unsubscribe+<token>@<bounce domain>).
# Turn on only when that domain's mail reaches a bounce mailbox Herald reads.
HERALD_LIST_UNSUBSCRIBE_MAILTO = env.bool("HERALD_LIST_UNSUBSCRIBE_MAILTO", default=False)
# SMS: the region (ISO 3166 code, e.g. GB) of contacts' phone numbers
# written without a +country code; empty: such numbers are refused.
HERALD_SMS_DEFAULT_REGION = env.str("HERALD_SMS_DEFAULT_REGION", default="").upper()
# Twilio's REST API (changed only to test against a local stand-in).
HERALD_TWILIO_API_URL = env.str("HERALD_TWILIO_API_URL", default="https://api.twilio.com")
# Email service providers' tracking webhooks (/webhooks/<provider>/<dispatcher>/):
# the shared secret(s) "user:password" every request must send as HTTP basic
# auth (comma-separated to rotate); unset, every webhook is refused.
HERALD_WEBHOOK_SECRET = env.list("HERALD_WEBHOOK_SECRET", default=[])
# Mailgun's HTTP webhook signing key (Mailgun: Sending > Webhooks).
HERALD_MAILGUN_WEBHOOK_SIGNING_KEY = env.str("HERALD_MAILGUN_WEBHOOK_SIGNING_KEY", default="")
# A signed webhook older than this many seconds is refused as stale (Mailgun
# retries a failed webhook for up to 8 hours).
HERALD_WEBHOOK_MAX_AGE = env.int("HERALD_WEBHOOK_MAX_AGE", default=12 * 3600)
# Amazon SNS's own URLs (signing certificates, subscription confirmations):
# an SES notification signed with a certificate from anywhere else is refused.
# Changed only to test against a local stand-in.
HERALD_SNS_URL_PATTERN = env.str(
    "HERALD_SNS_URL_PATTERN", default=r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
)

# Shared by every web process (the API's per-token rate limit counts in it):
# Redis when there is one, this process's memory otherwise (make run).
_CACHE_URL = env.str("CACHE_URL", default=env.str("REDIS_URL", default=""))
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _CACHE_URL}
        if _CACHE_URL.startswith("redis")
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# --- REST API ---------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["api.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.AdminPermissions"],
    "DEFAULT_THROTTLE_CLASSES": ["api.throttling.TokenRateThrottle"],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.IdCursorPagination",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "api.exceptions.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Herald API",
    "DESCRIPTION": "Contacts, lists, templates, campaigns, dispatchers and jobs. "
    "Authenticate with `Authorization: Bearer <token>` (tokens are made in the admin).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "api.schema.error_responses",
    ],
}
# Requests per API token (DRF rate syntax: N/second, N/minute, N/hour).
HERALD_API_RATE = env.str("HERALD_API_RATE", default="600/minute")

# --- Celery -----------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=env.str("REDIS_URL", default=""))
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Longer than any task's hard time limit, so Redis never redelivers a
    # task that is still running.
    "visibility_timeout": 2 * 3600,
}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = Path(env.str("HERALD_BROKER_DIR", default=str(VAR_DIR / "broker")))
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
    }
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes every database connection before and after
# each task unless this is set: a new PostgreSQL backend for every batch
# (a process started, its caches cold), several a second for each
# worker process at full speed. Tasks keep their connection as web
# requests do, by CONN_MAX_AGE and CONN_HEALTH_CHECKS (config/celery.py).
CELERY_DB_REUSE_MAX = 2**31
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=3000)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=3600)
# The queue of the beat jobs (each dispatcher's outbound batches go to
# dispatch.<its server name>). Two installations sharing one Redis need
# different names.
CELERY_TASK_DEFAULT_QUEUE = env.str("HERALD_DEFAULT_QUEUE", default="herald")
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}
