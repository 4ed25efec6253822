// The Explore view: the chosen model's confusion matrix on its test set, per-class accuracy, and the
// test images behind each cell (the most confidently wrong first), each one opening in the Draw view.
"use strict";

import { api } from "./api.js";
import { paintGrey } from "./pictures.js";

const PAGE = 24;  // images asked for at a time

const $ = (id) => document.getElementById(id);
const root = $("view-explore");

const state = {
  model: null,      // the model shown
  confusion: null,  // /api/models/{name}/confusion
  cell: null,       // [true, predicted] shown below the matrix
  shown: 0,         // images of that cell on the page
  ask: 0,           // bumped per request: answers to older ones are dropped
  onOpen: null,     // called with a test image to open it in the Draw view
};

function setState(value) { root.dataset.state = value; }

const percent = (v) => `${(100 * v).toFixed(v === 1 ? 0 : 1)}%`;

async function load() {
  const model = state.model;
  if (!model || (state.confusion && state.confusion.model === model)) return;
  const ask = ++state.ask;
  setState("loading");
  $("explore-summary").textContent = `Running ${model} on its test set…`;
  $("matrix").replaceChildren();
  $("examples").replaceChildren();
  $("cell-title").textContent = "Test images";
  $("cell-summary").textContent = "";
  $("more").hidden = true;
  try {
    const confusion = await api(`/api/models/${encodeURIComponent(model)}/confusion`);
    if (ask !== state.ask) return;
    state.confusion = confusion;
    drawMatrix(confusion);
    $("explore-summary").textContent = `${model}: test accuracy ${percent(confusion.accuracy)} ` +
      `(${confusion.correct.toLocaleString("en")} of ${confusion.total.toLocaleString("en")} test images of ` +
      `${confusion.dataset}).`;
    setState("ready");
    const worst = mostCommonMistake(confusion.confusion);
    if (worst) choose(...worst);
  } catch (err) {
    if (ask !== state.ask) return;
    setState("error");
    $("explore-summary").textContent = err.message;
  }
}

function mostCommonMistake(counts) {
  let best = null;
  counts.forEach((row, t) => row.forEach((n, p) => {
    if (t !== p && n > 0 && (!best || n > counts[best[0]][best[1]])) best = [t, p];
  }));
  return best;
}

// Rows: true classes; columns: predicted classes; a last column of per-class accuracy. Each cell is a
// button; its colour is its share of the row (blue on the diagonal, red off it).
function drawMatrix(confusion) {
  const table = $("matrix");
  const classes = confusion.classes;
  const head = document.createElement("tr");
  head.append(cell("th", "true ╲ said", "corner"));
  classes.forEach((name) => head.append(cell("th", name, "col", "col")));
  const acc = cell("th", "right", "col acc-head", "col");
  acc.title = "the share of each true class the network got right";
  head.append(acc);
  const thead = document.createElement("thead");
  thead.append(head);
  const tbody = document.createElement("tbody");
  confusion.confusion.forEach((row, t) => {
    const tr = document.createElement("tr");
    tr.append(cell("th", classes[t], "row", "row"));
    const total = row.reduce((a, b) => a + b, 0) || 1;
    row.forEach((n, p) => {
      const td = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button";
      button.className = `count${t === p ? " diagonal" : ""}${n === 0 ? " zero" : ""}`;
      button.textContent = String(n);
      button.dataset.true = String(t);
      button.dataset.predicted = String(p);
      button.title = `${n} test images of ${classes[t]} said to be ${classes[p]}`;
      const share = n / total;
      // diagonal: blue by accuracy; off it: red by share, made visible from a single image up
      const alpha = t === p ? 0.15 + 0.85 * share : n ? Math.min(1, 0.12 + 6 * share) : 0;
      button.style.setProperty("--alpha", alpha.toFixed(3));
      button.classList.toggle("strong", alpha > 0.55);  // white figures on a dark cell
      button.disabled = n === 0;
      button.addEventListener("click", () => choose(t, p));
      td.append(button);
      tr.append(td);
    });
    tr.append(cell("td", percent(confusion.per_class_accuracy[t]), "acc"));
    tbody.append(tr);
  });
  table.replaceChildren(thead, tbody);
}

function cell(tag, text, className, scope) {
  const el = document.createElement(tag);
  el.textContent = text;
  el.className = className;
  if (scope) el.scope = scope;
  return el;
}

async function choose(t, p) {
  state.cell = [t, p];
  state.shown = 0;
  for (const b of root.querySelectorAll("#matrix button.count")) {
    b.classList.toggle("chosen", Number(b.dataset.true) === t && Number(b.dataset.predicted) === p);
  }
  const classes = state.confusion.classes;
  $("cell-title").textContent = t === p ? `${classes[t]}, recognised` : `${classes[t]} said to be ${classes[p]}`;
  $("examples").replaceChildren();
  await more();
}

async function more() {
  const [t, p] = state.cell;
  const model = state.model;
  const ask = ++state.ask;
  $("examples").dataset.state = "loading";
  try {
    const found = await api(`/api/models/${encodeURIComponent(model)}/examples?true=${t}&predicted=${p}` +
      `&limit=${PAGE}&offset=${state.shown}`);
    if (ask !== state.ask) return;
    for (const example of found.examples) $("examples").append(figure(example, found));
    state.shown += found.examples.length;
    const order = t === p ? "the most confident first" : "the most confidently wrong first";
    $("cell-summary").textContent = `${found.total} test image${found.total === 1 ? "" : "s"} of ` +
      `${found.true_label} that the network said to be ${found.predicted_label}: ${order}, with the ` +
      `probability it gave each. Open one in the Draw view to see why.`;
    $("more").hidden = state.shown >= found.total;
    $("examples").dataset.state = "ready";
  } catch (err) {
    if (ask !== state.ask) return;
    $("examples").dataset.state = "error";
    $("cell-summary").textContent = err.message;
  }
}

function figure(example, found) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "example";
  button.dataset.index = String(example.index);
  const canvasEl = document.createElement("canvas");
  paintGrey(canvasEl, example.image);
  const p = example.probabilities[found.predicted];
  const caption = document.createElement("span");
  caption.textContent = `#${example.index} · ${found.predicted_label}: ${percent(p)}`;
  button.title = `open test image #${example.index} in the Draw view`;
  button.append(canvasEl, caption);
  button.addEventListener("click", () => state.onOpen({ index: example.index, image: example.image,
    label: found.true_label }));
  return button;
}

$("more").addEventListener("click", more);

// ---------------------------------------------------------------------------
// The view, as the page's shell (app.js) sees it

export const view = {
  name: "explore",
  visible: false,

  setModel(info) {
    state.model = info.name;
    state.confusion = null;
    if (this.visible) load();
  },

  unsetModel() {},

  // Computed on first showing only: a CNN's pass over the test set takes seconds.
  show() { this.visible = true; load(); },
  hide() { this.visible = false; },

  // onOpen(test): what to do when a test image is clicked
  connect(onOpen) { state.onOpen = onOpen; },
};
