"""RemoteEngine against a real llama-server serving the tiny model (tests/llama_cpp.py)."""

import socket
import time

import pytest

from inference.engine import Delta, Request, SamplingParams
from inference.remote import RemoteEngine


@pytest.fixture
def remote(llama_server, tiny_checkpoint):
    """A RemoteEngine over the session's llama-server, started again if a test killed it."""
    if llama_server.process.poll() is not None:
        llama_server.start()
    return RemoteEngine(llama_server.url, tiny_checkpoint, max_in_flight=2, timeout=30)


def run(engine: RemoteEngine, *requests: Request, until=None) -> dict[str, list[Delta]]:
    """Step until every request has ended (or `until(deltas)` holds); the deltas of each."""
    for request in requests:
        engine.add(request)
    deltas: dict[str, list[Delta]] = {r.id: [] for r in requests}
    deadline = time.monotonic() + 60
    while any(not d or d[-1].finish_reason is None for d in deltas.values()):
        assert time.monotonic() < deadline, deltas
        for delta in engine.step():
            deltas[delta.request_id].append(delta)
        if until is not None and until(deltas):
            break
    return deltas


def text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def prompt(engine: RemoteEngine) -> list[int]:
    return engine.tokenizer.encode("The answer to life the universe and everything is")


def test_a_reply_streams_in_pieces_and_counts_the_server_usage(remote):
    ids = prompt(remote)
    (deltas,) = run(remote, Request("a", ids, SamplingParams(temperature=0, max_new_tokens=12))).values()
    assert len([d for d in deltas if d.text]) > 1  # streamed, not in one piece
    end = deltas[-1]
    assert end.finish_reason == "length" and end.error == ""
    assert (end.prompt_tokens, end.completion_tokens) == (len(ids), 12)
    assert text(deltas).strip()


def test_the_seed_and_sampling_are_the_servers_to_apply(remote):
    ids = prompt(remote)

    def sample(request_id: str, seed: int) -> str:
        params = SamplingParams(temperature=1.0, top_p=1.0, seed=seed, max_new_tokens=16)
        return text(run(remote, Request(request_id, ids, params))[request_id])

    assert sample("s1", 7) == sample("s2", 7)
    assert sample("s3", 7) != sample("s4", 8)


