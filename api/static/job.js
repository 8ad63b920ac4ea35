// One job: figures, charts, details, checkpoints, samples and events, polled while it trains.
import { LineChart } from "./chart.js";
import { etaSeconds, progressBar } from "./jobs.js";
import {
  $, TERMINAL, api, apiBlob, cell, clock, copyText, el, fileInfo, fileLabel, fmt, gib, guarded,
  number, percent, saveBlob, scientific, when,
} from "./lib.js";
import { resolvedTable } from "./resolved.js";

let state = null;
let charts = null;

function jobPath(suffix = "") {
  return `/v1/fine_tuning/jobs/${encodeURIComponent(state.id)}${suffix}`;
}

function makeCharts() {
  const loss = new LineChart($("chart-loss"), { label: "Loss against step", yLabel: "loss" });
  const lr = new LineChart($("chart-lr"), {
    label: "Learning rate against step",
    yLabel: "learning rate",
    height: 220,
    zeroBased: true,
    format: scientific,
    axisFormat: scientific,
  });
  const accuracy = new LineChart($("chart-accuracy"), {
    label: "Token accuracy against step",
    yLabel: "accuracy",
    height: 220,
    zeroBased: true,
    format: (v) => percent(v, 1),
    axisFormat: (v) => percent(v, 0),
  });
  return { loss, lr, accuracy };
}

export function enterJob(id) {
  state = { id, events: [], seen: new Set(), job: null, metricsStep: -1, points: [] };
  charts = charts || makeCharts();
  $("job-id").textContent = id;
  for (const part of ["job-stats", "job-facts", "job-hyperparameters", "checkpoints-body", "events", "samples"]) {
    $(part).replaceChildren();
  }
  drawCharts();
  return refreshJob();
}

export function pollJob(ticks) {
  const job = state && state.job;
  // A finished job changes rarely; a training one is polled every second.
  if (job && TERMINAL.has(job.status) && ticks % 5 !== 0) return null;
  return refreshJob;
}

async function refreshJob() {
  const current = state;
  const [job, checkpoints] = await Promise.all([api(jobPath()), api(jobPath("/checkpoints?limit=100"))]);
  await fetchNewEvents(current);
  // The curve changes only when a step is logged: skip the download otherwise.
  const logged = `${job.steps_completed}:${job.status}:${current.events.length}`;
  if (logged !== current.metricsStep) {
    current.points = (await api(jobPath("/metrics"))).data;
    current.metricsStep = logged;
  }
  if (current !== state) return; // the user moved to another job meanwhile
  current.job = job;
  renderHeader(job);
  renderStats(job, current.points);
  drawCharts();
  await renderDetails(job);
  renderCheckpoints(checkpoints.data);
  renderSamples(current.events, current.points);
  renderEvents();
}

async function fetchNewEvents(current) {
  // Pages come newest first: read until an event we already hold, so each poll is small.
  const fresh = [];
  let after = null;
  for (;;) {
    const query = `limit=200${after ? `&after=${encodeURIComponent(after)}` : ""}`;
    const page = await api(jobPath(`/events?${query}`));
    let reachedKnown = false;
    for (const event of page.data) {
      if (current.seen.has(event.id)) {
        reachedKnown = true;
        break;
      }
      fresh.push(event);
    }
    if (reachedKnown || !page.has_more || page.data.length === 0) break;
    after = page.data[page.data.length - 1].id;
  }
  for (const event of fresh.reverse()) {
    current.seen.add(event.id);
    current.events.push(event);
  }
}

// --- Header: status, actions, copy and download.

function renderHeader(job) {
  const status = $("job-status");
  status.textContent = job.status;
  status.className = `status status-${job.status}`;
  const error = $("job-error");
  error.hidden = !job.error;
  error.textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  const active = !TERMINAL.has(job.status);
  $("job-cancel").disabled = !active;
  $("job-pause").disabled = !active || job.status === "paused";
  $("job-resume").disabled = job.status !== "paused";
  const model = job.fine_tuned_model;
  for (const id of ["job-copy-model", "job-download-model", "job-playground"]) $(id).hidden = !model;
  $("job-results").hidden = !(job.result_files || []).length;
  if (model) {
    const query = new URLSearchParams({ model, compare: job.model });
    $("job-playground").href = `#/playground?${query}`;
  }
}

function stat(label, value, name) {
  return el("div", { class: "stat", "data-stat": name }, el("div", { class: "stat-label" }, label), el("div", { class: "stat-value" }, value));
}

