// Resolved hyperparameters and method as a table of values people read (job page, dry run).
import { el, number, percent, scientific } from "./lib.js";

const onOff = (v) => (v ? "on" : "off");

// name: [label, format(value, all) -> text]; null values read as what they mean.
const FIELDS = {
  task: ["Task", (v) => v ?? "inferred from the file"],
  packing: ["Packing", (v) => (v ? "on (records joined into blocks)" : "off (one record per row)")],
  max_length: ["Max length (tokens per record)", (v, all) => (v === null ? (all.packing ? "– (packing)" : "model context") : number(v))],
  labels: ["Labels", (v) => (Array.isArray(v) ? v.join(", ") : null)],
  n_epochs: ["Epochs", number],
  batch_size: ["Batch size", number],
  gradient_accumulation_steps: ["Gradient accumulation steps", number],
  learning_rate: ["Learning rate", scientific],
  learning_rate_multiplier: ["Learning rate multiplier", (v) => String(v)],
  lr_scheduler: ["Scheduler", String],
  warmup_ratio: ["Warmup", (v) => `${percent(v, 1)} of the steps`],
  weight_decay: ["Weight decay", String],
  max_grad_norm: ["Gradient clipping (max norm)", String],
  block_size: ["Block size (tokens)", number],
  validation_split: ["Validation split", (v) => (v === 0 ? "none (validation file given)" : percent(v))],
  eval_every_steps: ["Evaluate every", (v) => (v === null ? "epoch end" : `${number(v)} steps and at epoch ends`)],
  checkpoint_every_steps: ["Checkpoint every", (v) => (v === null ? "epoch end (and every evaluation)" : `${number(v)} steps`)],
  early_stopping_patience: ["Early stopping", (v) => (v === null ? "off" : `after ${v} evaluations without a new best`)],
  keep_checkpoints: ["Checkpoints kept", (v) => `the newest ${number(v)} and the best`],
  keep: ["Final weights", (v) => (v === "best" ? "best validation loss" : "last step")],
  gradient_checkpointing: ["Gradient checkpointing", onOff],
  seed: ["Seed", String],
};

function shownValue(name, value, all) {
  if (value === "auto") return "auto (resolved when the job starts)";
  const known = FIELDS[name];
  if (known) return known[1](value, all);
  if (value === null || value === undefined) return "–";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function methodRows(method) {
  if (!method || !method.training_method) return [];
  const rows = [["Method", method.training_method]];
  if (method.training_method === "lora" && method.lora) {
    const lora = method.lora;
    rows.push(["LoRA rank / alpha", `r ${lora.r}, alpha ${lora.alpha}`]);
    rows.push(["LoRA dropout", String(lora.dropout)]);
    rows.push(["LoRA targets", (lora.target_modules || []).join(", ")]);
  }
  if (method.training_method === "transfer") {
    rows.push(["Trainable top blocks", String(method.trainable_layers)]);
  }
  const prompts = method.sample_prompts || [];
  rows.push(["Sample prompts", prompts.length ? prompts.map((p) => JSON.stringify(p)).join(", ") : "none"]);
  return rows;
}

export function resolvedRows(hyperparameters, method) {
  const hp = hyperparameters || {};
  const order = [...Object.keys(FIELDS), ...Object.keys(hp).filter((k) => !(k in FIELDS)).sort()];
  const rows = [];
  for (const name of order) {
    if (!(name in hp)) continue;
    const value = shownValue(name, hp[name], hp);
    if (value === null) continue;
    rows.push([FIELDS[name] ? FIELDS[name][0] : name, value, name]);
  }
  return [...methodRows(method), ...rows];
}

export function resolvedTable(hyperparameters, method) {
  const rows = resolvedRows(hyperparameters, method).map(([label, value, name]) =>
    el("tr", { "data-name": name || label }, el("th", { scope: "row" }, label), el("td", {}, value)),
  );
  return el("table", { class: "kv" }, el("tbody", {}, rows));
}
