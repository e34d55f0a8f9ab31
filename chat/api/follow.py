"""Following one reply for an API request: its text as it is written, then its end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from chat import actions
from chat.errors import ChatError
from chat.events import Follower, done_event, group_name
from chat.models import Message, User

POLL_SECONDS = 10.0  # a reply silent this long is looked up in the database (a dropped `done`)

async def _read(reply_id: int, follower: Follower) -> list[dict]:
    """What the database holds past what `follower` has of the reply: a delta when there is
    more text, and its `done` when it is over."""
    reply = await database_sync_to_async(Message.objects.filter(pk=reply_id).first)()
    if reply is None:  # its conversation was deleted meanwhile
        raise ChatError("not_found", "The reply was deleted.")
    text = follower.new_text(0, reply.content)
    events = [{"type": "delta", "text": text}] if text else []
    if not reply.is_active:
        events.append({**done_event(reply), "type": "done"})
    return events


async def follow_reply(user: User, reply_id: int) -> AsyncIterator[dict]:
    """The events of reply `reply_id` from its start: `{"type": "delta", "text"}` with new
    text, without gap or repeat, then the worker's `done` event (type "done", plus `error_code`
    when the worker said why it failed).

    As the websocket does (chat/consumers.py), it subscribes a channel to the reply's group
    before reading the database, trims live deltas by what was already given (`Follower`), and
    reads the database again when a delta skips ahead (an event was dropped) or nothing came for
    POLL_SECONDS. Left before the end (the client went away: CancelledError or GeneratorExit
    here), it stops the reply, so its batch slot frees and the user is charged no further."""
    layer = get_channel_layer()
    channel = await layer.new_channel("api")
    group = group_name(reply_id)
    await layer.group_add(group, channel)
    follower, error_code, finished = Follower(), "failed", False
    receiving: asyncio.Future | None = None
    try:
        pending = await _read(reply_id, follower)
        while True:
            for event in pending:
                if event["type"] == "done":
                    finished = True
                    yield {**event, "error_code": error_code}
                    return
                yield event
            pending = []
            receiving = receiving or asyncio.ensure_future(layer.receive(channel))
            ready, _ = await asyncio.wait({receiving}, timeout=POLL_SECONDS)
            if not ready:
                pending = await _read(reply_id, follower)
                continue
            event, receiving = receiving.result(), None
            if event["type"] == "reply.delta":
                text = follower.new_text(event["offset"], event["text"])
                if text is None:  # a dropped delta: the database has the text (saved first)
                    pending = await _read(reply_id, follower)
                elif text:
                    pending = [{"type": "delta", "text": text}]
            elif event["type"] == "reply.error":
                error_code = event["code"]
            elif event["type"] == "reply.done":
                # `content` is the whole reply: whatever a dropped delta missed, then the end.
                rest = follower.new_text(0, event["content"])
                pending = [{"type": "delta", "text": rest}] if rest else []
                pending.append({**event, "type": "done"})
    finally:
        if receiving is not None:
            receiving.cancel()
        with suppress(Exception):
            await layer.group_discard(group, channel)
        if not finished:
            # Shielded: this runs while the request is being cancelled. not_found: the reply
            # was deleted, nothing left to stop.
            with suppress(ChatError):
                await asyncio.shield(database_sync_to_async(actions.do_stop)(user, reply_id))
