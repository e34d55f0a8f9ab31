"""Recovery and bounds: the retry limit, a reply continued after its saved text, the embedded
worker's start, the server's cap on new tokens; then faults on the real stack, fast: a worker
killed mid-reply, Redis restarted mid-reply (tests/faults.py's scenarios, which the benches
bench/fault_*.py also run; these check what they report). Claiming a dead worker's jobs and
heartbeats are the queue's: tests/test_jobs.py."""

import asyncio

import pytest
from channels.db import database_sync_to_async

from chat import branches, jobs
from chat.bridge import Bridge
from chat.models import Message
from chat.replies import do_recover_replies
from inference.loop import Update
from tests.faults import CLAIM_SECONDS, check_taken_over, kill_worker_mid_reply, restart_redis_mid_reply


def saved(reply_id: int) -> Message:
    return Message.objects.get(pk=reply_id)


# -- the worker's side, without the stack -------------------------------------------------------


class Taken:
    """A queue handing out given jobs once, recording acks."""

    def __init__(self, *given):
        self.given, self.acked = list(given), []

    def take(self, max_jobs, timeout, free_slots=None):
        given, self.given = self.given, []
        return given

    def ack(self, job, affinity=False):
        self.acked.append(job)


def streaming_reply(conversation_factory, user_factory, content="Once upon a time"):
    conversation = conversation_factory(user_factory("ann"), [("user", "Tell me a story")], persona="regular")
    return branches.append(conversation, 
        role="assistant", status="streaming", content=content, completion_tokens=5,
        generation={"max_new_tokens": 40, "seed": 3, "temperature": 0.8, "top_p": 0.95},
    )


def test_a_taken_over_reply_continues_after_its_saved_text(
    committed_db, engine, conversation_factory, user_factory
):
    reply = streaming_reply(conversation_factory, user_factory)
    sent = []
    bridge = Bridge(engine, Taken(jobs.Job(reply.pk, "1-0", attempt=2)), sent.extend)
    (request,) = bridge.take(4, 0)
    written = engine.tokenizer.encode(" Once upon a time")
    assert request.prompt_ids[-len(written):] == written
    assert request.params.max_new_tokens == 40 - len(written) and request.params.seed == 3
    bridge.deliver([Update(request.id, " there was", "stop", "", 30, 2, 0.1, 1.0)])
    reply.refresh_from_db()
    # The saved text's tokens are charged once: in the completion, not again in the prompt.
    assert (reply.status, reply.content) == ("done", "Once upon a time there was")
    assert (reply.prompt_tokens, reply.completion_tokens) == (30 - len(written), len(written) + 2)
    delta = next(event for _, event in sent if event["type"] == "reply.delta")
    assert (delta["offset"], delta["text"]) == (len("Once upon a time"), " there was")


def test_past_the_attempt_limit_a_reply_fails_with_its_text_kept(
    committed_db, engine, settings, conversation_factory, user_factory
):
    settings.GROK_JOB_MAX_ATTEMPTS = 3
    reply = streaming_reply(conversation_factory, user_factory)
    queue, sent = Taken(jobs.Job(reply.pk, "1-0", attempt=4)), []
    assert Bridge(engine, queue, sent.extend).take(4, 0) == []
    reply.refresh_from_db()
    assert (reply.status, reply.content) == ("failed", "Once upon a time") and "4" not in reply.error
    assert [event["type"] for _, event in sent] == ["reply.error", "reply.done"]
    assert sent[0][1]["code"] == "failed" and queue.acked


def test_the_embedded_worker_requeues_queued_replies_and_fails_streaming_ones_keeping_text(
    committed_db, conversation_factory, user_factory
):
    reply = streaming_reply(conversation_factory, user_factory)
    waiting = branches.append(conversation_factory(user_factory("bob"), [("user", "Hi")]), 
        role="assistant", status="queued"
    )
    queue = jobs.LocalQueue(8)
    events = do_recover_replies(queue)
    assert [j.message_id for j in queue.take(8, 0)] == [waiting.pk]
    reply.refresh_from_db()
    assert (reply.status, reply.content) == ("failed", "Once upon a time") and reply.error
    assert [event["type"] for _, event in events] == ["reply.error", "reply.done"]


def test_the_servers_cap_on_new_tokens_bounds_what_a_plan_or_request_asks(
    committed_db, engine, settings, conversation_factory, user_factory
):
    settings.GROK_MAX_NEW_TOKENS = 24
    conversation = conversation_factory(user_factory("ann"), [("user", "Hi")], persona="regular")
    reply = branches.append(conversation, role="assistant", status="queued", generation={"max_new_tokens": 2048})
    (request,) = Bridge(engine, Taken(jobs.Job(reply.pk, "")), list).take(4, 0)
    assert request.params.max_new_tokens == 24
    engine.add(request)  # leaves the engine with the fixture's cleanup


# -- faults on the whole stack ----------------------------------------------------------------


@pytest.mark.production
async def test_a_killed_workers_reply_is_taken_over_and_finished(production_stack, cookie, private_redis):
    s = await asyncio.to_thread(
        production_stack, REDIS_URL=private_redis.url, GROK_MAX_NEW_TOKENS="120", GROK_JOB_CLAIM_SECONDS=CLAIM_SECONDS
    )
    result = await kill_worker_mid_reply(s, cookie)
    await check_taken_over(s, result, 120)
    assert float(CLAIM_SECONDS) <= result["seconds_to_more_text"] < 20
    assert result["pending_after"] == 0  # acknowledged once saved


@pytest.mark.production
async def test_redis_restarting_mid_reply_tells_the_page_and_loses_nothing(production_stack, cookie, private_redis):
    s = await asyncio.to_thread(production_stack, REDIS_URL=private_redis.url, GROK_MAX_NEW_TOKENS="300")
    result = await restart_redis_mid_reply(s, private_redis, cookie)
    assert "unavailable" in [e["code"] for e in result["errors"]] and result["close_code"] == 4503
    assert result["outage_frame"]["code"] == "unavailable"
    done = result["done"]
    reply = await database_sync_to_async(saved)(done["message_id"])
    assert done["status"] == reply.status == "done", (done, s.log("worker"))
    assert done["content"] == reply.content and reply.content.startswith(result["page_text"])
    assert result["retry_done"]["status"] == "done"
