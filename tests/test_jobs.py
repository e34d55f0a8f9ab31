"""The job queue (chat/jobs.py): LocalQueue, the embedded mode's, and RedisQueue on a Redis
Stream with a consumer group, against the real Redis (GROKWEB_TEST_REDIS_URL, flushed before and
after; a private redis-server where a test empties it): put, take, ack, cancel, the bound, the
backlog no worker took, heartbeats and claiming a silent worker's jobs, refilling a stream made
afresh, `enqueue` refusing when full, and routing a conversation's next turn to the worker that
wrote its last reply (its inbox; when not to route; another worker serving what its worker left;
tests/test_routing.py runs it with two real workers)."""

import time

import pytest

from chat import branches, jobs
from tests.stack import TEST_REDIS_URL


@pytest.fixture
def redis_settings(settings, redis_db):
    """chat.jobs' own queue on the test Redis, made afresh for the test."""
    settings.REDIS_URL = TEST_REDIS_URL
    jobs._queue_for.cache_clear()
    yield
    jobs._queue_for.cache_clear()


@pytest.mark.production
def test_redis_queue_takes_acks_and_cancels(redis_db):
    queue = jobs.RedisQueue(TEST_REDIS_URL, max_length=2)
    assert queue.take(4, 0) == []  # creates the group; nothing yet
    queue.put(11)
    queue.put(12)
    with pytest.raises(jobs.QueueFull):
        queue.put(13)
    first, second = queue.take(4, 0.05)
    assert (first.message_id, second.message_id) == (11, 12)
    # Taken but not acknowledged: pending, and still counted against the bound.
    assert redis_db.xpending(jobs.STREAM, jobs.GROUP)["pending"] == 2
    with pytest.raises(jobs.QueueFull):
        queue.put(13)
    queue.cancel(12)
    assert queue.cancelled([11, 12]) == {12}
    queue.ack(first)
    queue.ack(second)
    assert redis_db.xlen(jobs.STREAM) == 0
    assert redis_db.xpending(jobs.STREAM, jobs.GROUP)["pending"] == 0
    assert queue.cancelled([12]) == set()  # acknowledging clears the cancel
    # Another worker sees only what nobody took; a deleted stream is recreated on the fly.
    redis_db.delete(jobs.STREAM)
    queue.put(14)
    other = jobs.RedisQueue(TEST_REDIS_URL, max_length=2)
    other.consumer = "other"
    assert [j.message_id for j in queue.take(1, 0.05)] == [14]
    assert other.take(1, 0.05) == []


@pytest.mark.production
def test_the_backlog_is_what_no_worker_took_oldest_first(redis_db):
    for queue in (jobs.LocalQueue(8), jobs.RedisQueue(TEST_REDIS_URL, max_length=8)):
        assert queue.waiting(10, 0) == (0, [])  # for Redis: no stream yet
        for message_id in (1, 2, 3, 4):
            queue.put(message_id)
        assert [j.message_id for j in queue.take(1, 0.05)] == [1]
        assert queue.waiting(10, 0) == (0, [2, 3, 4]) and queue.waiting(2, 0) == (0, [2, 3])


@pytest.mark.production
def test_workers_learn_how_many_replies_the_others_hold_and_one_tells_the_backlog(redis_db):
    ann, bob = jobs.RedisQueue(TEST_REDIS_URL, 8), jobs.RedisQueue(TEST_REDIS_URL, 8)
    ann.consumer, bob.consumer = "ann", "bob"
    redis_db.hset(jobs.WAITING, "aaron", "7 1000.0")  # a worker silent since 1970: gone
    ann.put(5)
    ann.put(6)
    assert ann.take(1, 0.05)[0].message_id == 5
    assert ann.waiting(10, 3) == (0, [6])
    assert bob.waiting(10, 2) == (3, [])  # ann, the least name alive, tells the backlog
    assert ann.waiting(10, 1) == (2, [6])
    assert set(redis_db.hkeys(jobs.WAITING)) == {"ann", "bob"}


