// Threshold sliders on the evaluation page: recompute the test metrics live from the stored test probabilities.
"use strict";
document.documentElement.classList.add("js");
const data = JSON.parse(document.getElementById("eval-data").textContent);
const panels = [...document.querySelectorAll("[data-label-index]")];
const sliders = panels.map((p) => p.querySelector("[data-threshold]"));
const L = data.labels.length;

function predict(thresholds) {
  return data.probs.map((row) => {
    const out = row.map((p, j) => (p >= thresholds[j] ? 1 : 0));
    if (data.at_least_one && !out.some(Boolean)) out[row.indexOf(Math.max(...row))] = 1;
    return out;
  });
}

const f1 = (tp, fp, fn) => (2 * tp + fp + fn ? (2 * tp) / (2 * tp + fp + fn) : 0);

function compute(thresholds) {
  const pred = predict(thresholds);
  const per = data.labels.map(() => ({ tp: 0, fp: 0, fn: 0, tn: 0 }));
  let wrongCells = 0, exact = 0, samplesF1 = 0;
  pred.forEach((row, i) => {
    let rowWrong = 0, tp = 0, fp = 0, fn = 0;
    row.forEach((p, j) => {
      const t = data.truth[i][j];
      const c = per[j];
      if (p && t) { c.tp++; tp++; } else if (p) { c.fp++; fp++; rowWrong++; } else if (t) { c.fn++; fn++; rowWrong++; } else c.tn++;
    });
    wrongCells += rowWrong;
    if (!rowWrong) exact++;
    samplesF1 += f1(tp, fp, fn);
  });
  const n = pred.length;
  const sum = per.reduce((a, c) => ({ tp: a.tp + c.tp, fp: a.fp + c.fp, fn: a.fn + c.fn }), { tp: 0, fp: 0, fn: 0 });
  per.forEach((c) => {
    c.precision = c.tp + c.fp ? c.tp / (c.tp + c.fp) : 0;
    c.recall = c.tp + c.fn ? c.tp / (c.tp + c.fn) : 0;
    c.f1 = f1(c.tp, c.fp, c.fn);
    const d = Math.sqrt((c.tp + c.fp) * (c.tp + c.fn) * (c.tn + c.fp) * (c.tn + c.fn));
    c.mcc = d ? (c.tp * c.tn - c.fp * c.fn) / d : 0;
  });
  return {
    per,
    headline: {
      hamming_loss: wrongCells / (n * L), exact_match: exact / n, micro_f1: f1(sum.tp, sum.fp, sum.fn),
      macro_f1: per.reduce((a, c) => a + c.f1, 0) / L, samples_f1: samplesF1 / n,
    },
  };
}

// Where a threshold sits on a label's precision-recall curve (same axes as the server's SVG).
function curvePoint(j, threshold) {
  let tp = 0, fp = 0, pos = 0;
  data.probs.forEach((row, i) => {
    const t = data.truth[i][j];
    pos += t;
    if (row[j] >= threshold) { if (t) tp++; else fp++; }
  });
  const recall = pos ? tp / pos : 0, precision = tp + fp ? tp / (tp + fp) : 1;
  return [recall * 240, (1 - precision) * 180];
}

function update() {
  const thresholds = sliders.map((s) => Number(s.value));
  const m = compute(thresholds);
  for (const [key, value] of Object.entries(m.headline)) {
    const cell = document.querySelector(`[data-live="${key}"]`);
    cell.textContent = value.toFixed(4);
  }
  const changed = sliders.some((s) => s.value !== s.dataset.tuned && Number(s.value) !== Number(s.dataset.tuned));
  document.querySelectorAll("[data-live]").forEach((c) => c.classList.toggle("changed", changed));
  panels.forEach((panel, j) => {
    const c = m.per[j];
    panel.querySelector("[data-out]").textContent = thresholds[j].toFixed(3);
    for (const key of ["precision", "recall", "f1", "mcc"]) panel.querySelector(`[data-pl="${key}"]`).textContent = c[key].toFixed(3);
    for (const key of ["tp", "fp", "fn", "tn"]) panel.querySelector(`[data-cm="${key}"]`).textContent = c[key];
    const point = panel.querySelector("[data-point]");
    if (point) {
      const [x, y] = curvePoint(j, thresholds[j]);
      point.setAttribute("cx", x.toFixed(1));
      point.setAttribute("cy", y.toFixed(1));
    }
  });
}

sliders.forEach((s) => s.addEventListener("input", update));
document.querySelector("[data-reset]").addEventListener("click", () => {
  sliders.forEach((s) => { s.value = s.dataset.tuned; });
  update();
});
update();
