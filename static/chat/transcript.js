/*
 * What the server says about replies, applied to the transcript: the messages of an `accepted`
 * (the user's message confirmed, the new reply added), `queued` (its place in line), `delta`
 * (text at an offset, see appendDelta), `done` (the saved reply, which wins), a reply's
 * `error`, `path` (another branch on screen, after a `switch`), and `resume` of the active
 * reply when the socket (re)connects.
 */
import { cpDrop, cpLength } from "./protocol.js";
import { state } from "./state.js";
import { resume } from "./socket.js";
import { makeRecord, addRecord, clearRecords, setId, removeAfter, renderNow, scheduleRender, isActive } from "./messages.js";
import { refresh } from "./controls.js";
import { closeEditor } from "./editor.js";

// `pending` is the page's own send or edit that this `accepted` answers, if any.
export function showAccepted(frame, pending) {
  const userInfo = frame.user_message || {};
  let user = state.messages.get(userInfo.id);
  if (!user && pending) {
    user = pending.record;
    // An edit is saved under a new id: the old message's reply goes.
    if (pending.kind === "edit") removeAfter(user);
    setId(user, userInfo.id);
  } else if (!user) {
    user = makeRecord({ id: userInfo.id, role: "user", content: userInfo.content });
    addRecord(user);
  }
  if (typeof userInfo.content === "string") user.content = userInfo.content;
  if (Array.isArray(userInfo.versions)) user.versions = userInfo.versions;
  if (user.editing) closeEditor(user);
  user.el.classList.remove("is-pending");
  renderNow(user);
  removeAfter(user);

  const info = frame.assistant_message || {};
  const reply = makeRecord({ id: info.id, role: "assistant", status: info.status || "queued", versions: info.versions });
  state.activeId = reply.id;
  addRecord(reply);
}

// The answer to a `switch`: the branch now on screen, shown in place of the one that was.
export function showPath(frame) {
  if (frame.conversation_id !== state.conversationId || !Array.isArray(frame.messages)) return;
  clearRecords();
  frame.messages.forEach((m) => {
    const record = makeRecord({
      id: m.id,
      role: m.role,
      status: m.status,
      content: m.content,
      error: m.error,
      finishReason: m.finish_reason,
      rating: m.rating,
      versions: m.versions,
    });
    addRecord(record); // none is active: the server refuses `switch` while a reply is written
  });
  refresh();
}

export function onQueued(frame) {
  const record = state.messages.get(frame.message_id);
  if (!record || !isActive(record)) return;
  record.status = "queued";
  // First come, first served: a place never rises. With several workers a higher figure comes
  // from counts a moment old, so the page keeps the least place it was told.
  record.position = record.position ? Math.min(record.position, frame.position) : frame.position;
  refresh();
}

/*
 * Adds a delta's `text`, which starts at `offset` (code points into the reply), to what
 * `record` shows (its first record.length code points):
 *   - offset past the end: a frame was lost in between; nothing is added and this returns
 *     false, so that the caller asks `resume` for the text from what is shown;
 *   - otherwise the part of `text` already shown (a resume's answer overlapping live deltas)
 *     is dropped and the rest appended; a delta wholly shown adds nothing.
 */
function appendDelta(record, offset, text) {
  if (offset > record.length) return false;
  const fresh = cpDrop(text, record.length - offset);
  record.content += fresh;
  record.length += cpLength(fresh);
  return true;
}

export function onDelta(frame) {
  const record = state.messages.get(frame.message_id);
  if (!record || record.role !== "assistant" || !isActive(record)) return;
  if (typeof frame.offset !== "number") return;
  if (record.resync) {
    // After a page load the shown text is re-fetched from 0 (see readPage in messages.js):
    // wait for the answer that starts at 0 and take it whole.
    if (frame.offset !== 0) return;
    record.resync = false;
    record.content = "";
    record.length = 0;
  }
  if (!appendDelta(record, frame.offset, typeof frame.text === "string" ? frame.text : "")) {
    resume(record, false);
    return;
  }
  if (record.status !== "streaming") {
    record.status = "streaming";
    record.position = null;
    refresh();
  }
  scheduleRender(record);
}

export function onDone(frame) {
  const record = state.messages.get(frame.message_id);
  if (!record) return;
  if (typeof frame.content === "string") {
    record.content = frame.content; // the saved reply is the truth
    record.length = cpLength(record.content);
  }
  record.resync = false;
  record.status = frame.status || "done";
  record.finishReason = frame.finish_reason || "";
  record.error = frame.error || "";
  record.position = null;
  if (state.activeId === record.id) state.activeId = null;
  renderNow(record);
  refresh();
}

// An `error` about a reply: `failed` ends it (its text kept), `not_found` stops waiting for it.
export function onReplyError(frame) {
  const record = state.messages.get(frame.message_id);
  if (!record) return;
  if (frame.code === "failed" && isActive(record)) {
    record.status = "failed";
    record.error = frame.message || "";
    if (state.activeId === record.id) state.activeId = null;
    renderNow(record);
  }
  if (frame.code === "not_found" && state.activeId === record.id) state.activeId = null;
}

// After a (re)connect: the text of the active reply from what the page shows.
export function resumeActive() {
  const record = state.messages.get(state.activeId);
  if (record) resume(record, true);
}