@pytest.mark.production
def test_enqueue_with_a_full_redis_queue_is_busy_and_marks_the_reply_failed(
    committed_db, redis_settings, settings, user_factory, conversation_factory
):
    settings.GROK_MAX_QUEUE = 0
    conversation = conversation_factory(user_factory("ann"), [("user", "hi")])
    reply = branches.append(conversation, role="assistant", status="queued")
    with pytest.raises(jobs.ChatError) as refused:
        jobs.enqueue(reply.id, conversation.id)
    assert refused.value.code == "busy"
    assert refused.value.extra == {"message_id": reply.id, "conversation_id": conversation.id}
    reply.refresh_from_db()
    assert reply.status == "failed" and reply.error


@pytest.mark.production
def test_a_silent_workers_jobs_are_claimed_with_their_attempt_and_a_beating_ones_are_not(private_redis):
    alive, dead, other = (jobs.RedisQueue(private_redis.url, 8, claim_seconds=0.3) for _ in range(3))
    alive.consumer, dead.consumer, other.consumer = "alive", "dead", "other"
    alive.take(1, 0)  # makes the group
    alive.put(1)
    dead.put(2)
    (held,) = alive.take(1, 0.05)
    (lost,) = dead.take(1, 0.05)
    for _ in range(4):  # alive beats every 0.1 s; dead is silent
        time.sleep(0.1)
        alive.heartbeat([held])
    claimed = other.take(4, 0.05)
    assert [(j.message_id, j.attempt) for j in claimed] == [(2, 2)] and claimed[0].token == lost.token
    assert other.take(4, 0.05) == []  # just claimed: idle again only after the claim time
    time.sleep(0.4)
    assert [(j.message_id, j.attempt) for j in other.take(4, 0.05)] == [(1, 2), (2, 3)]


@pytest.mark.production
def test_a_stream_made_afresh_gets_the_replies_the_database_has_queued(private_redis):
    queue = jobs.RedisQueue(private_redis.url, 8, refill=lambda: [7, 8])
    assert [j.message_id for j in queue.take(4, 0.05)] == [7, 8]
    queue.redis.flushdb()  # Redis came back empty
    queue.put(9)
    assert [j.message_id for j in queue.take(4, 0.05)] == [9, 7, 8]


# -- routing a conversation's next turn to the worker that holds its cache ------------------------


def workers(url: str, *names: str, **options) -> list[jobs.RedisQueue]:
    """Queues of workers named `names`, each with its groups, inbox and a first heartbeat."""
    queues = []
    for name in names:
        queue = jobs.RedisQueue(url, 8, **options)
        queue.consumer = name
        assert queue.take(1, 0) == []
        queues.append(queue)
    return queues


@pytest.mark.production
def test_the_next_turn_goes_to_the_inbox_of_the_worker_that_wrote_the_last_reply(redis_db):
    w1, w2 = workers(TEST_REDIS_URL, "w1", "w2")
    web = jobs.RedisQueue(TEST_REDIS_URL, 8)
    web.put(1, conversation_id=7)  # a first turn: the shared stream
    (first,) = w1.take(4, 0.05)
    assert (first.message_id, first.stream, first.conversation_id) == (1, jobs.STREAM, 7)
    w1.ack(first, affinity=True)
    assert redis_db.get(f"{jobs.AFFINITY_PREFIX}7") == "w1"
    assert 0 < redis_db.ttl(f"{jobs.AFFINITY_PREFIX}7") <= jobs.AFFINITY_TTL

    web.put(2, conversation_id=7)
    web.put(3)  # another conversation's, after it
    assert redis_db.xlen(w1.inbox) == 1 and jobs.queue_length(redis_db) == 2
    assert [j.message_id for j in w2.take(4, 0.05)] == [3]  # not w2's to take
    web.put(4)
    assert [j.message_id for j in w1.take(4, 0.05, free_slots=0)] == [4]  # no free slot: not yet
    web.put(5)
    (routed,) = w1.take(1, 0.05)  # its own inbox first: older than what waits in the shared one
    assert (routed.message_id, routed.stream, routed.attempt) == (2, w1.inbox, 1)
    assert [j.message_id for j in w1.take(1, 0.05)] == [5]
    w1.heartbeat([routed])  # a routed job is touched where it is pending
    w1.ack(routed)  # affinity=False: recorded only by an engine with a prefix cache
    assert redis_db.xlen(w1.inbox) == 0 and redis_db.get(f"{jobs.AFFINITY_PREFIX}7") == "w1"


