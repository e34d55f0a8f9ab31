"""The serving loop: jobs in, batched text out. Knows nothing of Django.

A `JobSource` hands out ready `Request`s and says which were cancelled; a `Sink` stores and
publishes what the engine wrote. The loop admits new jobs into the running batch between steps
(continuous batching: the engine folds their prefill into the next decode step), gathers each
reply's text and hands it to the sink every `flush_interval` seconds, so a reply goes out in
batches of a few tokens rather than a frame per token; a reply's first text goes out at once.

A failing request never stops the loop: a prompt the engine refuses fails alone; a step that
raises fails the replies in that batch and the loop goes on with the next jobs. A sink that raises
(the database is away) keeps the text for the next try, so nothing written is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotations only: the loop itself needs neither torch nor the engine module
    from inference.engine import Delta, Engine, Request

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.04  # seconds between sink calls while replies stream
IDLE_WAIT = 0.25  # how long `take` may block when the engine is idle (bounds the reaction to stop)
SINK_RETRY = 1.0  # seconds before retrying a sink that raised
SOURCE_RETRY = 0.5  # seconds before looking again at a job source that raised, doubling ...
SOURCE_RETRY_MAX = 4.0  # ... up to this while it keeps failing (Redis restarting, say)
WAITING_INTERVAL = 0.5  # seconds between looks at what waits in the shared queue, for positions
MAX_POSITIONS = 200  # waiting replies told their place in line; those further back are only told they wait
MAX_STEP_FAILURES = 3  # consecutive failing steps after which the engine is taken to be broken
STOPPED_ERROR = "The worker stopped before the reply was finished."


class JobSource(Protocol):
    def take(self, max_jobs: int, timeout: float) -> list[Request]:
        """Up to `max_jobs` new requests, waiting at most `timeout` seconds for the first."""

    def cancelled(self, request_ids: Collection[str]) -> set[str]:
        """Those of `request_ids` whose cancellation was asked for."""

    def waiting(self, limit: int, waiting_here: int) -> tuple[int, list[str]]:
        """(how many requests wait for a free slot in other workers' engines, up to `limit`
        requests waiting that no worker has taken yet, oldest first, or none when another worker
        tells them their place); `waiting_here`: how many wait in this worker's engine, for the others to know."""


@dataclass
class Update:
    """Where one reply stands: what the sink gets for each reply that changed since its last call."""

    request_id: str
    text: str  # everything written so far (the sink tracks what it already published)
    finish_reason: str | None  # as Delta's, plus "error"; None while running
    error: str  # why it failed, "" unless it did
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float | None  # seconds from being taken to the first text
    duration: float | None  # seconds from being taken to the end, once finished
    cached_tokens: int = 0  # prompt tokens reused from the engine's prefix cache


class Sink(Protocol):
    def deliver(self, updates: list[Update]) -> None:
        """Store and publish these updates; raise to have them offered again later."""

    def queued(self, positions: dict[str, int]) -> None:
        """Requests waiting for a free slot, with their place in line (1 = next); only changes."""


@dataclass
class _InFlight:
    """A reply from the moment its request is taken until its end is delivered."""

    request_id: str
    taken_at: float
    text: str = ""
    finish_reason: str | None = None
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    first_text_at: float | None = None
    finished_at: float | None = None
    dirty: bool = True  # changed since the last successful delivery
    interrupted: bool = False  # cancelled by the worker's shutdown, not by its user

    def update(self) -> Update:
        return Update(
            request_id=self.request_id,
            text=self.text,
            finish_reason=self.finish_reason,
            error=self.error,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            time_to_first_token=None
            if self.first_text_at is None
            else self.first_text_at - self.taken_at,
            duration=None if self.finished_at is None else self.finished_at - self.taken_at,
            cached_tokens=self.cached_tokens,
        )


