/*
 * Message records: one per <article class="message"> in the transcript (the branch on screen),
 * made here or read back from the page, kept by id in state.messages. A record's `versions`
 * are the ids of the message and its siblings, oldest first (chat/branches.py). A record's body is what the user typed
 * (textContent) or model output, shown only through GrokRender.render (render.js), re-rendered
 * at most every 100 ms while it streams. The transcript stays scrolled to the bottom if it was.
 */
import { cpLength } from "./protocol.js";
import { state } from "./state.js";

const RENDER_INTERVAL_MS = 100; // re-render a growing reply at most this often
const ACTIVE = ["queued", "streaming"];

const transcript = document.getElementById("transcript");
const list = document.getElementById("messages");
const welcome = document.getElementById("welcome");

export function isActive(record) {
  return ACTIVE.includes(record.status);
}

export function makeRecord(fields) {
  const el = document.createElement("article");
  const body = document.createElement("div");
  body.className = "message-body";
  el.appendChild(body);
  return attachRecord(el, fields);
}

function attachRecord(el, fields) {
  const record = {
    id: fields.id,
    role: fields.role,
    status: fields.status || "done",
    content: fields.content || "",
    length: 0, // of content, in code points
    error: fields.error || "",
    finishReason: fields.finishReason || "",
    position: null, // in the queue, while queued
    rating: fields.rating || null, // the user's thumbs up or down, if given
    versions: fields.versions || (fields.id != null ? [fields.id] : []),
    editing: false,
    el: el,
    body: el.querySelector(".message-body"),
    footer: document.createElement("div"),
    renderTimer: null,
    lastRender: 0,
    resync: false, // the shown text must be re-fetched from 0 (see readPage)
    lastResume: 0,
  };
  record.length = cpLength(record.content);
  el.className = "message message-" + record.role;
  if (record.id != null) {
    el.id = "m-" + record.id; // search results link here
    el.dataset.id = String(record.id);
    state.messages.set(record.id, record);
  }
  record.footer.className = "message-footer";
  el.appendChild(record.footer);
  return record;
}

// Messages arrive in the page as text (Django-escaped); read them back and render them here.
export function readPage() {
  list.querySelectorAll(".message").forEach((el) => {
    const record = attachRecord(el, {
      id: Number(el.dataset.id),
      role: el.dataset.role,
      status: el.dataset.status,
      content: el.querySelector(".message-body").textContent,
      error: el.dataset.error,
      finishReason: el.dataset.finishReason,
      rating: el.dataset.rating,
      versions: el.dataset.versions ? el.dataset.versions.split(",").map(Number) : null,
    });
    if (record.id === state.activeId && isActive(record)) {
      // The HTML parser turns "\r\n" into "\n", so the text read back from the page can be
      // shorter than the saved reply; re-fetch it from 0 once so offsets line up exactly.
      record.resync = true;
    }
    renderBody(record);
  });
}

// Gives a record the id the server saved it under (a send or an edit confirmed by `accepted`).
export function setId(record, id) {
  state.messages.delete(record.id);
  record.id = id;
  record.el.id = "m-" + id;
  record.el.dataset.id = String(id);
  state.messages.set(id, record);
}

export function recordFor(el) {
  for (const record of state.messages.values()) if (record.el === el) return record;
  const pending = state.pending && state.pending.record;
  return pending && pending.el === el ? pending : null;
}

export function lastOfRole(role) {
  const nodes = list.querySelectorAll(".message-" + role);
  return nodes.length ? recordFor(nodes[nodes.length - 1]) : null;
}

export function addRecord(record) {
  list.appendChild(record.el);
  welcome.hidden = true;
  renderBody(record);
}

// Takes back a message never confirmed (a refused send).
export function dropRecord(record) {
  record.el.remove();
  if (!list.children.length) welcome.hidden = false;
}

// Takes every message off the page (another branch is coming: transcript.js showPath).
export function clearRecords() {
  state.messages.forEach((record) => clearTimeout(record.renderTimer));
  state.messages.clear();
  list.replaceChildren();
  welcome.hidden = false;
}

// Drops every message after `record` (an edit or regenerate starts a new branch there).
export function removeAfter(record) {
  let node = record.el.nextElementSibling;
  while (node) {
    const next = node.nextElementSibling;
    const gone = recordFor(node);
    if (gone) {
      clearTimeout(gone.renderTimer);
      state.messages.delete(gone.id);
    }
    node.remove();
    node = next;
  }
}

function renderBody(record) {
  record.lastRender = Date.now();
  record.renderTimer = null;
  const stick = nearBottom();
  if (record.role === "user") {
    record.body.textContent = record.content; // shown as typed; CSS keeps the newlines
  } else if (!record.content && isActive(record)) {
    record.body.replaceChildren(typingDots());
  } else {
    window.GrokRender.render(record.body, record.content, { streaming: isActive(record) });
  }
  if (stick) scrollToBottom();
}

export function scheduleRender(record) {
  if (record.renderTimer) return;
  const wait = Math.max(0, RENDER_INTERVAL_MS - (Date.now() - record.lastRender));
  record.renderTimer = setTimeout(() => renderBody(record), wait);
}

export function renderNow(record) {
  clearTimeout(record.renderTimer);
  renderBody(record);
}

function typingDots() {
  const dots = document.createElement("span");
  dots.className = "typing";
  dots.setAttribute("aria-label", "Writing");
  for (let i = 0; i < 3; i++) dots.appendChild(document.createElement("span"));
  return dots;
}

function nearBottom() {
  return transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 120;
}

export function scrollToBottom() {
  transcript.scrollTop = transcript.scrollHeight;
}
