"""Branches (chat/branches.py): the tree, the prompt built from a reply's own branch, and the
migration that links the messages of conversations written before branches."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext

from chat import actions, branches, jobs
from chat.models import Conversation as Current
from chat.models import Message
from chat.replies import do_start_reply
from tests.test_prompts import CharTokenizer

pytestmark = pytest.mark.django_db


@pytest.fixture
def ann(user_factory, subscribe):
    ann = user_factory("ann")
    subscribe(ann, "premium")
    return ann


def finish(reply: Message, content: str) -> None:
    Message.objects.filter(pk=reply.pk).update(status="done", content=content)


def prompt_of(reply: Message) -> str:
    tokenizer = CharTokenizer()
    started = do_start_reply(jobs.Job(reply.pk, ""), tokenizer, context_len=100_000, model_name="tiny")
    return tokenizer.decode(started.prompt_ids)


def test_a_reply_is_written_from_its_own_branch_only(ann, job_calls):
    first, reply = actions.do_send_message(ann, conversation_id=None, content="Pick a colour", persona_slug=None)
    finish(reply, "Blue.")
    chat = first.conversation
    _, retry = actions.do_regenerate(ann, chat.id)
    finish(retry, "Green, obviously.")
    edited, edited_reply = actions.do_edit_message(ann, first.id, "Pick a number")

    prompt = prompt_of(edited_reply)
    assert "Pick a number" in prompt and "Pick a colour" not in prompt and "Blue" not in prompt

    # Back on the first version, whose newest reply is the regenerated one: the next turn
    # follows that branch and sees only it.
    finish(edited_reply, "Seven.")
    _, path = actions.do_switch_version(ann, first.id)
    assert [m.content for m in path] == ["Pick a colour", "Green, obviously."]
    _, next_reply = actions.do_send_message(ann, conversation_id=chat.id, content="Why?", persona_slug=None)
    prompt = prompt_of(next_reply)
    assert prompt.index("Pick a colour") < prompt.index("Green, obviously.") < prompt.index("Why?")
    assert "Blue" not in prompt and "number" not in prompt and "Seven" not in prompt


def test_the_queries_of_a_turn_do_not_grow_with_the_conversation(ann, job_calls, conversation_factory):
    def queries_of_a_turn(turns: int) -> int:
        chat = conversation_factory(ann, [("user", "Q"), ("assistant", "A")] * turns)
        with CaptureQueriesContext(connection) as sent:
            _, reply = actions.do_send_message(ann, conversation_id=chat.id, content="Next", persona_slug=None)
            prompt_of(reply)
        return len(sent.captured_queries)

    assert queries_of_a_turn(20) == queries_of_a_turn(1)


def test_the_tree_shows_the_newest_branch_below_current(ann, conversation_factory):
    chat = conversation_factory(ann, [("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")])
    q1, a1, q2, a2 = chat.messages.all()
    a1b = branches.add(chat, q1.pk, role="assistant", content="A1b")
    tree = branches.tree_of(chat)
    assert tree.versions(a1) == tree.versions(a1b) == [a1.pk, a1b.pk] and tree.versions(q1) == [q1.pk]
    assert tree.newest_leaf(q1.pk) == a1b.pk and tree.newest_leaf(a1.pk) == a2.pk
    assert [m.pk for m in tree.path_to(a2.pk)] == [q1.pk, a1.pk, q2.pk, a2.pk] and tree.path_to(None) == []
    assert [m.content for m in branches.shown_path(chat)] == ["Q1", "A1b"]  # the newest message ends it
    chat.current = a1
    assert [m.content for m in branches.shown_path(chat)] == ["Q1", "A1", "Q2", "A2"]  # below current
    chat.current = None  # (the message on screen was deleted): the newest message
    assert [m.pk for m in branches.shown_path(chat)] == [q1.pk, a1b.pk]


def test_a_parent_cycle_cannot_hang_the_path(ann, conversation_factory):
    chat = conversation_factory(ann, [("user", "Q1"), ("assistant", "A1")])
    q1, a1 = chat.messages.all()
    Message.objects.filter(pk=q1.pk).update(parent=a1)  # only a broken database holds this
    assert len(branches.tree_of(chat).path_to(a1.pk)) <= 3


def test_the_migration_links_the_messages_of_earlier_conversations(committed_db):
    executor = MigrationExecutor(connection)
    executor.migrate([("chat", "0011_message_search")])
    apps = executor.loader.project_state([("chat", "0011_message_search")]).apps
    Conversation, Message_, Persona, User = (
        apps.get_model("chat", name) for name in ("Conversation", "Message", "Persona", "User")
    )
    owner = User.objects.create(username="old")
    persona = Persona.objects.first()
    chats = [Conversation.objects.create(owner=owner, persona=persona) for _ in range(2)]
    for turn in range(3):  # interleaved, as conversations written side by side are
        for chat in chats:
            Message_.objects.create(conversation=chat, role="user" if turn % 2 == 0 else "assistant", content=f"{chat.pk}:{turn}")
    empty = Conversation.objects.create(owner=owner, persona=persona)

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    for chat in chats:
        messages = list(Message.objects.filter(conversation_id=chat.pk))
        assert [m.parent_id for m in messages] == [None, messages[0].pk, messages[1].pk]
        assert Current.objects.get(pk=chat.pk).current_id == messages[-1].pk
    assert Current.objects.get(pk=empty.pk).current_id is None
    assert [m.content for m in branches.shown_path(Current.objects.get(pk=chats[0].pk))] == [
        f"{chats[0].pk}:{turn}" for turn in range(3)
    ]
