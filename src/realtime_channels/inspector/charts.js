// Small line charts drawn by hand on a <canvas>: the last POINTS samples, scaled to the
// largest one, with the newest on the right.

export const POINTS = 60;

export class LineChart {
  /** @param {HTMLCanvasElement} canvas */
  constructor(canvas, { color = "#3b82f6" } = {}) {
    this.canvas = canvas;
    this.color = color;
    this.values = [];
    this.draw();
  }

  add(value) {
    this.values.push(value);
    if (this.values.length > POINTS) this.values.shift();
    this.draw();
  }

  draw() {
    const { canvas } = this;
    const ctx = canvas.getContext("2d");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(width * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);

    ctx.strokeStyle = "rgba(127, 127, 127, 0.25)";
    ctx.lineWidth = 1;
    for (const y of [0.5, height / 2, height - 0.5]) {
      ctx.beginPath();
      ctx.moveTo(0, y);
      ctx.lineTo(width, y);
      ctx.stroke();
    }

    const known = this.values.filter((v) => v !== null && Number.isFinite(v));
    canvas.dataset.points = String(this.values.length);
    if (known.length === 0) return;
    const top = Math.max(1, ...known) * 1.1;
    const step = width / (POINTS - 1);
    const x0 = width - step * (this.values.length - 1);
    const yOf = (v) => height - 2 - (v / top) * (height - 4);

    ctx.beginPath();
    let started = false;
    this.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) {
        started = false;
        return;
      }
      const x = x0 + i * step;
      if (started) ctx.lineTo(x, yOf(v));
      else ctx.moveTo(x, yOf(v));
      started = true;
    });
    ctx.strokeStyle = this.color;
    ctx.lineWidth = 1.5;
    ctx.stroke();
    const last = this.values[this.values.length - 1];
    if (last !== null && Number.isFinite(last)) {
      ctx.fillStyle = this.color; // the newest sample as a dot: visible from the first poll on
      ctx.beginPath();
      ctx.arc(width - 2.5, yOf(last), 2.5, 0, 2 * Math.PI);
      ctx.fill();
    }

    ctx.fillStyle = "rgba(127, 127, 127, 0.8)";
    ctx.font = "10px system-ui, sans-serif";
    ctx.textBaseline = "top";
    ctx.fillText(formatNumber(top / 1.1), 3, 2);
  }
}

export function formatNumber(value) {
  if (value === null || value === undefined) return "n/a";
  if (Number.isInteger(value)) return String(value);
  return value < 10 ? value.toFixed(2) : value.toFixed(1);
}
