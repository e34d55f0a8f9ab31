"""The production path with GROK_ENGINE=openai: Daphne, worker processes and Redis as in
tests/test_production.py, the model served by a real llama-server (tests/llama_cpp.py) that the
workers drive over the completions protocol."""

import asyncio
import json
import urllib.request

import pytest
from channels.db import database_sync_to_async
from prometheus_client.parser import text_string_to_metric_families

from chat.models import Message
from tests.faults import CLAIM_SECONDS, check_taken_over, kill_worker_mid_reply
from tests.stack import receive, send


def saved(reply_id: int) -> Message:
    return Message.objects.get(pk=reply_id)


@pytest.fixture
def remote_stack(production_stack, llama_server):
    """production_stack(**env) whose workers drive the session's llama-server (started again
    if a test killed it)."""
    if llama_server.process.poll() is not None:
        llama_server.start()

    def make(**env: str):
        return production_stack(GROK_ENGINE="openai", GROK_ENGINE_URL=llama_server.url, **env)

    return make


@pytest.mark.production
async def test_a_reply_is_streamed_and_saved(remote_stack, cookie):
    s = await asyncio.to_thread(remote_stack, GROK_MAX_NEW_TOKENS="24")
    async with s.socket(cookie) as ws:
        page = await send(ws, "Hello from llama.cpp")
        await page.follow(ws)
    reply = await database_sync_to_async(saved)(page.reply_id)
    assert page.done["status"] == reply.status == "done", (page.done, s.log("worker"))
    assert reply.content and reply.content == page.done["content"] == page.text
    assert reply.completion_tokens == 24 and reply.prompt_tokens > 0  # the server's usage
    assert "engine server http://127.0.0.1" in s.log("worker")


@pytest.mark.production
async def test_a_reply_stopped_from_the_page_stops_on_the_engine_server(remote_stack, cookie, llama_server):
    s = await asyncio.to_thread(remote_stack, GROK_MAX_NEW_TOKENS="2000")
    cancels = llama_server.log.read_text(errors="replace").count("cancel task")
    async with s.socket(cookie) as ws:
        page = await send(ws, "Go on")
        await page.follow(ws, until=lambda p: p.text)
        await ws.send(json.dumps({"type": "stop", "message_id": page.reply_id}))
        await page.follow(ws)
    reply = await database_sync_to_async(saved)(page.reply_id)
    assert page.done["status"] == reply.status == "stopped" and reply.completion_tokens < 2000
    assert reply.content == page.done["content"] == page.text
    # The generation was aborted: llama-server logs it once the worker has closed the stream.
    for _ in range(50):
        if llama_server.log.read_text(errors="replace").count("cancel task") > cancels:
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("llama-server did not cancel the generation")


@pytest.mark.production
async def test_a_killed_workers_reply_is_finished_by_another_worker(remote_stack, cookie, private_redis):
    s = await asyncio.to_thread(
        remote_stack, REDIS_URL=private_redis.url, GROK_MAX_NEW_TOKENS="2000", GROK_JOB_CLAIM_SECONDS=CLAIM_SECONDS
    )
    result = await kill_worker_mid_reply(s, cookie)
    await check_taken_over(s, result, 2000)
    assert result["pending_after"] == 0


