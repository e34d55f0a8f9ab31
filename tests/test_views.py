"""Pages and endpoints over HTTP: login everywhere, ownership as 404, the account flows, CSRF."""

import json

import pytest
from django.test import Client
from django.urls import reverse

from chat import branches
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db

PASSWORD = "a-Strong-pass-42"


@pytest.fixture
def bobs_chat(user_factory, conversation_factory):
    bob = user_factory("bob")
    return conversation_factory(bob, [("user", "bob's pasta secret")], title="Bob's pasta")


def test_every_page_needs_a_login(client, bobs_chat):
    pages = [
        ("get", reverse("chat")),
        ("get", reverse("conversation", args=[bobs_chat.id])),
        ("get", reverse("conversation_search") + "?q=pasta"),
        ("post", reverse("conversation_rename", args=[bobs_chat.id])),
        ("post", reverse("conversation_delete", args=[bobs_chat.id])),
        ("get", reverse("password_change")),
    ]
    for method, url in pages:
        response = getattr(client, method)(url)
        assert response.status_code == 302 and response.url.startswith(reverse("login")), url
    assert Conversation.objects.filter(pk=bobs_chat.pk, title="Bob's pasta").exists()


# --- the chat page --------------------------------------------------------------------------


def test_new_chat_page(ann_client, settings, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "grok-1-tiny", "demo": True}))
    settings.GROK_CHECKPOINT = str(tmp_path)

    response = ann_client.get(reverse("chat"))

    assert response.status_code == 200
    context = response.context
    assert context["conversation"] is None and list(context["messages"]) == []
    # ann is on Free: Grok is shown locked, and the page starts on the first persona she may use.
    assert [(p.slug, p.allowed) for p in context["personas"]] == [("grok", False), ("regular", True)]
    assert context["plan_status"]["plan"] == "Free"
    assert (context["model_name"], context["is_demo"]) == ("grok-1-tiny", True)
    assert context["chat_config"] == {
        "conversationId": None,
        "wsPath": "/ws/chat/",
        "maxMessageChars": settings.GROKWEB_MAX_MESSAGE_CHARS,
        "persona": "regular",
        "activeMessageId": None,
    }
    assert 'id="chat-config"' in response.content.decode()


def test_a_released_checkpoint_without_config_is_the_real_model(ann_client, settings, tmp_path):
    settings.GROK_CHECKPOINT = str(tmp_path)
    response = ann_client.get(reverse("chat"))
    assert (response.context["model_name"], response.context["is_demo"]) == ("Grok-1", False)


def test_conversation_page(ann_client, ann, conversation_factory):
    other = conversation_factory(ann, title="Older")
    turns = [("user", "Hi"), ("assistant", "Hey")]
    chat = conversation_factory(ann, turns, persona="regular", title="Now")
    reply = branches.append(chat, role="assistant", status=Message.Status.STREAMING)

    response = ann_client.get(reverse("conversation", args=[chat.id]))

    assert response.status_code == 200
    assert response.context["conversation"] == chat
    assert [m.content for m in response.context["messages"]] == ["Hi", "Hey", ""]
    assert list(response.context["conversations"]) == [chat, other]  # newest first
    config = response.context["chat_config"]
    assert config["conversationId"] == chat.id
    assert config["persona"] == "regular"
    assert config["activeMessageId"] == reply.id


def test_another_users_conversation_is_404(ann_client, bobs_chat):
    assert ann_client.get(reverse("conversation", args=[bobs_chat.id])).status_code == 404


# --- accounts -------------------------------------------------------------------------------


def test_signup_logs_in_and_goes_to_the_chat(client, django_user_model):
    assert client.get(reverse("signup")).status_code == 200

    response = client.post(
        reverse("signup"), {"username": "cleo", "password1": PASSWORD, "password2": PASSWORD}
    )

    assert response.status_code == 302 and response.url == reverse("chat")
    assert django_user_model.objects.filter(username="cleo").exists()
    assert client.get(reverse("chat")).status_code == 200  # logged in


def test_signup_refuses_weak_or_mismatched_passwords_and_taken_names(client, ann):
    for data in [
        {"username": "dan", "password1": "123", "password2": "123"},
        {"username": "dan", "password1": PASSWORD, "password2": PASSWORD + "x"},
        {"username": "ANN", "password1": PASSWORD, "password2": PASSWORD},
    ]:
        response = client.post(reverse("signup"), data)
        assert response.status_code == 200 and response.context["form"].errors, data
    assert client.get(reverse("chat")).status_code == 302


def test_login_and_logout(client, ann):
    response = client.post(reverse("login"), {"username": "ann", "password": PASSWORD})
    assert response.status_code == 302 and response.url == reverse("chat")
    assert client.get(reverse("chat")).status_code == 200

    assert client.get(reverse("logout")).status_code == 405  # logging out takes a POST
    response = client.post(reverse("logout"))
    assert response.status_code == 302 and response.url == reverse("login")
    assert client.get(reverse("chat")).status_code == 302


def test_login_refuses_a_wrong_password(client, ann):
    response = client.post(reverse("login"), {"username": "ann", "password": "wrong"})
    assert response.status_code == 200 and response.context["form"].errors


