"""The chat websocket through grokweb.asgi.application: auth, origin, frame checks, and replies
streamed by the worker loop (in-process queue, in-memory channel layer, tiny model)."""

import asyncio
import json
import threading

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from chat import jobs
from chat.models import Message, UsageEntry, User
from chat.publisher import Publisher
from chat.serving import serve
from grokweb.asgi import application

ORIGIN = (b"origin", b"http://127.0.0.1:8000")  # the dev server, a default public origin
TIMEOUT = 10


@pytest.fixture(autouse=True)
def fresh_queue_and_layer(settings):
    """Each test gets an empty in-process queue and a fresh in-memory layer (bound to its loop)."""
    settings.REDIS_URL = ""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.GROK_MAX_NEW_TOKENS = 24
    jobs._queue_for.cache_clear()
    yield
    jobs._queue_for.cache_clear()


@pytest.fixture
async def worker(engine):
    """The worker loop in a thread, publishing through this test's event loop."""
    stop = threading.Event()
    thread = threading.Thread(
        target=serve,
        args=(engine, Publisher(asyncio.get_running_loop()), stop),
        kwargs={"max_batch": len(engine.slots)},
    )
    thread.start()
    yield
    stop.set()
    await asyncio.to_thread(thread.join, 30)  # the loop must keep running: the worker sends on it
    assert not thread.is_alive()


async def connect(cookie: str | None = None):
    """A socket from the page's own origin, logged in if `cookie` (a `login` fixture's) is given."""
    headers = [ORIGIN, (b"cookie", cookie.encode())] if cookie else [ORIGIN]
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def ask(communicator, frame):
    await communicator.send_to(text_data=frame if isinstance(frame, str) else json.dumps(frame))
    return await communicator.receive_json_from(TIMEOUT)


async def until_done(communicator, message_id):
    """Frames up to and including the `done` of `message_id`."""
    frames = []
    while True:
        frame = await communicator.receive_json_from(TIMEOUT)
        frames.append(frame)
        if frame["type"] == "done" and frame["message_id"] == message_id:
            return frames


def deltas_text(frames, message_id):
    """The text of the deltas of `message_id`, checking that each starts where the last ended."""
    text = ""
    for frame in frames:
        if frame["type"] == "delta" and frame["message_id"] == message_id:
            assert frame["offset"] == len(text), (frame, len(text))
            text += frame["text"]
    return text


# -- connecting -------------------------------------------------------------------------------


async def test_anonymous_socket_is_closed_with_4401(committed_db):
    communicator = await connect()
    assert await communicator.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4401}


async def test_foreign_origin_is_refused(login):
    cookie = await database_sync_to_async(login)("ann")
    communicator = WebsocketCommunicator(
        application, "/ws/chat/", headers=[(b"origin", b"https://evil.example"), (b"cookie", cookie.encode())]
    )
    connected, _ = await communicator.connect()
    assert not connected


# -- frames -----------------------------------------------------------------------------------


async def test_bad_frames_get_error_frames_and_the_socket_stays_open(login):
    communicator = await connect(await database_sync_to_async(login)("ann"))
    cases = [
        ("{nope", "bad_json"),
        ("[1, 2]", "bad_frame"),
        ({"type": "dance"}, "unknown_type"),
        ({"no": "type"}, "unknown_type"),
        ({"type": ["send"]}, "unknown_type"),
        ({"type": "send", "conversation_id": None}, "bad_frame"),  # no content
        ({"type": "send", "conversation_id": "1", "content": "hi"}, "bad_frame"),
        ({"type": "stop", "message_id": True}, "bad_frame"),
        ({"type": "resume", "message_id": 1, "offset": -1}, "bad_frame"),
        ({"type": "send", "conversation_id": None, "content": "hi", "client_id": 7}, "bad_frame"),
        ({"type": "ping", "client_id": "x" * 65}, "bad_frame"),
        ({"type": "send", "conversation_id": None, "content": "   "}, "bad_frame"),
        ({"type": "send", "conversation_id": None, "content": "x" * 20000}, "too_large"),
        (json.dumps({"type": "send", "content": "é" * 40000}), "too_large"),  # 80 KB in 40 k chars
        ("[" * 2000, "bad_json"),  # deeper than the parser could recurse
        ('{"type": "send", "conversation_id": null, "content": "a\\u0000"}', "bad_text"),
        ('{"type": "send", "conversation_id": null, "content": "\\ud800"}', "bad_text"),
    ]
    for frame, code in cases:
        answer = await ask(communicator, frame)
        assert (answer["type"], answer["code"]) == ("error", code), (frame, answer)
    answer = await ask(communicator, {"type": "edit", "message_id": 1, "client_id": "c-1"})
    assert answer["code"] == "bad_frame" and answer["client_id"] == "c-1"
    await communicator.send_to(bytes_data=b"\x00")
    assert (await communicator.receive_json_from(TIMEOUT))["code"] == "bad_frame"
    assert await ask(communicator, {"type": "ping"}) == {"type": "pong"}
    assert not await database_sync_to_async(Message.objects.exists)()
    await communicator.disconnect()


