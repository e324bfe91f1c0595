// The chat view: pickers, parameters, a conversation kept in the page, streamed answers
// rendered as Markdown (text only), Stop, and the usage and timings of each answer.

import { isAbort, parseObject, streamEvents } from "./api.js";
import { $, element, fillSelect, numberOf, seconds } from "./dom.js";
import { NoModelNotice } from "./firstrun.js";
import { renderMarkdown } from "./markdown.js";

/** The status line's text for a queued / started / progress ``info`` event. */
export function describeInfo(event) {
  const meta = event.metadata || {};
  if (meta.queue_position !== undefined) {
    const eta = meta.eta_seconds ? ` (about ${Math.round(meta.eta_seconds)} s)` : "";
    return `Queued: position ${meta.queue_position}${eta}`;
  }
  if (meta.step !== undefined) return `Step ${meta.step} of ${meta.total}`;
  if (meta.model) return `Running on ${meta.binding} / ${meta.model}`;
  return typeof event.content === "string" ? event.content : "";
}

export class ChatView {
  constructor(catalog) {
    this.catalog = catalog;
    this.turns = [];
    this.controller = null;
    $("chat-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    $("chat-input").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.send();
      }
    });
    $("chat-stop").addEventListener("click", () => this.stop());
    $("chat-clear").addEventListener("click", () => this.clear());
    $("chat-binding").addEventListener("change", () => {
      this.notice.render();
      this.catalog.fillModels("ttt", $("chat-binding"), $("chat-model"));
    });
    this.notice = new NoModelNotice(catalog, () => this.modelArrived());
  }

  /** The default text model is there (pulled, or copied in): the pickers learn it. */
  async modelArrived() {
    this.catalog.models.clear();
    await this.catalog.load();
    await this.catalog.fillPickers("ttt", $("chat-binding"), $("chat-model"));
  }

  async refresh() {
    await this.catalog.fillPickers("ttt", $("chat-binding"), $("chat-model"));
    await this.notice.check();
    const personalities = this.catalog.personalities.map((name) => [name, name]);
    fillSelect($("chat-personality"), [["", "none"], ...personalities], this.catalog.defaults.personality || "");
  }

  clear() {
    this.stop();
    this.turns = [];
    $("chat-messages").replaceChildren();
    $("chat-status").textContent = "";
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  request(prompt) {
    const parameters = parseObject($("chat-extra").value, "Other parameters");
    for (const [name, input] of [["temperature", "chat-temperature"], ["max_tokens", "chat-max-tokens"], ["seed", "chat-seed"]]) {
      const value = numberOf($(input));
      if (value !== undefined) parameters[name] = value;
    }
    const inputs = [];
    const system = $("chat-system").value.trim();
    if (system) inputs.push({ type: "text", role: "system_context", data: system });
    for (const turn of this.turns) inputs.push({ type: "text", role: turn.role, data: turn.content });
    inputs.push({ type: "text", role: "user_prompt", data: prompt });
    const body = { input_data: inputs, stream: true, generation_type: "ttt", parameters };
    if ($("chat-binding").value) body.binding_name = $("chat-binding").value;
    if ($("chat-model").value) body.model_name = $("chat-model").value;
    if ($("chat-personality").value) body.personality = $("chat-personality").value;
    return body;
  }

  addMessage(role, text) {
    const item = element("li", { className: `message ${role}` });
    item.append(element("span", { className: "who", text: role === "user" ? "You" : "Assistant" }));
    const content = element("div", { className: "content" });
    content.dataset.raw = text;
    renderMarkdown(content, text);
    item.append(content);
    $("chat-messages").append(item);
    return item;
  }

  async send() {
    if (this.controller || !$("no-model").hidden) return;
    const prompt = $("chat-input").value;
    if (!prompt.trim()) return;
    const status = $("chat-status");
    let body;
    try {
      body = this.request(prompt);
    } catch (error) {
      status.textContent = error.message;
      return;
    }
    $("chat-input").value = "";
    this.addMessage("user", prompt);
    const answer = this.addMessage("assistant", "");
    answer.classList.add("streaming");
    const content = answer.querySelector(".content");
    const facts = element("p", { className: "facts" });
    answer.append(facts);
    this.controller = new AbortController();
    $("chat-send").disabled = true;
    $("chat-stop").disabled = false;
    status.textContent = "Sending…";
    let text = "";
    let final = null;
    let failure = null;
    let firstTokenAt = null;
    const sentAt = performance.now();
    try {
      await streamEvents("/api/v1/generate", body, (event) => {
        if (event.type === "chunk" && typeof event.content === "string") {
          if (firstTokenAt === null) firstTokenAt = performance.now();
          text += event.content;
          content.dataset.raw = text;
          renderMarkdown(content, text);
        } else if (event.type === "info") {
          status.textContent = describeInfo(event);
        } else if (event.type === "final") {
          final = event;
        } else if (event.type === "error") {
          failure = event.content;
        }
      }, this.controller.signal);
      if (failure) status.textContent = `Error: ${failure}`;
      else status.textContent = final ? "Done." : "The stream ended early.";
    } catch (error) {
      status.textContent = isAbort(error) ? "Stopped." : `Error: ${error.message}`;
      if (isAbort(error)) answer.classList.add("stopped");
    } finally {
      this.controller = null;
      $("chat-send").disabled = false;
      $("chat-stop").disabled = true;
      answer.classList.remove("streaming");
    }
    const output = final && Array.isArray(final.content) ? final.content.find((item) => item.type === "text") : null;
    if (output && typeof output.data === "string" && output.data !== text) {
      text = output.data; // the final answer is the whole text (e.g. a workflow's)
      content.dataset.raw = text;
      renderMarkdown(content, text);
    }
    facts.textContent = this.facts(output, sentAt, firstTokenAt);
    if (text) this.turns.push({ role: "user", content: prompt }, { role: "assistant", content: text });
  }

  facts(output, sentAt, firstTokenAt) {
    if (!output) return firstTokenAt ? `first token ${seconds((firstTokenAt - sentAt) / 1000)}` : "";
    const meta = output.metadata || {};
    const usage = meta.usage || {};
    const timings = meta.timings || {};
    const parts = [];
    if (meta.model) parts.push(`${meta.binding} / ${meta.model}`);
    if (usage.prompt_tokens !== undefined) parts.push(`prompt ${usage.prompt_tokens} tokens`);
    if (usage.completion_tokens !== undefined) parts.push(`answer ${usage.completion_tokens} tokens`);
    parts.push(`queue wait ${seconds(timings.queue_wait)}`);
    if (firstTokenAt !== null) parts.push(`first token ${seconds((firstTokenAt - sentAt) / 1000)}`);
    if (usage.completion_tokens && timings.compute) parts.push(`${(usage.completion_tokens / timings.compute).toFixed(1)} tokens/s`);
    if (meta.seed !== undefined) parts.push(`seed ${meta.seed}`);
    return parts.join(" · ");
  }
}
