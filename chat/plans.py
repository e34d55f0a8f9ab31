"""Plans and their limits: which plan a user is on, what they may still do today, the ledger.

A user's plan is their subscription's while it is active and its period has not ended, and the
Free plan otherwise (no row needed), so a lapse changes limits but never touches history.

Daily counters are not stored: they are counted from the usage ledger (`UsageEntry`, one row per
finished reply, charged to the day the reply was asked for) plus the replies still queued or being
written. A reply holds, from the moment it is admitted, the most tokens it can be charged
(`Message.reserved_tokens`: its context, prompt and reply together, or what is left of the day if
that is less), and the worker keeps it within them; its ledger row takes their place when it
ends, so running replies can never together overshoot the day's tokens. "Messages" are the
replies a user asks for (a send, an edit or a regenerate each cost one), counted from the ledger
rather than from the user's messages so that deleting a conversation refunds nothing. A day runs from midnight to midnight in `settings.TIME_ZONE`.

`check_can_generate` must run inside the transaction that queues the reply: it locks the user's
row, so two sockets sending at the same instant are counted one after the other.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection
from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from chat.errors import ChatError
from chat.models import Conversation, Message, Persona, Plan, Subscription, UsageEntry, User


@dataclass(frozen=True)
class Limits:
    """What one reply may use; `generation` is recorded on the queued reply for the worker."""

    plan: Plan
    max_new_tokens: int
    context_len: int
    reserved_tokens: int  # the most tokens the reply may be charged: today's quota holds them

    @property
    def generation(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "context_len": self.context_len}


@dataclass(frozen=True)
class Usage:
    messages: int  # replies asked for today: finished (ledger) and still running
    tokens: int  # prompt + completion of today's finished replies
    running: int  # replies queued or being written now, whatever day they were asked for
    reserved: int = 0  # tokens held by today's running replies

    @property
    def tokens_held(self) -> int:
        """The tokens no further reply can have today: charged or held by running replies."""
        return self.tokens + self.reserved


# --- days and plans -------------------------------------------------------------------------


def day_bounds(now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """The quota day holding `now`: from its midnight to the next, in settings.TIME_ZONE (not
    the request's active time zone: everyone's day turns at the same moment)."""
    zone = ZoneInfo(settings.TIME_ZONE)
    today = (now or timezone.now()).astimezone(zone).date()
    return (
        dt.datetime.combine(today, dt.time(), tzinfo=zone),
        dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), tzinfo=zone),
    )


def is_current(subscription: Subscription, now: dt.datetime | None = None) -> bool:
    end = subscription.current_period_end
    return subscription.status == Subscription.Status.ACTIVE and (
        end is None or end > (now or timezone.now())
    )


def current_plan(user: User, now: dt.datetime | None = None) -> Plan:
    try:  # get, not first: one row at most (one-to-one), and no ordering to compile
        subscription = Subscription.objects.select_related("plan").get(user=user)
    except Subscription.DoesNotExist:
        subscription = None
    if subscription is not None and is_current(subscription, now):
        return subscription.plan
    return Plan.objects.get(slug=Plan.FREE)


def users_on_plan(plan: Plan, now: dt.datetime | None = None) -> QuerySet[User]:
    """The users whose current plan is `plan`: for Free, everyone without a current paid one."""
    end = Q(subscription__current_period_end__isnull=True) | Q(
        subscription__current_period_end__gt=now or timezone.now()
    )
    current = User.objects.filter(end, subscription__status=Subscription.Status.ACTIVE)
    if plan.slug == Plan.FREE:
        return User.objects.exclude(
            pk__in=current.exclude(subscription__plan__slug=Plan.FREE).values("pk")
        )
    return current.filter(subscription__plan=plan)


def upgrade_offers(plan: Plan, persona: Persona | None = None) -> list[dict]:
    """The plans above `plan` (those including `persona`, if given), as a quota frame carries
    them: what each one offers."""
    offers = Plan.objects.filter(sort_order__gt=plan.sort_order).prefetch_related("personas")
    if persona is not None:
        offers = offers.filter(personas=persona)
    return [
        {
            "slug": offer.slug,
            "name": offer.name,
            "description": offer.description,
            "messages_per_day": offer.messages_per_day,
            "tokens_per_day": offer.tokens_per_day,
            "max_new_tokens": offer.max_new_tokens,
            "max_concurrent": offer.max_concurrent,
            "personas": [p.name for p in offer.personas.all()],
        }
        for offer in offers
    ]


def offer_text(offers: list[dict]) -> str:
    """One sentence per offer, e.g. "Premium: 500 messages and 1,000,000 tokens a day, replies
    of up to 1,024 tokens, 2 at once, personas Grok and Regular." """
    return " ".join(
        f"{o['name']}: {o['messages_per_day']:,} messages and {o['tokens_per_day']:,} tokens a "
        f"day, replies of up to {o['max_new_tokens']:,} tokens, {o['max_concurrent']} at once, "
        f"personas {' and '.join(o['personas']) or 'none'}."
        for o in offers
    )


