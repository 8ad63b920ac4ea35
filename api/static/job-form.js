// New job: upload, a preview of the file, every job option, a dry-run plan, then create.
import {
  $, api, apiHead, clock, el, fileInfo, gib, guarded, number, percent, size,
} from "./lib.js";
import { resolvedTable } from "./resolved.js";

// The first bytes of a file are enough for a preview; big files are never read whole.
const PREVIEW_BYTES = 64 * 1024;
const PREVIEW_RECORDS = 5;

// Each option: [input id, where it goes in the body, how its text is read].
const int = (v) => parseInt(v, 10);
const OPTIONS = [
  ["job-epochs", "hyperparameters.n_epochs", int],
  ["job-batch", "hyperparameters.batch_size", int],
  ["job-lrm", "hyperparameters.learning_rate_multiplier", parseFloat],
  ["job-lr", "learning_rate", parseFloat],
  ["job-scheduler", "lr_scheduler", String],
  ["job-warmup", "warmup_ratio", parseFloat],
  ["job-weight-decay", "weight_decay", parseFloat],
  ["job-grad-norm", "max_grad_norm", parseFloat],
  ["job-accumulation", "gradient_accumulation_steps", int],
  ["job-block", "block_size", int],
  ["job-validation-split", "validation_split", parseFloat],
  ["job-eval-every", "eval_every_steps", int],
  ["job-checkpoint-every", "checkpoint_every_steps", int],
  ["job-keep-checkpoints", "keep_checkpoints", int],
  ["job-patience", "early_stopping_patience", int],
  ["job-keep", "keep", String],
  ["job-task", "task", String],
  ["job-packing", "packing", (v) => v === "true"],
  ["job-max-length", "max_length", int],
  ["job-method", "training_method", String],
  ["job-trainable-layers", "trainable_layers", int, "transfer"],
  ["job-lora-r", "lora.r", int, "lora"],
  ["job-lora-alpha", "lora.alpha", int, "lora"],
  ["job-lora-dropout", "lora.dropout", parseFloat, "lora"],
  ["job-suffix", "suffix", String],
  ["job-seed", "seed", int],
];

function put(body, path, value) {
  const keys = path.split(".");
  let node = body;
  for (const key of keys.slice(0, -1)) node = node[key] = node[key] || {};
  node[keys[keys.length - 1]] = value;
}

export function jobBody() {
  // OpenAI's fields as the SDK sends them; gpt2ft's extensions at the top level (extra_body).
  const body = { model: $("job-model").value, training_file: $("job-training-file").value };
  if ($("job-validation-file").value) body.validation_file = $("job-validation-file").value;
  const method = $("job-method").value;
  for (const [id, path, parse, onlyFor] of OPTIONS) {
    const raw = $(id).value.trim();
    if (raw === "" || (onlyFor && onlyFor !== method)) continue;
    const value = parse(raw);
    if (typeof value === "number" && Number.isNaN(value)) throw new Error(`${$(id).labels[0].textContent}: not a number`);
    put(body, path, value);
  }
  if (method === "lora") {
    const targets = [...document.querySelectorAll("input[name=lora-target]:checked")].map((c) => c.value);
    put(body, "lora.target_modules", targets);
  }
  if ($("job-grad-ckpt").checked) body.gradient_checkpointing = true;
  const prompts = $("job-sample-prompts").value.split("\n").map((p) => p.trim()).filter(Boolean);
  if (prompts.length) body.sample_prompts = prompts;
  return body;
}

// --- Models and files.

function fillSelect(select, options, chosen) {
  const placeholder = select.querySelector("option[value='']");
  const items = options.map(([value, label]) => el("option", { value }, label));
  select.replaceChildren(...(placeholder ? [placeholder] : []), ...items);
  if (chosen && options.some(([value]) => value === chosen)) select.value = chosen;
}

let filesRequest = 0;

