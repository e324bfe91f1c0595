// The chat's "no model yet" notice: while the default text binding has no model (a fresh install
// offline, or its first-run pull still running), it shows what the server says to do (the command
// and the folder to copy a GGUF into), a button that pulls the default model (admin keys), and the
// pull's progress, instead of a chat that errors. GET /api/v1/models/default, POST .../default/pull.

import { api } from "./api.js";
import { $ } from "./dom.js";

const POLL_MS = 1000;

export class NoModelNotice {
  constructor(catalog, onReady) {
    this.catalog = catalog;
    this.onReady = onReady;
    this.admin = false;
    this.timer = null;
    this.state = null;
    $("no-model-pull").addEventListener("click", () => this.pull());
  }

  /** Whether the chat's chosen binding is the default text binding (the one the notice is about). */
  concernsChoice() {
    const chosen = $("chat-binding").value;
    return !chosen || chosen === this.catalog.defaults.ttt_binding;
  }

  async check() {
    clearTimeout(this.timer);
    this.timer = null;
    try {
      this.state = await api("/api/v1/models/default");
    } catch (_) {
      this.state = null; // an older server, or no generate scope: no notice
    }
    this.render();
    if (this.state && this.state.status === "pulling") this.timer = setTimeout(() => this.check(), POLL_MS);
  }

  render() {
    const state = this.state;
    const missing = Boolean(state && state.status !== "ready" && this.concernsChoice());
    $("no-model").hidden = !missing;
    if (missing !== Boolean(this.wasMissing)) {
      $("chat-send").disabled = missing; // no chat that could only error
      $("chat-input").disabled = missing;
    }
    if (!missing) {
      if (state && state.status === "ready" && this.wasMissing) this.onReady();
      this.wasMissing = false;
      return;
    }
    this.wasMissing = true;
    const pull = state.pull;
    const pulling = state.status === "pulling";
    $("no-model-message").textContent = pulling
      ? `Downloading the default model ${state.default_ref}…`
      : state.message || `Binding '${state.binding}' has no model yet.`;
    const progress = $("no-model-progress");
    progress.hidden = !(pulling && pull && pull.total);
    if (pull && pull.total) {
      progress.max = pull.total;
      progress.value = pull.completed || 0;
    }
    const button = $("no-model-pull");
    button.hidden = !this.admin || pulling;
    button.textContent = `Pull ${state.default_ref}`;
  }

  async pull() {
    const button = $("no-model-pull");
    button.disabled = true;
    try {
      this.state = await api("/api/v1/models/default/pull", { method: "POST" });
      $("no-model-error").textContent = "";
    } catch (error) {
      $("no-model-error").textContent = error.message;
    } finally {
      button.disabled = false;
    }
    await this.check();
  }
}
