"""The domain rules of writing a reply, on the worker's side: starting it, saving its text,
failing it, and recovering what a dead web process left behind.

Starting (`do_start_reply`) turns a queued assistant message into what the engine needs: its
history, persona and plan limits make the prompt (`chat.prompts`), and the sampling used is
recorded on the message (`Message.generation`) so the reply can be reproduced. A job taken over
from a worker that died (`Job.attempt` > 1) finds its reply `streaming` with the text saved so
far: the new worker continues it, with that text appended to the prompt, so pages get more deltas
at the next offsets and nothing they were shown is taken back. Past `GROK_JOB_MAX_ATTEMPTS` the
reply is failed instead, its text kept.

Saving (`do_save_updates`) writes every reply's text first, all of them in one transaction (one
statement for a lone reply's text as it streams), and returns the events to send only after
that, so a page that asks the database after a dropped frame finds at least what it was sent.
"""

from __future__ import annotations

import secrets
from contextlib import nullcontext
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone
from django.utils.crypto import salted_hmac

from chat import account, branches, jobs, plans
from chat.errors import ChatError
from chat.events import Events, delta_event, done_event, failure_events, group_name
from chat.models import Conversation, Message, PersonaVersion
from chat.prompts import Tokenizer, build_prompt, public_prefix, reply_budget
from inference.loop import Update


@dataclass
class ReplyStart:
    """What the engine needs to write one reply."""

    reply_id: int
    prompt_ids: list[int]
    sampling: dict  # temperature, top_p, top_k, seed, max_new_tokens
    stop: tuple[str, ...]
    saved_text: str = ""  # a continuation: what a dead worker saved, which this one goes on from
    saved_tokens: int = 0
    # For the engine's prefix cache: K/V of this user's earlier prompts is reused in full, other
    # users' only for the persona's system prompt (its first `public_prefix` tokens).
    cache_salt: str = ""
    public_prefix: int = 0


@dataclass
class Progress:
    """What is saved of one reply being written."""

    saved_text: str = ""  # the text a dead worker saved: this worker's text goes on from it
    saved_tokens: int = 0
    shown: int | None = None  # characters saved and sent so far (None: len(saved_text))


@dataclass
class Saved:
    events: Events = field(default_factory=list)
    shown: dict[int, int] = field(default_factory=dict)  # reply id -> characters now shown
    finished: list[int] = field(default_factory=list)


def cache_salt(user_id: int) -> str:
    """The user's salt of the engine's prefix cache: unguessable (an HMAC under SECRET_KEY), as
    vLLM asks of a `cache_salt` its other clients must not be able to forge."""
    return salted_hmac("grokweb.prefix-cache", str(user_id), algorithm="sha256").hexdigest()


