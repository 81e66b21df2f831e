// The run page's system-metrics, console and files tabs.  Each renders what the API returns and
// says so plainly when the run has recorded nothing of the kind yet.

import { api } from "../api.js";
import { color, fmtNum, fmtTime, h } from "../dom.js";
import { Panel } from "../chart.js";
import * as url from "../url.js";
import { isDistributed, parseRank, rankSelect } from "../ranks.js";

const LINE_H = 18;
const MAX_LINES = 200_000; // a console longer than this shows its first lines and says so

function none(what, err) {
  if (err && err.status !== 404) return h("p", { class: "error" }, err.message);
  return h("p", { class: "muted", dataset: { testid: "no-data" } }, `No ${what} recorded for this run yet.`);
}

// --- system metrics: every system/... key over wall time, exact samples -------------------------
// Sections in the order a person scans them; docs/system-metrics.md lists the keys.
const SYSTEM_SECTIONS = [
  ["cpu", "CPU", (k) => k === "cpu" || k.startsWith("load.")],
  ["cores", "CPU cores", (k) => /^cpu\.\d+$/.test(k)],
  ["memory", "Memory", (k) => k.startsWith("mem.") || k.startsWith("swap.")],
  ["disk", "Disk", (k) => k.startsWith("disk.")],
  ["network", "Network", (k) => k.startsWith("net.")],
  ["process", "Process", (k) => k.startsWith("proc.")],
];

export function systemSections(keys) {
  const out = new Map();
  const add = (id, name, k) => {
    if (!out.has(id)) out.set(id, { name, keys: [] });
    out.get(id).keys.push(k);
  };
  for (const k of keys) {
    const short = k.startsWith("system/") ? k.slice(7) : k;
    const sec = SYSTEM_SECTIONS.find(([, , test]) => test(short));
    const gpu = /^gpu\.(\d+)\./.exec(short);
    if (sec) add(sec[0], sec[1], k);
    else if (gpu) add(`gpu${gpu[1]}`, `GPU ${gpu[1]}`, k);
    else add("other", "Other", k);
  }
  const order = (id) => {
    const i = SYSTEM_SECTIONS.findIndex(([s]) => s === id);
    if (i >= 0) return [i, 0];
    return id === "other" ? [SYSTEM_SECTIONS.length + 1, 0] : [SYSTEM_SECTIONS.length, Number(id.slice(3))];
  };
  const cores = (k) => Number(/\.(\d+)$/.exec(k)?.[1] ?? -1);
  const sections = [...out].sort(([a], [b]) => {
    const [x, y] = [order(a), order(b)];
    return x[0] - y[0] || x[1] - y[1];
  });
  for (const [id, s] of sections) if (id === "cores") s.keys.sort((a, b) => cores(a) - cores(b));
  return sections;
}

export function systemTab(entity, project, run) {
  const el = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  let panels = [];
  const load = async () => {
    let rows;
    try {
      rows = await api.system(entity, project, run.id);
    } catch (e) {
      el.replaceChildren(none("system metrics", e));
      return;
    }
    const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))].filter((k) => !k.startsWith("_"));
    if (!keys.length) {
      el.replaceChildren(none("system metrics"));
      return;
    }
    const sections = systemSections(keys);
    const same = panels.length === keys.length && panels.every((p) => keys.includes(p.opts.key));
    if (!same) {
      // Keep a section's open/closed state across refreshes; many cores start folded.
      const open = new Map([...el.querySelectorAll("details[data-section]")].map((d) => [d.dataset.section, d.open]));
      panels.forEach((p) => p.destroy());
      panels = keys.map((k) => new Panel({ key: k, xAxis: "_timestamp", logY: false, smoothing: 0, xRange: null }));
      const byKey = new Map(panels.map((p) => [p.opts.key, p]));
      const els = sections.map(([id, s]) =>
        h(
          "details",
          { class: "section", open: open.get(id) ?? !(id === "cores" && s.keys.length > 8), dataset: { section: id, testid: "system-section" } },
          h("summary", {}, s.name),
          h("div", { class: "grid" }, s.keys.map((k) => byKey.get(k).el)),
        ),
      );
      el.replaceChildren(h("div", { class: "sections" }, els));
    }
    for (const p of panels) {
      const pts = rows.filter((r) => typeof r[p.opts.key] === "number");
      const x = pts.map((r) => r._timestamp);
      const y = pts.map((r) => r[p.opts.key]);
      p.setRuns([{ id: run.id, label: run.name || run.id, color: color(0), s: { exact: true, x, x_last: x, min: y, max: y, mean: y, count: y.map(() => 1) } }]);
    }
  };
  load();
  return { el, refresh: load, destroy: () => panels.forEach((p) => p.destroy()) };
}

