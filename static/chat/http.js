/*
 * The page's HTTP endpoints: their URLs, rendered by {% url %} into the sidebar's data-url-*
 * attributes with a 0 placeholder (so no route is hard-coded here), and a JSON POST carrying
 * the CSRF token whose refusals become Errors with the server's message.
 */
const routes = document.getElementById("sidebar").dataset;

function withId(template, id) {
  return template.replace("/0/", "/" + id + "/");
}

export const urls = {
  conversation: (id) => withId(routes.urlConversation, id),
  rename: (id) => withId(routes.urlRename, id),
  delete: (id) => withId(routes.urlDelete, id),
  feedback: (id) => withId(routes.urlFeedback, id),
  share: (id) => withId(routes.urlShare, id),
  planStatus: routes.urlPlanStatus,
  search: routes.urlSearch,
};

function csrfToken() {
  const input = document.querySelector("input[name=csrfmiddlewaretoken]");
  return input ? input.value : "";
}

// JSON rather than FormData: Django refuses an empty multipart body (delete has no fields).
export async function post(url, fields) {
  const response = await fetch(url, {
    method: "POST",
    body: JSON.stringify(fields || {}),
    credentials: "same-origin",
    headers: {
      "Content-Type": "application/json",
      "X-CSRFToken": csrfToken(),
      Accept: "application/json",
      "X-Requested-With": "XMLHttpRequest",
    },
  });
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("application/json") ? await response.json() : {};
  // Refusals come back as {"error": {"code", "message"}}; show their message.
  if (!response.ok) throw new Error((body && body.error && body.error.message) || "HTTP " + response.status);
  return body;
}
