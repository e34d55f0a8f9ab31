"""Routing a conversation's next turn to the worker whose engine caches it (chat/jobs.py), with
two real workers: `chat.serving.serve` loops on threads, each over its own tiny engine (with a
prefix cache) and its own RedisQueue on the test Redis, writing into the test database."""

import logging
import threading
import time

import pytest

from chat import branches, jobs
from chat.models import Message
from chat.serving import serve
from tests.stack import TEST_REDIS_URL

ROUTE_WAIT = 0.5


@pytest.fixture(scope="module")
def engines(tiny_checkpoint):
    """Two engines as workers load them by default (spare rows for the prefix cache), one slot
    each, so that one long reply keeps a worker busy."""
    import torch

    from inference.engine import Engine

    torch.set_num_threads(1)
    return [Engine(tiny_checkpoint, quant="none", max_batch=1, prefix_cache=4, context_len=512) for _ in range(2)]


class Worker:
    """One worker: `serve` on a thread until `stop()`."""

    def __init__(self, name: str, engine) -> None:
        self.name, self.engine = name, engine
        self.queue = jobs.RedisQueue(TEST_REDIS_URL, 64, claim_seconds=30, route_wait=ROUTE_WAIT)
        self.queue.consumer = name
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=serve, args=(engine, lambda events: None, self.stopping),
                                       kwargs={"max_batch": 1, "queue": self.queue}, daemon=True)
        self.thread.start()

    @property
    def served(self) -> int:
        return self.engine.stats.requests

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def workers(committed_db, redis_db, settings, engines):
    """Workers w1 and w2 serving the test Redis; `jobs.enqueue` queues there too."""
    settings.REDIS_URL, settings.GROK_WORKER_DRAIN_SECONDS = TEST_REDIS_URL, 1
    jobs._queue_for.cache_clear()
    started = [Worker("w1", engines[0]), Worker("w2", engines[1])]
    deadline = time.monotonic() + 20
    while redis_db.scard(jobs.INBOXES) < 2:  # both made their groups: each takes from now on
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield {w.name: w for w in started}
    for worker in started:
        if worker.thread.is_alive():
            worker.stop()
    jobs._queue_for.cache_clear()


def ask(conversation, text: str, max_new_tokens: int = 6) -> Message:
    """Post `text` and queue its reply, as a send does -> the queued reply."""
    branches.append(conversation, role="user", content=text)
    reply = branches.append(conversation, role="assistant", status="queued",
                            generation={"max_new_tokens": max_new_tokens, "temperature": 0})
    jobs.enqueue(reply.pk, conversation.pk)
    return reply


def finished(reply: Message, timeout: float = 60) -> Message:
    deadline = time.monotonic() + timeout
    while True:
        reply.refresh_from_db()
        if reply.status not in {"queued", "streaming"}:
            assert reply.status == "done", (reply.status, reply.error)
            return reply
        assert time.monotonic() < deadline, "the reply was not written in time"
        time.sleep(0.05)


def settled(redis_db) -> None:
    """Wait until no worker says replies wait in it (a worker says so as it goes idle): until
    then, `put` does not route to it, as it would not to a busy worker."""
    deadline = time.monotonic() + 10
    while any(record.split()[0] != "0" for record in redis_db.hvals(jobs.WAITING)):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_conversations_next_turn_goes_to_the_worker_that_wrote_the_last_reply(
    workers, redis_db, conversation_factory, user_factory
):
    conversations = [conversation_factory(user_factory(f"u{i}"), [], persona="regular") for i in range(4)]
    firsts = [ask(c, f"Tell me a story about dragon number {i}.") for i, c in enumerate(conversations)]
    firsts = [finished(r) for r in firsts]  # written at once, by both workers
    settled(redis_db)
    for conversation, first in zip(conversations, firsts):
        writer = workers[redis_db.get(f"{jobs.AFFINITY_PREFIX}{conversation.pk}")]
        served = {name: w.served for name, w in workers.items()}
        second = finished(ask(conversation, "And then?"))
        # The same engine wrote it, reusing the whole first prompt and reply (but for a token or
        # two where the reply's text meets the next turn): only that engine holds them.
        assert {name: w.served - served[name] for name, w in workers.items()} == {
            name: int(name == writer.name) for name in workers
        }
        assert second.cached_tokens >= first.prompt_tokens - 2
    assert {redis_db.get(f"{jobs.AFFINITY_PREFIX}{c.pk}") for c in conversations} == {"w1", "w2"}, (
        "the first turns all went to one worker: nothing was tested against the other"
    )


def test_a_turn_whose_worker_is_busy_or_dead_is_served_by_the_other(
    workers, redis_db, conversation_factory, user_factory, caplog
):
    caplog.set_level(logging.INFO, logger="chat.bridge")
    conversation = conversation_factory(user_factory("ann"), [], persona="regular")
    finished(ask(conversation, "Tell me a story about a dragon."))
    writer = workers[redis_db.get(f"{jobs.AFFINITY_PREFIX}{conversation.pk}")]
    other = next(w for w in workers.values() if w is not writer)

    # Busy: its one slot holds a long reply. The turn goes to its inbox, waits there for it for
    # ROUTE_WAIT seconds, then the other worker takes it, delivered once (attempt 1).
    bobs = conversation_factory(user_factory("bob"), [], persona="regular")
    redis_db.set(f"{jobs.AFFINITY_PREFIX}{bobs.pk}", writer.name)  # so that the writer takes it
    long = ask(bobs, "Go on.", max_new_tokens=400)
    deadline = time.monotonic() + 20
    while Message.objects.get(pk=long.pk).status != "streaming":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    served, asked_at = other.served, time.monotonic()
    turn = ask(conversation, "And then?")
    assert redis_db.xlen(writer.queue.inbox) == 2  # the long reply's job (pending) and this turn's
    finished(turn)
    assert other.served == served + 1 and time.monotonic() - asked_at >= ROUTE_WAIT
    assert Message.objects.get(pk=long.pk).status == "streaming"  # not behind the long reply
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"reply {turn.pk} started")]
    assert len(started) == 1 and started[0].endswith("(attempt 1)")
    finished(long)

    # Dead: its worker stopped, its heartbeat still fresh (it died a moment ago). The turn goes
    # to its inbox and the other worker serves it after ROUTE_WAIT.
    redis_db.set(f"{jobs.AFFINITY_PREFIX}{conversation.pk}", writer.name)
    writer.stop()
    served = other.served
    turn = ask(conversation, "What happened next?")
    assert redis_db.xlen(writer.queue.inbox) == 1
    finished(turn)
    assert other.served == served + 1 and redis_db.xlen(writer.queue.inbox) == 0
    assert redis_db.get(f"{jobs.AFFINITY_PREFIX}{conversation.pk}") == other.name