async function loadFiles(chosen) {
  // Entering the page and finishing an upload both reload the list: the later request wins.
  const request = ++filesRequest;
  const files = await api("/v1/files?purpose=fine-tune");
  if (request !== filesRequest) return;
  // Only training data: results CSVs (purpose fine-tune-results) are never offered.
  const usable = files.data.filter((f) => f.purpose === "fine-tune");
  const records = (n) => `${number(n)} record${n === 1 ? "" : "s"}`;
  const options = usable.map((f) => [f.id, `${f.filename} (${records(f.records)}, ${size(f.bytes)})`]);
  fillSelect($("job-training-file"), options, chosen);
  fillSelect($("job-validation-file"), options, $("job-validation-file").value);
  await previewFile();
}

export async function enterNewJob() {
  const models = await api("/v1/models");
  const bases = models.data
    .filter((m) => !m.id.startsWith("ft:"))
    .map((m) => [m.id, m.available === false ? `${m.id} (not available here)` : m.id]);
  fillSelect($("job-model"), bases, $("job-model").value);
  await loadFiles($("job-training-file").value);
  showMethodFields();
}

// --- The file preview: its first records, parsed the way the service reads the format.

export function parseCsv(text) {
  const rows = [];
  let row = [];
  let cell = "";
  let quoted = false;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        cell += '"';
        i += 1;
      } else if (c === '"') quoted = false;
      else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") {
      row.push(cell);
      cell = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i += 1;
      row.push(cell);
      rows.push(row);
      row = [];
      cell = "";
    } else cell += c;
  }
  if (cell || row.length) rows.push([...row, cell]);
  return rows;
}

function records(format, text, complete) {
  // A cut-off last line is not a record: drop it unless the whole file was read.
  const lines = text.split(/\r?\n/);
  if (!complete) lines.pop();
  if (format === "jsonl" || format === "json") {
    return lines.filter((l) => l.trim()).slice(0, PREVIEW_RECORDS).map((line) => {
      try {
        return JSON.parse(line);
      } catch {
        return { "(not JSON)": line };
      }
    });
  }
  if (format === "csv") {
    const [header, ...rows] = parseCsv(lines.join("\n")).filter((r) => r.some((c) => c !== ""));
    return rows.slice(0, PREVIEW_RECORDS).map((r) => Object.fromEntries(header.map((h, i) => [h, r[i] ?? ""])));
  }
  return [{ text: text.slice(0, 1200) + (complete && text.length <= 1200 ? "" : " …") }];
}

function shown(value) {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > 400 ? `${text.slice(0, 400)} …` : text;
}

async function previewFile() {
  const id = $("job-training-file").value;
  const box = $("file-preview");
  if (!id) {
    box.hidden = true;
    return;
  }
  const info = await fileInfo(id);
  const head = await apiHead(`/v1/files/${encodeURIComponent(id)}/content`, PREVIEW_BYTES);
  if ($("job-training-file").value !== id) return;
  const found = records(info.format, head.text, head.complete);
  const items = found.map((record, i) =>
    el("li", { class: "record" }, el("span", { class: "muted small" }, `#${i + 1}`), ...Object.entries(record).map(([k, v]) =>
      el("div", { class: "field" }, el("b", {}, k), " ", el("span", { class: "value" }, shown(v))),
    )),
  );
  const what = info.format === "txt" ? "the start of the text" : `the first ${found.length} of ${number(info.records)} records`;
  box.replaceChildren(el("p", { class: "muted" }, `${info.filename}: ${what} (${info.format}, ${size(info.bytes)})`), el("ol", { class: "records" }, items));
  box.hidden = false;
}

function showMethodFields() {
  const method = $("job-method").value;
  for (const node of document.querySelectorAll("#job-form [data-method]")) node.hidden = node.dataset.method !== method;
}

// --- The dry run: what the worker would run, before anything is queued.

function figure(label, value, name) {
  return el("div", { class: "stat", "data-plan": name }, el("div", { class: "stat-label" }, label), el("div", { class: "stat-value" }, value));
}

