"""A user's own settings and data (chat/account.py, chat/settings_views.py): the settings page,
custom instructions in the prompt, the plan box's endpoint, export, import, deleting the account."""

import io
import json
import zipfile

import pytest
from django.urls import reverse

from chat import account, branches, jobs
from chat.errors import ChatError
from chat.models import Conversation, Message, Plan, UsageEntry, User
from chat.replies import do_start_reply
from tests.test_prompts import CharTokenizer

pytestmark = pytest.mark.django_db

PASSWORD = "a-Strong-pass-42"


def start(reply: Message) -> str:
    """The prompt text the worker builds for `reply`."""
    tokenizer = CharTokenizer()
    started = do_start_reply(jobs.Job(reply.pk, ""), tokenizer, context_len=100_000, model_name="tiny")
    return tokenizer.decode(started.prompt_ids)


def queued_reply(conversation: Conversation) -> Message:
    return branches.append(conversation, role="assistant", status="queued", generation={"max_new_tokens": 8})


# -- the settings page and the plan box ----------------------------------------------------------


def test_the_settings_page_holds_every_section_and_the_chat_page_links_it(ann_client):
    chat = ann_client.get(reverse("chat")).content.decode()
    assert f'href="{reverse("settings")}"' in chat
    page = ann_client.get(reverse("settings")).content.decode()
    for section in ("account", "api-keys", "instructions", "shares", "export", "import", "delete"):
        assert f'id="{section}"' in page
    for name in ("password_change", "api_keys", "export_download", "import_upload", "account_delete"):
        assert reverse(name) in page
    assert "usage ledger" in page  # what deleting keeps is said before anyone deletes


def test_the_settings_page_needs_a_login(client):
    response = client.get(reverse("settings"))
    assert response.status_code == 302 and reverse("login") in response.url


def test_the_plan_status_endpoint_counts_what_was_used(ann_client, ann, conversation_factory):
    before = ann_client.get(reverse("plan_status")).json()
    reply = branches.append(conversation_factory(ann, [("user", "Hi")]), 
        role="assistant", content="Hello", prompt_tokens=7, completion_tokens=3
    )
    UsageEntry.objects.create(user=ann, message=reply, prompt_tokens=7, completion_tokens=3, created_at=reply.created_at)
    after = ann_client.get(reverse("plan_status")).json()
    assert after["plan"] == before["plan"] == "Free"
    assert after["messages_left"] == before["messages_left"] - 1
    assert after["tokens_left"] == before["tokens_left"] - 10


# -- custom instructions -------------------------------------------------------------------------


def test_instructions_are_saved_and_shown_on_the_settings_page(ann_client, ann):
    response = ann_client.post(reverse("instructions_save"), {"instructions": "  Answer in French.  "})
    assert response.status_code == 302 and response.url.endswith("#instructions")
    ann.refresh_from_db()
    assert ann.custom_instructions == "Answer in French."
    page = ann_client.get(response.url).content.decode()
    assert "Answer in French.</textarea>" in page and "Custom instructions saved" in page


def test_instructions_longer_than_the_plan_allows_are_refused_and_nothing_changes(ann_client, ann):
    Plan.objects.filter(slug="free").update(instructions_chars=10)
    response = ann_client.post(reverse("instructions_save"), {"instructions": "x" * 11}, follow=True)
    assert "up to 10 characters" in response.content.decode()
    ann.refresh_from_db()
    assert ann.custom_instructions == ""
    with pytest.raises(ChatError) as refused:
        account.check_instructions(ann, ["not text"])
    assert refused.value.code == "bad_frame"


