"""The doors of the production stack: the websocket's exact origin check, and sessions and API
keys ending across web processes (two Daphne processes on one Redis, as behind a load balancer:
the end happens on one, the socket or stream lives on the other)."""

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request

import pytest
import websockets
from channels.db import database_sync_to_async

from chat.api.keys import do_create_api_key
from chat.models import ApiKey, Message
from tests.stack import STARTUP, free_port, receive, send_and_collect

pytestmark = pytest.mark.production


def second_daphne(s) -> int:
    """Start another Daphne process of stack `s`; its port."""
    port = free_port()
    s.start("daphne2", "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "grokweb.asgi:application")
    deadline = time.monotonic() + STARTUP
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port
        except OSError:
            assert s.processes["daphne2"].poll() is None and time.monotonic() < deadline, s.log("daphne2")
            time.sleep(0.3)


async def test_only_the_exact_public_origin_may_open_a_socket(production_stack, cookie):
    """The stack serves http://127.0.0.1:PORT (GROKWEB_PUBLIC_ORIGINS): another port, another
    scheme or another name for the same host is another origin."""
    s = await asyncio.to_thread(production_stack)
    for origin in [f"http://127.0.0.1:{s.port + 1}", f"https://127.0.0.1:{s.port}", "https://localhost",
                   f"http://localhost:{s.port}", "http://127.0.0.1"]:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with s.socket(cookie, origin=origin):
                pass
        assert refused.value.response.status_code == 403, origin
    async with s.socket(cookie) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert (await receive(ws))["type"] == "pong"


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def post_form(port: int, path: str, cookie: str) -> int:
    """POST `path` with the session `cookie` and a CSRF token, as the page's forms do; the status
    (not followed: these processes have no collected static files to render pages with). Django
    compares the token with the cookie, so a client may choose it."""
    token = "t" * 32
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=b"", method="POST",
        headers={"Cookie": f"{cookie}; csrftoken={token}", "X-CSRFToken": token},
    )
    try:
        urllib.request.build_opener(NoRedirects).open(request, timeout=20)
    except urllib.error.HTTPError as answer:
        return answer.code
    raise AssertionError("no redirect")


async def test_logging_out_on_one_process_closes_the_socket_on_another(production_stack, cookie):
    s = await asyncio.to_thread(production_stack, GROK_MAX_NEW_TOKENS="400")
    other = await asyncio.to_thread(second_daphne, s)
    origin = f"http://127.0.0.1:{s.port}"  # both behind the same public origin
    async with websockets.connect(
        f"ws://127.0.0.1:{other}/ws/chat/", origin=origin, additional_headers={"Cookie": cookie}
    ) as ws:
        reply_id, frames = await send_and_collect(ws, "Go on", until=lambda fs: any(f["type"] == "delta" for f in fs))
        assert await asyncio.to_thread(post_form, s.port, "/accounts/logout/", cookie) == 302
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:  # deltas until the close
                assert (await receive(ws))["type"] == "delta"
        assert closed.value.rcvd.code == 4401


def stream_until_it_ends(port: int, key: str, started) -> list[str]:
    """The SSE lines of a streamed completion on `port`; `started()` is called at its first delta."""
    body = {"model": "grok-1:regular", "stream": True, "messages": [{"role": "user", "content": "Tell a long story"}]}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    lines = []
    with urllib.request.urlopen(request, timeout=60) as response:
        for raw in response:
            if raw.strip():
                lines.append(raw.decode().strip())
                if len(lines) == 3:
                    started()
    return lines


async def test_revoking_a_key_on_one_process_ends_its_stream_on_another(production_stack, committed_db, user_factory):
    s = await asyncio.to_thread(production_stack, GROK_MAX_NEW_TOKENS="400")
    other = await asyncio.to_thread(second_daphne, s)
    ann = await database_sync_to_async(user_factory)("ann")
    row, key = await database_sync_to_async(do_create_api_key)(ann, "laptop")
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    streaming = asyncio.ensure_future(
        asyncio.to_thread(stream_until_it_ends, other, key, lambda: loop.call_soon_threadsafe(started.set))
    )
    await asyncio.wait_for(started.wait(), 60)
    from django.test import Client

    client = Client()
    await database_sync_to_async(client.force_login)(ann)
    session = f"sessionid={client.cookies['sessionid'].value}"
    assert await asyncio.to_thread(post_form, s.port, f"/settings/api-keys/{row.pk}/revoke/", session) == 302
    lines = await asyncio.wait_for(streaming, 10)  # at once, not at the reply's end
    assert "[DONE]" not in lines[-1]
    assert json.loads(lines[-1].removeprefix("data: "))["error"]["code"] == "invalid_api_key"
    assert (await database_sync_to_async(ApiKey.objects.get)(pk=row.pk)).revoked_at is not None
    reply = Message.objects.filter(conversation__owner=ann, role="assistant")
    deadline = time.monotonic() + 30
    while (status := (await database_sync_to_async(reply.get)()).status) in Message.ACTIVE_STATUSES:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert status == "stopped"
