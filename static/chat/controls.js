/*
 * What the page shows that depends on the whole conversation, redrawn after any change of
 * state: each message's state classes, status line, versions (`< 2/3 >`) and action buttons
 * (which message may be regenerated depends on all of them, and on whether anything is in
 * flight), and whether the composer offers Send or Stop.
 */
import { state, isBusy } from "./state.js";
import { isActive, lastOfRole } from "./messages.js";

const send = document.getElementById("send-button");
const stop = document.getElementById("stop-button");
const feedbackTemplate = document.getElementById("feedback-template");

function statusText(record) {
  if (record.role !== "assistant") return "";
  switch (record.status) {
    case "queued":
      if (record.position === 1) return "Queued — you are next";
      if (record.position > 1) return "Queued — #" + record.position + " in line";
      return "Waiting for the model…";
    case "stopped":
      return "Stopped";
    case "failed":
      return "Failed" + (record.error ? ": " + record.error : "");
    case "done":
      return record.finishReason === "length" ? "Reached the length limit" : "";
    default:
      return "";
  }
}

function button(label, action, description) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "message-action";
  b.dataset.action = action;
  b.textContent = label;
  b.setAttribute("aria-label", description);
  return b;
}

// `< 2/3 >`: the buttons name the version they show (actions.js sends `switch` for it).
function versionNav(record, busy) {
  const nav = document.createElement("span");
  nav.className = "message-versions";
  const at = record.versions.indexOf(record.id);
  const count = record.versions.length;
  const step = (label, target, description) => {
    const b = button(label, "version", description);
    b.classList.add("message-icon");
    if (target == null || busy) b.disabled = true;
    else b.dataset.target = String(target);
    return b;
  };
  const where = document.createElement("span");
  where.className = "message-version";
  where.textContent = at + 1 + "/" + count;
  where.setAttribute("aria-label", "Version " + (at + 1) + " of " + count);
  nav.append(
    step("‹", at > 0 ? record.versions[at - 1] : null, "Previous version"),
    where,
    step("›", at < count - 1 ? record.versions[at + 1] : null, "Next version")
  );
  return nav;
}

export function refresh() {
  const lastAssistant = lastOfRole("assistant");
  const busy = isBusy();
  state.messages.forEach((record) => {
    const el = record.el;
    el.dataset.status = record.status;
    el.classList.toggle("is-streaming", record.status === "streaming");
    el.classList.toggle("is-failed", record.status === "failed");
    el.classList.toggle("is-stopped", record.status === "stopped");
    if (isActive(record)) el.setAttribute("aria-busy", "true");
    else el.removeAttribute("aria-busy");
    if (!record.editing) drawFooter(record, record === lastAssistant, busy);
  });
  refreshComposer();
}

function drawFooter(record, isLastAssistant, busy) {
  record.footer.replaceChildren();
  const text = statusText(record);
  if (text) {
    const status = document.createElement("span");
    status.className = "message-status";
    status.textContent = text;
    record.footer.appendChild(status);
  }
  if (isActive(record) || record.id == null) return;
  if (record.versions.length > 1) record.footer.appendChild(versionNav(record, busy));
  const actions = document.createElement("span");
  actions.className = "message-actions";
  if (record.content) actions.appendChild(button("Copy", "copy", "Copy this message"));
  if (!busy && record.role === "user") actions.appendChild(button("Edit", "edit", "Edit and resend this message"));
  if (!busy && isLastAssistant && state.conversationId)
    actions.appendChild(button("Regenerate", "regenerate", "Write this reply again"));
  if (record.role === "assistant" && record.content && feedbackTemplate) {
    actions.appendChild(feedbackTemplate.content.cloneNode(true));
    actions.querySelectorAll("[data-action=feedback]").forEach((b) => {
      b.setAttribute("aria-pressed", record.rating === b.dataset.rating ? "true" : "false");
    });
  }
  record.footer.appendChild(actions);
}

// Stop while a reply is active; Send (disabled while a send or edit awaits `accepted`) otherwise.
export function refreshComposer() {
  const streaming = !!state.activeId;
  stop.hidden = !streaming;
  send.hidden = streaming;
  send.disabled = !!state.pending;
}