def test_instructions_follow_the_persona_in_the_prompt_and_are_recorded_on_the_reply(
    ann, conversation_factory
):
    account.do_set_instructions(ann, "Call me Captain.")
    conversation = conversation_factory(ann, [("user", "Hi")])
    reply = queued_reply(conversation)
    prompt = start(reply)
    persona_text = conversation.persona.current_version.system_prompt.strip()
    assert prompt.startswith(f"{persona_text}\n\nCall me Captain.\n\nUser: Hi")
    reply.refresh_from_db()
    assert reply.generation["custom_instructions"] == "Call me Captain."
    assert reply.persona_version == conversation.persona.current_version


def test_a_smaller_plan_cuts_the_instructions_the_model_sees_and_api_chats_have_none(
    ann, conversation_factory
):
    account.do_set_instructions(ann, "Be brief. Be kind.")
    Plan.objects.filter(slug="free").update(instructions_chars=9)
    reply = queued_reply(conversation_factory(ann, [("user", "Hi")]))
    assert "Be brief.\n\nUser: Hi" in start(reply)
    api_reply = queued_reply(conversation_factory(ann, [("user", "Hi")], source="api"))
    assert "Be brief" not in start(api_reply)
    api_reply.refresh_from_db()
    assert "custom_instructions" not in api_reply.generation


# -- export and import ---------------------------------------------------------------------------


