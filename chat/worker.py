"""The Django side of the inference worker: from queued replies to saved, published text.

`Replies` is both the job source and the sink of `inference.worker.Worker`. As a source it turns
a queued assistant message into an engine `Request` (history, persona, prompt, sampling recorded
on the message). As a sink it saves every reply's text first, all of them in one transaction per
flush, and only then sends `reply.delta` / `reply.done` to the Channels group `reply.<id>`, so a
page that asks the database after a dropped frame finds at least what it was sent.

A job taken over from a worker that died (`Job.attempt` > 1) finds its reply `streaming` with the
text saved so far: the new worker continues it, with that text appended to the prompt, so pages
get more deltas at the next offsets and nothing they were shown is taken back. Past
`GROK_JOB_MAX_ATTEMPTS` the reply is failed instead, its text kept.

Group messages go out through an asyncio loop owned by someone else: in the embedded mode the web
server's loop (the in-memory channel layer lives there), in a worker process a loop on a thread
of its own (`event_loop_thread`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connections, transaction
from django.utils import timezone

from chat import jobs, plans
from chat.actions import ChatError
from chat.models import Message
from chat.prompts import build_prompt
from inference.worker import IDLE_WAIT, Update, Worker

if TYPE_CHECKING:  # imported where used: the web process loads torch only when it runs a worker
    from inference.engine import Engine, Request

log = logging.getLogger(__name__)

Events = list[tuple[str, dict]]  # (group, event) pairs, sent in order
Publish = Callable[[Events], None]


def group_name(message_id: int | str) -> str:
    return f"reply.{message_id}"


class Publisher:
    """Sends group events through `loop` from any thread, waiting so that they stay in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float = 10.0) -> None:
        self.loop = loop
        self.timeout = timeout
        self.layer = get_channel_layer()

    def __call__(self, events: Events) -> None:
        if events:
            asyncio.run_coroutine_threadsafe(self._send(events), self.loop).result(self.timeout)

    async def _send(self, events: Events) -> None:
        for group, event in events:
            await self.layer.group_send(group, event)


@contextmanager
def event_loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop running on a thread of its own while the block runs: a worker process's Publisher
    sends through it, so the Redis channel layer keeps one connection pool rather than one per
    call. Stopped and joined at the end, so that the process exits with no thread mid-call."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grokweb-publisher", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)


def done_event(reply: Message) -> dict:
    """The `reply.done` event for a finished reply, as saved."""
    return {
        "type": "reply.done",
        "message_id": reply.pk,
        "status": reply.status,
        "finish_reason": reply.finish_reason,
        "content": reply.content,
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
        },
        "error": reply.error,
        "time_to_first_token": reply.time_to_first_token,
        "duration": reply.duration,
    }


def failure_events(reply: Message, code: str = "failed") -> Events:
    group = group_name(reply.pk)
    error = {"type": "reply.error", "message_id": reply.pk, "code": code, "message": reply.error}
    return [(group, error), (group, done_event(reply))]


def fail_reply(message_id: int, error: str, code: str = "failed") -> Events:
    """Mark a reply that could not be written as failed; the events that tell its pages."""
    Message.objects.filter(pk=message_id, status__in=Message.ACTIVE_STATUSES).update(
        status=Message.Status.FAILED, finish_reason="error", error=error, updated_at=timezone.now()
    )
    reply = Message.objects.filter(pk=message_id).first()
    return failure_events(reply, code) if reply is not None else []