def test_a_stop_string_ends_the_reply_before_it(remote):
    ids = prompt(remote)
    full = text(run(remote, Request("full", ids, SamplingParams(temperature=0, max_new_tokens=24)))["full"])
    stop = full[len(full) // 2 :][:4]
    (deltas,) = run(remote, Request("cut", ids, SamplingParams(temperature=0, max_new_tokens=24, stop=(stop,)))).values()
    assert deltas[-1].finish_reason == "stop"
    assert text(deltas) == full[: full.index(stop)]


def test_requests_past_the_bound_wait_their_turn(remote):
    params = SamplingParams(temperature=0, max_new_tokens=6)
    for i in range(3):
        remote.add(Request(f"q{i}", prompt(remote), params))
    order = [(d.request_id, d.finish_reason) for d in remote.step()]
    finished = {request_id for request_id, reason in order if reason}  # the tiny model may end one in a step
    assert sorted(set(remote.running) | finished) == ["q0", "q1"]  # max_in_flight=2
    assert remote.waiting[0].id == "q2" and "q2" not in {request_id for request_id, _ in order}
    while remote.has_work():
        order += [(d.request_id, d.finish_reason) for d in remote.step()]
    first_end = min(order.index(("q0", "length")), order.index(("q1", "length")))
    assert [i for i, (request_id, _) in enumerate(order) if request_id == "q2"][0] > first_end
    assert ("q2", "length") in order and remote.queued() == []


def test_cancel_closes_the_stream_and_llama_server_aborts(remote, llama_server):
    params = SamplingParams(temperature=0, max_new_tokens=3000)
    log_before = llama_server.log.read_text(errors="replace").count("cancel task")
    deltas = run(remote, Request("long", prompt(remote), params), until=lambda d: len(d["long"]) >= 2)
    remote.cancel("long")
    (end,) = remote.step()
    assert end.finish_reason == "cancelled" and end.completion_tokens < 3000
    deadline = time.monotonic() + 10
    while llama_server.log.read_text(errors="replace").count("cancel task") == log_before:
        assert time.monotonic() < deadline, "llama-server did not cancel the generation"
        remote.step()  # nothing more comes for the cancelled request
        time.sleep(0.1)
    assert not remote.has_work() and len(deltas["long"]) >= 2


def test_a_request_waits_for_a_restarting_server_then_goes_through(remote, llama_server):
    llama_server.kill()
    remote.add(Request("held", prompt(remote), SamplingParams(temperature=0, max_new_tokens=5)))
    remote.step()
    time.sleep(1.5)
    assert remote.step() == [] and remote.queued() == ["held"]  # waiting for the server, in line
    llama_server.start()
    deltas = []
    while remote.has_work():
        deltas += remote.step()
    assert deltas[-1].finish_reason == "length" and text(deltas) and remote.queued() == []


def test_the_server_killed_mid_reply_fails_it_with_its_text_kept(remote, llama_server):
    deltas = run(remote, Request("cut", prompt(remote), SamplingParams(temperature=0, max_new_tokens=3000)),
                 until=lambda d: len(d["cut"]) >= 3)
    llama_server.kill()
    while remote.has_work():
        deltas["cut"] += remote.step()
    end = deltas["cut"][-1]
    assert end.finish_reason == "error" and "went away in the middle of the reply" in end.error
    assert text(deltas["cut"])  # what came before the cut is delivered


def test_a_server_that_stays_away_fails_the_request_with_a_clear_error(tiny_checkpoint):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    engine = RemoteEngine(f"http://127.0.0.1:{port}", tiny_checkpoint, timeout=1.5)
    (deltas,) = run(engine, Request("away", [5, 6, 7], SamplingParams())).values()
    assert deltas[-1].finish_reason == "error"
    assert deltas[-1].error.startswith(f"The model server at http://127.0.0.1:{port} could not be reached for 2 s")


def test_a_stuck_server_times_out_with_a_clear_error(tiny_checkpoint):
    with socket.socket() as stuck:  # accepts connections and never answers
        stuck.bind(("127.0.0.1", 0))
        stuck.listen()
        engine = RemoteEngine(f"http://127.0.0.1:{stuck.getsockname()[1]}", tiny_checkpoint, timeout=1)
        (deltas,) = run(engine, Request("stuck", [5, 6, 7], SamplingParams())).values()
    assert deltas[-1].finish_reason == "error" and "sent nothing for 1 s" in deltas[-1].error


def test_bad_settings_and_prompts_are_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="must start with http"):
        RemoteEngine("localhost:8000", tiny_checkpoint)
    with pytest.raises(FileNotFoundError, match="tokenizer.model is missing"):
        RemoteEngine("http://127.0.0.1:1", tmp_path)
    engine = RemoteEngine("http://127.0.0.1:1", tiny_checkpoint, context_len=16)
    with pytest.raises(ValueError, match="the prompt has 16 tokens but the context holds 16"):
        engine.add(Request("x", list(range(4, 20)), SamplingParams()))
    with pytest.raises(ValueError, match="the prompt is empty"):
        engine.add(Request("x", [], SamplingParams()))


def test_the_cache_salt_goes_to_the_server_which_may_ignore_it(remote, llama_server, tiny_checkpoint):
    params = SamplingParams(temperature=0, max_new_tokens=8)
    salted = Request("salted", prompt(remote), params, cache_salt="ann")
    assert remote._body(salted)["cache_salt"] == "ann"
    assert "cache_salt" not in remote._body(Request("plain", prompt(remote), params))  # no salt: none sent
    unsalted = RemoteEngine(llama_server.url, tiny_checkpoint, cache_salt=False)
    assert "cache_salt" not in unsalted._body(salted)
    # llama-server takes a body with the field it does not know, and writes the same greedy text.
    with_salt = run(remote, salted)["salted"]
    without = run(unsalted, Request("unsalted", prompt(remote), params, cache_salt="ann"))["unsalted"]
    assert with_salt[-1].finish_reason == "length" and text(with_salt) == text(without) and text(with_salt)
