// The media view: images, image edits (upload, mask brush or mask upload), speech, transcription
// (upload or microphone), music and video; progress and queue position while waiting; every
// result shown with its parameters and a download link.

import { fileToBase64, isAbort, parseObject, streamEvents } from "./api.js";
import { $, element, numberOf } from "./dom.js";
import { describeInfo } from "./chat.js";
import { MaskPainter } from "./mask.js";

const NEEDS = {
  tti: ["prompt", "size", "steps"],
  i2i: ["prompt", "steps", "image"],
  tts: ["prompt"],
  stt: ["audio"],
  ttm: ["prompt"],
  ttv: ["prompt", "size", "steps"],
};
const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "audio/wav": "wav", "audio/x-wav": "wav", "audio/mpeg": "mp3", "video/mp4": "mp4", "image/gif": "gif" };

function blobUrl(mime, base64) {
  const bytes = Uint8Array.from(atob(base64), (ch) => ch.charCodeAt(0));
  return URL.createObjectURL(new Blob([bytes], { type: mime || "application/octet-stream" }));
}

export class MediaView {
  constructor(catalog) {
    this.catalog = catalog;
    this.controller = null;
    this.recorded = null;
    this.recorder = null;
    this.painter = new MaskPainter($("media-canvas"), $("media-brush"));
    $("media-type").addEventListener("change", () => this.refresh());
    $("media-binding").addEventListener("change", () => this.catalog.fillModels(this.kind(), $("media-binding"), $("media-model")));
    $("media-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.run();
    });
    $("media-stop").addEventListener("click", () => this.controller && this.controller.abort());
    $("media-image").addEventListener("change", () => this.loadImage());
    $("media-mask-clear").addEventListener("click", () => this.painter.clear());
    $("media-record").addEventListener("click", () => this.toggleRecording());
  }

  kind() {
    return $("media-type").value;
  }

  async refresh() {
    const needs = NEEDS[this.kind()];
    for (const node of document.querySelectorAll("#view-media [data-needs]")) node.hidden = !needs.includes(node.dataset.needs);
    $("media-canvas-wrap").hidden = !(needs.includes("image") && this.painter.hasImage());
    await this.catalog.fillPickers(this.kind(), $("media-binding"), $("media-model"));
  }

  async loadImage() {
    const file = $("media-image").files[0];
    if (!file) return;
    try {
      await this.painter.load(file);
      $("media-canvas-wrap").hidden = false;
    } catch (_) {
      $("media-status").textContent = "That file is not an image this browser can read.";
    }
  }

  async toggleRecording() {
    const status = $("media-record-status");
    if (this.recorder) {
      this.recorder.stop();
      return;
    }
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      status.textContent = "This browser cannot record here (it needs https or localhost).";
      return;
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const chunks = [];
      this.recorder = new MediaRecorder(stream);
      this.recorder.addEventListener("dataavailable", (event) => chunks.push(event.data));
      this.recorder.addEventListener("stop", () => {
        stream.getTracks().forEach((track) => track.stop());
        this.recorded = new Blob(chunks, { type: this.recorder.mimeType || "audio/webm" });
        this.recorder = null;
        $("media-record").textContent = "Record";
        status.textContent = `Recorded ${(this.recorded.size / 1024).toFixed(0)} KiB (used instead of the file).`;
      });
      this.recorder.start();
      $("media-record").textContent = "Stop recording";
      status.textContent = "Recording…";
    } catch (error) {
      status.textContent = `No microphone: ${error.message}`;
    }
  }

  async request() {
    const kind = this.kind();
    const needs = NEEDS[kind];
    const parameters = parseObject($("media-extra").value, "Other parameters");
    const numbers = [["seed", "media-seed"]];
    if (needs.includes("size")) numbers.push(["width", "media-width"], ["height", "media-height"]);
    if (needs.includes("steps")) numbers.push(["steps", "media-steps"]);
    for (const [name, id] of numbers) {
      const value = numberOf($(id));
      if (value !== undefined) parameters[name] = value;
    }
    const inputs = [];
    if (needs.includes("prompt")) inputs.push({ type: "text", role: "user_prompt", data: $("media-prompt").value });
    if (needs.includes("image")) {
      const image = $("media-image").files[0];
      if (!image) throw new Error("Choose an input image.");
      inputs.push({ type: "image", role: "input_image", data: await fileToBase64(image), mime_type: image.type || undefined });
      const maskFile = $("media-mask-file").files[0];
      if (maskFile) inputs.push({ type: "image", role: "mask_image", data: await fileToBase64(maskFile), mime_type: maskFile.type || undefined });
      else if (this.painter.hasMask()) inputs.push({ type: "image", role: "mask_image", data: await this.painter.maskBase64(), mime_type: "image/png" });
    }
    if (needs.includes("audio")) {
      const audio = this.recorded || $("media-audio").files[0];
      if (!audio) throw new Error("Choose an audio file or record one.");
      inputs.push({ type: "audio", role: "input_audio", data: await fileToBase64(audio), mime_type: audio.type || undefined });
    }
    const body = { generation_type: kind, input_data: inputs, stream: true, parameters };
    if ($("media-binding").value) body.binding_name = $("media-binding").value;
    if ($("media-model").value) body.model_name = $("media-model").value;
    return body;
  }

  async run() {
    if (this.controller) return;
    const status = $("media-status");
    const progress = $("media-progress");
    status.textContent = "Preparing…";
    let body;
    try {
      body = await this.request();
    } catch (error) {
      status.textContent = error.message;
      return;
    }
    this.controller = new AbortController();
    $("media-run").disabled = true;
    $("media-stop").disabled = false;
    status.textContent = "Sending…";
    let final = null;
    let failure = null;
    try {
      await streamEvents("/api/v1/generate", body, (event) => {
        if (event.type === "info") {
          status.textContent = describeInfo(event);
          const meta = event.metadata || {};
          if (meta.step !== undefined && meta.total) {
            progress.hidden = false;
            progress.max = meta.total;
            progress.value = meta.step;
          }
        } else if (event.type === "final") final = event;
        else if (event.type === "error") failure = event.content;
      }, this.controller.signal);
      status.textContent = failure ? `Error: ${failure}` : final ? "Done." : "The stream ended early.";
    } catch (error) {
      status.textContent = isAbort(error) ? "Stopped." : `Error: ${error.message}`;
    } finally {
      this.controller = null;
      progress.hidden = true;
      $("media-run").disabled = false;
      $("media-stop").disabled = true;
    }
    if (final && Array.isArray(final.content)) for (const output of final.content) this.show(output);
  }

  show(output) {
    const item = element("li", { className: "result" });
    const mime = output.mime_type || "";
    const meta = output.metadata || {};
    let player = null;
    if (output.type === "image") player = element("img", { attrs: { alt: `Generated image (seed ${meta.seed ?? "?"})` } });
    else if (output.type === "audio") player = element("audio", { attrs: { controls: "" } });
    else if (output.type === "video") player = element(mime.startsWith("image/") ? "img" : "video", { attrs: { controls: "", alt: "Generated video" } });
    if (player) {
      const url = blobUrl(mime, output.data);
      player.src = url;
      item.append(player);
      const extension = EXTENSIONS[mime] || "bin";
      item.append(element("a", { text: "Download", className: "download", attrs: { href: url, download: `${output.type}-${meta.seed ?? "result"}.${extension}` } }));
    } else {
      item.append(element("p", { className: "transcript", text: typeof output.data === "string" ? output.data : JSON.stringify(output.data) }));
    }
    const facts = { binding: meta.binding, model: meta.model, seed: meta.seed, ...(meta.parameters || {}) };
    const description = Object.entries(facts).filter(([, value]) => value !== undefined && value !== null).map(([key, value]) => `${key}: ${typeof value === "object" ? JSON.stringify(value) : value}`);
    item.append(element("p", { className: "facts", text: description.join(" · ") }));
    $("media-results").prepend(item);
  }
}
