"""Search (chat/search.py): full text with a GIN index on PostgreSQL, icontains elsewhere; the
sidebar's results with a marked snippet and the matching message's id; the admin's search."""

import pytest
from django.db import connection
from django.urls import reverse

from chat import search
from chat.models import Message

pytestmark = pytest.mark.django_db


def test_full_text_finds_word_forms_and_marks_them_in_the_snippet(ann, user_factory, conversation_factory):
    chat = conversation_factory(
        ann, [("user", "What did you have for dinner?"), ("assistant", "I cooked <b>pasta</b>\nwith garlic.")]
    )
    by_title = conversation_factory(ann, [("user", "hello")], title="Cooking notes")
    conversation_factory(ann, [("user", "nothing here")])
    conversation_factory(user_factory("bob"), [("user", "bob cooks too")])

    results = {r["id"]: r for r in search.search_conversations(ann, "cooking")}

    assert set(results) == {chat.id, by_title.id}
    found = results[chat.id]
    assert found["message_id"] == chat.messages.get(role="assistant").id
    assert found["snippet"] == [["I ", False], ["cooked", True], [" pasta with garlic.", False]]
    assert (results[by_title.id]["message_id"], results[by_title.id]["snippet"]) == (None, [])
    assert search.search_conversations(ann, "   ") == []


def test_the_first_matching_message_is_the_one_linked(ann, conversation_factory):
    chat = conversation_factory(ann, [("user", "pelicans?"), ("assistant", "Pelicans fly."), ("user", "pelican!")])
    (result,) = search.search_conversations(ann, "pelican")
    assert result["message_id"] == chat.messages.order_by("id").first().id


def test_the_gin_index_serves_the_full_text_query():
    plan = messages_plan(search.messages_matching(Message.objects.all(), "pasta"))
    assert "chat_message_content_search" in plan


def messages_plan(queryset) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a tiny table: make the planner choose
        sql, params = queryset.query.sql_with_params()
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_without_postgresql_the_search_falls_back_to_icontains(ann, conversation_factory, monkeypatch):
    monkeypatch.setattr(search, "full_text", lambda: False)
    long_text = "x " * 100 + "how to cook PASTA al dente " + "y " * 100
    chat = conversation_factory(ann, [("user", long_text)])
    conversation_factory(ann, [("user", "cooking")])
    (result,) = search.search_conversations(ann, "pasta")
    assert result["id"] == chat.id and result["message_id"] == chat.messages.get().id
    before, match, after = result["snippet"]
    assert before[0].startswith("…") and before[0].endswith("how to cook ") and before[1] is False
    assert match == ["PASTA", True]
    assert after[0].startswith(" al dente") and after[0].endswith("…") and after[1] is False


def test_the_admins_search_uses_full_text_for_messages_and_conversations(
    admin_client, ann, conversation_factory
):
    chat = conversation_factory(ann, [("user", "I went running"), ("assistant", "Good for you")], title="Sport")
    conversation_factory(ann, [("user", "nothing")], title="Other")
    messages = admin_client.get(reverse("admin:chat_message_changelist"), {"q": "runs"})
    assert messages.status_code == 200
    assert list(messages.context["cl"].result_list) == [chat.messages.get(role="user")]
    conversations = admin_client.get(reverse("admin:chat_conversation_changelist"), {"q": "runs"})
    assert list(conversations.context["cl"].result_list) == [chat]
    by_owner = admin_client.get(reverse("admin:chat_conversation_changelist"), {"q": "ann"})
    assert by_owner.context["cl"].result_count == 2
