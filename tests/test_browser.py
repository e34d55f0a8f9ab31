"""The chat page in headless Chromium against a real server.

Daphne runs as a subprocess in the embedded default mode (SQLite in a temporary GROKWEB_VAR_DIR,
the in-memory channel layer, the inference worker in a thread, the tiny demo checkpoint), and
Playwright drives Debian's Chromium through it: sign up, stream a reply, stop it, reload,
search, theme, composer keys — and a reply full of hostile markdown that must stay inert.
Screenshots land in test-artifacts/ (gitignored) for a human to look at.
"""

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.browser import ARTIFACTS, csp_violations, wait_until

pytestmark = pytest.mark.browser

PASSWORD = "a-Strong-pass-42"
REPLY_TIMEOUT_MS = 90_000  # generous (a shared 2-core machine) but finite


@pytest.fixture
def page(browser, embedded_server):
    context = browser.new_context(
        base_url=embedded_server.url, viewport={"width": 1280, "height": 820}, color_scheme="light"
    )
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.js_errors = errors
    page.csp_violations = csp_violations(page)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not page.csp_violations, page.csp_violations


def sign_up(page) -> str:
    username = "user" + uuid.uuid4().hex[:8]
    page.goto("/accounts/signup/")
    page.fill("#id_username", username)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/")
    page.wait_for_selector("#composer-input")
    return username


def log_in(page, username: str) -> None:
    page.goto("/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#composer-input")


def reply_state(page, message_id: int) -> dict:
    return page.evaluate(
        "id => { const r = grokChat.state.messages.get(id);"
        " return r ? {status: r.status, content: r.content, length: r.length} : null; }",
        message_id,
    )


def same_text(a: str, b: str) -> bool:
    """Equal as the HTML parser would show them (it turns CR LF and CR into LF, NUL into U+FFFD)."""

    def norm(text: str) -> str:
        return text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")

    return norm(a) == norm(b)


def background(page) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


