/*
 * Sidebar search: as the user types (debounced), asks the server for matching conversations
 * and shows them, each with a snippet of the matching message, in place of the list. Esc in
 * the box clears it. Results are written as text only: the snippet comes as [text, is_match]
 * parts (chat/search.py) and matches go in <mark> elements. A result opens its conversation at
 * the matching message (#m-<id>), which showLinkedMessage scrolls to and marks, after putting
 * its branch on screen when it is on another one.
 */
import { state } from "./state.js";
import { urls } from "./http.js";
import { conversationItem } from "./sidebar.js";
import { sendFrame } from "./socket.js";

const DEBOUNCE_MS = 250;

const box = document.getElementById("conversation-search");
const list = document.getElementById("conversation-list");
const results = document.getElementById("search-results");
const resultList = document.getElementById("search-list");
const status = document.getElementById("search-status");

let timer = null;
let controller = null; // aborts the previous request when the query changes

export function setUpSearch() {
  box.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(runSearch, DEBOUNCE_MS);
  });
  box.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && box.value) {
      event.preventDefault();
      event.stopPropagation();
      box.value = "";
      runSearch();
    }
  });
}

function showResults(text) {
  status.textContent = text;
  list.hidden = true;
  results.hidden = false;
}

async function runSearch() {
  const query = box.value.trim();
  if (controller) controller.abort();
  if (!query) {
    results.hidden = true;
    list.hidden = false;
    return;
  }
  controller = new AbortController();
  try {
    const response = await fetch(urls.search + "?q=" + encodeURIComponent(query), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      signal: controller.signal,
    });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const data = await response.json();
    const found = (data && data.results) || [];
    resultList.replaceChildren(...found.map(resultItem));
    showResults(found.length ? found.length + (found.length === 1 ? " conversation" : " conversations") : "No conversations match.");
  } catch (err) {
    if (err && err.name === "AbortError") return;
    showResults("Search failed.");
  }
}

function resultItem(result) {
  const item = conversationItem(result.id, result.title || "Untitled");
  if (result.id === state.conversationId) item.classList.add("is-current");
  const link = item.querySelector(".conversation-link");
  if (result.message_id != null) link.href += "#m-" + Number(result.message_id);
  if (Array.isArray(result.snippet) && result.snippet.length) {
    const snippet = document.createElement("span");
    snippet.className = "conversation-snippet";
    for (const [text, isMatch] of result.snippet) {
      const piece = document.createElement(isMatch ? "mark" : "span");
      piece.textContent = String(text);
      snippet.appendChild(piece);
    }
    link.appendChild(snippet);
  }
  return item;
}

// The message named by the address's #m-<id>, scrolled into view and marked; false if none.
// A result on another branch than the one shown is asked for (`switch`) once the socket is
// open; its `path` answer calls this again (chat.js). Each message is asked for once, so a
// link to one that is gone cannot loop.
let unseen = null;
const asked = new Set();

export function showLinkedMessage() {
  const match = /^#m-(\d+)$/.exec(location.hash);
  const target = match && document.getElementById("m-" + match[1]);
  if (match && !target && state.conversationId) {
    unseen = Number(match[1]);
    askForLinkedBranch();
  }
  if (!target) return false;
  unseen = null;
  document.querySelectorAll(".message.is-linked").forEach((el) => el.classList.remove("is-linked"));
  target.classList.add("is-linked");
  target.scrollIntoView({ block: "center" });
  return true;
}

// On (re)connect too: the page may have loaded before the socket could ask.
export function askForLinkedBranch() {
  if (unseen == null || asked.has(unseen)) return;
  if (sendFrame({ type: "switch", message_id: unseen })) asked.add(unseen);
}
