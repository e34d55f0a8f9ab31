"""inference/loop.py with the real tiny engine: batching, flushing, cancels, failures, drain."""

import threading
import time

import pytest
import torch

from inference.engine import Request, SamplingParams
from inference.loop import STOPPED_ERROR, ServingLoop

FLUSH = 0.04


class Source:
    """Hands out the requests put in it; cancels on demand."""

    def __init__(self):
        self.pending: list[Request] = []
        self.cancels: set[str] = set()
        self.waiting_elsewhere = 0  # what waits in other workers for a free slot, as `waiting` says

    def take(self, max_jobs, timeout):
        taken, self.pending = self.pending[:max_jobs], self.pending[max_jobs:]
        return taken

    def cancelled(self, request_ids):
        return self.cancels & set(request_ids)

    def waiting(self, limit, waiting_here):
        return self.waiting_elsewhere, [r.id for r in self.pending[:limit]]


class Sink:
    """Records every delivery with its time; can be told to fail the next calls."""

    def __init__(self):
        self.deliveries: list[tuple[float, list]] = []
        self.positions: list[dict] = []
        self.fail_next = 0

    def deliver(self, updates):
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("database away")
        self.deliveries.append((time.monotonic(), updates))

    def queued(self, positions):
        self.positions.append(positions)

    def updates(self, request_id):
        return [u for _, batch in self.deliveries for u in batch if u.request_id == request_id]

    def final(self, request_id):
        finished = [u for u in self.updates(request_id) if u.finish_reason is not None]
        assert len(finished) == 1, finished
        return finished[0]


def request(engine, request_id, max_new_tokens=24, seed=None, text="User: Hello\n\nGrok:"):
    return Request(
        request_id,
        engine.tokenizer.encode(text),
        SamplingParams(seed=seed if seed is not None else int(request_id), max_new_tokens=max_new_tokens),
    )


def run_until(worker, done=None, timeout=20.0):
    """Tick until `done()`; by default until every job is taken and delivered to its end."""
    done = done or (lambda: not worker.source.pending and not worker.replies)
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the worker did not get there in time"
        worker.tick()


def alone(engine, req):
    """What the engine writes for `req` on its own."""
    return "".join(d.text for d in engine.generate(req.prompt_ids, req.params))


def test_batched_replies_match_their_solo_runs_and_arrive_in_batches(engine):
    source, sink, slots = Source(), Sink(), len(engine.slots)
    requests = [request(engine, str(i)) for i in range(slots + 1)]  # one more than the slots
    source.pending = list(requests)
    worker = ServingLoop(engine, source, sink, max_jobs=2 * slots, flush_interval=FLUSH)
    run_until(worker)

    for req in requests:
        final = sink.final(req.id)
        assert final.finish_reason in {"length", "stop"}
        assert final.text == alone(engine, req)  # batching changed nothing, dropped nothing
        assert final.completion_tokens <= 24 and final.prompt_tokens == len(req.prompt_ids)
        assert final.duration >= final.time_to_first_token > 0
    # The one beyond the batch waited first in line, and was told so.
    assert {str(slots): 1} in sink.positions
    # Deliveries are spaced by the flush interval, but for those carrying a reply's first text
    # (sent at once) and the last (the engine went idle).
    seen, carries_first = set(), []
    for _, updates in sink.deliveries:
        firsts = {u.request_id for u in updates if u.text} - seen
        seen |= firsts
        carries_first.append(bool(firsts))
    times = [t for t, _ in sink.deliveries]
    spaced = [b - a for a, b, first in zip(times, times[1:-1], carries_first[1:-1]) if not first]
    assert spaced and all(gap >= FLUSH * 0.9 for gap in spaced)


@pytest.mark.parametrize("waiting_elsewhere", [0, 5])
def test_waiting_replies_are_told_their_place_behind_those_held_and_move_up(engine, waiting_elsewhere):
    source, sink, slots = Source(), Sink(), len(engine.slots)
    source.waiting_elsewhere = waiting_elsewhere  # other workers' replies waiting for their slots
    source.pending = [request(engine, str(i)) for i in range(slots + 3)]
    worker = ServingLoop(engine, source, sink, max_jobs=slots + 1, flush_interval=FLUSH)
    run_until(worker)
    held, queued = str(slots), [str(slots + 1), str(slots + 2)]  # one waits in the worker, two in the queue
    assert sink.positions[0] == {held: 1}
    # The shared queue, after what this worker and the others hold.
    assert {queued[0]: 2 + waiting_elsewhere, queued[1]: 3 + waiting_elsewhere} in sink.positions
    told = {}
    for change in sink.positions:  # only ever up; never again once started (two may start at once)
        assert all(place < told.get(i, place + 1) for i, place in change.items())
        told |= change


