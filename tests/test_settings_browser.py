"""What a person clicks on the settings page and around it, in headless Chromium against the
embedded server (tests/test_browser.py's setup): the plan box updating after a reply, search
opening the conversation at the matching message, the Share
dialog and the shared page seen without an account, then the settings page: instructions,
export, import, revoking the link, deleting the account."""

import io
import json
import zipfile

import pytest

from tests.browser import ARTIFACTS, wait_until
from tests.test_browser import PASSWORD, REPLY_TIMEOUT_MS, page, sign_up  # noqa: F401 (fixture)

pytestmark = pytest.mark.browser


def test_plan_box_share_link_and_the_settings_page(page, browser, embedded_server, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    sign_up(page)
    left = int(page.inner_text("[data-plan-messages-left]"))

    # One reply, stopped once it streams (a stopped reply is charged too): when it ends, the
    # plan box shows one message fewer, with no reload.
    page.fill("#composer-input", "Hello there")
    page.press("#composer-input", "Enter")
    page.wait_for_selector('.message-assistant[data-status="streaming"]', timeout=REPLY_TIMEOUT_MS)
    if page.is_visible("#stop-button"):  # (unless the demo model already ended it)
        page.click("#stop-button")
    page.wait_for_selector(
        '.message-assistant:not([data-status="queued"]):not([data-status="streaming"])',
        timeout=REPLY_TIMEOUT_MS,
    )
    wait_until(page, f"() => document.querySelector('[data-plan-messages-left]').textContent === '{left - 1}'"
    )

    # Search: the result's snippet marks the match, and opens the conversation at the message.
    user_message_id = page.locator(".message-user").first.get_attribute("data-id")
    page.goto("/")
    page.fill("#conversation-search", "THERE")
    page.wait_for_selector("#search-list .conversation-snippet mark")
    assert page.inner_text("#search-list .conversation-snippet mark") == "there"
    page.click("#search-list .conversation-link")
    page.wait_for_url(f"**/c/*/#m-{user_message_id}")
    page.wait_for_selector(f'#m-{user_message_id}.is-linked')

    # Share: the dialog makes a link under the name typed.
    page.click("#share-button")
    page.fill("#share-name", "Pat")
    page.click("#share-create")
    wait_until(page, "() => document.getElementById('share-url').value.includes('/s/')")
    url = page.input_value("#share-url")
    assert page.is_visible("#share-copy") and page.is_hidden("#share-error")
    page.screenshot(path=str(ARTIFACTS / "share-dialog.png"))
    page.click("#share-close")

    # Someone with the link and no account sees a read-only copy, rendered through render.js.
    stranger = browser.new_context()
    shared = stranger.new_page()
    errors = []
    shared.on("pageerror", lambda error: errors.append(str(error)))
    response = shared.goto(url)
    assert response.status == 200 and response.headers["x-robots-tag"] == "noindex, nofollow"
    assert shared.inner_text(".shared-by").startswith("Shared by Pat")
    assert shared.inner_text(".message-user .message-body") == "Hello there"
    wait_until(shared, "() => document.querySelector('.message-assistant .message-body').childElementCount > 0")
    assert shared.locator("#composer-input").count() == 0
    shared.screenshot(path=str(ARTIFACTS / "shared.png"))
    assert not errors

    # The settings page, from the chat page's sidebar.
    page.click("#settings-link")
    page.wait_for_url("**/settings/")
    page.fill("#custom-instructions", "Answer like a pirate.")
    page.click("#instructions button[type=submit]")
    page.wait_for_selector(".settings-message")
    assert "saved" in page.inner_text(".settings-message")
    assert page.input_value("#custom-instructions") == "Answer like a pirate."
    assert page.locator("#shares li").count() == 1
    page.screenshot(path=str(ARTIFACTS / "settings.png"), full_page=True)

    # Export, then import the same zip: two conversations.
    with page.expect_download() as download:
        page.click("#export a.button")
    exported = tmp_path / "export.zip"
    download.value.save_as(exported)
    data = json.loads(zipfile.ZipFile(io.BytesIO(exported.read_bytes())).read("conversations.json"))
    assert [m["content"] for m in data["conversations"][0]["messages"]][0] == "Hello there"
    page.set_input_files("#import-file", str(exported))
    page.click("#import button[type=submit]")
    page.wait_for_selector(".settings-message")
    assert page.inner_text(".settings-message") == "Imported 1 conversation."
    # A file that is not an export is refused with a message.
    bad = tmp_path / "notes.json"
    bad.write_text('{"hello": 1}')
    page.set_input_files("#import-file", str(bad))
    page.click("#import button[type=submit]")
    page.wait_for_selector(".settings-message-error")
    assert "Nothing was imported." in page.inner_text(".settings-message-error")
    page.goto("/")
    assert page.locator("#conversation-list .conversation-item").count() == 2

    # Revoke the link: the stranger's copy is gone.
    page.goto("/settings/")
    page.click("#shares button[type=submit]")
    page.wait_for_selector(".settings-message")
    assert page.locator("#shares li").count() == 0
    assert shared.goto(url).status == 404
    stranger.close()

    # Delete the account: a wrong password deletes nothing; the right one, everything.
    page.fill("#delete-password", "not my password")
    page.click("#delete-form button[type=submit]")
    page.wait_for_selector(".settings-message-error")
    page.fill("#delete-password", PASSWORD)
    page.click("#delete-form button[type=submit]")
    page.wait_for_selector("text=Your account is deleted")
    page.goto("/")
    page.wait_for_url("**/accounts/login/**")
