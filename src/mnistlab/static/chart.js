// Learning curves: line charts on a canvas, several runs overlaid, and the legend that names them.
// No library: axes, ticks and lines drawn here, the canvas's backing store in device pixels.
"use strict";

// Colours told apart by most eyes (Okabe-Ito, then Tableau's), one per run on a chart.
export const COLOURS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#7f3c8d", "#000000",
  "#8c564b", "#bcbd22", "#17becf", "#e15759"];

const FONT = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
const PAD = { left: 48, right: 12, top: 10, bottom: 30 };  // CSS pixels around the plot

// A round step for about `count` ticks over `span`.
function tickStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= raw) return m * power;
  return 10 * power;
}

// Draw `series` ([{colour, points: [[x, y], ...], dash, dots}]) on `canvas`.
// options: {xMax, xLabel, yMin, yMax (null: from the data), yFormat(v), empty (text when nothing to draw)}.
// The number of points drawn is kept in canvas.dataset.points (the page's tests read it).
export function drawChart(canvas, series, options) {
  const rect = canvas.getBoundingClientRect();
  if (!rect.width) return;  // hidden: drawn when shown
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(rect.width * dpr), h = Math.round(rect.height * dpr);
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const c = canvas.getContext("2d");
  c.setTransform(dpr, 0, 0, dpr, 0, 0);
  c.clearRect(0, 0, rect.width, rect.height);
  c.font = FONT;

  const points = series.flatMap((s) => s.points);
  canvas.dataset.points = String(points.length);
  const ys = points.map((p) => p[1]).filter(Number.isFinite);
  let yMin = options.yMin ?? (ys.length ? Math.min(...ys) : 0);
  let yMax = options.yMax ?? (ys.length ? Math.max(...ys) : 1);
  if (options.yMin == null && ys.length) yMin = Math.max(0, yMin - 0.05 * (yMax - yMin));
  if (yMax - yMin < 1e-9) { yMax += 0.5; yMin = Math.max(0, yMin - 0.5); }
  const xMax = Math.max(1, options.xMax || 1, ...points.map((p) => p[0]));
  const plot = { x: PAD.left, y: PAD.top, w: rect.width - PAD.left - PAD.right, h: rect.height - PAD.top - PAD.bottom };
  const X = (x) => plot.x + (x / xMax) * plot.w;
  const Y = (y) => plot.y + plot.h - ((y - yMin) / (yMax - yMin)) * plot.h;

  // grid and ticks
  c.strokeStyle = "#e5e7eb";
  c.fillStyle = "#6b7280";
  c.lineWidth = 1;
  const yStep = tickStep(yMax - yMin, 4);
  c.textAlign = "right";
  c.textBaseline = "middle";
  for (let v = Math.ceil(yMin / yStep) * yStep; v <= yMax + 1e-9; v += yStep) {
    c.beginPath(); c.moveTo(plot.x, Y(v)); c.lineTo(plot.x + plot.w, Y(v)); c.stroke();
    c.fillText(options.yFormat ? options.yFormat(v) : String(+v.toPrecision(3)), plot.x - 6, Y(v));
  }
  const xStep = Math.max(1, tickStep(xMax, Math.max(2, Math.floor(plot.w / 60))));
  c.textAlign = "center";
  c.textBaseline = "top";
  for (let v = 0; v <= xMax + 1e-9; v += xStep) {
    c.beginPath(); c.moveTo(X(v), plot.y + plot.h); c.lineTo(X(v), plot.y + plot.h + 4); c.stroke();
    c.fillText(String(+v.toPrecision(3)), X(v), plot.y + plot.h + 6);
  }
  c.fillText(options.xLabel || "epoch", plot.x + plot.w / 2, plot.y + plot.h + 17);
  c.strokeStyle = "#9ca3af";
  c.beginPath(); c.moveTo(plot.x, plot.y); c.lineTo(plot.x, plot.y + plot.h); c.lineTo(plot.x + plot.w, plot.y + plot.h);
  c.stroke();

  if (!points.length) {
    c.textAlign = "center";
    c.textBaseline = "middle";
    c.fillText(options.empty || "", plot.x + plot.w / 2, plot.y + plot.h / 2);
    return;
  }
  for (const s of series) {
    const pts = s.points.filter((p) => Number.isFinite(p[1]));
    c.strokeStyle = c.fillStyle = s.colour;
    c.lineWidth = 2;
    c.setLineDash(s.dash ? [5, 4] : []);
    c.beginPath();
    pts.forEach(([x, y], i) => (i ? c.lineTo(X(x), Y(y)) : c.moveTo(X(x), Y(y))));
    c.stroke();
    c.setLineDash([]);
    if (s.dots) for (const [x, y] of pts) { c.beginPath(); c.arc(X(x), Y(y), 2.5, 0, 2 * Math.PI); c.fill(); }
  }
}

// The settings that tell runs apart, for a legend: "seed · lr 0.003 · batch 64 · 128-64 · sgd · shifts off".
export function settingsText(config) {
  if (!config) return "";
  const parts = [config.recipe, `lr ${config.lr}`, `batch ${config.batch_size}`];
  if (config.model === "mlp") parts.push((config.hidden || []).join("-"));
  else parts.push(config.model);
  parts.push(config.optimizer, config.shift ? `shifts ${config.shift}px` : "shifts off");
  if (config.train_size) parts.push(`${config.train_size} images`);
  if (config.dataset !== "mnist") parts.push(config.dataset);
  return parts.join(" · ");
}

// A run's name, allowed to wrap after each "/" (seed-mnist-lrs/runs/lr0.01) rather than anywhere.
export function breakable(name) { return name.replaceAll("/", "/\u200b"); }

export const percent = (v) => (v == null ? "–" : `${(100 * v).toFixed(2)}%`);
