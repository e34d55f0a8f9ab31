"""`POST /v1/chat/completions` bodies: checked (`parse_completion_request`), then stored and
queued (`do_start_api_completion`).

A completion is a web chat reply through another door. The request's messages become a
Conversation with source "api" (the user sees it in their sidebar, staff in the admin) and its
reply a queued assistant Message that goes through the same plan checks
(`plans.check_can_generate`), queue, worker and usage ledger as a message sent from the page.
What the page cannot ask for (an extra system text, stop strings, sampling) is recorded in the
reply's `generation`, which the worker honours (chat/replies.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.db import transaction

from chat import actions, branches, plans
from chat.api.model_ids import get_persona_for_model
from chat.errors import ChatError, api_error, bad_request
from chat.inputs import parse_json
from chat.models import Conversation, Message, Persona, User
from chat.prompts import build_prompt, reply_budget
from inference.tokenizer import Tokenizer

MAX_MESSAGES = 500
MAX_STOP = 4  # as OpenAI's API
MAX_STOP_CHARS = 200
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts

# role in the request -> role in the stored conversation; "system" and "developer" add to the
# persona's system prompt instead.
TURN_ROLES = {"user": Message.Role.USER, "assistant": Message.Role.ASSISTANT}
SYSTEM_ROLES = {"system", "developer"}
# OpenAI's parameters that change what a reply is, which we cannot honour: refused by name unless
# they ask for nothing (null, false, 0, empty, "none", text), since a client relying on one (tools,
# JSON mode, logprobs) would take the reply for what it asked and misread it.
UNSUPPORTED = (
    "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
    "response_format", "logprobs", "top_logprobs", "logit_bias",
    "presence_penalty", "frequency_penalty", "audio", "modalities", "prediction",
)
NEUTRAL = (None, False, 0, "", [], {}, "none", {"type": "text"})

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
        body = parse_json(raw, max_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    except ChatError as error:
        raise api_error(error) from None
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
    for name in UNSUPPORTED:
        if body.get(name) not in NEUTRAL:
            raise bad_request(f"`{name}` is not supported.", name, code="unsupported_parameter")
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


@lru_cache
def web_tokenizer(checkpoint: str) -> Tokenizer | None:
    """The model's tokenizer (sentencepiece: light, no torch) from the checkpoint folder; None
    where this web process has no such folder (workers on other machines)."""
    path = Path(checkpoint) / "tokenizer.model"
    return Tokenizer(path) if path.is_file() else None


def check_prompt_fits(persona: Persona, request: CompletionRequest, generation: dict) -> None:
    """The worker's `too_long` (chat/replies.py), asked before anything is stored: the system
    prompts and the last message must leave room for the reply in the plan's context (older
    turns the worker leaves out as it must). Counted with the model's own tokenizer; without it
    here, or with a model whose context is smaller than the plan's and GROK_CONTEXT_LEN unset,
    the worker is the one to refuse."""
    tokenizer = web_tokenizer(settings.GROK_CHECKPOINT)
    if tokenizer is None:
        return
    plan_context = generation["context_len"]
    context_len, max_new_tokens = reply_budget(
        min(plan_context, settings.GROK_CONTEXT_LEN or plan_context),
        generation,
        max_new_tokens=settings.GROK_MAX_NEW_TOKENS,
    )
    version = persona.current_version
    system = "\n\n".join(
        text.strip() for text in (version.system_prompt if version else "", request.system) if text.strip()
    )
    build_prompt(
        system, request.turns[-1:], tokenizer,
        context_len=context_len, max_new_tokens=max_new_tokens, assistant_name=persona.name,
    )


@transaction.atomic
def do_start_api_completion(user: User, request: CompletionRequest) -> Message:
    """Store the request's messages as a new API conversation and queue its reply, as
    `actions.do_send_message` does for the page: the same plan checks, queue and worker. The
    reply's `generation` carries the request's system text, stops and sampling for the worker.
    Raises ApiError (model) or ChatError (quota, too_long: before anything is stored; queue)."""
    persona = get_persona_for_model(user, request.model)
    limits = plans.check_can_generate(user, persona)
    extra = dict(request.sampling)
    if request.system:
        extra["system_suffix"] = request.system
    if request.max_new_tokens is not None:
        extra["max_new_tokens"] = min(request.max_new_tokens, limits.max_new_tokens)
    check_prompt_fits(persona, request, limits.generation | extra)
    first_user_text = next(content for role, content in request.turns if role == Message.Role.USER)
    conversation = Conversation.objects.create(
        owner=user, persona=persona, title=actions.title_from(first_user_text),
        source=Conversation.Source.API,
    )
    # Earlier replies come as text the client holds: stored finished, so the worker's history
    # has them, and charged to nobody (only the reply asked for now is).
    history = branches.add_tree(
        conversation,
        [Message(role=role, content=content) for role, content in request.turns],
        [i - 1 if i else None for i in range(len(request.turns))],  # one path, each after the one before
    )
    return actions.do_queue_reply(conversation, limits, extra, parent=history[-1])