def do_start_reply(
    job: jobs.Job, tokenizer: Tokenizer, *, context_len: int, model_name: str
) -> ReplyStart | None:
    """Mark the job's reply streaming and say how to write it; None when the reply is no longer
    queued (or, for a job taken over, streaming). ChatError when it cannot be written (too many
    attempts, nothing to answer, a message that alone overflows the context).

    Three statements, no transaction, as this stands between a send and its first token: the
    reply with its persona's current version, its branch, and the claim, a conditional update
    from queued (or, taken over, streaming) to streaming. A `do_stop` of the queued reply, or a
    delete, that comes between the reads and the claim wins: the claim then changes no row."""
    # Persona.current_version, as subqueries of the one read.
    current = PersonaVersion.objects.filter(persona=OuterRef("conversation__persona")).order_by("-number")
    try:  # get, not first: no ordering to compile
        reply = (
            Message.objects.select_related("conversation__persona", "conversation__owner")
            .annotate(
                version_id=Subquery(current.values("pk")[:1]),
                version_prompt=Subquery(current.values("system_prompt")[:1]),
            )
            .get(pk=job.message_id, role=Message.Role.ASSISTANT)
        )
    except Message.DoesNotExist:  # deleted with its conversation
        return None
    claimable = [Message.Status.QUEUED] + ([Message.Status.STREAMING] if job.attempt > 1 else [])
    if reply.status not in claimable:
        return None
    resuming = reply.status == Message.Status.STREAMING
    if job.attempt > settings.GROK_JOB_MAX_ATTEMPTS:
        raise ChatError("failed", f"The reply was started {job.attempt - 1} times and never finished.")
    persona = reply.conversation.persona
    # The reply's branch (chat/branches.py): the turns with text before it, as they were on
    # screen when it was asked for. A stopped reply counts as what the user saw.
    conversation = reply.conversation
    tree = branches.tree_of(conversation, fields=("role", "content"))
    turns = [(m.role, m.content) for m in tree.path_to(reply.parent_id) if m.content]
    # The plan's limits, recorded on the queued reply, within the server's and the model's.
    limits = reply.generation or {}
    # Prompt and reply also within the tokens today's quota holds for the reply
    # (chat/plans.py), so that it is never charged more. 0: queued before replies held any.
    model_context = min(context_len, limits.get("context_len") or context_len)
    held_bound = 0 < reply.reserved_tokens < model_context
    context_len, max_new_tokens = reply_budget(
        min(model_context, reply.reserved_tokens or model_context),
        limits,
        max_new_tokens=settings.GROK_MAX_NEW_TOKENS,
    )
    if not turns or turns[-1][0] != Message.Role.USER:
        raise ChatError("conflict", "There is no message to answer.")
    persona_prompt = reply.version_prompt or ""
    system_prompt = persona_prompt
    # The user's custom instructions follow the persona's (web chats: an API request
    # brings its own system text); recorded with the reply like the persona version.
    instructions = (
        account.instructions_for(reply.conversation.owner)
        if reply.conversation.source == Conversation.Source.WEB
        else ""
    )
    if instructions:
        system_prompt = f"{system_prompt.strip()}\n\n{instructions}"
    if limits.get("system_suffix"):  # an API request's system text adds to the persona's
        system_prompt = f"{system_prompt.strip()}\n\n{limits['system_suffix']}"
    try:
        prompt = build_prompt(
            system_prompt,
            turns,
            tokenizer,
            context_len=context_len,
            max_new_tokens=max_new_tokens,
            assistant_name=persona.name,
        )
    except ChatError as error:
        if error.code == "too_long" and held_bound:  # the day's tokens, not the model, fall short
            raise ChatError(
                "quota",
                f"Only {context_len:,} of today's tokens are left, too few for this message "
                f"and a reply. They reset at midnight ({settings.TIME_ZONE}).",
            ) from None
        raise
    # An API request may set temperature, top_p and seed (chat/api/requests.py); else the
    # server's.
    seed = limits.get("seed")
    sampling = {
        "temperature": limits.get("temperature", settings.GROK_TEMPERATURE),
        "top_p": limits.get("top_p", settings.GROK_TOP_P),
        "top_k": settings.GROK_TOP_K,
        # recorded, so a reply can be reproduced
        "seed": seed if seed is not None else secrets.randbelow(2**31),
        "max_new_tokens": max_new_tokens,
    }
    generation = {**limits, **sampling, "context_len": context_len}
    if instructions:
        generation["custom_instructions"] = instructions
    claimed = Message.objects.filter(pk=reply.pk, status__in=claimable).update(
        status=Message.Status.STREAMING, persona_version_id=reply.version_id, model_name=model_name,
        generation=generation, updated_at=timezone.now(),
    )
    if not claimed:
        return None
    start = ReplyStart(
        reply.pk, prompt.ids, sampling, prompt.stop + tuple(limits.get("stop", ())),
        cache_salt=cache_salt(reply.conversation.owner_id),
        public_prefix=public_prefix(prompt.ids, persona_prompt, tokenizer),
    )
    if resuming and reply.content:
        # Go on after the saved text (the model wrote it after "Grok:" with a space): its
        # tokens come out of this reply's budget, which build_prompt kept room for.
        written = tokenizer.encode(" " + reply.content)
        start.prompt_ids = prompt.ids + written
        sampling["max_new_tokens"] = max(1, max_new_tokens - len(written))
        # The saved text's tokens are charged once, as completion: counted as this prompt holds
        # them, and left out of its prompt count (do_save_updates), so a continued reply stays
        # within the tokens it holds (chat/plans.py).
        start.saved_text, start.saved_tokens = reply.content, len(written)
    return start