def zip_of(**files: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def upload(client, data: bytes, name: str = "export.zip"):
    file = io.BytesIO(data)
    file.name = name
    return client.post(reverse("import_upload"), {"file": file}, follow=True)


def test_export_is_a_zip_of_the_tree_as_json_and_markdown(ann_client, ann, user_factory, conversation_factory):
    chat = conversation_factory(ann, [("user", "2+2?"), ("assistant", "**4**")], title="Sums")
    conversation_factory(user_factory("bob"), [("user", "bob's secret")])
    response = ann_client.get(reverse("export_download"))
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"].startswith('attachment; filename="grokweb-')
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    data = json.loads(archive.read("conversations.json"))
    assert data["format"] == "grokweb" and data["version"] == 1
    (exported,) = data["conversations"]
    first, second = exported["messages"]
    assert (exported["title"], exported["persona"]) == ("Sums", "grok")
    assert (first["role"], first["content"], first["parent_id"]) == ("user", "2+2?", None)
    assert (second["content"], second["parent_id"]) == ("**4**", first["id"])
    markdown = archive.read(f"markdown/{chat.id}-sums.md").decode()
    assert markdown == "# Sums\n\n**User:**\n\n2+2?\n\n**Grok:**\n\n**4**\n"
    assert "bob" not in response.content.decode("latin-1")


def tree(conversation) -> list[tuple]:
    """(role, content, the index of its parent), in order, and the index of the message on screen."""
    messages = list(conversation.messages.all())
    index = {m.pk: i for i, m in enumerate(messages)}
    shown = branches.Tree(messages).shown_leaf(conversation)
    return [(m.role, m.content, index.get(m.parent_id)) for m in messages], index[shown]


def test_an_export_imports_back_with_every_branch(ann_client, ann, user_factory, conversation_factory):
    chat = conversation_factory(ann, [("user", "Hi"), ("assistant", "Hello!")], title="Greeting", persona="regular")
    hi = chat.messages.first()
    branches.add(chat, None, role="user", content="Hi again")  # an edit: a second version of "Hi"
    branches.add(chat, chat.current_id, role="assistant", content="Hey.")
    chat.current = hi.children.get()  # the user went back to the first version
    chat.save()
    exported = ann_client.get(reverse("export_download")).content
    bob = user_factory("bob")
    ann_client.force_login(bob)
    page = upload(ann_client, exported).content.decode()
    assert "Imported 1 conversation." in page
    (imported,) = bob.conversations.all()
    assert (imported.title, imported.persona.slug) == ("Greeting", "regular")
    assert tree(imported) == tree(chat) == (
        [("user", "Hi", None), ("assistant", "Hello!", 0), ("user", "Hi again", None), ("assistant", "Hey.", 2)], 1
    )
    assert set(imported.messages.values_list("status", flat=True)) == {"done"}


CHATGPT = [
    {
        "title": "Edited question",
        "current_node": "b2",
        "mapping": {
            "root": {"id": "root", "message": None, "parent": None, "children": ["sys"]},
            "sys": {"id": "sys", "parent": "root", "children": ["u1", "u1b"],
                    "message": {"author": {"role": "system"}, "content": {"content_type": "text", "parts": [""]}}},
            "u1": {"id": "u1", "parent": "sys", "children": ["a1"],
                   "message": {"author": {"role": "user"}, "content": {"content_type": "text", "parts": ["first try"]}}},
            "a1": {"id": "a1", "parent": "u1", "children": [],
                   "message": {"author": {"role": "assistant"}, "content": {"content_type": "text", "parts": ["old answer"]}}},
            "u1b": {"id": "u1b", "parent": "sys", "children": ["b2"],
                    "message": {"author": {"role": "user"},
                                "content": {"content_type": "multimodal_text", "parts": [{"asset": "img"}, "second try"]}}},
            "b2": {"id": "b2", "parent": "u1b", "children": [],
                   "message": {"author": {"role": "assistant"}, "content": {"content_type": "text", "parts": ["new answer"]}}},
        },
    }
]


def test_chatgpts_export_imports_its_tree_as_branches(ann_client, ann):
    page = upload(ann_client, json.dumps(CHATGPT).encode(), "conversations.json").content.decode()
    assert "Imported 1 conversation." in page
    (imported,) = ann.conversations.all()
    assert imported.title == "Edited question"
    # The system message is left out: both versions of the question are first messages.
    assert tree(imported) == (
        [("user", "first try", None), ("assistant", "old answer", 0), ("user", "second try", None), ("assistant", "new answer", 2)],
        3,  # current_node: the version the user last saw
    )
    # ChatGPT's own zip holds conversations.json among other files.
    upload(ann_client, zip_of(**{"chat.html": "<html>", "conversations.json": json.dumps(CHATGPT)}))
    assert ann.conversations.count() == 2


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00not json", "neither a zip nor JSON"),
        (zip_of(**{"notes.txt": "hi"}), "no conversations.json"),
        (b'{"hello": 1}', "neither a grokweb export nor ChatGPT"),
        (b"[]", "no conversations"),
        (json.dumps([{"title": "x"}]).encode(), "no mapping"),
        (json.dumps([CHATGPT[0] | {"mapping": CHATGPT[0]["mapping"] | {"u2": {"parent": "nowhere"}}}]).encode(), "not in it"),
        (
            json.dumps({"format": "grokweb", "version": 1, "conversations": [
                {"title": "loop", "messages": [{"id": 1, "parent_id": 2, "role": "user", "content": "x"},
                                               {"id": 2, "parent_id": 1, "role": "assistant", "content": "y"}]},
            ]}).encode(),
            "whose parent does not come before it",
        ),
        (json.dumps({"format": "grokweb", "version": 9, "conversations": []}).encode(), "unknown version"),
        (
            json.dumps({"format": "grokweb", "version": 1, "conversations": [
                {"title": "ok", "messages": [{"role": "user", "content": "fine"}]},
                {"title": "bad", "messages": [{"role": "system", "content": "x"}]},
            ]}).encode(),
            "Conversation 2 has a message without a known role",
        ),
        (
            json.dumps({"format": "grokweb", "version": 1, "conversations": [
                {"title": "long", "messages": [{"role": "user", "content": "x" * (account.IMPORT_MAX_MESSAGE_CHARS + 1)}]},
            ]}).encode(),
            "longer than",
        ),
        (
            json.dumps({"format": "grokweb", "version": 1, "conversations": [
                {"title": str(i), "messages": []} for i in range(account.IMPORT_MAX_CONVERSATIONS + 1)
            ]}).encode(),
            f"more than {account.IMPORT_MAX_CONVERSATIONS} conversations",
        ),
        (
            json.dumps({"format": "grokweb", "version": 1, "conversations": [
                {"title": str(i), "messages": [{"role": "user", "content": "hi"}] * 1000} for i in range(101)
            ]}).encode(),
            f"more than {account.IMPORT_MAX_TOTAL_MESSAGES} messages",
        ),
    ],
)
def test_a_bad_file_is_refused_with_a_clear_message_and_imports_nothing(ann_client, ann, data, message):
    page = upload(ann_client, data).content.decode()
    assert "Nothing was imported." in page and message in page
    assert not ann.conversations.exists() and not Message.objects.exists()


