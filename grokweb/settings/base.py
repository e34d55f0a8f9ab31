"""Settings shared by every mode, read from the environment.

With no environment at all this runs the embedded default: SQLite, the in-memory channel layer,
the inference worker in a thread of the web process and the tiny demo checkpoint under var/.
`production.py` demands the real services; `test.py` trims for speed.
"""

from pathlib import Path

import dj_database_url

from grokweb.settings.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parents[2]
GROKWEB_VAR_DIR = Path(env_str("GROKWEB_VAR_DIR") or BASE_DIR / "var")

# Only the embedded default may fall back to a fixed key: production.py refuses to start without one.
SECRET_KEY = env_str("GROKWEB_SECRET_KEY", "insecure-embedded-default-key-change-me")
DEBUG = env_bool("GROKWEB_DEBUG", False)
ALLOWED_HOSTS = env_list("GROKWEB_ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("GROKWEB_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "chat",
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
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# The inference worker. With no REDIS_URL it runs in a thread of the web process.
GROK_CHECKPOINT = env_str("GROK_CHECKPOINT", str(GROKWEB_VAR_DIR / "tiny"))
GROK_QUANT = env_str("GROK_QUANT", "int8")  # int8 | nf4 | none
GROK_DEVICE = env_str("GROK_DEVICE")  # "" = cuda when available, else cpu
GROK_DTYPE = env_str("GROK_DTYPE")  # activations: "" = bfloat16 on cuda, float32 on cpu
GROK_MAX_GPU_MEMORY = env_str("GROK_MAX_GPU_MEMORY")
GROK_MAX_CPU_MEMORY = env_str("GROK_MAX_CPU_MEMORY")
GROK_OFFLOAD_DIR = env_str("GROK_OFFLOAD_DIR")
GROK_MAX_BATCH = env_int("GROK_MAX_BATCH", 8)
# Tokens of context per reply (0 = the model's own, 8192): with GROK_MAX_BATCH it sizes the KV cache.
GROK_CONTEXT_LEN = env_int("GROK_CONTEXT_LEN", 0)
GROK_EMBEDDED_WORKER = env_bool("GROK_EMBEDDED_WORKER", not REDIS_URL)
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

# Shared secret of the billing webhook (docs/billing.md); empty = the webhook refuses every call.
GROKWEB_BILLING_WEBHOOK_SECRET = env_str("GROKWEB_BILLING_WEBHOOK_SECRET")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("GROKWEB_LOG_LEVEL", "INFO")},
}
