// mnistlab serve: the page's shell. It holds what every view shares (the list of models and the
// chosen one, the footer) and switches between the views: one module each (draw.js, explore.js), all
// with the same small interface:
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

const VIEWS = [draw, explore];  // the first is the one shown when the address names none
const $ = (id) => document.getElementById(id);

let current = null;  // the view shown

function route() {
  const name = location.hash.slice(1);
  const next = VIEWS.find((v) => v.name === name) || VIEWS[0];
  if (next === current) return;
  if (current && current.hide) current.hide();
  current = next;
  document.body.dataset.view = next.name;
  for (const v of VIEWS) $(`view-${v.name}`).hidden = v !== next;
  for (const tab of document.querySelectorAll("nav.views a")) {
    if (tab.dataset.view === next.name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  next.show();
}

// A test image clicked in Explore opens in Draw.
explore.connect((test) => {
  location.hash = "#draw";
  route();
  draw.open(test);
});

// ---------------------------------------------------------------------------
// Models

async function chooseModel(name) {
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

async function start() {
  route();
  try {
    const list = await api("/api/models");
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
    draw.error(err.message);  // the server's own line (e.g. a refusal), or that it did not answer
  }
}

window.addEventListener("hashchange", route);
start();
