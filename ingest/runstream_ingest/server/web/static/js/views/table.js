// A virtual table of runs: the server sorts, filters and pages; the browser holds the pages it has
// seen and draws only the rows in view, so 10,000 runs scroll like 10.  Rows are absolutely placed
// in a body as tall as all rows together; a page is fetched when a row of it comes into view.

import { h } from "../dom.js";

const PAGE = 100;
const OVERSCAN = 10;

export class VirtualTable {
  /** opts: {columns: [{id, title, width, sort}], fetchPage(offset, limit), cell(col, run), sort, onSort(col), rowClass(run)} */
  constructor(opts) {
    this.opts = opts;
    this.rowH = 32;
    this.total = 0;
    this.pages = new Map(); // page index -> runs[] | "loading"
    this.gen = 0;
    this.head = h("div", { class: "vt-head", dataset: { testid: "runs-head" } });
    this.body = h("div", { class: "vt-body" });
    this.el = h("div", { class: "vt", dataset: { testid: "runs-table" }, onscroll: () => this.schedule() }, this.head, this.body);
    this.foot = h("div", { class: "vt-foot", dataset: { testid: "runs-total" } }, "Loading…");
    this.resize = new ResizeObserver(() => this.schedule());
    this.resize.observe(this.el);
    this.renderHead();
  }

  get template() {
    return this.opts.columns.map((c) => `${c.width}px`).join(" ") + " 1fr";
  }

  renderHead() {
    const cells = this.opts.columns.map((c) => {
      const sorted = c.sort && this.opts.sort && this.opts.sort.replace(/^[-+]/, "") === c.sort;
      const arrow = sorted ? (this.opts.sort.startsWith("-") ? " ↓" : " ↑") : "";
      return h(
        "div",
        {
          class: (c.sort ? "" : "nosort ") + (sorted ? "sorted" : ""),
          title: c.sort ? `sort by ${c.title ?? c.id}` : "",
          dataset: { col: c.id },
          onclick: () => c.sort && this.opts.onSort(c),
        },
        c.headCell ? c.headCell() : (c.title ?? c.id) + arrow,
      );
    });
    this.head.style.gridTemplateColumns = this.template;
    this.head.replaceChildren(...cells, h("div", { class: "nosort" }));
  }

  /** Drops every cached page and starts again from the top (new filter, sort or columns). */
  async reset({ keepScroll = false } = {}) {
    this.gen += 1;
    this.pages.clear();
    if (!keepScroll) this.el.scrollTop = 0;
    this.renderHead();
    await this.load(keepScroll ? Math.floor(this.firstVisible() / PAGE) : 0);
  }

  firstVisible() {
    return Math.max(0, Math.floor((this.el.scrollTop - this.head.offsetHeight) / this.rowH));
  }

  async load(page) {
    if (this.pages.has(page)) return;
    const gen = this.gen;
    this.pages.set(page, "loading");
    try {
      const { total, runs } = await this.opts.fetchPage(page * PAGE, PAGE);
      if (gen !== this.gen) return;
      this.pages.set(page, runs);
      this.setTotal(total);
    } catch (e) {
      if (gen !== this.gen) return;
      this.pages.delete(page);
      this.foot.textContent = `could not load runs: ${e.message}`;
      this.foot.classList.add("error");
      return;
    }
    this.schedule();
  }

  setTotal(total) {
    this.total = total;
    this.body.style.height = `${total * this.rowH}px`;
    this.foot.classList.remove("error");
    this.foot.textContent = `${total.toLocaleString("en-US")} run${total === 1 ? "" : "s"}`;
    this.foot.dataset.total = String(total);
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.render();
    });
  }

  row(i) {
    const p = this.pages.get(Math.floor(i / PAGE));
    return Array.isArray(p) ? p[i % PAGE] : undefined;
  }

  /** Every run held in the cache (for live updates). */
  *cached() {
    for (const p of this.pages.values()) if (Array.isArray(p)) yield* p;
  }

  updateRun(run) {
    for (const p of this.pages.values()) {
      if (!Array.isArray(p)) continue;
      const i = p.findIndex((r) => r.id === run.id);
      if (i >= 0) p[i] = run;
    }
    this.schedule();
  }

  render() {
    const first = Math.max(0, this.firstVisible() - OVERSCAN);
    const count = Math.ceil(this.el.clientHeight / this.rowH) + 2 * OVERSCAN;
    const last = Math.min(this.total, first + count);
    const rows = [];
    for (let i = first; i < last; i++) {
      const run = this.row(i);
      if (run === undefined) this.load(Math.floor(i / PAGE));
      rows.push(this.renderRow(i, run));
    }
    this.body.replaceChildren(...rows);
  }

  renderRow(i, run) {
    const style = { top: `${i * this.rowH}px`, gridTemplateColumns: this.template };
    if (!run) {
      return h("div", { class: "vt-row loading", style }, this.opts.columns.map(() => h("div", {}, "…")), h("div"));
    }
    const cls = "vt-row " + (this.opts.rowClass ? this.opts.rowClass(run) : "");
    return h(
      "div",
      { class: cls, style, dataset: { testid: "run-row", id: run.id, index: String(i) } },
      this.opts.columns.map((c) => h("div", { dataset: { col: c.id } }, this.opts.cell(c, run))),
      h("div"),
    );
  }

  destroy() {
    this.gen += 1;
    this.resize.disconnect();
    if (this.frame) cancelAnimationFrame(this.frame);
  }
}
