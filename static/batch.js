// The batch page: photos from a folder or a ZIP (static/zip.js) sent to /api/predict a few at a time, the results
// in a sortable table with CSV and JSON downloads built here. Only the table's rows are kept, never the photos.
"use strict";
document.documentElement.classList.add("js");

const form = document.querySelector("[data-batch]");
const PREDICT_URL = form.dataset.predictUrl;
const PER_REQUEST = Number(form.dataset.perRequest);   // the server's limit of photos a request
const MAX_BYTES = Number(form.dataset.maxBytes);      // the server's limit of bytes a request
const REQUEST_BYTES = MAX_BYTES * 0.9;                 // with room for the form's own bytes
const LANES = 2;                                       // requests in flight: one uploads while the other is predicted
const labels = [...document.querySelectorAll("[data-batch-table] [data-label]")].map((b) => b.dataset.label);
const tbody = document.querySelector("[data-batch-table] tbody");
const progress = document.querySelector("[data-batch-progress]");
const bar = progress.querySelector("[data-batch-bar]");
const status = progress.querySelector("[data-batch-status]");
const inputs = [...form.querySelectorAll("input")];
const downloads = [...document.querySelectorAll("[data-download]")];
const byName = new Intl.Collator(undefined, { numeric: true }).compare;

let rows = [];                      // {index, name, probabilities, predicted, error}
let order = { key: "index", dir: 1 };
let renderPending = false;

// Hidden files and folders (.DS_Store, __MACOSX/ in ZIPs made on a Mac) are not photos anyone chose.
const hidden = (name) => name.split("/").some((part) => part.startsWith(".") || part === "__MACOSX");
const errorRow = (item, message) => ({ index: item.index, name: item.name, probabilities: null, predicted: [], error: message });

// Consecutive items in groups of at most PER_REQUEST photos and REQUEST_BYTES (a larger photo goes alone).
function groups(items) {
  const out = [];
  let group = [], bytes = 0;
  for (const item of items) {
    if (group.length && (group.length === PER_REQUEST || bytes + item.size > REQUEST_BYTES)) { out.push(group); group = []; bytes = 0; }
    group.push(item);
    bytes += item.size;
  }
  if (group.length) out.push(group);
  return out;
}

// Rows for [{item, blob}]. The API fails a whole request with its first bad file's error, so a request that
// gets a 4xx is sent again one photo at a time: each bad file gets its own row and message.
async function predict(ready) {
  const body = new FormData();
  ready.forEach(({ item, blob }) => body.append("image", blob, item.name));
  let response, data;
  try {
    response = await fetch(PREDICT_URL, { method: "POST", body });
    data = await response.json().catch(() => ({ error: `HTTP ${response.status} without a message` }));
  } catch (err) {
    return ready.map(({ item }) => errorRow(item, `the request failed: ${err.message}`));
  }
  if (response.ok) {
    return data.results.map((r, k) => ({ index: ready[k].item.index, name: ready[k].item.name,
                                         probabilities: r.probabilities, predicted: r.predicted,
                                         familiarity: r.familiarity ?? null, error: "" }));
  }
  if (response.status < 500 && ready.length > 1) {
    const out = [];
    for (const one of ready) out.push(...await predict([one]));
    return out;
  }
  return ready.map(({ item }) => errorRow(item, data.error || `HTTP ${response.status}`));
}

async function run(chosen) {
  const items = chosen.filter((i) => !hidden(i.name)).sort((a, b) => byName(a.name, b.name))
    .map((item, index) => ({ ...item, index }));
  const left = chosen.length - items.length;
  rows = [];
  render();
  if (!items.length) { progress.hidden = false; status.textContent = "No photos there."; return; }
  inputs.forEach((i) => { i.disabled = true; });
  downloads.forEach((b) => { b.disabled = true; });
  progress.hidden = false;
  bar.max = items.length;
  const started = performance.now();
  const queue = groups(items);
  const report = (final) => {
    const bad = rows.filter((r) => r.error).length;
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    status.textContent = `${final ? "Done: " : ""}${rows.length} of ${items.length} photos in ${seconds} s` +
      (bad ? `, ${bad} could not be read` : "") + (left ? ` (${left} hidden file${left > 1 ? "s" : ""} left out)` : "");
    bar.value = rows.length;
  };
  const lane = async () => {
    while (queue.length) {
      const ready = [];
      for (const item of queue.shift()) {
        try { ready.push({ item, blob: await item.blob() }); } catch (err) { rows.push(errorRow(item, err.message)); }
      }
      if (ready.length) rows.push(...await predict(ready));
      report(false);
      scheduleRender();
    }
  };
  await Promise.all(Array.from({ length: LANES }, lane));
  report(true);
  render();
  inputs.forEach((i) => { i.disabled = false; });
  downloads.forEach((b) => { b.disabled = false; });
}

