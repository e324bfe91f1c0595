// The dashboard (admin keys): pools, slots, queue and waits, loaded models, per-key usage,
// polled from /api/v1/status and /api/v1/queue; model pulls and jobs when the server has them.

import { ApiError, api, isAbort, streamEvents } from "./api.js";
import { $, element, fillSelect, seconds } from "./dom.js";

const POLL_MS = 1000;

function row(cells, header = false) {
  const tr = element("tr");
  cells.forEach((cell, index) => tr.append(element(header || index === 0 ? "th" : "td", { text: cell, attrs: index === 0 && !header ? { scope: "row" } : { scope: "col" } })));
  return tr;
}

function table(caption, head, rows) {
  const node = element("table");
  node.append(element("caption", { text: caption }));
  const thead = element("thead");
  thead.append(row(head, true));
  const tbody = element("tbody");
  for (const cells of rows) tbody.append(row(cells));
  node.append(thead, tbody);
  return node;
}

/** True when ``error`` says the route does not exist on this server (404/405). */
function absent(error) {
  return error instanceof ApiError && (error.status === 404 || error.status === 405);
}

export class DashboardView {
  constructor(catalog) {
    this.catalog = catalog;
    this.timer = null;
    this.pulls = new Map();
    this.absent = new Set(); // optional APIs this server answered 404/405 for: not asked again
    $("pull-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.startPull();
    });
  }

  start() {
    if (this.timer) return;
    const tick = async () => {
      await this.poll();
      if (this.timer) this.timer = setTimeout(tick, POLL_MS);
    };
    this.timer = setTimeout(tick, 0);
    fillSelect($("pull-binding"), Object.keys(this.catalog.instances).map((name) => [name, name]));
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  async poll() {
    const summary = $("dashboard-summary");
    try {
      const [status, queue] = await Promise.all([api("/api/v1/status"), api("/api/v1/queue")]);
      this.renderPools(status);
      this.renderKeys(queue.keys || {});
      const queued = status.pools.reduce((total, pool) => total + (pool.queued || 0), 0);
      const active = status.pools.reduce((total, pool) => total + (pool.active || 0), 0);
      summary.textContent = `Version ${status.version} · up ${Math.round(status.uptime_seconds)} s · ${active} running · ${queued} queued · updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      summary.textContent = `Status unavailable: ${error.message}`;
    }
    await Promise.all([this.pollPulls(), this.pollJobs()]);
  }

  renderPools(status) {
    const cards = status.pools.map((pool) => {
      const card = element("section", { className: "card pool", attrs: { "aria-label": `Pool ${pool.name}` } });
      card.dataset.pool = pool.name;
      card.append(element("h3", { text: `Pool ${pool.name}` }));
      const stats = element("dl", { className: "stats" });
      const facts = [
        ["Active slots", `${pool.active} / ${pool.limit}`],
        ["Queue", `${pool.queued} / ${pool.queue_size}`],
        ["Average wait", seconds(pool.average_wait_seconds)],
        ["Longest wait", seconds(pool.max_wait_seconds)],
        ["Served", pool.served],
        ["Rejected / timed out", `${pool.rejected ?? 0} / ${pool.timed_out ?? 0}`],
        ["Memory", pool.memory_budget_mb ? `${pool.memory_used_mb} / ${pool.memory_budget_mb} MB` : `${pool.memory_used_mb ?? 0} MB`],
        ["Host", pool.isolation + (pool.host_up === false ? " (down)" : "")],
      ];
      for (const [name, value] of facts) {
        const item = element("div", { className: `stat stat-${name.toLowerCase().replace(/[^a-z]+/g, "-")}` });
        item.append(element("dt", { text: name }), element("dd", { text: value }));
        stats.append(item);
      }
      card.append(stats);
      const waiting = pool.waiting || [];
      card.append(table("Waiting", ["Position", "Key", "Priority", "Waited"], waiting.map((w) => [w.position, w.key, w.priority, seconds(w.waited_seconds)])));
      const models = pool.models || [];
      card.append(table("Loaded models", ["Model", "Binding", "Footprint", "In use", "Idle"], models.map((m) => [m.model, m.binding, `${m.footprint_mb} MB`, m.in_use ? "yes" : "no", seconds(m.idle_seconds)])));
      return card;
    });
    $("dashboard-pools").replaceChildren(...cards, ...this.deviceCards(status.devices || {}));
  }

  // One card per device: its memory ledger (GET /api/v1/status "devices"), shared by every pool.
  deviceCards(devices) {
    return Object.entries(devices).map(([name, device]) => {
      const card = element("section", { className: "card pool device", attrs: { "aria-label": `Device ${name}` } });
      card.dataset.device = name;
      card.append(element("h3", { text: `Device ${name}` }));
      const stats = element("dl", { className: "stats" });
      const facts = [
        ["Reserved", `${device.reserved_mb} / ${device.limit_mb ?? "?"} MB`],
        ["Free now", device.free_mb === null ? "?" : `${device.free_mb} MB`],
        ["Kept free", `${device.reserve_mb} MB`],
        ["Waiting for memory", device.waiting],
        ["Evictions", Object.values(device.evictions || {}).reduce((a, b) => a + b, 0)],
        ["Refused (memory / too large)", `${device.rejections?.memory ?? 0} / ${device.rejections?.too_large ?? 0}`],
      ];
      for (const [label, value] of facts) {
        const item = element("div", { className: "stat" });
        item.append(element("dt", { text: label }), element("dd", { text: String(value) }));
        stats.append(item);
      }
      card.append(stats);
      const models = device.models || [];
      card.append(table("Reservations", ["Model", "Binding", "Pool", "MB", "Estimate", "State"], models.map((m) => [m.model, m.instance, m.pool, `${m.mb}`, `${m.estimate_mb}`, m.state])));
      return card;
    });
  }

  renderKeys(keys) {
    const rows = Object.entries(keys).map(([name, use]) => row([name, use.running, use.queued, use.requests_last_minute, use.tokens_last_minute]));
    $("dashboard-keys").querySelector("tbody").replaceChildren(...rows);
  }

  // Model pulls: GET /api/v1/models/pulls lists them; POST /api/v1/models/pull streams
  // info {file, completed, total} then final or error. Hidden when the server has no such API.
  async pollPulls() {
    if (this.absent.has("pulls")) return;
    try {
      const answer = await api("/api/v1/models/pulls");
      $("dashboard-pulls").hidden = false;
      const pulls = Array.isArray(answer) ? answer : answer.pulls || [];
      // GET /api/v1/models/pulls: {pulls: [{id, instance, ref, status, completed, total, error}]}
      for (const pull of pulls) this.pulls.set(pull.id, { label: `${pull.instance}: ${pull.ref}`, ...pull });
      this.renderPulls();
    } catch (error) {
      if (absent(error)) {
        $("dashboard-pulls").hidden = true;
        this.absent.add("pulls");
      }
    }
  }

  renderPulls() {
    const items = [...this.pulls.entries()].map(([name, pull]) => {
      const item = element("li");
      item.append(element("span", { text: `${pull.label || name}: ${pull.state || pull.status || ""} ${pull.file || ""}` }));
      if (pull.total) item.append(element("progress", { attrs: { max: pull.total, value: pull.completed || 0 } }));
      if (pull.error) item.append(element("span", { className: "message", text: ` ${typeof pull.error === "string" ? pull.error : pull.error.message}` }));
      return item;
    });
    $("pull-list").replaceChildren(...items);
  }

  async startPull() {
    const binding = $("pull-binding").value;
    const ref = $("pull-repo").value.trim();
    if (!ref) return;
    const label = `${binding}: ${ref}`;
    let key = label;
    this.pulls.set(key, { label, state: "starting" });
    this.renderPulls();
    const update = (entry) => {
      this.pulls.set(key, { ...this.pulls.get(key), ...entry });
      this.renderPulls();
    };
    try {
      // POST /api/v1/models/pull: info events {pull_id, file, completed, total}, then final or error
      await streamEvents("/api/v1/models/pull", { binding, ref }, (event) => {
        if (event.pull_id && key !== event.pull_id) {
          this.pulls.delete(key);
          key = event.pull_id;
        }
        if (event.type === "info") update({ label, state: "pulling", file: event.file, completed: event.completed, total: event.total });
        else if (event.type === "final") update({ label, state: "done", models: event.models });
        else if (event.type === "error") update({ label, state: "failed", error: event.error || event.content });
      });
    } catch (error) {
      if (!isAbort(error)) update({ label, state: "failed", error: error.message });
    }
  }

  // Jobs: GET /api/v1/jobs (hidden when the server has no jobs API).
  async pollJobs() {
    if (this.absent.has("jobs")) return;
    try {
      const answer = await api("/api/v1/jobs");
      $("dashboard-jobs").hidden = false;
      // GET /api/v1/jobs: {object: "list", data: [{id, status, generation_type, queue_position, progress}]}
      const jobs = Array.isArray(answer) ? answer : answer.data || [];
      $("job-list").replaceChildren(...jobs.map((job) => {
        const where = job.status === "queued" && job.queue_position ? ` (position ${job.queue_position})` : "";
        const item = element("li", { text: `${job.id}: ${job.generation_type} ${job.status}${where}` });
        if (job.progress) item.append(element("progress", { attrs: { max: job.progress.total, value: job.progress.step } }));
        return item;
      }));
    } catch (error) {
      if (absent(error)) {
        $("dashboard-jobs").hidden = true;
        this.absent.add("jobs");
      }
    }
  }
}
