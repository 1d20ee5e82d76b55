// Thumbnails need the key, so an <img src> cannot fetch them: each is fetched with the
// header and shown from a blob: URL. Lazy like loading="lazy" (only what is near the
// viewport), a few at a time so the first screen fills first.

import { blob } from "./api.js";

const PARALLEL = 6;
const urls = new Map(); // request path -> blob: URL (this page's life)
const waiting = [];
let running = 0;

const observer = new IntersectionObserver(
  (entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      observer.unobserve(entry.target);
      enqueue(entry.target);
    }
  },
  { rootMargin: "600px" },
);

/** Show the thumbnail at ``path`` in ``img`` once it comes near the viewport. */
export function lazyThumb(img, path) {
  img.dataset.thumb = path;
  img.loading = "lazy";
  const known = urls.get(path);
  if (known) {
    img.src = known;
    img.dataset.loaded = "1";
    return;
  }
  observer.observe(img);
}

function enqueue(img) {
  waiting.push(img);
  pump();
}

function pump() {
  while (running < PARALLEL && waiting.length) {
    const img = waiting.shift();
    if (!img.isConnected) continue;
    running += 1;
    // A slot is held for the fetch only: decoding runs beside the next fetches.
    fetchUrl(img.dataset.thumb)
      .then((url) => void show(img, url), () => img.classList.add("broken"))
      .finally(() => {
        running -= 1;
        pump();
      });
  }
}

async function fetchUrl(path) {
  let url = urls.get(path);
  if (!url) {
    url = URL.createObjectURL(await blob(path));
    urls.set(path, url);
  }
  return url;
}

async function show(img, url) {
  if (urls.get(img.dataset.thumb) !== url) return; // the cell moved on to a newer attempt
  img.src = url;
  await img.decode().catch(() => {});
  img.dataset.loaded = "1";
}

/** The thumbnail path of a job's output (versioned by its attempt), source or mask. */
export function thumbPath(job, of = "output", size = 256) {
  const query = new URLSearchParams({ of });
  if (size !== 256) query.set("size", String(size));
  if (of === "output") query.set("v", job.finished_at ?? "");
  return `/v1/jobs/${job.id}/thumbnail?${query}`;
}
