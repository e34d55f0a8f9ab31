"""Production: PostgreSQL, Redis, workers apart from Daphne. Refuses to start half-configured."""

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .env import env_bool, env_int, env_str

for required in ("GROKWEB_SECRET_KEY", "DATABASE_URL", "REDIS_URL"):
    if not env_str(required):
        raise ImproperlyConfigured(f"{required} must be set in production")

DEBUG = False
GROK_EMBEDDED_WORKER = False  # workers run as `python manage.py run_inference_worker`
SESSION_COOKIE_SECURE = env_bool("GROKWEB_SECURE_COOKIES", True)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# HTTPS only: plain HTTP is redirected and browsers remember for a year (GROKWEB_HSTS_SECONDS).
SECURE_SSL_REDIRECT = env_bool("GROKWEB_SSL_REDIRECT", True)
SECURE_HSTS_SECONDS = env_int("GROKWEB_HSTS_SECONDS", 365 * 24 * 3600)
SECURE_HSTS_PRELOAD = env_bool("GROKWEB_HSTS_PRELOAD", True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "grokweb.staticfiles.StaticFilesStorage"},
}
