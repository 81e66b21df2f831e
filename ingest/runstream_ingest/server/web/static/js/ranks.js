// Distributed runs in the dashboard (docs/distributed.md, "The dashboard"): one run per training
// job, its ranks a dimension of the run.  The run JSON of such a run carries world_size,
// node_count, ranks, nodes, rank_states, first_failure and rank_aggregates (docs/http-api.md);
// a single-process run has none of them, and every view draws it exactly as before.
//
// This module holds what the run page's views share about ranks: whether a run is distributed,
// the header's job facts, the rank choosers, a colour per rank and the reading of the API's
// per-rank answers.

import { color, fmtNum, fmtTime, fmtValue, h } from "./dom.js";

/** True for a run of several ranks (a run JSON; a runs-list entry works too). */
export function isDistributed(run) {
  return !!run && Number(run.world_size) > 1;
}

/** Ranks 0..world_size-1 (ranks that never reported are choosable too: they show "no data"). */
export function rankList(run) {
  const n = Number(run.world_size) || 0;
  const seen = (run.ranks || []).map((r) => r.rank);
  return [...new Set([...Array.from({ length: n }, (_, i) => i), ...seen])].sort((a, b) => a - b);
}

/** One colour per rank, the same in every chart and legend of the page. */
export const rankColor = (rank) => color(rank);

/** A time to the second: which rank died first is a matter of seconds. */
export function fmtSeconds(t) {
  if (t == null) return "";
  const d = new Date(t * 1000);
  return `${fmtTime(t)}:${String(d.getSeconds()).padStart(2, "0")}`;
}

const STATE_ORDER = ["running", "finished", "failed", "crashed", "missing"];

/** The header's facts of a distributed run: world size, nodes, how many ranks are in each state,
 * and which rank failed first and when.  Null for a single-process run. */
export function jobFacts(run) {
  if (!isDistributed(run)) return null;
  const nodes = run.node_count ?? (run.nodes || []).length;
  const states = run.rank_states || {};
  const chips = STATE_ORDER.filter((s) => states[s] > 0).map((s) =>
    h("span", { class: `chip rank-state ${s}`, dataset: { state: s, count: String(states[s]) } }, `${states[s]} ${s}`),
  );
  const ff = run.first_failure;
  const failure = ff
    ? h(
        "span",
        { class: `first-failure state ${ff.state}`, dataset: { testid: "first-failure", rank: String(ff.rank) } },
        `rank ${ff.rank} ${ff.state} first`,
        ff.node != null ? ` (node ${ff.node})` : "",
        ` at ${fmtSeconds(ff.time)}`,
        ff.exit_code != null ? `, exit ${ff.exit_code}` : "",
        ff.last_step != null ? `, last step ${fmtNum(ff.last_step)}` : "",
      )
    : null;
  return h(
    "span",
    { class: "job-facts", dataset: { testid: "job-facts" } },
    h("span", { dataset: { testid: "run-world-size", value: String(run.world_size) } }, `${run.world_size} ranks`),
    h("span", { dataset: { testid: "run-nodes", value: String(nodes) } }, `${nodes} node${nodes === 1 ? "" : "s"}`),
    h("span", { class: "rank-states", dataset: { testid: "rank-states" } }, chips),
    failure,
  );
}

/** The overview's cards of a distributed run: its ranks, its nodes, and the summary across
 * ranks (mean, min and max of every numeric summary value). */
export function rankCards(run) {
  if (!isDistributed(run)) return [];
  const th = (cols) => h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c))));
  const ranks = h(
    "table",
    { class: "simple", dataset: { testid: "ranks-table" } },
    th(["rank", "node", "host", "state", "exit", "last step", "rows", "last heartbeat"]),
    h(
      "tbody",
      {},
      (run.ranks || []).map((r) =>
        h(
          "tr",
          { dataset: { testid: "rank-row", rank: String(r.rank) } },
          h("td", { class: "num" }, String(r.rank)),
          h("td", { class: "num" }, fmtValue(r.node)),
          h("td", {}, r.host || ""),
          h("td", {}, h("span", { class: `state ${r.state}`, dataset: { testid: "rank-state" } }, r.state + (r.ended_by === "stale" ? " (stale)" : ""))),
          h("td", { class: "num" }, fmtValue(r.exit_code)),
          h("td", { class: "num" }, fmtValue(r.last_step)),
          h("td", { class: "num" }, fmtValue(r.row_count)),
          h("td", {}, fmtSeconds(r.heartbeat_at)),
        ),
      ),
    ),
  );
  const cards = [h("div", { class: "card pad" }, h("h2", {}, "Ranks"), ranks)];
  const agg = Object.entries(run.rank_aggregates || {}).sort(([a], [b]) => a.localeCompare(b));
  if (agg.length) {
    cards.push(
      h(
        "div",
        { class: "card pad" },
        h("h2", {}, "Summary across ranks"),
        h(
          "table",
          { class: "simple", dataset: { testid: "rank-aggregates" } },
          th(["key", "mean", "min", "max", "ranks"]),
          h("tbody", {}, agg.map(([k, a]) => h("tr", { dataset: { key: k } }, h("td", { class: "mono" }, k), ...["mean", "min", "max", "count"].map((f) => h("td", { class: "num" }, fmtNum(a[f])))))),
        ),
      ),
    );
  }
  return cards;
}

/** A <select> of ranks.  `value`: a rank number, "all" or "band"; `all` and `band` add those
 * choices.  onChange gets the new value (a number, "all" or "band"). */
export function rankSelect(run, { value, all = false, band = false, testid, onChange }) {
  const opts = rankList(run).map((r) => [String(r), `rank ${r}`]);
  if (all) opts.push(["all", "all ranks"]);
  if (band) opts.push(["band", "mean ± min–max band"]);
  const sel = h(
    "select",
    { dataset: { testid }, "aria-label": "rank" },
    opts.map(([v, t]) => h("option", { value: v, selected: v === String(value) }, t)),
  );
  sel.addEventListener("change", () => onChange(parseRank(sel.value, { all, band })));
  return sel;
}

/** A rank choice from the URL: a rank number (of `run`'s ranks, when given), "all" or "band"
 * where allowed; else rank 0. */
export function parseRank(v, { all = false, band = false, run = null } = {}) {
  if (v === "all" && all) return "all";
  if (v === "band" && band) return "band";
  const n = v == null || v === "" ? NaN : Number(v);
  return Number.isInteger(n) && n >= 0 && (!run || rankList(run).includes(n)) ? n : 0;
}

/** `/series?ranks=all` read as {key: [{rank, s}]}, sorted by rank.  The answer's "series" holds,
 * for each key, a list of series each with its "rank" (docs/http-api.md). */
export function seriesByRank(d) {
  const out = {};
  const add = (key, rank, s) => (out[key] ||= []).push({ rank: Number(rank), s });
  for (const [key, v] of Object.entries(d?.series || {})) {
    if (Array.isArray(v)) for (const s of v) add(key, s.rank, s);
    else if (v && typeof v === "object" && !Array.isArray(v.x)) for (const [r, s] of Object.entries(v)) add(key, r, s);
  }
  for (const r of Array.isArray(d?.ranks) ? d.ranks : []) for (const [key, s] of Object.entries(r.series || {})) add(key, r.rank, s);
  for (const list of Object.values(out)) list.sort((a, b) => a.rank - b.rank);
  return out;
}