async def test_other_users_conversations_and_replies_are_not_found(login, conversation_factory):
    def setup():
        login("ann")
        bob_cookie = login("bob")
        conversation = conversation_factory(User.objects.get(username="ann"))
        return bob_cookie, conversation.id, conversation.messages.last().id

    bob_cookie, conversation_id, reply_id = await database_sync_to_async(setup)()
    communicator = await connect(bob_cookie)
    frames = [
        {"type": "send", "conversation_id": conversation_id, "content": "mine now", "client_id": "x"},
        {"type": "regenerate", "conversation_id": conversation_id},
        {"type": "resume", "message_id": reply_id, "offset": 0},
        {"type": "stop", "message_id": reply_id},
        {"type": "edit", "message_id": reply_id - 1, "content": "edited"},
        {"type": "switch", "message_id": reply_id - 1},
    ]
    for frame in frames:
        answer = await ask(communicator, frame)
        assert answer["type"] == "error" and answer["code"] == "not_found", (frame, answer)
    count = await database_sync_to_async(Message.objects.filter(conversation_id=conversation_id).count)()
    assert count == 2
    await communicator.disconnect()


# -- replies ----------------------------------------------------------------------------------


async def test_a_reply_streams_as_deltas_then_done(login, worker):
    communicator = await connect(await database_sync_to_async(login)("ann"))
    accepted = await ask(
        communicator, {"type": "send", "conversation_id": None, "content": "Hello there", "client_id": "c1"}
    )
    assert accepted["type"] == "accepted" and accepted["client_id"] == "c1"
    assert accepted["title"] == "Hello there"
    assert accepted["user_message"]["content"] == "Hello there"
    reply_id = accepted["assistant_message"]["id"]
    assert accepted["assistant_message"]["status"] == "queued"

    frames = await until_done(communicator, reply_id)
    done = frames[-1]
    reply = await database_sync_to_async(Message.objects.get)(pk=reply_id)
    assert reply.status == done["status"] == "done", (reply.error, frames[-3:])
    assert done["content"] == reply.content == deltas_text(frames, reply_id)
    assert reply.content and not reply.content[0].isspace()  # the prompt's trailing space is dropped
    assert done["finish_reason"] in {"stop", "length"} and done["usage"]["completion_tokens"] <= 24
    assert done["usage"]["prompt_tokens"] > 0 and done["duration"] >= done["time_to_first_token"] > 0
    assert reply.model_name == "grok-1-tiny-demo" and reply.generation["max_new_tokens"] == 24
    assert reply.persona_version_id is not None and reply.generation["context_len"] <= 512
    usage = await database_sync_to_async(UsageEntry.objects.get)(message=reply)
    assert usage.completion_tokens == reply.completion_tokens == done["usage"]["completion_tokens"]

    # The conversation goes on: a second turn is answered with the first in its history.
    conversation_id = accepted["conversation_id"]
    again = await ask(communicator, {"type": "send", "conversation_id": conversation_id, "content": "More"})
    assert again["type"] == "accepted" and again["conversation_id"] == conversation_id
    frames = await until_done(communicator, again["assistant_message"]["id"])
    assert frames[-1]["status"] == "done"
    await communicator.disconnect()