def test_chat_flow(page, embedded_server):
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto("/accounts/signup/")
    page.screenshot(path=str(ARTIFACTS / "signup.png"))
    sign_up(page)
    assert page.is_visible(".demo-banner")
    assert "random noise" in page.inner_text(".demo-banner")
    assert page.inner_text(".model-name").strip()

    # The persona picker: locked personas are shown with a lock and cannot be chosen.
    page.click("#persona-menu summary")
    options = page.locator(".persona-option")
    assert options.count() >= 1
    for i in range(options.count()):
        option = options.nth(i)
        locked = "is-locked" in option.get_attribute("class")
        assert option.locator("input").is_disabled() == locked
        assert (option.locator("svg.icon").count() == 1) == locked
    page.screenshot(path=str(ARTIFACTS / "persona-menu.png"))
    page.keyboard.press("Escape")
    assert not page.is_visible(".persona-options")

    # Every length the reply shows, recorded in the page as it happens: proof that it grew
    # over time in several steps rather than arriving at once.
    page.evaluate(
        """() => {
        window.__lengths = {};  // reply id -> the lengths it showed, in order
        new MutationObserver(() => {
          const id = grokChat.state.activeId;
          const r = id != null && grokChat.state.messages.get(id);
          if (!r || !r.length) return;
          const seen = window.__lengths[id] = window.__lengths[id] || [];
          if (seen.at(-1) !== r.length) seen.push(r.length);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
        }"""
    )

    # Shift+Enter is a new line, not a send.
    box = page.locator("#composer-input")
    box.click()
    box.type("Tell me about pelicans")
    box.press("Shift+Enter")
    box.type("in two lines")
    assert box.input_value() == "Tell me about pelicans\nin two lines"
    assert page.locator(".message-user").count() == 0

    box.press("Enter")
    page.wait_for_selector(".message-user[data-id]", timeout=REPLY_TIMEOUT_MS)
    assert box.input_value() == ""
    assert page.inner_text(".message-user .message-body") == "Tell me about pelicans\nin two lines"
    reply = page.locator(".message-assistant").last
    reply.wait_for()
    assert "/c/" in page.url  # the new conversation got its address

    # Tokens appear: the shown text grows over at least two updates while streaming; Esc stops
    # it. The demo model may end a reply by itself (a random end-of-text token) before the stop
    # lands: then regenerate and try again.
    for attempt in range(3):
        message_id = int(reply.get_attribute("data-id"))
        wait_until(page, f"""() => (window.__lengths[{message_id}] || []).length >= 2
                || !['queued', 'streaming'].includes(grokChat.state.messages.get({message_id}).status)""",
            timeout=REPLY_TIMEOUT_MS,
        )
        if page.is_visible("#stop-button"):
            page.keyboard.press("Escape")
        page.wait_for_selector(
            f'.message-assistant[data-id="{message_id}"]:not([data-status="queued"]):not([data-status="streaming"])',
            timeout=30_000,
        )
        if reply.get_attribute("data-status") == "stopped":
            break
        reply.locator('[data-action="regenerate"]').click()
        wait_until(page, f"() => ![null, {message_id}].includes(grokChat.state.activeId)")
        reply = page.locator(".message-assistant").last
    assert "Stopped" in reply.locator(".message-footer").inner_text()
    stopped = reply_state(page, message_id)
    assert stopped["status"] == "stopped" and stopped["content"]
    assert page.is_visible("#send-button") and page.is_hidden("#stop-button")
    lengths = page.evaluate(f"window.__lengths[{message_id}]")
    assert len(lengths) >= 2 and lengths == sorted(lengths), lengths
    # Thumbs up on the stopped reply is saved (the button shows it pressed).
    reply.locator('[data-action="feedback"][data-rating="up"]').click()
    page.wait_for_selector(f'.message[data-id="{message_id}"] [data-rating="up"][aria-pressed="true"]')
    assert page.is_hidden("#composer-error")

    wait_until(page, "() => document.getElementById('conversation-title').textContent.includes('pelicans')"
    )
    assert "pelicans" in page.title()

    # Reload: the stopped reply is still there, as saved.
    page.reload()
    page.wait_for_selector(f'.message-assistant[data-id="{message_id}"][data-status="stopped"]')
    reloaded = reply_state(page, message_id)
    assert page.is_visible(f'.message[data-id="{message_id}"] [data-rating="up"][aria-pressed="true"]')
    assert same_text(reloaded["content"], stopped["content"])
    assert page.locator(".message-user").count() == 1

    # The conversation is found by sidebar search (the words of the first message).
    page.fill("#conversation-search", "pelicans")
    chat_id = page.url.rstrip("/").split("/")[-1]
    page.locator(f'#search-list .conversation-item[data-id="{chat_id}"]').wait_for()
    assert page.is_hidden("#conversation-list")
    page.fill("#conversation-search", "")
    page.wait_for_selector("#conversation-list", state="visible")

    # Regenerate replaces the stopped reply with a new one; the Stop button ends that one.
    page.click(f'.message-assistant[data-id="{message_id}"] [data-action="regenerate"]')
    wait_until(page, f"() => grokChat.state.activeId !== null && grokChat.state.activeId !== {message_id}",
        timeout=REPLY_TIMEOUT_MS,
    )
    new_id = page.evaluate("grokChat.state.activeId")
    assert page.locator(f'.message-assistant[data-id="{message_id}"]').count() == 0
    wait_until(page, f"() => (grokChat.state.messages.get({new_id}) || {{}}).length > 0", timeout=REPLY_TIMEOUT_MS
    )
    if page.is_visible("#stop-button"):  # (unless the demo model already ended it)
        page.click("#stop-button")
    page.wait_for_selector(
        f'.message-assistant[data-id="{new_id}"]:is([data-status="stopped"], [data-status="done"])',
        timeout=30_000,
    )
    assert page.locator(".message").count() == 2

    page.screenshot(path=str(ARTIFACTS / "chat-light.png"))

    # Dark theme: the page's colours change, and the choice survives a reload.
    light = background(page)
    page.click("#theme-toggle")
    wait_until(page, f"() => getComputedStyle(document.body).backgroundColor !== {json.dumps(light)}")
    dark = background(page)
    assert page.evaluate("localStorage.getItem('grokweb-theme')") == "dark"
    page.reload()
    page.wait_for_selector(f'.message-assistant[data-id="{new_id}"]')
    assert background(page) == dark
    page.screenshot(path=str(ARTIFACTS / "chat-dark.png"))

    # A phone-sized screen: the sidebar hides behind a button.
    page.set_viewport_size({"width": 390, "height": 780})
    # (waited for: the sidebar slides out with a short transition)
    wait_until(page, "document.getElementById('sidebar').getBoundingClientRect().right <= 0")
    assert page.is_visible("#sidebar-open")
    page.click("#sidebar-open")
    wait_until(page, "document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    page.screenshot(path=str(ARTIFACTS / "chat-phone-sidebar.png"))
    page.keyboard.press("Escape")
    wait_until(page, "document.getElementById('sidebar').getBoundingClientRect().right <= 0")
    page.screenshot(path=str(ARTIFACTS / "chat-phone.png"))

    # Rename and delete from the sidebar (POSTs with the CSRF token).
    page.set_viewport_size({"width": 1280, "height": 820})
    item = page.locator(f'#conversation-list .conversation-item[data-id="{chat_id}"]')
    item.hover()
    item.locator('[data-action="rename"]').click()
    page.fill(".rename-input", "Pelican notes")
    page.press(".rename-input", "Enter")
    wait_until(page, "document.getElementById('conversation-title').textContent === 'Pelican notes'")
    page.reload()
    assert item.locator(".conversation-link").inner_text() == "Pelican notes"
    page.once("dialog", lambda dialog: dialog.accept())
    item.hover()
    item.locator('[data-action="delete"]').click()
    page.wait_for_url(embedded_server.url + "/")
    assert page.locator(f'.conversation-item[data-id="{chat_id}"]').count() == 0


class TrackingServer:
    """A local HTTP server that records every request: no reply may ever make one."""

    def __init__(self):
        self.requests: list[str] = []
        tracker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                tracker.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tracker():
    server = TrackingServer()
    yield server
    server.close()


HOSTILE_REPLY = """Here you go <script>window.__pwned = "script"</script> **bold** text.

<img src=x onerror="window.__pwned = 'img-onerror'">

<img src="http://127.0.0.1:{port}/raw-img.png">

[click me](javascript:window.__pwned='link') and [also](JAVASCRIPT:alert(1)) and [data](data:text/html,<script>alert(1)</script>)

![tracker](http://127.0.0.1:{port}/track.png)

[![nested](http://127.0.0.1:{port}/nested.png)](https://example.com/)

![ref image][ref]

[ref]: http://127.0.0.1:{port}/ref.png

<a href="javascript:window.__pwned='raw-a'" onclick="window.__pwned='onclick'">raw link</a>
<svg onload="window.__pwned='svg'"><image href="http://127.0.0.1:{port}/svg.png"/></svg>
<iframe src="http://127.0.0.1:{port}/frame"></iframe>
<div style="background:url(http://127.0.0.1:{port}/bg.png)">styled</div>
<details open ontoggle="window.__pwned='details'">x</details>

A [good link](https://example.com/page) and <https://example.org>.

```python
print("<b>not bold</b>")
```
"""

def settled(page) -> None:
    """Wait until no reply is being written and no frame awaits its answer."""
    wait_until(page, "() => grokChat.state.activeId === null && !grokChat.state.pending && !grokChat.state.regenerating",
               timeout=REPLY_TIMEOUT_MS)


def shown(page) -> list[tuple[str, int, str]]:
    """The branch on screen: (role, id, the `< n/m >` it shows or "")."""
    return [tuple(message) for message in page.evaluate(
        """() => [...document.querySelectorAll('#messages .message')].map(el => [
            el.dataset.role || (el.classList.contains('message-user') ? 'user' : 'assistant'),
            Number(el.dataset.id),
            (el.querySelector('.message-version') || {}).textContent || '',
        ])"""
    )]


def test_edits_and_regenerates_are_versions_to_move_between(page, embedded_server):
    ARTIFACTS.mkdir(exist_ok=True)
    sign_up(page)
    page.fill("#composer-input", "Name a bird")
    page.press("#composer-input", "Enter")
    page.wait_for_selector(".message-user[data-id]")
    settled(page)
    ((_, question, _), (_, first_reply, _)) = shown(page)

    # Regenerate: a second version of the reply, the first a click away.
    page.click(f'.message[data-id="{first_reply}"] [data-action="regenerate"]')
    wait_until(page, f"() => ![null, {first_reply}].includes(grokChat.state.activeId)")
    settled(page)
    (_, (_, second_reply, where)) = shown(page)
    assert second_reply != first_reply and where == "2/2"
    nav = f'.message[data-id="{second_reply}"] .message-versions'
    assert page.is_disabled(f'{nav} [aria-label="Next version"]')
    page.click(f'{nav} [aria-label="Previous version"]')
    page.wait_for_selector(f'.message[data-id="{first_reply}"]')
    assert shown(page) == [("user", question, ""), ("assistant", first_reply, "1/2")]

    # Edit the question: a second version of it with a reply of its own.
    page.click(f'.message[data-id="{question}"] [data-action="edit"]')
    page.fill(f'.message[data-id="{question}"] .message-editor textarea', "Name a fish")
    page.press(f'.message[data-id="{question}"] .message-editor textarea', "Enter")
    page.wait_for_selector('.message-user .message-version')
    settled(page)
    ((_, edited, where), (_, fish_reply, reply_where)) = shown(page)
    assert edited != question and where == "2/2" and reply_where == ""
    assert page.inner_text(f'.message[data-id="{edited}"] .message-body') == "Name a fish"
    page.locator(f'.message[data-id="{edited}"]').scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "versions.png"))

    # Back to the first question: its newest reply comes with it, and the server keeps it on
    # screen: a reload shows the same branch, and the next message follows it.
    page.click(f'.message[data-id="{edited}"] [aria-label="Previous version"]')
    page.wait_for_selector(f'.message[data-id="{question}"]')
    assert shown(page) == [("user", question, "1/2"), ("assistant", second_reply, "2/2")]
    assert page.inner_text(f'.message[data-id="{question}"] .message-body') == "Name a bird"
    page.reload()
    page.wait_for_selector(f'.message[data-id="{second_reply}"]')
    assert shown(page) == [("user", question, "1/2"), ("assistant", second_reply, "2/2")]
    page.fill("#composer-input", "Why that one?")
    page.press("#composer-input", "Enter")
    page.wait_for_selector('.message-user >> nth=1')
    settled(page)
    assert [m[1] for m in shown(page)[:2]] == [question, second_reply] and len(shown(page)) == 4

    # A search result on the other branch puts that branch on screen.
    page.fill("#conversation-search", "fish")
    page.locator("#search-list a").first.click()
    page.wait_for_selector(f'.message[data-id="{edited}"].is-linked')
    assert [m[1] for m in shown(page)] == [edited, fish_reply]


