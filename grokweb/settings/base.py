"""Settings shared by every mode, read from the environment.

With no environment at all this runs the embedded default: SQLite, the in-memory channel layer,
the inference worker in a thread of the web process and the tiny demo checkpoint under var/.
`production.py` demands the real services; `test.py` trims for speed.
"""

import datetime as dt
from pathlib import Path

import dj_database_url

from csp.constants import NONCE, NONE, SELF

from grokweb.settings.env import env_bool, env_choice, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parents[2]
GROKWEB_VAR_DIR = Path(env_str("GROKWEB_VAR_DIR") or BASE_DIR / "var")

# Only the embedded default may fall back to a fixed key: production.py refuses to start without one.
SECRET_KEY = env_str("GROKWEB_SECRET_KEY", "insecure-embedded-default-key-change-me")
DEBUG = env_bool("GROKWEB_DEBUG", False)
ALLOWED_HOSTS = env_list("GROKWEB_ALLOWED_HOSTS", "127.0.0.1,localhost")
# The origins the site is served at, exactly as browsers send them (scheme://host[:port]): a
# websocket whose Origin is not one of them is refused (grokweb/asgi.py). By default the dev
# server (port 8000 on 127.0.0.1 and localhost) and https:// on every other allowed host.
GROKWEB_PUBLIC_ORIGINS = env_list("GROKWEB_PUBLIC_ORIGINS") or [
    "http://127.0.0.1:8000",
    "http://localhost:8000",
    *(f"https://{host}" for host in ALLOWED_HOSTS if host not in {"*", "127.0.0.1", "localhost"}),
]
CSRF_TRUSTED_ORIGINS = env_list("GROKWEB_CSRF_TRUSTED_ORIGINS") or GROKWEB_PUBLIC_ORIGINS
# Browser front ends on other origins that may call /v1 (django-cors-headers); none by default.
CORS_ALLOWED_ORIGINS = env_list("GROKWEB_CORS_ALLOWED_ORIGINS")
CORS_URLS_REGEX = r"^/v1/"

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "corsheaders",
    "csp",
    "axes",
    "django_ratelimit",
    "chat",
]

MIDDLEWARE = [
    "corsheaders.middleware.CorsMiddleware",  # first: it answers preflights itself
    "django.middleware.security.SecurityMiddleware",
    "django_permissions_policy.PermissionsPolicyMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks
]

ROOT_URLCONF = "grokweb.urls"
ASGI_APPLICATION = "grokweb.asgi.application"

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
                "chat.context_processors.model",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{GROKWEB_VAR_DIR / 'db.sqlite3'}", conn_max_age=60
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded worker thread writes while the web thread does: take the write lock up front
    # and wait for it, instead of failing with "database is locked"; WAL lets readers go on.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "chat.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat"
LOGOUT_REDIRECT_URL = "login"

# django-axes first: it refuses a locked-out client before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Wrong passwords in a row, for one username from one address (so that nobody can lock another
# person out from elsewhere), before that pair is refused for the cool-off time, on
# /accounts/login/ and /admin/login/ alike. Addresses are the client's as Daphne sees it: behind
# a proxy run Daphne with --proxy-headers.
AXES_FAILURE_LIMIT = env_int("GROKWEB_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = dt.timedelta(minutes=env_float("GROKWEB_LOGIN_LOCKOUT_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False  # no banner on every manage.py command; lockouts are still logged
# Sign-ups one address may make (django-ratelimit's "count/period": s, m, h or d).
GROKWEB_SIGNUP_RATE = env_str("GROKWEB_SIGNUP_RATE", "10/h")

# How long a chat socket trusts its last look at its session before a frame looks again: the
# events of chat/sessions.py end it at once on a logout, a new password or a deactivation, so
# this bounds only what an event missed (one Redis lost, an expiry).
GROKWEB_SESSION_RECHECK_SECONDS = env_float("GROKWEB_SESSION_RECHECK_SECONDS", 30)

# Password reset mails: printed on the console unless an SMTP server is configured.
EMAIL_BACKEND = env_str("GROKWEB_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("GROKWEB_EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("GROKWEB_EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("GROKWEB_EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("GROKWEB_EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("GROKWEB_EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("GROKWEB_EMAIL_USE_SSL", False)
DEFAULT_FROM_EMAIL = env_str("GROKWEB_DEFAULT_FROM_EMAIL", "grokweb <noreply@localhost>")
PASSWORD_RESET_TIMEOUT = env_int("GROKWEB_PASSWORD_RESET_SECONDS", 3 * 24 * 3600)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("GROKWEB_TIME_ZONE", "UTC")  # quota days reset at midnight here
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = GROKWEB_VAR_DIR / "staticfiles"
# The embedded default serves static files straight from the source folders (no collectstatic);
# var/ must exist anyway for SQLite.
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py's defaults break under load: a 5 s socket timeout, which the layer's
                # 5 s BZPOPMIN races ("Timeout reading"), and an asyncio pool that raises past
                # 100 connections instead of waiting (hundreds of sockets joining groups at once).
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30, "max_connections": 2000}],
                "capacity": 1000,
                "expiry": 30,
            },
        }
    }
    # The sign-up rate limit counts in Redis, shared by every Daphne process.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    # django-ratelimit lists only django-redis among Redis caches; Django's own increments
    # atomically (INCR) too.
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    # Embedded: one process, so its memory is shared by all the requests django-ratelimit counts.
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.E003", "django_ratelimit.W001"]