async def test_regenerate_and_edit_add_versions_and_switch_shows_them(login, worker):
    communicator = await connect(await database_sync_to_async(login)("ann"))
    accepted = await ask(communicator, {"type": "send", "conversation_id": None, "content": "First"})
    conversation_id, message_id = accepted["conversation_id"], accepted["user_message"]["id"]
    first_reply = accepted["assistant_message"]["id"]
    assert accepted["user_message"]["versions"] == [message_id] and accepted["assistant_message"]["versions"] == [first_reply]
    await until_done(communicator, first_reply)

    again = await ask(communicator, {"type": "regenerate", "conversation_id": conversation_id, "client_id": "r"})
    assert again["type"] == "accepted" and again["client_id"] == "r"
    assert again["user_message"] == {"id": message_id, "content": "First", "versions": [message_id]}
    second_reply = again["assistant_message"]["id"]
    assert again["assistant_message"]["versions"] == [first_reply, second_reply]
    assert (await until_done(communicator, second_reply))[-1]["status"] == "done"

    edited = await ask(communicator, {"type": "edit", "message_id": message_id, "content": "Second"})
    edited_id = edited["user_message"]["id"]
    assert edited["type"] == "accepted" and edited["user_message"] == {
        "id": edited_id, "content": "Second", "versions": [message_id, edited_id]
    }
    frames = await until_done(communicator, edited["assistant_message"]["id"])
    assert frames[-1]["status"] == "done"

    # Back to the first version of the message: its newest reply comes with it.
    path = await ask(communicator, {"type": "switch", "message_id": message_id, "client_id": "s"})
    assert path["type"] == "path" and path["client_id"] == "s" and path["conversation_id"] == conversation_id
    assert [(m["id"], m["role"], m["versions"]) for m in path["messages"]] == [
        (message_id, "user", [message_id, edited_id]),
        (second_reply, "assistant", [first_reply, second_reply]),
    ]
    assert path["messages"][0]["content"] == "First" and path["messages"][1]["status"] == "done"
    stored = await database_sync_to_async(
        lambda: list(Message.objects.filter(conversation_id=conversation_id).values_list("role", "status"))
    )()
    assert stored == [("user", "done"), ("assistant", "done"), ("assistant", "done"), ("user", "done"), ("assistant", "done")]
    error = await ask(communicator, {"type": "switch", "message_id": "x"})
    assert error["type"] == "error" and error["code"] == "bad_frame"
    await communicator.disconnect()


async def test_stop_ends_a_reply_promptly_and_keeps_its_text(login, worker, settings):
    settings.GROK_MAX_NEW_TOKENS = 200
    settings.GROK_TEMPERATURE = 0  # greedy: the demo model's greedy replies run to their length
    communicator = await connect(await database_sync_to_async(login)("ann"))
    accepted = await ask(communicator, {"type": "send", "conversation_id": None, "content": "Go on"})
    reply_id = accepted["assistant_message"]["id"]
    frames = [await communicator.receive_json_from(TIMEOUT)]
    while frames[-1]["type"] != "delta":
        frames.append(await communicator.receive_json_from(TIMEOUT))
    await communicator.send_json_to({"type": "stop", "message_id": reply_id})
    frames += await until_done(communicator, reply_id)
    done = frames[-1]
    reply = await database_sync_to_async(Message.objects.get)(pk=reply_id)
    assert done["status"] == reply.status == "stopped" and reply.finish_reason == "cancelled"
    assert reply.content and done["content"] == reply.content == deltas_text(frames, reply_id)
    assert reply.completion_tokens < 200
    await communicator.disconnect()


async def test_stopping_a_queued_reply_answers_done_at_once(login):
    """No worker here: the reply stays queued until stopped; nobody else would say `done`."""
    communicator = await connect(await database_sync_to_async(login)("ann"))
    accepted = await ask(communicator, {"type": "send", "conversation_id": None, "content": "Hi"})
    reply_id = accepted["assistant_message"]["id"]
    done = await ask(communicator, {"type": "stop", "message_id": reply_id})
    assert done["type"] == "done" and done["status"] == "stopped" and done["content"] == ""
    # Stopping again is harmless: the reply is over, its `done` is repeated.
    assert (await ask(communicator, {"type": "stop", "message_id": reply_id}))["status"] == "stopped"
    await communicator.disconnect()


