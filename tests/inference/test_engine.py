"""The engine: KV cache and ragged batches, sampling, stopping, continuous batching. CPU, tiny model."""

import pytest
import torch

from inference.checkpoint import load_model
from inference.engine import Engine, Request, SamplingParams, _split_stop, filter_logits, sample

PROMPT = "Once upon a time, in a land far away, there lived a"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    """The tiny model as the engine loads it on CPU (dequantised float32), for logits-level checks."""
    return load_model(tiny_checkpoint, quant="none", dtype=torch.float32)


@pytest.fixture(scope="module")
def three_slot_engine(tiny_checkpoint) -> Engine:
    """An engine of this module's own, with three slots and the model's whole context (unlike
    tests/conftest.py's two-slot `engine` with 512 tokens that the chat tests share)."""
    return Engine(tiny_checkpoint, quant="none", max_batch=3)


@pytest.fixture
def idle_engine(three_slot_engine):
    """The module's engine; a test must leave it idle, and one that fails is cleaned up after."""
    engine = three_slot_engine
    yield engine
    left_work = engine.has_work()
    for request_id in engine.queued() + [s.request.id for s in engine.slots if s is not None]:
        engine.cancel(request_id)
    engine.step()
    assert not left_work


@pytest.fixture(scope="module")
def prompt(three_slot_engine) -> list[int]:
    return three_slot_engine.tokenizer.encode(PROMPT)


