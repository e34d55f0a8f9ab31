/*
 * The plan box in the sidebar (templates/chat/_plan_status.html): after each reply, the
 * messages and tokens left today are fetched again, since the reply just used some.
 */
import { urls } from "./http.js";

export async function refreshPlan() {
  const messagesLeft = document.querySelector("[data-plan-messages-left]");
  const tokensLeft = document.querySelector("[data-plan-tokens-left]");
  if (!messagesLeft || !tokensLeft) return;
  try {
    const response = await fetch(urls.planStatus, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) return; // the box keeps the last counts it had
    const status = await response.json();
    messagesLeft.textContent = String(status.messages_left);
    tokensLeft.textContent = String(status.tokens_left);
  } catch (err) {
    // offline: the next reply refreshes it
  }
}
