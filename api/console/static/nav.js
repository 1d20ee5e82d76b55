// Moving between views without a page load (app.js renders on the event).

import { h, notice } from "./dom.js";

/** Go to ``path`` inside the console (pushes history). */
export function go(path) {
  history.pushState(null, "", path);
  window.dispatchEvent(new Event("imgfarm:navigate"));
}

/** A view's not-found answer (also another team's id: the API says 404 for both). */
export function notFound(what) {
  return [
    h("h1", {}, "Not found"),
    notice(`No ${what} here for this key's team.`),
    h("p", {}, h("a", { href: "/" }, "All batches")),
  ];
}
