// One job: its output beside its source (side by side, swipe, overlay, mask), its mask (given
// or found by the worker), its marketplace preset outputs, then what made it (params,
// provenance), how faithful it is (scores) and who decided what (review).

import { ApiError, api, blob } from "./api.js";
import { ago, h, notice, replace } from "./dom.js";
import { jobLabel, placeOf, scoresLine } from "./batch.js";
import { notFound } from "./nav.js";
import { thumbPath } from "./thumbs.js";

const COMPARE_PX = 1024;

async function objectUrl(path) {
  try {
    return URL.createObjectURL(await blob(path));
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

function table(caption, rows) {
  const shown = rows.filter(([, v]) => v != null && v !== "");
  if (!shown.length) return null;
  return h("table", { class: "facts" }, h("caption", {}, caption),
    h("tbody", {}, shown.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v)))));
}

const flat = (value) =>
  typeof value === "object" && value !== null ? JSON.stringify(value) : String(value);

export async function jobPage(main, { id, signal }) {
  let job;
  try {
    job = { ...placeOf(id), ...(await api(`/v1/jobs/${id}`, { signal })) };
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 422)) {
      replace(main, ...notFound("job"));
      return;
    }
    throw error;
  }
  const label = job.sku ? jobLabel(job) : `Job ${job.id.slice(0, 8)}`;
  const output = job.outputs?.[0];
  const [sourceUrl, outputUrl, maskUrl, edgesUrl] = await Promise.all([
    objectUrl(thumbPath(job, "source", COMPARE_PX)),
    output ? objectUrl(thumbPath(job, "output", COMPARE_PX)) : null,
    objectUrl(thumbPath(job, "mask", COMPARE_PX)),
    objectUrl(thumbPath(job, "edges", COMPARE_PX)),
  ]);
  const status = h("div", { id: "status", "aria-live": "polite" });
  replace(main,
    h("p", { class: "crumbs" }, job.batch_id ? h("a", { href: `/batches/${job.batch_id}` }, "← batch") : h("a", { href: "/" }, "← batches")),
    h("h1", {}, label),
    h("p", { class: "prompt" }, "“", job.prompt, "”", job.params?.seed != null ? ` · seed ${job.params.seed}` : ""),
    compare(job, sourceUrl, outputUrl, maskUrl, edgesUrl),
    output ? h("p", {}, h("a", { href: output.url, target: "_blank", rel: "noopener noreferrer" }, `Full size (${output.width}×${output.height}, ${output.content_type})`)) : null,
    maskBlock(job, maskUrl),
    presetOutputs(job),
    review(job, status, signal),
    status,
    h("div", { class: "fact-grid" },
      table("Fidelity", [["scores", scoresLine(job.fidelity)], ["review", job.review?.replace("_", " ")]]),
      table("Params", [["model", job.model], ["negative prompt", job.negative_prompt],
        ...Object.entries(job.params ?? {}).map(([k, v]) => [k.replaceAll("_", " "), flat(v)])]),
      table("Provenance", provenanceRows(job.provenance)),
      table("Labels", labelRows(job.provenance)),
      table("Run", [["status", job.status], ["attempts", job.attempts], ["worker", job.worker],
        ["error", job.error], ["queue wait", job.durations?.queue_wait_seconds?.toFixed?.(2)],
        ["render", job.durations?.render_seconds?.toFixed?.(2)], ["finished", ago(job.finished_at)]]),
      table("Metadata", Object.entries(job.metadata ?? {}).map(([k, v]) => [k, flat(v)])),
    ),
    history(job),
  );
}

/** The mask the job rendered with, and where it came from: given with the job, or found by
 * the worker (``mask: "auto"``, params.cutout names the method), so a person can check it
 * and, if it is wrong, download it, fix it and send it as the job's mask. */
function maskBlock(job, maskUrl) {
  if (!maskUrl) return null;
  const how = job.params?.cutout
    ? `found automatically (${job.params.cutout} cut-out)` : "given with the job";
  return h("section", { class: "mask-block", "aria-label": "Mask" },
    h("figure", {},
      h("img", { src: maskUrl, alt: `${job.sku ?? "job"}: mask` }),
      h("figcaption", {}, `Mask ${how}: white is repainted, black kept`,
        job.mask_url ? [" · ", h("a", { href: job.mask_url, target: "_blank", rel: "noopener noreferrer" }, "download")] : null)));
}

/** Each marketplace preset's output (an output with ``preset``), with its name and size. */
function presetOutputs(job) {
  const made = (job.outputs ?? []).filter((o) => o.preset);
  if (!made.length) return null;
  return h("section", { class: "presets", "aria-label": "Preset outputs" },
    h("h2", {}, "Preset outputs"),
    h("div", { class: "preset-grid" }, made.map((o) =>
      h("figure", { "data-preset": o.preset },
        h("a", { href: o.url, target: "_blank", rel: "noopener noreferrer" },
          h("img", { src: o.url, alt: `${job.sku ?? "job"}: ${o.preset}`, loading: "lazy" })),
        h("figcaption", {}, h("b", {}, o.preset), ` ${o.width}×${o.height} · ${o.content_type}`)))));
}

/** Which model, revision and licence made the output, and where it ran. */
function provenanceRows(p) {
  if (!p) return [];
  const licence = p.license && `${p.license}${p.commercial_use === false ? " (no commercial use)" : ""}`;
  return [["model", p.revision ? `${p.model} (rev ${p.revision.slice(0, 12)})` : p.model],
    ["kind", p.kind], ["licence", licence], ["worker", p.worker], ["device", p.device]];
}

