// The Train view: choose the settings, start a run (or several learning rates at once), and watch the
// training loss fall and the accuracy rise, live, with other runs overlaid on the same axes.
//
// A run's curves come from the engine's events (GET /api/events: the runs on the chart, in one stream,
// from their start: a run that ended is replayed once, a live one followed until it ends); until its
// events have come, from its committed epochs (GET /api/runs). The runs on the chart are remembered by
// this browser.
"use strict";

import { api } from "./api.js";
import { COLOURS, breakable, drawChart, percent, settingsText } from "./chart.js";

const $ = (id) => document.getElementById(id);
const root = $("view-train");
const KEPT = "mnistlab.train.shown";  // localStorage: the names of the runs on the chart
const LIVE = ["queued", "starting", "running"];

const state = {
  options: null,    // GET /api/training
  shown: [],        // run names on the chart, oldest first
  runs: new Map(),  // name -> {info: /api/runs/NAME, loss, acc, val: [[x, y]], epochs, status, hint, progress}
  stream: null,     // the EventSource following the live runs
  streamed: "",     // the names it follows, joined
  visible: false,
  hooks: { models() {}, draw() {} },
};

// ---------------------------------------------------------------------------
// The settings

function fillRecipes(options) {
  const recipe = $("t-recipe"), dataset = $("t-dataset");
  recipe.replaceChildren(...Object.entries(options.recipes).map(([name, r]) => new Option(`${name}: ${r.summary}`, name)));
  dataset.replaceChildren(...options.datasets.map((name) => new Option(name, name)));
  recipe.value = "seed" in options.recipes ? "seed" : Object.keys(options.recipes)[0];
  dataset.value = options.datasets.includes("mnist") ? "mnist" : options.datasets[0];
  $("t-epochs").max = String(options.limits.max_epochs);
  applyRecipe();
  const l = options.limits;
  $("train-limits").textContent = `This server trains ${l.jobs} run${l.jobs === 1 ? "" : "s"} at a time (the others ` +
    `wait, ${l.queue} at most), ${l.per_client} per person, up to ${l.max_epochs} epochs` +
    (l.max_train_size ? ` and ${l.max_train_size.toLocaleString("en")} training images` : "") + " a run.";
}

function applyRecipe() {
  const config = state.options.recipes[$("t-recipe").value].config;
  $("t-lr").value = config.lr;
  $("t-batch").value = config.batch_size;
  $("t-epochs").value = Math.min(config.epochs, state.options.limits.max_epochs);
  $("t-hidden").value = config.hidden.join(" ");
  $("t-hidden").disabled = config.model !== "mlp";
  $("t-optimizer").value = config.optimizer;
  $("t-shift").checked = config.shift > 0;
  const cap = state.options.limits.max_train_size;
  $("t-train-size").value = cap ? Math.min(cap, config.train_size || cap) : config.train_size;
  $("t-recipe-summary").textContent = recipeLine(config);
}

function recipeLine(c) {
  const extra = [c.momentum ? `momentum ${c.momentum}${c.nesterov ? " (Nesterov)" : ""}` : "plain SGD steps",
    c.schedule === "onecycle" ? "one-cycle rate schedule" : "constant rate",
    c.label_smoothing ? `label smoothing ${c.label_smoothing}` : null,
    c.weight_decay ? `weight decay ${c.weight_decay}` : null].filter(Boolean);
  return `${c.model === "mlp" ? "MLP" : "small CNN"}; ${extra.join(", ")}.`;
}

function settings() {
  const recipe = $("t-recipe").value;
  const config = state.options.recipes[recipe].config;
  const out = { recipe, dataset: $("t-dataset").value, batch_size: Number($("t-batch").value),
    epochs: Number($("t-epochs").value), optimizer: $("t-optimizer").value,
    shift: $("t-shift").checked ? Math.max(1, config.shift) : 0, train_size: Number($("t-train-size").value) };
  if (config.model === "mlp") out.hidden = $("t-hidden").value.split(/[\s,x]+/).filter(Boolean).map(Number);
  if ($("t-compare").checked) out.lrs = $("t-lrs").value.split(/[\s,;]+/).filter(Boolean).map(Number);
  else out.lr = Number($("t-lr").value);
  return out;
}

async function start(event) {
  event.preventDefault();
  const button = $("t-start");
  button.disabled = true;
  status("Starting…");
  try {
    const started = await api("/api/runs", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(settings()) });
    for (const name of started.runs) show(name);
    status(started.queued ? `Waiting for a free process: ${started.queued === 1 ? "next" : `number ${started.queued}`} ` +
      "in the queue." : `Started ${started.runs.join(", ")}.`);
    await refresh();
  } catch (err) {
    status(err.message, true);
  } finally {
    button.disabled = false;
  }
}