class Replies:
    """Job source and sink of the worker loop, over `chat.jobs` and the database."""

    def __init__(self, engine: Engine, queue: jobs.JobQueue, publish: Publish) -> None:
        self.engine = engine
        self.queue = queue
        self.publish = publish
        self.jobs: dict[str, jobs.Job] = {}  # request id -> its job, until acknowledged
        self.shown: dict[str, int] = {}  # request id -> characters saved and sent so far
        # request id -> (text, completion tokens) a dead worker saved: a continuation starts there
        self.resumed: dict[str, tuple[str, int]] = {}

    # -- source ---------------------------------------------------------------------------------

    def take(self, max_jobs: int, timeout: float) -> list[Request]:
        requests = []
        for job in self.queue.take(max_jobs, timeout):
            held = self.jobs.get(str(job.message_id))
            if held is not None:  # already writing it: taken back from ourselves, or a duplicate
                if held.token != job.token:
                    self._ack(job)
                continue
            close_old_connections()
            try:
                request = self._prepare(job)
            except ChatError as exc:  # e.g. too_long: the last message alone overflows the context
                self._send(fail_reply(job.message_id, exc.message, exc.code))
                request = None
            except Exception:
                log.exception("preparing reply %s failed", job.message_id)
                self._send(fail_reply(job.message_id, "The reply could not start."))
                request = None
            if request is None:  # failed, or stopped or deleted before any worker took it
                self._ack(job)
                continue
            self.jobs[request.id] = job
            requests.append(request)
        return requests

    def _prepare(self, job: jobs.Job) -> Request | None:
        """The request writing the job's reply, now marked streaming; None when the reply is no
        longer queued (or, for a job taken over, streaming). The row lock settles a race with
        `do_stop` of a queued reply."""
        from inference.engine import Request, SamplingParams

        with transaction.atomic():
            reply = (
                Message.objects.select_for_update(of=("self",))
                .select_related("conversation__persona")
                .filter(pk=job.message_id, role=Message.Role.ASSISTANT)
                .first()
            )
            resuming = job.attempt > 1 and reply is not None and reply.status == Message.Status.STREAMING
            if reply is None or not (reply.status == Message.Status.QUEUED or resuming):
                return None
            if job.attempt > settings.GROK_JOB_MAX_ATTEMPTS:
                raise ChatError(
                    "failed", f"The reply was started {job.attempt - 1} times and never finished."
                )
            persona = reply.conversation.persona
            version = persona.current_version
            # Earlier turns with text: a stopped reply counts as what the user saw.
            turns = [
                (role, content)
                for role, content in reply.conversation.messages.filter(pk__lt=reply.pk)
                .exclude(content="")
                .values_list("role", "content")
            ]
            # The plan's limits, recorded on the queued reply, within the server's and the model's.
            limits = reply.sampling or {}
            context_len = min(self.engine.context_len, limits.get("context_len") or self.engine.context_len)
            max_new_tokens = min(
                limits.get("max_new_tokens") or settings.GROK_MAX_NEW_TOKENS,
                settings.GROK_MAX_NEW_TOKENS,
                context_len // 2,  # so that a reply never starves the history of room
            )
            if not turns or turns[-1][0] != Message.Role.USER:
                raise ChatError("conflict", "There is no message to answer.")
            system_prompt = version.system_prompt if version else ""
            if limits.get("system_suffix"):  # an API request's system text adds to the persona's
                system_prompt = f"{system_prompt.strip()}\n\n{limits['system_suffix']}"
            prompt = build_prompt(
                system_prompt,
                turns,
                self.engine.tokenizer,
                context_len=context_len,
                max_new_tokens=max_new_tokens,
                assistant_name=persona.name,
            )
            # An API request may set temperature, top_p and seed (chat/api.py); else the server's.
            seed = limits.get("seed")
            sampling = {
                "temperature": limits.get("temperature", settings.GROK_TEMPERATURE),
                "top_p": limits.get("top_p", settings.GROK_TOP_P),
                "top_k": settings.GROK_TOP_K,
                # recorded, so a reply can be reproduced
                "seed": seed if seed is not None else secrets.randbelow(2**31),
                "max_new_tokens": max_new_tokens,
            }
            reply.status = Message.Status.STREAMING
            reply.persona_version = version
            reply.model_name = self.engine.model_name
            reply.sampling = {**limits, **sampling, "context_len": context_len}
            reply.save(update_fields=["status", "persona_version", "model_name", "sampling", "updated_at"])
        stop = prompt.stop + tuple(limits.get("stop", ()))  # the transcript's and the request's
        ids = prompt.ids
        if resuming and reply.content:
            # Go on after the saved text (the model wrote it after "Grok:" with a space): its
            # tokens come out of this reply's budget, which build_prompt kept room for.
            written = self.engine.tokenizer.encode(" " + reply.content)
            ids = ids + written
            sampling["max_new_tokens"] = max(1, max_new_tokens - len(written))
            self.resumed[str(reply.pk)] = (reply.content, reply.completion_tokens)
        return Request(str(reply.pk), ids, SamplingParams(**sampling, stop=stop))

    def cancelled(self, request_ids: Collection[str]) -> set[str]:
        return {str(i) for i in self.queue.cancelled([int(i) for i in request_ids])}

    def waiting(self, limit: int, held: int) -> tuple[int, list[str]]:
        held_elsewhere, backlog = self.queue.waiting(limit, held)
        return held_elsewhere, [str(i) for i in backlog]

    # -- sink -----------------------------------------------------------------------------------

    def deliver(self, updates: list[Update]) -> None:
        close_old_connections()
        events: Events = []
        finished: list[str] = []
        ended: list[Message] = []
        shown = {}
        with transaction.atomic():  # raises, text kept by the loop for the next try, if the DB is away
            for update in updates:
                saved, saved_tokens = self.resumed.get(update.request_id, ("", 0))
                # The prompt ends with "Grok:", so the model opens with a space: not part of the
                # reply. A continuation's text goes on from the saved text as it comes.
                # PostgreSQL text cannot hold NUL, which byte-fallback pieces can spell.
                text = update.text.replace("\x00", "\ufffd")
                content = saved + text if saved else text.lstrip()
                offset = self.shown.get(update.request_id, len(saved))
                fields = {
                    "updated_at": timezone.now(),  # update() skips auto_now
                    "content": content,
                    "prompt_tokens": update.prompt_tokens,
                    "completion_tokens": saved_tokens + update.completion_tokens,
                }
                if not saved:  # a continuation keeps the time its first worker took
                    fields["time_to_first_token"] = update.time_to_first_token
                if update.finish_reason is not None:
                    fields |= {
                        "status": _status(update),
                        "finish_reason": "error" if update.error else update.finish_reason,
                        "error": update.error,
                        "duration": update.duration,
                    }
                    finished.append(update.request_id)
                Message.objects.filter(pk=int(update.request_id)).update(**fields)
                group = group_name(update.request_id)
                if len(content) > offset:
                    delta = {"message_id": int(update.request_id), "offset": offset}
                    events.append((group, {"type": "reply.delta", **delta, "text": content[offset:]}))
                shown[update.request_id] = len(content)
            for request_id in finished:
                reply = Message.objects.filter(pk=int(request_id)).first()
                if reply is not None:  # None: its conversation was deleted meanwhile
                    # In this transaction: no quota check sees the reply neither running nor charged.
                    plans.do_record_usage(reply)
                    ended.append(reply)
        self.shown |= shown  # only once committed: a failed flush is offered again whole
        for reply in ended:
            events += failure_events(reply) if reply.error else [(group_name(reply.pk), done_event(reply))]
        self._send(events)
        for request_id in finished:
            self.shown.pop(request_id, None)
            self.resumed.pop(request_id, None)
            job = self.jobs.pop(request_id, None)
            if job is not None:
                self._ack(job)

    def queued(self, positions: dict[str, int]) -> None:
        self._send(
            [
                (group_name(i), {"type": "reply.queued", "message_id": int(i), "position": place})
                for i, place in positions.items()
            ]
        )

    def _ack(self, job: jobs.Job) -> None:
        try:
            self.queue.ack(job)
        except Exception:  # the reply is saved; an unacknowledged job only stays pending
            log.exception("acknowledging the job of reply %s failed", job.message_id)

    def _send(self, events: Events) -> None:
        try:
            self.publish(events)
        except Exception:  # the text is saved: pages get it when they resume
            log.exception("publishing %d reply events failed", len(events))


