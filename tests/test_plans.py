"""Plans and their limits (chat.plans): personas per plan, the daily quotas at their edges, the
day boundary in the configured time zone, races between sockets, lapses, the ledger."""

import datetime as dt
import threading
import time
from zoneinfo import ZoneInfo

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from chat import actions, jobs, plans
from chat.errors import ChatError
from chat.models import Message, Plan, Subscription, UsageEntry
from chat.replies import do_start_reply
from tests.test_prompts import CharTokenizer

pytestmark = pytest.mark.django_db

UTC = dt.timezone.utc


def set_limits(slug: str = "free", **limits) -> Plan:
    Plan.objects.filter(slug=slug).update(**limits)
    return Plan.objects.get(slug=slug)


def send(user, content="hi", *, conversation_id=None, persona="regular"):
    return actions.do_send_message(
        user, conversation_id=conversation_id, content=content, persona_slug=persona
    )


def finish(reply: Message, prompt_tokens: int = 10, completion_tokens: int = 5) -> Message:
    """What the worker does at the end of a reply: save it finished, charge it to the ledger."""
    reply.status, reply.content = Message.Status.DONE, "ok"
    reply.prompt_tokens, reply.completion_tokens = prompt_tokens, completion_tokens
    reply.save()
    plans.do_record_usage(reply)
    return reply


def refused(call, *args, **kwargs) -> ChatError:
    with pytest.raises(ChatError) as raised:
        call(*args, **kwargs)
    assert raised.value.code == "quota", raised.value.message
    return raised.value


@pytest.fixture
def frozen(monkeypatch):
    """frozen(datetime): timezone.now() (and so auto_now fields) returns it until changed."""
    clock = {}
    monkeypatch.setattr(timezone, "now", lambda: clock["now"])

    def set_now(moment: dt.datetime) -> None:
        clock["now"] = moment

    return set_now


# --- plans as data --------------------------------------------------------------------------


def test_the_three_plans_are_seeded_and_grok_is_for_paid_plans_only():
    seeded = {
        p.slug: (p.name, sorted(p.personas.values_list("slug", flat=True))) for p in Plan.objects.all()
    }
    assert seeded == {
        "free": ("Free", ["regular"]),
        "premium": ("Premium", ["grok", "regular"]),
        "premium-plus": ("Premium+", ["grok", "regular"]),
    }
    free, premium, plus = Plan.objects.order_by("sort_order")
    assert free.messages_per_day < premium.messages_per_day < plus.messages_per_day
    assert free.max_new_tokens < premium.max_new_tokens < plus.max_new_tokens


def test_a_new_user_is_on_free_and_the_grok_persona_is_locked(ann, job_calls):
    assert plans.current_plan(ann).slug == "free"
    assert [(p.slug, p.allowed) for p in actions.personas_for(ann)] == [("grok", False), ("regular", True)]

    error = refused(send, ann, persona="grok")

    assert "Grok persona is not included in the Free plan" in error.message
    assert error.extra["resets_at"] is None  # waiting does not help; upgrading does
    assert [offer["name"] for offer in error.extra["upgrade"]] == ["Premium", "Premium+"]
    assert "Premium: 500 messages and 1,000,000 tokens a day" in error.message
    assert not Message.objects.exists()


def test_a_send_without_a_persona_starts_on_the_first_one_the_plan_allows(ann, job_calls):
    message, _ = actions.do_send_message(ann, conversation_id=None, content="hi", persona_slug=None)
    assert message.conversation.persona.slug == "regular"


def test_the_reply_carries_its_plans_reply_and_context_limits(ann, subscribe, job_calls):
    _, reply = send(ann)
    assert reply.generation == {"max_new_tokens": 512, "context_len": 4096}
    finish(reply)
    subscribe(ann, "premium")
    _, reply = send(ann, persona="grok")
    assert reply.generation == {"max_new_tokens": 1024, "context_len": 8192}


def test_staff_edits_of_a_plan_apply_to_the_next_reply(ann, job_calls):
    set_limits(max_new_tokens=100, context_len=2048)
    _, reply = send(ann)
    assert reply.generation == {"max_new_tokens": 100, "context_len": 2048}


# --- daily limits at their edges ------------------------------------------------------------


