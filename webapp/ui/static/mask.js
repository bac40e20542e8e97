// A brush to paint an inpainting mask over the init image. The canvas has the init image's
// size; painted pixels are opaque white on transparent, which the server reads as "repaint
// here" (a mask with transparency is its alpha channel).

import { $ } from "./dom.js";

export class MaskPainter {
  constructor(onDone) {
    this.canvas = $("mask-canvas");
    this.ctx = this.canvas.getContext("2d");
    this.onDone = onDone;
    this.drawing = false;
    this.painted = false;
    this.canvas.addEventListener("pointerdown", (e) => this.start(e));
    this.canvas.addEventListener("pointermove", (e) => this.move(e));
    for (const name of ["pointerup", "pointercancel", "pointerleave"]) {
      this.canvas.addEventListener(name, () => { this.drawing = false; });
    }
    $("mask-clear").addEventListener("click", () => this.clear());
    $("mask-done").addEventListener("click", () => this.finish());
  }

  // Opens the painter over `initImage` (a data URL).
  open(initImage) {
    const picture = new Image();
    picture.onload = () => {
      this.canvas.width = picture.naturalWidth;
      this.canvas.height = picture.naturalHeight;
      this.canvas.style.backgroundImage = `url("${initImage}")`;
      this.clear();
      $("mask-editor").hidden = false;
      this.canvas.scrollIntoView({ block: "nearest" });
    };
    picture.src = initImage;
  }

  clear() {
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    this.painted = false;
  }

  point(event) {
    const box = this.canvas.getBoundingClientRect();
    const scale = this.canvas.width / box.width;
    return [(event.clientX - box.left) * scale, (event.clientY - box.top) * scale, scale];
  }

  start(event) {
    this.drawing = true;
    this.canvas.setPointerCapture?.(event.pointerId);
    this.last = this.point(event);
    this.move(event);
  }

  move(event) {
    if (!this.drawing) return;
    const [x, y, scale] = this.point(event);
    const ctx = this.ctx;
    ctx.strokeStyle = ctx.fillStyle = "#fff";
    ctx.lineCap = "round";
    ctx.lineWidth = Number($("brush-size").value) * scale;
    ctx.beginPath();
    ctx.moveTo(this.last[0], this.last[1]);
    ctx.lineTo(x, y);
    ctx.stroke();
    this.last = [x, y];
    this.painted = true;
  }

  finish() {
    $("mask-editor").hidden = true;
    this.onDone(this.painted ? this.canvas.toDataURL("image/png") : null);
  }
}
