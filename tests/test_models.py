"""Models, the seeded personas and persona versioning through the admin."""

import pytest
from django.urls import reverse

from chat import branches
from chat.models import Message, Persona, PersonaVersion

pytestmark = pytest.mark.django_db


def test_the_two_personas_are_seeded_with_a_first_version():
    grok, regular = Persona.objects.all()
    assert (grok.slug, grok.name) == ("grok", "Grok")
    assert (regular.slug, regular.name) == ("regular", "Regular")
    assert grok.current_version.number == 1
    assert "Grok" in grok.current_version.system_prompt
    assert "Regular" in regular.current_version.system_prompt


def test_set_system_prompt_adds_a_version_only_when_the_text_changes(user_factory):
    grok = Persona.objects.get(slug="grok")
    first = grok.current_version
    staff = user_factory("staff", is_staff=True)

    assert grok.set_system_prompt(first.system_prompt, created_by=staff) == first
    second = grok.set_system_prompt("You are Grok, briefly.", created_by=staff)

    assert (second.number, second.created_by) == (2, staff)
    assert grok.current_version == second
    assert list(grok.versions.values_list("number", flat=True)) == [2, 1]  # the old one stays


def test_active_reply_is_the_queued_or_streaming_reply(user_factory, conversation_factory):
    conversation = conversation_factory(user_factory("ann"))
    assert conversation.active_reply() is None
    reply = branches.append(conversation, role="assistant", status=Message.Status.STREAMING)
    assert reply.is_active
    assert conversation.active_reply() == reply
    reply.status = Message.Status.STOPPED
    reply.save()
    assert conversation.active_reply() is None


@pytest.fixture
def editor(user_factory):
    return user_factory("editor", is_staff=True, is_superuser=True)


@pytest.fixture
def staff_client(client, editor):
    client.force_login(editor)
    return client


def persona_form(persona: Persona, **changes) -> dict:
    """The admin change form as a browser posts it, with the read-only version inline."""
    count = persona.versions.count()
    data = {
        "name": persona.name,
        "slug": persona.slug,
        "description": persona.description,
        "is_active": "on",
        "sort_order": persona.sort_order,
        "system_prompt": persona.current_version.system_prompt.replace("\n", "\r\n"),
        "versions-TOTAL_FORMS": count,
        "versions-INITIAL_FORMS": count,
        "versions-MIN_NUM_FORMS": 0,
        "versions-MAX_NUM_FORMS": 0,
    }
    return data | changes


def test_admin_shows_the_current_prompt_editable_and_old_versions_read_only(staff_client):
    grok = Persona.objects.get(slug="grok")
    grok.set_system_prompt("The newest prompt.")
    response = staff_client.get(reverse("admin:chat_persona_change", args=[grok.pk]))

    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form["system_prompt"].value() == "The newest prompt."
    [inline] = response.context["inline_admin_formsets"]
    assert not inline.has_change_permission and not inline.has_add_permission
    assert "a conversation between a User and Grok" in response.content.decode()  # version 1


def test_admin_saving_a_changed_prompt_creates_a_new_version_by_the_staff_user(staff_client):
    grok = Persona.objects.get(slug="grok")
    old = grok.current_version
    url = reverse("admin:chat_persona_change", args=[grok.pk])

    data = persona_form(grok, system_prompt="You are Grok.\r\nBe brief.")
    response = staff_client.post(url, data)

    assert response.status_code == 302, response.context["adminform"].form.errors
    new = grok.current_version
    assert (new.number, new.system_prompt) == (2, "You are Grok.\nBe brief.")
    assert new.created_by.username == "editor"
    old.refresh_from_db()
    assert old.system_prompt.startswith("The following is a conversation")  # untouched


def test_admin_saving_other_fields_keeps_the_version(staff_client):
    grok = Persona.objects.get(slug="grok")
    url = reverse("admin:chat_persona_change", args=[grok.pk])

    # The prompt comes back with the browser's CRLF line ends: still the same text.
    response = staff_client.post(url, persona_form(grok, description="Now with more wit."))

    assert response.status_code == 302
    grok.refresh_from_db()
    assert grok.description == "Now with more wit."
    assert grok.versions.count() == 1


def test_admin_adding_a_persona_creates_its_first_version(staff_client):
    response = staff_client.post(
        reverse("admin:chat_persona_add"),
        {
            "name": "Pirate",
            "slug": "pirate",
            "description": "",
            "is_active": "on",
            "sort_order": 5,
            "system_prompt": "A conversation with Pirate, who talks like one.",
            "versions-TOTAL_FORMS": 0,
            "versions-INITIAL_FORMS": 0,
            "versions-MIN_NUM_FORMS": 0,
            "versions-MAX_NUM_FORMS": 0,
        },
    )

    assert response.status_code == 302
    version = PersonaVersion.objects.get(persona__slug="pirate")
    assert (version.number, version.created_by.username) == (1, "editor")


def test_admin_lists_and_conversation_page_open(staff_client, editor, conversation_factory):
    conversation = conversation_factory(editor)
    for name in ["conversation", "message", "user", "persona"]:
        assert staff_client.get(reverse(f"admin:chat_{name}_changelist")).status_code == 200
    response = staff_client.get(reverse("admin:chat_conversation_change", args=[conversation.pk]))
    assert response.status_code == 200
    assert "Hello!" in response.content.decode()  # its messages, inline
