// The run page: #/r/E/P/RUN?tab=overview|charts|system|console|files|alerts (+ the charts' settings).
// While the run is running, its header, overview and charts follow its data (live.js).

import { api } from "../api.js";
import { color, flatten, fmtDuration, fmtTime, fmtValue, h, runtime } from "../dom.js";
import { watch } from "../live.js";
import * as url from "../url.js";
import { chartsView } from "./charts.js";
import { isHidden } from "../metrics.js";
import { isMedia, mediaKeys, mediaView } from "./media.js";
import { alertsList } from "./alerts.js";
import { consoleTab, filesTab, systemTab } from "./runtabs.js";
import { isDistributed, jobFacts, rankCards } from "../ranks.js";
import { nodeSystemTab } from "./nodes.js";

const TABS = [
  ["overview", "Overview"],
  ["charts", "Charts"],
  ["system", "System"],
  ["console", "Console"],
  ["files", "Files"],
  ["alerts", "Alerts"],
];

export function mount(root, route) {
  const [, entity, project, id] = route.parts;
  const tab = TABS.some(([t]) => t === route.params.get("tab")) ? route.params.get("tab") : "overview";
  const head = h("div", { class: "toolbar" });
  const content = h("div", { class: "run-content" }, h("p", { class: "muted" }, "Loading…"));
  const tabs = h(
    "nav",
    { class: "tabs" },
    TABS.map(([t, label]) => h("a", { href: url.link(["r", entity, project, id], { tab: t }), class: t === tab ? "active" : "", dataset: { testid: `tab-${t}` } }, label)),
  );
  root.append(h("div", { class: "page" }, head, tabs, content));
  let child = null;
  let stop = null;
  let run = null;

  const drawHead = () =>
    head.replaceChildren(
      h("h1", { dataset: { testid: "run-name" } }, run.name || run.id),
      h("span", { class: `state ${run.state}`, dataset: { testid: "run-state" } }, run.state),
      h("span", { class: "muted mono" }, run.id),
      jobFacts(run), // a distributed run: world size, nodes, ranks' states, who failed first
    );

  async function start() {
    try {
      run = await api.run(entity, project, id);
    } catch (e) {
      content.replaceChildren(h("p", { class: e.status === 404 ? "muted" : "error" }, e.message));
      return;
    }
    drawHead();
    if (tab === "overview") child = overview(entity, project, run, (r) => ((run = r), drawHead()));
    else if (tab === "charts") child = chartsAndMedia(entity, project, [{ id, label: run.name || id, color: color(0), json: run }], await chartKeys(entity, project, run), isDistributed(run) ? run : null);
    else if (tab === "system") child = (isDistributed(run) ? nodeSystemTab : systemTab)(entity, project, run);
    else if (tab === "console") child = consoleTab(entity, project, run);
    else if (tab === "alerts") child = alertsList(entity, project, id);
    else child = filesTab(entity, project, run);
    content.replaceChildren(child.el);
    stop = watch(entity, project, [id], async (changed) => {
      if (changed ? !changed.has(id) : run.state !== "running") return;
      let next = changed ? changed.get(id) : await api.run(entity, project, id).catch(() => run);
      // A live event carries the runs-list JSON; a distributed run's ranks are in the run's own.
      if (next && isDistributed(next) && !next.ranks) next = await api.run(entity, project, id).catch(() => next);
      if (!next) {
        content.replaceChildren(h("p", { class: "muted" }, "This run was deleted."));
        return;
      }
      run = next;
      drawHead();
      if (child.refresh) child.refresh(changed, run);
    });
  }
  start();
  return {
    destroy() {
      if (stop) stop();
      if (child && child.destroy) child.destroy();
    },
  };
}

/** The run's chartable keys: its history keys in logged order (else its numeric summary keys),
 * less those holding media (images, tables...: media.js draws them). */
