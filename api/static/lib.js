// Shared by every view: DOM helpers, number formats, the API client and the error banner.

export const KEY_STORAGE = "gpt2ft.apiKey";
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const SVG_NS = "http://www.w3.org/2000/svg";

export const $ = (id) => document.getElementById(id);

// --- DOM helpers: text always goes through textContent, so API data is never parsed as HTML.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function cell(label, ...content) {
  // A table cell that becomes a "label: value" row in the phone layout (table.cards).
  return el("td", { "data-label": label }, el("div", { class: "cell" }, ...content));
}

export function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- Formats.

export function fmt(value, digits = 4) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

export function number(value) {
  return typeof value === "number" ? value.toLocaleString("en-US") : "–";
}

export function scientific(value) {
  // Learning rates: 0.001 reads as 1e-3 here, like the papers and the API docs write them.
  if (typeof value !== "number") return "–";
  if (value === 0) return "0";
  if (Math.abs(value) >= 0.01) return String(Number(value.toPrecision(4)));
  const [mantissa, exponent] = value.toExponential(2).split("e");
  return `${Number(mantissa)}e${exponent}`;
}

export function percent(value, digits = 0) {
  return typeof value === "number" ? `${(value * 100).toFixed(digits)}%` : "–";
}

export function gib(bytes) {
  if (typeof bytes !== "number") return "–";
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(0)} MiB`;
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
}

export function size(bytes) {
  if (typeof bytes !== "number") return "–";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KiB`;
  return gib(bytes);
}

export function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "–";
}

export function clock(seconds) {
  // 0:41, 12:05, 2:03:10: what a progress line shows.
  const total = Math.max(0, Math.round(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

// --- The API: every call sends the key; errors surface OpenAI's .error.message.

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export async function request(path, { method = "GET", json, form, headers = {}, signal } = {}) {
  const all = { Authorization: `Bearer ${apiKey()}`, ...headers };
  let body;
  if (json !== undefined) {
    all["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser sets the multipart boundary itself
  }
  let response;
  try {
    response = await fetch(path, { method, headers: all, body, signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error(`${method} ${path}: the service did not answer (${err.message})`);
  }
  if (!response.ok) {
    const text = await response.text();
    let message = null;
    try {
      message = JSON.parse(text).error.message;
    } catch {
      message = null;
    }
    const error = new Error(message || `${method} ${path}: HTTP ${response.status} ${text.slice(0, 200)}`);
    error.status = response.status;
    throw error;
  }
  return response;
}

export async function api(path, options = {}) {
  const response = await request(path, options);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export async function apiBlob(path) {
  return (await request(path)).blob();
}

export async function apiHead(path, maxBytes) {
  // The first maxBytes of a download: read that much of the stream, then stop it.
  const response = await request(path);
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  while (received < maxBytes) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
  }
  const complete = received < maxBytes;
  if (!complete) await reader.cancel();
  const bytes = new Uint8Array(received);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return { text: new TextDecoder().decode(bytes.subarray(0, maxBytes)), complete };
}

export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export async function copyText(text) {
  // navigator.clipboard needs a secure context (https or localhost); elsewhere select a copy.
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = el("textarea", { readonly: true, class: "offscreen" });
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

// --- The error banner.

export function showError(err) {
  $("error-text").textContent = err instanceof Error ? err.message : String(err);
  $("error").hidden = false;
}

export function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

// --- Files: names for ids, looked up once per page load.

const fileCache = new Map();

export async function fileInfo(id) {
  if (!fileCache.has(id)) {
    fileCache.set(
      id,
      api(`/v1/files/${encodeURIComponent(id)}`).catch((err) => {
        if (err.status === 404) return { id, filename: null, missing: true };
        fileCache.delete(id);
        throw err;
      }),
    );
  }
  return fileCache.get(id);
}

export function fileLabel(info) {
  if (!info) return "–";
  return el(
    "span",
    { class: "file-label", title: info.id },
    info.missing ? el("span", { class: "muted" }, "(deleted)") : info.filename,
    " ",
    el("code", { class: "muted small" }, info.id),
  );
}

// --- Work the user started: errors go to the banner; polls wait while requests are in flight.

let busy = 0;

export function isBusy() {
  return busy > 0;
}

export async function guarded(work) {
  if (!apiKey()) {
    showError("Enter your API key above (create one with `gpt2ft keys create`).");
    return;
  }
  busy += 1;
  try {
    await work();
  } catch (err) {
    if (err.name !== "AbortError") showError(err);
  } finally {
    busy -= 1;
  }
}
