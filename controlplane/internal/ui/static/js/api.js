// The control plane's REST API, called with the admin credential kept in
// session storage (never in a URL, never in local storage or a cookie).

const storageKey = "keygate.admin";

export function credential() {
  return sessionStorage.getItem(storageKey);
}

export function setCredential(v) {
  sessionStorage.setItem(storageKey, v);
}

export function forgetCredential() {
  sessionStorage.removeItem(storageKey);
}

// APIError carries the problem+json the API answered with.
export class APIError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.message || `HTTP ${status}`);
    this.status = status;
    this.code = problem?.error || "";
    this.fields = problem?.errors || [];
  }

  // detail is the message with the offending fields, for people.
  detail() {
    if (!this.fields.length) return this.message;
    return this.message + ": " + this.fields.map((f) => `${f.field} ${f.message}`).join("; ");
  }
}

// onUnauthorized is called when the API rejects the credential.
let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

// request calls the API and returns the decoded JSON body (null for 204).
// token overrides the stored credential (used by the login form).
export async function request(method, path, { query, body, token } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const headers = { Accept: "application/json", Authorization: "Bearer " + (token ?? credential() ?? "") };
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(url, init);
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = new APIError(res.status, data);
    if (res.status === 401 && token === undefined) onUnauthorized(err);
    throw err;
  }
  return data;
}

export const api = {
  listKeys: (q) => request("GET", "/v1/keys", { query: q }),
  getKey: (id) => request("GET", `/v1/keys/${encodeURIComponent(id)}`),
  createKey: (body) => request("POST", "/v1/keys", { body }),
  updateKey: (id, body) => request("PATCH", `/v1/keys/${encodeURIComponent(id)}`, { body }),
  action: (id, action, body) => request("POST", `/v1/keys/${encodeURIComponent(id)}/${action}`, { body: body ?? {} }),
  keyUsage: (id, q) => request("GET", `/v1/keys/${encodeURIComponent(id)}/usage`, { query: q }),
  topKeys: (q) => request("GET", "/v1/usage", { query: q }),
  fleetSeries: (q) => request("GET", "/v1/usage/series", { query: q }),
};
