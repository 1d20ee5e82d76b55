// The /v1 API with the key the person pasted. The key lives in this tab's sessionStorage
// and travels only in the Authorization header: never in a URL, a cookie or a log line.

const KEY = "imgfarm.key";

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const clearKey = () => sessionStorage.removeItem(KEY);

/** An answer that was not 2xx: status and the API's own detail line. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${getKey() ?? ""}`, ...extra };
}

export function withQuery(path, query) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) if (v != null && v !== "") params.set(k, v);
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

async function send(path, { method = "GET", body, query, signal, accept, probe } = {}) {
  const headers = authHeaders(accept ? { Accept: accept } : {});
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(withQuery(path, query), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    credentials: "omit",
  });
  if (!response.ok) {
    const detail = await response.json().catch(() => ({ detail: response.statusText }));
    const error = new ApiError(response.status, detail);
    // A refused key mid-session sends the tab back to sign in (not while checking one).
    if (response.status === 401 && !probe) window.dispatchEvent(new CustomEvent("imgfarm:unauthorized"));
    throw error;
  }
  return response;
}

/** JSON of ``path`` (GET unless ``method``). */
export async function api(path, options = {}) {
  const response = await send(path, options);
  return response.status === 204 ? null : response.json();
}

/** The body of ``path`` as a Blob (images, zips: fetched with the key, never by URL). */
export async function blob(path, options = {}) {
  return (await send(path, options)).blob();
}

/** Every page of a cursor listing: ``pick`` takes the items out of each page. */
export async function allPages(path, query, pick, signal) {
  const items = [];
  let cursor = null;
  do {
    const page = await api(path, { query: { ...query, cursor }, signal });
    items.push(...pick(page));
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

/**
 * Follow a Server-Sent Events stream with the key in a header (EventSource cannot send
 * one): ``onEvent({id, event, data})`` per event. Resolves when the stream ends; rejects
 * with ApiError when the route answers an error (404: no stream on this farm yet).
 */
export async function follow(path, onEvent, { signal, lastEventId } = {}) {
  const headers = authHeaders({ Accept: "text/event-stream" });
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  const response = await fetch(path, { headers, signal, credentials: "omit" });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => ({})));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let last = lastEventId;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return last;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { id: null, event: "message", data: "" };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // a comment: keep-alive
        const at = line.indexOf(":");
        const field = at < 0 ? line : line.slice(0, at);
        const text = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
        if (field === "data") event.data += (event.data ? "\n" : "") + text;
        else if (field === "id" || field === "event") event[field] = text;
      }
      if (event.id) last = event.id;
      if (event.data || event.event !== "message") onEvent(event);
    }
  }
}
