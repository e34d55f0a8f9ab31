"""Starting a reply on the worker's side (chat/replies.py `do_start_reply`): what it records,
and the claim that settles its races with a stop, without a lock."""

import pytest

from chat import actions, jobs, replies
from chat.models import Message, Persona
from tests.test_prompts import CharTokenizer

pytestmark = pytest.mark.django_db


def start(reply: Message, attempt: int = 1) -> replies.ReplyStart | None:
    return replies.do_start_reply(jobs.Job(reply.pk, "", attempt=attempt), CharTokenizer(), context_len=100_000, model_name="tiny")


def test_a_start_records_the_personas_newest_version_and_marks_the_reply_streaming(ann, job_calls):
    regular = Persona.objects.get(slug="regular")
    newest = regular.set_system_prompt("You are an assistant, newest edition.")
    _, reply = actions.do_send_message(ann, conversation_id=None, content="Hi", persona_slug="regular")
    started = start(reply)
    reply.refresh_from_db()
    assert reply.status == Message.Status.STREAMING and reply.persona_version == newest and reply.model_name == "tiny"
    assert reply.generation["seed"] == started.sampling["seed"]
    assert CharTokenizer().decode(started.prompt_ids).startswith("You are an assistant, newest edition.")
    assert started.public_prefix == len("You are an assistant, newest edition.")


def test_a_reply_stopped_while_its_prompt_is_built_is_not_started(ann, job_calls, monkeypatch):
    _, reply = actions.do_send_message(ann, conversation_id=None, content="Hi", persona_slug="regular")
    build = replies.build_prompt

    def stopped_meanwhile(*args, **kwargs):
        actions.do_stop(ann, reply.pk)  # a page's stop, between the worker's reads and its claim
        return build(*args, **kwargs)

    monkeypatch.setattr(replies, "build_prompt", stopped_meanwhile)
    assert start(reply) is None
    reply.refresh_from_db()
    assert reply.status == Message.Status.STOPPED and reply.model_name == ""


def test_only_a_taken_over_job_continues_a_streaming_reply_and_a_finished_one_is_left(ann, job_calls):
    _, reply = actions.do_send_message(ann, conversation_id=None, content="Hi", persona_slug="regular")
    assert start(reply) is not None
    Message.objects.filter(pk=reply.pk).update(content="Half a")
    assert start(reply) is None  # a duplicate of the first delivery: already being written
    again = start(reply, attempt=2)  # its worker died: the next one goes on after the saved text
    assert again.saved_text == "Half a" and CharTokenizer().decode(again.prompt_ids).endswith(" Half a")
    Message.objects.filter(pk=reply.pk).update(status=Message.Status.DONE)
    assert start(reply, attempt=3) is None
