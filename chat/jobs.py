"""The queue of replies to write, between the web tier and the inference workers.

A job is the id of a queued assistant message; everything else the worker reads from the
database. With `REDIS_URL` the queue is a Redis Stream read through a consumer group, so several
worker processes share it and a job taken by a worker that dies stays pending (not lost) until it
is acknowledged, which happens only once its reply is saved. A live worker touches its pending
jobs every third of `GROK_JOB_CLAIM_SECONDS` (`heartbeat`); a job left untouched longer than that
belongs to a dead worker and the next `take` of any worker claims it (XAUTOCLAIM), with its
delivery count as `Job.attempt`. A stream that had to be made afresh (the first start, or a Redis
that lost its data) is refilled with the replies the database still has queued: a duplicate job
is harmless, as a worker skips a reply that is no longer queued. Cancels are short-lived Redis
keys the workers look at between steps. With no `REDIS_URL` the web process runs the worker in a
thread and the queue is an in-process one.

Routing (Redis only). A worker's engine keeps the KV cache of the conversations it wrote
(inference/engine.py's prefix cache), so a conversation's next turn is best written where its
last reply was. When a worker acknowledges a reply it wrote, it records the conversation's
affinity (`grokweb:affinity:<conversation id>` -> worker, for AFFINITY_TTL). `put` sends the next
turn to that worker's own stream, its inbox (`grokweb:inbox:<worker>`, read through the same
consumer group), when the worker is alive (its heartbeat in `grokweb:workers` is younger than the
claim time), has no reply waiting in it for a free slot, and the shared stream has no job that no
worker took yet; otherwise, and for a conversation's first turn, to the shared stream. The last
condition keeps the order fair: a routed job is never younger than a job waiting in the shared
stream, so a worker reads its inbox first, then the shared stream, without starving anyone. It
takes routed jobs only into free engine slots (`take`'s `free_slots`), so that they never wait
behind a full batch. A job its worker has not taken after `route_wait` seconds (busy, or dead) is
anyone's: every worker looks into the others' inboxes every `route_wait / 4` seconds and takes
such jobs, before the shared stream's. (Entry ids carry Redis's clock; the workers' clocks are
taken to agree with it, as heartbeats already assume.) Each job
is delivered once (a consumer group), so routing adds no delivery to `Job.attempt`; a dead
worker's pending jobs in its inbox are claimed like the shared stream's (XAUTOCLAIM), and its
inbox is dropped once empty. `grokweb:inboxes` lists the workers that have one. Routing is best
effort: a missed route costs a prefill, never a reply.

`enqueue` runs once the transaction that saved the queued reply has committed (see
`chat.actions`), so the user's message is safe whatever happens here. When the job cannot be
queued (Redis away, queue full) the reply is marked failed, so that it does not wait forever,
and `ChatError` tells the page why.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import queue
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

import redis
from django.conf import settings
from django.utils import timezone

from chat.errors import ChatError
from chat.models import Message

log = logging.getLogger(__name__)

STREAM = "grokweb:jobs"  # the shared stream
GROUP = "workers"
INBOX_PREFIX = "grokweb:inbox:"  # + worker: the stream of the jobs routed to that worker
INBOXES = "grokweb:inboxes"  # the workers that have an inbox (a dead one's too, until it is empty)
AFFINITY_PREFIX = "grokweb:affinity:"  # + conversation id -> the worker that last wrote a reply in it
AFFINITY_TTL = 900  # seconds; the prefix cache may have dropped the conversation by then anyway
ROUTE_WAIT = 2.0  # seconds a routed job waits for its worker before any worker may take it
CANCEL_PREFIX = "grokweb:cancel:"
WAITING = "grokweb:waiting"  # worker -> "<replies waiting in it for a free slot> <unix time>"
WAITING_TTL = 5.0  # seconds; workers refresh theirs twice a second while busy
BUSY_TTL = 1.0  # seconds: a record saying replies wait is refreshed within this while they do
WORKERS = "grokweb:workers"  # worker -> unix time of its last heartbeat, busy or idle (/readyz)
CANCEL_TTL = 3600  # seconds; far longer than any reply, short enough not to pile up keys


class QueueFull(Exception):
    pass


@dataclass(frozen=True)
class Job:
    message_id: int
    token: str  # what `ack` needs: the stream entry id ("" in process)
    attempt: int = 1  # workers given this job so far: more than 1 once taken over from a dead one
    stream: str = STREAM  # where it is pending: the shared stream or a worker's inbox
    conversation_id: int | None = None  # whose affinity `ack` records (Redis jobs)


class JobQueue(Protocol):
    def put(self, message_id: int, conversation_id: int | None = None) -> None: ...  # QueueFull when at its bound
    def cancel(self, message_id: int) -> None: ...
    # Up to `max_jobs` jobs, waiting at most `timeout` seconds for the first; of those routed to
    # this worker, only as many as `free_slots` (None: no bound), since they wait for nothing here.
    def take(self, max_jobs: int, timeout: float, free_slots: int | None = None) -> list[Job]: ...
    def cancelled(self, message_ids: Collection[int]) -> set[int]: ...
    # The reply is saved: the job is over. `affinity`: this worker's engine now caches the
    # conversation, so route its next turn here.
    def ack(self, job: Job, affinity: bool = False) -> None: ...
    def heartbeat(self, jobs: Collection[Job]) -> None: ...  # still at work on them: not to claim
    # `waiting_here` replies wait in this worker for a free slot. (How many wait in the other
    # workers, up to `limit` replies no worker took yet, oldest first, if this worker is the one
    # to tell them.)
    def waiting(self, limit: int, waiting_here: int) -> tuple[int, list[int]]: ...


class LocalQueue:
    """The embedded mode's queue: the web process's threads share it. Like the stream, its bound
    counts the replies waiting and those taken but not yet acknowledged. One worker: nothing to
    route."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._jobs: queue.Queue[int] = queue.Queue()
        self._taken = 0
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()

    def put(self, message_id: int, conversation_id: int | None = None) -> None:
        with self._lock:
            if self._jobs.qsize() + self._taken >= self.max_length:
                raise QueueFull
            self._jobs.put(message_id)

    def cancel(self, message_id: int) -> None:
        with self._lock:
            self._cancelled.add(message_id)

    def take(self, max_jobs: int, timeout: float, free_slots: int | None = None) -> list[Job]:
        taken = []
        try:
            taken.append(self._jobs.get(timeout=timeout) if timeout > 0 else self._jobs.get_nowait())
            while len(taken) < max_jobs:
                taken.append(self._jobs.get_nowait())
        except queue.Empty:
            pass
        with self._lock:
            self._taken += len(taken)
        return [Job(message_id, "") for message_id in taken]

    def cancelled(self, message_ids: Collection[int]) -> set[int]:
        with self._lock:
            found = self._cancelled.intersection(message_ids)
            self._cancelled -= found
        return found

    def ack(self, job: Job, affinity: bool = False) -> None:
        with self._lock:
            self._taken -= 1
            self._cancelled.discard(job.message_id)

    def heartbeat(self, jobs: Collection[Job]) -> None:
        pass  # one process: its jobs die with it, and the worker's start recovers their replies

    def waiting(self, limit: int, waiting_here: int) -> tuple[int, list[int]]:
        with self._jobs.mutex:  # one worker: none wait anywhere else
            return 0, list(itertools.islice(self._jobs.queue, limit))


