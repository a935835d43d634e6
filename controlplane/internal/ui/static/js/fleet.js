// The traffic page: the whole fleet's requests over time stacked by outcome,
// and the top keys by traffic and by refusals.

import { api, APIError } from "./api.js";
import { h, clear, fmtNumber, banner } from "./dom.js";
import { seriesChart, splitChart, available } from "./charts.js";
import { renderTotals } from "./key.js";
import * as range from "./range.js";

const shown = 10;

export async function fleetView(root) {
  const seriesBox = h("div", { id: "fleet-series-box" });
  const traffic = h("div", { id: "top-traffic" });
  const refusals = h("div", { id: "top-refusals" });
  const refresh = async () => {
    banner("");
    let r;
    try {
      r = range.current();
    } catch (e) {
      banner(e.message);
      return;
    }
    await Promise.all([renderSeries(seriesBox, r), renderTop(traffic, refusals, r)]);
  };
  root.append(
    h("div", { class: "page-head" }, h("h1", {}, "Traffic"),
      range.picker(() => refresh().catch((e) => banner(e.detail?.() ?? e.message)))),
    h("section", { class: "card" }, h("h2", {}, "All keys"), seriesBox),
    h("div", { class: "two-col" },
      h("section", { class: "card" }, h("h2", {}, "Top keys by traffic"), traffic),
      h("section", { class: "card" }, h("h2", {}, "Top keys by refusals"), refusals)));
  await refresh();
}

// renderSeries draws the fleet's series (GET /v1/usage/series). A control
// plane that does not serve it yet answers 404; the page says so instead
// of guessing the series from a subset of keys.
async function renderSeries(box, r) {
  let u;
  try {
    u = await api.fleetSeries(r);
  } catch (e) {
    if (e instanceof APIError && (e.status === 404 || e.status === 405)) {
      clear(box).append(h("p", { class: "muted", id: "fleet-series-missing" },
        "This control plane does not serve the fleet-wide series (GET /v1/usage/series); per-key series are on each key's page."));
      return;
    }
    throw e;
  }
  const totals = h("dl", { class: "totals", id: "fleet-totals" });
  const canvas = h("canvas", { id: "fleet-series", role: "img", "aria-label": "Fleet requests over time by outcome" });
  clear(box).append(totals, h("div", { class: "chart" }, canvas));
  renderTotals(totals, u.totals);
  if (available()) seriesChart(canvas, u);
}

// names returns key id -> name for the ids shown (a deleted key has none).
async function names(ids) {
  const out = new Map();
  await Promise.all(ids.map(async (id) => {
    try {
      const k = await api.getKey(id);
      out.set(id, k.name || k.id);
    } catch (e) {
      if (!(e instanceof APIError && e.status === 404)) throw e;
      out.set(id, id + " (deleted)");
    }
  }));
  return out;
}

async function renderTop(trafficBox, refusalBox, r) {
  const [traffic, refused] = await Promise.all([
    api.topKeys({ from: r.from, to: r.to, top: shown }),
    api.topKeys({ from: r.from, to: r.to, top: shown, order: "denied" })]);
  const byTraffic = traffic.keys;
  const byRefusals = refused.keys;
  const label = await names([...new Set([...byTraffic, ...byRefusals].map((k) => k.key_id))]);
  renderRanking(trafficBox, "top-traffic-chart", byTraffic, label, "", "No traffic in this range.");
  renderRanking(refusalBox, "top-refusals-chart", byRefusals, label, "", "No refusals of identified keys in this range.");
}

function renderRanking(box, chartID, rows, label, note, empty) {
  clear(box);
  if (!rows.length) {
    box.append(h("p", { class: "muted" }, empty));
    return;
  }
  const canvas = h("canvas", { id: chartID, role: "img" });
  const chartBox = h("div", { class: "chart short" }, canvas);
  chartBox.style.height = 40 + 28 * rows.length + "px";
  box.append(chartBox, h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "Key"), h("th", { class: "num" }, "Allowed"), h("th", { class: "num" }, "Refused"))),
    h("tbody", {}, rows.map((k) => h("tr", {},
      h("td", {}, h("a", { href: "#/keys/" + encodeURIComponent(k.key_id) }, label.get(k.key_id)), h("div", { class: "mono small" }, k.key_id)),
      h("td", { class: "num" }, fmtNumber(k.allowed)), h("td", { class: "num" }, fmtNumber(k.denied))))))),
  h("p", { class: "muted small", hidden: !note }, note));
  if (available()) splitChart(canvas, rows.map((k) => ({ label: label.get(k.key_id), allowed: k.allowed, denied: k.denied })));
}