async def test_resume_mid_reply_has_no_gap_and_no_repeat(login, worker, settings):
    settings.GROK_MAX_NEW_TOKENS = 120
    cookie = await database_sync_to_async(login)("ann")
    first = await connect(cookie)
    accepted = await ask(first, {"type": "send", "conversation_id": None, "content": "Tell me"})
    reply_id = accepted["assistant_message"]["id"]
    shown = ""
    while len(shown) < 10:  # the first page has some of the reply...
        frame = await first.receive_json_from(TIMEOUT)
        if frame["type"] == "delta":
            shown += frame["text"]
    await first.disconnect()  # ...and goes away mid-reply

    # A page that shows only part of what was written asks for the rest.
    second = await connect(cookie)
    offset = len(shown) // 2
    await second.send_json_to({"type": "resume", "message_id": reply_id, "offset": offset})
    frames = await until_done(second, reply_id)
    deltas = [f for f in frames if f["type"] == "delta"]
    assert deltas[0]["offset"] == offset
    text = shown[:offset]
    for delta in deltas:
        assert delta["offset"] == len(text)  # each picks up exactly where the page is
        text += delta["text"]
    assert text == frames[-1]["content"]
    assert frames[-1]["status"] == "done"

    # Resuming a finished reply answers `done` with the whole saved text.
    done = await ask(second, {"type": "resume", "message_id": reply_id, "offset": 0})
    assert done["type"] == "done" and done["content"] == text
    await second.disconnect()


async def test_concurrent_replies_are_batched_and_each_complete(login, worker, engine):
    # One user each: the Free plan writes one reply at a time per user.
    pages = [await connect(await database_sync_to_async(login)(f"u{i}")) for i in range(len(engine.slots) + 1)]
    ids = []
    for i, page in enumerate(pages):
        accepted = await ask(page, {"type": "send", "conversation_id": None, "content": f"Hi {i}"})
        assert accepted["type"] == "accepted", accepted
        ids.append(accepted["assistant_message"]["id"])
    for page, reply_id in zip(pages, ids):
        frames = await until_done(page, reply_id)
        assert frames[-1]["status"] == "done"
        assert frames[-1]["content"] == deltas_text(frames, reply_id)
        await page.disconnect()


async def test_a_full_queue_is_busy_and_keeps_the_message(login, settings):
    settings.GROK_MAX_QUEUE = 1
    jobs._queue_for.cache_clear()
    ann = await connect(await database_sync_to_async(login)("ann"))
    assert (await ask(ann, {"type": "send", "conversation_id": None, "content": "one"}))["type"] == "accepted"
    communicator = await connect(await database_sync_to_async(login)("bob"))
    refused = await ask(communicator, {"type": "send", "conversation_id": None, "content": "two", "client_id": "c2"})
    assert refused["code"] == "busy" and refused["client_id"] == "c2"
    reply = await database_sync_to_async(Message.objects.select_related("conversation").get)(pk=refused["message_id"])
    assert reply.status == "failed" and reply.conversation_id == refused["conversation_id"]
    user_message = await database_sync_to_async(Message.objects.get)(conversation_id=reply.conversation_id, role="user")
    assert user_message.content == "two"
    await communicator.disconnect()


async def test_unreachable_redis_is_unavailable_and_keeps_the_message(login, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    jobs._queue_for.cache_clear()
    communicator = await connect(await database_sync_to_async(login)("ann"))
    refused = await ask(communicator, {"type": "send", "conversation_id": None, "content": "hello"})
    assert refused["type"] == "error" and refused["code"] == "unavailable"
    reply = await database_sync_to_async(Message.objects.get)(pk=refused["message_id"])
    assert reply.status == "failed"
    assert await database_sync_to_async(
        Message.objects.filter(conversation_id=refused["conversation_id"], role="user", content="hello").exists
    )()
    await communicator.disconnect()


# -- origins and the end of a session -----------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [b"http://127.0.0.1:9999", b"https://127.0.0.1:8000", b"https://localhost", b"http://127.0.0.1", b"null"],
)
async def test_only_an_exact_public_origin_may_open_a_socket(login, origin):
    """Scheme, host and port all count, as browsers define an origin: the defaults allow the
    dev server's http://127.0.0.1:8000 and http://localhost:8000 only."""
    cookie = (b"cookie", (await database_sync_to_async(login)("ann")).encode())
    refused = WebsocketCommunicator(application, "/ws/chat/", headers=[(b"origin", origin), cookie])
    assert not (await refused.connect())[0]
    allowed = WebsocketCommunicator(application, "/ws/chat/", headers=[(b"origin", b"http://localhost:8000"), cookie])
    assert (await allowed.connect())[0]
    await allowed.disconnect()


