"""Review: users' feedback on replies, and the admin's conversation review by role."""

import json
import re

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from chat import branches
from chat.models import Conversation, ConversationView, Feedback, Message, PersonaVersion

pytestmark = pytest.mark.django_db

PASSWORD = "a-Strong-pass-42"
HOSTILE = 'Look: <script>alert("x")</script> <img src=x onerror=alert(1)> **bold**'


@pytest.fixture
def chat(ann, conversation_factory):
    """Ann's conversation about sourdough, with a hostile reply and its recorded generation."""
    chat = conversation_factory(
        ann, [("user", "How do I feed a sourdough starter?")], persona="regular", title="Starter"
    )
    branches.append(
        chat,
        role="assistant",
        content=HOSTILE,
        model_name="grok-1-tiny",
        persona_version=PersonaVersion.objects.get(persona__slug="regular", number=1),
        generation={"temperature": 0.8, "top_p": 0.95, "seed": 7, "max_new_tokens": 512},
        prompt_tokens=40,
        completion_tokens=12,
        cached_tokens=31,
        time_to_first_token=0.25,
        duration=1.5,
    )
    return chat


def reply_of(conversation: Conversation) -> Message:
    return conversation.messages.get(role="assistant")


@pytest.fixture
def reviewer(user_factory):
    user = user_factory("rita", is_staff=True)
    user.groups.add(Group.objects.get(name="Reviewer"))
    return user


@pytest.fixture
def superuser(user_factory):
    return user_factory("root", is_staff=True, is_superuser=True)


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- feedback -------------------------------------------------------------------------------


def feedback_url(message: Message) -> str:
    return reverse("message_feedback", args=[message.id])


def test_feedback_on_a_reply_is_given_and_then_replaced(ann, chat):
    client = logged_in(ann)
    reply = reply_of(chat)

    body = {"rating": "down", "comment": " Unsafe HTML. "}
    response = client.post(feedback_url(reply), body, content_type="application/json")
    assert response.status_code == 200
    assert response.json() == {"message_id": reply.id, "rating": "down", "comment": "Unsafe HTML."}

    client.post(feedback_url(reply), {"rating": "up"})  # a form post works too
    feedback = Feedback.objects.get()
    assert (feedback.user, feedback.message, feedback.rating, feedback.comment) == (ann, reply, "up", "")


def test_feedback_refusals(ann, chat, user_factory):
    reply = reply_of(chat)
    client = logged_in(ann)
    user_message = chat.messages.get(role="user")

    assert client.post(feedback_url(user_message), {"rating": "up"}).status_code == 404
    assert client.post(feedback_url(reply), {"rating": "meh"}).status_code == 400
    assert client.post(feedback_url(reply), {"rating": "up", "comment": "x" * 2001}).status_code == 413
    assert client.post(feedback_url(reply), b"[1]", content_type="application/json").status_code == 400
    assert client.get(feedback_url(reply)).status_code == 405
    # Another user's reply is not found, whoever asks.
    assert logged_in(user_factory("bob")).post(feedback_url(reply), {"rating": "up"}).status_code == 404
    assert not Feedback.objects.exists()


def test_feedback_needs_a_login_and_the_csrf_token(ann, chat):
    reply = reply_of(chat)
    response = Client().post(feedback_url(reply), {"rating": "up"})
    assert response.status_code == 302 and response.url.startswith(reverse("login"))

    client = Client(enforce_csrf_checks=True)
    client.force_login(ann)
    assert client.post(feedback_url(reply), {"rating": "up"}).status_code == 403
    client.get(reverse("conversation", args=[chat.id]))  # the page sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = client.post(feedback_url(reply), {"rating": "up"}, headers={"X-CSRFToken": token})
    assert response.status_code == 200


# --- roles ----------------------------------------------------------------------------------


def test_the_reviewer_group_may_view_and_review_but_not_edit_or_delete():
    codenames = set(Group.objects.get(name="Reviewer").permissions.values_list("codename", flat=True))
    assert codenames == {
        "view_conversation", "review_conversation", "export_conversation", "view_message",
        "view_feedback", "view_persona", "view_personaversion",
    }


def admin_url(name: str, *args) -> str:
    return reverse(f"admin:chat_{name}", args=args)


def test_anonymous_and_normal_users_are_sent_to_the_admin_login(ann, chat):
    for client in (Client(), logged_in(ann)):
        for url in [
            admin_url("conversation_changelist"),
            admin_url("conversation_change", chat.id),
            admin_url("conversationview_changelist"),
        ]:
            response = client.get(url)
            assert response.status_code == 302 and "/admin/login/" in response.url, url
    assert not ConversationView.objects.exists()


def test_staff_outside_the_reviewer_group_see_no_conversations(user_factory, chat):
    client = logged_in(user_factory("sam", is_staff=True))
    assert client.get(admin_url("conversation_changelist")).status_code == 403
    assert client.get(admin_url("conversation_change", chat.id)).status_code == 403