def test_a_worker_gone_idle_tells_once_that_nothing_waits_in_it_any_more(engine):
    """Others count what it said waits in it, and chat/jobs.py routes nothing to a worker that
    has replies waiting: the last word must not stay "1 waits here"."""

    class Told(Source):
        def __init__(self):
            super().__init__()
            self.told = []

        def waiting(self, limit, waiting_here):
            self.told.append(waiting_here)
            return super().waiting(limit, waiting_here)

    source, sink, slots = Told(), Sink(), len(engine.slots)
    source.pending = [request(engine, str(i)) for i in range(slots + 1)]  # one waits for a slot
    worker = ServingLoop(engine, source, sink, max_jobs=2 * slots, flush_interval=FLUSH)
    run_until(worker)
    run_until(worker, lambda: source.told[-1] == 0)  # its last word, once idle: nothing waits here
    told = len(source.told)
    for _ in range(5):
        worker.tick()
    assert source.told[0] == 1 and len(source.told) == told  # said once, not at every idle look


def test_fast_steps_are_gathered_into_one_delivery_per_interval(engine):
    """With steps of 10 ms (on a clock the test drives), a delivery carries about 4 steps' text."""

    class Timed:
        def __init__(self, engine):
            self.engine, self.now, self.steps = engine, 0.0, 0

        def __getattr__(self, name):
            return getattr(self.engine, name)

        def step(self):
            self.now += 0.01
            self.steps += 1
            return self.engine.step()

    timed = Timed(engine)
    source, sink = Source(), Sink()
    source.pending = [request(engine, "1", max_new_tokens=60)]
    worker = ServingLoop(timed, source, sink, max_jobs=4, flush_interval=FLUSH, clock=lambda: timed.now)
    run_until(worker)
    assert len(sink.deliveries) <= timed.steps / 3
    assert sink.final("1").completion_tokens == 60 or sink.final("1").finish_reason == "stop"


def test_a_new_job_joins_the_running_batch(engine):
    source, sink = Source(), Sink()
    source.pending = [request(engine, "1", max_new_tokens=60)]
    worker = ServingLoop(engine, source, sink, max_jobs=4, flush_interval=FLUSH)
    run_until(worker, lambda: any(u.text for u in sink.updates("1")))
    source.pending = [request(engine, "2", max_new_tokens=8)]
    run_until(worker)
    # The short one, added mid-way, ended while the long one was still being written.
    first_end = next(i for i, (_, b) in enumerate(sink.deliveries) if any(u.finish_reason for u in b))
    assert [u.request_id for u in sink.deliveries[first_end][1] if u.finish_reason] == ["2"]


def test_cancel_ends_a_reply_promptly_keeping_its_text(engine):
    source, sink = Source(), Sink()
    source.pending = [request(engine, "1", max_new_tokens=400)]
    worker = ServingLoop(engine, source, sink, max_jobs=4, flush_interval=FLUSH)
    run_until(worker, lambda: len(sink.updates("1")) >= 2)
    source.cancels.add("1")
    at_cancel = sink.updates("1")[-1].completion_tokens
    run_until(worker)
    final = sink.final("1")
    assert final.finish_reason == "cancelled" and not final.error
    assert final.text and final.text.startswith(sink.updates("1")[-2].text)
    # Promptly, in steps: cancels are read every flush interval, a few steps at most.
    assert final.completion_tokens <= at_cancel + 40


def test_a_failing_request_fails_alone(engine):
    source, sink = Source(), Sink()
    too_long = Request("bad", [5] * 600, SamplingParams(max_new_tokens=4))  # context is 512
    source.pending = [too_long, request(engine, "1", max_new_tokens=8)]
    worker = ServingLoop(engine, source, sink, max_jobs=4, flush_interval=FLUSH)
    run_until(worker)
    bad = sink.final("bad")
    assert bad.finish_reason == "error" and "512" in bad.error
    assert sink.final("1").finish_reason in {"length", "stop"}


def test_a_failing_step_fails_its_batch_and_the_loop_goes_on(engine):
    class Flaky:
        """The real engine, whose next step raises once."""

        def __init__(self, engine):
            self.engine, self.explode = engine, False

        def __getattr__(self, name):
            return getattr(self.engine, name)

        def step(self):
            if self.explode:
                self.explode = False
                raise RuntimeError("CUDA out of memory")
            return self.engine.step()

    flaky = Flaky(engine)
    source, sink = Source(), Sink()
    source.pending = [request(engine, "1", max_new_tokens=200)]
    worker = ServingLoop(flaky, source, sink, max_jobs=4, flush_interval=FLUSH)
    run_until(worker, lambda: any(u.text for u in sink.updates("1")))
    flaky.explode = True
    run_until(worker)
    failed = sink.final("1")
    assert failed.finish_reason == "error" and "CUDA out of memory" in failed.error
    assert failed.text  # what was written stays
    source.pending = [request(engine, "2", max_new_tokens=8)]
    run_until(worker, lambda: not source.pending and not worker.replies and not engine.has_work())
    assert sink.final("2").finish_reason in {"length", "stop"}