function status(text, error = false) {
  $("train-status").textContent = text;
  $("train-status").classList.toggle("error", error);
}

// ---------------------------------------------------------------------------
// The runs on the chart

function show(name) {
  if (!state.shown.includes(name)) state.shown.push(name);
  keep();
}

function keep() {
  try { localStorage.setItem(KEPT, JSON.stringify(state.shown)); } catch { /* private browsing: not kept */ }
}

function run(name) {
  if (!state.runs.has(name)) state.runs.set(name, { info: null, loss: [], acc: [], val: [], epochs: 0,
    status: "", hint: "", progress: null, streaming: false, replayed: false });
  return state.runs.get(name);
}

// The curves of a run whose events have not come yet: its committed epochs.
function fromRows(r) {
  const rows = r.info.rows;
  r.loss = rows.map((row) => [row.epoch, row.train_loss]);
  r.acc = rows.filter((row) => row.test_accuracy != null).map((row) => [row.epoch, row.test_accuracy]);
  r.val = rows.filter((row) => row.val_accuracy != null).map((row) => [row.epoch, row.val_accuracy]);
  r.epochs = r.info.total_epochs;
  r.progress = rows.length ? { epoch: rows.length, loss: rows[rows.length - 1].train_loss } : null;
  r.hint = r.info.problem || "";  // the run's learning hint as of its last epoch, or why it stopped
}

async function refresh() {
  let listed;
  try {
    listed = (await api("/api/runs")).runs;
  } catch (err) {
    status(err.message, true);
    return;
  }
  const byName = new Map(listed.map((info) => [info.name, info]));
  state.shown = state.shown.filter((name) => byName.has(name));  // removed from the folder meanwhile
  keep();
  for (const name of state.shown) {
    const r = run(name);
    r.info = byName.get(name);
    if (!r.replayed && !r.streaming) fromRows(r);
  }
  follow();
  render();
}

// One stream for the runs on the chart that are live or whose events have not come yet: a browser holds
// only a few connections to a server.
function follow() {
  const live = state.shown.filter((name) => {
    const r = state.runs.get(name);
    return r?.info && (LIVE.includes(r.info.state) || !r.replayed);
  });
  const key = live.join("\n");
  if (key === state.streamed && state.stream) return;
  if (state.stream) state.stream.close();
  for (const r of state.runs.values()) r.streaming = false;
  state.stream = null;
  state.streamed = key;
  if (!live.length) return;
  const stream = new EventSource(`/api/events?${live.map((n) => `run=${encodeURIComponent(n)}`).join("&")}`);
  state.stream = stream;
  stream.onopen = () => {  // (re)connected: the events come again from each run's start
    for (const name of live) Object.assign(run(name), { loss: [], acc: [], val: [], streaming: true, progress: null });
  };
  stream.onmessage = (message) => {
    const { name, event } = JSON.parse(message.data);
    apply(run(name), event);
    scheduleRender();
  };
  stream.addEventListener("end", () => {
    stream.close();
    if (state.stream === stream) { state.stream = null; state.streamed = ""; }
    for (const name of live) Object.assign(run(name), { streaming: false, replayed: true });
    state.hooks.models();
    refresh();
  });
  stream.onerror = () => {
    if (stream.readyState === EventSource.CLOSED && state.stream === stream) {
      state.stream = null;
      state.streamed = "";
      setTimeout(refresh, 3000);
    }
  };
}

// One engine event (core/events.py) into a run's curves.
function apply(r, e) {
  if (e.type === "started") {
    r.epochs = e.epochs;
    if (r.info && LIVE.includes(r.info.state)) r.info.state = "running";
  } else if (e.type === "progress") {
    r.loss.push([e.epoch - 1 + e.step / e.steps, e.loss]);
    r.progress = { epoch: e.epoch - 1 + e.step / e.steps, loss: e.loss, epochs: e.epochs };
  } else if (e.type === "epoch") {
    const row = e.row;
    r.loss.push([row.epoch, row.train_loss]);
    if (row.test_accuracy != null) r.acc.push([row.epoch, row.test_accuracy]);
    if (row.val_accuracy != null) r.val.push([row.epoch, row.val_accuracy]);
    r.progress = { epoch: row.epoch, loss: row.train_loss };
    r.epochs = e.epochs;
    r.hint = "";  // a hint is about the epoch it came with
    state.hooks.models();  // a new epoch committed: the model has a new version
  } else if (e.type === "hint") {
    r.hint = e.message;
  } else if (e.type === "ended") {
    r.status = e.status;
    r.replayed = true;  // its whole story has come
    if (e.message) r.hint = e.message;
  }
}

let renderTimer = 0;
function scheduleRender() {
  if (!renderTimer) renderTimer = setTimeout(() => { renderTimer = 0; render(); }, 200);
}

