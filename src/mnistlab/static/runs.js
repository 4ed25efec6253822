// The Runs view: every run in the served folder (trained from the page or with the CLI), with its
// recipe, state, accuracy and settings, and the curves of the runs ticked, overlaid.
"use strict";

import { api } from "./api.js";
import { COLOURS, breakable, drawChart, percent, settingsText } from "./chart.js";

const $ = (id) => document.getElementById(id);
const LIVE = ["queued", "starting", "running"];
const MAX_PLOTTED = COLOURS.length;

const state = {
  runs: [],             // GET /api/runs
  unticked: new Set(),  // names left off the chart
  visible: false,
  timer: 0,
  hooks: { draw() {}, models() {} },
};

async function load() {
  clearTimeout(state.timer);
  try {
    state.runs = (await api("/api/runs")).runs;
  } catch (err) {
    $("runs-summary").textContent = err.message;
    return;
  }
  const live = state.runs.filter((r) => LIVE.includes(r.state)).length;
  const models = state.runs.filter((r) => r.model).length;
  $("runs-summary").textContent = state.runs.length ? `${state.runs.length} run${state.runs.length === 1 ? "" : "s"}` +
    (live ? `, ${live} training or waiting` : "") + `; ${models} can be drawn on. The same as mnistlab runs FOLDER.`
    : "No run yet: start one in the Train view, or with mnistlab train --out FOLDER/NAME.";
  renderTable();
  renderChart();
  if (live) state.hooks.models();
  if (state.visible && live) state.timer = setTimeout(load, 2000);  // states and epochs as they change
}

function plotted() {
  return state.runs.filter((r) => r.rows.length && !state.unticked.has(r.name)).slice(0, MAX_PLOTTED);
}

function renderTable() {
  const chart = plotted().map((r) => r.name);
  const body = $("runs-table").querySelector("tbody");
  body.replaceChildren(...state.runs.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.name = r.name;
    tr.dataset.state = r.state;
    const tick = document.createElement("input");
    tick.type = "checkbox";
    tick.checked = chart.includes(r.name);
    tick.disabled = !r.rows.length;
    tick.setAttribute("aria-label", `plot ${r.name}`);
    tick.addEventListener("change", () => {
      if (tick.checked) state.unticked.delete(r.name); else state.unticked.add(r.name);
      renderTable();
      renderChart();
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    const index = chart.indexOf(r.name);
    if (index >= 0) swatch.style.background = COLOURS[index];
    const epochs = r.total_epochs ? `${r.epochs}/${r.total_epochs}` : "–";
    const cells = [[tick, swatch], breakable(r.name), r.recipe, r.dataset, r.state, epochs, percent(r.test_accuracy),
      `${r.train_seconds.toFixed(1)} s`, settingsText(r.config)];
    for (const [i, content] of cells.entries()) {
      const td = document.createElement("td");
      td.className = ["tick", "name", "recipe", "dataset", "state", "epochs", "acc", "time", "settings"][i];
      if (Array.isArray(content)) td.append(...content); else td.textContent = content;
      if (i === 4 && r.problem) td.title = r.problem;
      tr.append(td);
    }
    const actions = document.createElement("td");
    actions.className = "actions";
    if (r.model) actions.append(button("Draw", () => state.hooks.draw(r.model), `draw on ${r.name}`));
    if (LIVE.includes(r.state) && r.mine) actions.append(button("Stop", () => stop(r.name), `stop ${r.name}`));
    tr.append(actions);
    if (r.problem) {
      const note = document.createElement("td");
      note.className = "problem";
      note.colSpan = 10;
      note.textContent = r.problem;
      const row = document.createElement("tr");
      row.className = "problem-row";
      row.append(note);
      return [tr, row];
    }
    return [tr];
  }).flat());
}

function renderChart() {
  if (!state.visible) return;
  const runs = plotted();
  const xMax = Math.max(1, ...runs.map((r) => r.total_epochs));
  drawChart($("runs-loss-chart"), runs.map((r, i) => ({ colour: COLOURS[i], dots: true,
    points: r.rows.map((row) => [row.epoch, row.train_loss]) })), { xMax, empty: "Tick runs to compare them." });
  drawChart($("runs-acc-chart"), runs.flatMap((r, i) => [
    { colour: COLOURS[i], dots: true, points: r.rows.filter((w) => w.test_accuracy != null).map((w) => [w.epoch, w.test_accuracy]) },
    { colour: COLOURS[i], dots: true, dash: true,
      points: r.rows.filter((w) => w.val_accuracy != null).map((w) => [w.epoch, w.val_accuracy]) }]),
  { xMax, yMax: 1, yFormat: (v) => `${Math.round(100 * v)}%`, empty: "" });
}

function button(text, onClick, label) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

async function stop(name) {
  try {
    $("runs-summary").textContent = (await api(`/api/runs/${encodeURIComponent(name)}`, { method: "DELETE" })).message;
  } catch (err) {
    $("runs-summary").textContent = err.message;
  }
  setTimeout(load, 500);
}

new ResizeObserver(() => renderChart()).observe($("runs-loss-chart"));

export const view = {
  name: "runs",
  setModel() {},
  unsetModel() {},
  show() { state.visible = true; load(); },
  hide() { state.visible = false; clearTimeout(state.timer); },
  // hooks: {draw(name): use this model, models(): the model list may have changed}
  connect(hooks) { state.hooks = hooks; },
};
