// The queue panel: every job this page submitted, polled until it ends, with its queue
// position, per-step progress and ETA, and a Cancel button while it is queued or running.
// Unfinished jobs are remembered in localStorage, so a reload picks up their polling.

import { api } from "./api.js";
import { button } from "./dom.js";
import { base64Blob, IMAGE_TYPES } from "./images.js";

const PENDING = "jaxvideo.pendingJobs";
const POLL_MS = 400;
const ACTIVE = new Set(["queued", "generating"]);

export class JobPanel {
  // `onResult(record)`: a finished job's result, for the gallery.
  constructor(list, empty, onResult, onAuthNeeded) {
    this.list = list;
    this.empty = empty;
    this.onResult = onResult;
    this.onAuthNeeded = onAuthNeeded;
    this.jobs = new Map(); // id -> {id, mode, body, submitted, status, view, eta, element}
    this.timer = null;
  }

  resume() {
    for (const saved of JSON.parse(localStorage.getItem(PENDING) || "[]")) this.track(saved);
  }

  track({ id, mode, body, submitted }) {
    if (this.jobs.has(id)) return; // resumed again after the key was entered
    const job = { id, mode, body, submitted, status: "queued", firstStep: null };
    job.element = this.renderShell(job);
    this.jobs.set(id, job);
    this.list.prepend(job.element);
    this.empty.hidden = true;
    this.save();
    this.schedule(0);
  }

  save() {
    const pending = [...this.jobs.values()].filter((j) => ACTIVE.has(j.status))
      .map(({ id, mode, body, submitted }) => ({ id, mode, body, submitted }));
    localStorage.setItem(PENDING, JSON.stringify(pending));
  }

  schedule(delay = POLL_MS) {
    if (this.timer === null) this.timer = setTimeout(() => this.poll(), delay);
  }

  async poll() {
    this.timer = null;
    const active = [...this.jobs.values()].filter((j) => ACTIVE.has(j.status));
    await Promise.all(active.map((job) => this.refresh(job)));
    if ([...this.jobs.values()].some((j) => ACTIVE.has(j.status))) this.schedule();
  }

  async refresh(job) {
    let view;
    try {
      view = await api.job(job.id);
    } catch (err) {
      if (err.status === 401) return this.onAuthNeeded();
      if (err.status === 404 || err.status === 410) {
        this.update(job, { status: "failed", error: { message: "the server no longer has this job" } });
      }
      return; // unreachable for now: try again at the next poll
    }
    if (view.status === "completed" && view.result) await this.onResult(toRecord(job, view));
    this.update(job, view);
  }

  async cancel(job) {
    try {
      this.update(job, await api.cancel(job.id));
    } catch (err) {
      job.element.querySelector(".job-error").textContent = err.message;
    }
  }

  update(job, view) {
    job.status = view.status;
    const el = job.element;
    el.dataset.status = view.status;
    const progress = view.progress || {};
    const bar = el.querySelector("progress");
    const text = el.querySelector(".job-status");
    if (view.status === "queued") {
      text.textContent = view.queue_position ? `Queued (position ${view.queue_position})` : "Queued";
    } else if (view.status === "generating") {
      const { step = 0, total = 0, phase } = progress;
      if (total) {
        bar.max = total;
        bar.value = step;
      }
      text.textContent = phase === "loading_model" ? "Loading the model" : !total ?
        "Generating: starting" : `Generating: step ${step} of ${total}${this.eta(job, step, total)}`;
    } else if (view.status === "completed") {
      bar.max = 1;
      bar.value = 1;
      text.textContent = "Completed";
    } else {
      text.textContent = view.status === "cancelled" ? "Cancelled" : "Failed";
      const error = view.error;
      if (error && view.status === "failed") {
        el.querySelector(".job-error").textContent = error.message || error.code || "";
      }
    }
    el.querySelector(".cancel").hidden = !ACTIVE.has(view.status);
    this.save();
  }

  // " (about N s left)", from the time the steps have taken so far.
  eta(job, step, total) {
    const now = performance.now();
    if (step <= 0 || !total) return "";
    if (!job.firstStep || step < job.firstStep.step) job.firstStep = { step, at: now };
    const done = step - job.firstStep.step;
    if (done <= 0) return "";
    const perStep = (now - job.firstStep.at) / done;
    return ` (about ${Math.ceil(((total - step) * perStep) / 1000)} s left)`;
  }

  renderShell(job) {
    const el = document.createElement("li");
    el.className = "job";
    el.dataset.id = job.id;
    const title = document.createElement("p");
    title.className = "job-title";
    title.textContent = `${job.mode === "vid_gen" ? "Video" : "Image"}: ${job.body.prompt || "(no prompt)"}`;
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = 0;
    bar.setAttribute("aria-label", `Progress of ${job.body.prompt || "job"}`);
    const status = document.createElement("p");
    status.className = "job-status";
    status.setAttribute("aria-live", "polite");
    status.textContent = "Submitted";
    const error = document.createElement("p");
    error.className = "job-error error";
    const cancel = button("Cancel", () => this.cancel(job));
    cancel.classList.add("cancel");
    el.append(title, bar, status, error, cancel);
    return el;
  }
}

function toRecord(job, view) {
  const result = view.result;
  const base = {
    id: job.id,
    created: Date.now(),
    mode: job.mode,
    body: job.body,
    prompt: job.body.prompt || "",
    step_cache: result.step_cache || null,
  };
  if (job.mode === "vid_gen") {
    const blob = base64Blob(result.b64_json, result.mime_type);
    return {
      ...base,
      kind: "video",
      fps: result.fps,
      frame_count: result.frame_count,
      items: [{ blob, seed: result.seed, name: `${job.id}.${result.output_format}` }],
    };
  }
  const type = IMAGE_TYPES[result.output_format] || "image/png";
  return {
    ...base,
    kind: "image",
    items: result.images.map((image) => ({
      blob: base64Blob(image.b64_json, type),
      seed: image.seed,
      name: `${job.id}-${image.index}.${result.output_format}`,
    })),
  };
}