def _session(cookie: str):
    from django.contrib.sessions.models import Session

    return Session.objects.get(session_key=cookie.removeprefix("sessionid="))


def _log_out(cookie: str, user: User) -> None:
    from django.test import Client

    client = Client()
    client.cookies["sessionid"] = cookie.removeprefix("sessionid=")
    assert client.post("/accounts/logout/").status_code == 302


def _new_password(cookie: str, user: User) -> None:
    user.set_password("another-Strong-pass-43")
    user.save()


def _deactivate(cookie: str, user: User) -> None:
    user.is_active = False
    user.save(update_fields=["is_active"])


@pytest.mark.parametrize("end", [_log_out, _new_password, _deactivate])
async def test_a_socket_is_closed_as_soon_as_its_session_ends(login, end):
    """No frame needed: the user's group hears of it (chat.sessions) and the socket closes
    with 4401; what the page sends after is ignored."""
    cookie = await database_sync_to_async(login)("ann")
    communicator = await connect(cookie)
    assert (await ask(communicator, {"type": "ping"}))["type"] == "pong"
    ann = await database_sync_to_async(User.objects.get)(username="ann")
    await database_sync_to_async(end)(cookie, ann)
    assert await communicator.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4401}
    await communicator.send_to(text_data=json.dumps({"type": "send", "conversation_id": None, "content": "hi"}))
    assert await communicator.receive_nothing(0.5)
    assert not await database_sync_to_async(Message.objects.exists)()


async def test_a_frame_finds_a_session_ended_unheard(login):
    """A session deleted without a word (as another process would whose event Redis lost) is
    found by the next frame, which is not acted on."""
    cookie = await database_sync_to_async(login)("ann")
    communicator = await connect(cookie)
    await database_sync_to_async(lambda: _session(cookie).delete())()
    await communicator.send_to(text_data=json.dumps({"type": "send", "conversation_id": None, "content": "hi"}))
    assert await communicator.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4401}
    assert not await database_sync_to_async(Message.objects.exists)()


async def test_a_socket_looks_at_its_session_again_within_the_recheck_time(login, settings):
    """Between looks the socket trusts its session (the events above end it at once); one
    ended unheard is found by the first frame after GROKWEB_SESSION_RECHECK_SECONDS."""
    settings.GROKWEB_SESSION_RECHECK_SECONDS = 1.0
    cookie = await database_sync_to_async(login)("ann")
    communicator = await connect(cookie)
    assert (await ask(communicator, {"type": "ping"}))["type"] == "pong"  # looked: trusted for 1 s
    await database_sync_to_async(lambda: _session(cookie).delete())()
    assert (await ask(communicator, {"type": "ping"}))["type"] == "pong"
    await asyncio.sleep(1.1)
    await communicator.send_to(text_data=json.dumps({"type": "send", "conversation_id": None, "content": "hi"}))
    assert await communicator.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4401}
    assert not await database_sync_to_async(Message.objects.exists)()


async def test_a_socket_not_yet_in_its_users_group_looks_at_its_session_on_every_frame(login, monkeypatch):
    """Until it hears the group's events (its join can hang while Redis restarts), trusting an
    earlier look would let an ended session go on: every frame looks."""
    from chat.consumers import ChatConsumer

    async def never_joined(self):
        await asyncio.Event().wait()

    monkeypatch.setattr(ChatConsumer, "join_user_group", never_joined)
    cookie = await database_sync_to_async(login)("ann")
    communicator = await connect(cookie)
    assert (await ask(communicator, {"type": "ping"}))["type"] == "pong"
    await database_sync_to_async(lambda: _session(cookie).delete())()
    await communicator.send_to(text_data=json.dumps({"type": "ping"}))
    assert await communicator.receive_output(TIMEOUT) == {"type": "websocket.close", "code": 4401}
    await communicator.disconnect()
