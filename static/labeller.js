// The labeller (/label/ID): one photo at a time (or a grid of 24) from the queue, label chips pre-toggled with the
// live model's suggestions, every decision saved at once (PUT /api/datasets/ID/labels/IMAGE), the panel
// refreshed from GET /api/datasets/ID, a quick job started and followed (POST /api/jobs, GET /api/jobs/ID).
"use strict";

const root = document.querySelector("[data-labeller]");
const dataset = root.dataset.dataset;
const LABELS = JSON.parse(root.dataset.labels);
const api = `/api/datasets/${encodeURIComponent(dataset)}`;
const $ = (selector) => root.querySelector(selector);
const say = (message, isError) => { $("[data-status]").textContent = message; $("[data-status]").className = isError ? "error" : ""; };

let queue = [];        // upcoming photos: [{image, suggested, probabilities}]
let current = null;    // {image, on: Set, item}
const done = [];       // decisions made here, newest last: {image, before: [..] | null, after: [..]}
let back = 0;          // how many steps back from the newest decision we are (Backspace)

async function call(url, options = {}) {
  const response = await fetch(url, { headers: { "Content-Type": "application/json" }, ...options });
  const body = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
  return body;
}

const photoUrl = (image) => `${api}/photos/${encodeURIComponent(image)}`;
const strategy = () => $("[data-strategy]").value;

// Up to k photos to label next (the server's queue; those saved here a moment ago and, in single mode, the one
// on screen left out).
async function fetchQueue(k, grid = false) {
  const seen = new Set(done.map((d) => d.image));
  if (!grid && current) seen.add(current.image);
  const { photos } = await call(`${api}/queue?k=${k}&strategy=${encodeURIComponent(strategy())}`);
  return photos.filter((p) => !seen.has(p.image));
}

function chip(label, index, on, probability, toggle) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "chip" + (on ? " on" : "");
  button.dataset.label = label;
  button.setAttribute("aria-pressed", on);
  button.textContent = `${index < 9 ? index + 1 + " " : ""}${label}` + (probability == null ? "" : ` ${Math.round(probability * 100)}%`);
  button.addEventListener("click", toggle);
  return button;
}

function drawSingle() {
  const chips = $("[data-chips]");
  chips.replaceChildren();
  if (!current) { $("[data-photo]").removeAttribute("src"); $("[data-photo-name]").textContent = "Every photo is labelled."; return; }
  $("[data-photo]").src = photoUrl(current.image);
  $("[data-photo-name]").textContent = current.image + (back ? ` (labelled before: ${back} back)` : "");
  LABELS.forEach((label, i) => {
    const p = current.item?.probabilities?.[label];
    const button = chip(label, i, current.on.has(label), back ? null : p, () => toggle(label));
    if (!back && current.item?.suggested.includes(label)) button.classList.add("suggested");
    chips.append(button);
  });
}

function toggle(label) {
  if (!current) return;
  current.on.has(label) ? current.on.delete(label) : current.on.add(label);
  drawSingle();
}

async function showNext() {
  if (queue.length < 2) queue = queue.concat(await fetchQueue(8)).filter((p, i, all) => all.findIndex((q) => q.image === p.image) === i);
  const item = queue.shift();
  current = item ? { image: item.image, on: new Set(item.suggested), item } : null;
  drawSingle();
}

async function save(image, labels, before) {
  await call(`${api}/labels/${encodeURIComponent(image)}`, { method: "PUT", body: JSON.stringify({ labels }) });
  done.push({ image, before, after: labels });
}

async function saveAndNext() {
  if (!current) return;
  const labels = LABELS.filter((l) => current.on.has(l));
  const before = back ? done[done.length - back].after : null;
  try {
    const image = current.image;
    await save(image, labels, before);
    back = 0;
    queue = await fetchQueue(8);  // fresh suggestions: the model has learnt from the decisions so far
    await showNext();
    say(`Saved ${image}: ${labels.join(", ") || "none of the labels"}.`);
    refreshPanel();
  } catch (e) { say(e.message, true); }
}

function goBack() {
  if (back >= done.length) return;
  if (!back && current) queue.unshift(current.item);
  back += 1;
  const d = done[done.length - back];
  current = { image: d.image, on: new Set(d.after), item: null };
  drawSingle();
}

async function undo() {
  const last = done.pop();
  if (!last) return;
  try {
    const url = `${api}/labels/${encodeURIComponent(last.image)}`;
    if (last.before === null) await call(url, { method: "DELETE" });
    else await call(url, { method: "PUT", body: JSON.stringify({ labels: last.before }) });
    if (current && !back) queue.unshift(current.item);
    back = 0;
    current = { image: last.image, on: new Set(last.after), item: null };
    drawSingle();
    say(`Undone: ${last.image} is ${last.before === null ? "not labelled" : "back to " + (last.before.join(", ") || "none")}.`);
    refreshPanel();
  } catch (e) { say(e.message, true); }
}