@pytest.mark.production
def test_no_route_to_a_silent_or_busy_worker_nor_past_jobs_waiting_in_the_shared_stream(redis_db):
    (w1,) = workers(TEST_REDIS_URL, "w1")
    web = jobs.RedisQueue(TEST_REDIS_URL, 8)
    redis_db.set(f"{jobs.AFFINITY_PREFIX}7", "w1")

    def routed(message_id: int) -> bool:
        before = redis_db.xlen(w1.inbox)
        web.put(message_id, conversation_id=7)
        return redis_db.xlen(w1.inbox) > before

    redis_db.hset(jobs.WORKERS, "w1", time.time() - 31)  # silent past the claim time: dead
    assert not routed(1)
    w1.heartbeat([])
    assert not routed(2)  # 1 waits in the shared stream: 2 must not overtake it
    w1.take(4, 0.05)
    w1.waiting(10, 1)  # a reply waits in w1 for a free slot
    assert not routed(3)
    w1.take(4, 0.05)
    w1.waiting(10, 0)
    assert routed(4)
    redis_db.set(f"{jobs.AFFINITY_PREFIX}7", "w9")  # a worker that never beat
    assert not routed(5)
    assert jobs.queue_length(redis_db) == 5  # the bound counts the inboxes too
    web.max_length = 5
    with pytest.raises(jobs.QueueFull):
        web.put(6, conversation_id=7)


@pytest.mark.production
def test_a_routed_job_its_worker_does_not_take_is_served_by_another_and_a_dead_workers_are_claimed(private_redis):
    w1, w2 = workers(private_redis.url, "w1", "w2", claim_seconds=0.6, route_wait=0.3)
    client = w1.redis
    client.set(f"{jobs.AFFINITY_PREFIX}7", "w1")
    w1.put(1, conversation_id=7)
    assert client.xlen(w1.inbox) == 1
    assert w2.take(4, 0) == []  # w1 may take it yet
    time.sleep(0.35)
    (job,) = w2.take(4, 0)  # w1 left it (busy, or dead): anyone's now, delivered once
    assert (job.message_id, job.stream, job.attempt) == (1, w1.inbox, 1)
    w2.ack(job)

    w1.put(2, conversation_id=7)
    (held,) = w1.take(4, 0)  # w1 takes it, then dies: its pending job is claimed as ever
    time.sleep(0.45)
    w2.heartbeat([])
    assert w2.take(4, 0) == []  # not yet silent for the claim time
    time.sleep(0.3)
    (claimed,) = w2.take(4, 0)
    assert (claimed.message_id, claimed.token, claimed.attempt) == (2, held.token, 2)
    w2.ack(claimed)
    # Silent for twice the claim time and its inbox empty: the inbox is dropped.
    time.sleep(0.8)
    w2.heartbeat([])
    assert w2.take(4, 0) == []
    assert client.smembers(jobs.INBOXES) == {"w2"} and not client.exists(w1.inbox)
    w1.put(3, conversation_id=7)  # the affinity outlived its worker: the shared stream
    assert [j.message_id for j in w2.take(4, 0)] == [3]
