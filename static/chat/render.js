/*
 * Render untrusted markdown written by the model into a DOM element, safely.
 *
 * The text is whatever the model produced, so it is treated like input from a stranger:
 *   1. marked turns markdown into HTML. Raw HTML in the text is escaped (shown as text, like
 *      any chat UI does), images become a "[image removed]" note and task-list checkboxes
 *      become plain characters, so marked itself never emits <img>, <input> or raw tags.
 *   2. DOMPurify then sanitises that HTML with an allow-list of the tags markdown needs, as a
 *      second line of defence: scripts, styles, frames, forms, media and on* handlers can
 *      never survive, links keep only http(s)/mailto targets and open in a new tab with
 *      rel="noopener noreferrer nofollow", and every image-like element is dropped, so no
 *      request is ever made for an image in a reply.
 *   3. Code blocks are highlighted (highlight.js escapes what it writes) and get a Copy button.
 *
 * One entry point: GrokRender.render(element, text, {streaming}). The chat page calls it
 * while a reply streams (streaming: true skips the costly language auto-detection) and once
 * more when the reply is done; the admin review page uses the same file through
 * templates/chat/_render_assets.html, which also renders every [data-grok-markdown] element.
 * GrokRender.copyText and GrokRender.flash serve the copy buttons here and on the chat page.
 */