def forward(model, tokens: torch.Tensor, input_pos: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(tokens, input_pos, slots)


def greedy_ids(model, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens, each from a full forward of the whole sequence (no cache reuse)."""
    ids = list(prompt)
    for _ in range(n):
        model.setup_cache(1, len(ids))
        logits = forward(model, torch.tensor([ids]), torch.arange(len(ids))[None], torch.tensor([0]))
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def run(engine: Engine, requests: list[Request]) -> dict[str, list]:
    """Add the requests, step until idle -> {id: its Deltas} for every request that had some."""
    for request in requests:
        engine.add(request)
    out: dict[str, list] = {}
    while engine.has_work():
        for delta in engine.step():
            out.setdefault(delta.request_id, []).append(delta)
    return out


def text_of(deltas) -> str:
    return "".join(d.text for d in deltas)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --- logits: cache and ragged batches ---


def test_cached_decode_matches_a_full_forward(model):
    tokens = torch.randint(4, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(20)[None]
    model.setup_cache(1, 20)
    full = forward(model, tokens, positions, torch.tensor([0]))  # [1, 20, V]

    model.setup_cache(2, 32)
    slot = torch.tensor([1])
    steps = [forward(model, tokens[:, :12], positions[:, :12], slot)]  # prefill, then one token at a time
    steps += [forward(model, tokens[:, i : i + 1], positions[:, i : i + 1], slot) for i in range(12, 20)]
    cached = torch.cat(steps, dim=1)
    assert rel_error(cached, full) < 1e-5
    assert torch.equal(cached.argmax(-1), full.argmax(-1))


def test_ragged_batch_matches_each_sequence_alone(model):
    gen = torch.Generator().manual_seed(1)
    lengths, t = [5, 11, 8], 11
    rows = [torch.randint(4, model.config.vocab_size, (n,), generator=gen) for n in lengths]
    alone = []
    for row in rows:
        model.setup_cache(1, len(row))
        alone.append(forward(model, row[None], torch.arange(len(row))[None], torch.tensor([0]))[0])

    # Right-padded, padding continuing each row's positions, rows in shuffled cache slots.
    tokens = torch.zeros(3, t, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    model.setup_cache(3, 16)
    batched = forward(model, tokens, torch.arange(t).expand(3, t), torch.tensor([2, 0, 1]))
    for i, n in enumerate(lengths):
        assert rel_error(batched[i, :n], alone[i]) < 1e-5


# --- sampling ---


def test_filter_logits_keeps_top_k_then_the_nucleus():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.2, 0.1])  # ranked: 1, 3, 0, 4, 2
    logits = probs.log().expand(5, 5)
    top_k = torch.tensor([0, 0, 3, 3, 1])
    top_p = torch.tensor([0.6, 0.45, 1.0, 0.8, 1.0])
    kept = filter_logits(logits, top_k, top_p).isfinite()
    assert kept.tolist() == [
        [False, True, False, True, False],  # p 0.6: 0.5 has not reached it, 0.5 + 0.2 has
        [False, True, False, False, False],  # p 0.45: the top token alone reaches it
        [True, True, False, True, False],  # top 3
        [False, True, False, True, False],  # top 3 renormalised (0.59, 0.24, 0.18): two reach 0.8
        [False, True, False, False, False],  # top 1
    ]


def test_filter_logits_keeps_ties_with_the_last_kept():
    kept = filter_logits(torch.tensor([[1.0, 3.0, 3.0, 0.0]]), torch.tensor([1]), torch.tensor([1.0])).isfinite()
    assert kept.tolist() == [[False, True, True, False]]


def test_sample_is_greedy_at_temperature_zero_and_stays_in_the_keep_set():
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    top3 = set(logits[1].topk(3).indices.tolist())
    for _ in range(100):
        tokens = sample(logits, torch.tensor([0.0, 5.0]), torch.tensor([0, 3]), torch.tensor([1.0, 1.0]), gens)
        assert tokens[0] == logits[0].argmax()
        assert int(tokens[1]) in top3
    # hot enough that all three come up
    drawn = {int(sample(logits[1:], torch.tensor([5.0]), torch.tensor([3]), torch.tensor([1.0]), gens[1:])) for _ in range(100)}
    assert drawn == top3


def test_sample_draws_each_row_from_its_own_generator():
    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    settings = torch.tensor([1.0] * 3), torch.tensor([0] * 3), torch.tensor([1.0] * 3)

    def draws(rows: list[int], seeds: list[int]) -> list[list[int]]:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        args = [x[rows] for x in settings]
        return [sample(logits[rows], *args, gens).tolist() for _ in range(20)]

    batched = draws([0, 1, 2], [7, 8, 9])
    assert [row[1] for row in batched] == [row[0] for row in draws([1], [8])]


# --- the engine ---


def test_engine_reads_the_checkpoint(idle_engine, tiny_checkpoint):
    assert idle_engine.model_name == "grok-1-tiny-demo"
    assert idle_engine.is_demo
    assert idle_engine.context_len == idle_engine.config.context_len
    assert idle_engine.tokenizer.vocab_size == idle_engine.config.vocab_size


def test_greedy_generation_follows_the_full_forward_and_is_deterministic(idle_engine, model, prompt):
    expected = idle_engine.tokenizer.decode(greedy_ids(model, prompt, 12))
    for seed in (1, 2):
        deltas = list(idle_engine.generate(prompt, SamplingParams(temperature=0, seed=seed, max_new_tokens=12)))
        assert text_of(deltas) == expected
        assert (deltas[-1].finish_reason, deltas[-1].completion_tokens, deltas[-1].prompt_tokens) == ("length", 12, len(prompt))


def test_a_request_samples_the_same_alone_and_in_a_changing_batch(idle_engine, prompt, monkeypatch):
    monkeypatch.setattr(idle_engine, "prefill_tokens", 16)  # chunked prefill, with chunks that depend on the batch
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_new_tokens=16)
    long_prompt = prompt * 3
    alone = text_of(idle_engine.generate(long_prompt, params))

    idle_engine.add(Request("short", prompt[:3], SamplingParams(seed=1, max_new_tokens=3)))  # leaves early
    idle_engine.add(Request("other", prompt[:7], SamplingParams(seed=2, max_new_tokens=12)))
    idle_engine.step()
    idle_engine.step()
    # "ours" joins a running batch; "late" waits for the slot "short" frees and joins mid-way.
    out = run(idle_engine, [Request("ours", long_prompt, params), Request("late", prompt[:5], SamplingParams(seed=3, max_new_tokens=8))])
    assert out["late"] and out["ours"][-1].finish_reason is not None
    assert text_of(out["ours"]) == alone


def test_stop_at_eos(idle_engine, model, prompt, monkeypatch):
    ids = greedy_ids(model, prompt, 6)
    monkeypatch.setattr(idle_engine.config, "eos_token", ids[3])  # make the 4th greedy token the EOS
    deltas = list(idle_engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=20)))
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].completion_tokens == ids.index(ids[3]) + 1
    assert text_of(deltas) == idle_engine.tokenizer.decode(ids[: ids.index(ids[3])])


def test_stop_string_is_never_emitted_and_text_before_it_is(idle_engine, model, prompt):
    full = idle_engine.tokenizer.decode(greedy_ids(model, prompt, 30))
    stop = full[10:14]
    assert full.find(stop) > 0
    deltas = list(idle_engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=30, stop=("never seen", stop))))
    assert deltas[-1].finish_reason == "stop"
    assert text_of(deltas) == full[: full.find(stop)]
    assert all(stop not in text_of(deltas[: i + 1]) for i in range(len(deltas)))


def test_split_stop_holds_back_a_possible_start():
    assert _split_stop("hello wor", ("world", "x")) == ("hello ", "wor", False)
    assert _split_stop("say STOP now", ("STOP",)) == ("say ", "", True)
    assert _split_stop("abc", ("zz",)) == ("abc", "", False)
    assert _split_stop("a b", ()) == ("a b", "", False)


def test_max_new_tokens_and_context_full_end_with_length(idle_engine, model, prompt, tiny_checkpoint):
    assert idle_engine.config.eos_token not in greedy_ids(model, prompt, 5)
    deltas = list(idle_engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=5)))
    assert (deltas[-1].finish_reason, deltas[-1].completion_tokens) == ("length", 5)

    small = Engine(tiny_checkpoint, quant="none", max_batch=1, context_len=len(prompt) + 4)
    deltas = list(small.generate(prompt, SamplingParams(temperature=0, max_new_tokens=100)))
    assert (deltas[-1].finish_reason, deltas[-1].completion_tokens) == ("length", 4)
    with pytest.raises(ValueError, match="context holds"):
        small.add(Request("long", prompt + prompt[:4], SamplingParams()))


def test_prompt_that_does_not_fit_is_refused(idle_engine):
    n = idle_engine.context_len
    with pytest.raises(ValueError, match=f"{n} tokens but the context holds {n}"):
        idle_engine.add(Request("too-long", [5] * n, SamplingParams()))
    with pytest.raises(ValueError, match="empty"):
        idle_engine.add(Request("empty", [], SamplingParams()))
    assert idle_engine.queued() == []


def test_queued_requests_are_admitted_first_come_first_served(idle_engine, prompt):
    lengths = {"a": 2, "b": 9, "c": 9, "d": 2, "e": 9}  # 3 slots: d and e wait
    for name, n in lengths.items():
        idle_engine.add(Request(name, prompt[:4], SamplingParams(temperature=0, max_new_tokens=n)))
    assert idle_engine.queued() == list("abcde")
    idle_engine.step()
    assert idle_engine.queued() == ["d", "e"]
    finished = []
    while idle_engine.queued() == ["d", "e"]:
        finished += [d.request_id for d in idle_engine.step() if d.finish_reason]
    assert finished == ["a"] and idle_engine.queued() == ["e"]  # a's slot went to d, the next in line
    while idle_engine.has_work():
        idle_engine.step()


def test_cancel_frees_the_slot_at_the_next_step(idle_engine, prompt):
    for name in "abcd":
        idle_engine.add(Request(name, prompt, SamplingParams(max_new_tokens=50)))
    idle_engine.step()
    assert idle_engine.queued() == ["d"]
    idle_engine.cancel("b")
    deltas = idle_engine.step()
    cancelled = [d for d in deltas if d.finish_reason == "cancelled"]
    assert [(d.request_id, d.completion_tokens) for d in cancelled] == [("b", 1)]
    assert idle_engine.queued() == []  # d took b's slot in the same step
    assert not any(d.request_id == "b" for d in idle_engine.step())

    for name in "acd":
        idle_engine.cancel(name)
    idle_engine.add(Request("e", prompt, SamplingParams()))
    idle_engine.add(Request("f", prompt, SamplingParams()))
    idle_engine.cancel("f")  # still queued
    out = {d.request_id: d for d in idle_engine.step()}
    assert {k: d.finish_reason for k, d in out.items() if k != "e"} == dict.fromkeys("acdf", "cancelled")
    assert out["f"].completion_tokens == 0
    idle_engine.cancel("e")
    idle_engine.step()


def test_sampling_params_are_checked():
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}, {"max_new_tokens": 0}, {"stop": ("",)}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
