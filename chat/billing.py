"""Subscriptions: from a billing provider's signed webhook (docs/billing.md), or granted by staff.

No vendor's SDK: any provider, or a few lines of glue in front of one, posts the events of
docs/billing.md signed with the shared secret `settings.GROKWEB_BILLING_WEBHOOK_SECRET`.
"""

import datetime as dt
import hashlib
import hmac
import time

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from chat.errors import ChatError
from chat.inputs import parse_json
from chat.models import BillingEvent, Plan, Subscription, User

SIGNATURE_TOLERANCE = 300  # seconds either way: an older (replayed) or far-future event is refused
MAX_EVENT_BYTES = 256 * 1024  # an event is a few hundred bytes; its provider's metadata may add some
EVENT_STATUS = {
    "subscription.created": Subscription.Status.ACTIVE,
    "subscription.renewed": Subscription.Status.ACTIVE,
    "subscription.past_due": Subscription.Status.PAST_DUE,
    "subscription.cancelled": Subscription.Status.CANCELLED,
}

# The stored fields' sizes: a longer id is refused, not cut, since a cut one could collide.
LENGTHS = {
    "id": BillingEvent._meta.get_field("event_id").max_length,
    "subscription_id": Subscription._meta.get_field("external_id").max_length,
}


class WebhookError(Exception):
    """A refused webhook call, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Grokweb-Signature` value: HMAC-SHA256 over "<timestamp>.<raw body>"."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def check_signature(
    secret: str, timestamp: str | None, sent: str | None, body: bytes, *, now: float | None = None
) -> None:
    if not timestamp or not sent:
        raise WebhookError(
            401, "The X-Grokweb-Timestamp and X-Grokweb-Signature headers are required."
        )
    # Constant-time: a byte-by-byte compare would tell an attacker how much of a guess is right.
    if not hmac.compare_digest(signature(secret, timestamp, body).encode(), sent.encode()):
        raise WebhookError(401, "The signature does not match.")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookError(401, "The timestamp is not a number of seconds.") from None
    if abs((time.time() if now is None else now) - sent_at) > SIGNATURE_TOLERANCE:
        raise WebhookError(401, "The timestamp is more than 5 minutes away from now.")


def parse_event(body: bytes) -> dict:
    """The event's fields, checked: {id, type, created (aware datetime), username, plan,
    current_period_end, subscription_id, payload (the whole event)}."""
    try:
        event = parse_json(body, max_bytes=MAX_EVENT_BYTES)
    except ChatError as error:
        raise WebhookError(400, f"Malformed event: {error.message}") from None
    try:
        data = event["data"]
        fields = {
            "id": str(event["id"]),
            "type": str(event["type"]),
            "created": dt.datetime.fromtimestamp(int(event["created"]), dt.timezone.utc),
            "username": str(data["username"]),
            "plan": str(data["plan"]) if data.get("plan") else None,
            "current_period_end": _datetime(data.get("current_period_end")),
            "subscription_id": str(data.get("subscription_id") or ""),
            "payload": event,
        }
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, OSError) as exc:
        raise WebhookError(400, f"Malformed event: {exc!r}.") from None
    for name in ("id", "subscription_id"):
        max_length = LENGTHS[name]
        if len(fields[name]) > max_length:
            raise WebhookError(400, f"The event's {name} is longer than {max_length} characters.")
    if fields["type"] not in EVENT_STATUS:
        raise WebhookError(400, f"Unknown event type {fields['type']!r}.")
    if fields["type"] in ("subscription.created", "subscription.renewed") and not fields["plan"]:
        raise WebhookError(400, f"A {fields['type']} event needs data.plan.")
    return fields


def _datetime(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    parsed = dt.datetime.fromisoformat(value)
    if timezone.is_naive(parsed):
        raise ValueError("current_period_end needs a UTC offset")
    return parsed


@transaction.atomic
def do_apply_event(body: bytes) -> tuple[BillingEvent, bool]:
    """Apply a verified event to its user's subscription: (its record, applied by this call?).

    An event id seen before is not applied again (the provider retries until it hears 2xx). An
    event older than the last one applied to that subscription is recorded as `stale` and
    changes nothing, so a late "renewed" cannot undo a "cancelled" sent after it.
    """
    fields = parse_event(body)
    try:
        with transaction.atomic():  # a savepoint: a duplicate leaves the outer transaction usable
            record = BillingEvent.objects.create(
                event_id=fields["id"], type=fields["type"], payload=fields["payload"], outcome=""
            )
    except IntegrityError:  # also when a concurrent delivery of the same id committed first
        return BillingEvent.objects.get(event_id=fields["id"]), False
    user = User.objects.filter(username=fields["username"]).first()
    if user is None:  # raising rolls the record back, so a retry after the fix is applied
        raise WebhookError(422, f"No user {fields['username']!r}.")
    subscription = Subscription.objects.select_for_update().filter(user=user).first()
    if subscription is not None and subscription.last_event_at and (
        fields["created"] < subscription.last_event_at
    ):
        record.outcome = "stale"
    elif subscription is None and not fields["plan"]:
        record.outcome = "ignored"  # past_due / cancelled for a subscription never created here
    else:
        subscription = subscription or Subscription(user=user)
        if fields["plan"]:
            plan = Plan.objects.filter(slug=fields["plan"]).first()
            if plan is None:
                raise WebhookError(422, f"No plan {fields['plan']!r}.")
            subscription.plan = plan
        subscription.status = EVENT_STATUS[fields["type"]]
        if fields["current_period_end"] is not None:
            subscription.current_period_end = fields["current_period_end"]
        subscription.external_id = fields["subscription_id"] or subscription.external_id
        subscription.last_event_at = fields["created"]
        subscription.save()
        record.outcome = "applied"
    record.save(update_fields=["outcome"])
    return record, True


def do_receive_webhook(
    body: bytes, *, timestamp: str | None, sent_signature: str | None, now: float | None = None
) -> tuple[BillingEvent, bool]:
    """Verify, then apply, one webhook call; WebhookError when it is refused."""
    secret = settings.GROKWEB_BILLING_WEBHOOK_SECRET
    if not secret:
        raise WebhookError(
            503, "The billing webhook is not configured (GROKWEB_BILLING_WEBHOOK_SECRET)."
        )
    check_signature(secret, timestamp, sent_signature, body, now=now)
    return do_apply_event(body)


def do_grant_plan(user: User, plan: Plan, *, days: int | None = None) -> Subscription:
    """Put `user` on `plan` by hand (admin, `grant_plan`): active for `days`, or with no end."""
    end = timezone.now() + dt.timedelta(days=days) if days else None
    subscription, _ = Subscription.objects.update_or_create(
        user=user,
        defaults={"plan": plan, "status": Subscription.Status.ACTIVE, "current_period_end": end},
    )
    return subscription