def do_save_updates(updates: list[Update], progress: dict[int, Progress]) -> Saved:
    """Save where each reply stands, charge the finished ones, and return the events that tell
    their pages. All or nothing (one transaction, or one statement): it raises, and the caller
    offers the same updates again, if the database is away."""
    saved = Saved()
    ended: list[Message] = []
    # One reply's text as it streams (its first text above all) is one statement, atomic by
    # itself: no transaction around it, two round trips less on the way to the page.
    alone = len(updates) == 1 and updates[0].finish_reason is None
    with nullcontext() if alone else transaction.atomic():
        for update in updates:
            reply_id = int(update.request_id)
            known = progress.get(reply_id) or Progress()
            # The prompt ends with "Grok:", so the model opens with a space: not part of the
            # reply. A continuation's text goes on from the saved text as it comes.
            # PostgreSQL text cannot hold NUL, which byte-fallback pieces can spell.
            text = update.text.replace("\x00", "\ufffd")
            content = known.saved_text + text if known.saved_text else text.lstrip()
            offset = known.shown if known.shown is not None else len(known.saved_text)
            fields = {
                "updated_at": timezone.now(),  # update() skips auto_now
                "content": content,
                "prompt_tokens": update.prompt_tokens - known.saved_tokens,
                "cached_tokens": update.cached_tokens,
                "completion_tokens": known.saved_tokens + update.completion_tokens,
            }
            if not known.saved_text:  # a continuation keeps the time its first worker took
                fields["time_to_first_token"] = update.time_to_first_token
            if update.finish_reason is not None:
                fields |= {
                    "status": _status(update),
                    "finish_reason": "error" if update.error else update.finish_reason,
                    "error": update.error,
                    "error_code": "failed" if update.error else "",
                    "duration": update.duration,
                }
                saved.finished.append(reply_id)
            Message.objects.filter(pk=reply_id).update(**fields)
            if len(content) > offset:
                saved.events.append((group_name(reply_id), delta_event(reply_id, offset, content[offset:])))
            saved.shown[reply_id] = len(content)
        for reply_id in saved.finished:
            reply = Message.objects.filter(pk=reply_id).first()
            if reply is not None:  # None: its conversation was deleted meanwhile
                # In this transaction: no quota check sees the reply neither running nor charged.
                plans.do_record_usage(reply)
                ended.append(reply)
    for reply in ended:
        saved.events += failure_events(reply) if reply.error else [(group_name(reply.pk), done_event(reply))]
    return saved


def _status(update: Update) -> str:
    if update.error:
        return Message.Status.FAILED
    if update.finish_reason == "cancelled":
        return Message.Status.STOPPED
    return Message.Status.DONE


def do_fail_reply(reply_id: int, error: str, code: str = "failed") -> Events:
    """Mark a reply that could not be written as failed; the events that tell its pages."""
    Message.objects.filter(pk=reply_id, status__in=Message.ACTIVE_STATUSES).update(
        status=Message.Status.FAILED, finish_reason="error", error=error, error_code=code,
        updated_at=timezone.now(),
    )
    reply = Message.objects.filter(pk=reply_id).first()
    return failure_events(reply) if reply is not None else []


def do_recover_replies(queue: jobs.JobQueue) -> Events:
    """What the previous web process left active, for an embedded worker starting: queued
    replies are queued again; one it was writing is failed with its text kept, as its job died
    with that process and no attempt count would bound a reply that kills it each time. Returns
    the events telling their pages."""
    events: Events = []
    for reply_id in jobs.queued_replies():
        try:
            queue.put(reply_id)
        except jobs.QueueFull:
            events += do_fail_reply(reply_id, "Too many replies were waiting when the server restarted.")
    stale = Message.objects.filter(role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)
    for reply_id in stale.values_list("pk", flat=True):
        events += do_fail_reply(reply_id, "The server restarted while writing this reply.")
    return events
