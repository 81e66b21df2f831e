// define_metric in the dashboard (docs/metrics.md): a run JSON's `metrics` (definitions by name,
// globs ending in "*") say which keys get no chart (`hidden`) and which are drawn against another
// metric (`step_metric`) instead of the step.  The rules are format/metrics.py's: a key's own
// definition, else the longest glob it starts with; keys starting with "_" are never covered.

/** The definition covering `key` in run JSON `run`, or null. */
export function metricDef(run, key) {
  const defs = (run && run.metrics) || {};
  if (Object.prototype.hasOwnProperty.call(defs, key)) return defs[key];
  if (key.startsWith("_")) return null;
  let found = null;
  let best = -1;
  for (const [name, d] of Object.entries(defs)) {
    if (name.endsWith("*") && key.startsWith(name.slice(0, -1)) && name.length > best) {
      found = d;
      best = name.length;
    }
  }
  return found;
}

export function isHidden(run, key) {
  return !!metricDef(run, key)?.hidden;
}

/** The step metric every run in `jsons` agrees on for `key` (one run's, or the same in all), or null. */
export function stepMetricOf(jsons, key) {
  const names = new Set(jsons.map((j) => metricDef(j, key)?.step_metric || null));
  if (names.size !== 1) return null;
  const [name] = names;
  return name && name !== key ? name : null;
}

/** Series `s` (buckets over steps) redrawn against the step metric whose series (over the same
 * steps) is `xs`: each bucket's x becomes the step metric's value at the bucket's middle step --
 * the last step metric bucket starting at or before it (W&B's step_sync: the latest value).
 * Buckets before the first value of the step metric are left out; the result is sorted by x. */
export function againstStepMetric(s, xs) {
  if (!s || !s.x || !xs || !xs.x || !xs.x.length) return null;
  const mid = (x, i) => (s.x_last && s.x_last[i] != null ? (x + s.x_last[i]) / 2 : x);
  const pts = [];
  let j = -1;
  const order = s.x.map((x, i) => [mid(x, i), i]).sort((a, b) => a[0] - b[0]);
  for (const [step, i] of order) {
    while (j + 1 < xs.x.length && xs.x[j + 1] <= step) j++;
    const v = j >= 0 ? xs.mean[j] : null;
    if (typeof v === "number" && Number.isFinite(v)) pts.push([v, i]);
  }
  pts.sort((a, b) => a[0] - b[0]);
  const pick = (arr) => (arr ? pts.map(([, i]) => arr[i]) : null);
  return { exact: s.exact, x: pts.map(([v]) => v), x_last: null, min: pick(s.min), max: pick(s.max), mean: pick(s.mean), count: pick(s.count) };
}
