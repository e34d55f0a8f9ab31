"""build_prompt: the transcript text, stop sequences, and what is left out when it is too long."""

from pathlib import Path

import pytest

from chat.errors import ChatError
from chat.prompts import STOP, build_prompt, render

# ../shared/grok1/ from the project root
TOKENIZER_MODEL = Path(__file__).resolve().parents[2] / "shared" / "grok1" / "tokenizer.model"


class CharTokenizer:
    """One token per character: lengths are easy to reason about and decode is exact."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(map(chr, ids))


TOK = CharTokenizer()
SYSTEM = "A chat with Grok."
TURNS = [
    ("user", "one"),
    ("assistant", "1"),
    ("user", "two"),
    ("assistant", "2"),
    ("user", "three"),
]


def text_of(prompt) -> str:
    return TOK.decode(prompt.ids)


def test_renders_the_transcript_ending_with_the_assistant_name():
    prompt = build_prompt(SYSTEM, TURNS, TOK, context_len=1000, max_new_tokens=100)

    assert text_of(prompt) == (
        "A chat with Grok.\n\nUser: one\n\nGrok: 1\n\nUser: two\n\nGrok: 2\n\nUser: three\n\nGrok:"
    )
    assert prompt.dropped_turns == 0


def test_the_assistant_is_named_after_the_persona_and_contents_are_trimmed():
    turns = [("user", "  hi \n"), ("assistant", " hello\n\n"), ("user", "bye")]
    prompt = build_prompt(" Be plain.\n", turns, TOK, context_len=1000, max_new_tokens=1,
                          assistant_name="Regular")

    assert text_of(prompt) == "Be plain.\n\nUser: hi\n\nRegular: hello\n\nUser: bye\n\nRegular:"


def test_no_system_prompt_starts_with_the_first_turn():
    assert render("", [("user", "hi")], "Grok") == "User: hi\n\nGrok:"


def test_stops_end_the_reply_where_the_model_starts_the_users_next_turn():
    prompt = build_prompt(SYSTEM, TURNS, TOK, context_len=1000, max_new_tokens=100)

    assert prompt.stop == STOP == ("\n\nUser:", "\nUser:")
    model_goes_on = " Sure.\n\nUser: and then?"
    assert model_goes_on[: model_goes_on.index(prompt.stop[0])] == " Sure."


def test_drops_the_oldest_whole_exchanges_first_and_keeps_the_persona():
    full = len(render(SYSTEM, TURNS, "Grok"))
    without_first = len(render(SYSTEM, TURNS[2:], "Grok"))
    assert without_first < full

    # Room for all but the first exchange: both of its turns go, nothing else.
    prompt = build_prompt(SYSTEM, TURNS, TOK, context_len=without_first + 50, max_new_tokens=50)

    assert prompt.dropped_turns == 2
    assert text_of(prompt) == "A chat with Grok.\n\nUser: two\n\nGrok: 2\n\nUser: three\n\nGrok:"
    assert len(prompt.ids) <= without_first


def test_one_token_short_drops_another_exchange_but_never_the_last_user_turn():
    without_first = len(render(SYSTEM, TURNS[2:], "Grok"))

    prompt = build_prompt(SYSTEM, TURNS, TOK, context_len=without_first - 1, max_new_tokens=0)

    assert prompt.dropped_turns == 4
    assert text_of(prompt) == "A chat with Grok.\n\nUser: three\n\nGrok:"


def test_an_exchange_with_several_replies_is_dropped_whole():
    turns = [("user", "a"), ("assistant", "b"), ("assistant", "c"), ("user", "d")]
    budget = len(render(SYSTEM, turns[3:], "Grok"))

    prompt = build_prompt(SYSTEM, turns, TOK, context_len=budget, max_new_tokens=0)

    assert prompt.dropped_turns == 3


def test_too_long_even_alone_is_a_clear_error():
    budget = len(render(SYSTEM, TURNS[-1:], "Grok")) - 1

    with pytest.raises(ChatError) as raised:
        build_prompt(SYSTEM, TURNS, TOK, context_len=budget + 10, max_new_tokens=10)

    assert raised.value.code == "too_long"
    assert f"room for {budget}" in raised.value.message


def test_turns_must_end_with_the_user_turn():
    with pytest.raises(ValueError):
        build_prompt(SYSTEM, TURNS[:2], TOK, context_len=1000, max_new_tokens=10)


@pytest.fixture(scope="module")
def grok_tokenizer():
    if not TOKENIZER_MODEL.exists():
        pytest.skip(f"the Grok-1 tokenizer is not at {TOKENIZER_MODEL} (../shared/grok1/)")
    from inference.tokenizer import Tokenizer

    return Tokenizer(TOKENIZER_MODEL)


def test_with_the_real_tokenizer_the_ids_are_the_whole_transcript_and_fit(grok_tokenizer):
    turns = [("user", "Tell me a joke " * 40), ("assistant", "No. " * 40), ("user", "Please?")]
    budget = len(grok_tokenizer.encode(render(SYSTEM, turns[2:], "Grok"))) + 5

    prompt = build_prompt(SYSTEM, turns, grok_tokenizer, context_len=budget + 16, max_new_tokens=16)

    assert prompt.dropped_turns == 2
    assert len(prompt.ids) <= budget
    assert prompt.ids[0] != grok_tokenizer.bos_id  # no BOS, as the reference
    assert grok_tokenizer.decode(prompt.ids) == "A chat with Grok.\n\nUser: Please?\n\nGrok:"


def test_a_growing_chat_keeps_its_prompt_prefix_and_drops_turns_rarely():
    """Each turn's prompt is the previous one plus the reply and the new message, byte for byte,
    except when turns are dropped: then at least half the room is freed at once, so that happens
    once in several turns, not at every turn as soon as the context is full."""
    budget, turns, prompts = 300, [], []
    for n in range(40):
        turns.append(("user", f"message number {n}"))
        prompt = build_prompt(SYSTEM, turns, TOK, context_len=budget + 20, max_new_tokens=20)
        assert len(prompt.ids) <= budget
        prompts.append(prompt)
        turns.append(("assistant", f"reply {n}, a little longer than that"))

    breaks = [n for n in range(1, 40) if not text_of(prompts[n]).startswith(text_of(prompts[n - 1]))]
    first_drop = next(n for n, p in enumerate(prompts) if p.dropped_turns)
    assert breaks and breaks[0] == first_drop  # the prefix holds until turns must go
    assert len(breaks) <= (40 - first_drop) // 3  # each exchange is ~60 tokens: a drop frees ~2.5 of them
    for n in breaks:  # a drop frees at least half the room (the system prompt aside)
        assert len(prompts[n].ids) <= budget - (budget - len(SYSTEM)) // 2 + 70
        assert prompts[n].dropped_turns > prompts[n - 1].dropped_turns
