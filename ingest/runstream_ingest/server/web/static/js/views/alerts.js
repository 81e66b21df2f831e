// Alerts (runstream.alert; docs/alerts.md): the run page's Alerts tab and the project page's
// Alerts view.  Newest first, with each alert's webhook delivery state (delivered, retrying,
// failed, no webhook, expired), so an operator sees at a glance whether anyone was told.

import { api } from "../api.js";
import { fmtTime, h } from "../dom.js";
import * as url from "../url.js";

const PAGE = 200;
const STATUS = {
  delivered: "delivered",
  pending: "retrying",
  failed: "failed",
  no_webhook: "no webhook",
  expired: "expired",
};

function delivery(d) {
  let label = STATUS[d.status] || d.status;
  if (d.status === "pending" && !d.attempts) label = "sending";
  const tip = [d.attempts ? `${d.attempts} attempt${d.attempts === 1 ? "" : "s"}` : "", d.last_error || "", d.delivered_at ? `delivered ${fmtTime(d.delivered_at)}` : ""].filter(Boolean).join(" · ");
  return h("span", { class: `alert-delivery ${d.status}`, title: tip, dataset: { testid: "alert-delivery" } }, label);
}

/** The alerts of one run (`runId`) or of a whole project (`runId` null): {el, refresh}. */
export function alertsList(entity, project, runId) {
  const el = h("div", { class: "card", dataset: { testid: "alerts" } }, h("p", { class: "pad muted" }, "Loading…"));
  const load = () =>
    (runId ? api.alerts(entity, project, runId, PAGE) : api.projectAlerts(entity, project, PAGE)).then(
      (d) => {
        if (!d.alerts.length) {
          const where = runId ? "this run" : "this project";
          return el.replaceChildren(h("p", { class: "pad muted", dataset: { testid: "no-data" } }, `No alerts recorded for ${where} yet.`));
        }
        const cols = ["time", "level", "title", "text", ...(runId ? [] : ["run"]), "step", "delivery"];
        const runLink = (a) => h("a", { href: url.link(["r", entity, project, a.run_id], { tab: "alerts" }) }, a.run_name || a.run_id);
        const more = (a) => (a.suppressed ? h("span", { class: "muted", title: "alerts with this title dropped by the rate limit since the previous one" }, ` (+${a.suppressed} rate-limited)`) : "");
        el.replaceChildren(
          h(
            "table",
            { class: "simple" },
            h("thead", {}, h("tr", {}, cols.map((t) => h("th", {}, t)))),
            h(
              "tbody",
              {},
              d.alerts.map((a) =>
                h(
                  "tr",
                  { dataset: { testid: "alert-row" } },
                  h("td", {}, fmtTime(a.time)),
                  h("td", {}, h("span", { class: `alert-level ${a.level}` }, a.level)),
                  h("td", { dataset: { testid: "alert-title" } }, a.title, more(a)),
                  h("td", { class: "alert-text" }, a.text),
                  ...(runId ? [] : [h("td", {}, runLink(a))]),
                  h("td", { class: "num" }, String(a.step)),
                  h("td", {}, delivery(a.delivery)),
                ),
              ),
            ),
          ),
          d.total > d.alerts.length ? h("p", { class: "pad muted" }, `Showing the newest ${d.alerts.length} of ${d.total} alerts.`) : "",
        );
      },
      (e) => el.replaceChildren(h("p", { class: e.status === 404 ? "pad muted" : "pad error" }, e.message)),
    );
  load();
  return { el, refresh: load };
}