(function (global) {
  "use strict";

  var marked = global.marked;
  var DOMPurify = global.DOMPurify;
  var hljs = global.hljs;

  function escapeHtml(text) {
    return String(text)
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;")
      .replace(/'/g, "&#39;");
  }

  // Our own marked instance, so a page that also uses marked elsewhere keeps its settings.
  var md = new marked.Marked({
    gfm: true,
    breaks: true, // the model writes single newlines meaning line breaks
    renderer: {
      html: function (token) {
        return escapeHtml(token.text);
      },
      image: function (token) {
        var alt = token.text ? ": " + token.text : "";
        return '<span class="md-image-removed">[image removed' + escapeHtml(alt) + "]</span>";
      },
      checkbox: function (token) {
        return token.checked ? "\u2611 " : "\u2610 ";
      },
    },
  });

  // Exactly what marked produces for markdown; anything else is dropped.
  var ALLOWED_TAGS = [
    "a", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
    "hr", "i", "li", "ol", "p", "pre", "s", "span", "strong", "sub", "sup", "table",
    "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
  ];
  var ALLOWED_ATTR = ["href", "title", "class", "start", "align"];
  // Named explicitly as well, so a later widening of ALLOWED_TAGS cannot let these back in.
  var FORBID_TAGS = [
    "script", "style", "iframe", "frame", "frameset", "object", "embed", "applet", "form",
    "input", "button", "textarea", "select", "option", "link", "meta", "base", "svg", "math",
    "img", "picture", "source", "video", "audio", "track", "image", "canvas", "template",
  ];
  var FORBID_ATTR = [
    "style", "src", "srcset", "poster", "background", "action", "formaction", "xlink:href",
    "ping", "lowsrc", "dynsrc",
  ];
  var SAFE_HREF = /^(?:https?:|mailto:)/i;
  var SAFE_CLASS = /^(?:language-[\w+#.-]{1,40}|md-image-removed)$/;

  var purifyConfig = {
    ALLOWED_TAGS: ALLOWED_TAGS,
    ALLOWED_ATTR: ALLOWED_ATTR,
    FORBID_TAGS: FORBID_TAGS,
    FORBID_ATTR: FORBID_ATTR,
    ALLOW_DATA_ATTR: false,
    ALLOW_ARIA_ATTR: false,
    ALLOWED_URI_REGEXP: SAFE_HREF,
    RETURN_DOM_FRAGMENT: true, // no re-parse of a string between sanitising and inserting
  };

  // Hooks are global to DOMPurify; install ours once even if this file is loaded twice.
  if (!DOMPurify.__grokHooks) {
    DOMPurify.__grokHooks = true;
    DOMPurify.addHook("afterSanitizeAttributes", function (node) {
      if (!node.getAttribute) return;
      // Belt and braces: no event handler attribute of any name.
      Array.prototype.slice.call(node.attributes || []).forEach(function (attr) {
        if (/^on/i.test(attr.name)) node.removeAttribute(attr.name);
      });
      if (node.nodeName === "A") {
        var href = (node.getAttribute("href") || "").trim();
        if (!SAFE_HREF.test(href)) {
          node.removeAttribute("href"); // the link text stays, it just goes nowhere
        } else {
          node.setAttribute("target", "_blank");
          node.setAttribute("rel", "noopener noreferrer nofollow");
        }
      } else if (node.hasAttribute("href")) {
        node.removeAttribute("href");
      }
      if (node.hasAttribute("class")) {
        var kept = node.getAttribute("class").split(/\s+/).filter(function (c) {
          return SAFE_CLASS.test(c);
        });
        if (kept.length) node.setAttribute("class", kept.join(" "));
        else node.removeAttribute("class");
      }
    });
    // DOMPurify only lets target through if allowed; it is set by the hook above, after the
    // attribute check, so it survives. Nothing else may set it.
  }

  function copyText(text) {
    if (global.navigator && navigator.clipboard && global.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    // Plain http on a LAN address is not a secure context: fall back to a hidden textarea.
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      try {
        document.execCommand("copy") ? resolve() : reject(new Error("copy refused"));
      } catch (err) {
        reject(err);
      } finally {
        area.remove();
      }
    });
  }

  // Shows `label` on a button for a moment (Copied, Copy failed), then its own text again.
  function flash(button, label) {
    var original = button.dataset.label || button.textContent;
    button.dataset.label = original;
    button.textContent = label;
    setTimeout(function () {
      button.textContent = original;
    }, 1500);
  }

  function decorateCodeBlock(pre, streaming) {
    var code = pre.querySelector("code");
    if (!code) return;
    var match = /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
    var lang = match ? match[1] : "";
    if (hljs) {
      if (lang && hljs.getLanguage(lang)) {
        code.innerHTML = hljs.highlight(code.textContent, { language: lang, ignoreIllegals: true }).value;
        code.classList.add("hljs");
      } else if (!streaming && !lang && code.textContent.length < 20000) {
        var auto = hljs.highlightAuto(code.textContent);
        if (auto.relevance >= 5) {
          code.innerHTML = auto.value;
          code.classList.add("hljs");
          lang = auto.language || "";
        }
      }
    }

    var wrapper = document.createElement("div");
    wrapper.className = "md-code";
    var bar = document.createElement("div");
    bar.className = "md-code-bar";
    var label = document.createElement("span");
    label.className = "md-code-lang";
    label.textContent = lang || "code";
    var button = document.createElement("button");
    button.type = "button";
    button.className = "md-copy";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy code" + (lang ? " (" + lang + ")" : ""));
    button.addEventListener("click", function () {
      copyText(code.textContent).then(
        function () { flash(button, "Copied"); },
        function () { flash(button, "Copy failed"); }
      );
    });
    bar.appendChild(label);
    bar.appendChild(button);
    pre.parentNode.insertBefore(wrapper, pre);
    wrapper.appendChild(bar);
    wrapper.appendChild(pre);
  }

  /**
   * Replace the contents of `element` with `text` rendered as safe markdown.
   * options.streaming: the text is still growing; skip expensive work that the final
   * render (streaming false) will do.
   */
  function render(element, text, options) {
    var streaming = !!(options && options.streaming);
    var html = md.parse(String(text || ""), { async: false });
    var fragment = DOMPurify.sanitize(html, purifyConfig);
    Array.prototype.slice.call(fragment.querySelectorAll("pre")).forEach(function (pre) {
      decorateCodeBlock(pre, streaming);
    });
    element.replaceChildren(fragment);
    element.classList.add("md");
  }

  global.GrokRender = { render: render, copyText: copyText, flash: flash };

  // Pages that only display stored text (the admin review page) mark elements with
  // data-grok-markdown="<raw text, auto-escaped by Django>" and need no code of their own.
  function renderMarked() {
    document.querySelectorAll("[data-grok-markdown]").forEach(function (el) {
      render(el, el.getAttribute("data-grok-markdown"), { streaming: false });
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", renderMarked);
  } else {
    renderMarked();
  }
})(window);