INJECT = """
import json, os
from chat import branches
from chat.models import Conversation, Persona, User
data = json.loads(os.environ["GW_DATA"])
user = User.objects.create_user(username=data["username"], password=data["password"])
chat = Conversation.objects.create(
    owner=user, title=data["title"], persona=Persona.objects.filter(is_active=True).first()
)
branches.append(chat, role="user", content=data["question"])
branches.append(chat, role="assistant", content=data["reply"], status="done", finish_reason="stop")
print(chat.id)
"""


def test_hostile_reply_is_inert(page, embedded_server, tracker):
    username = "victim" + uuid.uuid4().hex[:8]
    reply = HOSTILE_REPLY.format(port=tracker.port)
    chat_id = int(
        embedded_server.shell(
            INJECT,
            username=username,
            password=PASSWORD,
            title="<img src=x onerror=\"window.__pwned='title'\">",
            question="<script>window.__pwned='question'</script>",
            reply=reply,
        ).splitlines()[-1]
    )
    seen = []
    page.on("request", lambda request: seen.append(request.url))
    log_in(page, username)
    page.goto(f"/c/{chat_id}/")
    body = page.locator(".message-assistant .message-body.md")
    body.wait_for()
    page.wait_for_load_state("networkidle")
    time.sleep(0.5)  # room for any late image request to arrive

    assert page.evaluate("window.__pwned") is None
    # The markdown still works around the junk.
    assert body.locator("strong").inner_text() == "bold"
    good = body.locator('a[href="https://example.com/page"]')
    assert good.get_attribute("target") == "_blank"
    assert set(good.get_attribute("rel").split()) == {"noopener", "noreferrer", "nofollow"}
    assert body.locator("pre code").inner_text().startswith('print("<b>not bold</b>")')
    assert body.locator(".md-code .md-copy").count() == 1
    # Code blocks follow the theme (render.css's light-dark() pairs).
    def code_background() -> str:
        return body.locator(".md-code").evaluate("el => getComputedStyle(el).backgroundColor")

    assert code_background() == "rgb(246, 246, 243)"
    page.click("#theme-toggle")
    assert code_background() == "rgb(15, 15, 18)"
    page.click("#theme-toggle")
    # Nothing dangerous reached the DOM of the page.
    dangerous = page.evaluate(
        """() => {
        const all = [...document.querySelectorAll('*')];
        return {
          handlers: all.flatMap(el => [...el.attributes].filter(a => /^on/i.test(a.name)).map(a => el.tagName + ' ' + a.name)),
          badHrefs: [...document.querySelectorAll('[href]')].map(el => el.getAttribute('href'))
                      .filter(h => !/^(https?:|mailto:|\\/)/i.test(h.trim())),
          media: document.querySelectorAll(['img', 'svg', 'iframe', 'image', 'video', 'audio', 'picture', 'object', 'embed']
                   .map(tag => '.message-body ' + tag).join(',')).length,
          styles: document.querySelectorAll('.message-body [style]').length,
          scripts: document.querySelectorAll('.message-body script').length,
        };
        }"""
    )
    assert dangerous == {"handlers": [], "badHrefs": [], "media": 0, "styles": 0, "scripts": 0}
    # The user's message and the title are shown as text.
    assert page.inner_text(".message-user .message-body") == "<script>window.__pwned='question'</script>"
    assert page.inner_text("#conversation-title").startswith("<img")
    # No request for any image, in the tracking server's log or the browser's.
    assert tracker.requests == []
    assert not [url for url in seen if f":{tracker.port}/" in url]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-hostile-reply.png"), full_page=True)


