// gpt2ft dashboard: plain JS against the OpenAI-shaped /v1 API; no build step, no libraries.
"use strict";

const KEY_STORAGE = "gpt2ft.apiKey";
const POLL_MS = 1000;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

// --- DOM helpers: text always goes through textContent, so API data is never parsed as HTML.

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(value, digits = 4) {
  return typeof value === "number" ? value.toFixed(digits) : "–";
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "–";
}

// --- The API: every call sends the key; errors surface OpenAI's .error.message.

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

async function api(path, { method = "GET", json, form } = {}) {
  const headers = { Authorization: `Bearer ${apiKey()}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser sets the multipart boundary itself
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch (err) {
    throw new Error(`${method} ${path}: the service did not answer (${err.message})`);
  }
  const text = await response.text();
  let payload = null;
  try {
    payload = text ? JSON.parse(text) : null;
  } catch {
    payload = null;
  }
  if (!response.ok) {
    const message = payload && payload.error && payload.error.message;
    const error = new Error(message || `${method} ${path}: HTTP ${response.status} ${text.slice(0, 200)}`);
    error.status = response.status;
    throw error;
  }
  return payload;
}

function showError(err) {
  $("error-text").textContent = err instanceof Error ? err.message : String(err);
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

// --- The key form.

function initKey() {
  $("api-key").value = apiKey();
  $("key-state").textContent = apiKey() ? "saved" : "";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    $("key-state").textContent = "saved";
    clearError();
    render();
  });
  $("error-close").addEventListener("click", clearError);
}

// --- Routing: #/ jobs, #/jobs/<id>, #/new, #/playground?model=<id>.

function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "jobs" && parts[1]) return { view: "job", id: decodeURIComponent(parts[1]) };
  if (parts[0] === "new") return { view: "new" };
  if (parts[0] === "playground") return { view: "playground", model: params.get("model") };
  return { view: "jobs" };
}

const views = {
  jobs: { enter: () => refreshJobs(), poll: (ticks) => (ticks % 2 === 0 ? refreshJobs : null) },
  job: { enter: (r) => enterJob(r.id), poll: (ticks) => pollJob(ticks) },
  new: { enter: () => enterNewJob(), poll: () => null },
  playground: { enter: (r) => enterPlayground(r.model), poll: () => null },
};

let current = null;
let busy = 0; // requests in flight: a poll waits for them rather than piling up
let tick = 0;

async function guarded(work) {
  if (!apiKey()) {
    showError("Enter your API key above (create one with `gpt2ft keys create`).");
    return;
  }
  busy += 1;
  try {
    await work();
  } catch (err) {
    showError(err);
  } finally {
    busy -= 1;
  }
}

function render() {
  current = route();
  for (const name of Object.keys(views)) $(`view-${name}`).hidden = name !== current.view;
  guarded(() => views[current.view].enter(current));
}

function poll() {
  tick += 1;
  if (busy || !current || !apiKey()) return;
  const work = views[current.view].poll(tick);
  if (work) guarded(work);
}

// --- Jobs list.

function progressBar(job) {
  const total = job.total_steps || 0;
  const done = job.steps_completed || 0;
  const share = total ? Math.min(1, done / total) : job.status === "succeeded" ? 1 : 0;
  const bar = el("div", {
    class: "bar",
    role: "progressbar",
    "aria-valuemin": "0",
    "aria-valuemax": String(total),
    "aria-valuenow": String(done),
  });
  bar.append(el("div", { class: "fill", style: `width: ${(share * 100).toFixed(1)}%` }));
  const label = total ? `${done}/${total} steps` : "–";
  return el("div", { class: "progress" }, bar, el("span", { class: "muted" }, label));
}

function statusBadge(status) {
  return el("span", { class: `status status-${status}` }, status);
}

async function refreshJobs() {
  const page = await api("/v1/fine_tuning/jobs?limit=50");
  const rows = page.data.map((job) =>
    el(
      "tr",
      { "data-job": job.id },
      el("td", {}, el("a", { href: `#/jobs/${job.id}` }, job.id)),
      el("td", {}, job.model),
      el("td", {}, statusBadge(job.status)),
      el("td", {}, progressBar(job)),
      el("td", {}, when(job.created_at)),
      el("td", {}, job.fine_tuned_model ? el("code", {}, job.fine_tuned_model) : "–"),
    ),
  );
  $("jobs-body").replaceChildren(...rows);
  $("jobs-empty").hidden = rows.length > 0;
}

// --- One job: facts, chart, checkpoints, samples and events, polled while it trains.

let jobState = null;

