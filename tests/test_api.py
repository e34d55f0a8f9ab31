"""The OpenAI-compatible API (chat/api/, docs/api.md).

Rules and pages run over the pytest-django database. The endpoints run against a real server:
`embedded_server` (tests/conftest.py) is Daphne in the embedded mode,
with the inference worker in a thread, the tiny model and SQLite; the official `openai` package
is the client, plus raw HTTP (httpx2) for the error shapes and the SSE bytes. Users, plans and
keys on that server are made through `manage.py`.
"""

import asyncio
import datetime as dt
import hashlib
import json
import time
import uuid
from types import SimpleNamespace

import httpx2 as httpx
import openai
import pytest
from channels.db import database_sync_to_async
from django.core.management import CommandError, call_command
from django.test import Client

from chat import branches, jobs, replies
from chat.api import answers, follow, keys, model_ids, requests
from chat.errors import ChatError
from chat.errors import ApiError
from chat.models import ApiKey, Conversation, Message
from chat.bridge import Bridge
from chat.errors import api_error
from tests.stack import manage

PASSWORD = "a-Strong-pass-42"
HELLO = [{"role": "user", "content": "Hello there"}]


# -- requests ---------------------------------------------------------------------------------


def parse(**body):
    return requests.parse_completion_request(json.dumps({"model": "grok-1", "messages": HELLO} | body).encode())


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": None}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
        ({"messages": [*HELLO, {"role": "assistant", "content": "Hi"}]}, "messages"),
        ({"messages": [{"role": "system", "content": "Be brief."}]}, "messages"),
        ({"n": 2}, "n"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"seed": "7"}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
    ],
)
def test_bad_requests_name_the_parameter(body, param):
    with pytest.raises(ApiError) as refused:
        parse(**body)
    assert refused.value.status == 400 and refused.value.param == param
    assert refused.value.body()["error"]["type"] == "invalid_request_error"


def test_parameters_that_ask_for_nothing_are_accepted():
    request = parse(
        tools=[], tool_choice="none", response_format={"type": "text"}, logprobs=False,
        presence_penalty=0, frequency_penalty=0.0, logit_bias={}, top_logprobs=None,
    )
    assert request.turns == [("user", "Hello there")]


def test_a_request_keeps_turns_system_text_and_sampling():
    request = parse(
        messages=[
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "you"}]},
            {"role": "assistant", "content": "Hello!"},
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "How are you?"},
        ],
        temperature=0, top_p=0.5, seed=7, stop="END", max_tokens=9, stream=True,
        stream_options={"include_usage": True},
    )
    assert request.turns == [("user", "Hi\nyou"), ("assistant", "Hello!"), ("user", "How are you?")]
    assert request.system == "Answer in French.\n\nBe brief."
    assert request.sampling == {"temperature": 0, "top_p": 0.5, "seed": 7, "stop": ["END"]}
    assert (request.max_new_tokens, request.stream, request.include_usage) == (9, True, True)
    assert parse(max_tokens=9, max_completion_tokens=5).max_new_tokens == 5  # the newer name wins


# -- completions as stored conversations ------------------------------------------------------


class CharTokenizer:
    """One token per character: a prompt decodes back to its text."""

    def encode(self, text):
        return [ord(c) for c in text]


