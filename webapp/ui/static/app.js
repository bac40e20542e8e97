// The page: loads the server's capabilities into the form, submits jobs through the native
// async API, and wires the queue panel, the gallery, the mask painter and the API-key dialog.

import { api, apiKey, setApiKey } from "./api.js";
import { $ } from "./dom.js";
import { GenerationForm } from "./form.js";
import { Gallery } from "./gallery.js";
import { JobPanel } from "./jobs.js";
import { MaskPainter } from "./mask.js";

const form = new GenerationForm($("generate-form"));
const gallery = new Gallery($("results"), $("results-empty"), reuse);
const jobs = new JobPanel($("job-list"), $("queue-empty"), (record) => gallery.add(record), askForKey);
const painter = new MaskPainter((mask) => form.setImage("mask_image", mask));

function reuse(record) {
  form.fill(record.mode, record.body);
  $("seed").value = record.items[0]?.seed ?? record.body.seed ?? -1;
  $("prompt").focus();
}

function showError(message) {
  $("form-error").textContent = message;
  $("form-error").hidden = !message;
}

async function connect() {
  try {
    const caps = await api.capabilities();
    form.setCapabilities(caps);
    const count = caps.models.length;
    $("server-status").textContent = `${count} model${count === 1 ? "" : "s"} served`;
    $("generate").disabled = false;
    jobs.resume();
  } catch (err) {
    $("server-status").textContent = err.message;
    if (err.status === 401) askForKey();
  }
}

function askForKey() {
  const dialog = $("key-dialog");
  if (dialog.open) return;
  $("api-key").value = apiKey();
  $("key-error").hidden = !apiKey();
  $("key-error").textContent = apiKey() ? "The server refused this key." : "";
  dialog.showModal();
}

$("key-dialog").addEventListener("close", () => {
  if ($("key-dialog").returnValue !== "save") return;
  setApiKey($("api-key").value.trim());
  connect();
});
$("key-button").addEventListener("click", askForKey);

$("generate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const { mode, body } = form.request();
  const button = $("generate");
  button.disabled = true;
  try {
    const submitted = await api.submit(mode, body);
    jobs.track({ id: submitted.id, mode, body, submitted: Date.now() });
  } catch (err) {
    if (err.status === 401) askForKey();
    showError(err.message);
  } finally {
    button.disabled = false;
  }
});

$("seed-random").addEventListener("click", () => { $("seed").value = -1; });
$("seed-reuse").addEventListener("click", () => {
  const seed = gallery.latestSeed();
  if (seed !== null) $("seed").value = seed;
});
new MutationObserver(() => {
  $("seed-reuse").disabled = gallery.latestSeed() === null;
}).observe($("results"), { childList: true });
$("mask-paint").addEventListener("click", () => painter.open(form.images.init_image));
$("history-clear").addEventListener("click", () => gallery.clear());

$("generate").disabled = true;
gallery.load();
connect();
