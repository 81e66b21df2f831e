// The project page: the runs table (search, filter builder, sort, column chooser, group by, select
// to compare) and the scatter and parallel-coordinates views of the same filtered runs.
// URL: #/p/E/P?view=table|scatter|parallel|alerts&q=&f=[[field,op,value],...]&sort=&cols=&group=&gm=&sel=

import { api } from "../api.js";
import { fieldValue, fmtDuration, fmtTime, fmtValue, h } from "../dom.js";
import { watch } from "../live.js";
import * as url from "../url.js";
import { columnChooser, compile, fieldList, filterBuilder, popover } from "./filters.js";
import { alertsList } from "./alerts.js";
import { groupsTable } from "./groups.js";
import { parallelView, scatterView } from "./plots.js";
import { rememberEntity } from "./projects.js";
import { VirtualTable } from "./table.js";

const BASE = [
  { id: "name", title: "name", width: 230, sort: "name" },
  { id: "state", title: "state", width: 100, sort: "state" },
  { id: "created_at", title: "created", width: 160, sort: "created_at" },
  { id: "runtime", title: "runtime", width: 90, sort: "summary._runtime" },
  { id: "tags", title: "tags", width: 170, sort: null },
  // distributed runs (docs/distributed.md): blank for a single-process run
  { id: "world_size", title: "world size", width: 100, sort: "world_size" },
  { id: "node_count", title: "nodes", width: 70, sort: "node_count" },
];

