"""Turning a conversation into a prompt for Grok-1.

Grok-1 is a base model, not a chat model: it continues text. A conversation is therefore written
out as a transcript that the model is asked to continue, and its reply ends where it would start
writing the user's next turn:

    <persona's system prompt>

    User: <first message>

    Grok: <first reply>

    User: <last message>

    Grok:

The prompt ends with the assistant's name and a colon, with no trailing space: the model's first
token then carries its own leading space, as everywhere in the text it was trained on. The caller
strips what whitespace is left at either end of the finished reply.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from chat.errors import ChatError
from inference.tokenizer import common_prefix

USER_NAME = "User"

# The model ends its turn by starting the user's next one. "\n\nUser:" comes first so that the cut
# also drops the blank line before it; "\nUser:" catches a turn started after a single newline.
STOP = (f"\n\n{USER_NAME}:", f"\n{USER_NAME}:")


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass
class Prompt:
    ids: list[int]
    stop: tuple[str, ...]
    dropped_turns: int  # oldest turns left out so that the prompt and the reply fit the context


def render(system_prompt: str, turns: Sequence[tuple[str, str]], assistant_name: str) -> str:
    """The transcript text of `turns` ((role, content), role "user" or "assistant"), ending with
    the assistant's name so that the model writes the reply next."""
    names = {"user": USER_NAME, "assistant": assistant_name}
    parts = [system_prompt.strip()] if system_prompt.strip() else []
    parts += [f"{names[role]}: {content.strip()}" for role, content in turns]
    parts.append(f"{assistant_name}:")
    return "\n\n".join(parts)


def reply_budget(context_len: int, generation: dict, *, max_new_tokens: int) -> tuple[int, int]:
    """(context_len, max_new_tokens) of one reply: the model's `context_len` within the plan's
    (recorded in its `generation`); its new tokens within the plan's, the server's
    (`max_new_tokens`) and half the context, so that a reply never starves the history of room."""
    context_len = min(context_len, generation.get("context_len") or context_len)
    new = min(generation.get("max_new_tokens") or max_new_tokens, max_new_tokens, context_len // 2)
    return context_len, new


def public_prefix(ids: list[int], persona_prompt: str, tokenizer: Tokenizer) -> int:
    """How many leading `ids` spell the persona's system prompt, the same for all its users: what
    the engine may share between users (inference/engine.py `Request.public_prefix`). Those equal
    to the persona's own tokens: where a token merges across the seam, the few before it only."""
    return common_prefix(tokenizer.encode(persona_prompt.strip()) if persona_prompt.strip() else [], ids)


def build_prompt(
    system_prompt: str,
    turns: list[tuple[str, str]],
    tokenizer: Tokenizer,
    *,
    context_len: int,
    max_new_tokens: int,
    assistant_name: str = "Grok",
) -> Prompt:
    """The prompt for the reply to the last turn, in at most `context_len - max_new_tokens` tokens.

    `turns` are (role, content) pairs, oldest first, ending with the user turn to answer.
    `assistant_name` is the persona's name, which labels the assistant's turns.
    When the whole history does not fit, the oldest exchanges (a user turn and the replies after
    it) are left out; the system prompt and the last user turn always stay. Raises
    `ChatError("too_long")` when even those two do not fit.

    The engine reuses the keys and values of the longest prompt prefix it has seen (its prefix
    cache), so a turn's prompt is the previous one, byte for byte, plus the reply and the new
    message. Leaving turns out breaks that: the prompt then starts elsewhere and all of it but the
    system prompt is prefilled again. So the prompt may start only at cuts that split the history,
    from its oldest turn on, into blocks of at least half the room: the cuts depend only on the
    turns before them and stay put as the chat grows, and once the start moves on to a cut the
    prompt is stable again until the history has grown by another half of the room.
    """
    if not turns or turns[-1][0] != "user":
        raise ValueError("turns must end with the user turn to answer")
    budget = context_len - max_new_tokens

    def encode_from(start: int) -> list[int]:
        return tokenizer.encode(render(system_prompt, turns[start:], assistant_name))

    ids = encode_from(0)
    if len(ids) <= budget:  # the usual case: the whole conversation fits
        return Prompt(ids=ids, stop=STOP, dropped_turns=0)

    starts = [i for i, (role, _) in enumerate(turns) if role == "user"]  # where an exchange starts
    block = max(1, (budget - len(tokenizer.encode(system_prompt))) // 2)
    cuts, size = [0], 0
    for i, (role, content) in enumerate(turns):
        if role == "user" and size >= block:
            cuts.append(i)
            size = 0
        size += len(tokenizer.encode(content))  # roughly: the labels are left out, the fit is checked exactly
    # When a single block is too big for the room (huge messages), any exchange after the last cut will do.
    found = _earliest_fitting(cuts, encode_from, budget) or _earliest_fitting(
        [i for i in starts if i > cuts[-1]], encode_from, budget
    )
    if found is None:
        needed = len(encode_from(starts[-1]))
        raise ChatError(
            "too_long",
            f"The message is too long for the model: the prompt needs {needed} tokens and the "
            f"model has room for {budget} ({context_len} minus {max_new_tokens} for the reply).",
        )
    start, ids = found
    return Prompt(ids=ids, stop=STOP, dropped_turns=start)


def _earliest_fitting(
    starts: list[int], encode_from: Callable[[int], list[int]], budget: int
) -> tuple[int, list[int]] | None:
    """The earliest of `starts` whose prompt fits in `budget` tokens, with that prompt; None if
    the last does not fit. Leaving out more turns never makes the prompt longer, so a binary
    search finds it in a few encodings."""
    if not starts:
        return None
    ids = encode_from(starts[-1])
    if len(ids) > budget:
        return None
    low, high = 0, len(starts) - 1
    while low < high:
        middle = (low + high) // 2
        candidate = encode_from(starts[middle])
        if len(candidate) <= budget:
            high, ids = middle, candidate
        else:
            low = middle + 1
    return starts[high], ids
