/*
 * The chat page's entry module: reads the page's JSON config (the chat-config json_script),
 * wires the modules below to the page and to the websocket's frames, and starts.
 *
 *   socket.js        the websocket: connect, reconnect, close codes, frame dispatch, resume
 *   messages.js      message records and their rendering (model output only via render.js)
 *   transcript.js    reply frames: accepted's messages, queued, delta, done, a reply's error;
 *                    path (another branch on screen)
 *   conversation.js  accepted and error for the page's own frames (address, sidebar, refusals)
 *   controls.js      status lines and buttons that depend on the whole conversation
 *   actions.js       the buttons under a message, versions; editor.js edits a user message
 *   composer.js      the message box, send, stop, persona menu
 *   sidebar.js       the conversation list, rename, delete; search.js searches it
 *   protocol.js      close codes, code-point offsets, client ids (docs/protocol.md)
 *   share.js         the Share button's dialog; plan.js refreshes the plan box after a reply
 *   state.js, notice.js, http.js   the shared state, the status lines, the HTTP endpoints
 */
import { state } from "./state.js";
import { socket, startSocket } from "./socket.js";
import { readPage, scrollToBottom } from "./messages.js";
import { onQueued, onDelta, onDone, showPath, resumeActive } from "./transcript.js";
import { onAccepted, onError, onConnectionLost } from "./conversation.js";
import { refresh } from "./controls.js";
import { setUpActions } from "./actions.js";
import { setUpEditor } from "./editor.js";
import { setUpComposer, focusComposer, closePersonaMenu, stop } from "./composer.js";
import { setUpSidebar, closeSidebar } from "./sidebar.js";
import { setUpSearch, showLinkedMessage, askForLinkedBranch } from "./search.js";
import { setUpShare } from "./share.js";
import { refreshPlan } from "./plan.js";

const config = JSON.parse(document.getElementById("chat-config").textContent);

state.conversationId = config.conversationId || null;
state.activeId = config.activeMessageId || null;
readPage();
if (state.activeId != null && !state.messages.has(state.activeId)) state.activeId = null;

setUpActions();
setUpEditor(config);
setUpComposer(config);
setUpSidebar();
setUpSearch();
setUpShare();

// Esc closes the persona menu, else the sidebar; with neither open it stops the reply.
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || event.defaultPrevented) return;
  if (closePersonaMenu() || closeSidebar()) return;
  if (state.activeId != null) {
    event.preventDefault();
    stop();
  }
});

refresh();
if (!showLinkedMessage()) scrollToBottom();
// A search result in this same conversation only changes the address's #m-<id>.
window.addEventListener("hashchange", showLinkedMessage);
startSocket(config.wsPath, {
  frames: {
    accepted: onAccepted,
    queued: onQueued,
    delta: onDelta,
    done: (frame) => { onDone(frame); refreshPlan(); },
    path: (frame) => { showPath(frame); showLinkedMessage(); },
    error: onError,
  },
  open: () => { resumeActive(); askForLinkedBranch(); },
  lost: onConnectionLost,
});
focusComposer();

// Exposed for the browser tests and for debugging in the console.
window.grokChat = { state: state, socket: socket };