def review_form(conversation: Conversation, **changes) -> dict:
    data = {"flagged": "", "reviewed": "", "review_notes": conversation.review_notes}
    return {key: value for key, value in (data | changes).items() if value != ""}


def test_a_reviewer_reads_flags_and_notes_but_cannot_change_content(reviewer, chat):
    client = logged_in(reviewer)
    assert client.get(admin_url("conversation_changelist")).status_code == 200

    response = client.get(admin_url("conversation_change", chat.id))
    assert response.status_code == 200
    assert ConversationView.objects.filter(conversation=chat, viewer=reviewer).count() == 1
    assert "Opened by" not in response.content.decode()  # the audit is for superusers

    response = client.post(
        admin_url("conversation_change", chat.id),
        review_form(chat, flagged="on", reviewed="on", review_notes="Reply echoes HTML.", title="Hacked"),
    )
    assert response.status_code == 302
    chat.refresh_from_db()
    assert (chat.flagged, chat.review_notes, chat.reviewed_by, chat.title) == (
        True, "Reply echoes HTML.", reviewer, "Starter",
    )
    assert chat.reviewed_at is not None

    client.post(admin_url("conversation_change", chat.id), review_form(chat, flagged="on"))
    chat.refresh_from_db()
    assert (chat.reviewed_at, chat.reviewed_by) == (None, None)  # un-marked


def test_a_reviewer_cannot_delete_or_edit_messages_or_see_the_audit(reviewer, chat):
    client = logged_in(reviewer)
    reply = reply_of(chat)
    assert client.get(admin_url("conversation_delete", chat.id)).status_code == 403
    assert client.post(admin_url("conversation_delete", chat.id), {"post": "yes"}).status_code == 403
    assert client.get(admin_url("message_change", reply.id)).status_code == 200  # view only
    response = client.post(admin_url("message_change", reply.id), {"content": "rewritten"})
    assert response.status_code == 403
    assert client.get(admin_url("feedback_changelist")).status_code == 200
    assert client.get(admin_url("conversationview_changelist")).status_code == 403
    assert client.get(reverse("admin:chat_user_changelist")).status_code == 403
    actions = client.get(admin_url("conversation_changelist")).context["action_form"].fields["action"].choices
    assert {name for name, _ in actions} == {"", "flag", "unflag", "mark_reviewed", "export_jsonl"}
    reply.refresh_from_db()
    assert reply.content == HOSTILE and Conversation.objects.filter(pk=chat.pk).exists()


def test_a_superuser_deletes_and_sees_who_opened_what(superuser, reviewer, chat):
    logged_in(reviewer).get(admin_url("conversation_change", chat.id))
    client = logged_in(superuser)

    response = client.get(admin_url("conversation_change", chat.id))
    assert "Opened by" in response.content.decode() and "rita" in response.content.decode()
    response = client.get(admin_url("conversationview_changelist"))
    assert response.status_code == 200
    assert [(v.viewer.username, v.conversation_id) for v in response.context["cl"].result_list] == [
        ("root", chat.id), ("rita", chat.id),
    ]
    audit = ConversationView.objects.first()
    assert client.get(admin_url("conversationview_delete", audit.id)).status_code == 403  # kept

    assert client.post(admin_url("conversation_delete", chat.id), {"post": "yes"}).status_code == 302
    assert not Conversation.objects.filter(pk=chat.pk).exists()


# --- the conversation list and page ---------------------------------------------------------


def test_the_list_counts_messages_tokens_and_feedback_without_a_query_per_row(
    reviewer, ann, chat, conversation_factory, django_assert_max_num_queries
):
    Feedback.objects.create(user=ann, message=reply_of(chat), rating="down")
    client = logged_in(reviewer)
    client.get(admin_url("conversation_changelist"))  # warm up: session, permissions, content types

    with django_assert_max_num_queries(12) as few:
        client.get(admin_url("conversation_changelist"))
    for n in range(8):
        conversation_factory(ann, title=f"More {n}")
    with django_assert_max_num_queries(len(few)):
        response = client.get(admin_url("conversation_changelist"))

    row = next(c for c in response.context["cl"].result_list if c.pk == chat.pk)
    admin = response.context["cl"].model_admin
    assert (admin.message_count(row), admin.token_count(row), admin.feedback_summary(row)) == (2, 52, "👎 1")


def changelist(client: Client, **params) -> list[str]:
    response = client.get(admin_url("conversation_changelist"), params)
    assert response.status_code == 200
    return sorted(c.title for c in response.context["cl"].result_list)


