"""Test settings: the base settings with a fast password hasher and no worker thread of its own."""

import dj_database_url

from .base import *  # noqa: F403
from .env import env_str

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
GROK_EMBEDDED_WORKER = False  # tests start the worker they need
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Tests run against the real PostgreSQL these machines provide (quota races need real row locks);
# pytest-django creates and drops its own `test_<name>` database there.
DATABASES = {
    "default": dj_database_url.parse(  # noqa: F405
        env_str("GROKWEB_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
    )
}
