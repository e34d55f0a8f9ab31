"""The API's answers about one reply: the `chat.completion` body, or its stream of
`chat.completion.chunk` server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from chat.errors import ApiError, ChatError, api_error
from chat.models import Message

FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop"}


def finish_reason(done: dict) -> str:
    """OpenAI's finish_reason for a finished reply (a reply stopped by its user ends as "stop")."""
    return FINISH_REASONS.get(done["finish_reason"], "stop")


def usage(done: dict) -> dict:
    """OpenAI's usage object, with the prompt tokens reused from the engine's prefix cache in
    OpenAI's place for them (`prompt_tokens_details.cached_tokens`)."""
    prompt, completion = done["usage"]["prompt_tokens"], done["usage"]["completion_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": done["usage"]["cached_tokens"]},
    }


def failure(done: dict) -> ApiError | None:
    """The error a failed reply is answered with; None if it did not fail."""
    if done["status"] != Message.Status.FAILED:
        return None
    # Replies failed before codes were stored have none: "failed".
    return api_error(ChatError(done["error_code"] or "failed", done["error"] or "The reply failed."))


@dataclass(frozen=True)
class Completion:
    """What every answer about one reply shares."""

    reply_id: int
    created: int  # Unix seconds
    model: str

    @classmethod
    def of(cls, reply: Message, model: str) -> Completion:
        return cls(reply.pk, int(reply.created_at.timestamp()), model)

    @property
    def id(self) -> str:
        return f"chatcmpl-{self.reply_id}"

    def body(self, done: dict) -> dict:
        """The non-streaming `chat.completion`."""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": done["content"], "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason(done),
                }
            ],
            "usage": usage(done),
        }

    def chunk(self, choices: list[dict], include_usage: bool, usage: dict | None = None) -> dict:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if include_usage:  # as OpenAI: null on every chunk but the last
            body["usage"] = usage
        return body

    async def sse(self, events: AsyncIterator[dict], include_usage: bool) -> AsyncIterator[bytes]:
        """The streamed answer: a chunk with the role, one per delta, one with the
        finish_reason, the usage chunk if asked for, then `[DONE]`. A reply that fails ends
        with an `error` event instead (the status line went out with the first chunk)."""

        def choice(delta: dict, reason: str | None = None) -> dict:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}

        yield sse(self.chunk([choice({"role": "assistant", "content": ""})], include_usage))
        try:
            async for event in events:
                if event["type"] == "delta":
                    yield sse(self.chunk([choice({"content": event["text"]})], include_usage))
                    continue
                error = failure(event)
                if error is not None:
                    yield sse(error.body())
                    return
                yield sse(self.chunk([choice({}, finish_reason(event))], include_usage))
                if include_usage:
                    yield sse(self.chunk([], include_usage, usage(event)))
        except ChatError as exc:
            yield sse(api_error(exc).body())
            return
        yield b"data: [DONE]\n\n"


def sse(data: dict) -> bytes:
    """One server-sent event: `data: ` and compact JSON, then a blank line."""
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