def test_an_api_conversation_is_stored_and_its_prompt_adds_the_system_text(user_factory, job_calls):
    ann = user_factory("ann")
    request = parse(
        model="grok-1:regular",
        messages=[
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Bonjour!"},
            {"role": "user", "content": "How are you?"},
        ],
        stop=["END", "\n\n"], temperature=0.3, top_p=0.9, seed=42, max_tokens=100_000,
    )
    reply = requests.do_start_api_completion(ann, request)

    conversation = Conversation.objects.get(pk=reply.conversation_id)
    assert (conversation.owner, conversation.source, conversation.title) == (ann, "api", "Hi")
    assert conversation.persona.slug == "regular"
    assert [(m.role, m.content, m.status) for m in conversation.messages.all()] == [
        ("user", "Hi", "done"), ("assistant", "Bonjour!", "done"), ("user", "How are you?", "done"),
        ("assistant", "", "queued"),
    ]
    # Free: the plan's 512 new tokens at most, whatever was asked.
    assert reply.generation == {
        "max_new_tokens": 512, "context_len": 4096, "system_suffix": "Answer in French.",
        "stop": ["END", "\n\n"], "temperature": 0.3, "top_p": 0.9, "seed": 42,
    }

    engine = SimpleNamespace(tokenizer=CharTokenizer(), context_len=100_000, model_name="fake")
    request = Bridge(engine, jobs.LocalQueue(4), lambda events: None)._start(jobs.Job(reply.pk, ""))
    prompt = "".join(map(chr, request.prompt_ids))
    persona_prompt = conversation.persona.current_version.system_prompt.strip()
    assert prompt == (
        f"{persona_prompt}\n\nAnswer in French.\n\nUser: Hi\n\nRegular: Bonjour!\n\n"
        "User: How are you?\n\nRegular:"
    )
    # The prefix cache: only the persona's text is shared with other users, not the request's system text.
    assert (request.cache_salt, request.public_prefix) == (replies.cache_salt(ann.pk), len(persona_prompt))
    assert len(request.cache_salt) == 64 and request.cache_salt != replies.cache_salt(ann.pk + 1)  # 256 bits a user
    params = request.params
    assert (params.temperature, params.top_p, params.seed) == (0.3, 0.9, 42)
    assert params.stop == ("\n\nUser:", "\nUser:", "END", "\n\n")
    reply.refresh_from_db()
    assert reply.status == "streaming" and reply.generation["system_suffix"] == "Answer in French."


def test_models_and_quotas_follow_the_plan(user_factory, subscribe, job_calls):
    ann = user_factory("ann")
    assert [m["id"] for m in model_ids.list_models(ann)["data"]] == ["grok-1:regular"]
    with pytest.raises(ApiError) as refused:
        requests.do_start_api_completion(ann, parse(model="grok-1"))
    assert (refused.value.status, refused.value.code) == (404, "model_not_found")
    assert "Premium" in refused.value.message  # what would give access
    for model in ["grok-2", "grok-1:grok", "grok-1:nobody", "grok-1:"]:
        with pytest.raises(ApiError, match="does not exist"):
            model_ids.get_persona_for_model(ann, model)

    subscribe(ann, "premium")
    listed = model_ids.list_models(ann)["data"]
    assert [m["id"] for m in listed] == ["grok-1", "grok-1:regular"]
    assert all(m["object"] == "model" and m["owned_by"] == "grokweb" and m["created"] > 0 for m in listed)
    requests.do_start_api_completion(ann, parse(model="grok-1"))
    requests.do_start_api_completion(ann, parse(model="grok-1"))
    with pytest.raises(ChatError) as refused:  # Premium writes two replies at once
        requests.do_start_api_completion(ann, parse(model="grok-1"))
    error = api_error(refused.value)
    assert (error.status, error.code, error.retry_after) == (429, "rate_limit_exceeded", 2)
    assert Conversation.objects.filter(owner=ann).count() == 2  # the refused one left nothing


def test_over_the_demo_model_the_models_list_and_keys_page_say_its_text_is_noise(
    user_factory, settings, tmp_path
):
    client = Client()
    client.force_login(ann := user_factory("ann"))
    for demo in (True, False):
        checkpoint = tmp_path / str(demo)
        checkpoint.mkdir()
        (checkpoint / "config.json").write_text(json.dumps({"model_name": "m", "demo": demo}))
        settings.GROK_CHECKPOINT = str(checkpoint)
        (model,) = model_ids.list_models(ann)["data"]
        assert model.get("description") == (model_ids.DEMO_DESCRIPTION if demo else None)
        assert ("random noise" in client.get("/settings/api-keys/").content.decode()) == demo


def test_a_daily_limit_retries_after_midnight():
    resets_at = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
    error = api_error(ChatError("quota", "All used.", resets_at=resets_at.isoformat(), upgrade=[]))
    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "daily_limit_exceeded")
    assert 3 * 3600 - 5 <= error.retry_after <= 3 * 3600


# -- keys ---------------------------------------------------------------------------------------


