// The dashboard's entry point: sign-in, routing between pages and the
// error banner. Routes live in the URL fragment (#/keys, #/keys/<id>,
// #/fleet); the credential never does.

import { request, credential, setCredential, forgetCredential, setUnauthorizedHandler, APIError } from "./api.js";
import { available } from "./charts.js";
import { banner, clear } from "./dom.js";
import { close as closeDialog, flushSecret } from "./dialog.js";
import { keysView } from "./keys.js";
import { keyView } from "./key.js";
import { fleetView } from "./fleet.js";

const $ = (id) => document.getElementById(id);

function showLogin(message) {
  closeDialog();
  $("nav").hidden = true;
  clear($("view"));
  $("login-view").hidden = false;
  const err = $("login-error");
  err.textContent = message || "";
  err.hidden = !message;
  $("login-credential").focus();
}

function signOut(message) {
  forgetCredential();
  showLogin(message);
}

async function login(e) {
  e.preventDefault();
  const input = $("login-credential");
  const token = input.value.trim();
  if (!token) return;
  try {
    await request("GET", "/v1/keys", { query: { limit: 1 }, token });
  } catch (err) {
    const msg = err instanceof APIError && (err.status === 401 || err.status === 403)
      ? "That is not the admin credential."
      : "Cannot reach the control plane: " + err.message;
    showLogin(msg);
    return;
  }
  input.value = "";
  setCredential(token);
  $("login-view").hidden = true;
  if (!location.hash || location.hash === "#/") location.hash = "#/keys";
  else route();
}

// route renders the page the fragment names.
async function route() {
  if (!credential()) {
    showLogin();
    return;
  }
  closeDialog();
  banner(available() ? "" : "The chart library failed to load (/ui/vendor/chart.umd.js): the control plane was built without it. Run controlplane/internal/ui/setup.sh and rebuild.");
  $("login-view").hidden = true;
  $("nav").hidden = false;
  const view = clear($("view"));
  const parts = location.hash.replace(/^#\/?/, "").split("/").map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return "";
    }
  });
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === (parts[0] || "keys"));
  }
  try {
    if (parts[0] === "keys" && parts[1]) await keyView(view, parts[1]);
    else if (parts[0] === "fleet") await fleetView(view);
    else await keysView(view);
  } catch (err) {
    flushSecret();
    if (err instanceof APIError && err.status === 401) return;
    banner(err instanceof APIError ? err.detail() : String(err.message || err));
    return;
  }
  flushSecret();
}

setUnauthorizedHandler(() => signOut("The credential was rejected; sign in again."));
$("login-form").addEventListener("submit", login);
$("logout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
route();
