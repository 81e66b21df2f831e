// The dashboard's entry point: the router (views by the URL's fragment, see url.js), the header
// (breadcrumbs, dark mode, sign out) and the sign-in redirect.
//
// A view is a module exporting mount(container, route) that returns {destroy()}; the router
// mounts one at a time and destroys the last (which closes its live streams and charts).

import { api } from "./api.js";
import { h } from "./dom.js";
import * as url from "./url.js";
import * as projectsView from "./views/projects.js";
import * as runsView from "./views/runs.js";
import * as runView from "./views/run.js";
import * as compareView from "./views/compare.js";
import * as signinView from "./views/signin.js";

const THEME_KEY = "runstream.theme";
const app = document.getElementById("app");
let current = null;

const ROUTES = {
  "": projectsView,
  p: runsView,
  r: runView,
  c: compareView,
  signin: signinView,
};

function crumbs(parts) {
  const nav = document.getElementById("crumbs");
  const items = [];
  if (["p", "r", "c"].includes(parts[0]) && parts.length >= 3) {
    const [, e, p, id] = parts;
    items.push(h("span", {}, e), h("span", { class: "sep" }, "/"), h("a", { href: url.link(["p", e, p]) }, p));
    if (parts[0] === "r" && id) items.push(h("span", { class: "sep" }, "/"), h("span", { class: "mono" }, id));
    if (parts[0] === "c") items.push(h("span", { class: "sep" }, "/"), h("span", {}, "compare"));
  }
  nav.replaceChildren(...items);
}

function showError(err) {
  const banner = document.getElementById("banner");
  banner.hidden = !err;
  banner.textContent = err ? String(err.message || err) : "";
}

function route() {
  const r = url.parse();
  const view = ROUTES[r.parts[0] || ""];
  if (current) {
    try {
      current.destroy();
    } catch (e) {
      console.error(e);
    }
  }
  current = null;
  showError(null);
  crumbs(r.parts);
  app.replaceChildren();
  if (!view) {
    app.append(h("p", { class: "pad" }, "No such page. ", h("a", { href: "#/" }, "Projects")));
    return;
  }
  try {
    current = view.mount(app, r);
  } catch (e) {
    showError(e);
    console.error(e);
  }
}

function setTheme(theme) {
  document.documentElement.dataset.theme = theme;
  try {
    localStorage.setItem(THEME_KEY, theme);
  } catch {
    /* private mode: the toggle still works for this page */
  }
}

document.getElementById("theme-toggle").addEventListener("click", () => {
  setTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark");
  route(); // charts take their colours from the theme when they are drawn
});

const signOut = document.getElementById("sign-out");
signOut.addEventListener("click", async () => {
  await api.signOut();
  signOut.hidden = true;
  url.go(["signin"]);
});

window.addEventListener("runstream:unauthenticated", () => {
  const here = location.hash;
  if (!here.startsWith("#/signin")) url.go(["signin"], { next: here });
});
window.addEventListener("runstream:signed-in", () => (signOut.hidden = false));
window.addEventListener("unhandledrejection", (ev) => {
  if (ev.reason && ev.reason.status === 401) return; // handled by the sign-in redirect
  showError(ev.reason);
});
window.addEventListener("hashchange", route);

(async () => {
  const [session, info] = await Promise.all([api.loadSession(), api.info().catch(() => null)]);
  signOut.hidden = !session || !session.entity;
  if (info?.auth && !session && !location.hash.startsWith("#/signin")) {
    url.go(["signin"], { next: location.hash || "#/" }); // routes on the hashchange
    return;
  }
  route();
})();