class RedisQueue:
    """Jobs in a Redis Stream shared by the workers, and in each worker's inbox (routing, in the
    module's docstring). An entry is deleted once acknowledged, so the streams' lengths add up to
    the number of replies waiting or being written, which is what the bound applies to."""

    def __init__(
        self,
        url: str,
        max_length: int,
        claim_seconds: float = 30.0,
        refill: Callable[[], Iterable[int]] = tuple,
        route_wait: float = ROUTE_WAIT,
    ) -> None:
        self.redis = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2, socket_timeout=10
        )
        self.max_length = max_length
        self.claim_ms = max(1, int(claim_seconds * 1000))
        self.refill = refill  # the replies to queue again when the stream is made afresh
        self.route_wait = route_wait
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._group_ready = False
        self._sweep_at = 0.0  # monotonic time of the next look at the other workers' inboxes

    @property
    def inbox(self) -> str:
        return INBOX_PREFIX + self.consumer

    def put(self, message_id: int, conversation_id: int | None = None) -> None:
        """Queue the job, in its conversation's worker's inbox or the shared stream (`_route`).
        A send waits for this before its first token: what the bound and the routing read is
        asked for in one round trip, and the inboxes' lengths in a second."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(INBOXES)
            if conversation_id is not None:
                pipe.get(f"{AFFINITY_PREFIX}{conversation_id}").hgetall(WORKERS).hgetall(WAITING)
            inboxes, *routing = pipe.execute()
        if queue_length(self.redis, inboxes) >= self.max_length:
            raise QueueFull
        fields = {"message_id": message_id}
        if conversation_id is not None:
            fields["conversation_id"] = conversation_id
        worker = self._route(*routing) if routing else None
        if worker is None:
            self.redis.xadd(STREAM, fields)
            return
        with self.redis.pipeline() as pipe:  # listed, so that others find it should its worker die
            pipe.xadd(INBOX_PREFIX + worker, fields).sadd(INBOXES, worker).execute()

    def _route(self, worker: str | None, beats: dict[str, str], waiting: dict[str, str]) -> str | None:
        """The worker to send a conversation's next turn to, or None for the shared stream:
        `worker`, the one that wrote its last reply, if it is alive (`beats`), no reply waits in
        it for a free slot (`waiting`), and none waits in the shared stream (so that a routed
        job overtakes nobody)."""
        if worker is None:
            return None
        now = time.time()
        beat = beats.get(worker)
        if beat is None or now - float(beat) > self.claim_ms / 1000:
            return None
        if worker in waiting:
            count, at = waiting[worker].split()
            if int(count) > 0 and now - float(at) <= BUSY_TTL:
                return None
        if self._undelivered(STREAM, 1):
            return None
        return worker

    def cancel(self, message_id: int) -> None:
        self.redis.set(f"{CANCEL_PREFIX}{message_id}", 1, ex=CANCEL_TTL)

    def take(self, max_jobs: int, timeout: float, free_slots: int | None = None) -> list[Job]:
        """Jobs of dead workers first, then routed ones (others' that waited too long, then this
        worker's own, as many as `free_slots`: a worker with no free slot leaves them to others),
        then the shared stream's (waiting for one only if none was found)."""
        try:
            return self._take(max_jobs, timeout, free_slots)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_ready = False  # a stream was deleted under us (flushed, or Redis restarted)
            return self._take(max_jobs, timeout, free_slots)

    def _take(self, max_jobs: int, timeout: float, free_slots: int | None) -> list[Job]:
        self._ensure_group()
        jobs = self._claim(STREAM, max_jobs)
        if len(jobs) < max_jobs and time.monotonic() >= self._sweep_at:
            self._sweep_at = time.monotonic() + self.route_wait / 4
            jobs += self._sweep(max_jobs - len(jobs))
        # Routed here: this worker's engine holds their conversations' KV cache.
        own = max_jobs if free_slots is None else free_slots
        jobs += self._read({self.inbox: ">"}, min(own, max_jobs - len(jobs)), 0.0)
        jobs += self._read({STREAM: ">"}, max_jobs - len(jobs), 0.0)
        if not jobs and timeout > 0:
            # Nothing anywhere: wait for the next job in either stream (room for one from each).
            streams = {STREAM: ">", self.inbox: ">"} if max_jobs >= 2 and own > 0 else {STREAM: ">"}
            jobs = self._read(streams, max_jobs // len(streams), timeout)
        return jobs

    def _claim(self, stream: str, max_jobs: int) -> list[Job]:
        """Pending jobs of `stream` nobody touched for the claim time, now this worker's."""
        if max_jobs <= 0:
            return []
        _next, entries, *_deleted = self.redis.xautoclaim(
            stream, GROUP, self.consumer, self.claim_ms, start_id="0-0", count=max_jobs
        )
        jobs = []
        for entry_id, fields in entries:
            if not fields:  # the entry itself is gone (Redis < 7 lists deleted ones too)
                continue
            # XAUTOCLAIM counted this delivery; XPENDING tells how many there were in all.
            pending = self.redis.xpending_range(stream, GROUP, min=entry_id, max=entry_id, count=1)
            attempt = pending[0]["times_delivered"] if pending else 1
            log.warning("took over reply %s (attempt %d)", fields["message_id"], attempt, extra={"reply_id": int(fields["message_id"])})
            jobs.append(_job(stream, entry_id, fields, attempt))
        return jobs

    def _read(self, streams: dict[str, str], max_jobs: int, timeout: float) -> list[Job]:
        if max_jobs <= 0:
            return []
        block = max(1, int(timeout * 1000)) if timeout > 0 else None  # BLOCK 0 would wait forever
        answer = self.redis.xreadgroup(GROUP, self.consumer, streams, count=max_jobs, block=block)
        return [
            _job(stream, entry_id, fields)
            for stream, entries in answer or ()
            for entry_id, fields in entries
        ]

    def _sweep(self, max_jobs: int) -> list[Job]:
        """From every inbox: the pending jobs of a dead worker (claimed, as in the shared stream),
        and the routed jobs their worker left untaken for `route_wait` seconds. An inbox whose
        worker has been silent for twice the claim time is dropped once it is empty."""
        workers = sorted(self.redis.smembers(INBOXES))
        if not workers:
            return []
        beats = dict(zip(workers, self.redis.hmget(WORKERS, workers)))
        now = time.time()
        jobs: list[Job] = []
        for worker in workers:
            stream = INBOX_PREFIX + worker
            try:
                jobs += self._claim(stream, max_jobs - len(jobs))
                if worker != self.consumer and len(jobs) < max_jobs:
                    # Delivered once, to whoever reads it first: a job the worker takes meanwhile
                    # is not taken here, and a younger one taken instead is harmless.
                    overdue = self._undelivered(stream, max_jobs - len(jobs), before=now - self.route_wait)
                    jobs += self._read({stream: ">"}, len(overdue), 0.0)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # Made by a `put` after Redis lost its data, before its worker made the group.
                self._make_group(stream)
            beat = beats[worker]
            if (beat is None or now - float(beat) > 2 * self.claim_ms / 1000) and not self.redis.xlen(stream):
                with self.redis.pipeline() as pipe:  # no `put` routes to a worker silent this long
                    pipe.delete(stream).srem(INBOXES, worker).execute()
        return jobs

    def _undelivered(self, stream: str, limit: int, before: float | None = None) -> list[tuple[str, dict]]:
        """Up to `limit` entries of `stream` no worker took yet, oldest first (only those
        added before the unix time `before`, if given)."""
        if limit <= 0:
            return []
        try:
            groups = self.redis.xinfo_groups(stream)
        except redis.ResponseError:  # no stream yet
            return []
        last = next((g["last-delivered-id"] for g in groups if g["name"] == GROUP), None)
        if last is None:
            return []
        until = "+" if before is None else str(int(before * 1000))  # entry ids start with their time in ms
        return self.redis.xrange(stream, min=f"({last}", max=until, count=limit)

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        # From "0": jobs queued before any worker ever ran are served too.
        if self._make_group(STREAM, mkstream=True):  # this worker made the group: whatever the old stream held is gone
            for message_id in self.refill():
                self.redis.xadd(STREAM, {"message_id": message_id})
        self._make_group(self.inbox, mkstream=True)
        with self.redis.pipeline() as pipe:  # listed and alive: `put` may route here from now on
            pipe.sadd(INBOXES, self.consumer).hset(WORKERS, self.consumer, time.time()).execute()
        self._group_ready = True

    def _make_group(self, stream: str, mkstream: bool = False) -> bool:
        """Whether the consumer group was made on `stream` now (False: it was there already, or
        there is no such stream and `mkstream` is False)."""
        try:
            self.redis.xgroup_create(stream, GROUP, id="0", mkstream=mkstream)
        except redis.ResponseError as exc:
            if "BUSYGROUP" in str(exc) or "requires the key to exist" in str(exc):
                return False
            raise
        return True

    def heartbeat(self, jobs: Collection[Job]) -> None:
        """Record this worker as alive, and reset the idle time of these pending jobs, so that
        no worker claims them."""
        tokens = defaultdict(list)
        for job in jobs:
            tokens[job.stream].append(job.token)
        with self.redis.pipeline() as pipe:
            pipe.hset(WORKERS, self.consumer, time.time())
            for stream, ids in tokens.items():
                # JUSTID: a touch, not a delivery; the count the retry limit reads stays as it is.
                pipe.xclaim(stream, GROUP, self.consumer, 0, ids, justid=True)
            pipe.execute()

    def waiting(self, limit: int, waiting_here: int) -> tuple[int, list[int]]:
        """Each worker records in one hash how many replies wait in it for a free slot, and when
        (a record older than WAITING_TTL is a worker gone, and dropped). Only the live worker with
        the least name reads the replies no worker took yet, so that a waiting page is told one
        count, not one per worker. (A job routed to an inbox is taken at once, or within
        `route_wait` seconds, and is not counted.)"""
        now = time.time()
        with self.redis.pipeline() as pipe:
            records = pipe.hset(WAITING, self.consumer, f"{waiting_here} {now}").hgetall(WAITING).execute()[1]
        others, stale = {}, []
        for consumer, record in records.items():
            count, at = record.split()
            if now - float(at) > WAITING_TTL:
                stale.append(consumer)
            elif consumer != self.consumer:
                others[consumer] = int(count)
        if stale:
            self.redis.hdel(WAITING, *stale)
        if any(consumer < self.consumer for consumer in others):
            return sum(others.values()), []
        return sum(others.values()), [int(fields["message_id"]) for _id, fields in self._undelivered(STREAM, limit)]

    def cancelled(self, message_ids: Collection[int]) -> set[int]:
        ids = list(message_ids)
        if not ids:
            return set()
        flags = self.redis.mget([f"{CANCEL_PREFIX}{i}" for i in ids])
        return {i for i, flag in zip(ids, flags) if flag is not None}

    def ack(self, job: Job, affinity: bool = False) -> None:
        with self.redis.pipeline() as pipe:
            pipe.xack(job.stream, GROUP, job.token).xdel(job.stream, job.token)
            pipe.delete(f"{CANCEL_PREFIX}{job.message_id}")
            if affinity and job.conversation_id is not None:
                pipe.set(f"{AFFINITY_PREFIX}{job.conversation_id}", self.consumer, ex=AFFINITY_TTL)
            pipe.execute()


def _job(stream: str, entry_id: str, fields: dict, attempt: int = 1) -> Job:
    conversation_id = fields.get("conversation_id")
    return Job(
        int(fields["message_id"]), entry_id, attempt, stream,
        int(conversation_id) if conversation_id is not None else None,
    )


@functools.cache
def _queue_for(redis_url: str, max_length: int, claim_seconds: float) -> JobQueue:
    if not redis_url:
        return LocalQueue(max_length)
    return RedisQueue(redis_url, max_length, claim_seconds, refill=queued_replies)


def get_queue() -> JobQueue:
    """This process's queue, as the settings describe it."""
    return _queue_for(settings.REDIS_URL, settings.GROK_MAX_QUEUE, settings.GROK_JOB_CLAIM_SECONDS)


def queue_length(client: redis.Redis, workers: Iterable[str] | None = None) -> int:
    """Replies waiting for a worker or being written: the entries of the shared stream and of
    every inbox (a missing stream counts 0). `workers`: those with an inbox, if the caller has
    read them already."""
    if workers is None:
        workers = client.smembers(INBOXES)
    with client.pipeline(transaction=False) as pipe:
        pipe.xlen(STREAM)
        for worker in workers:
            pipe.xlen(INBOX_PREFIX + worker)
        return sum(pipe.execute())


def live_workers(client: redis.Redis, claim_seconds: float) -> list[str]:
    """The workers whose last heartbeat is younger than the claim time (they beat three times
    in it); older records, workers gone, are dropped."""
    now = time.time()
    records = client.hgetall(WORKERS)
    gone = [worker for worker, at in records.items() if now - float(at) > claim_seconds]
    if gone:
        client.hdel(WORKERS, *gone)
    return sorted(set(records) - set(gone))


def queued_replies() -> list[int]:
    """The replies the database has waiting for a worker, oldest first."""
    return list(
        Message.objects.filter(role=Message.Role.ASSISTANT, status=Message.Status.QUEUED)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def enqueue(message_id: int, conversation_id: int) -> None:
    """Queue the reply `message_id` of `conversation_id` (which routing goes by). Raises
    ChatError ("busy" or "unavailable") when it cannot be queued, after marking the reply
    failed; the user's message stays saved."""
    try:
        get_queue().put(message_id, conversation_id)
    except QueueFull:
        _refuse(message_id, conversation_id, "busy", "Too many replies are waiting. Try again in a minute.")
    except redis.RedisError:
        _refuse(message_id, conversation_id, "unavailable", "The reply queue is unreachable. Try again shortly.")


def cancel(message_id: int) -> None:
    """Ask the worker writing `message_id` to stop it; it keeps the text written so far."""
    try:
        get_queue().cancel(message_id)
    except redis.RedisError:
        raise ChatError(
            "unavailable", "The reply queue is unreachable; the reply could not be stopped.",
            message_id=message_id,
        ) from None


def _refuse(message_id: int, conversation_id: int, code: str, text: str) -> None:
    Message.objects.filter(pk=message_id, status=Message.Status.QUEUED).update(
        status=Message.Status.FAILED, finish_reason="error", error=text, updated_at=timezone.now()
    )
    raise ChatError(code, text, message_id=message_id, conversation_id=conversation_id)