def test_keys_are_stored_hashed_and_revoked_keys_fail(user_factory):
    ann = user_factory("ann")
    row, key = keys.do_create_api_key(ann, "  my   laptop ")
    assert key.startswith("gw-") and len(key) > 40 and row.name == "my laptop"
    assert row.hashed == hashlib.sha256(key.encode()).hexdigest() and key.startswith(row.prefix)
    assert key not in str(ApiKey.objects.filter(pk=row.pk).values().get())  # only its hash
    assert keys.check_api_key(f"Bearer {key}").user == ann
    assert ApiKey.objects.get(pk=row.pk).last_used_at is not None
    for header in [None, "", key, f"Basic {key}", "Bearer ", f"Bearer {key}x"]:
        with pytest.raises(ApiError) as refused:
            keys.check_api_key(header)
        assert (refused.value.status, refused.value.code) == (401, "invalid_api_key")
    keys.do_revoke_api_key(ann, row.pk)
    with pytest.raises(ApiError):
        keys.check_api_key(f"Bearer {key}")
    with pytest.raises(ChatError):
        keys.do_create_api_key(ann, "   ")


def test_create_api_key_command_prints_a_working_key(user_factory, capsys):
    ann = user_factory("ann")
    call_command("create_api_key", "ann", "--name", "cron job")
    key = capsys.readouterr().out.strip()
    assert keys.check_api_key(f"Bearer {key}").user == ann
    assert ApiKey.objects.get(user=ann).name == "cron job"
    with pytest.raises(CommandError, match="No user"):
        call_command("create_api_key", "nobody")


def test_the_keys_page_creates_lists_and_revokes(user_factory, api_key_factory):
    ann, bob = user_factory("ann"), user_factory("bob")
    bobs_key = ApiKey.objects.get(hashed=hashlib.sha256(api_key_factory(bob).encode()).hexdigest())
    assert Client().get("/settings/api-keys/").status_code == 302  # to the login page
    client = Client(enforce_csrf_checks=True)
    client.force_login(ann)
    page = client.get("/settings/api-keys/")
    assert page.status_code == 200 and b"No keys yet" in page.content
    assert client.post("/settings/api-keys/", {"name": "laptop"}).status_code == 403  # no CSRF token

    token = page.cookies["csrftoken"].value
    created = client.post("/settings/api-keys/", {"name": "laptop", "csrfmiddlewaretoken": token})
    assert created.status_code == 200 and created["Cache-Control"] == "no-store"
    key = created.context["created"][1]
    assert key.encode() in created.content
    row = ApiKey.objects.get(user=ann)
    assert row.hashed == hashlib.sha256(key.encode()).hexdigest() and len(row.prefix) == 10
    again = client.get("/settings/api-keys/")
    assert key.encode() not in again.content  # shown once
    assert row.prefix.encode() in again.content and b"laptop" in again.content
    assert b"grok-1:regular" in again.content

    def revoke(key_id):
        return client.post(f"/settings/api-keys/{key_id}/revoke/", {"csrfmiddlewaretoken": token})

    assert revoke(bobs_key.pk).status_code == 404
    revoked = revoke(row.pk)
    assert revoked.status_code == 302
    row.refresh_from_db()
    bobs_key.refresh_from_db()
    assert row.revoked_at is not None and bobs_key.revoked_at is None
    assert b"revoked" in client.get("/settings/api-keys/").content


# -- a real server ------------------------------------------------------------------------------


def django_shell(server, body: str, **data):
    """Run `body` (which prints one JSON line last) in the server's environment; its value."""
    code = "import json, os\ndata = json.loads(os.environ['GW_DATA'])\n" + body
    return json.loads(server.shell(code, **data).splitlines()[-1])


NEW_USER = """
from chat.api.keys import do_create_api_key
from chat.billing import do_grant_plan
from chat.models import Persona, Plan, User
user = User.objects.create_user(data["username"], password=data["password"])
if data["plan"] == "one-a-day":  # a plan of one message a day, to reach the daily limit
    plan, _ = Plan.objects.get_or_create(slug="one-a-day", defaults=dict(
        name="One a day", messages_per_day=1, tokens_per_day=10**6, max_new_tokens=64,
        context_len=4096, max_concurrent=1))
    plan.personas.set(Persona.objects.all())
if data["plan"]:
    do_grant_plan(user, Plan.objects.get(slug=data["plan"]))
print(json.dumps(do_create_api_key(user, "tests")[1]))
"""

REPLY = """
from chat.models import Message, UsageEntry
# The reply `id`, or the last reply of user `username`.
mine = {"pk": data["id"]} if "id" in data else {"conversation__owner__username": data["username"]}
reply = Message.objects.select_related("conversation").filter(role="assistant", **mine).latest("pk")
conversation = reply.conversation
print(json.dumps({
    "status": reply.status, "finish_reason": reply.finish_reason, "content": reply.content,
    "completion_tokens": reply.completion_tokens, "cached_tokens": reply.cached_tokens, "generation": reply.generation,
    "source": conversation.source, "owner": conversation.owner.username,
    "title": conversation.title, "charged": UsageEntry.objects.filter(message=reply).exists(),
    "turns": [[m.role, m.content] for m in conversation.messages.all()],
}))
"""


