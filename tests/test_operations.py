"""The operators' endpoints: /healthz, /readyz and /metrics' guard (chat/operations.py); what
/metrics counts is scraped on the whole stack in tests/test_engine_server.py."""

import time

import pytest

from chat import jobs
from tests.stack import TEST_REDIS_URL


def test_healthz_answers(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_in_the_embedded_mode_checks_the_database(client, settings):
    settings.REDIS_URL = ""
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "workers": "embedded"}}


@pytest.mark.django_db
def test_readyz_wants_redis_and_a_live_worker(client, settings, redis_db):
    settings.REDIS_URL = TEST_REDIS_URL
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "redis": "ok", "workers": "failed: no live worker"}

    redis_db.hset(jobs.WORKERS, "gone-1", time.time() - settings.GROK_JOB_CLAIM_SECONDS - 1)
    redis_db.hset(jobs.WORKERS, "host-2", time.time())
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json()["checks"]["workers"] == "ok: 1 live"
    assert redis_db.hkeys(jobs.WORKERS) == ["host-2"]  # the dead worker's record is dropped

    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["redis"].startswith("failed: ")


def test_metrics_without_a_token_answer_loopback_clients_only(client, settings):
    settings.GROKWEB_METRICS_TOKEN = ""
    response = client.get("/metrics")
    assert response.status_code == 200 and b"grokweb_open_websockets" in response.content
    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 403 and b"loopback clients only" in response.content


def test_metrics_with_a_token_want_it(client, settings):
    settings.GROKWEB_METRICS_TOKEN = "s3cret"
    assert client.get("/metrics").status_code == 401  # loopback or not
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3", headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200 and b"grokweb_e2e_request_latency_seconds" in response.content


def test_metered_engine_counts_steps_and_samples_the_kv_cache(engine):
    from prometheus_client import REGISTRY

    from chat.metrics import Metered
    from inference.engine import Request, SamplingParams

    labels = {"model": engine.model_name, "worker": "metered-test"}

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    metered = Metered(engine, "metered-test")
    steps = value("grokweb_engine_steps_total")
    metered.add(Request("m1", engine.tokenizer.encode("Hello there"), SamplingParams(temperature=0, max_new_tokens=4)))
    metered.step()
    assert value("grokweb_num_requests_running") == 1
    held = len(engine.tokenizer.encode("Hello there")) + 1  # the prompt and the first token
    assert value("grokweb_kv_cache_usage_perc") == held / (len(engine.slots) * engine.context_len)
    while metered.has_work():
        metered.step()
    assert value("grokweb_num_requests_running") == 0 and value("grokweb_kv_cache_usage_perc") == 0
    assert value("grokweb_engine_steps_total") - steps == 4  # one token a step, the first with the prefill


def test_metered_engine_counts_prefix_cache_hits(tiny_checkpoint):
    from prometheus_client import REGISTRY

    from chat.metrics import Metered
    from inference.engine import Engine, Request, SamplingParams

    engine = Engine(tiny_checkpoint, quant="none", max_batch=1, context_len=256, prefix_cache=1)
    labels = {"model": engine.model_name, "worker": "cache-test"}
    metered = Metered(engine, "cache-test")
    ids = engine.tokenizer.encode("The same words twice")
    for request_id in ("c1", "c2"):  # the second finds the first's prompt cached
        metered.add(Request(request_id, ids, SamplingParams(temperature=0, max_new_tokens=2)))
        while metered.has_work():
            metered.step()
    counts = {name: REGISTRY.get_sample_value(f"grokweb_prefix_cache_{name}_total", labels) for name in ("requests", "hits")}
    assert counts == {"requests": 2, "hits": 1}
    assert REGISTRY.get_sample_value("grokweb_cached_tokens_total", labels) == len(ids) - 1


@pytest.mark.django_db
def test_metrics_read_the_shared_queue_length_at_the_scrape(client, settings, redis_db):
    settings.REDIS_URL, settings.GROKWEB_METRICS_TOKEN = TEST_REDIS_URL, ""
    for message_id in (1, 2):
        redis_db.xadd(jobs.STREAM, {"message_id": message_id})
    redis_db.xadd(jobs.INBOX_PREFIX + "w1", {"message_id": 3})  # routed to worker w1
    redis_db.sadd(jobs.INBOXES, "w1")
    assert b"grokweb_queue_length 3.0" in client.get("/metrics").content
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # away: left out, the rest still served
    response = client.get("/metrics")
    assert response.status_code == 200 and b"grokweb_queue_length" not in response.content
