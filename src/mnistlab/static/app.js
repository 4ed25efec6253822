// mnistlab serve: the page's shell. It holds what every view shares (the list of models and the
// chosen one, the footer) and switches between the views: one module each (draw.js, explore.js,
// train.js, runs.js), all with the same small interface:
//   name                 the view's name: its section is #view-NAME, its tab links to #NAME
//   setModel(info)       the chosen model changed (info: /api/models/NAME)
//   unsetModel()         a model is being switched to (answers for the old one must be dropped)
//   show(), hide()       the view became visible, or stopped being
// Plain JavaScript modules, no libraries, nothing loaded from elsewhere; every call to the server
// goes through api.js.
"use strict";

import { api } from "./api.js";
import { view as draw } from "./draw.js";
import { view as explore } from "./explore.js";
import { view as runs } from "./runs.js";
import { view as train } from "./train.js";

const VIEWS = [draw, explore, train, runs];
const $ = (id) => document.getElementById(id);

let current = null;  // the view shown
let models = null;   // GET /api/models
let chosen = null;   // the chosen model's name
let training = null; // GET /api/training

// The view the address names, if its tab is there; else Draw, or Train while there is no model to draw on.
function route() {
  const name = location.hash.slice(1);
  const offered = (v) => !document.querySelector(`nav.views a[data-view="${v.name}"]`).hidden;
  const fallback = models && !models.models.length && training?.folder ? train : draw;
  const next = VIEWS.find((v) => v.name === name && offered(v)) || fallback;
  if (next === current) return;
  if (current && current.hide) current.hide();
  current = next;
  document.body.dataset.view = next.name;
  for (const v of VIEWS) $(`view-${v.name}`).hidden = v !== next;
  banner();
  for (const tab of document.querySelectorAll("nav.views a")) {
    if (tab.dataset.view === next.name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  next.show();
}

// "No model yet", above the views that need one.
function banner() {
  $("no-model").hidden = !models || models.models.length > 0 || current === train || current === runs;
}

// A test image clicked in Explore opens in Draw.
explore.connect((test) => {
  location.hash = "#draw";
  route();
  draw.open(test);
});

// A run of the Train or Runs view opens in Draw; when a run commits an epoch, the models may have changed.
async function drawOn(name) {
  await refreshModels();
  location.hash = "#draw";
  route();
  if (name !== chosen) await chooseModel(name);
}
let refreshing = 0;
function modelsChanged() {  // at most one refresh every half second, however many epochs end at once
  if (!refreshing) refreshing = setTimeout(() => { refreshing = 0; refreshModels().catch(() => {}); }, 500);
}
train.connect({ models: modelsChanged, draw: drawOn });
runs.connect({ models: modelsChanged, draw: drawOn });

// ---------------------------------------------------------------------------
// Models

async function chooseModel(name) {
  chosen = name;
  $("model").value = name;
  for (const v of VIEWS) v.unsetModel();
  let info;
  try {
    info = await api(`/api/models/${encodeURIComponent(name)}`);
  } catch (err) {
    draw.error(err.message);
    return;
  }
  const acc = info.metrics.test_accuracy;
  const arch = info.architecture;
  const shape = arch.model === "mlp" ? [arch.input_shape.slice(1).reduce((a, b) => a * b), ...arch.hidden,
    arch.num_classes].join("-") : "3 conv blocks + linear";
  $("model-facts").textContent = `${info.name}: ${arch.model} ${shape} (${arch.activation}), trained on ` +
    `${info.dataset}` + (acc != null ? `, test accuracy ${(100 * acc).toFixed(2)}%` : "");
  $("model-name").textContent = $("model-choice").hidden ? `model: ${info.name}` : "";
  for (const v of VIEWS) v.setModel(info);
}

// The models as the server has them now (in a served folder, runs appear as they commit epochs): the
// menu follows, the chosen model stays chosen, and the chosen one's details are asked again when it
// has a new version (a new epoch: its metrics changed).
async function refreshModels() {
  const list = await api("/api/models");
  const before = models ? new Map(models.models.map((m) => [m.name, m.test_accuracy])) : new Map();
  models = list;
  const select = $("model");
  select.replaceChildren(...list.models.map((m) => new Option(`${m.name} (${m.dataset})`, m.name)));
  $("model-choice").hidden = list.models.length < 2;
  $("model-name").textContent = $("model-choice").hidden && chosen ? `model: ${chosen}` : "";
  banner();
  const names = list.models.map((m) => m.name);
  if (chosen && names.includes(chosen)) {
    select.value = chosen;
    const now = list.models.find((m) => m.name === chosen);
    if (before.get(chosen) !== now.test_accuracy) await chooseModel(chosen);
  } else if (list.default) {
    await chooseModel(list.default);
  } else {
    chosen = null;
    for (const v of VIEWS) v.unsetModel();
    $("model-facts").textContent = "";
  }
}

async function start() {
  $("model").addEventListener("change", () => chooseModel($("model").value));
  try {
    training = await api("/api/training");
    // A folder of runs is served: the runs are listed, and trained from the page unless that is off.
    for (const tab of document.querySelectorAll('nav.views a[data-view="runs"], nav.views a[data-view="train"]')) {
      tab.hidden = !training.folder || (tab.dataset.view === "train" && !training.enabled);
    }
    await refreshModels();
  } catch (err) {
    draw.error(err.message);  // the server's own line (e.g. a refusal), or that it did not answer
  }
  route();
}

window.addEventListener("hashchange", route);
start();