def test_messages_exactly_at_the_limit_pass_and_one_over_is_refused(ann, job_calls, frozen):
    frozen(dt.datetime(2026, 5, 4, 10, 0, tzinfo=UTC))
    set_limits(messages_per_day=3)
    message, reply = send(ann)
    finish(reply)
    _, reply = actions.do_regenerate(ann, message.conversation_id)  # a regenerate costs one too
    finish(reply)
    _, reply = send(ann, "third", conversation_id=message.conversation_id)  # the 3rd of 3
    finish(reply)
    assert plans.plan_status(ann)["messages_left"] == 0

    error = refused(send, ann, "fourth", conversation_id=message.conversation_id)

    assert "all 3 messages of the Free plan for today" in error.message
    assert "reset at midnight (UTC)" in error.message
    assert error.extra["resets_at"] == "2026-05-05T00:00:00+00:00"
    assert [offer["slug"] for offer in error.extra["upgrade"]] == ["premium", "premium-plus"]
    assert message.conversation.messages.count() == 5  # the regenerate added a version; "fourth" not saved


def test_regenerate_and_edit_over_the_limit_change_nothing(ann, job_calls):
    set_limits(messages_per_day=1)
    message, reply = send(ann)
    finish(reply)

    refused(actions.do_regenerate, ann, message.conversation_id)
    refused(actions.do_edit_message, ann, message.id, "edited")

    message.refresh_from_db()
    assert message.content == "hi"
    assert list(message.conversation.messages.values_list("id", flat=True)) == [message.id, reply.id]


def test_tokens_exactly_at_the_limit_are_refused_one_below_pass(ann, job_calls):
    set_limits(tokens_per_day=100)
    message, reply = send(ann)
    finish(reply, prompt_tokens=60, completion_tokens=39)  # 99 used, 1 left
    _, reply = send(ann, "more", conversation_id=message.conversation_id)
    finish(reply, prompt_tokens=1, completion_tokens=0)  # 100 used

    error = refused(send, ann, "again", conversation_id=message.conversation_id)

    assert "all 100 tokens of the Free plan for today" in error.message
    assert plans.plan_status(ann)["tokens_left"] == 0


def test_the_day_resets_at_midnight_in_the_configured_time_zone(ann, job_calls, frozen, settings):
    settings.TIME_ZONE = "Asia/Tokyo"  # UTC+9: its midnight is 15:00 UTC
    set_limits(messages_per_day=1)
    frozen(dt.datetime(2026, 3, 10, 14, 59, 59, tzinfo=UTC))  # 23:59:59 in Tokyo
    _, reply = send(ann)
    finish(reply)

    error = refused(send, ann, "one more")
    assert error.extra["resets_at"] == "2026-03-11T00:00:00+09:00"
    assert "midnight (Asia/Tokyo)" in error.message

    frozen(dt.datetime(2026, 3, 10, 15, 0, tzinfo=UTC))  # still the 10th in UTC, the 11th in Tokyo
    send(ann, "a new day")
    assert plans.plan_status(ann)["messages_left"] == 0


def test_a_day_across_a_daylight_saving_change_still_ends_at_local_midnight(settings):
    settings.TIME_ZONE = "America/New_York"  # clocks went forward on 2026-03-08: a 23-hour day
    start, end = plans.day_bounds(dt.datetime(2026, 3, 8, 12, 0, tzinfo=UTC))
    assert (start.isoformat(), end.isoformat()) == (
        "2026-03-08T00:00:00-05:00",
        "2026-03-09T00:00:00-04:00",
    )
    assert end.astimezone(UTC) - start.astimezone(UTC) == dt.timedelta(hours=23)


def test_replies_still_running_count_against_the_day_and_the_concurrency(ann, job_calls):
    set_limits(messages_per_day=2, max_concurrent=1)
    first, _ = send(ann)

    error = refused(send, ann, "second chat")  # a new conversation: only the plan stops it

    assert "writes 1 reply at a time" in error.message
    assert error.extra["resets_at"] is None
    assert plans.usage_today(ann) == plans.Usage(messages=1, tokens=0, running=1, reserved=4096)


# --- races between sockets (each thread its own PostgreSQL connection) --------------------------