export function mount(root, route) {
  const [, entity, project] = route.parts;
  const p = route.params;
  rememberEntity(entity);
  const st = {
    view: p.get("view") || "table",
    q: p.get("q") || "",
    conds: url.json(p.get("f"), []),
    sort: p.get("sort") || "-created_at",
    cols: url.list(p.get("cols")),
    group: p.get("group") || "",
    gm: p.get("gm") || "",
    sel: new Set(url.list(p.get("sel"))),
  };
  let keys = null;
  let table = null;
  let stopLive = null;
  const save = () =>
    url.set({
      view: st.view === "table" ? null : st.view,
      q: st.q,
      f: st.conds.length ? JSON.stringify(st.conds) : null,
      sort: st.sort === "-created_at" ? null : st.sort,
      cols: st.cols.join(","),
      group: st.group,
      gm: st.gm,
      sel: [...st.sel].join(","),
    });
  const query = () => ({ filters: compile(st.conds), search: st.q || undefined });

  const compareBtn = h("button", { type: "button", class: "primary", dataset: { testid: "compare" }, onclick: () => url.go(["c", entity, project], { runs: [...st.sel].join(",") }) });
  const updateCompare = () => {
    compareBtn.textContent = `Compare ${st.sel.size} run${st.sel.size === 1 ? "" : "s"}`;
    compareBtn.disabled = st.sel.size === 0;
  };
  const tabs = h("nav", { class: "tabs" });
  const drawTabs = () =>
    tabs.replaceChildren(
      ...[["table", "Runs"], ["scatter", "Scatter"], ["parallel", "Parallel coordinates"], ["alerts", "Alerts"]].map(([v, t]) =>
        h("a", { href: "#", class: st.view === v ? "active" : "", dataset: { testid: `view-${v}` }, onclick: (ev) => (ev.preventDefault(), (st.view = v), save(), drawTabs(), show()) }, t),
      ),
    );

  // --- toolbar ---------------------------------------------------------------------------------
  const search = h("input", { type: "search", placeholder: "Search name or tag", value: st.q, dataset: { testid: "search" }, "aria-label": "search runs" });
  let searchTimer = null;
  search.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => ((st.q = search.value.trim()), save(), show()), 250);
  });
  const filterBtn = h("button", { type: "button", dataset: { testid: "filter-button" } });
  const drawFilterBtn = () => (filterBtn.textContent = st.conds.length ? `Filters (${st.conds.length})` : "Filter");
  filterBtn.addEventListener("click", () =>
    popover(filterBtn, () =>
      filterBuilder(st.conds, "rs-fields", (conds) => {
        st.conds = conds;
        filterBtn.parentElement.querySelector(".popover")?.remove();
        drawFilterBtn();
        save();
        show();
      }),
    ),
  );
  const colsBtn = h("button", { type: "button", dataset: { testid: "columns-button" } }, "Columns");
  colsBtn.addEventListener("click", () => popover(colsBtn, () => columnChooser(keys, st.cols, (cols) => ((st.cols = cols), save(), show()))));
  const groupSel = h("select", { dataset: { testid: "group-by" }, "aria-label": "group by" });
  const metricSel = h("select", { dataset: { testid: "group-metric" }, "aria-label": "group metric" });
  const fillSelects = () => {
    const cfg = (keys?.config || []).map((k) => `config.${k}`);
    const sum = (keys?.summary || []).filter((k) => !k.startsWith("_runstream")).map((k) => `summary.${k}`);
    const opts = (sel, values, none, cur) => {
      const all = cur && !values.includes(cur) ? [cur, ...values] : values;
      sel.replaceChildren(h("option", { value: "" }, none), ...all.map((v) => h("option", { value: v, selected: v === cur }, v)));
    };
    opts(groupSel, [...cfg, "state", "host", "group", "job_type"], "no grouping", st.group);
    opts(metricSel, sum, "(count only)", st.gm);
    metricSel.hidden = !st.group;
  };
  groupSel.addEventListener("change", () => ((st.group = groupSel.value), (metricSel.hidden = !st.group), save(), show()));
  metricSel.addEventListener("change", () => ((st.gm = metricSel.value), save(), show()));

  const datalist = h("span");
  const body = h("div", { class: "runs-wrap card" });
  root.append(
    h(
      "div",
      { class: "page" },
      h("div", { class: "toolbar" }, h("h1", {}, project), h("span", { class: "muted" }, entity), h("span", { class: "spacer" }), compareBtn),
      tabs,
      h(
        "div",
        { class: "toolbar" },
        search,
        h("span", { class: "pop-wrap" }, filterBtn),
        h("span", { class: "pop-wrap" }, colsBtn),
        h("label", {}, "Group by", groupSel),
        metricSel,
        datalist,
      ),
      body,
    ),
  );

  // --- the views -------------------------------------------------------------------------------
  function columns() {
    const sel = {
      id: "sel",
      title: "",
      width: 40,
      sort: null,
      headCell: () => h("span", { title: "tick runs to compare them" }),
    };
    const extra = st.cols.map((c) => ({ id: c, title: c, width: Math.min(260, Math.max(100, c.length * 8 + 50)), sort: c }));
    return [sel, ...BASE, ...extra];
  }

  function cell(col, run) {
    switch (col.id) {
      case "sel":
        return h("input", {
          type: "checkbox",
          checked: st.sel.has(run.id),
          "aria-label": `select ${run.name || run.id}`,
          onchange: (ev) => {
            if (ev.target.checked) st.sel.add(run.id);
            else st.sel.delete(run.id);
            updateCompare();
            save();
            table.schedule();
          },
        });
      case "name":
        return h("a", { href: url.link(["r", entity, project, run.id]), title: run.id }, run.name || run.id);
      case "state":
        return h("span", { class: `state ${run.state}` }, run.state);
      case "created_at":
        return fmtTime(run.created_at);
      case "runtime":
        return fmtDuration(fieldValue(run, "runtime"));
      case "tags":
        return (run.tags || []).map((t) => h("span", { class: "chip" }, t));
      case "world_size":
      case "node_count":
        return h("span", { class: "num" }, run.world_size > 1 && run[col.id] != null ? String(run[col.id]) : "");
      default: {
        const v = fieldValue(run, col.id);
        const el = h("span", {}, fmtValue(v));
        if (typeof v === "number") el.className = "num";
        return el;
      }
    }
  }

  function onSort(col) {
    const cur = st.sort.replace(/^[-+]/, "");
    st.sort = cur === col.sort && st.sort.startsWith("-") ? col.sort : `-${col.sort}`;
    save();
    show();
  }

  function showTable() {
    if (!table) {
      table = new VirtualTable({
        columns: columns(),
        sort: st.sort,
        fetchPage: (offset, limit) => api.runs(entity, project, { ...query(), order: st.sort, offset, limit }),
        cell,
        onSort,
        rowClass: (run) => (st.sel.has(run.id) ? "selected" : ""),
      });
    }
    table.opts.columns = columns();
    table.opts.sort = st.sort;
    body.replaceChildren(table.el, table.foot);
    table.reset();
  }

  function show() {
    drawTabs();
    const grouped = st.view === "table" && st.group;
    if (st.view === "table" && !grouped) return showTable();
    if (grouped) {
      body.replaceChildren(
        groupsTable(entity, project, { by: st.group, metric: st.gm, ...query() }, (value) => {
          st.conds = [...st.conds, [st.group, "$eq", value]];
          st.group = "";
          fillSelects();
          drawFilterBtn();
          save();
          show();
        }),
      );
    } else if (st.view === "alerts") {
      body.replaceChildren(alertsList(entity, project, null).el);
    } else if (st.view === "scatter") {
      body.replaceChildren(scatterView(entity, project, keys, query(), st.sort));
    } else {
      body.replaceChildren(parallelView(entity, project, keys, query(), st.sort));
    }
  }

  let resetTimer = null;
  function onLive(changed) {
    if (!table || !body.contains(table.el)) return;
    const cached = new Set([...table.cached()].map((r) => r.id));
    if (!changed) {
      // Polling: refetch the running runs in view.
      for (const r of table.cached()) if (r.state === "running") api.run(entity, project, r.id).then((x) => table.updateRun(x), () => null);
      return;
    }
    for (const [id, run] of changed) {
      if (run && cached.has(id)) table.updateRun(run);
      else if (!resetTimer) {
        // A new or deleted run moves rows: refetch what is in view, at most once a second.
        resetTimer = setTimeout(() => ((resetTimer = null), table.reset({ keepScroll: true })), 1000);
      }
    }
  }

  drawFilterBtn();
  updateCompare();
  drawTabs();
  fillSelects();
  show();
  api
    .keys(entity, project)
    .then((k) => {
      keys = k;
      datalist.replaceChildren(fieldList("rs-fields", keys));
      fillSelects();
      // A link without cols= shows a few config and summary columns, as W&B's table does, so a
      // first look at a project shows what its runs tried and got; the chooser changes them.
      if (p.get("cols") === null && !st.cols.length) {
        const cfg = (keys.config || []).filter((c) => !c.startsWith("_")).slice(0, 3);
        const sum = (keys.summary || []).filter((c) => !c.startsWith("_")).slice(0, 5);
        st.cols = [...cfg.map((c) => `config.${c}`), ...sum.map((c) => `summary.${c}`)];
        if (st.cols.length && st.view === "table") show();
      }
      if (st.view !== "table") show();
    })
    .catch(() => null);
  stopLive = watch(entity, project, null, onLive);

  return {
    destroy() {
      clearTimeout(searchTimer);
      clearTimeout(resetTimer);
      if (stopLive) stopLive();
      if (table) table.destroy();
    },
  };
}