function enterJob(id) {
  jobState = { id, events: [], seen: new Set(), job: null };
  $("job-id").textContent = id;
  for (const part of ["job-progress", "job-facts", "chart", "checkpoints-body", "events"]) {
    $(part).replaceChildren();
  }
  return refreshJob();
}

function pollJob(ticks) {
  const job = jobState && jobState.job;
  // A finished job changes rarely; a training one is polled every second.
  if (job && TERMINAL.has(job.status) && ticks % 5 !== 0) return null;
  return refreshJob;
}

async function refreshJob() {
  const state = jobState;
  const base = `/v1/fine_tuning/jobs/${encodeURIComponent(state.id)}`;
  const [job, checkpoints] = await Promise.all([api(base), api(`${base}/checkpoints?limit=100`)]);
  await fetchNewEvents(state, base);
  const series = await lossSeries(state, base);
  if (state !== jobState) return; // the user moved to another job meanwhile
  state.job = job;
  renderJob(job);
  renderCheckpoints(checkpoints.data);
  drawChart($("chart"), series);
  renderSamples(state.events);
  renderEvents(state.events);
}

async function fetchNewEvents(state, base) {
  // Pages come newest first: read until an event we already hold, so each poll is small.
  const fresh = [];
  let after = null;
  for (;;) {
    const query = `limit=200${after ? `&after=${encodeURIComponent(after)}` : ""}`;
    const page = await api(`${base}/events?${query}`);
    let reachedKnown = false;
    for (const event of page.data) {
      if (state.seen.has(event.id)) {
        reachedKnown = true;
        break;
      }
      fresh.push(event);
    }
    if (reachedKnown || !page.has_more || page.data.length === 0) break;
    after = page.data[page.data.length - 1].id;
  }
  for (const event of fresh.reverse()) {
    state.seen.add(event.id);
    state.events.push(event);
  }
}

function renderJob(job) {
  const status = $("job-status");
  status.textContent = job.status;
  status.className = `status status-${job.status}`;
  $("job-progress").replaceChildren(progressBar(job));
  const error = $("job-error");
  error.hidden = !job.error;
  error.textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  const hp = job.hyperparameters || {};
  const facts = [
    ["Base model", job.model],
    ["Fine-tuned model", job.fine_tuned_model || "–"],
    ["Training file", job.training_file],
    ["Epoch", job.epoch === null || job.epoch === undefined ? "–" : fmt(job.epoch, 2)],
    ["Trained tokens", job.trained_tokens ?? "–"],
    ["Hyperparameters", Object.entries(hp).map(([k, v]) => `${k}=${v}`).join(", ")],
    ["Created", when(job.created_at)],
    ["Finished", when(job.finished_at)],
  ];
  $("job-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const active = !TERMINAL.has(job.status);
  $("job-cancel").disabled = !active;
  $("job-pause").disabled = !active || job.status === "paused";
  $("job-resume").disabled = job.status !== "paused";
  const link = $("job-playground");
  link.hidden = !job.fine_tuned_model;
  if (job.fine_tuned_model) {
    link.href = `#/playground?model=${encodeURIComponent(job.fine_tuned_model)}`;
  }
}

function renderCheckpoints(checkpoints) {
  const rows = checkpoints.map((c) =>
    el(
      "tr",
      {},
      el("td", {}, c.step_number),
      el("td", {}, el("code", {}, c.fine_tuned_model_checkpoint)),
      el("td", {}, fmt(c.metrics.train_loss)),
      el("td", {}, fmt(c.metrics.valid_loss)),
      el("td", {}, fmt(c.metrics.valid_mean_token_accuracy, 3)),
    ),
  );
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: "5", class: "muted" }, "None yet.")));
  $("checkpoints-body").replaceChildren(...rows);
}

function renderSamples(events) {
  const samples = events.filter((e) => e.data && typeof e.data.text === "string");
  if (samples.length === 0) return;
  const items = samples.slice(-10).reverse().map((e) =>
    el(
      "div",
      { class: "sample" },
      el("div", { class: "muted" }, e.data.step !== undefined ? `step ${e.data.step}` : when(e.created_at)),
      el("pre", { class: "output" }, el("b", {}, e.data.prompt || ""), e.data.text),
    ),
  );
  $("samples").replaceChildren(...items);
}

function renderEvents(events) {
  const items = events.slice(-200).reverse().map((e) =>
    el(
      "li",
      { class: `level-${e.level}` },
      el("span", { class: "muted" }, new Date(e.created_at * 1000).toLocaleTimeString()),
      " ",
      e.message,
    ),
  );
  $("events").replaceChildren(...items);
}