def race(count: int, call) -> list[object]:
    """Run `call()` in `count` threads released at the same instant: their results or errors."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = call()
        except Exception as exc:
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


@pytest.fixture
def slow_count(monkeypatch):
    """Widen the window between counting and queueing: without the row lock every racer would
    count the same usage and pass."""
    counted = plans.usage_today

    def slowly(*args, **kwargs):
        usage = counted(*args, **kwargs)
        time.sleep(0.2)
        return usage

    monkeypatch.setattr(plans, "usage_today", slowly)


RACERS = 6


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_with_one_message_left_exactly_one_of_simultaneous_sends_passes(ann, job_calls, slow_count):
    set_limits(messages_per_day=3, max_concurrent=RACERS)
    for _ in range(2):  # two replies already charged today
        UsageEntry.objects.create(user=ann, created_at=timezone.now())

    results = race(RACERS, lambda: send(ann, "racing"))

    passed = [r for r in results if isinstance(r, tuple)]
    errors = [r for r in results if not isinstance(r, tuple)]
    assert len(passed) == 1
    assert all(isinstance(e, ChatError) and e.code == "quota" for e in errors), errors
    assert Message.objects.filter(role="assistant").count() == 1
    assert len(job_calls["enqueue"]) == 1


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_simultaneous_sends_cannot_exceed_the_concurrent_replies(ann, job_calls, slow_count):
    set_limits(max_concurrent=2)

    results = race(RACERS, lambda: send(ann, "racing"))

    passed = [r for r in results if isinstance(r, tuple)]
    assert len(passed) == 2
    assert all(isinstance(r, ChatError) and r.code == "quota" for r in results if r not in passed)
    running = Message.objects.filter(status__in=Message.ACTIVE_STATUSES)
    assert running.count() == 2


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_simultaneous_sends_cannot_overshoot_the_days_tokens(ann, job_calls, slow_count):
    """Each reply holds the most it can be charged (its context: prompt and reply) from its
    admission: 3,000 + 3,000 + 3,000 + the last 1,000 of 10,000, whatever the replies turn out to use."""
    set_limits(tokens_per_day=10_000, context_len=3000, max_concurrent=RACERS)

    results = race(RACERS, lambda: send(ann, "racing"))

    passed = [r for r in results if isinstance(r, tuple)]
    errors = [r for r in results if not isinstance(r, tuple)]
    assert len(passed) == 4
    assert all(isinstance(e, ChatError) and e.code == "quota" for e in errors), errors
    assert all(e.extra["resets_at"] is None for e in errors)  # what running replies leave comes back
    held = sorted(reply.reserved_tokens for _, reply in passed)
    assert held == [1000, 3000, 3000, 3000]
    assert plans.plan_status(ann)["tokens_left"] == 0
    # The worker keeps each reply within what it holds: its prompt and reply in 1,000 tokens.
    _, last = next(r for r in passed if r[1].reserved_tokens == 1000)
    started = do_start_reply(jobs.Job(last.pk, ""), CharTokenizer(), context_len=8192, model_name="tiny")
    assert len(started.prompt_ids) + started.sampling["max_new_tokens"] <= 1000
    # Settled at its end: what it used comes back to the day.
    finish(Message.objects.get(pk=last.pk), prompt_tokens=300, completion_tokens=200)
    assert plans.plan_status(ann)["tokens_left"] == 500
    assert isinstance(send(ann, "one more"), tuple)


def test_a_reply_holding_too_few_tokens_for_its_prompt_fails_with_quota(ann, job_calls):
    set_limits(tokens_per_day=40)
    _, reply = send(ann, "a message longer than what is left of the day's forty tokens")
    assert reply.reserved_tokens == 40
    with pytest.raises(ChatError) as raised:
        do_start_reply(jobs.Job(reply.pk, ""), CharTokenizer(), context_len=8192, model_name="tiny")
    assert raised.value.code == "quota" and "Only 40 of today's tokens are left" in raised.value.message


# --- subscriptions lapse to Free, history kept -----------------------------------------------


@pytest.mark.parametrize(
    "lapse",
    [
        {"status": Subscription.Status.PAST_DUE},
        {"status": Subscription.Status.CANCELLED},
        {"current_period_end": dt.datetime(2020, 1, 1, tzinfo=UTC)},  # still "active", but over
    ],
)
def test_a_lapsed_subscription_falls_back_to_free_and_keeps_history(
    ann, subscribe, conversation_factory, job_calls, lapse
):
    subscription = subscribe(ann, "premium")
    chat = conversation_factory(ann, [("user", "Q1"), ("assistant", "A1")], persona="grok")
    Subscription.objects.filter(pk=subscription.pk).update(**lapse)

    assert plans.current_plan(ann).slug == "free"
    refused(send, ann, "Q2", conversation_id=chat.id)
    assert list(chat.messages.values_list("content", flat=True)) == ["Q1", "A1"]
    status = plans.plan_status(ann)
    assert (status["plan"], status["lapsed_plan"]) == ("Free", "Premium")
    _, reply = send(ann, persona="regular")
    assert reply.generation["max_new_tokens"] == 512

    subscribe(ann, "premium", status="active", current_period_end=timezone.now() + dt.timedelta(days=30))
    finish(reply)
    send(ann, "Q2", conversation_id=chat.id)  # renewed: the Grok chat goes on
    assert plans.plan_status(ann)["lapsed_plan"] is None


def test_grant_plan_command(ann):
    call_command("grant_plan", "ann", "premium-plus", "--days", "30")
    subscription = Subscription.objects.get(user=ann)
    assert (subscription.plan.slug, subscription.status) == ("premium-plus", "active")
    left = subscription.current_period_end - timezone.now()
    assert dt.timedelta(days=29, hours=23) < left <= dt.timedelta(days=30)

    call_command("grant_plan", "ann", "premium")
    subscription.refresh_from_db()
    assert (subscription.plan.slug, subscription.current_period_end) == ("premium", None)

    with pytest.raises(CommandError, match="No plan 'gold'"):
        call_command("grant_plan", "ann", "gold")
    with pytest.raises(CommandError, match="No user"):
        call_command("grant_plan", "nobody", "premium")


# --- the ledger -----------------------------------------------------------------------------


def test_usage_is_recorded_once_per_reply_and_survives_deleting_the_conversation(ann, job_calls):
    set_limits(messages_per_day=2)
    message, reply = send(ann)
    with pytest.raises(ValueError):
        plans.do_record_usage(reply)  # still queued: nothing to charge yet
    finish(reply, prompt_tokens=7, completion_tokens=3)
    plans.do_record_usage(reply)  # a redelivered "done"

    entry = UsageEntry.objects.get()
    assert (entry.user, entry.message, entry.plan.slug) == (ann, reply, "free")
    assert (entry.prompt_tokens, entry.completion_tokens, entry.created_at) == (7, 3, reply.created_at)

    actions.do_delete_conversation(ann, message.conversation_id)
    assert UsageEntry.objects.get().message is None
    assert plans.usage_today(ann) == plans.Usage(messages=1, tokens=10, running=0)  # no refund


# --- where the user stands ------------------------------------------------------------------


def test_plan_status_and_its_include(ann, job_calls, frozen, settings):
    settings.TIME_ZONE = "Europe/Paris"
    frozen(dt.datetime(2026, 7, 1, 9, 0, tzinfo=UTC))
    set_limits(messages_per_day=10, tokens_per_day=1000)
    _, reply = send(ann)
    finish(reply, prompt_tokens=100, completion_tokens=50)

    status = plans.plan_status(ann)

    assert {k: status[k] for k in ["plan", "messages_left", "tokens_left", "resets_at"]} == {
        "plan": "Free",
        "messages_left": 9,
        "tokens_left": 850,
        "resets_at": "2026-07-02T00:00:00+02:00",
    }
    html = render_to_string("chat/_plan_status.html", {"plan_status": status})
    assert "Free plan" in html and "9</span> of 10 messages left today" in html
    assert "850</span> of 1000 tokens left today" in html
    assert 'datetime="2026-07-02T00:00:00+02:00"' in html and "Premium" in html


def test_the_chat_page_shows_the_plan_and_locks_personas_by_plan(client, ann, subscribe):
    client.force_login(ann)
    response = client.get(reverse("chat"))
    assert response.context["plan_status"]["plan"] == "Free"
    assert [(p.slug, p.allowed) for p in response.context["personas"]] == [("grok", False), ("regular", True)]

    subscribe(ann, "premium")
    response = client.get(reverse("chat"))
    assert response.context["plan_status"]["plan"] == "Premium"
    assert all(p.allowed for p in response.context["personas"])


def test_the_usage_dashboard_is_for_staff(client, user_factory, ann, subscribe, job_calls, settings):
    settings.TIME_ZONE = "UTC"
    _, reply = send(ann)
    finish(reply, prompt_tokens=30, completion_tokens=12)
    subscribe(ann, "premium")
    _, reply = send(ann, "again", persona="grok")
    finish(reply, prompt_tokens=1, completion_tokens=1)

    client.force_login(ann)
    assert client.get(reverse("staff_usage")).status_code == 302  # to the admin login
    client.force_login(user_factory("staff", is_staff=True))
    response = client.get(reverse("staff_usage"))

    assert response.status_code == 200
    report = response.context["report"]
    today = timezone.now().astimezone(ZoneInfo("UTC")).date()
    assert report["plans"] == ["Free", "Premium", "Premium+"]
    assert report["days"] == [
        {
            "date": today,
            "messages": 2,
            "tokens": 44,
            "plans": [
                {"messages": 1, "tokens": 42},
                {"messages": 1, "tokens": 2},
                {"messages": 0, "tokens": 0},
            ],
        }
    ]
    assert (report["active_users_7"], report["active_users_30"]) == (1, 1)
