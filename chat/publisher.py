"""Sending reply events to Channels groups from the worker's threads.

Group messages go out through an asyncio loop owned by someone else: in the embedded mode the web
server's loop (the in-memory channel layer lives there), in a worker process a loop on a thread
of its own (`event_loop_thread`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from channels.layers import get_channel_layer

from chat.events import Events

Publish = Callable[[Events], None]


class Publisher:
    """Sends group events through `loop` from any thread, waiting so that they stay in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float = 10.0) -> None:
        self.loop = loop
        self.timeout = timeout
        self.layer = get_channel_layer()

    def __call__(self, events: Events) -> None:
        if events:
            asyncio.run_coroutine_threadsafe(self._send(events), self.loop).result(self.timeout)

    async def _send(self, events: Events) -> None:
        for group, event in events:
            await self.layer.group_send(group, event)


@contextmanager
def event_loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """A loop running on a thread of its own while the block runs: a worker process's Publisher
    sends through it, so the Redis channel layer keeps one connection pool rather than one per
    call. Stopped and joined at the end, so that the process exits with no thread mid-call."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grokweb-publisher", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)
