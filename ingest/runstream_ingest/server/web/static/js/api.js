// The HTTP JSON API (docs/http-api.md), the only module that knows its paths.
//
// Auth: the browser signs in once (POST /api/v1/session with an API key) and the server sets an
// HttpOnly cookie that scripts cannot read; the CSRF token from that answer lives in this module's
// memory only and goes with every request that changes something.  A 401 anywhere sends the user
// to the sign-in view (main.js listens for "runstream:unauthenticated").

const enc = encodeURIComponent;
const NONFINITE = { NaN: NaN, Infinity: Infinity, "-Infinity": -Infinity };

let csrf = null;
let session = null; // {entity, csrf_token, auth} once known

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** JSON has no NaN or infinities: the server spells them as strings (docs "Numbers"). */
export function revive(v) {
  if (typeof v === "string") return v in NONFINITE ? NONFINITE[v] : v;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) v[i] = revive(v[i]);
    return v;
  }
  if (v && typeof v === "object") {
    for (const k of Object.keys(v)) v[k] = revive(v[k]);
  }
  return v;
}

function qs(query) {
  const parts = [];
  for (const [k, v] of Object.entries(query || {})) {
    if (v == null || v === "") continue;
    parts.push(`${enc(k)}=${enc(typeof v === "object" ? JSON.stringify(v) : v)}`);
  }
  return parts.length ? `?${parts.join("&")}` : "";
}

