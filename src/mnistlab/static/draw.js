// The Draw view: draw a character (or open a picture, or a test image from Explore) and see, live,
// how it is prepared, what the network answers, which pixels pushed the answer, and what its
// hidden and first layers do with it.
"use strict";

import { api } from "./api.js";
import { heat, paintGrey, paintRows, paintSigned, extent, signed } from "./pictures.js";
import { greyPng } from "./png.js";

const BRUSH = 0.075;       // brush width as a fraction of the canvas side (MNIST strokes: ~1/10 of a digit)
const INK = "#111111";
const PAPER = "#ffffff";   // painted explicitly: an exported canvas is never transparent
const EXPORT_SIZE = 280;   // side in pixels of the PNG sent to the server, whatever the screen
const DEBOUNCE_MS = 120;   // while drawing, ask at most this often (and one request at a time)
// While a stroke is being drawn the page asks only for the answer and the hidden layers; when it ends,
// also for the explanations (a CNN's saliency map costs the server about 20 ms of CPU, six times
// its answer: see docs/lab.md).
const ANSWER = "activations=1";
const EXPLAIN = "activations=1&preparation=1&saliency=1&first_layer=1";
const EXPLAINED = [".why", ".prep", ".first"];  // the cards that only the explanations refresh

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

const LAYERS_HINT = document.querySelector("#layers .layer-empty");

const page = {
  history: [],      // {kind: "stroke", points: [[x, y], ...]} in 0..1 of the side, {kind: "photo", ...}
                    // or {kind: "test", image: 28x28, index, label} (a test image opened from Explore)
  current: null,    // the stroke being drawn
  version: 0,       // bumped at each change of the drawing
  model: null,      // the chosen model's name
  target: null,     // the class the saliency map explains (null: the predicted one)
  inFlight: false,
  again: false,     // the drawing changed while a request was in flight
  timer: 0,
};

function setState(state) { document.body.dataset.state = state; }

// ---------------------------------------------------------------------------
// The canvas: backing store in device pixels, strokes kept as vectors

function fitCanvas() {
  const rect = canvas.getBoundingClientRect();
  if (!rect.width) return;  // the view is hidden
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
    else if (item.kind === "test") paintTest(c, item, side);
    else paintStroke(c, item.points, side);
  }
}

function paintPhoto(c, photo, side) {
  if (!photo.bitmap) return;  // a format the browser cannot show (TIFF): it is still classified
  const scale = Math.min(side / photo.bitmap.width, side / photo.bitmap.height);
  const w = photo.bitmap.width * scale, h = photo.bitmap.height * scale;
  c.drawImage(photo.bitmap, (side - w) / 2, (side - h) / 2, w, h);
}

// A test image fills the pad, its ink dark on the paper like a drawing (strokes drawn over it add ink).
function paintTest(c, test, side) {
  const tile = document.createElement("canvas");
  paintRows(tile, test.image, (v) => [255 - v, 255 - v, 255 - v]);
  c.imageSmoothingEnabled = false;
  c.drawImage(tile, 0, 0, side, side);
  c.imageSmoothingEnabled = true;
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
  showSource();
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
  page.target = null;
  page.version++;
  clearTimeout(page.timer);
  page.timer = 0;
  paint(ctx, canvas.width);
  $("undo").disabled = true;
  showSource();
  showEmpty();
}

// Under the pad: where the picture came from when it is not a drawing.
function showSource() {
  const test = page.history.length && page.history[0].kind === "test" ? page.history[0] : null;
  const note = $("source");
  note.hidden = !test;
  if (test) {
    note.textContent = `Test image #${test.index} (true class ${test.label})` +
      (page.history.length > 1 ? ", drawn on: prepared like a drawing." : ", sent as it is: it is already MNIST-style.");
  }
}

// ---------------------------------------------------------------------------
// Asking the server: debounced, one request in flight

function schedule(delay) {
  if (page.timer && delay > 0) return;  // one is already due: while drawing, ask every DEBOUNCE_MS at most
  clearTimeout(page.timer);
  page.timer = setTimeout(() => { page.timer = 0; send(); }, delay);
}

// The request body: a test image alone goes as its 28x28 array; a picture alone as its own file;
// anything else as the canvas painted at EXPORT_SIZE, as a grey PNG unless a photo painted on it has
// colour (the same picture for the server either way: png.js).
async function requestBody() {
  const only = page.history.length === 1 ? page.history[0] : null;
  if (only && only.kind === "test") {
    return { type: "application/json", body: JSON.stringify({ image: only.image, prepare: false }) };
  }
  if (only && only.kind === "photo") return { type: only.file.type || "application/octet-stream", body: only.file };
  const off = document.createElement("canvas");
  off.width = off.height = EXPORT_SIZE;
  paint(off.getContext("2d"), EXPORT_SIZE);
  const grey = await greyPng(off);
  return { type: "image/png", body: grey ?? await new Promise((resolve) => off.toBlob(resolve, "image/png")) };
}