/** What the output file says about itself: the IPTC type in its XMP, a signed C2PA manifest
 * (both recorded by the worker since c2pa_signed was: null for older outputs, shown as none). */
function labelRows(p) {
  if (!p || p.c2pa_signed == null) return [];
  const iptc = p.digital_source_type
    ? `IPTC ${p.digital_source_type.split("/").pop()} ✓` : "no AI claim (the source, resized)";
  const c2pa = p.c2pa_signed ? "signed ✓" : "not signed (XMP only)";
  return [["XMP", iptc], ["C2PA", c2pa]];
}

/** Source and output in one frame: side by side, swipe (a slider), overlay (opacity), mask,
 * edges (the source's canny edges beside the output: what "structure" is scored on). */
function compare(job, sourceUrl, outputUrl, maskUrl, edgesUrl) {
  const alt = job.sku ? `${jobLabel(job)}: ${job.prompt}` : job.prompt;
  const source = h("img", { src: sourceUrl, alt: `${job.sku ?? "job"}: source`, class: "source" });
  const output = outputUrl ? h("img", { src: outputUrl, alt, class: "output" }) : h("p", { class: "muted" }, `no output (${job.status})`);
  // Both at the output's shape: the worker brought the source to it (crop or pad) too.
  for (const img of [source, output]) {
    img.style.aspectRatio = `${job.params.width} / ${job.params.height}`;
    img.style.objectFit = { crop: "cover", pad: "contain", fit: "fill" }[job.params.resize_mode] ?? "cover";
  }
  const stage = h("div", { class: "stage side" }, h("figure", {}, source, h("figcaption", {}, "source")),
    h("figure", {}, output, h("figcaption", {}, "output")));
  const slider = h("input", { type: "range", min: 0, max: 100, value: 50, "aria-label": "Swipe position", hidden: true });
  const modes = ["side by side", "swipe", "overlay", ...(maskUrl ? ["mask"] : []), ...(edgesUrl ? ["edges"] : [])];
  let mode = "side by side";
  const apply = () => {
    stage.className = `stage ${mode.split(" ")[0]}`;
    slider.hidden = !(mode === "swipe" || mode === "overlay");
    const at = Number(slider.value);
    // CSSOM, not style attributes: the CSP allows no inline style.
    output.style.clipPath = mode === "swipe" ? `inset(0 0 0 ${at}%)` : "";
    output.style.opacity = mode === "overlay" ? String(at / 100) : "";
    if (mode === "mask" && maskUrl) source.src = maskUrl;
    else if (mode === "edges" && edgesUrl) source.src = edgesUrl;
    else source.src = sourceUrl;
  };
  slider.addEventListener("input", apply);
  const buttons = modes.map((m) =>
    h("button", { type: "button", "aria-pressed": String(m === mode), onclick: (e) => {
      mode = m;
      for (const b of buttons) b.setAttribute("aria-pressed", String(b === e.currentTarget));
      apply();
    } }, m));
  return h("section", { class: "compare", "aria-label": "Comparison" }, h("div", { class: "modes", role: "group" }, buttons), slider, stage);
}

function review(job, status, signal) {
  if (job.status !== "succeeded") return null;
  const decide = async (decision) => {
    try {
      await api(`/v1/jobs/${job.id}/review`, { method: "POST", body: { decision } });
      window.dispatchEvent(new Event("imgfarm:navigate")); // the page again, with its history
    } catch (error) {
      replace(status, notice(error.message));
    }
  };
  // The grid's keys work here too: a approves, r rejects.
  document.addEventListener("keydown", (event) => {
    if (event.target.closest?.("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "a" || event.key === "r") decide(event.key === "a" ? "approve" : "reject");
  }, { signal });
  return h("div", { class: "actions" },
    h("span", {}, `review: ${(job.review ?? "none").replace("_", " ")}`),
    h("button", { type: "button", id: "approve", onclick: () => decide("approve") }, "Approve (a)"),
    h("button", { type: "button", id: "reject", onclick: () => decide("reject") }, "Reject (r)"));
}

const who = (keyId) => (keyId ? ` by key …${String(keyId).slice(-4)}` : "");

/** One line of review history: state, who and when, the note, the seed it rendered with. */
function decision(label, entry) {
  const when = entry.reviewed_at ? ` ${ago(entry.reviewed_at)}` : "";
  return h("li", {},
    h("b", {}, label), ` ${(entry.review ?? "not reviewed").replace("_", " ")}${who(entry.reviewed_by)}${when}`,
    entry.seed != null ? ` · seed ${entry.seed}` : "",
    entry.fidelity ? ` · ${scoresLine(entry.fidelity)}` : "",
    entry.review_note ? h("q", {}, entry.review_note) : null);
}

/** Earlier attempts a rerender replaced (oldest first), then the current one. */
function history(job) {
  const rounds = job.history ?? [];
  if (!rounds.length && !job.reviewed_at) return null;
  return h("section", { class: "history" }, h("h2", {}, "Review history"),
    h("ol", {},
      rounds.map((r) => decision(`round ${r.round}:`, r)),
      job.status === "succeeded" ? decision("now:", { ...job, seed: job.params?.seed }) : null));
}