def test_a_file_over_the_size_limit_is_refused_and_so_is_a_zip_that_inflates_past_it(ann_client, ann, settings):
    settings.GROKWEB_IMPORT_MAX_BYTES = 2**20
    page = upload(ann_client, b"[" + b" " * 2**20 + b"]").content.decode()
    assert "larger than 1 MiB" in page
    bomb = zip_of(**{"conversations.json": "[" + " " * 2**21 + "]"})
    assert len(bomb) < 2**20
    assert "conversations.json is larger than 1 MiB" in upload(ann_client, bomb).content.decode()
    assert not ann.conversations.exists()


def test_import_without_a_file_says_so(ann_client):
    page = ann_client.post(reverse("import_upload"), follow=True).content.decode()
    assert "Choose a file to import." in page


# -- deleting the account ------------------------------------------------------------------------


def test_a_wrong_password_deletes_nothing(ann_client, ann, conversation_factory):
    conversation_factory(ann)
    page = ann_client.post(reverse("account_delete"), {"password": "wrong"}, follow=True).content.decode()
    assert "nothing was deleted" in page
    assert User.objects.filter(pk=ann.pk).exists() and ann.conversations.count() == 1


def test_deleting_the_account_deletes_everything_but_the_anonymised_ledger(
    ann_client, ann, user_factory, conversation_factory, api_key_factory, job_calls, django_capture_on_commit_callbacks
):
    from chat.models import BillingEvent
    from chat.sharing import do_share

    chat = conversation_factory(ann, [("user", "Hi"), ("assistant", "Hello")])
    reply = chat.messages.get(role="assistant")
    UsageEntry.objects.create(user=ann, message=reply, prompt_tokens=5, completion_tokens=2, created_at=reply.created_at)
    running = branches.append(chat, role="assistant", status="streaming")
    api_key_factory(ann)
    share = do_share(ann, chat.id)
    bobs = conversation_factory(user_factory("bob"))
    paid = BillingEvent.objects.create(
        event_id="evt_1", type="subscription.updated", outcome="applied",
        payload={"id": "evt_1", "data": {"username": "ann", "plan": "premium"}},
    )
    bobs_event = BillingEvent.objects.create(
        event_id="evt_2", type="subscription.updated", outcome="applied", payload={"data": {"username": "bob"}}
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = ann_client.post(reverse("account_delete"), {"password": PASSWORD})
    assert response.status_code == 200 and "Your account is deleted" in response.content.decode()
    assert not User.objects.filter(pk=ann.pk).exists()
    assert not Conversation.objects.filter(pk=chat.pk).exists()
    assert not Message.objects.filter(conversation_id=chat.pk).exists()
    assert job_calls["cancel"] == [running.pk]
    (entry,) = UsageEntry.objects.all()
    assert (entry.user, entry.message, entry.prompt_tokens, entry.completion_tokens) == (None, None, 5, 2)
    assert ann_client.get(reverse("shared", args=[share.token])).status_code == 404
    assert ann_client.get(reverse("chat")).status_code == 302  # signed out
    assert Conversation.objects.filter(pk=bobs.pk).exists()
    paid.refresh_from_db()
    bobs_event.refresh_from_db()
    assert paid.payload == {"id": "evt_1", "data": {"username": "", "plan": "premium"}}
    assert bobs_event.payload["data"]["username"] == "bob"
