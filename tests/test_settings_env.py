"""grokweb/settings/env.py: every setting read one way, malformed values refused by name."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from grokweb.settings.env import env_bool, env_choice, env_float, env_int, env_list, env_str


def test_values_and_defaults(monkeypatch):
    monkeypatch.setenv("GROKWEB_X_INT", " 42 ")
    monkeypatch.setenv("GROKWEB_X_FLOAT", "0.5")
    monkeypatch.setenv("GROKWEB_X_BOOL", "Yes")
    monkeypatch.setenv("GROKWEB_X_LIST", "a, b,,c ")
    monkeypatch.setenv("GROKWEB_X_EMPTY", "")
    assert env_int("GROKWEB_X_INT", 1) == 42
    assert env_float("GROKWEB_X_FLOAT", 1.0) == 0.5
    assert env_bool("GROKWEB_X_BOOL", False) is True
    assert env_list("GROKWEB_X_LIST") == ["a", "b", "c"]
    assert env_int("GROKWEB_X_EMPTY", 7) == 7  # set but empty: the default
    assert env_str("GROKWEB_X_UNSET", "d") == "d" and env_bool("GROKWEB_X_UNSET", True) is True


@pytest.mark.parametrize(
    ("read", "value"),
    [(lambda n: env_int(n, 1), "12x"), (lambda n: env_float(n, 1.0), "fast"), (lambda n: env_bool(n, False), "maybe")],
)
def test_malformed_values_stop_the_start_with_their_name(monkeypatch, read, value):
    monkeypatch.setenv("GROKWEB_X_BAD", value)
    with pytest.raises(ImproperlyConfigured, match="GROKWEB_X_BAD"):
        read("GROKWEB_X_BAD")


def test_a_choice_is_one_of_its_values_and_the_first_by_default(monkeypatch):
    monkeypatch.setenv("GROKWEB_X_CHOICE", "json")
    assert env_choice("GROKWEB_X_CHOICE", ("text", "json")) == "json"
    monkeypatch.setenv("GROKWEB_X_CHOICE", "")
    assert env_choice("GROKWEB_X_CHOICE", ("text", "json")) == "text"
    monkeypatch.setenv("GROKWEB_X_CHOICE", "yaml")
    with pytest.raises(ImproperlyConfigured, match="GROKWEB_X_CHOICE is 'yaml': use text or json"):
        env_choice("GROKWEB_X_CHOICE", ("text", "json"))
