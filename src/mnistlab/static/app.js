// mnistlab serve: draw a character, see what the network sees, thinks and answers.
// Plain JavaScript, no libraries, nothing loaded from elsewhere.
"use strict";

const BRUSH = 0.075;       // brush width as a fraction of the canvas side (MNIST strokes: ~1/10 of a digit)
const INK = "#111111";
const PAPER = "#ffffff";   // painted explicitly: an exported canvas is never transparent
const EXPORT_SIZE = 280;   // side in pixels of the PNG sent to the server, whatever the screen
const DEBOUNCE_MS = 120;   // while drawing, ask at most this often (and one request at a time)

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

const LAYERS_HINT = document.querySelector("#layers .layer-empty");

const page = {
  history: [],      // strokes {kind: "stroke", points: [[x, y], ...]} in 0..1 of the side, or {kind: "photo", ...}
  current: null,    // the stroke being drawn
  version: 0,       // bumped at each change of the drawing
  model: null,      // the chosen model's name
  info: null,       // /api/models/{name}
  inFlight: false,
  again: false,     // the drawing changed while a request was in flight
  timer: 0,
};

function setState(state) { document.body.dataset.state = state; }

// ---------------------------------------------------------------------------
// The canvas: backing store in device pixels, strokes kept as vectors

function fitCanvas() {
  const rect = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const side = Math.max(1, Math.round(rect.width * dpr));
  if (canvas.width !== side || canvas.height !== side) {
    canvas.width = side;
    canvas.height = side;
  }
  paint(ctx, side);
}

function paint(c, side) {
  c.fillStyle = PAPER;
  c.fillRect(0, 0, side, side);
  for (const item of page.history) {
    if (item.kind === "photo") paintPhoto(c, item, side);
    else paintStroke(c, item.points, side);
  }
}

function paintPhoto(c, photo, side) {
  if (!photo.bitmap) return;  // a format the browser cannot show (TIFF): it is still classified
  const scale = Math.min(side / photo.bitmap.width, side / photo.bitmap.height);
  const w = photo.bitmap.width * scale, h = photo.bitmap.height * scale;
  c.drawImage(photo.bitmap, (side - w) / 2, (side - h) / 2, w, h);
}

function brush(c, side) {
  c.strokeStyle = INK;
  c.fillStyle = INK;
  c.lineWidth = BRUSH * side;
  c.lineCap = "round";
  c.lineJoin = "round";
}

function paintStroke(c, points, side) {
  brush(c, side);
  if (points.length === 1) {
    c.beginPath();
    c.arc(points[0][0] * side, points[0][1] * side, (BRUSH * side) / 2, 0, 2 * Math.PI);
    c.fill();
    return;
  }
  c.beginPath();
  c.moveTo(points[0][0] * side, points[0][1] * side);
  for (let i = 1; i < points.length; i++) c.lineTo(points[i][0] * side, points[i][1] * side);
  c.stroke();
}

function pointOf(event) {
  const rect = canvas.getBoundingClientRect();
  const clamp = (v) => Math.min(1, Math.max(0, v));
  return [clamp((event.clientX - rect.left) / rect.width), clamp((event.clientY - rect.top) / rect.height)];
}

canvas.addEventListener("pointerdown", (event) => {
  if (event.pointerType === "mouse" && event.button !== 0) return;
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId);
  page.current = { kind: "stroke", points: [pointOf(event)], pointer: event.pointerId };
  page.history.push(page.current);
  changed();
  paintStroke(ctx, page.current.points, canvas.width);
});

canvas.addEventListener("pointermove", (event) => {
  const stroke = page.current;
  if (!stroke || event.pointerId !== stroke.pointer) return;
  event.preventDefault();
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  const side = canvas.width;
  brush(ctx, side);
  ctx.beginPath();
  let [x, y] = stroke.points[stroke.points.length - 1];
  ctx.moveTo(x * side, y * side);
  for (const e of events.length ? events : [event]) {
    [x, y] = pointOf(e);
    stroke.points.push([x, y]);
    ctx.lineTo(x * side, y * side);
  }
  ctx.stroke();
  changed();
});

