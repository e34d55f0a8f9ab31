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
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

import redis
from django.conf import settings
from django.utils import timezone

from chat.errors import ChatError
from chat.models import Message

log = logging.getLogger(__name__)

STREAM = "grokweb:jobs"
GROUP = "workers"
CANCEL_PREFIX = "grokweb:cancel:"
WAITING = "grokweb:waiting"  # worker -> "<replies waiting in it for a free slot> <unix time>"
WAITING_TTL = 5.0  # seconds; workers refresh theirs twice a second while busy
WORKERS = "grokweb:workers"  # worker -> unix time of its last heartbeat, busy or idle (/readyz)
CANCEL_TTL = 3600  # seconds; far longer than any reply, short enough not to pile up keys


class QueueFull(Exception):
    pass


@dataclass(frozen=True)
class Job:
    message_id: int
    token: str  # what `ack` needs: the stream entry id ("" in process)
    attempt: int = 1  # workers given this job so far: more than 1 once taken over from a dead one


class JobQueue(Protocol):
    def put(self, message_id: int) -> None: ...  # QueueFull when at its bound
    def cancel(self, message_id: int) -> None: ...
    def take(self, max_jobs: int, timeout: float) -> list[Job]: ...
    def cancelled(self, message_ids: Collection[int]) -> set[int]: ...
    def ack(self, job: Job) -> None: ...  # the reply is saved: the job is over
    def heartbeat(self, jobs: Collection[Job]) -> None: ...  # still at work on them: not to claim
    # `waiting_here` replies wait in this worker for a free slot. (How many wait in the other
    # workers, up to `limit` replies no worker took yet, oldest first, if this worker is the one
    # to tell them.)
    def waiting(self, limit: int, waiting_here: int) -> tuple[int, list[int]]: ...


