/*
 * The chat page: a websocket client for docs/protocol.md, the composer, the message actions
 * and the conversation sidebar. Plain JavaScript, no build step.
 *
 * Model output is only ever shown through GrokRender.render (render.js); everything else the
 * page writes from data goes through textContent.
 */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("chat-config").textContent);

  function $(id) {
    return document.getElementById(id);
  }

  var els = {
    app: $("app"),
    sidebar: $("sidebar"),
    sidebarOpen: $("sidebar-open"),
    sidebarClose: $("sidebar-close"),
    backdrop: $("backdrop"),
    list: $("conversation-list"),
    empty: $("conversation-empty"),
    search: $("conversation-search"),
    searchResults: $("search-results"),
    searchList: $("search-list"),
    searchStatus: $("search-status"),
    title: $("conversation-title"),
    transcript: $("transcript"),
    messages: $("messages"),
    welcome: $("welcome"),
    composer: $("composer"),
    input: $("composer-input"),
    send: $("send-button"),
    stop: $("stop-button"),
    error: $("composer-error"),
    personaMenu: $("persona-menu"),
    personaOptions: $("persona-options"),
    personaCurrent: $("persona-current"),
    itemTemplate: $("conversation-item-template"),
    feedbackTemplate: $("feedback-template"),
    connection: $("connection"),
  };

  // URLs come from {% url %} with a 0 placeholder, so this file never hard-codes routes.
  var urls = {
    conversation: function (id) { return els.sidebar.dataset.urlConversation.replace("/0/", "/" + id + "/"); },
    rename: function (id) { return els.sidebar.dataset.urlRename.replace("/0/", "/" + id + "/"); },
    remove: function (id) { return els.sidebar.dataset.urlDelete.replace("/0/", "/" + id + "/"); },
    search: els.sidebar.dataset.urlSearch,
    feedback: function (id) { return els.sidebar.dataset.urlFeedback.replace("/0/", "/" + id + "/"); },
  };

  var state = {
    conversationId: config.conversationId || null,
    activeId: config.activeMessageId || null, // the reply being queued or streamed, if any
    messages: new Map(), // id -> message record (see makeRecord)
    pending: null, // a send/edit frame awaiting `accepted`: {kind, clientId, content, record}
    regenerating: false,
  };

  var ACTIVE = { queued: true, streaming: true };
  var RENDER_INTERVAL_MS = 100; // re-render a growing reply at most this often

  /* ---------------------------------------------------------------- text offsets */

  // The server counts characters as Python does (code points); JavaScript strings count UTF-16
  // units, so an emoji would be 1 there and 2 here. Offsets are always compared in code points.
  function isHigh(c) { return c >= 0xd800 && c <= 0xdbff; }
  function isLow(c) { return c >= 0xdc00 && c <= 0xdfff; }

  function cpLength(text) {
    var n = 0;
    for (var i = 0; i < text.length; i++) {
      if (isHigh(text.charCodeAt(i)) && isLow(text.charCodeAt(i + 1))) i++;
      n++;
    }
    return n;
  }

  function cpDrop(text, count) {
    var i = 0;
    while (count > 0 && i < text.length) {
      i += isHigh(text.charCodeAt(i)) && isLow(text.charCodeAt(i + 1)) ? 2 : 1;
      count--;
    }
    return text.slice(i);
  }

  /* ---------------------------------------------------------------- messages */

  function makeRecord(fields) {
    var el = document.createElement("article");
    var body = document.createElement("div");
    body.className = "message-body";
    el.appendChild(body);
    return attachRecord(el, fields);
  }

  function attachRecord(el, fields) {
    var body = el.querySelector(".message-body");
    var record = {
      id: fields.id,
      role: fields.role,
      status: fields.status || "done",
      content: fields.content || "",
      length: 0,
      error: fields.error || "",
      finish: fields.finish || "",
      position: null,
      el: el,
      body: body,
      footer: null,
      renderTimer: null,
      lastRender: 0,
      resync: false,
      lastResume: 0,
    };
    record.length = cpLength(record.content);
    el.className = "message message-" + record.role;
    if (record.id != null) {
      el.dataset.id = String(record.id);
      state.messages.set(record.id, record);
    }
    var footer = document.createElement("div");
    footer.className = "message-footer";
    el.appendChild(footer);
    record.footer = footer;
    return record;
  }

  function isActive(record) {
    return !!ACTIVE[record.status];
  }

  function renderBody(record) {
    record.lastRender = Date.now();
    record.renderTimer = null;
    var stick = nearBottom();
    if (record.role === "user") {
      record.body.textContent = record.content; // shown as typed; CSS keeps the newlines
    } else if (!record.content && isActive(record)) {
      record.body.replaceChildren(typingDots());
    } else {
      window.GrokRender.render(record.body, record.content, { streaming: isActive(record) });
    }
    if (stick) scrollToBottom();
  }

  function scheduleRender(record) {
    if (record.renderTimer) return;
    var wait = Math.max(0, RENDER_INTERVAL_MS - (Date.now() - record.lastRender));
    record.renderTimer = setTimeout(function () { renderBody(record); }, wait);
  }

  function renderNow(record) {
    if (record.renderTimer) clearTimeout(record.renderTimer);
    renderBody(record);
  }

  function typingDots() {
    var dots = document.createElement("span");
    dots.className = "typing";
    dots.setAttribute("aria-label", "Writing");
    for (var i = 0; i < 3; i++) dots.appendChild(document.createElement("span"));
    return dots;
  }

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
        return record.finish === "length" ? "Reached the length limit" : "";
      default:
        return "";
    }
  }

  function lastOfRole(role) {
    var nodes = els.messages.querySelectorAll(".message-" + role);
    var el = nodes[nodes.length - 1];
    return el ? recordFor(el) : null;
  }

  function recordFor(el) {
    var found = null;
    state.messages.forEach(function (record) { if (record.el === el) found = record; });
    if (!found && state.pending && state.pending.record && state.pending.record.el === el) found = state.pending.record;
    return found;
  }

  function button(label, action, extra) {
    var b = document.createElement("button");
    b.type = "button";
    b.className = "message-action";
    b.dataset.action = action;
    b.textContent = label;
    if (extra) b.setAttribute("aria-label", extra);
    return b;
  }

  // Status line and buttons under each message. Rebuilt after any change of state, because
  // which message may be edited or regenerated depends on the whole conversation.
  function refreshChrome() {
    var lastUser = lastOfRole("user");
    var lastAssistant = lastOfRole("assistant");
    var busy = !!state.activeId || !!state.pending || state.regenerating;
    state.messages.forEach(function (record) {
      var el = record.el;
      el.dataset.status = record.status;
      el.classList.toggle("is-streaming", record.status === "streaming");
      el.classList.toggle("is-failed", record.status === "failed");
      el.classList.toggle("is-stopped", record.status === "stopped");
      if (isActive(record)) el.setAttribute("aria-busy", "true");
      else el.removeAttribute("aria-busy");
      if (record.editing) return;

      var footer = record.footer;
      footer.replaceChildren();
      var text = statusText(record);
      if (text) {
        var status = document.createElement("span");
        status.className = "message-status";
        status.textContent = text;
        footer.appendChild(status);
      }
      if (isActive(record) || record.id == null) return;
      var actions = document.createElement("span");
      actions.className = "message-actions";
      if (record.content) actions.appendChild(button("Copy", "copy", "Copy this message"));
      if (!busy && record === lastUser) actions.appendChild(button("Edit", "edit", "Edit and resend your last message"));
      if (!busy && record === lastAssistant && state.conversationId)
        actions.appendChild(button("Regenerate", "regenerate", "Write this reply again"));
      if (record.role === "assistant" && record.content && els.feedbackTemplate) {
        actions.appendChild(els.feedbackTemplate.content.cloneNode(true));
        actions.querySelectorAll("[data-action=feedback]").forEach(function (b) {
          b.setAttribute("aria-pressed", record.rating === b.dataset.rating ? "true" : "false");
        });
      }
      footer.appendChild(actions);
    });
    updateComposerMode();
  }

  function addRecord(record) {
    els.messages.appendChild(record.el);
    els.welcome.hidden = true;
    renderBody(record);
  }

  // Drops every message after `record` (an edit or regenerate replaces what followed it).
  function removeAfter(record) {
    var node = record.el.nextElementSibling;
    while (node) {
      var next = node.nextElementSibling;
      var gone = recordFor(node);
      if (gone) {
        if (gone.renderTimer) clearTimeout(gone.renderTimer);
        state.messages.delete(gone.id);
      }
      node.remove();
      node = next;
    }
  }

  /* ---------------------------------------------------------------- websocket */

  var socket = { ws: null, attempts: 0, outages: 0, retryTimer: null, pingTimer: null, signedOut: false };

  function wsUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + config.wsPath;
  }

  function connect() {
    clearTimeout(socket.retryTimer);
    socket.retryTimer = null;
    if (socket.signedOut || (socket.ws && socket.ws.readyState <= 1)) return;
    var ws = new WebSocket(wsUrl());
    socket.ws = ws;
    ws.addEventListener("open", function () {
      socket.attempts = 0;
      showConnection("");
      clearInterval(socket.pingTimer);
      // Keeps idle sockets alive through proxies that close quiet connections.
      socket.pingTimer = setInterval(function () { sendFrame({ type: "ping" }); }, 25000);
      resumeActive();
    });
    ws.addEventListener("message", function (event) {
      var frame;
      try {
        frame = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      if (frame && typeof frame.type === "string") {
        if (frame.type !== "error") socket.outages = 0; // the server is whole again
        handleFrame(frame);
      }
    });
    ws.addEventListener("close", function (event) {
      clearInterval(socket.pingTimer);
      if (socket.ws !== ws) return;
      socket.ws = null;
      connectionLost();
      if (event.code === 4401) {
        socket.signedOut = true;
        showConnection("You are signed out. Reload the page to sign in again.");
        return;
      }
      // 4503: the server lost Redis. Its sockets open and close at once until Redis is back, so
      // back off across those reconnects instead of starting again from 0.5 s at each open.
      if (event.code === 4503) socket.attempts = ++socket.outages;
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    if (socket.retryTimer) return;
    // 0.5 s, 1 s, 2 s … capped at 15 s, with jitter so many tabs do not reconnect in step.
    var delay = Math.min(15000, 500 * Math.pow(2, socket.attempts));
    delay = delay / 2 + Math.random() * delay / 2;
    socket.attempts++;
    showConnection("Connection lost — reconnecting…");
    socket.retryTimer = setTimeout(connect, delay);
  }

  function sendFrame(frame) {
    if (!socket.ws || socket.ws.readyState !== WebSocket.OPEN) return false;
    socket.ws.send(JSON.stringify(frame));
    return true;
  }

  function resumeActive() {
    var record = state.activeId != null ? state.messages.get(state.activeId) : null;
    if (!record) return;
    sendResume(record, true);
  }

  function sendResume(record, force) {
    // A burst of deltas past a gap would each ask again; one request a second is enough.
    var now = Date.now();
    if (!force && now - record.lastResume < 1000) return;
    record.lastResume = now;
    sendFrame({ type: "resume", message_id: record.id, offset: record.resync ? 0 : record.length });
  }

  // A send or edit still waiting for `accepted` when the socket drops may or may not have been
  // saved: give the text back rather than guess.
  function connectionLost() {
    var pending = state.pending;
    if (!pending) return;
    state.pending = null;
    failPending(pending, "The connection dropped before the message was confirmed. It may not have been sent — check and send again.");
  }

  /* ---------------------------------------------------------------- frames */

  function handleFrame(frame) {
    switch (frame.type) {
      case "accepted": return onAccepted(frame);
      case "queued": return onQueued(frame);
      case "delta": return onDelta(frame);
      case "done": return onDone(frame);
      case "title": return onTitle(frame);
      case "error": return onError(frame);
      default: return undefined; // pong and anything newer than this page
    }
  }

  function onAccepted(frame) {
    var pending = state.pending && frame.client_id && frame.client_id === state.pending.clientId ? state.pending : null;
    if (pending) state.pending = null;
    state.regenerating = false;

    if (frame.conversation_id && frame.conversation_id !== state.conversationId) {
      state.conversationId = frame.conversation_id;
      history.replaceState(null, "", urls.conversation(frame.conversation_id));
      addSidebarItem(frame.conversation_id, frame.title || "New chat");
      if (els.personaOptions) els.personaOptions.disabled = true; // a conversation keeps its persona
      if (els.personaMenu) {
        els.personaMenu.open = false;
        els.personaMenu.dataset.lockedByConversation = "1";
      }
    }

    var userInfo = frame.user_message || {};
    var user = state.messages.get(userInfo.id);
    if (!user && pending && pending.kind === "edit" && pending.record) {
      // The server saved the edit under a new id: the old message and its reply go.
      user = pending.record;
      removeAfter(user);
      state.messages.delete(user.id);
      user.id = userInfo.id;
      user.el.dataset.id = String(user.id);
      state.messages.set(user.id, user);
    } else if (!user && pending && pending.kind === "send") {
      user = pending.record;
      user.id = userInfo.id;
      user.el.dataset.id = String(user.id);
      state.messages.set(user.id, user);
    } else if (!user) {
      user = makeRecord({ id: userInfo.id, role: "user", content: userInfo.content });
      addRecord(user);
    }
    if (typeof userInfo.content === "string") user.content = userInfo.content;
    if (user.editing) closeEditor(user);
    user.el.classList.remove("is-pending");
    renderNow(user);
    removeAfter(user);

    var info = frame.assistant_message || {};
    var reply = makeRecord({ id: info.id, role: "assistant", status: info.status || "queued" });
    state.activeId = reply.id;
    addRecord(reply);
    if (frame.title) onTitle({ conversation_id: state.conversationId, title: frame.title });
    clearError();
    refreshChrome();
    scrollToBottom();
  }

  function onQueued(frame) {
    var record = state.messages.get(frame.message_id);
    if (!record || !isActive(record)) return;
    record.status = "queued";
    // First come, first served: a place never rises. With several workers a higher figure comes
    // from counts a moment old, so the page keeps the least place it was told.
    record.position = record.position ? Math.min(record.position, frame.position) : frame.position;
    refreshChrome();
  }

  function onDelta(frame) {
    var record = state.messages.get(frame.message_id);
    if (!record || record.role !== "assistant" || !isActive(record)) return;
    var offset = frame.offset;
    var text = typeof frame.text === "string" ? frame.text : "";
    if (typeof offset !== "number") return;
    if (record.resync) {
      // After a page load the shown text is re-fetched from 0 (see resumeActive's caller):
      // wait for the answer that starts at 0 and take it whole.
      if (offset !== 0) return;
      record.resync = false;
      record.content = "";
      record.length = 0;
    }
    if (offset > record.length) {
      sendResume(record, false); // a frame was dropped: ask for the text from what we show
      return;
    }
    var fresh = offset < record.length ? cpDrop(text, record.length - offset) : text;
    if (fresh) {
      record.content += fresh;
      record.length += cpLength(fresh);
    }
    if (record.status !== "streaming") {
      record.status = "streaming";
      record.position = null;
      refreshChrome();
    }
    scheduleRender(record);
  }

  function onDone(frame) {
    var record = state.messages.get(frame.message_id);
    if (!record) return;
    if (typeof frame.content === "string") {
      record.content = frame.content; // the saved reply is the truth
      record.length = cpLength(record.content);
    }
    record.resync = false;
    record.status = frame.status || "done";
    record.finish = frame.finish_reason || "";
    record.error = frame.error || "";
    record.position = null;
    if (state.activeId === record.id) state.activeId = null;
    renderNow(record);
    refreshChrome();
  }

  function onTitle(frame) {
    var title = String(frame.title || "");
    if (!title) return;
    if (frame.conversation_id === state.conversationId) {
      els.title.textContent = title;
      document.title = title + " · grokweb";
    }
    document.querySelectorAll('.conversation-item[data-id="' + Number(frame.conversation_id) + '"]').forEach(function (li) {
      var link = li.querySelector(".conversation-link");
      var snippet = link.querySelector(".conversation-snippet");
      link.textContent = title;
      if (snippet) link.appendChild(snippet);
      li.querySelectorAll("button[data-action]").forEach(function (b) {
        b.setAttribute("aria-label", b.title + " \u201C" + title + "\u201D");
      });
    });
  }

  var ERROR_TEXT = {
    busy: "The model is busy right now. Try again in a moment — your text is kept.",
    unavailable: "The model is unavailable right now. Try again shortly — your text is kept.",
    too_large: "That message is too large.",
  };

  function describeError(frame) {
    var text = ERROR_TEXT[frame.code] || frame.message || "Something went wrong.";
    if (frame.code === "quota") {
      text = frame.message || "You have reached your plan's limit.";
      if (frame.resets_at) {
        var when = new Date(frame.resets_at);
        if (!isNaN(when)) text += " It resets " + when.toLocaleString() + ".";
      }
    } else if (frame.message && ERROR_TEXT[frame.code]) {
      text = frame.message + " — your text is kept.";
    }
    return text;
  }

  function onError(frame) {
    var text = describeError(frame);
    var pending = state.pending;
    if (pending && frame.client_id && frame.client_id === pending.clientId) {
      state.pending = null;
      failPending(pending, text);
      return;
    }
    if (state.regenerating && !frame.client_id) state.regenerating = false;
    if (frame.message_id != null) {
      var record = state.messages.get(frame.message_id);
      if (record && frame.code === "failed" && isActive(record)) {
        record.status = "failed";
        record.error = frame.message || "";
        if (state.activeId === record.id) state.activeId = null;
        renderNow(record);
      }
      if (record && frame.code === "not_found" && state.activeId === record.id) {
        state.activeId = null; // nothing more will come for it
      }
    }
    showError(text);
    refreshChrome();
  }

  // Gives a refused send/edit its text back, with the reason.
  function failPending(pending, text) {
    if (pending.kind === "send") {
      if (pending.record) pending.record.el.remove();
      if (!els.input.value.trim()) els.input.value = pending.content;
      else if (els.input.value !== pending.content) els.input.value = pending.content + "\n" + els.input.value;
      autosize();
      if (!els.messages.children.length) els.welcome.hidden = false;
      els.input.focus();
    } else if (pending.kind === "edit" && pending.record) {
      var editor = pending.record.el.querySelector(".message-editor");
      if (editor) editor.querySelectorAll("textarea, button").forEach(function (n) { n.disabled = false; });
    }
    showError(text);
    refreshChrome();
  }

  /* ---------------------------------------------------------------- composer */

  function newClientId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "c" + Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  function showError(text) {
    els.error.textContent = text;
    els.error.hidden = !text;
  }

  function clearError() {
    showError("");
  }

  function showConnection(text) {
    els.connection.textContent = text;
    els.connection.hidden = !text;
  }

  function updateComposerMode() {
    var streaming = !!state.activeId;
    els.stop.hidden = !streaming;
    els.send.hidden = streaming;
    els.send.disabled = !!state.pending;
  }

  function autosize() {
    els.input.style.height = "auto";
    els.input.style.height = Math.min(els.input.scrollHeight, window.innerHeight * 0.4) + "px";
  }

  function submit() {
    var content = els.input.value;
    if (!content.trim() || state.pending) return;
    if (state.activeId) {
      showError("Wait for the reply to finish, or stop it (Esc), before sending again.");
      return;
    }
    if (cpLength(content) > config.maxMessageChars) {
      showError("That message is too long (at most " + config.maxMessageChars + " characters).");
      return;
    }
    var clientId = newClientId();
    var frame = {
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
    var record = makeRecord({ id: null, role: "user", content: content });
    record.el.classList.add("is-pending");
    addRecord(record);
    state.pending = { kind: "send", clientId: clientId, content: content, record: record };
    els.input.value = "";
    autosize();
    clearError();
    refreshChrome();
    scrollToBottom();
  }

  function selectedPersona() {
    var checked = els.personaOptions && els.personaOptions.querySelector("input[name=persona]:checked");
    return checked ? checked.value : config.persona;
  }

  if (els.personaOptions) {
    els.personaOptions.addEventListener("change", function (event) {
      els.personaCurrent.textContent = event.target.dataset.name || event.target.value;
      els.personaMenu.open = false;
      els.input.focus();
    });
    els.personaMenu.querySelector("summary").addEventListener("click", function (event) {
      if (els.personaMenu.dataset.lockedByConversation) event.preventDefault();
    });
    // Closes like a menu: on a click elsewhere.
    document.addEventListener("click", function (event) {
      if (els.personaMenu.open && !els.personaMenu.contains(event.target)) els.personaMenu.open = false;
    });
  }

  function stop() {
    if (state.activeId == null) return;
    sendFrame({ type: "stop", message_id: state.activeId });
  }

  els.composer.addEventListener("submit", function (event) {
    event.preventDefault();
    submit();
  });

  els.input.addEventListener("keydown", function (event) {
    // isComposing: Enter that confirms an IME candidate must not send.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  els.input.addEventListener("input", autosize);
  els.stop.addEventListener("click", stop);

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && !event.defaultPrevented) {
      if (els.personaMenu && els.personaMenu.open) els.personaMenu.open = false;
      else if (els.app.classList.contains("sidebar-visible")) closeSidebar();
      else if (state.activeId != null) {
        event.preventDefault();
        stop();
      }
    }
  });

  /* ---------------------------------------------------------------- message actions */

  els.messages.addEventListener("click", function (event) {
    var target = event.target.closest(".message-action");
    if (!target) return;
    var record = recordFor(target.closest(".message"));
    if (!record) return;
    var action = target.dataset.action;
    if (action === "copy") {
      window.GrokRender.copyText(record.content).then(
        function () { flashButton(target, "Copied"); },
        function () { flashButton(target, "Copy failed"); }
      );
    } else if (action === "regenerate") {
      if (state.activeId || state.pending || state.regenerating) return;
      if (sendFrame({ type: "regenerate", conversation_id: state.conversationId })) {
        state.regenerating = true;
        clearError();
        refreshChrome();
      } else showError("Not connected — reconnecting.");
    } else if (action === "edit") {
      openEditor(record);
    } else if (action === "feedback") {
      var rating = target.dataset.rating;
      post(urls.feedback(record.id), { rating: rating }).then(
        function () {
          record.rating = rating;
          refreshChrome();
        },
        function (err) { showError("Could not save your feedback: " + err.message); }
      );
    }
  });

  function flashButton(target, text) {
    var original = target.textContent;
    target.textContent = text;
    setTimeout(function () { target.textContent = original; }, 1500);
  }

  function openEditor(record) {
    record.editing = true;
    var form = document.createElement("form");
    form.className = "message-editor";
    var label = document.createElement("label");
    label.className = "visually-hidden";
    label.textContent = "Edit your message";
    var area = document.createElement("textarea");
    area.value = record.content;
    area.rows = Math.min(12, record.content.split("\n").length + 1);
    area.maxLength = config.maxMessageChars;
    label.appendChild(area);
    var row = document.createElement("div");
    row.className = "message-editor-row";
    var cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "button";
    cancel.textContent = "Cancel";
    var save = document.createElement("button");
    save.type = "submit";
    save.className = "button button-primary";
    save.textContent = "Save & resend";
    row.append(cancel, save);
    form.append(label, row);
    record.body.hidden = true;
    record.footer.hidden = true;
    record.el.insertBefore(form, record.footer);

    function saveEdit() {
      var content = area.value;
      if (!content.trim() || state.pending || state.activeId) return;
      var clientId = newClientId();
      if (!sendFrame({ type: "edit", message_id: record.id, content: content, client_id: clientId })) {
        showError("Not connected — reconnecting. Your edit is kept.");
        return;
      }
      state.pending = { kind: "edit", clientId: clientId, content: content, record: record };
      area.disabled = save.disabled = cancel.disabled = true;
      clearError();
      updateComposerMode();
    }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      saveEdit();
    });
    area.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        saveEdit();
      } else if (event.key === "Escape") {
        event.preventDefault();
        closeEditor(record);
      }
    });
    cancel.addEventListener("click", function () { closeEditor(record); });
    area.focus();
    area.setSelectionRange(area.value.length, area.value.length);
  }

  function closeEditor(record) {
    var form = record.el.querySelector(".message-editor");
    if (form) form.remove();
    record.editing = false;
    record.body.hidden = false;
    record.footer.hidden = false;
    refreshChrome();
  }

  /* ---------------------------------------------------------------- sidebar */

  function openSidebar() {
    els.app.classList.add("sidebar-visible");
    els.backdrop.hidden = false;
    els.sidebarOpen.setAttribute("aria-expanded", "true");
    els.search.focus();
  }

  function closeSidebar() {
    els.app.classList.remove("sidebar-visible");
    els.backdrop.hidden = true;
    els.sidebarOpen.setAttribute("aria-expanded", "false");
  }

  els.sidebarOpen.addEventListener("click", openSidebar);
  els.sidebarClose.addEventListener("click", closeSidebar);
  els.backdrop.addEventListener("click", closeSidebar);

  function csrfToken() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  // JSON rather than FormData: Django refuses an empty multipart body (delete has no fields).
  function post(url, fields) {
    return fetch(url, {
      method: "POST",
      body: JSON.stringify(fields || {}),
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "X-CSRFToken": csrfToken(),
        Accept: "application/json",
        "X-Requested-With": "XMLHttpRequest",
      },
    }).then(function (response) {
      var type = response.headers.get("Content-Type") || "";
      var data = type.indexOf("application/json") >= 0 ? response.json() : Promise.resolve({});
      return data.then(function (body) {
        // Refusals come back as {"error": {"code", "message"}}; show their message.
        if (!response.ok) throw new Error((body && body.error && body.error.message) || "HTTP " + response.status);
        return body;
      });
    });
  }

  // Items made here match the server-rendered ones: same markup, cloned from a <template>.
  function sidebarItem(id, title) {
    var li = els.itemTemplate.content.firstElementChild.cloneNode(true);
    li.dataset.id = String(id);
    var link = li.querySelector(".conversation-link");
    link.href = urls.conversation(id);
    link.textContent = title;
    li.querySelectorAll("button[data-action]").forEach(function (b) {
      b.setAttribute("aria-label", b.title + " \u201C" + title + "\u201D");
    });
    return li;
  }

  function addSidebarItem(id, title) {
    if (els.empty) els.empty.remove();
    els.list.querySelectorAll(".is-current").forEach(function (n) {
      n.classList.remove("is-current");
      var a = n.querySelector("a");
      if (a) a.removeAttribute("aria-current");
    });
    var li = sidebarItem(id, title);
    li.classList.add("is-current");
    li.querySelector("a").setAttribute("aria-current", "page");
    els.list.prepend(li);
  }

  function itemTitle(li) {
    var link = li.querySelector(".conversation-link");
    return link.firstChild ? link.firstChild.textContent : ""; // the title, without a search snippet
  }

  function startRename(li) {
    var id = Number(li.dataset.id);
    var link = li.querySelector(".conversation-link");
    var input = document.createElement("input");
    input.type = "text";
    input.className = "rename-input";
    input.value = itemTitle(li);
    input.maxLength = 200;
    input.setAttribute("aria-label", "New title");
    link.hidden = true;
    li.insertBefore(input, link);
    input.focus();
    input.select();
    var finished = false;

    function finish(save) {
      if (finished) return;
      finished = true;
      var title = input.value.trim();
      input.remove();
      link.hidden = false;
      if (!save || !title || title === itemTitle(li)) return;
      post(urls.rename(id), { title: title }).then(
        function (data) { onTitle({ conversation_id: id, title: (data && data.title) || title }); },
        function (err) { showError("Could not rename the conversation: " + err.message); }
      );
    }
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter") { event.preventDefault(); finish(true); }
      else if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); finish(false); }
    });
    input.addEventListener("blur", function () { finish(true); });
  }

  function deleteConversation(li) {
    var id = Number(li.dataset.id);
    if (!window.confirm("Delete \u201C" + itemTitle(li) + "\u201D? This cannot be undone.")) return;
    post(urls.remove(id), {}).then(
      function () {
        document.querySelectorAll('.conversation-item[data-id="' + id + '"]').forEach(function (n) { n.remove(); });
        if (id === state.conversationId) window.location.assign(document.getElementById("new-chat").href);
      },
      function (err) { showError("Could not delete the conversation: " + err.message); }
    );
  }

  els.sidebar.addEventListener("click", function (event) {
    var target = event.target.closest("button[data-action]");
    if (!target) return;
    var li = target.closest(".conversation-item");
    if (!li) return;
    if (target.dataset.action === "rename") startRename(li);
    else if (target.dataset.action === "delete") deleteConversation(li);
  });

  /* ---------------------------------------------------------------- search */

  var search = { timer: null, controller: null };

  function runSearch() {
    var query = els.search.value.trim();
    if (search.controller) search.controller.abort();
    if (!query) {
      els.searchResults.hidden = true;
      els.list.hidden = false;
      return;
    }
    search.controller = window.AbortController ? new AbortController() : null;
    fetch(urls.search + "?q=" + encodeURIComponent(query), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      signal: search.controller ? search.controller.signal : undefined,
    })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        var results = (data && data.results) || [];
        els.searchList.replaceChildren();
        results.forEach(function (result) {
          var li = sidebarItem(result.id, result.title || "Untitled");
          if (result.id === state.conversationId) li.classList.add("is-current");
          if (result.snippet) {
            var snippet = document.createElement("span");
            snippet.className = "conversation-snippet";
            snippet.textContent = result.snippet;
            li.querySelector(".conversation-link").appendChild(snippet);
          }
          els.searchList.appendChild(li);
        });
        els.searchStatus.textContent = results.length
          ? results.length + (results.length === 1 ? " conversation" : " conversations")
          : "No conversations match.";
        els.list.hidden = true;
        els.searchResults.hidden = false;
      })
      .catch(function (err) {
        if (err && err.name === "AbortError") return;
        els.searchStatus.textContent = "Search failed.";
        els.list.hidden = true;
        els.searchResults.hidden = false;
      });
  }

  els.search.addEventListener("input", function () {
    clearTimeout(search.timer);
    search.timer = setTimeout(runSearch, 250);
  });
  els.search.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && els.search.value) {
      event.preventDefault();
      event.stopPropagation();
      els.search.value = "";
      runSearch();
    }
  });

  /* ---------------------------------------------------------------- scrolling */

  function nearBottom() {
    var t = els.transcript;
    return t.scrollHeight - t.scrollTop - t.clientHeight < 120;
  }

  function scrollToBottom() {
    els.transcript.scrollTop = els.transcript.scrollHeight;
  }

  /* ---------------------------------------------------------------- start */

  // Messages arrive in the page as text (Django-escaped); read it back and render it here.
  els.messages.querySelectorAll(".message").forEach(function (el) {
    var body = el.querySelector(".message-body");
    var record = attachRecord(el, {
      id: Number(el.dataset.id),
      role: el.dataset.role,
      status: el.dataset.status,
      content: body.textContent,
      error: el.dataset.error,
      finish: el.dataset.finish,
    });
    record.rating = el.dataset.rating || null; // the user's thumbs up/down, if given
    if (record.id === state.activeId && isActive(record)) {
      // The HTML parser turns "\r\n" into "\n", so the text read back from the page can be
      // shorter than the saved reply; re-fetch it from 0 once so offsets line up exactly.
      record.resync = true;
    }
    renderBody(record);
  });
  if (state.activeId != null && !state.messages.has(state.activeId)) state.activeId = null;
  refreshChrome();
  scrollToBottom();
  autosize();
  connect();
  els.input.focus();

  window.addEventListener("online", function () {
    if (!socket.ws) connect();
  });
  // Exposed for the browser tests and for debugging in the console.
  window.grokChat = { state: state, socket: socket };
})();