async function send() {
  if (!page.history.length || !page.model) return;
  if (page.inFlight) { page.again = true; return; }
  page.inFlight = true;
  page.again = false;
  const version = page.version;
  const model = page.model;
  const full = page.current === null;  // no stroke in progress: explain too
  const asked = full ? EXPLAIN + (page.target === null ? "" : `&saliency_class=${page.target}`) : ANSWER;
  try {
    const { type, body } = await requestBody();
    const data = await api(`/api/predict?${asked}&model=${encodeURIComponent(model)}`,
      { method: "POST", headers: { "Content-Type": type }, body });
    if (!page.history.length || model !== page.model) return;  // cleared or switched meanwhile
    show(data, version === page.version, full);
  } catch (err) {
    if (!page.history.length || model !== page.model) return;
    showError(err.message);
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
    row.innerHTML = '<button type="button" class="bar-name"></button><span class="bar-track"><span class="bar-fill">' +
      '</span></span><span class="bar-value">–</span>';
    const name_ = row.querySelector(".bar-name");
    name_.textContent = name;
    name_.title = `show the saliency map of ${name}`;
    name_.addEventListener("click", () => explainClass(i));
    bars.append(row);
  });
}

// Clicking a class's name: the saliency map explains that class (the predicted one again: back to following it).
function explainClass(index) {
  const predicted = Number(document.body.dataset.prediction);
  page.target = index === predicted ? null : index;
  if (page.history.length) { page.version++; schedule(0); }
}

// data: /api/predict's answer, for the drawing as it is now (`current`) or as it was; `full`: with the
// explanations (else those cards keep the last ones, dimmed, until the stroke ends).
function show(data, current, full) {
  const rows = $("bars").children;
  data.probabilities.forEach((p, i) => {
    const row = rows[i];
    if (!row) return;
    row.classList.toggle("best", i === data.prediction);
    row.classList.toggle("explained", data.saliency && i === data.saliency.target);
    row.querySelector(".bar-fill").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".bar-value").textContent = `${(100 * p).toFixed(1)}%`;
    row.setAttribute("aria-label", `${row.querySelector(".bar-name").textContent}: ${(100 * p).toFixed(1)}%`);
  });
  $("label").textContent = data.label;
  const p = data.probabilities[data.prediction];
  $("confidence").textContent = `${(100 * p).toFixed(1)}% sure`;
  $("status").textContent = "";
  paintGrey($("prepared"), data.prepared);
  drawLayers(data.activations || []);
  if (full) {
    drawPreparation(data.preparation);
    drawSaliency(data.saliency, data.prepared, data.prediction);
    drawFirstLayer(data.first_layer);
  }
  for (const card of EXPLAINED) document.querySelector(card).classList.toggle("stale", !(full && current));
  // "done" only when the answer, explanations included, is for the drawing as it is now (tests wait for it)
  setState(current && full ? "done" : "drawing");
  document.body.dataset.prediction = String(data.prediction);
}

function showEmpty() {
  setState("empty");
  delete document.body.dataset.prediction;
  $("label").textContent = "–";
  $("confidence").textContent = "draw something";
  $("status").textContent = "";
  for (const row of $("bars").children) {
    row.classList.remove("best", "explained");
    row.querySelector(".bar-fill").style.width = "0";
    row.querySelector(".bar-value").textContent = "–";
    row.removeAttribute("aria-label");
  }
  const prepared = $("prepared").getContext("2d");
  prepared.fillStyle = "#000";
  prepared.fillRect(0, 0, 28, 28);
  drawLayers(null);
  drawPreparation(undefined);
  drawSaliency(null);
  drawFirstLayer(undefined);
  for (const card of EXPLAINED) document.querySelector(card).classList.remove("stale");
}

function showError(message) {
  setState("error");
  $("status").textContent = message;
  $("label").textContent = "?";
  $("confidence").textContent = "no answer";
}

// ---------------------------------------------------------------------------
// Hidden layers: one figure per layer, a heat strip of units (MLP) or a grid of feature maps (CNN)

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
// The preparation, step by step (undefined: nothing drawn; null: a test image, used as it is)

const PREPARATION_HINT = $("steps").innerHTML;

function drawPreparation(steps) {
  const box = $("steps");
  if (steps === undefined) { box.innerHTML = PREPARATION_HINT; return; }
  if (steps === null) {
    box.innerHTML = '<p class="empty">This test image is already MNIST-style: it goes to the network as it is.</p>';
    return;
  }
  box.replaceChildren(...steps.map((step) => {
    const figure = document.createElement("figure");
    figure.className = `step step-${step.name}`;
    figure.dataset.step = step.name;
    const frame = document.createElement("div");
    frame.className = "step-frame";
    // the picture at its own aspect ratio inside the square frame, so that the crop lands on it
    const picture = document.createElement("span");
    picture.className = "step-picture";
    picture.style.aspectRatio = `${step.width} / ${step.height}`;
    picture.style[step.width >= step.height ? "width" : "height"] = "100%";
    const img = document.createElement("img");
    img.src = step.image;
    img.alt = step.title;
    picture.append(img);
    frame.append(picture);
    if (step.box) {  // the crop, drawn over the ink
      const [top, left, bottom, right] = step.box;
      const mark = document.createElement("span");
      mark.className = "crop";
      Object.assign(mark.style, {
        top: `${(100 * top) / step.height}%`, left: `${(100 * left) / step.width}%`,
        height: `${(100 * (bottom - top)) / step.height}%`, width: `${(100 * (right - left)) / step.width}%`,
      });
      picture.append(mark);
    }
    const caption = document.createElement("figcaption");
    caption.textContent = `${step.title} (${step.width}×${step.height})`;
    figure.append(frame, caption);
    return figure;
  }));
}

