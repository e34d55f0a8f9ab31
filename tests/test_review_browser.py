"""A reviewer in headless Chromium: logs into the admin, finds a conversation by a word in one of
its messages, and reads its reply rendered by the chat page's sanitiser, inert."""

import pytest

from tests.browser import ARTIFACTS, chromium, csp_violations

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

PASSWORD = "a-Strong-pass-42"
REPLY = 'Feed it **daily** with flour and water. <img src=x onerror="window.__pwned = 1">'


@pytest.fixture
def conversations(user_factory, conversation_factory):
    """Made before the browser starts: Django refuses database calls from the thread Playwright's
    sync API runs its event loop in."""
    from django.contrib.auth.models import Group

    reviewer = user_factory("rita", is_staff=True)
    reviewer.groups.add(Group.objects.get(name="Reviewer"))
    ann = user_factory("ann")
    conversation_factory(ann, [("user", "Best pizza dough?"), ("assistant", "Tipo 00.")], title="Pizza")
    return conversation_factory(
        ann, [("user", "How do I keep my sourdough starter alive?"), ("assistant", REPLY)],
        persona="regular", title="Bread questions",
    )


def test_a_reviewer_finds_a_conversation_by_a_word_in_a_message(live_server, conversations):
    from playwright.sync_api import expect

    # Started here, not as the `browser` fixture: the conversations must be made first.
    with chromium() as browser:
        page = browser.new_page(base_url=live_server.url)
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        violations = csp_violations(page)
        page.goto("/admin/")
        page.fill("#id_username", "rita")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.click("a[href='/admin/chat/conversation/']")

        page.fill("#searchbar", "sourdough")
        page.press("#searchbar", "Enter")
        results = page.locator("#result_list tbody tr")
        expect(results).to_have_count(1)
        expect(results.first).to_contain_text("Bread questions")

        results.first.locator("a", has_text="Bread questions").click()
        reply = page.locator(".review-assistant .review-body")
        expect(reply.locator("strong")).to_have_text("daily")  # markdown rendered
        expect(page.locator(".review-user .review-body")).to_have_text(
            "How do I keep my sourdough starter alive?"
        )
        assert reply.locator("img").count() == 0
        assert page.evaluate("window.__pwned") is None
        assert not errors, errors
        assert not violations, violations  # the login, the list and the review page
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "admin-review.png"), full_page=True)
