/*
 * The two lines under the composer that tell the user something: the error line (a refusal,
 * a failed request) and the connection line (lost, reconnecting, signed out). Text only.
 */
const errorLine = document.getElementById("composer-error");
const connectionLine = document.getElementById("connection");

export function showError(text) {
  errorLine.textContent = text;
  errorLine.hidden = !text;
}

export function clearError() {
  showError("");
}

export function showConnection(text) {
  connectionLine.textContent = text;
  connectionLine.hidden = !text;
}