function value(row, key) {
  if (key === "index") return row.index;
  if (key === "name") return row.name;
  if (key === "predicted") return row.error ? "\uffff" : row.predicted.join(" ");  // errors last
  return row.error ? -1 : row.probabilities[key];
}

function sortedRows() {
  const { key, dir } = order;
  const compare = key === "name" || key === "predicted" ? byName : (x, y) => x - y;
  return [...rows].sort((a, b) => dir * (compare(value(a, key), value(b, key)) || a.index - b.index));
}

function rowElement(row) {
  const tr = document.createElement("tr");
  const cell = (text, className) => {
    const td = tr.insertCell();
    td.textContent = text;
    if (className) td.className = className;
    return td;
  };
  cell(row.name, "name").title = row.name;
  if (row.error) {
    tr.className = "error";
    cell(`could not be read: ${row.error}`).colSpan = labels.length + 1;
  } else {
    cell(row.predicted.join(", ") || "no label");
    labels.forEach((l) => cell(row.probabilities[l].toFixed(4), row.predicted.includes(l) ? "num on" : "num"));
  }
  return tr;
}

function render() {
  renderPending = false;
  tbody.replaceChildren(...sortedRows().map(rowElement));
}

function scheduleRender() {  // at most four renders a second while results stream in
  if (!renderPending) { renderPending = true; setTimeout(render, 250); }
}

const csvField = (v) => (/[",\n\r]/.test(String(v)) ? `"${String(v).replace(/"/g, '""')}"` : String(v));

// The table as it is sorted, in the columns of `python -m model.predict --csv`.
function exported(kind) {
  const list = sortedRows();
  if (kind === "json") {
    return JSON.stringify(list.map(({ name, probabilities, predicted, familiarity, error }) =>
      ({ path: name, probabilities, predicted, familiarity: familiarity ?? null, error: error || null })), null, 1);
  }
  const known = (r) => (r.error || !r.familiarity ? ["", ""] : [r.familiarity.score, r.familiarity.unfamiliar ? 1 : 0]);
  const lines = [["path", ...labels, "predicted", "familiarity", "unfamiliar", "error"],
    ...list.map((r) => [r.name, ...labels.map((l) => (r.error ? "" : r.probabilities[l])), r.predicted.join(" "), ...known(r), r.error])];
  return lines.map((line) => line.map(csvField).join(",")).join("\n") + "\n";
}

downloads.forEach((button) => button.addEventListener("click", () => {
  const kind = button.dataset.download;
  const url = URL.createObjectURL(new Blob([exported(kind)], { type: kind === "csv" ? "text/csv" : "application/json" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = `predictions.${kind}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}));

document.querySelectorAll("[data-sort]").forEach((button) => button.addEventListener("click", () => {
  const key = button.dataset.sort;
  order = { key, dir: order.key === key ? -order.dir : (labels.includes(key) ? -1 : 1) };  // probabilities: highest first
  document.querySelectorAll("[data-batch-table] th").forEach((th) => th.removeAttribute("aria-sort"));
  button.parentElement.setAttribute("aria-sort", order.dir > 0 ? "ascending" : "descending");
  render();
}));

form.querySelector("[data-batch-folder]").addEventListener("change", (e) => {
  run([...e.target.files].map((f) => ({ name: f.webkitRelativePath || f.name, size: f.size, blob: async () => f })));
});

form.querySelector("[data-batch-zip]").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  try {
    run(await zipEntries(file, MAX_BYTES));
  } catch (err) {
    progress.hidden = false;
    status.textContent = err.message;
  }
});
