// Playground: one prompt (or a chat), one or two models side by side, any checkpoint of a fine-tune.
import { $, api, el, guarded } from "./lib.js";
import { streamText } from "./stream.js";

const PANES = ["a", "b"];
const CHECKPOINT_MARK = ":ckpt-step-";

function jobOf(modelId) {
  // ft:<base>:<owner>:<suffix>:<job id>[:ckpt-step-N]: the job that made a fine-tuned model.
  const parts = modelId.split(CHECKPOINT_MARK)[0].split(":");
  return modelId.startsWith("ft:") && parts.length >= 5 ? parts[parts.length - 1] : null;
}

function baseOf(modelId) {
  return modelId.startsWith("ft:") ? modelId.split(":")[1] : modelId;
}

function modelOptions(ids, extra, unavailable = new Map()) {
  const base = ids.filter((id) => !id.startsWith("ft:"));
  const tuned = [...ids.filter((id) => id.startsWith("ft:")), ...extra];
  // A base model this host cannot load (/v1/models says available: false): shown, not pickable.
  const option = (id) =>
    unavailable.has(id)
      ? el("option", { value: id, disabled: true, title: unavailable.get(id) }, `${id} (not available here)`)
      : el("option", { value: id }, id);
  const group = (label, list) => (list.length ? el("optgroup", { label }, list.map(option)) : null);
  return [group("Fine-tuned", tuned), group("Base models", base)].filter(Boolean);
}

const checkpointCache = new Map();

