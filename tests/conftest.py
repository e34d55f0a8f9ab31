"""Fixtures and factories shared by the whole suite."""

import pytest


@pytest.fixture
def user_factory(django_user_model):
    """Make users with a known password: user_factory("ann") -> User."""

    def make(username: str, password: str = "a-Strong-pass-42", **fields):
        return django_user_model.objects.create_user(username=username, password=password, **fields)

    return make


@pytest.fixture
def conversation_factory(db):
    """Make a conversation holding finished turns:
    conversation_factory(user, [("user", "hi"), ("assistant", "hello")], persona="grok")."""
    from chat.models import Conversation, Persona

    def make(owner, turns=(("user", "Hi"), ("assistant", "Hello!")), persona="grok", **fields):
        conversation = Conversation.objects.create(
            owner=owner, persona=Persona.objects.get(slug=persona), **fields
        )
        for role, content in turns:
            conversation.messages.create(role=role, content=content)
        return conversation

    return make


@pytest.fixture
def job_calls(monkeypatch):
    """Record chat.jobs.enqueue / cancel instead of queueing: {"enqueue": [ids], "cancel": [ids]}.
    They run on commit: tests see them inside django_capture_on_commit_callbacks(execute=True)."""
    from chat import jobs

    calls = {"enqueue": [], "cancel": []}
    monkeypatch.setattr(jobs, "enqueue", calls["enqueue"].append)
    monkeypatch.setattr(jobs, "cancel", calls["cancel"].append)
    return calls


@pytest.fixture
def subscribe(db):
    """Put a user on a plan: subscribe(user, "premium", status="past_due") -> Subscription.
    Users without one are on Free (chat.plans)."""
    from chat.models import Plan, Subscription

    def make(user, plan: str = "premium", **fields):
        subscription, _ = Subscription.objects.update_or_create(
            user=user, defaults={"plan": Plan.objects.get(slug=plan), **fields}
        )
        return subscription

    return make


@pytest.fixture
def api_key_factory(db):
    """Make an API key for the OpenAI-compatible API: api_key_factory(user) -> the key itself."""
    from chat.api import do_create_api_key

    def make(user, name: str = "tests") -> str:
        return do_create_api_key(user, name)[1]

    return make
