// The key settings form, used to create a key and to edit one.

import { h, splitList } from "./dom.js";

const periods = [["second", 1000], ["minute", 60000], ["hour", 3600000]];

function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", { class: "muted" }, hint) : null);
}

function localInput(v) {
  if (!v) return "";
  const d = new Date(v);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

// keyForm returns {el, read}: read() returns the request body for the
// form's values (rate and quota null when their limit is empty) or throws
// an Error naming the bad field.
export function keyForm(k = {}) {
  const name = h("input", { id: "kf-name", value: k.name ?? "", maxlength: 200 });
  const owner = h("input", { id: "kf-owner", value: k.owner ?? "", maxlength: 200 });
  const hosts = h("textarea", { id: "kf-hosts", rows: 2, spellcheck: "false" });
  hosts.value = (k.hosts ?? []).join("\n");
  const scopes = h("input", { id: "kf-scopes", value: (k.scopes ?? []).join(" "), spellcheck: "false" });
  const rateLimit = h("input", { id: "kf-rate-limit", type: "number", min: 1, value: k.rate?.limit ?? "" });
  const ratePeriod = h("select", { id: "kf-rate-period" },
    periods.map(([n, ms]) => h("option", { value: ms, selected: (k.rate?.period_ms ?? 1000) === ms }, "per " + n)));
  if (k.rate && !periods.some(([, ms]) => ms === k.rate.period_ms)) {
    ratePeriod.append(h("option", { value: k.rate.period_ms, selected: true }, `per ${k.rate.period_ms} ms`));
  }
  // Empty burst: the control plane's default, the whole limit at once.
  const rateBurst = h("input", { id: "kf-rate-burst", type: "number", min: 0, value: k.rate?.burst ?? "", placeholder: "limit−1" });
  const quotaLimit = h("input", { id: "kf-quota-limit", type: "number", min: 0, value: k.quota?.limit ?? "" });
  const quotaPeriod = h("select", { id: "kf-quota-period" },
    ["day", "month"].map((p) => h("option", { value: p, selected: (k.quota?.period ?? "day") === p }, "per " + p)));
  const expires = h("input", { id: "kf-expires", type: "datetime-local", value: localInput(k.expires_at) });

  const el = h("div", { class: "form-grid" },
    field("Name", name),
    field("Owner", owner),
    field("Hosts", hosts, "One pattern per line or comma-separated: api.example.com, *.example.com, * (empty allows no host)"),
    field("Scopes", scopes, "Space- or comma-separated, e.g. read write"),
    h("fieldset", {}, h("legend", {}, "Rate limit (empty = unlimited; burst empty = the whole limit at once, 0 = strict pacing)"),
      h("div", { class: "inline" }, rateLimit, ratePeriod, h("span", {}, "burst"), rateBurst)),
    h("fieldset", {}, h("legend", {}, "Quota (empty = none)"),
      h("div", { class: "inline" }, quotaLimit, quotaPeriod)),
    field("Expires", expires, "Empty = never"),
  );

  const int = (input, what) => {
    const n = Number(input.value);
    if (!Number.isInteger(n)) throw new Error(what + " must be a whole number");
    return n;
  };
  const read = () => {
    const body = {
      name: name.value.trim(),
      owner: owner.value.trim(),
      hosts: splitList(hosts.value),
      scopes: splitList(scopes.value),
      rate: null,
      quota: null,
      expires_at: null,
    };
    if (rateLimit.value !== "") {
      body.rate = { limit: int(rateLimit, "rate limit"), period_ms: Number(ratePeriod.value) };
      if (rateBurst.value !== "") body.rate.burst = int(rateBurst, "burst");
    }
    if (quotaLimit.value !== "") body.quota = { limit: int(quotaLimit, "quota"), period: quotaPeriod.value };
    if (expires.value) {
      const d = new Date(expires.value);
      if (Number.isNaN(d.getTime())) throw new Error("expiry is not a valid time");
      body.expires_at = d.toISOString();
    }
    return body;
  };
  return { el, read };
}

// changes returns the members of body that differ from key k (the PATCH
// body of an edit); expires_at counts as unchanged within the minute the
// form can show.
export function changes(k, body) {
  const out = {};
  const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
  for (const f of ["name", "owner", "hosts", "scopes"]) if (!same(k[f], body[f])) out[f] = body[f];
  const rate = k.rate ? { limit: k.rate.limit, period_ms: k.rate.period_ms, burst: k.rate.burst } : null;
  if (!same(rate, body.rate)) out.rate = body.rate;
  if (!same(k.quota ? { limit: k.quota.limit, period: k.quota.period } : null, body.quota)) out.quota = body.quota;
  const minute = (v) => (v ? Math.floor(new Date(v).getTime() / 60000) : null);
  if (minute(k.expires_at) !== minute(body.expires_at)) out.expires_at = body.expires_at;
  return out;
}
