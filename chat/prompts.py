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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from chat.errors import ChatError

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
    """
    if not turns or turns[-1][0] != "user":
        raise ValueError("turns must end with the user turn to answer")
    budget = context_len - max_new_tokens

    def encode_from(start: int) -> list[int]:
        return tokenizer.encode(render(system_prompt, turns[start:], assistant_name))

    ids = encode_from(0)
    if len(ids) <= budget:  # the usual case: the whole conversation fits
        return Prompt(ids=ids, stop=STOP, dropped_turns=0)

    # A prompt may start only where an exchange starts. Leaving out more turns never makes the
    # prompt longer, so a binary search finds the earliest start that fits in a few encodings.
    starts = [i for i, (role, _) in enumerate(turns) if role == "user"]
    low, high = 0, len(starts) - 1
    ids = encode_from(starts[high])
    if len(ids) > budget:
        raise ChatError(
            "too_long",
            f"The message is too long for the model: the prompt needs {len(ids)} tokens and the "
            f"model has room for {budget} ({context_len} minus {max_new_tokens} for the reply).",
        )
    while low < high:
        middle = (low + high) // 2
        candidate = encode_from(starts[middle])
        if len(candidate) <= budget:
            high, ids = middle, candidate
        else:
            low = middle + 1
    return Prompt(ids=ids, stop=STOP, dropped_turns=starts[high])
