"""Share links (chat/sharing.py): a snapshot at an unguessable URL, refreshed by sharing again,
listed and revoked in the settings, public unless GROKWEB_SHARE_PUBLIC is off, never indexed,
showing nothing of the owner but the display name they chose."""

import pytest
from django.test import Client
from django.urls import reverse

from chat import branches
from chat.sharing import do_share

pytestmark = pytest.mark.django_db


@pytest.fixture
def chat(ann, conversation_factory):
    return conversation_factory(ann, [("user", "What is 2+2?"), ("assistant", "**Four**")], title="Sums")


def share(client, conversation_id, **fields):
    return client.post(
        reverse("conversation_share", args=[conversation_id]), fields, content_type="application/json"
    )


def test_a_shared_snapshot_opens_for_anyone_without_an_account_and_is_not_indexed(ann_client, chat):
    response = share(ann_client, chat.id, display_name="  Ann   the Sharer ")
    assert response.status_code == 200
    url = response.json()["url"]
    token = url.rstrip("/").rsplit("/", 1)[-1]
    assert url.startswith("http://testserver/s/") and len(token) >= 32
    page = Client().get(url)
    assert page.status_code == 200 and page["X-Robots-Tag"] == "noindex, nofollow"
    html = page.content.decode()
    assert '<meta name="robots" content="noindex, nofollow">' in html
    assert "Shared by Ann the Sharer" in html and "What is 2+2?" in html
    assert 'data-grok-markdown="**Four**"' in html  # rendered by render.js, not as raw HTML
    assert "chat/render.js" in html
    assert "ann" not in html.lower().replace("ann the sharer", "")  # nothing else of the owner


def test_the_snapshot_keeps_what_existed_and_sharing_again_refreshes_the_same_link(ann, chat):
    first = do_share(ann, chat.id)
    branches.append(chat, role="user", content="And 3+3?")
    branches.append(chat, role="assistant", status="streaming", content="Si")  # not finished: not shared
    assert "And 3+3?" not in Client().get(reverse("shared", args=[first.token])).content.decode()
    again = do_share(ann, chat.id)
    assert again.token == first.token
    assert [m["content"] for m in again.messages] == ["What is 2+2?", "**Four**", "And 3+3?"]
    assert "And 3+3?" in Client().get(reverse("shared", args=[first.token])).content.decode()


def test_the_snapshot_is_the_branch_on_screen_only(ann, chat):
    question = chat.messages.first()
    branches.add(chat, question.pk, role="assistant", content="Five, for large values of two")  # a regenerate
    assert [m["content"] for m in do_share(ann, chat.id).messages] == ["What is 2+2?", "Five, for large values of two"]
    chat.current = question.children.first()  # back to the first version
    chat.save()
    assert [m["content"] for m in do_share(ann, chat.id).messages] == ["What is 2+2?", "**Four**"]


def test_links_are_listed_in_the_settings_and_a_revoked_one_is_gone(ann_client, ann, chat):
    token = do_share(ann, chat.id).token
    page = ann_client.get(reverse("settings")).content.decode()
    assert reverse("shared", args=[token]) in page and "Sums" in page
    share_id = ann.conversations.get().shares.get().id
    response = ann_client.post(reverse("share_revoke", args=[share_id]), follow=True)
    assert "no longer opens" in response.content.decode()
    assert Client().get(reverse("shared", args=[token])).status_code == 404
    assert reverse("shared", args=[token]) not in ann_client.get(reverse("settings")).content.decode()
    assert do_share(ann, chat.id).token != token  # sharing after a revoke makes a new link


def test_a_deleted_conversation_takes_its_links_with_it(ann_client, ann, chat):
    token = do_share(ann, chat.id).token
    ann_client.post(reverse("conversation_delete", args=[chat.id]))
    assert Client().get(reverse("shared", args=[token])).status_code == 404


def test_others_cannot_share_or_revoke_what_is_not_theirs(client, ann, chat, user_factory):
    do_share(ann, chat.id)
    client.force_login(user_factory("bob"))
    assert share(client, chat.id).status_code == 404
    response = client.post(reverse("share_revoke", args=[chat.shares.get().id]), follow=True)
    assert "No such share link." in response.content.decode()
    assert chat.shares.get().revoked_at is None


def test_bad_shares_are_refused_clearly(ann_client, ann, conversation_factory, chat):
    empty = conversation_factory(ann, [])
    assert share(ann_client, empty.id).json()["error"]["message"] == "There is nothing to share yet."
    response = share(ann_client, chat.id, display_name="x" * 81)
    assert response.status_code == 413 and "80 characters" in response.json()["error"]["message"]
    assert share(ann_client, chat.id, display_name=5).status_code == 400
    assert not chat.shares.exists()
    assert Client().get("/s/not-a-real-token/").status_code == 404


def test_with_sharing_not_public_a_viewer_must_sign_in(ann, chat, settings, user_factory):
    settings.GROKWEB_SHARE_PUBLIC = False
    url = reverse("shared", args=[do_share(ann, chat.id).token])
    response = Client().get(url)
    assert response.status_code == 302 and reverse("login") in response.url
    viewer = Client()
    viewer.force_login(user_factory("bob"))
    assert viewer.get(url).status_code == 200
