// The console's router: every view is a URL; links are plain <a href> handled here so the
// back button and deep links work, and the server answers each URL with this same shell.

import { ApiError, api, clearKey, getKey, setKey } from "./api.js";
import { h, notice, replace } from "./dom.js";
import { batchesPage } from "./batches.js";
import { batchPage } from "./batch.js";
import { jobPage } from "./job.js";
import { newBatchPage } from "./newbatch.js";
import { go, notFound } from "./nav.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let leaving = null; // AbortController of the current view: streams and timers stop with it

const ROUTES = [
  [/^\/$/, () => batchesPage],
  [/^\/batches\/new$/, () => newBatchPage],
  [/^\/batches\/([0-9a-fA-F-]{36})$/, () => batchPage],
  [/^\/jobs\/([0-9a-fA-F-]{36})$/, () => jobPage],
];

function navBar() {
  const key = getKey();
  if (!key) return replace(nav);
  replace(
    nav,
    h("a", { href: "/" }, "Batches"),
    h("a", { href: "/batches/new", class: "button primary" }, "New batch"),
    h("span", { class: "muted", title: "the key this tab uses" }, `key …${key.slice(-4)}`),
    h("button", { type: "button", onclick: signOut }, "Sign out"),
  );
}

function signOut() {
  clearKey();
  go("/");
}

function signInPage(message) {
  const input = h("input", {
    id: "key",
    name: "key",
    type: "password",
    autocomplete: "off",
    required: true,
    spellcheck: "false",
    "aria-describedby": "key-help",
  });
  const status = h("div", { id: "signin-status", "aria-live": "polite" });
  if (message) status.append(notice(message));
  const form = h(
    "form",
    { class: "signin", onsubmit: (e) => signIn(e, input, status) },
    h("h1", {}, "Sign in"),
    h("label", { for: "key" }, "API key"),
    input,
    h(
      "p",
      { id: "key-help", class: "muted" },
      "A team key from imgfarm keys create (imgfarm up prints one). It stays in this tab " +
        "only, and is sent only to this farm's API.",
    ),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    status,
  );
  replace(main, form);
  input.focus();
}

async function signIn(event, input, status) {
  event.preventDefault();
  const key = input.value.trim();
  setKey(key);
  replace(status, h("p", { class: "muted" }, "Checking the key…"));
  try {
    await api("/v1/batches", { query: { limit: 1 }, probe: true });
  } catch (error) {
    clearKey();
    const text =
      error instanceof ApiError && error.status === 401
        ? `That key was not accepted (${error.message}). Check it, or make a new one with imgfarm keys create.`
        : `Could not reach the farm: ${error.message}`;
    replace(status, notice(text));
    input.select();
    return;
  }
  render();
}

async function render() {
  leaving?.abort();
  leaving = new AbortController();
  navBar();
  if (!getKey()) return signInPage();
  const path = location.pathname.replace(/\/+$/, "") || "/";
  for (const [pattern, view] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    replace(main, h("p", { class: "muted" }, "Loading…"));
    try {
      await view()(main, { id: match[1], params: new URLSearchParams(location.search), signal: leaving.signal });
    } catch (error) {
      if (error.name === "AbortError") return;
      if (error instanceof ApiError && error.status === 404) replace(main, ...notFound("such page"));
      else if (!(error instanceof ApiError && error.status === 401)) replace(main, notice(error.message));
    }
    return;
  }
  replace(main, ...notFound("such page"));
}

// A revoked key mid-session: back to sign in, saying why.
window.addEventListener("imgfarm:unauthorized", () => {
  clearKey();
  leaving?.abort();
  navBar();
  signInPage("The farm no longer accepts this key: sign in again.");
});

document.addEventListener("click", (event) => {
  const link = event.target.closest?.("a[href]");
  if (!link || link.target || link.hasAttribute("download") || event.defaultPrevented) return;
  if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  const url = new URL(link.href);
  if (url.origin !== location.origin || url.pathname.startsWith("/v1/")) return;
  event.preventDefault();
  go(url.pathname + url.search);
});
window.addEventListener("popstate", render);
window.addEventListener("imgfarm:navigate", render);
render();