document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
  if (!$("[data-grid]").hidden) return;
  if (/^[1-9]$/.test(event.key) && LABELS[Number(event.key) - 1]) toggle(LABELS[Number(event.key) - 1]);
  else if (event.key === "Enter") saveAndNext();
  else if (event.key === "Backspace") goBack();
  else if (event.key === "z" || event.key === "Z") undo();
  else return;
  event.preventDefault();
});
$("[data-save]").addEventListener("click", saveAndNext);
$("[data-strategy]").addEventListener("change", async () => {
  try { queue = await fetchQueue(8); if (!back) await showNext(); if (!$("[data-grid]").hidden) await loadGrid(); } catch (e) { say(e.message, true); }
});

// --- grid mode ---------------------------------------------------------------------------------
let gridItems = [];

async function loadGrid() {
  gridItems = (await fetchQueue(24, true)).map((item) => ({ item, on: new Set(item.suggested) }));
  const grid = $("[data-grid-photos]");
  grid.replaceChildren(...gridItems.map((g) => {
    const figure = document.createElement("figure");
    figure.dataset.image = g.item.image;
    const img = document.createElement("img");
    img.src = photoUrl(g.item.image);
    img.alt = g.item.image;
    const chips = document.createElement("div");
    chips.className = "chips";
    const draw = () => chips.replaceChildren(...LABELS.map((label, i) => chip(label, 99, g.on.has(label), g.item.probabilities?.[label], () => {
      g.on.has(label) ? g.on.delete(label) : g.on.add(label);
      draw();
    })));
    draw();
    figure.append(img, chips);
    return figure;
  }));
  if (!gridItems.length) say("Every photo is labelled.");
}

$("[data-mode]").addEventListener("click", async () => {
  const toGrid = $("[data-grid]").hidden;
  $("[data-grid]").hidden = !toGrid;
  $("[data-single]").hidden = toGrid;
  $("[data-mode]").textContent = toGrid ? "One photo at a time" : "Grid of 24";
  try { if (toGrid) await loadGrid(); else { queue = await fetchQueue(8); await showNext(); } } catch (e) { say(e.message, true); }
});

$("[data-confirm]").addEventListener("click", async () => {
  try {
    for (const g of gridItems) await save(g.item.image, LABELS.filter((l) => g.on.has(l)), null);
    say(`Saved ${gridItems.length} photos.`);
    refreshPanel();
    await loadGrid();
  } catch (e) { say(e.message, true); }
});

// --- the panel and training ------------------------------------------------------------------------
async function refreshPanel() {
  const s = await call(api);
  $("[data-labelled]").textContent = s.labelled;
  $("[data-embedded]").textContent = s.error || (s.embedded < s.photos ? `embeddings: ${s.embedded} of ${s.photos}` : "embeddings ready");
  $("[data-counts]").replaceChildren(...s.labels.map((l) => {
    const row = document.createElement("tr");
    const ap = s.estimate.average_precision[l];
    [l, s.per_label[l].positive, s.per_label[l].negative, ap == null ? "–" : ap.toFixed(2)].forEach((v) => {
      const cell = document.createElement("td");
      cell.textContent = v;
      row.append(cell);
    });
    row.dataset.label = l;
    return row;
  }));
  $("[data-estimate]").textContent = s.estimate.map == null
    ? "The live model starts suggesting a label once it has 2 photos with it and 2 without."
    : `Live model: cross-validated mAP ${s.estimate.map.toFixed(3)} on ${s.estimate.photos} labelled photos; suggesting ${s.suggesting.join(", ")}.`;
  $("[data-lacking]").textContent = s.lacking.length
    ? `Still lacking examples for a validation split: ${s.lacking.join(", ")} (each needs photos with and without it in both training and validation parts).`
    : "";
  $("[data-ready]").hidden = !s.ready;
  return s;
}

$("[data-train]").addEventListener("click", async () => {
  const jobText = $("[data-job]");
  try {
    const { job } = await call("/api/jobs", { method: "POST", body: JSON.stringify({ dataset, mode: "quick" }) });
    jobText.dataset.state = "queued";
    for (;;) {
      const j = await call(`/api/jobs/${encodeURIComponent(job)}`);
      jobText.dataset.state = j.state;
      jobText.textContent = `Quick model ${job}: ${j.state}, ${Math.round(j.progress * 100)}% · ${j.message}`;
      if (!["queued", "running"].includes(j.state)) break;
      await new Promise((r) => setTimeout(r, 1000));
    }
    if (jobText.dataset.state === "done") {
      jobText.dataset.model = job;
      jobText.textContent = `Quick model ${job} is ready: use it or compare it on the Models page.`;
    }
  } catch (e) { jobText.textContent = e.message; jobText.dataset.state = "failed"; }
});

refreshPanel().catch((e) => say(e.message, true));
showNext().catch((e) => say(e.message, true));
setInterval(() => refreshPanel().catch(() => {}), 5000);