@pytest.fixture
def new_user(embedded_server):
    """new_user(plan=None) -> (username, API key) of a fresh user on the server."""

    def make(plan: str | None = None) -> tuple[str, str]:
        username = "api" + uuid.uuid4().hex[:8]
        return username, django_shell(embedded_server, NEW_USER, username=username, password=PASSWORD, plan=plan)

    return make


def client_for(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=server.url + "/v1", max_retries=0, timeout=60)


def reply_of(server, completion_id: str) -> dict:
    return django_shell(server, REPLY, id=int(completion_id.removeprefix("chatcmpl-")))


def post(server, body: dict | bytes, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        server.url + "/v1/chat/completions", content=content, headers=headers, timeout=60
    )


def test_models_list_per_plan(embedded_server, new_user):
    _, free_key = new_user()
    _, premium_key = new_user("premium")
    assert [m.id for m in client_for(embedded_server, free_key).models.list()] == ["grok-1:regular"]
    models = client_for(embedded_server, premium_key).models.list()
    assert [m.id for m in models] == ["grok-1", "grok-1:regular"]
    assert all(m.object == "model" and m.owned_by == "grokweb" for m in models)
    assert all(m.to_dict()["description"] == model_ids.DEMO_DESCRIPTION for m in models)  # the tiny model


