// What the key may use: binding instances (with their generation types), their models, personalities.

import { api } from "./api.js";
import { fillSelect } from "./dom.js";

export class Catalog {
  constructor() {
    this.instances = {};
    this.defaults = {};
    this.personalities = [];
    this.models = new Map();
  }

  async load() {
    const [bindings, defaults, personalities] = await Promise.all([
      api("/api/v1/list_bindings"),
      api("/api/v1/get_default_bindings").catch(() => ({ defaults: {} })),
      api("/api/v1/list_personalities").catch(() => ({ personalities: {} })),
    ]);
    this.instances = bindings.binding_instances || {};
    this.defaults = defaults.defaults || {};
    const listed = personalities.personalities || {};
    this.personalities = Array.isArray(listed) ? listed.map((item) => item.name || String(item)) : Object.keys(listed);
  }

  /** Instance names whose binding type serves ``kind`` (ttt, tti, ...). */
  instancesFor(kind) {
    return Object.entries(this.instances)
      .filter(([, instance]) => (instance.generation_types || []).includes(kind))
      .map(([name]) => name);
  }

  /** The model names of ``instance`` (cached; [] when the binding cannot list them). */
  async modelsOf(instance) {
    if (!this.models.has(instance)) {
      try {
        const answer = await api(`/api/v1/list_available_models/${encodeURIComponent(instance)}`);
        this.models.set(instance, (answer.models || []).map((model) => (typeof model === "string" ? model : model.name)).filter(Boolean));
      } catch (_) {
        this.models.set(instance, []);
      }
    }
    return this.models.get(instance);
  }

  /** Fill a binding select for ``kind`` and its model select; returns when both are filled. */
  async fillPickers(kind, bindingSelect, modelSelect) {
    const names = this.instancesFor(kind);
    fillSelect(bindingSelect, [["", "server default"], ...names.map((name) => [name, name])], this.defaults[`${kind}_binding`] || "");
    await this.fillModels(kind, bindingSelect, modelSelect);
  }

  async fillModels(kind, bindingSelect, modelSelect) {
    const instance = bindingSelect.value;
    const models = instance ? await this.modelsOf(instance) : [];
    const preferred = instance && instance === this.defaults[`${kind}_binding`] ? this.defaults[`${kind}_model`] : (this.instances[instance] || {}).model_name;
    // the default model for this kind over the one picked for another kind
    const options = [["", "binding default"], ...models.map((name) => [name, name])];
    fillSelect(modelSelect, options, preferred || "", { keep: !preferred });
  }
}