// --- The loss chart: train and valid loss against step, drawn as SVG by hand.

async function lossSeries(state, base) {
  // GET .../metrics holds every step with evaluations merged in; services without it
  // still log each step as a "metrics" event, so the chart falls back to those.
  if (!state.noMetricsRoute) {
    try {
      const page = await api(`${base}/metrics`);
      return seriesOf(page.data);
    } catch (err) {
      if (err.status !== 404) throw err;
      state.noMetricsRoute = true;
    }
  }
  return seriesOf(state.events.filter((e) => e.type === "metrics" && e.data).map((e) => e.data));
}

function seriesOf(points) {
  const train = new Map();
  const valid = new Map();
  for (const p of points) {
    if (typeof p.step !== "number") continue;
    if (typeof p.train_loss === "number") train.set(p.step, p.train_loss);
    if (typeof p.valid_loss === "number") valid.set(p.step, p.valid_loss);
  }
  const sorted = (map) => [...map.entries()].sort((a, b) => a[0] - b[0]);
  return { train: sorted(train), valid: sorted(valid) };
}

function niceTicks(lo, hi, count) {
  const span = hi - lo || 1;
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(t);
  return { ticks, step };
}

function drawChart(container, series) {
  const width = 720, height = 300;
  const m = { left: 56, right: 16, top: 16, bottom: 44 };
  const all = [...series.train, ...series.valid];
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Loss against step" });
  if (all.length === 0) {
    root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "muted" }, "No metrics yet"));
    container.replaceChildren(root);
    return;
  }
  const maxStep = Math.max(1, ...all.map(([s]) => s));
  let lo = Math.min(...all.map(([, v]) => v));
  let hi = Math.max(...all.map(([, v]) => v));
  if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
  const pad = (hi - lo) * 0.05;
  lo = Math.max(0, lo - pad);
  hi += pad;
  const x = (s) => m.left + (s / maxStep) * (width - m.left - m.right);
  const y = (v) => height - m.bottom - ((v - lo) / (hi - lo)) * (height - m.top - m.bottom);

  const axes = svg("g", { class: "axes" });
  for (const t of niceTicks(0, maxStep, 8).ticks) {
    axes.append(svg("line", { x1: x(t), x2: x(t), y1: m.top, y2: height - m.bottom, class: "grid" }));
    axes.append(svg("text", { x: x(t), y: height - m.bottom + 16, "text-anchor": "middle" }, String(Math.round(t))));
  }
  const yTicks = niceTicks(lo, hi, 8);
  const digits = Math.max(0, -Math.floor(Math.log10(yTicks.step)));
  for (const t of yTicks.ticks) {
    axes.append(svg("line", { x1: m.left, x2: width - m.right, y1: y(t), y2: y(t), class: "grid" }));
    axes.append(svg("text", { x: m.left - 6, y: y(t) + 4, "text-anchor": "end" }, t.toFixed(digits)));
  }
  axes.append(svg("line", { x1: m.left, x2: m.left, y1: m.top, y2: height - m.bottom, class: "axis" }));
  axes.append(svg("line", { x1: m.left, x2: width - m.right, y1: height - m.bottom, y2: height - m.bottom, class: "axis" }));
  axes.append(svg("text", { x: (m.left + width - m.right) / 2, y: height - 6, "text-anchor": "middle", class: "label" }, "step"));
  axes.append(svg("text", { x: 14, y: (m.top + height - m.bottom) / 2, "text-anchor": "middle", class: "label",
    transform: `rotate(-90 14 ${(m.top + height - m.bottom) / 2})` }, "loss"));
  root.append(axes);

  const line = (points, cls) => svg("polyline", {
    class: `series ${cls}`,
    points: points.map(([s, v]) => `${x(s).toFixed(1)},${y(v).toFixed(1)}`).join(" "),
  });
  root.append(line(series.train, "train-loss"), line(series.valid, "valid-loss"));
  for (const [s, v] of series.valid) root.append(svg("circle", { cx: x(s), cy: y(v), r: 3.5, class: "valid-loss-dot" }));

  const legend = svg("g", { class: "legend", transform: `translate(${width - m.right - 150}, ${m.top + 4})` });
  [["train loss", "train-loss"], ["valid loss", "valid-loss"]].forEach(([name, cls], i) => {
    legend.append(svg("line", { x1: 0, x2: 22, y1: i * 18 + 6, y2: i * 18 + 6, class: `series ${cls}` }));
    legend.append(svg("text", { x: 28, y: i * 18 + 10 }, `${name} (${series[cls === "train-loss" ? "train" : "valid"].length})`));
  });
  root.append(legend);
  container.replaceChildren(root);
}

