"""Prefix reuse: what a request takes from the KV cache of earlier ones changes nothing it computes,
only exactly equal token ids are reused, and other users' text never. CPU, tiny model."""

import pytest
import torch

import inference.engine
from inference.engine import Engine, Request, SamplingParams
from inference.tokenizer import common_prefix

PERSONA = "You are Grok, a helpful assistant with a sense of humour. Answer briefly and truthfully."
GREEDY = SamplingParams(temperature=0, max_new_tokens=8)
SEEDED = SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_new_tokens=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_engine(checkpoint, prefix_cache: int, max_batch: int = 2) -> Engine:
    return Engine(checkpoint, quant="none", max_batch=max_batch, prefix_cache=prefix_cache, context_len=512)


@pytest.fixture(scope="module")
def plain(tiny_checkpoint) -> Engine:
    """No prefix reuse: every prompt prefilled whole."""
    return make_engine(tiny_checkpoint, prefix_cache=0)


@pytest.fixture
def reusing(tiny_checkpoint) -> Engine:
    """A fresh engine with room for 4 cached prefixes."""
    return make_engine(tiny_checkpoint, prefix_cache=4)


def run(engine: Engine, request: Request, logits: list | None = None, monkeypatch=None) -> tuple[str, int]:
    """Run one request alone -> (its text, its cached tokens); with `logits`, the logits it sampled from are appended."""
    if logits is not None:
        real = inference.engine.sample
        monkeypatch.setattr(inference.engine, "sample", lambda x, *a: (logits.append(x.clone()), real(x, *a))[1])
    engine.add(request)
    text, cached = "", None
    while engine.has_work():
        for delta in engine.step():
            text += delta.text
            cached = delta.cached_tokens
    if logits is not None:
        monkeypatch.undo()
    return text, cached


def conversation(engine: Engine, params: SamplingParams, user: str, messages: list[str], logits=None, monkeypatch=None):
    """The turns of one user's chat, each prompt the previous one plus its reply and the next
    message (as chat/prompts.py writes it) -> [(reply, cached tokens)] per turn."""
    tokenizer = engine.tokenizer
    public = len(tokenizer.encode(PERSONA))
    transcript, out = PERSONA, []
    for i, message in enumerate(messages):
        transcript += f"\n\nUser: {message}\n\nGrok:"
        request = Request(f"{user}{i}", tokenizer.encode(transcript), params, cache_salt=user, public_prefix=public)
        reply, cached = run(engine, request, logits, monkeypatch)
        transcript += reply
        out.append((reply, cached))
    return out


MESSAGES = ["Hello there, how are you today?", "Tell me a story about a dragon.", "And then what happened?"]


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_next_turns_reuse_the_conversation_with_the_same_logits_and_tokens(plain, reusing, params, monkeypatch):
    without, with_reuse = [], []
    expected = conversation(plain, params, "a", MESSAGES, without, monkeypatch)
    got = conversation(reusing, params, "a", MESSAGES, with_reuse, monkeypatch)

    assert [reply for reply, _ in got] == [reply for reply, _ in expected]
    assert [cached for _, cached in expected] == [0, 0, 0]
    assert got[0][1] == 0 and got[1][1] > 20 and got[2][1] > got[1][1]  # each turn reuses the one before
    assert len(with_reuse) == len(without)
    for a, b in zip(with_reuse, without):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_a_prompt_wholly_cached_still_feeds_its_last_token(plain, reusing):
    prompt = reusing.tokenizer.encode(PERSONA)
    first = run(reusing, Request("x", prompt, GREEDY))
    again = run(reusing, Request("y", prompt, GREEDY))
    assert first == (run(plain, Request("z", prompt, GREEDY))[0], 0)
    assert again == (first[0], len(prompt) - 1)