def _status(update: Update) -> str:
    if update.error:
        return Message.Status.FAILED
    if update.finish_reason == "cancelled":
        return Message.Status.STOPPED
    return Message.Status.DONE


def load_engine() -> Engine:
    """The engine the settings describe (GROK_CHECKPOINT, GROK_QUANT, GROK_DEVICE, GROK_DTYPE,
    GROK_MAX_BATCH, GROK_CONTEXT_LEN, the memory budgets)."""
    from inference.checkpoint import DTYPES
    from inference.engine import Engine

    if settings.GROK_DTYPE and settings.GROK_DTYPE not in DTYPES:
        raise ValueError(f"GROK_DTYPE is {settings.GROK_DTYPE!r}; choose one of {', '.join(DTYPES)}")
    return Engine(
        settings.GROK_CHECKPOINT,
        quant=settings.GROK_QUANT,
        device=settings.GROK_DEVICE or None,
        dtype=DTYPES.get(settings.GROK_DTYPE),
        max_batch=settings.GROK_MAX_BATCH,
        max_seq_len=settings.GROK_CONTEXT_LEN or None,
        max_gpu_memory=settings.GROK_MAX_GPU_MEMORY or None,
        max_cpu_memory=settings.GROK_MAX_CPU_MEMORY or None,
        offload_dir=settings.GROK_OFFLOAD_DIR or None,
    )


