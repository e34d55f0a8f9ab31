"""Reading settings from the environment, one way for every setting.

Names: `GROK_*` configures the model and its workers, `GROKWEB_*` everything else of the app;
`DATABASE_URL` and `REDIS_URL` keep their conventional names. A setting of our own has the name
of its variable (`settings.GROKWEB_MAX_MESSAGE_CHARS`); one of Django's keeps Django's name
(`SECRET_KEY` from `GROKWEB_SECRET_KEY`). A malformed value stops the start with its name.
"""

import os

from django.core.exceptions import ImproperlyConfigured

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool) -> bool:
    value = env_str(name, str(default)).lower()
    if value not in TRUE | FALSE:
        raise ImproperlyConfigured(f"{name} is {value!r}: use true or false")
    return value in TRUE


def env_choice(name: str, choices: tuple[str, ...]) -> str:
    """One of `choices`; unset or empty, the first."""
    value = env_str(name) or choices[0]
    if value not in choices:
        raise ImproperlyConfigured(f"{name} is {value!r}: use {' or '.join(choices)}")
    return value


def env_int(name: str, default: int) -> int:
    return _parse(name, default, int)


def env_float(name: str, default: float) -> float:
    return _parse(name, default, float)


def env_list(name: str, default: str = "") -> list[str]:
    """A comma-separated list, blanks dropped."""
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def _parse(name: str, default, kind: type):
    value = env_str(name)
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} is {value!r}: it must be {kind.__name__}") from None