# --- checks ---------------------------------------------------------------------------------


def quota_error(text: str, offers: list[dict], resets_at: dt.datetime | None) -> ChatError:
    """A `quota` refusal: which limit (`text`), when it resets (None: waiting alone does not
    help) and what the plans above offer."""
    message = " ".join(part for part in [text, offer_text(offers)] if part)
    return ChatError(
        "quota",
        message,
        resets_at=resets_at.isoformat() if resets_at else None,
        upgrade=offers,
    )


def check_persona_in_plan(plan: Plan, persona: Persona) -> None:
    if not plan.personas.filter(pk=persona.pk).exists():
        raise quota_error(
            f"The {persona.name} persona is not included in the {plan.name} plan.",
            upgrade_offers(plan, persona),
            None,
        )


def usage_today(user: User, now: dt.datetime | None = None) -> Usage:
    """Today's usage in one statement (every send asks for it, on the way to a reply's first
    token): the ledger's replies and tokens since midnight, and the replies still running,
    which have no ledger row yet (the worker adds it as it marks them finished)."""
    start, _ = day_bounds(now)
    since = connection.ops.adapt_datetimefield_value(start)
    active = Message.ACTIVE_STATUSES
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT ledger.messages, ledger.tokens, running.all_, running.today, running.reserved
            FROM (SELECT COUNT(*) AS messages, COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS tokens
                  FROM {UsageEntry._meta.db_table} WHERE user_id = %s AND created_at >= %s) AS ledger,
                 (SELECT COUNT(*) AS all_,
                         COUNT(CASE WHEN m.created_at >= %s THEN 1 END) AS today,
                         COALESCE(SUM(CASE WHEN m.created_at >= %s THEN m.reserved_tokens END), 0) AS reserved
                  FROM {Message._meta.db_table} AS m
                  JOIN {Conversation._meta.db_table} AS c ON c.id = m.conversation_id
                  WHERE c.owner_id = %s AND m.role = %s AND m.status IN ({", ".join(["%s"] * len(active))})
                 ) AS running
            """,
            [user.pk, since, since, since, user.pk, Message.Role.ASSISTANT, *active],
        )
        messages, tokens, running, running_today, reserved = cursor.fetchone()
    return Usage(messages=messages + running_today, tokens=tokens, running=running, reserved=reserved)


def check_can_generate(user: User, persona: Persona, *, now: dt.datetime | None = None) -> Limits:
    """The limits of one more reply for `user` with `persona`, or a `quota` ChatError.

    Call it inside the transaction that queues the reply: the row lock on the user makes
    concurrent calls for the same user count one after the other, each seeing the replies the
    previous ones queued. (NO KEY UPDATE: rows that merely reference the user, such as a new
    conversation or a ledger entry, are not held up by it.)
    """
    User.objects.select_for_update(no_key=True).filter(pk=user.pk).exists()
    plan = current_plan(user, now)
    check_persona_in_plan(plan, persona)
    usage = usage_today(user, now)
    _, resets_at = day_bounds(now)
    if usage.running >= plan.max_concurrent:
        raise quota_error(
            f"The {plan.name} plan writes {plan.max_concurrent} "
            f"{'reply' if plan.max_concurrent == 1 else 'replies'} at a time: wait for one to "
            "finish or stop it.",
            upgrade_offers(plan),
            None,
        )
    for used, limit, unit in (
        (usage.messages, plan.messages_per_day, "messages"),
        (usage.tokens, plan.tokens_per_day, "tokens"),
    ):
        if used >= limit:
            raise quota_error(
                f"You have used all {limit:,} {unit} of the {plan.name} plan for today. They "
                f"reset at midnight ({settings.TIME_ZONE}).",
                upgrade_offers(plan),
                resets_at,
            )
    tokens_left = plan.tokens_per_day - usage.tokens_held
    if tokens_left <= 0:  # replies still running hold the rest: what they leave comes back
        raise quota_error(
            f"Your replies still being written hold the rest of today's {plan.tokens_per_day:,} "
            "tokens: wait for them to finish.",
            upgrade_offers(plan),
            None,
        )
    return Limits(
        plan=plan,
        max_new_tokens=plan.max_new_tokens,
        context_len=plan.context_len,
        reserved_tokens=min(plan.context_len, tokens_left),
    )


# --- the ledger -----------------------------------------------------------------------------


def do_record_usage(message: Message) -> UsageEntry:
    """Charge a finished reply to its owner's ledger. Once per reply: calling it again (a
    redelivered job) rewrites the same row. Call it in the transaction that marks the reply
    finished, so no check sees it neither running nor in the ledger."""
    if message.role != Message.Role.ASSISTANT or message.is_active:
        raise ValueError(f"message {message.pk} is not a finished reply")
    owner = User.objects.get(conversations__messages=message)
    entry, _ = UsageEntry.objects.update_or_create(
        message=message,
        defaults={
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
        },
        create_defaults={
            "user": owner,
            "plan": current_plan(owner),
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
            "created_at": message.created_at,
        },
    )
    return entry


# --- what people see ------------------------------------------------------------------------


def plan_status(user: User, now: dt.datetime | None = None) -> dict:
    """Where the user stands today, for the chat page (templates/chat/_plan_status.html)."""
    plan = current_plan(user, now)
    usage = usage_today(user, now)
    _, resets_at = day_bounds(now)
    subscription = Subscription.objects.select_related("plan").filter(user=user).first()
    lapsed = subscription is not None and not is_current(subscription, now)
    return {
        "plan": plan.name,
        "plan_slug": plan.slug,
        "messages_per_day": plan.messages_per_day,
        "messages_left": max(0, plan.messages_per_day - usage.messages),
        "tokens_per_day": plan.tokens_per_day,
        "tokens_left": max(0, plan.tokens_per_day - usage.tokens_held),
        "resets_at": resets_at.isoformat(),
        "time_zone": settings.TIME_ZONE,
        # e.g. "Premium" with "past_due": the page says why the user is back on Free.
        "lapsed_plan": subscription.plan.name if lapsed else None,
        "subscription_status": subscription.status if subscription is not None else None,
        "upgrade": upgrade_offers(plan),
    }


def usage_report(*, days: int = 30, now: dt.datetime | None = None) -> dict:
    """Staff dashboard: messages and tokens per day and per plan over the last `days` days
    (from the ledger, by the plan each reply was charged to), and users active in the last 7
    and 30 days (those who got a reply)."""
    now = now or timezone.now()
    start, _ = day_bounds(now - dt.timedelta(days=days - 1))
    rows = (
        UsageEntry.objects.filter(created_at__gte=start)
        .annotate(day=TruncDate("created_at", tzinfo=ZoneInfo(settings.TIME_ZONE)))
        .values("day", "plan__name")
        .annotate(messages=Count("id"), tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
        .order_by("-day", "plan__name")
    )
    plan_names = list(Plan.objects.values_list("name", flat=True))
    by_day: dict[dt.date, dict] = {}
    for row in rows:
        name = row["plan__name"] or "(deleted plan)"
        if name not in plan_names:
            plan_names.append(name)
        day = by_day.setdefault(
            row["day"], {"date": row["day"], "messages": 0, "tokens": 0, "plans": {}}
        )
        day["messages"] += row["messages"]
        day["tokens"] += row["tokens"]
        day["plans"][name] = {"messages": row["messages"], "tokens": row["tokens"]}
    empty = {"messages": 0, "tokens": 0}
    for day in by_day.values():  # one cell per plan, in plan order, for the table
        day["plans"] = [day["plans"].get(name, empty) for name in plan_names]

    def active_since(delta: dt.timedelta) -> int:
        entries = UsageEntry.objects.filter(created_at__gte=now - delta)
        return entries.values("user").distinct().count()

    return {
        "days": list(by_day.values()),
        "plans": plan_names,
        "active_users_7": active_since(dt.timedelta(days=7)),
        "active_users_30": active_since(dt.timedelta(days=30)),
        "total_messages": sum(day["messages"] for day in by_day.values()),
        "total_tokens": sum(day["tokens"] for day in by_day.values()),
    }
