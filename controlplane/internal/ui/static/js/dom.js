// Small DOM helpers. Text always goes in through textContent, never
// innerHTML, so nothing from the API can inject markup.

// h creates an element: h("a", {href: "#/x", class: "y"}, "text", child...).
// Attributes named on* are rejected; listeners are added by the caller.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) throw new Error("h: use addEventListener for " + name);
    if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

// banner shows (or, with no message, hides) a page-wide error.
export function banner(message) {
  const el = document.getElementById("banner");
  el.textContent = message || "";
  el.hidden = !message;
}

// clear removes every child of el and returns it.
export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

const numberFormat = new Intl.NumberFormat("en-US");

// fmtNumber formats an integer with thousands separators.
export function fmtNumber(n) {
  return numberFormat.format(n ?? 0);
}

// fmtTime formats an RFC 3339 time (or null) for people, in local time.
export function fmtTime(v) {
  if (!v) return "—";
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) return "—";
  return d.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" });
}

// fmtAgo formats an RFC 3339 time relative to now ("5 min ago").
export function fmtAgo(v) {
  if (!v) return "never";
  const s = Math.round((Date.now() - new Date(v).getTime()) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

const periodNames = { 1000: "s", 60000: "min", 3600000: "h" };

// fmtRate formats a rate limit: "100/s +20 burst".
export function fmtRate(r) {
  if (!r) return "unlimited";
  const p = periodNames[r.period_ms] ?? r.period_ms + " ms";
  return `${fmtNumber(r.limit)}/${p}` + (r.burst ? ` +${fmtNumber(r.burst)} burst` : "");
}

// fmtQuota formats a quota: "100,000/day".
export function fmtQuota(q) {
  if (!q) return "no quota";
  return `${fmtNumber(q.limit)}/${q.period}`;
}

// splitList turns "a, b\nc" into ["a", "b", "c"].
export function splitList(s) {
  return s.split(/[\s,]+/).map((x) => x.trim()).filter(Boolean);
}
