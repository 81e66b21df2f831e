// The System tab of a distributed run: one node at a time (?node=K; by default rank 0's node).
// The node's own metrics (CPU, memory, disk, network, each GPU by index: sampled once per node
// by its node sidecar) in the sections a single-process run's tab uses, then a "Rank processes"
// section: each process statistic of the ranks on that node (RSS, CPU %, threads...), one line
// per rank.  A rank's memory on GPU i (system/gpu.<i>.*) is drawn in GPU i's section, beside the
// node's own metrics of that GPU.

import { api } from "../api.js";
import { fmtTime, h } from "../dom.js";
import { Panel } from "../chart.js";
import * as url from "../url.js";
import { rankColor } from "../ranks.js";
import { systemSections } from "./runtabs.js";

/** The run's nodes: [{node, host, state}] from its JSON (every index below node_count). */
function nodeList(run) {
  const known = new Map((run.nodes || []).map((n) => [n.node, n]));
  const count = Math.max(Number(run.node_count) || 0, ...[...known.keys()].map((k) => k + 1));
  return Array.from({ length: count }, (_, i) => known.get(i) || { node: i, host: null, state: null });
}

/** A Panel's series from exact samples [{_timestamp, key: value}] of one key. */
function samples(rows, key) {
  const pts = rows.filter((r) => typeof r[key] === "number");
  const x = pts.map((r) => r._timestamp);
  const y = pts.map((r) => r[key]);
  return { exact: true, x, x_last: x, min: y, max: y, mean: y, count: y.map(() => 1) };
}

export function nodeSystemTab(entity, project, run) {
  const nodes = nodeList(run);
  const rank0 = (run.ranks || []).find((r) => r.rank === 0);
  const asked = url.params().node;
  let node = asked != null && nodes.some((n) => String(n.node) === asked) ? Number(asked) : rank0?.node ?? 0;
  const sel = h(
    "select",
    { dataset: { testid: "system-node" }, "aria-label": "node" },
    nodes.map((n) => h("option", { value: String(n.node), selected: n.node === node }, [`node ${n.node}`, n.host, n.state && n.state !== "running" ? n.state : null].filter(Boolean).join(" · "))),
  );
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const el = h("div", {}, h("div", { class: "toolbar", style: { marginBottom: "8px" } }, h("label", {}, "node", sel), h("span", { class: "muted", dataset: { testid: "system-node-ranks" } })), body);
  let panels = [];
  let shape = ""; // the sections and keys drawn: rebuilt only when they change
  let gen = 0;

  sel.addEventListener("change", () => {
    node = Number(sel.value);
    url.set({ node: String(node) });
    shape = "";
    load();
  });

  async function load() {
    const mine = ++gen;
    const ranks = (run.ranks || []).filter((r) => r.node === node).map((r) => r.rank);
    el.querySelector('[data-testid="system-node-ranks"]').textContent = ranks.length ? `ranks ${ranks.join(", ")}` : "";
    let nodeRows;
    let rankRows;
    try {
      [nodeRows, rankRows] = await Promise.all([
        api.system(entity, project, run.id, { node }),
        Promise.all(ranks.map((r) => api.system(entity, project, run.id, { rank: r }).catch(() => []))),
      ]);
    } catch (e) {
      if (mine !== gen) return;
      body.replaceChildren(h("p", { class: e.status === 404 ? "muted" : "error" }, e.status === 404 ? `No system metrics recorded for node ${node} yet.` : e.message));
      return;
    }
    if (mine !== gen) return;
    const keysOf = (rows) => [...new Set(rows.flatMap((r) => Object.keys(r)))].filter((k) => !k.startsWith("_"));
    const nodeKeys = keysOf(nodeRows);
    const procKeys = [...new Set(rankRows.flatMap(keysOf))].sort();
    if (!nodeKeys.length && !procKeys.length) {
      panels.forEach((p) => p.destroy());
      panels = [];
      shape = "";
      body.replaceChildren(h("p", { class: "muted", dataset: { testid: "no-data" } }, `No system metrics recorded for node ${node} yet.`));
      return;
    }
    // each section's panels: [key, perRank] (a key may be both the node's and its ranks')
    const sections = systemSections(nodeKeys).map(([id, s]) => [id, { name: s.name, keys: s.keys.map((k) => [k, false]) }]);
    const rankSection = { name: `Rank processes (${ranks.map((r) => `rank ${r}`).join(", ")})`, keys: [] };
    for (const k of procKeys) {
      const gpu = /^system\/gpu\.(\d+)\./.exec(k);
      let sec = gpu ? sections.find(([id]) => id === `gpu${gpu[1]}`)?.[1] : rankSection;
      if (!sec) {
        sec = { name: `GPU ${gpu[1]}`, keys: [] };
        sections.push([`gpu${gpu[1]}`, sec]);
      }
      sec.keys.push([k, true]);
    }
    if (rankSection.keys.length) sections.push(["ranks", rankSection]);
    const next = JSON.stringify(sections.map(([id, s]) => [id, s.keys]));
    if (next !== shape) {
      const open = new Map([...body.querySelectorAll("details[data-section]")].map((d) => [d.dataset.section, d.open]));
      panels.forEach((p) => p.destroy());
      panels = [];
      const els = sections.map(([id, s]) => {
        const ps = s.keys.map(([k, perRank]) => Object.assign(new Panel({ key: k, xAxis: "_timestamp", logY: false, smoothing: 0, xRange: null }), { perRank }));
        panels.push(...ps);
        const legend = ps.some((p) => p.perRank) ? h("div", { class: "legend" }, ranks.map((r) => h("span", {}, h("span", { class: "swatch", style: { background: rankColor(r) } }), `rank ${r}`))) : null;
        return h(
          "details",
          { class: "section", open: open.get(id) ?? !(id === "cores" && s.keys.length > 8), dataset: { section: id, testid: "system-section" } },
          h("summary", {}, s.name),
          legend,
          h("div", { class: "grid" }, ps.map((p) => p.el)),
        );
      });
      body.replaceChildren(h("div", { class: "sections", dataset: { node: String(node) } }, els));
      shape = next;
    }
    const host = nodes.find((n) => n.node === node)?.host || `node ${node}`;
    for (const p of panels) {
      if (p.perRank) p.setRuns(ranks.map((r, i) => ({ id: `rank${r}`, label: `rank ${r}`, color: rankColor(r), s: samples(rankRows[i], p.opts.key) })));
      else p.setRuns([{ id: `node${node}`, label: host, color: rankColor(0), s: samples(nodeRows, p.opts.key) }]);
    }
    const last = nodes.find((n) => n.node === node)?.heartbeat_at;
    sel.title = last ? `last heartbeat ${fmtTime(last)}` : "";
  }

  load();
  return {
    el,
    refresh(_changed, r) {
      if (r && r.ranks) run = r;
      load();
    },
    destroy: () => panels.forEach((p) => p.destroy()),
  };
}
