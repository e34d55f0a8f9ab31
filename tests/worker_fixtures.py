"""The tiny engine shared by the worker, consumer and production tests (imported by them)."""

import pytest
import torch

from tests.inference.conftest import tiny_checkpoint  # noqa: F401  (a session fixture, re-exported)

MAX_BATCH = 2


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint):  # noqa: F811
    """One Engine over the tiny checkpoint for the session; left with no work by every test."""
    from inference.engine import Engine

    # Two cores shared by parallel suites: more torch threads only make the tiny model contend.
    torch.set_num_threads(1)
    return Engine(tiny_checkpoint, quant="none", max_batch=MAX_BATCH, max_seq_len=512)


@pytest.fixture
def engine(tiny_engine):
    yield tiny_engine
    for request_id in [*tiny_engine.queued(), *(s.request.id for s in tiny_engine.slots if s)]:
        tiny_engine.cancel(request_id)
    while tiny_engine.has_work():
        tiny_engine.step()