// --- console: a virtual list of lines with a search box --------------------------------------------
// A distributed run's console shows one rank's lines (?rank=N, rank 0 by default) or every
// rank's (?rank=all), each line then labelled with its rank.
export function consoleTab(entity, project, run) {
  let lines = [];
  let shown = lines;
  let lastId = 0;
  let truncated = false;
  let gen = 0; // a new rank choice drops the answers of pages asked for before it
  const dist = isDistributed(run);
  let rank = dist ? parseRank(url.params().rank, { all: true, run }) : undefined;
  const search = h("input", { type: "search", placeholder: "Search the output", dataset: { testid: "console-search" }, "aria-label": "search the console" });
  const count = h("span", { class: "muted", dataset: { testid: "console-count" } });
  const inner = h("div", { style: { position: "relative" } });
  const view = h("div", { class: "console card mono", dataset: { testid: "console" } }, inner);
  const rankSel = dist
    ? rankSelect(run, {
        value: rank,
        all: true,
        testid: "console-rank",
        onChange: (v) => {
          rank = v;
          url.set({ rank: v || null });
          gen += 1;
          lines = [];
          lastId = 0;
          truncated = false;
          view.scrollTop = 0;
          more();
        },
      })
    : null;
  const el = h("div", {}, h("div", { class: "toolbar", style: { marginBottom: "8px" } }, rankSel ? h("label", {}, "ranks", rankSel) : null, search, count), view);
  let frame = null;
  const draw = () => {
    frame = null;
    const q = search.value.toLowerCase();
    const first = Math.max(0, Math.floor(view.scrollTop / LINE_H) - 20);
    const last = Math.min(shown.length, first + Math.ceil(view.clientHeight / LINE_H) + 40);
    inner.style.height = `${shown.length * LINE_H}px`;
    const els = [];
    for (let i = first; i < last; i++) {
      const l = shown[i];
      const text = l.line ?? "";
      const at = q ? text.toLowerCase().indexOf(q) : -1;
      const body = at < 0 ? [text] : [text.slice(0, at), h("mark", {}, text.slice(at, at + q.length)), text.slice(at + q.length)];
      // stderr: red text (the class) and a bar in the gutter, so it does not rest on colour alone
      const err = l.stream === "stderr";
      const style = err ? { top: `${i * LINE_H}px`, boxShadow: "inset 3px 0 0 var(--bad)" } : { top: `${i * LINE_H}px` };
      const label = rank === "all" && l.rank != null ? h("span", { class: "rank-label", dataset: { testid: "line-rank" } }, `[${l.rank}] `) : null;
      const data = l.rank != null ? { stream: l.stream || "", rank: String(l.rank) } : { stream: l.stream || "" };
      els.push(h("div", { class: `line ${l.stream || ""}`, style, dataset: data, title: `${l.rank != null ? `rank ${l.rank} ` : ""}${l.stream || ""} ${fmtTime(l.time)}` }, label, ...body));
    }
    inner.replaceChildren(...els);
  };
  const schedule = () => (frame = frame || requestAnimationFrame(draw));
  const filter = () => {
    const q = search.value.toLowerCase();
    shown = q ? lines.filter((l) => (l.line ?? "").toLowerCase().includes(q)) : lines;
    count.textContent = q ? `${fmtNum(shown.length)} of ${fmtNum(lines.length)} lines` : `${fmtNum(lines.length)} lines${truncated ? " (the first ones only)" : ""}`;
    schedule();
  };
  search.addEventListener("input", filter);
  view.addEventListener("scroll", schedule);
  const more = async () => {
    const mine = gen;
    try {
      for (;;) {
        const page = await api.console(entity, project, run.id, lastId, 1000, rank);
        if (mine !== gen) return;
        lines.push(...page);
        // every rank's lines come in time order within a page, and pages go on from the
        // highest line id seen (the API's next_after_id)
        for (const l of page) lastId = Math.max(lastId, l.id);
        if (rank === "all" && page.length) lines.sort((a, b) => a.time - b.time || a.id - b.id);
        if (lines.length >= MAX_LINES) truncated = true;
        if (page.length < 1000 || truncated) break;
      }
    } catch (e) {
      if (mine !== gen) return;
      if (dist) view.replaceChildren(none("console output", e)); // keep the rank chooser
      else el.replaceChildren(none("console output", e));
      return;
    }
    if (!lines.length) view.replaceChildren(none("console output"));
    else if (!view.contains(inner)) view.replaceChildren(inner);
    const atEnd = view.scrollTop + view.clientHeight >= inner.offsetHeight - LINE_H * 2;
    filter();
    if (atEnd && run.state === "running") view.scrollTop = inner.offsetHeight; // follow a live run
  };
  more();
  return { el, refresh: () => !truncated && more() };
}

// --- files ----------------------------------------------------------------------------------
export function filesTab(entity, project, run) {
  const el = h("div", { class: "card" }, h("p", { class: "pad muted" }, "Loading…"));
  const load = () =>
    api.files(entity, project, run.id).then(
      (files) => {
        if (!files.length) return el.replaceChildren(h("div", { class: "pad" }, none("files")));
        const size = (n) => (n == null ? "" : n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);
        // Uploaded files download from their run (the session cookie authorises a plain link);
        // a file recorded but not uploaded yet (offline, before `runstream sync`) says so.
        const href = (f) => ["api", "v1", "runs", entity, project, run.id, "files", ...f.path.split("/")].map(encodeURIComponent).join("/");
        const link = (f) => (f.sha256 ? h("a", { href: `/${href(f)}`, download: f.path.split("/").pop(), dataset: { testid: "file-link" } }, f.path) : h("span", { title: "not uploaded yet" }, f.path, h("span", { class: "muted" }, " (not uploaded yet)")));
        el.replaceChildren(
          h(
            "table",
            { class: "simple", dataset: { testid: "files" } },
            h("thead", {}, h("tr", {}, ["path", "size", "policy", "saved", "sha256"].map((t) => h("th", {}, t)))),
            h("tbody", {}, files.map((f) => h("tr", {}, h("td", { class: "mono" }, link(f)), h("td", { class: "num" }, size(f.size)), h("td", {}, f.policy || ""), h("td", {}, fmtTime(f.time)), h("td", { class: "mono", title: f.sha256 || "" }, (f.sha256 || "").slice(0, 12))))),
          ),
        );
      },
      (e) => el.replaceChildren(h("div", { class: "pad" }, none("files", e))),
    );
  load();
  return { el, refresh: load };
}
