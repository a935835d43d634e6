// The keys page: a searchable, paginated list with each key's limits, last
// use and requests in the last 24 hours, and the "new key" form.

import { api } from "./api.js";
import { h, clear, fmtAgo, fmtTime, fmtNumber, fmtRate, fmtQuota } from "./dom.js";
import { open, showSecretAfterRoute } from "./dialog.js";
import { keyForm } from "./keyform.js";

const pageSize = 50;
// topLimit is how many keys the 24-hour traffic column is read for.
const topLimit = 1000;
const keyIDPattern = /^key_[0-9A-Za-z]{20}$/;

// Filters and the page survive moving to a key and back.
const state = { owner: "", status: "", search: "", cursors: [""] };

export async function keysView(root) {
  const search = h("input", { id: "search", type: "search", placeholder: "Search name, id, host, scope", value: state.search, "aria-label": "Search keys" });
  const owner = h("input", { id: "owner-filter", placeholder: "Owner", value: state.owner, "aria-label": "Owner" });
  const status = h("select", { id: "status-filter", "aria-label": "Status" },
    [["", "Any status"], ["active", "Active"], ["disabled", "Disabled"], ["revoked", "Revoked"]]
      .map(([v, l]) => h("option", { value: v, selected: state.status === v }, l)));
  const filters = h("form", { class: "toolbar", id: "key-filters" }, search, owner, status,
    h("button", { type: "submit" }, "Filter"),
    h("button", { type: "button", class: "primary", id: "new-key-button" }, "New key"));
  const list = h("div", { id: "key-list" });
  root.append(h("div", { class: "page-head" }, h("h1", {}, "Keys")), filters, list);

  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = search.value.trim();
    if (keyIDPattern.test(q)) {
      location.hash = "#/keys/" + q;
      return;
    }
    const ownerChanged = owner.value.trim() !== state.owner || status.value !== state.status;
    Object.assign(state, { owner: owner.value.trim(), status: status.value, search: q });
    if (ownerChanged) state.cursors = [""];
    renderList(list);
  });
  status.addEventListener("change", () => filters.requestSubmit());
  filters.querySelector("#new-key-button").addEventListener("click", newKey);
  await renderList(list);
}

function matches(k, q) {
  if (!q) return true;
  q = q.toLowerCase();
  return [k.id, k.name, k.owner, ...k.hosts, ...k.scopes].some((s) => s.toLowerCase().includes(q));
}

// traffic24h maps key id -> {allowed, denied} for the last 24 hours, and
// the smallest total listed when the list is full (keys not in it had at
// most that much).
async function traffic24h() {
  const to = new Date();
  const from = new Date(to - 86400e3);
  const res = await api.topKeys({ from: from.toISOString(), to: to.toISOString(), top: topLimit });
  const byKey = new Map(res.keys.map((k) => [k.key_id, k]));
  const floor = res.keys.length === topLimit ? res.keys[res.keys.length - 1].total : null;
  return { byKey, floor };
}

async function renderList(list) {
  const cursor = state.cursors[state.cursors.length - 1];
  const [page, traffic] = await Promise.all([
    api.listKeys({ owner: state.owner, status: state.status, cursor, limit: pageSize }),
    traffic24h(),
  ]);
  const keys = page.keys.filter((k) => matches(k, state.search));
  const rows = keys.map((k) => {
    const t = traffic.byKey.get(k.id);
    let used;
    if (t) used = h("span", { title: `${fmtNumber(t.allowed)} allowed, ${fmtNumber(t.denied)} refused` },
      fmtNumber(t.total), t.denied ? h("span", { class: "denied" }, ` (${fmtNumber(t.denied)} refused)`) : null);
    else used = traffic.floor === null ? "0" : `≤ ${fmtNumber(traffic.floor)}`;
    return h("tr", { dataset: { keyId: k.id } },
      h("td", {}, h("a", { href: "#/keys/" + encodeURIComponent(k.id) }, k.name || "(unnamed)"), h("div", { class: "mono small" }, k.id)),
      h("td", {}, k.owner || "—"),
      h("td", {}, statusBadge(k)),
      h("td", { class: "opt" }, k.hosts.length ? k.hosts.join(", ") : h("span", { class: "muted" }, "none")),
      h("td", { class: "opt" }, k.scopes.join(" ") || "—"),
      h("td", { class: "opt" }, k.plan_id ? h("span", { class: "plan" }, k.plan_id + ": ") : null,
        fmtRate(k.rate), h("br"), h("span", { class: "muted" }, fmtQuota(k.quota))),
      h("td", { title: fmtTime(k.last_used_at) }, fmtAgo(k.last_used_at)),
      h("td", { class: "num" }, used));
  });
  const table = h("div", { class: "table-wrap" }, h("table", { id: "keys-table" },
    h("thead", {}, h("tr", {}, ["Key", "Owner", "Status"].map((c) => h("th", {}, c)),
      ["Hosts", "Scopes", "Limits"].map((c) => h("th", { class: "opt" }, c)),
      h("th", {}, "Last used"), h("th", { class: "num" }, "Requests 24 h"))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 8, class: "muted" },
      state.search ? "No key on this page matches the search." : "No keys.")))));

  const prev = h("button", { type: "button", id: "prev-page", disabled: state.cursors.length === 1 }, "← Previous");
  const next = h("button", { type: "button", id: "next-page", disabled: !page.next_cursor }, "Next →");
  prev.addEventListener("click", () => {
    state.cursors.pop();
    renderList(list);
  });
  next.addEventListener("click", () => {
    state.cursors.push(page.next_cursor);
    renderList(list);
  });
  const note = state.search ? ` · search applies to this page of ${page.keys.length}` : "";
  clear(list).append(table, h("div", { class: "pager" }, prev,
    h("span", { class: "muted" }, `Page ${state.cursors.length}${note}`), next));
}

export function statusBadge(k) {
  const label = k.status === "active" && k.expired ? "expired" : k.status;
  return h("span", { class: "badge " + label, dataset: { status: k.status } }, label);
}

function newKey() {
  const form = keyForm();
  open({
    title: "New key",
    body: form.el,
    actions: [
      { label: "Cancel" },
      {
        label: "Create key", kind: "primary", id: "create-key",
        run: async () => {
          const body = form.read();
          for (const f of ["rate", "quota", "expires_at"]) if (body[f] === null) delete body[f];
          const k = await api.createKey(body);
          showSecretAfterRoute("Key created", k.key);
          location.hash = "#/keys/" + encodeURIComponent(k.id);
        },
      },
    ],
  });
}
