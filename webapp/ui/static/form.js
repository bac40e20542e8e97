// The generation form: built from GET /sdcpp/v1/capabilities, it offers only what the chosen
// model takes (fields marked data-feature / data-mode are hidden otherwise), fills itself from
// the model's defaults, turns into a native img_gen / vid_gen request, and fills back from one.

import { $, button } from "./dom.js";
import { readImages } from "./images.js";

const ASPECTS = [[1, 1], [4, 3], [3, 4], [16, 9], [9, 16]];

export class GenerationForm {
  constructor(form) {
    this.form = form;
    this.caps = null;
    this.images = {}; // request field -> data URL (ref_images: a list of them)
    this.loras = []; // [{path, multiplier}]
    $("model").addEventListener("change", () => this.choose($("model").value));
    for (const radio of this.modeRadios()) {
      radio.addEventListener("change", () => this.choose($("model").value, radio.value));
    }
    $("size-preset").addEventListener("change", () => this.applyPreset());
    for (const id of ["width", "height"]) $(id).addEventListener("input", () => this.syncPreset());
    $("lora-add").addEventListener("click", () => this.addLora($("lora-name").value,
      Number($("lora-multiplier").value || 1)));
    for (const box of form.querySelectorAll("[data-image]")) this.wireImage(box);
  }

  modeRadios() {
    return [...this.form.querySelectorAll('input[name="mode"]')];
  }

  get mode() {
    return this.modeRadios().find((r) => r.checked)?.value || "img_gen";
  }

  get model() {
    return this.caps.models.find((m) => m.name === $("model").value);
  }

  setCapabilities(caps) {
    this.caps = caps;
    const current = $("model").value;
    $("model").replaceChildren(...caps.models.map((m) => option(m.name, `${m.name} (${m.family})`)));
    const loras = caps.loras || [];
    $("lora-name").replaceChildren(...loras.map((l) => option(l.path, l.name)));
    const keep = caps.models.some((m) => m.name === current) ? current : caps.model.name;
    this.choose(keep);
  }

  // Selects a model (and a mode it has) and resets the settings to its defaults.
  choose(name, mode) {
    $("model").value = name;
    const model = this.model;
    if (!model.modes.includes(mode)) mode = model.modes.includes(this.mode) ? this.mode : model.modes[0];
    for (const radio of this.modeRadios()) {
      radio.checked = radio.value === mode;
      radio.disabled = !model.modes.includes(radio.value);
    }
    $("mode-field").hidden = model.modes.length < 2;
    this.updateVisibility();
    this.applyDefaults(model.defaults_by_mode[mode]);
  }

  features() {
    const model = this.model;
    return model.features_by_mode[this.mode] || {};
  }

  updateVisibility() {
    const features = this.features();
    for (const el of this.form.querySelectorAll("[data-feature]")) {
      el.hidden = !features[el.dataset.feature];
    }
    for (const el of this.form.querySelectorAll("[data-mode]")) {
      el.hidden = el.dataset.mode !== this.mode;
    }
    const model = this.model;
    const limits = this.caps.limits;
    fill($("sampler"), model.samplers);
    fill($("high_sampler"), model.samplers);
    fill($("scheduler"), model.schedulers);
    fill($("cache_mode"), ["disabled", ...model.cache_modes]);
    fill($("output_format"), this.caps.output_formats_by_mode[this.mode] || []);
    for (const id of ["width", "height"]) {
      $(id).step = model.size_multiple;
      $(id).min = limits[`min_${id}`];
      $(id).max = limits[`max_${id}`];
    }
    $("steps").max = limits.max_steps;
    $("batch_count").max = limits.max_batch_count;
    $("video_frames").max = limits.max_video_frames;
    $("video_frames").step = model.frame_multiple || 1;
    $("mask-paint").disabled = !this.images.init_image;
  }

