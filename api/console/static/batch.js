// One batch as a grid: a row per SKU (its source first), a column per prompt x variant (in a
// zipped or paired batch, a column per job of the row).
// Reviewed from the keyboard as Lightroom's Library grid is: arrows or j/k move, a
// approves, r rejects, enter opens. Live: the batch's event stream, else a short poll.

import { ApiError, allPages, api, blob, follow, withQuery } from "./api.js";
import { h, notice, num, replace } from "./dom.js";
import { batchName, progressBar } from "./batches.js";
import { notFound } from "./nav.js";
import { lazyThumb, thumbPath } from "./thumbs.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "canceled"];
const REVIEWS = ["passed", "needs_review", "approved", "rejected"];
const MARKS = {
  passed: ["✓", "passed"], approved: ["✓", "approved"], needs_review: ["⚑", "needs review"],
  rejected: ["✗", "rejected"], failed: ["!", "failed"], canceled: ["–", "canceled"],
  queued: ["…", "queued"], running: ["…", "running"],
};
const POLL_MS = 1500;

/** Keep a job's place in its batch for its page (this tab only). */
export function rememberPlace(job) {
  const { batch_id, sku, prompt_name, variant } = job;
  sessionStorage.setItem(`imgfarm.place.${job.id}`, JSON.stringify({ batch_id, sku, prompt_name, variant }));
}

/** The place kept by rememberPlace, or {} (a link opened in a new tab). */
export function placeOf(jobId) {
  try {
    return JSON.parse(sessionStorage.getItem(`imgfarm.place.${jobId}`) ?? "{}");
  } catch {
    return {};
  }
}

/** The mark of a job: its review state once rendered, else its status. */
const stateOf = (job) => (job.status === "succeeded" && job.review ? job.review : job.status);
export const jobLabel = (job) => `${job.sku} · ${job.prompt_name} #${job.variant}`;

/** "structure 0.82 · SSIM 0.71 · colour ΔE 2.1 · kept pixels changed 0" */
export function scoresLine(fidelity) {
  if (!fidelity) return "";
  const parts = [];
  const fmt = (v, d = 2) => (typeof v === "number" ? v.toFixed(d) : String(v));
  if (fidelity.structure != null) parts.push(`structure ${fmt(fidelity.structure)}`);
  if (fidelity.ssim != null) parts.push(`SSIM ${fmt(fidelity.ssim)}`);
  if (fidelity.colour_drift != null) parts.push(`colour ΔE ${fmt(fidelity.colour_drift, 1)}`);
  if (fidelity.kept_pixels_changed != null) {
    parts.push(`kept pixels changed ${fidelity.kept_pixels_changed}`);
  }
  return parts.join(" · ");
}

function tooltip(job) {
  const review = job.review ? ` · review: ${job.review.replace("_", " ")}` : "";
  return [jobLabel(job), job.prompt, `status: ${job.status}${review}`, scoresLine(job.fidelity), job.error]
    .filter(Boolean)
    .join("\n");
}

export async function batchPage(main, { id, params, signal }) {
  let batch;
  try {
    batch = await api(`/v1/batches/${id}`, { signal });
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 422)) {
      replace(main, ...notFound("batch"));
      return;
    }
    throw error;
  }
  const view = new BatchView(main, batch, params, signal);
  await view.refresh();
  view.live();
}

class BatchView {
  constructor(main, batch, params, signal) {
    this.main = main;
    this.batch = batch;
    this.signal = signal;
    this.jobs = new Map();
    this.cells = new Map(); // job id -> <a> of its cell
    this.filters = {
      status: params.get("status") ?? "",
      review: params.get("review") ?? "",
      prompt: params.get("prompt") ?? "",
      sku: params.get("sku") ?? "",
    };
    this.pollTimer = null;
    this.refreshing = null;
    this.again = false;
    this.shell();
  }

  path(rest = "") {
    return `/v1/batches/${this.batch.id}${rest}`;
  }