function renderStats(job, points) {
  // ETA and tokens/s get tiles of their own here.
  const tiles = [stat("Progress", progressBar(job, { rates: false }), "progress")];
  const eta = etaSeconds(job);
  if (job.status === "running") {
    tiles.push(stat("ETA", eta === null ? "measuring…" : clock(eta), "eta"));
    const rate = job.tokens_per_second;
    tiles.push(stat("Tokens/s", typeof rate === "number" ? number(Math.round(rate)) : "measuring…", "tokens-per-second"));
  }
  tiles.push(stat("Epoch", job.epoch === null || job.epoch === undefined ? "–" : fmt(job.epoch, 2), "epoch"));
  tiles.push(stat("Trained tokens", number(job.trained_tokens), "trained-tokens"));
  const valid = points.filter((p) => typeof p.valid_loss === "number");
  if (valid.length) {
    const best = valid.reduce((a, b) => (b.valid_loss < a.valid_loss ? b : a));
    tiles.push(stat("Best valid loss", `${fmt(best.valid_loss)} (step ${best.step})`, "best-valid-loss"));
  }
  $("job-stats").replaceChildren(...tiles);
}

// --- Charts.

function column(points, name) {
  return points.filter((p) => typeof p[name] === "number").map((p) => [p.step, p[name]]);
}

function drawCharts() {
  const points = state ? state.points : [];
  charts.loss.update([
    { name: "train loss", cls: "train", points: column(points, "train_loss"), smoothable: true },
    { name: "valid loss", cls: "valid", points: column(points, "valid_loss"), dots: true },
  ]);
  charts.lr.update([{ name: "learning rate", cls: "lr", points: column(points, "learning_rate") }]);
  charts.accuracy.update([
    { name: "train accuracy", cls: "train", points: column(points, "train_mean_token_accuracy"), smoothable: true },
    { name: "valid accuracy", cls: "valid", points: column(points, "valid_mean_token_accuracy"), dots: true },
  ]);
}

export function setSmoothing(on) {
  if (!charts) return;
  charts.loss.setSmoothing(on);
  charts.accuracy.setSmoothing(on);
}

// --- Details: facts and resolved hyperparameters.

function fact(label, value, name) {
  return el("tr", { "data-fact": name }, el("th", { scope: "row" }, label), el("td", {}, value));
}

async function renderDetails(job) {
  const [training, validation] = await Promise.all([
    fileInfo(job.training_file),
    job.validation_file ? fileInfo(job.validation_file) : null,
  ]);
  const split = job.hyperparameters && job.hyperparameters.validation_split;
  const memory = job.memory_estimate;
  const rows = [
    fact("Base model", job.model, "model"),
    fact("Fine-tuned model", job.fine_tuned_model ? el("code", { class: "wrap" }, job.fine_tuned_model) : "–", "fine-tuned-model"),
    fact("Training file", fileLabel(training), "training-file"),
    fact("Validation file", validation ? fileLabel(validation) : `split from the training file${typeof split === "number" ? ` (${percent(split)})` : ""}`, "validation-file"),
  ];
  if (job.trainable_parameters) {
    const share = job.total_parameters ? ` (${percent(job.trainable_parameters / job.total_parameters, 1)})` : "";
    rows.push(fact("Trainable parameters", `${number(job.trainable_parameters)} of ${number(job.total_parameters)}${share}`, "parameters"));
  }
  if (memory) {
    const shape = `micro-batch ${memory.micro_batch_size} × ${memory.sequence_length} tokens, ${memory.precision}`;
    rows.push(fact("Memory estimate", `${gib(memory.total_bytes)} (${shape})`, "memory"));
  }
  const final = job.final_metrics || {};
  if (typeof final.memorization_fraction === "number") {
    // The base model's figure beside it: the increase is what the fine-tuning added.
    const base = final.memorization_fraction_base;
    const beside = typeof base === "number"
      ? `; base model ${percent(base, 1)}, increase ${final.memorization_increase >= 0 ? "+" : ""}${percent(final.memorization_increase, 1)}`
      : "";
    rows.push(fact("Memorization", `${percent(final.memorization_fraction, 1)} of ${final.memorization_samples} samples repeat 8 training tokens verbatim${beside}`, "memorization"));
  }
  if (final.early_stopped) rows.push(fact("Early stopped", `best step ${final.best_step}`, "early-stopped"));
  const metadata = Object.entries(job.metadata || {});
  if (metadata.length) rows.push(fact("Metadata", metadata.map(([k, v]) => `${k}: ${v}`).join(", "), "metadata"));
  rows.push(fact("Created", when(job.created_at), "created"), fact("Finished", when(job.finished_at), "finished"));
  if (state.job !== job) return;
  $("job-facts").replaceChildren(el("tbody", {}, rows));
  const method = {
    training_method: job.training_method,
    lora: job.lora,
    trainable_layers: job.trainable_layers,
    sample_prompts: job.sample_prompts,
  };
  $("job-hyperparameters").replaceChildren(resolvedTable(job.hyperparameters, method));
}

// --- Checkpoints.

