// Every view's state lives in the URL's fragment, so any view can be shared as a link:
//   #/                                    projects
//   #/p/ENTITY/PROJECT?view=table&q=&f=[...]&sort=-summary.acc&group=config.opt&cols=...&sel=a,b
//   #/r/ENTITY/PROJECT/RUN?tab=charts&x=_step&logy=1&smooth=0.6&zoom=10,500
//   #/c/ENTITY/PROJECT?runs=a,b&color=group&...chart settings
//   #/signin?next=...
// Views change their own parameters with set() (history.replaceState: no new history entry and no
// re-render); links between views push a new entry (go()).

export function parse(hash = location.hash) {
  const raw = hash.replace(/^#/, "") || "/";
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(query) };
}

export function build(parts, params) {
  const path = "/" + parts.map(encodeURIComponent).join("/");
  const q = params instanceof URLSearchParams ? params.toString() : new URLSearchParams(params || {}).toString();
  return `#${path}${q ? `?${q}` : ""}`;
}

/** Current parameters, as a plain object of strings. */
export function params() {
  return Object.fromEntries(parse().params);
}

/** Changes parameters of the current view in place; a null or "" value removes one. */
export function set(changes) {
  const { parts, params: p } = parse();
  for (const [k, v] of Object.entries(changes)) {
    if (v == null || v === "" || v === false) p.delete(k);
    else p.set(k, v === true ? "1" : String(v));
  }
  history.replaceState(null, "", build(parts, p));
}

export function go(parts, p) {
  location.hash = build(parts, p);
}

export function link(parts, p) {
  return build(parts, p);
}

export function list(value) {
  return value ? value.split(",").filter(Boolean) : [];
}

export function json(value, fallback) {
  if (!value) return fallback;
  try {
    return JSON.parse(value);
  } catch {
    return fallback;
  }
}
