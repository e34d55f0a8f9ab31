/*
 * The composer: the message box (Enter sends, Shift+Enter is a new line), the `send` frame
 * (shown at once, confirmed by `accepted`, given back on a refusal), the Stop button and the
 * `stop` frame, and the persona menu (locked once a conversation exists: it keeps its persona).
 */
import { cpLength, newClientId } from "./protocol.js";
import { state } from "./state.js";
import { connect, sendFrame } from "./socket.js";
import { showError, clearError } from "./notice.js";
import { makeRecord, addRecord, scrollToBottom } from "./messages.js";
import { refresh } from "./controls.js";

const form = document.getElementById("composer");
const input = document.getElementById("composer-input");
const stopButton = document.getElementById("stop-button");
const personaMenu = document.getElementById("persona-menu");
const personaOptions = document.getElementById("persona-options");
const personaCurrent = document.getElementById("persona-current");

let config = null;

export function setUpComposer(pageConfig) {
  config = pageConfig;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  input.addEventListener("keydown", (event) => {
    // isComposing: Enter that confirms an IME candidate must not send.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  input.addEventListener("input", autosize);
  stopButton.addEventListener("click", stop);
  if (personaOptions) setUpPersonaMenu();
  autosize();
}

export function focusComposer() {
  input.focus();
}

function autosize() {
  input.style.height = "auto";
  input.style.height = Math.min(input.scrollHeight, window.innerHeight * 0.4) + "px";
}

function submit() {
  const content = input.value;
  if (!content.trim() || state.pending) return;
  if (state.activeId) {
    showError("Wait for the reply to finish, or stop it (Esc), before sending again.");
    return;
  }
  if (cpLength(content) > config.maxMessageChars) {
    showError("That message is too long (at most " + config.maxMessageChars + " characters).");
    return;
  }
  const clientId = newClientId();
  const frame = {
    type: "send",
    conversation_id: state.conversationId,
    persona: selectedPersona(),
    content: content,
    client_id: clientId,
  };
  if (!sendFrame(frame)) {
    showError("Not connected — reconnecting. Your message is kept; send it again in a moment.");
    connect();
    return;
  }
  // Shown at once, confirmed (given its id) by `accepted`, taken back on an error.
  const record = makeRecord({ id: null, role: "user", content: content });
  record.el.classList.add("is-pending");
  addRecord(record);
  state.pending = { kind: "send", clientId: clientId, content: content, record: record };
  input.value = "";
  autosize();
  clearError();
  refresh();
  scrollToBottom();
}

// A refused send: its text goes back in the box, before anything typed since.
export function restoreDraft(content) {
  if (!input.value.trim()) input.value = content;
  else if (input.value !== content) input.value = content + "\n" + input.value;
  autosize();
  input.focus();
}

export function stop() {
  if (state.activeId == null) return;
  sendFrame({ type: "stop", message_id: state.activeId });
}

function selectedPersona() {
  const checked = personaOptions && personaOptions.querySelector("input[name=persona]:checked");
  return checked ? checked.value : config.persona;
}

function setUpPersonaMenu() {
  personaOptions.addEventListener("change", (event) => {
    personaCurrent.textContent = event.target.dataset.name || event.target.value;
    personaMenu.open = false;
    input.focus();
  });
  personaMenu.querySelector("summary").addEventListener("click", (event) => {
    if (personaMenu.dataset.lockedByConversation) event.preventDefault();
  });
  // Closes like a menu: on a click elsewhere.
  document.addEventListener("click", (event) => {
    if (personaMenu.open && !personaMenu.contains(event.target)) personaMenu.open = false;
  });
}

// True if the menu was open (Esc closes it before anything else).
export function closePersonaMenu() {
  if (!personaMenu || !personaMenu.open) return false;
  personaMenu.open = false;
  return true;
}

// A new conversation keeps the persona it started with.
export function lockPersona() {
  if (personaOptions) personaOptions.disabled = true;
  if (personaMenu) {
    personaMenu.open = false;
    personaMenu.dataset.lockedByConversation = "1";
  }
}
