// The team's batches, newest first: progress, review counts, ETA; a page at a time.

import { api } from "./api.js";
import { ago, duration, h, num, replace } from "./dom.js";

const PAGE = 20;
const REVIEW_STATES = ["passed", "needs_review", "approved", "rejected"];

/** A batch's name for people: its metadata.name when given, else its id's start. */
export function batchName(batch) {
  const name = batch.metadata?.name;
  return typeof name === "string" && name ? name : `Batch ${batch.id.slice(0, 8)}`;
}

/** "passed 4 · needs review 3 · failed 1" from what the API counts. */
export function countsLine(batch, reviewCounts) {
  const parts = [];
  const review = reviewCounts ?? batch.review_counts ?? {};
  for (const state of REVIEW_STATES) {
    if (review[state]) parts.push(`${state.replace("_", " ")} ${num(review[state])}`);
  }
  // Until the farm scores outputs (review counts), say how many rendered.
  const rendered = parts.length ? [] : ["succeeded"];
  for (const state of [...rendered, "queued", "running", "failed", "canceled"]) {
    if (batch.counts?.[state]) parts.push(`${state} ${num(batch.counts[state])}`);
  }
  return parts.join(" · ");
}

/** A labelled progress bar (finished share of the batch). */
export function progressBar(batch) {
  const done = batch.status === "succeeded" || batch.progress >= 1;
  const pct = Math.round((batch.progress ?? 0) * 100);
  return h("span", { class: "progress" },
    h("progress", { max: 100, value: pct, "aria-label": `${batchName(batch)} progress` }),
    h("span", { class: "pct" }, done ? "done" : `${pct}%`),
  );
}

export async function batchesPage(main, { params, signal }) {
  const cursor = params.get("cursor");
  const page = await api("/v1/batches", { query: { limit: PAGE, cursor }, signal });
  const rows = page.batches.map((batch) =>
    h("li", { class: "batch" },
      h("div", { class: "line" },
        h("a", { href: `/batches/${batch.id}`, class: "name" }, batchName(batch)),
        h("span", { class: "muted" }, batch.model),
        h("span", {}, `${num(batch.job_count)} jobs`),
        progressBar(batch),
        h("span", { class: "muted" },
          batch.eta_seconds != null && batch.progress < 1
            ? `ETA ${duration(batch.eta_seconds)}`
            : ago(batch.finished_at ?? batch.created_at)),
      ),
      h("div", { class: "counts muted" }, countsLine(batch)),
    ),
  );
  replace(main,
    h("div", { class: "titlebar" },
      h("h1", {}, "Batches"),
      h("a", { href: "/batches/new", class: "button primary" }, "New batch")),
    rows.length
      ? h("ul", { class: "batches", "aria-label": "Batches, newest first" }, rows)
      : h("p", { class: "muted" }, "No batches yet: start one with New batch."),
    h("nav", { class: "pager", "aria-label": "Pages" },
      cursor ? h("a", { href: "/" }, "← newest") : null,
      page.next_cursor
        ? h("a", { href: `/?${new URLSearchParams({ cursor: page.next_cursor })}` }, "older →")
        : null),
  );
}