  shell() {
    this.title = h("h1", {}, batchName(this.batch));
    this.progress = h("div", { class: "batch-progress" });
    this.counts = h("p", { id: "counts", class: "counts", "aria-live": "polite" });
    this.status = h("div", { id: "status", class: "status-line", "aria-live": "polite" });
    this.promptFilter = h("select", { id: "f-prompt", onchange: () => this.filter("prompt") },
      h("option", { value: "" }, "any"));
    const select = (key, label, values) =>
      h("label", {}, label,
        h("select", { id: `f-${key}`, onchange: () => this.filter(key) },
          h("option", { value: "" }, "all"),
          values.map((v) => h("option", { value: v }, v.replace("_", " ")))));
    this.skuFilter = h("input", {
      id: "f-sku", type: "search", placeholder: "SKU", oninput: () => this.filter("sku"),
    });
    this.grid = h("table", { class: "grid", role: "grid", "aria-label": "Variants by SKU" });
    this.grid.addEventListener("keydown", (e) => this.key(e));
    this.help = h("p", { id: "keys", class: "keys muted" },
      "← → ↑ ↓ or j k move · a approve · r reject · enter open · f full size · ? keys");
    const action = (label, run, id) => h("button", { type: "button", id, onclick: () => this.act(label, run) }, label);
    const download = (label, path, name) =>
      h("button", { type: "button", onclick: () => this.download(path, name) }, label);
    const publishable = { review: "passed,approved" };
    replace(this.main,
      h("div", { class: "titlebar" }, this.title,
        h("div", { class: "actions" },
          action("Approve all passed", () =>
            api(this.path("/review"), { method: "POST", body: { decision: "approve", where: { review: "passed" } } }), "approve-passed"),
          action("Rerender rejected", () =>
            api(this.path("/rerender"), { method: "POST", query: { review: "rejected" } }), "rerender-rejected"),
          action("Retry failed", () => api(this.path("/retry"), { method: "POST" }), "retry-failed"),
          action("Cancel", () => api(this.path("/cancel"), { method: "POST" }), "cancel"),
        )),
      this.progress,
      this.counts,
      h("div", { class: "toolbar" },
        h("div", { class: "filters", role: "search" },
          select("status", "status ", STATUSES),
          select("review", "review ", REVIEWS),
          h("label", {}, "prompt ", this.promptFilter),
          h("label", {}, "sku ", this.skuFilter)),
        h("details", { class: "menu" }, h("summary", {}, "Download"),
          h("div", { class: "menu-items" },
            download("Zip: all outputs", this.path("/archive"), "zip"),
            download("Zip: publishable only", withQuery(this.path("/archive"), publishable), "zip"),
            download("Manifest CSV: all", withQuery(this.path("/manifest"), { format: "csv" }), "csv"),
            download("Manifest CSV: publishable", withQuery(this.path("/manifest"), { format: "csv", ...publishable }), "csv"),
            download("Manifest JSON", this.path("/manifest"), "json")))),
      this.status,
      h("div", { class: "grid-wrap" }, this.grid),
      this.help,
    );
    for (const key of ["status", "review"]) this.main.querySelector(`#f-${key}`).value = this.filters[key];
    this.skuFilter.value = this.filters.sku;
  }

  say(text, kind = "info") {
    replace(this.status, kind === "error" ? notice(text) : h("p", { role: "status" }, text));
  }

  /** Re-read the batch and its jobs; at most one read at a time, one more if asked meanwhile. */
  async refresh() {
    if (this.refreshing) {
      this.again = true;
      return this.refreshing;
    }
    this.refreshing = (async () => {
      do {
        this.again = false;
        const [batch, jobs] = await Promise.all([
          api(this.path(), { signal: this.signal }),
          allPages(this.path("/jobs"), { limit: 500 }, (p) => p.jobs, this.signal),
        ]);
        this.batch = batch;
        this.update(jobs);
      } while (this.again);
    })().finally(() => { this.refreshing = null; });
    return this.refreshing;
  }

  update(jobs) {
    const known = this.jobs.size === jobs.length && jobs.every((j) => this.jobs.has(j.id));
    for (const job of jobs) this.jobs.set(job.id, job);
    if (!known) this.build();
    else for (const job of jobs) this.paint(job);
    this.paintHeader();
    this.paintCounts();
    this.applyFilters();
  }