# A stand-in for the browser's WebSocket: records what the page sends and lets the test play
# the server, so the client's side of docs/protocol.md is checked frame by frame.
FAKE_SOCKET = """
(() => {
  window.__sent = [];
  window.__sockets = [];
  class FakeSocket {
    constructor(url) {
      this.url = url; this.readyState = 0; this.listeners = {};
      window.__sockets.push(this);
      setTimeout(() => { this.readyState = 1; this.emit('open', {}); }, 20);
    }
    addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
    send(data) { window.__sent.push(JSON.parse(data)); }
    close(code) { this.drop(code || 1000); }
    drop(code) { this.readyState = 3; this.emit('close', {code: code}); }
    emit(type, event) { (this.listeners[type] || []).forEach(fn => fn(event)); }
  }
  FakeSocket.CONNECTING = 0; FakeSocket.OPEN = 1; FakeSocket.CLOSING = 2; FakeSocket.CLOSED = 3;
  window.WebSocket = FakeSocket;
  window.__serve = frame => window.__sockets.at(-1).emit('message', {data: JSON.stringify(frame)});
})();
"""


def sent(page, kind: str) -> list[dict]:
    return page.evaluate("kind => window.__sent.filter(f => f.type === kind)", kind)


def test_protocol_client(page):
    page.add_init_script(FAKE_SOCKET)
    sign_up(page)
    wait_until(page, "window.__sockets.length === 1 && window.__sockets[0].readyState === 1")
    assert page.evaluate("window.__sockets[0].url").endswith("/ws/chat/")
    box = page.locator("#composer-input")

    # A refused send (quota) gives the text back, with the reason.
    box.fill("hello there")
    box.press("Enter")
    (frame,) = sent(page, "send")
    assert frame["content"] == "hello there" and frame["conversation_id"] is None
    assert frame["persona"] and frame["client_id"]
    page.evaluate(
        "id => __serve({type: 'error', code: 'quota', message: 'Daily limit reached.',"
        " resets_at: '2030-01-01T00:00:00Z', client_id: id})",
        frame["client_id"],
    )
    assert box.input_value() == "hello there"
    assert "Daily limit reached." in page.inner_text("#composer-error")
    assert page.locator(".message").count() == 0

    # Accepted: the conversation gets its address and a place in the sidebar.
    box.press("Enter")
    frame = sent(page, "send")[-1]
    page.evaluate(
        """id => __serve({type: 'accepted', client_id: id, conversation_id: 42,
            user_message: {id: 100, content: 'hello there'}, assistant_message: {id: 101, status: 'queued'},
            title: 'hello there'})""",
        frame["client_id"],
    )
    assert page.url.endswith("/c/42/")
    assert page.locator('#conversation-list .conversation-item[data-id="42"]').inner_text().strip() == "hello there"
    assert page.is_hidden("#composer-error") and box.input_value() == ""
    page.evaluate("__serve({type: 'queued', message_id: 101, position: 3})")
    assert "#3 in line" in page.inner_text('.message[data-id="101"] .message-footer')
    page.evaluate("__serve({type: 'queued', message_id: 101, position: 2})")
    assert "#2 in line" in page.inner_text('.message[data-id="101"] .message-footer')
    page.evaluate("__serve({type: 'queued', message_id: 101, position: 4})")  # stale counts: kept at 2
    assert "#2 in line" in page.inner_text('.message[data-id="101"] .message-footer')

    # Deltas: appended at their offset (in characters as Python counts them: the emoji is one),
    # overlaps trimmed, a gap answered by `resume` from what is shown.
    page.evaluate("__serve({type: 'delta', message_id: 101, offset: 0, text: 'Hello \\u{1F600} '})")
    page.evaluate("__serve({type: 'delta', message_id: 101, offset: 3, text: 'lo \\u{1F600} wor'})")
    assert reply_state(page, 101)["content"] == "Hello \U0001F600 wor"
    assert page.is_visible("#stop-button")
    page.evaluate("__serve({type: 'delta', message_id: 101, offset: 50, text: 'zzz'})")
    assert sent(page, "resume")[-1] == {"type": "resume", "message_id": 101, "offset": 11}
    assert reply_state(page, 101)["content"] == "Hello \U0001F600 wor"
    wait_until(page, "document.querySelector('.message[data-id=\"101\"] .message-body').textContent.includes('wor')"
    )

    # Esc asks to stop the active reply; `done` carries the saved text, which wins.
    page.keyboard.press("Escape")
    assert sent(page, "stop") == [{"type": "stop", "message_id": 101}]
    page.evaluate(
        """__serve({type: 'done', message_id: 101, status: 'stopped', finish_reason: 'cancelled',
            content: 'Hello \\u{1F600} world', usage: {prompt_tokens: 3, completion_tokens: 4}, error: ''})"""
    )
    assert reply_state(page, 101) == {"status": "stopped", "content": "Hello \U0001F600 world", "length": 13}
    assert "Stopped" in page.inner_text('.message[data-id="101"] .message-footer')
    assert page.is_visible("#send-button")

    # Regenerate replaces the last reply; the title `accepted` carries is shown.
    page.click('.message[data-id="101"] [data-action="regenerate"]')
    assert sent(page, "regenerate") == [{"type": "regenerate", "conversation_id": 42}]
    page.evaluate(
        """__serve({type: 'accepted', client_id: null, conversation_id: 42,
            user_message: {id: 100, content: 'hello there'}, assistant_message: {id: 102, status: 'queued'},
            title: 'Greetings'})"""
    )
    assert page.locator(".message").count() == 2 and page.locator('.message[data-id="101"]').count() == 0
    assert page.title().startswith("Greetings") and page.inner_text("#conversation-title") == "Greetings"
    assert page.locator('#conversation-list .conversation-item[data-id="42"]').inner_text().strip() == "Greetings"
    page.evaluate("__serve({type: 'delta', message_id: 102, offset: 0, text: 'abc'})")

    # A dropped socket reconnects and resumes the active reply from the length shown.
    page.evaluate("window.__sockets.at(-1).drop(1006)")
    page.wait_for_selector("#connection:not([hidden])")
    wait_until(page, "window.__sockets.length === 2 && window.__sockets[1].readyState === 1", timeout=20_000)
    wait_until(page, "window.__sent.filter(f => f.type === 'resume').length === 2")
    assert sent(page, "resume")[-1] == {"type": "resume", "message_id": 102, "offset": 3}
    page.evaluate("__serve({type: 'delta', message_id: 102, offset: 0, text: 'abcdef'})")
    page.evaluate(
        """__serve({type: 'done', message_id: 102, status: 'done', finish_reason: 'stop',
            content: 'abcdef', usage: {}, error: ''})"""
    )
    assert reply_state(page, 102)["content"] == "abcdef"

    # Edit and resend the last user message; a refusal keeps the edited text in the editor.
    page.click('.message[data-id="100"] [data-action="edit"]')
    editor = page.locator(".message-editor textarea")
    editor.fill("hello again")
    editor.press("Enter")
    frame = sent(page, "edit")[-1]
    assert (frame["message_id"], frame["content"]) == (100, "hello again")
    page.evaluate(
        "id => __serve({type: 'error', code: 'busy', message: 'Too many replies.', client_id: id})",
        frame["client_id"],
    )
    assert editor.input_value() == "hello again" and editor.is_enabled()
    assert "Too many replies." in page.inner_text("#composer-error")
    editor.press("Enter")
    frame = sent(page, "edit")[-1]
    page.evaluate(
        """id => __serve({type: 'accepted', client_id: id, conversation_id: 42,
            user_message: {id: 100, content: 'hello again'}, assistant_message: {id: 103, status: 'queued'}})""",
        frame["client_id"],
    )
    assert page.inner_text('.message[data-id="100"] .message-body') == "hello again"
    assert page.locator(".message-editor").count() == 0
    assert [m for m in page.locator(".message").evaluate_all("els => els.map(e => e.dataset.id)")] == ["100", "103"]


def test_the_csp_refuses_a_script_that_got_into_the_page(page):
    """Whatever got past the sanitiser could not run: an inline script is refused (and reported)."""
    sign_up(page)
    page.evaluate(
        "document.body.append(Object.assign(document.createElement('script'), {textContent: 'window.__ran = 1'}))"
    )
    page.wait_for_timeout(200)
    assert page.evaluate("window.__ran") is None
    assert any("script-src" in violation for violation in page.csp_violations), page.csp_violations
    page.csp_violations.clear()  # the one expected