def test_search_and_filters(reviewer, ann, chat, user_factory, conversation_factory, subscribe):
    bob = user_factory("bob")
    subscribe(bob, "premium")
    turns = [("user", "Carbonara without cream?"), ("assistant", "Yes.")]
    pasta = conversation_factory(bob, turns, title="Pasta")
    Feedback.objects.create(user=bob, message=reply_of(pasta), rating="up")
    Conversation.objects.filter(pk=chat.pk).update(flagged=True)
    client = logged_in(reviewer)

    assert changelist(client, q="sourdough") == ["Starter"]  # a word in a message
    assert changelist(client, q="CARBONARA") == ["Pasta"]
    assert changelist(client, q="bob") == ["Pasta"]  # a username
    assert changelist(client, flagged__exact="1") == ["Starter"]
    assert changelist(client, feedback="up") == ["Pasta"]
    assert changelist(client, feedback="none") == ["Starter"]
    assert changelist(client, plan="premium") == ["Pasta"]
    assert changelist(client, plan="free") == ["Starter"]
    assert changelist(client, persona__id__exact=chat.persona_id) == ["Starter"]
    assert changelist(client, reviewed="no") == ["Pasta", "Starter"]


def test_bulk_flag_and_mark_reviewed(reviewer, chat, ann, conversation_factory):
    other = conversation_factory(ann, title="Other")
    client = logged_in(reviewer)
    url = admin_url("conversation_changelist")

    client.post(url, {"action": "flag", "_selected_action": [chat.id, other.id]})
    client.post(url, {"action": "unflag", "_selected_action": [other.id]})
    client.post(url, {"action": "mark_reviewed", "_selected_action": [chat.id]})

    assert set(Conversation.objects.values_list("title", "flagged", "reviewed_by")) == {
        ("Starter", True, reviewer.id), ("Other", False, None),
    }


def test_the_page_shows_the_transcript_raw_for_the_shared_sanitiser(reviewer, chat, ann):
    Feedback.objects.create(user=ann, message=reply_of(chat), rating="down", comment="Spooky")
    response = logged_in(reviewer).get(admin_url("conversation_change", chat.id))
    html = response.content.decode()

    assert "chat/render.js" in html and "purify.min.js" in html
    # The reply only as an escaped attribute, rendered by render.js: no live markup in the page.
    assert "<script>alert" not in html and "<img src=x" not in html
    assert 'data-grok-markdown="Look: &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;' in html
    assert "How do I feed a sourdough starter?" in html
    details = [
        "grok-1-tiny", "Regular v1", "seed=7", "max_new_tokens=512", "40 prompt + 12 completion; 31 prompt tokens from the prefix cache",
        "0.25 s", "1.50 s", "Spooky",
    ]
    for detail in details:
        assert detail in html, detail


def test_the_page_shows_every_branch_and_marks_those_off_the_owners_screen(reviewer, chat):
    question = chat.messages.get(role="user")
    branches.add(chat, question.pk, role="assistant", content="A second version")  # a regenerate
    edited = branches.add(chat, None, role="user", content="An edited question")
    branches.add(chat, edited.pk, role="assistant", content="The answer on screen")
    html = logged_in(reviewer).get(admin_url("conversation_change", chat.id)).content.decode()

    articles = re.findall(r'<article class="review-message review-(\w+)( review-branch)?" id="message-(\d+)"', html)
    ids = list(chat.messages.values_list("id", flat=True))
    assert [(int(pk), role, bool(off)) for role, off, pk in articles] == [
        (ids[0], "user", True), (ids[1], "assistant", True), (ids[2], "assistant", True),
        (ids[3], "user", False), (ids[4], "assistant", False),
    ]
    assert html.count("another branch: not on the owner") == 3
    assert html.count("version 1 of 2") == 2 and html.count("version 2 of 2") == 2  # the questions, the replies
    assert f"after #{question.pk}" in html and "A second version" in html


# --- export ---------------------------------------------------------------------------------