  paintHeader() {
    replace(this.progress, progressBar(this.batch),
      h("span", { class: "muted" }, ` ${this.batch.model} · ${num(this.batch.job_count)} jobs · ${this.batch.status}`));
  }

  paintCounts() {
    const tally = {};
    for (const job of this.jobs.values()) tally[stateOf(job)] = (tally[stateOf(job)] ?? 0) + 1;
    const shown = [...REVIEWS, "queued", "running", "failed", "canceled"];
    replace(this.counts, shown.filter((s) => tally[s]).map((s, i) =>
      h("span", { class: `count ${s}`, "data-state": s },
        i ? " · " : "", `${s.replace("_", " ")} `, h("b", {}, num(tally[s])))));
  }

  /** The whole grid, when the set of jobs is new. */
  build() {
    const jobs = [...this.jobs.values()];
    const skus = [...new Set(jobs.map((j) => j.sku))].sort();
    const prompts = [...new Set(jobs.map((j) => j.prompt_name))].sort();
    const variants = Math.max(...jobs.map((j) => j.variant));
    this.columns = prompts.flatMap((p) => Array.from({ length: variants }, (_, i) => [p, i + 1]));
    const at = new Map(jobs.map((j) => [`${j.sku}\u0000${j.prompt_name}\u0000${j.variant}`, j]));
    // A cross batch fills every prompt x variant of every SKU; a zipped or paired one only its
    // pairs', so its columns are each row's own jobs in order (a diagonal grid would be
    // mostly empty), the prompt named in each cell's label.
    const paired = (this.batch.pairing ?? "cross") !== "cross";
    const own = new Map(skus.map((sku) => [sku, jobs.filter((j) => j.sku === sku)
      .sort((x, y) => (x.prompt_name < y.prompt_name ? -1 : x.prompt_name > y.prompt_name ? 1 : x.variant - y.variant))]));
    if (paired) this.columns = Array.from({ length: Math.max(...[...own.values()].map((r) => r.length)) }, (_, i) => [null, i]);
    replace(this.promptFilter, h("option", { value: "" }, "any"), prompts.map((p) => h("option", { value: p }, p)));
    this.promptFilter.value = this.filters.prompt;
    const head = h("tr", {}, h("th", { scope: "col" }, "SKU"), h("th", { scope: "col" }, "source"),
      this.columns.map(([p, v]) => (paired ? h("th", { scope: "col" }, `job ${v + 1}`)
        : h("th", { scope: "col", "data-prompt": p }, `${p} #${v}`))));
    this.cells.clear();
    const rows = skus.map((sku) => {
      const row = h("tr", { "data-sku": sku }, h("th", { scope: "row" }, sku));
      const first = jobs.find((j) => j.sku === sku);
      const source = h("img", { alt: `${sku}: source`, width: 128, height: 128 });
      lazyThumb(source, thumbPath(first, "source"));
      row.append(h("td", { class: "source" }, source));
      for (const [p, v] of this.columns) {
        const job = paired ? own.get(sku)[v] : at.get(`${sku}\u0000${p}\u0000${v}`);
        row.append(job ? this.cell(job) : h("td", { class: "empty", ...(paired ? {} : { "data-prompt": p }) }));
      }
      return row;
    });
    replace(this.grid, h("thead", {}, head), h("tbody", {}, rows));
    const first = this.visibleCells()[0];
    if (first) first.tabIndex = 0;
  }

  cell(job) {
    const img = h("img", { alt: `${jobLabel(job)}: ${job.prompt}`, width: 128, height: 128 });
    const mark = h("span", { class: "mark" });
    // A paired batch's columns are not prompts: each cell names its own.
    const cap = (this.batch.pairing ?? "cross") !== "cross" ? h("span", { class: "cap" }, job.prompt_name) : null;
    const link = h("a", { href: `/jobs/${job.id}`, class: "cell", tabindex: -1, "data-id": job.id, role: "gridcell" }, img, mark, cap);
    link.addEventListener("focus", () => this.focusOn(link));
    // The job page names the job by its place in the batch, which GET /v1/jobs/{id} lacks.
    link.addEventListener("click", () => rememberPlace(this.jobs.get(job.id)));
    this.cells.set(job.id, link);
    this.paint(job, link);
    return h("td", { "data-prompt": job.prompt_name }, link);
  }