// ---------------------------------------------------------------------------
// Saliency: red pixels push the explained class up, blue ones push it down

function drawSaliency(saliency, prepared, prediction) {
  const canvasEl = $("saliency");
  const caption = $("saliency-caption");
  if (!saliency) {
    paintRows(canvasEl, Array.from({ length: 28 }, () => new Array(28).fill(255)), () => [255, 255, 255]);
    canvasEl.dataset.target = "";
    caption.textContent = "Draw something: the pixels that push the class up turn red, those that push it down blue.";
    return;
  }
  const scale = extent(saliency.values);
  // the strokes in light grey under the colours, so that the map can be read against the drawing
  paintRows(canvasEl, saliency.values, (v, x, y) => {
    const paper = 255 - Math.round(0.3 * prepared[y][x]);
    return signed(v / scale, [paper, paper, paper]);
  });
  canvasEl.dataset.target = String(saliency.target);
  const sign = (v) => (v >= 0 ? "+" : "−") + Math.abs(v).toFixed(2);
  const which = saliency.target === prediction ? "the prediction"
    : "click the predicted class's name to go back to it";
  caption.textContent = `Class ${saliency.label} (${which}). From a black image to this one its log-probability ` +
    `changes by ${sign(saliency.change)}; the pixels' shares add up to ${sign(saliency.total)} ` +
    `(${saliency.steps} steps). Click a class's name to explain it instead.`;
}

// ---------------------------------------------------------------------------
// The first layer: an MLP's most active units (784 weights each, as 28x28), or a CNN's filters

function drawFirstLayer(layer) {
  const box = $("first-layer");
  const caption = $("first-layer-caption");
  if (layer === undefined) { box.replaceChildren(); caption.textContent = "The first layer's weights show here as you draw."; return; }
  if (layer === null) { box.replaceChildren(); caption.textContent = "An ensemble: each of its networks has its own first layer."; return; }
  box.dataset.kind = layer.kind;
  caption.textContent = layer.kind === "units"
    ? `The ${layer.units.length} most active of the ${layer.size} units of ${layer.description}: each unit's 784 ` +
      "weights as a 28×28 image (red: ink there raises the unit, blue: lowers it), under it the unit's number " +
      "and its output for this drawing."
    : `The ${layer.size} 3×3 filters of ${layer.description}, the most active first: red weights respond to ink, ` +
      "blue to its absence; under each, its number and the mean of its feature map for this drawing.";
  box.replaceChildren(...layer.units.map((unit) => {
    const figure = document.createElement("figure");
    figure.className = "unit";
    const canvasEl = document.createElement("canvas");
    paintSigned(canvasEl, unit.weights);
    canvasEl.setAttribute("aria-label", `${layer.kind === "units" ? "unit" : "filter"} ${unit.index} weights`);
    const label = document.createElement("figcaption");
    label.textContent = `#${unit.index} · ${unit.activation.toFixed(2)}`;
    label.title = `${layer.kind === "units" ? "unit" : "filter"} ${unit.index}, output ${unit.activation.toFixed(3)}`;
    figure.append(canvasEl, label);
    return figure;
  }));
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
  if (document.body.dataset.view !== "draw") return;
  if (event.target instanceof HTMLSelectElement || event.target instanceof HTMLInputElement) return;
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") { event.preventDefault(); undo(); }
  else if (event.key === "Escape") clear();
});

new ResizeObserver(fitCanvas).observe(canvas);
window.addEventListener("resize", fitCanvas);
$("undo").disabled = true;

// ---------------------------------------------------------------------------
// The view, as the page's shell (app.js) sees it

export const view = {
  name: "draw",

  // A model was chosen (or its details changed): ask again for what is drawn.
  setModel(info) {
    page.model = info.name;
    page.target = null;
    page.version++;
    buildBars(info.classes);
    $("layers").replaceChildren(LAYERS_HINT);
    if (page.history.length) {
      $("label").textContent = "…";
      schedule(0);
    } else {
      showEmpty();
    }
  },

  // No model to ask (while switching): answers for the old one are dropped.
  unsetModel() {
    page.model = null;
    setState(page.history.length ? "drawing" : "loading");
  },

  show() { fitCanvas(); },

  // A test image from the Explore view: {index, image (28x28), label (its true class's name)}.
  open(test) {
    page.history = [{ kind: "test", ...test }];
    page.current = null;
    page.target = null;
    paint(ctx, canvas.width);
    changed();
    schedule(0);
  },

  error(message) { showError(message); },
};
