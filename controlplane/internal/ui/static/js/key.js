// The key page: settings, actions (revoke, disable/enable, rotate with a
// grace period, edit) and the key's traffic: requests over time stacked by
// outcome, totals and the per-host breakdown.

import { api } from "./api.js";
import { h, clear, fmtAgo, fmtTime, fmtNumber, fmtRate, fmtQuota, banner } from "./dom.js";
import { open, showSecretAfterRoute } from "./dialog.js";
import { keyForm, changes } from "./keyform.js";
import { statusBadge } from "./keys.js";
import { seriesChart, splitChart, available, outcomes } from "./charts.js";
import * as range from "./range.js";

export async function keyView(root, id) {
  const k = await api.getKey(id);
  const head = h("div", { class: "page-head" },
    h("div", {}, h("a", { href: "#/keys", class: "muted" }, "← Keys"),
      h("h1", {}, k.name || "(unnamed)", " ", statusBadge(k)),
      h("div", { class: "mono small", id: "key-id" }, k.id)),
    actionBar(k));
  const details = h("dl", { class: "details", id: "key-details" },
    item("Owner", k.owner || "—"),
    item("Hosts", k.hosts.length ? k.hosts.join(", ") : "none (no host allowed)"),
    item("Scopes", k.scopes.join(" ") || "—"),
    // rate, quota and scopes are the effective limits; the plan supplies
    // those the key does not override.
    item("Plan", k.plan_id ? k.plan_id + (k.overrides?.length ? ` (overrides: ${k.overrides.join(", ")})` : "") : "none"),
    item("Rate limit", fmtRate(k.rate)),
    item("Quota", fmtQuota(k.quota) + (k.quota_exhausted_until ? ` (exhausted until ${fmtTime(k.quota_exhausted_until)})` : "")),
    item("Expires", k.expires_at ? fmtTime(k.expires_at) + (k.expired && !k.grace_ends_at ? " (expired)" : "") : "never"),
    // After a rotation the key stops at the earlier of its expiry and the
    // grace end (docs/lifecycle.md).
    k.grace_ends_at ? item("Grace ends", fmtTime(k.grace_ends_at) + (k.expired ? " (expired)" : "")) : [],
    k.predecessor_id ? item("Rotated from", h("a", { href: "#/keys/" + k.predecessor_id, class: "mono" }, k.predecessor_id)) : [],
    k.successor_id ? item("Rotated to", h("a", { href: "#/keys/" + k.successor_id, class: "mono" }, k.successor_id)) : [],
    item("Created", fmtTime(k.created_at)),
    item("Updated", fmtTime(k.updated_at)),
    item("Last used", k.last_used_at ? `${fmtAgo(k.last_used_at)} (${fmtTime(k.last_used_at)})` : "never"),
    item("Last 24 h", usageLine(k.usage?.last_24h)),
    item("Last 30 days", usageLine(k.usage?.last_30d)));
  const usage = h("section", { class: "card", id: "usage" });
  root.append(head, h("section", { class: "card" }, details), usage);
  await renderUsage(usage, k.id);
}

function item(label, value) {
  return [h("dt", {}, label), h("dd", {}, value)];
}

function usageLine(u) {
  if (!u) return "—";
  return `${fmtNumber(u.allowed + u.denied)} requests (${fmtNumber(u.allowed)} allowed, ${fmtNumber(u.denied)} refused)`;
}

const reload = () => window.dispatchEvent(new HashChangeEvent("hashchange"));

function actionBar(k) {
  const bar = h("div", { class: "actions" });
  const add = (label, id, kind, fn) => {
    const b = h("button", { type: "button", id, class: kind }, label);
    b.addEventListener("click", fn);
    bar.append(b);
  };
  if (k.status === "revoked") {
    bar.append(h("span", { class: "muted" }, "Revoked keys cannot be changed."));
    return bar;
  }
  add("Edit", "edit-key", "", () => edit(k));
  if (!k.expired) add("Rotate", "rotate-key", "", () => rotate(k));
  if (k.status === "active") add("Disable", "disable-key", "", () => setStatus(k, "disable"));
  else add("Enable", "enable-key", "", () => setStatus(k, "enable"));
  add("Revoke", "revoke-key", "danger", () => setStatus(k, "revoke"));
  return bar;
}

const statusText = {
  revoke: ["Revoke key", "Requests with this key will be refused with key_revoked as soon as the filters sync. A revoked key cannot be enabled again.", "danger"],
  disable: ["Disable key", "Requests with this key will be refused with key_disabled until it is enabled again.", "primary"],
  enable: ["Enable key", "Requests with this key will be accepted again.", "primary"],
};

