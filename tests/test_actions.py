"""The domain rules of chat.actions, each with its refusals."""

import pytest

from chat import actions, branches
from chat.errors import ChatError
from chat.models import Conversation, Message, Persona

pytestmark = pytest.mark.django_db

QUEUED, STREAMING, DONE, STOPPED = (
    Message.Status.QUEUED,
    Message.Status.STREAMING,
    Message.Status.DONE,
    Message.Status.STOPPED,
)


@pytest.fixture
def ann(user_factory, subscribe):
    """On Premium, which includes the Grok persona; plan limits are tested in test_plans.py."""
    ann = user_factory("ann")
    subscribe(ann, "premium")
    return ann


@pytest.fixture
def bob(user_factory):
    return user_factory("bob")


@pytest.fixture
def chat(ann, conversation_factory):
    """Ann's conversation: two finished exchanges."""
    turns = [("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")]
    return conversation_factory(ann, turns)


@pytest.fixture
def commit(django_capture_on_commit_callbacks):
    """`with commit():` runs what the block left for the commit (the job calls)."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def send(user, content="hi", *, conversation_id=None, persona=None) -> tuple[Message, Message]:
    return actions.do_send_message(
        user, conversation_id=conversation_id, content=content, persona_slug=persona
    )


def refused(code: str, call, *args, **kwargs) -> ChatError:
    with pytest.raises(ChatError) as raised:
        call(*args, **kwargs)
    assert raised.value.code == code, raised.value.message
    return raised.value


def contents(conversation: Conversation) -> list[tuple[str, str, str]]:
    """The branch on screen (chat/branches.py)."""
    conversation.refresh_from_db()
    return [(m.role, m.content, m.status) for m in branches.shown_path(conversation)]


def versions(message: Message) -> list[int]:
    return branches.versions(message)


# --- send -----------------------------------------------------------------------------------


def test_send_starts_a_conversation_and_queues_the_reply_on_commit(ann, job_calls, commit):
    with commit():
        message, reply = send(ann, "  Why is the sky blue?\n", persona="regular")

    conversation = message.conversation
    assert (conversation.owner, conversation.persona.slug) == (ann, "regular")
    assert conversation.title == "Why is the sky blue?"
    assert contents(conversation) == [
        ("user", "Why is the sky blue?", DONE),
        ("assistant", "", QUEUED),
    ]
    assert job_calls["enqueue"] == [reply.id]


def test_send_without_a_persona_uses_the_first_one(ann, job_calls):
    message, _ = send(ann)
    assert message.conversation.persona.slug == "grok"


def test_send_refuses_unknown_and_inactive_personas(ann, job_calls):
    refused("not_found", send, ann, persona="nope")
    Persona.objects.filter(slug="regular").update(is_active=False)
    refused("not_found", send, ann, persona="regular")
    assert not Conversation.objects.exists()


def test_a_long_first_message_gives_a_one_line_title_of_60_characters(ann, job_calls):
    content = "word " * 30 + "\nsecond line"
    message, _ = send(ann, content)

    title = message.conversation.title
    assert len(title) <= 60 and title.endswith("…") and "\n" not in title
    assert title.startswith("word word")


@pytest.mark.parametrize("content", ["", "   \n\t", None, 42])
def test_send_refuses_empty_content(ann, job_calls, content):
    refused("bad_frame", send, ann, content)


def test_send_refuses_content_over_the_limit(ann, job_calls, settings):
    settings.GROKWEB_MAX_MESSAGE_CHARS = 10
    error = refused("too_large", send, ann, "x" * 11)
    assert "10 characters" in error.message
    send(ann, " " + "x" * 10 + " ")  # the limit applies to the stripped text


def test_send_continues_the_users_conversation(ann, chat, job_calls, commit):
    with commit():
        message, reply = send(ann, "Q3", conversation_id=chat.id, persona="regular")

    assert message.conversation == chat
    assert chat.persona.slug == "grok"  # a conversation keeps its persona
    assert contents(chat)[-2:] == [("user", "Q3", DONE), ("assistant", "", QUEUED)]
    assert job_calls["enqueue"] == [reply.id]


def test_send_to_another_users_conversation_is_not_found(bob, chat, job_calls):
    refused("not_found", send, bob, conversation_id=chat.id)
    assert chat.messages.count() == 4


def test_send_while_a_reply_is_active_is_a_conflict(ann, chat, job_calls):
    send(ann, "Q3", conversation_id=chat.id)
    refused("conflict", send, ann, "Q4", conversation_id=chat.id)


# --- stop -----------------------------------------------------------------------------------


def test_stopping_a_queued_reply_stops_it_at_once(ann, chat, job_calls, commit):
    _, reply = send(ann, "Q3", conversation_id=chat.id)

    with commit():
        stopped = actions.do_stop(ann, reply.id)

    assert (stopped.status, stopped.finish_reason) == (STOPPED, "cancelled")
    assert job_calls["cancel"] == [reply.id]
    assert chat.active_reply() is None


def test_stopping_a_streaming_reply_asks_its_worker(ann, chat, job_calls, commit):
    reply = branches.append(chat, role="assistant", status=STREAMING, content="Half a")

    with commit():
        result = actions.do_stop(ann, reply.id)

    assert result.status == STREAMING  # the worker saves the text so far and marks it stopped
    assert job_calls["cancel"] == [reply.id]


def test_stopping_a_finished_reply_changes_nothing(ann, chat, job_calls, commit):
    reply = chat.messages.last()
    with commit():
        assert actions.do_stop(ann, reply.id).status == DONE
    assert job_calls["cancel"] == []


def test_stop_refuses_other_users_replies_and_user_messages(ann, bob, chat, job_calls):
    reply = branches.append(chat, role="assistant", status=QUEUED)
    refused("not_found", actions.do_stop, bob, reply.id)
    refused("not_found", actions.do_stop, ann, chat.messages.first().id)
    refused("not_found", actions.do_stop, ann, 10**9)
    reply.refresh_from_db()
    assert reply.status == QUEUED


# --- regenerate -----------------------------------------------------------------------------


def test_regenerate_adds_a_version_of_the_last_reply(ann, chat, job_calls, commit):
    old = chat.messages.last()
    with commit():
        message, reply = actions.do_regenerate(ann, chat.id)

    assert message.content == "Q2" and reply.parent_id == message.pk
    assert contents(chat) == [
        ("user", "Q1", DONE),
        ("assistant", "A1", DONE),
        ("user", "Q2", DONE),
        ("assistant", "", QUEUED),
    ]
    assert versions(reply) == [old.pk, reply.pk]  # the old reply is kept, a version away
    assert Message.objects.get(pk=old.pk).content == "A2"
    assert job_calls["enqueue"] == [reply.id]


def test_regenerate_refusals(ann, bob, chat, job_calls, conversation_factory):
    refused("not_found", actions.do_regenerate, bob, chat.id)
    refused("conflict", actions.do_regenerate, ann, conversation_factory(ann, []).id)
    branches.append(chat, role="assistant", status=STREAMING)
    refused("conflict", actions.do_regenerate, ann, chat.id)


# --- edit a message -------------------------------------------------------------------------


def test_an_edit_is_a_new_version_with_a_new_reply(ann, chat, job_calls, commit):
    last_user = chat.messages.filter(role="user").last()
    with commit():
        message, reply = actions.do_edit_message(ann, last_user.id, " Q2, better ")

    assert message.pk != last_user.pk and message.parent_id == last_user.parent_id
    assert contents(chat) == [
        ("user", "Q1", DONE),
        ("assistant", "A1", DONE),
        ("user", "Q2, better", DONE),
        ("assistant", "", QUEUED),
    ]
    assert versions(message) == [last_user.pk, message.pk]
    last_user.refresh_from_db()
    assert last_user.content == "Q2" and last_user.children.get().content == "A2"  # kept, with its reply
    assert job_calls["enqueue"] == [reply.id]


def test_editing_an_earlier_message_branches_there(ann, chat, job_calls):
    first = chat.messages.filter(role="user").first()
    message, reply = actions.do_edit_message(ann, first.id, "Q1 again")

    assert message.parent_id is None and versions(message) == [first.pk, message.pk]
    assert contents(chat) == [("user", "Q1 again", DONE), ("assistant", "", QUEUED)]


def test_edit_refusals(ann, bob, chat, job_calls):
    first, last = chat.messages.filter(role="user")
    refused("not_found", actions.do_edit_message, bob, last.id, "mine now")
    refused("not_found", actions.do_edit_message, ann, chat.messages.last().id, "an assistant reply")
    refused("bad_frame", actions.do_edit_message, ann, last.id, "  ")
    branches.append(chat, role="assistant", status=QUEUED)
    refused("conflict", actions.do_edit_message, ann, first.id, "while it answers")
    assert chat.messages.count() == 5


# --- versions -------------------------------------------------------------------------------


def test_switching_shows_the_newest_branch_below_the_version_chosen(ann, bob, chat, job_calls):
    q2 = chat.messages.filter(role="user").last()
    q2b, reply = actions.do_edit_message(ann, q2.id, "Q2b")
    Message.objects.filter(pk=reply.pk).update(status=DONE, content="A2b")

    conversation, path = actions.do_switch_version(ann, q2.id)
    assert [m.content for m in path] == ["Q1", "A1", "Q2", "A2"] and path[2].versions == [q2.pk, q2b.pk]
    assert contents(chat) == [("user", "Q1", DONE), ("assistant", "A1", DONE), ("user", "Q2", DONE), ("assistant", "A2", DONE)]
    # The next message follows the branch on screen, and its reply answers that branch.
    message, _ = actions.do_send_message(ann, conversation_id=chat.id, content="Q3", persona_slug=None)
    assert message.parent_id == path[-1].pk

    refused("not_found", actions.do_switch_version, bob, q2b.id)
    refused("conflict", actions.do_switch_version, ann, q2b.id)  # Q3's reply is being written


# --- rename and delete ----------------------------------------------------------------------


def test_rename(ann, bob, chat):
    assert actions.do_rename_conversation(ann, chat.id, "  Sky\n colours ").title == "Sky colours"
    refused("bad_frame", actions.do_rename_conversation, ann, chat.id, " ")
    refused("bad_frame", actions.do_rename_conversation, ann, chat.id, "x" * 201)
    refused("not_found", actions.do_rename_conversation, bob, chat.id, "Bob's now")
    chat.refresh_from_db()
    assert chat.title == "Sky colours"


def test_delete(ann, bob, chat, job_calls, commit):
    refused("not_found", actions.do_delete_conversation, bob, chat.id)
    reply = branches.append(chat, role="assistant", status=STREAMING)

    with commit():
        actions.do_delete_conversation(ann, chat.id)

    assert not Conversation.objects.filter(pk=chat.pk).exists()
    assert job_calls["cancel"] == [reply.id]  # its worker slot is freed


# --- personas and search --------------------------------------------------------------------


def test_personas_for_lists_the_active_personas(ann):
    Persona.objects.filter(slug="regular").update(is_active=False)
    assert [(p.slug, p.allowed) for p in actions.personas_for(ann)] == [("grok", True)]