def serve(
    engine: Engine, publish: Publish, stop: threading.Event, *, max_batch: int | None = None
) -> None:
    """Write replies from this process's queue until `stop` is set, then drain."""
    max_batch = max_batch or settings.GROK_MAX_BATCH
    replies = Replies(engine, jobs.get_queue(), publish)
    beating = threading.Event()
    heartbeat = threading.Thread(
        target=_heartbeat, args=(replies, beating), name="grokweb-heartbeat", daemon=True
    )
    heartbeat.start()
    try:
        # Twice the batch in hand: a freed slot refills at once and the waiting learn their place.
        Worker(engine, replies, replies, max_jobs=2 * max_batch).run(
            stop, drain_timeout=settings.GROK_WORKER_DRAIN_SECONDS
        )
    finally:
        beating.set()
        heartbeat.join(timeout=15)  # a beat in flight ends within Redis's socket timeout
        connections.close_all()


def _heartbeat(replies: Replies, stop: threading.Event) -> None:
    """Touch the jobs in hand every third of the claim time. A thread of its own: a step that
    takes long (a big model's prefill) must not make a live worker look dead."""
    while not stop.wait(settings.GROK_JOB_CLAIM_SECONDS / 3):
        try:
            replies.queue.heartbeat(list(replies.jobs.copy().values()))  # copy(): atomic
        except Exception as exc:  # Redis away: the next beat tries again
            log.warning("job heartbeat failed: %s", exc)


# -- embedded mode --------------------------------------------------------------------------------

_embedded_lock = threading.Lock()
_embedded_started = False


def start_embedded_worker(loop: asyncio.AbstractEventLoop) -> None:
    """Start the worker thread of the web process once, sending through the server's `loop`."""
    global _embedded_started
    with _embedded_lock:
        if _embedded_started:
            return
        _embedded_started = True
    threading.Thread(
        target=_run_embedded, args=(Publisher(loop),), name="grokweb-worker", daemon=True
    ).start()


def _run_embedded(publish: Publish) -> None:
    try:
        engine = load_engine()
    except Exception as exc:
        log.exception("the embedded worker could not load the model")
        _refuse_jobs(publish, f"The model could not be loaded: {exc}")
        return
    try:
        publish(recover_replies(jobs.get_queue()))
    except Exception:
        log.exception("recovering the replies of the last run failed")
    serve(engine, publish, threading.Event())  # a daemon thread: it ends with the process


def recover_replies(queue: jobs.JobQueue) -> Events:
    """What the previous web process left active, for an embedded worker starting: queued
    replies are queued again; one it was writing is failed with its text kept, as its job died
    with that process and no attempt count would bound a reply that kills it each time. Returns
    the events telling their pages."""
    events: Events = []
    for message_id in jobs.queued_replies():
        try:
            queue.put(message_id)
        except jobs.QueueFull:
            events += fail_reply(message_id, "Too many replies were waiting when the server restarted.")
    stale = Message.objects.filter(role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)
    for message_id in stale.values_list("pk", flat=True):
        events += fail_reply(message_id, "The server restarted while writing this reply.")
    return events


def _refuse_jobs(publish: Publish, error: str) -> None:
    """Without a model, fail each reply as it is queued rather than leave it waiting forever."""
    queue = jobs.get_queue()
    while True:
        for job in queue.take(16, IDLE_WAIT):
            close_old_connections()
            publish(fail_reply(job.message_id, error))
            queue.ack(job)
