// The jobs list, and the progress figures (bar, steps, ETA, tokens/s) the job page shares.
import { $, api, cell, clock, el, number, when } from "./lib.js";

export function etaSeconds(job) {
  if (job.status !== "running" || !job.estimated_finish) return null;
  return Math.max(0, job.estimated_finish - Date.now() / 1000);
}

export function progressBar(job, { rates = true } = {}) {
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
  const eta = rates ? etaSeconds(job) : null;
  const figures = [total ? `${done}/${total} steps` : "–"];
  if (eta !== null) figures.push(`ETA ${clock(eta)}`);
  if (rates && job.status === "running" && typeof job.tokens_per_second === "number") {
    figures.push(`${number(Math.round(job.tokens_per_second))} tok/s`);
  }
  return el(
    "div",
    { class: "progress" },
    bar,
    el("span", { class: "muted progress-figures" }, figures.join(" · ")),
  );
}

export function statusBadge(status) {
  return el("span", { class: `status status-${status}` }, status);
}

export async function refreshJobs() {
  const page = await api("/v1/fine_tuning/jobs?limit=50");
  const rows = page.data.map((job) =>
    el(
      "tr",
      { "data-job": job.id },
      cell("Job", el("a", { href: `#/jobs/${job.id}` }, job.id), job.user_provided_suffix ? el("div", { class: "muted small" }, job.user_provided_suffix) : null),
      cell("Status", statusBadge(job.status)),
      cell("Model", job.model),
      cell("Progress", progressBar(job)),
      cell("Created", when(job.created_at)),
      cell("Fine-tuned model", job.fine_tuned_model ? el("code", { class: "wrap" }, job.fine_tuned_model) : "–"),
    ),
  );
  $("jobs-body").replaceChildren(...rows);
  $("jobs-empty").hidden = rows.length > 0;
}