def test_password_change(ann_client, ann):
    assert ann_client.get(reverse("password_change")).status_code == 200
    new = "another-Strong-pass-7"

    response = ann_client.post(
        reverse("password_change"),
        {"old_password": PASSWORD, "new_password1": new, "new_password2": new},
    )

    assert response.status_code == 302 and response.url == reverse("password_change_done")
    assert ann_client.get(response.url).status_code == 200
    ann.refresh_from_db()
    assert ann.check_password(new)


# --- rename, delete, search -----------------------------------------------------------------


def test_rename_takes_json_or_a_form(ann_client, ann, conversation_factory):
    chat = conversation_factory(ann)
    url = reverse("conversation_rename", args=[chat.id])

    response = ann_client.post(url, {"title": "From a form"}, content_type="application/json")
    assert response.json() == {"id": chat.id, "title": "From a form"}
    response = ann_client.post(url, {"title": " From\na form "})
    assert response.json() == {"id": chat.id, "title": "From a form"}

    response = ann_client.post(url, {"title": ""}, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_frame"
    response = ann_client.post(url, "[not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_json"
    assert ann_client.get(url).status_code == 405


def test_rename_another_users_conversation_is_404(ann_client, bobs_chat):
    url = reverse("conversation_rename", args=[bobs_chat.id])
    response = ann_client.post(url, {"title": "Mine"}, content_type="application/json")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    bobs_chat.refresh_from_db()
    assert bobs_chat.title == "Bob's pasta"


def test_delete_redirects_a_form_and_answers_json_to_fetch(ann_client, ann, conversation_factory):
    first, second = conversation_factory(ann), conversation_factory(ann)

    response = ann_client.post(reverse("conversation_delete", args=[first.id]))
    assert response.status_code == 302 and response.url == reverse("chat")

    response = ann_client.post(
        reverse("conversation_delete", args=[second.id]), HTTP_ACCEPT="application/json"
    )
    assert response.json() == {"deleted": second.id}
    assert not Conversation.objects.filter(owner=ann).exists()


def test_delete_another_users_conversation_is_404(ann_client, bobs_chat):
    assert ann_client.post(reverse("conversation_delete", args=[bobs_chat.id])).status_code == 404
    assert Conversation.objects.filter(pk=bobs_chat.pk).exists()


def test_search_sees_only_the_users_own_conversations(
    ann_client, ann, bobs_chat, conversation_factory
):
    mine = conversation_factory(ann, [("user", "a pasta question")], title="Cooking")

    response = ann_client.get(reverse("conversation_search"), {"q": "PASTA"})

    [result] = response.json()["results"]
    assert (result["id"], result["title"]) == (mine.id, "Cooking")
    assert result["snippet"] == [["a ", False], ["pasta", True], [" question", False]]
    assert result["updated_at"] == mine.updated_at.isoformat()
    assert ann_client.get(reverse("conversation_search")).json() == {"results": []}


# --- CSRF -----------------------------------------------------------------------------------


def test_posts_need_the_csrf_token(ann, conversation_factory):
    chat = conversation_factory(ann, title="Kept")
    client = Client(enforce_csrf_checks=True)
    client.force_login(ann)
    url = reverse("conversation_rename", args=[chat.id])

    assert client.post(url, {"title": "Changed"}).status_code == 403
    assert client.post(reverse("conversation_delete", args=[chat.id])).status_code == 403
    assert client.post(reverse("logout")).status_code == 403

    client.get(reverse("chat"))  # the page sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = client.post(
        url, {"title": "Changed"}, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert response.json()["title"] == "Changed"


DEEP = "[" * 2000


def test_deep_json_and_unstorable_text_are_clear_400s(ann_client, ann, conversation_factory):
    """Nesting that would exhaust the parser's recursion, NUL and lone surrogates (which
    PostgreSQL cannot store) are refused naming what is wrong, through JSON or a form."""
    chat = conversation_factory(ann)
    reply = chat.messages.get(role="assistant")
    rename = reverse("conversation_rename", args=[chat.id])
    feedback = reverse("message_feedback", args=[reply.id])
    for url in (rename, feedback):
        response = ann_client.post(url, DEEP, content_type="application/json")
        assert response.status_code == 400 and response.json()["error"]["code"] == "bad_json"
    cases = [
        (rename, '{"title": "a\\u0000b"}', "title"),
        (rename, '{"title": "a\\ud800b"}', "title"),
        (feedback, '{"rating": "up", "comment": "\\udfff"}', "comment"),
    ]
    for url, body, field in cases:
        response = ann_client.post(url, body, content_type="application/json")
        assert response.status_code == 400, response.content
        assert response.json()["error"] | {"message": ""} == {"code": "bad_text", "message": "", "field": field}
    response = ann_client.post(rename, {"title": "a\x00b"})  # a form
    assert response.status_code == 400 and response.json()["error"]["field"] == "title"
    response = ann_client.get(reverse("conversation_search"), {"q": "a\x00"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "q"
    response = ann_client.post(reverse("api_keys"), {"name": "key\x00"})
    assert response.status_code == 400 and b"NUL" in response.content
    chat.refresh_from_db()
    assert chat.title != "ab" and not reply.feedback.exists() and not ann.api_keys.exists()