class ServingLoop:
    """Drives `engine` with jobs from `source`, reporting to `sink`.

    `max_jobs` bounds the requests taken at once (running plus waiting inside the engine): a
    little more than the engine's batch, so a freed slot is refilled at once and the waiting ones
    can be told their place, while the rest wait in the shared queue for other workers.
    """

    def __init__(
        self,
        engine: Engine,
        source: JobSource,
        sink: Sink,
        *,
        max_jobs: int,
        flush_interval: float = FLUSH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.source = source
        self.sink = sink
        self.max_jobs = max_jobs
        self.flush_interval = flush_interval
        self.clock = clock
        self.replies: dict[str, _InFlight] = {}  # taken and not yet delivered to the end
        self._last_flush = float("-inf")
        self._first_text_waiting = False  # a reply has its first text and it is not delivered yet
        self._poll_at = float("-inf")
        self._retry_at = float("-inf")
        self._positions: dict[str, int] = {}
        self._untaken: list[str] = []  # waiting, taken by no worker yet: the source's `waiting`, every WAITING_INTERVAL
        self._waiting_elsewhere = 0  # waiting for a free slot in other workers' engines, as of that look
        self._waiting_at = float("-inf")
        self._told_waiting = 0  # what this worker last told the source waits in it
        self._step_failures = 0
        self._source_failures = 0

    def run(self, stop: threading.Event, drain_timeout: float = 15.0) -> None:
        """Serve jobs until `stop` is set, then let the replies in hand finish for up to
        `drain_timeout` seconds; those still running then end as failed (their text kept)."""
        while not stop.is_set():
            self.tick(accept=True)
        deadline = self.clock() + drain_timeout
        while self.replies and self.clock() < deadline:
            self.tick(accept=False)
        for reply in self.replies.values():
            if reply.finish_reason is None:
                reply.interrupted = True
                self._cancel(reply.request_id)
        # Cancelled requests leave the engine at its next step; a short grace covers that.
        deadline = self.clock() + max(2.0, 20 * self.flush_interval)
        while self.replies and self.clock() < deadline:
            self.tick(accept=False)
        if self.replies:
            log.error("worker stopped with %d replies undelivered", len(self.replies))

    def tick(self, accept: bool = True) -> None:
        """One round: take new jobs and pass on cancels (between steps, at most once a flush
        interval while the engine is busy), run a step, flush when due."""
        waited = False
        if self.clock() >= self._poll_at:
            waited = self._poll(accept)
        if self.engine.has_work():
            self._step()
        elif not waited:
            time.sleep(self.flush_interval / 4)  # nothing to step, no queue to block on: no spinning
        now = self.clock()
        # A reply's first text goes out at once (time to first token is what a person feels);
        # after that, text waits for the flush interval to go out in batches.
        due = now - self._last_flush >= self.flush_interval or self._first_text_waiting
        if due or not self.engine.has_work():
            self._flush(now)

    # -- steps of a tick ------------------------------------------------------------------------

    def _waiting(self) -> list[str]:
        """Requests waiting in this worker's engine for a free slot, first in line first."""
        return [i for i in self.engine.queued() if i in self.replies]

    def _running(self) -> list[str]:
        return [r.request_id for r in self.replies.values() if r.finish_reason is None]

    def _poll(self, accept: bool) -> bool:
        """Take new jobs (if `accept`) and pass on cancels; whether it blocked on the queue."""
        busy = self.engine.has_work()
        now = self.clock()
        self._poll_at = now + self.flush_interval if busy else now
        free = self.max_jobs - len(self.replies)
        try:
            if accept and free > 0:
                # Idle: block on the queue rather than spin. Busy: only look, never wait.
                self._admit(free, timeout=0.0 if busy else IDLE_WAIT)
            if self.replies:
                for request_id in self.source.cancelled(self._running()):
                    self._cancel(request_id)
            if not busy:  # nothing waits here, so nothing in the queue waits either
                self._untaken, self._waiting_elsewhere = [], 0
                if self._told_waiting:  # others count it (and route by it): tell them it is over
                    self.source.waiting(0, 0)
                    self._told_waiting = 0
            elif now >= self._waiting_at:
                self._waiting_at = now + WAITING_INTERVAL
                self._told_waiting = len(self._waiting())
                self._waiting_elsewhere, self._untaken = self.source.waiting(MAX_POSITIONS, self._told_waiting)
        except Exception as exc:  # the queue is away: keep writing the replies in hand, look again later
            retry = min(SOURCE_RETRY_MAX, SOURCE_RETRY * 2**self._source_failures)
            self._source_failures += 1
            if self._source_failures == 1:
                log.exception("the job source failed; retrying in %ss", retry)
            else:
                log.warning("the job source still fails (%s); retrying in %ss", exc, retry)
            self._poll_at = now + retry
            return False
        if self._source_failures:
            log.info("the job source is back")
            self._source_failures = 0
        return accept and free > 0 and not busy

    def _admit(self, free: int, timeout: float) -> None:
        taken = self.source.take(free, timeout)
        if taken:  # out of the queue now: the untaken ones last looked at must not list them again
            ids = {request.id for request in taken}
            self._untaken = [i for i in self._untaken if i not in ids]
        for request in taken:
            reply = _InFlight(request.id, taken_at=self.clock())
            self.replies[request.id] = reply
            try:
                self.engine.add(request)
            except ValueError as exc:  # the prompt does not fit: this reply fails, alone
                self._fail(reply, str(exc))

    def _cancel(self, request_id: str) -> None:
        try:
            self.engine.cancel(request_id)
        except Exception:  # an engine that cannot cancel must not stop the others' replies
            log.exception("cancelling %s failed", request_id, extra={"reply_id": request_id})
            reply = self.replies.get(request_id)
            if reply is not None and reply.finish_reason is None:
                self._fail(reply, "The reply could not be cancelled.")

    def _step(self) -> None:
        try:
            deltas = self.engine.step()
        except Exception as exc:
            self._step_failures += 1
            log.exception("engine step failed (%d in a row)", self._step_failures)
            if self._step_failures >= MAX_STEP_FAILURES:
                raise
            for request_id in self._running():
                self._fail(self.replies[request_id], f"The model failed: {exc}")
                self._cancel(request_id)
            return
        self._step_failures = 0
        now = self.clock()
        for delta in deltas:
            self._apply(delta, now)

    def _apply(self, delta: Delta, now: float) -> None:
        reply = self.replies.get(delta.request_id)
        if reply is None or reply.finish_reason is not None:
            return  # a reply already failed here, leaving the engine
        if delta.text:
            reply.text += delta.text
            if reply.first_text_at is None:
                reply.first_text_at = now
                self._first_text_waiting = True
        reply.prompt_tokens = delta.prompt_tokens
        reply.completion_tokens = delta.completion_tokens
        reply.cached_tokens = delta.cached_tokens
        reply.dirty = True
        if delta.finish_reason is not None:
            reply.finish_reason = delta.finish_reason
            reply.finished_at = now
            reply.error = delta.error
            if reply.interrupted:
                reply.error = STOPPED_ERROR

    def _fail(self, reply: _InFlight, error: str) -> None:
        reply.finish_reason = "error"
        reply.error = error
        reply.finished_at = self.clock()
        reply.dirty = True

    def _flush(self, now: float) -> None:
        self._last_flush = now
        # In line: those waiting in this worker's engine, then those no worker took yet (when the
        # source gives them to this worker to tell), behind all that wait in every worker's engine.
        waiting = self._waiting()
        positions = {request_id: place for place, request_id in enumerate(waiting, 1)}
        ahead = len(waiting) + self._waiting_elsewhere
        for place, request_id in enumerate(self._untaken[: max(0, MAX_POSITIONS - ahead)], ahead + 1):
            positions[request_id] = place
        # First come, first served: a place never rises. A higher figure would only come from
        # counts a moment old, so a reply keeps the least place it was told.
        positions = {i: min(p, self._positions.get(i, p)) for i, p in positions.items()}
        changed = {i: p for i, p in positions.items() if self._positions.get(i) != p}
        self._positions = positions
        if changed:
            try:
                self.sink.queued(changed)
            except Exception:  # only a hint to the pages; the next change is reported anyway
                log.exception("reporting queue positions failed")
        dirty = [r for r in self.replies.values() if r.dirty]
        if not dirty or now < self._retry_at:
            return
        try:
            self.sink.deliver([r.update() for r in dirty])
        except Exception:
            log.exception("delivering %d replies failed; retrying", len(dirty))
            self._retry_at = now + SINK_RETRY
            return
        self._first_text_waiting = False
        for reply in dirty:
            reply.dirty = False
            if reply.finish_reason is not None:
                del self.replies[reply.request_id]