# The inference worker. With no REDIS_URL it runs in a thread of the web process.
GROK_CHECKPOINT = env_str("GROK_CHECKPOINT", str(GROKWEB_VAR_DIR / "tiny"))
GROK_QUANT = env_str("GROK_QUANT", "int8")  # int8 | nf4 | none
GROK_DEVICE = env_str("GROK_DEVICE")  # "" = cuda when available, else cpu
GROK_DTYPE = env_str("GROK_DTYPE")  # activations: "" = bfloat16 (float32 on cpu for a tiny model)
GROK_MAX_GPU_MEMORY = env_str("GROK_MAX_GPU_MEMORY")
GROK_MAX_CPU_MEMORY = env_str("GROK_MAX_CPU_MEMORY")
GROK_OFFLOAD_DIR = env_str("GROK_OFFLOAD_DIR")
# experts: each expert placed on its own, CPU ones computed by the CPU; layers: accelerate's whole-layer offload
GROK_OFFLOAD = env_str("GROK_OFFLOAD", "experts")
GROK_CPU_THREADS = env_int("GROK_CPU_THREADS", 0)  # torch threads for the CPU's share of the work; 0 = torch's default
GROK_MAX_BATCH = env_int("GROK_MAX_BATCH", 8)
# KV cache rows beyond the batch's, each as big as a slot, that keep finished replies' prompts for
# prefix reuse (a persona's system prompt, a conversation's next turn); 0 = no reuse.
GROK_PREFIX_CACHE = env_int("GROK_PREFIX_CACHE", 8)
# Tokens of context per reply (0 = the model's own, 8192): with GROK_MAX_BATCH it sizes the KV cache.
GROK_CONTEXT_LEN = env_int("GROK_CONTEXT_LEN", 0)
GROK_EMBEDDED_WORKER = env_bool("GROK_EMBEDDED_WORKER", not REDIS_URL)
# local: the worker runs the model itself. openai: it drives an engine server speaking the
# OpenAI completions protocol (SGLang, vLLM, llama.cpp's llama-server; docs/deployment.md), and
# GROK_CHECKPOINT then only needs tokenizer.model (and config.json for the name and context).
GROK_ENGINE = env_choice("GROK_ENGINE", ("local", "openai"))
GROK_ENGINE_URL = env_str("GROK_ENGINE_URL")  # e.g. http://10.0.0.5:8000 (the /v1 is added)
GROK_ENGINE_MODEL = env_str("GROK_ENGINE_MODEL")  # the server's model id ("" = its only one)
GROK_ENGINE_API_KEY = env_str("GROK_ENGINE_API_KEY")
GROK_ENGINE_MAX_IN_FLIGHT = env_int("GROK_ENGINE_MAX_IN_FLIGHT", 16)  # requests a worker streams at once
# Seconds the server may stay silent (no connection, no token) before the reply fails.
GROK_ENGINE_TIMEOUT = env_float("GROK_ENGINE_TIMEOUT", 300)
# Send each reply's user as `cache_salt` (vLLM): its prefix cache is then per user.
GROK_ENGINE_CACHE_SALT = env_bool("GROK_ENGINE_CACHE_SALT", True)
# Sampling defaults for every reply (recorded on it); a reply may use at most half the context.
GROK_MAX_NEW_TOKENS = env_int("GROK_MAX_NEW_TOKENS", 1024)
GROK_TEMPERATURE = env_float("GROK_TEMPERATURE", 0.8)
GROK_TOP_P = env_float("GROK_TOP_P", 0.95)
GROK_TOP_K = env_int("GROK_TOP_K", 0)  # 0 = off
# Replies waiting or being written, across workers, beyond which a send is refused as `busy`.
GROK_MAX_QUEUE = env_int("GROK_MAX_QUEUE", 64)
# On SIGTERM a worker lets its replies finish for this long; the rest end as failed, text kept.
GROK_WORKER_DRAIN_SECONDS = env_float("GROK_WORKER_DRAIN_SECONDS", 15)
# A job whose worker has not shown a sign of life for this long (its worker died) is taken over
# by another worker; live workers refresh theirs every third of it, however long a step takes.
GROK_JOB_CLAIM_SECONDS = env_float("GROK_JOB_CLAIM_SECONDS", 30)
# Workers that may start on one reply before it is marked failed (its text kept).
GROK_JOB_MAX_ATTEMPTS = env_int("GROK_JOB_MAX_ATTEMPTS", 3)

