"""The chat websocket (docs/protocol.md): checks frames, calls `chat.actions`, relays replies.

Rules live in `chat.actions`; this module only validates the shape of frames, maps `ChatError` to
`error` frames and follows replies: a socket joins the Channels group `reply.<id>` of every reply
it sends or resumes, and remembers how many characters of it the page has, so that text from the
database and live deltas join without a gap or a repeat.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

import redis
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from chat import actions, metrics, serving, sessions
from chat.errors import ChatError
from chat.events import Follower, done_event, group_name
from chat.inputs import parse_json
from chat.models import Message

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024
MAX_CLIENT_ID = 64
MAX_FOLLOWED = 16  # replies one socket may follow at once; a page follows one or two
CLOSE_UNAUTHENTICATED = 4401
CLOSE_UNAVAILABLE = 4503  # the channel layer (Redis) failed: the page reconnects and resumes
UNAVAILABLE = "The server lost touch with Redis."


def _field(frame: dict, name: str, *types: type, optional: bool = False):
    """`frame[name]`, which must be one of `types` (bool never passes for int)."""
    if name not in frame:
        if optional:
            return None
        raise ChatError("bad_frame", f"The frame needs `{name}`.")
    value = frame[name]
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise ChatError("bad_frame", f"`{name}` has the wrong type.")
    return value


def _message_id(frame: dict) -> int:
    return _field(frame, "message_id", int)


def message_fields(message: Message) -> dict:
    """A message of a `path` frame: what the page shows of it (docs/protocol.md)."""
    return {
        "id": message.pk,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "finish_reason": message.finish_reason,
        "error": message.error,
        "rating": next((f.rating for f in message.feedback.all()), None),
        "versions": message.versions,
    }


class ChatConsumer(AsyncWebsocketConsumer):
    async def __call__(self, scope, receive, send) -> None:
        # Reading from the channel layer fails when Redis goes away, which would end the socket
        # with a traceback: tell the page instead, then close it. Redis loses group memberships
        # when it restarts, so the page's reconnect and `resume` are what put it back on track;
        # a frame whose group_add fails (`receive`) closes the socket for the same reason.
        try:
            await super().__call__(scope, receive, send)
        except (redis.RedisError, OSError) as exc:
            log.warning("the channel layer failed (%s); closing the socket", exc)
            frame = {"type": "error", "code": "unavailable", "message": UNAVAILABLE}
            try:
                await send({"type": "websocket.send", "text": json.dumps(frame)})
                await send({"type": "websocket.close", "code": CLOSE_UNAVAILABLE})
            except Exception:  # the socket is gone already
                pass

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.following: dict[int, Follower] = {}  # reply id -> what of it the page has
        self.joined = False  # in the user's group, so told at once when a session ends
        self.session_trusted_until = 0.0  # monotonic time until which the last look at the session holds
        # Accepted first so that the close code reaches the page: a refused handshake has none.
        await self.accept()
        metrics.OPEN_WEBSOCKETS.inc()
        if self.user is None or not self.user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        # Told when a session of this user may have ended (chat.sessions); left on disconnect.
        self.groups = [sessions.user_group(self.user.pk)]
        # Joined beside the frames rather than before them: just after Redis restarts, this
        # first call of a new socket can hang (seen for 20 s and more, uncancellable), and the
        # page's `resume` must not wait behind it. Every frame checks the session anyway.
        self.joining = asyncio.create_task(self.join_user_group())
        if settings.GROK_EMBEDDED_WORKER:
            serving.start_embedded_worker(asyncio.get_running_loop())

    async def join_user_group(self) -> None:
        try:
            await self.channel_layer.group_add(self.groups[0], self.channel_name)
            self.joined = True
        except (redis.RedisError, OSError) as exc:  # as in __call__: tell the page, then close
            log.warning("the channel layer failed (%s); closing the socket", exc)
            await self.send_error("unavailable", UNAVAILABLE)
            await self.close(code=CLOSE_UNAVAILABLE)

    async def disconnect(self, code: int) -> None:
        metrics.OPEN_WEBSOCKETS.dec()
        joining = getattr(self, "joining", None)
        if joining is not None:
            joining.cancel()
        try:
            for message_id in list(getattr(self, "following", ())):
                await self.channel_layer.group_discard(group_name(message_id), self.channel_name)
        except (redis.RedisError, OSError) as exc:  # Redis away: the memberships expire by themselves
            log.warning("leaving reply groups failed: %s", exc)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.user or not self.user.is_authenticated:
            return  # closing: frames that raced the close are ignored
        if not await self.session_holds():
            return await self.end_session()
        # Size before anything else: a huge frame is not even parsed. A str has at most 4 bytes a
        # character, so short frames skip the encoding.
        size = len(bytes_data) if bytes_data is not None else len(text_data)
        if text_data is not None and size * 4 > MAX_FRAME_BYTES:
            size = len(text_data.encode("utf-8"))
        if size > MAX_FRAME_BYTES:
            return await self.send_error("too_large", "The frame is larger than 64 KiB.")
        if bytes_data is not None:
            return await self.send_error("bad_frame", "Frames are JSON text, not binary.")
        try:
            frame = parse_json(text_data, max_bytes=MAX_FRAME_BYTES)
        except ChatError as exc:
            return await self.send_error(exc.code, exc.message, **exc.extra)
        if not isinstance(frame, dict):
            return await self.send_error("bad_frame", "A frame is a JSON object.")
        client_id = frame.get("client_id")
        if client_id is not None and not (isinstance(client_id, str) and len(client_id) <= MAX_CLIENT_ID):
            return await self.send_error("bad_frame", f"`client_id` is a string of at most {MAX_CLIENT_ID}.")
        kind = frame.get("type")
        handler = self.HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            return await self.send_error("unknown_type", "Unknown frame type.", client_id=client_id)
        try:
            await handler(self, frame)
        except ChatError as exc:
            about = frame.get("message_id")
            extra = {"message_id": about} if isinstance(about, int) else {}
            await self.send_error(exc.code, exc.message, client_id=client_id, **extra | exc.extra)
        except (redis.RedisError, OSError) as exc:  # the channel layer's Redis: as in __call__
            log.warning("the channel layer failed (%s); closing the socket", exc)
            await self.send_error("unavailable", UNAVAILABLE, client_id=client_id)
            await self.close(code=CLOSE_UNAVAILABLE)
        except Exception:
            log.exception("handling a %s frame failed", kind)
            await self.send_error("unavailable", "Something went wrong; try again.", client_id=client_id)

    # -- the session ----------------------------------------------------------------------------

    async def session_holds(self) -> bool:
        """Whether the socket's session still logs its user in (logged out, new password and
        inactive users do not). Looked up in the database at most every
        GROKWEB_SESSION_RECHECK_SECONDS once the socket is in its user's group: in between, the
        group's `session.check` events end it at once (chat/sessions.py), and the look only
        catches what such an event missed (Redis lost it, the session expired). So a frame, a
        `send` above all, seldom waits for two queries before it is acted on."""
        if self.joined and time.monotonic() < self.session_trusted_until:
            return True
        user = await database_sync_to_async(sessions.session_user)(self.scope["session"].session_key)
        if user is None or user.pk != self.user.pk:
            return False
        self.session_trusted_until = time.monotonic() + settings.GROKWEB_SESSION_RECHECK_SECONDS
        return True

    async def end_session(self) -> None:
        """The session ended: relay nothing more and close, as a socket without one is."""
        self.user = None
        for message_id in list(self.following):
            await self.unfollow(message_id)
        await self.close(code=CLOSE_UNAUTHENTICATED)

    async def session_check(self, event: dict) -> None:
        if self.user is None:
            return
        self.session_trusted_until = 0.0  # look again now, whatever the last look said
        if event["ended"] == self.scope["session"].session_key or not await self.session_holds():
            await self.end_session()

    async def send_json(self, frame: dict) -> None:
        await self.send(text_data=json.dumps(frame))

    async def send_error(self, code: str, message: str, client_id: str | None = None, **extra) -> None:
        frame = {"type": "error", "code": code, "message": message, **extra}
        if client_id is not None:
            frame["client_id"] = client_id
        await self.send_json(frame)

    # -- client frames --------------------------------------------------------------------------

    async def on_send(self, frame: dict) -> None:
        conversation_id = _field(frame, "conversation_id", int, type(None))
        content = _field(frame, "content", str)
        persona = _field(frame, "persona", str, type(None), optional=True)
        message, reply = await database_sync_to_async(actions.do_send_message)(
            self.user, conversation_id=conversation_id, content=content, persona_slug=persona
        )
        await self.accepted(frame, message, reply)

    async def on_edit(self, frame: dict) -> None:
        message_id = _message_id(frame)
        content = _field(frame, "content", str)
        message, reply = await database_sync_to_async(actions.do_edit_message)(
            self.user, message_id, content
        )
        await self.accepted(frame, message, reply)

    async def on_regenerate(self, frame: dict) -> None:
        conversation_id = _field(frame, "conversation_id", int)
        message, reply = await database_sync_to_async(actions.do_regenerate)(
            self.user, conversation_id
        )
        await self.accepted(frame, message, reply)

    async def on_stop(self, frame: dict) -> None:
        reply = await database_sync_to_async(actions.do_stop)(self.user, _message_id(frame))
        if reply.is_active:
            # Its worker ends it and sends `done`: make sure this socket hears that (the catch-up
            # covers a `done` sent before the socket joined the group).
            have = self.following[reply.pk].have if reply.pk in self.following else len(reply.content)
            await self.follow(reply.pk, have)
        else:  # stopped while queued (no worker holds it), or already over
            await self.finish(done_event(reply))

    async def on_resume(self, frame: dict) -> None:
        message_id = _message_id(frame)
        offset = _field(frame, "offset", int)
        if offset < 0:
            raise ChatError("bad_frame", "`offset` cannot be negative.")
        reply = await database_sync_to_async(actions.get_message)(self.user, message_id)
        if reply.role != Message.Role.ASSISTANT:
            raise ChatError("not_found", "No such reply.")
        await self.follow(message_id, offset)

    async def on_switch(self, frame: dict) -> None:
        conversation, path = await database_sync_to_async(actions.do_switch_version)(
            self.user, _message_id(frame)
        )
        await self.send_json(
            {
                "type": "path",
                "client_id": frame.get("client_id"),
                "conversation_id": conversation.pk,
                "messages": [message_fields(m) for m in path],
            }
        )

    async def on_ping(self, frame: dict) -> None:
        await self.send_json({"type": "pong"})

    HANDLERS: dict[str, Callable[[ChatConsumer, dict], Awaitable[None]]] = {
        "send": on_send,
        "edit": on_edit,
        "regenerate": on_regenerate,
        "stop": on_stop,
        "resume": on_resume,
        "switch": on_switch,
        "ping": on_ping,
    }

    async def accepted(self, frame: dict, message: Message, reply: Message) -> None:
        """Answer a frame that queued a reply: from what the action returned (its conversation and
        `versions` come with it), so no query stands between the worker's start and the page."""
        await self.send_json(
            {
                "type": "accepted",
                "client_id": frame.get("client_id"),
                "conversation_id": reply.conversation_id,
                "title": reply.conversation.title,
                "user_message": {"id": message.pk, "content": message.content, "versions": message.versions},
                "assistant_message": {"id": reply.pk, "status": reply.status, "versions": reply.versions},
            }
        )
        # The worker may have written some of it already: catching up from 0 covers that.
        await self.follow(reply.pk, 0)

    # -- following replies ----------------------------------------------------------------------

    async def follow(self, message_id: int, offset: int) -> None:
        """Relay reply `message_id` to this page, which has its first `offset` characters.

        Subscribes before reading the database: text saved before the read comes from the read,
        text saved after it comes as a delta, and `reply_delta` trims what overlaps."""
        if message_id not in self.following and len(self.following) >= MAX_FOLLOWED:
            raise ChatError("busy", "This page follows too many replies at once.")
        if message_id not in self.following:
            await self.channel_layer.group_add(group_name(message_id), self.channel_name)
        self.following[message_id] = Follower(offset)
        reply = await database_sync_to_async(Message.objects.filter(pk=message_id).first)()
        if reply is None:  # deleted meanwhile
            await self.unfollow(message_id)
            raise ChatError("not_found", "No such reply.")
        if reply.is_active:
            # An event that arrived during the read is handled after this: content from here on.
            await self.reply_delta({"message_id": message_id, "offset": 0, "text": reply.content})
        else:
            await self.finish(done_event(reply))

    async def finish(self, event: dict) -> None:
        await self.send_json({**event, "type": "done"})
        await self.unfollow(event["message_id"])

    async def unfollow(self, message_id: int) -> None:
        if self.following.pop(message_id, None) is not None:
            await self.channel_layer.group_discard(group_name(message_id), self.channel_name)

    # -- group events (chat.events) -------------------------------------------------------------

    async def reply_delta(self, event: dict) -> None:
        message_id = event["message_id"]
        follower = self.following.get(message_id)
        if follower is None:
            return  # not followed
        offset, text = event["offset"], event["text"]
        new = follower.new_text(offset, text)
        if new is None:
            # A dropped frame: sent as is, so the page sees the gap and resumes.
            follower.have = offset + len(text)
        elif not new:
            return  # the page has all of it
        else:
            offset, text = follower.have - len(new), new
        await self.send_json({"type": "delta", "message_id": message_id, "offset": offset, "text": text})

    async def reply_done(self, event: dict) -> None:
        if event["message_id"] in self.following:
            await self.finish(event)

    async def reply_queued(self, event: dict) -> None:
        if event["message_id"] in self.following:
            await self.send_json({**event, "type": "queued"})

    async def reply_error(self, event: dict) -> None:
        if event["message_id"] in self.following:
            await self.send_json({**event, "type": "error"})