function setStatus(k, action) {
  const [title, text, kind] = statusText[action];
  open({
    title,
    body: h("p", {}, text, " ", h("strong", {}, k.name || k.id)),
    actions: [
      { label: "Cancel" },
      { label: title, kind, id: "confirm-" + action, run: async () => {
        await api.action(k.id, action);
        reload();
      } },
    ],
  });
}

function rotate(k) {
  const grace = h("input", { id: "grace-seconds", type: "number", min: 0, max: 2592000, value: 86400 });
  open({
    title: "Rotate key",
    body: [
      h("p", {}, "Issues a new key with the same settings. The current key keeps working until the grace period ends."),
      h("label", { class: "field" }, h("span", {}, "Grace period (seconds)"), grace),
    ],
    actions: [
      { label: "Cancel" },
      { label: "Rotate", kind: "primary", id: "confirm-rotate", run: async () => {
        const n = Number(grace.value);
        if (!Number.isInteger(n) || n < 0) throw new Error("the grace period must be a whole number of seconds");
        const nk = await api.action(k.id, "rotate", { grace_seconds: n });
        showSecretAfterRoute("Key rotated", nk.key,
          `The old key ${k.id} stops working at ${fmtTime(nk.rotated_from?.expires_at)}.`);
        location.hash = "#/keys/" + encodeURIComponent(nk.id);
      } },
    ],
  });
}

function edit(k) {
  const form = keyForm(k);
  open({
    title: "Edit key",
    body: form.el,
    actions: [
      { label: "Cancel" },
      { label: "Save", kind: "primary", id: "save-key", run: async () => {
        const diff = changes(k, form.read());
        if (Object.keys(diff).length) await api.updateKey(k.id, diff);
        reload();
      } },
    ],
  });
}

async function renderUsage(section, id) {
  const totals = h("dl", { class: "totals", id: "usage-totals" });
  const canvas = h("canvas", { id: "key-series", role: "img", "aria-label": "Requests over time by outcome" });
  const hostCanvas = h("canvas", { id: "key-hosts", role: "img", "aria-label": "Requests by host" });
  const hostTable = h("div", { class: "table-wrap" });
  const hostBox = h("div", { class: "chart short" }, hostCanvas);
  const refresh = async () => {
    banner("");
    let r;
    try {
      r = range.current();
    } catch (e) {
      banner(e.message);
      return;
    }
    const u = await api.keyUsage(id, r);
    renderTotals(totals, u.totals);
    if (available()) {
      seriesChart(canvas, u);
      hostBox.hidden = !u.by_host.length;
      hostBox.style.height = Math.max(120, 40 + 28 * u.by_host.length) + "px";
      if (u.by_host.length) splitChart(hostCanvas, u.by_host.map((x) => ({ label: x.host || "(unknown host)", ...x })));
    }
    clear(hostTable).append(h("table", { id: "hosts-table" },
      h("thead", {}, h("tr", {}, h("th", {}, "Host"), h("th", { class: "num" }, "Allowed"), h("th", { class: "num" }, "Refused"))),
      h("tbody", {}, u.by_host.length
        ? u.by_host.map((x) => h("tr", {}, h("td", {}, x.host || "(unknown host)"), h("td", { class: "num" }, fmtNumber(x.allowed)), h("td", { class: "num" }, fmtNumber(x.denied))))
        : h("tr", {}, h("td", { colspan: 3, class: "muted" }, "No requests in this range.")))));
  };
  const picker = range.picker(() => refresh().catch((e) => banner(e.detail?.() ?? e.message)));
  section.append(
    h("div", { class: "section-head" }, h("h2", {}, "Traffic"), picker),
    totals,
    h("div", { class: "chart" }, canvas),
    h("h3", {}, "By host"), hostBox, hostTable);
  await refresh();
}

// renderTotals shows the range's totals: all, allowed, refused, and each
// refusal reason that occurred.
export function renderTotals(dl, t) {
  const all = t.allowed + t.denied;
  const reasons = Object.entries(t.outcomes ?? {})
    .filter(([o, n]) => o !== "allowed" && n > 0)
    .sort((a, b) => b[1] - a[1] || outcomes.indexOf(a[0]) - outcomes.indexOf(b[0]));
  clear(dl).append(
    h("div", {}, h("dt", {}, "Requests"), h("dd", { id: "total-requests" }, fmtNumber(all))),
    h("div", {}, h("dt", {}, "Allowed"), h("dd", { id: "total-allowed", class: "allowed" }, fmtNumber(t.allowed))),
    h("div", {}, h("dt", {}, "Refused"), h("dd", { id: "total-denied", class: "denied" }, fmtNumber(t.denied))),
    ...reasons.map(([o, n]) => h("div", { class: "reason" }, h("dt", {}, o), h("dd", { dataset: { outcome: o } }, fmtNumber(n)))));
}
