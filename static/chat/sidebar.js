/*
 * The conversation sidebar: the list (items cloned from the <template> rendered by the same
 * partial as the server's items, templates/chat/_conversation_item.html), rename and delete,
 * showing and hiding it on small screens, and a conversation's title wherever the page shows it.
 */
import { state } from "./state.js";
import { urls, post } from "./http.js";
import { showError } from "./notice.js";

const app = document.getElementById("app");
const sidebar = document.getElementById("sidebar");
const openButton = document.getElementById("sidebar-open");
const backdrop = document.getElementById("backdrop");
const list = document.getElementById("conversation-list");
const search = document.getElementById("conversation-search");
const heading = document.getElementById("conversation-title");
const itemTemplate = document.getElementById("conversation-item-template");

export function setUpSidebar() {
  openButton.addEventListener("click", openSidebar);
  document.getElementById("sidebar-close").addEventListener("click", closeSidebar);
  backdrop.addEventListener("click", closeSidebar);
  sidebar.addEventListener("click", (event) => {
    const target = event.target.closest("button[data-action]");
    const item = target && target.closest(".conversation-item");
    if (!item) return;
    if (target.dataset.action === "rename") startRename(item);
    else if (target.dataset.action === "delete") deleteConversation(item);
  });
}

function openSidebar() {
  app.classList.add("sidebar-visible");
  backdrop.hidden = false;
  openButton.setAttribute("aria-expanded", "true");
  search.focus();
}

// True if it was open (Esc closes it, after the persona menu).
export function closeSidebar() {
  const wasOpen = app.classList.contains("sidebar-visible");
  app.classList.remove("sidebar-visible");
  backdrop.hidden = true;
  openButton.setAttribute("aria-expanded", "false");
  return wasOpen;
}

function labelButtons(item, title) {
  item.querySelectorAll("button[data-action]").forEach((b) => {
    b.setAttribute("aria-label", b.title + " \u201C" + title + "\u201D");
  });
}

export function conversationItem(id, title) {
  const item = itemTemplate.content.firstElementChild.cloneNode(true);
  item.dataset.id = String(id);
  const link = item.querySelector(".conversation-link");
  link.href = urls.conversation(id);
  link.textContent = title;
  labelButtons(item, title);
  return item;
}

// A conversation just started on this page: first in the list, and current.
export function addConversation(id, title) {
  const empty = document.getElementById("conversation-empty");
  if (empty) empty.remove();
  list.querySelectorAll(".is-current").forEach((n) => {
    n.classList.remove("is-current");
    const link = n.querySelector("a");
    if (link) link.removeAttribute("aria-current");
  });
  const item = conversationItem(id, title);
  item.classList.add("is-current");
  item.querySelector("a").setAttribute("aria-current", "page");
  list.prepend(item);
}

export function showTitle(conversationId, title) {
  if (!title) return;
  if (conversationId === state.conversationId) {
    heading.textContent = title;
    document.title = title + " · grokweb";
  }
  document.querySelectorAll('.conversation-item[data-id="' + Number(conversationId) + '"]').forEach((item) => {
    const link = item.querySelector(".conversation-link");
    const snippet = link.querySelector(".conversation-snippet");
    link.textContent = title;
    if (snippet) link.appendChild(snippet);
    labelButtons(item, title);
  });
}

function itemTitle(item) {
  const link = item.querySelector(".conversation-link");
  return link.firstChild ? link.firstChild.textContent : ""; // the title, without a search snippet
}

function startRename(item) {
  const id = Number(item.dataset.id);
  const link = item.querySelector(".conversation-link");
  const input = document.createElement("input");
  input.type = "text";
  input.className = "rename-input";
  input.value = itemTitle(item);
  input.maxLength = 200;
  input.setAttribute("aria-label", "New title");
  link.hidden = true;
  item.insertBefore(input, link);
  input.focus();
  input.select();
  let finished = false;

  function finish(save) {
    if (finished) return;
    finished = true;
    const title = input.value.trim();
    input.remove();
    link.hidden = false;
    if (!save || !title || title === itemTitle(item)) return;
    post(urls.rename(id), { title: title }).then(
      (data) => showTitle(id, (data && data.title) || title),
      (err) => showError("Could not rename the conversation: " + err.message)
    );
  }
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      finish(true);
    } else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
}

function deleteConversation(item) {
  const id = Number(item.dataset.id);
  if (!window.confirm("Delete \u201C" + itemTitle(item) + "\u201D? This cannot be undone.")) return;
  post(urls.delete(id), {}).then(
    () => {
      document.querySelectorAll('.conversation-item[data-id="' + id + '"]').forEach((n) => n.remove());
      if (id === state.conversationId) window.location.assign(document.getElementById("new-chat").href);
    },
    (err) => showError("Could not delete the conversation: " + err.message)
  );
}
