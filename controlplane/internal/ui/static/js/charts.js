// Charts, drawn by Chart.js (served by the control plane from
// /ui/vendor/chart.umd.js, fetched by setup.sh). This module only maps API
// responses to Chart.js configurations.

import { fmtNumber } from "./dom.js";

// outcomes in display order: allowed first, then each refusal code of
// docs/wire.md.
export const outcomes = [
  "allowed", "missing_key", "malformed_key", "unknown_key", "ambiguous_key",
  "key_revoked", "key_expired", "key_disabled", "host_not_allowed",
  "insufficient_scope", "rate_limited", "quota_exceeded", "cache_unavailable",
  "invalid_path", "policy_unenforceable", "client_rate_limited", "too_many_bad_keys",
];

const colors = {
  allowed: "#2f9e62", missing_key: "#8c6bb1", malformed_key: "#b07cc6", unknown_key: "#6a51a3",
  ambiguous_key: "#c994c7", key_revoked: "#d7301f", key_expired: "#fc8d59", key_disabled: "#7f7f7f",
  host_not_allowed: "#2b8cbe", insufficient_scope: "#74a9cf", rate_limited: "#e6ab02",
  quota_exceeded: "#a6761d", cache_unavailable: "#525252", invalid_path: "#9e9ac8",
  policy_unenforceable: "#67000d", client_rate_limited: "#66a61e", too_many_bad_keys: "#e7298a",
};
const fallbackColor = "#999999";
export const deniedColor = "#d7301f";

// available says whether the chart library loaded.
export function available() {
  return typeof window.Chart === "function";
}

function draw(canvas, config) {
  window.Chart.getChart(canvas)?.destroy();
  config.options = {
    responsive: true,
    maintainAspectRatio: false,
    animation: false,
    interaction: { mode: "index", intersect: false },
    ...config.options,
    plugins: {
      legend: { position: "bottom", labels: { boxWidth: 12 } },
      tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${fmtNumber(c.parsed[config.options?.indexAxis === "y" ? "x" : "y"])}` } },
      ...(config.options?.plugins ?? {}),
    },
  };
  return new window.Chart(canvas, config);
}

// bucketLabel formats a bucket start for the x axis.
function bucketLabel(start, step, multiDay) {
  const d = new Date(start);
  if (step === "day") return d.toISOString().slice(0, 10);
  const time = d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
  if (!multiDay) return time;
  return d.toLocaleDateString("en-GB", { day: "2-digit", month: "short" }) + " " + time;
}

// seriesChart draws a usage series ({step, buckets:[{start, outcomes}]}) as
// bars stacked by outcome: allowed and each refusal reason.
export function seriesChart(canvas, usage) {
  const buckets = usage.buckets ?? [];
  const seen = new Set();
  for (const b of buckets) for (const [o, n] of Object.entries(b.outcomes ?? {})) if (n > 0) seen.add(o);
  const order = [...outcomes.filter((o) => seen.has(o)), ...[...seen].filter((o) => !outcomes.includes(o)).sort()];
  if (!order.length) order.push("allowed");
  const span = buckets.length ? new Date(buckets[buckets.length - 1].start) - new Date(buckets[0].start) : 0;
  const multiDay = span >= 86400000;
  return draw(canvas, {
    type: "bar",
    data: {
      labels: buckets.map((b) => bucketLabel(b.start, usage.step, multiDay)),
      datasets: order.map((o) => ({
        label: o,
        data: buckets.map((b) => b.outcomes?.[o] ?? 0),
        backgroundColor: colors[o] ?? fallbackColor,
        stack: "requests",
        categoryPercentage: 0.9,
        barPercentage: 1,
      })),
    },
    options: {
      scales: {
        x: { stacked: true, ticks: { maxRotation: 0, autoSkip: true, autoSkipPadding: 12 } },
        y: { stacked: true, beginAtZero: true, ticks: { precision: 0 }, title: { display: true, text: `requests per ${usage.step}` } },
      },
    },
  });
}

// splitChart draws rows ({label, allowed, denied}) as horizontal bars split
// into allowed and refused.
export function splitChart(canvas, rows) {
  return draw(canvas, {
    type: "bar",
    data: {
      labels: rows.map((r) => r.label),
      datasets: [
        { label: "allowed", data: rows.map((r) => r.allowed), backgroundColor: colors.allowed, stack: "s" },
        { label: "refused", data: rows.map((r) => r.denied), backgroundColor: deniedColor, stack: "s" },
      ],
    },
    options: {
      indexAxis: "y",
      scales: {
        x: { stacked: true, beginAtZero: true, ticks: { precision: 0 } },
        y: { stacked: true, ticks: { autoSkip: false } },
      },
    },
  });
}
