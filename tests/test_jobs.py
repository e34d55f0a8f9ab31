"""The job queue (chat/jobs.py): LocalQueue, the embedded mode's, and RedisQueue on a Redis
Stream with a consumer group, against the real Redis (GROKWEB_TEST_REDIS_URL, flushed before and
after; a private redis-server where a test empties it): put, take, ack, cancel, the bound, the
backlog no worker took, heartbeats and claiming a silent worker's jobs, refilling a stream made
afresh, and `enqueue` refusing when full."""

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
        jobs.enqueue(reply.id)
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
