"""The OpenAI-compatible API (docs/api.md): API keys, model ids, and chat completions.

A completion is a web chat reply through another door. The request's messages become a
Conversation with source "api" (the user sees it in their sidebar, staff in the admin) and its
reply a queued assistant Message that goes through the same plan checks
(`plans.check_can_generate`), queue, worker and usage ledger as a message sent from the page.
What the page cannot ask for (an extra system text, stop strings, sampling) is recorded in the
reply's `sampling`, which the worker honours (chat/worker.py).

Errors are `ApiError`s, answered as `{"error": {"message", "type", "code", "param"}}` with their
HTTP status; the domain's `ChatError`s are translated by `api_error`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import math
import secrets
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models import Min
from django.utils import timezone

from chat import actions, plans
from chat.actions import ChatError
from chat.context_processors import model_info
from chat.models import ApiKey, Conversation, Message, Persona, PersonaVersion, User
from chat.worker import done_event, group_name

# Public model ids: MODEL_BASE is the default persona, MODEL_BASE:<slug> any other one. They are
# part of the API, so clients can hard-code them: change them only with a note in docs/api.md.
MODEL_BASE = "grok-1"
DEFAULT_PERSONA = "grok"
DEMO_DESCRIPTION = "grokweb's tiny demo model: random weights, its output is noise"

KEY_PREFIX = "gw-"
KEY_DISPLAY_CHARS = 10  # "gw-" and 7 characters of the secret: enough to tell keys apart
MAX_MESSAGES = 500
MAX_STOP = 4  # as OpenAI's API
MAX_STOP_CHARS = 200
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts
CONCURRENCY_RETRY_AFTER = 2  # seconds: a reply at once is a short wait, not a day's
BUSY_RETRY_AFTER = 5
POLL_SECONDS = 10.0  # a reply silent this long is looked up in the database (a dropped `done`)

# role in the request -> role in the stored conversation; "system" and "developer" add to the
# persona's system prompt instead.
TURN_ROLES = {"user": Message.Role.USER, "assistant": Message.Role.ASSISTANT}
SYSTEM_ROLES = {"system", "developer"}


class ApiError(Exception):
    """A refused request, answered with `status` and the OpenAI error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict:
        return {
            "error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}
        }


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def api_error(error: ChatError, *, param: str | None = None) -> ApiError:
    """The API's answer to a refusal of the domain rules (codes of docs/protocol.md)."""
    if error.code == "quota":
        resets_at = error.extra.get("resets_at")
        if resets_at is None:  # too many replies at once: one ends soon
            return ApiError(
                429, error.message, type="rate_limit_error", code="rate_limit_exceeded",
                retry_after=CONCURRENCY_RETRY_AFTER,
            )
        wait = (dt.datetime.fromisoformat(resets_at) - timezone.now()).total_seconds()
        return ApiError(
            429, error.message, type="rate_limit_error", code="daily_limit_exceeded",
            retry_after=max(1, math.ceil(wait)),
        )
    if error.code in {"busy", "unavailable"}:
        return ApiError(
            503, error.message, type="server_error",
            code="server_busy" if error.code == "busy" else "service_unavailable",
            retry_after=BUSY_RETRY_AFTER,
        )
    if error.code == "too_long":
        return bad_request(error.message, "messages", code="context_length_exceeded")
    if error.code in {"bad_frame", "bad_json", "too_large"}:
        return bad_request(error.message, param)
    if error.code == "not_found":
        return ApiError(404, error.message, code="not_found", param=param)
    return ApiError(500, error.message, type="server_error", code=error.code)


# --- API keys -------------------------------------------------------------------------------


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def do_create_api_key(user: User, name: str) -> tuple[ApiKey, str]:
    """A new key for `user`: (its row, the key itself). The key is not stored, only its hash:
    show it now or never."""
    name = " ".join(str(name).split())
    max_length = ApiKey._meta.get_field("name").max_length
    if not name or len(name) > max_length:
        raise ChatError("bad_frame", f"A key's name needs 1 to {max_length} characters.")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey.objects.create(
        user=user, name=name, prefix=key[:KEY_DISPLAY_CHARS], hashed=_digest(key)
    )
    return row, key


def do_revoke_api_key(user: User, key_id: int) -> ApiKey:
    """Revoke one of the user's keys; revoking it again changes nothing."""
    key = ApiKey.objects.filter(user=user, pk=key_id).first()
    if key is None:
        raise ChatError("not_found", "No such API key.")
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