function endStroke(event) {
  if (!page.current || event.pointerId !== page.current.pointer) return;
  page.current = null;
  schedule(0);
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);
canvas.addEventListener("lostpointercapture", endStroke);

function changed() {
  page.version++;
  setState("drawing");
  $("undo").disabled = page.history.length === 0;
  schedule(DEBOUNCE_MS);
}

function undo() {
  if (!page.history.length) return;
  page.history.pop();
  page.current = null;
  paint(ctx, canvas.width);
  page.history.length ? changed() : clear();
}

function clear() {
  page.history = [];
  page.current = null;
  page.version++;
  clearTimeout(page.timer);
  page.timer = 0;
  paint(ctx, canvas.width);
  $("undo").disabled = true;
  showEmpty();
}

// ---------------------------------------------------------------------------
// Asking the server: debounced, one request in flight

function schedule(delay) {
  if (page.timer && delay > 0) return;  // one is already due: while drawing, ask every DEBOUNCE_MS at most
  clearTimeout(page.timer);
  page.timer = setTimeout(() => { page.timer = 0; send(); }, delay);
}

function exportDrawing() {
  const only = page.history.length === 1 && page.history[0].kind === "photo" ? page.history[0] : null;
  if (only) return Promise.resolve(only.file);  // the original picture, full resolution
  const off = document.createElement("canvas");
  off.width = off.height = EXPORT_SIZE;
  paint(off.getContext("2d"), EXPORT_SIZE);
  return new Promise((resolve) => off.toBlob(resolve, "image/png"));
}

async function send() {
  if (!page.history.length || !page.model) return;
  if (page.inFlight) { page.again = true; return; }
  page.inFlight = true;
  page.again = false;
  const version = page.version;
  const model = page.model;
  try {
    const body = await exportDrawing();
    const url = `/api/predict?activations=1&model=${encodeURIComponent(model)}`;
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": body.type || "application/octet-stream" },
      body,
    });
    const data = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
    if (!page.history.length || model !== page.model) return;  // cleared or switched meanwhile
    if (response.ok) show(data, version === page.version);
    else showError(data.error || `the server answered ${response.status}`);
  } catch (err) {
    showError(`no answer from the server (${err.message}); is mnistlab serve still running?`);
  } finally {
    page.inFlight = false;
    if (page.again) schedule(0);
  }
}

// ---------------------------------------------------------------------------
// Showing the answer

function buildBars(classes) {
  const bars = $("bars");
  bars.replaceChildren();
  classes.forEach((name, i) => {
    const row = document.createElement("div");
    row.className = "bar-row";
    row.setAttribute("role", "listitem");
    row.dataset.index = String(i);
    row.innerHTML = '<span class="bar-name"></span><span class="bar-track"><span class="bar-fill"></span></span>' +
      '<span class="bar-value">–</span>';
    row.querySelector(".bar-name").textContent = name;
    row.querySelector(".bar-name").title = name;
    bars.append(row);
  });
}

function show(data, current) {
  const rows = $("bars").children;
  data.probabilities.forEach((p, i) => {
    const row = rows[i];
    if (!row) return;
    row.classList.toggle("best", i === data.prediction);
    row.querySelector(".bar-fill").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".bar-value").textContent = `${(100 * p).toFixed(1)}%`;
    row.setAttribute("aria-label", `${row.querySelector(".bar-name").textContent}: ${(100 * p).toFixed(1)}%`);
  });
  $("label").textContent = data.label;
  const p = data.probabilities[data.prediction];
  $("confidence").textContent = `${(100 * p).toFixed(1)}% sure`;
  $("status").textContent = "";
  drawPrepared(data.prepared);
  drawLayers(data.activations || []);
  // "done" only when the answer is for the drawing as it is now (tests wait for it)
  setState(current ? "done" : "drawing");
  document.body.dataset.prediction = String(data.prediction);
}

