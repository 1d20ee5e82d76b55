// A new batch: drop photos (each uploaded as it lands, with its own progress bar), write
// prompts one per line as name=prompt, pick a model, variants, how images meet prompts
// (every image × every prompt, or image i with prompt i) and marketplace presets, see the
// job count, submit.

import { ApiError, api, getKey } from "./api.js";
import { duration, h, notice, num, replace } from "./dom.js";
import { go } from "./nav.js";

/** "beach=on a beach" lines -> [{name, prompt}]; a line without "=" is a bare prompt. */
export function parsePrompts(text) {
  return text.split("\n").map((l) => l.trim()).filter(Boolean).map((line) => {
    const at = line.indexOf("=");
    if (at <= 0) return { prompt: line };
    return { name: line.slice(0, at).trim(), prompt: line.slice(at + 1).trim() };
  });
}

/** A SKU from a file name: its stem, with characters no file system keeps replaced. */
export function skuOf(filename) {
  const stem = filename.replace(/\.[^.]+$/, "") || "image";
  return stem.replace(/[<>:"/\\|?*\u0000-\u001f]/g, "-").replace(/[. ]+$/, "").slice(0, 100) || "image";
}

const size = (bytes) => (bytes < 1e6 ? `${Math.ceil(bytes / 1e3)} KB` : `${(bytes / 1e6).toFixed(1)} MB`);

/** POST one file to /v1/uploads (multipart) with upload progress: XHR has upload events,
 * fetch does not. */
function uploadMultipart(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/uploads");
    xhr.setRequestHeader("Authorization", `Bearer ${getKey()}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => e.lengthComputable && onProgress(e.loaded / e.total));
    xhr.addEventListener("load", () => {
      if (xhr.status === 201) resolve(xhr.response.uploads[0]);
      else reject(new ApiError(xhr.status, xhr.response));
    });
    xhr.addEventListener("error", () => reject(new Error("the upload was cut off")));
    const form = new FormData();
    form.append("files", file, file.name);
    xhr.send(form);
  });
}

/** On S3: presign, PUT straight to the bucket (progress from XHR), then /complete. */
async function uploadPresigned(file, onProgress) {
  const signed = await api("/v1/uploads/presign", { method: "POST", body: { filename: file.name } });
  await new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", signed.url);
    xhr.upload.addEventListener("progress", (e) => e.lengthComputable && onProgress(e.loaded / e.total));
    xhr.addEventListener("load", () => (xhr.status < 300 ? resolve() : reject(new Error(`storage answered ${xhr.status}`))));
    xhr.addEventListener("error", () => reject(new Error("the upload to storage was cut off")));
    xhr.send(file);
  });
  return api(`/v1/uploads/${signed.id}/complete`, { method: "POST" });
}

let presign = null; // learnt from the farm's first answer: true on S3, false on a local folder

async function upload(file, onProgress) {
  if (presign !== false) {
    try {
      const done = await uploadPresigned(file, onProgress);
      presign = true;
      return done;
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 400 && presign !== true)) throw error;
      presign = false; // this farm stores objects in a folder: multipart through the api
    }
  }
  return uploadMultipart(file, onProgress);
}

/** The farm's marketplace presets (GET /v1/presets); none when it has no such route, so the
 * form still works without them. */
async function presetList(signal) {
  try {
    return (await api("/v1/presets", { signal })).presets;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return [];
    throw error;
  }
}

/** How many jobs: every image × every prompt, or (zip) image i with prompt i, × variants;
 * and why it cannot be sent, if so. */
export function jobCount(images, prompts, variants, pairing) {
  if (pairing !== "zip") {
    return { n: images * prompts * variants, text: `${images} images × ${prompts} prompts × ${variants} variants` };
  }
  const text = `${images} images paired with ${prompts} prompts × ${variants} variants`;
  if (images !== prompts) return { n: 0, text, problem: "pairing image i with prompt i needs as many images as prompts" };
  return { n: images * variants, text };
}

export async function newBatchPage(main, { signal }) {
  const [{ models }, presets] = await Promise.all([api("/v1/models", { signal }), presetList(signal)]);
  const files = []; // {file, sku, upload, error, bar}
  const list = h("ul", { class: "files", "aria-label": "Images" });
  const picker = h("input", { type: "file", id: "files", multiple: true, accept: "image/*", class: "sr" });
  const drop = h("div", { class: "drop", id: "drop", tabindex: 0, role: "button", "aria-label": "Add images: drop them here or press enter to browse" },
    "Drop product photos here, or ", h("label", { for: "files", class: "link" }, "browse"), picker);
  const summary = h("p", { id: "upload-summary", class: "muted", "aria-live": "polite" });
  const prompts = h("textarea", { id: "prompts", rows: 5, required: true, spellcheck: "false",
    placeholder: "beach=the product on a sunny beach, soft morning light\nsnow=the product on a snowy porch" });
  const variants = h("input", { id: "variants", type: "number", min: 1, max: 100, value: 1, required: true });
  const model = h("select", { id: "model" }, models.map((m) =>
    h("option", { value: m.alias },
      `${m.alias}${m.kind !== m.alias ? ` (${m.kind})` : ""}${m.warning ? " — no worker online" : ""}`)));
  const strength = h("input", { id: "strength", type: "number", min: 0.01, max: 1, step: 0.01, placeholder: "model default" });
  // Output sizes the chosen model allows (GET /v1/models: limits), its default first.
  const outSize = h("select", { id: "size" });
  const sizes = () => {
    const m = models.find((x) => x.alias === model.value);
    const lo = m?.limits?.min_size ?? 0, hi = m?.limits?.max_size ?? Infinity;
    const fits = ([w, h2]) => w >= lo && h2 >= lo && w <= hi && h2 <= hi;
    const all = [[512, 512], [768, 768], [1024, 1024], [768, 1024], [1024, 768], [1080, 1352], [1920, 1080]];
    const def = m?.defaults?.width ? `model default (${m.defaults.width}×${m.defaults.height})` : "model default";
    replace(outSize, h("option", { value: "" }, def),
      ...all.filter(fits).map(([w, h2]) => h("option", { value: `${w}x${h2}` }, `${w}×${h2}`)));
  };
  const format = h("select", { id: "format" }, ["png", "jpeg", "webp"].map((f) => h("option", { value: f }, f)));
  const name = h("input", { id: "name", type: "text", maxlength: 200, placeholder: "Summer 2027 catalogue" });
  const pairing = h("select", { id: "pairing" },
    h("option", { value: "cross" }, "every image × every prompt"),
    h("option", { value: "zip" }, "image 1 with prompt 1, 2 with 2, …"));
  // One more output per job for each preset ticked, brought to that channel's rules.
  const presetBoxes = presets.map((p) =>
    h("input", { type: "checkbox", name: "preset", value: p.name, id: `preset-${p.name}` }));
  const presetSet = presets.length ? h("fieldset", { class: "presets-pick" }, h("legend", {}, "Marketplace presets"),
    presets.map((p, i) => h("label", { for: `preset-${p.name}`, title: p.source },
      presetBoxes[i], `${p.label} (${p.width}×${p.height} ${p.format})`))) : null;
  const preview = h("p", { id: "preview", class: "preview", "aria-live": "polite" });
  const estimate = h("p", { id: "estimate", class: "preview muted", "aria-live": "polite" });
  const status = h("div", { id: "status", "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary", id: "submit" }, "Submit");

  const body = () => {
    const batch = {
      model: model.value,
      images: files.map((f) => ({ image: f.upload.id, sku: f.sku })),
      prompts: parsePrompts(prompts.value),
      variants: Number(variants.value),
      output_format: format.value,
      pairing: pairing.value,
    };
    const chosen = presetBoxes.filter((b) => b.checked).map((b) => b.value);
    if (chosen.length) batch.preset = chosen;
    if (outSize.value) [batch.width, batch.height] = outSize.value.split("x").map(Number);
    if (strength.value) batch.strength = Number(strength.value);
    return batch;
  };
  // The farm's own count, GPU cost and ETA (a dry run creates nothing), asked 400 ms after
  // the last change; an older answer still on its way is dropped.
  let timer = null;
  let asking = null;
  const estimateLater = (ready) => {
    clearTimeout(timer);
    asking?.abort();
    estimate.textContent = "";
    if (!ready) return;
    timer = setTimeout(async () => {
      asking = new AbortController();
      try {
        const e = await api("/v1/batches?dry_run=true", { method: "POST", body: body(), signal: asking.signal });
        const gpu = e.estimated_gpu_seconds == null ? "GPU-s unknown yet" : `~${num(Math.round(e.estimated_gpu_seconds))} GPU-s`;
        const eta = e.eta_seconds == null ? "" : ` · ETA ${duration(e.eta_seconds)}`;
        estimate.textContent = `→ ${num(e.job_count)} jobs · ${gpu}${eta}`;
      } catch (error) {
        if (error.name !== "AbortError") estimate.textContent = `no estimate: ${error.message}`;
      }
    }, 400);
  };

  const refresh = () => {
    const done = files.filter((f) => f.upload).length;
    const bytes = files.reduce((n, f) => n + f.file.size, 0);
    summary.textContent = files.length
      ? `${files.length} files · ${size(bytes)} · uploaded ${done}/${files.length}` : "";
    const p = parsePrompts(prompts.value).length;
    const v = Number(variants.value) || 0;
    const { n, text, problem } = jobCount(files.length, p, v, pairing.value);
    const extra = presetBoxes.filter((b) => b.checked).length;
    preview.textContent = problem ? `→ ${text}: ${problem}`
      : `→ ${text} = ${num(n)} jobs${extra ? ` (+ ${extra} preset outputs each)` : ""}`;
    submit.disabled = !n || done < files.length || files.some((f) => f.error);
    estimateLater(!submit.disabled);
  };

  const add = (chosen) => {
    for (const file of chosen) {
      const bar = h("progress", { max: 100, value: 0, "aria-label": `${file.name} upload` });
      const state = h("span", { class: "muted" }, "uploading");
      const entry = { file, sku: skuOf(file.name), upload: null, error: null };
      files.push(entry);
      list.append(h("li", { "data-name": file.name }, h("span", { class: "fname" }, file.name), bar, state));
      upload(file, (share) => { bar.value = Math.round(share * 100); })
        .then((u) => { entry.upload = u; bar.value = 100; state.textContent = `${u.width}×${u.height}`; })
        .catch((e) => { entry.error = e; replace(state, notice(`${file.name}: ${e.message}`)); })
        .finally(refresh);
    }
    refresh();
  };
  picker.addEventListener("change", () => add([...picker.files]));
  drop.addEventListener("keydown", (e) => (e.key === "Enter" || e.key === " ") && (e.preventDefault(), picker.click()));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    add([...e.dataTransfer.files].filter((f) => f.type.startsWith("image/") || !f.type));
  });
  for (const input of [prompts, variants]) input.addEventListener("input", refresh);
  model.addEventListener("change", () => { sizes(); refresh(); });
  for (const input of [outSize, format, pairing, ...presetBoxes]) input.addEventListener("change", refresh);
  strength.addEventListener("input", refresh);

  const send = async (event) => {
    event.preventDefault();
    const batch = body();
    if (name.value.trim()) batch.metadata = { name: name.value.trim() };
    submit.disabled = true;
    try {
      const accepted = await api("/v1/batches", { method: "POST", body: batch });
      go(`/batches/${accepted.id}`);
    } catch (error) {
      const fields = (error.body?.errors ?? []).map((e) => `${e.field}: ${e.message}`);
      replace(status, notice([error.message, ...fields].join("\n")));
      submit.disabled = false;
    }
  };

  replace(main,
    h("h1", {}, "New batch"),
    h("form", { class: "new-batch", onsubmit: send },
      h("fieldset", {}, h("legend", {}, "Images"), drop, summary, list),
      h("label", { for: "prompts" }, "Prompts ", h("span", { class: "muted" }, "one per line, name=prompt")),
      prompts,
      h("div", { class: "row" },
        h("label", {}, "Variants ", variants),
        h("label", {}, "Model ", model),
        h("label", {}, "Size ", outSize),
        h("label", {}, "Strength ", strength),
        h("label", {}, "Format ", format),
        h("label", {}, "Name ", name),
        h("label", {}, "Pairing ", pairing)),
      presetSet,
      preview, estimate, status, submit));
  sizes();
  refresh();
}