  applyDefaults(d) {
    const sp = d.sample_params;
    setValue("width", d.width);
    setValue("height", d.height);
    setValue("steps", sp.sample_steps);
    setValue("sampler", sp.sample_method);
    setValue("scheduler", sp.scheduler);
    setValue("guidance", sp.guidance.txt_cfg);
    setValue("distilled_guidance", sp.guidance.distilled_guidance);
    setValue("flow_shift", sp.flow_shift ?? "");
    setValue("slg_scale", sp.guidance.slg?.scale ?? 0);
    setValue("output_format", d.output_format);
    setValue("cache_mode", "disabled");
    setValue("cache_option", "");
    setValue("batch_count", d.batch_count ?? 1);
    setValue("video_frames", d.video_frames ?? "");
    setValue("fps", d.fps ?? "");
    setValue("strength", d.strength ?? 0.75);
    const high = d.high_noise_sample_params;
    if (high) {
      setValue("high_steps", high.sample_steps);
      setValue("high_sampler", high.sample_method);
      setValue("high_guidance", high.guidance.txt_cfg);
    }
    this.defaultSize = [d.width, d.height];
    this.buildPresets();
  }

  buildPresets() {
    const [w0, h0] = this.defaultSize;
    const m = this.model.size_multiple;
    const lim = this.caps.limits;
    const seen = new Set();
    const presets = [];
    for (const scale of [1, 2]) {
      for (const [a, b] of ASPECTS) {
        const area = w0 * h0 * scale * scale;
        const w = Math.round(Math.sqrt((area * a) / b) / m) * m;
        const h = Math.round(area / w / m) * m;
        const key = `${w}x${h}`;
        if (seen.has(key) || w < lim.min_width || w > lim.max_width ||
            h < lim.min_height || h > lim.max_height) continue;
        seen.add(key);
        presets.push(option(key, `${w}×${h} (${a}:${b})`));
      }
    }
    presets.push(option("custom", "Custom"));
    $("size-preset").replaceChildren(...presets);
    this.syncPreset();
  }

  applyPreset() {
    const value = $("size-preset").value;
    if (value === "custom") return;
    const [w, h] = value.split("x");
    setValue("width", w);
    setValue("height", h);
  }

  syncPreset() {
    const key = `${$("width").value}x${$("height").value}`;
    const known = [...$("size-preset").options].some((o) => o.value === key);
    $("size-preset").value = known ? key : "custom";
  }

  addLora(path, multiplier) {
    if (!path) return;
    this.loras = this.loras.filter((l) => l.path !== path).concat([{ path, multiplier }]);
    this.renderLoras();
  }

  renderLoras() {
    $("lora-list").replaceChildren(...this.loras.map((lora) => {
      const item = document.createElement("li");
      item.textContent = `${lora.path} × ${lora.multiplier}`;
      item.append(button("Remove", () => {
        this.loras = this.loras.filter((l) => l !== lora);
        this.renderLoras();
      }, `Remove LoRA ${lora.path}`));
      return item;
    }));
  }

  wireImage(box) {
    const field = box.dataset.image;
    const input = box.querySelector("input[type=file]");
    const take = async (files) => {
      const urls = await readImages(files);
      if (!urls.length) return;
      this.setImage(field, field === "ref_images" ? urls : urls[0]);
    };
    input.addEventListener("change", () => take(input.files));
    box.addEventListener("dragover", (event) => {
      event.preventDefault();
      box.classList.add("dragging");
    });
    box.addEventListener("dragleave", () => box.classList.remove("dragging"));
    box.addEventListener("drop", (event) => {
      event.preventDefault();
      box.classList.remove("dragging");
      take(event.dataTransfer.files);
    });
  }

  // `value`: a data URL (a list for ref_images), or null to clear the field.
  setImage(field, value) {
    if (value === null || (Array.isArray(value) && !value.length)) delete this.images[field];
    else this.images[field] = value;
    const box = this.form.querySelector(`[data-image="${field}"]`);
    const urls = value === null ? [] : [].concat(value);
    const preview = box.querySelector(".preview");
    preview.replaceChildren(...urls.map((url) => {
      const img = document.createElement("img");
      img.src = url;
      img.alt = `${box.querySelector("label").textContent} preview`;
      return img;
    }));
    if (urls.length) {
      preview.append(button("Remove", () => {
        box.querySelector("input[type=file]").value = "";
        this.setImage(field, null);
      }, `Remove ${box.querySelector("label").textContent}`));
    }
    $("mask-paint").disabled = !this.images.init_image;
  }