def test_a_completion_is_a_stored_api_conversation_seen_by_its_user(embedded_server, new_user):
    username, key = new_user()
    messages = [
        {"role": "system", "content": "Answer in rhyme."},
        {"role": "user", "content": "Name a colour"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one"},
    ]
    completion = client_for(embedded_server, key).chat.completions.create(
        model="grok-1:regular", messages=messages, max_tokens=12, seed=3
    )
    assert completion.object == "chat.completion" and completion.model == "grok-1:regular"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    usage = completion.usage
    assert 0 < usage.completion_tokens <= 12 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    stored = reply_of(embedded_server, completion.id)
    assert stored["status"] == "done" and stored["content"] == choice.message.content
    assert (stored["source"], stored["owner"], stored["title"]) == ("api", username, "Name a colour")
    assert stored["turns"] == [
        ["user", "Name a colour"], ["assistant", "Blue."], ["user", "Another one"],
        ["assistant", choice.message.content],
    ]
    assert stored["generation"]["system_suffix"] == "Answer in rhyme." and stored["generation"]["seed"] == 3
    assert stored["charged"] and stored["completion_tokens"] == usage.completion_tokens

    # The user finds it in the chat page's sidebar.
    with httpx.Client(base_url=embedded_server.url, timeout=30) as browser:
        browser.get("/accounts/login/")
        token = browser.cookies["csrftoken"]
        browser.post("/accounts/login/", data={"username": username, "password": PASSWORD,
                                               "csrfmiddlewaretoken": token})
        assert "Name a colour" in browser.get("/").text


def test_streaming_with_usage(embedded_server, new_user):
    _, key = new_user()
    stream = client_for(embedded_server, key).chat.completions.create(
        model="grok-1:regular", messages=HELLO, max_tokens=16, seed=5, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    finish, last = chunks[-2], chunks[-1]
    assert finish.choices[0].finish_reason in {"stop", "length"} and finish.usage is None
    assert last.choices == [] and last.usage.completion_tokens <= 16
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    stored = reply_of(embedded_server, chunks[0].id)
    assert text == stored["content"] and stored["completion_tokens"] == last.usage.completion_tokens


def test_usage_counts_the_prompt_tokens_reused_from_the_prefix_cache(embedded_server, new_user):
    _, key = new_user()
    client = client_for(embedded_server, key)
    ask = lambda: client.chat.completions.create(model="grok-1:regular", messages=HELLO, max_tokens=4, seed=2)  # noqa: E731
    first, again = ask(), ask()
    # The second asks what the first did: all of its prompt but the last token is reused.
    assert again.usage.prompt_tokens == first.usage.prompt_tokens
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    assert reply_of(embedded_server, again.id)["cached_tokens"] == again.usage.prompt_tokens - 1


def test_sse_framing_byte_for_byte(embedded_server, new_user):
    _, key = new_user()
    body = {
        "model": "grok-1:regular", "messages": HELLO, "max_tokens": 8, "seed": 1, "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", embedded_server.url + "/v1/chat/completions", json=body,
        headers={"Authorization": f"Bearer {key}"}, timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read()
    assert raw.endswith(b"\n\ndata: [DONE]\n\n")
    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    chunks = []
    for event in events[:-2]:
        assert event.startswith(b"data: ") and b"\n" not in event
        data = json.loads(event[len(b"data: "):])
        compact = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        assert event == b"data: " + compact  # compact JSON, keys in the documented order
        chunks.append(data)
    created = chunks[0]["created"]
    first = {
        "id": chunks[0]["id"], "object": "chat.completion.chunk", "created": created,
        "model": "grok-1:regular",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None}],
        "usage": None,
    }
    assert chunks[0] == first and chunks[0]["id"].startswith("chatcmpl-")
    def choice(delta, finish_reason=None):
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    for chunk in chunks[1:-2]:
        text = chunk["choices"][0]["delta"]["content"]
        assert text and chunk == first | {"choices": choice({"content": text})}
    reason = chunks[-2]["choices"][0]["finish_reason"]
    assert reason in {"stop", "length"}
    assert chunks[-2] == first | {"choices": choice({}, reason)}
    usage = chunks[-1]["usage"]
    assert chunks[-1] == first | {"choices": [], "usage": usage}
    assert list(usage) == ["prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"]
    assert 0 < usage["completion_tokens"] <= 8


def test_max_tokens_ends_with_length_and_stop_strings_cut(embedded_server, new_user):
    _, key = new_user()
    client = client_for(embedded_server, key)

    def ask(**options):
        return client.chat.completions.create(
            model="grok-1:regular", messages=HELLO, seed=11, temperature=1.0, **options
        )

    short = ask(max_tokens=5)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 5

    full = ask(max_tokens=40).choices[0].message.content
    # A stop string from the middle of what this seed writes: the same request with it stops
    # right before its first occurrence.
    start = next(i for i in range(3, len(full) - 3) if not full[i].isspace())
    stop = full[start : start + 3]
    cut = ask(max_tokens=40, stop=[stop, "never-written"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)]


def test_error_shapes(embedded_server, new_user):
    _, key = new_user()
    hello = {"model": "grok-1:regular", "messages": HELLO}
    cases = [
        (post(embedded_server, hello, None), 401, "invalid_api_key", None),
        (post(embedded_server, hello, "gw-nope"), 401, "invalid_api_key", None),
        (post(embedded_server, b"{not json", key), 400, "invalid_value", None),
        (post(embedded_server, hello | {"n": 2}, key), 400, "unsupported_value", "n"),
        (post(embedded_server, {"messages": HELLO}, key), 400, "missing_required_parameter", "model"),
        (post(embedded_server, {"model": "gpt-4o", "messages": HELLO}, key), 404, "model_not_found", "model"),
        (post(embedded_server, {"model": "grok-1", "messages": HELLO}, key), 404, "model_not_found", "model"),  # Free
        (httpx.get(embedded_server.url + "/v1/models", timeout=30), 401, "invalid_api_key", None),
    ]
    for response, status, code, param in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "code", "param"} and error["message"]
        assert (error["code"], error["param"]) == (code, param)
        assert error["type"] == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        client_for(embedded_server, "gw-nope").models.list()
    with pytest.raises(openai.NotFoundError):
        client_for(embedded_server, key).chat.completions.create(model="grok-1", messages=HELLO)


def test_unsupported_parameters_are_refused_by_name(embedded_server, new_user):
    _, key = new_user()
    client = client_for(embedded_server, key)
    function = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for name, value in [
        ("tools", [function]),
        ("response_format", {"type": "json_object"}),
        ("logprobs", True),
        ("frequency_penalty", 0.5),
    ]:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="grok-1:regular", messages=HELLO, **{name: value})
        assert (refused.value.code, refused.value.param) == ("unsupported_parameter", name)


