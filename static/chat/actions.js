/*
 * The buttons under a message (drawn by controls.js): Copy, Edit (opens editor.js), Regenerate
 * (the `regenerate` frame), `< 2/3 >` (the `switch` frame: its `path` answer puts that version's
 * branch on screen) and thumbs up or down (saved over HTTP).
 */
import { state, isBusy } from "./state.js";
import { sendFrame } from "./socket.js";
import { urls, post } from "./http.js";
import { showError, clearError } from "./notice.js";
import { recordFor } from "./messages.js";
import { refresh } from "./controls.js";
import { openEditor } from "./editor.js";

export function setUpActions() {
  document.getElementById("messages").addEventListener("click", (event) => {
    const target = event.target.closest(".message-action");
    const record = target && recordFor(target.closest(".message"));
    if (!record) return;
    const action = target.dataset.action;
    if (action === "copy") copy(record, target);
    else if (action === "edit") openEditor(record);
    else if (action === "regenerate") regenerate();
    else if (action === "version") showVersion(Number(target.dataset.target));
    else if (action === "feedback") rate(record, target.dataset.rating);
  });
}

function copy(record, target) {
  window.GrokRender.copyText(record.content).then(
    () => window.GrokRender.flash(target, "Copied"),
    () => window.GrokRender.flash(target, "Copy failed")
  );
}

function regenerate() {
  if (isBusy()) return;
  if (sendFrame({ type: "regenerate", conversation_id: state.conversationId })) {
    state.regenerating = true;
    clearError();
    refresh();
  } else showError("Not connected — reconnecting.");
}

function showVersion(messageId) {
  if (isBusy() || !messageId) return;
  if (!sendFrame({ type: "switch", message_id: messageId })) showError("Not connected — reconnecting.");
}

function rate(record, rating) {
  post(urls.feedback(record.id), { rating: rating }).then(
    () => {
      record.rating = rating;
      refresh();
    },
    (err) => showError("Could not save your feedback: " + err.message)
  );
}
