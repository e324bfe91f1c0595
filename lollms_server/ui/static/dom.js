// Small DOM helpers shared by the views (text only: nothing here parses HTML).

export const $ = (id) => document.getElementById(id);

/** An element with ``text`` as its textContent and the given class and attributes. */
export function element(tag, { text, className, attrs } = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

/** Fill ``select`` with ``options`` ([value, label]); choose the previous choice if still there
 * (unless ``keep`` is false), else ``preferred``. */
export function fillSelect(select, options, preferred, { keep = true } = {}) {
  const previous = (keep && select.value) || preferred;
  select.replaceChildren(...options.map(([value, label]) => element("option", { text: label, attrs: { value } })));
  if (options.some(([value]) => value === previous)) select.value = previous;
}

/** Seconds, short ("0.42 s"). */
export function seconds(value) {
  return typeof value === "number" ? `${value.toFixed(2)} s` : "–";
}

/** A number or "" from a number input. */
export function numberOf(input) {
  return input.value.trim() === "" ? undefined : Number(input.value);
}