// --- Job actions.

function initJobActions() {
  for (const action of ["cancel", "pause", "resume"]) {
    $(`job-${action}`).addEventListener("click", () =>
      guarded(async () => {
        await api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobState.id)}/${action}`, { method: "POST" });
        await refreshJob();
      }),
    );
  }
}

// --- New job: upload a file, then create a job from the form.

function fillSelect(select, options, chosen) {
  const keep = select.querySelector("option[value='']");
  const items = options.map(([value, label]) => el("option", { value }, label));
  select.replaceChildren(...(keep ? [keep] : []), ...items);
  if (chosen !== undefined && options.some(([value]) => value === chosen)) select.value = chosen;
}

let filesRequest = 0;

async function loadFiles(chosen) {
  // Entering the page and finishing an upload both reload the list: the later request wins.
  const request = ++filesRequest;
  const files = await api("/v1/files");
  if (request !== filesRequest) return;
  const options = files.data.map((f) => [f.id, `${f.filename} (${f.id}, ${f.bytes} bytes)`]);
  fillSelect($("job-training-file"), options, chosen);
  fillSelect($("job-validation-file"), options);
}

async function enterNewJob() {
  const models = await api("/v1/models");
  const bases = models.data.filter((m) => !m.id.startsWith("ft:")).map((m) => [m.id, m.id]);
  fillSelect($("job-model"), bases, $("job-model").value || undefined);
  await loadFiles($("job-training-file").value || undefined);
}

function numberField(id, parse = Number) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : parse(raw);
}

function jobBody() {
  const hyperparameters = {};
  const epochs = numberField("job-epochs", (v) => parseInt(v, 10));
  const batch = numberField("job-batch", (v) => parseInt(v, 10));
  const lrm = numberField("job-lrm", parseFloat);
  if (epochs !== undefined) hyperparameters.n_epochs = epochs;
  if (batch !== undefined) hyperparameters.batch_size = batch;
  if (lrm !== undefined) hyperparameters.learning_rate_multiplier = lrm;
  const body = { model: $("job-model").value, training_file: $("job-training-file").value, hyperparameters };
  // gpt2ft's extensions ride at the top level of the body, as the SDK's extra_body sends them.
  const block = numberField("job-block", (v) => parseInt(v, 10));
  if (block !== undefined) body.block_size = block;
  if ($("job-validation-file").value) body.validation_file = $("job-validation-file").value;
  if ($("job-task").value !== "auto") body.task = $("job-task").value;
  if ($("job-method").value) body.training_method = $("job-method").value;
  if ($("job-suffix").value.trim()) body.suffix = $("job-suffix").value.trim();
  return body;
}

function initNewJob() {
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(async () => {
      const file = $("upload-file").files[0];
      if (!file) throw new Error("Choose a file to upload first.");
      const form = new FormData();
      form.append("purpose", "fine-tune");
      form.append("file", file, file.name);
      const uploaded = await api("/v1/files", { method: "POST", form });
      $("upload-result").textContent =
        `Uploaded ${uploaded.filename} as ${uploaded.id}: ${uploaded.bytes} bytes, ${uploaded.records} records (${uploaded.format}).`;
      await loadFiles(uploaded.id);
    });
  });
  $("job-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(async () => {
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", json: jobBody() });
      location.hash = `#/jobs/${job.id}`;
    });
  });
}

// --- Playground: generate from any model the key can use.

async function enterPlayground(model) {
  const models = await api("/v1/models");
  // Fine-tuned models first: they are what people come here to try.
  const ids = models.data.map((m) => m.id).sort((a, b) => b.startsWith("ft:") - a.startsWith("ft:"));
  fillSelect($("play-model"), ids.map((id) => [id, id]), model || $("play-model").value || undefined);
}

function initPlayground() {
  $("play-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const output = $("play-output");
    output.replaceChildren("Generating…");
    guarded(async () => {
      const prompt = $("play-prompt").value;
      try {
        const result = await api("/v1/completions", {
          method: "POST",
          json: {
            model: $("play-model").value,
            prompt,
            max_tokens: parseInt($("play-max-tokens").value, 10) || 40,
            temperature: parseFloat($("play-temperature").value),
          },
        });
        output.replaceChildren(el("b", {}, prompt), result.choices[0].text);
        output.dataset.done = "true";
      } catch (err) {
        output.replaceChildren();
        throw err;
      }
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  initKey();
  initJobActions();
  initNewJob();
  initPlayground();
  window.addEventListener("hashchange", () => {
    clearError();
    render();
  });
  render();
  setInterval(poll, POLL_MS);
});