def check_api_key(authorization: str | None) -> User:
    """The user an `Authorization: Bearer <key>` header belongs to, or a 401 ApiError.

    Keys are found by their SHA-256, so the lookup compares hashes of a secret, not the secret
    a byte at a time; the final comparison is constant-time anyway."""
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(
            401, "Missing API key: send `Authorization: Bearer <key>`.", code="invalid_api_key"
        )
    digest = _digest(key)
    row = (
        ApiKey.objects.select_related("user")
        .filter(hashed=digest, revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if row is None or not hmac.compare_digest(row.hashed, digest):
        raise ApiError(401, "Incorrect or revoked API key.", code="invalid_api_key")
    ApiKey.objects.filter(pk=row.pk).update(last_used_at=timezone.now())
    return row.user


# --- models ---------------------------------------------------------------------------------


def model_id(persona: Persona) -> str:
    return MODEL_BASE if persona.slug == DEFAULT_PERSONA else f"{MODEL_BASE}:{persona.slug}"


def list_models(user: User) -> dict:
    """The `GET /v1/models` body: one model per persona the user's plan allows. Over the demo
    model each says, in a field clients ignore, that its text is noise."""
    is_demo = model_info(settings.GROK_CHECKPOINT)[1]
    personas = [persona for persona in actions.personas_for(user) if persona.allowed]
    created = dict(
        PersonaVersion.objects.filter(persona__in=personas)
        .values("persona")
        .annotate(first=Min("created_at"))
        .values_list("persona", "first")
    )
    return {
        "object": "list",
        "data": [
            {
                "id": model_id(persona),
                "object": "model",
                "created": int(created[persona.pk].timestamp()) if persona.pk in created else 0,
                "owned_by": "grokweb",
                **({"description": DEMO_DESCRIPTION} if is_demo else {}),
            }
            for persona in personas
        ],
    }


def get_persona_for_model(user: User, model: str) -> Persona:
    """The persona behind model id `model`, if the user may use it (404 otherwise, with what
    the plans above offer when it is the plan that stands in the way)."""
    base, colon, slug = model.partition(":")
    if colon and slug == DEFAULT_PERSONA:
        slug = ""  # "grok-1:grok" is not an id: the default persona is plain "grok-1"
    elif not colon:
        slug = DEFAULT_PERSONA
    persona = Persona.objects.filter(is_active=True, slug=slug).first() if base == MODEL_BASE else None
    missing = f"The model `{model}` does not exist or you do not have access to it."
    if persona is None:
        raise ApiError(404, missing, code="model_not_found", param="model")
    try:
        actions.check_persona_allowed(user, persona)
    except ChatError as error:
        raise ApiError(404, f"{missing} {error.message}", code="model_not_found", param="model") from None
    return persona


# --- completion requests --------------------------------------------------------------------


@dataclass
class CompletionRequest:
    """A checked `POST /v1/chat/completions` body."""

    model: str
    turns: list[tuple[str, str]]  # (role, content) oldest first, ending with the user's
    system: str  # added after the persona's system prompt; "" for none
    stream: bool = False
    include_usage: bool = False
    max_new_tokens: int | None = None  # None: the plan's
    sampling: dict = field(default_factory=dict)  # temperature, top_p, seed, stop: as given


def _number(body: dict, name: str, low: float, high: float, *, integer: bool = False):
    value = body.get(name)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise bad_request(f"`{name}` must be {kind} from {low} to {high}.", name)
    return value


def _text(content: object, param: str) -> str:
    """A message's text: a string, or a list of text parts (joined by newlines)."""
    if isinstance(content, list):
        if not all(isinstance(part, dict) and part.get("type") == "text" for part in content):
            raise bad_request("Only text content parts are supported.", param)
        content = "\n".join(str(part.get("text", "")) for part in content)
    try:
        return actions.check_content(content)
    except ChatError as error:
        raise api_error(error, param=param) from None


def _stop(value: object) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or not 1 <= len(stops) <= MAX_STOP
        or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops)
    ):
        raise bad_request(
            f"`stop` is a string or a list of 1 to {MAX_STOP} strings of 1 to {MAX_STOP_CHARS} "
            "characters.",
            "stop",
        )
    return stops


