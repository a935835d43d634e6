// The time-range picker shared by the graphs: last hour (per minute), last
// day (per hour), last 30 days (per day) or a custom range.

import { h } from "./dom.js";

const presets = {
  hour: { label: "Last hour", span: 3600e3, step: "minute" },
  day: { label: "Last day", span: 86400e3, step: "hour" },
  month: { label: "Last 30 days", span: 30 * 86400e3, step: "day" },
};

// The choice survives moving between pages (not reloads).
const state = { preset: "day", from: "", to: "" };

// stepFor picks a bucket size that keeps a custom range readable and under
// the API's cap on buckets.
function stepFor(ms) {
  if (ms <= 6 * 3600e3) return "minute";
  if (ms <= 14 * 86400e3) return "hour";
  return "day";
}

function localInput(d) {
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

// current returns {from, to, step} (RFC 3339) for the chosen range, or
// throws an Error a person can read.
export function current() {
  const p = presets[state.preset];
  if (p) {
    const to = new Date();
    return { from: new Date(to - p.span).toISOString(), to: to.toISOString(), step: p.step };
  }
  const from = new Date(state.from);
  const to = new Date(state.to);
  if (Number.isNaN(from.getTime()) || Number.isNaN(to.getTime())) throw new Error("choose a start and an end for the custom range");
  if (from >= to) throw new Error("the custom range must start before it ends");
  return { from: from.toISOString(), to: to.toISOString(), step: stepFor(to - from) };
}

// picker returns the range control; onChange runs after every change.
export function picker(onChange) {
  const select = h("select", { id: "range", "aria-label": "Time range" },
    Object.entries(presets).map(([k, p]) => h("option", { value: k, selected: state.preset === k }, p.label)),
    h("option", { value: "custom", selected: state.preset === "custom" }, "Custom…"));
  const from = h("input", { type: "datetime-local", id: "range-from", "aria-label": "From", value: state.from });
  const to = h("input", { type: "datetime-local", id: "range-to", "aria-label": "To", value: state.to });
  const apply = h("button", { type: "submit" }, "Apply");
  const custom = h("span", { class: "custom-range", hidden: state.preset !== "custom" }, from, " – ", to, apply);
  const form = h("form", { class: "range" }, select, custom);
  select.addEventListener("change", () => {
    state.preset = select.value;
    custom.hidden = state.preset !== "custom";
    if (state.preset === "custom") {
      if (!from.value) from.value = localInput(new Date(Date.now() - 86400e3));
      if (!to.value) to.value = localInput(new Date());
      return;
    }
    onChange();
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    state.from = from.value;
    state.to = to.value;
    onChange();
  });
  return form;
}
