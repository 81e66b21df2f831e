// Live updates: the server pushes each changed run of a project as a server-sent event (docs/
// http-api.md, "Live updates"): `run` with the run's JSON, `deleted` with its path, at most a few a
// second.  Views update what they show of those runs.  Where the stream cannot be opened (an old
// server, a proxy that buffers), it falls back to polling: every POLL_MS the callback gets null,
// meaning "anything may have changed".  Either way a running run's chart and table row follow its
// data within 2 s.

import { api, revive } from "./api.js";

const POLL_MS = 2000;
let active = 0;

function setDot() {
  const dot = document.getElementById("live-dot");
  if (dot) dot.classList.toggle("on", active > 0);
}

/** Calls onChange(Map of run id -> run JSON, or null for a deleted run; or null meaning "poll")
 * as the project's runs (or only `ids`) change.  Returns stop(). */
export function watch(entity, project, ids, onChange) {
  let stopped = false;
  let poll = null;
  let es = null;
  const startPolling = () => {
    if (poll || stopped) return;
    poll = setInterval(() => onChange(null), POLL_MS);
  };
  const handle = (ev, deleted) => {
    let d;
    try {
      d = revive(JSON.parse(ev.data));
    } catch {
      return;
    }
    const id = (deleted ? d.path : d.path || `${d.entity}/${d.project}/${d.id}`).split("/").pop();
    onChange(new Map([[id, deleted ? null : d]]));
  };
  if (typeof EventSource === "function") {
    es = new EventSource(api.eventsUrl(entity, project, ids));
    es.addEventListener("run", (ev) => handle(ev, false));
    es.addEventListener("deleted", (ev) => handle(ev, true));
    es.onerror = () => {
      // CLOSED: the server refused the stream (no such endpoint, signed out); otherwise the
      // browser reconnects by itself and nothing is lost but a moment.
      if (es.readyState === EventSource.CLOSED) startPolling();
    };
  } else {
    startPolling();
  }
  active += 1;
  setDot();
  return () => {
    if (stopped) return;
    stopped = true;
    if (es) es.close();
    if (poll) clearInterval(poll);
    active -= 1;
    setDot();
  };
}
