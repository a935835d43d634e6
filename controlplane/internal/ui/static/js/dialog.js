// A modal dialog built on <dialog>, for forms, confirmations and the
// one-time display of a new key.

import { h, clear } from "./dom.js";
import { APIError } from "./api.js";

const dialog = () => document.getElementById("dialog");

// Escape closes through close(), so that a shown key leaves the page too.
dialog().addEventListener("cancel", (e) => {
  e.preventDefault();
  close();
});

// open shows a dialog. Each action is {label, kind ("primary", "danger" or
// ""), id, run}: run may be async; it closes the dialog unless it returns
// false; an error it throws is shown in the dialog, which stays open. The
// first primary or danger action also runs on Enter.
export function open({ title, body, actions }) {
  const d = dialog();
  if (d.open) d.close();
  document.getElementById("dialog-title").textContent = title;
  clear(document.getElementById("dialog-body")).append(...[body].flat().filter(Boolean));
  const errEl = document.getElementById("dialog-error");
  errEl.hidden = true;
  const bar = clear(document.getElementById("dialog-actions"));
  let busy = false;
  const runners = actions.map((a) => {
    const b = h("button", { type: "button", class: a.kind || "", id: a.id }, a.label);
    const run = async () => {
      if (busy) return;
      busy = true;
      errEl.hidden = true;
      bar.querySelectorAll("button").forEach((x) => (x.disabled = true));
      try {
        const keep = a.run ? await a.run() : undefined;
        if (keep !== false) close();
      } catch (e) {
        errEl.textContent = e instanceof APIError ? e.detail() : e.message;
        errEl.hidden = false;
      } finally {
        busy = false;
        bar.querySelectorAll("button").forEach((x) => (x.disabled = false));
      }
    };
    b.addEventListener("click", run);
    bar.append(b);
    return { a, run };
  });
  const form = document.getElementById("dialog-form");
  form.onsubmit = (e) => {
    e.preventDefault();
    runners.find((r) => r.a.kind === "primary" || r.a.kind === "danger")?.run();
  };
  d.showModal();
  d.querySelector("input, select, textarea")?.focus();
}

// close closes the dialog and drops its contents (a shown key included).
export function close() {
  const d = dialog();
  if (d.open) d.close();
  clear(document.getElementById("dialog-body"));
}

// showSecret shows a freshly issued key once, with a copy button.
export function showSecret(title, key, note) {
  const input = h("input", { id: "new-key", class: "mono", readonly: true, value: key, "aria-label": "New key", spellcheck: "false" });
  const copy = h("button", { type: "button", id: "copy-key" }, "Copy");
  const status = h("span", { class: "muted", role: "status" });
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(input.value);
      status.textContent = "Copied.";
    } catch {
      input.select();
      status.textContent = "Select and copy it (Ctrl+C).";
    }
  });
  open({
    title,
    body: [
      h("p", { class: "warn" }, "This is the only time the key is shown. Store it now: the control plane keeps only its hash."),
      h("div", { class: "copy-row" }, input, copy),
      status,
      note ? h("p", { class: "muted" }, note) : null,
    ],
    actions: [{ label: "I have stored the key", kind: "primary", id: "secret-done" }],
  });
}

// pending is a new key to show once the next page has rendered.
let pending = null;

// showSecretAfterRoute shows a new key once the page being navigated to
// has rendered (navigation closes open dialogs).
export function showSecretAfterRoute(title, key, note) {
  pending = { title, key, note };
}

// flushSecret shows the pending key, if any.
export function flushSecret() {
  if (!pending) return;
  const p = pending;
  pending = null;
  showSecret(p.title, p.key, p.note);
}
