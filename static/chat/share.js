/*
 * The Share button: a dialog that makes (or refreshes) the conversation's read-only link
 * (chat/sharing.py) under the display name typed, then shows the link to copy.
 */
import { state } from "./state.js";
import { post, urls } from "./http.js";

const button = document.getElementById("share-button");
const dialog = document.getElementById("share-dialog");
const form = document.getElementById("share-form");
const nameBox = document.getElementById("share-name");
const result = document.getElementById("share-result");
const urlBox = document.getElementById("share-url");
const error = document.getElementById("share-error");
const copy = document.getElementById("share-copy");

function showError(text) {
  error.textContent = text;
  error.hidden = !text;
}

export function setUpShare() {
  button.addEventListener("click", () => {
    result.hidden = true;
    copy.hidden = true;
    showError(state.conversationId == null ? "Send a message first: there is nothing to share yet." : "");
    dialog.showModal();
  });
  document.getElementById("share-close").addEventListener("click", () => dialog.close());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (state.conversationId == null) return;
    showError("");
    try {
      const share = await post(urls.share(state.conversationId), { display_name: nameBox.value });
      urlBox.value = share.url;
      result.hidden = false;
      copy.hidden = false;
      urlBox.select();
    } catch (err) {
      showError(err.message);
    }
  });
  copy.addEventListener("click", () => {
    window.GrokRender.copyText(urlBox.value).then(
      () => window.GrokRender.flash(copy, "Copied"),
      () => window.GrokRender.flash(copy, "Copy failed"),
    );
  });
}
