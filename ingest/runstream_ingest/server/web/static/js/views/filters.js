// The runs table's filter builder and column chooser.
//
// A filter is a list of conditions [field, operator, value], all of which must hold; it goes to
// the server as the documented filter dict ({"$and": [{"config.lr": {"$gt": 0.01}}, ...]}) and
// into the URL as the list itself (?f=...).  Values are typed as written: 0.01 is a number,
// true/false booleans, null null, "0.01" (quoted) a string; $in takes a comma-separated list.

import { h } from "../dom.js";

export const COLUMNS = ["name", "state", "created_at", "finished_at", "host", "program", "group", "job_type", "tags", "id"];
export const OPS = [
  ["$eq", "="],
  ["$ne", "≠"],
  ["$gt", ">"],
  ["$gte", "≥"],
  ["$lt", "<"],
  ["$lte", "≤"],
  ["$in", "in"],
  ["$nin", "not in"],
  ["$regex", "matches"],
  ["$exists", "exists"],
];

function scalar(text) {
  const t = text.trim();
  if (t === "true" || t === "false") return t === "true";
  if (t === "null") return null;
  if (/^".*"$/.test(t) || /^'.*'$/.test(t)) return t.slice(1, -1);
  if (t !== "" && Number.isFinite(Number(t))) return Number(t);
  return t;
}

export function parseValue(text, op) {
  if (op === "$in" || op === "$nin") return String(text).split(",").map(scalar);
  if (op === "$regex") return String(text);
  if (op === "$exists") return String(text).trim() !== "false";
  return scalar(String(text));
}

function showValue(v) {
  if (Array.isArray(v)) return v.map(showValue).join(",");
  if (typeof v === "string" && (v === "true" || v === "false" || v === "null" || (v.trim() !== "" && Number.isFinite(Number(v))))) {
    return `"${v}"`;
  }
  return v === null ? "null" : String(v);
}

/** The filter dict for the API, or null. */
export function compile(conds) {
  const parts = conds.filter((c) => c[0]).map(([f, op, v]) => ({ [f]: { [op]: v } }));
  if (!parts.length) return null;
  return parts.length === 1 ? parts[0] : { $and: parts };
}

/** A datalist of every field a filter or column may name. */
export function fieldList(id, keys) {
  const opts = [...COLUMNS, ...(keys?.config || []).map((k) => `config.${k}`), ...(keys?.summary || []).map((k) => `summary.${k}`)];
  return h("datalist", { id }, opts.map((o) => h("option", { value: o })));
}

/** A popover of condition rows; onChange(conds) when one is applied. */
export function filterBuilder(conds, listId, onChange) {
  const rows = h("div", { class: "filters" });
  const draft = conds.map((c) => [...c]);
  const addRow = (c = ["", "$eq", ""]) => {
    const field = h("input", { class: "field", value: c[0], list: listId, placeholder: "config.lr, summary.acc, state…", "aria-label": "field" });
    const op = h("select", { "aria-label": "operator" }, OPS.map(([v, t]) => h("option", { value: v, selected: v === c[1] }, t)));
    const value = h("input", { class: "value", value: c[0] ? showValue(c[2]) : "", placeholder: "value", "aria-label": "value" });
    const row = h("div", { class: "filter-row", dataset: { testid: "filter-row" } }, field, op, value, h("button", { type: "button", title: "remove", onclick: () => row.remove() }, "×"));
    row.read = () => [field.value.trim(), op.value, parseValue(value.value, op.value)];
    rows.append(row);
  };
  draft.forEach(addRow);
  if (!draft.length) addRow();
  const apply = () => onChange([...rows.children].map((r) => r.read()).filter((c) => c[0]));
  return h(
    "form",
    { class: "popover", dataset: { testid: "filter-builder" }, onsubmit: (ev) => (ev.preventDefault(), apply()) },
    h("div", { class: "muted" }, "Runs matching all of:"),
    rows,
    h(
      "div",
      { class: "toolbar", style: { marginTop: "8px" } },
      h("button", { type: "button", onclick: () => addRow() }, "+ condition"),
      h("span", { class: "spacer" }),
      h("button", { type: "button", onclick: () => onChange([]) }, "Clear"),
      h("button", { type: "submit", class: "primary", dataset: { testid: "filter-apply" } }, "Apply"),
    ),
  );
}

/** Checkboxes for every config and summary key; onChange(columns) on each click. */
export function columnChooser(keys, chosen, onChange) {
  const set = new Set(chosen);
  const search = h("input", { placeholder: "find a key", "aria-label": "find a key" });
  const box = h("div");
  const all = [...(keys?.config || []).map((k) => `config.${k}`), ...(keys?.summary || []).filter((k) => !k.startsWith("_runstream")).map((k) => `summary.${k}`)];
  const draw = () => {
    const q = search.value.toLowerCase();
    box.replaceChildren(
      ...all
        .filter((k) => k.toLowerCase().includes(q))
        .map((k) =>
          h(
            "label",
            {},
            h("input", {
              type: "checkbox",
              checked: set.has(k),
              dataset: { key: k },
              onchange: (ev) => {
                if (ev.target.checked) set.add(k);
                else set.delete(k);
                onChange(all.filter((c) => set.has(c)).concat([...set].filter((c) => !all.includes(c))));
              },
            }),
            h("span", { class: "mono" }, k),
          ),
        ),
    );
    if (!all.length) box.append(h("p", { class: "muted" }, "No config or summary keys yet."));
  };
  search.addEventListener("input", draw);
  draw();
  return h("div", { class: "popover", dataset: { testid: "column-chooser" } }, search, box);
}

/** Opens `make()` as a popover under `button`, closing it on an outside click or Escape. */
export function popover(button, make) {
  const wrap = button.parentElement;
  const open = wrap.querySelector(":scope > .popover");
  if (open) {
    open.remove();
    return;
  }
  const pop = make();
  wrap.append(pop);
  const close = (ev) => {
    if (ev.type === "keydown" ? ev.key === "Escape" : !wrap.contains(ev.target)) {
      pop.remove();
      document.removeEventListener("mousedown", close);
      document.removeEventListener("keydown", close);
    }
  };
  setTimeout(() => {
    document.addEventListener("mousedown", close);
    document.addEventListener("keydown", close);
  });
}
