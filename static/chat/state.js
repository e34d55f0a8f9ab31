/*
 * The conversation as the page knows it, one object shared by the chat modules (and exposed
 * as grokChat.state for the browser tests). The comment on each field names who writes it.
 */
export const state = {
  conversationId: null, // chat.js from the page, then `accepted` (conversation.js)
  activeId: null, // the reply being queued or streamed, if any (chat.js, transcript.js)
  messages: new Map(), // message id -> its record (messages.js)
  // A send or edit awaiting `accepted`, {kind, clientId, content, record} (composer.js and
  // editor.js set it, conversation.js takes it).
  pending: null,
  regenerating: false, // a regenerate awaiting `accepted` (actions.js, conversation.js)
};

// While a reply or a frame is in flight, nothing else may be sent.
export function isBusy() {
  return !!state.activeId || !!state.pending || state.regenerating;
}
