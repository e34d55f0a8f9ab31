"""`Bridge`: the serving loop's job source and sink (inference/loop.py), over the reply queue
(`chat.jobs`), the rules of writing replies (`chat.replies`) and the publisher.

It keeps what the loop needs between calls (each request's job until it is acknowledged, and
how much of each reply is saved and shown); the rules themselves are in `chat.replies`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING

from django.db import close_old_connections

from chat import jobs, metrics, replies
from chat.errors import ChatError
from chat.events import Events, group_name, queued_event
from chat.publisher import Publish
from inference.loop import Update

if TYPE_CHECKING:  # imported where used: the web process loads torch only when it runs a worker
    from inference.engine import Engine, Request

log = logging.getLogger(__name__)


class Bridge:
    """Job source and sink of the serving loop, over `chat.jobs` and the database."""

    def __init__(self, engine: Engine, queue: jobs.JobQueue, publish: Publish) -> None:
        self.engine = engine
        self.queue = queue
        self.publish = publish
        self.jobs: dict[str, jobs.Job] = {}  # request id -> its job, until acknowledged
        self.progress: dict[int, replies.Progress] = {}  # reply id -> what is saved and shown
        self.worker = getattr(queue, "consumer", "embedded")  # the metrics' and the logs' name for it
        # Only an engine with a prefix cache of its own gains from a conversation's next turn
        # coming back to it (chat/jobs.py routes it); an engine server keeps one for all workers.
        self.affinity = getattr(engine, "prefix_cache", 0) > 0

    # -- source ---------------------------------------------------------------------------------

    def take(self, max_jobs: int, timeout: float) -> list[Request]:
        requests = []
        for job in self.queue.take(max_jobs, timeout, self._free_slots()):
            held = self.jobs.get(str(job.message_id))
            if held is not None:  # already writing it: taken back from ourselves, or a duplicate
                if held.token != job.token:
                    self._ack(job)
                continue
            close_old_connections()
            try:
                request = self._start(job)
            except ChatError as exc:  # e.g. too_long: the last message alone overflows the context
                self._send(replies.do_fail_reply(job.message_id, exc.message, exc.code))
                request = None
            except Exception:
                log.exception("preparing reply %s failed", job.message_id, extra={"reply_id": job.message_id})
                self._send(replies.do_fail_reply(job.message_id, "The reply could not start."))
                request = None
            if request is None:  # failed, or stopped or deleted before any worker took it
                self._ack(job)
                continue
            self.jobs[request.id] = job
            requests.append(request)
            log.info("reply %s started: %d prompt tokens (attempt %d)", request.id, len(request.prompt_ids),
                     job.attempt, extra={"reply_id": job.message_id})
        return requests

    def _start(self, job: jobs.Job) -> Request | None:
        from inference.engine import Request, SamplingParams

        start = replies.do_start_reply(
            job, self.engine.tokenizer, context_len=self.engine.context_len,
            model_name=self.engine.model_name,
        )
        if start is None:
            return None
        if start.saved_text:
            self.progress[start.reply_id] = replies.Progress(start.saved_text, start.saved_tokens)
        return Request(
            str(start.reply_id), start.prompt_ids, SamplingParams(**start.sampling, stop=start.stop),
            cache_salt=start.cache_salt, public_prefix=start.public_prefix,
        )

    def _free_slots(self) -> int | None:
        """Slots of the engine no request runs in nor waits for: a job routed here for the
        engine's cache is taken only into one (a busy worker leaves it to the others). None for
        an engine server, to which nothing is routed."""
        slots = getattr(self.engine, "slots", None)
        if slots is None:
            return None
        return max(0, slots.count(None) - len(self.engine.queued()))

    def cancelled(self, request_ids: Collection[str]) -> set[str]:
        return {str(i) for i in self.queue.cancelled([int(i) for i in request_ids])}

    def waiting(self, limit: int, waiting_here: int) -> tuple[int, list[str]]:
        waiting_elsewhere, untaken = self.queue.waiting(limit, waiting_here)
        return waiting_elsewhere, [str(i) for i in untaken]

    # -- sink -----------------------------------------------------------------------------------

    def deliver(self, updates: list[Update]) -> None:
        close_old_connections()
        saved = replies.do_save_updates(updates, self.progress)  # raises: offered again whole
        metrics.observe_finished(updates, self.engine.model_name, self.worker)
        for update in updates:
            if update.finish_reason is not None:
                log.info(
                    "reply %s ended (%s%s): %d prompt + %d new tokens in %.2f s", update.request_id,
                    update.finish_reason, f": {update.error}" if update.error else "", update.prompt_tokens,
                    update.completion_tokens, update.duration or 0.0, extra={"reply_id": int(update.request_id)},
                )
        for reply_id, shown in saved.shown.items():
            self.progress.setdefault(reply_id, replies.Progress()).shown = shown
        # Acknowledged before the pages hear it is done: the affinity it records is then there
        # for the next turn, however fast a client sends it.
        for reply_id in saved.finished:
            self.progress.pop(reply_id, None)
            job = self.jobs.pop(str(reply_id), None)
            if job is not None:
                self._ack(job, affinity=self.affinity)
        self._send(saved.events)

    def queued(self, positions: dict[str, int]) -> None:
        self._send([(group_name(i), queued_event(i, place)) for i, place in positions.items()])

    def _ack(self, job: jobs.Job, affinity: bool = False) -> None:
        try:
            self.queue.ack(job, affinity)
        except Exception:  # the reply is saved; an unacknowledged job only stays pending
            log.exception("acknowledging the job of reply %s failed", job.message_id, extra={"reply_id": job.message_id})

    def _send(self, events: Events) -> None:
        try:
            self.publish(events)
        except Exception:  # the text is saved: pages get it when they resume
            log.exception("publishing %d reply events failed", len(events))
