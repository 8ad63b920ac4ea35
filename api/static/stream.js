// Streamed generation: POST with stream: true and read OpenAI's Server-Sent Events chunks.
import { request } from "./lib.js";

// Split an SSE text buffer into complete `data:` payloads and the unfinished rest.
export function sseMessages(buffer) {
  const messages = [];
  let end;
  while ((end = buffer.indexOf("\n\n")) >= 0) {
    const data = buffer
      .slice(0, end)
      .split("\n")
      .filter((line) => line.startsWith("data: "))
      .map((line) => line.slice(6))
      .join("\n");
    if (data) messages.push(data);
    buffer = buffer.slice(end + 2);
  }
  return { messages, rest: buffer };
}

// POST body to path as a stream; onChunk(payload) for every chunk; resolves with the usage
// once `data: [DONE]` arrives. An error message in the stream rejects with its text.
export async function streamChunks(path, body, onChunk) {
  const json = { ...body, stream: true, stream_options: { include_usage: true } };
  const response = await request(path, { method: "POST", json });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let usage = null;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    const { messages, rest } = sseMessages(buffer + value);
    buffer = rest;
    for (const data of messages) {
      if (data === "[DONE]") return usage;
      const payload = JSON.parse(data);
      if (payload.error) throw new Error(payload.error.message);
      if (payload.usage) usage = payload.usage;
      if (payload.choices && payload.choices.length) onChunk(payload);
    }
  }
  throw new Error(`POST ${path}: the stream ended before [DONE]`);
}

// The first choice of a streamed completion or chat completion, shown through onText(text so
// far) as it grows; resolves with { text, finish_reason, usage }, as a plain answer reads.
export async function streamText(path, body, onText) {
  let text = "";
  let finish = null;
  const usage = await streamChunks(path, body, (chunk) => {
    const choice = chunk.choices.find((c) => c.index === 0);
    if (!choice) return;
    text += choice.delta ? choice.delta.content || "" : choice.text;
    if (choice.finish_reason) finish = choice.finish_reason;
    onText(text);
  });
  return { text, finish_reason: finish, usage };
}