def test_other_users_reuse_only_the_persona(plain, reusing):
    """User b sends exactly what user a sent: a's conversation is cached, but b gets only the
    persona's tokens from it (and so cannot time whether a wrote it), and the same reply."""
    public = len(reusing.tokenizer.encode(PERSONA))
    conversation(reusing, GREEDY, "a", MESSAGES[:2])
    prompt = reusing.tokenizer.encode(f"{PERSONA}\n\nUser: {MESSAGES[0]}\n\nGrok:")
    expected, _ = run(plain, Request("plain", prompt, GREEDY))

    assert run(reusing, Request("b", prompt, GREEDY, cache_salt="b", public_prefix=public)) == (expected, public)
    # a itself, asking the same again, reuses its whole first prompt but the last token
    assert run(reusing, Request("a", prompt, GREEDY, cache_salt="a", public_prefix=public)) == (expected, len(prompt) - 1)
    # without a public prefix, nothing is shared across users
    assert run(reusing, Request("c", prompt, GREEDY, cache_salt="c")) == (expected, 0)


def test_a_different_message_reuses_exactly_the_equal_tokens(reusing):
    tokenizer = reusing.tokenizer
    first = tokenizer.encode(f"{PERSONA}\n\nUser: Hello\n\nGrok:")
    second = tokenizer.encode(f"{PERSONA}\n\nUser: Goodbye\n\nGrok:")
    run(reusing, Request("a", first, GREEDY))
    assert run(reusing, Request("b", second, GREEDY))[1] == common_prefix(first, second) < len(first) - 1


def test_a_running_request_shares_its_computed_prefix(plain, reusing):
    """b joins while a is decoding: b copies the persona's K/V from a's row, and both replies are
    as alone."""
    tokenizer = reusing.tokenizer
    a = tokenizer.encode(f"{PERSONA}\n\nUser: Hello\n\nGrok:")
    b = tokenizer.encode(f"{PERSONA}\n\nUser: Hi, who are you?\n\nGrok:")
    params = SamplingParams(temperature=0, max_new_tokens=6)
    texts, cached = {"a": "", "b": ""}, {}
    reusing.add(Request("a", a, params))
    for step in range(20):
        if step == 1:  # a's prompt is in
            reusing.add(Request("b", b, params))
        for delta in reusing.step():
            texts[delta.request_id] += delta.text
            cached[delta.request_id] = delta.cached_tokens
    assert not reusing.has_work()
    assert cached == {"a": 0, "b": common_prefix(a, b)} and cached["b"] > 10
    assert texts == {"a": run(plain, Request("pa", a, params))[0], "b": run(plain, Request("pb", b, params))[0]}


def test_eviction_under_a_tiny_budget_gives_the_same_text(plain, tiny_checkpoint):
    """One batch slot and one spare row for three users taking turns: rows are evicted (least
    recently used first), the replies stay those of a full prefill."""
    small = make_engine(tiny_checkpoint, prefix_cache=1, max_batch=1)
    users = "abc"
    chats = {u: f"{PERSONA}\n\nUser: I am {u}, hello." for u in users}
    for turn in range(2):
        for u in users:
            prompt = small.tokenizer.encode(chats[u] + "\n\nGrok:")
            expected, _ = run(plain, Request("plain", prompt, GREEDY))
            text, cached = run(small, Request(f"{u}{turn}", prompt, GREEDY))
            assert text == expected
            assert cached > 0 or (turn, u) == (0, "a")  # the persona, at least, is always somewhere
            chats[u] += f"\n\nGrok:{text}\n\nUser: go on"
    assert small.stats.evictions > 0
    assert len(small.rows) == 2  # never more rows than max_batch + prefix_cache


def test_stats_count_requests_hits_and_tokens(reusing):
    prompt = reusing.tokenizer.encode(PERSONA)
    run(reusing, Request("x", prompt, GREEDY))
    run(reusing, Request("y", prompt, GREEDY))
    stats = reusing.stats
    assert (stats.requests, stats.hits, stats.prompt_tokens, stats.cached_tokens) == (2, 1, 2 * len(prompt), len(prompt) - 1)
    assert stats.hit_rate == 0.5
    assert stats.token_hit_rate == (len(prompt) - 1) / (2 * len(prompt))


def test_prefix_cache_zero_reuses_nothing(plain, tiny_checkpoint):
    prompt = plain.tokenizer.encode(PERSONA)
    run(plain, Request("x", prompt, GREEDY))
    assert run(plain, Request("y", prompt, GREEDY))[1] == 0
    with pytest.raises(ValueError, match="prefix_cache must be >= 0, not -1"):
        make_engine(tiny_checkpoint, prefix_cache=-1)