function showEmpty() {
  setState("empty");
  delete document.body.dataset.prediction;
  $("label").textContent = "–";
  $("confidence").textContent = "draw something";
  $("status").textContent = "";
  for (const row of $("bars").children) {
    row.classList.remove("best");
    row.querySelector(".bar-fill").style.width = "0";
    row.querySelector(".bar-value").textContent = "–";
    row.removeAttribute("aria-label");
  }
  const prepared = $("prepared").getContext("2d");
  prepared.fillStyle = "#000";
  prepared.fillRect(0, 0, 28, 28);
  drawLayers(null);
}

function showError(message) {
  setState("error");
  $("status").textContent = message;
  $("label").textContent = "?";
  $("confidence").textContent = "no answer";
}

function drawPrepared(image) {
  const c = $("prepared").getContext("2d");
  const h = image.length, w = image[0].length;
  const pixels = c.createImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = image[y][x], k = 4 * (y * w + x);
      pixels.data[k] = pixels.data[k + 1] = pixels.data[k + 2] = v;
      pixels.data[k + 3] = 255;
    }
  }
  c.putImageData(pixels, 0, 0);
}

// A perceptual colour scale, dark (quiet) to bright (active): stops of "inferno".
const STOPS = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
  [250, 193, 39], [252, 255, 164]];
function heat(t) {
  const x = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x)), f = x - i;
  return STOPS[i].map((a, k) => Math.round(a + f * (STOPS[i + 1][k] - a)));
}

function drawLayers(layers) {
  const box = $("layers");
  if (!layers) {
    for (const canvasEl of box.querySelectorAll("canvas")) {
      const c = canvasEl.getContext("2d");
      c.fillStyle = "#0b0b12";
      c.fillRect(0, 0, canvasEl.width, canvasEl.height);
    }
    return;
  }
  layers.forEach((layer, n) => {
    const figure = layerFigure(n, layer);
    const canvasEl = figure.querySelector("canvas");
    const values = layer.values;
    let lo = Infinity, hi = -Infinity;
    for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
    const span = hi > lo ? hi - lo : 1;
    const c = canvasEl.getContext("2d");
    const pixels = c.createImageData(canvasEl.width, canvasEl.height);
    pixels.data.fill(0);
    for (let k = 3; k < pixels.data.length; k += 4) pixels.data[k] = 255;
    const put = (x, y, v) => {
      const rgb = heat((v - lo) / span), k = 4 * (y * canvasEl.width + x);
      pixels.data[k] = rgb[0]; pixels.data[k + 1] = rgb[1]; pixels.data[k + 2] = rgb[2];
    };
    if (layer.shape.length === 1) {
      const cols = figure.cols;
      values.forEach((v, i) => put(i % cols, Math.floor(i / cols), v));
    } else {
      const [channels, h, w] = layer.shape, cols = figure.cols;
      for (let ch = 0; ch < channels; ch++) {
        const ox = (ch % cols) * (w + 1), oy = Math.floor(ch / cols) * (h + 1);
        for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) put(ox + x, oy + y, values[(ch * h + y) * w + x]);
      }
    }
    c.putImageData(pixels, 0, 0);
  });
  while (box.children.length > layers.length) box.lastChild.remove();
}