class LocalQueue:
    """The embedded mode's queue: the web process's threads share it. Like the stream, its bound
    counts the replies waiting and those taken but not yet acknowledged."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._jobs: queue.Queue[int] = queue.Queue()
        self._taken = 0
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()

    def put(self, message_id: int) -> None:
        with self._lock:
            if self._jobs.qsize() + self._taken >= self.max_length:
                raise QueueFull
            self._jobs.put(message_id)

    def cancel(self, message_id: int) -> None:
        with self._lock:
            self._cancelled.add(message_id)

    def take(self, max_jobs: int, timeout: float) -> list[Job]:
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

    def ack(self, job: Job) -> None:
        with self._lock:
            self._taken -= 1
            self._cancelled.discard(job.message_id)

    def heartbeat(self, jobs: Collection[Job]) -> None:
        pass  # one process: its jobs die with it, and the worker's start recovers their replies

    def waiting(self, limit: int, waiting_here: int) -> tuple[int, list[int]]:
        with self._jobs.mutex:  # one worker: none wait anywhere else
            return 0, list(itertools.islice(self._jobs.queue, limit))


class RedisQueue:
    """Jobs in a Redis Stream. An entry is deleted once acknowledged, so the stream's length is
    the number of replies waiting or being written, which is what the bound applies to."""

    def __init__(
        self,
        url: str,
        max_length: int,
        claim_seconds: float = 30.0,
        refill: Callable[[], Iterable[int]] = tuple,
    ) -> None:
        self.redis = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2, socket_timeout=10
        )
        self.max_length = max_length
        self.claim_ms = max(1, int(claim_seconds * 1000))
        self.refill = refill  # the replies to queue again when the stream is made afresh
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._group_ready = False

    def put(self, message_id: int) -> None:
        if self.redis.xlen(STREAM) >= self.max_length:
            raise QueueFull
        self.redis.xadd(STREAM, {"message_id": message_id})

    def cancel(self, message_id: int) -> None:
        self.redis.set(f"{CANCEL_PREFIX}{message_id}", 1, ex=CANCEL_TTL)

    def take(self, max_jobs: int, timeout: float) -> list[Job]:
        """Jobs of dead workers first, then new ones (waiting for those only if none was claimed)."""
        try:
            return self._take(max_jobs, timeout)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_ready = False  # the stream was deleted under us (flushed, or Redis restarted)
            return self._take(max_jobs, timeout)

    def _take(self, max_jobs: int, timeout: float) -> list[Job]:
        self._ensure_group()
        jobs = self._claim(max_jobs)
        if len(jobs) < max_jobs:
            answer = self._read(max_jobs - len(jobs), 0.0 if jobs else timeout)
            jobs += [
                Job(int(fields["message_id"]), entry_id)
                for _stream, entries in answer or ()
                for entry_id, fields in entries
            ]
        return jobs

    def _claim(self, max_jobs: int) -> list[Job]:
        """Pending jobs nobody touched for the claim time, now this worker's."""
        _next, entries, *_deleted = self.redis.xautoclaim(
            STREAM, GROUP, self.consumer, self.claim_ms, start_id="0-0", count=max_jobs
        )
        jobs = []
        for entry_id, fields in entries:
            if not fields:  # the entry itself is gone (Redis < 7 lists deleted ones too)
                continue
            # XAUTOCLAIM counted this delivery; XPENDING tells how many there were in all.
            pending = self.redis.xpending_range(STREAM, GROUP, min=entry_id, max=entry_id, count=1)
            attempt = pending[0]["times_delivered"] if pending else 1
            log.warning("took over reply %s (attempt %d)", fields["message_id"], attempt, extra={"reply_id": int(fields["message_id"])})
            jobs.append(Job(int(fields["message_id"]), entry_id, attempt))
        return jobs

    def _read(self, max_jobs: int, timeout: float):
        block = max(1, int(timeout * 1000)) if timeout > 0 else None  # BLOCK 0 would wait forever
        return self.redis.xreadgroup(
            GROUP, self.consumer, {STREAM: ">"}, count=max_jobs, block=block
        )

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From "0": jobs queued before any worker ever ran are served too.
            self.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        else:  # this worker made the group: whatever the old stream held is gone
            for message_id in self.refill():
                self.redis.xadd(STREAM, {"message_id": message_id})
        self._group_ready = True

    def heartbeat(self, jobs: Collection[Job]) -> None:
        """Record this worker as alive, and reset the idle time of these pending jobs, so that
        no worker claims them."""
        self.redis.hset(WORKERS, self.consumer, time.time())
        if jobs:
            # JUSTID: a touch, not a delivery; the count the retry limit reads stays as it is.
            self.redis.xclaim(STREAM, GROUP, self.consumer, 0, [j.token for j in jobs], justid=True)

    def waiting(self, limit: int, waiting_here: int) -> tuple[int, list[int]]:
        """Each worker records in one hash how many replies wait in it for a free slot, and when
        (a record older than WAITING_TTL is a worker gone, and dropped). Only the live worker with
        the least name reads the replies no worker took yet, so that a waiting page is told one
        count, not one per worker."""
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
        return sum(others.values()), self._untaken(limit)

    def _untaken(self, limit: int) -> list[int]:
        try:
            groups = self.redis.xinfo_groups(STREAM)
        except redis.ResponseError:  # no stream yet
            return []
        last = next((g["last-delivered-id"] for g in groups if g["name"] == GROUP), None)
        if last is None:
            return []
        entries = self.redis.xrange(STREAM, min=f"({last}", max="+", count=limit)
        return [int(fields["message_id"]) for _entry_id, fields in entries]

    def cancelled(self, message_ids: Collection[int]) -> set[int]:
        ids = list(message_ids)
        if not ids:
            return set()
        flags = self.redis.mget([f"{CANCEL_PREFIX}{i}" for i in ids])
        return {i for i, flag in zip(ids, flags) if flag is not None}

    def ack(self, job: Job) -> None:
        with self.redis.pipeline() as pipe:
            pipe.xack(STREAM, GROUP, job.token).xdel(STREAM, job.token)
            pipe.delete(f"{CANCEL_PREFIX}{job.message_id}")
            pipe.execute()


@functools.cache
def _queue_for(redis_url: str, max_length: int, claim_seconds: float) -> JobQueue:
    if not redis_url:
        return LocalQueue(max_length)
    return RedisQueue(redis_url, max_length, claim_seconds, refill=queued_replies)


def get_queue() -> JobQueue:
    """This process's queue, as the settings describe it."""
    return _queue_for(settings.REDIS_URL, settings.GROK_MAX_QUEUE, settings.GROK_JOB_CLAIM_SECONDS)


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


def enqueue(message_id: int) -> None:
    """Queue the reply `message_id`. Raises ChatError ("busy" or "unavailable") when it cannot
    be queued, after marking the reply failed; the user's message stays saved."""
    try:
        get_queue().put(message_id)
    except QueueFull:
        _refuse(message_id, "busy", "Too many replies are waiting. Try again in a minute.")
    except redis.RedisError:
        _refuse(message_id, "unavailable", "The reply queue is unreachable. Try again shortly.")


def cancel(message_id: int) -> None:
    """Ask the worker writing `message_id` to stop it; it keeps the text written so far."""
    try:
        get_queue().cancel(message_id)
    except redis.RedisError:
        raise ChatError(
            "unavailable", "The reply queue is unreachable; the reply could not be stopped.",
            message_id=message_id,
        ) from None


def _refuse(message_id: int, code: str, text: str) -> None:
    Message.objects.filter(pk=message_id, status=Message.Status.QUEUED).update(
        status=Message.Status.FAILED, finish_reason="error", error=text, updated_at=timezone.now()
    )
    conversation_id = (
        Message.objects.filter(pk=message_id).values_list("conversation_id", flat=True).first()
    )
    raise ChatError(code, text, message_id=message_id, conversation_id=conversation_id)