@pytest.mark.production
async def test_the_engine_server_killed_and_restarted(remote_stack, cookie, llama_server):
    s = await asyncio.to_thread(remote_stack, GROK_MAX_NEW_TOKENS="2000", GROK_ENGINE_TIMEOUT="30")
    async with s.socket(cookie) as ws:
        # Killed mid-reply: the reply fails with its text kept, and the page is told why.
        page = await send(ws, "Tell me a long story")
        await page.follow(ws, until=lambda p: p.text)
        await asyncio.to_thread(llama_server.kill)
        await page.follow(ws)
        reply = await database_sync_to_async(saved)(page.reply_id)
        assert page.done["status"] == reply.status == "failed"
        assert "went away in the middle of the reply" in reply.error
        assert [e["message"] for e in page.errors] == [reply.error]
        assert reply.content and reply.content == page.done["content"]

        # Sent while the server is away: the reply waits for it in line, and is written once it is back.
        page = await send(ws, "Are you back?")
        frame = await receive(ws)
        assert (frame["type"], frame["message_id"], frame["position"]) == ("queued", page.reply_id, 1)
        await asyncio.to_thread(llama_server.start)
        await page.follow(ws, timeout=40)
    reply = await database_sync_to_async(saved)(page.reply_id)
    assert page.done["status"] == reply.status == "done", (page.done, s.log("worker"))
    assert reply.content == page.text


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """/metrics of Daphne (asked from the loopback, so no token): sample (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
        return {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of `name`'s samples carrying `labels` (over workers, say)."""
    wanted = set(labels.items())
    return sum(value for (n, have), value in samples.items() if n == name and wanted <= have)


@pytest.mark.production
async def test_metrics_count_a_reply_and_json_logs_carry_its_id(remote_stack, cookie, tmp_path):
    folder = tmp_path / "prometheus"  # shared by Daphne and the worker, as on one host
    folder.mkdir()
    s = await asyncio.to_thread(
        remote_stack, GROK_MAX_NEW_TOKENS="16", PROMETHEUS_MULTIPROC_DIR=str(folder), GROKWEB_LOG_FORMAT="json"
    )
    before = await asyncio.to_thread(scrape, s.port)
    async with s.socket(cookie) as ws:
        page = await send(ws, "Count me")
        await page.follow(ws)
        during = await asyncio.to_thread(scrape, s.port)
    reply = await database_sync_to_async(saved)(page.reply_id)
    assert reply.status == "done" and reply.completion_tokens == 16

    def moved(name: str, **labels: str) -> float:
        return total(during, name, **labels) - total(before, name, **labels)

    model = {"model": "grok-1-tiny-demo"}
    assert moved("grokweb_request_success_total", **model, finished_reason="length") == 1
    assert moved("grokweb_request_success_total") == 1
    assert moved("grokweb_generation_tokens_total", **model) == reply.completion_tokens
    assert moved("grokweb_prompt_tokens_total", **model) == reply.prompt_tokens > 0
    for histogram in ("e2e_request_latency", "time_to_first_token", "inter_token_latency"):
        assert moved(f"grokweb_{histogram}_seconds_count", **model) == 1
    assert moved("grokweb_e2e_request_latency_seconds_sum") == pytest.approx(reply.duration, abs=0.01)
    assert moved("grokweb_engine_steps_total", **model) > 0
    assert total(during, "grokweb_open_websockets") == 1 and total(during, "grokweb_num_requests_running") == 0
    assert total(during, "grokweb_queue_length") == 0  # the reply's job acknowledged

    lines = [json.loads(line) for line in s.log("worker").splitlines() if line.startswith("{")]
    about = [line for line in lines if f"reply {reply.pk} " in line["message"]]
    assert [line["message"].split(":")[0] for line in about] == [f"reply {reply.pk} started", f"reply {reply.pk} ended (length)"]
    assert all(line["reply_id"] == reply.pk and line["level"] == "INFO" for line in about)


def test_load_engine_picks_the_backend_from_the_settings(settings, tiny_checkpoint):
    from chat.serving import load_engine
    from inference.remote import RemoteEngine

    settings.GROK_ENGINE, settings.GROK_ENGINE_URL = "openai", ""
    with pytest.raises(ValueError, match="GROK_ENGINE_URL is not set"):
        load_engine()
    settings.GROK_ENGINE_URL, settings.GROK_CHECKPOINT = "http://127.0.0.1:9", str(tiny_checkpoint)
    settings.GROK_ENGINE_MAX_IN_FLIGHT, settings.GROK_CONTEXT_LEN = 3, 512
    engine = load_engine()
    assert isinstance(engine, RemoteEngine)
    assert (engine.max_in_flight, engine.context_len, engine.model_name) == (3, 512, "grok-1-tiny-demo")