async function req(method, path, { query, body, quiet401 = false } = {}) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (method !== "GET" && csrf) headers["X-Runstream-CSRF"] = csrf;
  let r;
  try {
    r = await fetch(path + qs(query), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch (e) {
    throw new ApiError(0, "UNAVAILABLE", `the server did not answer (${e.message})`);
  }
  let data = null;
  try {
    data = await r.json();
  } catch {
    data = null;
  }
  if (!r.ok) {
    const err = new ApiError(r.status, data?.error || `HTTP_${r.status}`, data?.message || `${method} ${path}: HTTP ${r.status}`);
    if (r.status === 401 && !quiet401) window.dispatchEvent(new CustomEvent("runstream:unauthenticated"));
    throw err;
  }
  return revive(data);
}

function flatKeys(obj, prefix = "") {
  return Object.entries(obj || {}).flatMap(([k, v]) =>
    v && typeof v === "object" && !Array.isArray(v) ? flatKeys(v, `${prefix}${k}.`) : [`${prefix}${k}`],
  );
}

const runBase = (e, p, id) => `/api/v1/runs/${enc(e)}/${enc(p)}` + (id ? `/${enc(id)}` : "");

/** Tries `primary`; on a 404 or 405 (an endpoint this server lacks) returns `fallback()`. */
async function orElse(primary, fallback) {
  try {
    return await primary();
  } catch (e) {
    if (e instanceof ApiError && (e.status === 404 || e.status === 405)) return fallback(e);
    throw e;
  }
}

export const api = {
  info: () => req("GET", "/api/v1/info"),

  // --- sessions ----------------------------------------------------------------------------
  get session() {
    return session;
  },
  async loadSession() {
    session = await orElse(
      () => req("GET", "/api/v1/session", { quiet401: true }),
      () => null,
    ).catch(() => null);
    csrf = session?.csrf_token ?? null;
    return session;
  },
  async signIn(apiKey) {
    session = await req("POST", "/api/v1/session", { body: { api_key: apiKey }, quiet401: true });
    csrf = session?.csrf_token ?? null;
    return session;
  },
  async signOut() {
    await req("DELETE", "/api/v1/session").catch(() => null);
    session = null;
    csrf = null;
  },

  // --- projects and runs ---------------------------------------------------------------------
  /** Every project the caller may read: [{entity, name, runs?, last_active?}], or null when the
   * server cannot list them without an entity. */
  allProjects: () =>
    orElse(
      () => req("GET", "/api/v1/projects").then((d) => d.projects),
      () => null,
    ),
  projects: (entity) =>
    req("GET", `/api/v1/projects/${enc(entity)}`).then((d) =>
      d.projects.map((p) => (typeof p === "string" ? { entity, name: p } : { entity, ...p })),
    ),

  /** A page of runs: {total, runs}.  `filters` is the filter dict, `order` e.g. "-summary.acc". */
  async runs(e, p, { filters, order, search, limit = 100, offset = 0, fields } = {}) {
    const f = filters && Object.keys(filters).length ? filters : undefined;
    const d = await req("GET", runBase(e, p), { query: { filters: f, order, search, limit, offset, fields } });
    const total = d.total ?? offset + d.runs.length + (d.runs.length === limit ? limit : 0);
    return { total, runs: d.runs };
  },
  /** {groups: [{value, count, metrics: {key: {count, mean, min, max}}}], total_groups, truncated} */
  groups: (e, p, { by, metrics, filters, search }) =>
    req("GET", `/api/v1/groups/${enc(e)}/${enc(p)}`, {
      query: {
        by,
        metrics: (metrics || []).join(","),
        filters: filters && Object.keys(filters).length ? filters : undefined,
        search,
      },
    }),
  /** {config: [...], summary: [...]}: the keys the project's runs hold (flattened, dotted). */
  keys: (e, p) =>
    orElse(
      () => req("GET", `/api/v1/keys/${enc(e)}/${enc(p)}`),
      async () => {
        // A server without the endpoint: the keys of the newest runs will do.
        const { runs } = await api.runs(e, p, { limit: 200 });
        const keysOf = (src) => [...new Set(runs.flatMap((r) => flatKeys(r[src])))].sort();
        return { config: keysOf("config"), summary: keysOf("summary") };
      },
    ),

  run: (e, p, id) => req("GET", runBase(e, p, id)),
  patchRun: (e, p, id, changes) => req("PATCH", runBase(e, p, id), { body: changes }),
  deleteRun: (e, p, id) => req("DELETE", runBase(e, p, id)),
  /** The run's history keys in logged order, or null when the server has no such endpoint. */
  runKeys: (e, p, id, rank) =>
    orElse(
      () => req("GET", `${runBase(e, p, id)}/keys`, { query: { rank } }).then((d) => d.keys),
      () => null,
    ),

  /** {key: {exact, x, x_last, min, max, mean, count}} for one run (a distributed run: of `rank`,
   * default rank 0). */
  async series(e, p, id, { keys, buckets, xAxis = "_step", min, max, rank }) {
    const d = await req("GET", `${runBase(e, p, id)}/series`, {
      query: { keys: keys.join(","), buckets, x_axis: xAxis, min, max, rank },
    });
    return d.series;
  },
  /** A distributed run's series across its ranks, the answer as it comes: `ranks` is "all"
   * (every rank's series, each with its "rank") or "band" (mean, min and max across ranks). */
  rankSeries: (e, p, id, { keys, buckets, xAxis = "_step", min, max, ranks }) =>
    req("GET", `${runBase(e, p, id)}/series`, {
      query: { keys: keys.join(","), buckets, x_axis: xAxis, min, max, ranks },
    }),
  /** {run_id: {key: series}} for several runs, in one request where the server can. */
  multiSeries(e, p, ids, opts) {
    return orElse(
      async () => {
        const d = await req("GET", `/api/v1/series/${enc(e)}/${enc(p)}`, {
          query: { runs: ids.join(","), keys: opts.keys.join(","), buckets: opts.buckets, x_axis: opts.xAxis, min: opts.min, max: opts.max },
        });
        // Each run: {series: {...}}, or {error, message} for one that does not exist.
        return Object.fromEntries(Object.entries(d.runs).map(([id, r]) => [id, r.series || {}]));
      },
      async () => {
        const all = await Promise.all(ids.map((id) => api.series(e, p, id, opts).catch(() => ({}))));
        return Object.fromEntries(ids.map((id, i) => [id, all[i]]));
      },
    );
  },

  /** [{id, seq, time, stream, line}] after the line `afterId` (a distributed run: of `rank`, or
   * with rank "all" every rank's lines, each with its "rank"). */
  console: (e, p, id, afterId = 0, limit = 1000, rank) =>
    req("GET", `${runBase(e, p, id)}/console`, { query: { after_id: afterId, limit, rank } }).then((d) => d.lines),
  /** System-metric samples; a distributed run: node `node`'s (default rank 0's node), or with
   * `rank` that rank's process stats. */
  system: (e, p, id, { keys, minTime, maxTime, node, rank } = {}) =>
    req("GET", `${runBase(e, p, id)}/system`, {
      query: { keys: keys && keys.join(","), min_time: minTime, max_time: maxTime, node, rank },
    }).then((d) => d.samples),
  files: (e, p, id) => req("GET", `${runBase(e, p, id)}/files`).then((d) => d.files),
  /** {alerts, total}: a run's alerts, newest first, with their delivery state. */
  alerts: (e, p, id, limit = 100) => req("GET", `${runBase(e, p, id)}/alerts`, { query: { limit } }),
  /** {alerts, total}: every alert of a project's runs, newest first. */
  projectAlerts: (e, p, limit = 100) => req("GET", `/api/v1/alerts/${enc(e)}/${enc(p)}`, { query: { limit } }),

  /** Every history row of `keys` from `minStep` on (all pages): the media panels' values. */
  async history(e, p, id, { keys, minStep, pageSize = 1000 } = {}) {
    const rows = [];
    let next = minStep;
    for (;;) {
      const d = await req("GET", `${runBase(e, p, id)}/history`, {
        query: { keys: keys && keys.join(","), min_step: next, page_size: pageSize },
      });
      rows.push(...d.rows);
      if (d.next_min_step == null || !d.rows.length) return rows;
      next = d.next_min_step;
    }
  },
  /** The URL of a run file's content (media files: <img>, <video>, <audio> and fetch read it). */
  fileUrl: (e, p, id, path) => `${runBase(e, p, id)}/files/${String(path).split("/").map(enc).join("/")}`,
  /** A run file's content as text (HTML, JSON), or an ApiError. */
  async fileText(e, p, id, path) {
    let r;
    try {
      r = await fetch(api.fileUrl(e, p, id, path), { credentials: "same-origin" });
    } catch (err) {
      throw new ApiError(0, "UNAVAILABLE", `the server did not answer (${err.message})`);
    }
    if (!r.ok) {
      const data = await r.json().catch(() => null);
      throw new ApiError(r.status, data?.error || `HTTP_${r.status}`, data?.message || `${path}: HTTP ${r.status}`);
    }
    return r.text();
  },
  /** A run file's JSON.  Python's json writes NaN and Infinity bare, which JSON.parse refuses:
   * those tokens (outside strings) are read as the numbers. */
  fileJson: (e, p, id, path) =>
    api.fileText(e, p, id, path).then((t) => {
      try {
        return JSON.parse(t);
      } catch {
        return revive(JSON.parse(t.replace(/([:\[,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])/g, '$1"$2"')));
      }
    }),

  eventsUrl: (e, p, ids) => `/api/v1/events/${enc(e)}/${enc(p)}` + qs({ runs: ids && ids.join(",") }),
};
