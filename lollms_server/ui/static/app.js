// Entry point: sign-in (the key lives in sessionStorage only), the tabs, and the views.

import { ApiError, api, forgetKey, health, storedKey, storeKey } from "./api.js";
import { Catalog } from "./catalog.js";
import { ChatView } from "./chat.js";
import { DashboardView } from "./dashboard.js";
import { $ } from "./dom.js";
import { MediaView } from "./media.js";

const catalog = new Catalog();
const views = { chat: new ChatView(catalog), media: new MediaView(catalog), dashboard: new DashboardView(catalog) };
let isAdmin = false;

function show(name) {
  for (const id of ["signin", "chat", "media", "dashboard"]) $(`view-${id}`).hidden = id !== name;
  for (const tab of document.querySelectorAll("#tabs .tab")) {
    if (tab.dataset.view === name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  if (name === "dashboard") views.dashboard.start();
  else views.dashboard.stop();
}

/** Check the key with real calls: list_bindings (generate scope), then status (admin scope). */
async function signIn(key) {
  const message = $("signin-message");
  message.textContent = "Checking the key…";
  if (key !== null) storeKey(key);
  let canGenerate = true;
  try {
    await catalog.load();
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      canGenerate = false;
    } else {
      forgetKey();
      message.textContent = error instanceof ApiError && error.status === 401 ? "This API key is not valid." : `Cannot reach the server: ${error.message}`;
      return false;
    }
  }
  try {
    await api("/api/v1/status");
    isAdmin = true;
  } catch (_) {
    isAdmin = false;
  }
  if (!canGenerate && !isAdmin) {
    forgetKey();
    message.textContent = "This key has neither the generate nor the admin scope.";
    return false;
  }
  views.chat.notice.admin = isAdmin; // admins get the no-model notice's pull button
  if (canGenerate) await Promise.all([views.chat.refresh(), views.media.refresh()]);
  message.textContent = "";
  $("api-key").value = "";
  $("tab-dashboard").hidden = !isAdmin;
  $("tab-chat").hidden = $("tab-media").hidden = !canGenerate;
  $("tabs").hidden = false; // only now: the views are ready
  show(canGenerate ? "chat" : "dashboard");
  return true;
}

function signOut() {
  views.chat.clear();
  $("media-results").replaceChildren();
  views.dashboard.stop();
  forgetKey();
  $("tabs").hidden = true;
  show("signin");
  $("api-key").focus();
}

async function start() {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) {
      $("signin-message").textContent = "Enter an API key.";
      return;
    }
    signIn(key);
  });
  $("sign-out").addEventListener("click", signOut);
  for (const tab of document.querySelectorAll("#tabs .tab")) tab.addEventListener("click", () => show(tab.dataset.view));
  let keyRequired = true;
  try {
    keyRequired = (await health()).api_key_required !== false;
  } catch (_) {
    // keep asking for a key
  }
  if (storedKey() || !keyRequired) {
    if (await signIn(null)) return;
  }
  show("signin");
  $("api-key").focus();
}

start();