export async function chartKeys(entity, project, run) {
  const k = await api.runKeys(entity, project, run.id).catch(() => null);
  const keys = k ?? Object.keys(run.summary || {}).filter((key) => typeof run.summary[key] === "number");
  return keys.filter((key) => !key.startsWith("_") && !isMedia(run.summary?.[key]) && !isHidden(run, key));
}

/** The charts tab (and compare): metric charts, then the media panels of the same runs.
 * runs: [{id, label, color, json}]; dist: a distributed run's JSON (its charts choose ranks).
 * A media key a live run logs later rebuilds the media part. */
export function chartsAndMedia(entity, project, runs, keys, dist = null) {
  const media = () => mediaView(entity, project, runs.map((r) => ({ ...r })));
  let m = media();
  const charts = keys.length || m.empty ? chartsView(entity, project, runs, keys, dist) : null;
  const el = h("div", { class: "charts-media" }, charts ? charts.el : null, m.el);
  return {
    el,
    async refresh(changed, run) {
      for (const r of runs) {
        const j = changed ? changed.get(r.id) : run && run.id === r.id ? run : null;
        if (j) r.json = j;
      }
      if (charts) charts.refresh(changed, run);
      const now = new Set(runs.flatMap((r) => mediaKeys(r.json)));
      if ([...now].some((k) => !m.keys.includes(k))) {
        m.destroy();
        const next = media();
        m.el.replaceWith(next.el);
        m = next;
      } else m.refresh(changed, run);
    },
    destroy() {
      if (charts) charts.destroy();
      m.destroy();
    },
  };
}

function kvTable(obj, testid) {
  const rows = flatten(obj).map(([k, v]) => h("tr", {}, h("td", { class: "mono" }, k), h("td", { class: "mono" }, fmtValue(v))));
  return rows.length ? h("table", { class: "kv", dataset: { testid } }, h("tbody", {}, rows)) : h("p", { class: "muted" }, "none");
}

/** The code and environment rows of the overview (run_context.py records them; docs/run-dir.md). */
function environment(meta) {
  const mono = (testid, text) => h("span", { class: "mono", dataset: { testid } }, text);
  const rows = [];
  const cpus = [meta.cpu_count, meta.cpu_count_logical].filter((n) => n != null);
  if (meta.user) rows.push(["user", mono("env-user", meta.user)]);
  rows.push(["python", mono("env-python", [meta.python, meta.python_implementation, meta.executable].filter(Boolean).join(" ") || "—")]);
  if (meta.os) rows.push(["OS", mono("env-os", meta.os)]);
  if (cpus.length) rows.push(["CPUs", h("span", { dataset: { testid: "env-cpus" } }, cpus.length === 2 ? `${cpus[0]} cores, ${cpus[1]} threads` : String(cpus[0]))]);
  const gpu = meta.gpu;
  if (gpu && gpu.count) {
    const extra = [gpu.driver && `driver ${gpu.driver}`, gpu.cuda && `CUDA ${gpu.cuda}`].filter(Boolean).join(", ");
    rows.push(["GPUs", h("span", { dataset: { testid: "env-gpu" } }, `${gpu.count} × ${gpu.name || "GPU"}` + (extra ? ` (${extra})` : ""))]);
  }
  if (meta.code_path) rows.push(["code", mono("env-code", meta.code_path)]);
  const git = meta.git;
  if (!git) return [...rows, ["git", h("span", { class: "muted" }, "—")]];
  const state = git.dirty == null ? "unknown" : git.dirty ? "uncommitted changes (in diff.patch)" : "clean";
  const untracked = git.untracked ? `, ${git.untracked} untracked` : "";
  return [
    ...rows,
    ["git commit", mono("env-git-commit", git.commit || "no commits yet")],
    ["git branch", mono("env-git-branch", git.branch || "detached HEAD")],
    ["git remote", mono("env-git-remote", git.remote || "—")],
    ["working tree", mono("env-git-dirty", state + untracked)],
  ];
}

