"""The doors of the site: headers (CSP, Permissions-Policy, HSTS), CORS on /v1, login lockout,
sign-up rate limit, password reset, and `check --deploy` with the production settings."""

import os
import re
import subprocess
import sys

import pytest
from django.core import mail
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from tests.stack import ROOT

PASSWORD = "a-Strong-pass-42"


@pytest.fixture(autouse=True)
def fresh_counts():
    """The sign-up limit counts in the cache: each test starts, and leaves, at zero."""
    cache.clear()
    yield
    cache.clear()


def directives(response) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {name: values for name, *values in (part.split() for part in policy.split(";") if part.strip())}


# -- headers ------------------------------------------------------------------------------------


def test_pages_carry_a_strict_csp_and_a_permissions_policy(client, ann):
    client.force_login(ann)
    response = client.get(reverse("chat"))
    csp = directives(response)
    assert csp["script-src"] == ["'self'"]  # no inline script, no eval: only our own files run
    assert csp["object-src"] == csp["base-uri"] == csp["frame-ancestors"] == ["'none'"]
    assert csp["connect-src"] == ["'self'", "ws://127.0.0.1:8000", "ws://localhost:8000"]
    assert csp["default-src"] == ["'self'"]
    # The one inline <script> is the config's JSON data block, which browsers do not execute.
    scripts = re.findall(rb"<script(?![^>]*\bsrc=)[^>]*>", response.content)
    assert scripts == [b'<script id="chat-config" type="application/json">']
    assert "camera=()" in response["Permissions-Policy"]
    assert "microphone=()" in response["Permissions-Policy"]


def test_the_review_page_style_carries_the_nonce(admin_client, ann, conversation_factory):
    conversation = conversation_factory(ann)
    response = admin_client.get(reverse("admin:chat_conversation_change", args=[conversation.pk]))
    nonce = re.search(rb'<style nonce="([^"]+)">', response.content).group(1).decode()
    assert f"'nonce-{nonce}'" in directives(response)["style-src"]


# -- CORS on /v1 --------------------------------------------------------------------------------


def test_cors_is_off_by_default(client, db):
    response = client.options("/v1/models", HTTP_ORIGIN="https://app.example", HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET")
    assert "Access-Control-Allow-Origin" not in response


def test_configured_origins_may_call_the_api_from_a_browser(client, db, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example"]
    preflight = client.options(
        "/v1/chat/completions",
        HTTP_ORIGIN="https://app.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type",
    )
    assert preflight.status_code == 200
    assert preflight["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in preflight["Access-Control-Allow-Methods"]
    assert {"authorization", "content-type"} <= set(preflight["Access-Control-Allow-Headers"].split(", "))
    # The answer itself, an error included, is readable by the page.
    refused = client.get("/v1/models", HTTP_ORIGIN="https://app.example")
    assert refused.status_code == 401 and refused["Access-Control-Allow-Origin"] == "https://app.example"
    # Only /v1 and only the configured origins.
    other = client.options("/v1/models", HTTP_ORIGIN="https://evil.example", HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET")
    assert "Access-Control-Allow-Origin" not in other
    page = client.get(reverse("login"), HTTP_ORIGIN="https://app.example")
    assert "Access-Control-Allow-Origin" not in page


# -- logins and sign-ups ------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/accounts/login/", "/admin/login/"])
def test_wrong_passwords_lock_that_user_out_from_that_address(url, user_factory, settings):
    user_factory("ann", is_staff=True)
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert client.post(url, {"username": "ann", "password": "wrong"}).status_code == 200
    locked = client.post(url, {"username": "ann", "password": "wrong"})
    assert locked.status_code == 429
    assert b"Too many attempts" in locked.content and b"15 minutes" in locked.content
    # Locked: even the right password is refused now...
    assert client.post(url, {"username": "ann", "password": PASSWORD}).status_code == 429
    # ...but not another user, nor the same user from another address.
    user_factory("bob", is_staff=True)
    assert client.post(url, {"username": "bob", "password": PASSWORD}).status_code == 302
    elsewhere = Client(REMOTE_ADDR="10.0.0.2")
    assert elsewhere.post(url, {"username": "ann", "password": PASSWORD}).status_code == 302


def test_sign_ups_from_one_address_are_limited(db, settings, django_user_model):
    settings.GROKWEB_SIGNUP_RATE = "3/h"
    client = Client()
    for i in range(3):
        data = {"username": f"bot{i}", "password1": PASSWORD, "password2": PASSWORD}
        assert client.post(reverse("signup"), data).status_code == 302
        client.logout()
    refused = client.post(reverse("signup"), {"username": "bot3", "password1": PASSWORD, "password2": PASSWORD})
    assert refused.status_code == 429 and b"Too many sign-ups" in refused.content
    assert not django_user_model.objects.filter(username="bot3").exists()
    other = Client(REMOTE_ADDR="10.0.0.2")
    assert other.post(reverse("signup"), {"username": "cleo", "password1": PASSWORD, "password2": PASSWORD}).status_code == 302


# -- password reset -----------------------------------------------------------------------------


def test_a_forgotten_password_is_reset_by_the_emailed_link(user_factory, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    user_factory("ann", email="ann@example.com")
    client = Client()
    assert b"Forgot your password?" in client.get(reverse("login")).content
    assert client.post(reverse("password_reset"), {"email": "ANN@example.com"}).status_code == 302
    assert client.post(reverse("password_reset"), {"email": "nobody@example.com"}).status_code == 302
    (sent,) = mail.outbox  # only to an address an account has
    assert sent.to == ["ann@example.com"]
    link = re.search(r"http://testserver(/accounts/reset/\S+/)", sent.body).group(1)
    form = client.get(link, follow=True)
    assert form.status_code == 200 and form.context["validlink"]
    new = "another-Strong-pass-43"
    done = client.post(form.redirect_chain[-1][0], {"new_password1": new, "new_password2": new})
    assert done.status_code == 302 and done.url == reverse("password_reset_complete")
    assert Client().post(reverse("login"), {"username": "ann", "password": new}).status_code == 302
    # Used once: the link is dead now.
    assert not client.get(link, follow=True).context["validlink"]


# -- production settings ------------------------------------------------------------------------


def test_check_deploy_finds_nothing_in_production(settings):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "grokweb.settings.production",
        "GROKWEB_SECRET_KEY": "x" * 20 + "a-long-random-production-secret-key-0123456789",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/unused",
        "REDIS_URL": "redis://127.0.0.1:6379/5",
        "GROKWEB_ALLOWED_HOSTS": "chat.example.com",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith("System check identified no issues")