function renderCheckpoints(checkpoints) {
  const rows = checkpoints.map((c) => {
    const query = new URLSearchParams({ model: c.fine_tuned_model_checkpoint, compare: state.job.model });
    const best = c.is_best ? el("span", { class: "best", title: "lowest validation loss so far" }, " best") : null;
    return el(
      "tr",
      { "data-step": c.step_number },
      cell("Step", String(c.step_number), best),
      cell("Model", el("code", { class: "wrap" }, c.fine_tuned_model_checkpoint)),
      cell("Train loss", fmt(c.metrics.train_loss)),
      cell("Valid loss", fmt(c.metrics.valid_loss)),
      cell("Valid accuracy", percent(c.metrics.valid_mean_token_accuracy, 1)),
      cell("", el("a", { href: `#/playground?${query}` }, "Try")),
    );
  });
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "None yet.")));
  $("checkpoints-body").replaceChildren(...rows);
}

// --- Sample generations, grouped by the evaluation that made them.

function renderSamples(events, points) {
  const byStep = new Map();
  for (const e of events) {
    if (!e.data || typeof e.data.text !== "string" || typeof e.data.step !== "number") continue;
    if (!byStep.has(e.data.step)) byStep.set(e.data.step, []);
    byStep.get(e.data.step).push(e.data);
  }
  if (byStep.size === 0) {
    const prompts = (state.job && state.job.sample_prompts) || [];
    const why = prompts.length ? "None yet: they come with each evaluation." : "None: the job has no sample_prompts.";
    $("samples").replaceChildren(el("p", { class: "muted" }, why));
    return;
  }
  const open = new Set([...$("samples").querySelectorAll("details[open]")].map((d) => d.dataset.step));
  const steps = [...byStep.keys()].sort((a, b) => b - a);
  const validAt = new Map(points.filter((p) => typeof p.valid_loss === "number").map((p) => [p.step, p.valid_loss]));
  const groups = steps.map((step, i) => {
    const loss = validAt.has(step) ? ` · valid loss ${fmt(validAt.get(step))}` : "";
    const wasOpen = open.size ? open.has(String(step)) : i === 0;
    return el(
      "details",
      { class: "sample-group", "data-step": step, open: wasOpen },
      el("summary", {}, `Step ${step}${loss}`),
      ...byStep.get(step).map((s) => el("pre", { class: "output" }, el("b", {}, s.prompt || ""), s.text)),
    );
  });
  $("samples").replaceChildren(...groups);
}

// --- Events: per-step metrics hidden unless asked for; a level and a text filter.

function renderEvents() {
  if (!state) return;
  const withMetrics = $("events-metrics").checked;
  const level = $("events-level").value;
  const needle = $("events-search").value.trim().toLowerCase();
  const shown = state.events.filter(
    (e) =>
      (withMetrics || e.type !== "metrics") &&
      (level === "all" || e.level === "warn" || e.level === "error") &&
      (!needle || e.message.toLowerCase().includes(needle)),
  );
  const items = shown.slice(-300).reverse().map((e) =>
    el(
      "li",
      { class: `level-${e.level} type-${e.type || "message"}` },
      el("span", { class: "muted" }, new Date(e.created_at * 1000).toLocaleTimeString()),
      " ",
      e.message,
    ),
  );
  $("events").replaceChildren(...items);
  $("events-count").textContent = `${shown.length} of ${state.events.length} events`;
}

// --- Actions.

async function downloadModel(button) {
  const model = state.job.fine_tuned_model;
  const label = button.textContent;
  button.disabled = true;
  button.textContent = "Packing…";
  try {
    const blob = await apiBlob(`/v1/models/${encodeURIComponent(model)}/content`);
    saveBlob(blob, `${model.replace(/[^A-Za-z0-9._-]+/g, "-")}.tar.gz`);
  } finally {
    button.disabled = false;
    button.textContent = label;
  }
}

async function downloadResults() {
  for (const id of state.job.result_files || []) {
    const info = await fileInfo(id);
    saveBlob(await apiBlob(`/v1/files/${encodeURIComponent(id)}/content`), info.filename || `${id}.csv`);
  }
}

function flash(button, text) {
  const label = button.dataset.label || button.textContent;
  button.dataset.label = label;
  button.textContent = text;
  setTimeout(() => (button.textContent = label), 1500);
}

export function initJob() {
  for (const action of ["cancel", "pause", "resume"]) {
    $(`job-${action}`).addEventListener("click", () =>
      guarded(async () => {
        await api(jobPath(`/${action}`), { method: "POST" });
        await refreshJob();
      }),
    );
  }
  $("job-copy-model").addEventListener("click", () =>
    guarded(async () => {
      await copyText(state.job.fine_tuned_model);
      flash($("job-copy-model"), "Copied");
    }),
  );
  $("job-download-model").addEventListener("click", () => guarded(() => downloadModel($("job-download-model"))));
  $("job-results").addEventListener("click", () => guarded(downloadResults));
  $("chart-smoothing").addEventListener("change", (event) => setSmoothing(event.target.checked));
  for (const id of ["events-metrics", "events-level"]) $(id).addEventListener("change", renderEvents);
  $("events-search").addEventListener("input", renderEvents);
}
