// gpt2ft dashboard: plain JS modules against the OpenAI-shaped /v1 API; no build step, no libraries.
import { enterJob, initJob, pollJob } from "./job.js";
import { enterNewJob, initNewJob } from "./job-form.js";
import { refreshJobs } from "./jobs.js";
import { $, KEY_STORAGE, apiKey, clearError, guarded, isBusy } from "./lib.js";
import { enterPlayground, initPlayground } from "./playground.js";

const POLL_MS = 1000;

// --- Routing: #/ jobs, #/jobs/<id>, #/new, #/playground?model=<id>&compare=<id>.

function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "jobs" && parts[1]) return { view: "job", id: decodeURIComponent(parts[1]) };
  if (parts[0] === "new") return { view: "new" };
  if (parts[0] === "playground") {
    return { view: "playground", model: params.get("model"), compare: params.get("compare") };
  }
  return { view: "jobs" };
}

const views = {
  jobs: { enter: () => refreshJobs(), poll: (ticks) => (ticks % 2 === 0 ? refreshJobs : null) },
  job: { enter: (r) => enterJob(r.id), poll: (ticks) => pollJob(ticks) },
  new: { enter: () => enterNewJob(), poll: () => null },
  playground: { enter: (r) => enterPlayground(r), poll: () => null },
};

let current = null;
let tick = 0;

function render() {
  current = route();
  for (const name of Object.keys(views)) $(`view-${name}`).hidden = name !== current.view;
  const section = current.view === "job" ? "jobs" : current.view;
  for (const link of document.querySelectorAll("header nav a")) {
    link.classList.toggle("active", link.dataset.view === section);
  }
  guarded(() => views[current.view].enter(current));
}

function poll() {
  tick += 1;
  if (isBusy() || !current || !apiKey()) return;
  const work = views[current.view].poll(tick);
  if (work) guarded(work);
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

initKey();
initJob();
initNewJob();
initPlayground();
window.addEventListener("hashchange", () => {
  clearError();
  window.scrollTo(0, 0); // a new view starts at its top, not where the last one was scrolled
  render();
});
render();
setInterval(poll, POLL_MS);