export function renderPlan(answer) {
  const p = answer.plan;
  const memory = p.memory_estimate || {};
  const fits = answer.fits ? "fits" : "does NOT fit";
  const free = typeof answer.available_bytes === "number" ? `; ${gib(answer.available_bytes)} free on ${answer.device}: ${fits}` : ` on ${answer.device}`;
  const estimate = typeof p.estimated_seconds === "number" ? `≈ ${clock(p.estimated_seconds)}` : "no estimate yet";
  // Packed text comes in blocks; per-record tasks in examples (one per record).
  const packed = typeof p.train_blocks === "number";
  const unit = packed ? "blocks" : "examples";
  const [train, valid] = packed ? [p.train_blocks, p.valid_blocks] : [p.train_examples, p.valid_examples];
  const figures = [
    figure("Training tokens", `${number(p.train_tokens)} in ${number(train)} ${unit}`, "train_tokens"),
    figure("Validation tokens", `${number(p.valid_tokens)} in ${number(valid)} ${unit}`, "valid_tokens"),
    figure("Steps", `${number(p.total_steps)} = ${number(p.steps_per_epoch)} × ${p.n_epochs} epochs`, "total_steps"),
    figure("Trained tokens", number(p.trained_tokens), "trained_tokens"),
    figure("Padding", `${percent(p.padding_fraction, 1)} of token slots; ${number(p.truncated)} records truncated`, "padding"),
    figure("Memory", `${gib(memory.total_bytes)}${free}`, "memory"),
    figure("Trainable parameters", `${number(p.trainable_parameters)} of ${number(p.total_parameters)}`, "parameters"),
    figure("Estimated time", estimate, "estimated_time"),
  ];
  $("plan").replaceChildren(
    el("h3", {}, "Plan (dry run: nothing was queued)"),
    el("div", { class: "stats" }, figures),
    el("p", { class: "muted small", "data-plan": "estimate_basis" }, p.estimate_basis || ""),
    el("p", { class: "plan-message" }, answer.message),
    el("h4", {}, "Resolved hyperparameters"),
    resolvedTable(answer.hyperparameters, answer.method),
  );
  $("plan").hidden = false;
  $("plan").classList.toggle("warning", !answer.fits);
  $("plan").scrollIntoView({ block: "nearest" });
}

export function initNewJob() {
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(async () => {
      const file = $("upload-file").files[0];
      if (!file) throw new Error("Choose a file to upload first.");
      const form = new FormData();
      form.append("purpose", "fine-tune");
      form.append("file", file, file.name);
      $("upload-result").textContent = `Uploading ${file.name}…`;
      const uploaded = await api("/v1/files", { method: "POST", form }).catch((err) => {
        $("upload-result").textContent = "";
        throw err;
      });
      // Say it is uploaded once the list offers it and has chosen it, not before: a user (or a
      // test) acting on the message finds the file in the form. It is uploaded even if the
      // list or the preview then fails (that error goes to the banner).
      try {
        await loadFiles(uploaded.id);
      } finally {
        $("upload-result").textContent =
          `Uploaded ${uploaded.filename} as ${uploaded.id}: ${size(uploaded.bytes)}, ${number(uploaded.records)} records (${uploaded.format}).`;
      }
    });
  });
  $("job-training-file").addEventListener("change", () => {
    $("plan").hidden = true;
    guarded(previewFile);
  });
  $("job-method").addEventListener("change", showMethodFields);
  $("job-form").addEventListener("input", () => $("plan").classList.add("stale"));
  $("preview-job").addEventListener("click", () =>
    guarded(async () => {
      const button = $("preview-job");
      button.disabled = true;
      button.textContent = "Planning…";
      try {
        const answer = await api("/v1/fine_tuning/jobs", { method: "POST", json: { ...jobBody(), dry_run: true } });
        renderPlan(answer);
        $("plan").classList.remove("stale");
      } finally {
        button.disabled = false;
        button.textContent = "Preview plan";
      }
    }),
  );
  $("job-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(async () => {
      if (!$("job-training-file").value) throw new Error("Choose a training file (upload one above).");
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", json: jobBody() });
      location.hash = `#/jobs/${job.id}`;
    });
  });
}
