"""Fixtures and factories shared by the whole suite."""

import os
from pathlib import Path

import pytest

from tests import stack
from tests.browser import chromium


@pytest.fixture
def user_factory(django_user_model):
    """Make users with a known password: user_factory("ann") -> User."""

    def make(username: str, password: str = "a-Strong-pass-42", **fields):
        return django_user_model.objects.create_user(username=username, password=password, **fields)

    return make


@pytest.fixture
def ann(user_factory):
    """A user on the Free plan (the default: no subscription row)."""
    return user_factory("ann")


@pytest.fixture
def ann_client(client, ann):
    """Django's test client, logged in as ann."""
    client.force_login(ann)
    return client


@pytest.fixture
def conversation_factory(db):
    """Make a conversation holding finished turns, one after the other (chat/branches.py):
    conversation_factory(user, [("user", "hi"), ("assistant", "hello")], persona="grok")."""
    from chat import branches
    from chat.models import Conversation, Persona

    def make(owner, turns=(("user", "Hi"), ("assistant", "Hello!")), persona="grok", **fields):
        conversation = Conversation.objects.create(
            owner=owner, persona=Persona.objects.get(slug=persona), **fields
        )
        for role, content in turns:
            branches.append(conversation, role=role, content=content)
        return conversation

    return make


@pytest.fixture
def job_calls(monkeypatch):
    """Record chat.jobs.enqueue / cancel instead of queueing: {"enqueue": [ids], "cancel": [ids]}.
    They run on commit: tests see them inside django_capture_on_commit_callbacks(execute=True)."""
    from chat import jobs

    calls = {"enqueue": [], "cancel": []}
    monkeypatch.setattr(jobs, "enqueue", lambda message_id, conversation_id: calls["enqueue"].append(message_id))
    monkeypatch.setattr(jobs, "cancel", calls["cancel"].append)
    return calls


@pytest.fixture
def subscribe(db):
    """Put a user on a plan: subscribe(user, "premium", status="past_due") -> Subscription.
    Users without one are on Free (chat.plans)."""
    from chat.models import Plan, Subscription

    def make(user, plan: str = "premium", **fields):
        subscription, _ = Subscription.objects.update_or_create(
            user=user, defaults={"plan": Plan.objects.get(slug=plan), **fields}
        )
        return subscription

    return make


@pytest.fixture
def api_key_factory(db):
    """Make an API key for the OpenAI-compatible API: api_key_factory(user) -> the key itself."""
    from chat.api.keys import do_create_api_key

    def make(user, name: str = "tests") -> str:
        return do_create_api_key(user, name)[1]

    return make


# -- the tiny model -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The seeded demo checkpoint `make-tiny` builds (converted format, with tokenizer.model),
    built once for the session."""
    from inference.tiny import make_tiny

    dst = tmp_path_factory.mktemp("tiny") / "grok-1-tiny"
    make_tiny(dst, seed=0)
    return dst


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint):
    """One Engine with two slots over the tiny checkpoint for the session; left with no work by
    every test that takes it as `engine`."""
    import torch

    from inference.engine import Engine

    # Two cores shared by parallel suites: more torch threads only make the tiny model contend.
    torch.set_num_threads(1)
    return Engine(tiny_checkpoint, quant="none", max_batch=2, context_len=512)


@pytest.fixture(scope="session")
def llama_server(tiny_checkpoint, tmp_path_factory):
    """llama.cpp's llama-server (built under var/ when absent) serving the tiny checkpoint
    exported to GGUF, for the session; a test that kills it starts it again."""
    from inference.gguf_export import export_gguf
    from tests.llama_cpp import LlamaServer

    folder = tmp_path_factory.mktemp("llama-server")
    export_gguf(tiny_checkpoint, folder / "tiny.gguf")
    server = LlamaServer(folder / "tiny.gguf", folder / "server.log")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def engine(tiny_engine):
    """The session's tiny_engine, its requests cancelled and run out after the test."""
    yield tiny_engine
    for request_id in [*tiny_engine.queued(), *(s.request.id for s in tiny_engine.slots if s)]:
        tiny_engine.cancel(request_id)
    while tiny_engine.has_work():
        tiny_engine.step()


# -- the production path: PostgreSQL, Redis and processes -------------------------------------------


@pytest.fixture
def committed_db(transactional_db, django_db_serialized_rollback):
    """Committed data, which other processes and threads (a worker's, the consumer's) see; the
    personas and plans the migrations seeded come back after each test's flush."""


@pytest.fixture
def redis_db():
    """A client of the test Redis database (GROKWEB_TEST_REDIS_URL), flushed before and after."""
    import redis

    client = redis.Redis.from_url(stack.TEST_REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of the test's own, which it may stop and start."""
    server = stack.RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def production_stack(committed_db, redis_db, tiny_checkpoint, tmp_path, settings):
    """production_stack(**env) -> a running Stack (Daphne and a worker process, production
    settings, this test's database), on the test Redis unless `env` names another; stopped
    (then killed if need be) after the test. Greedy sampling unless `env` says otherwise: the
    demo model's random replies sometimes end early (~1 in 40 within 400 tokens), its greedy ones
    run to their length, which tests that stop or kill a reply midway need."""
    import redis

    from chat import jobs

    db = settings.DATABASES["default"]  # the test database pytest-django made
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    started = []

    def make(**env: str) -> stack.Stack:
        s = stack.Stack(
            tmp_path,
            tiny_checkpoint,
            DJANGO_SETTINGS_MODULE="grokweb.settings.production",
            GROKWEB_SECRET_KEY=settings.SECRET_KEY,  # sessions made here must verify there
            DATABASE_URL=f"postgres://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
            **{"REDIS_URL": stack.TEST_REDIS_URL, "GROK_TEMPERATURE": "0", **env},
        )
        started.append(s)
        # The worker makes the consumer group on its first look at the queue.
        client = redis.Redis.from_url(s.env["REDIS_URL"], decode_responses=True)
        s.wait_ready(lambda: any(g["name"] == jobs.GROUP for g in client.xinfo_groups(jobs.STREAM)))
        client.close()
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def login(committed_db, user_factory):
    """login("ann") -> the Cookie header of a logged-in session for a new user ann, for a
    websocket client."""
    from django.test import Client

    def make(username: str) -> str:
        client = Client()
        client.force_login(user_factory(username))
        return f"sessionid={client.cookies['sessionid'].value}"

    return make


@pytest.fixture
def cookie(login) -> str:
    """The Cookie header of a logged-in user, ann: login("ann")."""
    return login("ann")


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory, tiny_checkpoint):
    """Daphne in the embedded default mode over the tiny model, for the session; replies of at
    most 400 new tokens keep the browser tests bounded."""
    server = stack.EmbeddedServer(
        tmp_path_factory.mktemp("embedded-var"), tiny_checkpoint,
        GROK_MAX_NEW_TOKENS=os.environ.get("GROK_MAX_NEW_TOKENS", "400"),
    )
    yield server
    server.stop()


# Module scope: Playwright's sync API keeps an event loop running in this thread while it is
# open, and later tests that call asyncio.run() must not find it.
@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by Playwright."""
    with chromium() as instance:
        yield instance
