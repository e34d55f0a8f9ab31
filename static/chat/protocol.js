/*
 * What docs/protocol.md fixes and the page must agree on with the server: the websocket close
 * codes, how reply offsets are counted, and the client_id a send or edit carries.
 */

// Close codes, defined in docs/protocol.md (chat/consumers.py uses the same names).
export const CLOSE_UNAUTHENTICATED = 4401; // no session: the user must sign in again
export const CLOSE_UNAVAILABLE = 4503; // the server lost Redis: reconnect, with backoff

// The server counts characters as Python does (code points); JavaScript strings count UTF-16
// units, so an emoji is 1 there and 2 here. Offsets are always compared in code points.
function isPair(text, i) {
  const high = text.charCodeAt(i);
  const low = text.charCodeAt(i + 1);
  return high >= 0xd800 && high <= 0xdbff && low >= 0xdc00 && low <= 0xdfff;
}

export function cpLength(text) {
  let n = 0;
  for (let i = 0; i < text.length; i += isPair(text, i) ? 2 : 1) n++;
  return n;
}

// `text` without its first `count` code points.
export function cpDrop(text, count) {
  let i = 0;
  for (; count > 0 && i < text.length; count--) i += isPair(text, i) ? 2 : 1;
  return text.slice(i);
}

// Echoed back in `accepted` or `error`, so the page knows which of its frames was answered.
export function newClientId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return "c" + Date.now().toString(36) + Math.random().toString(36).slice(2);
}