def test_text_is_kept_for_the_next_delivery_when_the_sink_fails(engine):
    source, sink = Source(), Sink()
    req = request(engine, "1", max_new_tokens=30)
    source.pending = [req]
    worker = ServingLoop(engine, source, sink, max_jobs=4, flush_interval=FLUSH)
    run_until(worker, lambda: any(u.text for u in sink.updates("1")))
    sink.fail_next = 2
    run_until(worker)
    assert sink.final("1").text == alone(engine, req)


def test_replies_in_hand_go_on_while_the_job_source_is_away(engine):
    class Flaky(Source):
        def __init__(self):
            super().__init__()
            self.away = False

        def take(self, max_jobs, timeout):
            if self.away:
                raise ConnectionError("redis away")
            return super().take(max_jobs, timeout)

        def cancelled(self, request_ids):
            if self.away:
                raise ConnectionError("redis away")
            return super().cancelled(request_ids)

    source, sink = Flaky(), Sink()
    req = request(engine, "1", max_new_tokens=30)
    source.pending = [req]
    worker = ServingLoop(engine, source, sink, max_jobs=4, flush_interval=FLUSH)
    run_until(worker, lambda: "1" in worker.replies)
    source.away = True
    run_until(worker)
    assert sink.final("1").text == alone(engine, req)
    source.away = False
    source.pending = [request(engine, "2", max_new_tokens=4)]
    run_until(worker)  # taken again once the source is back (after its retry pause)
    assert sink.final("2").finish_reason in {"length", "stop"}


def test_stop_drains_then_fails_what_is_left(engine):
    source, sink = Source(), Sink()
    source.pending = [request(engine, "1", max_new_tokens=400)]
    worker = ServingLoop(engine, source, sink, max_jobs=4, flush_interval=FLUSH)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"drain_timeout": 0.2})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not any(u.text for u in sink.updates("1")):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    final = sink.final("1")
    assert final.error == STOPPED_ERROR and final.text
    assert not worker.replies


@pytest.mark.parametrize("interval", [0.02, 0.05])
def test_flush_interval_is_respected(engine, interval):
    source, sink = Source(), Sink()
    source.pending = [request(engine, "1", max_new_tokens=60)]
    worker = ServingLoop(engine, source, sink, max_jobs=4, flush_interval=interval)
    run_until(worker)
    times = [t for t, _ in sink.deliveries]
    assert all(b - a >= interval * 0.9 for a, b in zip(times, times[1:-1]))


def test_a_replys_first_text_goes_out_at_once_then_in_batches(engine):
    source, sink = Source(), Sink()
    source.pending = [request(engine, "1", max_new_tokens=60)]
    worker = ServingLoop(engine, source, sink, max_jobs=4, flush_interval=3600.0)
    run_until(worker, done=lambda: any(u.text for _, updates in sink.deliveries for u in updates))
    (at, (first,)), = [d for d in sink.deliveries if d[1][0].text]
    assert first.finish_reason is None  # delivered while the reply runs, not held for the hour
    steps = len(sink.deliveries)
    for _ in range(5):
        worker.tick()
    assert len(sink.deliveries) == steps  # the rest waits for the interval (or the end)


def test_the_settings_pick_the_engine_and_a_bad_dtype_is_refused(settings, tiny_checkpoint):
    from chat.serving import load_engine

    settings.GROK_CHECKPOINT, settings.GROK_QUANT, settings.GROK_MAX_BATCH = str(tiny_checkpoint), "int8", 1
    settings.GROK_DEVICE, settings.GROK_DTYPE, settings.GROK_CONTEXT_LEN = "cpu", "bfloat16", 256
    engine = load_engine()
    assert engine.model.embed.weight.dtype == torch.bfloat16 and len(engine.slots) == 1
    assert engine.context_len == 256 and engine.model.layers[0].attn.k_cache.shape[2] == 256
    settings.GROK_DTYPE = "float16"
    with pytest.raises(ValueError, match="GROK_DTYPE is 'float16'; choose one of float32, bfloat16"):
        load_engine()


def test_the_settings_place_the_experts_and_a_bad_offload_is_refused(settings, tiny_checkpoint):
    from chat.serving import load_engine

    settings.GROK_CHECKPOINT, settings.GROK_QUANT, settings.GROK_MAX_BATCH = str(tiny_checkpoint), "int8", 1
    settings.GROK_DEVICE, settings.GROK_CONTEXT_LEN, settings.GROK_PREFIX_CACHE = "cpu", 64, 0
    settings.GROK_MAX_CPU_MEMORY, settings.GROK_OFFLOAD, settings.GROK_CPU_THREADS = "2MB", "experts", 1
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        engine = load_engine()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert "KV cache on cpu; experts 2 cpu, 30 mmap (of 32)" in engine.model.placement
    settings.GROK_OFFLOAD = "disk"
    with pytest.raises(ValueError, match="GROK_OFFLOAD is 'disk'; choose one of experts, layers"):
        load_engine()