def test_the_jsonl_export_is_exact(reviewer, ann, chat, conversation_factory):
    reply = reply_of(chat)
    Feedback.objects.create(user=ann, message=reply, rating="down", comment="Odd")
    Conversation.objects.filter(pk=chat.pk).update(flagged=True, review_notes="Check the HTML.")
    second = conversation_factory(ann, [("user", "Ünïcode ✓")], title="Two")
    chat.refresh_from_db()
    question = chat.messages.get(role="user")

    response = logged_in(reviewer).post(
        admin_url("conversation_changelist"),
        {"action": "export_jsonl", "_selected_action": [second.id, chat.id]},
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson"
    assert response["Content-Disposition"].startswith('attachment; filename="conversations-')
    body = b"".join(response.streaming_content).decode()
    assert body.endswith("\n") and "Ünïcode ✓" in body  # UTF-8, not \u escapes
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines == [
        {
            "id": chat.id,
            "title": "Starter",
            "owner": "ann",
            "persona": "regular",
            "source": "web",
            "created_at": chat.created_at.isoformat(),
            "updated_at": chat.updated_at.isoformat(),
            "flagged": True,
            "reviewed_at": None,
            "reviewed_by": None,
            "review_notes": "Check the HTML.",
            "current_id": reply.id,
            "messages": [
                {
                    "id": question.id, "parent_id": None, "role": "user", "content": "How do I feed a sourdough starter?",
                    "status": "done", "finish_reason": "", "error": "",
                    "created_at": question.created_at.isoformat(), "model_name": "",
                    "persona_version": None, "generation": {}, "prompt_tokens": 0,
                    "completion_tokens": 0, "time_to_first_token": None, "duration": None,
                    "feedback": [],
                },
                {
                    "id": reply.id, "parent_id": question.id, "role": "assistant", "content": HOSTILE, "status": "done",
                    "finish_reason": "", "error": "", "created_at": reply.created_at.isoformat(),
                    "model_name": "grok-1-tiny", "persona_version": 1,
                    "generation": {"temperature": 0.8, "top_p": 0.95, "seed": 7, "max_new_tokens": 512},
                    "prompt_tokens": 40, "completion_tokens": 12, "time_to_first_token": 0.25,
                    "duration": 1.5,
                    "feedback": [{"user": "ann", "rating": "down", "comment": "Odd"}],
                },
            ],
        },
        {
            "id": second.id, "title": "Two", "owner": "ann", "persona": "grok", "source": "web",
            "created_at": second.created_at.isoformat(), "updated_at": second.updated_at.isoformat(),
            "flagged": False, "reviewed_at": None, "reviewed_by": None, "review_notes": "",
            "current_id": second.messages.get().id,
            "messages": [
                {
                    "id": second.messages.get().id, "parent_id": None, "role": "user", "content": "Ünïcode ✓",
                    "status": "done", "finish_reason": "", "error": "",
                    "created_at": second.messages.get().created_at.isoformat(), "model_name": "",
                    "persona_version": None, "generation": {}, "prompt_tokens": 0,
                    "completion_tokens": 0, "time_to_first_token": None, "duration": None,
                    "feedback": [],
                },
            ],
        },
    ]


def test_export_needs_the_export_permission(user_factory, chat):
    from django.contrib.auth.models import Permission

    staff = user_factory("vic", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="review_conversation"))
    client = logged_in(staff)
    response = client.post(
        admin_url("conversation_changelist"), {"action": "export_jsonl", "_selected_action": [chat.id]}
    )
    assert response.get("Content-Type") != "application/x-ndjson"  # the admin refuses the action


# --- every admin path that shows what was said leaves a trace -------------------------------


def views_of(viewer) -> list[int]:
    return sorted(ConversationView.objects.filter(viewer=viewer).values_list("conversation_id", flat=True))


def test_message_pages_searches_and_exports_record_who_saw_which_conversation(
    reviewer, ann, chat, conversation_factory
):
    other = conversation_factory(ann, [("user", "Plans for the weekend")], title="Weekend")
    client = logged_in(reviewer)
    assert client.get(admin_url("conversation_changelist")).status_code == 200  # titles only
    assert views_of(reviewer) == []

    response = client.get(admin_url("message_change", reply_of(chat).id))
    assert response.status_code == 200 and "sourdough" not in str(reply_of(chat))
    assert views_of(reviewer) == [chat.id]

    response = client.get(admin_url("message_changelist"), {"q": "weekend"})
    assert [m.conversation_id for m in response.context["cl"].result_list] == [other.id]
    assert views_of(reviewer) == [chat.id, other.id]

    ConversationView.objects.all().delete()
    response = client.get(admin_url("conversation_changelist"), {"q": "sourdough"})  # message text
    assert [c.id for c in response.context["cl"].result_list] == [chat.id]
    assert views_of(reviewer) == [chat.id]

    ConversationView.objects.all().delete()
    response = client.post(
        admin_url("conversation_changelist"),
        {"action": "export_jsonl", "_selected_action": [chat.id, other.id]},
    )
    assert len(b"".join(response.streaming_content).splitlines()) == 2
    assert views_of(reviewer) == [chat.id, other.id]

    ConversationView.objects.all().delete()
    Feedback.objects.create(user=ann, message=reply_of(chat), rating="down")
    for name in ("feedback_changelist", "usageentry_changelist"):  # they name messages, not their text
        response = logged_in(reviewer).get(admin_url(name))
        assert response.status_code in (200, 403) and b"Look: " not in response.content
    assert views_of(reviewer) == []


def test_people_are_told_that_staff_may_review_conversations(client, ann):
    notice = b"Staff may read your conversations"
    assert notice in client.get(reverse("signup")).content
    client.force_login(ann)
    assert notice in client.get(reverse("api_keys")).content
    assert notice in client.get(reverse("settings")).content
