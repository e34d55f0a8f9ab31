"""The reply-event vocabulary shared by the worker, the websocket and the API.

A worker tells everyone following a reply through the Channels group `reply.<id>`:
`reply.delta` (text from `offset` on), `reply.queued` (its place in line), `reply.error` (why it
failed) and `reply.done` (the reply as saved). Text is saved before its delta is sent, so a
follower that missed a delta finds the text in the database. `Follower` is the one place that
joins database reads and live deltas without a gap or a repeat; the websocket consumer and the
API's `follow_reply` each keep one per followed reply (static/chat/transcript.js does the same
in the page).

This module imports nothing of the inference worker: the web tier can use it without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chat.models import Message

Events = list[tuple[str, dict]]  # (group, event) pairs, sent in order


def group_name(reply_id: int | str) -> str:
    return f"reply.{reply_id}"


def delta_event(reply_id: int | str, offset: int, text: str) -> dict:
    return {"type": "reply.delta", "message_id": int(reply_id), "offset": offset, "text": text}


def queued_event(reply_id: int | str, position: int) -> dict:
    return {"type": "reply.queued", "message_id": int(reply_id), "position": position}


def error_event(reply_id: int | str, code: str, message: str) -> dict:
    return {"type": "reply.error", "message_id": int(reply_id), "code": code, "message": message}


def done_event(reply: Message) -> dict:
    """The `reply.done` event for a finished reply, as saved."""
    return {
        "type": "reply.done",
        "message_id": reply.pk,
        "status": reply.status,
        "finish_reason": reply.finish_reason,
        "content": reply.content,
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "cached_tokens": reply.cached_tokens,  # of prompt_tokens, from the engine's prefix cache
        },
        "error": reply.error,
        "error_code": reply.error_code,
        "time_to_first_token": reply.time_to_first_token,
        "duration": reply.duration,
    }


def failure_events(reply: Message) -> Events:
    """What a failed reply's followers are told: why, then the reply as saved."""
    group = group_name(reply.pk)
    return [(group, error_event(reply.pk, reply.error_code, reply.error)), (group, done_event(reply))]


class Follower:
    """How many characters of one reply a follower has, and what of a delta is new to it.

    `have` grows only by what `new_text` hands out. A delta that starts past `have` means an
    earlier one was dropped: `new_text` then returns None and the follower reads the database
    (the text is saved before its delta is sent)."""

    def __init__(self, have: int = 0) -> None:
        self.have = have

    def new_text(self, offset: int, text: str) -> str | None:
        """The part of `text` (which starts at `offset`) that follows what this follower has:
        "" when it has all of it, None when there is a gap before it."""
        if offset > self.have:
            return None
        new = text[self.have - offset :] if offset + len(text) > self.have else ""
        self.have += len(new)
        return new
