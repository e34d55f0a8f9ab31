"""The engine's prefix cache through the worker: a conversation's next turn reuses its previous
prompt and reply, another user only the persona's system prompt, and each reply records how many
of its prompt tokens came from the cache. The real tiny engine, database and serving loop."""

import pytest

from chat import branches, jobs
from chat.bridge import Bridge
from chat.models import Message
from chat.prompts import public_prefix
from inference.loop import ServingLoop


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    """As the worker loads it by default: spare rows for the prefix cache."""
    import torch

    from inference.engine import Engine

    torch.set_num_threads(1)
    return Engine(tiny_checkpoint, quant="none", max_batch=2, prefix_cache=4, context_len=512)


def reply_to(conversation, text: str, engine) -> Message:
    """Post `text` in the conversation and have the worker write the reply -> the saved reply."""
    branches.append(conversation, role="user", content=text)
    reply = branches.append(conversation, role="assistant", status="queued", generation={"max_new_tokens": 6, "temperature": 0})
    queue = jobs.LocalQueue(4)
    queue.put(reply.pk)
    bridge = Bridge(engine, queue, lambda events: None)
    loop = ServingLoop(engine, bridge, bridge, max_jobs=2, flush_interval=0.01)
    loop.tick()
    while loop.replies:
        loop.tick()
    reply.refresh_from_db()
    assert reply.status == "done"
    return reply


def test_the_next_turn_reuses_the_conversation_and_others_only_the_persona(
    committed_db, engine, conversation_factory, user_factory
):
    ann = conversation_factory(user_factory("ann"), [], persona="regular")
    first = reply_to(ann, "Tell me a story about a dragon.", engine)
    second = reply_to(ann, "And then?", engine)
    # The second prompt is the first plus its reply and the new message: all of that is reused
    # (but for a token or two where the reply's text meets the next turn).
    assert second.cached_tokens >= first.prompt_tokens - 2
    assert second.prompt_tokens > second.cached_tokens

    # Bob sends exactly what Ann sent first: her prompt is cached, he reuses only the persona.
    persona = ann.persona.current_version.system_prompt
    bob = conversation_factory(user_factory("bob"), [], persona="regular")
    his = reply_to(bob, "Tell me a story about a dragon.", engine)
    prompt = engine.tokenizer.encode(f"{persona.strip()}\n\nUser: Tell me a story about a dragon.\n\nRegular:")
    assert his.prompt_tokens == first.prompt_tokens == len(prompt)
    assert his.cached_tokens == public_prefix(prompt, persona, engine.tokenizer) > 0
    assert his.content == first.content  # greedy: the same reply, with or without her cache
