/*
 * The websocket of docs/protocol.md: connects, keeps an idle socket alive with pings,
 * reconnects with backoff, reacts to the close codes, and hands each frame to the handler
 * named by its `type` (pong, and types newer than this page, are ignored). `resume` asks for a
 * reply's text from the offset the page shows.
 */
import { CLOSE_UNAUTHENTICATED, CLOSE_UNAVAILABLE } from "./protocol.js";
import { showConnection } from "./notice.js";

const PING_INTERVAL_MS = 25000;
const RESUME_INTERVAL_MS = 1000;

// Exposed as grokChat.socket for the browser tests.
export const socket = { ws: null, attempts: 0, outages: 0, retryTimer: null, pingTimer: null, signedOut: false };

let url = "";
let handlers = null;

/*
 * on.frames: {type: handler(frame)}; on.open(): the socket is (again) connected; on.lost(): it
 * dropped (called before any reconnect).
 */
export function startSocket(wsPath, on) {
  url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + wsPath;
  handlers = on;
  connect();
  window.addEventListener("online", () => {
    if (!socket.ws) connect();
  });
}

export function connect() {
  clearTimeout(socket.retryTimer);
  socket.retryTimer = null;
  if (socket.signedOut || (socket.ws && socket.ws.readyState <= 1)) return;
  const ws = new WebSocket(url);
  socket.ws = ws;
  ws.addEventListener("open", () => {
    socket.attempts = 0;
    showConnection("");
    clearInterval(socket.pingTimer);
    // Keeps idle sockets alive through proxies that close quiet connections.
    socket.pingTimer = setInterval(() => sendFrame({ type: "ping" }), PING_INTERVAL_MS);
    handlers.open();
  });
  ws.addEventListener("message", (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch (err) {
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    if (frame.type !== "error") socket.outages = 0; // the server is whole again
    if (Object.hasOwn(handlers.frames, frame.type)) handlers.frames[frame.type](frame);
  });
  ws.addEventListener("close", (event) => {
    clearInterval(socket.pingTimer);
    if (socket.ws !== ws) return;
    socket.ws = null;
    handlers.lost();
    if (event.code === CLOSE_UNAUTHENTICATED) {
      socket.signedOut = true;
      showConnection("You are signed out. Reload the page to sign in again.");
      return;
    }
    // The server lost Redis: its sockets open and close at once until Redis is back, so back
    // off across those reconnects instead of starting again from 0.5 s at each open.
    if (event.code === CLOSE_UNAVAILABLE) socket.attempts = ++socket.outages;
    scheduleReconnect();
  });
}

function scheduleReconnect() {
  if (socket.retryTimer) return;
  // 0.5 s, 1 s, 2 s … capped at 15 s, with jitter so many tabs do not reconnect in step.
  let delay = Math.min(15000, 500 * Math.pow(2, socket.attempts));
  delay = delay / 2 + (Math.random() * delay) / 2;
  socket.attempts++;
  showConnection("Connection lost — reconnecting…");
  socket.retryTimer = setTimeout(connect, delay);
}

// False when the socket is not open: the frame was not sent.
export function sendFrame(frame) {
  if (!socket.ws || socket.ws.readyState !== WebSocket.OPEN) return false;
  socket.ws.send(JSON.stringify(frame));
  return true;
}

// Asks for `record`'s text from what it shows (from 0 when it must be re-fetched whole).
// A burst of deltas past a gap would each ask again: unless forced, once a second is enough.
export function resume(record, force) {
  const now = Date.now();
  if (!force && now - record.lastResume < RESUME_INTERVAL_MS) return;
  record.lastResume = now;
  sendFrame({ type: "resume", message_id: record.id, offset: record.resync ? 0 : record.length });
}
