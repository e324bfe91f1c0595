// The image-edit canvas: the input image with a brush to paint the mask (white = repaint).

export class MaskPainter {
  constructor(canvas, brush) {
    this.canvas = canvas;
    this.brush = brush;
    this.image = null;
    this.mask = document.createElement("canvas");
    this.painted = false;
    this.drawing = false;
    canvas.addEventListener("pointerdown", (event) => {
      if (!this.image) return;
      this.drawing = true;
      canvas.setPointerCapture(event.pointerId);
      this.paint(event);
    });
    canvas.addEventListener("pointermove", (event) => this.drawing && this.paint(event));
    for (const name of ["pointerup", "pointercancel"]) canvas.addEventListener(name, () => (this.drawing = false));
  }

  hasImage() {
    return this.image !== null;
  }

  hasMask() {
    return this.painted;
  }

  async load(file) {
    this.image = await createImageBitmap(file);
    this.canvas.width = this.mask.width = this.image.width;
    this.canvas.height = this.mask.height = this.image.height;
    this.clear();
  }

  clear() {
    this.painted = false;
    if (!this.image) return;
    const mask = this.mask.getContext("2d");
    mask.fillStyle = "#000";
    mask.fillRect(0, 0, this.mask.width, this.mask.height);
    this.redraw();
  }

  paint(event) {
    const box = this.canvas.getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * this.canvas.width;
    const y = ((event.clientY - box.top) / box.height) * this.canvas.height;
    const radius = (Number(this.brush.value) / 2) * (this.canvas.width / box.width);
    const mask = this.mask.getContext("2d");
    mask.fillStyle = "#fff";
    mask.beginPath();
    mask.arc(x, y, radius, 0, 2 * Math.PI);
    mask.fill();
    this.painted = true;
    this.redraw();
  }

  redraw() {
    const context = this.canvas.getContext("2d");
    context.globalAlpha = 1;
    context.drawImage(this.image, 0, 0);
    if (this.painted) {
      context.globalAlpha = 0.6;
      context.globalCompositeOperation = "screen"; // black leaves the image as it is
      context.drawImage(this.mask, 0, 0);
      context.globalCompositeOperation = "source-over";
      context.globalAlpha = 1;
    }
  }

  /** The mask as raw base64 PNG. */
  maskBase64() {
    return new Promise((resolve) => {
      this.mask.toBlob((blob) => {
        const reader = new FileReader();
        reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
        reader.readAsDataURL(blob);
      }, "image/png");
    });
  }
}
