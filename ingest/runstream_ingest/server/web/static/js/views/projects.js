// The projects page: every project the caller may read, newest activity first; with a server
// that cannot list them all, the projects of ?entity= in the URL, of the signed-in key's entity or
// of the entity this browser last looked at.

import { api } from "../api.js";
import { fmtTime, h } from "../dom.js";
import * as url from "../url.js";

const LAST_ENTITY = "runstream.entity";

function lastEntity() {
  try {
    return localStorage.getItem(LAST_ENTITY);
  } catch {
    return null;
  }
}

/** The project page calls this: the projects page can then list that entity's projects. */
export function rememberEntity(entity) {
  try {
    localStorage.setItem(LAST_ENTITY, entity);
  } catch {
    /* storage blocked */
  }
}

export function mount(root, route) {
  const list = h("div", { class: "card" }, h("p", { class: "pad muted" }, "Loading projects…"));
  const entityInput = h("input", { placeholder: "entity", value: route.params.get("entity") || "", "aria-label": "entity" });
  const form = h(
    "form",
    {
      class: "toolbar",
      onsubmit: (ev) => {
        ev.preventDefault();
        url.go([], { entity: entityInput.value.trim() });
      },
    },
    entityInput,
    h("button", { type: "submit" }, "Show projects"),
  );
  root.append(h("div", { class: "page" }, h("h1", {}, "Projects"), form, list));
  load(list, route.params.get("entity"), entityInput).catch((e) => list.replaceChildren(h("p", { class: "pad error" }, e.message)));
  return { destroy() {} };
}

async function load(list, entityParam, entityInput) {
  let projects = entityParam ? null : await api.allProjects();
  if (projects == null) {
    const entity = entityParam || api.session?.entity || lastEntity();
    if (!entity) {
      list.replaceChildren(h("p", { class: "pad muted" }, "Type an entity above to see its projects."));
      return;
    }
    entityInput.value = entity;
    projects = await api.projects(entity);
  }
  if (!projects.length) {
    list.replaceChildren(
      h(
        "div",
        { class: "pad" },
        h("p", {}, "No projects yet."),
        h("p", { class: "muted" }, "Start a run with ", h("code", {}, "runstream.init(project=...)"), " and it appears here."),
      ),
    );
    return;
  }
  projects.sort((a, b) => (b.last_active ?? 0) - (a.last_active ?? 0) || `${a.entity}/${a.name}`.localeCompare(`${b.entity}/${b.name}`));
  // Run counts and activity only where the server says them (GET /api/v1/projects does).
  const counts = projects.some((p) => p.runs != null);
  const active = projects.some((p) => p.last_active != null);
  const rows = projects.map((p) =>
    h(
      "tr",
      { class: "clickable", dataset: { testid: "project-row" }, onclick: () => url.go(["p", p.entity, p.name]) },
      h("td", {}, h("a", { href: url.link(["p", p.entity, p.name]) }, `${p.entity}/${p.name}`)),
      counts ? h("td", { class: "num" }, p.runs ?? "") : null,
      active ? h("td", {}, p.last_active ? fmtTime(p.last_active) : "") : null,
    ),
  );
  const head = h("tr", {}, h("th", {}, "project"), counts ? h("th", { class: "num" }, "runs") : null, active ? h("th", {}, "last active") : null);
  list.replaceChildren(h("table", { class: "simple" }, h("thead", {}, head), h("tbody", {}, rows)));
}