async function checkpointsOf(jobId) {
  if (!checkpointCache.has(jobId)) {
    const page = api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/checkpoints?limit=100`);
    checkpointCache.set(jobId, page.then((p) => p.data).catch(() => []));
  }
  return checkpointCache.get(jobId);
}

async function fillWeights(pane, chosen) {
  const model = $(`play-model-${pane}`).value;
  const select = $(`play-checkpoint-${pane}`);
  const jobId = model ? jobOf(model) : null;
  if (!jobId) {
    select.replaceChildren(el("option", { value: "" }, "the model's own weights"));
    select.disabled = true;
    return;
  }
  checkpointCache.delete(jobId); // a running job gains checkpoints: read them afresh
  const checkpoints = await checkpointsOf(jobId);
  const options = [el("option", { value: "" }, "final model")];
  for (const c of checkpoints) {
    const best = c.is_best ? " (best)" : "";
    options.push(el("option", { value: c.fine_tuned_model_checkpoint }, `checkpoint at step ${c.step_number}${best}`));
  }
  select.replaceChildren(...options);
  select.disabled = checkpoints.length === 0;
  if (chosen && checkpoints.some((c) => c.fine_tuned_model_checkpoint === chosen)) select.value = chosen;
}

function pick(select, wanted) {
  if (wanted && [...select.options].some((o) => o.value === wanted)) select.value = wanted;
}

export async function enterPlayground(route) {
  const listed = (await api("/v1/models")).data;
  const models = listed.map((m) => m.id);
  const unavailable = new Map(listed.filter((m) => m.available === false).map((m) => [m.id, m.unavailable_reason]));
  const requested = [route.model, route.compare].filter(Boolean);
  // A checkpoint of a job still training: its final model is not listed yet, offer it anyway.
  const unlisted = requested
    .map((id) => id.split(CHECKPOINT_MARK)[0])
    .filter((id) => id.startsWith("ft:") && !models.includes(id));
  for (const pane of PANES) {
    const select = $(`play-model-${pane}`);
    const previous = select.value;
    select.replaceChildren(...modelOptions(models, [...new Set(unlisted)], unavailable));
    pick(select, previous);
  }
  const first = route.model || $("play-model-a").value || models.find((id) => id.startsWith("ft:")) || models.find((id) => !unavailable.has(id));
  pick($("play-model-a"), first && first.split(CHECKPOINT_MARK)[0]);
  const second = route.compare || (route.model ? baseOf(route.model) : $("play-model-b").value) || baseOf(first || "");
  pick($("play-model-b"), second && second.split(CHECKPOINT_MARK)[0]);
  if (route.compare) $("play-compare").checked = true;
  showPanes();
  await Promise.all([fillWeights("a", route.model), fillWeights("b", route.compare)]);
}

function showPanes() {
  document.querySelector("[data-pane=b]").hidden = !$("play-compare").checked;
  $("play-panes").classList.toggle("single", !$("play-compare").checked);
}

export function stopSequences(text) {
  // "a|b" is two stop sequences; \n and \t stand for a newline and a tab.
  const unescaped = (s) => s.replace(/\\n/g, "\n").replace(/\\t/g, "\t");
  return text.split("|").map(unescaped).filter((s) => s !== "").slice(0, 4);
}

function samplingParams() {
  const params = {
    temperature: parseFloat($("play-temperature").value),
    top_p: parseFloat($("play-top-p").value),
  };
  const seed = $("play-seed").value.trim();
  if (seed !== "") params.seed = parseInt(seed, 10);
  const stop = stopSequences($("play-stop").value);
  if (stop.length) params.stop = stop;
  return params;
}

function maxTokens() {
  return parseInt($("play-max-tokens").value, 10) || 40;
}

// Chat mode: each pane keeps its own conversation; a turn sends it whole to /v1/chat/completions.
const conversations = { a: [], b: [] };

function chatMode() {
  return $("play-chat").checked;
}

export function chatMessages(system, history, message) {
  const messages = system.trim() ? [{ role: "system", content: system.trim() }] : [];
  return [...messages, ...history, { role: "user", content: message }];
}

function turn(role, content) {
  return el("div", { class: `turn ${role}` }, el("b", {}, role === "user" ? "User: " : "Assistant: "), content);
}

// The pane's conversation; pending: the message being answered, with the reply so far.
function showConversation(pane, pending, partial) {
  const turns = conversations[pane].map((m) => turn(m.role, m.content));
  if (pending !== undefined) turns.push(turn("user", pending), turn("assistant", partial || "…"));
  $(`play-output-${pane}`).replaceChildren(...turns);
}

function clearChat() {
  for (const pane of PANES) {
    conversations[pane] = [];
    showConversation(pane);
    $(`play-meta-${pane}`).textContent = "";
  }
}

function showMode() {
  const chat = chatMode();
  $("play-system-row").hidden = !chat;
  $("play-clear").hidden = !chat;
  $("play-prompt-label").textContent = chat ? "Message" : "Prompt";
  $("play-generate").textContent = chat ? "Send" : "Generate";
  clearChat();
}

async function generate(pane, prompt) {
  const model = $(`play-checkpoint-${pane}`).value || $(`play-model-${pane}`).value;
  const output = $(`play-output-${pane}`);
  const meta = $(`play-meta-${pane}`);
  const chat = chatMode();
  delete output.dataset.done;
  if (chat) showConversation(pane, prompt);
  else output.replaceChildren("Generating…");
  meta.textContent = "";
  const started = performance.now();
  const body = chat
    ? { model, messages: chatMessages($("play-system").value, conversations[pane], prompt),
        max_completion_tokens: maxTokens(), ...samplingParams() }
    : { model, prompt, max_tokens: maxTokens(), ...samplingParams() };
  try {
    // Streamed: the text shows as the model writes it.
    let choice;
    if (chat) {
      choice = await streamText("/v1/chat/completions", body, (text) => showConversation(pane, prompt, text));
      conversations[pane].push({ role: "user", content: prompt }, { role: "assistant", content: choice.text });
      showConversation(pane);
    } else {
      const show = (text) => output.replaceChildren(el("b", {}, prompt), text);
      choice = await streamText("/v1/completions", body, show);
      show(choice.text);
    }
    const tokens = choice.usage ? `${choice.usage.completion_tokens} tokens · ` : "";
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    meta.textContent = `${model} · ${tokens}finish: ${choice.finish_reason} · ${seconds} s`;
    output.dataset.done = "true";
  } catch (err) {
    if (chat) showConversation(pane);
    else output.replaceChildren();
    throw err;
  }
}

export function initPlayground() {
  $("play-compare").addEventListener("change", showPanes);
  $("play-chat").addEventListener("change", showMode);
  $("play-clear").addEventListener("click", clearChat);
  for (const pane of PANES) {
    $(`play-model-${pane}`).addEventListener("change", () => {
      conversations[pane] = []; // another model: its conversation starts afresh
      if (chatMode()) showConversation(pane);
      guarded(() => fillWeights(pane));
    });
  }
  $("play-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const panes = $("play-compare").checked ? PANES : ["a"];
    const prompt = $("play-prompt").value;
    if (chatMode()) $("play-prompt").value = ""; // the message moves into the conversation
    for (const pane of panes) guarded(() => generate(pane, prompt));
  });
}
