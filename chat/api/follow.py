"""Following one reply for an API request: its text as it is written, then its end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import suppress

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from chat import actions
from chat.api.keys import key_group, live_keys
from chat.errors import ChatError
from chat.events import Follower, done_event, group_name
from chat.models import ApiKey, Message

# A reply silent this long is looked up in the database (a dropped `done`); a key is looked up
# as often, however busy its stream (a dropped `key.revoked`, a user made inactive).
POLL_SECONDS = 10.0
REVOKED_MESSAGE = "The API key was revoked."

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


async def follow_reply(key: ApiKey, reply_id: int) -> AsyncIterator[dict]:
    """The events of reply `reply_id` from its start: `{"type": "delta", "text"}` with new
    text, without gap or repeat, then the worker's `done` event (type "done"; a failed reply's
    `error_code` says why, from the database as from a live event).

    As the websocket does (chat/consumers.py), it subscribes a channel to the reply's group
    before reading the database, trims live deltas by what was already given (`Follower`), and
    reads the database again when a delta skips ahead (an event was dropped) or nothing came for
    POLL_SECONDS. Left before the end (the client went away: CancelledError or GeneratorExit
    here), it stops the reply, so its batch slot frees and the user is charged no further.
    The same happens when `key` is revoked (told by `key.revoked` on the key's group, or found
    by looking every POLL_SECONDS), which raises ChatError `key_revoked`."""
    layer = get_channel_layer()
    channel = await layer.new_channel("api")
    groups = [group_name(reply_id), key_group(key.pk)]
    for group in groups:
        await layer.group_add(group, channel)
    follower, finished = Follower(), False
    key_checked = time.monotonic()
    receiving: asyncio.Future | None = None
    try:
        pending = await _read(reply_id, follower)
        while True:
            for event in pending:
                finished = event["type"] == "done"
                yield event
                if finished:
                    return
            pending = []
            if time.monotonic() - key_checked > POLL_SECONDS:
                if not await live_keys().filter(pk=key.pk).aexists():
                    raise ChatError("key_revoked", REVOKED_MESSAGE)
                key_checked = time.monotonic()
            receiving = receiving or asyncio.ensure_future(layer.receive(channel))
            ready, _ = await asyncio.wait({receiving}, timeout=POLL_SECONDS)
            if not ready:
                pending = await _read(reply_id, follower)
                continue
            event, receiving = receiving.result(), None
            if event["type"] == "key.revoked":
                raise ChatError("key_revoked", REVOKED_MESSAGE)
            if event["type"] == "reply.delta":
                text = follower.new_text(event["offset"], event["text"])
                if text is None:  # a dropped delta: the database has the text (saved first)
                    pending = await _read(reply_id, follower)
                elif text:
                    pending = [{"type": "delta", "text": text}]
            elif event["type"] == "reply.done":
                # `content` is the whole reply: whatever a dropped delta missed, then the end.
                rest = follower.new_text(0, event["content"])
                pending = [{"type": "delta", "text": rest}] if rest else []
                pending.append({**event, "type": "done"})
    finally:
        if receiving is not None:
            receiving.cancel()
        with suppress(Exception):
            for group in groups:
                await layer.group_discard(group, channel)
        if not finished:
            # Shielded: this runs while the request is being cancelled. not_found: the reply
            # was deleted, nothing left to stop.
            with suppress(ChatError):
                await asyncio.shield(database_sync_to_async(actions.do_stop)(key.user, reply_id))