  /** One cell from its job: mark, tooltip and (once rendered) the thumbnail. */
  paint(job, link = this.cells.get(job.id)) {
    if (!link) return;
    const state = stateOf(job);
    const [symbol, words] = MARKS[state] ?? ["?", state];
    link.dataset.state = state;
    link.dataset.status = job.status;
    link.dataset.review = job.review ?? "";
    link.title = tooltip(job);
    replace(link.querySelector(".mark"), symbol, h("span", { class: "sr" }, ` ${words}`));
    const img = link.querySelector("img");
    if (job.status === "succeeded" && job.outputs?.length) {
      const path = thumbPath(job);
      if (img.dataset.thumb !== path) {
        delete img.dataset.loaded;
        lazyThumb(img, path);
      }
    } else if (img.dataset.thumb) {
      delete img.dataset.thumb;
      delete img.dataset.loaded;
      img.removeAttribute("src");
    }
  }

  filter(key) {
    const el = this.main.querySelector(`#f-${key}`);
    this.filters[key] = el.value.trim();
    const query = new URLSearchParams(Object.entries(this.filters).filter(([, v]) => v));
    history.replaceState(null, "", `${location.pathname}${query.size ? `?${query}` : ""}`);
    this.applyFilters();
  }

  applyFilters() {
    const { status, review, prompt, sku } = this.filters;
    for (const th of this.grid.querySelectorAll("[data-prompt]")) {
      th.hidden = Boolean(prompt) && th.dataset.prompt !== prompt;
    }
    for (const row of this.grid.querySelectorAll("tbody tr")) {
      let any = false;
      for (const link of row.querySelectorAll("a.cell")) {
        const job = this.jobs.get(link.dataset.id);
        const match = (!status || job.status === status) && (!review || job.review === review) &&
          (!prompt || job.prompt_name === prompt);
        link.classList.toggle("filtered", !match);
        any ||= match;
      }
      row.hidden = !any || (Boolean(sku) && !row.dataset.sku.toLowerCase().includes(sku.toLowerCase()));
    }
  }

  visibleCells() {
    return [...this.grid.querySelectorAll("a.cell")].filter(
      (c) => !c.classList.contains("filtered") && !c.closest("tr").hidden && !c.closest("td").hidden);
  }

  focusOn(link) {
    for (const other of this.grid.querySelectorAll('a.cell[tabindex="0"]')) if (other !== link) other.tabIndex = -1;
    link.tabIndex = 0;
  }

  key(event) {
    const link = event.target.closest?.("a.cell");
    if (!link || event.altKey || event.ctrlKey || event.metaKey) return;
    const cells = this.visibleCells();
    const i = cells.indexOf(link);
    const move = (target) => {
      if (!target) return;
      event.preventDefault();
      target.focus();
    };
    const vertical = (dir) => {
      const rows = [...new Set(cells.map((c) => c.closest("tr")))];
      const row = rows[rows.indexOf(link.closest("tr")) + dir];
      if (!row) return null;
      const col = link.closest("td").cellIndex;
      const inRow = cells.filter((c) => c.closest("tr") === row);
      return inRow.reduce((best, c) =>
        Math.abs(c.closest("td").cellIndex - col) < Math.abs(best.closest("td").cellIndex - col) ? c : best);
    };
    switch (event.key) {
      case "ArrowRight": case "j": return move(cells[i + 1]);
      case "ArrowLeft": case "k": return move(cells[i - 1]);
      case "ArrowDown": return move(vertical(1));
      case "ArrowUp": return move(vertical(-1));
      case "a": event.preventDefault(); return this.decide(link, "approve", cells[i + 1]);
      case "r": event.preventDefault(); return this.decide(link, "reject", cells[i + 1]);
      case "f": { // full size: the output's own URL (signed or presigned: no key in it)
        const url = this.jobs.get(link.dataset.id).outputs?.[0]?.url;
        if (url) window.open(url, "_blank", "noopener,noreferrer");
        return;
      }
      case "?": event.preventDefault(); this.help.classList.toggle("open"); return;
      default:
    }
  }

