// A logged table ("table-file": a run file of {"columns": [...], "data": [[...], ...]}): sortable
// by any column (click its header: largest first, click again: smallest first), filtered by text
// (rows where any cell contains it), 20 rows a page.  Media cells (full pointer dicts, as runstream
// stores them) are drawn small: images as thumbnails, audio as a player, others as a link.
//
// The whole table is read at once: W&B caps a logged table at 10,000 rows.

import { fmtValue, h } from "../dom.js";

export const PAGE = 20;

function cmp(a, b) {
  const na = typeof a === "number";
  const nb = typeof b === "number";
  if (na && nb) return (Number.isNaN(a) ? -Infinity : a) - (Number.isNaN(b) ? -Infinity : b);
  if (na !== nb) return na ? 1 : -1; // numbers above text when largest first
  if (a == null || b == null) return a == null ? (b == null ? 0 : -1) : 1;
  return String(typeof a === "object" ? JSON.stringify(a) : a).localeCompare(String(typeof b === "object" ? JSON.stringify(b) : b));
}

function isPointer(v) {
  return v && typeof v === "object" && typeof v._type === "string" && typeof v.path === "string";
}

function cell(v, ctx) {
  if (isPointer(v)) {
    const src = ctx.url(v.path);
    if (v._type === "image-file") return h("img", { src, class: "media-thumb", alt: v.caption || v.path, title: v.caption || v.path, dataset: { testid: "table-thumb" } });
    if (v._type === "audio-file") return h("audio", { src, controls: true, preload: "none", class: "media-mini" });
    if (v._type === "video-file" && /\.gif$/i.test(v.path)) return h("img", { src, class: "media-thumb", alt: v.path });
    return h("a", { href: src, download: "" }, v._type.replace(/-file$/, ""));
  }
  return fmtValue(v);
}

/** The text a filter looks in. */
function text(v) {
  if (isPointer(v)) return `${v._type} ${v.caption ?? ""}`;
  return typeof v === "object" && v !== null ? JSON.stringify(v) : String(v ?? "");
}

/** Draws the table of pointer `v` (its file read through ctx) into `el`. */
export async function renderTable(el, v, ctx) {
  const t = await ctx.json(v.path);
  el.replaceChildren(tableViewer(t.columns || [], t.data || [], ctx));
}

/** The viewer itself (custom charts show their data with it too). */
export function tableViewer(columns, data, ctx) {
  const st = { sort: null, desc: true, filter: "", page: 0 };
  const head = h("tr");
  const body = h("tbody");
  const info = h("span", { class: "muted", dataset: { testid: "table-info" } });
  const prev = h("button", { type: "button", dataset: { testid: "table-prev" }, onclick: () => go(st.page - 1) }, "‹");
  const next = h("button", { type: "button", dataset: { testid: "table-next" }, onclick: () => go(st.page + 1) }, "›");
  const filter = h("input", { placeholder: "filter rows", dataset: { testid: "table-filter" }, "aria-label": "filter rows" });
  filter.addEventListener("input", () => ((st.filter = filter.value.trim().toLowerCase()), (st.page = 0), draw()));
  let rows = data;

  function go(p) {
    st.page = p;
    draw();
  }

  function draw() {
    rows = st.filter ? data.filter((r) => r.some((v) => text(v).toLowerCase().includes(st.filter))) : data;
    if (st.sort != null) {
      const i = st.sort;
      rows = [...rows].sort((a, b) => (st.desc ? -cmp(a[i], b[i]) : cmp(a[i], b[i])));
    }
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    st.page = Math.min(Math.max(0, st.page), pages - 1);
    const from = st.page * PAGE;
    head.replaceChildren(
      ...columns.map((c, i) =>
        h("th", { class: st.sort === i ? "sorted" : "", dataset: { testid: "table-col", col: String(c) }, onclick: () => ((st.desc = st.sort === i ? !st.desc : true), (st.sort = i), draw()) }, String(c), st.sort === i ? (st.desc ? " ▼" : " ▲") : ""),
      ),
    );
    body.replaceChildren(...rows.slice(from, from + PAGE).map((r) => h("tr", { dataset: { testid: "table-row" } }, r.map((v) => h("td", { class: typeof v === "number" ? "num" : "" }, cell(v, ctx))))));
    info.textContent = rows.length ? `rows ${from + 1}–${Math.min(rows.length, from + PAGE)} of ${rows.length}${rows.length !== data.length ? ` (of ${data.length})` : ""}` : "no rows";
    info.dataset.total = String(rows.length);
    prev.disabled = st.page === 0;
    next.disabled = st.page >= pages - 1;
  }

  draw();
  return h(
    "div",
    { class: "media-table", dataset: { testid: "media-table" } },
    h("div", { class: "toolbar" }, filter, prev, next, info),
    h("div", { class: "media-table-scroll" }, h("table", { class: "simple" }, h("thead", {}, head), body)),
  );
}