function colour(name) { return COLOURS[state.shown.indexOf(name) % COLOURS.length]; }

function render() {
  if (!state.visible) return;
  const shown = state.shown.map((name) => [name, run(name)]);
  const xMax = Math.max(1, ...shown.map(([, r]) => r.epochs || 0));
  drawChart($("loss-chart"), shown.map(([name, r]) => ({ colour: colour(name), points: r.loss })),
    { xMax, empty: "Start a run: its training loss falls here as it trains." });
  drawChart($("acc-chart"), shown.flatMap(([name, r]) => [
    { colour: colour(name), points: r.acc, dots: true },
    { colour: colour(name), points: r.val, dots: true, dash: true }]),
  { xMax, yMax: 1, yFormat: (v) => `${Math.round(100 * v)}%`, empty: "Accuracy on the test set after each epoch." });
  $("legend").replaceChildren(...shown.map(([name, r]) => legendItem(name, r)));
  $("curves-empty").hidden = shown.length > 0;
}

function legendItem(name, r) {
  const info = r.info;
  const li = document.createElement("li");
  li.dataset.name = name;
  li.dataset.state = info ? info.state : "";
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.background = colour(name);
  const title = document.createElement("strong");
  title.textContent = breakable(name);
  const what = document.createElement("span");
  what.className = "settings";
  what.textContent = settingsText(info?.config);
  const now = document.createElement("span");
  now.className = "now";
  now.textContent = progressText(r);
  li.append(swatch, title, what, now);
  if (r.hint) {
    const hint = document.createElement("span");
    hint.className = "run-hint";
    hint.textContent = r.hint;
    li.append(hint);
  }
  const actions = document.createElement("span");
  actions.className = "actions";
  if (info && LIVE.includes(info.state) && info.mine) actions.append(button("Stop", () => stop(name)));
  if (info?.model) actions.append(button("Draw on it", () => state.hooks.draw(info.model)));
  actions.append(button("Remove", () => {
    state.shown = state.shown.filter((n) => n !== name);
    keep();
    follow();
    render();
  }, "remove from the chart (the run stays in the Runs view)"));
  li.append(actions);
  return li;
}

function progressText(r) {
  const info = r.info;
  if (!info) return "";
  const total = r.epochs || info.total_epochs;
  const last = info.rows[info.rows.length - 1];
  if (info.state === "queued") return "waiting for a free process";
  if (info.state === "starting") return "starting…";
  if (info.state === "failed") return `failed: ${info.problem || "see the server's log"}`;
  const parts = [info.state === "running" ? "training" : info.state];
  if (r.progress) parts.push(`epoch ${Number(r.progress.epoch.toFixed(2))}/${total}`, `loss ${r.progress.loss.toFixed(4)}`);
  const acc = r.acc.length ? r.acc[r.acc.length - 1][1] : last?.test_accuracy;
  if (acc != null) parts.push(`test ${percent(acc)}`);
  return parts.join(" · ");
}

function button(text, onClick, title) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (title) b.title = title;
  b.addEventListener("click", onClick);
  return b;
}

async function stop(name) {
  try {
    const stopped = await api(`/api/runs/${encodeURIComponent(name)}`, { method: "DELETE" });
    status(stopped.message);
  } catch (err) {
    status(err.message, true);
  }
  refresh();
}

// ---------------------------------------------------------------------------
// The view, as the page's shell (app.js) sees it

$("t-recipe").addEventListener("change", applyRecipe);
$("t-compare").addEventListener("change", () => {
  $("t-lrs-label").hidden = !$("t-compare").checked;
  $("t-lr-label").hidden = $("t-compare").checked;
  if ($("t-compare").checked && !$("t-lrs").value) {
    const lr = Number($("t-lr").value);
    $("t-lrs").value = [lr / 10, lr, lr * 10].map((v) => +v.toPrecision(3)).join(", ");
  }
});
$("train-form").addEventListener("submit", start);
new ResizeObserver(() => render()).observe($("loss-chart"));

try { state.shown = JSON.parse(localStorage.getItem(KEPT) || "[]").filter((n) => typeof n === "string"); } catch { state.shown = []; }

export const view = {
  name: "train",

  setModel() {},
  unsetModel() {},

  async show() {
    state.visible = true;
    if (!state.options) {
      try {
        state.options = await api("/api/training");
      } catch (err) {
        status(err.message, true);
        return;
      }
      root.dataset.enabled = String(state.options.enabled);
      if (state.options.enabled) fillRecipes(state.options);
      else status(state.options.reason, true);
    }
    await refresh();
  },

  hide() { state.visible = false; },

  // hooks: {models(): the runs committed an epoch (the model list may have changed), draw(name): use it}
  connect(hooks) { state.hooks = hooks; },
};