def parse_completion_request(raw: bytes) -> CompletionRequest:
    """Check a request body (400 ApiError when it is not one we can answer)."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("`model` is required.", "model", code="missing_required_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` must be a non-empty list.", "messages")
    if len(messages) > MAX_MESSAGES:
        raise bad_request(f"At most {MAX_MESSAGES} messages.", "messages")
    turns, system = [], []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in TURN_ROLES and role not in SYSTEM_ROLES:
            raise bad_request(
                "Each message needs a `role`: system, developer, user or assistant.",
                f"messages[{i}].role",
            )
        text = _text(message.get("content"), f"messages[{i}].content")
        if role in SYSTEM_ROLES:
            system.append(text)
        else:
            turns.append((TURN_ROLES[role], text))
    if not turns or turns[-1][0] != Message.Role.USER:
        raise bad_request("The last message (system messages aside) must be the user's.", "messages")
    if body.get("n") not in (None, 1):
        raise bad_request("Only `n` = 1 is supported.", "n", code="unsupported_value")
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise bad_request("`stream` must be a boolean.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or options.get("include_usage") not in (None, True, False):
        raise bad_request("`stream_options` must be {\"include_usage\": boolean}.", "stream_options")
    max_tokens = body.get("max_completion_tokens")
    name = "max_completion_tokens" if max_tokens is not None else "max_tokens"
    sampling = {
        "temperature": _number(body, "temperature", 0, 2),
        "top_p": _number(body, "top_p", 0, 1),
        "seed": _number(body, "seed", *SEED_RANGE, integer=True),
        "stop": _stop(body.get("stop")),
    }
    if sampling["top_p"] == 0:  # the engine keeps at least the most likely token: p must be > 0
        raise bad_request("`top_p` must be greater than 0.", "top_p")
    return CompletionRequest(
        model=model,
        turns=turns,
        system="\n\n".join(system),
        stream=bool(stream),
        include_usage=bool(options.get("include_usage")),
        max_new_tokens=_number(body, name, 1, 2**31, integer=True),
        sampling={key: value for key, value in sampling.items() if value not in (None, [])},
    )


@transaction.atomic
def do_start_api_completion(user: User, request: CompletionRequest) -> Message:
    """Store the request's messages as a new API conversation and queue its reply, as
    `actions.do_send_message` does for the page: the same plan checks, queue and worker. The
    reply's `sampling` carries the request's system text, stops and sampling for the worker.
    Raises ApiError (model) or ChatError (quota, queue)."""
    persona = get_persona_for_model(user, request.model)
    limits = plans.check_can_generate(user, persona)
    first_user_text = next(content for role, content in request.turns if role == Message.Role.USER)
    conversation = Conversation.objects.create(
        owner=user, persona=persona, title=actions.title_from(first_user_text),
        source=Conversation.Source.API,
    )
    # Earlier replies come as text the client holds: stored finished, so the worker's history
    # has them, and charged to nobody (only the reply asked for now is).
    Message.objects.bulk_create(
        Message(conversation=conversation, role=role, content=content) for role, content in request.turns
    )
    extra = dict(request.sampling)
    if request.system:
        extra["system_suffix"] = request.system
    if request.max_new_tokens is not None:
        extra["max_new_tokens"] = min(request.max_new_tokens, limits.max_new_tokens)
    return actions._queue_reply(conversation, limits, extra)


# --- following a reply ----------------------------------------------------------------------


async def _read(message_id: int, have: int) -> list[dict]:
    """What the database holds past the first `have` characters of the reply: a delta when
    there is more text, and its `done` when it is over."""
    reply = await database_sync_to_async(Message.objects.filter(pk=message_id).first)()
    if reply is None:  # its conversation was deleted meanwhile
        raise ChatError("not_found", "The reply was deleted.")
    events = [{"type": "delta", "text": reply.content[have:]}] if len(reply.content) > have else []
    if not reply.is_active:
        events.append({**done_event(reply), "type": "done"})
    return events


async def follow_reply(user: User, message_id: int) -> AsyncIterator[dict]:
    """The events of reply `message_id` from its start: `{"type": "delta", "text"}` with new
    text, without gap or repeat, then the worker's `done` event (type "done", plus `error_code`
    when the worker said why it failed).

    As the websocket does (chat/consumers.py), it subscribes a channel to the reply's group
    before reading the database, trims live deltas by what was already given, and reads the
    database again when a delta skips ahead (an event was dropped) or nothing came for
    POLL_SECONDS. Left before the end (the client went away: CancelledError or GeneratorExit
    here), it stops the reply, so its batch slot frees and the user is charged no further."""
    layer = get_channel_layer()
    channel = await layer.new_channel("api")
    group = group_name(message_id)
    await layer.group_add(group, channel)
    have, error_code, finished = 0, "failed", False
    receiving: asyncio.Future | None = None
    try:
        pending = await _read(message_id, have)
        while True:
            for event in pending:
                if event["type"] == "done":
                    finished = True
                    yield {**event, "error_code": error_code}
                    return
                have += len(event["text"])
                yield event
            pending = []
            receiving = receiving or asyncio.ensure_future(layer.receive(channel))
            ready, _ = await asyncio.wait({receiving}, timeout=POLL_SECONDS)
            if not ready:
                pending = await _read(message_id, have)
                continue
            event, receiving = receiving.result(), None
            if event["type"] == "reply.delta":
                offset, text = event["offset"], event["text"]
                if offset > have:  # a dropped delta: the database has the text (saved first)
                    pending = await _read(message_id, have)
                elif offset + len(text) > have:
                    pending = [{"type": "delta", "text": text[have - offset :]}]
            elif event["type"] == "reply.error":
                error_code = event["code"]
            elif event["type"] == "reply.done":
                # `content` is the whole reply: whatever a dropped delta missed, then the end.
                rest = event["content"][have:]
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
                await asyncio.shield(database_sync_to_async(actions.do_stop)(user, message_id))


# --- answers --------------------------------------------------------------------------------


FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop"}


def finish_reason(done: dict) -> str:
    """OpenAI's finish_reason for a finished reply (a reply stopped by its user ends as "stop")."""
    return FINISH_REASONS.get(done["finish_reason"], "stop")


def usage(done: dict) -> dict:
    prompt, completion = done["usage"]["prompt_tokens"], done["usage"]["completion_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def failure(done: dict) -> ApiError | None:
    """The error a failed reply is answered with; None if it did not fail."""
    if done["status"] != Message.Status.FAILED:
        return None
    return api_error(ChatError(done["error_code"], done["error"] or "The reply failed."))


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
