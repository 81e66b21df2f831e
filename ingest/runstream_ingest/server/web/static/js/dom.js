// Small DOM and formatting helpers shared by every view (no framework: views build elements with
// h() and replace them when their data changes).

/** h("div", {class: "x", onclick: f, dataset: {k: "v"}}, child, "text", [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Calls fn at most once per `ms`, with the last arguments (search boxes, sliders). */
export function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

export const PALETTE = [
  "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
];

export function color(i) {
  return PALETTE[((i % PALETTE.length) + PALETTE.length) % PALETTE.length];
}

export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// --- formatting ------------------------------------------------------------------------------
export function fmtNum(v) {
  if (typeof v !== "number") return v == null ? "" : String(v);
  if (Number.isNaN(v)) return "NaN";
  if (!Number.isFinite(v)) return v > 0 ? "∞" : "-∞";
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return v.toLocaleString("en-US");
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return Number(v.toPrecision(4)).toExponential();
  return String(Number(v.toPrecision(5)));
}

export function fmtValue(v) {
  if (v == null) return "";
  if (typeof v === "number") return fmtNum(v);
  if (typeof v === "boolean") return String(v);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

export function fmtTime(t) {
  if (t == null) return "";
  const d = new Date(t * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function fmtDuration(s) {
  if (s == null || !Number.isFinite(s)) return "";
  s = Math.max(0, s);
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.round(s % 60)}s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr}h ${m % 60}m`;
  return `${Math.floor(hr / 24)}d ${hr % 24}h`;
}

/** Seconds the run has run: its summary's _runtime, else from its times. */
export function runtime(run) {
  const r = run.runtime ?? (run.summary && run.summary._runtime);
  if (typeof r === "number" && Number.isFinite(r)) return r;
  const end = run.finished_at ?? (run.state === "running" ? Date.now() / 1000 : run.heartbeat_at);
  return end == null ? null : end - run.created_at;
}

/** {"a": {"b": 1}} -> [["a.b", 1]], sorted; lists stay values. */
export function flatten(obj, prefix = "", out = []) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
    else out.push([key, v]);
  }
  return prefix ? out : out.sort((a, b) => a[0].localeCompare(b[0]));
}

/** A dotted key's value in a nested map ("opt.lr" finds {"opt": {"lr": 1}} or {"opt.lr": 1}). */
export function lookup(obj, key) {
  if (obj == null || typeof obj !== "object") return undefined;
  if (key in obj) return obj[key];
  for (let i = 0; i < key.length; i++) {
    if ((key[i] === "." || key[i] === "/") && obj[key.slice(0, i)] && typeof obj[key.slice(0, i)] === "object") {
      const v = lookup(obj[key.slice(0, i)], key.slice(i + 1));
      if (v !== undefined) return v;
    }
  }
  return undefined;
}

/** The value of a table column ("name", "config.lr", "summary.acc", ...) for a run. */
export function fieldValue(run, field) {
  if (field.startsWith("config.")) return lookup(run.config, field.slice(7));
  if (field.startsWith("summary.")) return lookup(run.summary, field.slice(8));
  if (field === "runtime") return runtime(run);
  return run[field];
}