  // The native request body of what the form shows (hidden fields are not sent).
  request() {
    const features = this.features();
    const mode = this.mode;
    const guidance = { txt_cfg: num("guidance") };
    if (features.distilled_guidance) guidance.distilled_guidance = num("distilled_guidance");
    if (features.slg && num("slg_scale")) guidance.slg = { scale: num("slg_scale") };
    const sample = {
      sample_method: $("sampler").value,
      scheduler: $("scheduler").value,
      sample_steps: num("steps"),
      guidance,
    };
    if (features.flow_shift && $("flow_shift").value !== "") sample.flow_shift = num("flow_shift");
    const body = {
      model: $("model").value,
      prompt: $("prompt").value,
      negative_prompt: $("negative_prompt").value,
      width: num("width"),
      height: num("height"),
      seed: num("seed") ?? -1,
      sample_params: sample,
      output_format: $("output_format").value,
    };
    if (mode === "img_gen") body.batch_count = num("batch_count");
    else {
      body.video_frames = num("video_frames");
      body.fps = num("fps");
    }
    if (features.high_noise_sample_params) {
      body.high_noise_sample_params = {
        sample_method: $("high_sampler").value,
        sample_steps: num("high_steps"),
        guidance: { txt_cfg: num("high_guidance") },
      };
    }
    if (features.cache && $("cache_mode").value !== "disabled") {
      body.cache_mode = $("cache_mode").value;
      body.cache_option = $("cache_option").value;
    }
    if (features.lora && this.loras.length) body.lora = this.loras.map((l) => ({ ...l }));
    for (const field of ["init_image", "mask_image", "end_image", "ref_images"]) {
      if (features[field] && this.images[field]) body[field] = this.images[field];
    }
    if (body.init_image) body.strength = num("strength");
    for (const key of Object.keys(body)) if (body[key] === undefined) delete body[key];
    for (const key of Object.keys(sample)) if (sample[key] === undefined) delete sample[key];
    return { mode, body };
  }

  // Fills the form from a request this page sent ("reuse parameters").
  fill(mode, body) {
    if (this.caps.models.some((m) => m.name === body.model)) this.choose(body.model, mode);
    setValue("prompt", body.prompt ?? "");
    setValue("negative_prompt", body.negative_prompt ?? "");
    for (const id of ["width", "height", "seed", "batch_count", "video_frames", "fps",
      "output_format", "strength"]) {
      if (body[id] !== undefined) setValue(id, body[id]);
    }
    const sp = body.sample_params || {};
    if (sp.sample_steps !== undefined) setValue("steps", sp.sample_steps);
    if (sp.sample_method) setValue("sampler", sp.sample_method);
    if (sp.scheduler) setValue("scheduler", sp.scheduler);
    if (sp.flow_shift !== undefined) setValue("flow_shift", sp.flow_shift);
    const g = sp.guidance || {};
    if (g.txt_cfg !== undefined) setValue("guidance", g.txt_cfg);
    if (g.distilled_guidance !== undefined) setValue("distilled_guidance", g.distilled_guidance);
    if (g.slg?.scale !== undefined) setValue("slg_scale", g.slg.scale);
    const high = body.high_noise_sample_params;
    if (high) {
      setValue("high_steps", high.sample_steps);
      setValue("high_sampler", high.sample_method);
      setValue("high_guidance", high.guidance?.txt_cfg);
    }
    setValue("cache_mode", body.cache_mode || "disabled");
    setValue("cache_option", body.cache_option || "");
    this.loras = (body.lora || []).map((l) => ({ ...l }));
    this.renderLoras();
    for (const field of ["init_image", "mask_image", "end_image", "ref_images"]) {
      this.setImage(field, body[field] ?? null);
    }
    this.syncPreset();
  }
}

function option(value, label = value) {
  const el = document.createElement("option");
  el.value = value;
  el.textContent = label;
  return el;
}

function fill(select, values) {
  const current = select.value;
  select.replaceChildren(...values.map((v) => option(v)));
  if (values.includes(current)) select.value = current;
}

function setValue(id, value) {
  const el = $(id);
  if (el.tagName === "SELECT" && value !== undefined && value !== null &&
      ![...el.options].some((o) => o.value === String(value))) {
    el.append(option(String(value))); // a value the lists lack still shows what was sent
  }
  el.value = value ?? "";
}

// A number field's value; undefined when empty (the server's default applies).
function num(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}
