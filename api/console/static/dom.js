// Building DOM from data without markup: every string goes in as a text node or through
// setAttribute, so a prompt like <img src=x onerror=alert(1)> is shown as the text it is.

/** An element with attributes (class, on<event> handlers, plain attributes) and children. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name.startsWith("on")) {
      throw new Error(`refusing a string handler attribute ${name}`);
    } else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

/** Append children: nodes as they are, anything else as text. */
export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace everything inside ``el`` with ``children``. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** 1234 -> "1,234" */
export const num = (n) => Number(n ?? 0).toLocaleString("en-US");

/** Seconds -> "14 min", "2 h", "40 s". */
export function duration(seconds) {
  if (seconds == null) return "";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

/** An ISO time -> "5 min ago". */
export function ago(iso) {
  if (!iso) return "";
  return `${duration((Date.now() - Date.parse(iso)) / 1000)} ago`;
}

/** A notice in the page (role=alert so screen readers say it). */
export function notice(text, kind = "error") {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}
