/*
 * Editing a user message in place: the editor form, and its `edit` frame (the edit, a new
 * version of the message, and the reply to it arrive with `accepted`, what followed the old
 * version is a version away; a refusal leaves the editor open).
 */
import { newClientId } from "./protocol.js";
import { state } from "./state.js";
import { sendFrame } from "./socket.js";
import { showError, clearError } from "./notice.js";
import { refresh, refreshComposer } from "./controls.js";

let maxMessageChars = 0;

export function setUpEditor(config) {
  maxMessageChars = config.maxMessageChars;
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text) el.textContent = text;
  return el;
}

export function openEditor(record) {
  record.editing = true;
  const form = element("form", "message-editor");
  const label = element("label", "visually-hidden", "Edit your message");
  const area = document.createElement("textarea");
  area.value = record.content;
  area.rows = Math.min(12, record.content.split("\n").length + 1);
  area.maxLength = maxMessageChars;
  label.appendChild(area);
  const row = element("div", "message-editor-row");
  const cancel = element("button", "button", "Cancel");
  cancel.type = "button";
  const save = element("button", "button button-primary", "Save & resend");
  save.type = "submit";
  row.append(cancel, save);
  form.append(label, row);
  record.body.hidden = true;
  record.footer.hidden = true;
  record.el.insertBefore(form, record.footer);

  function saveEdit() {
    const content = area.value;
    if (!content.trim() || state.pending || state.activeId) return;
    const clientId = newClientId();
    if (!sendFrame({ type: "edit", message_id: record.id, content: content, client_id: clientId })) {
      showError("Not connected — reconnecting. Your edit is kept.");
      return;
    }
    state.pending = { kind: "edit", clientId: clientId, content: content, record: record };
    area.disabled = save.disabled = cancel.disabled = true;
    clearError();
    refreshComposer();
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    saveEdit();
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      saveEdit();
    } else if (event.key === "Escape") {
      event.preventDefault();
      closeEditor(record);
    }
  });
  cancel.addEventListener("click", () => closeEditor(record));
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
}

export function closeEditor(record) {
  const form = record.el.querySelector(".message-editor");
  if (form) form.remove();
  record.editing = false;
  record.body.hidden = false;
  record.footer.hidden = false;
  refresh();
}

// A refused edit: the editor, still open with its text, can be used again.
export function enableEditor(record) {
  const form = record.el.querySelector(".message-editor");
  if (form) form.querySelectorAll("textarea, button").forEach((n) => (n.disabled = false));
}