// One figure per hidden layer: a heat strip of units (MLP) or a grid of feature maps (CNN).
function layerFigure(n, layer) {
  const box = $("layers");
  const key = `${layer.name}:${layer.shape.join("x")}`;
  let figure = box.children[n];
  if (figure && figure.dataset.key === key) return figure;
  figure = document.createElement("figure");
  figure.className = "layer";
  figure.dataset.key = key;
  const canvasEl = document.createElement("canvas");
  if (layer.shape.length === 1) {
    const units = layer.shape[0];
    figure.cols = Math.min(units, 32);
    canvasEl.width = figure.cols;
    canvasEl.height = Math.ceil(units / figure.cols);
  } else {
    const [channels, h, w] = layer.shape;
    figure.cols = Math.min(channels, 8);
    canvasEl.width = figure.cols * (w + 1) - 1;
    canvasEl.height = Math.ceil(channels / figure.cols) * (h + 1) - 1;
  }
  canvasEl.setAttribute("aria-label", `${layer.name} activations`);
  const caption = document.createElement("figcaption");
  const what = layer.shape.length === 1 ? `${layer.shape[0]} units` : `${layer.shape[0]} feature maps`;
  caption.textContent = `${layer.name}: ${what}, ${layer.description} (bright: active)`;
  figure.append(canvasEl, caption);
  if (box.children[n]) box.children[n].replaceWith(figure);
  else box.append(figure);
  return figure;
}

// ---------------------------------------------------------------------------
// Pictures: open or drop a file

async function usePicture(file) {
  if (!file) return;
  let bitmap = null;
  try { bitmap = await createImageBitmap(file); } catch (_) { /* shown as blank, still classified */ }
  page.history = [{ kind: "photo", file, bitmap }];
  page.current = null;
  paint(ctx, canvas.width);
  changed();
  schedule(0);
}

$("open").addEventListener("click", () => $("file").click());
$("file").addEventListener("change", (event) => {
  usePicture(event.target.files[0]);
  event.target.value = "";
});
const pad = $("pad");
pad.addEventListener("dragover", (event) => { event.preventDefault(); pad.classList.add("dragging"); });
pad.addEventListener("dragleave", () => pad.classList.remove("dragging"));
pad.addEventListener("drop", (event) => {
  event.preventDefault();
  pad.classList.remove("dragging");
  usePicture(event.dataTransfer.files[0]);
});

$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", clear);
document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLSelectElement || event.target instanceof HTMLInputElement) return;
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") { event.preventDefault(); undo(); }
  else if (event.key === "Escape") clear();
});

// ---------------------------------------------------------------------------
// Models

async function chooseModel(name) {
  page.model = null;  // no requests until the model's classes are known; answers for the old one are dropped
  setState(page.history.length ? "drawing" : "loading");
  const response = await fetch(`/api/models/${encodeURIComponent(name)}`);
  const info = await response.json();
  if (!response.ok) { showError(info.error); return; }
  page.model = name;
  page.info = info;
  page.version++;
  buildBars(info.classes);
  $("layers").replaceChildren(LAYERS_HINT);
  const acc = info.metrics.test_accuracy;
  const arch = info.architecture;
  const shape = arch.model === "mlp" ? [arch.input_shape.slice(1).reduce((a, b) => a * b), ...arch.hidden,
    arch.num_classes].join("-") : "3 conv blocks + linear";
  $("model-facts").textContent = `${info.name}: ${arch.model} ${shape} (${arch.activation}), trained on ` +
    `${info.dataset}` + (acc != null ? `, test accuracy ${(100 * acc).toFixed(2)}%` : "");
  $("model-name").textContent = $("model-choice").hidden ? `model: ${info.name}` : "";
  if (page.history.length) {
    $("label").textContent = "…";
    schedule(0);
  } else {
    showEmpty();
  }
}

async function start() {
  try {
    const response = await fetch("/api/models");
    const list = await response.json();
    // e.g. 401: a classroom server opened without the token in its address (the error says so)
    if (!response.ok) { showError(list.error || `the server answered ${response.status}`); return; }
    const select = $("model");
    for (const m of list.models) {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = `${m.name} (${m.dataset})`;
      select.append(option);
    }
    select.value = list.default;
    $("model-choice").hidden = list.models.length < 2;
    select.addEventListener("change", () => chooseModel(select.value));
    await chooseModel(list.default);
  } catch (err) {
    showError(`cannot reach the server (${err.message})`);
  }
}

new ResizeObserver(fitCanvas).observe(canvas);
window.addEventListener("resize", fitCanvas);
$("undo").disabled = true;
fitCanvas();
start();
