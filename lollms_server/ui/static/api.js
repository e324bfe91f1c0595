// The page's only door to the server: fetch with the signed-in key, JSON errors as ApiError,
// and a Server-Sent Events reader over fetch (an AbortController stops it; the server then
// cancels the generation and frees its slot).

const KEY_STORAGE = "lollms_server.api_key";

export class ApiError extends Error {
  constructor(status, message, type) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function storeKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

function headers(extra) {
  const result = { ...extra };
  const key = storedKey();
  if (key) result["X-API-Key"] = key;
  return result;
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let type;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      type = body.error.type;
    }
  } catch (_) {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, type);
}

/** One JSON call; throws ApiError for a non-2xx answer. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** The server's public health answer (no key needed). */
export async function health() {
  const response = await fetch("/health");
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/**
 * POST ``body`` and call ``onEvent(event)`` for every ``data:`` event of the answer, in order.
 * Resolves when the stream ends; rejects with ApiError for a non-2xx answer, or with an
 * AbortError when ``signal`` aborts.
 */
export async function streamEvents(path, body, onEvent, signal) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data && data !== "[DONE]") onEvent(JSON.parse(data));
    }
  }
}

/** True when ``error`` is the rejection of an aborted fetch. */
export function isAbort(error) {
  return error && error.name === "AbortError";
}

/** A data: URL for base64 ``data`` of ``mime``. */
export function dataUrl(mime, data) {
  return `data:${mime || "application/octet-stream"};base64,${data}`;
}

/** The raw base64 of a File or Blob (no data: prefix), as the API wants it. */
export function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

/** Parse a JSON-object text field ("" is {}); throws Error with a readable message. */
export function parseObject(text, label) {
  if (!text.trim()) return {};
  let value;
  try {
    value = JSON.parse(text);
  } catch (_) {
    throw new Error(`${label} must be a JSON object.`);
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) throw new Error(`${label} must be a JSON object.`);
  return value;
}
