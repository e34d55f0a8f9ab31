"""The billing webhook (docs/billing.md): signatures, replays, duplicates, the subscription's life."""

import json
import time

import pytest
from django.test import Client
from django.urls import reverse

from chat import billing, plans
from chat.models import BillingEvent, Plan, Subscription

pytestmark = pytest.mark.django_db

SECRET = "whsec-test-0123456789"
PERIOD_END = "2030-02-01T00:00:00+00:00"


@pytest.fixture(autouse=True)
def secret(settings):
    settings.GROKWEB_BILLING_WEBHOOK_SECRET = SECRET


@pytest.fixture
def webhook():
    """webhook(event, ...) posts it signed as a provider would, from a client that enforces
    CSRF like a browser's: the webhook is authenticated by its signature alone."""
    client = Client(enforce_csrf_checks=True)

    def post(event, *, timestamp=None, secret=SECRET, signature=None, body=None):
        body = body if body is not None else json.dumps(event).encode()
        timestamp = str(int(time.time()) if timestamp is None else timestamp)
        headers = {
            "X-Grokweb-Timestamp": timestamp,
            "X-Grokweb-Signature": signature or billing.signature(secret, timestamp, body),
        }
        return client.post(
            reverse("billing_webhook"), body, content_type="application/json", headers=headers
        )

    return post


def event(type_: str, *, id_: str = "evt_1", created: int = 1_767_225_600, **data) -> dict:
    data = {"username": "ann", **data}
    return {"id": id_, "type": f"subscription.{type_}", "created": created, "data": data}


def created(**data) -> dict:
    return event("created", plan="premium", current_period_end=PERIOD_END, subscription_id="sub_9", **data)


def test_a_signed_event_creates_the_subscription(ann, webhook):
    response = webhook(created())

    assert response.status_code == 200
    assert response.json() == {"event_id": "evt_1", "outcome": "applied", "duplicate": False}
    subscription = Subscription.objects.get(user=ann)
    assert (subscription.plan.slug, subscription.status, subscription.external_id) == (
        "premium", "active", "sub_9",
    )
    assert subscription.current_period_end.isoformat() == PERIOD_END
    assert BillingEvent.objects.get().payload == created()


@pytest.mark.parametrize(
    "tamper",
    [
        {"secret": "not-the-secret"},
        {"signature": "sha256=" + "0" * 64},
        {"signature": "md5=abc"},
        {"signature": "sha256=ünïcode"},
    ],
)
def test_a_bad_signature_is_refused_and_changes_nothing(ann, webhook, tamper):
    response = webhook(created(), **tamper)
    assert response.status_code == 401
    assert not Subscription.objects.exists() and not BillingEvent.objects.exists()


def test_a_signature_over_another_body_is_refused(ann, webhook):
    timestamp = str(int(time.time()))
    signed_for = json.dumps(event("created", plan="premium")).encode()
    response = webhook(
        None,
        body=json.dumps(event("created", plan="premium-plus")).encode(),
        timestamp=timestamp,
        signature=billing.signature(SECRET, timestamp, signed_for),
    )
    assert response.status_code == 401


def test_missing_headers_are_refused(ann):
    response = Client().post(reverse("billing_webhook"), created(), content_type="application/json")
    assert response.status_code == 401
    assert "X-Grokweb-Signature" in response.json()["error"]


@pytest.mark.parametrize("age, status", [(-290, 200), (290, 200), (-310, 401), (310, 401), (3600, 401)])
def test_only_timestamps_within_five_minutes_are_accepted(ann, webhook, age, status):
    """A captured, correctly signed call replayed later (or stamped in the future) is refused."""
    response = webhook(created(), timestamp=int(time.time()) - age)
    assert response.status_code == status
    assert Subscription.objects.exists() == (status == 200)


def test_a_duplicate_event_id_is_answered_but_applied_once(ann, webhook):
    assert webhook(created()).json()["duplicate"] is False
    # Staff move ann by hand; a redelivery of the first event (re-signed, as retries are) must
    # not undo that.
    Subscription.objects.filter(user=ann).update(plan=Plan.objects.get(slug="premium-plus"))

    response = webhook(created())

    assert response.status_code == 200
    assert response.json() == {"event_id": "evt_1", "outcome": "applied", "duplicate": True}
    assert Subscription.objects.get(user=ann).plan.slug == "premium-plus"
    assert BillingEvent.objects.count() == 1


def test_the_life_of_a_subscription(ann, webhook):
    webhook(created(id_="e1", created=100))
    assert plans.current_plan(ann).slug == "premium"

    end = "2030-03-01T00:00:00Z"
    webhook(event("renewed", id_="e2", created=200, plan="premium-plus", current_period_end=end))
    subscription = Subscription.objects.get(user=ann)
    assert (subscription.plan.slug, subscription.current_period_end.isoformat()) == (
        "premium-plus", "2030-03-01T00:00:00+00:00",
    )

    webhook(event("past_due", id_="e3", created=300))
    assert Subscription.objects.get(user=ann).status == "past_due"
    assert plans.current_plan(ann).slug == "free"  # Free limits until it is paid

    webhook(event("cancelled", id_="e4", created=400))
    subscription.refresh_from_db()
    assert (subscription.status, subscription.plan.slug) == ("cancelled", "premium-plus")
    assert plans.current_plan(ann).slug == "free"


def test_an_event_older_than_the_last_applied_is_stale(ann, webhook):
    webhook(created(id_="e1", created=100))
    webhook(event("cancelled", id_="e2", created=300))

    response = webhook(event("renewed", id_="e3", created=200, plan="premium"))  # arrived late

    assert response.json()["outcome"] == "stale"
    assert Subscription.objects.get(user=ann).status == "cancelled"


def test_past_due_without_a_subscription_is_ignored(ann, webhook):
    assert webhook(event("past_due")).json()["outcome"] == "ignored"
    assert not Subscription.objects.exists()


def test_an_unknown_user_is_refused_unrecorded_so_a_retry_can_succeed(webhook, user_factory):
    assert webhook(created()).status_code == 422
    assert not BillingEvent.objects.exists()
    user_factory("ann")
    assert webhook(created()).json()["outcome"] == "applied"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"id": "e", "type": "subscription.created", "created": 1, "data": []}).encode(),
        json.dumps(event("created")).encode(),  # no plan
        json.dumps(event("upgraded", plan="premium")).encode(),
        json.dumps(event("created", plan="premium", current_period_end="2026-02-01")).encode(),
        b"[" * 2000,  # deeper than the parser could recurse
        json.dumps(created(id_="e" * 201)).encode(),  # longer than the stored id
        json.dumps(created(username="ann\u0000")).encode(),  # NUL: PostgreSQL cannot store it
        json.dumps({**created(), "type": ["subscription.created"]}).encode(),
    ],
)
def test_malformed_events_are_400(ann, webhook, body):
    assert webhook(None, body=body).status_code == 400
    assert not BillingEvent.objects.exists()


def test_an_unknown_plan_is_refused(ann, webhook):
    assert webhook(event("created", plan="gold")).status_code == 422
    assert not Subscription.objects.exists()


def test_without_a_secret_the_webhook_refuses_everything(ann, webhook, settings):
    settings.GROKWEB_BILLING_WEBHOOK_SECRET = ""
    assert webhook(created(), secret="").status_code == 503
    assert not Subscription.objects.exists()


def test_only_post(client):
    assert client.get(reverse("billing_webhook")).status_code == 405