# Bounds on what one message may carry, enforced before anything is queued.
GROKWEB_MAX_MESSAGE_CHARS = env_int("GROKWEB_MAX_MESSAGE_CHARS", 16000)

# Share links (chat/sharing.py): false = a viewer must be signed in (any account) to open one.
GROKWEB_SHARE_PUBLIC = env_bool("GROKWEB_SHARE_PUBLIC", True)
# The largest file the settings page imports (chat/account.py), zipped or not.
GROKWEB_IMPORT_MAX_BYTES = env_int("GROKWEB_IMPORT_MAX_BYTES", 20 * 2**20)

# Shared secret of the billing webhook (docs/billing.md); empty = the webhook refuses every call.
GROKWEB_BILLING_WEBHOOK_SECRET = env_str("GROKWEB_BILLING_WEBHOOK_SECRET")

# Headers. The CSP lets only our own files run: the pages have no inline script but JSON data
# blocks (json_script), which browsers never execute; the review page's <style> carries a nonce.
# Websockets go to the public origins (`'self'` covers ws: only in newer browsers).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, NONCE],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF, *(origin.replace("http", "ws", 1) for origin in GROKWEB_PUBLIC_ORIGINS)],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
PERMISSIONS_POLICY = {
    feature: []
    for feature in ("camera", "microphone", "geolocation", "payment", "usb", "browsing-topics")
}
SECURE_SSL_REDIRECT = env_bool("GROKWEB_SSL_REDIRECT", False)
# Probes and Prometheus talk plain HTTP to the process itself, behind the TLS proxy.
SECURE_REDIRECT_EXEMPT = [r"^(healthz|readyz|metrics)$"]
SECURE_HSTS_SECONDS = env_int("GROKWEB_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("GROKWEB_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("GROKWEB_HSTS_PRELOAD", False)

# text | json (one JSON object a line, with `reply_id` on the lines about a reply)
GROKWEB_LOG_FORMAT = env_choice("GROKWEB_LOG_FORMAT", ("text", "json"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler"}
        | ({"formatter": "json"} if GROKWEB_LOG_FORMAT == "json" else {}),
    },
    "root": {"handlers": ["console"], "level": env_str("GROKWEB_LOG_LEVEL", "INFO")},
    # httpx logs every request at INFO: a line a reply with GROK_ENGINE=openai
    "loggers": {"httpx": {"level": "WARNING"}},
}
# Bearer token of /metrics; unset = loopback clients only (chat/operations.py).
GROKWEB_METRICS_TOKEN = env_str("GROKWEB_METRICS_TOKEN")