  async decide(link, decision, next) {
    const job = this.jobs.get(link.dataset.id);
    try {
      const answer = await api(`/v1/jobs/${job.id}/review`, { method: "POST", body: { decision } });
      this.jobs.set(job.id, { ...job, ...answer });
      this.paint(this.jobs.get(job.id));
      this.paintCounts();
      this.applyFilters();
      this.say(`${jobLabel(job)}: ${decision === "approve" ? "approved" : "rejected"}`);
      next?.focus();
    } catch (error) {
      this.say(`${jobLabel(job)}: ${error.message}`, "error");
    }
  }

  async act(label, run) {
    try {
      const answer = await run();
      const counted = Object.entries(answer ?? {}).filter(([k, v]) => typeof v === "number" && k !== "id");
      this.say(`${label}: ${counted.map(([k, v]) => `${k.replaceAll("_", " ")} ${v}`).join(", ") || "done"}`);
    } catch (error) {
      this.say(`${label}: ${error.message}`, "error");
      return;
    }
    await this.refresh();
    this.live();
  }

  async download(path, ext) {
    this.say("Preparing the download…");
    try {
      const data = await blob(path);
      const url = URL.createObjectURL(data);
      const a = h("a", { href: url, download: `batch-${this.batch.id}.${ext}`, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      this.say(`Downloaded ${num(data.size)} bytes.`);
    } catch (error) {
      this.say(`Download: ${error.message}`, "error");
    }
  }

  unfinished() {
    return [...this.jobs.values()].some((j) => j.status === "queued" || j.status === "running");
  }

  /** Follow the batch's event stream: each job event is applied to its cell at once (a
   * success also re-reads that one job, for its output and scores), the batch's header is
   * re-read at most once a second; a full re-read only for a job the grid does not know.
   * Polls while the farm has no stream. */
  async live() {
    if (this.following) return;
    this.following = true;
    let lastEventId = null;
    try {
      while (!this.signal.aborted && this.unfinished()) {
        try {
          lastEventId = await follow(this.path("/events"), (e) => this.apply(e), { signal: this.signal, lastEventId });
          await this.refresh();
        } catch (error) {
          if (this.signal.aborted) return;
          if (error instanceof ApiError && [404, 405].includes(error.status)) {
            await this.poll();
            return;
          }
          await new Promise((done) => setTimeout(done, POLL_MS)); // dropped: reconnect
        }
      }
    } finally {
      this.following = false;
    }
  }

  apply(event) {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    if (!event.event.startsWith("job.") || !data.job_id) return this.later("header", 1000, () => this.readHeader());
    const job = this.jobs.get(data.job_id);
    if (!job) return this.later("all", 150, () => this.refresh());
    // Events are state, not increments (README, "Live progress"): take them as they are.
    Object.assign(job, { status: data.status, review: data.review, attempts: data.attempts });
    if (data.status === "succeeded") this.readJob(job.id);
    else this.changed(job);
  }

  /** Run ``fn`` once after ``ms``, however often it is asked for meanwhile. */
  later(name, ms, fn) {
    this.timers ??= {};
    if (this.timers[name]) return;
    this.timers[name] = setTimeout(() => {
      this.timers[name] = null;
      fn().catch?.(() => {});
    }, ms);
  }

  async readHeader() {
    this.batch = await api(this.path(), { signal: this.signal });
    this.paintHeader();
  }

  async readJob(id) {
    const fresh = await api(`/v1/jobs/${id}`, { signal: this.signal }).catch(() => null);
    if (fresh) this.changed(Object.assign(this.jobs.get(id), fresh));
  }

  changed(job) {
    this.paint(job);
    this.later("tally", 100, async () => {
      this.paintCounts();
      this.applyFilters();
    });
    this.later("header", 1000, () => this.readHeader());
  }

  /** No stream on this farm: re-read the jobs until none is left queued or running. */
  async poll() {
    while (!this.signal.aborted && this.unfinished()) {
      await new Promise((done) => setTimeout(done, POLL_MS));
      if (!this.signal.aborted) await this.refresh().catch(() => {});
    }
  }
}