def test_every_path_under_v1_answers_json_and_models_are_retrieved(embedded_server, new_user):
    _, key = new_user()
    client = client_for(embedded_server, key)
    model = client.models.retrieve("grok-1:regular")
    assert (model.id, model.object, model.owned_by) == ("grok-1:regular", "model", "grokweb")
    assert model.to_dict() == client.models.list().data[0].to_dict()
    with pytest.raises(openai.NotFoundError) as refused:
        client.models.retrieve("grok-1")  # not in the Free plan
    assert refused.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        client_for(embedded_server, "gw-nope").models.retrieve("grok-1:regular")
    for method, path in [
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models/"),
        ("POST", "/v1/chat/completions/"),
        ("GET", "/v1"),
    ]:
        response = httpx.request(
            method, embedded_server.url + path, json={}, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        assert response.status_code == 404 and response.headers["Content-Type"] == "application/json"
        error = response.json()["error"]
        assert (error["code"], error["type"]) == ("unknown_url", "invalid_request_error"), path
        assert error["message"] == f"Invalid URL ({method} {path})."


def test_an_unexpected_error_under_v1_is_json(monkeypatch, user_factory, api_key_factory):
    def broken(user):
        raise RuntimeError("a bug")

    monkeypatch.setattr("chat.api.views.list_models", broken)
    client = Client(raise_request_exception=False)
    response = client.get("/v1/models", headers={"Authorization": f"Bearer {api_key_factory(user_factory('ann'))}"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"


def test_a_prompt_too_long_for_the_context_is_refused_and_stores_nothing(embedded_server, new_user):
    """Counted in the web tier with the model's tokenizer, before anything is written: neither
    the conversation nor its messages stay behind, and no quota is spent."""
    username, key = new_user()
    words = " ".join(f"word{i}" for i in range(2000))[:16000]  # one message at the size limit
    messages = [{"role": "system", "content": words}] * 3 + [{"role": "user", "content": words}]
    refused = post(embedded_server, {"model": "grok-1:regular", "messages": messages}, key)
    assert refused.status_code == 400, refused.text
    assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == ("context_length_exceeded", "messages")
    stored = django_shell(
        embedded_server,
        "from chat.models import Conversation, Message, UsageEntry\n"
        "mine = {'conversation__owner__username': data['username']}\n"
        "print(json.dumps([Conversation.objects.filter(owner__username=data['username']).count(),"
        " Message.objects.filter(**mine).count(), UsageEntry.objects.filter(user__username=data['username']).count()]))",
        username=username,
    )
    assert stored == [0, 0, 0]
    assert client_for(embedded_server, key).chat.completions.create(
        model="grok-1:regular", messages=HELLO, max_tokens=2
    ).choices[0].finish_reason in ("length", "stop")


def test_the_prompt_is_checked_with_the_models_tokenizer_before_storing(user_factory, job_calls, settings, tiny_checkpoint):
    settings.GROK_CHECKPOINT = str(tiny_checkpoint)
    ann = user_factory("ann")
    long_text = " ".join(f"word{i}" for i in range(2000))[:16000]
    request = parse(model="grok-1:regular", messages=[{"role": "system", "content": long_text}] * 3 + HELLO)
    with pytest.raises(ChatError) as refused:
        requests.do_start_api_completion(ann, request)
    assert refused.value.code == "too_long"
    assert not Conversation.objects.exists() and not Message.objects.exists()
    # The same request with one system text fits: stored and queued.
    request = parse(model="grok-1:regular", messages=[{"role": "system", "content": "Be brief."}, *HELLO])
    assert requests.do_start_api_completion(ann, request).status == "queued"


def test_revoked_key_is_refused(embedded_server, new_user):
    username, _ = new_user()
    key = manage(embedded_server.env, "create_api_key", username, "--name", "cli").strip()
    client = client_for(embedded_server, key)
    assert [m.id for m in client.models.list()] == ["grok-1:regular"]
    django_shell(
        embedded_server,
        "from chat.models import ApiKey\n"
        "from django.utils import timezone\n"
        "ApiKey.objects.filter(user__username=data['username'], name='cli')"
        ".update(revoked_at=timezone.now())\n"
        "print('null')",
        username=username,
    )
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_rate_limits_answer_429_with_retry_after(embedded_server, new_user):
    _, key = new_user("one-a-day")
    assert client_for(embedded_server, key).chat.completions.create(
        model="grok-1", messages=HELLO, max_tokens=4
    ).choices[0].message.content is not None
    refused = post(embedded_server, {"model": "grok-1", "messages": HELLO}, key)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "daily_limit_exceeded"
    now = dt.datetime.now(dt.UTC)  # the server's GROKWEB_TIME_ZONE is UTC
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    assert abs(int(refused.headers["Retry-After"]) - (midnight - now).total_seconds()) < 60


def test_disconnecting_mid_stream_stops_the_reply(embedded_server, new_user):
    _, key = new_user()  # Free: one reply at a time, so a second request shows the slot freed
    # Greedy: the demo model's greedy replies run to their length, random ones may end early.
    body = {"model": "grok-1:regular", "messages": HELLO, "max_tokens": 400, "stream": True, "temperature": 0}
    with httpx.stream(
        "POST", embedded_server.url + "/v1/chat/completions", json=body,
        headers={"Authorization": f"Bearer {key}"}, timeout=60,
    ) as response:
        lines = response.iter_lines()
        first = json.loads(next(lines).removeprefix("data: "))
        while '"content":"' not in next(lines):  # wait for text: the reply is being written
            pass
        # ...meanwhile a second reply is over the Free plan's one at a time.
        busy = post(embedded_server, {"model": "grok-1:regular", "messages": HELLO}, key)
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "2"
        assert busy.json()["error"]["code"] == "rate_limit_exceeded"
    # Leaving the block closed the connection mid-reply.
    deadline = time.monotonic() + 30
    while (stored := reply_of(embedded_server, first["id"]))["status"] == "streaming":
        assert time.monotonic() < deadline, stored
        time.sleep(0.5)
    assert stored["status"] == "stopped" and stored["finish_reason"] == "cancelled"
    assert stored["completion_tokens"] < 400 and stored["charged"]
    again = client_for(embedded_server, key).chat.completions.create(
        model="grok-1:regular", messages=HELLO, max_tokens=4
    )
    assert again.choices[0].finish_reason in {"stop", "length"}


def test_abandoning_a_non_streaming_request_stops_the_reply(embedded_server, new_user):
    username, key = new_user()
    body = {"model": "grok-1:regular", "messages": HELLO, "max_tokens": 400, "temperature": 0}  # greedy: long
    with pytest.raises(httpx.ReadTimeout):  # the client gives up before the reply is done
        httpx.post(embedded_server.url + "/v1/chat/completions", json=body,
                   headers={"Authorization": f"Bearer {key}"}, timeout=1.0)
    deadline = time.monotonic() + 30
    while (stored := django_shell(embedded_server, REPLY, username=username))["status"] in {"queued", "streaming"}:
        assert time.monotonic() < deadline, stored
        time.sleep(0.5)
    assert stored["status"] == "stopped" and stored["completion_tokens"] < 400


# -- following a reply --------------------------------------------------------------------------


@pytest.fixture
def layer(settings):
    """A fresh in-memory channel layer, bound to this test's event loop."""
    from channels.layers import get_channel_layer

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    return get_channel_layer()


@pytest.fixture
def streaming_reply(transactional_db, django_db_serialized_rollback, user_factory, conversation_factory):
    """A committed reply being written, "Hello" so far (the follower reads it from its threads)."""
    user = user_factory("ann")
    conversation = conversation_factory(user, [("user", "Hi")], persona="regular")
    return branches.append(conversation, role="assistant", status="streaming", content="Hello")


@pytest.fixture
def reply_key(streaming_reply):
    """An API key of the streaming reply's owner, as the request that started it had."""
    return keys.do_create_api_key(streaming_reply.conversation.owner, "tests")[0]


def send(layer, reply, **event):
    return layer.group_send(f"reply.{reply.pk}", {"message_id": reply.pk, **event})


async def test_following_trims_overlaps_and_fills_gaps_from_the_database(layer, streaming_reply, reply_key, job_calls):
    reply = streaming_reply
    events = follow.follow_reply(reply_key, reply.pk)
    assert await anext(events) == {"type": "delta", "text": "Hello"}  # what was saved already
    await send(layer, reply, type="reply.delta", offset=3, text="lo there")  # overlaps by two
    assert await anext(events) == {"type": "delta", "text": " there"}
    # A delta past what was given: one went missing. The database (saved before sending) has it.
    await Message.objects.filter(pk=reply.pk).aupdate(content="Hello there, the lost bit, and more")
    await send(layer, reply, type="reply.delta", offset=30, text="and more")
    assert await anext(events) == {"type": "delta", "text": ", the lost bit, and more"}
    await send(layer, reply, type="reply.queued", position=1)  # nothing for an API client
    await send(layer, reply, type="reply.error", code="too_long", message="Too long.")
    done = {"type": "reply.done", "status": "failed", "finish_reason": "error",
            "content": "Hello there, the lost bit, and more!", "error": "Too long.",
            "error_code": "too_long", "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    await send(layer, reply, **done)
    assert await anext(events) == {"type": "delta", "text": "!"}  # the end a dropped delta had
    last = await anext(events)
    assert last["type"] == "done" and last["error_code"] == "too_long"
    assert (answers.failure(last).status, answers.failure(last).code) == (400, "context_length_exceeded")
    with pytest.raises(StopAsyncIteration):
        await anext(events)
    assert job_calls["cancel"] == []  # followed to its end: nothing to stop


async def test_a_late_follower_of_a_failed_reply_gets_its_stored_code(layer, streaming_reply, job_calls):
    """The worker failed the reply (too long) before the request followed it: the stored code,
    not the live event the request missed, makes the answer a 400."""
    reply = streaming_reply
    events = await database_sync_to_async(replies.do_fail_reply)(reply.pk, "Too long.", "too_long")
    assert [event["type"] for _, event in events] == ["reply.error", "reply.done"]
    done = [event async for event in follow.follow_reply(reply.conversation.owner, reply.pk)][-1]
    assert (done["type"], done["error_code"]) == ("done", "too_long")
    assert (answers.failure(done).status, answers.failure(done).code) == (400, "context_length_exceeded")


async def test_leaving_early_stops_the_reply(layer, streaming_reply, reply_key, job_calls):
    reply = streaming_reply
    events = follow.follow_reply(reply_key, reply.pk)
    assert (await anext(events))["text"] == "Hello"
    await events.aclose()  # what the server does when the client goes away
    assert job_calls["cancel"] == [reply.pk]  # the worker ends it at its next step


async def test_revoking_the_key_ends_its_streams_and_stops_the_reply(layer, streaming_reply, reply_key, job_calls):
    reply = streaming_reply
    events = follow.follow_reply(reply_key, reply.pk)
    assert (await anext(events))["text"] == "Hello"
    pending = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.1)
    assert not pending.done()  # waiting for the reply's next words
    await database_sync_to_async(keys.do_revoke_api_key)(reply_key.user, reply_key.pk)
    with pytest.raises(ChatError) as ended:
        await asyncio.wait_for(pending, 5)  # at once, not at the next poll
    assert api_error(ended.value).status == 401
    assert job_calls["cancel"] == [reply.pk]
    await send(layer, reply, type="reply.delta", offset=5, text=" more")
    with pytest.raises(StopAsyncIteration):
        await anext(events)


async def test_a_busy_stream_finds_a_revocation_it_was_not_told_of(layer, streaming_reply, reply_key, job_calls, monkeypatch):
    """As another process's, whose `key.revoked` Redis lost: a look every POLL_SECONDS finds
    it, though deltas keep coming."""
    monkeypatch.setattr(follow, "POLL_SECONDS", 0.3)
    reply = streaming_reply
    events = follow.follow_reply(reply_key, reply.pk)
    assert (await anext(events))["text"] == "Hello"
    await ApiKey.objects.filter(pk=reply_key.pk).aupdate(revoked_at=dt.datetime.now(dt.timezone.utc))
    with pytest.raises(ChatError, match="revoked"):
        for offset in range(5, 1000):
            await send(layer, reply, type="reply.delta", offset=offset, text="!")
            await asyncio.wait_for(anext(events), 5)
            await asyncio.sleep(0.05)
    assert offset < 100  # within a few looks
    assert job_calls["cancel"] == [reply.pk]


@pytest.mark.parametrize(
    "raw, param",
    [
        (b"[" * 2000, None),
        (json.dumps({"model": "grok-1", "messages": [{"role": "user", "content": "a\x00"}]}).encode(), "messages[0].content"),
        (b'{"model": "grok-1", "messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
        (json.dumps({"model": "grok-1\x00", "messages": HELLO}).encode(), "model"),
    ],
)
def test_deep_json_and_unstorable_text_are_400s(raw, param):
    with pytest.raises(ApiError) as refused:
        requests.parse_completion_request(raw)
    assert (refused.value.status, refused.value.code, refused.value.param) == (400, "invalid_value", param)
