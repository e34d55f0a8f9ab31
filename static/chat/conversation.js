/*
 * The answers to the page's own send, edit and regenerate frames, which change more than the
 * transcript: `accepted` (a new conversation gets its address, sidebar entry and locked
 * persona; the title is shown) and `error` (a refusal gives the text back, with the reason,
 * as does a socket that drops before `accepted`).
 */
import { state } from "./state.js";
import { urls } from "./http.js";
import { showError, clearError } from "./notice.js";
import { dropRecord, scrollToBottom } from "./messages.js";
import { refresh } from "./controls.js";
import { restoreDraft, lockPersona } from "./composer.js";
import { enableEditor } from "./editor.js";
import { addConversation, showTitle } from "./sidebar.js";
import { showAccepted, onReplyError } from "./transcript.js";

const ERROR_TEXT = {
  busy: "The model is busy right now. Try again in a moment — your text is kept.",
  unavailable: "The model is unavailable right now. Try again shortly — your text is kept.",
  too_large: "That message is too large.",
};

// The send or edit that a frame carrying `clientId` answers, taken off state.pending.
function takePending(clientId) {
  const pending = state.pending;
  if (!pending || !clientId || clientId !== pending.clientId) return null;
  state.pending = null;
  return pending;
}

export function onAccepted(frame) {
  const pending = takePending(frame.client_id);
  state.regenerating = false;
  if (frame.conversation_id && frame.conversation_id !== state.conversationId) {
    state.conversationId = frame.conversation_id;
    history.replaceState(null, "", urls.conversation(frame.conversation_id));
    addConversation(frame.conversation_id, frame.title || "New chat");
    lockPersona();
  }
  showAccepted(frame, pending);
  showTitle(state.conversationId, frame.title);
  clearError();
  refresh();
  scrollToBottom();
}

function describeError(frame) {
  let text = ERROR_TEXT[frame.code] || frame.message || "Something went wrong.";
  if (frame.code === "quota") {
    text = frame.message || "You have reached your plan's limit.";
    if (frame.resets_at) {
      const when = new Date(frame.resets_at);
      if (!isNaN(when)) text += " It resets " + when.toLocaleString() + ".";
    }
  } else if (frame.message && ERROR_TEXT[frame.code]) {
    text = frame.message + " — your text is kept.";
  }
  return text;
}

export function onError(frame) {
  const text = describeError(frame);
  const pending = takePending(frame.client_id);
  if (pending) {
    failPending(pending, text);
    return;
  }
  if (state.regenerating && !frame.client_id) state.regenerating = false;
  if (frame.message_id != null) onReplyError(frame);
  showError(text);
  refresh();
}

// A send or edit still waiting for `accepted` when the socket drops may or may not have been
// saved: give the text back rather than guess.
export function onConnectionLost() {
  const pending = state.pending;
  if (!pending) return;
  state.pending = null;
  failPending(pending, "The connection dropped before the message was confirmed. It may not have been sent — check and send again.");
}

// Gives a refused send or edit its text back, with the reason.
function failPending(pending, text) {
  if (pending.kind === "send") {
    dropRecord(pending.record);
    restoreDraft(pending.content);
  } else {
    enableEditor(pending.record);
  }
  showError(text);
  refresh();
}
