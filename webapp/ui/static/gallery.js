// Finished results and their parameters, kept in this browser's IndexedDB so the history
// survives a reload (and the server's job retention): newest first, each with download,
// "Reuse parameters" and "Delete".

import { button } from "./dom.js";

const DB_NAME = "jaxvideo";
const STORE = "results";

function openDb() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id" });
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function transact(db, mode, work) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const result = work(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(result.result);
    tx.onerror = () => reject(tx.error);
  });
}

export class Gallery {
  // `onReuse(record)`: fill the form from a record's request.
  constructor(list, empty, onReuse) {
    this.list = list;
    this.empty = empty;
    this.onReuse = onReuse;
    this.urls = new Map(); // record id -> its blob: URLs, revoked when the card goes
    this.db = openDb();
  }

  async load() {
    const records = await transact(await this.db, "readonly", (s) => s.getAll());
    records.sort((a, b) => a.created - b.created);
    for (const record of records) this.render(record);
  }

  // record: {id, created, mode, body, prompt, kind: "image"|"video", items: [{blob, seed,
  // name}], fps, frame_count, step_cache}
  async add(record) {
    await transact(await this.db, "readwrite", (s) => s.put(record));
    this.render(record);
  }

  async remove(id) {
    await transact(await this.db, "readwrite", (s) => s.delete(id));
    this.drop(id);
  }

  async clear() {
    await transact(await this.db, "readwrite", (s) => s.clear());
    for (const id of [...this.urls.keys()]) this.drop(id);
  }

  latestSeed() {
    const seed = this.list.firstElementChild?.dataset.seed;
    return seed ? Number(seed) : null;
  }

  drop(id) {
    for (const url of this.urls.get(id) || []) URL.revokeObjectURL(url);
    this.urls.delete(id);
    this.list.querySelector(`[data-id="${CSS.escape(id)}"]`)?.remove();
    this.empty.hidden = this.list.children.length > 0;
  }

  render(record) {
    this.drop(record.id);
    const card = document.createElement("li");
    card.className = "card";
    card.dataset.id = record.id;
    card.dataset.seed = record.items[0]?.seed ?? "";
    const urls = [];
    const media = document.createElement("div");
    media.className = "media";
    for (const item of record.items) {
      const url = URL.createObjectURL(item.blob);
      urls.push(url);
      media.append(mediaElement(record, item, url));
    }
    const caption = document.createElement("p");
    caption.className = "caption";
    caption.textContent = record.prompt || "(no prompt)";
    const meta = document.createElement("p");
    meta.className = "muted";
    const seeds = record.items.map((i) => i.seed).join(", ");
    const size = `${record.body.width ?? ""}×${record.body.height ?? ""}`;
    meta.textContent = `${record.body.model} · ${size} · seed ${seeds}` +
      (record.kind === "video" ? ` · ${record.frame_count} frames at ${record.fps} fps` : "");
    const actions = document.createElement("div");
    actions.className = "row";
    record.items.forEach((item, i) => {
      const link = document.createElement("a");
      link.href = urls[i];
      link.download = item.name;
      link.textContent = record.items.length > 1 ? `Download ${i + 1}` : "Download";
      actions.append(link);
    });
    actions.append(
      button("Reuse parameters", () => this.onReuse(record)),
      button("Delete", () => this.remove(record.id), `Delete result: ${record.prompt}`),
    );
    card.append(media, caption, meta, actions);
    this.urls.set(record.id, urls);
    this.list.prepend(card);
    this.empty.hidden = true;
  }
}

function mediaElement(record, item, url) {
  const label = record.prompt || "generated without a prompt";
  if (record.kind === "video" && item.blob.type !== "image/webp") {
    const video = document.createElement("video");
    video.src = url;
    video.controls = video.loop = video.muted = video.playsInline = true;
    video.setAttribute("aria-label", label);
    return video;
  }
  const img = document.createElement("img"); // an animated WebP plays as an image
  img.src = url;
  img.alt = label;
  img.loading = "lazy";
  return img;
}