function overview(entity, project, run, onSaved) {
  const el = h("div", { class: "two-col" });
  const msg = h("span", { class: "muted" });
  const save = async (changes) => {
    msg.textContent = "saving…";
    msg.className = "muted";
    try {
      const r = await api.patchRun(entity, project, run.id, changes);
      run = r;
      onSaved(r);
      msg.textContent = "saved";
      draw();
    } catch (e) {
      msg.textContent = e.message;
      msg.className = "error";
    }
  };
  function draw() {
    const meta = run.meta || {};
    const command = [run.program, ...(meta.args || [])].filter(Boolean).join(" ") || "—";
    const info = [
      // a distributed run's state is the job's, its exit code rank 0's: the ranks card has each
      ["state", h("span", { class: `state ${run.state}` }, run.state + (isDistributed(run) ? " (the job: all ranks)" : run.exit_code != null ? ` (exit ${run.exit_code})` : ""))],
      ["created", fmtTime(run.created_at)],
      ["finished", run.finished_at ? fmtTime(run.finished_at) : "—"],
      ["runtime", fmtDuration(runtime(run))],
      ["last heartbeat", fmtTime(run.heartbeat_at)],
      ["host", run.host || "—"],
      ["command", h("span", { class: "mono", dataset: { testid: "env-command" } }, command)],
      ...environment(meta),
      ["group", run.group || "—"],
      ["job type", run.job_type || "—"],
      ["history", `${(run.rows ?? 0).toLocaleString("en-US")} rows, last step ${run.last_step}`],
    ];
    const name = h("input", { value: run.name || "", dataset: { testid: "edit-name" }, "aria-label": "name" });
    const notes = h("textarea", { class: "notes", dataset: { testid: "edit-notes" }, "aria-label": "notes" });
    notes.value = run.notes || "";
    const tagInput = h("input", { placeholder: "add a tag, Enter", dataset: { testid: "add-tag" }, "aria-label": "add a tag" });
    tagInput.addEventListener("keydown", (ev) => {
      const t = tagInput.value.trim();
      if (ev.key === "Enter" && t && !(run.tags || []).includes(t)) save({ tags: [...(run.tags || []), t] });
    });
    const tags = (run.tags || []).map((t) =>
      h("span", { class: "chip", dataset: { testid: "tag" } }, t, h("button", { type: "button", title: `remove ${t}`, onclick: () => save({ tags: run.tags.filter((x) => x !== t) }) }, "×")),
    );
    el.replaceChildren(
      h(
        "div",
        { style: { display: "flex", flexDirection: "column", gap: "12px" } },
        h("div", { class: "card pad" }, h("h2", {}, "Run"), h("table", { class: "kv" }, h("tbody", {}, info.map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, v)))))),
        h(
          "div",
          { class: "card pad" },
          h("h2", {}, "Name, tags and notes"),
          h("div", { class: "toolbar" }, name),
          h("div", { style: { margin: "8px 0" } }, tags, tagInput),
          notes,
          h("div", { class: "toolbar" }, h("button", { type: "button", class: "primary", dataset: { testid: "save-run" }, onclick: () => save({ name: name.value.trim() || null, notes: notes.value }) }, "Save"), msg),
        ),
      ),
      h(
        "div",
        { style: { display: "flex", flexDirection: "column", gap: "12px" } },
        h("div", { class: "card pad" }, h("h2", {}, "Config"), kvTable(run.config, "config")),
        h("div", { class: "card pad" }, h("h2", {}, isDistributed(run) ? "Summary (rank 0)" : "Summary"), kvTable(run.summary, "summary")),
        ...rankCards(run), // a distributed run: its ranks and the summary across them
      ),
    );
  }
  draw();
  return {
    el,
    refresh(_changed, r) {
      const editing = el.contains(document.activeElement) && ["INPUT", "TEXTAREA"].includes(document.activeElement.tagName);
      run = r;
      if (!editing) draw(); // never throw away what the user is typing
    },
  };
}
