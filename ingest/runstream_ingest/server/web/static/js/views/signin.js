// Sign in: the server requires API keys, and a browser cannot send headers by itself, so the key
// is posted once to POST /api/v1/session and the server answers with an HttpOnly session cookie.
// The key itself is never stored by the page.  #/signin?next=<the view to return to>

import { api } from "../api.js";
import { h } from "../dom.js";

export function mount(root, route) {
  const next = route.params.get("next") || "#/";
  const key = h("input", { type: "password", placeholder: "rsk_…", autocomplete: "off", required: true, dataset: { testid: "api-key" }, "aria-label": "API key" });
  const msg = h("p", { class: "error", dataset: { testid: "signin-error" } });
  const form = h(
    "form",
    { class: "signin card pad", dataset: { testid: "signin" } },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "This server requires an API key. Create one on the server with ", h("code", {}, "runstream server keys create --entity NAME"), "."),
    key,
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    msg,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    msg.textContent = "";
    try {
      await api.signIn(key.value.trim());
    } catch (e) {
      msg.textContent = e.status === 401 ? "That key is not valid (unknown, revoked or mistyped)." : e.message;
      return;
    }
    key.value = "";
    window.dispatchEvent(new CustomEvent("runstream:signed-in"));
    location.hash = next.startsWith("#") ? next : "#/";
  });
  root.append(form);
  key.focus();
  return { destroy() {} };
}
